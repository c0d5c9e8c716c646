//! What a store keeps about a key ([`KeyRecord`]), what a caller asks for when minting
//! ([`NewKey`]), and how a record changes ([`KeyPatch`]).

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::hash::SecretHash;
use crate::key::{KeyFormat, KeyId};
use crate::limits::{AllowedOrigin, Cidr, NetworkPolicy};
use crate::limits::{CreditPolicy, RateLimit};

/// Longest owner id a stored record may carry, in bytes. Owner ids are user ids (a UUID,
/// an email address); anything longer is not one.
pub const MAX_STORED_OWNER_LEN: usize = 1024;

/// Free-form JSON metadata attached to a key.
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// Everything a store keeps about one key. Never the plaintext: an opaque key is kept as
/// its [`SecretHash`]; a JWT key as its id (the signature proves origin) and, when keygate
/// minted it, a hash of its signature.
///
/// keygate builds the records it mints. To [`import`](crate::Keygate::import) one (or to
/// decode one in a [`KeyStore`](crate::KeyStore)), start from [`KeyRecord::new`] and set
/// the fields that differ from its defaults:
///
/// ```
/// use keygate::chrono::{TimeDelta, Utc};
/// use keygate::{KeyFormat, KeyId, KeyRecord};
///
/// let now = Utc::now();
/// let mut record = KeyRecord::new(KeyId::random(), KeyFormat::Jwt, "Backup Script", "user-1", now);
/// record.expires_at = Some(now + TimeDelta::days(30));
/// assert!(record.active && record.hash.is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KeyRecord {
    /// Unique id; also the JWT `keyId` claim.
    pub id: KeyId,
    /// Which token format this record accepts.
    pub format: KeyFormat,
    /// The keyed hash of the secret. Required for opaque keys; for JWT keys, present when
    /// keygate minted the key (then only that exact token verifies) and absent for
    /// imported Audiobookshelf keys (then any token for this id signed with the secret does).
    pub hash: Option<SecretHash>,
    /// Display name. Shown to admins; never trusted from a token.
    pub name: String,
    /// Optional longer description.
    pub description: Option<String>,
    /// The user the key acts for; the key inherits this user's permissions.
    pub owner: String,
    /// The user who minted it, if known.
    pub created_by: Option<String>,
    /// When it was minted (or imported).
    pub created_at: DateTime<Utc>,
    /// Last change to the record (not counting last-used).
    pub updated_at: DateTime<Utc>,
    /// When it stops working; `None` never expires. `now >= expires_at` is expired.
    pub expires_at: Option<DateTime<Utc>>,
    /// Last successful use, recorded coalesced (see
    /// [`KeygateBuilder::last_used_interval`](crate::KeygateBuilder::last_used_interval)).
    pub last_used_at: Option<DateTime<Utc>>,
    /// `false` once revoked; an inactive key is refused.
    pub active: bool,
    /// Scopes narrowing the owner's permissions; `None` means the key has all of them.
    pub scopes: Option<BTreeSet<String>>,
    /// Application metadata.
    pub metadata: Metadata,
    /// Where the key may be used from: allowed client networks and browser origins.
    /// Unrestricted by default, and when absent from a serialized record (records from
    /// before keygate had network restrictions).
    #[serde(default, skip_serializing_if = "NetworkPolicy::is_unrestricted")]
    pub network: NetworkPolicy,
    /// The key's rate limits (Unkey's `ratelimits`); empty: none. See [`crate::limits`].
    #[serde(default)]
    pub ratelimits: Vec<RateLimit>,
    /// The key's usage credits policy (Unkey's `credits`); `None`: unlimited uses. The
    /// count left lives in the gate's [`Limiter`](crate::limits::Limiter).
    #[serde(default)]
    pub credits: Option<CreditPolicy>,
}

impl KeyRecord {
    /// An active record created (and last changed) at `created_at`, with no hash,
    /// description, creator, expiry, last use, scopes or metadata: set those fields as
    /// needed. An opaque record needs a [`hash`](Self::hash) before keygate accepts it.
    pub fn new(
        id: KeyId,
        format: KeyFormat,
        name: impl Into<String>,
        owner: impl Into<String>,
        created_at: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            format,
            hash: None,
            name: name.into(),
            description: None,
            owner: owner.into(),
            created_by: None,
            created_at,
            updated_at: created_at,
            expires_at: None,
            last_used_at: None,
            active: true,
            scopes: None,
            metadata: Metadata::new(),
            network: NetworkPolicy::new(),
            ratelimits: Vec::new(),
            credits: None,
        }
    }

    /// Whether the key has expired at `now` (`now >= expires_at`).
    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// The one check every record passes before keygate trusts it: the verify path applies
    /// it to whatever any store returns (so a third-party store or a hand-made table
    /// cannot fail open), and [`mint`](crate::Keygate::mint) and
    /// [`import`](crate::Keygate::import) to what they are about to write.
    ///
    /// - the id is `expected`, the id that was asked for;
    /// - the owner is not empty or blank, has no control characters and is at most
    ///   [`MAX_STORED_OWNER_LEN`] bytes (an empty owner would otherwise act as a user the
    ///   directory may not know, or, without a directory, as an unrestricted one);
    /// - an opaque record has a hash (a JWT record may lack one: an imported
    ///   Audiobookshelf key rests on its signature);
    /// - every instant lies in the years 1 to 9999 (what RFC 3339, SQL and JSON clients
    ///   all represent), so no arithmetic or rendering on it can fail;
    /// - the network policy has at most
    ///   [`MAX_ALLOWED_CIDRS`](crate::bounds::MAX_ALLOWED_CIDRS) networks and
    ///   [`MAX_ALLOWED_ORIGINS`](crate::bounds::MAX_ALLOWED_ORIGINS) origins (each entry
    ///   is valid by its type).
    ///
    /// The JSON fields need no check here: their types (a set of strings, a JSON object)
    /// are what the stores' decoders must produce or refuse as
    /// [`StoreError::Corrupt`](crate::StoreError::Corrupt).
    pub(crate) fn check(&self, expected: KeyId) -> Result<(), InvalidRecord> {
        if self.id != expected {
            return Err(InvalidRecord::new("id", "is not the id asked for"));
        }
        check_stored_owner(&self.owner)?;
        if self.format == KeyFormat::Opaque && self.hash.is_none() {
            return Err(InvalidRecord::new("hash", "an opaque record needs a hash"));
        }
        let instants = [
            ("created_at", Some(self.created_at)),
            ("updated_at", Some(self.updated_at)),
            ("expires_at", self.expires_at),
            ("last_used_at", self.last_used_at),
        ];
        for (field, at) in instants {
            if at.is_some_and(|at| !in_stored_range(at)) {
                return Err(InvalidRecord::new(field, "outside the years 1 to 9999"));
            }
        }
        self.network
            .check_bounds()
            .map_err(|(field, reason)| InvalidRecord::new(field, reason))?;
        if !self.ratelimits.is_empty() {
            crate::limits::validate_ratelimits(&self.ratelimits).map_err(|e| match e {
                crate::Error::InvalidInput { reason, .. } => {
                    InvalidRecord::new("ratelimits", reason)
                }
                _ => InvalidRecord::new("ratelimits", "invalid"),
            })?;
        }
        if let Some(credits) = &self.credits {
            credits.validate().map_err(|e| match e {
                crate::Error::InvalidInput { reason, .. } => InvalidRecord::new("credits", reason),
                _ => InvalidRecord::new("credits", "invalid"),
            })?;
        }
        Ok(())
    }
}

/// Whether `at` lies in the years 1 to 9999, the range a stored instant must be in (see
/// [`KeyRecord::check`]); the SQL stores refuse others as they decode.
pub(crate) fn in_stored_range(at: DateTime<Utc>) -> bool {
    // Two comparisons rather than a calendar computation: this runs on every verify.
    (FIRST_STORED..=LAST_STORED).contains(&at.naive_utc())
}

/// 0001-01-01T00:00:00Z, the first instant [`in_stored_range`] accepts.
const FIRST_STORED: chrono::NaiveDateTime = match chrono::NaiveDate::from_ymd_opt(1, 1, 1) {
    Some(date) => date.and_time(chrono::NaiveTime::MIN),
    None => chrono::NaiveDateTime::MIN,
};

/// 9999-12-31T23:59:60.999999999Z (a leap second), the last instant [`in_stored_range`] accepts.
const LAST_STORED: chrono::NaiveDateTime = match chrono::NaiveDate::from_ymd_opt(9999, 12, 31) {
    // A leap second's nanoseconds run past 10^9: those instants are still in the year 9999.
    Some(date) => match chrono::NaiveTime::from_hms_nano_opt(23, 59, 59, 1_999_999_999) {
        Some(time) => date.and_time(time),
        None => chrono::NaiveDateTime::MAX,
    },
    None => chrono::NaiveDateTime::MAX,
};

/// The owner rules of [`KeyRecord::check`].
pub(crate) fn check_stored_owner(owner: &str) -> Result<(), InvalidRecord> {
    // The usual owner, printable ASCII and not all spaces, passes in one pass over its
    // bytes (this runs on every verify): it has no control character, and `trim` could
    // only remove spaces from it.
    let bytes = owner.as_bytes();
    let printable = bytes
        .iter()
        .fold(true, |ok, &b| ok & (0x20..0x7f).contains(&b));
    if printable && bytes.len() <= MAX_STORED_OWNER_LEN && bytes.iter().any(|&b| b != b' ') {
        return Ok(());
    }
    if owner.trim().is_empty() {
        return Err(InvalidRecord::new("owner", "must not be empty"));
    }
    if owner.len() > MAX_STORED_OWNER_LEN {
        return Err(InvalidRecord::new("owner", "longer than 1024 bytes"));
    }
    if owner.chars().any(char::is_control) {
        return Err(InvalidRecord::new(
            "owner",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Why a stored record was refused as corrupt on verify: the field and what is wrong with
/// it. keygate checks every record a store returns before trusting it: the id is the one
/// asked for; the owner is not empty or blank, has no control characters and is at most
/// [`MAX_STORED_OWNER_LEN`] bytes; an opaque record has a hash; every instant lies in the
/// years 1 to 9999. [`mint`](crate::Keygate::mint) and [`import`](crate::Keygate::import)
/// refuse to write such records.
///
/// Found as the source of the [`StoreError::Corrupt`](crate::StoreError::Corrupt) inside
/// [`VerifyError::StoreCorrupt`](crate::VerifyError::StoreCorrupt). It names no value, so
/// logging it leaks nothing from the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid stored record: {field} {reason}")]
#[non_exhaustive]
pub struct InvalidRecord {
    /// The offending field, e.g. `"owner"`.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl InvalidRecord {
    fn new(field: &'static str, reason: &'static str) -> Self {
        Self { field, reason }
    }
}

/// A request to mint a key: name and owner, and optional expiry, scopes and metadata.
///
/// ```
/// use chrono::TimeDelta;
/// use keygate::NewKey;
///
/// let request = NewKey::new("Backup Script", "user-42")
///     .expires_in(TimeDelta::days(30))
///     .scopes(["library:read"])
///     .created_by("admin-1");
/// # let _ = request;
/// ```
#[derive(Debug, Clone)]
pub struct NewKey {
    pub(crate) name: String,
    pub(crate) owner: String,
    pub(crate) description: Option<String>,
    pub(crate) created_by: Option<String>,
    pub(crate) expiry: Option<Expiry>,
    pub(crate) active: bool,
    pub(crate) scopes: Option<BTreeSet<String>>,
    pub(crate) metadata: Metadata,
    pub(crate) format: KeyFormat,
    pub(crate) network: NetworkPolicy,
    pub(crate) ratelimits: Vec<RateLimit>,
    pub(crate) credits: Option<CreditPolicy>,
    /// A caller-chosen id (see [`NewKey::id`]); `None`: a random one.
    pub(crate) id: Option<KeyId>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Expiry {
    In(TimeDelta),
    At(DateTime<Utc>),
}

impl NewKey {
    /// A key named `name` acting for the user `owner`: active, opaque, never expiring,
    /// unscoped.
    pub fn new(name: impl Into<String>, owner: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            owner: owner.into(),
            description: None,
            created_by: None,
            expiry: None,
            active: true,
            scopes: None,
            metadata: Metadata::new(),
            format: KeyFormat::Opaque,
            network: NetworkPolicy::new(),
            ratelimits: Vec::new(),
            credits: None,
            id: None,
        }
    }

    /// Mints the key with this id instead of a random one, so that a mint can be done at
    /// most once: if a record with `id` exists (minted by another process, say), the mint
    /// fails with [`StoreError::Conflict`](crate::StoreError::Conflict) (as
    /// [`Error::Store`](crate::Error::Store)) and nothing is written. Every store checks
    /// this atomically with the insert. `keygate serve` uses it so that servers starting
    /// together on an empty store mint one first admin key between them.
    ///
    /// Ids are not secret (they are in the key and in every listing); a fixed id makes a
    /// key no easier to guess.
    ///
    /// ```
    /// use keygate::{Error, KeyId, Keygate, MemoryStore, NewKey, Pepper, StoreError};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let gate = Keygate::builder(MemoryStore::new(), Pepper::new(1, [7u8; 32])?).build()?;
    /// let id = KeyId::from_u128(0x6b65_7967_6174_4500_8000_0000_0000_0042);
    /// let first = gate.mint(NewKey::new("setup", "admin").id(id)).await?;
    /// assert_eq!(first.record.id, id);
    /// let again = gate.mint(NewKey::new("setup", "admin").id(id)).await;
    /// assert!(matches!(again, Err(Error::Store(StoreError::Conflict(conflict))) if conflict == id));
    /// # Ok(()) }
    /// ```
    pub fn id(mut self, id: KeyId) -> Self {
        self.id = Some(id);
        self
    }

    /// Expires `lifetime` after minting (must be positive).
    pub fn expires_in(mut self, lifetime: TimeDelta) -> Self {
        self.expiry = Some(Expiry::In(lifetime));
        self
    }

    /// Expires at `at` (must be in the future when minted).
    pub fn expires_at(mut self, at: DateTime<Utc>) -> Self {
        self.expiry = Some(Expiry::At(at));
        self
    }

    /// A longer description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Who minted it (an admin's user id).
    pub fn created_by(mut self, user: impl Into<String>) -> Self {
        self.created_by = Some(user.into());
        self
    }

    /// Mint it inactive (Audiobookshelf's `isActive: false`); activate later with
    /// [`Keygate::update`](crate::Keygate::update).
    pub fn active(mut self, active: bool) -> Self {
        self.active = active;
        self
    }

    /// Narrows the key to these scopes: it can do only what its owner may do *and* is
    /// listed here.
    pub fn scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = Some(scopes.into_iter().map(Into::into).collect());
        self
    }

    /// Application metadata stored with the record.
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// The token format (default [`KeyFormat::Opaque`]).
    pub fn format(mut self, format: KeyFormat) -> Self {
        self.format = format;
        self
    }

    /// Restricts the key to client addresses inside these networks (see
    /// [`NetworkPolicy`]); parse them with `"10.0.0.0/8".parse::<Cidr>()`. At most
    /// [`MAX_ALLOWED_CIDRS`](crate::bounds::MAX_ALLOWED_CIDRS).
    ///
    /// ```
    /// use keygate::limits::Cidr;
    /// use keygate::NewKey;
    ///
    /// # fn main() -> Result<(), keygate::limits::NetworkError> {
    /// let office: Cidr = "203.0.113.0/24".parse()?;
    /// let request = NewKey::new("CI deploy key", "user-42").allowed_cidrs([office]);
    /// # let _ = request; Ok(()) }
    /// ```
    pub fn allowed_cidrs(mut self, cidrs: impl IntoIterator<Item = Cidr>) -> Self {
        self.network = self.network.with_cidrs(cidrs);
        self
    }

    /// Restricts the key to requests whose `Origin` header is one of these (see
    /// [`NetworkPolicy`]). At most [`MAX_ALLOWED_ORIGINS`](crate::bounds::MAX_ALLOWED_ORIGINS).
    pub fn allowed_origins(mut self, origins: impl IntoIterator<Item = AllowedOrigin>) -> Self {
        self.network = self.network.with_origins(origins);
        self
    }

    /// Sets the whole network policy (allowed networks and origins).
    pub fn network(mut self, policy: NetworkPolicy) -> Self {
        self.network = policy;
        self
    }

    /// Rate limits on the key (see [`crate::limits`]); replaces any set before.
    ///
    /// ```
    /// use keygate::limits::RateLimit;
    /// use keygate::NewKey;
    ///
    /// let request = NewKey::new("script", "user-1")
    ///     .ratelimits([RateLimit::new("requests", 100, 60_000)]);
    /// # let _ = request;
    /// ```
    pub fn ratelimits(mut self, limits: impl IntoIterator<Item = RateLimit>) -> Self {
        self.ratelimits = limits.into_iter().collect();
        self
    }

    /// Usage credits for the key (see [`crate::limits`]).
    pub fn credits(mut self, credits: CreditPolicy) -> Self {
        self.credits = Some(credits);
        self
    }
}

/// A change to a record: every `Some` field is set, every `None` field left alone.
///
/// Build one with the methods and pass it to [`Keygate::update`](crate::Keygate::update);
/// stores receive it in [`KeyStore::update`](crate::KeyStore::update) and apply it
/// atomically, most simply with [`KeyPatch::apply`].
///
/// A patch decided on a copy of the record read earlier (an authority check, a computed
/// expiry) should carry that copy's state with [`if_unchanged`](Self::if_unchanged): it
/// then applies only if the record still is what the decision saw, and otherwise writes
/// nothing and fails with [`StoreError::Changed`](crate::StoreError::Changed).
///
/// ```
/// let patch = keygate::KeyPatch::new().active(false).name("old backup key");
/// # let _ = patch;
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct KeyPatch {
    /// New name.
    pub name: Option<String>,
    /// New description (`Some(None)` clears it).
    pub description: Option<Option<String>>,
    /// New owner.
    pub owner: Option<String>,
    /// Activate or deactivate.
    pub active: Option<bool>,
    /// New expiry (`Some(None)` removes it).
    pub expires_at: Option<Option<DateTime<Utc>>>,
    /// New scopes (`Some(None)` removes the narrowing).
    pub scopes: Option<Option<BTreeSet<String>>>,
    /// New metadata, replacing the old.
    pub metadata: Option<Metadata>,
    /// New allowed client networks, replacing the old (empty: any address).
    pub allowed_cidrs: Option<Vec<Cidr>>,
    /// New allowed browser origins, replacing the old (empty: any origin).
    pub allowed_origins: Option<Vec<AllowedOrigin>>,
    /// New rate limits, replacing the old (`Some(vec![])` removes them all). Their state
    /// (each limit's TAT, by name) carries over in the limiter.
    pub ratelimits: Option<Vec<RateLimit>>,
    /// New credits policy (`Some(None)` removes it: unlimited uses). Setting one restarts
    /// the count from its `remaining`.
    pub credits: Option<Option<CreditPolicy>>,
    /// A re-hash under a newer pepper or hash scheme: set by keygate only (read it with
    /// [`KeyPatch::new_hash`]).
    pub(crate) hash: Option<SecretHash>,
    /// The new `updated_at`: set by keygate from its clock (read it with
    /// [`KeyPatch::new_updated_at`]).
    pub(crate) updated_at: Option<DateTime<Utc>>,
    /// Applies only if the record still matches this; see
    /// [`if_unchanged`](Self::if_unchanged).
    pub precondition: Option<Precondition>,
}

/// What a record must still hold for a conditional [`KeyPatch`] to apply: the fields that
/// decide what a key can do (owner, scopes, active, expiry, network policy) and how much
/// (rate limits, credits policy), as they were in the copy the patch was decided on. Made
/// by [`KeyPatch::if_unchanged`].
///
/// Other fields (name, description, metadata, `last_used_at`, `updated_at`, the hash) may
/// change meanwhile without failing it: renames and last-used writes must not make every
/// conditional patch fail, and they change nothing a decision about authority rests on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Precondition {
    owner: String,
    scopes: Option<BTreeSet<String>>,
    active: bool,
    expires_at: Option<DateTime<Utc>>,
    network: NetworkPolicy,
    ratelimits: Vec<RateLimit>,
    credits: Option<CreditPolicy>,
}

impl Precondition {
    /// The state of `record` that a conditional patch requires to be unchanged.
    pub fn of(record: &KeyRecord) -> Self {
        Self {
            owner: record.owner.clone(),
            scopes: record.scopes.clone(),
            active: record.active,
            expires_at: record.expires_at,
            network: record.network.clone(),
            ratelimits: record.ratelimits.clone(),
            credits: record.credits.clone(),
        }
    }

    /// Whether `record` still has the owner, scopes, active flag, expiry, network policy,
    /// rate limits and credits policy this requires.
    pub fn holds(&self, record: &KeyRecord) -> bool {
        self.owner == record.owner
            && self.scopes == record.scopes
            && self.active == record.active
            && self.expires_at == record.expires_at
            && self.network == record.network
            && self.ratelimits == record.ratelimits
            && self.credits == record.credits
    }
}

impl KeyPatch {
    /// A patch that changes nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rename.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Set or clear the description.
    pub fn description(mut self, description: Option<String>) -> Self {
        self.description = Some(description);
        self
    }

    /// Move the key to another owner.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Activate (`true`) or revoke (`false`).
    pub fn active(mut self, active: bool) -> Self {
        self.active = Some(active);
        self
    }

    /// Set or clear the expiry.
    pub fn expires_at(mut self, at: Option<DateTime<Utc>>) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Set or clear the scopes.
    pub fn scopes<I, S>(mut self, scopes: Option<I>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = Some(scopes.map(|s| s.into_iter().map(Into::into).collect()));
        self
    }

    /// Replace the metadata.
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Replace the allowed client networks; an empty list lifts the restriction.
    pub fn allowed_cidrs(mut self, cidrs: impl IntoIterator<Item = Cidr>) -> Self {
        self.allowed_cidrs = Some(cidrs.into_iter().collect());
        self
    }

    /// Replace the allowed browser origins; an empty list lifts the restriction.
    pub fn allowed_origins(mut self, origins: impl IntoIterator<Item = AllowedOrigin>) -> Self {
        self.allowed_origins = Some(origins.into_iter().collect());
        self
    }

    /// Replace the rate limits (an empty list removes them).
    pub fn ratelimits(mut self, limits: impl IntoIterator<Item = RateLimit>) -> Self {
        self.ratelimits = Some(limits.into_iter().collect());
        self
    }

    /// Set (restarting the count from its `remaining`) or remove the credits policy.
    pub fn credits(mut self, credits: Option<CreditPolicy>) -> Self {
        self.credits = Some(credits);
        self
    }

    /// Makes the patch conditional on `record`, the copy of the record it was decided on
    /// (checked against, or computed from): it applies only if the stored record's owner,
    /// scopes, active flag, expiry, network policy, rate limits and credits policy are still
    /// those of `record` (see [`Precondition`]).
    /// Otherwise [`apply`](Self::apply), and so every store's
    /// [`update`](crate::KeyStore::update), writes nothing and fails with
    /// [`StoreError::Changed`](crate::StoreError::Changed), which
    /// [`Keygate::update`](crate::Keygate::update) reports as
    /// [`Error::Changed`](crate::Error::Changed): read the record again and decide anew.
    ///
    /// This is the compare-and-set that closes the window between reading a record and
    /// writing a change decided on it: without it, a concurrent change lands in between
    /// and the patch is applied to a record nobody checked it against.
    ///
    /// ```
    /// # async fn demo(gate: keygate::Keygate, id: keygate::KeyId) -> Result<(), keygate::Error> {
    /// use keygate::{Error, KeyPatch};
    ///
    /// let before = gate.get(id).await?.ok_or(Error::NotFound(id))?;
    /// // ... decide, from `before`, that the caller may give the key these scopes ...
    /// let patch = KeyPatch::new().scopes(Some(["library:read"])).if_unchanged(&before);
    /// match gate.update(id, patch).await {
    ///     Ok(_) => {}
    ///     Err(Error::Changed(_)) => { /* changed meanwhile: nothing written; re-read */ }
    ///     Err(other) => return Err(other),
    /// }
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn if_unchanged(mut self, record: &KeyRecord) -> Self {
        self.precondition = Some(Precondition::of(record));
        self
    }

    /// Whether the patch changes nothing (a [`precondition`](Self::if_unchanged) alone
    /// changes nothing).
    pub fn is_empty(&self) -> bool {
        let Self {
            name,
            description,
            owner,
            active,
            expires_at,
            scopes,
            metadata,
            allowed_cidrs,
            allowed_origins,
            ratelimits,
            credits,
            hash,
            updated_at,
            precondition: _,
        } = self;
        name.is_none()
            && description.is_none()
            && owner.is_none()
            && active.is_none()
            && expires_at.is_none()
            && scopes.is_none()
            && metadata.is_none()
            && allowed_cidrs.is_none()
            && allowed_origins.is_none()
            && ratelimits.is_none()
            && credits.is_none()
            && hash.is_none()
            && updated_at.is_none()
    }

    /// Whether the patch's [precondition](Self::if_unchanged), if any, holds for `record`.
    pub fn precondition_holds(&self, record: &KeyRecord) -> bool {
        self.precondition.as_ref().is_none_or(|p| p.holds(record))
    }

    /// Applies the patch to `record` in place, if its
    /// [precondition](Self::if_unchanged) holds for it. If not, `record` is left as it was
    /// and the result is [`StoreError::Changed`](crate::StoreError::Changed) with the
    /// record's id: a store must then write nothing and return that error.
    ///
    /// # Errors
    ///
    /// [`StoreError::Changed`](crate::StoreError::Changed) when the precondition fails.
    #[must_use = "a patch whose precondition fails must not be written"]
    pub fn apply(&self, record: &mut KeyRecord) -> Result<(), crate::StoreError> {
        if !self.precondition_holds(record) {
            return Err(crate::StoreError::Changed(record.id));
        }
        if let Some(name) = &self.name {
            record.name.clone_from(name);
        }
        if let Some(description) = &self.description {
            record.description.clone_from(description);
        }
        if let Some(owner) = &self.owner {
            record.owner.clone_from(owner);
        }
        if let Some(active) = self.active {
            record.active = active;
        }
        if let Some(expires_at) = self.expires_at {
            record.expires_at = expires_at;
        }
        if let Some(scopes) = &self.scopes {
            record.scopes.clone_from(scopes);
        }
        if let Some(metadata) = &self.metadata {
            record.metadata.clone_from(metadata);
        }
        if let Some(cidrs) = &self.allowed_cidrs {
            record.network = std::mem::take(&mut record.network).with_cidrs(cidrs.iter().copied());
        }
        if let Some(origins) = &self.allowed_origins {
            record.network =
                std::mem::take(&mut record.network).with_origins(origins.iter().cloned());
        }
        if let Some(limits) = &self.ratelimits {
            record.ratelimits.clone_from(limits);
        }
        if let Some(credits) = &self.credits {
            record.credits.clone_from(credits);
        }
        if let Some(hash) = &self.hash {
            record.hash = Some(hash.clone());
        }
        if let Some(updated_at) = self.updated_at {
            record.updated_at = updated_at;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::HashScheme;
    use chrono::TimeZone;

    fn record() -> KeyRecord {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        KeyRecord {
            id: KeyId::random(),
            format: KeyFormat::Opaque,
            hash: None,
            name: "n".into(),
            description: Some("d".into()),
            owner: "u1".into(),
            created_by: None,
            created_at: t,
            updated_at: t,
            expires_at: Some(t),
            last_used_at: None,
            active: true,
            scopes: None,
            metadata: Metadata::new(),
            network: NetworkPolicy::new(),
            ratelimits: Vec::new(),
            credits: None,
        }
    }

    #[test]
    fn the_stored_range_is_the_years_1_to_9999() {
        let by_year = |at: DateTime<Utc>| (1..=9999).contains(&chrono::Datelike::year(&at));
        let edge = |y, mo, d, h, mi, s, nano| {
            chrono::NaiveDate::from_ymd_opt(y, mo, d)
                .unwrap()
                .and_hms_nano_opt(h, mi, s, nano)
                .unwrap()
                .and_utc()
        };
        let micro = TimeDelta::microseconds(1);
        for at in [
            edge(1, 1, 1, 0, 0, 0, 0),
            edge(9999, 12, 31, 23, 59, 59, 999_999_999),
            edge(9999, 12, 31, 23, 59, 59, 1_999_999_999), // leap second
            edge(2026, 6, 30, 23, 59, 59, 1_500_000_000),
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
            Utc.timestamp_opt(0, 0).unwrap(),
        ] {
            let near = [at.checked_sub_signed(micro), at.checked_add_signed(micro)];
            for at in near.into_iter().flatten().chain([at]) {
                assert_eq!(in_stored_range(at), by_year(at), "{at:?}");
            }
        }
        assert!(!in_stored_range(edge(1, 1, 1, 0, 0, 0, 0) - micro));
        assert!(!in_stored_range(edge(10000, 1, 1, 0, 0, 0, 0)));
    }

    #[test]
    fn owners_are_checked_alike_on_the_fast_path() {
        let slow = |owner: &str| {
            !owner.trim().is_empty()
                && owner.len() <= MAX_STORED_OWNER_LEN
                && !owner.chars().any(char::is_control)
        };
        let long = "u".repeat(MAX_STORED_OWNER_LEN + 1);
        for owner in [
            "u1",
            " ",
            "   ",
            "",
            " u ",
            "a\tb",
            "\u{85}",
            "é",
            " \u{3000} ",
            "\u{3000}",
            "x\u{7f}",
            "~",
            long.as_str(),
            &long[1..],
        ] {
            assert_eq!(check_stored_owner(owner).is_ok(), slow(owner), "{owner:?}");
        }
    }

    #[test]
    fn records_are_checked_field_by_field() {
        let mut r = record();
        r.hash = Some(SecretHash {
            version: 1,
            digest: [1; 32],
            scheme: HashScheme::Bound,
        });
        assert_eq!(r.check(r.id), Ok(()));
        let field = |r: &KeyRecord| r.check(r.id).map_err(|e| e.field);
        assert_eq!(r.check(KeyId::random()).map_err(|e| e.field), Err("id"));
        for owner in ["", "  ", "a\u{1b}[2J", "nul\0"] {
            let bad = KeyRecord {
                owner: owner.into(),
                ..r.clone()
            };
            assert_eq!(field(&bad), Err("owner"), "{owner:?}");
        }
        let long = KeyRecord {
            owner: "x".repeat(MAX_STORED_OWNER_LEN + 1),
            ..r.clone()
        };
        assert_eq!(field(&long), Err("owner"));
        let unhashed = KeyRecord {
            hash: None,
            ..r.clone()
        };
        assert_eq!(field(&unhashed), Err("hash"));
        // A JWT record may have no hash (a bound one simply matches no JWT).
        let jwt = KeyRecord {
            format: KeyFormat::Jwt,
            ..unhashed.clone()
        };
        assert_eq!(field(&jwt), Ok(()));
        let far = KeyRecord {
            expires_at: Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).single(),
            ..r.clone()
        };
        assert_eq!(field(&far), Err("expires_at"));
        let early = KeyRecord {
            created_at: Utc.with_ymd_and_hms(0, 12, 31, 0, 0, 0).unwrap(),
            ..r
        };
        assert_eq!(field(&early), Err("created_at"));
    }

    #[test]
    fn an_empty_patch_changes_nothing() {
        let mut r = record();
        let before = r.clone();
        assert!(KeyPatch::new().is_empty());
        KeyPatch::new().apply(&mut r).unwrap();
        assert_eq!(r, before);
        assert!(KeyPatch::new().if_unchanged(&before).is_empty());
    }

    #[test]
    fn patches_set_and_clear_fields() {
        let mut r = record();
        KeyPatch::new()
            .active(false)
            .owner("u2")
            .description(None)
            .expires_at(None)
            .scopes(Some(["a", "b"]))
            .apply(&mut r)
            .unwrap();
        assert!(!r.active);
        assert_eq!(r.owner, "u2");
        assert_eq!(r.description, None);
        assert_eq!(r.expires_at, None);
        assert_eq!(r.scopes.unwrap().len(), 2);
        assert_eq!(r.name, "n");
    }

    #[test]
    fn a_conditional_patch_applies_only_to_the_record_it_was_decided_on() {
        let read = record();
        let patch = KeyPatch::new().name("renamed").if_unchanged(&read);
        // Fields outside the precondition may change meanwhile.
        let mut renamed = KeyRecord {
            name: "other".into(),
            metadata: Metadata::from_iter([("a".to_owned(), 1.into())]),
            last_used_at: read.expires_at,
            ..read.clone()
        };
        patch.apply(&mut renamed).unwrap();
        assert_eq!(renamed.name, "renamed");
        // Any of owner, scopes, active, expiry changed: nothing applied, typed error.
        let changed = [
            KeyRecord {
                owner: "u2".into(),
                ..read.clone()
            },
            KeyRecord {
                scopes: Some(BTreeSet::new()),
                ..read.clone()
            },
            KeyRecord {
                active: false,
                ..read.clone()
            },
            KeyRecord {
                expires_at: None,
                ..read.clone()
            },
        ];
        for mut current in changed {
            let untouched = current.clone();
            let refused = patch.apply(&mut current);
            assert!(
                matches!(refused, Err(crate::StoreError::Changed(id)) if id == read.id),
                "{refused:?}"
            );
            assert_eq!(current, untouched);
        }
    }

    #[test]
    fn expiry_is_inclusive_of_the_instant() {
        let r = record();
        let at = r.expires_at.unwrap();
        assert!(r.is_expired_at(at));
        assert!(!r.is_expired_at(at - TimeDelta::seconds(1)));
    }
}
