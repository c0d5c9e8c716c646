//! axum integration: [`Principal`] as an extractor, [`Require`] guards, and the admin API
//! as a [`Router`].
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
//! async fn upload(Require(principal, ..): Require<LibraryWrite>) -> String {
//!     format!("{} may write", principal.owner_id()) // 403 otherwise
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

use std::marker::PhantomData;

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequestParts, OptionalFromRequestParts, Path, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::admin::{AdminApi, AdminRequest, AdminResponse};
use crate::error::VerifyError;
use crate::gate::Keygate;
use crate::http::HttpOutcome;
use crate::principal::{Permission, Principal};

/// Why the extractor refused a request; renders the RFC 6750 answer with the gate's realm.
#[derive(Debug)]
pub struct AuthRejection {
    error: VerifyError,
    outcome: HttpOutcome,
}

impl AuthRejection {
    fn new(error: VerifyError, gate: &Keygate) -> Self {
        let outcome = gate.http_outcome(&error);
        Self { error, outcome }
    }

    /// The underlying error.
    pub fn error(&self) -> &VerifyError {
        &self.error
    }
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        outcome_response(&self.outcome)
    }
}

/// Renders with the default realm `"api"`; the extractors use the gate's own realm.
impl IntoResponse for VerifyError {
    fn into_response(self) -> Response {
        outcome_response(&self.http("api"))
    }
}

fn outcome_response(outcome: &HttpOutcome) -> Response {
    let status = StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, outcome.body).into_response();
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
    response
}

async fn verify_parts(parts: &mut Parts, gate: &Keygate) -> Result<Principal, AuthRejection> {
    if let Some(principal) = parts.extensions.get::<Principal>() {
        return Ok(principal.clone());
    }
    let values = parts
        .headers
        .get_all(AUTHORIZATION)
        .iter()
        .map(HeaderValue::as_bytes);
    let principal = gate
        .verify_headers(values)
        .await
        .map_err(|e| AuthRejection::new(e, gate))?;
    parts.extensions.insert(principal.clone());
    Ok(principal)
}

/// `Principal` as an extractor: 401, 400 or 503 (see [`crate::http`]) unless the request
/// carries a valid key. Verified once per request, even when extracted several times.
impl<S> FromRequestParts<S> for Principal
where
    Keygate: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthRejection;

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
    type Rejection = AuthRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        match verify_parts(parts, &Keygate::from_ref(state)).await {
            Ok(principal) => Ok(Some(principal)),
            Err(rejection) if matches!(rejection.error, VerifyError::MissingCredentials) => {
                Ok(None)
            }
            Err(rejection) => Err(rejection),
        }
    }
}

/// A verified principal that is allowed `P`: 403 `insufficient_scope` otherwise.
///
/// ```
/// # use keygate::{axum::Require, Permission};
/// struct Admin;
/// impl Permission for Admin { const NAME: &'static str = "admin"; }
///
/// async fn handler(Require(principal, ..): Require<Admin>) -> String {
///     principal.key_name().to_owned()
/// }
/// ```
pub struct Require<P: Permission>(pub Principal, pub PhantomData<P>);

impl<P: Permission> std::fmt::Debug for Require<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Require")
            .field(&P::NAME)
            .field(&self.0)
            .finish()
    }
}

impl<S, P> FromRequestParts<S> for Require<P>
where
    Keygate: FromRef<S>,
    S: Send + Sync,
    P: Permission,
{
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let gate = Keygate::from_ref(state);
        let principal = verify_parts(parts, &gate).await?;
        principal
            .require(P::NAME)
            .map_err(|e| AuthRejection::new(e, &gate))?;
        Ok(Require(principal, PhantomData))
    }
}

impl FromRef<AdminApi> for Keygate {
    fn from_ref(api: &AdminApi) -> Self {
        api.gate().clone()
    }
}

impl IntoResponse for AdminResponse {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, self.body).into_response();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        if let Some(secs) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(challenge) = self
            .www_authenticate
            .and_then(|c| HeaderValue::from_str(&c).ok())
        {
            headers.insert(WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

/// The admin API ([`crate::admin`]) at `path` (e.g. `/api/api-keys`), as a router to
/// [`merge`](Router::merge) into the application. Both `path` and `path/` serve the list
/// and create routes, as Audiobookshelf's Express router does. Every route verifies the
/// caller's key and requires [`AdminApi::is_admin`] (the admin permission, explicitly
/// granted); what an admin may do is bounded by its own key (see [`crate::admin`]).
pub fn admin_routes<S>(path: &str, api: AdminApi) -> Router<S> {
    let path = path.trim_end_matches('/');
    Router::new()
        .route(path, get(list).post(create))
        .route(&format!("{path}/"), get(list).post(create))
        .route(
            &format!("{path}/{{id}}"),
            get(show).patch(update).delete(delete),
        )
        .route(&format!("{path}/{{id}}/rotate"), post(rotate))
        .with_state(api)
}

/// The admin API as a router to [`nest`](Router::nest). Note that axum 0.8's `nest` does
/// not serve the collection with a trailing slash (`/api/api-keys/`); prefer
/// [`admin_routes`], which does.
pub fn admin_router<S>(api: AdminApi) -> Router<S> {
    Router::new()
        .route("/", get(list).post(create))
        .route("/{id}", get(show).patch(update).delete(delete))
        .route("/{id}/rotate", post(rotate))
        .with_state(api)
}

async fn list(State(api): State<AdminApi>, caller: Principal, uri: Uri) -> AdminResponse {
    api.handle(&caller, AdminRequest::List { query: uri.query() })
        .await
}

async fn create(State(api): State<AdminApi>, caller: Principal, body: Bytes) -> AdminResponse {
    api.handle(&caller, AdminRequest::Create { body: &body })
        .await
}

async fn show(
    State(api): State<AdminApi>,
    caller: Principal,
    Path(id): Path<String>,
) -> AdminResponse {
    api.handle(&caller, AdminRequest::Get { id: &id }).await
}

async fn update(
    State(api): State<AdminApi>,
    caller: Principal,
    Path(id): Path<String>,
    body: Bytes,
) -> AdminResponse {
    api.handle(
        &caller,
        AdminRequest::Update {
            id: &id,
            body: &body,
        },
    )
    .await
}

async fn delete(
    State(api): State<AdminApi>,
    caller: Principal,
    Path(id): Path<String>,
) -> AdminResponse {
    api.handle(&caller, AdminRequest::Delete { id: &id }).await
}

async fn rotate(
    State(api): State<AdminApi>,
    caller: Principal,
    Path(id): Path<String>,
    body: Bytes,
) -> AdminResponse {
    api.handle(
        &caller,
        AdminRequest::Rotate {
            id: &id,
            body: &body,
        },
    )
    .await
}
