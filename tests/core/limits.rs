//! Usage limits on the verify path (issue 9): GCRA rate limits exact under steady traffic
//! and bursts, Retry-After that works when honoured, credits exact to the instant of a
//! refill and under concurrency, owner-shared limits, handler charges, the limiter's
//! failure modes, aggregated events, and management (update, rotate, delete).

// Test code: a panic is how a test reports a failure, and fixtures index and count
// over small known values.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeDelta, TimeZone, Utc};
use keygate::limits::{
    CreditPolicy, CreditRefill, FailureMode, LimitCheck, LimitOutcome, Limiter, LimiterError,
    MemoryLimiter, RateLimit, Subject,
};
use keygate::{KeyId, KeyPatch, Keygate, ManualClock, MemoryStore, NewKey, Owner, VerifyError};

use crate::support::*;

/// 100 per minute, burst 100: an emission interval of exactly 600 ms.
fn per_minute(n: u64) -> RateLimit {
    RateLimit::new("requests", n, 60_000)
}

fn step(h: &Harness, d: Duration) {
    h.clock.advance(TimeDelta::from_std(d).unwrap());
}

async fn mint(h: &Harness, new: NewKey) -> String {
    h.gate.mint(new).await.unwrap().key.expose().to_owned()
}

fn rate_limited(result: Result<keygate::Principal, VerifyError>) -> keygate::limits::RateLimited {
    match result {
        Err(VerifyError::RateLimited(limited)) => *limited,
        other => panic!("expected rate_limited, got {other:?}"),
    }
}

#[tokio::test]
async fn steady_traffic_at_exactly_the_allowed_rate_is_never_refused() {
    let h = Harness::new();
    let key = mint(&h, NewKey::new("k", "alice").ratelimits([per_minute(100)])).await;
    // Spend the whole burst first: the Better Auth bug was a window that never reset
    // under steady traffic once it was full.
    for _ in 0..100 {
        h.gate.verify(&key).await.unwrap();
    }
    assert!(h.gate.verify(&key).await.is_err());
    for i in 0..5_000 {
        step(&h, Duration::from_millis(600));
        let principal = h
            .gate
            .verify(&key)
            .await
            .unwrap_or_else(|e| panic!("step {i}: {e:?}"));
        let allowance = principal.allowance().unwrap();
        assert_eq!(allowance.limits[0].remaining, 0, "step {i}");
    }
    // A rate the clock cannot step exactly (7 per second: 142857.142… µs) is never refused
    // at the nearest whole microsecond above it either.
    let h = Harness::new();
    let seven = RateLimit::new("requests", 7, 1000);
    let key = mint(&h, NewKey::new("k", "alice").ratelimits([seven])).await;
    for _ in 0..7 {
        h.gate.verify(&key).await.unwrap();
    }
    for i in 0..5_000 {
        step(&h, Duration::from_micros(142_858));
        h.gate
            .verify(&key)
            .await
            .unwrap_or_else(|e| panic!("step {i}: {e:?}"));
    }
}

#[tokio::test]
async fn a_burst_above_the_rate_is_refused_with_a_retry_after_that_works() {
    let h = Harness::new();
    let key = mint(&h, NewKey::new("k", "alice").ratelimits([per_minute(100)])).await;
    for _ in 0..100 {
        h.gate.verify(&key).await.unwrap();
    }
    let limited = rate_limited(h.gate.verify(&key).await);
    assert_eq!(limited.retry_after, Some(Duration::from_millis(600)));
    assert_eq!(limited.limit.name, "requests");
    assert_eq!(limited.limit.remaining, 0);
    // Just before the emission interval: still refused.
    step(&h, Duration::from_micros(599_999));
    let again = rate_limited(h.gate.verify(&key).await);
    assert_eq!(again.retry_after, Some(Duration::from_micros(1)));
    // Honoured exactly: exactly one more.
    step(&h, Duration::from_micros(1));
    h.gate.verify(&key).await.unwrap();
    let refused = h.gate.verify(&key).await.unwrap_err();
    // The HTTP answer: 429, never 401, with a whole-second Retry-After that works.
    let http = h.gate.http_outcome(&refused);
    assert_eq!(http.status, 429);
    assert_eq!(http.retry_after, Some(1));
    assert!(http.www_authenticate.is_none());
    step(
        &h,
        Duration::from_secs(u64::from(http.retry_after.unwrap())),
    );
    h.gate.verify(&key).await.unwrap();
    assert_eq!(h.gate.refusal_counts().get("rate_limited"), 3);
}

#[tokio::test]
async fn a_refused_or_bad_key_consumes_nothing() {
    let h = Harness::new();
    let issued = h
        .gate
        .mint(
            NewKey::new("k", "alice")
                .ratelimits([per_minute(1)])
                .credits(CreditPolicy::new(1)),
        )
        .await
        .unwrap();
    let key = issued.key.expose().to_owned();
    h.gate.revoke(issued.record.id).await.unwrap();
    for _ in 0..10 {
        assert!(h.gate.verify(&key).await.unwrap_err().rejection().is_some());
    }
    h.gate
        .update(issued.record.id, KeyPatch::new().active(true))
        .await
        .unwrap();
    h.users.set("alice", Owner::unrestricted().deactivated());
    for _ in 0..10 {
        assert!(h.gate.verify(&key).await.unwrap_err().rejection().is_some());
    }
    h.users.set("alice", Owner::unrestricted());
    // The one request and the one credit are still there.
    let principal = h.gate.verify(&key).await.unwrap();
    assert_eq!(principal.allowance().unwrap().credits, Some(0));
    // Both the limit and the credits are spent now; the credits are named (a retry after
    // the limit's interval would not help).
    assert!(matches!(
        h.gate.verify(&key).await,
        Err(VerifyError::CreditsExhausted(_))
    ));
    let record = h.gate.get(issued.record.id).await.unwrap().unwrap();
    assert_eq!(h.gate.credits_remaining(&record).await.unwrap(), Some(0));
}

#[tokio::test]
async fn credits_refill_at_the_exact_instant() {
    let h = Harness::new(); // t0 = 2030-01-01T12:00:00Z
    let key = mint(
        &h,
        NewKey::new("k", "alice").credits(CreditPolicy::new(2).refill(CreditRefill::daily(5))),
    )
    .await;
    h.gate.verify(&key).await.unwrap();
    h.gate.verify(&key).await.unwrap();
    let refused = h.gate.verify(&key).await.unwrap_err();
    let midnight = Utc.with_ymd_and_hms(2030, 1, 2, 0, 0, 0).unwrap();
    match &refused {
        VerifyError::CreditsExhausted(out) => {
            assert_eq!(out.remaining, 0);
            assert_eq!(out.retry_after, Some((midnight - t0()).to_std().unwrap()));
        }
        other => panic!("{other:?}"),
    }
    let http = h.gate.http_outcome(&refused);
    assert_eq!(http.status, 429);
    assert!(http.body.contains("credits_exhausted"));
    assert_eq!(http.retry_after, Some(12 * 3600));
    h.clock.set(midnight - TimeDelta::microseconds(1));
    assert!(matches!(
        h.gate.verify(&key).await,
        Err(VerifyError::CreditsExhausted(_))
    ));
    h.clock.set(midnight);
    let principal = h.gate.verify(&key).await.unwrap();
    assert_eq!(principal.allowance().unwrap().credits, Some(4));

    // Monthly on the 31st: in February, on its last day.
    let h = Harness::new();
    h.clock
        .set(Utc.with_ymd_and_hms(2030, 2, 10, 8, 0, 0).unwrap());
    let key = mint(
        &h,
        NewKey::new("k", "alice")
            .credits(CreditPolicy::new(1).refill(CreditRefill::monthly(3, 31))),
    )
    .await;
    h.gate.verify(&key).await.unwrap();
    let feb28 = Utc.with_ymd_and_hms(2030, 2, 28, 0, 0, 0).unwrap();
    h.clock.set(feb28 - TimeDelta::microseconds(1));
    assert!(h.gate.verify(&key).await.is_err());
    h.clock.set(feb28);
    let principal = h.gate.verify(&key).await.unwrap();
    assert_eq!(principal.allowance().unwrap().credits, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_are_counted_exactly() {
    let h = Harness::new();
    let key = Arc::new(mint(&h, NewKey::new("k", "alice").ratelimits([per_minute(100)])).await);
    let gate = h.gate.clone();
    let tasks: Vec<_> = (0..2_000)
        .map(|_| {
            let (gate, key) = (gate.clone(), key.clone());
            tokio::spawn(async move { gate.verify(&key).await.is_ok() })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        accepted += usize::from(task.await.unwrap());
    }
    assert_eq!(accepted, 100);
    step(&h, Duration::from_millis(600));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (gate, key) = (gate.clone(), key.clone());
            tokio::spawn(async move { gate.verify(&key).await.is_ok() })
        })
        .collect();
    let mut more = 0;
    for task in tasks {
        more += usize::from(task.await.unwrap());
    }
    assert_eq!(more, 1, "after one emission interval, exactly one more");

    // Credits: 10,000 concurrent uses of 5,000.
    let issued = h
        .gate
        .mint(NewKey::new("c", "alice").credits(CreditPolicy::new(5_000)))
        .await
        .unwrap();
    let key = Arc::new(issued.key.expose().to_owned());
    let tasks: Vec<_> = (0..10_000)
        .map(|_| {
            let (gate, key) = (gate.clone(), key.clone());
            tokio::spawn(async move { gate.verify(&key).await.is_ok() })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        accepted += usize::from(task.await.unwrap());
    }
    assert_eq!(accepted, 5_000);
    assert_eq!(
        h.gate.credits_remaining(&issued.record).await.unwrap(),
        Some(0)
    );
}

#[tokio::test]
async fn owner_limits_are_shared_by_the_owners_keys() {
    let h = Harness::with(|b| b.owner_ratelimits([RateLimit::new("requests", 3, 60_000)]));
    h.users.set("bob", Owner::unrestricted());
    let a1 = mint(&h, NewKey::new("a1", "alice")).await;
    let a2 = mint(&h, NewKey::new("a2", "alice")).await;
    let b1 = mint(&h, NewKey::new("b1", "bob")).await;
    h.gate.verify(&a1).await.unwrap();
    h.gate.verify(&a2).await.unwrap();
    h.gate.verify(&a1).await.unwrap();
    let limited = rate_limited(h.gate.verify(&a2).await);
    assert_eq!(limited.limit.scope, keygate::limits::LimitScope::Owner);
    let http = h
        .gate
        .http_outcome(&VerifyError::RateLimited(Box::new(limited)));
    assert!(http
        .headers
        .iter()
        .any(|(n, v)| *n == "ratelimit-policy" && v == r#""owner-requests";q=3;w=60"#));
    for _ in 0..3 {
        h.gate.verify(&b1).await.unwrap();
    }
    // The directory can give an owner other limits.
    h.users.set(
        "carol",
        Owner::unrestricted().with_ratelimits([RateLimit::new("requests", 1, 60_000)]),
    );
    let c1 = mint(&h, NewKey::new("c1", "carol")).await;
    h.gate.verify(&c1).await.unwrap();
    assert!(h.gate.verify(&c1).await.is_err());
    // Limits a directory gives that keygate cannot apply are refused, never ignored.
    h.users.set(
        "dave",
        Owner::unrestricted().with_ratelimits([RateLimit::new("requests", 0, 60_000)]),
    );
    let d1 = mint(&h, NewKey::new("d1", "dave")).await;
    assert!(matches!(
        h.gate.verify(&d1).await,
        Err(VerifyError::DirectoryUnavailable(_))
    ));
}

/// The allowance lists every limit charged, the owner's first, whether verify took the
/// in-process path (few limits) or the allocating one (more than it keeps on the stack),
/// and a refusal on either path gives the owner's charge back.
#[tokio::test]
async fn allowances_list_every_limit_charged_on_both_paths() {
    use keygate::limits::LimitScope;
    let h = Harness::with(|b| b.owner_ratelimits([RateLimit::new("shared", 100, 60_000)]));
    let few = mint(
        &h,
        NewKey::new("few", "alice").ratelimits([RateLimit::new("a", 1, 60_000)]),
    )
    .await;
    let many = mint(
        &h,
        NewKey::new("many", "alice").ratelimits([
            RateLimit::new("a", 10, 60_000),
            RateLimit::new("b", 2, 60_000),
            RateLimit::new("c", 5, 60_000),
        ]),
    )
    .await;
    let seen = |p: &keygate::Principal| {
        let allowance = p.allowance().unwrap();
        allowance
            .limits
            .iter()
            .map(|r| (r.name.clone(), r.scope, r.remaining))
            .collect::<Vec<_>>()
    };
    let principal = h.gate.verify(&few).await.unwrap();
    assert_eq!(
        seen(&principal),
        [
            ("shared".to_owned(), LimitScope::Owner, 99),
            ("a".to_owned(), LimitScope::Key, 0)
        ]
    );
    // Rendered once, the same on every read.
    assert_eq!(principal.allowance(), principal.clone().allowance());
    assert_eq!(rate_limited(h.gate.verify(&few).await).limit.name, "a");
    let principal = h.gate.verify(&many).await.unwrap();
    assert_eq!(
        seen(&principal),
        [
            ("shared".to_owned(), LimitScope::Owner, 98),
            ("a".to_owned(), LimitScope::Key, 9),
            ("b".to_owned(), LimitScope::Key, 1),
            ("c".to_owned(), LimitScope::Key, 4)
        ]
    );
    h.gate.verify(&many).await.unwrap();
    let limited = rate_limited(h.gate.verify(&many).await);
    assert_eq!(
        (limited.limit.name.as_str(), limited.limit.scope),
        ("b", LimitScope::Key)
    );
    // Both refusals gave the owner's charge back: 3 verifies allowed so far.
    let other = mint(&h, NewKey::new("other", "alice")).await;
    let principal = h.gate.verify(&other).await.unwrap();
    assert_eq!(
        seen(&principal),
        [("shared".to_owned(), LimitScope::Owner, 96)]
    );
}

#[tokio::test]
async fn a_key_refused_after_its_owner_was_charged_gives_the_owner_charge_back() {
    let h = Harness::with(|b| b.owner_ratelimits([RateLimit::new("requests", 2, 60_000)]));
    let empty = mint(
        &h,
        NewKey::new("no credits", "alice").credits(CreditPolicy::new(0)),
    )
    .await;
    for _ in 0..10 {
        assert!(matches!(
            h.gate.verify(&empty).await,
            Err(VerifyError::CreditsExhausted(_))
        ));
    }
    let other = mint(&h, NewKey::new("other", "alice")).await;
    h.gate.verify(&other).await.unwrap();
    h.gate.verify(&other).await.unwrap();
    assert!(h.gate.verify(&other).await.is_err());
}

#[tokio::test]
async fn handlers_charge_named_limits_after_verify() {
    let h = Harness::new();
    let tokens = RateLimit::new("tokens", 1000, 60_000).manual();
    let key = mint(
        &h,
        NewKey::new("k", "alice").ratelimits([per_minute(10), tokens]),
    )
    .await;
    let principal = h.gate.verify(&key).await.unwrap();
    // Verify charged the auto-applied limit only.
    let allowance = principal.allowance().unwrap();
    assert_eq!(allowance.limits.len(), 1);
    assert_eq!(allowance.limits[0].name, "requests");
    let left = h.gate.charge(&principal, "tokens", 800).await.unwrap();
    assert_eq!(left.limits[0].remaining, 200);
    let refused = h.gate.charge(&principal, "tokens", 250).await.unwrap_err();
    let limited = match &refused {
        VerifyError::RateLimited(limited) => limited,
        other => panic!("{other:?}"),
    };
    assert_eq!(limited.cost, 250);
    // 50 tokens more are needed: 50 × 60 ms.
    assert_eq!(limited.retry_after, Some(Duration::from_secs(3)));
    assert_eq!(h.gate.http_outcome(&refused).status, 429);
    // Nothing was charged: 200 still fit.
    h.gate.charge(&principal, "tokens", 200).await.unwrap();
    // More than the burst can never fit: no Retry-After.
    let never = h.gate.charge(&principal, "tokens", 1001).await.unwrap_err();
    assert_eq!(h.gate.http_outcome(&never).retry_after, None);
    // A key without a limit of that name is not limited by it.
    assert!(h.gate.charge(&principal, "bytes", 1 << 40).await.is_ok());
    // Credits by cost.
    let paid = mint(&h, NewKey::new("p", "alice").credits(CreditPolicy::new(10))).await;
    let principal = h.gate.verify(&paid).await.unwrap();
    h.gate.spend_credits(&principal, 9).await.unwrap();
    assert!(matches!(
        h.gate.spend_credits(&principal, 1).await,
        Err(VerifyError::CreditsExhausted(_))
    ));
}

/// A limiter whose backend is down.
struct DownLimiter;

#[async_trait]
impl Limiter for DownLimiter {
    async fn check(&self, _: &LimitCheck<'_>) -> Result<LimitOutcome, LimiterError> {
        Err(LimiterError::Timeout)
    }
    async fn credits(&self, _: KeyId, _: &CreditPolicy, _: i64) -> Result<u64, LimiterError> {
        Err(LimiterError::Timeout)
    }
    async fn forget(&self, _: Subject<'_>) -> Result<(), LimiterError> {
        Err(LimiterError::Timeout)
    }
}

#[tokio::test]
async fn a_failing_limiter_fails_closed_by_default_and_open_only_loudly() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let h = Harness::with(|b| b.limiter(DownLimiter));
    let key = mint(&h, NewKey::new("k", "alice").ratelimits([per_minute(1)])).await;
    let refused = h.gate.verify(&key).await.unwrap_err();
    assert!(matches!(refused, VerifyError::LimiterUnavailable(_)));
    let http = h.gate.http_outcome(&refused);
    assert_eq!((http.status, http.retry_after), (503, Some(5)));
    // A key without limits never asks the limiter.
    let free = mint(&h, NewKey::new("free", "alice")).await;
    h.gate.verify(&free).await.unwrap();

    let h = Harness::with(|b| b.limiter(DownLimiter).limiter_failure(FailureMode::Open));
    let key = mint(&h, NewKey::new("k", "alice").ratelimits([per_minute(1)])).await;
    capture.take();
    for _ in 0..20 {
        let principal = h.gate.verify(&key).await.unwrap();
        assert!(principal.allowance().unwrap().limits.is_empty());
    }
    let lines = capture.take();
    let warnings: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("fail open") && l.contains("WARN"))
        .collect();
    assert_eq!(warnings.len(), 1, "{lines:#?}");
}

#[tokio::test]
async fn hitting_a_limit_is_one_event_per_key_and_interval_with_a_count() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let h = Harness::with(|b| b.limit_event_interval(Duration::from_secs(60)));
    let issued = h
        .gate
        .mint(NewKey::new("k", "alice").ratelimits([per_minute(1)]))
        .await
        .unwrap();
    let key = issued.key.expose().to_owned();
    let id = issued.record.id.to_string();
    h.gate.verify(&key).await.unwrap();
    capture.take();
    for _ in 0..50 {
        assert!(h.gate.verify(&key).await.is_err());
    }
    let hits = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.contains("key hit a usage limit"))
            .cloned()
            .collect::<Vec<_>>()
    };
    let first = hits(&capture.take());
    assert_eq!(first.len(), 1, "{first:#?}");
    assert!(first[0].contains(&id) && first[0].contains("rate_limited"));
    assert!(first[0].contains("suppressed_before=0"));
    step(&h, Duration::from_secs(60));
    h.gate.verify(&key).await.unwrap();
    assert!(h.gate.verify(&key).await.is_err());
    let next = hits(&capture.take());
    assert_eq!(next.len(), 1, "{next:#?}");
    assert!(next[0].contains("suppressed_before=49"), "{next:#?}");
    assert!(!next[0].contains(&key));
}

#[tokio::test]
async fn updates_restart_credits_and_rotation_continues_them() {
    let h = Harness::new();
    let issued = h
        .gate
        .mint(NewKey::new("k", "alice").credits(CreditPolicy::new(3)))
        .await
        .unwrap();
    let id = issued.record.id;
    let key = issued.key.expose().to_owned();
    h.gate.verify(&key).await.unwrap();
    h.gate.verify(&key).await.unwrap();
    let record = h.gate.get(id).await.unwrap().unwrap();
    assert_eq!(h.gate.credits_remaining(&record).await.unwrap(), Some(1));
    // Changing something else keeps the count.
    let record = h
        .gate
        .update(id, KeyPatch::new().name("renamed"))
        .await
        .unwrap();
    assert_eq!(h.gate.credits_remaining(&record).await.unwrap(), Some(1));
    // Rotating continues it: the new key has 1 left, not 3.
    let rotated = h.gate.rotate(id, TimeDelta::zero()).await.unwrap();
    assert_eq!(rotated.record.credits.as_ref().unwrap().remaining, 1);
    let new_key = rotated.key.expose().to_owned();
    h.gate.verify(&new_key).await.unwrap();
    assert!(matches!(
        h.gate.verify(&new_key).await,
        Err(VerifyError::CreditsExhausted(_))
    ));
    // Setting credits restarts the count from the new policy.
    step(&h, Duration::from_secs(1));
    let record = h
        .gate
        .update(
            rotated.record.id,
            KeyPatch::new().credits(Some(CreditPolicy::new(2))),
        )
        .await
        .unwrap();
    assert_eq!(h.gate.credits_remaining(&record).await.unwrap(), Some(2));
    h.gate.verify(&new_key).await.unwrap();
    // Removing them: unlimited.
    h.gate
        .update(rotated.record.id, KeyPatch::new().credits(None))
        .await
        .unwrap();
    for _ in 0..5 {
        h.gate.verify(&new_key).await.unwrap();
    }
    // Limits are validated at mint and update.
    for bad in [
        NewKey::new("k", "alice").ratelimits([RateLimit::new("a b", 1, 1)]),
        NewKey::new("k", "alice").ratelimits([per_minute(1), per_minute(2)]),
        NewKey::new("k", "alice").credits(CreditPolicy::new(1 << 60)),
    ] {
        assert!(matches!(
            h.gate.mint(bad).await,
            Err(keygate::Error::InvalidInput { .. })
        ));
    }
    assert!(matches!(
        h.gate
            .update(id, KeyPatch::new().ratelimits([RateLimit::new("r", 0, 1)]))
            .await,
        Err(keygate::Error::InvalidInput {
            field: "ratelimits",
            ..
        })
    ));
}

#[tokio::test]
async fn a_shared_limiter_makes_two_gates_agree() {
    let limiter = Arc::new(MemoryLimiter::new());
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(t0()));
    let gate = |limiter: Arc<MemoryLimiter>| {
        Keygate::builder(store.clone(), pepper_v1())
            .prefix(PREFIX)
            .clock(clock.clone())
            .limiter(limiter)
            .build()
            .unwrap()
    };
    let (one, two) = (gate(limiter.clone()), gate(limiter));
    let issued = one
        .mint(NewKey::new("k", "alice").ratelimits([per_minute(2)]))
        .await
        .unwrap();
    let key = issued.key.expose();
    one.verify(key).await.unwrap();
    two.verify(key).await.unwrap();
    assert!(one.verify(key).await.is_err());
    assert!(two.verify(key).await.is_err());
    // Deleting the key drops its state.
    one.delete(issued.record.id).await.unwrap();
}
