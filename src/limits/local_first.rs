//! [`LocalFirst`]: rate limits decided from memory, converging on a shared store limiter
//! in the background.
//!
//! The design, the overshoot bound and failure handling are documented on [`LocalFirst`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::gcra;
use super::{
    Charge, CreditPolicy, FailureMode, LimitCheck, LimitOutcome, Limiter, LimiterError,
    OwnedSubject, RateLimit, Subject, MAX_RATELIMIT_LIMIT,
};
use crate::key::{IdMap, KeyId};

/// Shards of the local state: one mutex each.
const SHARDS: usize = 64;
/// `TAT` of a limit with no state.
const NO_TAT: i64 = i64::MIN;

/// How a [`LocalFirst`] limiter syncs. Every default is documented on its setter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalFirstConfig {
    /// How often usage is sent to the store and its state read back (`S` in the bound).
    pub sync_interval: Duration,
    /// How long one store call of a sync may take before it counts as failed.
    pub store_timeout: Duration,
    /// How long syncs may keep failing before [`on_store_failure`](Self::on_store_failure)
    /// applies.
    pub max_staleness: Duration,
    /// What checks get once syncs have failed for [`max_staleness`](Self::max_staleness).
    pub on_store_failure: FailureMode,
    /// Store calls of one sync under way at once.
    pub max_in_flight: usize,
}

impl Default for LocalFirstConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalFirstConfig {
    /// The defaults: sync every 100 ms, 1 s per store call, fail closed after 5 s of failed
    /// syncs, 32 calls in flight.
    pub fn new() -> Self {
        Self {
            sync_interval: Duration::from_millis(100),
            store_timeout: Duration::from_secs(1),
            max_staleness: Duration::from_secs(5),
            on_store_failure: FailureMode::Closed,
            max_in_flight: 32,
        }
    }

    /// How often usage is sent and state read back (default 100 ms; at least 1 ms). The
    /// overshoot bound grows with it (see [`LocalFirst`]).
    #[must_use]
    pub fn sync_interval(mut self, interval: Duration) -> Self {
        self.sync_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long one store call may take (default 1 s).
    #[must_use]
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout;
        self
    }

    /// How long syncs may fail before [`on_store_failure`](Self::on_store_failure) applies
    /// (default 5 s).
    #[must_use]
    pub fn max_staleness(mut self, staleness: Duration) -> Self {
        self.max_staleness = staleness;
        self
    }

    /// What checks get when the store has been failing for
    /// [`max_staleness`](Self::max_staleness) (default [`FailureMode::Closed`]: an error, which
    /// the gate answers per its own failure mode). [`FailureMode::Open`] keeps deciding
    /// locally.
    #[must_use]
    pub fn on_store_failure(mut self, mode: FailureMode) -> Self {
        self.on_store_failure = mode;
        self
    }

    /// Store calls of one sync under way at once (default 32; at least 1).
    #[must_use]
    pub fn max_in_flight(mut self, calls: usize) -> Self {
        self.max_in_flight = calls.max(1);
        self
    }

    /// The documented bound on what `nodes` local-first nodes with this configuration,
    /// whose store calls take at most `latency`, admit of `limit` beyond what one exact
    /// limiter would, over any window: `(N − 1)·(B + ⌈2·(S + λ)/T⌉)` units (see the
    /// [`LocalFirst`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use keygate::limits::{LocalFirstConfig, RateLimit};
    ///
    /// let config = LocalFirstConfig::new().sync_interval(Duration::from_secs(1));
    /// let limit = RateLimit::new("requests", 100, 60_000); // T = 600 ms, B = 100
    /// // 3 · (100 + ⌈2 s / 600 ms⌉) = 3 · 104
    /// assert_eq!(config.overshoot_bound(&limit, 4, Duration::ZERO), 312);
    /// ```
    pub fn overshoot_bound(&self, limit: &RateLimit, nodes: usize, latency: Duration) -> u64 {
        let others = u64::try_from(nodes.saturating_sub(1)).unwrap_or(u64::MAX);
        let span = self.sync_interval.saturating_add(latency).saturating_mul(2);
        let span_ns = u64::try_from(span.as_nanos()).unwrap_or(u64::MAX);
        let t = u64::try_from(gcra::emission_interval_ns(limit).max(1)).unwrap_or(u64::MAX);
        let per_node = limit.burst().saturating_add(span_ns.div_ceil(t));
        others.saturating_mul(per_node)
    }
}

/// [`LocalFirst::start`] was called outside a Tokio runtime.
#[derive(Debug, thiserror::Error)]
#[error("LocalFirst::start needs a Tokio runtime (call it from async code)")]
#[non_exhaustive]
pub struct NoRuntime;

/// The local-first store has been failing for longer than
/// [`LocalFirstConfig::max_staleness`].
#[derive(Debug, thiserror::Error)]
#[error("the local-first limiter's store has failed for longer than its max staleness")]
struct StoreStale;

/// What one [`LocalFirst::sync`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncReport {
    /// Subjects synced (usage sent, or state read back).
    pub subjects: usize,
    /// Store calls made.
    pub calls: usize,
    /// Store calls that failed or timed out (their usage is kept for the next sync).
    pub failed: usize,
    /// Units of usage sent and recorded.
    pub units: u64,
}

/// Rate limits decided in process and synced to a shared store limiter in the
/// background; credits exact in the store.
///
/// Cheap to clone (one `Arc`): give one clone to the gate's
/// [`limiter`](crate::KeygateBuilder::limiter), keep one to [`shutdown`](Self::shutdown).
///
/// # What it does
///
/// `LocalFirst<L>` wraps an authoritative [`Limiter`] `L` (a store limiter: Redis,
/// PostgreSQL, SQLite, or any other) and is itself a [`Limiter`]:
///
/// - **Decisions from memory.** A check of rate limits runs [`gcra`] over this node's own
///   copy of the subject's state, under a shard lock, and answers at once
///   ([`Limiter::check_now`]): no store call on the request path, whatever the store's
///   latency or health.
/// - **Usage synced in the background.** What this node admitted is added up per
///   (subject, limit) and sent to `L` every [`sync_interval`](LocalFirstConfig::sync_interval)
///   `S`: one store call per subject per interval (per distinct batch instant when a
///   subject's limits stand at different instants), whatever the number of requests.
/// - **Convergence.** Each sync *adopts* the store's answer: the subject's state in the
///   store (every node's synced usage) plus what this node admitted while the call was
///   under way becomes the local state, if it is further along than the local one. A
///   subject this node still holds state for (not yet full again) is read back each
///   interval even when it saw no request, so N nodes converge on one state.
/// - **Credits stay exact.** A check that spends credits decides its rate limits locally,
///   then spends the credits in `L` with one call, on the request path (so a credit key's
///   verify costs one store round trip, as without `LocalFirst`); if the credits are
///   refused or the call fails, the local rate-limit charge is given back. Credits are a
///   count that must never go below zero and are often money: no overshoot is offered for
///   them. Rate limits are where local-first pays.
///
/// # How usage is recorded
///
/// A batch of `k` units of a limit with emission interval `T` is sent as one charge of
/// `k` against a copy of the limit whose burst is raised to [`MAX_RATELIMIT_LIMIT`]
/// (the same name, so the same stored `TAT`, and the same `T`): the store then always
/// *records* it (`TAT := max(TAT, x) + k·T`) instead of refusing what was already
/// admitted, and a store `TAT` beyond `now + B·T` is debt every node then sees and waits
/// out. The batch is dated `x = L − k·T` (this node's local `TAT` `L` less the batch,
/// clamped to the latest instant this node has seen): the instant the batch's own
/// admissions started from. For one node alone this reproduces its local state exactly;
/// dating batches at the sync instant instead would over-record idle time and refuse
/// steady traffic at the allowed rate.
///
/// The store's new `TAT` is read back from the charge's `reset_after_us` (whole
/// microseconds, rounded up by the store; taken 999 ns earlier here, so rounding never
/// makes a node stricter than the store).
///
/// # The overshoot bound
///
/// Settings: `N` nodes sharing one store limiter, each syncing every `S`, a store call
/// taking at most `λ`; a limit of rate `r = 1/T` with burst `B`. Let `D = 2·(S + λ)`.
/// Over any window of length `W`, all nodes together admit at most
///
/// ```text
/// B + ⌈W/T⌉ + (N − 1) · (B + ⌈D/T⌉)          units,
/// ```
///
/// that is, at most `(N − 1)·(B + ⌈2·r·(S + λ)⌉)` more than one exact limiter
/// ([`overshoot_bound`](LocalFirstConfig::overshoot_bound) computes it). Why:
///
/// 1. A node never admits more than a private exact limiter fed only its own admissions
///    would (adopting only ever moves its `TAT` later), so in any span of length `D` one
///    node admits at most `B + ⌈D/T⌉`.
/// 2. The store's `TAT` after recording a batch is at least the window's start plus `T`
///    for every in-window unit recorded so far (each record adds `k·T` after a `max`,
///    and a batch is dated no earlier than its first in-window admission less the
///    pre-window part of the batch).
/// 3. Take the last admission in the window, by node `i` at `t`. Its local `TAT`
///    contains the store's `TAT` as of its last adopted sync (begun at `s ≥ t − S − λ`)
///    and everything it admitted since, and GCRA admitted at `t`: so those units number at
///    most `B + ⌈W/T⌉`. What it did not know is what the other nodes admitted after their
///    last batch the store had recorded by then: for each, a span of at most
///    `(t − s) + S + λ ≤ D`, so at most `B + ⌈D/T⌉` units by (1).
///
/// Assumptions: the nodes' clocks agree (as for any store limiter, see the Redis limiter's
/// notes), every sync succeeds within `λ`, and a node's state for a subject it has not
/// seen for a whole interval is either still synced (it is not yet full) or dropped (it
/// is full, and so is the store's as last read). The bound is not an average: under
/// sustained saturation from every node the measured excess is about
/// `(N − 1)·(B + r·S)` (the cold start) and the debt is then paid back, so over long
/// windows the admitted rate tends to `r` (`benches/local_first.rs` measures it; see
/// `benches/README.md`). Conversely, traffic that conforms to the limit in total is never
/// refused: batches are dated so that no node's state runs ahead of the exact one.
///
/// # When the store fails
///
/// A failed or timed-out sync keeps its batch (added back, sent with the next one):
/// nothing admitted is forgotten. A call that timed out may still have been recorded by
/// the store (the request was sent; only its answer was late): its batch is then counted
/// twice, which errs strict, never loose. While the store is down each node limits on its own,
/// so the fleet admits up to `N` times the limit (never unlimited). What happens after
/// [`max_staleness`](LocalFirstConfig::max_staleness) of failing syncs is
/// [`on_store_failure`](LocalFirstConfig::on_store_failure):
///
/// - [`FailureMode::Closed`] (the default): checks fail with
///   [`LimiterError::Backend`], and the gate answers them per its own
///   [`FailureMode`] (by default 503), until a sync succeeds again;
/// - [`FailureMode::Open`]: checks keep being decided locally (each node on its own), with
///   a warning when it starts and when it ends.
///
/// Credit checks always need the store and fail (per the gate's failure mode) when it is
/// down.
///
/// # Lifecycle
///
/// [`LocalFirst::start`] spawns the sync task on the current Tokio runtime;
/// [`LocalFirst::new`] does not (call [`sync`](LocalFirst::sync) yourself: for tests and
/// simulations). Call [`shutdown`](LocalFirst::shutdown) when the server stops: it stops
/// the task and sends what is still pending. A `LocalFirst` dropped without it loses up to
/// one interval of usage (the store never hears of it).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use keygate::limits::{LocalFirst, LocalFirstConfig, MemoryLimiter};
/// use keygate::{Keygate, MemoryStore, Pepper};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // The authoritative limiter: a RedisStore or PostgresStore shared by every node.
/// let shared = Arc::new(MemoryLimiter::new());
/// let limiter = LocalFirst::start(
///     Arc::clone(&shared),
///     LocalFirstConfig::new().sync_interval(Duration::from_millis(200)),
/// )?;
/// let gate = Keygate::builder(MemoryStore::new(), Pepper::new(1, [7u8; 32])?)
///     .limiter(limiter.clone())
///     .build()?;
/// // ... serve ...
/// limiter.shutdown().await?; // sends the last interval's usage
/// # let _ = gate; Ok(()) }
/// ```
pub struct LocalFirst<L: Limiter> {
    shared: Arc<Shared<L>>,
}

impl<L: Limiter> Clone for LocalFirst<L> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

struct Shared<L> {
    inner: L,
    config: LocalFirstConfig,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Checks fail (closed mode) because syncs have failed for too long.
    degraded: AtomicBool,
    /// When syncs started failing (tokio time), if they are failing.
    failing_since: Mutex<Option<tokio::time::Instant>>,
    /// One sync at a time (the task, `sync`, `shutdown`).
    sync_lock: tokio::sync::Mutex<()>,
    stopped: AtomicBool,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    calls: AtomicU64,
}

#[derive(Default)]
struct Shard {
    keys: IdMap<Entry>,
    owners: HashMap<String, Entry>,
    /// The latest `now` (µs) a check of this shard carried.
    latest_now: Option<i64>,
}

/// One subject's local state.
#[derive(Default)]
struct Entry {
    slots: Vec<Slot>,
    /// Checked since the last sync.
    touched: bool,
}

/// One limit of a subject: its local `TAT` and the units admitted but not yet sent.
struct Slot {
    limit: RateLimit,
    tat: i64,
    pending: u64,
}

impl Entry {
    fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.limit.name == name)
    }

    fn slot_mut(&mut self, limit: &RateLimit) -> &mut Slot {
        let index = self.slots.iter().position(|s| s.limit.name == limit.name);
        let index = match index {
            Some(index) => index,
            None => {
                self.slots.push(Slot {
                    limit: limit.clone(),
                    tat: NO_TAT,
                    pending: 0,
                });
                self.slots.len().saturating_sub(1)
            }
        };
        let slot = match self.slots.get_mut(index) {
            Some(slot) => slot,
            None => never("slot index out of range"),
        };
        if slot.limit != *limit {
            // The policy changed (an update): sync and decide under the new one.
            slot.limit = limit.clone();
        }
        slot
    }

    fn tat(&self, name: &str) -> Option<i64> {
        self.slot(name).map(|s| s.tat).filter(|t| *t != NO_TAT)
    }

    /// Nothing to send, and every limit full at `now` (µs).
    fn is_idle(&self, now: i64) -> bool {
        self.slots
            .iter()
            .all(|s| s.pending == 0 && (s.tat == NO_TAT || gcra::is_idle(s.tat, now)))
    }
}

/// A state the types allow and the code cannot reach: an index just found or pushed, a
/// map entry just inserted, a shard list built non-empty.
#[allow(clippy::panic)] // unreachable: every caller names why its case cannot happen
fn never(what: &str) -> ! {
    panic!("LocalFirst: {what}")
}

impl Shard {
    fn entry(&self, subject: Subject<'_>) -> Option<&Entry> {
        match subject {
            Subject::Key(id) => self.keys.get(&id),
            Subject::Owner(owner) => self.owners.get(owner),
        }
    }

    fn entry_mut(&mut self, subject: Subject<'_>) -> Option<&mut Entry> {
        match subject {
            Subject::Key(id) => self.keys.get_mut(&id),
            Subject::Owner(owner) => self.owners.get_mut(owner),
        }
    }

    fn entry_or_default(&mut self, subject: Subject<'_>) -> &mut Entry {
        match subject {
            Subject::Key(id) => self.keys.entry(id).or_default(),
            Subject::Owner(owner) => {
                if !self.owners.contains_key(owner) {
                    self.owners.insert(owner.to_owned(), Entry::default());
                }
                match self.owners.get_mut(owner) {
                    Some(entry) => entry,
                    None => never("owner entry just inserted"),
                }
            }
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

/// One subject's batch, taken out of the local state for a sync.
struct Job {
    subject: OwnedSubject,
    /// Per limit: the limit, the units to send, the local `TAT` when taken.
    slots: Vec<(RateLimit, u64, i64)>,
}

impl<L: Limiter> LocalFirst<L> {
    /// A local-first limiter over `inner` **without** a sync task: call
    /// [`sync`](Self::sync) to send usage and read state back (tests, simulations, or an
    /// application that drives syncs itself). Use [`start`](Self::start) otherwise.
    pub fn new(inner: L, config: LocalFirstConfig) -> Self {
        // The fields are public: apply the setters' floors here too. A zero interval
        // panics in `tokio::time::interval`; zero calls in flight would take every batch
        // out of the local state and send none of it.
        let mut config = config;
        config.sync_interval = config.sync_interval.max(Duration::from_millis(1));
        config.max_in_flight = config.max_in_flight.max(1);
        Self {
            shared: Arc::new(Shared {
                inner,
                config,
                shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
                hasher: RandomState::new(),
                degraded: AtomicBool::new(false),
                failing_since: Mutex::new(None),
                sync_lock: tokio::sync::Mutex::new(()),
                stopped: AtomicBool::new(false),
                task: Mutex::new(None),
                calls: AtomicU64::new(0),
            }),
        }
    }

    /// A local-first limiter over `inner` whose sync task runs every
    /// [`sync_interval`](LocalFirstConfig::sync_interval) on the current Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`NoRuntime`] outside a Tokio runtime.
    pub fn start(inner: L, config: LocalFirstConfig) -> Result<Self, NoRuntime> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| NoRuntime)?;
        let this = Self::new(inner, config);
        let weak = Arc::downgrade(&this.shared);
        let period = this.shared.config.sync_interval;
        let task = handle.spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await; // the first tick is immediate
            loop {
                ticker.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                if shared.stopped.load(Ordering::Acquire) {
                    return;
                }
                let _ = Shared::sync(&shared).await;
            }
        });
        *lock(&this.shared.task) = Some(task);
        Ok(this)
    }

    /// The authoritative limiter.
    pub fn inner(&self) -> &L {
        &self.shared.inner
    }

    /// The configuration.
    pub fn config(&self) -> &LocalFirstConfig {
        &self.shared.config
    }

    /// Store calls made by syncs so far.
    pub fn store_calls(&self) -> u64 {
        self.shared.calls.load(Ordering::Relaxed)
    }

    /// Sends the usage admitted since the last sync and adopts the store's state, now
    /// (the sync task does this every interval).
    ///
    /// # Errors
    ///
    /// The first [`LimiterError`] of a store call that failed; its usage is kept and sent
    /// with the next sync. The others are done anyway.
    pub async fn sync(&self) -> Result<SyncReport, LimiterError> {
        Shared::sync(&self.shared).await
    }

    /// Stops the sync task and sends what is still pending. Checks are still decided
    /// locally afterwards, but nothing more is synced.
    ///
    /// # Errors
    ///
    /// As [`sync`](Self::sync): the last usage could not all be sent.
    pub async fn shutdown(&self) -> Result<SyncReport, LimiterError> {
        self.shared.stopped.store(true, Ordering::Release);
        let _guard = self.shared.sync_lock.lock().await;
        // Not mid-sync (the lock is ours): aborting the task loses nothing.
        if let Some(task) = lock(&self.shared.task).take() {
            task.abort();
        }
        Shared::sync_locked(&self.shared).await
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl<L: Limiter> Shared<L> {
    fn shard(&self, subject: Subject<'_>) -> MutexGuard<'_, Shard> {
        let hash = match subject {
            Subject::Key(id) => id.as_uuid().as_u64_pair().1,
            Subject::Owner(owner) => self.hasher.hash_one(owner),
        };
        let index = usize::try_from(hash.checked_rem(SHARDS as u64).unwrap_or(0)).unwrap_or(0);
        let shard = self
            .shards
            .get(index)
            .or_else(|| self.shards.first())
            .unwrap_or_else(|| never("no shards"));
        lock(shard)
    }

    /// Closed mode after too long without a successful sync.
    fn stale(&self) -> Option<LimiterError> {
        self.degraded
            .load(Ordering::Relaxed)
            .then(|| LimiterError::backend(StoreStale))
    }

    /// The local decision on `check`'s rate limits, charged (and queued for the store)
    /// if every limit allows it. Credits are not looked at.
    fn decide(&self, check: &LimitCheck<'_>) -> LimitOutcome {
        let now = check.now;
        let mut shard = self.shard(check.subject);
        shard.latest_now = Some(shard.latest_now.map_or(now, |latest| latest.max(now)));
        if check.limits.is_empty() {
            return LimitOutcome::new(true, Vec::new(), None);
        }
        let entry = shard.entry(check.subject);
        let mut statuses = Vec::with_capacity(check.limits.len());
        let mut tats = [None; super::MAX_RATELIMITS];
        let mut allowed = true;
        for (i, charge) in check.limits.iter().enumerate() {
            let tat = entry.and_then(|e| e.tat(&charge.limit.name));
            let (status, new_tat) = gcra::decide(tat, now, charge.limit, charge.cost);
            if let Some(slot) = tats.get_mut(i) {
                *slot = new_tat;
            }
            allowed &= status.allowed;
            statuses.push(status);
        }
        if !allowed {
            for (charge, status) in check.limits.iter().zip(statuses.iter_mut()) {
                if status.allowed {
                    let tat = entry.and_then(|e| e.tat(&charge.limit.name));
                    let (unchanged, _) = gcra::decide(tat, now, charge.limit, 0);
                    status.remaining = unchanged.remaining;
                    status.reset_after_us = unchanged.reset_after_us;
                }
            }
            // Synced next time, so a refused subject learns when it has room again.
            if let Some(entry) = shard.entry_mut(check.subject) {
                entry.touched = true;
            }
            return LimitOutcome::new(false, statuses, None);
        }
        let entry = shard.entry_or_default(check.subject);
        entry.touched = true;
        for (i, charge) in check.limits.iter().enumerate() {
            let slot = entry.slot_mut(charge.limit);
            let new_tat = match tats.get(i) {
                Some(tat) => *tat,
                None => {
                    let tat = (slot.tat != NO_TAT).then_some(slot.tat);
                    gcra::decide(tat, now, charge.limit, charge.cost).1
                }
            };
            if let Some(tat) = new_tat {
                slot.tat = tat;
            }
            slot.pending = slot.pending.saturating_add(charge.cost);
        }
        LimitOutcome::new(true, statuses, None)
    }

    /// Gives back `check`'s local charge (best effort: units already sent stay sent).
    fn give_back(&self, check: &LimitCheck<'_>) {
        let mut shard = self.shard(check.subject);
        let Some(entry) = shard.entry_mut(check.subject) else {
            return;
        };
        for charge in check.limits {
            if let Some(slot) = entry
                .slots
                .iter_mut()
                .find(|s| s.limit.name == charge.limit.name)
            {
                if slot.tat != NO_TAT {
                    slot.tat = gcra::refund(slot.tat, check.now, charge.limit, charge.cost);
                }
                slot.pending = slot.pending.saturating_sub(charge.cost);
            }
        }
    }

    /// One sync, one at a time.
    async fn sync(this: &Arc<Self>) -> Result<SyncReport, LimiterError> {
        let _guard = this.sync_lock.lock().await;
        Self::sync_locked(this).await
    }

    /// One sync; the caller holds `sync_lock`.
    async fn sync_locked(this: &Arc<Self>) -> Result<SyncReport, LimiterError> {
        let (jobs, latest) = this.take_jobs();
        let mut report = SyncReport {
            subjects: jobs.len(),
            ..SyncReport::default()
        };
        let mut first_error = None;
        let mut tasks = tokio::task::JoinSet::new();
        let mut jobs = jobs.into_iter();
        loop {
            while tasks.len() < this.config.max_in_flight {
                let Some(job) = jobs.next() else { break };
                let shared = Arc::clone(this);
                tasks.spawn(async move { shared.send(job, latest).await });
            }
            let Some(done) = tasks.join_next().await else {
                break;
            };
            match done {
                Ok((calls, units, error)) => {
                    report.calls = report.calls.saturating_add(calls);
                    report.units = report.units.saturating_add(units);
                    if let Some(error) = error {
                        report.failed = report.failed.saturating_add(1);
                        first_error.get_or_insert(error);
                    }
                }
                Err(join) => {
                    // A panicking store call: its batch is lost; count it as a failure.
                    report.failed = report.failed.saturating_add(1);
                    first_error.get_or_insert(LimiterError::backend(join));
                }
            }
        }
        if report.calls == 0 && lock(&this.failing_since).is_some() {
            // Nothing to send while failing: probe the store with a read (the credits of
            // a random key id), so a node refusing everything learns that it is back.
            report.calls = 1;
            this.calls.fetch_add(1, Ordering::Relaxed);
            let none = CreditPolicy::new(0);
            let probe = this
                .inner
                .credits(KeyId::random(), &none, latest.unwrap_or(0));
            let answer = tokio::time::timeout(this.config.store_timeout, probe)
                .await
                .unwrap_or(Err(LimiterError::Timeout));
            if let Err(error) = answer {
                report.failed = 1;
                first_error = Some(error);
            }
        }
        this.note_health(report.failed > 0 || first_error.is_some());
        match first_error {
            Some(error) => Err(error),
            None => Ok(report),
        }
    }

    /// Takes every subject's pending usage out of the local state (and drops idle
    /// subjects), with the latest `now` seen.
    fn take_jobs(&self) -> (Vec<Job>, Option<i64>) {
        let latest = self
            .shards
            .iter()
            .filter_map(|shard| lock(shard).latest_now)
            .max();
        let Some(now) = latest else {
            return (Vec::new(), None);
        };
        let mut jobs = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let Shard { keys, owners, .. } = &mut *shard;
            keys.retain(|id, entry| take(entry, now, OwnedSubject::Key(*id), &mut jobs));
            owners.retain(|owner, entry| {
                take(entry, now, OwnedSubject::Owner(owner.clone()), &mut jobs)
            });
        }
        (jobs, latest)
    }

    /// Sends one subject's batch: `(calls, units recorded, error)`.
    async fn send(&self, job: Job, latest: Option<i64>) -> (usize, u64, Option<LimiterError>) {
        let now = latest.unwrap_or(0);
        // Group the limits by the instant their batch is dated; reads join the first.
        let mut groups: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        let mut reads = Vec::new();
        for (i, (limit, units, tat)) in job.slots.iter().enumerate() {
            if *units == 0 {
                reads.push(i);
                continue;
            }
            let t = gcra::emission_interval_ns(limit);
            let start = i128::from(*tat).saturating_sub(i128::from(*units).saturating_mul(t));
            let start = start.min(gcra::now_ns(now));
            let at = i64::try_from(start.div_euclid(1_000)).unwrap_or(now);
            groups.entry(at).or_default().push(i);
        }
        match groups.values_mut().next() {
            Some(first) => first.extend(reads),
            None => {
                groups.insert(now, reads);
            }
        }
        let forced: Vec<RateLimit> = job
            .slots
            .iter()
            .map(|(limit, _, _)| {
                let mut forced = limit.clone();
                forced.burst = Some(MAX_RATELIMIT_LIMIT);
                forced
            })
            .collect();
        let mut calls = 0usize;
        let mut recorded = 0u64;
        let mut failure = None;
        for (at, members) in groups {
            let charges: Vec<Charge<'_>> = members
                .iter()
                .filter_map(|&i| {
                    let limit = forced.get(i)?;
                    let (_, units, _) = job.slots.get(i)?;
                    Some(Charge::new(limit, *units))
                })
                .collect();
            let check = LimitCheck::new(job.subject.as_subject(), &charges, None, at);
            calls = calls.saturating_add(1);
            self.calls.fetch_add(1, Ordering::Relaxed);
            match self.call(&check).await {
                Ok(outcome) => {
                    if !outcome.allowed {
                        tracing::warn!(target: "keygate", subject = %job.subject.as_subject().storage_key(),
                            "the store refused to record local-first usage (a limit beyond 63 years of debt?); dropped");
                    }
                    let units: u64 = charges.iter().map(|c| c.cost).fold(0, u64::saturating_add);
                    if outcome.allowed {
                        recorded = recorded.saturating_add(units);
                    }
                    self.adopt(&job.subject, &charges, &outcome, at);
                }
                Err(error) => {
                    self.restore(&job.subject, &charges);
                    failure.get_or_insert(error);
                }
            }
        }
        (calls, recorded, failure)
    }

    async fn call(&self, check: &LimitCheck<'_>) -> Result<LimitOutcome, LimiterError> {
        tokio::time::timeout(self.config.store_timeout, self.inner.check(check))
            .await
            .unwrap_or(Err(LimiterError::Timeout))
    }

    /// Takes the store's state after a sync call as the local one where it is further
    /// along (with what was admitted here meanwhile on top).
    fn adopt(
        &self,
        subject: &OwnedSubject,
        charges: &[Charge<'_>],
        outcome: &LimitOutcome,
        at: i64,
    ) {
        let mut shard = self.shard(subject.as_subject());
        let Some(entry) = shard.entry_mut(subject.as_subject()) else {
            return; // forgotten meanwhile
        };
        let at_ns = gcra::now_ns(at);
        for (charge, status) in charges.iter().zip(&outcome.limits) {
            let Some(slot) = entry
                .slots
                .iter_mut()
                .find(|s| s.limit.name == charge.limit.name)
            else {
                continue;
            };
            let reset = i128::from(status.reset_after_us).saturating_mul(1_000);
            // The store rounded up to a microsecond: take the earliest instant it may mean.
            let store_tat = at_ns.saturating_add(reset.saturating_sub(999).max(0));
            let t = gcra::emission_interval_ns(&slot.limit);
            let view = store_tat.saturating_add(i128::from(slot.pending).saturating_mul(t));
            let view = gcra::stored(view);
            if slot.tat == NO_TAT || view > slot.tat {
                slot.tat = view;
            }
        }
    }

    /// Puts a batch whose call failed back, to be sent with the next one.
    fn restore(&self, subject: &OwnedSubject, charges: &[Charge<'_>]) {
        let mut shard = self.shard(subject.as_subject());
        let Some(entry) = shard.entry_mut(subject.as_subject()) else {
            return; // forgotten meanwhile: nothing to record
        };
        entry.touched = true;
        for charge in charges {
            if let Some(slot) = entry
                .slots
                .iter_mut()
                .find(|s| s.limit.name == charge.limit.name)
            {
                slot.pending = slot.pending.saturating_add(charge.cost);
            }
        }
    }

    /// Tracks how long syncs have failed, and degrades (closed mode) past the staleness.
    fn note_health(&self, failed: bool) {
        let mut since = lock(&self.failing_since);
        if !failed {
            if since.take().is_some() {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::warn!(target: "keygate", "local-first limiter: the store answers again; limits are enforced again");
                } else {
                    tracing::info!(target: "keygate", "local-first limiter: the store answers again");
                }
            }
            return;
        }
        let now = tokio::time::Instant::now();
        let start = *since.get_or_insert(now);
        if now.saturating_duration_since(start) < self.config.max_staleness {
            return;
        }
        match self.config.on_store_failure {
            FailureMode::Open => {
                let failing_for_ms =
                    u64::try_from(now.saturating_duration_since(start).as_millis())
                        .unwrap_or(u64::MAX);
                tracing::warn!(target: "keygate", failing_for_ms,
                    "local-first limiter: the store keeps failing; each node limits on its own (failure mode open)");
            }
            _ => {
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(target: "keygate",
                        "local-first limiter: the store keeps failing; checks fail until it answers (failure mode closed)");
                }
            }
        }
    }
}

/// Moves `entry`'s pending usage into a job when it has any, was checked, or is not yet
/// full again (then its state is read back); `false` (drop it) when it is idle.
fn take(entry: &mut Entry, now: i64, subject: OwnedSubject, jobs: &mut Vec<Job>) -> bool {
    let idle = entry.is_idle(now);
    if entry.slots.is_empty() || (!entry.touched && idle) {
        return false;
    }
    entry.touched = false;
    let slots = entry
        .slots
        .iter_mut()
        .map(|slot| {
            let units = std::mem::take(&mut slot.pending);
            (slot.limit.clone(), units, slot.tat)
        })
        .collect();
    jobs.push(Job { subject, slots });
    true
}

#[async_trait]
impl<L: Limiter> Limiter for LocalFirst<L> {
    async fn check(&self, check: &LimitCheck<'_>) -> Result<LimitOutcome, LimiterError> {
        let shared = &*self.shared;
        if let Some(error) = shared.stale() {
            return Err(error);
        }
        let mut outcome = shared.decide(check);
        let Some(spend) = check.credits else {
            return Ok(outcome);
        };
        if !outcome.allowed {
            return Ok(outcome);
        }
        let credits = LimitCheck::new(check.subject, &[], Some(spend), check.now);
        let result = shared.inner.check(&credits).await;
        let exact = match result {
            Ok(exact) => exact,
            Err(error) => {
                shared.give_back(check);
                return Err(error);
            }
        };
        outcome.credits = exact.credits;
        if !exact.allowed {
            shared.give_back(check);
            outcome.allowed = false;
            // Report the limits as they stand again (nothing was charged).
            let shard = shared.shard(check.subject);
            let entry = shard.entry(check.subject);
            for (charge, status) in check.limits.iter().zip(outcome.limits.iter_mut()) {
                let tat = entry.and_then(|e| e.tat(&charge.limit.name));
                let (unchanged, _) = gcra::decide(tat, check.now, charge.limit, 0);
                status.remaining = unchanged.remaining;
                status.reset_after_us = unchanged.reset_after_us;
            }
        }
        Ok(outcome)
    }

    fn check_now(&self, check: &LimitCheck<'_>) -> Option<Result<LimitOutcome, LimiterError>> {
        if check.credits.is_some() {
            return None; // credits are exact: the store's
        }
        Some(match self.shared.stale() {
            Some(error) => Err(error),
            None => Ok(self.shared.decide(check)),
        })
    }

    async fn credits(
        &self,
        key: KeyId,
        policy: &CreditPolicy,
        now: i64,
    ) -> Result<u64, LimiterError> {
        self.shared.inner.credits(key, policy, now).await
    }

    async fn refund(&self, check: &LimitCheck<'_>) -> Result<(), LimiterError> {
        self.shared.give_back(check);
        if check.credits.is_some() {
            let credits = LimitCheck::new(check.subject, &[], check.credits, check.now);
            self.shared.inner.refund(&credits).await?;
        }
        Ok(())
    }

    async fn forget(&self, subject: Subject<'_>) -> Result<(), LimiterError> {
        // Not while a sync is in flight: it could record the subject's usage in the store
        // again just after the store forgot it (a stale row for a deleted key).
        let _guard = self.shared.sync_lock.lock().await;
        self.shared.shard(subject).remove(subject);
        self.shared.inner.forget(subject).await
    }
}

impl<L: Limiter> fmt::Debug for LocalFirst<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalFirst")
            .field("config", &self.shared.config)
            .field("degraded", &self.shared.degraded.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::MemoryLimiter;

    const T0: i64 = 1_893_499_200_000_000; // 2030-01-01T12:00:00Z

    #[tokio::test]
    async fn one_node_alone_reproduces_its_local_state_in_the_store() {
        let store = Arc::new(MemoryLimiter::new());
        let node = LocalFirst::new(Arc::clone(&store), LocalFirstConfig::new());
        let limit = RateLimit::new("r", 10, 1000); // T = 100 ms
        let key = KeyId::random();
        let one = [Charge::new(&limit, 1)];
        // Steady at exactly the rate, synced every 5 requests: never refused, and the
        // store's TAT ends where the local one is.
        for i in 0..50 {
            let now = T0 + i * 100_000;
            let out = node
                .check_now(&LimitCheck::new(Subject::Key(key), &one, None, now))
                .unwrap()
                .unwrap();
            assert!(out.allowed, "{i}");
            if i % 5 == 4 {
                node.sync().await.unwrap();
            }
        }
        let peek = [Charge::new(&limit, 0)];
        let now = T0 + 49 * 100_000;
        let stored = store
            .check(&LimitCheck::new(Subject::Key(key), &peek, None, now))
            .await
            .unwrap();
        // TAT = now + T: 9 of the burst of 10 left, as locally.
        assert_eq!(stored.limits[0].remaining, 9);
        assert_eq!(stored.limits[0].reset_after_us, 100_000);
    }

    /// The config's fields are public, so the setters' floors (1 ms, 1 call) can be
    /// bypassed: a zero `max_in_flight` made every sync take the pending usage out of the
    /// local state and send none of it (lost for good), and a zero `sync_interval` made
    /// the sync task panic (`tokio::time::interval`), so nothing was ever synced.
    #[tokio::test(start_paused = true)]
    async fn zero_config_fields_bypassing_the_setters_lose_no_usage() {
        let store = Arc::new(MemoryLimiter::new());
        let mut config = LocalFirstConfig::new();
        config.max_in_flight = 0;
        config.sync_interval = Duration::ZERO;
        let node = LocalFirst::start(Arc::clone(&store), config).unwrap();
        let limit = RateLimit::new("r", 10, 1000);
        let one = [Charge::new(&limit, 1)];
        let key = KeyId::random();
        for _ in 0..3 {
            let check = LimitCheck::new(Subject::Key(key), &one, None, T0);
            assert!(node.check_now(&check).unwrap().unwrap().allowed);
        }
        // The task syncs on its own (a panicked task never would).
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(node.store_calls() > 0, "the sync task never synced");
        node.shutdown().await.unwrap();
        let peek = [Charge::new(&limit, 0)];
        let stored = store
            .check(&LimitCheck::new(Subject::Key(key), &peek, None, T0))
            .await
            .unwrap();
        assert_eq!(stored.limits[0].remaining, 7, "the store saw the 3 units");
    }

    #[tokio::test]
    async fn synced_subjects_are_read_back_until_full_then_dropped() {
        let store = Arc::new(MemoryLimiter::new());
        let node = LocalFirst::new(Arc::clone(&store), LocalFirstConfig::new());
        let limit = RateLimit::new("r", 10, 1000);
        let one = [Charge::new(&limit, 1)];
        let owner = Subject::Owner("u");
        for _ in 0..3 {
            assert!(
                node.check_now(&LimitCheck::new(owner, &one, None, T0))
                    .unwrap()
                    .unwrap()
                    .allowed
            );
        }
        let report = node.sync().await.unwrap();
        assert_eq!((report.subjects, report.calls, report.units), (1, 1, 3));
        // Untouched but not yet full: read back next time.
        assert_eq!(node.sync().await.unwrap().subjects, 1);
        // Full again (a second later): dropped. A check without limits holds no state.
        node.check_now(&LimitCheck::new(
            Subject::Owner("v"),
            &[],
            None,
            T0 + 2_000_000,
        ));
        let report = node.sync().await.unwrap();
        assert_eq!((report.subjects, report.calls), (0, 0));
    }
}
