//! The arithmetic every [`Limiter`](super::Limiter) follows, as pure functions: GCRA for rate
//! limits and lazy refills for credits. [`MemoryLimiter`](super::MemoryLimiter) is these
//! functions over a map; a store-backed limiter does the same inside its atomic script or
//! statement, and can test itself against them.
//!
//! # GCRA
//!
//! A limit of `limit` units per `duration` ms with burst `B` has the emission interval
//! `T = ceil(duration * 10^6 / limit)` nanoseconds (rounded up to a whole nanosecond, so a
//! client stepping at any whole number of microseconds no shorter than the true interval is
//! never refused). Its state is one instant, the theoretical arrival time `TAT` (ns since
//! the epoch; absent means "in the past"). A request of `cost` units at `now`:
//!
//! ```text
//! tat      = max(TAT, now)
//! new_tat  = tat + cost * T
//! allow_at = new_tat - B * T
//! allowed  = now >= allow_at        then TAT := new_tat
//! ```
//!
//! Refused, the request would fit `allow_at - now` later (never, if `cost > B`). Nothing
//! depends on windows, so there are no edges: steady traffic at exactly one unit per `T`
//! is allowed forever, and a fresh limit allows exactly `B` units at once.
//!
//! # Credits
//!
//! A key's credit state is `(remaining, last_refill, set_at)` ([`CreditState`]). At `now`,
//! before anything is spent ([`credits_at`]):
//!
//! 1. a policy set later than the state's `set_at` (or no state at all) starts the count
//!    afresh: `remaining = policy.remaining`, `last_refill = set_at = policy.set_at`
//!    (or `now` when the policy has no `set_at`);
//! 2. if the policy refills and its latest refill instant at or before `now` is later than
//!    `last_refill`, then `remaining = amount` and `last_refill` = that instant.
//!
//! A spend of `cost` is allowed when `remaining >= cost`, and then subtracts it.

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Utc};

use super::{CreditPolicy, CreditRefill, LimitStatus, RateLimit, RefillInterval};

const NANOS_PER_MICRO: i128 = 1_000;

/// The longest tolerance (`B * T`) the arithmetic uses, in nanoseconds (2 * 10^18, about
/// 63 years): a limit whose burst spans longer acts as if its burst were the units that
/// fit in 63 years ([`effective_burst`]). It keeps every `TAT` (at most
/// `now + 2 * CAP_NS`) inside an `i64` of nanoseconds until the year 2262, so a stored
/// `TAT` is never clamped: a clamped one would let every later request fit. The
/// store-backed limiters use the same burst.
pub(crate) const CAP_NS: i128 = 2_000_000_000_000_000_000;

/// The burst the arithmetic applies: [`RateLimit::burst`], or the units that fit in about
/// 63 years ([`CAP_NS`]) when that is fewer (only for limits whose burst times interval
/// spans longer; at least 63 units, since a validated interval is at most 366 days).
pub(crate) fn effective_burst(limit: &RateLimit) -> u64 {
    let t = interval_ns(limit);
    let units = u64::try_from(CAP_NS)
        .unwrap_or(u64::MAX)
        .checked_div(t)
        .unwrap_or(u64::MAX);
    limit.burst().min(units)
}
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The emission interval of `limit`, in nanoseconds: `ceil(duration * 10^6 / limit)`, at
/// least 1.
pub fn emission_interval_ns(limit: &RateLimit) -> i128 {
    i128::from(interval_ns(limit))
}

/// [`emission_interval_ns`] in `u64` (a validated limit's window is at most 3.2e16 ns, so
/// it fits): one 64-bit division, which the verify path pays per limit.
fn interval_ns(limit: &RateLimit) -> u64 {
    let window = limit.duration.saturating_mul(1_000_000);
    let units = limit.limit.max(1);
    window
        .saturating_add(units.saturating_sub(1))
        .checked_div(units)
        .unwrap_or(window)
        .max(1)
}

/// `now` (µs since the epoch) in nanoseconds.
pub fn now_ns(now_us: i64) -> i128 {
    i128::from(now_us).saturating_mul(NANOS_PER_MICRO)
}

/// Clamps a nanosecond instant into what a `TAT` is stored as (`i64` nanoseconds).
pub fn stored(ns: i128) -> i64 {
    i64::try_from(ns).unwrap_or(if ns < 0 { i64::MIN } else { i64::MAX })
}

/// Nanoseconds to whole microseconds, rounded up, never negative (64-bit division by a
/// constant: a multiply).
fn ceil_us(ns: i128) -> u64 {
    let ns = u64::try_from(ns.max(0)).unwrap_or(u64::MAX);
    ns.div_ceil(1_000)
}

/// One GCRA decision: the limit's `tat` (ns, `None` for no state), a request of `cost`
/// units at `now_us`. Returns the status and, when allowed, the new `TAT` to store.
///
/// ```
/// use keygate::limits::{gcra, RateLimit};
///
/// let limit = RateLimit::new("r", 2, 1000); // 2 per second: T = 500 ms
/// let (first, tat) = gcra::decide(None, 0, &limit, 1);
/// assert!(first.allowed && first.remaining == 1);
/// let (second, tat) = gcra::decide(tat, 0, &limit, 1);
/// assert!(second.allowed && second.remaining == 0);
/// let (third, none) = gcra::decide(tat, 0, &limit, 1);
/// assert!(!third.allowed && none.is_none());
/// assert_eq!(third.retry_after_us, Some(500_000));
/// ```
pub fn decide(
    tat: Option<i64>,
    now_us: i64,
    limit: &RateLimit,
    cost: u64,
) -> (LimitStatus, Option<i64>) {
    let t64 = interval_ns(limit);
    let t = i128::from(t64);
    let burst_units = effective_burst(limit);
    let burst = i128::from(burst_units);
    let now = now_ns(now_us);
    let tat = tat.map_or(now, |tat| i128::from(tat).max(now));
    let tolerance = burst.saturating_mul(t);
    let new_tat = tat.saturating_add(i128::from(cost).saturating_mul(t));
    let allow_at = new_tat.saturating_sub(tolerance);
    // Units that fit before `tat` passes `now + tolerance`: at most the burst. Divided in
    // 64 bits (an `i128` division is a slow library call on the verify path).
    let remaining_at = |tat: i128| {
        let room = now.saturating_add(tolerance).saturating_sub(tat).max(0);
        let room = u64::try_from(room).unwrap_or(u64::MAX);
        room.checked_div(t64).unwrap_or(0).min(burst_units)
    };
    if now >= allow_at {
        let status = LimitStatus::new(
            true,
            remaining_at(new_tat),
            ceil_us(new_tat.saturating_sub(now)),
            None,
        );
        (status, Some(stored(new_tat)))
    } else {
        let retry = (i128::from(cost) <= burst).then(|| ceil_us(allow_at.saturating_sub(now)));
        let status = LimitStatus::new(
            false,
            remaining_at(tat),
            ceil_us(tat.saturating_sub(now)),
            retry,
        );
        (status, None)
    }
}

/// The `TAT` after giving back `cost` units of an allowed charge at `now_us`: earlier by
/// `cost * T`, but not before `now` (a limit cannot hold more than its burst).
pub fn refund(tat: i64, now_us: i64, limit: &RateLimit, cost: u64) -> i64 {
    let t = emission_interval_ns(limit);
    let back = i128::from(tat).saturating_sub(i128::from(cost).saturating_mul(t));
    stored(back.max(now_ns(now_us)))
}

/// Whether a `TAT` no longer matters at `now_us` (it lies in the past: the limit is full).
pub fn is_idle(tat: i64, now_us: i64) -> bool {
    i128::from(tat) <= now_ns(now_us)
}

/// A key's credit state, as a limiter keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CreditState {
    /// Credits left.
    pub remaining: u64,
    /// The refill instant last applied (or the instant the count started), µs since the
    /// epoch.
    pub last_refill: i64,
    /// The [`CreditPolicy::set_at`] the count started from, µs since the epoch
    /// (`i64::MIN` for a policy without one).
    pub set_at: i64,
}

impl CreditState {
    /// A state with these values.
    pub fn new(remaining: u64, last_refill: i64, set_at: i64) -> Self {
        Self {
            remaining,
            last_refill,
            set_at,
        }
    }
}

/// The policy's `set_at` in µs, `i64::MIN` when it has none.
pub fn policy_set_at(policy: &CreditPolicy) -> i64 {
    policy.set_at.map_or(i64::MIN, |at| at.timestamp_micros())
}

/// The credit state at `now_us`, before spending: `state` (or none) brought up to date
/// with `policy` (a newer policy restarts the count) and its refills (see the module docs).
///
/// ```
/// use keygate::limits::{gcra, CreditPolicy, CreditRefill};
///
/// let day = 86_400_000_000; // µs
/// let policy = CreditPolicy::new(3).refill(CreditRefill::daily(10));
/// let fresh = gcra::credits_at(None, &policy, 5);
/// assert_eq!(fresh.remaining, 3);
/// let spent = gcra::CreditState::new(0, fresh.last_refill, fresh.set_at);
/// assert_eq!(gcra::credits_at(Some(spent), &policy, day - 1).remaining, 0);
/// assert_eq!(gcra::credits_at(Some(spent), &policy, day).remaining, 10); // at the instant
/// ```
pub fn credits_at(state: Option<CreditState>, policy: &CreditPolicy, now_us: i64) -> CreditState {
    let set_at = policy_set_at(policy);
    let mut state = match state {
        Some(state) if state.set_at >= set_at => state,
        _ => CreditState {
            remaining: policy.remaining,
            last_refill: if set_at == i64::MIN { now_us } else { set_at },
            set_at,
        },
    };
    if let Some(refill) = &policy.refill {
        if let Some(at) = last_refill_at(refill, now_us) {
            if at > state.last_refill {
                state.remaining = refill.amount;
                state.last_refill = at;
            }
        }
    }
    state
}

/// Spends `cost` from `state` (already brought up to date by [`credits_at`]): the status,
/// and the state to store when allowed.
pub fn spend(
    state: CreditState,
    policy: &CreditPolicy,
    now_us: i64,
    cost: u64,
) -> (super::CreditStatus, Option<CreditState>) {
    let next = policy
        .refill
        .as_ref()
        .and_then(|refill| next_refill_at(refill, now_us));
    match state.remaining.checked_sub(cost) {
        Some(left) => (
            super::CreditStatus::new(true, left, next),
            Some(CreditState {
                remaining: left,
                ..state
            }),
        ),
        None => (super::CreditStatus::new(false, state.remaining, next), None),
    }
}

/// The latest refill instant at or before `now_us` (µs), if any is representable.
pub fn last_refill_at(refill: &CreditRefill, now_us: i64) -> Option<i64> {
    match refill.interval {
        RefillInterval::Daily => {
            let day = now_us.div_euclid(MICROS_PER_DAY);
            day.checked_mul(MICROS_PER_DAY)
        }
        RefillInterval::Monthly => {
            let now = DateTime::<Utc>::from_timestamp_micros(now_us)?;
            let day = refill.refill_day.unwrap_or(1);
            let this = monthly_instant(now.year(), now.month(), day)?;
            if this <= now_us {
                Some(this)
            } else {
                let (year, month) = previous_month(now.year(), now.month());
                monthly_instant(year, month, day)
            }
        }
    }
}

/// The first refill instant after `now_us` (µs), if any is representable.
pub fn next_refill_at(refill: &CreditRefill, now_us: i64) -> Option<i64> {
    match refill.interval {
        RefillInterval::Daily => last_refill_at(refill, now_us)?.checked_add(MICROS_PER_DAY),
        RefillInterval::Monthly => {
            let now = DateTime::<Utc>::from_timestamp_micros(now_us)?;
            let day = refill.refill_day.unwrap_or(1);
            let this = monthly_instant(now.year(), now.month(), day)?;
            if this > now_us {
                Some(this)
            } else {
                let (year, month) = next_month(now.year(), now.month());
                monthly_instant(year, month, day)
            }
        }
    }
}

/// 00:00 UTC on `day` (clamped to the month's last day) of `year`-`month`, in µs.
fn monthly_instant(year: i32, month: u32, day: u8) -> Option<i64> {
    let first = NaiveDate::from_ymd_opt(year, month, 1)?;
    let (ny, nm) = next_month(year, month);
    let last = NaiveDate::from_ymd_opt(ny, nm, 1)?.checked_sub_signed(TimeDelta::days(1))?;
    let date = first.with_day(u32::from(day.max(1)).min(last.day()))?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros())
}

fn next_month(year: i32, month: u32) -> (i32, u32) {
    if month >= 12 {
        (year.saturating_add(1), 1)
    } else {
        (year, month.saturating_add(1))
    }
}

fn previous_month(year: i32, month: u32) -> (i32, u32) {
    if month <= 1 {
        (year.saturating_sub(1), 12)
    } else {
        (year, month.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn us(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .unwrap()
            .timestamp_micros()
    }

    #[test]
    fn a_fresh_limit_allows_exactly_its_burst_then_one_per_interval() {
        let limit = RateLimit::new("r", 100, 60_000); // T = 600 ms
        let mut tat = None;
        let now = us(2026, 1, 1, 0, 0, 0);
        for i in 0..100 {
            let (s, next) = decide(tat, now, &limit, 1);
            assert!(s.allowed, "{i}");
            assert_eq!(s.remaining, 99 - i);
            tat = next;
        }
        let (refused, none) = decide(tat, now, &limit, 1);
        assert!(!refused.allowed && none.is_none());
        assert_eq!(refused.retry_after_us, Some(600_000));
        assert_eq!(refused.reset_after_us, 60_000_000);
        let later = now + 600_000;
        let (one, next) = decide(tat, later - 1, &limit, 1);
        assert!(!one.allowed && next.is_none());
        let (one, next) = decide(tat, later, &limit, 1);
        assert!(one.allowed);
        let (two, _) = decide(next, later, &limit, 1);
        assert!(!two.allowed);
    }

    #[test]
    fn a_cost_above_the_burst_never_fits() {
        let limit = RateLimit::new("r", 10, 1000).with_burst(5);
        let (s, tat) = decide(None, 0, &limit, 6);
        assert!(!s.allowed && tat.is_none() && s.retry_after_us.is_none());
        let (s, _) = decide(None, 0, &limit, 5);
        assert!(s.allowed && s.remaining == 0);
    }

    #[test]
    fn a_tolerance_beyond_the_year_2262_never_lets_a_limit_run_unlimited() {
        // 1 per 366 days with a burst of 1000: B * T is ~1000 years of nanoseconds, more
        // than an `i64` TAT can hold. Clamping the stored TAT at `i64::MAX` used to make
        // every later request fit (allow_at = i64::MAX + T - B * T < now): unlimited.
        let limit =
            RateLimit::new("r", 1, super::super::MAX_RATELIMIT_DURATION_MS).with_burst(1000);
        let now = us(2026, 1, 1, 0, 0, 0);
        let mut tat = None;
        let mut allowed = 0u64;
        for _ in 0..5000 {
            let (status, next) = decide(tat, now, &limit, 1);
            if status.allowed {
                allowed += 1;
                tat = next;
            }
        }
        assert!(
            allowed <= limit.burst(),
            "allowed {allowed} of a burst of 1000"
        );
        // As the store limiters: a burst past about 63 years of intervals acts as 63 years.
        let cap = u64::try_from(CAP_NS / emission_interval_ns(&limit)).unwrap();
        assert_eq!((allowed, effective_burst(&limit)), (cap, cap));
        // A cost above that burst never fits, even with the limit full: one big charge
        // cannot take more than 63 years of emission time either.
        let (over, none) = decide(None, now, &limit, cap + 1);
        assert!(!over.allowed && none.is_none() && over.retry_after_us.is_none());
        let (fits, _) = decide(None, now, &limit, cap);
        assert!(fits.allowed && fits.remaining == 0);
    }

    #[test]
    fn emission_intervals_round_up_to_a_nanosecond() {
        assert_eq!(
            emission_interval_ns(&RateLimit::new("r", 3, 1000)),
            333_333_334
        );
        assert_eq!(emission_interval_ns(&RateLimit::new("r", 1, 1)), 1_000_000);
        assert_eq!(
            emission_interval_ns(&RateLimit::new("r", 1_000_000_000, 1)),
            1
        );
    }

    #[test]
    fn refunds_give_back_but_never_beyond_full() {
        let limit = RateLimit::new("r", 1, 1000);
        let (_, tat) = decide(None, 0, &limit, 1);
        let tat = tat.unwrap();
        assert_eq!(refund(tat, 0, &limit, 1), 0);
        assert!(
            decide(Some(refund(tat, 0, &limit, 1)), 0, &limit, 1)
                .0
                .allowed
        );
        assert_eq!(refund(tat, 0, &limit, 5), 0);
    }

    #[test]
    fn daily_refills_happen_at_midnight_utc_exactly() {
        let refill = CreditRefill::daily(7);
        let noon = us(2026, 3, 5, 12, 0, 0);
        assert_eq!(last_refill_at(&refill, noon), Some(us(2026, 3, 5, 0, 0, 0)));
        assert_eq!(next_refill_at(&refill, noon), Some(us(2026, 3, 6, 0, 0, 0)));
        let midnight = us(2026, 3, 6, 0, 0, 0);
        assert_eq!(last_refill_at(&refill, midnight), Some(midnight));
        assert_eq!(
            next_refill_at(&refill, midnight),
            Some(us(2026, 3, 7, 0, 0, 0))
        );
    }

    #[test]
    fn monthly_refills_clamp_to_short_months() {
        let refill = CreditRefill::monthly(7, 31);
        let feb = us(2026, 2, 20, 0, 0, 0);
        assert_eq!(last_refill_at(&refill, feb), Some(us(2026, 1, 31, 0, 0, 0)));
        assert_eq!(next_refill_at(&refill, feb), Some(us(2026, 2, 28, 0, 0, 0)));
        let leap = us(2028, 2, 29, 0, 0, 0);
        assert_eq!(last_refill_at(&refill, leap), Some(leap));
        let dec = CreditRefill::monthly(1, 1);
        assert_eq!(
            next_refill_at(&dec, us(2026, 12, 15, 0, 0, 0)),
            Some(us(2027, 1, 1, 0, 0, 0))
        );
        assert_eq!(
            last_refill_at(&dec, us(2026, 1, 1, 0, 0, 0) - 1),
            Some(us(2025, 12, 1, 0, 0, 0))
        );
    }

    #[test]
    fn credits_refill_at_the_exact_instant_and_newer_policies_restart_the_count() {
        let set = Utc.with_ymd_and_hms(2026, 1, 10, 15, 0, 0).unwrap();
        let mut policy = CreditPolicy::new(2).refill(CreditRefill::daily(5));
        policy.set_at = Some(set);
        let start = set.timestamp_micros();
        let s = credits_at(None, &policy, start);
        assert_eq!((s.remaining, s.last_refill), (2, start));
        let (st, spent) = spend(s, &policy, start, 2);
        assert!(st.allowed && st.remaining == 0);
        assert_eq!(st.next_refill, Some(us(2026, 1, 11, 0, 0, 0)));
        let spent = spent.unwrap();
        let (st, none) = spend(credits_at(Some(spent), &policy, start), &policy, start, 1);
        assert!(!st.allowed && none.is_none());
        let edge = us(2026, 1, 11, 0, 0, 0);
        assert_eq!(credits_at(Some(spent), &policy, edge - 1).remaining, 0);
        assert_eq!(credits_at(Some(spent), &policy, edge).remaining, 5);
        // An older policy (a stale cached record) never restarts the count.
        let mut old = policy.clone();
        old.set_at = Some(set - TimeDelta::days(1));
        old.refill = None;
        assert_eq!(credits_at(Some(spent), &old, start).remaining, 0);
        // A newer one does.
        let mut newer = policy.clone();
        newer.set_at = Some(set + TimeDelta::hours(1));
        newer.remaining = 9;
        let later = start + 3_600_000_000;
        assert_eq!(credits_at(Some(spent), &newer, later).remaining, 9);
    }
}
