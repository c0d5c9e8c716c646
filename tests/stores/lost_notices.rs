//! Revocation that no lost notice can undo (issue 10), on PostgreSQL and Redis: a feed
//! whose connection goes silent (a proxy that stops forwarding without closing), and a
//! feed killed by the server in the middle of a burst of 1,000 revocations.
//!
//! Real servers mean real time here. The settings keep the documented bound short
//! (`min(ttl, heartbeat + deadline)`, with a TTL of an hour so that only the feed's
//! lease can make a node refuse), and the tests assert what a node answers once the bound
//! has passed, never how long something took.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate::{
    CacheConfig, CacheStats, CachedStore, FeedConfig, IssuedKey, KeyStore, Keygate, NewKey, Pepper,
    Rejection,
};

use crate::support;
use crate::support::stall::StallProxy;

/// A cache TTL far beyond every wait in these tests: a node that refuses a revoked key
/// did so because of its feed, never because the entry expired.
const TTL: Duration = Duration::from_secs(3600);

fn pepper() -> Pepper {
    Pepper::new(110, [11u8; 32]).unwrap()
}

/// A short lease, so the bound can be waited out: 100 ms heartbeat + 100 ms deadline.
fn short_feed() -> FeedConfig {
    FeedConfig::new()
        .heartbeat(Duration::from_millis(100))
        .deadline(Duration::from_millis(100))
        .dead_after(Duration::from_millis(500))
}

/// One node: a cache following its store's feed, and a gate over it.
pub(crate) struct Node<S: KeyStore> {
    pub(crate) cache: Arc<CachedStore<S>>,
    pub(crate) gate: Keygate,
}

pub(crate) async fn node<S: KeyStore>(store: S) -> Node<S> {
    let cache = Arc::new(CachedStore::new(store, CacheConfig::new().ttl(TTL)));
    assert!(
        cache.follow_changes().await.unwrap(),
        "the store has a feed"
    );
    let gate = Keygate::builder(cache.clone(), pepper())
        .prefix("lost")
        .build()
        .unwrap();
    Node { cache, gate }
}

pub(crate) fn stats<S: KeyStore>(node: &Node<S>) -> CacheStats {
    node.cache.stats()
}

/// Verifies `key` on `node` until an answer comes from its cache.
pub(crate) async fn cached<S: KeyStore>(node: &Node<S>, key: &str) {
    for _ in 0..100 {
        node.gate.verify(key).await.unwrap();
        let hits = stats(node).hits;
        node.gate.verify(key).await.unwrap();
        if stats(node).hits > hits {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the node never served the key from its cache");
}

pub(crate) fn refused_as_revoked(result: Result<keygate::Principal, keygate::VerifyError>) -> bool {
    match result {
        Err(e) if e.rejection() == Some(Rejection::Inactive) => true,
        Ok(_) => false,
        Err(other) => panic!("unexpected answer: {other:?}"),
    }
}

/// Waits until `node`'s feed has renewed its lease `n` more times.
pub(crate) async fn heartbeats<S: KeyStore>(node: &Node<S>, n: u64) {
    let start = stats(node).syncs;
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats(node).syncs < start + n {
        assert!(
            Instant::now() < deadline,
            "the feed never came back in sync"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The silent-partition test, for any store: `b`'s feed goes through `proxy`, which stops
/// forwarding it; a key revoked on `a` is refused on `b` once the lease has passed, and
/// a key not revoked is still accepted (read from the store, not refused wholesale).
async fn silent_feed<S: KeyStore, T: KeyStore>(
    a: &Node<S>,
    b: &Node<T>,
    proxy: &StallProxy,
    feed: FeedConfig,
) {
    let revoked = a.gate.mint(NewKey::new("revoked", "owner")).await.unwrap();
    let kept = a.gate.mint(NewKey::new("kept", "owner")).await.unwrap();
    // The inserts' own notices must not drop b's entries later (that would make b read
    // the store for a reason other than its lease): b is past them after two heartbeats.
    heartbeats(b, 2).await;
    cached(b, revoked.key.expose()).await;
    cached(b, kept.key.expose()).await;
    let dialled = proxy.marked().len();
    assert!(dialled > 0, "b's feed goes through the proxy");
    proxy.stall();
    // Let any heartbeat answered before the stall land, so what follows is silence.
    tokio::time::sleep(feed.lease()).await;
    let lapsed = stats(b).lapsed;
    a.gate.revoke(revoked.record.id).await.unwrap();
    // The documented bound, from the revoke's commit (before `revoke` returned).
    tokio::time::sleep(feed.lease()).await;
    assert!(
        refused_as_revoked(b.gate.verify(revoked.key.expose()).await),
        "b accepted a key revoked longer than the bound ago"
    );
    b.gate.verify(kept.key.expose()).await.unwrap();
    assert!(
        stats(b).lapsed > lapsed,
        "b refused because its lease ran out: {:?}",
        stats(b)
    );
    // The silence is detected, not only outlived: a heartbeat unanswered for `dead_after`
    // makes the feed give up the connection (nothing closed it) and dial a new one (which
    // the proxy marks, and stalls, too).
    let detect_by = Instant::now() + support::bound(feed.heartbeat + feed.dead_after);
    while proxy.marked().len() <= dialled {
        assert!(
            Instant::now() < detect_by,
            "b's feed never gave up its silent connection"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Healed: b's feed proves it is in sync again and b serves from memory again.
    proxy.resume();
    heartbeats(b, 2).await;
    cached(b, kept.key.expose()).await;
    assert!(refused_as_revoked(
        b.gate.verify(revoked.key.expose()).await
    ));

    // The tight case: the feed goes silent while b holds a fresh lease, and the revoke
    // follows at once. The lease b holds was renewed by a heartbeat sent before the stall,
    // so once one lease has passed after the revoke committed, b refuses.
    let second = a
        .gate
        .mint(NewKey::new("revoked 2", "owner"))
        .await
        .unwrap();
    heartbeats(b, 2).await;
    cached(b, second.key.expose()).await;
    cached(b, kept.key.expose()).await;
    proxy.stall();
    let lapsed = stats(b).lapsed;
    a.gate.revoke(second.record.id).await.unwrap();
    tokio::time::sleep(feed.lease()).await;
    assert!(
        refused_as_revoked(b.gate.verify(second.key.expose()).await),
        "b accepted a key revoked a whole lease ago, its feed silenced just before"
    );
    b.gate.verify(kept.key.expose()).await.unwrap();
    assert!(stats(b).lapsed > lapsed, "{:?}", stats(b));
    proxy.resume();
    heartbeats(b, 2).await;
    assert!(refused_as_revoked(b.gate.verify(second.key.expose()).await));
}

/// The burst test, for any store: 1,000 keys cached on `b`, all revoked on `a` while
/// `kill` kills `b`'s feed connection (after the first 300); once `b`'s feed is back in
/// sync, not one is accepted on `b`, and the cache was not dropped (the missed revokes
/// were replayed from the change log).
pub(crate) async fn burst<S: KeyStore, T: KeyStore, F, Fut>(a: &Node<S>, b: &Node<T>, kill: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    const KEYS: usize = 1_000;
    let mut keys: Vec<IssuedKey> = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        keys.push(
            a.gate
                .mint(NewKey::new(format!("burst {i}"), "owner"))
                .await
                .unwrap(),
        );
    }
    heartbeats(b, 2).await; // past the inserts' notices
    for issued in &keys {
        b.gate.verify(issued.key.expose()).await.unwrap();
    }
    assert!(stats(b).entries >= KEYS as u64, "{:?}", stats(b));
    let resyncs = stats(b).resyncs;

    let ids: Vec<_> = keys.iter().map(|k| k.record.id).collect();
    let done = Arc::new(AtomicUsize::new(0));
    let revoker = {
        let gate = a.gate.clone();
        let done = done.clone();
        tokio::spawn(async move {
            for id in ids {
                gate.revoke(id).await.unwrap();
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    while done.load(Ordering::SeqCst) < 300 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    kill().await;
    revoker.await.unwrap();
    // Two full heartbeats after the last revoke committed: b has read the log past it.
    heartbeats(b, 2).await;
    let accepted: Vec<_> = {
        let mut accepted = Vec::new();
        for issued in &keys {
            if !refused_as_revoked(b.gate.verify(issued.key.expose()).await) {
                accepted.push(issued.record.id);
            }
        }
        accepted
    };
    assert!(
        accepted.is_empty(),
        "revoked keys accepted on b: {accepted:?}"
    );
    assert_eq!(
        stats(b).resyncs,
        resyncs,
        "the missed revokes were replayed from the log, not by dropping the cache"
    );
}

/// The store's counter goes back (a failover that lost its last writes, a restore from a
/// backup), and new writes reuse the numbers `b` has seen: `b`'s feed must still pass
/// their notices on. `b` has no heartbeat during the test (a lease of hours), so only
/// notices can tell it; with a heartbeat, the counter back at `b`'s number would look like
/// nothing missing. `rewind(n)` sets the store's counter back by `n` and drops those log
/// entries, as the lost writes would have left them.
async fn reused_numbers<S: KeyStore, T: KeyStore, F, Fut>(a: &Node<S>, b: &Node<T>, rewind: F)
where
    F: FnOnce(i64) -> Fut,
    Fut: Future<Output = ()>,
{
    let revoked: Vec<IssuedKey> = vec![
        a.gate.mint(NewKey::new("one", "owner")).await.unwrap(),
        a.gate.mint(NewKey::new("two", "owner")).await.unwrap(),
    ];
    let lost: Vec<IssuedKey> = vec![
        a.gate.mint(NewKey::new("lost one", "owner")).await.unwrap(),
        a.gate.mint(NewKey::new("lost two", "owner")).await.unwrap(),
    ];
    for issued in revoked.iter().chain(&lost) {
        cached(b, issued.key.expose()).await;
    }
    // Two writes b hears of: b's last number is theirs once both entries are gone.
    for issued in &lost {
        a.cache
            .update(issued.record.id, &keygate::KeyPatch::new().name("renamed"))
            .await
            .unwrap();
    }
    wait_until(|| {
        lost.iter()
            .all(|issued| b.cache.get_now(issued.record.id).is_none())
    })
    .await;
    for issued in revoked.iter().chain(&lost) {
        cached(b, issued.key.expose()).await;
    }
    // The store loses those two writes; the two revokes take their numbers again.
    let before = stats(b);
    rewind(2).await;
    for issued in &revoked {
        a.gate.revoke(issued.record.id).await.unwrap();
    }
    wait_until(|| {
        revoked
            .iter()
            .all(|issued| b.cache.get_now(issued.record.id).is_none())
    })
    .await;
    for issued in &revoked {
        assert!(refused_as_revoked(b.gate.verify(issued.key.expose()).await));
    }
    // Told by the notices alone: no log read (which would have seen the counter
    // back and dropped the cache) happened in between.
    let after = stats(b);
    assert_eq!(
        (after.syncs, after.resyncs),
        (before.syncs, before.resyncs),
        "{after:?}"
    );
}

/// Polls `done` until it holds; fails after a generous bound.
async fn wait_until(done: impl Fn() -> bool) {
    let deadline = Instant::now() + support::bound(Duration::from_secs(1));
    while !done() {
        assert!(
            Instant::now() < deadline,
            "never happened (a notice was not passed on)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A feed with no heartbeat within a test's time (the first read at subscribe excepted).
fn no_heartbeat() -> FeedConfig {
    FeedConfig::new()
        .heartbeat(Duration::from_secs(3600))
        .deadline(Duration::from_secs(3600))
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use keygate::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use keygate::sqlx::{self, Connection};
    use keygate::{PostgresConfig, PostgresStore};

    async fn direct(url: &str, app: &str, feed: FeedConfig) -> PostgresStore {
        let config = PostgresConfig::new().application_name(app).feed(feed);
        PostgresStore::connect_with(url, config).await.unwrap()
    }

    fn upstream(options: &PgConnectOptions) -> std::net::SocketAddr {
        let host = match options.get_host() {
            "localhost" => "127.0.0.1",
            host => host,
        };
        format!("{host}:{}", options.get_port()).parse().unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(keygate_test_postgres),
        ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
    )]
    async fn a_silent_feed_connection_cannot_hide_a_revoke() {
        let url = support::postgres_url();
        let feed = short_feed();
        let a = node(direct(&url, &support::unique("kg-lost-a"), feed).await).await;
        // b's connections all go through the proxy; only its feed's (application name
        // `<b>-listener`, in the startup packet) is stalled.
        let b_app = support::unique("kg-lost-b");
        let options: PgConnectOptions = url.parse().unwrap();
        let proxy =
            StallProxy::start(upstream(&options), format!("{b_app}-listener").as_bytes()).await;
        // Cleartext on loopback: the proxy reads the startup packet, which `prefer` would
        // encrypt when the build has `tls` and the server offers it.
        let proxied = options
            .host("127.0.0.1")
            .port(proxy.addr().port())
            .application_name(&b_app)
            .ssl_mode(sqlx::postgres::PgSslMode::Disable);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(proxied)
            .await
            .unwrap();
        let b = node(PostgresStore::from_pool(pool).with_feed(feed)).await;
        silent_feed(&a, &b, &proxy, feed).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(keygate_test_postgres),
        ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
    )]
    async fn a_listener_killed_during_a_burst_of_revocations_loses_none() {
        let url = support::postgres_url();
        let a = node(direct(&url, &support::unique("kg-burst-a"), FeedConfig::new()).await).await;
        let b_app = support::unique("kg-burst-b");
        let b = node(direct(&url, &b_app, FeedConfig::new()).await).await;
        let listener = format!("{b_app}-listener");
        burst(&a, &b, || async {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            let killed: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1",
            )
            .bind(&listener)
            .fetch_all(&mut conn)
            .await
            .unwrap();
            assert_eq!(killed, [true], "b's feed has one connection");
        })
        .await;
    }

    /// A database created for one test and dropped when the test ends, pass or fail.
    struct OwnDatabase {
        url: String,
        name: String,
    }

    impl OwnDatabase {
        async fn create(url: &str, name: &str) -> Self {
            let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await
                .unwrap();
            Self {
                url: url.to_owned(),
                name: name.to_owned(),
            }
        }
    }

    impl Drop for OwnDatabase {
        fn drop(&mut self) {
            let (url, name) = (self.url.clone(), self.name.clone());
            // Outside the test's runtime, which may be shutting down.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    if let Ok(mut admin) = sqlx::PgConnection::connect(&url).await {
                        let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                            .execute(&mut admin)
                            .await;
                    }
                });
            })
            .join();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(keygate_test_postgres),
        ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
    )]
    async fn revokes_under_reused_sequence_numbers_still_reach_the_other_node() {
        // A database of its own: rewinding the shared one's counter would disturb the
        // other tests' feeds.
        let url = support::postgres_url();
        let name = format!("kg_reused_{}", keygate::KeyId::random().as_uuid().simple());
        let _dropped = OwnDatabase::create(&url, &name).await;
        let options: PgConnectOptions = url.parse().unwrap();
        let own = options.database(&name);
        let connect = |app: String| {
            let own = own.clone();
            async move {
                let pool = PgPoolOptions::new()
                    .max_connections(4)
                    .connect_with(own.application_name(&app))
                    .await
                    .unwrap();
                let store = PostgresStore::from_pool(pool).with_feed(no_heartbeat());
                store.migrate().await.unwrap();
                store
            }
        };
        let a = node(connect(support::unique("kg-reused-a")).await).await;
        let b = node(connect(support::unique("kg-reused-b")).await).await;
        let pool = a.cache.inner().pool().clone();
        reused_numbers(&a, &b, |n| async move {
            sqlx::query(
                "WITH back AS (UPDATE keygate_change_seq SET seq = seq - $1 RETURNING seq) \
                 DELETE FROM keygate_changes WHERE seq > (SELECT seq FROM back)",
            )
            .bind(n)
            .execute(&pool)
            .await
            .unwrap();
        })
        .await;
        drop((a, b));
    }
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use crate::redis::{Scratch, FEEDS};
    use keygate::redis;
    use keygate::RedisStore;

    fn upstream(url: &str) -> std::net::SocketAddr {
        let info = redis::IntoConnectionInfo::into_connection_info(url).unwrap();
        match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => {
                let host = if host == "localhost" {
                    "127.0.0.1"
                } else {
                    host
                };
                format!("{host}:{port}").parse().unwrap()
            }
            other => panic!("these tests need a TCP Redis URL, not {other:?}"),
        }
    }

    /// `url` with its host and port replaced by the proxy's.
    fn through(url: &str, proxy: &StallProxy) -> String {
        let upstream = upstream(url);
        let proxied = url
            .replace(&upstream.to_string(), &proxy.addr().to_string())
            .replace(
                &format!("localhost:{}", upstream.port()),
                &proxy.addr().to_string(),
            );
        assert_ne!(proxied, url, "the proxy is in the URL");
        proxied
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(keygate_test_redis),
        ignore = "needs Redis: set KEYGATE_TEST_REDIS_URL"
    )]
    async fn a_silent_feed_connection_cannot_hide_a_revoke() {
        let url = support::redis_url();
        let _feeds = FEEDS.lock().await;
        let scratch = Scratch::new(&url);
        let feed = short_feed();
        let config = scratch.config().feed(feed);
        let a = node(
            RedisStore::connect_with(url.as_str(), config.clone())
                .await
                .unwrap(),
        )
        .await;
        // Only b's feed connection names itself `keygate-feed`: it alone is stalled.
        let proxy =
            StallProxy::start(upstream(&url), RedisStore::FEED_CLIENT_NAME.as_bytes()).await;
        let b = node(
            RedisStore::connect_with(through(&url, &proxy), config)
                .await
                .unwrap(),
        )
        .await;
        silent_feed(&a, &b, &proxy, feed).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(keygate_test_redis),
        ignore = "needs Redis: set KEYGATE_TEST_REDIS_URL"
    )]
    async fn a_feed_killed_during_a_burst_of_revocations_loses_none() {
        let url = support::redis_url();
        let _feeds = FEEDS.lock().await;
        let scratch = Scratch::new(&url);
        let config = scratch.config();
        let a = node(
            RedisStore::connect_with(url.as_str(), config.clone())
                .await
                .unwrap(),
        )
        .await;
        // b goes through the proxy only so that its feed connection can be told apart
        // from every other process's on the same server (the proxy knows its address).
        let proxy =
            StallProxy::start(upstream(&url), RedisStore::FEED_CLIENT_NAME.as_bytes()).await;
        let b = node(
            RedisStore::connect_with(through(&url, &proxy), config)
                .await
                .unwrap(),
        )
        .await;
        let mut admin = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let feed = proxy.marked();
        assert_eq!(feed.len(), 1, "b has one feed connection");
        burst(&a, &b, || async {
            let killed: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ADDR")
                .arg(feed[0].to_string())
                .query_async(&mut admin)
                .await
                .unwrap();
            assert_eq!(killed, 1, "b's feed connection was killed");
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(keygate_test_redis),
        ignore = "needs Redis: set KEYGATE_TEST_REDIS_URL"
    )]
    async fn revokes_under_reused_sequence_numbers_still_reach_the_other_node() {
        let url = support::redis_url();
        let _feeds = FEEDS.lock().await;
        let scratch = Scratch::new(&url);
        let config = scratch.config().feed(no_heartbeat());
        let (seq_key, log_key) = (
            format!("{}v1:change_seq", config.namespace),
            format!("{}v1:change_log", config.namespace),
        );
        let a = node(
            RedisStore::connect_with(url.as_str(), config.clone())
                .await
                .unwrap(),
        )
        .await;
        let b = node(
            RedisStore::connect_with(url.as_str(), config)
                .await
                .unwrap(),
        )
        .await;
        let mut admin = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        reused_numbers(&a, &b, |n| async move {
            let back: i64 = redis::cmd("DECRBY")
                .arg(&seq_key)
                .arg(n)
                .query_async(&mut admin)
                .await
                .unwrap();
            let _: i64 = redis::cmd("ZREMRANGEBYSCORE")
                .arg(&log_key)
                .arg(format!("({back}"))
                .arg("+inf")
                .query_async(&mut admin)
                .await
                .unwrap();
        })
        .await;
    }
}
