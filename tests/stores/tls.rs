//! TLS to PostgreSQL and Redis (feature `tls`): the conformance suite and a cross-node
//! revoke over `verify-full` / `rediss://` with a CA generated for the run, a wrong CA
//! refused, a certificate for another host name refused, and no cleartext when TLS was
//! asked for (a plain server on the URL that asked for TLS hears nothing but the TLS
//! request, and the connect fails).
//!
//! The servers come from `.ci/tls.sh` (`eval "$(.ci/tls.sh start)"`): PostgreSQL on port
//! 25432 refusing cleartext over TCP, Redis on 26379 with no cleartext port, each with a
//! certificate for `localhost` and 127.0.0.1 (not 127.0.0.2). Tests that need them are
//! marked `keygate_test_tls` (see `build.rs`); the plain-server tests need no server.

// Test code: a panic is how a test reports a failure.
#![allow(clippy::unwrap_used, clippy::panic, clippy::arithmetic_side_effects)]
#![cfg(all(feature = "tls", feature = "testing"))]

use crate::support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate::sqlx;
use keygate::{
    CacheConfig, CachedStore, KeyId, KeyStore, Keygate, NewKey, Pepper, PostgresConfig,
    PostgresStore, RedisConfig, RedisStore, Rejection, StoreError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn ca() -> String {
    support::tls_setting("KEYGATE_TEST_TLS_CA")
}

fn wrong_ca() -> String {
    support::tls_setting("KEYGATE_TEST_TLS_WRONG_CA")
}

/// The TLS PostgreSQL's URL with `query` appended (`sslmode=…&sslrootcert=…`).
fn postgres(query: &str) -> String {
    let base = support::tls_setting("KEYGATE_TEST_POSTGRES_TLS_URL");
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}{query}")
}

/// `url` with its host replaced by `host` (a name the server certificate does not carry).
fn with_host(url: &str, host: &str) -> String {
    url.replacen("localhost", host, 1)
}

fn redis_url() -> String {
    support::tls_setting("KEYGATE_TEST_REDIS_TLS_URL")
}

fn redis_config(ca: &str) -> RedisConfig {
    RedisConfig::new()
        .namespace(format!(
            "keygate-tls-test:{}:",
            KeyId::random().as_uuid().simple()
        ))
        .tls_root_cert(ca)
}

fn pepper() -> Pepper {
    Pepper::new(111, [43u8; 32]).unwrap()
}

fn gate(store: Arc<dyn KeyStore>) -> Keygate {
    Keygate::builder(store, pepper())
        .prefix("tls")
        .build()
        .unwrap()
}

/// The failure is sqlx's refusal of the TLS session (not a timeout, not a refused
/// connection): `Tls` when the server does not speak TLS; an I/O error carrying rustls's
/// `InvalidCertificate(<reason>)` when the certificate is refused, with `reason` in its
/// text (e.g. `UnknownIssuer`).
fn assert_postgres_tls_refused(opened: Result<PostgresStore, StoreError>, reason: &str) {
    match opened {
        Err(StoreError::Backend(source)) => {
            let error = source
                .downcast_ref::<sqlx::Error>()
                .unwrap_or_else(|| panic!("not a sqlx error: {source}"));
            match error {
                sqlx::Error::Tls(tls) => assert!(
                    tls.to_string().contains(reason),
                    "refused for another reason: {tls}"
                ),
                sqlx::Error::Io(io) => {
                    let inner = format!("{:?}", io.get_ref());
                    assert!(
                        inner.contains("InvalidCertificate") && inner.contains(reason),
                        "refused for another reason: {inner}"
                    );
                }
                other => panic!("not a TLS failure: {other:?}"),
            }
        }
        Err(other) => panic!("not a backend TLS failure: {other:?}"),
        Ok(_) => panic!("connected although the TLS check should have failed"),
    }
}

/// The failure is the driver's, on connect (not a URL problem, not a timeout), for
/// `reason` (in the error's text, e.g. rustls's `UnknownIssuer`).
fn assert_redis_refused(opened: Result<RedisStore, StoreError>, reason: &str) {
    match opened {
        Err(StoreError::Backend(source)) => {
            let error = source
                .downcast_ref::<keygate::redis::RedisError>()
                .unwrap_or_else(|| panic!("not a Redis error: {source}"));
            let text = format!("{error} {error:?}");
            assert!(text.contains(reason), "refused for another reason: {text}");
        }
        Err(other) => panic!("not a backend failure: {other:?}"),
        Ok(_) => panic!("connected although the TLS check should have failed"),
    }
}

/// Mints on `a`, makes `b` serve the key from its cache, revokes on `a`, and waits until
/// `b` refuses it: the change feed carried the revoke (the TTL is far longer).
async fn revoke_reaches_the_other_node(a: &Keygate, b: &Keygate, b_cache: &dyn CacheHits) {
    for i in 0..5 {
        let issued = a
            .mint(NewKey::new(format!("tls node {i}"), "owner"))
            .await
            .unwrap();
        let key = issued.key.expose();
        let mut attempts = 0;
        loop {
            b.verify(key).await.unwrap();
            let hits = b_cache.hits();
            b.verify(key).await.unwrap();
            if b_cache.hits() > hits {
                break;
            }
            attempts += 1;
            assert!(attempts < 100, "b never served the key from its cache");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        a.revoke(issued.record.id).await.unwrap();
        let revoked = Instant::now();
        loop {
            match b.verify(key).await {
                Err(e) if e.rejection() == Some(Rejection::Inactive) => break,
                Ok(_) => {}
                Err(other) => panic!("unexpected refusal: {other:?}"),
            }
            assert!(
                revoked.elapsed() < support::bound(Duration::from_secs(1)),
                "b still accepts a key revoked {:?} ago",
                revoked.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Cache hits of a `CachedStore`, whatever it wraps.
trait CacheHits {
    fn hits(&self) -> u64;
}

impl<S: KeyStore> CacheHits for CachedStore<S> {
    fn hits(&self) -> u64 {
        self.stats().hits
    }
}

// ---------------------------------------------------------------------------------------
// PostgreSQL

async fn pg_connect(url: &str) -> Result<PostgresStore, StoreError> {
    PostgresStore::connect_with(
        url,
        PostgresConfig::new().application_name(support::unique("kg-tls")),
    )
    .await
}

/// Whether the store's connections are encrypted, as the server sees them.
async fn pg_encrypted(store: &PostgresStore) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_tls),
    ignore = "needs the TLS servers: eval \"$(.ci/tls.sh start)\""
)]
async fn postgres_over_verify_full_conforms_and_carries_revokes() {
    let url = postgres(&format!("sslmode=verify-full&sslrootcert={}", ca()));
    let store = pg_connect(&url).await.unwrap();
    assert!(pg_encrypted(&store).await);
    keygate::testing::run_all(Arc::new(store)).await;

    // Two nodes, each a cache following the LISTEN/NOTIFY feed, which connects with the
    // same TLS options.
    let node = || async {
        let cache = Arc::new(CachedStore::new(
            pg_connect(&url).await.unwrap(),
            CacheConfig::new().ttl(Duration::from_secs(300)),
        ));
        assert!(cache.follow_changes().await.unwrap());
        (gate(cache.clone()), cache)
    };
    let (a, _cache_a) = node().await;
    let (b, cache_b) = node().await;
    revoke_reaches_the_other_node(&a, &b, &*cache_b).await;
    // Both feeds' connections, as the server sees them: encrypted.
    let (encrypted, cleartext): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE ssl), count(*) FILTER (WHERE NOT ssl) \
         FROM pg_stat_activity JOIN pg_stat_ssl USING (pid) \
         WHERE application_name LIKE 'kg-tls-%-listener'",
    )
    .fetch_one(pg_connect(&url).await.unwrap().pool())
    .await
    .unwrap();
    assert!(encrypted >= 2 && cleartext == 0, "{encrypted} {cleartext}");
}

#[tokio::test]
#[cfg_attr(
    not(keygate_test_tls),
    ignore = "needs the TLS servers: eval \"$(.ci/tls.sh start)\""
)]
async fn postgres_through_open_store_with_verify_full() {
    let url = postgres(&format!("sslmode=verify-full&sslrootcert={}", ca()));
    let store = keygate::open_store(&url).await.unwrap();
    assert!(store.get(KeyId::random()).await.unwrap().is_none());
    // The same URL with the wrong CA: refused before any query.
    let wrong = postgres(&format!("sslmode=verify-full&sslrootcert={}", wrong_ca()));
    assert!(matches!(
        keygate::open_store(&wrong).await,
        Err(StoreError::Backend(_))
    ));
}

#[tokio::test]
#[cfg_attr(
    not(keygate_test_tls),
    ignore = "needs the TLS servers: eval \"$(.ci/tls.sh start)\""
)]
async fn postgres_refuses_a_certificate_from_another_ca() {
    for mode in ["verify-full", "verify-ca", "require"] {
        // `require` with a CA file is `verify-ca`, as in libpq.
        let url = postgres(&format!("sslmode={mode}&sslrootcert={}", wrong_ca()));
        assert_postgres_tls_refused(pg_connect(&url).await, "UnknownIssuer");
    }
    // Without a CA file the system roots do not know the run's CA either.
    assert_postgres_tls_refused(
        pg_connect(&postgres("sslmode=verify-full")).await,
        "UnknownIssuer",
    );
    // `require` alone encrypts without checking the certificate (as libpq).
    let store = pg_connect(&postgres("sslmode=require")).await.unwrap();
    assert!(pg_encrypted(&store).await);
}

#[tokio::test]
#[cfg_attr(
    not(keygate_test_tls),
    ignore = "needs the TLS servers: eval \"$(.ci/tls.sh start)\""
)]
async fn postgres_verify_full_checks_the_host_name() {
    // 127.0.0.2 reaches the same server, whose certificate names localhost and 127.0.0.1.
    let full = postgres(&format!("sslmode=verify-full&sslrootcert={}", ca()));
    assert_postgres_tls_refused(
        pg_connect(&with_host(&full, "127.0.0.2")).await,
        "NotValidForName",
    );
    assert!(pg_connect(&with_host(&full, "127.0.0.1")).await.is_ok());
    // verify-ca checks the chain only.
    let chain = postgres(&format!("sslmode=verify-ca&sslrootcert={}", ca()));
    let store = pg_connect(&with_host(&chain, "127.0.0.2")).await.unwrap();
    assert!(pg_encrypted(&store).await);
}

#[tokio::test]
#[cfg_attr(
    not(keygate_test_tls),
    ignore = "needs the TLS servers: eval \"$(.ci/tls.sh start)\""
)]
async fn postgres_disable_is_cleartext_and_this_server_refuses_it() {
    // The script's server takes TLS only: a cleartext login is refused by the server (so a
    // silent fallback anywhere in the TLS tests could not pass them).
    let opened = pg_connect(&postgres("sslmode=disable")).await;
    let Err(StoreError::Backend(source)) = opened else {
        panic!("cleartext login accepted: {opened:?}");
    };
    let error = source.downcast_ref::<sqlx::Error>().unwrap();
    assert!(
        error.to_string().contains("no encryption"),
        "refused for another reason: {error}"
    );
}

/// A PostgreSQL server without TLS, as a client sees one: it answers the client's
/// SSLRequest with `N` ("no TLS here") and records everything else the client sends.
async fn plain_postgres() -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let heard = tokio::spawn(async move {
        let mut heard = Vec::new();
        let Ok(Ok((mut socket, _))) =
            tokio::time::timeout(Duration::from_secs(10), listener.accept()).await
        else {
            return heard;
        };
        let mut request = [0u8; 8];
        if socket.read_exact(&mut request).await.is_err() {
            return heard;
        }
        heard.extend_from_slice(&request);
        if request == [0, 0, 0, 8, 4, 210, 22, 47] {
            socket.write_all(b"N").await.unwrap();
        }
        let mut rest = [0u8; 1024];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_secs(2), socket.read(&mut rest)).await
        {
            if n == 0 {
                break;
            }
            heard.extend_from_slice(&rest[..n]);
        }
        heard
    });
    (port, heard)
}

#[tokio::test]
async fn postgres_tls_asked_of_a_plain_server_sends_nothing_in_cleartext() {
    for mode in ["require", "verify-ca", "verify-full"] {
        let (port, heard) = plain_postgres().await;
        let url = format!("postgres://keygate:hunter2@127.0.0.1:{port}/keys?sslmode={mode}");
        let opened = PostgresStore::connect(&url).await;
        assert_postgres_tls_refused(opened, "server does not support TLS");
        // The SSLRequest (length 8, code 80877103), then nothing: no startup message
        // with the user name, no password.
        assert_eq!(
            heard.await.unwrap(),
            [0, 0, 0, 8, 4, 210, 22, 47],
            "{mode}: the client went on in cleartext"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Redis

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_tls),
    ignore = "needs the TLS servers: eval \"$(.ci/tls.sh start)\""
)]
async fn redis_over_tls_conforms_and_carries_revokes() {
    // The server has no cleartext port: every connection below is TLS, the change
    // feed's included.
    let config = redis_config(&ca());
    let store = RedisStore::connect_with(redis_url().as_str(), config.clone())
        .await
        .unwrap();
    keygate::testing::run_all(Arc::new(store)).await;

    let node = || async {
        let cache = Arc::new(CachedStore::new(
            RedisStore::connect_with(redis_url().as_str(), config.clone())
                .await
                .unwrap(),
            CacheConfig::new().ttl(Duration::from_secs(300)),
        ));
        assert!(cache.follow_changes().await.unwrap());
        (gate(cache.clone()), cache)
    };
    let (a, _cache_a) = node().await;
    let (b, cache_b) = node().await;
    revoke_reaches_the_other_node(&a, &b, &*cache_b).await;

    // The namespace's keys go with the test.
    let store = RedisStore::connect_with(redis_url().as_str(), config.clone())
        .await
        .unwrap();
    let mut conn = store.connection();
    let keys: Vec<String> = keygate::redis::cmd("KEYS")
        .arg(format!("{}*", config.namespace))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = keygate::redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

#[tokio::test]
#[cfg_attr(
    not(keygate_test_tls),
    ignore = "needs the TLS servers: eval \"$(.ci/tls.sh start)\""
)]
async fn redis_through_open_store_with_a_ca_in_the_url() {
    let url = redis_url();
    let separator = if url.contains('?') { '&' } else { '?' };
    let store = keygate::open_store(&format!("{url}{separator}sslrootcert={}", ca()))
        .await
        .unwrap();
    assert!(store.get(KeyId::random()).await.unwrap().is_none());
    let wrong = keygate::open_store(&format!("{url}{separator}sslrootcert={}", wrong_ca())).await;
    assert!(matches!(wrong, Err(StoreError::Backend(_))));
    // `#insecure` would skip the certificate check: refused before connecting.
    let insecure = keygate::open_store(&format!("{url}#insecure")).await;
    assert!(matches!(insecure, Err(StoreError::InvalidUrl(_))));
}

#[tokio::test]
#[cfg_attr(
    not(keygate_test_tls),
    ignore = "needs the TLS servers: eval \"$(.ci/tls.sh start)\""
)]
async fn redis_refuses_a_certificate_from_another_ca_or_for_another_host() {
    assert_redis_refused(
        RedisStore::connect_with(redis_url().as_str(), redis_config(&wrong_ca())).await,
        "UnknownIssuer",
    );
    // Without a CA file, the system roots do not know the run's CA.
    assert_redis_refused(
        RedisStore::connect(redis_url().as_str()).await,
        "UnknownIssuer",
    );
    // The right CA, but a host name the certificate does not carry.
    assert_redis_refused(
        RedisStore::connect_with(
            with_host(&redis_url(), "127.0.0.2").as_str(),
            redis_config(&ca()),
        )
        .await,
        "not valid for name",
    );
    assert!(RedisStore::connect_with(
        with_host(&redis_url(), "127.0.0.1").as_str(),
        redis_config(&ca())
    )
    .await
    .is_ok());
}

#[tokio::test]
async fn rediss_to_a_plain_server_sends_nothing_in_cleartext() {
    // A plain Redis as a client sees one: it answers whatever it gets with a RESP error
    // and records what it heard.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let heard = tokio::spawn(async move {
        let mut heard = Vec::new();
        let Ok(Ok((mut socket, _))) =
            tokio::time::timeout(Duration::from_secs(10), listener.accept()).await
        else {
            return heard;
        };
        let mut buffer = [0u8; 4096];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_secs(2), socket.read(&mut buffer)).await
        {
            if n == 0 {
                break;
            }
            heard.extend_from_slice(&buffer[..n]);
            let _ = socket.write_all(b"-ERR unknown command\r\n").await;
        }
        heard
    });
    let url = format!("rediss://:hunter2@127.0.0.1:{port}/");
    let config = RedisConfig::new().connection_timeout(Duration::from_secs(2));
    let opened = RedisStore::connect_with(url.as_str(), config).await;
    assert!(
        matches!(opened, Err(StoreError::Backend(_) | StoreError::Timeout)),
        "{opened:?}"
    );
    let heard = heard.await.unwrap();
    // A TLS ClientHello (a handshake record), never a RESP command or the password.
    assert_eq!(heard.first(), Some(&0x16), "not a TLS handshake: {heard:?}");
    assert!(!heard.windows(7).any(|w| w == b"hunter2"));
    assert!(!heard.windows(4).any(|w| w.eq_ignore_ascii_case(b"PING")));
}
