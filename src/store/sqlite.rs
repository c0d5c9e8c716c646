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
use sqlx::Row;

use super::sql::{self, key_columns, store_error, Migration};
use super::{KeyStore, ListQuery, StoreError};
use crate::hash::PepperFingerprint;
use crate::key::KeyId;
use crate::record::{in_stored_range, KeyPatch, KeyRecord, Metadata};

/// The schema migrations, in order. Applied by [`SqliteStore::migrate`].
const MIGRATIONS: &[Migration] = &[
    (
        1,
        "create keygate_keys",
        include_str!("../../migrations/sqlite/0001_create_keys.sql"),
    ),
    (
        2,
        "add keygate_keys.hash_scheme",
        include_str!("../../migrations/sqlite/0002_hash_scheme.sql"),
    ),
    (
        4,
        "create keygate_peppers",
        include_str!("../../migrations/sqlite/0004_pepper_fingerprints.sql"),
    ),
];

const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS keygate_migrations (
    version     INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)";

/// How long a connection waits for another writer before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`KeyStore`] in SQLite: the embedded default for single-server deployments and
/// examples.
///
/// [`open`](Self::open) takes a file path or URL, creates the database on first use, sets
/// it up for durability (WAL journal, `synchronous = FULL`: a write that returned `Ok`
/// survives the process being killed) and applies the schema migrations. Records hold
/// hashes only, never a plaintext key.
///
/// SQLite has no change feed, so [`KeyStore::subscribe`] answers `Ok(false)`: one
/// process owns the file, and its [`CachedStore`](crate::CachedStore) sees its own writes.
///
/// ```no_run
/// use keygate::{Keygate, Pepper, SqliteStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = SqliteStore::open("sqlite://keys.db").await?;
/// let gate = Keygate::builder(store, Pepper::new(1, b"load me from a secret store, 32+ bytes")?)
///
///     .build()?;
/// # let _ = gate; Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating it if missing) the database at `url` and applies pending
    /// migrations.
    ///
    /// `url` is `sqlite://path`, `sqlite:path`, a plain file path, or `sqlite::memory:` for
    /// a private in-memory database (one per call, gone when the store is dropped; every
    /// clone of this store shares it). URL query parameters are honoured; with `?mode=ro`
    /// nothing is created or migrated.
    ///
    /// File databases use the WAL journal, `synchronous = FULL` and a 5 s busy timeout.
    /// On Unix a database file this creates is readable and writable by its owner only
    /// (mode 0600, further narrowed by the umask), and so are its `-wal` and `-shm` files,
    /// which SQLite creates with the database file's permissions; an existing file keeps
    /// its mode.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let memory = is_memory(url);
        let read_only = url.starts_with("sqlite:") && has_param(url, "mode=ro");
        let options = if url.starts_with("sqlite:") || memory {
            SqliteConnectOptions::from_str(url)
                .map_err(|e| StoreError::InvalidUrl(format!("invalid SQLite URL: {e}")))?
        } else {
            SqliteConnectOptions::new().filename(url)
        };
        let options = options
            .create_if_missing(!read_only)
            .busy_timeout(BUSY_TIMEOUT)
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
                .max_connections(4)
                .connect_with(options)
                .await
        } else {
            SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options.journal_mode(SqliteJournalMode::Wal))
                .await
        }
        .map_err(store_error)?;
        let store = Self { pool };
        if !read_only {
            store.migrate().await?;
        }
        Ok(store)
    }

    /// A store over an existing pool, e.g. one the application also uses. Migrations are
    /// *not* applied: call [`migrate`](Self::migrate). For durability configure the pool
    /// as [`open`](Self::open) does (WAL, `synchronous = FULL`).
    pub fn from_pool(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// The connection pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Applies the schema migrations that are not applied yet, each in its own
    /// `BEGIN IMMEDIATE` transaction, recording them in the table `keygate_migrations`.
    /// Idempotent, and safe to run from several processes at once.
    ///
    /// keygate keeps its own migrations table, so it never conflicts with an
    /// application's `sqlx` migrations on the same database.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        for &(version, description, script) in MIGRATIONS {
            let mut tx = self
                .pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(store_error)?;
            sqlx::raw_sql(CREATE_MIGRATIONS_TABLE)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            let applied: Option<i64> =
                sqlx::query_scalar("SELECT version FROM keygate_migrations WHERE version = ?1")
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
                    "INSERT INTO keygate_migrations (version, description) VALUES (?1, ?2)",
                )
                .bind(version)
                .bind(description)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
                tracing::info!(target: "keygate", version, description, "sqlite migration applied");
            }
            tx.commit().await.map_err(store_error)?;
        }
        Ok(())
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
fn required<'r, T>(row: &'r SqliteRow, index: usize) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get::<Option<T>, _>(index)
        .map_err(store_error)?
        .ok_or_else(|| sql::corrupt(format!("column {index} is NULL")))
}

fn decode(row: &SqliteRow) -> Result<KeyRecord, StoreError> {
    let get_err = store_error;
    let id: String = required(row, 0)?;
    let id = KeyId::from_str(&id).map_err(|e| StoreError::Corrupt(Box::new(e)))?;
    let format: String = required(row, 1)?;
    let scopes: Option<String> = row.try_get(13).map_err(get_err)?;
    let metadata: String = required(row, 14)?;
    let opt_instant = |i: usize| -> Result<Option<DateTime<Utc>>, StoreError> {
        row.try_get::<Option<i64>, _>(i)
            .map_err(get_err)?
            .map(instant)
            .transpose()
    };
    Ok(KeyRecord {
        id,
        format: sql::format_from(&format)?,
        hash: sql::hash_from(
            row.try_get(2).map_err(get_err)?,
            row.try_get(3).map_err(get_err)?,
            row.try_get(15).map_err(get_err)?,
        )?,
        name: required(row, 4)?,
        description: row.try_get(5).map_err(get_err)?,
        owner: required(row, 6)?,
        created_by: row.try_get(7).map_err(get_err)?,
        created_at: instant(required(row, 8)?)?,
        updated_at: instant(required(row, 9)?)?,
        expires_at: opt_instant(10)?,
        last_used_at: opt_instant(11)?,
        active: required(row, 12)?,
        scopes: scopes_from_json(scopes.as_deref())?,
        metadata: metadata_from_json(&metadata)?,
    })
}

/// Binds every column of `record` in [`key_columns`] order to `?1`..`?16`.
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
        .bind(hash_scheme))
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        let query = sqlx::query(concat!(
            "INSERT INTO keygate_keys (",
            key_columns!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
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
             scopes = ?14, metadata = ?15, hash_scheme = ?16 WHERE id = ?1",
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
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let after = query.after.map(|cursor| cursor.id().to_string());
        let rows = match (&query.owner, after) {
            (None, None) => sqlx::query(concat!(
                "SELECT ",
                key_columns!(),
                " FROM keygate_keys ORDER BY id LIMIT ?1"
            ))
            .bind(limit),
            (None, Some(after)) => sqlx::query(concat!(
                "SELECT ",
                key_columns!(),
                " FROM keygate_keys WHERE id > ?2 ORDER BY id LIMIT ?1"
            ))
            .bind(limit)
            .bind(after),
            (Some(owner), None) => sqlx::query(concat!(
                "SELECT ",
                key_columns!(),
                " FROM keygate_keys WHERE owner_id = ?2 ORDER BY id LIMIT ?1"
            ))
            .bind(limit)
            .bind(owner.as_str()),
            (Some(owner), Some(after)) => sqlx::query(concat!(
                "SELECT ",
                key_columns!(),
                " FROM keygate_keys WHERE owner_id = ?2 AND id > ?3 ORDER BY id LIMIT ?1"
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
}
