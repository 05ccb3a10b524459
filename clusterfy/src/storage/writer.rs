//! The writer task of a [`SharedStorage`](super::SharedStorage): it takes every write (and the
//! reads that must follow a worker's own writes) in arrival order, runs each operation on the
//! draft of its round (so each sees the ones before it, and one that fails changes nothing and
//! fails alone), and commits the round: one backend batch with every touched key once, at most
//! one flush, then the committed tree in memory, the replicas, and the answers. Write combining
//! at the tree level, and group commit for durable backends.

use std::sync::{Arc, Weak};

use clusterfy_core::protocol::Reply;
use clusterfy_core::{Error, Path, Result, StorageBackend, WireError};
use tokio::sync::mpsc;

use super::core::StorageCore;
use super::job::{Completion, Job, Work};
use super::ops::{self, Outcome};
use super::replicas::ReplicaChange;
use super::state::{Draft, DraftView};

/// Most jobs taken in one round: enough to batch hundreds of writes in flight, few enough that a
/// round's replies do not wait long.
const ROUND_JOBS: usize = 1024;

/// Takes jobs until every sender is gone or one asks it to close. The task owns the backend,
/// and holds the core only while it works on a round: once it ends, nothing holds the backend
/// (a sled directory can be opened again), however long a handle of the storage lives on.
pub(super) async fn run(
    core: Weak<StorageCore>,
    backend: Arc<dyn StorageBackend>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    let mut taken = Vec::with_capacity(ROUND_JOBS);
    while jobs.recv_many(&mut taken, ROUND_JOBS).await > 0 {
        let Some(core) = core.upgrade() else { return };
        crate::metrics::storage_queue_depth(taken.len());
        let (mut round, mut draft) = (Round::default(), Draft::default());
        {
            let committed = core.committed();
            let mut view = DraftView { committed: &committed, draft: &mut draft };
            for job in taken.drain(..) {
                round.take(&core, &mut view, job);
            }
            round.settle(&view);
        }
        if let Some(closed) = round.finish(&core, &*backend, draft).await {
            drop((core, backend));
            return closed.complete(Ok(Outcome::Reply(Reply::Done)));
        }
    }
}

/// An operation that ran on the draft, waiting for the round's commit to be answered.
struct Staged {
    /// Announced to watchers once committed: the path of a write that changed something.
    announce: Option<Path>,
    outcome: Outcome,
    done: Completion,
}

/// Who waits for one round's commit.
#[derive(Default)]
struct Round {
    staged: Vec<Staged>,
    /// Replicas to start, resync or forget once the round is committed, in arrival order.
    replica_changes: Vec<(ReplicaChange, Completion)>,
    /// Asked to stop after this round: who waits for it.
    close: Option<Completion>,
    /// Operations of the round by name and outcome, reported once per round (a metric per
    /// operation would cost more than the operation).
    counted: Vec<(&'static str, bool, u64)>,
}

impl Round {
    fn count(&mut self, name: &'static str, ok: bool) {
        match self.counted.iter_mut().find(|(n, o, _)| *n == name && *o == ok) {
            Some((_, _, count)) => *count += 1,
            None => self.counted.push((name, ok, 1)),
        }
    }

    fn take(&mut self, core: &StorageCore, view: &mut DraftView<'_>, Job { work, done }: Job) {
        let before = view.changes();
        let (result, path) = match work {
            Work::Request { path, request } => {
                let name = request.name();
                let result = ops::apply(view, &path, request, core.operations());
                self.count(name, result.is_ok());
                (result, Some(path))
            }
            Work::Initialize(initial) => {
                (ops::initialize(view, initial).map(|()| Outcome::Reply(Reply::Done)), None)
            }
            Work::Replicate { path, replica, link, max_per_link } => {
                let start = ReplicaChange::Start { path, replica, link, max_per_link };
                return self.replica_changes.push((start, done));
            }
            Work::Resync { subscription } => {
                return self.replica_changes.push((ReplicaChange::Resync(subscription), done));
            }
            Work::DropReplica { replica, link } => {
                return self.replica_changes.push((ReplicaChange::Stop { replica, link }, done));
            }
            Work::Close => return self.close = Some(done),
        };
        match result {
            Ok(outcome) => {
                let announce = path.filter(|_| view.changes() != before);
                self.staged.push(Staged { announce, outcome, done });
            }
            // Nothing of it reached the draft: it fails alone.
            Err(err) => done.complete(Err(err)),
        }
    }

    /// Settles the answers that depend on the whole round (see [`Outcome::settle`]).
    fn settle(&mut self, view: &DraftView<'_>) {
        for staged in &mut self.staged {
            if matches!(staged.outcome, Outcome::SwapLost { .. }) {
                let outcome = std::mem::replace(&mut staged.outcome, Outcome::Removed(false));
                staged.outcome = outcome.settle(view);
            }
        }
    }

    /// Commits the round's draft, and answers; returns who asked the writer to stop, if anyone
    /// did.
    async fn finish(
        self,
        core: &StorageCore,
        backend: &dyn StorageBackend,
        draft: Draft,
    ) -> Option<Completion> {
        let Round { staged, replica_changes, close, counted } = self;
        for (name, ok, count) in counted {
            crate::metrics::storage_operations(name, ok, count);
        }
        let committed = if draft.is_empty() { Ok(()) } else { commit(core, backend, draft).await };
        match committed {
            Ok(()) => {
                for Staged { announce, outcome, done } in staged {
                    if let Some(path) = announce {
                        core.announce(path);
                    }
                    done.complete(Ok(outcome));
                }
            }
            Err(err) => fail_all(staged, &err),
        }
        for (change, done) in replica_changes {
            let changed = core.replicas().change(&core.committed(), core.version(), change);
            done.complete(changed.map(|()| Outcome::Reply(Reply::Done)));
        }
        close
    }
}

/// Gives the round's batch to the backend, flushes a durable one, and then commits it in memory
/// and sends it to the replicas, before anyone is answered. A batch the backend refused changes
/// nothing; one whose flush failed is in memory as it is in the backend, and its writes fail
/// (they may not be durable).
async fn commit(core: &StorageCore, backend: &dyn StorageBackend, draft: Draft) -> Result<()> {
    let batch = draft.into_batch();
    backend.apply_batch(batch.clone()).await?;
    let flushed = if core.capabilities().durable { backend.flush().await } else { Ok(()) };
    // Cut for the replicas first, so the batch can move into memory whole; sent after it is
    // there, so a worker that hears of a change reads it back from the primary too.
    let version = core.version() + 1;
    let changes = core.replicas().changes_of(&batch);
    core.commit(batch, version);
    core.replicas().publish(&core.jobs(), changes, version);
    flushed
}

/// Answers every operation of a failed commit with that failure.
fn fail_all(staged: Vec<Staged>, err: &Error) {
    for staged in staged {
        // The same failure for each: kind, message and context (the source as text).
        staged.done.complete(Err(Error::from(WireError::from(err))));
    }
}
