//! The change feed of a [`RedisStore`]: a pub/sub subscription on a RESP3 connection of
//! its own, passing each notice to a [`ChangeListener`] from a spawned task, with a
//! heartbeat that reads the change sequence on that same connection (replaying what a lost
//! notice or a reconnect missed, and renewing the listener's lease, [`FeedConfig`]),
//! reconnecting with backoff until the listener is dropped. The same loop as the
//! PostgreSQL feed's (see there).

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use ::redis::aio::ConnectionLike;
use ::redis::{
    AsyncConnectionConfig, Client, Msg, ProtocolVersion, PushInfo, PushKind, RedisError,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::conn::{backend, connect_limit, Supervisor};
use super::scripts::{self, Keys};
use super::topology::{Conn, Target};
use super::{ChangeListener, RedisStore, StoreError};
use crate::store::{later, parse_notice, FeedConfig, Next, Sequence, MAX_REPLAY};

/// First and longest pause between change-feed reconnection attempts (doubling).
const FEED_BACKOFF_MIN: Duration = Duration::from_millis(100);
const FEED_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Subscribes `listener` to `channel`: connects (failing if that takes longer than a
/// connection plus a response timeout) and spawns the task that follows the feed.
pub(super) async fn subscribe(
    supervisor: &Supervisor,
    keys: Arc<Keys>,
    listener: Weak<dyn ChangeListener>,
) -> Result<(), StoreError> {
    let mut feed = Feed::new(supervisor, keys)?;
    let mut connection = match tokio::time::timeout(feed.connect_limit, feed.connect()).await {
        Ok(result) => result.map_err(backend)?,
        Err(_) => return Err(StoreError::Timeout),
    };
    if let Some(strong) = listener.upgrade() {
        // The listener holds a lease once this returns.
        let limit = feed.connect_limit;
        match tokio::time::timeout(limit, feed.heartbeat(&mut connection.0, &*strong)).await {
            Ok(result) => result.map_err(backend)?,
            Err(_) => return Err(StoreError::Timeout),
        }
    }
    tokio::spawn(feed.run(connection, listener));
    Ok(())
}

/// The change feed of one subscription.
struct Feed {
    target: Target,
    /// For one server: its client, speaking RESP3.
    single: Option<Client>,
    store_config: super::RedisConfig,
    keys: Arc<Keys>,
    connection_timeout: Duration,
    response_timeout: Duration,
    connect_limit: Duration,
    config: FeedConfig,
    sequence: Sequence,
    /// Behind Sentinel: the primary switches counted when this feed last connected.
    switches: u64,
}

type FeedConnection = (Conn, UnboundedReceiver<PushInfo>);

impl Feed {
    fn new(supervisor: &Supervisor, keys: Arc<Keys>) -> Result<Self, StoreError> {
        // Subscribed RESP3 connections still answer PING and take pushes through a plain
        // channel, so the feed needs no stream machinery.
        let single = match &supervisor.target {
            Target::Single(client) => Some(resp3(client).map_err(backend)?),
            Target::Cluster(_) | Target::Sentinel(_) => None,
        };
        let config = &supervisor.config;
        Ok(Self {
            target: supervisor.target.clone(),
            single,
            store_config: config.clone(),
            keys,
            connection_timeout: config.connection_timeout,
            response_timeout: config.response_timeout,
            connect_limit: connect_limit(config),
            config: config.feed,
            sequence: Sequence::default(),
            switches: 0,
        })
    }

    /// How many primary switches the sentinels made so far (0 for other targets).
    fn switches(&self) -> u64 {
        match &self.target {
            Target::Sentinel(seed) => seed.switches.load(std::sync::atomic::Ordering::Acquire),
            Target::Single(_) | Target::Cluster(_) => 0,
        }
    }

    async fn connect(&mut self) -> Result<FeedConnection, RedisError> {
        let switches = self.switches();
        if switches != self.switches {
            // The old primary may have taken writes that are lost, and the new one's change
            // sequence may reuse their numbers: the log cannot say what was missed, so the
            // first heartbeat drops the cache.
            self.sequence = Sequence::default();
            self.switches = switches;
        }
        let (sender, receiver) = unbounded_channel();
        if let Target::Cluster(seed) = &self.target {
            // The cluster connection resubscribes by itself after a reconnect or a slot
            // move; a `Disconnection` push still makes this feed start over and replay.
            let client = seed.client(&self.store_config, Some(sender))?;
            let mut connection = client.get_async_connection().await?;
            if self.keys.sharded {
                connection.ssubscribe(&self.keys.channel).await?;
            } else {
                connection.subscribe(&self.keys.channel).await?;
            }
            return Ok((Conn::Cluster(connection), receiver));
        }
        let client = match (&self.target, &self.single) {
            (Target::Sentinel(seed), _) => seed.master(ProtocolVersion::RESP3).await?,
            (_, Some(client)) => client.clone(),
            (_, None) => {
                return Err(RedisError::from((
                    ::redis::ErrorKind::Client,
                    "no feed client",
                )))
            }
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connection_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_push_sender(sender);
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        // Only a label for CLIENT LIST: an ACL that forbids it must not stop the feed.
        let _ = ::redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(RedisStore::FEED_CLIENT_NAME)
            .exec_async(&mut connection)
            .await;
        connection.subscribe(&self.keys.channel).await?;
        Ok((Conn::Feed(connection), receiver))
    }

    async fn run(mut self, connection: FeedConnection, listener: Weak<dyn ChangeListener>) {
        let (mut connection, mut receiver) = connection;
        loop {
            if !self.follow(&mut connection, &mut receiver, &listener).await {
                return;
            }
            tracing::warn!(target: "keygate", channel = %self.keys.channel, "redis change feed lost; reconnecting");
            drop(receiver);
            let Some(fresh) = self.reconnect(&listener).await else {
                return;
            };
            // `follow` replays what was missed at once.
            (connection, receiver) = fresh;
            tracing::info!(target: "keygate", channel = %self.keys.channel, "redis change feed reconnected; replaying from the change log");
        }
    }

    /// Reads the change sequence on the feed's connection, passes on what was missed and
    /// renews the listener's lease from the moment the read was sent.
    async fn heartbeat(
        &mut self,
        connection: &mut (impl ConnectionLike + Send),
        listener: &dyn ChangeListener,
    ) -> Result<(), RedisError> {
        if self.switches() != self.switches {
            // Behind Sentinel, another server is the primary now: this connection's server
            // no longer sees every write, so it may not renew the lease.
            return Err(RedisError::from((
                ::redis::ErrorKind::Io,
                "Sentinel names a new primary",
            )));
        }
        let sent = Instant::now();
        let (current, entries) =
            scripts::read_log(connection, &self.keys, self.sequence.last(), MAX_REPLAY).await?;
        if self.sequence.replay(listener, current, &entries) {
            tracing::info!(target: "keygate", current, "redis change feed could not replay the change log; cache cleared");
        }
        listener.synced(later(sent, self.config.lease()));
        Ok(())
    }

    /// Passes notices on until the connection fails (`true`) or the listener is gone
    /// (`false`).
    async fn follow(
        &mut self,
        connection: &mut Conn,
        receiver: &mut UnboundedReceiver<PushInfo>,
        listener: &Weak<dyn ChangeListener>,
    ) -> bool {
        // The first heartbeat is immediate: after a reconnect, replay at once.
        let mut next_beat = Instant::now();
        loop {
            let catch_up = match tokio::time::timeout_at(next_beat, receiver.recv()).await {
                Ok(Some(push)) => match push.kind {
                    PushKind::Message | PushKind::SMessage => {
                        let Some(strong) = listener.upgrade() else {
                            return false;
                        };
                        let notice = Msg::from_push_info(push).and_then(|m| {
                            parse_notice(std::str::from_utf8(m.get_payload_bytes()).ok()?)
                        });
                        match notice {
                            Some((seq, id)) => {
                                self.sequence.notice(&*strong, seq, id) == Next::CatchUp
                            }
                            // Not ours to interpret: the safe answer is to read the log.
                            None => true,
                        }
                    }
                    // Sharded subscriptions are dropped when their slot moves (a failover,
                    // a resharding); the cluster connection subscribes again, and this
                    // feed starts over and replays what was missed meanwhile.
                    PushKind::Disconnection | PushKind::SUnsubscribe => return true,
                    _ => false,
                },
                Ok(None) => return true,
                Err(_beat) => {
                    next_beat = later(Instant::now(), self.config.period());
                    true
                }
            };
            if !catch_up {
                continue;
            }
            let Some(strong) = listener.upgrade() else {
                return false;
            };
            let limit = self.config.give_up_after();
            match tokio::time::timeout(limit, self.heartbeat(connection, &*strong)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(target: "keygate", %error, "redis change feed heartbeat failed");
                    return true;
                }
                Err(_) => {
                    tracing::warn!(target: "keygate", "redis change feed heartbeat unanswered");
                    return true;
                }
            }
        }
    }

    async fn reconnect(&mut self, listener: &Weak<dyn ChangeListener>) -> Option<FeedConnection> {
        let mut delay = FEED_BACKOFF_MIN;
        loop {
            if listener.strong_count() == 0 {
                return None;
            }
            match tokio::time::timeout(self.connect_limit, self.connect()).await {
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

/// `client`'s server, spoken to in RESP3.
fn resp3(client: &Client) -> Result<Client, RedisError> {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    Client::open(info.set_redis_settings(settings))
}
