//! Measures quick_cache and moka as `CachedStore` would use them: a `u128` id mapped to an
//! `Arc` record, single-flight loads on a miss, capacity 100 000.
//!
//! Prints, per crate: median hit latency; median hit latency while another thread floods
//! the cache with distinct-id misses; what a cancelled load leaves behind.

use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

type Val = Arc<[u8; 256]>;
const CAPACITY: u64 = 100_000;
const BATCH: u32 = 1_000;

trait Bench: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn hit(&self, id: u128) -> Option<Val>;
    /// A single-flight load of `id` with `load`.
    fn load<'a>(
        &'a self,
        id: u128,
        load: std::pin::Pin<Box<dyn Future<Output = Val> + Send + 'a>>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Val> + Send + 'a>>;
    fn len(&self) -> u64;
}

struct Quick(
    quick_cache::sync::Cache<
        u128,
        Val,
        quick_cache::UnitWeighter,
        std::collections::hash_map::RandomState,
    >,
);
struct Moka(moka::future::Cache<u128, Val>);

impl Bench for Quick {
    fn name(&self) -> &'static str {
        "quick_cache 0.7 (default-features = false, SipHash)"
    }
    fn hit(&self, id: u128) -> Option<Val> {
        self.0.get(&id)
    }
    fn load<'a>(
        &'a self,
        id: u128,
        load: std::pin::Pin<Box<dyn Future<Output = Val> + Send + 'a>>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Val> + Send + 'a>> {
        Box::pin(async move {
            match self.0.get_value_or_guard_async(&id).await {
                Ok(v) => v,
                Err(guard) => {
                    let v = load.await;
                    let _ = guard.insert(v.clone());
                    v
                }
            }
        })
    }
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
}

impl Bench for Moka {
    fn name(&self) -> &'static str {
        "moka 0.12 (features = [\"future\"])"
    }
    fn hit(&self, id: u128) -> Option<Val> {
        // moka's future cache has an async `get`; it never awaits on a hit.
        poll_once(self.0.get(&id)).flatten()
    }
    fn load<'a>(
        &'a self,
        id: u128,
        load: std::pin::Pin<Box<dyn Future<Output = Val> + Send + 'a>>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Val> + Send + 'a>> {
        Box::pin(async move { self.0.get_with(id, load).await })
    }
    fn len(&self) -> u64 {
        self.0.entry_count()
    }
}

fn poll_once<F: Future>(f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

fn value() -> Val {
    Arc::new([7u8; 256])
}

/// Median ns per hit over `batches` batches.
fn hit_latency(cache: &dyn Bench, hot: &[u128], batches: usize) -> f64 {
    let mut per_op: Vec<f64> = (0..batches)
        .map(|b| {
            let start = Instant::now();
            for i in 0..BATCH {
                let id = hot[(b * 7 + i as usize) % hot.len()];
                std::hint::black_box(cache.hit(id).expect("hot id is cached"));
            }
            start.elapsed().as_nanos() as f64 / f64::from(BATCH)
        })
        .collect();
    per_op.sort_by(|a, b| a.total_cmp(b));
    per_op[per_op.len() / 2]
}

fn seeded_ids(n: usize, seed: u64) -> Vec<u128> {
    let s = std::collections::hash_map::RandomState::new();
    (0..n as u64)
        .map(|i| u128::from(s.hash_one((seed, i))) << 64 | u128::from(i))
        .collect()
}

fn measure(cache: Arc<dyn Bench>, rt: &tokio::runtime::Runtime) {
    println!("## {}", cache.name());
    let hot = seeded_ids(1_000, 1);
    rt.block_on(async {
        for id in &hot {
            cache.load(*id, Box::pin(async { value() })).await;
        }
    });
    let quiet = hit_latency(&*cache, &hot, 3_000);
    println!("hit latency (median)                       : {quiet:8.1} ns");

    // Flood: another thread loads distinct ids as fast as it can (a miss each).
    let stop = Arc::new(AtomicBool::new(false));
    let misses = Arc::new(AtomicU64::new(0));
    let flood = {
        let (cache, stop, misses) = (cache.clone(), stop.clone(), misses.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut n: u128 = 1 << 100;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    cache.load(n, Box::pin(async { value() })).await;
                    misses.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let before = misses.load(Ordering::Relaxed);
    let start = Instant::now();
    let flooded = hit_latency(&*cache, &hot, 3_000);
    let rate = (misses.load(Ordering::Relaxed) - before) as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    println!(
        "hit latency under a miss flood (median)    : {flooded:8.1} ns  ({:.2}x; flood {:.0} misses/s)",
        flooded / quiet,
        rate
    );
    println!(
        "entries after the flood (capacity {CAPACITY})  : {}",
        cache.len()
    );

    // Cancellation: 100 000 loads dropped while their load is pending.
    let before = cache.len();
    let cancelled = seeded_ids(100_000, 2);
    let start = Instant::now();
    for id in &cancelled {
        let fut = cache.load(*id, Box::pin(std::future::pending()));
        assert!(poll_once(fut).is_none());
    }
    let per_cancel = start.elapsed().as_nanos() as f64 / cancelled.len() as f64;
    let stuck = rt.block_on(async {
        let mut stuck = 0;
        for id in cancelled.iter().take(1_000) {
            let done = tokio::time::timeout(
                Duration::from_secs(1),
                cache.load(*id, Box::pin(async { value() })),
            )
            .await;
            stuck += u32::from(done.is_err());
        }
        stuck
    });
    // A waiter takes over a load whose first caller is dropped.
    let takeover = rt.block_on(async {
        let id = u128::MAX - 1;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .load(
                        id,
                        Box::pin(async move {
                            let _ = rx.await;
                            value()
                        }),
                    )
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.load(id, Box::pin(async { value() })).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        first.abort();
        let ok = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .is_ok();
        drop(tx);
        ok
    });
    println!(
        "cancel 100 000 pending loads               : {per_cancel:8.1} ns each; later loads of those ids stuck: {stuck}/1000; entries {} -> {}; waiter takes over a dropped load: {takeover}",
        before,
        cache.len()
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let quick: Arc<dyn Bench> = Arc::new(Quick(quick_cache::sync::Cache::with(
        CAPACITY as usize,
        CAPACITY,
        quick_cache::UnitWeighter,
        Default::default(),
        Default::default(),
    )));
    measure(quick, &rt);
    let moka: Arc<dyn Bench> = Arc::new(Moka(moka::future::Cache::new(CAPACITY)));
    measure(moka, &rt);
}

#[allow(dead_code)]
fn _assert_hash<T: Hash>() {}
