//! The admin API, compatible with Audiobookshelf's `/api/api-keys`, independent of any web
//! framework. The `axum` and `actix` integrations mount it; both are thin adapters: one
//! catch-all handler each routes with [`AdminRoute::resolve`] (the route table below; 404
//! and 405 are answered there), verifies the caller, reads the body and calls
//! [`AdminApi::handle`].
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /` | — (query `userId`, `limit`, `after`) | `{"apiKeys":[key…]}` (+ `"next"` when there is more) |
//! | `POST /` | `name`, `userId`, `expiresIn` (s), `isActive`, + `description`, `scopes`, `metadata`, `format`, `ratelimits`, `credits` | `{"apiKey":{…, "apiKey":"<key>"}}`, the plaintext this once |
//! | `GET /:id` | — | `{"apiKey":{…}}` |
//! | `PATCH /:id` | `isActive`, `userId`, + `name`, `description`, `scopes`, `metadata`, `expiresAt`, `ratelimits`, `credits` | `{"apiKey":{…}}` |
//! | `DELETE /:id` | — | `200 OK` |
//! | `POST /:id/rotate` | `gracePeriod` (s, default 0) | `{"apiKey":{…new, "apiKey":"<key>"}, "previous":{…}}` |
//! | `GET /users` | — | `{"users":[{"id","name"}…] or null, "caller":{"keyId","userId"}}` |
//!
//! A key is `{"id","name","description","expiresAt","lastUsedAt","isActive","userId",
//! "createdByUserId","createdAt","updatedAt","scopes","metadata","format","ratelimits",
//! "credits"}` (camelCase, timestamps RFC 3339, like Audiobookshelf's; `ratelimits` and
//! `credits` are [below](#usage-limits-unkeys-shapes-as-extensions-of-audiobookshelfs)). `GET /users` is keygate's own (the admin
//! page's user picker): the users the [`UserDirectory`](crate::UserDirectory) lists
//! ([`UserDirectory::users`](crate::UserDirectory::users); `null` when there is no
//! directory or it does not list them) and who is calling. Statuses: 400 bad input (including an
//! unknown `userId`, and a body field the route does not know: `{"expires_in":60}` is
//! refused, not ignored), 403 refused (see below), 404 unknown id or route, 405 another
//! method (with `Allow`), 409 the key changed while the request was checked (see below),
//! 413 body too large, 503 store or directory unavailable. Errors have keygate's
//! [one error shape](crate::http#one-error-shape): `{"error": code, "error_description": text}`.
//!
//! # Usage limits: Unkey's shapes as extensions of Audiobookshelf's
//!
//! Audiobookshelf's keys have no usage limits; keygate adds two fields, in the shapes of
//! Unkey's API so that clients moving from Unkey recognise them:
//!
//! ```json
//! {"ratelimits": [{"name": "requests", "limit": 100, "duration": 60000, "autoApply": true}],
//!  "credits": {"remaining": 1000, "refill": {"interval": "monthly", "amount": 1000, "refillDay": 1}}}
//! ```
//!
//! `duration` is in milliseconds; `autoApply` defaults to `true`; `burst` (keygate's
//! extension) defaults to `limit`. In views `credits.remaining` is what the key has left
//! *now* (read from the gate's limiter) and `credits.setAt` when the count started; on
//! create and update it is the count to start from: a `PATCH` with `credits` restarts the
//! count, `"credits": null` removes them (unlimited uses), `"ratelimits": []` removes every
//! limit. Bounds: [`crate::limits`]. No call leaves a key less limited than the calling key
//! (see below).
//!
//! # Who may do what
//!
//! **Admin.** A caller is admin when its key is *explicitly granted* the admin permission
//! ([`ADMIN_PERMISSION`], `"admin"`, renamed with [`AdminApi::permission`]), as
//! [`Principal::grants`] decides: the owner's permissions come from a configured
//! [`UserDirectory`](crate::UserDirectory) and include it (or are
//! [`Permissions::All`] there), or the key's own scopes name it
//! (a bootstrap key minted with `.scopes(["admin"])`). On a gate without a directory every
//! owner implicitly holds every permission, but that never makes a key admin: an unscoped
//! key there is refused. Anyone else gets `403`
//! `{"error":"insufficient_scope","reason":"not_admin",…}` before the body is parsed.
//!
//! **No escalation.** No admin call produces or changes a key so that it can do more than
//! the calling key. A key's *reach* is its owner's permissions (the directory's answer now;
//! all permissions without a directory) narrowed by its scopes, and its lifetime:
//!
//! - acting on a key of another owner (patch, delete, rotate), minting for another owner,
//!   or moving a key to another owner needs the caller's reach to cover **every**
//!   permission of that owner (an owner the directory no longer knows, or that is
//!   deactivated, counts as holding all: they may come back with any, and a key minted
//!   for them would wake up with it). The caller's own owner needs nothing more;
//! - the key a call produces (create, the new key of a rotate), and a key a patch widens
//!   (switched back on with `isActive: true`, given another owner, more scopes or
//!   `scopes: null`, a later expiry or `expiresAt: null`), must end with permissions within
//!   the caller's and an expiry no later than the calling key's: an expiring key cannot
//!   mint a never-expiring one. The calling key's expiry is
//!   [`Principal::expires_at`]: for a JWT key, the earlier of its record's and its
//!   token's `exp`;
//! - the key a call produces, and a key a patch loosens (a rate limit removed, raised or made
//!   manual, credits set above what the key has left, a refill added or made larger or more
//!   frequent, credits removed), must be at least as limited as the calling key: each of
//!   the caller's rate limits matched by name with no higher rate and no larger burst, and,
//!   if the caller has credits, no more credits than it has left now and no larger or more
//!   frequent refill. A caller without limits may set any. (Each key is bounded, not the
//!   owner: bound an owner with owner-shared limits, which no admin call changes; see
//!   [`crate::limits`].)
//! - narrowing changes (`isActive: false`, delete, rename, description, metadata, fewer
//!   scopes, an earlier expiry, tighter limits, fewer credits) need only the first rule, so
//!   an expiring admin key can still revoke a leaked key.
//!
//! A refusal is `403` with `WWW-Authenticate: Bearer realm="…", error="insufficient_scope"`
//! and `{"error":"insufficient_scope","error_description":…,"reason":…}`, `reason` one of `not_admin`,
//! `owner_out_of_reach`, `wider_permissions`, `longer_lifetime`, `looser_limits`; nothing is
//! written.
//! Reading (`GET`) is open to every admin: records hold no secret.
//!
//! So a bootstrap key scoped `["admin"]` on a gate without a directory can list keys,
//! mint further `["admin"]`-scoped keys for its own owner and revoke its owner's keys, but
//! cannot mint a key for anything else: scope it `["admin", "library:read"]` to let it hand
//! out `library:read` keys. With a directory, give your administrators an owner that holds
//! every permission they should be able to hand out.
//!
//! Times are those of the request (the gate's clock when the caller's key was accepted):
//! `expiresIn` counts from then. A rotated key is judged as what
//! [`Keygate::rotate`] mints: the old key's owner, scopes and `expires_at`.
//!
//! The checks read the record, then write the change *conditionally* on it
//! ([`KeyPatch::if_unchanged`]; a rotate likewise runs only on the record it checked): if
//! another request changed the key's owner, scopes, active flag or expiry in between, the
//! call writes nothing and answers `409` `{"error":"conflict","error_description":…}`; read the key
//! again and retry. So two requests that are each allowed cannot combine into a key
//! neither could have made. (A delete is not conditional: it only narrows, but if the key
//! was moved to an owner out of the caller's reach in between, it is deleted all the
//! same.)
//!
//! Every change (create, update, delete, rotate) logs one INFO event (target `keygate`,
//! message `admin API change`) with `action`, `key_id`, `actor_key_id` and `actor_owner`;
//! every refusal one event (`admin API refused`, INFO for `not_admin`, WARN otherwise) with
//! the same fields and `reason`. No secret is logged.
//!
//! Deliberate differences from Audiobookshelf:
//! - Stricter authority. Audiobookshelf lets any admin user create, change and delete
//!   every key, for any user, with any expiry, and admin status is its user's role.
//!   keygate requires the admin permission to be granted explicitly (above), and refuses
//!   calls that would create or widen a key beyond the calling key's own reach: minting for
//!   or re-owning to a user with more permissions, `scopes: null` or `expiresAt: null` on a
//!   narrower or expiring caller, re-activating a key the caller could not have minted.
//! - An omitted `isActive` on create means **active** (Audiobookshelf: inactive). A key
//!   that silently does not work is the worse surprise for a script; send
//!   `"isActive": false` to mint one switched off.
//! - Error answers carry a JSON body `{"error","error_description"}` naming the offending
//!   field (Audiobookshelf sends a bare status text), and unknown body fields are refused
//!   (Audiobookshelf ignores them).
//! - Keys carry no expanded `user`/`createdByUser` objects (keygate knows user ids, not
//!   usernames), and no `permissions` object: keys inherit their owner's permissions,
//!   narrowed by `scopes`.
//! - `GET` returns at most 1000 keys per call, with a `next` cursor (`?after=`) when there
//!   are more.

mod authority;
#[cfg(any(feature = "axum", feature = "actix"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "axum", feature = "actix"))))]
pub mod page;

#[cfg(any(feature = "axum", feature = "actix"))]
pub use page::AdminPage;

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use self::authority::{Reach, Refusal, Usage};
use crate::error::{Error, VerifyError};
use crate::gate::{IssuedKey, Keygate, MAX_PAGE};
use crate::key::{KeyFormat, KeyId};
use crate::limits::{CreditPolicy, RateLimit};
use crate::principal::Principal;
use crate::record::{KeyPatch, KeyRecord, Metadata, NewKey};
use crate::store::{ListQuery, StoreError};
use crate::user::Permissions;

/// The permission that makes a caller admin unless [`AdminApi::permission`] renames it.
pub const ADMIN_PERMISSION: &str = "admin";

/// The admin API over a [`Keygate`]: who counts as admin, and the request handling.
///
/// A caller is admin when its key is *explicitly* granted the admin permission
/// ([`Principal::grants`]): by the gate's [`UserDirectory`](crate::UserDirectory), or by
/// the key's own scopes. Missing configuration never makes anyone admin. What an admin may
/// then do is bounded by its own key (see the [module docs](self)).
///
/// ```
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use keygate::admin::AdminApi;
/// use keygate::{Keygate, MemoryStore, NewKey, Pepper};
///
/// let gate = Keygate::builder(MemoryStore::new(), Pepper::new(1, b"a pepper of at least 32 bytes, from a secret store")?)
///     .build()?;
/// let api = AdminApi::new(gate.clone()); // or .permission("keys:admin")
///
/// // No directory: an unscoped key is not admin; a key scoped to "admin" is.
/// let plain = gate.mint(NewKey::new("script", "ops")).await?;
/// assert!(!api.is_admin(&gate.verify(plain.key.expose()).await?));
/// let bootstrap = gate.mint(NewKey::new("bootstrap", "ops").scopes(["admin"])).await?;
/// assert!(api.is_admin(&gate.verify(bootstrap.key.expose()).await?));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AdminApi {
    gate: Keygate,
    permission: String,
}

impl fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminApi")
            .field("gate", &self.gate)
            .field("permission", &self.permission)
            .finish()
    }
}

/// One admin request, already routed ([`AdminRoute::request`] builds it from the route
/// table's answer, the query string and the body).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum AdminRequest<'a> {
    /// `GET /`, with the raw query string (`userId`, `limit`, `after`).
    List {
        /// The query string without `?`, if any.
        query: Option<&'a str>,
    },
    /// `POST /` with a JSON body.
    Create {
        /// The request body.
        body: &'a [u8],
    },
    /// `GET /:id`.
    Get {
        /// The id path segment.
        id: &'a str,
    },
    /// `PATCH /:id` with a JSON body.
    Update {
        /// The id path segment.
        id: &'a str,
        /// The request body.
        body: &'a [u8],
    },
    /// `DELETE /:id`.
    Delete {
        /// The id path segment.
        id: &'a str,
    },
    /// `POST /:id/rotate` with an optional JSON body.
    Rotate {
        /// The id path segment.
        id: &'a str,
        /// The request body (may be empty).
        body: &'a [u8],
    },
    /// `GET /users`: the directory's users and the caller, for the admin page.
    Users,
}

impl AdminRequest<'_> {
    /// The action's name in events: `list`, `create`, `get`, `update`, `delete`, `rotate`.
    fn action(&self) -> &'static str {
        match self {
            AdminRequest::List { .. } => "list",
            AdminRequest::Create { .. } => "create",
            AdminRequest::Get { .. } => "get",
            AdminRequest::Update { .. } => "update",
            AdminRequest::Delete { .. } => "delete",
            AdminRequest::Rotate { .. } => "rotate",
            AdminRequest::Users => "users",
        }
    }

    /// The key id named in the path, for events: `-` for the collection, `invalid` for a
    /// segment that is no key id (never the raw text, which the caller chose).
    fn target(&self) -> String {
        match self {
            AdminRequest::List { .. } | AdminRequest::Create { .. } | AdminRequest::Users => {
                "-".to_owned()
            }
            AdminRequest::Get { id }
            | AdminRequest::Update { id, .. }
            | AdminRequest::Delete { id }
            | AdminRequest::Rotate { id, .. } => id
                .parse::<KeyId>()
                .map_or_else(|_| "invalid".to_owned(), |id| id.to_string()),
        }
    }
}

/// An admin answer: status, headers and body.
///
/// Error bodies have the one shape every keygate HTTP error has (see [`crate::http`]):
/// `{"error": code, "error_description": text}`, plus `reason` on a 403 refusal.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AdminResponse {
    /// HTTP status.
    pub status: u16,
    /// `application/json`, or `text/plain` for the bare `OK` of a delete.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
    /// `Retry-After` seconds, for 503.
    pub retry_after: Option<u32>,
    /// `WWW-Authenticate`, for a 403 refusal (`Bearer realm="…", error="insufficient_scope"`).
    pub www_authenticate: Option<String>,
    /// `Allow`, for a 405 (e.g. `GET, POST`).
    pub allow: Option<&'static str>,
}

impl AdminResponse {
    fn json(status: u16, value: Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: value.to_string(),
            retry_after: None,
            www_authenticate: None,
            allow: None,
        }
    }

    fn text(status: u16, body: &str) -> Self {
        Self {
            content_type: "text/plain; charset=utf-8",
            body: body.to_owned(),
            ..Self::json(status, Value::Null)
        }
    }

    /// The error shape of [`crate::http`]: `{"error": code, "error_description": text}`.
    fn error(status: u16, error: &str, description: impl Into<String>) -> Self {
        Self::json(
            status,
            json!({ "error": error, "error_description": description.into() }),
        )
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::error(400, "invalid_request", message)
    }

    fn not_found() -> Self {
        Self::error(404, "not_found", "no API key with this id")
    }

    fn internal(message: &str) -> Self {
        Self::error(500, "server_error", message)
    }

    /// No admin route has this path.
    pub(crate) fn no_route() -> Self {
        Self::error(404, "not_found", "no such admin API route")
    }

    /// The path is a route, the method is not one of `allow`.
    fn method_not_allowed(allow: &'static str) -> Self {
        let mut response = Self::error(
            405,
            "method_not_allowed",
            format!("this route accepts {allow}"),
        );
        response.allow = Some(allow);
        response
    }

    /// The body could not be read: 413 when the framework's limit refused it (`status`
    /// 413), 400 otherwise. For the framework adapters.
    #[cfg(any(feature = "axum", feature = "actix"))]
    pub(crate) fn unreadable_body(status: u16) -> Self {
        if status == 413 {
            Self::error(413, "payload_too_large", "request body too large")
        } else {
            Self::bad_request("request body could not be read")
        }
    }

    /// Every header to send besides the status: `Content-Type`, then `Retry-After`,
    /// `WWW-Authenticate` and `Allow` when set. Names are lowercase.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        let content_type = Some(("content-type", self.content_type.to_owned()));
        let retry_after = self
            .retry_after
            .map(|secs| ("retry-after", secs.to_string()));
        let challenge = self
            .www_authenticate
            .clone()
            .map(|challenge| ("www-authenticate", challenge));
        let allow = self.allow.map(|allow| ("allow", allow.to_owned()));
        [content_type, retry_after, challenge, allow]
            .into_iter()
            .flatten()
    }
}

/// The admin API's route table: which request a method and a path name, decided before
/// the caller is verified or the body is read. The framework adapters call
/// [`resolve`](Self::resolve) from one catch-all handler, so 404 and 405 are answered
/// here, identically for every framework.
///
/// | method | path after the mount point | route |
/// |---|---|---|
/// | `GET`, `POST` | `` or `/` | [`List`](Self::List), [`Create`](Self::Create) |
/// | `GET`, `PATCH`, `DELETE` | `/{id}` | [`Get`](Self::Get), [`Update`](Self::Update), [`Delete`](Self::Delete) |
/// | `POST` | `/{id}/rotate` | [`Rotate`](Self::Rotate) |
/// | `GET` | `/users` | [`Users`](Self::Users) (no key id is `users`: ids are UUIDs) |
///
/// Any other path is 404 `not_found`; another method on a known path is 405
/// `method_not_allowed` with `Allow`. An `{id}` that is no key id is routed, and answered
/// 404 after the caller is verified, as an unknown id is.
///
/// ```
/// use keygate::admin::{AdminRequest, AdminRoute};
///
/// let route = AdminRoute::resolve("POST", "/0b5c/rotate").unwrap();
/// assert_eq!(route, AdminRoute::Rotate { id: "0b5c" });
/// assert!(matches!(route.request(None, b"{}"), AdminRequest::Rotate { id: "0b5c", .. }));
/// assert_eq!(AdminRoute::resolve("PUT", "/").unwrap_err().status, 405);
/// assert_eq!(AdminRoute::resolve("GET", "/a/b").unwrap_err().status, 404);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdminRoute<'a> {
    /// `GET /`.
    List,
    /// `POST /`.
    Create,
    /// `GET /{id}`.
    Get {
        /// The id path segment, as sent.
        id: &'a str,
    },
    /// `PATCH /{id}`.
    Update {
        /// The id path segment, as sent.
        id: &'a str,
    },
    /// `DELETE /{id}`.
    Delete {
        /// The id path segment, as sent.
        id: &'a str,
    },
    /// `POST /{id}/rotate`.
    Rotate {
        /// The id path segment, as sent.
        id: &'a str,
    },
    /// `GET /users`.
    Users,
}

impl<'a> AdminRoute<'a> {
    /// Routes `method` (e.g. `"GET"`) and `path`, the request path after the mount point
    /// (`""` or `"/"` for the collection, `"/{id}"`, `"/{id}/rotate"`).
    ///
    /// # Errors
    ///
    /// The answer to send: 404 for a path that is no route, 405 (with
    /// [`allow`](AdminResponse::allow)) for a method the route does not take.
    pub fn resolve(method: &str, path: &'a str) -> Result<Self, AdminResponse> {
        if path.is_empty() || path == "/" {
            return match method {
                "GET" => Ok(Self::List),
                "POST" => Ok(Self::Create),
                _ => Err(AdminResponse::method_not_allowed("GET, POST")),
            };
        }
        let rest = path.strip_prefix('/').ok_or_else(AdminResponse::no_route)?;
        let (id, tail) = match rest.split_once('/') {
            Some((id, tail)) => (id, Some(tail)),
            None => (rest, None),
        };
        if id.is_empty() {
            return Err(AdminResponse::no_route());
        }
        match (tail, method) {
            (None, "GET") if id == "users" => Ok(Self::Users),
            (None, _) if id == "users" => Err(AdminResponse::method_not_allowed("GET")),
            (None, "GET") => Ok(Self::Get { id }),
            (None, "PATCH") => Ok(Self::Update { id }),
            (None, "DELETE") => Ok(Self::Delete { id }),
            (None, _) => Err(AdminResponse::method_not_allowed("GET, PATCH, DELETE")),
            (Some("rotate"), "POST") => Ok(Self::Rotate { id }),
            (Some("rotate"), _) => Err(AdminResponse::method_not_allowed("POST")),
            (Some(_), _) => Err(AdminResponse::no_route()),
        }
    }

    /// Whether the route reads a request body (create, update, rotate). The adapters
    /// read none for the others.
    pub fn reads_body(self) -> bool {
        matches!(
            self,
            Self::Create | Self::Update { .. } | Self::Rotate { .. }
        )
    }

    /// The request for [`AdminApi::handle`], with the raw query string (without `?`)
    /// and the body (ignored by routes that read none).
    pub fn request(self, query: Option<&'a str>, body: &'a [u8]) -> AdminRequest<'a> {
        match self {
            Self::List => AdminRequest::List { query },
            Self::Create => AdminRequest::Create { body },
            Self::Get { id } => AdminRequest::Get { id },
            Self::Update { id } => AdminRequest::Update { id, body },
            Self::Delete { id } => AdminRequest::Delete { id },
            Self::Rotate { id } => AdminRequest::Rotate { id, body },
            Self::Users => AdminRequest::Users,
        }
    }
}

/// Who is calling: the caller, for the refusal and change events.
struct Call<'a> {
    caller: &'a Principal,
    action: &'static str,
}

impl AdminApi {
    /// The admin API over `gate`, for callers explicitly granted [`ADMIN_PERMISSION`].
    pub fn new(gate: Keygate) -> Self {
        Self {
            gate,
            permission: ADMIN_PERMISSION.to_owned(),
        }
    }

    /// Makes `permission` the one that makes a caller admin, instead of
    /// [`ADMIN_PERMISSION`] (e.g. `"keys:admin"`).
    #[must_use]
    pub fn permission(mut self, permission: impl Into<String>) -> Self {
        self.permission = permission.into();
        self
    }

    /// The permission that makes a caller admin.
    pub fn admin_permission(&self) -> &str {
        &self.permission
    }

    /// The gate it manages.
    pub fn gate(&self) -> &Keygate {
        &self.gate
    }

    /// Whether `caller` may use the admin API: this API's gate verified it
    /// ([`Keygate::verified`]) and it is explicitly granted the admin permission
    /// ([`Principal::grants`]).
    pub fn is_admin(&self, caller: &Principal) -> bool {
        // A principal another gate verified (another store, pepper or directory) is no
        // caller of this one, whatever it may do there.
        self.gate.verified(caller) && caller.grants(&self.permission)
    }

    /// Handles one request from an already verified `caller`.
    pub async fn handle(&self, caller: &Principal, request: AdminRequest<'_>) -> AdminResponse {
        let call = Call {
            caller,
            action: request.action(),
        };
        if !self.is_admin(caller) {
            tracing::info!(
                target: "keygate",
                action = call.action,
                key_id = %request.target(),
                actor_key_id = %caller.key_id(),
                actor_owner = %caller.owner_id(),
                reason = "not_admin",
                "admin API refused"
            );
            return self.forbidden("not_admin", "admin only", Some(&self.permission));
        }
        let result = match request {
            AdminRequest::List { query } => self.list(query).await,
            AdminRequest::Create { body } => self.create(&call, body).await,
            AdminRequest::Get { id } => self.get(id).await,
            AdminRequest::Update { id, body } => self.update(&call, id, body).await,
            AdminRequest::Delete { id } => self.delete(&call, id).await,
            AdminRequest::Rotate { id, body } => self.rotate(&call, id, body).await,
            AdminRequest::Users => self.users(caller).await,
        };
        result.unwrap_or_else(|response| response)
    }

    /// A 403 with the `insufficient_scope` challenge; `scope` names the permission missing,
    /// when there is one.
    fn forbidden(&self, reason: &str, message: &str, scope: Option<&str>) -> AdminResponse {
        // A scope that is not an RFC 6750 scope-token is left out of the challenge.
        let required = scope.unwrap_or(" ").to_owned();
        let challenge = VerifyError::InsufficientScope { required }
            .http(self.gate.realm())
            .www_authenticate;
        let mut response = AdminResponse::json(
            403,
            json!({ "error": "insufficient_scope", "error_description": message, "reason": reason }),
        );
        response.www_authenticate = challenge;
        response
    }

    /// The authority rule ([`authority::check`]) for `call`: `owners` are the owners of
    /// the keys touched (before and after), `result` the reach of the key produced or
    /// widened. A refusal is logged and answered 403.
    async fn authorize(
        &self,
        call: &Call<'_>,
        target: &str,
        owners: &[(&str, &Permissions)],
        result: Option<&Reach>,
    ) -> Result<(), AdminResponse> {
        let caller = call.caller;
        // The caller's own limits matter only when the call produces or widens a key.
        let usage = match result {
            Some(_) => Usage::of(caller.record(), self.credits_left(caller.record()).await?),
            None => Usage::default(),
        };
        let reach = Reach::new(
            caller.owner_permissions(),
            caller.scopes(),
            caller.expires_at(),
        )
        .with_usage(usage);
        let others: Vec<&Permissions> = owners
            .iter()
            .filter(|(owner, _)| *owner != caller.owner_id())
            .map(|(_, permissions)| *permissions)
            .collect();
        authority::check(&reach, &others, result).map_err(|refusal: Refusal| {
            tracing::warn!(
                target: "keygate",
                action = call.action,
                key_id = %target,
                actor_key_id = %caller.key_id(),
                actor_owner = %caller.owner_id(),
                reason = refusal.code(),
                "admin API refused"
            );
            self.forbidden(refusal.code(), refusal.message(), None)
        })
    }

    async fn list(&self, query: Option<&str>) -> Result<AdminResponse, AdminResponse> {
        let mut list = ListQuery::new().limit(MAX_PAGE);
        for (name, value) in query
            .unwrap_or("")
            .split('&')
            .filter_map(|p| p.split_once('='))
        {
            let value = percent_decode(value)
                .ok_or_else(|| AdminResponse::bad_request("bad query string"))?;
            match name {
                "userId" => list.owner = Some(value),
                "limit" => {
                    list.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| AdminResponse::bad_request("limit must be 1 to 1000"))?
                }
                "after" => {
                    list.after =
                        Some(value.parse().map_err(|_| {
                            AdminResponse::bad_request("after must be a next cursor")
                        })?)
                }
                _ => {}
            }
        }
        let page = self.gate.list(list).await.map_err(fail)?;
        let mut keys = Vec::with_capacity(page.records.len());
        for record in &page.records {
            keys.push(self.view(record).await?);
        }
        let mut body = Map::new();
        body.insert("apiKeys".to_owned(), json!(keys));
        if let Some(next) = page.next {
            body.insert("next".to_owned(), json!(next.to_string()));
        }
        Ok(AdminResponse::json(200, Value::Object(body)))
    }

    /// `GET /users`: the directory's users (or `null`) and the caller's key and owner.
    async fn users(&self, caller: &Principal) -> Result<AdminResponse, AdminResponse> {
        let users = self
            .gate
            .directory_users()
            .await
            .map_err(|_| unavailable())?;
        Ok(AdminResponse::json(
            200,
            json!({
                "users": users,
                "caller": { "keyId": caller.key_id(), "userId": caller.owner_id() },
            }),
        ))
    }

    async fn create(&self, call: &Call<'_>, body: &[u8]) -> Result<AdminResponse, AdminResponse> {
        let caller = call.caller;
        let body: CreateBody = parse(body)?;
        let name = body
            .name
            .ok_or_else(|| AdminResponse::bad_request("name is required"))?;
        let user_id = body
            .user_id
            .ok_or_else(|| AdminResponse::bad_request("userId is required"))?;
        let owner = self.require_user(&user_id).await?;
        let mut new = NewKey::new(name, user_id.clone())
            .created_by(caller.owner_id())
            .active(body.is_active.unwrap_or(true))
            .format(body.format.unwrap_or_default());
        let expires_at = match body.expires_in {
            Some(secs) if secs.is_finite() && secs > 0.0 && secs < 1e11 => {
                let now = request_time(caller)?;
                let at = TimeDelta::try_milliseconds((secs * 1000.0) as i64)
                    .and_then(|lifetime| now.checked_add_signed(lifetime))
                    .ok_or_else(|| AdminResponse::bad_request("expiresIn: out of range"))?;
                Some(at)
            }
            // Audiobookshelf: a falsy expiresIn (0, null, absent) means no expiry.
            Some(0.0) | None => None,
            Some(_) => {
                return Err(AdminResponse::bad_request(
                    "expiresIn must be a positive number of seconds",
                ))
            }
        };
        if let Some(at) = expires_at {
            new = new.expires_at(at);
        }
        if let Some(description) = body.description {
            new = new.description(description);
        }
        if let Some(scopes) = body.scopes {
            new = new.scopes(scopes);
        }
        if let Some(metadata) = body.metadata {
            new = new.metadata(metadata);
        }
        if let Some(limits) = body.ratelimits {
            new = new.ratelimits(limits);
        }
        if let Some(credits) = body.credits {
            new = new.credits(credits);
        }
        let result = Reach::new(&owner, new.scopes.as_ref(), expires_at)
            .with_usage(Usage::from_policy(&new.ratelimits, new.credits.as_ref()));
        self.authorize(call, "-", &[(&user_id, &owner)], Some(&result))
            .await?;
        let IssuedKey { record, key } = self.gate.mint(new).await.map_err(fail)?;
        changed(call, record.id, &record.owner, None);
        let mut view = self.view(&record).await?;
        view.insert("apiKey".to_owned(), Value::String(key.expose().to_owned()));
        Ok(AdminResponse::json(200, json!({ "apiKey": view })))
    }

    async fn get(&self, id: &str) -> Result<AdminResponse, AdminResponse> {
        let id = parse_id(id)?;
        let record = self.record(id).await?;
        Ok(AdminResponse::json(
            200,
            json!({ "apiKey": self.view(&record).await? }),
        ))
    }

    async fn update(
        &self,
        call: &Call<'_>,
        id: &str,
        body: &[u8],
    ) -> Result<AdminResponse, AdminResponse> {
        let id = parse_id(id)?;
        let body: UpdateBody = parse(body)?;
        let mut patch = KeyPatch::new();
        if let Some(active) = body.is_active {
            patch = patch.active(active);
        }
        let new_owner = match body.user_id {
            Some(user_id) => {
                let owner = self.require_user(&user_id).await?;
                patch = patch.owner(user_id.clone());
                Some((user_id, owner))
            }
            None => None,
        };
        if let Some(name) = body.name {
            patch = patch.name(name);
        }
        if let Some(description) = body.description {
            patch = patch.description(description);
        }
        if let Some(scopes) = body.scopes {
            patch = patch.scopes(scopes);
        }
        if let Some(metadata) = body.metadata {
            patch = patch.metadata(metadata);
        }
        if let Some(expires_at) = body.expires_at {
            patch = patch.expires_at(expires_at);
        }
        if let Some(limits) = body.ratelimits {
            patch = patch.ratelimits(limits.unwrap_or_default());
        }
        let sets_credits = body.credits.is_some();
        if let Some(credits) = body.credits {
            patch = patch.credits(credits);
        }

        let before = self.record(id).await?;
        let before_owner = self.owner_permissions(&before.owner).await?;
        let before_left = self.credits_left(&before).await?;
        // Unless the patch sets credits, the key keeps the count it has.
        let after_left = if sets_credits { None } else { before_left };
        let mut after = before.clone();
        // No precondition on it yet: this cannot fail.
        patch
            .apply(&mut after)
            .map_err(|_| fail(Error::Changed(id)))?;
        let (after_id, after_owner) = match &new_owner {
            Some((user_id, owner)) => (user_id.as_str(), owner),
            None => (before.owner.as_str(), &before_owner),
        };
        let widened = authority::widens(
            (&before, &before_owner, before_left),
            (&after, after_owner, after_left),
        );
        let result = widened.then(|| Reach::of(&after, after_owner, after_left));
        self.authorize(
            call,
            &id.to_string(),
            &[(&before.owner, &before_owner), (after_id, after_owner)],
            result.as_ref(),
        )
        .await?;

        // Written only onto the record checked above: a change landing in between (another
        // PATCH, a rotate) makes this a 409 and writes nothing.
        let patch = patch.if_unchanged(&before);
        let record = self.gate.update(id, patch).await.map_err(fail)?;
        changed(call, id, &record.owner, None);
        Ok(AdminResponse::json(
            200,
            json!({ "apiKey": self.view(&record).await? }),
        ))
    }

    async fn delete(&self, call: &Call<'_>, id: &str) -> Result<AdminResponse, AdminResponse> {
        let id = parse_id(id)?;
        let record = self.record(id).await?;
        let owner = self.owner_permissions(&record.owner).await?;
        self.authorize(call, &id.to_string(), &[(&record.owner, &owner)], None)
            .await?;
        self.gate.delete(id).await.map_err(fail)?;
        changed(call, id, &record.owner, None);
        Ok(AdminResponse::text(200, "OK"))
    }

    async fn rotate(
        &self,
        call: &Call<'_>,
        id: &str,
        body: &[u8],
    ) -> Result<AdminResponse, AdminResponse> {
        let id = parse_id(id)?;
        let body: RotateBody = if body.iter().all(u8::is_ascii_whitespace) {
            RotateBody::default()
        } else {
            parse(body)?
        };
        let grace = match body.grace_period {
            None => TimeDelta::zero(),
            Some(secs) if secs.is_finite() && (0.0..1e11).contains(&secs) => {
                TimeDelta::try_milliseconds((secs * 1000.0) as i64)
                    .ok_or_else(|| AdminResponse::bad_request("gracePeriod: out of range"))?
            }
            Some(_) => {
                return Err(AdminResponse::bad_request(
                    "gracePeriod must be a non-negative number of seconds",
                ))
            }
        };
        let old = self.record(id).await?;
        let owner = self.owner_permissions(&old.owner).await?;
        // The new key is exactly what `rotate` mints from this record: the old owner,
        // scopes and `expires_at` (it only ever cuts that shorter). The rotation runs only
        // if the record still has them (else 409), so the check judges what is written.
        // The new key continues the old one's credit count (`Keygate::rotate`).
        let result = Reach::of(&old, &owner, self.credits_left(&old).await?);
        self.authorize(
            call,
            &id.to_string(),
            &[(&old.owner, &owner)],
            Some(&result),
        )
        .await?;
        let IssuedKey { record, key } = self
            .gate
            .rotate_from(id, grace, Some(&old))
            .await
            .map_err(fail)?;
        changed(call, id, &record.owner, Some(record.id));
        let previous = self.gate.get(id).await.map_err(fail)?;
        let mut view = self.view(&record).await?;
        view.insert("apiKey".to_owned(), Value::String(key.expose().to_owned()));
        let previous = match &previous {
            Some(previous) => Some(self.view(previous).await?),
            None => None,
        };
        Ok(AdminResponse::json(
            200,
            json!({ "apiKey": view, "previous": previous }),
        ))
    }

    /// The credits `record` has left now, from the gate's limiter (`None` without
    /// credits); 503 when the limiter cannot be read.
    async fn credits_left(&self, record: &KeyRecord) -> Result<Option<u64>, AdminResponse> {
        self.gate.credits_remaining(record).await.map_err(|error| {
            tracing::warn!(target: "keygate", error = %error, "admin API: usage limiter failed");
            unavailable()
        })
    }

    /// A key's view ([`KeyView`]) with `credits.remaining` what it has left now.
    async fn view(&self, record: &KeyRecord) -> Result<Map<String, Value>, AdminResponse> {
        let mut view = view_of(record)?;
        if let Some(left) = self.credits_left(record).await? {
            if let Some(Value::Object(credits)) = view.get_mut("credits") {
                credits.insert("remaining".to_owned(), json!(left));
            }
        }
        Ok(view)
    }

    /// The record `id`, or 404.
    async fn record(&self, id: KeyId) -> Result<KeyRecord, AdminResponse> {
        self.gate
            .get(id)
            .await
            .map_err(fail)?
            .ok_or_else(AdminResponse::not_found)
    }

    /// The permissions of `user_id`, who must exist (400 otherwise): for a key about to
    /// be minted for, or moved to, them. A deactivated user counts as holding every
    /// permission (see [`owner_permissions`](Self::owner_permissions)).
    async fn require_user(&self, user_id: &str) -> Result<Permissions, AdminResponse> {
        match self.gate.owner(user_id).await {
            Ok(Some(owner)) => Ok(authority_of(owner)),
            Ok(None) => Err(AdminResponse::bad_request("userId: no such user")),
            Err(_) => Err(unavailable()),
        }
    }

    /// The permissions of the owner of an existing key. One the directory no longer knows,
    /// or that is deactivated, counts as holding every permission: they may come back with
    /// any.
    async fn owner_permissions(&self, user_id: &str) -> Result<Permissions, AdminResponse> {
        match self.gate.owner(user_id).await {
            Ok(Some(owner)) => Ok(authority_of(owner)),
            Ok(None) => Ok(Permissions::All),
            Err(_) => Err(unavailable()),
        }
    }
}

/// The permissions the authority rule holds `owner` to. A deactivated owner's listed
/// permissions say nothing about what their keys can do once they are active again
/// (a directory commonly answers [`Owner::inactive`](crate::Owner::inactive), with none):
/// counted as none, every caller would cover them, and could mint, rotate or re-activate
/// keys that wake up with everything when they return. So they count as holding all, like
/// an owner the directory does not know.
fn authority_of(owner: crate::Owner) -> Permissions {
    if owner.active {
        owner.permissions
    } else {
        Permissions::All
    }
}

/// Logs one admin change: the action, the key acted on, the acting key and owner (and the
/// new key of a rotate). Never a secret.
fn changed(call: &Call<'_>, key_id: KeyId, owner: &str, new_key_id: Option<KeyId>) {
    let new_key_id = new_key_id.map(|id| id.to_string());
    tracing::info!(
        target: "keygate",
        action = call.action,
        key_id = %key_id,
        owner = %owner,
        new_key_id = new_key_id.as_deref(),
        actor_key_id = %call.caller.key_id(),
        actor_owner = %call.caller.owner_id(),
        "admin API change"
    );
}

/// The request's "now": the gate's clock when the caller's key was accepted.
fn request_time(caller: &Principal) -> Result<DateTime<Utc>, AdminResponse> {
    caller
        .verified_at()
        .ok_or_else(|| AdminResponse::internal("clock out of range"))
}

fn view_of(record: &KeyRecord) -> Result<Map<String, Value>, AdminResponse> {
    match serde_json::to_value(KeyView(record)) {
        Ok(Value::Object(view)) => Ok(view),
        _ => Err(AdminResponse::internal("record does not serialize")),
    }
}

/// A record as the admin API shows it (camelCase, no hash). `credits` is the policy as
/// stored (`remaining`: the count it started from); the admin API replaces `remaining`
/// with what the key has left now.
#[derive(Debug, Clone, Copy)]
pub struct KeyView<'a>(pub &'a KeyRecord);

impl Serialize for KeyView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct View<'a> {
            id: KeyId,
            name: &'a str,
            description: Option<&'a str>,
            expires_at: Option<DateTime<Utc>>,
            last_used_at: Option<DateTime<Utc>>,
            is_active: bool,
            user_id: &'a str,
            created_by_user_id: Option<&'a str>,
            created_at: DateTime<Utc>,
            updated_at: DateTime<Utc>,
            scopes: Option<&'a BTreeSet<String>>,
            metadata: &'a Metadata,
            format: KeyFormat,
            ratelimits: &'a [RateLimit],
            credits: Option<&'a CreditPolicy>,
        }
        let r = self.0;
        View {
            id: r.id,
            name: &r.name,
            description: r.description.as_deref(),
            expires_at: r.expires_at,
            last_used_at: r.last_used_at,
            is_active: r.active,
            user_id: &r.owner,
            created_by_user_id: r.created_by.as_deref(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            scopes: r.scopes.as_ref(),
            metadata: &r.metadata,
            format: r.format,
            ratelimits: &r.ratelimits,
            credits: r.credits.as_ref(),
        }
        .serialize(serializer)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateBody {
    name: Option<String>,
    user_id: Option<String>,
    expires_in: Option<f64>,
    is_active: Option<bool>,
    description: Option<String>,
    scopes: Option<Vec<String>>,
    metadata: Option<Metadata>,
    format: Option<KeyFormat>,
    ratelimits: Option<Vec<RateLimit>>,
    credits: Option<CreditPolicy>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateBody {
    is_active: Option<bool>,
    user_id: Option<String>,
    name: Option<String>,
    #[serde(default, deserialize_with = "some")]
    description: Option<Option<String>>,
    #[serde(default, deserialize_with = "some")]
    scopes: Option<Option<Vec<String>>>,
    metadata: Option<Metadata>,
    #[serde(default, deserialize_with = "some")]
    expires_at: Option<Option<DateTime<Utc>>>,
    /// `null` or `[]` removes every limit.
    #[serde(default, deserialize_with = "some")]
    ratelimits: Option<Option<Vec<RateLimit>>>,
    /// `null` removes the credits.
    #[serde(default, deserialize_with = "some")]
    credits: Option<Option<CreditPolicy>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RotateBody {
    grace_period: Option<f64>,
}

/// A present field, `null` included, is `Some`: `null` clears, absence leaves alone.
fn some<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, AdminResponse> {
    // A JSON object in UTF-8: serde would read an array into the body by position.
    let text = crate::json::object_text(body)
        .ok_or_else(|| AdminResponse::bad_request("the body must be a JSON object"))?;
    serde_json::from_str(text)
        .map_err(|e| AdminResponse::bad_request(format!("invalid JSON body: {e}")))
}

fn parse_id(id: &str) -> Result<KeyId, AdminResponse> {
    id.parse().map_err(|_| AdminResponse::not_found())
}

fn unavailable() -> AdminResponse {
    let mut response =
        AdminResponse::error(503, "temporarily_unavailable", "key store unavailable");
    response.retry_after = Some(crate::http::RETRY_AFTER_SECS);
    response
}

fn fail(error: Error) -> AdminResponse {
    match error {
        Error::InvalidInput { field, reason } => {
            AdminResponse::bad_request(format!("{field}: {reason}"))
        }
        Error::NotFound(_) => AdminResponse::not_found(),
        Error::Changed(_) => AdminResponse::error(
            409,
            "conflict",
            "the key changed while this request was checked; nothing was written: read it \
             again and retry",
        ),
        Error::JwtDisabled => {
            AdminResponse::bad_request("format: JWT keys are not enabled on this server")
        }
        Error::Store(StoreError::Conflict(_)) => {
            AdminResponse::error(409, "conflict", "key id already exists")
        }
        // A retry cannot fix a corrupt record: 500, no Retry-After.
        Error::Store(e @ StoreError::Corrupt(_)) => {
            let detail = std::error::Error::source(&e).map(ToString::to_string);
            tracing::error!(target: "keygate", error = %e, detail = detail.as_deref().unwrap_or(""), "admin API: key store returned a corrupt record");
            AdminResponse::error(500, "server_error", "a stored key record is unreadable")
        }
        Error::Store(e) => {
            tracing::warn!(target: "keygate", error = %e, "admin API: key store failed");
            unavailable()
        }
        // The server's configuration, not the request: 500, no Retry-After. The gate
        // logged it at error level when it found out.
        Error::Limiter(e) => {
            tracing::warn!(target: "keygate", error = %e, "admin API: usage limiter failed");
            unavailable()
        }
        Error::PepperMismatch { .. } => AdminResponse::error(
            500,
            "server_error",
            "the server's pepper does not match the key store: no key was minted",
        ),
    }
}

/// Decodes `%XX` and `+` in a query value; `None` on bad escapes or non-UTF-8.
fn percent_decode(value: &str) -> Option<String> {
    let mut out = Vec::with_capacity(value.len());
    let mut bytes = value.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                // Two hex digits make at most 0xff, so these checks never fail.
                out.push(u8::try_from(hi.checked_mul(16)?.checked_add(lo)?).ok()?);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(percent_decode("%E6%97%A5").as_deref(), Some("日"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }

    #[test]
    fn update_bodies_tell_null_from_absent() {
        let body: UpdateBody = serde_json::from_str(r#"{"description":null}"#).unwrap();
        assert_eq!(body.description, Some(None));
        assert!(body.scopes.is_none());
        let body: UpdateBody =
            serde_json::from_str(r#"{"expiresAt":"2030-01-01T00:00:00Z"}"#).unwrap();
        assert!(matches!(body.expires_at, Some(Some(_))));
    }

    #[test]
    fn events_name_a_parsed_id_never_the_raw_path() {
        let id = KeyId::random().to_string();
        assert_eq!(AdminRequest::Get { id: &id }.target(), id);
        let forged = "x\nINFO keygate: admin API change";
        assert_eq!(AdminRequest::Delete { id: forged }.target(), "invalid");
        assert_eq!(AdminRequest::List { query: None }.target(), "-");
    }

    #[test]
    fn wrong_types_are_refused() {
        assert!(parse::<CreateBody>(br#"{"name":5}"#).is_err());
        assert!(parse::<CreateBody>(br#"{"expiresIn":"10"}"#).is_err());
        assert!(parse::<UpdateBody>(br#"{"isActive":"yes"}"#).is_err());
        assert!(parse::<CreateBody>(br#"{"format":"pgp"}"#).is_err());
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        for (result, field) in [
            (
                parse::<CreateBody>(br#"{"name":"x","expires_in":60}"#).map(|_| ()),
                "expires_in",
            ),
            (
                parse::<UpdateBody>(br#"{"isActive":true,"owner":"x"}"#).map(|_| ()),
                "owner",
            ),
            (
                parse::<RotateBody>(br#"{"grace_period":5}"#).map(|_| ()),
                "grace_period",
            ),
        ] {
            let response = result.unwrap_err();
            assert_eq!(response.status, 400);
            assert!(response.body.contains(field), "{}", response.body);
        }
    }

    #[test]
    fn the_route_table() {
        let id = "abc";
        assert_eq!(AdminRoute::resolve("GET", ""), Ok(AdminRoute::List));
        assert_eq!(AdminRoute::resolve("POST", "/"), Ok(AdminRoute::Create));
        assert_eq!(
            AdminRoute::resolve("PATCH", "/abc"),
            Ok(AdminRoute::Update { id })
        );
        assert_eq!(
            AdminRoute::resolve("DELETE", "/abc"),
            Ok(AdminRoute::Delete { id })
        );
        assert_eq!(
            AdminRoute::resolve("POST", "/abc/rotate"),
            Ok(AdminRoute::Rotate { id })
        );
        assert_eq!(AdminRoute::resolve("GET", "/users"), Ok(AdminRoute::Users));
        assert!(!AdminRoute::Users.reads_body());
        for (method, path, allow) in [
            ("POST", "/users", "GET"),
            ("HEAD", "/", "GET, POST"),
            ("PUT", "/abc", "GET, PATCH, DELETE"),
            ("DELETE", "/abc/rotate", "POST"),
        ] {
            let answer = AdminRoute::resolve(method, path).unwrap_err();
            assert_eq!((answer.status, answer.allow), (405, Some(allow)), "{path}");
        }
        for path in [
            "abc",
            "//",
            "//rotate",
            "/abc/",
            "/abc/rotate/",
            "/abc/x",
            "/a/b/c",
        ] {
            let answer = AdminRoute::resolve("GET", path).unwrap_err();
            assert_eq!(answer.status, 404, "{path}");
        }
        assert!(!AdminRoute::List.reads_body() && AdminRoute::Create.reads_body());
    }
}
