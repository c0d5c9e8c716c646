//! `keygate serve`: a standalone server over any store keygate supports, for applications
//! that are not written in Rust and for reverse proxies.
//!
//! | route | what |
//! |---|---|
//! | `/auth` (any method) | forward auth for nginx `auth_request`, Traefik `ForwardAuth`, Caddy `forward_auth` (see [`auth`](self#forward-auth)) |
//! | `/api/api-keys` | the admin API ([`keygate::admin`]) |
//! | `/admin/` | the admin web page ([`keygate::admin::AdminPage`]), which signs in with an admin key and calls the admin API |
//! | `POST /leaks/github` | GitHub secret-scanning reports ([`keygate::leaks`]), when `github_keys_file` is set ([`config`]) |
//! | `GET /healthz` | liveness: `200 ok` |
//! | `GET /readyz` | readiness: `200` when the store answers, else `503` with `Retry-After` |
//!
//! Settings come from a TOML file, the environment and flags ([`config`]). On the first
//! start against an empty store it mints an admin key and prints it once on stdout
//! (`admin API key: …`; everything else goes to stderr as structured logs). SIGTERM or
//! Ctrl-C stops it gracefully: it stops accepting connections, lets requests under way
//! finish (at most 10 s), then writes the pending last-used times ([`Keygate::flush`]).
//!
//! # Forward auth
//!
//! `/auth` verifies the request's `Authorization: Bearer` key and answers `200` with
//! `X-Keygate-Key-Id`, `X-Keygate-Owner` and `X-Keygate-Scopes`, or the library's refusal
//! (401/400/403/429/503/500, `WWW-Authenticate` and `Retry-After` included), its error
//! code and description repeated in [`ERROR`] and [`ERROR_DESCRIPTION`] for nginx, whose
//! `auth_request` drops bodies. A location
//! that needs a permission says so in the query: `/auth?scope=library:read`. Keys with
//! allowed networks are checked against the client address the proxy forwards, believed
//! only from `trusted_proxies` (loopback by default; see [`config`]).
//!
//! # Admin authority
//!
//! Without `[users]` in the configuration there is no user directory: every owner
//! implicitly holds every permission, so no key is admin unless its own scopes say
//! `admin`. The first-start key is then minted with `scopes = ["admin"]` for
//! `bootstrap_owner`: it can list keys and manage its own owner's keys, but (by the
//! library's no-escalation rule) cannot mint for or revoke keys of other owners. List your
//! users in `[users.<id>]` (with `permissions = ["*"]` for the administrators) to run the
//! admin API for everyone; the first-start key is then an unscoped key of
//! `bootstrap_owner`, who must hold `admin` there.

pub mod config;

mod auth;
mod directory;
mod health;

use std::error::Error as StdError;
use std::future::{Future, IntoFuture};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use keygate::admin::{AdminApi, AdminPage, ADMIN_PERMISSION};
use keygate::http::TrustedProxies;
use keygate::leaks::{GithubKeys, LeakReports, GITHUB_PATH};
use keygate::limits::{Limiter, LocalFirst, LocalFirstConfig};
use keygate::{
    CacheConfig, CachedStore, JwtSecret, KeyId, KeyStore, Keygate, ListQuery, NewKey, Pepper,
    StoreError,
};
use tokio::net::TcpListener;

pub use self::auth::{ERROR, ERROR_DESCRIPTION, KEY_ID, OWNER, SCOPES};
pub use self::config::{Config, ConfigError, LimitsMode, Overrides};
use self::config::{JwtSource, LogFormat, PepperSource};
use crate::{chain, redact_url};

/// How long requests under way may take to finish after a shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest JWT secret file read.
const MAX_SECRET_FILE_LEN: u64 = 4096;

/// Exit code for bad configuration, as the CLI's.
const CONFIG_EXIT: u8 = 2;
/// Exit code for a store failure, as the CLI's.
const STORE_EXIT: u8 = 3;

/// Why the server could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A setting, secret or the store's pepper check says the configuration cannot work.
    #[error("{context}")]
    Setup {
        /// What went wrong.
        context: String,
        /// The cause, if any.
        #[source]
        source: Option<Box<dyn StdError + Send + Sync>>,
    },
    /// The store failed (unreachable, refused, timed out).
    #[error("{context}")]
    Store {
        /// What was being done.
        context: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// Listening or serving failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl ServeError {
    fn setup(context: impl Into<String>, source: impl StdError + Send + Sync + 'static) -> Self {
        Self::Setup {
            context: context.into(),
            source: Some(Box::new(source)),
        }
    }

    fn from_keygate(context: &str, error: keygate::Error) -> Self {
        match error {
            keygate::Error::Store(source) => Self::Store {
                context: context.to_owned(),
                source,
            },
            other => Self::setup(context, other),
        }
    }

    /// The process exit code: 2 for configuration, 3 for a store failure, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::Setup { .. } => CONFIG_EXIT,
            Self::Store {
                source: StoreError::InvalidUrl(_),
                ..
            } => CONFIG_EXIT,
            Self::Store { .. } => STORE_EXIT,
            Self::Io { .. } => 1,
        }
    }
}

/// What the server's routes share: the gate, the store behind it (for readiness), and the
/// forward-auth settings.
#[derive(Clone)]
pub struct App {
    gate: Keygate,
    store: Arc<dyn KeyStore>,
    store_timeout: Duration,
    original_uri_header: HeaderName,
    original_method_header: HeaderName,
    leaks: Option<LeakReports>,
    local_first: Option<LocalFirst<Arc<dyn Limiter>>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("gate", &self.gate)
            .field("store_timeout", &self.store_timeout)
            .finish_non_exhaustive()
    }
}

impl App {
    /// The server over `gate`; `store` is what `/readyz` probes (the store under the
    /// gate's cache). Readiness waits 2 s at most; the original request is read from
    /// `X-Original-URI` / `X-Original-Method`.
    pub fn new(gate: Keygate, store: Arc<dyn KeyStore>) -> Self {
        Self {
            gate,
            store,
            store_timeout: Duration::from_secs(2),
            original_uri_header: HeaderName::from_static("x-original-uri"),
            original_method_header: HeaderName::from_static("x-original-method"),
            leaks: None,
            local_first: None,
        }
    }

    /// The gate's [`LocalFirst`] limiter, shut down (its last usage sent) when
    /// [`serve`] stops.
    #[must_use]
    pub fn local_first(mut self, limiter: LocalFirst<Arc<dyn Limiter>>) -> Self {
        self.local_first = Some(limiter);
        self
    }

    /// Serves GitHub's secret-scanning reports at `/leaks/github` ([`keygate::leaks`]);
    /// without this, that path is a 404.
    #[must_use]
    pub fn leak_reports(mut self, reports: LeakReports) -> Self {
        self.leaks = Some(reports);
        self
    }

    /// How long `/readyz` waits for the store.
    #[must_use]
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout;
        self
    }

    /// The headers that carry the original request's URI and method (for the log).
    #[must_use]
    pub fn original_headers(mut self, uri: HeaderName, method: HeaderName) -> Self {
        self.original_uri_header = uri;
        self.original_method_header = method;
        self
    }

    /// The gate requests are verified with.
    pub fn gate(&self) -> &Keygate {
        &self.gate
    }

    fn probe_timeout(&self) -> Duration {
        self.store_timeout
    }

    fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    fn original_uri_header(&self) -> &HeaderName {
        &self.original_uri_header
    }

    fn original_method_header(&self) -> &HeaderName {
        &self.original_method_header
    }

    /// Every route of the server (see the [module docs](self)).
    pub fn router(&self) -> Router {
        let admin = AdminApi::new(self.gate.clone());
        // GitHub's secret-scanning reports, when GitHub's public keys are configured.
        let leaks = match &self.leaks {
            Some(reports) => keygate::axum::leak_routes(GITHUB_PATH, reports.clone()),
            None => Router::new(),
        };
        Router::new()
            .route("/healthz", get(health::healthz))
            .route("/readyz", get(health::readyz))
            .route("/auth", any(auth::auth))
            .merge(keygate::axum::admin_routes("/api/api-keys", admin))
            // The admin page; its API base is relative to the page (`/admin/`), so it
            // keeps working when a proxy serves keygate under a path prefix.
            .merge(keygate::axum::admin_page(
                "/admin",
                AdminPage::new().api_base("../api/api-keys"),
            ))
            .merge(leaks)
            .fallback(not_found)
            .with_state(self.clone())
    }
}

/// `404` in keygate's error shape.
async fn not_found() -> Response {
    let mut response = (
        StatusCode::NOT_FOUND,
        r#"{"error":"not_found","error_description":"No such route"}"#,
    )
        .into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `keygate serve`: loads the configuration, starts logging and a multi-threaded runtime,
/// and runs the server until SIGTERM or Ctrl-C. Errors are logged (or, before logging is
/// up, printed as one `keygate: error: …` line) and turned into the CLI's exit codes.
pub fn main(overrides: &Overrides) -> ExitCode {
    let config = match Config::load(overrides) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("keygate: error: {}", chain(&error));
            return ExitCode::from(CONFIG_EXIT);
        }
    };
    if let Err(error) = init_logging(&config) {
        eprintln!("keygate: error: {}", chain(&*error));
        return ExitCode::from(CONFIG_EXIT);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(error = %error, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %chain(&error), "keygate serve stopped");
            ExitCode::from(error.exit_code())
        }
    }
}

/// Opens the store, binds, mints the first admin key if the store is empty, and serves
/// until SIGTERM or Ctrl-C (see [`serve`]).
///
/// # Errors
///
/// [`ServeError`] when the store cannot be opened, the pepper or a secret is wrong, the
/// address cannot be bound, or the last-used times cannot be written at the end.
pub async fn run(config: &Config) -> Result<(), ServeError> {
    let app = open(config).await?;
    // Before the server is announced: a stop signal from now on is a graceful stop (while
    // the store is being opened, it still ends the process at once: nothing to flush).
    let shutdown = shutdown_signal();
    let listener = TcpListener::bind(&config.addr)
        .await
        .map_err(|source| ServeError::Io {
            context: format!("cannot listen on {}", config.addr),
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_or_else(|_| config.addr.clone(), |a| a.to_string());
    tracing::info!(
        addr = %addr,
        db = %redact_url(&config.db),
        prefix = %config.prefix,
        directory = config.users.is_some(),
        "listening"
    );
    if config.bootstrap {
        // The listener is bound: the key works as soon as it is shown.
        bootstrap(
            app.gate(),
            &config.bootstrap_owner,
            config.users.is_some(),
            &mut std::io::stdout(),
        )
        .await?;
    }
    serve(listener, app, shutdown, DRAIN_TIMEOUT).await
}

/// Opens the store `config.db` names and builds the gate over it: cached (TTL
/// `cache_ttl`, following the store's change feed where it has one), with the configured
/// prefix, realm, store timeout, JWT secret and user directory, and the pepper checked
/// against the store.
///
/// # Errors
///
/// [`ServeError::Store`] when the store cannot be opened or read; [`ServeError::Setup`]
/// for a missing or wrong pepper, a bad JWT secret or prefix.
pub async fn open(config: &Config) -> Result<App, ServeError> {
    let db = redact_url(&config.db);
    let (store, limiter) =
        keygate::open_store_with_limiter(&config.db)
            .await
            .map_err(|source| ServeError::Store {
                context: format!("cannot open {db}"),
                source,
            })?;
    let pepper = load_pepper(config, &store).await?;
    let cached = CachedStore::new(Arc::clone(&store), CacheConfig::new().ttl(config.cache_ttl));
    match cached.follow_changes().await {
        Ok(true) => tracing::info!("following the store's change feed: revocations on other nodes reach this cache at once"),
        Ok(false) => {}
        Err(error) => tracing::warn!(
            error = %chain(&error),
            ttl_secs = config.cache_ttl.as_secs(),
            "cannot follow the store's change feed: revocations made elsewhere take up to the cache TTL"
        ),
    }
    let mut builder = Keygate::builder(cached, pepper)
        .prefix(&config.prefix)
        .realm(&config.realm)
        .store_timeout(config.store_timeout)
        .trusted_proxies(
            TrustedProxies::new(config.trusted_proxies.iter().copied()).header(config.proxy_header),
        );
    if let Some(users) = &config.users {
        builder = builder.users(directory::StaticUsers::new(users));
    }
    if let Some(secret) = jwt_secret(&config.jwt_secret)? {
        builder = builder.jwt_secret(secret);
        tracing::info!("JWT keys enabled");
    }
    let mut local_first = None;
    match config.limits {
        LimitsMode::Store => {
            builder = builder.limiter(limiter);
            tracing::info!("rate limits and credits kept in the store: exact across servers");
        }
        LimitsMode::LocalFirst { sync } => {
            let local = LocalFirst::start(limiter, LocalFirstConfig::new().sync_interval(sync))
                .map_err(|e| ServeError::setup("cannot start the local-first limiter", e))?;
            builder = builder.limiter(local.clone());
            local_first = Some(local);
            tracing::info!(
                sync_ms = u64::try_from(sync.as_millis()).unwrap_or(u64::MAX),
                "rate limits decided locally and synced to the store; credits exact in the store"
            );
        }
        _ => {}
    }
    let gate = builder
        .build()
        .map_err(|e| ServeError::setup("cannot build the gate", e))?;
    gate.check_pepper().await.map_err(|e| match e {
        keygate::Error::PepperMismatch { .. } => ServeError::setup(
            format!(
                "the pepper is not the one {db}'s keys were made with; check {} or {}, and {}",
                Pepper::ENV,
                Pepper::ENV_FILE,
                Pepper::ENV_VERSION
            ),
            e,
        ),
        other => ServeError::from_keygate(&format!("cannot check the pepper against {db}"), other),
    })?;
    let uri = header_name(&config.original_uri_header)?;
    let method = header_name(&config.original_method_header)?;
    let mut app = App::new(gate.clone(), store)
        .store_timeout(config.store_timeout)
        .original_headers(uri, method);
    if let Some(local) = local_first {
        app = app.local_first(local);
    }
    if let Some(path) = &config.github_keys_file {
        let keys = GithubKeys::from_file(path).map_err(|e| {
            ServeError::setup(
                format!("cannot load GitHub's public keys from {}", path.display()),
                e,
            )
        })?;
        tracing::info!(path = %GITHUB_PATH, "GitHub secret-scanning reports accepted");
        app = app.leak_reports(LeakReports::new(gate, keys));
    }
    Ok(app)
}

fn header_name(name: &str) -> Result<HeaderName, ServeError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|e| ServeError::setup(format!("{name:?} is not a header name"), e))
}

/// The pepper: from the environment, the configuration file's `pepper_file`, or a file
/// beside a SQLite database (created on the first start, as the example servers do).
async fn load_pepper(config: &Config, store: &Arc<dyn KeyStore>) -> Result<Pepper, ServeError> {
    let bad = |e| ServeError::setup("cannot load the pepper", e);
    let version = match &config.pepper {
        PepperSource::Env => {
            return Pepper::from_default_env()
                .map_err(bad)?
                .ok_or_else(|| ServeError::Setup {
                    context: "no pepper in the environment".into(),
                    source: None,
                });
        }
        PepperSource::File { path, version } => {
            return Pepper::from_file(path, *version).map_err(bad);
        }
        PepperSource::BesideDatabase { version } => *version,
    };
    let Some(path) = sqlite_pepper_file(&config.db)? else {
        tracing::warn!("in-memory database: using a throwaway pepper");
        return Pepper::generate(version).map_err(bad);
    };
    // A new pepper for a store that already holds hashes would lock every key out.
    let holds_keys = !store
        .list(&ListQuery::new().limit(1))
        .await
        .map_err(|source| ServeError::Store {
            context: "cannot read the store".into(),
            source,
        })?
        .is_empty();
    if !path.exists() && holds_keys {
        return Err(ServeError::Setup {
            context: format!(
                "{} is missing but the database already holds keys: restore the pepper file, \
                 or set KEYGATE_PEPPER_FILE or pepper_file",
                path.display()
            ),
            source: None,
        });
    }
    let (pepper, created) = Pepper::load_or_create(&path, version).map_err(bad)?;
    if created {
        tracing::warn!(
            path = %path.display(),
            "generated a new pepper (mode 0600): keep it with the database but out of its backups"
        );
    }
    Ok(pepper)
}

/// `<database file>.pepper` for a SQLite file, `None` for an in-memory SQLite database;
/// an error for other stores, which must be given a pepper (their other users need the
/// same one).
fn sqlite_pepper_file(db: &str) -> Result<Option<PathBuf>, ServeError> {
    let scheme = db.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    let path_and_query = match scheme.as_deref() {
        Some("sqlite") => db
            .get("sqlite:".len()..)
            .map(|rest| rest.strip_prefix("//").unwrap_or(rest))
            .unwrap_or(""),
        None => db,
        Some(s) if s.len() == 1 => db, // a Windows drive letter
        Some(_) => {
            return Err(ServeError::Setup {
                context: format!(
                    "no pepper for {}: set {} or {}, or pepper_file in the configuration file \
                     (every server using this store needs the same one)",
                    redact_url(db),
                    Pepper::ENV,
                    Pepper::ENV_FILE
                ),
                source: None,
            })
        }
    };
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    if path.is_empty() || path == ":memory:" || query.split('&').any(|p| p == "mode=memory") {
        return Ok(None);
    }
    let mut file = PathBuf::from(path).into_os_string();
    file.push(".pepper");
    Ok(Some(file.into()))
}

/// The JWT secret, when one is configured.
fn jwt_secret(source: &JwtSource) -> Result<Option<JwtSecret>, ServeError> {
    let bytes = match source {
        JwtSource::None => return Ok(None),
        JwtSource::Env => std::env::var_os("KEYGATE_JWT_SECRET")
            .map(|v| v.into_encoded_bytes())
            .unwrap_or_default(),
        JwtSource::File(path) => {
            use std::io::Read;
            let read = |e| ServeError::setup(format!("cannot read {}", path.display()), e);
            let mut bytes = Vec::new();
            std::fs::File::open(path)
                .map_err(read)?
                .take(MAX_SECRET_FILE_LEN)
                .read_to_end(&mut bytes)
                .map_err(read)?;
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            bytes
        }
    };
    JwtSecret::new(bytes)
        .map(Some)
        .map_err(|e| ServeError::setup("the JWT secret is not usable", e))
}

/// The id of the first-start admin key, the same for every server: the store lets only one
/// key have it, so that of several servers starting at once on an empty store, exactly one
/// mints and prints a key ([`bootstrap`]). Ids are not secret; this one only says which key
/// came first.
pub const BOOTSTRAP_KEY_ID: KeyId = KeyId::from_u128(0x6b65_7967_6174_4500_8000_0000_0000_0001);

/// First start: mints an admin key when the store holds no key at all, and writes it once
/// to `out` as `admin API key: <key>`. Returns its id, or `None` when the store already
/// held keys, or when another server minted the first key at the same moment (nothing is
/// minted or written: the key has the fixed id [`BOOTSTRAP_KEY_ID`], which the store
/// inserts at most once, atomically).
///
/// Without a directory (`directory` false) the key is scoped `["admin"]` (admin authority
/// is never implied by missing configuration); with one, it is an unscoped key of `owner`,
/// who must hold the admin permission there.
///
/// # Errors
///
/// [`ServeError::Store`] when the store fails; [`ServeError::Setup`] when `owner` is not
/// an admin in the directory or `out` cannot be written.
pub async fn bootstrap(
    gate: &Keygate,
    owner: &str,
    directory: bool,
    out: &mut dyn Write,
) -> Result<Option<KeyId>, ServeError> {
    let page = gate
        .list(ListQuery::new().limit(1))
        .await
        .map_err(|e| ServeError::from_keygate("cannot list the store's keys", e))?;
    if !page.records.is_empty() {
        tracing::info!("the store holds keys: no first-start key");
        return Ok(None);
    }
    let mut new = NewKey::new("Admin key (first start)", owner).created_by(owner);
    if directory {
        let holder = gate
            .owner(owner)
            .await
            .map_err(|e| ServeError::setup("cannot ask the user directory", e))?;
        if !holder.is_some_and(|o| o.active && o.permissions.allows(ADMIN_PERMISSION)) {
            return Err(ServeError::Setup {
                context: format!(
                    "bootstrap_owner {owner:?} is not an active admin in [users]: give it \
                     permissions = [\"*\"] (or [\"admin\", …]), or set bootstrap = false"
                ),
                source: None,
            });
        }
    } else {
        new = new.scopes([ADMIN_PERMISSION]);
    }
    // One fixed id: of servers starting together on an empty store, the store lets one
    // insert it; the others get a conflict, print nothing and serve with that key.
    let issued = match gate.mint(new.id(BOOTSTRAP_KEY_ID)).await {
        Ok(issued) => issued,
        Err(keygate::Error::Store(StoreError::Conflict(_))) => {
            tracing::info!(
                key_id = %BOOTSTRAP_KEY_ID,
                "another server minted the first admin key at the same time: it printed it"
            );
            return Ok(None);
        }
        Err(e) => {
            return Err(ServeError::from_keygate(
                "cannot mint the first admin key",
                e,
            ))
        }
    };
    writeln!(out, "admin API key: {}", issued.key.expose())
        .and_then(|()| out.flush())
        .map_err(|e| ServeError::setup("cannot print the first admin key", e))?;
    tracing::info!(
        key_id = %issued.record.id,
        owner = ?owner,
        "empty store: minted the first admin key (shown once, on stdout)"
    );
    Ok(Some(issued.record.id))
}

/// Serves `app` on `listener` until `shutdown` completes, then drains: no new
/// connections, requests under way get `drain` to finish (then the server stops anyway),
/// the gate's pending last-used times are written ([`Keygate::flush`]), and a
/// [`local_first`](App::local_first) limiter sends its last usage to the store.
///
/// # Errors
///
/// [`ServeError::Io`] when serving fails; [`ServeError::Store`] when the final flush
/// cannot write (what it could not write is lost).
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> Result<(), ServeError> {
    let gate = app.gate().clone();
    let local_first = app.local_first.clone();
    let (stopping, mut stopped) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: draining requests under way");
        let _ = stopping.send(true);
    };
    // The peer's address reaches `/auth` (is it a trusted proxy?) and the admin API.
    let routes = app
        .router()
        .into_make_service_with_connect_info::<SocketAddr>();
    let server = axum::serve(listener, routes)
        .with_graceful_shutdown(signal)
        .into_future();
    let deadline = async move {
        if stopped.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        served = server => served.map_err(|source| ServeError::Io {
            context: "serving failed".into(),
            source,
        })?,
        () = deadline => tracing::warn!(
            drain_secs = drain.as_secs(),
            "requests still under way after the drain timeout: stopping anyway"
        ),
    }
    // Last-used times are written coalesced, in the background; write what is pending.
    let flushed = gate.flush().await;
    if let Some(local) = local_first {
        // The rate-limit usage of the last sync interval, before the process goes (even
        // when the last-used times could not be written: the two are independent).
        if let Err(error) = local.shutdown().await {
            tracing::warn!(error = %chain(&error), "cannot send the last rate-limit usage to the store");
        }
    }
    flushed.map_err(|e| ServeError::from_keygate("cannot write the last-used times", e))?;
    tracing::info!("stopped; last-used times written");
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C (SIGINT). On Unix the handlers are installed when this
/// is called, not when the future is first polled: a SIGTERM that arrives between the
/// "listening" log and the server's first poll is then a graceful stop, never the default
/// action (the process killed, last-used times lost). Call it inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            let wait = |installed: std::io::Result<tokio::signal::unix::Signal>| async move {
                match installed {
                    Ok(mut signal) => {
                        signal.recv().await;
                    }
                    Err(_) => std::future::pending().await,
                }
            };
            tokio::select! {
                () = wait(terminate) => {}
                () = wait(interrupt) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Structured logs on stderr: JSON lines (or text), filtered by `config.log`.
fn init_logging(config: &Config) -> Result<(), Box<dyn StdError + Send + Sync>> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .map_err(|e| format!("log filter {:?}: {e}", config.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    }
}
