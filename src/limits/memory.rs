//! [`MemoryLimiter`]: GCRA and credits in process, over a sharded map.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::gcra::{self, CreditState};
use super::{
    CreditPolicy, CreditStatus, Decision, LimitCheck, LimitOutcome, LimitStatus, Limiter,
    LimiterError, Subject,
};
use crate::key::{IdMap, KeyId};

/// Shards of the map: one mutex each, so unrelated keys rarely wait on one another.
const SHARDS: usize = 64;
/// New TATs a check keeps between its decision and its write; a check with more limits
/// steps the rest again for the write (few keys have more than a couple of limits).
const INLINE_TATS: usize = 2;
/// Insertions into a shard between two sweeps of its idle entries.
const SWEEP_EVERY: u32 = 4096;

/// The in-process [`Limiter`], the default: exact within one process, and lost on restart
/// (a restarted process starts every limit full and every credit count from its policy's
/// `remaining`; use a store-backed limiter where that matters, or where several processes
/// serve the same keys).
///
/// State is a hash map in 64 shards behind plain mutexes: a check locks one
/// shard, runs [`gcra`] over the subject's limits and credits, and writes only if all
/// allowed, so each check is all-or-nothing. Entries whose limits are all full and that
/// hold no credits are swept as the map grows, so memory stays bounded by the keys and
/// owners in active use (and the keys with credits).
///
/// Why not `governor`: it keeps one quota per limiter (a keyed limiter shares it across all
/// keys), while keygate's keys each carry their own limits, changeable at any time; it
/// cannot charge several limits and a credit count all-or-nothing; and its state is a
/// relative nanosecond counter in its own clock, not an instant a store can share. A
/// per-key `governor` limiter would still need this map and lock around it. See
/// ARCHITECTURE.md for the measurements.
pub struct MemoryLimiter {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

#[derive(Default)]
struct Shard {
    keys: IdMap<State>,
    owners: HashMap<String, State>,
    inserts: u32,
}

/// One subject's state: a TAT per limit name, and (keys only) the credits.
#[derive(Default)]
struct State {
    tats: Vec<(Box<str>, i64)>,
    credits: Option<CreditState>,
}

impl State {
    fn slot(&self, name: &str) -> Option<usize> {
        self.tats.iter().position(|(n, _)| &**n == name)
    }

    fn tat(&self, name: &str) -> Option<i64> {
        self.tats
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, tat)| *tat)
    }

    fn set_tat(&mut self, name: &str, tat: i64) {
        match self.tats.iter_mut().find(|(n, _)| &**n == name) {
            Some((_, slot)) => *slot = tat,
            None => self.tats.push((name.into(), tat)),
        }
    }

    fn is_idle(&self, now: i64) -> bool {
        self.credits.is_none() && self.tats.iter().all(|(_, tat)| gcra::is_idle(*tat, now))
    }
}

impl Default for MemoryLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryLimiter {
    /// An empty limiter: every limit full, every credit count at its policy's `remaining`.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, subject: Subject<'_>) -> MutexGuard<'_, Shard> {
        let hash = match subject {
            // Key ids are random: their low bits spread evenly.
            Subject::Key(id) => id.as_uuid().as_u64_pair().1,
            Subject::Owner(owner) => self.hasher.hash_one(owner),
        };
        let index = usize::try_from(hash.checked_rem(SHARDS as u64).unwrap_or(0)).unwrap_or(0);
        let shard = self
            .shards
            .get(index)
            .or_else(|| self.shards.first())
            .unwrap_or_else(|| unreachable_shard());
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The decision for `check`, charged if allowed. Never fails.
    fn decide(&self, check: &LimitCheck<'_>) -> LimitOutcome {
        let blank = LimitStatus::new(false, 0, 0, None);
        let mut statuses = vec![blank; check.limits.len()];
        let decision = self.decide_into(check, &mut statuses);
        LimitOutcome::new(decision.allowed, statuses, decision.credits)
    }

    /// [`decide`](Self::decide), writing each limit's status to `statuses` (as long as
    /// `check.limits`). One map lookup for a subject that has state (the shard's lock held
    /// throughout), two for one that gets its first.
    fn decide_into(&self, check: &LimitCheck<'_>, statuses: &mut [LimitStatus]) -> Decision {
        let mut shard = self.shard(check.subject);
        // The new TATs, kept for the write (one GCRA step per limit, not two).
        let mut tats = [Kept::default(); INLINE_TATS];
        if let Some(state) = shard.existing_mut(check.subject) {
            let decision = step(Some(state), check, statuses, &mut tats);
            if decision.allowed {
                write(state, check, &tats, decision.credits_next);
            }
            return decision.into();
        }
        let decision = step(None, check, statuses, &mut tats);
        if decision.allowed {
            let state = shard.insert(check.subject, check.now);
            write(state, check, &tats, decision.credits_next);
        }
        decision.into()
    }
}

/// What [`step`] keeps of one limit for [`write`]: the new TAT, and where the old one sits
/// in [`State::tats`] (so that the write finds it without comparing names again).
#[derive(Clone, Copy, Default)]
struct Kept {
    tat: Option<i64>,
    slot: Option<usize>,
}

/// What [`step`] decided, with the credit state to store when allowed.
struct Stepped {
    allowed: bool,
    credits: Option<CreditStatus>,
    credits_next: Option<CreditState>,
}

impl From<Stepped> for Decision {
    fn from(stepped: Stepped) -> Self {
        Decision::new(stepped.allowed, stepped.credits)
    }
}

/// The GCRA step of every limit of `check` and the credit spend, against `state`: each
/// limit's status into `statuses`, its new TAT into `tats` (when it fits there). Changes
/// nothing.
fn step(
    state: Option<&State>,
    check: &LimitCheck<'_>,
    statuses: &mut [LimitStatus],
    tats: &mut [Kept],
) -> Stepped {
    let now = check.now;
    let mut allowed = true;
    for (i, (charge, out)) in check.limits.iter().zip(statuses.iter_mut()).enumerate() {
        let slot = state.and_then(|s| s.slot(&charge.limit.name));
        let tat = slot.and_then(|j| state.and_then(|s| s.tats.get(j)).map(|(_, tat)| *tat));
        let (status, new_tat) = gcra::decide(tat, now, charge.limit, charge.cost);
        if let Some(kept) = tats.get_mut(i) {
            *kept = Kept { tat: new_tat, slot };
        }
        allowed &= status.allowed;
        *out = status;
    }
    let credits = check.credits.map(|spend| {
        let current = gcra::credits_at(state.and_then(|s| s.credits), spend.policy, now);
        gcra::spend(current, spend.policy, now, spend.cost)
    });
    if let Some((status, _)) = &credits {
        allowed &= status.allowed;
    }
    if !allowed {
        // Nothing is charged: report the limits as they stand.
        for (charge, status) in check.limits.iter().zip(statuses.iter_mut()) {
            if status.allowed {
                let tat = state.and_then(|s| s.tat(&charge.limit.name));
                let (unchanged, _) = gcra::decide(tat, now, charge.limit, 0);
                status.remaining = unchanged.remaining;
                status.reset_after_us = unchanged.reset_after_us;
            }
        }
    }
    Stepped {
        allowed,
        credits: credits.map(|(status, _)| status),
        credits_next: credits.and_then(|(_, next)| next),
    }
}

/// Stores an allowed check's new TATs (from `tats`, or stepped again past its end) and
/// credit state.
fn write(state: &mut State, check: &LimitCheck<'_>, tats: &[Kept], credits: Option<CreditState>) {
    for (i, charge) in check.limits.iter().enumerate() {
        let tat = match tats.get(i) {
            Some(Kept {
                tat: Some(tat),
                slot: Some(j),
            }) => {
                // The slot `step` read, unchanged since (the shard's lock is held).
                if let Some((_, stored)) = state.tats.get_mut(*j) {
                    *stored = *tat;
                    continue;
                }
                Some(*tat)
            }
            Some(kept) => kept.tat,
            // Past the kept ones: step again (same state, same answer).
            None => {
                gcra::decide(
                    state.tat(&charge.limit.name),
                    check.now,
                    charge.limit,
                    charge.cost,
                )
                .1
            }
        };
        if let Some(tat) = tat {
            state.set_tat(&charge.limit.name, tat);
        }
    }
    if let Some(next) = credits {
        state.credits = Some(next);
    }
}

/// The shard list is never empty (it has [`SHARDS`] entries); this only satisfies the types.
#[allow(clippy::panic)] // unreachable: `MemoryLimiter::new` builds SHARDS > 0 shards
fn unreachable_shard() -> &'static Mutex<Shard> {
    panic!("MemoryLimiter has no shards")
}

impl Shard {
    fn state(&self, subject: Subject<'_>) -> Option<&State> {
        match subject {
            Subject::Key(id) => self.keys.get(&id),
            Subject::Owner(owner) => self.owners.get(owner),
        }
    }

    fn existing_mut(&mut self, subject: Subject<'_>) -> Option<&mut State> {
        match subject {
            Subject::Key(id) => self.keys.get_mut(&id),
            Subject::Owner(owner) => self.owners.get_mut(owner),
        }
    }

    /// The state of a subject that has none yet (sweeping idle entries now and then).
    fn insert(&mut self, subject: Subject<'_>, now: i64) -> &mut State {
        self.inserts = self.inserts.wrapping_add(1);
        if self.inserts.is_multiple_of(SWEEP_EVERY) {
            self.keys.retain(|_, state| !state.is_idle(now));
            self.owners.retain(|_, state| !state.is_idle(now));
        }
        match subject {
            Subject::Key(id) => self.keys.entry(id).or_default(),
            Subject::Owner(owner) => self.owners.entry(owner.to_owned()).or_default(),
        }
    }

    fn state_mut(&mut self, subject: Subject<'_>, now: i64) -> &mut State {
        let exists = match subject {
            Subject::Key(id) => self.keys.contains_key(&id),
            Subject::Owner(owner) => self.owners.contains_key(owner),
        };
        if !exists {
            self.inserts = self.inserts.wrapping_add(1);
            if self.inserts.is_multiple_of(SWEEP_EVERY) {
                self.keys.retain(|_, state| !state.is_idle(now));
                self.owners.retain(|_, state| !state.is_idle(now));
            }
        }
        match subject {
            Subject::Key(id) => self.keys.entry(id).or_default(),
            Subject::Owner(owner) => self.owners.entry(owner.to_owned()).or_default(),
        }
    }

    fn remove(&mut self, subject: Subject<'_>) {
        match subject {
            Subject::Key(id) => {
                self.keys.remove(&id);
            }
            Subject::Owner(owner) => {
                self.owners.remove(owner);
            }
        }
    }
}

#[async_trait]
impl Limiter for MemoryLimiter {
    async fn check(&self, check: &LimitCheck<'_>) -> Result<LimitOutcome, LimiterError> {
        Ok(self.decide(check))
    }

    fn check_now(&self, check: &LimitCheck<'_>) -> Option<Result<LimitOutcome, LimiterError>> {
        Some(Ok(self.decide(check)))
    }

    fn check_now_into(
        &self,
        check: &LimitCheck<'_>,
        statuses: &mut [LimitStatus],
    ) -> Option<Result<Decision, LimiterError>> {
        Some(Ok(match statuses.get_mut(..check.limits.len()) {
            Some(statuses) => self.decide_into(check, statuses),
            // A slice too short for the check: decide into a vector, copy what fits.
            None => self.decide(check).into_decision(statuses),
        }))
    }

    async fn credits(
        &self,
        key: KeyId,
        policy: &CreditPolicy,
        now: i64,
    ) -> Result<u64, LimiterError> {
        let shard = self.shard(Subject::Key(key));
        let state = shard.state(Subject::Key(key)).and_then(|s| s.credits);
        Ok(gcra::credits_at(state, policy, now).remaining)
    }

    async fn refund(&self, check: &LimitCheck<'_>) -> Result<(), LimiterError> {
        let mut shard = self.shard(check.subject);
        let now = check.now;
        let state = shard.state_mut(check.subject, now);
        for charge in check.limits {
            if let Some(tat) = state.tat(&charge.limit.name) {
                state.set_tat(
                    &charge.limit.name,
                    gcra::refund(tat, now, charge.limit, charge.cost),
                );
            }
        }
        if let (Some(spend), Some(credits)) = (check.credits, state.credits.as_mut()) {
            credits.remaining = credits
                .remaining
                .saturating_add(spend.cost)
                .min(super::MAX_CREDITS);
        }
        Ok(())
    }

    async fn forget(&self, subject: Subject<'_>) -> Result<(), LimiterError> {
        self.shard(subject).remove(subject);
        Ok(())
    }
}

impl fmt::Debug for MemoryLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLimiter").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{Charge, CreditSpend, RateLimit};

    #[tokio::test]
    async fn a_check_is_all_or_nothing() {
        let limiter = MemoryLimiter::new();
        let key = KeyId::random();
        let wide = RateLimit::new("wide", 10, 1000);
        let narrow = RateLimit::new("narrow", 1, 1000);
        let both = [Charge::new(&wide, 1), Charge::new(&narrow, 1)];
        let check = LimitCheck::new(Subject::Key(key), &both, None, 0);
        assert!(limiter.check(&check).await.unwrap().allowed);
        let refused = limiter.check(&check).await.unwrap();
        assert!(!refused.allowed);
        assert!(refused.limits[0].allowed && !refused.limits[1].allowed);
        // The refused check charged nothing of `wide`: 9 left, as after one request.
        let only_wide = [Charge::new(&wide, 0)];
        let peek = limiter
            .check(&LimitCheck::new(Subject::Key(key), &only_wide, None, 0))
            .await
            .unwrap();
        assert_eq!(peek.limits[0].remaining, 9);
    }

    #[tokio::test]
    async fn credits_never_go_below_zero_and_limits_are_not_charged_without_them() {
        let limiter = MemoryLimiter::new();
        let key = KeyId::random();
        let policy = CreditPolicy::new(2);
        let limit = RateLimit::new("r", 100, 1000);
        let charges = [Charge::new(&limit, 1)];
        let check = |cost| {
            LimitCheck::new(
                Subject::Key(key),
                &charges,
                Some(CreditSpend::new(&policy, cost)),
                0,
            )
        };
        assert!(!limiter.check(&check(3)).await.unwrap().allowed);
        assert!(limiter.check(&check(2)).await.unwrap().allowed);
        let out = limiter.check(&check(1)).await.unwrap();
        assert!(!out.allowed);
        assert_eq!(out.credits.unwrap().remaining, 0);
        assert_eq!(out.limits[0].remaining, 99);
        assert_eq!(limiter.credits(key, &policy, 0).await.unwrap(), 0);
        limiter.forget(Subject::Key(key)).await.unwrap();
        assert_eq!(limiter.credits(key, &policy, 0).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn owners_and_keys_are_separate_subjects() {
        let limiter = MemoryLimiter::new();
        let limit = RateLimit::new("r", 1, 1000);
        let charges = [Charge::new(&limit, 1)];
        let owner = LimitCheck::new(Subject::Owner("u1"), &charges, None, 0);
        let other = LimitCheck::new(Subject::Owner("u2"), &charges, None, 0);
        assert!(limiter.check(&owner).await.unwrap().allowed);
        assert!(!limiter.check(&owner).await.unwrap().allowed);
        assert!(limiter.check(&other).await.unwrap().allowed);
        limiter.refund(&owner).await.unwrap();
        assert!(limiter.check(&owner).await.unwrap().allowed);
    }

    #[tokio::test]
    async fn idle_entries_are_swept() {
        let limiter = MemoryLimiter::new();
        let limit = RateLimit::new("r", 1, 1);
        let charges = [Charge::new(&limit, 1)];
        for i in 0..(SHARDS as i64 * i64::from(SWEEP_EVERY) * 2) {
            let key = KeyId::random();
            let _ = limiter.check_now(&LimitCheck::new(
                Subject::Key(key),
                &charges,
                None,
                i * 10_000,
            ));
        }
        let held: usize = limiter
            .shards
            .iter()
            .map(|s| s.lock().unwrap().keys.len())
            .sum();
        assert!(held < SHARDS * SWEEP_EVERY as usize + SHARDS, "{held}");
    }
}
