//! [`CachedStore`]: a read-through cache in front of any [`KeyStore`].

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::{ChangeListener, KeyStore, ListQuery, StoreError};
use crate::key::KeyId;
use crate::record::{KeyPatch, KeyRecord};

/// How a [`CachedStore`] caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheConfig {
    /// How long a found record is served from memory. This bounds how long a revoke,
    /// update or delete made by *another* node can go unseen when no change feed is
    /// connected; changes made through this cache are seen at once. Default 5 s.
    pub ttl: Duration,
    /// How long "no such key" is remembered, so garbage with valid checksums cannot
    /// hammer the store. Default 1 s.
    pub negative_ttl: Duration,
    /// Most entries kept; past it, expired entries are dropped and, if still full, new
    /// lookups are served without caching. Default 100 000.
    pub capacity: usize,
}

impl CacheConfig {
    /// The defaults: 5 s TTL, 1 s negative TTL, 100 000 entries.
    pub fn new() -> Self {
        Self {
            ttl: Duration::from_secs(5),
            negative_ttl: Duration::from_secs(1),
            capacity: 100_000,
        }
    }

    /// Sets [`ttl`](Self::ttl).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets [`negative_ttl`](Self::negative_ttl).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// Sets [`capacity`](Self::capacity).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Counters of a [`CachedStore`], for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Lookups answered from memory (found or negative).
    pub hits: u64,
    /// Lookups that went to the inner store (one per collapsed group of concurrent misses).
    pub loads: u64,
    /// Entries dropped because of a change notice or a local write.
    pub invalidations: u64,
    /// Times the whole cache was dropped because the change feed reconnected.
    pub resyncs: u64,
}

/// A read-through cache of [`KeyStore::get`] in front of any store.
///
/// - Found records live for [`CacheConfig::ttl`], missing ids for
///   [`CacheConfig::negative_ttl`].
/// - Concurrent misses for one id are collapsed into a single read of the inner store.
/// - Writes through this store (`insert`, `update`, `delete`) drop the entry at once, so a
///   revoke through the same [`Keygate`](crate::Keygate) takes effect immediately.
/// - [`follow_changes`](Self::follow_changes) connects the inner store's change feed, so
///   writes made on other nodes drop entries here too; if the feed drops, entries still
///   expire after the TTL, and a reconnected feed clears the cache.
///
/// ```
/// use keygate::{CacheConfig, CachedStore, MemoryStore};
/// use std::time::Duration;
///
/// let store = CachedStore::new(MemoryStore::new(), CacheConfig::new().ttl(Duration::from_secs(2)));
/// # let _ = store;
/// ```
pub struct CachedStore<S> {
    inner: S,
    state: Arc<State>,
}

struct State {
    config: CacheConfig,
    slots: Mutex<HashMap<KeyId, Slot>>,
    hits: AtomicU64,
    loads: AtomicU64,
    invalidations: AtomicU64,
    resyncs: AtomicU64,
}

type Loaded = Option<Arc<KeyRecord>>;

enum Slot {
    Ready { value: Loaded, until: Instant },
    Loading(Arc<OnceCell<Loaded>>),
}

impl<S: KeyStore> CachedStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, config: CacheConfig) -> Self {
        Self {
            inner,
            state: Arc::new(State {
                config,
                slots: Mutex::default(),
                hits: AtomicU64::new(0),
                loads: AtomicU64::new(0),
                invalidations: AtomicU64::new(0),
                resyncs: AtomicU64::new(0),
            }),
        }
    }

    /// Subscribes to the inner store's change feed ([`KeyStore::subscribe`]); `Ok(false)`
    /// if it has none, in which case the TTL alone bounds cross-node staleness.
    pub async fn follow_changes(&self) -> Result<bool, StoreError> {
        let listener: Arc<dyn ChangeListener> = self.state.clone();
        self.inner.subscribe(Arc::downgrade(&listener)).await
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Drops the entry for `id`.
    pub fn invalidate(&self, id: KeyId) {
        self.state.changed(id);
    }

    /// Drops every entry.
    pub fn clear(&self) {
        self.state.lock().clear();
    }

    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        let s = &self.state;
        CacheStats {
            hits: s.hits.load(Ordering::Relaxed),
            loads: s.loads.load(Ordering::Relaxed),
            invalidations: s.invalidations.load(Ordering::Relaxed),
            resyncs: s.resyncs.load(Ordering::Relaxed),
        }
    }
}

impl State {
    fn lock(&self) -> MutexGuard<'_, HashMap<KeyId, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a finished load, unless the slot was invalidated or replaced meanwhile (then
    /// the value may predate a write and must not be served later).
    fn settle(&self, id: KeyId, cell: &Arc<OnceCell<Loaded>>, value: Option<&Loaded>) {
        let mut slots = self.lock();
        let ours = matches!(slots.get(&id), Some(Slot::Loading(c)) if Arc::ptr_eq(c, cell));
        if !ours {
            return;
        }
        match value {
            Some(value) => {
                let ttl = if value.is_some() {
                    self.config.ttl
                } else {
                    self.config.negative_ttl
                };
                let until = Instant::now() + ttl;
                slots.insert(
                    id,
                    Slot::Ready {
                        value: value.clone(),
                        until,
                    },
                );
            }
            None => {
                slots.remove(&id);
            }
        }
    }
}

impl ChangeListener for State {
    fn changed(&self, id: KeyId) {
        if self.lock().remove(&id).is_some() {
            self.invalidations.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn resync(&self) {
        self.lock().clear();
        self.resyncs.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl<S: KeyStore> KeyStore for CachedStore<S> {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        let id = record.id;
        let result = self.inner.insert(record).await;
        self.state.changed(id); // a cached "not found" must not outlive the insert
        result
    }

    async fn get(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let state = &*self.state;
        let cell = {
            let mut slots = state.lock();
            let now = Instant::now();
            match slots.get(&id) {
                Some(Slot::Ready { value, until }) if now < *until => {
                    state.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(value.clone());
                }
                Some(Slot::Loading(cell)) => Some(cell.clone()),
                _ => {
                    if slots.len() >= state.config.capacity {
                        slots.retain(|_, slot| match slot {
                            Slot::Ready { until, .. } => now < *until,
                            Slot::Loading(_) => true,
                        });
                    }
                    if slots.len() >= state.config.capacity {
                        None // full of live entries: serve this one uncached
                    } else {
                        let cell = Arc::new(OnceCell::new());
                        slots.insert(id, Slot::Loading(cell.clone()));
                        Some(cell)
                    }
                }
            }
        };
        let Some(cell) = cell else {
            state.loads.fetch_add(1, Ordering::Relaxed);
            return self.inner.get(id).await;
        };
        // The first caller loads; concurrent callers for the same id wait on the same cell.
        // If the loader fails (or is cancelled) a waiter takes over the load.
        let result = cell
            .get_or_try_init(|| async {
                state.loads.fetch_add(1, Ordering::Relaxed);
                self.inner.get(id).await
            })
            .await;
        match result {
            Ok(value) => {
                state.settle(id, &cell, Some(value));
                Ok(value.clone())
            }
            Err(error) => {
                state.settle(id, &cell, None);
                Err(error)
            }
        }
    }

    async fn update(&self, id: KeyId, patch: &KeyPatch) -> Result<Option<KeyRecord>, StoreError> {
        self.state.changed(id);
        let result = self.inner.update(id, patch).await;
        self.state.changed(id); // also drop anything loaded while the write was under way
        result
    }

    async fn delete(&self, id: KeyId) -> Result<bool, StoreError> {
        self.state.changed(id);
        let result = self.inner.delete(id).await;
        self.state.changed(id);
        result
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.list(query).await
    }

    async fn record_last_used(&self, batch: &[(KeyId, DateTime<Utc>)]) -> Result<(), StoreError> {
        self.inner.record_last_used(batch).await?;
        // Keep cached copies in step (without a reload): what `get` returns stays what
        // the store holds.
        let mut slots = self.state.lock();
        for (id, at) in batch {
            if let Some(Slot::Ready {
                value: Some(record),
                ..
            }) = slots.get_mut(id)
            {
                if record.last_used_at.is_none_or(|prev| prev < *at) {
                    Arc::make_mut(record).last_used_at = Some(*at);
                }
            }
        }
        Ok(())
    }

    async fn subscribe(&self, listener: Weak<dyn ChangeListener>) -> Result<bool, StoreError> {
        self.inner.subscribe(listener).await
    }
}

impl<S: fmt::Debug> fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStore")
            .field("inner", &self.inner)
            .field("config", &self.state.config)
            .field("entries", &self.state.lock().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::KeyFormat;
    use std::sync::atomic::AtomicUsize;

    /// Counts reads and can hold them open, to observe collapsing.
    #[derive(Default)]
    struct Slow {
        inner: MemoryStore,
        gets: AtomicUsize,
        gate: tokio::sync::Notify,
        hold: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl KeyStore for Slow {
        async fn insert(&self, r: KeyRecord) -> Result<(), StoreError> {
            self.inner.insert(r).await
        }
        async fn get(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            if self.hold.load(Ordering::SeqCst) {
                self.gate.notified().await;
            }
            self.inner.get(id).await
        }
        async fn update(&self, id: KeyId, p: &KeyPatch) -> Result<Option<KeyRecord>, StoreError> {
            self.inner.update(id, p).await
        }
        async fn delete(&self, id: KeyId) -> Result<bool, StoreError> {
            self.inner.delete(id).await
        }
        async fn list(&self, q: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
            self.inner.list(q).await
        }
        async fn record_last_used(&self, b: &[(KeyId, DateTime<Utc>)]) -> Result<(), StoreError> {
            self.inner.record_last_used(b).await
        }
    }

    fn record() -> KeyRecord {
        crate::testing_support::record(KeyFormat::Jwt)
    }

    #[tokio::test(start_paused = true)]
    async fn hits_until_the_ttl_then_reloads() {
        let cache = CachedStore::new(
            Slow::default(),
            CacheConfig::new().ttl(Duration::from_secs(5)),
        );
        let r = record();
        cache.inner().inner.insert(r.clone()).await.unwrap();
        for _ in 0..10 {
            assert!(cache.get(r.id).await.unwrap().is_some());
        }
        assert_eq!(cache.inner().gets.load(Ordering::SeqCst), 1);
        // Revoked behind the cache's back (another node, no feed): stale until the TTL.
        cache
            .inner()
            .inner
            .update(r.id, &KeyPatch::new().active(false))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_millis(4999)).await;
        assert!(cache.get(r.id).await.unwrap().unwrap().active);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!cache.get(r.id).await.unwrap().unwrap().active);
        assert_eq!(cache.inner().gets.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn misses_are_cached_briefly() {
        let cache = CachedStore::new(
            Slow::default(),
            CacheConfig::new().negative_ttl(Duration::from_secs(1)),
        );
        let id = KeyId::random();
        for _ in 0..5 {
            assert!(cache.get(id).await.unwrap().is_none());
        }
        assert_eq!(cache.inner().gets.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(cache.get(id).await.unwrap().is_none());
        assert_eq!(cache.inner().gets.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn writes_through_the_cache_invalidate_at_once() {
        let cache = CachedStore::new(Slow::default(), CacheConfig::new());
        let r = record();
        // A negative entry is dropped by the insert.
        assert!(cache.get(r.id).await.unwrap().is_none());
        cache.insert(r.clone()).await.unwrap();
        assert!(cache.get(r.id).await.unwrap().unwrap().active);
        cache
            .update(r.id, &KeyPatch::new().active(false))
            .await
            .unwrap();
        assert!(!cache.get(r.id).await.unwrap().unwrap().active);
        cache.delete(r.id).await.unwrap();
        assert!(cache.get(r.id).await.unwrap().is_none());
        assert!(cache.stats().invalidations >= 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_collapse_into_one_read() {
        let cache = Arc::new(CachedStore::new(Slow::default(), CacheConfig::new()));
        let r = record();
        cache.inner().inner.insert(r.clone()).await.unwrap();
        cache.inner().hold.store(true, Ordering::SeqCst);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get(r.id).await.unwrap().map(|r| r.id) })
            })
            .collect();
        // Let every task reach the cache, then release the one read in flight.
        while cache.inner().gets.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        cache.inner().hold.store(false, Ordering::SeqCst);
        cache.inner().gate.notify_waiters();
        for task in tasks {
            assert_eq!(task.await.unwrap(), Some(r.id));
        }
        assert_eq!(cache.inner().gets.load(Ordering::SeqCst), 1);
        assert_eq!(cache.stats().loads, 1);
    }

    #[tokio::test]
    async fn an_invalidation_during_a_load_keeps_the_old_value_out() {
        let cache = Arc::new(CachedStore::new(Slow::default(), CacheConfig::new()));
        let r = record();
        cache.inner().inner.insert(r.clone()).await.unwrap();
        cache.inner().hold.store(true, Ordering::SeqCst);
        let loader = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get(r.id).await.unwrap() })
        };
        while cache.inner().gets.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        cache.invalidate(r.id); // e.g. a revoke notice arrives mid-load
        cache.inner().hold.store(false, Ordering::SeqCst);
        cache.inner().gate.notify_waiters();
        assert!(loader.await.unwrap().is_some());
        // The load that raced the notice was not cached: the next get reads again.
        let _ = cache.get(r.id).await.unwrap();
        assert_eq!(cache.inner().gets.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn resync_clears_everything() {
        let cache = CachedStore::new(Slow::default(), CacheConfig::new());
        let r = record();
        cache.insert(r.clone()).await.unwrap();
        cache.get(r.id).await.unwrap();
        cache.state.resync();
        cache.get(r.id).await.unwrap();
        assert_eq!(cache.inner().gets.load(Ordering::SeqCst), 2);
        assert_eq!(cache.stats().resyncs, 1);
    }
}
