//! Shared test doubles and helpers for the integration tests.
//!
//! - [`CountingStore`]: a [`KeyStore`] around [`MemoryStore`] that counts every call and can
//!   be told to fail chosen operations.
//! - [`Directory`]: a [`UserDirectory`] over a map, switchable to failing.
//! - [`Harness`]: a gate over both, with a [`ManualClock`] the test keeps a handle to.
//! - Hand-written token forgers (base62, CRC32, HS256 JWTs) that do not reuse keygate's code,
//!   so the tests check the format against the design rather than against itself.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, TimeZone, Utc};
use keygate::{
    DirectoryError, JwtSecret, KeyId, KeyPatch, KeyRecord, KeyStore, Keygate, KeygateBuilder,
    ListQuery, ManualClock, MemoryStore, Owner, Pepper, Principal, Rejection, StoreError,
    UserDirectory, VerifyError,
};

pub const PREFIX: &str = "abs";
pub const PEPPER_V1: &[u8] = b"pepper version one: 32 bytes or more, for tests";
pub const PEPPER_V2: &[u8] = b"pepper version two: 32 bytes or more, for tests";
pub const JWT_SECRET: &[u8] = b"an Audiobookshelf TokenSecret of 32+ bytes, test";
pub const OTHER_JWT_SECRET: &[u8] = b"some other TokenSecret of 32+ bytes, not ours!!";

/// The instant every harness clock starts at (a whole second).
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap()
}

// ---------------------------------------------------------------------------------------
// Store
// ---------------------------------------------------------------------------------------

/// One [`KeyStore`] operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Get,
    Insert,
    Update,
    Delete,
    List,
    RecordLastUsed,
}

pub const ALL_OPS: [Op; 6] = [
    Op::Get,
    Op::Insert,
    Op::Update,
    Op::Delete,
    Op::List,
    Op::RecordLastUsed,
];

/// How a failing operation fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Backend,
    Timeout,
}

impl Failure {
    fn error(self) -> StoreError {
        match self {
            Failure::Backend => StoreError::backend(std::io::Error::other("database is down")),
            Failure::Timeout => StoreError::Timeout,
        }
    }
}

/// How many times each operation was called (failed calls included).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Calls {
    pub get: usize,
    pub insert: usize,
    pub update: usize,
    pub delete: usize,
    pub list: usize,
    pub record_last_used: usize,
}

impl Calls {
    /// Every call that may change the store.
    pub fn writes(&self) -> usize {
        self.insert + self.update + self.delete + self.record_last_used
    }
}

/// One `record_last_used` batch.
pub type LastUsedBatch = Vec<(KeyId, DateTime<Utc>)>;

/// A [`MemoryStore`] that counts calls and fails on demand.
#[derive(Default)]
pub struct CountingStore {
    inner: MemoryStore,
    counts: [AtomicUsize; 6],
    failing: Mutex<HashMap<Op, Failure>>,
    last_used_batches: Mutex<Vec<LastUsedBatch>>,
}

impl CountingStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn slot(op: Op) -> usize {
        ALL_OPS.iter().position(|o| *o == op).unwrap()
    }

    fn enter(&self, op: Op) -> Result<(), StoreError> {
        self.counts[Self::slot(op)].fetch_add(1, Ordering::SeqCst);
        match self.failing.lock().unwrap().get(&op) {
            Some(failure) => Err(failure.error()),
            None => Ok(()),
        }
    }

    pub fn calls(&self) -> Calls {
        let n = |op| self.counts[Self::slot(op)].load(Ordering::SeqCst);
        Calls {
            get: n(Op::Get),
            insert: n(Op::Insert),
            update: n(Op::Update),
            delete: n(Op::Delete),
            list: n(Op::List),
            record_last_used: n(Op::RecordLastUsed),
        }
    }

    /// Makes `op` fail with `failure` until [`heal`](Self::heal).
    pub fn fail(&self, op: Op, failure: Failure) {
        self.failing.lock().unwrap().insert(op, failure);
    }

    pub fn fail_all(&self, failure: Failure) {
        for op in ALL_OPS {
            self.fail(op, failure);
        }
    }

    pub fn heal(&self) {
        self.failing.lock().unwrap().clear();
    }

    /// The batches `record_last_used` received (failed calls included).
    pub fn last_used_batches(&self) -> Vec<LastUsedBatch> {
        self.last_used_batches.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The stored record, read past the counters.
    pub async fn record(&self, id: KeyId) -> Option<KeyRecord> {
        self.inner
            .get(id)
            .await
            .unwrap()
            .map(|r| KeyRecord::clone(&r))
    }

    /// Every stored record, ordered by id, read past the counters.
    pub async fn all(&self) -> Vec<KeyRecord> {
        self.inner
            .list(&ListQuery::new().limit(usize::MAX))
            .await
            .unwrap()
    }

    /// Puts a record straight into the inner store, past the counters and keygate's checks.
    pub async fn put(&self, record: KeyRecord) {
        self.inner.insert(record).await.unwrap();
    }
}

#[async_trait]
impl KeyStore for CountingStore {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.enter(Op::Insert)?;
        self.inner.insert(record).await
    }

    async fn get(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.enter(Op::Get)?;
        self.inner.get(id).await
    }

    async fn update(&self, id: KeyId, patch: &KeyPatch) -> Result<Option<KeyRecord>, StoreError> {
        self.enter(Op::Update)?;
        self.inner.update(id, patch).await
    }

    async fn delete(&self, id: KeyId) -> Result<bool, StoreError> {
        self.enter(Op::Delete)?;
        self.inner.delete(id).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        self.enter(Op::List)?;
        self.inner.list(query).await
    }

    async fn record_last_used(&self, batch: &[(KeyId, DateTime<Utc>)]) -> Result<(), StoreError> {
        self.last_used_batches.lock().unwrap().push(batch.to_vec());
        self.enter(Op::RecordLastUsed)?;
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

// ---------------------------------------------------------------------------------------
// User directory
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct DirectoryState {
    users: Mutex<HashMap<String, Owner>>,
    failing: AtomicBool,
    calls: AtomicUsize,
}

/// A [`UserDirectory`] over a map; cheap to clone, every clone sees the same users.
#[derive(Clone, Default)]
pub struct Directory(Arc<DirectoryState>);

impl Directory {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&self, user: &str, owner: Owner) {
        self.0.users.lock().unwrap().insert(user.to_owned(), owner);
    }

    pub fn remove(&self, user: &str) {
        self.0.users.lock().unwrap().remove(user);
    }

    pub fn fail(&self, failing: bool) {
        self.0.failing.store(failing, Ordering::SeqCst);
    }

    pub fn calls(&self) -> usize {
        self.0.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl UserDirectory for Directory {
    async fn owner(&self, user_id: &str) -> Result<Option<Owner>, DirectoryError> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        if self.0.failing.load(Ordering::SeqCst) {
            return Err(DirectoryError::new(std::io::Error::other(
                "directory is down",
            )));
        }
        Ok(self.0.users.lock().unwrap().get(user_id).cloned())
    }
}

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// A gate (prefix `abs`, pepper v1, JWT keys on, a directory) over a counting store and a
/// manual clock standing at [`t0`]. The directory knows `alice` (may do everything).
pub struct Harness {
    pub store: Arc<CountingStore>,
    pub users: Directory,
    pub clock: Arc<ManualClock>,
    pub gate: Keygate,
}

impl Harness {
    pub fn new() -> Self {
        Self::with(|b| b)
    }

    /// [`new`](Self::new), with extra builder settings.
    pub fn with(configure: impl FnOnce(KeygateBuilder) -> KeygateBuilder) -> Self {
        Self::with_pepper(pepper_v1(), configure)
    }

    /// [`with`](Self::with), hashing under `pepper` instead of pepper v1.
    pub fn with_pepper(
        pepper: Pepper,
        configure: impl FnOnce(KeygateBuilder) -> KeygateBuilder,
    ) -> Self {
        let store = CountingStore::new();
        let clock = Arc::new(ManualClock::new(t0()));
        let users = Directory::new();
        users.set("alice", Owner::unrestricted());
        let gate = configure(
            builder_with_pepper(&store, &clock, pepper)
                .jwt_secret(jwt_secret())
                .users(users.clone()),
        )
        .build()
        .expect("test gate builds");
        Self {
            store,
            users,
            clock,
            gate,
        }
    }

    /// Another gate over the same store, clock and directory (no JWT secret unless
    /// `configure` adds one).
    pub fn sibling(&self, configure: impl FnOnce(KeygateBuilder) -> KeygateBuilder) -> Keygate {
        self.sibling_with_pepper(pepper_v1(), configure)
    }

    /// [`sibling`](Self::sibling), hashing under `pepper` instead of pepper v1.
    pub fn sibling_with_pepper(
        &self,
        pepper: Pepper,
        configure: impl FnOnce(KeygateBuilder) -> KeygateBuilder,
    ) -> Keygate {
        configure(builder_with_pepper(&self.store, &self.clock, pepper).users(self.users.clone()))
            .build()
            .expect("sibling gate builds")
    }

    /// Verifies `token` and asserts it is refused for exactly `want`, with a 401, without a
    /// single store write, and (for offline reasons) without a store read or directory call.
    pub async fn assert_refused(&self, token: &str, want: Rejection) {
        assert_refused_by(&self.gate, &self.store, &self.users, token, want).await;
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

/// A builder over `store` with prefix `abs`, pepper v1 and the shared `clock`.
pub fn builder(store: &Arc<CountingStore>, clock: &Arc<ManualClock>) -> KeygateBuilder {
    builder_with_pepper(store, clock, pepper_v1())
}

/// [`builder`], hashing under `pepper`.
pub fn builder_with_pepper(
    store: &Arc<CountingStore>,
    clock: &Arc<ManualClock>,
    pepper: Pepper,
) -> KeygateBuilder {
    Keygate::builder(store.clone(), pepper)
        .prefix(PREFIX)
        .clock(clock.clone())
}

/// Pepper v1, the test gates' default.
pub fn pepper_v1() -> Pepper {
    Pepper::new(1, PEPPER_V1).unwrap()
}

/// The test gates' JWT secret, [`JWT_SECRET`].
pub fn jwt_secret() -> JwtSecret {
    JwtSecret::new(JWT_SECRET).unwrap()
}

/// See [`Harness::assert_refused`].
pub async fn assert_refused_by(
    gate: &Keygate,
    store: &CountingStore,
    users: &Directory,
    token: &str,
    want: Rejection,
) {
    let shown = show(token);
    // Work left over from earlier accepted verifies is not this refusal's doing.
    settle().await;
    let calls = store.calls();
    let records = store.all().await;
    let directory_calls = users.calls();
    let error = gate
        .verify(token)
        .await
        .expect_err(&format!("{shown} must be refused"));
    assert!(
        matches!(error, VerifyError::InvalidKey(got) if got == want),
        "{shown}: expected InvalidKey({want:?}), got {error:?}"
    );
    assert_eq!(error.rejection(), Some(want), "{shown}");
    assert_eq!(error.reason(), want.as_str(), "{shown}");
    assert!(!error.is_unavailable(), "{shown}");
    let http = error.http(PREFIX);
    assert_eq!(http.status, 401, "{shown}");
    assert_eq!(
        http.www_authenticate.as_deref(),
        Some(r#"Bearer realm="abs", error="invalid_token""#),
        "{shown}"
    );
    assert_eq!(http.retry_after, None, "{shown}");
    settle().await;
    let after = store.calls();
    assert_eq!(after.writes(), calls.writes(), "{shown}: store written");
    assert_eq!(after.list, calls.list, "{shown}");
    if want.decided_without_store() {
        assert_eq!(
            after.get, calls.get,
            "{shown}: offline refusal read the store"
        );
        assert_eq!(
            users.calls(),
            directory_calls,
            "{shown}: offline refusal asked the directory"
        );
    } else {
        assert_eq!(after.get, calls.get + 1, "{shown}: one store read expected");
    }
    assert_eq!(store.all().await, records, "{shown}: records changed");
}

/// The token as shown in assertion messages: long ones shortened.
pub fn show(token: &str) -> String {
    if token.chars().count() > 120 {
        let head: String = token.chars().take(60).collect();
        format!("{head:?}… ({} bytes)", token.len())
    } else {
        format!("{token:?}")
    }
}

/// Lets spawned background work (last-used flushes) run to completion on a current-thread
/// runtime.
pub async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

/// The rejection in a verify result; panics on anything else.
pub fn rejection_of(result: Result<Principal, VerifyError>) -> Rejection {
    match result {
        Err(VerifyError::InvalidKey(r)) => r,
        other => panic!("expected an invalid-key refusal, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Opaque keys, written by hand from the format (`<prefix>_` + 22 base62 id + 43 secret
// + 6 base62 CRC-32 chars), not with keygate's own encoder
// ---------------------------------------------------------------------------------------

pub const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
pub const ID_LEN: usize = 22;
pub const SECRET_LEN: usize = 43;
pub const CHECKSUM_LEN: usize = 6;
pub const BODY_LEN: usize = ID_LEN + SECRET_LEN + CHECKSUM_LEN;

/// `value` as exactly `width` base62 digits, most significant first.
pub fn base62(mut value: u128, width: usize) -> String {
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    assert_eq!(value, 0, "value does not fit in {width} digits");
    String::from_utf8(out).unwrap()
}

/// CRC-32 (IEEE 802.3, as zlib), bit by bit.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `<prefix>_<id part><secret part><crc>`, with a correct checksum over whatever parts
/// are given.
pub fn forge_raw(prefix: &str, id_part: &str, secret_part: &str) -> String {
    let signed = format!("{prefix}_{id_part}{secret_part}");
    let crc = base62(u128::from(crc32(signed.as_bytes())), CHECKSUM_LEN);
    format!("{signed}{crc}")
}

/// A well-formed opaque key for `id` with the given 43-character secret.
pub fn forge_opaque(prefix: &str, id: KeyId, secret: &str) -> String {
    assert_eq!(secret.len(), SECRET_LEN);
    forge_raw(prefix, &base62(id.as_uuid().as_u128(), ID_LEN), secret)
}

/// The secret part of an opaque key with `prefix`.
pub fn secret_part<'a>(token: &'a str, prefix: &str) -> &'a str {
    let start = prefix.len() + 1 + ID_LEN;
    &token[start..start + SECRET_LEN]
}

/// A 43-character secret that differs from `secret` in every position.
pub fn other_secret(secret: &str) -> String {
    secret
        .bytes()
        .map(|b| if b == b'x' { 'y' } else { 'x' })
        .collect()
}

// ---------------------------------------------------------------------------------------
// JWTs, written by hand (ring HMAC + base64url)
// ---------------------------------------------------------------------------------------

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `b64(header).b64(claims).b64(HMAC-SHA256(secret, signing input))` from raw JSON text.
pub fn sign_jwt_raw(secret: &[u8], header: &str, claims: &str) -> String {
    sign_jwt_bytes(secret, header.as_bytes(), claims.as_bytes())
}

/// [`sign_jwt_raw`] for parts that need not be UTF-8.
pub fn sign_jwt_bytes(secret: &[u8], header: &[u8], claims: &[u8]) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

/// [`sign_jwt_raw`] from JSON values.
pub fn sign_jwt(secret: &[u8], header: &serde_json::Value, claims: &serde_json::Value) -> String {
    sign_jwt_raw(secret, &header.to_string(), &claims.to_string())
}

/// `{"alg":"HS256","typ":"JWT"}`.
pub fn hs256_header() -> serde_json::Value {
    serde_json::json!({"alg": "HS256", "typ": "JWT"})
}

/// Audiobookshelf API-key claims for `id`, issued at [`t0`], no expiry.
pub fn api_claims(id: KeyId) -> serde_json::Value {
    serde_json::json!({
        "keyId": id.to_string(),
        "name": "Hand-made key",
        "type": "api",
        "iat": t0().timestamp(),
    })
}

/// An HS256 token over `claims`, signed with the test JWT secret.
pub fn jwt_with(claims: &serde_json::Value) -> String {
    sign_jwt(JWT_SECRET, &hs256_header(), claims)
}

/// The JSON of a token's claims.
pub fn jwt_claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}
