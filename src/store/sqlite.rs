//! [`SqliteStore`]: key records in an SQLite database file (or in memory).

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row};

use super::sql::{self, key_columns, store_error, LegacyTable, Script};
use super::{KeyStore, ListQuery, StoreError};
use crate::hash::PepperFingerprint;
use crate::key::KeyId;
use crate::record::{in_stored_range, KeyPatch, KeyRecord, Metadata};

mod limits;

/// The schema migrations, in order. Applied by [`SqliteStore::migrate`].
const MIGRATIONS: &[Script] = &[
    Script {
        version: 1,
        description: "create keygate_keys",
        sql: include_str!("../../migrations/sqlite/0001_create_keys.sql"),
    },
    Script {
        version: 2,
        description: "add keygate_keys.hash_scheme",
        sql: include_str!("../../migrations/sqlite/0002_hash_scheme.sql"),
    },
    Script {
        version: 3,
        description: "index keygate_keys in creation order",
        sql: include_str!("../../migrations/sqlite/0003_creation_order.sql"),
    },
    Script {
        version: 4,
        description: "create keygate_peppers",
        sql: include_str!("../../migrations/sqlite/0004_pepper_fingerprints.sql"),
    },
    Script {
        version: 5,
        description: "add keygate_keys.ratelimits and keygate_keys.credits",
        sql: include_str!("../../migrations/sqlite/0005_usage_policy.sql"),
    },
    Script {
        version: 6,
        description: "create keygate_usage",
        sql: include_str!("../../migrations/sqlite/0006_usage_state.sql"),
    },
    Script {
        version: 7,
        description: "add keygate_keys.network",
        sql: include_str!("../../migrations/sqlite/0007_network_policy.sql"),
    },
];

/// The first runner's `keygate_migrations` (see [`LegacyTable`]), in SQLite.
const LEGACY: LegacyTable = LegacyTable {
    detect: "SELECT EXISTS (SELECT 1 FROM pragma_table_info('keygate_migrations') \
             WHERE name = 'applied_at')",
    upgrade: "ALTER TABLE keygate_migrations RENAME COLUMN applied_at TO installed_on;
              ALTER TABLE keygate_migrations ADD COLUMN success BOOLEAN NOT NULL DEFAULT TRUE;
              ALTER TABLE keygate_migrations ADD COLUMN checksum BLOB NOT NULL DEFAULT x'';
              ALTER TABLE keygate_migrations
                  ADD COLUMN execution_time BIGINT NOT NULL DEFAULT -1;",
    adopt: "UPDATE keygate_migrations SET checksum = ?1 \
            WHERE version = ?2 AND length(checksum) = 0",
};

/// How [`SqliteStore::connect_with`] opens its database.
///
/// ```
/// use std::time::Duration;
/// use keygate::SqliteConfig;
///
/// let config = SqliteConfig::new()
///     .busy_timeout(Duration::from_secs(10))
///     .max_connections(8);
/// # let _ = config;
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteConfig {
    /// How long a connection waits for another writer (another connection or process)
    /// before failing. Default 5 s.
    pub busy_timeout: Duration,
    /// Most connections the pool opens to a database file. Default 4. An in-memory
    /// database always has exactly one, since it lives as long as its connection.
    pub max_connections: u32,
    /// Whether [`connect_with`](SqliteStore::connect_with) applies pending migrations
    /// (never with `?mode=ro`). Default `true`.
    pub migrate: bool,
}

#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
impl SqliteConfig {
    /// The defaults: 5 s busy timeout, 4 connections, migrations on connect.
    pub fn new() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            max_connections: 4,
            migrate: true,
        }
    }

    /// Sets [`busy_timeout`](Self::busy_timeout).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Sets [`max_connections`](Self::max_connections).
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    /// Sets [`migrate`](Self::migrate).
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// A [`KeyStore`] in SQLite: the embedded default for single-server deployments and
/// examples.
///
/// [`connect`](Self::connect) takes a file path or URL, creates the database on first
/// use, sets it up for durability (WAL journal, `synchronous = FULL`: a write that
/// returned `Ok` survives the process being killed) and applies the schema migrations.
/// Records hold hashes only, never a plaintext key.
///
/// SQLite has no change feed, so [`KeyStore::subscribe`] answers `Ok(false)`: one
/// process owns the file, and its [`CachedStore`](crate::CachedStore) sees its own writes.
///
/// It is also a [`Limiter`](crate::limits::Limiter) ([`KeygateBuilder::limiter`](crate::KeygateBuilder::limiter)):
/// rate limits and credits that survive a restart, one statement per check on the table
/// `keygate_usage`. An allowed check is one write transaction, so it costs what any
/// durable SQLite write costs (`synchronous = FULL`: a WAL sync per allowed request);
/// the in-process limiter is far cheaper where limits need not survive restarts.
///
/// ```no_run
/// use keygate::{Keygate, Pepper, SqliteStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = SqliteStore::connect("sqlite://keys.db").await?;
/// let gate = Keygate::builder(store, Pepper::new(1, b"load me from a secret store, 32+ bytes")?)
///     .build()?;
/// # let _ = gate; Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating it if missing) the database at `url` with the default
    /// [`SqliteConfig`] and applies pending migrations.
    ///
    /// `url` is `sqlite://path`, `sqlite:path`, a plain file path, or `sqlite::memory:` for
    /// a private in-memory database (one per call, gone when the store is dropped; every
    /// clone of this store shares it). URL query parameters are honoured; with `?mode=ro`
    /// nothing is created or migrated.
    ///
    /// File databases use the WAL journal and `synchronous = FULL`. On Unix a database
    /// file this creates is readable and writable by its owner only (mode 0600, further
    /// narrowed by the umask), and so are its `-wal` and `-shm` files, which SQLite
    /// creates with the database file's permissions; an existing file keeps its mode.
    ///
    /// # Errors
    ///
    /// As [`connect_with`](Self::connect_with).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, SqliteConfig::new()).await
    }

    /// Opens the database at `url` (as [`connect`](Self::connect) reads it) with
    /// `config`; applies pending migrations unless [`SqliteConfig::migrate`] is off or
    /// the URL says `?mode=ro`.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidUrl`] if `url` does not parse or names no file (`sqlite://`);
    /// [`StoreError::Backend`] if the file cannot be created or opened (or another process
    /// holds the write lock for longer than the busy timeout), or if the migrations fail as
    /// described under [`migrate`](Self::migrate).
    pub async fn connect_with(url: &str, config: SqliteConfig) -> Result<Self, StoreError> {
        let memory = is_memory(url);
        let read_only = url.starts_with("sqlite:") && has_param(url, "mode=ro");
        let options = if url.starts_with("sqlite:") || memory {
            SqliteConnectOptions::from_str(url)
                .map_err(|e| StoreError::InvalidUrl(format!("invalid SQLite URL: {e}")))?
        } else {
            SqliteConnectOptions::new().filename(url)
        };
        if !memory && options.get_filename().as_os_str().is_empty() {
            // `sqlite://`, `sqlite:` or `""`: SQLite would open a private temporary
            // database (or fail with "no such file"), not the store the operator meant.
            return Err(StoreError::InvalidUrl(
                "the SQLite URL names no database file: use sqlite://path/to/keys.db".into(),
            ));
        }
        let options = options
            .create_if_missing(!read_only)
            .busy_timeout(config.busy_timeout)
            .synchronous(SqliteSynchronous::Full);
        if !memory && !read_only {
            create_private(options.get_filename())?;
        }
        let pool = if memory {
            // An in-memory database lives as long as a connection to it: keep exactly one,
            // forever, so every caller sees the same data.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await
        } else if read_only {
            SqlitePoolOptions::new()
                .max_connections(config.max_connections)
                .connect_with(options)
                .await
        } else {
            SqlitePoolOptions::new()
                .max_connections(config.max_connections)
                .connect_with(options.journal_mode(SqliteJournalMode::Wal))
                .await
        }
        .map_err(store_error)?;
        let store = Self { pool };
        if config.migrate && !read_only {
            store.migrate().await?;
        }
        Ok(store)
    }

    /// A store over an existing pool, e.g. one the application also uses. Migrations are
    /// *not* applied: call [`migrate`](Self::migrate). For durability configure the pool
    /// as [`connect`](Self::connect) does (WAL, `synchronous = FULL`).
    pub fn from_pool(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// The connection pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Applies the schema migrations that are not applied yet, with sqlx's
    /// [`Migrator`](sqlx::migrate::Migrator), recording them in the table
    /// `keygate_migrations`. Idempotent, and safe to run from several processes at once:
    /// everything happens in one `BEGIN IMMEDIATE` transaction, which holds SQLite's write
    /// lock (sqlx's own migration lock does nothing on SQLite).
    ///
    /// Applied migrations are checked against their checksums. keygate keeps its own
    /// migrations table, so it never conflicts with an application's `sqlx` migrations on
    /// the same database. A `keygate_migrations` table written by keygate's first,
    /// checksum-less runner is upgraded in place.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] if the database fails, or refuses the migration: its source
    /// is then sqlx's `MigrateError`, e.g. `VersionMismatch(n)` when applied migration `n`
    /// differs from the embedded one, or `VersionMissing(n)` when the database records an
    /// unknown migration `n` older than the newest this keygate knows. Migrations newer
    /// than every embedded one (a newer keygate migrated the database, as in a rolling
    /// upgrade) are accepted with a warning: keygate's migrations are written so that older
    /// keygates keep working. Nothing is
    /// changed on error.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(store_error)?;
        let migrator = sql::migrator(MIGRATIONS);
        sql::prepare::<sqlx::Sqlite>(&mut tx, &migrator, &LEGACY)
            .await
            .map_err(sql::migrate_error)?;
        sql::run(&migrator, &mut *tx).await?;
        tx.commit().await.map_err(store_error)
    }
}

/// Creates `path` empty with mode 0600 if it does not exist, before SQLite opens it (SQLite
/// would create it 0644 under the usual umask, readable by every local user). An empty
/// file is an empty database to SQLite.
#[cfg(unix)]
fn create_private(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::backend(e)),
    }
}

/// Elsewhere the file inherits its directory's access rules.
#[cfg(not(unix))]
fn create_private(_path: &std::path::Path) -> Result<(), StoreError> {
    Ok(())
}

fn is_memory(url: &str) -> bool {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = path.split_once('?').map_or(path, |(path, _)| path);
    path == ":memory:" || (url.starts_with("sqlite:") && has_param(url, "mode=memory"))
}

/// Whether the URL's query has exactly the parameter `pair` (`key=value`).
fn has_param(url: &str, pair: &str) -> bool {
    url.split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|p| p == pair))
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// Unix microseconds as an instant in the years 1 to 9999 (what keygate stores).
fn instant(micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros)
        .filter(|at| in_stored_range(*at))
        .ok_or_else(|| sql::corrupt(format!("timestamp {micros} out of range")))
}

/// Scopes as a JSON array (sorted, as a `BTreeSet` iterates), or `None`.
fn scopes_to_json(scopes: Option<&BTreeSet<String>>) -> Result<Option<String>, StoreError> {
    scopes
        .map(|s| serde_json::to_string(s).map_err(StoreError::backend))
        .transpose()
}

fn scopes_from_json(json: Option<&str>) -> Result<Option<BTreeSet<String>>, StoreError> {
    json.map(|text| serde_json::from_str(text).map_err(|e| StoreError::Corrupt(Box::new(e))))
        .transpose()
}

fn metadata_to_json(metadata: &Metadata) -> Result<String, StoreError> {
    serde_json::to_string(metadata).map_err(StoreError::backend)
}

fn metadata_from_json(json: &str) -> Result<Metadata, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(Box::new(e)))
}

/// A column that must not be NULL. SQLite decodes NULL as `""`, `0` or `false` into a
/// plain `String`, `i64` or `bool`, so a table without keygate's `NOT NULL` constraints
/// (see [`SqliteStore::from_pool`]) would pass a NULL owner as `""`: read through `Option`
/// and refuse NULL as corrupt instead.
fn required<'r, T>(row: &'r SqliteRow, column: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    optional(row, column)?.ok_or_else(|| sql::corrupt(format!("column {column} is NULL")))
}

/// A nullable column.
fn optional<'r, T>(row: &'r SqliteRow, column: &str) -> Result<Option<T>, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get::<Option<T>, _>(column).map_err(store_error)
}

fn decode(row: &SqliteRow) -> Result<KeyRecord, StoreError> {
    let id: String = required(row, "id")?;
    let id = KeyId::from_str(&id).map_err(|e| StoreError::Corrupt(Box::new(e)))?;
    let format: String = required(row, "format")?;
    let scopes: Option<String> = optional(row, "scopes")?;
    let metadata: String = required(row, "metadata")?;
    let network: Option<String> = optional(row, "network")?;
    let ratelimits: String = required(row, "ratelimits")?;
    let credits: Option<String> = optional(row, "credits")?;
    let opt_instant = |column: &str| optional::<i64>(row, column)?.map(instant).transpose();
    Ok(KeyRecord {
        id,
        format: sql::format_from(&format)?,
        hash: sql::hash_from(
            optional(row, "hash_version")?,
            optional(row, "hash_digest")?,
            optional(row, "hash_scheme")?,
        )?,
        name: required(row, "name")?,
        description: optional(row, "description")?,
        owner: required(row, "owner_id")?,
        created_by: optional(row, "created_by")?,
        created_at: instant(required(row, "created_at")?)?,
        updated_at: instant(required(row, "updated_at")?)?,
        expires_at: opt_instant("expires_at")?,
        last_used_at: opt_instant("last_used_at")?,
        active: required(row, "active")?,
        scopes: scopes_from_json(scopes.as_deref())?,
        metadata: metadata_from_json(&metadata)?,
        network: sql::network_from(network.as_deref())?,
        ratelimits: sql::ratelimits_from_json(&ratelimits)?,
        credits: sql::credits_from_json(credits.as_deref())?,
    })
}

/// Binds every column of `record` in [`key_columns`] order to `?1`..`?19`, as the
/// `INSERT` and `UPDATE` below name them.
fn bind_record<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    record: &'q KeyRecord,
) -> Result<sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>, StoreError> {
    let (hash_version, hash_digest, hash_scheme) = sql::hash_to(record.hash.as_ref());
    Ok(query
        .bind(record.id.to_string())
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
        .bind(scopes_to_json(record.scopes.as_ref())?)
        .bind(metadata_to_json(&record.metadata)?)
        .bind(hash_scheme)
        .bind(sql::ratelimits_to_json(&record.ratelimits)?)
        .bind(sql::credits_to_json(record.credits.as_ref())?)
        .bind(sql::network_to(&record.network)?))
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        let query = sqlx::query(concat!(
            "INSERT INTO keygate_keys (",
            key_columns!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
             ?18, ?19)"
        ));
        match bind_record(query, &record)?.execute(&self.pool).await {
            Ok(_) => Ok(()),
            Err(e) if sql::is_unique_violation(&e) => Err(StoreError::Conflict(record.id)),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn get(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            " FROM keygate_keys WHERE id = ?1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.map(|row| decode(&row).map(Arc::new)).transpose()
    }

    async fn update(&self, id: KeyId, patch: &KeyPatch) -> Result<Option<KeyRecord>, StoreError> {
        // BEGIN IMMEDIATE takes the write lock up front: the read-modify-write below cannot
        // interleave with another writer's.
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(store_error)?;
        let row = sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            " FROM keygate_keys WHERE id = ?1"
        ))
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        let Some(row) = row else {
            return Ok(None); // dropping the transaction rolls it back
        };
        let mut record = decode(&row)?;
        patch.apply(&mut record)?; // an error drops (rolls back) the transaction
        let query = sqlx::query(
            "UPDATE keygate_keys SET format = ?2, hash_version = ?3, hash_digest = ?4, \
             name = ?5, description = ?6, owner_id = ?7, created_by = ?8, created_at = ?9, \
             updated_at = ?10, expires_at = ?11, last_used_at = ?12, active = ?13, \
             scopes = ?14, metadata = ?15, hash_scheme = ?16, ratelimits = ?17, credits = ?18, \
             network = ?19 WHERE id = ?1",
        );
        bind_record(query, &record)?
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(Some(record))
    }

    async fn delete(&self, id: KeyId) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM keygate_keys WHERE id = ?1")
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        let mut select = QueryBuilder::<sqlx::Sqlite>::new(concat!(
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
                    .push_bind(micros(after.created_at()))
                    .push(", ")
                    .push_bind(after.id().to_string())
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
        // One statement for the whole batch: the pairs travel as one JSON array, the
        // latest instant per id wins, and only later instants are written.
        let pairs: Vec<(String, i64)> = batch
            .iter()
            .map(|(id, at)| (id.to_string(), micros(*at)))
            .collect();
        let pairs = serde_json::to_string(&pairs).map_err(StoreError::backend)?;
        sqlx::query(
            "UPDATE keygate_keys SET last_used_at = batch.at \
             FROM (SELECT json_extract(value, '$[0]') AS id, \
                          max(json_extract(value, '$[1]')) AS at \
                   FROM json_each(?1) GROUP BY 1) AS batch \
             WHERE keygate_keys.id = batch.id \
               AND (keygate_keys.last_used_at IS NULL OR keygate_keys.last_used_at < batch.at)",
        )
        .bind(pairs)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
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
    pool: &SqlitePool,
    version: u32,
    fingerprint: PepperFingerprint,
) -> Result<Option<PepperFingerprint>, StoreError> {
    let version = i64::from(version);
    let inserted = sqlx::query(
        "INSERT INTO keygate_peppers (version, fingerprint) VALUES (?1, ?2) \
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
        sqlx::query_scalar("SELECT fingerprint FROM keygate_peppers WHERE version = ?1")
            .bind(version)
            .fetch_one(pool)
            .await
            .map_err(store_error)?;
    let known: [u8; 32] = known
        .try_into()
        .map_err(|_| sql::corrupt("a pepper fingerprint is not 32 bytes"))?;
    Ok(Some(PepperFingerprint::from_bytes(known)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_metadata_round_trip() {
        let scopes = BTreeSet::from(["b".to_owned(), "a".to_owned()]);
        let json = scopes_to_json(Some(&scopes)).unwrap().unwrap();
        assert_eq!(json, r#"["a","b"]"#);
        assert_eq!(scopes_from_json(Some(&json)).unwrap(), Some(scopes));
        assert_eq!(scopes_from_json(None).unwrap(), None);
        assert!(scopes_from_json(Some("{")).is_err());
        let mut metadata = Metadata::new();
        metadata.insert("k".into(), serde_json::json!([1, "two"]));
        assert_eq!(
            metadata_from_json(&metadata_to_json(&metadata).unwrap()).unwrap(),
            metadata
        );
    }

    #[test]
    fn memory_urls_are_recognized() {
        assert!(is_memory("sqlite::memory:"));
        assert!(is_memory("sqlite://:memory:"));
        assert!(is_memory(":memory:"));
        assert!(is_memory("sqlite://?mode=memory"));
        assert!(!is_memory("sqlite://keys.db"));
        assert!(!is_memory("keys.db"));
        assert!(!is_memory("sqlite:memory.db"));
    }

    /// `sqlite://` used to fail later as a backend error ("no such file or directory"),
    /// which the CLI reports as an unreachable store (exit 3) instead of a bad URL.
    #[tokio::test]
    async fn a_url_naming_no_file_is_invalid() {
        for url in [
            "sqlite://",
            "sqlite:",
            "",
            "sqlite://?mode=rwc",
            "sqlite://?mode=ro",
        ] {
            match SqliteStore::connect(url).await {
                Err(StoreError::InvalidUrl(why)) => assert!(why.contains("names no"), "{why}"),
                Err(other) => panic!("{url:?}: {other:?}"),
                Ok(_) => panic!("{url:?}: opened"),
            }
        }
        // In-memory URLs name no file and are still fine.
        assert!(SqliteStore::connect("sqlite::memory:").await.is_ok());
    }
}
