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

/// A store shared through an `Arc` keeps its change feed: `Arc<T>` forwards `subscribe`.
#[tokio::test]
async fn arc_forwards_the_change_feed() {
    use keygate::{ChangeListener, KeyId, KeyStore, StoreError};
    use std::sync::{Mutex, Weak};

    #[derive(Default)]
    struct Feed(Mutex<Option<Weak<dyn ChangeListener>>>);

    #[async_trait::async_trait]
    impl KeyStore for Feed {
        async fn insert(&self, _: keygate::KeyRecord) -> Result<(), StoreError> {
            Ok(())
        }
        async fn get(&self, _: KeyId) -> Result<Option<Arc<keygate::KeyRecord>>, StoreError> {
            Ok(None)
        }
        async fn update(
            &self,
            _: KeyId,
            _: &keygate::KeyPatch,
        ) -> Result<Option<keygate::KeyRecord>, StoreError> {
            Ok(None)
        }
        async fn delete(&self, _: KeyId) -> Result<bool, StoreError> {
            Ok(false)
        }
        async fn list(
            &self,
            _: &keygate::ListQuery,
        ) -> Result<Vec<keygate::KeyRecord>, StoreError> {
            Ok(Vec::new())
        }
        async fn record_last_used(
            &self,
            _: &[(KeyId, chrono::DateTime<chrono::Utc>)],
        ) -> Result<(), StoreError> {
            Ok(())
        }
        async fn subscribe(&self, listener: Weak<dyn ChangeListener>) -> Result<bool, StoreError> {
            *self.0.lock().unwrap() = Some(listener);
            Ok(true)
        }
        async fn remember_pepper(
            &self,
            _: u32,
            _: keygate::PepperFingerprint,
        ) -> Result<Option<keygate::PepperFingerprint>, StoreError> {
            Ok(None)
        }
    }

    let feed = Arc::new(Feed::default());
    let cache = CachedStore::new(feed.clone(), CacheConfig::new());
    assert!(
        cache.follow_changes().await.unwrap(),
        "Arc<T> dropped the feed"
    );
    let listener = feed.0.lock().unwrap().clone().unwrap().upgrade().unwrap();
    listener.resync();
    assert_eq!(cache.stats().resyncs, 1);
}

#[tokio::test]
async fn the_memory_limiter_passes_the_limiter_conformance_checks() {
    keygate::testing::limiter_conformance(&keygate::limits::MemoryLimiter::new()).await;
}
