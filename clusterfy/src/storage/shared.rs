//! [`SharedStorage`]: the shared storage on the primary, with its tree operations on [`Value`]s.

use std::sync::Arc;

use clusterfy_core::protocol::{Reply, StorageRequest};
use clusterfy_core::{Capabilities, Error, ErrorKind, Path, Result, StorageBackend, Value};
use tokio::sync::{broadcast, mpsc};

use super::core::StorageCore;
use super::custom::Operations;
use super::job::{Completion, Job, Work};
use super::ops::Outcome;
use super::writer;

/// The shared storage as workers and the primary see it: a tree of [`Value`]s addressed by dotted
/// [`Path`]s, held in the primary's memory and made durable (or visible outside) by a key-value
/// [`StorageBackend`].
///
/// Reads are answered from memory at once: they see every acknowledged write, and never wait for
/// a write in progress or a flush. Writes (saves, deletes, compare-and-swap, the atomic
/// operations) go to one writer task, which takes them in the order they arrive, runs each on
/// the round it belongs to (so each sees the ones before it), and commits the round as one
/// backend batch with at most one flush, which the writes that queued meanwhile share. A write
/// returns once its round is committed: on a durable backend, after the flush.
///
/// The whole storage lives in memory (the backend is read once, when the primary starts): size
/// it for what a cluster shares, configuration, counters and sessions, not bulk data. Give each
/// backend exactly one primary, and do not write to it behind its back.
#[derive(Debug)]
pub struct SharedStorage {
    core: Arc<StorageCore>,
    writes: mpsc::UnboundedSender<Job>,
}

impl SharedStorage {
    /// Tree semantics over `backend`, which is used as it is: existing data is loaded and stays.
    /// Starts the writer task, so it must be called within a tokio runtime.
    pub(crate) async fn open(backend: Arc<dyn StorageBackend>, operations: Operations) -> Result<Self> {
        let core = Arc::new(StorageCore::load(&*backend, operations).await?);
        let (writes, jobs) = mpsc::unbounded_channel();
        core.set_jobs(writes.downgrade());
        tokio::spawn(writer::run(Arc::downgrade(&core), backend, jobs));
        Ok(SharedStorage { core, writes })
    }

    /// The paths written from now on (saved, deleted, swapped or changed by an operation), in
    /// commit order. A write at `p` changes `p`'s subtree, so a watcher of `w` cares when `p`
    /// and `w` are on one branch.
    pub fn changes(&self) -> broadcast::Receiver<Path> {
        self.core.changes()
    }

    /// What the backend underneath promises (durable, shared outside the primary, ...).
    ///
    /// The backend itself is not handed out here: every write must go through the one writer
    /// task, so that reads from memory stay what the backend holds. A program that needs the
    /// backend's own methods keeps an `Arc` of it (see [the module](super)).
    pub fn capabilities(&self) -> Capabilities {
        self.core.capabilities()
    }

    pub(crate) fn core(&self) -> &Arc<StorageCore> {
        &self.core
    }

    /// Hands `work` to the writer task; `done` hears the outcome.
    pub(crate) fn submit(&self, work: Work, done: Completion) {
        if let Err(mpsc::error::SendError(job)) = self.writes.send(Job { work, done }) {
            // The task only ends when this value is dropped, so this cannot happen while `self`
            // lives; answer anyway rather than leave the caller waiting.
            job.done.complete(Err(Error::new(ErrorKind::Closed, "the storage's writer task has stopped")));
        }
    }

    /// Runs `work` through the writer task and waits for its outcome.
    pub(crate) async fn run(&self, work: Work) -> Result<Outcome> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(work, Completion::Local(tx));
        rx.await.map_err(|_| Error::new(ErrorKind::Closed, "the storage's writer task dropped a write"))?
    }

    /// Runs a request through the writer task; its reply.
    pub(crate) async fn request(&self, path: Path, request: StorageRequest) -> Result<Reply> {
        self.run(Work::Request { path, request }).await.map(Outcome::into_reply)
    }

    /// Stops the writer once everything queued so far is committed, and lets go of the
    /// backend: afterwards writes fail with [`ErrorKind::Closed`], reads still answer, and
    /// nothing of the storage holds the backend any more (a sled directory can be opened again
    /// at once, even while a handle lives on). [`Primary::shutdown`](crate::Primary::shutdown)
    /// calls it.
    pub(crate) async fn close(&self) {
        // An error means the writer has stopped already.
        let _ = self.run(Work::Close).await;
    }

    /// Saves `initial` as the whole storage if it holds nothing yet, and does nothing otherwise,
    /// so that durable backends keep their state across restarts instead of being reset to the
    /// initial value. `initial` must be a [`Value::Map`] ([`ErrorKind::InvalidInput`] otherwise).
    ///
    /// An emptied storage counts as empty: after a restart it is initialised again.
    pub async fn initialize(&self, initial: Value) -> Result<()> {
        if !matches!(initial, Value::Map(_)) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "the initial storage must be a map, not {}; pass a map of the top-level keys",
                    initial.kind_phrase()
                ),
            ));
        }
        self.run(Work::Initialize(initial)).await.map(drop)
    }

    /// The value at `path`: a map path returns its whole subtree as a [`Value::Map`], a missing
    /// path (or one below a non-map) is `Ok(None)`, and the root is always a map, maybe empty.
    /// Answered from memory: it sees every write acknowledged before it.
    ///
    /// Fails with [`ErrorKind::Storage`] if the backend holds data this layout never writes.
    #[doc(alias = "get")]
    pub async fn retrieve_value(&self, path: &Path) -> Result<Option<Value>> {
        self.core.read(path)
    }

    /// Replaces the value or subtree at `path` with `value`, atomically: readers and crashes see
    /// the old or the new subtree, never a mix.
    ///
    /// The parent of `path` must be an existing map. A missing parent fails with
    /// [`ErrorKind::NotFound`] naming the first missing prefix, unless `create_parents` is true,
    /// in which case the missing maps are created in the same atomic write. A parent or ancestor
    /// that holds something other than a map is never overwritten: that fails with
    /// [`ErrorKind::InvalidInput`]. The root can only be replaced by a map, and map keys must be
    /// valid path segments so that every stored value stays addressable.
    #[doc(alias = "set")]
    pub async fn save(&self, path: &Path, value: Value, create_parents: bool) -> Result<()> {
        let request = StorageRequest::Save { path: String::new(), value, create_parents };
        self.request(path.clone(), request).await.map(drop)
    }

    /// Removes the value or subtree at `path` atomically. Returns whether anything was removed:
    /// deleting a missing path is `Ok(false)`. Deleting the root empties the storage.
    pub async fn delete(&self, path: &Path) -> Result<bool> {
        let work =
            Work::Request { path: path.clone(), request: StorageRequest::Delete { path: String::new() } };
        match self.run(work).await? {
            Outcome::Removed(removed) => Ok(removed),
            other => Err(unexpected_outcome(&other)),
        }
    }

    /// Replaces the value at `path` with `new` (`None` deletes it) only if the current value, the
    /// whole subtree for a map, equals `expected` (`None` means absent). A lost race is not an
    /// error: it returns `Ok(Err(current))` and writes nothing, so the caller can retry with it.
    ///
    /// The root's current value is always a map, so `expected: None` never matches there. Writing
    /// `new` follows [`SharedStorage::save`] without creating parents. `Value` equality is used, so
    /// a NaN float never equals anything, itself included.
    pub async fn compare_and_swap(
        &self,
        path: &Path,
        expected: Option<&Value>,
        new: Option<Value>,
    ) -> Result<Result<(), Option<Value>>> {
        let request =
            StorageRequest::CompareAndSwap { path: String::new(), expected: expected.cloned(), new };
        match self.request(path.clone(), request).await? {
            Reply::Swapped(outcome) => Ok(outcome),
            other => {
                Err(Error::new(ErrorKind::InvalidState, format!("the storage's writer answered {other:?}")))
            }
        }
    }
}

fn unexpected_outcome(outcome: &Outcome) -> Error {
    Error::new(ErrorKind::InvalidState, format!("the storage's writer answered with {outcome:?}"))
}
