//! What a worker does with what the primary sends: commands (each in a task of its own, counted
//! so [`Worker::exit`] can wait for their replies), the shutdown request, pings (answered by the
//! reader itself), storage notices.

use std::sync::Arc;

use clusterfy_core::command::PING_COMMAND;
use clusterfy_core::protocol::{Notice, Reply, Request, RequestId, ShutdownAck};
use clusterfy_core::{Error, ErrorKind, WorkerStatus};
use tokio::sync::watch;

use super::shutdown::{IN_HANDLER, ShutdownReason};
use super::{Worker, WorkerContext, WorkerEvent};
use crate::link::{Inbound, Link};

pub(super) struct WorkerInbound {
    pub(super) worker: Worker,
}

impl WorkerInbound {
    async fn handle(&self, link: &Link, id: RequestId, body: Request) {
        let worker = &self.worker;
        let result = match body {
            Request::Command(command) => {
                let _ = worker
                    .inner
                    .events
                    .send(WorkerEvent::Command { from: command.origin.clone(), name: command.name.clone() });
                let ctx = WorkerContext { worker: worker.clone(), origin: command.origin };
                worker.inner.commands.run(&command.name, command.payload, ctx).await.map(Reply::Command)
            }
            Request::Shutdown => {
                if worker.set_local_status(WorkerStatus::Stopping) != WorkerStatus::Stopping {
                    let _ = link.notify(Notice::Status(WorkerStatus::Stopping)).await;
                }
                let _ = worker.inner.events.send(WorkerEvent::ShutdownRequested);
                // The process ends when the program returns (or calls `exit`), never from here.
                let _ = link.reply(id, Ok(Reply::Shutdown(ShutdownAck::Stopping))).await;
                worker.begin_shutdown(ShutdownReason::Requested);
                return;
            }
            Request::Storage(_) => Err(Error::new(
                ErrorKind::InvalidInput,
                "storage requests go to the primary, which owns the storage; a worker holds none",
            )),
        };
        let _ = link.reply(id, result).await;
    }
}

impl Inbound for WorkerInbound {
    fn on_request(self: Arc<Self>, link: &Arc<Link>, id: RequestId, body: Request) {
        if let Request::Command(command) = &body
            && command.name == PING_COMMAND
        {
            // Answered by the reader itself: a worker whose runtime is blocked stays silent.
            return link.reply_soon(id, Ok(Reply::Command(Vec::new())));
        }
        let link = Arc::clone(link);
        let running = HandlerRunning::start(&self.worker.inner.handlers);
        tokio::spawn(IN_HANDLER.scope((), async move {
            self.handle(&link, id, body).await;
            drop(running);
        }));
    }

    fn on_notice(&self, _: &Arc<Link>, notice: Notice) {
        let storage = &self.worker.inner.storage;
        let mut notice = Some(notice);
        if storage.replicas.on_notice(&mut notice) {
            return;
        }
        let Some(notice) = notice else { return };
        match notice {
            Notice::Error(err) => tracing::error!(error = %Error::from(err), "the primary reported an error"),
            Notice::StorageChanged { path } => match clusterfy_core::Path::parse(&path) {
                // Nobody watching is fine.
                Ok(path) => drop(storage.changes.send(path)),
                Err(err) => tracing::warn!(error = %err, "the primary reported a change at a malformed path"),
            },
            other => tracing::debug!(notice = ?other, "ignoring a notice meant for the primary"),
        }
    }
}

/// Counts one running request handler for as long as it lives (its reply is queued by then).
struct HandlerRunning(watch::Sender<usize>);

impl HandlerRunning {
    fn start(count: &watch::Sender<usize>) -> Self {
        count.send_modify(|n| *n += 1);
        HandlerRunning(count.clone())
    }
}

impl Drop for HandlerRunning {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}
