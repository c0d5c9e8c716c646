//! What the two example servers (`server.rs` on axum, `actix_server.rs` on actix-web)
//! share: configuration from the environment, logging, the demo users, the gate over an
//! SQLite store (pepper loading and the pepper check included), and the first start's
//! admin key. Each server adds only its framework's routes and run loop.
//!
//! Environment (the same variables as the `keygate` CLI, so both work on one database):
//! - `KEYGATE_ADDR`: listen address (default `127.0.0.1:3000`).
//! - `KEYGATE_DB`: the SQLite database, as `sqlite://path`, `sqlite:path` or a plain path
//!   (default `sqlite://keygate.db` in the working directory).
//! - `KEYGATE_PREFIX`: the prefix of opaque keys (default `key`).
//! - `KEYGATE_PEPPER` or `KEYGATE_PEPPER_FILE` (with `KEYGATE_PEPPER_VERSION`, default 1):
//!   the pepper keys are hashed under (32+ bytes), read by `Pepper::from_default_env`. If
//!   neither is set, a random one is generated on the first start and kept in
//!   `<database>.pepper` (mode 0600), beside the database. Keep it out of backups of the
//!   database, and never lose it: without it no stored key verifies. A pepper that is not
//!   the one the database's keys were made with stops the server at start.
//! - `KEYGATE_JWT_SECRET`: optional (32+ bytes); enables Audiobookshelf-style JWT keys
//!   (`"format":"jwt"` on create).
//! - `KEYGATE_TRUSTED_PROXIES`: optional, comma-separated CIDRs of the reverse proxies in
//!   front of the server (e.g. `127.0.0.1/32,10.0.0.0/8`); their `X-Forwarded-For` gives
//!   the client address that keys with `allowedCidrs` are checked against. Without it the
//!   client address is the connection's peer and the header is ignored.
//! - `RUST_LOG`: what is logged to stderr (default `info,keygate=debug`: refusal reasons
//!   included).

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use async_trait::async_trait;
use keygate::limits::RateLimit;
use keygate::{
    CacheConfig, CachedStore, DirectoryError, DirectoryUser, JwtSecret, KeyStore, Keygate,
    ListQuery, NewKey, Owner, Pepper, Permission, SqliteStore, UserDirectory,
};

pub type BoxError = Box<dyn Error + Send + Sync>;

/// The server's settings, from the environment.
pub struct Config {
    /// `KEYGATE_ADDR`.
    pub addr: String,
    /// `KEYGATE_DB`.
    pub db: String,
    /// `KEYGATE_PREFIX`.
    pub prefix: String,
}

impl Config {
    pub fn from_env() -> Self {
        Self {
            addr: env_or("KEYGATE_ADDR", "127.0.0.1:3000"),
            db: env_or("KEYGATE_DB", "sqlite://keygate.db"),
            prefix: env_or("KEYGATE_PREFIX", "key"),
        }
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The demo's users: a static `admin` and `user`. A real application asks its own user
/// table; keygate reads the owner on every verify, so deactivating a user or changing
/// permissions takes effect at once. (The owners are built once: this runs per request.)
///
/// `user`'s keys share a rate limit, enforced in process: [`USER_REQUESTS_PER_MINUTE`]
/// requests a minute across all of them, then 429 with `Retry-After` (see
/// `keygate::limits`). Per-key limits and credits are set when a key is minted (admin API
/// `ratelimits`/`credits`, CLI `--ratelimit`/`--credits`).
pub struct DemoUsers {
    admin: Arc<Owner>,
    user: Arc<Owner>,
}

impl DemoUsers {
    pub fn new() -> Self {
        Self {
            admin: Arc::new(Owner::with_permissions(["admin", "library:read"])),
            user: Arc::new(
                Owner::with_permissions(["library:read"]).with_ratelimits([RateLimit::new(
                    "requests",
                    USER_REQUESTS_PER_MINUTE,
                    60_000,
                )]),
            ),
        }
    }
}

impl DemoUsers {
    fn shared(&self, user_id: &str) -> Option<Arc<Owner>> {
        match user_id {
            "admin" => Some(Arc::clone(&self.admin)),
            "user" => Some(Arc::clone(&self.user)),
            _ => None,
        }
    }
}

#[async_trait]
impl UserDirectory for DemoUsers {
    async fn owner(&self, user_id: &str) -> Result<Option<Owner>, DirectoryError> {
        Ok(self.shared(user_id).map(|owner| Owner::clone(&owner)))
    }

    /// The same answer, shared and without waiting: what verify asks first.
    fn owner_now(&self, user_id: &str) -> Option<Result<Option<Arc<Owner>>, DirectoryError>> {
        Some(Ok(self.shared(user_id)))
    }

    /// For the admin page's user picker.
    async fn users(&self) -> Result<Option<Vec<DirectoryUser>>, DirectoryError> {
        Ok(Some(vec![
            DirectoryUser::new("admin").name("Admin"),
            DirectoryUser::new("user").name("Demo user"),
        ]))
    }
}

/// The requests a minute all of `user`'s keys share.
pub const USER_REQUESTS_PER_MINUTE: u64 = 20;

/// The permission `GET /api/libraries` needs.
pub struct LibraryRead;
impl Permission for LibraryRead {
    const NAME: &'static str = "library:read";
}

/// The gate both servers use: keys in the SQLite database `config.db`, read through a
/// cache, hashed under the pepper from the environment or the file beside the database,
/// owners from [`DemoUsers`]. The pepper is checked against the database before the gate
/// is returned: the wrong one is an error that says so.
pub async fn open_gate(config: &Config) -> Result<Keygate, BoxError> {
    let db = &config.db;
    let sqlite = SqliteStore::connect(db)
        .await
        .map_err(|e| format!("cannot open {db}: {e}"))?;
    let pepper = load_pepper(db, &sqlite).await?;
    // The verify path reads through a cache (5 s TTL); writes through this gate
    // (revoke, delete, update) drop the cached entry at once.
    let store = CachedStore::new(sqlite, CacheConfig::new());
    let mut builder = Keygate::builder(store, pepper)
        .prefix(&config.prefix)
        .users(DemoUsers::new())
        .realm("keygate example");
    if let Ok(secret) = std::env::var("KEYGATE_JWT_SECRET") {
        builder = builder.jwt_secret(JwtSecret::new(secret)?);
        eprintln!("keygate example: JWT keys enabled");
    }
    if let Ok(proxies) = std::env::var("KEYGATE_TRUSTED_PROXIES") {
        let networks = proxies
            .split(',')
            .map(|cidr| cidr.trim().parse::<keygate::limits::Cidr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("KEYGATE_TRUSTED_PROXIES: {e}"))?;
        builder = builder.trusted_proxies(keygate::http::TrustedProxies::new(networks));
    }
    let gate = builder.build()?;
    // Before taking requests: the wrong pepper would refuse every key and mint keys that
    // never verify.
    gate.check_pepper().await.map_err(|e| match e {
        keygate::Error::PepperMismatch { .. } => format!(
            "{e}; check {} or {}, and {}",
            Pepper::ENV,
            Pepper::ENV_FILE,
            Pepper::ENV_VERSION
        ),
        other => format!("cannot check the pepper against {db}: {other}"),
    })?;
    Ok(gate)
}

/// First start: no key at all yet, so nobody could call the admin API. Mints one for the
/// admin and shows it once, on stdout (call it once the server is bound: it is usable
/// then).
pub async fn bootstrap_admin_key(gate: &Keygate) -> Result<(), BoxError> {
    if !gate
        .list(ListQuery::new().limit(1))
        .await?
        .records
        .is_empty()
    {
        return Ok(());
    }
    let issued = gate
        .mint(NewKey::new("Admin key (first start)", "admin").created_by("admin"))
        .await?;
    println!("admin API key: {}", issued.key.expose());
    eprintln!(
        "keygate example: empty database: minted admin key {} (shown once, on stdout)",
        issued.record.id
    );
    Ok(())
}

/// `main`'s exit: a failure is one `keygate example: error: …` line on stderr (its
/// `Display`, not the `Debug` form `main` returning `Err` would print) and exit code 1.
pub fn exit(result: Result<(), BoxError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("keygate example: error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The pepper, read as the `keygate` CLI reads it (`KEYGATE_PEPPER` or
/// `KEYGATE_PEPPER_FILE`, version `KEYGATE_PEPPER_VERSION`); without those, the file beside
/// the database, created on the first start.
async fn load_pepper(db: &str, store: &SqliteStore) -> Result<Pepper, BoxError> {
    if let Some(pepper) = Pepper::from_default_env()? {
        eprintln!(
            "keygate example: pepper from {} / {}",
            Pepper::ENV,
            Pepper::ENV_FILE
        );
        return Ok(pepper);
    }
    let Some(path) = pepper_file(db) else {
        eprintln!("keygate example: in-memory database: using a throwaway pepper");
        return Ok(Pepper::generate(1)?);
    };
    // A new pepper for a database that already holds hashes would lock every key out.
    if !path.exists() && !store.list(&ListQuery::new().limit(1)).await?.is_empty() {
        return Err(format!(
            "{} is missing but {db} already holds keys: restore the pepper file or set \
             KEYGATE_PEPPER_FILE",
            path.display()
        )
        .into());
    }
    let (pepper, created) = Pepper::load_or_create(&path, 1)?;
    if created {
        eprintln!(
            "keygate example: generated a new pepper in {} (mode 0600); keep it with the \
             database but out of its backups",
            path.display()
        );
    } else {
        eprintln!("keygate example: pepper from {}", path.display());
    }
    Ok(pepper)
}

/// `<database file>.pepper`, or `None` for an in-memory database.
fn pepper_file(db: &str) -> Option<PathBuf> {
    let (path, query) = match db.strip_prefix("sqlite:") {
        Some(rest) => {
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            rest.split_once('?').unwrap_or((rest, ""))
        }
        None => (db, ""),
    };
    if path.is_empty() || path == ":memory:" || query.split('&').any(|p| p == "mode=memory") {
        return None;
    }
    let mut file = PathBuf::from(path).into_os_string();
    file.push(".pepper");
    Some(file.into())
}

/// Logs to stderr (stdout carries only the first start's admin key): by default `info`,
/// and keygate's `debug` events, which say why each refused request was refused
/// (`verify refused reason=…`); `RUST_LOG` overrides it (e.g. `RUST_LOG=warn`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,keygate=debug"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
