//! # keygate
//!
//! API keys for Rust servers: mint keys that act for a user and inherit that user's
//! permissions, hash them at rest, expire, revoke or delete them, and verify
//! `Authorization: Bearer <key>` in constant time, with typed outcomes that map onto
//! RFC 6750 responses.
//!
//! ```
//! use chrono::TimeDelta;
//! use keygate::{Keygate, MemoryStore, NewKey, Pepper};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Once, at startup.
//! let pepper = Pepper::new(1, b"load me from a secret store, 32+ bytes")?;
//! let gate = Keygate::builder(MemoryStore::new(), pepper)
//!     .prefix("abs")
//!     .build()?;
//!
//! // An admin mints a key on behalf of a user; the plaintext is returned exactly once.
//! let issued = gate
//!     .mint(NewKey::new("Backup Script", "user-1").expires_in(TimeDelta::days(30)))
//!     .await?;
//!
//! // Every request.
//! let principal = gate.verify_header(&format!("Bearer {}", issued.key.expose())).await?;
//! assert_eq!(principal.key_name(), "Backup Script");
//! # Ok(()) }
//! ```
//!
//! ## Two key formats, one verifier
//!
//! - **Opaque** (default): `abs_` + 71 base62 characters (key id, 256-bit secret, CRC32).
//!   The public checksum lets [`SCANNER_REGEX`] + [`checksum_ok`] find leaked keys, and lets
//!   the verifier refuse typos without a store read. At rest only
//!   `HMAC-SHA256(pepper, key without its checksum)` is kept, bound to the key's prefix and
//!   id ([`HashScheme`]).
//! - **JWT**: HS256 tokens byte-compatible with Audiobookshelf 2.26+ API keys (enable with
//!   [`KeygateBuilder::jwt_secret`] and a [`JwtSecret`]); see [`JwtSecret`] for what is
//!   refused.
//!
//! ## Pieces
//!
//! - [`Keygate`]: the facade ([`mint`](Keygate::mint), [`verify`](Keygate::verify),
//!   [`rotate`](Keygate::rotate), …).
//! - [`KeyStore`]: where records live; [`MemoryStore`] is built in.
//! - [`UserDirectory`]: the host application's users (active? permissions?).
//! - [`Principal`]: the verified caller; [`VerifyError`]: why not, with
//!   [`VerifyError::http`] for the HTTP answer.
//! - [`admin::AdminApi`]: the Audiobookshelf-style `/api/api-keys` API, for callers
//!   *explicitly* granted `"admin"` ([`Principal::grants`]: by the directory, or by the
//!   key's own scopes; never because there is no directory), and unable to mint or widen
//!   a key beyond the calling key's own reach.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "actix")]
#[cfg_attr(docsrs, doc(cfg(feature = "actix")))]
pub mod actix;
pub mod admin;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;
mod base62;
mod builder;
mod clock;
mod error;
mod gate;
mod hash;
pub mod http;
mod json;
mod jwt;
mod key;
mod pepper_check;
mod pepper_source;
mod principal;
mod record;
mod refusals;
mod secret;
mod store;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
#[cfg(test)]
mod testing_support;
mod usage;
mod user;
mod validate;
mod verify;

/// The crates that appear in keygate's public signatures, re-exported so an application
/// names the same versions: `async_trait` (to implement [`KeyStore`] and [`UserDirectory`]),
/// `chrono` (timestamps), `serde_json` ([`Metadata`]) and `uuid` ([`KeyId`]).
pub use async_trait;
pub use chrono;
pub use serde_json;
/// The `sqlx` driver the SQL stores use, re-exported so an application can build the pool
/// it hands to a store's `from_pool` (or share the store's) without a version clash.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "sqlite", feature = "postgres"))))]
pub use sqlx;
pub use uuid;

/// The `redis` driver crate keygate was built with (feature `redis`), for building a
/// [`redis::Client`] or [`redis::aio::ConnectionManager`] to hand to [`RedisStore`].
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use ::redis;
pub use builder::KeygateBuilder;
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{BuildError, Error, Rejection, RequestError, VerifyError};
pub use gate::{IssuedKey, Keygate, MAX_NAME_LEN, MAX_PAGE};
pub use hash::{HashScheme, Pepper, PepperFingerprint, SecretHash, UnknownScheme, MIN_PEPPER_LEN};
pub use jwt::{JwtSecret, MIN_JWT_SECRET_LEN};
pub use key::{
    checksum_ok, scanner_regex, KeyFormat, KeyId, UnknownFormat, MAX_OPAQUE_LEN, SCANNER_REGEX,
};
pub use pepper_source::PepperError;
pub use principal::{Permission, Principal};
pub use record::{
    InvalidRecord, KeyPatch, KeyRecord, Metadata, NewKey, Precondition, MAX_STORED_OWNER_LEN,
};
pub use refusals::RefusalCounts;
pub use secret::Secret;
pub use store::{
    open_store, CacheConfig, CacheStats, CachedStore, ChangeListener, Cursor, InvalidCursor,
    KeyStore, ListQuery, MemoryStore, Page, StoreError,
};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use store::{PostgresConfig, PostgresStore};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use store::{RedisConfig, RedisStore, FEED_CLIENT_NAME};
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use store::{SqliteConfig, SqliteStore};
pub use user::{DirectoryError, Owner, Permissions, UserDirectory};
pub use validate::{
    MAX_DESCRIPTION_LEN, MAX_EXPIRY, MAX_ID_LEN, MAX_METADATA_BYTES, MAX_SCOPES, MAX_SCOPE_LEN,
};

/// The README's snippets, compiled and run as doctests (with the web features on, as
/// `cargo test --all-features` has them).
#[cfg(all(doctest, feature = "axum", feature = "actix"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
