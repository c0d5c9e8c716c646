//! The change feed of [`PostgresStore`]: `LISTEN keygate_changes` on a dedicated
//! connection, relayed to a [`ChangeListener`], reconnecting with backoff.

use std::sync::Weak;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};

use super::PostgresStore;
use crate::key::KeyId;
use crate::store::sql::store_error;
use crate::store::{ChangeListener, StoreError};

/// How often an idle change feed checks whether its listener is still alive.
const FEED_IDLE_CHECK: Duration = Duration::from_secs(1);
/// Longest pause between reconnection attempts of the change feed.
const FEED_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// [`KeyStore::subscribe`](crate::KeyStore::subscribe) of [`PostgresStore`]: follows
/// `NOTIFY keygate_changes` on a dedicated connection (application name
/// `<name>-listener`) opened like `store`'s. If that connection drops, the feed reconnects
/// with backoff and then calls [`ChangeListener::resync`]; it stops once `listener` is
/// dropped. Fails if the first connection cannot be made.
pub(super) async fn subscribe(
    store: &PgPool,
    listener: Weak<dyn ChangeListener>,
) -> Result<bool, StoreError> {
    let connect = PgConnectOptions::clone(&store.connect_options());
    let name = format!(
        "{}-listener",
        connect.get_application_name().unwrap_or("keygate")
    );
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(store.options().get_acquire_timeout())
        .connect_lazy_with(connect.application_name(&name));
    let feed = listen(&pool).await.map_err(store_error)?;
    tokio::spawn(follow(pool, feed, listener));
    Ok(true)
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut feed = PgListener::connect_with(pool).await?;
    // A lost connection ends `try_recv` with `Ok(None)`; `follow` reconnects itself.
    feed.eager_reconnect(false);
    feed.listen(PostgresStore::CHANGES_CHANNEL).await?;
    Ok(feed)
}

/// The change feed's task: relays notices to `listener` until it is dropped.
async fn follow(pool: PgPool, mut feed: PgListener, listener: Weak<dyn ChangeListener>) {
    loop {
        let listener_gone = relay(&mut feed, &listener).await;
        drop(feed); // hands the connection back, so `pool.close` below does not wait on it
        if listener_gone {
            break;
        }
        // Notices sent while reconnecting are lost: once listening again, forget everything.
        let Some(next) = reconnect(&pool, &listener).await else {
            break;
        };
        feed = next;
        let Some(listener) = listener.upgrade() else {
            break;
        };
        listener.resync();
        tracing::info!(target: "keygate", "postgres change feed reconnected; cache cleared");
    }
    pool.close().await;
}

/// Relays notices until the connection is lost (`false`) or the listener is gone (`true`).
async fn relay(feed: &mut PgListener, listener: &Weak<dyn ChangeListener>) -> bool {
    loop {
        // `try_recv` is cancel-safe; the timeout only lets an idle feed notice that its
        // listener is gone.
        match tokio::time::timeout(FEED_IDLE_CHECK, feed.try_recv()).await {
            Err(_idle) => {
                if listener.strong_count() == 0 {
                    return true;
                }
            }
            Ok(Ok(Some(notice))) => {
                let Some(listener) = listener.upgrade() else {
                    return true;
                };
                match notice.payload().parse::<KeyId>() {
                    Ok(id) => listener.changed(id),
                    // Not ours to interpret: the safe answer is to forget everything.
                    Err(_) => listener.resync(),
                }
            }
            Ok(Ok(None)) => {
                tracing::warn!(target: "keygate", "postgres change feed lost its connection");
                return false;
            }
            Ok(Err(error)) => {
                tracing::warn!(target: "keygate", %error, "postgres change feed failed");
                return false;
            }
        }
    }
}

/// Listens again, retrying with backoff; `None` once the listener is gone.
async fn reconnect(pool: &PgPool, listener: &Weak<dyn ChangeListener>) -> Option<PgListener> {
    let mut delay = Duration::from_millis(50);
    loop {
        if listener.strong_count() == 0 {
            return None;
        }
        match listen(pool).await {
            Ok(feed) => return Some(feed),
            Err(error) => {
                let retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                tracing::warn!(target: "keygate", %error, retry_in_ms, "postgres change feed reconnect failed");
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2).min(FEED_MAX_BACKOFF);
            }
        }
    }
}
