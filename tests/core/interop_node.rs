//! Interop with Audiobookshelf 2.26+ as it really mints and checks tokens: Node's
//! `jsonwebtoken` 9 (`tests/fixtures/node/abs.js`), in both directions.
//!
//! Needs `node` and `npm ci` in `tests/fixtures/node`. Without the fixture the tests show
//! as ignored (see `build.rs`), except under `CI=true`, where a missing fixture is a failure.

// Test code: a panic is how a test reports a failure, and fixtures index and count
// over small known values.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use keygate::chrono::{DateTime, SubsecRound, TimeDelta, TimeZone, Utc};
use keygate::{
    JwtSecret, KeyFormat, KeyId, KeyRecord, Keygate, ManualClock, MemoryStore, NewKey, Pepper,
    Principal, Rejection, VerifyError,
};

/// The gate's `TokenSecret` (what Audiobookshelf keeps in its settings).
const SECRET: &str = "Audiobookshelf TokenSecret used by the interop tests";
/// Another installation's secret.
const OTHER_SECRET: &str = "a different Audiobookshelf server's TokenSecret!";

/// Names an Audiobookshelf admin can type: its API only asks for a non-empty string.
const NAMES: &[&str] = &[
    "Backup Script",
    "Hörbücher 📚 — 本棚 ✓",
    r#"say "hi" \ C:\path\ "#,
    "'single' `tick` </script> / \u{2028}\u{2029} \u{a0}\u{200b} ~",
];

// ---------------------------------------------------------------------------------------
// The Node side

/// `node tests/fixtures/node/abs.js`, once `node` and the fixture's `jsonwebtoken` are
/// known to be there.
struct Node {
    script: PathBuf,
}

/// The fixture. A test that asks for it runs only when the fixture was installed at build
/// time or under `CI=true` (otherwise it is ignored), so a missing one is a failure.
fn node() -> Node {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/node");
    let problem = match Command::new("node").arg("--version").output() {
        Err(e) => Some(format!("`node` could not be run ({e})")),
        Ok(out) if !out.status.success() => Some(format!("`node --version` failed: {out:?}")),
        Ok(_) if !dir.join("node_modules/jsonwebtoken/package.json").is_file() => Some(format!(
            "{} is missing: run `npm ci --no-audit --no-fund` in {}",
            dir.join("node_modules/jsonwebtoken").display(),
            dir.display()
        )),
        Ok(_) => None,
    };
    if let Some(reason) = problem {
        panic!("Node interop fixture unavailable: {reason}");
    }
    Node {
        script: dir.join("abs.js"),
    }
}

/// What `abs.js` said: stdout's one line on success, stderr's on refusal (exit 1).
type NodeResult = Result<String, String>;

impl Node {
    fn run(&self, secret: &str, args: &[&str]) -> NodeResult {
        let out = Command::new("node")
            .arg(&self.script)
            .args(args)
            .env("ABS_TOKEN_SECRET", secret)
            .output()
            .expect("node runs");
        let stdout = String::from_utf8(out.stdout).expect("utf-8 stdout");
        let stderr = String::from_utf8(out.stderr).expect("utf-8 stderr");
        match out.status.code() {
            Some(0) => Ok(stdout
                .strip_suffix('\n')
                .expect("one line on stdout")
                .to_owned()),
            Some(1) => Err(stderr.trim_end().to_owned()),
            _ => panic!("abs.js {args:?} failed: {}\n{stderr}", out.status),
        }
    }

    fn sign(&self, args: &[&str]) -> String {
        let token = self
            .run(SECRET, args)
            .unwrap_or_else(|e| panic!("abs.js {args:?}: {e}"));
        assert_eq!(token.split('.').count(), 3, "not a JWT: {token}");
        token
    }

    /// A key minted exactly as Audiobookshelf's `ApiKey.generateApiKey` does (`iat` is
    /// Node's clock; `expires_in` 0 means none).
    fn abs_api_key(&self, id: KeyId, name: &str, expires_in: i64) -> String {
        self.sign(&["api-key", &id.to_string(), name, &expires_in.to_string()])
    }

    /// The same, with an explicit `iat`.
    fn abs_api_key_at(&self, id: KeyId, name: &str, expires_in: i64, iat: i64) -> String {
        let (id, exp, iat) = (id.to_string(), expires_in.to_string(), iat.to_string());
        self.sign(&["api-key", &id, name, &exp, &iat])
    }

    /// An Audiobookshelf session access token: `{userId, username, type: 'access'}`.
    fn abs_access_token(&self, user_id: &str, username: &str) -> String {
        self.sign(&["access-token", user_id, username])
    }

    /// Any JSON object payload, signed with [`SECRET`].
    fn sign_json(&self, payload: &str, expires_in: i64) -> String {
        self.sign(&["sign", payload, &expires_in.to_string()])
    }

    /// `jwt.verify(token, secret)` as Audiobookshelf calls it, at `now` (unix seconds):
    /// the payload as `JSON.stringify` writes it, or the error.
    fn verify(&self, secret: &str, token: &str, now: i64) -> NodeResult {
        self.run(secret, &["verify", token, &now.to_string()])
    }
}

// ---------------------------------------------------------------------------------------
// The keygate side

struct Setup {
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
    gate: Keygate,
}

fn setup(now: DateTime<Utc>) -> Setup {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(now));
    let gate = Keygate::builder(store.clone(), Pepper::new(1, [7u8; 32]).unwrap())
        .prefix("abs")
        .jwt_secret(JwtSecret::new(SECRET).unwrap())
        .clock(clock.clone())
        .build()
        .unwrap();
    Setup { store, clock, gate }
}

/// One row of Audiobookshelf's `apiKeys` table, as a keygate record.
fn abs_row(id: KeyId, name: &str, owner: &str, expires_at: Option<DateTime<Utc>>) -> KeyRecord {
    let created = Utc.with_ymd_and_hms(2025, 7, 1, 12, 0, 0).unwrap();
    let mut record = KeyRecord::new(id, KeyFormat::Jwt, name, owner, created);
    record.expires_at = expires_at;
    record
}

fn at(unix: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(unix, 0).unwrap()
}

fn rejection(result: Result<Principal, VerifyError>) -> Rejection {
    match result {
        Ok(p) => panic!("accepted as key {}", p.key_id()),
        Err(e) => e
            .rejection()
            .unwrap_or_else(|| panic!("not a key rejection: {e:?}")),
    }
}

fn assert_principal(principal: &Principal, id: KeyId, name: &str, owner: &str) {
    assert_eq!(principal.key_id(), id);
    assert_eq!(principal.owner_id(), owner);
    assert_eq!(principal.key_name(), name);
    assert_eq!(principal.format(), KeyFormat::Jwt);
}

// ---------------------------------------------------------------------------------------
// Tokens, read without trusting either side's JSON library

/// The payload of a JWT, base64url-decoded.
fn payload(token: &str) -> String {
    let part = token.split('.').nth(1).expect("a payload part");
    String::from_utf8(base64url_decode(part)).expect("utf-8 payload")
}

fn base64url_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url: {text}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// An integer claim of a flat JSON object (the last occurrence of `"key":`; a string
/// value cannot contain that sequence, its quotes being escaped).
fn int_claim(json: &str, key: &str) -> Option<i64> {
    let needle = format!("\"{key}\":");
    let start = json.rfind(&needle)? + needle.len();
    let digits: String = json[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    Some(digits.parse().expect("an integer claim"))
}

/// `JSON.stringify(s)`: `"` and `\` escaped, `\b \f \n \r \t`, other C0 controls as
/// lowercase `\u00xx`, everything else (DEL, U+2028, astral characters) as is.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < ' ' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An API key's payload, byte for byte as Audiobookshelf writes it.
fn api_payload(id: KeyId, name: &str, iat: i64, exp: Option<i64>) -> String {
    let exp = exp.map(|exp| format!(",\"exp\":{exp}")).unwrap_or_default();
    format!(
        r#"{{"keyId":"{id}","name":{},"type":"api","iat":{iat}{exp}}}"#,
        json_string(name)
    )
}

// ---------------------------------------------------------------------------------------
// Node mints, keygate verifies

#[tokio::test]
#[cfg_attr(
    not(keygate_test_node),
    ignore = "needs Node: run npm ci in tests/fixtures/node"
)]
async fn abs_minted_keys_verify_once_their_rows_are_imported() {
    let node = node();
    for &name in NAMES {
        for expires_in in [0, 3600, 30 * 86_400] {
            let case = format!("name {name:?}, expiresIn {expires_in}");
            let id = KeyId::random();
            let before = Utc::now().timestamp();
            let token = node.abs_api_key(id, name, expires_in);
            let after = Utc::now().timestamp();

            // What Audiobookshelf mints: keyId, name, type, Node's iat, exp iff expiresIn.
            let claims = payload(&token);
            let iat = int_claim(&claims, "iat").expect("iat");
            assert!((before..=after).contains(&iat), "{case}: iat {iat}");
            let exp = (expires_in > 0).then_some(iat + expires_in);
            assert_eq!(claims, api_payload(id, name, iat, exp), "{case}");
            assert_eq!(int_claim(&claims, "exp"), exp, "{case}");

            let s = setup(at(iat));
            let expires_at = exp.map(at);
            s.gate
                .import(abs_row(id, name, "user-7", expires_at))
                .await
                .unwrap_or_else(|e| panic!("{case}: import: {e}"));
            assert_eq!(s.store.len(), 1);

            let principal = s.gate.verify(&token).await.expect(&case);
            assert_principal(&principal, id, name, "user-7");
            assert_eq!(principal.expires_at(), expires_at, "{case}");
            assert_eq!(principal.record().hash, None, "{case}");

            // Until the token's own exp (a key without one works indefinitely).
            s.clock.set(at(exp.unwrap_or(4_102_444_800) - 1));
            let principal = s.gate.verify(&token).await.expect(&case);
            assert_eq!(principal.key_id(), id, "{case}");
            assert_eq!(s.store.len(), 1, "{case}: verify adds no record");
        }
    }
}

#[tokio::test]
#[cfg_attr(
    not(keygate_test_node),
    ignore = "needs Node: run npm ci in tests/fixtures/node"
)]
async fn abs_key_is_unknown_until_its_row_is_imported() {
    let node = node();
    let id = KeyId::random();
    let token = node.abs_api_key(id, "Backup Script", 3600);
    let iat = int_claim(&payload(&token), "iat").unwrap();
    let s = setup(at(iat));

    for _ in 0..2 {
        assert_eq!(
            rejection(s.gate.verify(&token).await),
            Rejection::UnknownKey
        );
        assert_eq!(s.store.len(), 0, "a refused verify writes nothing");
        assert!(s.gate.get(id).await.unwrap().is_none());
    }

    // Another key's row does not help.
    let other = KeyId::random();
    s.gate
        .import(abs_row(other, "Other", "user-7", None))
        .await
        .unwrap();
    assert_eq!(
        rejection(s.gate.verify(&token).await),
        Rejection::UnknownKey
    );
    assert_eq!(s.store.len(), 1);

    s.gate
        .import(abs_row(id, "Backup Script", "user-7", Some(at(iat + 3600))))
        .await
        .unwrap();
    let principal = s.gate.verify(&token).await.unwrap();
    assert_principal(&principal, id, "Backup Script", "user-7");
    assert_eq!(s.store.len(), 2);
}

/// Audiobookshelf accepts any non-empty string as a key name, control characters
/// included, and `jsonwebtoken` signs it; keygate imports such a row as it is (only `mint`
/// is strict about names) and the token verifies.
#[tokio::test]
#[cfg_attr(
    not(keygate_test_node),
    ignore = "needs Node: run npm ci in tests/fixtures/node"
)]
async fn abs_key_named_with_control_characters() {
    let node = node();
    let name = "tab\there\nnewline \u{1b}[31mred\u{1b}[0m \u{7}bell \u{1f} \u{7f}del \r";
    let id = KeyId::random();
    let token = node.abs_api_key(id, name, 0);
    let claims = payload(&token);
    let iat = int_claim(&claims, "iat").unwrap();
    assert_eq!(claims, api_payload(id, name, iat, None));
    // JSON.stringify's escapes: short forms, lowercase \u00xx, DEL left as is.
    assert!(claims.contains(concat!(
        r#""name":"tab\there\nnewline \u001b[31mred\u001b[0m "#,
        r#"\u0007bell \u001f "#,
        "\u{7f}",
        r#"del \r""#
    )));
    // Node itself verifies it and gives the name back unchanged.
    assert_eq!(
        node.verify(SECRET, &token, iat).unwrap(),
        api_payload(id, name, iat, None)
    );

    let s = setup(at(iat));
    assert_eq!(
        rejection(s.gate.verify(&token).await),
        Rejection::UnknownKey
    );
    s.gate
        .import(abs_row(id, name, "user-7", None))
        .await
        .expect("Audiobookshelf rows import with their names as they are");
    assert_eq!(s.store.len(), 1);
    let principal = s.gate.verify(&token).await.unwrap();
    assert_principal(&principal, id, name, "user-7");
}

#[tokio::test]
#[cfg_attr(
    not(keygate_test_node),
    ignore = "needs Node: run npm ci in tests/fixtures/node"
)]
async fn abs_session_tokens_are_refused_before_the_store() {
    let node = node();
    let now = Utc::now().trunc_subsecs(0);
    let s = setup(now);
    // A real API key's row: a token naming it must still be refused for its claims.
    let id = KeyId::random();
    s.gate
        .import(abs_row(id, "Backup Script", "user-7", None))
        .await
        .unwrap();

    let access = node.abs_access_token("user-7", "root");
    let claims = payload(&access);
    let iat = int_claim(&claims, "iat").unwrap();
    assert_eq!(
        claims,
        format!(
            r#"{{"userId":"user-7","username":"root","type":"access","iat":{iat},"exp":{}}}"#,
            iat + 3600
        )
    );

    let key_id = id.to_string();
    let cases = [
        // TokenManager.generateAccessToken: session claims are checked first.
        (access, Rejection::JwtSessionToken),
        // Its refresh token, and a pre-2.26 session token (no type at all).
        (
            node.sign_json(
                r#"{"userId":"user-7","username":"root","type":"refresh"}"#,
                604_800,
            ),
            Rejection::JwtSessionToken,
        ),
        (
            node.sign_json(r#"{"userId":"user-7","username":"root"}"#, 0),
            Rejection::JwtSessionToken,
        ),
        // Neither a session nor an API key.
        (
            node.sign_json(r#"{"keyId":"x","type":"access"}"#, 0),
            Rejection::JwtType,
        ),
        // type "api", but with a session token's userId or username, even naming a real key.
        (
            node.sign_json(
                &format!(r#"{{"keyId":"{key_id}","name":"x","type":"api","userId":"user-7"}}"#),
                3600,
            ),
            Rejection::JwtSessionToken,
        ),
        (
            node.sign_json(
                &format!(r#"{{"keyId":"{key_id}","name":"x","type":"api","username":"root"}}"#),
                0,
            ),
            Rejection::JwtSessionToken,
        ),
        (
            node.sign_json(
                &format!(
                    r#"{{"userId":"user-7","username":"root","type":"api","keyId":"{key_id}"}}"#
                ),
                0,
            ),
            Rejection::JwtSessionToken,
        ),
        (
            node.sign_json(r#"{"type":"api","userId":null}"#, 0),
            Rejection::JwtSessionToken,
        ),
    ];
    for (token, expected) in cases {
        let what = payload(&token);
        // Audiobookshelf's own jwt.verify accepts every one of them: same secret.
        node.verify(SECRET, &token, now.timestamp())
            .unwrap_or_else(|e| panic!("node refused {what}: {e}"));
        let got = rejection(s.gate.verify(&token).await);
        assert_eq!(got, expected, "{what}");
        assert!(
            got.decided_without_store(),
            "{what}: decided from the token alone"
        );
        assert_eq!(s.store.len(), 1, "{what}: no record added");
    }
    // The row itself is untouched and still works for its real token.
    let record = s.gate.get(id).await.unwrap().unwrap();
    assert_eq!(record, abs_row(id, "Backup Script", "user-7", None));
    let token = node.abs_api_key(id, "Backup Script", 0);
    assert_eq!(s.gate.verify(&token).await.unwrap().key_id(), id);
}

#[tokio::test]
#[cfg_attr(
    not(keygate_test_node),
    ignore = "needs Node: run npm ci in tests/fixtures/node"
)]
async fn abs_key_expiry_edges() {
    let node = node();
    let id = KeyId::random();
    let token = node.abs_api_key(id, "Short-lived", 60);
    let claims = payload(&token);
    let (iat, exp) = (
        int_claim(&claims, "iat").unwrap(),
        int_claim(&claims, "exp").unwrap(),
    );
    assert_eq!(exp, iat + 60);

    // Audiobookshelf's row: expiresAt = new Date(Date.now() + expiresIn * 1000), a few
    // milliseconds after the token's whole-second exp.
    let row_expiry = at(exp) + TimeDelta::milliseconds(437);
    let s = setup(at(iat));
    s.gate
        .import(abs_row(id, "Short-lived", "user-7", Some(row_expiry)))
        .await
        .unwrap();

    for (now, expected) in [
        (at(iat), None),
        (at(exp - 1), None),
        (at(exp) - TimeDelta::milliseconds(1), None),
        (at(exp), Some(Rejection::JwtExpired)),
        (
            at(exp) + TimeDelta::milliseconds(500),
            Some(Rejection::JwtExpired),
        ),
        (at(exp + 1), Some(Rejection::JwtExpired)),
        (at(exp) + TimeDelta::days(365), Some(Rejection::JwtExpired)),
    ] {
        s.clock.set(now);
        let result = s.gate.verify(&token).await;
        match expected {
            None => assert_eq!(
                result
                    .unwrap_or_else(|e| panic!("at {now}: {e:?}"))
                    .key_id(),
                id
            ),
            Some(r) => assert_eq!(rejection(result), r, "at {now}"),
        }
        // Node draws the line at the same second: expired when now >= exp.
        let node_says = node.verify(SECRET, &token, now.timestamp());
        match expected {
            None => assert_eq!(node_says.unwrap(), claims, "node at {now}"),
            Some(_) => assert!(
                node_says
                    .as_ref()
                    .is_err_and(|e| e.starts_with("TokenExpiredError: jwt expired")),
                "node at {now}: {node_says:?}"
            ),
        }
    }

    // The token's own exp holds even when the row has no expiry...
    let s = setup(at(exp - 1));
    s.gate
        .import(abs_row(id, "Short-lived", "user-7", None))
        .await
        .unwrap();
    assert_eq!(s.gate.verify(&token).await.unwrap().key_id(), id);
    s.clock.set(at(exp));
    assert_eq!(
        rejection(s.gate.verify(&token).await),
        Rejection::JwtExpired
    );

    // ...and a row that expires first wins over the token's later exp.
    let s = setup(at(exp - 31));
    s.gate
        .import(abs_row(id, "Short-lived", "user-7", Some(at(exp - 30))))
        .await
        .unwrap();
    assert_eq!(s.gate.verify(&token).await.unwrap().key_id(), id);
    s.clock.set(at(exp - 30));
    assert_eq!(rejection(s.gate.verify(&token).await), Rejection::Expired);
}

#[tokio::test]
#[cfg_attr(
    not(keygate_test_node),
    ignore = "needs Node: run npm ci in tests/fixtures/node"
)]
async fn tokens_signed_with_another_secret_are_refused_both_ways() {
    let node = node();
    let id = KeyId::random();
    let foreign = node
        .run(
            OTHER_SECRET,
            &["api-key", &id.to_string(), "Backup Script", "0"],
        )
        .unwrap();
    let iat = int_claim(&payload(&foreign), "iat").unwrap();
    let s = setup(at(iat));
    s.gate
        .import(abs_row(id, "Backup Script", "user-7", None))
        .await
        .unwrap();
    assert_eq!(
        rejection(s.gate.verify(&foreign).await),
        Rejection::JwtSignature
    );
    assert_eq!(
        node.verify(SECRET, &foreign, iat).unwrap_err(),
        "JsonWebTokenError: invalid signature"
    );
    // The same claims under the right secret do verify.
    assert_eq!(
        s.gate
            .verify(&node.abs_api_key(id, "Backup Script", 0))
            .await
            .unwrap()
            .key_id(),
        id
    );
}

// ---------------------------------------------------------------------------------------
// keygate mints, Node verifies

#[tokio::test]
#[cfg_attr(
    not(keygate_test_node),
    ignore = "needs Node: run npm ci in tests/fixtures/node"
)]
async fn keygate_minted_keys_verify_in_node() {
    let node = node();
    // Sub-second clock: iat and exp are whole seconds, rounded down.
    let t = Utc.with_ymd_and_hms(2026, 3, 14, 15, 9, 26).unwrap();
    let s = setup(t + TimeDelta::milliseconds(535));
    for &name in NAMES {
        for lifetime in [None, Some(TimeDelta::seconds(1)), Some(TimeDelta::days(30))] {
            let case = format!("name {name:?}, lifetime {lifetime:?}");
            let mut new = NewKey::new(name, "user-7").format(KeyFormat::Jwt);
            if let Some(lifetime) = lifetime {
                new = new.expires_in(lifetime);
            }
            let issued = s.gate.mint(new).await.expect(&case);
            let token = issued.key.expose();
            let id = issued.record.id;
            let exp = lifetime.map(|l| (t + l).timestamp());
            assert_eq!(issued.record.expires_at, exp.map(at), "{case}");

            // keygate takes its own token back.
            let principal = s.gate.verify(token).await.expect(&case);
            assert_principal(&principal, id, name, "user-7");

            let expected = api_payload(id, name, t.timestamp(), exp);
            assert_eq!(payload(token), expected, "{case}");
            assert_eq!(
                node.verify(SECRET, token, t.timestamp()),
                Ok(expected.clone()),
                "{case}"
            );
            // The rest does not depend on the name; once is enough (each is a node run).
            if name != NAMES[0] {
                continue;
            }
            assert_eq!(
                node.verify(OTHER_SECRET, token, t.timestamp()),
                Err("JsonWebTokenError: invalid signature".to_owned()),
                "{case}"
            );
            if let Some(exp) = exp {
                assert_eq!(
                    node.verify(SECRET, token, exp - 1),
                    Ok(expected.clone()),
                    "{case}"
                );
                assert_eq!(
                    node.verify(SECRET, token, exp),
                    Err("TokenExpiredError: jwt expired".to_owned()),
                    "{case}"
                );
            }
        }
    }
}

#[tokio::test]
#[cfg_attr(
    not(keygate_test_node),
    ignore = "needs Node: run npm ci in tests/fixtures/node"
)]
async fn keygate_and_node_mint_the_same_bytes() {
    let node = node();
    let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    for &name in NAMES {
        for (subsec_ms, lifetime) in [(0, 0), (0, 1), (999, 3600), (250, 30 * 86_400)] {
            let case = format!("name {name:?}, +{subsec_ms} ms, expiresIn {lifetime}");
            let s = setup(t + TimeDelta::milliseconds(subsec_ms));
            let mut new = NewKey::new(name, "user-7").format(KeyFormat::Jwt);
            if lifetime > 0 {
                new = new.expires_in(TimeDelta::seconds(lifetime));
            }
            let issued = s.gate.mint(new).await.expect(&case);
            let id = issued.record.id;

            let node_token = node.abs_api_key_at(id, name, lifetime, t.timestamp());
            assert_eq!(node_token, issued.key.expose(), "{case}");

            // So Node's token is the one keygate bound its record to...
            let principal = s.gate.verify(&node_token).await.expect(&case);
            assert_principal(&principal, id, name, "user-7");
            // ...and only that one: the same claims signed a second later are refused.
            if name != NAMES[0] {
                continue;
            }
            let resigned = node.abs_api_key_at(id, name, lifetime, t.timestamp() + 1);
            assert_eq!(
                rejection(s.gate.verify(&resigned).await),
                Rejection::HashMismatch,
                "{case}"
            );
        }
    }
}
