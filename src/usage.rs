//! Last-used bookkeeping and pepper re-hashing, kept off the request path.
//!
//! A verify never waits on a write. Accepted keys are marked in memory, at most once per
//! key per interval (Sanctum's write-per-request is the failure this avoids); marks are
//! written as one batch when a flush is due, by a task spawned on the current Tokio
//! runtime, or by [`Keygate::flush`](crate::Keygate::flush). Rejected attempts are never
//! marked. Re-hashes of keys still under an old pepper ride along with the same flush.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::atomic::{fence, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::DateTime;

use crate::hash::SecretHash;
use crate::key::{IdHasher, IdMap, KeyId};
use crate::record::KeyPatch;
use crate::store::{KeyStore, StoreError};

/// Microseconds since the Unix epoch: cheap to read and compare on every verify.
pub(crate) type Micros = i64;

#[derive(Debug)]
pub(crate) struct Usage {
    interval: Micros,
    state: Mutex<State>,
    /// Recent marks readable without the lock: [`mark`](Usage::mark) takes `state`'s lock
    /// only when its answer could differ from "nothing to do" (see [`Recent`]).
    recent: Recent,
    /// Held by whoever takes queued work and writes it, so that [`Usage::flush`] waits
    /// for a background write under way, and a background task that starts after a flush
    /// finds nothing left to write.
    writer: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    /// When each key was last marked; a key is marked again only `interval` later.
    marked: IdMap<Micros>,
    used: Vec<(KeyId, Micros)>,
    rehash: HashMap<KeyId, SecretHash>,
    last_flush: Option<Micros>,
    flushing: bool,
}

/// Work taken out of the queue for one flush.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    used: Vec<(KeyId, Micros)>,
    rehash: Vec<(KeyId, SecretHash)>,
}

impl Usage {
    pub fn new(interval: Micros) -> Self {
        Self {
            interval,
            state: Mutex::default(),
            recent: Recent::new(),
            writer: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> Guard<'_> {
        Guard {
            state: self.state.lock().unwrap_or_else(|e| e.into_inner()),
            usage: self,
        }
    }

    /// Notes an accepted use of `id` at `now`, and a re-hash if one is due. Returns `true`
    /// when a background flush should start now (see [`spawn_flush`]).
    ///
    /// A key marked less than the interval ago, with no re-hash and no flush due, changes
    /// nothing: that answer (most verifies) is read from [`Recent`] without the lock.
    pub fn mark(&self, id: KeyId, now: Micros, rehash: Option<SecretHash>) -> bool {
        if rehash.is_none()
            && now < self.recent.flush_from.load(Ordering::Relaxed)
            && self
                .recent
                .marked_at(id)
                .is_some_and(|at| now.saturating_sub(at) < self.interval)
        {
            return false;
        }
        let mut state = self.lock();
        let due = state
            .marked
            .get(&id)
            .is_none_or(|at| now.saturating_sub(*at) >= self.interval);
        if due {
            state.marked.insert(id, now);
            state.used.push((id, now));
            self.recent.set(id, Some(now));
        }
        if let Some(hash) = rehash {
            state.rehash.entry(id).or_insert(hash);
        }
        let flush_due = !state.flushing
            && (!state.used.is_empty() || !state.rehash.is_empty())
            && state
                .last_flush
                .is_none_or(|at| now.saturating_sub(at) >= self.interval);
        if !flush_due {
            return false;
        }
        state.flushing = true;
        state.last_flush = Some(now);
        true
    }

    /// Takes everything queued.
    fn take_all(&self, now: Micros) -> Batch {
        let mut state = self.lock();
        if !state.used.is_empty() || !state.rehash.is_empty() {
            state.last_flush = Some(now);
        }
        self.take(&mut state, now)
    }

    /// Whether anything is queued.
    pub fn is_idle(&self) -> bool {
        let state = self.lock();
        state.used.is_empty() && state.rehash.is_empty()
    }

    /// Waits for a background write under way, then writes everything queued.
    pub async fn flush(&self, store: &dyn KeyStore, now: Micros) -> Result<(), StoreError> {
        let _writer = self.writer.lock().await;
        let batch = self.take_all(now);
        self.write(store, batch).await
    }

    fn take(&self, state: &mut State, now: Micros) -> Batch {
        // Marks older than the interval no longer suppress anything: drop them so the map
        // holds only recently used keys (and from `recent`, which must not outlive them).
        let interval = self.interval;
        state.marked.retain(|id, at| {
            let keep = now.saturating_sub(*at) < interval;
            if !keep {
                self.recent.forget(*id);
            }
            keep
        });
        Batch {
            used: std::mem::take(&mut state.used),
            rehash: state.rehash.drain().collect(),
        }
    }

    /// Puts back what a failed flush could not write, so the next flush retries it.
    fn requeue(&self, batch: Batch) {
        let mut state = self.lock();
        state.used.extend(batch.used);
        for (id, hash) in batch.rehash {
            state.rehash.entry(id).or_insert(hash);
        }
    }

    /// Forgets a key (deleted): nothing queued for it will be written.
    pub fn forget(&self, id: KeyId) {
        let mut state = self.lock();
        state.marked.remove(&id);
        self.recent.forget(id);
        state.used.retain(|(k, _)| *k != id);
        state.rehash.remove(&id);
    }

    /// Writes `batch`: one `record_last_used` round trip, then one update per re-hash.
    /// What fails is queued again and the first error returned.
    async fn write(&self, store: &dyn KeyStore, batch: Batch) -> Result<(), StoreError> {
        let mut result = Ok(());
        let mut failed = Batch::default();
        if !batch.used.is_empty() {
            let used: Vec<_> = batch
                .used
                .iter()
                .filter_map(|&(id, at)| Some((id, DateTime::from_timestamp_micros(at)?)))
                .collect();
            if let Err(e) = store.record_last_used(&used).await {
                failed.used = batch.used;
                result = Err(e);
            }
        }
        for (id, hash) in batch.rehash {
            let patch = KeyPatch {
                hash: Some(hash.clone()),
                ..KeyPatch::default()
            };
            match store.update(id, &patch).await {
                Ok(_) => {
                    tracing::debug!(target: "keygate", key_id = %id, version = hash.version, "key re-hashed under the current pepper")
                }
                Err(e) => {
                    failed.rehash.push((id, hash));
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
            }
        }
        if let Err(e) = &result {
            tracing::warn!(target: "keygate", error = %e, "last-used flush failed; will retry");
            self.requeue(failed);
        }
        result
    }
}

/// The state's lock; on release it publishes, for [`Usage::mark`]'s lock-free answer,
/// from when a flush could be due.
struct Guard<'a> {
    state: MutexGuard<'a, State>,
    usage: &'a Usage,
}

impl std::ops::Deref for Guard<'_> {
    type Target = State;

    fn deref(&self) -> &State {
        &self.state
    }
}

impl std::ops::DerefMut for Guard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let state = &*self.state;
        // When `mark`'s `flush_due` could first hold: never while a flush runs or nothing
        // is queued; else once the interval since the last flush is over.
        let from = if state.flushing || (state.used.is_empty() && state.rehash.is_empty()) {
            Micros::MAX
        } else {
            state
                .last_flush
                .map_or(Micros::MIN, |at| at.saturating_add(self.usage.interval))
        };
        self.usage.recent.flush_from.store(from, Ordering::Relaxed);
    }
}

/// Slots of [`Recent`] (a power of two).
const RECENT_SLOTS: usize = 1024;

/// A lock-free, direct-mapped copy of recent entries of `State::marked`, so that the
/// common verify (a key used again within the interval) reads shared memory instead of
/// taking a lock that every request of every thread would otherwise write.
///
/// Written only under `Usage::state`'s lock, so writers never race one another; each slot
/// is a sequence lock, so a reader sees a whole entry or retries on the slow path. A slot
/// holds at most one id; another id hashed there replaces it, so a miss only means "ask
/// under the lock". An entry is never younger than the one in `marked` (both are set
/// together, and removed together), so its answer is the one `marked` would give.
#[derive(Debug)]
struct Recent {
    slots: Box<[Slot]>,
    /// The clock reading from which a flush could be due (see [`Guard`]'s `Drop`).
    flush_from: AtomicI64,
}

#[derive(Debug, Default)]
struct Slot {
    /// Odd while a writer is changing the slot.
    seq: AtomicU64,
    hi: AtomicU64,
    lo: AtomicU64,
    /// When the id was marked; `Micros::MIN` for an empty slot (a nil id never verifies).
    at: AtomicI64,
}

impl Recent {
    fn new() -> Self {
        Self {
            slots: (0..RECENT_SLOTS).map(|_| Slot::empty()).collect(),
            flush_from: AtomicI64::new(Micros::MAX),
        }
    }

    fn slot(&self, id: KeyId) -> Option<&Slot> {
        // Only verified ids reach here (keys whose hash matched), so the cheap hasher is
        // enough; truncating the hash is intended.
        let hash = BuildHasherDefault::<IdHasher>::default().hash_one(id) as usize;
        self.slots.get(hash % RECENT_SLOTS)
    }

    /// When `id` was last marked, if its slot holds it and no writer is in the way.
    fn marked_at(&self, id: KeyId) -> Option<Micros> {
        let slot = self.slot(id)?;
        let seq = slot.seq.load(Ordering::Acquire);
        if seq % 2 == 1 {
            return None;
        }
        let (hi, lo) = split(id);
        let entry = (
            slot.hi.load(Ordering::Relaxed),
            slot.lo.load(Ordering::Relaxed),
            slot.at.load(Ordering::Relaxed),
        );
        fence(Ordering::Acquire);
        if slot.seq.load(Ordering::Relaxed) != seq || (entry.0, entry.1) != (hi, lo) {
            return None;
        }
        (entry.2 != Micros::MIN).then_some(entry.2)
    }

    /// Sets `id`'s slot to `at` (`None`: empties it if it holds `id`). Callers hold the
    /// state's lock, which serializes writers.
    fn set(&self, id: KeyId, at: Option<Micros>) {
        let Some(slot) = self.slot(id) else {
            return;
        };
        let (hi, lo) = split(id);
        let holds = slot.hi.load(Ordering::Relaxed) == hi && slot.lo.load(Ordering::Relaxed) == lo;
        if at.is_none() && !holds {
            return;
        }
        let seq = slot.seq.load(Ordering::Relaxed);
        slot.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        slot.hi.store(hi, Ordering::Relaxed);
        slot.lo.store(lo, Ordering::Relaxed);
        slot.at.store(at.unwrap_or(Micros::MIN), Ordering::Relaxed);
        slot.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    fn forget(&self, id: KeyId) {
        self.set(id, None);
    }
}

impl Slot {
    fn empty() -> Self {
        Self {
            at: AtomicI64::new(Micros::MIN),
            ..Self::default()
        }
    }
}

/// An id's two 64-bit halves (truncating casts intended).
fn split(id: KeyId) -> (u64, u64) {
    let n = id.as_uuid().as_u128();
    ((n >> 64) as u64, n as u64)
}

/// Starts a background flush on the current Tokio runtime. Without a runtime the work
/// stays queued for the next flush.
pub(crate) fn spawn_flush(usage: Arc<Usage>, store: Arc<dyn KeyStore>, now: Micros) {
    /// Clears `flushing` however the task ends: finished, or dropped unpolled because its
    /// runtime shut down first.
    struct Done(Arc<Usage>);
    impl Drop for Done {
        fn drop(&mut self) {
            self.0.lock().flushing = false;
        }
    }
    let done = Done(usage);
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move {
            let _ = done.0.flush(&*store, now).await;
            drop(done);
        });
    }
}

#[cfg(test)]
// Test fixtures: small fixed instants, far from overflow.
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::KeyFormat;

    fn t(s: i64) -> Micros {
        (1_800_000_000 + s) * 1_000_000
    }

    #[test]
    fn a_key_is_marked_at_most_once_per_interval() {
        let usage = Usage::new(60_000_000);
        let id = KeyId::random();
        assert!(usage.mark(id, t(0), None), "first use starts a flush");
        assert_eq!(usage.take_all(t(0)).used, vec![(id, t(0))]);
        usage.lock().flushing = false;
        for s in 1..60 {
            assert!(!usage.mark(id, t(s), None));
        }
        assert!(usage.is_idle(), "uses inside the interval are coalesced");
        assert!(usage.mark(id, t(60), None), "due again after the interval");
        assert_eq!(usage.take_all(t(60)).used, vec![(id, t(60))]);
    }

    #[test]
    fn flushes_are_spaced_by_the_interval() {
        let usage = Usage::new(10_000_000);
        assert!(usage.mark(KeyId::random(), t(0), None));
        let _ = usage.take_all(t(0));
        usage.lock().flushing = false;
        // Other keys used soon after wait for the next flush window.
        assert!(!usage.mark(KeyId::random(), t(1), None));
        assert!(!usage.mark(KeyId::random(), t(2), None));
        assert!(usage.mark(KeyId::random(), t(10), None), "window open");
        assert_eq!(usage.take_all(t(10)).used.len(), 3);
    }

    /// The lock-free answer of `mark` is the one the locked state gives: checked against a
    /// plain model of the locked algorithm over random uses of many keys (more than
    /// `Recent` has slots, so that slots are shared), flushes, forgets and re-hashes, with
    /// a clock that sometimes steps back.
    #[test]
    fn lock_free_marks_answer_as_the_locked_state_does() {
        #[derive(Default)]
        struct Model {
            marked: HashMap<KeyId, Micros>,
            used: Vec<(KeyId, Micros)>,
            rehash: HashMap<KeyId, ()>,
            last_flush: Option<Micros>,
            flushing: bool,
        }
        let interval = 10;
        let usage = Usage::new(interval);
        let mut model = Model::default();
        let ids: Vec<KeyId> = (0..3 * RECENT_SLOTS).map(|_| KeyId::random()).collect();
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let hash = crate::hash::Pepper::new(1, [1u8; 32])
            .unwrap()
            .hash(crate::HashScheme::Bound, b"x");
        let mut now: Micros = 1_000;
        for step in 0..200_000 {
            now += match next(100) {
                0 => -3,
                1..=20 => 1,
                _ => 0,
            };
            // A few hot keys and many cold ones.
            let id = if next(4) == 0 {
                ids[next(ids.len() as u64) as usize]
            } else {
                ids[next(8) as usize]
            };
            match next(1000) {
                0..=4 => {
                    let batch = usage.take_all(now);
                    if !model.used.is_empty() || !model.rehash.is_empty() {
                        model.last_flush = Some(now);
                    }
                    model
                        .marked
                        .retain(|_, at| now.saturating_sub(*at) < interval);
                    assert_eq!(batch.used, std::mem::take(&mut model.used), "step {step}");
                    assert_eq!(batch.rehash.len(), model.rehash.drain().count());
                }
                5..=9 => {
                    usage.lock().flushing = false;
                    model.flushing = false;
                }
                10 => {
                    usage.forget(id);
                    model.marked.remove(&id);
                    model.used.retain(|(k, _)| *k != id);
                    model.rehash.remove(&id);
                }
                roll => {
                    let rehash = (roll == 11).then(|| hash.clone());
                    let want = {
                        let m = &mut model;
                        let due = m
                            .marked
                            .get(&id)
                            .is_none_or(|at| now.saturating_sub(*at) >= interval);
                        if due {
                            m.marked.insert(id, now);
                            m.used.push((id, now));
                        }
                        if rehash.is_some() {
                            m.rehash.entry(id).or_insert(());
                        }
                        let flush_due = !m.flushing
                            && (!m.used.is_empty() || !m.rehash.is_empty())
                            && m.last_flush
                                .is_none_or(|at| now.saturating_sub(at) >= interval);
                        if flush_due {
                            m.flushing = true;
                            m.last_flush = Some(now);
                        }
                        flush_due
                    };
                    assert_eq!(usage.mark(id, now, rehash), want, "step {step}");
                }
            }
        }
    }

    #[test]
    fn forget_drops_queued_work() {
        let usage = Usage::new(10_000_000);
        let _ = usage.mark(KeyId::random(), t(0), None);
        let id = KeyId::random();
        let _ = usage.mark(id, t(1), None);
        usage.forget(id);
        let batch = usage.take_all(t(2));
        assert!(batch.used.iter().all(|(k, _)| *k != id));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn flush_writes_what_a_spawned_task_has_not_run_yet() {
        let usage = Arc::new(Usage::new(60_000_000));
        let store: Arc<dyn KeyStore> = Arc::new(MemoryStore::new());
        let record = crate::testing_support::record(KeyFormat::Opaque);
        store.insert(record.clone()).await.unwrap();
        assert!(usage.mark(record.id, t(5), None));
        // The background task is spawned but, on this single thread, not run yet.
        spawn_flush(usage.clone(), store.clone(), t(5));
        usage.flush(&*store, t(6)).await.unwrap();
        let stored = store.get(record.id).await.unwrap().unwrap();
        assert_eq!(
            stored.last_used_at.map(|at| at.timestamp_micros()),
            Some(t(5))
        );
        assert!(usage.is_idle());
    }
}
