//! The built-in stores: the public conformance suite against each, plus what is specific
//! to a backend (schemas and migrations, outages, durability across `kill -9`, cross-node
//! revocation). PostgreSQL and Redis tests need `KEYGATE_TEST_POSTGRES_URL` /
//! `KEYGATE_TEST_REDIS_URL` and show as ignored without them (see `build.rs`).

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

mod limits;
mod lost_notices;
mod memory;
mod postgres;
mod redis;
mod redis_topologies;
mod sqlite;
mod tls;
