//! [`RedisStore`]: key records in Redis, with a pub/sub change feed.
//!
//! Inside this module `redis` is this module itself; the driver crate is always spelled
//! `::redis`.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use ::redis::{
    AsyncConnectionConfig, Client, IntoConnectionInfo, Msg, ProtocolVersion, PushInfo, PushKind,
    RedisError, Script,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::{ChangeListener, KeyStore, ListQuery, StoreError};
use crate::hash::{HashScheme, PepperFingerprint, SecretHash};
use crate::key::{KeyFormat, KeyId};
use crate::record::{KeyPatch, KeyRecord, Metadata};

/// How often an idle change feed checks that its listener is still alive and PINGs the
/// server (to notice a connection that died without closing).
const FEED_TICK: Duration = Duration::from_secs(2);
/// First and longest pause between change-feed reconnection attempts (doubling).
const FEED_BACKOFF_MIN: Duration = Duration::from_millis(100);
const FEED_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Read-modify-write rounds [`KeyStore::update`] and [`KeyStore::delete`] attempt before
/// giving up on a record that keeps changing under them.
const MAX_CAS_ATTEMPTS: usize = 32;

/// The `CLIENT SETNAME` of [`RedisStore`] change-feed connections, as `CLIENT LIST` shows
/// them.
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub const FEED_CLIENT_NAME: &str = "keygate-feed";

/// How a [`RedisStore`] connects and where it keeps its keys.
///
/// ```
/// use std::time::Duration;
/// use keygate::RedisConfig;
///
/// let config = RedisConfig::new()
///     .namespace("myapp:keys:")
///     .connection_timeout(Duration::from_secs(1))
///     .response_timeout(Duration::from_millis(500));
/// # let _ = config;
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Prefix of every key and of the change channel, so several applications (or test
    /// runs) can share one Redis database. Default `"keygate:"`.
    pub namespace: String,
    /// How long one attempt to (re)connect may take. Default 2 s.
    pub connection_timeout: Duration,
    /// How long any one store call may take, including waiting for a reconnect, before it
    /// fails with [`StoreError::Timeout`]. Also the per-command response timeout of the
    /// underlying connection. Default 1 s.
    pub response_timeout: Duration,
}

#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
impl RedisConfig {
    /// The defaults: namespace `"keygate:"`, 2 s to connect, 1 s per call.
    pub fn new() -> Self {
        Self {
            namespace: "keygate:".to_owned(),
            connection_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(1),
        }
    }

    /// Sets [`namespace`](Self::namespace).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets [`connection_timeout`](Self::connection_timeout).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Sets [`response_timeout`](Self::response_timeout).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connection_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_max_delay(Duration::from_millis(500))
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// A [`KeyStore`] in Redis (feature `redis`), shared by any number of app servers, with a
/// pub/sub change feed so that a [`CachedStore`](crate::CachedStore) on every node drops a
/// revoked key at once ([`CachedStore::follow_changes`](crate::CachedStore::follow_changes)).
///
/// ```no_run
/// use std::time::Duration;
/// use keygate::{CacheConfig, CachedStore, Keygate, Pepper, RedisStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379/").await?;
/// let store = CachedStore::new(store, CacheConfig::new().ttl(Duration::from_secs(30)));
/// assert!(store.follow_changes().await?); // revokes on other nodes reach this cache
/// let gate = Keygate::builder(store, Pepper::new(1, b"load me from a secret store, 32+ bytes")?)
///
///     .build()?;
/// # let _ = gate; Ok(()) }
/// ```
///
/// # Layout
///
/// With the default namespace `keygate:`:
///
/// | key | type | holds |
/// |---|---|---|
/// | `keygate:key:<id>` | string | the record as JSON, without `last_used_at` (see below) |
/// | `keygate:last_used` | hash | field `<id>`: `last_used_at` in Unix microseconds |
/// | `keygate:ids` | sorted set | every id, all scores 0 (so lexical order is id order) |
/// | `keygate:owner:<owner>` | sorted set | the owner's ids, likewise |
/// | `keygate:changes` | pub/sub channel | the id of every inserted, updated or deleted record |
/// | `keygate:peppers` | hash | field `<version>`: that pepper version's [`PepperFingerprint`] (32 bytes) |
///
/// Ids are hyphenated lowercase UUIDs. Every write that touches more than one key is one
/// Lua script, so it is atomic; [`update`](KeyStore::update) reads the record, applies the
/// patch here and writes it back only if the record is unchanged (else it re-reads), so
/// concurrent updates never lose each other. Last-used times live in their own hash so a
/// batch never rewrites records; they are kept to the microsecond and publish no change
/// notices.
///
/// A record's JSON has exactly the fields `id`, `format`, `hash` (`{"version", "digest",
/// "scheme"}` or `null`), `name`, `description`, `owner`, `created_by`, `created_at`,
/// `updated_at`, `expires_at`, `last_used_at` (always `null`), `active`, `scopes` and
/// `metadata`, every one of them present (`null` where the record has none), and its `id`
/// is the one in its key name; anything else (a missing or unknown field, another id) is
/// [`StoreError::Corrupt`], never a default. Only `hash.scheme` may be absent: hashes
/// written before keygate had schemes are of the
/// [`HashScheme::Secret`](crate::HashScheme::Secret) kind.
///
/// # Connections and failures
///
/// Commands go through one multiplexed [`ConnectionManager`], which reconnects by itself
/// after the server or network drops the connection; a read that hits a dropped connection
/// is retried once. Every call is bounded by [`RedisConfig::response_timeout`]
/// ([`StoreError::Timeout`]), and a call that times out also replaces the connection (at
/// most once per connection-plus-response timeout), since a connection whose peer went
/// silent would otherwise never be dropped; a call cancelled by its caller first (e.g. by a
/// shorter [`KeygateBuilder::store_timeout`](crate::KeygateBuilder::store_timeout)) makes
/// the store PING in the background to find out. Other failures are [`StoreError::Backend`]
/// with the [`RedisError`] as source. The change feed uses one more connection per
/// [`subscribe`](KeyStore::subscribe), which speaks RESP3 (Redis 6 or later, Valkey) and
/// is named [`FEED_CLIENT_NAME`].
///
/// Cheap to clone; clones share the connection. Needs a Tokio runtime with the timer
/// enabled. Redis Cluster is not supported (the scripts touch keys of many slots): point
/// the store at one server (a primary, not a replica).
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    manager: Mutex<Current>,
    /// A liveness probe of a cancelled call is under way.
    probing: AtomicBool,
    config: RedisConfig,
    keys: Keys,
}

/// The connection manager in use, and since when.
struct Current {
    manager: ConnectionManager,
    since: Instant,
}

/// The key names of one namespace.
#[derive(Clone)]
struct Keys {
    record_prefix: String,
    ids: String,
    last_used: String,
    owner_prefix: String,
    channel: String,
}

impl Keys {
    fn new(ns: &str) -> Self {
        Self {
            record_prefix: format!("{ns}key:"),
            ids: format!("{ns}ids"),
            last_used: format!("{ns}last_used"),
            owner_prefix: format!("{ns}owner:"),
            channel: format!("{ns}changes"),
        }
    }

    fn record(&self, id: &str) -> String {
        format!("{}{id}", self.record_prefix)
    }

    fn owner(&self, owner: &str) -> String {
        format!("{}{owner}", self.owner_prefix)
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
impl RedisStore {
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379/0`, `rediss://…` with a TLS feature
    /// of the `redis` crate, `redis+unix:///run/redis.sock`) with the default
    /// [`RedisConfig`].
    ///
    /// Fails, rather than waiting for the server, if it cannot be reached within
    /// [`RedisConfig::connection_timeout`] (plus one response timeout).
    pub async fn connect(url: impl IntoConnectionInfo) -> Result<Self, StoreError> {
        Self::connect_with(url, RedisConfig::new()).await
    }

    /// [`connect`](Self::connect) with a configuration.
    pub async fn connect_with(
        url: impl IntoConnectionInfo,
        config: RedisConfig,
    ) -> Result<Self, StoreError> {
        let client = Client::open(url).map_err(backend)?;
        Self::from_client(client, config).await
    }

    /// Connects with a [`Client`] built by the caller (e.g. with TLS settings).
    pub async fn from_client(client: Client, config: RedisConfig) -> Result<Self, StoreError> {
        let limit = config
            .connection_timeout
            .saturating_add(config.response_timeout);
        let probe_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connection_timeout))
            .set_response_timeout(Some(config.response_timeout));
        let connect = async {
            // One plain attempt first: a wrong address or password fails now, with the
            // server's answer, instead of after the manager's backoff.
            let mut probe = client
                .get_multiplexed_async_connection_with_config(&probe_config)
                .await?;
            ::redis::cmd("PING").exec_async(&mut probe).await?;
            drop(probe);
            ConnectionManager::new_with_config(client.clone(), config.manager_config()).await
        };
        let manager = match tokio::time::timeout(limit, connect).await {
            Ok(result) => result.map_err(backend)?,
            Err(_) => return Err(StoreError::Timeout),
        };
        Ok(Self::from_manager(client, manager, config))
    }

    /// Wraps a [`ConnectionManager`] the caller already has; `client` must point at the same
    /// server (the change feed opens its own connection from it).
    /// [`RedisConfig::connection_timeout`] then only applies to the change feed.
    ///
    /// Should a call time out on it (see [`RedisStore`], "Connections and failures"), it is
    /// replaced by one made from `client` and `config`.
    pub fn from_manager(client: Client, manager: ConnectionManager, config: RedisConfig) -> Self {
        let keys = Keys::new(&config.namespace);
        Self {
            shared: Arc::new(Shared {
                client,
                manager: Mutex::new(Current {
                    manager,
                    since: Instant::now(),
                }),
                probing: AtomicBool::new(false),
                config,
                keys,
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RedisConfig {
        &self.shared.config
    }

    /// The key namespace ([`RedisConfig::namespace`]).
    pub fn namespace(&self) -> &str {
        &self.shared.config.namespace
    }

    /// The pub/sub channel change notices are published on (`<namespace>changes`); each
    /// message is the id of a record that was inserted, updated or deleted.
    pub fn channel(&self) -> &str {
        &self.shared.keys.channel
    }

    /// A handle to the store's current connection, e.g. for health checks. Commands sent
    /// through it share the store's connection.
    pub fn connection(&self) -> ConnectionManager {
        self.conn()
    }

    fn current(&self) -> MutexGuard<'_, Current> {
        // Nothing can panic while the lock is held; a poisoned lock is still consistent.
        self.shared
            .manager
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn conn(&self) -> ConnectionManager {
        self.current().manager.clone()
    }

    /// A call timed out. The manager reconnects by itself only once it *sees* the
    /// connection fail; a connection whose peer went silent (a partition, a firewall that
    /// dropped its state) just times out, forever. So start over with a fresh manager,
    /// at most once per connect-plus-response timeout; calls still running on the old
    /// one finish there.
    fn timed_out(&self) {
        let config = &self.shared.config;
        let mut current = self.current();
        if current.since.elapsed()
            < config
                .connection_timeout
                .saturating_add(config.response_timeout)
        {
            return;
        }
        match ConnectionManager::new_lazy_with_config(
            self.shared.client.clone(),
            config.manager_config(),
        ) {
            Ok(manager) => {
                tracing::warn!(target: "keygate", "redis call timed out; replacing the connection");
                *current = Current {
                    manager,
                    since: Instant::now(),
                };
            }
            Err(e) => {
                tracing::warn!(target: "keygate", error = %e, "redis call timed out; cannot make a new connection")
            }
        }
    }

    fn keys(&self) -> &Keys {
        &self.shared.keys
    }

    /// A call was cancelled before it finished, typically by a caller's shorter timeout
    /// ([`KeygateBuilder::store_timeout`](crate::KeygateBuilder::store_timeout)), so this
    /// store never saw whether it would have timed out. PING in the background (one probe
    /// at a time) and treat silence as a timeout, so a silent connection is replaced even
    /// when every caller gives up first.
    fn probe(&self) {
        if self.shared.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.shared.probing.store(false, Ordering::Release);
            return;
        };
        let store = self.clone();
        runtime.spawn(async move {
            let mut conn = store.conn();
            let ping = ::redis::cmd("PING");
            let limit = store.shared.config.response_timeout;
            let silent = match tokio::time::timeout(limit, ping.exec_async(&mut conn)).await {
                Err(_) => true,
                Ok(Err(e)) => e.is_timeout(),
                Ok(Ok(())) => false,
            };
            if silent {
                store.timed_out();
            }
            store.shared.probing.store(false, Ordering::Release);
        });
    }

    /// Runs one store call under the response timeout.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mut watch = Unfinished(Some(self));
        let result = match tokio::time::timeout(self.shared.config.response_timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout),
        };
        watch.0 = None;
        if matches!(result, Err(StoreError::Timeout)) {
            self.timed_out();
        }
        result
    }

    /// Runs an idempotent read, once more if the connection turned out to be dead (the
    /// manager is reconnecting by then).
    async fn read<T, F, Fut>(&self, read: F) -> Result<T, StoreError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.bounded(async {
            match read(self.conn()).await {
                Err(e) if e.is_unrecoverable_error() || e.is_connection_dropped() => {
                    tracing::debug!(target: "keygate", error = %e, "redis connection lost; retrying read");
                    read(self.conn()).await.map_err(backend)
                }
                other => other.map_err(backend),
            }
        })
        .await
    }

    /// The current JSON and last-used time of a record, in one round trip.
    async fn fetch(
        conn: &mut ConnectionManager,
        keys: &Keys,
        id: &str,
    ) -> Result<(Option<Vec<u8>>, Option<Vec<u8>>), RedisError> {
        ::redis::pipe()
            .cmd("GET")
            .arg(keys.record(id))
            .cmd("HGET")
            .arg(&keys.last_used)
            .arg(id)
            .query_async(conn)
            .await
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("server", &self.shared.client.get_connection_info().addr())
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// Probes the connection if a call is dropped before it finishes.
struct Unfinished<'a>(Option<&'a RedisStore>);

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(store) = self.0 {
            store.probe();
        }
    }
}

fn backend(error: RedisError) -> StoreError {
    if error.is_timeout() {
        StoreError::Timeout
    } else {
        StoreError::backend(error)
    }
}

fn corrupt(error: impl StdError + Send + Sync + 'static) -> StoreError {
    StoreError::Corrupt(Box::new(error))
}

/// A record that kept changing under a read-modify-write.
#[derive(Debug)]
struct Contention(KeyId);

impl fmt::Display for Contention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "record {} changed during {MAX_CAS_ATTEMPTS} read-modify-write attempts in a row",
            self.0
        )
    }
}

impl StdError for Contention {}

/// A stored last-used value that is not Unix microseconds.
#[derive(Debug)]
struct BadLastUsed(String);

impl fmt::Display for BadLastUsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "last-used value {:?} is not Unix microseconds", self.0)
    }
}

impl StdError for BadLastUsed {}

/// A record as written: the same JSON shape keygate always wrote (that of [`KeyRecord`]),
/// with `last_used_at` always `null` (the time lives in the `last_used` hash).
#[derive(Serialize)]
struct StoredOut<'a> {
    id: KeyId,
    format: KeyFormat,
    hash: Option<StoredHash>,
    name: &'a str,
    description: Option<&'a str>,
    owner: &'a str,
    created_by: Option<&'a str>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: (),
    active: bool,
    scopes: Option<&'a std::collections::BTreeSet<String>>,
    metadata: &'a Metadata,
}

/// A record as read: every field required, `Option`s included (present, possibly
/// `null`), and nothing else allowed. Deliberately not [`KeyRecord`]'s own serde shape,
/// where a missing `scopes`, `expires_at` or `hash` would read as unscoped,
/// never-expiring or signature-only: failing open.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredIn {
    id: KeyId,
    format: KeyFormat,
    #[serde(deserialize_with = "Option::deserialize")]
    hash: Option<StoredHash>,
    name: String,
    #[serde(deserialize_with = "Option::deserialize")]
    description: Option<String>,
    owner: String,
    #[serde(deserialize_with = "Option::deserialize")]
    created_by: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    #[serde(deserialize_with = "Option::deserialize")]
    expires_at: Option<DateTime<Utc>>,
    /// Must be `null`.
    #[allow(dead_code)]
    last_used_at: (),
    active: bool,
    #[serde(deserialize_with = "Option::deserialize")]
    scopes: Option<std::collections::BTreeSet<String>>,
    metadata: Metadata,
}

/// A stored hash. `scheme` alone may be missing: records written before schemes existed
/// hold hashes of the secret alone.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredHash {
    version: u32,
    #[serde(with = "crate::hash::hex32")]
    digest: [u8; 32],
    #[serde(default)]
    scheme: HashScheme,
}

impl From<&SecretHash> for StoredHash {
    fn from(hash: &SecretHash) -> Self {
        Self {
            version: hash.version,
            digest: hash.digest,
            scheme: hash.scheme,
        }
    }
}

/// A stored record whose `id` is not the one in its key name.
#[derive(Debug)]
struct MisplacedRecord;

impl fmt::Display for MisplacedRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stored record's id is not the id it is stored under")
    }
}

impl StdError for MisplacedRecord {}

/// The record as stored: JSON without `last_used_at`.
fn encode(record: &KeyRecord) -> Result<Vec<u8>, StoreError> {
    let stored = StoredOut {
        id: record.id,
        format: record.format,
        hash: record.hash.as_ref().map(StoredHash::from),
        name: &record.name,
        description: record.description.as_deref(),
        owner: &record.owner,
        created_by: record.created_by.as_deref(),
        created_at: record.created_at,
        updated_at: record.updated_at,
        expires_at: record.expires_at,
        last_used_at: (),
        active: record.active,
        scopes: record.scopes.as_ref(),
        metadata: &record.metadata,
    };
    serde_json::to_vec(&stored).map_err(StoreError::backend)
}

/// The record stored under `id`, strictly: see [`StoredIn`].
fn decode(id: KeyId, json: &[u8], last_used: Option<&[u8]>) -> Result<KeyRecord, StoreError> {
    let stored: StoredIn = serde_json::from_slice(json).map_err(corrupt)?;
    if stored.id != id {
        return Err(corrupt(MisplacedRecord));
    }
    Ok(KeyRecord {
        id: stored.id,
        format: stored.format,
        hash: stored.hash.map(|h| SecretHash {
            version: h.version,
            digest: h.digest,
            scheme: h.scheme,
        }),
        name: stored.name,
        description: stored.description,
        owner: stored.owner,
        created_by: stored.created_by,
        created_at: stored.created_at,
        updated_at: stored.updated_at,
        expires_at: stored.expires_at,
        last_used_at: last_used.map(decode_micros).transpose()?,
        active: stored.active,
        scopes: stored.scopes,
        metadata: stored.metadata,
    })
}

/// An id from a listing's index, which must be a key id.
fn decode_id(raw: &[u8]) -> Result<KeyId, StoreError> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt(MisplacedRecord))
}

fn decode_micros(raw: &[u8]) -> Result<DateTime<Utc>, StoreError> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(|| corrupt(BadLastUsed(String::from_utf8_lossy(raw).into_owned())))
}

/// Lowercase hex SHA-1, as Lua's `redis.sha1hex` computes it: the compare half of
/// compare-and-set (it saves sending a large record back).
fn sha1_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

// KEYS: record, ids, owner index, last_used. ARGV: json, id, channel, last-used micros or "".
static INSERT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[2])
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[4], ARGV[2])
else
  redis.call('HSET', KEYS[4], ARGV[2], ARGV[4])
end
redis.call('PUBLISH', ARGV[3], ARGV[2])
return 1
"#,
    )
});

// KEYS: record, old owner index, new owner index.
// ARGV: sha1 of the JSON the patch was applied to, new json, id, channel.
// 1 written, 0 the record changed meanwhile, -1 it is gone.
static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local current = redis.call('GET', KEYS[1])
if not current then return -1 end
if redis.sha1hex(current) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
if KEYS[2] ~= KEYS[3] then
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('ZADD', KEYS[3], 0, ARGV[3])
end
redis.call('PUBLISH', ARGV[4], ARGV[3])
return 1
"#,
    )
});

// KEYS: record, ids, owner index (or the ids again when the owner is unreadable), last_used.
// ARGV: sha1 of the JSON read, id, channel.
// 1 deleted, 0 the record changed meanwhile, -1 there was none.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local current = redis.call('GET', KEYS[1])
if not current then return -1 end
if redis.sha1hex(current) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[2])
return 1
"#,
    )
});

// KEYS: last_used, then the record key of each pair. ARGV: id1, micros1, id2, micros2, ...
static LAST_USED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local id = ARGV[2 * i - 3]
    local at = ARGV[2 * i - 2]
    local current = tonumber(redis.call('HGET', KEYS[1], id))
    if not current or current < tonumber(at) then
      redis.call('HSET', KEYS[1], id, at)
    end
  end
end
return 0
"#,
    )
});

// KEYS: index, last_used. ARGV: lexical lower bound, limit, record key prefix.
// Returns id, json, last-used for each listed id, from one consistent snapshot.
static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local ids = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], '+', 'LIMIT', 0, ARGV[2])
local out = {}
for i, id in ipairs(ids) do
  out[3 * i - 2] = id
  out[3 * i - 1] = redis.call('GET', ARGV[3] .. id)
  out[3 * i] = redis.call('HGET', KEYS[2], id)
end
return out
"#,
    )
});

/// Only the owner of a stored record (enough to find its index even if the rest no longer
/// parses as a [`KeyRecord`]).
#[derive(Deserialize)]
struct OwnerOnly {
    owner: String,
}

#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[async_trait]
impl KeyStore for RedisStore {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        let json = encode(&record)?;
        let id = record.id.to_string();
        let keys = self.keys();
        let last_used = record
            .last_used_at
            .map(|at| at.timestamp_micros().to_string())
            .unwrap_or_default();
        let inserted: i64 = self
            .bounded(async {
                INSERT
                    .key(keys.record(&id))
                    .key(&keys.ids)
                    .key(keys.owner(&record.owner))
                    .key(&keys.last_used)
                    .arg(json)
                    .arg(&id)
                    .arg(&keys.channel)
                    .arg(last_used)
                    .invoke_async(&mut self.conn())
                    .await
                    .map_err(backend)
            })
            .await?;
        if inserted == 0 {
            return Err(StoreError::Conflict(record.id));
        }
        Ok(())
    }

    async fn get(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let id_str = id.to_string();
        let keys = self.keys();
        let (json, last_used) = self
            .read(|mut conn| {
                let id = &id_str;
                async move { Self::fetch(&mut conn, keys, id).await }
            })
            .await?;
        match json {
            None => Ok(None),
            Some(json) => Ok(Some(Arc::new(decode(id, &json, last_used.as_deref())?))),
        }
    }

    async fn update(&self, id: KeyId, patch: &KeyPatch) -> Result<Option<KeyRecord>, StoreError> {
        let id_str = id.to_string();
        let keys = self.keys();
        self.bounded(async {
            let mut conn = self.conn();
            for _ in 0..MAX_CAS_ATTEMPTS {
                let (json, last_used) = Self::fetch(&mut conn, keys, &id_str)
                    .await
                    .map_err(backend)?;
                let Some(json) = json else {
                    return Ok(None);
                };
                let mut record = decode(id, &json, last_used.as_deref())?;
                let old_owner = keys.owner(&record.owner);
                // Checked on the copy the CAS below writes over only if unchanged.
                patch.apply(&mut record)?;
                let new_owner = keys.owner(&record.owner);
                let written: i64 = UPDATE
                    .key(keys.record(&id_str))
                    .key(old_owner)
                    .key(new_owner)
                    .arg(sha1_hex(&json))
                    .arg(encode(&record)?)
                    .arg(&id_str)
                    .arg(&keys.channel)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(backend)?;
                match written {
                    1 => return Ok(Some(record)),
                    -1 => return Ok(None),
                    _ => tokio::task::yield_now().await, // changed meanwhile: read again
                }
            }
            Err(StoreError::backend(Contention(id)))
        })
        .await
    }

    async fn delete(&self, id: KeyId) -> Result<bool, StoreError> {
        let id_str = id.to_string();
        let keys = self.keys();
        self.bounded(async {
            let mut conn = self.conn();
            for _ in 0..MAX_CAS_ATTEMPTS {
                let json: Option<Vec<u8>> = ::redis::cmd("GET")
                    .arg(keys.record(&id_str))
                    .query_async(&mut conn)
                    .await
                    .map_err(backend)?;
                let Some(json) = json else {
                    return Ok(false);
                };
                // A record too damaged to name its owner can still be deleted.
                let owner_index = serde_json::from_slice::<OwnerOnly>(&json)
                    .map_or_else(|_| keys.ids.clone(), |r| keys.owner(&r.owner));
                let deleted: i64 = DELETE
                    .key(keys.record(&id_str))
                    .key(&keys.ids)
                    .key(owner_index)
                    .key(&keys.last_used)
                    .arg(sha1_hex(&json))
                    .arg(&id_str)
                    .arg(&keys.channel)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(backend)?;
                match deleted {
                    1 => return Ok(true),
                    -1 => return Ok(false),
                    _ => tokio::task::yield_now().await,
                }
            }
            Err(StoreError::backend(Contention(id)))
        })
        .await
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let keys = self.keys();
        let index = match &query.owner {
            Some(owner) => keys.owner(owner),
            None => keys.ids.clone(),
        };
        let min = query
            .after
            .map_or_else(|| "-".to_owned(), |after| format!("({}", after.id()));
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let rows: Vec<Option<Vec<u8>>> = self
            .read(|mut conn| {
                let (index, min) = (&index, &min);
                async move {
                    LIST.key(index)
                        .key(&keys.last_used)
                        .arg(min)
                        .arg(limit)
                        .arg(&keys.record_prefix)
                        .invoke_async(&mut conn)
                        .await
                }
            })
            .await?;
        let mut records = Vec::with_capacity(rows.len() / 3);
        for row in rows.chunks(3) {
            // An id whose record is missing can only be left by a damaged index: skip it.
            if let [Some(id), Some(json), last_used] = row {
                records.push(decode(decode_id(id)?, json, last_used.as_deref())?);
            }
        }
        Ok(records)
    }

    async fn record_last_used(&self, batch: &[(KeyId, DateTime<Utc>)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let keys = self.keys();
        let mut invocation = LAST_USED.key(&keys.last_used);
        for (id, at) in batch {
            let id = id.to_string();
            invocation
                .key(keys.record(&id))
                .arg(id)
                .arg(at.timestamp_micros());
        }
        self.bounded(async {
            invocation
                .invoke_async::<i64>(&mut self.conn())
                .await
                .map(drop)
                .map_err(backend)
        })
        .await
    }

    /// Subscribes to `<namespace>changes` on a connection of its own and calls
    /// [`ChangeListener::changed`] for every notice, from a spawned task. That task
    /// reconnects with backoff when the connection drops (then calls
    /// [`ChangeListener::resync`]) and ends within a few seconds of the listener being
    /// dropped. Fails if the first subscription cannot be made.
    async fn subscribe(&self, listener: Weak<dyn ChangeListener>) -> Result<bool, StoreError> {
        let feed = Feed::new(&self.shared)?;
        let limit = self.shared.config.connection_timeout + self.shared.config.response_timeout;
        let connection = match tokio::time::timeout(limit, feed.connect()).await {
            Ok(result) => result.map_err(backend)?,
            Err(_) => return Err(StoreError::Timeout),
        };
        tokio::spawn(feed.run(connection, listener));
        Ok(true)
    }

    /// `HSETNX` then `HGET` on `<namespace>peppers`, in one `MULTI`.
    async fn remember_pepper(
        &self,
        version: u32,
        fingerprint: PepperFingerprint,
    ) -> Result<Option<PepperFingerprint>, StoreError> {
        let key = format!("{}{PEPPERS}", self.namespace());
        let (inserted, known): (i64, Option<Vec<u8>>) = self
            .bounded(async {
                ::redis::pipe()
                    .atomic()
                    .cmd("HSETNX")
                    .arg(&key)
                    .arg(version)
                    .arg(&fingerprint.as_bytes()[..])
                    .cmd("HGET")
                    .arg(&key)
                    .arg(version)
                    .query_async(&mut self.conn())
                    .await
                    .map_err(backend)
            })
            .await?;
        if inserted == 1 {
            return Ok(None);
        }
        let known: [u8; 32] = known
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| StoreError::Corrupt("a pepper fingerprint is not 32 bytes".into()))?;
        Ok(Some(PepperFingerprint::from_bytes(known)))
    }
}

/// The hash of pepper fingerprints, after the namespace (see [`KeyStore::remember_pepper`]).
const PEPPERS: &str = "peppers";

/// The change feed of one subscription.
struct Feed {
    client: Client,
    channel: String,
    connection_timeout: Duration,
    response_timeout: Duration,
}

type FeedConnection = (MultiplexedConnection, UnboundedReceiver<PushInfo>);

impl Feed {
    fn new(shared: &Shared) -> Result<Self, StoreError> {
        // Subscribed RESP3 connections still answer PING and take pushes through a plain
        // channel, so the feed needs no stream machinery.
        let info = shared.client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(settings)).map_err(backend)?;
        Ok(Self {
            client,
            channel: shared.keys.channel.clone(),
            connection_timeout: shared.config.connection_timeout,
            response_timeout: shared.config.response_timeout,
        })
    }

    async fn connect(&self) -> Result<FeedConnection, RedisError> {
        let (sender, receiver) = unbounded_channel();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connection_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_push_sender(sender);
        let mut connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        // Only a label for CLIENT LIST: an ACL that forbids it must not stop the feed.
        let _ = ::redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(FEED_CLIENT_NAME)
            .exec_async(&mut connection)
            .await;
        connection.subscribe(&self.channel).await?;
        Ok((connection, receiver))
    }

    async fn run(self, connection: FeedConnection, listener: Weak<dyn ChangeListener>) {
        let (mut connection, mut receiver) = connection;
        loop {
            if !self.follow(&mut connection, &mut receiver, &listener).await {
                return;
            }
            tracing::warn!(target: "keygate", channel = %self.channel, "redis change feed lost; reconnecting");
            drop(receiver);
            let Some(fresh) = self.reconnect(&listener).await else {
                return;
            };
            (connection, receiver) = fresh;
            // Notices published while the feed was down are lost.
            let Some(listener) = listener.upgrade() else {
                return;
            };
            listener.resync();
            tracing::info!(target: "keygate", channel = %self.channel, "redis change feed reconnected; cache resynced");
        }
    }

    /// Passes notices on until the connection fails (`true`) or the listener is gone
    /// (`false`).
    async fn follow(
        &self,
        connection: &mut MultiplexedConnection,
        receiver: &mut UnboundedReceiver<PushInfo>,
        listener: &Weak<dyn ChangeListener>,
    ) -> bool {
        loop {
            match tokio::time::timeout(FEED_TICK, receiver.recv()).await {
                Ok(Some(push)) => match push.kind {
                    PushKind::Message => {
                        let Some(listener) = listener.upgrade() else {
                            return false;
                        };
                        match Msg::from_push_info(push).and_then(|m| parse_id(&m)) {
                            Some(id) => listener.changed(id),
                            None => {
                                tracing::debug!(target: "keygate", channel = %self.channel, "ignoring a malformed change notice")
                            }
                        }
                    }
                    PushKind::Disconnection => return true,
                    _ => {}
                },
                Ok(None) => return true,
                Err(_idle) => {
                    if listener.strong_count() == 0 {
                        return false;
                    }
                    let ping = ::redis::cmd("PING");
                    match tokio::time::timeout(self.response_timeout, ping.exec_async(connection))
                        .await
                    {
                        Ok(Ok(())) => {}
                        _ => return true,
                    }
                }
            }
        }
    }

    async fn reconnect(&self, listener: &Weak<dyn ChangeListener>) -> Option<FeedConnection> {
        let mut delay = FEED_BACKOFF_MIN;
        let limit = self
            .connection_timeout
            .saturating_add(self.response_timeout);
        loop {
            if listener.strong_count() == 0 {
                return None;
            }
            match tokio::time::timeout(limit, self.connect()).await {
                Ok(Ok(connection)) => return Some(connection),
                Ok(Err(e)) => {
                    tracing::debug!(target: "keygate", error = %e, "redis change feed reconnect failed")
                }
                Err(_) => {
                    tracing::debug!(target: "keygate", "redis change feed reconnect timed out")
                }
            }
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2).min(FEED_BACKOFF_MAX);
        }
    }
}

fn parse_id(message: &Msg) -> Option<KeyId> {
    std::str::from_utf8(message.get_payload_bytes())
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_matches_redis_sha1hex() {
        // redis-cli EVAL "return redis.sha1hex('abc')" 0
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[test]
    fn lexical_order_of_ids_is_id_order() {
        let mut ids: Vec<KeyId> = (0..200).map(|_| KeyId::random()).collect();
        let mut texts: Vec<String> = ids.iter().map(ToString::to_string).collect();
        ids.sort();
        texts.sort();
        let sorted: Vec<String> = ids.iter().map(ToString::to_string).collect();
        assert_eq!(sorted, texts);
    }

    /// A record as the code before strict decoding wrote it (`KeyRecord`'s serde shape).
    fn written_before(id: KeyId) -> serde_json::Value {
        serde_json::json!({
            "id": id.to_string(),
            "format": "opaque",
            "hash": {"version": 1, "digest": "ab".repeat(32)},
            "name": "n",
            "description": null,
            "owner": "o",
            "created_by": null,
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
            "expires_at": "2027-01-01T00:00:00Z",
            "last_used_at": null,
            "active": true,
            "scopes": ["a:read"],
            "metadata": {},
        })
    }

    #[test]
    fn records_written_before_still_decode_as_secret_hashes() {
        let id = KeyId::random();
        let json = serde_json::to_vec(&written_before(id)).unwrap();
        let record = decode(id, &json, Some(b"1767225600000000")).unwrap();
        let hash = record.hash.unwrap();
        assert_eq!(hash.scheme, HashScheme::Secret);
        assert_eq!(hash.digest, [0xab; 32]);
        assert_eq!(record.scopes.unwrap().len(), 1);
        assert!(record.expires_at.is_some() && record.last_used_at.is_some());
    }

    #[test]
    fn a_missing_unknown_or_misplaced_field_is_corrupt() {
        let id = KeyId::random();
        let fields = [
            "id",
            "format",
            "hash",
            "name",
            "description",
            "owner",
            "created_by",
            "created_at",
            "updated_at",
            "expires_at",
            "last_used_at",
            "active",
            "scopes",
            "metadata",
        ];
        for field in fields {
            let mut value = written_before(id);
            value.as_object_mut().unwrap().remove(field);
            let json = serde_json::to_vec(&value).unwrap();
            assert!(
                matches!(decode(id, &json, None), Err(StoreError::Corrupt(_))),
                "without {field}"
            );
        }
        let corrupt_with = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut value = written_before(id);
            edit(&mut value);
            let json = serde_json::to_vec(&value).unwrap();
            matches!(decode(id, &json, None), Err(StoreError::Corrupt(_)))
        };
        assert!(corrupt_with(&|v| v["extra"] = serde_json::json!(1)));
        assert!(corrupt_with(&|v| v["hash"]["salt"] = serde_json::json!(1)));
        assert!(corrupt_with(
            &|v| v["hash"]["scheme"] = serde_json::json!("nope")
        ));
        assert!(corrupt_with(
            &|v| v["last_used_at"] = serde_json::json!("2026-01-01T00:00:00Z")
        ));
        assert!(corrupt_with(&|v| v["scopes"] = serde_json::json!([1, 2])));
        assert!(corrupt_with(&|v| v["scopes"] = serde_json::json!({})));
        assert!(corrupt_with(&|v| v["metadata"] = serde_json::json!([])));
        assert!(corrupt_with(
            &|v| v["id"] = serde_json::json!(KeyId::random().to_string())
        ));
        assert!(!corrupt_with(&|_| {}));
    }

    #[test]
    fn last_used_is_not_stored_in_the_json() {
        let now = Utc::now();
        let mut record = KeyRecord {
            id: KeyId::random(),
            format: crate::key::KeyFormat::Opaque,
            hash: None,
            name: "n".into(),
            description: None,
            owner: "o".into(),
            created_by: None,
            created_at: now,
            updated_at: now,
            expires_at: None,
            last_used_at: Some(now),
            active: true,
            scopes: None,
            metadata: crate::record::Metadata::new(),
        };
        let json = encode(&record).unwrap();
        let back = decode(record.id, &json, None).unwrap();
        assert_eq!(back.last_used_at, None);
        record.last_used_at = None;
        assert_eq!(back, record);
    }
}
