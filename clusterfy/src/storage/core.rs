//! What the storage's writer task and its readers share: the committed tree in memory, its
//! version, what the backend promises, and who hears of commits (watchers, replicas). The
//! backend itself belongs to the writer task alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, PoisonError, RwLock, RwLockReadGuard};

use clusterfy_core::{BatchOp, Capabilities, Path, Result, StorageBackend, Value};
use tokio::sync::{broadcast, mpsc};

use super::custom::Operations;
use super::job::Job;
use super::replicas::Replicas;
use super::state::{self, Committed};

/// Changes buffered per watcher; one that falls further behind is told the root changed.
const CHANGE_BUFFER: usize = 4096;

pub(crate) struct StorageCore {
    committed: RwLock<Committed>,
    /// Commits so far (of rounds that changed something).
    version: AtomicU64,
    capabilities: Capabilities,
    changes: broadcast::Sender<Path>,
    operations: Operations,
    replicas: Replicas,
    /// The writer's queue, for the storage's own tasks (a replica's resync); weak, so that the
    /// writer ends once the storage is dropped.
    jobs: OnceLock<mpsc::WeakUnboundedSender<Job>>,
}

impl std::fmt::Debug for StorageCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageCore")
            .field("capabilities", &self.capabilities)
            .field("version", &self.version())
            .field("operations", &self.operations)
            .finish_non_exhaustive()
    }
}

impl StorageCore {
    /// The core over `backend`, holding what the backend holds.
    pub(super) async fn load(backend: &dyn StorageBackend, operations: Operations) -> Result<StorageCore> {
        let committed: Committed = backend.scan_prefix(&[]).await?.into_iter().collect();
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        Ok(StorageCore {
            committed: RwLock::new(committed),
            version: AtomicU64::new(0),
            capabilities: backend.capabilities(),
            changes,
            operations,
            replicas: Replicas::default(),
            jobs: OnceLock::new(),
        })
    }

    pub(super) fn set_jobs(&self, jobs: mpsc::WeakUnboundedSender<Job>) {
        let _ = self.jobs.set(jobs);
    }

    /// The writer's queue; empty (never upgrading) before it is set.
    pub(crate) fn jobs(&self) -> mpsc::WeakUnboundedSender<Job> {
        self.jobs.get().cloned().unwrap_or_else(|| mpsc::unbounded_channel::<Job>().0.downgrade())
    }

    /// The committed tree, for reading.
    pub(crate) fn committed(&self) -> RwLockReadGuard<'_, Committed> {
        // Commits are whole `apply_batch` calls, which cannot fail half-way: a panic elsewhere
        // leaves the tree consistent.
        self.committed.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value or subtree at `path` as committed: no waiting for the writer.
    pub(crate) fn read(&self, path: &Path) -> Result<Option<Value>> {
        state::read(&self.committed(), path)
    }

    /// Makes `batch` the committed state as commit `version`.
    pub(crate) fn commit(&self, batch: Vec<BatchOp>, version: u64) {
        let mut committed = self.committed.write().unwrap_or_else(PoisonError::into_inner);
        state::commit(&mut committed, batch);
        self.version.store(version, Ordering::Release);
    }

    /// The version of the last commit.
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub(crate) fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    pub(crate) fn operations(&self) -> &Operations {
        &self.operations
    }

    pub(crate) fn replicas(&self) -> &Replicas {
        &self.replicas
    }

    /// The paths written from now on, in commit order.
    pub(crate) fn changes(&self) -> broadcast::Receiver<Path> {
        self.changes.subscribe()
    }

    /// Tells watchers that a write at `path` was committed.
    pub(crate) fn announce(&self, path: Path) {
        if self.changes.receiver_count() > 0 {
            let _ = self.changes.send(path);
        }
    }
}
