//! The operator CLI, run as a user would: the real binary, a real store, exit codes and
//! what each stream carries.

// Test code: a panic is how a test reports a failure, and fixtures index and count
// over small known values.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use keygate::{JwtSecret, KeyId, Keygate, ListQuery, Pepper};

const PEPPER: &str = "cli test pepper: thirty-two bytes or more";
const JWT_SECRET: &str = "cli test JWT secret, also 32+ bytes long";

struct Cli {
    db: String,
    prefix: String,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        self.run_env(
            args,
            &[
                ("KEYGATE_PEPPER", PEPPER),
                ("KEYGATE_JWT_SECRET", JWT_SECRET),
            ],
        )
    }

    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.run_full(args, env, None)
    }

    /// Runs with `args` and `env` (secrets included unless `env` is given explicitly by
    /// [`run_env`](Self::run_env)), writing `stdin` to the process.
    fn run_full(&self, args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_keygate"));
        command
            .args(args)
            .env_remove("KEYGATE_PEPPER")
            .env_remove("KEYGATE_PEPPER_FILE")
            .env_remove("KEYGATE_PEPPER_VERSION")
            .env_remove("KEYGATE_JWT_SECRET")
            .env_remove("KEYGATE_JWT_SECRET_FILE")
            .env_remove("KEYGATE_KEY")
            .env("KEYGATE_DB", &self.db)
            .env("KEYGATE_PREFIX", &self.prefix);
        for (name, value) in env {
            command.env(name, value);
        }
        command.stdin(Stdio::piped());
        command.stdout(Stdio::piped());
        command.stderr(Stdio::piped());
        let mut child = command.spawn().expect("the keygate binary runs");
        let mut pipe = child.stdin.take().expect("stdin is piped");
        if let Some(input) = stdin {
            // The binary may exit before reading (bad arguments): ignore a broken pipe.
            let _ = pipe.write_all(input);
        }
        drop(pipe);
        child.wait_with_output().expect("the keygate binary runs")
    }

    /// `keygate verify` with `key` on stdin (and a newline, as `echo` writes it).
    fn verify(&self, key: &str) -> Output {
        self.run_full(
            &["verify"],
            &[
                ("KEYGATE_PEPPER", PEPPER),
                ("KEYGATE_JWT_SECRET", JWT_SECRET),
            ],
            Some(format!("{key}\n").as_bytes()),
        )
    }

    /// [`verify`](Self::verify), expecting success; returns stdout.
    fn verify_ok(&self, key: &str) -> String {
        let out = self.verify(key);
        assert!(out.status.success(), "verify: {}", stderr(&out));
        String::from_utf8(out.stdout).expect("stdout is UTF-8")
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("stdout is UTF-8")
    }

    async fn gate(&self) -> Keygate {
        let store = keygate::open_store(&self.db).await.expect("store opens");
        Keygate::builder(store, Pepper::new(1, PEPPER).unwrap())
            .prefix(&self.prefix)
            .jwt_secret(JwtSecret::new(JWT_SECRET).unwrap())
            .build()
            .unwrap()
    }

    async fn count(&self, owner: &str) -> usize {
        let page = self
            .gate()
            .await
            .list(ListQuery::new().owner(owner))
            .await
            .unwrap();
        page.records.len()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Everything an operator does, against one store.
async fn full_workflow(cli: &Cli) {
    let owner = support::unique("cli-user");

    // mint: exactly one line on stdout, the key; nothing else.
    let stdout = cli.ok(&[
        "mint",
        "--user",
        &owner,
        "--name",
        "Backup Script",
        "--expires-in",
        "30d",
        "--scope",
        "library:read",
    ]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "mint printed {stdout:?}");
    let key = lines[0].to_owned();
    assert!(key.starts_with(&format!("{}_", cli.prefix)), "{key}");
    assert!(keygate::checksum_ok(&key));

    // verify: exit 0, the principal as JSON.
    let principal: serde_json::Value = serde_json::from_str(&cli.verify_ok(&key)).unwrap();
    assert_eq!(principal["userId"], owner.as_str());
    assert_eq!(principal["keyName"], "Backup Script");
    assert_eq!(principal["scopes"], serde_json::json!(["library:read"]));
    let id: KeyId = principal["keyId"].as_str().unwrap().parse().unwrap();

    // The store holds a hash, never the key.
    let record = cli
        .gate()
        .await
        .get(id)
        .await
        .unwrap()
        .expect("minted record");
    assert!(!serde_json::to_string(&record)
        .unwrap()
        .contains(&key[cli.prefix.len() + 1..]));
    assert!(
        record.last_used_at.is_some(),
        "verify recorded last use before exiting"
    );

    // list / show.
    let listed = cli.ok(&["list", "--user", &owner, "--json"]);
    assert_eq!(listed.lines().count(), 1);
    let row: serde_json::Value = serde_json::from_str(listed.trim()).unwrap();
    assert_eq!(row["id"], id.to_string());
    assert!(!listed.contains(&key), "list must not show the key");
    let shown: serde_json::Value =
        serde_json::from_str(&cli.ok(&["show", &id.to_string()])).unwrap();
    assert_eq!(shown["isActive"], true);
    let table = cli.ok(&["list", "--user", &owner]);
    assert!(
        table.contains(&id.to_string()) && table.contains("active"),
        "{table}"
    );

    // revoke: verify exits 1 with the reason on stderr, nothing on stdout.
    cli.ok(&["revoke", &id.to_string()]);
    let out = cli.verify(&key);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(stderr(&out).trim(), "keygate: error: key refused: inactive");

    // activate brings it back.
    cli.ok(&["activate", &id.to_string()]);
    cli.verify_ok(&key);

    // rotate with grace: both work, the new one is printed alone.
    let new_key = cli.ok(&["rotate", &id.to_string(), "--grace", "1h"]);
    let new_key = new_key.trim();
    assert_ne!(new_key, key);
    cli.verify_ok(new_key);
    cli.verify_ok(&key);
    let old = cli.gate().await.get(id).await.unwrap().unwrap();
    let left = old.expires_at.unwrap() - chrono::Utc::now();
    assert!(
        left <= chrono::TimeDelta::hours(1) && left > chrono::TimeDelta::minutes(59),
        "{left}"
    );
    assert_eq!(cli.count(&owner).await, 2);

    // rotate with no grace: the old key stops now.
    let newest = cli.ok(&["rotate", &principal_id(cli, new_key), "--grace", "0s"]);
    assert_eq!(cli.verify(new_key).status.code(), Some(1));
    cli.verify_ok(newest.trim());

    // JWT format.
    let jwt = cli.ok(&[
        "mint", "--user", &owner, "--name", "jwt key", "--format", "jwt",
    ]);
    assert_eq!(jwt.trim().split('.').count(), 3);
    cli.verify_ok(jwt.trim());

    // delete, then delete again: not found, exit 2.
    cli.ok(&["delete", &id.to_string()]);
    assert_eq!(cli.verify(&key).status.code(), Some(1));
    let out = cli.run(&["delete", &id.to_string()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));

    // Bad input: exit 2, nothing on stdout, nothing written. The CLI's own checks say it
    // in one line; the argument parser's say it in clap's words, in full.
    let before = cli.count(&owner).await;
    for (args, said) in [
        (
            vec![
                "mint",
                "--user",
                &owner,
                "--name",
                "x",
                "--expires-in",
                "3y",
            ],
            "unknown unit",
        ),
        (
            vec!["mint", "--user", &owner, "--name", "x", "--format", "pgp"],
            "[possible values: opaque, jwt]",
        ),
        (vec!["frobnicate"], "frobnicate"),
    ] {
        let out = cli.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(stderr(&out).contains(said), "{args:?}: {}", stderr(&out));
    }
    for args in [
        vec!["mint", "--user", &owner, "--name", ""],
        vec!["revoke", "not-a-uuid"],
    ] {
        let out = cli.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert_eq!(
            stderr(&out).trim().lines().count(),
            1,
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // Secrets come from the environment only.
    let out = cli.run_env(&["mint", "--user", &owner, "--name", "x"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("KEYGATE_PEPPER"), "{}", stderr(&out));
    let out = cli.run(&["mint", "--user", &owner, "--name", "x", "--pepper", PEPPER]);
    assert_eq!(out.status.code(), Some(2), "there is no --pepper flag");
    let out = cli.run_env(
        &["mint", "--user", &owner, "--name", "x"],
        &[("KEYGATE_PEPPER", "short")],
    );
    assert_eq!(out.status.code(), Some(2));
    // A JWT key without a JWT secret names the variable to set (it used to repeat the
    // library's "build the gate with a JWT secret").
    let out = cli.run_env(
        &["mint", "--user", &owner, "--name", "x", "--format", "jwt"],
        &[("KEYGATE_PEPPER", PEPPER)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("set KEYGATE_JWT_SECRET or KEYGATE_JWT_SECRET_FILE"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        cli.count(&owner).await,
        before,
        "bad input changed the store"
    );

    // A pepper file works (trailing newline ignored) and verifies keys minted with the env var.
    let pepper_file = std::env::temp_dir().join(support::unique("pepper"));
    std::fs::write(&pepper_file, format!("{PEPPER}\n")).unwrap();
    // The key comes from KEYGATE_KEY here, with nothing on stdin.
    let out = cli.run_env(
        &["verify"],
        &[
            ("KEYGATE_PEPPER_FILE", pepper_file.to_str().unwrap()),
            ("KEYGATE_KEY", newest.trim()),
        ],
    );
    let _ = std::fs::remove_file(&pepper_file);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A CLI over a fresh SQLite file, removed on drop.
struct Scratch(Cli, std::path::PathBuf);

impl Scratch {
    fn new() -> Self {
        let path = support::sqlite_temp_path();
        let cli = Cli {
            db: format!("sqlite://{}", path.display()),
            prefix: "clitest".into(),
        };
        Self(cli, path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        support::remove_sqlite(&self.1);
    }
}

/// `verify` takes the key from stdin or KEYGATE_KEY only: a key given as an argument is
/// refused by the argument parser (exit 2), not verified, and not echoed.
#[tokio::test]
async fn verify_never_takes_the_key_from_argv() {
    let scratch = Scratch::new();
    let cli = &scratch.0;
    let owner = support::unique("cli-argv");
    let key = cli.ok(&["mint", "--user", &owner, "--name", "argv"]);
    let key = key.trim();
    let gate = cli.gate().await;
    let id = gate
        .list(ListQuery::new().owner(&owner))
        .await
        .unwrap()
        .records[0]
        .id;

    for args in [
        vec!["verify", key],
        vec!["verify", "--", key],
        vec!["verify", "--key", key],
    ] {
        let out = cli.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(
            !stderr(&out).contains(key),
            "the key was echoed: {}",
            stderr(&out)
        );
    }
    let record = gate.get(id).await.unwrap().unwrap();
    assert_eq!(record.last_used_at, None, "nothing was verified");

    // stdin: the first line, surrounding whitespace ignored.
    let principal: serde_json::Value = serde_json::from_str(&cli.verify_ok(key)).unwrap();
    assert_eq!(principal["keyId"], id.to_string());
    let out = cli.run_full(
        &["verify"],
        &[("KEYGATE_PEPPER", PEPPER)],
        Some(format!("  {key}  \r\nsecond line ignored\n").as_bytes()),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // Nothing on stdin: bad input, exit 2.
    let out = cli.run_full(&["verify"], &[("KEYGATE_PEPPER", PEPPER)], Some(b""));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // A refused key from stdin: exit 1. So are an endless line and bytes that are not UTF-8,
    // read no further than 16 KiB.
    let out = cli.verify(&format!("{}_{}", cli.prefix, "x".repeat(71)));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    for input in [vec![b'a'; 1 << 20], b"\xff\xfe key\n".to_vec()] {
        let out = cli.run_full(&["verify"], &[("KEYGATE_PEPPER", PEPPER)], Some(&input));
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert_eq!(
            stderr(&out).trim(),
            "keygate: error: key refused: malformed"
        );
    }
}

/// A key with another prefix (the example servers' `abs_` keys checked with the CLI's
/// default) says which prefix was expected and where it is set; it used to say only
/// `wrong_prefix`.
#[tokio::test]
async fn a_wrong_prefix_names_the_expected_one() {
    let scratch = Scratch::new();
    let key = scratch.0.ok(&["mint", "--user", "u", "--name", "prefix"]);
    let other = Cli {
        db: scratch.0.db.clone(),
        prefix: "other".into(),
    };
    let out = other.verify(key.trim());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr(&out).trim(),
        "keygate: error: key refused: wrong_prefix (expected other_…; the prefix comes from \
         KEYGATE_PREFIX or --prefix)"
    );
    scratch.0.verify_ok(key.trim());
}

/// `rotate --grace 100000000d` used to panic (exit 101) after writing the new key.
#[tokio::test]
async fn rotate_with_a_huge_grace_exits_2_and_writes_nothing() {
    let scratch = Scratch::new();
    let cli = &scratch.0;
    let owner = support::unique("cli-grace");
    cli.ok(&["mint", "--user", &owner, "--name", "grace"]);
    let gate = cli.gate().await;
    let before = gate
        .list(ListQuery::new().owner(&owner))
        .await
        .unwrap()
        .records;
    assert_eq!(before.len(), 1);
    let id = before[0].id.to_string();
    for grace in ["100000000d", "520000w", "9223372036854s"] {
        let out = cli.run(&["rotate", &id, "--grace", grace]);
        assert_eq!(out.status.code(), Some(2), "{grace}: {}", stderr(&out));
        assert!(out.stdout.is_empty());
        assert!(stderr(&out).contains("grace"), "{}", stderr(&out));
        assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    }
    let after = gate
        .list(ListQuery::new().owner(&owner))
        .await
        .unwrap()
        .records;
    assert_eq!(after, before, "nothing written");
}

/// A pepper that is not the one the store's keys were made with: `mint`, `rotate` and
/// `verify` exit 2 (configuration) with one line that says so and where the pepper comes
/// from, write nothing, and never print the pepper; commands that do not hash still work.
#[tokio::test]
async fn a_wrong_pepper_is_exit_2_says_so_and_writes_nothing() {
    const WRONG: &str = "another pepper, thirty-two bytes or more";
    let scratch = Scratch::new();
    let cli = &scratch.0;
    let owner = support::unique("cli-pepper");
    let key = cli.ok(&["mint", "--user", &owner, "--name", "right"]);
    let key = key.trim();
    let gate = cli.gate().await;
    let before = gate
        .list(ListQuery::new().owner(&owner))
        .await
        .unwrap()
        .records;
    let id = before[0].id.to_string();
    let wrong = [
        ("KEYGATE_PEPPER", WRONG),
        ("KEYGATE_JWT_SECRET", JWT_SECRET),
    ];
    for (args, stdin) in [
        (vec!["mint", "--user", &owner, "--name", "wrong"], None),
        (
            vec!["mint", "--user", &owner, "--name", "j", "--format", "jwt"],
            None,
        ),
        (vec!["rotate", &id], None),
        (vec!["verify"], Some(format!("{key}\n"))),
    ] {
        let out = cli.run_full(&args, &wrong, stdin.as_deref().map(str::as_bytes));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("keygate: error: wrong pepper: pepper version 1 does not match"),
            "{args:?}: {err}"
        );
        assert!(err.contains("KEYGATE_PEPPER_FILE"), "{args:?}: {err}");
        assert!(!err.contains(WRONG) && !err.contains(PEPPER), "{err}");
    }
    let after = gate
        .list(ListQuery::new().owner(&owner))
        .await
        .unwrap()
        .records;
    assert_eq!(after, before, "nothing written");
    // Commands that never hash do not need the pepper, right or wrong.
    let out = cli.run_env(&["list", "--user", &owner], &wrong);
    assert!(out.status.success(), "{}", stderr(&out));
    // The right pepper still verifies.
    assert!(cli.verify_ok(key).contains(&owner));
}

/// Names (which `import` takes as Audiobookshelf had them) may hold escape sequences:
/// the CLI writes them escaped, in the table and in JSON.
#[tokio::test]
async fn stored_text_cannot_drive_the_terminal() {
    let scratch = Scratch::new();
    let cli = &scratch.0;
    let owner = support::unique("cli-esc");
    let hostile = "ok\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}31m\u{202e}gpj.exe\u{7f}\tx";
    let id = KeyId::random();
    let now = chrono::Utc::now();
    cli.gate()
        .await
        .import(keygate::KeyRecord::new(
            id,
            keygate::KeyFormat::Jwt,
            hostile,
            owner.clone(),
            now,
        ))
        .await
        .unwrap();
    let raw = |bytes: &[u8]| {
        bytes.contains(&0x1b)
            || bytes.contains(&0x07)
            || bytes.contains(&0x7f)
            || bytes.windows(2).any(|w| w == [0xc2, 0x9b])
            || bytes.windows(3).any(|w| w == "\u{202e}".as_bytes())
    };

    let out = cli.run(&["list", "--user", &owner]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!raw(&out.stdout), "raw control bytes: {:?}", out.stdout);
    let table = String::from_utf8(out.stdout).unwrap();
    let line = table.trim_end_matches('\n');
    assert_eq!(line.lines().count(), 1, "{table:?}");
    assert_eq!(
        line.split('\t').count(),
        7,
        "a tab in the name split a column: {line:?}"
    );
    assert!(
        line.ends_with(
            "\tok\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\u{9b}31m\\u{202e}gpj.exe\\u{7f}\\u{9}x"
        ),
        "{line:?}"
    );

    for args in [
        vec!["list", "--user", &owner, "--json"],
        vec!["show", &id.to_string()],
    ] {
        let out = cli.run(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(!raw(&out.stdout), "{args:?}: {:?}", out.stdout);
        let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            view["name"], hostile,
            "{args:?}: the JSON still says the same"
        );
    }
}

fn principal_id(cli: &Cli, key: &str) -> String {
    let principal: serde_json::Value = serde_json::from_str(&cli.verify_ok(key)).unwrap();
    principal["keyId"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn sqlite_workflow() {
    let path = support::sqlite_temp_path();
    let cli = Cli {
        db: format!("sqlite://{}", path.display()),
        prefix: "clitest".into(),
    };
    let out = cli.run(&["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    full_workflow(&cli).await;
    support::remove_sqlite(&path);
}

#[tokio::test]
#[cfg_attr(not(keygate_test_postgres), ignore = "set KEYGATE_TEST_POSTGRES_URL")]
async fn postgres_workflow() {
    let Some(url) = support::postgres_url() else {
        return;
    };
    full_workflow(&Cli {
        db: url,
        prefix: "clitest".into(),
    })
    .await;
}

#[tokio::test]
#[cfg_attr(not(keygate_test_redis), ignore = "set KEYGATE_TEST_REDIS_URL")]
async fn redis_workflow() {
    let Some(url) = support::redis_url() else {
        return;
    };
    full_workflow(&Cli {
        db: url,
        prefix: "clitest".into(),
    })
    .await;
}

/// The TLS servers of `.ci/tls.sh`, and their CA files: `(postgres, redis, ca, wrong_ca)`.
#[cfg(feature = "tls")]
fn tls_servers() -> Option<(String, String, String, String)> {
    Some((
        support::tls_setting("KEYGATE_TEST_POSTGRES_TLS_URL")?,
        support::tls_setting("KEYGATE_TEST_REDIS_TLS_URL")?,
        support::tls_setting("KEYGATE_TEST_TLS_CA")?,
        support::tls_setting("KEYGATE_TEST_TLS_WRONG_CA")?,
    ))
}

/// Store URLs that ask for TLS, with the server's CA: the whole workflow works over
/// `verify-full` and `rediss://` (both servers refuse cleartext).
#[cfg(feature = "tls")]
#[tokio::test]
#[cfg_attr(
    not(keygate_test_tls),
    ignore = "start the TLS servers: eval \"$(.ci/tls.sh start)\""
)]
async fn tls_workflow() {
    let Some((postgres, redis, ca, _)) = tls_servers() else {
        return;
    };
    for db in [
        format!("{postgres}?sslmode=verify-full&sslrootcert={ca}"),
        format!("{redis}?sslrootcert={ca}"),
    ] {
        full_workflow(&Cli {
            db,
            prefix: "clitls".into(),
        })
        .await;
    }
}

/// A certificate from another CA is the store's failure (3), saying why once; a URL that
/// turns the check off is the operator's configuration (2). Nothing is connected in
/// cleartext.
#[cfg(feature = "tls")]
#[test]
#[cfg_attr(
    not(keygate_test_tls),
    ignore = "start the TLS servers: eval \"$(.ci/tls.sh start)\""
)]
fn tls_refusals_say_why() {
    let Some((postgres, redis, _, wrong_ca)) = tls_servers() else {
        return;
    };
    for db in [
        format!("{postgres}?sslmode=verify-full&sslrootcert={wrong_ca}"),
        format!("{redis}?sslrootcert={wrong_ca}"),
    ] {
        let cli = Cli {
            db: db.clone(),
            prefix: "clitls".into(),
        };
        let out = cli.run(&["list"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{db}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{db}: {err}");
        assert!(
            err.contains("UnknownIssuer") || err.contains("unknown issuer"),
            "{db}: {err}"
        );
    }
    let cli = Cli {
        db: format!("{redis}#insecure"),
        prefix: "clitls".into(),
    };
    let out = cli.run(&["list"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("#insecure"), "{err}");
}

/// A store nobody listens on: exit 3, one line, the driver's cause said exactly once
/// (it used to be said twice for Redis, and lost behind "timed out" for PostgreSQL).
#[test]
fn unreachable_store_is_one_line_exit_3_and_says_why_once() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    for db in [
        format!("postgres://postgres:secret@127.0.0.1:{port}/test"),
        format!("redis://:secret@127.0.0.1:{port}/"),
    ] {
        let cli = Cli {
            db: db.clone(),
            prefix: "clitest".into(),
        };
        let out = cli.run(&["list"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{db}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{db}: {err}");
        assert!(!err.contains("secret"), "the password leaked: {err}");
        assert_eq!(
            err.matches("Connection refused").count(),
            1,
            "{db}: the cause, once: {err}"
        );
    }
}

/// A store URL that does not parse, or names no store, is the operator's configuration
/// (exit 2), not a store failure (3): it used to be 3.
#[test]
fn malformed_store_urls_are_configuration_errors() {
    for (db, said) in [
        ("postgres://user:pw@[::1/db", "invalid PostgreSQL URL"),
        ("nosuch://x", "unsupported store URL scheme"),
        ("redis://[::1/", "did not parse"),
        // No file named: it used to be exit 3, "No such file or directory".
        ("sqlite://", "names no database file"),
        ("sqlite:", "names no database file"),
    ] {
        let cli = Cli {
            db: db.into(),
            prefix: "clitest".into(),
        };
        let out = cli.run(&["list"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{db}: {err}");
        assert!(out.stdout.is_empty());
        assert_eq!(err.trim().lines().count(), 1, "{db}: {err}");
        assert!(err.contains(said), "{db}: {err}");
        assert!(!err.contains(":pw@"), "the password leaked: {err}");
    }
}

/// An argument error shows clap's whole message: what is missing and the usage line
/// (it used to show only the first line, which did not say `--name` was missing).
#[test]
fn argument_errors_are_clap_s_whole_message() {
    let scratch = Scratch::new();
    let out = scratch.0.run(&["mint", "--user", "u"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(out.stdout.is_empty());
    assert!(
        err.contains("the following required arguments were not provided"),
        "{err}"
    );
    assert!(err.contains("--name <NAME>"), "{err}");
    assert!(err.contains("Usage: keygate mint"), "{err}");
    // Control characters in a value are still escaped.
    let out = scratch.0.run(&[
        "mint",
        "--user",
        "u",
        "--name",
        "x",
        "--format",
        "p\u{1b}[2Jgp",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!out.stderr.contains(&0x1b), "{}", stderr(&out));
}

/// The pepper comes from the library's loader: each misconfiguration is exit 2 with a
/// message naming the variable or file, never the pepper, and nothing is written.
#[test]
fn pepper_misconfigurations_are_exit_2_and_never_print_the_pepper() {
    let scratch = Scratch::new();
    let cli = &scratch.0;
    let missing = std::env::temp_dir().join(support::unique("no-pepper"));
    let missing = missing.to_str().unwrap();
    let mint = ["mint", "--user", "u", "--name", "x"];
    for (env, said) in [
        (
            vec![("KEYGATE_PEPPER", PEPPER), ("KEYGATE_PEPPER_FILE", missing)],
            "both KEYGATE_PEPPER and KEYGATE_PEPPER_FILE are set",
        ),
        (
            vec![("KEYGATE_PEPPER_FILE", missing)],
            "cannot read pepper file",
        ),
        (
            vec![
                ("KEYGATE_PEPPER", PEPPER),
                ("KEYGATE_PEPPER_VERSION", "two"),
            ],
            "KEYGATE_PEPPER_VERSION",
        ),
        (
            vec![("KEYGATE_PEPPER", "a short secret value")],
            "pepper too short",
        ),
        (
            vec![],
            "no pepper: set KEYGATE_PEPPER or KEYGATE_PEPPER_FILE",
        ),
    ] {
        let out = cli.run_env(&mint, &env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {err}");
        assert!(out.stdout.is_empty());
        assert!(err.contains(said), "{env:?}: {err}");
        assert!(
            !err.contains(PEPPER) && !err.contains("a short secret value"),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{env:?}: {err}");
    }
    let out = cli.run_env(&mint, &[("KEYGATE_PEPPER_FILE", missing)]);
    assert!(stderr(&out).contains("No such file"), "{}", stderr(&out));
    // Nothing was minted along the way.
    let listed = cli.ok(&["list", "--json"]);
    assert!(listed.is_empty(), "{listed}");
}

/// A password given as a query parameter (`?password=`, as libpq and sqlx accept) is
/// masked in the "cannot open" message like one in `user:password@`.
#[test]
fn a_password_in_the_query_string_is_not_printed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let cli = Cli {
        db: format!("postgres://postgres@127.0.0.1:{port}/test?password=hunter2&sslmode=disable"),
        prefix: "clitest".into(),
    };
    let out = cli.run(&["list"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("cannot open"), "{err}");
    assert!(err.contains("password=***"), "{err}");
    assert!(!err.contains("hunter2"), "the password leaked: {err}");
}

/// Network restrictions from the CLI: set at mint, checked by `verify --client-addr`
/// (refused without one: the address is unknown), changed and lifted by `restrict`, and
/// bad values refused by the argument parser with nothing written.
#[tokio::test]
async fn network_restrictions() {
    let path = support::sqlite_temp_path();
    let cli = Cli {
        db: format!("sqlite://{}", path.display()),
        prefix: "clitest".into(),
    };
    let owner = format!("net-{}", KeyId::random());
    let key = cli.ok(&[
        "mint",
        "--user",
        &owner,
        "--name",
        "office",
        "--allow-cidr",
        "203.0.113.0/24",
        "--allow-cidr",
        "2001:db8::/32",
    ]);
    let key = key.trim();
    let verify_from = |args: &[&str]| {
        let mut all = vec!["verify"];
        all.extend_from_slice(args);
        cli.run_full(
            &all,
            &[("KEYGATE_PEPPER", PEPPER)],
            Some(format!("{key}\n").as_bytes()),
        )
    };
    assert!(verify_from(&["--client-addr", "203.0.113.9"])
        .status
        .success());
    assert!(verify_from(&["--client-addr", "2001:db8::1"])
        .status
        .success());
    for refused in [&["--client-addr", "198.51.100.1"][..], &[]] {
        let out = verify_from(refused);
        assert_eq!(out.status.code(), Some(1), "{refused:?}");
        assert!(
            stderr(&out).contains("network_not_allowed"),
            "{}",
            stderr(&out)
        );
    }

    let id = principal_id_from(&verify_from(&["--client-addr", "203.0.113.9"]));
    let shown: serde_json::Value = serde_json::from_str(&cli.ok(&[
        "restrict",
        &id,
        "--allow-origin",
        "https://App.example.com:443",
    ]))
    .unwrap();
    assert_eq!(
        shown["allowedCidrs"],
        serde_json::json!(["203.0.113.0/24", "2001:db8::/32"])
    );
    assert_eq!(
        shown["allowedOrigins"],
        serde_json::json!(["https://app.example.com"])
    );
    let out = verify_from(&["--client-addr", "203.0.113.9"]);
    assert!(
        stderr(&out).contains("origin_not_allowed"),
        "{}",
        stderr(&out)
    );
    assert!(verify_from(&[
        "--client-addr",
        "203.0.113.9",
        "--origin",
        "https://app.example.com"
    ])
    .status
    .success());

    // Bad values: the parser refuses them (exit 2) and nothing changes.
    for bad in [
        vec!["restrict", &id, "--allow-cidr", "203.0.113.9/24"],
        vec!["restrict", &id, "--allow-origin", "https://a.example/path"],
        vec!["restrict", &id],
    ] {
        let out = cli.run(&bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
    }
    let before = cli.count(&owner).await;
    let out = cli.run(&[
        "mint",
        "--user",
        &owner,
        "--name",
        "x",
        "--allow-cidr",
        "10.1.2.3/8",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(cli.count(&owner).await, before);

    cli.ok(&["restrict", &id, "--any-network", "--any-origin"]);
    assert!(verify_from(&[]).status.success(), "lifted");
    support::remove_sqlite(&path);
}

fn principal_id_from(out: &Output) -> String {
    assert!(out.status.success(), "verify: {}", stderr(out));
    let principal: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    principal["keyId"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn limits_are_set_at_mint_and_changed_later() {
    let path = support::sqlite_temp_path();
    let cli = Cli {
        db: format!("sqlite://{}", path.display()),
        prefix: "clitest".into(),
    };
    let key = cli.ok(&[
        "mint",
        "--user",
        "u1",
        "--name",
        "metered",
        "--ratelimit",
        "requests=100/1m",
        "--ratelimit",
        "tokens=50000/1h:burst=5000:manual",
        "--credits",
        "1000",
        "--refill",
        "monthly:1000:15",
    ]);
    let id = principal_id(&cli, key.trim());
    let shown: serde_json::Value = serde_json::from_str(&cli.ok(&["show", &id])).unwrap();
    assert_eq!(
        shown["ratelimits"],
        serde_json::json!([
            {"name": "requests", "limit": 100, "duration": 60000, "autoApply": true},
            {"name": "tokens", "limit": 50000, "duration": 3600000, "autoApply": false, "burst": 5000}
        ])
    );
    assert_eq!(shown["credits"]["remaining"], 1000);
    assert_eq!(
        shown["credits"]["refill"],
        serde_json::json!({"interval": "monthly", "amount": 1000, "refillDay": 15})
    );
    // list's table shows them in the flags' own syntax, before the name.
    let table = cli.ok(&["list", "--user", "u1"]);
    let columns: Vec<&str> = table.trim_end().split('\t').collect();
    assert_eq!(
        columns[5],
        "requests=100/1m tokens=50000/1h:burst=5000:manual credits=1000 refill=monthly:1000:15",
        "{table:?}"
    );
    assert_eq!(columns[6], "metered");
    let changed: serde_json::Value = serde_json::from_str(&cli.ok(&[
        "limits",
        &id,
        "--ratelimit",
        "requests=10/1s",
        "--no-credits",
    ]))
    .unwrap();
    assert_eq!(changed["ratelimits"][0]["limit"], 10);
    assert_eq!(changed["credits"], serde_json::Value::Null);
    cli.ok(&[
        "restrict",
        &id,
        "--allow-cidr",
        "10.0.0.0/8",
        "--allow-cidr",
        "::1",
    ]);
    let table = cli.ok(&["list", "--user", "u1"]);
    assert_eq!(
        table.trim_end().split('\t').nth(5),
        Some("requests=10/1s cidrs=2"),
        "{table:?}"
    );
    // Bad limits are refused by clap (exit 2) before anything is written.
    for bad in [
        vec![
            "mint",
            "--user",
            "u1",
            "--name",
            "x",
            "--ratelimit",
            "requests=0/1m",
        ],
        vec![
            "mint",
            "--user",
            "u1",
            "--name",
            "x",
            "--ratelimit",
            "requests",
        ],
        vec!["mint", "--user", "u1", "--name", "x", "--refill", "daily:5"],
        vec!["limits", &id],
    ] {
        let out = cli.run(&bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
    }
    assert_eq!(cli.count("u1").await, 1);
    support::remove_sqlite(&path);
}
