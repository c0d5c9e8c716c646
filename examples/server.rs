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
//! Environment: `KEYGATE_ADDR`, `KEYGATE_DB`, `KEYGATE_PREFIX`, `KEYGATE_PEPPER` or
//! `KEYGATE_PEPPER_FILE` (with `KEYGATE_PEPPER_VERSION`), `KEYGATE_JWT_SECRET`,
//! `RUST_LOG`: the same variables as the `keygate` CLI, so both work on one database (see
//! `examples/common/mod.rs`, which both example servers share). A pepper that is not the
//! one the database's keys were made with stops the server at start, with a message that
//! says so.
//!
//! Routes:
//! - `GET /healthz`: no auth, `ok`.
//! - `GET /api/me`: the caller's [`Principal`] as JSON.
//! - `GET /api/libraries`: a demo resource; needs `library:read`.
//! - `/api/api-keys`: the admin API (`keygate::admin`), for callers the directory grants `admin`.
//! - `/admin/`: the admin page (`keygate::admin::page`) over that API: open
//!   <http://127.0.0.1:3000/admin/> and sign in with the printed key.
//! - `GET /api/ping-open` and `GET /api/ping`: the same tiny body without and with key
//!   verification. They exist for `benches/http.sh`, which measures what keygate adds
//!   to a request.
//!
//! Users are static (an `admin` and a `user`); keys live in the database. SIGINT or SIGTERM
//! stops the server gracefully and writes pending last-used times before it exits.

mod common;

use std::process::ExitCode;

use axum::routing::get;
use axum::{Json, Router};
use keygate::admin::{AdminApi, AdminPage};
use keygate::axum::{admin_page, admin_routes, Require};
use keygate::{Keygate, Principal};
use serde_json::{json, Value};

use common::{BoxError, Config, LibraryRead};

async fn healthz() -> &'static str {
    "ok"
}

async fn me(principal: Principal) -> Json<Principal> {
    Json(principal)
}

async fn libraries(principal: Require<LibraryRead>) -> Json<Value> {
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
        .merge(admin_page(
            "/admin",
            AdminPage::new().api_base("/api/api-keys"),
        ))
        .with_state(gate)
}

#[tokio::main]
async fn main() -> ExitCode {
    common::exit(run().await)
}

async fn run() -> Result<(), BoxError> {
    common::init_logging();
    let config = Config::from_env();
    let gate = common::open_gate(&config).await?;

    let addr = &config.addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    eprintln!(
        "keygate example: listening on http://{}, keys in {}",
        listener.local_addr()?,
        config.db
    );
    // The listener is already bound: the key is usable as soon as it is shown.
    common::bootstrap_admin_key(&gate).await?;

    axum::serve(listener, app(gate.clone()))
        .with_graceful_shutdown(shutdown_signal())
        .await?;

    // Last-used times are written coalesced, in the background; write what is pending.
    gate.flush().await?;
    eprintln!("keygate example: stopped");
    Ok(())
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
