//! [`CachedStore`]: a read-through cache in front of any [`KeyStore`].
//!
//! Built on [`quick_cache`]: sharded, bounded (S3-FIFO eviction), with cancel-safe
//! single-flight placeholders. Keys are hashed with std's keyed SipHash over all 128 bits
//! of the id, so a requester cannot choose ids that collide.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use quick_cache::sync::{Cache, EntryAction, EntryResult};
use quick_cache::{Lifecycle, OptionsBuilder, UnitWeighter};
use tokio::time::Instant;

use super::{ChangeListener, KeyStore, ListQuery, StoreError};
use crate::hash::PepperFingerprint;
use crate::key::KeyId;
use crate::record::{KeyPatch, KeyRecord};

/// How a [`CachedStore`] caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheConfig {
    /// How long a found record is served from memory. This bounds how long a revoke,
    /// update or delete made by *another* node can go unseen when no change feed is
    /// connected; changes made through this cache are seen at once. Default 5 s. Any
    /// value is accepted; one too large to add to the clock means "until evicted or
    /// invalidated".
    pub ttl: Duration,
    /// How long "no such key" is remembered for an id, so that the *same* unknown id
    /// asked again costs no store read. Default 1 s. It does not stop a stream of
    /// *distinct* made-up ids (anyone can compute the public checksum): each of those
    /// costs one store read. Saturates like [`ttl`](Self::ttl).
    pub negative_ttl: Duration,
    /// Most found records kept; past it the least useful entries are evicted (S3-FIFO).
    /// Default 100 000. Negative entries never count against it.
    pub capacity: usize,
    /// Most "no such key" entries kept, in their own cache so that a flood of unknown ids
    /// can only evict other unknown ids, never a hot record. Default 10 000.
    pub negative_capacity: usize,
}

impl CacheConfig {
    /// The defaults: 5 s TTL, 1 s negative TTL, 100 000 records, 10 000 unknown ids.
    pub fn new() -> Self {
        Self {
            ttl: Duration::from_secs(5),
            negative_ttl: Duration::from_secs(1),
            capacity: 100_000,
            negative_capacity: 10_000,
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

    /// Sets [`negative_capacity`](Self::negative_capacity).
    pub fn negative_capacity(mut self, capacity: usize) -> Self {
        self.negative_capacity = capacity;
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
    /// Of [`hits`](Self::hits), those answered "no such key" from the negative cache.
    pub negative_hits: u64,
    /// Lookups that went to the inner store (one per collapsed group of concurrent misses).
    pub loads: u64,
    /// Entries dropped because of a change notice or a local write.
    pub invalidations: u64,
    /// Entries (found or negative) evicted to stay within the capacities.
    pub evictions: u64,
    /// Times the whole cache was dropped because the change feed could not replay what it
    /// missed (a first sync, a trimmed change log, a store that was reset).
    pub resyncs: u64,
    /// Lookups not answered from memory because the change feed's lease had run out (it
    /// has not proved recently that it is up to date; see [`FeedConfig`](crate::FeedConfig));
    /// each read the store instead, so it is also counted in [`loads`](Self::loads) unless
    /// collapsed with another.
    pub lapsed: u64,
    /// Times the change feed proved it was up to date and renewed the lease
    /// ([`ChangeListener::synced`]): one per successful heartbeat.
    pub syncs: u64,
    /// Found records held now (at most [`CacheConfig::capacity`]).
    pub entries: u64,
    /// "No such key" entries held now (at most [`CacheConfig::negative_capacity`]).
    pub negative_entries: u64,
}

/// A read-through cache of [`KeyStore::get`] in front of any store.
///
/// - Found records live for [`CacheConfig::ttl`], missing ids for
///   [`CacheConfig::negative_ttl`], each kind in its own bounded cache with real
///   eviction, so unknown ids cannot push out hot records.
/// - Concurrent misses for one id are collapsed into a single read of the inner store. A
///   read that is abandoned (its future dropped by a closed connection or a store
///   timeout) leaves nothing behind; a waiting caller, if any, takes the read over.
/// - Writes through this store (`insert`, `update`, `delete`) drop the entry at once, so a
///   revoke through the same [`Keygate`](crate::Keygate) takes effect immediately. A read
///   that started before such a write (or before [`invalidate`](Self::invalidate)) never
///   caches what it read.
/// - [`follow_changes`](Self::follow_changes) connects the inner store's change feed, so
///   writes made on other nodes drop entries here too. A feed that proves it is in sync
///   (the built-in PostgreSQL and Redis feeds, through [`ChangeListener::synced`]) also
///   holds a lease: once it runs out (lost notices, a dead connection) nothing is served
///   from memory until the feed has caught up, so a revoke on another node is refused
///   within `min(ttl, heartbeat + deadline)` ([`FeedConfig`](crate::FeedConfig)) at worst.
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

/// Generation stripes of the fill fence (a power of two).
const STRIPES: usize = 64;

/// Shards of each cache at most (a power of two).
const MAX_SHARDS: usize = 16;

/// A found record and when it stops being served (`None`: never, the TTL overflowed).
#[derive(Clone)]
struct Found {
    record: Arc<KeyRecord>,
    until: Option<Instant>,
}

/// Counts evictions of either cache.
#[derive(Clone)]
struct CountEvictions(Arc<AtomicU64>);

impl<K, V> Lifecycle<K, V> for CountEvictions {
    type RequestState = ();

    fn on_evict(&self, _: &mut (), _: K, _: V) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

type Found_ = Cache<KeyId, Found, UnitWeighter, RandomState, CountEvictions>;
type Missing = Cache<KeyId, Option<Instant>, UnitWeighter, RandomState, CountEvictions>;

struct State {
    config: CacheConfig,
    found: Found_,
    missing: Missing,
    /// Fill fence: `invalidate` bumps the id's stripe before removing its entry; a fill
    /// caches only if the stripe did not move while it read the store.
    generations: [AtomicU64; STRIPES],
    stripe_hasher: RandomState,
    // Each counter on its own cache line: hits (every verify) must not share one with the
    // counters a flood of misses bumps.
    hits: Padded,
    negative_hits: Padded,
    loads: Padded,
    invalidations: AtomicU64,
    evictions: Arc<AtomicU64>,
    resyncs: AtomicU64,
    lapsed: Padded,
    syncs: AtomicU64,
    /// Until when cached records may be served, in nanoseconds after `base`;
    /// [`UNLEASED`] while no feed has called [`ChangeListener::synced`] (the TTL alone
    /// bounds staleness then).
    lease: AtomicU64,
    base: Instant,
}

/// [`State::lease`] before any [`ChangeListener::synced`].
const UNLEASED: u64 = u64::MAX;
/// The longest lease [`State::lease`] holds (one below [`UNLEASED`]).
const LONGEST: u64 = 0xFFFF_FFFF_FFFF_FFFE;

/// An atomic counter alone on its cache line.
#[derive(Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

impl std::ops::Deref for Padded {
    type Target = AtomicU64;

    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

/// A bounded cache of at most `capacity` entries (never more: the capacity is split
/// evenly over the shards, rounded down).
fn bounded<V: Clone>(
    capacity: usize,
    evictions: &Arc<AtomicU64>,
) -> Cache<KeyId, V, UnitWeighter, RandomState, CountEvictions> {
    // Enough shards for concurrency, each with room for at least 32 entries. `shards` only
    // halves while it is > 1, so it never reaches 0 and the divisions never fail.
    let per = |shards: usize| capacity.checked_div(shards).unwrap_or(0);
    let mut shards = MAX_SHARDS;
    while shards > 1 && per(shards) < 32 {
        shards /= 2;
    }
    let per_shard = per(shards);
    let weight = u64::try_from(per_shard.saturating_mul(shards)).unwrap_or(u64::MAX);
    let options = OptionsBuilder::new()
        .shards(shards)
        .estimated_items_capacity(per_shard.saturating_mul(shards).max(1))
        .weight_capacity(weight)
        .build();
    let lifecycle = CountEvictions(evictions.clone());
    match options {
        Ok(options) => Cache::with_options(options, UnitWeighter, RandomState::new(), lifecycle),
        // Unreachable (both required fields are set); fall back to a single small shard.
        Err(_) => Cache::with(1, 0, UnitWeighter, RandomState::new(), lifecycle),
    }
}

/// `now + ttl`, or `None` (never) when that overflows the clock.
fn deadline(ttl: Duration) -> Option<Instant> {
    Instant::now().checked_add(ttl)
}

fn fresh(until: Option<Instant>, now: Instant) -> bool {
    until.is_none_or(|until| now < until)
}

impl<S: KeyStore> CachedStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, config: CacheConfig) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        Self {
            inner,
            state: Arc::new(State {
                config,
                found: bounded(config.capacity, &evictions),
                missing: bounded(config.negative_capacity, &evictions),
                generations: std::array::from_fn(|_| AtomicU64::new(0)),
                stripe_hasher: RandomState::new(),
                hits: Padded::default(),
                negative_hits: Padded::default(),
                loads: Padded::default(),
                invalidations: AtomicU64::new(0),
                evictions,
                resyncs: AtomicU64::new(0),
                lapsed: Padded::default(),
                syncs: AtomicU64::new(0),
                lease: AtomicU64::new(UNLEASED),
                base: Instant::now(),
            }),
        }
    }

    /// Subscribes to the inner store's change feed ([`KeyStore::subscribe`]); `Ok(false)`
    /// if it has none, in which case the TTL alone bounds cross-node staleness.
    ///
    /// # Errors
    ///
    /// The inner store's error when its feed could not be subscribed to.
    pub async fn follow_changes(&self) -> Result<bool, StoreError> {
        let listener: Arc<dyn ChangeListener> = self.state.clone();
        self.inner.subscribe(Arc::downgrade(&listener)).await
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Drops the entry for `id`; a read of `id` under way will not cache its result.
    pub fn invalidate(&self, id: KeyId) {
        self.state.changed(id);
    }

    /// Drops every entry; no read under way will cache its result.
    pub fn clear(&self) {
        self.state.clear();
    }

    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        let s = &self.state;
        CacheStats {
            hits: s.hits.load(Ordering::Relaxed),
            negative_hits: s.negative_hits.load(Ordering::Relaxed),
            loads: s.loads.load(Ordering::Relaxed),
            invalidations: s.invalidations.load(Ordering::Relaxed),
            evictions: s.evictions.load(Ordering::Relaxed),
            resyncs: s.resyncs.load(Ordering::Relaxed),
            lapsed: s.lapsed.load(Ordering::Relaxed),
            syncs: s.syncs.load(Ordering::Relaxed),
            entries: u64::try_from(s.found.len()).unwrap_or(u64::MAX),
            negative_entries: u64::try_from(s.missing.len()).unwrap_or(u64::MAX),
        }
    }
}

impl State {
    fn generation(&self, id: KeyId) -> &AtomicU64 {
        // Truncating the hash is intended: only its low bits pick the stripe.
        let stripe = (self.stripe_hasher.hash_one(id) as usize) % STRIPES;
        // `stripe < STRIPES`, so this never falls back.
        self.generations.get(stripe).unwrap_or(&self.generations[0])
    }

    fn clear(&self) {
        for generation in &self.generations {
            generation.fetch_add(1, Ordering::SeqCst);
        }
        self.found.clear();
        self.missing.clear();
    }

    /// A fresh cached answer: `Some(Some(record))` found, `Some(None)` known missing.
    fn cached(&self, id: KeyId) -> Option<Option<Arc<KeyRecord>>> {
        let now = Instant::now();
        if let Some(found) = self.found.get(&id) {
            if self.serves(&found, now) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Some(Some(found.record));
            }
            if fresh(found.until, now) {
                self.lapsed.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.cached_missing(id, now).then_some(None)
    }

    /// Whether `found` may be served at `now`: within its TTL, and within the feed's
    /// lease if a feed holds one. ("No such key" answers are not leased: a stale one
    /// only refuses a newly minted key, for at most the negative TTL.)
    fn serves(&self, found: &Found, now: Instant) -> bool {
        if !fresh(found.until, now) {
            return false;
        }
        // Acquire: the invalidations a feed passed on before renewing the lease are
        // visible to a reader that sees the renewed lease.
        let lease = self.lease.load(Ordering::Acquire);
        if lease == UNLEASED {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.base).as_nanos();
        elapsed < u128::from(lease)
    }

    fn cached_missing(&self, id: KeyId, now: Instant) -> bool {
        let missing = self.missing.get(&id).is_some_and(|until| fresh(until, now));
        if missing {
            self.hits.fetch_add(1, Ordering::Relaxed);
            self.negative_hits.fetch_add(1, Ordering::Relaxed);
        }
        missing
    }
}

impl ChangeListener for State {
    fn changed(&self, id: KeyId) {
        // Fence first, then remove: a fill that read before this either sees the new
        // generation and does not insert, or inserted already and is removed here.
        self.generation(id).fetch_add(1, Ordering::SeqCst);
        let found = self.found.remove(&id).is_some();
        let missing = self.missing.remove(&id).is_some();
        if found || missing {
            self.invalidations.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn resync(&self) {
        self.clear();
        self.resyncs.fetch_add(1, Ordering::Relaxed);
    }

    fn synced(&self, until: Instant) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        // Nanoseconds after `base`, below UNLEASED; a lease never moves backwards (an
        // older proof stays true), so a late answer cannot shorten a newer one.
        let nanos = until.saturating_duration_since(self.base).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(LONGEST).min(LONGEST);
        let _ = self
            .lease
            .fetch_update(Ordering::Release, Ordering::Relaxed, |lease| {
                if lease == UNLEASED {
                    Some(nanos)
                } else {
                    Some(lease.max(nanos))
                }
            });
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
        if let Some(answer) = state.cached(id) {
            return Ok(answer);
        }
        // Single flight: the first caller gets the guard (a placeholder in the negative
        // cache, so that unknown ids never write-lock the shards hot records live in);
        // concurrent callers wait on it. Dropping the guard without a value (a found
        // record, an error, or this future being dropped) removes the placeholder and
        // hands the guard to one waiter.
        let now = Instant::now();
        let guard = match state
            .missing
            .entry_async(&id, |_, until| {
                if fresh(*until, now) {
                    EntryAction::Retain(())
                } else {
                    EntryAction::ReplaceWithGuard
                }
            })
            .await
        {
            EntryResult::Retained(()) => {
                state.hits.fetch_add(1, Ordering::Relaxed);
                state.negative_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
            EntryResult::Vacant(guard) | EntryResult::Replaced(guard, _) => guard,
            // Not produced by `entry_async`; read through uncached.
            EntryResult::Removed(..) | EntryResult::Timeout => {
                state.loads.fetch_add(1, Ordering::Relaxed);
                return self.inner.get(id).await;
            }
        };
        // The caller before us may have found the record: that answer is in the other cache.
        if let Some(found) = state.found.get(&id) {
            if state.serves(&found, Instant::now()) {
                state.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(found.record));
            }
        }
        let generation = state.generation(id);
        let before = generation.load(Ordering::SeqCst);
        state.loads.fetch_add(1, Ordering::Relaxed);
        let value = self.inner.get(id).await?;
        if generation.load(Ordering::SeqCst) != before {
            return Ok(value); // invalidated meanwhile: serve it to this caller only
        }
        match &value {
            Some(record) => {
                let until = deadline(state.config.ttl);
                state.found.insert(
                    id,
                    Found {
                        record: record.clone(),
                        until,
                    },
                );
                drop(guard); // waiters now find the record
                if generation.load(Ordering::SeqCst) != before {
                    state
                        .found
                        .remove_if(&id, |found| Arc::ptr_eq(&found.record, record));
                }
            }
            None => {
                let _ = guard.insert(deadline(state.config.negative_ttl));
                if generation.load(Ordering::SeqCst) != before {
                    state.missing.remove(&id);
                }
            }
        }
        Ok(value)
    }

    /// A fresh cached answer (found, or known missing); `None` on a miss, which
    /// [`get`](KeyStore::get) then loads (single-flight) from the inner store.
    fn get_now(&self, id: KeyId) -> Option<Result<Option<Arc<KeyRecord>>, StoreError>> {
        self.state.cached(id).map(Ok)
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
        // the store holds. Edited in place under the shard lock, so an entry removed
        // meanwhile is not brought back.
        for (id, at) in batch {
            if self.state.found.peek(id).is_none() {
                continue;
            }
            let _ = self
                .state
                .found
                .entry(id, Some(Duration::ZERO), |_, found| {
                    if found.record.last_used_at.is_none_or(|prev| prev < *at) {
                        Arc::make_mut(&mut found.record).last_used_at = Some(*at);
                    }
                    EntryAction::Retain(())
                });
        }
        Ok(())
    }

    async fn subscribe(&self, listener: Weak<dyn ChangeListener>) -> Result<bool, StoreError> {
        self.inner.subscribe(listener).await
    }

    /// Not cached: a gate asks once per pepper version.
    async fn remember_pepper(
        &self,
        version: u32,
        fingerprint: PepperFingerprint,
    ) -> Result<Option<PepperFingerprint>, StoreError> {
        self.inner.remember_pepper(version, fingerprint).await
    }
}

impl<S: fmt::Debug> fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStore")
            .field("inner", &self.inner)
            .field("config", &self.state.config)
            .field("entries", &self.state.found.len())
            .field("negative_entries", &self.state.missing.len())
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
        /// Returned by the next held read instead of the store's copy (a read that
        /// raced a write).
        stale: std::sync::Mutex<Option<Option<Arc<KeyRecord>>>>,
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
                if let Some(stale) = self.stale.lock().unwrap().take() {
                    return Ok(stale);
                }
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
        async fn remember_pepper(
            &self,
            v: u32,
            f: PepperFingerprint,
        ) -> Result<Option<PepperFingerprint>, StoreError> {
            self.inner.remember_pepper(v, f).await
        }
    }

    fn record() -> KeyRecord {
        crate::testing_support::record(KeyFormat::Jwt)
    }

    /// The lease: once a feed has called `synced`, entries are served only until the
    /// instant it named, whatever the TTL; a renewal restores hits.
    #[tokio::test(start_paused = true)]
    async fn a_leased_cache_serves_nothing_past_its_lease() {
        let cache = CachedStore::new(Slow::default(), CacheConfig::new().ttl(Duration::MAX));
        let r = record();
        cache.inner().inner.insert(r.clone()).await.unwrap();
        let lease = Duration::from_millis(500);
        cache.state.synced(Instant::now() + lease);
        cache.get(r.id).await.unwrap();
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(cache.get_now(r.id).is_some(), "within the lease: a hit");
        assert_eq!(cache.inner().gets.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(cache.get_now(r.id).is_none(), "at the lease's end: no hit");
        cache.get(r.id).await.unwrap();
        cache.get(r.id).await.unwrap();
        assert_eq!(cache.inner().gets.load(Ordering::SeqCst), 3, "read through");
        assert!(cache.stats().lapsed >= 3, "{:?}", cache.stats());
        // A late answer naming an earlier instant does not shorten a newer lease.
        cache.state.synced(Instant::now() + lease);
        cache.state.synced(Instant::now());
        assert!(cache.get_now(r.id).is_some(), "renewed: a hit again");
        assert_eq!(cache.stats().syncs, 3);
        // A revoke passed on before the renewal is seen by every reader of the renewal.
        cache
            .inner()
            .inner
            .update(r.id, &KeyPatch::new().active(false))
            .await
            .unwrap();
        cache.state.changed(r.id);
        cache.state.synced(Instant::now() + lease);
        assert!(!cache.get(r.id).await.unwrap().unwrap().active);
    }

    /// Without a feed that leases (never `synced`), the TTL alone decides, as before.
    #[tokio::test(start_paused = true)]
    async fn an_unleased_cache_serves_until_the_ttl() {
        let cache = CachedStore::new(
            Slow::default(),
            CacheConfig::new().ttl(Duration::from_secs(5)),
        );
        let r = record();
        cache.inner().inner.insert(r.clone()).await.unwrap();
        cache.get(r.id).await.unwrap();
        tokio::time::advance(Duration::from_millis(4999)).await;
        assert!(cache.get_now(r.id).is_some());
        assert_eq!(cache.stats().lapsed, 0);
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

    /// Whether a single-flight placeholder for `id` is still alive (someone is loading).
    fn loading<S: KeyStore>(cache: &CachedStore<S>, id: KeyId) -> bool {
        matches!(
            cache
                .state
                .missing
                .entry(&id, Some(Duration::ZERO), |_, _| EntryAction::Retain(())),
            EntryResult::Timeout
        )
    }

    #[tokio::test(start_paused = true)]
    async fn extreme_configurations_saturate_instead_of_panicking() {
        for config in [
            CacheConfig::new()
                .ttl(Duration::MAX)
                .negative_ttl(Duration::MAX),
            CacheConfig::new()
                .capacity(usize::MAX)
                .negative_capacity(usize::MAX),
            CacheConfig::new().capacity(0).negative_capacity(0),
            CacheConfig::new().capacity(1).negative_capacity(1),
            CacheConfig::new()
                .ttl(Duration::ZERO)
                .negative_ttl(Duration::ZERO),
        ] {
            let cache = CachedStore::new(Slow::default(), config);
            let r = record();
            cache.insert(r.clone()).await.unwrap();
            let unknown = KeyId::random();
            for _ in 0..3 {
                assert_eq!(cache.get(r.id).await.unwrap().map(|r| r.id), Some(r.id));
                assert!(cache.get(unknown).await.unwrap().is_none());
            }
            tokio::time::advance(Duration::from_secs(365 * 24 * 3600)).await;
            assert!(cache.get(r.id).await.unwrap().is_some());
            let stats = cache.stats();
            assert!(stats.entries <= config.capacity as u64);
            assert!(stats.negative_entries <= config.negative_capacity as u64);
        }
        // A TTL that overflows the clock means "until invalidated".
        let cache = CachedStore::new(Slow::default(), CacheConfig::new().ttl(Duration::MAX));
        let r = record();
        cache.inner().inner.insert(r.clone()).await.unwrap();
        cache.get(r.id).await.unwrap();
        tokio::time::advance(Duration::from_secs(10 * 365 * 24 * 3600)).await;
        cache.get(r.id).await.unwrap();
        assert_eq!(cache.inner().gets.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cache_evicts_and_keeps_caching() {
        let cache = CachedStore::new(Slow::default(), CacheConfig::new().capacity(1024));
        let mut last = None;
        for _ in 0..5000 {
            let r = record();
            cache.inner().inner.insert(r.clone()).await.unwrap();
            cache.get(r.id).await.unwrap();
            last = Some(r.id);
        }
        let stats = cache.stats();
        assert!(stats.entries <= 1024, "{stats:?}");
        assert!(stats.evictions >= 5000 - 1024, "{stats:?}");
        // Still caching when full: the newest record is served from memory.
        let reads = cache.inner().gets.load(Ordering::SeqCst);
        cache.get(last.unwrap()).await.unwrap();
        assert_eq!(cache.inner().gets.load(Ordering::SeqCst), reads);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_unknown_ids_cannot_push_out_hot_records() {
        let cache = CachedStore::new(
            Slow::default(),
            CacheConfig::new().capacity(256).negative_capacity(128),
        );
        let hot: Vec<KeyRecord> = (0..100).map(|_| record()).collect();
        for r in &hot {
            cache.inner().inner.insert(r.clone()).await.unwrap();
            cache.get(r.id).await.unwrap();
        }
        for _ in 0..10_000 {
            assert!(cache.get(KeyId::random()).await.unwrap().is_none());
        }
        let reads = cache.inner().gets.load(Ordering::SeqCst);
        for r in &hot {
            assert!(cache.get(r.id).await.unwrap().is_some());
        }
        assert_eq!(
            cache.inner().gets.load(Ordering::SeqCst),
            reads,
            "hot records reloaded"
        );
        // The negative cache keeps working, within its own bound.
        let unknown = KeyId::random();
        cache.get(unknown).await.unwrap();
        cache.get(unknown).await.unwrap();
        assert_eq!(cache.inner().gets.load(Ordering::SeqCst), reads + 1);
        let stats = cache.stats();
        assert!(stats.negative_entries <= 128, "{stats:?}");
        assert!(stats.negative_hits >= 1, "{stats:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hundred_thousand_cancelled_loads_leave_nothing_behind() {
        let cache = Arc::new(CachedStore::new(Slow::default(), CacheConfig::new()));
        cache.inner().hold.store(true, Ordering::SeqCst);
        let ids: Vec<KeyId> = (0..100_000).map(|_| KeyId::random()).collect();
        for id in &ids {
            // Polled once (it parks in the inner read), then dropped: a store timeout.
            let cancelled = tokio::time::timeout(Duration::ZERO, cache.get(*id)).await;
            assert!(cancelled.is_err());
        }
        assert_eq!(cache.inner().gets.load(Ordering::SeqCst), 100_000);
        assert!(
            ids.iter().all(|id| !loading(&cache, *id)),
            "placeholder left"
        );
        assert_eq!(cache.stats().entries, 0);
        assert_eq!(cache.stats().negative_entries, 0);
        cache.inner().hold.store(false, Ordering::SeqCst);

        // Still serves hits.
        let r = record();
        cache.inner().inner.insert(r.clone()).await.unwrap();
        let reads = cache.inner().gets.load(Ordering::SeqCst);
        for _ in 0..10 {
            assert!(cache.get(r.id).await.unwrap().is_some());
        }
        assert_eq!(cache.inner().gets.load(Ordering::SeqCst), reads + 1);
        // A cancelled id loads afresh and is then cached as unknown.
        cache.get(ids[0]).await.unwrap();
        cache.get(ids[0]).await.unwrap();
        assert_eq!(cache.inner().gets.load(Ordering::SeqCst), reads + 2);

        // Single flight still collapses concurrent misses into one read.
        let r2 = record();
        cache.inner().inner.insert(r2.clone()).await.unwrap();
        cache.inner().hold.store(true, Ordering::SeqCst);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get(r2.id).await.unwrap().map(|r| r.id) })
            })
            .collect();
        while cache.inner().gets.load(Ordering::SeqCst) == reads + 2 {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        cache.inner().hold.store(false, Ordering::SeqCst);
        cache.inner().gate.notify_waiters();
        for task in tasks {
            assert_eq!(task.await.unwrap(), Some(r2.id));
        }
        assert_eq!(cache.inner().gets.load(Ordering::SeqCst), reads + 3);
        assert!(!loading(&cache, r2.id));
    }

    #[tokio::test]
    async fn a_waiter_takes_over_a_cancelled_load() {
        let cache = Arc::new(CachedStore::new(Slow::default(), CacheConfig::new()));
        let r = record();
        cache.inner().inner.insert(r.clone()).await.unwrap();
        cache.inner().hold.store(true, Ordering::SeqCst);
        let first = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get(r.id).await })
        };
        while cache.inner().gets.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get(r.id).await.unwrap().map(|r| r.id) })
        };
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            cache.inner().gets.load(Ordering::SeqCst),
            1,
            "the waiter waits"
        );
        cache.inner().hold.store(false, Ordering::SeqCst);
        first.abort(); // the client went away mid-load
        assert!(first.await.unwrap_err().is_cancelled());
        assert_eq!(waiter.await.unwrap(), Some(r.id));
        assert_eq!(cache.inner().gets.load(Ordering::SeqCst), 2);
        assert!(!loading(&cache, r.id));
    }

    /// The fence: a fill that read the record before a revoke must not cache it after the
    /// revoke, whichever of "insert" and "invalidate" runs first.
    #[tokio::test(start_paused = true)]
    async fn a_fill_started_before_a_revoke_never_caches_the_stale_record() {
        let cache = Arc::new(CachedStore::new(Slow::default(), CacheConfig::new()));
        let r = record();
        cache.inner().inner.insert(r.clone()).await.unwrap();
        // Read the record (still active), then hold the read before it returns.
        cache.inner().hold.store(true, Ordering::SeqCst);
        let loader = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get(r.id).await.unwrap() })
        };
        while cache.inner().gets.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Slow::get reads after the gate opens, so revoke in the inner store first and
        // arrange for the held read to return the stale copy.
        let stale = cache.inner().inner.get(r.id).await.unwrap().unwrap();
        *cache.inner().stale.lock().unwrap() = Some(Some(stale));
        cache
            .update(r.id, &KeyPatch::new().active(false))
            .await
            .unwrap();
        cache.inner().hold.store(false, Ordering::SeqCst);
        cache.inner().gate.notify_waiters();
        assert!(
            loader.await.unwrap().unwrap().active,
            "the racing read saw the old copy"
        );
        // ...but it was not cached: every later read sees the revoke.
        for _ in 0..3 {
            assert!(!cache.get(r.id).await.unwrap().unwrap().active);
        }
        assert!(cache.stats().entries <= 1);
    }

    /// The fence on the negative side: a read that found nothing before a mint must not
    /// leave a "no such key" behind that refuses the new key.
    #[tokio::test(start_paused = true)]
    async fn a_miss_read_before_an_insert_is_not_cached_after_it() {
        let cache = Arc::new(CachedStore::new(Slow::default(), CacheConfig::new()));
        let r = record();
        cache.inner().hold.store(true, Ordering::SeqCst);
        *cache.inner().stale.lock().unwrap() = Some(None); // what the racing read saw
        let loader = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get(r.id).await.unwrap() })
        };
        while cache.inner().gets.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        cache.insert(r.clone()).await.unwrap();
        cache.inner().hold.store(false, Ordering::SeqCst);
        cache.inner().gate.notify_waiters();
        assert!(loader.await.unwrap().is_none());
        assert_eq!(cache.stats().negative_entries, 0);
        assert!(cache.get(r.id).await.unwrap().is_some());
    }

    /// `clear` fences every id: a fill under way when the cache is cleared is not cached.
    #[tokio::test(start_paused = true)]
    async fn a_miss_read_before_a_clear_is_not_cached_after_it() {
        let cache = Arc::new(CachedStore::new(Slow::default(), CacheConfig::new()));
        let r = record();
        cache.inner().inner.insert(r.clone()).await.unwrap();
        cache.inner().hold.store(true, Ordering::SeqCst);
        *cache.inner().stale.lock().unwrap() = Some(None);
        let loader = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get(r.id).await.unwrap() })
        };
        while cache.inner().gets.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        cache.state.resync();
        cache.inner().hold.store(false, Ordering::SeqCst);
        cache.inner().gate.notify_waiters();
        assert!(loader.await.unwrap().is_none());
        assert!(cache.get(r.id).await.unwrap().is_some());
    }
}
