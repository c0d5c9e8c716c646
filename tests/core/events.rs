//! Tracing events: management calls and refusals are reported with the key id and the
//! reason code, and never with the plaintext key or any part of its secret.

// Test code: a panic is how a test reports a failure, and fixtures index and count
// over small known values.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use crate::support::*;
use chrono::TimeDelta;
use keygate::{KeyFormat, NewKey, Rejection};

/// Asserts no captured line holds any of `secrets`.
fn assert_clean(lines: &[String], secrets: &[&str]) {
    for line in lines {
        for secret in secrets {
            assert!(!secret.is_empty());
            assert!(!line.contains(secret), "{secret:?} leaked into {line:?}");
        }
    }
}

fn any_line(lines: &[String], parts: &[&str]) -> bool {
    lines
        .iter()
        .any(|line| parts.iter().all(|part| line.contains(part)))
}

#[tokio::test]
async fn management_events_carry_the_key_id_and_never_the_key() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let h = Harness::new();

    let issued = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let id = issued.record.id.to_string();
    let lines = capture.take();
    assert!(
        any_line(&lines, &["key minted", &id, "alice", "opaque"]),
        "{lines:#?}"
    );

    h.gate.revoke(issued.record.id).await.unwrap();
    let lines = capture.take();
    assert!(any_line(&lines, &["key revoked", &id]), "{lines:#?}");

    h.gate
        .update(issued.record.id, keygate::KeyPatch::new().active(true))
        .await
        .unwrap();
    let lines = capture.take();
    assert!(any_line(&lines, &["key updated", &id]), "{lines:#?}");

    let rotated = h
        .gate
        .rotate(issued.record.id, TimeDelta::minutes(5))
        .await
        .unwrap();
    let new_id = rotated.record.id.to_string();
    let lines = capture.take();
    assert!(
        any_line(&lines, &["key rotated", &id, &new_id]),
        "{lines:#?}"
    );
    assert!(any_line(&lines, &["key minted", &new_id]), "{lines:#?}");

    h.gate.delete(issued.record.id).await.unwrap();
    let lines = capture.take();
    assert!(any_line(&lines, &["key deleted", &id]), "{lines:#?}");

    let jwt = h
        .gate
        .mint(NewKey::new("j", "alice").format(KeyFormat::Jwt))
        .await
        .unwrap();
    let lines = capture.take();
    assert!(
        any_line(&lines, &["key minted", &jwt.record.id.to_string(), "jwt"]),
        "{lines:#?}"
    );

    let old_key = issued.key.expose();
    let new_key = rotated.key.expose();
    let jwt_key = jwt.key.expose();
    assert_clean(
        &capture.lines(),
        &[
            old_key,
            secret_part(old_key, PREFIX),
            new_key,
            secret_part(new_key, PREFIX),
            jwt_key,
            jwt_key.rsplit_once('.').unwrap().1,
        ],
    );
}

#[tokio::test]
async fn refusals_are_reported_with_their_reason_and_never_the_token() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let h = Harness::new();
    let issued = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let id = issued.record.id;
    let key = issued.key.expose().to_owned();
    let jwt = h
        .gate
        .mint(NewKey::new("j", "alice").format(KeyFormat::Jwt))
        .await
        .unwrap();
    let jwt_key = jwt.key.expose().to_owned();
    capture.take();

    let mut leaked: Vec<String> = vec![
        key.clone(),
        secret_part(&key, PREFIX).to_owned(),
        jwt_key.clone(),
        jwt_key.rsplit_once('.').unwrap().1.to_owned(),
    ];

    // After the store lookup: the key id and the reason.
    let wrong = forge_opaque(PREFIX, id, &other_secret(secret_part(&key, PREFIX)));
    leaked.push(wrong.clone());
    leaked.push(secret_part(&wrong, PREFIX).to_owned());
    h.assert_refused(&wrong, Rejection::HashMismatch).await;
    let lines = capture.take();
    assert!(
        any_line(&lines, &[&id.to_string(), "hash_mismatch"]),
        "{lines:#?}"
    );

    h.gate.revoke(id).await.unwrap();
    capture.take();
    h.assert_refused(&key, Rejection::Inactive).await;
    let lines = capture.take();
    assert!(
        any_line(&lines, &[&id.to_string(), "inactive"]),
        "{lines:#?}"
    );

    h.users.set("alice", keygate::Owner::inactive());
    h.assert_refused(&jwt_key, Rejection::OwnerInactive).await;
    let lines = capture.take();
    assert!(
        any_line(&lines, &[&jwt.record.id.to_string(), "owner_inactive"]),
        "{lines:#?}"
    );

    // Before the store: the reason alone.
    let mut typo = key.clone();
    typo.replace_range(20..21, if &key[20..21] == "a" { "b" } else { "a" });
    leaked.push(typo.clone());
    h.assert_refused(&typo, Rejection::BadChecksum).await;
    let lines = capture.take();
    assert!(any_line(&lines, &["bad_checksum"]), "{lines:#?}");

    let forged_jwt = sign_jwt(OTHER_JWT_SECRET, &hs256_header(), &api_claims(id));
    leaked.push(forged_jwt.rsplit_once('.').unwrap().1.to_owned());
    h.assert_refused(&forged_jwt, Rejection::JwtSignature).await;
    let lines = capture.take();
    assert!(any_line(&lines, &["jwt_signature"]), "{lines:#?}");

    // Header problems.
    let header = format!("Bearer {key}");
    let err = h
        .gate
        .verify_headers([header.as_bytes(), header.as_bytes()])
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "multiple_headers");
    let lines = capture.take();
    assert!(any_line(&lines, &["multiple_headers"]), "{lines:#?}");

    // The store failing: reported as unavailable, with the store's error.
    h.store.fail(Op::Get, Failure::Backend);
    let err = h.gate.verify(&key).await.unwrap_err();
    assert_eq!(err.reason(), "store_unavailable");
    let lines = capture.take();
    assert!(
        any_line(&lines, &["WARN", "unavailable", "key store backend failed"]),
        "{lines:#?}"
    );

    let leaked: Vec<&str> = leaked.iter().map(String::as_str).collect();
    assert_clean(&capture.lines(), &leaked);
}

#[tokio::test]
async fn a_successful_verify_logs_nothing_secret() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let h = Harness::new();
    let mut secrets = Vec::new();
    for format in [KeyFormat::Opaque, KeyFormat::Jwt] {
        let issued = h
            .gate
            .mint(NewKey::new("k", "alice").format(format))
            .await
            .unwrap();
        let key = issued.key.expose().to_owned();
        h.gate.verify(&key).await.unwrap();
        h.gate
            .verify_header(&format!("Bearer {key}"))
            .await
            .unwrap();
        secrets.push(key);
    }
    h.gate.flush().await.unwrap();
    drop(h);
    settle().await;
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    assert_clean(&capture.lines(), &secrets);
}

#[tokio::test]
async fn admin_changes_and_refusals_name_the_acting_key_and_owner() {
    use keygate::admin::{AdminApi, AdminRequest};
    use keygate::Owner;

    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let h = Harness::new();
    h.users.set("root", Owner::unrestricted());
    h.users.set("ops", Owner::with_permissions(["admin"]));
    let api = AdminApi::new(h.gate.clone());
    let root_key = h.gate.mint(NewKey::new("root", "root")).await.unwrap();
    let root = h.gate.verify(root_key.key.expose()).await.unwrap();
    let actor = format!(" actor_key_id={}", root.key_id());
    let body_of = |response: &keygate::admin::AdminResponse| -> serde_json::Value {
        assert_eq!(response.status, 200, "{}", response.body);
        serde_json::from_str(&response.body).unwrap()
    };
    capture.take();

    let created = body_of(
        &api.handle(
            &root,
            AdminRequest::Create {
                body: br#"{"name":"k","userId":"alice"}"#,
            },
        )
        .await,
    );
    let id = created["apiKey"]["id"].as_str().unwrap().to_owned();
    let plaintext = created["apiKey"]["apiKey"].as_str().unwrap().to_owned();
    let lines = capture.take();
    assert!(
        any_line(
            &lines,
            &[
                "INFO keygate",
                "admin API change",
                "action=create",
                &format!(" key_id={id}"),
                &actor,
                "actor_owner=root"
            ]
        ),
        "{lines:#?}"
    );

    body_of(
        &api.handle(
            &root,
            AdminRequest::Update {
                id: &id,
                body: br#"{"name":"renamed"}"#,
            },
        )
        .await,
    );
    let lines = capture.take();
    assert!(
        any_line(
            &lines,
            &[
                "admin API change",
                "action=update",
                &format!(" key_id={id}"),
                &actor,
                "actor_owner=root"
            ]
        ),
        "{lines:#?}"
    );

    let rotated = body_of(
        &api.handle(&root, AdminRequest::Rotate { id: &id, body: b"" })
            .await,
    );
    let new_id = rotated["apiKey"]["id"].as_str().unwrap().to_owned();
    let new_plaintext = rotated["apiKey"]["apiKey"].as_str().unwrap().to_owned();
    let lines = capture.take();
    assert!(
        any_line(
            &lines,
            &[
                "admin API change",
                "action=rotate",
                &format!(" key_id={id}"),
                &format!("new_key_id={new_id}"),
                &actor
            ]
        ),
        "{lines:#?}"
    );

    assert_eq!(
        api.handle(&root, AdminRequest::Delete { id: &id })
            .await
            .status,
        200
    );
    let lines = capture.take();
    assert!(
        any_line(
            &lines,
            &[
                "admin API change",
                "action=delete",
                &format!(" key_id={id}"),
                &actor,
                "actor_owner=root"
            ]
        ),
        "{lines:#?}"
    );

    // Refusals: not admin, and an escalation, each with the reason and the actor.
    let alice_key = h
        .gate
        .mint(NewKey::new("a", "alice").scopes(["library:read"]))
        .await
        .unwrap();
    let alice = h.gate.verify(alice_key.key.expose()).await.unwrap();
    let ops_key = h.gate.mint(NewKey::new("o", "ops")).await.unwrap();
    let ops = h.gate.verify(ops_key.key.expose()).await.unwrap();
    capture.take();
    assert_eq!(
        api.handle(&alice, AdminRequest::List { query: None })
            .await
            .status,
        403
    );
    let lines = capture.take();
    assert!(
        any_line(
            &lines,
            &[
                "admin API refused",
                "action=list",
                "reason=not_admin",
                &format!("actor_key_id={}", alice.key_id()),
                "actor_owner=alice"
            ]
        ),
        "{lines:#?}"
    );
    let response = api
        .handle(
            &ops,
            AdminRequest::Update {
                id: &new_id,
                body: br#"{"userId":"ops"}"#,
            },
        )
        .await;
    assert_eq!(response.status, 403, "{}", response.body);
    let lines = capture.take();
    assert!(
        any_line(
            &lines,
            &[
                "WARN keygate",
                "admin API refused",
                "action=update",
                "reason=owner_out_of_reach",
                &format!(" key_id={new_id}"),
                &format!("actor_key_id={}", ops.key_id()),
                "actor_owner=ops"
            ]
        ),
        "{lines:#?}"
    );

    let keys = [
        root_key.key.expose(),
        alice_key.key.expose(),
        ops_key.key.expose(),
        plaintext.as_str(),
        new_plaintext.as_str(),
    ];
    let mut secrets: Vec<&str> = keys.to_vec();
    secrets.extend(keys.iter().map(|k| secret_part(k, PREFIX)));
    assert_clean(&capture.lines(), &secrets);
}
