//! A wrong pepper is detected: the store remembers a keyed fingerprint of each pepper
//! version, `Keygate::check_pepper` compares against it, `mint` refuses to write under
//! the wrong pepper, and `verify` reports a key that fails under the wrong pepper as
//! `pepper_mismatch` (HTTP 500) instead of a bad key.

use crate::support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keygate::{
    ChangeListener, Error, JwtSecret, KeyFormat, KeyId, KeyPatch, KeyRecord, KeyStore, Keygate,
    ListQuery, MemoryStore, NewKey, Pepper, PepperFingerprint, Rejection, StoreError, VerifyError,
};

const RIGHT: &[u8] = b"the right pepper: thirty-two bytes or more";
const WRONG: &[u8] = b"the wrong pepper: thirty-two bytes or more";
const OLD: &[u8] = b"the old pepper, version one: 32 bytes or more";
const JWT_SECRET: &[u8] = b"a jwt secret of thirty-two bytes or more!";

/// A [`MemoryStore`] that counts `remember_pepper` calls (and every other call) and can
/// make `remember_pepper` fail.
#[derive(Default)]
struct Store {
    inner: MemoryStore,
    remembers: AtomicUsize,
    others: AtomicUsize,
    failing: AtomicBool,
    hanging: AtomicBool,
}

impl Store {
    fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn remembers(&self) -> usize {
        self.remembers.load(Ordering::SeqCst)
    }

    fn other_calls(&self) -> usize {
        self.others.load(Ordering::SeqCst)
    }

    fn other(&self) {
        self.others.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl KeyStore for Store {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.other();
        self.inner.insert(record).await
    }
    async fn get(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.other();
        self.inner.get(id).await
    }
    async fn update(&self, id: KeyId, patch: &KeyPatch) -> Result<Option<KeyRecord>, StoreError> {
        self.other();
        self.inner.update(id, patch).await
    }
    async fn delete(&self, id: KeyId) -> Result<bool, StoreError> {
        self.other();
        self.inner.delete(id).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        self.other();
        self.inner.list(query).await
    }
    async fn record_last_used(&self, batch: &[(KeyId, DateTime<Utc>)]) -> Result<(), StoreError> {
        self.other();
        self.inner.record_last_used(batch).await
    }
    async fn subscribe(&self, listener: Weak<dyn ChangeListener>) -> Result<bool, StoreError> {
        self.inner.subscribe(listener).await
    }
    async fn remember_pepper(
        &self,
        version: u32,
        fingerprint: PepperFingerprint,
    ) -> Result<Option<PepperFingerprint>, StoreError> {
        self.remembers.fetch_add(1, Ordering::SeqCst);
        if self.hanging.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::backend(std::io::Error::other(
                "database is down",
            )));
        }
        self.inner.remember_pepper(version, fingerprint).await
    }
}

fn gate(store: &Arc<Store>, pepper: Pepper) -> Keygate {
    Keygate::builder(store.clone(), pepper)
        .prefix("pep")
        .jwt_secret(JwtSecret::new(JWT_SECRET).unwrap())
        .build()
        .unwrap()
}

fn pepper(version: u32, secret: &[u8]) -> Pepper {
    Pepper::new(version, secret).unwrap()
}

/// `HMAC-SHA256(pepper, "keygate pepper fingerprint v1")`, computed independently.
fn fingerprint_of(secret: &[u8]) -> PepperFingerprint {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, b"keygate pepper fingerprint v1");
    PepperFingerprint::from_bytes(tag.as_ref().try_into().unwrap())
}

async fn all_records(store: &Store) -> Vec<KeyRecord> {
    store
        .inner
        .list(&ListQuery::new().limit(usize::MAX))
        .await
        .unwrap()
}

#[tokio::test]
async fn the_first_check_records_the_fingerprint_and_the_same_pepper_passes() {
    let store = Store::new();
    let a = gate(&store, pepper(1, RIGHT));
    a.check_pepper().await.unwrap();
    // What the store now holds for version 1 is the pepper's keyed fingerprint.
    let probe = PepperFingerprint::from_bytes([0; 32]);
    assert_eq!(
        store.inner.remember_pepper(1, probe).await.unwrap(),
        Some(fingerprint_of(RIGHT))
    );
    // Another gate (another process) with the same pepper passes, mints and verifies.
    let b = gate(&store, pepper(1, RIGHT));
    b.check_pepper().await.unwrap();
    let issued = b.mint(NewKey::new("k", "alice")).await.unwrap();
    a.verify(issued.key.expose()).await.unwrap();
    b.verify(issued.key.expose()).await.unwrap();
}

#[tokio::test]
async fn mint_with_the_wrong_pepper_fails_and_writes_nothing() {
    let store = Store::new();
    let right = gate(&store, pepper(1, RIGHT));
    let kept = right.mint(NewKey::new("k", "alice")).await.unwrap();

    let wrong = gate(&store, pepper(1, WRONG));
    let err = wrong.check_pepper().await.unwrap_err();
    assert!(
        matches!(err, Error::PepperMismatch { version: 1 }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("wrong pepper") && message.contains("version 1"),
        "{message}"
    );
    for format in [KeyFormat::Opaque, KeyFormat::Jwt] {
        let err = wrong
            .mint(NewKey::new("k", "bob").format(format))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::PepperMismatch { version: 1 }),
            "{err:?}"
        );
    }
    let err = wrong
        .rotate(kept.record.id, chrono::TimeDelta::zero())
        .await;
    assert!(
        matches!(err, Err(Error::PepperMismatch { version: 1 })),
        "{err:?}"
    );
    // Only the right gate's key is stored, unchanged; the fingerprint is not replaced.
    assert_eq!(
        all_records(&store).await,
        std::slice::from_ref(&kept.record)
    );
    right.check_pepper().await.unwrap();
    gate(&store, pepper(1, RIGHT)).check_pepper().await.unwrap();
}

#[tokio::test]
async fn verify_under_the_wrong_pepper_says_so_and_is_a_server_error() {
    let store = Store::new();
    let right = gate(&store, pepper(1, RIGHT));
    let opaque = right.mint(NewKey::new("k", "alice")).await.unwrap();
    let jwt = right
        .mint(NewKey::new("j", "alice").format(KeyFormat::Jwt))
        .await
        .unwrap();

    // A fresh gate with the wrong pepper that never checked: verify finds out by itself.
    let wrong = gate(&store, pepper(1, WRONG));
    for key in [opaque.key.expose(), jwt.key.expose()] {
        let err = wrong.verify(key).await.unwrap_err();
        assert!(
            matches!(err, VerifyError::PepperMismatch { version: 1 }),
            "{err:?}"
        );
        assert_eq!(err.reason(), "pepper_mismatch");
        assert_eq!(err.rejection(), None, "not a bad key");
        assert!(err.is_server_error() && !err.is_unavailable());
        let http = wrong.http_outcome(&err);
        assert_eq!(http.status, 500);
        assert_eq!(http.retry_after, None);
        assert_eq!(http.www_authenticate, None);
        assert!(err.to_string().contains("wrong pepper"), "{err}");
    }
    assert_eq!(wrong.refusal_counts().get("pepper_mismatch"), 2);
    assert_eq!(wrong.refusal_counts().get("hash_mismatch"), 0);
    // The check ran once for both refusals.
    assert_eq!(
        store.remembers(),
        2,
        "one for the right gate, one for the wrong"
    );
    // The right gate is unaffected, and still refuses a wrong secret as a bad key.
    right.verify(opaque.key.expose()).await.unwrap();
    right.verify(jwt.key.expose()).await.unwrap();
    let secret = support::secret_part(opaque.key.expose(), "pep");
    let forged = support::forge_opaque("pep", opaque.record.id, &support::other_secret(secret));
    assert!(keygate::checksum_ok(&forged));
    let err = right.verify(&forged).await.unwrap_err();
    assert_eq!(err.rejection(), Some(Rejection::HashMismatch), "{err:?}");
}

#[tokio::test]
async fn each_version_of_a_rotated_keyring_is_checked() {
    let store = Store::new();
    let v1 = gate(&store, pepper(1, OLD));
    let old_key = v1.mint(NewKey::new("old", "alice")).await.unwrap();

    // Rotation done right: v2 is recorded, v1 matches.
    let rotated = gate(&store, pepper(2, RIGHT).with_previous(1, OLD).unwrap());
    rotated.check_pepper().await.unwrap();
    let new_key = rotated.mint(NewKey::new("new", "alice")).await.unwrap();
    rotated.verify(old_key.key.expose()).await.unwrap();

    // The right current pepper with the wrong previous one: the check names version 1,
    // and only keys of version 1 are reported as the pepper's fault.
    let half = gate(&store, pepper(2, RIGHT).with_previous(1, WRONG).unwrap());
    assert!(matches!(
        half.check_pepper().await,
        Err(Error::PepperMismatch { version: 1 })
    ));
    let records_before = all_records(&store).await.len();
    assert!(half.mint(NewKey::new("x", "bob")).await.is_err());
    assert_eq!(all_records(&store).await.len(), records_before);
    half.verify(new_key.key.expose()).await.unwrap();
    let err = half.verify(old_key.key.expose()).await.unwrap_err();
    assert!(
        matches!(err, VerifyError::PepperMismatch { version: 1 }),
        "{err:?}"
    );

    // The wrong current pepper: version 2 is named.
    let wrong = gate(&store, pepper(2, WRONG).with_previous(1, OLD).unwrap());
    assert!(matches!(
        wrong.check_pepper().await,
        Err(Error::PepperMismatch { version: 2 })
    ));
}

#[tokio::test]
async fn the_check_runs_once_per_gate_and_never_on_a_successful_verify() {
    let store = Store::new();
    let minter = gate(&store, pepper(1, RIGHT));
    let issued = minter.mint(NewKey::new("k", "alice")).await.unwrap();
    minter.mint(NewKey::new("k2", "alice")).await.unwrap();
    minter.check_pepper().await.unwrap();
    assert_eq!(store.remembers(), 1, "one pepper version, asked once");

    // A gate that only verifies keys that match never asks.
    let verifier = gate(&store, pepper(1, RIGHT));
    for _ in 0..3 {
        verifier.verify(issued.key.expose()).await.unwrap();
    }
    assert_eq!(store.remembers(), 1);
}

#[tokio::test]
async fn a_store_failure_is_reported_and_not_remembered() {
    let store = Store::new();
    store.failing.store(true, Ordering::SeqCst);
    let g = gate(&store, pepper(1, RIGHT));
    let err = g.check_pepper().await.unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::Backend(_))),
        "{err:?}"
    );
    assert!(g.mint(NewKey::new("k", "alice")).await.is_err());
    assert_eq!(store.other_calls(), 0, "nothing was written");
    store.failing.store(false, Ordering::SeqCst);
    g.check_pepper().await.unwrap();
    g.mint(NewKey::new("k", "alice")).await.unwrap();
}

/// The check is bounded by the gate's store timeout like any store call (paused time:
/// the runtime jumps to the deadline).
#[tokio::test(start_paused = true)]
async fn a_hanging_store_times_the_check_out() {
    let store = Store::new();
    store.hanging.store(true, Ordering::SeqCst);
    let g = Keygate::builder(store.clone(), pepper(1, RIGHT))
        .store_timeout(std::time::Duration::from_secs(2))
        .build()
        .unwrap();
    let err = g.mint(NewKey::new("k", "alice")).await.unwrap_err();
    assert!(matches!(err, Error::Store(StoreError::Timeout)), "{err:?}");
    assert_eq!(store.other_calls(), 0, "nothing was written");
    store.hanging.store(false, Ordering::SeqCst);
    g.mint(NewKey::new("k", "alice")).await.unwrap();
}

#[tokio::test]
async fn verify_keeps_hash_mismatch_when_the_check_cannot_run() {
    let store = Store::new();
    let right = gate(&store, pepper(1, RIGHT));
    let issued = right.mint(NewKey::new("k", "alice")).await.unwrap();
    store.failing.store(true, Ordering::SeqCst);
    let wrong = gate(&store, pepper(1, WRONG));
    let err = wrong.verify(issued.key.expose()).await.unwrap_err();
    assert_eq!(err.rejection(), Some(Rejection::HashMismatch), "{err:?}");
    // Once the store answers, the same gate tells the truth.
    store.failing.store(false, Ordering::SeqCst);
    let err = wrong.verify(issued.key.expose()).await.unwrap_err();
    assert!(matches!(err, VerifyError::PepperMismatch { version: 1 }));
}

#[tokio::test]
async fn a_store_with_keys_but_no_fingerprint_trusts_the_first_pepper() {
    // Keys from before keygate kept fingerprints: imported straight into the store.
    let old = Store::new();
    let minted = gate(&old, pepper(1, RIGHT))
        .mint(NewKey::new("k", "alice"))
        .await
        .unwrap();
    let store = Store::new();
    store.inner.insert(minted.record.clone()).await.unwrap();

    // The first gate to check records its pepper; a different one is then refused.
    let first = gate(&store, pepper(1, RIGHT));
    first.verify(minted.key.expose()).await.unwrap();
    first.check_pepper().await.unwrap();
    let second = gate(&store, pepper(1, WRONG));
    assert!(matches!(
        second.check_pepper().await,
        Err(Error::PepperMismatch { version: 1 })
    ));
}

/// A bad key sent while the store does not answer the first pepper check waits at most
/// one second for it (no `store_timeout` set) and is a plain `hash_mismatch`: refused
/// requests cannot queue up behind a hanging check (paused time: the runtime jumps to
/// each deadline, so the waits show up in `Instant` only).
#[tokio::test(start_paused = true)]
async fn a_hanging_check_delays_a_bad_key_by_at_most_a_second() {
    let store = Store::new();
    let right = gate(&store, pepper(1, RIGHT));
    let issued = right.mint(NewKey::new("k", "alice")).await.unwrap();
    store.hanging.store(true, Ordering::SeqCst);
    let wrong = gate(&store, pepper(1, WRONG));
    let started = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let (wrong, key) = (wrong.clone(), issued.key.expose().to_owned());
            tokio::spawn(async move { wrong.verify(&key).await })
        })
        .collect();
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.rejection(), Some(Rejection::HashMismatch), "{err:?}");
    }
    assert!(
        started.elapsed() <= std::time::Duration::from_secs(1),
        "five refused requests waited {:?} in all",
        started.elapsed()
    );
}
