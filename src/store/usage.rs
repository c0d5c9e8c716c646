//! What the store-backed [`Limiter`](crate::limits::Limiter)s share: turning a
//! [`LimitCheck`] into the integers their script or statement takes ([`Prepared`]), and
//! turning the state it read back into a [`LimitOutcome`] with [`gcra`]'s own functions.
//!
//! The division of labour, the same in Redis, PostgreSQL and SQLite:
//!
//! - Rust computes everything that needs `i128`, rounding or a calendar: each limit's
//!   increment `cost * T` and tolerance `B * T` in nanoseconds, and the credit policy's
//!   latest refill instant at `now`.
//! - The script or statement, atomically: reads the subject's state, takes
//!   `tat = max(TAT, now)`, allows a limit when `tat + cost * T <= now + B * T`, brings the
//!   credits up to date exactly as [`gcra::credits_at`] does and allows them when
//!   `remaining >= cost`; if *everything* is allowed it writes every new `TAT` and the
//!   spent credits, otherwise nothing. It answers with its decision and the state it read.
//! - Rust then runs [`gcra::decide`] and [`gcra::credits_at`]/[`gcra::spend`] on that state,
//!   so the statuses (remaining, reset, retry-after) come from the one implementation of
//!   the arithmetic. The store's decision is authoritative; the two agree (the tests check
//!   it against random sequences).
//!
//! Tolerances are at most [`CAP_NS`] (about 63 years: the burst is
//! [`gcra::effective_burst`]) and increments are capped at one more than that, so that
//! `now + tolerance + increment` stays inside an `i64` of nanoseconds (SQL) and inside the
//! 2^53 integers a Lua number holds exactly when split into microseconds and a nanosecond
//! remainder (Redis). A limit whose burst times interval exceeds 63 years behaves as if its
//! burst were what fits in 63 years.

use crate::limits::gcra::CreditState;
use crate::limits::{gcra, LimitCheck, LimitOutcome, LimitStatus, LimiterError};
use crate::store::StoreError;

/// The largest increment or tolerance passed to a store, in nanoseconds (2 * 10^18, about
/// 63 years): `now + 2 * CAP_NS` (+ 1) stays below `i64::MAX` until the year 2262. The
/// same cap as [`gcra::decide`]'s.
pub(crate) const CAP_NS: i128 = gcra::CAP_NS;

/// The largest credit cost passed to a store: one more than the largest count a policy
/// may hold (2^53 - 1), so a larger cost is refused exactly as it would be, and every
/// number stays exact in a Lua double.
const CREDIT_COST_CAP: u64 = 1 << 53;

/// A [`LimitCheck`] as the integers a store's script or statement takes.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// `now` in nanoseconds since the epoch.
    pub(crate) now_ns: i64,
    /// `now` in microseconds since the epoch (never negative).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // Redis's script takes it
    pub(crate) now_us: i64,
    /// The limits' names, in the check's order.
    pub(crate) names: Vec<String>,
    /// Each limit's `cost * T` in nanoseconds, capped at [`CAP_NS`].
    pub(crate) incs: Vec<i64>,
    /// Each limit's `B * T` in nanoseconds, capped at [`CAP_NS`].
    pub(crate) tols: Vec<i64>,
    /// The credit spend, if the check has one.
    pub(crate) credits: Option<PreparedCredits>,
}

/// A credit spend as integers.
#[derive(Debug)]
pub(crate) struct PreparedCredits {
    /// Credits to spend (capped at 2^53).
    pub(crate) cost: i64,
    /// The policy's starting count.
    pub(crate) remaining: i64,
    /// The policy's `set_at` in µs (`i64::MIN` without one).
    pub(crate) set_at: i64,
    /// `last_refill` of a count that starts afresh: `set_at`, or `now` without one.
    pub(crate) fresh_last: i64,
    /// The policy's latest refill instant at or before `now` (µs), if it refills.
    pub(crate) refill_at: Option<i64>,
    /// The count after a refill.
    pub(crate) amount: i64,
}

/// Nanoseconds, capped to `0..=CAP_NS`, as an `i64`.
fn capped(ns: i128) -> i64 {
    i64::try_from(ns.clamp(0, CAP_NS)).unwrap_or(i64::MAX)
}

/// A count as an `i64` (policies hold at most 2^53 - 1).
fn count(n: u64) -> i64 {
    i64::try_from(n.min(CREDIT_COST_CAP)).unwrap_or(i64::MAX)
}

/// The clock read before 1970: store-backed limiters keep non-negative instants only.
#[derive(Debug, thiserror::Error)]
#[error("the gate's clock reads before 1970; store-backed limiters need a later clock")]
struct ClockBeforeEpoch;

/// Prepares `check` for a store.
///
/// # Errors
///
/// [`LimiterError::Backend`] if `now` is before 1970 (the stores keep non-negative
/// instants) or past the year 2262 (nanoseconds no longer fit an `i64`).
pub(crate) fn prepare(check: &LimitCheck<'_>) -> Result<Prepared, LimiterError> {
    let now_us = check.now;
    let now_ns = i64::try_from(gcra::now_ns(now_us))
        .ok()
        .filter(|_| now_us >= 0);
    let Some(now_ns) = now_ns else {
        return Err(LimiterError::backend(ClockBeforeEpoch));
    };
    let mut names = Vec::with_capacity(check.limits.len());
    let mut incs = Vec::with_capacity(check.limits.len());
    let mut tols = Vec::with_capacity(check.limits.len());
    for charge in check.limits {
        let t = gcra::emission_interval_ns(charge.limit);
        names.push(charge.limit.name.clone());
        // The burst `gcra::decide` applies: its tolerance is at most `CAP_NS`.
        let burst = gcra::effective_burst(charge.limit);
        let tol = capped(i128::from(burst).saturating_mul(t));
        let mut inc = capped(i128::from(charge.cost).saturating_mul(t));
        if charge.cost > burst {
            // Capped, both could be `CAP_NS` and the charge would fit when the limit is
            // full: a cost above the burst never fits, so its increment exceeds the
            // tolerance (by 1 ns at most past the cap).
            inc = inc.max(tol.saturating_add(1));
        }
        incs.push(inc);
        tols.push(tol);
    }
    let credits = check.credits.map(|spend| {
        let policy = spend.policy;
        let set_at = gcra::policy_set_at(policy);
        PreparedCredits {
            cost: count(spend.cost),
            remaining: count(policy.remaining),
            set_at,
            fresh_last: if set_at == i64::MIN { now_us } else { set_at },
            refill_at: policy
                .refill
                .as_ref()
                .and_then(|refill| gcra::last_refill_at(refill, now_us)),
            amount: policy.refill.as_ref().map_or(0, |r| count(r.amount)),
        }
    });
    Ok(Prepared {
        now_ns,
        now_us,
        names,
        incs,
        tols,
        credits,
    })
}

/// The outcome of `check`, given the store's decision and the state it decided on:
/// each limit's stored `TAT` (`None`: none) and the key's stored credit state.
///
/// If the store's decision and [`gcra`]'s disagree (which only a limit past [`CAP_NS`]
/// can cause), the store's stands and a warning is logged.
pub(crate) fn outcome(
    check: &LimitCheck<'_>,
    allowed: bool,
    tats: &[Option<i64>],
    credits: Option<CreditState>,
) -> LimitOutcome {
    let now = check.now;
    let mut limits: Vec<LimitStatus> = check
        .limits
        .iter()
        .enumerate()
        .map(|(i, charge)| {
            let tat = tats.get(i).copied().flatten();
            gcra::decide(tat, now, charge.limit, charge.cost).0
        })
        .collect();
    let credit_status = check.credits.map(|spend| {
        let state = gcra::credits_at(credits, spend.policy, now);
        gcra::spend(state, spend.policy, now, spend.cost).0
    });
    let expected = limits.iter().all(|s| s.allowed) && credit_status.is_none_or(|s| s.allowed);
    if !allowed {
        // Nothing was charged: a limit that had room reports how it stands (as
        // `MemoryLimiter` does).
        for ((i, charge), status) in check.limits.iter().enumerate().zip(limits.iter_mut()) {
            if status.allowed {
                let tat = tats.get(i).copied().flatten();
                let (unchanged, _) = gcra::decide(tat, now, charge.limit, 0);
                status.remaining = unchanged.remaining;
                status.reset_after_us = unchanged.reset_after_us;
            }
        }
    }
    if expected != allowed {
        tracing::warn!(target: "keygate", subject = %check.subject.storage_key(), store = allowed, arithmetic = expected,
            "limiter store and GCRA arithmetic disagree (a limit beyond the 63-year cap?); the store's decision stands");
    }
    LimitOutcome::new(allowed, limits, credit_status)
}

/// A [`StoreError`] as a [`LimiterError`], keeping timeouts and corruption apart.
pub(crate) fn limiter_error(error: StoreError) -> LimiterError {
    match error {
        StoreError::Timeout => LimiterError::Timeout,
        StoreError::Corrupt(source) => LimiterError::Corrupt(source),
        other => LimiterError::backend(other),
    }
}

/// A stored number that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("limiter state holds {0:?} where an integer belongs")]
pub(crate) struct NotANumber(pub(crate) String);

/// Parses a stored integer; empty means absent.
#[cfg_attr(not(feature = "redis"), allow(dead_code))] // Redis answers with strings
pub(crate) fn parse_opt(text: &str) -> Result<Option<i64>, LimiterError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<i64>()
        .map(Some)
        .map_err(|_| LimiterError::Corrupt(Box::new(NotANumber(text.to_owned()))))
}

/// A stored credit state from its three columns or fields, all or none.
pub(crate) fn credit_state(
    remaining: Option<i64>,
    last_refill: Option<i64>,
    set_at: Option<i64>,
) -> Result<Option<CreditState>, LimiterError> {
    match (remaining, last_refill, set_at) {
        (Some(remaining), Some(last_refill), Some(set_at)) => {
            let remaining = u64::try_from(remaining)
                .map_err(|_| LimiterError::Corrupt(Box::new(NotANumber(remaining.to_string()))))?;
            Ok(Some(CreditState::new(remaining, last_refill, set_at)))
        }
        _ => Ok(None),
    }
}
