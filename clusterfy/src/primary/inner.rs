//! What every handle of the primary shares ([`PrimaryInner`]): the directory behind its lock, the
//! event channel, the settings; and the one way the drivers change the directory: an input in,
//! the slot's events published after the change, the rest of its actions handed back.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clusterfy_core::protocol::Destination;
use clusterfy_core::session::Route;
use clusterfy_core::{Error, ErrorKind, Result, Transport, WorkerId, WorkerSelector};
use nix::sys::signal::Signal;
use tokio::sync::{broadcast, mpsc, watch};

use super::directory::Directory;
use super::slot::{Action, Input, SlotIo};
use super::{Limits, PrimaryContext};
use crate::events::{Event, WorkerRef};
use crate::handlers::CommandRegistry;
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

/// The slots of a running primary hold its live connections and supervisor channels.
pub(crate) struct Live;

impl SlotIo for Live {
    type Link = Arc<Link>;
    type Control = mpsc::UnboundedSender<Control>;
}

pub(crate) struct PrimaryInner {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) storage: Arc<SharedStorage>,
    pub(crate) commands: CommandRegistry<PrimaryContext>,
    pub(crate) events: broadcast::Sender<Event>,
    /// Ticks on every change of the directory; waiters re-check their condition (no polling).
    pub(crate) changed: watch::Sender<()>,
    pub(crate) directory: Mutex<Directory<Live>>,
    pub(crate) request_timeout: Duration,
    pub(crate) ready_timeout: Duration,
    pub(crate) max_frame_len: usize,
    pub(crate) limits: Limits,
    /// Workers are told to mark themselves non-dumpable.
    pub(crate) non_dumpable: bool,
    /// What ends a worker that ignored its shutdown request past the grace period.
    pub(crate) stop_signal: Signal,
    /// Time a worker has after the stop signal before SIGKILL.
    pub(crate) kill_timeout: Duration,
    /// One reload, scale or memory-limit replacement at a time.
    pub(crate) reloading: tokio::sync::Mutex<()>,
    /// Which ready member of a group [`Primary::run_group`](super::Primary::run_group) takes next.
    pub(crate) next_in_group: std::sync::atomic::AtomicUsize,
    /// The control socket, if the builder asked for one.
    pub(crate) control: std::sync::OnceLock<crate::control::ControlSocket>,
    /// The workers' captured output.
    pub(crate) logs: Arc<super::logs::Logs>,
    /// The listening sockets every worker inherits (cluster mode).
    pub(crate) listeners: SharedListeners,
    /// Starts the task that sends storage changes to watching workers, at the first watch, so
    /// writes cost nothing extra until a worker watches.
    pub(crate) watch_dispatch: std::sync::Once,
}

impl PrimaryInner {
    /// The directory, for reading (changes go through [`PrimaryInner::apply`] and
    /// [`PrimaryInner::change`], which wake the waiters).
    pub(crate) fn directory(&self) -> MutexGuard<'_, Directory<Live>> {
        // The directory's methods finish their changes before they can fail: a panic elsewhere
        // cannot leave it half-changed.
        self.directory.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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

    /// Tells worker `id` what happened: its slot changes, every waiter wakes, its events are
    /// published, and the rest of its actions are returned for the caller to do.
    pub(crate) fn apply(&self, id: WorkerId, input: Input<Arc<Link>>) -> Vec<Action> {
        let actions = self.directory().handle(id, input, Instant::now());
        self.changed.send_replace(());
        self.publish(actions)
    }

    /// Runs `change` on the directory and wakes every waiter.
    pub(crate) fn change<R>(&self, change: impl FnOnce(&mut Directory<Live>) -> R) -> R {
        let result = change(&mut self.directory());
        self.changed.send_replace(());
        result
    }

    /// Publishes the events among `actions`, in order; returns the others.
    pub(crate) fn publish(&self, actions: Vec<Action>) -> Vec<Action> {
        let mut rest = Vec::new();
        for action in actions {
            match action {
                Action::Publish(event) => self.emit(event),
                other => rest.push(other),
            }
        }
        rest
    }

    /// Worker `worker` was asked to stop. Unless another record of its name serves on (its
    /// replacement), no new connection goes to its own listening sockets.
    pub(crate) fn stopping(&self, worker: &WorkerRef) {
        let directory = self.directory();
        // Decided and done under the directory's lock, so no fork of the name comes between.
        if !name_lives_on(&directory, worker, |s| !s.stop_requested()) {
            self.listeners.stop_steering(&worker.name);
        }
    }

    /// Worker `worker`'s supervisor ended for good. Unless another record of its name may still
    /// run a process (its replacement), its own listening sockets close.
    pub(crate) fn supervisor_ended(&self, worker: &WorkerRef) {
        let directory = self.directory();
        if !name_lives_on(&directory, worker, |_| true) {
            self.listeners.release(&worker.name);
        }
    }

    pub(super) fn find(&self, selector: &WorkerSelector) -> Result<WorkerRef> {
        self.directory().find(selector)
    }

    /// Where a command to `destination` goes, judged on the current directory.
    pub(crate) fn route(&self, destination: &Destination) -> Result<Route> {
        self.directory().route(destination)
    }

    /// The name of worker `id`, if it is in the directory.
    pub(crate) fn name_of(&self, id: WorkerId) -> Option<String> {
        self.directory().get(id).map(|s| s.worker().name.clone())
    }

    pub(crate) fn link_of(&self, id: WorkerId) -> Result<(WorkerRef, Arc<Link>)> {
        let directory = self.directory();
        let slot = directory.get(id).ok_or_else(|| {
            Error::new(ErrorKind::UnknownWorker, format!("no worker #{id} in this cluster"))
        })?;
        match slot.link() {
            Some(link) => Ok((slot.worker().clone(), Arc::clone(link))),
            None => Err(Error::new(
                ErrorKind::WorkerExited,
                "the worker is not connected (exited or still starting)",
            )
            .with_context("worker", &slot.worker().name)),
        }
    }
}

/// Whether a record other than `worker`'s, of the same name and not final, passes `also`.
fn name_lives_on(
    directory: &Directory<Live>,
    worker: &WorkerRef,
    also: impl Fn(&super::slot::Slot<Live>) -> bool,
) -> bool {
    directory.slots().any(|s| {
        s.worker().name == worker.name && s.worker().id != worker.id && !s.state().is_final() && also(s)
    })
}
