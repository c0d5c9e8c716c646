//! Last-used bookkeeping and pepper re-hashing, kept off the request path.
//!
//! A verify never waits on a write. Accepted keys are marked in memory, at most once per
//! key per interval (Sanctum's write-per-request is the failure this avoids); marks are
//! written as one batch when a flush is due, by a task spawned on the current Tokio
//! runtime, or by [`Keygate::flush`](crate::Keygate::flush). Rejected attempts are never
//! marked. Re-hashes of keys still under an old pepper ride along with the same flush.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::DateTime;

use crate::hash::SecretHash;
use crate::key::{IdMap, KeyId};
use crate::record::KeyPatch;
use crate::store::{KeyStore, StoreError};

/// Microseconds since the Unix epoch: cheap to read and compare on every verify.
pub(crate) type Micros = i64;

#[derive(Debug)]
pub(crate) struct Usage {
    interval: Micros,
    state: Mutex<State>,
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
            writer: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes an accepted use of `id` at `now`, and a re-hash if one is due. Returns `true`
    /// when a background flush should start now (see [`spawn_flush`]).
    pub fn mark(&self, id: KeyId, now: Micros, rehash: Option<SecretHash>) -> bool {
        let mut state = self.lock();
        let due = state
            .marked
            .get(&id)
            .is_none_or(|at| now.saturating_sub(*at) >= self.interval);
        if due {
            state.marked.insert(id, now);
            state.used.push((id, now));
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
        Self::take(&mut state, now, self.interval)
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

    fn take(state: &mut State, now: Micros, interval: Micros) -> Batch {
        // Marks older than the interval no longer suppress anything: drop them so the map
        // holds only recently used keys.
        state
            .marked
            .retain(|_, at| now.saturating_sub(*at) < interval);
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
