//! What goes into the storage writer's queue: a piece of work, and who hears its outcome.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use clusterfy_core::protocol::{RequestId, StorageRequest};
use clusterfy_core::{Path, Result, Value};
use tokio::sync::oneshot;

use super::ops::Outcome;
use crate::link::Link;

/// What the writer does for a caller.
pub(crate) enum Work {
    /// A storage request, its path taken out and checked.
    Request { path: Path, request: StorageRequest },
    /// [`SharedStorage::initialize`](super::SharedStorage::initialize).
    Initialize(Value),
    /// Start replica `replica` of the branch at `path` for `link`: its snapshot, then every
    /// commit's changes.
    Replicate { path: Path, replica: u64, link: Weak<Link>, max_per_link: usize },
    /// Send a lagging replica its branch again, now that its link has room.
    Resync { subscription: u64 },
    /// Forget replica `replica` of `link`: its worker dropped it.
    DropReplica { replica: u64, link: Weak<Link> },
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
            Work::DropReplica { replica, .. } => write!(f, "drop replica #{replica}"),
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
