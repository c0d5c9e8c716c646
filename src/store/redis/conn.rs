//! Connection supervision for a [`RedisStore`](super::RedisStore): the first connection,
//! a time limit on every call, and replacing a connection that went silent.
//!
//! The [`ConnectionManager`] reconnects by itself once it *sees* its connection fail. A
//! connection whose peer went silent (a partition, a firewall that dropped its state) is
//! never seen to fail; it only times out, forever. So a call that times out replaces the
//! manager ([`Supervisor::timed_out`]), and a call dropped before it finished (a caller's
//! shorter timeout) makes the supervisor PING in the background to find out
//! ([`Supervisor::probe`]).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{AsyncConnectionConfig, Client, RedisError};

use super::{RedisConfig, StoreError};

/// The store's client, configuration and current connection.
pub(super) struct Supervisor {
    pub(super) client: Client,
    pub(super) config: RedisConfig,
    current: Mutex<Current>,
    /// A liveness probe of a cancelled call is under way.
    probing: AtomicBool,
}

/// The connection manager in use, and since when.
struct Current {
    manager: ConnectionManager,
    since: Instant,
}

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

/// Connects a [`ConnectionManager`] to `client`'s server, failing within
/// [`connect_limit`] rather than waiting for the server.
pub(super) async fn connect(
    client: &Client,
    config: &RedisConfig,
) -> Result<ConnectionManager, StoreError> {
    super::tls::prepare(client);
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
        ConnectionManager::new_with_config(client.clone(), manager_config(config)).await
    };
    match tokio::time::timeout(connect_limit(config), connect).await {
        Ok(result) => result.map_err(backend),
        Err(_) => Err(StoreError::Timeout),
    }
}

impl Supervisor {
    pub(super) fn new(client: Client, manager: ConnectionManager, config: RedisConfig) -> Self {
        Self {
            client,
            config,
            current: Mutex::new(Current {
                manager,
                since: Instant::now(),
            }),
            probing: AtomicBool::new(false),
        }
    }

    /// The current connection (a cheap handle).
    pub(super) fn manager(&self) -> ConnectionManager {
        self.current().manager.clone()
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
        let mut watch = Unfinished(Some(self));
        let result = match tokio::time::timeout(self.config.response_timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout),
        };
        watch.0 = None;
        if matches!(result, Err(StoreError::Timeout)) {
            self.timed_out();
        }
        result
    }

    /// Runs an idempotent read under the response timeout, once more if the connection
    /// turned out to be dead (the manager is reconnecting by then).
    pub(super) async fn read<T, F, Fut>(self: &Arc<Self>, read: F) -> Result<T, StoreError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.bounded(async {
            match read(self.manager()).await {
                Err(e) if e.is_unrecoverable_error() || e.is_connection_dropped() => {
                    tracing::debug!(target: "keygate", error = %e, "redis connection lost; retrying read");
                    read(self.manager()).await.map_err(backend)
                }
                other => other.map_err(backend),
            }
        })
        .await
    }

    /// A call timed out: start over with a fresh manager, at most once per
    /// [`connect_limit`]; calls still running on the old one finish there.
    fn timed_out(&self) {
        let mut current = self.current();
        if current.since.elapsed() < connect_limit(&self.config) {
            return;
        }
        match ConnectionManager::new_lazy_with_config(
            self.client.clone(),
            manager_config(&self.config),
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
