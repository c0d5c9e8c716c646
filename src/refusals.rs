//! Refusal accounting: lock-free counters per reason, and tracing events that cannot
//! flood.
//!
//! Every refusal of [`Keygate::verify`](crate::Keygate::verify) is counted here and logged
//! from here only. Per reason at most one event is emitted per interval (by the gate's
//! [`Clock`](crate::Clock)); it carries the key id (when the refusal came after the store
//! lookup) and how many refusals of that reason were suppressed since the previous event.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::error::{Rejection, RequestError, VerifyError};
use crate::key::KeyId;

/// Every reason code [`Keygate::verify`](crate::Keygate::verify) can refuse with, in the
/// order of [`RefusalCounts`]. Each is a [`VerifyError::reason`] code.
const REASONS: [&str; 31] = [
    // Before any store access (`Rejection::decided_without_store`).
    "malformed",
    "wrong_prefix",
    "bad_checksum",
    "jwt_malformed",
    "jwt_algorithm",
    "jwt_signature",
    "jwt_type",
    "jwt_session_token",
    "jwt_crit",
    "jwt_expired",
    "jwt_not_yet_valid",
    "jwt_disabled",
    // After the store lookup.
    "unknown_key",
    "format_mismatch",
    "hash_mismatch",
    "inactive",
    "expired",
    "owner_unknown",
    "owner_inactive",
    // The request itself.
    "missing_credentials",
    "multiple_headers",
    "oversize",
    "invalid_characters",
    "malformed_bearer",
    // The server's side.
    "store_unavailable",
    "directory_unavailable",
    "store_corrupt",
    "pepper_mismatch",
    // Usage limits (the key is valid).
    "rate_limited",
    "credits_exhausted",
    "limiter_unavailable",
];

/// The position of `error`'s reason in [`REASONS`]; `None` for errors verify never
/// returns (`insufficient_scope`).
fn slot(error: &VerifyError) -> Option<usize> {
    let slot = match error {
        VerifyError::InvalidKey(rejection) => match rejection {
            Rejection::Malformed => 0,
            Rejection::WrongPrefix => 1,
            Rejection::BadChecksum => 2,
            Rejection::JwtMalformed => 3,
            Rejection::JwtAlgorithm => 4,
            Rejection::JwtSignature => 5,
            Rejection::JwtType => 6,
            Rejection::JwtSessionToken => 7,
            Rejection::JwtCritical => 8,
            Rejection::JwtExpired => 9,
            Rejection::JwtNotYetValid => 10,
            Rejection::JwtDisabled => 11,
            Rejection::UnknownKey => 12,
            Rejection::FormatMismatch => 13,
            Rejection::HashMismatch => 14,
            Rejection::Inactive => 15,
            Rejection::Expired => 16,
            Rejection::OwnerUnknown => 17,
            Rejection::OwnerInactive => 18,
        },
        VerifyError::MissingCredentials => 19,
        VerifyError::InvalidRequest(request) => match request {
            RequestError::MultipleHeaders => 20,
            RequestError::Oversize => 21,
            RequestError::InvalidCharacters => 22,
            RequestError::MalformedBearer => 23,
        },
        VerifyError::StoreUnavailable(_) => 24,
        VerifyError::DirectoryUnavailable(_) => 25,
        VerifyError::StoreCorrupt(_) => 26,
        VerifyError::PepperMismatch { .. } => 27,
        VerifyError::RateLimited(_) => 28,
        VerifyError::CreditsExhausted(_) => 29,
        VerifyError::LimiterUnavailable(_) => 30,
        VerifyError::InsufficientScope { .. } => return None,
    };
    Some(slot)
}

/// One reason's counters.
#[derive(Default)]
struct Counter {
    /// Refusals so far.
    total: AtomicU64,
    /// Refusals not logged since the last event.
    suppressed: AtomicU64,
    /// Clock reading (µs) from which the next event may be logged.
    next_event: AtomicI64,
}

/// The refusal counters and rate-limited logger of one gate.
pub(crate) struct Refusals {
    counters: [Counter; REASONS.len()],
    /// Minimum time between two events of one reason, in microseconds.
    interval: i64,
}

impl Refusals {
    /// Counters at zero; at most one event per reason per `interval` µs (0: every one).
    pub(crate) fn new(interval: i64) -> Self {
        Self {
            counters: std::array::from_fn(|_| Counter {
                next_event: AtomicI64::new(i64::MIN),
                ..Counter::default()
            }),
            interval: interval.max(0),
        }
    }

    /// Counts the refusal `error` at clock reading `now` (µs), and logs it unless an
    /// event of the same reason was logged less than the interval ago. `key_id` is the
    /// id looked up, for refusals after the store lookup.
    pub(crate) fn record(&self, error: &VerifyError, key_id: Option<KeyId>, now: i64) {
        let Some(counter) = slot(error).and_then(|slot| self.counters.get(slot)) else {
            return;
        };
        counter.total.fetch_add(1, Ordering::Relaxed);
        if error.is_limited() {
            // Logged per key and interval, with a count, by the gate's limit events.
            return;
        }
        let next = counter.next_event.load(Ordering::Relaxed);
        let due = now >= next
            && counter
                .next_event
                .compare_exchange(
                    next,
                    now.saturating_add(self.interval),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok();
        if !due {
            counter.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let suppressed = counter.suppressed.swap(0, Ordering::Relaxed);
        log(error, key_id, suppressed);
    }

    /// A snapshot of the counters.
    pub(crate) fn counts(&self) -> RefusalCounts {
        RefusalCounts {
            counts: std::array::from_fn(|i| {
                self.counters
                    .get(i)
                    .map_or(0, |c| c.total.load(Ordering::Relaxed))
            }),
        }
    }
}

impl fmt::Debug for Refusals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refusals")
            .field("interval_micros", &self.interval)
            .finish_non_exhaustive()
    }
}

/// The one place a refusal becomes a tracing event: the reason code, the key id when the
/// store was asked, never the token.
fn log(error: &VerifyError, key_id: Option<KeyId>, suppressed: u64) {
    let reason = error.reason();
    match (error, key_id) {
        (VerifyError::StoreUnavailable(e), _) => tracing::warn!(
            target: "keygate", error = %e, suppressed, "key store unavailable during verify"
        ),
        (VerifyError::LimiterUnavailable(e), id) => tracing::warn!(
            target: "keygate",
            key_id = %id.map(|id| id.to_string()).unwrap_or_default(),
            error = %e,
            suppressed,
            "usage limiter unavailable during verify; request refused (fail closed)"
        ),
        (VerifyError::DirectoryUnavailable(e), _) => tracing::warn!(
            target: "keygate", error = %e, suppressed, "user directory unavailable during verify"
        ),
        (VerifyError::StoreCorrupt(e), id) => {
            // The record's contents never reach the log: only what the error names.
            let detail = std::error::Error::source(e).map(ToString::to_string);
            tracing::error!(
                target: "keygate",
                key_id = %id.map(|id| id.to_string()).unwrap_or_default(),
                error = %e,
                detail = detail.as_deref().unwrap_or(""),
                suppressed,
                "key store returned a corrupt record; key refused"
            )
        }
        (VerifyError::PepperMismatch { version }, id) => tracing::error!(
            target: "keygate",
            key_id = %id.map(|id| id.to_string()).unwrap_or_default(),
            pepper_version = version,
            suppressed,
            "wrong pepper: this gate's pepper does not match the key store's fingerprint; \
             no key of this pepper version can verify"
        ),
        (_, Some(id)) => tracing::info!(
            target: "keygate", key_id = %id, reason, suppressed, "key refused"
        ),
        (_, None) => tracing::debug!(target: "keygate", reason, suppressed, "verify refused"),
    }
}

/// How many verifications a [`Keygate`](crate::Keygate) refused, per reason code (the
/// [`VerifyError::reason`] codes), since it was built: a snapshot from
/// [`Keygate::refusal_counts`](crate::Keygate::refusal_counts), meant for metrics.
///
/// Every reason is listed, also those at zero, in a fixed order.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use keygate::{Keygate, MemoryStore, Pepper};
///
/// let gate = Keygate::builder(MemoryStore::new(), Pepper::new(1, [7u8; 32]).unwrap())
///     .build()
///     .unwrap();
/// let _ = gate.verify("not-a-key").await;
///
/// let counts = gate.refusal_counts();
/// assert_eq!(counts.get("malformed"), 1);
/// for (reason, count) in &counts {
///     // e.g. a Prometheus counter: keygate_refusals_total{reason="malformed"} 1
///     println!("keygate_refusals_total{{reason=\"{reason}\"}} {count}");
/// }
/// assert_eq!(counts.total(), 1);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalCounts {
    counts: [u64; REASONS.len()],
}

impl RefusalCounts {
    /// Refusals with the reason code `reason` (0 for a code keygate does not use).
    pub fn get(&self, reason: &str) -> u64 {
        self.iter()
            .find(|(code, _)| *code == reason)
            .map_or(0, |(_, count)| count)
    }

    /// All refusals.
    pub fn total(&self) -> u64 {
        self.counts
            .iter()
            .fold(0u64, |sum, count| sum.saturating_add(*count))
    }

    /// Every `(reason code, count)`, zeros included.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        REASONS.iter().copied().zip(self.counts.iter().copied())
    }
}

impl<'a> IntoIterator for &'a RefusalCounts {
    type Item = (&'static str, u64);
    type IntoIter = std::iter::Zip<
        std::iter::Copied<std::slice::Iter<'static, &'static str>>,
        std::iter::Copied<std::slice::Iter<'a, u64>>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        REASONS.iter().copied().zip(self.counts.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DirectoryError, StoreError};

    #[test]
    fn every_slot_names_its_reason() {
        let mut errors: Vec<VerifyError> = [
            Rejection::Malformed,
            Rejection::WrongPrefix,
            Rejection::BadChecksum,
            Rejection::JwtMalformed,
            Rejection::JwtAlgorithm,
            Rejection::JwtSignature,
            Rejection::JwtType,
            Rejection::JwtSessionToken,
            Rejection::JwtCritical,
            Rejection::JwtExpired,
            Rejection::JwtNotYetValid,
            Rejection::JwtDisabled,
            Rejection::UnknownKey,
            Rejection::FormatMismatch,
            Rejection::HashMismatch,
            Rejection::Inactive,
            Rejection::Expired,
            Rejection::OwnerUnknown,
            Rejection::OwnerInactive,
        ]
        .into_iter()
        .map(VerifyError::InvalidKey)
        .collect();
        errors.push(VerifyError::MissingCredentials);
        for request in [
            RequestError::MultipleHeaders,
            RequestError::Oversize,
            RequestError::InvalidCharacters,
            RequestError::MalformedBearer,
        ] {
            errors.push(VerifyError::InvalidRequest(request));
        }
        errors.push(VerifyError::StoreUnavailable(StoreError::Timeout));
        errors.push(VerifyError::DirectoryUnavailable(DirectoryError::new(
            std::fmt::Error,
        )));
        errors.push(VerifyError::StoreCorrupt(StoreError::Timeout));
        errors.push(VerifyError::PepperMismatch { version: 1 });
        errors.push(VerifyError::RateLimited(Box::new(
            crate::limits::RateLimited {
                limit: crate::limits::LimitReport {
                    name: "r".into(),
                    scope: crate::limits::LimitScope::Key,
                    limit: 1,
                    window: std::time::Duration::from_secs(1),
                    remaining: 0,
                    reset_after: std::time::Duration::from_secs(1),
                },
                retry_after: None,
                cost: 1,
            },
        )));
        errors.push(VerifyError::CreditsExhausted(Box::new(
            crate::limits::CreditsExhausted {
                remaining: 0,
                cost: 1,
                retry_after: None,
            },
        )));
        errors.push(VerifyError::LimiterUnavailable(
            crate::limits::LimiterError::Timeout,
        ));
        assert_eq!(errors.len(), REASONS.len());
        for (i, error) in errors.iter().enumerate() {
            assert_eq!(slot(error), Some(i));
            assert_eq!(REASONS[i], error.reason());
        }
    }

    #[test]
    fn counts_every_refusal_but_logs_once_per_interval() {
        let refusals = Refusals::new(1_000_000);
        let error = VerifyError::InvalidKey(Rejection::UnknownKey);
        for i in 0..1000 {
            refusals.record(&error, None, i);
        }
        assert_eq!(refusals.counts().get("unknown_key"), 1000);
        assert_eq!(
            refusals.counters[12].suppressed.load(Ordering::Relaxed),
            999
        );
        refusals.record(&error, None, 1_000_000);
        assert_eq!(refusals.counters[12].suppressed.load(Ordering::Relaxed), 0);
        // Extreme clock readings do not overflow.
        refusals.record(&error, None, i64::MAX);
        refusals.record(&error, None, i64::MAX);
        assert_eq!(refusals.counts().total(), 1003);
    }
}
