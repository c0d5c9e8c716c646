//! `LocalFirst` (issue 9, "an optional local-first mode decides from memory and converges in
//! the background, with its overshoot bound documented and measured"):
//!
//! - N simulated nodes, each a `LocalFirst` over one shared `MemoryLimiter` (the store),
//!   driven by a manual clock with syncs at fixed simulated instants (aligned and
//!   staggered): under saturating traffic from every node the total admitted is at least
//!   what one exact limiter admits of the same traffic and at most that plus
//!   `LocalFirstConfig::overshoot_bound`, over the whole run and over every window of
//!   several lengths; traffic that conforms to the limit in total is never refused.
//! - Credits stay exact across nodes; a credit refusal gives the local rate-limit charge back.
//! - Through gates: 429s after the nodes converge; `shutdown` sends the last usage.
//! - A failing store: usage kept and sent once it is back; fail closed (503) past the
//!   staleness by default, or keep deciding locally with `FailureMode::Open`.
//! - The sync task on paused Tokio time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeDelta, TimeZone, Utc};
use keygate::limits::{
    Charge, CreditPolicy, CreditSpend, FailureMode, LimitCheck, LimitOutcome, Limiter,
    LimiterError, LocalFirst, LocalFirstConfig, MemoryLimiter, RateLimit, Subject,
};
use keygate::{Clock, KeyId, Keygate, ManualClock, MemoryStore, NewKey, Pepper, VerifyError};

/// 2030-01-01T12:00:00Z in µs.
const T0: i64 = 1_893_499_200_000_000;

/// How the simulated nodes' syncs are phased.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Every node syncs at the same instants, one after the other.
    Aligned,
    /// Node j syncs `j * S / N` after node 0.
    Staggered,
}

/// What the simulation measured.
#[derive(Debug)]
struct Run {
    /// Admitted per step (all nodes).
    admitted: Vec<u64>,
    /// What one exact `MemoryLimiter` admitted of the same requests, in the same order.
    exact: u64,
    /// Store calls made by all nodes' syncs.
    calls: u64,
}

impl Run {
    fn total(&self) -> u64 {
        self.admitted.iter().sum()
    }

    /// The most admitted in any `len` consecutive steps.
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

/// `nodes` local-first nodes over one store; every `step_us` each node gets `per_step`
/// requests of cost 1 (0: none); node `j` syncs every `sync_us` (phased per `phase`).
async fn simulate(
    nodes: usize,
    limit: &RateLimit,
    sync_us: i64,
    phase: Phase,
    step_us: i64,
    steps: usize,
    demand: impl Fn(usize, usize) -> u64,
) -> Run {
    let store = Arc::new(MemoryLimiter::new());
    let config = LocalFirstConfig::new().sync_interval(Duration::from_micros(sync_us as u64));
    let gates: Vec<_> = (0..nodes)
        .map(|_| LocalFirst::new(Arc::clone(&store), config))
        .collect();
    let exact = MemoryLimiter::new();
    let key = KeyId::random();
    let one = [Charge::new(limit, 1)];
    let mut admitted = vec![0u64; steps];
    let mut exact_total = 0;
    let mut syncs = vec![0i64; nodes];
    for (step, slot) in admitted.iter_mut().enumerate() {
        let now = T0 + step as i64 * step_us;
        for (j, node) in gates.iter().enumerate() {
            let offset = match phase {
                Phase::Aligned => 0,
                // Whole steps, so every node's sync instant is one the clock reaches.
                Phase::Staggered => j as i64 * sync_us / nodes as i64 / step_us * step_us,
            };
            if step > 0 && (now - T0 - offset).rem_euclid(sync_us) == 0 {
                node.sync().await.unwrap();
                syncs[j] += 1;
            }
        }
        for (j, node) in gates.iter().enumerate() {
            for _ in 0..demand(step, j) {
                let check = LimitCheck::new(Subject::Key(key), &one, None, now);
                let out = node.check_now(&check).unwrap().unwrap();
                if out.allowed {
                    *slot += 1;
                }
                if exact.check_now(&check).unwrap().unwrap().allowed {
                    exact_total += 1;
                }
            }
        }
    }
    // Every node synced every interval (the bound assumes it).
    let intervals = steps as i64 * step_us / sync_us;
    assert!(syncs.iter().all(|&n| n >= intervals - 1), "{syncs:?}");
    let calls = gates.iter().map(LocalFirst::store_calls).sum();
    Run {
        admitted,
        exact: exact_total,
        calls,
    }
}

/// The documented bound for `nodes` with syncs every `sync_us`, store calls instant.
fn bound(limit: &RateLimit, nodes: usize, sync_us: i64) -> u64 {
    LocalFirstConfig::new()
        .sync_interval(Duration::from_micros(sync_us as u64))
        .overshoot_bound(limit, nodes, Duration::ZERO)
}

/// Saturation from every node: within the bound over the run and over windows of 1, 10,
/// 60 sync intervals and a whole `duration` of the limit; never under one exact limiter.
async fn saturated(nodes: usize, limit: &RateLimit, sync_us: i64, phase: Phase) {
    let step_us = 10_000;
    let steps = 30_000; // 300 s
    let run = simulate(nodes, limit, sync_us, phase, step_us, steps, |_, _| 1).await;
    let bound = bound(limit, nodes, sync_us);
    let total = run.total();
    assert!(
        total >= run.exact,
        "{nodes} nodes, {phase:?}: admitted {total} < exact {}",
        run.exact
    );
    assert!(
        total <= run.exact + bound,
        "{nodes} nodes, {phase:?}: admitted {total} > exact {} + bound {bound}",
        run.exact
    );
    let t_us = (keygate::limits::gcra::emission_interval_ns(limit) / 1000) as u64;
    for window_us in [
        sync_us,
        10 * sync_us,
        60 * sync_us,
        limit.duration as i64 * 1000,
    ] {
        let len = (window_us / step_us) as usize;
        // One exact limiter admits at most B + ceil(W / T) in a window of W.
        let allowed = limit.burst() + (window_us as u64).div_ceil(t_us);
        let max = run.max_window(len);
        assert!(
            max <= allowed + bound,
            "{nodes} nodes, {phase:?}: {max} admitted in a window of {window_us} µs > {allowed} + {bound}"
        );
    }
    // One store call per subject per interval: the key is the only subject.
    let intervals = (steps as i64 * step_us / sync_us) as u64;
    assert!(run.calls <= nodes as u64 * intervals, "{} calls", run.calls);
    // Converged: over the last two minutes the fleet admits at the limit's rate (the debt
    // of the cold start paid back), not N times it.
    let tail = 12_000;
    let recent: u64 = run.admitted[steps - tail..].iter().sum();
    let per_rate = (tail as u64 * step_us as u64).div_ceil(t_us);
    assert!(
        recent <= per_rate + bound,
        "{nodes} nodes, {phase:?}: {recent} in the last 120 s, the rate allows {per_rate}"
    );
}

#[tokio::test]
async fn saturating_nodes_stay_within_the_documented_bound() {
    let per_minute = RateLimit::new("requests", 100, 60_000); // T = 600 ms, B = 100
    let bursty = RateLimit::new("requests", 10, 1_000).with_burst(5); // T = 100 ms, B = 5
    for nodes in [1, 2, 4] {
        for phase in [Phase::Aligned, Phase::Staggered] {
            saturated(nodes, &per_minute, 1_000_000, phase).await;
            saturated(nodes, &bursty, 200_000, phase).await;
        }
    }
}

#[tokio::test]
async fn one_node_is_exact() {
    let limit = RateLimit::new("requests", 100, 60_000);
    let run = simulate(
        1,
        &limit,
        1_000_000,
        Phase::Aligned,
        10_000,
        30_000,
        |_, _| 1,
    )
    .await;
    assert_eq!(run.total(), run.exact);
}

#[tokio::test]
async fn traffic_at_the_allowed_rate_in_total_is_never_refused() {
    // 10 per second, burst 10: T = 100 ms. The burst at the start, then one request every
    // T, dealt round-robin to the nodes (and, in a second run, in runs of 7 per node).
    let limit = RateLimit::new("requests", 10, 1_000);
    for nodes in [2, 3, 5] {
        for phase in [Phase::Aligned, Phase::Staggered] {
            for run_len in [1, 7] {
                let steps = 6_000; // 10 ms each: 60 s
                let run = simulate(nodes, &limit, 250_000, phase, 10_000, steps, |step, j| {
                    if step == 0 {
                        // The burst: 10 requests at once, spread over the nodes.
                        return (0..10).filter(|i| (i / run_len) % nodes == j).count() as u64;
                    }
                    if step % 10 != 0 {
                        return 0;
                    }
                    // Request k (from 0) at step 10 (k + 1): one every T.
                    u64::from(((step / 10 - 1) / run_len) % nodes == j)
                })
                .await;
                let offered = 10 + (steps as u64 - 1) / 10;
                assert_eq!(
                    run.total(),
                    offered,
                    "{nodes} nodes, {phase:?}, runs of {run_len}: conforming traffic refused"
                );
                assert_eq!(run.exact, offered);
            }
        }
    }
}

fn pepper() -> Pepper {
    Pepper::new(1, [5u8; 32]).unwrap()
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap(),
    ))
}

fn gate(store: &Arc<MemoryStore>, limiter: impl Limiter, clock: &Arc<ManualClock>) -> Keygate {
    Keygate::builder(Arc::clone(store), pepper())
        .prefix("lf")
        .clock(Arc::clone(clock))
        .limiter(limiter)
        .build()
        .unwrap()
}

#[tokio::test]
async fn gates_converge_and_shutdown_sends_the_last_usage() {
    let keys = Arc::new(MemoryStore::new());
    let store = Arc::new(MemoryLimiter::new());
    let clock = clock();
    let a = LocalFirst::new(Arc::clone(&store), LocalFirstConfig::new());
    let b = LocalFirst::new(Arc::clone(&store), LocalFirstConfig::new());
    let (ga, gb) = (
        gate(&keys, a.clone(), &clock),
        gate(&keys, b.clone(), &clock),
    );
    let limit = RateLimit::new("requests", 10, 60_000); // T = 6 s, B = 10
    let issued = ga
        .mint(NewKey::new("script", "user-1").ratelimits([limit.clone()]))
        .await
        .unwrap();
    let token = issued.key.expose();
    // Node b has seen the key once; node a then spends the rest of the burst.
    gb.verify(token).await.unwrap();
    for _ in 0..9 {
        ga.verify(token).await.unwrap();
    }
    // Before a sync b still believes 9 are left: the overshoot local-first allows.
    gb.verify(token).await.unwrap();
    b.sync().await.unwrap();
    a.sync().await.unwrap();
    b.sync().await.unwrap();
    // Both converged on 11 spent of 10: refused on both, with a 429 and a Retry-After.
    for g in [&ga, &gb] {
        let refused = g.verify(token).await.unwrap_err();
        assert!(
            matches!(refused, VerifyError::RateLimited(_)),
            "{refused:?}"
        );
        let http = refused.http("api");
        assert_eq!(http.status, 429);
        assert!(http.retry_after.is_some());
        assert!(http
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("ratelimit")));
    }
    a.sync().await.unwrap();
    // The debt (one unit) plus one interval: 12 s on, exactly one more fits.
    clock.advance(TimeDelta::seconds(12));
    gb.verify(token).await.unwrap();
    assert!(gb.verify(token).await.is_err());
    // shutdown sends b's pending unit; the store then has no room either.
    b.shutdown().await.unwrap();
    let one = [Charge::new(&limit, 1)];
    let now = clock.now_micros();
    let stored = store
        .check(&LimitCheck::new(
            Subject::Key(issued.record.id),
            &one,
            None,
            now,
        ))
        .await
        .unwrap();
    assert!(
        !stored.allowed,
        "the store did not hear of b's last request"
    );
}

#[tokio::test]
async fn credits_stay_exact_across_nodes() {
    let keys = Arc::new(MemoryStore::new());
    let store = Arc::new(MemoryLimiter::new());
    let clock = clock();
    let nodes: Vec<_> = (0..3)
        .map(|_| LocalFirst::new(Arc::clone(&store), LocalFirstConfig::new()))
        .collect();
    let gates: Vec<_> = nodes
        .iter()
        .map(|n| gate(&keys, n.clone(), &clock))
        .collect();
    let limit = RateLimit::new("requests", 1_000, 1_000);
    let issued = gates[0]
        .mint(
            NewKey::new("metered", "user-1")
                .ratelimits([limit.clone()])
                .credits(CreditPolicy::new(50)),
        )
        .await
        .unwrap();
    let token = issued.key.expose();
    let (mut ok, mut exhausted) = (0, 0);
    for i in 0..200 {
        match gates[i % 3].verify(token).await {
            Ok(_) => ok += 1,
            Err(VerifyError::CreditsExhausted(_)) => exhausted += 1,
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!((ok, exhausted), (50, 150));
    assert_eq!(
        gates[1].credits_remaining(&issued.record).await.unwrap(),
        Some(0)
    );
    // The refused verifies gave their rate-limit charge back: 50 units were sent, not 200.
    let mut units = 0;
    for node in &nodes {
        units += node.sync().await.unwrap().units;
    }
    assert_eq!(units, 50);
}

/// A limiter that fails while told to.
struct Flaky {
    inner: MemoryLimiter,
    failing: AtomicBool,
}

impl Flaky {
    fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    fn gate(&self) -> Result<(), LimiterError> {
        if self.failing.load(Ordering::SeqCst) {
            Err(LimiterError::Backend("store down".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Limiter for Flaky {
    async fn check(&self, check: &LimitCheck<'_>) -> Result<LimitOutcome, LimiterError> {
        self.gate()?;
        self.inner.check(check).await
    }

    async fn credits(
        &self,
        key: KeyId,
        policy: &CreditPolicy,
        now: i64,
    ) -> Result<u64, LimiterError> {
        self.gate()?;
        self.inner.credits(key, policy, now).await
    }

    async fn forget(&self, subject: Subject<'_>) -> Result<(), LimiterError> {
        self.gate()?;
        self.inner.forget(subject).await
    }
}

fn flaky() -> Arc<Flaky> {
    Arc::new(Flaky {
        inner: MemoryLimiter::new(),
        failing: AtomicBool::new(false),
    })
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_keeps_the_usage_then_fails_closed_past_the_staleness() {
    let store = flaky();
    let config = LocalFirstConfig::new().max_staleness(Duration::from_secs(2));
    let node = LocalFirst::new(Arc::clone(&store), config);
    let limit = RateLimit::new("r", 100, 1_000);
    let key = KeyId::random();
    let one = [Charge::new(&limit, 1)];
    let check = |now| LimitCheck::new(Subject::Key(key), &one, None, now);
    store.fail(true);
    for _ in 0..5 {
        assert!(node.check_now(&check(T0)).unwrap().unwrap().allowed);
    }
    let failed = node.sync().await.unwrap_err();
    assert!(matches!(failed, LimiterError::Backend(_)));
    // Still deciding locally within the staleness.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(node.check_now(&check(T0)).unwrap().unwrap().allowed);
    assert!(node.sync().await.is_err());
    // Past it: checks fail (the gate answers 503 by default).
    tokio::time::advance(Duration::from_millis(1_500)).await;
    assert!(node.sync().await.is_err());
    assert!(node.check_now(&check(T0)).unwrap().is_err());
    // The store is back: the six units admitted meanwhile arrive, and checks work again.
    store.fail(false);
    let report = node.sync().await.unwrap();
    assert_eq!(report.units, 6);
    assert!(node.check_now(&check(T0)).unwrap().unwrap().allowed);
    let peek = [Charge::new(&limit, 0)];
    let stored = store
        .inner
        .check(&LimitCheck::new(Subject::Key(key), &peek, None, T0))
        .await
        .unwrap();
    assert_eq!(stored.limits[0].remaining, 94);
}

#[tokio::test(start_paused = true)]
async fn a_gate_answers_503_when_the_store_stays_down_and_fail_open_keeps_limiting() {
    let keys = Arc::new(MemoryStore::new());
    let clock = clock();
    let store = flaky();
    let closed = LocalFirst::new(
        Arc::clone(&store),
        LocalFirstConfig::new().max_staleness(Duration::ZERO),
    );
    let open = LocalFirst::new(
        Arc::clone(&store),
        LocalFirstConfig::new()
            .max_staleness(Duration::ZERO)
            .on_store_failure(FailureMode::Open),
    );
    let (gc, go) = (
        gate(&keys, closed.clone(), &clock),
        gate(&keys, open.clone(), &clock),
    );
    let limit = RateLimit::new("requests", 2, 60_000);
    let issued = gc
        .mint(NewKey::new("script", "user-1").ratelimits([limit]))
        .await
        .unwrap();
    let token = issued.key.expose();
    gc.verify(token).await.unwrap();
    go.verify(token).await.unwrap();
    store.fail(true);
    assert!(closed.sync().await.is_err());
    assert!(open.sync().await.is_err());
    let refused = gc.verify(token).await.unwrap_err();
    assert!(
        matches!(refused, VerifyError::LimiterUnavailable(_)),
        "{refused:?}"
    );
    assert_eq!(refused.http("api").status, 503);
    // Open: the node keeps limiting on its own (one left of its local burst of 2), never
    // unlimited.
    go.verify(token).await.unwrap();
    assert!(matches!(
        go.verify(token).await.unwrap_err(),
        VerifyError::RateLimited(_)
    ));
    // Back: the closed node sends what it kept, recovers, and answers again (its second
    // unit; the open node's usage reaches the store with its next sync).
    store.fail(false);
    closed.sync().await.unwrap();
    gc.verify(token).await.unwrap();
    assert!(matches!(
        gc.verify(token).await.unwrap_err(),
        VerifyError::RateLimited(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn the_sync_task_converges_nodes_on_its_own() {
    let store = Arc::new(MemoryLimiter::new());
    let config = LocalFirstConfig::new().sync_interval(Duration::from_millis(100));
    let a = LocalFirst::start(Arc::clone(&store), config).unwrap();
    let b = LocalFirst::start(Arc::clone(&store), config).unwrap();
    let limit = RateLimit::new("r", 10, 60_000);
    let one = [Charge::new(&limit, 1)];
    let check = LimitCheck::new(Subject::Owner("u"), &one, None, T0);
    assert!(b.check_now(&check).unwrap().unwrap().allowed);
    for _ in 0..9 {
        assert!(a.check_now(&check).unwrap().unwrap().allowed);
    }
    // Neither knows of the other's usage yet; the task syncs both within two intervals.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        !a.check_now(&check).unwrap().unwrap().allowed,
        "a did not converge"
    );
    assert!(
        !b.check_now(&check).unwrap().unwrap().allowed,
        "b did not converge"
    );
    assert!(a.store_calls() >= 2 && b.store_calls() >= 2);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    let calls = a.store_calls();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(a.store_calls(), calls, "the task still runs after shutdown");
}

#[tokio::test]
async fn start_needs_a_runtime() {
    let outside = std::thread::spawn(|| {
        LocalFirst::start(MemoryLimiter::new(), LocalFirstConfig::new()).is_err()
    });
    assert!(outside.join().unwrap());
    assert!(LocalFirst::start(MemoryLimiter::new(), LocalFirstConfig::new()).is_ok());
    // The credit path refunds a local charge when the credits are refused.
    let store = Arc::new(MemoryLimiter::new());
    let node = LocalFirst::new(Arc::clone(&store), LocalFirstConfig::new());
    let limit = RateLimit::new("r", 1, 60_000);
    let one = [Charge::new(&limit, 1)];
    let none = CreditPolicy::new(0);
    let key = KeyId::random();
    let spend = LimitCheck::new(
        Subject::Key(key),
        &one,
        Some(CreditSpend::new(&none, 1)),
        T0,
    );
    let out = node.check(&spend).await.unwrap();
    assert!(!out.allowed && !out.credits.unwrap().allowed);
    assert!(out.limits[0].allowed && out.limits[0].remaining == 1);
    let plain = LimitCheck::new(Subject::Key(key), &one, None, T0);
    assert!(
        node.check_now(&plain).unwrap().unwrap().allowed,
        "the refused spend kept its charge"
    );
}
