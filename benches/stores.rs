//! Store costs, each beside a baseline measured in the same run: the `CachedStore` hit path
//! against `MemoryStore`, a cache miss against one bare driver query, and how many store
//! writes last-used bookkeeping makes.
//!
//! `bash benches/stores.sh` runs this (`cargo bench --bench stores --features
//! postgres,sqlite`) and prints the table. The PostgreSQL rows need
//! `KEYGATE_TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/test`); without it
//! they are skipped with a message. The SQLite rows use a database file in the temp
//! directory (WAL, `synchronous = FULL`, as `SqliteStore::connect` sets up), removed at the
//! end; the PostgreSQL rows insert 1000 keys into `keygate_keys` under an owner unique to
//! the run and delete them at the end.
//!
//! Criterion ids are `<group>/<side>/1e3`. As in `verify.rs`, each measured side runs its
//! baseline in alternating chunks inside every criterion sample (criterion is given the
//! measured side's time only), and the median over all chunk pairs of measured/baseline is
//! written to `target/criterion/<group>/paired/<side>.json`; the script reports that ratio
//! beside the ratio of the two criterion medians. The machine is shared and noisy, so the
//! interleaved ratio is the one judged.
//!
//! 1. **`store_verify`: the hit path.** `Keygate::verify` of opaque keys over
//!    `CachedStore::new(PostgresStore | SqliteStore, ttl 1 h)` against `Keygate::verify`
//!    over `MemoryStore` holding the same 1000 records (imported with their ids and
//!    hashes, so the same tokens verify on both), cycling over the same tokens in the same
//!    random order. Both gates have the default `last_used_interval` (60 s).
//!    - `cache_<db>_hit95`: before every 20th verify (positions 19, 39, ... of the cycle,
//!      so any chunk of [`HIT_CHUNK`] verifies holds exactly 10 of them) the cached side
//!      calls `CachedStore::invalidate(id)`, so that verify misses and reads the database:
//!      a 95% hit ratio, with misses paying a real round trip. The measured hit ratio
//!      (`CachedStore::stats`) is written beside the result. The `MemoryStore` side runs
//!      the same tokens without invalidations.
//!      Caveat: in these two rows the interleaved `MemoryStore` chunks run right after
//!      chunks with 10 database round trips, and come out slower than `MemoryStore` alone
//!      (caches and the other core disturbed by the database work), so here the
//!      interleaved ratio flatters the cache; the script prints both.
//!    - `cache_pg_hit100`: no invalidations: every lookup is a hit, so this is the cache's
//!      own overhead over `MemoryStore`. `cache_mem_hit100` is the same over
//!      `CachedStore<MemoryStore>`, whose records are laid out in memory as the baseline's
//!      are (the PostgreSQL cache holds records decoded from rows), to tell the cache's
//!      code apart from where its records happen to sit.
//!    - `cache_mem_hit95`: the 95% pattern over `CachedStore<MemoryStore>`: the cache's own
//!      miss handling (slot, load, settle) without a database behind it, one reading of
//!      "throughput through the cache at a 95% hit ratio".
//!    - The ratio reported is throughput: memory time / cached time (target >= 0.9).
//! 2. **`store_miss`: one miss.** `CachedStore::invalidate(id)` + `CachedStore::get(id)`
//!    (`cache_get_<db>`), and the same invalidation + a full `Keygate::verify`
//!    (`verify_<db>`), each against one bare `sqlx::query(SELECT <the 15 columns> FROM
//!    keygate_keys WHERE id = $1).fetch_optional(pool)` on the store's own pool, the id
//!    bound as the store binds it (a UUID for PostgreSQL, its hyphenated text for SQLite).
//!    The bare side gets a row and does not decode it: decoding into a `KeyRecord` is
//!    keygate's work. `bare_<db>` is that query alone. Target: miss / bare <= 1.2.
//!    A pooled sqlx query is more than one round trip: the pool pings an idle connection
//!    before handing it out (`test_before_acquire`, on by default and left on by
//!    `PostgresStore::connect`) and pings it again on release (in a spawned task). Both
//!    sides pay that above. `cache_get_pg_vs_conn` holds the miss against the same query
//!    on one dedicated `PgConnection` (no pool, no pings), the strict reading of "one bare
//!    driver query"; `bare_conn_pg` is that query alone. `cache_get_pg_noping_vs_conn` is
//!    the same miss through `PostgresStore::from_pool` over a pool built with
//!    `test_before_acquire(false)`: what the acquire ping costs.
//! 3. **`last_used`: store writes** (counted, not timed; runs first, even under a filter).
//!    100 keys, 100 000 accepted verifies, a `ManualClock` advanced 100 µs before each
//!    (10 s of simulated time), over a counting `KeyStore` wrapper around `MemoryStore`.
//!    Everything runs in one task on a current-thread runtime that yields after every
//!    verify, so the background flushes that verifies spawn run as they would in a server;
//!    `gate.flush()` at the end writes what is left. Counted: `record_last_used` calls
//!    (batches), rows in them, and `update` calls (re-hashes; none expected). Bounds: rows
//!    <= 100 x (10 s / interval), batches <= 10 s / interval + 1. Results go to
//!    `target/criterion/stores/last_used.json`. A check that the store's `last_used_at`
//!    of every key lags its true last use by less than the interval keeps the counts
//!    honest (a flush that never ran would write little and fail it).
//! 4. **`store_get`: the lookup alone.** `KeyStore::get` hits on `CachedStore<MemoryStore>`
//!    against `KeyStore::get` on `MemoryStore` (info: the hit path's own cost in ns).
//!
//! Executor: everything timed runs `rt.block_on(..)` per iteration on one current-thread
//! Tokio runtime with I/O and timers enabled (the pools were created on it), on both sides.
//! Background work that a verify spawns (sqlx returning a connection to its pool, a
//! last-used flush) runs when a later `block_on` waits on I/O, in the same way on both
//! sides of a miss ratio.

// Benchmark harness: a failed setup step stops the run loudly, and fixtures index and
// count over small known values.
#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion};
use keygate::chrono::{DateTime, TimeDelta, TimeZone, Utc};
use keygate::sqlx;
use keygate::sqlx::postgres::PgPoolOptions;
use keygate::{
    CacheConfig, CacheStats, CachedStore, KeyId, KeyPatch, KeyRecord, KeyStore, Keygate, ListQuery,
    ManualClock, MemoryStore, NewKey, Pepper, PostgresStore, SqliteStore, StoreError,
};
use tokio::runtime::Runtime;

const PEPPER: &[u8] = b"benchmark pepper, thirty-two bytes or more";
const PREFIX: &str = "bst";

/// Keys in the cached and memory stores of `store_verify` and `store_miss`.
const KEYS: usize = 1000;
/// Every `MISS_EVERY`-th verify of a `_hit95` benchmark misses: a 95% hit ratio.
const MISS_EVERY: usize = 20;
/// Chunk of the interleaved hit-path timing; a multiple of [`MISS_EVERY`], and [`KEYS`] is
/// one too, so every full chunk holds exactly `HIT_CHUNK / MISS_EVERY` misses.
const HIT_CHUNK: u64 = 200;
/// Chunk of the interleaved miss timing (each iteration is a database round trip).
const MISS_CHUNK: u64 = 16;
/// TTL of the cached stores: far longer than the run, so only invalidations cause misses.
const CACHE_TTL: Duration = Duration::from_secs(3600);

/// The `SELECT` both stores send for `get`, columns in the order they read them.
const COLUMNS: &str = "id, format, hash_version, hash_digest, name, description, owner_id, \
                       created_by, created_at, updated_at, expires_at, last_used_at, active, \
                       scopes, metadata, hash_scheme";

/// Criterion samples per benchmark.
const SAMPLES: usize = 50;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args()
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("current-thread runtime")
}

/// Under a pepper version of the benchmark's own: a PostgreSQL store remembers one pepper
/// per version, and the test database is shared with the test suites, whose peppers differ.
fn pepper() -> Pepper {
    Pepper::new(102, PEPPER).expect("pepper")
}

/// splitmix64: a fixed-seed shuffle, so every run cycles in the same order.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Cycles `i` over `0..len` without a division.
#[inline(always)]
fn advance(i: &mut usize, len: usize) -> usize {
    let at = *i;
    *i += 1;
    if *i == len {
        *i = 0;
    }
    at
}

// --- Interleaved (paired) timing ---

/// Times two routines in alternating chunks of `chunk` iterations and keeps, per call (one
/// criterion sample, or a warm-up round), the time of every chunk pair: the measured
/// side's chunk and the baseline chunk right after it.
struct Paired {
    chunk: u64,
    calls: RefCell<Vec<Vec<(u64, Duration, Duration)>>>,
}

impl Paired {
    fn new(chunk: u64) -> Self {
        Self {
            chunk,
            calls: RefCell::default(),
        }
    }

    /// Runs `iters` iterations of each routine, interleaved; returns `a`'s time.
    fn run(&self, iters: u64, mut a: impl FnMut(), mut b: impl FnMut()) -> Duration {
        let mut chunks = Vec::with_capacity(iters.div_ceil(self.chunk) as usize);
        let mut left = iters;
        while left > 0 {
            let n = left.min(self.chunk);
            let t0 = Instant::now();
            for _ in 0..n {
                a();
            }
            let t1 = Instant::now();
            for _ in 0..n {
                b();
            }
            let t2 = Instant::now();
            chunks.push((n, t1 - t0, t2 - t1));
            left -= n;
        }
        let total = chunks.iter().map(|c| c.1).sum();
        self.calls.borrow_mut().push(chunks);
        total
    }

    /// Writes, over the last `samples` calls (criterion's measurement; the calls before
    /// are its warm-up) and all full chunk pairs, the median a/b (`median_ratio`), the
    /// median b/a (`median_throughput_ratio`), and each side's median time per iteration,
    /// plus `extra` fields, to `<criterion dir>/<group>/paired/<side>.json`.
    fn save(&self, group: &str, side: &str, samples: usize, extra: &[(&str, f64)]) {
        let calls = self.calls.borrow();
        let kept = &calls[calls.len().saturating_sub(samples)..];
        let pairs: Vec<(f64, f64)> = kept
            .iter()
            .flatten()
            .filter(|c| c.0 == self.chunk)
            .map(|c| (c.1.as_secs_f64(), c.2.as_secs_f64()))
            .collect();
        if pairs.is_empty() {
            return; // filtered out
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let per_iter_ns = |v: Vec<f64>| median(v) * 1e9 / self.chunk as f64;
        let mut json = format!(
            "{{\"median_ratio\":{},\"median_throughput_ratio\":{},\"chunk_pairs\":{},\
             \"chunk\":{},\"measured_median_ns\":{},\"baseline_median_ns\":{}",
            median(pairs.iter().map(|(a, b)| a / b).collect()),
            median(pairs.iter().map(|(a, b)| b / a).collect()),
            pairs.len(),
            self.chunk,
            per_iter_ns(pairs.iter().map(|p| p.0).collect()),
            per_iter_ns(pairs.iter().map(|p| p.1).collect()),
        );
        for (key, value) in extra {
            json.push_str(&format!(",\"{key}\":{value}"));
        }
        json.push_str("}\n");
        write_result(&criterion_dir().join(group).join("paired"), side, &json);
    }
}

fn write_result(dir: &Path, name: &str, json: &str) {
    if std::fs::create_dir_all(dir).is_ok() {
        let _ = std::fs::write(dir.join(format!("{name}.json")), json);
    }
}

/// Where criterion writes (its own rule): `$CRITERION_HOME`, `$CARGO_TARGET_DIR/criterion`,
/// cargo's target directory, `target/criterion`.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    let metadata = std::env::var_os("CARGO").and_then(|cargo| {
        std::process::Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .output()
            .ok()
    });
    metadata
        .and_then(|out| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
        .and_then(|v| v["target_directory"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("criterion")
}

/// Whether criterion runs each benchmark once as a test (`cargo test --benches`, or
/// `-- --test`): its rule is no `--bench` argument, or `--test`.
fn test_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--test")
}

/// Drops a group's paired results from earlier runs, so a filtered run leaves none stale.
/// A test run measures nothing, and leaves the last real run's results alone.
fn clear_paired(group: &str) {
    if test_mode() {
        return;
    }
    let _ = std::fs::remove_dir_all(criterion_dir().join(group).join("paired"));
}

// --- Fixtures ---

/// 1000 opaque keys minted into a `MemoryStore` gate, and the tokens in cycling order.
struct Keys {
    memory: Keygate,
    owner: String,
    records: Vec<KeyRecord>,
    tokens: Vec<String>,
    ids: Vec<KeyId>,
}

impl Keys {
    fn build(rt: &Runtime) -> Self {
        let memory = Keygate::builder(MemoryStore::new(), pepper())
            .prefix(PREFIX)
            .last_used_interval(Duration::from_secs(60))
            .build()
            .expect("gate");
        // Unique per run, so the PostgreSQL rows can be found and deleted afterwards.
        let owner = format!("keygate-bench-{}", KeyId::random());
        let mut issued: Vec<(KeyRecord, String)> = rt.block_on(async {
            let mut issued = Vec::with_capacity(KEYS);
            for _ in 0..KEYS {
                let key = memory
                    .mint(NewKey::new("bench", owner.as_str()))
                    .await
                    .expect("mint");
                issued.push((key.record, key.key.expose().to_owned()));
            }
            issued
        });
        // Fisher-Yates with a fixed seed: the cycling order.
        let mut rng = Rng(0x5eed_0510);
        for i in (1..issued.len()).rev() {
            issued.swap(i, rng.below(i + 1));
        }
        let ids = issued.iter().map(|(r, _)| r.id).collect();
        let (records, tokens) = issued.into_iter().unzip();
        let keys = Self {
            memory,
            owner,
            records,
            tokens,
            ids,
        };
        for (token, id) in keys.tokens.iter().zip(&keys.ids) {
            let principal = rt.block_on(keys.memory.verify(token)).expect("accepted");
            assert_eq!(principal.key_id(), *id);
        }
        keys
    }
}

/// A gate over `CachedStore<S>` holding the same records as [`Keys::memory`], every entry
/// cached.
struct Backend<S> {
    cache: Arc<CachedStore<S>>,
    gate: Keygate,
}

impl<S: KeyStore> Backend<S> {
    /// Wraps `store`, imports the records unless `import` is off (they are there already),
    /// and verifies every token once.
    fn new(rt: &Runtime, store: S, keys: &Keys, name: &str, import: bool) -> Self {
        let cache = Arc::new(CachedStore::new(store, CacheConfig::new().ttl(CACHE_TTL)));
        let gate = Keygate::builder(cache.clone(), pepper())
            .prefix(PREFIX)
            .last_used_interval(Duration::from_secs(60))
            .build()
            .expect("gate");
        let started = Instant::now();
        if import {
            rt.block_on(async {
                for record in &keys.records {
                    gate.import(record.clone()).await.expect("import");
                }
            });
        }
        let imported = started.elapsed();
        // Verify every token once: checks both sides agree and fills the cache.
        for (token, id) in keys.tokens.iter().zip(&keys.ids) {
            let principal = rt.block_on(gate.verify(token)).expect("accepted");
            assert_eq!(principal.key_id(), *id);
        }
        eprintln!(
            "fixture: {KEYS} keys in {name} (imported: {import}, {imported:.1?}); cache {:?}",
            cache.stats()
        );
        Self { cache, gate }
    }
}

/// A fixture built on first use, so that a filtered run skips the others' setup.
struct Lazy<T, F> {
    cell: OnceCell<T>,
    init: F,
}

impl<T, F: Fn() -> T> Lazy<T, F> {
    fn new(init: F) -> Self {
        Self {
            cell: OnceCell::new(),
            init,
        }
    }

    fn get(&self) -> &T {
        self.cell.get_or_init(&self.init)
    }

    fn built(&self) -> Option<&T> {
        self.cell.get()
    }
}

/// One bare driver query by primary key; `true` if it found the row.
type Bare<'a, S> = &'a dyn Fn(&Backend<S>, &KeyId) -> bool;

fn bare_postgres(rt: &Runtime, store: &PostgresStore, id: &KeyId) -> bool {
    let sql = postgres_select();
    rt.block_on(
        sqlx::query(sql)
            .bind(*id.as_uuid())
            .fetch_optional(store.pool()),
    )
    .expect("bare query")
    .is_some()
}

fn bare_sqlite(rt: &Runtime, store: &SqliteStore, id: &KeyId) -> bool {
    let sql = sqlite_select();
    rt.block_on(
        sqlx::query(sql)
            .bind(id.as_uuid().hyphenated().to_string())
            .fetch_optional(store.pool()),
    )
    .expect("bare query")
    .is_some()
}

fn postgres_select() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| format!("SELECT {COLUMNS} FROM keygate_keys WHERE id = $1"))
}

fn sqlite_select() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| format!("SELECT {COLUMNS} FROM keygate_keys WHERE id = ?1"))
}

/// The bare query on one dedicated connection: no pool, so none of the pings sqlx's pool
/// sends around a pooled query (`test_before_acquire`, and on release).
fn bare_connection(rt: &Runtime, conn: &RefCell<sqlx::PgConnection>, id: &KeyId) -> bool {
    let mut conn = conn.borrow_mut();
    rt.block_on(
        sqlx::query(postgres_select())
            .bind(*id.as_uuid())
            .fetch_optional(&mut *conn),
    )
    .expect("bare query")
    .is_some()
}

// --- 1. The hit path ---

/// `store_verify/memory/1e3`: the baseline alone.
fn bench_memory(group: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, keys: &Keys) {
    let mut i = 0;
    group.bench_function(BenchmarkId::new("memory", "1e3"), |b| {
        b.iter(|| {
            let t = &keys.tokens[advance(&mut i, KEYS)];
            assert!(rt.block_on(keys.memory.verify(black_box(t))).is_ok());
        })
    });
}

/// `store_verify/<side>/1e3`: verifies through the cache, every `miss_every`-th one after
/// an invalidation (none if `None`), interleaved with the same verifies on `MemoryStore`.
fn bench_hits<S: KeyStore, F: Fn() -> Backend<S>>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    keys: &Keys,
    side: &str,
    backend: &Lazy<Backend<S>, F>,
    miss_every: Option<usize>,
) {
    let paired = Paired::new(HIT_CHUNK);
    let start: Cell<Option<CacheStats>> = Cell::new(None);
    let (mut i, mut j) = (0, 0);
    group.bench_function(BenchmarkId::new(side, "1e3"), |b| {
        let be = backend.get();
        if start.get().is_none() {
            start.set(Some(be.cache.stats()));
        }
        b.iter_custom(|iters| {
            paired.run(
                iters,
                || {
                    let at = advance(&mut i, KEYS);
                    if miss_every.is_some_and(|m| at % m == m - 1) {
                        be.cache.invalidate(keys.ids[at]);
                    }
                    let t = &keys.tokens[at];
                    assert!(rt.block_on(be.gate.verify(black_box(t))).is_ok());
                },
                || {
                    let t = &keys.tokens[advance(&mut j, KEYS)];
                    assert!(rt.block_on(keys.memory.verify(black_box(t))).is_ok());
                },
            )
        })
    });
    let (Some(be), Some(start)) = (backend.built(), start.get()) else {
        return;
    };
    let now = be.cache.stats();
    let (hits, loads) = (now.hits - start.hits, now.loads - start.loads);
    let ratio = hits as f64 / (hits + loads).max(1) as f64;
    paired.save(
        "store_verify",
        side,
        SAMPLES,
        &[
            ("hit_ratio", ratio),
            ("hits", hits as f64),
            ("loads", loads as f64),
        ],
    );
}

/// `store_get/cache_hit/1e3`: `KeyStore::get` hits on a `CachedStore<MemoryStore>`
/// interleaved with `KeyStore::get` on the baseline's `MemoryStore`, both through
/// `Arc<dyn KeyStore>` as a gate calls them: the lookup alone, without the verify around it.
fn bench_get_hit<F: Fn() -> Backend<MemoryStore>>(
    c: &mut Criterion,
    rt: &Runtime,
    keys: &Keys,
    backend: &Lazy<Backend<MemoryStore>, F>,
) {
    const GROUP: &str = "store_get";
    clear_paired(GROUP);
    let mut group = c.benchmark_group(GROUP);
    let paired = Paired::new(256);
    let (mut i, mut j) = (0, 0);
    group.bench_function(BenchmarkId::new("cache_hit", "1e3"), |b| {
        let (cached, memory) = (
            backend.get().gate.store_unchecked(),
            keys.memory.store_unchecked(),
        );
        b.iter_custom(|iters| {
            paired.run(
                iters,
                || {
                    let id = keys.ids[advance(&mut i, KEYS)];
                    assert!(rt
                        .block_on(cached.get(black_box(id)))
                        .is_ok_and(|r| r.is_some()));
                },
                || {
                    let id = keys.ids[advance(&mut j, KEYS)];
                    assert!(rt
                        .block_on(memory.get(black_box(id)))
                        .is_ok_and(|r| r.is_some()));
                },
            )
        })
    });
    paired.save(GROUP, "cache_hit", SAMPLES, &[]);
    let mut i = 0;
    group.bench_function(BenchmarkId::new("memory", "1e3"), |b| {
        let memory = keys.memory.store_unchecked();
        b.iter(|| {
            let id = keys.ids[advance(&mut i, KEYS)];
            assert!(rt
                .block_on(memory.get(black_box(id)))
                .is_ok_and(|r| r.is_some()));
        })
    });
    group.finish();
}

// --- 2. One miss ---

/// `store_miss/bare_<db>/1e3`: the bare query alone.
fn bench_bare<S: KeyStore, F: Fn() -> Backend<S>>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    keys: &Keys,
    db: &str,
    backend: &Lazy<Backend<S>, F>,
    bare: Bare<'_, S>,
) {
    let mut i = 0;
    group.bench_function(BenchmarkId::new(format!("bare_{db}"), "1e3"), |b| {
        let be = backend.get();
        b.iter(|| assert!(bare(be, black_box(&keys.ids[advance(&mut i, KEYS)]))))
    });
}

/// `store_miss/cache_get_<db>/1e3` and `store_miss/verify_<db>/1e3`: a miss through the
/// cache, interleaved with the bare query.
fn bench_misses<S: KeyStore, F: Fn() -> Backend<S>>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    keys: &Keys,
    db: &str,
    backend: &Lazy<Backend<S>, F>,
    bare: Bare<'_, S>,
) {
    for full_verify in [false, true] {
        let side = if full_verify {
            format!("verify_{db}")
        } else {
            format!("cache_get_{db}")
        };
        let paired = Paired::new(MISS_CHUNK);
        let start: Cell<Option<CacheStats>> = Cell::new(None);
        let (mut i, mut j) = (0, 0);
        group.bench_function(BenchmarkId::new(side.as_str(), "1e3"), |b| {
            let be = backend.get();
            if start.get().is_none() {
                start.set(Some(be.cache.stats()));
            }
            b.iter_custom(|iters| {
                paired.run(
                    iters,
                    || {
                        let at = advance(&mut i, KEYS);
                        let id = keys.ids[at];
                        be.cache.invalidate(id);
                        if full_verify {
                            let t = &keys.tokens[at];
                            assert!(rt.block_on(be.gate.verify(black_box(t))).is_ok());
                        } else {
                            let record = rt.block_on(be.cache.get(black_box(id)));
                            assert!(record.expect("get").is_some());
                        }
                    },
                    || {
                        let id = &keys.ids[advance(&mut j, KEYS)];
                        assert!(bare(be, black_box(id)));
                    },
                )
            })
        });
        let (Some(be), Some(start)) = (backend.built(), start.get()) else {
            continue;
        };
        let now = be.cache.stats();
        let (hits, loads) = (now.hits - start.hits, now.loads - start.loads);
        paired.save(
            "store_miss",
            &side,
            SAMPLES,
            &[("hits", hits as f64), ("loads", loads as f64)],
        );
    }
}

/// `store_miss/<side>/1e3`: a miss through the cache interleaved with the bare query on a
/// dedicated connection; with `alone`, also `store_miss/bare_conn_pg/1e3`, that query
/// alone.
fn bench_miss_vs_connection<F, G>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    keys: &Keys,
    side: &str,
    backend: &Lazy<Backend<PostgresStore>, F>,
    conn: &Lazy<RefCell<sqlx::PgConnection>, G>,
    alone: bool,
) where
    F: Fn() -> Backend<PostgresStore>,
    G: Fn() -> RefCell<sqlx::PgConnection>,
{
    let paired = Paired::new(MISS_CHUNK);
    let (mut i, mut j) = (0, 0);
    group.bench_function(BenchmarkId::new(side, "1e3"), |b| {
        let (be, conn) = (backend.get(), conn.get());
        b.iter_custom(|iters| {
            paired.run(
                iters,
                || {
                    let id = keys.ids[advance(&mut i, KEYS)];
                    be.cache.invalidate(id);
                    let record = rt.block_on(be.cache.get(black_box(id)));
                    assert!(record.expect("get").is_some());
                },
                || {
                    let id = &keys.ids[advance(&mut j, KEYS)];
                    assert!(bare_connection(rt, conn, black_box(id)));
                },
            )
        })
    });
    paired.save("store_miss", side, SAMPLES, &[]);
    if !alone {
        return;
    }
    let mut i = 0;
    group.bench_function(BenchmarkId::new("bare_conn_pg", "1e3"), |b| {
        let conn = conn.get();
        b.iter(|| {
            let id = &keys.ids[advance(&mut i, KEYS)];
            assert!(bare_connection(rt, conn, black_box(id)));
        })
    });
}

// --- 3. Last-used writes ---

/// A `MemoryStore` that counts the writes last-used bookkeeping makes, and when (by the
/// gate's clock).
struct Counting {
    inner: MemoryStore,
    clock: Arc<ManualClock>,
    log: Mutex<WriteLog>,
}

#[derive(Debug, Default, Clone)]
struct WriteLog {
    record_last_used: u64,
    rows: u64,
    update: u64,
    /// Clock time of each `record_last_used` call.
    batches_at: Vec<DateTime<Utc>>,
}

impl Counting {
    fn log(&self) -> MutexGuard<'_, WriteLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl KeyStore for Counting {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.inner.insert(record).await
    }
    async fn get(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.inner.get(id).await
    }
    async fn update(&self, id: KeyId, patch: &KeyPatch) -> Result<Option<KeyRecord>, StoreError> {
        self.log().update += 1;
        self.inner.update(id, patch).await
    }
    async fn delete(&self, id: KeyId) -> Result<bool, StoreError> {
        self.inner.delete(id).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.list(query).await
    }
    async fn record_last_used(&self, batch: &[(KeyId, DateTime<Utc>)]) -> Result<(), StoreError> {
        {
            let mut log = self.log();
            log.record_last_used += 1;
            log.rows += batch.len() as u64;
            log.batches_at.push(keygate::Clock::now(&*self.clock));
        }
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

const LU_KEYS: usize = 100;
const LU_VERIFIES: usize = 100_000;
const LU_STEP: TimeDelta = TimeDelta::microseconds(100);

#[derive(Clone, Copy)]
enum Pattern {
    /// Key `i % 100` for verify `i`.
    RoundRobin,
    /// A key picked uniformly at random (fixed seed) for each verify.
    Random,
}

impl Pattern {
    fn name(self) -> &'static str {
        match self {
            Pattern::RoundRobin => "round-robin",
            Pattern::Random => "random",
        }
    }
}

fn last_used_run(interval: Duration, pattern: Pattern) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let clock = Arc::new(ManualClock::new(t0));
    let store = Arc::new(Counting {
        inner: MemoryStore::new(),
        clock: clock.clone(),
        log: Mutex::default(),
    });
    let gate = Keygate::builder(store.clone(), pepper())
        .prefix(PREFIX)
        .clock(clock.clone())
        .last_used_interval(interval)
        .build()
        .expect("gate");
    let started = Instant::now();
    let (background, last_use) = rt.block_on(async {
        let mut keys = Vec::with_capacity(LU_KEYS);
        for _ in 0..LU_KEYS {
            let issued = gate.mint(NewKey::new("bench", "user")).await.expect("mint");
            keys.push((issued.record.id, issued.key.expose().to_owned()));
        }
        let mut rng = Rng(0x1a57_05ed);
        let mut last_use = HashMap::new();
        for i in 0..LU_VERIFIES {
            clock.advance(LU_STEP);
            let k = match pattern {
                Pattern::RoundRobin => i % LU_KEYS,
                Pattern::Random => rng.below(LU_KEYS),
            };
            let (id, token) = &keys[k];
            gate.verify(token).await.expect("accepted");
            last_use.insert(*id, keygate::Clock::now(&*clock));
            // Lets a flush this verify spawned run now, as a server's runtime would.
            tokio::task::yield_now().await;
        }
        let background = store.log().clone();
        gate.flush().await.expect("flush");
        (background, last_use)
    });
    let elapsed = started.elapsed();
    let log = store.log().clone();

    // Every key's stored last use lags its true last use by less than the interval.
    let interval_td = TimeDelta::from_std(interval).expect("interval");
    let mut max_lag = TimeDelta::zero();
    for (id, used) in &last_use {
        let record = rt
            .block_on(store.inner.get(*id))
            .expect("get")
            .expect("record");
        let stored = record.last_used_at.expect("last use recorded");
        max_lag = max_lag.max(*used - stored);
    }
    assert!(
        max_lag < interval_td,
        "last_used_at lags by {max_lag} with a {interval:?} interval"
    );

    let span = (LU_STEP * LU_VERIFIES as i32).as_seconds_f64();
    let per = span / interval.as_secs_f64();
    let offsets: Vec<String> = log
        .batches_at
        .iter()
        .map(|at| format!("{:.4}", (*at - t0).as_seconds_f64()))
        .collect();
    eprintln!(
        "last_used: interval {interval:?}, {}: {} batches ({} background), {} rows, {} updates; \
         batches at {} s; max lag {max_lag}; {elapsed:.1?}",
        pattern.name(),
        log.record_last_used,
        background.record_last_used,
        log.rows,
        log.update,
        offsets.join(", "),
    );
    format!(
        "{{\"interval_s\":{},\"pattern\":\"{}\",\"keys\":{LU_KEYS},\"verifies\":{LU_VERIFIES},\
         \"span_s\":{span},\"record_last_used\":{},\"background_batches\":{},\"rows\":{},\
         \"update\":{},\"rows_bound\":{},\"batches_bound\":{},\"max_lag_s\":{},\
         \"batches_at_s\":[{}]}}",
        interval.as_secs_f64(),
        pattern.name(),
        log.record_last_used,
        background.record_last_used,
        log.rows,
        log.update,
        LU_KEYS as f64 * per,
        per + 1.0,
        max_lag.as_seconds_f64(),
        offsets.join(","),
    )
}

fn last_used() {
    let runs: Vec<String> = [
        (1, Pattern::RoundRobin),
        (1, Pattern::Random),
        (5, Pattern::RoundRobin),
        (5, Pattern::Random),
        (60, Pattern::Random),
    ]
    .into_iter()
    .map(|(secs, pattern)| last_used_run(Duration::from_secs(secs), pattern))
    .collect();
    write_result(
        &criterion_dir().join("stores"),
        "last_used",
        &format!("[{}]\n", runs.join(",\n")),
    );
}

// --- Setup and teardown ---

fn postgres_url() -> Option<String> {
    match std::env::var("KEYGATE_TEST_POSTGRES_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            eprintln!(
                "skipping the PostgreSQL benchmarks: set KEYGATE_TEST_POSTGRES_URL \
                 (e.g. postgres://postgres@127.0.0.1:5432/test)"
            );
            None
        }
    }
}

fn sqlite_path() -> PathBuf {
    std::env::temp_dir().join(format!(
        "keygate-bench-stores-{}-{}.db",
        std::process::id(),
        KeyId::random()
    ))
}

fn remove_sqlite(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

fn main() {
    let mut c = config();
    last_used();

    let rt = runtime();
    let keys = Keys::build(&rt);
    let url = postgres_url();
    let postgres = Lazy::new(|| {
        let url = url.as_deref().expect("PostgreSQL URL");
        let store = rt.block_on(PostgresStore::connect(url)).expect("connect");
        Backend::new(&rt, store, &keys, "PostgreSQL", true)
    });
    let sqlite_file = sqlite_path();
    let sqlite = Lazy::new(|| {
        let path = sqlite_file.to_str().expect("UTF-8 temp path");
        let store = rt.block_on(SqliteStore::connect(path)).expect("open");
        Backend::new(&rt, store, &keys, "SQLite", true)
    });
    let connection = Lazy::new(|| {
        use sqlx::Connection;
        let url = url.as_deref().expect("PostgreSQL URL");
        RefCell::new(
            rt.block_on(sqlx::PgConnection::connect(url))
                .expect("connect"),
        )
    });
    let cached_memory =
        Lazy::new(|| Backend::new(&rt, MemoryStore::new(), &keys, "MemoryStore", true));
    // The same database through a pool that does not ping before handing out a
    // connection (sqlx still pings on release, in a spawned task).
    let no_ping = Lazy::new(|| {
        let _rows = postgres.get(); // imports the records
        let url = url.as_deref().expect("PostgreSQL URL");
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .test_before_acquire(false)
            .connect(url);
        let pool = rt.block_on(pool).expect("connect");
        let store = PostgresStore::from_pool(pool);
        Backend::new(
            &rt,
            store,
            &keys,
            "PostgreSQL, test_before_acquire(false)",
            false,
        )
    });
    let bare_pg =
        |be: &Backend<PostgresStore>, id: &KeyId| bare_postgres(&rt, be.cache.inner(), id);
    let bare_lite = |be: &Backend<SqliteStore>, id: &KeyId| bare_sqlite(&rt, be.cache.inner(), id);

    let k = &keys;

    clear_paired("store_verify");
    let mut group = c.benchmark_group("store_verify");
    bench_memory(&mut group, &rt, k);
    bench_hits(&mut group, &rt, k, "cache_mem_hit100", &cached_memory, None);
    let every = Some(MISS_EVERY);
    bench_hits(&mut group, &rt, k, "cache_mem_hit95", &cached_memory, every);
    if url.is_some() {
        bench_hits(&mut group, &rt, k, "cache_pg_hit100", &postgres, None);
        bench_hits(
            &mut group,
            &rt,
            k,
            "cache_pg_hit95",
            &postgres,
            Some(MISS_EVERY),
        );
    }
    bench_hits(
        &mut group,
        &rt,
        k,
        "cache_sqlite_hit95",
        &sqlite,
        Some(MISS_EVERY),
    );
    group.finish();

    bench_get_hit(&mut c, &rt, k, &cached_memory);

    clear_paired("store_miss");
    let mut group = c.benchmark_group("store_miss");
    if url.is_some() {
        bench_misses(&mut group, &rt, k, "pg", &postgres, &bare_pg);
        bench_bare(&mut group, k, "pg", &postgres, &bare_pg);
        let side = "cache_get_pg_vs_conn";
        bench_miss_vs_connection(&mut group, &rt, k, side, &postgres, &connection, true);
        let side = "cache_get_pg_noping_vs_conn";
        bench_miss_vs_connection(&mut group, &rt, k, side, &no_ping, &connection, false);
    }
    bench_misses(&mut group, &rt, k, "sqlite", &sqlite, &bare_lite);
    bench_bare(&mut group, k, "sqlite", &sqlite, &bare_lite);
    group.finish();

    if let Some(be) = postgres.built() {
        let deleted = rt
            .block_on(
                sqlx::query("DELETE FROM keygate_keys WHERE owner_id = $1")
                    .bind(&k.owner)
                    .execute(be.cache.inner().pool()),
            )
            .map(|done| done.rows_affected());
        eprintln!(
            "cleanup: deleted {deleted:?} PostgreSQL rows of owner {}",
            k.owner
        );
    }
    if let Some(be) = sqlite.built() {
        rt.block_on(be.cache.inner().pool().close());
    }
    remove_sqlite(&sqlite_file);

    c.final_summary();
}
