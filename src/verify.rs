//! The verify path, top to bottom: the entry points ([`Keygate::verify_header`],
//! [`Keygate::verify_headers`], [`Keygate::verify`]); the token's offline checks and the
//! store lookup ([`check`](Keygate::check)); the hash; the record-side checks; and, at
//! the end of every refusal, [`refuse`](Keygate::refuse), the one place that counts and
//! logs it (through [`Refusals`](crate::refusals::Refusals)).

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Rejection, VerifyError};
use crate::gate::Keygate;
use crate::hash::{HashScheme, SecretHash};
use crate::http;
use crate::jwt::VerifiedJwt;
use crate::key::{self, KeyFormat, KeyId, OpaqueKey};
use crate::limits::events::LimitEvent;
use crate::limits::{
    self, Allowance, Charge, CreditSpend, CreditStatus, CreditsExhausted, Decision, FailureMode,
    LimitCheck, LimitOutcome, LimitReport, LimitScope, LimitStatus, LimiterError, RateLimit,
    RateLimited, Subject,
};
use crate::limits::{RequestContext, UNKNOWN_CONTEXT};
use crate::principal::Principal;
use crate::record::KeyRecord;
use crate::refusals::RefusalCounts;
use crate::store::StoreError;
use crate::usage;
use crate::user::Owner;

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
                Ok(token) => match self.check_fast(token, context) {
                    Fast::Done(Ok(principal)) => return Ok(principal),
                    Fast::Done(Err(refused)) => refused,
                    wait => match Box::pin(self.check_slow(wait, context)).await {
                        Ok(principal) => return Ok(principal),
                        Err(refused) => refused,
                    },
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
            let refused = match self.check_fast(token, context) {
                Fast::Done(Ok(principal)) => return Ok(principal),
                Fast::Done(Err(refused)) => refused,
                // Boxed: see `check_fast`.
                wait => match Box::pin(self.check_slow(wait, context)).await {
                    Ok(principal) => return Ok(principal),
                    Err(refused) => refused,
                },
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

    /// The synchronous part of a check: as far as it goes without waiting (everything, for
    /// a cached record, a directory and a limiter that answer in process). What is left to
    /// await is [`check_slow`](Self::check_slow)'s, boxed by the callers so that the verify
    /// future stays a few words (it is moved several times per request).
    fn check_fast<'t>(&self, token: &'t str, context: &RequestContext) -> Fast<'t> {
        let inner = &*self.inner;
        let now = inner.clock.now_micros();
        // Opaque keys (a `[a-z0-9]` prefix, `_`, base62) have no `.`; JWTs do.
        if token.as_bytes().contains(&b'.') {
            let Some(jwt) = inner.jwt.as_ref() else {
                return Fast::Done(Err(reject(Rejection::JwtDisabled)));
            };
            let claims = match jwt.verify(token, now) {
                Ok(claims) => claims,
                Err(rejection) => return Fast::Done(Err(reject(rejection))),
            };
            return match inner.store.get_now(claims.key_id) {
                None => Fast::Jwt { claims, now },
                Some(answer) => Fast::step(
                    checked(claims.key_id, answer)
                        .and_then(|record| self.jwt_step(&claims, record, now, context)),
                ),
            };
        }
        if token.len() > key::MAX_OPAQUE_LEN {
            return Fast::Done(Err(reject(Rejection::Malformed)));
        }
        let key = match OpaqueKey::parse(token, &inner.prefix) {
            Ok(key) => key,
            Err(rejection) => return Fast::Done(Err(reject(rejection))),
        };
        match inner.store.get_now(key.id) {
            None => Fast::Opaque { key, now },
            Some(answer) => Fast::step(
                checked(key.id, answer)
                    .and_then(|record| self.opaque_step(&key, record, now, context)),
            ),
        }
    }

    /// The rest of a check [`check_fast`](Self::check_fast) could not finish: the store
    /// read, the directory, the limiter, each awaited.
    async fn check_slow(
        &self,
        fast: Fast<'_>,
        context: &RequestContext,
    ) -> Result<Principal, Refused> {
        let step = match fast {
            Fast::Done(result) => return result,
            Fast::Step(step) => step,
            Fast::Opaque { key, now } => {
                let record = self.lookup(key.id).await?;
                self.opaque_step(&key, record, now, context)?
            }
            Fast::Jwt { claims, now } => {
                let record = self.lookup(claims.key_id).await?;
                self.jwt_step(&claims, record, now, context)?
            }
        };
        let (accepted, wait) = match step {
            Step::Done(principal) => return Ok(principal),
            Step::Owner(accepted) => {
                let owner = self.ask_owner(&accepted.record).await?;
                match self.after_owner(accepted, Some(owner), context)? {
                    AfterOwner::Done(principal) => return Ok(principal),
                    AfterOwner::Wait(accepted, wait) => (accepted, wait),
                }
            }
            Step::Limits(accepted, wait) => (accepted, wait),
        };
        match wait {
            LimitWait::GiveBack(refused) => {
                let owner = accepted.owner.as_deref();
                self.give_back_owner(&accepted.record, owner, accepted.now, Spend::Verify)
                    .await;
                Err(refused)
            }
            LimitWait::Limits(resume) => {
                let owner = accepted.owner.as_deref();
                let left = self
                    .enforce_slow(&accepted.record, owner, accepted.now, Spend::Verify, resume)
                    .await?;
                Ok(self.finish(accepted, left))
            }
        }
    }

    /// An opaque key's record (or none) as the store gave it: the format and the hash in
    /// constant time, then [`accept_now`](Self::accept_now).
    fn opaque_step(
        &self,
        key: &OpaqueKey<'_>,
        record: Option<Arc<KeyRecord>>,
        now: usage::Micros,
        context: &RequestContext,
    ) -> Result<Step, Refused> {
        let checked = match record.as_deref() {
            Some(r) if r.format == KeyFormat::Opaque => r
                .hash
                .as_ref()
                .map(|hash| self.check_hash(key.secret, Some(key.bound), hash, key.id)),
            _ => None,
        };
        match (record, checked) {
            (Some(record), Some(rehash)) => self.accept_now(record, now, rehash?, None, context),
            (record, _) => {
                // Same HMAC work as a real comparison: timing does not tell ids apart.
                self.inner.pepper.burn(key.bound);
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

    /// A verified JWT's record (or none) as the store gave it: the format and, for keys
    /// minted here, the hash bound to the exact token; then
    /// [`accept_now`](Self::accept_now).
    fn jwt_step(
        &self,
        claims: &VerifiedJwt<'_>,
        record: Option<Arc<KeyRecord>>,
        now: usage::Micros,
        context: &RequestContext,
    ) -> Result<Step, Refused> {
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
        self.accept_now(record, now, rehash, claims.exp, context)
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
    /// `context`, then the usage limits) of a key whose token checked out, as far as they
    /// go without waiting; `token_exp` is a JWT's own `exp` (microseconds), which bounds
    /// the principal's lifetime as much as the record's `expires_at` does.
    fn accept_now(
        &self,
        record: Arc<KeyRecord>,
        now: usage::Micros,
        rehash: Option<SecretHash>,
        token_exp: Option<usage::Micros>,
        context: &RequestContext,
    ) -> Result<Step, Refused> {
        if !record.active {
            return Err(reject_key(Rejection::Inactive, record.id));
        }
        if record
            .expires_at
            .is_some_and(|at| now >= at.timestamp_micros())
        {
            return Err(reject_key(Rejection::Expired, record.id));
        }
        let accepted = Accepted {
            record,
            owner: None,
            now,
            rehash,
            token_exp,
        };
        // Without a directory every owner is active and holds every permission: nothing
        // to look up or share.
        let owner = match &self.inner.users {
            None => None,
            Some(users) => match users.owner_now(&accepted.record.owner) {
                None => return Ok(Step::Owner(accepted)),
                Some(answer) => Some(self.owner_answer(&accepted.record, answer)?),
            },
        };
        Ok(match self.after_owner(accepted, owner, context)? {
            AfterOwner::Done(principal) => Step::Done(principal),
            AfterOwner::Wait(accepted, wait) => Step::Limits(accepted, wait),
        })
    }

    /// The owner of `record` from the directory's [`owner`](crate::UserDirectory::owner),
    /// awaited (the gate has a directory: [`accept_now`](Self::accept_now) asked it).
    async fn ask_owner(&self, record: &KeyRecord) -> Result<Arc<Owner>, Refused> {
        let answer = match &self.inner.users {
            Some(users) => users.owner(&record.owner).await.map(|o| o.map(Arc::new)),
            None => Ok(None),
        };
        self.owner_answer(record, answer)
    }

    /// The directory's answer for `record`'s owner: unknown and inactive owners refuse
    /// the key, a failure is [`VerifyError::DirectoryUnavailable`].
    fn owner_answer(
        &self,
        record: &KeyRecord,
        answer: Result<Option<Arc<Owner>>, crate::DirectoryError>,
    ) -> Result<Arc<Owner>, Refused> {
        let owner = answer
            .map_err(VerifyError::DirectoryUnavailable)?
            .ok_or_else(|| reject_key(Rejection::OwnerUnknown, record.id))?;
        if !owner.active {
            return Err(reject_key(Rejection::OwnerInactive, record.id));
        }
        Ok(owner)
    }

    /// After the owner: the network policy, then the usage limits as far as the limiter
    /// answers in process, then [`finish`](Self::finish).
    fn after_owner(
        &self,
        mut accepted: Accepted,
        owner: Option<Arc<Owner>>,
        context: &RequestContext,
    ) -> Result<AfterOwner, Refused> {
        accepted.owner = owner;
        let record = &accepted.record;
        // A 403 only for a key that would otherwise be accepted, and before the usage
        // limits: a request from where the key may not be used consumes no rate limit
        // and no credit (its own or its owner's). Nothing is marked as used for a refused
        // request.
        if let Err(refusal) = record.network.check(context) {
            return Err(Refused {
                error: refusal.into(),
                key: Some(record.id),
            });
        }
        // Usage limits last: a refused or bad key (or one used from a disallowed network)
        // never consumes anything.
        let owner = accepted.owner.as_deref();
        if !self.has_limits(record, owner) {
            return Ok(AfterOwner::Done(self.finish(accepted, None)));
        }
        match self.enforce_now(record, owner, accepted.now, Spend::Verify) {
            Now::Done(left) => Ok(AfterOwner::Done(self.finish(accepted, left?))),
            Now::GiveBack(refused) => Ok(AfterOwner::Wait(accepted, LimitWait::GiveBack(refused))),
            Now::Pending(resume) => Ok(AfterOwner::Wait(accepted, LimitWait::Limits(resume))),
        }
    }

    /// An accepted key: marked as used (and its re-hash queued), and its principal.
    fn finish(&self, accepted: Accepted, left: Option<UsageLeft>) -> Principal {
        let inner = &*self.inner;
        let Accepted {
            record,
            owner,
            now,
            rehash,
            token_exp,
        } = accepted;
        if inner.usage.mark(record.id, now, rehash) {
            usage::spawn_flush(inner.usage.clone(), inner.store.clone(), now);
        }
        let principal = Principal::new(record, owner, now, token_exp, inner.id);
        match left {
            None => principal,
            Some(left) => principal.with_allowance(left, &inner.owner_ratelimits),
        }
    }

    /// Whether `record`'s key or its owner has any limit or credits to enforce.
    fn has_limits(&self, record: &KeyRecord, owner: Option<&Owner>) -> bool {
        !(record.ratelimits.is_empty()
            && record.credits.is_none()
            && self.owner_limits(owner).is_empty())
    }

    /// The owner's shared limits, then the key's own limits and credits, each one
    /// all-or-nothing [`Limiter`] call, for `spend`. `Ok(None)`: nothing to limit. A key
    /// refused after its owner's limits were charged gives the owner's charge back.
    ///
    /// A limiter that answers in process ([`Limiter::check_now_into`]) is asked without an
    /// allocation or an await ([`enforce_now`](Self::enforce_now)); the rest is boxed, so
    /// that it adds nothing to the verify future.
    async fn enforce(
        &self,
        record: &KeyRecord,
        owner: Option<&Owner>,
        now: usage::Micros,
        spend: Spend<'_>,
    ) -> Result<Option<UsageLeft>, Refused> {
        // Most keys: no limit and no credits, nothing to pick.
        if !self.has_limits(record, owner) {
            return Ok(None);
        }
        match self.enforce_now(record, owner, now, spend) {
            Now::Done(result) => result,
            Now::GiveBack(refused) => {
                Box::pin(self.give_back_owner(record, owner, now, spend)).await;
                Err(refused)
            }
            Now::Pending(resume) => {
                Box::pin(self.enforce_slow(record, owner, now, spend, resume)).await
            }
        }
    }

    /// The limits that apply to `owner`'s keys: its own from the directory, else the gate's.
    fn owner_limits<'a>(&'a self, owner: Option<&'a Owner>) -> &'a [RateLimit] {
        owner
            .and_then(|o| o.ratelimits.as_deref())
            .unwrap_or(&self.inner.owner_ratelimits)
    }

    /// Refuses owner limits from the directory that keygate cannot apply.
    fn check_owner_limits(&self, record: &KeyRecord, owner: Option<&Owner>) -> Result<(), Refused> {
        match owner.and_then(|o| o.ratelimits.as_deref()) {
            Some(limits) if limits::validate_ratelimits(limits).is_err() => {
                // The directory answered limits keygate cannot apply: refuse, never ignore.
                let error =
                    std::io::Error::other("the user directory gave invalid owner rate limits");
                Err(Refused {
                    error: VerifyError::DirectoryUnavailable(crate::DirectoryError::new(error)),
                    key: Some(record.id),
                })
            }
            _ => Ok(()),
        }
    }

    /// [`enforce`](Self::enforce) as far as the limiter answers in process: all of it
    /// ([`Now::Done`]), or up to the first call it cannot answer now ([`Now::Pending`]).
    fn enforce_now(
        &self,
        record: &KeyRecord,
        owner: Option<&Owner>,
        now: usage::Micros,
        spend: Spend<'_>,
    ) -> Now {
        let inner = &*self.inner;
        let owner_limits = self.owner_limits(owner);
        let (Some(owner_charges), Some(key_charges)) = (
            Selected::new(spend, owner_limits),
            Selected::new(spend, &record.ratelimits),
        ) else {
            // More limits than fit on the stack: the allocating path.
            return Now::Pending(None);
        };
        let credits = spend.credits(record);
        if owner_charges.is_empty() && key_charges.is_empty() && credits.is_none() {
            return Now::Done(Ok(None));
        }
        if let Err(refused) = self.check_owner_limits(record, owner) {
            return Now::Done(Err(refused));
        }
        let mut left = UsageLeft::default();
        let mut statuses = [BLANK_STATUS; INLINE_CHARGES];
        if !owner_charges.is_empty() {
            let check = LimitCheck::new(
                Subject::Owner(&record.owner),
                owner_charges.charges(),
                None,
                now,
            );
            let Some(answer) = inner.limiter.check_now_into(&check, &mut statuses) else {
                return Now::Pending(None);
            };
            let statuses = statuses.get(..check.limits.len()).unwrap_or(&[]);
            match self.decided(answer, &check, record.id) {
                Err(refused) => return Now::Done(Err(refused)),
                Ok(Some(decision)) if !decision.allowed => {
                    return Now::Done(Err(self.limited(
                        &check,
                        statuses,
                        decision.credits,
                        LimitScope::Owner,
                        record.id,
                    )));
                }
                Ok(Some(decision)) => left.add(
                    &owner_charges,
                    statuses,
                    decision.credits,
                    LimitScope::Owner,
                    owner_limits,
                ),
                Ok(None) => {}
            }
        }
        if !key_charges.is_empty() || credits.is_some() {
            let check =
                LimitCheck::new(Subject::Key(record.id), key_charges.charges(), credits, now);
            let Some(answer) = inner.limiter.check_now_into(&check, &mut statuses) else {
                return Now::Pending(Some(left));
            };
            let statuses = statuses.get(..check.limits.len()).unwrap_or(&[]);
            let charged_owner = !owner_charges.is_empty();
            match self.decided(answer, &check, record.id) {
                Err(refused) if charged_owner => return Now::GiveBack(refused),
                Err(refused) => return Now::Done(Err(refused)),
                Ok(Some(decision)) if !decision.allowed => {
                    let refused = self.limited(
                        &check,
                        statuses,
                        decision.credits,
                        LimitScope::Key,
                        record.id,
                    );
                    return if charged_owner {
                        Now::GiveBack(refused)
                    } else {
                        Now::Done(Err(refused))
                    };
                }
                Ok(Some(decision)) => left.add(
                    &key_charges,
                    statuses,
                    decision.credits,
                    LimitScope::Key,
                    &record.ratelimits,
                ),
                Ok(None) => {}
            }
        }
        Now::Done(Ok(Some(left)))
    }

    /// [`enforce`](Self::enforce) through the limiter's async calls, from where
    /// [`enforce_now`](Self::enforce_now) stopped: from the start (`resume` is `None`), or
    /// after the owner's check (`resume` holds what it left).
    async fn enforce_slow(
        &self,
        record: &KeyRecord,
        owner: Option<&Owner>,
        now: usage::Micros,
        spend: Spend<'_>,
        resume: Option<UsageLeft>,
    ) -> Result<Option<UsageLeft>, Refused> {
        let owner_limits = self.owner_limits(owner);
        let owner_charges = spend.charges(owner_limits);
        let key_charges = spend.charges(&record.ratelimits);
        let credits = spend.credits(record);
        if owner_charges.is_empty() && key_charges.is_empty() && credits.is_none() {
            return Ok(None);
        }
        self.check_owner_limits(record, owner)?;
        let owner_check = LimitCheck::new(Subject::Owner(&record.owner), &owner_charges, None, now);
        let owner_done = resume.is_some();
        let mut left = resume.unwrap_or_default();
        if !owner_charges.is_empty() && !owner_done {
            match self.limit_call(&owner_check, record.id).await? {
                Some(outcome) if !outcome.allowed => {
                    return Err(self.limited(
                        &owner_check,
                        &outcome.limits,
                        outcome.credits,
                        LimitScope::Owner,
                        record.id,
                    ))
                }
                Some(outcome) => left.add_outcome(&owner_check, &outcome, LimitScope::Owner),
                None => {}
            }
        }
        if !key_charges.is_empty() || credits.is_some() {
            let key_check = LimitCheck::new(Subject::Key(record.id), &key_charges, credits, now);
            let outcome = match self.limit_call(&key_check, record.id).await {
                Ok(outcome) => outcome,
                Err(refused) => {
                    self.give_back(&owner_check).await;
                    return Err(refused);
                }
            };
            match outcome {
                Some(outcome) if !outcome.allowed => {
                    self.give_back(&owner_check).await;
                    return Err(self.limited(
                        &key_check,
                        &outcome.limits,
                        outcome.credits,
                        LimitScope::Key,
                        record.id,
                    ));
                }
                Some(outcome) => left.add_outcome(&key_check, &outcome, LimitScope::Key),
                None => {}
            }
        }
        Ok(Some(left))
    }

    /// Gives back what [`enforce_now`](Self::enforce_now) charged the owner before the
    /// key's check refused.
    async fn give_back_owner(
        &self,
        record: &KeyRecord,
        owner: Option<&Owner>,
        now: usage::Micros,
        spend: Spend<'_>,
    ) {
        let owner_charges = spend.charges(self.owner_limits(owner));
        let check = LimitCheck::new(Subject::Owner(&record.owner), &owner_charges, None, now);
        self.give_back(&check).await;
    }

    /// A limiter's in-process answer, with a failure handled per the gate's
    /// [`FailureMode`] (as [`limit_call`](Self::limit_call) does).
    fn decided(
        &self,
        answer: Result<Decision, LimiterError>,
        check: &LimitCheck<'_>,
        key: KeyId,
    ) -> Result<Option<Decision>, Refused> {
        match answer {
            Ok(decision) => Ok(Some(decision)),
            Err(error) => self.limiter_failed(error, check, key).map(|()| None),
        }
    }

    /// A failed limiter call: `Ok` (let through, with an event) when the gate fails open,
    /// else the refusal.
    fn limiter_failed(
        &self,
        error: LimiterError,
        check: &LimitCheck<'_>,
        key: KeyId,
    ) -> Result<(), Refused> {
        let inner = &*self.inner;
        match inner.limiter_failure {
            FailureMode::Open => {
                inner.limit_events.note(
                    &check.subject.to_owned_subject(),
                    LimitEvent::FailedOpen,
                    &error.to_string(),
                    check.now,
                );
                Ok(())
            }
            _ => Err(Refused {
                error: VerifyError::LimiterUnavailable(error),
                key: Some(key),
            }),
        }
    }

    /// One limiter call: at once when the limiter answers in process, else within the
    /// gate's `store_timeout`. A failure is refused per the gate's [`FailureMode`]: closed,
    /// [`VerifyError::LimiterUnavailable`]; open, `Ok(None)` (let through) and an event.
    async fn limit_call(
        &self,
        check: &LimitCheck<'_>,
        key: KeyId,
    ) -> Result<Option<LimitOutcome>, Refused> {
        let inner = &*self.inner;
        let result = match inner.limiter.check_now(check) {
            Some(result) => result,
            None => {
                let call = inner.limiter.check(check);
                match inner.store_timeout {
                    None => call.await,
                    Some(limit) => tokio::time::timeout(limit, call)
                        .await
                        .unwrap_or(Err(LimiterError::Timeout)),
                }
            }
        };
        match result {
            Ok(outcome) => Ok(Some(outcome)),
            Err(error) => self.limiter_failed(error, check, key).map(|()| None),
        }
    }

    /// Gives back an owner check that was charged before the key's check refused
    /// (best effort: a failure is logged).
    async fn give_back(&self, owner_check: &LimitCheck<'_>) {
        if owner_check.limits.is_empty() {
            return;
        }
        if let Err(error) = self.inner.limiter.refund(owner_check).await {
            tracing::warn!(target: "keygate", error = %error, "could not give back an owner's rate-limit charge");
        }
    }

    /// The refusal for a check its limiter refused, with the aggregated event: credits
    /// first when they ran out (retrying sooner cannot help), else the first limit that
    /// had no room.
    fn limited(
        &self,
        check: &LimitCheck<'_>,
        statuses: &[LimitStatus],
        credits: Option<CreditStatus>,
        scope: LimitScope,
        key: KeyId,
    ) -> Refused {
        let subject = check.subject.to_owned_subject();
        if let (Some(status), Some(spend)) = (credits, check.credits) {
            if !status.allowed {
                self.inner.limit_events.note(
                    &subject,
                    LimitEvent::CreditsExhausted,
                    "credits",
                    check.now,
                );
                let retry_after = status.next_refill.and_then(|at| {
                    u64::try_from(at.saturating_sub(check.now))
                        .ok()
                        .map(Duration::from_micros)
                });
                return Refused {
                    error: VerifyError::CreditsExhausted(Box::new(CreditsExhausted {
                        remaining: status.remaining,
                        cost: spend.cost,
                        retry_after,
                    })),
                    key: Some(key),
                };
            }
        }
        let refusing = check
            .limits
            .iter()
            .zip(statuses)
            .find(|(_, status)| !status.allowed);
        match refusing {
            Some((charge, status)) => {
                self.inner.limit_events.note(
                    &subject,
                    LimitEvent::RateLimited,
                    &charge.limit.name,
                    check.now,
                );
                Refused {
                    error: VerifyError::RateLimited(Box::new(RateLimited {
                        limit: report(charge.limit, status, scope),
                        retry_after: status.retry_after_us.map(Duration::from_micros),
                        cost: charge.cost,
                    })),
                    key: Some(key),
                }
            }
            // A limiter that refused without saying why: fail closed.
            None => Refused {
                error: VerifyError::LimiterUnavailable(LimiterError::Corrupt(
                    "the limiter refused without a refusing limit".into(),
                )),
                key: Some(key),
            },
        }
    }

    /// Charges `cost` units against the rate limits named `limit` of `principal`'s key and
    /// of its owner (shared by the owner's keys), after verify: per token, per byte, per
    /// row. Auto-applied or not, every limit with that name is charged, the owner's first,
    /// each subject all-or-nothing; a key or owner without a limit of that name is not
    /// limited by it. Uses the limits the key had when it was verified.
    ///
    /// ```
    /// use keygate::limits::RateLimit;
    /// use keygate::{Keygate, MemoryStore, NewKey, Pepper, VerifyError};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let gate = Keygate::builder(MemoryStore::new(), Pepper::new(1, [7u8; 32])?).build()?;
    /// let tokens = RateLimit::new("tokens", 1000, 60_000).manual(); // 1000 tokens a minute
    /// let issued = gate.mint(NewKey::new("llm client", "user-1").ratelimits([tokens])).await?;
    ///
    /// let principal = gate.verify(issued.key.expose()).await?;
    /// gate.charge(&principal, "tokens", 800).await?; // after generating 800 tokens
    /// let refused = gate.charge(&principal, "tokens", 250).await.unwrap_err();
    /// assert!(matches!(refused, VerifyError::RateLimited(_)));
    /// assert_eq!(refused.http("api").status, 429);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`VerifyError::RateLimited`] when a limit has no room (nothing is charged to that
    /// subject, and an owner charge already made is given back);
    /// [`VerifyError::LimiterUnavailable`] when the limiter fails and the gate fails closed.
    pub async fn charge(
        &self,
        principal: &Principal,
        limit: &str,
        cost: u64,
    ) -> Result<Allowance, VerifyError> {
        let now = self.inner.clock.now_micros();
        let (record, owner) = (principal.record(), principal.owner());
        self.enforce(record, owner, now, Spend::Limit(limit, cost))
            .await
            .map(|left| self.allowance(left, record, owner))
            .map_err(|refused| self.refuse(refused))
    }

    /// Spends `cost` more credits of `principal`'s key (verify spent one already), after
    /// verify: for requests that cost more than one use. A key without credits is not
    /// limited.
    ///
    /// # Errors
    ///
    /// [`VerifyError::CreditsExhausted`] when fewer than `cost` are left (none are spent);
    /// [`VerifyError::LimiterUnavailable`] when the limiter fails and the gate fails closed.
    pub async fn spend_credits(
        &self,
        principal: &Principal,
        cost: u64,
    ) -> Result<Allowance, VerifyError> {
        let now = self.inner.clock.now_micros();
        let (record, owner) = (principal.record(), principal.owner());
        self.enforce(record, owner, now, Spend::Credits(cost))
            .await
            .map(|left| self.allowance(left, record, owner))
            .map_err(|refused| self.refuse(refused))
    }

    /// What `left` reports, as an [`Allowance`] (empty for `None`).
    fn allowance(
        &self,
        left: Option<UsageLeft>,
        record: &KeyRecord,
        owner: Option<&Owner>,
    ) -> Allowance {
        left.map(|left| left.allowance(&record.ratelimits, self.owner_limits(owner)))
            .unwrap_or_default()
    }

    /// The credits `record`'s key has left now (refills applied), read from the limiter
    /// without spending: `None` for a key without credits. For key views.
    ///
    /// # Errors
    ///
    /// [`LimiterError`] when the limiter cannot be read.
    pub async fn credits_remaining(&self, record: &KeyRecord) -> Result<Option<u64>, LimiterError> {
        let Some(policy) = &record.credits else {
            return Ok(None);
        };
        let now = self.inner.clock.now_micros();
        self.inner
            .limiter
            .credits(record.id, policy, now)
            .await
            .map(Some)
    }
}

/// What an [`enforce`](Keygate::enforce) call spends.
#[derive(Clone, Copy)]
enum Spend<'a> {
    /// A verify: 1 of every auto-applied limit and 1 credit.
    Verify,
    /// [`Keygate::charge`]: `cost` of every limit with this name.
    Limit(&'a str, u64),
    /// [`Keygate::spend_credits`]: `cost` credits, no limit.
    Credits(u64),
}

impl Spend<'_> {
    /// The charge this spend makes of `limit`, if any.
    fn charge<'l>(&self, limit: &'l RateLimit) -> Option<Charge<'l>> {
        match *self {
            Spend::Verify => limit.auto_apply.then(|| Charge::new(limit, 1)),
            Spend::Limit(name, cost) => (limit.name == name).then(|| Charge::new(limit, cost)),
            Spend::Credits(_) => None,
        }
    }

    fn charges<'l>(&self, limits: &'l [RateLimit]) -> Vec<Charge<'l>> {
        limits.iter().filter_map(|l| self.charge(l)).collect()
    }

    /// The credits this spend uses of `record`'s key.
    fn credits<'r>(&self, record: &'r KeyRecord) -> Option<CreditSpend<'r>> {
        match (&record.credits, *self) {
            (Some(policy), Spend::Verify) => Some(CreditSpend::new(policy, 1)),
            (Some(policy), Spend::Credits(cost)) => Some(CreditSpend::new(policy, cost)),
            _ => None,
        }
    }
}
/// Where [`Keygate::check_fast`] stopped.
enum Fast<'t> {
    /// Decided.
    Done(Result<Principal, Refused>),
    /// The record was read and the key checked; the rest waits.
    Step(Step),
    /// The store must be read for this opaque key (nothing else was done but parsing).
    Opaque {
        key: OpaqueKey<'t>,
        now: usage::Micros,
    },
    /// The store must be read for this verified JWT.
    Jwt {
        claims: VerifiedJwt<'t>,
        now: usage::Micros,
    },
}

impl Fast<'_> {
    fn step(step: Result<Step, Refused>) -> Self {
        match step {
            Ok(Step::Done(principal)) => Fast::Done(Ok(principal)),
            Ok(step) => Fast::Step(step),
            Err(refused) => Fast::Done(Err(refused)),
        }
    }
}

/// Where [`Keygate::accept_now`] stopped.
enum Step {
    Done(Principal),
    /// The directory must be asked for the owner.
    Owner(Accepted),
    /// The limiter must be awaited.
    Limits(Accepted, LimitWait),
}

/// Where [`Keygate::after_owner`] stopped.
enum AfterOwner {
    Done(Principal),
    Wait(Accepted, LimitWait),
}

/// What the limiter left to await.
enum LimitWait {
    /// Its checks, from the start (`None`) or after the owner's ([`Now::Pending`]).
    Limits(Option<UsageLeft>),
    /// Giving back the owner's charge, before refusing ([`Now::GiveBack`]).
    GiveBack(Refused),
}

/// A key whose token and record checked out, on its way to a [`Principal`].
struct Accepted {
    record: Arc<KeyRecord>,
    owner: Option<Arc<Owner>>,
    now: usage::Micros,
    rehash: Option<SecretHash>,
    token_exp: Option<usage::Micros>,
}

/// Where [`Keygate::enforce_now`] stopped.
enum Now {
    /// Decided in process, all of it.
    Done(Result<Option<UsageLeft>, Refused>),
    /// The key's check refused after the owner's was charged: give that back, then refuse.
    GiveBack(Refused),
    /// The limiter must be awaited: from the start (`None`), or after the owner's check.
    Pending(Option<UsageLeft>),
}

/// A status to fill the caller's buffer with before a limiter writes to it.
const BLANK_STATUS: LimitStatus = LimitStatus {
    allowed: false,
    remaining: 0,
    reset_after_us: 0,
    retry_after_us: None,
};

/// What fills the unused slots of a [`Selected`]; never charged.
static UNUSED: RateLimit = RateLimit {
    name: String::new(),
    limit: 1,
    duration: 1,
    auto_apply: false,
    burst: None,
};

/// Charges [`Keygate::enforce_now`] handles on the stack per subject: more (a key may have
/// up to [`MAX_RATELIMITS`](limits::MAX_RATELIMITS)) take the allocating path. Small, so
/// that the buffers cost little to fill and move.
const INLINE_CHARGES: usize = 2;

/// The charges of one [`LimitCheck`] picked from a list of limits, on the stack, with each
/// one's position in the list.
struct Selected<'l> {
    charges: [Charge<'l>; INLINE_CHARGES],
    index: [u8; INLINE_CHARGES],
    len: usize,
}

impl<'l> Selected<'l> {
    /// The charges `spend` makes of `limits`; `None` when there are more than fit.
    fn new(spend: Spend<'_>, limits: &'l [RateLimit]) -> Option<Self> {
        let mut selected = Self {
            charges: [Charge::new(&UNUSED, 0); INLINE_CHARGES],
            index: [0; INLINE_CHARGES],
            len: 0,
        };
        for (i, limit) in limits.iter().enumerate() {
            if let Some(charge) = spend.charge(limit) {
                *selected.charges.get_mut(selected.len)? = charge;
                *selected.index.get_mut(selected.len)? = u8::try_from(i).ok()?;
                selected.len = selected.len.checked_add(1)?;
            }
        }
        Some(selected)
    }

    fn charges(&self) -> &[Charge<'l>] {
        self.charges.get(..self.len).unwrap_or(&[])
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Reports kept without rendering them: enough for a key's and its owner's usual limit.
const INLINE_REPORTS: usize = 2;

/// What an allowed [`enforce`](Keygate::enforce) left: per limit charged, which it is and
/// how it stands, and the credits. Rendered as an [`Allowance`] (which allocates: names,
/// a vector) only when someone reads it ([`Principal::allowance`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct UsageLeft {
    raw: [RawReport; INLINE_REPORTS],
    raw_len: usize,
    /// Reports past the inline ones (or from the limiter's async path), rendered at once;
    /// they come after every inline one.
    more: Vec<LimitReport>,
    credits: Option<u64>,
}

/// One charged limit: its position in the owner's or the key's list, and its status.
#[derive(Debug, Clone, Copy, Default)]
struct RawReport {
    owner: bool,
    index: u8,
    remaining: u64,
    reset_after_us: u64,
}

impl UsageLeft {
    /// Adds an allowed in-process check: `statuses` are those of `selected`'s charges,
    /// picked from `list`.
    fn add(
        &mut self,
        selected: &Selected<'_>,
        statuses: &[LimitStatus],
        credits: Option<CreditStatus>,
        scope: LimitScope,
        list: &[RateLimit],
    ) {
        for (index, status) in selected.index.iter().zip(statuses).take(selected.len) {
            let raw = RawReport {
                owner: scope == LimitScope::Owner,
                index: *index,
                remaining: status.remaining,
                reset_after_us: status.reset_after_us,
            };
            match self.raw.get_mut(self.raw_len) {
                Some(slot) if self.more.is_empty() => {
                    *slot = raw;
                    self.raw_len = self.raw_len.saturating_add(1);
                }
                _ => {
                    if let Some(limit) = list.get(usize::from(*index)) {
                        self.more.push(report(limit, status, scope));
                    }
                }
            }
        }
        if let Some(credits) = credits {
            self.credits = Some(credits.remaining);
        }
    }

    /// Adds an allowed check the limiter answered asynchronously.
    fn add_outcome(&mut self, check: &LimitCheck<'_>, outcome: &LimitOutcome, scope: LimitScope) {
        for (charge, status) in check.limits.iter().zip(&outcome.limits) {
            self.more.push(report(charge.limit, status, scope));
        }
        if let Some(credits) = outcome.credits {
            self.credits = Some(credits.remaining);
        }
    }

    /// Whether any report is of an owner's limit.
    pub(crate) fn has_owner_reports(&self) -> bool {
        self.raw.iter().take(self.raw_len).any(|raw| raw.owner)
            || self.more.iter().any(|r| r.scope == LimitScope::Owner)
    }

    /// Rendered, with the key's limits `key` and the owner's `owner` (the lists the
    /// charges were picked from).
    pub(crate) fn allowance(&self, key: &[RateLimit], owner: &[RateLimit]) -> Allowance {
        let mut limits = Vec::with_capacity(self.raw_len.saturating_add(self.more.len()));
        for raw in self.raw.iter().take(self.raw_len) {
            let (list, scope) = if raw.owner {
                (owner, LimitScope::Owner)
            } else {
                (key, LimitScope::Key)
            };
            if let Some(limit) = list.get(usize::from(raw.index)) {
                let status = LimitStatus::new(true, raw.remaining, raw.reset_after_us, None);
                limits.push(report(limit, &status, scope));
            }
        }
        limits.extend(self.more.iter().cloned());
        Allowance {
            limits,
            credits: self.credits,
        }
    }
}

/// How `limit` stands after a check, for headers and refusals.
fn report(limit: &RateLimit, status: &LimitStatus, scope: LimitScope) -> LimitReport {
    LimitReport {
        name: limit.name.clone(),
        scope,
        limit: limit.limit,
        window: limit.window(),
        remaining: status.remaining,
        reset_after: Duration::from_micros(status.reset_after_us),
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
