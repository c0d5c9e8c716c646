//! The web integrations through each framework's own in-process harness: axum
//! (`tower::ServiceExt::oneshot`) and actix-web (`actix_web::test`).

#[path = "../support/mod.rs"]
mod support;

mod actix;
mod axum;
