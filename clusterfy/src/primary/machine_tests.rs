//! Property tests of the workers' directory and slot machines, without processes, sockets or
//! sleeps: a model of the world (which processes run, which connections are live, which timers
//! are armed) feeds the machines random but possible sequences of what can happen to workers,
//! from their drivers and from the API, and checks after every step:
//!
//! - a name addresses at most one worker;
//! - the machine knows which processes run: a slot says it has a process exactly when the world
//!   runs one for it, and no record leaves the directory while its process runs (so every
//!   spawned process stays someone's to reap, or is killed);
//! - a process spawned for a worker that was asked to stop, or for a cluster shutting down, is
//!   killed at once; a stopped, finished or removed worker is never revived;
//! - each worker's events come in a legal order (Forked, Online, Ready..., Disconnect, Exit,
//!   then Revived and Forked again, or nothing more);
//! - a replacement takes its worker's name only once it is ready.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use clusterfy_core::{Error, ErrorKind, WorkerId, WorkerSelector, WorkerStatus};
use nix::sys::signal::Signal;
use proptest::prelude::*;

use super::directory::Directory;
use super::sample::Usage;
use super::slot::{Action, Input, Replacing, SlotIo, Timer};
use super::{RestartPolicy, WorkerOptions, WorkerState};
use crate::events::{Event, ExitReason, GiveUpCause};

/// The model's slots hold plain numbers for their connections, and nothing for their
/// supervisors.
struct Model;

impl SlotIo for Model {
    type Link = u64;
    type Control = ();
}

const NAMES: [&str; 3] = ["a", "b", "c"];
const MEMORY_LIMIT: u64 = 1000;

/// One thing that can happen; indices pick a worker among those in the model, modulo.
#[derive(Debug, Clone)]
enum Step {
    Fork { name: usize, revive: bool, max_restarts: u32, memory_limit: bool },
    Spawn { worker: usize, fails: bool },
    Connect { worker: usize, fails: bool },
    Ready { worker: usize },
    Status { worker: usize, status: usize },
    PingMissed { worker: usize },
    LinkEnds { worker: usize, failed: bool },
    Exits { worker: usize, code: i32 },
    FireTimer { worker: usize },
    Sample { worker: usize, rss: u64 },
    Stop { worker: usize },
    BeginReplace { worker: usize },
    TakeOver { worker: usize },
    EndReplace { worker: usize },
    Remove { worker: usize },
    Shutdown,
}

fn step() -> impl Strategy<Value = Step> {
    let worker = 0usize..6;
    prop_oneof![
        2 => (0..NAMES.len(), any::<bool>(), 0u32..3, any::<bool>()).prop_map(|(name, revive, max_restarts, memory_limit)| {
            Step::Fork { name, revive, max_restarts, memory_limit }
        }),
        4 => (worker.clone(), prop::bool::weighted(0.1)).prop_map(|(worker, fails)| Step::Spawn { worker, fails }),
        4 => (worker.clone(), prop::bool::weighted(0.15)).prop_map(|(worker, fails)| Step::Connect { worker, fails }),
        3 => worker.clone().prop_map(|worker| Step::Ready { worker }),
        1 => (worker.clone(), 0usize..5).prop_map(|(worker, status)| Step::Status { worker, status }),
        1 => worker.clone().prop_map(|worker| Step::PingMissed { worker }),
        1 => (worker.clone(), any::<bool>()).prop_map(|(worker, failed)| Step::LinkEnds { worker, failed }),
        3 => (worker.clone(), prop_oneof![Just(0), Just(1), Just(-9)]).prop_map(|(worker, code)| Step::Exits { worker, code }),
        3 => worker.clone().prop_map(|worker| Step::FireTimer { worker }),
        1 => (worker.clone(), prop_oneof![Just(10), Just(5000)]).prop_map(|(worker, rss)| Step::Sample { worker, rss }),
        1 => worker.clone().prop_map(|worker| Step::Stop { worker }),
        1 => worker.clone().prop_map(|worker| Step::BeginReplace { worker }),
        2 => worker.clone().prop_map(|worker| Step::TakeOver { worker }),
        1 => worker.clone().prop_map(|worker| Step::EndReplace { worker }),
        1 => worker.clone().prop_map(|worker| Step::Remove { worker }),
        1 => Just(Step::Shutdown),
    ]
}

/// A running process, as the world knows it.
#[derive(Debug, Default)]
struct Process {
    pid: u32,
    /// Its connection, while live.
    link: Option<u64>,
    /// It passed the handshake once (no second connection per process).
    connected_once: bool,
}

/// What the world knows of one worker, beside the machine.
#[derive(Debug, Default)]
struct World {
    /// The supervisor is about to spawn a process (after the fork, or a revival).
    spawn_due: bool,
    /// The first spawn has not happened: its failure is the fork's.
    first: bool,
    process: Option<Process>,
    timers: Vec<Timer>,
    /// The supervisor finished.
    finished: bool,
    /// Replacing this old worker: its replacement.
    replacement: Option<WorkerId>,
    /// This replacement's old worker.
    replaces: Option<WorkerId>,
    events: EventOrder,
}

/// Where one worker's events stand, to check their order.
#[derive(Debug, Default)]
struct EventOrder {
    running: bool,
    online: bool,
    ready: bool,
    /// The last process ended in a crash that may be revived.
    may_revive: bool,
    revived: bool,
    gave_up: bool,
}

impl EventOrder {
    fn see(&mut self, event: &Event) -> Result<(), String> {
        let legal = match event {
            Event::Forked { .. } => {
                let ok = !self.running && !self.gave_up;
                *self = EventOrder { running: true, ..EventOrder::default() };
                ok
            }
            Event::Online { .. } => {
                let ok = self.running && !self.online;
                self.online = true;
                ok
            }
            Event::Ready { .. } => {
                self.ready = true;
                self.online
            }
            Event::Status { .. } | Event::Unresponsive { .. } => self.online,
            Event::MemoryLimit { .. } => self.running && self.ready,
            Event::Disconnect { .. } => {
                let ok = self.online;
                (self.online, self.ready) = (false, false);
                ok
            }
            Event::Exit { .. } => {
                let ok = self.running && !self.online;
                (self.running, self.ready, self.may_revive) = (false, false, true);
                ok
            }
            Event::Revived { .. } => {
                let ok = !self.running && self.may_revive && !self.gave_up;
                self.revived = true;
                ok
            }
            Event::GaveUp { cause: GiveUpCause::Crashes, .. } => {
                let ok = !self.running && !self.gave_up;
                self.gave_up = true;
                ok
            }
            Event::GaveUp { cause: GiveUpCause::MemoryLimit { .. }, .. } => {
                let ok = self.running && !self.gave_up;
                self.gave_up = true;
                ok
            }
            Event::Error { .. } | Event::ReloadFailed { .. } | Event::Replaced { .. } => true,
            other => return Err(format!("a slot published {other:?}")),
        };
        if legal { Ok(()) } else { Err(format!("{event:?} after {self:?}")) }
    }
}

struct Harness {
    directory: Directory<Model>,
    worlds: BTreeMap<WorkerId, World>,
    start: Instant,
    clock: Duration,
    next_pid: u32,
    next_link: u64,
    /// Workers that were asked to stop, finished or left the directory: never revived.
    never_again: BTreeSet<WorkerId>,
}

impl Harness {
    fn new() -> Self {
        Harness {
            directory: Directory::new(1),
            worlds: BTreeMap::new(),
            start: Instant::now(),
            clock: Duration::ZERO,
            next_pid: 100,
            next_link: 1,
            never_again: BTreeSet::new(),
        }
    }

    fn now(&self) -> Instant {
        self.start + self.clock
    }

    /// The `n`th worker of the world (modulo), if there is one.
    fn pick(&self, n: usize) -> Option<WorkerId> {
        let ids: Vec<WorkerId> = self.worlds.keys().copied().collect();
        (!ids.is_empty()).then(|| ids[n % ids.len()])
    }

    fn world(&mut self, id: WorkerId) -> &mut World {
        self.worlds.entry(id).or_default()
    }

    /// Feeds worker `id` an input, as its driver would, and does what the machine says.
    fn feed(&mut self, id: WorkerId, input: Input<u64>) -> Result<(), String> {
        let now = self.now();
        let actions = self.directory.handle(id, input, now);
        self.act(id, actions)
    }

    fn act(&mut self, id: WorkerId, actions: Vec<Action>) -> Result<(), String> {
        for action in actions {
            match action {
                Action::Publish(event) => {
                    let about = match &event {
                        Event::Replaced { new, .. } => new.id,
                        Event::ReloadFailed { worker, .. } => worker.id,
                        _ => id,
                    };
                    self.world(about).events.see(&event)?;
                }
                Action::Signal(Signal::SIGKILL) => {
                    // The process dies; its supervisor sees the exit (a later step).
                }
                Action::Signal(other) => return Err(format!("the machine sent {other}")),
                Action::Arm(timer, _) => self.world(id).timers.push(timer),
                Action::Respawn => {
                    if self.never_again.contains(&id) {
                        return Err(format!("#{id} was stopped, finished or removed, and is revived"));
                    }
                    self.world(id).spawn_due = true;
                }
                Action::Finish => {
                    let world = self.world(id);
                    world.finished = true;
                    world.timers.clear();
                    self.never_again.insert(id);
                }
                Action::ReplaceAfter { .. } => {}
                Action::StopForGood { .. } => {
                    self.directory.ask_stop(id);
                    self.never_again.insert(id);
                }
            }
        }
        Ok(())
    }

    fn run(&mut self, step: Step) -> Result<(), String> {
        self.clock += Duration::from_millis(7);
        match step {
            Step::Fork { name, revive, max_restarts, memory_limit } => {
                let mut options = WorkerOptions::default();
                if revive {
                    let policy = RestartPolicy { max_restarts, ..RestartPolicy::default() };
                    options = options.restart_policy(policy);
                }
                if memory_limit {
                    options = options.max_memory(MEMORY_LIMIT);
                }
                let now = self.now();
                if let Ok(worker) = self.directory.add(NAMES[name], options, (), None, now) {
                    let world = self.world(worker.id);
                    (world.spawn_due, world.first) = (true, true);
                }
            }
            Step::Spawn { worker, fails } => {
                let Some(id) = self.pick(worker).filter(|id| self.worlds[id].spawn_due) else {
                    return Ok(());
                };
                let first = self.worlds[&id].first;
                {
                    let world = self.world(id);
                    world.spawn_due = false;
                    world.first = false;
                }
                if fails && first {
                    // fork() fails and takes the record out again.
                    self.feed(id, Input::NeverSpawned)?;
                    if !self.directory.remove(id) {
                        return Err(format!("#{id} never spawned, yet its record stays"));
                    }
                    self.world(id).finished = true;
                    self.never_again.insert(id);
                } else if fails {
                    self.feed(id, Input::SpawnFailed(Error::new(ErrorKind::Io, "no such program")))?;
                } else {
                    let pid = self.next_pid;
                    self.next_pid += 1;
                    self.world(id).process = Some(Process { pid, ..Process::default() });
                    let wanted = self.directory.get(id).is_some_and(|s| !s.stop_requested())
                        && !self.directory.shutting_down();
                    let now = self.now();
                    let connect_by = tokio::time::Instant::now() + Duration::from_secs(30);
                    let actions =
                        self.directory.handle(id, Input::Spawned { pid: Some(pid), connect_by }, now);
                    let kills = actions.iter().any(|a| matches!(a, Action::Signal(Signal::SIGKILL)));
                    if !wanted && !kills {
                        return Err(format!("#{id} was spawned unwanted and not killed"));
                    }
                    self.act(id, actions)?;
                }
            }
            Step::Connect { worker, fails } => {
                let Some(id) = self.pick(worker) else { return Ok(()) };
                if self.worlds[&id].process.as_ref().is_none_or(|p| p.connected_once) {
                    return Ok(());
                }
                if fails {
                    if let Some(p) = self.world(id).process.as_mut() {
                        p.connected_once = true;
                    }
                    let error = std::sync::Arc::new(Error::new(ErrorKind::Timeout, "did not connect"));
                    self.feed(id, Input::ConnectFailed { error, published: false })?;
                } else {
                    let link = self.next_link;
                    self.next_link += 1;
                    if let Some(p) = self.world(id).process.as_mut() {
                        (p.link, p.connected_once) = (Some(link), true);
                    }
                    self.feed(id, Input::Connected(link))?;
                }
            }
            Step::Ready { worker } => {
                if let Some(id) = self.live_link(worker) {
                    self.feed(id, Input::ReadyReported)?;
                }
            }
            Step::Status { worker, status } => {
                if let Some(id) = self.live_link(worker) {
                    let status = [
                        WorkerStatus::Initializing,
                        WorkerStatus::Loaded,
                        WorkerStatus::Idle,
                        WorkerStatus::Processing,
                        WorkerStatus::Stopping,
                    ][status];
                    self.feed(id, Input::StatusReported(status))?;
                }
            }
            Step::PingMissed { worker } => {
                if let Some(id) = self.live_link(worker) {
                    self.feed(id, Input::PingMissed { waited: Duration::from_secs(1) })?;
                }
            }
            Step::LinkEnds { worker, failed } => {
                if let Some(id) = self.live_link(worker) {
                    self.end_link(id, failed)?;
                }
            }
            Step::Exits { worker, code } => {
                let Some(id) = self.pick(worker).filter(|id| self.worlds[id].process.is_some()) else {
                    return Ok(());
                };
                // The driver reads the connection to its end first.
                if self.worlds[&id].process.as_ref().is_some_and(|p| p.link.is_some()) {
                    self.end_link(id, false)?;
                }
                self.world(id).process = None;
                self.world(id).timers.retain(|t| *t == Timer::Revive);
                let reason = if code < 0 {
                    ExitReason::Signal(crate::Signal::from_raw(-code))
                } else {
                    ExitReason::Code(code)
                };
                self.feed(id, Input::Exited(reason))?;
            }
            Step::FireTimer { worker } => {
                let Some(id) = self.pick(worker) else { return Ok(()) };
                let Some(timer) = self.world(id).timers.pop() else { return Ok(()) };
                self.feed(id, Input::TimerFired(timer))?;
            }
            Step::Sample { worker, rss } => {
                let Some(id) = self.pick(worker) else { return Ok(()) };
                let Some(pid) = self.worlds[&id].process.as_ref().map(|p| p.pid) else { return Ok(()) };
                let now = self.now();
                self.feed(id, Input::Sampled(Usage::new(pid, rss, 0, now)))?;
            }
            Step::Stop { worker } => {
                if let Some(id) = self.pick(worker) {
                    self.directory.ask_stop(id);
                    self.never_again.insert(id);
                }
            }
            Step::BeginReplace { worker } => {
                let Some(id) = self.pick(worker) else { return Ok(()) };
                if self.directory.ask_replace(id) {
                    let (name, options) = {
                        let slot = self.directory.get(id).ok_or("a marked slot is gone")?;
                        (slot.worker().name.clone(), slot.options().clone())
                    };
                    let how = Replacing { old: id, as_restart: false };
                    let now = self.now();
                    let new =
                        self.directory.add(&name, options, (), Some(how), now).map_err(|e| e.to_string())?;
                    let world = self.world(new.id);
                    (world.spawn_due, world.first, world.replaces) = (true, true, Some(id));
                    self.world(id).replacement = Some(new.id);
                }
            }
            Step::TakeOver { worker } => {
                let Some(new) = self.pick(worker) else { return Ok(()) };
                let Some(old) = self.worlds[&new].replaces else { return Ok(()) };
                let ready = self
                    .directory
                    .get(new)
                    .is_some_and(|s| s.state() == WorkerState::Ready && !s.stop_requested());
                let (Some(old_ref), Some(new_ref)) = (self.worker_ref(old), self.worker_ref(new)) else {
                    return Ok(());
                };
                match self.directory.take_over(&old_ref, &new_ref) {
                    Ok(actions) if ready => {
                        self.world(new).replaces = None;
                        self.act(new, actions)?;
                    }
                    Ok(_) => return Err(format!("#{new} took over #{old} before it was ready")),
                    Err(_) if ready => return Err(format!("#{new} was ready and could not take over")),
                    Err(_) => {}
                }
            }
            Step::EndReplace { worker } => {
                let Some(old) = self.pick(worker) else { return Ok(()) };
                if let Some(old_ref) =
                    self.worker_ref(old).filter(|_| self.worlds[&old].replacement.is_some())
                {
                    let err = Error::new(ErrorKind::Timeout, "the new worker was not ready");
                    let actions = self.directory.replacement_ended(&old_ref, Some(&err), None);
                    self.world(old).replacement = None;
                    self.act(old, actions)?;
                }
            }
            Step::Remove { worker } => {
                let Some(id) = self.pick(worker) else { return Ok(()) };
                let runs = self.worlds[&id].process.is_some();
                if self.directory.remove(id) {
                    if runs {
                        return Err(format!("#{id} left the directory while its process runs"));
                    }
                    self.never_again.insert(id);
                }
            }
            Step::Shutdown => {
                for worker in self.directory.begin_shutdown() {
                    self.directory.ask_stop(worker.id);
                    self.never_again.insert(worker.id);
                }
            }
        }
        self.check()
    }

    fn worker_ref(&self, id: WorkerId) -> Option<crate::events::WorkerRef> {
        self.directory.get(id).map(|s| s.worker().clone())
    }

    /// The `n`th worker, if its process has a live connection.
    fn live_link(&self, n: usize) -> Option<WorkerId> {
        self.pick(n).filter(|id| self.worlds[id].process.as_ref().is_some_and(|p| p.link.is_some()))
    }

    fn end_link(&mut self, id: WorkerId, failed: bool) -> Result<(), String> {
        if let Some(p) = self.world(id).process.as_mut() {
            p.link = None;
        }
        let error = failed.then(|| Error::new(ErrorKind::Protocol, "a malformed frame"));
        self.feed(id, Input::LinkEnded(error))
    }

    /// The invariants, after every step.
    fn check(&self) -> Result<(), String> {
        let mut answering: BTreeMap<&str, usize> = BTreeMap::new();
        for slot in self.directory.slots() {
            if slot.answers_to_name() {
                *answering.entry(slot.worker().name.as_str()).or_default() += 1;
            }
            let id = slot.worker().id;
            let world = self.worlds.get(&id).ok_or("a slot the world does not know")?;
            let (runs, due) = (world.process.is_some(), world.spawn_due);
            if runs && !slot.has_process() {
                return Err(format!("#{id} in state {:?} runs a process it does not know of", slot.state()));
            }
            if slot.has_process() && !runs && !due {
                return Err(format!(
                    "#{id} in state {:?} counts on a process that is not there",
                    slot.state()
                ));
            }
            if (runs || due) && slot.removable() {
                return Err(format!("#{id} in state {:?} could leave while its process runs", slot.state()));
            }
            if let Some(new) = slot.replaced_by()
                && self.directory.get(new).is_none_or(|n| !n.answers_to_name())
            {
                return Err(format!("#{id} lost its name to #{new}, which does not answer to it"));
            }
        }
        if let Some((name, n)) = answering.iter().find(|(_, n)| **n > 1) {
            return Err(format!("{n} workers answer to the name {name:?}"));
        }
        for (id, world) in &self.worlds {
            if world.process.is_some() && self.directory.get(*id).is_none() {
                return Err(format!("#{id}'s process runs and its record is gone"));
            }
            if world.finished && world.process.is_some() {
                return Err(format!("#{id}'s supervisor finished while its process runs"));
            }
        }
        for name in NAMES {
            let found = self.directory.find(&WorkerSelector::Name(name.to_owned()));
            let answering = answering.get(name).copied().unwrap_or(0);
            if found.is_ok() != (answering == 1) {
                return Err(format!("find({name:?}) is {found:?} with {answering} answering"));
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn the_directory_keeps_its_invariants_whatever_happens_in_whatever_order(steps in prop::collection::vec(step(), 1..80)) {
        let mut harness = Harness::new();
        for (n, step) in steps.into_iter().enumerate() {
            let described = format!("{step:?}");
            if let Err(broken) = harness.run(step) {
                prop_assert!(false, "step {n} ({described}): {broken}");
            }
        }
    }
}

#[test]
fn a_crash_is_revived_after_the_backoff_and_a_stop_during_the_backoff_keeps_it_down() {
    let mut harness = Harness::new();
    harness.run(Step::Fork { name: 0, revive: true, max_restarts: 2, memory_limit: false }).unwrap();
    let id = harness.pick(0).unwrap();
    for step in [Step::Spawn { worker: 0, fails: false }, Step::Connect { worker: 0, fails: false }] {
        harness.run(step).unwrap();
    }
    harness.run(Step::Exits { worker: 0, code: 1 }).unwrap();
    assert_eq!(harness.directory.get(id).unwrap().state(), WorkerState::Restarting);
    assert_eq!(harness.worlds[&id].timers, [Timer::Revive]);
    harness.run(Step::Stop { worker: 0 }).unwrap();
    harness.run(Step::FireTimer { worker: 0 }).unwrap();
    assert_eq!(harness.directory.get(id).unwrap().state(), WorkerState::Stopped);
    assert!(harness.worlds[&id].finished && !harness.worlds[&id].spawn_due);
}

#[test]
fn a_broken_connection_makes_a_clean_exit_a_crash() {
    let mut harness = Harness::new();
    harness.run(Step::Fork { name: 0, revive: true, max_restarts: 2, memory_limit: false }).unwrap();
    let id = harness.pick(0).unwrap();
    for step in [
        Step::Spawn { worker: 0, fails: false },
        Step::Connect { worker: 0, fails: false },
        Step::LinkEnds { worker: 0, failed: true },
        Step::Exits { worker: 0, code: 0 },
    ] {
        harness.run(step).unwrap();
    }
    assert_eq!(harness.directory.get(id).unwrap().state(), WorkerState::Restarting, "revived, not Exited");
}

#[test]
fn a_worker_over_its_memory_limit_is_replaced_until_the_policy_gives_up() {
    let mut harness = Harness::new();
    harness.run(Step::Fork { name: 0, revive: true, max_restarts: 0, memory_limit: true }).unwrap();
    let id = harness.pick(0).unwrap();
    for step in [
        Step::Spawn { worker: 0, fails: false },
        Step::Connect { worker: 0, fails: false },
        Step::Ready { worker: 0 },
    ] {
        harness.run(step).unwrap();
    }
    let pid = harness.worlds[&id].process.as_ref().unwrap().pid;
    let now = harness.now();
    let actions =
        harness.directory.handle(id, Input::Sampled(Usage::new(pid, MEMORY_LIMIT + 1, 0, now)), now);
    assert!(
        matches!(
            actions.as_slice(),
            [
                Action::Publish(Event::MemoryLimit { .. }),
                Action::Publish(Event::GaveUp { cause: GiveUpCause::MemoryLimit { .. }, .. }),
                Action::StopForGood { .. }
            ]
        ),
        "no restart allowed: it gives up at once: {actions:?}"
    );
}
