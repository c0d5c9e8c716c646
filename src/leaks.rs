//! Leaked-key reports: GitHub's [secret scanning partner program].
//!
//! When GitHub finds one of your keys in a public repository, gist, issue or npm package, it
//! `POST`s a JSON array of matches to your endpoint, signed with one of GitHub's ECDSA P-256
//! keys. [`LeakReports`] checks the signature over the exact bytes received, *before* reading
//! the JSON; then, for each reported token, finds the key (an opaque key by its checksum, id
//! and hash; a JWT key by its signature, claims and record), revokes it, logs a `KeyLeaked`
//! event, and answers with the protocol's labels: `true_positive` for a key of this gate,
//! `false_positive` for anything else.
//!
//! ```
//! use keygate::leaks::{GithubKeys, LeakReports, LeakRequest};
//! # use keygate::{Keygate, MemoryStore, Pepper};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let gate = Keygate::builder(MemoryStore::new(), Pepper::new(1, [7u8; 32])?).build()?;
//! // GitHub's public keys, fetched by the operator from
//! // https://api.github.com/meta/public_keys/secret_scanning (keygate makes no requests).
//! let keys = GithubKeys::from_json(
//!     br#"{"public_keys": [{
//!         "key_identifier": "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a",
//!         "key": "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9MJJHnMfn2+H4xL4YaPDA4RpJqUq\nkCmRCBnYERxZanmcpzQSXs1X/AljlKkbJ8qpVIW4clayyef9gWhFbNHWAA==\n-----END PUBLIC KEY-----\n",
//!         "is_current": true
//!     }]}"#,
//! )?;
//! let reports = LeakReports::new(gate, keys);
//!
//! // In a handler (keygate::axum::leak_routes and keygate::actix::leak_resource do this):
//! let answer = reports
//!     .handle(LeakRequest::new([&b"not-a-key-id"[..]], [&b"MEUCIQ=="[..]], b"[]"))
//!     .await;
//! assert_eq!(answer.status, 401); // unknown key identifier: refused, nothing read
//! # Ok(()) }
//! ```
//!
//! # The protocol, as implemented
//!
//! - **Request**: `POST` with headers `Github-Public-Key-Identifier` (which key of the
//!   [`GithubKeys`] document signed) and `Github-Public-Key-Signature` (base64 of the ASN.1
//!   DER ECDSA P-256 SHA-256 signature of the raw body), and a JSON array of
//!   `{"token", "type", "url", "source"}` objects.
//! - **Refused, with nothing read or written** ([`LeakError`]): a missing header (401
//!   `missing_signature`); a header sent twice, too long or not base64 (400
//!   `invalid_request`); an unknown key identifier (401 `unknown_key_identifier`); a
//!   signature that does not verify, whether the body was altered or another key signed it
//!   (401 `invalid_signature`); a body over [`LeakReports::max_body`] (413
//!   `payload_too_large`). After the signature: a body that is not a JSON array of such
//!   objects (400), or more than [`LeakReports::max_tokens`] tokens (413
//!   `too_many_tokens`).
//! - **Each token**: an opaque key is parsed with the gate's prefix and checksum, read by
//!   its id, and its secret compared with the record's hash in constant time; a JWT key
//!   must carry a valid HS256 signature under the gate's JWT secret and API-key claims
//!   (its own `exp` and `nbf` are not consulted: an expired key is still yours), name a
//!   JWT record, and match that record's hash when it has one. A token with a valid
//!   checksum and a wrong secret is a `false_positive`, and nothing is written.
//! - **A true positive** is revoked through [`Keygate::revoke`] (an already revoked key
//!   is not written again and is still a `true_positive`), and a `KeyLeaked` event is
//!   logged at warn level (target `keygate`) with the key id, owner, format, and the
//!   report's `url`, `source` and `type`; never the token.
//! - **Bounded work**: at most [`max_tokens`](LeakReports::max_tokens) tokens (the parser
//!   stops at the first one over), each one store read (within the gate's
//!   [`store_timeout`](crate::KeygateBuilder::store_timeout)) and at most one write; a
//!   token reported twice is judged once. Give the server a request timeout too: writes
//!   are not bounded by `store_timeout`.
//! - **Answer**: 200 with `[{"token_raw", "token_type", "label"}]`, one entry per reported
//!   token, in order ([`LabelForm::Sha256`] sends `token_hash` instead of `token_raw`).
//!   When the store fails, 503 with `Retry-After` (500 for a corrupt record or a wrong
//!   pepper) and no labels: keys revoked before the failure stay revoked, and a retry of
//!   the same report is harmless.
//!
//! # Registering with GitHub
//!
//! Send GitHub (secret-scanning@github.com) the token type name, the regular expression
//! [`SCANNER_REGEX`](crate::SCANNER_REGEX) (or [`scanner_regex`](crate::scanner_regex) for
//! your prefix only, which is more precise), and the URL where this endpoint is mounted
//! (`/leaks/github` by convention). Keep GitHub's public keys in a file and refresh it
//! from `https://api.github.com/meta/public_keys/secret_scanning` when GitHub rotates them
//! ([`LeakReports::set_keys`] swaps them in a running server).
//!
//! [secret scanning partner program]: https://docs.github.com/en/code-security/secret-scanning/secret-scanning-partnership-program/secret-scanning-partner-program

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, RwLock};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Rejection};
use crate::gate::Keygate;
use crate::key::{self, KeyFormat, KeyId, OpaqueKey};
use crate::record::KeyRecord;
use crate::store::StoreError;

/// Where `keygate serve` mounts the endpoint, and the path to give GitHub by convention.
pub const GITHUB_PATH: &str = "/leaks/github";

/// The request header naming the GitHub key that signed the body.
pub const IDENTIFIER_HEADER: &str = "github-public-key-identifier";
/// The request header carrying the body's signature (base64 of ASN.1 DER).
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";

/// Default largest request body, in bytes: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;
/// Default most tokens in one report.
pub const DEFAULT_MAX_TOKENS: usize = 1000;

/// Longest `Github-Public-Key-Identifier` read (GitHub's are 64 hex digits).
const MAX_IDENTIFIER_LEN: usize = 256;
/// Longest `Github-Public-Key-Signature` read: a DER P-256 signature is at most 72 bytes,
/// 96 in base64.
const MAX_SIGNATURE_LEN: usize = 256;
/// Largest public keys document read.
const MAX_KEYS_DOCUMENT: u64 = 256 * 1024;
/// Most keys in a public keys document.
const MAX_PUBLIC_KEYS: usize = 64;
/// Longest reported token looked at; anything longer is no key of ours.
const MAX_TOKEN_LEN: usize = 8192;
/// Longest `url`, `source` or `type` written into an event, in bytes (cut on a character
/// boundary).
const MAX_LOGGED_FIELD: usize = 2048;

/// The DER of a P-256 `SubjectPublicKeyInfo` up to its uncompressed point: SEQUENCE {
/// SEQUENCE { OID id-ecPublicKey, OID prime256v1 }, BIT STRING (0 unused bits) }. DER has
/// exactly one encoding of this structure, so comparing these bytes is a complete parse.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const PEM_BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
const PEM_END: &str = "-----END PUBLIC KEY-----";

// ---------------------------------------------------------------------------------------
// GitHub's public keys
// ---------------------------------------------------------------------------------------

/// GitHub's secret-scanning public keys, from the document GitHub publishes at
/// `https://api.github.com/meta/public_keys/secret_scanning`:
/// `{"public_keys": [{"key_identifier", "key", "is_current"}]}`, each `key` a PEM P-256
/// public key. Every listed key is accepted (GitHub may sign with one that is no longer
/// `is_current` while it rotates); the header names which.
#[derive(Clone)]
pub struct GithubKeys {
    keys: Vec<GithubKey>,
}

#[derive(Clone)]
struct GithubKey {
    identifier: String,
    /// The uncompressed point, `04 || X || Y`, as `ring` takes it.
    point: [u8; 65],
    current: bool,
}

impl fmt::Debug for GithubKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| (&k.identifier, k.current)))
            .finish()
    }
}

/// Why a public keys document was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeysError {
    /// The file could not be read.
    #[error("cannot read the GitHub public keys file")]
    Io(#[source] std::io::Error),
    /// The document is larger than keygate reads (256 KiB).
    #[error("the GitHub public keys document is too large")]
    TooLarge,
    /// Not GitHub's JSON shape.
    #[error("the GitHub public keys document is not of GitHub's shape")]
    Json(#[source] serde_json::Error),
    /// No keys (or more than 64): an endpoint that could accept no report is a mistake.
    #[error("the GitHub public keys document must list between 1 and 64 keys")]
    KeyCount,
    /// One key is not a PEM P-256 public key, or its identifier is empty, too long or
    /// listed twice.
    #[error("GitHub public key {identifier:?}: {reason}")]
    Key {
        /// The `key_identifier` of the key.
        identifier: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

#[derive(Deserialize)]
struct KeysDocument {
    public_keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
struct KeyEntry {
    key_identifier: String,
    key: String,
    #[serde(default)]
    is_current: bool,
}

impl GithubKeys {
    /// Reads GitHub's public keys document (JSON).
    ///
    /// # Errors
    ///
    /// [`KeysError::Json`] when it is not `{"public_keys": [{"key_identifier", "key",
    /// "is_current"}]}`; [`KeysError::KeyCount`] for no keys or more than 64;
    /// [`KeysError::Key`] for a key that is not a PEM P-256 (uncompressed) public key or an
    /// identifier that is empty, over 256 bytes or listed twice; [`KeysError::TooLarge`]
    /// over 256 KiB.
    pub fn from_json(json: &[u8]) -> Result<Self, KeysError> {
        if u64::try_from(json.len()).map_or(true, |len| len > MAX_KEYS_DOCUMENT) {
            return Err(KeysError::TooLarge);
        }
        let document: KeysDocument = serde_json::from_slice(json).map_err(KeysError::Json)?;
        if document.public_keys.is_empty() || document.public_keys.len() > MAX_PUBLIC_KEYS {
            return Err(KeysError::KeyCount);
        }
        let mut keys: Vec<GithubKey> = Vec::with_capacity(document.public_keys.len());
        for entry in document.public_keys {
            let bad = |reason| KeysError::Key {
                identifier: entry.key_identifier.clone(),
                reason,
            };
            if entry.key_identifier.is_empty() || entry.key_identifier.len() > MAX_IDENTIFIER_LEN {
                return Err(bad("the identifier is empty or longer than 256 bytes"));
            }
            if keys.iter().any(|k| k.identifier == entry.key_identifier) {
                return Err(bad("the identifier is listed twice"));
            }
            let point = p256_point(&entry.key).map_err(bad)?;
            keys.push(GithubKey {
                identifier: entry.key_identifier,
                point,
                current: entry.is_current,
            });
        }
        Ok(Self { keys })
    }

    /// Reads GitHub's public keys document from a file (see [`from_json`](Self::from_json)).
    ///
    /// # Errors
    ///
    /// [`KeysError::Io`] when the file cannot be read; otherwise as
    /// [`from_json`](Self::from_json).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, KeysError> {
        let file = std::fs::File::open(path).map_err(KeysError::Io)?;
        let mut json = Vec::new();
        file.take(MAX_KEYS_DOCUMENT.saturating_add(1))
            .read_to_end(&mut json)
            .map_err(KeysError::Io)?;
        Self::from_json(&json)
    }

    /// The key identifiers, in the document's order, each with its `is_current` flag.
    pub fn identifiers(&self) -> impl Iterator<Item = (&str, bool)> + '_ {
        self.keys.iter().map(|k| (k.identifier.as_str(), k.current))
    }

    fn find(&self, identifier: &[u8]) -> Option<&GithubKey> {
        self.keys
            .iter()
            .find(|k| k.identifier.as_bytes() == identifier)
    }
}

/// The uncompressed point of a PEM `PUBLIC KEY` holding a P-256 `SubjectPublicKeyInfo`.
/// `ring` checks that the point is on the curve when it verifies.
fn p256_point(pem: &str) -> Result<[u8; 65], &'static str> {
    let body = pem
        .trim()
        .strip_prefix(PEM_BEGIN)
        .and_then(|rest| rest.strip_suffix(PEM_END))
        .ok_or("not a PEM \"PUBLIC KEY\"")?;
    let base64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = STANDARD
        .decode(base64)
        .map_err(|_| "the PEM body is not base64")?;
    der.strip_prefix(&P256_SPKI_PREFIX[..])
        .and_then(|point| <[u8; 65]>::try_from(point).ok())
        .filter(|point| point.first() == Some(&0x04))
        .ok_or("not an uncompressed P-256 (prime256v1) public key")
}

// ---------------------------------------------------------------------------------------
// Requests, answers and errors
// ---------------------------------------------------------------------------------------

/// One header's values as received.
#[derive(Clone, Copy)]
enum Field<'a> {
    Missing,
    One(&'a [u8]),
    Many,
}

impl<'a> Field<'a> {
    fn of(values: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut values = values.into_iter();
        match (values.next(), values.next()) {
            (None, _) => Field::Missing,
            (Some(one), None) => Field::One(one),
            (Some(_), Some(_)) => Field::Many,
        }
    }
}

/// A leak report as received: the values of its two signature headers and its raw body.
pub struct LeakRequest<'a> {
    identifier: Field<'a>,
    signature: Field<'a>,
    body: &'a [u8],
}

impl<'a> LeakRequest<'a> {
    /// A request from every value of its `Github-Public-Key-Identifier` header, every
    /// value of its `Github-Public-Key-Signature` header (none: missing; more than one: a
    /// malformed request), and the body exactly as received.
    pub fn new<I, S>(identifiers: I, signatures: S, body: &'a [u8]) -> Self
    where
        I: IntoIterator<Item = &'a [u8]>,
        S: IntoIterator<Item = &'a [u8]>,
    {
        Self {
            identifier: Field::of(identifiers),
            signature: Field::of(signatures),
            body,
        }
    }
}

/// Redacted: the body holds the reported tokens.
impl fmt::Debug for LeakRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakRequest")
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// Why a leak report was refused, or could not be handled. See [`status`](Self::status)
/// and [`code`](Self::code) for its HTTP answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeakError {
    /// `Github-Public-Key-Identifier` or `Github-Public-Key-Signature` is missing
    /// (HTTP 401 `missing_signature`).
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    /// One of the two headers is sent twice, too long, or (the signature) not base64
    /// (HTTP 400 `invalid_request`).
    #[error("the {0} header is malformed")]
    MalformedHeader(&'static str),
    /// The identifier names no key of the configured [`GithubKeys`] (HTTP 401
    /// `unknown_key_identifier`).
    #[error("unknown GitHub public key identifier")]
    UnknownKeyIdentifier,
    /// The signature does not verify over the body with the named key: an altered body,
    /// or another key's signature (HTTP 401 `invalid_signature`).
    #[error("the signature does not verify")]
    BadSignature,
    /// The body is larger than [`LeakReports::max_body`] (HTTP 413 `payload_too_large`).
    #[error("the report is larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The body could not be read (the connection failed or the framework refused it)
    /// (HTTP 400 `invalid_request`).
    #[error("the request body could not be read")]
    UnreadableBody,
    /// The signed body is not a JSON array of `{"token", "type", "url", "source"}`
    /// objects (HTTP 400 `invalid_request`).
    #[error("the report is not a JSON array of token matches")]
    MalformedReport(#[source] serde_json::Error),
    /// The report names more than [`LeakReports::max_tokens`] tokens (HTTP 413
    /// `too_many_tokens`).
    #[error("the report names more than {limit} tokens")]
    TooManyTokens {
        /// The limit.
        limit: usize,
    },
    /// The key store failed or timed out (HTTP 503 `temporarily_unavailable`, with
    /// `Retry-After`), or holds a record keygate cannot trust (HTTP 500 `server_error`).
    #[error("key store error")]
    Store(#[source] StoreError),
    /// This gate's pepper is not the one the store's keys were made with (HTTP 500
    /// `server_error`): no key could be recognised, so none is labelled.
    #[error("pepper version {version} does not match the key store")]
    PepperMismatch {
        /// The pepper version that does not match.
        version: u32,
    },
    /// Revoking a leaked key failed otherwise (HTTP 500 `server_error`).
    #[error("revoking a leaked key failed")]
    Revoke(#[source] Error),
}

impl LeakError {
    /// The HTTP status of this refusal.
    pub fn status(&self) -> u16 {
        match self {
            LeakError::MissingHeader(_)
            | LeakError::UnknownKeyIdentifier
            | LeakError::BadSignature => 401,
            LeakError::MalformedHeader(_)
            | LeakError::UnreadableBody
            | LeakError::MalformedReport(_) => 400,
            LeakError::BodyTooLarge { .. } | LeakError::TooManyTokens { .. } => 413,
            LeakError::Store(StoreError::Corrupt(_)) => 500,
            LeakError::Store(_) => 503,
            LeakError::PepperMismatch { .. } | LeakError::Revoke(_) => 500,
        }
    }

    /// A stable machine-readable code, the `error` member of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            LeakError::MissingHeader(_) => "missing_signature",
            LeakError::MalformedHeader(_)
            | LeakError::UnreadableBody
            | LeakError::MalformedReport(_) => "invalid_request",
            LeakError::UnknownKeyIdentifier => "unknown_key_identifier",
            LeakError::BadSignature => "invalid_signature",
            LeakError::BodyTooLarge { .. } => "payload_too_large",
            LeakError::TooManyTokens { .. } => "too_many_tokens",
            LeakError::Store(StoreError::Corrupt(_)) => "server_error",
            LeakError::Store(_) => "temporarily_unavailable",
            LeakError::PepperMismatch { .. } | LeakError::Revoke(_) => "server_error",
        }
    }

    /// Whether the report was refused before its signature checked out (nothing in it
    /// was read).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            LeakError::MissingHeader(_)
                | LeakError::MalformedHeader(_)
                | LeakError::UnreadableBody
                | LeakError::UnknownKeyIdentifier
                | LeakError::BadSignature
                | LeakError::BodyTooLarge { .. }
        )
    }
}

/// What a reported token was found to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Label {
    /// A key of this gate: it is revoked.
    TruePositive,
    /// Not a key of this gate (another prefix, a bad checksum, an unknown id, a wrong
    /// secret, a bad JWT signature…).
    FalsePositive,
}

impl Label {
    /// `"true_positive"` or `"false_positive"`, as the protocol spells them.
    pub fn as_str(&self) -> &'static str {
        match self {
            Label::TruePositive => "true_positive",
            Label::FalsePositive => "false_positive",
        }
    }
}

/// How a reported token is named in the answer's labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LabelForm {
    /// `"token_raw"`: the token as reported (the default; GitHub's primary form).
    #[default]
    Raw,
    /// `"token_hash"`: the lowercase hex SHA-256 of the token, so the answer does not
    /// repeat it.
    Sha256,
}

/// The verdict on one reported token. Never holds the token.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verdict {
    /// The label answered for it.
    pub label: Label,
    /// The key it was tied to, for a true positive.
    pub key_id: Option<KeyId>,
    /// Whether this report revoked the key (`false` for a key that was already revoked,
    /// or deleted meanwhile, and for a false positive).
    pub revoked: bool,
    /// Why it is a false positive.
    pub rejection: Option<Rejection>,
}

impl Verdict {
    fn false_positive(rejection: Rejection) -> Self {
        Self {
            label: Label::FalsePositive,
            key_id: None,
            revoked: false,
            rejection: Some(rejection),
        }
    }
}

/// One match of a report. `Debug` leaves the token out.
#[derive(Deserialize)]
struct Match {
    token: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    source: String,
}

/// A report whose signature checked out, with a verdict for each token, in the report's
/// order. `Debug` shows the verdicts, never the tokens.
pub struct CheckedReport {
    matches: Vec<Match>,
    verdicts: Vec<Verdict>,
    form: LabelForm,
}

impl fmt::Debug for CheckedReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckedReport")
            .field("verdicts", &self.verdicts)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct LabelOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    token_raw: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_hash: Option<String>,
    token_type: &'a str,
    label: Label,
}

impl CheckedReport {
    /// One verdict per reported token, in the report's order.
    pub fn verdicts(&self) -> &[Verdict] {
        &self.verdicts
    }

    /// The answer's body: `[{"token_raw", "token_type", "label"}]`, in the report's order
    /// (`token_hash` instead of `token_raw` with [`LabelForm::Sha256`]).
    pub fn labels_json(&self) -> String {
        let labels: Vec<LabelOut<'_>> = self
            .matches
            .iter()
            .zip(&self.verdicts)
            .map(|(m, verdict)| {
                let (token_raw, token_hash) = match self.form {
                    LabelForm::Raw => (Some(m.token.as_str()), None),
                    LabelForm::Sha256 => (None, Some(sha256_hex(m.token.as_bytes()))),
                };
                LabelOut {
                    token_raw,
                    token_hash,
                    token_type: &m.kind,
                    label: verdict.label,
                }
            })
            .collect();
        serde_json::to_string(&labels).unwrap_or_else(|_| "[]".to_owned())
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = String::with_capacity(64);
    for byte in digest.as_ref() {
        for nibble in [byte >> 4, byte & 0x0f] {
            out.push(char::from(
                HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'),
            ));
        }
    }
    out
}

/// A leak report's HTTP answer: status, body, headers. `Debug` leaves the body out (a
/// 200 body repeats the reported tokens).
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct LeakResponse {
    /// HTTP status.
    pub status: u16,
    /// `application/json`.
    pub content_type: &'static str,
    /// The labels (200), or `{"error", "error_description"}`.
    pub body: String,
    /// `Retry-After` seconds, for 503.
    pub retry_after: Option<u32>,
}

impl fmt::Debug for LeakResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakResponse")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .field("retry_after", &self.retry_after)
            .finish_non_exhaustive()
    }
}

/// 200 with the report's [labels](CheckedReport::labels_json).
impl From<&CheckedReport> for LeakResponse {
    fn from(report: &CheckedReport) -> Self {
        Self {
            status: 200,
            content_type: "application/json",
            body: report.labels_json(),
            retry_after: None,
        }
    }
}

impl LeakResponse {
    /// The answer for `error`: its [status](LeakError::status) and
    /// `{"error": code, "error_description": text}`.
    pub fn error(error: &LeakError) -> Self {
        let status = error.status();
        let body = serde_json::json!({
            "error": error.code(),
            "error_description": error.to_string(),
        });
        Self {
            status,
            content_type: "application/json",
            body: body.to_string(),
            retry_after: (status == 503).then_some(crate::http::RETRY_AFTER_SECS),
        }
    }

    /// The body could not be read: 413 beyond `limit`, 400 otherwise. For the framework
    /// adapters.
    #[cfg(any(feature = "axum", feature = "actix"))]
    pub(crate) fn unreadable_body(too_large: bool, limit: usize) -> Self {
        if too_large {
            Self::error(&LeakError::BodyTooLarge { limit })
        } else {
            Self::error(&LeakError::UnreadableBody)
        }
    }

    /// Every header to send besides the status: `Content-Type`, then `Retry-After` when
    /// set. Names are lowercase.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        let content_type = Some(("content-type", self.content_type.to_owned()));
        let retry_after = self
            .retry_after
            .map(|secs| ("retry-after", secs.to_string()));
        [content_type, retry_after].into_iter().flatten()
    }
}

// ---------------------------------------------------------------------------------------
// The handler
// ---------------------------------------------------------------------------------------

/// The leak-report endpoint of one [`Keygate`]: GitHub's public keys, limits, and the
/// handling (see the [module docs](self)). Cheap to clone.
#[derive(Clone)]
pub struct LeakReports {
    gate: Keygate,
    keys: Arc<RwLock<Arc<GithubKeys>>>,
    max_body: usize,
    max_tokens: usize,
    form: LabelForm,
}

impl fmt::Debug for LeakReports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakReports")
            .field("keys", &self.keys())
            .field("max_body", &self.max_body)
            .field("max_tokens", &self.max_tokens)
            .field("form", &self.form)
            .finish_non_exhaustive()
    }
}

impl LeakReports {
    /// Leak reports for `gate`, signed by one of `keys`; at most
    /// [`DEFAULT_MAX_BODY`] bytes and [`DEFAULT_MAX_TOKENS`] tokens per report.
    pub fn new(gate: Keygate, keys: GithubKeys) -> Self {
        Self {
            gate,
            keys: Arc::new(RwLock::new(Arc::new(keys))),
            max_body: DEFAULT_MAX_BODY,
            max_tokens: DEFAULT_MAX_TOKENS,
            form: LabelForm::Raw,
        }
    }

    /// The largest body accepted, in bytes (the framework adapters stop reading there).
    #[must_use]
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The most tokens one report may name; a larger report is refused whole (413), so
    /// the work per request stays bounded.
    #[must_use]
    pub fn max_tokens(mut self, tokens: usize) -> Self {
        self.max_tokens = tokens;
        self
    }

    /// How tokens are named in the answer (default [`LabelForm::Raw`]).
    #[must_use]
    pub fn label_form(mut self, form: LabelForm) -> Self {
        self.form = form;
        self
    }

    /// The body limit in bytes.
    pub fn body_limit(&self) -> usize {
        self.max_body
    }

    /// The gate whose keys are looked up and revoked.
    pub fn gate(&self) -> &Keygate {
        &self.gate
    }

    /// The public keys in use.
    pub fn keys(&self) -> Arc<GithubKeys> {
        match self.keys.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the public keys (after GitHub rotated them), for every clone of this
    /// endpoint; requests under way finish with the keys they started with.
    pub fn set_keys(&self, keys: GithubKeys) {
        let keys = Arc::new(keys);
        match self.keys.write() {
            Ok(mut slot) => *slot = keys,
            Err(poisoned) => *poisoned.into_inner() = keys,
        }
    }

    /// Handles one report and renders the answer: the labels (200) or the refusal.
    pub async fn handle(&self, request: LeakRequest<'_>) -> LeakResponse {
        match self.check(request).await {
            Ok(report) => LeakResponse::from(&report),
            Err(error) => {
                if error.is_unauthenticated() {
                    tracing::debug!(target: "keygate", reason = error.code(), "leak report refused");
                } else {
                    tracing::warn!(target: "keygate", reason = error.code(), error = %error, "leak report not handled");
                }
                LeakResponse::error(&error)
            }
        }
    }

    /// Handles one report: checks the signature over the raw body, then reads it and
    /// judges, revokes and logs each token (see the [module docs](self)).
    ///
    /// # Errors
    ///
    /// Before anything is read or written: [`LeakError::MissingHeader`],
    /// [`LeakError::MalformedHeader`], [`LeakError::BodyTooLarge`],
    /// [`LeakError::UnknownKeyIdentifier`], [`LeakError::BadSignature`]. Before anything is
    /// written: [`LeakError::MalformedReport`], [`LeakError::TooManyTokens`],
    /// [`LeakError::PepperMismatch`]. [`LeakError::Store`] or [`LeakError::Revoke`] when
    /// the store fails on the way (keys revoked before then stay revoked).
    pub async fn check(&self, request: LeakRequest<'_>) -> Result<CheckedReport, LeakError> {
        self.authenticate(&request)?;
        let matches = parse_report(request.body, self.max_tokens)?;
        if !matches.is_empty() {
            self.gate
                .check_pepper()
                .await
                .map_err(|error| match error {
                    Error::PepperMismatch { version } => LeakError::PepperMismatch { version },
                    Error::Store(error) => LeakError::Store(error),
                    other => LeakError::Revoke(other),
                })?;
        }
        let mut verdicts = Vec::with_capacity(matches.len());
        // A token reported twice is judged (and revoked) once.
        let mut seen: HashMap<&str, Verdict> = HashMap::new();
        for m in &matches {
            let verdict = match seen.get(m.token.as_str()) {
                Some(verdict) => Verdict {
                    revoked: false,
                    ..verdict.clone()
                },
                None => {
                    let verdict = self.judge(m).await?;
                    seen.insert(&m.token, verdict.clone());
                    verdict
                }
            };
            verdicts.push(verdict);
        }
        Ok(CheckedReport {
            matches,
            verdicts,
            form: self.form,
        })
    }

    /// The headers, the body's size and the signature over the raw body: everything
    /// decided before the body is read.
    fn authenticate(&self, request: &LeakRequest<'_>) -> Result<(), LeakError> {
        let identifier = header(request.identifier, IDENTIFIER_HEADER, MAX_IDENTIFIER_LEN)?;
        let signature = header(request.signature, SIGNATURE_HEADER, MAX_SIGNATURE_LEN)?;
        let signature = STANDARD
            .decode(signature.trim_ascii())
            .map_err(|_| LeakError::MalformedHeader(SIGNATURE_HEADER))?;
        if request.body.len() > self.max_body {
            return Err(LeakError::BodyTooLarge {
                limit: self.max_body,
            });
        }
        let keys = self.keys();
        let key = keys
            .find(identifier.trim_ascii())
            .ok_or(LeakError::UnknownKeyIdentifier)?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &key.point)
            .verify(request.body, &signature)
            .map_err(|_| LeakError::BadSignature)
    }

    /// The verdict on one token; a true positive is revoked and logged.
    async fn judge(&self, m: &Match) -> Result<Verdict, LeakError> {
        let record = match self.identify(&m.token).await? {
            Ok(record) => record,
            Err(rejection) => {
                if rejection == Rejection::JwtSessionToken {
                    tracing::warn!(target: "keygate", source_url = ?clip(&m.url), "a leak report names a session token signed with the JWT secret; it is no API key and is not revoked");
                }
                return Ok(Verdict::false_positive(rejection));
            }
        };
        let already_revoked = !record.active;
        let revoked = if already_revoked {
            false
        } else {
            match self.gate.revoke(record.id).await {
                Ok(_) => true,
                // Deleted since it was read: it cannot be used any more either.
                Err(Error::NotFound(_)) => false,
                Err(Error::Store(error)) => return Err(LeakError::Store(error)),
                Err(other) => return Err(LeakError::Revoke(other)),
            }
        };
        tracing::warn!(
            target: "keygate",
            event = "KeyLeaked",
            key_id = %record.id,
            owner = ?record.owner,
            format = %record.format,
            source_url = ?clip(&m.url),
            source = ?clip(&m.source),
            token_type = ?clip(&m.kind),
            already_revoked,
            "key leaked: reported by GitHub secret scanning; revoked"
        );
        Ok(Verdict {
            label: Label::TruePositive,
            key_id: Some(record.id),
            revoked,
            rejection: None,
        })
    }

    /// The record `token` is the key of, or why it is none: the verify path's token and
    /// hash checks, without its checks of activity, expiry and owner.
    async fn identify(&self, token: &str) -> Result<Result<Arc<KeyRecord>, Rejection>, LeakError> {
        let inner = &*self.gate.inner;
        if token.len() > MAX_TOKEN_LEN {
            return Ok(Err(Rejection::Malformed));
        }
        if token.as_bytes().contains(&b'.') {
            let Some(jwt) = &inner.jwt else {
                return Ok(Err(Rejection::JwtDisabled));
            };
            let claims = match jwt.authentic(token) {
                Ok((claims, _nbf)) => claims,
                Err(rejection) => return Ok(Err(rejection)),
            };
            let Some(record) = self.lookup(claims.key_id).await? else {
                return Ok(Err(Rejection::UnknownKey));
            };
            if record.format != KeyFormat::Jwt {
                return Ok(Err(Rejection::FormatMismatch));
            }
            // As verify: a key minted here is bound to its exact token; an imported
            // Audiobookshelf key rests on the signature alone.
            if let Some(hash) = &record.hash {
                if !inner.pepper.matches(hash, claims.signature, None) {
                    return Ok(Err(Rejection::HashMismatch));
                }
            }
            return Ok(Ok(record));
        }
        if token.len() > key::MAX_OPAQUE_LEN {
            return Ok(Err(Rejection::Malformed));
        }
        let key = match OpaqueKey::parse(token, &inner.prefix) {
            Ok(key) => key,
            Err(rejection) => return Ok(Err(rejection)),
        };
        let record = self.lookup(key.id).await?;
        let matched = match &record {
            Some(r) if r.format == KeyFormat::Opaque => r
                .hash
                .as_ref()
                .map(|hash| inner.pepper.matches(hash, key.secret, Some(key.bound))),
            _ => None,
        };
        match (record, matched) {
            (Some(record), Some(true)) => Ok(Ok(record)),
            (Some(_), Some(false)) => Ok(Err(Rejection::HashMismatch)),
            (record, _) => {
                inner.pepper.burn(key.bound);
                Ok(Err(match record {
                    None => Rejection::UnknownKey,
                    Some(r) if r.format != KeyFormat::Opaque => Rejection::FormatMismatch,
                    Some(_) => Rejection::HashMismatch,
                }))
            }
        }
    }

    /// The record for `id`, within the gate's store timeout, checked as verify checks it.
    async fn lookup(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, LeakError> {
        let inner = &*self.gate.inner;
        let lookup = inner.store.get(id);
        let answer = match inner.store_timeout {
            None => lookup.await,
            Some(limit) => tokio::time::timeout(limit, lookup)
                .await
                .unwrap_or(Err(StoreError::Timeout)),
        };
        match answer.map_err(LeakError::Store)? {
            None => Ok(None),
            Some(record) => match record.check(id) {
                Ok(()) => Ok(Some(record)),
                Err(invalid) => {
                    tracing::error!(target: "keygate", key_id = %id, "leak report: stored record is corrupt");
                    Err(LeakError::Store(StoreError::Corrupt(Box::new(invalid))))
                }
            },
        }
    }
}

/// The single value of a header, length-capped.
fn header<'a>(field: Field<'a>, name: &'static str, max: usize) -> Result<&'a [u8], LeakError> {
    match field {
        Field::Missing => Err(LeakError::MissingHeader(name)),
        Field::Many => Err(LeakError::MalformedHeader(name)),
        Field::One([]) => Err(LeakError::MissingHeader(name)),
        Field::One(value) if value.len() > max => Err(LeakError::MalformedHeader(name)),
        Field::One(value) => Ok(value),
    }
}

/// `text` cut to [`MAX_LOGGED_FIELD`] bytes on a character boundary.
fn clip(text: &str) -> &str {
    if text.len() <= MAX_LOGGED_FIELD {
        return text;
    }
    let mut end = MAX_LOGGED_FIELD;
    while !text.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    text.get(..end).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// The report's JSON
// ---------------------------------------------------------------------------------------

/// Parses a signed report: UTF-8, a JSON array of match objects, at most `max` of them
/// (the parser stops at the first one over).
fn parse_report(body: &[u8], max: usize) -> Result<Vec<Match>, LeakError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| LeakError::MalformedReport(de::Error::custom("not UTF-8")))?;
    let mut over = false;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let parsed = Matches {
        max,
        over: &mut over,
    }
    .deserialize(&mut deserializer)
    .and_then(|matches| deserializer.end().map(|()| matches));
    match parsed {
        Ok(matches) => Ok(matches),
        Err(_) if over => Err(LeakError::TooManyTokens { limit: max }),
        Err(error) => Err(LeakError::MalformedReport(error)),
    }
}

/// A JSON array of at most `max` matches; `over` is set when there are more.
struct Matches<'a> {
    max: usize,
    over: &'a mut bool,
}

impl<'de> DeserializeSeed<'de> for Matches<'_> {
    type Value = Vec<Match>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Matches<'_> {
    type Value = Vec<Match>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of token matches")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut matches = Vec::new();
        while let Some(m) = seq.next_element::<Match>()? {
            if matches.len() >= self.max {
                *self.over = true;
                return Err(de::Error::custom("too many tokens"));
            }
            matches.push(m);
        }
        Ok(matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_prefix_is_the_der_of_a_p256_key_info() {
        // GitHub's published example key (docs, "Validation sample in Python").
        let pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9MJJHnMfn2+H4xL4YaPDA4RpJqUq\nkCmRCBnYERxZanmcpzQSXs1X/AljlKkbJ8qpVIW4clayyef9gWhFbNHWAA==\n-----END PUBLIC KEY-----\n";
        let point = p256_point(pem).unwrap();
        assert_eq!(point[0], 4);
        for bad in [
            "",
            "-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----",
            // An RSA key's header.
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----",
            // Truncated point.
            "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9MJJHnMfn2+H4xL4YaPDA4RpJqUq\n-----END PUBLIC KEY-----",
        ] {
            assert!(p256_point(bad).is_err(), "{bad:?}");
        }
    }

    /// The example GitHub publishes with its Python validation sample (key, payload and
    /// signature): keygate's PEM/SPKI reading and ring's ASN.1 verification agree with it.
    #[test]
    fn githubs_published_example_verifies() {
        let keys = GithubKeys::from_json(GITHUB_EXAMPLE_KEYS.as_bytes()).unwrap();
        let key = keys.find(GITHUB_EXAMPLE_ID.as_bytes()).unwrap();
        let signature = STANDARD.decode(GITHUB_EXAMPLE_SIGNATURE).unwrap();
        let verifier = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &key.point);
        assert!(verifier.verify(GITHUB_EXAMPLE_PAYLOAD, &signature).is_ok());
        let mut tampered = GITHUB_EXAMPLE_PAYLOAD.to_vec();
        tampered[12] ^= 1;
        assert!(verifier.verify(&tampered, &signature).is_err());
    }

    /// The same example, end to end: GitHub's published request is accepted and its token
    /// (no key of ours) labelled `false_positive`.
    #[tokio::test]
    async fn githubs_published_example_is_answered() {
        let gate = Keygate::builder(
            crate::MemoryStore::new(),
            crate::Pepper::new(1, [7u8; 32]).unwrap(),
        )
        .build()
        .unwrap();
        let keys = GithubKeys::from_json(GITHUB_EXAMPLE_KEYS.as_bytes()).unwrap();
        let reports = LeakReports::new(gate, keys);
        let answer = reports
            .handle(LeakRequest::new(
                [GITHUB_EXAMPLE_ID.as_bytes()],
                [GITHUB_EXAMPLE_SIGNATURE.as_bytes()],
                GITHUB_EXAMPLE_PAYLOAD,
            ))
            .await;
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.body,
            r#"[{"token_raw":"some_token","token_type":"some_type","label":"false_positive"}]"#
        );
    }

    const GITHUB_EXAMPLE_ID: &str =
        "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a";
    const GITHUB_EXAMPLE_KEYS: &str = r#"{"public_keys":[{"key_identifier":"90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a","key":"-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9MJJHnMfn2+H4xL4YaPDA4RpJqUq\nkCmRCBnYERxZanmcpzQSXs1X/AljlKkbJ8qpVIW4clayyef9gWhFbNHWAA==\n-----END PUBLIC KEY-----\n","is_current":true}]}"#;
    const GITHUB_EXAMPLE_PAYLOAD: &[u8] =
        br#"[{"token":"some_token","type":"some_type","url":"some_url"}]"#;
    const GITHUB_EXAMPLE_SIGNATURE: &str = "MEUCIQDKZokqnCjrRtw0tni+2Ltvl/uiMJ1EGumEsp1BsNr32AIgQY1YXD2nlj+XNfGK4rBfkMJ1JDOQcYXxa2sY8FNkrKc=";

    #[test]
    fn documents_of_the_wrong_shape_are_refused() {
        assert!(matches!(
            GithubKeys::from_json(br#"{"public_keys":[]}"#),
            Err(KeysError::KeyCount)
        ));
        assert!(matches!(
            GithubKeys::from_json(br#"{"keys":[]}"#),
            Err(KeysError::Json(_))
        ));
        let twice = format!(
            r#"{{"public_keys":[{entry},{entry}]}}"#,
            entry = &GITHUB_EXAMPLE_KEYS[16..GITHUB_EXAMPLE_KEYS.len() - 2]
        );
        assert!(
            matches!(
                GithubKeys::from_json(twice.as_bytes()),
                Err(KeysError::Key { .. })
            ),
            "{twice}"
        );
    }

    #[test]
    fn reports_parse_within_their_bounds() {
        let one = br#"[{"token":"t","type":"x","url":"u","source":"content","extra":1}]"#;
        let parsed = parse_report(one, 1).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].kind, "x");
        assert!(matches!(
            parse_report(br#"[{"token":"a"},{"token":"b"}]"#, 1),
            Err(LeakError::TooManyTokens { limit: 1 })
        ));
        for bad in [
            &b"{}"[..],
            b"[{}]",
            b"[{\"token\":1}]",
            b"[] []",
            b"[{\"token\":\"\xff\"}]",
            b"",
        ] {
            assert!(
                matches!(parse_report(bad, 10), Err(LeakError::MalformedReport(_))),
                "{bad:?}"
            );
        }
        assert!(parse_report(b" [ ] ", 0).unwrap().is_empty());
    }

    #[test]
    fn sha256_hex_is_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn clip_cuts_on_a_character_boundary() {
        let long = "é".repeat(MAX_LOGGED_FIELD);
        let cut = clip(&long);
        assert!(cut.len() <= MAX_LOGGED_FIELD);
        assert!(cut.len() >= MAX_LOGGED_FIELD - 1);
        assert_eq!(clip("short"), "short");
    }
}
