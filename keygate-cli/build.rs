//! Tells the integration tests which outside services they may use, so that a test whose
//! service is absent shows as *ignored* in `cargo test`'s summary instead of passing
//! without having run. Nothing here affects the binary. (The same rules as the library's
//! build.rs.)
//!
//! - `keygate_test_proxies`: `KEYGATE_TEST_PROXIES` is set (not `0`), or `CI=true`. The
//!   test then starts nginx and Caddy with `.ci/proxies.sh start` and fails if they are
//!   missing.
//! - `keygate_test_postgres`, `keygate_test_redis`: `KEYGATE_TEST_POSTGRES_URL`,
//!   `KEYGATE_TEST_REDIS_URL` is set, or `CI=true`.
//! - `keygate_test_tls`: the four settings of `.ci/tls.sh` are set, or `CI=true`.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CI");
    println!("cargo::rerun-if-env-changed=KEYGATE_TEST_PROXIES");
    println!("cargo::rustc-check-cfg=cfg(keygate_test_proxies)");
    let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let wanted = std::env::var("KEYGATE_TEST_PROXIES")
        .is_ok_and(|v| !v.trim().is_empty() && v.trim() != "0");
    if ci || wanted {
        println!("cargo::rustc-cfg=keygate_test_proxies");
    }

    for (cfg, vars) in [
        ("keygate_test_postgres", &["KEYGATE_TEST_POSTGRES_URL"][..]),
        ("keygate_test_redis", &["KEYGATE_TEST_REDIS_URL"][..]),
        (
            "keygate_test_tls",
            &[
                "KEYGATE_TEST_POSTGRES_TLS_URL",
                "KEYGATE_TEST_REDIS_TLS_URL",
                "KEYGATE_TEST_TLS_CA",
                "KEYGATE_TEST_TLS_WRONG_CA",
            ][..],
        ),
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        for var in vars {
            println!("cargo::rerun-if-env-changed={var}");
        }
        let set = vars
            .iter()
            .all(|var| std::env::var(var).is_ok_and(|v| !v.trim().is_empty()));
        if set || ci {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
