//! [`RedisStore`]: key records in Redis, with a pub/sub change feed.
//!
//! This file holds the store, its [`KeyStore`] implementation and its configuration; the
//! verify path ([`KeyStore::get`]) reads top to bottom here, through
//! [`Supervisor::read`](conn::Supervisor::read) and [`stored::decode`]. The other jobs
//! live next door:
//! - `conn`: connection supervision (the first connection, per-call timeouts, replacing
//!   a connection that went silent);
//! - `scripts`: the key layout and the Lua scripts that keep it consistent;
//! - `stored`: the versioned JSON a record is stored as;
//! - `feed`: the pub/sub change feed;
//! - `topology`: one server, a Redis Cluster or Sentinel, and the connection each gives.
//!
//! Inside this module `redis` is this module itself; the driver crate is always spelled
//! `::redis`.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager};
use ::redis::{Client, Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use self::conn::{backend, Supervisor};
use self::scripts::{Cas, Entry, Keys};
use self::topology::{ClusterSeed, Conn, Parsed, SentinelSeed, Target};
use super::{ChangeListener, FeedConfig, KeyStore, ListQuery, StoreError};
use crate::hash::PepperFingerprint;
use crate::key::KeyId;
use crate::record::{KeyPatch, KeyRecord};

mod conn;
mod feed;
mod limits;
mod scripts;
mod stored;
mod tls;
mod topology;

pub(crate) use self::tls::root_cert_in_url;

/// Read-modify-write rounds [`KeyStore::update`] and [`KeyStore::delete`] attempt before
/// giving up on a record that keeps changing under them.
const MAX_CAS_ATTEMPTS: usize = 32;

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
    /// A PEM file of the CA certificates that sign the server's certificate, for a
    /// `rediss://` URL (feature `tls`): the server must present a certificate for the URL's
    /// host name that chains to one of them; the system's root certificates are then not
    /// used. Default `None`: the system's roots. Read by
    /// [`connect_with`](RedisStore::connect_with); [`open_store`](crate::open_store) sets it
    /// from the URL's `sslrootcert` parameter.
    pub tls_root_cert: Option<PathBuf>,
    /// The change feed's heartbeat and lease ([`FeedConfig`]); default
    /// [`FeedConfig::new`]. The feed's heartbeat is also bounded by
    /// [`response_timeout`](Self::response_timeout).
    pub feed: FeedConfig,
    /// Behind Sentinel only: how many replicas must confirm a key-management write
    /// (insert, update, revoke, delete, rotate: every write of a record) before it is
    /// acknowledged, with `WAIT <replicas> <replication_timeout>`; fewer in time is
    /// [`StoreError::Unreplicated`]. Default 1. `0` acknowledges a write once the primary
    /// took it (asynchronous replication: a failover can then lose it). Last-used
    /// batches, limiter checks and reads never wait. Ignored on one server and on a Redis
    /// Cluster.
    pub replicas: u32,
    /// Behind Sentinel: how long `WAIT` may wait for [`replicas`](Self::replicas); a
    /// key-management write may take up to this plus
    /// [`response_timeout`](Self::response_timeout) (plus a connection timeout and a
    /// response timeout when its connection must be made first, after a failover).
    /// Default 1 s.
    pub replication_timeout: Duration,
}

#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
impl RedisConfig {
    /// The defaults: namespace `"keygate:"`, 2 s to connect, 1 s per call; behind
    /// Sentinel, writes wait up to 1 s for 1 replica.
    pub fn new() -> Self {
        Self {
            namespace: "keygate:".to_owned(),
            connection_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(1),
            tls_root_cert: None,
            feed: FeedConfig::new(),
            replicas: 1,
            replication_timeout: Duration::from_secs(1),
        }
    }

    /// Sets [`replicas`](Self::replicas).
    pub fn replicas(mut self, replicas: u32) -> Self {
        self.replicas = replicas;
        self
    }

    /// Sets [`replication_timeout`](Self::replication_timeout).
    pub fn replication_timeout(mut self, timeout: Duration) -> Self {
        self.replication_timeout = timeout;
        self
    }

    /// Sets [`feed`](Self::feed).
    pub fn feed(mut self, feed: FeedConfig) -> Self {
        self.feed = feed;
        self
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

    /// Sets [`tls_root_cert`](Self::tls_root_cert).
    pub fn tls_root_cert(mut self, pem_file: impl Into<PathBuf>) -> Self {
        self.tls_root_cert = Some(pem_file.into());
        self
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
///     .build()?;
/// # let _ = gate; Ok(()) }
/// ```
///
/// # Layout
///
/// Layout version 1, with the default namespace `keygate:` (on a Redis Cluster every name
/// but the limiter's starts with `{keygate:}` instead, see below):
///
/// | key | type | holds |
/// |---|---|---|
/// | `keygate:v1:key:<id>` | string | the record as JSON, without `last_used_at` (see below) |
/// | `keygate:v1:last_used` | hash | field `<id>`: `last_used_at` in Unix microseconds |
/// | `keygate:v1:created` | sorted set | every record's position (below), all scores 0 |
/// | `keygate:v1:owner:<owner>` | sorted set | the owner's records' positions, likewise |
/// | `keygate:v1:change_seq` | string | the change sequence: the number of the latest change |
/// | `keygate:v1:change_log` | sorted set | `<seq>:<id>` scored `<seq>`, for the latest 100 000 changes |
/// | `keygate:changes` | pub/sub channel | `<seq>:<id>` of every inserted, updated or deleted record |
/// | `keygate:peppers` | hash | field `<version>`: that pepper version's [`PepperFingerprint`] (32 bytes) |
///
/// A record's position is `<created_at>:<id>`: its `created_at` in Unix microseconds plus
/// 2^63, as 16 lowercase hex digits, then its id (a hyphenated lowercase UUID). Their byte
/// order is creation order, [`Cursor`](crate::Cursor) order, so [`list`](KeyStore::list) is one
/// `ZRANGEBYLEX` from the cursor's position (exclusive). Keys written by keygate before
/// this layout (no `v1:`) are not read.
///
/// Every write that touches more than one key is one Lua script, so it is atomic, and
/// keeps both indexes in step (an owner change moves the record's position from one owner
/// index to the other). [`update`](KeyStore::update) reads the record, applies the patch
/// here and writes it back only if the record is unchanged (else it re-reads), so
/// concurrent updates never lose each other. Last-used times live in their own hash so a
/// batch never rewrites records; they are kept to the microsecond and publish no change
/// notices. Every other write script also takes the next change number (`INCR`), logs
/// and publishes it, so a feed that missed a notice replays it from the log (see
/// [`FeedConfig`]).
///
/// A record's JSON is private to this store, versioned by its `schema` field (1), with
/// exactly the fields `schema`, `id`, `format` (`"opaque"` or `"jwt"`), `hash`
/// (`{"version", "digest", "scheme"}` or `null`, `scheme` being `"secret"` or `"bound"`),
/// `name`, `description`, `owner`, `created_by`, `created_at`, `updated_at`,
/// `expires_at`, `active`, `scopes` and `metadata`, every one of them present (`null`
/// where the record has none), and its `id` is the one in its key name; anything else (a
/// missing or unknown field, another schema, another id) is [`StoreError::Corrupt`],
/// never a default. It is not [`KeyRecord`]'s serde shape, so changes to that public type
/// do not change data at rest.
///
/// # Limits and credits
///
/// A `RedisStore` is also a [`Limiter`](crate::limits::Limiter): pass it to
/// [`KeygateBuilder::limiter`](crate::KeygateBuilder::limiter) and every app server's gate
/// decides rate limits and credits exactly, on shared state, with one round trip per check
/// (one `EVALSHA` of a script that reads a subject's limits and credits, decides, and
/// writes all of them or nothing). Per subject (a key, or an owner's shared limits) it
/// keeps two hashes, `<namespace>v1:usage:{<subject>}:rl` (GCRA times, expiring a minute
/// after the last one matters) and `<namespace>v1:usage:{<subject>}:cr` (credits, never
/// expiring), which share a hash tag so they sit in one Redis Cluster slot. The script
/// decides at the gate's clock, so app servers must keep their clocks in step.
///
/// ```no_run
/// use keygate::{Keygate, Pepper, RedisStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379/").await?;
/// let gate = Keygate::builder(store.clone(), Pepper::new(1, b"load me from a secret store, 32+ bytes")?)
///     .limiter(store)
///     .build()?;
/// # let _ = gate; Ok(()) }
/// ```
///
/// # Connections and failures
///
/// Commands go through one multiplexed [`ConnectionManager`] (on a Redis Cluster, one
/// cluster connection), which reconnects by itself
/// after the server or network drops the connection; a read that hits a dropped connection
/// is retried once. Every call is bounded by [`RedisConfig::response_timeout`]
/// ([`StoreError::Timeout`]), and a call that times out also replaces the connection (at
/// most once per connection-plus-response timeout), since a connection whose peer went
/// silent would otherwise never be dropped; a call cancelled by its caller first (e.g. by a
/// shorter [`KeygateBuilder::store_timeout`](crate::KeygateBuilder::store_timeout)) makes
/// the store PING in the background to find out. Other failures are [`StoreError::Backend`]
/// with the [`RedisError`](::redis::RedisError) as source. The change feed uses one more
/// connection per [`subscribe`](KeyStore::subscribe), which speaks RESP3 (Redis 6 or
/// later, Valkey) and is named [`RedisStore::FEED_CLIENT_NAME`].
///
/// Cheap to clone; clones share the connection. Needs a Tokio runtime with the timer
/// enabled. Point a single-server store at a primary, not a replica.
///
/// # Redis Cluster and Sentinel
///
/// [`connect_cluster`](Self::connect_cluster) (or [`connect_url`](Self::connect_url) with
/// `redis+cluster://host:port,host:port/`) speaks to a Redis Cluster through the `redis`
/// crate's cluster client, which routes each command to its slot's primary and follows
/// `MOVED`, `ASK` and failovers. Every key of the record layout above then starts with the
/// hash tag `{<namespace>}` (`{keygate:}v1:key:<id>`, `{keygate:}v1:change_seq`, …,
/// `{keygate:}changes`), so each script touches one slot and the change sequence is one
/// atomic counter: the records of a namespace live on one shard (a data set of API keys
/// fits one node; use namespaces to spread several applications). The limiter's keys
/// keep their per-subject tag, so limit and credit traffic, the per-request writes, spreads
/// over every shard. Change notices go over sharded pub/sub (`SPUBLISH` in the write
/// script, `SSUBSCRIBE` on the feed; Redis 7, found out when connecting) to the slot's
/// shard only, else over classic pub/sub; the feed starts over and replays from the change
/// log when its subscription is dropped (a failover or slot move sends `SUNSUBSCRIBE`). A
/// manual `CLUSTER FAILOVER` loses nothing (the replica catches up first); an automatic
/// failover after a primary dies can lose the writes it had not yet replicated, as with any
/// Redis client ([`RedisConfig::replicas`] applies behind Sentinel only).
///
/// [`connect_sentinel`](Self::connect_sentinel) (or `redis+sentinel://host:port,…/<master>`)
/// asks the sentinels for the primary, then uses it as a single server. The store asks the
/// sentinels again every [`FeedConfig::heartbeat`] and moves to a new primary as soon as
/// they name one (and when a call finds its primary gone or read-only); the change feed
/// then reconnects to it and drops its cache, since the new primary's change sequence may
/// not hold what the old one took last. Sentinel promotes the replica before it demotes the
/// old primary, and Redis replicates asynchronously, so a write the old primary took in
/// between could be lost; the store therefore acknowledges a key-management write
/// (insert, update, revoke, delete, rotate) only once `WAIT` saw
/// [`RedisConfig::replicas`] replicas (default 1) hold it, within
/// [`RedisConfig::replication_timeout`] (default 1 s), and fails it with
/// [`StoreError::Unreplicated`] otherwise: a write that returned `Ok` survives the
/// failover, one that failed should be retried. These writes use a connection of their
/// own (`WAIT` blocks the connection it is sent on), so verifies never wait behind them;
/// last-used batches and limiter checks do not wait. With several replicas, ask for all
/// of them to be sure the one Sentinel promotes has the write. TLS to Sentinel (`rediss+sentinel://`) checks the primary's certificate against the
/// system's roots only.
///
/// Both are in the `redis` feature (the `redis` crate's `cluster-async` and `sentinel`
/// features: 7 more crates). A Cluster of Redis older than 7 works without sharded pub/sub.
///
/// # TLS
///
/// With the `tls` feature, a `rediss://` URL connects over TLS (rustls on ring, no
/// OpenSSL), checking that the server's certificate names the URL's host and chains to a
/// trusted CA: the system's root certificates, or only the CA file of
/// [`RedisConfig::tls_root_cert`] (`sslrootcert=/path/ca.pem` in a URL given to
/// [`open_store`](crate::open_store) or the CLI). A failed handshake (an unknown CA, a
/// server that does not speak TLS) is [`StoreError::Backend`]; keygate never retries in
/// cleartext. `rediss://…#insecure` (no certificate check) is refused, and so are
/// `rediss://` and a CA file on a build without `tls` ([`StoreError::TlsUnavailable`]).
/// The change feed's connection uses the same settings.
///
/// The `redis` driver builds its TLS configuration from rustls's process-wide
/// `CryptoProvider`. If the application installed none when the first `rediss://` store
/// connects, keygate installs rustls's ring provider (the one the `tls` feature compiles
/// in) as that default; install your own before connecting to use another.
///
/// ```no_run
/// use keygate::{RedisConfig, RedisStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), keygate::StoreError> {
/// let config = RedisConfig::new().tls_root_cert("/etc/keygate/redis-ca.pem");
/// let store = RedisStore::connect_with("rediss://:password@cache.internal:6380/0", config).await?;
/// # let _ = store; Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[derive(Clone)]
pub struct RedisStore {
    conn: Arc<Supervisor>,
    keys: Arc<Keys>,
}

#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
impl RedisStore {
    /// The `CLIENT SETNAME` of change-feed connections, as `CLIENT LIST` shows them.
    pub const FEED_CLIENT_NAME: &'static str = "keygate-feed";

    /// Connects to `url` (e.g. `redis://127.0.0.1:6379/0`, `rediss://…` with the `tls`
    /// feature, `redis+unix:///run/redis.sock`) with the default [`RedisConfig`].
    ///
    /// # Errors
    ///
    /// As [`connect_with`](Self::connect_with).
    pub async fn connect(url: impl IntoConnectionInfo) -> Result<Self, StoreError> {
        Self::connect_with(url, RedisConfig::new()).await
    }

    /// [`connect`](Self::connect) with a configuration.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use keygate::{RedisConfig, RedisStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), keygate::StoreError> {
    /// let config = RedisConfig::new()
    ///     .namespace("myapp:keys:")
    ///     .response_timeout(Duration::from_millis(500));
    /// let store = RedisStore::connect_with("redis://127.0.0.1:6379/", config).await?;
    /// # let _ = store; Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidUrl`] if `url` does not parse (the message never repeats the
    /// URL, which may hold a password), ends in `#insecure`, or the CA file of
    /// [`RedisConfig::tls_root_cert`] is unreadable, holds no certificate or comes with a
    /// cleartext URL; [`StoreError::TlsUnavailable`] for `rediss://` or a CA file on a
    /// build without the `tls` feature; otherwise as [`from_client`](Self::from_client).
    pub async fn connect_with(
        url: impl IntoConnectionInfo,
        config: RedisConfig,
    ) -> Result<Self, StoreError> {
        let client = tls::client(url, &config)?;
        Self::from_client(client, config).await
    }

    /// Connects to the store URL `url`: a single server (`redis://`, `rediss://`,
    /// `redis+unix://`, as [`connect_with`](Self::connect_with)), a Redis Cluster
    /// (`redis+cluster://host:port,host:port/`, as [`connect_cluster`](Self::connect_cluster)),
    /// or the primary Sentinel names (`redis+sentinel://host:port,host:port/<master>[/<db>]`,
    /// as [`connect_sentinel`](Self::connect_sentinel)). The `rediss+cluster://` and
    /// `rediss+sentinel://` schemes ask for TLS (feature `tls`). A URL's user and password
    /// are every node's (Cluster) or the primary's (Sentinel; the sentinels are asked
    /// without them). [`open_store`](crate::open_store) and the CLI call this.
    ///
    /// ```no_run
    /// use keygate::{RedisConfig, RedisStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), keygate::StoreError> {
    /// let cluster = RedisStore::connect_url(
    ///     "redis+cluster://:password@10.0.0.1:6379,10.0.0.2:6379,10.0.0.3:6379/",
    ///     RedisConfig::new(),
    /// )
    /// .await?;
    /// let sentinel = RedisStore::connect_url(
    ///     "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379/keygate",
    ///     RedisConfig::new(),
    /// )
    /// .await?;
    /// # let _ = (cluster, sentinel); Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`connect_with`](Self::connect_with), [`connect_cluster`](Self::connect_cluster)
    /// or [`connect_sentinel`](Self::connect_sentinel); [`StoreError::InvalidUrl`] if a
    /// cluster URL names no node or a database other than 0, or a Sentinel URL names no
    /// master.
    pub async fn connect_url(url: &str, config: RedisConfig) -> Result<Self, StoreError> {
        match topology::parse(url)? {
            None => Self::connect_with(url, config).await,
            Some(Parsed::Cluster(nodes)) => Self::connect_cluster(nodes, config).await,
            Some(Parsed::Sentinel(sentinels, master)) => {
                Self::connect_sentinel(sentinels, &master, config).await
            }
        }
    }

    /// Connects to a Redis Cluster through any of its `nodes` (e.g.
    /// `["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]`; the others are found from
    /// them). Commands go to the node that serves their slot; the driver follows `MOVED`
    /// and `ASK` and finds the new primary after a failover. Every key of the record layout
    /// carries the hash tag `{<namespace>}` (see [`RedisStore`], "Redis Cluster and
    /// Sentinel"), so the namespace may not contain `{` or `}`. Change notices go over
    /// sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`) when the servers have it (Redis 7), else
    /// over classic pub/sub.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidUrl`] if a node URL does not parse, names a database other
    /// than 0, or the namespace holds `{` or `}`; the TLS errors of
    /// [`connect_with`](Self::connect_with); [`StoreError::Timeout`] if no node answers
    /// within [`RedisConfig::connection_timeout`] plus one response timeout;
    /// [`StoreError::Backend`] if the cluster refuses the connection or is not serving
    /// every slot.
    pub async fn connect_cluster<T: IntoConnectionInfo>(
        nodes: impl IntoIterator<Item = T>,
        config: RedisConfig,
    ) -> Result<Self, StoreError> {
        let nodes = topology::infos(nodes).map_err(tls::url_error)?;
        if nodes.is_empty() {
            return Err(StoreError::InvalidUrl(
                "a Redis Cluster needs at least one node".to_owned(),
            ));
        }
        if nodes.iter().any(|n| n.redis_settings().db() != 0) {
            return Err(StoreError::InvalidUrl(
                "a Redis Cluster has only database 0".to_owned(),
            ));
        }
        if config.namespace.contains(['{', '}']) {
            return Err(StoreError::InvalidUrl(
                "on a Redis Cluster the namespace becomes a hash tag, so it may not contain \
                 '{' or '}'"
                    .to_owned(),
            ));
        }
        let root_cert = tls::check_many(&nodes, &config, true)?;
        let target = Target::Cluster(Arc::new(ClusterSeed { nodes, root_cert }));
        Self::open_target(target, config).await
    }

    /// Connects to the primary the `sentinels` (e.g. `["redis://10.0.0.1:26379"]`) name
    /// for `master`, with the first URL's user, password and database (the sentinels
    /// themselves are asked without them). When a call finds that primary gone, refusing
    /// connections or answering as a replica (`READONLY`) after a failover, the store asks
    /// the sentinels again and connects to the new primary; so does the change feed when it
    /// reconnects. Key-management writes wait for [`RedisConfig::replicas`] replicas
    /// (see [`RedisStore`], "Redis Cluster and Sentinel").
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidUrl`] if a URL does not parse or a CA file is configured
    /// (`rediss+sentinel://` checks the primary's certificate against the system's roots);
    /// otherwise as [`from_client`](Self::from_client), including when no sentinel knows
    /// `master`.
    pub async fn connect_sentinel<T: IntoConnectionInfo>(
        sentinels: impl IntoIterator<Item = T>,
        master: &str,
        config: RedisConfig,
    ) -> Result<Self, StoreError> {
        let infos = topology::infos(sentinels).map_err(tls::url_error)?;
        let Some(first) = infos.first() else {
            return Err(StoreError::InvalidUrl(
                "Sentinel needs at least one sentinel".to_owned(),
            ));
        };
        tls::check_many(&infos, &config, false)?;
        let redis = first.redis_settings().clone();
        let tls = matches!(first.addr(), ::redis::ConnectionAddr::TcpTls { .. });
        let sentinels = infos
            .into_iter()
            .map(|i| i.set_redis_settings(::redis::RedisConnectionInfo::default()))
            .collect();
        let target = Target::Sentinel(Arc::new(SentinelSeed {
            sentinels,
            master: master.to_owned(),
            redis,
            tls,
            switches: std::sync::atomic::AtomicU64::new(0),
        }));
        Self::open_target(target, config).await
    }

    async fn open_target(target: Target, config: RedisConfig) -> Result<Self, StoreError> {
        let conn = conn::connect(&target, &config).await?;
        Self::assemble(target, conn, config).await
    }

    /// The store over `conn`; on a cluster, finds out whether it has sharded pub/sub.
    async fn assemble(
        target: Target,
        mut conn: Conn,
        config: RedisConfig,
    ) -> Result<Self, StoreError> {
        let cluster = target.is_cluster();
        let sharded = cluster && {
            let limit = conn::connect_limit(&config);
            let cmd = ::redis::cmd("COMMAND").arg("INFO").arg("SPUBLISH").clone();
            let info = cmd.query_async::<Vec<Value>>(&mut conn);
            match tokio::time::timeout(limit, info).await {
                Ok(Ok(answer)) => answer.iter().any(|v| !matches!(v, Value::Nil)),
                Ok(Err(e)) => return Err(conn::backend(e)),
                Err(_) => return Err(StoreError::Timeout),
            }
        };
        let keys = Keys::new(&config.namespace, cluster, sharded);
        let supervisor = Arc::new(Supervisor::new(target, conn, config));
        conn::watch_primary(&supervisor);
        Ok(Self {
            conn: supervisor,
            keys: Arc::new(keys),
        })
    }

    /// Connects with a [`Client`] built by the caller (e.g. with TLS settings of its own:
    /// [`RedisConfig::tls_root_cert`] is not applied here).
    ///
    /// # Errors
    ///
    /// [`StoreError::Timeout`] if the server cannot be reached within
    /// [`RedisConfig::connection_timeout`] plus one response timeout (it fails rather than
    /// waiting for the server); [`StoreError::Backend`] if it refuses the connection (a
    /// wrong password, say) or connecting fails otherwise.
    pub async fn from_client(client: Client, config: RedisConfig) -> Result<Self, StoreError> {
        Self::open_target(Target::Single(client), config).await
    }

    /// Wraps a [`ConnectionManager`] the caller already has; `client` must point at the same
    /// server (the change feed opens its own connection from it).
    /// [`RedisConfig::connection_timeout`] then only applies to the change feed.
    ///
    /// Should a call time out on it (see [`RedisStore`], "Connections and failures"), it is
    /// replaced by one made from `client` and `config`.
    pub fn from_manager(client: Client, manager: ConnectionManager, config: RedisConfig) -> Self {
        let keys = Keys::new(&config.namespace, false, false);
        Self {
            conn: Arc::new(Supervisor::new(
                Target::Single(client),
                Conn::Single(manager),
                config,
            )),
            keys: Arc::new(keys),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RedisConfig {
        &self.conn.config
    }

    /// The key namespace ([`RedisConfig::namespace`]).
    pub fn namespace(&self) -> &str {
        &self.conn.config.namespace
    }

    /// The pub/sub channel change notices are published on (`<namespace>changes`, on a
    /// Redis Cluster the sharded channel `{<namespace>}changes`); each message is
    /// `<seq>:<id>` of a record that was inserted, updated or deleted.
    pub fn channel(&self) -> &str {
        &self.keys.channel
    }

    /// Whether the store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.conn.target.is_cluster()
    }

    /// A handle to the store's current connection, e.g. for health checks. Commands sent
    /// through it share the store's connection (on a Redis Cluster, they go to the node
    /// of their keys' slot).
    pub fn connection(&self) -> RedisConnection {
        RedisConnection(self.conn.manager())
    }
}

/// A handle to a [`RedisStore`]'s connection ([`RedisStore::connection`]): a
/// [`ConnectionManager`] to one server or the Sentinel primary, or a Redis Cluster
/// connection. Send commands through it as through any [`ConnectionLike`], e.g.
/// `redis::cmd("PING").query_async(&mut conn)`. Cheap to clone.
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[derive(Clone)]
pub struct RedisConnection(Conn);

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Conn::Single(_) | Conn::Feed(_) => "RedisConnection(server)",
            Conn::Cluster(_) => "RedisConnection(cluster)",
        })
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.0.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.0.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("server", &self.conn.target.describe())
            .field("config", &self.conn.config)
            .finish_non_exhaustive()
    }
}

/// A record that kept changing under a read-modify-write.
#[derive(Debug, thiserror::Error)]
#[error("record {0} changed during {MAX_CAS_ATTEMPTS} read-modify-write attempts in a row")]
struct Contention(KeyId);

/// A listed record whose `created_at` or owner is not the one its index entry was made
/// for.
#[derive(Debug, thiserror::Error)]
#[error("record {0} is not where the index has it (its created_at or owner was changed outside keygate)")]
struct OutOfPlace(KeyId);

/// Where `record` is indexed.
fn entry(record: &KeyRecord) -> Entry {
    Entry::new(&record.owner, record.created_at, record.id)
}

#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[async_trait]
impl KeyStore for RedisStore {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        let json = stored::encode(&record)?;
        let id = record.id.to_string();
        let entry = entry(&record);
        let keys = &*self.keys;
        let (id, entry, last_used_at) = (&id, &entry, record.last_used_at);
        let inserted = self
            .conn
            .write(|mut conn| async move {
                let inserted = scripts::insert(&mut conn, keys, id, entry, json, last_used_at)
                    .await
                    .map_err(backend)?;
                Ok((inserted, inserted))
            })
            .await?;
        if !inserted {
            return Err(StoreError::Conflict(record.id));
        }
        Ok(())
    }

    async fn get(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let id_str = id.to_string();
        let keys = &*self.keys;
        let (json, last_used) = self
            .conn
            .read(|mut conn| {
                let id = &id_str;
                async move { scripts::fetch(&mut conn, keys, id).await }
            })
            .await?;
        match json {
            None => Ok(None),
            Some(json) => Ok(Some(Arc::new(stored::decode(
                id,
                &json,
                last_used.as_deref(),
            )?))),
        }
    }

    async fn update(&self, id: KeyId, patch: &KeyPatch) -> Result<Option<KeyRecord>, StoreError> {
        let id_str = id.to_string();
        let keys = &*self.keys;
        let id_str = &id_str;
        self.conn
            .write(|mut conn| async move {
                for _ in 0..MAX_CAS_ATTEMPTS {
                    let (json, last_used) = scripts::fetch(&mut conn, keys, id_str)
                        .await
                        .map_err(backend)?;
                    let Some(json) = json else {
                        return Ok((None, false));
                    };
                    let mut record = stored::decode(id, &json, last_used.as_deref())?;
                    let old = entry(&record);
                    // Checked on the copy the CAS below writes over only if unchanged.
                    patch.apply(&mut record)?;
                    let new = entry(&record);
                    let written = scripts::update(
                        &mut conn,
                        keys,
                        id_str,
                        (&json, &old),
                        (stored::encode(&record)?, &new),
                    )
                    .await
                    .map_err(backend)?;
                    match written {
                        Cas::Done => return Ok((Some(record), true)),
                        Cas::Gone => return Ok((None, false)),
                        Cas::Changed => tokio::task::yield_now().await, // read again
                    }
                }
                Err(StoreError::backend(Contention(id)))
            })
            .await
    }

    async fn delete(&self, id: KeyId) -> Result<bool, StoreError> {
        let id_str = id.to_string();
        let keys = &*self.keys;
        let id_str = &id_str;
        self.conn
            .write(|mut conn| async move {
                for _ in 0..MAX_CAS_ATTEMPTS {
                    let (json, _) = scripts::fetch(&mut conn, keys, id_str)
                        .await
                        .map_err(backend)?;
                    let Some(json) = json else {
                        return Ok((false, false));
                    };
                    // A record too damaged to decode can still be deleted, from its
                    // indexes too if it still names its owner and creation time.
                    let entry = stored::IndexFields::of(&json)
                        .map(|f| Entry::new(&f.owner, f.created_at, id));
                    let deleted = scripts::delete(&mut conn, keys, id_str, &json, entry.as_ref())
                        .await
                        .map_err(backend)?;
                    match deleted {
                        Cas::Done => return Ok((true, true)),
                        Cas::Gone => return Ok((false, false)),
                        Cas::Changed => tokio::task::yield_now().await,
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
        let keys = &*self.keys;
        let index = keys.index(query.owner.as_deref());
        let rows = self
            .conn
            .read(|mut conn| {
                let index = &index;
                async move {
                    scripts::list(&mut conn, keys, index, query.after.as_ref(), query.limit).await
                }
            })
            .await?;
        let mut records = Vec::with_capacity(rows.len());
        for (member, json, last_used) in rows {
            let raw_id = scripts::position_id(&member).unwrap_or_default();
            let record = stored::decode(stored::decode_id(raw_id)?, &json, last_used.as_deref())?;
            // Only a record changed behind keygate's back (its `created_at` or owner edited
            // by hand) is not where the index has it; listing it there would page wrongly.
            let in_place = scripts::position(record.created_at, record.id).as_bytes()
                == member.as_slice()
                && query
                    .owner
                    .as_ref()
                    .is_none_or(|owner| *owner == record.owner);
            if !in_place {
                return Err(StoreError::Corrupt(Box::new(OutOfPlace(record.id))));
            }
            records.push(record);
        }
        Ok(records)
    }

    async fn record_last_used(&self, batch: &[(KeyId, DateTime<Utc>)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.conn
            .bounded(async {
                let mut conn = self.conn.manager();
                scripts::record_last_used(&mut conn, &self.keys, batch)
                    .await
                    .map_err(backend)
            })
            .await
    }

    /// Subscribes to `<namespace>changes` on a connection of its own and calls
    /// [`ChangeListener::changed`] for every notice, from a spawned task, which also reads
    /// the change sequence on that connection every [`FeedConfig::heartbeat`] (replaying
    /// what was missed, renewing the listener's lease). The task reconnects with backoff
    /// when the connection drops or goes silent (then replays from its last sequence
    /// number, or calls [`ChangeListener::resync`] if the log no longer reaches back that
    /// far) and ends within a heartbeat of the listener being dropped. Fails if the first
    /// subscription or heartbeat cannot be made.
    async fn subscribe(&self, listener: Weak<dyn ChangeListener>) -> Result<bool, StoreError> {
        feed::subscribe(&self.conn, self.keys.clone(), listener).await?;
        Ok(true)
    }

    /// `HSETNX` then `HGET` on `<namespace>peppers`, in one `MULTI` (on a Redis Cluster,
    /// `{<namespace>}peppers`, pipelined without `MULTI`).
    async fn remember_pepper(
        &self,
        version: u32,
        fingerprint: PepperFingerprint,
    ) -> Result<Option<PepperFingerprint>, StoreError> {
        let key = &self.keys.peppers;
        let (inserted, known): (i64, Option<Vec<u8>>) = self
            .conn
            .bounded(async {
                let mut pipe = ::redis::pipe();
                // A cluster connection sends no MULTI; HSETNX never overwrites, so the
                // HGET after it reads the fingerprint that stays either way.
                if !self.is_cluster() {
                    pipe.atomic();
                }
                pipe.cmd("HSETNX")
                    .arg(key)
                    .arg(version)
                    .arg(&fingerprint.as_bytes()[..])
                    .cmd("HGET")
                    .arg(key)
                    .arg(version)
                    .query_async(&mut self.conn.manager())
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
