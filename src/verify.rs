//! The verify path, top to bottom: the entry points ([`Keygate::verify_header`],
//! [`Keygate::verify_headers`], [`Keygate::verify`]); the token's offline checks and the
//! store lookup ([`check`](Keygate::check)); the hash; the record-side checks; and, at
//! the end of every refusal, [`refuse`](Keygate::refuse), the one place that counts and
//! logs it (through [`Refusals`](crate::refusals::Refusals)).

use std::sync::Arc;

use crate::error::{Rejection, VerifyError};
use crate::gate::Keygate;
use crate::hash::{HashScheme, SecretHash};
use crate::http;
use crate::key::{self, KeyFormat, KeyId, OpaqueKey};
use crate::limits::{RequestContext, UNKNOWN_CONTEXT};
use crate::principal::Principal;
use crate::record::KeyRecord;
use crate::refusals::RefusalCounts;
use crate::store::StoreError;
use crate::usage;

/// How long a refused request waits for the gate's first pepper check when the gate has
/// no `store_timeout` (see `settle`).
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Keygate {
    /// Verifies the value of one `Authorization` header (`Bearer <key>`).
    /// For a request's full header list, use [`verify_headers`](Self::verify_headers).
    ///
    /// # Errors
    ///
    /// As [`verify`](Self::verify), plus [`VerifyError::MissingCredentials`] for another
    /// scheme and [`VerifyError::InvalidRequest`] for an unreadable value.
    pub async fn verify_header(&self, value: &str) -> Result<Principal, VerifyError> {
        self.verify_headers([value.as_bytes()]).await
    }

    /// Verifies a request from all of its `Authorization` header values: none is
    /// [`VerifyError::MissingCredentials`], more than one an invalid request.
    ///
    /// # Errors
    ///
    /// As [`verify`](Self::verify), plus [`VerifyError::MissingCredentials`] without a
    /// header or with another scheme, and [`VerifyError::InvalidRequest`] for more than one
    /// header or an unreadable one.
    pub async fn verify_headers<'a, I>(&self, values: I) -> Result<Principal, VerifyError>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        self.verify_headers_with(values, &UNKNOWN_CONTEXT).await
    }

    /// [`verify_headers`](Self::verify_headers) for a request from `context` (client
    /// address, `Origin`), which a key with a
    /// [`NetworkPolicy`](crate::limits::NetworkPolicy) is checked against. The axum and
    /// actix integrations call it with [`request_context`](Self::request_context).
    ///
    /// # Errors
    ///
    /// As [`verify_headers`](Self::verify_headers), plus
    /// [`VerifyError::NetworkNotAllowed`] and [`VerifyError::OriginNotAllowed`] for a valid
    /// key the context does not satisfy.
    pub async fn verify_headers_with<'a, I>(
        &self,
        values: I,
        context: &RequestContext,
    ) -> Result<Principal, VerifyError>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        let settle = {
            let refused = match http::bearer_token(values) {
                Ok(token) => match self.check(token, context).await {
                    Ok(principal) => return Ok(principal),
                    Err(refused) => refused,
                },
                Err(error) => error.into(),
            };
            if !self.unsettled(&refused) {
                return Err(self.refuse(refused));
            }
            // Rare (a gate's first hash mismatch): boxed, and out of scope of everything
            // the check above held, so that it adds nothing to this future.
            Box::pin(self.settle(refused))
        };
        Err(settle.await)
    }

    /// Verifies a bearer token (the key itself, without `Bearer `).
    ///
    /// Order: shape and checksum (or JWT header, signature and claims) with no store
    /// access; then the record by id (format, hash in constant time, active, expiry); then
    /// the owner. A store failure is [`VerifyError::StoreUnavailable`], never a bad key.
    ///
    /// # Errors
    ///
    /// [`VerifyError::InvalidKey`] with the [`Rejection`](crate::Rejection) for a bad, unknown,
    /// expired or revoked key or an unknown or inactive owner;
    /// [`VerifyError::StoreUnavailable`] or [`VerifyError::DirectoryUnavailable`] when the store
    /// or directory fails or times out; [`VerifyError::StoreCorrupt`] for a stored record keygate
    /// cannot trust; [`VerifyError::NetworkNotAllowed`] or [`VerifyError::OriginNotAllowed`]
    /// for a key with a [`NetworkPolicy`](crate::limits::NetworkPolicy): with no request
    /// context, its client address and origin are unknown, so such a key is refused (use
    /// [`verify_with`](Self::verify_with)). [`VerifyError::http`] maps each to its HTTP answer.
    pub async fn verify(&self, token: &str) -> Result<Principal, VerifyError> {
        self.verify_with(token, &UNKNOWN_CONTEXT).await
    }

    /// [`verify`](Self::verify) for a request from `context`: its client address and
    /// `Origin`, which a key with a [`NetworkPolicy`](crate::limits::NetworkPolicy) must
    /// satisfy (checked after every other check passed, so only a valid key learns it is
    /// restricted).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use keygate::limits::{Cidr, RequestContext};
    /// use keygate::{Keygate, MemoryStore, NewKey, Pepper, VerifyError};
    ///
    /// let gate = Keygate::builder(MemoryStore::new(), Pepper::new(1, [7u8; 32])?).build()?;
    /// let office: Cidr = "203.0.113.0/24".parse()?;
    /// let key = gate.mint(NewKey::new("ci", "user-1").allowed_cidrs([office])).await?.key;
    ///
    /// let inside = RequestContext::new().client_addr("203.0.113.9".parse()?);
    /// assert!(gate.verify_with(key.expose(), &inside).await.is_ok());
    /// let outside = RequestContext::new().client_addr("198.51.100.1".parse()?);
    /// let refused = gate.verify_with(key.expose(), &outside).await.unwrap_err();
    /// assert!(matches!(refused, VerifyError::NetworkNotAllowed));
    /// assert_eq!(refused.http("api").status, 403);
    /// // No context: the address is unknown, and a restricted key fails closed.
    /// assert!(matches!(gate.verify(key.expose()).await, Err(VerifyError::NetworkNotAllowed)));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`verify`](Self::verify).
    pub async fn verify_with(
        &self,
        token: &str,
        context: &RequestContext,
    ) -> Result<Principal, VerifyError> {
        let settle = {
            let refused = match self.check(token, context).await {
                Ok(principal) => return Ok(principal),
                Err(refused) => refused,
            };
            if !self.unsettled(&refused) {
                return Err(self.refuse(refused));
            }
            // As in `verify_headers`: boxed and out of the check's scope.
            Box::pin(self.settle(refused))
        };
        Err(settle.await)
    }

    /// Every refusal ends here: counted, and logged (rate-limited per reason) with its
    /// reason code and, when the store lookup found it, the key id. Never the token.
    fn refuse(&self, refused: Refused) -> VerifyError {
        let now = self.inner.clock.now_micros();
        self.inner.refusals.record(&refused.error, refused.key, now);
        refused.error
    }

    /// How many verifications this gate refused so far, per reason code: lock-free
    /// counters, for metrics. Refusal *log events* are rate-limited per reason (see
    /// [`KeygateBuilder::refusal_log_interval`](crate::KeygateBuilder::refusal_log_interval));
    /// these counters see every refusal.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # use keygate::{Keygate, MemoryStore, Pepper};
    /// # let gate = Keygate::builder(MemoryStore::new(), Pepper::new(1, [7u8; 32]).unwrap())
    /// #     .build()
    /// #     .unwrap();
    /// let _ = gate.verify_header("Basic dXNlcjpwYXNz").await;
    /// for (reason, count) in &gate.refusal_counts() {
    ///     if count > 0 {
    ///         println!("keygate_refusals_total{{reason=\"{reason}\"}} {count}");
    ///     }
    /// }
    /// # }
    /// ```
    pub fn refusal_counts(&self) -> RefusalCounts {
        self.inner.refusals.counts()
    }

    async fn check(&self, token: &str, context: &RequestContext) -> Result<Principal, Refused> {
        let inner = &*self.inner;
        let now = inner.clock.now_micros();
        // Opaque keys (a `[a-z0-9]` prefix, `_`, base62) have no `.`; JWTs do.
        if token.as_bytes().contains(&b'.') {
            return self.check_jwt(token, now, context).await;
        }
        if token.len() > key::MAX_OPAQUE_LEN {
            return Err(reject(Rejection::Malformed));
        }
        let key = OpaqueKey::parse(token, &inner.prefix).map_err(reject)?;
        let record = match inner.store.get_now(key.id) {
            Some(answer) => checked(key.id, answer)?,
            // Boxed: a store read (and its timeout) would more than double the size of
            // every verify future, while only a read that waits on the store needs it.
            None => Box::pin(self.lookup(key.id)).await?,
        };
        let checked = match record.as_deref() {
            Some(r) if r.format == KeyFormat::Opaque => r
                .hash
                .as_ref()
                .map(|hash| self.check_hash(key.secret, Some(key.bound), hash, key.id)),
            _ => None,
        };
        match (record, checked) {
            (Some(record), Some(rehash)) => self.accept(record, now, rehash?, None, context).await,
            (record, _) => {
                // Same HMAC work as a real comparison: timing does not tell ids apart.
                inner.pepper.burn(key.bound);
                let reason = match record {
                    None => Rejection::UnknownKey,
                    Some(r) if r.format != KeyFormat::Opaque => Rejection::FormatMismatch,
                    // An opaque record without a hash can match nothing (and fails
                    // `KeyRecord::check` before it gets here).
                    Some(_) => Rejection::HashMismatch,
                };
                Err(reject_key(reason, key.id))
            }
        }
    }

    /// [`check`](Self::check) of a token with a `.`: a JWT.
    async fn check_jwt(
        &self,
        token: &str,
        now: usage::Micros,
        context: &RequestContext,
    ) -> Result<Principal, Refused> {
        let inner = &*self.inner;
        let jwt = inner.jwt.as_ref().ok_or(reject(Rejection::JwtDisabled))?;
        let claims = jwt.verify(token, now).map_err(reject)?;
        let record = match inner.store.get_now(claims.key_id) {
            Some(answer) => checked(claims.key_id, answer)?,
            None => Box::pin(self.lookup(claims.key_id)).await?,
        };
        let Some(record) = record else {
            return Err(reject_key(Rejection::UnknownKey, claims.key_id));
        };
        if record.format != KeyFormat::Jwt {
            return Err(reject_key(Rejection::FormatMismatch, record.id));
        }
        // Keys minted here are bound to their exact token; imported Audiobookshelf
        // keys have no hash and rest on the signature alone, as they do there.
        let rehash = match &record.hash {
            Some(hash) => self.check_hash(claims.signature, None, hash, record.id)?,
            None => None,
        };
        self.accept(record, now, rehash, claims.exp, context).await
    }

    /// The record for `id` from the store's [`get`](crate::KeyStore::get), within the
    /// store timeout, then [`checked`].
    async fn lookup(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, Refused> {
        let lookup = self.inner.store.get(id);
        let result = match self.inner.store_timeout {
            None => lookup.await,
            Some(limit) => tokio::time::timeout(limit, lookup)
                .await
                .unwrap_or(Err(StoreError::Timeout)),
        };
        checked(id, result)
    }

    /// Constant-time hash check of `secret` (and, for an opaque key, `bound`, the key
    /// without its checksum) against the record's hash. On success, a re-hash when the
    /// hash is under an older pepper or, for an opaque key, of the older
    /// [`HashScheme::Secret`] kind: it is written after the verify, like last-used.
    fn check_hash(
        &self,
        secret: &[u8],
        bound: Option<&[u8]>,
        hash: &SecretHash,
        id: KeyId,
    ) -> Result<Option<SecretHash>, Refused> {
        let pepper = &self.inner.pepper;
        if !pepper.matches(hash, secret, bound) {
            return Err(self.hash_mismatch(hash.version, id));
        }
        let (scheme, input) = match bound {
            Some(bound) => (HashScheme::Bound, bound),
            None => (HashScheme::Secret, secret),
        };
        let stale = hash.version != pepper.current_version() || hash.scheme != scheme;
        Ok(stale.then(|| pepper.hash(scheme, input)))
    }

    /// A hash of pepper `version` that did not match: a bad key, unless this gate's pepper
    /// of that version is not the one the store recorded ([`Keygate::check_pepper`]):
    /// then [`VerifyError::PepperMismatch`]. Before the gate's check has run, the answer
    /// is a provisional `PepperMismatch` that [`settle`](Self::settle) decides.
    fn hash_mismatch(&self, version: u32, id: KeyId) -> Refused {
        match self.known_pepper_mismatch(version) {
            Some(false) => reject_key(Rejection::HashMismatch, id),
            Some(true) | None => Refused {
                error: VerifyError::PepperMismatch { version },
                key: Some(id),
            },
        }
    }

    /// Whether `refused` is a provisional [`hash_mismatch`](Self::hash_mismatch) that
    /// [`settle`](Self::settle) must decide: any `PepperMismatch` the gate's pepper check
    /// has not confirmed (it may have finished, with no mismatch, since `hash_mismatch`
    /// looked: then `settle` answers `hash_mismatch` at once).
    fn unsettled(&self, refused: &Refused) -> bool {
        match refused.error {
            VerifyError::PepperMismatch { version } => {
                self.known_pepper_mismatch(version) != Some(true)
            }
            _ => false,
        }
    }

    /// Decides an [`unsettled`](Self::unsettled) refusal, then [`refuse`](Self::refuse)s
    /// it: runs the gate's pepper check (once per gate) and keeps `PepperMismatch` only if
    /// the check confirms it; a store that cannot be asked confirms nothing (a bad key).
    ///
    /// A request waits for the check at most the gate's `store_timeout`, or
    /// [`SETTLE_LIMIT`] without one, so bad keys sent while the store does not answer
    /// cannot queue up behind one another.
    async fn settle(&self, refused: Refused) -> VerifyError {
        let limit = self.inner.store_timeout.unwrap_or(SETTLE_LIMIT);
        let refused = match refused.error {
            VerifyError::PepperMismatch { version }
                if !tokio::time::timeout(limit, self.pepper_mismatched(version))
                    .await
                    .unwrap_or(false) =>
            {
                Refused {
                    error: VerifyError::InvalidKey(Rejection::HashMismatch),
                    key: refused.key,
                }
            }
            _ => refused,
        };
        self.refuse(refused)
    }

    /// The record-side checks (active, expiry, owner, then the network policy against
    /// `context`) of a key whose token checked out; `token_exp` is a JWT's own `exp`
    /// (microseconds), which bounds the principal's lifetime as much as the record's
    /// `expires_at` does.
    async fn accept(
        &self,
        record: Arc<KeyRecord>,
        now: usage::Micros,
        rehash: Option<SecretHash>,
        token_exp: Option<usage::Micros>,
        context: &RequestContext,
    ) -> Result<Principal, Refused> {
        let inner = &*self.inner;
        if !record.active {
            return Err(reject_key(Rejection::Inactive, record.id));
        }
        if record
            .expires_at
            .is_some_and(|at| now >= at.timestamp_micros())
        {
            return Err(reject_key(Rejection::Expired, record.id));
        }
        // Without a directory every owner is active and holds every permission: nothing
        // to look up or share.
        let owner = match &inner.users {
            None => None,
            Some(users) => {
                let owner = users
                    .owner(&record.owner)
                    .await
                    .map_err(VerifyError::DirectoryUnavailable)?
                    .ok_or_else(|| reject_key(Rejection::OwnerUnknown, record.id))?;
                if !owner.active {
                    return Err(reject_key(Rejection::OwnerInactive, record.id));
                }
                Some(Arc::new(owner))
            }
        };
        // Last: a 403 only for a key that would otherwise be accepted. Nothing is marked
        // as used for a refused request.
        if let Err(refusal) = record.network.check(context) {
            return Err(Refused {
                error: refusal.into(),
                key: Some(record.id),
            });
        }
        if inner.usage.mark(record.id, now, rehash) {
            usage::spawn_flush(inner.usage.clone(), inner.store.clone(), now);
        }
        Ok(Principal::new(record, owner, now, token_exp, inner.id))
    }
}

/// A store's answer for `id`, checked with [`KeyRecord::check`] whatever store it came
/// from: a record that fails, or that the store could not read, is
/// [`VerifyError::StoreCorrupt`] (HTTP 500), logged at error level with the key id. A
/// store failure is [`VerifyError::StoreUnavailable`], logged without one.
fn checked(
    id: KeyId,
    answer: Result<Option<Arc<KeyRecord>>, StoreError>,
) -> Result<Option<Arc<KeyRecord>>, Refused> {
    match answer {
        Ok(Some(record)) => match record.check(id) {
            Ok(()) => Ok(Some(record)),
            Err(invalid) => Err(store_corrupt(id, StoreError::Corrupt(Box::new(invalid)))),
        },
        Ok(None) => Ok(None),
        Err(error @ StoreError::Corrupt(_)) => Err(store_corrupt(id, error)),
        Err(error) => Err(VerifyError::StoreUnavailable(error).into()),
    }
}

/// A refusal on its way to [`Keygate::refuse`]: the error, and the key id to log with it.
struct Refused {
    error: VerifyError,
    /// Set once the store lookup has tied the token to a key.
    key: Option<KeyId>,
}

/// A refusal without a key id: the request, the token's offline checks, the backends.
impl From<VerifyError> for Refused {
    fn from(error: VerifyError) -> Self {
        Refused { error, key: None }
    }
}

/// A refusal of the token alone, before any store access.
fn reject(rejection: Rejection) -> Refused {
    VerifyError::InvalidKey(rejection).into()
}

/// A refusal after the store lookup, logged with the key id.
fn reject_key(rejection: Rejection, id: KeyId) -> Refused {
    Refused {
        error: VerifyError::InvalidKey(rejection),
        key: Some(id),
    }
}

/// A corrupt record on the verify path: a server error, logged at error level with its key
/// id, never with the record's contents.
fn store_corrupt(id: KeyId, error: StoreError) -> Refused {
    Refused {
        error: VerifyError::StoreCorrupt(error),
        key: Some(id),
    }
}
