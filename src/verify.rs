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
use crate::principal::Principal;
use crate::record::KeyRecord;
use crate::refusals::RefusalCounts;
use crate::store::StoreError;
use crate::usage;
use crate::user::Owner;

impl Keygate {
    /// Verifies the value of one `Authorization` header (`Bearer <key>`).
    /// For a request's full header list, use [`verify_headers`](Self::verify_headers).
    pub async fn verify_header(&self, value: &str) -> Result<Principal, VerifyError> {
        self.verify_headers([value.as_bytes()]).await
    }

    /// Verifies a request from all of its `Authorization` header values: none is
    /// [`VerifyError::MissingCredentials`], more than one an invalid request.
    pub async fn verify_headers<'a, I>(&self, values: I) -> Result<Principal, VerifyError>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        let result = match http::bearer_token(values) {
            Ok(token) => self.check(token).await,
            Err(error) => Err(error.into()),
        };
        result.map_err(|refused| self.refuse(refused))
    }

    /// Verifies a bearer token (the key itself, without `Bearer `).
    ///
    /// Order: shape and checksum (or JWT header, signature and claims) with no store
    /// access; then the record by id (format, hash in constant time, active, expiry); then
    /// the owner. A store failure is [`VerifyError::StoreUnavailable`], never a bad key.
    pub async fn verify(&self, token: &str) -> Result<Principal, VerifyError> {
        self.check(token)
            .await
            .map_err(|refused| self.refuse(refused))
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

    async fn check(&self, token: &str) -> Result<Principal, Refused> {
        let inner = &*self.inner;
        let now = inner.clock.now_micros();
        if token.as_bytes().contains(&b'.') {
            let jwt = inner.jwt.as_ref().ok_or(reject(Rejection::JwtDisabled))?;
            let claims = jwt.verify(token, now).map_err(reject)?;
            let record = self.lookup(claims.key_id).await?;
            let Some(record) = record else {
                return Err(reject_key(Rejection::UnknownKey, claims.key_id));
            };
            if record.format != KeyFormat::Jwt {
                return Err(reject_key(Rejection::FormatMismatch, record.id));
            }
            // Keys minted here are bound to their exact token; imported Audiobookshelf
            // keys have no hash and rest on the signature alone, as they do there.
            let rehash = match &record.hash {
                Some(hash) => {
                    self.check_hash(claims.signature, None, hash, record.id)
                        .await?
                }
                None => None,
            };
            self.accept(record, now, rehash, claims.exp).await
        } else {
            if token.len() > key::MAX_OPAQUE_LEN {
                return Err(reject(Rejection::Malformed));
            }
            let key = OpaqueKey::parse(token, &inner.prefix).map_err(reject)?;
            // What a bound hash covers: the prefix, the id part and the secret part.
            let bound = key::without_checksum(token).ok_or(reject(Rejection::Malformed))?;
            let record = self.lookup(key.id).await?;
            let checked = match record.as_deref() {
                Some(KeyRecord {
                    format: KeyFormat::Opaque,
                    hash: Some(hash),
                    ..
                }) => Some(self.check_hash(key.secret, Some(bound), hash, key.id).await),
                _ => None,
            };
            match (record, checked) {
                (Some(record), Some(rehash)) => self.accept(record, now, rehash?, None).await,
                (record, _) => {
                    // Same HMAC work as a real comparison: timing does not tell ids apart.
                    inner.pepper.burn(bound);
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
    }

    /// The record for `id`, checked with [`KeyRecord::check`] whatever store it came
    /// from: one that fails, or that the store could not read, is
    /// [`VerifyError::StoreCorrupt`] (HTTP 500), logged at error level with the key id.
    /// A store failure is [`VerifyError::StoreUnavailable`], logged without one.
    async fn lookup(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, Refused> {
        let lookup = self.inner.store.get(id);
        let result = match self.inner.store_timeout {
            None => lookup.await,
            Some(limit) => tokio::time::timeout(limit, lookup)
                .await
                .unwrap_or(Err(StoreError::Timeout)),
        };
        match result {
            Ok(Some(record)) => match record.check(id) {
                Ok(()) => Ok(Some(record)),
                Err(invalid) => Err(store_corrupt(id, StoreError::Corrupt(Box::new(invalid)))),
            },
            Ok(None) => Ok(None),
            Err(error @ StoreError::Corrupt(_)) => Err(store_corrupt(id, error)),
            Err(error) => Err(VerifyError::StoreUnavailable(error).into()),
        }
    }

    /// Constant-time hash check of `secret` (and, for an opaque key, `bound`, the key
    /// without its checksum) against the record's hash. On success, a re-hash when the
    /// hash is under an older pepper or, for an opaque key, of the older
    /// [`HashScheme::Secret`] kind: it is written after the verify, like last-used.
    ///
    /// A mismatch asks whether the gate's pepper of the hash's version is the wrong one
    /// ([`Keygate::check_pepper`], run once per gate): then it is
    /// [`VerifyError::PepperMismatch`], not a bad key.
    async fn check_hash(
        &self,
        secret: &[u8],
        bound: Option<&[u8]>,
        hash: &SecretHash,
        id: KeyId,
    ) -> Result<Option<SecretHash>, Refused> {
        let pepper = &self.inner.pepper;
        if !pepper.matches(hash, secret, bound) {
            let wrong_pepper = match self.known_pepper_mismatch(hash.version) {
                Some(known) => known,
                // This gate's first mismatch runs the check, boxed: its future stays out
                // of every verify's.
                None => Box::pin(self.pepper_mismatched(hash.version)).await,
            };
            if wrong_pepper {
                return Err(Refused {
                    error: VerifyError::PepperMismatch {
                        version: hash.version,
                    },
                    key: Some(id),
                });
            }
            return Err(reject_key(Rejection::HashMismatch, id));
        }
        let (scheme, input) = match bound {
            Some(bound) => (HashScheme::Bound, bound),
            None => (HashScheme::Secret, secret),
        };
        let stale = hash.version != pepper.current_version() || hash.scheme != scheme;
        Ok(stale.then(|| pepper.hash(scheme, input)))
    }

    /// The record-side checks (active, expiry, owner) of a key whose token checked out;
    /// `token_exp` is a JWT's own `exp` (microseconds), which bounds the principal's
    /// lifetime as much as the record's `expires_at` does.
    async fn accept(
        &self,
        record: Arc<KeyRecord>,
        now: usage::Micros,
        rehash: Option<SecretHash>,
        token_exp: Option<usage::Micros>,
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
        let owner = match &inner.users {
            None => UNRESTRICTED.clone(),
            Some(users) => users
                .owner(&record.owner)
                .await
                .map_err(VerifyError::DirectoryUnavailable)?
                .map(Arc::new)
                .ok_or_else(|| reject_key(Rejection::OwnerUnknown, record.id))?,
        };
        if !owner.active {
            return Err(reject_key(Rejection::OwnerInactive, record.id));
        }
        if inner.usage.mark(record.id, now, rehash) {
            usage::spawn_flush(inner.usage.clone(), inner.store.clone(), now);
        }
        Ok(Principal::new(
            record,
            owner,
            inner.users.is_some(),
            now,
            token_exp,
            inner.id,
        ))
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

/// The owner of every key on a gate without a directory, shared rather than rebuilt.
static UNRESTRICTED: std::sync::LazyLock<Arc<Owner>> =
    std::sync::LazyLock::new(|| Arc::new(Owner::unrestricted()));
