//! The valid key's verify latency with no flood and under a flood of distinct forged,
//! checksum-valid keys (issue 7), through a `CachedStore` over a `MemoryStore`.
//!
//! `flood/valid_verify/no_flood` and `flood/valid_verify/under_flood` both time
//! `rt.block_on(gate.verify(valid))` on a current-thread runtime. During the second, another
//! thread verifies forged keys with fresh ids (every one a cache miss, a store read and a
//! negative entry) as fast as it can, on the same gate; the bench prints how many it sent
//! (at least 10^6: it keeps going until then). `benches/flood.sh` prints the ratio of the
//! two medians. Target: ≤ 2×.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

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
    let gate = Keygate::builder(cache)
        .prefix(PREFIX)
        .pepper(Pepper::new(1, b"a bench pepper of 32 bytes or more!!").unwrap())
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
    let sent = Arc::new(AtomicU64::new(0));
    let flood = {
        let (gate, stop, sent) = (gate.clone(), stop.clone(), sent.clone());
        thread::spawn(move || {
            let rt = runtime();
            let mut n = 1u64;
            // Until told to stop, and at least FLOOD distinct forged keys in all.
            while !stop.load(Ordering::Relaxed) || n <= FLOOD {
                let refused = rt.block_on(gate.verify(&forged(n)));
                assert_eq!(refused.unwrap_err().rejection(), Some(Rejection::UnknownKey));
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
