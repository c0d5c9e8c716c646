//! Where key records live: the [`KeyStore`] trait (and its forwarding through `Arc`), the
//! built-in stores, [`CachedStore`] and [`open_store`].

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::hash::PepperFingerprint;
use crate::key::KeyId;
use crate::record::{KeyPatch, KeyRecord};

mod cache;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;
mod url;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
mod usage;

#[cfg(feature = "redis")]
pub use self::redis::{RedisConfig, RedisConnection, RedisStore};
pub use cache::{CacheConfig, CacheStats, CachedStore};
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresConfig, PostgresStore};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteConfig, SqliteStore};
pub use url::{open_store, open_store_with_limiter};

/// Where key records live.
///
/// The contract, which every implementation must honour exactly:
/// - **Not found is `Ok(None)`** (or `Ok(false)` for [`delete`](KeyStore::delete)); `Err`
///   means the backend failed, and keygate reports it as "unavailable", never as a bad key.
/// - [`insert`](KeyStore::insert) never overwrites: an existing id is
///   [`StoreError::Conflict`].
/// - [`update`](KeyStore::update) is atomic per record: the record the patch is applied
///   to is the one the write replaces, with no other write in between. A patch with a
///   precondition ([`KeyPatch::if_unchanged`]) is checked against that same record inside
///   the atomic section; if it does not hold, nothing is written and the answer is
///   [`StoreError::Changed`]. [`KeyPatch::apply`] does both the check and the change, so
///   a store that reads, applies and writes back under one lock or transaction (as every
///   built-in store does) honours this by propagating its error with `?`.
/// - [`record_last_used`](KeyStore::record_last_used) is one round trip per batch, skips
///   ids that no longer exist, and never moves `last_used_at` backwards.
/// - No plaintext key ever reaches a store; records hold hashes only.
/// - [`remember_pepper`](KeyStore::remember_pepper) is an atomic insert-if-absent: of
///   two processes that record different fingerprints for one version at once, exactly
///   one wins, and the other is told the winner's.
///
/// Records come back in an [`Arc`] so that in-memory stores and caches hand them out on the
/// verify path without copying.
///
/// A method added to this trait must also be forwarded by the `impl KeyStore for Arc<T>`
/// below (clippy's `missing_trait_methods` fails the build until it is, even when the new
/// method has a default body) and listed in that impl's test, `arc_forwards_every_method`.
/// Wrappers such as [`CachedStore`] must decide for each method too.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Adds a new record; [`StoreError::Conflict`] if the id exists.
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError>;

    /// The record with this id.
    async fn get(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError>;

    /// What [`get`](Self::get) would answer for `id`, when the store has it in memory and
    /// can give it at once (no I/O, no waiting); `None` sends the caller to `get`. The
    /// default is `None`.
    ///
    /// The verify path asks this first, so that a record held in memory costs no future
    /// (no allocation) per request: [`MemoryStore`] always answers, [`CachedStore`] on a
    /// fresh cache entry. A store that implements it must answer exactly as `get` would.
    fn get_now(&self, id: KeyId) -> Option<Result<Option<Arc<KeyRecord>>, StoreError>> {
        let _ = id;
        None
    }

    /// Applies `patch` atomically and returns the updated record; `Ok(None)` if there is
    /// no such record. A patch whose [precondition](KeyPatch::if_unchanged) fails on the
    /// current record writes nothing and is [`StoreError::Changed`].
    async fn update(&self, id: KeyId, patch: &KeyPatch) -> Result<Option<KeyRecord>, StoreError>;

    /// Removes the record; `Ok(false)` if there was none.
    async fn delete(&self, id: KeyId) -> Result<bool, StoreError>;

    /// Records in creation order (by `created_at`, then by id), optionally one owner's,
    /// starting after `query.after` ([`Cursor`] order), at most `query.limit` of them.
    async fn list(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError>;

    /// Sets `last_used_at` for each `(id, at)` where `at` is later than what is stored.
    async fn record_last_used(&self, batch: &[(KeyId, DateTime<Utc>)]) -> Result<(), StoreError>;

    /// Starts telling `listener` about changes to records made through *any* process that
    /// shares this backend (PostgreSQL `LISTEN/NOTIFY`, Redis pub/sub), until the listener
    /// is dropped. Returns `Ok(false)` when the backend has no such feed (the default).
    ///
    /// A feed that loses its connection must, once it is back, either replay what it
    /// missed (the built-in feeds read it from the store's change log) or call
    /// [`ChangeListener::resync`], and keep reconnecting on its own. A feed that can
    /// prove it is up to date calls [`ChangeListener::synced`] (see there): that is what
    /// bounds staleness when notices are lost.
    async fn subscribe(&self, listener: Weak<dyn ChangeListener>) -> Result<bool, StoreError> {
        let _ = listener;
        Ok(false)
    }

    /// Records `fingerprint` as the fingerprint of pepper `version`, unless the store
    /// holds one for that version already, and returns the one it held: `None` when this
    /// call recorded `fingerprint`. Never overwrites, atomically (see the contract above).
    ///
    /// [`Keygate::check_pepper`](crate::Keygate::check_pepper) calls it once per gate and
    /// pepper version, so that a gate configured with the wrong pepper finds out before it
    /// mints keys that can never verify. A store keeps these beside its records, for as
    /// long as it keeps them (a table, a Redis hash): one fingerprint per version, shared
    /// by every process using the backend.
    async fn remember_pepper(
        &self,
        version: u32,
        fingerprint: PepperFingerprint,
    ) -> Result<Option<PepperFingerprint>, StoreError>;
}

/// Receives a store's change notices; see [`KeyStore::subscribe`]. [`CachedStore`]
/// implements it to bound revocation staleness across nodes.
///
/// The contract between a feed and its listener:
/// - [`changed`](Self::changed) for every record written anywhere, as soon as the feed
///   hears of it (in any order; repeats are harmless);
/// - [`resync`](Self::resync) when changes may have been missed and cannot be replayed;
/// - [`synced`](Self::synced)`(until)` once the feed has *proved* that every change
///   committed before some instant `s` has been passed on (it read the store's change
///   sequence at `s` or later and replayed everything up to it), with `until = s + lease`.
///   A listener that has heard `synced` at least once serves nothing it cached after
///   `until` until the next `synced`, so a lost notice or a silently dead connection is
///   bounded by the lease, whatever the cache's TTL. A feed that never calls it leaves
///   the listener's TTL as the only bound (as for a feed of notices alone).
pub trait ChangeListener: Send + Sync + 'static {
    /// The record `id` was inserted, updated or deleted somewhere.
    fn changed(&self, id: KeyId);

    /// Notices may have been lost and cannot be replayed: forget everything.
    fn resync(&self);

    /// Every change committed before the instant `until - lease` has been passed to
    /// [`changed`](Self::changed) (or covered by [`resync`](Self::resync)): what is
    /// cached may be trusted until `until`. See [`FeedConfig`] for the lease. The default
    /// does nothing.
    fn synced(&self, until: tokio::time::Instant) {
        let _ = until;
    }
}

/// How the built-in change feeds ([`PostgresStore`], [`RedisStore`]) prove that a
/// [`CachedStore`] following them is up to date, and so bound how long a revoke made on
/// another node can go unseen when notices are lost.
///
/// Every write appends to a change sequence in the store (PostgreSQL: the
/// `keygate_changes` table; Redis: a counter and a capped sorted set), in the same
/// transaction or script as the write, and the notice it publishes carries the sequence
/// number. Each feed, every [`heartbeat`](Self::heartbeat), reads the store's current
/// sequence *on its own connection* and replays any change it has not seen (a lost
/// notice, a reconnect); a notice whose number skips one triggers that at once. A
/// heartbeat that succeeds renews a lease of `heartbeat + deadline` from the moment it was
/// sent; a cache whose lease ran out serves nothing from memory (each lookup reads the
/// store) until a heartbeat succeeds again. A heartbeat unanswered for
/// [`dead_after`](Self::dead_after) means the connection is dead: the feed reconnects and
/// replays from its last sequence number (or drops the whole cache, if the log was trimmed
/// past it).
///
/// **Worst-case staleness.** On a node whose [`CachedStore`] follows the feed, a key
/// revoked (updated, deleted) on another node is refused by every lookup that starts
/// later than
///
/// ```text
/// min(CacheConfig::ttl, heartbeat + deadline)        (defaults: min(5 s, 500 ms) = 500 ms)
/// ```
///
/// after the revoke committed, whatever is lost: notices, the feed's connection (closed,
/// killed, or silently partitioned), or the feed's task. Normally it is far less (a
/// notice arrives within milliseconds). The bound needs the node's monotonic clock to
/// run at the rate of real time; it does not depend on clocks agreeing across machines.
///
/// ```
/// use std::time::Duration;
/// let feed = keygate::FeedConfig::new()
///     .heartbeat(Duration::from_millis(100))
///     .deadline(Duration::from_millis(100));
/// assert_eq!(feed.lease(), Duration::from_millis(200));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FeedConfig {
    /// How often the feed reads the store's change sequence on its connection. Default
    /// 250 ms: one tiny query per node per heartbeat.
    pub heartbeat: Duration,
    /// How late a heartbeat's answer may be before the cache stops trusting its entries
    /// (they are then read from the store). Default 250 ms.
    pub deadline: Duration,
    /// How long an unanswered heartbeat (or a reconnection attempt) may take before the
    /// feed's connection is given up and replaced. Default 2 s. It does not affect the
    /// staleness bound, only how soon a dead connection is replaced.
    pub dead_after: Duration,
}

impl FeedConfig {
    /// The defaults: 250 ms heartbeat, 250 ms deadline (so a 500 ms lease), 2 s to declare
    /// a connection dead.
    pub const fn new() -> Self {
        Self {
            heartbeat: Duration::from_millis(250),
            deadline: Duration::from_millis(250),
            dead_after: Duration::from_secs(2),
        }
    }

    /// Sets [`heartbeat`](Self::heartbeat) (at least 1 ms is used).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// Sets [`deadline`](Self::deadline).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Sets [`dead_after`](Self::dead_after) (at least 1 ms is used).
    pub fn dead_after(mut self, after: Duration) -> Self {
        self.dead_after = after;
        self
    }

    /// `heartbeat + deadline` (saturating): how long a successful heartbeat lets a cache
    /// trust its entries, and the worst-case staleness with a cache TTL at least as long.
    pub fn lease(&self) -> Duration {
        self.heartbeat.saturating_add(self.deadline)
    }

    /// [`heartbeat`](Self::heartbeat), at least 1 ms (a zero period would spin).
    #[allow(dead_code)] // used by the feature-gated stores
    pub(crate) fn period(&self) -> Duration {
        self.heartbeat.max(Duration::from_millis(1))
    }

    /// [`dead_after`](Self::dead_after), at least 1 ms.
    #[allow(dead_code)]
    pub(crate) fn give_up_after(&self) -> Duration {
        self.dead_after.max(Duration::from_millis(1))
    }
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// `at + by`, or as far as the clock goes (a year on) when that overflows.
#[allow(dead_code)] // used by the feature-gated stores
pub(crate) fn later(at: tokio::time::Instant, by: Duration) -> tokio::time::Instant {
    at.checked_add(by)
        .or_else(|| at.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(at)
}

/// How many changes a feed replays from the store's log before it drops its whole cache
/// instead.
#[allow(dead_code)] // used by the feature-gated stores
pub(crate) const MAX_REPLAY: i64 = 10_000;

/// How many changes the stores keep in their change log (trimmed every 1024 writes).
#[allow(dead_code)]
pub(crate) const CHANGE_LOG_KEEP: i64 = 100_000;

/// A change notice's payload: `<sequence>:<key id>`. A bare `<key id>` (a keygate before
/// the change sequence) has no sequence number.
#[allow(dead_code)]
pub(crate) fn parse_notice(payload: &str) -> Option<(Option<i64>, KeyId)> {
    match payload.split_once(':') {
        Some((seq, id)) => Some((Some(seq.parse().ok()?), id.parse().ok()?)),
        None => Some((None, payload.parse().ok()?)),
    }
}

/// Where a feed stands in the store's change sequence, and what to do with a notice or a
/// read of the log. Shared by the PostgreSQL and Redis feeds.
#[allow(dead_code)]
#[derive(Debug, Default)]
pub(crate) struct Sequence {
    /// The last sequence number up to which every change was passed on.
    last: Option<i64>,
    /// The latest numbered changes passed on (at most [`RECENT`]), oldest first: a notice
    /// that matches one of them was passed on by a replay already and is not passed twice.
    recent: std::collections::VecDeque<(i64, KeyId)>,
}

/// How many passed-on changes a [`Sequence`] remembers to tell a late notice of a replayed
/// change (dropped) from a new change under a reused number (passed on).
const RECENT: usize = 1024;

/// What a feed must do after a notice.
#[allow(dead_code)]
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Nothing more.
    Nothing,
    /// Read the log now: a notice was skipped (or carried no number).
    CatchUp,
}

#[allow(dead_code)]
impl Sequence {
    /// The last sequence number passed on, if any.
    pub(crate) fn last(&self) -> Option<i64> {
        self.last
    }

    /// A notice: pass the id on (unless a replay passed this very change on already); say
    /// whether the log must be read.
    pub(crate) fn notice(
        &mut self,
        listener: &dyn ChangeListener,
        seq: Option<i64>,
        id: KeyId,
    ) -> Next {
        match (seq, self.last) {
            // Normally a change a replay passed on already (then it is in `recent`); but
            // after the store's counter went back (a failover that lost writes, a restore)
            // it is a new change under a reused number, which no replay from `last` will
            // ever return. Passing it on costs one reload of that record; dropping it could
            // keep a revoke unseen.
            (Some(seq), Some(last)) if seq <= last => {
                if !self.recent.contains(&(seq, id)) {
                    listener.changed(id);
                    self.remember(seq, id);
                }
                Next::Nothing
            }
            (Some(seq), Some(last)) if Some(seq) == last.checked_add(1) => {
                listener.changed(id);
                self.last = Some(seq);
                self.remember(seq, id);
                Next::Nothing
            }
            _ => {
                listener.changed(id);
                Next::CatchUp
            }
        }
    }

    /// Notes a numbered change as passed on, forgetting the oldest beyond [`RECENT`].
    fn remember(&mut self, seq: i64, id: KeyId) {
        if self.recent.len() >= RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((seq, id));
    }

    /// The log read at some instant: the store's `current` sequence number and the
    /// entries after [`last`](Self::last) up to it (`(seq, id)`, ascending). Passes them on,
    /// or resyncs the listener when they do not cover the gap exactly (a trimmed log, a
    /// reset store, a first read). Returns whether the listener was resynced.
    pub(crate) fn replay(
        &mut self,
        listener: &dyn ChangeListener,
        current: i64,
        entries: &[(i64, KeyId)],
    ) -> bool {
        let complete = match self.last {
            Some(last) if current == last => true,
            Some(last) if current > last => {
                let expected = last.checked_add(1);
                current.checked_sub(last) == i64::try_from(entries.len()).ok()
                    && entries.first().map(|e| e.0) == expected
                    && entries.windows(2).all(|w| match w {
                        [a, b] => a.0.checked_add(1) == Some(b.0),
                        _ => true,
                    })
            }
            _ => false,
        };
        if complete {
            for &(seq, id) in entries {
                listener.changed(id);
                self.remember(seq, id);
            }
        } else {
            listener.resync();
            // Everything cached was dropped: no earlier change needs telling apart.
            self.recent.clear();
        }
        self.last = Some(current);
        !complete
    }
}

/// Which records [`KeyStore::list`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListQuery {
    /// Only this owner's keys.
    pub owner: Option<String>,
    /// Only records after this position (the [`Page::next`] of the previous page).
    pub after: Option<Cursor>,
    /// At most this many records.
    pub limit: usize,
}

impl ListQuery {
    /// Default page size.
    pub const DEFAULT_LIMIT: usize = 100;

    /// Every key, first page.
    pub fn new() -> Self {
        Self {
            owner: None,
            after: None,
            limit: Self::DEFAULT_LIMIT,
        }
    }

    /// Only `owner`'s keys.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Continue after `cursor` (a [`Page::next`]).
    pub fn after(mut self, cursor: Cursor) -> Self {
        self.after = Some(cursor);
        self
    }

    /// Page size.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
}

impl Default for ListQuery {
    fn default() -> Self {
        Self::new()
    }
}

/// A position in creation order: the `created_at` and id of a record. Lists are ordered
/// by this pair, so a page boundary stays put while keys are minted or deleted around it.
///
/// Its text form (`<microseconds since the epoch>-<id>`, as the admin API's `next` and
/// `after` carry it) round-trips through [`Display`](std::fmt::Display) and
/// [`FromStr`](std::str::FromStr).
///
/// ```
/// use keygate::{Cursor, KeyId};
/// use keygate::chrono::{TimeZone, Utc};
///
/// let at = Utc.timestamp_opt(1_700_000_000, 123_456_000).unwrap();
/// let cursor = Cursor::new(at, KeyId::random());
/// assert_eq!(cursor.to_string().parse::<Cursor>(), Ok(cursor));
/// assert!("not a cursor".parse::<Cursor>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    created_at: DateTime<Utc>,
    id: KeyId,
}

impl Cursor {
    /// Before every record.
    pub(crate) const FIRST: Self = Self {
        created_at: DateTime::<Utc>::MIN_UTC,
        id: KeyId::NIL,
    };

    /// The position of a record created at `created_at` (kept to the microsecond, as
    /// stores keep it) with id `id`.
    pub fn new(created_at: DateTime<Utc>, id: KeyId) -> Self {
        let created_at =
            DateTime::from_timestamp_micros(created_at.timestamp_micros()).unwrap_or(created_at);
        Self { created_at, id }
    }

    /// The position of `record`.
    pub fn of(record: &KeyRecord) -> Self {
        Self::new(record.created_at, record.id)
    }

    /// The creation time part.
    pub fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }

    /// The id part.
    pub fn id(&self) -> KeyId {
        self.id
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.created_at.timestamp_micros(), self.id)
    }
}

/// A string that is not a [`Cursor`]'s text form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a list cursor (expected <microseconds>-<key id>)")]
pub struct InvalidCursor;

impl std::str::FromStr for Cursor {
    type Err = InvalidCursor;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The microseconds may be negative, so split at the first '-' after the first byte.
        let split = s
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == '-')
            .map(|(i, _)| i)
            .ok_or(InvalidCursor)?;
        let (micros, id) = s.split_at(split);
        let micros: i64 = micros.parse().map_err(|_| InvalidCursor)?;
        let id: KeyId = id
            .get(1..)
            .ok_or(InvalidCursor)?
            .parse()
            .map_err(|_| InvalidCursor)?;
        let created_at = DateTime::from_timestamp_micros(micros).ok_or(InvalidCursor)?;
        Ok(Self { created_at, id })
    }
}

/// One page of [`Keygate::list`](crate::Keygate::list).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Page {
    /// The records, in creation order ([`Cursor`] order).
    pub records: Vec<KeyRecord>,
    /// Pass to [`ListQuery::after`] for the next page; `None` on the last page.
    pub next: Option<Cursor>,
}

/// A store failure. Never means "not found".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// [`KeyStore::insert`] with an id that exists.
    #[error("a key with id {0} already exists")]
    Conflict(KeyId),
    /// [`KeyStore::update`] with a patch made conditional by [`KeyPatch::if_unchanged`]:
    /// the record changed since it was read (its owner, scopes, active flag, expiry or network policy are
    /// no longer those the patch was decided on); nothing was written.
    #[error("the record of key {0} changed since it was read; nothing was written")]
    Changed(KeyId),
    /// The backend did not answer in time.
    #[error("key store timed out")]
    Timeout,
    /// A record the backend holds cannot be read back (corrupt or from an unknown schema).
    #[error("stored record is unreadable")]
    Corrupt(#[source] Box<dyn StdError + Send + Sync>),
    /// A store URL that cannot be opened: unknown scheme, or a store whose feature is off.
    #[error("{0}")]
    InvalidUrl(String),
    /// The URL or configuration asks for TLS, or could only be honoured without it on the
    /// network (PostgreSQL's default `sslmode=prefer` to a remote host), but this build of
    /// keygate has no TLS: enable the `tls` feature, or say `sslmode=disable` where
    /// cleartext is meant. keygate never falls back to cleartext. The payload names what
    /// asked for TLS (never the URL, which may hold a password).
    #[error("{0} asks for TLS, but this build of keygate has none: enable the `tls` feature")]
    TlsUnavailable(&'static str),
    /// A write was made on the primary, but fewer replicas than asked confirmed a copy of
    /// it in time (a [`RedisStore`](crate::RedisStore) behind Sentinel: `WAIT`, see
    /// [`RedisConfig::replicas`](crate::RedisConfig::replicas)). The write may or may not
    /// survive a failover: treat it as not done and retry (a revoke, update or delete is
    /// safe to repeat; a repeated insert may find its own record,
    /// [`Conflict`](Self::Conflict)). Like [`Timeout`](Self::Timeout), the store is
    /// unavailable for writes, typically during a failover or while the replicas are down.
    #[error("write not confirmed by {wanted} replica(s) in time ({acked} confirmed)")]
    Unreplicated {
        /// Replicas that confirmed the write.
        acked: u32,
        /// Replicas asked for.
        wanted: u32,
    },
    /// The backend failed: connection, I/O, query.
    #[error("key store backend failed")]
    Backend(#[source] Box<dyn StdError + Send + Sync>),
}

impl StoreError {
    /// Wraps a backend error, keeping it as the source.
    pub fn backend(error: impl StdError + Send + Sync + 'static) -> Self {
        StoreError::Backend(Box::new(error))
    }
}

/// A boxed future of a [`KeyStore`] method, as `#[async_trait]` declares them.
type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A shared store is a store, so `Keygate::builder(arc.clone(), pepper)` keeps a handle.
///
/// Every method forwards to the inner store, including those with a default body: a
/// forgotten one would silently answer with the default instead (as `subscribe` once
/// did, so a shared `CachedStore` never heard of changes). The
/// `clippy::missing_trait_methods` lint below fails the build (clippy runs with
/// `-D warnings`) when a trait method is not written out here, and
/// `tests::arc_forwards_every_method` checks that each one reaches the inner store.
///
/// Written without `#[async_trait]` so that a call returns the inner store's future as it
/// is instead of boxing it a second time: the verify path calls [`get`](KeyStore::get)
/// through here on every request.
#[deny(clippy::missing_trait_methods)]
impl<T: KeyStore + ?Sized> KeyStore for Arc<T> {
    fn insert<'s, 'f>(&'s self, record: KeyRecord) -> StoreFuture<'f, ()>
    where
        's: 'f,
        Self: 'f,
    {
        (**self).insert(record)
    }

    fn get<'s, 'f>(&'s self, id: KeyId) -> StoreFuture<'f, Option<Arc<KeyRecord>>>
    where
        's: 'f,
        Self: 'f,
    {
        (**self).get(id)
    }

    fn get_now(&self, id: KeyId) -> Option<Result<Option<Arc<KeyRecord>>, StoreError>> {
        (**self).get_now(id)
    }

    fn update<'s, 'p, 'f>(
        &'s self,
        id: KeyId,
        patch: &'p KeyPatch,
    ) -> StoreFuture<'f, Option<KeyRecord>>
    where
        's: 'f,
        'p: 'f,
        Self: 'f,
    {
        (**self).update(id, patch)
    }

    fn delete<'s, 'f>(&'s self, id: KeyId) -> StoreFuture<'f, bool>
    where
        's: 'f,
        Self: 'f,
    {
        (**self).delete(id)
    }

    fn list<'s, 'q, 'f>(&'s self, query: &'q ListQuery) -> StoreFuture<'f, Vec<KeyRecord>>
    where
        's: 'f,
        'q: 'f,
        Self: 'f,
    {
        (**self).list(query)
    }

    fn record_last_used<'s, 'b, 'f>(
        &'s self,
        batch: &'b [(KeyId, DateTime<Utc>)],
    ) -> StoreFuture<'f, ()>
    where
        's: 'f,
        'b: 'f,
        Self: 'f,
    {
        (**self).record_last_used(batch)
    }

    fn subscribe<'s, 'f>(&'s self, listener: Weak<dyn ChangeListener>) -> StoreFuture<'f, bool>
    where
        's: 'f,
        Self: 'f,
    {
        (**self).subscribe(listener)
    }

    fn remember_pepper<'s, 'f>(
        &'s self,
        version: u32,
        fingerprint: PepperFingerprint,
    ) -> StoreFuture<'f, Option<PepperFingerprint>>
    where
        's: 'f,
        Self: 'f,
    {
        (**self).remember_pepper(version, fingerprint)
    }
}

#[cfg(test)]
mod sequence_tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Heard {
        changed: Mutex<Vec<KeyId>>,
        resyncs: Mutex<u32>,
    }

    impl ChangeListener for Heard {
        fn changed(&self, id: KeyId) {
            self.changed.lock().unwrap().push(id);
        }
        fn resync(&self) {
            let mut resyncs = self.resyncs.lock().unwrap();
            *resyncs = resyncs.saturating_add(1);
        }
    }

    impl Heard {
        fn take(&self) -> (Vec<KeyId>, u32) {
            let changed = std::mem::take(&mut *self.changed.lock().unwrap());
            let resyncs = std::mem::take(&mut *self.resyncs.lock().unwrap());
            (changed, resyncs)
        }
    }

    #[test]
    fn notices_in_order_pass_on_and_a_gap_asks_for_the_log() {
        let heard = Heard::default();
        let mut seq = Sequence::default();
        // The first read resyncs (what was cached before may predate the feed).
        assert!(seq.replay(&heard, 7, &[]));
        assert_eq!(heard.take(), (vec![], 1));
        let (a, b, c) = (KeyId::random(), KeyId::random(), KeyId::random());
        assert_eq!(seq.notice(&heard, Some(8), a), Next::Nothing);
        assert_eq!(seq.last(), Some(8));
        // 9 lost: 10 is passed on, and the log must be read.
        assert_eq!(seq.notice(&heard, Some(10), c), Next::CatchUp);
        assert_eq!(seq.last(), Some(8));
        assert!(!seq.replay(&heard, 10, &[(9, b), (10, c)]));
        assert_eq!(heard.take(), (vec![a, c, b, c], 0));
        assert_eq!(seq.last(), Some(10));
        // A notice of a change the replay passed on already is not passed on again.
        assert_eq!(seq.notice(&heard, Some(10), c), Next::Nothing);
        assert_eq!(heard.take(), (vec![], 0));
        assert_eq!(seq.last(), Some(10));
        // A notice without a number (an older keygate wrote it): passed on, log read.
        assert_eq!(seq.notice(&heard, None, a), Next::CatchUp);
        assert_eq!(heard.take(), (vec![a], 0));
    }

    /// The store's counter went back (a failover that lost its last writes, a restore from
    /// a backup): new writes reuse numbers the feed has passed already. Their notices are
    /// still passed on: an extra invalidation is harmless, a dropped one keeps a revoked
    /// key cached until its TTL if the counter is back at the feed's number by the next
    /// heartbeat (which then sees nothing missing).
    #[test]
    fn a_notice_numbered_at_or_below_the_last_is_still_passed_on() {
        let heard = Heard::default();
        let mut seq = Sequence::default();
        seq.replay(&heard, 8, &[]);
        let (b, c) = (KeyId::random(), KeyId::random());
        assert!(!seq.replay(&heard, 10, &[(9, b), (10, c)]));
        heard.take();
        // Writes 9 and 10 were lost with the old primary; two new writes take 9 and 10.
        let (d, e) = (KeyId::random(), KeyId::random());
        assert_eq!(seq.notice(&heard, Some(9), d), Next::Nothing);
        assert_eq!(seq.notice(&heard, Some(10), e), Next::Nothing);
        assert_eq!(heard.take(), (vec![d, e], 0));
        // The late notice of a replayed change, and a repeated notice, are not passed twice.
        assert_eq!(seq.notice(&heard, Some(10), c), Next::Nothing);
        assert_eq!(seq.notice(&heard, Some(9), d), Next::Nothing);
        assert_eq!(heard.take(), (vec![], 0));
        // The next heartbeat finds the counter at 10 again: nothing to replay.
        assert!(!seq.replay(&heard, 10, &[]));
        assert_eq!(seq.last(), Some(10));
    }

    #[test]
    fn a_log_that_does_not_cover_the_gap_resyncs() {
        let heard = Heard::default();
        let (a, b) = (KeyId::random(), KeyId::random());
        for (current, entries) in [
            (12, vec![(12, a)]),          // 11 trimmed away
            (12, vec![(11, a)]),          // 12 missing
            (12, vec![(11, a), (11, b)]), // not a sequence
            (13, vec![(11, a), (13, b)]), // a hole
            (4, vec![]),                  // the store was reset (counter went back)
        ] {
            let mut seq = Sequence::default();
            seq.replay(&heard, 10, &[]);
            heard.take();
            assert!(
                seq.replay(&heard, current, &entries),
                "{current} {entries:?}"
            );
            assert_eq!(heard.take(), (vec![], 1));
            assert_eq!(seq.last(), Some(current));
        }
    }

    #[test]
    fn notice_payloads() {
        let id = KeyId::random();
        assert_eq!(parse_notice(&format!("42:{id}")), Some((Some(42), id)));
        assert_eq!(parse_notice(&id.to_string()), Some((None, id)));
        assert_eq!(parse_notice("x:y"), None);
        assert_eq!(parse_notice(&format!("x:{id}")), None);
        assert_eq!(parse_notice(""), None);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::key::KeyFormat;
    use crate::testing_support::record;

    /// Every [`KeyStore`] method, in the order [`call_every_method`] calls them. A new
    /// trait method belongs here and in both.
    const METHODS: [&str; 9] = [
        "insert",
        "get",
        "get_now",
        "update",
        "delete",
        "list",
        "record_last_used",
        "subscribe",
        "remember_pepper",
    ];

    /// A store that notes each call, and answers `subscribe` unlike the default body.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<&'static str>>);

    impl Recorder {
        fn note(&self, method: &'static str) {
            self.0.lock().unwrap().push(method);
        }
    }

    #[async_trait]
    impl KeyStore for Recorder {
        async fn insert(&self, _: KeyRecord) -> Result<(), StoreError> {
            self.note("insert");
            Ok(())
        }
        async fn get(&self, _: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
            self.note("get");
            Ok(None)
        }
        fn get_now(&self, _: KeyId) -> Option<Result<Option<Arc<KeyRecord>>, StoreError>> {
            self.note("get_now");
            Some(Ok(None))
        }
        async fn update(&self, _: KeyId, _: &KeyPatch) -> Result<Option<KeyRecord>, StoreError> {
            self.note("update");
            Ok(None)
        }
        async fn delete(&self, _: KeyId) -> Result<bool, StoreError> {
            self.note("delete");
            Ok(false)
        }
        async fn list(&self, _: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
            self.note("list");
            Ok(Vec::new())
        }
        async fn record_last_used(&self, _: &[(KeyId, DateTime<Utc>)]) -> Result<(), StoreError> {
            self.note("record_last_used");
            Ok(())
        }
        async fn subscribe(&self, _: Weak<dyn ChangeListener>) -> Result<bool, StoreError> {
            self.note("subscribe");
            Ok(true)
        }
        async fn remember_pepper(
            &self,
            _: u32,
            _: PepperFingerprint,
        ) -> Result<Option<PepperFingerprint>, StoreError> {
            self.note("remember_pepper");
            Ok(None)
        }
    }

    struct Deaf;

    impl ChangeListener for Deaf {
        fn changed(&self, _: KeyId) {}
        fn resync(&self) {}
    }

    async fn call_every_method(store: &impl KeyStore) {
        let id = KeyId::random();
        store.insert(record(KeyFormat::Opaque)).await.unwrap();
        store.get(id).await.unwrap();
        assert!(
            store.get_now(id).is_some(),
            "get_now answered with the default body"
        );
        store.update(id, &KeyPatch::default()).await.unwrap();
        store.delete(id).await.unwrap();
        store.list(&ListQuery::new()).await.unwrap();
        store.record_last_used(&[(id, Utc::now())]).await.unwrap();
        let listener: Weak<dyn ChangeListener> = Weak::<Deaf>::new();
        assert!(
            store.subscribe(listener).await.unwrap(),
            "subscribe answered with the default body"
        );
        let fingerprint = PepperFingerprint::from_bytes([1; 32]);
        store.remember_pepper(1, fingerprint).await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn arc_forwards_every_method() {
        let inner = Arc::new(Recorder::default());
        call_every_method(&inner).await;
        assert_eq!(*inner.0.lock().unwrap(), METHODS);

        // Unsized too: what a gate holds.
        let inner = Arc::new(Recorder::default());
        let shared: Arc<dyn KeyStore> = inner.clone();
        call_every_method(&shared).await;
        assert_eq!(*inner.0.lock().unwrap(), METHODS);
    }
}
