//! What the primary does with a worker's requests and notices.

use std::sync::Arc;

use clusterfy_core::protocol::{
    BroadcastEntry, CommandRequest, Destination, Notice, Reply, Request, RequestId, StorageRequest,
};
use clusterfy_core::session::Route;
use clusterfy_core::{Error, ErrorKind, Origin, Path, Result, WireError, WorkerId};

use super::slot::Input;
use super::{Primary, PrimaryContext, PrimaryInner};
use crate::events::{Event, WorkerRef};
use crate::link::{Inbound, Link};
use crate::storage::StorageSession;

pub(super) struct PrimaryInbound {
    inner: Arc<PrimaryInner>,
    worker: WorkerRef,
    storage: StorageSession,
}

impl PrimaryInbound {
    pub(super) fn new(inner: Arc<PrimaryInner>, worker: WorkerRef) -> Self {
        let storage = StorageSession::new(Arc::clone(&inner.storage), inner.limits.replicas_per_worker);
        PrimaryInbound { inner, worker, storage }
    }

    fn origin(&self) -> Origin {
        Origin::Worker { id: self.worker.id, name: self.worker.name.clone() }
    }

    async fn handle(&self, body: Request) -> Result<Reply> {
        match body {
            // Taken without a task of their own, in `on_request`.
            Request::Storage(_) => {
                Err(Error::new(ErrorKind::InvalidState, "a storage request reached a handler task"))
            }
            Request::Command(command) => self.route_command(command).await,
            Request::Shutdown => Err(Error::new(
                ErrorKind::InvalidInput,
                "cy_shutdown goes from the primary to a worker; a worker ends itself with Worker::exit",
            )),
        }
    }

    /// A watch belongs to this connection: registered here, answered at once.
    fn watch(&self, path: &str) -> Result<Reply> {
        let path = Path::parse(path)?;
        // This connection's reader alone adds its watches, so the count cannot change meanwhile.
        let max = self.inner.limits.watches_per_worker;
        let held = self
            .inner
            .directory()
            .get(self.worker.id)
            .map(|s| (s.watches().len(), s.watches().contains(&path)));
        if let Some((held, false)) = held
            && held >= max
        {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "this worker watches {held} paths already, the most Limits::watches_per_worker allows; \
                     watch a common parent path instead, or raise the limit"
                ),
            )
            .with_context("path", path.as_str()));
        }
        self.inner.watch_dispatch.call_once(|| super::watchers::dispatch_changes(&self.inner));
        self.inner.apply(self.worker.id, Input::Watched(path));
        Ok(Reply::Done)
    }

    async fn route_command(&self, mut command: CommandRequest) -> Result<Reply> {
        // The sender is who the connection says, whatever the frame claims.
        command.origin = self.origin();
        let route = self.inner.route(&command.destination)?;
        self.inner.emit_with(|| {
            let to = destination_name(&route, |id| self.inner.name_of(id));
            Event::Command { from: command.origin.clone(), name: command.name.clone(), to }
        });
        match route {
            Route::Primary => {
                let ctx = PrimaryContext {
                    primary: Primary { inner: Arc::clone(&self.inner) },
                    origin: command.origin,
                };
                let result = self.inner.commands.run(&command.name, command.payload, ctx).await;
                crate::metrics::command(&command.name, result.is_ok());
                result.map(Reply::Command)
            }
            Route::Worker(id) => {
                command.destination = Destination::Here;
                self.inner.command_to_worker(id, command).await.map(Reply::Command)
            }
            Route::Broadcast(ids) => {
                command.destination = Destination::Here;
                let replies = self.inner.fan_out(ids, command).await;
                Ok(Reply::Broadcast(
                    replies
                        .into_iter()
                        .map(|(worker, result)| BroadcastEntry {
                            worker_id: worker.id,
                            name: worker.name,
                            result: result.map_err(|e| WireError::from(&e)),
                        })
                        .collect(),
                ))
            }
        }
    }
}

/// Where a routed command goes, as [`Event::Command`]'s `to` tells it: `"primary"`, the worker's
/// name (whether the sender chose the worker by id or by name), or `"all workers"`.
fn destination_name(route: &Route, name_of: impl FnOnce(WorkerId) -> Option<String>) -> String {
    match route {
        Route::Primary => "primary".to_owned(),
        Route::Broadcast(_) => "all workers".to_owned(),
        // The route was just found in the directory, and a slot that ever connected is never
        // removed, so the name is there; the id is only a stand-in that cannot happen.
        Route::Worker(id) => name_of(*id).unwrap_or_else(|| format!("#{id}")),
    }
}

impl Inbound for PrimaryInbound {
    fn on_request(self: Arc<Self>, link: &Arc<Link>, id: RequestId, body: Request) {
        match body {
            Request::Storage(StorageRequest::Watch { path }) => link.reply_soon(id, self.watch(&path)),
            Request::Storage(request) => self.storage.serve(link, id, request),
            // Command handlers run concurrently, so a slow one never stalls the connection.
            body => {
                let link = Arc::clone(link);
                tokio::spawn(async move {
                    let result = self.handle(body).await;
                    // A failed reply means the worker is gone; its supervisor reports that.
                    let _ = link.reply(id, result).await;
                });
            }
        }
    }

    fn on_notice(&self, link: &Arc<Link>, notice: Notice) {
        let worker = self.worker.clone();
        match notice {
            Notice::ReplicaDropped { replica } => self.storage.replica_dropped(link, replica),
            Notice::Status(status) => drop(self.inner.apply(worker.id, Input::StatusReported(status))),
            Notice::Ready => drop(self.inner.apply(worker.id, Input::ReadyReported)),
            Notice::StorageChanged { .. }
            | Notice::ReplicaChanged { .. }
            | Notice::ReplicaLagged { .. }
            | Notice::ReplicaReset(_)
            | Notice::ReplicaFailed { .. } => {
                tracing::debug!(worker = %worker, "ignoring a storage notice, which only the primary sends");
            }
            Notice::Error(err) => {
                self.inner.emit(Event::Error { worker: Some(worker), error: Arc::new(Error::from(err)) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_to_one_worker_names_the_worker_by_its_name() {
        let names = |id: WorkerId| (id == WorkerId(2)).then(|| "w2".to_owned());
        // Whether the sender chose it as `WorkerSelector::Id(2)` or `Name("w2")`, the route is the same.
        assert_eq!(destination_name(&Route::Worker(WorkerId(2)), names), "w2");
        assert_eq!(destination_name(&Route::Primary, names), "primary");
        assert_eq!(destination_name(&Route::Broadcast(vec![WorkerId(1), WorkerId(2)]), names), "all workers");
    }
}
