//! Framework-free HTTP: reading `Authorization: Bearer` headers and turning a
//! [`VerifyError`] into a status, headers and body (RFC 6750 §3).
//!
//! | outcome | status | headers |
//! |---|---|---|
//! | no credentials | 401 | `WWW-Authenticate: Bearer realm="…"` |
//! | malformed header (two headers, bad syntax, oversize) | 400 | `… error="invalid_request"` |
//! | bad, unknown, expired, revoked key; inactive owner | 401 | `… error="invalid_token"` |
//! | valid key lacking a permission or scope | 403 | `… error="insufficient_scope"` |
//! | store or directory unavailable | 503 | `Retry-After` |
//! | store returned a corrupt record | 500 | none: retrying does not help |
//!
//! Every invalid-key reason gets the same body; the reason goes to logs only.
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
//! | `server_error` | 500 | a corrupt stored record; no gate configured (actix) |
//! | `temporarily_unavailable` | 503 | store or directory unavailable (`Retry-After`) |
//!
//! The challenge names the gate's realm ([`KeygateBuilder::realm`](crate::KeygateBuilder::realm)):
//! always in the extractors, guards, middleware and admin API; for a `VerifyError` a
//! handler returns (`principal.require("x")?`) when an `Authenticate` layer or middleware
//! of the gate surrounds the handler (otherwise the default realm `"api"`).

use crate::error::{RequestError, VerifyError};

/// Longest `Authorization` header value read; longer is refused before any crypto.
pub const MAX_HEADER_LEN: usize = 8192 + 64;

/// The realm a [`VerifyError`] names when rendered with no gate at hand (and a gate's
/// default, see [`KeygateBuilder::realm`](crate::KeygateBuilder::realm)).
#[cfg(any(feature = "axum", feature = "actix"))]
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
/// JSON body. Build one with [`VerifyError::http`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOutcome {
    /// The status code: 400, 401, 403, 500 or 503.
    pub status: u16,
    /// The `WWW-Authenticate` value, when there is one (not for 503).
    pub www_authenticate: Option<String>,
    /// The `Retry-After` value in seconds, for 503.
    pub retry_after: Option<u32>,
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
                body: r#"{"error":"unauthorized","error_description":"Bearer credentials required"}"#,
            },
            VerifyError::InvalidRequest(_) => HttpOutcome {
                status: 400,
                www_authenticate: challenge(Some("invalid_request"), ""),
                retry_after: None,
                body: r#"{"error":"invalid_request","error_description":"Malformed Authorization header"}"#,
            },
            VerifyError::InvalidKey(_) => HttpOutcome {
                status: 401,
                www_authenticate: challenge(Some("invalid_token"), ""),
                retry_after: None,
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
                    body: r#"{"error":"insufficient_scope","error_description":"The API key lacks the required permission"}"#,
                }
            }
            VerifyError::StoreCorrupt(_) | VerifyError::PepperMismatch { .. } => HttpOutcome {
                status: 500,
                www_authenticate: None,
                retry_after: None,
                body: r#"{"error":"server_error","error_description":"Key verification failed on the server"}"#,
            },
            VerifyError::StoreUnavailable(_) | VerifyError::DirectoryUnavailable(_) => {
                HttpOutcome {
                    status: 503,
                    www_authenticate: None,
                    retry_after: Some(RETRY_AFTER_SECS),
                    body: r#"{"error":"temporarily_unavailable","error_description":"Key verification is temporarily unavailable"}"#,
                }
            }
        }
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
}
