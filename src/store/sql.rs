//! What the SQL stores share: the column list, error mapping, and the checks that turn
//! column values back into a [`KeyRecord`]'s fields.

use crate::hash::{HashScheme, SecretHash};
use crate::key::KeyFormat;
use crate::store::StoreError;

/// The columns of `keygate_keys`, in the order every `SELECT` lists them and
/// the row decoders read them.
macro_rules! key_columns {
    () => {
        "id, format, hash_version, hash_digest, name, description, owner_id, created_by, \
         created_at, updated_at, expires_at, last_used_at, active, scopes, metadata, \
         hash_scheme"
    };
}
pub(crate) use key_columns;

/// Maps a driver error: pool timeouts are [`StoreError::Timeout`], values that do not
/// decode are [`StoreError::Corrupt`], the rest [`StoreError::Backend`]; the driver's error
/// is kept as the source.
pub(crate) fn store_error(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::PoolTimedOut => StoreError::Timeout,
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. } => StoreError::Corrupt(Box::new(error)),
        other => StoreError::backend(other),
    }
}

/// Whether `error` is a unique-constraint violation (an id collision on insert).
pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

/// A [`StoreError::Corrupt`] with `message`.
pub(crate) fn corrupt(message: impl Into<String>) -> StoreError {
    StoreError::Corrupt(message.into().into())
}

pub(crate) fn format_from(text: &str) -> Result<KeyFormat, StoreError> {
    text.parse()
        .map_err(|_| corrupt(format!("unknown key format {text:?}")))
}

/// The hash columns of a record: `(hash_version, hash_digest)`, both or neither, and
/// `hash_scheme` (`'secret'` when there is no hash, the column's default).
pub(crate) fn hash_to(hash: Option<&SecretHash>) -> (Option<i64>, Option<&[u8]>, &'static str) {
    match hash {
        Some(h) => (
            Some(i64::from(h.version)),
            Some(&h.digest[..]),
            h.scheme.as_str(),
        ),
        None => (None, None, HashScheme::Secret.as_str()),
    }
}

/// A record's hash from its columns; the scheme only matters when there is a hash.
pub(crate) fn hash_from(
    version: Option<i64>,
    digest: Option<Vec<u8>>,
    scheme: Option<String>,
) -> Result<Option<SecretHash>, StoreError> {
    match (version, digest) {
        (None, None) => Ok(None),
        (Some(version), Some(digest)) => {
            let version = u32::try_from(version)
                .map_err(|_| corrupt(format!("hash version {version} out of range")))?;
            let digest: [u8; 32] = digest.try_into().map_err(|d: Vec<u8>| {
                corrupt(format!("hash digest of {} bytes, expected 32", d.len()))
            })?;
            let scheme = scheme
                .as_deref()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| corrupt("unknown or missing hash scheme"))?;
            Ok(Some(SecretHash {
                version,
                digest,
                scheme,
            }))
        }
        _ => Err(corrupt(
            "hash version and digest must be both set or both null",
        )),
    }
}

/// One embedded migration: `(version, description, SQL)`.
pub(crate) type Migration = (i64, &'static str, &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_and_bad_ones_are_corrupt() {
        let secret = || Some("secret".to_owned());
        for scheme in [HashScheme::Secret, HashScheme::Bound] {
            let hash = SecretHash {
                version: u32::MAX,
                digest: [3; 32],
                scheme,
            };
            let (v, d, s) = hash_to(Some(&hash));
            assert_eq!(
                hash_from(v, d.map(<[u8]>::to_vec), Some(s.to_owned())).unwrap(),
                Some(hash)
            );
        }
        assert!(hash_from(None, None, secret()).unwrap().is_none());
        assert!(matches!(
            hash_from(Some(1), None, secret()),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            hash_from(Some(1), Some(vec![0; 31]), secret()),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            hash_from(Some(-1), Some(vec![0; 32]), secret()),
            Err(StoreError::Corrupt(_))
        ));
        for scheme in [None, Some("Bound".to_owned()), Some(String::new())] {
            assert!(matches!(
                hash_from(Some(1), Some(vec![0; 32]), scheme),
                Err(StoreError::Corrupt(_))
            ));
        }
    }

    #[test]
    fn formats_parse() {
        assert!(format_from("opaque").is_ok() && format_from("nope").is_err());
    }
}
