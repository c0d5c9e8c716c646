//! Permissions (the owner check, after the record checks): a key inherits its owner's
//! permissions at request time; scopes only narrow them; a deactivated owner takes all their keys down.

// Test code: a panic is how a test reports a failure, and fixtures index and count
// over small known values.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::collections::BTreeSet;

use crate::support::*;
use keygate::{KeyFormat, KeyPatch, Keygate, NewKey, Owner, Permissions, Rejection, VerifyError};

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_key_inherits_its_owners_permissions_at_request_time() {
    let h = Harness::new();
    h.users
        .set("bob", Owner::with_permissions(["library:read"]));
    let key = h.gate.mint(NewKey::new("k", "bob")).await.unwrap();
    let key = key.key.expose().to_owned();

    let before = h.gate.verify(&key).await.unwrap();
    assert_eq!(before.owner_id(), "bob");
    assert_eq!(
        before.owner_permissions(),
        &Permissions::Only(set(&["library:read"]))
    );
    assert!(before.allows("library:read"));
    assert!(!before.allows("library:write"));
    assert_eq!(before.scopes(), None);

    // Promote bob: the same key can now write, with no change to the key.
    h.users.set(
        "bob",
        Owner::with_permissions(["library:read", "library:write"]),
    );
    let after = h.gate.verify(&key).await.unwrap();
    assert!(after.allows("library:write"));
    assert!(after.require("library:write").is_ok());
    // A principal is a snapshot of its request.
    assert!(!before.allows("library:write"));

    // Demote bob to nothing.
    h.users
        .set("bob", Owner::with_permissions(Vec::<String>::new()));
    let demoted = h.gate.verify(&key).await.unwrap();
    assert!(!demoted.allows("library:read"));
    assert!(!demoted.allows(""));

    // Make bob an admin.
    h.users.set("bob", Owner::unrestricted());
    let admin = h.gate.verify(&key).await.unwrap();
    assert_eq!(admin.owner_permissions(), &Permissions::All);
    assert!(admin.allows("anything:at-all"));
    assert_eq!(h.users.calls(), 4, "the directory is asked on every verify");
}

#[tokio::test]
async fn scopes_only_narrow_the_owners_permissions() {
    let h = Harness::new();
    h.users.set(
        "bob",
        Owner::with_permissions(["library:read", "library:write"]),
    );
    let issued = h
        .gate
        .mint(NewKey::new("read only", "bob").scopes(["library:read", "admin:users"]))
        .await
        .unwrap();
    assert_eq!(
        issued.record.scopes,
        Some(set(&["library:read", "admin:users"]))
    );
    let principal = h.gate.verify(issued.key.expose()).await.unwrap();
    assert_eq!(
        principal.scopes(),
        Some(&set(&["library:read", "admin:users"]))
    );
    assert!(principal.allows("library:read"));
    // The owner may write, the key may not.
    assert!(!principal.allows("library:write"));
    // The key lists it, the owner may not: scopes never widen.
    assert!(!principal.allows("admin:users"));
    assert!(!principal.allows("library"));

    assert!(principal.require("library:read").is_ok());
    for denied in ["library:write", "admin:users"] {
        let err = principal.require(denied).unwrap_err();
        match &err {
            VerifyError::InsufficientScope { required } => assert_eq!(required, denied),
            other => panic!("{other:?}"),
        }
        assert_eq!(err.reason(), "insufficient_scope");
        assert_eq!(err.rejection(), None);
        assert!(!err.is_unavailable());
        let http = err.http("abs");
        assert_eq!(http.status, 403);
        assert_eq!(
            http.www_authenticate.as_deref(),
            Some(
                format!(r#"Bearer realm="abs", error="insufficient_scope", scope="{denied}""#)
                    .as_str()
            )
        );
        assert_eq!(http.retry_after, None);
    }
}

#[tokio::test]
async fn an_admins_scoped_key_can_do_only_its_scopes() {
    let h = Harness::new();
    let issued = h
        .gate
        .mint(NewKey::new("k", "alice").scopes(["podcasts:read"]))
        .await
        .unwrap();
    let principal = h.gate.verify(issued.key.expose()).await.unwrap();
    assert_eq!(principal.owner_permissions(), &Permissions::All);
    assert!(principal.allows("podcasts:read"));
    assert!(!principal.allows("podcasts:write"));
    // An empty scope set allows nothing at all.
    let none = h
        .gate
        .mint(NewKey::new("k", "alice").scopes(Vec::<String>::new()))
        .await
        .unwrap();
    let principal = h.gate.verify(none.key.expose()).await.unwrap();
    assert_eq!(principal.scopes(), Some(&BTreeSet::new()));
    assert!(!principal.allows("podcasts:read"));
}

#[tokio::test]
async fn without_a_directory_every_owner_may_do_everything_but_scopes_still_narrow() {
    let store = CountingStore::new();
    let clock = std::sync::Arc::new(keygate::ManualClock::new(t0()));
    let gate: Keygate = builder(&store, &clock).build().unwrap();
    let open = gate.mint(NewKey::new("k", "anyone")).await.unwrap();
    let principal = gate.verify(open.key.expose()).await.unwrap();
    assert_eq!(principal.owner_permissions(), &Permissions::All);
    assert!(principal.allows("x"));
    let narrow = gate
        .mint(NewKey::new("k", "anyone").scopes(["x"]))
        .await
        .unwrap();
    let principal = gate.verify(narrow.key.expose()).await.unwrap();
    assert!(principal.allows("x"));
    assert!(!principal.allows("y"));
}

#[tokio::test]
async fn changing_a_keys_scopes_takes_effect_on_the_next_verify() {
    let h = Harness::new();
    let issued = h
        .gate
        .mint(NewKey::new("k", "alice").scopes(["a"]))
        .await
        .unwrap();
    let key = issued.key.expose();
    assert!(!h.gate.verify(key).await.unwrap().allows("b"));
    h.gate
        .update(issued.record.id, KeyPatch::new().scopes(Some(["a", "b"])))
        .await
        .unwrap();
    assert!(h.gate.verify(key).await.unwrap().allows("b"));
    h.gate
        .update(
            issued.record.id,
            KeyPatch::new().scopes(None::<Vec<String>>),
        )
        .await
        .unwrap();
    let principal = h.gate.verify(key).await.unwrap();
    assert_eq!(principal.scopes(), None);
    assert!(principal.allows("c"));
}

#[tokio::test]
async fn a_key_moved_to_another_owner_acts_for_them() {
    let h = Harness::new();
    h.users
        .set("bob", Owner::with_permissions(["library:read"]));
    let issued = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let key = issued.key.expose();
    assert!(h.gate.verify(key).await.unwrap().allows("admin"));
    h.gate
        .update(issued.record.id, KeyPatch::new().owner("bob"))
        .await
        .unwrap();
    let principal = h.gate.verify(key).await.unwrap();
    assert_eq!(principal.owner_id(), "bob");
    assert!(!principal.allows("admin"));
    assert!(principal.allows("library:read"));
}

#[tokio::test]
async fn deactivating_an_owner_takes_down_every_one_of_their_keys() {
    let h = Harness::new();
    h.users
        .set("bob", Owner::with_permissions(["library:read"]));
    let mut bobs = Vec::new();
    for (i, format) in [KeyFormat::Opaque, KeyFormat::Opaque, KeyFormat::Jwt]
        .into_iter()
        .enumerate()
    {
        let issued = h
            .gate
            .mint(NewKey::new(format!("k{i}"), "bob").format(format))
            .await
            .unwrap();
        bobs.push(issued.key.expose().to_owned());
    }
    let alices = h.gate.mint(NewKey::new("a", "alice")).await.unwrap();
    for key in &bobs {
        h.gate.verify(key).await.unwrap();
    }

    h.users.set("bob", Owner::inactive());
    for key in &bobs {
        h.assert_refused(key, Rejection::OwnerInactive).await;
    }
    // Other users' keys are untouched, and so are bob's records.
    h.gate.verify(alices.key.expose()).await.unwrap();
    for record in h.store.all().await {
        assert!(record.active);
    }

    // Reactivating bob brings every key back; removing him is OwnerUnknown.
    h.users
        .set("bob", Owner::with_permissions(["library:read"]));
    for key in &bobs {
        assert!(h.gate.verify(key).await.unwrap().allows("library:read"));
    }
    h.users.remove("bob");
    for key in &bobs {
        h.assert_refused(key, Rejection::OwnerUnknown).await;
    }
}

#[tokio::test]
async fn an_inactive_owner_with_permissions_is_still_refused() {
    let h = Harness::new();
    h.users.set("carol", Owner::unrestricted().deactivated());
    let issued = h.gate.mint(NewKey::new("k", "carol")).await.unwrap();
    h.assert_refused(issued.key.expose(), Rejection::OwnerInactive)
        .await;
}
