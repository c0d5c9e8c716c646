//! Tells the integration tests which outside services they may use, so that a test whose
//! service is absent shows as *ignored* in `cargo test`'s summary instead of passing
//! without having run. Nothing here affects the library itself: it only sets `cfg`s that
//! `tests/` reads.
//!
//! - `keygate_test_postgres`: `KEYGATE_TEST_POSTGRES_URL` is set.
//! - `keygate_test_redis`: `KEYGATE_TEST_REDIS_URL` is set.
//! - `keygate_test_redis_cluster`: `KEYGATE_TEST_REDIS_CLUSTER_URLS` is set (the Redis
//!   Cluster of `.ci/cluster.sh`: `eval "$(.ci/cluster.sh start)"`).
//! - `keygate_test_redis_sentinel`: `KEYGATE_TEST_REDIS_SENTINEL_URLS` and
//!   `KEYGATE_TEST_REDIS_SENTINEL_MASTER` are set (the Sentinel set-up of the same script).
//! - `keygate_test_node`: the Node interop fixture is installed (`npm ci` in
//!   `tests/fixtures/node`).
//! - `keygate_test_tls`: the TLS servers of `.ci/tls.sh` are configured:
//!   `KEYGATE_TEST_POSTGRES_TLS_URL`, `KEYGATE_TEST_REDIS_TLS_URL`, `KEYGATE_TEST_TLS_CA`
//!   and `KEYGATE_TEST_TLS_WRONG_CA` are all set (`eval "$(.ci/tls.sh start)"`).
//!
//! Under `CI=true` all of them are set: CI runs every test, and one whose service is
//! missing fails.

use std::path::Path;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CI");
    let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");

    for (cfg, var) in [
        ("keygate_test_postgres", "KEYGATE_TEST_POSTGRES_URL"),
        ("keygate_test_redis", "KEYGATE_TEST_REDIS_URL"),
        (
            "keygate_test_redis_cluster",
            "KEYGATE_TEST_REDIS_CLUSTER_URLS",
        ),
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        println!("cargo::rerun-if-env-changed={var}");
        let set = std::env::var(var).is_ok_and(|url| !url.trim().is_empty());
        if set || ci {
            println!("cargo::rustc-cfg={cfg}");
        }
    }

    println!("cargo::rustc-check-cfg=cfg(keygate_test_redis_sentinel)");
    let sentinel_vars = [
        "KEYGATE_TEST_REDIS_SENTINEL_URLS",
        "KEYGATE_TEST_REDIS_SENTINEL_MASTER",
    ];
    for var in sentinel_vars {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let sentinel_set = sentinel_vars
        .iter()
        .all(|var| std::env::var(var).is_ok_and(|v| !v.trim().is_empty()));
    if sentinel_set || ci {
        println!("cargo::rustc-cfg=keygate_test_redis_sentinel");
    }

    println!("cargo::rustc-check-cfg=cfg(keygate_test_tls)");
    let tls_vars = [
        "KEYGATE_TEST_POSTGRES_TLS_URL",
        "KEYGATE_TEST_REDIS_TLS_URL",
        "KEYGATE_TEST_TLS_CA",
        "KEYGATE_TEST_TLS_WRONG_CA",
    ];
    for var in tls_vars {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let tls_set = tls_vars
        .iter()
        .all(|var| std::env::var(var).is_ok_and(|v| !v.trim().is_empty()));
    if tls_set || ci {
        println!("cargo::rustc-cfg=keygate_test_tls");
    }

    println!("cargo::rustc-check-cfg=cfg(keygate_test_node)");
    let fixture = Path::new("tests/fixtures/node");
    if fixture.is_dir() {
        // A directory is rescanned for changes: `npm ci` creating `node_modules` reruns this.
        println!("cargo::rerun-if-changed=tests/fixtures/node");
    }
    if ci
        || fixture
            .join("node_modules/jsonwebtoken/package.json")
            .is_file()
    {
        println!("cargo::rustc-cfg=keygate_test_node");
    }
}
