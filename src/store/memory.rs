//! [`MemoryStore`]: key records in process memory, for tests, examples and one process.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Cursor, KeyStore, ListQuery, StoreError};
use crate::hash::PepperFingerprint;
use crate::key::{IdMap, KeyId};
use crate::record::{KeyPatch, KeyRecord};

/// An in-process [`KeyStore`]: a hash map for lookups by id plus ordered indexes for paging,
/// behind one reader-writer lock. Verifies only take the read lock and clone an [`Arc`].
///
/// Nothing survives the process: use it for tests, examples, and as the inner store of a
/// persistent one's cache.
///
/// ```
/// let store = keygate::MemoryStore::new();
/// assert!(store.is_empty());
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: RwLock<Inner>,
    /// [`KeyStore::remember_pepper`]'s fingerprints, by pepper version.
    peppers: Mutex<BTreeMap<u32, PepperFingerprint>>,
}

#[derive(Debug, Default)]
struct Inner {
    by_id: IdMap<Arc<KeyRecord>>,
    order: BTreeSet<Cursor>,
    by_owner: BTreeSet<(String, Cursor)>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    /// Whether it holds no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // A panic while holding the lock cannot leave the maps half-updated (every write below
    // completes or does nothing before it can panic), so a poisoned lock is still usable.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        let mut inner = self.write();
        if inner.by_id.contains_key(&record.id) {
            return Err(StoreError::Conflict(record.id));
        }
        inner.order.insert(Cursor::of(&record));
        inner
            .by_owner
            .insert((record.owner.clone(), Cursor::of(&record)));
        inner.by_id.insert(record.id, Arc::new(record));
        Ok(())
    }

    async fn get(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        Ok(self.read().by_id.get(&id).cloned())
    }

    fn get_now(&self, id: KeyId) -> Option<Result<Option<Arc<KeyRecord>>, StoreError>> {
        Some(Ok(self.read().by_id.get(&id).cloned()))
    }

    async fn update(&self, id: KeyId, patch: &KeyPatch) -> Result<Option<KeyRecord>, StoreError> {
        let mut inner = self.write();
        let Some(current) = inner.by_id.get(&id) else {
            return Ok(None);
        };
        let mut updated = KeyRecord::clone(current);
        patch.apply(&mut updated)?;
        let (before, after) = (Cursor::of(current), Cursor::of(&updated));
        if updated.owner != current.owner || before != after {
            let old_owner = current.owner.clone();
            inner.by_owner.remove(&(old_owner, before));
            inner.by_owner.insert((updated.owner.clone(), after));
            inner.order.remove(&before);
            inner.order.insert(after);
        }
        inner.by_id.insert(id, Arc::new(updated.clone()));
        Ok(Some(updated))
    }

    async fn delete(&self, id: KeyId) -> Result<bool, StoreError> {
        let mut inner = self.write();
        let Some(record) = inner.by_id.remove(&id) else {
            return Ok(false);
        };
        inner.order.remove(&Cursor::of(&record));
        inner
            .by_owner
            .remove(&(record.owner.clone(), Cursor::of(&record)));
        Ok(true)
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<KeyRecord>, StoreError> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let inner = self.read();
        let ids: Vec<KeyId> = match &query.owner {
            None => {
                let start = query.after.map_or(Unbounded, Excluded);
                inner
                    .order
                    .range((start, Unbounded))
                    .take(query.limit)
                    .map(Cursor::id)
                    .collect()
            }
            Some(owner) => {
                let start = match query.after {
                    Some(after) => Excluded((owner.clone(), after)),
                    None => Included((owner.clone(), Cursor::FIRST)),
                };
                inner
                    .by_owner
                    .range((start, Unbounded))
                    .take_while(|(o, _)| o == owner)
                    .take(query.limit)
                    .map(|(_, cursor)| cursor.id())
                    .collect()
            }
        };
        // Every id came from `inner`'s own index under this lock, so none is skipped.
        Ok(ids
            .iter()
            .filter_map(|id| inner.by_id.get(id))
            .map(|record| KeyRecord::clone(record))
            .collect())
    }

    async fn record_last_used(&self, batch: &[(KeyId, DateTime<Utc>)]) -> Result<(), StoreError> {
        let mut inner = self.write();
        for (id, at) in batch {
            if let Some(record) = inner.by_id.get_mut(id) {
                if record.last_used_at.is_none_or(|prev| prev < *at) {
                    Arc::make_mut(record).last_used_at = Some(*at);
                }
            }
        }
        Ok(())
    }

    async fn remember_pepper(
        &self,
        version: u32,
        fingerprint: PepperFingerprint,
    ) -> Result<Option<PepperFingerprint>, StoreError> {
        // Nothing panics under this lock: a poisoned one still holds a whole map.
        let mut peppers = self.peppers.lock().unwrap_or_else(|e| e.into_inner());
        match peppers.get(&version) {
            Some(known) => Ok(Some(*known)),
            None => {
                peppers.insert(version, fingerprint);
                Ok(None)
            }
        }
    }
}
