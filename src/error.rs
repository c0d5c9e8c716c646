//! Error types: [`VerifyError`] for requests, [`Error`] for key management, [`BuildError`]
//! for configuration.

use std::fmt;

use crate::key::KeyId;
use crate::limits::{CreditsExhausted, LimiterError, RateLimited};
use crate::store::StoreError;
use crate::user::DirectoryError;

/// Why a token was refused as a bad key. One HTTP answer (401 `invalid_token`) covers all
/// of them; the reason is for logs and events ([`Rejection::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rejection {
    /// Not shaped like any key this gate accepts (length, alphabet, parts).
    Malformed,
    /// An opaque key with another application's prefix.
    WrongPrefix,
    /// An opaque key whose checksum does not match: a typo or garbage.
    BadChecksum,
    /// A JWT whose header or claims are not valid JSON of the expected shape, including a
    /// non-numeric `exp` or `iat`.
    JwtMalformed,
    /// A JWT signed with anything but HS256 (including `none`).
    JwtAlgorithm,
    /// A JWT whose signature does not match the secret.
    JwtSignature,
    /// A JWT whose `type` claim is not exactly `"api"`.
    JwtType,
    /// A JWT carrying `userId` or `username`: an Audiobookshelf session (access or refresh)
    /// token signed with the same secret, not an API key.
    JwtSessionToken,
    /// A JWT with a `crit` header: keygate understands no JWS extensions.
    JwtCritical,
    /// A JWT whose own `exp` has passed.
    JwtExpired,
    /// A JWT whose `nbf` lies in the future.
    JwtNotYetValid,
    /// A JWT, but this gate was built without a JWT secret.
    JwtDisabled,
    /// No record for the key id.
    UnknownKey,
    /// The record is of the other format (an opaque record for a JWT, or the reverse).
    FormatMismatch,
    /// The secret does not match the record's hash.
    HashMismatch,
    /// The key was deactivated (revoked).
    Inactive,
    /// The record's `expires_at` has passed.
    Expired,
    /// The user directory does not know the key's owner.
    OwnerUnknown,
    /// The key's owner is deactivated.
    OwnerInactive,
}

impl Rejection {
    /// A stable machine-readable code, e.g. `"bad_checksum"`, for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::WrongPrefix => "wrong_prefix",
            Rejection::BadChecksum => "bad_checksum",
            Rejection::JwtMalformed => "jwt_malformed",
            Rejection::JwtAlgorithm => "jwt_algorithm",
            Rejection::JwtSignature => "jwt_signature",
            Rejection::JwtType => "jwt_type",
            Rejection::JwtSessionToken => "jwt_session_token",
            Rejection::JwtCritical => "jwt_crit",
            Rejection::JwtExpired => "jwt_expired",
            Rejection::JwtNotYetValid => "jwt_not_yet_valid",
            Rejection::JwtDisabled => "jwt_disabled",
            Rejection::UnknownKey => "unknown_key",
            Rejection::FormatMismatch => "format_mismatch",
            Rejection::HashMismatch => "hash_mismatch",
            Rejection::Inactive => "inactive",
            Rejection::Expired => "expired",
            Rejection::OwnerUnknown => "owner_unknown",
            Rejection::OwnerInactive => "owner_inactive",
        }
    }

    /// Whether this was decided from the token alone, with no store or directory read
    /// (a malformed key, a wrong prefix or checksum, a bad JWT).
    pub fn decided_without_store(&self) -> bool {
        // Exhaustive on purpose: a new reason must be placed on one side or the other.
        match self {
            Rejection::Malformed
            | Rejection::WrongPrefix
            | Rejection::BadChecksum
            | Rejection::JwtMalformed
            | Rejection::JwtAlgorithm
            | Rejection::JwtSignature
            | Rejection::JwtType
            | Rejection::JwtSessionToken
            | Rejection::JwtCritical
            | Rejection::JwtExpired
            | Rejection::JwtNotYetValid
            | Rejection::JwtDisabled => true,
            Rejection::UnknownKey
            | Rejection::FormatMismatch
            | Rejection::HashMismatch
            | Rejection::Inactive
            | Rejection::Expired
            | Rejection::OwnerUnknown
            | Rejection::OwnerInactive => false,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is wrong with an `Authorization` header that is there but unusable (HTTP 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestError {
    /// More than one `Authorization` header.
    MultipleHeaders,
    /// The header value is longer than [`http::MAX_HEADER_LEN`](crate::http::MAX_HEADER_LEN).
    Oversize,
    /// Control characters or non-ASCII bytes in the header value.
    InvalidCharacters,
    /// `Bearer` with no token, or a token containing spaces.
    MalformedBearer,
}

impl RequestError {
    /// A stable machine-readable code, e.g. `"multiple_headers"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RequestError::MultipleHeaders => "multiple_headers",
            RequestError::Oversize => "oversize",
            RequestError::InvalidCharacters => "invalid_characters",
            RequestError::MalformedBearer => "malformed_bearer",
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why [`Keygate::verify`](crate::Keygate::verify) did not produce a
/// [`Principal`](crate::Principal).
///
/// The variants follow the HTTP outcomes of RFC 6750; [`VerifyError::http`] gives the
/// status and headers. A store or directory failure is never reported as a bad key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// No `Authorization: Bearer` credentials at all (HTTP 401 with a bare challenge).
    #[error("no bearer credentials")]
    MissingCredentials,
    /// An `Authorization` header that cannot be read (HTTP 400 `invalid_request`).
    #[error("malformed authorization header: {0}")]
    InvalidRequest(RequestError),
    /// A bad, unknown, expired or revoked key, or an inactive owner
    /// (HTTP 401 `invalid_token`).
    #[error("invalid API key: {0}")]
    InvalidKey(Rejection),
    /// A valid key that lacks a permission or scope (HTTP 403 `insufficient_scope`).
    #[error("API key lacks the permission {required:?}")]
    InsufficientScope {
        /// The permission or scope that was required.
        required: String,
    },
    /// The key store failed or timed out (HTTP 503 with `Retry-After`).
    #[error("key store unavailable")]
    StoreUnavailable(#[source] StoreError),
    /// The store returned a record that cannot be trusted: unreadable
    /// ([`StoreError::Corrupt`] from the store), or one that fails keygate's record checks
    /// (an empty owner, another id than asked for, an opaque record without a hash, …).
    /// The key is refused, and the answer is HTTP 500 without `Retry-After`: retrying
    /// cannot help until someone repairs the record. The source is always
    /// [`StoreError::Corrupt`]; keygate logs it with the key id.
    #[error("key store returned a corrupt record")]
    StoreCorrupt(#[source] StoreError),
    /// The user directory failed (HTTP 503 with `Retry-After`).
    #[error("user directory unavailable")]
    DirectoryUnavailable(#[source] DirectoryError),
    /// The key's hash did not match, and the gate's pepper of the hash's version is not
    /// the one the store recorded for that version (see
    /// [`Keygate::check_pepper`](crate::Keygate::check_pepper)): the server is configured
    /// with the wrong pepper, so no key of that version can verify. An operator's error,
    /// not the client's: HTTP 500 without `Retry-After`, logged at error level.
    #[error(
        "wrong pepper: pepper version {version} does not match the fingerprint the key store \
         recorded for it"
    )]
    PepperMismatch {
        /// The pepper version of the key's hash.
        version: u32,
    },
    /// A rate limit of the key (or one its owner's keys share) has no room for the request:
    /// HTTP 429 `rate_limited` with `Retry-After` and the `RateLimit`/`RateLimit-Policy`
    /// headers. The key is valid; nothing was charged. Never a 401.
    #[error("rate limit exceeded: {}", .0.limit)]
    RateLimited(Box<RateLimited>),
    /// The key has no credits left for the request: HTTP 429 `credits_exhausted`, with
    /// `Retry-After` when the key is refilled. The key is valid; nothing was charged.
    #[error("usage credits exhausted")]
    CreditsExhausted(Box<CreditsExhausted>),
    /// The [`Limiter`](crate::limits::Limiter) failed, and the gate fails closed (the
    /// default, see [`FailureMode`](crate::limits::FailureMode)): HTTP 503 with
    /// `Retry-After`. Never a bad key, never a success without a decision.
    #[error("usage limiter unavailable")]
    LimiterUnavailable(#[source] LimiterError),
}

impl VerifyError {
    /// A stable machine-readable reason for logs: the [`Rejection`] or [`RequestError`]
    /// code, or `"missing_credentials"`, `"insufficient_scope"`, `"store_unavailable"`,
    /// `"store_corrupt"`, `"directory_unavailable"`, `"pepper_mismatch"`, `"rate_limited"`,
    /// `"credits_exhausted"`, `"limiter_unavailable"`.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::MissingCredentials => "missing_credentials",
            VerifyError::InvalidRequest(e) => e.as_str(),
            VerifyError::InvalidKey(r) => r.as_str(),
            VerifyError::InsufficientScope { .. } => "insufficient_scope",
            VerifyError::StoreUnavailable(_) => "store_unavailable",
            VerifyError::StoreCorrupt(_) => "store_corrupt",
            VerifyError::DirectoryUnavailable(_) => "directory_unavailable",
            VerifyError::PepperMismatch { .. } => "pepper_mismatch",
            VerifyError::RateLimited(_) => "rate_limited",
            VerifyError::CreditsExhausted(_) => "credits_exhausted",
            VerifyError::LimiterUnavailable(_) => "limiter_unavailable",
        }
    }

    /// Whether a usage limit refused the request (rate limit or credits, HTTP 429): the key
    /// is valid.
    pub fn is_limited(&self) -> bool {
        matches!(
            self,
            VerifyError::RateLimited(_) | VerifyError::CreditsExhausted(_)
        )
    }

    /// The rejection, when the key itself was refused.
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            VerifyError::InvalidKey(r) => Some(*r),
            _ => None,
        }
    }

    /// Whether the store or directory is unavailable: retry later, and do not count it
    /// against the client. Not for [`StoreCorrupt`](Self::StoreCorrupt), which a retry
    /// does not fix; see [`is_server_error`](Self::is_server_error).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            VerifyError::StoreUnavailable(_)
                | VerifyError::DirectoryUnavailable(_)
                | VerifyError::LimiterUnavailable(_)
        )
    }

    /// Whether the failure is on the server's side (HTTP 5xx): unavailable, a corrupt
    /// record, or the wrong pepper. Never count it against the client.
    pub fn is_server_error(&self) -> bool {
        self.is_unavailable()
            || matches!(
                self,
                VerifyError::StoreCorrupt(_) | VerifyError::PepperMismatch { .. }
            )
    }
}

/// Why a key-management call ([`mint`](crate::Keygate::mint),
/// [`update`](crate::Keygate::update), …) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input was refused before anything was written; the message says which field.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The offending field, e.g. `"name"`.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No key with this id.
    #[error("no API key with id {0}")]
    NotFound(KeyId),
    /// A conditional change ([`KeyPatch::if_unchanged`](crate::KeyPatch::if_unchanged)) met
    /// a record whose owner, scopes, active flag or expiry changed since it was read:
    /// nothing was written. Read the record again and decide anew.
    #[error("API key {0} changed since it was read; nothing was written")]
    Changed(KeyId),
    /// A JWT-format key was asked for, but the gate has no JWT secret.
    #[error("JWT keys are not enabled: build the gate with a JWT secret")]
    JwtDisabled,
    /// The store failed; nothing is known to have been written.
    #[error("key store error")]
    Store(#[from] StoreError),
    /// The usage limiter could not be read (rotating a key with credits reads what is
    /// left); nothing was written.
    #[error("usage limiter error")]
    Limiter(#[source] LimiterError),
    /// The gate's pepper of this version is not the one the store recorded for it: keys
    /// minted with it could never verify, so nothing was written. A configuration error;
    /// see [`Keygate::check_pepper`](crate::Keygate::check_pepper).
    #[error(
        "wrong pepper: pepper version {version} does not match the fingerprint the key store \
         recorded for it; configure the pepper this store's keys were made with, or give a new \
         pepper a new version number"
    )]
    PepperMismatch {
        /// The pepper version that does not match.
        version: u32,
    },
}

impl Error {
    pub(crate) fn invalid(field: &'static str, reason: &'static str) -> Self {
        Error::InvalidInput { field, reason }
    }
}

/// A configuration error from [`KeygateBuilder::build`](crate::KeygateBuilder::build) or
/// the pieces it takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The prefix does not match `[a-z][a-z0-9]{0,15}`.
    #[error("invalid key prefix {0:?}: expected [a-z][a-z0-9]{{0,15}}")]
    InvalidPrefix(String),
    /// A pepper shorter than the minimum.
    #[error("pepper too short: {got} bytes, need at least {min}")]
    PepperTooShort {
        /// Minimum length in bytes.
        min: usize,
        /// Length given.
        got: usize,
    },
    /// The same pepper version twice in one keyring.
    #[error("pepper version {0} given twice")]
    DuplicatePepperVersion(u32),
    /// [`KeygateBuilder::owner_ratelimits`](crate::KeygateBuilder::owner_ratelimits) out of
    /// bounds; the text says how.
    #[error("invalid owner rate limits: {0}")]
    InvalidRateLimits(&'static str),
    /// A JWT secret shorter than the minimum.
    #[error("JWT secret too short: {got} bytes, need at least {min}")]
    JwtSecretTooShort {
        /// Minimum length in bytes.
        min: usize,
        /// Length given.
        got: usize,
    },
}
