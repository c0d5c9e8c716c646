//! The gate itself, framework- and backend-free: key management, verification and its
//! refusals, the pepper check, permissions, last-used bookkeeping, tracing events, floods,
//! the admin API's authority rules, and interop with Audiobookshelf's Node `jsonwebtoken`.
//!
//! One test binary with a module per topic (one link instead of one per file); shared
//! doubles and helpers live in `tests/support`.

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

mod admin_authority;
mod events;
mod flood;
mod interop_node;
mod leaks;
mod lifecycle;
mod limits;
mod local_first;
mod network;
mod pepper;
mod permissions;
mod property;
mod records;
mod refusals;
mod usage;
