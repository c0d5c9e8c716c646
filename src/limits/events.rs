//! Events when a key hits a rate limit or runs out of credits: aggregated, at most one per
//! subject and reason per interval, carrying how many refusals it stands for. Never one
//! line per refused request.

use std::collections::HashMap;
use std::sync::Mutex;

use super::OwnedSubject;

/// Most subjects tracked at once; past it, entries whose interval ended are dropped, and
/// if none has, new subjects are logged without aggregation state (still at most one line
/// per refusal reason per interval through the gate's refusal log limit).
const MAX_TRACKED: usize = 10_000;

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum LimitEvent {
    /// A rate limit refused a request.
    RateLimited,
    /// A key's credits ran out.
    CreditsExhausted,
    /// The limiter failed and the gate failed open.
    FailedOpen,
}

impl LimitEvent {
    fn as_str(self) -> &'static str {
        match self {
            LimitEvent::RateLimited => "rate_limited",
            LimitEvent::CreditsExhausted => "credits_exhausted",
            LimitEvent::FailedOpen => "limiter_failed_open",
        }
    }
}

struct Window {
    /// When the current interval ends (µs).
    until: i64,
    /// Refusals in the current interval after the one that was logged.
    since: u64,
}

/// Per-subject aggregation of limit events for one gate.
pub(crate) struct LimitEvents {
    interval: i64,
    windows: Mutex<HashMap<(OwnedSubject, LimitEvent), Window>>,
}

impl LimitEvents {
    /// At most one event per subject and kind per `interval` µs.
    pub(crate) fn new(interval: i64) -> Self {
        Self {
            interval: interval.max(0),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Notes one occurrence for `subject` at `now` (µs); logs when it is the first in its
    /// interval, with the count of occurrences in the interval before (`previous`). Returns
    /// whether it logged.
    pub(crate) fn note(
        &self,
        subject: &OwnedSubject,
        kind: LimitEvent,
        detail: &str,
        now: i64,
    ) -> bool {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let key = (subject.clone(), kind);
        let previous = match windows.get_mut(&key) {
            Some(window) if now < window.until => {
                window.since = window.since.saturating_add(1);
                return false;
            }
            Some(window) => {
                let previous = window.since;
                window.until = now.saturating_add(self.interval);
                window.since = 0;
                previous
            }
            None => {
                if windows.len() >= MAX_TRACKED {
                    windows.retain(|_, w| now < w.until);
                }
                if windows.len() < MAX_TRACKED {
                    windows.insert(
                        key,
                        Window {
                            until: now.saturating_add(self.interval),
                            since: 0,
                        },
                    );
                }
                0
            }
        };
        drop(windows);
        emit(subject, kind, detail, previous);
        true
    }

    /// How many occurrences are pending (not yet reported) for `subject` and `kind`.
    #[cfg(test)]
    pub(crate) fn pending(&self, subject: &OwnedSubject, kind: LimitEvent) -> Option<u64> {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows.get(&(subject.clone(), kind)).map(|w| w.since)
    }
}

fn emit(subject: &OwnedSubject, kind: LimitEvent, detail: &str, previous: u64) {
    let event = kind.as_str();
    // `suppressed_before`: refusals of this subject and kind in its previous interval that
    // were not logged one by one.
    match (subject, kind) {
        (OwnedSubject::Key(id), LimitEvent::FailedOpen) => tracing::warn!(
            target: "keygate", key_id = %id, event, detail, suppressed_before = previous,
            "limiter unavailable: request let through unlimited (fail open)"
        ),
        (OwnedSubject::Owner(owner), LimitEvent::FailedOpen) => tracing::warn!(
            target: "keygate", owner = %owner, event, detail, suppressed_before = previous,
            "limiter unavailable: request let through unlimited (fail open)"
        ),
        (OwnedSubject::Key(id), _) => tracing::info!(
            target: "keygate", key_id = %id, event, detail, suppressed_before = previous,
            "key hit a usage limit"
        ),
        (OwnedSubject::Owner(owner), _) => tracing::info!(
            target: "keygate", owner = %owner, event, detail, suppressed_before = previous,
            "owner hit a shared usage limit"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyId;

    #[test]
    fn one_event_per_subject_per_interval_with_a_count() {
        let events = LimitEvents::new(1_000_000);
        let key = OwnedSubject::Key(KeyId::random());
        let other = OwnedSubject::Key(KeyId::random());
        assert!(events.note(&key, LimitEvent::RateLimited, "r", 0));
        for t in 1..500 {
            assert!(!events.note(&key, LimitEvent::RateLimited, "r", t));
        }
        assert_eq!(events.pending(&key, LimitEvent::RateLimited), Some(499));
        assert!(events.note(&other, LimitEvent::RateLimited, "r", 10));
        assert!(events.note(&key, LimitEvent::CreditsExhausted, "", 10));
        assert!(events.note(&key, LimitEvent::RateLimited, "r", 1_000_000));
        assert_eq!(events.pending(&key, LimitEvent::RateLimited), Some(0));
    }

    #[test]
    fn tracking_is_bounded() {
        let events = LimitEvents::new(i64::MAX);
        for _ in 0..(MAX_TRACKED + 100) {
            events.note(
                &OwnedSubject::Key(KeyId::random()),
                LimitEvent::RateLimited,
                "",
                0,
            );
        }
        assert!(events.windows.lock().unwrap().len() <= MAX_TRACKED);
    }
}
