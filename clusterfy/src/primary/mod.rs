//! The primary: a [`Primary`] forks workers ([`WorkerOptions`], [`Program`]), supervises them
//! ([`RestartPolicy`], [`Heartbeat`]), routes their commands (handled with a
//! [`PrimaryContext`]), owns the storage, and reports on them ([`Statistics`], [`WorkerInfo`],
//! [`LogStream`]).

mod builder;
mod connect;
mod directory;
mod dispatch;
mod group;
mod inbound;
mod inner;
mod limits;
mod logs;
#[cfg(test)]
mod machine_tests;
mod options;
mod reload;
mod restart;
mod sample;
mod scale;
mod signals;
mod slot;
mod spawner;
mod stats;
mod supervisor;
mod usage;
mod watchers;

use std::sync::Arc;
use std::time::Duration;

use clusterfy_core::codec::{from_payload, to_payload};
use clusterfy_core::protocol::{CommandRequest, Destination, Reply, Request, ShutdownAck};
use clusterfy_core::session::Route;
use clusterfy_core::{Command, Error, ErrorKind, Origin, Result, Target, WorkerId, WorkerSelector};

pub use builder::{DEFAULT_READY_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, PrimaryBuilder};
use inner::Control;
pub(crate) use inner::PrimaryInner;
pub use limits::Limits;
pub use logs::{LOG_RING_BYTES, LOG_RING_LINES, LogLine, LogStream, MAX_LOG_LINE};
pub use options::{DEFAULT_HEARTBEAT, Heartbeat, Program, WorkerOptions};
pub use reload::ReloadOptions;
pub use restart::RestartPolicy;
pub use scale::{MAX_GROUP_WORKERS, Scaled};
pub use slot::WorkerState;
pub use stats::{Statistics, WorkerInfo};
pub use usage::DEFAULT_SAMPLE_INTERVAL;

use crate::events::{Event, EventStream, ExitReason, WorkerRef, subscribe};
use crate::handlers::{BroadcastReply, expect_target};
use crate::storage::{SharedStorage, Storage};

/// Default grace period: the time a worker has to exit after a shutdown request before it gets
/// the stop signal.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time a worker has to exit after the stop signal before SIGKILL.
pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(2);

/// The context a primary-side command handler gets.
#[derive(Debug, Clone)]
pub struct PrimaryContext {
    primary: Primary,
    origin: Origin,
}

impl PrimaryContext {
    /// The primary, to reach storage or other workers from a handler.
    pub fn primary(&self) -> &Primary {
        &self.primary
    }

    /// Who sent the command.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }
}

/// Handle of the primary process. Cheap to clone; all clones drive the same cluster.
#[derive(Clone)]
pub struct Primary {
    pub(crate) inner: Arc<PrimaryInner>,
}

impl std::fmt::Debug for Primary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Primary").field("pid", &std::process::id()).finish_non_exhaustive()
    }
}

/// How [`Primary::shutdown_worker`] ended: which step of the stop ladder the worker's exit
/// followed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// The worker exited by itself within the grace period, after the shutdown request.
    Exited(ExitReason),
    /// The worker ignored the request, got the stop signal (SIGTERM unless configured) after the
    /// grace period, and exited within the kill timeout.
    Terminated(ExitReason),
    /// The worker outlived the stop signal's kill timeout and was killed with SIGKILL.
    Killed,
    /// The worker was not running.
    NotRunning,
}

impl Primary {
    /// Starts configuring a primary.
    pub fn builder() -> PrimaryBuilder {
        PrimaryBuilder::new()
    }

    /// Starts a worker process named `name` (the original's `fork`). Returns once the process is
    /// spawned; [`Primary::ready`] waits until it is connected. Names are unique: a second worker
    /// with a name in use is refused.
    pub async fn fork(&self, name: &str, options: WorkerOptions) -> Result<WorkerRef> {
        if name.is_empty() {
            return Err(Error::new(ErrorKind::InvalidInput, "a worker name must not be empty"));
        }
        supervisor::fork(&self.inner, name, options, None).await
    }

    /// Waits until every forked worker is ready (the original's `initAsPrimary`). Fails with
    /// [`ErrorKind::Timeout`] if one is not ready within the ready timeout, and with
    /// [`ErrorKind::WorkerExited`] if one exited for good before it was ever ready.
    pub async fn ready(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.inner.ready_timeout;
        let mut changed = self.inner.changed.subscribe();
        loop {
            let now = tokio::time::Instant::now();
            let (pending, verdict_due) = {
                let directory = self.inner.directory();
                let mut pending = Vec::new();
                // A worker still connecting past its supervisor's deadline is about to be
                // judged there (did not connect, or a handshake begun and not finished): that
                // verdict, not this call's own deadline, says why it is not ready.
                let mut verdict_due = false;
                for slot in directory.slots() {
                    if !slot.readiness()? {
                        pending.push(slot.worker().clone());
                        verdict_due |= slot.connect_verdict_due(now);
                    }
                }
                (pending, verdict_due)
            };
            let Some(first) = pending.first() else {
                return Ok(());
            };
            if verdict_due {
                // The verdict changes the slot; the supervisor's timer has fired already.
                let _ = changed.changed().await;
                continue;
            }
            if now < deadline {
                // Woken by a change or by the deadline: either way, look again first.
                let _ = tokio::time::timeout_at(deadline, changed.changed()).await;
            } else {
                let names: Vec<&str> = pending.iter().map(|w| w.name.as_str()).collect();
                let found = self.inner.directory().get(first.id).and_then(|s| s.connect_failure().cloned());
                let err = match found {
                    Some(failure) if failure.kind() == ErrorKind::Timeout => {
                        Error::new(ErrorKind::Timeout, failure.message().to_owned())
                    }
                    _ => connect::not_connected_in_time(self.inner.ready_timeout),
                };
                return Err(err.with_context("worker", first).with_context("not_ready", names.join(", ")));
            }
        }
    }

    /// A stream of the cluster's events (the original's `events`). A subscriber that falls
    /// behind gets [`Event::Lagged`] and never slows the primary down.
    pub fn events(&self) -> EventStream {
        subscribe(self.inner.events.subscribe(), |missed| Event::Lagged { missed })
    }

    /// The workers, in id order (the original's `workers`).
    pub fn workers(&self) -> Vec<WorkerInfo> {
        let directory = self.inner.directory();
        directory.slots().map(|s| WorkerInfo::of(s, directory.groups().group_of(&s.worker().name))).collect()
    }

    /// Typed access to the shared storage (the original's `storage`).
    pub fn storage(&self) -> Storage {
        Storage::local(Arc::clone(&self.inner.storage))
    }

    /// The storage with its tree operations on [`Value`]s, for direct use on the primary.
    ///
    /// [`Value`]: clusterfy_core::Value
    pub fn shared_storage(&self) -> &Arc<SharedStorage> {
        &self.inner.storage
    }

    /// Runs command `C` on one worker, chosen by id or name (the original's `runIPCCommand`).
    /// Fails at once with [`ErrorKind::WorkerExited`] if the worker dies before answering.
    pub async fn run<C: Command>(&self, worker: impl Into<WorkerSelector>, command: C) -> Result<C::Reply> {
        expect_target::<C>(Target::Worker)?;
        let selector = worker.into();
        let target = self.inner.find(&selector).map_err(|e| e.with_context("command", C::NAME))?;
        let request = CommandRequest {
            name: C::NAME.to_owned(),
            destination: Destination::Here,
            origin: Origin::Primary,
            payload: to_payload(&command)?,
        };
        self.inner.emit_with(|| Event::Command {
            from: Origin::Primary,
            name: C::NAME.to_owned(),
            to: target.name.clone(),
        });
        let payload = self.inner.command_to_worker(target.id, request).await?;
        from_payload(&payload).map_err(|e| e.with_context("command", C::NAME))
    }

    /// Runs command `C` on every connected worker and gathers every answer, in id order.
    pub async fn broadcast<C: Command>(&self, command: C) -> Result<Vec<BroadcastReply<C::Reply>>> {
        let Route::Broadcast(ids) = self.inner.route(&Destination::AllWorkers)? else {
            return Err(Error::new(ErrorKind::Protocol, "broadcast did not route to workers"));
        };
        self.broadcast_to(ids, "all workers".to_owned(), command).await
    }

    /// Runs command `C` on workers `ids` (called `to` in the event) and gathers every answer.
    async fn broadcast_to<C: Command>(
        &self,
        ids: Vec<WorkerId>,
        to: String,
        command: C,
    ) -> Result<Vec<BroadcastReply<C::Reply>>> {
        expect_target::<C>(Target::Worker)?;
        self.inner.emit_with(|| Event::Command { from: Origin::Primary, name: C::NAME.to_owned(), to });
        let request = CommandRequest {
            name: C::NAME.to_owned(),
            destination: Destination::Here,
            origin: Origin::Primary,
            payload: to_payload(&command)?,
        };
        let replies = self.inner.fan_out(ids, request).await;
        Ok(replies
            .into_iter()
            .map(|(worker, result)| BroadcastReply {
                worker,
                result: result.and_then(|p| from_payload(&p).map_err(|e| e.with_context("command", C::NAME))),
            })
            .collect())
    }

    /// Shuts one worker down gracefully (the original's `shutdownWorker`), by the stop ladder:
    ///
    /// 1. the cooperative request, `cy_shutdown`: the worker turns Stopping, runs its shutdown
    ///    hooks and [`Worker::shutdown_requested`](crate::Worker::shutdown_requested) resolves,
    ///    so its program finishes what it serves and returns;
    /// 2. after the grace period `timeout`, the stop signal
    ///    ([`PrimaryBuilder::stop_signal`], SIGTERM by default);
    /// 3. after the kill timeout ([`PrimaryBuilder::kill_timeout`], default
    ///    [`DEFAULT_KILL_TIMEOUT`]), SIGKILL.
    ///
    /// The [`ShutdownOutcome`] says which step ended it. For comparison: pm2 sends SIGINT and
    /// kills after 1.6 s; systemd sends SIGTERM and kills after 90 s. Clusterfy asks first (its
    /// workers can stop accepting and drain), so the defaults are 2 s of grace, SIGTERM, 2 s,
    /// SIGKILL.
    pub async fn shutdown_worker(
        &self,
        worker: impl Into<WorkerSelector>,
        timeout: Duration,
    ) -> Result<ShutdownOutcome> {
        let target = self.inner.find(&worker.into())?;
        let deadline = tokio::time::Instant::now() + timeout;
        // A worker waiting to be revived stays down: its slot knows it was asked to stop.
        let stop = self.inner.change(|d| d.ask_stop(target.id));
        // Running or waiting to be revived, it gets no new connection from now on.
        self.inner.stopping(&target);
        let Some(slot::StopTarget { incarnation, link, control }) = stop else {
            return Ok(ShutdownOutcome::NotRunning);
        };
        if let Some(link) = link {
            // The answer only tells whether the worker exits now or later; either way the exit
            // below is what counts, so a failed request just means waiting for the deadline.
            let ask = tokio::time::timeout_at(deadline, link.request(Request::Shutdown, timeout));
            match ask.await {
                Ok(Ok(Reply::Shutdown(ShutdownAck::Stopping))) => {
                    tracing::debug!(worker = %target, "busy worker turned Stopping");
                }
                Ok(Ok(_)) => {}
                Ok(Err(err)) => {
                    tracing::debug!(worker = %target, error = %err, "shutdown request not answered")
                }
                Err(_) => {}
            }
        }
        if let Ok(reason) = tokio::time::timeout_at(deadline, self.wait_exit(target.id, incarnation)).await {
            return Ok(ShutdownOutcome::Exited(reason));
        }
        let _ = control.send(Control::Signal(self.inner.stop_signal, incarnation));
        let terminated =
            tokio::time::timeout(self.inner.kill_timeout, self.wait_exit(target.id, incarnation));
        if let Ok(reason) = terminated.await {
            return Ok(ShutdownOutcome::Terminated(reason));
        }
        let _ = control.send(Control::Signal(nix::sys::signal::Signal::SIGKILL, incarnation));
        // SIGKILL cannot be ignored, so this wait is short; the bound only guards against a
        // process stuck in the kernel.
        match tokio::time::timeout(Duration::from_secs(10), self.wait_exit(target.id, incarnation)).await {
            Ok(_) => Ok(ShutdownOutcome::Killed),
            Err(_) => Err(Error::new(ErrorKind::Timeout, "worker did not die within 10 s of SIGKILL")
                .with_context("worker", &target)),
        }
    }

    /// Waits until the process `incarnation` of worker `id` has exited.
    async fn wait_exit(&self, id: WorkerId, incarnation: u64) -> ExitReason {
        let mut changed = self.inner.changed.subscribe();
        loop {
            {
                let directory = self.inner.directory();
                match directory.get(id) {
                    None => return ExitReason::Code(-1),
                    Some(slot) => {
                        if slot.process_ended(incarnation) {
                            return slot.last_exit().unwrap_or(ExitReason::Code(-1));
                        }
                    }
                }
            }
            if changed.changed().await.is_err() {
                return ExitReason::Code(-1);
            }
        }
    }

    /// Shuts every worker down in parallel (as [`Primary::shutdown_worker`] with `timeout`),
    /// refuses new forks, closes the storage once every write queued is committed (later writes
    /// fail; reads still answer; dropping the primary then lets go of the backend at once) and
    /// removes the transport's files. Returns each worker's outcome.
    pub async fn shutdown(&self, timeout: Duration) -> Result<Vec<(WorkerRef, ShutdownOutcome)>> {
        let workers = self.inner.change(|d| d.begin_shutdown());
        let outcomes = futures::future::join_all(workers.into_iter().map(|w| async move {
            let outcome = match self.shutdown_worker(w.id, timeout).await {
                // Its record left since it was listed (a replaced worker its reload stopped).
                Err(err) if err.kind() == ErrorKind::UnknownWorker => Ok(ShutdownOutcome::NotRunning),
                other => other,
            };
            (w, outcome)
        }))
        .await;
        self.inner.listeners.close();
        if let Some(control) = self.inner.control.get() {
            control.close();
        }
        self.inner.storage.close().await;
        self.inner.transport.close()?;
        let mut result = Vec::with_capacity(outcomes.len());
        for (worker, outcome) in outcomes {
            result.push((worker, outcome?));
        }
        Ok(result)
    }

    /// The address the shared listener `name` accepts on, with the port the system chose when
    /// it was bound at port 0; `None` if there is no such listener.
    pub fn listener_addr(&self, name: &str) -> Option<crate::listen::ListenAddr> {
        self.inner.listeners.address(name)
    }

    /// Statistics about the workers (the original's `getStatistics`).
    pub fn statistics(&self) -> Statistics {
        Statistics::new(self.workers())
    }

    /// Prints [`Primary::statistics`] as a table on stdout (the original's
    /// `outputStatisticsTable`).
    pub fn print_statistics(&self) {
        println!("{}", self.statistics().table());
    }
}
