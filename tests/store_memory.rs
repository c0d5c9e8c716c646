//! The store conformance suite against the built-in stores.
#![cfg(feature = "testing")]

use std::sync::Arc;

use keygate::{CacheConfig, CachedStore, MemoryStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conforms() {
    keygate::testing::run_all(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_memory_store_conforms() {
    let store = CachedStore::new(MemoryStore::new(), CacheConfig::new());
    keygate::testing::run_all(Arc::new(store)).await;
}
