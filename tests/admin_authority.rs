//! The admin API's authority rules, through the framework-free `AdminApi::handle`:
//! admin is never implied by a missing directory, and no admin call mints or widens a key
//! beyond the calling key's own reach (review H2, M2). Every refusal is a 403 with the
//! `insufficient_scope` challenge, names its reason, and writes nothing.

// Test code: a panic is how a test reports a failure, and fixtures index and count
// over small known values.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use common::*;
use keygate::admin::{AdminApi, AdminRequest, AdminResponse, ADMIN_PERMISSION};
use keygate::{KeyRecord, Keygate, ManualClock, NewKey, Owner, Principal};
use serde_json::{json, Value};

/// A harness whose directory knows `root` (everything), `ops` (`admin` only), `lead`
/// (`admin` and `library:read`) and `bob` (`library:read`), plus the harness's `alice`
/// (everything).
fn harness() -> Harness {
    let h = Harness::new();
    h.users.set("root", Owner::unrestricted());
    h.users.set("ops", Owner::active(["admin"]));
    h.users
        .set("lead", Owner::active(["admin", "library:read"]));
    h.users.set("bob", Owner::active(["library:read"]));
    h
}

/// Mints `new` and verifies it: the record and the principal of its key.
async fn caller(gate: &Keygate, new: NewKey) -> (KeyRecord, Principal) {
    let issued = gate.mint(new).await.unwrap();
    let principal = gate.verify(issued.key.expose()).await.unwrap();
    (issued.record, principal)
}

async fn mint(gate: &Keygate, new: NewKey) -> KeyRecord {
    gate.mint(new).await.unwrap().record
}

async fn create(api: &AdminApi, caller: &Principal, body: Value) -> AdminResponse {
    let body = body.to_string();
    api.handle(
        caller,
        AdminRequest::Create {
            body: body.as_bytes(),
        },
    )
    .await
}

async fn patch(
    api: &AdminApi,
    caller: &Principal,
    id: impl ToString,
    body: Value,
) -> AdminResponse {
    let (id, body) = (id.to_string(), body.to_string());
    api.handle(
        caller,
        AdminRequest::Update {
            id: &id,
            body: body.as_bytes(),
        },
    )
    .await
}

async fn delete(api: &AdminApi, caller: &Principal, id: impl ToString) -> AdminResponse {
    let id = id.to_string();
    api.handle(caller, AdminRequest::Delete { id: &id }).await
}

async fn rotate(api: &AdminApi, caller: &Principal, id: impl ToString) -> AdminResponse {
    let id = id.to_string();
    api.handle(caller, AdminRequest::Rotate { id: &id, body: b"" })
        .await
}

async fn list(api: &AdminApi, caller: &Principal) -> AdminResponse {
    api.handle(caller, AdminRequest::List { query: None }).await
}

fn body(response: &AdminResponse) -> Value {
    serde_json::from_str(&response.body).unwrap()
}

/// Asserts `response` is the 403 refusal for `reason`, with the challenge.
#[track_caller]
fn assert_forbidden(response: &AdminResponse, reason: &str) {
    assert_eq!(response.status, 403, "{}", response.body);
    let body = body(response);
    assert_eq!(body["error"], "insufficient_scope", "{body}");
    assert!(body["error_description"].is_string(), "{body}");
    assert_eq!(body["reason"], reason, "{body}");
    let challenge = response.www_authenticate.as_deref().unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer realm=")
            && challenge.contains(r#"error="insufficient_scope""#),
        "{challenge:?}"
    );
    assert!(!response.body.contains("apiKey"), "{}", response.body);
}

#[track_caller]
fn assert_ok(response: &AdminResponse) -> Value {
    assert_eq!(response.status, 200, "{}", response.body);
    if response.content_type == "application/json" {
        body(response)
    } else {
        Value::Null
    }
}

/// The store's records and write counts, after pending last-used writes.
struct Snapshot {
    records: Vec<KeyRecord>,
    writes: usize,
}

async fn snapshot(h: &Harness) -> Snapshot {
    h.gate.flush().await.unwrap();
    let calls = h.store.calls();
    Snapshot {
        records: h.store.all().await,
        writes: calls.insert + calls.update + calls.delete,
    }
}

/// Asserts nothing was written since `before`.
async fn assert_unchanged(h: &Harness, before: &Snapshot) {
    let after = snapshot(h).await;
    assert_eq!(
        after.writes, before.writes,
        "a refused call wrote to the store"
    );
    assert_eq!(after.records, before.records);
}

fn t(hours: i64) -> DateTime<Utc> {
    t0() + TimeDelta::hours(hours)
}

// ---------------------------------------------------------------------------------------
// Who is admin
// ---------------------------------------------------------------------------------------

/// A gate with no directory, over a counting store, as a harness-like pair.
fn no_directory() -> (Keygate, Arc<CountingStore>) {
    let store = CountingStore::new();
    let clock = Arc::new(ManualClock::new(t0()));
    (builder(&store, &clock).build().unwrap(), store)
}

#[tokio::test]
async fn without_a_directory_an_unscoped_key_is_not_admin() {
    let (gate, store) = no_directory();
    let api = AdminApi::new(gate.clone());
    let (victim, plain) = caller(&gate, NewKey::new("script", "user-1")).await;
    // What the old documented predicate admitted: the key allows "admin" by default...
    assert!(plain.allows(ADMIN_PERMISSION));
    // ...but that is not a grant.
    assert!(!plain.grants(ADMIN_PERMISSION));
    assert!(!api.is_admin(&plain));

    gate.flush().await.unwrap();
    let records = store.all().await;
    let writes = store.calls().writes();
    let id = victim.id.to_string();
    let requests = [
        AdminRequest::List { query: None },
        AdminRequest::Create {
            body: br#"{"name":"x","userId":"anyone"}"#,
        },
        AdminRequest::Get { id: &id },
        AdminRequest::Update {
            id: &id,
            body: br#"{"scopes":null}"#,
        },
        AdminRequest::Delete { id: &id },
        AdminRequest::Rotate { id: &id, body: b"" },
    ];
    for request in requests {
        let response = api.handle(&plain, request).await;
        assert_forbidden(&response, "not_admin");
        assert_eq!(
            response.www_authenticate.as_deref(),
            Some(r#"Bearer realm="api", error="insufficient_scope", scope="admin""#)
        );
    }
    assert_eq!(store.all().await, records);
    assert_eq!(store.calls().writes(), writes);
}

#[tokio::test]
async fn without_a_directory_a_key_scoped_admin_is_admin_within_its_scopes() {
    let (gate, store) = no_directory();
    let api = AdminApi::new(gate.clone());
    let (_, bootstrap) = caller(
        &gate,
        NewKey::new("bootstrap", "ops").scopes(["admin", "library:read"]),
    )
    .await;
    assert!(bootstrap.grants(ADMIN_PERMISSION));
    assert_ok(&list(&api, &bootstrap).await);

    // Within its scopes, for its own owner: fine.
    let created = assert_ok(
        &create(
            &api,
            &bootstrap,
            json!({ "name": "reader", "userId": "ops", "scopes": ["library:read"] }),
        )
        .await,
    );
    assert_eq!(created["apiKey"]["scopes"], json!(["library:read"]));

    // Unscoped, or for another owner (who holds everything without a directory): refused.
    let before = store.all().await;
    assert_forbidden(
        &create(&api, &bootstrap, json!({ "name": "x", "userId": "ops" })).await,
        "wider_permissions",
    );
    assert_forbidden(
        &create(
            &api,
            &bootstrap,
            json!({ "name": "x", "userId": "root", "scopes": ["library:read"] }),
        )
        .await,
        "owner_out_of_reach",
    );
    assert_eq!(store.all().await, before);

    // A renamed admin permission: "admin" no longer admits anyone.
    let renamed = AdminApi::new(gate.clone()).permission("keys:admin");
    assert_eq!(renamed.admin_permission(), "keys:admin");
    assert_forbidden(&list(&renamed, &bootstrap).await, "not_admin");
    let (_, keys_admin) = caller(&gate, NewKey::new("k", "ops").scopes(["keys:admin"])).await;
    assert_ok(&list(&renamed, &keys_admin).await);
}

#[tokio::test]
async fn with_a_directory_the_directory_grants_admin() {
    let h = harness();
    let api = AdminApi::new(h.gate.clone());
    let (_, root) = caller(&h.gate, NewKey::new("root", "root")).await;
    let (_, lead) = caller(&h.gate, NewKey::new("lead", "lead")).await;
    let (_, bob) = caller(&h.gate, NewKey::new("bob", "bob")).await;
    let (_, bob_scoped) = caller(&h.gate, NewKey::new("b", "bob").scopes(["admin"])).await;
    let (_, root_reader) = caller(&h.gate, NewKey::new("r", "root").scopes(["library:read"])).await;
    assert_ok(&list(&api, &root).await);
    assert_ok(&list(&api, &lead).await);
    // Not granted by the directory; a scope cannot add what the owner lacks.
    assert_forbidden(&list(&api, &bob).await, "not_admin");
    assert_forbidden(&list(&api, &bob_scoped).await, "not_admin");
    // Scoped away from it.
    assert_forbidden(&list(&api, &root_reader).await, "not_admin");
}

// ---------------------------------------------------------------------------------------
// Escalations (review M2), each refused with nothing written
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_scoped_admin_key_cannot_mint_an_unscoped_key() {
    let h = harness();
    let api = AdminApi::new(h.gate.clone());
    let (_, scoped) = caller(&h.gate, NewKey::new("keys only", "root").scopes(["admin"])).await;
    let before = snapshot(&h).await;
    assert_forbidden(
        &create(&api, &scoped, json!({ "name": "x", "userId": "root" })).await,
        "wider_permissions",
    );
    assert_forbidden(
        &create(
            &api,
            &scoped,
            json!({ "name": "x", "userId": "root", "scopes": ["admin", "library:write"] }),
        )
        .await,
        "wider_permissions",
    );
    // Even switched off: it could be switched on later.
    assert_forbidden(
        &create(
            &api,
            &scoped,
            json!({ "name": "x", "userId": "root", "isActive": false }),
        )
        .await,
        "wider_permissions",
    );
    assert_unchanged(&h, &before).await;

    // As narrow as itself: fine.
    assert_ok(
        &create(
            &api,
            &scoped,
            json!({ "name": "x", "userId": "root", "scopes": ["admin"] }),
        )
        .await,
    );
}

#[tokio::test]
async fn an_admin_cannot_mint_for_an_owner_above_it() {
    let h = harness();
    let api = AdminApi::new(h.gate.clone());
    let (_, ops) = caller(&h.gate, NewKey::new("ops", "ops")).await;
    let before = snapshot(&h).await;
    for user in ["root", "alice", "bob"] {
        for scopes in [json!(null), json!(["admin"])] {
            assert_forbidden(
                &create(
                    &api,
                    &ops,
                    json!({ "name": "x", "userId": user, "scopes": scopes }),
                )
                .await,
                "owner_out_of_reach",
            );
        }
    }
    assert_unchanged(&h, &before).await;
    // An unknown owner is still 400, as before.
    let response = create(&api, &ops, json!({ "name": "x", "userId": "ghost" })).await;
    assert_eq!(response.status, 400, "{}", response.body);
    assert_unchanged(&h, &before).await;

    // lead holds admin and library:read: it may mint for bob (library:read only).
    let (_, lead) = caller(&h.gate, NewKey::new("lead", "lead")).await;
    let created = assert_ok(&create(&api, &lead, json!({ "name": "sync", "userId": "bob" })).await);
    assert_eq!(created["apiKey"]["userId"], "bob");
    assert_eq!(created["apiKey"]["createdByUserId"], "lead");
}

#[tokio::test]
async fn a_key_cannot_patch_itself_wider() {
    let h = harness();
    let api = AdminApi::new(h.gate.clone());
    let (me, scoped) = caller(
        &h.gate,
        NewKey::new("temp admin", "root")
            .scopes(["admin"])
            .expires_in(TimeDelta::hours(1)),
    )
    .await;
    let before = snapshot(&h).await;
    let cases = [
        (json!({ "scopes": null }), "wider_permissions"),
        (
            json!({ "scopes": ["admin", "library:write"] }),
            "wider_permissions",
        ),
        (json!({ "expiresAt": null }), "longer_lifetime"),
        (json!({ "expiresAt": t(2) }), "longer_lifetime"),
        (json!({ "userId": "alice" }), "owner_out_of_reach"),
        (
            json!({ "name": "renamed", "scopes": null }),
            "wider_permissions",
        ),
    ];
    for (change, reason) in cases {
        assert_forbidden(&patch(&api, &scoped, me.id, change.clone()).await, reason);
    }
    assert_unchanged(&h, &before).await;

    // Narrowing itself is fine: a new name, an earlier expiry.
    let patched = assert_ok(
        &patch(
            &api,
            &scoped,
            me.id,
            json!({ "name": "renamed", "expiresAt": t0() + TimeDelta::minutes(30) }),
        )
        .await,
    );
    assert_eq!(patched["apiKey"]["name"], "renamed");
}

#[tokio::test]
async fn an_admin_cannot_reactivate_or_widen_a_key_above_it() {
    let h = harness();
    let api = AdminApi::new(h.gate.clone());
    let (_, ops) = caller(&h.gate, NewKey::new("ops", "ops")).await;
    let (_, scoped_root) =
        caller(&h.gate, NewKey::new("keys only", "root").scopes(["admin"])).await;
    let revoked_root = mint(&h.gate, NewKey::new("root's", "root").active(false)).await;
    let ops_reader = mint(
        &h.gate,
        NewKey::new("ops'", "ops").scopes(Vec::<String>::new()),
    )
    .await;
    let before = snapshot(&h).await;

    // Another owner's key, above the caller.
    assert_forbidden(
        &patch(&api, &ops, revoked_root.id, json!({ "isActive": true })).await,
        "owner_out_of_reach",
    );
    // Same owner, but the key can do more than the caller.
    assert_forbidden(
        &patch(
            &api,
            &scoped_root,
            revoked_root.id,
            json!({ "isActive": true }),
        )
        .await,
        "wider_permissions",
    );
    // Re-owning a key to root.
    assert_forbidden(
        &patch(&api, &ops, ops_reader.id, json!({ "userId": "root" })).await,
        "owner_out_of_reach",
    );
    assert_forbidden(
        &patch(
            &api,
            &scoped_root,
            ops_reader.id,
            json!({ "userId": "alice" }),
        )
        .await,
        "owner_out_of_reach",
    );
    // Deleting, rotating root's key.
    assert_forbidden(
        &delete(&api, &ops, revoked_root.id).await,
        "owner_out_of_reach",
    );
    assert_forbidden(
        &rotate(&api, &ops, revoked_root.id).await,
        "owner_out_of_reach",
    );
    assert_forbidden(
        &rotate(&api, &scoped_root, revoked_root.id).await,
        "wider_permissions",
    );
    assert_unchanged(&h, &before).await;
    let record = h.gate.get(revoked_root.id).await.unwrap().unwrap();
    assert!(!record.active);
    assert_eq!(record.scopes, None);

    // Its own owner's key, no wider than itself: fine.
    assert_ok(&patch(&api, &ops, ops_reader.id, json!({ "scopes": ["admin"] })).await);
    assert_ok(&rotate(&api, &ops, ops_reader.id).await);
}

#[tokio::test]
async fn an_expiring_admin_cannot_produce_a_longer_lived_key_but_can_revoke() {
    let h = harness();
    let api = AdminApi::new(h.gate.clone());
    let (_, temp) = caller(
        &h.gate,
        NewKey::new("temp", "root").expires_in(TimeDelta::hours(1)),
    )
    .await;
    let forever = mint(&h.gate, NewKey::new("leaked", "bob")).await;
    let before = snapshot(&h).await;
    for body in [
        json!({ "name": "x", "userId": "bob" }),
        json!({ "name": "x", "userId": "bob", "expiresIn": 7200 }),
    ] {
        assert_forbidden(&create(&api, &temp, body).await, "longer_lifetime");
    }
    // Rotating a never-expiring key would mint another never-expiring one.
    assert_forbidden(&rotate(&api, &temp, forever.id).await, "longer_lifetime");
    // A revoked key cannot be switched back on beyond the caller's lifetime either.
    assert_unchanged(&h, &before).await;

    // Narrowing needs no lifetime: revoke the leaked key, then delete it.
    let revoked = assert_ok(&patch(&api, &temp, forever.id, json!({ "isActive": false })).await);
    assert_eq!(revoked["apiKey"]["isActive"], false);
    assert_forbidden(
        &patch(&api, &temp, forever.id, json!({ "isActive": true })).await,
        "longer_lifetime",
    );
    assert_ok(&delete(&api, &temp, forever.id).await);
    // And it may mint keys that die no later than itself.
    let created = assert_ok(
        &create(
            &api,
            &temp,
            json!({ "name": "x", "userId": "bob", "expiresIn": 3600 }),
        )
        .await,
    );
    assert_eq!(created["apiKey"]["expiresAt"], json!(t(1)));
}

#[tokio::test]
async fn an_owner_unknown_to_the_directory_counts_as_holding_everything() {
    let h = harness();
    let api = AdminApi::new(h.gate.clone());
    let (_, lead) = caller(&h.gate, NewKey::new("lead", "lead")).await;
    h.users.set("gone", Owner::active(["library:read"]));
    let orphan = mint(&h.gate, NewKey::new("orphan", "gone").active(false)).await;
    h.users.remove("gone");
    let before = snapshot(&h).await;
    // "gone" may come back with any permissions: lead cannot switch the key back on.
    assert_forbidden(
        &patch(&api, &lead, orphan.id, json!({ "isActive": true })).await,
        "owner_out_of_reach",
    );
    assert_unchanged(&h, &before).await;
}

#[tokio::test]
async fn a_rotated_key_never_outlives_an_expiring_caller() {
    let h = harness();
    let api = AdminApi::new(h.gate.clone());
    let (_, temp) = caller(
        &h.gate,
        NewKey::new("temp", "root").expires_in(TimeDelta::hours(2)),
    )
    .await;
    let old = mint(
        &h.gate,
        NewKey::new("sync", "bob").expires_in(TimeDelta::hours(2)),
    )
    .await;
    // The request was verified at t0; the gate mints the new key ten minutes later.
    h.clock.advance(TimeDelta::minutes(10));
    let rotated = assert_ok(&rotate(&api, &temp, old.id).await);
    let new_id: keygate::KeyId = rotated["apiKey"]["id"].as_str().unwrap().parse().unwrap();
    let stored = h.gate.get(new_id).await.unwrap().unwrap();
    assert!(stored.expires_at.is_some_and(|at| at <= t(2)), "{stored:?}");
    assert_eq!(rotated["apiKey"]["expiresAt"], json!(stored.expires_at));
}
