//! `RedisStore` on a Redis Cluster and behind Sentinel (issue 10): the conformance suite,
//! a feed killed during a burst of 1,000 revocations, and a failover in the middle of a run
//! of revocations and verifies, on each.
//!
//! Needs the servers of `.ci/cluster.sh` (`eval "$(.ci/cluster.sh start)"`):
//! `KEYGATE_TEST_REDIS_CLUSTER_URLS` and `KEYGATE_TEST_REDIS_SENTINEL_URLS` /
//! `KEYGATE_TEST_REDIS_SENTINEL_MASTER`. The tests of one topology take its lock, since a
//! failover would disturb any other test running on it; every test works in a random
//! namespace and removes its keys at the end.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
#![cfg(all(feature = "redis", feature = "testing"))]

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate::redis::{self, aio::MultiplexedConnection, Client};
use keygate::{
    CacheConfig, CachedStore, FeedConfig, IssuedKey, KeyPatch, KeyStore, NewKey, RedisConfig,
    RedisStore, Rejection, StoreError,
};

use crate::lost_notices::{burst, cached, heartbeats, node, refused_as_revoked, stats, Node};
use crate::support;

static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static SENTINEL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn urls(var: &str) -> Vec<String> {
    support::cluster_setting(var)
        .split(',')
        .map(str::to_owned)
        .collect()
}

fn cluster_urls() -> Vec<String> {
    urls("KEYGATE_TEST_REDIS_CLUSTER_URLS")
}

fn sentinel_urls() -> Vec<String> {
    urls("KEYGATE_TEST_REDIS_SENTINEL_URLS")
}

fn sentinel_master() -> String {
    support::cluster_setting("KEYGATE_TEST_REDIS_SENTINEL_MASTER")
}

async fn conn(url: &str) -> MultiplexedConnection {
    Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn port_url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}/")
}

/// A random namespace on the servers at `ports`; every key holding it is removed when the
/// test ends (on each server that owns it; the others refuse the `DEL`).
struct Scratch {
    namespace: String,
    ports: Vec<u16>,
}

impl Scratch {
    fn new(urls: &[String]) -> Self {
        let ports = urls
            .iter()
            .map(|u| {
                let info = redis::IntoConnectionInfo::into_connection_info(u.as_str()).unwrap();
                match info.addr() {
                    redis::ConnectionAddr::Tcp(_, port) => *port,
                    other => panic!("a TCP URL, not {other:?}"),
                }
            })
            .collect();
        Self {
            namespace: format!(
                "keygate-test:{}:",
                keygate::KeyId::random().as_uuid().simple()
            ),
            ports,
        }
    }

    fn config(&self) -> RedisConfig {
        RedisConfig::new().namespace(self.namespace.clone())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for port in &self.ports {
            let Ok(client) = Client::open(port_url(*port)) else {
                continue;
            };
            let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
                continue;
            };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut cursor: u64 = 0;
            loop {
                let Ok((next, keys)) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("*{}*", self.namespace))
                    .arg("COUNT")
                    .arg(1000)
                    .query::<(u64, Vec<Vec<u8>>)>(&mut conn)
                else {
                    break;
                };
                for key in keys {
                    let _ = redis::cmd("DEL").arg(key).query::<()>(&mut conn);
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
    }
}

async fn cluster_store(scratch: &Scratch, feed: FeedConfig) -> RedisStore {
    let store = RedisStore::connect_cluster(cluster_urls(), scratch.config().feed(feed))
        .await
        .expect("connect to the test Redis Cluster");
    assert!(store.is_cluster());
    store
}

async fn sentinel_store(scratch: &Scratch, feed: FeedConfig) -> RedisStore {
    let store = RedisStore::connect_sentinel(
        sentinel_urls(),
        &sentinel_master(),
        scratch.config().feed(feed),
    )
    .await
    .expect("connect to the test Redis primary through Sentinel");
    assert!(!store.is_cluster());
    store
}

/// The port of the cluster primary that serves `key`'s slot, and of a replica of it.
async fn slot_owner(key: &str) -> (u16, u16) {
    let mut any = conn(&cluster_urls()[0]).await;
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut any)
        .await
        .unwrap();
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut any)
        .await
        .unwrap();
    // <id> <ip:port@bus> <flags> <master id or -> ... <slot ranges>
    let lines: Vec<Vec<&str>> = nodes
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .collect();
    let port = |fields: &[&str]| -> u16 {
        fields[1]
            .split('@')
            .next()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let primary = lines
        .iter()
        .find(|f| {
            f[2].contains("master")
                && !f[2].contains("fail")
                && f[8..].iter().any(|range| {
                    let mut ends = range.split('-');
                    let lo: i64 = ends.next().unwrap().parse().unwrap_or(-1);
                    let hi: i64 = ends.next().map_or(lo, |h| h.parse().unwrap_or(-1));
                    (lo..=hi).contains(&slot)
                })
        })
        .expect("a primary serves the slot");
    let replica = lines
        .iter()
        .find(|f| f[3] == primary[0] && !f[2].contains("fail"))
        .expect("the primary has a replica");
    (port(primary), port(replica))
}

async fn role(port: u16) -> String {
    let mut c = conn(&port_url(port)).await;
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut c).await.unwrap();
    match &role[0] {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
        redis::Value::SimpleString(s) => s.clone(),
        other => panic!("ROLE: {other:?}"),
    }
}

/// `CLUSTER FAILOVER` on the replica of the primary that holds `namespace`'s records;
/// returns once the replica is the primary.
async fn cluster_failover(namespace: &str) {
    let (primary, replica) = slot_owner(&format!("{{{namespace}}}")).await;
    let mut c = conn(&port_url(replica)).await;
    let _: () = redis::cmd("CLUSTER")
        .arg("FAILOVER")
        .query_async(&mut c)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while role(replica).await != "master" {
        assert!(Instant::now() < deadline, "CLUSTER FAILOVER did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("cluster failover: {primary} -> {replica}");
}

async fn sentinel_primary() -> u16 {
    let mut s = conn(&sentinel_urls()[0]).await;
    let (_, port): (String, u16) = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(sentinel_master())
        .query_async(&mut s)
        .await
        .unwrap();
    port
}

/// `SENTINEL FAILOVER`; returns once the sentinels name the new primary and it says so.
async fn sentinel_failover() {
    let before = sentinel_primary().await;
    let mut s = conn(&sentinel_urls()[0]).await;
    let _: () = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg(sentinel_master())
        .query_async(&mut s)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = sentinel_primary().await;
        if now != before && role(now).await == "master" {
            eprintln!("sentinel failover: {before} -> {now}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "SENTINEL FAILOVER did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills every client on `port` whose `CLIENT LIST` line passes `pick`; how many.
async fn kill_clients(port: u16, pick: impl Fn(&str) -> bool) -> usize {
    let mut c = conn(&port_url(port)).await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut killed = 0;
    for line in list.lines().filter(|l| pick(l)) {
        let id = line
            .split(' ')
            .find_map(|kv| kv.strip_prefix("id="))
            .unwrap();
        let n: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut c)
            .await
            .unwrap();
        killed += n as usize;
    }
    killed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_redis_cluster),
    ignore = "needs Redis Cluster: eval \"$(.ci/cluster.sh start)\""
)]
async fn cluster_store_conforms() {
    let _cluster = CLUSTER.lock().await;
    let scratch = Scratch::new(&cluster_urls());
    keygate::testing::run_all(Arc::new(cluster_store(&scratch, FeedConfig::new()).await)).await;
    let cached = CachedStore::new(
        cluster_store(&scratch, FeedConfig::new()).await,
        CacheConfig::new(),
    );
    keygate::testing::run_all(Arc::new(cached)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_redis_sentinel),
    ignore = "needs Redis Sentinel: eval \"$(.ci/cluster.sh start)\""
)]
async fn sentinel_store_conforms() {
    let _sentinel = SENTINEL.lock().await;
    let scratch = Scratch::new(&[port_url(21101), port_url(21102)]);
    keygate::testing::run_all(Arc::new(sentinel_store(&scratch, FeedConfig::new()).await)).await;
    let cached = CachedStore::new(
        sentinel_store(&scratch, FeedConfig::new()).await,
        CacheConfig::new(),
    );
    keygate::testing::run_all(Arc::new(cached)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_redis_cluster),
    ignore = "needs Redis Cluster: eval \"$(.ci/cluster.sh start)\""
)]
async fn cluster_keys_of_a_record_share_a_slot_and_notices_are_sharded() {
    let _cluster = CLUSTER.lock().await;
    let scratch = Scratch::new(&cluster_urls());
    let store = cluster_store(&scratch, FeedConfig::new()).await;
    let record = keygate::testing::sample_record("slot-owner");
    let id = record.id;
    store.insert(record).await.unwrap();
    let ns = &scratch.namespace;
    let mut c = store.connection();
    let mut slots = std::collections::BTreeSet::new();
    for key in [
        format!("{{{ns}}}v1:key:{id}"),
        format!("{{{ns}}}v1:created"),
        format!("{{{ns}}}v1:owner:slot-owner"),
        format!("{{{ns}}}v1:change_seq"),
        format!("{{{ns}}}v1:change_log"),
        format!("{{{ns}}}changes"),
    ] {
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        slots.insert(slot);
    }
    assert_eq!(slots.len(), 1, "one slot for every key of the layout");
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("{{{ns}}}v1:key:{id}"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(exists, 1, "the record is under the hash-tagged name");
    let seq: i64 = redis::cmd("GET")
        .arg(format!("{{{ns}}}v1:change_seq"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(seq, 1);
    // The feed subscribed with SSUBSCRIBE on the primary of that slot (Redis 7).
    let (primary, _) = slot_owner(&format!("{{{ns}}}")).await;
    let cache = Arc::new(CachedStore::new(store, CacheConfig::new()));
    assert!(cache.follow_changes().await.unwrap());
    let mut p = conn(&port_url(primary)).await;
    let channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("SHARDCHANNELS")
        .arg(format!("{{{ns}}}changes"))
        .query_async(&mut p)
        .await
        .unwrap();
    assert_eq!(channels, [format!("{{{ns}}}changes")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_redis_cluster),
    ignore = "needs Redis Cluster: eval \"$(.ci/cluster.sh start)\""
)]
async fn cluster_feed_killed_during_a_burst_of_revocations_loses_none() {
    let _cluster = CLUSTER.lock().await;
    let scratch = Scratch::new(&cluster_urls());
    let a = node(cluster_store(&scratch, FeedConfig::new()).await).await;
    let b = node(cluster_store(&scratch, FeedConfig::new()).await).await;
    let (primary, _) = slot_owner(&format!("{{{}}}", scratch.namespace)).await;
    burst(&a, &b, || async {
        // Only feeds hold sharded subscriptions: a's and b's, on that primary.
        let killed = kill_clients(primary, |line| {
            line.split(' ')
                .any(|kv| kv.strip_prefix("ssub=").is_some_and(|n| n != "0"))
        })
        .await;
        // A feed of the previous test may still be closing.
        assert!(
            killed >= 2,
            "a's and b's feed connections were killed: {killed}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_redis_sentinel),
    ignore = "needs Redis Sentinel: eval \"$(.ci/cluster.sh start)\""
)]
async fn sentinel_feed_killed_during_a_burst_of_revocations_loses_none() {
    let _sentinel = SENTINEL.lock().await;
    let scratch = Scratch::new(&[port_url(21101), port_url(21102)]);
    let a = node(sentinel_store(&scratch, FeedConfig::new()).await).await;
    let b = node(sentinel_store(&scratch, FeedConfig::new()).await).await;
    let primary = sentinel_primary().await;
    burst(&a, &b, || async {
        let name = format!("name={}", RedisStore::FEED_CLIENT_NAME);
        let killed = kill_clients(primary, |line| line.split(' ').any(|kv| kv == name)).await;
        // A feed of the previous test may still be closing.
        assert!(
            killed >= 2,
            "a's and b's feed connections were killed: {killed}"
        );
    })
    .await;
}

/// Revokes 300 keys on `a` one after another (retrying a revoke that fails while the
/// primary changes) while `b` verifies them all in a loop, and fails over once a third is
/// revoked; the last third is revoked after the failover. Then every key is revoked in the store, and `b`, once its feed is in sync,
/// accepts none of them.
async fn failover_during_revocations<F, Fut>(
    a: &Node<RedisStore>,
    b: &Node<RedisStore>,
    fresh: impl Future<Output = RedisStore>,
    failover: F,
) -> usize
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    const KEYS: usize = 300;
    let mut keys: Vec<IssuedKey> = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        keys.push(
            a.gate
                .mint(NewKey::new(format!("failover {i}"), "owner"))
                .await
                .unwrap(),
        );
    }
    heartbeats(b, 2).await;
    for issued in &keys {
        cached(b, issued.key.expose()).await;
    }
    let keys = Arc::new(keys);

    let stop = Arc::new(AtomicBool::new(false));
    let verifies = Arc::new(AtomicU64::new(0));
    let verifier = {
        let (gate, keys, stop, verifies) =
            (b.gate.clone(), keys.clone(), stop.clone(), verifies.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                for issued in keys.iter() {
                    // Any answer, a store error included while the primary changes.
                    let _ = gate.verify(issued.key.expose()).await;
                    verifies.fetch_add(1, Ordering::SeqCst);
                    // A verify of a cached key completes without awaiting anything: without
                    // this yield the loop never gives its worker back, and the revoker
                    // (woken into that worker's LIFO slot, which no other worker steals
                    // from) starves.
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    // One revoke every 5 ms: the first third before the failover, the second while it
    // runs, the last third once it is over (on the new primary).
    let done = Arc::new(AtomicUsize::new(0));
    let retried = Arc::new(AtomicUsize::new(0));
    let failed_over = Arc::new(tokio::sync::Notify::new());
    let revoker = {
        let (gate, keys, done, retried, failed_over) = (
            a.gate.clone(),
            keys.clone(),
            done.clone(),
            retried.clone(),
            failed_over.clone(),
        );
        tokio::spawn(async move {
            for (i, issued) in keys.iter().enumerate() {
                if i == 2 * KEYS / 3 {
                    failed_over.notified().await;
                }
                let deadline = Instant::now() + Duration::from_secs(30);
                while let Err(e) = gate.revoke(issued.record.id).await {
                    assert!(Instant::now() < deadline, "revoke failing for 30 s: {e:?}");
                    retried.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                done.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::SeqCst) < KEYS / 3 {
        assert!(
            !revoker.is_finished() && Instant::now() < deadline,
            "the revoker stopped or stalled after {} revokes",
            done.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let verified_before = verifies.load(Ordering::SeqCst);
    failover().await;
    let during = done.load(Ordering::SeqCst);
    failed_over.notify_one();
    revoker.await.unwrap();
    assert!(
        during > KEYS / 3,
        "revokes went on while the failover ran ({during} done when it ended)"
    );
    assert!(
        verifies.load(Ordering::SeqCst) > verified_before,
        "b verified during the failover"
    );
    stop.store(true, Ordering::SeqCst);
    verifier.await.unwrap();
    eprintln!(
        "{} revokes retried during the failover",
        retried.load(Ordering::SeqCst)
    );

    // What the store holds now (a store connected after the failover, no cache): every
    // revoke above returned Ok in the end; one the store acknowledged but Redis did not
    // keep (not replicated when the old primary was demoted) counts as lost.
    let fresh = fresh.await;
    let mut lost = 0;
    let mut held = Vec::with_capacity(KEYS);
    for issued in keys.iter() {
        let record = fresh.get(issued.record.id).await.unwrap().unwrap();
        if record.active {
            lost += 1;
        }
        held.push(!record.active);
    }
    eprintln!("{lost} acknowledged revokes lost by the store in the failover");
    // b, in sync again, agrees with the store on every key: its cache kept no key the
    // store holds revoked.
    heartbeats(b, 2).await;
    let mut accepted = Vec::new();
    for (issued, revoked) in keys.iter().zip(held) {
        let answer = settled_verify(b, issued).await;
        if revoked && !refused_as_revoked(answer) {
            accepted.push(issued.record.id);
        }
    }
    assert!(
        accepted.is_empty(),
        "revoked keys accepted on b: {accepted:?}"
    );
    eprintln!("b's cache after the failover: {:?}", stats(b));
    lost
}

/// `b`'s answer for `issued`, retried while the store is still unavailable.
async fn settled_verify(
    b: &Node<RedisStore>,
    issued: &IssuedKey,
) -> Result<keygate::Principal, keygate::VerifyError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = b.gate.verify(issued.key.expose()).await;
        match &answer {
            Err(e) if e.rejection() != Some(Rejection::Inactive) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => return answer,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_redis_cluster),
    ignore = "needs Redis Cluster: eval \"$(.ci/cluster.sh start)\""
)]
async fn a_cluster_failover_during_revocations_loses_none() {
    let _cluster = CLUSTER.lock().await;
    let scratch = Scratch::new(&cluster_urls());
    let a = node(cluster_store(&scratch, FeedConfig::new()).await).await;
    let b = node(cluster_store(&scratch, FeedConfig::new()).await).await;
    let namespace = scratch.namespace.clone();
    let fresh = cluster_store(&scratch, FeedConfig::new());
    let lost = failover_during_revocations(&a, &b, fresh, || async move {
        cluster_failover(&namespace).await;
    })
    .await;
    // CLUSTER FAILOVER waits for the replica to catch up before it takes over.
    assert_eq!(
        lost, 0,
        "a manual cluster failover loses no acknowledged write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_redis_sentinel),
    ignore = "needs Redis Sentinel: eval \"$(.ci/cluster.sh start)\""
)]
async fn a_sentinel_failover_during_revocations_loses_none() {
    let _sentinel = SENTINEL.lock().await;
    let scratch = Scratch::new(&[port_url(21101), port_url(21102)]);
    let a = node(sentinel_store(&scratch, FeedConfig::new()).await).await;
    let b = node(sentinel_store(&scratch, FeedConfig::new()).await).await;
    assert_eq!(
        RedisConfig::new().replicas,
        1,
        "writes wait for a replica by default"
    );
    let fresh = sentinel_store(&scratch, FeedConfig::new());
    // Sentinel promotes the replica before it demotes the old primary, and Redis
    // replicates asynchronously: a revoke is acknowledged only once WAIT saw the replica
    // hold it, so every revoke that returned Ok survives the failover, and b refuses it.
    let lost = failover_during_revocations(&a, &b, fresh, sentinel_failover).await;
    assert_eq!(lost, 0, "acknowledged revokes lost in a Sentinel failover");
}

/// Behind Sentinel, a write no replica confirms in time is an error, not a success: with
/// more replicas asked for than the test set-up has (one), every key-management write
/// fails with `StoreError::Unreplicated` (it was made on the primary, which the caller
/// cannot count on), while reads and last-used batches do not wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_redis_sentinel),
    ignore = "needs Redis Sentinel: eval \"$(.ci/cluster.sh start)\""
)]
async fn a_sentinel_write_no_replica_confirms_is_an_error() {
    let _sentinel = SENTINEL.lock().await;
    let scratch = Scratch::new(&[port_url(21101), port_url(21102)]);
    let config = scratch
        .config()
        .replicas(2)
        .replication_timeout(Duration::from_millis(200));
    let store = RedisStore::connect_sentinel(sentinel_urls(), &sentinel_master(), config)
        .await
        .unwrap();
    let record = keygate::testing::sample_record("owner");
    let id = record.id;
    match store.insert(record.clone()).await {
        Err(StoreError::Unreplicated { acked, wanted }) => {
            assert_eq!((acked, wanted), (1, 2));
        }
        other => panic!("insert: {other:?}"),
    }
    // Made on the primary all the same: reads see it, and do not wait.
    assert!(store.get(id).await.unwrap().is_some());
    store
        .record_last_used(&[(id, chrono::Utc::now())])
        .await
        .unwrap();
    assert!(matches!(
        store.update(id, &KeyPatch::new().active(false)).await,
        Err(StoreError::Unreplicated {
            acked: 1,
            wanted: 2
        })
    ));
    assert!(matches!(
        store.delete(id).await,
        Err(StoreError::Unreplicated {
            acked: 1,
            wanted: 2
        })
    ));
    // Nothing written, nothing to wait for: a second delete finds no record.
    assert!(!store.delete(id).await.unwrap());

    // With the one replica there is, the same writes succeed.
    let store = RedisStore::connect_sentinel(
        sentinel_urls(),
        &sentinel_master(),
        scratch
            .config()
            .replication_timeout(support::bound(Duration::from_secs(1))),
    )
    .await
    .unwrap();
    store.insert(record).await.unwrap();
    assert!(
        !store
            .update(id, &KeyPatch::new().active(false))
            .await
            .unwrap()
            .unwrap()
            .active
    );
    assert!(store.delete(id).await.unwrap());
}
