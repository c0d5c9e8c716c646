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

use std::sync::{Arc, Mutex};

use crate::support::*;
use chrono::{DateTime, TimeDelta, Utc};
use keygate::admin::{AdminApi, AdminRequest, AdminResponse, ADMIN_PERMISSION};
use keygate::{
    DirectoryError, KeyFormat, KeyRecord, Keygate, ManualClock, NewKey, Owner, Principal,
    UserDirectory,
};
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// A harness whose directory knows `root` (everything), `ops` (`admin` only), `lead`
/// (`admin` and `library:read`) and `bob` (`library:read`), plus the harness's `alice`
/// (everything).
fn harness() -> Harness {
    let h = Harness::new();
    h.users.set("root", Owner::unrestricted());
    h.users.set("ops", Owner::with_permissions(["admin"]));
    h.users
        .set("lead", Owner::with_permissions(["admin", "library:read"]));
    h.users
        .set("bob", Owner::with_permissions(["library:read"]));
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
    h.users
        .set("gone", Owner::with_permissions(["library:read"]));
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

// ---------------------------------------------------------------------------------------
// Races and lifetimes (security review of the issue-7 work: F1, F2, F4, rotate check)
// ---------------------------------------------------------------------------------------

/// A directory that holds the *first* lookup of one user open until released, to put
/// another request deterministically between an admin call's check and its write.
#[derive(Clone)]
struct Held {
    inner: Directory,
    armed: Arc<Mutex<Option<Hold>>>,
}

type Hold = (String, oneshot::Sender<()>, oneshot::Receiver<()>);

impl Held {
    fn new(inner: Directory) -> Self {
        Self {
            inner,
            armed: Arc::new(Mutex::new(None)),
        }
    }

    /// Holds the next lookup of `user`: the first receiver fires once it is reached, the
    /// second sender releases it.
    fn arm(&self, user: &str) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        *self.armed.lock().unwrap() = Some((user.to_owned(), reached_tx, release_rx));
        (reached_rx, release_tx)
    }
}

#[async_trait::async_trait]
impl UserDirectory for Held {
    async fn owner(&self, user_id: &str) -> Result<Option<Owner>, DirectoryError> {
        let hold = {
            let mut armed = self.armed.lock().unwrap();
            match armed.as_ref() {
                Some((user, _, _)) if user == user_id => armed.take(),
                _ => None,
            }
        };
        if let Some((_, reached, release)) = hold {
            let _ = reached.send(());
            let _ = release.await;
        }
        self.inner.owner(user_id).await
    }
}

/// A gate over a counting store whose directory is [`Held`]: `lead` holds `admin`,
/// `library:read` and `library:write`, `ops` only `admin`.
fn held_gate() -> (Keygate, Held, Arc<CountingStore>) {
    let store = CountingStore::new();
    let clock = Arc::new(ManualClock::new(t0()));
    let dir = Directory::new();
    dir.set(
        "lead",
        Owner::with_permissions(["admin", "library:read", "library:write"]),
    );
    dir.set("ops", Owner::with_permissions(["admin"]));
    let held = Held::new(dir);
    let gate = builder(&store, &clock).users(held.clone()).build().unwrap();
    (gate, held, store)
}

#[track_caller]
fn assert_conflict(response: &AdminResponse) {
    assert_eq!(response.status, 409, "{}", response.body);
    let body = body(response);
    assert_eq!(body["error"], "conflict", "{body}");
    assert!(!response.body.contains("apiKey"), "{}", response.body);
}

/// F1: two PATCHes from one limited admin, each allowed against the record it read, must
/// not combine into a key wider than the caller. P2 `{"scopes": null}` reads the key (ops,
/// unscoped: a no-op, so unchecked) and waits; P1 moves it to lead narrowed to `admin`;
/// P2 must then not write `scopes = null` onto (lead, ["admin"]).
#[tokio::test]
async fn racing_patches_cannot_combine_into_a_key_wider_than_the_caller() {
    let (gate, held, store) = held_gate();
    let api = AdminApi::new(gate.clone());
    // The caller: lead's key narrowed to ["admin"].
    let (_, me) = caller(&gate, NewKey::new("me", "lead").scopes(["admin"])).await;
    let k = assert_ok(&create(&api, &me, json!({ "name": "k", "userId": "ops" })).await);
    let plaintext = k["apiKey"]["apiKey"].as_str().unwrap().to_owned();
    let id: keygate::KeyId = k["apiKey"]["id"].as_str().unwrap().parse().unwrap();

    let (reached, release) = held.arm("ops");
    let p2 = {
        let (api, me) = (api.clone(), me.clone());
        tokio::spawn(async move { patch(&api, &me, id, json!({ "scopes": null })).await })
    };
    reached.await.unwrap(); // P2 has read the record and is checking it
    let p1 = patch(
        &api,
        &me,
        id,
        json!({ "userId": "lead", "scopes": ["admin"] }),
    )
    .await;
    assert_ok(&p1);
    let after_p1 = store.record(id).await.unwrap();
    release.send(()).unwrap();
    let p2 = p2.await.unwrap();
    assert_conflict(&p2);

    // Nothing of P2 was written; the key is no wider than the caller.
    assert_eq!(store.record(id).await.unwrap(), after_p1);
    let key = gate.verify(&plaintext).await.unwrap();
    assert_eq!(key.owner_id(), "lead");
    assert!(!me.allows("library:write"));
    assert!(!key.allows("library:write"), "{:?}", key.scopes());
}

/// The rotate check judges the record it read; if the key changes (here: moved to `lead`,
/// who holds `library:write`, and unscoped, by another request) before the gate rotates
/// it, the rotation is refused, not run on the wider record.
#[tokio::test]
async fn a_rotate_checked_on_a_record_that_changed_is_refused() {
    let (gate, held, store) = held_gate();
    let api = AdminApi::new(gate.clone());
    let (_, me) = caller(&gate, NewKey::new("me", "lead").scopes(["admin"])).await;
    let k = mint(&gate, NewKey::new("k", "ops").scopes(["admin"])).await;
    let (reached, release) = held.arm("ops");
    let rotation = {
        let (api, me) = (api.clone(), me.clone());
        tokio::spawn(async move { rotate(&api, &me, k.id).await })
    };
    reached.await.unwrap(); // the rotate read the scoped record and is checking it
    let moved = keygate::KeyPatch::new()
        .owner("lead")
        .scopes(None::<Vec<String>>);
    gate.update(k.id, moved).await.unwrap();
    release.send(()).unwrap();
    assert_conflict(&rotation.await.unwrap());
    // No new key was minted from the wider record: only the caller's and k remain.
    let all = store.all().await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.iter().any(|r| r.id == k.id), "{all:?}");
    assert!(!me.allows("library:write"));
}

/// F2: a deactivated owner (`Owner::inactive()`, no permissions listed) counts as holding
/// everything: a limited admin cannot mint for, rotate for, move a key to, or switch back
/// on a key of a suspended root, keys that would wake up with everything when root returns.
#[tokio::test]
async fn an_inactive_owner_counts_as_holding_everything() {
    let h = harness();
    let api = AdminApi::new(h.gate.clone());
    let (_, lead) = caller(&h.gate, NewKey::new("lead", "lead")).await;
    let (_, alice) = caller(&h.gate, NewKey::new("alice", "alice")).await;
    let root_key = mint(&h.gate, NewKey::new("root", "root")).await;
    let root_off = mint(&h.gate, NewKey::new("root off", "root").active(false)).await;
    let bob_key = mint(&h.gate, NewKey::new("bob", "bob")).await;
    h.users.set("root", Owner::inactive());
    let before = snapshot(&h).await;
    assert_forbidden(
        &create(&api, &lead, json!({ "name": "backdoor", "userId": "root" })).await,
        "owner_out_of_reach",
    );
    assert_forbidden(
        &rotate(&api, &lead, root_key.id).await,
        "owner_out_of_reach",
    );
    assert_forbidden(
        &patch(&api, &lead, root_off.id, json!({ "isActive": true })).await,
        "owner_out_of_reach",
    );
    assert_forbidden(
        &patch(&api, &lead, bob_key.id, json!({ "userId": "root" })).await,
        "owner_out_of_reach",
    );
    assert_unchanged(&h, &before).await;
    // An admin holding everything still may.
    assert_ok(&create(&api, &alice, json!({ "name": "k", "userId": "root" })).await);
    assert_ok(&patch(&api, &alice, root_off.id, json!({ "isActive": true })).await);
}

/// F4: a JWT admin key's lifetime is its token's `exp`, even when its record's expiry was
/// lifted later: it cannot mint a never-expiring key.
#[tokio::test]
async fn a_jwt_callers_lifetime_ends_at_its_token_exp() {
    let h = harness();
    let api = AdminApi::new(h.gate.clone());
    let jwt = h
        .gate
        .mint(
            NewKey::new("ci", "ops")
                .format(KeyFormat::Jwt)
                .expires_in(TimeDelta::hours(1)),
        )
        .await
        .unwrap();
    // Some admin lifts the record's expiry; the token still says exp = t0 + 1 h.
    h.gate
        .update(jwt.record.id, keygate::KeyPatch::new().expires_at(None))
        .await
        .unwrap();
    let me = h.gate.verify(jwt.key.expose()).await.unwrap();
    assert_eq!(me.expires_at(), Some(t(1)));
    assert_eq!(me.record().expires_at, None);
    assert_eq!(serde_json::to_value(&me).unwrap()["expiresAt"], json!(t(1)));
    let before = snapshot(&h).await;
    assert_forbidden(
        &create(&api, &me, json!({ "name": "forever", "userId": "ops" })).await,
        "longer_lifetime",
    );
    assert_forbidden(
        &create(
            &api,
            &me,
            json!({ "name": "later", "userId": "ops", "expiresIn": 7200 }),
        )
        .await,
        "longer_lifetime",
    );
    assert_unchanged(&h, &before).await;
    let ok = assert_ok(
        &create(
            &api,
            &me,
            json!({ "name": "short", "userId": "ops", "expiresIn": 3600 }),
        )
        .await,
    );
    assert_eq!(ok["apiKey"]["expiresAt"], json!(t(1)));
    // A record expiry earlier than the token's exp still wins.
    h.gate
        .update(
            jwt.record.id,
            keygate::KeyPatch::new().expires_at(Some(t0() + TimeDelta::minutes(30))),
        )
        .await
        .unwrap();
    let me = h.gate.verify(jwt.key.expose()).await.unwrap();
    assert_eq!(me.expires_at(), Some(t0() + TimeDelta::minutes(30)));
}

/// The rotate check judges exactly what `rotate` mints, a key with the old key's own
/// `expires_at`: an admin expiring at T may rotate a key expiring at T, whenever.
#[tokio::test]
async fn an_expiring_admin_can_rotate_a_key_that_expires_with_it() {
    let h = harness();
    let api = AdminApi::new(h.gate.clone());
    let me = h
        .gate
        .mint(
            NewKey::new("me", "alice")
                .scopes(["admin"])
                .expires_in(TimeDelta::hours(2)),
        )
        .await
        .unwrap();
    let k = mint(
        &h.gate,
        NewKey::new("k", "alice")
            .scopes(["admin"])
            .expires_in(TimeDelta::hours(2)),
    )
    .await;
    h.clock.advance(TimeDelta::hours(1));
    let me = h.gate.verify(me.key.expose()).await.unwrap();
    let rotated = assert_ok(&rotate(&api, &me, k.id).await);
    assert_eq!(rotated["apiKey"]["expiresAt"], json!(t(2)));
    let new_id: keygate::KeyId = rotated["apiKey"]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        h.gate.get(new_id).await.unwrap().unwrap().expires_at,
        Some(t(2))
    );
}

#[tokio::test]
async fn bodies_must_be_utf8_json_objects() {
    // serde reads a JSON array into a struct by position, and skips ignored members without
    // checking their UTF-8: `[true,"root",…]` re-owned a key to root (found by fuzzing).
    let h = harness();
    let api = AdminApi::new(h.gate.clone());
    let (_, root) = caller(&h.gate, NewKey::new("root key", "root")).await;
    let target = mint(&h.gate, NewKey::new("k", "bob")).await;
    let id = target.id.to_string();
    let before = snapshot(&h).await;
    let mut not_utf8 = br#"{"name":"n","userId":"bob","description":""#.to_vec();
    not_utf8.extend_from_slice(b"\xff\"}");
    let requests: [(&str, AdminRequest<'_>); 5] = [
        (
            "create array",
            AdminRequest::Create {
                body: br#"["n","root",null,null,null,null,null,null]"#,
            },
        ),
        ("create not UTF-8", AdminRequest::Create { body: &not_utf8 }),
        (
            "update array",
            AdminRequest::Update {
                id: &id,
                body: br#"[true,"root",null,null,null,null]"#,
            },
        ),
        (
            "update not UTF-8",
            AdminRequest::Update {
                id: &id,
                body: b"{\"name\":\"\xff\"}",
            },
        ),
        (
            "rotate array",
            AdminRequest::Rotate {
                id: &id,
                body: b"[0]",
            },
        ),
    ];
    for (case, request) in requests {
        let response = api.handle(&root, request).await;
        assert_eq!(response.status, 400, "{case}: {}", response.body);
    }
    assert_unchanged(&h, &before).await;
}

#[tokio::test]
async fn a_principal_from_another_gate_is_not_admin_here() {
    // Review I5: both adapters reuse a Principal already in the request, so one verified
    // by gate A (its own store, pepper, directory) must not drive gate B's admin API.
    let a = harness();
    let b = harness();
    let (_, root_of_a) = caller(&a.gate, NewKey::new("root key", "root")).await;
    assert!(a.gate.verified(&root_of_a));
    assert!(!b.gate.verified(&root_of_a));
    let before = snapshot(&b).await;
    let foreign = AdminApi::new(b.gate.clone());
    assert_forbidden(&list(&foreign, &root_of_a).await, "not_admin");
    assert_forbidden(
        &create(
            &foreign,
            &root_of_a,
            json!({ "name": "x", "userId": "root" }),
        )
        .await,
        "not_admin",
    );
    assert_unchanged(&b, &before).await;
    // On its own gate it is admin.
    assert_ok(&list(&AdminApi::new(a.gate.clone()), &root_of_a).await);
}
