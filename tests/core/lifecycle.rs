//! Key management: mint, import, get, list, update, revoke, delete, rotate, and what the
//! store holds after each; the plaintext never appears outside `IssuedKey::key`.

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
use chrono::TimeDelta;
use std::sync::Arc;

use keygate::{
    Cursor, Error, KeyFormat, KeyId, KeyPatch, KeyRecord, KeyStore, ListQuery, Metadata, NewKey,
    Rejection, StoreError,
};
use serde_json::json;

fn metadata() -> Metadata {
    json!({"purpose": "backup", "n": 3})
        .as_object()
        .unwrap()
        .clone()
}

// ---------------------------------------------------------------------------------------
// Mint
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_minted_key_is_stored_as_a_hash_with_every_field() {
    let h = Harness::new();
    let issued = h
        .gate
        .mint(
            NewKey::new("Backup Script", "alice")
                .description("nightly")
                .created_by("admin-1")
                .expires_in(TimeDelta::days(30))
                .scopes(["library:read"])
                .metadata(metadata()),
        )
        .await
        .unwrap();
    let key = issued.key.expose();
    assert_eq!(key.len(), PREFIX.len() + 1 + BODY_LEN);
    assert!(key.starts_with("abs_"));
    assert!(key[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
    assert!(keygate::checksum_ok(key));
    assert_eq!(keygate::scanner_regex("abs"), r"\babs_[0-9A-Za-z]{71}\b");
    // The id part is the record's id.
    assert_eq!(
        &key[4..4 + ID_LEN],
        base62(issued.record.id.as_uuid().as_u128(), ID_LEN)
    );

    let stored = h.store.record(issued.record.id).await.unwrap();
    assert_eq!(stored, issued.record);
    assert_eq!(stored.format, KeyFormat::Opaque);
    assert_eq!(stored.name, "Backup Script");
    assert_eq!(stored.description.as_deref(), Some("nightly"));
    assert_eq!(stored.owner, "alice");
    assert_eq!(stored.created_by.as_deref(), Some("admin-1"));
    assert_eq!(stored.created_at, t0());
    assert_eq!(stored.updated_at, t0());
    assert_eq!(stored.expires_at, Some(t0() + TimeDelta::days(30)));
    assert_eq!(stored.last_used_at, None);
    assert!(stored.active);
    assert_eq!(
        stored.scopes,
        Some(BTreeSet::from(["library:read".to_owned()]))
    );
    assert_eq!(stored.metadata, metadata());
    let hash = stored.hash.as_ref().unwrap();
    assert_eq!(hash.version, 1);
    // HMAC-SHA256(pepper, key without its checksum): bound to the prefix and id.
    assert_eq!(hash.scheme, keygate::HashScheme::Bound);
    let pepper = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, PEPPER_V1);
    let expected = ring::hmac::sign(&pepper, &key.as_bytes()[..key.len() - CHECKSUM_LEN]);
    assert_eq!(&hash.digest[..], expected.as_ref());

    assert_eq!(h.store.len(), 1);
    assert_eq!(
        h.store.calls(),
        Calls {
            insert: 1,
            ..Calls::default()
        }
    );
    // Two mints never share an id or a secret.
    let again = h
        .gate
        .mint(NewKey::new("Backup Script", "alice"))
        .await
        .unwrap();
    assert_ne!(again.record.id, issued.record.id);
    assert_ne!(
        secret_part(again.key.expose(), PREFIX),
        secret_part(key, PREFIX)
    );
}

#[tokio::test]
async fn a_minted_jwt_is_an_audiobookshelf_api_key() {
    let h = Harness::new();
    let issued = h
        .gate
        .mint(
            NewKey::new("Backup Script", "alice")
                .format(KeyFormat::Jwt)
                .expires_in(TimeDelta::days(1)),
        )
        .await
        .unwrap();
    let token = issued.key.expose();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0], b64(br#"{"alg":"HS256","typ":"JWT"}"#));
    assert_eq!(
        jwt_claims(token),
        json!({
            "keyId": issued.record.id.to_string(),
            "name": "Backup Script",
            "type": "api",
            "iat": t0().timestamp(),
            "exp": (t0() + TimeDelta::days(1)).timestamp(),
        })
    );
    // Our hand-written HS256 over the same header and claims gives the same token.
    let claims_text = String::from_utf8(
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, parts[1])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        sign_jwt_raw(JWT_SECRET, r#"{"alg":"HS256","typ":"JWT"}"#, &claims_text),
        token
    );
    assert_eq!(issued.record.format, KeyFormat::Jwt);
    assert_eq!(issued.record.hash.as_ref().unwrap().version, 1);
    h.gate.verify(token).await.unwrap();
}

#[tokio::test]
async fn invalid_mint_requests_write_nothing() {
    let h = Harness::new();
    let long = "x".repeat(keygate::bounds::MAX_NAME_LEN + 1);
    let cases: Vec<(NewKey, &str)> = vec![
        (NewKey::new("", "alice"), "name"),
        (NewKey::new("   ", "alice"), "name"),
        (NewKey::new("line\nbreak", "alice"), "name"),
        (NewKey::new("tab\there", "alice"), "name"),
        (NewKey::new("nul\0", "alice"), "name"),
        (NewKey::new("del\u{7f}", "alice"), "name"),
        (NewKey::new("c1\u{85}", "alice"), "name"),
        (NewKey::new(long.clone(), "alice"), "name"),
        (
            NewKey::new("é".repeat(keygate::bounds::MAX_NAME_LEN + 1), "alice"),
            "name",
        ),
        (NewKey::new("k", ""), "owner"),
        (NewKey::new("k", "  "), "owner"),
        (
            NewKey::new("k", "alice").expires_in(TimeDelta::zero()),
            "expires_at",
        ),
        (
            NewKey::new("k", "alice").expires_in(TimeDelta::seconds(-1)),
            "expires_at",
        ),
        (
            NewKey::new("k", "alice").expires_at(t0() - TimeDelta::days(1)),
            "expires_at",
        ),
        (NewKey::new("k", "alice").expires_at(t0()), "expires_at"),
        (
            NewKey::new("k", "alice")
                .format(KeyFormat::Jwt)
                .expires_at(t0() + TimeDelta::milliseconds(500)),
            "expires_at",
        ),
        (
            NewKey::new("k", "alice").expires_in(TimeDelta::MAX),
            "expires_at",
        ),
        (
            NewKey::new("k", "alice")
                .expires_at(keygate::bounds::MAX_EXPIRY + TimeDelta::seconds(1)),
            "expires_at",
        ),
        (
            NewKey::new("k", "alice").expires_in(TimeDelta::days(365 * 8000)),
            "expires_at",
        ),
        // Text that could drive a terminal or spoof a display.
        (NewKey::new("\u{202E}fdp.exe", "alice"), "name"),
        (NewKey::new("k", "u2\u{1b}]0;pwned\u{7}\u{1b}[2J"), "owner"),
        (NewKey::new("k", "ad\u{200B}min"), "owner"),
        (NewKey::new("k", " alice"), "owner"),
        (
            NewKey::new("k", "u".repeat(keygate::bounds::MAX_ID_LEN + 1)),
            "owner",
        ),
        (
            NewKey::new("k", "alice").description("\u{1b}[2J"),
            "description",
        ),
        (
            NewKey::new("k", "alice")
                .description("d".repeat(keygate::bounds::MAX_DESCRIPTION_LEN + 1)),
            "description",
        ),
        (NewKey::new("k", "alice").created_by("root\n"), "created_by"),
        (NewKey::new("k", "alice").created_by(""), "created_by"),
        (NewKey::new("k", "alice").scopes([""]), "scopes"),
        (NewKey::new("k", "alice").scopes(["library read"]), "scopes"),
        (
            NewKey::new("k", "alice").scopes(["ad\u{200D}min"]),
            "scopes",
        ),
        (
            NewKey::new("k", "alice").scopes(["s".repeat(keygate::bounds::MAX_SCOPE_LEN + 1)]),
            "scopes",
        ),
        (
            NewKey::new("k", "alice")
                .scopes((0..=keygate::bounds::MAX_SCOPES).map(|i| format!("s{i}"))),
            "scopes",
        ),
        (
            NewKey::new("k", "alice").metadata(
                json!({"blob": "x".repeat(keygate::bounds::MAX_METADATA_BYTES)})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
            "metadata",
        ),
    ];
    for (new, field) in cases {
        let shown = format!("{new:?}");
        match h.gate.mint(new).await {
            Err(Error::InvalidInput { field: got, .. }) => assert_eq!(got, field, "{shown}"),
            other => panic!("{shown}: {other:?}"),
        }
    }
    // A JWT key on a gate without a JWT secret.
    let opaque_only = h.sibling(|b| b);
    let err = opaque_only
        .mint(NewKey::new("k", "alice").format(KeyFormat::Jwt))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::JwtDisabled), "{err:?}");

    assert!(h.store.is_empty());
    assert_eq!(h.store.calls(), Calls::default());

    // The edges that are allowed.
    h.gate
        .mint(NewKey::new(
            "x".repeat(keygate::bounds::MAX_NAME_LEN),
            "alice",
        ))
        .await
        .unwrap();
    h.gate
        .mint(NewKey::new(
            "é".repeat(keygate::bounds::MAX_NAME_LEN),
            "alice",
        ))
        .await
        .unwrap();
    h.gate
        .mint(NewKey::new("k", "alice").expires_in(TimeDelta::seconds(1)))
        .await
        .unwrap();
    h.gate
        .mint(NewKey::new("Ünïcødé name – ok", "alice"))
        .await
        .unwrap();
    h.gate
        .mint(
            NewKey::new("👨\u{200D}👩\u{200D}👧 family", "alice")
                .description("d".repeat(keygate::bounds::MAX_DESCRIPTION_LEN))
                .created_by("admin-1")
                .scopes((0..keygate::bounds::MAX_SCOPES).map(|i| format!("library:s{i}")))
                .expires_at(keygate::bounds::MAX_EXPIRY),
        )
        .await
        .unwrap();
    assert_eq!(h.store.len(), 5);
}

#[tokio::test]
async fn invalid_updates_write_nothing() {
    let h = Harness::new();
    let issued = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let id = issued.record.id;
    let before = h.store.all().await;
    let writes = h.store.calls().writes();
    let big = json!({"blob": "x".repeat(keygate::bounds::MAX_METADATA_BYTES)})
        .as_object()
        .unwrap()
        .clone();
    let cases: Vec<(KeyPatch, &str)> = vec![
        (KeyPatch::new().name("a\u{1b}[2J"), "name"),
        (KeyPatch::new().name("\u{2066}x"), "name"),
        (KeyPatch::new().owner("root\u{7}"), "owner"),
        (KeyPatch::new().owner("root\u{FEFF}"), "owner"),
        (
            KeyPatch::new().description(Some("line\nline".to_owned())),
            "description",
        ),
        (
            KeyPatch::new().scopes(Some(vec!["a b".to_owned()])),
            "scopes",
        ),
        (KeyPatch::new().scopes(Some(vec![String::new()])), "scopes"),
        (KeyPatch::new().metadata(big), "metadata"),
        (
            KeyPatch::new().expires_at(Some(chrono::DateTime::<chrono::Utc>::MAX_UTC)),
            "expires_at",
        ),
    ];
    for (patch, field) in cases {
        let shown = format!("{patch:?}");
        match h.gate.update(id, patch).await {
            Err(Error::InvalidInput { field: got, .. }) => assert_eq!(got, field, "{shown}"),
            other => panic!("{shown}: {other:?}"),
        }
    }
    assert_eq!(h.store.all().await, before);
    assert_eq!(h.store.calls().writes(), writes);
    // Clearing is always allowed.
    h.gate
        .update(
            id,
            KeyPatch::new()
                .description(None)
                .scopes(None::<Vec<String>>),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_failing_store_fails_the_mint_with_its_error() {
    let h = Harness::new();
    h.store.fail(Op::Insert, Failure::Timeout);
    let err = h.gate.mint(NewKey::new("k", "alice")).await.unwrap_err();
    assert!(matches!(err, Error::Store(StoreError::Timeout)), "{err:?}");
    assert!(h.store.is_empty());
}

// ---------------------------------------------------------------------------------------
// Import
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn import_keeps_the_id_and_never_overwrites() {
    let a = Harness::new();
    let issued = a
        .gate
        .mint(NewKey::new("migrated", "alice").metadata(metadata()))
        .await
        .unwrap();
    let b = Harness::new();
    b.gate.import(issued.record.clone()).await.unwrap();
    let stored = b.store.record(issued.record.id).await.unwrap();
    assert_eq!(stored, issued.record);
    // The same pepper: the key verifies on the new gate under its old id.
    let principal = b.gate.verify(issued.key.expose()).await.unwrap();
    assert_eq!(principal.key_id(), issued.record.id);
    settle().await;

    // A collision is refused and the stored record is untouched.
    let impostor = {
        let mut record = issued.record.clone();
        record.name = "impostor".into();
        record.owner = "mallory".into();
        record.hash = a
            .gate
            .mint(NewKey::new("other", "alice"))
            .await
            .unwrap()
            .record
            .hash;
        record
    };
    let before = b.store.record(issued.record.id).await.unwrap();
    let err = b.gate.import(impostor).await.unwrap_err();
    match err {
        Error::Store(StoreError::Conflict(id)) => assert_eq!(id, issued.record.id),
        other => panic!("{other:?}"),
    }
    assert_eq!(b.store.record(issued.record.id).await.unwrap(), before);
    assert_eq!(b.store.len(), 1);
    b.gate.verify(issued.key.expose()).await.unwrap();

    // A collision with a freshly minted record, too.
    let minted = b.gate.mint(NewKey::new("fresh", "alice")).await.unwrap();
    let err = b
        .gate
        .import({
            let mut record = minted.record.clone();
            record.name = "shadow".into();
            record
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Store(StoreError::Conflict(_))));
    assert_eq!(
        b.store.record(minted.record.id).await.unwrap().name,
        "fresh"
    );
}

#[tokio::test]
async fn import_validates_the_record() {
    let a = Harness::new();
    let record = a.gate.mint(NewKey::new("k", "alice")).await.unwrap().record;
    let b = Harness::new();
    for (bad, field) in [
        (
            {
                let mut record = record.clone();
                record.name = String::new();
                record
            },
            "name",
        ),
        (
            {
                let mut record = record.clone();
                record.owner = " ".into();
                record
            },
            "owner",
        ),
        (
            {
                let mut record = record.clone();
                record.hash = None;
                record
            },
            "hash",
        ),
    ] {
        match b.gate.import(bad).await {
            Err(Error::InvalidInput { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{other:?}"),
        }
    }
    assert!(b.store.is_empty());
    assert_eq!(b.store.calls().insert, 0);
    // Audiobookshelf names come over as they are, control characters and all.
    let odd = {
        let mut record = record.clone();
        record.name = "line\nbreak".into();
        record
    };
    b.gate.import(odd.clone()).await.unwrap();
    assert_eq!(b.store.record(record.id).await.unwrap(), odd);
}

// ---------------------------------------------------------------------------------------
// Get and list
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn list_pages_through_one_owners_keys_without_gaps_or_repeats() {
    let h = Harness::new();
    let mut carols = BTreeSet::new();
    for i in 0..23 {
        let record = h
            .gate
            .mint(NewKey::new(format!("c{i}"), "carol"))
            .await
            .unwrap()
            .record;
        carols.insert(record.id);
        // Interleave other owners' keys.
        if i % 3 == 0 {
            h.gate
                .mint(NewKey::new(format!("d{i}"), "dave"))
                .await
                .unwrap();
        }
    }
    h.gate.mint(NewKey::new("car", "car")).await.unwrap();
    h.gate.mint(NewKey::new("carol2", "carol2")).await.unwrap();

    let mut seen = Vec::new();
    let mut query = ListQuery::new().owner("carol").limit(5);
    let mut sizes = Vec::new();
    loop {
        let page = h.gate.list(query.clone()).await.unwrap();
        sizes.push(page.records.len());
        assert!(page.records.iter().all(|r| r.owner == "carol"));
        seen.extend(page.records.iter().map(Cursor::of));
        match page.next {
            Some(next) => {
                assert_eq!(Some(next), page.records.last().map(Cursor::of));
                query = ListQuery::new().owner("carol").limit(5).after(next);
            }
            None => break,
        }
    }
    assert_eq!(sizes, vec![5, 5, 5, 5, 3]);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "pages come in creation order");
    let unique: BTreeSet<KeyId> = seen.iter().map(Cursor::id).collect();
    assert_eq!(unique.len(), seen.len(), "no key listed twice");
    assert_eq!(unique, carols, "every key listed");
}

#[tokio::test]
async fn a_full_last_page_is_followed_by_an_empty_one() {
    let h = Harness::new();
    for i in 0..10 {
        h.gate
            .mint(NewKey::new(format!("e{i}"), "erin"))
            .await
            .unwrap();
    }
    let first = h
        .gate
        .list(ListQuery::new().owner("erin").limit(5))
        .await
        .unwrap();
    let second = h
        .gate
        .list(
            ListQuery::new()
                .owner("erin")
                .limit(5)
                .after(first.next.unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(second.records.len(), 5);
    let third = h
        .gate
        .list(
            ListQuery::new()
                .owner("erin")
                .limit(5)
                .after(second.next.unwrap()),
        )
        .await
        .unwrap();
    assert!(third.records.is_empty());
    assert_eq!(third.next, None);
    // Unknown owner: one empty page.
    let none = h.gate.list(ListQuery::new().owner("nobody")).await.unwrap();
    assert!(none.records.is_empty() && none.next.is_none());
}

#[tokio::test]
async fn list_without_an_owner_pages_through_everything() {
    let h = Harness::new();
    let mut all = BTreeSet::new();
    for i in 0..12 {
        let owner = if i % 2 == 0 { "alice" } else { "bob" };
        all.insert(
            h.gate
                .mint(NewKey::new(format!("k{i}"), owner))
                .await
                .unwrap()
                .record
                .id,
        );
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let mut query = ListQuery::new().limit(4);
        if let Some(id) = after {
            query = query.after(id);
        }
        let page = h.gate.list(query).await.unwrap();
        seen.extend(page.records.iter().map(|r| r.id));
        after = page.next;
        if after.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 12);
    assert_eq!(seen.iter().copied().collect::<BTreeSet<_>>(), all);
    let err = h.gate.list(ListQuery::new().limit(0)).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput { field: "limit", .. }));
    // Oversized pages are capped at MAX_PAGE, not refused.
    let page = h
        .gate
        .list(ListQuery::new().limit(1_000_000))
        .await
        .unwrap();
    assert_eq!(page.records.len(), 12);
    assert_eq!(page.next, None);
}

#[tokio::test]
async fn get_returns_the_record_or_none() {
    let h = Harness::new();
    let issued = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    assert_eq!(
        h.gate.get(issued.record.id).await.unwrap(),
        Some(issued.record.clone())
    );
    assert_eq!(h.gate.get(KeyId::random()).await.unwrap(), None);
    h.store.fail(Op::Get, Failure::Backend);
    assert!(matches!(
        h.gate.get(issued.record.id).await,
        Err(Error::Store(StoreError::Backend(_)))
    ));
}

// ---------------------------------------------------------------------------------------
// Update, revoke, delete
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn update_changes_exactly_what_the_patch_says() {
    let h = Harness::new();
    let issued = h
        .gate
        .mint(
            NewKey::new("old name", "alice")
                .description("old")
                .scopes(["a"]),
        )
        .await
        .unwrap();
    let id = issued.record.id;
    h.clock.advance(TimeDelta::minutes(5));
    let later = t0() + TimeDelta::minutes(5);
    let updated = h
        .gate
        .update(
            id,
            KeyPatch::new()
                .name("new name")
                .description(None)
                .scopes(Some(["b", "c"]))
                .metadata(metadata())
                .expires_at(Some(later + TimeDelta::days(1))),
        )
        .await
        .unwrap();
    let stored = h.store.record(id).await.unwrap();
    assert_eq!(updated, stored);
    assert_eq!(stored, {
        let mut record = issued.record.clone();
        record.name = "new name".into();
        record.description = None;
        record.scopes = Some(BTreeSet::from(["b".to_owned(), "c".to_owned()]));
        record.metadata = metadata();
        record.expires_at = Some(later + TimeDelta::days(1));
        record.updated_at = later;
        record
    });
    assert_eq!(stored.created_at, t0());
    assert_eq!(stored.hash, issued.record.hash);
    h.gate.verify(issued.key.expose()).await.unwrap();
    settle().await;

    // An empty patch changes nothing and writes nothing.
    let calls = h.store.calls();
    let same = h.gate.update(id, KeyPatch::new()).await.unwrap();
    assert_eq!(same, h.store.record(id).await.unwrap());
    assert_eq!(h.store.calls().update, calls.update);

    // Unknown ids.
    let missing = KeyId::random();
    assert!(matches!(
        h.gate.update(missing, KeyPatch::new().name("x")).await,
        Err(Error::NotFound(id)) if id == missing
    ));
    assert!(matches!(
        h.gate.update(missing, KeyPatch::new()).await,
        Err(Error::NotFound(id)) if id == missing
    ));
    assert!(matches!(
        h.gate.revoke(missing).await,
        Err(Error::NotFound(id)) if id == missing
    ));

    // Invalid patches write nothing.
    let before = h.store.record(id).await.unwrap();
    let calls = h.store.calls();
    for (patch, field) in [
        (KeyPatch::new().name(""), "name"),
        (KeyPatch::new().name("x\ny"), "name"),
        (
            KeyPatch::new().name("x".repeat(keygate::bounds::MAX_NAME_LEN + 1)),
            "name",
        ),
        (KeyPatch::new().owner(""), "owner"),
        // (`hash` and `updated_at` are keygate's: a caller cannot set them at all.)
    ] {
        match h.gate.update(id, patch).await {
            Err(Error::InvalidInput { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(h.store.calls().update, calls.update);
    assert_eq!(h.store.record(id).await.unwrap(), before);
}

#[tokio::test]
async fn revoke_then_reactivate() {
    let h = Harness::new();
    let issued = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let key = issued.key.expose();
    h.gate.verify(key).await.unwrap();
    h.clock.advance(TimeDelta::seconds(10));
    let revoked = h.gate.revoke(issued.record.id).await.unwrap();
    assert!(!revoked.active);
    assert_eq!(revoked.updated_at, t0() + TimeDelta::seconds(10));
    assert!(!h.store.record(issued.record.id).await.unwrap().active);
    h.assert_refused(key, Rejection::Inactive).await;
    // Revoking twice is harmless.
    assert!(!h.gate.revoke(issued.record.id).await.unwrap().active);
    let back = h
        .gate
        .update(issued.record.id, KeyPatch::new().active(true))
        .await
        .unwrap();
    assert!(back.active);
    h.gate.verify(key).await.unwrap();
}

#[tokio::test]
async fn a_deleted_key_is_unknown_and_cannot_be_deleted_twice() {
    let h = Harness::new();
    let issued = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let other = h.gate.mint(NewKey::new("other", "alice")).await.unwrap();
    let key = issued.key.expose();
    h.gate.verify(key).await.unwrap();
    h.gate.delete(issued.record.id).await.unwrap();
    assert_eq!(h.store.record(issued.record.id).await, None);
    assert_eq!(h.gate.get(issued.record.id).await.unwrap(), None);
    assert_eq!(h.store.len(), 1);
    h.assert_refused(key, Rejection::UnknownKey).await;
    match h.gate.delete(issued.record.id).await {
        Err(Error::NotFound(id)) => assert_eq!(id, issued.record.id),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        h.gate
            .update(issued.record.id, KeyPatch::new().active(true))
            .await,
        Err(Error::NotFound(_))
    ));
    // The other key is untouched.
    h.gate.verify(other.key.expose()).await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Rotate
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn rotate_hands_over_with_a_grace_period() {
    let h = Harness::new();
    let old = h
        .gate
        .mint(
            NewKey::new("Backup Script", "alice")
                .description("nightly")
                .created_by("admin-1")
                .scopes(["library:read"])
                .metadata(metadata()),
        )
        .await
        .unwrap();
    let old_key = old.key.expose().to_owned();
    h.clock.advance(TimeDelta::hours(1));
    let rotated_at = t0() + TimeDelta::hours(1);
    let grace = TimeDelta::minutes(10);
    let new = h.gate.rotate(old.record.id, grace).await.unwrap();
    let new_key = new.key.expose().to_owned();

    assert_ne!(new.record.id, old.record.id);
    assert_ne!(new_key, old_key);
    assert_eq!(new.record.name, "Backup Script");
    assert_eq!(new.record.description.as_deref(), Some("nightly"));
    assert_eq!(new.record.owner, "alice");
    assert_eq!(new.record.created_by.as_deref(), Some("admin-1"));
    assert_eq!(
        new.record.scopes,
        Some(BTreeSet::from(["library:read".to_owned()]))
    );
    assert_eq!(new.record.metadata, metadata());
    assert_eq!(new.record.format, KeyFormat::Opaque);
    assert_eq!(new.record.created_at, rotated_at);
    assert_eq!(new.record.expires_at, None);
    assert!(new.record.active);
    assert_eq!(h.store.record(new.record.id).await.unwrap(), new.record);
    let grace_end = rotated_at + grace;
    let old_stored = h.store.record(old.record.id).await.unwrap();
    assert_eq!(old_stored.expires_at, Some(grace_end));
    assert!(old_stored.active);
    assert_eq!(h.store.len(), 2);

    let principal = h.gate.verify(&new_key).await.unwrap();
    assert_eq!(principal.key_id(), new.record.id);
    assert!(principal.allows("library:read"));
    assert!(!principal.allows("library:write"));
    h.gate.verify(&old_key).await.unwrap();
    h.clock.set(grace_end - TimeDelta::seconds(1));
    h.gate.verify(&old_key).await.unwrap();
    h.clock.set(grace_end);
    h.assert_refused(&old_key, Rejection::Expired).await;
    h.gate.verify(&new_key).await.unwrap();
    h.clock.advance(TimeDelta::days(365));
    h.gate.verify(&new_key).await.unwrap();
}

#[tokio::test]
async fn rotate_never_extends_either_key_past_the_old_expiry() {
    let h = Harness::new();
    let old = h
        .gate
        .mint(
            NewKey::new("j", "alice")
                .format(KeyFormat::Jwt)
                .expires_in(TimeDelta::days(30)),
        )
        .await
        .unwrap();
    h.clock.advance(TimeDelta::days(29));
    // A grace longer than the old key's remaining life does not extend it.
    let new = h
        .gate
        .rotate(old.record.id, TimeDelta::days(7))
        .await
        .unwrap();
    assert_eq!(new.record.format, KeyFormat::Jwt);
    // The new key ends when the old one would have: rotation is no way to live longer.
    assert_eq!(new.record.expires_at, Some(t0() + TimeDelta::days(30)));
    assert_eq!(
        jwt_claims(new.key.expose())["exp"],
        json!((t0() + TimeDelta::days(30)).timestamp())
    );
    assert_eq!(
        h.store.record(old.record.id).await.unwrap().expires_at,
        Some(t0() + TimeDelta::days(30))
    );
    h.gate.verify(new.key.expose()).await.unwrap();
    h.gate.verify(old.key.expose()).await.unwrap();
    h.clock.set(t0() + TimeDelta::days(30));
    h.assert_refused(new.key.expose(), Rejection::JwtExpired)
        .await;
}

#[tokio::test]
async fn a_rotated_jwt_stops_at_the_end_of_its_grace() {
    let h = Harness::new();
    let old = h
        .gate
        .mint(NewKey::new("j", "alice").format(KeyFormat::Jwt))
        .await
        .unwrap();
    let new = h
        .gate
        .rotate(old.record.id, TimeDelta::minutes(10))
        .await
        .unwrap();
    assert_eq!(new.record.format, KeyFormat::Jwt);
    assert_eq!(new.record.expires_at, None);
    assert!(jwt_claims(new.key.expose()).get("exp").is_none());
    let grace_end = t0() + TimeDelta::minutes(10);
    h.clock.set(grace_end - TimeDelta::seconds(1));
    h.gate.verify(old.key.expose()).await.unwrap();
    h.clock.set(grace_end);
    // The old token carries no `exp` of its own: the record decides.
    h.assert_refused(old.key.expose(), Rejection::Expired).await;
    h.gate.verify(new.key.expose()).await.unwrap();
}

#[tokio::test]
async fn rotate_keeps_an_imported_name_that_mint_would_refuse() {
    // `import` takes Audiobookshelf names as they are (control characters, any length);
    // `rotate` promises "the old one's name". Rotating such a migrated key must work.
    let h = Harness::new();
    let abs_name = format!(
        "Backup\tScript {}",
        "x".repeat(keygate::bounds::MAX_NAME_LEN)
    );
    let id = KeyId::random();
    h.gate
        .import(KeyRecord::new(
            id,
            KeyFormat::Jwt,
            abs_name.clone(),
            "alice",
            t0(),
        ))
        .await
        .unwrap();
    let old_token = jwt_with(&api_claims(id));
    h.gate.verify(&old_token).await.unwrap();
    let rotated = h
        .gate
        .rotate(id, TimeDelta::minutes(10))
        .await
        .expect("rotating an imported key");
    assert_eq!(rotated.record.name, abs_name);
    assert_eq!(rotated.record.format, KeyFormat::Jwt);
    h.gate.verify(rotated.key.expose()).await.unwrap();
    assert_eq!(
        h.store.record(id).await.unwrap().expires_at,
        Some(t0() + TimeDelta::minutes(10))
    );
}

#[tokio::test]
async fn rotate_with_no_grace_stops_the_old_key_now() {
    let h = Harness::new();
    let old = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let new = h
        .gate
        .rotate(old.record.id, TimeDelta::zero())
        .await
        .unwrap();
    h.assert_refused(old.key.expose(), Rejection::Expired).await;
    h.gate.verify(new.key.expose()).await.unwrap();

    let err = h
        .gate
        .rotate(new.record.id, TimeDelta::seconds(-1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { field: "grace", .. }));
    let missing = KeyId::random();
    assert!(matches!(
        h.gate.rotate(missing, TimeDelta::zero()).await,
        Err(Error::NotFound(id)) if id == missing
    ));
    assert_eq!(h.store.len(), 2);
}

#[tokio::test]
async fn a_rotate_whose_last_write_fails_leaves_no_orphan() {
    let h = Harness::new();
    let old = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let before = h.store.all().await;
    h.store.fail(Op::Update, Failure::Backend);
    let err = h
        .gate
        .rotate(old.record.id, TimeDelta::zero())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::Backend(_))),
        "{err:?}"
    );
    h.store.heal();
    // The new key, whose plaintext nobody got, was deleted again; the old one is as it was.
    assert_eq!(h.store.all().await, before);
    h.gate.verify(old.key.expose()).await.unwrap();
    // So a retry starts from scratch, and works.
    let new = h
        .gate
        .rotate(old.record.id, TimeDelta::zero())
        .await
        .unwrap();
    h.gate.verify(new.key.expose()).await.unwrap();
    h.assert_refused(old.key.expose(), Rejection::Expired).await;
    assert_eq!(h.store.len(), 2);
}

#[tokio::test]
async fn rotate_refuses_a_grace_out_of_range_before_writing() {
    let h = Harness::new();
    let old = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let before = h.store.all().await;
    let calls = h.store.calls();
    // TimeDelta::MAX used to panic at `now + grace`, after the new key was stored.
    for grace in [
        TimeDelta::MAX,
        TimeDelta::days(100_000_000),
        TimeDelta::days(365 * 8000),
    ] {
        let err = h.gate.rotate(old.record.id, grace).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidInput { field: "grace", .. }),
            "{grace}: {err:?}"
        );
    }
    assert_eq!(
        h.store.all().await,
        before,
        "exactly the old key, unchanged"
    );
    assert_eq!(h.store.calls().writes(), calls.writes());
    // The latest grace accepted ends on 9999-12-31T23:59:59Z.
    let longest = keygate::bounds::MAX_EXPIRY - t0();
    h.gate.rotate(old.record.id, longest).await.unwrap();
    assert_eq!(
        h.store.record(old.record.id).await.unwrap().expires_at,
        Some(keygate::bounds::MAX_EXPIRY)
    );
}

#[tokio::test]
async fn rotate_refuses_revoked_and_expired_keys() {
    let h = Harness::new();
    let revoked = h.gate.mint(NewKey::new("r", "alice")).await.unwrap();
    h.gate.revoke(revoked.record.id).await.unwrap();
    let expiring = h
        .gate
        .mint(NewKey::new("e", "alice").expires_in(TimeDelta::hours(1)))
        .await
        .unwrap();
    h.clock.advance(TimeDelta::hours(1));
    let before = h.store.all().await;
    let writes = h.store.calls().writes();
    for id in [revoked.record.id, expiring.record.id] {
        let err = h.gate.rotate(id, TimeDelta::days(1)).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidInput { field: "id", .. }),
            "{err:?}"
        );
    }
    assert_eq!(h.store.all().await, before, "nothing written");
    assert_eq!(h.store.calls().writes(), writes);
}

#[tokio::test]
async fn a_retried_rotate_neither_shortens_nor_extends_the_old_key() {
    let h = Harness::new();
    let old = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let grace = TimeDelta::hours(1);
    let first = h.gate.rotate(old.record.id, grace).await.unwrap();
    let grace_end = t0() + grace;
    // The answer was lost; the caller retries ten minutes later with the same request.
    h.clock.advance(TimeDelta::minutes(10));
    let second = h.gate.rotate(old.record.id, grace).await.unwrap();
    let old_stored = h.store.record(old.record.id).await.unwrap();
    assert_eq!(
        old_stored.expires_at,
        Some(grace_end),
        "not moved either way"
    );
    // The retry's key inherits the old key's end as it now stands: never later.
    assert_eq!(second.record.expires_at, Some(grace_end));
    assert_eq!(first.record.expires_at, None);
    h.gate.verify(second.key.expose()).await.unwrap();
    h.clock.set(grace_end);
    h.assert_refused(old.key.expose(), Rejection::Expired).await;
    h.assert_refused(second.key.expose(), Rejection::Expired)
        .await;
    h.gate.verify(first.key.expose()).await.unwrap();
}

/// A store that runs `hook` on the inner store right after the first insert: a change by
/// another process landing between `rotate`'s read and its last write.
struct Interfering<F> {
    inner: Arc<CountingStore>,
    hook: std::sync::Mutex<Option<F>>,
}

#[async_trait::async_trait]
impl<F, Fut> KeyStore for Interfering<F>
where
    F: FnOnce(Arc<CountingStore>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.inner.insert(record).await?;
        let hook = self.hook.lock().unwrap().take();
        if let Some(hook) = hook {
            hook(self.inner.clone()).await;
        }
        Ok(())
    }
    async fn get(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.inner.get(id).await
    }
    async fn update(&self, id: KeyId, patch: &KeyPatch) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.update(id, patch).await
    }
    async fn delete(&self, id: KeyId) -> Result<bool, StoreError> {
        self.inner.delete(id).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.list(query).await
    }
    async fn record_last_used(
        &self,
        batch: &[(KeyId, chrono::DateTime<chrono::Utc>)],
    ) -> Result<(), StoreError> {
        self.inner.record_last_used(batch).await
    }
    async fn remember_pepper(
        &self,
        version: u32,
        fingerprint: keygate::PepperFingerprint,
    ) -> Result<Option<keygate::PepperFingerprint>, StoreError> {
        self.inner.remember_pepper(version, fingerprint).await
    }
}

/// A gate over `store` wrapped in [`Interfering`] with `hook`.
fn interfered<F, Fut>(h: &Harness, hook: F) -> keygate::Keygate
where
    F: FnOnce(Arc<CountingStore>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    keygate::Keygate::builder(
        Interfering {
            inner: h.store.clone(),
            hook: std::sync::Mutex::new(Some(hook)),
        },
        keygate::Pepper::new(1, PEPPER_V1).unwrap(),
    )
    .prefix(PREFIX)
    .clock(h.clock.clone())
    .build()
    .unwrap()
}

#[tokio::test]
async fn a_revoke_racing_a_rotate_leaves_both_keys_revoked() {
    let h = Harness::new();
    let old = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let old_id = old.record.id;
    let gate = interfered(&h, move |store: Arc<CountingStore>| async move {
        // Another admin revokes the old key after rotate read it.
        store
            .update(old_id, &KeyPatch::new().active(false))
            .await
            .unwrap()
            .unwrap();
    });
    let err = gate.rotate(old_id, TimeDelta::hours(1)).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { field: "id", .. }),
        "{err:?}"
    );
    let all = h.store.all().await;
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|r| !r.active), "{all:?}");
    h.assert_refused(old.key.expose(), Rejection::Inactive)
        .await;
}

#[tokio::test]
async fn a_delete_racing_a_rotate_leaves_no_orphan() {
    let h = Harness::new();
    let old = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let old_id = old.record.id;
    let gate = interfered(&h, move |store: Arc<CountingStore>| async move {
        assert!(store.delete(old_id).await.unwrap());
    });
    let err = gate.rotate(old_id, TimeDelta::hours(1)).await.unwrap_err();
    assert!(
        matches!(err, Error::NotFound(id) if id == old_id),
        "{err:?}"
    );
    assert!(h.store.is_empty(), "{:?}", h.store.all().await);
}

// ---------------------------------------------------------------------------------------
// The plaintext stays in IssuedKey::key
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_plaintext_never_appears_in_debug_or_serialized_output() {
    let h = Harness::new();
    for format in [KeyFormat::Opaque, KeyFormat::Jwt] {
        let issued = h
            .gate
            .mint(NewKey::new("k", "alice").format(format))
            .await
            .unwrap();
        let key = issued.key.expose().to_owned();
        let secret = match format {
            KeyFormat::Jwt => key.rsplit_once('.').unwrap().1.to_owned(),
            _ => secret_part(&key, PREFIX).to_owned(),
        };
        let principal = h.gate.verify(&key).await.unwrap();
        let rotated = h
            .gate
            .rotate(issued.record.id, TimeDelta::hours(1))
            .await
            .unwrap();
        let mut wrong = key.clone();
        wrong.push('x');
        let refusal = h.gate.verify(&wrong).await.unwrap_err();
        let listed = h.gate.list(ListQuery::new()).await.unwrap();
        let texts = [
            format!("{issued:?}"),
            format!("{:#?}", issued),
            format!("{:?}", issued.key),
            issued.key.to_string(),
            format!("{:?}", issued.record),
            serde_json::to_string(&issued.record).unwrap(),
            format!("{:?}", h.store.record(issued.record.id).await.unwrap()),
            serde_json::to_string(&h.store.record(issued.record.id).await.unwrap()).unwrap(),
            format!("{listed:?}"),
            serde_json::to_string(&listed.records).unwrap(),
            format!("{principal:?}"),
            serde_json::to_string(&principal).unwrap(),
            format!("{:?}", h.gate),
            format!("{refusal:?} {refusal}"),
            format!("{rotated:?}"),
        ];
        for text in &texts {
            assert!(!text.contains(&key), "plaintext in {text}");
            assert!(!text.contains(&secret), "secret part in {text}");
            let new_key = rotated.key.expose();
            assert!(!text.contains(new_key), "rotated plaintext in {text}");
        }
        assert_eq!(format!("{:?}", issued.key), "Secret([redacted])");
        // Nor do the gate's own secrets show.
        let configured = format!(
            "{:?} {:?}",
            h.gate,
            builder(&h.store, &h.clock).jwt_secret(jwt_secret())
        );
        for secret in [PEPPER_V1, JWT_SECRET] {
            let text = std::str::from_utf8(secret).unwrap();
            assert!(!configured.contains(text), "{configured}");
        }
        // What a record serializes to: no field that could hold a secret but the hash.
        let json: serde_json::Value = serde_json::to_value(&issued.record).unwrap();
        let digest = json["hash"]["digest"].as_str().unwrap();
        assert_eq!(digest.len(), 64);
        assert_eq!(json["hash"]["version"], json!(1));
    }
}

/// F3: an operator shortens a key's expiry (to stop it soon) while a rotate of it with a
/// long grace is under way. The rotate's write of the old key's end must not put the old
/// key's life back, and the new key must not outlive the shortened expiry either.
#[tokio::test]
async fn a_shortening_racing_a_rotate_stands() {
    let h = Harness::new();
    let old = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let old_id = old.record.id;
    let stop = t0() + TimeDelta::minutes(1);
    let gate = interfered(&h, move |store: Arc<CountingStore>| async move {
        // After rotate read the old key (never expiring) and minted the new one.
        store
            .update(old_id, &KeyPatch::new().expires_at(Some(stop)))
            .await
            .unwrap()
            .unwrap();
    });
    let issued = gate.rotate(old_id, TimeDelta::days(30)).await.unwrap();
    let after = h.gate.get(old_id).await.unwrap().unwrap();
    assert_eq!(after.expires_at, Some(stop));
    assert_eq!(issued.record.expires_at, Some(stop));
    assert_eq!(
        h.store.record(issued.record.id).await.unwrap(),
        issued.record
    );
    h.clock.advance(TimeDelta::minutes(2));
    h.assert_refused(old.key.expose(), Rejection::Expired).await;
    h.assert_refused(issued.key.expose(), Rejection::Expired)
        .await;
}

/// F3: a change of the old key's scopes (or owner) during a rotate: the new key, minted
/// with the old scopes, is deleted again and the answer is `Error::Changed`; the old key
/// keeps its end (nothing of the rotate was written to it).
#[tokio::test]
async fn a_scope_change_racing_a_rotate_leaves_no_new_key() {
    let h = Harness::new();
    let old = h
        .gate
        .mint(NewKey::new("k", "alice").scopes(["library:read", "library:write"]))
        .await
        .unwrap();
    let old_id = old.record.id;
    let gate = interfered(&h, move |store: Arc<CountingStore>| async move {
        store
            .update(old_id, &KeyPatch::new().scopes(Some(["library:read"])))
            .await
            .unwrap()
            .unwrap();
    });
    let err = gate.rotate(old_id, TimeDelta::hours(1)).await.unwrap_err();
    assert!(matches!(err, Error::Changed(id) if id == old_id), "{err:?}");
    let all = h.store.all().await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].expires_at, None);
    assert_eq!(
        all[0].scopes,
        Some(BTreeSet::from(["library:read".to_owned()]))
    );
    h.gate.verify(old.key.expose()).await.unwrap();
}

/// `Keygate::update` with a patch made conditional on a copy that is no longer current:
/// `Error::Changed`, nothing written; on the current copy it applies.
#[tokio::test]
async fn a_conditional_update_on_a_stale_copy_writes_nothing() {
    let h = Harness::new();
    let issued = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let id = issued.record.id;
    let read = h.gate.get(id).await.unwrap().unwrap();
    let current = h
        .gate
        .update(id, KeyPatch::new().scopes(Some(["library:read"])))
        .await
        .unwrap();
    let before = h.store.all().await;
    for stale in [
        KeyPatch::new()
            .scopes(None::<Vec<String>>)
            .if_unchanged(&read),
        KeyPatch::new().if_unchanged(&read),
    ] {
        let err = h.gate.update(id, stale).await.unwrap_err();
        assert!(
            matches!(err, Error::Changed(changed) if changed == id),
            "{err:?}"
        );
        assert_eq!(h.store.all().await, before);
    }
    let renamed = h
        .gate
        .update(id, KeyPatch::new().name("renamed").if_unchanged(&current))
        .await
        .unwrap();
    assert_eq!(renamed.name, "renamed");
}

/// F3: the old key's expiry is moved to now while a rotate is under way: the old key is
/// expired, so the new key (which would bring it back) is deleted again.
#[tokio::test]
async fn an_expiry_racing_a_rotate_leaves_no_new_key() {
    let h = Harness::new();
    let old = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let old_id = old.record.id;
    let gate = interfered(&h, move |store: Arc<CountingStore>| async move {
        store
            .update(old_id, &KeyPatch::new().expires_at(Some(t0())))
            .await
            .unwrap()
            .unwrap();
    });
    let err = gate.rotate(old_id, TimeDelta::hours(1)).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { field: "id", .. }),
        "{err:?}"
    );
    let all = h.store.all().await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].expires_at, Some(t0()));
}
