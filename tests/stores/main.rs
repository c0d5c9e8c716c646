//! The built-in stores: the public conformance suite against each, plus what is specific
//! to a backend (schemas and migrations, outages, durability across `kill -9`, cross-node
//! revocation). PostgreSQL and Redis tests need `KEYGATE_TEST_POSTGRES_URL` /
//! `KEYGATE_TEST_REDIS_URL` and show as ignored without them (see `build.rs`).

#[path = "../support/mod.rs"]
mod support;

mod memory;
mod postgres;
mod redis;
mod sqlite;
