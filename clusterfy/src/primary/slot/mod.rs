//! One worker's record as a sans-IO state machine: the only code that changes it. Its drivers
//! (the supervisor task that owns the process, the reader of its connection, the sampler, the
//! API calls) tell it what happened as an [`Input`] and do the [`Action`]s it answers with:
//! publish an event, signal the process, arm a timer, spawn the next process, stop. It never
//! waits, reads a clock or touches a process itself, so every transition can be driven by a
//! test (see `machine_tests.rs`). The transitions are in `transitions.rs`; this file holds the
//! record, what it is told and what it answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clusterfy_core::{Error, ErrorKind, Path, Result, WorkerStatus};
use nix::sys::signal::Signal;

mod state;
mod transitions;

pub use state::WorkerState;

use super::options::WorkerOptions;
use super::restart::RestartHistory;
use super::sample::Usage;
use crate::events::{Event, ExitReason, WorkerRef};

/// After a failed memory-limit replacement, the time before the next try: a new process that
/// cannot start is not forked again at every sample.
pub(crate) const MEMORY_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Time a worker whose connection ended has to exit by itself before it is killed: a worker
/// without its connection can do nothing useful.
pub(crate) const DISCONNECTED_GRACE: Duration = Duration::from_secs(2);

/// The IO objects a slot holds for its drivers, opaque to the machine: the live ones in the
/// primary, plain values in the model tests.
pub(crate) trait SlotIo {
    /// The worker's connection.
    type Link: Clone;
    /// The way to reach the supervisor task that owns the worker's process.
    type Control: Clone;
}

/// A timer a slot asked for, tied to the process it was armed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The restart backoff after a crash is over: revive, unless stopped meanwhile.
    Revive,
    /// Process `incarnation` lost its connection [`DISCONNECTED_GRACE`] ago and is still there.
    Disconnected { incarnation: u64 },
}

/// What happened to a worker, as one of its drivers saw it.
#[derive(Debug)]
pub(crate) enum Input<L> {
    /// Its next process was spawned (`pid`, if the system gave one); it has until `connect_by`
    /// (its ready timeout, counted from now) to connect.
    Spawned { pid: Option<u32>, connect_by: tokio::time::Instant },
    /// The first process could not be spawned: the fork fails, and nothing runs for it ever.
    NeverSpawned,
    /// A later process could not be spawned at all.
    SpawnFailed(Error),
    /// The process did not get connected; `published` if the error was published already (a
    /// refused handshake is, when it happens).
    ConnectFailed { error: Arc<Error>, published: bool },
    /// The process passed the handshake on this connection.
    Connected(L),
    /// The worker reported its status.
    StatusReported(WorkerStatus),
    /// The worker said it is ready.
    ReadyReported,
    /// The worker watches storage changes at this path.
    Watched(Path),
    /// A ping went unanswered past the heartbeat's timeout.
    PingMissed { waited: Duration },
    /// The connection ended: with this error, or cleanly (`None`).
    LinkEnded(Option<Error>),
    /// The process ended.
    Exited(ExitReason),
    /// A timer armed by [`Action::Arm`] fired.
    TimerFired(Timer),
    /// A sample of the process's CPU and memory.
    Sampled(Usage),
}

/// What a driver does for the slot, in order.
#[derive(Debug)]
pub(crate) enum Action {
    /// Publish this event (after the slot changed, so a subscriber that looks sees it).
    Publish(Event),
    /// Send this signal to the current process (SIGKILL kills it).
    Signal(Signal),
    /// Fire [`Input::TimerFired`] with this timer after this long.
    Arm(Timer, Duration),
    /// Spawn the next process (a revival after a crash).
    Respawn,
    /// No process runs and none will: the supervisor's work is done.
    Finish,
    /// Replace the worker, which passed its memory limit, after this backoff, giving the old
    /// process `grace` to finish; the replacement counts as a restart.
    ReplaceAfter { delay: Duration, grace: Duration },
    /// Stop the worker for good, with `grace` (its replacements kept outgrowing the limit).
    StopForGood { grace: Duration },
}

/// How a stop request finds a worker: what [`Primary::shutdown_worker`](super::Primary::shutdown_worker)
/// needs to run the stop ladder.
pub(crate) struct StopTarget<W: SlotIo> {
    /// The process to stop.
    pub(crate) incarnation: u64,
    /// Its connection, to ask it first.
    pub(crate) link: Option<W::Link>,
    /// Its supervisor, which signals it.
    pub(crate) control: W::Control,
}

/// A slot that replaces another worker: `old`, whose name it takes once ready.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replacing {
    pub(crate) old: clusterfy_core::WorkerId,
    /// The replacement is a restart (the memory limit), counted in its restarts; a reload's or
    /// an operator's restart is not.
    pub(crate) as_restart: bool,
}

/// One worker's record; survives its processes (revivals keep the slot). Read through its
/// accessors; changed only by the methods of this module.
pub(crate) struct Slot<W: SlotIo> {
    worker: WorkerRef,
    /// How it was forked; a replacement is forked the same way.
    options: WorkerOptions,
    control: W::Control,
    status: WorkerStatus,
    state: WorkerState,
    pid: Option<u32>,
    restarts: u32,
    started: Instant,
    /// Bumped at each spawn, so a waiter can tell this process's exit from a later one's.
    incarnation: u64,
    ever_ready: bool,
    /// Set by a stop request: the next exit is expected and not revived.
    stop_requested: bool,
    /// The state an expected exit leaves it in: `Stopped`, or `GaveUp` when the primary stopped
    /// it for good (its memory limit).
    stop_as: WorkerState,
    /// Its recent restarts, for its restart policy; a replacement takes them over.
    history: RestartHistory,
    link: Option<W::Link>,
    last_exit: Option<ExitReason>,
    /// Why the current or last process could not connect, if it could not.
    connect_failure: Option<Arc<Error>>,
    /// When the supervisor gives up on the current process's connection.
    connect_by: Option<tokio::time::Instant>,
    /// The current process's connection ended with an error (a protocol violation, a read
    /// error), not by the worker closing it: it crashed, whatever its exit code says.
    link_failed: bool,
    /// The current process stopped answering pings and was killed: it crashed too.
    hung: bool,
    /// Storage paths the current connection watches.
    watches: Vec<Path>,
    /// Set on a replacement until it is ready: it takes the name of the worker it replaces only
    /// then, so until then commands by name still go to the old one.
    replaces: Option<clusterfy_core::WorkerId>,
    /// Set on a worker whose replacement is ready: it no longer answers to its name and is
    /// being stopped.
    replaced_by: Option<clusterfy_core::WorkerId>,
    /// A replacement of this worker is under way (reload, restart or memory limit).
    replacing: bool,
    /// A memory-limit replacement failed: none is tried again before this.
    no_memory_replacement_before: Option<Instant>,
    /// The last CPU and memory sample of its process.
    usage: Option<Usage>,
}

impl<W: SlotIo> Slot<W> {
    /// A new slot; a replacement (`replaced`: the old slot and how) takes over its restart count
    /// and history, so neither a reload nor the memory limit resets the intensity limit.
    pub(super) fn new(
        worker: WorkerRef,
        options: WorkerOptions,
        control: W::Control,
        replaced: Option<(&Slot<W>, Replacing)>,
        now: Instant,
    ) -> Self {
        let (history, restarts) = match replaced {
            Some((old, how)) => (old.history.clone(), old.restarts + u32::from(how.as_restart)),
            None => (RestartHistory::default(), 0),
        };
        Slot {
            worker,
            options,
            control,
            status: WorkerStatus::Initializing,
            state: WorkerState::Starting,
            pid: None,
            restarts,
            started: now,
            incarnation: 0,
            ever_ready: false,
            stop_requested: false,
            stop_as: WorkerState::Stopped,
            history,
            link: None,
            last_exit: None,
            connect_failure: None,
            connect_by: None,
            link_failed: false,
            hung: false,
            watches: Vec::new(),
            replaces: replaced.map(|(old, _)| old.worker.id),
            replaced_by: None,
            replacing: false,
            no_memory_replacement_before: None,
            usage: None,
        }
    }

    pub(crate) fn worker(&self) -> &WorkerRef {
        &self.worker
    }

    pub(crate) fn options(&self) -> &WorkerOptions {
        &self.options
    }

    pub(crate) fn state(&self) -> WorkerState {
        self.state
    }

    pub(crate) fn status(&self) -> WorkerStatus {
        self.status
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.pid
    }

    pub(crate) fn restarts(&self) -> u32 {
        self.restarts
    }

    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    pub(crate) fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub(crate) fn link(&self) -> Option<&W::Link> {
        self.link.as_ref()
    }

    pub(crate) fn last_exit(&self) -> Option<ExitReason> {
        self.last_exit
    }

    pub(crate) fn connect_failure(&self) -> Option<&Arc<Error>> {
        self.connect_failure.as_ref()
    }

    pub(crate) fn watches(&self) -> &[Path] {
        &self.watches
    }

    pub(crate) fn usage(&self) -> Option<Usage> {
        self.usage
    }

    pub(crate) fn stop_requested(&self) -> bool {
        self.stop_requested
    }

    pub(crate) fn replaced_by(&self) -> Option<clusterfy_core::WorkerId> {
        self.replaced_by
    }

    /// Whether its name addresses it: not a replacement still starting, not a replaced worker.
    pub(crate) fn answers_to_name(&self) -> bool {
        self.replaces.is_none() && self.replaced_by.is_none()
    }

    /// Whether a process of it may be running: spawned and not yet seen to exit, or about to be
    /// spawned again after a crash.
    pub(crate) fn has_process(&self) -> bool {
        matches!(self.state, WorkerState::Starting | WorkerState::Connected | WorkerState::Ready)
            && self.incarnation > 0
    }

    /// Whether process `incarnation` is over: a later one was spawned, or none runs any more.
    pub(crate) fn process_ended(&self, incarnation: u64) -> bool {
        self.incarnation > incarnation || self.state.is_final() || self.state == WorkerState::Restarting
    }

    /// Whether its record may leave the directory: no process of it runs or is about to be
    /// spawned (one waiting to be revived never will: its revival finds the record gone).
    pub(crate) fn removable(&self) -> bool {
        self.state.is_final() || self.state == WorkerState::Restarting
    }

    /// Still connecting past its supervisor's deadline: that verdict is about to come.
    pub(crate) fn connect_verdict_due(&self, now: tokio::time::Instant) -> bool {
        self.state == WorkerState::Starting
            && self.connect_failure.is_none()
            && self.connect_by.is_some_and(|by| by <= now)
    }

    /// Whether it is done getting ready: `Ok(true)` when ready (or ended after it was),
    /// `Ok(false)` while it may still get there, and the reason when it never will.
    pub(crate) fn readiness(&self) -> Result<bool> {
        let how = || self.last_exit.map_or_else(|| "spawn failure".to_owned(), |e| e.to_string());
        match self.state {
            WorkerState::Ready | WorkerState::Stopped => Ok(true),
            WorkerState::Exited | WorkerState::GaveUp if self.ever_ready => Ok(true),
            WorkerState::Exited | WorkerState::GaveUp => match self.connect_failure.as_ref() {
                Some(failure) if failure.kind() == ErrorKind::Timeout => {
                    Err(Error::new(ErrorKind::Timeout, failure.message().to_owned())
                        .with_context("worker", &self.worker))
                }
                // It could not connect (a refused handshake, text where its Hello belongs): that
                // is the cause, which its stderr may not show. A connection that merely ended is
                // the exit itself.
                Some(failure) if failure.kind() != ErrorKind::Closed => Err(Error::new(
                    failure.kind(),
                    format!(
                        "worker exited ({}) before it was ready, after it failed to connect: {}",
                        how(),
                        failure.message()
                    ),
                )
                .with_context("worker", &self.worker)),
                _ => Err(Error::new(
                    ErrorKind::WorkerExited,
                    format!("worker exited ({}) before it was ready; see its stderr", how()),
                )
                .with_context("worker", &self.worker)),
            },
            WorkerState::Starting | WorkerState::Connected | WorkerState::Restarting => Ok(false),
        }
    }
}
