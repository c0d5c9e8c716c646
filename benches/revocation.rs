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
//!   trial waits until B's feed is back in sync. Every 4th trial from the second instead
//!   has the server close B's feed connection (`pg_terminate_backend`, `CLIENT KILL`)
//!   0-50 ms before the revoke, so the revoke lands while the feed reconnects. Prints
//!   p50/p99/max for all trials and for each kind. `redis-cluster`
//!   (`KEYGATE_TEST_REDIS_CLUSTER_URLS`, `.ci/cluster.sh`): B talks to every node, so no
//!   one proxy sits in its path and there are no stalled trials (those are normal ones);
//!   the killed ones `CLIENT KILL` the sharded subscribers on the namespace's primary.
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
//! - `scale <n> <hot>` (run by `bash benches/scale.sh`, on an empty database of its own):
//!   `n` real opaque keys, each a pure function of (run seed, index) so the bench can
//!   rebuild any plaintext, with their HMACs computed here, streamed in by `COPY` (indexes
//!   dropped and rebuilt around it); then full `Keygate::verify`s through a
//!   `CachedStore<PostgresStore>` (capacity `2 * hot`) warmed with `hot` of them: 99% to the
//!   hot set and 1% to any of the `n`, against 100% to the hot set, interleaved in chunks of
//!   10 000 verifies over 64 tasks. Also the cost of one miss (`PostgresStore::get`) with
//!   1e3 keys in the table (before the load) and with `n`, and the resident-set growth of
//!   warming the hot set. Fails if a real key is refused or a wrong secret accepted.
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
        Some("scale") => rt.block_on(scale(n(1, 10_000_000) as u64, n(2, 100_000) as u64)),
        _ => eprintln!("usage: revocation latency|write-cost|memory|throughput|scale ... (see benches/revocation.rs)"),
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
            let killer = Killer::Postgres {
                url: url.clone(),
                listener: format!("{b_app}-listener"),
            };
            run_trials("PostgreSQL", &a, &b, Some(&proxy), &killer, trials).await;
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
            let killer = Killer::Redis { url: url.clone() };
            run_trials("Redis", &a, &b, Some(&proxy), &killer, trials).await;
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
            let killer = Killer::RedisCluster {
                primary: primary.clone(),
            };
            run_trials("Redis Cluster", &a, &b, None, &killer, trials).await;
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
    use keygate::redis::Value;
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
    let ranges: Vec<Value> = keygate::redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await
        .unwrap();
    for range in ranges {
        let Value::Array(parts) = range else {
            panic!("CLUSTER SLOTS: {range:?}");
        };
        let (Value::Int(lo), Value::Int(hi), Value::Array(node)) =
            (&parts[0], &parts[1], &parts[2])
        else {
            panic!("CLUSTER SLOTS: {parts:?}");
        };
        if (*lo..=*hi).contains(&slot) {
            let (Value::BulkString(host), Value::Int(port)) = (&node[0], &node[1]) else {
                panic!("CLUSTER SLOTS node: {node:?}");
            };
            return format!("{}:{port}", String::from_utf8(host.clone()).unwrap());
        }
    }
    panic!("no primary serves slot {slot}");
}

async fn in_sync<S: KeyStore>(b: &Node<S>) {
    let start = b.cache.stats().syncs;
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.cache.stats().syncs < start + 2 {
        assert!(Instant::now() < deadline, "B's feed never came back");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Closes node B's feed connection from the server's side (as a server restart, a
/// failover or an idle-connection reaper would).
enum Killer {
    /// `pg_terminate_backend` of the connection named `listener`.
    Postgres { url: String, listener: String },
    /// `CLIENT KILL ADDR` of every feed connection the proxy has seen.
    Redis { url: String },
    /// `CLIENT KILL ID` of every sharded subscriber on the cluster primary `primary`
    /// (`host:port`) of the namespace's slot: B's feed and A's.
    RedisCluster { primary: String },
}

impl Killer {
    async fn kill(&self, proxy: Option<&StallProxy>) {
        match self {
            Killer::RedisCluster { primary } => {
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
                let mut killed = 0;
                for line in list.lines() {
                    let sharded = line
                        .split(' ')
                        .any(|kv| kv.strip_prefix("ssub=").is_some_and(|n| n != "0"));
                    if let (true, Some(id)) = (
                        sharded,
                        line.split(' ').find_map(|kv| kv.strip_prefix("id=")),
                    ) {
                        killed += keygate::redis::cmd("CLIENT")
                            .arg("KILL")
                            .arg("ID")
                            .arg(id)
                            .query_async::<i64>(&mut conn)
                            .await
                            .unwrap_or(0);
                    }
                }
                assert!(killed >= 1, "B's feed was killed");
            }
            Killer::Postgres { url, listener } => {
                use keygate::sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                let killed: Vec<bool> = sqlx::query_scalar(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = $1",
                )
                .bind(listener)
                .fetch_all(&mut conn)
                .await
                .unwrap();
                // Normally one; a connection the feed gave up in a stalled trial may
                // linger until the proxy drains it.
                assert!(
                    !killed.is_empty() && killed.iter().all(|k| *k),
                    "B's feed was killed"
                );
            }
            Killer::Redis { url } => {
                let mut conn = keygate::redis::Client::open(url.as_str())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap();
                let mut killed = 0;
                for addr in proxy.expect("Redis trials have a proxy").marked() {
                    // Connections already gone answer an error.
                    killed += keygate::redis::cmd("CLIENT")
                        .arg("KILL")
                        .arg("ADDR")
                        .arg(addr.to_string())
                        .arg("SKIPME")
                        .arg("no")
                        .query_async::<i64>(&mut conn)
                        .await
                        .unwrap_or(0);
                }
                assert!(killed >= 1, "B's feed was killed");
            }
        }
    }
}

async fn run_trials<S: KeyStore, T: KeyStore>(
    label: &str,
    a: &Node<S>,
    b: &Node<T>,
    proxy: Option<&StallProxy>,
    killer: &Killer,
    trials: usize,
) {
    let mut normal = Vec::new();
    let mut dropped = Vec::new();
    let mut killed = Vec::new();
    for trial in 0..trials {
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
        let random = u64::from(KeyId::random().as_uuid().as_bytes()[0]);
        match trial % 4 {
            3 => {
                if let Some(proxy) = proxy {
                    proxy.stall();
                }
                tokio::time::sleep(Duration::from_millis(random % 251)).await;
            }
            1 => {
                killer.kill(proxy).await;
                tokio::time::sleep(Duration::from_millis(random % 51)).await;
            }
            _ => {}
        }
        let started = Instant::now();
        a.gate.revoke(issued.record.id).await.unwrap();
        // The revoke committed before `revoke` returned: a lookup that started later than
        // `returned + lease` and still accepted the key would break the documented bound.
        let returned = Instant::now();
        let mut last_accepted = None;
        loop {
            let asked = Instant::now();
            match b.gate.verify(key).await {
                Err(e) if e.rejection() == Some(Rejection::Inactive) => break,
                Ok(_) => last_accepted = Some(asked),
                Err(other) => panic!("unexpected answer on B: {other:?}"),
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "B never refused"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let took = started.elapsed();
        let late = last_accepted.map_or(Duration::ZERO, |t| t.saturating_duration_since(returned));
        let took = (took, late);
        match trial % 4 {
            3 if proxy.is_some() => {
                dropped.push(took);
                proxy.into_iter().for_each(StallProxy::resume);
            }
            1 => killed.push(took),
            _ => normal.push(took),
        }
    }
    let all: Vec<(Duration, Duration)> = normal
        .iter()
        .chain(&dropped)
        .chain(&killed)
        .copied()
        .collect();
    row(&format!("{label}, all trials"), all);
    row(&format!("{label}, feed connected"), normal);
    row(
        &format!("{label}, feed silently dropped 0-250 ms before the revoke"),
        dropped,
    );
    row(
        &format!("{label}, feed connection killed by the server 0-50 ms before the revoke"),
        killed,
    );
}

fn pick(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn row(label: &str, trials: Vec<(Duration, Duration)>) {
    if trials.is_empty() {
        return;
    }
    let late = trials.iter().map(|t| t.1).max().unwrap_or_default();
    let mut samples: Vec<Duration> = trials.into_iter().map(|t| t.0).collect();
    samples.sort();
    println!(
        "| {label} | {} | {} | {} | {} | {} | {} |",
        samples.len(),
        ms(pick(&samples, 0.5)),
        ms(pick(&samples, 0.99)),
        ms(samples[samples.len() - 1]),
        ms(late),
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

// ---------------------------------------------------------------------------------------
// scale: real keys, bulk-loaded, full verifies

/// splitmix64: the keys of the scale mode are a pure function of (seed, index), so the
/// bench can rebuild the plaintext of any of the `n` keys it loaded without keeping them.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const SCALE_PREFIX: &str = "scale";

fn base62_fixed(mut value: u128, out: &mut [u8]) {
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
}

/// Key `i` of the run `seed`: its id and its plaintext, in keygate's opaque format
/// (`<prefix>_` + 22 base62 id + 43 base62 secret + 6 base62 CRC32), built the way
/// `Key::generate` builds one (a copy: keep them in step).
fn scale_key(seed: u64, i: u64) -> (keygate::uuid::Uuid, String) {
    let base = seed ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&splitmix(base).to_le_bytes());
    bytes[8..].copy_from_slice(&splitmix(base ^ 1).to_le_bytes());
    let id = keygate::uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut body = [0u8; 71];
    base62_fixed(id.as_u128(), &mut body[..22]);
    for (k, chunk) in (2u64..).zip(body[22..65].chunks_mut(8)) {
        let word = splitmix(base ^ k).to_le_bytes();
        for (slot, byte) in chunk.iter_mut().zip(word) {
            *slot = BASE62[usize::from(byte) % 62];
        }
    }
    let mut token = format!("{SCALE_PREFIX}_");
    token.extend(body[..65].iter().copied().map(char::from));
    let crc = crc32fast::hash(token.as_bytes());
    base62_fixed(u128::from(crc), &mut body[65..]);
    token.extend(body[65..].iter().copied().map(char::from));
    (id, token)
}

const SCALE_PEPPER: [u8; 32] = [12u8; 32];
const SCALE_PEPPER_VERSION: u32 = 120;

/// COPYs keys `from..to` of the run `seed` into `keygate_keys` with their real hashes
/// (HMAC-SHA256 under the bench's pepper over `<prefix>_<id><secret>`, scheme `bound`).
async fn copy_keys(pool: &sqlx::PgPool, seed: u64, owner: &str, from: u64, to: u64) -> u64 {
    use keygate::sqlx::postgres::PgPoolCopyExt;
    use std::fmt::Write as _;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &SCALE_PEPPER);
    let mut copy = pool
        .copy_in_raw(
            "COPY keygate_keys (id, format, hash_version, hash_digest, name, owner_id, \
             created_at, updated_at, active, metadata, hash_scheme) FROM STDIN",
        )
        .await
        .unwrap();
    let mut buf = String::with_capacity(4 << 20);
    for i in from..to {
        let (id, token) = scale_key(seed, i);
        let tag = ring::hmac::sign(&key, &token.as_bytes()[..token.len() - 6]);
        write!(buf, "{id}\topaque\t{SCALE_PEPPER_VERSION}\t\\\\x").unwrap();
        for byte in tag.as_ref() {
            write!(buf, "{byte:02x}").unwrap();
        }
        // created_at spread over a day, so the (created_at, id) indexes look like a real table's.
        writeln!(
            buf,
            "\tbulk\t{owner}\t2026-11-01 00:00:00+00\t2026-11-01 00:00:00+00\tt\t{{}}\tbound"
        )
        .unwrap();
        if buf.len() > (4 << 20) - 512 {
            copy.send(std::mem::take(&mut buf).into_bytes())
                .await
                .unwrap();
            buf.reserve(4 << 20);
        }
    }
    if !buf.is_empty() {
        copy.send(buf.into_bytes()).await.unwrap();
    }
    copy.finish().await.unwrap()
}

/// `PostgresStore::get` of `samples` keys drawn at random from keys `0..n` of `seed`
/// (the cost of one cache miss), p50 and mean.
async fn miss_cost(
    store: &PostgresStore,
    seed: u64,
    n: u64,
    samples: usize,
) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(samples);
    let mut state = seed ^ 0x5555;
    for _ in 0..samples {
        state = splitmix(state);
        let (id, _) = scale_key(seed, state % n);
        let started = Instant::now();
        assert!(store.get(KeyId::from(id)).await.unwrap().is_some());
        times.push(started.elapsed());
    }
    let mean = times.iter().sum::<Duration>() / samples as u32;
    (quantiles(times).0, mean)
}

/// `scale <n> <hot>`: see the module docs and benches/README.md, "Verify with 1e7 keys".
async fn scale(n: u64, hot: u64) {
    let url = env("KEYGATE_TEST_POSTGRES_URL");
    let store = PostgresStore::connect(&url).await.unwrap();
    let pool = store.pool().clone();
    let existing: i64 = sqlx::query("SELECT count(*) FROM keygate_keys")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        existing, 0,
        "scale wants a database of its own (benches/scale.sh makes one)"
    );
    let seed = splitmix(std::process::id() as u64 ^ 0xC0FFEE);
    let owner = "bench-scale";
    const SMALL: u64 = 1_000;
    const MISS_SAMPLES: usize = 2_000;

    // 1. The baseline table: 1e3 keys; the cost of a miss there.
    copy_keys(&pool, seed, owner, 0, SMALL).await;
    sqlx::query("ANALYZE keygate_keys")
        .execute(&pool)
        .await
        .unwrap();
    let small_miss = miss_cost(&store, seed, SMALL, MISS_SAMPLES).await;

    // 2. The bulk load: indexes dropped, COPY, indexes rebuilt (as a migration of this
    //    size would be loaded), then VACUUM ANALYZE.
    let started = Instant::now();
    for ddl in [
        "ALTER TABLE keygate_keys DROP CONSTRAINT keygate_keys_pkey",
        "DROP INDEX keygate_keys_created",
        "DROP INDEX keygate_keys_owner_created",
    ] {
        sqlx::query(ddl).execute(&pool).await.unwrap();
    }
    let rt_pool = pool.clone();
    // Two COPY streams (one per core), each generating and hashing its half.
    let half = SMALL + (n - SMALL) / 2;
    let first = tokio::spawn(async move { copy_keys(&rt_pool, seed, owner, SMALL, half).await });
    let second = copy_keys(&pool, seed, owner, half, n).await;
    let copied = first.await.unwrap() + second;
    let loaded = started.elapsed();
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET maintenance_work_mem = '1GB'")
        .execute(&mut *conn)
        .await
        .unwrap();
    for ddl in [
        "ALTER TABLE keygate_keys ADD PRIMARY KEY (id)",
        "CREATE INDEX keygate_keys_created ON keygate_keys (created_at, id)",
        "CREATE INDEX keygate_keys_owner_created ON keygate_keys (owner_id, created_at, id)",
        "VACUUM ANALYZE keygate_keys",
    ] {
        sqlx::query(ddl).execute(&mut *conn).await.unwrap();
    }
    drop(conn);
    let indexed = started.elapsed();
    let size: String = sqlx::query("SELECT pg_size_pretty(pg_total_relation_size('keygate_keys'))")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    eprintln!(
        "loaded {copied} keys (+{SMALL}) in {loaded:?}, indexed and analyzed by {indexed:?}; table and indexes {size}"
    );
    println!(
        "Load: {} keys by COPY (two streams, every key's HMAC computed in the bench) in {:.0} s, \
         primary key and the two list indexes rebuilt and `VACUUM ANALYZE` by {:.0} s; table and \
         indexes {size}.",
        copied + SMALL,
        loaded.as_secs_f64(),
        indexed.as_secs_f64()
    );
    println!();
    let big_miss = miss_cost(&store, seed, n, MISS_SAMPLES).await;

    // 3. Verifies through a gate over CachedStore<PostgresStore>.
    let capacity = (2 * hot) as usize;
    let cache = Arc::new(CachedStore::new(
        store.clone(),
        CacheConfig::new()
            .capacity(capacity)
            .ttl(Duration::from_secs(3600)),
    ));
    let gate = Keygate::builder(
        cache.clone(),
        Pepper::new(SCALE_PEPPER_VERSION, SCALE_PEPPER).unwrap(),
    )
    .prefix(SCALE_PREFIX)
    .build()
    .unwrap();
    // The hot set: `hot` keys spread over the whole range; every one must verify (the
    // keys are real), which also warms the cache.
    let stride = n / hot;
    let rss_before = rss();
    for h in 0..hot {
        let (_, token) = scale_key(seed, h * stride);
        gate.verify(&token).await.unwrap();
    }
    let rss_hot = rss().saturating_sub(rss_before);
    assert_eq!(cache.stats().entries as u64, hot);
    // A wrong secret on a loaded id is refused (the hashes are not a pass-anything).
    let (_, mut token) = scale_key(seed, 7);
    let flipped = if token.as_bytes()[40] == b'A' {
        "B"
    } else {
        "A"
    };
    token.replace_range(40..41, flipped);
    let crc = crc32fast::hash(&token.as_bytes()[..token.len() - 6]);
    let mut tail = [0u8; 6];
    base62_fixed(u128::from(crc), &mut tail);
    token.replace_range(token.len() - 6.., std::str::from_utf8(&tail).unwrap());
    assert!(
        gate.verify(&token).await.is_err(),
        "a wrong secret verified"
    );

    const CHUNK: u64 = 10_000;
    const TASKS: u64 = 64;
    const ROUNDS: u64 = 20;
    let gate = Arc::new(gate);
    let (mut mixed, mut hits_only) = (Duration::ZERO, Duration::ZERO);
    let (mut mixed_n, mut hits_n) = (0u64, 0u64);
    let (mut mixed_hits, mut mixed_loads) = (0u64, 0u64);
    for round in 0..ROUNDS {
        for side in [round % 2, 1 - round % 2] {
            let before = cache.stats();
            let started = Instant::now();
            let tasks: Vec<_> = (0..TASKS)
                .map(|t| {
                    let gate = gate.clone();
                    let mut state = splitmix(seed ^ (round << 32 | t << 1 | side));
                    tokio::spawn(async move {
                        let mut failures = 0u64;
                        for _ in 0..CHUNK / TASKS {
                            state = splitmix(state);
                            let i = if side == 0 && state.is_multiple_of(100) {
                                splitmix(state ^ 1) % n
                            } else {
                                (splitmix(state ^ 2) % hot) * stride
                            };
                            let (_, token) = scale_key(seed, i);
                            if gate.verify(&token).await.is_err() {
                                failures += 1;
                            }
                        }
                        failures
                    })
                })
                .collect();
            let mut failures = 0;
            for task in tasks {
                failures += task.await.unwrap();
            }
            let took = started.elapsed();
            assert_eq!(failures, 0, "a real key was refused");
            let after = cache.stats();
            let done = CHUNK / TASKS * TASKS;
            if side == 0 {
                mixed += took;
                mixed_n += done;
                mixed_hits += after.hits - before.hits;
                mixed_loads += after.loads - before.loads;
            } else {
                hits_only += took;
                hits_n += done;
            }
        }
    }
    let mixed_rate = mixed_n as f64 / mixed.as_secs_f64();
    let hit_rate = hits_n as f64 / hits_only.as_secs_f64();
    let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
    println!("| measure | at {n} keys | baseline (same run) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| `Keygate::verify` of real opaque keys through `CachedStore<PostgresStore>`, 64 tasks, 99% to a cached hot set of {hot}, 1% to any of the {n} | {mixed_rate:.0} verifies/s | {hit_rate:.0} verifies/s (same gate, 100% to the hot set, interleaved) | {:.3}× |",
        mixed_rate / hit_rate
    );
    println!(
        "| hit rate of the 99% side (cache hits / lookups) | {:.2}% ({mixed_loads} store reads in {mixed_n} verifies) | 99% asked | — |",
        100.0 * mixed_hits as f64 / (mixed_hits + mixed_loads) as f64
    );
    println!(
        "| one cache miss: `PostgresStore::get` of a random loaded key, p50 (mean) | {} ({}) | {} ({}) with {SMALL} keys in the table, before the load | {:.2}× |",
        us(big_miss.0),
        us(big_miss.1),
        us(small_miss.0),
        us(small_miss.1),
        big_miss.0.as_secs_f64() / small_miss.0.as_secs_f64()
    );
    println!(
        "| resident-set growth of warming the hot set (real records read from PostgreSQL) | {:.0} bytes per cached key | — | — |",
        rss_hot as f64 / hot as f64
    );
}
