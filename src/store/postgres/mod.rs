//! [`PostgresStore`]: key records in PostgreSQL, with a `LISTEN/NOTIFY` change feed
//! (in [`feed`]).

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{QueryBuilder, Row};
use uuid::Uuid;

use super::sql::{self, key_columns, store_error, LegacyTable, Script};
use super::{ChangeListener, FeedConfig, KeyStore, ListQuery, StoreError};
use crate::hash::PepperFingerprint;
use crate::key::KeyId;
use crate::limits::NetworkPolicy;
use crate::record::{in_stored_range, KeyPatch, KeyRecord, Metadata};

mod feed;
mod limits;
mod tls;

/// The schema migrations, in order. Applied by [`PostgresStore::migrate`].
const MIGRATIONS: &[Script] = &[
    Script {
        version: 1,
        description: "create keygate_keys",
        sql: include_str!("../../../migrations/postgres/0001_create_keys.sql"),
    },
    Script {
        version: 2,
        description: "add keygate_keys.hash_scheme",
        sql: include_str!("../../../migrations/postgres/0002_hash_scheme.sql"),
    },
    Script {
        version: 3,
        description: "index keygate_keys in creation order",
        sql: include_str!("../../../migrations/postgres/0003_creation_order.sql"),
    },
    Script {
        version: 4,
        description: "create keygate_peppers",
        sql: include_str!("../../../migrations/postgres/0004_pepper_fingerprints.sql"),
    },
    Script {
        version: 5,
        description: "add keygate_keys.ratelimits and keygate_keys.credits",
        sql: include_str!("../../../migrations/postgres/0005_usage_policy.sql"),
    },
    Script {
        version: 6,
        description: "create keygate_usage",
        sql: include_str!("../../../migrations/postgres/0006_usage_state.sql"),
    },
    Script {
        version: 7,
        description: "add keygate_keys.network",
        sql: include_str!("../../../migrations/postgres/0007_network_policy.sql"),
    },
    Script {
        version: 8,
        description: "create the change sequence keygate_change_seq and log keygate_changes",
        sql: include_str!("../../../migrations/postgres/0008_change_log.sql"),
    },
];

/// The end of every write statement, after a CTE `written` that returns the written
/// row's `id`: takes the next change number (the counter row's lock is held to commit, so
/// numbers commit in order, without holes), appends `(seq, id)` to the change log, trims
/// the log every 1024th change to its latest 100 000 entries ([`CHANGE_LOG_KEEP`]), and
/// notifies `<seq>:<id>`. Nothing happens when `written` is empty.
///
/// [`CHANGE_LOG_KEEP`]: crate::store::CHANGE_LOG_KEEP
macro_rules! log_and_notify {
    () => {
        ", numbered AS (UPDATE keygate_change_seq SET seq = seq + 1 \
             WHERE EXISTS (SELECT 1 FROM written) RETURNING seq), \
         logged AS (INSERT INTO keygate_changes (seq, key_id) \
             SELECT numbered.seq, written.id FROM numbered, written RETURNING seq, key_id), \
         trimmed AS (DELETE FROM keygate_changes \
             WHERE seq <= (SELECT seq FROM logged) - 100000 \
               AND (SELECT seq FROM logged) % 1024 = 0) \
         SELECT pg_notify('keygate_changes', seq::text || ':' || key_id::text) FROM logged"
    };
}

/// The first runner's `keygate_migrations` (see [`LegacyTable`]), in PostgreSQL. The
/// table is the one `keygate_migrations` resolves to on the `search_path`.
const LEGACY: LegacyTable = LegacyTable {
    detect: "SELECT EXISTS (SELECT 1 FROM pg_attribute \
             WHERE attrelid = to_regclass('keygate_migrations') \
               AND attname = 'applied_at' AND NOT attisdropped)",
    upgrade: "ALTER TABLE keygate_migrations RENAME COLUMN applied_at TO installed_on;
              ALTER TABLE keygate_migrations
                  ADD COLUMN success BOOLEAN NOT NULL DEFAULT TRUE,
                  ADD COLUMN checksum BYTEA NOT NULL DEFAULT ''::bytea,
                  ADD COLUMN execution_time BIGINT NOT NULL DEFAULT -1;",
    adopt: "UPDATE keygate_migrations SET checksum = $1 \
            WHERE version = $2 AND length(checksum) = 0",
};

/// The advisory lock that serializes concurrent migrators (`"keygate\0"` in ASCII).
const MIGRATION_LOCK: i64 = 0x6B65_7967_6174_6500;

/// How [`PostgresStore::connect_with`] sets up its connection pool.
///
/// ```
/// use std::time::Duration;
/// let config = keygate::PostgresConfig::new()
///     .max_connections(20)
///     .acquire_timeout(Duration::from_secs(1))
///     .application_name("billing-api");
/// # let _ = config;
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresConfig {
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
    /// The change feed's heartbeat and lease ([`FeedConfig`]); default
    /// [`FeedConfig::new`].
    pub feed: FeedConfig,
}

impl PostgresConfig {
    /// The defaults: 10 connections, 2 s acquire timeout, migrations on connect.
    pub fn new() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(2),
            application_name: None,
            migrate: true,
            feed: FeedConfig::new(),
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

    /// Sets [`feed`](Self::feed).
    pub fn feed(mut self, feed: FeedConfig) -> Self {
        self.feed = feed;
        self
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// A [`KeyStore`] in PostgreSQL, for many app servers sharing one database.
///
/// Every insert, update and delete takes the next number of the change sequence, appends
/// it with the key id to the table `keygate_changes` and sends
/// `NOTIFY keygate_changes, '<seq>:<key id>'`, all in its transaction, and
/// [`subscribe`](KeyStore::subscribe) follows that channel, so a
/// [`CachedStore`](crate::CachedStore) with
/// [`follow_changes`](crate::CachedStore::follow_changes) drops a revoked key as soon as
/// the revoking node commits. A lost notice cannot undo a revoke: the feed reads the
/// sequence every [`FeedConfig::heartbeat`] on its own connection and replays what it
/// missed, and the cache stops serving from memory when the feed cannot prove it is up
/// to date (bound: [`FeedConfig`]). Records hold hashes only, never a plaintext key.
///
/// It is also a [`Limiter`](crate::limits::Limiter) ([`KeygateBuilder::limiter`](crate::KeygateBuilder::limiter)):
/// rate limits and credits exact across every app server on the database, one statement
/// per check on the table `keygate_usage` (one row per key or owner, locked by the
/// statement, written only when everything in the check is allowed). It decides at the
/// gate's clock, so app servers must keep their clocks in step.
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
///     .store_timeout(Duration::from_secs(2))
///     .build()?;
/// # let _ = gate; Ok(()) }
/// ```
///
/// # TLS
///
/// With the `tls` feature keygate speaks TLS to PostgreSQL through rustls on ring (no
/// OpenSSL). The URL's `sslmode` decides (or `PGSSLMODE` when the URL names none, as sqlx
/// reads it), as in libpq, with one rule on top: **only `sslmode=disable` connects in
/// cleartext over the network.**
///
/// | URL says | remote host, `tls` on | remote host, `tls` off | this machine¹ |
/// |---|---|---|---|
/// | `sslmode=disable` | cleartext | cleartext | cleartext |
/// | nothing, `prefer`, `allow` | as `require`² | [`StoreError::TlsUnavailable`] | as said (TLS if offered, with `tls`) |
/// | `require` | encrypted, certificate not checked² | `TlsUnavailable` | as remote |
/// | `verify-ca` | certificate chains to a trusted CA³ | `TlsUnavailable` | as remote |
/// | `verify-full` | that, and the certificate names the host | `TlsUnavailable` | as remote |
///
/// ¹ A loopback address, `localhost` or a Unix socket: nothing leaves the machine.
/// ² With a CA file (`sslrootcert=/path/ca.pem`), `require` (and what became `require`)
/// is `verify-ca`, as in libpq: a CA you name is a CA you want checked.
/// ³ The trusted CAs are the system's root certificates plus the `sslrootcert` file (sqlx
/// adds the file to the system roots; libpq would trust the file alone). With
/// `verify-ca` any certificate from a public CA therefore passes: **use `verify-full`**,
/// which also checks the host name, for anything that crosses a network you do not trust.
///
/// A handshake that fails is [`StoreError::Backend`], and keygate never retries in
/// cleartext: its source is [`sqlx::Error::Tls`] for a server that does not speak TLS, and
/// [`sqlx::Error::Io`] carrying rustls's `InvalidCertificate` error for a certificate that
/// is refused (an unknown CA, another host name, expired). The change feed's connection is opened with the same options.
/// [`PostgresStore::connect_options`] applies these rules for a pool of your own; a pool
/// handed to [`from_pool`](PostgresStore::from_pool) is used as it is.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), keygate::StoreError> {
/// let store = keygate::PostgresStore::connect(
///     "postgres://app@db.internal/app?sslmode=verify-full&sslrootcert=/etc/keygate/db-ca.pem",
/// )
/// .await?;
/// # let _ = store; Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    feed: FeedConfig,
    /// Whether limiter writes wait for the WAL flush (see [`durable_limits`](Self::durable_limits)).
    durable_limits: bool,
}

impl PostgresStore {
    /// The channel every insert, update and delete notifies, with the key id as payload.
    pub const CHANGES_CHANNEL: &'static str = "keygate_changes";

    /// Connects to `url` (`postgres://user:password@host/database?…`, as
    /// [`PgConnectOptions`] reads it) with the default [`PostgresConfig`] and applies
    /// pending migrations.
    ///
    /// # Errors
    ///
    /// As [`connect_with`](Self::connect_with).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PostgresConfig::new()).await
    }

    /// Connects to `url` with `config`; applies pending migrations unless
    /// [`PostgresConfig::migrate`] is off.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidUrl`] if `url` does not parse (the message never repeats the
    /// URL, which may hold a password) or names a CA file (`sslrootcert`) that cannot be
    /// read; [`StoreError::TlsUnavailable`] as
    /// [`connect_options`](Self::connect_options) says; [`StoreError::Timeout`] if no
    /// connection could be made within the acquire timeout; [`StoreError::Backend`] if
    /// connecting fails otherwise (including a TLS handshake: see [`PostgresStore`], "TLS"),
    /// or the migrations fail as described under [`migrate`](Self::migrate).
    pub async fn connect_with(url: &str, config: PostgresConfig) -> Result<Self, StoreError> {
        let mut connect = Self::connect_options(url)?;
        tls::check_root_cert(&connect)?;
        let name = config
            .application_name
            .clone()
            .or_else(|| connect.get_application_name().map(str::to_owned))
            .unwrap_or_else(|| "keygate".to_owned());
        connect = connect.application_name(&name);
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(store_error)?;
        let store = Self {
            pool,
            feed: config.feed,
            durable_limits: false,
        };
        if config.migrate {
            store.migrate().await?;
        }
        Ok(store)
    }

    /// `url` parsed as [`PgConnectOptions`], with keygate's TLS rules applied (see
    /// [`PostgresStore`], "TLS"): what [`connect_with`](Self::connect_with) connects with.
    /// For a pool of your own ([`from_pool`](Self::from_pool)) that follows the same rules.
    ///
    /// ```
    /// use keygate::sqlx::postgres::PgSslMode;
    /// use keygate::PostgresStore;
    ///
    /// // Cleartext only where the URL says so.
    /// let plain = PostgresStore::connect_options("postgres://app@db.internal/keys?sslmode=disable")?;
    /// assert!(matches!(plain.get_ssl_mode(), PgSslMode::Disable));
    ///
    /// // PostgreSQL's default (`prefer`) to a remote host: TLS required, or no connection.
    /// let default = PostgresStore::connect_options("postgres://app@db.internal/keys");
    /// match default {
    ///     Ok(options) => assert!(matches!(options.get_ssl_mode(), PgSslMode::Require)), // `tls`
    ///     Err(e) => assert!(matches!(e, keygate::StoreError::TlsUnavailable(_))), // without it
    /// }
    /// # Ok::<(), keygate::StoreError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidUrl`] if `url` does not parse (the message never repeats the
    /// URL); [`StoreError::TlsUnavailable`] if it asks for TLS (or would fall back to
    /// cleartext over the network) and this build has no `tls` feature.
    pub fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
        tls::connect_options(url)
    }

    /// A store over an existing pool, e.g. the application's own, or a lazy one
    /// (`PgPoolOptions::connect_lazy`) so the app can start while the database is down.
    /// Migrations are *not* applied: call [`migrate`](Self::migrate).
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            feed: FeedConfig::new(),
            durable_limits: false,
        }
    }

    /// This store with the change feed's settings `feed` (for a store made by
    /// [`from_pool`](Self::from_pool); [`PostgresConfig::feed`] otherwise).
    pub fn with_feed(mut self, feed: FeedConfig) -> Self {
        self.feed = feed;
        self
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether the limiter's writes (see [`Limiter`](crate::limits::Limiter) below) wait
    /// for PostgreSQL to flush them to disk before answering. Default `false`: each check
    /// commits with `synchronous_commit = off` for its own transaction only (key records are
    /// written as before). A check takes its subject's row lock, so checks of one key run one
    /// after another, and with a flush each holds the lock for a disk sync: on a test
    /// machine whose disk syncs in ~9 ms, about 250 checks per second on one key from 20
    /// clients, against about 1,300 without (`pgbench`; see benches/README.md). The price of `false`: if the *database server* crashes, checks
    /// committed in the last moments before the crash (at most three `wal_writer_delay`s,
    /// 600 ms by default) are undone, so those requests' rate-limit units and credits are
    /// given back; decisions stay exact while it runs, and an app server crash loses
    /// nothing. `true` makes every check durable.
    #[must_use]
    pub fn durable_limits(mut self, durable: bool) -> Self {
        self.durable_limits = durable;
        self
    }

    /// Applies the schema migrations that are not applied yet, with sqlx's
    /// [`Migrator`](sqlx::migrate::Migrator), recording them in the table
    /// `keygate_migrations`. Idempotent: everything happens in one transaction holding a
    /// transaction-level advisory lock, so concurrent callers (many app servers starting
    /// at once) apply each migration exactly once, and a failure changes nothing.
    ///
    /// Applied migrations are checked against their checksums. keygate keeps its own
    /// migrations table, so it never conflicts with an application's `sqlx` migrations on
    /// the same database. A `keygate_migrations` table written by keygate's first,
    /// checksum-less runner is upgraded in place.
    ///
    /// # Errors
    ///
    /// [`StoreError::Timeout`] if no connection could be had in time;
    /// [`StoreError::Backend`] if the database fails, or refuses the migration: its source
    /// is then sqlx's `MigrateError`, e.g. `VersionMismatch(n)` when applied migration `n`
    /// differs from the embedded one, or `VersionMissing(n)` when the database records an
    /// unknown migration `n` older than the newest this keygate knows. Migrations newer
    /// than every embedded one (a newer keygate migrated the database, as in a rolling
    /// upgrade) are accepted with a warning: keygate's migrations are written so that older
    /// keygates keep working.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        let migrator = sql::migrator(MIGRATIONS);
        sql::prepare::<sqlx::Postgres>(&mut tx, &migrator, &LEGACY)
            .await
            .map_err(sql::migrate_error)?;
        sql::run(&migrator, &mut *tx).await?;
        tx.commit().await.map_err(store_error)
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
    let get = |column: &str| row.try_get::<PgInstant, _>(column).map(|at| at.0);
    let get_opt = |column: &str| {
        row.try_get::<Option<PgInstant>, _>(column)
            .map(|at| at.map(|at| at.0))
    };
    let id: Uuid = row.try_get("id").map_err(store_error)?;
    let format: String = row.try_get("format").map_err(store_error)?;
    let scopes: Option<Json<BTreeSet<String>>> = row.try_get("scopes").map_err(store_error)?;
    let metadata: Json<Metadata> = row.try_get("metadata").map_err(store_error)?;
    let network: Option<Json<NetworkPolicy>> = row.try_get("network").map_err(store_error)?;
    let ratelimits: Json<Vec<crate::limits::RateLimit>> =
        row.try_get("ratelimits").map_err(store_error)?;
    let credits: Option<Json<crate::limits::CreditPolicy>> =
        row.try_get("credits").map_err(store_error)?;
    Ok(KeyRecord {
        id: KeyId::from(id),
        format: sql::format_from(&format)?,
        hash: sql::hash_from(
            row.try_get("hash_version").map_err(store_error)?,
            row.try_get("hash_digest").map_err(store_error)?,
            row.try_get("hash_scheme").map_err(store_error)?,
        )?,
        name: row.try_get("name").map_err(store_error)?,
        description: row.try_get("description").map_err(store_error)?,
        owner: row.try_get("owner_id").map_err(store_error)?,
        created_by: row.try_get("created_by").map_err(store_error)?,
        created_at: get("created_at").map_err(store_error)?,
        updated_at: get("updated_at").map_err(store_error)?,
        expires_at: get_opt("expires_at").map_err(store_error)?,
        last_used_at: get_opt("last_used_at").map_err(store_error)?,
        active: row.try_get("active").map_err(store_error)?,
        scopes: scopes.map(|s| s.0),
        metadata: metadata.0,
        network: network.map(|n| n.0).unwrap_or_default(),
        ratelimits: ratelimits.0,
        credits: credits.map(|c| c.0),
    })
}

/// `at` cut to whole microseconds, rounding down as [`Cursor`](crate::Cursor) and the
/// SQLite store do (sqlx would round towards 2000-01-01, i.e. up before it), so that a
/// stored instant and a cursor made from it compare equal.
fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds every column of `record` in [`key_columns`] order to `$1`..`$19`, as the
/// `INSERT` and `UPDATE` below name them.
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
        .bind(micros(record.created_at))
        .bind(micros(record.updated_at))
        .bind(record.expires_at.map(micros))
        .bind(record.last_used_at.map(micros))
        .bind(record.active)
        .bind(record.scopes.as_ref().map(Json))
        .bind(Json(&record.metadata))
        .bind(hash_scheme)
        .bind(Json(&record.ratelimits))
        .bind(record.credits.as_ref().map(Json))
        .bind((!record.network.is_unrestricted()).then_some(Json(&record.network)))
}

#[async_trait]
impl KeyStore for PostgresStore {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        let query = sqlx::query(concat!(
            "WITH written AS (INSERT INTO keygate_keys (",
            key_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
             $17, $18, $19) \
             RETURNING id)",
            log_and_notify!()
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
        let query = sqlx::query(concat!(
            "WITH written AS (UPDATE keygate_keys SET format = $2, hash_version = $3, \
             hash_digest = $4, name = $5, description = $6, owner_id = $7, created_by = $8, \
             created_at = $9, updated_at = $10, expires_at = $11, last_used_at = $12, \
             active = $13, scopes = $14, metadata = $15, hash_scheme = $16, ratelimits = $17, \
             credits = $18, network = $19 \
             WHERE id = $1 RETURNING id)",
            log_and_notify!()
        ));
        bind_record(query, &record)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(Some(record))
    }

    async fn delete(&self, id: KeyId) -> Result<bool, StoreError> {
        let done = sqlx::query(concat!(
            "WITH written AS (DELETE FROM keygate_keys WHERE id = $1 RETURNING id)",
            log_and_notify!()
        ))
        .bind(*id.as_uuid())
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        let mut select = QueryBuilder::<sqlx::Postgres>::new(concat!(
            "SELECT ",
            key_columns!(),
            " FROM keygate_keys WHERE TRUE"
        ));
        if let Some(owner) = &query.owner {
            select.push(" AND owner_id = ").push_bind(owner.as_str());
        }
        match sql::start(query.after) {
            sql::Start::First => {}
            // Creation order: the cursor is an exclusive lower bound on (created_at, id).
            sql::Start::After(after) => {
                select
                    .push(" AND (created_at, id) > (")
                    .push_bind(after.created_at())
                    .push(", ")
                    .push_bind(*after.id().as_uuid())
                    .push(")");
            }
            sql::Start::End => return Ok(Vec::new()),
        }
        select
            .push(" ORDER BY created_at, id LIMIT ")
            .push_bind(i64::try_from(query.limit).unwrap_or(i64::MAX));
        let rows = select
            .build()
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
        let (ids, ats): (Vec<Uuid>, Vec<DateTime<Utc>>) = batch
            .iter()
            .map(|(id, at)| (*id.as_uuid(), micros(*at)))
            .unzip();
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
    /// `<name>-listener`), reading the change sequence on it every
    /// [`FeedConfig::heartbeat`] to replay what was missed and renew the listener's lease
    /// ([`ChangeListener::synced`]). If that connection drops or goes silent, the feed
    /// reconnects with backoff and replays from its last sequence number (or calls
    /// [`ChangeListener::resync`] when the log no longer reaches back that far); it stops
    /// once `listener` is dropped. The first heartbeat (which resyncs the listener) is
    /// done before this returns.
    ///
    /// # Errors
    ///
    /// [`StoreError::Timeout`] or [`StoreError::Backend`] if the first connection cannot
    /// be made, `LISTEN` fails, or the change sequence cannot be read (a database without
    /// migration 8, e.g. one opened with [`PostgresConfig::migrate`] off and not migrated).
    async fn subscribe(&self, listener: Weak<dyn ChangeListener>) -> Result<bool, StoreError> {
        feed::subscribe(&self.pool, self.feed, listener).await
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
