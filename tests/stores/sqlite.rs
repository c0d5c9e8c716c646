//! `SqliteStore`: the conformance suite, schema and migrations, URL forms, and durability
//! across `kill -9`.

// Test code: a panic is how a test reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg(all(feature = "sqlite", feature = "testing"))]

use crate::support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate::admin::{AdminApi, AdminRequest};
use keygate::sqlx;
use keygate::{
    CacheConfig, CachedStore, HashScheme, KeyStore, Keygate, NewKey, Pepper, Rejection,
    SqliteStore, StoreError, VerifyError,
};

fn pepper() -> Pepper {
    Pepper::new(1, [42u8; 32]).unwrap()
}

fn gate(store: impl KeyStore) -> Keygate {
    Keygate::builder(store, pepper())
        .prefix("dur")
        .build()
        .unwrap()
}

/// Removes the database files when a test ends, pass or fail.
struct TempDb(std::path::PathBuf);

impl TempDb {
    fn new() -> Self {
        Self(support::sqlite_temp_path())
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("temp paths are UTF-8 here")
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        support::remove_sqlite(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_conforms() {
    let db = TempDb::new();
    let store = SqliteStore::connect(db.path()).await.unwrap();
    keygate::testing::run_all(Arc::new(store.clone())).await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(synchronous, 2, "synchronous = FULL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_file_store_conforms() {
    let db = TempDb::new();
    let store = SqliteStore::connect(db.path()).await.unwrap();
    let cached = CachedStore::new(store, CacheConfig::new());
    assert!(
        !cached.follow_changes().await.unwrap(),
        "SQLite has no feed"
    );
    keygate::testing::run_all(Arc::new(cached)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conforms_and_is_one_database() {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    keygate::testing::run_all(Arc::new(store.clone())).await;
    // Every clone and every connection sees the same data.
    let record = keygate::testing::sample_record("memory-owner");
    store.insert(record.clone()).await.unwrap();
    let clone = store.clone();
    let got = tokio::spawn(async move { clone.get(record.id).await.unwrap() })
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(&record));
    // A second `open` is a different, empty database.
    let other = SqliteStore::connect("sqlite::memory:").await.unwrap();
    assert!(other.get(record.id).await.unwrap().is_none());
}

#[tokio::test]
async fn every_url_form_opens_the_same_file() {
    let db = TempDb::new();
    let path = db.path();
    let record = keygate::testing::sample_record("url-forms");
    // Created on first use.
    assert!(!db.0.exists());
    let store = SqliteStore::connect(&format!("sqlite://{path}"))
        .await
        .unwrap();
    assert!(db.0.exists());
    store.insert(record.clone()).await.unwrap();
    store.pool().close().await;
    for url in [format!("sqlite:{path}"), path.to_owned()] {
        let store = SqliteStore::connect(&url).await.unwrap();
        assert_eq!(
            store.get(record.id).await.unwrap().as_deref(),
            Some(&record),
            "{url}"
        );
        store.pool().close().await;
    }
    // Read-only: readable, nothing written.
    let ro = SqliteStore::connect(&format!("sqlite://{path}?mode=ro"))
        .await
        .unwrap();
    assert_eq!(ro.get(record.id).await.unwrap().as_deref(), Some(&record));
    assert!(ro
        .insert(keygate::testing::sample_record("ro"))
        .await
        .is_err());
}

#[tokio::test]
async fn a_bad_url_is_invalid_url() {
    let opened = SqliteStore::connect("sqlite://keys.db?bogus=1").await;
    assert!(
        matches!(opened, Err(StoreError::InvalidUrl(_))),
        "{opened:?}"
    );
}

#[tokio::test]
async fn migrations_are_idempotent_and_keygates_own() {
    let db = TempDb::new();
    let store = SqliteStore::connect(db.path()).await.unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    drop(store);
    let store = SqliteStore::connect(db.path()).await.unwrap();
    let versions: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, description FROM keygate_migrations ORDER BY version")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(
        versions,
        [
            (1, "create keygate_keys".to_owned()),
            (2, "add keygate_keys.hash_scheme".to_owned()),
            (3, "index keygate_keys in creation order".to_owned()),
            (4, "create keygate_peppers".to_owned()),
            (
                5,
                "add keygate_keys.ratelimits and keygate_keys.credits".to_owned(),
            ),
            (6, "create keygate_usage".to_owned()),
            (7, "add keygate_keys.network".to_owned()),
        ]
    );
    // No `_sqlx_migrations`: an application's own sqlx migrator on the same file is safe.
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(
        tables,
        [
            "keygate_keys",
            "keygate_migrations",
            "keygate_peppers",
            "keygate_usage"
        ]
    );
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'keygate_keys' \
         AND name NOT LIKE 'sqlite_autoindex%'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        indexes,
        ["keygate_keys_created", "keygate_keys_owner_created"]
    );
    // Lists walk the creation-order indexes instead of sorting.
    for (filter, index) in [
        ("owner_id = 'o' AND", "keygate_keys_owner_created"),
        ("", "keygate_keys_created"),
    ] {
        let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "EXPLAIN QUERY PLAN SELECT * FROM keygate_keys \
             WHERE {filter} (created_at, id) > (1, 'x') ORDER BY created_at, id LIMIT 10"
        )))
        .fetch_all(store.pool())
        .await
        .unwrap();
        let plan: Vec<&str> = plan.iter().map(|row| row.3.as_str()).collect();
        assert!(
            plan.iter().any(|step| step.contains(index)),
            "{filter}: {plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.contains("TEMP B-TREE")),
            "{filter}: {plan:?}"
        );
    }
}

/// The migration error behind a failed open: sqlx's `MigrateError`, as the source of
/// `StoreError::Backend`.
fn migrate_error(opened: Result<SqliteStore, StoreError>) -> sqlx::migrate::MigrateError {
    match opened {
        Err(StoreError::Backend(source)) => *source
            .downcast::<sqlx::migrate::MigrateError>()
            .expect("the source is the migrator's error"),
        other => panic!("expected a migration failure, got {other:?}"),
    }
}

/// Adds a row for migration `version` to `keygate_migrations`, as another keygate would.
async fn record_migration(store: &SqliteStore, version: i64) {
    sqlx::query(
        "INSERT INTO keygate_migrations (version, description, success, checksum, \
         execution_time) VALUES (?1, 'not this build''s', TRUE, x'01', 0)",
    )
    .bind(version)
    .execute(store.pool())
    .await
    .unwrap();
}

#[tokio::test]
async fn an_edited_or_unknown_migration_is_refused() {
    let db = TempDb::new();
    let store = SqliteStore::connect(db.path()).await.unwrap();
    let checksum: Vec<u8> =
        sqlx::query_scalar("SELECT checksum FROM keygate_migrations WHERE version = 2")
            .fetch_one(store.pool())
            .await
            .unwrap();
    // As if migration 2's script had been edited after this database applied it.
    sqlx::query("UPDATE keygate_migrations SET checksum = x'00' WHERE version = 2")
        .execute(store.pool())
        .await
        .unwrap();
    assert!(matches!(
        migrate_error(SqliteStore::connect(db.path()).await),
        sqlx::migrate::MigrateError::VersionMismatch(2)
    ));
    assert!(matches!(store.migrate().await, Err(StoreError::Backend(_))));
    sqlx::query("UPDATE keygate_migrations SET checksum = ?1 WHERE version = 2")
        .bind(checksum)
        .execute(store.pool())
        .await
        .unwrap();
    // A migration newer than this build's: a newer keygate migrated the database (a
    // rolling upgrade); this one keeps working.
    record_migration(&store, 99).await;
    let reopened = SqliteStore::connect(db.path()).await.unwrap();
    assert!(reopened
        .list(&keygate::ListQuery::new())
        .await
        .unwrap()
        .is_empty());
    // An unknown migration among the known ones is no database of keygate's.
    record_migration(&store, 0).await;
    assert!(matches!(
        migrate_error(SqliteStore::connect(db.path()).await),
        sqlx::migrate::MigrateError::VersionMissing(0)
    ));
}

#[tokio::test]
async fn a_migrations_table_from_the_first_runner_is_upgraded() {
    // The reference: checksums as a fresh database records them.
    let fresh = SqliteStore::connect("sqlite::memory:").await.unwrap();
    let checksums = |store: SqliteStore| async move {
        sqlx::query_as::<_, (i64, Vec<u8>)>(
            "SELECT version, checksum FROM keygate_migrations ORDER BY version",
        )
        .fetch_all(store.pool())
        .await
        .unwrap()
    };
    let expected = checksums(fresh).await;
    assert_eq!(expected.len(), 7); // 0001-0007
    assert!(expected.iter().all(|(_, sum)| sum.len() == 48), "SHA-384");

    // Migrations 1 and 2 applied by the first runner: its table had no checksums.
    let db = TempDb::new();
    let record = keygate::testing::sample_record("first-runner");
    {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(db.path())
                    .create_if_missing(true),
            )
            .await
            .unwrap();
        sqlx::raw_sql(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/sqlite/0001_create_keys.sql"
        )))
        .execute(&pool)
        .await
        .unwrap();
        sqlx::raw_sql(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/sqlite/0002_hash_scheme.sql"
        )))
        .execute(&pool)
        .await
        .unwrap();
        sqlx::raw_sql(
            "CREATE TABLE keygate_migrations (
                 version     INTEGER PRIMARY KEY,
                 description TEXT NOT NULL,
                 applied_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
             );
             INSERT INTO keygate_migrations (version, description)
                 VALUES (1, 'create keygate_keys'), (2, 'add keygate_keys.hash_scheme');",
        )
        .execute(&pool)
        .await
        .unwrap();
        // The store writes every column of today's table: lend it the later ones for
        // this one insert (the usage-policy columns of migration 5, and `network`: an
        // unrestricted record, NULL), then take them away again, leaving a row as the first
        // runner's schema held it.
        sqlx::raw_sql(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/sqlite/0005_usage_policy.sql"
        )))
        .execute(&pool)
        .await
        .unwrap();
        sqlx::raw_sql("ALTER TABLE keygate_keys ADD COLUMN network TEXT")
            .execute(&pool)
            .await
            .unwrap();
        SqliteStore::from_pool(pool.clone())
            .insert(record.clone())
            .await
            .unwrap();
        sqlx::raw_sql(
            "ALTER TABLE keygate_keys DROP COLUMN network;
             ALTER TABLE keygate_keys DROP COLUMN ratelimits;
             ALTER TABLE keygate_keys DROP COLUMN credits;",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    let store = SqliteStore::connect(db.path()).await.unwrap();
    assert_eq!(checksums(store.clone()).await, expected);
    assert_eq!(*store.get(record.id).await.unwrap().unwrap(), record);
    let (description, installed_on): (String, String) = sqlx::query_as(
        "SELECT description, installed_on FROM keygate_migrations WHERE version = 1",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(description, "create keygate_keys");
    assert!(
        installed_on.ends_with('Z'),
        "the first runner's date is kept"
    );
    // Upgraded once: opening again finds nothing to do, and nothing to refuse.
    drop(store);
    let store = SqliteStore::connect(db.path()).await.unwrap();
    assert_eq!(checksums(store).await, expected);
}

#[tokio::test]
async fn config_is_honoured() {
    let db = TempDb::new();
    let config = keygate::SqliteConfig::new()
        .busy_timeout(Duration::from_millis(250))
        .max_connections(2)
        .migrate(false);
    let store = SqliteStore::connect_with(db.path(), config).await.unwrap();
    assert_eq!(store.pool().options().get_max_connections(), 2);
    let tables: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_master")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert!(tables.is_empty(), "migrate(false) created {tables:?}");
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(busy, 250);
    store.migrate().await.unwrap();
    assert!(store
        .list(&keygate::ListQuery::new())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_opens_all_succeed() {
    let db = TempDb::new();
    let path = db.path().to_owned();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            tokio::spawn(async move { SqliteStore::connect(&path).await })
        })
        .collect();
    for open in opens {
        open.await.unwrap().expect("a concurrent open failed");
    }
}

#[tokio::test]
async fn no_plaintext_reaches_the_file() {
    let db = TempDb::new();
    let store = SqliteStore::connect(db.path()).await.unwrap();
    let gate = gate(store.clone());
    let issued = gate.mint(NewKey::new("plain?", "owner-1")).await.unwrap();
    let key = issued.key.expose().to_owned();
    gate.verify(&key).await.unwrap();
    gate.flush().await.unwrap();
    store.pool().close().await;
    let secret_part = key.trim_start_matches("dur_");
    let mut bytes = Vec::new();
    for suffix in ["", "-wal"] {
        if let Ok(b) = std::fs::read(format!("{}{suffix}", db.path())) {
            bytes.extend(b);
        }
    }
    assert!(!bytes.is_empty());
    let found = bytes
        .windows(secret_part.len())
        .any(|w| w == secret_part.as_bytes());
    assert!(!found, "the plaintext key is in the database file");
}

#[tokio::test]
async fn unreadable_rows_are_corrupt_not_missing() {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    let record = keygate::testing::sample_record("corrupt");
    store.insert(record.clone()).await.unwrap();
    sqlx::query("UPDATE keygate_keys SET scopes = '[1, 2]' WHERE id = ?1")
        .bind(record.id.to_string())
        .execute(store.pool())
        .await
        .unwrap();
    assert!(matches!(
        store.get(record.id).await,
        Err(StoreError::Corrupt(_))
    ));
    let gate = gate(store);
    assert!(gate.get(record.id).await.is_err());
}

#[tokio::test]
async fn keygate_over_sqlite_end_to_end() {
    let db = TempDb::new();
    let store = SqliteStore::connect(db.path()).await.unwrap();
    let gate = gate(CachedStore::new(store, CacheConfig::new()));
    let issued = gate
        .mint(NewKey::new("Backup Script", "user-1").scopes(["library:read"]))
        .await
        .unwrap();
    let principal = gate.verify(issued.key.expose()).await.unwrap();
    assert_eq!(principal.owner_id(), "user-1");
    gate.revoke(issued.record.id).await.unwrap();
    let refused = gate.verify(issued.key.expose()).await.unwrap_err();
    assert_eq!(refused.rejection(), Some(Rejection::Inactive));
    drop(gate);
    // The revoke is on disk.
    let gate = self::gate(SqliteStore::connect(db.path()).await.unwrap());
    let refused = gate.verify(issued.key.expose()).await.unwrap_err();
    assert_eq!(refused.rejection(), Some(Rejection::Inactive));
}

const CHILD_DB: &str = "KEYGATE_CHILD_SQLITE_DB";

/// The child half of `minted_keys_survive_kill_9`: mints keys until killed, printing each
/// only after the mint returned `Ok`. An entry point, not a test: ignored in a normal run,
/// the parent runs it with `--ignored` (and does nothing without the parent's variables).
#[tokio::test]
#[ignore = "entry point of minted_keys_survive_kill_9's child process"]
async fn durability_child() {
    let Ok(path) = std::env::var(CHILD_DB) else {
        return;
    };
    let gate = gate(SqliteStore::connect(&path).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(30); // never outlive a lost parent
    let mut stdout = std::io::stdout();
    for i in 0.. {
        if Instant::now() > deadline {
            break;
        }
        let issued = gate
            .mint(NewKey::new(format!("durable {i}"), "durability"))
            .await
            .unwrap();
        writeln!(stdout, "KEY {}", issued.key.expose()).unwrap();
        stdout.flush().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_keys_survive_kill_9() {
    let db = TempDb::new();
    SqliteStore::connect(db.path()).await.unwrap(); // created and migrated up front
    let path = db.path().to_owned();
    let (keys, status) = tokio::task::spawn_blocking(move || mint_until_killed(CHILD_DB, &path))
        .await
        .unwrap();
    assert!(!status.success(), "the child was killed, not finished");
    assert!(keys.len() >= 50);
    let gate = gate(SqliteStore::connect(db.path()).await.unwrap());
    for key in &keys {
        if let Err(e) = gate.verify(key).await {
            panic!("a key minted before the kill does not verify: {e:?}");
        }
    }
    eprintln!(
        "sqlite durability: {} keys minted before kill -9, all verify",
        keys.len()
    );
}

/// `durability_child`'s name as the test binary lists it (its path without the crate).
fn child_test_name() -> String {
    let module = module_path!().split_once("::").map_or("", |(_, path)| path);
    format!("{module}::durability_child")
}

/// Runs `durability_child` in a child process, reads 50 keys, kills it (SIGKILL), and
/// returns every key it printed.
fn mint_until_killed(var: &str, db: &str) -> (Vec<String>, std::process::ExitStatus) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            child_test_name().as_str(),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(var, db)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut keys = Vec::new();
    for line in lines.by_ref() {
        if let Some(key) = line.unwrap().strip_prefix("KEY ") {
            keys.push(key.to_owned());
            if keys.len() == 50 {
                break;
            }
        }
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    // Keys printed between the 50th and the kill were minted too.
    for line in lines {
        match line {
            Ok(line) => keys.extend(line.strip_prefix("KEY ").map(str::to_owned)),
            Err(_) => break, // a line cut by the kill
        }
    }
    (keys, status)
}

/// `keygate_keys` as an application might create it by hand: every column, no
/// constraints at all (any type, NULLs, empty strings); and the pepper fingerprints'
/// table, which mint needs.
const LOOSE_TABLE: &str = "CREATE TABLE keygate_keys (
    id, format, hash_version, hash_digest, name, description, owner_id, created_by,
    created_at, updated_at, expires_at, last_used_at, active, scopes, metadata, hash_scheme,
    ratelimits, credits, network
);
CREATE TABLE keygate_peppers (version INTEGER PRIMARY KEY, fingerprint BLOB)";

async fn loose_store() -> SqliteStore {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    sqlx::raw_sql(LOOSE_TABLE).execute(&pool).await.unwrap();
    SqliteStore::from_pool(pool)
}

/// Verifies `key` and asserts a corrupt-record refusal: 500, no `Retry-After`.
async fn assert_corrupt(gate: &Keygate, key: &str, case: &str) {
    let err = gate.verify(key).await.unwrap_err();
    assert!(
        matches!(err, VerifyError::StoreCorrupt(StoreError::Corrupt(_))),
        "{case}: {err:?}"
    );
    let http = gate.http_outcome(&err);
    assert_eq!((http.status, http.retry_after), (500, None), "{case}");
}

#[tokio::test]
async fn a_table_without_keygates_constraints_fails_closed() {
    let store = loose_store().await;
    // No directory: every owner unrestricted, so the owner column is all that matters.
    let gate = gate(store.clone());
    let issued = gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let key = issued.key.expose();
    let id = issued.record.id.to_string();
    gate.verify(key).await.unwrap();
    let edits = [
        (
            "empty owner",
            "UPDATE keygate_keys SET owner_id = '' WHERE id = ?1",
        ),
        (
            "blank owner",
            "UPDATE keygate_keys SET owner_id = '   ' WHERE id = ?1",
        ),
        (
            "NULL owner",
            "UPDATE keygate_keys SET owner_id = NULL WHERE id = ?1",
        ),
        (
            "numeric owner",
            "UPDATE keygate_keys SET owner_id = 7 WHERE id = ?1",
        ),
        (
            "owner with a newline",
            "UPDATE keygate_keys SET owner_id = 'a' || char(10) || 'b' WHERE id = ?1",
        ),
        (
            "no hash",
            "UPDATE keygate_keys SET hash_version = NULL, hash_digest = NULL WHERE id = ?1",
        ),
        (
            "network not JSON",
            "UPDATE keygate_keys SET network = '{' WHERE id = ?1",
        ),
        (
            "network an array",
            "UPDATE keygate_keys SET network = '[]' WHERE id = ?1",
        ),
        (
            "network with host bits",
            "UPDATE keygate_keys SET network = '{\"cidrs\": [\"10.1.0.0/8\"]}' WHERE id = ?1",
        ),
        (
            "network, a zone id",
            "UPDATE keygate_keys SET network = '{\"cidrs\": [\"fe80::1%eth0\"]}' WHERE id = ?1",
        ),
        (
            "network, unknown field",
            "UPDATE keygate_keys SET network = '{\"hosts\": []}' WHERE id = ?1",
        ),
        (
            "half a hash",
            "UPDATE keygate_keys SET hash_digest = NULL WHERE id = ?1",
        ),
        (
            "short digest",
            "UPDATE keygate_keys SET hash_digest = x'00' WHERE id = ?1",
        ),
        (
            "negative version",
            "UPDATE keygate_keys SET hash_version = -1 WHERE id = ?1",
        ),
        (
            "unknown scheme",
            "UPDATE keygate_keys SET hash_scheme = 'md5' WHERE id = ?1",
        ),
        (
            "NULL scheme",
            "UPDATE keygate_keys SET hash_scheme = NULL WHERE id = ?1",
        ),
        (
            "unknown format",
            "UPDATE keygate_keys SET format = 'paseto' WHERE id = ?1",
        ),
        (
            "text timestamp",
            "UPDATE keygate_keys SET created_at = 'yesterday' WHERE id = ?1",
        ),
        (
            "NULL timestamp",
            "UPDATE keygate_keys SET updated_at = NULL WHERE id = ?1",
        ),
        (
            "NULL active",
            "UPDATE keygate_keys SET active = NULL WHERE id = ?1",
        ),
        (
            "NULL name",
            "UPDATE keygate_keys SET name = NULL WHERE id = ?1",
        ),
        (
            "timestamp out of range",
            "UPDATE keygate_keys SET expires_at = 9223372036854775807 WHERE id = ?1",
        ),
        (
            "expiry in year 10000",
            "UPDATE keygate_keys SET expires_at = 253402300800000000 WHERE id = ?1",
        ),
        (
            "scopes not strings",
            "UPDATE keygate_keys SET scopes = '[1, 2]' WHERE id = ?1",
        ),
        (
            "scopes an object",
            "UPDATE keygate_keys SET scopes = '{}' WHERE id = ?1",
        ),
        (
            "scopes not JSON",
            "UPDATE keygate_keys SET scopes = 'admin' WHERE id = ?1",
        ),
        (
            "metadata an array",
            "UPDATE keygate_keys SET metadata = '[]' WHERE id = ?1",
        ),
        (
            "metadata NULL",
            "UPDATE keygate_keys SET metadata = NULL WHERE id = ?1",
        ),
    ];
    let original: Vec<(String,)> = sqlx::query_as("SELECT quote(owner_id) FROM keygate_keys")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(original.len(), 1);
    for (case, edit) in edits {
        // Start from the good row each time.
        sqlx::query("DELETE FROM keygate_keys")
            .execute(store.pool())
            .await
            .unwrap();
        store.insert(issued.record.clone()).await.unwrap();
        gate.verify(key).await.unwrap();
        sqlx::query(edit)
            .bind(&id)
            .execute(store.pool())
            .await
            .unwrap();
        assert_corrupt(&gate, key, case).await;
    }
}

#[tokio::test]
async fn admin_calls_on_an_unreadable_row_are_500() {
    let store = loose_store().await;
    let gate = gate(store.clone());
    let admin = gate
        .mint(NewKey::new("bootstrap", "root").scopes(["admin"]))
        .await
        .unwrap();
    let caller = gate.verify(admin.key.expose()).await.unwrap();
    let api = AdminApi::new(gate.clone());
    let issued = gate.mint(NewKey::new("k", "alice")).await.unwrap();
    sqlx::query("UPDATE keygate_keys SET owner_id = NULL WHERE id = ?1")
        .bind(issued.record.id.to_string())
        .execute(store.pool())
        .await
        .unwrap();
    let id = issued.record.id.to_string();
    let response = api.handle(&caller, AdminRequest::Get { id: &id }).await;
    assert_eq!(response.status, 500, "{}", response.body);
    assert_eq!(response.retry_after, None);
    assert!(!response.body.contains("alice"));
}

#[cfg(unix)]
#[tokio::test]
async fn database_files_are_created_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let db = TempDb::new();
    let store = SqliteStore::connect(db.path()).await.unwrap();
    let gate = gate(store.clone());
    let issued = gate.mint(NewKey::new("k", "alice")).await.unwrap();
    gate.verify(issued.key.expose()).await.unwrap();
    let mode = |suffix: &str| {
        std::fs::metadata(format!("{}{suffix}", db.path()))
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_else(|e| panic!("{suffix}: {e}"))
    };
    for suffix in ["", "-wal", "-shm"] {
        assert_eq!(mode(suffix), 0o600, "{}{suffix}", db.path());
    }
    store.pool().close().await;
    // A file that already exists keeps the mode its owner gave it.
    let existing = TempDb::new();
    std::fs::write(&existing.0, b"").unwrap();
    std::fs::set_permissions(&existing.0, std::fs::Permissions::from_mode(0o640)).unwrap();
    let store = SqliteStore::connect(existing.path()).await.unwrap();
    store.migrate().await.unwrap();
    let mode = std::fs::metadata(&existing.0).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
}

/// HMAC-SHA256 under the tests' pepper, computed without keygate.
fn hmac(input: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[42u8; 32]);
    ring::hmac::sign(&key, input).as_ref().to_vec()
}

#[tokio::test]
async fn a_database_from_before_binding_upgrades_its_hashes_on_use() {
    let db = TempDb::new();
    // The schema as the previous release left it: migration 1 only, and a key hashed the
    // old way (HMAC of the secret part alone).
    let issued = gate(keygate::MemoryStore::new())
        .mint(NewKey::new("old key", "alice"))
        .await
        .unwrap();
    let key = issued.key.expose().to_owned();
    let secret = &key[4 + 22..4 + 22 + 43];
    {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(db.path())
                    .create_if_missing(true),
            )
            .await
            .unwrap();
        sqlx::raw_sql(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/sqlite/0001_create_keys.sql"
        )))
        .execute(&pool)
        .await
        .unwrap();
        sqlx::raw_sql(
            "CREATE TABLE keygate_migrations (version INTEGER PRIMARY KEY, \
             description TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT 'then'); \
             INSERT INTO keygate_migrations (version, description) VALUES (1, 'create keygate_keys')",
        )
        .execute(&pool)
        .await
        .unwrap();
        let r = &issued.record;
        sqlx::query(
            "INSERT INTO keygate_keys (id, format, hash_version, hash_digest, name, owner_id, \
             created_at, updated_at, active, metadata) \
             VALUES (?1, 'opaque', 1, ?2, ?3, ?4, ?5, ?5, 1, '{}')",
        )
        .bind(r.id.to_string())
        .bind(hmac(secret.as_bytes()))
        .bind(&r.name)
        .bind(&r.owner)
        .bind(r.created_at.timestamp_micros())
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    let store = SqliteStore::connect(db.path()).await.unwrap();
    let stored = store.get(issued.record.id).await.unwrap().unwrap();
    assert_eq!(stored.hash.as_ref().unwrap().scheme, HashScheme::Secret);
    let gate = gate(store.clone());
    gate.verify(&key).await.unwrap();
    gate.flush().await.unwrap();
    let (scheme, digest): (String, Vec<u8>) =
        sqlx::query_as("SELECT hash_scheme, hash_digest FROM keygate_keys WHERE id = ?1")
            .bind(issued.record.id.to_string())
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(scheme, "bound");
    assert_eq!(digest, hmac(&key.as_bytes()[..key.len() - 6]));
    gate.verify(&key).await.unwrap();
}

#[tokio::test]
async fn cursors_outside_the_stored_years_list_all_or_nothing() {
    use keygate::chrono::{DateTime, Utc};
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    let record = keygate::testing::sample_record("extreme-cursors");
    store.insert(record.clone()).await.unwrap();
    let after = |at| {
        keygate::ListQuery::new()
            .owner("extreme-cursors")
            .after(keygate::Cursor::new(at, keygate::KeyId::random()))
    };
    let all = store.list(&after(DateTime::<Utc>::MIN_UTC)).await.unwrap();
    assert_eq!(all, [record]);
    let none = store.list(&after(DateTime::<Utc>::MAX_UTC)).await.unwrap();
    assert!(none.is_empty());
}

/// The pepper fingerprint lives in the database file: a process opening it later with
/// another pepper under the same version mints nothing and reports `pepper_mismatch`,
/// while the right pepper still verifies.
#[tokio::test]
async fn the_file_remembers_its_pepper_across_opens() {
    let db = TempDb::new();
    let issued = gate(SqliteStore::connect(db.path()).await.unwrap())
        .mint(NewKey::new("k", "alice"))
        .await
        .unwrap();
    let store = SqliteStore::connect(db.path()).await.unwrap();
    let wrong = Keygate::builder(store.clone(), Pepper::new(1, [43u8; 32]).unwrap())
        .prefix("dur")
        .build()
        .unwrap();
    assert!(matches!(
        wrong.mint(NewKey::new("k", "bob")).await,
        Err(keygate::Error::PepperMismatch { version: 1 })
    ));
    assert!(matches!(
        wrong.verify(issued.key.expose()).await,
        Err(VerifyError::PepperMismatch { version: 1 })
    ));
    let right = gate(store);
    right.verify(issued.key.expose()).await.unwrap();
    let keys = right.list(keygate::ListQuery::new()).await.unwrap().records;
    assert_eq!(keys, [issued.record], "the wrong gate wrote nothing");
}
