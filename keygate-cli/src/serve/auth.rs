//! `/auth`: the forward-auth endpoint for reverse proxies (nginx `auth_request`, Traefik
//! `ForwardAuth`, Caddy `forward_auth`).
//!
//! The proxy sends the client's request headers (`Authorization` among them) to `/auth`,
//! with any method. keygate verifies the bearer key:
//!
//! - valid (and allowed every `scope` the query names): `200`, empty body, with
//!   `X-Keygate-Key-Id` (the key's id), `X-Keygate-Owner` (the user it acts for) and
//!   `X-Keygate-Scopes` (the key's scopes, space-separated, or `*` for a key without
//!   scopes, which carries all of its owner's permissions) for the proxy to pass upstream.
//!   Owner and scopes are percent-encoded where they hold `%` or anything but visible
//!   ASCII (an ASCII owner id like `user-42` arrives unchanged);
//! - otherwise the library's answer ([`keygate::http`]): 401 with `WWW-Authenticate`, 400
//!   for a malformed header, 403 `insufficient_scope`, 429 with `Retry-After`, 503 with
//!   `Retry-After` when the store is down, 500 for a corrupt record. Every refusal also
//!   names its `error` code and `error_description` in [`ERROR`] and [`ERROR_DESCRIPTION`]
//!   (`X-Keygate-Error`, `X-Keygate-Error-Description`): nginx's `auth_request` passes
//!   headers on but not bodies.
//!
//! Keys restricted to networks or origins are checked against the *original* request. The
//! connection to `/auth` is always the proxy's, never the client's: the client address is
//! read from the forwarding header the gate's trusted proxies write (`X-Forwarded-For` or
//! `Forwarded`), and only when the connection comes from one of them. From any other peer
//! it is unknown (a restricted key is refused `403 network_not_allowed`), never the peer's
//! own address, which would let everyone behind a local proxy pass for `127.0.0.1`. The
//! `Origin` is the original request's: nginx and Caddy pass the client's headers on.
//!
//! A protected location names what it needs in the query: `/auth?scope=library:read`
//! (repeat `scope` to require several). Any other query parameter, or a scope that is not a
//! scope, is the proxy's misconfiguration: `500`, logged, and nothing is let through.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use keygate::http::AuthError;
use keygate::limits::RequestContext;
use keygate::{Keygate, Principal};

use super::App;

/// The header naming the key's id on a `200`.
pub const KEY_ID: HeaderName = HeaderName::from_static("x-keygate-key-id");
/// The header naming the key's owner on a `200`.
pub const OWNER: HeaderName = HeaderName::from_static("x-keygate-owner");
/// The header listing the key's scopes on a `200`.
pub const SCOPES: HeaderName = HeaderName::from_static("x-keygate-scopes");

/// The header naming the error code of a refusal (the body's `error`: `invalid_token`,
/// `rate_limited`, `credits_exhausted`, `network_not_allowed`, …), for proxies that pass
/// on headers but not bodies (nginx's `auth_request`).
pub const ERROR: HeaderName = HeaderName::from_static("x-keygate-error");
/// The header carrying a refusal's `error_description`, beside [`ERROR`].
pub const ERROR_DESCRIPTION: HeaderName = HeaderName::from_static("x-keygate-error-description");

/// Most `scope` parameters one `/auth` URL may name.
const MAX_SCOPES: usize = 16;

/// Longest original URI or host logged, in bytes.
const MAX_LOGGED: usize = 256;

pub(crate) async fn auth(State(app): State<App>, request: Request) -> Response {
    // The whole request, read by reference: nothing is copied per request.
    let (method, uri, headers) = (request.method(), request.uri(), request.headers());
    let required = match required_scopes(uri.query()) {
        Ok(required) => required,
        Err(problem) => {
            tracing::error!(
                problem,
                auth_uri = ?clip(uri.path_and_query().map_or("", |p| p.as_str())),
                "forward auth misconfigured: the proxy's /auth URL is wrong; answering 500"
            );
            return misconfigured();
        }
    };
    let gate = app.gate();
    let values = headers
        .get_all(AUTHORIZATION)
        .iter()
        .map(HeaderValue::as_bytes);
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let context = original_context(gate, peer, headers);
    let verified = match gate.verify_headers_with(values, &context).await {
        Ok(principal) => required
            .iter()
            .try_for_each(|scope| principal.require(scope))
            .map(|()| principal),
        Err(error) => Err(error),
    };
    let (response, key_id) = match verified {
        Ok(principal) => (granted(&principal), Some(principal.key_id())),
        Err(error) => (refused(AuthError::new(error, gate)), None),
    };
    // One line per decision, at DEBUG under target `access` (off by default).
    if tracing::enabled!(target: "access", tracing::Level::DEBUG) {
        let original = Original::of(&app, method, uri, headers);
        tracing::debug!(
            target: "access",
            method = ?original.method,
            uri = ?original.uri,
            host = ?original.host,
            status = response.status().as_u16(),
            key_id = key_id.map(tracing::field::display),
            "forward auth"
        );
    }
    response
}

/// Where the original request came from: the client address from the forwarding header
/// when `peer` (the connection's, `None` when unknown) is a trusted proxy, else unknown
/// (never `peer` itself: `/auth` is always called by a proxy); the `Origin` header as the
/// proxy passed it on.
fn original_context(gate: &Keygate, peer: Option<IpAddr>, headers: &HeaderMap) -> RequestContext {
    let proxy = peer
        .map(|peer| peer.to_canonical())
        .filter(|peer| gate.trusted_proxies().trusts(*peer));
    // With no peer, the gate reads no forwarding header and leaves the address unknown.
    gate.request_context(proxy, |name| {
        headers.get_all(name).iter().map(HeaderValue::as_bytes)
    })
}

/// The 200 for `principal`, with the identity headers.
fn granted(principal: &Principal) -> Response {
    let scopes = match principal.scopes() {
        None => "*".to_owned(),
        Some(scopes) => {
            let mut joined = String::new();
            for scope in scopes {
                if !joined.is_empty() {
                    joined.push(' ');
                }
                joined.push_str(&encode(scope));
            }
            joined
        }
    };
    let values = [
        (KEY_ID, principal.key_id().to_string()),
        (OWNER, encode(principal.owner_id()).into_owned()),
        (SCOPES, scopes),
    ];
    let mut response = StatusCode::OK.into_response();
    for (name, value) in values {
        // Encoded to visible ASCII and spaces above, so this always succeeds; fail closed
        // all the same. From the `String` itself: its buffer becomes the value, uncopied.
        match HeaderValue::try_from(value) {
            Ok(value) => {
                response.headers_mut().insert(name, value);
            }
            Err(_) => return misconfigured(),
        }
    }
    response
}

/// The library's answer for a refusal, with its error code and description also in
/// [`ERROR`] and [`ERROR_DESCRIPTION`] (for nginx, which can read headers but not bodies).
fn refused(refusal: AuthError) -> Response {
    let fields = error_fields(refusal.outcome().body);
    with_error_headers(refusal.into_response(), fields)
}

/// `response` with [`ERROR`] and [`ERROR_DESCRIPTION`] set from `fields`.
fn with_error_headers(mut response: Response, fields: Option<(&str, &str)>) -> Response {
    if let Some((code, description)) = fields {
        // Codes and descriptions are keygate's own ASCII sentences: always header values.
        if let (Ok(code), Ok(description)) = (
            HeaderValue::from_str(code),
            HeaderValue::from_str(description),
        ) {
            let headers = response.headers_mut();
            headers.insert(ERROR, code);
            headers.insert(ERROR_DESCRIPTION, description);
        }
    }
    response
}

/// `(error, error_description)` of keygate's one error shape,
/// `{"error":"…","error_description":"…"}`, or `None` for another shape.
fn error_fields(body: &str) -> Option<(&str, &str)> {
    let rest = body.strip_prefix(r#"{"error":""#)?;
    let (code, rest) = rest.split_once(r#"","error_description":""#)?;
    let description = rest.strip_suffix(r#""}"#)?;
    let plain = |text: &str| !text.contains(['"', '\\']);
    (plain(code) && plain(description)).then_some((code, description))
}

/// The body of [`misconfigured`].
const MISCONFIGURED: &str =
    r#"{"error":"server_error","error_description":"Forward auth is misconfigured"}"#;

/// `500` with keygate's error shape: the proxy's `/auth` URL is wrong.
fn misconfigured() -> Response {
    let mut response = (StatusCode::INTERNAL_SERVER_ERROR, MISCONFIGURED).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    with_error_headers(response, error_fields(MISCONFIGURED))
}

/// The scopes `/auth?scope=a&scope=b` requires.
fn required_scopes(query: Option<&str>) -> Result<Vec<String>, &'static str> {
    let mut scopes = Vec::new();
    let Some(query) = query else {
        return Ok(scopes);
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "scope" {
            return Err("unknown query parameter (only `scope` is known)");
        }
        let value = decode(value).ok_or("a scope is not valid percent-encoded UTF-8")?;
        if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("a scope is empty or holds whitespace or control characters");
        }
        if scopes.len() >= MAX_SCOPES {
            return Err("more than 16 scopes");
        }
        scopes.push(value);
    }
    Ok(scopes)
}

/// Percent-decodes a query value (`+` is a space, as in forms).
fn decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.bytes();
    while let Some(b) = rest.next() {
        match b {
            b'%' => {
                let hi = char::from(rest.next()?).to_digit(16)?;
                let lo = char::from(rest.next()?).to_digit(16)?;
                bytes.push(u8::try_from(hi.checked_mul(16)?.checked_add(lo)?).ok()?);
            }
            b'+' => bytes.push(b' '),
            other => bytes.push(other),
        }
    }
    String::from_utf8(bytes).ok()
}

/// `text` with `%`, spaces and every byte outside visible ASCII percent-encoded, so it is
/// a header value and reads back exactly (an ASCII id like `user-42` is unchanged).
fn encode(text: &str) -> Cow<'_, str> {
    let plain = |b: u8| (0x21..0x7f).contains(&b) && b != b'%';
    if text.bytes().all(plain) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().saturating_mul(3));
    for b in text.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    Cow::Owned(out)
}

/// The original request, as the proxy describes it, for the log.
struct Original<'a> {
    method: &'a str,
    uri: &'a str,
    host: &'a str,
}

impl<'a> Original<'a> {
    /// nginx: the configured headers (`X-Original-Method`, `X-Original-URI`); Traefik and
    /// Caddy: `X-Forwarded-Method`, `X-Forwarded-Uri`, `X-Forwarded-Host`; else this request.
    fn of(app: &App, method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap) -> Self {
        let header = |names: [&HeaderName; 2]| {
            names
                .into_iter()
                .find_map(|name| headers.get(name)?.to_str().ok())
                .map(clip)
        };
        let method = header([
            app.original_method_header(),
            &HeaderName::from_static("x-forwarded-method"),
        ])
        .unwrap_or(method.as_str());
        let uri = header([
            app.original_uri_header(),
            &HeaderName::from_static("x-forwarded-uri"),
        ])
        .unwrap_or_else(|| clip(uri.path()));
        let host = header([
            &HeaderName::from_static("x-forwarded-host"),
            &axum::http::header::HOST,
        ])
        .unwrap_or("");
        Self { method, uri, host }
    }
}

/// At most [`MAX_LOGGED`] bytes of `text`, cut at a character boundary.
fn clip(text: &str) -> &str {
    if text.len() <= MAX_LOGGED {
        return text;
    }
    let mut end = MAX_LOGGED;
    while !text.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    text.get(..end).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_come_from_the_query() {
        assert_eq!(required_scopes(None).unwrap(), Vec::<String>::new());
        assert_eq!(
            required_scopes(Some("scope=library:read&scope=library%3Awrite")).unwrap(),
            ["library:read", "library:write"]
        );
        assert_eq!(
            required_scopes(Some("scope=biblioth%C3%A8que")).unwrap(),
            ["bibliothèque"]
        );
        for bad in [
            "scopes=a",
            "scope=",
            "scope=a+b",
            "scope=%0a",
            "scope=%zz",
            "scope=%ff",
            "x",
        ] {
            assert!(required_scopes(Some(bad)).is_err(), "{bad}");
        }
        let many = vec!["scope=a"; 17].join("&");
        assert!(required_scopes(Some(&many)).is_err());
    }

    #[test]
    fn every_refusal_names_its_code_in_headers() {
        use keygate::{Rejection, RequestError, VerifyError};
        let gate = Keygate::builder(
            keygate::MemoryStore::new(),
            keygate::Pepper::new(1, [7u8; 32]).unwrap(),
        )
        .build()
        .unwrap();
        let errors = [
            VerifyError::MissingCredentials,
            VerifyError::InvalidRequest(RequestError::MalformedBearer),
            VerifyError::InvalidKey(Rejection::Expired),
            VerifyError::InsufficientScope {
                required: "library:read".into(),
            },
            VerifyError::NetworkNotAllowed,
            VerifyError::OriginNotAllowed,
        ];
        for error in errors {
            let refusal = AuthError::new(error, &gate);
            let body = refusal.outcome().body;
            let response = refused(refusal);
            let code = response.headers()[ERROR].to_str().unwrap().to_owned();
            let description = response.headers()[ERROR_DESCRIPTION].to_str().unwrap();
            assert_eq!(
                body,
                format!(r#"{{"error":"{code}","error_description":"{description}"}}"#)
            );
        }
        let response = misconfigured();
        assert_eq!(response.headers()[ERROR], "server_error");
        assert_eq!(
            error_fields(r#"{"error":"a\"b","error_description":"c"}"#),
            None
        );
        assert_eq!(error_fields("not json"), None);
    }

    #[test]
    fn header_values_read_back_exactly() {
        assert_eq!(encode("user-42"), "user-42");
        assert_eq!(encode("José 50%"), "Jos%C3%A9%2050%25");
        assert_eq!(decode(&encode("José 50%")).unwrap(), "José 50%");
    }

    #[test]
    fn clipping_keeps_characters_whole() {
        let long = "é".repeat(200);
        let clipped = clip(&long);
        assert!(clipped.len() <= MAX_LOGGED && clipped.chars().all(|c| c == 'é'));
    }
}
