//! `PostgresStore`: the conformance suite, migrations, outages, durability across
//! `kill -9`, and cross-node revocation through `LISTEN/NOTIFY`.
//!
//! Needs `KEYGATE_TEST_POSTGRES_URL` (ignored without it, a failure on CI); the closed-port
//! outage test needs no server.

// Test code: a panic is how a test reports a failure, and fixtures index and count
// over small known values.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
#![cfg(all(feature = "postgres", feature = "testing"))]

use crate::support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate::sqlx::{self, postgres::PgPoolOptions, Connection};
use keygate::{
    CacheConfig, CachedStore, KeyStore, Keygate, MemoryStore, NewKey, Pepper, PostgresConfig,
    PostgresStore, Rejection, StoreError, VerifyError,
};

/// Under a pepper version of this file's own: the store remembers one pepper per version
/// (`keygate_peppers`), and the test database is shared with other suites (the CLI's,
/// the store benchmark) whose peppers differ.
fn pepper() -> Pepper {
    Pepper::new(101, [42u8; 32]).unwrap()
}

fn gate(store: impl KeyStore) -> Keygate {
    Keygate::builder(store, pepper())
        .prefix("dur")
        .build()
        .unwrap()
}

fn shared_gate(store: Arc<dyn KeyStore>) -> Keygate {
    Keygate::builder(store, pepper())
        .prefix("dur")
        .build()
        .unwrap()
}

async fn connect(url: &str, app: &str) -> PostgresStore {
    PostgresStore::connect_with(url, PostgresConfig::new().application_name(app))
        .await
        .unwrap()
}

/// Terminates every backend whose `application_name` is `app`; how many.
async fn terminate(url: &str, app: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
           AND application_name = $1",
    )
    .bind(app)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    killed.len() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_postgres),
    ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
)]
async fn postgres_store_conforms() {
    let url = support::postgres_url();
    let store = connect(&url, &support::unique("kg-conform")).await;
    keygate::testing::run_all(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_postgres),
    ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
)]
async fn cached_postgres_store_following_changes_conforms() {
    let url = support::postgres_url();
    let store = connect(&url, &support::unique("kg-conform-cached")).await;
    let cached = CachedStore::new(store, CacheConfig::new());
    assert!(cached.follow_changes().await.unwrap());
    keygate::testing::run_all(Arc::new(cached)).await;
}

/// A schema of its own for a test that inspects or tampers with the migrations table,
/// so the shared database's tables are never touched. `url` points into it.
struct Schema {
    name: String,
    url: String,
    admin: sqlx::PgConnection,
}

impl Schema {
    async fn new(base: &str, label: &str) -> Self {
        let name = support::unique(label).replace('-', "_");
        let mut admin = sqlx::PgConnection::connect(base).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{name}\"")))
            .execute(&mut admin)
            .await
            .unwrap();
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options=-csearch_path%3D{name}");
        Self { name, url, admin }
    }

    async fn drop(mut self) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{}\" CASCADE",
            self.name
        )))
        .execute(&mut self.admin)
        .await
        .unwrap();
    }
}

/// `(version, description)` of the applied migrations.
async fn migrations(store: &PostgresStore) -> Vec<(i64, String)> {
    sqlx::query_as("SELECT version, description FROM keygate_migrations ORDER BY version")
        .fetch_all(store.pool())
        .await
        .unwrap()
}

/// `(version, checksum)` of the applied migrations.
async fn checksums(store: &PostgresStore) -> Vec<(i64, Vec<u8>)> {
    sqlx::query_as("SELECT version, checksum FROM keygate_migrations ORDER BY version")
        .fetch_all(store.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_postgres),
    ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
)]
async fn concurrent_migrations_apply_once() {
    let url = support::postgres_url();
    let schema = Schema::new(&url, "kg_migrate").await;
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = schema.url.clone();
            tokio::spawn(async move {
                let store = PostgresStore::connect(&url).await?;
                store.migrate().await?;
                Ok::<_, StoreError>(store)
            })
        })
        .collect();
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await.unwrap().expect("a concurrent connect failed"));
    }
    let versions = migrations(&stores[0]).await;
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() \
         AND tablename = 'keygate_keys' AND indexname <> 'keygate_keys_pkey' ORDER BY indexname",
    )
    .fetch_all(stores[0].pool())
    .await
    .unwrap();
    for store in stores {
        store.pool().close().await;
    }
    schema.drop().await;
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
            (
                8,
                "create the change sequence keygate_change_seq and log keygate_changes".to_owned()
            ),
        ]
    );
    assert_eq!(indexes.len(), 2, "{indexes:?}");
    assert!(indexes[0].contains("keygate_keys_created") && indexes[0].contains("(created_at, id)"));
    assert!(
        indexes[1].contains("(owner_id, created_at, id)"),
        "{indexes:?}"
    );
}

/// The migration error behind a failed connect: sqlx's `MigrateError`, as the source of
/// `StoreError::Backend`.
fn migrate_error(opened: Result<PostgresStore, StoreError>) -> sqlx::migrate::MigrateError {
    match opened {
        Err(StoreError::Backend(source)) => {
            *source.downcast::<sqlx::migrate::MigrateError>().unwrap()
        }
        other => panic!("expected a migration failure, got {other:?}"),
    }
}

/// Adds a row for migration `version` to `keygate_migrations`, as another keygate would.
async fn record_migration(store: &PostgresStore, version: i64) {
    sqlx::query(
        "INSERT INTO keygate_migrations (version, description, success, checksum, \
         execution_time) VALUES ($1, 'not this build''s', TRUE, '\\x01', 0)",
    )
    .bind(version)
    .execute(store.pool())
    .await
    .unwrap();
}

#[tokio::test]
#[cfg_attr(
    not(keygate_test_postgres),
    ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
)]
async fn an_edited_or_unknown_migration_is_refused() {
    let url = support::postgres_url();
    let schema = Schema::new(&url, "kg_checksum").await;
    let store = PostgresStore::connect(&schema.url).await.unwrap();
    let sums = checksums(&store).await;
    // As if migration 2's script had been edited after this database applied it.
    sqlx::query("UPDATE keygate_migrations SET checksum = '\\x00' WHERE version = 2")
        .execute(store.pool())
        .await
        .unwrap();
    let edited = migrate_error(PostgresStore::connect(&schema.url).await);
    let again = store.migrate().await;
    sqlx::query("UPDATE keygate_migrations SET checksum = $1 WHERE version = 2")
        .bind(&sums[1].1)
        .execute(store.pool())
        .await
        .unwrap();
    // A migration newer than this build's: a newer keygate migrated the database (a
    // rolling upgrade); this one keeps working.
    record_migration(&store, 99).await;
    let newer = PostgresStore::connect(&schema.url).await;
    if let Ok(newer) = &newer {
        newer.pool().close().await;
    }
    // An unknown migration among the known ones is no database of keygate's.
    record_migration(&store, 0).await;
    let unknown = migrate_error(PostgresStore::connect(&schema.url).await);
    store.pool().close().await;
    schema.drop().await;
    assert!(
        matches!(edited, sqlx::migrate::MigrateError::VersionMismatch(2)),
        "{edited:?}"
    );
    assert!(matches!(again, Err(StoreError::Backend(_))), "{again:?}");
    assert!(newer.is_ok(), "{newer:?}");
    assert!(
        matches!(unknown, sqlx::migrate::MigrateError::VersionMissing(0)),
        "{unknown:?}"
    );
}

#[tokio::test]
#[cfg_attr(
    not(keygate_test_postgres),
    ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
)]
async fn a_migrations_table_from_the_first_runner_is_upgraded() {
    let url = support::postgres_url();
    // The reference: checksums as a fresh database records them.
    let fresh = Schema::new(&url, "kg_fresh").await;
    let store = PostgresStore::connect(&fresh.url).await.unwrap();
    let expected = checksums(&store).await;
    store.pool().close().await;
    fresh.drop().await;

    // Migrations 1 and 2 applied by the first runner, whose table had no checksums.
    let schema = Schema::new(&url, "kg_legacy").await;
    let record = keygate::testing::sample_record("first-runner");
    {
        let mut conn = sqlx::PgConnection::connect(&schema.url).await.unwrap();
        sqlx::raw_sql(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/postgres/0001_create_keys.sql"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::raw_sql(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/postgres/0002_hash_scheme.sql"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::raw_sql(
            "CREATE TABLE keygate_migrations (
                 version     BIGINT PRIMARY KEY,
                 description TEXT NOT NULL,
                 applied_at  TIMESTAMPTZ NOT NULL DEFAULT '2026-01-02T03:04:05Z'
             );
             INSERT INTO keygate_migrations (version, description)
                 VALUES (1, 'create keygate_keys'), (2, 'add keygate_keys.hash_scheme');",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        // The first runner's keygate wrote no change log: insert the row by hand.
        sqlx::query(
            "INSERT INTO keygate_keys (id, format, hash_version, hash_digest, name, description, \
             owner_id, created_by, created_at, updated_at, expires_at, last_used_at, active, \
             scopes, metadata, hash_scheme) \
             VALUES ($1, 'opaque', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(*record.id.as_uuid())
        .bind(record.hash.as_ref().map(|h| i64::from(h.version)))
        .bind(record.hash.as_ref().map(|h| h.digest.to_vec()))
        .bind(&record.name)
        .bind(&record.description)
        .bind(&record.owner)
        .bind(&record.created_by)
        .bind(record.created_at)
        .bind(record.updated_at)
        .bind(record.expires_at)
        .bind(record.last_used_at)
        .bind(record.active)
        .bind(record.scopes.as_ref().map(sqlx::types::Json))
        .bind(sqlx::types::Json(&record.metadata))
        .bind(record.hash.as_ref().map_or("secret", |h| h.scheme.as_str()))
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    let store = PostgresStore::connect(&schema.url).await.unwrap();
    let upgraded = checksums(&store).await;
    let got = store.get(record.id).await.unwrap();
    let kept: String =
        sqlx::query_scalar("SELECT installed_on::text FROM keygate_migrations WHERE version = 1")
            .fetch_one(store.pool())
            .await
            .unwrap();
    // A row the first runner might still add (it names two columns): its checksum is
    // adopted too.
    sqlx::query("UPDATE keygate_migrations SET checksum = '' WHERE version = 3")
        .execute(store.pool())
        .await
        .unwrap();
    let again = PostgresStore::connect(&schema.url).await;
    let readopted = checksums(&store).await;
    store.pool().close().await;
    if let Ok(again) = &again {
        again.pool().close().await;
    }
    schema.drop().await;
    assert_eq!(expected.len(), 8); // 0001-0008
    assert!(expected.iter().all(|(_, sum)| sum.len() == 48), "SHA-384");
    assert_eq!(upgraded, expected);
    assert_eq!(got.as_deref(), Some(&record));
    assert!(kept.starts_with("2026-01-02"), "installed_on: {kept}");
    assert!(again.is_ok(), "{again:?}");
    assert_eq!(readopted, expected);
}

#[tokio::test]
#[cfg_attr(
    not(keygate_test_postgres),
    ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
)]
async fn config_is_honoured() {
    let url = support::postgres_url();
    let schema = Schema::new(&url, "kg_config").await;
    let config = PostgresConfig::new()
        .max_connections(3)
        .application_name("kg-config")
        .migrate(false);
    let store = PostgresStore::connect_with(&schema.url, config)
        .await
        .unwrap();
    let max = store.pool().options().get_max_connections();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let name: String = sqlx::query_scalar("SELECT current_setting('application_name')")
        .fetch_one(store.pool())
        .await
        .unwrap();
    store.pool().close().await;
    schema.drop().await;
    assert_eq!(max, 3);
    assert!(tables.is_empty(), "migrate(false) created {tables:?}");
    assert_eq!(name, "kg-config");
}

#[tokio::test]
#[cfg_attr(
    not(keygate_test_postgres),
    ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
)]
async fn no_plaintext_reaches_the_database() {
    let url = support::postgres_url();
    let store = connect(&url, &support::unique("kg-plain")).await;
    let gate = gate(store.clone());
    let issued = gate.mint(NewKey::new("plain?", "owner-1")).await.unwrap();
    gate.verify(issued.key.expose()).await.unwrap();
    gate.flush().await.unwrap();
    let row: String =
        sqlx::query_scalar("SELECT row_to_json(k)::text FROM keygate_keys k WHERE id = $1")
            .bind(*issued.record.id.as_uuid())
            .fetch_one(store.pool())
            .await
            .unwrap();
    let secret_part = issued.key.expose().trim_start_matches("dur_");
    assert!(!row.contains(secret_part), "plaintext key stored: {row}");
}

#[tokio::test]
#[cfg_attr(
    not(keygate_test_postgres),
    ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
)]
async fn unreadable_rows_are_corrupt_not_missing() {
    let url = support::postgres_url();
    // In a schema of its own, so other tests' listings never meet the broken row.
    let schema = support::unique("kg_corrupt").replace('-', "_");
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
        .execute(&mut admin)
        .await
        .unwrap();
    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let pool = PgPoolOptions::new()
        .connect_with(options.options([("search_path", schema.as_str())]))
        .await
        .unwrap();
    let store = PostgresStore::from_pool(pool);
    store.migrate().await.unwrap();
    let record = keygate::testing::sample_record("corrupt");
    store.insert(record.clone()).await.unwrap();
    sqlx::query("UPDATE keygate_keys SET scopes = '[1, 2]' WHERE id = $1")
        .bind(*record.id.as_uuid())
        .execute(store.pool())
        .await
        .unwrap();
    let got = store.get(record.id).await;
    let listed = store.list(&keygate::ListQuery::new()).await;
    store.pool().close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    assert!(matches!(got, Err(StoreError::Corrupt(_))), "{got:?}");
    assert!(matches!(listed, Err(StoreError::Corrupt(_))), "{listed:?}");
}

#[tokio::test]
async fn a_bad_url_is_invalid_url_and_does_not_echo_it() {
    let opened = PostgresStore::connect("postgres://user:hunter2@[::1/db").await;
    match opened {
        Err(StoreError::InvalidUrl(message)) => assert!(!message.contains("hunter2")),
        other => panic!("expected InvalidUrl, got {other:?}"),
    }
}

/// A syntactically valid key for a gate with `gate`'s prefix and pepper, whose record lives
/// elsewhere.
async fn some_key() -> String {
    let issued = gate(MemoryStore::new())
        .mint(NewKey::new("elsewhere", "owner"))
        .await
        .unwrap();
    issued.key.expose().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_server_is_unavailable_fast_never_a_bad_key() {
    let (_closed, port) = support::closed_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/test");
    let key = some_key().await;

    // Connecting fails within the acquire timeout.
    let acquire = Duration::from_millis(500);
    let started = Instant::now();
    let error = PostgresStore::connect_with(&url, PostgresConfig::new().acquire_timeout(acquire))
        .await
        .unwrap_err();
    let connect_took = started.elapsed();
    assert!(connect_took < support::bound(acquire), "{connect_took:?}");
    assert!(
        matches!(error, StoreError::Timeout | StoreError::Backend(_)),
        "{error:?}"
    );

    // A lazy pool (the app started while the database was down): verify answers
    // StoreUnavailable within the pool's acquire timeout (the gate's is far longer) ...
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy(&url)
        .unwrap();
    let gate = Keygate::builder(PostgresStore::from_pool(pool), pepper())
        .prefix("dur")
        .store_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let started = Instant::now();
    let error = gate.verify(&key).await.unwrap_err();
    let pool_timeout_took = started.elapsed();
    assert!(
        matches!(error, VerifyError::StoreUnavailable(_)),
        "{error:?}"
    );
    assert!(
        pool_timeout_took < support::bound(Duration::from_millis(300)),
        "{pool_timeout_took:?}"
    );

    // ... or within the gate's store timeout when that is shorter (the pool's is far longer).
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(60))
        .connect_lazy(&url)
        .unwrap();
    let gate = Keygate::builder(PostgresStore::from_pool(pool), pepper())
        .prefix("dur")
        .store_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let started = Instant::now();
    let error = gate.verify(&key).await.unwrap_err();
    let store_timeout_took = started.elapsed();
    assert!(
        matches!(error, VerifyError::StoreUnavailable(StoreError::Timeout)),
        "{error:?}"
    );
    assert!(
        store_timeout_took < support::bound(Duration::from_millis(200)),
        "{store_timeout_took:?}"
    );
    eprintln!(
        "postgres outage (closed port): connect failed in {connect_took:?} (acquire timeout \
         {acquire:?}); verify unavailable in {pool_timeout_took:?} (pool acquire timeout 300ms) \
         and {store_timeout_took:?} (store_timeout 200ms)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_postgres),
    ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
)]
async fn killed_connections_are_unavailable_or_fine_and_recover() {
    let url = support::postgres_url();
    let app = support::unique("kg-outage");
    let store = PostgresStore::connect_with(
        &url,
        PostgresConfig::new()
            .application_name(&app)
            .acquire_timeout(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    let gate = Keygate::builder(store, pepper())
        .prefix("dur")
        .store_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let key = gate
        .mint(NewKey::new("outage", "owner"))
        .await
        .unwrap()
        .key
        .expose()
        .to_owned();
    gate.verify(&key).await.unwrap();

    let killer = {
        let (url, app) = (url.clone(), app.clone());
        tokio::spawn(async move {
            let mut killed = 0;
            for _ in 0..10 {
                killed += terminate(&url, &app).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            killed
        })
    };
    let (mut ok, mut unavailable) = (0, 0);
    while !killer.is_finished() {
        match gate.verify(&key).await {
            Ok(_) => ok += 1,
            Err(VerifyError::StoreUnavailable(_)) => unavailable += 1,
            Err(other) => panic!("a killed connection must not look like a bad key: {other:?}"),
        }
    }
    let killed = killer.await.unwrap();
    assert!(killed > 0, "no backend was terminated");
    // Recovers by itself.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match gate.verify(&key).await {
            Ok(_) => break,
            Err(VerifyError::StoreUnavailable(_)) if attempts < 5 => {}
            Err(other) => panic!("no recovery after {attempts} attempts: {other:?}"),
        }
    }
    eprintln!(
        "postgres outage (backends terminated {killed} times): {ok} verifies ok, \
         {unavailable} unavailable, recovered on attempt {attempts}"
    );
}

const CHILD_DB: &str = "KEYGATE_CHILD_POSTGRES_DB";
const CHILD_OWNER: &str = "KEYGATE_CHILD_POSTGRES_OWNER";

/// The child half of `minted_keys_survive_kill_9`: mints keys until killed, printing each
/// only after the mint returned `Ok`. An entry point, not a test: ignored in a normal run,
/// the parent runs it with `--ignored` (and does nothing without the parent's variables).
#[tokio::test]
#[ignore = "entry point of minted_keys_survive_kill_9's child process"]
async fn durability_child() {
    let (Ok(url), Ok(owner)) = (std::env::var(CHILD_DB), std::env::var(CHILD_OWNER)) else {
        return;
    };
    let gate = gate(PostgresStore::connect(&url).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(30); // never outlive a lost parent
    let mut stdout = std::io::stdout();
    for i in 0.. {
        if Instant::now() > deadline {
            break;
        }
        let issued = gate
            .mint(NewKey::new(format!("durable {i}"), &owner))
            .await
            .unwrap();
        writeln!(stdout, "KEY {}", issued.key.expose()).unwrap();
        stdout.flush().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_postgres),
    ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
)]
async fn minted_keys_survive_kill_9() {
    let url = support::postgres_url();
    let owner = support::unique("durability");
    let (keys, status) = {
        let (url, owner) = (url.clone(), owner.clone());
        tokio::task::spawn_blocking(move || mint_until_killed(&url, &owner))
            .await
            .unwrap()
    };
    assert!(!status.success(), "the child was killed, not finished");
    assert!(keys.len() >= 50);
    let gate = gate(PostgresStore::connect(&url).await.unwrap());
    for key in &keys {
        if let Err(e) = gate.verify(key).await {
            panic!("a key minted before the kill does not verify: {e:?}");
        }
    }
    eprintln!(
        "postgres durability: {} keys minted before kill -9, all verify",
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
fn mint_until_killed(url: &str, owner: &str) -> (Vec<String>, std::process::ExitStatus) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            child_test_name().as_str(),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DB, url)
        .env(CHILD_OWNER, owner)
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
    for line in lines {
        match line {
            Ok(line) => keys.extend(line.strip_prefix("KEY ").map(str::to_owned)),
            Err(_) => break,
        }
    }
    (keys, status)
}

/// One node: a cache over its own connection pool, and a gate over the cache.
struct Node {
    cache: Arc<CachedStore<PostgresStore>>,
    gate: Keygate,
}

async fn node(url: &str, app: &str, ttl: Duration, follow: bool) -> Node {
    let cache = Arc::new(CachedStore::new(
        connect(url, app).await,
        CacheConfig::new().ttl(ttl),
    ));
    if follow {
        assert!(cache.follow_changes().await.unwrap(), "postgres has a feed");
    }
    let gate = shared_gate(cache.clone());
    Node { cache, gate }
}

/// Mints on `a`, makes `b` cache the key, revokes on `a`, and returns how long after the
/// revoke committed `b` refused the key (panics past `deadline`).
async fn revocation_latency(a: &Node, b: &Node, deadline: Duration) -> Duration {
    let issued = a
        .gate
        .mint(NewKey::new("cross-node", "owner"))
        .await
        .unwrap();
    let key = issued.key.expose();
    // Until b answers from its cache. (The insert's own notice may reach b after b's
    // first load and drop that entry: harmless, but then b reloads.)
    let mut attempts = 0;
    loop {
        b.gate.verify(key).await.unwrap();
        let hits = b.cache.stats().hits;
        b.gate.verify(key).await.unwrap();
        if b.cache.stats().hits > hits {
            break;
        }
        attempts += 1;
        assert!(attempts < 100, "b never served the key from its cache");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    a.gate.revoke(issued.record.id).await.unwrap();
    let revoked = Instant::now();
    loop {
        match b.gate.verify(key).await {
            Err(e) if e.rejection() == Some(Rejection::Inactive) => return revoked.elapsed(),
            Ok(_) => {}
            Err(other) => panic!("unexpected refusal: {other:?}"),
        }
        let waited = revoked.elapsed();
        assert!(
            waited < deadline,
            "b still accepts a key revoked {waited:?} ago"
        );
        if waited < Duration::from_millis(5) {
            tokio::task::yield_now().await; // fine-grained at first
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

fn distribution(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "{label}: n={} min={:?} median={:?} p95={:?} max={:?}",
        samples.len(),
        samples[0],
        pick(0.5),
        pick(0.95),
        samples[samples.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_postgres),
    ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
)]
async fn a_revoke_reaches_the_other_node_through_the_feed() {
    let url = support::postgres_url();
    let ttl = Duration::from_secs(30);
    let a = node(&url, &support::unique("kg-node-a"), ttl, true).await;
    let b = node(&url, &support::unique("kg-node-b"), ttl, true).await;
    let mut samples = Vec::new();
    for _ in 0..50 {
        // Well inside the TTL: only the feed can have told `b`.
        samples.push(revocation_latency(&a, &b, ttl / 3).await);
    }
    assert!(b.cache.stats().invalidations >= 50);
    distribution(
        "cross-node revocation via LISTEN/NOTIFY (cache TTL 30 s)",
        samples,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_postgres),
    ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
)]
async fn the_feed_reconnects_and_resyncs_after_its_connection_is_killed() {
    let url = support::postgres_url();
    let ttl = Duration::from_secs(30);
    let a = node(&url, &support::unique("kg-feed-a"), ttl, true).await;
    let b_app = support::unique("kg-feed-b");
    let b = node(&url, &b_app, ttl, true).await;

    // b caches a key; its feed dies; the key is revoked while the feed is down.
    let issued = a.gate.mint(NewKey::new("feed", "owner")).await.unwrap();
    let key = issued.key.expose();
    b.gate.verify(key).await.unwrap();
    let resyncs = b.cache.stats().resyncs;
    let killed = terminate(&url, &format!("{b_app}-listener")).await;
    assert_eq!(killed, 1, "b's feed has one connection");
    a.gate.revoke(issued.record.id).await.unwrap();
    let revoked = Instant::now();
    loop {
        match b.gate.verify(key).await {
            Err(e) if e.rejection() == Some(Rejection::Inactive) => break,
            Ok(_) => {}
            Err(other) => panic!("unexpected refusal: {other:?}"),
        }
        assert!(
            revoked.elapsed() < ttl / 3,
            "the reconnected feed did not resync"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let missed_revoke = revoked.elapsed();
    let deadline = Instant::now() + Duration::from_secs(5);
    let syncs = b.cache.stats().syncs;
    while b.cache.stats().syncs == syncs {
        assert!(
            Instant::now() < deadline,
            "no heartbeat after the feed reconnected"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The missed revoke was replayed from the change log: the cache was not dropped.
    assert_eq!(b.cache.stats().resyncs, resyncs);
    // And notices flow again.
    let mut samples = Vec::new();
    for _ in 0..5 {
        // Well inside the TTL: only the feed can have told `b`.
        samples.push(revocation_latency(&a, &b, ttl / 3).await);
    }
    eprintln!("revoke while b's feed was down: refused on b after {missed_revoke:?}");
    distribution("cross-node revocation after the feed reconnected", samples);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_postgres),
    ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
)]
async fn without_a_feed_the_ttl_bounds_staleness() {
    let url = support::postgres_url();
    let ttl = Duration::from_millis(300);
    let a = node(&url, &support::unique("kg-ttl-a"), ttl, false).await;
    let b = node(&url, &support::unique("kg-ttl-b"), ttl, false).await;
    let mut samples = Vec::new();
    for _ in 0..3 {
        samples.push(revocation_latency(&a, &b, support::bound(ttl)).await);
    }
    distribution(
        "cross-node revocation without a feed (cache TTL 300 ms)",
        samples,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_postgres),
    ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
)]
async fn the_feed_stops_when_its_cache_is_dropped() {
    let url = support::postgres_url();
    let app = support::unique("kg-feed-drop");
    let listener_app = format!("{app}-listener");
    let cache = CachedStore::new(connect(&url, &app).await, CacheConfig::new());
    assert!(cache.follow_changes().await.unwrap());
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    let count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1";
    let listening: i64 = sqlx::query_scalar(count)
        .bind(&listener_app)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(listening, 1);
    drop(cache);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let listening: i64 = sqlx::query_scalar(count)
            .bind(&listener_app)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        if listening == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the feed outlived its cache");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A store in a schema of its own (so no other test's listing meets its broken rows),
/// with keygate's migrations or with `table` instead.
async fn scratch_store(
    url: &str,
    label: &str,
    table: Option<&'static str>,
) -> (PostgresStore, String) {
    let schema = support::unique(label).replace('-', "_");
    let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
        .execute(&mut admin)
        .await
        .unwrap();
    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let pool = PgPoolOptions::new()
        .connect_with(options.options([("search_path", schema.as_str())]))
        .await
        .unwrap();
    let store = PostgresStore::from_pool(pool);
    match table {
        None => store.migrate().await.unwrap(),
        Some(table) => {
            sqlx::raw_sql(table).execute(store.pool()).await.unwrap();
            // Writes need the change sequence (migration 8), whatever the table.
            sqlx::raw_sql(include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/migrations/postgres/0008_change_log.sql"
            )))
            .execute(store.pool())
            .await
            .unwrap();
        }
    }
    (store, schema)
}

async fn drop_scratch(url: &str, store: PostgresStore, schema: &str) {
    store.pool().close().await;
    let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

/// What `gate.verify(key)` answered, as `(status, Retry-After, corrupt?)`.
async fn verify_outcome(gate: &Keygate, key: &str) -> (u16, Option<u32>, bool) {
    match gate.verify(key).await {
        Ok(_) => (200, None, false),
        Err(err) => {
            let http = gate.http_outcome(&err);
            let corrupt = matches!(err, VerifyError::StoreCorrupt(StoreError::Corrupt(_)));
            (http.status, http.retry_after, corrupt)
        }
    }
}

/// `keygate_keys` as an application might create it by hand: the right column types,
/// no constraints (and the pepper fingerprints' table, which mint needs).
const LOOSE_TABLE: &str = "CREATE TABLE keygate_keys (
    id UUID, format TEXT, hash_version BIGINT, hash_digest BYTEA, name TEXT,
    description TEXT, owner_id TEXT, created_by TEXT, created_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ, expires_at TIMESTAMPTZ, last_used_at TIMESTAMPTZ,
    active BOOLEAN, scopes JSONB, metadata JSONB, hash_scheme TEXT, ratelimits JSONB, credits JSONB,
    network JSONB
);
CREATE TABLE keygate_peppers (version BIGINT PRIMARY KEY, fingerprint BYTEA)";

#[tokio::test]
#[cfg_attr(
    not(keygate_test_postgres),
    ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
)]
async fn a_table_without_keygates_constraints_fails_closed() {
    let url = support::postgres_url();
    let (store, schema) = scratch_store(&url, "kg_loose", Some(LOOSE_TABLE)).await;
    // No directory: every owner unrestricted, so the owner column is all that matters.
    let gate = gate(store.clone());
    let issued = gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let key = issued.key.expose();
    let edits = [
        ("empty owner", "SET owner_id = ''"),
        ("blank owner", "SET owner_id = '  '"),
        ("NULL owner", "SET owner_id = NULL"),
        ("owner with an escape", "SET owner_id = E'a\\x1b[2J'"),
        ("no hash", "SET hash_version = NULL, hash_digest = NULL"),
        ("half a hash", "SET hash_digest = NULL"),
        ("short digest", "SET hash_digest = '\\x00'"),
        ("version out of range", "SET hash_version = 4294967296"),
        ("unknown scheme", "SET hash_scheme = 'md5'"),
        ("NULL scheme", "SET hash_scheme = NULL"),
        ("unknown format", "SET format = 'paseto'"),
        ("NULL created_at", "SET created_at = NULL"),
        ("NULL active", "SET active = NULL"),
        ("scopes not strings", "SET scopes = '[1, 2]'"),
        ("scopes an object", "SET scopes = '{}'"),
        ("scopes a string", "SET scopes = '\"admin\"'"),
        ("metadata an array", "SET metadata = '[]'"),
        ("metadata NULL", "SET metadata = NULL"),
        ("network an array", "SET network = '[]'"),
        (
            "network with host bits",
            "SET network = '{\"cidrs\": [\"10.1.0.0/8\"]}'",
        ),
        ("network, unknown field", "SET network = '{\"hosts\": []}'"),
        (
            "network, a path in an origin",
            "SET network = '{\"origins\": [\"https://a.example/x\"]}'",
        ),
        (
            "expiry in year 10000",
            "SET expires_at = '10000-01-01T00:00:00Z'",
        ),
    ];
    let mut outcomes = Vec::new();
    for (case, edit) in edits {
        sqlx::query("DELETE FROM keygate_keys")
            .execute(store.pool())
            .await
            .unwrap();
        store.insert(issued.record.clone()).await.unwrap();
        let before = verify_outcome(&gate, key).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("UPDATE keygate_keys {edit}")))
            .execute(store.pool())
            .await
            .unwrap();
        outcomes.push((case, before, verify_outcome(&gate, key).await));
    }
    drop_scratch(&url, store, &schema).await;
    for (case, before, after) in outcomes {
        assert_eq!(before, (200, None, false), "{case}: the good row");
        assert_eq!(after, (500, None, true), "{case}");
    }
}

#[tokio::test]
#[cfg_attr(
    not(keygate_test_postgres),
    ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
)]
async fn infinite_and_out_of_range_timestamps_are_corrupt_not_a_panic() {
    let url = support::postgres_url();
    let (store, schema) = scratch_store(&url, "kg_time", None).await;
    let gate = gate(store.clone());
    let issued = gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let key = issued.key.expose();
    let id = *issued.record.id.as_uuid();
    let mut outcomes = Vec::new();
    for column in ["created_at", "updated_at", "expires_at", "last_used_at"] {
        for value in [
            "infinity",
            "-infinity",
            "200000-01-01T00:00:00Z",
            "4713-01-01T00:00:00Z BC",
        ] {
            sqlx::query("DELETE FROM keygate_keys")
                .execute(store.pool())
                .await
                .unwrap();
            store.insert(issued.record.clone()).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "UPDATE keygate_keys SET {column} = '{value}'"
            )))
            .execute(store.pool())
            .await
            .unwrap();
            // Each call in a task of its own: a panic is an outcome, not the end of the test.
            let (s, l) = (store.clone(), store.clone());
            let got = tokio::spawn(async move { s.get(keygate::KeyId::from(id)).await }).await;
            let listed =
                tokio::spawn(async move { l.list(&keygate::ListQuery::new()).await }).await;
            let got = got.map(|r| matches!(r, Err(StoreError::Corrupt(_))));
            let listed = listed.map(|r| matches!(r, Err(StoreError::Corrupt(_))));
            let verified = verify_outcome(&gate, key).await;
            outcomes.push((column, value, got.ok(), listed.ok(), verified));
        }
    }
    drop_scratch(&url, store, &schema).await;
    for (column, value, got, listed, verified) in outcomes {
        let case = format!("{column} = {value}");
        assert_eq!(
            got,
            Some(true),
            "{case}: get must be Corrupt (None: it panicked)"
        );
        assert_eq!(
            listed,
            Some(true),
            "{case}: list must be Corrupt (None: it panicked)"
        );
        assert_eq!(verified, (500, None, true), "{case}: verify");
    }
}

#[tokio::test]
#[cfg_attr(
    not(keygate_test_postgres),
    ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
)]
async fn cursors_outside_the_stored_years_list_all_or_nothing() {
    use keygate::chrono::{DateTime, Utc};
    let url = support::postgres_url();
    let store = connect(&url, &support::unique("kg-extreme")).await;
    let owner = support::unique("extreme-cursors");
    let record = keygate::testing::sample_record(&owner);
    store.insert(record.clone()).await.unwrap();
    let after = |at| {
        keygate::ListQuery::new()
            .owner(owner.clone())
            .after(keygate::Cursor::new(at, keygate::KeyId::random()))
    };
    // Years PostgreSQL cannot hold (before 4713 BC): every record, not an error.
    let all = store.list(&after(DateTime::<Utc>::MIN_UTC)).await.unwrap();
    assert_eq!(all, [record]);
    let none = store.list(&after(DateTime::<Utc>::MAX_UTC)).await.unwrap();
    assert!(none.is_empty());
}

/// Every insert, update and delete appends one numbered entry to `keygate_changes`, in
/// order; last-used times and failed writes append none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(keygate_test_postgres),
    ignore = "needs PostgreSQL: set KEYGATE_TEST_POSTGRES_URL"
)]
async fn every_write_appends_to_the_change_log() {
    let url = support::postgres_url();
    let store = connect(&url, &support::unique("kg-log")).await;
    let record = keygate::testing::sample_record(&support::unique("log-owner"));
    let id = record.id;
    let logged = |store: PostgresStore| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT seq FROM keygate_changes WHERE key_id = $1 ORDER BY seq",
        )
        .bind(*id.as_uuid())
        .fetch_all(store.pool())
        .await
        .unwrap()
    };
    store.insert(record.clone()).await.unwrap();
    assert!(matches!(
        store.insert(record.clone()).await,
        Err(StoreError::Conflict(_))
    ));
    store
        .record_last_used(&[(id, keygate::chrono::Utc::now())])
        .await
        .unwrap();
    assert_eq!(logged(store.clone()).await.len(), 1, "insert only");
    store
        .update(id, &keygate::KeyPatch::new().active(false))
        .await
        .unwrap();
    assert!(store.delete(id).await.unwrap());
    assert!(!store.delete(id).await.unwrap());
    let seqs = logged(store.clone()).await;
    assert_eq!(seqs.len(), 3, "insert, update, delete: {seqs:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let current: i64 = sqlx::query_scalar("SELECT seq FROM keygate_change_seq")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(current >= seqs[2]);
    store.pool().close().await;
}
