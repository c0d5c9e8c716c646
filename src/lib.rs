//! # keygate
//!
//! API keys for Rust servers: mint keys that act for a user and inherit that user's
//! permissions, hash them at rest, expire, revoke or delete them, and verify
//! `Authorization: Bearer <key>` in constant time, with typed outcomes that map onto
//! RFC 6750 responses.
//!
//! ```
//! use keygate::chrono::TimeDelta;
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
//! The sections below are the guide; the HTTP answers are in [`http`], the admin API in
//! [`admin`], the framework integrations in [`axum`] and [`actix`]
//! (features of the same names).
//!
//! - [Pieces](#pieces)
//! - [Owners and permissions](#owners-and-permissions)
//! - [Managing keys](#managing-keys)
//! - [Opaque keys](#opaque-keys)
//! - [JWT keys (Audiobookshelf)](#jwt-keys-audiobookshelf)
//! - [Verification](#verification)
//! - [Stores](#stores)
//! - [Leaked-key reports (GitHub)](#leaked-key-reports-github)
//! - [Security notes](#security-notes)
//! - [Feature flags](#feature-flags)
//!
//! # Pieces
//!
//! - [`Keygate`]: the facade ([`mint`](Keygate::mint), [`verify`](Keygate::verify),
//!   [`rotate`](Keygate::rotate), …), built with [`Keygate::builder`] from a store and a
//!   [`Pepper`].
//! - [`KeyStore`]: where records live; [`MemoryStore`] is built in, the others are
//!   [below](#stores).
//! - [`UserDirectory`]: the host application's users (active? permissions?).
//! - [`Principal`]: the verified caller; [`VerifyError`]: why not, with
//!   [`VerifyError::http`] for the HTTP answer.
//! - [`admin::AdminApi`]: the Audiobookshelf-style `/api/api-keys` API, for callers
//!   *explicitly* granted `"admin"` ([`Principal::grants`]: by the directory, or by the
//!   key's own scopes; never because there is no directory), and unable to mint or widen
//!   a key beyond the calling key's own reach.
//! - `admin::AdminPage` (features `axum`, `actix`): the API Keys web page over that API,
//!   as Audiobookshelf's Settings → Users → API Keys has it (list, create and show once,
//!   switch on and off, rotate, delete), shipped inside the crate under a strict
//!   Content-Security-Policy; mounted with `keygate::axum::admin_page` or
//!   `keygate::actix::admin_page_scope`. See the `admin::page` module.
//!
//! # Owners and permissions
//!
//! A key acts for its owner and inherits the owner's permissions, read at request time from
//! a [`UserDirectory`] you implement: deactivate or delete a user and all their keys stop
//! working; change their permissions and every key follows. Scopes on a key only narrow.
//!
//! ```
//! use keygate::async_trait::async_trait;
//! use keygate::{DirectoryError, Keygate, MemoryStore, NewKey, Owner, Pepper, UserDirectory};
//!
//! struct Users;
//!
//! #[async_trait]
//! impl UserDirectory for Users {
//!     async fn owner(&self, user_id: &str) -> Result<Option<Owner>, DirectoryError> {
//!         Ok(match user_id {
//!             "alice" => Some(Owner::with_permissions(["library:read", "library:write"])),
//!             _ => None, // unknown users' keys are refused
//!         })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let gate = Keygate::builder(MemoryStore::new(), Pepper::new(1, [42u8; 32])?)
//!     .users(Users)
//!     .build()?;
//! let issued = gate
//!     .mint(NewKey::new("read-only sync", "alice").scopes(["library:read"]))
//!     .await?;
//! let principal = gate.verify(issued.key.expose()).await?;
//! assert!(principal.allows("library:read"));
//! assert!(!principal.allows("library:write")); // alice may, this key may not
//! assert_eq!(principal.require("library:write").unwrap_err().http("app").status, 403);
//! # Ok(()) }
//! ```
//!
//! Without a directory, every owner counts as active with all permissions, and a key's
//! scopes are the only restriction: [`Principal::allows`] is true for anything an unscoped
//! key is asked. That implied "everything" never confers a power that must be granted
//! explicitly: [`Principal::grants`] is true only when the directory grants it (lists it,
//! or answers [`Permissions::All`]) or the key's own scopes name it. The admin API asks
//! `grants`, so on a gate without a directory only a key minted with `.scopes(["admin"])`
//! (a bootstrap key, e.g. from the CLI) is admin, never an unscoped key.
//!
//! # Managing keys
//!
//! [`Keygate`] has [`mint`](Keygate::mint), [`import`](Keygate::import) (insert an existing
//! record keeping its id, e.g. a migrated Audiobookshelf row), [`get`](Keygate::get),
//! [`list`](Keygate::list) (by owner, in creation order, paged by [`Cursor`]),
//! [`update`](Keygate::update) (name, description, owner, active, expiry, scopes, metadata),
//! [`revoke`](Keygate::revoke), [`delete`](Keygate::delete), [`rotate`](Keygate::rotate) (a
//! new key with the old one's owner, scopes and metadata; the old one lives on for a grace
//! period) and [`flush`](Keygate::flush) (write pending last-used times; call it at
//! shutdown). Every change and every refusal emits a `tracing` event (target `keygate`) with
//! the key id, never the key.
//!
//! # Opaque keys
//!
//! The default format: `<prefix>_` and 71 base62 characters.
//!
//! ```text
//! abs_2n9cWqJ0hQk3bTf1Yx7LmA  Vb0...43 random base62...Qz  1aZ9kP
//!     └── key id (UUID), 22 ─┘└── secret, 43 (256 bits) ──┘└ CRC32, 6
//! ```
//!
//! | part | chars | what |
//! |---|---|---|
//! | prefix | 1-16 | `[a-z][a-z0-9]{0,15}`, chosen with [`KeygateBuilder::prefix`], then `_` |
//! | id | 22 | the key id (a UUID) as a fixed-width base62 number |
//! | secret | 43 | uniformly random base62 characters: 256 bits of entropy |
//! | checksum | 6 | CRC32 of everything before it, prefix and `_` included, base62 |
//!
//! Only `[A-Za-z0-9_]` appears, so a double-click selects the whole key. A secret scanner
//! finds keys with [`SCANNER_REGEX`] (or [`scanner_regex`] for one prefix) and confirms a
//! match offline with [`checksum_ok`], which keeps false positives near zero. The verifier
//! runs the same checksum first: a typo, a truncated paste or garbage is refused without
//! touching the store.
//!
//! At rest a record holds `HMAC-SHA256(pepper[v], "<prefix>_<id part><secret part>")` (the
//! key without its checksum, so the digest is bound to its id and prefix:
//! [`HashScheme::Bound`]), the pepper version `v` and the scheme, never the key. Keys carry
//! 256 random bits, so one HMAC is enough; a slow password hash would only add latency.
//! Peppers are versioned: add a new one with `Pepper::new(2, new)?.with_previous(1, old)`,
//! and keys hashed under version 1 keep verifying and are re-hashed under version 2 after
//! their next successful use (in the background, with the last-used batch). Load peppers
//! with [`Pepper::from_default_env`] (`KEYGATE_PEPPER` or `KEYGATE_PEPPER_FILE`, as the CLI
//! does), [`Pepper::from_env`], [`Pepper::from_file`] or [`Pepper::load_or_create`].
//!
//! # JWT keys (Audiobookshelf)
//!
//! Enable with [`KeygateBuilder::jwt_secret`] and a [`JwtSecret`] (Audiobookshelf's
//! `TokenSecret`, bytes as given, at least 32 bytes), and mint with
//! [`NewKey::format`]`(`[`KeyFormat::Jwt`]`)`. Tokens are HS256 over
//! `{"keyId","name","type":"api","iat","exp"?}` with header `{"alg":"HS256","typ":"JWT"}`,
//! byte for byte what Audiobookshelf 2.26+ produces (the test suite checks this against
//! Node's `jsonwebtoken`, in both directions). Existing Audiobookshelf keys verify unchanged
//! once their rows are imported:
//!
//! ```
//! use keygate::{chrono::Utc, JwtSecret, KeyFormat, KeyId, KeyRecord, Keygate, MemoryStore, Pepper};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let gate = Keygate::builder(MemoryStore::new(), Pepper::new(1, [7u8; 32])?)
//!     .jwt_secret(JwtSecret::new("Audiobookshelf's TokenSecret, as stored in its settings")?)
//!     .build()?;
//! // One row of Audiobookshelf's apiKeys table. No hash: Audiobookshelf keeps none, the
//! // signature alone proves origin.
//! let id: KeyId = "3b8f3c2e-8a4e-4c8b-9a36-0f3f6f1f5e21".parse()?;
//! let record = KeyRecord::new(id, KeyFormat::Jwt, "Backup Script", "the row's userId", Utc::now());
//! gate.import(record).await?;
//! # Ok(()) }
//! ```
//!
//! Keys minted by keygate in JWT format also store a hash of their signature, so only that
//! exact token verifies: a leaked JWT secret alone cannot forge them (imported keys have no
//! hash and rest on the signature, as they do in Audiobookshelf). A record remembers its
//! format: an opaque record never accepts a JWT and vice versa.
//!
//! Refused before any store read:
//!
//! - a header or claims part that is not a JSON object (RFC 7515 §4, RFC 7519 §7.2): an
//!   array, string or number is `jwt_malformed`, never read field by field;
//! - any `alg` but `HS256` (`none` included), a `typ` other than `JWT`, any `crit` header,
//!   a bad signature;
//! - a `userId` or `username` claim (Audiobookshelf session tokens share the secret),
//!   `type` not exactly `"api"`, a `keyId` that is not a UUID in canonical lowercase
//!   hyphenated form;
//! - `exp`/`nbf`/`iat` that are not numbers (a string or `null` is refused, not ignored: the
//!   lesson of CVE-2026-25537), an `exp` that has passed, an `nbf` in the future.
//!
//! The `name` claim is never read: the record's name is the truth. Time policy for `exp`,
//! `nbf` and `iat` (NumericDates, RFC 7519 §2):
//!
//! - Dates are compared exactly, to the microsecond, against the verifier's clock in
//!   microseconds; a fractional date counts (rounded to the nearest microsecond).
//! - No leeway for clock skew in either direction (as Node's `jsonwebtoken` with its default
//!   `clockTolerance: 0`): keep the hosts' clocks synchronised.
//! - `exp` is strict: expired when `now >= exp`. `nbf` is inclusive: valid once `now >= nbf`.
//! - `iat` is type-checked only: a number when present, never compared with the clock (a
//!   token "issued in the future" is accepted). `jsonwebtoken` 9 ignores `iat` unless
//!   `maxAge` is set; keygate is stricter only in refusing a non-numeric one.
//! - For whole-second dates, which Audiobookshelf and keygate always mint, the outcome is
//!   `jsonwebtoken`'s (it compares `Math.floor(Date.now() / 1000)`); for fractional dates
//!   keygate is stricter (`jsonwebtoken` accepts a token up to a second past a fractional
//!   `exp`).
//! - The record's `expires_at` is enforced as well, with the same `now >= expires_at` rule.
//!
//! keygate signs and checks HS256 with `ring`, not `jsonwebtoken`, and never touches
//! `jsonwebtoken`'s process-wide crypto provider: a host application can use `jsonwebtoken`
//! with either backend beside it.
//!
//! # Verification
//!
//! 1. Header: `Bearer` matched case-insensitively, one or more spaces, exactly one
//!    `Authorization` header, length-capped, printable ASCII only, before any crypto.
//! 2. Format and checksum, or JWT header, signature and claims. A refusal here reads nothing:
//!    the token alone proves it.
//! 3. Store lookup by key id (never by secret). A store failure is
//!    [`VerifyError::StoreUnavailable`], not a bad key.
//! 4. Record: valid (a record that fails keygate's checks is [`VerifyError::StoreCorrupt`],
//!    HTTP 500), exists, same format, hash matches (constant time; an unknown id costs the
//!    same HMAC and compare), active, not expired (`now >= expires_at` is expired; the
//!    store's `expires_at` is the authority).
//! 5. Owner, through the [`UserDirectory`]: exists and active; permissions are the owner's
//!    now, narrowed by the key's scopes. Then the key's network policy, if it has one
//!    ([below](#network-restrictions)): 403 for a key that would otherwise be accepted.
//! 6. Usage limits (issue 9, [`limits`]): the owner's shared rate limits, then the key's own
//!    auto-applied limits and one credit, each one all-or-nothing [`limits::Limiter`] call.
//!    Only a key that passed every check above (network policy included) is charged; a
//!    refusal is 429 ([`VerifyError::RateLimited`], [`VerifyError::CreditsExhausted`]),
//!    never 401.
//! 7. Success: last-used is recorded off the request path, at most once per key per
//!    [`KeygateBuilder::last_used_interval`] (default 60 s), in one batch per flush, and never
//!    for a refused attempt.
//!
//! # Usage limits
//!
//! Keys carry named rate limits (GCRA: exact, no window edges) and usage credits with an
//! optional daily or monthly refill, in Unkey's shapes; owners can share limits across
//! their keys. State lives in a [`limits::Limiter`] (in process by default). A handler
//! charges a cost after verify:
//!
//! ```
//! use keygate::limits::{CreditPolicy, RateLimit};
//! use keygate::{Keygate, MemoryStore, NewKey, Pepper};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let gate = Keygate::builder(MemoryStore::new(), Pepper::new(1, [7u8; 32])?)
//!     .owner_ratelimits([RateLimit::new("requests", 10_000, 3_600_000)]) // per owner, per hour
//!     .build()?;
//! let issued = gate
//!     .mint(
//!         NewKey::new("llm client", "user-1")
//!             .ratelimits([
//!                 RateLimit::new("requests", 60, 60_000),          // 60 a minute, every verify
//!                 RateLimit::new("tokens", 100_000, 60_000).manual(), // charged by the handler
//!             ])
//!             .credits(CreditPolicy::new(1_000)),
//!     )
//!     .await?;
//! let principal = gate.verify(issued.key.expose()).await?; // 1 request, 1 credit
//! gate.charge(&principal, "tokens", 1_500).await?;         // after generating 1,500 tokens
//! assert_eq!(principal.allowance().unwrap().credits, Some(999));
//! # Ok(()) }
//! ```
//!
//! See [`limits`] for the model, the [`limits::Limiter`] contract, failure modes and
//! events, and [`http`] for the 429 answers and the `RateLimit` headers.
//!
//! [`VerifyError::http`] (or [`Keygate::http_outcome`], with the gate's realm) maps every
//! outcome to an RFC 6750 answer: the table is in [`http`]. [`VerifyError::reason`] and
//! [`Rejection::as_str`] give stable codes for logs and metrics (`bad_checksum`,
//! `hash_mismatch`, `inactive`, …); [`Keygate::refusal_counts`] counts every refusal per
//! reason. Refusals are logged (target `keygate`, the key id and the reason, never the
//! key) at most once per reason per [`KeygateBuilder::refusal_log_interval`], with a
//! `suppressed` count: at INFO once the store lookup has tied the token to a key, at DEBUG
//! for refusals the token alone proves (garbage, typos, missing credentials), at WARN for
//! an unavailable store or directory and at ERROR for a corrupt record.
//!
//! # Network restrictions
//!
//! A key may carry allowed client networks and browser origins
//! ([`limits::NetworkPolicy`]; [`NewKey::allowed_cidrs`], [`NewKey::allowed_origins`],
//! [`KeyPatch::allowed_cidrs`], the admin API's `allowedCidrs`/`allowedOrigins`). A request
//! from elsewhere is refused with [`VerifyError::NetworkNotAllowed`] or
//! [`VerifyError::OriginNotAllowed`] (403 `network_not_allowed` / `origin_not_allowed`).
//!
//! The client address comes from the connection: axum's `ConnectInfo` (serve with
//! `into_make_service_with_connect_info::<SocketAddr>()`), actix-web's peer address. Only
//! when that peer is a proxy declared with [`KeygateBuilder::trusted_proxies`] does keygate
//! read the proxies' `X-Forwarded-For` (or, if declared, `Forwarded`), right to left,
//! skipping the trusted hops ([`http::TrustedProxies`]); anyone else's forwarding header is
//! ignored. IPv4-mapped IPv6 peers count as IPv4.
//!
//! It fails closed: a restricted key is refused when the client address (or, for allowed
//! origins, the `Origin` header) is unknown, and [`Keygate::verify`] and the other entry
//! points without a [`limits::RequestContext`] know neither. Pass one with
//! [`Keygate::verify_with`] / [`Keygate::verify_headers_with`]; the framework integrations
//! do it for every request. The admin API's no-escalation rule covers the policy too: a
//! caller confined to some networks cannot mint a key usable elsewhere, nor lift a key's
//! restriction.
//!
//! # Stores
//!
//! [`KeyStore`] is a small async trait (object safe, `async-trait`); its docs state the
//! contract. Not found is `Ok(None)`; `Err` is a backend failure, which verify reports as
//! 503, never as a bad key.
//!
//! | store | feature | for | cross-node revocation |
//! |---|---|---|---|
//! | [`MemoryStore`] | — | tests, examples, one process | — |
//! | [`SqliteStore`] | `sqlite` | one server, embedded | — (one process owns the file) |
//! | [`PostgresStore`] | `postgres` | many app servers, one database | `LISTEN/NOTIFY` + change log |
//! | [`RedisStore`] | `redis` | many app servers, one Redis, a Redis Cluster or Sentinel | pub/sub (sharded on Cluster) + change log |
//! | [`CachedStore<S>`](CachedStore) | — | in front of any of them | follows `S`'s feed |
//!
//! [`SqliteStore`], [`PostgresStore`] and [`RedisStore`] are also
//! [`Limiter`](limits::Limiter)s: `.limiter(store.clone())` on the builder keeps rate-limit
//! and credit state next to the keys, exact across every app server sharing the database
//! or Redis (one statement or one `EVALSHA` per check; see each store's docs). Wrapped in
//! [`limits::LocalFirst`], rate limits are decided in process and synced to the store in
//! the background instead (no store call on the request path; a documented, measured
//! overshoot across nodes; credits stay exact).
//!
//! [`open_store`] picks one from a URL (`sqlite://keys.db`, `postgres://…`, `redis://…`), as
//! the CLI does. Each store re-exports its driver (`keygate::sqlx`, `keygate::redis`) so you
//! can build pools and clients with the same version. Third-party stores prove themselves
//! with the conformance suite in [`testing`] (feature `testing`), which keygate runs against
//! every store it ships.
//!
//! **TLS** (feature `tls`: rustls on ring, no OpenSSL) is asked for in the URL: PostgreSQL's
//! `sslmode=require|verify-ca|verify-full` with `sslrootcert=/path/ca.pem`, Redis's
//! `rediss://` with [`RedisConfig::tls_root_cert`] (or `?sslrootcert=` in a URL given to
//! [`open_store`]). keygate never falls back to cleartext: only `sslmode=disable` is
//! cleartext to a remote PostgreSQL (PostgreSQL's default, `prefer`, means `require`), and
//! a build without `tls` refuses a URL that asks for TLS with
//! [`StoreError::TlsUnavailable`]. The rules, and why `verify-full` beats `verify-ca`:
//! [`PostgresStore`]'s and [`RedisStore`]'s "TLS" sections.
//!
//! **Schema and migrations.** SQL stores keep everything in one table, `keygate_keys`: `id`
//! (UUID primary key), `format`, `hash_version` + `hash_digest` + `hash_scheme` (the HMAC and
//! what it covers, never the key), `name`, `description`, `owner_id`, `created_by`,
//! `created_at`, `updated_at`, `expires_at`, `last_used_at` (microsecond precision),
//! `active`, `scopes` and `metadata` (JSON), indexed for lists in creation order, overall
//! and per owner. The DDL is in the repository's `migrations/`. Stores are opened with
//! `connect(url)`, `connect_with(url, config)` ([`SqliteConfig`], [`PostgresConfig`]) or
//! `from_pool(pool)`. Migrations run when a store connects (unless the config turns them
//! off) and on demand ([`PostgresStore::migrate`], [`SqliteStore::migrate`],
//! `keygate migrate`), with sqlx's migrator (checksums, in one locked transaction) but in
//! keygate's own `keygate_migrations` table, so an application's own sqlx migrations on the
//! same database are not disturbed. A database a newer keygate migrated opens with a
//! warning (rolling upgrades); an applied migration that differs from keygate's is refused.
//! SQLite runs in WAL mode with `synchronous = FULL`: a mint that returned `Ok` survives
//! `kill -9`. The Redis layout is in [`RedisStore`]'s docs.
//!
//! **Caching and several nodes.** [`CachedStore`] serves lookups from memory: found records
//! for [`CacheConfig::ttl`] (default 5 s), unknown ids for [`CacheConfig::negative_ttl`]
//! (default 1 s), each in its own bounded cache (S3-FIFO eviction), so a flood of made-up
//! ids cannot evict a hot record; concurrent misses for one id are one read. Writes through
//! the same `Keygate` drop the entry at once. With several app servers on one PostgreSQL or
//! Redis, [`CachedStore::follow_changes`] connects the store's change feed, so a revoke,
//! update or delete on any node reaches every node's cache:
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn run(url: &str, pepper: keygate::Pepper) -> Result<(), Box<dyn std::error::Error>> {
//! use keygate::{CacheConfig, CachedStore, Keygate, PostgresStore};
//!
//! let cache = CachedStore::new(PostgresStore::connect(url).await?, CacheConfig::new());
//! cache.follow_changes().await?; // LISTEN keygate_changes (Redis: SUBSCRIBE)
//! let gate = Keygate::builder(cache, pepper).build()?;
//! # let _ = gate; Ok(()) }
//! ```
//!
//! A revoke then usually reaches every node within a few milliseconds (the notification
//! latency). A lost notification cannot undo it: every write also appends to a change
//! sequence in the store, in the same transaction or script, and the notice carries its
//! number; each node's feed reads the sequence on its own connection every
//! [`FeedConfig::heartbeat`] and replays what it missed (a skipped number triggers that at
//! once; a reconnect replays from the last number seen; a log trimmed past it drops the
//! whole cache). A node whose feed cannot prove it is up to date stops serving from memory
//! and reads the store on every lookup until it can. **Worst-case staleness**, from the
//! revoke's commit to the moment no lookup on another node accepts the key, whatever is
//! lost (notices, the feed's connection, silently or not):
//!
//! ```text
//! min(CacheConfig::ttl, FeedConfig::heartbeat + FeedConfig::deadline)
//!     defaults: min(5 s, 250 ms + 250 ms) = 500 ms
//! ```
//!
//! ([`PostgresConfig::feed`], [`RedisConfig::feed`]; see [`FeedConfig`] for why.) Without a
//! feed, `ttl` alone is the bound. The negative cache bounds *repeated* unknown ids only: the checksum is public,
//! so each new made-up id costs one store read; put rate limiting in front of the gate if
//! that matters for your store.
//!
//! **When the store is down.** [`KeygateBuilder::store_timeout`] bounds a verify's lookup;
//! the stores' own options bound the drivers (PostgreSQL's acquire timeout, Redis's
//! connection and response timeouts). A verify then answers
//! [`VerifyError::StoreUnavailable`] (HTTP 503 with `Retry-After`), never "invalid key" and
//! never a hang, and recovers by itself when the store is back. A store that answers with a
//! record it cannot read, or one that fails keygate's record checks, is
//! [`VerifyError::StoreCorrupt`]: HTTP 500 without `Retry-After`, logged with the key id.
//!
//! # Leaked-key reports (GitHub)
//!
//! [`leaks`] implements GitHub's secret scanning partner program: when GitHub finds one of
//! your keys in a public repository, it `POST`s the match, signed with its ECDSA P-256 key,
//! to your endpoint. [`leaks::LeakReports`] checks the signature over the exact bytes
//! received before reading anything, revokes every reported key of this gate (an opaque
//! key by checksum, id and hash; a JWT key by signature and record), logs a `KeyLeaked`
//! event (key id, owner, where it was found; never the token) and answers with the
//! protocol's `true_positive`/`false_positive` labels. Unsigned, wrongly signed or altered
//! reports are refused and change nothing. Mount it with
//! [`axum::leak_routes`] or
//! [`actix::leak_resource`] at `/leaks/github`:
//!
//! ```
//! # #[cfg(feature = "axum")]
//! # fn demo(gate: keygate::Keygate) -> Result<(), keygate::leaks::KeysError> {
//! use keygate::leaks::{GithubKeys, LeakReports};
//!
//! // GitHub's public keys, saved from https://api.github.com/meta/public_keys/secret_scanning
//! let keys = GithubKeys::from_file("github-secret-scanning-keys.json")?;
//! let app: axum::Router = axum::Router::new()
//!     .merge(keygate::axum::leak_routes("/leaks/github", LeakReports::new(gate, keys)));
//! # let _ = app; Ok(()) }
//! ```
//!
//! To enrol, send GitHub (secret-scanning@github.com) a name for your token type, the
//! regular expression [`SCANNER_REGEX`] (or [`scanner_regex`]`("abs")` for your prefix
//! alone), and the public URL of the endpoint. Refresh the keys file when GitHub rotates its
//! keys and call [`leaks::LeakReports::set_keys`]; keygate makes no network requests.
//!
//! # Security notes
//!
//! - The plaintext exists once, in [`IssuedKey::key`], a [`Secret`] that zeroizes on drop and
//!   prints `[redacted]` under `Debug` and `Display`; [`Secret::expose`] is the only way out.
//!   [`KeyRecord`] has no field that could hold a plaintext key; [`SecretHash`] prints only
//!   its version and scheme.
//! - Hashes are HMAC-SHA256 under a server-side pepper: a leaked database cannot be tested
//!   offline without the pepper. Keep the pepper out of the database and its backups, and
//!   never lose it: without it no stored key verifies. Peppers and JWT secrets shorter than
//!   32 bytes are refused.
//! - A wrong pepper is detected, not silently used: the store keeps a keyed fingerprint of
//!   each pepper version ([`PepperFingerprint`], recorded by the first gate that uses the
//!   version), and [`Keygate::check_pepper`] (call it at startup; [`Keygate::mint`] runs it
//!   before writing) fails with [`Error::PepperMismatch`]. A key refused under a
//!   mismatching pepper is [`VerifyError::PepperMismatch`] (HTTP 500), not a 401
//!   `hash_mismatch`. The fingerprint lets no one test pepper guesses who could not already
//!   test them against the hash of one key of their own.
//! - Comparisons are constant time; unknown ids cost the same HMAC work. Store and cache
//!   timing is not constant: a recently verified id answers faster from the cache, which can
//!   tell that an id exists and was used (ids are random and not secret).
//! - Every bad input gets a typed error and leaves no trace in the store; refusals that the
//!   token alone proves never reach the store.
//! - The stored hash is bound to the key: an opaque key's digest covers its prefix and id, so
//!   a digest copied into another record authenticates nothing there, and two applications
//!   sharing a store and pepper under different prefixes do not accept each other's keys.
//!   JWT records need no binding: the HS256 signature already covers the `keyId` claim.
//! - **Hashes from earlier versions** ([`HashScheme::Secret`], the secret part alone; the
//!   `hash_scheme` column defaults to `'secret'` for existing rows) keep verifying and are
//!   re-hashed as `bound` after their next successful verify. To see what is left:
//!   `SELECT count(*) FROM keygate_keys WHERE format = 'opaque' AND hash_scheme = 'secret'`.
//! - Records fail closed: every record a store returns is checked before it is trusted (the
//!   id asked for, a non-empty owner without control characters and at most 1024 bytes, a
//!   hash for opaque keys, instants in the years 1 to 9999), whatever the store, so a
//!   hand-made table or a third-party store cannot turn an empty owner into an
//!   unrestricted key.
//! - SQLite database files keygate creates are mode 0600 on Unix; an existing file keeps its
//!   mode.
//! - Last-used writes can fail without failing a verify; they are retried on the next flush.
//!   Call [`Keygate::flush`] at shutdown.
//!
//! # Feature flags
//!
//! No feature is on by default; the core (formats, hashing, [`MemoryStore`], [`CachedStore`],
//! the admin API's framework-free [`admin::AdminApi`]) needs none.
//!
//! | feature | adds |
//! |---|---|
//! | `sqlite` | [`SqliteStore`] (bundled libsqlite3) |
//! | `postgres` | [`PostgresStore`], with `LISTEN/NOTIFY` cache invalidation |
//! | `redis` | [`RedisStore`], with pub/sub cache invalidation |
//! | `axum` | [`keygate::axum`](crate::axum): extractors, guards, the `Authenticate` layer, the admin API router, the admin page |
//! | `actix` | [`keygate::actix`](crate::actix): extractors, guards, the `Authenticate` middleware, the admin API scope, the admin page |
//! | `testing` | [`keygate::testing`](crate::testing): the public store conformance suite |
//!
//! The operator CLI is the separate package `keygate-cli` (binary `keygate`).
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
pub mod leaks;
pub mod limits;
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
pub use gate::{IssuedKey, Keygate};
pub use hash::{HashScheme, Pepper, PepperFingerprint, SecretHash, UnknownScheme};
pub use jwt::JwtSecret;
pub use key::{checksum_ok, scanner_regex, KeyFormat, KeyId, UnknownFormat, SCANNER_REGEX};
pub use pepper_source::PepperError;
pub use principal::{Permission, Principal};
pub use record::{InvalidRecord, KeyPatch, KeyRecord, Metadata, NewKey, Precondition};
pub use refusals::RefusalCounts;
pub use secret::Secret;
pub use store::{
    open_store, open_store_with_limiter, CacheConfig, CacheStats, CachedStore, ChangeListener,
    Cursor, FeedConfig, InvalidCursor, KeyStore, ListQuery, MemoryStore, Page, StoreError,
};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use store::{PostgresConfig, PostgresStore};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use store::{RedisConfig, RedisConnection, RedisStore};
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use store::{SqliteConfig, SqliteStore};
pub use user::{DirectoryError, DirectoryUser, Owner, Permissions, UserDirectory};

/// The size and range bounds keygate enforces: on what [`Keygate::mint`], [`Keygate::update`] and the
/// admin API accept, on stored records, on tokens, and on secrets.
///
/// ```
/// use keygate::bounds::{MAX_NAME_LEN, MIN_PEPPER_LEN};
///
/// assert!(MAX_NAME_LEN > 0 && MIN_PEPPER_LEN == 32);
/// ```
pub mod bounds {
    pub use crate::gate::MAX_PAGE;
    pub use crate::hash::MIN_PEPPER_LEN;
    pub use crate::http::MAX_FORWARDED_HOPS;
    pub use crate::jwt::MIN_JWT_SECRET_LEN;
    pub use crate::key::MAX_OPAQUE_LEN;
    pub use crate::limits::{MAX_ALLOWED_CIDRS, MAX_ALLOWED_ORIGINS, MAX_ORIGIN_LEN};
    pub use crate::limits::{
        MAX_CREDITS, MAX_RATELIMITS, MAX_RATELIMIT_DURATION_MS, MAX_RATELIMIT_LIMIT,
        MAX_RATELIMIT_NAME_LEN,
    };
    pub use crate::record::MAX_STORED_OWNER_LEN;
    pub use crate::validate::{
        MAX_DESCRIPTION_LEN, MAX_EXPIRY, MAX_ID_LEN, MAX_METADATA_BYTES, MAX_NAME_LEN, MAX_SCOPES,
        MAX_SCOPE_LEN,
    };
}

/// The README's snippets, compiled and run as doctests (with the web features on, as
/// `cargo test --all-features` has them).
#[cfg(all(doctest, feature = "axum", feature = "actix"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
