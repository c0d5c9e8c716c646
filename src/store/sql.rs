//! What the SQL stores share: the column list, error mapping, the migration runner (sqlx's
//! `Migrator`, plus the upgrade of the first runner's table), where a list starts, and the
//! checks that turn column values back into a [`KeyRecord`]'s fields.

use chrono::Datelike;
use sqlx::migrate::{Migrate, MigrateError, Migration, MigrationType, Migrator};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, SqlSafeStr, Type};

use crate::hash::{HashScheme, SecretHash};
use crate::key::KeyFormat;
#[cfg(feature = "sqlite")]
use crate::limits::NetworkPolicy;
use crate::record::in_stored_range;
use crate::store::{Cursor, StoreError};

/// The columns of `keygate_keys`, in the order every `SELECT` lists them and
/// the row decoders read them.
macro_rules! key_columns {
    () => {
        "id, format, hash_version, hash_digest, name, description, owner_id, created_by, \
         created_at, updated_at, expires_at, last_used_at, active, scopes, metadata, \
         hash_scheme, ratelimits, credits, network"
    };
}
pub(crate) use key_columns;

/// Maps a driver error: pool timeouts are [`StoreError::Timeout`], values that do not
/// decode are [`StoreError::Corrupt`], the rest [`StoreError::Backend`]; the driver's error
/// is kept as the source.
pub(crate) fn store_error(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::PoolTimedOut => StoreError::Timeout,
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. } => StoreError::Corrupt(Box::new(error)),
        other => StoreError::backend(other),
    }
}

/// Where a list starts, as the SQL query needs it.
pub(crate) enum Start {
    /// No lower bound.
    First,
    /// After this cursor, exclusive.
    After(Cursor),
    /// After every record: the answer is empty.
    End,
}

/// Where a list with `after` starts. Stored instants lie in the years 1 to 9999, so a
/// cursor outside them (which an admin API client can send) admits every record or none;
/// deciding that here keeps such instants away from the database (PostgreSQL refuses
/// years before 4713 BC as an error).
pub(crate) fn start(after: Option<Cursor>) -> Start {
    match after {
        None => Start::First,
        Some(cursor) if in_stored_range(cursor.created_at()) => Start::After(cursor),
        Some(cursor) if cursor.created_at().year() < 1 => Start::First,
        Some(_) => Start::End,
    }
}

/// Whether `error` is a unique-constraint violation (an id collision on insert).
pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

#[cfg(feature = "sqlite")] // PostgreSQL binds these as JSON values
/// A record's `ratelimits` column (a JSON array in Unkey's shape) as stored.
pub(crate) fn ratelimits_to_json(
    limits: &[crate::limits::RateLimit],
) -> Result<String, StoreError> {
    serde_json::to_string(limits).map_err(StoreError::backend)
}

#[cfg(feature = "sqlite")] // PostgreSQL binds these as JSON values
/// A record's `credits` column (a JSON object, or NULL) as stored.
pub(crate) fn credits_to_json(
    credits: Option<&crate::limits::CreditPolicy>,
) -> Result<Option<String>, StoreError> {
    credits
        .map(serde_json::to_string)
        .transpose()
        .map_err(StoreError::backend)
}

#[cfg(feature = "sqlite")] // PostgreSQL binds these as JSON values
/// Reads a `ratelimits` column; anything but an array of valid limits is corrupt.
pub(crate) fn ratelimits_from_json(
    json: &str,
) -> Result<Vec<crate::limits::RateLimit>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(Box::new(e)))
}

#[cfg(feature = "sqlite")] // PostgreSQL binds these as JSON values
/// Reads a `credits` column.
pub(crate) fn credits_from_json(
    json: Option<&str>,
) -> Result<Option<crate::limits::CreditPolicy>, StoreError> {
    json.map(serde_json::from_str)
        .transpose()
        .map_err(|e| StoreError::Corrupt(Box::new(e)))
}

/// A [`StoreError::Corrupt`] with `message`.
pub(crate) fn corrupt(message: impl Into<String>) -> StoreError {
    StoreError::Corrupt(message.into().into())
}

pub(crate) fn format_from(text: &str) -> Result<KeyFormat, StoreError> {
    text.parse()
        .map_err(|_| corrupt(format!("unknown key format {text:?}")))
}

/// The hash columns of a record: `(hash_version, hash_digest)`, both or neither, and
/// `hash_scheme` (`'secret'` when there is no hash, the column's default).
pub(crate) fn hash_to(hash: Option<&SecretHash>) -> (Option<i64>, Option<&[u8]>, &'static str) {
    match hash {
        Some(h) => (
            Some(i64::from(h.version)),
            Some(&h.digest[..]),
            h.scheme.as_str(),
        ),
        None => (None, None, HashScheme::Secret.as_str()),
    }
}

/// A record's hash from its columns; the scheme only matters when there is a hash.
pub(crate) fn hash_from(
    version: Option<i64>,
    digest: Option<Vec<u8>>,
    scheme: Option<String>,
) -> Result<Option<SecretHash>, StoreError> {
    match (version, digest) {
        (None, None) => Ok(None),
        (Some(version), Some(digest)) => {
            let version = u32::try_from(version)
                .map_err(|_| corrupt(format!("hash version {version} out of range")))?;
            let digest: [u8; 32] = digest.try_into().map_err(|d: Vec<u8>| {
                corrupt(format!("hash digest of {} bytes, expected 32", d.len()))
            })?;
            let scheme = scheme
                .as_deref()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| corrupt("unknown or missing hash scheme"))?;
            Ok(Some(SecretHash {
                version,
                digest,
                scheme,
            }))
        }
        _ => Err(corrupt(
            "hash version and digest must be both set or both null",
        )),
    }
}

#[cfg(feature = "sqlite")] // PostgreSQL binds these as JSON values
/// The `network` column of a record: its policy as JSON, or `None` (SQL `NULL`) when
/// unrestricted.
pub(crate) fn network_to(policy: &NetworkPolicy) -> Result<Option<String>, StoreError> {
    if policy.is_unrestricted() {
        return Ok(None);
    }
    serde_json::to_string(policy)
        .map(Some)
        .map_err(StoreError::backend)
}

#[cfg(feature = "sqlite")] // PostgreSQL binds these as JSON values
/// A record's policy from its `network` column: `NULL` is unrestricted; anything that is
/// not a valid policy (an unknown field, an entry that does not parse) is corrupt.
pub(crate) fn network_from(json: Option<&str>) -> Result<NetworkPolicy, StoreError> {
    match json {
        None => Ok(NetworkPolicy::new()),
        Some(text) => match crate::json::object_text(text.as_bytes()) {
            Some(object) => {
                serde_json::from_str(object).map_err(|e| StoreError::Corrupt(Box::new(e)))
            }
            None => Err(corrupt("network policy is not a JSON object")),
        },
    }
}

/// One embedded schema migration (a file under `migrations/<backend>/`).
pub(crate) struct Script {
    pub(crate) version: i64,
    pub(crate) description: &'static str,
    pub(crate) sql: &'static str,
}

/// The table that records applied migrations, in sqlx's layout (`version`, `description`,
/// `installed_on`, `success`, `checksum`, `execution_time`). keygate keeps its own table,
/// so it never meets an application's `_sqlx_migrations` on the same database.
pub(crate) const MIGRATIONS_TABLE: &str = "keygate_migrations";

/// sqlx's [`Migrator`] over `scripts`, recording in [`MIGRATIONS_TABLE`]: applied
/// migrations are checked against their SHA-384 checksum (an edited migration is
/// refused). Versions it does not know are left to [`prepare`].
///
/// Its own locking is off: the caller runs it inside one transaction that already holds
/// the backend's lock (an advisory lock on PostgreSQL, `BEGIN IMMEDIATE` on SQLite, where
/// sqlx's lock does nothing), so the legacy upgrade, every migration and its bookkeeping
/// commit together or not at all.
pub(crate) fn migrator(scripts: &[Script]) -> Migrator {
    let migrations = scripts
        .iter()
        .map(|script| {
            Migration::new(
                script.version,
                script.description.into(),
                MigrationType::Simple,
                script.sql.into_sql_str(),
                false,
            )
        })
        .collect();
    let mut migrator = Migrator::with_migrations(migrations);
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator.set_locking(false);
    // `prepare` judges versions this keygate does not know; the migrator would refuse all.
    migrator.set_ignore_missing(true);
    migrator
}

/// Runs `migrator` on `conn` (the caller's locked transaction): [`Migrator::run`] without
/// its `Acquire` bound, whose higher-ranked lifetime makes the futures of callers such as
/// `SqliteStore::connect` not provably `Send` (so they could not be spawned). `run_direct`
/// is what `run` calls, and sqlx keeps it public for this reason (it is `doc(hidden)`, so
/// a sqlx upgrade must check it is still there).
pub(crate) async fn run<C: Migrate>(migrator: &Migrator, conn: &mut C) -> Result<(), StoreError> {
    migrator
        .run_direct(None, conn, false)
        .await
        .map_err(migrate_error)
}

/// A [`MigrateError`] as a [`StoreError`]: database errors map as [`store_error`] does
/// (a pool timeout stays [`StoreError::Timeout`]); the rest (an edited or unknown applied
/// migration, a failed script) is [`StoreError::Backend`] with the `MigrateError` as its
/// source.
pub(crate) fn migrate_error(error: MigrateError) -> StoreError {
    match error {
        MigrateError::Execute(e) => store_error(e),
        other => StoreError::backend(other),
    }
}

/// The migrations table of keygate's first runner, which had no checksums: `version`,
/// `description`, `applied_at`. The SQL that finds and upgrades it, per backend.
pub(crate) struct LegacyTable {
    /// One row, one boolean: whether `keygate_migrations` has an `applied_at` column.
    pub(crate) detect: &'static str,
    /// Turns that table into sqlx's layout in place: `applied_at` becomes `installed_on`,
    /// and `success`, `checksum` and `execution_time` are added with defaults (so that
    /// the first runner, should one still run, can insert rows with no checksum).
    pub(crate) upgrade: &'static str,
    /// Sets the checksum (bind 1) of migration `version` (bind 2) if it has none.
    pub(crate) adopt: &'static str,
}

/// Readies `keygate_migrations` for [`Migrator::run`], inside the caller's locked
/// migration transaction:
///
/// - A table written by keygate's first runner is brought into sqlx's layout, and every
///   row without a checksum gets the checksum of the embedded migration of that version:
///   the first runner applied exactly these scripts, it just did not record checksums.
/// - Versions this keygate does not know are judged: one newer than every embedded
///   migration means a newer keygate migrated the database (as during a rolling upgrade),
///   which keygate's migrations are written to allow, so it is logged and accepted; an unknown
///   version below the newest known one is [`MigrateError::VersionMissing`].
///
/// Costs three small queries when there is nothing to do.
pub(crate) async fn prepare<DB>(
    conn: &mut DB::Connection,
    migrator: &Migrator,
    legacy: &LegacyTable,
) -> Result<(), MigrateError>
where
    DB: Database,
    DB::Connection: Migrate,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'r> bool: Decode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    DB::Arguments: IntoArguments<DB>,
    usize: ColumnIndex<DB::Row>,
{
    // A no-op on an existing table, old layout or new.
    conn.ensure_migrations_table(MIGRATIONS_TABLE).await?;
    let is_legacy: bool = sqlx::query_scalar(legacy.detect)
        .fetch_one(&mut *conn)
        .await?;
    if is_legacy {
        sqlx::raw_sql(legacy.upgrade).execute(&mut *conn).await?;
        tracing::info!(target: "keygate", table = MIGRATIONS_TABLE, "migrations table upgraded to checksummed records");
    }
    let unchecked: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM keygate_migrations WHERE length(checksum) = 0)",
    )
    .fetch_one(&mut *conn)
    .await?;
    if unchecked {
        for migration in migrator.iter() {
            sqlx::query(legacy.adopt)
                .bind(&*migration.checksum)
                .bind(migration.version)
                .execute(&mut *conn)
                .await?;
        }
        tracing::info!(target: "keygate", table = MIGRATIONS_TABLE, "checksums recorded for migrations applied by the first runner");
    }
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM keygate_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await?;
    let newest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    let unknown: Vec<i64> = applied
        .into_iter()
        .filter(|&version| !migrator.version_exists(version))
        .collect();
    if let Some(&gap) = unknown.iter().find(|&&version| version < newest) {
        return Err(MigrateError::VersionMissing(gap));
    }
    if !unknown.is_empty() {
        tracing::warn!(
            target: "keygate",
            ?unknown,
            newest_known = newest,
            "the database has keygate migrations newer than this build: a newer keygate migrated it; continuing"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_and_bad_ones_are_corrupt() {
        let secret = || Some("secret".to_owned());
        for scheme in [HashScheme::Secret, HashScheme::Bound] {
            let hash = SecretHash {
                version: u32::MAX,
                digest: [3; 32],
                scheme,
            };
            let (v, d, s) = hash_to(Some(&hash));
            assert_eq!(
                hash_from(v, d.map(<[u8]>::to_vec), Some(s.to_owned())).unwrap(),
                Some(hash)
            );
        }
        assert!(hash_from(None, None, secret()).unwrap().is_none());
        assert!(matches!(
            hash_from(Some(1), None, secret()),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            hash_from(Some(1), Some(vec![0; 31]), secret()),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            hash_from(Some(-1), Some(vec![0; 32]), secret()),
            Err(StoreError::Corrupt(_))
        ));
        for scheme in [None, Some("Bound".to_owned()), Some(String::new())] {
            assert!(matches!(
                hash_from(Some(1), Some(vec![0; 32]), scheme),
                Err(StoreError::Corrupt(_))
            ));
        }
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn network_policies_round_trip_and_bad_ones_are_corrupt() {
        assert_eq!(network_to(&NetworkPolicy::new()).unwrap(), None);
        assert_eq!(network_from(None).unwrap(), NetworkPolicy::new());
        let policy = NetworkPolicy::new()
            .with_cidrs(["10.0.0.0/8".parse().unwrap()])
            .with_origins(["https://a.example".parse().unwrap()]);
        let json = network_to(&policy).unwrap().unwrap();
        assert_eq!(network_from(Some(&json)).unwrap(), policy);
        for bad in [
            "{",
            "[]",
            r#"{"cidrs":["10.1.0.0/8"]}"#,
            r#"{"cidrs":"10.0.0.0/8"}"#,
            r#"{"origins":["https://a.example/path"]}"#,
            r#"{"hosts":[]}"#,
        ] {
            assert!(
                matches!(network_from(Some(bad)), Err(StoreError::Corrupt(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn formats_parse() {
        assert!(format_from("opaque").is_ok() && format_from("nope").is_err());
    }
}
