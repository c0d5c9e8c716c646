//! `keygate serve` behind a real nginx (`auth_request`), a real Caddy (`forward_auth`) and
//! a real Traefik (`ForwardAuth`), configured with the README's snippets verbatim
//! (`keygate-cli/proxies/`), in front of a small upstream that records every request
//! reaching it.
//!
//! Runs when `KEYGATE_TEST_PROXIES` is set or `CI=true` (build.rs sets
//! `cfg(keygate_test_proxies)`); otherwise it shows as ignored. It starts the proxies with
//! `.ci/proxies.sh start` (idempotent; fails when a proxy is not installed:
//! `.ci/proxies.sh install`) and uses the snippets' fixed ports: keygate 17180, upstream
//! 17181, nginx 17182, Caddy 17183, Traefik 17184.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Router;
use support::{http, post_json, Process};

const KEYGATE: &str = "127.0.0.1:17180";
const UPSTREAM: &str = "127.0.0.1:17181";
const PROXIES: [(&str, &str); 3] = [
    ("nginx", "127.0.0.1:17182"),
    ("caddy", "127.0.0.1:17183"),
    ("traefik", "127.0.0.1:17184"),
];

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// What reached the upstream: each request's path and headers.
#[derive(Clone, Default)]
struct Upstream(Arc<Mutex<Vec<(String, HeaderMap)>>>);

impl Upstream {
    fn reached(&self, path: &str) -> Option<HeaderMap> {
        let seen = self.0.lock().unwrap();
        seen.iter().find(|(p, _)| p == path).map(|(_, h)| h.clone())
    }
}

/// A unique path under `prefix`, so that each request can be looked for upstream.
fn path(prefix: &str) -> String {
    format!("{prefix}{}", support::unique("req"))
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// Mints a key through keygate's admin API with `admin_key`; returns (key, id).
fn mint(admin_key: &str, body: &str) -> (String, String) {
    let answer = post_json(KEYGATE, "/api/api-keys", &bearer(admin_key), body);
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    (
        answer["apiKey"]["apiKey"].as_str().unwrap().to_owned(),
        answer["apiKey"]["id"].as_str().unwrap().to_owned(),
    )
}

/// The `error` member of a JSON refusal body (keygate's, or nginx's copy of it).
fn error_code(answer: &support::Answer) -> String {
    let body: serde_json::Value =
        serde_json::from_str(&answer.body).unwrap_or_else(|_| panic!("a JSON body: {answer:?}"));
    body["error"].as_str().unwrap().to_owned()
}

fn deactivate(admin_key: &str, id: &str) {
    use std::io::{Read, Write};
    let body = r#"{"isActive":false}"#;
    let mut stream = std::net::TcpStream::connect(KEYGATE).unwrap();
    write!(
        stream,
        "PATCH /api/api-keys/{id} HTTP/1.1\r\nHost: keygate\r\nConnection: close\r\n\
         Authorization: Bearer {admin_key}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
#[cfg_attr(
    not(keygate_test_proxies),
    ignore = "set KEYGATE_TEST_PROXIES=1 (CI=true does) to run against real nginx, Caddy and Traefik"
)]
fn nginx_caddy_and_traefik_let_valid_keys_through_and_stop_the_rest() {
    let started = std::process::Command::new("bash")
        .arg(workspace().join(".ci/proxies.sh"))
        .arg("start")
        .status()
        .unwrap();
    assert!(
        started.success(),
        "`.ci/proxies.sh start` failed: nginx, Caddy and Traefik must be installed (.ci/proxies.sh install)"
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let upstream = Upstream::default();
    {
        let seen = upstream.clone();
        let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let seen = seen.clone();
            async move {
                seen.0
                    .lock()
                    .unwrap()
                    .push((uri.path().to_owned(), headers));
                "upstream"
            }
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(UPSTREAM))
            .expect("port 17181 is free for the upstream");
        runtime.spawn(async move { axum::serve(listener, app).await });
    }

    // keygate with a user directory, so that the first-start key can mint for everyone.
    let db = support::sqlite_temp_path();
    let config = db.with_extension("toml");
    std::fs::write(
        &config,
        r#"
[users.admin]
permissions = ["*"]
[users.reader]
permissions = ["library:read", "podcast:read"]
[users.guest]
permissions = []
"#,
    )
    .unwrap();
    let keygate = Process::start(
        &db,
        &[("KEYGATE_ADDR", KEYGATE)],
        &["--config", config.to_str().unwrap()],
    );
    let admin_key = keygate
        .stdout
        .recv_timeout(std::time::Duration::from_secs(30))
        .unwrap()
        .strip_prefix("admin API key: ")
        .unwrap()
        .to_owned();
    let (reader, reader_id) = mint(&admin_key, r#"{"name":"reader","userId":"reader"}"#);
    let (podcasts, _) = mint(
        &admin_key,
        r#"{"name":"podcasts only","userId":"reader","scopes":["podcast:read"]}"#,
    );
    let (guest, _) = mint(&admin_key, r#"{"name":"guest","userId":"guest"}"#);
    // Network and origin restrictions, checked against the client the proxy forwards
    // (this test's client is 127.0.0.1; keygate trusts loopback proxies by default).
    let (local, _) = mint(
        &admin_key,
        r#"{"name":"local","userId":"reader","allowedCidrs":["127.0.0.1/32"]}"#,
    );
    let (office, _) = mint(
        &admin_key,
        r#"{"name":"office","userId":"reader","allowedCidrs":["10.9.9.0/24"]}"#,
    );
    let (web, _) = mint(
        &admin_key,
        r#"{"name":"web","userId":"reader","allowedOrigins":["https://app.example.com"]}"#,
    );
    let mut typo = reader.clone();
    let last = typo.pop().unwrap();
    typo.push(if last == 'a' { 'b' } else { 'a' });

    for (proxy, addr) in PROXIES {
        let get = |path: &str, headers: &[(&str, &str)]| http(addr, "GET", path, headers);

        // A valid key: the upstream is reached, with the identity; a client's own
        // X-Keygate-* headers do not survive.
        let target = path("/things/");
        let answer = get(
            &target,
            &[
                ("Authorization", &bearer(&reader)),
                ("X-Keygate-Owner", "admin"),
                ("X-Keygate-Scopes", "*"),
            ],
        );
        assert_eq!(answer.status, 200, "{proxy}: {answer:?}");
        assert_eq!(answer.body, "upstream", "{proxy}");
        let seen = upstream
            .reached(&target)
            .unwrap_or_else(|| panic!("{proxy}: the upstream was not reached"));
        let values = |name: &str| -> Vec<String> {
            seen.get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(values("x-keygate-key-id"), [reader_id.as_str()], "{proxy}");
        assert_eq!(values("x-keygate-owner"), ["reader"], "{proxy}");
        assert_eq!(values("x-keygate-scopes"), ["*"], "{proxy}");

        // A location that needs library:read: the reader passes.
        let target = path("/library/");
        let answer = get(&target, &[("Authorization", &bearer(&reader))]);
        assert_eq!(answer.status, 200, "{proxy}: {answer:?}");
        assert!(upstream.reached(&target).is_some(), "{proxy}");
        // A key scoped to podcasts passes `/` with its scopes...
        let target = path("/things/");
        assert_eq!(
            get(&target, &[("Authorization", &bearer(&podcasts))]).status,
            200,
            "{proxy}"
        );
        let seen = upstream.reached(&target).unwrap();
        assert_eq!(seen["x-keygate-scopes"], "podcast:read", "{proxy}");

        // A key allowed from the client's network passes; the upstream sees the identity.
        let target = path("/things/");
        let answer = get(&target, &[("Authorization", &bearer(&local))]);
        assert_eq!(answer.status, 200, "{proxy}, allowed network: {answer:?}");
        assert!(upstream.reached(&target).is_some(), "{proxy}");
        // One allowed elsewhere is refused, even when the client claims an address there.
        for spoof in [None, Some("10.9.9.9")] {
            let target = path("/things/");
            let mut headers = vec![("Authorization", bearer(&office))];
            if let Some(claimed) = spoof {
                headers.push(("X-Forwarded-For", claimed.to_owned()));
                headers.push(("Forwarded", format!("for={claimed}")));
            }
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let answer = get(&target, &headers);
            assert_eq!(answer.status, 403, "{proxy}, {spoof:?}: {answer:?}");
            assert_eq!(
                error_code(&answer),
                "network_not_allowed",
                "{proxy}: {answer:?}"
            );
            assert_eq!(answer.header("www-authenticate"), None, "{proxy}");
            assert!(
                upstream.reached(&target).is_none(),
                "{proxy}, {spoof:?}: the upstream was reached"
            );
        }
        // An origin-restricted key: the client's Origin reaches keygate.
        let target = path("/things/");
        let answer = get(
            &target,
            &[
                ("Authorization", &bearer(&web)),
                ("Origin", "https://app.example.com"),
            ],
        );
        assert_eq!(answer.status, 200, "{proxy}, allowed origin: {answer:?}");
        assert!(upstream.reached(&target).is_some(), "{proxy}");
        let target = path("/things/");
        let answer = get(
            &target,
            &[
                ("Authorization", &bearer(&web)),
                ("Origin", "https://evil.example.net"),
            ],
        );
        assert_eq!(answer.status, 403, "{proxy}, other origin: {answer:?}");
        assert_eq!(error_code(&answer), "origin_not_allowed", "{proxy}");
        assert!(upstream.reached(&target).is_none(), "{proxy}");

        // Usage limits: a key allowed one request a minute, and one with one credit. The
        // first request passes; the second is keygate's 429, with its own error code and
        // headers, and never reaches the upstream.
        let (limited, _) = mint(
            &admin_key,
            r#"{"name":"limited","userId":"reader","ratelimits":[{"name":"requests","limit":1,"duration":60000,"autoApply":true}]}"#,
        );
        let (metered, _) = mint(
            &admin_key,
            r#"{"name":"metered","userId":"reader","credits":{"remaining":1}}"#,
        );
        for (key, error, retry_after, ratelimit, policy) in [
            (
                &limited,
                "rate_limited",
                Some("60"),
                r#""requests";r=0;t=60"#,
                r#""requests";q=1;w=60"#,
            ),
            (
                &metered,
                "credits_exhausted",
                None,
                r#""credits";r=0"#,
                r#""credits";q=0"#,
            ),
        ] {
            let target = path("/things/");
            let answer = get(&target, &[("Authorization", &bearer(key))]);
            assert_eq!(answer.status, 200, "{proxy}, {error}, first: {answer:?}");
            assert!(upstream.reached(&target).is_some(), "{proxy}, {error}");
            let target = path("/things/");
            let answer = get(&target, &[("Authorization", &bearer(key))]);
            assert_eq!(answer.status, 429, "{proxy}, {error}: {answer:?}");
            assert_eq!(error_code(&answer), error, "{proxy}: {answer:?}");
            assert_eq!(
                answer.header("retry-after"),
                retry_after,
                "{proxy}, {error}"
            );
            assert_eq!(
                answer.header("ratelimit"),
                Some(ratelimit),
                "{proxy}, {error}"
            );
            assert_eq!(
                answer.header("ratelimit-policy"),
                Some(policy),
                "{proxy}, {error}"
            );
            assert_eq!(answer.header("www-authenticate"), None, "{proxy}, {error}");
            assert!(
                upstream.reached(&target).is_none(),
                "{proxy}, {error}: the upstream was reached"
            );
        }

        // Refusals: the right status and challenge, and the upstream never reached.
        let revoked = mint(&admin_key, r#"{"name":"to revoke","userId":"reader"}"#);
        assert_eq!(
            get(&path("/things/"), &[("Authorization", &bearer(&revoked.0))]).status,
            200,
            "{proxy}: the key works before it is revoked"
        );
        deactivate(&admin_key, &revoked.1);
        let invalid = r#"Bearer realm="keygate", error="invalid_token""#;
        let scope = r#"Bearer realm="keygate", error="insufficient_scope", scope="library:read""#;
        let anonymous = r#"Bearer realm="keygate""#;
        // (what, location, Authorization, status, challenge, error code)
        type Case<'a> = (&'a str, &'a str, Option<String>, u16, &'a str, &'a str);
        let cases: Vec<Case> = vec![
            (
                "missing key",
                "/things/",
                None,
                401,
                anonymous,
                "unauthorized",
            ),
            (
                "another scheme",
                "/things/",
                Some("Basic dXNlcjpwYXNz".into()),
                401,
                anonymous,
                "unauthorized",
            ),
            (
                "checksum typo",
                "/things/",
                Some(bearer(&typo)),
                401,
                invalid,
                "invalid_token",
            ),
            (
                "garbage",
                "/things/",
                Some(bearer("nonsense")),
                401,
                invalid,
                "invalid_token",
            ),
            (
                "revoked key",
                "/things/",
                Some(bearer(&revoked.0)),
                401,
                invalid,
                "invalid_token",
            ),
            (
                "revoked key, scoped location",
                "/library/",
                Some(bearer(&revoked.0)),
                401,
                invalid,
                "invalid_token",
            ),
            (
                "missing key, scoped location",
                "/library/",
                None,
                401,
                anonymous,
                "unauthorized",
            ),
            (
                "key scoped elsewhere",
                "/library/",
                Some(bearer(&podcasts)),
                403,
                scope,
                "insufficient_scope",
            ),
            (
                "owner lacks the permission",
                "/library/",
                Some(bearer(&guest)),
                403,
                scope,
                "insufficient_scope",
            ),
            (
                "malformed header",
                "/things/",
                Some("Bearer a b".into()),
                400,
                r#"Bearer realm="keygate", error="invalid_request""#,
                "invalid_request",
            ),
        ];
        for (what, prefix, authorization, status, challenge, error) in cases {
            let target = path(prefix);
            let headers: Vec<(&str, &str)> = authorization
                .as_deref()
                .map(|a| vec![("Authorization", a)])
                .unwrap_or_default();
            let answer = get(&target, &headers);
            assert_eq!(answer.status, status, "{proxy}, {what}: {answer:?}");
            assert_eq!(
                answer.header("www-authenticate"),
                Some(challenge),
                "{proxy}, {what}"
            );
            // One challenge, not nginx's copy beside keygate's.
            let challenges = answer
                .headers
                .iter()
                .filter(|(name, _)| name == "www-authenticate")
                .count();
            assert_eq!(challenges, 1, "{proxy}, {what}: {answer:?}");
            assert_eq!(error_code(&answer), error, "{proxy}, {what}: {answer:?}");
            assert!(
                upstream.reached(&target).is_none(),
                "{proxy}, {what}: the upstream was reached"
            );
        }
    }

    // keygate gone: nginx answers 503 with Retry-After, Caddy 502, Traefik 500; nobody
    // gets through.
    let stopped = keygate.terminate();
    assert!(stopped.success());
    for (proxy, addr) in PROXIES {
        let target = path("/things/");
        let answer = http(addr, "GET", &target, &[("Authorization", &bearer(&reader))]);
        let expected = match proxy {
            "nginx" => 503,
            "caddy" => 502,
            _ => 500,
        };
        assert_eq!(answer.status, expected, "{proxy}: {answer:?}");
        if proxy == "nginx" {
            assert_eq!(answer.header("retry-after"), Some("5"));
            assert_eq!(error_code(&answer), "temporarily_unavailable");
        }
        assert!(upstream.reached(&target).is_none(), "{proxy}");
    }

    // What the proxies do with keygate's 429, 503 and 500 (the library's rate-limit, store
    // and corrupt-record answers): a stand-in on keygate's port answers each in turn.
    let status = Arc::new(AtomicU16::new(429));
    {
        let status = Arc::clone(&status);
        let app = Router::new().fallback(move || {
            let code = status.load(Ordering::SeqCst);
            async move {
                let error = format!("stand_in_{code}");
                let mut response = (
                    StatusCode::from_u16(code).unwrap(),
                    [("content-type", "application/json")],
                    format!(r#"{{"error":"{error}","error_description":"A stand-in"}}"#),
                )
                    .into_response();
                let headers = response.headers_mut();
                headers.insert("x-keygate-error", error.parse().unwrap());
                headers.insert("x-keygate-error-description", "A stand-in".parse().unwrap());
                if code != 500 {
                    headers.insert("retry-after", "7".parse().unwrap());
                }
                if code == 429 {
                    headers.insert(
                        "ratelimit",
                        "limit=10, remaining=0, reset=7".parse().unwrap(),
                    );
                    headers.insert("ratelimit-policy", "10;w=60".parse().unwrap());
                }
                response
            }
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(KEYGATE))
            .unwrap();
        runtime.spawn(async move { axum::serve(listener, app).await });
    }
    for code in [429, 503, 500] {
        status.store(code, Ordering::SeqCst);
        for (proxy, addr) in PROXIES {
            let target = path("/things/");
            let answer = http(addr, "GET", &target, &[("Authorization", &bearer(&reader))]);
            assert_eq!(answer.status, code, "{proxy}: {answer:?}");
            assert_eq!(
                answer.body,
                format!(r#"{{"error":"stand_in_{code}","error_description":"A stand-in"}}"#),
                "{proxy}"
            );
            let retry = if code == 500 { None } else { Some("7") };
            assert_eq!(answer.header("retry-after"), retry, "{proxy}, {code}");
            if code == 429 {
                assert_eq!(
                    answer.header("ratelimit"),
                    Some("limit=10, remaining=0, reset=7"),
                    "{proxy}"
                );
                assert_eq!(answer.header("ratelimit-policy"), Some("10;w=60"));
            }
            assert!(upstream.reached(&target).is_none(), "{proxy}, {code}");
        }
    }

    runtime.shutdown_background();
    let _ = std::fs::remove_file(&config);
    support::remove_sqlite(&db);
}

/// The README shows the snippets the test runs, byte for byte.
#[test]
fn the_readme_shows_the_tested_snippets() {
    let readme = std::fs::read_to_string(workspace().join("keygate-cli/README.md")).unwrap();
    for file in ["nginx.conf", "Caddyfile", "traefik.yml"] {
        let snippet =
            std::fs::read_to_string(workspace().join("keygate-cli/proxies").join(file)).unwrap();
        assert!(
            readme.contains(&snippet),
            "keygate-cli/README.md must contain keygate-cli/proxies/{file} verbatim"
        );
    }
}
