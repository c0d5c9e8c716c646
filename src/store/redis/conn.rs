//! Connection supervision for a [`RedisStore`](super::RedisStore): the first connection,
//! a time limit on every call, and replacing a connection that went silent.
//!
//! The [`ConnectionManager`] reconnects by itself once it *sees* its connection fail. A
//! connection whose peer went silent (a partition, a firewall that dropped its state) is
//! never seen to fail; it only times out, forever. So a call that times out replaces the
//! manager ([`Supervisor::timed_out`]), and a call dropped before it finished (a caller's
//! shorter timeout) makes the supervisor PING in the background to find out
//! ([`Supervisor::probe`]).
//!
//! A Redis Cluster connection ([`ClusterConnection`](::redis::cluster_async::ClusterConnection))
//! follows `MOVED`/`ASK` and reconnects by itself too; it is replaced the same way when it
//! goes silent. Behind Sentinel, a connection to a primary that was failed over (it refuses
//! connections, drops them, or answers `READONLY` as a replica) is replaced by one to the
//! primary the sentinels name now ([`Supervisor::lost_primary`]).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use ::redis::{
    AsyncConnectionConfig, Client, ErrorKind, ProtocolVersion, RedisError, ServerErrorKind,
};

use super::topology::{Conn, Target};
use super::{RedisConfig, StoreError};

/// The store's target, configuration and current connection.
pub(super) struct Supervisor {
    pub(super) target: Target,
    pub(super) config: RedisConfig,
    current: Mutex<Current>,
    /// A liveness probe of a cancelled call is under way.
    probing: AtomicBool,
    /// A replacement connection (Cluster, Sentinel) is being made in the background.
    replacing: AtomicBool,
    /// Behind Sentinel: the connection key-management writes go through, so that `WAIT`
    /// (which waits for the writes of the connection it is sent on) never blocks the
    /// shared connection verify traffic uses. A plain connection that does not reconnect
    /// by itself: a write and its `WAIT` always travel on the same one. Made when first
    /// needed, dropped after a failed write or when the primary changes (the generation
    /// tells which one a failed write used).
    writer: tokio::sync::Mutex<Writer>,
}

/// The write connection behind Sentinel, and its generation.
#[derive(Default)]
struct Writer {
    generation: u64,
    conn: Option<MultiplexedConnection>,
}

/// The connection in use, and since when.
struct Current {
    conn: Conn,
    since: Instant,
}

/// Shortest time between two replacements of a Sentinel connection for a lost primary:
/// the sentinels may still name the old one for a moment after a failover.
const PRIMARY_RETRY: Duration = Duration::from_millis(100);

/// A [`RedisError`] as a [`StoreError`]: [`StoreError::Timeout`] or
/// [`StoreError::Backend`].
pub(super) fn backend(error: RedisError) -> StoreError {
    if error.is_timeout() {
        StoreError::Timeout
    } else {
        StoreError::backend(error)
    }
}

fn manager_config(config: &RedisConfig) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connection_timeout))
        .set_response_timeout(Some(config.response_timeout))
        .set_max_delay(Duration::from_millis(500))
}

/// How long one (re)connection may take: a connection timeout plus one response timeout.
pub(super) fn connect_limit(config: &RedisConfig) -> Duration {
    config
        .connection_timeout
        .saturating_add(config.response_timeout)
}

/// Connects to `target`, failing within [`connect_limit`] rather than waiting for the
/// servers.
pub(super) async fn connect(target: &Target, config: &RedisConfig) -> Result<Conn, StoreError> {
    if target.uses_tls() {
        super::tls::install_provider();
    }
    let connect = async {
        match target {
            Target::Single(client) => single(client, config).await.map(Conn::Single),
            Target::Sentinel(seed) => {
                let client = seed.master(ProtocolVersion::RESP2).await?;
                single(&client, config).await.map(Conn::Single)
            }
            Target::Cluster(seed) => {
                let client = seed.client(config, None)?;
                let mut conn = client.get_async_connection().await?;
                ::redis::cmd("PING").exec_async(&mut conn).await?;
                Ok(Conn::Cluster(conn))
            }
        }
    };
    match tokio::time::timeout(connect_limit(config), connect).await {
        Ok(result) => result.map_err(backend),
        Err(_) => Err(StoreError::Timeout),
    }
}

/// A [`ConnectionManager`] to `client`'s server, after one plain attempt (a wrong address
/// or password fails now, with the server's answer, instead of after the manager's
/// backoff).
async fn single(client: &Client, config: &RedisConfig) -> Result<ConnectionManager, RedisError> {
    let probe_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connection_timeout))
        .set_response_timeout(Some(config.response_timeout));
    let mut probe = client
        .get_multiplexed_async_connection_with_config(&probe_config)
        .await?;
    ::redis::cmd("PING").exec_async(&mut probe).await?;
    drop(probe);
    ConnectionManager::new_with_config(client.clone(), manager_config(config)).await
}

/// Behind Sentinel: asks the sentinels which server is the primary every feed heartbeat
/// ([`FeedConfig::heartbeat`](crate::FeedConfig::heartbeat)) for as long as the store
/// lives, and replaces the connection as soon as they name another one. Sentinel promotes
/// a replica before it demotes the old primary, which meanwhile still takes writes (lost
/// once it is demoted): waiting for an error would keep writing there. Also counts the
/// switch ([`SentinelSeed::switches`](super::topology::SentinelSeed)) for the change feed.
pub(super) fn watch_primary(supervisor: &Arc<Supervisor>) {
    let Target::Sentinel(seed) = &supervisor.target else {
        return;
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let seed = Arc::clone(seed);
    let weak = Arc::downgrade(supervisor);
    let period = supervisor
        .config
        .feed
        .heartbeat
        .max(Duration::from_millis(10));
    let limit = supervisor.config.response_timeout;
    runtime.spawn(async move {
        let mut conns: Vec<Option<::redis::aio::MultiplexedConnection>> =
            seed.sentinels.iter().map(|_| None).collect();
        let mut known = seed.primary_addr(&mut conns, limit).await;
        loop {
            tokio::time::sleep(period).await;
            let Some(supervisor) = weak.upgrade() else {
                return;
            };
            let Some(now) = seed.primary_addr(&mut conns, limit).await else {
                continue;
            };
            if known.as_ref().is_some_and(|k| *k != now) {
                seed.switches.fetch_add(1, Ordering::AcqRel);
                supervisor.forget_writer().await;
                supervisor.replace_after(
                    Duration::ZERO,
                    "Sentinel names a new redis primary; reconnecting",
                );
            }
            known = Some(now);
        }
    });
}

/// Whether `error` says the primary this connection speaks to is gone or is one no more
/// (behind Sentinel: look it up again).
fn lost_primary(error: &StoreError) -> bool {
    let StoreError::Backend(source) = error else {
        return false;
    };
    source.downcast_ref::<RedisError>().is_some_and(|e| {
        e.is_connection_refusal()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error()
            || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
            || e.kind() == ErrorKind::Server(ServerErrorKind::MasterDown)
    })
}

impl Supervisor {
    pub(super) fn new(target: Target, conn: Conn, config: RedisConfig) -> Self {
        Self {
            target,
            config,
            current: Mutex::new(Current {
                conn,
                since: Instant::now(),
            }),
            probing: AtomicBool::new(false),
            replacing: AtomicBool::new(false),
            writer: tokio::sync::Mutex::new(Writer::default()),
        }
    }

    /// Runs a key-management write. `write` gets a connection to the primary and says
    /// whether it wrote anything. Behind Sentinel with [`RedisConfig::replicas`] above 0,
    /// it runs on the write connection, and a write that wrote is acknowledged only once
    /// `WAIT` confirms that many replicas hold it ([`StoreError::Unreplicated`] if not in
    /// [`RedisConfig::replication_timeout`]); the write and its `WAIT` may take that long
    /// on top of the response timeout (and a connection limit more when the write
    /// connection must be made first). Elsewhere it is [`bounded`](Self::bounded) on the shared connection.
    pub(super) async fn write<T, F, Fut>(self: &Arc<Self>, write: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<(T, bool), StoreError>>,
    {
        let Target::Sentinel(seed) = &self.target else {
            return self
                .bounded(async { Ok(write(self.manager()).await?.0) })
                .await;
        };
        let wanted = self.config.replicas;
        if wanted == 0 {
            return self
                .bounded(async { Ok(write(self.manager()).await?.0) })
                .await;
        }
        let wait = self.config.replication_timeout;
        let limit = self.config.response_timeout.saturating_add(wait);
        // Connecting the write connection, then the write and its WAIT.
        let whole = connect_limit(&self.config).saturating_add(limit);
        self.bounded_within(whole, async {
            let (generation, conn) = {
                let mut writer = self.writer.lock().await;
                let conn = match &writer.conn {
                    Some(conn) => conn.clone(),
                    None => {
                        let made = self.connect_writer(seed, limit).await?;
                        writer.generation = writer.generation.wrapping_add(1);
                        writer.conn = Some(made.clone());
                        made
                    }
                };
                (writer.generation, conn)
            };
            let result = tokio::time::timeout(limit, async {
                let (value, wrote) = write(Conn::Feed(conn.clone())).await?;
                if wrote {
                    let millis = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
                    let acked: u32 = ::redis::cmd("WAIT")
                        .arg(wanted)
                        .arg(millis)
                        .query_async(&mut conn.clone())
                        .await
                        .map_err(backend)?;
                    if acked < wanted {
                        return Err(StoreError::Unreplicated { acked, wanted });
                    }
                }
                Ok(value)
            })
            .await
            .unwrap_or(Err(StoreError::Timeout));
            if matches!(
                result,
                Err(StoreError::Timeout | StoreError::Backend(_) | StoreError::Unreplicated { .. })
            ) {
                // Perhaps a demoted or cut-off primary: ask the sentinels again next time.
                let mut writer = self.writer.lock().await;
                if writer.generation == generation {
                    writer.conn = None;
                }
            }
            result
        })
        .await
    }

    /// A new write connection to the primary the sentinels name now, whose commands may
    /// take `limit` (a `WAIT` included).
    async fn connect_writer(
        &self,
        seed: &super::topology::SentinelSeed,
        limit: Duration,
    ) -> Result<MultiplexedConnection, StoreError> {
        let connect = async {
            let client = seed.master(ProtocolVersion::RESP2).await?;
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.config.connection_timeout))
                .set_response_timeout(Some(limit));
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await
        };
        match tokio::time::timeout(connect_limit(&self.config), connect).await {
            Ok(result) => result.map_err(backend),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// Drops the write connection (the primary changed): the next write asks the
    /// sentinels.
    async fn forget_writer(&self) {
        self.writer.lock().await.conn = None;
    }

    /// The current connection (a cheap handle).
    pub(super) fn manager(&self) -> Conn {
        self.current().conn.clone()
    }

    fn current(&self) -> MutexGuard<'_, Current> {
        // Nothing can panic while the lock is held; a poisoned lock is still consistent.
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one store call under the response timeout.
    pub(super) async fn bounded<T>(
        self: &Arc<Self>,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.bounded_within(self.config.response_timeout, call)
            .await
    }

    /// Runs one store call under `limit`, as [`bounded`](Self::bounded).
    async fn bounded_within<T>(
        self: &Arc<Self>,
        limit: Duration,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mut watch = Unfinished(Some(self));
        let result = match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout),
        };
        watch.0 = None;
        match &result {
            Err(StoreError::Timeout) => self.timed_out(),
            Err(e) if matches!(self.target, Target::Sentinel(_)) && lost_primary(e) => {
                self.replace_after(
                    PRIMARY_RETRY,
                    "the redis primary is gone or was failed over",
                );
            }
            _ => {}
        }
        result
    }

    /// Runs an idempotent read under the response timeout, once more if the connection
    /// turned out to be dead (the manager is reconnecting by then).
    pub(super) async fn read<T, F, Fut>(self: &Arc<Self>, read: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.bounded(async {
            match read(self.manager()).await {
                Err(e) if e.is_unrecoverable_error() || e.is_connection_dropped() => {
                    tracing::debug!(target: "keygate", error = %e, "redis connection lost; retrying read");
                    if matches!(self.target, Target::Sentinel(_)) {
                        // The primary may have been failed over (Sentinel drops its clients
                        // as it demotes it): the manager would reconnect to a replica.
                        self.replace_after(PRIMARY_RETRY, "redis connection lost; asking Sentinel for the primary");
                    }
                    read(self.manager()).await.map_err(backend)
                }
                other => other.map_err(backend),
            }
        })
        .await
    }

    /// A call timed out: start over with a fresh connection, at most once per
    /// [`connect_limit`]; calls still running on the old one finish there.
    fn timed_out(self: &Arc<Self>) {
        self.replace_after(
            connect_limit(&self.config),
            "redis call timed out; replacing the connection",
        );
    }

    /// Replaces the connection if the current one is at least `age` old: at once for one
    /// server (the new manager connects lazily), in the background for a cluster or a
    /// Sentinel primary (one replacement at a time; the old connection serves meanwhile).
    fn replace_after(self: &Arc<Self>, age: Duration, why: &'static str) {
        if self.current().since.elapsed() < age {
            return;
        }
        if let Target::Single(client) = &self.target {
            let mut current = self.current();
            if current.since.elapsed() < age {
                return;
            }
            match ConnectionManager::new_lazy_with_config(
                client.clone(),
                manager_config(&self.config),
            ) {
                Ok(manager) => {
                    tracing::warn!(target: "keygate", "{why}");
                    *current = Current {
                        conn: Conn::Single(manager),
                        since: Instant::now(),
                    };
                }
                Err(e) => {
                    tracing::warn!(target: "keygate", error = %e, "{why}; cannot make a new connection")
                }
            }
            return;
        }
        if self.replacing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.replacing.store(false, Ordering::Release);
            return;
        };
        let this = Arc::clone(self);
        runtime.spawn(async move {
            tracing::warn!(target: "keygate", "{why}");
            match connect(&this.target, &this.config).await {
                Ok(conn) => {
                    *this.current() = Current {
                        conn,
                        since: Instant::now(),
                    };
                }
                Err(e) => {
                    tracing::warn!(target: "keygate", error = %e, "{why}; cannot make a new connection")
                }
            }
            this.replacing.store(false, Ordering::Release);
        });
    }

    /// A call was cancelled before it finished, typically by a caller's shorter timeout
    /// ([`KeygateBuilder::store_timeout`](crate::KeygateBuilder::store_timeout)), so this
    /// store never saw whether it would have timed out. PING in the background (one probe
    /// at a time) and treat silence as a timeout, so a silent connection is replaced even
    /// when every caller gives up first.
    fn probe(self: &Arc<Self>) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.probing.store(false, Ordering::Release);
            return;
        };
        let this = Arc::clone(self);
        runtime.spawn(async move {
            let mut conn = this.manager();
            let ping = ::redis::cmd("PING");
            let limit = this.config.response_timeout;
            let silent = match tokio::time::timeout(limit, ping.exec_async(&mut conn)).await {
                Err(_) => true,
                Ok(Err(e)) => e.is_timeout(),
                Ok(Ok(())) => false,
            };
            if silent {
                this.timed_out();
            }
            this.probing.store(false, Ordering::Release);
        });
    }
}

/// Probes the connection if a call is dropped before it finishes.
struct Unfinished<'a>(Option<&'a Arc<Supervisor>>);

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(supervisor) = self.0 {
            supervisor.probe();
        }
    }
}
