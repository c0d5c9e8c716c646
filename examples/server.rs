//! A small API server guarded by keygate: axum, keys in SQLite, the Audiobookshelf-style
//! admin API.
//!
//! ```text
//! cargo run --example server --features axum,sqlite
//! ```
//!
//! On the first start (an empty database) it mints a key for the demo admin and prints it,
//! once, as the only line on stdout: `admin API key: <key>`. Everything else goes to stderr.
//!
//! ```text
//! KEY=key_...   # the printed key
//! curl -H "Authorization: Bearer $KEY" localhost:3000/api/me
//! curl -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
//!      -d '{"name":"Backup Script","userId":"user","expiresIn":86400}' localhost:3000/api/api-keys
//! ```
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
//!   database, and never lose it: without it no stored key verifies.
//! - `KEYGATE_JWT_SECRET`: optional (32+ bytes); enables Audiobookshelf-style JWT keys
//!   (`"format":"jwt"` on create).
//! - `RUST_LOG`: what is logged to stderr (default `info,keygate=debug`: refusal reasons
//!   included).
//!
//! Routes:
//! - `GET /healthz`: no auth, `ok`.
//! - `GET /api/me`: the caller's [`Principal`] as JSON.
//! - `GET /api/libraries`: a demo resource; needs `library:read`.
//! - `/api/api-keys`: the admin API (`keygate::admin`), for callers the directory grants `admin`.
//! - `GET /api/ping-open` and `GET /api/ping`: the same tiny body without and with key
//!   verification. They exist for `benches/http.sh`, which measures what keygate adds
//!   to a request.
//!
//! Users are static (an `admin` and a `user`); keys live in the database. SIGINT or SIGTERM
//! stops the server gracefully and writes pending last-used times before it exits.

use std::error::Error;
use std::path::PathBuf;

use async_trait::async_trait;
use axum::routing::get;
use axum::{Json, Router};
use keygate::admin::AdminApi;
use keygate::axum::{admin_routes, Require};
use keygate::{
    CacheConfig, CachedStore, DirectoryError, JwtSecret, KeyStore, Keygate, ListQuery, NewKey,
    Owner, Pepper, Permission, Principal, SqliteStore, UserDirectory,
};
use serde_json::{json, Value};

type BoxError = Box<dyn Error + Send + Sync>;

/// The demo's users: a static `admin` and `user`. A real application asks its own user
/// table; keygate reads the owner on every verify, so deactivating a user or changing
/// permissions takes effect at once. (The owners are built once: this runs per request.)
struct DemoUsers {
    admin: Owner,
    user: Owner,
}

impl DemoUsers {
    fn new() -> Self {
        Self {
            admin: Owner::active(["admin", "library:read"]),
            user: Owner::active(["library:read"]),
        }
    }
}

#[async_trait]
impl UserDirectory for DemoUsers {
    async fn owner(&self, user_id: &str) -> Result<Option<Owner>, DirectoryError> {
        Ok(match user_id {
            "admin" => Some(self.admin.clone()),
            "user" => Some(self.user.clone()),
            _ => None,
        })
    }
}

struct LibraryRead;
impl Permission for LibraryRead {
    const NAME: &'static str = "library:read";
}

async fn healthz() -> &'static str {
    "ok"
}

async fn me(principal: Principal) -> Json<Principal> {
    Json(principal)
}

async fn libraries(Require(principal, ..): Require<LibraryRead>) -> Json<Value> {
    Json(json!({
        "libraries": [
            { "id": "lib-books", "name": "Audiobooks", "mediaType": "book" },
            { "id": "lib-podcasts", "name": "Podcasts", "mediaType": "podcast" },
        ],
        "userId": principal.owner_id(),
    }))
}

/// For `benches/http.sh`: the same body as [`ping`], without verification.
async fn ping_open() -> &'static str {
    "pong"
}

/// For `benches/http.sh`: the same body as [`ping_open`], behind key verification.
async fn ping(_: Principal) -> &'static str {
    "pong"
}

fn app(gate: Keygate) -> Router {
    // Admins are the callers the directory (DemoUsers) grants "admin": never implied by
    // a missing directory. What they may do is bounded by their own key's reach.
    let admin = AdminApi::new(gate.clone());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/me", get(me))
        .route("/api/libraries", get(libraries))
        .route("/api/ping-open", get(ping_open))
        .route("/api/ping", get(ping))
        .merge(admin_routes("/api/api-keys", admin))
        .with_state(gate)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    init_logging();
    let addr = env_or("KEYGATE_ADDR", "127.0.0.1:3000");
    let db = env_or("KEYGATE_DB", "sqlite://keygate.db");
    let prefix = env_or("KEYGATE_PREFIX", "key");

    let sqlite = SqliteStore::connect(&db)
        .await
        .map_err(|e| format!("cannot open {db}: {e}"))?;
    let pepper = load_pepper(&db, &sqlite).await?;
    // The verify path reads through a cache (5 s TTL); writes through this gate
    // (revoke, delete, update) drop the cached entry at once.
    let store = CachedStore::new(sqlite, CacheConfig::new());
    let mut builder = Keygate::builder(store, pepper)
        .prefix(prefix)
        .users(DemoUsers::new())
        .realm("keygate example");
    if let Ok(secret) = std::env::var("KEYGATE_JWT_SECRET") {
        builder = builder.jwt_secret(JwtSecret::new(secret)?);
        eprintln!("keygate example: JWT keys enabled");
    }
    let gate = builder.build()?;

    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    eprintln!(
        "keygate example: listening on http://{}, keys in {db}",
        listener.local_addr()?
    );

    // First start: no key at all yet, so nobody could call the admin API. Mint one for the
    // admin and show it once, on stdout (the listener is already bound: it is usable now).
    if gate
        .list(ListQuery::new().limit(1))
        .await?
        .records
        .is_empty()
    {
        let issued = gate
            .mint(NewKey::new("Admin key (first start)", "admin").created_by("admin"))
            .await?;
        println!("admin API key: {}", issued.key.expose());
        eprintln!(
            "keygate example: empty database: minted admin key {} (shown once, on stdout)",
            issued.record.id
        );
    }

    axum::serve(listener, app(gate.clone()))
        .with_graceful_shutdown(shutdown_signal())
        .await?;

    // Last-used times are written coalesced, in the background; write what is pending.
    gate.flush().await?;
    eprintln!("keygate example: stopped");
    Ok(())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    eprintln!("keygate example: shutting down");
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
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,keygate=debug"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
