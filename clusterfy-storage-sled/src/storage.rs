//! [`SledStorage`]: the [`StorageBackend`] implementation on a sled database.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use clusterfy_core::{BatchOp, Capabilities, NoticeReceiver, Result, StorageBackend};
use tokio::runtime::Handle;

use crate::error::{Op, SledError};
use crate::group_commit::{Flush, GroupCommit};

/// A durable [`StorageBackend`] that keeps the shared storage in a [sled] database directory.
///
/// A write is on disk once [`flush`](StorageBackend::flush) returns, so it survives a crash of the
/// primary (even `kill -9`). Concurrent flushes share one sled flush (group commit), so many writes
/// in flight cost far fewer than one disk sync each.
///
/// Every sled call runs on tokio's blocking thread pool, so the methods must be called inside a
/// tokio runtime (outside one they return an [`ErrorKind::InvalidState`] error). One directory can
/// be opened by one `SledStorage` at a time, in any process: opening it twice fails at once with an
/// [`ErrorKind::Storage`] error. The directory is free again when the `SledStorage` is dropped or
/// [closed](SledStorage::close).
///
/// Dropping it flushes what is still dirty and waits until sled's threads have released the
/// directory, on the dropping thread; [`SledStorage::close`] does the same on the blocking pool and
/// reports errors.
///
/// [sled]: https://docs.rs/sled/0.34
/// [`ErrorKind::InvalidState`]: clusterfy_core::ErrorKind::InvalidState
/// [`ErrorKind::Storage`]: clusterfy_core::ErrorKind::Storage
pub struct SledStorage {
    inner: Arc<Inner>,
    commit: GroupCommit,
}

/// What the blocking tasks share. Only the storage and running sled calls hold strong references,
/// so the database (and its file lock) goes away with the storage once its calls have returned.
struct Inner {
    // Dropped before `_released` (fields drop in declaration order), which then waits for the lock.
    db: sled::Db,
    _released: WaitForRelease,
    path: PathBuf,
    // sled makes each batch atomic, but its iterators take sled's internal lock per item, so a scan
    // could see part of a batch. Scans hold this for reading and batches for writing.
    batch_lock: RwLock<()>,
}

/// The longest a drop waits for sled's threads to let go of the data file.
const RELEASE_DEADLINE: Duration = Duration::from_secs(5);

/// Dropped right after the `sled::Db`, waits until sled's file lock is really free.
///
/// sled's own thread pool can still hold the data file (and with it the lock) for a moment after the
/// last `Db` is dropped, while it finishes a log write it had started. Without this wait, opening the
/// directory again right after dropping the storage fails now and then with "held by another
/// process". sled offers no event for it, so this takes the lock itself, briefly, as the check.
struct WaitForRelease {
    /// sled's data file, the one it locks.
    data_file: PathBuf,
}

impl Drop for WaitForRelease {
    fn drop(&mut self) {
        let Ok(file) = File::open(&self.data_file) else {
            // Removed or unreadable: nothing anyone could lock.
            return;
        };
        let start = Instant::now();
        let mut pause = Duration::from_micros(100);
        loop {
            match file.try_lock() {
                // Closing `file` releases the lock again.
                Ok(()) => return,
                Err(TryLockError::WouldBlock) if start.elapsed() < RELEASE_DEADLINE => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
                Err(TryLockError::WouldBlock) => {
                    tracing::warn!(
                        path = %self.data_file.display(),
                        "the sled data file is still locked {RELEASE_DEADLINE:?} after the storage was \
                         dropped; another process may have opened it meanwhile"
                    );
                    return;
                }
                Err(TryLockError::Error(_)) => return,
            }
        }
    }
}

impl Inner {
    fn read_batches(&self) -> RwLockReadGuard<'_, ()> {
        // The lock guards no data, so poisoning carries no meaning.
        self.batch_lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_batch(&self) -> RwLockWriteGuard<'_, ()> {
        self.batch_lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Flush for Inner {
    fn flush_now(&self) -> Result<(), sled::Error> {
        self.db.flush().map(drop)
    }
}

impl SledStorage {
    pub(crate) fn from_db(db: sled::Db, path: PathBuf) -> Self {
        let released = WaitForRelease { data_file: path.join("db") };
        SledStorage {
            inner: Arc::new(Inner { db, _released: released, path, batch_lock: RwLock::new(()) }),
            commit: GroupCommit::new(),
        }
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Flushes, then closes the database on the blocking thread pool, so its directory can be opened
    /// again (by this process or another) once this returns.
    ///
    /// Dropping the storage does the same, but blocks the dropping thread and cannot report errors.
    /// If an operation of this storage was cancelled while its sled call ran, the directory stays
    /// locked until that call returns.
    pub async fn close(self) -> Result<()> {
        let SledStorage { inner, commit } = self;
        let runtime = runtime(Op::Close, &inner.path)?;
        let path = inner.path.clone();
        let closed = runtime
            .spawn_blocking(move || {
                let flushed = inner.db.flush().map(drop);
                // The last strong reference (unless a cancelled call still runs): dropping it here
                // closes sled on this blocking thread.
                drop(inner);
                flushed
            })
            .await;
        drop(commit);
        match closed {
            Ok(flushed) => flushed.map_err(|source| SledError::sled(Op::Close, path, source).into()),
            Err(source) => Err(SledError::Task { op: Op::Close, path, source }.into()),
        }
    }

    /// Runs `call` right here: for sled calls that work on its in-memory pages and log buffers
    /// and do not wait for the disk, a hop to the blocking pool would cost more than the call.
    fn direct<T>(&self, op: Op, call: impl FnOnce(&Inner) -> Result<T, sled::Error>) -> Result<T> {
        call(&self.inner).map_err(|source| SledError::sled(op, self.inner.path.clone(), source).into())
    }

    /// How many sled flushes group commit ran so far (for tests and measurements).
    #[cfg(test)]
    pub(crate) fn flushes(&self) -> u64 {
        self.commit.flushes()
    }
}

/// The current tokio runtime, or the error saying one is needed.
pub(crate) fn runtime(op: Op, path: &Path) -> Result<Handle> {
    Handle::try_current().map_err(|_| SledError::NoRuntime { op, path: path.to_path_buf() }.into())
}

impl fmt::Debug for SledStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Counting keys would scan the whole tree; the directory is what identifies the storage.
        f.debug_struct("SledStorage").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

#[async_trait]
impl StorageBackend for SledStorage {
    fn capabilities(&self) -> Capabilities {
        Capabilities::volatile().with_durable(true)
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.direct(Op::Get, |inner| Ok(inner.db.get(key)?.map(|value| value.to_vec())))
    }

    async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.direct(Op::ScanPrefix, |inner| {
            let _no_batch = inner.read_batches();
            // sled orders keys by their bytes, as the contract asks.
            inner.db.scan_prefix(prefix).map(|pair| pair.map(|(k, v)| (k.to_vec(), v.to_vec()))).collect()
        })
    }

    async fn apply_batch(&self, ops: Vec<BatchOp>) -> Result<()> {
        self.direct(Op::ApplyBatch, |inner| {
            let _no_scan = inner.write_batch();
            inner.db.apply_batch(sled_batch(&inner.db, ops)?)
        })
    }

    async fn flush(&self) -> Result<()> {
        let runtime = runtime(Op::Flush, &self.inner.path)?;
        self.commit
            .begin(&self.inner, &runtime)
            .wait()
            .await
            .map_err(|failure| SledError::Flush { path: self.inner.path.clone(), failure }.into())
    }

    fn notices(&self) -> Option<NoticeReceiver> {
        // A local database depends on no outside service, so there is nothing to report.
        None
    }
}

/// The sled batch of `ops`. sled's batch keeps one write per key, the last one, which is what "in
/// order" means for a batch applied atomically; a prefix delete becomes the removal of every key
/// with the prefix, those in the tree and those put earlier in this batch. The caller holds the
/// batch lock, so the tree does not change between the scan and the batch.
fn sled_batch(db: &sled::Db, ops: Vec<BatchOp>) -> Result<sled::Batch, sled::Error> {
    let mut writes: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    for op in ops {
        match op {
            BatchOp::Put { key, value } => drop(writes.insert(key, Some(value))),
            BatchOp::Delete { key } => drop(writes.insert(key, None)),
            BatchOp::DeletePrefix { prefix } => {
                let earlier =
                    writes.range_mut(prefix.clone()..).take_while(|(key, _)| key.starts_with(&prefix));
                earlier.for_each(|(_, write)| *write = None);
                for key in db.scan_prefix(&prefix).keys() {
                    writes.insert(key?.to_vec(), None);
                }
            }
        }
    }
    let mut batch = sled::Batch::default();
    for (key, write) in writes {
        match write {
            Some(value) => batch.insert(key, value),
            None => batch.remove(key),
        }
    }
    Ok(batch)
}

#[cfg(test)]
// A failed unwrap is the clearest failure report a test can give.
#[allow(clippy::unwrap_used)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use clusterfy_core::{ErrorKind, StorageBackendExt};
    use tempfile::TempDir;

    use super::*;

    async fn fresh() -> (TempDir, SledStorage) {
        let dir = tempfile::tempdir().unwrap();
        let storage = SledStorage::open(dir.path().join("db")).await.unwrap();
        (dir, storage)
    }

    fn put(key: &[u8], value: &[u8]) -> BatchOp {
        BatchOp::Put { key: key.to_vec(), value: value.to_vec() }
    }

    #[tokio::test]
    async fn capabilities_are_durable_and_there_are_no_notices() {
        let (_dir, storage) = fresh().await;
        assert!(storage.capabilities().durable);
        assert!(!storage.capabilities().visible_outside);
        assert!(storage.notices().is_none());
    }

    #[tokio::test]
    async fn scan_prefix_handles_empty_and_ff_prefixes() {
        let (_dir, storage) = fresh().await;
        for key in [&b""[..], b"\xff", b"\xff\xff", b"\xff\x00", b"a"] {
            storage.put(key, b"v").await.unwrap();
        }
        let keys = |pairs: Vec<(Vec<u8>, Vec<u8>)>| pairs.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(storage.scan_prefix(b"").await.unwrap()),
            [&b""[..], b"a", b"\xff", b"\xff\x00", b"\xff\xff"]
        );
        assert_eq!(
            keys(storage.scan_prefix(b"\xff").await.unwrap()),
            [&b"\xff"[..], b"\xff\x00", b"\xff\xff"]
        );
        assert_eq!(keys(storage.scan_prefix(b"\xff\xff").await.unwrap()), [b"\xff\xff"]);
    }

    #[tokio::test]
    async fn later_batch_ops_on_the_same_key_win() {
        let (_dir, storage) = fresh().await;
        storage
            .apply_batch(vec![put(b"k", b"1"), BatchOp::Delete { key: b"k".to_vec() }, put(b"j", b"1")])
            .await
            .unwrap();
        storage.apply_batch(vec![BatchOp::Delete { key: b"j".to_vec() }, put(b"j", b"2")]).await.unwrap();
        assert_eq!(storage.scan_prefix(b"").await.unwrap(), vec![(b"j".to_vec(), b"2".to_vec())]);
        storage.apply_batch(Vec::new()).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn scans_never_see_part_of_a_batch() {
        const KEYS: u8 = 32;
        let (_dir, storage) = fresh().await;
        let storage = Arc::new(storage);
        storage.apply_batch((0..KEYS).map(|k| put(&[k], &[0])).collect()).await.unwrap();
        let writer = {
            let storage = Arc::clone(&storage);
            tokio::spawn(async move {
                for round in 1..=200u8 {
                    storage.apply_batch((0..KEYS).map(|k| put(&[k], &[round])).collect()).await.unwrap();
                }
            })
        };
        let mut scans = 0;
        while !writer.is_finished() {
            let seen = storage.scan_prefix(b"").await.unwrap();
            assert_eq!(seen.len(), usize::from(KEYS));
            assert!(seen.iter().all(|(_, v)| *v == seen[0].1), "saw part of a batch: {seen:?}");
            scans += 1;
        }
        writer.await.unwrap();
        assert!(scans > 0);
    }

    #[tokio::test]
    async fn flushed_writes_survive_reopen() {
        let (dir, storage) = fresh().await;
        storage.put(b"k", b"v").await.unwrap();
        storage.apply_batch(vec![put(b"a", b"1"), put(b"b", b"2")]).await.unwrap();
        storage.flush().await.unwrap();
        drop(storage);
        let storage = SledStorage::open(dir.path().join("db")).await.unwrap();
        assert_eq!(storage.get(b"k").await.unwrap(), Some(b"v".to_vec()));
        assert_eq!(storage.scan_prefix(b"").await.unwrap().len(), 3);
        storage.close().await.unwrap();
        let storage =
            SledStorage::builder(dir.path().join("db")).cache_capacity(1 << 20).open().await.unwrap();
        assert_eq!(storage.get(b"a").await.unwrap(), Some(b"1".to_vec()));
    }

    #[tokio::test]
    async fn second_open_of_a_held_directory_fails_fast_with_advice() {
        let (dir, storage) = fresh().await;
        let path = dir.path().join("db");
        // Twice, so a retry does not somehow succeed either.
        for _ in 0..2 {
            let err = SledStorage::open(&path).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Storage, "{err}");
            assert!(err.message().contains("another process holds its lock"), "{err}");
            assert!(err.message().contains("own storage directory"), "{err}");
            assert_eq!(err.context_value("path"), Some(path.display().to_string().as_str()));
        }
        // The failed opens did not disturb the holder.
        storage.put(b"k", b"v").await.unwrap();
        storage.flush().await.unwrap();
        drop(storage);
        let reopened = SledStorage::open(&path).await.unwrap();
        assert_eq!(reopened.get(b"k").await.unwrap(), Some(b"v".to_vec()));
    }

    // postmortem: 5 runs in 40 failed the reopen with "another process holds its lock" before
    // `WaitForRelease`: sled's thread pool still held the data file for a moment after the drop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_directory_is_free_as_soon_as_the_storage_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        for round in 0..50u8 {
            let storage = SledStorage::open(&path).await.unwrap();
            storage.put(&[round], &[round; 64]).await.unwrap();
            // Leaves a group-commit leader behind that must not keep the database alive.
            storage.flush().await.unwrap();
            if round % 2 == 0 {
                drop(storage);
            } else {
                storage.close().await.unwrap();
            }
        }
        let storage = SledStorage::open(&path).await.unwrap();
        assert_eq!(storage.scan_prefix(b"").await.unwrap().len(), 50);
    }

    #[tokio::test]
    async fn empty_path_is_a_config_error() {
        let err = SledStorage::open("").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
    }

    #[tokio::test]
    async fn a_file_in_place_of_the_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = SledStorage::open(&file).await.unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Config | ErrorKind::Io), "{err}");
        assert!(err.message().contains("not-a-dir"), "{err}");
        assert_eq!(err.context_value("path"), Some(file.display().to_string().as_str()));
    }

    #[test]
    fn calls_outside_a_tokio_runtime_fail_instead_of_panicking() {
        fn poll_once<F: Future>(future: F) -> Poll<F::Output> {
            pin!(future).as_mut().poll(&mut Context::from_waker(Waker::noop()))
        }
        let dir = tempfile::tempdir().unwrap();
        let Poll::Ready(Err(err)) = poll_once(SledStorage::open(dir.path())) else {
            panic!("open outside a runtime must fail at once");
        };
        assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let storage = runtime.block_on(SledStorage::open(dir.path())).unwrap();
        // Calls that never wait for the disk run in place and need no runtime.
        let Poll::Ready(Ok(())) = poll_once(storage.put(b"k", b"v")) else {
            panic!("put runs in place");
        };
        let Poll::Ready(Err(err)) = poll_once(storage.flush()) else {
            panic!("flush outside a runtime must fail at once");
        };
        assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");
        runtime.block_on(storage.close()).unwrap();
    }

    /// Runs `callers` concurrent tasks that each write a key and flush; returns the sled flushes
    /// and how long the writes took.
    async fn flushes_for_concurrent_writers(callers: u32) -> (u64, std::time::Duration) {
        let (_dir, storage) = fresh().await;
        let storage = Arc::new(storage);
        let start_time = std::time::Instant::now();
        let start = Arc::new(tokio::sync::Barrier::new(callers as usize));
        let tasks: Vec<_> = (0..callers)
            .map(|i| {
                let (storage, start) = (Arc::clone(&storage), Arc::clone(&start));
                tokio::spawn(async move {
                    start.wait().await;
                    storage.put(&i.to_be_bytes(), b"v").await.unwrap();
                    storage.flush().await.unwrap();
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let elapsed = start_time.elapsed();
        assert_eq!(storage.scan_prefix(b"").await.unwrap().len(), callers as usize);
        (storage.flushes(), elapsed)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_flushes_share_sled_flushes() {
        let (flushes, _) = flushes_for_concurrent_writers(256).await;
        eprintln!("256 concurrent put+flush calls took {flushes} sled flushes");
        // Every flush serves at least one caller; one flush per caller would mean no grouping.
        assert!((1..256).contains(&flushes), "{flushes} sled flushes for 256 concurrent flush() calls");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "measurement, not a check: run with --ignored --nocapture"]
    async fn measure_group_commit() {
        for callers in [1, 2, 16, 64, 256, 1024] {
            let (flushes, elapsed) = flushes_for_concurrent_writers(callers).await;
            eprintln!(
                "{callers:>5} concurrent put+flush callers: {flushes:>4} sled flushes, {:>8.0} durable writes/s",
                f64::from(callers) / elapsed.as_secs_f64()
            );
        }
        let (_dir, storage) = fresh().await;
        let start = std::time::Instant::now();
        for i in 0..256u32 {
            storage.put(&i.to_be_bytes(), b"v").await.unwrap();
            storage.flush().await.unwrap();
        }
        eprintln!(
            "  256 sequential put+flush calls:   {:>4} sled flushes, {:>8.0} durable writes/s",
            storage.flushes(),
            256.0 / start.elapsed().as_secs_f64()
        );
    }

    #[tokio::test]
    async fn debug_shows_the_path() {
        let (dir, storage) = fresh().await;
        let shown = format!("{storage:?}");
        assert!(shown.starts_with("SledStorage"), "{shown}");
        assert!(shown.contains(&dir.path().join("db").display().to_string()), "{shown}");
        assert_eq!(storage.path(), dir.path().join("db"));
    }
}
