//! One worker's record as a sans-IO state machine: the only code that changes it. Its drivers
//! (the supervisor task that owns the process, the reader of its connection, the sampler, the
//! API calls) tell it what happened as an [`Input`] and do the [`Action`]s it answers with:
//! publish an event, signal the process, arm a timer, spawn the next process, stop. It never
//! waits, reads a clock or touches a process itself, so every transition can be driven by a
//! test (see `machine_tests.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clusterfy_core::{Error, ErrorKind, Path, Result, WorkerStatus};
use nix::sys::signal::Signal;

use super::options::WorkerOptions;
use super::restart::{RestartDecision, RestartHistory};
use super::stats::WorkerState;
use super::usage::Usage;
use crate::events::{Event, ExitReason, GiveUpCause, WorkerRef};

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

    /// The one rule for whether a replacement (reload, restart, memory limit) may start: a ready
    /// worker that answers to its name, not being replaced or stopped already.
    fn may_be_replaced(&self) -> bool {
        self.state == WorkerState::Ready && self.answers_to_name() && !self.replacing && !self.stop_requested
    }

    /// Takes what happened at `now` and says what to do. `shutting_down`: the cluster is shutting
    /// down, so no exit is revived and no process is wanted.
    pub(super) fn handle(&mut self, input: Input<W::Link>, now: Instant, shutting_down: bool) -> Vec<Action> {
        match input {
            Input::Spawned { pid, connect_by } => self.spawned(pid, connect_by, now, shutting_down),
            Input::NeverSpawned => {
                self.state = WorkerState::Exited;
                vec![Action::Finish]
            }
            Input::SpawnFailed(error) => {
                let publish = Action::Publish(Event::Error {
                    worker: Some(self.worker.clone()),
                    error: Arc::new(error),
                });
                let mut actions = vec![publish];
                actions.extend(self.ended(None, true, now, shutting_down));
                actions
            }
            Input::ConnectFailed { error, published } => {
                let mut actions = Vec::with_capacity(2);
                if !published {
                    let worker = Some(self.worker.clone());
                    actions.push(Action::Publish(Event::Error { worker, error: Arc::clone(&error) }));
                }
                self.connect_failure = Some(error);
                actions.push(Action::Signal(Signal::SIGKILL));
                actions
            }
            Input::Connected(link) => {
                self.link = Some(link);
                self.state = WorkerState::Connected;
                self.status = WorkerStatus::Loaded;
                vec![Action::Publish(Event::Online { worker: self.worker.clone() })]
            }
            Input::StatusReported(status) => self.status_reported(status),
            Input::ReadyReported => {
                if !matches!(self.state, WorkerState::Connected | WorkerState::Ready) {
                    return Vec::new();
                }
                self.state = WorkerState::Ready;
                self.ever_ready = true;
                if self.status.can_become(WorkerStatus::Idle) {
                    self.status = WorkerStatus::Idle;
                }
                vec![Action::Publish(Event::Ready { worker: self.worker.clone() })]
            }
            Input::Watched(path) => {
                // Watching a path twice is one watch: a worker that re-watches must not grow the list.
                if self.link.is_some() && !self.watches.contains(&path) {
                    self.watches.push(path);
                }
                Vec::new()
            }
            Input::PingMissed { waited } => {
                if self.hung || !self.has_process() {
                    return Vec::new();
                }
                self.hung = true;
                tracing::warn!(worker = %self.worker, ?waited, "worker does not answer pings: killing it");
                vec![
                    Action::Publish(Event::Unresponsive { worker: self.worker.clone(), waited }),
                    Action::Signal(Signal::SIGKILL),
                ]
            }
            Input::LinkEnded(error) => self.link_ended(error),
            Input::Exited(reason) => {
                let crashed = !reason.is_success();
                self.ended(Some(reason), crashed, now, shutting_down)
            }
            Input::TimerFired(Timer::Revive) => self.revive_due(shutting_down),
            Input::TimerFired(Timer::Disconnected { incarnation }) => {
                if incarnation == self.incarnation && self.has_process() {
                    vec![Action::Signal(Signal::SIGKILL)]
                } else {
                    Vec::new()
                }
            }
            Input::Sampled(usage) => self.sampled(usage, shutting_down),
        }
    }

    fn spawned(
        &mut self,
        pid: Option<u32>,
        connect_by: tokio::time::Instant,
        now: Instant,
        shutting_down: bool,
    ) -> Vec<Action> {
        self.connect_by = Some(connect_by);
        self.pid = pid;
        self.incarnation += 1;
        self.state = WorkerState::Starting;
        self.status = WorkerStatus::Initializing;
        self.started = now;
        self.link = None;
        self.connect_failure = None;
        self.link_failed = false;
        self.hung = false;
        self.watches.clear();
        let mut actions =
            vec![Action::Publish(Event::Forked { worker: self.worker.clone(), pid: pid.unwrap_or(0) })];
        // Stopped while it was being spawned: it must not run unseen.
        if self.stop_requested || shutting_down {
            actions.push(Action::Signal(Signal::SIGKILL));
        }
        actions
    }

    fn status_reported(&mut self, status: WorkerStatus) -> Vec<Action> {
        let before = self.status;
        if !before.can_become(status) {
            let err = Error::new(
                ErrorKind::Protocol,
                format!("worker reported an illegal status change {before} -> {status}; ignored"),
            )
            .with_context("worker", &self.worker);
            return vec![Action::Publish(Event::Error {
                worker: Some(self.worker.clone()),
                error: Arc::new(err),
            })];
        }
        self.status = status;
        if before == status {
            return Vec::new();
        }
        vec![Action::Publish(Event::Status { worker: self.worker.clone(), status })]
    }

    /// The error that ended the connection, if any, is published first, so that a subscriber
    /// always learns what went wrong before it sees the Disconnect (and then the Exit).
    fn link_ended(&mut self, error: Option<Error>) -> Vec<Action> {
        if !self.has_process() || self.link.is_none() {
            return Vec::new();
        }
        self.link = None;
        let mut actions = Vec::with_capacity(3);
        if let Some(err) = error {
            self.link_failed = true;
            let error = Arc::new(err.with_context("worker", &self.worker));
            actions.push(Action::Publish(Event::Error { worker: Some(self.worker.clone()), error }));
        }
        actions.push(Action::Publish(Event::Disconnect { worker: self.worker.clone() }));
        actions.push(Action::Arm(Timer::Disconnected { incarnation: self.incarnation }, DISCONNECTED_GRACE));
        actions
    }

    /// The state a worker that was asked to stop (or whose cluster shuts down) ends in, or
    /// `None` when its exit was not expected.
    fn expected_end(&self, shutting_down: bool) -> Option<WorkerState> {
        if self.stop_requested { Some(self.stop_as) } else { shutting_down.then_some(WorkerState::Stopped) }
    }

    /// The process ended (`reason`, or `None` when it could not be spawned); `crashed` by its
    /// own account. Decides between the end, a revival after the policy's backoff, and giving
    /// up; a broken connection or a hang is a crash whatever the exit says.
    fn ended(
        &mut self,
        reason: Option<ExitReason>,
        crashed: bool,
        now: Instant,
        shutting_down: bool,
    ) -> Vec<Action> {
        let crashed = crashed || self.link_failed || self.hung;
        let next = match self.expected_end(shutting_down) {
            Some(expected) => expected,
            None if !crashed => WorkerState::Exited,
            None => match self.options.restart.as_ref() {
                None => WorkerState::Exited,
                Some(policy) => match self.history.on_restart_needed(policy, now) {
                    RestartDecision::GiveUp => WorkerState::GaveUp,
                    RestartDecision::RestartAfter(delay) => {
                        let mut actions = self.record_exit(reason, WorkerState::Restarting);
                        actions.push(Action::Arm(Timer::Revive, delay));
                        return actions;
                    }
                },
            },
        };
        let mut actions = self.record_exit(reason, next);
        if next == WorkerState::GaveUp && !self.stop_requested {
            let (worker, restarts) = (self.worker.clone(), self.restarts);
            actions.push(Action::Publish(Event::GaveUp { worker, restarts, cause: GiveUpCause::Crashes }));
        }
        actions.push(Action::Finish);
        actions
    }

    /// Records that the process ended, with the state supervision goes to, in one change so no
    /// reader sees an in-between state; the Exit event follows.
    fn record_exit(&mut self, reason: Option<ExitReason>, state: WorkerState) -> Vec<Action> {
        self.state = state;
        self.pid = None;
        self.link = None;
        if reason.is_some() {
            self.last_exit = reason;
        }
        reason
            .map(|reason| Action::Publish(Event::Exit { worker: self.worker.clone(), reason }))
            .into_iter()
            .collect()
    }

    fn revive_due(&mut self, shutting_down: bool) -> Vec<Action> {
        if self.state != WorkerState::Restarting {
            return Vec::new();
        }
        if let Some(stopped) = self.expected_end(shutting_down) {
            self.state = stopped;
            return vec![Action::Finish];
        }
        self.restarts += 1;
        // About to be spawned again: from now on a process may run.
        self.state = WorkerState::Starting;
        vec![
            Action::Publish(Event::Revived { worker: self.worker.clone(), restarts: self.restarts }),
            Action::Respawn,
        ]
    }

    /// Keeps a sample of the current process; one past its memory limit starts its replacement
    /// as a restart under its restart policy (the default policy if it has none): after the
    /// policy's backoff, and once the intensity limit is passed, not again: the limit is then
    /// below what the program needs, so the worker is stopped for good instead of being
    /// replaced in a loop.
    fn sampled(&mut self, mut usage: Usage, shutting_down: bool) -> Vec<Action> {
        if self.pid != Some(usage.pid) {
            return Vec::new();
        }
        let cpu_percent = match self.usage {
            Some(before) if before.pid == usage.pid => usage.cpu_since(&before).or(before.cpu_percent),
            _ => None,
        };
        usage.cpu_percent = cpu_percent;
        self.usage = Some(usage);
        let Some(limit) = self.options.max_memory else { return Vec::new() };
        let cooling_down = self.no_memory_replacement_before.is_some_and(|at| usage.at < at);
        if usage.rss <= limit || !self.may_be_replaced() || cooling_down || shutting_down {
            return Vec::new();
        }
        self.replacing = true;
        let (worker, rss) = (self.worker.clone(), usage.rss);
        tracing::warn!(worker = %worker, rss, limit, "worker passed its memory limit: replacing it");
        let mut actions = vec![Action::Publish(Event::MemoryLimit { worker: worker.clone(), rss, limit })];
        let policy = self.options.restart.clone().unwrap_or_default();
        let grace = self.options.memory_limit_grace;
        match self.history.on_restart_needed(&policy, usage.at) {
            RestartDecision::RestartAfter(delay) => actions.push(Action::ReplaceAfter { delay, grace }),
            RestartDecision::GiveUp => {
                tracing::error!(worker = %worker, rss, limit, "worker keeps outgrowing its memory limit: giving up on it");
                self.stop_as = WorkerState::GaveUp;
                let cause = GiveUpCause::MemoryLimit { rss, limit };
                actions.push(Action::Publish(Event::GaveUp { worker, restarts: self.restarts, cause }));
                actions.push(Action::StopForGood { grace });
            }
        }
        actions
    }

    /// A stop request: the next exit is expected and not revived. `None` when no process runs
    /// (a worker waiting to be revived stays down).
    pub(super) fn ask_stop(&mut self) -> Option<StopTarget<W>> {
        self.stop_requested = true;
        if self.state.is_final() || self.state == WorkerState::Restarting {
            return None;
        }
        Some(StopTarget {
            incarnation: self.incarnation,
            link: self.link.clone(),
            control: self.control.clone(),
        })
    }

    /// Marks it as being replaced, if it may be (see `may_be_replaced`).
    pub(super) fn ask_replace(&mut self) -> bool {
        let free = self.may_be_replaced();
        self.replacing |= free;
        free
    }

    /// Its replacement did not happen; after a memory-limit replacement failed, none is tried
    /// again before `retry_after`.
    pub(super) fn replacement_ended(&mut self, retry_after: Option<Instant>) {
        self.replacing = false;
        if retry_after.is_some() {
            self.no_memory_replacement_before = retry_after;
        }
    }

    /// Its replacement `new` is ready and takes its name.
    pub(super) fn replaced(&mut self, new: clusterfy_core::WorkerId) {
        self.replaced_by = Some(new);
    }

    /// It is ready and takes the name of the worker it replaced.
    pub(super) fn took_over(&mut self) {
        self.replaces = None;
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
