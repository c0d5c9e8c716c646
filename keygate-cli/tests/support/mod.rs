//! Where the CLI tests find their services, and scratch paths (the same helpers as the
//! library's `tests/support`, copied so that this package builds on its own).
//!
//! A service URL comes from the environment. When it is unset the test is skipped with a
//! message, except on CI (`CI=true`), where a missing service is an error: CI must run
//! every store's tests.
#![allow(dead_code)] // each test binary uses some of these

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// `KEYGATE_TEST_POSTGRES_URL`, e.g. `postgres://postgres@127.0.0.1:5432/test`.
pub fn postgres_url() -> Option<String> {
    service_url("KEYGATE_TEST_POSTGRES_URL", "PostgreSQL")
}

/// `KEYGATE_TEST_REDIS_URL`, e.g. `redis://127.0.0.1:6379/`.
pub fn redis_url() -> Option<String> {
    service_url("KEYGATE_TEST_REDIS_URL", "Redis")
}

/// A setting of the TLS servers `.ci/tls.sh` starts (`KEYGATE_TEST_POSTGRES_TLS_URL`,
/// `KEYGATE_TEST_REDIS_TLS_URL`, `KEYGATE_TEST_TLS_CA`, `KEYGATE_TEST_TLS_WRONG_CA`).
pub fn tls_setting(var: &str) -> Option<String> {
    service_url(var, "TLS server (eval \"$(.ci/tls.sh start)\")")
}

fn service_url(var: &str, service: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{var} is not set: CI must run the {service} tests against a live {service}")
        }
        _ => {
            eprintln!("skipping: set {var} to run this test against a live {service}");
            None
        }
    }
}

/// A path for an SQLite database in the temp directory that does not exist yet. The
/// caller removes it (with [`remove_sqlite`]) when done.
pub fn sqlite_temp_path() -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::env::temp_dir().join(format!(
        "keygate-test-{}-{nanos}-{}.db",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Removes an SQLite database and its WAL files, ignoring what is not there.
pub fn remove_sqlite(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

/// A name unique to this run, for owners, application names and the like.
pub fn unique(label: &str) -> String {
    format!("{label}-{}", keygate::KeyId::random())
}
