//! [`Keygate`], the facade, and its key management: mint, import, read, list, update,
//! revoke, delete, rotate. Configuration is in `builder.rs`, verification in
//! `verify.rs`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};

use crate::clock::Clock;
use crate::error::{Error, VerifyError};
use crate::hash::{HashScheme, Pepper};
use crate::http;
use crate::jwt::{self, JwtSecret};
use crate::key::{self, KeyFormat, KeyId, OpaqueKey};
use crate::limits::RequestContext;
use crate::record::{Expiry, KeyPatch, KeyRecord, NewKey};
use crate::refusals::Refusals;
use crate::secret::Secret;
use crate::store::{Cursor, KeyStore, ListQuery, Page, StoreError};
use crate::usage::{self, Usage};
use crate::user::{Owner, UserDirectory};
use crate::validate;

/// Largest page [`Keygate::list`] returns.
pub const MAX_PAGE: usize = 1000;

/// A freshly minted key: its record, and the plaintext, which is never available again.
#[derive(Debug)]
#[non_exhaustive]
pub struct IssuedKey {
    /// The record as stored.
    pub record: KeyRecord,
    /// The plaintext key. Show it once; keygate keeps only a hash.
    pub key: Secret,
}

/// Mints, manages and verifies API keys over a [`KeyStore`].
///
/// Cheap to clone (one `Arc`), so it can sit in a web framework's state.
///
/// ```
/// use keygate::{Keygate, MemoryStore, NewKey, Pepper, Rejection};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pepper = Pepper::new(1, b"a pepper of at least thirty-two bytes!")?;
/// let gate = Keygate::builder(MemoryStore::new(), pepper)
///     .prefix("abs")
///     .build()?;
///
/// let issued = gate.mint(NewKey::new("Backup Script", "user-1")).await?;
/// let principal = gate.verify(issued.key.expose()).await?;
/// assert_eq!(principal.owner_id(), "user-1");
///
/// gate.revoke(issued.record.id).await?;
/// let refused = gate.verify(issued.key.expose()).await.unwrap_err();
/// assert_eq!(refused.rejection(), Some(Rejection::Inactive));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Keygate {
    pub(crate) inner: Arc<Inner>,
}

/// What a [`Keygate`] holds: set once by [`KeygateBuilder::build`](crate::KeygateBuilder::build), read by key
/// management here and by the verify path (`verify.rs`).
pub(crate) struct Inner {
    /// Unique among the gates of this process (see [`Keygate::verified`]).
    pub(crate) id: u64,
    pub(crate) store: Arc<dyn KeyStore>,
    pub(crate) prefix: String,
    pub(crate) pepper: Pepper,
    pub(crate) jwt: Option<JwtSecret>,
    pub(crate) users: Option<Arc<dyn UserDirectory>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) usage: Arc<Usage>,
    pub(crate) store_timeout: Option<Duration>,
    pub(crate) realm: String,
    pub(crate) refusals: Refusals,
    /// [`Keygate::check_pepper`]'s verdict, once known.
    pub(crate) pepper_check: tokio::sync::OnceCell<crate::pepper_check::PepperVerdict>,
    /// See [`KeygateBuilder::trusted_proxies`](crate::KeygateBuilder::trusted_proxies).
    pub(crate) trusted_proxies: http::TrustedProxies,
    /// Rate-limit and credit state.
    pub(crate) limiter: Arc<dyn crate::limits::Limiter>,
    pub(crate) limiter_failure: crate::limits::FailureMode,
    /// Owner limits for owners the directory gives none (and every owner without one).
    pub(crate) owner_ratelimits: Arc<[crate::limits::RateLimit]>,
    pub(crate) limit_events: crate::limits::events::LimitEvents,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Last handle gone: write what is still queued, if a runtime can run it.
        if !self.usage.is_idle() {
            usage::spawn_flush(
                self.usage.clone(),
                self.store.clone(),
                self.clock.now_micros(),
            );
        }
    }
}

impl fmt::Debug for Keygate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keygate")
            .field("prefix", &self.inner.prefix)
            .field("pepper", &self.inner.pepper)
            .field("jwt", &self.inner.jwt.is_some())
            .field("users", &self.inner.users.is_some())
            .finish_non_exhaustive()
    }
}

impl Keygate {
    /// The opaque-key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Whether this gate verified `principal` (and not another [`Keygate`] of the process,
    /// which may have another store, pepper or directory). The admin API admits only
    /// principals its own gate verified.
    pub fn verified(&self, principal: &crate::Principal) -> bool {
        principal.gate_id() == self.inner.id
    }

    /// The realm for `WWW-Authenticate` challenges.
    pub fn realm(&self) -> &str {
        &self.inner.realm
    }

    /// The proxies whose forwarding header this gate believes (see
    /// [`KeygateBuilder::trusted_proxies`](crate::KeygateBuilder::trusted_proxies)).
    pub fn trusted_proxies(&self) -> &http::TrustedProxies {
        &self.inner.trusted_proxies
    }

    /// The [`RequestContext`] of a request whose connection comes from `peer` (`None`
    /// when unknown), with `headers` giving the values of a header by (lowercase) name:
    /// the client address from the peer, or from the forwarding header when the peer is
    /// a [trusted proxy](crate::KeygateBuilder::trusted_proxies), and the `Origin`
    /// header. For [`verify_headers_with`](Self::verify_headers_with); the axum and actix
    /// integrations call it for every request.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use keygate::{Keygate, MemoryStore, Pepper};
    ///
    /// let gate = Keygate::builder(MemoryStore::new(), Pepper::new(1, [7u8; 32])?).build()?;
    /// let headers = [("origin", "https://app.example.com"), ("x-forwarded-for", "1.2.3.4")];
    /// let context = gate.request_context(Some("198.51.100.7".parse()?), |name| {
    ///     headers.iter().filter(move |(n, _)| *n == name).map(|(_, v)| v.as_bytes())
    /// });
    /// // No trusted proxies: the header is ignored, the peer is the client.
    /// assert_eq!(context.client(), Some("198.51.100.7".parse()?));
    /// assert_eq!(context.origin_header(), Some("https://app.example.com"));
    /// # Ok(()) }
    /// ```
    pub fn request_context<'h, F, I>(
        &self,
        peer: Option<std::net::IpAddr>,
        headers: F,
    ) -> RequestContext
    where
        F: Fn(&'static str) -> I,
        I: IntoIterator<Item = &'h [u8]>,
    {
        let proxies = &self.inner.trusted_proxies;
        // Lazy: the proxy header is looked up only when the peer is a trusted proxy (most
        // requests reach an application directly: one header lookup less).
        let name = proxies.proxy_header().name();
        let client = proxies.client_addr(peer, std::iter::once(name).flat_map(&headers));
        RequestContext::new()
            .maybe_client_addr(client)
            .origin_headers(headers("origin"))
    }

    /// The HTTP answer for `error` with this gate's realm; see [`VerifyError::http`].
    pub fn http_outcome(&self, error: &VerifyError) -> http::HttpOutcome {
        error.http(&self.inner.realm)
    }

    /// The store itself, bypassing the gate.
    ///
    /// Writes through it skip everything [`mint`](Self::mint), [`update`](Self::update),
    /// [`import`](Self::import) and [`delete`](Self::delete) do around the store call: the
    /// name, owner, scope and expiry checks, the record checks verify relies on, the
    /// `updated_at` stamp, dropping a deleted key's queued last-used write, and the log
    /// line; a record written through it that verify cannot trust is refused later as
    /// corrupt (500). Meant for tests, benchmarks and maintenance tools; an application
    /// manages keys through the gate.
    pub fn store_unchecked(&self) -> &Arc<dyn KeyStore> {
        &self.inner.store
    }

    /// Mints a key. The plaintext in the result is the only copy: keygate stores a hash.
    ///
    /// # Errors
    ///
    /// Refused before anything is written, with [`Error::InvalidInput`] naming the field:
    ///
    /// - `name`: blank, over [`MAX_NAME_LEN`](crate::bounds::MAX_NAME_LEN) characters, or holding control characters or
    ///   bidi embedding/override/isolate characters (U+202A–U+202E, U+2066–U+2069, which
    ///   reorder displayed text). Zero-width joiners and marks are allowed in names: emoji
    ///   sequences and several scripts need them, and a name is display text, not an id.
    /// - `description`: over [`MAX_DESCRIPTION_LEN`](crate::bounds::MAX_DESCRIPTION_LEN)
    ///   characters, control characters (newlines included) or bidi controls.
    /// - `owner`, `created_by`: blank, over [`MAX_ID_LEN`](crate::bounds::MAX_ID_LEN) characters,
    ///   leading or trailing whitespace, control, bidi or invisible characters (zero-width
    ///   spaces and joiners, directional marks, BOM, soft hyphen): ids that look alike must
    ///   be alike.
    /// - `scopes`: more than [`MAX_SCOPES`](crate::bounds::MAX_SCOPES), or a scope that is empty,
    ///   over [`MAX_SCOPE_LEN`](crate::bounds::MAX_SCOPE_LEN) characters, or holds whitespace,
    ///   control, bidi or invisible characters.
    /// - `metadata`: over [`MAX_METADATA_BYTES`](crate::bounds::MAX_METADATA_BYTES) as compact JSON.
    /// - `expires_at`: not in the future, or after [`MAX_EXPIRY`](crate::bounds::MAX_EXPIRY).
    /// - `allowed_cidrs`, `allowed_origins`: more than
    ///   [`MAX_ALLOWED_CIDRS`](crate::bounds::MAX_ALLOWED_CIDRS) or
    ///   [`MAX_ALLOWED_ORIGINS`](crate::bounds::MAX_ALLOWED_ORIGINS) (each entry was
    ///   checked when it was parsed, see [`Cidr`](crate::limits::Cidr) and
    ///   [`AllowedOrigin`](crate::limits::AllowedOrigin)).
    /// - `ratelimits`: more than [`MAX_RATELIMITS`](crate::bounds::MAX_RATELIMITS), two with
    ///   one name, or one out of the bounds of [`RateLimit::validate`](crate::limits::RateLimit::validate).
    /// - `credits`: out of the bounds of [`CreditPolicy::validate`](crate::limits::CreditPolicy::validate).
    ///
    /// And a JWT key on a gate without a JWT secret is [`Error::JwtDisabled`]; a store
    /// failure is [`Error::Store`].
    ///
    /// Before the first key a gate mints, it checks its pepper against the store
    /// ([`check_pepper`](Self::check_pepper)): the wrong pepper is
    /// [`Error::PepperMismatch`], and nothing is written.
    pub async fn mint(&self, new: NewKey) -> Result<IssuedKey, Error> {
        check_name(&new.name)?;
        if let Some(description) = &new.description {
            validate::description(description)?;
        }
        if let Some(created_by) = &new.created_by {
            validate::created_by(created_by)?;
        }
        if let Some(scopes) = &new.scopes {
            validate::scopes(scopes.iter())?;
        }
        validate::metadata(&new.metadata)?;
        crate::limits::validate_ratelimits(&new.ratelimits)?;
        if let Some(credits) = &new.credits {
            credits.validate()?;
        }
        self.mint_checked(new).await
    }

    /// [`mint`](Self::mint) once the name, description, `created_by`, scopes and metadata
    /// are known to be acceptable (checked, or taken from an existing record by
    /// [`rotate`](Self::rotate)). The owner and the expiry are checked here.
    async fn mint_checked(&self, new: NewKey) -> Result<IssuedKey, Error> {
        let inner = &*self.inner;
        check_owner(&new.owner)?;
        let now = inner.clock.now().trunc_subsecs(6);
        let mut expires_at = match new.expiry {
            None => None,
            Some(Expiry::In(lifetime)) => Some(
                now.checked_add_signed(lifetime)
                    .ok_or(Error::invalid("expires_at", "out of range"))?,
            ),
            Some(Expiry::At(at)) => Some(at.trunc_subsecs(6)),
        };
        if new.format == KeyFormat::Jwt {
            // A JWT carries whole seconds; keep the record and the token in agreement.
            expires_at = expires_at.map(|at| at.trunc_subsecs(0));
        }
        if expires_at.is_some_and(|at| at <= now) {
            return Err(Error::invalid("expires_at", "must be in the future"));
        }
        if let Some(at) = expires_at {
            validate::expiry("expires_at", at)?;
        }

        // A key hashed under the wrong pepper could never verify: write none.
        self.check_pepper().await?;
        let id = new.id.unwrap_or_else(KeyId::random);
        let (token, hash) = match new.format {
            KeyFormat::Opaque => {
                let token = OpaqueKey::generate(&inner.prefix, id);
                // Bound to the prefix and id: see `HashScheme::Bound`.
                let bound = key::without_checksum(&token)
                    .ok_or(Error::invalid("prefix", "cannot form a key"))?;
                let hash = inner.pepper.hash(HashScheme::Bound, bound);
                (token, hash)
            }
            KeyFormat::Jwt => {
                let secret = inner.jwt.as_ref().ok_or(Error::JwtDisabled)?;
                let token = secret.sign(
                    id,
                    &new.name,
                    now.timestamp(),
                    expires_at.map(|at| at.timestamp()),
                );
                // The signature covers `keyId`: binding would add nothing (`HashScheme`).
                let hash = inner
                    .pepper
                    .hash(HashScheme::Secret, jwt::signature_of(&token));
                (token, hash)
            }
        };
        let record = KeyRecord {
            id,
            format: new.format,
            hash: Some(hash),
            name: new.name,
            description: new.description,
            owner: new.owner,
            created_by: new.created_by,
            created_at: now,
            updated_at: now,
            expires_at,
            last_used_at: None,
            active: new.active,
            scopes: new.scopes,
            metadata: new.metadata,
            network: new.network,
            ratelimits: new.ratelimits,
            credits: new.credits.map(|mut credits| {
                // The count starts now (see `CreditPolicy::set_at`).
                credits.set_at = Some(now);
                credits
            }),
        };
        // What verify will demand of the record, demanded before it is written.
        record
            .check(id)
            .map_err(|e| Error::invalid(e.field, e.reason))?;
        inner.store.insert(record.clone()).await?;
        tracing::info!(target: "keygate", key_id = %id, owner = %record.owner, format = %record.format, "key minted");
        Ok(IssuedKey {
            record,
            key: Secret::from(token),
        })
    }

    /// Inserts an existing record, keeping its id: e.g. a row migrated from
    /// Audiobookshelf's `apiKeys` table, whose JWT keys then verify unchanged.
    ///
    /// Names are taken as they are, as long as they are not empty (Audiobookshelf allows
    /// control characters and any length). Everything else must pass the checks verify
    /// applies to stored records (an owner without control characters, an opaque record
    /// with a hash, instants in the years 1 to 9999, …), so that nothing imported is
    /// refused later as corrupt. Opaque hashes may be of either [`HashScheme`]; those of
    /// the older `Secret` kind are re-hashed as `Bound` after their first successful
    /// verify. Never overwrites: an existing id is
    /// [`StoreError::Conflict`](crate::StoreError::Conflict).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the field (`name`, `owner`, `hash`, an instant) when the
    /// record is refused; [`Error::Store`] with [`StoreError::Conflict`](crate::StoreError::Conflict)
    /// when the id exists, or with the store's failure.
    pub async fn import(&self, record: KeyRecord) -> Result<(), Error> {
        // Looser than `mint`: Audiobookshelf accepts any non-empty name, and a migrated row
        // must come over as it is (the name is display text; no token carries it as truth).
        if record.name.is_empty() {
            return Err(Error::invalid("name", "must not be empty"));
        }
        check_owner(&record.owner)?;
        record
            .check(record.id)
            .map_err(|e| Error::invalid(e.field, e.reason))?;
        let id = record.id;
        self.inner.store.insert(record).await?;
        tracing::info!(target: "keygate", key_id = %id, "key imported");
        Ok(())
    }

    /// The record with this id.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store fails. An unknown id is `Ok(None)`.
    pub async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>, Error> {
        Ok(self.inner.store.get(id).await?.map(Arc::unwrap_or_clone))
    }

    /// One page of records in creation order (at most [`MAX_PAGE`]), optionally one
    /// owner's; [`Page::next`] continues it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a `limit` of 0; [`Error::Store`] if the store fails.
    pub async fn list(&self, query: ListQuery) -> Result<Page, Error> {
        if query.limit == 0 {
            return Err(Error::invalid("limit", "must be at least 1"));
        }
        let mut query = query;
        query.limit = query.limit.min(MAX_PAGE);
        let records = self.inner.store.list(&query).await?;
        let next = (records.len() == query.limit)
            .then(|| records.last().map(Cursor::of))
            .flatten();
        Ok(Page { records, next })
    }

    /// Changes a record and returns it as stored. An empty patch changes nothing and
    /// returns the record.
    ///
    /// The fields a patch sets are held to [`mint`](Self::mint)'s rules (name, owner,
    /// description, scopes, metadata, an expiry no later than
    /// [`MAX_EXPIRY`](crate::bounds::MAX_EXPIRY)); a refused patch writes nothing.
    ///
    /// A patch made conditional with [`KeyPatch::if_unchanged`] that meets a record whose
    /// owner, scopes, active flag, expiry or network policy changed since it was read writes nothing and
    /// is [`Error::Changed`] (the store checks it inside its atomic update). An empty
    /// conditional patch is checked against the record it returns.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the field the patch sets against [`mint`](Self::mint)'s
    /// rules; [`Error::NotFound`] for an unknown id; [`Error::Changed`] when a conditional
    /// patch's record changed; [`Error::Store`] if the store fails.
    pub async fn update(&self, id: KeyId, patch: KeyPatch) -> Result<KeyRecord, Error> {
        if let Some(name) = &patch.name {
            check_name(name)?;
        }
        if let Some(owner) = &patch.owner {
            check_owner(owner)?;
        }
        if let Some(Some(description)) = &patch.description {
            validate::description(description)?;
        }
        if let Some(Some(scopes)) = &patch.scopes {
            validate::scopes(scopes.iter())?;
        }
        if let Some(metadata) = &patch.metadata {
            validate::metadata(metadata)?;
        }
        if let Some(Some(at)) = patch.expires_at {
            validate::expiry("expires_at", at)?;
        }
        if patch
            .allowed_cidrs
            .as_ref()
            .is_some_and(|c| c.len() > crate::limits::MAX_ALLOWED_CIDRS)
        {
            return Err(Error::invalid("allowed_cidrs", "more than 64 networks"));
        }
        if patch
            .allowed_origins
            .as_ref()
            .is_some_and(|o| o.len() > crate::limits::MAX_ALLOWED_ORIGINS)
        {
            return Err(Error::invalid("allowed_origins", "more than 64 origins"));
        }
        if let Some(limits) = &patch.ratelimits {
            crate::limits::validate_ratelimits(limits)?;
        }
        if let Some(Some(credits)) = &patch.credits {
            credits.validate()?;
        }
        if patch.is_empty() {
            let record = self.get(id).await?.ok_or(Error::NotFound(id))?;
            if !patch.precondition_holds(&record) {
                return Err(Error::Changed(id));
            }
            return Ok(record);
        }
        let mut patch = patch;
        let now = self.inner.clock.now().trunc_subsecs(6);
        patch.updated_at = Some(now);
        if let Some(Some(credits)) = &mut patch.credits {
            // A policy set now restarts the count now (see `CreditPolicy::set_at`).
            credits.set_at = Some(now);
        }
        // Stores keep microseconds; so does every timestamp keygate writes.
        patch.expires_at = patch.expires_at.map(|at| at.map(|at| at.trunc_subsecs(6)));
        let record = match self.inner.store.update(id, &patch).await {
            Ok(Some(record)) => record,
            Ok(None) => return Err(Error::NotFound(id)),
            Err(StoreError::Changed(changed)) => return Err(Error::Changed(changed)),
            Err(error) => return Err(error.into()),
        };
        tracing::info!(target: "keygate", key_id = %id, active = record.active, "key updated");
        Ok(record)
    }

    /// Deactivates a key: every later verify refuses it. [`update`](Self::update) with
    /// `active(true)` brings it back.
    ///
    /// # Errors
    ///
    /// As [`update`](Self::update): [`Error::NotFound`] for an unknown id, [`Error::Store`] if
    /// the store fails.
    pub async fn revoke(&self, id: KeyId) -> Result<KeyRecord, Error> {
        let record = self.update(id, KeyPatch::new().active(false)).await?;
        tracing::info!(target: "keygate", key_id = %id, "key revoked");
        Ok(record)
    }

    /// Deletes a key's record; nothing else is touched.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] for an unknown id; [`Error::Store`] if the store fails.
    pub async fn delete(&self, id: KeyId) -> Result<(), Error> {
        if !self.inner.store.delete(id).await? {
            return Err(Error::NotFound(id));
        }
        self.inner.usage.forget(id);
        // The key's usage state goes with it (best effort: a stale entry only holds memory
        // or a row until the limiter drops it; no key can use it again).
        if let Err(error) = self
            .inner
            .limiter
            .forget(crate::limits::Subject::Key(id))
            .await
        {
            tracing::warn!(target: "keygate", key_id = %id, error = %error, "could not drop a deleted key's usage state");
        }
        tracing::info!(target: "keygate", key_id = %id, "key deleted");
        Ok(())
    }

    /// Replaces a key: mints a new one with the old one's name, description, owner,
    /// `created_by`, scopes, metadata, format, network policy, rate limits and credits (the
    /// new key starts with the credits the old one has left, so rotating never refills
    /// them), expiring when the old one did (never
    /// later), then lets the old one live for `grace` more at most (zero: it stops now).
    ///
    /// Refused before anything is written ([`Error::InvalidInput`]): a negative `grace`,
    /// or one that ends after [`MAX_EXPIRY`](crate::bounds::MAX_EXPIRY) (`"grace"`); an old key
    /// that is revoked or has expired (`"id"`), since a replacement would bring it back.
    ///
    /// Rotation never lengthens a key's life. The new key gets the old key's `expires_at`
    /// as it stands, so rotating a key that is already in a grace period yields a key that
    /// stops when that grace ends; the old key's end moves only earlier
    /// (`min(expires_at, now + grace)`), so retrying a rotate neither extends it nor
    /// shortens it again (with the same `grace`).
    ///
    /// The new key is written first, then the old key's end, conditionally
    /// ([`KeyPatch::if_unchanged`]) on the old record as read. If the old key changed in
    /// between, it is read again and the rotation adapts, a few times at most:
    ///
    /// - revoked meanwhile: the new key is revoked too, and an [`Error::InvalidInput`] for
    ///   `"id"` says so: a revoke that races a rotate leaves no key working;
    /// - expired, or deleted ([`Error::NotFound`]) meanwhile: the new key is deleted again;
    /// - given another owner or other scopes meanwhile: the new key (minted with the old
    ///   ones) is deleted again and the answer is [`Error::Changed`]: rotate again;
    /// - its expiry changed meanwhile: the old key's end is computed again from the new
    ///   expiry (so a concurrent shortening stands), and the new key is cut to the new
    ///   expiry if that is earlier.
    ///
    /// Whenever the rotation fails after the new key was written, that key (whose
    /// plaintext nobody will see) is deleted again, best-effort, and the error returned:
    /// retrying is safe.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad `grace` or an old key that is revoked or expired (see
    /// above); [`Error::NotFound`] for an unknown id (or one deleted meanwhile);
    /// [`Error::Changed`] when the old key's owner or scopes changed meanwhile; [`Error::Store`]
    /// if the store fails. Nothing is left written in any of these cases.
    pub async fn rotate(&self, id: KeyId, grace: TimeDelta) -> Result<IssuedKey, Error> {
        self.rotate_from(id, grace, None).await
    }

    /// [`rotate`](Self::rotate), refused with [`Error::Changed`] before anything is written
    /// when the old record no longer holds the [`Precondition`](crate::Precondition) of
    /// `expected`, the copy a caller decided on (the admin API's authority check).
    pub(crate) async fn rotate_from(
        &self,
        id: KeyId,
        grace: TimeDelta,
        expected: Option<&KeyRecord>,
    ) -> Result<IssuedKey, Error> {
        if grace < TimeDelta::zero() {
            return Err(Error::invalid("grace", "must not be negative"));
        }
        let now = self.inner.clock.now().trunc_subsecs(6);
        let grace_end = now
            .checked_add_signed(grace)
            .filter(|end| *end <= validate::MAX_EXPIRY)
            .ok_or(Error::invalid(
                "grace",
                "too long: it would end after 9999-12-31T23:59:59Z",
            ))?;
        let old = self.inner.store.get(id).await?.ok_or(Error::NotFound(id))?;
        if expected.is_some_and(|expected| !crate::Precondition::of(expected).holds(&old)) {
            return Err(Error::Changed(id));
        }
        if !old.active {
            return Err(Error::invalid(
                "id",
                "the key is revoked; a revoked key is not rotated",
            ));
        }
        if old.is_expired_at(now) {
            return Err(Error::invalid(
                "id",
                "the key has expired; an expired key is not rotated",
            ));
        }
        let mut new = NewKey::new(old.name.clone(), old.owner.clone())
            .format(old.format)
            .metadata(old.metadata.clone());
        new.description.clone_from(&old.description);
        new.created_by.clone_from(&old.created_by);
        new.scopes.clone_from(&old.scopes);
        new.network.clone_from(&old.network);
        new.ratelimits.clone_from(&old.ratelimits);
        if let Some(policy) = &old.credits {
            // The new key continues the old one's count: rotating never refills credits.
            let left = self
                .credits_remaining(&old)
                .await
                .map_err(Error::Limiter)?
                .unwrap_or(policy.remaining);
            let mut continued = policy.clone();
            continued.remaining = left;
            new.credits = Some(continued);
        }
        if let Some(at) = old.expires_at {
            new = new.expires_at(at);
        }
        // The name comes from the record, which `import` may have taken as Audiobookshelf
        // had it: do not hold it to `mint`'s stricter rules.
        let issued = self.mint_checked(new).await?;
        let new_id = issued.record.id;
        let issued = self
            .end_old_key(id, Arc::unwrap_or_clone(old), grace_end, issued)
            .await?;
        tracing::info!(target: "keygate", key_id = %id, new_key_id = %new_id, grace_secs = grace.num_seconds(), "key rotated");
        Ok(issued)
    }

    /// The second half of a rotation: writes the old key's end
    /// (`min(expires_at, grace_end)`) conditionally on `old`, the record as read; when it
    /// changed meanwhile, reads it again and adapts (see [`rotate`](Self::rotate)). On an
    /// error the new key is revoked (the old one was revoked meanwhile) or deleted.
    async fn end_old_key(
        &self,
        id: KeyId,
        old: KeyRecord,
        grace_end: DateTime<Utc>,
        issued: IssuedKey,
    ) -> Result<IssuedKey, Error> {
        let new_id = issued.record.id;
        match self.try_end_old_key(id, old, grace_end, issued).await {
            Ok(issued) => Ok(issued),
            Err((error, Ending::Revoked)) => Err(error),
            Err((error, Ending::Failed)) => {
                self.discard(new_id).await;
                Err(error)
            }
        }
    }

    /// [`end_old_key`](Self::end_old_key) short of deleting the new key on failure.
    async fn try_end_old_key(
        &self,
        id: KeyId,
        old: KeyRecord,
        grace_end: DateTime<Utc>,
        mut issued: IssuedKey,
    ) -> Result<IssuedKey, (Error, Ending)> {
        let failed = |error: Error| (error, Ending::Failed);
        /// Writes of the old key's end before giving up on a key that keeps changing.
        const ATTEMPTS: usize = 3;
        let new_id = issued.record.id;
        let mut current = old;
        for _ in 0..ATTEMPTS {
            let old_end = current.expires_at.map_or(grace_end, |at| at.min(grace_end));
            let patch = KeyPatch::new()
                .expires_at(Some(old_end))
                .if_unchanged(&current);
            match self.update(id, patch).await {
                Ok(_) => return Ok(issued),
                Err(Error::Changed(_)) => {}
                Err(error) => return Err(failed(error)),
            }
            current = self
                .inner
                .store
                .get(id)
                .await
                .map_err(|e| failed(e.into()))?
                .map(Arc::unwrap_or_clone)
                .ok_or_else(|| failed(Error::NotFound(id)))?;
            if !current.active {
                // A revoke landed between our read and our write: its intent covers the
                // replacement too.
                if let Err(error) = self.update(new_id, KeyPatch::new().active(false)).await {
                    tracing::warn!(target: "keygate", key_id = %id, new_key_id = %new_id, error = %error, "rotate raced a revoke and could not revoke the new key; deleting it");
                    self.discard(new_id).await;
                }
                tracing::info!(target: "keygate", key_id = %id, new_key_id = %new_id, "rotate raced a revoke: new key revoked too");
                return Err((
                    Error::invalid(
                        "id",
                        "the key was revoked during the rotation; the new key was revoked too",
                    ),
                    Ending::Revoked,
                ));
            }
            if current.is_expired_at(self.inner.clock.now()) {
                return Err(failed(Error::invalid(
                    "id",
                    "the key expired during the rotation; the new key was deleted",
                )));
            }
            if current.owner != issued.record.owner || current.scopes != issued.record.scopes {
                tracing::info!(target: "keygate", key_id = %id, new_key_id = %new_id, "rotate raced a change of owner or scopes: new key deleted");
                return Err(failed(Error::Changed(id)));
            }
            let ends_earlier = match (current.expires_at, issued.record.expires_at) {
                (Some(now_ends), Some(new_ends)) => now_ends < new_ends,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if ends_earlier {
                // The new key must not outlive what the old one is now allowed.
                let mut cut = current.expires_at;
                if issued.record.format == KeyFormat::Jwt {
                    // A JWT carries whole seconds; round down, never up.
                    cut = cut.map(|at| at.trunc_subsecs(0));
                }
                let trim = KeyPatch::new().expires_at(cut).if_unchanged(&issued.record);
                issued.record = self.update(new_id, trim).await.map_err(failed)?;
            }
        }
        Err(failed(Error::Changed(id)))
    }

    /// Deletes a key that was minted but will never be handed out; failing that, revokes
    /// it. Best-effort: a failure is logged with the key id, never returned.
    async fn discard(&self, id: KeyId) {
        if let Ok(deleted) = self.inner.store.delete(id).await {
            if deleted {
                self.inner.usage.forget(id);
                tracing::info!(target: "keygate", key_id = %id, "unissued key deleted");
            }
            return;
        }
        let revoked = self
            .inner
            .store
            .update(
                id,
                &KeyPatch {
                    active: Some(false),
                    updated_at: Some(self.inner.clock.now().trunc_subsecs(6)),
                    ..KeyPatch::default()
                },
            )
            .await;
        if !matches!(revoked, Ok(Some(_))) {
            tracing::warn!(target: "keygate", key_id = %id, "could not delete or revoke an unissued key: revoke or delete it by hand");
        }
    }

    /// The owner `user_id` as the [`UserDirectory`] sees it now; without a directory every
    /// user exists, active, with all permissions (implied, so not an explicit grant: see
    /// [`Principal::grants`](crate::Principal::grants)).
    ///
    /// # Errors
    ///
    /// [`DirectoryError`](crate::DirectoryError) when the directory could not be asked. An
    /// unknown user is `Ok(None)`.
    pub async fn owner(&self, user_id: &str) -> Result<Option<Owner>, crate::DirectoryError> {
        match &self.inner.users {
            None => Ok(Some(Owner::unrestricted())),
            Some(users) => users.owner(user_id).await,
        }
    }

    /// The users the [`UserDirectory`] lists ([`UserDirectory::users`]), at most
    /// [`MAX_PAGE`]; `Ok(None)` without a directory or when it does not list its users.
    ///
    /// # Errors
    ///
    /// [`DirectoryError`](crate::DirectoryError) when the directory could not be asked.
    pub async fn directory_users(
        &self,
    ) -> Result<Option<Vec<crate::DirectoryUser>>, crate::DirectoryError> {
        match &self.inner.users {
            None => Ok(None),
            Some(users) => Ok(users.users().await?.map(|mut list| {
                list.truncate(MAX_PAGE);
                list
            })),
        }
    }

    /// Writes queued last-used times and re-hashes now, after any background write under
    /// way has finished. Call it at shutdown. Otherwise they are written in the
    /// background, at most once per
    /// [`last_used_interval`](crate::KeygateBuilder::last_used_interval): by a task that the
    /// first accepted verify after the interval starts (there is no timer, so under sparse
    /// traffic a use can wait for the next verify), and when the last `Keygate` clone is
    /// dropped inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the store refused a write; what could not be written stays queued
    /// for the next flush.
    pub async fn flush(&self) -> Result<(), Error> {
        let inner = &*self.inner;
        Ok(inner
            .usage
            .flush(&*inner.store, inner.clock.now_micros())
            .await?)
    }
}

/// How a rotation that failed after minting left the new key.
enum Ending {
    /// Revoked with the old key, which was revoked meanwhile: keep its record.
    Revoked,
    /// To be deleted: nobody will see its plaintext.
    Failed,
}

fn check_name(name: &str) -> Result<(), Error> {
    validate::name(name)
}

fn check_owner(owner: &str) -> Result<(), Error> {
    validate::owner(owner)
}
