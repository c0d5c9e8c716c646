//! `LocalFirst` (issue 9): its overshoot measured against the documented bound, and its
//! latency beside the exact store check it stands in for.
//!
//! 1. **Overshoot** (deterministic, not timed): N simulated nodes, each a `LocalFirst`
//!    over one shared `MemoryLimiter` (the store), a simulated clock stepping 10 ms for
//!    300 s, every node offering one request per step (100 req/s per node: saturation;
//!    in the "B at once" rows every node first offers a whole burst at the first step),
//!    syncs every S (aligned: all nodes at the same instants; staggered: node j at
//!    j·S/N, rounded down to a whole step). Reported: what one exact limiter admits of the same requests, what the
//!    fleet admitted, the worst excess over any window of S, 10·S and the limit's
//!    duration (beside `B + ⌈W/T⌉`), and the documented bound
//!    `(N − 1)·(B + ⌈2·(S + λ)/T⌉)` with λ = 0 (syncs are instant in the simulation).
//! 2. **Latency**: one check of one limit through `LocalFirst::check_now` (its sync task
//!    running every 100 ms) beside the exact check of the limiter it wraps, in alternating
//!    chunks of 200; medians of the per-chunk means. Backends: `MemoryLimiter` always;
//!    `RedisStore` with feature `redis` and `KEYGATE_BENCH_REDIS_URL` (or
//!    `KEYGATE_TEST_REDIS_URL`); `PostgresStore` with feature `postgres` and
//!    `KEYGATE_TEST_POSTGRES_URL`.
//!
//! `bash benches/local_first.sh` runs it; the table is also written to
//! `target/local-first-table.md`.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::print_stdout
)]

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate::limits::{
    gcra, Charge, LimitCheck, Limiter, LocalFirst, LocalFirstConfig, MemoryLimiter, RateLimit,
    Subject,
};
use keygate::KeyId;
use tokio::runtime::Runtime;

/// 2030-01-01T12:00:00Z in µs.
const T0: i64 = 1_893_499_200_000_000;
const STEP_US: i64 = 10_000;
const STEPS: usize = 30_000;
const CHUNK: usize = 200;
const ROUNDS: usize = 200;

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Aligned,
    Staggered,
}

struct Run {
    admitted: Vec<u64>,
    exact: u64,
}

impl Run {
    fn max_window(&self, len: usize) -> u64 {
        let len = len.min(self.admitted.len());
        let mut sum: u64 = self.admitted[..len].iter().sum();
        let mut max = sum;
        for i in len..self.admitted.len() {
            sum = sum + self.admitted[i] - self.admitted[i - len];
            max = max.max(sum);
        }
        max
    }
}

async fn simulate(
    nodes: usize,
    limit: &RateLimit,
    sync_us: i64,
    phase: Phase,
    cold_burst: bool,
) -> Run {
    let store = Arc::new(MemoryLimiter::new());
    let config = LocalFirstConfig::new().sync_interval(Duration::from_micros(sync_us as u64));
    let gates: Vec<_> = (0..nodes)
        .map(|_| LocalFirst::new(Arc::clone(&store), config))
        .collect();
    let exact = MemoryLimiter::new();
    let key = KeyId::random();
    let one = [Charge::new(limit, 1)];
    let mut admitted = vec![0u64; STEPS];
    let mut exact_total = 0;
    for (step, slot) in admitted.iter_mut().enumerate() {
        let now = T0 + step as i64 * STEP_US;
        for (j, node) in gates.iter().enumerate() {
            // Whole steps, so every node's sync instant is one the clock reaches.
            let offset = if phase == Phase::Aligned {
                0
            } else {
                j as i64 * sync_us / nodes as i64 / STEP_US * STEP_US
            };
            if step > 0 && (now - T0 - offset).rem_euclid(sync_us) == 0 {
                node.sync().await.unwrap();
            }
        }
        // One request per node per step; with `cold_burst`, a whole burst each at step 0.
        let demand = if cold_burst && step == 0 {
            limit.burst()
        } else {
            1
        };
        for node in &gates {
            for _ in 0..demand {
                let check = LimitCheck::new(Subject::Key(key), &one, None, now);
                if node.check_now(&check).unwrap().unwrap().allowed {
                    *slot += 1;
                }
                if exact.check_now(&check).unwrap().unwrap().allowed {
                    exact_total += 1;
                }
            }
        }
    }
    Run {
        admitted,
        exact: exact_total,
    }
}

fn overshoot_table(rt: &Runtime, out: &mut String) {
    let per_minute = RateLimit::new("requests", 100, 60_000); // T = 600 ms, B = 100
    let per_second = RateLimit::new("requests", 10, 1_000).with_burst(5); // T = 100 ms, B = 5
    writeln!(
        out,
        "### Overshoot: measured vs the documented bound (λ = 0)\n"
    )
    .unwrap();
    writeln!(
        out,
        "| limit | N | S | phase / demand | exact admits | fleet admits | excess (run) | worst excess, window S / 10·S / duration | bound (N−1)(B+⌈2S/T⌉) | (N−1)(B+⌈r·S⌉) | worst / bound |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|").unwrap();
    for (name, limit) in [("100/min, B 100", &per_minute), ("10/s, B 5", &per_second)] {
        let t_us = (gcra::emission_interval_ns(limit) / 1000) as u64;
        for sync_ms in [100i64, 1_000] {
            let sync_us = sync_ms * 1000;
            for nodes in [2usize, 4, 8] {
                for (phase, cold_burst) in [
                    (Phase::Aligned, false),
                    (Phase::Staggered, false),
                    (Phase::Aligned, true),
                ] {
                    let run = rt.block_on(simulate(nodes, limit, sync_us, phase, cold_burst));
                    let total: u64 = run.admitted.iter().sum();
                    let bound = LocalFirstConfig::new()
                        .sync_interval(Duration::from_micros(sync_us as u64))
                        .overshoot_bound(limit, nodes, Duration::ZERO);
                    let naive =
                        (nodes as u64 - 1) * (limit.burst() + (sync_us as u64).div_ceil(t_us));
                    let mut worst = 0u64;
                    let mut cells = Vec::new();
                    for window_us in [sync_us, 10 * sync_us, limit.duration as i64 * 1000] {
                        let len = (window_us / STEP_US) as usize;
                        let allowed = limit.burst() + (window_us as u64).div_ceil(t_us);
                        let excess = run.max_window(len).saturating_sub(allowed);
                        worst = worst.max(excess);
                        cells.push(excess.to_string());
                    }
                    writeln!(
                        out,
                        "| {name} | {nodes} | {sync_ms} ms | {} | {} | {total} | {} | {} | {bound} | {naive} | {:.2} |",
                        match (phase == Phase::Aligned, cold_burst) {
                            (true, false) => "aligned / 1 per step",
                            (false, _) => "staggered / 1 per step",
                            (true, true) => "aligned / B at once, then 1 per step",
                        },
                        run.exact,
                        total as i64 - run.exact as i64,
                        cells.join(" / "),
                        worst as f64 / bound.max(1) as f64,
                    )
                    .unwrap();
                }
            }
        }
    }
}

/// Median of per-chunk mean latencies (ns per check) of local-first and of the exact
/// check of `store`, measured in alternating chunks.
fn latency<L: Limiter + Clone>(rt: &Runtime, store: L) -> (f64, f64) {
    rt.block_on(async move {
        let local = LocalFirst::start(store.clone(), LocalFirstConfig::new()).unwrap();
        let limit = RateLimit::new("requests", 1_000_000_000, 1_000);
        let one = [Charge::new(&limit, 1)];
        let key = KeyId::random();
        let now = || {
            use keygate::Clock;
            keygate::SystemClock.now_micros()
        };
        let (mut lf, mut ex) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let start = Instant::now();
            for _ in 0..CHUNK {
                let check = LimitCheck::new(Subject::Key(key), &one, None, now());
                let out = local
                    .check_now(std::hint::black_box(&check))
                    .unwrap()
                    .unwrap();
                assert!(out.allowed);
            }
            lf.push(start.elapsed().as_nanos() as f64 / CHUNK as f64);
            let start = Instant::now();
            for _ in 0..CHUNK {
                let check = LimitCheck::new(Subject::Key(key), &one, None, now());
                let out = store.check(std::hint::black_box(&check)).await.unwrap();
                assert!(out.allowed);
            }
            ex.push(start.elapsed().as_nanos() as f64 / CHUNK as f64);
            // Let the sync task run between chunks, as it would between requests.
            tokio::task::yield_now().await;
        }
        local.shutdown().await.unwrap();
        (median(&mut lf), median(&mut ex))
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn latency_row(out: &mut String, backend: &str, (lf, ex): (f64, f64)) {
    writeln!(
        out,
        "| {backend} | {:.0} ns | {:.0} ns | {:.3} | {:.1}x |",
        lf,
        ex,
        lf / ex,
        ex / lf
    )
    .unwrap();
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut out = String::new();
    overshoot_table(&rt, &mut out);
    writeln!(
        out,
        "\n### Latency: one check, local-first vs the exact store check\n"
    )
    .unwrap();
    writeln!(
        out,
        "| store | local-first `check_now` | exact store `check` | local-first / exact | speed-up |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|---|").unwrap();
    latency_row(
        &mut out,
        "MemoryLimiter",
        latency(&rt, Arc::new(MemoryLimiter::new())),
    );
    #[cfg(feature = "redis")]
    {
        let url = std::env::var("KEYGATE_BENCH_REDIS_URL")
            .or_else(|_| std::env::var("KEYGATE_TEST_REDIS_URL"))
            .ok()
            .filter(|u| !u.trim().is_empty());
        match url {
            Some(url) => {
                let namespace = format!("keygate-bench-lf:{}:", KeyId::random().as_uuid().simple());
                let store = rt
                    .block_on(keygate::RedisStore::connect_with(
                        url.as_str(),
                        keygate::RedisConfig::new().namespace(namespace),
                    ))
                    .expect("connect to Redis");
                latency_row(&mut out, "RedisStore", latency(&rt, store));
            }
            None => writeln!(out, "| RedisStore | — | — | no Redis URL | |").unwrap(),
        }
    }
    #[cfg(feature = "postgres")]
    {
        match std::env::var("KEYGATE_TEST_POSTGRES_URL") {
            Ok(url) if !url.trim().is_empty() => {
                let store = rt
                    .block_on(keygate::PostgresStore::connect(&url))
                    .expect("connect to PostgreSQL");
                latency_row(&mut out, "PostgresStore", latency(&rt, store));
            }
            _ => writeln!(out, "| PostgresStore | — | — | no PostgreSQL URL | |").unwrap(),
        }
    }
    print!("{out}");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::PathBuf::from("target"),
        std::path::PathBuf::from,
    );
    let _ = std::fs::write(target.join("local-first-table.md"), &out);
}
