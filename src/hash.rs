//! Keyed hashing at rest: `HMAC-SHA256(pepper[v], secret)` with a versioned pepper keyring.
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

/// What a record keeps of an opaque key: the pepper version and the HMAC under it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretHash {
    /// Which pepper of the [`Pepper`] keyring produced [`digest`](Self::digest).
    pub version: u32,
    /// `HMAC-SHA256(pepper[version], secret)`.
    #[serde(with = "hex32")]
    pub digest: [u8; 32],
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not a secret, but nothing a log needs either.
        f.debug_struct("SecretHash")
            .field("version", &self.version)
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
}

impl Pepper {
    /// A keyring whose current pepper is `secret` under `version`.
    /// Fails if `secret` is shorter than [`MIN_PEPPER_LEN`] bytes.
    pub fn new(version: u32, secret: impl AsRef<[u8]>) -> Result<Self, BuildError> {
        Ok(Self {
            current: version,
            keys: vec![(version, key(secret.as_ref())?)],
        })
    }

    /// Adds an older pepper that stored hashes may still use.
    /// Fails on a short secret or a version already in the keyring.
    pub fn with_previous(
        mut self,
        version: u32,
        secret: impl AsRef<[u8]>,
    ) -> Result<Self, BuildError> {
        if self.keys.iter().any(|(v, _)| *v == version) {
            return Err(BuildError::DuplicatePepperVersion(version));
        }
        self.keys.push((version, key(secret.as_ref())?));
        Ok(self)
    }

    /// The version new hashes are made under.
    pub fn current_version(&self) -> u32 {
        self.current
    }

    fn current_key(&self) -> &hmac::Key {
        &self.keys[0].1
    }

    /// Hashes `secret` under the current pepper.
    pub(crate) fn hash(&self, secret: &[u8]) -> SecretHash {
        let tag = hmac::sign(self.current_key(), secret);
        let mut digest = [0u8; 32];
        digest.copy_from_slice(tag.as_ref());
        SecretHash {
            version: self.current,
            digest,
        }
    }

    /// Checks `secret` against `stored` in constant time. An unknown version fails, after
    /// the same HMAC work, so the answer's timing says nothing about the record.
    pub(crate) fn matches(&self, secret: &[u8], stored: &SecretHash) -> bool {
        let key = self
            .keys
            .iter()
            .find(|(v, _)| *v == stored.version)
            .map(|(_, k)| k);
        let ok = hmac::verify(key.unwrap_or(self.current_key()), secret, &stored.digest).is_ok();
        ok && key.is_some()
    }

    /// Spends the same work as [`matches`](Self::matches) on a key that has no record, so
    /// that unknown ids and wrong secrets cost the same.
    pub(crate) fn burn(&self, secret: &[u8]) {
        let _ = hmac::verify(self.current_key(), secret, &[0u8; 32]);
    }
}

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
mod hex32 {
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
        for (i, pair) in text.chunks(2).enumerate() {
            let hi = char::from(pair[0]).to_digit(16);
            let lo = char::from(pair[1]).to_digit(16);
            match (hi, lo) {
                (Some(hi), Some(lo)) => out[i] = (hi << 4 | lo) as u8,
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
        let hash = old.hash(b"secret");
        let rotated = Pepper::new(2, [2u8; 32])
            .unwrap()
            .with_previous(1, [1u8; 32])
            .unwrap();
        assert!(rotated.matches(b"secret", &hash));
        assert!(!rotated.matches(b"secreT", &hash));
        assert_eq!(rotated.hash(b"secret").version, 2);
        // Once version 1 leaves the keyring its hashes stop verifying.
        let only_new = Pepper::new(2, [2u8; 32]).unwrap();
        assert!(!only_new.matches(b"secret", &hash));
        // A forged version number pointing at the current key's digest does not help.
        let forged = SecretHash {
            version: 9,
            digest: only_new.hash(b"secret").digest,
        };
        assert!(!only_new.matches(b"secret", &forged));
    }

    #[test]
    fn debug_shows_versions_not_keys() {
        let pepper = Pepper::new(3, [0x41u8; 32]).unwrap();
        let shown = format!("{pepper:?} {:?}", pepper.hash(b"x"));
        assert!(shown.contains("current: 3"));
        assert!(!shown.contains("AAAA") && !shown.contains("65, 65"));
        assert!(!shown.contains("digest"));
    }

    #[test]
    fn hashes_round_trip_through_json_as_hex() {
        let hash = Pepper::new(1, [1u8; 32]).unwrap().hash(b"s");
        let json = serde_json::to_string(&hash).unwrap();
        assert!(json.contains("\"version\":1"));
        let back: SecretHash = serde_json::from_str(&json).unwrap();
        assert_eq!(back, hash);
        assert!(serde_json::from_str::<SecretHash>(r#"{"version":1,"digest":"zz"}"#).is_err());
    }
}
