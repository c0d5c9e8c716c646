//! [`KeygateBuilder`]: a [`Keygate`]'s configuration, checked once at build.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::BuildError;
use crate::gate::{Inner, Keygate};
use crate::hash::Pepper;
use crate::http::TrustedProxies;
use crate::jwt::JwtSecret;
use crate::key;
use crate::limits::events::LimitEvents;
use crate::limits::{FailureMode, Limiter, MemoryLimiter, RateLimit};
use crate::refusals::Refusals;

/// The id of the next gate built in this process: a [`Principal`](crate::Principal) remembers
/// the gate that verified it, so another gate's admin API does not take it.
static NEXT_GATE_ID: AtomicU64 = AtomicU64::new(1);
use crate::store::KeyStore;
use crate::usage::Usage;
use crate::user::UserDirectory;

impl Keygate {
    /// Starts configuring a gate over `store`, hashing keys at rest under `pepper`.
    ///
    /// To keep a handle to the store (to read a [`CachedStore`](crate::CachedStore)'s
    /// stats, say), pass an `Arc` of it and keep a clone: `Arc<S>` and `Arc<dyn KeyStore>`
    /// are key stores too.
    pub fn builder(store: impl KeyStore, pepper: Pepper) -> KeygateBuilder {
        KeygateBuilder {
            store: Arc::new(store),
            prefix: "key".to_owned(),
            pepper,
            jwt: None,
            users: None,
            clock: Arc::new(SystemClock),
            last_used_interval: Duration::from_secs(60),
            store_timeout: None,
            realm: "api".to_owned(),
            refusal_log_interval: Duration::from_secs(1),
            trusted_proxies: TrustedProxies::default(),
            limiter: None,
            limiter_failure: FailureMode::Closed,
            owner_ratelimits: Vec::new(),
            limit_event_interval: Duration::from_secs(60),
        }
    }
}

/// Configures a [`Keygate`]; start with [`Keygate::builder`].
pub struct KeygateBuilder {
    store: Arc<dyn KeyStore>,
    prefix: String,
    pepper: Pepper,
    jwt: Option<JwtSecret>,
    users: Option<Arc<dyn UserDirectory>>,
    clock: Arc<dyn Clock>,
    last_used_interval: Duration,
    store_timeout: Option<Duration>,
    realm: String,
    refusal_log_interval: Duration,
    trusted_proxies: TrustedProxies,
    limiter: Option<Arc<dyn Limiter>>,
    limiter_failure: FailureMode,
    owner_ratelimits: Vec<RateLimit>,
    limit_event_interval: Duration,
}

impl KeygateBuilder {
    /// The prefix of opaque keys, `[a-z][a-z0-9]{0,15}` (default `"key"`): keys look like
    /// `<prefix>_…`. Pick one per application so scanners can tell whose key leaked.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Enables JWT-format keys signed with `secret` (Audiobookshelf's `TokenSecret`,
    /// checked by [`JwtSecret::new`]).
    pub fn jwt_secret(mut self, secret: JwtSecret) -> Self {
        self.jwt = Some(secret);
        self
    }

    /// The directory that says whether a key's owner exists and is active, and what they
    /// may do. Without one every owner counts as active with all permissions, so only a
    /// key's scopes restrict it.
    pub fn users(mut self, users: impl UserDirectory) -> Self {
        self.users = Some(Arc::new(users));
        self
    }

    /// The clock (default [`SystemClock`]). To keep a handle to it (a [`ManualClock`] in
    /// tests), pass an `Arc` and keep a clone: `Arc<C>` is a [`Clock`] too.
    ///
    /// [`ManualClock`]: crate::ManualClock
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// How often at most a key's `last_used_at` is written (default 60 s). Also the spacing
    /// of background flushes, so the store sees at most one last-used batch per interval.
    pub fn last_used_interval(mut self, interval: Duration) -> Self {
        self.last_used_interval = interval;
        self
    }

    /// Gives up on a verify's store lookup after `timeout` and answers
    /// [`VerifyError::StoreUnavailable`](crate::VerifyError::StoreUnavailable) with [`StoreError::Timeout`](crate::StoreError::Timeout)
    /// (HTTP 503), instead of holding the request while the store hangs. Off by default;
    /// needs a Tokio runtime with its timer enabled (`#[tokio::main]`, axum and actix-web
    /// all have one).
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = Some(timeout);
        self
    }

    /// The least time between two log events of the same refusal reason (default 1 s, by
    /// the gate's [`clock`](Self::clock)); refusals in between are only counted, and the
    /// next event carries how many were `suppressed`. `Duration::ZERO` logs every refusal.
    /// All refusals are counted in [`Keygate::refusal_counts`].
    pub fn refusal_log_interval(mut self, interval: Duration) -> Self {
        self.refusal_log_interval = interval;
        self
    }

    /// The realm named in `WWW-Authenticate` challenges (default `"api"`). Characters that
    /// cannot appear in a quoted string are dropped.
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.realm = realm.into();
        self
    }

    /// The reverse proxies in front of the application, whose `X-Forwarded-For` (or
    /// `Forwarded`) header gives the client address of the requests they forward (see
    /// [`TrustedProxies`]). None by default: the client address is the connection's peer,
    /// and forwarding headers, which any client can send, are ignored. Only matters for
    /// keys with allowed networks ([`NetworkPolicy`](crate::limits::NetworkPolicy)).
    ///
    /// ```
    /// use keygate::http::{ProxyHeader, TrustedProxies};
    /// use keygate::{Keygate, MemoryStore, Pepper};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let gate = Keygate::builder(MemoryStore::new(), Pepper::new(1, [7u8; 32])?)
    ///     .trusted_proxies(TrustedProxies::new(["10.0.0.0/8".parse()?]).header(ProxyHeader::XForwardedFor))
    ///     .build()?;
    /// # let _ = gate; Ok(()) }
    /// ```
    pub fn trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.trusted_proxies = proxies;
        self
    }

    /// Where rate-limit and credit state lives (default: a [`MemoryLimiter`] of this gate).
    /// Pass an `Arc` and keep a clone to share one limiter between gates. For rate limits
    /// decided in process and synced to a store limiter in the background, pass a
    /// [`LocalFirst`](crate::limits::LocalFirst) (and keep a clone to
    /// [`shutdown`](crate::limits::LocalFirst::shutdown) it). See [`crate::limits`].
    pub fn limiter(mut self, limiter: impl Limiter) -> Self {
        self.limiter = Some(Arc::new(limiter));
        self
    }

    /// What a request gets when the limiter fails (default [`FailureMode::Closed`]: 503).
    pub fn limiter_failure(mut self, mode: FailureMode) -> Self {
        self.limiter_failure = mode;
        self
    }

    /// Rate limits every owner's keys share, for owners whose
    /// [`Owner::ratelimits`](crate::Owner::ratelimits) is `None` (and every owner on a gate
    /// without a directory). Checked at [`build`](Self::build).
    ///
    /// ```
    /// use keygate::limits::RateLimit;
    /// use keygate::{Keygate, MemoryStore, Pepper};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let gate = Keygate::builder(MemoryStore::new(), Pepper::new(1, [7u8; 32])?)
    ///     .owner_ratelimits([RateLimit::new("requests", 10_000, 3_600_000)])
    ///     .build()?;
    /// # let _ = gate; Ok(()) }
    /// ```
    pub fn owner_ratelimits(mut self, limits: impl IntoIterator<Item = RateLimit>) -> Self {
        self.owner_ratelimits = limits.into_iter().collect();
        self
    }

    /// The least time between two events about the same key (or owner) hitting a limit,
    /// running out of credits or passing unlimited when the limiter fails open (default
    /// 60 s); each event carries how many refusals the previous interval held.
    pub fn limit_event_interval(mut self, interval: Duration) -> Self {
        self.limit_event_interval = interval;
        self
    }

    /// Checks the configuration and builds the gate.
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidPrefix`] for a prefix that is not `[a-z][a-z0-9]{0,15}`;
    /// [`BuildError::InvalidRateLimits`] for [`owner_ratelimits`](Self::owner_ratelimits)
    /// that fail [`validate_ratelimits`](crate::limits::validate_ratelimits).
    pub fn build(self) -> Result<Keygate, BuildError> {
        key::validate_prefix(&self.prefix)?;
        crate::limits::validate_ratelimits(&self.owner_ratelimits).map_err(|e| match e {
            crate::Error::InvalidInput { reason, .. } => BuildError::InvalidRateLimits(reason),
            _ => BuildError::InvalidRateLimits("invalid"),
        })?;
        let interval = i64::try_from(self.last_used_interval.as_micros()).unwrap_or(i64::MAX);
        Ok(Keygate {
            inner: Arc::new(Inner {
                id: NEXT_GATE_ID.fetch_add(1, Ordering::Relaxed),
                store: self.store,
                prefix: self.prefix,
                pepper: self.pepper,
                jwt: self.jwt,
                users: self.users,
                clock: self.clock,
                usage: Arc::new(Usage::new(interval)),
                store_timeout: self.store_timeout,
                realm: self.realm,
                refusals: Refusals::new(
                    i64::try_from(self.refusal_log_interval.as_micros()).unwrap_or(i64::MAX),
                ),
                pepper_check: tokio::sync::OnceCell::new(),
                trusted_proxies: self.trusted_proxies,
                limiter: self
                    .limiter
                    .unwrap_or_else(|| Arc::new(MemoryLimiter::new())),
                limiter_failure: self.limiter_failure,
                owner_ratelimits: self.owner_ratelimits.into(),
                limit_events: LimitEvents::new(
                    i64::try_from(self.limit_event_interval.as_micros()).unwrap_or(i64::MAX),
                ),
            }),
        })
    }
}

impl fmt::Debug for KeygateBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeygateBuilder")
            .field("prefix", &self.prefix)
            .field("pepper", &self.pepper)
            .field("jwt", &self.jwt.as_ref().map(|_| "[redacted]"))
            .field("users", &self.users.is_some())
            .field("last_used_interval", &self.last_used_interval)
            .field("store_timeout", &self.store_timeout)
            .field("refusal_log_interval", &self.refusal_log_interval)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("limiter", &self.limiter.is_some())
            .field("limiter_failure", &self.limiter_failure)
            .field("owner_ratelimits", &self.owner_ratelimits)
            .finish_non_exhaustive()
    }
}
