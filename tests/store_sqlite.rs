//! `SqliteStore`: the conformance suite, schema and migrations, URL forms, and durability
//! across `kill -9`.
#![cfg(all(feature = "sqlite", feature = "testing"))]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate::sqlx;
use keygate::{
    CacheConfig, CachedStore, KeyStore, Keygate, NewKey, Pepper, Rejection, SqliteStore, StoreError,
};

fn pepper() -> Pepper {
    Pepper::new(1, [42u8; 32]).unwrap()
}

fn gate(store: impl KeyStore) -> Keygate {
    Keygate::builder(store)
        .prefix("dur")
        .pepper(pepper())
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
    let store = SqliteStore::open(db.path()).await.unwrap();
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
    let store = SqliteStore::open(db.path()).await.unwrap();
    let cached = CachedStore::new(store, CacheConfig::new());
    assert!(
        !cached.follow_changes().await.unwrap(),
        "SQLite has no feed"
    );
    keygate::testing::run_all(Arc::new(cached)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conforms_and_is_one_database() {
    let store = SqliteStore::open("sqlite::memory:").await.unwrap();
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
    let other = SqliteStore::open("sqlite::memory:").await.unwrap();
    assert!(other.get(record.id).await.unwrap().is_none());
}

#[tokio::test]
async fn every_url_form_opens_the_same_file() {
    let db = TempDb::new();
    let path = db.path();
    let record = keygate::testing::sample_record("url-forms");
    // Created on first use.
    assert!(!db.0.exists());
    let store = SqliteStore::open(&format!("sqlite://{path}"))
        .await
        .unwrap();
    assert!(db.0.exists());
    store.insert(record.clone()).await.unwrap();
    store.pool().close().await;
    for url in [format!("sqlite:{path}"), path.to_owned()] {
        let store = SqliteStore::open(&url).await.unwrap();
        assert_eq!(
            store.get(record.id).await.unwrap().as_deref(),
            Some(&record),
            "{url}"
        );
        store.pool().close().await;
    }
    // Read-only: readable, nothing written.
    let ro = SqliteStore::open(&format!("sqlite://{path}?mode=ro"))
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
    let opened = SqliteStore::open("sqlite://keys.db?bogus=1").await;
    assert!(
        matches!(opened, Err(StoreError::InvalidUrl(_))),
        "{opened:?}"
    );
}

#[tokio::test]
async fn migrations_are_idempotent_and_keygates_own() {
    let db = TempDb::new();
    let store = SqliteStore::open(db.path()).await.unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    drop(store);
    let store = SqliteStore::open(db.path()).await.unwrap();
    let versions: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, description FROM keygate_migrations ORDER BY version")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(versions, [(1, "create keygate_keys".to_owned())]);
    // No `_sqlx_migrations`: an application's own sqlx migrator on the same file is safe.
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(tables, ["keygate_keys", "keygate_migrations"]);
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'keygate_keys' \
         AND name NOT LIKE 'sqlite_autoindex%'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(indexes, ["keygate_keys_owner_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_opens_all_succeed() {
    let db = TempDb::new();
    let path = db.path().to_owned();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            tokio::spawn(async move { SqliteStore::open(&path).await })
        })
        .collect();
    for open in opens {
        open.await.unwrap().expect("a concurrent open failed");
    }
}

#[tokio::test]
async fn no_plaintext_reaches_the_file() {
    let db = TempDb::new();
    let store = SqliteStore::open(db.path()).await.unwrap();
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
    let store = SqliteStore::open("sqlite::memory:").await.unwrap();
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
    let store = SqliteStore::open(db.path()).await.unwrap();
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
    let gate = self::gate(SqliteStore::open(db.path()).await.unwrap());
    let refused = gate.verify(issued.key.expose()).await.unwrap_err();
    assert_eq!(refused.rejection(), Some(Rejection::Inactive));
}

const CHILD_DB: &str = "KEYGATE_CHILD_SQLITE_DB";

/// The child half of `minted_keys_survive_kill_9`: mints keys until killed, printing each
/// only after the mint returned `Ok`. Does nothing in a normal test run.
#[tokio::test]
async fn durability_child() {
    let Ok(path) = std::env::var(CHILD_DB) else {
        return;
    };
    let gate = gate(SqliteStore::open(&path).await.unwrap());
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
    SqliteStore::open(db.path()).await.unwrap(); // created and migrated up front
    let path = db.path().to_owned();
    let (keys, status) = tokio::task::spawn_blocking(move || mint_until_killed(CHILD_DB, &path))
        .await
        .unwrap();
    assert!(!status.success(), "the child was killed, not finished");
    assert!(keys.len() >= 50);
    let gate = gate(SqliteStore::open(db.path()).await.unwrap());
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

/// Runs `durability_child` in a child process, reads 50 keys, kills it (SIGKILL), and
/// returns every key it printed.
fn mint_until_killed(var: &str, db: &str) -> (Vec<String>, std::process::ExitStatus) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "durability_child",
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
