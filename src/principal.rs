//! [`Principal`]: who a verified key acts for, and what it may do.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::error::VerifyError;
use crate::key::{KeyFormat, KeyId};
use crate::limits::{Allowance, RateLimit};
use crate::record::KeyRecord;
use crate::user::{Owner, Permissions};
use crate::verify::UsageLeft;

/// A permission named at the type level, for the framework guards
/// (`keygate::axum::Require<P>`, `keygate::actix::Require<P>`).
///
/// ```
/// struct LibraryWrite;
/// impl keygate::Permission for LibraryWrite {
///     const NAME: &'static str = "library:write";
/// }
/// ```
pub trait Permission: Send + Sync + 'static {
    /// The permission or scope string checked with [`Principal::allows`].
    const NAME: &'static str;
}

/// The permissions of every owner on a gate without a directory.
static ALL_PERMISSIONS: Permissions = Permissions::All;

/// The outcome of a successful verify: the key, its owner, and the owner's permissions as
/// they were at request time, narrowed by the key's scopes.
///
/// ```
/// # async fn demo(gate: keygate::Keygate, token: &str) -> Result<(), keygate::VerifyError> {
/// let principal = gate.verify(token).await?;
/// principal.require("library:read")?; // 403 insufficient_scope if not allowed
/// println!("key {} acts for {}", principal.key_id(), principal.owner_id());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Principal {
    record: Arc<KeyRecord>,
    /// The owner as a configured [`UserDirectory`](crate::UserDirectory) gave it; `None`
    /// on a gate without one, whose owners all implicitly hold every permission. Shared,
    /// so cloning a principal (extractors keep one in request extensions) never copies
    /// the owner's permission set.
    owner: Option<Arc<Owner>>,
    /// The gate's clock when the key was accepted, in microseconds since the epoch.
    verified_at: i64,
    /// A JWT's own `exp`, in microseconds since the epoch: the token stops then, whatever
    /// its record says.
    token_expires_at: Option<i64>,
    /// Which [`Keygate`](crate::Keygate) verified it (see
    /// [`Keygate::verified`](crate::Keygate::verified)).
    gate: u64,
    /// What the usage limits left after this request, when the key or owner has any.
    allowance: Option<Arc<LazyAllowance>>,
}

/// What verify's usage limits left, rendered as an [`Allowance`] on first read (most
/// requests never read it, and rendering allocates).
#[derive(Debug)]
pub(crate) struct LazyAllowance {
    left: UsageLeft,
    /// The gate's owner limits, when the owner had none of its own (the owner's own are
    /// in [`Principal::owner`]).
    gate_owner_limits: Option<Arc<[RateLimit]>>,
    rendered: OnceLock<Allowance>,
}

impl Principal {
    pub(crate) fn new(
        record: Arc<KeyRecord>,
        owner: Option<Arc<Owner>>,
        verified_at: i64,
        token_expires_at: Option<i64>,
        gate: u64,
    ) -> Self {
        Self {
            record,
            owner,
            verified_at,
            token_expires_at,
            gate,
            allowance: None,
        }
    }

    /// This principal, with what verify's usage limits left; `gate_owner_limits` are the
    /// gate's limits for owners without their own.
    pub(crate) fn with_allowance(
        mut self,
        left: UsageLeft,
        gate_owner_limits: &Arc<[RateLimit]>,
    ) -> Self {
        let owns_limits = self
            .owner
            .as_deref()
            .is_some_and(|owner| owner.ratelimits.is_some());
        let gate_limits = !owns_limits && left.has_owner_reports();
        self.allowance = Some(Arc::new(LazyAllowance {
            left,
            gate_owner_limits: gate_limits.then(|| Arc::clone(gate_owner_limits)),
            rendered: OnceLock::new(),
        }));
        self
    }

    /// The owner as the directory gave it at verify time (`None` without a directory).
    pub(crate) fn owner(&self) -> Option<&Owner> {
        self.owner.as_deref()
    }

    /// What the key's (and its owner's) auto-applied rate limits and credits left after
    /// this request: `None` when neither has any. The HTTP integrations can send it as
    /// `RateLimit`/`RateLimit-Policy` headers (see
    /// [`http::allowance_headers`](crate::http::allowance_headers)).
    pub fn allowance(&self) -> Option<&Allowance> {
        let lazy = self.allowance.as_deref()?;
        Some(lazy.rendered.get_or_init(|| {
            let owner_limits = self
                .owner
                .as_deref()
                .and_then(|owner| owner.ratelimits.as_deref())
                .or(lazy.gate_owner_limits.as_deref())
                .unwrap_or(&[]);
            lazy.left.allowance(&self.record.ratelimits, owner_limits)
        }))
    }

    /// The id of the gate that verified this principal.
    pub(crate) fn gate_id(&self) -> u64 {
        self.gate
    }

    /// When the gate accepted the key (its clock), to the microsecond: the request's
    /// "now" for the admin API. `None` only for a clock outside chrono's range.
    pub(crate) fn verified_at(&self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_micros(self.verified_at)
    }

    /// The key's id.
    pub fn key_id(&self) -> KeyId {
        self.record.id
    }

    /// The key's display name (from the record, never from the token).
    pub fn key_name(&self) -> &str {
        &self.record.name
    }

    /// The user the key acts for.
    pub fn owner_id(&self) -> &str {
        &self.record.owner
    }

    /// The owner's permissions at request time (before the key's scopes narrow them).
    pub fn owner_permissions(&self) -> &Permissions {
        self.owner
            .as_deref()
            .map_or(&ALL_PERMISSIONS, |owner| &owner.permissions)
    }

    /// The key's scopes; `None` when the key carries all of its owner's permissions.
    pub fn scopes(&self) -> Option<&BTreeSet<String>> {
        self.record.scopes.as_ref()
    }

    /// When this credential stops working: the earlier of the record's `expires_at` and,
    /// for a JWT key, the token's own `exp` (a token whose record expiry was lifted or
    /// moved later still stops at its `exp`). `None`: neither ends. The admin API judges
    /// the calling key's lifetime by this. The record's own value is
    /// [`record().expires_at`](Self::record).
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        // An `exp` beyond chrono's range (over 260 000 years away) bounds nothing.
        let token = self
            .token_expires_at
            .and_then(DateTime::from_timestamp_micros);
        match (self.record.expires_at, token) {
            (Some(record), Some(token)) => Some(record.min(token)),
            (record, token) => record.or(token),
        }
    }

    /// The key's format.
    pub fn format(&self) -> KeyFormat {
        self.record.format
    }

    /// The whole record as the store returned it at verify time.
    pub fn record(&self) -> &KeyRecord {
        &self.record
    }

    /// Whether the key may do `permission`: its owner has it and, if the key is scoped,
    /// the key's scopes list it.
    pub fn allows(&self, permission: &str) -> bool {
        self.owner_permissions().allows(permission)
            && self
                .record
                .scopes
                .as_ref()
                .is_none_or(|scopes| scopes.contains(permission))
    }

    /// Whether `permission` was granted *explicitly*: [`allows`](Self::allows) it, and
    /// either the owner's permissions come from a configured
    /// [`UserDirectory`](crate::UserDirectory) (which lists `permission` or answers
    /// [`Permissions::All`]), or the key's own scopes name `permission`.
    ///
    /// On a gate without a directory every owner implicitly holds all permissions, so
    /// `allows` is true for any unscoped key; `grants` is not. Use it for powers that must
    /// never follow from missing configuration, such as the admin API
    /// ([`AdminApi`](crate::admin::AdminApi) does).
    ///
    /// ```
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use keygate::{Keygate, MemoryStore, NewKey, Pepper};
    ///
    /// // No directory: every owner implicitly holds every permission.
    /// let gate = Keygate::builder(MemoryStore::new(), Pepper::new(1, b"a pepper of at least 32 bytes, from a secret store")?)
    ///
    ///     .build()?;
    /// let plain = gate.mint(NewKey::new("script", "alice")).await?;
    /// let plain = gate.verify(plain.key.expose()).await?;
    /// assert!(plain.allows("admin")); // implied by the missing directory...
    /// assert!(!plain.grants("admin")); // ...so not granted
    ///
    /// let bootstrap = gate.mint(NewKey::new("bootstrap", "alice").scopes(["admin"])).await?;
    /// let bootstrap = gate.verify(bootstrap.key.expose()).await?;
    /// assert!(bootstrap.grants("admin")); // named explicitly on the key
    /// # Ok(()) }
    /// ```
    pub fn grants(&self, permission: &str) -> bool {
        self.allows(permission)
            && (self.owner.is_some()
                || self
                    .record
                    .scopes
                    .as_ref()
                    .is_some_and(|scopes| scopes.contains(permission)))
    }

    /// [`allows`](Self::allows) as a `Result`, for `?` in handlers:
    /// [`VerifyError::InsufficientScope`] (HTTP 403) when not allowed.
    ///
    /// # Errors
    ///
    /// [`VerifyError::InsufficientScope`] naming `permission` when the key does not
    /// [`allow`](Self::allows) it (HTTP 403 `insufficient_scope`).
    pub fn require(&self, permission: &str) -> Result<(), VerifyError> {
        if self.allows(permission) {
            Ok(())
        } else {
            Err(VerifyError::InsufficientScope {
                required: permission.to_owned(),
            })
        }
    }
}

/// Serializes as `{"keyId", "keyName", "userId", "format", "permissions",
/// "allPermissions", "scopes", "expiresAt"}`. `permissions` (the owner's, before the key's
/// scopes narrow them) is always an array: the owner's permissions, sorted, or `["*"]`
/// when the owner holds every permission ([`Permissions::All`]), which `allPermissions`
/// (always present) says unambiguously. `expiresAt` is [`Principal::expires_at`]. No
/// secret is included.
///
/// ```json
/// {"keyId":"…","keyName":"Backup Script","userId":"user-1","format":"opaque",
///  "permissions":["*"],"allPermissions":true,"scopes":["library:read"],"expiresAt":null}
/// ```
impl Serialize for Principal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Principal", 8)?;
        s.serialize_field("keyId", &self.record.id)?;
        s.serialize_field("keyName", &self.record.name)?;
        s.serialize_field("userId", &self.record.owner)?;
        s.serialize_field("format", &self.record.format)?;
        match self.owner_permissions() {
            Permissions::All => {
                s.serialize_field("permissions", &["*"])?;
                s.serialize_field("allPermissions", &true)?;
            }
            Permissions::Only(set) => {
                s.serialize_field("permissions", set)?;
                s.serialize_field("allPermissions", &false)?;
            }
        }
        s.serialize_field("scopes", &self.record.scopes)?;
        s.serialize_field("expiresAt", &self.expires_at())?;
        s.end()
    }
}
