//! Signed report bodies → the leak-report endpoint (`LeakReports::handle`), on a fresh
//! fixture per input (keys in every state: active, revoked, expired, inactive owner,
//! imported hash-less JWT records).
//!
//! Input: the report body, with `$T<d>` expanded to fixture key d's token (see `common`).
//! It is sent three times: altered (first byte flipped) under the original's signature,
//! under an unknown key identifier, then as signed by the GitHub key the endpoint trusts.
//!
//! Oracle, read independently of keygate's parser:
//! - the altered body and the unknown identifier are 401 and leave the store unchanged;
//! - the signed body is 200 exactly when it is UTF-8, a JSON array of at most
//!   `MAX_TOKENS` objects whose `token` is a string and whose `type`, `url` and `source`
//!   are strings when present, none of these members twice (and at most `MAX_BODY`
//!   bytes: 413 beyond); otherwise 400 or 413 and the store unchanged; never 5xx (a
//!   `MemoryStore` cannot fail);
//! - a 200 has one label per match, in order, echoing `token` and `type`; `true_positive`
//!   exactly for the tokens of fixture keys; afterwards exactly those keys are inactive,
//!   and every other record is as it was.
#![no_main]

mod common;

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::*;
use keygate::leaks::{GithubKeys, LeakReports, LeakRequest};
use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

const MAX_TOKENS: usize = 8;
const MAX_BODY: usize = 4096;
const KEY_ID: &str = "fuzz-github-key";

/// The P-256 DER `SubjectPublicKeyInfo` header (RFC 5480) before the 65-byte point.
const SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

struct Github {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
    keys: GithubKeys,
}

fn github() -> &'static Github {
    static GITHUB: OnceLock<Github> = OnceLock::new();
    GITHUB.get_or_init(|| {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(pair.public_key().as_ref());
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(der)
        );
        let document = serde_json::json!({"public_keys": [
            {"key_identifier": KEY_ID, "key": pem, "is_current": true}
        ]});
        let keys = GithubKeys::from_json(document.to_string().as_bytes()).unwrap();
        Github { pair, rng, keys }
    })
}

/// One match as the oracle reads it: its `token` and `type`, or `None` when the object is
/// not a valid match.
type Read = Option<(String, String)>;

/// The body read as an array of match objects (duplicate members make a match invalid);
/// `None` when it is not a UTF-8 JSON array of objects.
fn read_report(body: &[u8]) -> Option<Vec<Read>> {
    struct Report;
    struct Object;
    impl<'de> DeserializeSeed<'de> for Object {
        type Value = Read;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Read, D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Object {
        type Value = Read;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Read, A::Error> {
            let mut seen: Vec<(String, Value)> = Vec::new();
            while let Some(name) = map.next_key::<String>()? {
                if ["token", "type", "url", "source"].contains(&name.as_str()) {
                    seen.push((name, map.next_value::<Value>()?));
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            let get = |n: &str| seen.iter().find(|(k, _)| k == n).map(|(_, v)| v);
            let unique = seen
                .iter()
                .all(|(n, _)| seen.iter().filter(|(k, _)| k == n).count() == 1);
            let strings = seen.iter().all(|(_, v)| v.is_string());
            let token = get("token").and_then(Value::as_str);
            let kind = get("type").and_then(Value::as_str).unwrap_or_default();
            Ok(match (unique && strings, token) {
                (true, Some(token)) => Some((token.to_owned(), kind.to_owned())),
                _ => None,
            })
        }
    }
    impl<'de> DeserializeSeed<'de> for Report {
        type Value = Vec<Read>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Read>, D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de> Visitor<'de> for Report {
        type Value = Vec<Read>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Read>, A::Error> {
            let mut out = Vec::new();
            while let Some(read) = seq.next_element_seed(Object)? {
                out.push(read);
            }
            Ok(out)
        }
    }
    let text = std::str::from_utf8(body).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = Report.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(parsed)
}

fuzz_target!(|data: &[u8]| {
    block_on(async {
        let fx = build_fixture().await;
        let body = expand(&fx, data);
        let gh = github();
        let reports = LeakReports::new(fx.gate.clone(), gh.keys.clone())
            .max_tokens(MAX_TOKENS)
            .max_body(MAX_BODY);
        let signature = STANDARD.encode(gh.pair.sign(&gh.rng, &body).unwrap().as_ref());
        let shown = String::from_utf8_lossy(&body).into_owned();

        if let Some((first, rest)) = body.split_first() {
            let mut altered = vec![first ^ 0x20];
            altered.extend_from_slice(rest);
            let answer = reports
                .handle(LeakRequest::new(
                    [KEY_ID.as_bytes()],
                    [signature.as_bytes()],
                    &altered,
                ))
                .await;
            let want = if altered.len() > MAX_BODY { 413 } else { 401 };
            assert_eq!(answer.status, want, "altered body: {shown:?}");
        }
        let answer = reports
            .handle(LeakRequest::new(
                [&b"not-github"[..]],
                [signature.as_bytes()],
                &body,
            ))
            .await;
        assert!(
            matches!(answer.status, 401 | 413),
            "unknown identifier: {shown:?}"
        );
        assert!(
            records(&fx.gate).await == fx.snapshot,
            "an unauthenticated report changed the store: {shown:?}"
        );

        let answer = reports
            .handle(LeakRequest::new(
                [KEY_ID.as_bytes()],
                [signature.as_bytes()],
                &body,
            ))
            .await;
        let context = format!("{shown:?} → {} {}", answer.status, answer.body);
        let read = read_report(&body);
        let valid = read
            .as_ref()
            .filter(|matches| matches.len() <= MAX_TOKENS && matches.iter().all(Option::is_some))
            .filter(|_| body.len() <= MAX_BODY);
        let after = records(&fx.gate).await;
        if body.len() > MAX_BODY {
            assert_eq!(answer.status, 413, "{context}");
        }
        match valid {
            Some(matches) => {
                assert_eq!(answer.status, 200, "{context}");
                check_labels(&fx, matches, &answer.body, &after, &context);
            }
            None => {
                assert!(matches!(answer.status, 400 | 413), "{context}");
                assert!(
                    after == fx.snapshot,
                    "a refused report changed the store: {context}"
                );
            }
        }
        // Let the last-used flush that dropping the gate may queue run now, on every path:
        // a current-thread `block_on` whose future never yields would leave it, and the
        // store it holds, queued forever (memory growing with every input).
        drop((reports, fx));
        tokio::task::yield_now().await;
    });
});

/// The oracle for a signed report the independent reading accepts: one label per match,
/// echoing token and type, `true_positive` exactly for fixture keys' tokens, and only
/// those keys revoked.
fn check_labels(
    fx: &Fixture,
    matches: &[Read],
    body: &str,
    after: &[keygate::KeyRecord],
    context: &str,
) {
    let labels: Value = serde_json::from_str(body).expect("labels are JSON");
    let labels = labels.as_array().expect("labels are an array");
    assert_eq!(labels.len(), matches.len(), "{context}");
    let mut leaked = Vec::new();
    for (label, m) in labels.iter().zip(matches) {
        let (token, kind) = m.as_ref().expect("valid");
        assert_eq!(
            label["token_raw"].as_str(),
            Some(token.as_str()),
            "{context}"
        );
        assert_eq!(
            label["token_type"].as_str(),
            Some(kind.as_str()),
            "{context}"
        );
        let ours = fx.by_token(token);
        let want = if ours.is_some() {
            "true_positive"
        } else {
            "false_positive"
        };
        assert_eq!(label["label"].as_str(), Some(want), "{context}");
        leaked.extend(ours.map(|k| k.id));
    }
    assert_eq!(after.len(), fx.snapshot.len(), "{context}");
    for (before, now) in fx.snapshot.iter().zip(after) {
        assert_eq!(before.id, now.id, "{context}");
        if leaked.contains(&before.id) {
            assert!(!now.active, "a leaked key is still active: {context}");
        } else {
            assert!(before == now, "a record not reported changed: {context}");
        }
    }
}
