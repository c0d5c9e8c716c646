//! Audiobookshelf-compatible JWT keys: HS256 over `{"keyId","name","type":"api","iat","exp"?}`.
//!
//! Signing and checking use `ring`'s HMAC with a key prepared once, not a JWT library's
//! process-wide crypto provider (why: `ARCHITECTURE.md`, "JWT keys on `ring`"): keygate
//! never depends on, installs or trips over a host application's `jsonwebtoken` backend,
//! and a verify re-keys nothing and parses each JSON part once.
//!
//! What is accepted is deliberately narrow. The rules (JSON objects only, `alg`, `typ`,
//! `crit`, session claims, `type`, canonical `keyId`, numeric dates) and the time policy
//! are documented once, for users, in the crate docs' "JWT keys (Audiobookshelf)" section
//! (`src/lib.rs`); this module implements them.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use serde::de::DeserializeOwned;
use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::{BuildError, Rejection};
use crate::key::KeyId;

/// Shortest JWT secret accepted, in bytes.
pub const MIN_JWT_SECRET_LEN: usize = 32;

/// Longest JWT accepted; longer input is refused before decoding.
pub(crate) const MAX_JWT_LEN: usize = 8192;

/// `{"alg":"HS256","typ":"JWT"}`, byte for byte what Node's `jsonwebtoken` writes.
const HEADER_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// The HMAC key JWT keys are signed with: the secret's bytes exactly as given, as
/// Audiobookshelf uses its `TokenSecret`.
///
/// ```
/// assert!(keygate::JwtSecret::new("too short").is_err());
/// let secret = keygate::JwtSecret::new("an Audiobookshelf TokenSecret of 32+ bytes")?;
/// assert_eq!(format!("{secret:?}"), "JwtSecret([redacted])");
/// # Ok::<(), keygate::BuildError>(())
/// ```
#[derive(Clone)]
pub struct JwtSecret(hmac::Key);

impl JwtSecret {
    /// A JWT signing and verification secret.
    ///
    /// # Errors
    ///
    /// [`BuildError::JwtSecretTooShort`] for a secret shorter than [`MIN_JWT_SECRET_LEN`] bytes.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, BuildError> {
        let secret = secret.as_ref();
        if secret.len() < MIN_JWT_SECRET_LEN {
            return Err(BuildError::JwtSecretTooShort {
                min: MIN_JWT_SECRET_LEN,
                got: secret.len(),
            });
        }
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }

    /// Mints a token exactly as Audiobookshelf's `ApiKey.generateApiKey` does.
    // `Claims` holds only strings and integers: serde_json's `to_vec` fails only for a map
    // with non-string keys or a `Serialize` impl that errors, so its `expect` cannot fire.
    #[allow(clippy::expect_used)]
    pub(crate) fn sign(&self, id: KeyId, name: &str, iat: i64, exp: Option<i64>) -> String {
        #[derive(Serialize)]
        struct Claims<'a> {
            #[serde(rename = "keyId")]
            key_id: String,
            name: &'a str,
            #[serde(rename = "type")]
            kind: &'static str,
            iat: i64,
            #[serde(skip_serializing_if = "Option::is_none")]
            exp: Option<i64>,
        }
        let claims = Claims {
            key_id: id.to_string(),
            name,
            kind: "api",
            iat,
            exp,
        };
        let json = serde_json::to_vec(&claims).expect("claims always serialize");
        let capacity = (json.len().saturating_mul(4) / 3)
            .saturating_add(HEADER_B64.len())
            .saturating_add(48);
        let mut token = String::with_capacity(capacity);
        token.push_str(HEADER_B64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&json, &mut token);
        let tag = hmac::sign(&self.0, token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut token);
        token
    }

    /// Checks everything the token alone can prove, in order: shape, header, signature,
    /// claims, and the token's own time limits at `now` (microseconds since the Unix
    /// epoch; see the module docs for the policy).
    pub(crate) fn verify<'t>(
        &self,
        token: &'t str,
        now: i64,
    ) -> Result<VerifiedJwt<'t>, Rejection> {
        let (verified, nbf) = self.authentic(token)?;
        if verified.exp.is_some_and(|exp| now >= exp) {
            return Err(Rejection::JwtExpired);
        }
        if nbf.is_some_and(|nbf| now < nbf) {
            return Err(Rejection::JwtNotYetValid);
        }
        Ok(verified)
    }

    /// [`verify`](Self::verify) short of the time limits: a token this secret signed, of
    /// an API key, whatever the time (a leak report names keys whose own `exp` may have
    /// passed; they are still ours). With the token's `nbf`, in microseconds.
    pub(crate) fn authentic<'t>(
        &self,
        token: &'t str,
    ) -> Result<(VerifiedJwt<'t>, Option<i64>), Rejection> {
        if token.len() > MAX_JWT_LEN {
            return Err(Rejection::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Rejection::Malformed);
        };

        let header: Header = decode_json(header)?;
        if header.alg != "HS256" {
            return Err(Rejection::JwtAlgorithm);
        }
        if header
            .typ
            .as_ref()
            .is_some_and(|typ| typ.as_deref() != Some("JWT"))
        {
            return Err(Rejection::JwtMalformed);
        }
        if header.crit {
            return Err(Rejection::JwtCritical);
        }

        let mut tag = [0u8; 32];
        if signature.len() != 43
            || !matches!(URL_SAFE_NO_PAD.decode_slice(signature, &mut tag), Ok(32))
        {
            return Err(Rejection::JwtSignature);
        }
        // Everything before the last '.', which is the one in front of `signature`.
        let Some((signed, _)) = token.rsplit_once('.') else {
            return Err(Rejection::Malformed);
        };
        hmac::verify(&self.0, signed.as_bytes(), &tag).map_err(|_| Rejection::JwtSignature)?;

        let claims: Claims = decode_json(payload)?;
        // Session claims first, so Audiobookshelf's access and refresh tokens (signed with
        // the same secret) are named for what they are.
        if claims.user_id || claims.username {
            return Err(Rejection::JwtSessionToken);
        }
        if claims.kind.as_deref() != Some("api") {
            return Err(Rejection::JwtType);
        }
        // Only the canonical lowercase hyphenated spelling: one key, one token text.
        let key_id = claims
            .key_id
            .as_deref()
            .and_then(|text| {
                text.parse::<KeyId>()
                    .ok()
                    .filter(|id| id.to_string() == text)
            })
            .ok_or(Rejection::JwtMalformed)?;
        let verified = VerifiedJwt {
            key_id,
            signature: signature.as_bytes(),
            exp: claims.exp.map(|exp| exp.0),
        };
        Ok((verified, claims.nbf.map(|nbf| nbf.0)))
    }
}

impl fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtSecret([redacted])")
    }
}

/// A token whose signature and claims checked out; the store decides the rest.
pub(crate) struct VerifiedJwt<'t> {
    pub key_id: KeyId,
    /// The signature as sent (base64url): what a record's hash binds to.
    pub signature: &'t [u8],
    /// The token's own `exp`, in microseconds since the Unix epoch: the token stops then
    /// whatever its record says.
    pub exp: Option<i64>,
}

/// The signature part of a token minted by [`JwtSecret::sign`].
pub(crate) fn signature_of(token: &str) -> &[u8] {
    token.rsplit('.').next().unwrap_or_default().as_bytes()
}

/// One JSON object (header or claims). serde's derived structs also take a JSON array and
/// fill the fields by position; a JWT's parts are objects (RFC 7515 §4, RFC 7519 §7.2),
/// so anything whose first non-blank byte is not `{` is refused before serde sees it.
fn decode_json<T: DeserializeOwned>(part: &str) -> Result<T, Rejection> {
    // Only small parts reach here: the whole token is length-capped.
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Rejection::JwtMalformed)?;
    // An object (not an array read by position), UTF-8 throughout (RFC 7519 §7.2).
    let text = crate::json::object_text(&bytes).ok_or(Rejection::JwtMalformed)?;
    serde_json::from_str(text).map_err(|_| Rejection::JwtMalformed)
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    /// `None` when absent; `Some(None)` for `null`, which is refused as any value other
    /// than `"JWT"` is (after `alg`), not read as absent.
    #[serde(default, deserialize_with = "present_value")]
    typ: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(rename = "keyId")]
    key_id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(rename = "userId", default, deserialize_with = "present")]
    user_id: bool,
    #[serde(default, deserialize_with = "present")]
    username: bool,
    #[serde(default, deserialize_with = "numeric_date")]
    exp: Option<Micros>,
    #[serde(default, deserialize_with = "numeric_date")]
    nbf: Option<Micros>,
    #[serde(default, deserialize_with = "numeric_date")]
    #[allow(dead_code)] // type-checked only
    iat: Option<Micros>,
}

/// A NumericDate in microseconds since the Unix epoch, saturating at `i64`'s ends (about
/// ±292 000 years, far past any clock).
#[derive(Clone, Copy)]
struct Micros(i64);

/// A present field, `null` included, is `Some`: `null` is not "absent".
fn present_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// `true` whenever the field is there at all, even as `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

/// A JSON number (RFC 7519 NumericDate) in microseconds; anything else, `null` included,
/// is an error. Integers are exact; a fraction is taken to the nearest microsecond (exact
/// for every date with at most six decimals up to year 2112, as close as `f64` allows
/// after that).
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Micros>, D::Error> {
    struct NumericDate;
    impl Visitor<'_> for NumericDate {
        type Value = Micros;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a NumericDate (JSON number)")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Micros, E> {
            Ok(Micros(v.saturating_mul(1_000_000)))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Micros, E> {
            Ok(Micros(
                i64::try_from(v).map_or(i64::MAX, |v| v.saturating_mul(1_000_000)),
            ))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Micros, E> {
            if !v.is_finite() {
                return Err(E::custom("non-finite NumericDate"));
            }
            // A float-to-integer `as` saturates at i64's ends (and v is finite).
            Ok(Micros((v * 1e6).round() as i64))
        }
    }
    d.deserialize_any(NumericDate).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> JwtSecret {
        JwtSecret::new([9u8; 32]).unwrap()
    }

    fn signed(claims: &str) -> String {
        let secret = secret();
        let mut token = format!("{HEADER_B64}.{}", URL_SAFE_NO_PAD.encode(claims));
        let tag = hmac::sign(&secret.0, token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(tag.as_ref()));
        token
    }

    #[test]
    fn minted_tokens_verify_and_carry_their_id() {
        let id = KeyId::random();
        let token = secret().sign(id, "n", 100, Some(200));
        let verified = secret().verify(&token, 150_000_000).unwrap();
        assert_eq!(verified.key_id, id);
        assert_eq!(verified.signature, signature_of(&token));
        assert_eq!(
            secret().verify(&token, 200_000_000).err(),
            Some(Rejection::JwtExpired)
        );
    }

    #[test]
    fn only_the_canonical_key_id_spelling_is_accepted() {
        let id = KeyId::random();
        let canonical = id.to_string();
        assert!(secret()
            .verify(
                &signed(&format!(r#"{{"keyId":"{canonical}","type":"api"}}"#)),
                0
            )
            .is_ok());
        let simple = id.as_uuid().simple().to_string();
        let braced = id.as_uuid().braced().to_string();
        for spelling in [
            canonical.to_uppercase(),
            simple,
            braced,
            format!("urn:uuid:{canonical}"),
        ] {
            let token = signed(&format!(r#"{{"keyId":"{spelling}","type":"api"}}"#));
            assert_eq!(
                secret().verify(&token, 0).err(),
                Some(Rejection::JwtMalformed),
                "{spelling}"
            );
        }
    }

    #[test]
    fn session_claims_are_named_before_the_type() {
        let token = signed(r#"{"userId":"u","username":"root","type":"access"}"#);
        assert_eq!(
            secret().verify(&token, 0).err(),
            Some(Rejection::JwtSessionToken)
        );
        let token = signed(r#"{"keyId":"x","type":"access"}"#);
        assert_eq!(secret().verify(&token, 0).err(), Some(Rejection::JwtType));
    }

    #[test]
    fn numeric_dates_must_be_numbers() {
        let id = KeyId::random();
        for exp in [r#""9999999999""#, "null", "true", "[1]"] {
            let token = signed(&format!(r#"{{"keyId":"{id}","type":"api","exp":{exp}}}"#));
            assert_eq!(
                secret().verify(&token, 0).err(),
                Some(Rejection::JwtMalformed),
                "{exp}"
            );
        }
        let token = signed(&format!(r#"{{"keyId":"{id}","type":"api","exp":100.5}}"#));
        assert!(secret().verify(&token, 100_000_000).is_ok());
        assert_eq!(
            secret().verify(&token, 100_500_000).err(),
            Some(Rejection::JwtExpired)
        );
    }

    fn signed_with_header(header: &str, claims: &str) -> String {
        let mut token = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let tag = hmac::sign(&secret().0, token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(tag.as_ref()));
        token
    }

    #[test]
    fn header_and_claims_must_be_objects() {
        let id = KeyId::random();
        let header = r#"{"alg":"HS256","typ":"JWT"}"#;
        let claims = format!(r#"{{"keyId":"{id}","type":"api"}}"#);
        assert!(secret()
            .verify(&signed_with_header(header, &claims), 0)
            .is_ok());
        // The same fields by position, as serde's derived structs would take them.
        let array_claims = format!(r#"["{id}","api"]"#);
        for (header, claims) in [
            (r#"["HS256",null]"#, claims.as_str()),
            (r#" ["HS256"]"#, claims.as_str()),
            (header, array_claims.as_str()),
            (header, &format!(" \n{array_claims}")),
            (r#""HS256""#, claims.as_str()),
            (header, "42"),
            (header, "null"),
        ] {
            assert_eq!(
                secret()
                    .verify(&signed_with_header(header, claims), 0)
                    .err(),
                Some(Rejection::JwtMalformed),
                "{header} {claims}"
            );
        }
        // Leading JSON whitespace before an object is fine.
        assert!(secret()
            .verify(
                &signed_with_header(&format!(" {header}"), &format!("\n{claims}")),
                0
            )
            .is_ok());
    }

    #[test]
    fn numeric_dates_are_compared_to_the_microsecond() {
        let id = KeyId::random();
        // now = 1 900 000 000.5 s.
        let now = 1_900_000_000_500_000;
        let check = |claim: &str, value: &str| {
            let token = signed(&format!(
                r#"{{"keyId":"{id}","type":"api","{claim}":{value}}}"#
            ));
            secret().verify(&token, now).err()
        };
        // exp is strict: expired at now and after.
        assert_eq!(
            check("exp", "1900000000.499999"),
            Some(Rejection::JwtExpired)
        );
        assert_eq!(check("exp", "1900000000.5"), Some(Rejection::JwtExpired));
        assert_eq!(check("exp", "1900000000.500001"), None);
        assert_eq!(check("exp", "1900000000"), Some(Rejection::JwtExpired));
        assert_eq!(check("exp", "1900000001"), None);
        // nbf is inclusive: valid from now on.
        assert_eq!(check("nbf", "1900000000.499999"), None);
        assert_eq!(check("nbf", "1900000000.5"), None);
        assert_eq!(
            check("nbf", "1900000000.500001"),
            Some(Rejection::JwtNotYetValid)
        );
        // iat is type-checked only: a future iat is not refused.
        assert_eq!(check("iat", "1900000000.500001"), None);
        assert_eq!(check("iat", "99999999999"), None);
        assert_eq!(check("iat", r#""1""#), Some(Rejection::JwtMalformed));
        // Dates at the ends of the number range saturate instead of overflowing.
        assert_eq!(check("exp", "1e300"), None);
        assert_eq!(check("exp", "18446744073709551615"), None);
        assert_eq!(check("exp", "-1e300"), Some(Rejection::JwtExpired));
        assert_eq!(check("nbf", "-9223372036854775808"), None);
    }

    #[test]
    fn oversize_tokens_are_refused_unread() {
        let token = "a".repeat(MAX_JWT_LEN + 1);
        assert_eq!(secret().verify(&token, 0).err(), Some(Rejection::Malformed));
    }
}
