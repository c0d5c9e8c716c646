//! What every target shares: a gate over a `MemoryStore` holding keys in known states, an
//! independent base62/CRC32 for the opaque format, the opaque oracle, and helpers.
//!
//! The oracles here are written from the documented rules (the crate docs' "Opaque keys",
//! "JWT keys" and "Verification", the `http` module docs, ARCHITECTURE.md's verify path),
//! never by calling keygate's private code.
#![allow(dead_code)] // each target uses part of it

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use keygate::chrono::{DateTime, TimeDelta, TimeZone, Utc};
use keygate::{
    DirectoryError, JwtSecret, KeyFormat, KeyId, KeyRecord, Keygate, ListQuery, ManualClock,
    MemoryStore, NewKey, Owner, Pepper, Principal, Rejection, UserDirectory, VerifyError,
};
use ring::hmac;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

/// The gate's opaque prefix.
pub const PREFIX: &str = "kg";
/// The fixed clock: 2026-01-01T00:00:00Z, a whole second, so `exp`/`nbf` comparisons
/// against fractional dates are unambiguous.
pub const NOW: i64 = 1_767_225_600;
/// The gate's JWT secret (HS256 key, its bytes as given).
pub const JWT_SECRET: &[u8] = b"keygate fuzz JWT secret, 32+ bytes long";
/// `{"alg":"HS256","typ":"JWT"}`: what the targets sign under when the input gives no header.
pub const DEFAULT_HEADER: &[u8] = br#"{"alg":"HS256","typ":"JWT"}"#;
/// Longest opaque key: 16-character prefix, `_`, 71-character body.
pub const MAX_OPAQUE_LEN: usize = 88;
/// Longest JWT keygate reads.
pub const MAX_JWT_LEN: usize = 8192;

/// Owners: `root` (admin), `alice` (read), `mallory` (deactivated); anyone else is unknown.
pub struct Directory;

#[async_trait]
impl UserDirectory for Directory {
    async fn owner(&self, user_id: &str) -> Result<Option<Owner>, DirectoryError> {
        Ok(match user_id {
            "root" => Some(Owner::with_permissions(["admin", "read"])),
            "alice" => Some(Owner::with_permissions(["read"])),
            "mallory" => Some(Owner::inactive()),
            _ => None,
        })
    }
}

/// What verifying a token should give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A principal for this key id.
    Ok(KeyId),
    /// This refusal.
    Refused(Rejection),
    /// Some `InvalidKey` refusal (a JWT-looking token in the opaque or header target, whose
    /// exact reason the jwt_claims target checks).
    AnyRefusal,
}

/// One key the fixture holds, with the token that authenticates it (if one exists).
#[derive(Debug, Clone)]
pub struct FixtureKey {
    pub id: KeyId,
    pub format: KeyFormat,
    /// The exact token: minted, or for an imported hash-less JWT record, one signed here.
    pub token: String,
    /// Whether the record binds the exact token (a hash). Imported JWT records do not.
    pub hashed: bool,
    /// What verifying `token` gives: Ok, or the state refusal of the record/owner.
    pub outcome: Expect,
}

/// A gate over a `MemoryStore` with keys in every interesting state.
pub struct Fixture {
    pub gate: Keygate,
    pub keys: Vec<FixtureKey>,
    pub snapshot: Vec<KeyRecord>,
}

impl Fixture {
    pub fn key(&self, id: KeyId) -> Option<&FixtureKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    pub fn by_token(&self, token: &str) -> Option<&FixtureKey> {
        self.keys.iter().find(|k| k.token == token)
    }

    /// Checks that the store holds exactly what it held after setup.
    pub fn assert_store_unchanged(&self) {
        let now = block_on(records(&self.gate));
        assert!(
            now == self.snapshot,
            "the store changed: {} records before, {} after",
            self.snapshot.len(),
            now.len()
        );
    }

    /// Keys of `format`, in fixture order.
    pub fn of_format(&self, format: KeyFormat) -> Vec<&FixtureKey> {
        self.keys.iter().filter(|k| k.format == format).collect()
    }
}

/// Every record the gate's store holds, ordered by id.
pub async fn records(gate: &Keygate) -> Vec<KeyRecord> {
    gate.list(ListQuery::new().limit(keygate::bounds::MAX_PAGE))
        .await
        .expect("MemoryStore lists")
        .records
}

/// One current-thread runtime per process; background flushes spawned by a verify run on it.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime")
    })
}

pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

pub fn now() -> DateTime<Utc> {
    Utc.timestamp_opt(NOW, 0).single().expect("a valid instant")
}

/// The shared fixture (for targets that never write).
pub fn fixture() -> &'static Fixture {
    static FX: OnceLock<Fixture> = OnceLock::new();
    FX.get_or_init(|| block_on(build_fixture()))
}

/// A new gate and store with the fixture keys (for targets that write).
pub async fn build_fixture() -> Fixture {
    let clock = Arc::new(ManualClock::new(now() - TimeDelta::seconds(100)));
    let gate = Keygate::builder(
        MemoryStore::new(),
        Pepper::new(1, [7u8; 32]).expect("pepper"),
    )
    .prefix(PREFIX)
    .jwt_secret(JwtSecret::new(JWT_SECRET).expect("jwt secret"))
    .users(Directory)
    .clock(clock.clone())
    .build()
    .expect("fixture gate");
    let mut keys = Vec::new();
    let mint = |new: NewKey, outcome: Option<Rejection>| {
        let gate = gate.clone();
        async move {
            let issued = gate.mint(new).await.expect("fixture mint");
            let format = issued.record.format;
            let id = issued.record.id;
            FixtureKey {
                id,
                format,
                token: issued.key.expose().to_owned(),
                hashed: true,
                outcome: outcome.map_or(Expect::Ok(id), Expect::Refused),
            }
        }
    };
    // Minted at NOW - 100 s: the expired key lives 10 s.
    keys.push(mint(NewKey::new("root opaque", "root"), None).await);
    keys.push(mint(NewKey::new("alice opaque", "alice"), None).await);
    keys.push(mint(NewKey::new("root jwt", "root").format(KeyFormat::Jwt), None).await);
    keys.push(
        mint(
            NewKey::new("alice revoked", "alice"),
            Some(Rejection::Inactive),
        )
        .await,
    );
    keys.push(
        mint(
            NewKey::new("alice expired", "alice").expires_in(TimeDelta::seconds(10)),
            Some(Rejection::Expired),
        )
        .await,
    );
    keys.push(
        mint(
            NewKey::new("mallory opaque", "mallory"),
            Some(Rejection::OwnerInactive),
        )
        .await,
    );
    keys.push(
        mint(
            NewKey::new("alice jwt revoked", "alice").format(KeyFormat::Jwt),
            Some(Rejection::Inactive),
        )
        .await,
    );
    gate.revoke(keys[3].id).await.expect("revoke");
    gate.revoke(keys[6].id).await.expect("revoke");
    // Audiobookshelf imports: JWT records without a hash (any validly signed token for the id).
    for (owner, active, outcome) in [
        ("alice", true, None),
        ("alice", false, Some(Rejection::Inactive)),
        ("mallory", true, Some(Rejection::OwnerInactive)),
    ] {
        let id = KeyId::random();
        let at = now() - TimeDelta::seconds(1000);
        gate.import({
            let mut record = KeyRecord::new(
                id,
                KeyFormat::Jwt,
                format!("imported {owner}"),
                owner.to_owned(),
                at,
            );
            record.active = active;
            record
        })
        .await
        .expect("import");
        let claims = format!(
            r#"{{"keyId":"{id}","name":"imported","type":"api","iat":{}}}"#,
            NOW - 1000
        );
        keys.push(FixtureKey {
            id,
            format: KeyFormat::Jwt,
            token: sign_jwt(DEFAULT_HEADER, claims.as_bytes()),
            hashed: false,
            outcome: outcome.map_or(Expect::Ok(id), Expect::Refused),
        });
    }
    clock.set(now());
    // Use every key once and write the last-used marks now: with the clock standing still,
    // nothing is due again, so any later change to the store is a finding.
    for key in &keys {
        let got = gate.verify(&key.token).await;
        check_outcome(&key.token, key.outcome, &got);
    }
    gate.flush().await.expect("flush");
    let snapshot = records(&gate).await;
    assert_eq!(snapshot.len(), keys.len());
    Fixture {
        gate,
        keys,
        snapshot,
    }
}

/// Panics unless `got` is what `expect` says.
pub fn check_outcome(token: &str, expect: Expect, got: &Result<Principal, VerifyError>) {
    let ok = match (expect, got) {
        (Expect::Ok(id), Ok(p)) => p.key_id() == id,
        (Expect::Refused(r), Err(VerifyError::InvalidKey(g))) => r == *g,
        (Expect::AnyRefusal, Err(VerifyError::InvalidKey(_))) => true,
        _ => false,
    };
    assert!(
        ok,
        "token {token:?}: expected {expect:?}, got {:?}",
        got.as_ref().map(|p| p.key_id())
    );
}

/// Replaces placeholders: `$T<d>` with fixture key d's token, `$I<d>` with its id,
/// `$N` with NOW (unix seconds). Lets small seeds reach real keys.
pub fn expand(fx: &Fixture, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let rest = &input[i..];
        let digit = |n: usize| {
            rest.get(n)
                .filter(|b| b.is_ascii_digit())
                .map(|b| usize::from(b - b'0'))
        };
        match (rest.first(), rest.get(1), digit(2)) {
            (Some(b'$'), Some(b'T'), Some(d)) if d < fx.keys.len() => {
                out.extend_from_slice(fx.keys[d].token.as_bytes());
                i += 3;
            }
            (Some(b'$'), Some(b'I'), Some(d)) if d < fx.keys.len() => {
                out.extend_from_slice(fx.keys[d].id.to_string().as_bytes());
                i += 3;
            }
            (Some(b'$'), Some(b'N'), _) => {
                out.extend_from_slice(NOW.to_string().as_bytes());
                i += 2;
            }
            _ => {
                out.push(input[i]);
                i += 1;
            }
        }
    }
    out
}

/// HS256 JWS compact serialization of exactly these header and claims bytes.
pub fn sign_jwt(header: &[u8], claims: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, JWT_SECRET);
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims));
    let tag = hmac::sign(&key, token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(tag.as_ref()));
    token
}

// ---- the opaque format, written independently of src/base62.rs and crc32fast ----

pub const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
pub const ID_LEN: usize = 22;
pub const SECRET_LEN: usize = 43;
pub const CRC_LEN: usize = 6;
pub const BODY_LEN: usize = ID_LEN + SECRET_LEN + CRC_LEN;

pub fn b62_value(byte: u8) -> Option<u128> {
    ALPHABET.iter().position(|&c| c == byte).map(|p| p as u128)
}

/// `value` as exactly `width` base62 digits, most significant first (high digits dropped
/// if it does not fit: only used with widths that fit).
pub fn b62_encode(mut value: u128, width: usize) -> Vec<u8> {
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    out
}

/// Fixed-width base62 back to a number; `None` on a foreign byte or above `u128::MAX`.
pub fn b62_decode(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |acc, &b| {
        acc.checked_mul(62)?.checked_add(b62_value(b)?)
    })
}

/// CRC-32/ISO-HDLC (the zlib one), bit by bit.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `[a-z][a-z0-9]{0,15}`.
pub fn prefix_grammar_ok(prefix: &[u8]) -> bool {
    matches!(prefix.first(), Some(b'a'..=b'z'))
        && prefix.len() <= 16
        && prefix
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// What `keygate::checksum_ok` must say: prefix grammar, `_`, 71 base62, right CRC, and
/// an id part that is a u128.
pub fn checksum_ok_oracle(candidate: &[u8]) -> bool {
    let Some(sep) = candidate.iter().position(|&b| b == b'_') else {
        return false;
    };
    let (prefix, body) = (&candidate[..sep], &candidate[sep + 1..]);
    prefix_grammar_ok(prefix)
        && body.len() == BODY_LEN
        && body.iter().all(|&b| b62_value(b).is_some())
        && crc_matches(candidate)
        && b62_decode(&body[..ID_LEN]).is_some()
}

fn crc_matches(token: &[u8]) -> bool {
    let (signed, crc) = token.split_at(token.len() - CRC_LEN);
    b62_decode(crc) == Some(u128::from(crc32(signed)))
}

/// What `Keygate::verify(token)` must give for a token with no `.` (the opaque path),
/// in the documented order: length cap, shape, prefix, body shape, checksum, id, then the
/// record (exists, format, hash in constant time), then the record's and owner's state.
pub fn opaque_expectation(fx: &Fixture, token: &str) -> Expect {
    let t = token.as_bytes();
    if t.contains(&b'.') {
        return match fx.by_token(token) {
            Some(k) => k.outcome,
            None => Expect::AnyRefusal,
        };
    }
    if t.len() > MAX_OPAQUE_LEN || !t.contains(&b'_') {
        return Expect::Refused(Rejection::Malformed);
    }
    let Some(body) = t
        .strip_prefix(PREFIX.as_bytes())
        .and_then(|r| r.strip_prefix(b"_"))
    else {
        return Expect::Refused(Rejection::WrongPrefix);
    };
    if body.len() != BODY_LEN || !body.iter().all(|&b| b62_value(b).is_some()) {
        return Expect::Refused(Rejection::Malformed);
    }
    if !crc_matches(t) {
        return Expect::Refused(Rejection::BadChecksum);
    }
    let Some(id) = b62_decode(&body[..ID_LEN]) else {
        return Expect::Refused(Rejection::Malformed);
    };
    let id = id_from_value(id);
    match fx.key(id) {
        None => Expect::Refused(Rejection::UnknownKey),
        Some(k) if k.format != KeyFormat::Opaque => Expect::Refused(Rejection::FormatMismatch),
        // Same prefix, id and checksum: the token differs from the minted one iff the secret does.
        Some(k) if k.token != token => Expect::Refused(Rejection::HashMismatch),
        Some(k) => k.outcome,
    }
}

/// The `KeyId` whose UUID is `value` (through the public `FromStr`, hyphenated hex, so the
/// fuzz crate needs no `uuid` dependency of its own).
pub fn id_from_value(value: u128) -> KeyId {
    let hex = format!("{value:032x}");
    let text = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    text.parse().expect("32 hex digits are a UUID")
}

/// The u128 of a key id (its canonical text as hex).
pub fn id_value(id: KeyId) -> u128 {
    u128::from_str_radix(&id.to_string().replace('-', ""), 16).expect("hex")
}

/// Keys the allow-list in `KEYGATE_FUZZ_KNOWN` names (comma-separated) are known findings
/// that another change fixes; a local triage run can skip them to look for new ones. CI
/// never sets it.
pub fn known(name: &str) -> bool {
    static KNOWN: OnceLock<Vec<String>> = OnceLock::new();
    KNOWN
        .get_or_init(|| {
            std::env::var("KEYGATE_FUZZ_KNOWN")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .iter()
        .any(|k| k == name)
}

/// A top-level JSON object: the members keygate reads, in order, duplicates kept. Other
/// members only have to be valid JSON (any number, however large, is grammatical).
pub struct Members(pub Vec<(String, Value)>);

/// Parses `bytes` as a JSON object; `None` for anything else, and for text that is not UTF-8
/// (RFC 8259 §8.1).
pub fn members(bytes: &[u8], read: &'static [&'static str]) -> Option<Members> {
    struct Seed(&'static [&'static str]);
    impl<'de> DeserializeSeed<'de> for Seed {
        type Value = Members;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Members, D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Seed {
        type Value = Members;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
            let mut out = Vec::new();
            while let Some(name) = map.next_key::<String>()? {
                if self.0.contains(&name.as_str()) {
                    out.push((name, map.next_value::<Value>()?));
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(Members(out))
        }
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = Seed(read).deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(parsed)
}

impl Members {
    /// Whether each member keygate reads appears at most once (twice is ambiguous: refused).
    pub fn unique(&self) -> bool {
        self.0
            .iter()
            .all(|(n, _)| self.0.iter().filter(|(k, _)| k == n).count() == 1)
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}
