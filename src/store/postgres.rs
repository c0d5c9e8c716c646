//! [`PostgresStore`]: key records in PostgreSQL, with a `LISTEN/NOTIFY` change feed.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::Row;
use uuid::Uuid;

use super::sql::{self, key_columns, store_error, Migration};
use super::{ChangeListener, KeyStore, ListQuery, StoreError};
use crate::hash::PepperFingerprint;
use crate::key::KeyId;
use crate::record::{in_stored_range, KeyPatch, KeyRecord, Metadata};

/// The schema migrations, in order. Applied by [`PostgresStore::migrate`].
const MIGRATIONS: &[Migration] = &[
    (
        1,
        "create keygate_keys",
        include_str!("../../migrations/postgres/0001_create_keys.sql"),
    ),
    (
        2,
        "add keygate_keys.hash_scheme",
        include_str!("../../migrations/postgres/0002_hash_scheme.sql"),
    ),
    (
        4,
        "create keygate_peppers",
        include_str!("../../migrations/postgres/0004_pepper_fingerprints.sql"),
    ),
];

const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS keygate_migrations (
    version     BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
)";

/// The advisory lock that serializes concurrent migrators (`"keygate\0"` in ASCII).
const MIGRATION_LOCK: i64 = 0x6B65_7967_6174_6500;

/// How often an idle change feed checks whether its listener is still alive.
const FEED_IDLE_CHECK: Duration = Duration::from_secs(1);
/// Longest pause between reconnection attempts of the change feed.
const FEED_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How [`PostgresStore::connect_with`] sets up its connection pool.
///
/// ```
/// use std::time::Duration;
/// let options = keygate::PostgresOptions::new()
///     .max_connections(20)
///     .acquire_timeout(Duration::from_secs(1))
///     .application_name("billing-api");
/// # let _ = options;
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// Most connections the pool opens. Default 10.
    pub max_connections: u32,
    /// How long an operation waits for a connection (including connecting) before
    /// failing with [`StoreError::Timeout`]. Default 2 s.
    pub acquire_timeout: Duration,
    /// `application_name` reported to the server (visible in `pg_stat_activity`); the
    /// change feed's connection reports it with `-listener` appended. Default: the URL's
    /// `application_name`, else `"keygate"`.
    pub application_name: Option<String>,
    /// Whether [`connect_with`](PostgresStore::connect_with) applies pending migrations.
    /// Default `true`.
    pub migrate: bool,
}

impl PostgresOptions {
    /// The defaults: 10 connections, 2 s acquire timeout, migrations on connect.
    pub fn new() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(2),
            application_name: None,
            migrate: true,
        }
    }

    /// Sets [`max_connections`](Self::max_connections).
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    /// Sets [`acquire_timeout`](Self::acquire_timeout).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Sets [`application_name`](Self::application_name).
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// Sets [`migrate`](Self::migrate).
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// A [`KeyStore`] in PostgreSQL, for many app servers sharing one database.
///
/// Every insert, update and delete sends `NOTIFY keygate_changes, '<key id>'` in its
/// transaction, and [`subscribe`](KeyStore::subscribe) follows that channel, so a
/// [`CachedStore`](crate::CachedStore) with
/// [`follow_changes`](crate::CachedStore::follow_changes) drops a revoked key as soon as
/// the revoking node commits. Records hold hashes only, never a plaintext key.
///
/// ```no_run
/// use std::time::Duration;
/// use keygate::{CacheConfig, CachedStore, Keygate, Pepper, PostgresStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresStore::connect("postgres://app@db.internal/app").await?;
/// let store = CachedStore::new(store, CacheConfig::new().ttl(Duration::from_secs(30)));
/// assert!(store.follow_changes().await?); // revokes on other nodes reach this cache
/// let gate = Keygate::builder(store, Pepper::new(1, b"load me from a secret store, 32+ bytes")?)
///
///     .store_timeout(Duration::from_secs(2))
///     .build()?;
/// # let _ = gate; Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// The channel every insert, update and delete notifies, with the key id as payload.
    pub const CHANGES_CHANNEL: &'static str = "keygate_changes";

    /// Connects with the default [`PostgresOptions`] and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PostgresOptions::new()).await
    }

    /// Connects with `options`; applies pending migrations unless
    /// [`PostgresOptions::migrate`] is off. Fails with [`StoreError::InvalidUrl`] if `url`
    /// does not parse, and with [`StoreError::Timeout`] if no connection could be made
    /// within the acquire timeout.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        // The message names the problem, never the URL (it may hold a password).
        let mut connect = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidUrl(format!("invalid PostgreSQL URL: {e}")))?;
        let name = options
            .application_name
            .clone()
            .or_else(|| connect.get_application_name().map(str::to_owned))
            .unwrap_or_else(|| "keygate".to_owned());
        connect = connect.application_name(&name);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(store_error)?;
        let store = Self { pool };
        if options.migrate {
            store.migrate().await?;
        }
        Ok(store)
    }

    /// A store over an existing pool, e.g. the application's own, or a lazy one
    /// (`PgPoolOptions::connect_lazy`) so the app can start while the database is down.
    /// Migrations are *not* applied: call [`migrate`](Self::migrate).
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the schema migrations that are not applied yet, each in its own
    /// transaction holding a transaction-level advisory lock, so concurrent callers (many
    /// app servers starting at once) apply each exactly once. Recorded in the table
    /// `keygate_migrations`. Idempotent.
    ///
    /// keygate keeps its own migrations table, so it never conflicts with an
    /// application's `sqlx` migrations on the same database.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        for &(version, description, script) in MIGRATIONS {
            let mut tx = self.pool.begin().await.map_err(store_error)?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            sqlx::raw_sql(CREATE_MIGRATIONS_TABLE)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            let applied: Option<i64> =
                sqlx::query_scalar("SELECT version FROM keygate_migrations WHERE version = $1")
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(store_error)?;
            if applied.is_none() {
                sqlx::raw_sql(script)
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
                sqlx::query(
                    "INSERT INTO keygate_migrations (version, description) VALUES ($1, $2)",
                )
                .bind(version)
                .bind(description)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
                tracing::info!(target: "keygate", version, description, "postgres migration applied");
            }
            tx.commit().await.map_err(store_error)?;
        }
        Ok(())
    }
}

/// A `TIMESTAMPTZ` read without panicking. sqlx's own decoding adds the value to its epoch
/// with chrono's panicking `+`, so `'infinity'`, `'-infinity'` and years past chrono's
/// range (PostgreSQL goes to 294276) would panic the reading task; here they, and any
/// instant outside the years 1 to 9999 that keygate stores, are a decode error, i.e.
/// [`StoreError::Corrupt`].
struct PgInstant(DateTime<Utc>);

/// 2000-01-01T00:00:00Z, PostgreSQL's epoch, in Unix microseconds.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

impl sqlx::Type<sqlx::Postgres> for PgInstant {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <DateTime<Utc> as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for PgInstant {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        match value.format() {
            sqlx::postgres::PgValueFormat::Binary => {
                // Microseconds since PostgreSQL's epoch; the infinities are i64::MAX/MIN.
                let micros = <i64 as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                micros
                    .checked_add(PG_EPOCH_UNIX_MICROS)
                    .and_then(DateTime::from_timestamp_micros)
                    .filter(|at| in_stored_range(*at))
                    .map(PgInstant)
                    .ok_or_else(|| format!("timestamp out of range ({micros} µs)").into())
            }
            // Text is parsed, not computed: no arithmetic that could panic.
            sqlx::postgres::PgValueFormat::Text => {
                let at = <DateTime<Utc> as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                if !in_stored_range(at) {
                    return Err("timestamp out of range".into());
                }
                Ok(PgInstant(at))
            }
        }
    }
}

fn decode(row: &PgRow) -> Result<KeyRecord, StoreError> {
    let id: Uuid = row.try_get(0).map_err(store_error)?;
    let format: String = row.try_get(1).map_err(store_error)?;
    let scopes: Option<Json<BTreeSet<String>>> = row.try_get(13).map_err(store_error)?;
    let metadata: Json<Metadata> = row.try_get(14).map_err(store_error)?;
    let instant = |i: usize| row.try_get::<PgInstant, _>(i).map(|at| at.0);
    let opt_instant = |i: usize| {
        row.try_get::<Option<PgInstant>, _>(i)
            .map(|at| at.map(|at| at.0))
    };
    Ok(KeyRecord {
        id: KeyId::from(id),
        format: sql::format_from(&format)?,
        hash: sql::hash_from(
            row.try_get(2).map_err(store_error)?,
            row.try_get(3).map_err(store_error)?,
            row.try_get(15).map_err(store_error)?,
        )?,
        name: row.try_get(4).map_err(store_error)?,
        description: row.try_get(5).map_err(store_error)?,
        owner: row.try_get(6).map_err(store_error)?,
        created_by: row.try_get(7).map_err(store_error)?,
        created_at: instant(8).map_err(store_error)?,
        updated_at: instant(9).map_err(store_error)?,
        expires_at: opt_instant(10).map_err(store_error)?,
        last_used_at: opt_instant(11).map_err(store_error)?,
        active: row.try_get(12).map_err(store_error)?,
        scopes: scopes.map(|s| s.0),
        metadata: metadata.0,
    })
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds every column of `record` in [`key_columns`] order to `$1`..`$16`.
fn bind_record<'q>(query: PgQuery<'q>, record: &'q KeyRecord) -> PgQuery<'q> {
    let (hash_version, hash_digest, hash_scheme) = sql::hash_to(record.hash.as_ref());
    query
        .bind(*record.id.as_uuid())
        .bind(record.format.as_str())
        .bind(hash_version)
        .bind(hash_digest)
        .bind(&record.name)
        .bind(&record.description)
        .bind(&record.owner)
        .bind(&record.created_by)
        .bind(record.created_at)
        .bind(record.updated_at)
        .bind(record.expires_at)
        .bind(record.last_used_at)
        .bind(record.active)
        .bind(record.scopes.as_ref().map(Json))
        .bind(Json(&record.metadata))
        .bind(hash_scheme)
}

#[async_trait]
impl KeyStore for PostgresStore {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        let query = sqlx::query(concat!(
            "WITH inserted AS (INSERT INTO keygate_keys (",
            key_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
             RETURNING id) \
             SELECT pg_notify('keygate_changes', id::text) FROM inserted"
        ));
        match bind_record(query, &record).execute(&self.pool).await {
            Ok(_) => Ok(()),
            Err(e) if sql::is_unique_violation(&e) => Err(StoreError::Conflict(record.id)),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn get(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            " FROM keygate_keys WHERE id = $1"
        ))
        .bind(*id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.map(|row| decode(&row).map(Arc::new)).transpose()
    }

    async fn update(&self, id: KeyId, patch: &KeyPatch) -> Result<Option<KeyRecord>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        // The row lock makes the read-modify-write atomic against concurrent updates.
        let row = sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            " FROM keygate_keys WHERE id = $1 FOR UPDATE"
        ))
        .bind(*id.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        let Some(row) = row else {
            return Ok(None); // dropping the transaction rolls it back
        };
        let mut record = decode(&row)?;
        patch.apply(&mut record)?; // an error drops (rolls back) the transaction
        let query = sqlx::query(
            "WITH updated AS (UPDATE keygate_keys SET format = $2, hash_version = $3, \
             hash_digest = $4, name = $5, description = $6, owner_id = $7, created_by = $8, \
             created_at = $9, updated_at = $10, expires_at = $11, last_used_at = $12, \
             active = $13, scopes = $14, metadata = $15, hash_scheme = $16 \
             WHERE id = $1 RETURNING id) \
             SELECT pg_notify('keygate_changes', id::text) FROM updated",
        );
        bind_record(query, &record)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(Some(record))
    }

    async fn delete(&self, id: KeyId) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "WITH deleted AS (DELETE FROM keygate_keys WHERE id = $1 RETURNING id) \
             SELECT pg_notify('keygate_changes', id::text) FROM deleted",
        )
        .bind(*id.as_uuid())
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let after = query.after.map(|cursor| *cursor.id().as_uuid());
        let rows = match (&query.owner, after) {
            (None, None) => sqlx::query(concat!(
                "SELECT ",
                key_columns!(),
                " FROM keygate_keys ORDER BY id LIMIT $1"
            ))
            .bind(limit),
            (None, Some(after)) => sqlx::query(concat!(
                "SELECT ",
                key_columns!(),
                " FROM keygate_keys WHERE id > $2 ORDER BY id LIMIT $1"
            ))
            .bind(limit)
            .bind(after),
            (Some(owner), None) => sqlx::query(concat!(
                "SELECT ",
                key_columns!(),
                " FROM keygate_keys WHERE owner_id = $2 ORDER BY id LIMIT $1"
            ))
            .bind(limit)
            .bind(owner.as_str()),
            (Some(owner), Some(after)) => sqlx::query(concat!(
                "SELECT ",
                key_columns!(),
                " FROM keygate_keys WHERE owner_id = $2 AND id > $3 ORDER BY id LIMIT $1"
            ))
            .bind(limit)
            .bind(owner.as_str())
            .bind(after),
        }
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(decode).collect()
    }

    async fn record_last_used(&self, batch: &[(KeyId, DateTime<Utc>)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // One statement for the whole batch: two arrays, the latest instant per id wins,
        // and only later instants are written.
        let (ids, ats): (Vec<Uuid>, Vec<DateTime<Utc>>) =
            batch.iter().map(|(id, at)| (*id.as_uuid(), *at)).unzip();
        sqlx::query(
            "UPDATE keygate_keys AS k SET last_used_at = batch.at \
             FROM (SELECT id, max(at) AS at FROM unnest($1::uuid[], $2::timestamptz[]) AS t(id, at) \
                   GROUP BY id) AS batch \
             WHERE k.id = batch.id AND (k.last_used_at IS NULL OR k.last_used_at < batch.at)",
        )
        .bind(ids)
        .bind(ats)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    /// Follows `NOTIFY keygate_changes` on a dedicated connection (application name
    /// `<name>-listener`). If that connection drops, the feed reconnects with backoff and
    /// then calls [`ChangeListener::resync`]; it stops once `listener` is dropped.
    /// Fails if the first connection cannot be made.
    async fn subscribe(&self, listener: Weak<dyn ChangeListener>) -> Result<bool, StoreError> {
        let connect = PgConnectOptions::clone(&self.pool.connect_options());
        let name = format!(
            "{}-listener",
            connect.get_application_name().unwrap_or("keygate")
        );
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(self.pool.options().get_acquire_timeout())
            .connect_lazy_with(connect.application_name(&name));
        let feed = listen(&pool).await.map_err(store_error)?;
        tokio::spawn(follow(pool, feed, listener));
        Ok(true)
    }

    async fn remember_pepper(
        &self,
        version: u32,
        fingerprint: PepperFingerprint,
    ) -> Result<Option<PepperFingerprint>, StoreError> {
        remember_pepper(&self.pool, version, fingerprint).await
    }
}

/// [`KeyStore::remember_pepper`]: insert unless the version has a row, then read the row
/// that stopped the insert (a statement of its own, so it sees a row committed meanwhile).
async fn remember_pepper(
    pool: &PgPool,
    version: u32,
    fingerprint: PepperFingerprint,
) -> Result<Option<PepperFingerprint>, StoreError> {
    let version = i64::from(version);
    let inserted = sqlx::query(
        "INSERT INTO keygate_peppers (version, fingerprint) VALUES ($1, $2) \
         ON CONFLICT (version) DO NOTHING",
    )
    .bind(version)
    .bind(&fingerprint.as_bytes()[..])
    .execute(pool)
    .await
    .map_err(store_error)?;
    if inserted.rows_affected() > 0 {
        return Ok(None);
    }
    let known: Vec<u8> =
        sqlx::query_scalar("SELECT fingerprint FROM keygate_peppers WHERE version = $1")
            .bind(version)
            .fetch_one(pool)
            .await
            .map_err(store_error)?;
    let known: [u8; 32] = known
        .try_into()
        .map_err(|_| sql::corrupt("a pepper fingerprint is not 32 bytes"))?;
    Ok(Some(PepperFingerprint::from_bytes(known)))
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
