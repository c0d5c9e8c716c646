//! Keyed hashing at rest: `HMAC-SHA256(pepper[v], input)` with a versioned pepper keyring,
//! where the input is named by the hash's [`HashScheme`].
//!
//! Keys carry 256 bits of randomness, so a slow password hash would add nothing but
//! latency (DRF API Key's issue #173): one HMAC under a server-side pepper is what a leaked
//! database cannot reverse and what an attacker without the pepper cannot even test offline.

use std::fmt;

use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::error::BuildError;

/// Shortest pepper accepted, in bytes.
pub const MIN_PEPPER_LEN: usize = 32;

/// What a record keeps of a key: the pepper version, what was hashed, and the HMAC.
///
/// Self-describing, like a PHC string: [`version`](Self::version) names the pepper and
/// [`scheme`](Self::scheme) the input, so older hashes keep verifying and are re-hashed
/// to the current pepper and scheme after their next successful use.
///
/// Stores build one with [`SecretHash::new`] from the columns they keep.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SecretHash {
    /// Which pepper of the [`Pepper`] keyring produced [`digest`](Self::digest).
    pub version: u32,
    /// `HMAC-SHA256(pepper[version], input)`, the input given by [`scheme`](Self::scheme).
    #[serde(with = "hex32")]
    pub digest: [u8; 32],
    /// What [`digest`](Self::digest) was computed over. Absent in serialized hashes
    /// written before keygate had schemes, which were all [`HashScheme::Secret`].
    #[serde(default)]
    pub scheme: HashScheme,
}

impl SecretHash {
    /// A hash as a store reads it back: the pepper `version`, the HMAC `digest` and the
    /// `scheme` it was computed over.
    ///
    /// ```
    /// use keygate::{HashScheme, SecretHash};
    ///
    /// let hash = SecretHash::new(1, [0u8; 32], HashScheme::Bound);
    /// assert_eq!((hash.version, hash.scheme), (1, HashScheme::Bound));
    /// ```
    pub fn new(version: u32, digest: [u8; 32], scheme: HashScheme) -> Self {
        Self {
            version,
            digest,
            scheme,
        }
    }
}

/// What a [`SecretHash`]'s digest was computed over.
///
/// - Opaque keys are hashed as [`Bound`](Self::Bound): the whole key without its
///   checksum, `<prefix>_<id part><secret part>`. A digest copied to another record (other
///   id), or the same body under another prefix (another application sharing the store
///   and pepper), then matches nothing. Opaque hashes from earlier versions are
///   [`Secret`](Self::Secret) (the 43-character secret part alone): they still verify,
///   and are re-hashed as `Bound` after their next successful verify.
/// - JWT keys keygate minted are hashed as [`Secret`](Self::Secret) over their signature
///   text. Binding adds nothing there: the HS256 signature already covers the `keyId`
///   claim, so a signature (and its digest) copied to another record's id belongs to no
///   token that can carry that id; the record only says *which* correctly signed token
///   for its id it accepts. A `Bound` hash on a JWT record matches no token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HashScheme {
    /// `HMAC(pepper, secret)`: the opaque secret part alone (legacy), or a JWT's signature.
    #[default]
    Secret,
    /// `HMAC(pepper, "<prefix>_<id part><secret part>")`: an opaque key bound to its prefix
    /// and id.
    Bound,
}

impl HashScheme {
    /// The stable text form stored in SQL columns and JSON: `"secret"` or `"bound"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            HashScheme::Secret => "secret",
            HashScheme::Bound => "bound",
        }
    }
}

impl std::str::FromStr for HashScheme {
    type Err = UnknownScheme;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "secret" => Ok(HashScheme::Secret),
            "bound" => Ok(HashScheme::Bound),
            _ => Err(UnknownScheme),
        }
    }
}

/// A hash scheme name keygate does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown hash scheme")]
pub struct UnknownScheme;

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not a secret, but nothing a log needs either.
        f.debug_struct("SecretHash")
            .field("version", &self.version)
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

/// The HMAC keys used to hash secrets at rest, by version.
///
/// New hashes use the current version; hashes under older versions keep verifying while
/// their pepper stays in the keyring, and are re-hashed under the current one after their
/// next successful use. Keep peppers out of the database (environment, secret manager).
///
/// ```
/// let pepper = keygate::Pepper::new(2, [7u8; 32])?
///     .with_previous(1, [9u8; 32])?;
/// assert_eq!(pepper.current_version(), 2);
/// # Ok::<(), keygate::BuildError>(())
/// ```
#[derive(Clone)]
pub struct Pepper {
    current: u32,
    keys: Vec<(u32, hmac::Key)>,
    /// The [`PepperFingerprint`] of each version in `keys`, computed once.
    fingerprints: Vec<(u32, PepperFingerprint)>,
}

impl Pepper {
    /// A keyring whose current pepper is `secret` under `version`.
    ///
    /// # Errors
    ///
    /// [`BuildError::PepperTooShort`] for a secret shorter than [`MIN_PEPPER_LEN`] bytes.
    pub fn new(version: u32, secret: impl AsRef<[u8]>) -> Result<Self, BuildError> {
        let key = key(secret.as_ref())?;
        Ok(Self {
            current: version,
            fingerprints: vec![(version, PepperFingerprint::of(&key))],
            keys: vec![(version, key)],
        })
    }

    /// Adds an older pepper that stored hashes may still use.
    /// Fails on a short secret or a version already in the keyring.
    ///
    /// # Errors
    ///
    /// [`BuildError::PepperTooShort`] for a short secret; [`BuildError::DuplicatePepperVersion`]
    /// when `version` is already in the keyring.
    pub fn with_previous(
        mut self,
        version: u32,
        secret: impl AsRef<[u8]>,
    ) -> Result<Self, BuildError> {
        if self.keys.iter().any(|(v, _)| *v == version) {
            return Err(BuildError::DuplicatePepperVersion(version));
        }
        let key = key(secret.as_ref())?;
        self.fingerprints
            .push((version, PepperFingerprint::of(&key)));
        self.keys.push((version, key));
        Ok(self)
    }

    /// The version new hashes are made under.
    pub fn current_version(&self) -> u32 {
        self.current
    }

    /// The fingerprint of every version in the keyring, the current one first.
    pub(crate) fn fingerprints(&self) -> &[(u32, PepperFingerprint)] {
        &self.fingerprints
    }

    fn current_key(&self) -> &hmac::Key {
        // `new` puts the current key first and nothing removes it; the fallback is never
        // taken but keeps this free of indexing.
        self.keys.first().map_or(&FALLBACK, |(_, k)| k)
    }

    /// Hashes `input` under the current pepper, labelled with `scheme`.
    pub(crate) fn hash(&self, scheme: HashScheme, input: &[u8]) -> SecretHash {
        let tag = hmac::sign(self.current_key(), input);
        let mut digest = [0u8; 32];
        for (out, byte) in digest.iter_mut().zip(tag.as_ref()) {
            *out = *byte;
        }
        SecretHash {
            version: self.current,
            digest,
            scheme,
        }
    }

    /// Checks `stored` in constant time against the input its scheme names: `secret` for
    /// [`HashScheme::Secret`], `bound` for [`HashScheme::Bound`] (`None` when the key has
    /// no bound form, i.e. a JWT: then a `Bound` hash fails). An unknown version fails,
    /// after the same HMAC work, so the answer's timing says nothing about the record.
    pub(crate) fn matches(&self, stored: &SecretHash, secret: &[u8], bound: Option<&[u8]>) -> bool {
        let key = self
            .keys
            .iter()
            .find(|(v, _)| *v == stored.version)
            .map(|(_, k)| k);
        let (input, applicable) = match stored.scheme {
            HashScheme::Secret => (secret, true),
            HashScheme::Bound => (bound.unwrap_or(secret), bound.is_some()),
        };
        let ok = hmac::verify(key.unwrap_or(self.current_key()), input, &stored.digest).is_ok();
        ok && key.is_some() && applicable
    }

    /// Spends the same work as [`matches`](Self::matches) on a key that has no record, so
    /// that unknown ids and wrong secrets cost the same.
    pub(crate) fn burn(&self, input: &[u8]) {
        let _ = hmac::verify(self.current_key(), input, &[0u8; 32]);
    }
}

/// What a pepper's fingerprint is the HMAC of. No key body (`[a-z0-9_]` and base62) and
/// no JWT signature (base64url) contains a space, so no stored hash is ever the HMAC of
/// this text: a fingerprint cannot stand in for a key's hash, nor the reverse.
const FINGERPRINT_LABEL: &[u8] = b"keygate pepper fingerprint v1";

/// A keyed fingerprint of one pepper version: `HMAC-SHA256(pepper, "keygate pepper
/// fingerprint v1")`. A store remembers the fingerprint of each pepper version it was used
/// with ([`KeyStore::remember_pepper`](crate::KeyStore::remember_pepper)), so that a gate
/// configured with another pepper under the same version is told so
/// ([`Keygate::check_pepper`](crate::Keygate::check_pepper)) instead of minting keys that
/// never verify.
///
/// It reveals nothing about the pepper beyond what any one stored key hash already does:
/// someone holding the database and one key of their own can test guessed peppers
/// against that key's hash just as well, which is why peppers are at least
/// [`MIN_PEPPER_LEN`] bytes and best random ([`Pepper::generate`]).
///
/// Stores keep it as its 32 bytes ([`as_bytes`](Self::as_bytes),
/// [`from_bytes`](Self::from_bytes)). `Debug` shows its first four bytes only.
///
/// ```
/// let fingerprint = keygate::PepperFingerprint::from_bytes([7; 32]);
/// assert_eq!(fingerprint.as_bytes(), &[7; 32]);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PepperFingerprint([u8; 32]);

impl PepperFingerprint {
    fn of(key: &hmac::Key) -> Self {
        let tag = hmac::sign(key, FINGERPRINT_LABEL);
        let mut bytes = [0u8; 32];
        for (out, byte) in bytes.iter_mut().zip(tag.as_ref()) {
            *out = *byte;
        }
        Self(bytes)
    }

    /// A fingerprint as a store kept it.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The fingerprint's bytes, for a store to keep.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for PepperFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PepperFingerprint(")?;
        for byte in self.0.iter().take(4) {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("…)")
    }
}

/// Never used to hash anything (see [`Pepper::current_key`]); a fixed key so that the
/// unreachable fallback is not a panic.
static FALLBACK: std::sync::LazyLock<hmac::Key> =
    std::sync::LazyLock::new(|| hmac::Key::new(hmac::HMAC_SHA256, &[0u8; MIN_PEPPER_LEN]));

fn key(secret: &[u8]) -> Result<hmac::Key, BuildError> {
    if secret.len() < MIN_PEPPER_LEN {
        return Err(BuildError::PepperTooShort {
            min: MIN_PEPPER_LEN,
            got: secret.len(),
        });
    }
    Ok(hmac::Key::new(hmac::HMAC_SHA256, secret))
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let versions: Vec<u32> = self.keys.iter().map(|(v, _)| *v).collect();
        f.debug_struct("Pepper")
            .field("current", &self.current)
            .field("versions", &versions)
            .finish()
    }
}

/// `[u8; 32]` as 64 lowercase hex characters in serialized records.
pub(crate) mod hex32 {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(64);
        for b in bytes {
            out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            out.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let text = text.as_bytes();
        if text.len() != 64 {
            return Err(D::Error::custom("expected 64 hex characters"));
        }
        let mut out = [0u8; 32];
        for (slot, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
            let &[hi, lo] = pair else {
                return Err(D::Error::custom("expected 64 hex characters"));
            };
            match (char::from(hi).to_digit(16), char::from(lo).to_digit(16)) {
                (Some(hi), Some(lo)) => *slot = (hi << 4 | lo) as u8,
                _ => return Err(D::Error::custom("expected hex characters")),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_peppers_are_refused() {
        assert!(matches!(
            Pepper::new(1, [0u8; 31]),
            Err(BuildError::PepperTooShort { min: 32, got: 31 })
        ));
        assert!(Pepper::new(1, [0u8; 32]).is_ok());
    }

    #[test]
    fn duplicate_versions_are_refused() {
        let pepper = Pepper::new(1, [1u8; 32]).unwrap();
        assert!(matches!(
            pepper.with_previous(1, [2u8; 32]),
            Err(BuildError::DuplicatePepperVersion(1))
        ));
    }

    #[test]
    fn hashes_verify_under_their_own_version_only() {
        let old = Pepper::new(1, [1u8; 32]).unwrap();
        let hash = old.hash(HashScheme::Secret, b"secret");
        let rotated = Pepper::new(2, [2u8; 32])
            .unwrap()
            .with_previous(1, [1u8; 32])
            .unwrap();
        assert!(rotated.matches(&hash, b"secret", None));
        assert!(!rotated.matches(&hash, b"secreT", None));
        assert_eq!(rotated.hash(HashScheme::Secret, b"secret").version, 2);
        // Once version 1 leaves the keyring its hashes stop verifying.
        let only_new = Pepper::new(2, [2u8; 32]).unwrap();
        assert!(!only_new.matches(&hash, b"secret", None));
        // A forged version number pointing at the current key's digest does not help.
        let forged = SecretHash {
            version: 9,
            digest: only_new.hash(HashScheme::Secret, b"secret").digest,
            scheme: HashScheme::Secret,
        };
        assert!(!only_new.matches(&forged, b"secret", None));
    }

    #[test]
    fn fingerprints_are_keyed_per_version_and_computed_once() {
        let pepper = Pepper::new(2, [2u8; 32])
            .unwrap()
            .with_previous(1, [1u8; 32])
            .unwrap();
        let expected = |secret: &[u8]| {
            let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
            let tag = hmac::sign(&key, b"keygate pepper fingerprint v1");
            PepperFingerprint::from_bytes(tag.as_ref().try_into().unwrap())
        };
        assert_eq!(
            pepper.fingerprints(),
            [(2, expected(&[2u8; 32])), (1, expected(&[1u8; 32]))]
        );
        // Same secret, same fingerprint; another secret under the same version, another.
        let again = Pepper::new(2, [2u8; 32]).unwrap();
        assert_eq!(again.fingerprints()[0], pepper.fingerprints()[0]);
        let other = Pepper::new(2, [3u8; 32]).unwrap();
        assert_ne!(other.fingerprints()[0].1, pepper.fingerprints()[0].1);
        // Not the hash of any key: the label is no key body.
        assert_ne!(
            pepper.fingerprints()[0].1.as_bytes(),
            &pepper.hash(HashScheme::Secret, b"keygate").digest
        );
        let shown = format!("{:?}", pepper.fingerprints()[0].1);
        assert_eq!(shown.len(), "PepperFingerprint(12345678…)".len(), "{shown}");
    }

    #[test]
    fn debug_shows_versions_not_keys() {
        let pepper = Pepper::new(3, [0x41u8; 32]).unwrap();
        let shown = format!("{pepper:?} {:?}", pepper.hash(HashScheme::Secret, b"x"));
        assert!(shown.contains("current: 3"));
        assert!(!shown.contains("AAAA") && !shown.contains("65, 65"));
        assert!(!shown.contains("digest"));
    }

    #[test]
    fn hashes_round_trip_through_json_as_hex() {
        let hash = Pepper::new(1, [1u8; 32])
            .unwrap()
            .hash(HashScheme::Bound, b"s");
        let json = serde_json::to_string(&hash).unwrap();
        assert!(json.contains("\"version\":1"));
        let back: SecretHash = serde_json::from_str(&json).unwrap();
        assert_eq!(back, hash);
        assert!(json.contains("\"scheme\":\"bound\""));
        assert!(serde_json::from_str::<SecretHash>(r#"{"version":1,"digest":"zz"}"#).is_err());
        // Written before schemes existed: the secret alone.
        let legacy = format!(r#"{{"version":1,"digest":"{}"}}"#, "ab".repeat(32));
        let legacy: SecretHash = serde_json::from_str(&legacy).unwrap();
        assert_eq!(legacy.scheme, HashScheme::Secret);
    }

    #[test]
    fn each_scheme_checks_its_own_input() {
        let pepper = Pepper::new(1, [1u8; 32]).unwrap();
        let bound = pepper.hash(HashScheme::Bound, b"abs_IDSECRET");
        assert!(pepper.matches(&bound, b"SECRET", Some(b"abs_IDSECRET")));
        // Another id or prefix around the same secret: no match.
        assert!(!pepper.matches(&bound, b"SECRET", Some(b"abs_ID2SECRET")));
        assert!(!pepper.matches(&bound, b"SECRET", Some(b"xyz_IDSECRET")));
        // No bound form (a JWT): a bound hash matches nothing, even its own input.
        assert!(!pepper.matches(&bound, b"abs_IDSECRET", None));
        let legacy = pepper.hash(HashScheme::Secret, b"SECRET");
        assert!(pepper.matches(&legacy, b"SECRET", Some(b"abs_IDSECRET")));
        assert!(!pepper.matches(&legacy, b"abs_IDSECRET", Some(b"SECRET")));
        assert_eq!(
            "bound".parse::<HashScheme>(),
            Ok(HashScheme::Bound),
            "text form"
        );
        assert!("Bound".parse::<HashScheme>().is_err());
    }
}
