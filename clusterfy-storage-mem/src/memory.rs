//! [`MemStorage`]: an ordered map behind a mutex.

use std::fmt;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use clusterfy_core::kv::{self, KvMap as Map};
use clusterfy_core::{BatchOp, Capabilities, Result, StorageBackend};

/// A volatile [`StorageBackend`] that keeps every pair in an ordered map in memory.
///
/// Cheap to create and never fails, which makes it the default shared storage and the reference the
/// conformance suite is checked against. Share it between tasks through an `Arc`.
pub struct MemStorage {
    // A std mutex rather than tokio's: no operation awaits while holding it, so the lock is short
    // and never held across a suspension point.
    map: Mutex<Map>,
}

impl MemStorage {
    /// An empty storage.
    pub fn new() -> Self {
        MemStorage { map: Mutex::new(Map::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, Map> {
        // Poisoning only means another thread panicked while holding the guard. No code here can
        // panic between the steps of a mutation (only allocation failure, which aborts), so the
        // map is consistent whenever the lock is released: keep serving it.
        self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for MemStorage {
    fn default() -> Self {
        MemStorage::new()
    }
}

impl fmt::Debug for MemStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The contents can be large and private; the size is what helps when debugging.
        f.debug_struct("MemStorage").field("keys", &self.lock().len()).finish()
    }
}

#[async_trait]
impl StorageBackend for MemStorage {
    fn capabilities(&self) -> Capabilities {
        Capabilities::volatile()
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().get(key).cloned())
    }

    async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(kv::scan_prefix(&self.lock(), prefix).map(|(key, value)| (key.clone(), value.clone())).collect())
    }

    async fn apply_batch(&self, ops: Vec<BatchOp>) -> Result<()> {
        // Applied under one lock, so readers see all of the batch or none of it.
        kv::apply_batch(&mut self.lock(), ops);
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        // Nothing to make durable: capabilities() promises nothing beyond the process's life.
        Ok(())
    }

    fn notices(&self) -> Option<clusterfy_core::NoticeReceiver> {
        // Memory depends on no outside service, so there is nothing to report.
        None
    }
}

#[cfg(test)]
// A failed unwrap is the clearest failure report a test can give.
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use clusterfy_core::StorageBackendExt;

    use super::*;

    // The contract itself is checked by the shared conformance suite (tests/conformance.rs);
    // these cover what is particular to this backend.

    #[test]
    fn capabilities_are_volatile() {
        assert_eq!(MemStorage::default().capabilities(), Capabilities::volatile());
    }

    #[tokio::test]
    async fn a_poisoned_lock_keeps_working() {
        let storage = Arc::new(MemStorage::new());
        storage.put(b"k", b"v").await.unwrap();
        let holder = Arc::clone(&storage);
        let panicked = std::thread::spawn(move || {
            let _guard = holder.map.lock();
            panic!("deliberate panic while holding the storage lock");
        })
        .join();
        assert!(panicked.is_err());
        assert!(storage.map.is_poisoned());
        assert_eq!(storage.get(b"k").await.unwrap(), Some(b"v".to_vec()));
        storage.put(b"k2", b"v2").await.unwrap();
        assert_eq!(format!("{storage:?}"), "MemStorage { keys: 2 }");
    }
}
