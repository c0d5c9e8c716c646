//! A conformance suite for [`KeyStore`] implementations.
//!
//! One set of async checks that every store must pass: the built-in ones run it in
//! keygate's own tests, and a third-party store can prove itself the same way:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::Arc;
//! let store = Arc::new(keygate::MemoryStore::new());
//! keygate::testing::run_all(store).await; // panics with a message on the first failure
//! # }
//! ```
//!
//! The checks never assume the store is empty (each uses its own random owner and ids),
//! so they can share one database with other tests, and they never delete records they
//! did not create. The pepper checks record fingerprints under random pepper versions
//! from 2³¹ up (which no deployment is expected to use) and leave them: stores offer no
//! way to delete one.

// This module is a test suite: a failed check panics with a message, as `assert!` does in
// `#[test]`s, and that panic is its report. Nothing here runs on a request path (it is only
// compiled with the `testing` feature and only called by tests).
#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use serde_json::json;

use crate::hash::{HashScheme, PepperFingerprint, SecretHash};
use crate::key::{KeyFormat, KeyId};
use crate::limits::{AllowedOrigin, Cidr, NetworkPolicy};
use crate::record::{KeyPatch, KeyRecord, Metadata};
use crate::store::{Cursor, KeyStore, ListQuery, StoreError};

/// Runs every check below, in order.
pub async fn run_all(store: Arc<dyn KeyStore>) {
    crud(&*store).await;
    insert_never_overwrites(&*store).await;
    not_found_is_none(&*store).await;
    hash_and_format_round_trip(&*store).await;
    expiry_and_active_round_trip(&*store).await;
    network_round_trip(&*store).await;
    unicode_round_trip(&*store).await;
    usage_policy_round_trips(&*store).await;
    paging(&*store).await;
    last_used_batches(&*store).await;
    large_metadata(&*store).await;
    concurrent_inserts(store.clone()).await;
    concurrent_colliding_inserts(store.clone()).await;
    conditional_updates(&*store).await;
    concurrent_updates_are_atomic(store.clone()).await;
    concurrent_conditional_updates(store.clone()).await;
    pepper_fingerprints(&*store).await;
    concurrent_pepper_fingerprints(store).await;
}

/// A fresh opaque record for `owner`, with timestamps at microsecond precision (what
/// keygate itself writes).
pub fn sample_record(owner: &str) -> KeyRecord {
    let now = now();
    KeyRecord {
        id: KeyId::random(),
        format: KeyFormat::Opaque,
        hash: Some(SecretHash {
            version: 1,
            digest: *KeyId::random()
                .as_uuid()
                .as_bytes()
                .repeat(2)
                .first_chunk()
                .expect("32 bytes"),
            scheme: HashScheme::Bound,
        }),
        name: "conformance key".to_owned(),
        description: Some("made by keygate::testing".to_owned()),
        owner: owner.to_owned(),
        created_by: Some("conformance-admin".to_owned()),
        created_at: now,
        updated_at: now,
        expires_at: None,
        last_used_at: None,
        active: true,
        scopes: None,
        metadata: Metadata::new(),
        network: NetworkPolicy::new(),
        ratelimits: Vec::new(),
        credits: None,
    }
}

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn unique_owner(check: &str) -> String {
    format!("conformance-{check}-{}", KeyId::random())
}

async fn must_get(store: &dyn KeyStore, id: KeyId, check: &str) -> KeyRecord {
    match store.get(id).await {
        Ok(Some(record)) => KeyRecord::clone(&record),
        Ok(None) => panic!("{check}: record {id} missing after a successful write"),
        Err(e) => panic!("{check}: get({id}) failed: {e:?}"),
    }
}

/// Insert, get, update, delete; and every field survives the round trip exactly.
pub async fn crud(store: &dyn KeyStore) {
    let mut record = sample_record(&unique_owner("crud"));
    record.scopes = Some(BTreeSet::from(["a:read".to_owned(), "b:write".to_owned()]));
    record
        .metadata
        .insert("team".into(), json!({"name": "ops", "size": 3}));
    record.expires_at = Some(now() + TimeDelta::days(30));
    store.insert(record.clone()).await.expect("crud: insert");
    assert_eq!(
        must_get(store, record.id, "crud").await,
        record,
        "crud: round trip"
    );

    let later = now() + TimeDelta::seconds(1);
    let patch = KeyPatch {
        updated_at: Some(later),
        ..KeyPatch::new()
            .name("renamed")
            .description(None)
            .owner(unique_owner("crud-new-owner"))
            .active(false)
            .expires_at(None)
            .scopes(None::<Vec<String>>)
            .metadata(Metadata::new())
    };
    let updated = store
        .update(record.id, &patch)
        .await
        .expect("crud: update")
        .expect("crud: update found the record");
    let mut expected = record.clone();
    patch
        .apply(&mut expected)
        .expect("crud: an unconditional patch applies");
    assert_eq!(updated, expected, "crud: update returns the patched record");
    assert_eq!(
        must_get(store, record.id, "crud").await,
        expected,
        "crud: update persisted"
    );

    assert!(
        store.delete(record.id).await.expect("crud: delete"),
        "crud: delete said absent"
    );
    assert!(
        store.get(record.id).await.expect("crud: get").is_none(),
        "crud: deleted record still there"
    );
    assert!(
        !store.delete(record.id).await.expect("crud: second delete"),
        "crud: second delete said present"
    );
}

/// A second insert with the same id is [`StoreError::Conflict`] and changes nothing.
pub async fn insert_never_overwrites(store: &dyn KeyStore) {
    let record = sample_record(&unique_owner("collision"));
    store
        .insert(record.clone())
        .await
        .expect("collision: first insert");
    let mut impostor = sample_record(&unique_owner("collision-impostor"));
    impostor.id = record.id;
    impostor.name = "impostor".into();
    match store.insert(impostor).await {
        Err(StoreError::Conflict(id)) => {
            assert_eq!(id, record.id, "collision: conflict names the id")
        }
        other => panic!("collision: expected StoreError::Conflict, got {other:?}"),
    }
    assert_eq!(
        must_get(store, record.id, "collision").await,
        record,
        "collision: original overwritten"
    );
}

/// Missing ids are `Ok(None)` / `Ok(false)`, never errors.
pub async fn not_found_is_none(store: &dyn KeyStore) {
    let id = KeyId::random();
    assert!(matches!(store.get(id).await, Ok(None)), "not found: get");
    assert!(
        matches!(
            store.update(id, &KeyPatch::new().active(false)).await,
            Ok(None)
        ),
        "not found: update"
    );
    assert!(
        matches!(store.delete(id).await, Ok(false)),
        "not found: delete"
    );
    store
        .record_last_used(&[(id, now())])
        .await
        .expect("not found: last-used for a missing id is skipped, not an error");
    assert!(
        matches!(store.get(id).await, Ok(None)),
        "not found: last-used created a record"
    );
}

/// Hashes, hash versions, hash schemes and formats come back exactly; a JWT record with
/// and without a hash too; and `get` and `list` return the same record, under the id asked
/// for.
pub async fn hash_and_format_round_trip(store: &dyn KeyStore) {
    let owner = unique_owner("formats");
    let mut opaque = sample_record(&owner);
    opaque.hash = Some(SecretHash {
        version: u32::MAX,
        digest: [0xA5; 32],
        scheme: HashScheme::Bound,
    });
    // An opaque hash from before keygate bound hashes to the key.
    let mut legacy = sample_record(&owner);
    legacy.hash = Some(SecretHash {
        version: 0,
        digest: [0x5A; 32],
        scheme: HashScheme::Secret,
    });
    let mut jwt = sample_record(&owner);
    jwt.format = KeyFormat::Jwt;
    jwt.hash = None;
    let mut minted_jwt = sample_record(&owner);
    minted_jwt.format = KeyFormat::Jwt;
    minted_jwt.hash = Some(SecretHash {
        version: 3,
        digest: [0x3C; 32],
        scheme: HashScheme::Secret,
    });
    let records = [opaque, legacy, jwt, minted_jwt];
    for record in records.clone() {
        store.insert(record.clone()).await.expect("formats: insert");
        assert_eq!(
            must_get(store, record.id, "formats").await,
            record,
            "formats: round trip"
        );
        assert_eq!(
            store.get(record.id).await.ok().flatten().map(|r| r.id),
            Some(record.id),
            "formats: get returns the id asked for"
        );
    }
    let mut expected = records.to_vec();
    expected.sort_by_key(Cursor::of);
    let listed = store
        .list(&ListQuery::new().owner(owner.clone()))
        .await
        .expect("formats: list");
    assert_eq!(listed, expected, "formats: list returns what get does");
    // A re-hash (what keygate writes after a pepper rotation, or to bind a legacy hash to
    // its key) lands whole.
    let mut record = sample_record(&owner);
    record.hash = Some(SecretHash {
        version: 1,
        digest: [9; 32],
        scheme: HashScheme::Secret,
    });
    store.insert(record.clone()).await.expect("formats: insert");
    let patch = KeyPatch {
        hash: Some(SecretHash {
            version: 2,
            digest: [7; 32],
            scheme: HashScheme::Bound,
        }),
        ..KeyPatch::new()
    };
    store
        .update(record.id, &patch)
        .await
        .expect("formats: rehash")
        .expect("formats: found");
    patch
        .apply(&mut record)
        .expect("formats: an unconditional patch applies");
    assert_eq!(
        must_get(store, record.id, "formats").await,
        record,
        "formats: rehash persisted"
    );
}

/// A network policy (IPv4 and IPv6 networks, origins with ports and wildcards) survives
/// insert, get, list and updates that set, change and lift it; the conditional update
/// sees a change to it.
pub async fn network_round_trip(store: &dyn KeyStore) {
    let cidr = |text: &str| text.parse::<Cidr>().expect("network: a valid CIDR");
    let origin = |text: &str| {
        text.parse::<AllowedOrigin>()
            .expect("network: a valid origin")
    };
    let owner = unique_owner("network");
    let mut record = sample_record(&owner);
    record.network = NetworkPolicy::new()
        .with_cidrs([
            cidr("10.0.0.0/8"),
            cidr("203.0.113.7"),
            cidr("2001:db8::/32"),
            cidr("::1"),
        ])
        .with_origins([
            origin("https://app.example.com"),
            origin("http://localhost:3000"),
            origin("https://*.example.org"),
            origin("http://[::1]:8080"),
        ]);
    store.insert(record.clone()).await.expect("network: insert");
    assert_eq!(
        must_get(store, record.id, "network").await,
        record,
        "network: round trip"
    );
    let listed = store
        .list(&ListQuery::new().owner(owner.clone()))
        .await
        .expect("network: list");
    assert_eq!(
        listed,
        vec![record.clone()],
        "network: list returns the policy"
    );

    // Narrow the networks, keep the origins.
    let narrower = KeyPatch::new().allowed_cidrs([cidr("10.1.0.0/16")]);
    let updated = store
        .update(record.id, &narrower)
        .await
        .expect("network: update")
        .expect("network: found");
    narrower.apply(&mut record).expect("network: applies");
    assert_eq!(updated, record, "network: update returns the new policy");
    assert_eq!(record.network.cidrs(), &[cidr("10.1.0.0/16")][..]);
    assert_eq!(record.network.origins().len(), 4);
    assert_eq!(must_get(store, record.id, "network").await, record);

    // A conditional patch decided before a policy change does not apply after it.
    let stale = record.clone();
    let lifted_origins = KeyPatch::new().allowed_origins([]);
    store
        .update(record.id, &lifted_origins)
        .await
        .expect("network: update")
        .expect("network: found");
    lifted_origins.apply(&mut record).expect("network: applies");
    let conditional = KeyPatch::new().name("renamed").if_unchanged(&stale);
    assert!(
        matches!(
            store.update(record.id, &conditional).await,
            Err(StoreError::Changed(id)) if id == record.id
        ),
        "network: a conditional patch fails on a changed policy"
    );

    // Lifting every restriction reads back as unrestricted.
    let lifted = KeyPatch::new().allowed_cidrs([]);
    store
        .update(record.id, &lifted)
        .await
        .expect("network: update")
        .expect("network: found");
    let back = must_get(store, record.id, "network").await;
    assert!(back.network.is_unrestricted(), "network: lifted");
    lifted.apply(&mut record).expect("network: applies");
    assert_eq!(back, record);
}

/// Expiry instants and the active flag survive writes in both directions.
pub async fn expiry_and_active_round_trip(store: &dyn KeyStore) {
    let mut record = sample_record(&unique_owner("expiry"));
    let at = now() + TimeDelta::microseconds(1_234_567);
    record.expires_at = Some(at);
    record.active = false;
    store.insert(record.clone()).await.expect("expiry: insert");
    let got = must_get(store, record.id, "expiry").await;
    assert_eq!(got.expires_at, Some(at), "expiry: microseconds kept");
    assert!(!got.active, "expiry: inactive kept");
    let got = store
        .update(
            record.id,
            &KeyPatch::new()
                .active(true)
                .expires_at(Some(at + TimeDelta::days(1))),
        )
        .await
        .expect("expiry: update")
        .expect("expiry: found");
    assert!(
        got.active && got.expires_at == Some(at + TimeDelta::days(1)),
        "expiry: update"
    );
    let got = store
        .update(record.id, &KeyPatch::new().expires_at(None))
        .await
        .expect("expiry: clear")
        .expect("expiry: found");
    assert_eq!(got.expires_at, None, "expiry: cleared");
    assert_eq!(
        must_get(store, record.id, "expiry").await.expires_at,
        None,
        "expiry: clear persisted"
    );
}

/// Names, owners, scopes and metadata in any script, with quotes and emoji, come back
/// byte for byte.
pub async fn unicode_round_trip(store: &dyn KeyStore) {
    let owner = format!("{}-usuário-日本-🔑", unique_owner("unicode"));
    let mut record = sample_record(&owner);
    record.name = "Sauvegarde « nuit » — 夜間バックアップ 🔐 'quoted' \"double\" \\ back".into();
    record.description = Some("Ελληνικά · العربية · עברית · emoji 👩‍💻".into());
    record.scopes = Some(BTreeSet::from([
        "bücher:lesen".to_owned(),
        "書籍:書く".to_owned(),
    ]));
    record.metadata.insert("ключ".into(), json!("значение 🚀"));
    store.insert(record.clone()).await.expect("unicode: insert");
    assert_eq!(
        must_get(store, record.id, "unicode").await,
        record,
        "unicode: round trip"
    );
    let page = store
        .list(&ListQuery::new().owner(owner.clone()))
        .await
        .expect("unicode: list");
    assert_eq!(page.len(), 1, "unicode: list by unicode owner");
    assert_eq!(page[0], record, "unicode: listed record");
}

/// The usage policy ([`KeyRecord::ratelimits`], [`KeyRecord::credits`]) round-trips through
/// insert, get, list and update: several limits (one manual, one with a burst), credits with
/// a monthly refill and a `set_at`, then replaced, then removed.
pub async fn usage_policy_round_trips(store: &dyn KeyStore) {
    use crate::limits::{CreditPolicy, CreditRefill, RateLimit};
    let owner = unique_owner("usage-policy");
    let mut record = sample_record(&owner);
    record.ratelimits = vec![
        RateLimit::new("requests", 100, 60_000),
        RateLimit::new("tokens", 50_000, 3_600_000)
            .manual()
            .with_burst(5_000),
    ];
    let mut credits = CreditPolicy::new(1_000).refill(CreditRefill::monthly(500, 31));
    credits.set_at = Some(now());
    record.credits = Some(credits);
    store
        .insert(record.clone())
        .await
        .expect("usage policy: insert");
    assert_eq!(
        must_get(store, record.id, "usage policy").await,
        record,
        "usage policy: round trip"
    );
    let page = store
        .list(&ListQuery::new().owner(owner.clone()))
        .await
        .expect("usage policy: list");
    assert_eq!(page, vec![record.clone()], "usage policy: listed record");
    let daily = CreditPolicy::new(0).refill(CreditRefill::daily(10));
    let patch = KeyPatch::new()
        .ratelimits([RateLimit::new("requests", 1, 1)])
        .credits(Some(daily.clone()))
        .if_unchanged(&record);
    let updated = store
        .update(record.id, &patch)
        .await
        .expect("usage policy: update")
        .expect("usage policy: updated record");
    assert_eq!(updated.ratelimits, vec![RateLimit::new("requests", 1, 1)]);
    assert_eq!(updated.credits, Some(daily));
    assert_eq!(must_get(store, record.id, "usage policy").await, updated);
    // A patch decided on the record before the change of limits must not apply.
    let stale = KeyPatch::new().name("stale").if_unchanged(&record);
    assert!(
        matches!(
            store.update(record.id, &stale).await,
            Err(StoreError::Changed(_))
        ),
        "usage policy: a change of limits fails a stale conditional patch"
    );
    let cleared = store
        .update(record.id, &KeyPatch::new().ratelimits([]).credits(None))
        .await
        .expect("usage policy: clear")
        .expect("usage policy: cleared record");
    assert!(cleared.ratelimits.is_empty() && cleared.credits.is_none());
    assert_eq!(must_get(store, record.id, "usage policy").await, cleared);
}

/// Listing by owner in pages: creation order (`created_at`, then id, as [`Cursor`] orders
/// them), `after` exclusive, no duplicates or gaps; keys created in the same microsecond
/// and keys inserted out of creation order included.
pub async fn paging(store: &dyn KeyStore) {
    let owner = unique_owner("paging");
    let other = unique_owner("paging-other");
    let base = now();
    let mut cursors = Vec::new();
    for i in 0..25i64 {
        let mut record = sample_record(&owner);
        record.name = format!("key {i}");
        // Five distinct instants, inserted out of order, five keys sharing each.
        record.created_at = base - TimeDelta::seconds((i * 7) % 5);
        cursors.push(Cursor::of(&record));
        store.insert(record).await.expect("paging: insert");
        store
            .insert(sample_record(&other))
            .await
            .expect("paging: insert other");
    }
    cursors.sort();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let mut query = ListQuery::new().owner(owner.clone()).limit(10);
        query.after = after;
        let page = store.list(&query).await.expect("paging: list");
        assert!(page.len() <= 10, "paging: limit exceeded ({})", page.len());
        assert!(
            page.iter().all(|r| r.owner == owner),
            "paging: another owner's key listed"
        );
        if page.is_empty() {
            break;
        }
        after = page.last().map(Cursor::of);
        seen.extend(page.iter().map(Cursor::of));
        if page.len() < 10 {
            break;
        }
    }
    assert_eq!(
        seen, cursors,
        "paging: pages must cover every key once, in creation order"
    );
    // Unfiltered listing is in creation order too and honours the cursor.
    let start = cursors[0];
    let page = store
        .list(&ListQuery::new().after(start).limit(50))
        .await
        .expect("paging: unfiltered list");
    assert!(page.len() <= 50, "paging: unfiltered limit");
    assert!(
        page.iter().all(|r| Cursor::of(r) > start),
        "paging: cursor is exclusive"
    );
    assert!(
        page.windows(2)
            .all(|w| Cursor::of(&w[0]) < Cursor::of(&w[1])),
        "paging: unfiltered order"
    );
}

/// Batches set `last_used_at`, skip missing ids, and never move it backwards.
pub async fn last_used_batches(store: &dyn KeyStore) {
    let owner = unique_owner("last-used");
    let (a, b) = (sample_record(&owner), sample_record(&owner));
    store.insert(a.clone()).await.expect("last-used: insert");
    store.insert(b.clone()).await.expect("last-used: insert");
    let t1 = now();
    let t2 = t1 + TimeDelta::seconds(10);
    store
        .record_last_used(&[(a.id, t2), (b.id, t1), (KeyId::random(), t1)])
        .await
        .expect("last-used: batch");
    assert_eq!(
        must_get(store, a.id, "last-used").await.last_used_at,
        Some(t2)
    );
    assert_eq!(
        must_get(store, b.id, "last-used").await.last_used_at,
        Some(t1)
    );
    store
        .record_last_used(&[(a.id, t1), (b.id, t2)])
        .await
        .expect("last-used: second batch");
    assert_eq!(
        must_get(store, a.id, "last-used").await.last_used_at,
        Some(t2),
        "last-used moved backwards"
    );
    assert_eq!(
        must_get(store, b.id, "last-used").await.last_used_at,
        Some(t2),
        "last-used not moved forward"
    );
    store
        .record_last_used(&[])
        .await
        .expect("last-used: empty batch");
    // The rest of the record is untouched.
    let mut expected = a.clone();
    expected.last_used_at = Some(t2);
    assert_eq!(
        must_get(store, a.id, "last-used").await,
        expected,
        "last-used touched other fields"
    );
}

/// 1 MB of metadata is stored whole or refused, never cut.
pub async fn large_metadata(store: &dyn KeyStore) {
    let mut record = sample_record(&unique_owner("large"));
    record
        .metadata
        .insert("blob".into(), json!("x".repeat(1 << 20)));
    match store.insert(record.clone()).await {
        Ok(()) => assert_eq!(
            must_get(store, record.id, "large").await,
            record,
            "large: stored cut"
        ),
        Err(_) => assert!(
            matches!(store.get(record.id).await, Ok(None)),
            "large: refused insert left a record behind"
        ),
    }
    let small = sample_record(&unique_owner("large-update"));
    store
        .insert(small.clone())
        .await
        .expect("large: insert small");
    let patch = KeyPatch::new().metadata(record.metadata.clone());
    match store.update(small.id, &patch).await {
        Ok(Some(updated)) => {
            assert_eq!(
                updated.metadata, record.metadata,
                "large: update returned cut metadata"
            );
            assert_eq!(
                must_get(store, small.id, "large").await.metadata,
                record.metadata,
                "large: update stored cut"
            );
        }
        Ok(None) => panic!("large: update lost the record"),
        Err(_) => assert_eq!(
            must_get(store, small.id, "large").await,
            small,
            "large: refused update changed the record"
        ),
    }
}

/// Many tasks inserting at once: every insert that returned `Ok` is there, once.
pub async fn concurrent_inserts(store: Arc<dyn KeyStore>) {
    let owner = unique_owner("concurrent");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            let owner = owner.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..25 {
                    let record = sample_record(&owner);
                    store
                        .insert(record.clone())
                        .await
                        .expect("concurrent: insert");
                    ids.push(Cursor::of(&record));
                }
                ids
            })
        })
        .collect();
    let mut expected = Vec::new();
    for task in tasks {
        expected.extend(task.await.expect("concurrent: task panicked"));
    }
    expected.sort();
    let listed = store
        .list(&ListQuery::new().owner(owner).limit(1000))
        .await
        .expect("concurrent: list");
    let listed: Vec<Cursor> = listed.iter().map(Cursor::of).collect();
    assert_eq!(listed, expected, "concurrent: lost or duplicated records");
}

/// Many tasks inserting the *same* id at once: exactly one wins, the rest conflict.
pub async fn concurrent_colliding_inserts(store: Arc<dyn KeyStore>) {
    let owner = unique_owner("race");
    let id = KeyId::random();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            let mut record = sample_record(&owner);
            record.id = id;
            record.name = format!("contender {i}");
            tokio::spawn(async move { (store.insert(record.clone()).await, record) })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.expect("race: task panicked") {
            (Ok(()), record) => winners.push(record),
            (Err(StoreError::Conflict(got)), _) => assert_eq!(got, id),
            (Err(e), _) => panic!("race: expected Conflict, got {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "race: exactly one insert must win");
    assert_eq!(
        must_get(&*store, id, "race").await,
        winners[0],
        "race: the winner's record is stored"
    );
}

/// A pepper version no deployment uses (2³¹ and up), fresh for each check.
fn unique_pepper_version() -> u32 {
    let random = u32::from_le_bytes(
        *KeyId::random()
            .as_uuid()
            .as_bytes()
            .first_chunk()
            .expect("4 bytes"),
    );
    random | 0x8000_0000
}

/// A random fingerprint.
fn random_fingerprint() -> PepperFingerprint {
    let bytes = KeyId::random().as_uuid().as_bytes().repeat(2);
    PepperFingerprint::from_bytes(*bytes.first_chunk().expect("32 bytes"))
}

/// [`KeyStore::remember_pepper`]: the first call records the fingerprint (`None`); later
/// calls, with the same fingerprint or another, return the recorded one and never replace
/// it; versions are independent.
pub async fn pepper_fingerprints(store: &dyn KeyStore) {
    let version = unique_pepper_version();
    let (first, other) = (random_fingerprint(), random_fingerprint());
    let remember = |version, fingerprint| async move {
        store
            .remember_pepper(version, fingerprint)
            .await
            .unwrap_or_else(|e| panic!("pepper: remember_pepper({version}) failed: {e:?}"))
    };
    assert_eq!(
        remember(version, first).await,
        None,
        "pepper: the first fingerprint of a version is recorded"
    );
    assert_eq!(
        remember(version, first).await,
        Some(first),
        "pepper: the same fingerprint again returns it"
    );
    assert_eq!(
        remember(version, other).await,
        Some(first),
        "pepper: another fingerprint returns the recorded one"
    );
    assert_eq!(
        remember(version, other).await,
        Some(first),
        "pepper: another fingerprint never replaces the recorded one"
    );
    // Another version (next to it, so the versions' keys are not confused) is its own.
    let next = version.wrapping_add(1) | 0x8000_0000;
    assert_eq!(
        remember(next, other).await,
        None,
        "pepper: versions are independent"
    );
    assert_eq!(remember(next, other).await, Some(other));
    assert_eq!(remember(version, first).await, Some(first));
}

/// Many tasks recording different fingerprints for one new version at once: exactly one
/// records its own, and every other is told the winner's.
pub async fn concurrent_pepper_fingerprints(store: Arc<dyn KeyStore>) {
    let version = unique_pepper_version();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            let fingerprint = random_fingerprint();
            tokio::spawn(async move {
                (
                    store.remember_pepper(version, fingerprint).await,
                    fingerprint,
                )
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut told = Vec::new();
    for task in tasks {
        match task.await.expect("pepper race: task panicked") {
            (Ok(None), fingerprint) => winners.push(fingerprint),
            (Ok(Some(known)), _) => told.push(known),
            (Err(e), _) => panic!("pepper race: remember_pepper failed: {e:?}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "pepper race: exactly one fingerprint must be recorded"
    );
    assert!(
        told.iter().all(|known| *known == winners[0]),
        "pepper race: every loser is told the recorded fingerprint"
    );
    assert_eq!(
        store
            .remember_pepper(version, random_fingerprint())
            .await
            .expect("pepper race: read back"),
        Some(winners[0])
    );
}

/// A patch made conditional with [`KeyPatch::if_unchanged`] applies while the record's
/// owner, scopes, active flag and expiry are those it was decided on, and otherwise writes
/// nothing and is [`StoreError::Changed`].
pub async fn conditional_updates(store: &dyn KeyStore) {
    let record = sample_record(&unique_owner("conditional"));
    store
        .insert(record.clone())
        .await
        .expect("conditional: insert");
    // Holds: applied. A rename is outside the precondition, so it does not spoil it.
    let renamed = store
        .update(
            record.id,
            &KeyPatch::new().name("renamed").if_unchanged(&record),
        )
        .await
        .expect("conditional: update on an unchanged record")
        .expect("conditional: found");
    assert_eq!(renamed.name, "renamed", "conditional: applied");
    let scoped = store
        .update(
            record.id,
            &KeyPatch::new()
                .scopes(Some(["a:read"]))
                .if_unchanged(&record),
        )
        .await
        .expect("conditional: a rename does not fail the precondition")
        .expect("conditional: found");
    // Each authority field changed behind the patch's back: refused, nothing written.
    let later = now() + TimeDelta::days(1);
    let changes = [
        KeyPatch::new().owner(unique_owner("conditional-moved")),
        KeyPatch::new().scopes(Some(["b:write"])),
        KeyPatch::new().active(false),
        KeyPatch::new().expires_at(Some(later)),
    ];
    let mut read = scoped;
    for change in changes {
        let current = store
            .update(record.id, &change)
            .await
            .expect("conditional: unconditional change")
            .expect("conditional: found");
        let stale = KeyPatch::new()
            .name("stale write")
            .scopes(None::<Vec<String>>)
            .active(true)
            .if_unchanged(&read);
        match store.update(record.id, &stale).await {
            Err(StoreError::Changed(id)) => {
                assert_eq!(id, record.id, "conditional: Changed names the record")
            }
            other => {
                panic!("conditional: a stale patch ({change:?}) must be Changed, got {other:?}")
            }
        }
        assert_eq!(
            must_get(store, record.id, "conditional").await,
            current,
            "conditional: a refused patch wrote something"
        );
        read = current;
    }
    // A precondition on a record that does not exist: not found, as ever.
    assert!(
        matches!(
            store
                .update(
                    KeyId::random(),
                    &KeyPatch::new().active(false).if_unchanged(&record)
                )
                .await,
            Ok(None)
        ),
        "conditional: not found is Ok(None)"
    );
}

/// Many writers racing conditional patches decided on the same read: the check and the
/// write are one atomic step, so exactly one applies and every other is
/// [`StoreError::Changed`].
pub async fn concurrent_conditional_updates(store: Arc<dyn KeyStore>) {
    let record = sample_record(&unique_owner("cas"));
    store.insert(record.clone()).await.expect("cas: insert");
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (store, record) = (store.clone(), record.clone());
            tokio::spawn(async move {
                let patch = KeyPatch::new()
                    .scopes(Some([format!("scope:{i}")]))
                    .if_unchanged(&record);
                store.update(record.id, &patch).await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.expect("cas: task") {
            Ok(Some(updated)) => winners.push(updated),
            Err(StoreError::Changed(_)) => {}
            other => panic!("cas: expected Ok(Some) or Changed, got {other:?}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "cas: exactly one conditional patch applies"
    );
    assert_eq!(
        must_get(&*store, record.id, "cas").await,
        winners[0],
        "cas: the winner's record is stored"
    );
}

/// Two writers patching different fields of one record concurrently: neither write is
/// lost (updates are atomic read-modify-writes).
pub async fn concurrent_updates_are_atomic(store: Arc<dyn KeyStore>) {
    let record = sample_record(&unique_owner("atomic"));
    store.insert(record.clone()).await.expect("atomic: insert");
    let rounds = 20;
    let names = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..rounds {
                store
                    .update(record.id, &KeyPatch::new().name(format!("name {i}")))
                    .await
                    .expect("atomic: update name");
            }
        })
    };
    let scopes = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..rounds {
                store
                    .update(
                        record.id,
                        &KeyPatch::new().scopes(Some([format!("scope:{i}")])),
                    )
                    .await
                    .expect("atomic: update scopes");
            }
        })
    };
    names.await.expect("atomic: names task");
    scopes.await.expect("atomic: scopes task");
    let got = must_get(&*store, record.id, "atomic").await;
    assert_eq!(
        got.name,
        format!("name {}", rounds - 1),
        "atomic: a name update was lost"
    );
    assert_eq!(
        got.scopes,
        Some(BTreeSet::from([format!("scope:{}", rounds - 1)])),
        "atomic: a scopes update was lost"
    );
}

/// Checks a [`Limiter`](crate::limits::Limiter) against the contract and arithmetic of
/// [`crate::limits::gcra`], with instants it chooses (no clock): a fresh limit allows
/// exactly its burst and then one per emission interval; a check is all-or-nothing across
/// its limits and credits; a refused check reports the wait; credits never go below zero
/// and refill at the exact instant; a newer policy restarts the count, an older one does
/// not; keys and owners are separate subjects; `forget` drops a key's state.
///
/// Each run uses fresh random key ids and owner names, so it can share a backend with
/// other tests.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// keygate::testing::limiter_conformance(&keygate::limits::MemoryLimiter::new()).await;
/// # }
/// ```
pub async fn limiter_conformance(limiter: &dyn crate::limits::Limiter) {
    use crate::limits::{
        Charge, CreditPolicy, CreditRefill, CreditSpend, LimitCheck, RateLimit, Subject,
    };
    // 2030-01-01T12:00:00Z, in µs.
    let t0: i64 = 1_893_499_200_000_000;
    let key = KeyId::random();
    let per_min = RateLimit::new("requests", 100, 60_000); // T = 600 ms
    let one = [Charge::new(&per_min, 1)];
    let check = |now| LimitCheck::new(Subject::Key(key), &one, None, now);
    for i in 0..100 {
        let out = limiter.check(&check(t0)).await.expect("limiter: check");
        assert!(out.allowed, "limiter: request {i} of the burst refused");
        assert_eq!(
            out.limits[0].remaining,
            99 - i,
            "limiter: remaining after {i}"
        );
    }
    let refused = limiter.check(&check(t0)).await.expect("limiter: check");
    assert!(
        !refused.allowed,
        "limiter: the burst + 1st request was allowed"
    );
    assert_eq!(
        refused.limits[0].retry_after_us,
        Some(600_000),
        "limiter: retry after"
    );
    assert!(
        !limiter
            .check(&check(t0 + 599_999))
            .await
            .expect("limiter: check")
            .allowed,
        "limiter: allowed before the emission interval"
    );
    assert!(
        limiter
            .check(&check(t0 + 600_000))
            .await
            .expect("limiter: check")
            .allowed,
        "limiter: refused at the emission interval"
    );
    assert!(
        !limiter
            .check(&check(t0 + 600_000))
            .await
            .expect("limiter: check")
            .allowed,
        "limiter: more than one after the emission interval"
    );

    // All-or-nothing: a wide limit plus credits that run out.
    let key2 = KeyId::random();
    let wide = RateLimit::new("wide", 10, 1_000);
    let narrow = RateLimit::new("narrow", 1, 1_000);
    let both = [Charge::new(&wide, 1), Charge::new(&narrow, 1)];
    let first = LimitCheck::new(Subject::Key(key2), &both, None, t0);
    assert!(limiter.check(&first).await.expect("limiter: check").allowed);
    let second = limiter.check(&first).await.expect("limiter: check");
    assert!(!second.allowed && second.limits[0].allowed && !second.limits[1].allowed);
    let peek = [Charge::new(&wide, 0)];
    let after = limiter
        .check(&LimitCheck::new(Subject::Key(key2), &peek, None, t0))
        .await
        .expect("limiter: check");
    assert_eq!(
        after.limits[0].remaining, 9,
        "limiter: a refused check charged a limit"
    );

    // Credits: exact, never below zero, refilled at the instant (daily, midnight UTC).
    let key3 = KeyId::random();
    let mut policy = CreditPolicy::new(2).refill(CreditRefill::daily(5));
    policy.set_at = DateTime::from_timestamp_micros(t0);
    let spend = |cost, now| {
        LimitCheck::new(
            Subject::Key(key3),
            &[],
            Some(CreditSpend::new(&policy, cost)),
            now,
        )
    };
    assert!(
        !limiter
            .check(&spend(3, t0))
            .await
            .expect("limiter: credits")
            .allowed
    );
    assert!(
        limiter
            .check(&spend(2, t0))
            .await
            .expect("limiter: credits")
            .allowed
    );
    let out = limiter
        .check(&spend(1, t0))
        .await
        .expect("limiter: credits");
    assert!(!out.allowed, "limiter: credits went below zero");
    let midnight: i64 = 1_893_542_400_000_000; // 2030-01-02T00:00:00Z
    assert_eq!(
        out.credits.expect("credit status").next_refill,
        Some(midnight)
    );
    assert_eq!(
        limiter
            .credits(key3, &policy, midnight - 1)
            .await
            .expect("read"),
        0
    );
    assert_eq!(
        limiter
            .credits(key3, &policy, midnight)
            .await
            .expect("read"),
        5
    );
    // An older policy (a stale cached record) does not restart the count; a newer one does.
    let mut older = policy.clone();
    older.set_at = DateTime::from_timestamp_micros(t0 - 1);
    assert_eq!(limiter.credits(key3, &older, t0).await.expect("read"), 0);
    let mut newer = CreditPolicy::new(7);
    newer.set_at = DateTime::from_timestamp_micros(t0 + 1);
    assert_eq!(
        limiter.credits(key3, &newer, t0 + 1).await.expect("read"),
        7
    );

    // A burst spanning centuries (1 per 366 days, burst 300: B * T is ~300 years of
    // nanoseconds, past what an `i64` TAT holds): at most the burst fits, then nothing;
    // never unlimited. And a cost above the burst never fits, even with the limit full.
    let ages = RateLimit::new("ages", 1, crate::limits::MAX_RATELIMIT_DURATION_MS).with_burst(300);
    let one_age = [Charge::new(&ages, 1)];
    let key4 = KeyId::random();
    let mut fitted = 0;
    for _ in 0..400 {
        let check = LimitCheck::new(Subject::Key(key4), &one_age, None, t0);
        if limiter.check(&check).await.expect("limiter: check").allowed {
            fitted += 1;
        }
    }
    assert!(
        (1..=300).contains(&fitted),
        "limiter: a burst of 300 over centuries let {fitted} of 400 through"
    );
    let over = [Charge::new(&ages, 301)];
    let over = LimitCheck::new(Subject::Key(KeyId::random()), &over, None, t0);
    assert!(
        !limiter.check(&over).await.expect("limiter: check").allowed,
        "limiter: a cost above the burst fitted"
    );

    // Owners are their own subjects.
    let owner = format!("conformance-owner-{}", KeyId::random());
    let tiny = RateLimit::new("requests", 1, 60_000);
    let charge = [Charge::new(&tiny, 1)];
    let o = LimitCheck::new(Subject::Owner(&owner), &charge, None, t0);
    assert!(limiter.check(&o).await.expect("limiter: owner").allowed);
    assert!(!limiter.check(&o).await.expect("limiter: owner").allowed);
    let k = LimitCheck::new(Subject::Key(KeyId::random()), &charge, None, t0);
    assert!(limiter.check(&k).await.expect("limiter: key").allowed);

    // forget drops a key's state.
    limiter
        .forget(Subject::Key(key))
        .await
        .expect("limiter: forget");
    assert!(
        limiter
            .check(&check(t0 + 600_000))
            .await
            .expect("limiter: check")
            .allowed
    );
}
