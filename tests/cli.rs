//! The operator CLI, run as a user would: the real binary, a real store, exit codes and
//! what each stream carries.
#![cfg(feature = "cli")]

mod support;

use std::process::{Command, Output};

use keygate::{KeyId, Keygate, ListQuery, Pepper};

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
        let mut command = Command::new(env!("CARGO_BIN_EXE_keygate"));
        command
            .args(args)
            .env_remove("KEYGATE_PEPPER")
            .env_remove("KEYGATE_PEPPER_FILE")
            .env_remove("KEYGATE_JWT_SECRET")
            .env_remove("KEYGATE_JWT_SECRET_FILE")
            .env("KEYGATE_DB", &self.db)
            .env("KEYGATE_PREFIX", &self.prefix);
        for (name, value) in env {
            command.env(name, value);
        }
        command.output().expect("the keygate binary runs")
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
        Keygate::builder_shared(store)
            .prefix(&self.prefix)
            .pepper(Pepper::new(1, PEPPER).unwrap())
            .jwt_secret(JWT_SECRET)
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
    let principal: serde_json::Value = serde_json::from_str(&cli.ok(&["verify", &key])).unwrap();
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
    let out = cli.run(&["verify", &key]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(stderr(&out).trim(), "keygate: error: key refused: inactive");

    // activate brings it back.
    cli.ok(&["activate", &id.to_string()]);
    cli.ok(&["verify", &key]);

    // rotate with grace: both work, the new one is printed alone.
    let new_key = cli.ok(&["rotate", &id.to_string(), "--grace", "1h"]);
    let new_key = new_key.trim();
    assert_ne!(new_key, key);
    cli.ok(&["verify", new_key]);
    cli.ok(&["verify", &key]);
    let old = cli.gate().await.get(id).await.unwrap().unwrap();
    let left = old.expires_at.unwrap() - chrono::Utc::now();
    assert!(
        left <= chrono::TimeDelta::hours(1) && left > chrono::TimeDelta::minutes(59),
        "{left}"
    );
    assert_eq!(cli.count(&owner).await, 2);

    // rotate with no grace: the old key stops now.
    let newest = cli.ok(&["rotate", &principal_id(cli, new_key), "--grace", "0s"]);
    assert_eq!(cli.run(&["verify", new_key]).status.code(), Some(1));
    cli.ok(&["verify", newest.trim()]);

    // JWT format.
    let jwt = cli.ok(&[
        "mint", "--user", &owner, "--name", "jwt key", "--format", "jwt",
    ]);
    assert_eq!(jwt.trim().split('.').count(), 3);
    cli.ok(&["verify", jwt.trim()]);

    // delete, then delete again: not found, exit 2.
    cli.ok(&["delete", &id.to_string()]);
    assert_eq!(cli.run(&["verify", &key]).status.code(), Some(1));
    let out = cli.run(&["delete", &id.to_string()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));

    // Bad input: one line on stderr, non-zero exit, nothing written.
    let before = cli.count(&owner).await;
    for args in [
        vec![
            "mint",
            "--user",
            &owner,
            "--name",
            "x",
            "--expires-in",
            "3y",
        ],
        vec!["mint", "--user", &owner, "--name", ""],
        vec!["mint", "--user", &owner, "--name", "x", "--format", "pgp"],
        vec!["revoke", "not-a-uuid"],
        vec!["frobnicate"],
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
    assert_eq!(
        cli.count(&owner).await,
        before,
        "bad input changed the store"
    );

    // A pepper file works (trailing newline ignored) and verifies keys minted with the env var.
    let pepper_file = std::env::temp_dir().join(support::unique("pepper"));
    std::fs::write(&pepper_file, format!("{PEPPER}\n")).unwrap();
    let out = cli.run_env(
        &["verify", newest.trim()],
        &[("KEYGATE_PEPPER_FILE", pepper_file.to_str().unwrap())],
    );
    let _ = std::fs::remove_file(&pepper_file);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn principal_id(cli: &Cli, key: &str) -> String {
    let principal: serde_json::Value = serde_json::from_str(&cli.ok(&["verify", key])).unwrap();
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

#[test]
fn unreachable_store_is_one_line_and_exit_3() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let cli = Cli {
        db: format!("postgres://postgres:secret@127.0.0.1:{port}/test"),
        prefix: "clitest".into(),
    };
    let started = std::time::Instant::now();
    let out = cli.run(&["list"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("secret"),
        "the password leaked: {}",
        stderr(&out)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
}
