//! The change feed of [`PostgresStore`]: `LISTEN keygate_changes` on a dedicated
//! connection, relayed to a [`ChangeListener`], with a heartbeat that reads the change
//! sequence on that same connection, replays what a lost notice or a reconnect missed and
//! renews the listener's lease ([`FeedConfig`]).
//!
//! The task, in a loop: wait for a notice or the next heartbeat. A notice `<seq>:<id>` is
//! passed on at once; one whose number skips the last seen makes the feed read the log
//! now. A heartbeat sends one statement that reads the counter and the log entries after
//! the last seen number (one snapshot); the entries are passed on, or the listener is
//! resynced when they do not cover the gap (log trimmed, database reset), and the lease is
//! renewed from the moment the statement was sent. A heartbeat unanswered within
//! [`FeedConfig::dead_after`], or any error, drops the connection: the feed reconnects
//! with backoff (each attempt bounded by `dead_after` too), then replays from its last
//! number before it renews the lease again.

use std::sync::Weak;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::Row;
use tokio::time::Instant;
use uuid::Uuid;

use super::PostgresStore;
use crate::key::KeyId;
use crate::store::sql::store_error;
use crate::store::{
    later, parse_notice, ChangeListener, FeedConfig, Next, Sequence, StoreError, MAX_REPLAY,
};

/// Longest pause between reconnection attempts of the change feed.
const FEED_MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The counter and, after `$1`, up to `$2` log entries up to it: one snapshot. The
/// counter row always exists (migration 8 inserts it), so there is always a row.
const READ_LOG: &str = "SELECT s.seq AS current, c.seq AS seq, c.key_id AS key_id \
     FROM keygate_change_seq s \
     LEFT JOIN LATERAL (SELECT seq, key_id FROM keygate_changes \
                        WHERE seq > $1 AND seq <= s.seq ORDER BY seq LIMIT $2) c ON TRUE \
     ORDER BY c.seq";

/// [`KeyStore::subscribe`](crate::KeyStore::subscribe) of [`PostgresStore`]: follows
/// `NOTIFY keygate_changes` on a dedicated connection (application name
/// `<name>-listener`) opened like `store`'s. Listens, then reads the sequence once (so the
/// listener holds a lease when this returns) and spawns the task that follows the feed
/// until `listener` is dropped. Fails if the first connection or read cannot be made.
pub(super) async fn subscribe(
    store: &PgPool,
    config: FeedConfig,
    listener: Weak<dyn ChangeListener>,
) -> Result<bool, StoreError> {
    let connect = PgConnectOptions::clone(&store.connect_options());
    let name = format!(
        "{}-listener",
        connect.get_application_name().unwrap_or("keygate")
    );
    let feed = Feed {
        connect: connect.application_name(&name),
        acquire_timeout: store.options().get_acquire_timeout(),
        config,
        sequence: Sequence::default(),
    };
    feed.start(listener).await
}

/// One subscription's state.
struct Feed {
    connect: PgConnectOptions,
    acquire_timeout: Duration,
    config: FeedConfig,
    sequence: Sequence,
}

/// Why [`Feed::relay`] returned.
enum Ended {
    /// The listener was dropped: stop.
    ListenerGone,
    /// The connection failed or went silent: reconnect.
    Lost,
}

impl Feed {
    async fn start(mut self, listener: Weak<dyn ChangeListener>) -> Result<bool, StoreError> {
        let limit = self.config.give_up_after().max(self.acquire_timeout);
        let mut connection = match tokio::time::timeout(limit, self.listen()).await {
            Ok(result) => result.map_err(store_error)?,
            Err(_) => return Err(StoreError::Timeout),
        };
        let Some(strong) = listener.upgrade() else {
            return Ok(true);
        };
        match tokio::time::timeout(limit, self.heartbeat(&mut connection, &*strong)).await {
            Ok(result) => result.map_err(store_error)?,
            Err(_) => return Err(StoreError::Timeout),
        }
        drop(strong);
        tokio::spawn(self.follow(connection, listener));
        Ok(true)
    }

    /// A fresh single-connection pool and a listener on it. A pool per connection: a
    /// dropped `PgListener` hands its connection back through a task that may hang on a
    /// silent socket, and must not hold the slot a reconnect needs.
    async fn listen(&self) -> Result<PgListener, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(self.config.give_up_after())
            .connect_lazy_with(self.connect.clone());
        let mut feed = PgListener::connect_with(&pool).await?;
        // A lost connection ends `try_recv` with `Ok(None)`; `follow` reconnects itself.
        feed.eager_reconnect(false);
        feed.listen(PostgresStore::CHANGES_CHANNEL).await?;
        Ok(feed)
    }

    /// The feed's task: relays notices and heartbeats until the listener is dropped.
    async fn follow(mut self, mut connection: PgListener, listener: Weak<dyn ChangeListener>) {
        loop {
            if let Ended::ListenerGone = self.relay(&mut connection, &listener).await {
                return;
            }
            drop(connection);
            let Some(next) = self.reconnect(&listener).await else {
                return;
            };
            connection = next;
            tracing::info!(target: "keygate", "postgres change feed reconnected; replaying from the change log");
        }
    }

    /// Relays notices and runs heartbeats until the connection is lost or the listener
    /// is gone.
    async fn relay(&mut self, feed: &mut PgListener, listener: &Weak<dyn ChangeListener>) -> Ended {
        // The first heartbeat is immediate: after a reconnect, replay at once.
        let mut next_beat = Instant::now();
        loop {
            let catch_up;
            // `try_recv` is cancel-safe.
            match tokio::time::timeout_at(next_beat, feed.try_recv()).await {
                Ok(Ok(Some(notice))) => {
                    let Some(strong) = listener.upgrade() else {
                        return Ended::ListenerGone;
                    };
                    match parse_notice(notice.payload()) {
                        Some((seq, id)) => {
                            catch_up = self.sequence.notice(&*strong, seq, id) == Next::CatchUp;
                        }
                        // Not ours to interpret: the safe answer is to read the log.
                        None => catch_up = true,
                    }
                }
                Ok(Ok(None)) => {
                    tracing::warn!(target: "keygate", "postgres change feed lost its connection");
                    return Ended::Lost;
                }
                Ok(Err(error)) => {
                    tracing::warn!(target: "keygate", %error, "postgres change feed failed");
                    return Ended::Lost;
                }
                Err(_beat) => {
                    catch_up = true;
                    next_beat = later(Instant::now(), self.config.period());
                }
            }
            if !catch_up {
                continue;
            }
            let Some(strong) = listener.upgrade() else {
                return Ended::ListenerGone;
            };
            let limit = self.config.give_up_after();
            match tokio::time::timeout(limit, self.heartbeat(feed, &*strong)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(target: "keygate", %error, "postgres change feed heartbeat failed");
                    return Ended::Lost;
                }
                Err(_) => {
                    tracing::warn!(target: "keygate", "postgres change feed heartbeat unanswered; reconnecting");
                    return Ended::Lost;
                }
            }
        }
    }

    /// Reads the change sequence on the feed's connection, passes on what was missed and
    /// renews the listener's lease from the moment the read was sent.
    async fn heartbeat(
        &mut self,
        feed: &mut PgListener,
        listener: &dyn ChangeListener,
    ) -> Result<(), sqlx::Error> {
        let sent = Instant::now();
        // Unknown position: read no entries (`i64::MAX`); the replay resyncs.
        let after = self.sequence.last().unwrap_or(i64::MAX);
        let rows = sqlx::query(READ_LOG)
            .bind(after)
            .bind(MAX_REPLAY)
            .fetch_all(&mut *feed)
            .await?;
        let mut current = None;
        let mut entries = Vec::with_capacity(rows.len());
        for row in &rows {
            current = Some(row.try_get::<i64, _>("current")?);
            let seq: Option<i64> = row.try_get("seq")?;
            let id: Option<Uuid> = row.try_get("key_id")?;
            if let (Some(seq), Some(id)) = (seq, id) {
                entries.push((seq, KeyId::from(id)));
            }
        }
        let Some(current) = current else {
            return Err(sqlx::Error::RowNotFound); // the counter row is gone: not in sync
        };
        if self.sequence.replay(listener, current, &entries) {
            tracing::info!(target: "keygate", current, "postgres change feed could not replay the change log; cache cleared");
        }
        listener.synced(later(sent, self.config.lease()));
        Ok(())
    }

    /// Listens again, retrying with backoff; `None` once the listener is gone.
    async fn reconnect(&self, listener: &Weak<dyn ChangeListener>) -> Option<PgListener> {
        let mut delay = Duration::from_millis(50);
        loop {
            if listener.strong_count() == 0 {
                return None;
            }
            match tokio::time::timeout(self.config.give_up_after(), self.listen()).await {
                Ok(Ok(feed)) => return Some(feed),
                Ok(Err(error)) => {
                    let retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                    tracing::warn!(target: "keygate", %error, retry_in_ms, "postgres change feed reconnect failed");
                }
                Err(_) => {
                    tracing::warn!(target: "keygate", "postgres change feed reconnect timed out");
                }
            }
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2).min(FEED_MAX_BACKOFF);
        }
    }
}
