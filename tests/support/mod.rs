//! Shared by every integration-test binary (`tests/core`, `tests/stores`, `tests/http`):
//!
//! - [`doubles`]: test doubles (`CountingStore`, `Directory`), the `Harness`, and
//!   hand-written token forgers; re-exported here.
//! - [`capture`]: a tracing subscriber that keeps every event as a line of text.
//! - Below: where the tests find their services, and scratch paths.
//!
//! A service URL comes from the environment. A test that needs a service is marked
//! `#[cfg_attr(not(keygate_test_postgres), ignore = "...")]` (and likewise for Redis and
//! Node): `build.rs` sets the cfg when the service is configured, or when `CI=true`, so
//! without the service the test shows as ignored, and on CI a missing service is an error.
#![allow(dead_code)] // each test binary uses some of these

pub mod capture;
pub mod doubles;
pub mod github;
pub mod stall;

#[allow(unused_imports)] // each test binary uses some of these
pub use capture::Capture;
#[allow(unused_imports)]
pub use doubles::*;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// `KEYGATE_TEST_POSTGRES_URL`, e.g. `postgres://postgres@127.0.0.1:5432/test`.
pub fn postgres_url() -> String {
    service_url("KEYGATE_TEST_POSTGRES_URL", "PostgreSQL")
}

/// `KEYGATE_TEST_REDIS_URL`, e.g. `redis://127.0.0.1:6379/`.
pub fn redis_url() -> String {
    service_url("KEYGATE_TEST_REDIS_URL", "Redis")
}

/// A setting of the Redis Cluster and Sentinel servers `.ci/cluster.sh` starts
/// (`KEYGATE_TEST_REDIS_CLUSTER_URLS`, `KEYGATE_TEST_REDIS_SENTINEL_URLS`,
/// `KEYGATE_TEST_REDIS_SENTINEL_MASTER`), for tests marked with `keygate_test_redis_cluster`
/// or `keygate_test_redis_sentinel`.
pub fn cluster_setting(var: &str) -> String {
    service_url(
        var,
        "Redis Cluster and Sentinel (eval \"$(.ci/cluster.sh start)\")",
    )
}

/// A setting of the TLS servers `.ci/tls.sh` starts (`KEYGATE_TEST_POSTGRES_TLS_URL`,
/// `KEYGATE_TEST_REDIS_TLS_URL`, `KEYGATE_TEST_TLS_CA`, `KEYGATE_TEST_TLS_WRONG_CA`), for
/// tests marked with `keygate_test_tls`.
pub fn tls_setting(var: &str) -> String {
    service_url(var, "TLS server (eval \"$(.ci/tls.sh start)\")")
}

/// The service's URL. A test that asks for it runs only when the URL was set at build time
/// or under `CI=true` (otherwise it is ignored), so an unset URL here is a failure: CI
/// without the service, or `--ignored` without the URL.
fn service_url(var: &str, service: &str) -> String {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!("{var} is not set: this test needs a live {service}"),
    }
}

/// How long a test lets something take that must happen within `timeout` (a configured
/// timeout or TTL) before calling it a failure: ten times `timeout`, at least 5 s. A loaded
/// machine does not fail the test; a missing timeout (a hang) still does. Where a test must
/// tell two timeouts apart, the other one is set far beyond this bound.
pub fn bound(timeout: std::time::Duration) -> std::time::Duration {
    (timeout * 10).max(std::time::Duration::from_secs(5))
}

/// A local port nothing listens on, held for as long as the returned socket lives: it is
/// bound but never listening, so a connection to it is refused and no other process can
/// take the port meanwhile (binding a listener and dropping it leaves that window open).
pub fn closed_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
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
