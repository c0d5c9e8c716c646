//! Rate-limit and credit arithmetic (`keygate::limits::gcra`), which every limiter follows:
//! `decide`, `refund`, `credits_at`, `spend`, `last_refill_at`, `next_refill_at`.
//!
//! Input (`arbitrary`): a rate limit's `limit`, `duration` and optional `burst` (mapped into
//! the validated ranges, edges included), a starting instant between 1970 and 2200, and up
//! to 64 steps (advance the clock by some µs, charge a cost); a credit policy (remaining,
//! refill daily or monthly on any day byte, 0 and 32 included) and spends.
//!
//! Oracle:
//! - never a panic, for any instant and cost (unvalidated refill days included);
//! - GCRA's promise, counted from the first allowed charge at `t0`: the units allowed by `t`
//!   cost at most `B * T + (t - t0)` of emission time, where `B` is the burst or the units
//!   that fit in 63 years if fewer; so a limit is never unlimited, whatever its burst and
//!   interval (a `TAT` clamped at `i64::MAX` made it so, and capping only the arithmetic
//!   let one huge charge through every 63 years);
//! - a cost above `B` is never allowed and has no retry-after; a refused cost within
//!   the burst fits at exactly `now + retry_after` (the `Retry-After` that, when honoured,
//!   succeeds), and not 1 µs earlier;
//! - `remaining` never exceeds the burst; a refund never moves the `TAT` before `now`;
//! - credits: a spend is allowed exactly when the count covers it and leaves the count
//!   minus the cost; the count never rises except to the refill amount at a refill
//!   instant; a refill instant is at or before `now` and the next one after it, a day apart
//!   for daily refills and at most 31 days apart for monthly ones.
#![no_main]

use arbitrary::Arbitrary;
use keygate::bounds::{MAX_CREDITS, MAX_RATELIMIT_DURATION_MS, MAX_RATELIMIT_LIMIT};
use keygate::limits::gcra;
use keygate::limits::{CreditPolicy, CreditRefill, RateLimit, RefillInterval};
use libfuzzer_sys::fuzz_target;

/// 2200-01-01T00:00:00Z in µs: TATs up to 63 years later still fit `i64` nanoseconds.
const LATEST_START: i64 = 7_258_118_400_000_000;
const DAY_US: i64 = 86_400_000_000;
/// The 63-year cap on `B * T` (`gcra::CAP_NS`, crate-private).
const CAP_NS: i128 = 2_000_000_000_000_000_000;

#[derive(Arbitrary, Debug)]
struct Input {
    limit: u64,
    duration: u64,
    burst: Option<u64>,
    start: u64,
    steps: Vec<(u32, u64)>,
    remaining: u64,
    monthly: bool,
    amount: u64,
    day: u8,
    set_at: Option<u32>,
    spends: Vec<(u64, u64)>,
}

/// `x` into `1..=max`, with small values and `max` itself likely.
fn into_range(x: u64, max: u64) -> u64 {
    match x % 4 {
        0 => max,
        1 => 1,
        _ => x % max + 1,
    }
}

fn check_limit(input: &Input) {
    let mut limit = RateLimit::new(
        "r",
        into_range(input.limit, MAX_RATELIMIT_LIMIT),
        into_range(input.duration, MAX_RATELIMIT_DURATION_MS),
    );
    if let Some(burst) = input.burst {
        limit = limit.with_burst(into_range(burst, MAX_RATELIMIT_LIMIT));
    }
    assert!(limit.validate().is_ok(), "{limit:?}");
    let t = gcra::emission_interval_ns(&limit);
    // The burst applied: the configured one, or what fits in 63 years when that is fewer.
    let burst = limit.burst().min(u64::try_from(CAP_NS / t).unwrap());
    let budget = i128::from(burst) * t;
    let mut now = i64::try_from(input.start % (LATEST_START as u64)).unwrap();
    let mut tat: Option<i64> = None;
    let mut first: Option<i64> = None;
    let mut spent: i128 = 0;
    for &(advance, cost) in input.steps.iter().take(64) {
        now += i64::from(advance);
        let cost = match cost % 5 {
            0 => cost,
            1 => u64::MAX,
            _ => cost % (burst + 2),
        };
        let (status, next) = gcra::decide(tat, now, &limit, cost);
        assert!(status.remaining <= burst, "{limit:?} {status:?}");
        if status.allowed {
            let next = next.expect("an allowed charge stores its TAT");
            assert!(
                cost <= burst,
                "a cost above the burst fitted: {limit:?} cost {cost}"
            );
            let t0 = *first.get_or_insert(now);
            spent += i128::from(cost) * t;
            let elapsed = (i128::from(now) - i128::from(t0)) * 1000;
            assert!(
                spent <= budget + elapsed,
                "more than the limit allows: {limit:?} spent {spent} ns of emission time, budget {budget} + {elapsed}"
            );
            assert!(
                i128::from(next) >= i128::from(now) * 1000,
                "a TAT before now"
            );
            let back = gcra::refund(next, now, &limit, cost);
            assert!(i128::from(back) >= i128::from(now) * 1000 && back <= next);
            tat = Some(next);
        } else {
            assert!(next.is_none(), "a refused charge stored a TAT");
            if cost > burst {
                assert_eq!(status.retry_after_us, None, "{limit:?} cost {cost}");
            } else {
                let retry = status
                    .retry_after_us
                    .expect("a cost within the burst can retry");
                let at = now
                    .checked_add(i64::try_from(retry).expect("retry fits"))
                    .expect("retry instant fits");
                assert!(
                    gcra::decide(tat, at, &limit, cost).0.allowed,
                    "honouring Retry-After failed: {limit:?} cost {cost} at {now} + {retry}"
                );
                assert!(
                    retry == 0 || !gcra::decide(tat, at - 1, &limit, cost).0.allowed,
                    "Retry-After was longer than needed: {limit:?} cost {cost}"
                );
            }
        }
    }
}

fn check_credits(input: &Input) {
    let remaining = input.remaining % (MAX_CREDITS + 1);
    let amount = input.amount % (MAX_CREDITS + 1);
    let refill = if input.monthly {
        CreditRefill::monthly(amount, input.day)
    } else {
        CreditRefill::daily(amount)
    };
    let start = i64::try_from(input.start % (LATEST_START as u64)).unwrap();
    // Unvalidated refill days (0, 32, 255) must not panic either.
    for now in [start, 0, -1, i64::MIN, i64::MAX, start.wrapping_neg()] {
        let last = gcra::last_refill_at(&refill, now);
        let next = gcra::next_refill_at(&refill, now);
        if let (Some(last), Some(next)) = (last, next) {
            assert!(
                last <= now && now < next,
                "{refill:?} at {now}: {last} {next}"
            );
            match refill.interval {
                RefillInterval::Daily => assert_eq!(next - last, DAY_US),
                _ => assert!(next - last <= 31 * DAY_US, "{refill:?} at {now}"),
            }
        }
    }
    let mut policy = CreditPolicy::new(remaining).refill(refill);
    if policy.validate().is_err() {
        return;
    }
    policy.set_at = input
        .set_at
        .and_then(|s| keygate::chrono::DateTime::from_timestamp_micros(start - i64::from(s)));
    let mut now = start;
    let mut state = None;
    for &(advance, cost) in input.spends.iter().take(64) {
        now += i64::try_from(advance % (40 * DAY_US as u64)).unwrap();
        let cost = if cost % 3 == 0 { u64::MAX } else { cost % 8 };
        let before: Option<gcra::CreditState> = state;
        let current = gcra::credits_at(state, &policy, now);
        if let Some(before) = before {
            assert!(
                current.remaining <= before.remaining
                    || (current.remaining == amount && current.last_refill > before.last_refill),
                "credits rose without a refill: {before:?} -> {current:?}"
            );
            assert!(current.last_refill >= before.last_refill);
        }
        let (status, next) = gcra::spend(current, &policy, now, cost);
        assert_eq!(status.allowed, current.remaining >= cost);
        match next {
            Some(next) => {
                assert!(status.allowed);
                assert_eq!(next.remaining, current.remaining - cost);
                assert_eq!(status.remaining, next.remaining);
                state = Some(next);
            }
            None => {
                assert!(!status.allowed);
                assert_eq!(status.remaining, current.remaining);
                state = Some(current);
            }
        }
    }
}

fuzz_target!(|input: Input| {
    check_limit(&input);
    check_credits(&input);
});
