//! Tells the integration tests whether they may drive real reverse proxies, so that a test
//! whose proxies are not wanted shows as *ignored* in `cargo test`'s summary instead of
//! passing without having run. Nothing here affects the binary.
//!
//! - `keygate_test_proxies`: `KEYGATE_TEST_PROXIES` is set (not `0`), or `CI=true`. The
//!   test then starts nginx and Caddy with `.ci/proxies.sh start` and fails if they are
//!   missing.

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
}
