//! The workers' directory as sans-IO state: every [`Slot`] by id, and the rules that span more
//! than one slot (names are unique, a replacement takes its worker's name only once ready, a
//! record leaves only once no process of it runs, nothing starts once the cluster shuts down),
//! and the worker groups. With [`Slot`], the only code that changes a worker's record.

use std::collections::BTreeMap;
use std::time::Instant;

use clusterfy_core::protocol::Destination;
use clusterfy_core::session::{Route, RouteEntry, route};
use clusterfy_core::{Error, ErrorKind, Result, WireError, WorkerId, WorkerSelector};

use super::group::{Groups, member_index};
use super::options::WorkerOptions;
use super::slot::{Action, Input, Replacing, Slot, SlotIo, StopTarget};
use crate::events::{Event, WorkerRef};

pub(crate) struct Directory<W: SlotIo> {
    slots: BTreeMap<WorkerId, Slot<W>>,
    groups: Groups,
    next_id: u64,
    shutting_down: bool,
}

impl<W: SlotIo> Directory<W> {
    /// An empty directory whose first worker gets id `first_id`.
    pub(crate) fn new(first_id: u64) -> Self {
        Directory {
            slots: BTreeMap::new(),
            groups: Groups::default(),
            next_id: first_id,
            shutting_down: false,
        }
    }

    pub(crate) fn groups(&self) -> &Groups {
        &self.groups
    }

    pub(crate) fn groups_mut(&mut self) -> &mut Groups {
        &mut self.groups
    }

    /// The members of group `group` that serve on: named so, not replaced, not asked to stop,
    /// not ended; with their numbers, in id order.
    pub(crate) fn members(&self, group: &str) -> Vec<(u32, WorkerRef)> {
        self.slots
            .values()
            .filter(|s| s.answers_to_name() && !s.stop_requested() && !s.state().is_final())
            .filter_map(|s| member_index(group, &s.worker().name).map(|n| (n, s.worker().clone())))
            .collect()
    }

    /// Takes the records of group `group`'s ended members out (no process of theirs runs), so
    /// their names can be forked again.
    pub(crate) fn clear_ended_members(&mut self, group: &str) {
        self.slots.retain(|_, s| !(s.state().is_final() && member_index(group, &s.worker().name).is_some()));
    }

    /// The numbers of group `group` that no record holds, from 1 on.
    pub(crate) fn free_numbers(&self, group: &str) -> impl Iterator<Item = u32> + use<W> {
        let taken: std::collections::BTreeSet<u32> =
            self.slots.values().filter_map(|s| member_index(group, &s.worker().name)).collect();
        (1..).filter(move |n| !taken.contains(n))
    }

    pub(crate) fn get(&self, id: WorkerId) -> Option<&Slot<W>> {
        self.slots.get(&id)
    }

    /// Every slot, in id order.
    pub(crate) fn slots(&self) -> impl Iterator<Item = &Slot<W>> {
        self.slots.values()
    }

    pub(crate) fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Adds a slot for worker `name`, to be spawned by its supervisor (reached by `control`). A
    /// replacement (`replacing`) does not answer to its name until it takes over, and carries on
    /// the old worker's restart count and history. Refused once the cluster shuts down, and for
    /// a name in use (names address workers).
    pub(crate) fn add(
        &mut self,
        name: &str,
        options: WorkerOptions,
        control: W::Control,
        replacing: Option<Replacing>,
        now: Instant,
    ) -> Result<WorkerRef> {
        if self.shutting_down {
            return Err(Error::new(ErrorKind::InvalidState, "the cluster is shutting down; fork refused"));
        }
        // A replaced worker is on its way out: its name belongs to its replacement.
        let taken = self.slots.values().any(|s| s.worker().name == name && s.replaced_by().is_none());
        if replacing.is_none() && taken {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                "a worker with this name exists already; names address workers, so they must be unique",
            )
            .with_context("worker", name));
        }
        let replaced = match replacing {
            Some(how) => {
                let old = self.slots.get(&how.old).ok_or_else(|| {
                    Error::new(
                        ErrorKind::UnknownWorker,
                        format!("worker {name:?} left before its replacement"),
                    )
                })?;
                Some((old, how))
            }
            None => None,
        };
        let worker = WorkerRef { id: WorkerId(self.next_id), name: name.to_owned() };
        let slot = Slot::new(worker.clone(), options, control, replaced, now);
        self.next_id += 1;
        self.slots.insert(worker.id, slot);
        Ok(worker)
    }

    /// Gives worker `id` what happened at `now` and returns what to do. A worker no longer in the
    /// directory gets no process: one spawned for it is killed, and its supervisor finishes.
    pub(crate) fn handle(&mut self, id: WorkerId, input: Input<W::Link>, now: Instant) -> Vec<Action> {
        match (self.slots.get_mut(&id), input) {
            (Some(slot), input) => slot.handle(input, now, self.shutting_down),
            (None, Input::Spawned { .. }) => vec![Action::Signal(nix::sys::signal::Signal::SIGKILL)],
            (None, _) => vec![Action::Finish],
        }
    }

    /// Asks worker `id` to stop; see [`Slot::ask_stop`].
    pub(crate) fn ask_stop(&mut self, id: WorkerId) -> Option<StopTarget<W>> {
        self.slots.get_mut(&id)?.ask_stop()
    }

    /// Marks worker `id` as being replaced, if it may be.
    pub(crate) fn ask_replace(&mut self, id: WorkerId) -> bool {
        !self.shutting_down && self.slots.get_mut(&id).is_some_and(Slot::ask_replace)
    }

    /// Marks every worker whose name `which` accepts that may be replaced (a reload), and
    /// returns them in id order.
    pub(crate) fn ask_reload(&mut self, which: impl Fn(&str) -> bool) -> Vec<WorkerRef> {
        if self.shutting_down {
            return Vec::new();
        }
        self.slots
            .values_mut()
            .filter(|slot| which(&slot.worker().name))
            .filter_map(|slot| slot.ask_replace().then(|| slot.worker().clone()))
            .collect()
    }

    /// The replacement of `old` did not happen (`error`: it failed; `None`: it was not started).
    /// After a failed memory-limit replacement, none is tried again before `retry_after`.
    pub(crate) fn replacement_ended(
        &mut self,
        old: &WorkerRef,
        error: Option<&Error>,
        retry_after: Option<Instant>,
    ) -> Vec<Action> {
        if let Some(slot) = self.slots.get_mut(&old.id) {
            slot.replacement_ended(retry_after);
        }
        error
            .map(|err| {
                let error = std::sync::Arc::new(Error::from(WireError::from(err)));
                Action::Publish(Event::ReloadFailed { worker: old.clone(), error })
            })
            .into_iter()
            .collect()
    }

    /// Moves the name from `old` to its replacement `new`, in one step with the check that `new`
    /// is still ready (it may have crashed since it said so).
    pub(crate) fn take_over(&mut self, old: &WorkerRef, new: &WorkerRef) -> Result<Vec<Action>> {
        let still_ready = self
            .slots
            .get(&new.id)
            .is_some_and(|s| s.state() == super::WorkerState::Ready && !s.stop_requested());
        if !still_ready {
            return Err(Error::new(
                ErrorKind::WorkerExited,
                "the new worker stopped right after it was ready",
            ));
        }
        if let Some(slot) = self.slots.get_mut(&new.id) {
            slot.took_over();
        }
        if let Some(slot) = self.slots.get_mut(&old.id) {
            slot.replaced(new.id);
        }
        Ok(vec![Action::Publish(Event::Replaced { old: old.clone(), new: new.clone() })])
    }

    /// Takes worker `id`'s record out, if no process of it runs or will (a record never goes
    /// while its process may live, so every process stays someone's to reap). `false` if it
    /// stays.
    pub(crate) fn remove(&mut self, id: WorkerId) -> bool {
        match self.slots.get(&id) {
            Some(slot) if slot.removable() => self.slots.remove(&id).is_some(),
            Some(_) => false,
            None => true,
        }
    }

    /// The cluster shuts down: nothing new starts, no exit is revived. Returns every worker.
    pub(crate) fn begin_shutdown(&mut self) -> Vec<WorkerRef> {
        self.shutting_down = true;
        self.slots.values().map(|s| s.worker().clone()).collect()
    }

    /// The worker `selector` names: by id, or by name among those that answer to it.
    pub(crate) fn find(&self, selector: &WorkerSelector) -> Result<WorkerRef> {
        let found = self.slots.values().find(|s| match selector {
            WorkerSelector::Id(id) => s.worker().id == *id,
            WorkerSelector::Name(name) => s.worker().name == *name && s.answers_to_name(),
            // A selector of a newer peer names no worker here: an unknown-worker error.
            _ => false,
        });
        found.map(|s| s.worker().clone()).ok_or_else(|| {
            let names: Vec<&str> = self.slots.values().map(|s| s.worker().name.as_str()).collect();
            Error::new(
                ErrorKind::UnknownWorker,
                format!("no {selector} in this cluster; known workers: [{}]", names.join(", ")),
            )
            .with_context("target", selector)
        })
    }

    /// Where a command to `destination` goes.
    pub(crate) fn route(&self, destination: &Destination) -> Result<Route> {
        let entries: Vec<RouteEntry<'_>> = self
            .slots
            .values()
            .filter(|s| s.answers_to_name())
            .map(|s| RouteEntry { id: s.worker().id, name: &s.worker().name, connected: s.link().is_some() })
            .collect();
        route(destination, &entries)
    }
}
