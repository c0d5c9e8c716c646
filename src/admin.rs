//! The admin API, compatible with Audiobookshelf's `/api/api-keys`, independent of any web
//! framework. The `axum` and `actix` integrations mount it; both are thin adapters over
//! [`AdminApi::handle`].
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /` | — (query `userId`, `limit`, `after`) | `{"apiKeys":[key…]}` (+ `"next"` when there is more) |
//! | `POST /` | `name`, `userId`, `expiresIn` (s), `isActive`, + `description`, `scopes`, `metadata`, `format` | `{"apiKey":{…, "apiKey":"<key>"}}`, the plaintext this once |
//! | `GET /:id` | — | `{"apiKey":{…}}` |
//! | `PATCH /:id` | `isActive`, `userId`, + `name`, `description`, `scopes`, `metadata`, `expiresAt` | `{"apiKey":{…}}` |
//! | `DELETE /:id` | — | `200 OK` |
//! | `POST /:id/rotate` | `gracePeriod` (s, default 0) | `{"apiKey":{…new, "apiKey":"<key>"}, "previous":{…}}` |
//!
//! A key is `{"id","name","description","expiresAt","lastUsedAt","isActive","userId",
//! "createdByUserId","createdAt","updatedAt","scopes","metadata","format"}` (camelCase,
//! timestamps RFC 3339, like Audiobookshelf's). Statuses: 400 bad input (including an
//! unknown `userId`), 403 caller not admin, 404 unknown id, 503 store unavailable.
//!
//! Deliberate differences from Audiobookshelf:
//! - An omitted `isActive` on create means **active** (Audiobookshelf: inactive). A key
//!   that silently does not work is the worse surprise for a script; send
//!   `"isActive": false` to mint one switched off.
//! - Error answers carry a JSON body `{"error","message"}` naming the offending field
//!   (Audiobookshelf sends a bare status text).
//! - Keys carry no expanded `user`/`createdByUser` objects (keygate knows user ids, not
//!   usernames), and no `permissions` object: keys inherit their owner's permissions,
//!   narrowed by `scopes`.
//! - `GET` returns at most 1000 keys per call, with a `next` cursor (`?after=`) when there
//!   are more.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::Error;
use crate::gate::{IssuedKey, Keygate, MAX_PAGE};
use crate::key::{KeyFormat, KeyId};
use crate::principal::Principal;
use crate::record::{KeyPatch, KeyRecord, Metadata, NewKey};
use crate::store::{ListQuery, StoreError};

/// Decides whether a verified caller may use the admin API.
pub type AdminPredicate = Arc<dyn Fn(&Principal) -> bool + Send + Sync>;

/// The admin API over a [`Keygate`]: who counts as admin, and the request handling.
///
/// ```
/// # fn demo(gate: keygate::Keygate) {
/// // Admins are callers whose owner holds the "admin" permission (and whose key is not
/// // scoped away from it).
/// let api = keygate::admin::AdminApi::new(gate, |p| p.allows("admin"));
/// # let _ = api; }
/// ```
#[derive(Clone)]
pub struct AdminApi {
    gate: Keygate,
    is_admin: AdminPredicate,
}

impl fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminApi")
            .field("gate", &self.gate)
            .finish_non_exhaustive()
    }
}

/// One admin request, already routed: the adapters map method and path onto these.
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
}

/// An admin answer: status, body and its content type.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminResponse {
    /// HTTP status.
    pub status: u16,
    /// `application/json`, or `text/plain` for the bare `OK` of a delete.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
    /// `Retry-After` seconds, for 503.
    pub retry_after: Option<u32>,
}

impl AdminResponse {
    fn json(status: u16, value: Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: value.to_string(),
            retry_after: None,
        }
    }

    fn error(status: u16, error: &str, message: impl Into<String>) -> Self {
        Self::json(status, json!({ "error": error, "message": message.into() }))
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::error(400, "bad_request", message)
    }

    fn not_found() -> Self {
        Self::error(404, "not_found", "no API key with this id")
    }
}

impl AdminApi {
    /// The admin API over `gate`; `is_admin` decides which verified callers may use it.
    pub fn new(
        gate: Keygate,
        is_admin: impl Fn(&Principal) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            gate,
            is_admin: Arc::new(is_admin),
        }
    }

    /// The gate it manages.
    pub fn gate(&self) -> &Keygate {
        &self.gate
    }

    /// Whether `caller` may use the admin API.
    pub fn is_admin(&self, caller: &Principal) -> bool {
        (self.is_admin)(caller)
    }

    /// Handles one request from an already verified `caller`.
    pub async fn handle(&self, caller: &Principal, request: AdminRequest<'_>) -> AdminResponse {
        if !self.is_admin(caller) {
            tracing::info!(target: "keygate", key_id = %caller.key_id(), "admin API refused: caller is not admin");
            return AdminResponse::error(403, "forbidden", "admin only");
        }
        let result = match request {
            AdminRequest::List { query } => self.list(query).await,
            AdminRequest::Create { body } => self.create(caller, body).await,
            AdminRequest::Get { id } => self.get(id).await,
            AdminRequest::Update { id, body } => self.update(id, body).await,
            AdminRequest::Delete { id } => self.delete(id).await,
            AdminRequest::Rotate { id, body } => self.rotate(id, body).await,
        };
        result.unwrap_or_else(|response| response)
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
                    list.after = Some(
                        value
                            .parse()
                            .map_err(|_| AdminResponse::bad_request("after must be a key id"))?,
                    )
                }
                _ => {}
            }
        }
        let page = self.gate.list(list).await.map_err(fail)?;
        let keys: Vec<KeyView<'_>> = page.records.iter().map(KeyView).collect();
        let mut body = json!({ "apiKeys": keys });
        if let Some(next) = page.next {
            body["next"] = json!(next);
        }
        Ok(AdminResponse::json(200, body))
    }

    async fn create(
        &self,
        caller: &Principal,
        body: &[u8],
    ) -> Result<AdminResponse, AdminResponse> {
        let body: CreateBody = parse(body)?;
        let name = body
            .name
            .ok_or_else(|| AdminResponse::bad_request("name is required"))?;
        let user_id = body
            .user_id
            .ok_or_else(|| AdminResponse::bad_request("userId is required"))?;
        self.require_user(&user_id).await?;
        let mut new = NewKey::new(name, user_id)
            .created_by(caller.owner_id())
            .active(body.is_active.unwrap_or(true))
            .format(body.format.unwrap_or_default());
        match body.expires_in {
            Some(secs) if secs.is_finite() && secs > 0.0 && secs < 1e11 => {
                new = new.expires_in(TimeDelta::milliseconds((secs * 1000.0) as i64));
            }
            // Audiobookshelf: a falsy expiresIn (0, null, absent) means no expiry.
            Some(0.0) | None => {}
            Some(_) => {
                return Err(AdminResponse::bad_request(
                    "expiresIn must be a positive number of seconds",
                ))
            }
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
        let IssuedKey { record, key } = self.gate.mint(new).await.map_err(fail)?;
        let mut view = serde_json::to_value(KeyView(&record)).expect("records serialize");
        view["apiKey"] = Value::String(key.expose().to_owned());
        Ok(AdminResponse::json(200, json!({ "apiKey": view })))
    }

    async fn get(&self, id: &str) -> Result<AdminResponse, AdminResponse> {
        let id = parse_id(id)?;
        let record = self
            .gate
            .get(id)
            .await
            .map_err(fail)?
            .ok_or_else(AdminResponse::not_found)?;
        Ok(AdminResponse::json(
            200,
            json!({ "apiKey": KeyView(&record) }),
        ))
    }

    async fn update(&self, id: &str, body: &[u8]) -> Result<AdminResponse, AdminResponse> {
        let id = parse_id(id)?;
        let body: UpdateBody = parse(body)?;
        let mut patch = KeyPatch::new();
        if let Some(active) = body.is_active {
            patch = patch.active(active);
        }
        if let Some(user_id) = body.user_id {
            self.require_user(&user_id).await?;
            patch = patch.owner(user_id);
        }
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
        let record = self.gate.update(id, patch).await.map_err(fail)?;
        Ok(AdminResponse::json(
            200,
            json!({ "apiKey": KeyView(&record) }),
        ))
    }

    async fn delete(&self, id: &str) -> Result<AdminResponse, AdminResponse> {
        let id = parse_id(id)?;
        self.gate.delete(id).await.map_err(fail)?;
        Ok(AdminResponse {
            status: 200,
            content_type: "text/plain; charset=utf-8",
            body: "OK".to_owned(),
            retry_after: None,
        })
    }

    async fn rotate(&self, id: &str, body: &[u8]) -> Result<AdminResponse, AdminResponse> {
        let id = parse_id(id)?;
        let body: RotateBody = if body.iter().all(u8::is_ascii_whitespace) {
            RotateBody::default()
        } else {
            parse(body)?
        };
        let grace = match body.grace_period {
            None => TimeDelta::zero(),
            Some(secs) if secs.is_finite() && (0.0..1e11).contains(&secs) => {
                TimeDelta::milliseconds((secs * 1000.0) as i64)
            }
            Some(_) => {
                return Err(AdminResponse::bad_request(
                    "gracePeriod must be a non-negative number of seconds",
                ))
            }
        };
        let IssuedKey { record, key } = self.gate.rotate(id, grace).await.map_err(fail)?;
        let previous = self.gate.get(id).await.map_err(fail)?;
        let mut view = serde_json::to_value(KeyView(&record)).expect("records serialize");
        view["apiKey"] = Value::String(key.expose().to_owned());
        Ok(AdminResponse::json(
            200,
            json!({ "apiKey": view, "previous": previous.as_ref().map(KeyView) }),
        ))
    }

    async fn require_user(&self, user_id: &str) -> Result<(), AdminResponse> {
        match self.gate.owner(user_id).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(AdminResponse::bad_request("userId: no such user")),
            Err(_) => Err(unavailable()),
        }
    }
}

/// A record as the admin API shows it (camelCase, no hash).
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
        }
        .serialize(serializer)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateBody {
    name: Option<String>,
    user_id: Option<String>,
    expires_in: Option<f64>,
    is_active: Option<bool>,
    description: Option<String>,
    scopes: Option<Vec<String>>,
    metadata: Option<Metadata>,
    format: Option<KeyFormat>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
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
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
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
    serde_json::from_slice(body)
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
                out.push((hi * 16 + lo) as u8);
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
    fn wrong_types_are_refused() {
        assert!(parse::<CreateBody>(br#"{"name":5}"#).is_err());
        assert!(parse::<CreateBody>(br#"{"expiresIn":"10"}"#).is_err());
        assert!(parse::<UpdateBody>(br#"{"isActive":"yes"}"#).is_err());
        assert!(parse::<CreateBody>(br#"{"format":"pgp"}"#).is_err());
    }
}
