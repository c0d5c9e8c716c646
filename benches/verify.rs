//! Verify and mint cost, each beside a floor measured in the same run.
//!
//! `bash benches/verify.sh` runs this and prints the ratio table. Criterion ids are
//! `<group>/<side>/<size>`: `side` is `keygate` or `floor`, so
//! `target/criterion/<group>/<side>/<size>/new/estimates.json` holds each median.
//!
//! **Interleaved ratios.** The machine these run on is shared and noisy: two criterion
//! benchmarks run seconds apart can see very different load, so a ratio of two medians can
//! be off by a lot. So each `keygate` verify benchmark also runs its floor in alternating
//! chunks of [`CHUNK`] iterations inside every criterion sample, timing each chunk
//! (criterion is given keygate's time only), and writes the median over all chunk pairs of
//! keygate/floor to `target/criterion/<group>/paired/<size>.json`. That ratio compares
//! figures taken well under a millisecond apart; the script reports it beside the ratio
//! of the two criterion medians.
//!
//! Fairness rules, kept on both sides of every ratio:
//!
//! - **Executor.** `Keygate::verify` is async, so each keygate iteration is
//!   `rt.block_on(gate.verify(token))` on a current-thread Tokio runtime; each floor
//!   iteration is `rt.block_on(async { floor(..) })` on the same runtime, so both pay the
//!   same `block_on` entry/exit. `executor/block_on_ready` measures that cost alone.
//! - **Access pattern.** Both sides cycle over the same tokens, in the same random order:
//!   all of them for 1e3 keys; 4096 picked at random among 1e6 keys for `1e6` (scattered
//!   over a 1e6-entry map, so buckets and records are not all in L1/L2); 2^18 of them for
//!   `1e6_cold` (a working set well past L2 and the TLB reach).
//! - **Maps.** The floor's `std::collections::HashMap<Uuid, FloorRecord>` has the same
//!   size, the same default SipHash hasher and is grown by inserting one entry at a time,
//!   as `MemoryStore`'s `HashMap<KeyId, Arc<KeyRecord>>` is. The floor record sits inline
//!   in the map (no `Arc` indirection): it is a floor, not a competitor.
//! - **Last-used bookkeeping stays in.** Gates use `last_used_interval(60 s)` (the
//!   default), so every accepted verify goes through `Usage::mark`. (The background flush
//!   that the first mark spawns never runs inside these benches: a current-thread
//!   `block_on` whose future is ready on its first poll never polls spawned tasks. That
//!   write happens at most once per interval, so its amortized cost is nil anyway.)
//! - **Opaque floor** = one HMAC-SHA256 (`ring`, key prepared once) over the 43-byte
//!   secret sliced from the same token + one map lookup by the key's 16-byte id +
//!   `hmac::verify`'s constant-time compare. It does not parse the token (no CRC32, no
//!   base62) and reads no clock: both of those are keygate's own work.
//! - **JWT floor** = `jsonwebtoken` 11 `decode::<{keyId, type}>` (HS256 through a `ring`
//!   provider installed below) + `type == "api"` + `keyId` parsed as a UUID + the same map
//!   lookup. Tokens are keygate's own, minted without `exp` (Audiobookshelf's default), so
//!   the floor's `Validation` is HS256 only with `required_spec_claims` emptied and
//!   `validate_exp = false`; keygate, with no `exp` in the token, checks no time either.
//!   Note `jsonwebtoken`'s provider design re-keys the HMAC on every `decode` (its verifier
//!   factory receives the `DecodingKey` bytes); that is what a bare `decode` costs, and its
//!   built-in providers do the same.
//! - **Mint** has no floor; its target is absolute (<= 10 us). It mints
//!   `NewKey::new("bench", "user")` into a `MemoryStore` that grows across iterations (all
//!   keys of one owner), started over on a fresh store past 100k keys (untimed) so that the
//!   figure does not depend on how many iterations criterion runs.

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
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{signature, Algorithm, DecodingKey, EncodingKey, Validation};
use keygate::{JwtSecret, KeyFormat, Keygate, MemoryStore, NewKey, Pepper};
use ring::hmac;
use tokio::runtime::Runtime;
use uuid::Uuid;

const PEPPER: &[u8] = b"benchmark pepper, thirty-two bytes or more";
const JWT_SECRET: &[u8] = b"benchmark TokenSecret, thirty-two bytes or more";
const PREFIX: &str = "abs";

/// Tokens cycled over in the warm-ish `1e6` case.
const SAMPLE: usize = 4096;
/// Tokens cycled over in the `1e6_cold` case.
const COLD_SAMPLE: usize = 1 << 18;

// Opaque key layout (`<prefix>_<22 id><43 secret><6 crc>`), for the floor to slice the
// secret out of the same token keygate parses.
const ID_LEN: usize = 22;
const SECRET_LEN: usize = 43;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("current-thread runtime")
}

/// Criterion samples per benchmark.
const SAMPLES: usize = 50;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args()
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

/// `k` distinct indices below `n`, in random order (partial Fisher-Yates).
fn pick(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng(seed);
    let mut all: Vec<usize> = (0..n).collect();
    let k = k.min(n);
    for i in 0..k {
        let j = i + rng.below(n - i);
        all.swap(i, j);
    }
    all.truncate(k);
    all
}

/// What the floor keeps per key: the stored HMAC and the two flags a verify must check.
struct FloorRecord {
    digest: [u8; 32],
    version: u32,
    active: bool,
    expires_at: Option<i64>,
}

/// A populated gate and the matching floor map, plus the tokens to cycle over.
struct Fixture {
    gate: Keygate,
    floor: HashMap<Uuid, FloorRecord>,
    /// Tokens in cycling order; `ids[i]` is the id of `tokens[i]`.
    tokens: Vec<&'static str>,
    ids: Vec<Uuid>,
}

impl Fixture {
    /// Mints `n` keys of `format` through `gate.mint` and records `sample` of their
    /// tokens, picked at random. The floor map gets an entry for every key.
    fn build(rt: &Runtime, format: KeyFormat, n: usize, sample: usize) -> Self {
        let started = Instant::now();
        let mut builder =
            Keygate::builder(MemoryStore::new(), Pepper::new(1, PEPPER).expect("pepper"))
                .prefix(PREFIX)
                .last_used_interval(Duration::from_secs(60));
        if format == KeyFormat::Jwt {
            builder = builder.jwt_secret(JwtSecret::new(JWT_SECRET).expect("jwt secret"));
        }
        let gate = builder.build().expect("gate");
        let pepper = hmac::Key::new(hmac::HMAC_SHA256, PEPPER);

        let picked = pick(n, sample, 0x5eed ^ n as u64);
        let mut slot = vec![u32::MAX; n];
        for (s, &i) in picked.iter().enumerate() {
            slot[i] = s as u32;
        }
        let mut tokens = vec![String::new(); picked.len()];
        let mut ids = vec![Uuid::nil(); picked.len()];
        let mut floor = HashMap::new();
        rt.block_on(async {
            for &s in &slot {
                let issued = gate
                    .mint(NewKey::new("bench", "user").format(format))
                    .await
                    .expect("mint");
                let token = issued.key.expose();
                let id = *issued.record.id.as_uuid();
                // What the floor's stored hash is computed over: the opaque secret, or
                // (like keygate) the JWT's signature part.
                let hashed = match format {
                    KeyFormat::Opaque => opaque_secret(token),
                    _ => token.rsplit('.').next().expect("jwt").as_bytes(),
                };
                let mut digest = [0u8; 32];
                digest.copy_from_slice(hmac::sign(&pepper, hashed).as_ref());
                floor.insert(
                    id,
                    FloorRecord {
                        digest,
                        version: 1,
                        active: true,
                        expires_at: None,
                    },
                );
                if s != u32::MAX {
                    tokens[s as usize] = token.to_owned();
                    ids[s as usize] = id;
                }
            }
        });
        // The tokens were allocated one by one among a million mints' allocations, so they
        // lie scattered over the heap; a server reads each from a fresh request buffer.
        // Lay them out back to back in cycling order, so that reading a token costs both
        // sides what it costs a server and the 1e6 case measures the store, not the bench.
        // (Leaked: at most ~20 MB, once per fixture, in a short-lived bench process.)
        let arena: &'static str = Box::leak(tokens.concat().into_boxed_str());
        let mut at = 0;
        let tokens: Vec<&'static str> = tokens
            .iter()
            .map(|t| {
                at += t.len();
                &arena[at - t.len()..at]
            })
            .collect();
        eprintln!(
            "fixture: {n} {format} keys ({} cycled) in {:.1?}; a verify future is {} bytes",
            tokens.len(),
            started.elapsed(),
            std::mem::size_of_val(&gate.verify("")),
        );
        Self {
            gate,
            floor,
            tokens,
            ids,
        }
    }

    /// Keeps only the first `k` cycled tokens (the pick is random, so any prefix is too).
    fn narrowed(&self, k: usize) -> (&[&'static str], &[Uuid]) {
        let k = k.min(self.tokens.len());
        (&self.tokens[..k], &self.ids[..k])
    }
}

fn opaque_secret(token: &str) -> &[u8] {
    let start = PREFIX.len() + 1 + ID_LEN;
    &token.as_bytes()[start..start + SECRET_LEN]
}

/// One HMAC-SHA256 over the secret + one map lookup + constant-time compare (inside
/// `hmac::verify`), and the record's flags.
#[inline(never)]
fn opaque_floor(map: &HashMap<Uuid, FloorRecord>, key: &hmac::Key, id: &Uuid, token: &str) -> bool {
    let Some(record) = map.get(id) else {
        return false;
    };
    record.version == 1
        && hmac::verify(key, opaque_secret(token), &record.digest).is_ok()
        && record.active
        && record.expires_at.is_none()
}

#[derive(serde::Deserialize)]
struct FloorClaims {
    #[serde(rename = "keyId")]
    key_id: String,
    #[serde(rename = "type")]
    kind: String,
}

/// A bare `jsonwebtoken::decode` + the same map lookup.
#[inline(never)]
fn jwt_floor(
    map: &HashMap<Uuid, FloorRecord>,
    key: &DecodingKey,
    validation: &Validation,
    token: &str,
) -> bool {
    let Ok(data) = jsonwebtoken::decode::<FloorClaims>(token, key, validation) else {
        return false;
    };
    if data.claims.kind != "api" {
        return false;
    }
    let Ok(id) = Uuid::parse_str(&data.claims.key_id) else {
        return false;
    };
    map.get(&id)
        .is_some_and(|r| r.active && r.expires_at.is_none())
}

fn jwt_validation() -> Validation {
    let mut validation = Validation::new(Algorithm::HS256);
    // keygate's tokens carry no `exp` (Audiobookshelf's default): nothing to require.
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation
}

// --- A `ring` HS256 provider for jsonwebtoken (built without any backend feature). ---

struct RingHs256(hmac::Key);

impl signature::Signer<Vec<u8>> for RingHs256 {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        Ok(hmac::sign(&self.0, msg).as_ref().to_vec())
    }
}

impl signature::Verifier<Vec<u8>> for RingHs256 {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        hmac::verify(&self.0, msg, signature).map_err(|_| signature::Error::new())
    }
}

impl JwtSigner for RingHs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl JwtVerifier for RingHs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

fn ring_signer(
    alg: &Algorithm,
    key: &EncodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    match alg {
        Algorithm::HS256 => Ok(Box::new(RingHs256(hmac::Key::new(
            hmac::HMAC_SHA256,
            key.as_bytes(),
        )))),
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

fn ring_verifier(
    alg: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    match alg {
        Algorithm::HS256 => Ok(Box::new(RingHs256(hmac::Key::new(
            hmac::HMAC_SHA256,
            key.try_get_as_bytes()?,
        )))),
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

static RING_PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: ring_signer,
    verifier_factory: ring_verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

fn install_provider() {
    // Process-wide; a second call (another group) finds it installed already.
    let _ = RING_PROVIDER.install_default();
}

// --- Interleaved (paired) timing ---

/// Iterations per chunk when two routines are timed alternately.
const CHUNK: u64 = 256;

/// Times two routines in alternating chunks of [`CHUNK`] iterations. Each call (one
/// criterion sample, or a warm-up round) keeps the time of every chunk pair: `a`'s chunk and
/// the `b` chunk right after it, well under a millisecond apart.
#[derive(Default)]
struct Paired(RefCell<Vec<Vec<(u64, Duration, Duration)>>>);

impl Paired {
    /// Runs `iters` iterations of each routine, interleaved; returns `a`'s time.
    fn run(&self, iters: u64, mut a: impl FnMut(), mut b: impl FnMut()) -> Duration {
        let mut chunks = Vec::with_capacity(iters.div_ceil(CHUNK) as usize);
        let mut left = iters;
        while left > 0 {
            let n = left.min(CHUNK);
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
        self.0.borrow_mut().push(chunks);
        total
    }

    /// Writes, for the last `samples` calls (criterion's measurement; the calls before
    /// them are its warm-up), the median a/b over all full chunk pairs to
    /// `<criterion dir>/<group>/paired/<size>.json`, with the median per-iteration time of
    /// each side's chunks. A chunk that a burst of load from other processes lands on is an
    /// outlier that the median ignores.
    fn save(&self, group: &str, size: &str, samples: usize) {
        let calls = self.0.borrow();
        let kept = &calls[calls.len().saturating_sub(samples)..];
        let pairs: Vec<(f64, f64)> = kept
            .iter()
            .flatten()
            .filter(|c| c.0 == CHUNK)
            .map(|c| (c.1.as_secs_f64(), c.2.as_secs_f64()))
            .collect();
        if pairs.is_empty() {
            return; // filtered out
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let ratio = median(pairs.iter().map(|(a, b)| a / b).collect());
        let per_iter_ns = |v: Vec<f64>| median(v) * 1e9 / CHUNK as f64;
        let json = format!(
            "{{\"median_ratio\":{ratio},\"chunk_pairs\":{},\"chunk\":{CHUNK},\
             \"keygate_median_ns\":{},\"floor_median_ns\":{}}}\n",
            pairs.len(),
            per_iter_ns(pairs.iter().map(|p| p.0).collect()),
            per_iter_ns(pairs.iter().map(|p| p.1).collect()),
        );
        let dir = paired_dir(group);
        if std::fs::create_dir_all(&dir).is_ok() {
            let _ = std::fs::write(dir.join(format!("{size}.json")), json);
        }
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

fn paired_dir(group: &str) -> PathBuf {
    criterion_dir().join(group).join("paired")
}

/// Drops a group's paired results from earlier runs, so a filtered run leaves none stale.
fn clear_paired(group: &str) {
    let _ = std::fs::remove_dir_all(paired_dir(group));
}

// --- Benchmarks ---

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

fn executor(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("executor");
    group.bench_function("block_on_ready", |b| {
        b.iter(|| rt.block_on(async { black_box(1u8) }))
    });
    group.finish();
}

/// A fixture built on first use, so that a filtered run (`-- opaque_verify/keygate/1e3`)
/// skips the other sizes' setup. Each prefix of the cycled tokens is checked once, on both
/// sides, right before its first benchmark (a check runs a real verify, so it also marks
/// those keys used, as the benchmark's warm-up would).
struct LazyFixture<'r, C> {
    rt: &'r Runtime,
    format: KeyFormat,
    n: usize,
    sample: usize,
    fx: OnceCell<Fixture>,
    checked: Cell<usize>,
    floor_accepts: C,
}

impl<'r, C: Fn(&Fixture, &Uuid, &str) -> bool> LazyFixture<'r, C> {
    fn new(rt: &'r Runtime, format: KeyFormat, n: usize, sample: usize, floor_accepts: C) -> Self {
        Self {
            rt,
            format,
            n,
            sample,
            fx: OnceCell::new(),
            checked: Cell::new(0),
            floor_accepts,
        }
    }

    /// The fixture and its first `k` cycled tokens and ids, checked.
    fn get(&self, k: usize) -> (&Fixture, &[&'static str], &[Uuid]) {
        let fx = self
            .fx
            .get_or_init(|| Fixture::build(self.rt, self.format, self.n, self.sample));
        let (tokens, ids) = fx.narrowed(k);
        let from = self.checked.get();
        for (t, uid) in tokens.iter().zip(ids).skip(from) {
            let p = self
                .rt
                .block_on(fx.gate.verify(t))
                .expect("keygate accepts");
            assert_eq!(p.key_id().as_uuid(), uid);
            assert!((self.floor_accepts)(fx, uid, t), "floor accepts");
        }
        self.checked.set(from.max(tokens.len()));
        (fx, tokens, ids)
    }
}

fn opaque_verify(c: &mut Criterion) {
    let rt = runtime();
    let pepper = hmac::Key::new(hmac::HMAC_SHA256, PEPPER);
    let accepts = |fx: &Fixture, uid: &Uuid, t: &str| opaque_floor(&fx.floor, &pepper, uid, t);
    const GROUP: &str = "opaque_verify";
    clear_paired(GROUP);
    let mut group = c.benchmark_group(GROUP);

    for (n, samples) in [
        (1_000, &[("1e3", SAMPLE)][..]),
        (1_000_000, &[("1e6", SAMPLE), ("1e6_cold", COLD_SAMPLE)][..]),
    ] {
        let max = samples.iter().map(|s| s.1).max().unwrap_or(SAMPLE);
        let lazy = LazyFixture::new(&rt, KeyFormat::Opaque, n, max, accepts);
        for &(id, k) in samples {
            let paired = Paired::default();
            group.bench_function(BenchmarkId::new("keygate", id), |b| {
                let (fx, tokens, ids) = lazy.get(k);
                let (mut i, mut j) = (0, 0);
                b.iter_custom(|iters| {
                    paired.run(
                        iters,
                        || {
                            let t = tokens[advance(&mut i, tokens.len())];
                            black_box(rt.block_on(fx.gate.verify(black_box(t))).is_ok());
                        },
                        || {
                            let at = advance(&mut j, tokens.len());
                            let (t, uid) = (tokens[at], &ids[at]);
                            black_box(rt.block_on(async {
                                opaque_floor(&fx.floor, &pepper, black_box(uid), black_box(t))
                            }));
                        },
                    )
                })
            });
            paired.save(GROUP, id, SAMPLES);
            group.bench_function(BenchmarkId::new("floor", id), |b| {
                let (fx, tokens, ids) = lazy.get(k);
                let mut i = 0;
                b.iter(|| {
                    let at = advance(&mut i, tokens.len());
                    let (t, uid) = (tokens[at], &ids[at]);
                    black_box(rt.block_on(async {
                        opaque_floor(&fx.floor, &pepper, black_box(uid), black_box(t))
                    }))
                })
            });
        }
    }
    group.finish();
}

fn jwt_verify(c: &mut Criterion) {
    install_provider();
    let rt = runtime();
    let key = DecodingKey::from_secret(JWT_SECRET);
    let validation = jwt_validation();
    // Cross-check too: jsonwebtoken accepts keygate's tokens under the same secret.
    let accepts = |fx: &Fixture, _: &Uuid, t: &str| jwt_floor(&fx.floor, &key, &validation, t);
    const GROUP: &str = "jwt_verify";
    clear_paired(GROUP);
    let mut group = c.benchmark_group(GROUP);

    for (id, n) in [("1e3", 1_000), ("1e6", 1_000_000)] {
        let lazy = LazyFixture::new(&rt, KeyFormat::Jwt, n, SAMPLE, accepts);
        let paired = Paired::default();
        group.bench_function(BenchmarkId::new("keygate", id), |b| {
            let (fx, tokens, _) = lazy.get(SAMPLE);
            let (mut i, mut j) = (0, 0);
            b.iter_custom(|iters| {
                paired.run(
                    iters,
                    || {
                        let t = tokens[advance(&mut i, tokens.len())];
                        black_box(rt.block_on(fx.gate.verify(black_box(t))).is_ok());
                    },
                    || {
                        let t = tokens[advance(&mut j, tokens.len())];
                        black_box(rt.block_on(async {
                            jwt_floor(&fx.floor, &key, &validation, black_box(t))
                        }));
                    },
                )
            })
        });
        paired.save(GROUP, id, SAMPLES);
        group.bench_function(BenchmarkId::new("floor", id), |b| {
            let (fx, tokens, _) = lazy.get(SAMPLE);
            let mut i = 0;
            b.iter(|| {
                let t = tokens[advance(&mut i, tokens.len())];
                black_box(
                    rt.block_on(async { jwt_floor(&fx.floor, &key, &validation, black_box(t)) }),
                )
            })
        });
    }
    group.finish();
}

/// Largest store a mint benchmark fills before starting over on a fresh one (untimed).
const MINT_STORE_CAP: usize = 100_000;

fn mint_gate() -> (Keygate, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    let gate = Keygate::builder(store.clone(), Pepper::new(1, PEPPER).expect("pepper"))
        .prefix(PREFIX)
        .jwt_secret(JwtSecret::new(JWT_SECRET).expect("jwt secret"))
        .build()
        .expect("gate");
    (gate, store)
}

fn mint(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("mint");
    for (id, format) in [("opaque", KeyFormat::Opaque), ("jwt", KeyFormat::Jwt)] {
        let mut current = mint_gate();
        group.bench_function(BenchmarkId::new("keygate", id), |b| {
            b.iter_custom(|iters| {
                // Mints go into a growing store of one owner, as in a real one; the store is
                // replaced (untimed) once it holds MINT_STORE_CAP keys, so the figure does
                // not depend on how many iterations criterion happens to run.
                if current.1.len() + iters as usize > MINT_STORE_CAP {
                    current = mint_gate();
                }
                let gate = &current.0;
                let started = Instant::now();
                for _ in 0..iters {
                    let new = NewKey::new("bench", "user").format(format);
                    black_box(rt.block_on(gate.mint(new)).expect("mint"));
                }
                started.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = executor, opaque_verify, jwt_verify, mint
}
criterion_main!(benches);
