//! Commands from the primary to workers: to one worker over its link, or to many at once.

use clusterfy_core::protocol::{CommandRequest, Reply, Request};
use clusterfy_core::{Error, ErrorKind, Result, WorkerId};

use super::PrimaryInner;
use crate::events::WorkerRef;

impl PrimaryInner {
    /// Sends a command to one worker and returns its encoded reply.
    pub(crate) async fn command_to_worker(&self, id: WorkerId, command: CommandRequest) -> Result<Vec<u8>> {
        let (worker, link) = self.link_of(id)?;
        let name = command.name.clone();
        let answer = link.request(Request::Command(command), self.request_timeout).await;
        crate::metrics::command(&name, matches!(answer, Ok(Reply::Command(_))));
        match answer {
            Ok(Reply::Command(payload)) => Ok(payload),
            Ok(other) => {
                Err(Error::new(ErrorKind::Protocol, format!("unexpected reply to a command: {other:?}")))
            }
            Err(err) => Err(add_command_context(err, &name, &worker)),
        }
    }

    /// Sends `command` to each worker in `ids` at once and gathers every answer, in `ids` order.
    pub(crate) async fn fan_out(
        &self,
        ids: Vec<WorkerId>,
        command: CommandRequest,
    ) -> Vec<(WorkerRef, Result<Vec<u8>>)> {
        let calls = ids.into_iter().map(|id| {
            let command = command.clone();
            async move {
                let name = self.name_of(id).unwrap_or_default();
                let worker = WorkerRef { id, name };
                let result = self.command_to_worker(id, command).await;
                (worker, result)
            }
        });
        futures::future::join_all(calls).await
    }
}

fn add_command_context(err: Error, command: &str, worker: &WorkerRef) -> Error {
    let err = if err.context_value("command").is_none() { err.with_context("command", command) } else { err };
    if err.context_value("worker").is_none() { err.with_context("worker", worker) } else { err }
}
