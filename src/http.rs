//! Framework-free HTTP: reading `Authorization: Bearer` headers and turning a
//! [`VerifyError`] into a status, headers and body (RFC 6750 §3).
//!
//! | outcome | status | headers |
//! |---|---|---|
//! | no credentials | 401 | `WWW-Authenticate: Bearer realm="…"` |
//! | malformed header (two headers, bad syntax, oversize) | 400 | `… error="invalid_request"` |
//! | bad, unknown, expired, revoked key; inactive owner | 401 | `… error="invalid_token"` |
//! | valid key lacking a permission or scope | 403 | `… error="insufficient_scope"` |
//! | rate limit hit | 429 | `Retry-After`, `RateLimit-Policy`, `RateLimit`; never 401 |
//! | credits exhausted | 429 | `Retry-After` (until the next refill, if any), `RateLimit-Policy`, `RateLimit` |
//! | store, directory or limiter unavailable | 503 | `Retry-After` |
//! | store returned a corrupt record | 500 | none: retrying does not help |
//!
//! Every invalid-key reason gets the same body; the reason goes to logs only.
//!
//! # Rate-limit headers
//!
//! The `RateLimit-Policy` and `RateLimit` fields follow
//! [draft-ietf-httpapi-ratelimit-headers](https://datatracker.ietf.org/doc/draft-ietf-httpapi-ratelimit-headers/)
//! (revisions 08 to 11: structured-field lists of named policies). A rate limit `requests`
//! of 100 per minute that refused a request renders as
//!
//! ```text
//! HTTP/1.1 429 Too Many Requests
//! Retry-After: 1
//! RateLimit-Policy: "requests";q=100;w=60
//! RateLimit: "requests";r=0;t=60
//! ```
//!
//! `q` is the limit, `w` its window in seconds (rounded up), `r` the units left and `t` the
//! seconds until the limit is full again (rounded up). An owner's shared limit is named
//! `"owner-<name>"`. Credits render as the policy `"credits"` (`q` = the refill amount, or
//! the starting count) with `r` = credits left and, when refilled, `t` = seconds to the next
//! refill. Successful responses can carry the same two fields for what verify left
//! ([`allowance_headers`]; the [`Authenticate`] layer and middleware add them with
//! [`Authenticate::allowance_headers`]).
//!
//! # One error shape
//!
//! Every error keygate answers over HTTP, from the extractors, guards and middleware and
//! from the [admin API](crate::admin) alike, is a JSON object in the style of RFC 6750
//! §3.1:
//!
//! ```json
//! {"error": "insufficient_scope", "error_description": "The API key lacks the required permission"}
//! ```
//!
//! `error` is a stable code to branch on, `error_description` a sentence for people (it may
//! change). Some answers add members: the admin API's refusals carry `reason`
//! (`not_admin`, `owner_out_of_reach`, `wider_permissions`, `longer_lifetime`). The codes:
//!
//! | `error` | status | when |
//! |---|---|---|
//! | `unauthorized` | 401 | no bearer credentials |
//! | `invalid_request` | 400 | malformed `Authorization` header; admin API: a body or query it cannot accept (bad JSON, an unknown field, a bad value; the description names the field) |
//! | `invalid_token` | 401 | bad, unknown, expired or revoked key; inactive owner |
//! | `insufficient_scope` | 403 | a permission or scope is missing; the admin API's refusals (with `reason`) |
//! | `not_found` | 404 | admin API: no such key, or no such route |
//! | `method_not_allowed` | 405 | admin API: the route does not take this method (`Allow` lists those it does) |
//! | `conflict` | 409 | admin API: the change conflicts with the stored state |
//! | `payload_too_large` | 413 | admin API: the body exceeds the framework's limit |
//! | `rate_limited` | 429 | a rate limit of the key or its owner has no room (`Retry-After`, `RateLimit`) |
//! | `credits_exhausted` | 429 | the key's usage credits are used up (`Retry-After` when refilled) |
//! | `server_error` | 500 | a corrupt stored record; no gate configured (actix) |
//! | `temporarily_unavailable` | 503 | store, directory or limiter unavailable (`Retry-After`) |
//!
//! The challenge names the gate's realm ([`KeygateBuilder::realm`](crate::KeygateBuilder::realm)):
//! always in the extractors, guards, middleware and admin API; for a `VerifyError` a
//! handler returns (`principal.require("x")?`) when an `Authenticate` layer or middleware
//! of the gate surrounds the handler (otherwise the default realm `"api"`).

use std::fmt;
#[cfg(any(feature = "axum", feature = "actix"))]
use std::marker::PhantomData;
use std::time::Duration;

use crate::limits::{Allowance, LimitReport, LimitScope};

use crate::error::{RequestError, VerifyError};
use crate::gate::Keygate;
#[cfg(any(feature = "axum", feature = "actix"))]
use crate::principal::{Permission, Principal};

/// Longest `Authorization` header value read; longer is refused before any crypto.
pub const MAX_HEADER_LEN: usize = 8192 + 64;

/// The realm a [`VerifyError`] names when rendered with no gate at hand (and a gate's
/// default, see [`KeygateBuilder::realm`](crate::KeygateBuilder::realm)).
pub(crate) const DEFAULT_REALM: &str = "api";

/// Seconds suggested in `Retry-After` when the store is unavailable.
pub const RETRY_AFTER_SECS: u32 = 5;

/// Picks the bearer token out of a request's `Authorization` header values.
///
/// Exactly one header is allowed; the scheme matches case-insensitively and one or more
/// spaces may follow it; the token must be RFC 6750 `b64token` characters.
///
/// ```
/// use keygate::{http::bearer_token, RequestError, VerifyError};
///
/// assert_eq!(bearer_token([&b"bEaReR   abc.def"[..]]).unwrap(), "abc.def");
/// assert!(matches!(bearer_token(std::iter::empty()), Err(VerifyError::MissingCredentials)));
/// assert!(matches!(
///     bearer_token([&b"Bearer a"[..], &b"Bearer b"[..]]),
///     Err(VerifyError::InvalidRequest(RequestError::MultipleHeaders))
/// ));
/// ```
///
/// # Errors
///
/// [`VerifyError::MissingCredentials`] without an `Authorization` header or with another
/// scheme; [`VerifyError::InvalidRequest`] for two headers or an unreadable one.
pub fn bearer_token<'a, I>(values: I) -> Result<&'a str, VerifyError>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut values = values.into_iter();
    let first = values.next().ok_or(VerifyError::MissingCredentials)?;
    if values.next().is_some() {
        return Err(VerifyError::InvalidRequest(RequestError::MultipleHeaders));
    }
    parse_authorization(first)
}

/// Reads one `Authorization` header value as `Bearer <token>`.
///
/// Another scheme (`Basic …`) counts as no bearer credentials (401 with a bare challenge);
/// a header that is there but unreadable is [`VerifyError::InvalidRequest`] (400).
///
/// # Errors
///
/// [`VerifyError::MissingCredentials`] for another scheme; [`VerifyError::InvalidRequest`]
/// for an oversize value, characters outside printable ASCII, or a token that is not a
/// `b64token`.
pub fn parse_authorization(value: &[u8]) -> Result<&str, VerifyError> {
    let bad = |e| Err(VerifyError::InvalidRequest(e));
    if value.len() > MAX_HEADER_LEN {
        return bad(RequestError::Oversize);
    }
    // Folded without an early exit, so that the compiler checks many bytes at once.
    if !value
        .iter()
        .fold(true, |ok, b| ok & (0x20..0x7f).contains(b))
    {
        return bad(RequestError::InvalidCharacters);
    }
    // Printable ASCII is UTF-8, so the `else` is never taken.
    let Ok(value) = std::str::from_utf8(value) else {
        return bad(RequestError::InvalidCharacters);
    };
    let value = value.trim_matches(' ');
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(VerifyError::MissingCredentials);
    }
    let token = rest.trim_start_matches(' ');
    if !is_b64token(token) {
        return bad(RequestError::MalformedBearer);
    }
    Ok(token)
}

/// RFC 6750 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty() && body.bytes().fold(true, |ok, b| ok & is_b64_char(b))
}

/// `ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/"`, without branches (every verify
/// runs it over the whole token).
#[inline]
fn is_b64_char(b: u8) -> bool {
    // `| 0x20` maps `A-Z` onto `a-z` and no other byte into that range.
    let letter = (b | 0x20).wrapping_sub(b'a') < 26;
    let digit = b.wrapping_sub(b'0') < 10;
    letter
        | digit
        | (b == b'-')
        | (b == b'.')
        | (b == b'_')
        | (b == b'~')
        | (b == b'+')
        | (b == b'/')
}

/// What to send back for a [`VerifyError`]: status, `WWW-Authenticate`, `Retry-After` and a
/// JSON body. Build one with [`VerifyError::http`] or
/// [`Keygate::http_outcome`](crate::Keygate::http_outcome).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpOutcome {
    /// The status code: 400, 401, 403, 429, 500 or 503.
    pub status: u16,
    /// The `WWW-Authenticate` value, when there is one (not for 503).
    pub www_authenticate: Option<String>,
    /// The `Retry-After` value in seconds, for 503 and 429.
    pub retry_after: Option<u32>,
    /// Further headers: `RateLimit-Policy` and `RateLimit` for 429 (see [the module
    /// docs](self#rate-limit-headers)).
    pub headers: Vec<(&'static str, String)>,
    /// A JSON body, `{"error":"…","error_description":"…"}` (the [one error
    /// shape](self#one-error-shape)); the same for every invalid-key reason.
    pub body: &'static str,
}

impl VerifyError {
    /// The HTTP answer for this error, with `realm` in the challenge (characters that
    /// cannot appear in a quoted realm are dropped).
    ///
    /// ```
    /// use keygate::{Rejection, VerifyError};
    ///
    /// let out = VerifyError::InvalidKey(Rejection::Expired).http("abs");
    /// assert_eq!(out.status, 401);
    /// assert_eq!(
    ///     out.www_authenticate.as_deref(),
    ///     Some(r#"Bearer realm="abs", error="invalid_token""#)
    /// );
    /// ```
    pub fn http(&self, realm: &str) -> HttpOutcome {
        let realm: String = realm
            .chars()
            .filter(|c| (' '..='~').contains(c) && *c != '"' && *c != '\\')
            .collect();
        let challenge = |error: Option<&str>, extra: &str| {
            let mut value = format!("Bearer realm=\"{realm}\"");
            if let Some(error) = error {
                value.push_str(&format!(", error=\"{error}\""));
            }
            value.push_str(extra);
            Some(value)
        };
        match self {
            VerifyError::MissingCredentials => HttpOutcome {
                status: 401,
                www_authenticate: challenge(None, ""),
                retry_after: None,
                headers: Vec::new(),
                body: r#"{"error":"unauthorized","error_description":"Bearer credentials required"}"#,
            },
            VerifyError::InvalidRequest(_) => HttpOutcome {
                status: 400,
                www_authenticate: challenge(Some("invalid_request"), ""),
                retry_after: None,
                headers: Vec::new(),
                body: r#"{"error":"invalid_request","error_description":"Malformed Authorization header"}"#,
            },
            VerifyError::InvalidKey(_) => HttpOutcome {
                status: 401,
                www_authenticate: challenge(Some("invalid_token"), ""),
                retry_after: None,
                headers: Vec::new(),
                body: r#"{"error":"invalid_token","error_description":"The API key is invalid, expired or revoked"}"#,
            },
            VerifyError::InsufficientScope { required } => {
                // RFC 6750 scope-token characters only; otherwise leave the hint out.
                let scope_token = required
                    .bytes()
                    .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
                let scope = if scope_token {
                    format!(", scope=\"{required}\"")
                } else {
                    String::new()
                };
                HttpOutcome {
                    status: 403,
                    www_authenticate: challenge(Some("insufficient_scope"), &scope),
                    retry_after: None,
                    headers: Vec::new(),
                    body: r#"{"error":"insufficient_scope","error_description":"The API key lacks the required permission"}"#,
                }
            }
            VerifyError::StoreCorrupt(_) | VerifyError::PepperMismatch { .. } => HttpOutcome {
                status: 500,
                www_authenticate: None,
                retry_after: None,
                headers: Vec::new(),
                body: r#"{"error":"server_error","error_description":"Key verification failed on the server"}"#,
            },
            VerifyError::StoreUnavailable(_)
            | VerifyError::DirectoryUnavailable(_)
            | VerifyError::LimiterUnavailable(_) => HttpOutcome {
                status: 503,
                www_authenticate: None,
                retry_after: Some(RETRY_AFTER_SECS),
                headers: Vec::new(),
                body: r#"{"error":"temporarily_unavailable","error_description":"Key verification is temporarily unavailable"}"#,
            },
            VerifyError::RateLimited(limited) => HttpOutcome {
                status: 429,
                www_authenticate: None,
                retry_after: limited.retry_after.map(secs_up),
                headers: limit_headers(std::slice::from_ref(&limited.limit), None),
                body: r#"{"error":"rate_limited","error_description":"Rate limit exceeded; retry after the time in Retry-After"}"#,
            },
            VerifyError::CreditsExhausted(exhausted) => HttpOutcome {
                status: 429,
                www_authenticate: None,
                retry_after: exhausted.retry_after.map(secs_up),
                headers: limit_headers(&[], Some((exhausted.remaining, exhausted.retry_after))),
                body: r#"{"error":"credits_exhausted","error_description":"The API key has no usage credits left"}"#,
            },
        }
    }
}

/// Whole seconds, rounded up, at least 1 and at most `u32::MAX`: for `Retry-After`, which
/// must never tell a client to retry before the limit has room.
fn secs_up(after: Duration) -> u32 {
    let secs = after
        .as_secs()
        .saturating_add(u64::from(after.subsec_nanos() > 0));
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

/// Whole seconds, rounded up (0 stays 0).
fn secs_ceil(after: Duration) -> u64 {
    after
        .as_secs()
        .saturating_add(u64::from(after.subsec_nanos() > 0))
}

/// The `RateLimit-Policy` and `RateLimit` fields for `limits` and, optionally, credits
/// (`(remaining, until the next refill)`); see [the module docs](self#rate-limit-headers).
fn limit_headers(
    limits: &[LimitReport],
    credits: Option<(u64, Option<Duration>)>,
) -> Vec<(&'static str, String)> {
    use std::fmt::Write as _;
    let mut policy = String::new();
    let mut state = String::new();
    for report in limits {
        if !policy.is_empty() {
            policy.push_str(", ");
            state.push_str(", ");
        }
        let prefix = match report.scope {
            LimitScope::Key => "",
            LimitScope::Owner => "owner-",
        };
        // Names are `[A-Za-z0-9_.:-]`: nothing to escape in a structured-field string.
        let _ = write!(
            policy,
            "\"{prefix}{}\";q={};w={}",
            report.name,
            report.limit,
            secs_ceil(report.window).max(1)
        );
        let _ = write!(
            state,
            "\"{prefix}{}\";r={};t={}",
            report.name,
            report.remaining,
            secs_ceil(report.reset_after)
        );
    }
    if let Some((remaining, refill)) = credits {
        if !policy.is_empty() {
            policy.push_str(", ");
            state.push_str(", ");
        }
        let _ = write!(policy, "\"credits\";q={remaining}");
        let _ = write!(state, "\"credits\";r={remaining}");
        if let Some(refill) = refill {
            let _ = write!(state, ";t={}", secs_ceil(refill));
        }
    }
    if policy.is_empty() {
        return Vec::new();
    }
    vec![("ratelimit-policy", policy), ("ratelimit", state)]
}

/// The `RateLimit-Policy` and `RateLimit` headers for what a successful verify left
/// ([`Principal::allowance`](crate::Principal::allowance)): empty when nothing is limited.
/// The [`Authenticate`] layer and middleware add them to successful responses with
/// [`Authenticate::allowance_headers`]; handlers can add them by hand.
///
/// ```
/// use keygate::limits::RateLimit;
/// use keygate::{http, Keygate, MemoryStore, NewKey, Pepper};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let gate = Keygate::builder(MemoryStore::new(), Pepper::new(1, [7u8; 32])?).build()?;
/// let issued = gate
///     .mint(NewKey::new("script", "u1").ratelimits([RateLimit::new("requests", 10, 60_000)]))
///     .await?;
/// let principal = gate.verify(issued.key.expose()).await?;
/// let headers = http::allowance_headers(principal.allowance().unwrap());
/// assert_eq!(headers[0], ("ratelimit-policy", r#""requests";q=10;w=60"#.to_owned()));
/// assert_eq!(headers[1], ("ratelimit", r#""requests";r=9;t=6"#.to_owned()));
/// # Ok(()) }
/// ```
pub fn allowance_headers(allowance: &Allowance) -> Vec<(&'static str, String)> {
    limit_headers(&allowance.limits, allowance.credits.map(|c| (c, None)))
}

/// Why a request was refused, with the answer to send: a [`VerifyError`] and the
/// [`HttpOutcome`] it renders as, with the gate's realm in the challenge.
///
/// The one refusal type of both framework integrations: the rejection of the axum
/// extractors (it implements `axum::response::IntoResponse` with feature `axum`) and the
/// error of the actix-web extractors (it implements `actix_web::ResponseError` with feature
/// `actix`). Both render the same status, headers and body (see [the module
/// docs](self)). Take `Result<Principal, AuthError>` in a handler to see a refusal instead
/// of answering it.
///
/// ```
/// use keygate::http::AuthError;
/// use keygate::{Keygate, MemoryStore, Pepper, Rejection, VerifyError};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pepper = Pepper::new(1, b"load me from a secret store, 32+ bytes")?;
/// let gate = Keygate::builder(MemoryStore::new(), pepper).realm("library").build()?;
///
/// let refusal = AuthError::new(VerifyError::InvalidKey(Rejection::Expired), &gate);
/// assert_eq!(refusal.outcome().status, 401);
/// assert_eq!(
///     refusal.outcome().www_authenticate.as_deref(),
///     Some(r#"Bearer realm="library", error="invalid_token""#)
/// );
/// assert!(matches!(refusal.error(), Some(VerifyError::InvalidKey(Rejection::Expired))));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AuthError {
    /// `None`: no [`Keygate`] was configured for the request (actix; 500).
    error: Option<VerifyError>,
    outcome: HttpOutcome,
    /// Rendered with the default realm, no gate at hand: an [`Authenticate`] layer or
    /// middleware around the handler re-renders it with its gate's realm.
    #[cfg_attr(not(any(feature = "axum", feature = "actix")), allow(dead_code))]
    default_realm: bool,
}

impl AuthError {
    /// The answer for `error`, with `gate`'s realm.
    pub fn new(error: VerifyError, gate: &Keygate) -> Self {
        let outcome = gate.http_outcome(&error);
        Self {
            error: Some(error),
            outcome,
            default_realm: false,
        }
    }

    /// The answer for `error` with `realm`, when no gate is at hand.
    #[cfg(feature = "actix")]
    pub(crate) fn with_realm(error: VerifyError, realm: &str) -> Self {
        let outcome = error.http(realm);
        Self {
            error: Some(error),
            outcome,
            default_realm: false,
        }
    }

    /// A request that reached an extractor with no [`Keygate`] configured: a server
    /// misconfiguration, answered with 500 and logged.
    #[cfg(feature = "actix")]
    pub(crate) fn unconfigured() -> Self {
        tracing::error!(
            target: "keygate",
            "keygate::actix: no Keygate configured for this request; register one with \
             App::app_data(web::Data::new(gate)), or wrap the route in Authenticate; \
             answering 500"
        );
        Self {
            error: None,
            outcome: HttpOutcome {
                status: 500,
                www_authenticate: None,
                retry_after: None,
                headers: Vec::new(),
                body: r#"{"error":"server_error","error_description":"API key verification is not configured"}"#,
            },
            default_realm: false,
        }
    }

    /// The underlying error; `None` only when actix-web reached a keygate extractor with
    /// no [`Keygate`] configured (a server misconfiguration, answered with 500).
    pub fn error(&self) -> Option<&VerifyError> {
        self.error.as_ref()
    }

    /// The underlying error, by value (see [`error`](Self::error)).
    pub fn into_error(self) -> Option<VerifyError> {
        self.error
    }

    /// The status, headers and body this refusal renders as.
    pub fn outcome(&self) -> &HttpOutcome {
        &self.outcome
    }

    /// Whether the request simply had no bearer credentials (the case an optional
    /// extractor turns into "anonymous").
    #[cfg(any(feature = "axum", feature = "actix"))]
    pub(crate) fn is_missing_credentials(&self) -> bool {
        matches!(self.error, Some(VerifyError::MissingCredentials))
    }

    /// Whether this was rendered with the default realm (no gate at hand).
    #[cfg(any(feature = "axum", feature = "actix"))]
    pub(crate) fn has_default_realm(&self) -> bool {
        self.default_realm
    }
}

/// Renders with the default realm `"api"`, for `?` on
/// [`Principal::require`](crate::Principal::require) in a handler; an [`Authenticate`]
/// layer or middleware around the handler replaces it with its gate's realm.
impl From<VerifyError> for AuthError {
    fn from(error: VerifyError) -> Self {
        let outcome = error.http(DEFAULT_REALM);
        Self {
            error: Some(error),
            outcome,
            default_realm: true,
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            Some(error) => fmt::Display::fmt(error, f),
            None => f.write_str("no Keygate configured for this request"),
        }
    }
}

impl std::error::Error for AuthError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Verifies every request before it reaches the wrapped routes, and puts the
/// [`Principal`] in the request extensions: a tower layer for axum (feature `axum`,
/// `Router::layer`) and a middleware for actix-web (feature `actix`, `wrap`), with the
/// same options in both:
///
/// - [`required`](Self::required): every request needs a valid key; otherwise the answer
///   of [this module](self) (401/400/503, with the gate's realm) is sent and the routes are
///   not called.
/// - [`optional`](Self::optional): requests without any bearer credentials pass through
///   without a principal; a bad key is still refused.
/// - [`permission`](Self::permission): a verified key must also be allowed this (403
///   `insufficient_scope`). With `optional`, it is checked on requests that carry a key;
///   anonymous requests still pass.
///
/// The extractors behind it reuse the principal it verified (one verify per request). A
/// [`VerifyError`] a handler behind it returns (`principal.require("x")?`) is answered
/// with this gate's realm; wrap the whole application in [`Authenticate::optional`] to
/// have every answer name your realm.
///
/// Also reachable as `keygate::axum::Authenticate` and `keygate::actix::Authenticate`.
#[cfg(any(feature = "axum", feature = "actix"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "axum", feature = "actix"))))]
#[derive(Debug, Clone)]
pub struct Authenticate {
    pub(crate) gate: Keygate,
    pub(crate) optional: bool,
    pub(crate) permissions: Vec<String>,
    pub(crate) allowance_headers: bool,
}

#[cfg(any(feature = "axum", feature = "actix"))]
impl Authenticate {
    /// Every request must carry a valid key.
    pub fn required(gate: Keygate) -> Self {
        Self {
            gate,
            optional: false,
            permissions: Vec::new(),
            allowance_headers: false,
        }
    }

    /// Requests without bearer credentials pass through anonymously; a key that is there
    /// must be valid.
    pub fn optional(gate: Keygate) -> Self {
        Self {
            optional: true,
            ..Self::required(gate)
        }
    }

    /// Also requires `permission` of a verified key ([`Principal::allows`]); 403
    /// `insufficient_scope` otherwise. Calling it again requires each permission given.
    #[must_use]
    pub fn permission(mut self, permission: impl Into<String>) -> Self {
        self.permissions.push(permission.into());
        self
    }

    /// Adds `RateLimit-Policy` and `RateLimit` headers for what verify left of the key's
    /// (and its owner's) limits and credits to every response of a verified request
    /// ([`allowance_headers`]), unless the handler set them itself. Off by default.
    #[must_use]
    pub fn allowance_headers(mut self) -> Self {
        self.allowance_headers = true;
        self
    }

    /// The gate requests are verified with.
    pub fn gate(&self) -> &Keygate {
        &self.gate
    }

    /// Checks the required permissions of a verified `principal`.
    pub(crate) fn permits(&self, principal: &Principal) -> Result<(), VerifyError> {
        self.permissions
            .iter()
            .try_for_each(|permission| principal.require(permission))
    }
}

/// A verified principal that is allowed `P`: 403 `insufficient_scope` otherwise. An
/// extractor for axum (feature `axum`) and actix-web (feature `actix`); it derefs to the
/// [`Principal`].
///
/// ```
/// use keygate::http::Require;
/// use keygate::Permission;
///
/// struct Admin;
/// impl Permission for Admin {
///     const NAME: &'static str = "admin";
/// }
///
/// async fn handler(admin: Require<Admin>) -> String {
///     admin.key_name().to_owned() // a `Principal` method, through `Deref`
/// }
/// ```
///
/// Also reachable as `keygate::axum::Require` and `keygate::actix::Require`.
#[cfg(any(feature = "axum", feature = "actix"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "axum", feature = "actix"))))]
pub struct Require<P: Permission> {
    principal: Principal,
    permission: PhantomData<fn() -> P>,
}

#[cfg(any(feature = "axum", feature = "actix"))]
impl<P: Permission> Require<P> {
    /// `principal`, already checked to allow `P`.
    pub(crate) fn checked(principal: Principal) -> Self {
        Self {
            principal,
            permission: PhantomData,
        }
    }

    /// The principal.
    pub fn into_inner(self) -> Principal {
        self.principal
    }
}

#[cfg(any(feature = "axum", feature = "actix"))]
impl<P: Permission> std::ops::Deref for Require<P> {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.principal
    }
}

#[cfg(any(feature = "axum", feature = "actix"))]
impl<P: Permission> fmt::Debug for Require<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Require")
            .field("permission", &P::NAME)
            .field("principal", &self.principal)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Rejection;
    use crate::store::StoreError;

    fn parse(v: &str) -> Result<&str, VerifyError> {
        parse_authorization(v.as_bytes())
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_spaces_may_repeat() {
        for header in [
            "Bearer tok",
            "bearer tok",
            "BEARER tok",
            "Bearer    tok",
            " Bearer tok ",
        ] {
            assert_eq!(parse(header).unwrap(), "tok", "{header:?}");
        }
        assert_eq!(parse("Bearer a.b-c_d~e+f/g==").unwrap(), "a.b-c_d~e+f/g==");
    }

    #[test]
    fn other_schemes_are_missing_credentials() {
        for header in ["Basic dXNlcjpwYXNz", "Token abc", "", "Bearertok"] {
            assert!(
                matches!(parse(header), Err(VerifyError::MissingCredentials)),
                "{header:?}"
            );
        }
    }

    #[test]
    fn unreadable_headers_are_invalid_requests() {
        let cases = [
            ("Bearer", RequestError::MalformedBearer),
            ("Bearer ", RequestError::MalformedBearer),
            ("Bearer a b", RequestError::MalformedBearer),
            ("Bearer a,b", RequestError::MalformedBearer),
            ("Bearer =", RequestError::MalformedBearer),
            ("Bearer\ttok", RequestError::InvalidCharacters),
            ("Bearer tok\u{0}", RequestError::InvalidCharacters),
            ("Bearer tók", RequestError::InvalidCharacters),
        ];
        for (header, want) in cases {
            match parse(header) {
                Err(VerifyError::InvalidRequest(got)) => assert_eq!(got, want, "{header:?}"),
                other => panic!("{header:?}: {other:?}"),
            }
        }
        let long = format!("Bearer {}", "a".repeat(MAX_HEADER_LEN));
        assert!(matches!(
            parse(&long),
            Err(VerifyError::InvalidRequest(RequestError::Oversize))
        ));
    }

    #[test]
    fn b64token_characters_are_exactly_rfc_6750s() {
        for b in 0..=u8::MAX {
            let want = b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
            assert_eq!(is_b64_char(b), want, "byte {b:#04x}");
        }
    }

    #[test]
    fn the_mapping_follows_rfc_6750() {
        let realm = "r";
        let cases: Vec<(VerifyError, u16, Option<&str>)> = vec![
            (
                VerifyError::MissingCredentials,
                401,
                Some(r#"Bearer realm="r""#),
            ),
            (
                VerifyError::InvalidRequest(RequestError::MultipleHeaders),
                400,
                Some(r#"Bearer realm="r", error="invalid_request""#),
            ),
            (
                VerifyError::InvalidKey(Rejection::Inactive),
                401,
                Some(r#"Bearer realm="r", error="invalid_token""#),
            ),
            (
                VerifyError::InsufficientScope {
                    required: "library:write".into(),
                },
                403,
                Some(r#"Bearer realm="r", error="insufficient_scope", scope="library:write""#),
            ),
            (
                VerifyError::StoreUnavailable(StoreError::Timeout),
                503,
                None,
            ),
            (
                VerifyError::StoreCorrupt(StoreError::Corrupt("bad row".into())),
                500,
                None,
            ),
            (VerifyError::PepperMismatch { version: 1 }, 500, None),
        ];
        for (error, status, header) in cases {
            let out = error.http(realm);
            assert_eq!(out.status, status, "{error:?}");
            assert_eq!(out.www_authenticate.as_deref(), header, "{error:?}");
            assert_eq!(out.retry_after.is_some(), status == 503);
            assert!(serde_json::from_str::<serde_json::Value>(out.body).is_ok());
        }
    }

    #[test]
    fn every_invalid_key_reason_gets_one_body() {
        let a = VerifyError::InvalidKey(Rejection::UnknownKey).http("r");
        let b = VerifyError::InvalidKey(Rejection::OwnerInactive).http("r");
        assert_eq!(a, b);
    }

    #[test]
    fn realms_and_scopes_cannot_break_the_header() {
        let out = VerifyError::InsufficientScope {
            required: "a\"b".into(),
        }
        .http("x\"y\\z\n");
        assert_eq!(
            out.www_authenticate.as_deref(),
            Some(r#"Bearer realm="xyz", error="insufficient_scope""#)
        );
    }

    /// The one refusal type renders identically in both frameworks: status, every header
    /// keygate sets, and body, for each kind of refusal, with the gate's realm and (made
    /// with `From`) with the default one.
    #[cfg(all(feature = "axum", feature = "actix"))]
    #[tokio::test]
    async fn auth_error_renders_the_same_in_axum_and_actix() {
        use ::actix_web::ResponseError;
        use ::axum::response::IntoResponse;

        use crate::{Keygate, MemoryStore, Pepper};

        let gate = Keygate::builder(MemoryStore::new(), Pepper::new(1, [7u8; 32]).unwrap())
            .realm("library")
            .build()
            .unwrap();
        let errors = || {
            vec![
                VerifyError::MissingCredentials,
                VerifyError::InvalidRequest(RequestError::MultipleHeaders),
                VerifyError::InvalidKey(Rejection::Expired),
                VerifyError::InsufficientScope {
                    required: "library:write".into(),
                },
                VerifyError::StoreUnavailable(StoreError::Timeout),
                VerifyError::StoreCorrupt(StoreError::Corrupt("bad row".into())),
            ]
        };
        let made = errors()
            .into_iter()
            .map(|e| (AuthError::new(e, &gate), "library"))
            .chain(errors().into_iter().map(|e| (AuthError::from(e), "api")));
        let mut seen = 0;
        for (error, realm) in made {
            let actix = error.error_response();
            let actix_headers: Vec<(String, String)> =
                ["content-type", "www-authenticate", "retry-after"]
                    .iter()
                    .filter_map(|name| {
                        let value = actix.headers().get(*name)?.to_str().ok()?;
                        Some(((*name).to_owned(), value.to_owned()))
                    })
                    .collect();
            let actix_status = actix.status().as_u16();
            let actix_body = ::actix_web::body::to_bytes(actix.into_body())
                .await
                .unwrap();

            let expected = error.outcome().clone();
            let axum = error.into_response();
            let axum_headers: Vec<(String, String)> =
                ["content-type", "www-authenticate", "retry-after"]
                    .iter()
                    .filter_map(|name| {
                        let value = axum.headers().get(*name)?.to_str().ok()?;
                        Some(((*name).to_owned(), value.to_owned()))
                    })
                    .collect();
            let axum_status = axum.status().as_u16();
            let axum_body = ::axum::body::to_bytes(axum.into_body(), usize::MAX)
                .await
                .unwrap();

            assert_eq!(actix_status, expected.status);
            assert_eq!(axum_status, expected.status);
            assert_eq!(actix_headers, axum_headers);
            assert_eq!(actix_body, axum_body);
            assert_eq!(&actix_body[..], expected.body.as_bytes());
            let challenge = axum_headers.iter().find(|(n, _)| n == "www-authenticate");
            assert_eq!(
                challenge.map(|(_, v)| v.as_str()),
                expected.www_authenticate.as_deref()
            );
            if let Some((_, challenge)) = challenge {
                assert!(
                    challenge.starts_with(&format!("Bearer realm=\"{realm}\"")),
                    "{challenge}"
                );
            }
            assert_eq!(
                axum_headers
                    .iter()
                    .find(|(n, _)| n == "retry-after")
                    .is_some(),
                expected.status == 503
            );
            seen += 1;
        }
        assert_eq!(seen, 12);
    }
}
