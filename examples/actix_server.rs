//! The same server as `examples/server.rs`, on actix-web: keys in SQLite, the
//! Audiobookshelf-style admin API.
//!
//! ```text
//! cargo run --example actix_server --features actix,sqlite
//! ```
//!
//! On the first start (an empty database) it mints a key for the demo admin and prints it,
//! once, as the only line on stdout: `admin API key: <key>`. Everything else goes to stderr.
//!
//! Environment: as for `examples/server.rs` and the `keygate` CLI (see
//! `examples/common/mod.rs`, which both example servers share). A pepper that is not the
//! one the database's keys were made with stops the server at start, with a message that
//! says so.
//!
//! Routes:
//! - `GET /healthz`: no auth, `ok`.
//! - `GET /api/me`: the caller's [`Principal`] as JSON.
//! - `GET /api/libraries`: a demo resource; needs `library:read`.
//! - `/api/api-keys` (and `/api/api-keys/`): the admin API (`keygate::admin`), for callers
//!   the directory grants `admin`.
//! - `/admin/`: the admin page (`keygate::admin::page`) over that API.
//! - `GET /api/ping-open` and `GET /api/ping`: the same tiny body without and with key
//!   verification. They exist for `benches/http.sh`, which measures what keygate adds
//!   to a request.
//!
//! actix-web is used without its `macros` feature, so there is no `#[actix_web::main]`:
//! `main` runs the server in an `actix_web::rt::System`. The server handles SIGINT and
//! SIGTERM itself (graceful stop); pending last-used times are written once it returns.

mod common;

use std::process::ExitCode;

use actix_web::{web, App, HttpResponse, HttpServer};
use keygate::actix::{admin_page_scope, admin_scope, Require};
use keygate::admin::{AdminApi, AdminPage};
use keygate::{Keygate, Principal};
use serde_json::json;

use common::{BoxError, Config, LibraryRead};

async fn healthz() -> &'static str {
    "ok"
}

async fn me(principal: Principal) -> HttpResponse {
    HttpResponse::Ok().json(principal)
}

async fn libraries(principal: Require<LibraryRead>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
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

fn routes(cfg: &mut web::ServiceConfig, gate: &Keygate) {
    // Admins are the callers the directory (DemoUsers) grants "admin": never implied by
    // a missing directory. What they may do is bounded by their own key's reach.
    let admin = AdminApi::new(gate.clone());
    cfg.app_data(web::Data::new(gate.clone()))
        .route("/healthz", web::get().to(healthz))
        .route("/api/me", web::get().to(me))
        .route("/api/libraries", web::get().to(libraries))
        .route("/api/ping-open", web::get().to(ping_open))
        .route("/api/ping", web::get().to(ping))
        .service(admin_scope("/api/api-keys", admin))
        .service(admin_page_scope("/admin", AdminPage::new()));
}

fn main() -> ExitCode {
    common::exit(actix_web::rt::System::new().block_on(run()))
}

async fn run() -> Result<(), BoxError> {
    common::init_logging();
    let config = Config::from_env();
    let gate = common::open_gate(&config).await?;

    let addr = &config.addr;
    let app_gate = gate.clone();
    let server = HttpServer::new(move || App::new().configure(|cfg| routes(cfg, &app_gate)))
        .shutdown_timeout(10)
        .bind(addr)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    for bound in server.addrs() {
        eprintln!(
            "keygate example: listening on http://{bound}, keys in {}",
            config.db
        );
    }
    // The socket is already bound: the key is usable as soon as it is shown.
    common::bootstrap_admin_key(&gate).await?;

    // Returns after SIGINT or SIGTERM, once the workers have stopped.
    server.run().await?;

    // Last-used times are written coalesced, in the background; write what is pending.
    gate.flush().await?;
    eprintln!("keygate example: stopped");
    Ok(())
}
