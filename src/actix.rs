//! actix-web integration: [`Principal`] as an extractor, [`OptionalPrincipal`] and
//! [`Require`] guards, the [`Authenticate`] middleware, and the admin API as a [`Scope`].
//!
//! Parsing and the HTTP answers come from the framework-free layer ([`crate::http`],
//! [`VerifyError::http`]), so actix and axum answer every request identically.
//!
//! The extractors find the [`Keygate`] in, in order: the request extensions (put there by
//! [`Authenticate`]), `app_data::<web::Data<Keygate>>()` (which [`admin_scope`] registers
//! for its own routes), then `app_data::<Keygate>()`. A handler reached with none of these answers
//! `500 Internal Server Error` and logs why; it never lets the request through.
//!
//! ```
//! use actix_web::{test, web, App, HttpResponse};
//! use keygate::actix::{admin_scope, Authenticate, OptionalPrincipal, Require};
//! use keygate::admin::AdminApi;
//! use keygate::{Keygate, MemoryStore, NewKey, Pepper, Permission, Principal};
//!
//! struct LibraryWrite;
//! impl Permission for LibraryWrite {
//!     const NAME: &'static str = "library:write";
//! }
//!
//! async fn me(principal: Principal) -> HttpResponse {
//!     HttpResponse::Ok().json(principal) // 401/400/503 were answered before we got here
//! }
//!
//! async fn upload(writer: Require<LibraryWrite>) -> String {
//!     format!("{} may write", writer.owner_id()) // 403 otherwise
//! }
//!
//! async fn hello(OptionalPrincipal(principal): OptionalPrincipal) -> String {
//!     match principal {
//!         Some(p) => format!("hello {}", p.owner_id()),
//!         None => "hello stranger".into(), // no credentials at all; a bad key is still 401
//!     }
//! }
//!
//! async fn stats(principal: web::ReqData<Principal>) -> String {
//!     format!("stats for {}", principal.owner_id()) // put there by the middleware
//! }
//!
//! fn routes(cfg: &mut web::ServiceConfig, gate: &Keygate) {
//!     // Admins: keys whose owner the directory grants "admin" (or a key scoped to it).
//!     let admin = AdminApi::new(gate.clone());
//!     cfg.app_data(web::Data::new(gate.clone()))
//!         .route("/api/me", web::get().to(me))
//!         .route("/api/upload", web::post().to(upload))
//!         .route("/hello", web::get().to(hello))
//!         .service(
//!             web::scope("/api/stats")
//!                 .wrap(Authenticate::required(gate.clone()).permission("stats:read"))
//!                 .route("", web::get().to(stats)),
//!         )
//!         .service(admin_scope("/api/api-keys", admin));
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! actix_web::rt::System::new().block_on(async {
//!     let gate = Keygate::builder(MemoryStore::new(), Pepper::new(1, b"load me from a secret store, 32+ bytes")?)
//!
//!         .build()?;
//!     let key = gate.mint(NewKey::new("Backup Script", "user-1")).await?.key;
//!
//!     // In a server: HttpServer::new(move || App::new().configure(|c| routes(c, &gate)))
//!     let app = test::init_service(App::new().configure(|c| routes(c, &gate))).await;
//!     let request = test::TestRequest::get()
//!         .uri("/api/me")
//!         .insert_header(("Authorization", format!("Bearer {}", key.expose())))
//!         .to_request();
//!     assert_eq!(test::call_service(&app, request).await.status(), 200);
//!
//!     let anonymous = test::TestRequest::get().uri("/api/me").to_request();
//!     assert_eq!(test::call_service(&app, anonymous).await.status(), 401);
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })
//! # }
//! ```
//!
//! ## Optional authentication
//!
//! actix-web's own `Option<T>` extractor turns *every* error into `None`, so a handler
//! taking `Option<Principal>` does work, but sees a wrong, expired or revoked key, and an
//! unavailable store, as an anonymous request. Take [`OptionalPrincipal`] instead: `None`
//! only when the request carries no bearer credentials at all, 401 for a bad key, 503
//! when the store is down. (`Result<Principal, AuthError>`, with
//! [`keygate::http::AuthError`](crate::http::AuthError), hands every outcome to the handler.)

use std::fmt;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::rc::Rc;

use actix_web::body::{BoxBody, EitherBody};
use actix_web::dev::{forward_ready, Payload, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{
    HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use actix_web::http::StatusCode;
use actix_web::{
    web, Error, FromRequest, HttpMessage, HttpRequest, HttpResponse, Responder, ResponseError,
    Scope,
};

use crate::admin::page::PageResponse;
use crate::admin::{AdminApi, AdminPage, AdminResponse, AdminRoute};
use crate::error::VerifyError;
use crate::gate::Keygate;
use crate::http::{AuthError, HttpOutcome, DEFAULT_REALM};
pub use crate::http::{Authenticate, Require};
use crate::principal::{Permission, Principal};

type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// Renders the refusal: its status, `WWW-Authenticate`, `Retry-After` and JSON body. A
/// refusal made from a [`VerifyError`] with no gate at hand (the default realm) is
/// re-rendered with its gate's realm by an [`Authenticate`] middleware around the handler.
impl ResponseError for AuthError {
    fn status_code(&self) -> StatusCode {
        status(self.outcome().status)
    }

    fn error_response(&self) -> HttpResponse {
        outcome_response(self.outcome())
    }
}

/// Renders with the default realm `"api"` (see [`VerifyError::http`]), so handlers can
/// `?` a [`Principal::require`]; an [`Authenticate`] middleware around the handler
/// replaces it with its gate's realm. The extractors and the middleware's own refusals
/// always use the gate's realm.
impl ResponseError for VerifyError {
    fn status_code(&self) -> StatusCode {
        status(self.http(DEFAULT_REALM).status)
    }

    fn error_response(&self) -> HttpResponse {
        outcome_response(&self.http(DEFAULT_REALM))
    }
}

/// Re-renders the challenge of a [`VerifyError`] a handler answered with the default
/// realm (on its own, or as an [`AuthError`] made with `From`), now that `gate` is known.
fn with_realm<B>(mut response: ServiceResponse<B>, gate: &Keygate) -> ServiceResponse<B> {
    let outcome = response.response().error().and_then(|error| {
        if let Some(error) = error.as_error::<VerifyError>() {
            Some(gate.http_outcome(error))
        } else {
            error
                .as_error::<AuthError>()
                .filter(|auth| auth.has_default_realm())
                .and_then(AuthError::error)
                .map(|error| gate.http_outcome(error))
        }
    });
    if let Some(challenge) = outcome
        .and_then(|outcome| outcome.www_authenticate)
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
    }
    response
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn outcome_response(outcome: &HttpOutcome) -> HttpResponse {
    let mut response = HttpResponse::build(status(outcome.status));
    response.insert_header((CONTENT_TYPE, "application/json"));
    if let Some(challenge) = outcome
        .www_authenticate
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        response.insert_header((WWW_AUTHENTICATE, challenge));
    }
    if let Some(secs) = outcome.retry_after {
        response.insert_header((RETRY_AFTER, secs));
    }
    for (name, value) in &outcome.headers {
        response.insert_header((*name, value.as_str()));
    }
    response.body(outcome.body)
}

/// The gate a middleware verified with, for the extractors behind it.
#[derive(Clone)]
struct GateInRequest(Keygate);

fn gate_for(req: &HttpRequest) -> Option<Keygate> {
    let from_middleware = req.extensions().get::<GateInRequest>().map(|g| g.0.clone());
    from_middleware
        .or_else(|| {
            req.app_data::<web::Data<Keygate>>()
                .map(|d| d.get_ref().clone())
        })
        .or_else(|| req.app_data::<Keygate>().cloned())
}

fn realm_for(req: &HttpRequest) -> String {
    gate_for(req).map_or_else(|| DEFAULT_REALM.to_owned(), |g| g.realm().to_owned())
}

/// Left in the extensions by an optional [`Authenticate`] that found no credentials, so
/// the extractors behind it do not read (and count) the absent header again.
#[derive(Clone, Copy)]
struct Anonymous;

/// The request's principal: from the extensions, else verified (once) and cached there.
async fn principal_from(req: &HttpRequest) -> Result<Principal, AuthError> {
    let cached = req.extensions().get::<Principal>().cloned();
    if let Some(principal) = cached {
        return Ok(principal);
    }
    let Some(gate) = gate_for(req) else {
        return Err(AuthError::unconfigured());
    };
    if req.extensions().get::<Anonymous>().is_some() {
        return Err(AuthError::new(VerifyError::MissingCredentials, &gate));
    }
    let values = req
        .headers()
        .get_all(AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let principal = gate
        .verify_headers(values)
        .await
        .map_err(|e| AuthError::new(e, &gate))?;
    req.extensions_mut().insert(principal.clone());
    Ok(principal)
}

/// `Principal` as an extractor: 401, 400 or 503 (see [`crate::http`]) unless the request
/// carries a valid key, and 500 if no [`Keygate`] is configured. Verified once per
/// request, even when extracted several times.
impl FromRequest for Principal {
    type Error = AuthError;
    type Future = LocalBoxFuture<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { principal_from(&req).await })
    }
}

/// An optional principal: `None` only when the request carries no bearer credentials at
/// all. A key that is there but bad is still refused (401), a malformed header is 400, and
/// an unavailable store is 503: a broken key never silently downgrades to anonymous.
///
/// Prefer it to `Option<Principal>`, which actix-web builds by turning *every* error into
/// `None`.
///
/// ```
/// use keygate::actix::OptionalPrincipal;
///
/// async fn hello(OptionalPrincipal(principal): OptionalPrincipal) -> String {
///     match principal {
///         Some(p) => format!("hello {}", p.owner_id()),
///         None => "hello stranger".into(),
///     }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct OptionalPrincipal(pub Option<Principal>);

impl OptionalPrincipal {
    /// The principal, if the request had credentials.
    pub fn into_inner(self) -> Option<Principal> {
        self.0
    }
}

impl FromRequest for OptionalPrincipal {
    type Error = AuthError;
    type Future = LocalBoxFuture<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            match principal_from(&req).await {
                Ok(principal) => Ok(OptionalPrincipal(Some(principal))),
                Err(error) if error.is_missing_credentials() => Ok(OptionalPrincipal(None)),
                Err(error) => Err(error),
            }
        })
    }
}

/// [`Require<P>`](Require) as an extractor: the request's [`Principal`], refused with 403
/// `insufficient_scope` unless it allows `P`.
impl<P: Permission> FromRequest for Require<P> {
    type Error = AuthError;
    type Future = LocalBoxFuture<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let principal = principal_from(&req).await?;
            principal
                .require(P::NAME)
                .map_err(|e| AuthError::with_realm(e, &realm_for(&req)))?;
            Ok(Require::checked(principal))
        })
    }
}

/// The actix-web side of [`Authenticate`]: verifying a request in a middleware.
impl Authenticate {
    async fn check(&self, req: &ServiceRequest) -> Result<(), VerifyError> {
        req.extensions_mut()
            .insert(GateInRequest(self.gate.clone()));
        let cached = req.extensions().get::<Principal>().cloned();
        let principal = match cached {
            Some(principal) => principal,
            None => {
                let values = req
                    .headers()
                    .get_all(AUTHORIZATION)
                    .map(HeaderValue::as_bytes);
                match self.gate.verify_headers(values).await {
                    Ok(principal) => {
                        req.extensions_mut().insert(principal.clone());
                        principal
                    }
                    Err(VerifyError::MissingCredentials) if self.optional => {
                        req.extensions_mut().insert(Anonymous);
                        return Ok(());
                    }
                    Err(error) => return Err(error),
                }
            }
        };
        self.permits(&principal)
    }
}

/// [`Authenticate`] as actix-web middleware: `wrap(Authenticate::required(gate))`.
impl<S, B> Transform<S, ServiceRequest> for Authenticate
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = AuthenticateMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(AuthenticateMiddleware {
            service: Rc::new(service),
            config: Rc::new(self.clone()),
        }))
    }
}

/// The service [`Authenticate`] wraps around the next one; not used directly.
pub struct AuthenticateMiddleware<S> {
    service: Rc<S>,
    config: Rc<Authenticate>,
}

impl<S> fmt::Debug for AuthenticateMiddleware<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthenticateMiddleware")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<ServiceRequest> for AuthenticateMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = LocalBoxFuture<Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let service = Rc::clone(&self.service);
        let config = Rc::clone(&self.config);
        Box::pin(async move {
            match config.check(&req).await {
                Ok(()) => {
                    let allowance = config
                        .allowance_headers
                        .then(|| {
                            req.extensions()
                                .get::<Principal>()
                                .and_then(Principal::allowance)
                                .map(crate::http::allowance_headers)
                        })
                        .flatten();
                    service.call(req).await.map(|r| {
                        let mut r = with_realm(r, &config.gate);
                        for (name, value) in allowance.iter().flatten() {
                            let name = actix_web::http::header::HeaderName::from_static(name);
                            if r.headers().contains_key(&name) {
                                continue;
                            }
                            if let Ok(value) = HeaderValue::from_str(value) {
                                r.headers_mut().insert(name, value);
                            }
                        }
                        r.map_into_left_body()
                    })
                }
                Err(error) => {
                    let response = AuthError::new(error, &config.gate).error_response();
                    Ok(req.into_response(response).map_into_right_body())
                }
            }
        })
    }
}

/// Renders an admin answer: its status, body and [headers](AdminResponse::headers).
impl Responder for AdminResponse {
    type Body = BoxBody;

    fn respond_to(self, _req: &HttpRequest) -> HttpResponse<Self::Body> {
        let mut response = HttpResponse::build(status(self.status));
        for (name, value) in self.headers() {
            response.insert_header((name, value));
        }
        response.body(self.body)
    }
}

/// The admin API ([`crate::admin`]) as a [`Scope`] mounted at `path`, e.g.
/// `/api/api-keys`. Both `path` and `path/` reach the list and create routes. Every route
/// verifies the caller's key with the admin API's gate (so the app need not register
/// one) and requires [`AdminApi::is_admin`] (the admin permission, explicitly granted);
/// what an admin may do is bounded by its own key (see [`crate::admin`]).
///
/// One handler serves every path under `path`: [`AdminRoute::resolve`] routes it (404 and
/// 405 before the key is verified), then the key is verified, then the body is read
/// (actix's [`PayloadConfig`](web::PayloadConfig) applies; 413 beyond its limit).
///
/// ```
/// use actix_web::App;
/// use keygate::admin::AdminApi;
///
/// # fn demo(gate: keygate::Keygate) {
/// let admin = AdminApi::new(gate); // callers explicitly granted "admin"
/// let app = App::new().service(keygate::actix::admin_scope("/api/api-keys", admin));
/// # let _ = app; }
/// ```
pub fn admin_scope(path: &str, api: AdminApi) -> Scope {
    web::scope(path.trim_end_matches('/'))
        .app_data(web::Data::new(api.gate().clone()))
        .app_data(web::Data::new(api))
        .default_service(web::to(admin))
}

/// The one admin handler: route, verify, read the body, handle.
async fn admin(req: HttpRequest, payload: web::Payload, api: web::Data<AdminApi>) -> HttpResponse {
    let route = match AdminRoute::resolve(req.method().as_str(), req.match_info().unprocessed()) {
        Ok(route) => route,
        Err(answer) => return answer.respond_to(&req),
    };
    let caller = match principal_from(&req).await {
        Ok(caller) => caller,
        Err(error) => return error.error_response(),
    };
    let body = if route.reads_body() {
        match web::Bytes::from_request(&req, &mut payload.into_inner()).await {
            Ok(body) => body,
            Err(error) => {
                let status = error.as_response_error().status_code().as_u16();
                return AdminResponse::unreadable_body(status).respond_to(&req);
            }
        }
    } else {
        web::Bytes::new()
    };
    let query = Some(req.query_string()).filter(|q| !q.is_empty());
    api.handle(&caller, route.request(query, &body))
        .await
        .respond_to(&req)
}

/// Renders a page answer: its status, headers and body.
impl Responder for PageResponse {
    type Body = BoxBody;

    fn respond_to(self, _req: &HttpRequest) -> HttpResponse<Self::Body> {
        let mut response = HttpResponse::build(status(self.status));
        for (name, value) in self.headers {
            response.insert_header((name, value));
        }
        match self.body {
            std::borrow::Cow::Borrowed(bytes) => response.body(web::Bytes::from_static(bytes)),
            std::borrow::Cow::Owned(bytes) => response.body(bytes),
        }
    }
}

/// The admin page and its mount path, for its handler.
struct MountedPage {
    page: AdminPage,
    mount: String,
}

/// The [admin page](crate::admin::page) as a [`Scope`] mounted at `path` (e.g.
/// `/admin`), beside the [admin API](admin_scope) it calls (at [`AdminPage::api_base`],
/// `/api/api-keys` by default, on the same origin). `path` redirects to `path/`, which
/// serves the page; its assets are under `path/`. Every answer carries the page's
/// Content-Security-Policy and security headers ([`crate::admin::page`]).
///
/// ```
/// use actix_web::App;
/// use keygate::actix::{admin_page_scope, admin_scope};
/// use keygate::admin::{AdminApi, AdminPage};
///
/// # fn demo(gate: keygate::Keygate) {
/// let app = App::new()
///     .service(admin_scope("/api/api-keys", AdminApi::new(gate)))
///     .service(admin_page_scope("/admin", AdminPage::new()));
/// # let _ = app; }
/// ```
pub fn admin_page_scope(path: &str, page: AdminPage) -> Scope {
    let mount = path.trim_end_matches('/');
    let mounted = MountedPage {
        page,
        mount: mount.to_owned(),
    };
    web::scope(mount)
        .app_data(web::Data::new(mounted))
        .default_service(web::to(page_handler))
}

/// The admin page's one handler: the file the path names, or a redirect, 404 or 405.
async fn page_handler(req: HttpRequest, mounted: web::Data<MountedPage>) -> HttpResponse {
    mounted
        .page
        .respond_at(
            &mounted.mount,
            req.method().as_str(),
            req.match_info().unprocessed(),
        )
        .respond_to(&req)
}
