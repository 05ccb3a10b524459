//! The primary: forks workers, supervises them, routes their commands and owns the storage.

mod inbound;

#[cfg(test)]
pub(crate) use inbound::serve_storage;
mod options;
mod restart;
mod signals;
mod spawner;
mod stats;
mod supervisor;
mod watchers;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clusterfy_core::codec::{DEFAULT_MAX_FRAME_LEN, from_payload, to_payload};
use clusterfy_core::protocol::{CommandRequest, Destination, Reply, Request, ShutdownAck};
use clusterfy_core::session::{Route, RouteEntry, route};
use clusterfy_core::{
    Command, Error, ErrorKind, Origin, Result, StorageBackend, Target, Transport, Value, WorkerId,
    WorkerSelector, WorkerStatus,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use options::{Program, WorkerOptions};
pub use restart::RestartPolicy;
pub use stats::{Statistics, WorkerInfo, WorkerState};

use crate::commands::{BroadcastReply, CommandRegistry, expect_target};
use crate::events::{EVENT_BUFFER, Event, EventStream, ExitReason, WorkerRef, subscribe};
use crate::link::Link;
use crate::storage::{SharedStorage, Storage};

/// Default deadline of a request (storage operation or command).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a worker has from spawn to ready.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Smallest accepted `max_frame_len`: room for any handshake and error notice.
const MIN_MAX_FRAME_LEN: usize = 4096;
/// Default time a worker has to exit after a shutdown request before it is killed.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// The context a primary-side command handler gets.
#[derive(Clone)]
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

/// Builds a [`Primary`].
pub struct PrimaryBuilder {
    transport: Option<Arc<dyn Transport>>,
    storage: Option<Arc<dyn StorageBackend>>,
    initial: Option<Value>,
    commands: CommandRegistry<PrimaryContext>,
    request_timeout: Duration,
    ready_timeout: Duration,
    max_frame_len: usize,
    handle_signals: bool,
}

impl PrimaryBuilder {
    /// Whether SIGINT and SIGTERM shut the cluster down gracefully (default: yes). When one
    /// arrives, every worker is shut down as by [`Primary::shutdown`] with
    /// [`DEFAULT_SHUTDOWN_TIMEOUT`], and the process then exits with 128 + the signal number; a
    /// second signal exits at once. Turn it off to handle signals yourself.
    #[must_use]
    pub fn handle_signals(mut self, handle: bool) -> Self {
        self.handle_signals = handle;
        self
    }

    /// Chooses how workers connect (default: Unix sockets, with feature `transport-uds`).
    #[must_use]
    pub fn transport(mut self, transport: impl Transport) -> Self {
        self.transport = Some(Arc::new(transport));
        self
    }

    /// Chooses where the shared storage lives (default: memory, with feature `storage-mem`).
    #[must_use]
    pub fn storage(mut self, storage: impl StorageBackend) -> Self {
        self.storage = Some(Arc::new(storage));
        self
    }

    /// The storage's content when the backend is empty (the original's `initStorage`). Must be a
    /// map. A durable backend that already holds data keeps it.
    #[must_use]
    pub fn initial_storage(mut self, initial: Value) -> Self {
        self.initial = Some(initial);
        self
    }

    /// Registers the handler of a command that workers send to the primary (the original's
    /// `registerIPCCommand` on the primary). A reserved (`cy_`), duplicate or worker-targeted
    /// name makes [`PrimaryBuilder::build`] fail.
    #[must_use]
    pub fn command<C, F, Fut>(mut self, handler: F) -> Self
    where
        C: Command,
        F: Fn(C, PrimaryContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C::Reply>> + Send + 'static,
    {
        self.commands.register::<C, F, Fut>(handler);
        self
    }

    /// Deadline of every request the primary sends or routes (default
    /// [`DEFAULT_REQUEST_TIMEOUT`]). Workers use their own setting.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Time a worker has from spawn to ready before [`Primary::ready`] fails (default
    /// [`DEFAULT_READY_TIMEOUT`]).
    #[must_use]
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Largest frame accepted or sent (default 16 MiB; at least 4 KiB, below 4 GiB).
    #[must_use]
    pub fn max_frame_len(mut self, bytes: usize) -> Self {
        self.max_frame_len = bytes;
        self
    }

    /// Checks the configuration, prepares the storage and returns the primary.
    pub async fn build(mut self) -> Result<Primary> {
        if let Some(err) = self.commands.take_error() {
            return Err(err);
        }
        if !(MIN_MAX_FRAME_LEN..=u32::MAX as usize).contains(&self.max_frame_len) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "max_frame_len {} is out of range: it must be at least {MIN_MAX_FRAME_LEN} bytes and below 4 GiB",
                    self.max_frame_len
                ),
            ));
        }
        let transport = match self.transport.take() {
            Some(t) => t,
            None => default_transport()?,
        };
        let backend = match self.storage.take() {
            Some(s) => s,
            None => default_storage()?,
        };
        let storage = Arc::new(SharedStorage::new(backend));
        if let Some(initial) = self.initial.take() {
            storage.initialize(initial).await?;
        }
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (changed, _) = watch::channel(());
        let primary = Primary {
            inner: Arc::new(PrimaryInner {
                transport,
                storage,
                commands: self.commands,
                events,
                changed,
                slots: Mutex::new(BTreeMap::new()),
                next_id: AtomicU64::new(1),
                shutting_down: AtomicBool::new(false),
                request_timeout: self.request_timeout,
                ready_timeout: self.ready_timeout,
                max_frame_len: self.max_frame_len,
                watch_dispatch: std::sync::Once::new(),
            }),
        };
        watchers::forward_backend_notices(&primary.inner);
        if self.handle_signals {
            signals::shut_down_on_signals(Arc::downgrade(&primary.inner))?;
        }
        Ok(primary)
    }
}

fn default_transport() -> Result<Arc<dyn Transport>> {
    #[cfg(feature = "transport-uds")]
    {
        Ok(Arc::new(clusterfy_transport_uds::UdsTransport::new()))
    }
    #[cfg(not(feature = "transport-uds"))]
    {
        Err(Error::new(
            ErrorKind::Config,
            "no transport chosen: call PrimaryBuilder::transport or enable the `transport-uds` feature",
        ))
    }
}

fn default_storage() -> Result<Arc<dyn StorageBackend>> {
    #[cfg(feature = "storage-mem")]
    {
        Ok(Arc::new(clusterfy_storage_mem::MemStorage::new()))
    }
    #[cfg(not(feature = "storage-mem"))]
    {
        Err(Error::new(
            ErrorKind::Config,
            "no storage chosen: call PrimaryBuilder::storage or enable the `storage-mem` feature",
        ))
    }
}

/// Handle of the primary process. Cheap to clone; all clones drive the same cluster.
#[derive(Clone)]
pub struct Primary {
    inner: Arc<PrimaryInner>,
}

/// Messages from the primary to the task that owns a worker's child process.
#[derive(Debug)]
pub(crate) enum Control {
    /// SIGKILL the current process of this worker.
    Kill,
}

/// One worker's record; survives its processes (revivals keep the slot).
pub(crate) struct Slot {
    pub(crate) worker: WorkerRef,
    pub(crate) status: WorkerStatus,
    pub(crate) state: WorkerState,
    pub(crate) pid: Option<u32>,
    pub(crate) restarts: u32,
    pub(crate) started: Instant,
    /// Bumped at each spawn, so a waiter can tell this process's exit from a later one's.
    pub(crate) incarnation: u64,
    pub(crate) ever_ready: bool,
    /// Set by a shutdown request: the next exit is expected and not revived.
    pub(crate) stop_requested: bool,
    pub(crate) link: Option<Arc<Link>>,
    pub(crate) control: mpsc::UnboundedSender<Control>,
    pub(crate) last_exit: Option<ExitReason>,
    /// Why the current or last process could not connect, if it could not.
    pub(crate) connect_failure: Option<Arc<Error>>,
    /// Storage paths the current connection watches.
    pub(crate) watches: Vec<clusterfy_core::Path>,
}

pub(crate) struct PrimaryInner {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) storage: Arc<SharedStorage>,
    pub(crate) commands: CommandRegistry<PrimaryContext>,
    pub(crate) events: broadcast::Sender<Event>,
    /// Ticks on every slot change; waiters re-check their condition (no polling).
    pub(crate) changed: watch::Sender<()>,
    pub(crate) slots: Mutex<BTreeMap<WorkerId, Slot>>,
    next_id: AtomicU64,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) request_timeout: Duration,
    pub(crate) ready_timeout: Duration,
    pub(crate) max_frame_len: usize,
    /// Starts the task that sends storage changes to watching workers, at the first watch, so
    /// writes cost nothing extra until a worker watches.
    pub(crate) watch_dispatch: std::sync::Once,
}

impl PrimaryInner {
    pub(crate) fn slots(&self) -> MutexGuard<'_, BTreeMap<WorkerId, Slot>> {
        // Slot updates are plain field writes; a panic elsewhere cannot leave them half-done.
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn emit(&self, event: Event) {
        // No subscriber is fine: events are for whoever listens.
        let _ = self.events.send(event);
    }

    /// Like [`PrimaryInner::emit`], but builds the event only if someone listens: for events
    /// on the per-request path.
    pub(crate) fn emit_with(&self, event: impl FnOnce() -> Event) {
        if self.events.receiver_count() > 0 {
            self.emit(event());
        }
    }

    /// Changes a slot and wakes every waiter on the cluster's state.
    pub(crate) fn update_slot<R>(&self, id: WorkerId, f: impl FnOnce(&mut Slot) -> R) -> Option<R> {
        let result = self.slots().get_mut(&id).map(f);
        self.changed.send_replace(());
        result
    }

    fn find(&self, selector: &WorkerSelector) -> Result<WorkerRef> {
        let slots = self.slots();
        let found = slots.values().find(|s| match selector {
            WorkerSelector::Id(id) => s.worker.id == *id,
            WorkerSelector::Name(name) => s.worker.name == *name,
        });
        found.map(|s| s.worker.clone()).ok_or_else(|| {
            let names: Vec<&str> = slots.values().map(|s| s.worker.name.as_str()).collect();
            Error::new(
                ErrorKind::UnknownWorker,
                format!("no {selector} in this cluster; known workers: [{}]", names.join(", ")),
            )
        })
    }

    /// Where a command to `destination` goes, judged on the current directory.
    pub(crate) fn route(&self, destination: &Destination) -> Result<Route> {
        let slots = self.slots();
        let entries: Vec<RouteEntry<'_>> = slots
            .values()
            .map(|s| RouteEntry { id: s.worker.id, name: &s.worker.name, connected: s.link.is_some() })
            .collect();
        route(destination, &entries)
    }

    pub(crate) fn link_of(&self, id: WorkerId) -> Result<(WorkerRef, Arc<Link>)> {
        let slots = self.slots();
        let slot = slots.get(&id).ok_or_else(|| {
            Error::new(ErrorKind::UnknownWorker, format!("no worker #{id} in this cluster"))
        })?;
        match &slot.link {
            Some(link) => Ok((slot.worker.clone(), Arc::clone(link))),
            None => Err(Error::new(
                ErrorKind::WorkerExited,
                "the worker is not connected (exited or still starting)",
            )
            .with_context("worker", &slot.worker.name)),
        }
    }

    /// Sends a command to one worker and returns its encoded reply.
    pub(crate) async fn command_to_worker(&self, id: WorkerId, command: CommandRequest) -> Result<Vec<u8>> {
        let (worker, link) = self.link_of(id)?;
        let name = command.name.clone();
        match link.request(Request::Command(command), self.request_timeout).await {
            Ok(Reply::Command(payload)) => Ok(payload),
            Ok(other) => {
                Err(Error::new(ErrorKind::Protocol, format!("unexpected reply to a command: {other:?}")))
            }
            Err(err) => Err(add_command_context(err, &name, &worker)),
        }
    }
}

impl PrimaryInner {
    /// Sends `command` to each worker in `ids` at once and gathers every answer, in `ids` order.
    pub(crate) async fn fan_out(
        &self,
        ids: Vec<WorkerId>,
        command: CommandRequest,
    ) -> Vec<(WorkerRef, Result<Vec<u8>>)> {
        let calls = ids.into_iter().map(|id| {
            let command = command.clone();
            async move {
                let worker = self.slots().get(&id).map(|s| s.worker.clone());
                let worker = worker.unwrap_or(WorkerRef { id, name: String::new() });
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

/// How [`Primary::shutdown_worker`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// The worker exited by itself within the timeout.
    Exited(ExitReason),
    /// The worker did not exit in time and was killed with SIGKILL.
    Killed,
    /// The worker was not running.
    NotRunning,
}

impl Primary {
    /// Starts configuring a primary.
    pub fn builder() -> PrimaryBuilder {
        PrimaryBuilder {
            transport: None,
            storage: None,
            initial: None,
            commands: CommandRegistry::new(Target::Primary),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            handle_signals: true,
        }
    }

    /// Starts a worker process named `name` (the original's `fork`). Returns once the process is
    /// spawned; [`Primary::ready`] waits until it is connected. Names are unique: a second worker
    /// with a name in use is refused.
    pub async fn fork(&self, name: &str, options: WorkerOptions) -> Result<WorkerRef> {
        if name.is_empty() {
            return Err(Error::new(ErrorKind::InvalidInput, "a worker name must not be empty"));
        }
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::InvalidState, "the cluster is shutting down; fork refused"));
        }
        let id = WorkerId(self.inner.next_id.fetch_add(1, Ordering::SeqCst));
        let worker = WorkerRef { id, name: name.to_owned() };
        let (control, control_rx) = mpsc::unbounded_channel();
        {
            let mut slots = self.inner.slots();
            if slots.values().any(|s| s.worker.name == name) {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    "a worker with this name exists already; names address workers, so they must be unique",
                )
                .with_context("worker", name));
            }
            slots.insert(
                id,
                Slot {
                    worker: worker.clone(),
                    status: WorkerStatus::Initializing,
                    state: WorkerState::Starting,
                    pid: None,
                    restarts: 0,
                    started: Instant::now(),
                    incarnation: 0,
                    ever_ready: false,
                    stop_requested: false,
                    link: None,
                    control,
                    last_exit: None,
                    connect_failure: None,
                    watches: Vec::new(),
                },
            );
        }
        let (spawned_tx, spawned_rx) = oneshot::channel();
        tokio::spawn(supervisor::supervise(
            Arc::clone(&self.inner),
            worker.clone(),
            options,
            control_rx,
            spawned_tx,
        ));
        match spawned_rx.await {
            Ok(Ok(())) => Ok(worker),
            Ok(Err(err)) => {
                self.inner.slots().remove(&id);
                Err(err.with_context("worker", name))
            }
            Err(_) => {
                Err(Error::new(ErrorKind::InvalidState, "the worker's supervisor stopped before spawning it"))
            }
        }
    }

    /// Waits until every forked worker is ready (the original's `initAsPrimary`). Fails with
    /// [`ErrorKind::Timeout`] if one is not ready within the ready timeout, and with
    /// [`ErrorKind::WorkerExited`] if one exited for good before it was ever ready.
    pub async fn ready(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.inner.ready_timeout;
        let mut changed = self.inner.changed.subscribe();
        loop {
            let pending: Vec<WorkerRef> = {
                let slots = self.inner.slots();
                let mut pending = Vec::new();
                for slot in slots.values() {
                    match slot.state {
                        WorkerState::Ready | WorkerState::Stopped => {}
                        WorkerState::Exited | WorkerState::GaveUp if slot.ever_ready => {}
                        WorkerState::Exited | WorkerState::GaveUp
                            if let Some(failure) =
                                slot.connect_failure.as_ref().filter(|f| f.kind() == ErrorKind::Timeout) =>
                        {
                            return Err(Error::new(ErrorKind::Timeout, failure.message().to_owned())
                                .with_context("worker", &slot.worker));
                        }
                        WorkerState::Exited | WorkerState::GaveUp => {
                            let how =
                                slot.last_exit.map_or_else(|| "spawn failure".to_owned(), |e| e.to_string());
                            return Err(Error::new(
                                ErrorKind::WorkerExited,
                                format!("worker exited ({how}) before it was ready; see its stderr"),
                            )
                            .with_context("worker", &slot.worker));
                        }
                        WorkerState::Starting | WorkerState::Connected | WorkerState::Restarting => {
                            pending.push(slot.worker.clone());
                        }
                    }
                }
                pending
            };
            let Some(first) = pending.first() else {
                return Ok(());
            };
            if tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
                let names: Vec<&str> = pending.iter().map(|w| w.name.as_str()).collect();
                return Err(supervisor::not_connected_in_time(self.inner.ready_timeout)
                    .with_context("worker", first)
                    .with_context("not_ready", names.join(", ")));
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
        self.inner.slots().values().map(WorkerInfo::of).collect()
    }

    /// Typed access to the shared storage (the original's `storage`).
    pub fn storage(&self) -> Storage {
        Storage::local(Arc::clone(&self.inner.storage))
    }

    /// The storage with its tree operations on [`Value`]s, for direct use on the primary.
    pub fn shared_storage(&self) -> &Arc<SharedStorage> {
        &self.inner.storage
    }

    /// Runs command `C` on one worker, chosen by id or name (the original's `runIPCCommand`).
    /// Fails at once with [`ErrorKind::WorkerExited`] if the worker dies before answering.
    pub async fn run<C: Command>(&self, worker: impl Into<WorkerSelector>, command: C) -> Result<C::Reply> {
        expect_target::<C>(Target::Worker)?;
        let selector = worker.into();
        let target = self.inner.find(&selector)?;
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
        expect_target::<C>(Target::Worker)?;
        let Route::Broadcast(ids) = self.inner.route(&Destination::AllWorkers)? else {
            return Err(Error::new(ErrorKind::Protocol, "broadcast did not route to workers"));
        };
        self.inner.emit_with(|| Event::Command {
            from: Origin::Primary,
            name: C::NAME.to_owned(),
            to: "all workers".into(),
        });
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

    /// Shuts one worker down gracefully (the original's `shutdownWorker`): sends `cy_shutdown`
    /// (an idle worker runs its shutdown hooks and exits; a busy one turns Stopping and exits
    /// when done), and kills it with SIGKILL if it has not exited after `timeout`.
    pub async fn shutdown_worker(
        &self,
        worker: impl Into<WorkerSelector>,
        timeout: Duration,
    ) -> Result<ShutdownOutcome> {
        let target = self.inner.find(&worker.into())?;
        let deadline = tokio::time::Instant::now() + timeout;
        let (incarnation, link, control) = {
            let mut slots = self.inner.slots();
            let Some(slot) = slots.get_mut(&target.id) else {
                return Ok(ShutdownOutcome::NotRunning);
            };
            slot.stop_requested = true;
            if slot.state.is_final() || slot.state == WorkerState::Restarting {
                // A worker waiting to be revived stays down: its supervisor sees stop_requested.
                return Ok(ShutdownOutcome::NotRunning);
            }
            (slot.incarnation, slot.link.clone(), slot.control.clone())
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
        let _ = control.send(Control::Kill);
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
                let slots = self.inner.slots();
                match slots.get(&id) {
                    None => return ExitReason::Code(-1),
                    Some(slot) => {
                        let exited = slot.state.is_final() || slot.state == WorkerState::Restarting;
                        if slot.incarnation > incarnation || exited {
                            return slot.last_exit.unwrap_or(ExitReason::Code(-1));
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
    /// refuses new forks and removes the transport's files. Returns each worker's outcome.
    pub async fn shutdown(&self, timeout: Duration) -> Result<Vec<(WorkerRef, ShutdownOutcome)>> {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let workers: Vec<WorkerRef> = self.inner.slots().values().map(|s| s.worker.clone()).collect();
        let outcomes = futures::future::join_all(workers.into_iter().map(|w| async move {
            let outcome = self.shutdown_worker(w.id, timeout).await;
            (w, outcome)
        }))
        .await;
        self.inner.transport.close()?;
        let mut result = Vec::with_capacity(outcomes.len());
        for (worker, outcome) in outcomes {
            result.push((worker, outcome?));
        }
        Ok(result)
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
