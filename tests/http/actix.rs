//! The actix-web integration, through actix's own test harness: every row of the HTTP
//! mapping in `keygate::http` (status, `WWW-Authenticate`, `Retry-After`) via the
//! extractors and the middleware, and the admin scope.

// Test code: a panic is how a test reports a failure.
#![allow(clippy::unwrap_used, clippy::panic)]
#![cfg(feature = "actix")]

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use actix_web::test::{self, TestRequest};
use actix_web::{web, App, HttpResponse};
use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Value};

use keygate::actix::{admin_scope, Authenticate, OptionalPrincipal, Require};
use keygate::admin::AdminApi;
use keygate::http::AuthError;
use keygate::{
    DirectoryError, KeyId, KeyPatch, KeyRecord, KeyStore, Keygate, ListQuery, ManualClock,
    MemoryStore, NewKey, Owner, Pepper, Permission, Principal, Rejection, StoreError,
    UserDirectory, VerifyError,
};

// ---------------------------------------------------------------------------------------
// Fixtures

const REALM: &str = "test";
const BARE: &str = r#"Bearer realm="test""#;
const INVALID_REQUEST: &str = r#"Bearer realm="test", error="invalid_request""#;
const INVALID_TOKEN: &str = r#"Bearer realm="test", error="invalid_token""#;
const INSUFFICIENT_WRITE: &str =
    r#"Bearer realm="test", error="insufficient_scope", scope="library:write""#;

const BODY_UNAUTHORIZED: &str =
    r#"{"error":"unauthorized","error_description":"Bearer credentials required"}"#;
const BODY_INVALID_REQUEST: &str =
    r#"{"error":"invalid_request","error_description":"Malformed Authorization header"}"#;
const BODY_INVALID_TOKEN: &str =
    r#"{"error":"invalid_token","error_description":"The API key is invalid, expired or revoked"}"#;
const BODY_INSUFFICIENT: &str = r#"{"error":"insufficient_scope","error_description":"The API key lacks the required permission"}"#;
const BODY_UNAVAILABLE: &str = r#"{"error":"temporarily_unavailable","error_description":"Key verification is temporarily unavailable"}"#;

fn run<F: Future>(f: F) -> F::Output {
    actix_web::rt::System::new().block_on(f)
}

/// The host application's users.
struct Users;

#[async_trait]
impl UserDirectory for Users {
    async fn owner(&self, user_id: &str) -> Result<Option<Owner>, DirectoryError> {
        Ok(match user_id {
            "admin" => Some(Owner::with_permissions([
                "admin",
                "library:read",
                "library:write",
            ])),
            "alice" => Some(Owner::with_permissions(["library:read"])),
            "bob" => Some(Owner::with_permissions(["library:read", "library:write"])),
            "mallory" => Some(Owner::inactive()),
            "flaky" => return Err(DirectoryError::new(std::io::Error::other("directory down"))),
            _ => None,
        })
    }
}

/// A memory store whose `get` can be made to time out, and that counts its reads.
struct FlakyStore {
    inner: MemoryStore,
    down: AtomicBool,
    list_down: AtomicBool,
    gets: AtomicUsize,
}

#[async_trait]
impl KeyStore for FlakyStore {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.inner.insert(record).await
    }
    async fn get(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Timeout);
        }
        self.inner.get(id).await
    }
    async fn update(&self, id: KeyId, patch: &KeyPatch) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.update(id, patch).await
    }
    async fn delete(&self, id: KeyId) -> Result<bool, StoreError> {
        self.inner.delete(id).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        if self.list_down.load(Ordering::SeqCst) {
            return Err(StoreError::Timeout);
        }
        self.inner.list(query).await
    }
    async fn record_last_used(&self, batch: &[(KeyId, DateTime<Utc>)]) -> Result<(), StoreError> {
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

struct Fx {
    gate: Keygate,
    store: Arc<FlakyStore>,
    clock: Arc<ManualClock>,
}

fn pepper() -> Pepper {
    Pepper::new(1, [7u8; 32]).unwrap()
}

fn fixture() -> Fx {
    let store = Arc::new(FlakyStore {
        inner: MemoryStore::new(),
        down: AtomicBool::new(false),
        list_down: AtomicBool::new(false),
        gets: AtomicUsize::new(0),
    });
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let gate = Keygate::builder(store.clone(), pepper())
        .users(Users)
        .clock(clock.clone())
        .realm(REALM)
        .build()
        .unwrap();
    Fx { gate, store, clock }
}

impl Fx {
    async fn mint(&self, owner: &str) -> (KeyId, String) {
        self.mint_with(NewKey::new(format!("{owner}'s key"), owner))
            .await
    }

    async fn mint_with(&self, new: NewKey) -> (KeyId, String) {
        let issued = self.gate.mint(new).await.unwrap();
        (issued.record.id, issued.key.expose().to_owned())
    }

    fn store_down(&self, down: bool) {
        self.store.down.store(down, Ordering::SeqCst);
    }

    fn gets(&self) -> usize {
        self.store.gets.load(Ordering::SeqCst)
    }
}

/// What came back: status, the two auth headers, content type and body.
#[derive(Debug)]
struct Reply {
    status: u16,
    www_authenticate: Option<String>,
    retry_after: Option<String>,
    content_type: Option<String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// Asserts one row of the mapping table.
    #[track_caller]
    fn assert_row(&self, status: u16, challenge: Option<&str>, body: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.www_authenticate.as_deref(), challenge, "{self:?}");
        let retry = if status == 503 { Some("5") } else { None };
        assert_eq!(self.retry_after.as_deref(), retry, "{self:?}");
        assert_eq!(self.body, body, "{self:?}");
        assert_eq!(self.content_type.as_deref(), Some("application/json"));
    }
}

async fn send<S, R, B>(app: &S, req: R) -> Reply
where
    S: Service<R, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let response = test::call_service(app, req).await;
    let header = |name| {
        let mut values = response.headers().get_all(&name);
        let first = values.next().map(|v| v.to_str().unwrap().to_owned());
        assert!(values.next().is_none(), "{name} twice");
        first
    };
    let status = response.status().as_u16();
    let www_authenticate = header(WWW_AUTHENTICATE);
    let retry_after = header(RETRY_AFTER);
    let content_type = header(CONTENT_TYPE);
    let body = test::read_body(response).await;
    Reply {
        status,
        www_authenticate,
        retry_after,
        content_type,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

fn get(uri: &str) -> TestRequest {
    TestRequest::get().uri(uri)
}

fn bearer(req: TestRequest, key: &str) -> TestRequest {
    req.insert_header((AUTHORIZATION, format!("Bearer {key}")))
}

struct LibraryWrite;
impl Permission for LibraryWrite {
    const NAME: &'static str = "library:write";
}

async fn me(principal: Principal) -> HttpResponse {
    HttpResponse::Ok().json(principal)
}

async fn write(principal: Require<LibraryWrite>) -> HttpResponse {
    HttpResponse::Ok().json(principal.into_inner())
}

async fn optional(OptionalPrincipal(principal): OptionalPrincipal) -> String {
    principal.map_or_else(|| "anonymous".to_owned(), |p| p.owner_id().to_owned())
}

async fn std_option(principal: Option<Principal>) -> String {
    principal.map_or_else(|| "anonymous".to_owned(), |p| p.owner_id().to_owned())
}

async fn result(principal: Result<Principal, AuthError>) -> String {
    match principal {
        Ok(p) => p.owner_id().to_owned(),
        Err(e) => format!(
            "refused: {}",
            e.error().map_or("unconfigured", |e| e.reason())
        ),
    }
}

/// `?` on a `VerifyError` renders it with the default realm.
async fn needs_admin(principal: Principal) -> Result<String, VerifyError> {
    principal.require("admin")?;
    Ok("admin".to_owned())
}

/// Behind the middleware: the principal it put in the extensions.
async fn from_middleware(principal: Option<web::ReqData<Principal>>) -> String {
    principal.map_or_else(|| "anonymous".to_owned(), |p| p.owner_id().to_owned())
}

/// Behind the middleware, extracting again: no second verify.
async fn twice(first: Principal, second: Require<LibraryWrite>) -> String {
    assert_eq!(first.key_id(), second.key_id());
    first.owner_id().to_owned()
}

fn extractor_app(
    gate: &Keygate,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(web::Data::new(gate.clone()))
        .route("/me", web::get().to(me))
        .route("/write", web::get().to(write))
        .route("/optional", web::get().to(optional))
        .route("/std-option", web::get().to(std_option))
        .route("/result", web::get().to(result))
        .route("/needs-admin", web::get().to(needs_admin))
}

/// No app-level gate: everything behind the middleware must work from it alone.
fn middleware_app(
    gate: &Keygate,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .service(
            web::scope("/required")
                .wrap(Authenticate::required(gate.clone()))
                .route("", web::get().to(from_middleware))
                .route("/me", web::get().to(me)),
        )
        .service(
            web::scope("/optional")
                .wrap(Authenticate::optional(gate.clone()))
                .route("", web::get().to(from_middleware))
                .route("/extract", web::get().to(optional))
                .route("/me", web::get().to(me)),
        )
        .service(
            web::scope("/write")
                .wrap(Authenticate::required(gate.clone()).permission("library:write"))
                .route("", web::get().to(from_middleware))
                .route("/twice", web::get().to(twice)),
        )
        .service(
            web::scope("/optional-write")
                .wrap(Authenticate::optional(gate.clone()).permission("library:write"))
                .route("", web::get().to(from_middleware)),
        )
}

// ---------------------------------------------------------------------------------------
// The mapping table through the extractors

#[test]
fn no_credentials_is_401_with_a_bare_challenge() {
    run(async {
        let fx = fixture();
        let app = test::init_service(extractor_app(&fx.gate)).await;
        send(&app, get("/me").to_request())
            .await
            .assert_row(401, Some(BARE), BODY_UNAUTHORIZED);
        // Another scheme is not bearer credentials either.
        let basic = get("/me").insert_header((AUTHORIZATION, "Basic dXNlcjpwYXNz"));
        send(&app, basic.to_request())
            .await
            .assert_row(401, Some(BARE), BODY_UNAUTHORIZED);
        send(&app, get("/write").to_request())
            .await
            .assert_row(401, Some(BARE), BODY_UNAUTHORIZED);
        assert_eq!(fx.gets(), 0);
    });
}

#[test]
fn two_authorization_headers_are_400_even_when_both_are_valid() {
    run(async {
        let fx = fixture();
        let (_, key) = fx.mint("alice").await;
        let app = test::init_service(extractor_app(&fx.gate)).await;
        let req = get("/me")
            .append_header((AUTHORIZATION, format!("Bearer {key}")))
            .append_header((AUTHORIZATION, format!("Bearer {key}")));
        send(&app, req.to_request()).await.assert_row(
            400,
            Some(INVALID_REQUEST),
            BODY_INVALID_REQUEST,
        );
        assert_eq!(fx.gets(), 0, "refused before any store read");
        // One of them alone is fine.
        assert_eq!(
            send(&app, bearer(get("/me"), &key).to_request())
                .await
                .status,
            200
        );
    });
}

#[test]
fn unreadable_bearer_headers_are_400() {
    run(async {
        let fx = fixture();
        let app = test::init_service(extractor_app(&fx.gate)).await;
        let oversize = format!("Bearer {}", "a".repeat(keygate::http::MAX_HEADER_LEN));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("no token", b"Bearer".to_vec()),
            ("token with a space", b"Bearer abc def".to_vec()),
            ("oversize", oversize.into_bytes()),
            ("tab", b"Bearer\tabc".to_vec()),
            ("non-ASCII", "Bearer t\u{f3}k".as_bytes().to_vec()),
        ];
        for (what, value) in cases {
            let value = actix_web::http::header::HeaderValue::from_bytes(&value).unwrap();
            let req = get("/me").insert_header((AUTHORIZATION, value));
            let reply = send(&app, req.to_request()).await;
            assert_eq!(reply.status, 400, "{what}");
            reply.assert_row(400, Some(INVALID_REQUEST), BODY_INVALID_REQUEST);
        }
        assert_eq!(fx.gets(), 0);
    });
}

#[test]
fn every_bad_key_is_one_401_invalid_token() {
    run(async {
        let fx = fixture();
        let (_, valid) = fx.mint("alice").await;
        let (revoked_id, revoked) = fx.mint("alice").await;
        fx.gate.revoke(revoked_id).await.unwrap();
        let (_, expiring) = fx
            .mint_with(NewKey::new("short", "alice").expires_in(TimeDelta::hours(1)))
            .await;
        let (_, inactive_owner) = fx.mint("mallory").await;
        let (_, unknown_owner) = fx.mint("ghost").await;
        // Same prefix and pepper, but minted into another store: the id is unknown here.
        let other = Keygate::builder(MemoryStore::new(), pepper())
            .build()
            .unwrap();
        let unknown = other
            .mint(NewKey::new("elsewhere", "alice"))
            .await
            .unwrap()
            .key
            .expose()
            .to_owned();
        // A typo: the checksum no longer matches.
        let mut typo = valid.clone();
        let last = typo.pop().unwrap();
        typo.push(if last == 'a' { 'b' } else { 'a' });
        fx.clock.advance(TimeDelta::hours(2));

        let app = test::init_service(extractor_app(&fx.gate)).await;
        let cases = [
            (Rejection::Malformed, "key_not-a-key".to_owned()),
            (Rejection::JwtDisabled, "eyJh.eyJp.c2ln".to_owned()),
            (Rejection::WrongPrefix, valid.replacen("key_", "abs_", 1)),
            (Rejection::BadChecksum, typo),
            (Rejection::UnknownKey, unknown),
            (Rejection::Expired, expiring),
            (Rejection::Inactive, revoked),
            (Rejection::OwnerInactive, inactive_owner),
            (Rejection::OwnerUnknown, unknown_owner),
        ];
        for (what, key) in cases {
            // The branch really reached: the gate itself gives this reason.
            let direct = fx.gate.verify(&key).await.unwrap_err();
            assert_eq!(direct.rejection(), Some(what), "{direct:?}");
            for uri in ["/me", "/write", "/optional"] {
                let reply = send(&app, bearer(get(uri), &key).to_request()).await;
                assert_eq!(reply.status, 401, "{what:?} at {uri}");
                reply.assert_row(401, Some(INVALID_TOKEN), BODY_INVALID_TOKEN);
            }
        }
        // The valid key still works after all that.
        let reply = send(&app, bearer(get("/me"), &valid).to_request()).await;
        assert_eq!(reply.status, 200);
    });
}

#[test]
fn a_valid_key_lacking_a_permission_is_403_insufficient_scope() {
    run(async {
        let fx = fixture();
        let (_, reader) = fx.mint("alice").await;
        // bob may write, but this key is scoped down to reading.
        let (_, scoped) = fx
            .mint_with(NewKey::new("read only", "bob").scopes(["library:read"]))
            .await;
        let (_, writer) = fx.mint("bob").await;
        let app = test::init_service(extractor_app(&fx.gate)).await;
        for key in [&reader, &scoped] {
            send(&app, bearer(get("/write"), key).to_request())
                .await
                .assert_row(403, Some(INSUFFICIENT_WRITE), BODY_INSUFFICIENT);
            // Without a permission requirement, the same key is fine.
            assert_eq!(
                send(&app, bearer(get("/me"), key).to_request())
                    .await
                    .status,
                200
            );
        }
        let reply = send(&app, bearer(get("/write"), &writer).to_request()).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["userId"], "bob");
    });
}

#[test]
fn a_verify_error_on_its_own_renders_with_the_default_realm() {
    run(async {
        let fx = fixture();
        let (_, reader) = fx.mint("alice").await;
        let (_, admin) = fx.mint("admin").await;
        let app = test::init_service(extractor_app(&fx.gate)).await;
        send(&app, bearer(get("/needs-admin"), &reader).to_request())
            .await
            .assert_row(
                403,
                Some(r#"Bearer realm="api", error="insufficient_scope", scope="admin""#),
                BODY_INSUFFICIENT,
            );
        let reply = send(&app, bearer(get("/needs-admin"), &admin).to_request()).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "admin"));
    });
}

#[test]
fn an_unavailable_store_is_503_with_retry_after_never_401() {
    run(async {
        let fx = fixture();
        let (_, key) = fx.mint("alice").await;
        let app = test::init_service(extractor_app(&fx.gate)).await;
        fx.store_down(true);
        for uri in ["/me", "/write", "/optional"] {
            send(&app, bearer(get(uri), &key).to_request())
                .await
                .assert_row(503, None, BODY_UNAVAILABLE);
        }
        fx.store_down(false);
        assert_eq!(
            send(&app, bearer(get("/me"), &key).to_request())
                .await
                .status,
            200
        );
    });
}

#[test]
fn an_unavailable_directory_is_503_too() {
    run(async {
        let fx = fixture();
        let (_, key) = fx.mint("flaky").await;
        let app = test::init_service(extractor_app(&fx.gate)).await;
        send(&app, bearer(get("/me"), &key).to_request())
            .await
            .assert_row(503, None, BODY_UNAVAILABLE);
    });
}

#[test]
fn a_valid_key_is_200_with_the_principal() {
    run(async {
        let fx = fixture();
        let (id, key) = fx.mint("alice").await;
        let app = test::init_service(extractor_app(&fx.gate)).await;
        let reply = send(&app, bearer(get("/me"), &key).to_request()).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.www_authenticate, None);
        let body = reply.json();
        assert_eq!(body["keyId"], id.to_string());
        assert_eq!(body["userId"], "alice");
        assert_eq!(body["keyName"], "alice's key");
        assert_eq!(body["permissions"], json!(["library:read"]));
        assert!(!reply.body.contains(&key), "no secret in the principal");
    });
}

#[test]
fn the_scheme_is_case_insensitive_and_spaces_may_repeat() {
    run(async {
        let fx = fixture();
        let (_, key) = fx.mint("alice").await;
        let app = test::init_service(extractor_app(&fx.gate)).await;
        for value in [
            format!("bearer {key}"),
            format!("BEARER {key}"),
            format!("Bearer    {key}"),
            format!("bEaReR  {key}"),
        ] {
            let req = get("/me").insert_header((AUTHORIZATION, value.clone()));
            let reply = send(&app, req.to_request()).await;
            assert_eq!(reply.status, 200, "{value:?}: {reply:?}");
            assert_eq!(reply.json()["userId"], "alice");
        }
    });
}

#[test]
fn optional_principal_is_none_only_without_credentials() {
    run(async {
        let fx = fixture();
        let (_, key) = fx.mint("alice").await;
        let (revoked_id, revoked) = fx.mint("alice").await;
        fx.gate.revoke(revoked_id).await.unwrap();
        let app = test::init_service(extractor_app(&fx.gate)).await;

        let reply = send(&app, get("/optional").to_request()).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "anonymous"));
        let reply = send(&app, bearer(get("/optional"), &key).to_request()).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "alice"));
        send(&app, bearer(get("/optional"), &revoked).to_request())
            .await
            .assert_row(401, Some(INVALID_TOKEN), BODY_INVALID_TOKEN);
        send(&app, bearer(get("/optional"), "").to_request())
            .await
            .assert_row(400, Some(INVALID_REQUEST), BODY_INVALID_REQUEST);
        fx.store_down(true);
        send(&app, bearer(get("/optional"), &key).to_request())
            .await
            .assert_row(503, None, BODY_UNAVAILABLE);
    });
}

/// What the module docs say of `Option<Principal>`: it works, but swallows every refusal.
#[test]
fn std_option_principal_swallows_bad_keys_into_none() {
    run(async {
        let fx = fixture();
        let (_, key) = fx.mint("alice").await;
        let (revoked_id, revoked) = fx.mint("alice").await;
        fx.gate.revoke(revoked_id).await.unwrap();
        let app = test::init_service(extractor_app(&fx.gate)).await;

        let reply = send(&app, bearer(get("/std-option"), &key).to_request()).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "alice"));
        for req in [
            get("/std-option"),
            bearer(get("/std-option"), &revoked),
            bearer(get("/std-option"), "not-a-key"),
        ] {
            let reply = send(&app, req.to_request()).await;
            assert_eq!((reply.status, reply.body.as_str()), (200, "anonymous"));
        }
        fx.store_down(true);
        let reply = send(&app, bearer(get("/std-option"), &key).to_request()).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "anonymous"));
    });
}

#[test]
fn result_principal_hands_the_refusal_to_the_handler() {
    run(async {
        let fx = fixture();
        let (revoked_id, revoked) = fx.mint("alice").await;
        fx.gate.revoke(revoked_id).await.unwrap();
        let app = test::init_service(extractor_app(&fx.gate)).await;
        let reply = send(&app, bearer(get("/result"), &revoked).to_request()).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "refused: inactive")
        );
        let reply = send(&app, get("/result").to_request()).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "refused: missing_credentials")
        );
    });
}

#[test]
fn no_keygate_configured_is_500_never_200() {
    run(async {
        let fx = fixture();
        let (_, key) = fx.mint("alice").await;
        let app = test::init_service(
            App::new()
                .route("/me", web::get().to(me))
                .route("/optional", web::get().to(optional))
                .route("/std-option", web::get().to(std_option))
                .route("/write", web::get().to(write)),
        )
        .await;
        for uri in ["/me", "/optional", "/write"] {
            for req in [get(uri), bearer(get(uri), &key)] {
                let reply = send(&app, req.to_request()).await;
                assert_eq!(reply.status, 500, "{uri}: {reply:?}");
                assert_eq!(reply.www_authenticate, None);
                assert_eq!(reply.json()["error"], "server_error");
            }
        }
        // The swallowing std Option even hides this: one more reason to avoid it.
        let reply = send(&app, bearer(get("/std-option"), &key).to_request()).await;
        assert_eq!(reply.body, "anonymous");
    });
}

#[test]
fn a_plain_keygate_in_app_data_works_too() {
    run(async {
        let fx = fixture();
        let (_, key) = fx.mint("alice").await;
        let app = test::init_service(
            App::new()
                .app_data(fx.gate.clone())
                .route("/me", web::get().to(me)),
        )
        .await;
        assert_eq!(
            send(&app, bearer(get("/me"), &key).to_request())
                .await
                .status,
            200
        );
        send(&app, get("/me").to_request())
            .await
            .assert_row(401, Some(BARE), BODY_UNAUTHORIZED);
    });
}

#[test]
fn the_principal_is_verified_once_per_request() {
    run(async {
        let fx = fixture();
        let (_, key) = fx.mint("bob").await;
        let app =
            test::init_service(extractor_app(&fx.gate).route("/twice", web::get().to(twice))).await;
        let before = fx.gets();
        let reply = send(&app, bearer(get("/twice"), &key).to_request()).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "bob"));
        assert_eq!(fx.gets() - before, 1);
    });
}

// ---------------------------------------------------------------------------------------
// The middleware

#[test]
fn required_middleware_answers_every_row_and_hands_on_the_principal() {
    run(async {
        let fx = fixture();
        let (_, key) = fx.mint("alice").await;
        let (revoked_id, revoked) = fx.mint("alice").await;
        fx.gate.revoke(revoked_id).await.unwrap();
        let app = test::init_service(middleware_app(&fx.gate)).await;

        send(&app, get("/required").to_request()).await.assert_row(
            401,
            Some(BARE),
            BODY_UNAUTHORIZED,
        );
        let two = get("/required")
            .append_header((AUTHORIZATION, format!("Bearer {key}")))
            .append_header((AUTHORIZATION, "Bearer other"));
        send(&app, two.to_request()).await.assert_row(
            400,
            Some(INVALID_REQUEST),
            BODY_INVALID_REQUEST,
        );
        send(&app, bearer(get("/required"), "").to_request())
            .await
            .assert_row(400, Some(INVALID_REQUEST), BODY_INVALID_REQUEST);
        send(&app, bearer(get("/required"), &revoked).to_request())
            .await
            .assert_row(401, Some(INVALID_TOKEN), BODY_INVALID_TOKEN);

        let reply = send(&app, bearer(get("/required"), &key).to_request()).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "alice"));
        // The extractor behind it uses the middleware's principal (no app-level gate here).
        let before = fx.gets();
        let reply = send(&app, bearer(get("/required/me"), &key).to_request()).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.json()["userId"], "alice");
        assert_eq!(fx.gets() - before, 1);

        fx.store_down(true);
        send(&app, bearer(get("/required"), &key).to_request())
            .await
            .assert_row(503, None, BODY_UNAVAILABLE);
    });
}

#[test]
fn optional_middleware_lets_anonymous_requests_through_but_not_bad_keys() {
    run(async {
        let fx = fixture();
        let (_, key) = fx.mint("alice").await;
        let (revoked_id, revoked) = fx.mint("alice").await;
        fx.gate.revoke(revoked_id).await.unwrap();
        let app = test::init_service(middleware_app(&fx.gate)).await;

        let reply = send(&app, get("/optional").to_request()).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "anonymous"));
        let reply = send(&app, bearer(get("/optional"), &key).to_request()).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "alice"));
        send(&app, bearer(get("/optional"), &revoked).to_request())
            .await
            .assert_row(401, Some(INVALID_TOKEN), BODY_INVALID_TOKEN);
        send(&app, bearer(get("/optional"), "").to_request())
            .await
            .assert_row(400, Some(INVALID_REQUEST), BODY_INVALID_REQUEST);

        // Extractors behind it find the gate through the middleware: anonymous is None for
        // OptionalPrincipal and 401 (not 500) for Principal.
        let reply = send(&app, get("/optional/extract").to_request()).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "anonymous"));
        send(&app, get("/optional/me").to_request())
            .await
            .assert_row(401, Some(BARE), BODY_UNAUTHORIZED);

        fx.store_down(true);
        send(&app, bearer(get("/optional"), &key).to_request())
            .await
            .assert_row(503, None, BODY_UNAVAILABLE);
    });
}

#[test]
fn middleware_permission_is_403_insufficient_scope() {
    run(async {
        let fx = fixture();
        let (_, reader) = fx.mint("alice").await;
        let (_, writer) = fx.mint("bob").await;
        let app = test::init_service(middleware_app(&fx.gate)).await;

        send(&app, bearer(get("/write"), &reader).to_request())
            .await
            .assert_row(403, Some(INSUFFICIENT_WRITE), BODY_INSUFFICIENT);
        send(&app, get("/write").to_request())
            .await
            .assert_row(401, Some(BARE), BODY_UNAUTHORIZED);
        let reply = send(&app, bearer(get("/write"), &writer).to_request()).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "bob"));
        // Principal and Require behind the middleware: one store read in all.
        let before = fx.gets();
        let reply = send(&app, bearer(get("/write/twice"), &writer).to_request()).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "bob"));
        assert_eq!(fx.gets() - before, 1);

        // Optional with a permission: anonymous passes, a key must have it.
        let reply = send(&app, get("/optional-write").to_request()).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "anonymous"));
        send(&app, bearer(get("/optional-write"), &reader).to_request())
            .await
            .assert_row(403, Some(INSUFFICIENT_WRITE), BODY_INSUFFICIENT);
        let reply = send(&app, bearer(get("/optional-write"), &writer).to_request()).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "bob"));
    });
}

// ---------------------------------------------------------------------------------------
// The admin scope

/// The admin scope with no app-level gate, plus a route to try keys on.
fn admin_app(
    gate: &Keygate,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let api = AdminApi::new(gate.clone());
    App::new()
        .service(admin_scope("/api/api-keys", api))
        .service(
            web::scope("/me")
                .wrap(Authenticate::required(gate.clone()))
                .route("", web::get().to(me)),
        )
}

fn as_admin(req: TestRequest, admin: &str) -> TestRequest {
    bearer(req, admin)
}

fn post_json(uri: &str, body: Value) -> TestRequest {
    TestRequest::post()
        .uri(uri)
        .insert_header((CONTENT_TYPE, "application/json"))
        .set_payload(body.to_string())
}

fn patch_json(uri: &str, body: Value) -> TestRequest {
    TestRequest::patch()
        .uri(uri)
        .insert_header((CONTENT_TYPE, "application/json"))
        .set_payload(body.to_string())
}

#[test]
fn admin_create_returns_the_plaintext_once_and_list_and_get_never_do() {
    run(async {
        let fx = fixture();
        let (_, admin) = fx.mint("admin").await;
        let app = test::init_service(admin_app(&fx.gate)).await;

        // Audiobookshelf's path, no trailing slash.
        let reply = send(
            &app,
            as_admin(
                post_json(
                    "/api/api-keys",
                    json!({"name": "Backup Script", "userId": "alice", "expiresIn": 3600}),
                ),
                &admin,
            )
            .to_request(),
        )
        .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.content_type.as_deref(), Some("application/json"));
        let created = reply.json()["apiKey"].clone();
        let plaintext = created["apiKey"].as_str().unwrap().to_owned();
        assert!(plaintext.starts_with("key_"), "{plaintext}");
        assert_eq!(created["name"], "Backup Script");
        assert_eq!(created["userId"], "alice");
        assert_eq!(created["createdByUserId"], "admin");
        assert_eq!(created["isActive"], true);
        assert!(created["expiresAt"].is_string());
        let id: KeyId = created["id"].as_str().unwrap().parse().unwrap();

        // The new key works, for alice.
        let reply = send(&app, bearer(get("/me"), &plaintext).to_request()).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.json()["keyId"], id.to_string());

        // And with a trailing slash too.
        let reply = send(
            &app,
            as_admin(
                post_json("/api/api-keys/", json!({"name": "Second", "userId": "bob"})),
                &admin,
            )
            .to_request(),
        )
        .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let second = reply.json()["apiKey"]["apiKey"]
            .as_str()
            .unwrap()
            .to_owned();

        for uri in ["/api/api-keys", "/api/api-keys/"] {
            let reply = send(&app, as_admin(get(uri), &admin).to_request()).await;
            assert_eq!(reply.status, 200, "{uri}: {reply:?}");
            let keys = reply.json()["apiKeys"].as_array().unwrap().clone();
            assert_eq!(keys.len(), 3, "{uri}"); // the admin's own, alice's, bob's
            assert!(keys.iter().any(|k| k["id"] == id.to_string()));
            assert!(keys.iter().all(|k| k.get("apiKey").is_none()));
            assert!(!reply.body.contains(&plaintext) && !reply.body.contains(&second));
        }
        // The raw query string reaches the list.
        let reply = send(
            &app,
            as_admin(get("/api/api-keys?userId=alice"), &admin).to_request(),
        )
        .await;
        let keys = reply.json()["apiKeys"].as_array().unwrap().clone();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0]["id"], id.to_string());
        let reply = send(
            &app,
            as_admin(get("/api/api-keys?limit=0"), &admin).to_request(),
        )
        .await;
        assert_eq!(reply.status, 400);

        let reply = send(
            &app,
            as_admin(get(&format!("/api/api-keys/{id}")), &admin).to_request(),
        )
        .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.json()["apiKey"]["id"], id.to_string());
        assert_eq!(reply.json()["apiKey"]["name"], "Backup Script");
        assert!(reply.json()["apiKey"].get("apiKey").is_none());
        assert!(!reply.body.contains(&plaintext));

        // What the store holds.
        let record = fx.gate.get(id).await.unwrap().unwrap();
        assert_eq!(
            (record.name.as_str(), record.owner.as_str()),
            ("Backup Script", "alice")
        );
        assert_eq!(record.created_by.as_deref(), Some("admin"));
        assert_eq!(
            fx.gate.list(ListQuery::new()).await.unwrap().records.len(),
            3
        );
    });
}

#[test]
fn admin_patch_deactivates_and_refuses_unknown_users() {
    run(async {
        let fx = fixture();
        let (_, admin) = fx.mint("admin").await;
        let (id, key) = fx.mint("alice").await;
        let app = test::init_service(admin_app(&fx.gate)).await;
        let uri = format!("/api/api-keys/{id}");
        assert_eq!(
            send(&app, bearer(get("/me"), &key).to_request())
                .await
                .status,
            200
        );

        let reply = send(
            &app,
            as_admin(patch_json(&uri, json!({"isActive": false})), &admin).to_request(),
        )
        .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.json()["apiKey"]["isActive"], false);
        assert!(!fx.gate.get(id).await.unwrap().unwrap().active);
        send(&app, bearer(get("/me"), &key).to_request())
            .await
            .assert_row(401, Some(INVALID_TOKEN), BODY_INVALID_TOKEN);

        let reply = send(
            &app,
            as_admin(patch_json(&uri, json!({"userId": "nobody"})), &admin).to_request(),
        )
        .await;
        assert_eq!(reply.status, 400, "{reply:?}");
        assert_eq!(reply.json()["error"], "invalid_request");
        assert_eq!(fx.gate.get(id).await.unwrap().unwrap().owner, "alice");

        let reply = send(
            &app,
            as_admin(
                patch_json(&uri, json!({"isActive": true, "userId": "bob"})),
                &admin,
            )
            .to_request(),
        )
        .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let reply = send(&app, bearer(get("/me"), &key).to_request()).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["userId"], "bob");
    });
}

#[test]
fn admin_delete_then_404() {
    run(async {
        let fx = fixture();
        let (_, admin) = fx.mint("admin").await;
        let (id, key) = fx.mint("alice").await;
        let app = test::init_service(admin_app(&fx.gate)).await;
        let uri = format!("/api/api-keys/{id}");

        let reply = send(
            &app,
            as_admin(TestRequest::delete().uri(&uri), &admin).to_request(),
        )
        .await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "OK"));
        assert!(reply.content_type.unwrap().starts_with("text/plain"));
        assert!(fx.gate.get(id).await.unwrap().is_none());
        send(&app, bearer(get("/me"), &key).to_request())
            .await
            .assert_row(401, Some(INVALID_TOKEN), BODY_INVALID_TOKEN);

        let reply = send(
            &app,
            as_admin(TestRequest::delete().uri(&uri), &admin).to_request(),
        )
        .await;
        assert_eq!(reply.status, 404, "{reply:?}");
        let reply = send(&app, as_admin(get(&uri), &admin).to_request()).await;
        assert_eq!(reply.status, 404, "{reply:?}");
        assert_eq!(reply.json()["error"], "not_found");
    });
}

#[test]
fn admin_rotate_with_a_grace_period() {
    run(async {
        let fx = fixture();
        let (_, admin) = fx.mint("admin").await;
        let (id, old) = fx.mint("alice").await;
        let app = test::init_service(admin_app(&fx.gate)).await;

        let reply = send(
            &app,
            as_admin(
                post_json(
                    &format!("/api/api-keys/{id}/rotate"),
                    json!({"gracePeriod": 60}),
                ),
                &admin,
            )
            .to_request(),
        )
        .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let body = reply.json();
        let new = body["apiKey"]["apiKey"].as_str().unwrap().to_owned();
        let new_id: KeyId = body["apiKey"]["id"].as_str().unwrap().parse().unwrap();
        assert_ne!(new_id, id);
        assert_eq!(body["apiKey"]["userId"], "alice");
        assert_eq!(body["previous"]["id"], id.to_string());
        assert!(body["previous"].get("apiKey").is_none());

        // The store: the old record now expires at the end of the grace period.
        let previous = fx.gate.get(id).await.unwrap().unwrap();
        let left = previous.expires_at.unwrap() - fx.clock_now();
        assert!(
            left > TimeDelta::seconds(55) && left <= TimeDelta::seconds(60),
            "{left}"
        );
        assert!(fx.gate.get(new_id).await.unwrap().is_some());

        for key in [&old, &new] {
            assert_eq!(
                send(&app, bearer(get("/me"), key).to_request())
                    .await
                    .status,
                200
            );
        }
        fx.clock.advance(TimeDelta::seconds(61));
        send(&app, bearer(get("/me"), &old).to_request())
            .await
            .assert_row(401, Some(INVALID_TOKEN), BODY_INVALID_TOKEN);
        assert_eq!(
            send(&app, bearer(get("/me"), &new).to_request())
                .await
                .status,
            200
        );
    });
}

impl Fx {
    fn clock_now(&self) -> DateTime<Utc> {
        use keygate::Clock;
        self.clock.now()
    }
}

#[test]
fn admin_refuses_non_admins_bad_json_and_unknown_ids() {
    run(async {
        let fx = fixture();
        let (_, admin) = fx.mint("admin").await;
        let (id, reader) = fx.mint("alice").await;
        let app = test::init_service(admin_app(&fx.gate)).await;

        // No credentials: the scope verifies with its own gate (none registered on the app).
        send(&app, get("/api/api-keys").to_request())
            .await
            .assert_row(401, Some(BARE), BODY_UNAUTHORIZED);

        // A valid key that is not an admin's.
        let forbidden = [
            get("/api/api-keys"),
            post_json("/api/api-keys", json!({"name": "x", "userId": "alice"})),
            get(&format!("/api/api-keys/{id}")),
            patch_json(&format!("/api/api-keys/{id}"), json!({"isActive": false})),
            TestRequest::delete().uri(&format!("/api/api-keys/{id}")),
            post_json(&format!("/api/api-keys/{id}/rotate"), json!({})),
        ];
        for req in forbidden {
            let reply = send(&app, bearer(req, &reader).to_request()).await;
            assert_eq!(reply.status, 403, "{reply:?}");
            assert_eq!(reply.json()["error"], "insufficient_scope");
        }
        let record = fx.gate.get(id).await.unwrap().unwrap();
        assert!(record.active, "nothing changed");
        assert_eq!(
            fx.gate.list(ListQuery::new()).await.unwrap().records.len(),
            2
        );

        // Bad JSON.
        let bad = TestRequest::post()
            .uri("/api/api-keys")
            .insert_header((CONTENT_TYPE, "application/json"))
            .set_payload("{not json");
        let reply = send(&app, as_admin(bad, &admin).to_request()).await;
        assert_eq!(reply.status, 400, "{reply:?}");
        assert_eq!(reply.json()["error"], "invalid_request");
        let reply = send(
            &app,
            as_admin(
                post_json("/api/api-keys", json!({"name": "x", "userId": "nobody"})),
                &admin,
            )
            .to_request(),
        )
        .await;
        assert_eq!(reply.status, 400, "unknown user: {reply:?}");
        assert_eq!(
            fx.gate.list(ListQuery::new()).await.unwrap().records.len(),
            2
        );

        // Unknown and unparseable ids.
        let unknown = KeyId::random();
        for uri in [
            format!("/api/api-keys/{unknown}"),
            "/api/api-keys/not-an-id".to_owned(),
        ] {
            let reply = send(&app, as_admin(get(&uri), &admin).to_request()).await;
            assert_eq!(reply.status, 404, "{uri}: {reply:?}");
            let reply = send(
                &app,
                as_admin(patch_json(&uri, json!({"isActive": false})), &admin).to_request(),
            )
            .await;
            assert_eq!(reply.status, 404, "{uri}: {reply:?}");
            let reply = send(
                &app,
                as_admin(post_json(&format!("{uri}/rotate"), json!({})), &admin).to_request(),
            )
            .await;
            assert_eq!(reply.status, 404, "{uri}: {reply:?}");
        }
    });
}

#[test]
fn admin_store_unavailable_is_503() {
    run(async {
        let fx = fixture();
        let (_, admin) = fx.mint("admin").await;
        let app = test::init_service(admin_app(&fx.gate)).await;
        // Verifying the caller works, listing fails: the admin API's own 503.
        fx.store.list_down.store(true, Ordering::SeqCst);
        let reply = send(&app, as_admin(get("/api/api-keys"), &admin).to_request()).await;
        assert_eq!(reply.status, 503, "{reply:?}");
        assert_eq!(reply.retry_after.as_deref(), Some("5"));
        assert_eq!(reply.www_authenticate, None);
        assert_eq!(reply.json()["error"], "temporarily_unavailable");
        // Verifying the caller fails: the mapping table's 503.
        fx.store_down(true);
        send(&app, as_admin(get("/api/api-keys"), &admin).to_request())
            .await
            .assert_row(503, None, BODY_UNAVAILABLE);
    });
}

#[test]
fn admin_escalation_is_403_insufficient_scope_and_writes_nothing() {
    run(async {
        let fx = fixture();
        // The admin's key scoped to key management only.
        let (scoped_id, scoped) = fx
            .mint_with(NewKey::new("keys only", "admin").scopes(["admin"]))
            .await;
        let (bob_id, _) = fx.mint("bob").await;
        let app = test::init_service(admin_app(&fx.gate)).await;
        let reply = send(&app, bearer(get("/api/api-keys"), &scoped).to_request()).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        fx.gate.flush().await.unwrap();
        let before = fx.gate.list(ListQuery::new()).await.unwrap().records;

        let escalations = [
            (
                post_json("/api/api-keys", json!({"name": "x", "userId": "admin"})),
                "wider_permissions",
            ),
            (
                post_json(
                    "/api/api-keys",
                    json!({"name": "x", "userId": "bob", "scopes": ["library:read"]}),
                ),
                "owner_out_of_reach",
            ),
            (
                patch_json(
                    &format!("/api/api-keys/{scoped_id}"),
                    json!({"scopes": null}),
                ),
                "wider_permissions",
            ),
            (
                patch_json(
                    &format!("/api/api-keys/{bob_id}"),
                    json!({"userId": "admin"}),
                ),
                "owner_out_of_reach",
            ),
            (
                post_json(&format!("/api/api-keys/{bob_id}/rotate"), json!({})),
                "owner_out_of_reach",
            ),
        ];
        for (req, reason) in escalations {
            let reply = send(&app, bearer(req, &scoped).to_request()).await;
            assert_eq!(reply.status, 403, "{reply:?}");
            assert_eq!(
                reply.www_authenticate.as_deref(),
                Some(format!(r#"Bearer realm="{REALM}", error="insufficient_scope""#).as_str())
            );
            assert_eq!(reply.json()["error"], "insufficient_scope");
            assert_eq!(reply.json()["reason"], reason, "{reply:?}");
        }
        fx.gate.flush().await.unwrap();
        assert_eq!(
            fx.gate.list(ListQuery::new()).await.unwrap().records,
            before
        );

        // The same calls from the admin's unscoped key are within its reach.
        let (_, admin) = fx.mint("admin").await;
        let reply = send(
            &app,
            as_admin(
                post_json(
                    "/api/api-keys",
                    json!({"name": "x", "userId": "bob", "scopes": ["library:read"]}),
                ),
                &admin,
            )
            .to_request(),
        )
        .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let reply = send(
            &app,
            as_admin(
                patch_json(
                    &format!("/api/api-keys/{scoped_id}"),
                    json!({"scopes": null}),
                ),
                &admin,
            )
            .to_request(),
        )
        .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.json()["apiKey"]["scopes"], Value::Null);
    });
}

// ---------------------------------------------------------------------------------------
// The gate's realm for handler errors, /me, the route table, unknown body fields

/// `?` on a `VerifyError`, made an `AuthError` on the way (`From`).
async fn needs_admin_as_auth_error(principal: Principal) -> Result<String, AuthError> {
    principal.require("admin")?;
    Ok("admin".to_owned())
}

#[test]
fn a_verify_error_from_a_handler_names_the_gates_realm_behind_the_middleware() {
    run(async {
        let fx = fixture();
        let (_, reader) = fx.mint("alice").await;
        let (_, admin) = fx.mint("admin").await;
        // The realm "test" is not the default "api".
        let want = format!(r#"Bearer realm="{REALM}", error="insufficient_scope", scope="admin""#);
        let app = test::init_service(
            App::new()
                .wrap(Authenticate::optional(fx.gate.clone()))
                .route("/needs-admin", web::get().to(needs_admin))
                .route("/auth-error", web::get().to(needs_admin_as_auth_error)),
        )
        .await;
        for path in ["/needs-admin", "/auth-error"] {
            send(&app, bearer(get(path), &reader).to_request())
                .await
                .assert_row(403, Some(&want), BODY_INSUFFICIENT);
            let reply = send(&app, bearer(get(path), &admin).to_request()).await;
            assert_eq!(
                (reply.status, reply.body.as_str()),
                (200, "admin"),
                "{path}"
            );
            assert_eq!(reply.www_authenticate, None);
        }
    });
}

#[test]
fn me_lists_permissions_as_an_array_also_for_all() {
    run(async {
        // No directory: every owner holds every permission.
        let gate = Keygate::builder(MemoryStore::new(), pepper())
            .build()
            .unwrap();
        let key = gate.mint(NewKey::new("k", "anyone")).await.unwrap().key;
        let app = test::init_service(
            App::new()
                .app_data(web::Data::new(gate.clone()))
                .route("/me", web::get().to(me)),
        )
        .await;
        let me = send(&app, bearer(get("/me"), key.expose()).to_request())
            .await
            .json();
        assert_eq!(me["permissions"], json!(["*"]));
        assert_eq!(me["allPermissions"], json!(true));

        let fx = fixture();
        let (_, reader) = fx.mint("alice").await;
        let app = test::init_service(extractor_app(&fx.gate)).await;
        let me = send(&app, bearer(get("/me"), &reader).to_request())
            .await
            .json();
        assert_eq!(me["permissions"], json!(["library:read"]));
        assert_eq!(me["allPermissions"], json!(false));
    });
}

#[test]
fn the_admin_route_table_answers_404_and_405_itself() {
    run(async {
        let fx = fixture();
        let (_, admin) = fx.mint("admin").await;
        let (id, _) = fx.mint("alice").await;
        let app = test::init_service(admin_app(&fx.gate)).await;
        let item = format!("/api/api-keys/{id}");
        let rotate = format!("{item}/rotate");
        use actix_web::http::Method;
        let cases = [
            (Method::PUT, "/api/api-keys".to_owned(), Some("GET, POST")),
            (
                Method::DELETE,
                "/api/api-keys/".to_owned(),
                Some("GET, POST"),
            ),
            (Method::POST, item.clone(), Some("GET, PATCH, DELETE")),
            (Method::GET, rotate.clone(), Some("POST")),
            (Method::GET, format!("{rotate}/x"), None),
            (Method::GET, format!("{item}/nope"), None),
        ];
        for (method, uri, allow) in cases {
            for with_key in [true, false] {
                let mut again = TestRequest::default().method(method.clone()).uri(&uri);
                if with_key {
                    again = as_admin(again, &admin);
                }
                let response = test::call_service(&app, again.to_request()).await;
                let got_allow = response
                    .headers()
                    .get("allow")
                    .map(|v| v.to_str().unwrap().to_owned());
                let status = response.status().as_u16();
                let body: Value = test::read_body_json(response).await;
                let (want_status, code) = match allow {
                    Some(_) => (405, "method_not_allowed"),
                    None => (404, "not_found"),
                };
                assert_eq!(status, want_status, "{method} {uri}: {body}");
                assert_eq!(got_allow.as_deref(), allow);
                assert_eq!(body["error"], code);
                assert!(body["error_description"].is_string());
            }
        }
        assert_eq!(
            fx.gate.list(ListQuery::new()).await.unwrap().records.len(),
            2
        );
    });
}

#[test]
fn admin_bodies_with_unknown_fields_are_400_naming_the_field() {
    run(async {
        let fx = fixture();
        let (_, admin) = fx.mint("admin").await;
        let (id, _) = fx.mint("alice").await;
        let app = test::init_service(admin_app(&fx.gate)).await;
        let before = fx.gate.list(ListQuery::new()).await.unwrap().records;
        let item = format!("/api/api-keys/{id}");
        let cases = [
            (
                post_json(
                    "/api/api-keys",
                    json!({"name": "forever", "userId": "alice", "expires_in": 60}),
                ),
                "expires_in",
            ),
            (patch_json(&item, json!({"is_active": false})), "is_active"),
            (
                post_json(&format!("{item}/rotate"), json!({"grace": 60})),
                "grace",
            ),
        ];
        for (req, field) in cases {
            let reply = send(&app, as_admin(req, &admin).to_request()).await;
            assert_eq!(reply.status, 400, "{reply:?}");
            let body = reply.json();
            assert_eq!(body["error"], "invalid_request");
            let description = body["error_description"].as_str().unwrap();
            assert!(description.contains(field), "{description}");
        }
        assert_eq!(
            fx.gate.list(ListQuery::new()).await.unwrap().records,
            before
        );
    });
}

/// An anonymous request through an optional middleware is one refusal, not one per
/// extractor.
#[test]
fn an_anonymous_request_behind_the_optional_middleware_counts_once() {
    run(async {
        let fx = fixture();
        let app = test::init_service(middleware_app(&fx.gate)).await;
        let before = fx.gate.refusal_counts().get("missing_credentials");
        let reply = send(&app, get("/optional/extract").to_request()).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "anonymous"));
        assert_eq!(
            fx.gate.refusal_counts().get("missing_credentials") - before,
            1
        );
    });
}
