//! Leaked-key reports (GitHub's secret-scanning partner protocol), through `keygate::leaks`:
//! signed reports revoke the keys they name and are answered with labels; unsigned,
//! wrongly signed or altered reports are refused and change nothing.

use std::sync::Arc;
use std::time::Duration;

use crate::support::github::{keys_document, report, Signer};
use crate::support::*;
use chrono::TimeDelta;
use keygate::leaks::{
    GithubKeys, Label, LabelForm, LeakError, LeakReports, LeakRequest, LeakResponse,
};
use keygate::{
    CacheConfig, CachedStore, KeyFormat, KeyId, KeyStore, Keygate, MemoryStore, NewKey, Rejection,
};
use serde_json::Value;

const GITHUB_ID: &str = "bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c";

/// A signed report: what GitHub sends.
fn signed<'a>(body: &'a str, signature: &'a str) -> LeakRequest<'a> {
    LeakRequest::new(
        [GITHUB_ID.as_bytes()],
        [signature.as_bytes()],
        body.as_bytes(),
    )
}

fn endpoint(gate: &Keygate, signer: &Signer) -> LeakReports {
    let keys = GithubKeys::from_json(keys_document(&[signer]).as_bytes()).unwrap();
    LeakReports::new(gate.clone(), keys)
}

async fn send(reports: &LeakReports, body: &str, signature: &str) -> LeakResponse {
    reports
        .handle(LeakRequest::new(
            [GITHUB_ID.as_bytes()],
            [signature.as_bytes()],
            body.as_bytes(),
        ))
        .await
}

fn labels(response: &LeakResponse) -> Vec<(String, String, String)> {
    let body: Value = serde_json::from_str(&response.body).unwrap();
    body.as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            assert_eq!(entry.as_object().unwrap().len(), 3, "{entry}");
            (
                entry["token_raw"].as_str().unwrap().to_owned(),
                entry["token_type"].as_str().unwrap().to_owned(),
                entry["label"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The acceptance test: an opaque and a JWT key reported together, beside a forged key
/// (valid checksum, real id, wrong secret) and garbage, on a gate behind a cache that has
/// both keys warm. Both real keys are labelled `true_positive` and refused at once
/// through the cache; the forgery and the garbage are `false_positive` and revoke nothing.
#[tokio::test]
async fn reported_keys_are_revoked_at_once_through_the_cache() {
    let store = Arc::new(CachedStore::new(
        MemoryStore::new(),
        CacheConfig::new().ttl(Duration::from_secs(3600)),
    ));
    let gate = Keygate::builder(store.clone(), pepper_v1())
        .prefix(PREFIX)
        .jwt_secret(jwt_secret())
        .build()
        .unwrap();
    let opaque = gate.mint(NewKey::new("sync", "alice")).await.unwrap();
    let jwt = gate
        .mint(NewKey::new("abs", "bob").format(KeyFormat::Jwt))
        .await
        .unwrap();
    let bystander = gate.mint(NewKey::new("other", "carol")).await.unwrap();
    // Warm the cache: both keys verify, so a stale cached record would keep them working.
    gate.verify(opaque.key.expose()).await.unwrap();
    gate.verify(jwt.key.expose()).await.unwrap();
    gate.verify(bystander.key.expose()).await.unwrap();

    // The bystander's id with another secret: its checksum is valid, its secret is not.
    let forged = forge_opaque(
        PREFIX,
        bystander.record.id,
        &other_secret(secret_part(bystander.key.expose(), PREFIX)),
    );
    let random = forge_opaque(PREFIX, KeyId::random(), &"x".repeat(43));
    let foreign_jwt = sign_jwt(
        OTHER_JWT_SECRET,
        &hs256_header(),
        &api_claims(jwt.record.id),
    );
    let tokens = [
        opaque.key.expose(),
        jwt.key.expose(),
        forged.as_str(),
        random.as_str(),
        "ghp_notoursatall",
        foreign_jwt.as_str(),
    ];
    let body = report(&tokens);
    let signer = Signer::new(GITHUB_ID);
    let reports = endpoint(&gate, &signer);
    let signature = signer.sign(body.as_bytes());

    let checked = reports.check(signed(&body, &signature)).await.unwrap();
    let verdicts = checked.verdicts();
    assert_eq!(verdicts.len(), 6);
    assert_eq!(verdicts[0].label, Label::TruePositive);
    assert_eq!(verdicts[0].key_id, Some(opaque.record.id));
    assert!(verdicts[0].revoked);
    assert_eq!(verdicts[1].label, Label::TruePositive);
    assert_eq!(verdicts[1].key_id, Some(jwt.record.id));
    assert!(verdicts[1].revoked);
    let why: Vec<Option<Rejection>> = verdicts[2..].iter().map(|v| v.rejection).collect();
    assert_eq!(
        why,
        [
            Some(Rejection::HashMismatch),
            Some(Rejection::UnknownKey),
            Some(Rejection::WrongPrefix),
            Some(Rejection::JwtSignature),
        ]
    );
    for verdict in &verdicts[2..] {
        assert_eq!(verdict.label, Label::FalsePositive);
        assert_eq!(verdict.key_id, None);
        assert!(!verdict.revoked);
    }

    // Refused at once, through the cache.
    for token in [opaque.key.expose(), jwt.key.expose()] {
        assert_eq!(
            rejection_of(gate.verify(token).await),
            Rejection::Inactive,
            "{}",
            show(token)
        );
    }
    // The store holds the revocations, and nothing else changed.
    let read = |id| {
        let store = store.clone();
        async move { store.inner().get(id).await.unwrap().unwrap() }
    };
    assert!(!read(opaque.record.id).await.active);
    assert!(!read(jwt.record.id).await.active);
    assert!(read(bystander.record.id).await.active);
    gate.verify(bystander.key.expose()).await.unwrap();
    assert_eq!(store.inner().len(), 3);

    // The answer, in the protocol's words and the report's order.
    let answer = LeakResponse::from(&checked);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type, "application/json");
    let got = labels(&answer);
    let want: Vec<(String, String, String)> = tokens
        .iter()
        .zip([
            "true_positive",
            "true_positive",
            "false_positive",
            "false_positive",
            "false_positive",
            "false_positive",
        ])
        .map(|(t, l)| ((*t).to_owned(), "keygate_api_key".to_owned(), l.to_owned()))
        .collect();
    assert_eq!(got, want);
}

/// A report is checked before it is read: missing, doubled or malformed headers, an
/// unknown key identifier, a signature by another key, an altered body, an oversize body.
/// Each is refused with its own status and code, and the store is neither read nor
/// written.
#[tokio::test]
async fn unauthenticated_reports_are_refused_and_change_nothing() {
    let h = Harness::new();
    let issued = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let jwt = h
        .gate
        .mint(NewKey::new("j", "alice").format(KeyFormat::Jwt))
        .await
        .unwrap();
    let signer = Signer::new(GITHUB_ID);
    let impostor = Signer::new(GITHUB_ID);
    let reports = endpoint(&h.gate, &signer).max_body(4096);
    let body = report(&[issued.key.expose(), jwt.key.expose()]);
    let good = signer.sign(body.as_bytes());
    let tampered = body.replace("content", "commit");
    let other_body = report(&[issued.key.expose()]);
    let big = report(&vec![issued.key.expose(); 40]);
    let big_signature = signer.sign(big.as_bytes());
    let by_impostor = impostor.sign(body.as_bytes());
    let other_signature = signer.sign(other_body.as_bytes());
    let id = GITHUB_ID.as_bytes();
    let none: [&[u8]; 0] = [];

    settle().await;
    let before = h.store.calls();
    let records = h.store.all().await;
    let cases: Vec<(&str, LeakRequest<'_>, u16, &str)> = vec![
        (
            "no identifier",
            LeakRequest::new(none, [good.as_bytes()], body.as_bytes()),
            401,
            "missing_signature",
        ),
        (
            "no signature",
            LeakRequest::new([id], none, body.as_bytes()),
            401,
            "missing_signature",
        ),
        (
            "empty signature",
            LeakRequest::new([id], [&b""[..]], body.as_bytes()),
            401,
            "missing_signature",
        ),
        (
            "two signatures",
            LeakRequest::new([id], [good.as_bytes(), good.as_bytes()], body.as_bytes()),
            400,
            "invalid_request",
        ),
        (
            "signature not base64",
            LeakRequest::new([id], [&b"not base64!"[..]], body.as_bytes()),
            400,
            "invalid_request",
        ),
        (
            "unknown key identifier",
            LeakRequest::new([&b"0000"[..]], [good.as_bytes()], body.as_bytes()),
            401,
            "unknown_key_identifier",
        ),
        (
            "signed by another key",
            LeakRequest::new([id], [by_impostor.as_bytes()], body.as_bytes()),
            401,
            "invalid_signature",
        ),
        (
            "altered body",
            LeakRequest::new([id], [good.as_bytes()], tampered.as_bytes()),
            401,
            "invalid_signature",
        ),
        (
            "another report's signature",
            LeakRequest::new([id], [other_signature.as_bytes()], body.as_bytes()),
            401,
            "invalid_signature",
        ),
        (
            "body over the limit",
            LeakRequest::new([id], [big_signature.as_bytes()], big.as_bytes()),
            413,
            "payload_too_large",
        ),
    ];
    for (name, request, status, code) in cases {
        let answer = reports.handle(request).await;
        assert_eq!(answer.status, status, "{name}");
        let body: Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(body["error"], code, "{name}");
        assert_eq!(answer.retry_after, None, "{name}");
    }
    settle().await;
    assert_eq!(
        h.store.calls(),
        before,
        "a refused report touched the store"
    );
    assert_eq!(h.store.all().await, records);
    h.gate.verify(issued.key.expose()).await.unwrap();
    h.gate.verify(jwt.key.expose()).await.unwrap();

    // The genuine report still works afterwards.
    assert_eq!(send(&reports, &body, &good).await.status, 200);
    assert!(h.gate.verify(issued.key.expose()).await.is_err());
}

/// A signed body that is not a report, or names too many tokens, is refused whole before
/// any lookup.
#[tokio::test]
async fn malformed_or_oversized_reports_are_refused_before_any_lookup() {
    let h = Harness::new();
    let issued = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let signer = Signer::new(GITHUB_ID);
    let reports = endpoint(&h.gate, &signer).max_tokens(2);
    settle().await;
    let before = h.store.calls();
    let three = report(&[issued.key.expose(), "a", "b"]);
    for (body, status, code) in [
        (three.as_str(), 413, "too_many_tokens"),
        (r#"{"token":"x"}"#, 400, "invalid_request"),
        (r#"[{"type":"x"}]"#, 400, "invalid_request"),
        ("[", 400, "invalid_request"),
    ] {
        let answer = send(&reports, body, &signer.sign(body.as_bytes())).await;
        assert_eq!(answer.status, status, "{body}");
        let json: Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(json["error"], code, "{body}");
    }
    settle().await;
    assert_eq!(h.store.calls(), before);
    h.gate.verify(issued.key.expose()).await.unwrap();

    // An empty report is answered with no labels.
    let answer = send(&reports, "[]", &signer.sign(b"[]")).await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "[]"));
}

/// A key revoked before the report is still a true positive, and is not written again;
/// a JWT key whose own `exp` has passed is still ours; a token reported twice is judged
/// once.
#[tokio::test]
async fn revoked_and_expired_keys_are_still_true_positives() {
    let h = Harness::new();
    let revoked = h.gate.mint(NewKey::new("old", "alice")).await.unwrap();
    h.gate.revoke(revoked.record.id).await.unwrap();
    let expiring = h
        .gate
        .mint(
            NewKey::new("short", "alice")
                .format(KeyFormat::Jwt)
                .expires_in(TimeDelta::hours(1)),
        )
        .await
        .unwrap();
    h.clock.advance(TimeDelta::hours(2));
    assert_eq!(
        rejection_of(h.gate.verify(expiring.key.expose()).await),
        Rejection::JwtExpired
    );
    let signer = Signer::new(GITHUB_ID);
    let reports = endpoint(&h.gate, &signer);
    let body = report(&[
        revoked.key.expose(),
        expiring.key.expose(),
        revoked.key.expose(),
    ]);
    settle().await;
    let before = h.store.calls();
    let checked = reports
        .check(signed(&body, &signer.sign(body.as_bytes())))
        .await
        .unwrap();
    let got: Vec<(Label, Option<KeyId>, bool)> = checked
        .verdicts()
        .iter()
        .map(|v| (v.label, v.key_id, v.revoked))
        .collect();
    assert_eq!(
        got,
        [
            (Label::TruePositive, Some(revoked.record.id), false),
            (Label::TruePositive, Some(expiring.record.id), true),
            (Label::TruePositive, Some(revoked.record.id), false),
        ]
    );
    settle().await;
    // One write: the expired JWT key's revocation. The revoked key was read once.
    assert_eq!(h.store.calls().update - before.update, 1);
    assert_eq!(h.store.calls().get - before.get, 2);
    assert!(!h.store.record(expiring.record.id).await.unwrap().active);
}

/// The `KeyLeaked` event names the key, its owner and where GitHub found it; no event,
/// refusal or answer's `Debug` carries the token.
#[tokio::test]
async fn the_key_leaked_event_names_key_owner_and_url_never_the_token() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let h = Harness::new();
    let issued = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let forged = forge_opaque(
        PREFIX,
        issued.record.id,
        &other_secret(secret_part(issued.key.expose(), PREFIX)),
    );
    let signer = Signer::new(GITHUB_ID);
    let reports = endpoint(&h.gate, &signer);
    let body = report(&[issued.key.expose(), &forged]);
    let signature = signer.sign(body.as_bytes());
    capture.take();

    let checked = reports.check(signed(&body, &signature)).await.unwrap();
    let answer = LeakResponse::from(&checked);
    // Refusals are logged too (at debug level).
    let _ = send(&reports, &body, &signer.sign(b"other")).await;
    let lines = capture.take();
    let id = issued.record.id.to_string();
    assert!(
        lines.iter().any(|line| line.contains("KeyLeaked")
            && line.contains(&id)
            && line.contains("alice")
            && line.contains("octocat/Hello-World")
            && line.contains("content")
            && line.contains("keygate_api_key")),
        "{lines:#?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains("KeyLeaked")).count(),
        1,
        "{lines:#?}"
    );
    let debug = [
        format!("{checked:?}"),
        format!("{answer:?}"),
        format!("{:?}", signed(&body, &signature)),
        format!("{reports:?}"),
    ];
    let secret = secret_part(issued.key.expose(), PREFIX);
    for text in lines.iter().chain(&debug) {
        assert!(!text.contains(secret), "the key leaked into {text:?}");
        assert!(
            !text.contains(secret_part(&forged, PREFIX)),
            "the forged token leaked into {text:?}"
        );
    }
}

/// A store failure is 503 with `Retry-After` and no labels, never a `false_positive`;
/// a retry once the store is back revokes the key.
#[tokio::test]
async fn a_store_failure_is_503_not_a_false_positive() {
    let h = Harness::new();
    let issued = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let signer = Signer::new(GITHUB_ID);
    let reports = endpoint(&h.gate, &signer);
    let body = report(&[issued.key.expose()]);
    let signature = signer.sign(body.as_bytes());

    h.store.fail(Op::Get, Failure::Backend);
    let answer = send(&reports, &body, &signature).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.retry_after, Some(keygate::http::RETRY_AFTER_SECS));
    assert!(answer.headers().any(|(name, _)| name == "retry-after"));
    let error = reports.check(signed(&body, &signature)).await.unwrap_err();
    assert!(matches!(error, LeakError::Store(_)), "{error:?}");
    assert!(h.store.record(issued.record.id).await.unwrap().active);

    h.store.heal();
    h.store.fail(Op::Update, Failure::Timeout);
    assert_eq!(send(&reports, &body, &signature).await.status, 503);
    assert!(h.store.record(issued.record.id).await.unwrap().active);

    h.store.heal();
    let answer = send(&reports, &body, &signature).await;
    assert_eq!(answer.status, 200);
    assert_eq!(labels(&answer)[0].2, "true_positive");
    assert!(!h.store.record(issued.record.id).await.unwrap().active);
}

/// `LabelForm::Sha256` names tokens by their SHA-256 (lowercase hex), never raw; keys can
/// be swapped at run time (GitHub rotates them), and the old key is refused after.
#[tokio::test]
async fn hashed_labels_and_key_rotation() {
    let h = Harness::new();
    let issued = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let old = Signer::new(GITHUB_ID);
    let reports = endpoint(&h.gate, &old).label_form(LabelForm::Sha256);
    let body = report(&["abs_garbage"]);
    let answer = send(&reports, &body, &old.sign(body.as_bytes())).await;
    let json: Value = serde_json::from_str(&answer.body).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, b"abs_garbage");
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        json,
        serde_json::json!([{
            "token_hash": hex,
            "token_type": "keygate_api_key",
            "label": "false_positive",
        }])
    );

    let new = Signer::new(GITHUB_ID);
    reports.set_keys(GithubKeys::from_json(keys_document(&[&new]).as_bytes()).unwrap());
    let body = report(&[issued.key.expose()]);
    assert_eq!(
        send(&reports, &body, &old.sign(body.as_bytes()))
            .await
            .status,
        401
    );
    assert!(h.store.record(issued.record.id).await.unwrap().active);
    assert_eq!(
        send(&reports, &body, &new.sign(body.as_bytes()))
            .await
            .status,
        200
    );
    assert!(!h.store.record(issued.record.id).await.unwrap().active);
}

/// The public keys document: GitHub's shape is read from a file, several keys with
/// their `is_current` flags; a document keygate cannot use is refused at load.
#[tokio::test]
async fn public_keys_load_from_githubs_document() {
    let a = Signer::new("a1");
    let b = Signer::new("b2");
    let path = sqlite_temp_path().with_extension("json");
    std::fs::write(&path, keys_document(&[&a, &b])).unwrap();
    let keys = GithubKeys::from_file(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let ids: Vec<(&str, bool)> = keys.identifiers().collect();
    assert_eq!(ids, [("a1", true), ("b2", false)]);
    assert!(GithubKeys::from_file(&path).is_err());

    let broken = keys_document(&[&a]).replace("BEGIN PUBLIC KEY", "BEGIN PRIVATE KEY");
    assert!(GithubKeys::from_json(broken.as_bytes()).is_err());
    let twice = serde_json::json!({ "public_keys": [a.entry(true), a.entry(false)] });
    assert!(GithubKeys::from_json(twice.to_string().as_bytes()).is_err());

    // A report signed with the non-current key is accepted (GitHub may use it while it
    // rotates).
    let h = Harness::new();
    let reports = LeakReports::new(h.gate.clone(), keys);
    let body = report(&["x"]);
    let answer = reports
        .handle(LeakRequest::new(
            [&b"b2"[..]],
            [b.sign(body.as_bytes()).as_bytes()],
            body.as_bytes(),
        ))
        .await;
    assert_eq!(answer.status, 200);
}
