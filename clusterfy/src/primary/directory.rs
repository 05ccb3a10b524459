//! The workers' directory: one [`Slot`] per worker in the state shared by every handle of the
//! primary ([`PrimaryInner`]), and the lookups and updates on it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clusterfy_core::protocol::Destination;
use clusterfy_core::session::{Route, RouteEntry, route};
use clusterfy_core::{Error, ErrorKind, Result, Transport, WorkerId, WorkerSelector, WorkerStatus};
use nix::sys::signal::Signal;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::restart::RestartHistory;
use super::usage::Usage;
use super::{PrimaryContext, WorkerOptions, WorkerState, supervisor};
use crate::commands::CommandRegistry;
use crate::events::{Event, ExitReason, WorkerRef};
use crate::link::Link;
use crate::listen::SharedListeners;
use crate::storage::SharedStorage;

/// Messages from the primary to the task that owns a worker's child process.
#[derive(Debug)]
pub(crate) enum Control {
    /// Send this signal to process `incarnation` of this worker (SIGKILL kills it); dropped if a
    /// later process runs by the time it arrives.
    Signal(Signal, u64),
}

/// A slot that replaces another worker: `old`, whose name it takes once ready.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replacing {
    pub(crate) old: WorkerId,
    /// The replacement is a restart (the memory limit), counted in its restarts; a reload's or
    /// an operator's restart is not.
    pub(crate) as_restart: bool,
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
    /// The state an expected exit leaves it in: `Stopped`, or `GaveUp` when the primary stopped
    /// it for good (its memory limit).
    pub(crate) stop_as: WorkerState,
    /// Its recent restarts, for its restart policy; a replacement takes them over.
    pub(crate) history: RestartHistory,
    pub(crate) link: Option<Arc<Link>>,
    pub(crate) control: mpsc::UnboundedSender<Control>,
    pub(crate) last_exit: Option<ExitReason>,
    /// Why the current or last process could not connect, if it could not.
    pub(crate) connect_failure: Option<Arc<Error>>,
    /// When the supervisor gives up on the current process's connection (its spawn plus the
    /// ready timeout).
    pub(crate) connect_by: Option<tokio::time::Instant>,
    /// Storage paths the current connection watches.
    pub(crate) watches: Vec<clusterfy_core::Path>,
    /// How it was forked; a replacement is forked the same way.
    pub(crate) options: WorkerOptions,
    /// Set on a replacement until it is ready: it takes the name of the worker it replaces only
    /// then, so until then commands by name still go to the old one.
    pub(crate) replaces: Option<WorkerId>,
    /// Set on a worker whose replacement is ready: it no longer answers to its name and is
    /// being stopped.
    pub(crate) replaced_by: Option<WorkerId>,
    /// A replacement of this worker is under way (reload or memory limit).
    pub(crate) replacing: bool,
    /// A memory-limit replacement failed: none is tried again before this.
    pub(crate) no_memory_replacement_before: Option<Instant>,
    /// The last CPU and memory sample of its process.
    pub(crate) usage: Option<Usage>,
}

impl Slot {
    pub(crate) fn new(
        worker: WorkerRef,
        options: WorkerOptions,
        control: mpsc::UnboundedSender<Control>,
    ) -> Self {
        Slot {
            worker,
            status: WorkerStatus::Initializing,
            state: WorkerState::Starting,
            pid: None,
            restarts: 0,
            started: Instant::now(),
            incarnation: 0,
            ever_ready: false,
            stop_requested: false,
            stop_as: WorkerState::Stopped,
            history: RestartHistory::default(),
            link: None,
            control,
            last_exit: None,
            connect_failure: None,
            connect_by: None,
            watches: Vec::new(),
            options,
            replaces: None,
            replaced_by: None,
            replacing: false,
            no_memory_replacement_before: None,
            usage: None,
        }
    }

    /// Whether its name addresses it: not a replacement still starting, not a replaced worker.
    pub(crate) fn answers_to_name(&self) -> bool {
        self.replaces.is_none() && self.replaced_by.is_none()
    }
}

pub(crate) struct PrimaryInner {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) storage: Arc<SharedStorage>,
    pub(crate) commands: CommandRegistry<PrimaryContext>,
    pub(crate) events: broadcast::Sender<Event>,
    /// Ticks on every slot change; waiters re-check their condition (no polling).
    pub(crate) changed: watch::Sender<()>,
    pub(crate) slots: Mutex<BTreeMap<WorkerId, Slot>>,
    pub(super) next_id: AtomicU64,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) request_timeout: Duration,
    pub(crate) ready_timeout: Duration,
    pub(crate) max_frame_len: usize,
    /// Workers are told to mark themselves non-dumpable.
    pub(crate) non_dumpable: bool,
    /// What ends a worker that ignored its shutdown request past the grace period.
    pub(crate) stop_signal: Signal,
    /// Time a worker has after the stop signal before SIGKILL.
    pub(crate) kill_timeout: Duration,
    /// One reload or memory-limit replacement at a time.
    pub(crate) reloading: tokio::sync::Mutex<()>,
    /// The control socket, if the builder asked for one.
    pub(crate) control: std::sync::OnceLock<crate::control::ControlSocket>,
    /// The listening sockets every worker inherits (cluster mode).
    pub(crate) listeners: SharedListeners,
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

    pub(super) fn find(&self, selector: &WorkerSelector) -> Result<WorkerRef> {
        let slots = self.slots();
        let found = slots.values().find(|s| match selector {
            WorkerSelector::Id(id) => s.worker.id == *id,
            WorkerSelector::Name(name) => s.worker.name == *name && s.answers_to_name(),
        });
        found.map(|s| s.worker.clone()).ok_or_else(|| {
            let names: Vec<&str> = slots.values().map(|s| s.worker.name.as_str()).collect();
            Error::new(
                ErrorKind::UnknownWorker,
                format!("no {selector} in this cluster; known workers: [{}]", names.join(", ")),
            )
            .with_context("target", selector)
        })
    }

    /// Where a command to `destination` goes, judged on the current directory.
    pub(crate) fn route(&self, destination: &Destination) -> Result<Route> {
        let slots = self.slots();
        let entries: Vec<RouteEntry<'_>> = slots
            .values()
            .filter(|s| s.answers_to_name())
            .map(|s| RouteEntry { id: s.worker.id, name: &s.worker.name, connected: s.link.is_some() })
            .collect();
        route(destination, &entries)
    }

    /// Adds a slot for worker `name` and starts its supervisor; returns once its first process
    /// is spawned. A replacement (`replacing`) does not answer to its name until it takes over,
    /// and carries on the old worker's restart count and history.
    pub(crate) async fn fork_slot(
        self: &Arc<Self>,
        name: &str,
        options: WorkerOptions,
        replacing: Option<Replacing>,
    ) -> Result<WorkerRef> {
        let id = WorkerId(self.next_id.fetch_add(1, Ordering::SeqCst));
        let worker = WorkerRef { id, name: name.to_owned() };
        let (control, control_rx) = mpsc::unbounded_channel();
        let mut slot = Slot::new(worker.clone(), options.clone(), control);
        let replaces = replacing.map(|r| r.old);
        slot.replaces = replaces;
        {
            let mut slots = self.slots();
            if let Some(Replacing { old, as_restart }) = replacing
                && let Some(old) = slots.get(&old)
            {
                slot.history = old.history.clone();
                slot.restarts = old.restarts + u32::from(as_restart);
            }
            // Checked under the lock that `Primary::shutdown` lists the workers under, so a worker
            // is either listed there or never started.
            if self.shutting_down.load(Ordering::SeqCst) {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    "the cluster is shutting down; fork refused",
                ));
            }
            // Checked and inserted under one lock, so two forks cannot both take a name. A replaced
            // worker is on its way out: its name belongs to its replacement.
            let taken = slots.values().any(|s| s.worker.name == name && s.replaced_by.is_none());
            if replaces.is_none() && taken {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    "a worker with this name exists already; names address workers, so they must be unique",
                )
                .with_context("worker", name));
            }
            slots.insert(id, slot);
        }
        let (spawned_tx, spawned_rx) = oneshot::channel();
        tokio::spawn(supervisor::supervise(
            Arc::clone(self),
            worker.clone(),
            options,
            control_rx,
            spawned_tx,
        ));
        match spawned_rx.await {
            Ok(Ok(())) => Ok(worker),
            Ok(Err(err)) => {
                self.slots().remove(&id);
                Err(err.with_context("worker", name))
            }
            Err(_) => {
                Err(Error::new(ErrorKind::InvalidState, "the worker's supervisor stopped before spawning it"))
            }
        }
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
}
