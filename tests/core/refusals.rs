//! Refusals the token alone proves (its format and checksum, or its JWT signature and
//! claims): each with its exact input and typed reason, a 401, and no store read or write. Also configuration refusals at build time.

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
use keygate::{BuildError, KeyFormat, KeyId, Keygate, MemoryStore, NewKey, Pepper, Rejection};
use serde_json::json;

async fn opaque_key(h: &Harness) -> String {
    let issued = h.gate.mint(NewKey::new("k", "alice")).await.unwrap();
    issued.key.expose().to_owned()
}

async fn jwt_key(h: &Harness) -> (KeyId, String) {
    let issued = h
        .gate
        .mint(NewKey::new("k", "alice").format(KeyFormat::Jwt))
        .await
        .unwrap();
    (issued.record.id, issued.key.expose().to_owned())
}

// ---------------------------------------------------------------------------------------
// Opaque keys
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_key_with_another_prefix_is_wrong_prefix() {
    let h = Harness::new();
    let key = opaque_key(&h).await;
    // Genuine keys of other applications, each with a correct checksum of its own.
    for prefix in ["abt", "ab", "absx", "a", "xabs"] {
        let other = Harness::with(|b| b.prefix(prefix));
        let foreign = opaque_key(&other).await;
        assert!(keygate::checksum_ok(&foreign), "{foreign}");
        h.assert_refused(&foreign, Rejection::WrongPrefix).await;
    }
    h.assert_refused(&key.to_uppercase(), Rejection::WrongPrefix)
        .await;
    // Without the `_` separator it is not a prefixed key at all.
    h.assert_refused(&key.replacen("abs_", "abs-", 1), Rejection::Malformed)
        .await;
    h.assert_refused(&key[1..], Rejection::WrongPrefix).await;
    h.assert_refused(&key[4..], Rejection::Malformed).await;
    // A forged key for prefix `abt` with a valid checksum for `abt`.
    let forged = forge_opaque("abt", KeyId::random(), &"q".repeat(SECRET_LEN));
    h.assert_refused(&forged, Rejection::WrongPrefix).await;
    // The genuine key still verifies: the refusals above changed nothing.
    h.gate.verify(&key).await.unwrap();
}

#[tokio::test]
async fn a_typo_is_bad_checksum() {
    let h = Harness::new();
    let key = opaque_key(&h).await;
    let swap = |i: usize| {
        let mut bytes = key.clone().into_bytes();
        bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
        String::from_utf8(bytes).unwrap()
    };
    // One typo in the id, the secret and the checksum part.
    h.assert_refused(&swap(4), Rejection::BadChecksum).await;
    h.assert_refused(&swap(4 + ID_LEN), Rejection::BadChecksum)
        .await;
    h.assert_refused(&swap(key.len() - 1), Rejection::BadChecksum)
        .await;
    // Two neighbours swapped.
    let mut bytes = key.clone().into_bytes();
    let i = (30..60).find(|&i| bytes[i] != bytes[i + 1]).unwrap();
    bytes.swap(i, i + 1);
    h.assert_refused(&String::from_utf8(bytes).unwrap(), Rejection::BadChecksum)
        .await;
    // A checksum of the right shape but for other content.
    let other = opaque_key(&h).await;
    let spliced = format!("{}{}", &key[..key.len() - 6], &other[other.len() - 6..]);
    h.assert_refused(&spliced, Rejection::BadChecksum).await;
}

#[tokio::test]
async fn shapes_that_are_not_keys_are_malformed() {
    let h = Harness::new();
    let key = opaque_key(&h).await;
    let body_at = |i: usize, c: char| {
        let mut s = key.clone();
        s.replace_range(i..i + 1, &c.to_string());
        s
    };
    let cases: Vec<(&str, String)> = vec![
        ("one character short", key[..key.len() - 1].to_owned()),
        ("one character long", format!("{key}A")),
        ("prefix only", "abs_".to_owned()),
        (
            "empty body part of a real key",
            key[..4 + ID_LEN].to_owned(),
        ),
        ("a dash in the body", body_at(20, '-')),
        ("an underscore in the body", body_at(20, '_')),
        ("a plus in the body", body_at(20, '+')),
        ("a space in the body", body_at(20, ' ')),
        ("a non-ASCII letter", format!("{}é", &key[..key.len() - 2])),
        ("a NUL byte", body_at(40, '\0')),
        (
            "oversize without a dot",
            "a".repeat(keygate::bounds::MAX_OPAQUE_LEN + 1),
        ),
        (
            "oversize with the prefix",
            format!("{key}{}", "A".repeat(10_000)),
        ),
        ("a dot: not a JWT", format!("{key}.x")),
        ("two dots: not a JWT", "abs_a.b".to_owned()),
        ("four JWT parts", "a.b.c.d".to_owned()),
        (
            "oversize JWT",
            format!("{}.{}.x", "a".repeat(10_000), "b".repeat(10_000)),
        ),
    ];
    for (what, token) in cases {
        println!("{what}");
        h.assert_refused(&token, Rejection::Malformed).await;
    }
    // An id part above u128::MAX with a correct checksum: the checksum passes, the id
    // cannot be a UUID.
    let overflow = forge_raw(PREFIX, &"z".repeat(ID_LEN), &"a".repeat(SECRET_LEN));
    h.assert_refused(&overflow, Rejection::Malformed).await;
}

#[tokio::test]
async fn hand_forged_keys_follow_the_documented_format() {
    // The forger follows the design (base62 id, 43 secret chars, base62 CRC32 of everything
    // before it); a key it builds for a never-minted id passes the checksum and reaches the
    // store, which does not know it.
    let h = Harness::new();
    let key = opaque_key(&h).await;
    let id = h.store.all().await[0].id;
    assert_eq!(
        forge_opaque(PREFIX, id, secret_part(&key, PREFIX)),
        key,
        "the documented format reproduces a minted key exactly"
    );
    let unknown = forge_opaque(PREFIX, KeyId::random(), &"s".repeat(SECRET_LEN));
    assert!(keygate::checksum_ok(&unknown));
    h.assert_refused(&unknown, Rejection::UnknownKey).await;
}

#[tokio::test]
async fn garbage_refusals() {
    // Inputs that are nothing like a key: no `_` at all is malformed; another prefix is a
    // wrong prefix.
    let h = Harness::new();
    h.assert_refused("", Rejection::Malformed).await;
    h.assert_refused("hello", Rejection::Malformed).await;
    h.assert_refused("abs", Rejection::Malformed).await;
    h.assert_refused("other_x", Rejection::WrongPrefix).await;
    h.assert_refused("abs_", Rejection::Malformed).await;
    h.assert_refused("abs_x", Rejection::Malformed).await;
}

// ---------------------------------------------------------------------------------------
// JWT keys
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn jwt_algorithms_other_than_hs256_are_refused() {
    let h = Harness::new();
    let (id, _) = jwt_key(&h).await;
    let claims = api_claims(id);
    let payload = b64(claims.to_string().as_bytes());
    // alg none, unsigned and "signed".
    let none_header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    h.assert_refused(
        &format!("{none_header}.{payload}."),
        Rejection::JwtAlgorithm,
    )
    .await;
    h.assert_refused(
        &sign_jwt(JWT_SECRET, &json!({"alg": "none"}), &claims),
        Rejection::JwtAlgorithm,
    )
    .await;
    for alg in [
        "HS384", "HS512", "RS256", "ES256", "PS256", "EdDSA", "hs256", "HS256 ", "",
    ] {
        h.assert_refused(
            &sign_jwt(JWT_SECRET, &json!({"alg": alg, "typ": "JWT"}), &claims),
            Rejection::JwtAlgorithm,
        )
        .await;
    }
    // A genuine HS384 signature with the right secret.
    let input = format!("{}.{payload}", b64(br#"{"alg":"HS384","typ":"JWT"}"#));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA384, JWT_SECRET);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    h.assert_refused(
        &format!("{input}.{}", b64(tag.as_ref())),
        Rejection::JwtAlgorithm,
    )
    .await;
    // An RS256 header over an HS256 signature (the classic key-confusion shape).
    h.assert_refused(
        &sign_jwt(JWT_SECRET, &json!({"alg": "RS256", "typ": "JWT"}), &claims),
        Rejection::JwtAlgorithm,
    )
    .await;
    // No alg at all.
    h.assert_refused(
        &sign_jwt(JWT_SECRET, &json!({"typ": "JWT"}), &claims),
        Rejection::JwtMalformed,
    )
    .await;
}

#[tokio::test]
async fn jwt_signatures_must_match_the_secret() {
    let h = Harness::new();
    let (id, token) = jwt_key(&h).await;
    let claims = api_claims(id);
    h.assert_refused(
        &sign_jwt(OTHER_JWT_SECRET, &hs256_header(), &claims),
        Rejection::JwtSignature,
    )
    .await;
    let (head, sig) = token.rsplit_once('.').unwrap();
    h.assert_refused(&format!("{head}."), Rejection::JwtSignature)
        .await;
    h.assert_refused(&format!("{head}.{}", &sig[1..]), Rejection::JwtSignature)
        .await;
    h.assert_refused(&format!("{head}.{sig}A"), Rejection::JwtSignature)
        .await;
    h.assert_refused(
        &format!("{head}.{}", b64(&[0u8; 32])),
        Rejection::JwtSignature,
    )
    .await;
    // The signature of another genuine token.
    let (_, other) = jwt_key(&h).await;
    let other_sig = other.rsplit_once('.').unwrap().1;
    h.assert_refused(&format!("{head}.{other_sig}"), Rejection::JwtSignature)
        .await;
    // The claims of another token under this token's signature.
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[1] = other.split('.').nth(1).unwrap();
    h.assert_refused(&parts.join("."), Rejection::JwtSignature)
        .await;
    // Standard base64 alphabet or padding in the signature.
    h.assert_refused(&format!("{token}="), Rejection::JwtSignature)
        .await;
    h.gate.verify(&token).await.unwrap();
}

#[tokio::test]
async fn jwt_type_must_be_exactly_api() {
    let h = Harness::new();
    let id = KeyId::random();
    let with_type = |kind: serde_json::Value| {
        let mut claims = api_claims(id);
        claims["type"] = kind;
        jwt_with(&claims)
    };
    for kind in ["API", "Api", "access", "refresh", "api ", " api", ""] {
        h.assert_refused(&with_type(json!(kind)), Rejection::JwtType)
            .await;
    }
    h.assert_refused(&with_type(json!(null)), Rejection::JwtType)
        .await;
    let mut missing = api_claims(id);
    missing.as_object_mut().unwrap().remove("type");
    h.assert_refused(&jwt_with(&missing), Rejection::JwtType)
        .await;
    // Not a string at all: the claims do not have the expected shape.
    h.assert_refused(&with_type(json!(["api"])), Rejection::JwtMalformed)
        .await;
}

#[tokio::test]
async fn jwt_session_tokens_are_refused() {
    let h = Harness::new();
    let id = KeyId::random();
    let with = |field: &str, value: serde_json::Value| {
        let mut claims = api_claims(id);
        claims[field] = value;
        jwt_with(&claims)
    };
    for (field, value) in [
        ("userId", json!("root")),
        ("userId", json!(null)),
        ("userId", json!("")),
        ("username", json!("root")),
        ("username", json!(null)),
        ("username", json!(false)),
    ] {
        println!("{field}: {value}");
        h.assert_refused(&with(field, value), Rejection::JwtSessionToken)
            .await;
    }
    // Audiobookshelf access and refresh tokens are named for what they are.
    for kind in ["access", "refresh", "api"] {
        let session = jwt_with(&json!({
            "userId": "root", "username": "root", "type": kind, "iat": t0().timestamp()
        }));
        h.assert_refused(&session, Rejection::JwtSessionToken).await;
    }
}

#[tokio::test]
async fn jwt_crit_headers_are_refused() {
    let h = Harness::new();
    let claims = api_claims(KeyId::random());
    for header in [
        json!({"alg": "HS256", "typ": "JWT", "crit": ["exp"]}),
        json!({"alg": "HS256", "crit": []}),
        json!({"alg": "HS256", "crit": null}),
        json!({"alg": "HS256", "b64": false, "crit": ["b64"]}),
    ] {
        h.assert_refused(
            &sign_jwt(JWT_SECRET, &header, &claims),
            Rejection::JwtCritical,
        )
        .await;
    }
}

#[tokio::test]
async fn jwt_dates_must_be_numbers() {
    let h = Harness::new();
    let id = KeyId::random();
    let with = |field: &str, value: serde_json::Value| {
        let mut claims = api_claims(id);
        claims[field] = value;
        jwt_with(&claims)
    };
    let far = t0().timestamp() + 86_400;
    for field in ["exp", "nbf", "iat"] {
        for value in [
            json!(far.to_string()),
            json!(null),
            json!(true),
            json!({}),
            json!([far]),
            json!("never"),
        ] {
            println!("{field}: {value}");
            h.assert_refused(&with(field, value), Rejection::JwtMalformed)
                .await;
        }
    }
    // Duplicate claims are ambiguous, not "last one wins".
    let raw = format!(
        r#"{{"keyId":"{id}","type":"api","iat":{t},"exp":{t},"exp":{far}}}"#,
        t = t0().timestamp()
    );
    h.assert_refused(
        &sign_jwt_raw(JWT_SECRET, r#"{"alg":"HS256","typ":"JWT"}"#, &raw),
        Rejection::JwtMalformed,
    )
    .await;
}

#[tokio::test]
async fn jwt_time_claims_are_enforced_offline() {
    let h = Harness::new();
    let (id, _) = jwt_key(&h).await;
    let now = t0().timestamp();
    let with = |field: &str, value: i64| {
        let mut claims = api_claims(id);
        claims[field] = json!(value);
        jwt_with(&claims)
    };
    h.assert_refused(&with("exp", now - 1), Rejection::JwtExpired)
        .await;
    h.assert_refused(&with("exp", now), Rejection::JwtExpired)
        .await;
    h.assert_refused(&with("exp", 0), Rejection::JwtExpired)
        .await;
    h.assert_refused(&with("nbf", now + 1), Rejection::JwtNotYetValid)
        .await;
    h.assert_refused(&with("nbf", now + 86_400), Rejection::JwtNotYetValid)
        .await;
    // Fractional dates are numbers too.
    let mut claims = api_claims(id);
    claims["exp"] = json!(now as f64 - 0.5);
    h.assert_refused(&jwt_with(&claims), Rejection::JwtExpired)
        .await;
}

/// A JWT key imported without a hash, as from Audiobookshelf: any token for its id signed
/// with the secret verifies, so hand-made claims can be tested end to end.
async fn imported_jwt(h: &Harness) -> KeyId {
    let id = KeyId::random();
    h.gate
        .import(keygate::KeyRecord::new(
            id,
            KeyFormat::Jwt,
            "imported",
            "alice",
            t0(),
        ))
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn jwt_header_and_claims_must_be_json_objects() {
    let h = Harness::new();
    let id = imported_jwt(&h).await;
    let header = r#"{"alg":"HS256","typ":"JWT"}"#;
    let claims = format!(r#"{{"keyId":"{id}","type":"api"}}"#);
    h.gate
        .verify(&sign_jwt_raw(JWT_SECRET, header, &claims))
        .await
        .unwrap();
    // The same fields by position: serde's derived structs used to fill them from arrays.
    let array_claims = format!(r#"["{id}","api"]"#);
    for (header, claims) in [
        (r#"["HS256",null]"#, claims.as_str()),
        (r#"["HS256","JWT"]"#, claims.as_str()),
        (header, array_claims.as_str()),
        (r#"["HS256"]"#, array_claims.as_str()),
        (header, "\"api\""),
        // `typ` may be absent or "JWT"; `null` is not "absent".
        (r#"{"alg":"HS256","typ":null}"#, claims.as_str()),
    ] {
        h.assert_refused(
            &sign_jwt_raw(JWT_SECRET, header, claims),
            Rejection::JwtMalformed,
        )
        .await;
    }
    // Not UTF-8 inside a member keygate ignores (RFC 7519 §7.2): serde would skip it.
    let mut not_utf8 = format!(r#"{{"keyId":"{id}","type":"api","note":""#).into_bytes();
    not_utf8.extend_from_slice(b"\xff\"}");
    h.assert_refused(
        &sign_jwt_bytes(JWT_SECRET, header.as_bytes(), &not_utf8),
        Rejection::JwtMalformed,
    )
    .await;
}

#[tokio::test]
async fn jwt_dates_are_compared_to_the_microsecond_without_leeway() {
    let h = Harness::new();
    let id = imported_jwt(&h).await;
    // now = t0 + 0.5 s exactly.
    h.clock.set(t0() + chrono::TimeDelta::milliseconds(500));
    let s = t0().timestamp();
    let token = |claim: &str, value: String| {
        sign_jwt_raw(
            JWT_SECRET,
            r#"{"alg":"HS256","typ":"JWT"}"#,
            &format!(r#"{{"keyId":"{id}","type":"api","{claim}":{value}}}"#),
        )
    };
    // exp is strict: now - 1 µs and now are expired, now + 1 µs is not.
    h.assert_refused(&token("exp", format!("{s}.499999")), Rejection::JwtExpired)
        .await;
    h.assert_refused(&token("exp", format!("{s}.5")), Rejection::JwtExpired)
        .await;
    h.gate
        .verify(&token("exp", format!("{s}.500001")))
        .await
        .unwrap();
    // A whole-second exp half a second ago: expired (truncating now hid this).
    h.assert_refused(&token("exp", format!("{s}")), Rejection::JwtExpired)
        .await;
    // nbf is inclusive: now - 1 µs and now are valid, now + 1 µs is not yet.
    h.gate
        .verify(&token("nbf", format!("{s}.499999")))
        .await
        .unwrap();
    h.gate
        .verify(&token("nbf", format!("{s}.5")))
        .await
        .unwrap();
    h.assert_refused(
        &token("nbf", format!("{s}.500001")),
        Rejection::JwtNotYetValid,
    )
    .await;
    // A whole-second nbf half a second ahead: not yet (truncating now hid this too).
    h.assert_refused(
        &token("nbf", format!("{}", s + 1)),
        Rejection::JwtNotYetValid,
    )
    .await;
    // iat is type-checked only: one in the future is accepted, as jsonwebtoken does.
    h.gate
        .verify(&token("iat", format!("{}", s + 86_400)))
        .await
        .unwrap();
    h.assert_refused(&token("iat", format!("\"{s}\"")), Rejection::JwtMalformed)
        .await;
}

#[tokio::test]
async fn jwt_key_ids_must_be_uuids() {
    let h = Harness::new();
    let with = |value: serde_json::Value| {
        let mut claims = api_claims(KeyId::random());
        claims["keyId"] = value;
        jwt_with(&claims)
    };
    for value in [
        json!("not-a-uuid"),
        json!(""),
        json!("0b9f2b2e-6c4b-4a1e-9d3e-3f1f7a0c2d1"),
        json!(42),
        json!(null),
    ] {
        h.assert_refused(&with(value), Rejection::JwtMalformed)
            .await;
    }
    // Only the canonical lowercase hyphenated spelling of a real key's id: one key, one
    // token text.
    let (id, _) = jwt_key(&h).await;
    let uuid = id.as_uuid();
    for spelling in [
        id.to_string().to_uppercase(),
        uuid.simple().to_string(),
        uuid.braced().to_string(),
        uuid.urn().to_string(),
        format!(" {id}"),
    ] {
        let mut claims = api_claims(id);
        claims["keyId"] = json!(spelling);
        h.assert_refused(&jwt_with(&claims), Rejection::JwtMalformed)
            .await;
    }
    let mut missing = api_claims(KeyId::random());
    missing.as_object_mut().unwrap().remove("keyId");
    h.assert_refused(&jwt_with(&missing), Rejection::JwtMalformed)
        .await;
}

#[tokio::test]
async fn jwt_parts_that_are_not_base64_json_are_malformed() {
    let h = Harness::new();
    let claims = api_claims(KeyId::random());
    let good = jwt_with(&claims);
    let parts: Vec<&str> = good.split('.').collect();
    h.assert_refused(
        &format!("!!!.{}.{}", parts[1], parts[2]),
        Rejection::JwtMalformed,
    )
    .await;
    h.assert_refused(
        &format!("{}.{}.{}", b64(b"not json"), parts[1], parts[2]),
        Rejection::JwtMalformed,
    )
    .await;
    h.assert_refused(
        &sign_jwt_raw(JWT_SECRET, r#"{"alg":"HS256","typ":"JWT"}"#, "not json"),
        Rejection::JwtMalformed,
    )
    .await;
    h.assert_refused(
        &sign_jwt_raw(JWT_SECRET, r#"{"alg":"HS256","typ":"JWT"}"#, "[1,2]"),
        Rejection::JwtMalformed,
    )
    .await;
    h.assert_refused(
        &sign_jwt(JWT_SECRET, &json!({"alg": "HS256", "typ": "JWS"}), &claims),
        Rejection::JwtMalformed,
    )
    .await;
    h.assert_refused("..", Rejection::JwtMalformed).await;
}

#[tokio::test]
async fn jwts_on_a_gate_without_a_jwt_secret_are_jwt_disabled() {
    let h = Harness::new();
    let (_, token) = jwt_key(&h).await;
    let opaque_only = h.sibling(|b| b);
    h.gate.verify(&token).await.unwrap();
    settle().await; // let the accepted verify's last-used write happen first
    assert_refused_by(
        &opaque_only,
        &h.store,
        &h.users,
        &token,
        Rejection::JwtDisabled,
    )
    .await;
    assert_refused_by(
        &opaque_only,
        &h.store,
        &h.users,
        "a.b.c",
        Rejection::JwtDisabled,
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn short_jwt_secrets_are_refused_at_build() {
    let store = CountingStore::new();
    let build = |secret: &[u8]| {
        let secret = keygate::JwtSecret::new(secret)?;
        Keygate::builder(store.clone(), Pepper::new(1, PEPPER_V1).unwrap())
            .jwt_secret(secret)
            .build()
    };
    for len in [0, 1, 16, 31] {
        assert_eq!(
            build(&vec![b's'; len]).unwrap_err(),
            BuildError::JwtSecretTooShort { min: 32, got: len }
        );
    }
    assert!(build(&[b's'; 32]).is_ok());
    assert_eq!(keygate::bounds::MIN_JWT_SECRET_LEN, 32);
    assert!(matches!(
        keygate::JwtSecret::new([0u8; 31]),
        Err(BuildError::JwtSecretTooShort { min: 32, got: 31 })
    ));
    assert_eq!(store.calls(), Calls::default());
}

#[test]
fn short_peppers_are_refused() {
    for len in [0, 8, 31] {
        assert_eq!(
            Pepper::new(1, vec![7u8; len]).unwrap_err(),
            BuildError::PepperTooShort { min: 32, got: len }
        );
        assert_eq!(
            Pepper::new(2, [7u8; 32])
                .unwrap()
                .with_previous(1, vec![7u8; len])
                .unwrap_err(),
            BuildError::PepperTooShort { min: 32, got: len }
        );
    }
    assert_eq!(keygate::bounds::MIN_PEPPER_LEN, 32);
    assert!(Pepper::new(1, [7u8; 32]).is_ok());
    assert_eq!(
        Pepper::new(3, [7u8; 32])
            .unwrap()
            .with_previous(3, [8u8; 32])
            .unwrap_err(),
        BuildError::DuplicatePepperVersion(3)
    );
}

#[test]
fn bad_prefixes_are_refused_at_build() {
    let build = |prefix: &str| {
        Keygate::builder(MemoryStore::new(), Pepper::new(1, PEPPER_V1).unwrap())
            .prefix(prefix)
            .build()
    };
    for bad in [
        "",
        "9abs",
        "Abs",
        "aBs",
        "ab_c",
        "abs_",
        "abs-",
        "a.b",
        "ab c",
        "abcdefghijklmnopq",
        "é",
        "_abs",
    ] {
        assert_eq!(
            build(bad).unwrap_err(),
            BuildError::InvalidPrefix(bad.to_owned()),
            "{bad:?}"
        );
    }
    for good in ["a", "abs", "k9", "abcdefghijklmnop"] {
        assert_eq!(build(good).unwrap().prefix(), good);
    }
    // The default prefix is valid.
    let default = Keygate::builder(MemoryStore::new(), Pepper::new(1, PEPPER_V1).unwrap())
        .build()
        .unwrap();
    assert_eq!(default.prefix(), "key");
}

// ---------------------------------------------------------------------------------------
// Authorization header (the first check: scheme, spacing, length)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn bearer_headers_are_read_case_insensitively_with_any_spaces() {
    let h = Harness::new();
    let key = opaque_key(&h).await;
    let (_, jwt) = jwt_key(&h).await;
    for token in [&key, &jwt] {
        for header in [
            format!("Bearer {token}"),
            format!("bearer {token}"),
            format!("BEARER {token}"),
            format!("bEaReR {token}"),
            format!("Bearer     {token}"),
            format!("  Bearer {token}  "),
        ] {
            let gets = h.store.calls().get;
            let principal = h
                .gate
                .verify_header(&header)
                .await
                .unwrap_or_else(|e| panic!("{header:?}: {e:?}"));
            assert_eq!(principal.owner_id(), "alice");
            assert_eq!(h.store.calls().get, gets + 1);
            let principal = h.gate.verify_headers([header.as_bytes()]).await.unwrap();
            assert_eq!(principal.owner_id(), "alice");
        }
    }
}

#[tokio::test]
async fn header_errors_never_reach_the_store() {
    let h = Harness::new();
    let key = opaque_key(&h).await;
    let good = format!("Bearer {key}");
    let other = format!("Bearer {}", opaque_key(&h).await);
    let calls = h.store.calls();

    let two = h
        .gate
        .verify_headers([good.as_bytes(), good.as_bytes()])
        .await
        .unwrap_err();
    assert!(matches!(
        two,
        keygate::VerifyError::InvalidRequest(keygate::RequestError::MultipleHeaders)
    ));
    let http = two.http("abs");
    assert_eq!(http.status, 400);
    assert_eq!(
        http.www_authenticate.as_deref(),
        Some(r#"Bearer realm="abs", error="invalid_request""#)
    );
    let err = h
        .gate
        .verify_headers([good.as_bytes(), other.as_bytes()])
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "multiple_headers");

    let none = h
        .gate
        .verify_headers(std::iter::empty::<&[u8]>())
        .await
        .unwrap_err();
    assert!(matches!(none, keygate::VerifyError::MissingCredentials));
    let http = none.http("abs");
    assert_eq!(http.status, 401);
    assert_eq!(
        http.www_authenticate.as_deref(),
        Some(r#"Bearer realm="abs""#)
    );

    for (header, reason, status) in [
        (format!("Basic {key}"), "missing_credentials", 401),
        (format!("Token {key}"), "missing_credentials", 401),
        (key.clone(), "missing_credentials", 401),
        (String::new(), "missing_credentials", 401),
        (format!("Bearer{key}"), "missing_credentials", 401),
        ("Bearer".to_owned(), "malformed_bearer", 400),
        ("Bearer    ".to_owned(), "malformed_bearer", 400),
        (format!("Bearer {key} {key}"), "malformed_bearer", 400),
        (format!("Bearer {key},"), "malformed_bearer", 400),
        (format!("Bearer\t{key}"), "invalid_characters", 400),
        (format!("Bearer {key}\r\n"), "invalid_characters", 400),
        (format!("Bearer {key}é"), "invalid_characters", 400),
        (
            format!("Bearer {}", "a".repeat(keygate::http::MAX_HEADER_LEN)),
            "oversize",
            400,
        ),
    ] {
        let err = h.gate.verify_header(&header).await.unwrap_err();
        assert_eq!(err.reason(), reason, "{}", show(&header));
        assert_eq!(err.http("abs").status, status, "{}", show(&header));
        assert_eq!(err.rejection(), None);
    }
    settle().await;
    assert_eq!(h.store.calls(), calls, "header errors touched the store");
}

#[tokio::test]
async fn the_gate_answers_with_its_realm() {
    let h = Harness::with(|b| b.realm("audiobookshelf"));
    assert_eq!(h.gate.realm(), "audiobookshelf");
    let err = h.gate.verify("abs_x").await.unwrap_err();
    let http = h.gate.http_outcome(&err);
    assert_eq!(http.status, 401);
    assert_eq!(
        http.www_authenticate.as_deref(),
        Some(r#"Bearer realm="audiobookshelf", error="invalid_token""#)
    );
    assert_eq!(http, err.http("audiobookshelf"));
    assert_eq!(Harness::new().gate.realm(), "api");
}

#[tokio::test]
async fn a_readable_header_with_a_bad_key_is_invalid_token() {
    let h = Harness::new();
    let key = opaque_key(&h).await;
    let mut typo = key.clone();
    typo.replace_range(10..11, if &key[10..11] == "a" { "b" } else { "a" });
    let gets = h.store.calls().get;
    let err = h
        .gate
        .verify_header(&format!("Bearer {typo}"))
        .await
        .unwrap_err();
    assert_eq!(err.rejection(), Some(Rejection::BadChecksum));
    assert_eq!(err.http("abs").status, 401);
    assert_eq!(h.store.calls().get, gets);
    // An oversize token that still fits the header cap is a bad key, not a bad header.
    let long = format!("Bearer abs_{}", "a".repeat(4000));
    let err = h.gate.verify_header(&long).await.unwrap_err();
    assert_eq!(err.rejection(), Some(Rejection::Malformed));
    assert_eq!(h.store.calls().get, gets);
}
