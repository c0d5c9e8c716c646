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
use crate::key::{self, KeyFormat, KeyId, OpaqueKey};
use crate::limits::events::LimitEvent;
use crate::limits::{
    self, Allowance, Charge, CreditSpend, CreditsExhausted, FailureMode, LimitCheck, LimitOutcome,
    LimitReport, LimitScope, LimitStatus, LimiterError, RateLimit, RateLimited, Subject,
};
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
        let settle = {
            let refused = match http::bearer_token(values) {
                Ok(token) => match self.check(token).await {
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
    /// cannot trust. [`VerifyError::http`] maps each to its HTTP answer.
    pub async fn verify(&self, token: &str) -> Result<Principal, VerifyError> {
        let settle = {
            let refused = match self.check(token).await {
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

    async fn check(&self, token: &str) -> Result<Principal, Refused> {
        let inner = &*self.inner;
        let now = inner.clock.now_micros();
        // Opaque keys (a `[a-z0-9]` prefix, `_`, base62) have no `.`; JWTs do.
        if token.as_bytes().contains(&b'.') {
            return self.check_jwt(token, now).await;
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
            (Some(record), Some(rehash)) => self.accept(record, now, rehash?, None).await,
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
    async fn check_jwt(&self, token: &str, now: usage::Micros) -> Result<Principal, Refused> {
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
        self.accept(record, now, rehash, claims.exp).await
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
        // Usage limits last: a refused or bad key never consumes anything.
        let allowance = self
            .enforce(&record, owner.as_deref(), now, Spend::Verify)
            .await?;
        if inner.usage.mark(record.id, now, rehash) {
            usage::spawn_flush(inner.usage.clone(), inner.store.clone(), now);
        }
        Ok(Principal::new(record, owner, now, token_exp, inner.id).with_allowance(allowance))
    }

    /// The owner's shared limits, then the key's own limits and credits, each one
    /// all-or-nothing [`Limiter`] call, for `spend`. `Ok(None)`: nothing to limit. A key
    /// refused after its owner's limits were charged gives the owner's charge back.
    async fn enforce(
        &self,
        record: &KeyRecord,
        owner: Option<&Owner>,
        now: usage::Micros,
        spend: Spend<'_>,
    ) -> Result<Option<Allowance>, Refused> {
        let inner = &*self.inner;
        let owner_limits: &[RateLimit] = owner
            .and_then(|o| o.ratelimits.as_deref())
            .unwrap_or(&inner.owner_ratelimits);
        let owner_charges = spend.charges(owner_limits);
        let key_charges = spend.charges(&record.ratelimits);
        let credits = match (&record.credits, spend) {
            (Some(policy), Spend::Verify) => Some(CreditSpend::new(policy, 1)),
            (Some(policy), Spend::Credits(cost)) => Some(CreditSpend::new(policy, cost)),
            _ => None,
        };
        if owner_charges.is_empty() && key_charges.is_empty() && credits.is_none() {
            return Ok(None);
        }
        if owner.is_some_and(|o| o.ratelimits.is_some())
            && limits::validate_ratelimits(owner_limits).is_err()
        {
            // The directory answered limits keygate cannot apply: refuse, never ignore.
            let error = std::io::Error::other("the user directory gave invalid owner rate limits");
            return Err(Refused {
                error: VerifyError::DirectoryUnavailable(crate::DirectoryError::new(error)),
                key: Some(record.id),
            });
        }
        let mut allowance = Allowance::default();
        let owner_check = LimitCheck::new(Subject::Owner(&record.owner), &owner_charges, None, now);
        if !owner_charges.is_empty() {
            match self.limit_call(&owner_check, record.id).await? {
                Some(outcome) if !outcome.allowed => {
                    return Err(self.limited(&owner_check, &outcome, LimitScope::Owner, record.id))
                }
                Some(outcome) => report(&mut allowance, &owner_check, &outcome, LimitScope::Owner),
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
                    return Err(self.limited(&key_check, &outcome, LimitScope::Key, record.id));
                }
                Some(outcome) => report(&mut allowance, &key_check, &outcome, LimitScope::Key),
                None => {}
            }
        }
        Ok(Some(allowance))
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
            Err(error) => match inner.limiter_failure {
                FailureMode::Open => {
                    inner.limit_events.note(
                        &check.subject.to_owned_subject(),
                        LimitEvent::FailedOpen,
                        &error.to_string(),
                        check.now,
                    );
                    Ok(None)
                }
                _ => Err(Refused {
                    error: VerifyError::LimiterUnavailable(error),
                    key: Some(key),
                }),
            },
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
        outcome: &LimitOutcome,
        scope: LimitScope,
        key: KeyId,
    ) -> Refused {
        let subject = check.subject.to_owned_subject();
        if let (Some(status), Some(spend)) = (outcome.credits, check.credits) {
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
            .zip(&outcome.limits)
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
                        limit: limit_report(charge, status, scope),
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
        self.enforce(
            principal.record(),
            principal.owner(),
            now,
            Spend::Limit(limit, cost),
        )
        .await
        .map(Option::unwrap_or_default)
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
        self.enforce(
            principal.record(),
            principal.owner(),
            now,
            Spend::Credits(cost),
        )
        .await
        .map(Option::unwrap_or_default)
        .map_err(|refused| self.refuse(refused))
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
    fn charges<'l>(&self, limits: &'l [RateLimit]) -> Vec<Charge<'l>> {
        match *self {
            Spend::Verify => limits
                .iter()
                .filter(|l| l.auto_apply)
                .map(|l| Charge::new(l, 1))
                .collect(),
            Spend::Limit(name, cost) => limits
                .iter()
                .filter(|l| l.name == name)
                .map(|l| Charge::new(l, cost))
                .collect(),
            Spend::Credits(_) => Vec::new(),
        }
    }
}

/// Adds an allowed check's limits and credits to `allowance`.
fn report(
    allowance: &mut Allowance,
    check: &LimitCheck<'_>,
    outcome: &LimitOutcome,
    scope: LimitScope,
) {
    for (charge, status) in check.limits.iter().zip(&outcome.limits) {
        allowance.limits.push(limit_report(charge, status, scope));
    }
    if let Some(credits) = outcome.credits {
        allowance.credits = Some(credits.remaining);
    }
}

fn limit_report(charge: &Charge<'_>, status: &LimitStatus, scope: LimitScope) -> LimitReport {
    LimitReport {
        name: charge.limit.name.clone(),
        scope,
        limit: charge.limit.limit,
        window: charge.limit.window(),
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
