//! [`MemStorage`]: an ordered map behind a mutex.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use clusterfy_core::{BatchOp, Capabilities, CasConflict, Result, StorageBackend};

/// Keys and values of a [`MemStorage`].
type Map = BTreeMap<Vec<u8>, Vec<u8>>;

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
        MemStorage { map: Mutex::new(BTreeMap::new()) }
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

    async fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.lock().insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    async fn delete(&self, key: &[u8]) -> Result<()> {
        self.lock().remove(key);
        Ok(())
    }

    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Result<(), CasConflict>> {
        let mut map = self.lock();
        let current = map.get(key);
        if current.map(Vec::as_slice) != expected {
            return Ok(Err(CasConflict { current: current.cloned() }));
        }
        match new {
            Some(value) => map.insert(key.to_vec(), value.to_vec()),
            None => map.remove(key),
        };
        Ok(Ok(()))
    }

    async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let map = self.lock();
        // Every key with the prefix sorts at or after the prefix itself, and they are contiguous,
        // so the scan can stop at the first key without it.
        Ok(map
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect())
    }

    async fn apply_batch(&self, ops: Vec<BatchOp>) -> Result<()> {
        let mut map = self.lock();
        // Applied under one lock, so readers see all of the batch or none of it. Nothing in the
        // loop can fail or panic (allocation failure aborts), so a batch is never left half applied.
        for op in ops {
            match op {
                BatchOp::Put { key, value } => {
                    map.insert(key, value);
                }
                BatchOp::Delete { key } => {
                    map.remove(&key);
                }
            }
        }
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

    use super::*;

    fn put(key: &[u8], value: &[u8]) -> BatchOp {
        BatchOp::Put { key: key.to_vec(), value: value.to_vec() }
    }

    #[tokio::test]
    async fn get_of_missing_key_is_none() {
        let storage = MemStorage::new();
        assert_eq!(storage.get(b"nothing").await.unwrap(), None);
    }

    #[tokio::test]
    async fn put_then_get_returns_value() {
        let storage = MemStorage::new();
        storage.put(b"k", b"v").await.unwrap();
        assert_eq!(storage.get(b"k").await.unwrap(), Some(b"v".to_vec()));
    }

    #[tokio::test]
    async fn put_replaces_previous_value() {
        let storage = MemStorage::new();
        storage.put(b"k", b"old").await.unwrap();
        storage.put(b"k", b"new").await.unwrap();
        assert_eq!(storage.get(b"k").await.unwrap(), Some(b"new".to_vec()));
    }

    #[tokio::test]
    async fn delete_removes_key() {
        let storage = MemStorage::new();
        storage.put(b"k", b"v").await.unwrap();
        storage.delete(b"k").await.unwrap();
        assert_eq!(storage.get(b"k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn delete_of_missing_key_is_ok() {
        let storage = MemStorage::new();
        storage.delete(b"never").await.unwrap();
    }

    #[tokio::test]
    async fn cas_succeeds_when_expected_matches() {
        let storage = MemStorage::new();
        storage.put(b"k", b"1").await.unwrap();
        assert_eq!(storage.compare_and_swap(b"k", Some(b"1"), Some(b"2")).await.unwrap(), Ok(()));
        assert_eq!(storage.get(b"k").await.unwrap(), Some(b"2".to_vec()));
        // `None` as the new value deletes.
        assert_eq!(storage.compare_and_swap(b"k", Some(b"2"), None).await.unwrap(), Ok(()));
        assert_eq!(storage.get(b"k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn cas_conflict_reports_current_value_and_writes_nothing() {
        let storage = MemStorage::new();
        storage.put(b"k", b"1").await.unwrap();
        let lost = storage.compare_and_swap(b"k", Some(b"0"), Some(b"2")).await.unwrap();
        assert_eq!(lost, Err(CasConflict { current: Some(b"1".to_vec()) }));
        let lost = storage.compare_and_swap(b"k", Some(b"0"), None).await.unwrap();
        assert_eq!(lost, Err(CasConflict { current: Some(b"1".to_vec()) }));
        assert_eq!(storage.get(b"k").await.unwrap(), Some(b"1".to_vec()));
        let lost = storage.compare_and_swap(b"absent", Some(b"0"), Some(b"2")).await.unwrap();
        assert_eq!(lost, Err(CasConflict { current: None }));
        assert_eq!(storage.get(b"absent").await.unwrap(), None);
    }

    #[tokio::test]
    async fn cas_with_none_expected_creates_only_if_absent() {
        let storage = MemStorage::new();
        assert_eq!(storage.compare_and_swap(b"k", None, Some(b"first")).await.unwrap(), Ok(()));
        let lost = storage.compare_and_swap(b"k", None, Some(b"second")).await.unwrap();
        assert_eq!(lost, Err(CasConflict { current: Some(b"first".to_vec()) }));
        assert_eq!(storage.get(b"k").await.unwrap(), Some(b"first".to_vec()));
    }

    #[tokio::test]
    async fn scan_prefix_is_ordered_and_exact() {
        let storage = MemStorage::new();
        for key in [&b"b"[..], b"ab", b"a", b"a\0x", b"a\xff", b"ac", b"", b"\xff"] {
            storage.put(key, key).await.unwrap();
        }
        let keys = |pairs: Vec<(Vec<u8>, Vec<u8>)>| pairs.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(storage.scan_prefix(b"a").await.unwrap()),
            [&b"a"[..], b"a\0x", b"ab", b"ac", b"a\xff"]
        );
        assert_eq!(keys(storage.scan_prefix(b"ab").await.unwrap()), [b"ab"]);
        assert!(storage.scan_prefix(b"c").await.unwrap().is_empty());
        let all = storage.scan_prefix(b"").await.unwrap();
        assert_eq!(all.len(), 8);
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "not ascending: {all:?}");
        assert!(all.iter().all(|(k, v)| k == v));
    }

    #[tokio::test]
    async fn batch_applies_in_order() {
        let storage = MemStorage::new();
        storage.put(b"gone", b"x").await.unwrap();
        storage
            .apply_batch(vec![
                put(b"k", b"1"),
                put(b"k", b"2"),
                BatchOp::Delete { key: b"gone".to_vec() },
                put(b"back", b"1"),
                BatchOp::Delete { key: b"back".to_vec() },
                BatchOp::Delete { key: b"missing".to_vec() },
            ])
            .await
            .unwrap();
        assert_eq!(storage.scan_prefix(b"").await.unwrap(), vec![(b"k".to_vec(), b"2".to_vec())]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batch_is_atomic_for_readers() {
        const KEYS: u8 = 8;
        let storage = Arc::new(MemStorage::new());
        storage.apply_batch((0..KEYS).map(|k| put(&[k], &[0])).collect()).await.unwrap();
        let writer = {
            let storage = Arc::clone(&storage);
            tokio::spawn(async move {
                for round in 1..=200u8 {
                    storage.apply_batch((0..KEYS).map(|k| put(&[k], &[round])).collect()).await.unwrap();
                }
            })
        };
        while !writer.is_finished() {
            let seen = storage.scan_prefix(b"").await.unwrap();
            assert_eq!(seen.len(), usize::from(KEYS));
            assert!(seen.iter().all(|(_, v)| *v == seen[0].1), "saw part of a batch: {seen:?}");
            tokio::task::yield_now().await;
        }
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn keys_and_values_are_binary_safe() {
        let storage = MemStorage::new();
        let pairs: [(&[u8], &[u8]); 4] =
            [(b"", b"empty key"), (b"\0", b""), (b"a\0b", b"\0\xff\0"), (b"\xff\xfe", b"\0")];
        for (key, value) in pairs {
            storage.put(key, value).await.unwrap();
        }
        for (key, value) in pairs {
            assert_eq!(storage.get(key).await.unwrap().as_deref(), Some(value), "key {key:?}");
        }
        assert_eq!(storage.compare_and_swap(b"\0", Some(b""), Some(b"\0")).await.unwrap(), Ok(()));
        assert_eq!(storage.get(b"\0").await.unwrap(), Some(b"\0".to_vec()));
    }

    #[tokio::test]
    async fn flush_after_writes_succeeds() {
        let storage = MemStorage::new();
        storage.put(b"k", b"v").await.unwrap();
        storage.flush().await.unwrap();
        assert_eq!(storage.get(b"k").await.unwrap(), Some(b"v".to_vec()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_lose_nothing() {
        let storage = Arc::new(MemStorage::new());
        let tasks: Vec<_> = (0..8u8)
            .map(|task| {
                let storage = Arc::clone(&storage);
                tokio::spawn(async move {
                    for i in 0..50u8 {
                        storage.put(&[task, i], &[i]).await.unwrap();
                        // A shared counter only ends right if every CAS retry sees the latest value.
                        loop {
                            let current = storage.get(b"counter").await.unwrap();
                            let n =
                                current.as_deref().map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()));
                            let next = (n + 1).to_le_bytes();
                            if storage
                                .compare_and_swap(b"counter", current.as_deref(), Some(&next))
                                .await
                                .unwrap()
                                .is_ok()
                            {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(storage.scan_prefix(b"").await.unwrap().len(), 8 * 50 + 1);
        assert_eq!(storage.get(b"counter").await.unwrap(), Some(400u32.to_le_bytes().to_vec()));
    }

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
