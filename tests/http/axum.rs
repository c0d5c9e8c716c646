//! The axum integration through axum's own harness (`tower::ServiceExt::oneshot`): every
//! row of the HTTP mapping in `keygate::http`, the extractors (`Principal`,
//! `Option<Principal>`, `Require<P>`) and the admin router nested at `/api/api-keys`.
//!
//! Each refusal is sent with a header that really reaches its branch: the reason is first
//! confirmed on the gate itself (`verify_headers`), then the same bytes go through the
//! router, and a counting store shows which refusals were decided without a store read.

// Test code: a panic is how a test reports a failure.
#![allow(clippy::unwrap_used, clippy::panic)]
#![cfg(feature = "axum")]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use http_body_util::BodyExt;
use keygate::admin::AdminApi;
use keygate::axum::{admin_routes, Authenticate, Require};
use keygate::http::MAX_HEADER_LEN;
use keygate::{
    DirectoryError, JwtSecret, KeyFormat, KeyId, KeyPatch, KeyRecord, KeyStore, Keygate, ListQuery,
    ManualClock, MemoryStore, NewKey, Owner, Pepper, Permission, Principal, StoreError,
    UserDirectory,
};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::support::Capture;

const REALM: &str = "keygate test";
const PEPPER: &[u8] = b"axum test pepper, at least 32 bytes long";
const JWT_SECRET: &[u8] = b"axum test JWT secret, at least 32 bytes";

// ---------------------------------------------------------------------------------------
// Fixture: a store that can fail, count reads or hang; a user directory; a manual clock.
// ---------------------------------------------------------------------------------------

/// A [`MemoryStore`] that counts reads and fails or hangs on demand.
struct Flaky {
    inner: MemoryStore,
    fail_reads: AtomicBool,
    fail_writes: AtomicBool,
    hang_reads: AtomicBool,
    gets: AtomicUsize,
}

impl Flaky {
    fn new() -> Self {
        Self {
            inner: MemoryStore::new(),
            fail_reads: AtomicBool::new(false),
            fail_writes: AtomicBool::new(false),
            hang_reads: AtomicBool::new(false),
            gets: AtomicUsize::new(0),
        }
    }

    fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    fn write_guard(&self) -> Result<(), StoreError> {
        if self.fail_writes.load(Ordering::SeqCst) {
            Err(StoreError::Timeout)
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl KeyStore for Flaky {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.write_guard()?;
        self.inner.insert(record).await
    }

    async fn get(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        if self.hang_reads.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(StoreError::Timeout);
        }
        self.inner.get(id).await
    }

    async fn update(&self, id: KeyId, patch: &KeyPatch) -> Result<Option<KeyRecord>, StoreError> {
        self.write_guard()?;
        self.inner.update(id, patch).await
    }

    async fn delete(&self, id: KeyId) -> Result<bool, StoreError> {
        self.write_guard()?;
        self.inner.delete(id).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(StoreError::Timeout);
        }
        self.inner.list(query).await
    }

    async fn record_last_used(&self, batch: &[(KeyId, DateTime<Utc>)]) -> Result<(), StoreError> {
        self.write_guard()?;
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

/// `root` may do everything, `alice` may read the library, `mallory` is deactivated,
/// `down` cannot be looked up, and nobody else exists.
struct Users;

#[async_trait]
impl UserDirectory for Users {
    async fn owner(&self, user_id: &str) -> Result<Option<Owner>, DirectoryError> {
        match user_id {
            "root" => Ok(Some(Owner::unrestricted())),
            "alice" => Ok(Some(Owner::with_permissions(["library:read"]))),
            "mallory" => Ok(Some(Owner::inactive())),
            "down" => Err(DirectoryError::new(std::io::Error::other(
                "directory offline",
            ))),
            _ => Ok(None),
        }
    }
}

struct LibraryRead;
impl Permission for LibraryRead {
    const NAME: &'static str = "library:read";
}

struct LibraryWrite;
impl Permission for LibraryWrite {
    const NAME: &'static str = "library:write";
}

async fn me(principal: Principal) -> Json<Principal> {
    Json(principal)
}

async fn libraries(principal: Require<LibraryRead>) -> Json<Value> {
    Json(json!({ "libraries": [], "for": principal.owner_id() }))
}

async fn upload(principal: Require<LibraryWrite>) -> String {
    format!("uploaded by {}", principal.owner_id())
}

async fn hello(principal: Option<Principal>) -> String {
    match principal {
        Some(p) => format!("hello {}", p.owner_id()),
        None => "hello stranger".to_owned(),
    }
}

async fn twice(first: Principal, second: Require<LibraryRead>) -> String {
    // `Require` derefs to the principal, and gives it up with `into_inner`.
    assert_eq!(first.key_id(), second.key_id());
    assert_eq!(first.key_id(), second.into_inner().key_id());
    "ok".to_owned()
}

fn app(gate: Keygate) -> Router {
    let admin = AdminApi::new(gate.clone());
    Router::new()
        .route("/open", get(|| async { "open" }))
        .route("/api/me", get(me))
        .route("/api/libraries", get(libraries))
        .route("/api/upload", post(upload))
        .route("/hello", get(hello))
        .route("/twice", get(twice))
        .merge(admin_routes("/api/api-keys", admin))
        .with_state(gate)
}

struct Fixture {
    gate: Keygate,
    store: Arc<Flaky>,
    clock: Arc<ManualClock>,
    app: Router,
    /// A key for `root` (unrestricted, hence admin).
    root_key: String,
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

async fn fixture() -> Fixture {
    fixture_with(|b| b).await
}

async fn fixture_with(
    configure: impl FnOnce(keygate::KeygateBuilder) -> keygate::KeygateBuilder,
) -> Fixture {
    let store = Arc::new(Flaky::new());
    let clock = Arc::new(ManualClock::new(start()));
    let builder = Keygate::builder(store.clone(), Pepper::new(1, PEPPER).unwrap())
        .prefix("abs")
        .jwt_secret(JwtSecret::new(JWT_SECRET).unwrap())
        .users(Users)
        .clock(clock.clone())
        .realm(REALM);
    let gate = configure(builder).build().unwrap();
    let root_key = mint(&gate, NewKey::new("root key", "root")).await;
    Fixture {
        app: app(gate.clone()),
        gate,
        store,
        clock,
        root_key,
    }
}

async fn mint(gate: &Keygate, new: NewKey) -> String {
    gate.mint(new).await.unwrap().key.expose().to_owned()
}

// ---------------------------------------------------------------------------------------
// Requests and responses
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: impl axum::http::header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn challenge(&self) -> Option<&str> {
        self.header(WWW_AUTHENTICATE)
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

/// A request carrying exactly these `Authorization` header values (raw bytes, each as
/// its own header line).
fn request(method: Method, path: &str, auth: &[&[u8]], body: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    for value in auth {
        builder = builder.header(AUTHORIZATION, HeaderValue::from_bytes(value).unwrap());
    }
    match body {
        Some(body) => builder
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap(),
        None => builder.body(Body::empty()).unwrap(),
    }
}

fn bearer(key: &str) -> Vec<u8> {
    format!("Bearer {key}").into_bytes()
}

async fn get_as(app: &Router, path: &str, key: &str) -> Reply {
    send(app, request(Method::GET, path, &[&bearer(key)], None)).await
}

async fn call(app: &Router, method: Method, path: &str, key: &str, body: Option<Value>) -> Reply {
    let body = body.map(|b| b.to_string());
    send(app, request(method, path, &[&bearer(key)], body.as_deref())).await
}

fn challenge(error: &str) -> String {
    format!(r#"Bearer realm="{REALM}", error="{error}""#)
}

// ---------------------------------------------------------------------------------------
// The mapping table, row by row
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn no_credentials_is_401_with_a_bare_challenge() {
    let f = fixture().await;
    let reads = f.store.gets();
    // No header at all, and a header with another scheme (no *bearer* credentials).
    for auth in [&[][..], &[&b"Basic dXNlcjpwYXNz"[..]][..]] {
        let reply = send(&f.app, request(Method::GET, "/api/me", auth, None)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        let expected = format!(r#"Bearer realm="{REALM}""#);
        assert_eq!(reply.challenge(), Some(expected.as_str()));
        assert!(!reply.challenge().unwrap().contains("error="));
        assert_eq!(reply.header(RETRY_AFTER), None);
        assert_eq!(reply.header(CONTENT_TYPE), Some("application/json"));
        assert_eq!(reply.json()["error"], "unauthorized");
    }
    assert_eq!(f.store.gets(), reads, "no store read without credentials");
}

#[tokio::test]
async fn two_authorization_headers_are_400_invalid_request() {
    let f = fixture().await;
    let good = bearer(&f.root_key);
    let cases: [&[&[u8]]; 3] = [
        &[&good, &good],
        &[&good, b"Bearer garbage"],
        &[b"Basic dXNlcjpwYXNz", &good],
    ];
    let reads = f.store.gets();
    for auth in cases {
        let error = f
            .gate
            .verify_headers(auth.iter().copied())
            .await
            .unwrap_err();
        assert_eq!(error.reason(), "multiple_headers");
        let reply = send(&f.app, request(Method::GET, "/api/me", auth, None)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            reply.challenge(),
            Some(challenge("invalid_request").as_str())
        );
        assert_eq!(reply.json()["error"], "invalid_request");
    }
    assert_eq!(f.store.gets(), reads, "refused before any store read");
}

#[tokio::test]
async fn unreadable_headers_are_400_invalid_request() {
    let f = fixture().await;
    let oversize = bearer(&"a".repeat(MAX_HEADER_LEN));
    let tab = format!("Bearer\t{}", f.root_key).into_bytes();
    let non_ascii = format!("Bearer {}é", f.root_key).into_bytes();
    let spaced = format!("Bearer {} extra", f.root_key).into_bytes();
    // Bytes an `http::HeaderValue` refuses (NUL, CR, LF, DEL) never reach a handler at
    // all; tab and bytes >= 0x80 are legal header bytes, so those are the control/non-ASCII
    // characters that really get here.
    let cases: Vec<(&[u8], &str)> = vec![
        (b"Bearer", "malformed_bearer"),
        (b"Bearer ", "malformed_bearer"),
        (b"bEaReR    ", "malformed_bearer"),
        (b"Bearer a,b", "malformed_bearer"),
        (b"Bearer =", "malformed_bearer"),
        (&spaced, "malformed_bearer"),
        (&oversize, "oversize"),
        (&tab, "invalid_characters"),
        (&non_ascii, "invalid_characters"),
    ];
    let reads = f.store.gets();
    for (value, reason) in cases {
        let shown = String::from_utf8_lossy(value);
        let shown = &shown[..shown.len().min(40)];
        let error = f.gate.verify_headers([value]).await.unwrap_err();
        assert_eq!(error.reason(), reason, "{shown:?}");
        let reply = send(&f.app, request(Method::GET, "/api/me", &[value], None)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{shown:?}");
        assert_eq!(
            reply.challenge(),
            Some(challenge("invalid_request").as_str()),
            "{shown:?}"
        );
    }
    assert_eq!(f.store.gets(), reads, "refused before any store read");
}

#[tokio::test]
async fn the_scheme_is_case_insensitive_and_spaces_may_repeat() {
    let f = fixture().await;
    for value in [
        format!("Bearer {}", f.root_key),
        format!("bearer {}", f.root_key),
        format!("BEARER    {}", f.root_key),
    ] {
        let reply = send(
            &f.app,
            request(Method::GET, "/api/me", &[value.as_bytes()], None),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{value:?}");
    }
}

/// Bad checksum, malformed, foreign prefix, unknown id, wrong secret, expired, revoked,
/// owner inactive or unknown, bad JWT signature: one status, one challenge, one body.
#[tokio::test]
async fn every_invalid_key_reason_is_one_identical_401() {
    let f = fixture().await;
    let valid = mint(&f.gate, NewKey::new("alice", "alice")).await;

    // A typo: the checksum catches it.
    let mut bad_checksum = valid.clone();
    let last = bad_checksum.pop().unwrap();
    bad_checksum.push(if last == 'A' { 'B' } else { 'A' });

    // Keys from another application: same shape, but this gate never minted them.
    let other = Keygate::builder(
        MemoryStore::new(),
        Pepper::new(1, b"another application's pepper, 32+ bytes").unwrap(),
    )
    .prefix("abs")
    .build()
    .unwrap();
    let unknown = mint(&other, NewKey::new("elsewhere", "alice")).await;
    // Its record imported here: the id is known but the secret hashes differently.
    let foreign = other.mint(NewKey::new("imported", "alice")).await.unwrap();
    f.gate.import(foreign.record.clone()).await.unwrap();
    let hash_mismatch = foreign.key.expose().to_owned();
    let wrong_prefix = mint(
        &Keygate::builder(MemoryStore::new(), Pepper::new(1, PEPPER).unwrap())
            .prefix("xyz")
            .build()
            .unwrap(),
        NewKey::new("x", "alice"),
    )
    .await;

    let expiring = mint(
        &f.gate,
        NewKey::new("expiring", "alice").expires_in(TimeDelta::hours(1)),
    )
    .await;
    let revoked_issued = f.gate.mint(NewKey::new("revoked", "alice")).await.unwrap();
    f.gate.revoke(revoked_issued.record.id).await.unwrap();
    let revoked = revoked_issued.key.expose().to_owned();
    let owner_inactive = mint(&f.gate, NewKey::new("mallory", "mallory")).await;
    let owner_unknown = mint(&f.gate, NewKey::new("ghost", "ghost")).await;
    let jwt = mint(&f.gate, NewKey::new("jwt", "alice").format(KeyFormat::Jwt)).await;
    let bad_signature = format!("{}AAAA", &jwt[..jwt.len() - 4]);

    // The expiring key works up to the last second, and not at its expiry instant.
    f.clock.advance(TimeDelta::hours(1) - TimeDelta::seconds(1));
    assert_eq!(
        get_as(&f.app, "/api/me", &expiring).await.status,
        StatusCode::OK
    );
    assert_eq!(get_as(&f.app, "/api/me", &jwt).await.status, StatusCode::OK);
    f.clock.advance(TimeDelta::seconds(1));

    let cases = [
        (bad_checksum, "bad_checksum"),
        ("abs_tooshort".to_owned(), "malformed"),
        (wrong_prefix, "wrong_prefix"),
        (unknown, "unknown_key"),
        (hash_mismatch, "hash_mismatch"),
        (expiring, "expired"),
        (revoked, "inactive"),
        (owner_inactive, "owner_inactive"),
        (owner_unknown, "owner_unknown"),
        (bad_signature, "jwt_signature"),
        ("a".repeat(MAX_HEADER_LEN - 100), "malformed"),
    ];
    let mut answers = std::collections::BTreeSet::new();
    for (token, reason) in &cases {
        let before = f.store.gets();
        let error = f.gate.verify(token).await.unwrap_err();
        assert_eq!(error.reason(), *reason, "{token:.40}");
        let offline = error.rejection().unwrap().decided_without_store();
        assert_eq!(
            f.store.gets() == before,
            offline,
            "{reason}: a store read exactly when the token alone cannot decide"
        );
        let reply = get_as(&f.app, "/api/me", token).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reason}");
        assert_eq!(
            reply.challenge(),
            Some(challenge("invalid_token").as_str()),
            "{reason}"
        );
        answers.insert((
            reply.body.clone(),
            reply.header(CONTENT_TYPE).map(str::to_owned),
            reply.challenge().map(str::to_owned),
        ));
    }
    assert_eq!(answers.len(), 1, "one answer for every reason: {answers:?}");
}

#[tokio::test]
async fn a_valid_key_lacking_the_permission_is_403_insufficient_scope() {
    let f = fixture().await;
    let alice = mint(&f.gate, NewKey::new("alice", "alice")).await;
    let reply = call(&f.app, Method::POST, "/api/upload", &alice, None).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let expected =
        format!(r#"Bearer realm="{REALM}", error="insufficient_scope", scope="library:write""#);
    assert_eq!(reply.challenge(), Some(expected.as_str()));
    assert_eq!(reply.json()["error"], "insufficient_scope");
    // She may read.
    assert_eq!(
        get_as(&f.app, "/api/libraries", &alice).await.status,
        StatusCode::OK
    );
    // root may do everything, until a key's scopes narrow it.
    let reply = call(&f.app, Method::POST, "/api/upload", &f.root_key, None).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "uploaded by root")
    );
    let scoped = mint(
        &f.gate,
        NewKey::new("scoped", "root").scopes(["library:read"]),
    )
    .await;
    assert_eq!(
        get_as(&f.app, "/api/libraries", &scoped).await.status,
        StatusCode::OK
    );
    let reply = call(&f.app, Method::POST, "/api/upload", &scoped, None).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.challenge(), Some(expected.as_str()));
}

#[tokio::test]
async fn store_failure_is_503_with_retry_after_never_401() {
    let f = fixture().await;
    f.store.fail_reads.store(true, Ordering::SeqCst);
    let error = f.gate.verify(&f.root_key).await.unwrap_err();
    assert_eq!(error.reason(), "store_unavailable");
    for path in ["/api/me", "/hello", "/api/libraries"] {
        let reply = get_as(&f.app, path, &f.root_key).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(reply.header(RETRY_AFTER), Some("5"), "{path}");
        assert_eq!(reply.challenge(), None, "{path}: a 503 is not a challenge");
        assert_eq!(reply.json()["error"], "temporarily_unavailable");
    }
    // A typo is still refused as such: the checksum needs no store.
    let mut typo = f.root_key.clone();
    let last = typo.pop().unwrap();
    typo.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(
        get_as(&f.app, "/api/me", &typo).await.status,
        StatusCode::UNAUTHORIZED
    );
    // And it recovers.
    f.store.fail_reads.store(false, Ordering::SeqCst);
    assert_eq!(
        get_as(&f.app, "/api/me", &f.root_key).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_hanging_store_times_out_into_503() {
    let f = fixture_with(|b| b.store_timeout(Duration::from_millis(50))).await;
    f.store.hang_reads.store(true, Ordering::SeqCst);
    let reply = get_as(&f.app, "/api/me", &f.root_key).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header(RETRY_AFTER), Some("5"));
}

#[tokio::test]
async fn directory_failure_is_503() {
    let f = fixture().await;
    let key = mint(&f.gate, NewKey::new("down", "down")).await;
    let error = f.gate.verify(&key).await.unwrap_err();
    assert_eq!(error.reason(), "directory_unavailable");
    let reply = get_as(&f.app, "/api/me", &key).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header(RETRY_AFTER), Some("5"));
    assert_eq!(reply.challenge(), None);
}

#[tokio::test]
async fn a_valid_key_is_200_and_the_handler_sees_its_principal() {
    let f = fixture().await;
    let issued = f
        .gate
        .mint(NewKey::new("Backup Script", "alice"))
        .await
        .unwrap();
    let reply = get_as(&f.app, "/api/me", issued.key.expose()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.challenge(), None);
    let me = reply.json();
    assert_eq!(me["keyId"], issued.record.id.to_string());
    assert_eq!(me["keyName"], "Backup Script");
    assert_eq!(me["userId"], "alice");
    assert_eq!(me["format"], "opaque");
    assert_eq!(me["permissions"], json!(["library:read"]));
    assert!(!reply.body.contains(issued.key.expose()));
    let reply = get_as(&f.app, "/api/libraries", issued.key.expose()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["for"], "alice");
}

#[tokio::test]
async fn a_request_is_verified_once_however_many_extractors_ask() {
    let f = fixture().await;
    let before = f.store.gets();
    let reply = get_as(&f.app, "/twice", &f.root_key).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(f.store.gets() - before, 1);
}

#[tokio::test]
async fn optional_principal_is_none_only_without_credentials() {
    let f = fixture().await;
    let hello = |auth: Vec<Vec<u8>>| {
        let app = f.app.clone();
        async move {
            let auth: Vec<&[u8]> = auth.iter().map(Vec::as_slice).collect();
            send(&app, request(Method::GET, "/hello", &auth, None)).await
        }
    };
    let reply = hello(vec![]).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "hello stranger")
    );
    let reply = hello(vec![b"Basic dXNlcjpwYXNz".to_vec()]).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "hello stranger")
    );
    let reply = hello(vec![bearer(&f.root_key)]).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "hello root")
    );

    // A bad key is refused, never downgraded to anonymous.
    let unknown = mint(
        &Keygate::builder(MemoryStore::new(), Pepper::new(1, PEPPER).unwrap())
            .prefix("abs")
            .build()
            .unwrap(),
        NewKey::new("elsewhere", "alice"),
    )
    .await;
    let reply = hello(vec![bearer(&unknown)]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.challenge(), Some(challenge("invalid_token").as_str()));
    let reply = hello(vec![b"Bearer".to_vec()]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    f.store.fail_reads.store(true, Ordering::SeqCst);
    let reply = hello(vec![bearer(&f.root_key)]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn routes_without_extractors_stay_open() {
    let f = fixture().await;
    let reply = send(&f.app, request(Method::GET, "/open", &[], None)).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "open")
    );
}

// ---------------------------------------------------------------------------------------
// The admin router at /api/api-keys
// ---------------------------------------------------------------------------------------

async fn create(f: &Fixture, body: Value) -> Reply {
    call(
        &f.app,
        Method::POST,
        "/api/api-keys",
        &f.root_key,
        Some(body),
    )
    .await
}

async fn all_records(gate: &Keygate) -> Vec<KeyRecord> {
    gate.list(ListQuery::new().limit(1000))
        .await
        .unwrap()
        .records
}

#[tokio::test]
async fn admin_create_list_get_patch_delete() {
    let f = fixture().await;

    // Create: the plaintext comes back this once.
    let reply = create(
        &f,
        json!({ "name": "Backup Script", "userId": "alice", "expiresIn": 3600 }),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let created = reply.json()["apiKey"].clone();
    let key = created["apiKey"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(
        key.starts_with("abs_") && keygate::checksum_ok(&key),
        "{key}"
    );
    assert_eq!(created["name"], "Backup Script");
    assert_eq!(created["userId"], "alice");
    assert_eq!(created["createdByUserId"], "root");
    assert_eq!(created["isActive"], true);
    assert_eq!(created["format"], "opaque");
    let expires: DateTime<Utc> = created["expiresAt"].as_str().unwrap().parse().unwrap();
    assert_eq!(expires, start() + TimeDelta::hours(1));
    assert!(created.get("hash").is_none());
    let path = format!("/api/api-keys/{id}");

    // The new key works, with alice's permissions.
    let reply = get_as(&f.app, "/api/libraries", &key).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["for"], "alice");

    // List and get: the record, never the plaintext.
    let reply = get_as(&f.app, "/api/api-keys", &f.root_key).await;
    assert_eq!(reply.status, StatusCode::OK);
    let listed = reply.json()["apiKeys"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().any(|k| k["id"] == id.as_str()));
    assert!(listed.iter().all(|k| k.get("apiKey").is_none()));
    assert!(!reply.body.contains(&key));
    let reply = get_as(&f.app, &path, &f.root_key).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["apiKey"]["id"], id.as_str());
    assert!(reply.json()["apiKey"].get("apiKey").is_none());

    // Deactivate: the key is refused at once; reactivate: it works again.
    let reply = call(
        &f.app,
        Method::PATCH,
        &path,
        &f.root_key,
        Some(json!({ "isActive": false })),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["apiKey"]["isActive"], false);
    let reply = get_as(&f.app, "/api/libraries", &key).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.challenge(), Some(challenge("invalid_token").as_str()));
    let reply = call(
        &f.app,
        Method::PATCH,
        &path,
        &f.root_key,
        Some(json!({ "isActive": true })),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        get_as(&f.app, "/api/libraries", &key).await.status,
        StatusCode::OK
    );

    // Reassign: an unknown user is refused and nothing changes...
    let reply = call(
        &f.app,
        Method::PATCH,
        &path,
        &f.root_key,
        Some(json!({ "userId": "ghost" })),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert!(reply.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("userId"));
    let record = f.gate.get(id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(record.owner, "alice");
    // ...a known one takes over, and the key inherits the new owner's permissions.
    let reply = call(
        &f.app,
        Method::PATCH,
        &path,
        &f.root_key,
        Some(json!({ "userId": "root" })),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["apiKey"]["userId"], "root");
    assert_eq!(
        get_as(&f.app, "/api/me", &key).await.json()["userId"],
        "root"
    );
    assert_eq!(
        get_as(&f.app, "/api/api-keys", &key).await.status,
        StatusCode::OK
    );

    // Delete: 200, then 404 everywhere, and the key is dead.
    let reply = call(&f.app, Method::DELETE, &path, &f.root_key, None).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "OK"));
    for method in [Method::GET, Method::DELETE, Method::PATCH] {
        let body = (method == Method::PATCH).then(|| json!({ "isActive": true }));
        let reply = call(&f.app, method.clone(), &path, &f.root_key, body).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method}");
    }
    assert_eq!(
        get_as(&f.app, "/api/libraries", &key).await.status,
        StatusCode::UNAUTHORIZED
    );

    // The store afterwards: only root's key.
    let records = all_records(&f.gate).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].owner, "root");
}

#[tokio::test]
async fn admin_rotate_keeps_the_old_key_for_the_grace_period() {
    let f = fixture().await;
    let created = create(&f, json!({ "name": "Sync", "userId": "alice" }))
        .await
        .json();
    let old_key = created["apiKey"]["apiKey"].as_str().unwrap().to_owned();
    let old_id = created["apiKey"]["id"].as_str().unwrap().to_owned();

    let path = format!("/api/api-keys/{old_id}/rotate");
    let reply = call(
        &f.app,
        Method::POST,
        &path,
        &f.root_key,
        Some(json!({ "gracePeriod": 60 })),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let rotated = reply.json();
    let new_key = rotated["apiKey"]["apiKey"].as_str().unwrap().to_owned();
    let new_id = rotated["apiKey"]["id"].as_str().unwrap().to_owned();
    assert_ne!(new_key, old_key);
    assert_ne!(new_id, old_id);
    assert_eq!(rotated["apiKey"]["name"], "Sync");
    assert_eq!(rotated["apiKey"]["userId"], "alice");
    assert_eq!(rotated["previous"]["id"], old_id.as_str());
    assert!(rotated["previous"].get("apiKey").is_none());
    let grace_end: DateTime<Utc> = rotated["previous"]["expiresAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(grace_end, start() + TimeDelta::seconds(60));

    // Both work during the grace period; the old one stops at its end.
    for key in [&old_key, &new_key] {
        assert_eq!(
            get_as(&f.app, "/api/libraries", key).await.status,
            StatusCode::OK
        );
    }
    f.clock.advance(TimeDelta::seconds(59));
    assert_eq!(
        get_as(&f.app, "/api/libraries", &old_key).await.status,
        StatusCode::OK
    );
    f.clock.advance(TimeDelta::seconds(1));
    assert_eq!(
        get_as(&f.app, "/api/libraries", &old_key).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_as(&f.app, "/api/libraries", &new_key).await.status,
        StatusCode::OK
    );

    // Without a body the old key stops at once; bad grace periods and ids are refused.
    let path = format!("/api/api-keys/{new_id}/rotate");
    let reply = call(&f.app, Method::POST, &path, &f.root_key, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        get_as(&f.app, "/api/libraries", &new_key).await.status,
        StatusCode::UNAUTHORIZED
    );
    let reply = call(
        &f.app,
        Method::POST,
        &path,
        &f.root_key,
        Some(json!({ "gracePeriod": -1 })),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let unknown = format!("/api/api-keys/{}/rotate", KeyId::random());
    let reply = call(&f.app, Method::POST, &unknown, &f.root_key, None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);

    // root's key, the rotated original, its replacement and the third one.
    assert_eq!(all_records(&f.gate).await.len(), 4);
}

#[tokio::test]
async fn admin_refuses_non_admins_and_changes_nothing() {
    let f = fixture().await;
    let alice = mint(&f.gate, NewKey::new("alice", "alice")).await;
    let id = all_records(&f.gate).await[0].id;
    let item = format!("/api/api-keys/{id}");
    let rotate = format!("{item}/rotate");
    let requests = [
        (Method::GET, "/api/api-keys", None),
        (
            Method::POST,
            "/api/api-keys",
            Some(json!({ "name": "mine now", "userId": "alice" })),
        ),
        (Method::GET, item.as_str(), None),
        (
            Method::PATCH,
            item.as_str(),
            Some(json!({ "userId": "alice" })),
        ),
        (Method::DELETE, item.as_str(), None),
        (Method::POST, rotate.as_str(), None),
    ];
    let before = all_records(&f.gate).await;
    for (method, path, body) in requests {
        let reply = call(&f.app, method.clone(), path, &alice, body.clone()).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(reply.json()["error"], "insufficient_scope");
        // No key at all: the usual bare challenge.
        let body = body.map(|b| b.to_string());
        let reply = send(&f.app, request(method.clone(), path, &[], body.as_deref())).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(
            reply.challenge(),
            Some(format!(r#"Bearer realm="{REALM}""#).as_str())
        );
    }
    assert_eq!(all_records(&f.gate).await, before);

    // A key scoped away from "admin" is not an admin, even for an unrestricted owner.
    let scoped = mint(
        &f.gate,
        NewKey::new("scoped", "root").scopes(["library:read"]),
    )
    .await;
    assert_eq!(
        get_as(&f.app, "/api/api-keys", &scoped).await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn admin_bad_input_is_400_and_writes_nothing() {
    let f = fixture().await;
    let before = all_records(&f.gate).await;
    let bodies = [
        "{",
        "not json",
        r#"{"userId":"alice"}"#,
        r#"{"name":"no owner"}"#,
        r#"{"name":"ghost's","userId":"ghost"}"#,
        r#"{"name":"","userId":"alice"}"#,
        r#"{"name":5,"userId":"alice"}"#,
        r#"{"name":"x","userId":"alice","expiresIn":-5}"#,
        r#"{"name":"x","userId":"alice","expiresIn":"10"}"#,
        r#"{"name":"x","userId":"alice","format":"pgp"}"#,
    ];
    for body in bodies {
        let reply = send(
            &f.app,
            request(
                Method::POST,
                "/api/api-keys",
                &[&bearer(&f.root_key)],
                Some(body),
            ),
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            reply.body
        );
        assert_eq!(reply.json()["error"], "invalid_request", "{body}");
    }
    let id = before[0].id;
    let reply = send(
        &f.app,
        request(
            Method::PATCH,
            &format!("/api/api-keys/{id}"),
            &[&bearer(&f.root_key)],
            Some("{\"isActive\":"),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    for path in ["/api/api-keys/not-a-uuid", "/api/api-keys/123"] {
        let reply = get_as(&f.app, path, &f.root_key).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
    }
    let reply = get_as(&f.app, "/api/api-keys?limit=0", &f.root_key).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(all_records(&f.gate).await, before);
}

#[tokio::test]
async fn admin_store_failure_is_503() {
    let f = fixture().await;
    // Verification reads still work; writes fail.
    f.store.fail_writes.store(true, Ordering::SeqCst);
    let reply = create(&f, json!({ "name": "x", "userId": "alice" })).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert_eq!(reply.header(RETRY_AFTER), Some("5"));
    f.store.fail_writes.store(false, Ordering::SeqCst);
    assert_eq!(all_records(&f.gate).await.len(), 1);
}

#[tokio::test]
async fn admin_list_filters_by_user_and_pages() {
    let f = fixture().await;
    for name in ["a", "b", "c"] {
        let reply = create(&f, json!({ "name": name, "userId": "alice" })).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let reply = get_as(&f.app, "/api/api-keys?userId=alice", &f.root_key).await;
    let keys = reply.json()["apiKeys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| k["userId"] == "alice"));

    let mut seen = Vec::new();
    let mut path = "/api/api-keys?limit=2".to_owned();
    loop {
        let page = get_as(&f.app, &path, &f.root_key).await.json();
        seen.extend(
            page["apiKeys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["id"].clone()),
        );
        match page.get("next").and_then(Value::as_str) {
            Some(next) => path = format!("/api/api-keys?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 4);
}

#[tokio::test]
async fn admin_last_used_is_recorded_for_accepted_keys_only() {
    let f = fixture().await;
    let created = create(&f, json!({ "name": "used", "userId": "alice" }))
        .await
        .json();
    let key = created["apiKey"]["apiKey"].as_str().unwrap().to_owned();
    let id = created["apiKey"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["apiKey"]["lastUsedAt"], Value::Null);
    assert_eq!(
        get_as(&f.app, "/api/libraries", &key).await.status,
        StatusCode::OK
    );
    f.gate.flush().await.unwrap();
    let shown = get_as(&f.app, &format!("/api/api-keys/{id}"), &f.root_key)
        .await
        .json();
    let used: DateTime<Utc> = shown["apiKey"]["lastUsedAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(used, start());
}

/// Audiobookshelf clients call `/api/api-keys` with no trailing slash.
#[tokio::test]
async fn admin_collection_path_without_trailing_slash() {
    let f = fixture().await;
    let reply = get_as(&f.app, "/api/api-keys", &f.root_key).await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = create(&f, json!({ "name": "no slash", "userId": "alice" })).await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// Express, which Audiobookshelf runs on, also routes `/api/api-keys/` to the collection.
/// axum 0.8's `Router::nest` does not: a nested `"/"` route matches only the bare prefix
/// (tokio-rs/axum#2659), so both of these are 404 today.
#[tokio::test]
async fn admin_collection_path_with_trailing_slash() {
    let f = fixture().await;
    let reply = get_as(&f.app, "/api/api-keys/", &f.root_key).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = call(
        &f.app,
        Method::POST,
        "/api/api-keys/",
        &f.root_key,
        Some(json!({ "name": "slash", "userId": "alice" })),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

// ---------------------------------------------------------------------------------------
// Events: a successful request must not be reported as a refusal
// ---------------------------------------------------------------------------------------

/// With a user directory, `Keygate::accept` once built its "owner unknown" refusal with
/// `ok_or(reject_key(..))`, which ran `reject_key` (and its INFO "key refused" event) on
/// every *successful* verify too: with an INFO subscriber, each accepted request logged a
/// false `reason=owner_unknown` refusal. Refusals are now logged only by
/// `Keygate::refuse` (src/verify.rs), for the refusal a verify returns.
#[tokio::test]
async fn an_accepted_request_logs_no_refusal() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let f = fixture().await;
    let revoked = f.gate.mint(NewKey::new("revoked", "alice")).await.unwrap();
    f.gate.revoke(revoked.record.id).await.unwrap();
    capture.take();

    // Control: a refusal is reported, with its reason.
    let reply = get_as(&f.app, "/api/me", revoked.key.expose()).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let lines = capture.take();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("key refused") && l.contains("inactive")),
        "{lines:#?}"
    );

    let reply = get_as(&f.app, "/api/me", &f.root_key).await;
    assert_eq!(reply.status, StatusCode::OK);
    let lines = capture.take();
    assert!(
        !lines.iter().any(|l| l.contains("refused")),
        "an accepted request was logged as refused: {lines:#?}"
    );
}

#[tokio::test]
async fn admin_escalation_is_403_insufficient_scope_and_writes_nothing() {
    let f = fixture().await;
    // root's key scoped to key management only, and alice's key.
    let scoped = mint(&f.gate, NewKey::new("keys only", "root").scopes(["admin"])).await;
    mint(&f.gate, NewKey::new("alice's", "alice")).await;
    let records = all_records(&f.gate).await;
    let id_of = |owner: &str, name: &str| {
        records
            .iter()
            .find(|r| r.owner == owner && r.name == name)
            .unwrap()
            .id
    };
    let (scoped_id, alice_id) = (id_of("root", "keys only"), id_of("alice", "alice's"));
    assert_eq!(
        get_as(&f.app, "/api/api-keys", &scoped).await.status,
        StatusCode::OK
    );
    f.gate.flush().await.unwrap();
    let before = all_records(&f.gate).await;

    let escalations = [
        (
            Method::POST,
            "/api/api-keys".to_owned(),
            json!({ "name": "x", "userId": "root" }),
            "wider_permissions",
        ),
        (
            Method::POST,
            "/api/api-keys".to_owned(),
            json!({ "name": "x", "userId": "alice", "scopes": ["library:read"] }),
            "owner_out_of_reach",
        ),
        (
            Method::PATCH,
            format!("/api/api-keys/{scoped_id}"),
            json!({ "scopes": null, "expiresAt": null }),
            "wider_permissions",
        ),
        (
            Method::PATCH,
            format!("/api/api-keys/{alice_id}"),
            json!({ "userId": "root" }),
            "owner_out_of_reach",
        ),
    ];
    for (method, path, body, reason) in escalations {
        let reply = call(&f.app, method.clone(), &path, &scoped, Some(body)).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {}",
            reply.body
        );
        assert_eq!(
            reply.challenge(),
            Some(format!(r#"Bearer realm="{REALM}", error="insufficient_scope""#).as_str())
        );
        assert_eq!(reply.json()["error"], "insufficient_scope");
        assert_eq!(reply.json()["reason"], reason, "{}", reply.body);
    }
    f.gate.flush().await.unwrap();
    assert_eq!(all_records(&f.gate).await, before);

    // Within its reach the scoped key still works; root's unscoped key may do the rest.
    let reply = call(
        &f.app,
        Method::POST,
        "/api/api-keys",
        &scoped,
        Some(json!({ "name": "x", "userId": "root", "scopes": ["admin"] })),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = call(
        &f.app,
        Method::PATCH,
        &format!("/api/api-keys/{alice_id}"),
        &f.root_key,
        Some(json!({ "userId": "root" })),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

// ---------------------------------------------------------------------------------------
// The Authenticate layer: a whole router behind one check
// ---------------------------------------------------------------------------------------

/// Reads the principal the layer left in the extensions (no `Keygate` in this router's
/// state), or says there is none.
async fn who(principal: Option<axum::Extension<Principal>>) -> String {
    match principal {
        Some(axum::Extension(p)) => format!("key of {}", p.owner_id()),
        None => "anonymous".to_owned(),
    }
}

/// A router with no state and no extractor that knows the gate: only the layer guards it.
fn layered(layer: Authenticate) -> Router {
    Router::new()
        .route("/a", get(who))
        .route("/b", post(who))
        .layer(layer)
}

#[tokio::test]
async fn the_required_layer_guards_every_route_of_a_router() {
    let f = fixture().await;
    let app = layered(Authenticate::required(f.gate.clone()));
    let alice = mint(&f.gate, NewKey::new("alice", "alice")).await;

    for (method, path) in [(Method::GET, "/a"), (Method::POST, "/b")] {
        // No key: 401 with the gate's realm, and the route never ran.
        let reply = send(&app, request(method.clone(), path, &[], None)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{method} {path}");
        let bare = format!(r#"Bearer realm="{REALM}""#);
        assert_eq!(reply.challenge(), Some(bare.as_str()));
        assert_eq!(reply.json()["error"], "unauthorized");
        assert!(reply.json()["error_description"].is_string());

        // A key: 200, and the handler sees its principal.
        let reply = send(
            &app,
            request(method.clone(), path, &[&bearer(&alice)], None),
        )
        .await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "key of alice"),
            "{method} {path}"
        );
        assert_eq!(reply.challenge(), None);
    }

    // Every other row of the mapping comes from the same table.
    let reply = send(
        &app,
        request(Method::GET, "/a", &[&bearer(&alice), &bearer(&alice)], None),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.challenge(),
        Some(challenge("invalid_request").as_str())
    );
    let reply = send(
        &app,
        request(Method::GET, "/a", &[b"Bearer abs_nope"], None),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.challenge(), Some(challenge("invalid_token").as_str()));
    f.store.fail_reads.store(true, Ordering::SeqCst);
    let reply = get_as(&app, "/a", &alice).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header(RETRY_AFTER), Some("5"));
}

#[tokio::test]
async fn the_layer_permission_is_403_insufficient_scope() {
    let f = fixture().await;
    let app = layered(Authenticate::required(f.gate.clone()).permission("library:read"));
    let alice = mint(&f.gate, NewKey::new("alice", "alice")).await;
    let scoped = mint(
        &f.gate,
        NewKey::new("scoped", "root").scopes(["library:write"]),
    )
    .await;

    let reply = get_as(&app, "/a", &alice).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "key of alice")
    );
    // root may do everything, but this key is scoped away from library:read.
    let reply = get_as(&app, "/a", &scoped).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(
        reply.challenge(),
        Some(
            format!(r#"Bearer realm="{REALM}", error="insufficient_scope", scope="library:read""#)
                .as_str()
        )
    );
    assert_eq!(reply.json()["error"], "insufficient_scope");

    // Every permission given is required.
    let app = layered(
        Authenticate::required(f.gate.clone())
            .permission("library:read")
            .permission("library:write"),
    );
    assert_eq!(
        get_as(&app, "/a", &alice).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(get_as(&app, "/a", &f.root_key).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_optional_layer_lets_anonymous_requests_through_but_not_bad_keys() {
    let f = fixture().await;
    let app = layered(Authenticate::optional(f.gate.clone()).permission("library:read"));
    let alice = mint(&f.gate, NewKey::new("alice", "alice")).await;
    let scoped = mint(
        &f.gate,
        NewKey::new("scoped", "root").scopes(["library:write"]),
    )
    .await;

    for auth in [vec![], vec![b"Basic dXNlcjpwYXNz".to_vec()]] {
        let auth: Vec<&[u8]> = auth.iter().map(Vec::as_slice).collect();
        let reply = send(&app, request(Method::GET, "/a", &auth, None)).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "anonymous")
        );
        assert_eq!(reply.challenge(), None);
    }
    let reply = get_as(&app, "/a", &alice).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "key of alice")
    );
    // A key that is there is checked: bad is 401, lacking the permission is 403.
    let reply = send(
        &app,
        request(Method::GET, "/a", &[b"Bearer abs_nope"], None),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.challenge(), Some(challenge("invalid_token").as_str()));
    let reply = get_as(&app, "/a", &scoped).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply
        .challenge()
        .unwrap()
        .starts_with(&challenge("insufficient_scope")));
}

/// The layer verifies once; the gate-aware extractors behind it reuse its principal.
#[tokio::test]
async fn extractors_behind_the_layer_reuse_its_principal() {
    let f = fixture().await;
    let app = Router::new()
        .route("/twice", get(twice))
        .route("/me", get(me))
        .layer(Authenticate::required(f.gate.clone()))
        .with_state(f.gate.clone());
    let before = f.store.gets();
    let reply = get_as(&app, "/twice", &f.root_key).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(f.store.gets() - before, 1);
}

// ---------------------------------------------------------------------------------------
// The gate's realm, also for a VerifyError a handler returns
// ---------------------------------------------------------------------------------------

/// A dynamic permission check, `?` on `Principal::require`.
async fn dynamic(principal: Principal) -> Result<String, keygate::VerifyError> {
    principal.require("library:write")?;
    Ok("written".to_owned())
}

#[tokio::test]
async fn a_verify_error_from_a_handler_names_the_gates_realm_behind_the_layer() {
    let f = fixture().await;
    let alice = mint(&f.gate, NewKey::new("alice", "alice")).await;
    let want =
        format!(r#"Bearer realm="{REALM}", error="insufficient_scope", scope="library:write""#);

    let app = Router::new()
        .route("/dynamic", get(dynamic))
        .layer(Authenticate::optional(f.gate.clone()))
        .with_state(f.gate.clone());
    let reply = get_as(&app, "/dynamic", &alice).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.challenge(), Some(want.as_str()));
    assert_eq!(reply.json()["error"], "insufficient_scope");
    // The handler's own answers are untouched.
    assert_eq!(get_as(&app, "/dynamic", &f.root_key).await.body, "written");

    // Without a layer the error has no gate at hand: the default realm.
    let bare = Router::new()
        .route("/dynamic", get(dynamic))
        .with_state(f.gate.clone());
    let reply = get_as(&bare, "/dynamic", &alice).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(
        reply.challenge(),
        Some(r#"Bearer realm="api", error="insufficient_scope", scope="library:write""#)
    );
}

/// The same check, answered as the shared `keygate::http::AuthError` (made with `From`).
async fn dynamic_auth_error(principal: Principal) -> Result<String, keygate::http::AuthError> {
    principal.require("library:write")?;
    Ok("written".to_owned())
}

/// `keygate::http::AuthError` is axum's rejection and a handler's error alike; made from a
/// `VerifyError` in a handler, the layer gives it the gate's realm, as for a bare one.
#[tokio::test]
async fn an_auth_error_from_a_handler_names_the_gates_realm_behind_the_layer() {
    let f = fixture().await;
    let alice = mint(&f.gate, NewKey::new("alice", "alice")).await;
    let app = Router::new()
        .route("/dynamic", get(dynamic_auth_error))
        .layer(Authenticate::optional(f.gate.clone()))
        .with_state(f.gate.clone());
    let reply = get_as(&app, "/dynamic", &alice).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let want =
        format!(r#"Bearer realm="{REALM}", error="insufficient_scope", scope="library:write""#);
    assert_eq!(reply.challenge(), Some(want.as_str()));
    assert_eq!(reply.json()["error"], "insufficient_scope");

    let bare = Router::new()
        .route("/dynamic", get(dynamic_auth_error))
        .with_state(f.gate.clone());
    let reply = get_as(&bare, "/dynamic", &alice).await;
    assert_eq!(
        reply.challenge(),
        Some(r#"Bearer realm="api", error="insufficient_scope", scope="library:write""#)
    );
}

// ---------------------------------------------------------------------------------------
// /api/me, the route table, one error shape, unknown body fields
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn me_lists_permissions_as_an_array_also_for_all() {
    let f = fixture().await;
    let me = get_as(&f.app, "/api/me", &f.root_key).await.json();
    assert_eq!(me["permissions"], json!(["*"]));
    assert_eq!(me["allPermissions"], json!(true));
    let alice = mint(&f.gate, NewKey::new("alice", "alice")).await;
    let me = get_as(&f.app, "/api/me", &alice).await.json();
    assert_eq!(me["permissions"], json!(["library:read"]));
    assert_eq!(me["allPermissions"], json!(false));
}

#[tokio::test]
async fn the_admin_route_table_answers_404_and_405_itself() {
    let f = fixture().await;
    let id = all_records(&f.gate).await[0].id;
    let item = format!("/api/api-keys/{id}");
    let rotate = format!("{item}/rotate");
    let cases = [
        (Method::PUT, "/api/api-keys".to_owned(), Some("GET, POST")),
        (
            Method::DELETE,
            "/api/api-keys/".to_owned(),
            Some("GET, POST"),
        ),
        (Method::POST, item.clone(), Some("GET, PATCH, DELETE")),
        (Method::PUT, item.clone(), Some("GET, PATCH, DELETE")),
        (Method::GET, rotate.clone(), Some("POST")),
        (Method::GET, format!("{rotate}/x"), None),
        (Method::GET, format!("{item}/nope"), None),
        (Method::GET, "/api/api-keys//rotate".to_owned(), None),
    ];
    for (method, path, allow) in cases {
        // With an admin key, and without any: the route is judged first.
        for auth in [vec![bearer(&f.root_key)], vec![]] {
            let auth: Vec<&[u8]> = auth.iter().map(Vec::as_slice).collect();
            let reply = send(&f.app, request(method.clone(), &path, &auth, None)).await;
            let (status, code) = match allow {
                Some(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
                None => (StatusCode::NOT_FOUND, "not_found"),
            };
            assert_eq!(reply.status, status, "{method} {path}: {}", reply.body);
            assert_eq!(
                reply.header(axum::http::header::ALLOW),
                allow,
                "{method} {path}"
            );
            assert_eq!(reply.json()["error"], code);
            assert!(reply.json()["error_description"].is_string());
        }
    }
    assert_eq!(all_records(&f.gate).await.len(), 1);
}

/// Auth refusals and admin errors share `{"error","error_description"}`.
#[tokio::test]
async fn auth_and_admin_errors_have_one_shape() {
    let f = fixture().await;
    let alice = mint(&f.gate, NewKey::new("alice", "alice")).await;
    let replies = [
        send(&f.app, request(Method::GET, "/api/me", &[], None)).await,
        call(&f.app, Method::POST, "/api/upload", &alice, None).await,
        get_as(&f.app, "/api/api-keys", &alice).await,
        create(&f, json!({ "name": "x" })).await,
        get_as(
            &f.app,
            &format!("/api/api-keys/{}", KeyId::random()),
            &f.root_key,
        )
        .await,
    ];
    for reply in replies {
        let body = reply.json();
        let object = body.as_object().unwrap();
        assert!(object["error"].is_string(), "{body}");
        assert!(object["error_description"].is_string(), "{body}");
        assert!(!object.contains_key("message"), "{body}");
    }
    let refused = get_as(&f.app, "/api/api-keys", &alice).await.json();
    assert_eq!(refused["error"], "insufficient_scope");
    assert_eq!(refused["reason"], "not_admin");
}

#[tokio::test]
async fn admin_bodies_with_unknown_fields_are_400_naming_the_field() {
    let f = fixture().await;
    let created = create(&f, json!({ "name": "Sync", "userId": "alice" }))
        .await
        .json();
    let id = created["apiKey"]["id"].as_str().unwrap().to_owned();
    let before = all_records(&f.gate).await;

    // Audiobookshelf-style camelCase is required: snake_case is refused, not ignored.
    let reply = create(
        &f,
        json!({ "name": "forever", "userId": "alice", "expires_in": 60 }),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert_eq!(reply.json()["error"], "invalid_request");
    let description = reply.json()["error_description"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(description.contains("expires_in"), "{description}");

    let item = format!("/api/api-keys/{id}");
    let reply = call(
        &f.app,
        Method::PATCH,
        &item,
        &f.root_key,
        Some(json!({ "is_active": false })),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    let description = reply.json()["error_description"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(description.contains("is_active"), "{description}");

    let reply = call(
        &f.app,
        Method::POST,
        &format!("{item}/rotate"),
        &f.root_key,
        Some(json!({ "grace": 60 })),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    let description = reply.json()["error_description"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(description.contains("grace"), "{description}");

    // Nothing was minted, changed or rotated.
    assert_eq!(all_records(&f.gate).await, before);
}

/// `admin_routes("")` under `Router::nest` routes through the same table.
#[tokio::test]
async fn the_nested_admin_routes_serve_the_same_routes() {
    let f = fixture().await;
    let app: Router = Router::new().nest(
        "/api/api-keys",
        keygate::axum::admin_routes("", AdminApi::new(f.gate.clone())),
    );
    let id = all_records(&f.gate).await[0].id;
    let reply = get_as(&app, "/api/api-keys", &f.root_key).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = get_as(&app, &format!("/api/api-keys/{id}"), &f.root_key).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.json()["apiKey"]["id"], id.to_string());
    let reply = get_as(&app, &format!("/api/api-keys/{id}/rotate"), &f.root_key).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
}

/// An anonymous request through an optional layer is one refusal, not one per extractor.
#[tokio::test]
async fn an_anonymous_request_behind_the_optional_layer_counts_once() {
    let f = fixture().await;
    let app = Router::new()
        .route("/hello", get(hello))
        .layer(Authenticate::optional(f.gate.clone()))
        .with_state(f.gate.clone());
    let before = f.gate.refusal_counts().get("missing_credentials");
    let reply = send(&app, request(Method::GET, "/hello", &[], None)).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "hello stranger")
    );
    assert_eq!(
        f.gate.refusal_counts().get("missing_credentials") - before,
        1
    );
}
