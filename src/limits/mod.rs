//! Usage control on a key: per-key and per-owner rate limits, usage credits, and network
//! restrictions.
//!
//! Network restrictions: [`NetworkPolicy`] (allowed client networks and browser origins,
//! with the rules for IPv4-mapped addresses and what an origin restriction is worth),
//! checked on every verify against the request's [`RequestContext`], before any limit is
//! charged; the client address behind proxies is
//! [`TrustedProxies`](crate::http::TrustedProxies)' business.
//!
//! # The model
//!
//! A key may carry any number (up to [`MAX_RATELIMITS`]) of named [`RateLimit`]s and one
//! [`CreditPolicy`], in Unkey's shape:
//!
//! - a **rate limit** allows `limit` units per `duration` milliseconds, with bursts of up to
//!   [`burst`](RateLimit::burst) units (default: `limit`). It is checked with GCRA (one
//!   timestamp per limit, exact, no window edges): steady traffic at exactly `limit` per
//!   `duration` is never refused, however long it runs. An
//!   [`auto_apply`](RateLimit::auto_apply) limit costs 1 on every verify; the others cost
//!   only what a handler [charges](crate::Keygate::charge) against them by name (tokens,
//!   bytes, …).
//! - **credits** are a count of remaining uses: every verify spends one (a handler can
//!   [spend more](crate::Keygate::spend_credits)), never below zero; an optional
//!   [`CreditRefill`] sets the count back to an amount every day or on a day of the month,
//!   applied lazily at the exact instant on the next use.
//!
//! An owner may have rate limits too, shared by all of the owner's keys: set them for
//! every owner with
//! [`KeygateBuilder::owner_ratelimits`](crate::KeygateBuilder::owner_ratelimits), or per owner
//! through the [`UserDirectory`](crate::UserDirectory) with
//! [`Owner::with_ratelimits`](crate::Owner::with_ratelimits).
//!
//! The *policy* (which limits, how many credits to start with) is part of the
//! [`KeyRecord`](crate::KeyRecord) and set at mint ([`NewKey::ratelimits`](crate::NewKey::ratelimits),
//! [`NewKey::credits`](crate::NewKey::credits)) or later
//! ([`KeyPatch::ratelimits`](crate::KeyPatch::ratelimits), [`KeyPatch::credits`](crate::KeyPatch::credits)).
//! The *state* (each limit's theoretical arrival time, the credits left) changes on every
//! request and lives apart from the record, which is cached, behind a [`Limiter`]: in
//! process ([`MemoryLimiter`], the default) or in a shared store so that several servers
//! agree exactly. Between the two, [`LocalFirst`] wraps a store limiter: rate limits are
//! decided from memory and synced in the background, so N servers converge with a bounded
//! overshoot (the bound, its derivation and its measurement are in [`LocalFirst`]'s
//! docs), while credits stay exact in the store.
//!
//! # On a request
//!
//! After a key is accepted (a refused or bad key never consumes anything), the verify path
//! makes one [`Limiter::check`] per subject: the owner's shared limits first, then the key's
//! auto-applied limits together with one credit. Each call is all-or-nothing: either every
//! limit and the credit count of that subject is charged, or nothing is. A refusal is
//! [`VerifyError::RateLimited`](crate::VerifyError::RateLimited) or
//! [`VerifyError::CreditsExhausted`](crate::VerifyError::CreditsExhausted), both HTTP 429
//! with `Retry-After` and the IETF `RateLimit`/`RateLimit-Policy` headers; never 401.
//!
//! ```
//! use keygate::limits::{CreditPolicy, CreditRefill, RateLimit};
//! use keygate::{Keygate, MemoryStore, NewKey, Pepper, VerifyError};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let gate = Keygate::builder(MemoryStore::new(), Pepper::new(1, [7u8; 32])?).build()?;
//! let issued = gate
//!     .mint(
//!         NewKey::new("script", "user-1")
//!             .ratelimits([RateLimit::new("requests", 2, 60_000)]) // 2 per minute
//!             .credits(CreditPolicy::new(100).refill(CreditRefill::daily(100))),
//!     )
//!     .await?;
//! gate.verify(issued.key.expose()).await?;
//! gate.verify(issued.key.expose()).await?;
//! let refused = gate.verify(issued.key.expose()).await.unwrap_err();
//! assert!(matches!(refused, VerifyError::RateLimited(_)));
//! assert_eq!(refused.http("api").status, 429);
//! # Ok(()) }
//! ```
//!
//! # Failures of the limiter
//!
//! A limiter that cannot answer (a store down) fails closed by default:
//! [`VerifyError::LimiterUnavailable`](crate::VerifyError::LimiterUnavailable), HTTP 503. With
//! [`FailureMode::Open`] the request is let through and a warning event logged instead;
//! never a silent success without a decision.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::key::KeyId;

pub(crate) mod events;
pub mod gcra;
mod local_first;
mod memory;
mod network;

pub use local_first::{LocalFirst, LocalFirstConfig, NoRuntime, SyncReport};
pub use memory::MemoryLimiter;
pub(crate) use network::UNKNOWN as UNKNOWN_CONTEXT;
pub use network::{
    AllowedOrigin, Cidr, NetworkError, NetworkPolicy, NetworkRefusal, RequestContext,
    MAX_ALLOWED_CIDRS, MAX_ALLOWED_ORIGINS, MAX_ORIGIN_LEN,
};

/// Most rate limits one key (or one owner) may carry.
pub const MAX_RATELIMITS: usize = 16;
/// Longest rate-limit name, in bytes (`[A-Za-z0-9_.:-]`).
pub const MAX_RATELIMIT_NAME_LEN: usize = 64;
/// Largest `limit` (and `burst`) of a rate limit.
pub const MAX_RATELIMIT_LIMIT: u64 = 1_000_000_000;
/// Longest rate-limit `duration`, in milliseconds: 366 days.
pub const MAX_RATELIMIT_DURATION_MS: u64 = 366 * 24 * 60 * 60 * 1000;
/// Most credits a key may hold (and largest refill amount): 2^53 - 1, the largest integer
/// every JSON client reads exactly.
pub const MAX_CREDITS: u64 = (1 << 53) - 1;

/// One named rate limit, in Unkey's shape: `limit` units per `duration` milliseconds.
///
/// Serialized as Unkey's `{"name", "limit", "duration", "autoApply"}`, plus `"burst"` when
/// it is set (keygate's extension; Unkey's limits have a burst equal to the limit).
///
/// ```
/// use keygate::limits::RateLimit;
///
/// let per_minute = RateLimit::new("requests", 100, 60_000);
/// assert!(per_minute.auto_apply && per_minute.burst() == 100);
/// let tokens = RateLimit::new("tokens", 50_000, 3_600_000).manual().with_burst(5_000);
/// assert_eq!(
///     serde_json::to_string(&tokens).unwrap(),
///     r#"{"name":"tokens","limit":50000,"duration":3600000,"autoApply":false,"burst":5000}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct RateLimit {
    /// The limit's name, unique on its key: `[A-Za-z0-9_.:-]{1,64}`. Handlers
    /// [charge](crate::Keygate::charge) limits by name.
    pub name: String,
    /// Units allowed per `duration`: 1..=[`MAX_RATELIMIT_LIMIT`].
    pub limit: u64,
    /// The window, in milliseconds: 1..=[`MAX_RATELIMIT_DURATION_MS`].
    pub duration: u64,
    /// Checked (at cost 1) on every verify; otherwise only when a handler charges it.
    /// Defaults to `true` when absent from JSON, as in Unkey.
    #[serde(default = "yes")]
    pub auto_apply: bool,
    /// The largest burst, in units (default: `limit`): how many units a fresh key may spend
    /// at once. 1..=[`MAX_RATELIMIT_LIMIT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

fn yes() -> bool {
    true
}

impl RateLimit {
    /// `limit` units per `duration_ms` milliseconds, auto-applied, burst `limit`.
    pub fn new(name: impl Into<String>, limit: u64, duration_ms: u64) -> Self {
        Self {
            name: name.into(),
            limit,
            duration: duration_ms,
            auto_apply: true,
            burst: None,
        }
    }

    /// Not auto-applied: only [`charge`](crate::Keygate::charge) spends it.
    #[must_use]
    pub fn manual(mut self) -> Self {
        self.auto_apply = false;
        self
    }

    /// Sets the burst (default: the limit).
    #[must_use]
    pub fn with_burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// The burst in effect: [`burst`](Self::burst) or, unset, the limit.
    pub fn burst(&self) -> u64 {
        self.burst.unwrap_or(self.limit)
    }

    /// The window as a [`Duration`].
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.duration)
    }

    /// Checks the bounds: name, limit, duration, burst.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for field `ratelimits` naming what is wrong.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |reason| Err(Error::invalid("ratelimits", reason));
        if self.name.is_empty() || self.name.len() > MAX_RATELIMIT_NAME_LEN {
            return bad("a limit's name must be 1 to 64 characters");
        }
        // One table lookup per byte, no early exit: this runs on every verify of a key
        // with limits (`KeyRecord::check`).
        let name_ok = self.name.bytes().fold(true, |ok, b| {
            ok & NAME_BYTES.get(usize::from(b)).copied().unwrap_or(false)
        });
        if !name_ok {
            return bad("a limit's name may hold only A-Z a-z 0-9 _ . : -");
        }
        if self.limit == 0 || self.limit > MAX_RATELIMIT_LIMIT {
            return bad("a limit's limit must be 1 to 1000000000");
        }
        if self.duration == 0 || self.duration > MAX_RATELIMIT_DURATION_MS {
            return bad("a limit's duration must be 1 ms to 366 days");
        }
        if self
            .burst
            .is_some_and(|b| b == 0 || b > MAX_RATELIMIT_LIMIT)
        {
            return bad("a limit's burst must be 1 to 1000000000");
        }
        Ok(())
    }
}

/// The bytes a limit's name may hold: `A-Z a-z 0-9 _ . : -`.
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)] // const, in bounds
const NAME_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':' | b'-');
        b += 1;
    }
    table
};

/// Checks a list of rate limits: each [`RateLimit::validate`], at most
/// [`MAX_RATELIMITS`], names unique.
///
/// # Errors
///
/// [`Error::InvalidInput`] for field `ratelimits`.
pub fn validate_ratelimits(limits: &[RateLimit]) -> Result<(), Error> {
    if limits.len() > MAX_RATELIMITS {
        return Err(Error::invalid("ratelimits", "at most 16 limits per key"));
    }
    for (i, limit) in limits.iter().enumerate() {
        limit.validate()?;
        if limits.iter().take(i).any(|other| other.name == limit.name) {
            return Err(Error::invalid(
                "ratelimits",
                "two limits have the same name",
            ));
        }
    }
    Ok(())
}

/// A key's usage credits, in Unkey's shape: `{"remaining", "refill": {"interval", "amount",
/// "refillDay"}}`.
///
/// `remaining` is the count the key starts with when the policy is set (at mint, or when
/// [`KeyPatch::credits`](crate::KeyPatch::credits) sets it again: that resets the count).
/// The count left *now* lives in the [`Limiter`]; key views read it from there
/// ([`Keygate::credits_remaining`](crate::Keygate::credits_remaining)).
///
/// ```
/// use keygate::limits::{CreditPolicy, CreditRefill};
///
/// let monthly = CreditPolicy::new(1000).refill(CreditRefill::monthly(1000, 1));
/// assert_eq!(
///     serde_json::to_string(&monthly).unwrap(),
///     r#"{"remaining":1000,"refill":{"interval":"monthly","amount":1000,"refillDay":1}}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct CreditPolicy {
    /// The count the key starts with: 0..=[`MAX_CREDITS`].
    pub remaining: u64,
    /// Sets the count back to an amount every day or month; `None`: never refilled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<CreditRefill>,
    /// When this policy was set (keygate stamps it at mint and update; the limiter starts
    /// the count from `remaining` when it sees a policy set later than the one it counted
    /// from, and refills fall after it). Not part of Unkey's shape; `None` in JSON from
    /// clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_at: Option<DateTime<Utc>>,
}

impl CreditPolicy {
    /// Starts with `remaining` credits, never refilled.
    pub fn new(remaining: u64) -> Self {
        Self {
            remaining,
            refill: None,
            set_at: None,
        }
    }

    /// Refilled by `refill`.
    #[must_use]
    pub fn refill(mut self, refill: CreditRefill) -> Self {
        self.refill = Some(refill);
        self
    }

    /// Checks the bounds.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for field `credits`.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |reason| Err(Error::invalid("credits", reason));
        if self.remaining > MAX_CREDITS {
            return bad("remaining must be at most 9007199254740991");
        }
        if let Some(refill) = &self.refill {
            if refill.amount > MAX_CREDITS {
                return bad("the refill amount must be at most 9007199254740991");
            }
            match (refill.interval, refill.refill_day) {
                (RefillInterval::Daily, Some(_)) => {
                    return bad("refillDay is for monthly refills only")
                }
                (RefillInterval::Monthly, Some(day)) if !(1..=31).contains(&day) => {
                    return bad("refillDay must be 1 to 31")
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// How credits are refilled, in Unkey's shape: `{"interval": "daily" | "monthly", "amount",
/// "refillDay"}`.
///
/// At each refill instant the count is **set** to `amount` (Unkey's semantics: a refill is a
/// reset, not an addition). Daily refills happen at 00:00 UTC; monthly ones at 00:00 UTC on
/// `refillDay` (1 to 31, default 1; in a shorter month, on its last day). A refill is
/// applied lazily, on the first use at or after its instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct CreditRefill {
    /// Daily or monthly.
    pub interval: RefillInterval,
    /// The count after a refill: 0..=[`MAX_CREDITS`].
    pub amount: u64,
    /// For monthly refills: the day of the month, 1 to 31 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill_day: Option<u8>,
}

impl CreditRefill {
    /// Back to `amount` every day at 00:00 UTC.
    pub fn daily(amount: u64) -> Self {
        Self {
            interval: RefillInterval::Daily,
            amount,
            refill_day: None,
        }
    }

    /// Back to `amount` on `day` of every month (1 to 31; in a shorter month, its last day),
    /// at 00:00 UTC.
    pub fn monthly(amount: u64, day: u8) -> Self {
        Self {
            interval: RefillInterval::Monthly,
            amount,
            refill_day: Some(day),
        }
    }
}

/// How often credits are refilled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RefillInterval {
    /// At 00:00 UTC every day.
    Daily,
    /// At 00:00 UTC on the refill day of every month.
    Monthly,
}

/// Whose state a [`Limiter`] call reads and changes: a key's own limits and credits, or an
/// owner's shared limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Subject<'a> {
    /// One key: its rate limits and its credits.
    Key(KeyId),
    /// One owner (user id): the rate limits shared by all of the owner's keys.
    Owner(&'a str),
}

impl Subject<'_> {
    /// A stable text form for storage keys and logs: `key:<uuid>` or `owner:<user id>`.
    pub fn storage_key(&self) -> String {
        match self {
            Subject::Key(id) => format!("key:{id}"),
            Subject::Owner(owner) => format!("owner:{owner}"),
        }
    }

    /// An owned copy.
    pub fn to_owned_subject(&self) -> OwnedSubject {
        match *self {
            Subject::Key(id) => OwnedSubject::Key(id),
            Subject::Owner(owner) => OwnedSubject::Owner(owner.to_owned()),
        }
    }
}

/// An owned [`Subject`], for maps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum OwnedSubject {
    /// One key.
    Key(KeyId),
    /// One owner.
    Owner(String),
}

impl OwnedSubject {
    /// Borrowed.
    pub fn as_subject(&self) -> Subject<'_> {
        match self {
            OwnedSubject::Key(id) => Subject::Key(*id),
            OwnedSubject::Owner(owner) => Subject::Owner(owner),
        }
    }
}

/// One rate limit to charge in a [`LimitCheck`], and by how much.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Charge<'a> {
    /// The limit (its name identifies its state within the subject).
    pub limit: &'a RateLimit,
    /// Units to spend; 0 only reads the state.
    pub cost: u64,
}

impl<'a> Charge<'a> {
    /// Spend `cost` units of `limit`.
    pub fn new(limit: &'a RateLimit, cost: u64) -> Self {
        Self { limit, cost }
    }
}

/// Credits to spend in a [`LimitCheck`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct CreditSpend<'a> {
    /// The key's policy (its `set_at` tells the limiter when the count was last set).
    pub policy: &'a CreditPolicy,
    /// Credits to spend; 0 only reads the count.
    pub cost: u64,
}

impl<'a> CreditSpend<'a> {
    /// Spend `cost` credits under `policy`.
    pub fn new(policy: &'a CreditPolicy, cost: u64) -> Self {
        Self { policy, cost }
    }
}

/// One all-or-nothing request to a [`Limiter`]: charge every limit in `limits` and spend
/// `credits` for `subject` at `now`, or change nothing.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct LimitCheck<'a> {
    /// Whose state.
    pub subject: Subject<'a>,
    /// The rate limits to charge (names unique).
    pub limits: &'a [Charge<'a>],
    /// The credits to spend, if the subject (a key) has a credit policy.
    pub credits: Option<CreditSpend<'a>>,
    /// The gate's clock, microseconds since the Unix epoch.
    pub now: i64,
}

impl<'a> LimitCheck<'a> {
    /// A check of `subject` at `now` (µs since the epoch).
    pub fn new(
        subject: Subject<'a>,
        limits: &'a [Charge<'a>],
        credits: Option<CreditSpend<'a>>,
        now: i64,
    ) -> Self {
        Self {
            subject,
            limits,
            credits,
            now,
        }
    }
}

/// A limiter's answer to one [`LimitCheck`]: whether it was allowed (and so charged), and
/// the state of each limit and of the credits after it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitOutcome {
    /// `true`: every limit and the credits were charged. `false`: nothing was.
    pub allowed: bool,
    /// One status per [`LimitCheck::limits`] entry, in the same order.
    pub limits: Vec<LimitStatus>,
    /// The credits' status, when the check had credits.
    pub credits: Option<CreditStatus>,
}

impl LimitOutcome {
    /// An outcome with these parts.
    pub fn new(allowed: bool, limits: Vec<LimitStatus>, credits: Option<CreditStatus>) -> Self {
        Self {
            allowed,
            limits,
            credits,
        }
    }
}

impl LimitOutcome {
    /// Copies the statuses into `statuses` (as many as fit) and returns the rest.
    fn into_decision(self, statuses: &mut [LimitStatus]) -> Decision {
        for (slot, status) in statuses.iter_mut().zip(&self.limits) {
            *slot = *status;
        }
        Decision::new(self.allowed, self.credits)
    }
}

/// A [`LimitOutcome`] without its per-limit statuses, which
/// [`Limiter::check_now_into`] writes to the caller's slice instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// `true`: every limit and the credits were charged. `false`: nothing was.
    pub allowed: bool,
    /// The credits' status, when the check had credits.
    pub credits: Option<CreditStatus>,
}

impl Decision {
    /// A decision with these parts.
    pub fn new(allowed: bool, credits: Option<CreditStatus>) -> Self {
        Self { allowed, credits }
    }
}

/// One limit's state after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitStatus {
    /// Whether this limit alone had room for its cost.
    pub allowed: bool,
    /// Units that could be spent right now: after this check if it was allowed, as before
    /// it if it was refused (a refused check charges nothing).
    pub remaining: u64,
    /// Microseconds until the limit is back to its full burst.
    pub reset_after_us: u64,
    /// When refused: microseconds until this cost would fit. `None` when allowed, or when
    /// the cost exceeds the burst and can never fit.
    pub retry_after_us: Option<u64>,
}

impl LimitStatus {
    /// A status with these values.
    pub fn new(
        allowed: bool,
        remaining: u64,
        reset_after_us: u64,
        retry_after_us: Option<u64>,
    ) -> Self {
        Self {
            allowed,
            remaining,
            reset_after_us,
            retry_after_us,
        }
    }
}

/// The credits' state after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CreditStatus {
    /// Whether the credits covered the cost.
    pub allowed: bool,
    /// Credits left (after this check, if it was allowed).
    pub remaining: u64,
    /// The next refill instant (µs since the epoch), if the policy refills.
    pub next_refill: Option<i64>,
}

impl CreditStatus {
    /// A status with these values.
    pub fn new(allowed: bool, remaining: u64, next_refill: Option<i64>) -> Self {
        Self {
            allowed,
            remaining,
            next_refill,
        }
    }
}

/// Where the mutable state of rate limits and credits lives: GCRA theoretical arrival times
/// per (subject, limit name), and per key the credits remaining, the instant of their last
/// refill and the policy instant ([`CreditPolicy::set_at`]) they were counted from.
///
/// keygate ships [`MemoryLimiter`] (one process); store-backed limiters make several
/// processes agree exactly. An implementation must:
///
/// - decide and charge each [`LimitCheck`] **atomically and all-or-nothing**: every limit in
///   it and the credits are charged together, or nothing is (one round trip, one script or
///   one statement for a remote store);
/// - follow [`gcra`]'s arithmetic exactly (nanosecond emission intervals, rounded up), and
///   apply credit refills and policy resets as [`gcra::credits_at`] does;
/// - never let credits go below zero, and report a failure as `Err`, never as a refusal.
#[async_trait]
pub trait Limiter: Send + Sync + 'static {
    /// Decides and, if allowed, charges `check`.
    ///
    /// # Errors
    ///
    /// [`LimiterError`] when the state could not be read or written; then nothing is known
    /// to have been charged.
    async fn check(&self, check: &LimitCheck<'_>) -> Result<LimitOutcome, LimiterError>;

    /// The answer to `check` without waiting, for limiters that hold their state in
    /// process (`None`: call [`check`](Self::check)). The default is `None`.
    fn check_now(&self, check: &LimitCheck<'_>) -> Option<Result<LimitOutcome, LimiterError>> {
        let _ = check;
        None
    }

    /// [`check_now`](Self::check_now) without allocating: the status of each limit is
    /// written to `statuses` (in [`LimitCheck::limits`] order; callers pass a slice at least
    /// that long), and the answer is whether the check was allowed, with the credits'
    /// status. The verify path calls this; the default forwards to `check_now`, so a
    /// limiter only overrides it to avoid the [`LimitOutcome`]'s allocation.
    ///
    /// # Errors
    ///
    /// As [`check`](Self::check).
    fn check_now_into(
        &self,
        check: &LimitCheck<'_>,
        statuses: &mut [LimitStatus],
    ) -> Option<Result<Decision, LimiterError>> {
        self.check_now(check)
            .map(|answer| answer.map(|outcome| outcome.into_decision(statuses)))
    }

    /// The credits a key has left at `now` (µs) under `policy` (refills applied), without
    /// spending any: for key views.
    ///
    /// # Errors
    ///
    /// [`LimiterError`] when the state could not be read.
    async fn credits(
        &self,
        key: KeyId,
        policy: &CreditPolicy,
        now: i64,
    ) -> Result<u64, LimiterError>;

    /// Gives back what an allowed `check` charged (best effort), when a later check of the
    /// same request refused it: the owner's shared limits when the key's own check then
    /// refused. The default does nothing, so such a request counts against the owner's
    /// limits; [`MemoryLimiter`] gives it back.
    ///
    /// # Errors
    ///
    /// [`LimiterError`] when the state could not be written.
    async fn refund(&self, check: &LimitCheck<'_>) -> Result<(), LimiterError> {
        let _ = check;
        Ok(())
    }

    /// Forgets all state of `subject` (a deleted key).
    ///
    /// # Errors
    ///
    /// [`LimiterError`] when the state could not be written.
    async fn forget(&self, subject: Subject<'_>) -> Result<(), LimiterError>;
}

/// A shared limiter is a limiter.
#[async_trait]
impl<L: Limiter + ?Sized> Limiter for std::sync::Arc<L> {
    async fn check(&self, check: &LimitCheck<'_>) -> Result<LimitOutcome, LimiterError> {
        (**self).check(check).await
    }

    fn check_now(&self, check: &LimitCheck<'_>) -> Option<Result<LimitOutcome, LimiterError>> {
        (**self).check_now(check)
    }

    fn check_now_into(
        &self,
        check: &LimitCheck<'_>,
        statuses: &mut [LimitStatus],
    ) -> Option<Result<Decision, LimiterError>> {
        (**self).check_now_into(check, statuses)
    }

    async fn credits(
        &self,
        key: KeyId,
        policy: &CreditPolicy,
        now: i64,
    ) -> Result<u64, LimiterError> {
        (**self).credits(key, policy, now).await
    }

    async fn refund(&self, check: &LimitCheck<'_>) -> Result<(), LimiterError> {
        (**self).refund(check).await
    }

    async fn forget(&self, subject: Subject<'_>) -> Result<(), LimiterError> {
        (**self).forget(subject).await
    }
}

/// A limiter could not read or write its state. Never a refusal: the request is answered
/// per [`FailureMode`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LimiterError {
    /// The backend failed; the source says how.
    #[error("limiter backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend did not answer in time.
    #[error("limiter timed out")]
    Timeout,
    /// The stored state could not be read (not a number, out of range).
    #[error("limiter state is corrupt")]
    Corrupt(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl LimiterError {
    /// Wraps a backend error, keeping it as the source.
    pub fn backend(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        LimiterError::Backend(Box::new(error))
    }
}

/// What a request gets when the [`Limiter`] fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailureMode {
    /// Refuse: [`VerifyError::LimiterUnavailable`](crate::VerifyError::LimiterUnavailable),
    /// HTTP 503 with `Retry-After`. The default.
    #[default]
    Closed,
    /// Let the request through unlimited and log a warning event (`keygate` target,
    /// aggregated like refusals). Never a silent success.
    Open,
}

/// Which limit refused a request, or how a limit stands after an accepted one: what the
/// HTTP `RateLimit` and `RateLimit-Policy` headers carry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitReport {
    /// The limit's name (the header's policy name).
    pub name: String,
    /// The key's own limit, or the owner's shared one.
    pub scope: LimitScope,
    /// Units per window.
    pub limit: u64,
    /// The window.
    pub window: Duration,
    /// Units that could be spent now.
    pub remaining: u64,
    /// Until the limit is back to its full burst.
    pub reset_after: Duration,
}

/// Whose limit a [`LimitReport`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LimitScope {
    /// The key's own limit.
    Key,
    /// A limit shared by all of the owner's keys.
    Owner,
}

impl LimitScope {
    /// `"key"` or `"owner"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            LimitScope::Key => "key",
            LimitScope::Owner => "owner",
        }
    }
}

/// How much a request may still use, as verify left it: every limit that was charged and
/// the credits. Read it from [`Principal::allowance`](crate::Principal::allowance); the
/// HTTP helpers render it as `RateLimit`/`RateLimit-Policy` headers on successful responses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Allowance {
    /// The limits charged, owner's first.
    pub limits: Vec<LimitReport>,
    /// Credits left, if the key has credits.
    pub credits: Option<u64>,
}

impl Allowance {
    /// Whether there is nothing to report.
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty() && self.credits.is_none()
    }
}

/// Why a request was refused by a rate limit: the limit, and when to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimited {
    /// The limit that had no room.
    pub limit: LimitReport,
    /// When the same request would fit; `None` when its cost exceeds the limit's burst and
    /// it never will.
    pub retry_after: Option<Duration>,
    /// The units the request asked for.
    pub cost: u64,
}

/// Why a request was refused for lack of credits.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CreditsExhausted {
    /// Credits left (fewer than the cost; usually 0).
    pub remaining: u64,
    /// The credits the request asked for.
    pub cost: u64,
    /// Until the next refill, if the key is refilled.
    pub retry_after: Option<Duration>,
}

impl fmt::Display for LimitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} limit {:?}: {} per {} ms",
            self.scope.as_str(),
            self.name,
            self.limit,
            self.window.as_millis()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unkey_shapes_round_trip() {
        let limits: Vec<RateLimit> = serde_json::from_str(
            r#"[{"name":"requests","limit":10,"duration":1000,"autoApply":true},
                {"name":"tokens","limit":5,"duration":60000}]"#,
        )
        .unwrap();
        assert_eq!(limits[0], RateLimit::new("requests", 10, 1000));
        assert!(
            limits[1].auto_apply,
            "autoApply defaults to true, as in Unkey"
        );
        let credits: CreditPolicy = serde_json::from_str(
            r#"{"remaining":5,"refill":{"interval":"monthly","amount":10,"refillDay":15}}"#,
        )
        .unwrap();
        assert_eq!(
            credits,
            CreditPolicy::new(5).refill(CreditRefill::monthly(10, 15))
        );
        assert!(
            serde_json::from_str::<RateLimit>(r#"{"name":"a","limit":1,"duration":1,"x":1}"#)
                .is_err()
        );
    }

    #[test]
    fn bounds_are_checked() {
        let ok = RateLimit::new("a.b:c-d_e", 1, 1);
        assert!(ok.validate().is_ok());
        for bad in [
            RateLimit::new("", 1, 1),
            RateLimit::new("a b", 1, 1),
            RateLimit::new("x".repeat(65), 1, 1),
            RateLimit::new("a", 0, 1),
            RateLimit::new("a", MAX_RATELIMIT_LIMIT + 1, 1),
            RateLimit::new("a", 1, 0),
            RateLimit::new("a", 1, MAX_RATELIMIT_DURATION_MS + 1),
            RateLimit::new("a", 1, 1).with_burst(0),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(validate_ratelimits(&[ok.clone(), ok.clone()]).is_err());
        assert!(validate_ratelimits(&vec![ok; MAX_RATELIMITS + 1]).is_err());
        assert!(CreditPolicy::new(MAX_CREDITS + 1).validate().is_err());
        assert!(CreditPolicy::new(1)
            .refill(CreditRefill::monthly(1, 32))
            .validate()
            .is_err());
        assert!(CreditPolicy::new(1)
            .refill(CreditRefill::monthly(1, 0))
            .validate()
            .is_err());
        let mut daily = CreditRefill::daily(1);
        daily.refill_day = Some(3);
        assert!(CreditPolicy::new(1).refill(daily).validate().is_err());
    }
}
