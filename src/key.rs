//! Key identity and the opaque key format `<prefix>_<id><secret><crc>`.
//!
//! The format (`<prefix>_` + id, secret and checksum in 71 base62 characters) is documented
//! once, for users, in the crate docs' "Opaque keys" section (`src/lib.rs`). The checksum is
//! public: it lets a scanner, or the verifier, reject a typo or garbage without a store
//! lookup.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::str::FromStr;

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::base62;
use crate::error::{BuildError, Rejection};

/// Characters in the id part of an opaque key.
pub(crate) const ID_LEN: usize = 22;
/// Characters in the secret part of an opaque key.
pub(crate) const SECRET_LEN: usize = 43;
/// Characters in the checksum part of an opaque key.
pub(crate) const CHECKSUM_LEN: usize = 6;
/// Characters after `<prefix>_`.
pub(crate) const BODY_LEN: usize = ID_LEN + SECRET_LEN + CHECKSUM_LEN;
/// Longest prefix accepted.
pub(crate) const MAX_PREFIX_LEN: usize = 16;
/// Longest opaque key: a 16-character prefix, `_` and the body.
pub const MAX_OPAQUE_LEN: usize = MAX_PREFIX_LEN + 1 + BODY_LEN;

/// A regular expression that matches any keygate opaque key, for secret scanners
/// (GitHub push protection, gitleaks, trufflehog).
///
/// It matches every prefix; narrow it with your own prefix, e.g.
/// `\babs_[0-9A-Za-z]{71}\b`, or use [`scanner_regex`]. A match can then be confirmed
/// offline with [`checksum_ok`], which is what keeps the false-positive rate near zero.
pub const SCANNER_REGEX: &str = r"\b[a-z][a-z0-9]{0,15}_[0-9A-Za-z]{71}\b";

/// The scanner regex for keys with one `prefix`, e.g. `\babs_[0-9A-Za-z]{71}\b`.
///
/// ```
/// assert_eq!(keygate::scanner_regex("abs"), r"\babs_[0-9A-Za-z]{71}\b");
/// ```
pub fn scanner_regex(prefix: &str) -> String {
    format!(r"\b{prefix}_[0-9A-Za-z]{{{BODY_LEN}}}\b")
}

/// Whether `candidate` has the shape of an opaque key (a prefix matching
/// `[a-z][a-z0-9]{0,15}`, `_`, 71 base62 characters) and its checksum is right: the check
/// a scanner runs on a regex match before raising an alert. It never proves a key valid.
///
/// ```
/// assert!(!keygate::checksum_ok("abs_not-a-key"));
/// ```
pub fn checksum_ok(candidate: &str) -> bool {
    match candidate.split_once('_') {
        // No gate can be built with a prefix outside the grammar, so no key has one.
        Some((prefix, _)) => {
            validate_prefix(prefix).is_ok() && OpaqueKey::parse(candidate, prefix).is_ok()
        }
        None => false,
    }
}

/// The id of an API key: a UUID, shown in its hyphenated form (as Audiobookshelf's `keyId`).
///
/// ```
/// let id: keygate::KeyId = "0b9f2b2e-6c4b-4a1e-9d3e-3f1f7a0c2d11".parse().unwrap();
/// assert_eq!(id.to_string(), "0b9f2b2e-6c4b-4a1e-9d3e-3f1f7a0c2d11");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(Uuid);

/// Feeds all 128 bits of the id to the hasher, so a keyed hasher (std's `RandomState`)
/// spreads ids that an attacker chose to collide. Folding them first (as keygate once did)
/// would make every id with the same `hi ^ lo` collide under any hasher.
impl Hash for KeyId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(self.0.as_u128());
    }
}

/// A hasher for maps keyed by [`KeyId`] that only ever hold *trusted* ids: records an admin
/// stored (random v4 ids, or imported rows) and keys that verified. It is not
/// DoS-resistant (it folds the id into one multiply), so a map that can hold an id chosen
/// by a requester (a cache of lookups, for one) must use a keyed hasher instead.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            if let Some(head) = word.get_mut(..chunk.len()) {
                head.copy_from_slice(chunk);
            }
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_u128(&mut self, n: u128) {
        // Fold the halves: one multiply for a random id (truncating casts intended).
        let (hi, lo) = ((n >> 64) as u64, n as u64);
        self.write_u64(hi ^ lo);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` keyed by [`KeyId`] with [`IdHasher`].
pub(crate) type IdMap<V> = HashMap<KeyId, V, BuildHasherDefault<IdHasher>>;

impl KeyId {
    /// The all-zero id, before every other in order.
    pub(crate) const NIL: Self = Self(Uuid::nil());

    /// A new random (version 4) id.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        fill_random(&mut bytes);
        Self(uuid::Builder::from_random_bytes(bytes).into_uuid())
    }

    /// The id whose UUID is `value` (for a fixed, well-known id; see
    /// [`NewKey::id`](crate::NewKey::id)).
    pub const fn from_u128(value: u128) -> Self {
        Self(Uuid::from_u128(value))
    }

    /// The UUID.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl From<Uuid> for KeyId {
    fn from(value: Uuid) -> Self {
        Self(value)
    }
}

impl From<KeyId> for Uuid {
    fn from(value: KeyId) -> Self {
        value.0
    }
}

impl FromStr for KeyId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0.hyphenated())
    }
}

/// Which kind of token a key is. A record remembers its format: an opaque record never
/// accepts a JWT and a JWT record never accepts an opaque key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum KeyFormat {
    /// `<prefix>_<id><secret><crc>`: the default.
    #[default]
    Opaque,
    /// An Audiobookshelf-compatible HS256 JWT.
    Jwt,
}

impl KeyFormat {
    /// `"opaque"` or `"jwt"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            KeyFormat::Opaque => "opaque",
            KeyFormat::Jwt => "jwt",
        }
    }
}

impl fmt::Display for KeyFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyFormat {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "opaque" => Ok(KeyFormat::Opaque),
            "jwt" => Ok(KeyFormat::Jwt),
            _ => Err(UnknownFormat),
        }
    }
}

/// A key format name other than `opaque` or `jwt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown key format (expected \"opaque\" or \"jwt\")")]
pub struct UnknownFormat;

/// Checks an application's key prefix: `[a-z][a-z0-9]{0,15}`.
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), BuildError> {
    let bytes = prefix.as_bytes();
    let ok = bytes.len() <= MAX_PREFIX_LEN
        && bytes.first().is_some_and(u8::is_ascii_lowercase)
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(BuildError::InvalidPrefix(prefix.to_owned()))
    }
}

/// A parsed opaque key: borrowed pieces of the token, checksum already confirmed.
pub(crate) struct OpaqueKey<'a> {
    pub id: KeyId,
    /// The 43-character secret part; what the pepper HMAC is computed over.
    pub secret: &'a [u8],
    /// The token without its checksum (`<prefix>_<id part><secret part>`): what a
    /// [`HashScheme::Bound`](crate::HashScheme::Bound) hash covers.
    pub bound: &'a [u8],
}

impl<'a> OpaqueKey<'a> {
    /// Parses `token` as an opaque key with `prefix`. Touches nothing but the input.
    pub fn parse(token: &'a str, prefix: &str) -> Result<Self, Rejection> {
        let bytes = token.as_bytes();
        let Some(body) = bytes
            .strip_prefix(prefix.as_bytes())
            .and_then(|rest| rest.strip_prefix(b"_"))
        else {
            // Only now look for a `_` at all (a key with this prefix has one: no search).
            if !bytes.contains(&b'_') {
                return Err(Rejection::Malformed); // not a prefixed key at all
            }
            return Err(Rejection::WrongPrefix);
        };
        // A fixed-size array from here on: its constant sub-ranges below need no bounds check.
        let Ok(body) = <&'a [u8; BODY_LEN]>::try_from(body) else {
            return Err(Rejection::Malformed);
        };
        if !base62::all_digits(body) {
            return Err(Rejection::Malformed);
        }
        // `body` is a suffix of `bytes`, so this split always succeeds.
        let Some((signed, checksum)) = bytes.split_last_chunk::<CHECKSUM_LEN>() else {
            return Err(Rejection::Malformed);
        };
        if base62::decode_fixed(checksum) != Some(u128::from(crc32fast::hash(signed))) {
            return Err(Rejection::BadChecksum);
        }
        let id = body
            .first_chunk::<ID_LEN>()
            .and_then(base62::decode_fixed)
            .ok_or(Rejection::Malformed)?;
        Ok(Self {
            id: KeyId(Uuid::from_u128(id)),
            secret: &body[ID_LEN..ID_LEN + SECRET_LEN],
            bound: signed,
        })
    }

    /// Builds a fresh key string for `id` with a new random secret.
    pub fn generate(prefix: &str, id: KeyId) -> String {
        let mut out = String::with_capacity(prefix.len().saturating_add(1 + BODY_LEN));
        out.push_str(prefix);
        out.push('_');
        let mut body = [0u8; BODY_LEN];
        base62::encode_fixed(id.0.as_u128(), &mut body[..ID_LEN]);
        random_base62(&mut body[ID_LEN..ID_LEN + SECRET_LEN]);
        // Base62 digits are ASCII, so byte-to-char is exact (and needs no UTF-8 check).
        out.extend(body[..ID_LEN + SECRET_LEN].iter().copied().map(char::from));
        let crc = crc32fast::hash(out.as_bytes());
        base62::encode_fixed(u128::from(crc), &mut body[ID_LEN + SECRET_LEN..]);
        out.extend(body[ID_LEN + SECRET_LEN..].iter().copied().map(char::from));
        zeroize::Zeroize::zeroize(&mut body);
        out
    }
}

/// Fills `out` with uniformly random base62 characters (rejection sampling: bytes >= 248
/// are dropped so that `byte % 62` is unbiased).
fn random_base62(out: &mut [u8]) {
    let mut pool = [0u8; 64];
    let mut slots = out.iter_mut().peekable();
    while slots.peek().is_some() {
        fill_random(&mut pool);
        // Pool first: `zip` pulls from it before taking a slot, so no slot is skipped.
        for (&byte, slot) in pool.iter().filter(|&&b| b < 248).zip(&mut slots) {
            *slot = base62::char_of(byte % 62);
        }
    }
    zeroize::Zeroize::zeroize(&mut pool);
}

/// Fills `out` from the operating system's CSPRNG.
// The one deliberate stop in the crate: `SystemRandom` only fails when the OS has no entropy
// source at all (no getrandom syscall and no /dev/urandom); no key can be minted safely then,
// and carrying on with a weak key would be worse than stopping. Making it a typed error would
// make the public, infallible `KeyId::random` fallible for a case no supported OS reaches.
#[allow(clippy::expect_used)]
pub(crate) fn fill_random(out: &mut [u8]) {
    SystemRandom::new()
        .fill(out)
        .expect("the operating system's random number generator failed");
}

/// An opaque key without its checksum (`<prefix>_<id part><secret part>`), what a
/// [`HashScheme::Bound`](crate::HashScheme::Bound) hash covers; `None` only for a string
/// too short to be a key.
pub(crate) fn without_checksum(token: &str) -> Option<&[u8]> {
    let end = token.len().checked_sub(CHECKSUM_LEN)?;
    token.as_bytes().get(..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids an attacker forges so that `hi ^ lo` is the same for all of them.
    fn colliding_ids(n: u64) -> Vec<KeyId> {
        const FOLD: u64 = 0x5a5a_5a5a_1234_5678;
        (0..n)
            .map(|i| {
                let hi = i.wrapping_mul(0x0123_4567_89ab_cdef) ^ 0xdead_beef;
                KeyId::from(Uuid::from_u64_pair(hi, hi ^ FOLD))
            })
            .collect()
    }

    #[test]
    fn ids_sharing_their_folded_halves_hash_apart_under_random_state() {
        use std::hash::BuildHasher;
        let ids = colliding_ids(4096);
        let state = std::collections::hash_map::RandomState::new();
        let hashes: std::collections::HashSet<u64> =
            ids.iter().map(|id| state.hash_one(id)).collect();
        assert!(hashes.len() > 4000, "only {} distinct hashes", hashes.len());
        // Not one bucket chain: the low bits a table indexes by are spread too.
        let buckets: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 1023).collect();
        assert!(
            buckets.len() > 900,
            "only {} of 1024 buckets used",
            buckets.len()
        );
    }

    #[test]
    fn the_trusted_id_hasher_still_folds_in_one_step() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<IdHasher>::default();
        let id = KeyId::random();
        let (hi, lo) = id.as_uuid().as_u64_pair();
        let mut folded = IdHasher::default();
        folded.write_u64(hi ^ lo);
        assert_eq!(build.hash_one(id), folded.finish());
        let mut map: IdMap<u8> = IdMap::default();
        map.insert(id, 1);
        assert_eq!(map.get(&id), Some(&1));
    }

    #[test]
    fn generated_keys_parse_back_to_their_id() {
        for _ in 0..200 {
            let id = KeyId::random();
            let token = OpaqueKey::generate("abs", id);
            assert_eq!(token.len(), 3 + 1 + BODY_LEN);
            assert!(token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_'));
            let parsed = OpaqueKey::parse(&token, "abs").expect("fresh key parses");
            assert_eq!(parsed.id, id);
            assert_eq!(Some(parsed.bound), without_checksum(&token));
            assert_eq!(
                parsed.secret,
                &token.as_bytes()[4 + ID_LEN..4 + ID_LEN + SECRET_LEN]
            );
            assert!(checksum_ok(&token));
        }
    }

    #[test]
    fn two_keys_for_one_id_differ_in_their_secret() {
        let id = KeyId::random();
        assert_ne!(OpaqueKey::generate("k", id), OpaqueKey::generate("k", id));
    }

    #[test]
    fn refusals_are_typed() {
        let token = OpaqueKey::generate("abs", KeyId::random());
        let reason = |t: &str, p: &str| OpaqueKey::parse(t, p).err();
        assert_eq!(reason(&token, "abc"), Some(Rejection::WrongPrefix));
        assert_eq!(reason(&token, "ab"), Some(Rejection::WrongPrefix));
        assert_eq!(
            reason(&token[..token.len() - 1], "abs"),
            Some(Rejection::Malformed)
        );
        assert_eq!(
            reason(&format!("{token}0"), "abs"),
            Some(Rejection::Malformed)
        );
        let mut dashed = token.clone().into_bytes();
        dashed[10] = b'-';
        assert_eq!(
            reason(std::str::from_utf8(&dashed).unwrap(), "abs"),
            Some(Rejection::Malformed)
        );
        let mut typo = token.clone().into_bytes();
        typo[30] = if typo[30] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            reason(std::str::from_utf8(&typo).unwrap(), "abs"),
            Some(Rejection::BadChecksum)
        );
    }

    #[test]
    fn an_id_part_above_u128_is_malformed_even_with_a_good_checksum() {
        let mut body = vec![b'z'; ID_LEN];
        body.extend(std::iter::repeat_n(b'a', SECRET_LEN));
        let mut token = b"abs_".to_vec();
        token.extend(&body);
        let mut crc = [0u8; CHECKSUM_LEN];
        base62::encode_fixed(u128::from(crc32fast::hash(&token)), &mut crc);
        token.extend(crc);
        let token = String::from_utf8(token).unwrap();
        assert_eq!(
            OpaqueKey::parse(&token, "abs").err(),
            Some(Rejection::Malformed)
        );
    }

    #[test]
    fn random_base62_uses_the_whole_alphabet() {
        let mut seen = [false; 62];
        let mut buf = [0u8; 4096];
        random_base62(&mut buf);
        for b in buf {
            seen[usize::from(base62::digit(b).unwrap())] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    /// `<prefix>_<body of a real key><checksum recomputed for this prefix>`.
    fn with_prefix(prefix: &str) -> String {
        let token = OpaqueKey::generate("abs", KeyId::random());
        let body = &token[4..4 + ID_LEN + SECRET_LEN];
        let mut forged = format!("{prefix}_{body}").into_bytes();
        let mut crc = [0u8; CHECKSUM_LEN];
        base62::encode_fixed(u128::from(crc32fast::hash(&forged)), &mut crc);
        forged.extend(crc);
        String::from_utf8(forged).unwrap()
    }

    #[test]
    fn checksum_ok_requires_the_prefix_grammar() {
        for good in ["a", "abs", "k9", "abcdefghijklmnop"] {
            assert!(checksum_ok(&with_prefix(good)), "{good}");
        }
        for bad in ["ABS", "Abs", "9ab", "abcdefghijklmnopq", "ab-c", "é", ""] {
            let forged = with_prefix(bad);
            assert!(!checksum_ok(&forged), "{forged}");
        }
    }

    #[test]
    fn prefixes_follow_the_grammar() {
        for good in ["a", "abs", "k9", "abcdefghijklmnop"] {
            assert!(validate_prefix(good).is_ok(), "{good}");
        }
        for bad in ["", "9a", "Abs", "ab_c", "abs-", "abcdefghijklmnopq", "é"] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_scanner_regex_is_consistent_with_the_lengths() {
        assert!(SCANNER_REGEX.contains(&format!("{{{BODY_LEN}}}")));
        assert_eq!(MAX_OPAQUE_LEN, 88);
    }
}
