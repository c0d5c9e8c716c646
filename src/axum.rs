//! axum integration: [`Principal`] as an extractor, [`Require`] guards, the
//! [`Authenticate`] layer for whole routers, and the admin API as a [`Router`].
//!
//! The [`Keygate`] is reached through the router state with [`FromRef`], so any state that
//! holds one works:
//!
//! ```
//! use axum::{extract::FromRef, routing::get, Json, Router};
//! use keygate::{axum::Require, Keygate, Permission, Principal};
//!
//! #[derive(Clone)]
//! struct AppState {
//!     gate: Keygate,
//! }
//!
//! impl FromRef<AppState> for Keygate {
//!     fn from_ref(state: &AppState) -> Self {
//!         state.gate.clone()
//!     }
//! }
//!
//! struct LibraryWrite;
//! impl Permission for LibraryWrite {
//!     const NAME: &'static str = "library:write";
//! }
//!
//! async fn me(principal: Principal) -> Json<Principal> {
//!     Json(principal) // 401/400/503 were answered before we got here
//! }
//!
//! async fn upload(writer: Require<LibraryWrite>) -> String {
//!     format!("{} may write", writer.owner_id()) // 403 otherwise
//! }
//!
//! async fn hello(principal: Option<Principal>) -> String {
//!     match principal {
//!         Some(p) => format!("hello {}", p.owner_id()),
//!         None => "hello stranger".into(), // no credentials at all; a bad key is still 401
//!     }
//! }
//!
//! fn app(gate: Keygate) -> Router {
//!     // Admins: keys whose owner the directory grants "admin" (or a key scoped to it).
//!     let admin = keygate::admin::AdminApi::new(gate.clone());
//!     Router::new()
//!         .route("/api/me", get(me))
//!         .route("/api/upload", axum::routing::post(upload))
//!         .route("/hello", get(hello))
//!         .merge(keygate::axum::admin_routes("/api/api-keys", admin))
//!         .with_state(AppState { gate })
//! }
//! ```
//!
//! ## Protecting a whole router
//!
//! [`Authenticate`] is a tower layer with the options of actix's middleware: every request
//! through it is verified (once; the extractors behind it reuse the [`Principal`] it puts
//! in the request extensions), and refused before any handler runs.
//!
//! ```
//! use axum::{routing::get, Extension, Router};
//! use keygate::axum::Authenticate;
//! use keygate::{Keygate, Principal};
//!
//! async fn stats(Extension(principal): Extension<Principal>) -> String {
//!     format!("stats for {}", principal.owner_id())
//! }
//!
//! fn app(gate: Keygate) -> Router {
//!     let stats_routes = Router::new()
//!         .route("/api/stats", get(stats))
//!         .layer(Authenticate::required(gate.clone()).permission("stats:read"));
//!     Router::new()
//!         .route("/hello", get(|| async { "open" }))
//!         .merge(stats_routes)
//! }
//! ```
//!
//! The layer also renders, with its gate's realm, a [`VerifyError`] that a handler behind
//! it returns (`principal.require("x")?`); without a layer such an error has no gate at
//! hand and names the default realm `"api"`. Wrap the whole application in
//! [`Authenticate::optional`] to have every answer name your realm.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{FromRef, FromRequest, FromRequestParts, OptionalFromRequestParts, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;

use crate::admin::page::PageResponse;
use crate::admin::{AdminApi, AdminPage, AdminResponse, AdminRoute};
use crate::error::VerifyError;
use crate::gate::Keygate;
use crate::http::{AuthError, HttpOutcome};
pub use crate::http::{Authenticate, Require};
use crate::principal::{Permission, Principal};

/// Renders the refusal: its status, `WWW-Authenticate`, `Retry-After` and JSON body. A
/// refusal made from a [`VerifyError`] with no gate at hand (the default realm) is
/// re-rendered with its gate's realm by an [`Authenticate`] layer around the handler.
impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let mut response = outcome_response(self.outcome());
        if self.has_default_realm() {
            if let Some(error) = self.into_error() {
                response
                    .extensions_mut()
                    .insert(DefaultRealm(Arc::new(error)));
            }
        }
        response
    }
}

/// A [`VerifyError`] rendered without a gate at hand, kept in the response extensions so
/// that an [`Authenticate`] layer around the handler can name its gate's realm instead.
#[derive(Clone)]
struct DefaultRealm(Arc<VerifyError>);

/// Renders with the default realm `"api"`, for `?` on [`Principal::require`] in handlers;
/// an [`Authenticate`] layer around the handler replaces it with its gate's realm. The
/// extractors always use the gate's own realm.
impl IntoResponse for VerifyError {
    fn into_response(self) -> Response {
        AuthError::from(self).into_response()
    }
}

/// Re-renders the challenge of a [`VerifyError`] answered with the default realm, now that
/// `gate` is known.
fn with_realm(mut response: Response, gate: &Keygate) -> Response {
    if let Some(DefaultRealm(error)) = response.extensions_mut().remove::<DefaultRealm>() {
        let challenge = gate
            .http_outcome(&error)
            .www_authenticate
            .and_then(|v| HeaderValue::from_str(&v).ok());
        if let Some(challenge) = challenge {
            response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
        }
    }
    response
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn outcome_response(outcome: &HttpOutcome) -> Response {
    let mut response = (status(outcome.status), outcome.body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(challenge) = outcome
        .www_authenticate
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        headers.insert(WWW_AUTHENTICATE, challenge);
    }
    if let Some(secs) = outcome.retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    add_headers(headers, &outcome.headers);
    response
}

/// Adds `extra` (static lowercase names) to `headers`, keeping any already set.
fn add_headers(headers: &mut axum::http::HeaderMap, extra: &[(&'static str, String)]) {
    for (name, value) in extra {
        let name = HeaderName::from_static(name);
        if headers.contains_key(&name) {
            continue;
        }
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
}

/// Left in the extensions by an optional [`Authenticate`] layer that found no credentials,
/// so the extractors behind it do not read (and count) the absent header again.
#[derive(Clone, Copy)]
struct Anonymous;

async fn verify_parts(parts: &mut Parts, gate: &Keygate) -> Result<Principal, AuthError> {
    if let Some(principal) = parts.extensions.get::<Principal>() {
        return Ok(principal.clone());
    }
    if parts.extensions.get::<Anonymous>().is_some() {
        return Err(AuthError::new(VerifyError::MissingCredentials, gate));
    }
    let values = parts
        .headers
        .get_all(AUTHORIZATION)
        .iter()
        .map(HeaderValue::as_bytes);
    let principal = gate
        .verify_headers(values)
        .await
        .map_err(|e| AuthError::new(e, gate))?;
    parts.extensions.insert(principal.clone());
    Ok(principal)
}

/// `Principal` as an extractor: 401, 400 or 503 (see [`crate::http`]) unless the request
/// carries a valid key. Verified once per request, even when extracted several times or
/// behind an [`Authenticate`] layer.
impl<S> FromRequestParts<S> for Principal
where
    Keygate: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        verify_parts(parts, &Keygate::from_ref(state)).await
    }
}

/// `Option<Principal>`: `None` when the request has no bearer credentials at all. A key
/// that is there but bad is still refused (401), and an unavailable store is still 503: a
/// broken key never silently downgrades to anonymous.
impl<S> OptionalFromRequestParts<S> for Principal
where
    Keygate: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        match verify_parts(parts, &Keygate::from_ref(state)).await {
            Ok(principal) => Ok(Some(principal)),
            Err(rejection) if rejection.is_missing_credentials() => Ok(None),
            Err(rejection) => Err(rejection),
        }
    }
}

/// [`Require<P>`](Require) as an extractor: the request's [`Principal`], refused with 403
/// `insufficient_scope` unless it allows `P`.
impl<S, P> FromRequestParts<S> for Require<P>
where
    Keygate: FromRef<S>,
    S: Send + Sync,
    P: Permission,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let gate = Keygate::from_ref(state);
        let principal = verify_parts(parts, &gate).await?;
        principal
            .require(P::NAME)
            .map_err(|e| AuthError::new(e, &gate))?;
        Ok(Require::checked(principal))
    }
}

/// The axum side of [`Authenticate`]: verifying a request in a tower service.
impl Authenticate {
    /// Verifies `request` (once: a principal already in its extensions is reused) and
    /// checks the permissions; on success the principal is in the extensions.
    async fn admit<B>(&self, request: &mut Request<B>) -> Result<(), VerifyError> {
        if let Some(principal) = request.extensions().get::<Principal>() {
            return self.permits(principal);
        }
        let values = request
            .headers()
            .get_all(AUTHORIZATION)
            .iter()
            .map(HeaderValue::as_bytes);
        match self.gate.verify_headers(values).await {
            Ok(principal) => {
                self.permits(&principal)?;
                request.extensions_mut().insert(principal);
                Ok(())
            }
            Err(VerifyError::MissingCredentials) if self.optional => {
                request.extensions_mut().insert(Anonymous);
                Ok(())
            }
            Err(error) => Err(error),
        }
    }
}

/// [`Authenticate`] as a tower layer: `Router::layer(Authenticate::required(gate))`.
impl<S> tower_layer::Layer<S> for Authenticate {
    type Service = AuthenticateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthenticateService {
            inner,
            config: Arc::new(self.clone()),
        }
    }
}

/// The service [`Authenticate`] wraps around the routes; not used directly.
#[derive(Clone)]
pub struct AuthenticateService<S> {
    inner: S,
    config: Arc<Authenticate>,
}

impl<S> std::fmt::Debug for AuthenticateService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthenticateService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S, B> tower_service::Service<Request<B>> for AuthenticateService<S>
where
    S: tower_service::Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The ready service answers this request; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = Arc::clone(&self.config);
        Box::pin(async move {
            if let Err(error) = config.admit(&mut request).await {
                return Ok(AuthError::new(error, &config.gate).into_response());
            }
            let allowance = config
                .allowance_headers
                .then(|| request.extensions().get::<Principal>())
                .flatten()
                .and_then(Principal::allowance)
                .map(crate::http::allowance_headers);
            let mut response = with_realm(inner.call(request).await?, &config.gate);
            if let Some(allowance) = allowance {
                add_headers(response.headers_mut(), &allowance);
            }
            Ok(response)
        })
    }
}

impl FromRef<AdminApi> for Keygate {
    fn from_ref(api: &AdminApi) -> Self {
        api.gate().clone()
    }
}

/// Renders an admin answer: its status, body and [headers](AdminResponse::headers).
impl IntoResponse for AdminResponse {
    fn into_response(self) -> Response {
        let mut response = status(self.status).into_response();
        for (name, value) in self.headers() {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(name), value);
            }
        }
        *response.body_mut() = Body::from(self.body);
        response
    }
}

/// The admin API and where it is mounted, for the catch-all handler.
#[derive(Clone)]
struct Mounted {
    api: AdminApi,
    /// The mount path without a trailing slash (`""` under [`Router::nest`]).
    mount: Arc<str>,
}

/// The admin API ([`crate::admin`]) at `path` (e.g. `/api/api-keys`), as a router to
/// [`merge`](Router::merge) into the application. Both `path` and `path/` serve the list
/// and create routes, as Audiobookshelf's Express router does. Every route verifies the
/// caller's key and requires [`AdminApi::is_admin`] (the admin permission, explicitly
/// granted); what an admin may do is bounded by its own key (see [`crate::admin`]).
///
/// One handler serves every path under `path`: [`AdminRoute::resolve`] routes it (404 and
/// 405 before the key is verified), then the key is verified, then the body is read
/// (axum's [`DefaultBodyLimit`](axum::extract::DefaultBodyLimit) applies; 413 beyond it).
pub fn admin_routes<S>(path: &str, api: AdminApi) -> Router<S> {
    let mount = path.trim_end_matches('/');
    let state = Mounted {
        api,
        mount: Arc::from(mount),
    };
    let router = if mount.is_empty() {
        Router::new()
    } else {
        Router::new().route(mount, any(admin))
    };
    router
        .route(&format!("{mount}/"), any(admin))
        .route(&format!("{mount}/{{*rest}}"), any(admin))
        .with_state(state)
}

/// The one admin handler: route, verify, read the body, handle.
async fn admin(State(mounted): State<Mounted>, request: Request<Body>) -> Response {
    let (mut parts, body) = request.into_parts();
    let uri = parts.uri.clone();
    let Some(path) = uri.path().strip_prefix(&*mounted.mount) else {
        return AdminResponse::no_route().into_response();
    };
    let route = match AdminRoute::resolve(parts.method.as_str(), path) {
        Ok(route) => route,
        Err(answer) => return answer.into_response(),
    };
    let caller = match verify_parts(&mut parts, mounted.api.gate()).await {
        Ok(caller) => caller,
        Err(rejection) => return rejection.into_response(),
    };
    let body = if route.reads_body() {
        match Bytes::from_request(Request::from_parts(parts, body), &()).await {
            Ok(body) => body,
            Err(rejection) => {
                return AdminResponse::unreadable_body(rejection.status().as_u16()).into_response()
            }
        }
    } else {
        Bytes::new()
    };
    mounted
        .api
        .handle(&caller, route.request(uri.query(), &body))
        .await
        .into_response()
}

/// Renders a page answer: its status, headers and body.
impl IntoResponse for PageResponse {
    fn into_response(self) -> Response {
        let mut response = status(self.status).into_response();
        for (name, value) in &self.headers {
            if let Ok(value) = HeaderValue::from_str(value) {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(name), value);
            }
        }
        *response.body_mut() = match self.body {
            std::borrow::Cow::Borrowed(bytes) => Body::from(Bytes::from_static(bytes)),
            std::borrow::Cow::Owned(bytes) => Body::from(bytes),
        };
        response
    }
}

/// The admin page and where it is mounted, for its handler.
#[derive(Clone)]
struct MountedPage {
    page: AdminPage,
    /// The mount path without a trailing slash.
    mount: Arc<str>,
}

/// The [admin page](crate::admin::page) at `path` (e.g. `/admin`), as a router to
/// [`merge`](Router::merge) into the application beside the
/// [admin API](admin_routes) it calls (at [`AdminPage::api_base`], `/api/api-keys` by
/// default, on the same origin). `path` redirects to `path/`, which serves the page;
/// its assets are under `path/`. Every answer carries the page's Content-Security-Policy
/// and security headers ([`crate::admin::page`]). The page itself holds no secret and
/// needs no key; everything it shows comes from the admin API, with the key the admin
/// signs in with.
///
/// ```
/// use axum::Router;
/// use keygate::admin::{AdminApi, AdminPage};
/// use keygate::axum::{admin_page, admin_routes};
///
/// # fn demo(gate: keygate::Keygate) {
/// let app: Router = Router::new()
///     .merge(admin_routes("/api/api-keys", AdminApi::new(gate)))
///     .merge(admin_page("/admin", AdminPage::new().api_base("/api/api-keys")));
/// # let _ = app; }
/// ```
pub fn admin_page<S>(path: &str, page: AdminPage) -> Router<S> {
    let mount = path.trim_end_matches('/');
    let state = MountedPage {
        page,
        mount: Arc::from(mount),
    };
    let router = if mount.is_empty() {
        Router::new()
    } else {
        Router::new().route(mount, any(page_handler))
    };
    router
        .route(&format!("{mount}/"), any(page_handler))
        .route(&format!("{mount}/{{*rest}}"), any(page_handler))
        .with_state(state)
}

/// The admin page's one handler: the file the path names, or a redirect, 404 or 405.
async fn page_handler(State(mounted): State<MountedPage>, request: Request<Body>) -> Response {
    let path = request.uri().path();
    let Some(rest) = path.strip_prefix(&*mounted.mount) else {
        return PageResponse::not_found().into_response();
    };
    mounted
        .page
        .respond_at(&mounted.mount, request.method().as_str(), rest)
        .into_response()
}
