//! How a worker ends: the shutdown the primary asks for, the primary's disappearance, or
//! [`Worker::exit`]; the hooks run once, then the program returns (or the process exits).

use std::time::Duration;

use clusterfy_core::WorkerStatus;
use clusterfy_core::protocol::Notice;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::Worker;
use crate::link::LinkEnd;

/// Longest time shutdown hooks may take together; after it the shutdown goes on without them.
pub const SHUTDOWN_HOOKS_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time [`Worker::exit`] waits for running command handlers to reply.
const EXIT_WAITS_FOR_HANDLERS: Duration = Duration::from_secs(10);

tokio::task_local! {
    /// Set while a command handler runs, so [`Worker::exit`] knows it must return for the
    /// handler's reply to go out.
    pub(super) static IN_HANDLER: ();
}

/// Why a worker is shutting down, as told to its shutdown hooks.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownReason {
    /// The primary asked (`cy_shutdown`, from `Primary::shutdown_worker` or a cluster shutdown).
    Requested,
    /// The connection to the primary ended: the primary exited or died.
    PrimaryGone,
    /// The worker program called [`Worker::exit`] with this code.
    Exit(i32),
}

pub(super) type ShutdownHook = Box<dyn FnOnce(ShutdownReason) -> BoxFuture<'static, ()> + Send>;

/// Where this worker's shutdown stands.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ShutdownState {
    /// Why it began; `None` while the worker runs normally.
    pub(super) reason: Option<ShutdownReason>,
    /// The shutdown hooks have run (or timed out).
    pub(super) hooks_done: bool,
}

pub(super) async fn shut_down_when_primary_is_gone(worker: Worker, reader: tokio::task::JoinHandle<LinkEnd>) {
    let end = reader.await;
    tracing::warn!(worker = %worker.inner.me, end = ?end, "connection to the primary ended; shutting down");
    worker.inner.storage.replicas.close_all();
    worker.set_local_status(WorkerStatus::Stopping);
    worker.begin_shutdown(ShutdownReason::PrimaryGone);
}

impl Worker {
    /// Whether this worker's shutdown has begun: the primary asked, the primary is gone, or
    /// [`Worker::exit`] was called.
    pub fn is_shutdown_requested(&self) -> bool {
        self.inner.shutdown.borrow().reason.is_some()
    }

    /// Why this worker's shutdown began, once it has.
    pub fn shutdown_reason(&self) -> Option<ShutdownReason> {
        self.inner.shutdown.borrow().reason
    }

    /// Resolves once this worker's shutdown has begun (the primary asked, or the primary is gone)
    /// and its shutdown hooks have run. Return from `main` then: the process ends with every
    /// destructor run, and the primary sees a clean exit. A worker that does not end within the
    /// primary's grace period gets its stop signal (SIGTERM), then SIGKILL. After [`Worker::exit`] it never resolves: that call
    /// ends the process with its own code.
    pub async fn shutdown_requested(&self) {
        self.wait_shutdown(|state| {
            state.hooks_done && !matches!(state.reason, Some(ShutdownReason::Exit(_)))
        })
        .await;
    }

    async fn wait_shutdown(&self, until: impl FnMut(&ShutdownState) -> bool) {
        let mut rx = self.inner.shutdown.subscribe();
        // The sender lives as long as `self`, so this ends only when `until` holds.
        let _ = rx.wait_for(until).await;
    }

    /// Begins the shutdown for `reason` unless it has begun already: runs the hooks in a task
    /// of their own, then wakes [`Worker::shutdown_requested`].
    pub(super) fn begin_shutdown(&self, reason: ShutdownReason) {
        let first = self.inner.shutdown.send_if_modified(|state| {
            let first = state.reason.is_none();
            if first {
                state.reason = Some(reason);
            }
            first
        });
        if first {
            let worker = self.clone();
            tokio::spawn(async move {
                worker.run_hooks(reason).await;
                worker.inner.shutdown.send_modify(|state| state.hooks_done = true);
            });
        }
    }

    async fn run_hooks(&self, reason: ShutdownReason) {
        let hooks: Vec<ShutdownHook> =
            std::mem::take(&mut *self.inner.hooks.lock().unwrap_or_else(|p| p.into_inner()));
        let all = async {
            for hook in hooks {
                if std::panic::AssertUnwindSafe(hook(reason)).catch_unwind().await.is_err() {
                    tracing::error!("a shutdown hook panicked");
                }
            }
        };
        if tokio::time::timeout(SHUTDOWN_HOOKS_TIMEOUT, all).await.is_err() {
            tracing::warn!(
                "shutdown hooks did not finish within {SHUTDOWN_HOOKS_TIMEOUT:?}; going on without them"
            );
        }
    }

    /// Ends this worker process with `code` (the original's `exit`): runs the shutdown hooks
    /// (unless they ran already), waits until every running command handler has replied, tells
    /// the primary, and exits.
    ///
    /// Called from a command handler, it returns at once so the handler can finish: the caller
    /// of that command still gets its reply, and the process exits right after. Called anywhere
    /// else, it does not return.
    pub async fn exit(&self, code: i32) {
        let worker = self.clone();
        tokio::spawn(async move { worker.finish(code).await });
        if IN_HANDLER.try_with(|()| ()).is_err() {
            std::future::pending::<()>().await;
        }
    }

    async fn finish(&self, code: i32) -> ! {
        self.begin_shutdown(ShutdownReason::Exit(code));
        self.wait_shutdown(|state| state.hooks_done).await;
        let mut handlers = self.inner.handlers.subscribe();
        if tokio::time::timeout(EXIT_WAITS_FOR_HANDLERS, handlers.wait_for(|&running| running == 0))
            .await
            .is_err()
        {
            tracing::warn!(
                "command handlers still running after {EXIT_WAITS_FOR_HANDLERS:?}; exiting anyway"
            );
        }
        self.set_local_status(WorkerStatus::Stopping);
        let link = &self.inner.link;
        // Best effort: the primary learns of the exit from the process anyway.
        let _ = link.notify(Notice::Status(WorkerStatus::Stopping)).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), link.flush()).await;
        std::process::exit(code)
    }
}
