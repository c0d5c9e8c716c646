//! What a rate limit adds to a verify, in memory, and keygate's GCRA beside `governor`.
//!
//! `bash benches/limits.sh` runs this and prints the ratios. Groups (criterion ids
//! `limits/<name>`):
//!
//! - `verify/plain` and `verify/one_limit`: `Keygate::verify` of an opaque key on a
//!   `MemoryStore` (1e3 keys, cycled in a fixed random order), without limits and with one
//!   auto-applied rate limit on every key (so large it never refuses: the cost measured is
//!   the check and charge, not a refusal). Both on a current-thread runtime with
//!   `block_on`, the same on both sides. The ratio is the target (<= 1.15x).
//!   Because the machine is shared and noisy, `verify/paired` also runs both in
//!   alternating chunks of [`CHUNK`] iterations and writes the median chunk ratio to
//!   `target/criterion/limits/paired.json`.
//! - `gcra/keygate`: `MemoryLimiter::check_now` of one limit for one of 1e3 keys: the map
//!   lookup under a shard lock, the GCRA step, the write.
//! - `gcra/governor_keyed`: `governor`'s `DefaultKeyedRateLimiter<Uuid>` (`check_key`) over
//!   the same 1e3 ids: the closest `governor` setup (one quota shared by every key, which
//!   keygate cannot use, see ARCHITECTURE.md).
//! - `gcra/governor_direct`: one un-keyed `governor` limiter (`check`): its floor.

// Benchmark harness: a failed setup step stops the run loudly, and fixtures index and
// count over small known values.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use keygate::limits::{Charge, LimitCheck, Limiter, MemoryLimiter, RateLimit, Subject};
use keygate::{KeyId, Keygate, MemoryStore, NewKey, Pepper};
use tokio::runtime::Runtime;

const PEPPER: &[u8] = b"benchmark pepper, thirty-two bytes or more";
const KEYS: usize = 1_000;
/// Iterations per side per chunk of the paired measurement.
const CHUNK: usize = 2_000;
/// Chunk pairs in the paired measurement.
const PAIRS: usize = 200;

/// A limit no benchmark loop reaches: a billion a millisecond, burst a billion.
fn roomy() -> RateLimit {
    RateLimit::new("requests", 1_000_000_000, 1)
}

/// A deterministic shuffle (xorshift), so both sides see the same order.
fn order(n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

fn gate_with(rt: &Runtime, limited: bool) -> (Keygate, Vec<String>) {
    let (gate, tokens, _) = gate_with_ids(rt, limited);
    (gate, tokens)
}

/// [`gate_with`], plus the key id of each token (same order).
fn gate_with_ids(rt: &Runtime, limited: bool) -> (Keygate, Vec<String>, Vec<KeyId>) {
    let gate = Keygate::builder(MemoryStore::new(), Pepper::new(1, PEPPER).unwrap())
        .prefix("abs")
        .build()
        .unwrap();
    let (tokens, ids) = rt.block_on(async {
        let mut tokens = Vec::with_capacity(KEYS);
        let mut ids = Vec::with_capacity(KEYS);
        for i in 0..KEYS {
            let mut new = NewKey::new("bench", format!("user-{i}"));
            if limited {
                new = new.ratelimits([roomy()]);
            }
            let issued = gate.mint(new).await.unwrap();
            tokens.push(issued.key.expose().to_owned());
            ids.push(issued.record.id);
        }
        (tokens, ids)
    });
    let order = order(KEYS);
    let tokens = order.iter().map(|&i| tokens[i].clone()).collect();
    let ids = order.iter().map(|&i| ids[i]).collect();
    (gate, tokens, ids)
}

fn verify(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (plain, plain_tokens) = gate_with(&rt, false);
    let (limited, limited_tokens) = gate_with(&rt, true);
    let mut group = c.benchmark_group("limits");
    let mut i = 0usize;
    group.bench_function("verify/plain", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(rt.block_on(plain.verify(&plain_tokens[i])).is_ok())
        })
    });
    group.bench_function("verify/one_limit", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(rt.block_on(limited.verify(&limited_tokens[i])).is_ok())
        })
    });
    group.finish();

    // Paired: alternate chunks, median of the per-pair ratios.
    let mut ratios = Vec::with_capacity(PAIRS);
    let mut run = |gate: &Keygate, tokens: &[String]| {
        let start = Instant::now();
        for _ in 0..CHUNK {
            i = (i + 1) % KEYS;
            assert!(black_box(rt.block_on(gate.verify(&tokens[i])).is_ok()));
        }
        start.elapsed()
    };
    for _ in 0..PAIRS {
        let p = run(&plain, &plain_tokens);
        let l = run(&limited, &limited_tokens);
        ratios.push(l.as_secs_f64() / p.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[PAIRS / 2];
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("criterion/limits");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("paired.json"),
        format!(
            "{{\"median_ratio\": {median:.4}, \"p25\": {:.4}, \"p75\": {:.4}, \"pairs\": {PAIRS}, \"chunk\": {CHUNK}}}",
            ratios[PAIRS / 4],
            ratios[PAIRS * 3 / 4]
        ),
    )
    .unwrap();
    eprintln!("limits/verify/paired: median one_limit/plain = {median:.3}");
}

fn gcra(c: &mut Criterion) {
    let ids: Vec<KeyId> = (0..KEYS).map(|_| KeyId::random()).collect();
    let order = order(KEYS);
    let limit = roomy();
    let charges = [Charge::new(&limit, 1)];
    let limiter = MemoryLimiter::new();
    let start = Instant::now();
    let now = |start: Instant| 1_800_000_000_000_000 + start.elapsed().as_micros() as i64;
    let mut group = c.benchmark_group("limits");
    let mut i = 0usize;
    group.bench_function("gcra/keygate", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            let check = LimitCheck::new(Subject::Key(ids[order[i]]), &charges, None, now(start));
            black_box(limiter.check_now(&check).unwrap().unwrap().allowed)
        })
    });
    let quota = governor::Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap());
    let keyed = governor::RateLimiter::keyed(quota);
    let uuids: Vec<uuid::Uuid> = ids.iter().map(|id| *id.as_uuid()).collect();
    group.bench_function("gcra/governor_keyed", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(keyed.check_key(&uuids[order[i]]).is_ok())
        })
    });
    let direct = governor::RateLimiter::direct(quota);
    group.bench_function("gcra/governor_direct", |b| {
        b.iter(|| black_box(direct.check().is_ok()))
    });
    group.finish();
}

// --- Instruction counts (`KEYGATE_CALLGRIND=<iterations>`) ---
//
// Under `valgrind --tool=callgrind`, instruction counts do not depend on the machine's
// load. With `KEYGATE_CALLGRIND=N` set, this binary runs no criterion benchmark: it warms
// up, then runs N verifies without a limit (`cg_plain`), N with one limit (`cg_one_limit`)
// and N of the opaque floor of `benches/verify.rs` (`cg_floor`: one HMAC-SHA256 over the
// secret, one map lookup, a constant-time compare), each in its own function, so that
// `callgrind_annotate --inclusive=yes` gives each loop's instructions (divide by N).
// `bash benches/callgrind.sh` does all of that and prints the table.

/// What the floor keeps per key (as in `benches/verify.rs`).
struct FloorRecord {
    digest: [u8; 32],
    active: bool,
}

/// Opaque key layout: `<prefix>_<22 id><43 secret><6 crc>`.
fn opaque_secret(token: &str) -> &[u8] {
    let start = "abs_".len() + 22;
    &token.as_bytes()[start..start + 43]
}

#[inline(never)]
fn opaque_floor(
    map: &std::collections::HashMap<uuid::Uuid, FloorRecord>,
    key: &ring::hmac::Key,
    id: &uuid::Uuid,
    token: &str,
) -> bool {
    let Some(record) = map.get(id) else {
        return false;
    };
    ring::hmac::verify(key, opaque_secret(token), &record.digest).is_ok() && record.active
}

#[inline(never)]
fn verify_loop(rt: &Runtime, gate: &Keygate, tokens: &[String], n: usize) -> usize {
    let mut ok = 0;
    for i in 0..n {
        ok += usize::from(black_box(
            rt.block_on(gate.verify(&tokens[i % KEYS])).is_ok(),
        ));
    }
    ok
}

#[inline(never)]
fn floor_loop(rt: &Runtime, floor: &Floor, n: usize) -> usize {
    let mut ok = 0;
    for i in 0..n {
        let j = i % KEYS;
        let found = rt.block_on(async {
            opaque_floor(&floor.map, &floor.key, &floor.ids[j], &floor.tokens[j])
        });
        ok += usize::from(black_box(found));
    }
    ok
}

struct Floor {
    map: std::collections::HashMap<uuid::Uuid, FloorRecord>,
    key: ring::hmac::Key,
    ids: Vec<uuid::Uuid>,
    tokens: Vec<String>,
}

// The two differ (by the `black_box`ed tag), so that the compiler cannot merge them into
// one function, whose count would then hold both loops.
#[inline(never)]
fn cg_plain(rt: &Runtime, gate: &Keygate, tokens: &[String], n: usize) -> usize {
    black_box("plain");
    verify_loop(rt, gate, tokens, n)
}

#[inline(never)]
fn cg_one_limit(rt: &Runtime, gate: &Keygate, tokens: &[String], n: usize) -> usize {
    black_box("one limit");
    verify_loop(rt, gate, tokens, n)
}

#[inline(never)]
fn cg_floor(rt: &Runtime, floor: &Floor, n: usize) -> usize {
    floor_loop(rt, floor, n)
}

fn callgrind(n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (plain, plain_tokens, plain_ids) = gate_with_ids(&rt, false);
    let (limited, limited_tokens, _) = gate_with_ids(&rt, true);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, PEPPER);
    let map = plain_tokens
        .iter()
        .zip(&plain_ids)
        .map(|(token, id)| {
            let mut digest = [0u8; 32];
            digest.copy_from_slice(ring::hmac::sign(&key, opaque_secret(token)).as_ref());
            (
                *id.as_uuid(),
                FloorRecord {
                    digest,
                    active: true,
                },
            )
        })
        .collect();
    let floor = Floor {
        map,
        key,
        ids: plain_ids.iter().map(|id| *id.as_uuid()).collect(),
        tokens: plain_tokens.clone(),
    };
    // Warm-up: every key verified once (first marks, first limiter entries).
    assert_eq!(verify_loop(&rt, &plain, &plain_tokens, KEYS), KEYS);
    assert_eq!(verify_loop(&rt, &limited, &limited_tokens, KEYS), KEYS);
    assert_eq!(floor_loop(&rt, &floor, KEYS), KEYS);
    assert_eq!(cg_plain(&rt, &plain, &plain_tokens, n), n);
    assert_eq!(cg_one_limit(&rt, &limited, &limited_tokens, n), n);
    assert_eq!(cg_floor(&rt, &floor, n), n);
    eprintln!("callgrind mode: {n} iterations of each loop done");
}

fn main() {
    if let Some(n) = std::env::var_os("KEYGATE_CALLGRIND") {
        let n = n
            .to_str()
            .and_then(|n| n.parse().ok())
            .expect("KEYGATE_CALLGRIND=<iterations>");
        callgrind(n);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = verify, gcra
}
