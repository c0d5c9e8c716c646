//! The valid key's verify latency with no flood and under a flood of distinct forged,
//! checksum-valid keys (issue 7), through a `CachedStore` over a `MemoryStore`.
//!
//! `flood/valid_verify/no_flood` and `flood/valid_verify/under_flood` both time
//! `rt.block_on(gate.verify(valid))` on a current-thread runtime. During the second, another
//! thread verifies forged keys with fresh ids (every one a cache miss, a store read and a
//! negative entry) as fast as it can, on the same gate; the bench prints how many it sent
//! (at least 10^6: it keeps going until then). `benches/flood.sh` prints the ratio of the
//! two criterion medians. Target: ≤ 2×.
//!
//! Criterion's median is over samples of many calls, so on a busy machine a sample that a
//! context switch hits counts whole; the flood thread adds one more runnable thread. So the
//! bench also prints a paired figure: rounds that alternate "flood paused" and "flood
//! running", timing each valid verify alone, and the ratio of the two per-call medians.

// Benchmark harness: a failed setup step stops the run loudly, and fixtures index and
// count over small known values.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use keygate::{CacheConfig, CachedStore, KeyId, Keygate, MemoryStore, NewKey, Pepper, Rejection};
use tokio::runtime::Runtime;

const PREFIX: &str = "abs";
const FLOOD: u64 = 1_000_000;
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn base62(mut value: u128, width: usize, out: &mut String) {
    let mut digits = vec![b'0'; width];
    for slot in digits.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    out.push_str(std::str::from_utf8(&digits).unwrap());
}

/// `abs_` + 22 base62 chars of the id + 43 secret chars + 6 base62 chars of the CRC-32.
fn forged(n: u64) -> String {
    // Ids that all share `hi ^ lo`: the hash-flooding shape.
    let hi = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x0bad_cafe;
    let id = (u128::from(hi) << 64) | u128::from(hi ^ 0x5a5a_5a5a_1234_5678);
    let mut token = format!("{PREFIX}_");
    base62(id, 22, &mut token);
    token.push_str(&"x".repeat(43));
    let crc = crc32fast::hash(token.as_bytes());
    base62(u128::from(crc), 6, &mut token);
    token
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let cache = CachedStore::new(MemoryStore::new(), CacheConfig::new());
    let gate = Keygate::builder(
        cache,
        Pepper::new(1, b"a bench pepper of 32 bytes or more!!").unwrap(),
    )
    .prefix(PREFIX)
    .build()
    .unwrap();
    let valid = rt
        .block_on(gate.mint(NewKey::new("valid", "alice")))
        .unwrap()
        .key
        .expose()
        .to_owned();
    let id: KeyId = rt.block_on(gate.verify(&valid)).unwrap().key_id();
    let check = forged(0);
    assert_eq!(
        rt.block_on(gate.verify(&check)).unwrap_err().rejection(),
        Some(Rejection::UnknownKey)
    );

    let mut group = c.benchmark_group("flood");
    group
        .sample_size(100)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));
    group.bench_function("valid_verify/no_flood", |b| {
        b.iter(|| black_box(rt.block_on(gate.verify(black_box(&valid))).is_ok()))
    });

    let stop = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flood = {
        let (gate, stop, sent, paused) = (gate.clone(), stop.clone(), sent.clone(), paused.clone());
        thread::spawn(move || {
            let rt = runtime();
            let mut n = 1u64;
            // Until told to stop, and at least FLOOD distinct forged keys in all.
            while !stop.load(Ordering::Relaxed) || n <= FLOOD {
                if paused.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_micros(200));
                    continue;
                }
                let refused = rt.block_on(gate.verify(&forged(n)));
                assert_eq!(
                    refused.unwrap_err().rejection(),
                    Some(Rejection::UnknownKey)
                );
                sent.store(n, Ordering::Relaxed);
                n += 1;
            }
        })
    };
    while sent.load(Ordering::Relaxed) < 10_000 {
        thread::yield_now(); // the flood is under way before timing starts
    }
    let before = sent.load(Ordering::Relaxed);
    group.bench_function("valid_verify/under_flood", |b| {
        b.iter(|| {
            let principal = rt.block_on(gate.verify(black_box(&valid)));
            black_box(principal.map(|p| p.key_id() == id).unwrap_or(false))
        })
    });
    let during = sent.load(Ordering::Relaxed) - before;

    // Paired: alternate paused and running flood, timing each call alone.
    let (mut quiet, mut flooded) = (Vec::new(), Vec::new());
    let time_calls = |into: &mut Vec<u64>| {
        for _ in 0..5_000 {
            let start = Instant::now();
            let ok = rt.block_on(gate.verify(black_box(&valid))).is_ok();
            into.push(start.elapsed().as_nanos() as u64);
            assert!(ok);
        }
    };
    for _ in 0..40 {
        paused.store(true, Ordering::Relaxed);
        thread::sleep(Duration::from_millis(2));
        time_calls(&mut quiet);
        paused.store(false, Ordering::Relaxed);
        thread::sleep(Duration::from_millis(2));
        time_calls(&mut flooded);
    }
    // (median, p90, p99, mean) in ns.
    let describe = |v: &mut Vec<u64>| {
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize] as f64;
        let mean = v.iter().sum::<u64>() as f64 / v.len() as f64;
        (at(0.5), at(0.9), at(0.99), mean)
    };
    let (q, f) = (describe(&mut quiet), describe(&mut flooded));
    println!(
        "paired per-call median of the valid verify: flood paused {:.2} µs, flood running {:.2} µs, ratio {:.2}x ({} calls each)",
        q.0 / 1e3,
        f.0 / 1e3,
        f.0 / q.0,
        quiet.len()
    );
    println!(
        "paired per-call p90 / p99 / mean: flood paused {:.2} / {:.2} / {:.2} µs, flood running {:.2} / {:.2} / {:.2} µs",
        q.1 / 1e3,
        q.2 / 1e3,
        q.3 / 1e3,
        f.1 / 1e3,
        f.2 / 1e3,
        f.3 / 1e3
    );
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    group.finish();
    // The valid key still verifies, as itself.
    assert_eq!(rt.block_on(gate.verify(&valid)).unwrap().key_id(), id);
    let total = sent.load(Ordering::Relaxed);
    let counts = gate.refusal_counts();
    println!(
        "flood: {during} distinct forged keys during the under_flood measurement, {total} in all; refusal counter unknown_key = {}",
        counts.get("unknown_key")
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
