//! The store-backed limiters (issue 9), each beside a baseline measured in the same run:
//!
//! 1. **`limit_redis`**: `Keygate::verify` of an opaque key with one rate limit, its state
//!    in Redis (`RedisStore` as the gate's limiter; records in a `MemoryStore`, so the only
//!    network work is the limiter's), against one bare `EVALSHA` of the same script with
//!    the same arguments on a plain `MultiplexedConnection` (`bare_evalsha`). Also
//!    `verify_nolimit`: the same gate verifying a key without limits (no Redis call).
//!    Ratio judged: `verify_limit / bare_evalsha` (the limiter's overhead over the script
//!    itself; the script's round trip is in both).
//! 2. **`limit_pg`**: the same with `PostgresStore` as the limiter, against the bare
//!    statement through sqlx on the store's own pool (`bare_statement`: same SQL, same
//!    binds, the row fetched but not decoded).
//! 3. **Round trips** (counted, not timed; runs first): 2,000 verifies with one limit, the
//!    limiter's connection going through a counting TCP proxy that parses the commands the
//!    client sends (a command a script runs inside Redis never crosses it): commands sent
//!    per request is round trips per request. `INFO commandstats` deltas (which count the
//!    script's inner commands too) are written beside, to
//!    `target/criterion/limit_stores/round_trips.json`. `benches/limit_stores.sh` runs
//!    this against a Redis of its own (port 6391).
//!
//! Each timed side runs its baseline in alternating chunks of [`CHUNK`] requests inside
//! every criterion sample; the median over all chunk pairs of measured/baseline is written
//! to `target/criterion/<group>/paired/<side>.json`, beside criterion's own medians.
//!
//! Needs `KEYGATE_BENCH_REDIS_URL` (or `KEYGATE_TEST_REDIS_URL`) and
//! `KEYGATE_TEST_POSTGRES_URL`; a group whose service is missing is skipped with a message.
//! PostgreSQL state goes to a schema of the run's own, dropped at the end.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::cell::RefCell;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use criterion::Criterion;
use keygate::limits::{Charge, LimitCheck, RateLimit, Subject};
use keygate::redis;
use keygate::sqlx::{self, Connection};
use keygate::Clock;
use keygate::{
    KeyId, Keygate, MemoryStore, NewKey, Pepper, PostgresStore, RedisConfig, RedisStore,
};
use tokio::runtime::Runtime;

/// Requests per chunk of the interleaved timing.
const CHUNK: u64 = 20;
/// Verifies counted in the round-trip step.
const COUNTED: u64 = 2_000;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn pepper() -> Pepper {
    Pepper::new(103, b"limit-stores bench pepper, 32 bytes or more").expect("pepper")
}

/// A limit no benchmark can exhaust: a billion per millisecond, burst a billion.
fn roomy() -> RateLimit {
    RateLimit::new("requests", 1_000_000_000, 1)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from)
}

fn write_json(parts: &[&str], value: &serde_json::Value) {
    let mut path = target_dir().join("criterion");
    for part in parts {
        path.push(part);
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
}

/// Times `a` and `b` in alternating chunks; criterion gets `a`'s time, and every chunk
/// pair's ratio a/b is kept.
struct Paired {
    ratios: RefCell<Vec<f64>>,
}

impl Paired {
    fn new() -> Self {
        Self {
            ratios: RefCell::default(),
        }
    }

    fn run(
        &self,
        iters: u64,
        rt: &Runtime,
        a: &mut dyn FnMut() -> Duration,
        b: &mut dyn FnMut() -> Duration,
    ) -> Duration {
        let _ = rt;
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = left.min(CHUNK);
            let mut ta = Duration::ZERO;
            let mut tb = Duration::ZERO;
            for _ in 0..n {
                ta += a();
                tb += b();
            }
            if n == CHUNK {
                self.ratios
                    .borrow_mut()
                    .push(ta.as_secs_f64() / tb.as_secs_f64());
            }
            total += ta;
            left -= n;
        }
        total
    }

    fn save(&self, group: &str, side: &str) {
        let mut r = self.ratios.borrow().clone();
        r.sort_by(f64::total_cmp);
        let median = r.get(r.len() / 2).copied().unwrap_or(f64::NAN);
        write_json(
            &[group, "paired", &format!("{side}.json")],
            &serde_json::json!({ "median_ratio": median, "pairs": r.len() }),
        );
    }
}

fn timed(rt: &Runtime, f: impl std::future::Future<Output = ()>) -> Duration {
    let start = Instant::now();
    rt.block_on(f);
    start.elapsed()
}

fn redis_url() -> Option<String> {
    std::env::var("KEYGATE_BENCH_REDIS_URL")
        .or_else(|_| std::env::var("KEYGATE_TEST_REDIS_URL"))
        .ok()
        .filter(|u| !u.trim().is_empty())
}

struct RedisSetup {
    gate: Keygate,
    store: RedisStore,
    limited: String,
    plain: String,
    id: KeyId,
    namespace: String,
}

fn redis_setup(rt: &Runtime, url: &str) -> RedisSetup {
    let namespace = format!(
        "keygate-bench-limits:{}:",
        KeyId::random().as_uuid().simple()
    );
    rt.block_on(async {
        let store = RedisStore::connect_with(url, RedisConfig::new().namespace(namespace.clone()))
            .await
            .expect("connect to Redis");
        let gate = Keygate::builder(MemoryStore::new(), pepper())
            .limiter(store.clone())
            .build()
            .unwrap();
        let limited = gate
            .mint(NewKey::new("limited", "bench").ratelimits([roomy()]))
            .await
            .unwrap();
        let plain = gate.mint(NewKey::new("plain", "bench")).await.unwrap();
        RedisSetup {
            gate,
            store,
            limited: limited.key.expose().to_owned(),
            plain: plain.key.expose().to_owned(),
            id: limited.record.id,
            namespace,
        }
    })
}

fn redis_cleanup(rt: &Runtime, url: &str, namespace: &str) {
    rt.block_on(async {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{namespace}*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    });
}

/// Every command Redis ran since `CONFIG RESETSTAT`, from `INFO commandstats`, less the
/// `INFO` itself; and the `evalsha` count alone.
async fn commands(
    conn: &mut redis::aio::MultiplexedConnection,
) -> (u64, u64, serde_json::Map<String, serde_json::Value>) {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    let mut total = 0;
    let mut evalsha = 0;
    let mut by_name = serde_json::Map::new();
    for line in info.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let (name, stats) = rest.split_once(':').unwrap();
        let calls: u64 = stats
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if name == "info" {
            continue;
        }
        if name == "evalsha" {
            evalsha = calls;
        }
        by_name.insert(name.to_owned(), calls.into());
        total += calls;
    }
    (total, evalsha, by_name)
}

/// Counts the commands clients send through it: a TCP proxy to Redis that parses the
/// client-to-server RESP stream (arrays of bulk strings) and counts top-level commands.
/// Commands a script runs inside Redis never cross it, so this counts round trips.
struct CountingProxy {
    port: u16,
    commands: Arc<AtomicU64>,
}

/// Incremental RESP request parser: counts complete top-level arrays.
#[derive(Default)]
struct Resp {
    buf: Vec<u8>,
}

impl Resp {
    /// Feeds bytes; returns how many commands completed.
    fn feed(&mut self, bytes: &[u8]) -> u64 {
        self.buf.extend_from_slice(bytes);
        let mut done = 0;
        while let Some(used) = Self::command_len(&self.buf) {
            self.buf.drain(..used);
            done += 1;
        }
        done
    }

    fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
        Some((&buf[at..end], end + 2))
    }

    /// The length of the first complete command in `buf`, if there is one.
    fn command_len(buf: &[u8]) -> Option<usize> {
        let (head, mut at) = Self::line(buf, 0)?;
        let n: usize = std::str::from_utf8(head.strip_prefix(b"*")?)
            .ok()?
            .parse()
            .ok()?;
        for _ in 0..n {
            let (len, next) = Self::line(buf, at)?;
            let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
                .ok()?
                .parse()
                .ok()?;
            at = next + len + 2;
            if buf.len() < at {
                return None;
            }
        }
        Some(at)
    }
}

impl CountingProxy {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let commands = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&commands);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let mut resp = Resp::default();
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        counter.fetch_add(resp.feed(&buf[..n]), Ordering::Relaxed);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
            }
        });
        Self { port, commands }
    }
}

fn round_trips(rt: &Runtime, url: &str) {
    let upstream = {
        let info = redis::Client::open(url)
            .unwrap()
            .get_connection_info()
            .addr()
            .to_string();
        let hostport = info
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned();
        std::net::ToSocketAddrs::to_socket_addrs(&hostport)
            .unwrap()
            .next()
            .unwrap()
    };
    let proxy = rt.block_on(CountingProxy::start(upstream));
    let proxied = format!("redis://127.0.0.1:{}/", proxy.port);
    let setup = redis_setup(rt, &proxied);
    let result = rt.block_on(async {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        // Warm: the script is loaded, the connection settled.
        setup.gate.verify(&setup.limited).await.unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut conn)
            .await
            .unwrap();
        let before = proxy.commands.load(Ordering::Relaxed);
        for _ in 0..COUNTED {
            setup.gate.verify(&setup.limited).await.unwrap();
        }
        let sent = proxy.commands.load(Ordering::Relaxed) - before;
        let (total, evalsha, by_name) = commands(&mut conn).await;
        // The reset itself is counted after it ran.
        let total = total.saturating_sub(1);
        serde_json::json!({
            "requests": COUNTED,
            "client_commands": sent,
            "round_trips_per_request": sent as f64 / COUNTED as f64,
            "server_commands": total,
            "evalsha": evalsha,
            "server_commands_by_name": by_name,
        })
    });
    println!("limit_redis round trips: {result}");
    write_json(&["limit_stores", "round_trips.json"], &result);
    redis_cleanup(rt, url, &setup.namespace);
}

fn bench_redis(c: &mut Criterion, rt: &Runtime, url: &str) {
    let setup = redis_setup(rt, url);
    let bare_conn = rt.block_on(async {
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    });
    let limit = roomy();
    let charges = [Charge::new(&limit, 1)];
    let bare = |conn: redis::aio::MultiplexedConnection| {
        let now = keygate::SystemClock.now_micros();
        let check = LimitCheck::new(Subject::Key(setup.id), &charges, None, now);
        let call = setup.store.limit_invocation(&check).unwrap();
        async move {
            let mut conn = conn;
            let answer: redis::Value = call.invoke_async(&mut conn).await.unwrap();
            black_box(answer);
        }
    };
    // Loads the script on the bare connection's server (the same one).
    rt.block_on(bare(bare_conn.clone()));

    let mut group = c.benchmark_group("limit_redis");
    let paired = Paired::new();
    group.bench_function("verify_limit", |b| {
        b.iter_custom(|iters| {
            paired.run(
                iters,
                rt,
                &mut || {
                    timed(rt, async {
                        black_box(setup.gate.verify(&setup.limited).await.unwrap());
                    })
                },
                &mut || timed(rt, bare(bare_conn.clone())),
            )
        })
    });
    paired.save("limit_redis", "verify_limit");
    group.bench_function("bare_evalsha", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| timed(rt, bare(bare_conn.clone()))).sum())
    });
    group.bench_function("verify_nolimit", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    timed(rt, async {
                        black_box(setup.gate.verify(&setup.plain).await.unwrap());
                    })
                })
                .sum()
        })
    });
    group.finish();
    redis_cleanup(rt, url, &setup.namespace);
}

fn bench_pg(c: &mut Criterion, rt: &Runtime, base: &str) {
    let schema = format!("kg_bench_limits_{}", KeyId::random().as_uuid().simple());
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options=-csearch_path%3D{schema}");
    let (gate, store, limited, plain, id) = rt.block_on(async {
        let mut admin = sqlx::PgConnection::connect(base).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
            .execute(&mut admin)
            .await
            .unwrap();
        let store = PostgresStore::connect(&url).await.unwrap();
        let gate = Keygate::builder(MemoryStore::new(), pepper())
            .limiter(store.clone())
            .build()
            .unwrap();
        let limited = gate
            .mint(NewKey::new("limited", "bench").ratelimits([roomy()]))
            .await
            .unwrap();
        let plain = gate.mint(NewKey::new("plain", "bench")).await.unwrap();
        (
            gate,
            store,
            limited.key.expose().to_owned(),
            plain.key.expose().to_owned(),
            limited.record.id,
        )
    });
    let limit = roomy();
    let charges = [Charge::new(&limit, 1)];
    let bare = || {
        let now = keygate::SystemClock.now_micros();
        let store = &store;
        let charges = &charges;
        async move {
            let check = LimitCheck::new(Subject::Key(id), charges, None, now);
            black_box(store.limit_statement(&check).await.unwrap());
        }
    };
    let mut group = c.benchmark_group("limit_pg");
    let paired = Paired::new();
    group.bench_function("verify_limit", |b| {
        b.iter_custom(|iters| {
            paired.run(
                iters,
                rt,
                &mut || {
                    timed(rt, async {
                        black_box(gate.verify(&limited).await.unwrap());
                    })
                },
                &mut || timed(rt, bare()),
            )
        })
    });
    paired.save("limit_pg", "verify_limit");
    group.bench_function("bare_statement", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| timed(rt, bare())).sum())
    });
    group.bench_function("verify_nolimit", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    timed(rt, async {
                        black_box(gate.verify(&plain).await.unwrap());
                    })
                })
                .sum()
        })
    });
    group.finish();
    drop(gate);
    rt.block_on(async {
        store.pool().close().await;
        let mut admin = sqlx::PgConnection::connect(base).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{schema}\" CASCADE"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
    });
}

fn main() {
    let rt = runtime();
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    match redis_url() {
        Some(url) => {
            round_trips(&rt, &url);
            bench_redis(&mut c, &rt, &url);
        }
        None => {
            eprintln!("limit_redis skipped: set KEYGATE_BENCH_REDIS_URL or KEYGATE_TEST_REDIS_URL")
        }
    }
    match std::env::var("KEYGATE_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
    {
        Some(url) => bench_pg(&mut c, &rt, &url),
        None => eprintln!("limit_pg skipped: set KEYGATE_TEST_POSTGRES_URL"),
    }
    c.final_summary();
}
