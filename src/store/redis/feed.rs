//! The change feed of a [`RedisStore`]: a pub/sub subscription on a RESP3 connection of
//! its own, passing each notice to a [`ChangeListener`] from a spawned task, reconnecting
//! with backoff (then [`ChangeListener::resync`]) until the listener is dropped.

use std::sync::Weak;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{
    AsyncConnectionConfig, Client, Msg, ProtocolVersion, PushInfo, PushKind, RedisError,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::conn::{backend, connect_limit, Supervisor};
use super::{ChangeListener, RedisStore, StoreError};
use crate::key::KeyId;

/// How often an idle change feed checks that its listener is still alive and PINGs the
/// server (to notice a connection that died without closing).
const FEED_TICK: Duration = Duration::from_secs(2);
/// First and longest pause between change-feed reconnection attempts (doubling).
const FEED_BACKOFF_MIN: Duration = Duration::from_millis(100);
const FEED_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Subscribes `listener` to `channel`: connects (failing if that takes longer than a
/// connection plus a response timeout) and spawns the task that follows the feed.
pub(super) async fn subscribe(
    supervisor: &Supervisor,
    channel: &str,
    listener: Weak<dyn ChangeListener>,
) -> Result<(), StoreError> {
    let feed = Feed::new(supervisor, channel)?;
    let connection = match tokio::time::timeout(feed.connect_limit, feed.connect()).await {
        Ok(result) => result.map_err(backend)?,
        Err(_) => return Err(StoreError::Timeout),
    };
    tokio::spawn(feed.run(connection, listener));
    Ok(())
}

/// The change feed of one subscription.
struct Feed {
    client: Client,
    channel: String,
    connection_timeout: Duration,
    response_timeout: Duration,
    connect_limit: Duration,
}

type FeedConnection = (MultiplexedConnection, UnboundedReceiver<PushInfo>);

impl Feed {
    fn new(supervisor: &Supervisor, channel: &str) -> Result<Self, StoreError> {
        // Subscribed RESP3 connections still answer PING and take pushes through a plain
        // channel, so the feed needs no stream machinery.
        let info = supervisor.client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(settings)).map_err(backend)?;
        let config = &supervisor.config;
        Ok(Self {
            client,
            channel: channel.to_owned(),
            connection_timeout: config.connection_timeout,
            response_timeout: config.response_timeout,
            connect_limit: connect_limit(config),
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
            .arg(RedisStore::FEED_CLIENT_NAME)
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

fn parse_id(message: &Msg) -> Option<KeyId> {
    std::str::from_utf8(message.get_payload_bytes())
        .ok()?
        .parse()
        .ok()
}
