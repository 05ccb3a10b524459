//! Events the primary and workers publish, as `futures` streams.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::Signal;
use clusterfy_core::{Error, Origin, StorageNotice, WorkerId, WorkerStatus};
use futures::Stream;
use tokio::sync::broadcast;

/// Events buffered per subscriber; a subscriber further behind gets [`Event::Lagged`] instead of
/// slowing the primary down.
pub(crate) const EVENT_BUFFER: usize = 1024;

/// Names one worker in events and statistics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct WorkerRef {
    /// The id, stable across revivals.
    pub id: WorkerId,
    /// The unique name.
    pub name: String,
}

impl fmt::Display for WorkerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (#{})", self.name, self.id)
    }
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitReason {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it ([`Signal::KILL`], say).
    Signal(Signal),
}

impl ExitReason {
    /// Whether this is an ordinary exit (code 0). Anything else counts as a crash for revival.
    pub fn is_success(self) -> bool {
        self == ExitReason::Code(0)
    }

    pub(crate) fn from_status(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitReason::Code(code),
            (None, Some(signal)) => ExitReason::Signal(Signal::from_raw(signal)),
            // Neither code nor signal only happens for stopped/continued states, which `wait` does
            // not report; treat it as a crash rather than inventing success.
            (None, None) => ExitReason::Code(-1),
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Code(code) => write!(f, "exit code {code}"),
            ExitReason::Signal(signal) => write!(f, "{signal}"),
        }
    }
}

/// What made the primary give up on a worker ([`Event::GaveUp`]).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpCause {
    /// It crashed too often.
    Crashes,
    /// Its replacements outgrew its memory limit too often: the limit is below what the program
    /// needs, so replacing it again would not help. Raise
    /// [`WorkerOptions::max_memory`](crate::primary::WorkerOptions::max_memory) or find the leak.
    MemoryLimit {
        /// The resident memory of the last process, in bytes.
        rss: u64,
        /// Its limit, in bytes.
        limit: u64,
    },
}

impl fmt::Display for GiveUpCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GiveUpCause::Crashes => f.write_str("it crashed too often"),
            GiveUpCause::MemoryLimit { rss, limit } => write!(
                f,
                "it kept outgrowing its memory limit ({rss} bytes resident, limit {limit}): the limit is below \
                 what the program needs; raise max_memory or find the leak"
            ),
        }
    }
}

/// Something that happened in the cluster, as seen by the primary.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum Event {
    /// A worker process was spawned.
    Forked {
        /// The worker.
        worker: WorkerRef,
        /// Its process id.
        pid: u32,
    },
    /// A worker connected and passed the handshake.
    Online {
        /// The worker.
        worker: WorkerRef,
    },
    /// A worker finished connecting and is ready for work.
    Ready {
        /// The worker.
        worker: WorkerRef,
    },
    /// A worker's status changed.
    Status {
        /// The worker.
        worker: WorkerRef,
        /// The new status.
        status: WorkerStatus,
    },
    /// A worker's connection ended.
    Disconnect {
        /// The worker.
        worker: WorkerRef,
    },
    /// A worker process ended.
    Exit {
        /// The worker.
        worker: WorkerRef,
        /// How.
        reason: ExitReason,
    },
    /// A crashed worker was started again.
    Revived {
        /// The worker.
        worker: WorkerRef,
        /// Restarts of this worker so far, this one included.
        restarts: u32,
    },
    /// A worker needed restarting too often (it crashed, or outgrew its memory limit, more often
    /// than its [`RestartPolicy`](crate::primary::RestartPolicy) allows) and is not started again.
    GaveUp {
        /// The worker.
        worker: WorkerRef,
        /// Restarts done before giving up.
        restarts: u32,
        /// What kept making it restart.
        cause: GiveUpCause,
    },
    /// A command passed through the primary.
    Command {
        /// Who sent it.
        from: Origin,
        /// The command's name.
        name: String,
        /// Where it went: `"primary"`, the receiving worker's name (its [`WorkerRef::name`], also
        /// when the sender chose the worker by id), or `"all workers"` for a broadcast.
        to: String,
    },
    /// Something went wrong that no caller sees directly (a refused connection, a protocol error).
    Error {
        /// The worker concerned, if any.
        worker: Option<WorkerRef>,
        /// What happened.
        error: Arc<Error>,
    },
    /// This subscriber fell behind and missed this many events.
    Lagged {
        /// How many events were dropped for this subscriber.
        missed: u64,
    },
    /// The storage backend reported something (an outage, an overflowing queue, a resync).
    Storage {
        /// What it reported.
        notice: StorageNotice,
    },
    /// A worker did not answer a heartbeat ping in time; it is killed and restarted under its
    /// policy.
    Unresponsive {
        /// The worker.
        worker: WorkerRef,
        /// How long its last ping went unanswered.
        waited: Duration,
    },
    /// A worker's resident memory passed its
    /// [`WorkerOptions::max_memory`](crate::primary::WorkerOptions::max_memory); it is replaced.
    MemoryLimit {
        /// The worker.
        worker: WorkerRef,
        /// Its resident memory when sampled, in bytes.
        rss: u64,
        /// Its limit, in bytes.
        limit: u64,
    },
    /// A new worker process took over from an old one (a reload, or a memory limit): the new one
    /// is ready and has the name, and the old one is being stopped gracefully.
    Replaced {
        /// The worker stopped.
        old: WorkerRef,
        /// The worker that took its name (a new id).
        new: WorkerRef,
    },
    /// A replacement (by a reload, a restart or the memory limit) failed to get ready: the old
    /// worker keeps serving, and a reload stops there.
    ReloadFailed {
        /// The worker that was to be replaced (still running).
        worker: WorkerRef,
        /// Why the replacement failed.
        error: Arc<Error>,
    },
}

/// A stream of events; ends when the publisher is gone.
pub type EventStream<E = Event> = Pin<Box<dyn Stream<Item = E> + Send>>;

/// Turns a broadcast receiver into a stream that reports lag with `lagged(missed)`.
pub(crate) fn subscribe<E: Clone + Send + 'static>(
    receiver: broadcast::Receiver<E>,
    lagged: fn(u64) -> E,
) -> EventStream<E> {
    Box::pin(futures::stream::unfold(receiver, move |mut receiver| async move {
        match receiver.recv().await {
            Ok(event) => Some((event, receiver)),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some((lagged(missed), receiver)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }))
}
