//! `RedisStore`: the conformance suite, the key layout and change notices, outages (closed
//! port, a server that drops or swallows connections, killed connections), and cross-node
//! revocation through two caches on one Redis.
//!
//! Needs `KEYGATE_TEST_REDIS_URL` (e.g. `redis://127.0.0.1:6379/`). Every test works in a
//! random namespace and removes its keys at the end.

// Test code: a panic is how a test reports a failure, and fixtures index and count
// over small known values.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
#![cfg(all(feature = "redis", feature = "testing"))]

use crate::support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use keygate::redis::{self, aio::MultiplexedConnection, Client};
use keygate::{
    CacheConfig, CachedStore, ChangeListener, Cursor, KeyId, KeyPatch, KeyStore, Keygate,
    ListQuery, NewKey, Pepper, RedisConfig, RedisStore, Rejection, StoreError, VerifyError,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Tests that open, count or kill change-feed connections take this, so they do not see
/// each other's feeds.
static FEEDS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn pepper() -> Pepper {
    Pepper::new(1, [7u8; 32]).unwrap()
}

fn gate(store: Arc<dyn KeyStore>) -> Keygate {
    Keygate::builder(store, pepper()).build().unwrap()
}

/// A random namespace; every key under it is removed when the test ends.
struct Scratch {
    url: String,
    namespace: String,
}

impl Scratch {
    fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            namespace: format!("keygate-test:{}:", KeyId::random().as_uuid().simple()),
        }
    }

    fn config(&self) -> RedisConfig {
        RedisConfig::new().namespace(self.namespace.clone())
    }

    async fn store(&self) -> RedisStore {
        RedisStore::connect_with(self.url.as_str(), self.config())
            .await
            .expect("connect to the test Redis")
    }
}

/// Removes every key of the namespace when the test ends, pass or fail.
impl Drop for Scratch {
    fn drop(&mut self) {
        let Ok(client) = Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
            return;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let mut cursor: u64 = 0;
        loop {
            let Ok((next, keys)) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.namespace))
                .arg("COUNT")
                .arg(1000)
                .query::<(u64, Vec<Vec<u8>>)>(&mut conn)
            else {
                return;
            };
            if !keys.is_empty() {
                let _ = redis::cmd("DEL").arg(&keys).query::<()>(&mut conn);
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}

/// A connection of the test's own, for inspecting keys and killing clients.
async fn admin(url: &str) -> MultiplexedConnection {
    Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// `(id, name)` of every client the server has.
async fn clients(conn: &mut MultiplexedConnection) -> Vec<(u64, String)> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .unwrap();
    list.lines()
        .filter_map(|line| {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|kv| kv.strip_prefix(name).map(str::to_owned))
            };
            Some((
                field("id=")?.parse().ok()?,
                field("name=").unwrap_or_default(),
            ))
        })
        .collect()
}

async fn feed_clients(conn: &mut MultiplexedConnection) -> BTreeSet<u64> {
    clients(conn)
        .await
        .into_iter()
        .filter(|(_, name)| name == RedisStore::FEED_CLIENT_NAME)
        .map(|(id, _)| id)
        .collect()
}

async fn kill_client(conn: &mut MultiplexedConnection, id: u64) {
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query_async(conn)
        .await
        .unwrap();
    assert_eq!(killed, 1, "CLIENT KILL ID {id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_redis),
    ignore = "needs Redis: set KEYGATE_TEST_REDIS_URL"
)]
async fn redis_store_conforms() {
    let url = support::redis_url();
    let scratch = Scratch::new(&url);
    keygate::testing::run_all(Arc::new(scratch.store().await)).await;
    let cached = CachedStore::new(scratch.store().await, CacheConfig::new());
    keygate::testing::run_all(Arc::new(cached)).await;
}

/// Collects change notices.
#[derive(Default)]
struct Recorder {
    changed: Mutex<Vec<KeyId>>,
    resyncs: Mutex<u32>,
}

impl ChangeListener for Recorder {
    fn changed(&self, id: KeyId) {
        self.changed.lock().unwrap().push(id);
    }

    fn resync(&self) {
        *self.resyncs.lock().unwrap() += 1;
    }
}

impl Recorder {
    /// Waits (up to 2 s) until `n` notices arrived, and takes them.
    async fn take(&self, n: usize) -> Vec<KeyId> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            {
                let mut changed = self.changed.lock().unwrap();
                if changed.len() >= n {
                    return std::mem::take(&mut *changed);
                }
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} change notices, got {:?}",
                self.changed.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_redis),
    ignore = "needs Redis: set KEYGATE_TEST_REDIS_URL"
)]
async fn layout_and_change_notices() {
    let url = support::redis_url();
    let _feeds = FEEDS.lock().await;
    let scratch = Scratch::new(&url);
    let ns = scratch.namespace.clone();
    let v1 = format!("{ns}v1:");
    let store = scratch.store().await;
    assert_eq!(store.namespace(), ns);
    assert_eq!(store.channel(), format!("{ns}changes"));
    let mut conn = admin(&url).await;

    let recorder = Arc::new(Recorder::default());
    let listener: Arc<dyn ChangeListener> = recorder.clone();
    let weak: Weak<dyn ChangeListener> = Arc::downgrade(&listener);
    assert!(store.subscribe(weak).await.unwrap());

    // Insert: JSON at key:<id> (no last-used in it), the id in both indexes, one notice.
    let mut record = keygate::testing::sample_record("layout-owner");
    let at = keygate::chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
    record.last_used_at = Some(at);
    let id = record.id.to_string();
    store.insert(record.clone()).await.unwrap();
    assert_eq!(recorder.take(1).await, [record.id]);
    let json: String = redis::cmd("GET")
        .arg(format!("{v1}key:{id}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["id"], id.as_str());
    assert_eq!(value["owner"], "layout-owner");
    assert!(
        value["last_used_at"].is_null(),
        "last-used lives in the hash"
    );
    let micros: String = redis::cmd("HGET")
        .arg(format!("{v1}last_used"))
        .arg(&id)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(micros, "1700000000123456");
    // Both indexes hold the record's position, `<created_at micros + 2^63 as hex>:<id>`.
    let micros = u64::from_be_bytes(record.created_at.timestamp_micros().to_be_bytes());
    let position = format!("{:016x}:{id}", micros ^ (1 << 63));
    for index in [format!("{v1}created"), format!("{v1}owner:layout-owner")] {
        let members: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(&index)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(members, [(position.clone(), 0.0)], "{index}");
    }
    assert_eq!(
        store.get(record.id).await.unwrap().unwrap().as_ref(),
        &record
    );

    // A conflicting insert changes nothing and announces nothing.
    assert!(matches!(
        store.insert(record.clone()).await,
        Err(StoreError::Conflict(got)) if got == record.id
    ));

    // Last-used batches write only the hash, and no notice.
    let later = at + keygate::chrono::TimeDelta::seconds(5);
    store.record_last_used(&[(record.id, later)]).await.unwrap();
    let micros: String = redis::cmd("HGET")
        .arg(format!("{v1}last_used"))
        .arg(&id)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(micros, "1700000005123456");

    // An owner change moves the id between owner indexes, with one notice.
    store
        .update(record.id, &KeyPatch::new().owner("layout-owner-2"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(recorder.take(1).await, [record.id]);
    let old: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{v1}owner:layout-owner"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let new: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{v1}owner:layout-owner-2"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(old.is_empty());
    assert_eq!(new, [position.as_str()]);
    let listed = store
        .list(&ListQuery::new().owner("layout-owner-2"))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].last_used_at, Some(later));

    // Delete removes every trace, with one notice.
    assert!(store.delete(record.id).await.unwrap());
    assert_eq!(recorder.take(1).await, [record.id]);
    let left: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg(format!("{ns}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        left.is_empty(),
        "keys left after delete: {:?}",
        left.iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
    );
    let in_hash: bool = redis::cmd("HEXISTS")
        .arg(format!("{v1}last_used"))
        .arg(&id)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!in_hash);

    // A record that no longer parses is Corrupt, not "not found", and can still be deleted.
    let bad = KeyId::random();
    redis::cmd("SET")
        .arg(format!("{v1}key:{bad}"))
        .arg("{not json")
        .exec_async(&mut conn)
        .await
        .unwrap();
    assert!(matches!(store.get(bad).await, Err(StoreError::Corrupt(_))));
    assert!(store.delete(bad).await.unwrap());
    assert!(store.get(bad).await.unwrap().is_none());
    assert_eq!(*recorder.resyncs.lock().unwrap(), 0);

    // The feed ends once the listener is gone.
    let before = feed_clients(&mut conn).await;
    assert!(!before.is_empty());
    drop(listener);
    drop(recorder);
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let now = feed_clients(&mut conn).await;
        if now.len() < before.len() {
            break;
        }
        assert!(Instant::now() < deadline, "the feed outlived its listener");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every page of `query` through `store`, `limit` records at a time, as cursors.
async fn all_pages(store: &RedisStore, query: ListQuery, limit: usize) -> Vec<Cursor> {
    let mut seen = Vec::new();
    let mut query = query.limit(limit);
    loop {
        let page = store.list(&query).await.unwrap();
        assert!(page.len() <= limit);
        seen.extend(page.iter().map(Cursor::of));
        match page.last() {
            Some(last) if page.len() == limit => query = query.after(Cursor::of(last)),
            _ => return seen,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_redis),
    ignore = "needs Redis: set KEYGATE_TEST_REDIS_URL"
)]
async fn two_stores_list_in_creation_order_and_hear_each_others_writes() {
    let url = support::redis_url();
    let _feeds = FEEDS.lock().await;
    let scratch = Scratch::new(&url);
    let (a, b) = (scratch.store().await, scratch.store().await);
    let recorder = Arc::new(Recorder::default());
    let listener: Arc<dyn ChangeListener> = recorder.clone();
    assert!(b.subscribe(Arc::downgrade(&listener)).await.unwrap());

    // Instants on both sides of 1970 and at the ends of the stored range, two records
    // sharing one, inserted out of order through `a`.
    let micros = [
        1_767_225_600_000_000,
        -1,
        0,
        253_402_300_799_999_999, // 9999-12-31T23:59:59.999999Z
        -62_135_596_800_000_000, // 0001-01-01T00:00:00Z
        1,
        0,
    ];
    let mut expected = Vec::new();
    for m in micros {
        let mut record = keygate::testing::sample_record("order-owner");
        record.created_at = keygate::chrono::DateTime::from_timestamp_micros(m).unwrap();
        expected.push(Cursor::of(&record));
        a.insert(record).await.unwrap();
    }
    expected.sort();
    let mut heard = recorder.take(expected.len()).await;
    heard.sort();
    let mut ids: Vec<KeyId> = expected.iter().map(Cursor::id).collect();
    ids.sort();
    assert_eq!(heard, ids, "b heard every insert made through a");
    for limit in [1, 2, 3, 100] {
        assert_eq!(all_pages(&b, ListQuery::new(), limit).await, expected);
        assert_eq!(
            all_pages(&b, ListQuery::new().owner("order-owner"), limit).await,
            expected
        );
    }

    // An owner change moves the record between owner indexes, keeping its place overall.
    let moved = expected[3];
    a.update(moved.id(), &KeyPatch::new().owner("order-owner-2"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(recorder.take(1).await, [moved.id()]);
    assert_eq!(all_pages(&b, ListQuery::new(), 2).await, expected);
    assert_eq!(
        all_pages(&b, ListQuery::new().owner("order-owner-2"), 2).await,
        [moved]
    );
    let rest: Vec<Cursor> = expected.iter().copied().filter(|c| *c != moved).collect();
    assert_eq!(
        all_pages(&b, ListQuery::new().owner("order-owner"), 2).await,
        rest
    );

    // A record too damaged to name its place is deleted, and its index members (left
    // behind) do not shorten a page.
    let damaged = expected[1];
    let mut conn = admin(&url).await;
    let _: () = redis::cmd("SET")
        .arg(format!("{}v1:key:{}", scratch.namespace, damaged.id()))
        .arg("{not json")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(a.delete(damaged.id()).await.unwrap());
    assert_eq!(recorder.take(1).await, [damaged.id()]);
    let left: Vec<Cursor> = expected.iter().copied().filter(|c| *c != damaged).collect();
    let first_two = b.list(&ListQuery::new().limit(2)).await.unwrap();
    assert_eq!(
        first_two.iter().map(Cursor::of).collect::<Vec<_>>(),
        left[..2]
    );
    assert_eq!(all_pages(&b, ListQuery::new(), 2).await, left);

    // A record whose created_at was edited by hand is not where the index has it: listing
    // it there would page wrongly, so the listing is Corrupt (the record still reads).
    let edited = left[0];
    let record_key = format!("{}v1:key:{}", scratch.namespace, edited.id());
    let json: String = redis::cmd("GET")
        .arg(&record_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
    value["created_at"] = "2030-01-01T00:00:00Z".into();
    let _: () = redis::cmd("SET")
        .arg(&record_key)
        .arg(value.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(matches!(
        b.list(&ListQuery::new()).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(b.get(edited.id()).await.unwrap().is_some());
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_fails_fast() {
    let (_closed, port) = support::closed_port();
    let config = RedisConfig::new()
        .connection_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let result = RedisStore::connect_with(format!("redis://127.0.0.1:{port}/"), config).await;
    let elapsed = started.elapsed();
    eprintln!(
        "connect to a closed port: {:?} after {elapsed:?}",
        result.as_ref().err()
    );
    assert!(
        matches!(result, Err(StoreError::Backend(_) | StoreError::Timeout)),
        "{result:?}"
    );
    assert!(
        elapsed < support::bound(Duration::from_millis(500)),
        "took {elapsed:?}"
    );
    // A wrong URL is an error too, not a panic.
    assert!(matches!(
        RedisStore::connect("definitely not a url").await,
        Err(StoreError::InvalidUrl(_))
    ));
}

/// How the [`Proxy`] treats connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Pass bytes both ways.
    Forward,
    /// Drop every connection at once (a server that went away).
    Refuse,
    /// Say nothing: new connections are held open silently until the next switch; the
    /// connections that were being forwarded stay open but dead forever (a network
    /// partition, or state dropped by a firewall).
    Blackhole,
}

/// A TCP proxy in front of Redis whose behaviour can be switched; a switch also ends (or,
/// to [`Mode::Blackhole`], kills silently) every forwarded connection.
struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, mut watcher) = watch::channel(Mode::Forward);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                // Mark the mode seen first: connection tasks wait for the *next* change.
                let mode = *watcher.borrow_and_update();
                let watcher = watcher.clone();
                match mode {
                    Mode::Refuse => drop(inbound),
                    Mode::Blackhole => {
                        tokio::spawn(hold(inbound, watcher));
                    }
                    Mode::Forward => {
                        tokio::spawn(forward(inbound, upstream, watcher));
                    }
                }
            }
        });
        Self { addr, mode }
    }

    fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

async fn hold(inbound: TcpStream, mut mode: watch::Receiver<Mode>) {
    let _ = mode.changed().await;
    drop(inbound);
}

async fn forward(mut inbound: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = mode.changed() => {
            if *mode.borrow() == Mode::Blackhole {
                // Half-open for good: both ends stay open and nothing ever passes again,
                // as when a firewall or NAT silently drops a connection's state.
                std::future::pending::<()>().await;
            }
        }
    }
}

fn upstream(url: &str) -> SocketAddr {
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
        other => panic!("the proxy test needs a TCP Redis URL, not {other:?}"),
    }
}

/// Verifies until the store answers again; every refusal on the way must be "unavailable",
/// never a bad key. Returns how long recovery took.
async fn until_recovered(gate: &Keygate, key: &str) -> Duration {
    let started = Instant::now();
    loop {
        match gate.verify(key).await {
            Ok(_) => return started.elapsed(),
            Err(VerifyError::StoreUnavailable(e)) => {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the store did not recover: {:?}",
                    std::error::Error::source(&e)
                );
            }
            Err(other) => panic!("while recovering: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Verifies during an outage: must be "unavailable" within the response timeout.
async fn unavailable(gate: &Keygate, key: &str, bound: Duration) -> Duration {
    let started = Instant::now();
    let result = gate.verify(key).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(result, Err(VerifyError::StoreUnavailable(_))),
        "during an outage: {result:?}"
    );
    assert!(elapsed < bound, "answered after {elapsed:?}");
    elapsed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_redis),
    ignore = "needs Redis: set KEYGATE_TEST_REDIS_URL"
)]
async fn outages_are_unavailable_and_heal_by_themselves() {
    let url = support::redis_url();
    let _feeds = FEEDS.lock().await;
    let scratch = Scratch::new(&url);
    let proxy = Proxy::start(upstream(&url)).await;
    let timeout = Duration::from_millis(300);
    let bound = support::bound(timeout);
    let config = scratch
        .config()
        .connection_timeout(timeout)
        .response_timeout(timeout);
    let store = RedisStore::connect_with(proxy.url(), config.clone())
        .await
        .unwrap();
    // No Keygate-level store timeout: the store must bound itself.
    let gate = gate(Arc::new(store));
    let issued = gate.mint(NewKey::new("outage", "owner")).await.unwrap();
    let key = issued.key.expose();
    gate.verify(key).await.unwrap();
    // A verify-only gate whose own store timeout cuts every call short of the store's.
    let impatient = Keygate::builder(
        RedisStore::connect_with(proxy.url(), config.clone())
            .await
            .unwrap(),
        pepper(),
    )
    .store_timeout(Duration::from_millis(100))
    .build()
    .unwrap();
    impatient.verify(key).await.unwrap();

    // Node B caches behind the proxy and follows changes through it; node A is direct.
    let cache_b = Arc::new(CachedStore::new(
        RedisStore::connect_with(proxy.url(), config).await.unwrap(),
        CacheConfig::new().ttl(Duration::from_secs(30)),
    ));
    assert!(cache_b.follow_changes().await.unwrap());
    let b = self::gate(cache_b.clone());
    let a = self::gate(Arc::new(scratch.store().await));

    for (mode, label) in [
        (Mode::Refuse, "server gone"),
        (Mode::Blackhole, "partition"),
    ] {
        let resyncs = cache_b.stats().resyncs;
        proxy.set(mode);
        let mut times = Vec::new();
        for _ in 0..3 {
            times.push(unavailable(&gate, key, bound).await);
            unavailable(&impatient, key, support::bound(Duration::from_millis(100))).await;
        }
        // Writes fail cleanly too.
        let started = Instant::now();
        assert!(gate.mint(NewKey::new("during", "owner")).await.is_err());
        assert!(started.elapsed() < bound);
        proxy.set(Mode::Forward);
        let back = Instant::now();
        let recovery = until_recovered(&gate, key).await;
        eprintln!(
            "{label}: verify unavailable after {times:?}; verify ok again {recovery:?} after the server came back"
        );
        let impatient_recovery = until_recovered(&impatient, key).await;
        eprintln!(
            "{label}: verify with a 100 ms Keygate store_timeout ok again {impatient_recovery:?} later"
        );

        // The feed noticed (a silent connection by its idle PING), came back and resynced.
        while cache_b.stats().resyncs == resyncs {
            assert!(
                back.elapsed() < Duration::from_secs(8),
                "{label}: node B's feed did not come back"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!(
            "{label}: feed resynced {:?} after the server came back",
            back.elapsed()
        );
        let issued = a.mint(NewKey::new("after", "owner")).await.unwrap();
        // B's own connection may still be the silent one: its first call then times out
        // (and replaces it).
        let b_back = until_recovered(&b, issued.key.expose()).await;
        eprintln!("{label}: node B verifies again after {b_back:?}");
        cached_on(&b, &cache_b, issued.key.expose()).await;
        revoke_reaches(&a, &b, issued.record.id, issued.key.expose()).await;
    }
    assert_eq!(
        gate.get(issued.record.id).await.unwrap().unwrap().name,
        "outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_redis),
    ignore = "needs Redis: set KEYGATE_TEST_REDIS_URL"
)]
async fn a_killed_connection_heals_by_itself() {
    let url = support::redis_url();
    let scratch = Scratch::new(&url);
    let store = scratch.store().await;
    let mut handle = store.connection();
    let gate = gate(Arc::new(store));
    let issued = gate.mint(NewKey::new("kill", "owner")).await.unwrap();
    let key = issued.key.expose();
    let mut conn = admin(&url).await;
    for round in 0..3 {
        gate.verify(key).await.unwrap();
        let id: u64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut handle)
            .await
            .unwrap();
        kill_client(&mut conn, id).await;
        let mut failures = 0;
        let started = Instant::now();
        loop {
            match gate.verify(key).await {
                Ok(_) => break,
                Err(VerifyError::StoreUnavailable(e)) => {
                    failures += 1;
                    assert!(failures < 5, "still unavailable: {e:?}");
                }
                Err(other) => panic!("after CLIENT KILL: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let new_id: u64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut handle)
            .await
            .unwrap();
        assert_ne!(new_id, id, "the connection was replaced");
        eprintln!(
            "kill {round}: verify ok after {failures} unavailable answers, {:?}",
            started.elapsed()
        );
    }
}

fn summary(label: &str, mut times: Vec<Duration>) {
    times.sort();
    let pick = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "{label} (n={}): min {:?}, median {:?}, p95 {:?}, max {:?}",
        times.len(),
        times[0],
        pick(0.5),
        pick(0.95),
        times[times.len() - 1]
    );
}

/// Verifies `key` on `gate` until `cache` serves it from memory. (The insert's own change
/// notice may arrive after the first load and drop that entry once.)
async fn cached_on(gate: &Keygate, cache: &CachedStore<RedisStore>, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let hits = cache.stats().hits;
        gate.verify(key).await.unwrap();
        if cache.stats().hits > hits {
            return;
        }
        assert!(Instant::now() < deadline, "node B never cached the key");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Revokes `id` on `a` and polls `b` (which has it cached) every millisecond until it is
/// refused. Returns (from revoke start, from revoke return).
async fn revoke_reaches(a: &Keygate, b: &Keygate, id: KeyId, key: &str) -> (Duration, Duration) {
    // A third of the caches' 30 s TTL: only the feed can have told `b` this soon.
    let limit = Duration::from_secs(10);
    let started = Instant::now();
    a.revoke(id).await.unwrap();
    let returned = Instant::now();
    loop {
        match b.verify(key).await {
            Ok(_) => {}
            Err(VerifyError::InvalidKey(Rejection::Inactive)) => {
                return (started.elapsed(), returned.elapsed())
            }
            Err(other) => panic!("node B: {other:?}"),
        }
        assert!(
            started.elapsed() < limit,
            "node B still accepts a key revoked on node A {:?} ago",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_redis),
    ignore = "needs Redis: set KEYGATE_TEST_REDIS_URL"
)]
async fn a_revoke_on_one_node_reaches_the_other_through_the_feed() {
    let url = support::redis_url();
    let _feeds = FEEDS.lock().await;
    let scratch = Scratch::new(&url);
    let mut conn = admin(&url).await;
    let feeds_before = feed_clients(&mut conn).await;

    let node = || async {
        let store = CachedStore::new(
            scratch.store().await,
            CacheConfig::new().ttl(Duration::from_secs(30)),
        );
        assert!(store.follow_changes().await.unwrap());
        let store = Arc::new(store);
        (gate(store.clone()), store)
    };
    let (a, cache_a) = node().await;
    let (b, cache_b) = node().await;

    let mut from_start = Vec::new();
    let mut from_return = Vec::new();
    for i in 0..50 {
        let issued = a
            .mint(NewKey::new(format!("xnode {i}"), "owner"))
            .await
            .unwrap();
        let key = issued.key.expose();
        cached_on(&b, &cache_b, key).await;
        let (start, ret) = revoke_reaches(&a, &b, issued.record.id, key).await;
        from_start.push(start);
        from_return.push(ret);
    }
    summary(
        "cross-node revoke -> refused, from revoke start",
        from_start,
    );
    summary(
        "cross-node revoke -> refused, from revoke return",
        from_return,
    );
    assert!(cache_b.stats().invalidations >= 50);

    // Kill both nodes' feed connections: they come back, resync, and carry revokes again.
    let ours: Vec<u64> = feed_clients(&mut conn)
        .await
        .difference(&feeds_before)
        .copied()
        .collect();
    assert_eq!(ours.len(), 2, "one feed connection per node: {ours:?}");
    let resyncs = (cache_a.stats().resyncs, cache_b.stats().resyncs);
    let killed = Instant::now();
    for id in &ours {
        kill_client(&mut conn, *id).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache_a.stats().resyncs == resyncs.0 || cache_b.stats().resyncs == resyncs.1 {
        assert!(Instant::now() < deadline, "the feeds did not reconnect");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("feeds resynced {:?} after CLIENT KILL", killed.elapsed());
    let now = feed_clients(&mut conn).await;
    assert!(ours.iter().all(|id| !now.contains(id)));
    assert_eq!(now.difference(&feeds_before).count(), 2);

    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut after_kill = Vec::new();
    for i in 0..5 {
        let issued = a
            .mint(NewKey::new(format!("after kill {i}"), "owner"))
            .await
            .unwrap();
        let key = issued.key.expose();
        cached_on(&b, &cache_b, key).await;
        after_kill.push(revoke_reaches(&a, &b, issued.record.id, key).await.0);
    }
    summary("after the feed reconnected, from revoke start", after_kill);

    drop((a, b, cache_a, cache_b));
}

/// `HMAC-SHA256` under the tests' pepper, as lowercase hex, computed without keygate.
fn hmac_hex(input: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7u8; 32]);
    ring::hmac::sign(&key, input)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
#[cfg_attr(
    not(keygate_test_redis),
    ignore = "needs Redis: set KEYGATE_TEST_REDIS_URL"
)]
async fn hand_written_records_missing_a_field_are_corrupt() {
    let url = support::redis_url();
    let scratch = Scratch::new(&url);
    let store = scratch.store().await;
    let gate = gate(Arc::new(store.clone()));
    let issued = gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let key = issued.key.expose();
    let id = issued.record.id;
    let record_key = format!("{}v1:key:{id}", scratch.namespace);
    let mut conn = admin(&url).await;
    let written: String = redis::cmd("GET")
        .arg(&record_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let written: serde_json::Value = serde_json::from_str(&written).unwrap();
    let fields: Vec<String> = written.as_object().unwrap().keys().cloned().collect();
    assert_eq!(fields.len(), 16, "{fields:?}");
    // `ratelimits` and `credits` may be absent: records written before they existed had
    // no usage policy (see `StoredRecord`). Present, they must be well-formed (below).
    let mut cases: Vec<(String, serde_json::Value)> = fields
        .iter()
        .filter(|field| !matches!(field.as_str(), "ratelimits" | "credits"))
        .map(|field| {
            let mut record = written.clone();
            record.as_object_mut().unwrap().remove(field);
            (format!("without {field}"), record)
        })
        .collect();
    let mut edit = |what: &str, change: &dyn Fn(&mut serde_json::Value)| {
        let mut record = written.clone();
        change(&mut record);
        cases.push((what.to_owned(), record));
    };
    edit("an unknown field", &|r| r["isAdmin"] = true.into());
    edit("another schema", &|r| r["schema"] = 2.into());
    edit("the pre-schema shape", &|r| {
        let fields = r.as_object_mut().unwrap();
        fields.remove("schema");
        fields.insert("last_used_at".into(), serde_json::Value::Null);
    });
    edit("another record's id", &|r| {
        r["id"] = KeyId::random().to_string().into()
    });
    edit("an empty owner", &|r| r["owner"] = "".into());
    edit("a null hash", &|r| r["hash"] = serde_json::Value::Null);
    edit("a hash without a digest", &|r| {
        r["hash"].as_object_mut().unwrap().remove("digest");
    });
    edit("scopes of numbers", &|r| {
        r["scopes"] = serde_json::json!([1])
    });
    edit("metadata an array", &|r| {
        r["metadata"] = serde_json::json!([])
    });
    edit("ratelimits an object", &|r| {
        r["ratelimits"] = serde_json::json!({})
    });
    edit(
        "a rate limit of 0",
        &|r| r["ratelimits"] = serde_json::json!([{"name": "r", "limit": 0, "duration": 1000}]),
    );
    edit("credits a number", &|r| r["credits"] = serde_json::json!(5));
    edit("a last_used_at in the JSON", &|r| {
        r["last_used_at"] = "2026-01-01T00:00:00Z".into()
    });
    let mut outcomes = Vec::new();
    for (case, record) in cases {
        let _: () = redis::cmd("SET")
            .arg(&record_key)
            .arg(record.to_string())
            .query_async(&mut conn)
            .await
            .unwrap();
        let got = store.get(id).await;
        let listed = store.list(&ListQuery::new().owner("alice")).await;
        let verified = gate.verify(key).await;
        let status = verified.as_ref().err().map(|e| gate.http_outcome(e));
        outcomes.push((case, got, listed, verified.is_ok(), status));
    }
    for (case, got, listed, accepted, status) in outcomes {
        // Whole JSON with a bad value (an empty owner, an opaque record without a hash)
        // decodes; the gate's record check refuses it.
        if !["an empty owner", "a null hash", "a rate limit of 0"].contains(&case.as_str()) {
            assert!(
                matches!(got, Err(StoreError::Corrupt(_))),
                "{case}: get {got:?}"
            );
            assert!(
                matches!(listed, Err(StoreError::Corrupt(_))),
                "{case}: list {listed:?}"
            );
        }
        assert!(!accepted, "{case}: accepted");
        let status = status.unwrap();
        assert_eq!((status.status, status.retry_after), (500, None), "{case}");
    }
    // The record as written verifies again.
    let _: () = redis::cmd("SET")
        .arg(&record_key)
        .arg(written.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    gate.verify(key).await.unwrap();
}

#[tokio::test]
#[cfg_attr(
    not(keygate_test_redis),
    ignore = "needs Redis: set KEYGATE_TEST_REDIS_URL"
)]
async fn a_record_written_before_binding_verifies_and_is_rehashed() {
    let url = support::redis_url();
    let scratch = Scratch::new(&url);
    let store = scratch.store().await;
    let gate = gate(Arc::new(store.clone()));
    let issued = gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let key = issued.key.expose();
    let record_key = format!("{}v1:key:{}", scratch.namespace, issued.record.id);
    let mut conn = admin(&url).await;
    let written: String = redis::cmd("GET")
        .arg(&record_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut old: serde_json::Value = serde_json::from_str(&written).unwrap();
    assert_eq!(old["hash"]["scheme"], "bound");
    // As keys hashed before binding are stored: the `secret` scheme, HMAC of the secret
    // part alone.
    let secret = &key["key_".len() + 22.."key_".len() + 22 + 43];
    old["hash"] = serde_json::json!({
        "version": 1,
        "digest": hmac_hex(secret.as_bytes()),
        "scheme": "secret",
    });
    let _: () = redis::cmd("SET")
        .arg(&record_key)
        .arg(old.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    gate.verify(key).await.unwrap();
    gate.flush().await.unwrap();
    let now: String = redis::cmd("GET")
        .arg(&record_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let now: serde_json::Value = serde_json::from_str(&now).unwrap();
    assert_eq!(now["hash"]["scheme"], "bound");
    assert_eq!(
        now["hash"]["digest"],
        hmac_hex(&key.as_bytes()[..key.len() - 6]).as_str()
    );
    gate.verify(key).await.unwrap();
}

/// Pepper fingerprints are fields of one hash, `<namespace>peppers`: a new version adds a
/// field, and a second fingerprint for a version changes nothing.
#[cfg_attr(
    not(keygate_test_redis),
    ignore = "needs Redis: set KEYGATE_TEST_REDIS_URL"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pepper_fingerprints_live_in_one_hash() {
    let url = support::redis_url();
    let scratch = Scratch::new(&url);
    let store = scratch.store().await;
    let first = keygate::PepperFingerprint::from_bytes([1; 32]);
    let other = keygate::PepperFingerprint::from_bytes([2; 32]);
    assert_eq!(store.remember_pepper(1, first).await.unwrap(), None);
    assert_eq!(store.remember_pepper(2, other).await.unwrap(), None);
    assert_eq!(store.remember_pepper(1, other).await.unwrap(), Some(first));
    let mut conn = admin(&url).await;
    let key = format!("{}peppers", scratch.namespace);
    let fields: std::collections::BTreeMap<u32, Vec<u8>> = redis::cmd("HGETALL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        fields.into_iter().collect::<Vec<_>>(),
        [(1, vec![1; 32]), (2, vec![2; 32])]
    ); // The conformance suite's pepper checks, also on their own.
    keygate::testing::pepper_fingerprints(&store).await;
    keygate::testing::concurrent_pepper_fingerprints(Arc::new(store)).await;
}
