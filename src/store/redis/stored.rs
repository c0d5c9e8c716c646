//! The JSON a [`RedisStore`](super::RedisStore) keeps for each record: [`StoredRecord`].
//!
//! Private and versioned, so that [`KeyRecord`]'s public serde shape is not the storage
//! format: renaming a public field or enum variant cannot change (or stop reading) data at
//! rest. Every field the store writes is named here, and so is every enum's text.
//!
//! Decoding is strict. Every field must be present (`null` where the record has none) and
//! nothing else may be: a missing `scopes`, `expires_at` or `hash` read as a default would
//! be unscoped, never-expiring or signature-only, i.e. failing open. Anything else, or a
//! `schema` other than [`SCHEMA`], is [`StoreError::Corrupt`].

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::StoreError;
use crate::hash::{HashScheme, SecretHash};
use crate::key::{KeyFormat, KeyId};
use crate::limits::{CreditPolicy, RateLimit};
use crate::record::{KeyRecord, Metadata};

/// The `schema` every record written by this version carries, and the only one it reads.
pub(super) const SCHEMA: u32 = 1;

/// A record as stored, under `<namespace>v1:key:<id>`. `last_used_at` is not part of it:
/// it lives in the `last_used` hash, so a last-used batch never rewrites records.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRecord {
    /// [`SCHEMA`].
    schema: u32,
    id: Uuid,
    format: StoredFormat,
    #[serde(deserialize_with = "Option::deserialize")]
    hash: Option<StoredHash>,
    name: String,
    #[serde(deserialize_with = "Option::deserialize")]
    description: Option<String>,
    owner: String,
    #[serde(deserialize_with = "Option::deserialize")]
    created_by: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    #[serde(deserialize_with = "Option::deserialize")]
    expires_at: Option<DateTime<Utc>>,
    active: bool,
    #[serde(deserialize_with = "Option::deserialize")]
    scopes: Option<BTreeSet<String>>,
    metadata: Metadata,
    /// The usage policy (issue 9), in Unkey's JSON shapes (`RateLimit`, `CreditPolicy`:
    /// their serde shapes are a public, documented contract, so they are the storage
    /// format too). The one exception to "every field present": records written before
    /// these fields existed have none, and had no limits; a record written with them is
    /// refused as corrupt by older versions (`deny_unknown_fields`), never read unlimited.
    #[serde(default)]
    ratelimits: Vec<RateLimit>,
    #[serde(default)]
    credits: Option<CreditPolicy>,
}

/// A stored hash: every field required.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredHash {
    version: u32,
    #[serde(with = "crate::hash::hex32")]
    digest: [u8; 32],
    scheme: StoredScheme,
}

/// [`KeyFormat`] as stored.
#[derive(Serialize, Deserialize)]
enum StoredFormat {
    #[serde(rename = "opaque")]
    Opaque,
    #[serde(rename = "jwt")]
    Jwt,
}

/// [`HashScheme`] as stored.
#[derive(Serialize, Deserialize)]
enum StoredScheme {
    #[serde(rename = "secret")]
    Secret,
    #[serde(rename = "bound")]
    Bound,
}

impl From<KeyFormat> for StoredFormat {
    fn from(format: KeyFormat) -> Self {
        match format {
            KeyFormat::Opaque => Self::Opaque,
            KeyFormat::Jwt => Self::Jwt,
        }
    }
}

impl From<StoredFormat> for KeyFormat {
    fn from(format: StoredFormat) -> Self {
        match format {
            StoredFormat::Opaque => Self::Opaque,
            StoredFormat::Jwt => Self::Jwt,
        }
    }
}

impl From<HashScheme> for StoredScheme {
    fn from(scheme: HashScheme) -> Self {
        match scheme {
            HashScheme::Secret => Self::Secret,
            HashScheme::Bound => Self::Bound,
        }
    }
}

impl From<StoredScheme> for HashScheme {
    fn from(scheme: StoredScheme) -> Self {
        match scheme {
            StoredScheme::Secret => Self::Secret,
            StoredScheme::Bound => Self::Bound,
        }
    }
}

/// A stored record of a `schema` this version does not read.
#[derive(Debug, thiserror::Error)]
#[error("stored record has schema {0}; this version of keygate reads schema {SCHEMA} only")]
struct UnknownSchema(u32);

/// A stored record whose `id` is not the one in its key name.
#[derive(Debug, thiserror::Error)]
#[error("stored record's id is not the id it is stored under")]
pub(super) struct MisplacedRecord;

/// A stored last-used value that is not Unix microseconds.
#[derive(Debug, thiserror::Error)]
#[error("last-used value {0:?} is not Unix microseconds")]
struct BadLastUsed(String);

fn corrupt(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Corrupt(Box::new(error))
}

/// The record as stored: [`StoredRecord`] JSON, without `last_used_at`.
pub(super) fn encode(record: &KeyRecord) -> Result<Vec<u8>, StoreError> {
    let stored = StoredRecord {
        schema: SCHEMA,
        id: *record.id.as_uuid(),
        format: record.format.into(),
        hash: record.hash.as_ref().map(|hash| StoredHash {
            version: hash.version,
            digest: hash.digest,
            scheme: hash.scheme.into(),
        }),
        name: record.name.clone(),
        description: record.description.clone(),
        owner: record.owner.clone(),
        created_by: record.created_by.clone(),
        created_at: record.created_at,
        updated_at: record.updated_at,
        expires_at: record.expires_at,
        active: record.active,
        scopes: record.scopes.clone(),
        metadata: record.metadata.clone(),
        ratelimits: record.ratelimits.clone(),
        credits: record.credits.clone(),
    };
    serde_json::to_vec(&stored).map_err(StoreError::backend)
}

/// The record stored under `id`, with `last_used` (Unix microseconds) from the
/// `last_used` hash; strictly, see the module documentation.
pub(super) fn decode(
    id: KeyId,
    json: &[u8],
    last_used: Option<&[u8]>,
) -> Result<KeyRecord, StoreError> {
    let stored: StoredRecord = serde_json::from_slice(json).map_err(corrupt)?;
    if stored.schema != SCHEMA {
        return Err(corrupt(UnknownSchema(stored.schema)));
    }
    if stored.id != *id.as_uuid() {
        return Err(corrupt(MisplacedRecord));
    }
    Ok(KeyRecord {
        id,
        format: stored.format.into(),
        hash: stored.hash.map(|h| SecretHash {
            version: h.version,
            digest: h.digest,
            scheme: h.scheme.into(),
        }),
        name: stored.name,
        description: stored.description,
        owner: stored.owner,
        created_by: stored.created_by,
        created_at: stored.created_at,
        updated_at: stored.updated_at,
        expires_at: stored.expires_at,
        last_used_at: last_used.map(decode_micros).transpose()?,
        active: stored.active,
        scopes: stored.scopes,
        metadata: stored.metadata,
        ratelimits: stored.ratelimits,
        credits: stored.credits,
    })
}

/// What [`delete`](crate::KeyStore::delete) needs to find a record's index entries, read
/// leniently so that a record too damaged to decode can still be deleted.
#[derive(Deserialize)]
pub(super) struct IndexFields {
    pub(super) owner: String,
    pub(super) created_at: DateTime<Utc>,
}

impl IndexFields {
    /// The index fields of `json`, if it has them.
    pub(super) fn of(json: &[u8]) -> Option<Self> {
        serde_json::from_slice(json).ok()
    }
}

/// A key id as the indexes and listings hold it.
pub(super) fn decode_id(raw: &[u8]) -> Result<KeyId, StoreError> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt(MisplacedRecord))
}

fn decode_micros(raw: &[u8]) -> Result<DateTime<Utc>, StoreError> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(|| corrupt(BadLastUsed(String::from_utf8_lossy(raw).into_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as schema 1 stores it.
    fn schema_1(id: KeyId) -> serde_json::Value {
        serde_json::json!({
            "schema": 1,
            "id": id.to_string(),
            "format": "opaque",
            "hash": {"version": 1, "digest": "ab".repeat(32), "scheme": "bound"},
            "name": "n",
            "description": null,
            "owner": "o",
            "created_by": null,
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
            "expires_at": "2027-01-01T00:00:00Z",
            "active": true,
            "scopes": ["a:read"],
            "metadata": {},
        })
    }

    fn decodes(value: &serde_json::Value, id: KeyId) -> Result<KeyRecord, StoreError> {
        decode(id, &serde_json::to_vec(value).unwrap(), None)
    }

    #[test]
    fn schema_1_decodes_with_last_used_from_the_hash() {
        let id = KeyId::random();
        let json = serde_json::to_vec(&schema_1(id)).unwrap();
        let record = decode(id, &json, Some(b"1767225600000000")).unwrap();
        let hash = record.hash.unwrap();
        assert_eq!(hash.scheme, HashScheme::Bound);
        assert_eq!(hash.digest, [0xab; 32]);
        assert_eq!(record.scopes.unwrap().len(), 1);
        assert_eq!(
            record.last_used_at,
            DateTime::from_timestamp_micros(1_767_225_600_000_000)
        );
        assert!(record.expires_at.is_some());
        assert!(matches!(
            decode(id, &json, Some(b"yesterday")),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn another_schema_or_none_is_corrupt() {
        let id = KeyId::random();
        for schema in [serde_json::json!(0), serde_json::json!(2), "1".into()] {
            let mut value = schema_1(id);
            value["schema"] = schema.clone();
            let err = decodes(&value, id).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt(_)), "schema {schema}");
        }
        let mut value = schema_1(id);
        value["schema"] = 2.into();
        match decodes(&value, id) {
            Err(StoreError::Corrupt(source)) => {
                assert!(source.to_string().contains("schema 2"), "{source}");
            }
            other => panic!("schema 2: {other:?}"),
        }
        // What keygate wrote before records had a schema: `KeyRecord`'s own shape.
        let mut before = schema_1(id);
        let fields = before.as_object_mut().unwrap();
        fields.remove("schema");
        fields.insert("last_used_at".into(), serde_json::Value::Null);
        assert!(matches!(decodes(&before, id), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn a_missing_unknown_or_misplaced_field_is_corrupt() {
        let id = KeyId::random();
        let fields: Vec<String> = schema_1(id).as_object().unwrap().keys().cloned().collect();
        assert_eq!(fields.len(), 14);
        for field in &fields {
            let mut value = schema_1(id);
            value.as_object_mut().unwrap().remove(field);
            assert!(
                matches!(decodes(&value, id), Err(StoreError::Corrupt(_))),
                "without {field}"
            );
        }
        let corrupt_with = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut value = schema_1(id);
            edit(&mut value);
            matches!(decodes(&value, id), Err(StoreError::Corrupt(_)))
        };
        assert!(corrupt_with(&|v| v["extra"] = serde_json::json!(1)));
        assert!(corrupt_with(
            &|v| v["last_used_at"] = serde_json::Value::Null
        ));
        assert!(corrupt_with(&|v| v["hash"]["salt"] = serde_json::json!(1)));
        assert!(corrupt_with(&|v| {
            v["hash"].as_object_mut().unwrap().remove("scheme");
        }));
        assert!(corrupt_with(
            &|v| v["hash"]["scheme"] = serde_json::json!("nope")
        ));
        assert!(corrupt_with(&|v| v["format"] = serde_json::json!("Opaque")));
        assert!(corrupt_with(&|v| v["scopes"] = serde_json::json!([1, 2])));
        assert!(corrupt_with(&|v| v["scopes"] = serde_json::json!({})));
        assert!(corrupt_with(&|v| v["metadata"] = serde_json::json!([])));
        assert!(corrupt_with(
            &|v| v["id"] = serde_json::json!(KeyId::random().to_string())
        ));
        assert!(!corrupt_with(&|_| {}));
    }

    fn full_record() -> KeyRecord {
        let now = DateTime::from_timestamp_micros(1_767_225_600_123_456).unwrap();
        let mut metadata = Metadata::new();
        metadata.insert("team".into(), serde_json::json!({"n": [1, 2]}));
        KeyRecord {
            id: KeyId::random(),
            format: KeyFormat::Jwt,
            hash: Some(SecretHash {
                version: 3,
                digest: [0x5a; 32],
                scheme: HashScheme::Secret,
            }),
            name: "n".into(),
            description: Some("d".into()),
            owner: "o".into(),
            created_by: Some("admin".into()),
            created_at: now,
            updated_at: now,
            expires_at: Some(now),
            last_used_at: Some(now),
            active: false,
            scopes: Some(BTreeSet::from(["a:read".to_owned()])),
            metadata,
            ratelimits: vec![crate::limits::RateLimit::new("r", 5, 1000).with_burst(2)],
            credits: Some(
                crate::limits::CreditPolicy::new(7)
                    .refill(crate::limits::CreditRefill::monthly(9, 31)),
            ),
        }
    }

    #[test]
    fn encode_writes_schema_1_without_last_used() {
        let mut record = full_record();
        let json = encode(&record).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["schema"], 1);
        assert_eq!(value["format"], "jwt");
        assert_eq!(value["hash"]["scheme"], "secret");
        assert!(value.get("last_used_at").is_none());
        let back = decode(record.id, &json, None).unwrap();
        record.last_used_at = None;
        assert_eq!(back, record);
        // Every field the store writes is one it reads back: no optional field is left out.
        let mut bare = full_record();
        bare.hash = None;
        bare.description = None;
        bare.created_by = None;
        bare.expires_at = None;
        bare.scopes = None;
        bare.last_used_at = None;
        let json = encode(&bare).unwrap();
        assert_eq!(decode(bare.id, &json, None).unwrap(), bare);
    }

    #[test]
    fn index_fields_survive_other_damage() {
        let id = KeyId::random();
        let mut value = schema_1(id);
        value["scopes"] = serde_json::json!(7);
        let fields = IndexFields::of(&serde_json::to_vec(&value).unwrap()).unwrap();
        assert_eq!(fields.owner, "o");
        assert!(IndexFields::of(b"{not json").is_none());
    }
}
