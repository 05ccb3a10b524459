//! How a slot changes: each input, and each request of the API (stop, replace), with the
//! actions it answers. The only code that writes a slot's state.

use std::sync::Arc;
use std::time::Instant;

use clusterfy_core::{Error, ErrorKind, WorkerStatus};
use nix::sys::signal::Signal;

use super::WorkerState;
use super::{Action, DISCONNECTED_GRACE, Input, Slot, SlotIo, StopTarget, Timer};
use crate::events::{Event, ExitReason, GiveUpCause};
use crate::primary::restart::RestartDecision;
use crate::primary::sample::Usage;

impl<W: SlotIo> Slot<W> {
    /// The one rule for whether a replacement (reload, restart, memory limit) may start: a ready
    /// worker that answers to its name, not being replaced or stopped already.
    fn may_be_replaced(&self) -> bool {
        self.state == WorkerState::Ready && self.answers_to_name() && !self.replacing && !self.stop_requested
    }

    /// Takes what happened at `now` and says what to do. `shutting_down`: the cluster is shutting
    /// down, so no exit is revived and no process is wanted.
    pub(in crate::primary) fn handle(
        &mut self,
        input: Input<W::Link>,
        now: Instant,
        shutting_down: bool,
    ) -> Vec<Action> {
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
    pub(in crate::primary) fn ask_stop(&mut self) -> Option<StopTarget<W>> {
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
    pub(in crate::primary) fn ask_replace(&mut self) -> bool {
        let free = self.may_be_replaced();
        self.replacing |= free;
        free
    }

    /// Its replacement did not happen; after a memory-limit replacement failed, none is tried
    /// again before `retry_after`.
    pub(in crate::primary) fn replacement_ended(&mut self, retry_after: Option<Instant>) {
        self.replacing = false;
        if retry_after.is_some() {
            self.no_memory_replacement_before = retry_after;
        }
    }

    /// Its replacement `new` is ready and takes its name.
    pub(in crate::primary) fn replaced(&mut self, new: clusterfy_core::WorkerId) {
        self.replaced_by = Some(new);
    }

    /// It is ready and takes the name of the worker it replaced.
    pub(in crate::primary) fn took_over(&mut self) {
        self.replaces = None;
    }
}
