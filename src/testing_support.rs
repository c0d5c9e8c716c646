//! Fixtures shared by the unit tests.

use chrono::{SubsecRound, Utc};

use crate::{KeyFormat, KeyId, KeyRecord, Metadata};

/// A minimal active record of `format` with no hash, owned by `"u"`.
pub(crate) fn record(format: KeyFormat) -> KeyRecord {
    let now = Utc::now().trunc_subsecs(6);
    KeyRecord {
        id: KeyId::random(),
        format,
        hash: None,
        name: "n".into(),
        description: None,
        owner: "u".into(),
        created_by: None,
        created_at: now,
        updated_at: now,
        expires_at: None,
        last_used_at: None,
        active: true,
        scopes: None,
        metadata: Metadata::new(),
        ratelimits: Vec::new(),
        credits: None,
    }
}
