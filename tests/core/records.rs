//! Refusals decided by the store's record and the owner (after the token checks: the store
//! lookup, the record's own checks, the owner): one store read, no write, the typed reason
//! and a 401; store and directory failures as 503, never as a bad key; expiry edges to the
//! second with a manual clock.

// Test code: a panic is how a test reports a failure, and fixtures index and count
// over small known values.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::error::Error as _;

use crate::support::*;
use chrono::TimeDelta;
use keygate::{
    KeyFormat, KeyId, KeyPatch, KeyRecord, Keygate, NewKey, Owner, Pepper, Rejection, StoreError,
    VerifyError,
};

async fn mint(h: &Harness, new: NewKey) -> (KeyRecord, String) {
    let issued = h.gate.mint(new).await.unwrap();
    (issued.record, issued.key.expose().to_owned())
}

// ---------------------------------------------------------------------------------------
// Record checks
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_valid_key_for_an_id_this_store_never_saw_is_unknown() {
    let h = Harness::new();
    let (_, ours) = mint(&h, NewKey::new("ours", "alice")).await;
    // Same prefix, same pepper, another store: a perfectly valid key, just not ours.
    let elsewhere = Harness::new();
    let (_, theirs) = mint(&elsewhere, NewKey::new("theirs", "alice")).await;
    elsewhere.gate.verify(&theirs).await.unwrap();
    h.assert_refused(&theirs, Rejection::UnknownKey).await;
    // A JWT signed with our secret for an id we never minted.
    let jwt = jwt_with(&api_claims(KeyId::random()));
    h.assert_refused(&jwt, Rejection::UnknownKey).await;
    // A minted JWT from the other gate (same secret, other store).
    let (_, their_jwt) = mint(
        &elsewhere,
        NewKey::new("theirs", "alice").format(KeyFormat::Jwt),
    )
    .await;
    h.assert_refused(&their_jwt, Rejection::UnknownKey).await;
    assert_eq!(h.store.len(), 1);
    h.gate.verify(&ours).await.unwrap();
}

#[tokio::test]
async fn a_revoked_key_is_inactive() {
    let h = Harness::new();
    let (record, key) = mint(&h, NewKey::new("k", "alice")).await;
    let (jwt_record, jwt) = mint(&h, NewKey::new("j", "alice").format(KeyFormat::Jwt)).await;
    h.gate.revoke(record.id).await.unwrap();
    h.gate.revoke(jwt_record.id).await.unwrap();
    h.assert_refused(&key, Rejection::Inactive).await;
    h.assert_refused(&jwt, Rejection::Inactive).await;
    // Minted inactive (Audiobookshelf's isActive: false).
    let (_, dormant) = mint(&h, NewKey::new("d", "alice").active(false)).await;
    h.assert_refused(&dormant, Rejection::Inactive).await;
    assert_eq!(
        h.users.calls(),
        0,
        "the owner is not looked up for a dead key"
    );
}

#[tokio::test]
async fn a_record_past_its_expiry_is_expired() {
    let h = Harness::new();
    let (_, key) = mint(
        &h,
        NewKey::new("k", "alice").expires_in(TimeDelta::hours(1)),
    )
    .await;
    h.clock.advance(TimeDelta::hours(2));
    h.assert_refused(&key, Rejection::Expired).await;
    // A JWT whose record expires before its own `exp` claim: the store is the authority.
    h.clock.set(t0());
    let (record, jwt) = mint(
        &h,
        NewKey::new("j", "alice")
            .format(KeyFormat::Jwt)
            .expires_in(TimeDelta::days(30)),
    )
    .await;
    h.gate
        .update(
            record.id,
            KeyPatch::new().expires_at(Some(t0() - TimeDelta::seconds(1))),
        )
        .await
        .unwrap();
    h.assert_refused(&jwt, Rejection::Expired).await;
}

#[tokio::test]
async fn the_right_id_with_the_wrong_secret_is_a_hash_mismatch() {
    let h = Harness::new();
    let (record, key) = mint(&h, NewKey::new("k", "alice")).await;
    let wrong = forge_opaque(PREFIX, record.id, &other_secret(secret_part(&key, PREFIX)));
    assert!(keygate::checksum_ok(&wrong));
    h.assert_refused(&wrong, Rejection::HashMismatch).await;
    // Revoked or expired keys with a wrong secret: the hash is checked first, so the
    // reason reveals nothing about the record to someone who does not hold the key.
    h.gate.revoke(record.id).await.unwrap();
    h.assert_refused(&wrong, Rejection::HashMismatch).await;
    h.assert_refused(&key, Rejection::Inactive).await;
    assert_eq!(h.users.calls(), 0);
}

#[tokio::test]
async fn a_record_hashed_under_another_pepper_is_a_hash_mismatch() {
    // Gate A mints; its record moves into gate B's store, whose pepper (same version
    // number) differs.
    let a = Harness::new();
    let (record, key) = mint(&a, NewKey::new("k", "alice")).await;
    let b = Harness::with_pepper(
        Pepper::new(1, b"a completely different pepper, 32+ bytes").unwrap(),
        |b| b,
    );
    b.gate.import(record.clone()).await.unwrap();
    assert_eq!(b.store.record(record.id).await.unwrap(), record);
    b.assert_refused(&key, Rejection::HashMismatch).await;
    a.gate.verify(&key).await.unwrap();
}

#[tokio::test]
async fn a_minted_jwt_is_bound_to_its_exact_token() {
    let h = Harness::new();
    let (record, jwt) = mint(&h, NewKey::new("j", "alice").format(KeyFormat::Jwt)).await;
    assert!(record.hash.is_some());
    // Another correctly signed token for the same keyId (different iat): the signature
    // proves origin, but the record only accepts the token it was minted as.
    let mut claims = jwt_claims(&jwt);
    claims["iat"] = serde_json::json!(claims["iat"].as_i64().unwrap() + 1);
    h.assert_refused(&jwt_with(&claims), Rejection::HashMismatch)
        .await;
    h.gate.verify(&jwt).await.unwrap();
}

#[tokio::test]
async fn an_imported_audiobookshelf_jwt_rests_on_its_signature() {
    let h = Harness::new();
    let id = KeyId::random();
    let record = KeyRecord::new(
        id,
        KeyFormat::Jwt,
        "Imported from Audiobookshelf",
        "alice",
        t0(),
    );
    h.gate.import(record).await.unwrap();
    let mut claims = api_claims(id);
    claims["name"] = serde_json::json!("a name the token claims");
    let token = jwt_with(&claims);
    let principal = h.gate.verify(&token).await.unwrap();
    assert_eq!(principal.key_id(), id);
    assert_eq!(
        principal.key_name(),
        "Imported from Audiobookshelf",
        "the name comes from the record, never from the token"
    );
    assert_eq!(principal.format(), KeyFormat::Jwt);
    // Still refused when signed with anything else.
    h.assert_refused(
        &sign_jwt(OTHER_JWT_SECRET, &hs256_header(), &claims),
        Rejection::JwtSignature,
    )
    .await;
}

#[tokio::test]
async fn a_record_of_the_other_format_is_a_format_mismatch() {
    let a = Harness::new();
    let (opaque, key) = mint(&a, NewKey::new("k", "alice")).await;
    let (jwt_record, jwt) = mint(&a, NewKey::new("j", "alice").format(KeyFormat::Jwt)).await;

    let b = Harness::new();
    // The opaque key's record, imported as a JWT record: the opaque key no longer fits it.
    b.gate
        .import({
            let mut record = opaque.clone();
            record.format = KeyFormat::Jwt;
            record
        })
        .await
        .unwrap();
    b.assert_refused(&key, Rejection::FormatMismatch).await;
    // ... and neither does a JWT for that id (its hash is of the opaque secret).
    let forged_jwt = jwt_with(&api_claims(opaque.id));
    b.assert_refused(&forged_jwt, Rejection::HashMismatch).await;

    // The JWT's record, imported as an opaque record.
    b.gate
        .import({
            let mut record = jwt_record.clone();
            record.format = KeyFormat::Opaque;
            record
        })
        .await
        .unwrap();
    b.assert_refused(&jwt, Rejection::FormatMismatch).await;
    // An opaque key forged for the JWT's id does not fit either.
    let forged = forge_opaque(PREFIX, jwt_record.id, &"f".repeat(SECRET_LEN));
    b.assert_refused(&forged, Rejection::HashMismatch).await;

    // Opaque key against a hash-less JWT record: a format mismatch, not a free pass.
    let c = Harness::new();
    c.gate
        .import({
            let mut record = opaque.clone();
            record.format = KeyFormat::Jwt;
            record.hash = None;
            record
        })
        .await
        .unwrap();
    c.assert_refused(&key, Rejection::FormatMismatch).await;
}

#[tokio::test]
async fn an_opaque_record_without_a_hash_is_corrupt() {
    let h = Harness::new();
    let (record, key) = mint(&Harness::new(), NewKey::new("k", "alice")).await;
    // `import` refuses it; a store may still hold one (e.g. a botched migration).
    let err = h
        .gate
        .import({
            let mut record = record.clone();
            record.hash = None;
            record
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, keygate::Error::InvalidInput { field: "hash", .. }),
        "{err:?}"
    );
    assert!(h.store.is_empty());
    h.store
        .put({
            let mut record = record;
            record.hash = None;
            record
        })
        .await;
    assert_corrupt(&h.gate, &h.store, &key).await;
}

// ---------------------------------------------------------------------------------------
// Records that fail validation: refused, as a server error (fail closed, never open)
// ---------------------------------------------------------------------------------------

/// Verifies `token` and asserts it is refused as a corrupt record: `StoreCorrupt` with a
/// `Corrupt` source, HTTP 500 without `Retry-After` or a challenge, and nothing written.
async fn assert_corrupt(gate: &Keygate, store: &CountingStore, token: &str) -> VerifyError {
    settle().await;
    let writes = store.calls().writes();
    let records = store.all().await;
    let err = gate.verify(token).await.unwrap_err();
    assert!(
        matches!(err, VerifyError::StoreCorrupt(StoreError::Corrupt(_))),
        "{}: expected StoreCorrupt, got {err:?}",
        show(token)
    );
    assert_eq!(err.reason(), "store_corrupt");
    assert_eq!(err.rejection(), None);
    assert!(
        !err.is_unavailable(),
        "retrying does not fix a corrupt record"
    );
    assert!(err.is_server_error());
    let http = gate.http_outcome(&err);
    assert_eq!(http.status, 500);
    assert_eq!(http.retry_after, None);
    assert_eq!(http.www_authenticate, None);
    assert!(serde_json::from_str::<serde_json::Value>(http.body).is_ok());
    settle().await;
    assert_eq!(store.calls().writes(), writes, "a refused key wrote");
    assert_eq!(store.all().await, records);
    err
}

/// A gate over `h`'s store and clock with no user directory: every owner unrestricted, so
/// a record's owner is all that stands between a key and every permission.
fn without_directory(h: &Harness) -> Keygate {
    builder(&h.store, &h.clock)
        .jwt_secret(jwt_secret())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_record_that_fails_validation_is_a_500_never_accepted() {
    let (good, key) = mint(&Harness::new(), NewKey::new("k", "alice")).await;
    let (good_jwt, jwt) = mint(
        &Harness::new(),
        NewKey::new("j", "alice").format(KeyFormat::Jwt),
    )
    .await;
    let far = chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 10000, 1, 1, 0, 0, 0).unwrap();
    type Edit = fn(&mut KeyRecord, chrono::DateTime<chrono::Utc>);
    let cases: [(&str, Edit); 8] = [
        ("empty owner", |r, _| r.owner = String::new()),
        ("blank owner", |r, _| r.owner = " \t ".into()),
        ("owner with an escape sequence", |r, _| {
            r.owner = "alice\u{1b}]0;pwned\u{7}".into()
        }),
        ("owner with a NUL", |r, _| r.owner = "alice\0".into()),
        ("2 KB owner", |r, _| r.owner = "a".repeat(2048)),
        ("expiry in year 10000", |r, at| r.expires_at = Some(at)),
        ("last use in year 10000", |r, at| r.last_used_at = Some(at)),
        ("creation in year 10000", |r, at| r.created_at = at),
    ];
    for (what, edit) in cases {
        for (record, token) in [(&good, &key), (&good_jwt, &jwt)] {
            let h = Harness::new();
            let mut bad = record.clone();
            edit(&mut bad, far);
            h.store.put(bad).await;
            for gate in [&h.gate, &without_directory(&h)] {
                let err = assert_corrupt(gate, &h.store, token).await;
                let source = std::error::Error::source(&err).and_then(|s| s.source());
                let invalid = source.and_then(|s| s.downcast_ref::<keygate::InvalidRecord>());
                assert!(invalid.is_some(), "{what}: {source:?}");
            }
            assert_eq!(h.users.calls(), 0, "{what}: the owner was looked up");
        }
    }
}

/// A store that answers every `get` with one fixed result, whatever id was asked for: a
/// third-party store with a bug, or a row under the wrong key.
struct Fixed(Result<KeyRecord, fn() -> StoreError>);

#[async_trait::async_trait]
impl keygate::KeyStore for Fixed {
    async fn insert(&self, _: KeyRecord) -> Result<(), StoreError> {
        Ok(())
    }
    async fn get(&self, _: KeyId) -> Result<Option<std::sync::Arc<KeyRecord>>, StoreError> {
        match &self.0 {
            Ok(record) => Ok(Some(std::sync::Arc::new(record.clone()))),
            Err(error) => Err(error()),
        }
    }
    async fn update(&self, _: KeyId, _: &KeyPatch) -> Result<Option<KeyRecord>, StoreError> {
        Ok(None)
    }
    async fn delete(&self, _: KeyId) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn list(&self, _: &keygate::ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(vec![])
    }
    async fn record_last_used(
        &self,
        _: &[(KeyId, chrono::DateTime<chrono::Utc>)],
    ) -> Result<(), StoreError> {
        Ok(())
    }
    async fn remember_pepper(
        &self,
        _: u32,
        _: keygate::PepperFingerprint,
    ) -> Result<Option<keygate::PepperFingerprint>, StoreError> {
        Ok(None)
    }
}

fn fixed_gate(store: Fixed) -> Keygate {
    Keygate::builder(store, Pepper::new(1, PEPPER_V1).unwrap())
        .prefix(PREFIX)
        .jwt_secret(jwt_secret())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_record_for_another_id_is_a_500() {
    let h = Harness::new();
    let (record, key) = mint(&h, NewKey::new("k", "alice")).await;
    let (jwt_record, jwt) = mint(&h, NewKey::new("j", "alice").format(KeyFormat::Jwt)).await;
    // The store answers with record X whatever it is asked; asked for X itself, fine.
    for (record, token) in [(&record, &key), (&jwt_record, &jwt)] {
        let gate = fixed_gate(Fixed(Ok(record.clone())));
        assert_eq!(gate.verify(token).await.unwrap().key_id(), record.id);
        // Asked for another id, with a key that really carries X's secret.
        let other = KeyId::random();
        let token = match record.format {
            KeyFormat::Opaque => forge_opaque(PREFIX, other, secret_part(token, PREFIX)),
            _ => jwt_with(&api_claims(other)),
        };
        let err = gate.verify(&token).await.unwrap_err();
        assert!(matches!(err, VerifyError::StoreCorrupt(_)), "{err:?}");
        let http = gate.http_outcome(&err);
        assert_eq!((http.status, http.retry_after), (500, None));
    }
}

#[tokio::test]
async fn a_store_reporting_corruption_is_a_500_not_a_503() {
    let gate = fixed_gate(Fixed(Err(|| StoreError::Corrupt("unreadable row".into()))));
    let token = forge_opaque(PREFIX, KeyId::random(), &"c".repeat(SECRET_LEN));
    let err = gate.verify(&token).await.unwrap_err();
    assert!(
        matches!(err, VerifyError::StoreCorrupt(StoreError::Corrupt(_))),
        "{err:?}"
    );
    let http = gate.http_outcome(&err);
    assert_eq!(http.status, 500);
    assert_eq!(
        http.retry_after, None,
        "a retry cannot fix a corrupt record"
    );
    // Any other store failure stays 503 with Retry-After.
    let gate = fixed_gate(Fixed(Err(|| StoreError::Timeout)));
    let err = gate.verify(&token).await.unwrap_err();
    assert_eq!(gate.http_outcome(&err).status, 503);
}

#[tokio::test(flavor = "current_thread")]
async fn a_corrupt_record_is_logged_as_an_error_with_its_key_id() {
    let h = Harness::new();
    let (record, key) = mint(&Harness::new(), NewKey::new("k", "alice")).await;
    h.store
        .put({
            let mut record = record.clone();
            record.owner = String::new();
            record
        })
        .await;
    let events = Capture::default();
    let guard = tracing::subscriber::set_default(events.clone());
    let _ = h.gate.verify(&key).await.unwrap_err();
    drop(guard);
    let lines = events.lines();
    let id = record.id.to_string();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ERROR") && l.contains(&id) && l.contains("owner")),
        "{lines:#?}"
    );
    let secret = secret_part(&key, PREFIX);
    assert!(lines.iter().all(|l| !l.contains(secret)));
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_renders_a_corrupt_record_as_500() {
    use axum::body::Body;
    use axum::http::{header, Request};
    use tower::ServiceExt;
    let h = Harness::new();
    let (record, key) = mint(&Harness::new(), NewKey::new("k", "alice")).await;
    h.store
        .put({
            let mut record = record;
            record.owner = String::new();
            record
        })
        .await;
    async fn me(principal: keygate::Principal) -> String {
        principal.owner_id().to_owned()
    }
    let app = axum::Router::new()
        .route("/me", axum::routing::get(me))
        .with_state(without_directory(&h));
    let request = Request::get("/me")
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status().as_u16(), 500);
    assert!(response.headers().get(header::RETRY_AFTER).is_none());
    assert!(response.headers().get(header::WWW_AUTHENTICATE).is_none());
}

#[cfg(feature = "actix")]
#[test]
fn actix_renders_a_corrupt_record_as_500() {
    actix_web::rt::System::new().block_on(actix_corrupt());
}

#[cfg(feature = "actix")]
async fn actix_corrupt() {
    use actix_web::{test, web, App};
    let h = Harness::new();
    let (record, key) = mint(&Harness::new(), NewKey::new("k", "alice")).await;
    h.store
        .put({
            let mut record = record;
            record.owner = String::new();
            record
        })
        .await;
    async fn me(principal: keygate::Principal) -> String {
        principal.owner_id().to_owned()
    }
    let app = test::init_service(
        App::new()
            .app_data(web::Data::new(without_directory(&h)))
            .route("/me", web::get().to(me)),
    )
    .await;
    let request = test::TestRequest::get()
        .uri("/me")
        .insert_header(("Authorization", format!("Bearer {key}")))
        .to_request();
    let response = test::call_service(&app, request).await;
    assert_eq!(response.status().as_u16(), 500);
    assert!(response.headers().get("retry-after").is_none());
    assert!(response.headers().get("www-authenticate").is_none());
}

// ---------------------------------------------------------------------------------------
// The stored hash is bound to the key (prefix and id)
// ---------------------------------------------------------------------------------------

/// `HMAC-SHA256(pepper v1, input)`, computed here without keygate's code.
fn hmac_v1(input: &[u8]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, PEPPER_V1);
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::hmac::sign(&key, input).as_ref());
    out
}

/// The key without its 6-character checksum: what a bound hash covers.
fn bound_part(key: &str) -> &str {
    &key[..key.len() - CHECKSUM_LEN]
}

#[tokio::test]
async fn a_digest_copied_to_another_row_authenticates_nothing() {
    let h = Harness::new();
    h.users
        .set("mallory", Owner::with_permissions(["library:read"]));
    let (mine, my_key) = mint(&h, NewKey::new("mine", "mallory")).await;
    let (theirs, their_key) = mint(&h, NewKey::new("root's", "alice")).await;
    // Mallory, with a write primitive on the hash column only, copies her digest into
    // alice's row and presents her own secret under alice's id.
    let mut copy = theirs.clone();
    copy.hash = mine.hash.clone();
    assert!(keygate::KeyStore::delete(&*h.store, theirs.id)
        .await
        .unwrap());
    keygate::KeyStore::insert(&*h.store, copy).await.unwrap();
    let transplanted = forge_opaque(PREFIX, theirs.id, secret_part(&my_key, PREFIX));
    h.assert_refused(&transplanted, Rejection::HashMismatch)
        .await;
    // The digest is of mallory's whole key, so it does not fit alice's real key either.
    h.assert_refused(&their_key, Rejection::HashMismatch).await;
    h.gate.verify(&my_key).await.unwrap();
    let stored = h.store.record(mine.id).await.unwrap().hash.unwrap();
    assert_eq!(stored.scheme, keygate::HashScheme::Bound);
    assert_eq!(stored.digest, hmac_v1(bound_part(&my_key).as_bytes()));
}

#[tokio::test]
async fn the_same_body_under_another_prefix_is_refused() {
    // Two applications sharing one store and pepper, with different prefixes.
    let h = Harness::new();
    let (_, key) = mint(&h, NewKey::new("k", "alice")).await;
    let other_app = h.sibling(|b| b.prefix("xyz"));
    let body = &key[PREFIX.len() + 1..];
    let renamed = forge_raw("xyz", &body[..ID_LEN], &body[ID_LEN..ID_LEN + SECRET_LEN]);
    assert!(keygate::checksum_ok(&renamed));
    assert_refused_by(
        &other_app,
        &h.store,
        &h.users,
        &renamed,
        Rejection::HashMismatch,
    )
    .await;
    h.gate.verify(&key).await.unwrap();
}

#[tokio::test]
async fn a_legacy_digest_verifies_once_and_is_stored_bound_afterwards() {
    let h = Harness::new();
    let (minted, key) = mint(&Harness::new(), NewKey::new("k", "alice")).await;
    // As keygate stored it before binding: HMAC of the secret part alone, no scheme.
    let mut json = serde_json::to_value(&minted).unwrap();
    json["hash"] = serde_json::json!({
        "version": 1,
        "digest": hmac_v1(secret_part(&key, PREFIX).as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    });
    let legacy: KeyRecord = serde_json::from_value(json).unwrap();
    assert_eq!(
        legacy.hash.as_ref().unwrap().scheme,
        keygate::HashScheme::Secret
    );
    h.store.put(legacy.clone()).await;
    h.gate.verify(&key).await.unwrap();
    h.gate.flush().await.unwrap();
    let stored = h.store.record(minted.id).await.unwrap();
    let hash = stored.hash.clone().unwrap();
    assert_eq!(hash.scheme, keygate::HashScheme::Bound);
    assert_eq!(hash.version, 1);
    assert_eq!(hash.digest, hmac_v1(bound_part(&key).as_bytes()));
    // Only the hash changed (and the last use).
    assert_eq!(
        {
            let mut record = stored;
            record.hash = legacy.hash.clone();
            record.last_used_at = None;
            record
        },
        legacy
    );
    h.gate.verify(&key).await.unwrap();
    // No second re-hash: the hash is current now.
    let updates = h.store.calls().update;
    h.clock.advance(TimeDelta::hours(1));
    h.gate.verify(&key).await.unwrap();
    h.gate.flush().await.unwrap();
    assert_eq!(h.store.calls().update, updates);
    // A legacy digest under the old pepper comes over to the current pepper and scheme
    // in one re-hash.
    let rotated = Harness::with_pepper(
        Pepper::new(2, PEPPER_V2)
            .unwrap()
            .with_previous(1, PEPPER_V1)
            .unwrap(),
        |b| b,
    );
    rotated.store.put(legacy).await;
    rotated.gate.verify(&key).await.unwrap();
    rotated.gate.flush().await.unwrap();
    let hash = rotated.store.record(minted.id).await.unwrap().hash.unwrap();
    assert_eq!((hash.version, hash.scheme), (2, keygate::HashScheme::Bound));
    rotated.gate.verify(&key).await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Owner checks
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_owner_the_directory_does_not_know_is_owner_unknown() {
    let h = Harness::new();
    let (_, key) = mint(&h, NewKey::new("k", "ghost")).await;
    let (_, jwt) = mint(&h, NewKey::new("j", "ghost").format(KeyFormat::Jwt)).await;
    h.assert_refused(&key, Rejection::OwnerUnknown).await;
    h.assert_refused(&jwt, Rejection::OwnerUnknown).await;
    assert_eq!(h.users.calls(), 2);
    // A user deleted after minting.
    h.users
        .set("bob", Owner::with_permissions(["library:read"]));
    let (_, bobs) = mint(&h, NewKey::new("k", "bob")).await;
    h.gate.verify(&bobs).await.unwrap();
    settle().await;
    h.users.remove("bob");
    h.assert_refused(&bobs, Rejection::OwnerUnknown).await;
}

#[tokio::test]
async fn an_inactive_owner_is_owner_inactive() {
    let h = Harness::new();
    h.users.set("mallory", Owner::inactive());
    let (_, key) = mint(&h, NewKey::new("k", "mallory")).await;
    let (_, jwt) = mint(&h, NewKey::new("j", "mallory").format(KeyFormat::Jwt)).await;
    h.assert_refused(&key, Rejection::OwnerInactive).await;
    h.assert_refused(&jwt, Rejection::OwnerInactive).await;
}

// ---------------------------------------------------------------------------------------
// Store and directory failures
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_failing_store_is_unavailable_never_an_invalid_key() {
    for failure in [Failure::Backend, Failure::Timeout] {
        let h = Harness::new();
        let (_, key) = mint(&h, NewKey::new("k", "alice")).await;
        let (_, jwt) = mint(&h, NewKey::new("j", "alice").format(KeyFormat::Jwt)).await;
        let unknown = forge_opaque(PREFIX, KeyId::random(), &"u".repeat(SECRET_LEN));
        let records = h.store.all().await;
        h.store.fail(Op::Get, failure);
        let calls = h.store.calls();
        for token in [&key, &jwt, &unknown] {
            let err = h.gate.verify(token).await.unwrap_err();
            let VerifyError::StoreUnavailable(source) = &err else {
                panic!(
                    "{failure:?} {}: expected StoreUnavailable, got {err:?}",
                    show(token)
                );
            };
            match failure {
                Failure::Timeout => assert!(matches!(source, StoreError::Timeout)),
                Failure::Backend => {
                    assert!(matches!(source, StoreError::Backend(_)));
                    // The backend's own error is kept as the source chain.
                    let root = err.source().and_then(|s| s.source()).unwrap();
                    assert_eq!(root.to_string(), "database is down");
                }
            }
            assert!(err.is_unavailable());
            assert_eq!(err.rejection(), None);
            assert_eq!(err.reason(), "store_unavailable");
            let http = err.http("abs");
            assert_eq!(http.status, 503);
            assert_eq!(http.retry_after, Some(keygate::http::RETRY_AFTER_SECS));
            assert_eq!(http.www_authenticate, None);
        }
        settle().await;
        let after = h.store.calls();
        assert_eq!(after.get, calls.get + 3);
        assert_eq!(after.writes(), calls.writes());
        assert_eq!(h.users.calls(), 0);
        // Garbage is still refused as garbage: the store is not needed to say so.
        let mut typo = key.clone();
        typo.replace_range(30..31, if &key[30..31] == "a" { "b" } else { "a" });
        h.assert_refused(&typo, Rejection::BadChecksum).await;
        h.store.heal();
        h.gate.verify(&key).await.unwrap();
        h.gate.verify(&jwt).await.unwrap();
        assert_eq!(h.store.all().await.len(), records.len());
    }
}

#[tokio::test]
async fn a_hanging_store_times_out_as_unavailable() {
    // A store that never answers, behind `store_timeout`.
    struct Hanging;
    #[async_trait::async_trait]
    impl keygate::KeyStore for Hanging {
        async fn insert(&self, _: KeyRecord) -> Result<(), StoreError> {
            Ok(())
        }
        async fn get(&self, _: KeyId) -> Result<Option<std::sync::Arc<KeyRecord>>, StoreError> {
            std::future::pending().await
        }
        async fn update(&self, _: KeyId, _: &KeyPatch) -> Result<Option<KeyRecord>, StoreError> {
            Ok(None)
        }
        async fn delete(&self, _: KeyId) -> Result<bool, StoreError> {
            Ok(false)
        }
        async fn list(&self, _: &keygate::ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
            Ok(vec![])
        }
        async fn record_last_used(
            &self,
            _: &[(KeyId, chrono::DateTime<chrono::Utc>)],
        ) -> Result<(), StoreError> {
            Ok(())
        }
        async fn remember_pepper(
            &self,
            _: u32,
            _: keygate::PepperFingerprint,
        ) -> Result<Option<keygate::PepperFingerprint>, StoreError> {
            Ok(None)
        }
    }
    let gate = Keygate::builder(Hanging, Pepper::new(1, PEPPER_V1).unwrap())
        .prefix(PREFIX)
        .store_timeout(std::time::Duration::from_millis(50))
        .build()
        .unwrap();
    let issued = gate.mint(NewKey::new("k", "alice")).await.unwrap();
    let started = std::time::Instant::now();
    let err = gate.verify(issued.key.expose()).await.unwrap_err();
    assert!(
        matches!(err, VerifyError::StoreUnavailable(StoreError::Timeout)),
        "{err:?}"
    );
    assert_eq!(err.http("abs").status, 503);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn a_failing_directory_is_unavailable_never_an_invalid_key() {
    let h = Harness::new();
    let (record, key) = mint(&h, NewKey::new("k", "alice")).await;
    let (_, jwt) = mint(&h, NewKey::new("j", "alice").format(KeyFormat::Jwt)).await;
    h.users.fail(true);
    let calls = h.store.calls();
    for token in [&key, &jwt] {
        let err = h.gate.verify(token).await.unwrap_err();
        assert!(
            matches!(err, VerifyError::DirectoryUnavailable(_)),
            "{err:?}"
        );
        assert!(err.is_unavailable());
        assert_eq!(err.rejection(), None);
        assert_eq!(err.reason(), "directory_unavailable");
        let root = err.source().and_then(|s| s.source()).unwrap();
        assert_eq!(root.to_string(), "directory is down");
        let http = err.http("abs");
        assert_eq!(http.status, 503);
        assert_eq!(http.retry_after, Some(keygate::http::RETRY_AFTER_SECS));
        assert_eq!(http.www_authenticate, None);
    }
    settle().await;
    assert_eq!(
        h.store.calls().writes(),
        calls.writes(),
        "no last-used write"
    );
    assert_eq!(h.users.calls(), 2);
    // A bad key is still a bad key: the directory is not consulted for it.
    let wrong = forge_opaque(PREFIX, record.id, &"w".repeat(SECRET_LEN));
    h.assert_refused(&wrong, Rejection::HashMismatch).await;
    h.users.fail(false);
    h.gate.verify(&key).await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Expiry edges
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_opaque_key_works_until_the_second_before_expiry() {
    let h = Harness::new();
    let (record, key) = mint(
        &h,
        NewKey::new("k", "alice").expires_in(TimeDelta::hours(1)),
    )
    .await;
    let expires_at = t0() + TimeDelta::hours(1);
    assert_eq!(record.expires_at, Some(expires_at));
    h.clock.set(expires_at - TimeDelta::seconds(1));
    let principal = h.gate.verify(&key).await.unwrap();
    assert_eq!(principal.expires_at(), Some(expires_at));
    h.clock.set(expires_at - TimeDelta::microseconds(1));
    h.gate.verify(&key).await.unwrap();
    settle().await;
    h.clock.set(expires_at);
    h.assert_refused(&key, Rejection::Expired).await;
    h.clock.set(expires_at + TimeDelta::seconds(1));
    h.assert_refused(&key, Rejection::Expired).await;
    // Moving the clock back brings it back: expiry is a comparison, not a state change.
    h.clock.set(expires_at - TimeDelta::seconds(1));
    h.gate.verify(&key).await.unwrap();
}

#[tokio::test]
async fn an_opaque_key_with_an_absolute_expiry() {
    let h = Harness::new();
    let at = t0() + TimeDelta::minutes(5);
    let (record, key) = mint(&h, NewKey::new("k", "alice").expires_at(at)).await;
    assert_eq!(record.expires_at, Some(at));
    h.clock.set(at - TimeDelta::seconds(1));
    h.gate.verify(&key).await.unwrap();
    settle().await;
    h.clock.set(at);
    h.assert_refused(&key, Rejection::Expired).await;
}

#[tokio::test]
async fn a_jwt_key_works_until_the_second_before_expiry() {
    let h = Harness::new();
    let (record, jwt) = mint(
        &h,
        NewKey::new("j", "alice")
            .format(KeyFormat::Jwt)
            .expires_in(TimeDelta::hours(1)),
    )
    .await;
    let expires_at = t0() + TimeDelta::hours(1);
    assert_eq!(record.expires_at, Some(expires_at));
    let claims = jwt_claims(&jwt);
    assert_eq!(claims["exp"], serde_json::json!(expires_at.timestamp()));
    assert_eq!(claims["iat"], serde_json::json!(t0().timestamp()));
    assert_eq!(claims["type"], serde_json::json!("api"));
    assert_eq!(claims["keyId"], serde_json::json!(record.id.to_string()));

    h.clock.set(expires_at - TimeDelta::seconds(1));
    h.gate.verify(&jwt).await.unwrap();
    settle().await;
    // The token's own `exp` equals the record's expiry, and the token is checked first.
    h.clock.set(expires_at);
    h.assert_refused(&jwt, Rejection::JwtExpired).await;
    h.clock.set(expires_at + TimeDelta::days(1));
    h.assert_refused(&jwt, Rejection::JwtExpired).await;
}

#[tokio::test]
async fn a_jwt_record_expiring_before_its_token_is_expired_at_the_record_edge() {
    let h = Harness::new();
    let (record, jwt) = mint(
        &h,
        NewKey::new("j", "alice")
            .format(KeyFormat::Jwt)
            .expires_in(TimeDelta::hours(1)),
    )
    .await;
    let edge = t0() + TimeDelta::minutes(30);
    h.gate
        .update(record.id, KeyPatch::new().expires_at(Some(edge)))
        .await
        .unwrap();
    h.clock.set(edge - TimeDelta::seconds(1));
    h.gate.verify(&jwt).await.unwrap();
    settle().await;
    h.clock.set(edge);
    h.assert_refused(&jwt, Rejection::Expired).await;
    // Extending the record does not outlive the token's own `exp`.
    h.gate
        .update(record.id, KeyPatch::new().expires_at(None))
        .await
        .unwrap();
    h.gate.verify(&jwt).await.unwrap();
    settle().await;
    h.clock.set(t0() + TimeDelta::hours(1));
    h.assert_refused(&jwt, Rejection::JwtExpired).await;
}

#[tokio::test]
async fn a_jwt_expiry_with_a_fraction_of_a_second_is_cut_to_whole_seconds() {
    // A JWT carries whole seconds; the record must agree with the token.
    let h = Harness::new();
    let at = t0() + TimeDelta::seconds(90) + TimeDelta::milliseconds(700);
    let (record, jwt) = mint(
        &h,
        NewKey::new("j", "alice")
            .format(KeyFormat::Jwt)
            .expires_at(at),
    )
    .await;
    let whole = t0() + TimeDelta::seconds(90);
    assert_eq!(record.expires_at, Some(whole));
    assert_eq!(
        jwt_claims(&jwt)["exp"],
        serde_json::json!(whole.timestamp())
    );
    h.clock.set(whole - TimeDelta::seconds(1));
    h.gate.verify(&jwt).await.unwrap();
    settle().await;
    h.clock.set(whole);
    h.assert_refused(&jwt, Rejection::JwtExpired).await;
}
