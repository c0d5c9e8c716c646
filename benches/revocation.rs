//! Revocation across nodes and what the change sequence costs (issue 10). Run by
//! `bash benches/revocation.sh`, which prints the tables of benches/README.md; one mode per
//! invocation (the first argument):
//!
//! - `latency <postgres|redis|redis-cluster> <trials>`: two nodes with the **default settings**
//!   (`CacheConfig::new()`: 5 s TTL; `FeedConfig::new()`: 250 ms heartbeat + 250 ms
//!   deadline), node B connected through a local TCP proxy. Each trial mints a key on A,
//!   makes B serve it from its cache, revokes it on A and times, from the moment `revoke`
//!   was called, until B's first refusal (B verifies every millisecond). Every 4th trial
//!   first stalls B's feed connection (the proxy stops forwarding it, closing nothing),
//!   waits a random 0-250 ms, then revokes; the proxy resumes after the trial and the next
//!   trial waits until B's feed is back in sync. Prints p50/p99/max for all trials, the
//!   normal ones and the dropped-connection ones. On Redis Cluster
//!   (`KEYGATE_TEST_REDIS_CLUSTER_URLS`, `.ci/cluster.sh`) B talks to every node, so no one
//!   proxy sits in its path: every 4th trial instead kills the feed connections
//!   (`CLIENT KILL` of the sharded subscribers on the namespace's primary), then waits.
//! - `write-cost <postgres|redis> <writes>`: the cost of the change log per write, both
//!   sides in alternating order in one run on one row: PostgreSQL, the store's update
//!   statement with the log (counter row + log insert + trim check + NOTIFY `<seq>:<id>`)
//!   against the same update with only the NOTIFY (keygate before the log); Redis, a
//!   script that SETs the record and PUBLISHes against one that also INCRs the counter
//!   and ZADDs the log entry. Both copy the SQL / Lua of `src/store/postgres/mod.rs` and
//!   `src/store/redis/scripts.rs`. Then the same through the store (`PostgresStore::update`,
//!   `RedisStore::update`, a full read-modify-write) for scale.
//! - `memory <records|cache> <n>`: resident memory after building `n` records (each a
//!   fresh allocation, as decoded from a database row, like `testing::sample_record`), and
//!   after loading `n` such records into a `CachedStore` through `get` (its inner store
//!   builds a fresh record per read, so the cache holds `n` distinct records). Run in
//!   separate processes by the script; the difference between the two is the cache's own
//!   cost per key.
//! - `throughput <n>`: `n` keys inserted into PostgreSQL (in one `INSERT ... SELECT
//!   generate_series`, under an owner unique to the run, deleted at the end), a
//!   `CachedStore<PostgresStore>` (capacity 100 000) warmed with a hot set of 10 000 of
//!   them; then `get`s where 99 of every 100 go to the hot set and 1 to a random key of
//!   the `n` (mostly not cached, so it reads PostgreSQL), against the same loop with every
//!   lookup in the hot set (100% hits), interleaved in chunks of 10 000 lookups, each chunk
//!   spread over 64 concurrent tasks (as requests on a server; the pool has 10 connections).
//!
//! Needs `KEYGATE_TEST_POSTGRES_URL` / `KEYGATE_TEST_REDIS_URL`.

// Benchmark harness: a failed setup step stops the run loudly, and fixtures index and
// count over small known values.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

#[path = "../tests/support/stall.rs"]
#[allow(dead_code)]
mod stall;

use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use keygate::sqlx::{self, Row};
use keygate::{
    CacheConfig, CachedStore, KeyId, KeyPatch, KeyRecord, KeyStore, Keygate, MemoryStore, NewKey,
    Pepper, PostgresConfig, PostgresStore, RedisConfig, RedisStore, Rejection, StoreError,
};
use stall::StallProxy;

fn pepper() -> Pepper {
    Pepper::new(120, [12u8; 32]).unwrap()
}

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set"))
}

fn unique(label: &str) -> String {
    format!("{label}-{}", KeyId::random())
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let n = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    match args.first().map(String::as_str) {
        Some("latency") => rt.block_on(latency(&args[1], n(2, 200))),
        Some("write-cost") => rt.block_on(write_cost(&args[1], n(2, 2000))),
        Some("memory") => rt.block_on(memory(&args[1], n(2, 1_000_000))),
        Some("throughput") => rt.block_on(throughput(n(1, 1_000_000))),
        _ => eprintln!("usage: revocation latency|write-cost|memory|throughput ... (see benches/revocation.rs)"),
    }
}

// ---------------------------------------------------------------------------------------
// latency

struct Node<S: KeyStore> {
    cache: Arc<CachedStore<S>>,
    gate: Keygate,
}

async fn node<S: KeyStore>(store: S) -> Node<S> {
    let cache = Arc::new(CachedStore::new(store, CacheConfig::new()));
    assert!(cache.follow_changes().await.unwrap());
    let gate = Keygate::builder(cache.clone(), pepper())
        .prefix("rev")
        .build()
        .unwrap();
    Node { cache, gate }
}

fn addr(host: &str, port: u16) -> std::net::SocketAddr {
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    format!("{host}:{port}").parse().unwrap()
}

async fn latency(backend: &str, trials: usize) {
    match backend {
        "postgres" => {
            let url = env("KEYGATE_TEST_POSTGRES_URL");
            let a_app = unique("kg-rev-a");
            let a = node(
                PostgresStore::connect_with(&url, PostgresConfig::new().application_name(&a_app))
                    .await
                    .unwrap(),
            )
            .await;
            let b_app = unique("kg-rev-b");
            let options: PgConnectOptions = url.parse().unwrap();
            let upstream = addr(options.get_host(), options.get_port());
            let proxy = StallProxy::start(upstream, format!("{b_app}-listener").as_bytes()).await;
            let pool = PgPoolOptions::new()
                .max_connections(10)
                .connect_with(
                    options
                        .host("127.0.0.1")
                        .port(proxy.addr().port())
                        .application_name(&b_app),
                )
                .await
                .unwrap();
            let b = node(PostgresStore::from_pool(pool)).await;
            run_trials("PostgreSQL", &a, &b, &Dropper::Stall(&proxy), trials).await;
        }
        "redis" => {
            let url = env("KEYGATE_TEST_REDIS_URL");
            let ns = format!("keygate-bench:{}:", KeyId::random().as_uuid().simple());
            let config = RedisConfig::new().namespace(ns.clone());
            let a = node(
                RedisStore::connect_with(url.as_str(), config.clone())
                    .await
                    .unwrap(),
            )
            .await;
            let info =
                keygate::redis::IntoConnectionInfo::into_connection_info(url.as_str()).unwrap();
            let keygate::redis::ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
                panic!("needs a TCP Redis URL");
            };
            let upstream = addr(&host, port);
            let proxy = StallProxy::start(upstream, RedisStore::FEED_CLIENT_NAME.as_bytes()).await;
            let proxied = format!("redis://{}/", proxy.addr());
            let b = node(RedisStore::connect_with(proxied, config).await.unwrap()).await;
            run_trials("Redis", &a, &b, &Dropper::Stall(&proxy), trials).await;
            // Clean up the namespace.
            let mut conn = keygate::redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let keys: Vec<String> = keygate::redis::cmd("KEYS")
                .arg(format!("{ns}*"))
                .query_async(&mut conn)
                .await
                .unwrap();
            if !keys.is_empty() {
                let _: () = keygate::redis::cmd("DEL")
                    .arg(keys)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        }
        "redis-cluster" => {
            let urls: Vec<String> = env("KEYGATE_TEST_REDIS_CLUSTER_URLS")
                .split(',')
                .map(str::to_owned)
                .collect();
            let ns = format!("keygate-bench:{}:", KeyId::random().as_uuid().simple());
            let config = RedisConfig::new().namespace(ns.clone());
            let a = node(
                RedisStore::connect_cluster(urls.clone(), config.clone())
                    .await
                    .unwrap(),
            )
            .await;
            let b = node(
                RedisStore::connect_cluster(urls.clone(), config)
                    .await
                    .unwrap(),
            )
            .await;
            let primary = slot_primary(&urls[0], &format!("{{{ns}}}")).await;
            run_trials(
                "Redis Cluster",
                &a,
                &b,
                &Dropper::KillFeeds(primary.clone()),
                trials,
            )
            .await;
            // The records sit in the namespace's slot, on that primary.
            let mut conn = keygate::redis::Client::open(format!("redis://{primary}/"))
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let keys: Vec<String> = keygate::redis::cmd("KEYS")
                .arg(format!("{{{ns}}}*"))
                .query_async(&mut conn)
                .await
                .unwrap();
            for key in keys {
                let _: () = keygate::redis::cmd("DEL")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        }
        other => panic!("unknown backend {other}"),
    }
}

/// `host:port` of the cluster primary serving `key`'s slot, asked of the node at `url`.
async fn slot_primary(url: &str, key: &str) -> String {
    let mut conn = keygate::redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let slot: i64 = keygate::redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let slots: Vec<(i64, i64, (String, i64))> = {
        let raw: Vec<keygate::redis::Value> = keygate::redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await
            .unwrap();
        raw.into_iter()
            .map(|range| {
                let keygate::redis::Value::Array(parts) = range else {
                    panic!("CLUSTER SLOTS: {range:?}");
                };
                let int = |v: &keygate::redis::Value| match v {
                    keygate::redis::Value::Int(i) => *i,
                    other => panic!("{other:?}"),
                };
                let keygate::redis::Value::Array(node) = &parts[2] else {
                    panic!("CLUSTER SLOTS node");
                };
                let host = match &node[0] {
                    keygate::redis::Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
                    other => panic!("{other:?}"),
                };
                (int(&parts[0]), int(&parts[1]), (host, int(&node[1])))
            })
            .collect()
    };
    let (_, _, (host, port)) = slots
        .into_iter()
        .find(|(lo, hi, _)| (*lo..=*hi).contains(&slot))
        .expect("a primary serves the slot");
    format!("{host}:{port}")
}

/// How a trial cuts B's feed: a proxy that silently stops forwarding it, or (Redis
/// Cluster, where B speaks to every node and no one proxy sits in its path) `CLIENT KILL`
/// of every sharded subscriber on the primary of the namespace's slot (A's feed too).
enum Dropper<'a> {
    Stall(&'a StallProxy),
    KillFeeds(String),
}

impl Dropper<'_> {
    async fn cut(&self) {
        match self {
            Self::Stall(proxy) => proxy.stall(),
            Self::KillFeeds(primary) => {
                let mut conn = keygate::redis::Client::open(format!("redis://{primary}/"))
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap();
                let list: String = keygate::redis::cmd("CLIENT")
                    .arg("LIST")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                for line in list.lines() {
                    let sharded = line
                        .split(' ')
                        .any(|kv| kv.strip_prefix("ssub=").is_some_and(|n| n != "0"));
                    if let (true, Some(id)) = (
                        sharded,
                        line.split(' ').find_map(|kv| kv.strip_prefix("id=")),
                    ) {
                        let _: i64 = keygate::redis::cmd("CLIENT")
                            .arg("KILL")
                            .arg("ID")
                            .arg(id)
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                    }
                }
            }
        }
    }

    fn resume(&self) {
        if let Self::Stall(proxy) = self {
            proxy.resume();
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Self::Stall(_) => "feed silently dropped before the revoke",
            Self::KillFeeds(_) => "feed connection killed before the revoke",
        }
    }
}

async fn in_sync<S: KeyStore>(b: &Node<S>) {
    let start = b.cache.stats().syncs;
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.cache.stats().syncs < start + 2 {
        assert!(Instant::now() < deadline, "B's feed never came back");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn run_trials<S: KeyStore, T: KeyStore>(
    label: &str,
    a: &Node<S>,
    b: &Node<T>,
    proxy: &Dropper<'_>,
    trials: usize,
) {
    let mut normal = Vec::new();
    let mut dropped = Vec::new();
    for trial in 0..trials {
        let drop_feed = trial % 4 == 3;
        let issued = a.gate.mint(NewKey::new("bench", "owner")).await.unwrap();
        let key = issued.key.expose();
        // B past the insert's own notice, then serving the key from memory.
        in_sync(b).await;
        b.gate.verify(key).await.unwrap();
        let hits = b.cache.stats().hits;
        b.gate.verify(key).await.unwrap();
        assert!(
            b.cache.stats().hits > hits,
            "B serves the key from its cache"
        );
        if drop_feed {
            proxy.cut().await;
            let wait = u64::from(KeyId::random().as_uuid().as_bytes()[0]) % 251;
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        let started = Instant::now();
        a.gate.revoke(issued.record.id).await.unwrap();
        loop {
            match b.gate.verify(key).await {
                Err(e) if e.rejection() == Some(Rejection::Inactive) => break,
                Ok(_) => {}
                Err(other) => panic!("unexpected answer on B: {other:?}"),
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "B never refused"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let took = started.elapsed();
        if drop_feed {
            dropped.push(took);
            proxy.resume();
        } else {
            normal.push(took);
        }
    }
    let all: Vec<Duration> = normal.iter().chain(&dropped).copied().collect();
    row(&format!("{label}, all trials"), all);
    row(&format!("{label}, feed connected"), normal);
    row(&format!("{label}, {}", proxy.label()), dropped);
}

fn pick(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn row(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    if samples.is_empty() {
        return;
    }
    println!(
        "| {label} | {} | {} | {} | {} | {} |",
        samples.len(),
        ms(pick(&samples, 0.5)),
        ms(pick(&samples, 0.99)),
        ms(samples[samples.len() - 1]),
        if pick(&samples, 0.99) <= Duration::from_secs(1) {
            "pass"
        } else {
            "FAIL"
        }
    );
}

// ---------------------------------------------------------------------------------------
// write cost

const PG_NOTIFY_ONLY: &str = "WITH written AS (UPDATE keygate_keys SET updated_at = now() \
     WHERE id = $1 RETURNING id) \
     SELECT pg_notify('keygate_changes', id::text) FROM written";

const PG_WITH_LOG: &str = "WITH written AS (UPDATE keygate_keys SET updated_at = now() \
     WHERE id = $1 RETURNING id), \
     numbered AS (UPDATE keygate_change_seq SET seq = seq + 1 \
         WHERE EXISTS (SELECT 1 FROM written) RETURNING seq), \
     logged AS (INSERT INTO keygate_changes (seq, key_id) \
         SELECT numbered.seq, written.id FROM numbered, written RETURNING seq, key_id), \
     trimmed AS (DELETE FROM keygate_changes \
         WHERE seq <= (SELECT seq FROM logged) - 100000 \
           AND (SELECT seq FROM logged) % 1024 = 0) \
     SELECT pg_notify('keygate_changes', seq::text || ':' || key_id::text) FROM logged";

const REDIS_PUBLISH_ONLY: &str = "redis.call('SET', KEYS[1], ARGV[1]) \
     redis.call('PUBLISH', ARGV[2], ARGV[3]) return 1";

const REDIS_WITH_LOG: &str = "redis.call('SET', KEYS[1], ARGV[1]) \
     local seq = redis.call('INCR', KEYS[2]) \
     local entry = string.format('%d', seq) .. ':' .. ARGV[3] \
     redis.call('ZADD', KEYS[3], seq, entry) \
     if seq % 1024 == 0 then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', seq - 100000) end \
     redis.call('PUBLISH', ARGV[2], entry) return 1";

fn quantiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (pick(&v, 0.5), pick(&v, 0.99))
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn cost_row(label: &str, with: Vec<Duration>, without: Vec<Duration>) {
    let n = with.len();
    let (w50, w99) = quantiles(with);
    let (o50, o99) = quantiles(without);
    println!(
        "| {label} | {n} + {n} | {} | {} | {} | {} | {:.2}× |",
        us(o50),
        us(w50),
        us(o99),
        us(w99),
        w50.as_secs_f64() / o50.as_secs_f64()
    );
}

async fn write_cost(backend: &str, writes: usize) {
    let record = keygate::testing::sample_record(&unique("bench-write"));
    let id = record.id;
    match backend {
        "postgres" => {
            let url = env("KEYGATE_TEST_POSTGRES_URL");
            let store = PostgresStore::connect(&url).await.unwrap();
            store.insert(record).await.unwrap();
            let pool = store.pool().clone();
            let (mut with, mut without) = (Vec::new(), Vec::new());
            for i in 0..writes * 2 {
                let sql = if i % 2 == 0 {
                    PG_WITH_LOG
                } else {
                    PG_NOTIFY_ONLY
                };
                let started = Instant::now();
                sqlx::query(sql)
                    .bind(*id.as_uuid())
                    .execute(&pool)
                    .await
                    .unwrap();
                let took = started.elapsed();
                if i % 2 == 0 {
                    with.push(took)
                } else {
                    without.push(took)
                }
            }
            cost_row(
                "PostgreSQL: update statement, with the log vs NOTIFY only",
                with,
                without,
            );
            let full = store_updates(&store, id, writes / 4).await;
            println!("| PostgreSQL: `PostgresStore::update` (read-modify-write, with the log), for scale | {} | — | {} | — | {} | — |", full.len(), us(quantiles(full.clone()).0), us(quantiles(full).1));
            store.delete(id).await.unwrap();
            let seq: i64 = sqlx::query("SELECT seq FROM keygate_change_seq")
                .fetch_one(&pool)
                .await
                .unwrap()
                .get(0);
            eprintln!("change sequence now at {seq}");
        }
        "redis" => {
            let url = env("KEYGATE_TEST_REDIS_URL");
            let ns = format!("keygate-bench:{}:", KeyId::random().as_uuid().simple());
            let store =
                RedisStore::connect_with(url.as_str(), RedisConfig::new().namespace(ns.clone()))
                    .await
                    .unwrap();
            store.insert(record).await.unwrap();
            let mut conn = store.connection();
            let with_log = keygate::redis::Script::new(REDIS_WITH_LOG);
            let publish_only = keygate::redis::Script::new(REDIS_PUBLISH_ONLY);
            let body = "x".repeat(400); // about a record's JSON
            let (mut with, mut without) = (Vec::new(), Vec::new());
            for i in 0..writes * 2 {
                let started = Instant::now();
                let _: i64 = if i % 2 == 0 {
                    with_log
                        .key(format!("{ns}bench:rec"))
                        .key(format!("{ns}bench:seq"))
                        .key(format!("{ns}bench:log"))
                        .arg(&body)
                        .arg(format!("{ns}bench:chan"))
                        .arg(id.to_string())
                        .invoke_async(&mut conn)
                        .await
                        .unwrap()
                } else {
                    publish_only
                        .key(format!("{ns}bench:rec"))
                        .arg(&body)
                        .arg(format!("{ns}bench:chan"))
                        .arg(id.to_string())
                        .invoke_async(&mut conn)
                        .await
                        .unwrap()
                };
                let took = started.elapsed();
                if i % 2 == 0 {
                    with.push(took)
                } else {
                    without.push(took)
                }
            }
            cost_row(
                "Redis: write script, with INCR + ZADD vs SET + PUBLISH only",
                with,
                without,
            );
            let full = store_updates(&store, id, writes / 4).await;
            println!("| Redis: `RedisStore::update` (read, then a CAS script with the log), for scale | {} | — | {} | — | {} | — |", full.len(), us(quantiles(full.clone()).0), us(quantiles(full).1));
            store.delete(id).await.unwrap();
            let keys: Vec<String> = keygate::redis::cmd("KEYS")
                .arg(format!("{ns}*"))
                .query_async(&mut conn)
                .await
                .unwrap();
            if !keys.is_empty() {
                let _: () = keygate::redis::cmd("DEL")
                    .arg(keys)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        }
        other => panic!("unknown backend {other}"),
    }
}

async fn store_updates(store: &impl KeyStore, id: KeyId, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        store
            .update(id, &KeyPatch::new().active(i % 2 == 0))
            .await
            .unwrap();
        times.push(started.elapsed());
    }
    times
}

// ---------------------------------------------------------------------------------------
// memory

/// Resident set size, in bytes (Linux).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// A store that builds a fresh record for every read, as a database decode does.
struct Fresh;

#[async_trait::async_trait]
impl KeyStore for Fresh {
    async fn insert(&self, _: KeyRecord) -> Result<(), StoreError> {
        Ok(())
    }
    async fn get(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let mut record = keygate::testing::sample_record("owner-0001");
        record.id = id;
        Ok(Some(Arc::new(record)))
    }
    async fn update(&self, _: KeyId, _: &KeyPatch) -> Result<Option<KeyRecord>, StoreError> {
        Ok(None)
    }
    async fn delete(&self, _: KeyId) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn list(&self, _: &keygate::ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(Vec::new())
    }
    async fn record_last_used(
        &self,
        _: &[(KeyId, keygate::chrono::DateTime<keygate::chrono::Utc>)],
    ) -> Result<(), StoreError> {
        Ok(())
    }
    async fn remember_pepper(
        &self,
        _: u32,
        _: keygate::PepperFingerprint,
    ) -> Result<Option<keygate::PepperFingerprint>, StoreError> {
        Ok(None)
    }
}

async fn memory(what: &str, n: usize) {
    let ids: Vec<KeyId> = (0..n).map(|_| KeyId::random()).collect();
    let before = rss();
    match what {
        "records" => {
            let mut held = Vec::with_capacity(n);
            for id in &ids {
                held.push(Fresh.get(*id).await.unwrap().unwrap());
            }
            let after = rss();
            println!("records {n} {}", after.saturating_sub(before));
            std::hint::black_box(held);
        }
        "cache" => {
            let cache = CachedStore::new(
                Fresh,
                CacheConfig::new()
                    .capacity(n)
                    .ttl(Duration::from_secs(3600)),
            );
            for id in &ids {
                cache.get(*id).await.unwrap();
            }
            let after = rss();
            println!(
                "cache {n} {} entries={}",
                after.saturating_sub(before),
                cache.stats().entries
            );
            std::hint::black_box(cache);
        }
        "memorystore" => {
            let store = MemoryStore::new();
            for id in &ids {
                let mut record = keygate::testing::sample_record("owner-0001");
                record.id = *id;
                store.insert(record).await.unwrap();
            }
            let after = rss();
            println!("memorystore {n} {}", after.saturating_sub(before));
            std::hint::black_box(store);
        }
        other => panic!("unknown memory mode {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// throughput

async fn throughput(n: usize) {
    let url = env("KEYGATE_TEST_POSTGRES_URL");
    let store = PostgresStore::connect(&url).await.unwrap();
    let owner = unique("bench-many");
    let started = Instant::now();
    // One statement: n rows with random ids, a fixed dummy hash, this run's owner.
    sqlx::query(
        "INSERT INTO keygate_keys (id, format, hash_version, hash_digest, name, owner_id, \
         created_at, updated_at, active, metadata, hash_scheme) \
         SELECT gen_random_uuid(), 'opaque', 1, decode(repeat('ab', 32), 'hex'), 'bulk', $1, \
                now(), now(), TRUE, '{}'::jsonb, 'bound' \
         FROM generate_series(1, $2)",
    )
    .bind(&owner)
    .bind(n as i64)
    .execute(store.pool())
    .await
    .unwrap();
    let ids: Vec<KeyId> = sqlx::query("SELECT id FROM keygate_keys WHERE owner_id = $1")
        .bind(&owner)
        .fetch_all(store.pool())
        .await
        .unwrap()
        .iter()
        .map(|row| KeyId::from(row.get::<keygate::uuid::Uuid, _>(0)))
        .collect();
    eprintln!(
        "inserted and read back {} keys in {:?}",
        ids.len(),
        started.elapsed()
    );
    let cache = CachedStore::new(
        store.clone(),
        CacheConfig::new().ttl(Duration::from_secs(3600)),
    );
    let hot: Vec<KeyId> = ids.iter().take(10_000).copied().collect();
    for id in &hot {
        cache.get(*id).await.unwrap().unwrap();
    }
    // 64 concurrent tasks per chunk (as requests on a server), each with its own xorshift.
    const CHUNK: usize = 10_000;
    const TASKS: usize = 64;
    let cache = Arc::new(cache);
    let (ids, hot) = (Arc::new(ids), Arc::new(hot));
    let (mut mixed, mut hits_only) = (Duration::ZERO, Duration::ZERO);
    let (mut mixed_n, mut hits_n) = (0usize, 0usize);
    let loads_before = cache.stats().loads;
    for round in 0..20u64 {
        for side in [round % 2, 1 - round % 2] {
            let started = Instant::now();
            let tasks: Vec<_> = (0..TASKS as u64)
                .map(|t| {
                    let (cache, ids, hot) = (cache.clone(), ids.clone(), hot.clone());
                    let mut state = 0x2545_F491_4F6C_DD1Du64 ^ (round << 32 | t << 1 | side);
                    tokio::spawn(async move {
                        let mut next = move || {
                            state ^= state << 13;
                            state ^= state >> 7;
                            state ^= state << 17;
                            state
                        };
                        for i in 0..CHUNK / TASKS {
                            let _ = i;
                            let id = if side == 0 && next() % 100 == 0 {
                                ids[(next() as usize) % ids.len()]
                            } else {
                                hot[(next() as usize) % hot.len()]
                            };
                            std::hint::black_box(cache.get(id).await.unwrap());
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            let took = started.elapsed();
            let done = CHUNK / TASKS * TASKS;
            if side == 0 {
                mixed += took;
                mixed_n += done;
            } else {
                hits_only += took;
                hits_n += done;
            }
        }
    }
    let stats = cache.stats();
    let mixed_rate = mixed_n as f64 / mixed.as_secs_f64();
    let hit_rate = hits_n as f64 / hits_only.as_secs_f64();
    println!(
        "| {} keys in PostgreSQL, `CachedStore::get` from 64 tasks, 99% of lookups in a cached hot set of 10 000, 1% on random keys | {:.0}/s | {:.0}/s (100% hits) | {:.3}× | {} store reads ({:.2}% of the 99% side's lookups) |",
        ids.len(),
        mixed_rate,
        hit_rate,
        mixed_rate / hit_rate,
        stats.loads - loads_before,
        100.0 * (stats.loads - loads_before) as f64 / mixed_n as f64
    );
    sqlx::query("DELETE FROM keygate_keys WHERE owner_id = $1")
        .bind(&owner)
        .execute(store.pool())
        .await
        .unwrap();
}
