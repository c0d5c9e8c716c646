//! `keygate serve`: the routes in-process (through `keygate_cli::serve`'s router), and the
//! real binary as a process (bootstrap, configuration precedence, SIGTERM flushing).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, Utc};
use keygate::admin::AdminApi;
use keygate::http::{ProxyHeader, TrustedProxies};
use keygate::{
    ChangeListener, KeyId, KeyPatch, KeyRecord, KeyStore, Keygate, ListQuery, MemoryStore, NewKey,
    Pepper, PepperFingerprint, Rejection, StoreError, VerifyError,
};
use keygate_cli::serve::{self, App, Config, Overrides};
use tower::ServiceExt;

use support::{http, post_json, Process, PEPPER};

fn gate_over(store: impl KeyStore) -> Keygate {
    Keygate::builder(store, Pepper::new(1, PEPPER).unwrap())
        .realm("keygate")
        .build()
        .unwrap()
}

/// A gate over a memory store, the app around it, and the store to look into.
fn app() -> (App, Keygate, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    let gate = gate_over(Arc::clone(&store));
    let app = App::new(gate.clone(), store.clone());
    (app, gate, store)
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn call(app: &App, method: &str, uri: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app
        .router()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

// ---------------------------------------------------------------------------------------
// /auth, in-process

#[tokio::test]
async fn auth_admits_a_valid_key_with_the_identity_headers() {
    let (app, gate, _) = app();
    let scoped = gate
        .mint(NewKey::new("reader", "user-42").scopes(["library:read", "podcast:read"]))
        .await
        .unwrap();
    let auth = bearer(scoped.key.expose());
    // Any method: nginx forwards the original one, Traefik and Caddy send GET.
    for method in ["GET", "POST", "DELETE", "HEAD"] {
        let reply = call(&app, method, "/auth", &[("authorization", &auth)]).await;
        assert_eq!(reply.status, StatusCode::OK, "{method}");
        assert_eq!(
            reply.header("x-keygate-key-id"),
            Some(scoped.record.id.to_string().as_str())
        );
        assert_eq!(reply.header("x-keygate-owner"), Some("user-42"));
        assert_eq!(
            reply.header("x-keygate-scopes"),
            Some("library:read podcast:read")
        );
        assert!(reply.header("www-authenticate").is_none());
        assert!(reply.body.is_empty());
    }

    // A key without scopes carries all its owner's permissions: `*`.
    let unscoped = gate.mint(NewKey::new("all", "josé %")).await.unwrap();
    let reply = call(
        &app,
        "GET",
        "/auth",
        &[("authorization", &bearer(unscoped.key.expose()))],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-keygate-scopes"), Some("*"));
    // Not visible ASCII, and `%`, are percent-encoded; the value reads back exactly.
    assert_eq!(reply.header("x-keygate-owner"), Some("jos%C3%A9%20%25"));
}

#[tokio::test]
async fn auth_requires_the_scopes_the_location_names() {
    let (app, gate, _) = app();
    let reader = gate
        .mint(NewKey::new("reader", "user-1").scopes(["library:read"]))
        .await
        .unwrap();
    let auth = bearer(reader.key.expose());
    let ok = call(
        &app,
        "GET",
        "/auth?scope=library:read",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    let encoded = call(
        &app,
        "GET",
        "/auth?scope=library%3Aread",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(encoded.status, StatusCode::OK);

    for uri in [
        "/auth?scope=library:write",
        "/auth?scope=library:read&scope=library:write",
    ] {
        let refused = call(&app, "GET", uri, &[("authorization", &auth)]).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{uri}");
        let expected = gate.http_outcome(&VerifyError::InsufficientScope {
            required: "library:write".into(),
        });
        assert_eq!(
            refused.header("www-authenticate"),
            expected.www_authenticate.as_deref()
        );
        assert_eq!(
            refused.header("www-authenticate"),
            Some(r#"Bearer realm="keygate", error="insufficient_scope", scope="library:write""#)
        );
        assert_eq!(refused.body, expected.body);
        assert!(refused.header("x-keygate-key-id").is_none());
    }
}

#[tokio::test]
async fn auth_refuses_as_the_library_does() {
    let (app, gate, store) = app();
    let revoked = gate.mint(NewKey::new("old", "user-1")).await.unwrap();
    gate.revoke(revoked.record.id).await.unwrap();
    let valid = gate.mint(NewKey::new("ok", "user-1")).await.unwrap();
    let mut typo = valid.key.expose().to_owned();
    let last = typo.pop().unwrap();
    typo.push(if last == 'a' { 'b' } else { 'a' });

    let cases: Vec<(Vec<(&str, String)>, VerifyError)> = vec![
        (vec![], VerifyError::MissingCredentials),
        (
            vec![("authorization", "Basic dXNlcjpwYXNz".into())],
            VerifyError::MissingCredentials,
        ),
        (
            vec![("authorization", bearer(&typo))],
            VerifyError::InvalidKey(Rejection::BadChecksum),
        ),
        (
            vec![("authorization", bearer("key_nothing_like_a_key"))],
            VerifyError::InvalidKey(Rejection::Malformed),
        ),
        (
            vec![("authorization", bearer(revoked.key.expose()))],
            VerifyError::InvalidKey(Rejection::Inactive),
        ),
        (
            vec![("authorization", "Bearer a b".into())],
            VerifyError::InvalidRequest(keygate::RequestError::MalformedBearer),
        ),
        (
            vec![
                ("authorization", bearer(valid.key.expose())),
                ("authorization", bearer(valid.key.expose())),
            ],
            VerifyError::InvalidRequest(keygate::RequestError::MultipleHeaders),
        ),
    ];
    let before = store.list(&ListQuery::new()).await.unwrap();
    for (headers, error) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let reply = call(&app, "GET", "/auth", &headers).await;
        let expected = gate.http_outcome(&error);
        assert_eq!(reply.status.as_u16(), expected.status, "{error:?}");
        assert_eq!(
            reply.header("www-authenticate"),
            expected.www_authenticate.as_deref(),
            "{error:?}"
        );
        assert!(reply
            .header("www-authenticate")
            .unwrap()
            .starts_with(r#"Bearer realm="keygate""#));
        assert_eq!(reply.body, expected.body, "{error:?}");
        for name in ["x-keygate-key-id", "x-keygate-owner", "x-keygate-scopes"] {
            assert!(reply.header(name).is_none(), "{error:?}: {name}");
        }
    }
    // Refusals leave the store as it was: nothing marked used, nothing changed.
    gate.flush().await.unwrap();
    let after = store.list(&ListQuery::new()).await.unwrap();
    assert_eq!(before, after);
}

/// As [`call`], over a connection from `peer` (what `serve` tells the router).
async fn call_from(app: &App, peer: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::builder().method("GET").uri("/auth");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(Body::empty()).unwrap();
    let peer: SocketAddr = peer.parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(peer));
    let response = app.router().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// A gate trusting the proxy at 127.0.0.1 (as `keygate serve` does by default), its app,
/// and a key allowed only from 198.51.100.0/24.
async fn restricted_app(header: ProxyHeader) -> (App, Keygate, String) {
    let store = Arc::new(MemoryStore::new());
    let gate = Keygate::builder(Arc::clone(&store), Pepper::new(1, PEPPER).unwrap())
        .realm("keygate")
        .trusted_proxies(TrustedProxies::new(["127.0.0.0/8".parse().unwrap()]).header(header))
        .build()
        .unwrap();
    let app = App::new(gate.clone(), store);
    let key = gate
        .mint(NewKey::new("office", "user-1").allowed_cidrs(["198.51.100.0/24".parse().unwrap()]))
        .await
        .unwrap();
    (app, gate, key.key.expose().to_owned())
}

fn assert_refused(reply: &Reply, error: &str) {
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    assert!(
        reply.body.contains(&format!(r#""error":"{error}""#)),
        "{}",
        reply.body
    );
    for name in ["x-keygate-key-id", "x-keygate-owner", "x-keygate-scopes"] {
        assert!(reply.header(name).is_none(), "{name}");
    }
}

#[tokio::test]
async fn auth_checks_network_restrictions_against_the_forwarded_client() {
    let (app, _, key) = restricted_app(ProxyHeader::XForwardedFor).await;
    let auth = bearer(&key);
    // Through the trusted proxy, from an allowed client: admitted.
    let reply = call_from(
        &app,
        "127.0.0.1:50000",
        &[
            ("authorization", &auth),
            ("x-forwarded-for", "198.51.100.7"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.header("x-keygate-owner"), Some("user-1"));
    // A client's own entry to the left of what the proxy appended changes nothing.
    let reply = call_from(
        &app,
        "127.0.0.1:50000",
        &[
            ("authorization", &auth),
            ("x-forwarded-for", "198.51.100.7, 203.0.113.9"),
        ],
    )
    .await;
    assert_refused(&reply, "network_not_allowed");
    // Through the trusted proxy, from a client outside: refused.
    let reply = call_from(
        &app,
        "127.0.0.1:50000",
        &[("authorization", &auth), ("x-forwarded-for", "203.0.113.9")],
    )
    .await;
    assert_refused(&reply, "network_not_allowed");
    // The trusted proxy forwarded no address: unknown, refused (never the proxy's own).
    let reply = call_from(&app, "127.0.0.1:50000", &[("authorization", &auth)]).await;
    assert_refused(&reply, "network_not_allowed");
    // No peer known at all (served without connect info): refused.
    let reply = call(
        &app,
        "GET",
        "/auth",
        &[
            ("authorization", &auth),
            ("x-forwarded-for", "198.51.100.7"),
        ],
    )
    .await;
    assert_refused(&reply, "network_not_allowed");
}

#[tokio::test]
async fn auth_from_an_untrusted_peer_knows_no_client_address() {
    let (app, _, key) = restricted_app(ProxyHeader::XForwardedFor).await;
    let auth = bearer(&key);
    // The very request that passes through the trusted proxy, from a peer that is not
    // one: the header is not believed, and the peer is a proxy, not the client.
    let reply = call_from(
        &app,
        "192.0.2.10:50000",
        &[
            ("authorization", &auth),
            ("x-forwarded-for", "198.51.100.7"),
        ],
    )
    .await;
    assert_refused(&reply, "network_not_allowed");
    // Even when the untrusted peer is itself inside the allowed network: /auth is always
    // called by a proxy, so its own address says nothing about the client.
    for headers in [
        vec![("authorization", auth.as_str())],
        vec![
            ("authorization", auth.as_str()),
            ("x-forwarded-for", "198.51.100.7"),
        ],
        vec![
            ("authorization", auth.as_str()),
            ("forwarded", "for=198.51.100.7"),
        ],
    ] {
        let reply = call_from(&app, "198.51.100.20:50000", &headers).await;
        assert_refused(&reply, "network_not_allowed");
    }
    // An unrestricted key still passes from anywhere.
    let (app, gate, _) = restricted_app(ProxyHeader::XForwardedFor).await;
    let open = gate.mint(NewKey::new("open", "user-2")).await.unwrap();
    let reply = call_from(
        &app,
        "192.0.2.10:50000",
        &[("authorization", &bearer(open.key.expose()))],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn auth_reads_the_header_the_proxies_are_configured_with() {
    let (app, _, key) = restricted_app(ProxyHeader::Forwarded).await;
    let auth = bearer(&key);
    let reply = call_from(
        &app,
        "[::ffff:127.0.0.1]:50000",
        &[
            ("authorization", &auth),
            ("forwarded", "for=198.51.100.7;proto=https"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    // X-Forwarded-For is not the configured header: ignored, so the address is unknown.
    let reply = call_from(
        &app,
        "127.0.0.1:50000",
        &[
            ("authorization", &auth),
            ("x-forwarded-for", "198.51.100.7"),
        ],
    )
    .await;
    assert_refused(&reply, "network_not_allowed");
}

#[tokio::test]
async fn auth_checks_origin_restrictions_against_the_forwarded_origin() {
    let (app, gate, _) = restricted_app(ProxyHeader::XForwardedFor).await;
    let key = gate
        .mint(
            NewKey::new("web app", "user-1")
                .allowed_origins(["https://app.example.com".parse().unwrap()]),
        )
        .await
        .unwrap();
    let auth = bearer(key.key.expose());
    // The proxy passes the original request's Origin; the peer does not matter here.
    for peer in ["127.0.0.1:50000", "192.0.2.10:50000"] {
        let reply = call_from(
            &app,
            peer,
            &[
                ("authorization", &auth),
                ("origin", "https://app.example.com"),
            ],
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{peer}: {}", reply.body);
        let reply = call_from(
            &app,
            peer,
            &[
                ("authorization", &auth),
                ("origin", "https://evil.example.net"),
            ],
        )
        .await;
        assert_refused(&reply, "origin_not_allowed");
    }
    // Both restrictions: the network is checked against the forwarded client.
    let both = gate
        .mint(
            NewKey::new("both", "user-1")
                .allowed_cidrs(["198.51.100.0/24".parse().unwrap()])
                .allowed_origins(["https://app.example.com".parse().unwrap()]),
        )
        .await
        .unwrap();
    let auth = bearer(both.key.expose());
    let origin = ("origin", "https://app.example.com");
    let forwarded = ("x-forwarded-for", "198.51.100.7");
    let reply = call_from(
        &app,
        "127.0.0.1:1",
        &[("authorization", &auth), origin, forwarded],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = call_from(
        &app,
        "192.0.2.10:1",
        &[("authorization", &auth), origin, forwarded],
    )
    .await;
    assert_refused(&reply, "network_not_allowed");
}

#[tokio::test]
async fn auth_with_a_wrong_query_fails_closed() {
    let (app, gate, _) = app();
    let key = gate.mint(NewKey::new("ok", "user-1")).await.unwrap();
    let auth = bearer(key.key.expose());
    for uri in [
        "/auth?scop=library:read",
        "/auth?scope=",
        "/auth?scope=a%20b",
        "/auth?scope=%ff",
    ] {
        let reply = call(&app, "GET", uri, &[("authorization", &auth)]).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{uri}");
        assert!(reply.header("x-keygate-key-id").is_none(), "{uri}");
        assert!(reply.body.contains("server_error"), "{uri}");
    }
}

/// A store that fails every call, or hangs on every call.
struct BrokenStore {
    hang: bool,
}

impl BrokenStore {
    async fn fail<T>(&self) -> Result<T, StoreError> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        Err(StoreError::backend(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "the store is down",
        )))
    }
}

#[async_trait]
impl KeyStore for BrokenStore {
    async fn insert(&self, _: KeyRecord) -> Result<(), StoreError> {
        self.fail().await
    }
    async fn get(&self, _: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.fail().await
    }
    async fn update(&self, _: KeyId, _: &KeyPatch) -> Result<Option<KeyRecord>, StoreError> {
        self.fail().await
    }
    async fn delete(&self, _: KeyId) -> Result<bool, StoreError> {
        self.fail().await
    }
    async fn list(&self, _: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        self.fail().await
    }
    async fn record_last_used(&self, _: &[(KeyId, DateTime<Utc>)]) -> Result<(), StoreError> {
        self.fail().await
    }
    async fn subscribe(&self, _: std::sync::Weak<dyn ChangeListener>) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn remember_pepper(
        &self,
        _: u32,
        _: PepperFingerprint,
    ) -> Result<Option<PepperFingerprint>, StoreError> {
        self.fail().await
    }
}

/// A well-formed key of the gate's shape, minted elsewhere: it passes the checksum, so
/// the store must be asked.
async fn foreign_key() -> String {
    let other = gate_over(MemoryStore::new());
    other
        .mint(NewKey::new("elsewhere", "user-1"))
        .await
        .unwrap()
        .key
        .expose()
        .to_owned()
}

#[tokio::test]
async fn a_store_that_is_down_is_503_never_401() {
    let store: Arc<dyn KeyStore> = Arc::new(BrokenStore { hang: false });
    let gate = gate_over(Arc::clone(&store));
    let app = App::new(gate.clone(), store);
    let key = foreign_key().await;
    let reply = call(&app, "GET", "/auth", &[("authorization", &bearer(&key))]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("retry-after"), Some("5"));
    assert!(reply.header("www-authenticate").is_none());
    assert!(reply.header("x-keygate-key-id").is_none());
    assert!(reply.body.contains("temporarily_unavailable"));

    let ready = call(&app, "GET", "/readyz", &[]).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.header("retry-after"), Some("5"));
    // Liveness does not depend on the store.
    let live = call(&app, "GET", "/healthz", &[]).await;
    assert_eq!(live.status, StatusCode::OK);
    assert_eq!(live.body, "ok");
}

#[tokio::test(start_paused = true)]
async fn readiness_gives_up_on_a_hanging_store() {
    let store: Arc<dyn KeyStore> = Arc::new(BrokenStore { hang: true });
    let gate = gate_over(Arc::clone(&store));
    let app = App::new(gate, store).store_timeout(Duration::from_millis(300));
    let started = tokio::time::Instant::now();
    let ready = call(&app, "GET", "/readyz", &[]).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(started.elapsed(), Duration::from_millis(300));
}

#[tokio::test]
async fn health_and_readiness_answer_when_the_store_does() {
    let (app, _, _) = app();
    let live = call(&app, "GET", "/healthz", &[]).await;
    assert_eq!((live.status, live.body.as_str()), (StatusCode::OK, "ok"));
    let ready = call(&app, "GET", "/readyz", &[]).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body, r#"{"status":"ready"}"#);
    let missing = call(&app, "GET", "/nope", &[]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("not_found"));
}

// ---------------------------------------------------------------------------------------
// bootstrap and the admin API, in-process

#[tokio::test]
async fn bootstrap_mints_one_admin_key_on_an_empty_store_only() {
    let (app, gate, store) = app();
    let mut out = Vec::new();
    let id = serve::bootstrap(&gate, "admin", false, &mut out)
        .await
        .unwrap()
        .expect("an empty store gets a key");
    let out = String::from_utf8(out).unwrap();
    let key = out
        .strip_prefix("admin API key: ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .expect("one line: admin API key: <key>");
    assert!(key.starts_with("key_"), "{out}");
    let principal = gate.verify(key).await.unwrap();
    assert_eq!(principal.key_id(), id);
    assert_eq!(principal.owner_id(), "admin");
    assert!(AdminApi::new(gate.clone()).is_admin(&principal));

    // The admin API is served and takes the key.
    let listed = call(
        &app,
        "GET",
        "/api/api-keys",
        &[("authorization", &bearer(key))],
    )
    .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    assert!(listed.body.contains(&id.to_string()));

    // The store holds a key now: nothing is minted or printed again.
    let mut again = Vec::new();
    assert_eq!(
        serve::bootstrap(&gate, "admin", false, &mut again)
            .await
            .unwrap(),
        None
    );
    assert!(again.is_empty());
    assert_eq!(store.list(&ListQuery::new()).await.unwrap().len(), 1);
}

/// A store whose first two `list` calls wait for each other: two servers that both find
/// the store empty before either mints (the race of two servers starting at once).
struct ListTogether {
    inner: Arc<dyn KeyStore>,
    barrier: tokio::sync::Barrier,
    lists: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl KeyStore for ListTogether {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.inner.insert(record).await
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
        let listed = self.inner.list(query).await;
        if self.lists.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
            self.barrier.wait().await;
        }
        listed
    }
    async fn record_last_used(&self, batch: &[(KeyId, DateTime<Utc>)]) -> Result<(), StoreError> {
        self.inner.record_last_used(batch).await
    }
    async fn remember_pepper(
        &self,
        version: u32,
        fingerprint: PepperFingerprint,
    ) -> Result<Option<PepperFingerprint>, StoreError> {
        self.inner.remember_pepper(version, fingerprint).await
    }
}

/// Two servers' bootstraps on the empty `store`, both listing it before either mints: one
/// key between them.
async fn servers_starting_together_mint_one_first_key(store: Arc<dyn KeyStore>) {
    let together = Arc::new(ListTogether {
        inner: Arc::clone(&store),
        barrier: tokio::sync::Barrier::new(2),
        lists: Default::default(),
    });
    let (a, b) = (gate_over(Arc::clone(&together)), gate_over(together));
    let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
    // Both list the empty store before either mints (the barrier), then both try.
    let (minted_a, minted_b) = tokio::join!(
        serve::bootstrap(&a, "admin", false, &mut out_a),
        serve::bootstrap(&b, "admin", false, &mut out_b)
    );
    let minted: Vec<KeyId> = [minted_a.unwrap(), minted_b.unwrap()]
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(
        minted,
        [serve::BOOTSTRAP_KEY_ID],
        "exactly one server minted"
    );
    let printed: Vec<String> = [out_a, out_b]
        .into_iter()
        .map(|out| String::from_utf8(out).unwrap())
        .filter(|out| !out.is_empty())
        .collect();
    assert_eq!(printed.len(), 1, "exactly one server printed: {printed:?}");
    let key = printed[0]
        .strip_prefix("admin API key: ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .unwrap();
    // The store holds that one key, and it works on both servers.
    let records = store.list(&ListQuery::new()).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].id, serve::BOOTSTRAP_KEY_ID);
    assert_eq!(
        a.verify(key).await.unwrap().key_id(),
        serve::BOOTSTRAP_KEY_ID
    );
    assert_eq!(
        b.verify(key).await.unwrap().key_id(),
        serve::BOOTSTRAP_KEY_ID
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_together_mint_one_first_key_in_memory_and_sqlite() {
    servers_starting_together_mint_one_first_key(Arc::new(MemoryStore::new())).await;
    let db = support::sqlite_temp_path();
    let store = keygate::open_store(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    servers_starting_together_mint_one_first_key(store).await;
    support::remove_sqlite(&db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_together_mint_one_first_key_on_postgres() {
    let Some(base) = support::postgres_url() else {
        return;
    };
    let (url, name, pool) = fresh_postgres(&base).await;
    let store = keygate::open_store(&url).await.unwrap();
    servers_starting_together_mint_one_first_key(store).await;
    drop_postgres(&pool, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_together_mint_one_first_key_on_redis() {
    let Some(base) = support::redis_url() else {
        return;
    };
    let store = keygate::open_store(&fresh_redis(&base, 12).await)
        .await
        .unwrap();
    servers_starting_together_mint_one_first_key(store).await;
}

#[tokio::test]
async fn the_admin_api_refuses_keys_that_are_not_admin() {
    let (app, gate, _) = app();
    let plain = gate.mint(NewKey::new("script", "user-1")).await.unwrap();
    let reply = call(
        &app,
        "GET",
        "/api/api-keys",
        &[("authorization", &bearer(plain.key.expose()))],
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.body.contains("not_admin"));
    let anonymous = call(&app, "GET", "/api/api-keys", &[]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_admin_page_is_served_and_calls_the_admin_api_beside_it() {
    let (app, _, _) = app();
    let page = call(&app, "GET", "/admin/", &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.header("content-security-policy").is_some());
    // Relative to the page, so it works under a proxy's path prefix too.
    assert!(page.body.contains("../api/api-keys"), "{}", page.body);
    let bare = call(&app, "GET", "/admin", &[]).await;
    assert!(bare.status.is_redirection(), "{}", bare.status);
}

// ---------------------------------------------------------------------------------------
// configuration precedence

fn resolve(overrides: &Overrides, env: &[(&str, &str)], file: &str) -> Config {
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Config::resolve(
        overrides,
        &|name| env.get(name).cloned(),
        Some((Path::new("keygate.toml"), file)),
    )
    .unwrap()
}

#[test]
fn flags_beat_the_environment_which_beats_the_file() {
    let file = r#"
        addr = "127.0.0.1:1111"
        db = "sqlite://file.db"
        prefix = "file"
        realm = "from-file"
        pepper_file = "/run/secrets/file-pepper"
        pepper_version = 3
        log_format = "text"
        bootstrap = false
        cache_ttl_secs = 9
        [users.admin]
        permissions = ["*"]
        [users.alice]
        permissions = ["library:read"]
        active = false
    "#;
    // The file alone.
    let config = resolve(&Overrides::default(), &[], file);
    assert_eq!(config.addr, "127.0.0.1:1111");
    assert_eq!(config.db, "sqlite://file.db");
    assert_eq!(config.prefix, "file");
    assert_eq!(config.realm, "from-file");
    assert_eq!(
        config.pepper,
        serve::config::PepperSource::File {
            path: "/run/secrets/file-pepper".into(),
            version: 3
        }
    );
    assert!(!config.bootstrap);
    assert_eq!(config.cache_ttl, Duration::from_secs(9));
    let users = config.users.as_ref().unwrap();
    assert!(!users["alice"].active && users["admin"].active);

    // The environment overrides the file, key by key.
    let env = [
        ("KEYGATE_ADDR", "127.0.0.1:2222"),
        ("KEYGATE_DB", "sqlite://env.db"),
        ("KEYGATE_PEPPER_FILE", "/run/secrets/env-pepper"),
        ("KEYGATE_LOG_FORMAT", "json"),
        ("KEYGATE_BOOTSTRAP", "true"),
    ];
    let config = resolve(&Overrides::default(), &env, file);
    assert_eq!(config.addr, "127.0.0.1:2222");
    assert_eq!(config.db, "sqlite://env.db");
    assert_eq!(config.prefix, "file"); // not in the environment: the file's
    assert_eq!(config.pepper, serve::config::PepperSource::Env);
    assert_eq!(config.log_format, serve::config::LogFormat::Json);
    assert!(config.bootstrap);

    // Flags override both.
    let flags = Overrides::new(Some("postgres://db/keys".into()), Some("flag".into()), None);
    let config = resolve(&flags, &env, file);
    assert_eq!(config.db, "postgres://db/keys");
    assert_eq!(config.prefix, "flag");

    // Nothing at all: the defaults, the CLI's and the example servers'.
    let config = resolve(&Overrides::default(), &[], "");
    assert_eq!(config.addr, "127.0.0.1:3000");
    assert_eq!(config.db, "sqlite://keygate.db");
    assert_eq!(config.prefix, "key");
    assert_eq!(
        config.pepper,
        serve::config::PepperSource::BesideDatabase { version: 1 }
    );
    assert!(config.bootstrap && config.users.is_none());
}

#[test]
fn unknown_file_keys_and_secrets_in_the_file_are_refused() {
    let env = BTreeMap::<String, String>::new();
    for text in [
        "adress = \"127.0.0.1:1\"",
        "pepper = \"a pepper in a config file is a leak\"",
        "[auth]\nuri = \"x\"",
        "[users.a]\npermisions = [\"x\"]",
        "cache_ttl_secs = \"five\"",
    ] {
        let result = Config::resolve(
            &Overrides::default(),
            &|name| env.get(name).cloned(),
            Some((Path::new("keygate.toml"), text)),
        );
        assert!(
            matches!(result, Err(serve::ConfigError::Parse { .. })),
            "{text}: {result:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// usage limits: kept in the store, not in the process

/// With `limits = "store"` (the default), credits and rate limits live in the database
/// `keygate serve` runs over: a restart (or a second node on the same database) neither
/// hands every key a fresh credit count nor a fresh burst. (With `memory`, a restart
/// refills every key's credits.)
#[tokio::test]
async fn store_limits_outlive_a_restart_and_are_shared_by_nodes() {
    use keygate::limits::{CreditPolicy, RateLimit};

    let db = support::sqlite_temp_path();
    let url = format!("sqlite://{}", db.display());
    let config = resolve(
        &Overrides::default(),
        &[("KEYGATE_DB", &url), ("KEYGATE_LIMITS", "store")],
        "",
    );
    let first = serve::open(&config).await.unwrap();
    let metered = first
        .gate()
        .mint(NewKey::new("metered", "user-1").credits(CreditPolicy::new(2)))
        .await
        .unwrap();
    let limited = first
        .gate()
        .mint(
            NewKey::new("limited", "user-1").ratelimits([RateLimit::new("requests", 2, 3_600_000)]),
        )
        .await
        .unwrap();
    let ask = |app: &App, key: &str| {
        let auth = bearer(key);
        let app = app.clone();
        async move { call(&app, "GET", "/auth", &[("authorization", &auth)]).await }
    };
    assert_eq!(
        ask(&first, metered.key.expose()).await.status,
        StatusCode::OK
    );
    assert_eq!(
        ask(&first, limited.key.expose()).await.status,
        StatusCode::OK
    );

    // A second node on the same database, or this one restarted.
    let second = serve::open(&config).await.unwrap();
    assert_eq!(
        ask(&second, metered.key.expose()).await.status,
        StatusCode::OK
    );
    assert_eq!(
        ask(&second, limited.key.expose()).await.status,
        StatusCode::OK
    );
    for app in [&first, &second] {
        let spent = ask(app, metered.key.expose()).await;
        assert_eq!(
            spent.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            spent.body
        );
        assert!(spent.body.contains("credits_exhausted"), "{}", spent.body);
        let limited = ask(app, limited.key.expose()).await;
        assert_eq!(
            limited.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            limited.body
        );
    }
    drop((first, second));
    let _ = std::fs::remove_file(&db);
}

// ---------------------------------------------------------------------------------------
// shutdown, in-process: the last-used times pending at shutdown are written

#[tokio::test]
async fn shutdown_writes_pending_last_used_times() {
    let (app, gate, store) = app();
    let first = gate.mint(NewKey::new("first", "user-1")).await.unwrap();
    let second = gate.mint(NewKey::new("second", "user-1")).await.unwrap();
    drop(gate);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve::serve(
        listener,
        app,
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));
    let ask = |key: String| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            http(&addr, "GET", "/auth", &[("Authorization", &bearer(&key))])
        })
    };
    let last_used = |id| {
        let store = Arc::clone(&store);
        async move { store.get(id).await.unwrap().unwrap().last_used_at }
    };

    // The first accepted key starts a background write at once.
    let reply = ask(first.key.expose().to_owned()).await.unwrap();
    assert_eq!(reply.status, 200);
    for _ in 0..500 {
        if last_used(first.record.id).await.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(last_used(first.record.id).await.is_some());
    // The next one waits for the interval (60 s): queued, not written.
    let reply = ask(second.key.expose().to_owned()).await.unwrap();
    assert_eq!(reply.status, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(last_used(second.record.id).await, None);

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(last_used(second.record.id).await.is_some());
}

// ---------------------------------------------------------------------------------------
// limits = "local-first": decided in process, the last usage sent to the store at shutdown

#[tokio::test]
async fn local_first_limits_reach_the_store_when_the_server_stops() {
    let db = support::sqlite_temp_path();
    let file = |limits: &str| {
        format!(
            "db = \"sqlite://{}\"\nbootstrap = false\nlimits = \"{limits}\"\nlimits_sync_ms = 3600000\n",
            db.display()
        )
    };
    // One server, local-first, syncing hourly: only the shutdown sends its usage.
    let local = serve::open(&resolve(&Overrides::default(), &[], &file("local-first")))
        .await
        .unwrap();
    let gate = local.gate().clone();
    let limit = keygate::limits::RateLimit::new("requests", 3, 3_600_000);
    let issued = gate
        .mint(NewKey::new("script", "user-1").ratelimits([limit]))
        .await
        .unwrap();
    let key = issued.key.expose().to_owned();
    gate.verify(&key).await.unwrap();
    gate.verify(&key).await.unwrap();
    drop(gate);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve::serve(
        listener,
        local,
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    // A server keeping limits in the store sees the two uses: one of three left.
    let exact = serve::open(&resolve(&Overrides::default(), &[], &file("store")))
        .await
        .unwrap();
    exact.gate().verify(&key).await.unwrap();
    let refused = exact.gate().verify(&key).await.unwrap_err();
    assert!(
        matches!(refused, VerifyError::RateLimited(_)),
        "{refused:?}"
    );
    let _ = std::fs::remove_file(&db);
}

// ---------------------------------------------------------------------------------------
// the binary

async fn sqlite_last_used(db: &Path, id: KeyId) -> Option<DateTime<Utc>> {
    let store = keygate::SqliteStore::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    store.get(id).await.unwrap().unwrap().last_used_at
}

#[tokio::test]
async fn the_binary_bootstraps_once_serves_and_flushes_on_sigterm() {
    let db = support::sqlite_temp_path();
    let env = [("KEYGATE_PEPPER", PEPPER)];
    let server = Process::start(&db, &env, &[]);

    // First start, empty store: one line on stdout, the admin key.
    let line = server.stdout.recv_timeout(Duration::from_secs(30)).unwrap();
    let admin_key = line.strip_prefix("admin API key: ").unwrap().to_owned();
    let addr = server.addr.clone();
    let get = |target: &'static str, key: Option<String>| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            let auth = key.map(|k| bearer(&k));
            let headers: Vec<(&str, &str)> = auth
                .as_deref()
                .map(|a| vec![("Authorization", a)])
                .unwrap_or_default();
            http(&addr, "GET", target, &headers)
        })
    };
    assert_eq!(get("/healthz", None).await.unwrap().status, 200);
    assert_eq!(get("/readyz", None).await.unwrap().status, 200);
    let refused = get("/auth", None).await.unwrap();
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.header("www-authenticate"),
        Some(r#"Bearer realm="keygate""#)
    );

    let admin = get("/auth", Some(admin_key.clone())).await.unwrap();
    assert_eq!(admin.status, 200);
    assert_eq!(admin.header("x-keygate-owner"), Some("admin"));
    assert_eq!(admin.header("x-keygate-scopes"), Some("admin"));
    let admin_id: KeyId = admin.header("x-keygate-key-id").unwrap().parse().unwrap();

    // A second key, minted through the admin API.
    let minted = {
        let addr = addr.clone();
        let auth = bearer(&admin_key);
        tokio::task::spawn_blocking(move || {
            let body = r#"{"name":"script","userId":"admin","scopes":["admin"]}"#;
            post_json(&addr, "/api/api-keys", &auth, body)
        })
        .await
        .unwrap()
    };
    let minted: serde_json::Value = serde_json::from_str(&minted).unwrap();
    let second_key = minted["apiKey"]["apiKey"].as_str().unwrap().to_owned();
    let second_id: KeyId = minted["apiKey"]["id"].as_str().unwrap().parse().unwrap();

    // The admin key's use was written at once (the first flush); wait for it so that the
    // second key's use is queued behind the interval.
    for _ in 0..500 {
        if sqlite_last_used(&db, admin_id).await.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(sqlite_last_used(&db, admin_id).await.is_some());
    assert_eq!(get("/auth", Some(second_key)).await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sqlite_last_used(&db, second_id).await, None);

    // SIGTERM: a clean exit, and the pending use written.
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(sqlite_last_used(&db, second_id).await.is_some());

    // Second start against the same store: no new key, nothing on stdout.
    let again = Process::start(&db, &env, &[]);
    let extra = again.stdout.recv_timeout(Duration::from_millis(500));
    assert!(extra.is_err(), "printed again: {extra:?}");
    let status = tokio::task::spawn_blocking(move || again.terminate())
        .await
        .unwrap();
    assert!(status.success());
    support::remove_sqlite(&db);
}

#[test]
fn the_binary_reads_its_file_and_the_environment_overrides_it() {
    let db = support::sqlite_temp_path();
    let file = db.with_extension("toml");
    std::fs::write(
        &file,
        "addr = \"127.0.0.1:1\"\nrealm = \"from-file\"\nbootstrap = false\n",
    )
    .unwrap();
    // KEYGATE_ADDR (port 0) beats the file's unusable port 1; the realm comes from the file.
    let server = Process::start(
        &db,
        &[("KEYGATE_PEPPER", PEPPER)],
        &["--config", file.to_str().unwrap()],
    );
    let refused = http(&server.addr, "GET", "/auth", &[]);
    assert_eq!(
        refused.header("www-authenticate"),
        Some(r#"Bearer realm="from-file""#)
    );
    assert!(server.terminate().success());

    // An unknown key: exit 2, the key named, nothing served.
    std::fs::write(&file, "adress = \"127.0.0.1:0\"\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["serve", "--config", file.to_str().unwrap()])
        .env("KEYGATE_DB", format!("sqlite://{}", db.display()))
        .env("KEYGATE_PEPPER", PEPPER)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown field `adress`"), "{stderr}");
    assert!(output.stdout.is_empty());
    let _ = std::fs::remove_file(&file);
    support::remove_sqlite(&db);
}

#[test]
fn with_a_user_directory_the_first_key_belongs_to_an_admin_user() {
    let db = support::sqlite_temp_path();
    let file = db.with_extension("toml");
    // The bootstrap owner must be an admin in the directory: refused at start otherwise,
    // before anything is minted.
    std::fs::write(&file, "[users.admin]\npermissions = [\"library:read\"]\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["serve", "--config", file.to_str().unwrap()])
        .env("KEYGATE_DB", format!("sqlite://{}", db.display()))
        .env("KEYGATE_PEPPER", PEPPER)
        .env("KEYGATE_ADDR", "127.0.0.1:0")
        .env("KEYGATE_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is not an active admin in [users]"),
        "{stderr}"
    );

    std::fs::write(
        &file,
        "[users.admin]\npermissions = [\"*\"]\n[users.reader]\npermissions = [\"library:read\"]\n",
    )
    .unwrap();
    let server = Process::start(&db, &[], &["--config", file.to_str().unwrap()]);
    let key = server
        .stdout
        .recv_timeout(Duration::from_secs(30))
        .unwrap()
        .strip_prefix("admin API key: ")
        .unwrap()
        .to_owned();
    // Unscoped: the directory, not the key, makes it admin.
    let admin = http(
        &server.addr,
        "GET",
        "/auth",
        &[("Authorization", &bearer(&key))],
    );
    assert_eq!(admin.status, 200);
    assert_eq!(admin.header("x-keygate-scopes"), Some("*"));
    // It can mint for another user of the directory...
    let minted = post_json(
        &server.addr,
        "/api/api-keys",
        &bearer(&key),
        r#"{"name":"reader","userId":"reader"}"#,
    );
    let minted: serde_json::Value = serde_json::from_str(&minted).unwrap();
    let reader = minted["apiKey"]["apiKey"].as_str().unwrap();
    let auth = bearer(reader);
    let allowed = http(
        &server.addr,
        "GET",
        "/auth?scope=library:read",
        &[("Authorization", &auth)],
    );
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.header("x-keygate-owner"), Some("reader"));
    // ...whose keys carry that user's permissions only.
    let refused = http(
        &server.addr,
        "GET",
        "/auth?scope=library:write",
        &[("Authorization", &auth)],
    );
    assert_eq!(refused.status, 403);
    assert!(server.terminate().success());
    let _ = std::fs::remove_file(&file);
    support::remove_sqlite(&db);
}

/// `/leaks/github` exists only with GitHub's public keys configured; then a report signed
/// by GitHub's key revokes the key it names, and an unsigned one is refused.
#[tokio::test]
async fn leak_reports_are_served_when_github_keys_are_configured() {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use keygate::leaks::{GithubKeys, LeakReports};
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

    let (app, gate, store) = app();
    assert_eq!(
        call(&app, "POST", "/leaks/github", &[]).await.status,
        StatusCode::NOT_FOUND
    );

    // GitHub's signing key, and its public key as GitHub publishes it (PEM of the SPKI).
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let mut spki = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    spki.extend_from_slice(pair.public_key().as_ref());
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        STANDARD.encode(spki)
    );
    let document = serde_json::json!({"public_keys": [
        {"key_identifier": "gh1", "key": pem, "is_current": true}
    ]});
    let keys = GithubKeys::from_json(document.to_string().as_bytes()).unwrap();
    let app = app.leak_reports(LeakReports::new(gate.clone(), keys));

    let issued = gate.mint(NewKey::new("leaky", "alice")).await.unwrap();
    let body = serde_json::json!([{
        "token": issued.key.expose(),
        "type": "keygate_api_key",
        "url": "https://github.com/octocat/Hello-World/blob/main/leak.txt",
        "source": "content",
    }])
    .to_string();
    let signature = STANDARD.encode(pair.sign(&rng, body.as_bytes()).unwrap().as_ref());
    let post = |signature: Option<String>| {
        let mut request = Request::post("/leaks/github")
            .header("content-type", "application/json")
            .header("github-public-key-identifier", "gh1");
        if let Some(signature) = signature {
            request = request.header("github-public-key-signature", signature);
        }
        app.router()
            .oneshot(request.body(Body::from(body.clone())).unwrap())
    };

    let refused = post(None).await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(store.get(issued.record.id).await.unwrap().unwrap().active);

    let answer = post(Some(signature)).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let labels: serde_json::Value = serde_json::from_slice(
        &axum::body::to_bytes(answer.into_body(), 1 << 20)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(labels[0]["label"], "true_positive");
    assert_eq!(labels[0]["token_raw"], issued.key.expose());
    assert!(!store.get(issued.record.id).await.unwrap().unwrap().active);
    assert!(gate.verify(issued.key.expose()).await.is_err());
}

// ---------------------------------------------------------------------------------------
// the binary over PostgreSQL and Redis: two servers on one fresh store

/// A fresh PostgreSQL database beside `KEYGATE_TEST_POSTGRES_URL`'s (so the store starts
/// empty): its URL, and a pool on the original database to drop it with.
async fn fresh_postgres(base: &str) -> (String, String, keygate::sqlx::PgPool) {
    let pool = keygate::sqlx::PgPool::connect(base).await.unwrap();
    let name = format!("kg_serve_{}", KeyId::random().as_uuid().simple());
    // The name is ours: `kg_serve_` and hex digits.
    keygate::sqlx::query(keygate::sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name}"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let (url, query) = base.split_once('?').unwrap_or((base, ""));
    let (server, _) = url.rsplit_once('/').unwrap();
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    (format!("{server}/{name}{query}"), name, pool)
}

async fn drop_postgres(pool: &keygate::sqlx::PgPool, name: &str) {
    keygate::sqlx::query(keygate::sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(pool)
    .await
    .unwrap();
}

/// Redis database `db` of `KEYGATE_TEST_REDIS_URL`'s server, emptied: the store starts
/// empty (the other tests use the URL's own database; each test here its own number).
async fn fresh_redis(base: &str, db: u8) -> String {
    let (url, _) = base.split_once('?').unwrap_or((base, ""));
    let server = match url.rsplit_once('/') {
        Some((server, db)) if db.is_empty() || db.bytes().all(|b| b.is_ascii_digit()) => server,
        _ => url,
    };
    let url = format!("{server}/{db}");
    let client = keygate::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = keygate::redis::cmd("FLUSHDB")
        .query_async(&mut conn)
        .await
        .unwrap();
    url
}

/// Two `keygate serve` started at once on the empty store `db`: exactly one prints the
/// first admin key. Then, through the admin API of one: a key is minted, passes `/auth` on
/// both, is revoked, and is refused on both (the other one hears of it through the
/// store's change feed).
async fn two_servers_share_one_store(db: String) {
    let start = |db: String| {
        tokio::task::spawn_blocking(move || {
            let path = support::sqlite_temp_path(); // unused: KEYGATE_DB replaces it
            Process::start(&path, &[("KEYGATE_DB", db.as_str())], &[])
        })
    };
    let (a, b) = (start(db.clone()), start(db));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    // Each decides: it minted, or another one did, or the store already held a key.
    let decided = |event: &serde_json::Value| {
        [
            "empty store: minted the first admin key (shown once, on stdout)",
            "another server minted the first admin key at the same time: it printed it",
            "the store holds keys: no first-start key",
        ]
        .contains(&event["message"].as_str().unwrap_or(""))
    };
    let (a, b) = tokio::task::spawn_blocking(move || {
        a.log_until(decided);
        b.log_until(decided);
        (a, b)
    })
    .await
    .unwrap();
    let (a, b, printed) = tokio::task::spawn_blocking(move || {
        let printed: Vec<String> = [&a, &b]
            .iter()
            .filter_map(|server| server.stdout.recv_timeout(Duration::from_secs(2)).ok())
            .collect();
        (a, b, printed)
    })
    .await
    .unwrap();
    assert_eq!(printed.len(), 1, "exactly one server printed: {printed:?}");
    let admin_key = printed[0]
        .strip_prefix("admin API key: ")
        .unwrap()
        .to_owned();

    let (addr_a, addr_b) = (a.addr.clone(), b.addr.clone());
    let auth = move |addr: String, key: String| {
        tokio::task::spawn_blocking(move || {
            http(&addr, "GET", "/auth", &[("Authorization", &bearer(&key))])
        })
    };
    // The admin key works on both servers.
    for addr in [&addr_a, &addr_b] {
        let answer = auth(addr.clone(), admin_key.clone()).await.unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(
            answer.header("x-keygate-key-id"),
            Some(serve::BOOTSTRAP_KEY_ID.to_string().as_str())
        );
    }
    // Mint through A's admin API; the key passes on both.
    let minted = {
        let (addr, admin) = (addr_a.clone(), bearer(&admin_key));
        tokio::task::spawn_blocking(move || {
            let body = r#"{"name":"script","userId":"admin","scopes":["admin"]}"#;
            post_json(&addr, "/api/api-keys", &admin, body)
        })
        .await
        .unwrap()
    };
    let minted: serde_json::Value = serde_json::from_str(&minted).unwrap();
    let key = minted["apiKey"]["apiKey"].as_str().unwrap().to_owned();
    let id = minted["apiKey"]["id"].as_str().unwrap().to_owned();
    for addr in [&addr_a, &addr_b] {
        let answer = auth(addr.clone(), key.clone()).await.unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.header("x-keygate-key-id"), Some(id.as_str()));
        assert_eq!(answer.header("x-keygate-owner"), Some("admin"));
    }
    // Revoke through A's admin API.
    let revoked = {
        let (addr, admin, id) = (addr_a.clone(), bearer(&admin_key), id.clone());
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let body = r#"{"isActive":false}"#;
            let mut stream = std::net::TcpStream::connect(&addr).unwrap();
            write!(
                stream,
                "PATCH /api/api-keys/{id} HTTP/1.1\r\nHost: keygate\r\nConnection: close\r\n\
                 Authorization: {admin}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        })
        .await
        .unwrap()
    };
    assert!(revoked.starts_with("HTTP/1.1 200"), "{revoked}");
    // A refuses at once; B as soon as the change feed tells it (bounded wait).
    let answer = auth(addr_a.clone(), key.clone()).await.unwrap();
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(
        answer.header("www-authenticate"),
        Some(r#"Bearer realm="keygate", error="invalid_token""#)
    );
    let mut last = None;
    for _ in 0..300 {
        let answer = auth(addr_b.clone(), key.clone()).await.unwrap();
        if answer.status == 401 {
            last = None;
            break;
        }
        last = Some(answer);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(last.is_none(), "B still admits the revoked key: {last:?}");

    for server in [a, b] {
        let status = tokio::task::spawn_blocking(move || server.terminate())
            .await
            .unwrap();
        assert!(status.success(), "{status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_over_postgres_two_servers_one_first_key() {
    let Some(base) = support::postgres_url() else {
        return;
    };
    let (url, name, pool) = fresh_postgres(&base).await;
    two_servers_share_one_store(url).await;
    drop_postgres(&pool, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_over_redis_two_servers_one_first_key() {
    let Some(base) = support::redis_url() else {
        return;
    };
    let url = fresh_redis(&base, 11).await;
    two_servers_share_one_store(url).await;
}
