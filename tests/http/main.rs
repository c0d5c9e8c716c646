//! The web integrations through each framework's own in-process harness: axum
//! (`tower::ServiceExt::oneshot`) and actix-web (`actix_web::test`).

// Test code: a panic is how a test reports a failure, and fixtures index and count
// over small known values (the modules and `support` included).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

#[path = "../support/mod.rs"]
mod support;

mod actix;
mod admin_page;
mod axum;
mod limits;
