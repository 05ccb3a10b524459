//! The writer task of a [`SharedStorage`](super::SharedStorage): it takes every write (and the
//! reads that must follow a worker's own writes) in arrival order, runs each operation on the
//! draft of its round (so each sees the ones before it, and one that fails changes nothing and
//! fails alone), and commits the round: one backend batch with every touched key once, at most
//! one flush, then the committed tree in memory, the replicas, and the answers. Write combining
//! at the tree level, and group commit for durable backends.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use clusterfy_core::protocol::{Reply, RequestId, StorageRequest};
use clusterfy_core::{Error, Path, Result, Value, WireError};
use tokio::sync::{mpsc, oneshot};

use super::core::StorageCore;
use super::ops::{self, Outcome};
use super::replicas::Subscribe;
use super::state::{Draft, DraftView};
use crate::link::Link;

/// Most jobs taken in one round: enough to batch hundreds of writes in flight, few enough that a
/// round's replies do not wait long.
const ROUND_JOBS: usize = 1024;

/// What the writer does for a caller.
pub(crate) enum Work {
    /// A storage request, its path taken out and checked.
    Request { path: Path, request: StorageRequest },
    /// [`SharedStorage::initialize`](super::SharedStorage::initialize).
    Initialize(Value),
    /// Start replica `replica` of the branch at `path` for `link`: its snapshot, then every
    /// commit's changes.
    Replicate { path: Path, replica: u64, link: Weak<Link> },
    /// Send a lagging replica its branch again, now that its link has room.
    Resync { subscription: u64 },
    /// Stop, after everything queued before: let go of the backend, then answer.
    Close,
}

impl fmt::Debug for Work {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Work::Request { path, request } => write!(f, "{} {path}", request.name()),
            Work::Initialize(_) => f.write_str("initialize"),
            Work::Replicate { path, replica, .. } => write!(f, "replicate {path} as #{replica}"),
            Work::Resync { subscription } => write!(f, "resync #{subscription}"),
            Work::Close => f.write_str("close"),
        }
    }
}

/// Who hears the outcome of one job, once: a worker's request, answered on its link, or a local
/// caller waiting on a channel. An enum rather than a boxed closure: no allocation per job.
pub(crate) enum Completion {
    /// Answer request `id` of the peer on `link`; `pending` counts that peer's writes not yet
    /// answered, and loses this one when it is.
    Reply { link: Arc<Link>, id: RequestId, pending: Option<Arc<AtomicUsize>> },
    /// A caller in this process.
    Local(oneshot::Sender<Result<Outcome>>),
    /// Nobody waits (the storage's own work).
    Nobody,
}

impl Completion {
    pub(crate) fn complete(self, outcome: Result<Outcome>) {
        match self {
            Completion::Reply { link, id, pending } => {
                if let Some(pending) = pending {
                    pending.fetch_sub(1, Ordering::AcqRel);
                }
                link.reply_soon(id, outcome.map(Outcome::into_reply));
            }
            // A caller that stopped waiting misses nothing it could act on.
            Completion::Local(waiting) => drop(waiting.send(outcome)),
            Completion::Nobody => {}
        }
    }
}

/// One job for the writer.
pub(crate) struct Job {
    pub(crate) work: Work,
    pub(crate) done: Completion,
}

/// Takes jobs until every sender is gone. Holds the core only while it works on a round, so a
/// dropped storage lets go of its backend at once (a sled directory can be opened again).
pub(super) async fn run(core: Weak<StorageCore>, mut jobs: mpsc::UnboundedReceiver<Job>) {
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
        }
        if let Some(closed) = round.finish(&core, draft).await {
            drop(core);
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
    /// Replicas to start or resync once the round is committed.
    subscribe: Vec<(Subscribe, Completion)>,
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
            Work::Replicate { path, replica, link } => {
                return self.subscribe.push((Subscribe::Start { path, replica, link }, done));
            }
            Work::Resync { subscription } => {
                return self.subscribe.push((Subscribe::Resync(subscription), done));
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

    /// Commits the round's draft, and answers; returns who asked the writer to stop, if anyone
    /// did.
    async fn finish(self, core: &StorageCore, draft: Draft) -> Option<Completion> {
        let Round { staged, subscribe, close, counted } = self;
        for (name, ok, count) in counted {
            crate::metrics::storage_operations(name, ok, count);
        }
        let committed = if draft.is_empty() { Ok(()) } else { commit(core, draft).await };
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
        for (subscribe, done) in subscribe {
            core.replicas().subscribe(core, subscribe);
            done.complete(Ok(Outcome::Reply(Reply::Done)));
        }
        close
    }
}

/// Gives the round's batch to the backend, flushes a durable one, and then commits it in memory
/// and sends it to the replicas, before anyone is answered. A batch the backend refused changes
/// nothing; one whose flush failed is in memory as it is in the backend, and its writes fail
/// (they may not be durable).
async fn commit(core: &StorageCore, draft: Draft) -> Result<()> {
    let batch = draft.into_batch();
    core.backend().apply_batch(batch.clone()).await?;
    let flushed = if core.durable() { core.backend().flush().await } else { Ok(()) };
    // Cut for the replicas first, so the batch can move into memory whole; sent after it is
    // there, so a worker that hears of a change reads it back from the primary too.
    let version = core.version() + 1;
    let changes = core.replicas().changes_of(&batch);
    core.commit(batch, version);
    core.replicas().publish(core, changes, version);
    flushed
}

/// Answers every operation of a failed commit with that failure.
fn fail_all(staged: Vec<Staged>, err: &Error) {
    for staged in staged {
        // The same failure for each: kind, message and context (the source as text).
        staged.done.complete(Err(Error::from(WireError::from(err))));
    }
}
