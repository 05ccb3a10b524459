//! Worker groups at runtime: fork a group of N workers under one name, and change N while the
//! cluster serves (pm2 `scale`, gunicorn's TTIN and TTOU). Scaling down stops the newest members
//! by the stop ladder; their listening sockets are steered out first, so no connection is lost.

use std::sync::atomic::Ordering;

use clusterfy_core::{Command, Error, ErrorKind, Result};

use super::group::member_name;
use super::{DEFAULT_SHUTDOWN_TIMEOUT, Primary, ShutdownOutcome, WorkerOptions};
use crate::events::WorkerRef;
use crate::handlers::BroadcastReply;

/// What [`Primary::scale`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Scaled {
    /// The members forked, in number order.
    pub started: Vec<WorkerRef>,
    /// The members stopped, newest first, with how each stop ended.
    pub stopped: Vec<(WorkerRef, ShutdownOutcome)>,
}

impl Primary {
    /// Forks a group of `workers` workers with `options`, named `<group>-1` to `<group>-N`, so
    /// that [`Primary::scale`], [`Primary::reload_group`], [`Primary::broadcast_group`],
    /// [`Primary::run_group`] and `clusterfy scale` / `clusterfy reload` can address them
    /// together. A worker forked by hand under a member's name belongs to the group too.
    /// Returns once every member's process is spawned (call [`Primary::ready`] to wait until
    /// they serve).
    pub async fn fork_group(
        &self,
        group: &str,
        workers: usize,
        options: WorkerOptions,
    ) -> Result<Vec<WorkerRef>> {
        check_count(group, workers)?;
        self.inner.change(|d| d.groups_mut().register(group, options))?;
        Ok(self.scale(group, workers).await?.started)
    }

    /// Grows or shrinks group `group` to `workers` members. Growing forks the lowest free
    /// numbers; shrinking stops the highest-numbered members (the newest) by the stop ladder
    /// with [`DEFAULT_SHUTDOWN_TIMEOUT`] of grace, all at once, and forgets them. One scale or
    /// reload runs at a time; a second waits. SIGTTIN and SIGTTOU to the primary add and remove
    /// one member when it has exactly one group (gunicorn's signals).
    ///
    /// Fails for 0 (stop the members with [`Primary::shutdown_worker`], or the cluster with
    /// [`Primary::shutdown`]), above [`MAX_GROUP_WORKERS`], and for a group that does not exist
    /// (the error names those that do). If a fork fails, the members started before it stay.
    pub async fn scale(&self, group: &str, workers: usize) -> Result<Scaled> {
        check_count(group, workers)?;
        let _one_at_a_time = self.inner.reloading.lock().await;
        let (options, mut members) = {
            let directory = self.inner.directory();
            (directory.groups().options(group)?.clone(), directory.members(group))
        };
        let mut scaled = Scaled::default();
        if members.len() < workers {
            let numbers: Vec<u32> = self.inner.change(|d| {
                d.clear_ended_members(group);
                d.free_numbers(group).take(workers - members.len()).collect()
            });
            for n in numbers {
                let started = self.fork(&member_name(group, n), options.clone()).await;
                let started =
                    started.map_err(|e| e.with_context("started_before_failure", scaled.started.len()))?;
                scaled.started.push(started);
            }
            tracing::info!(group, workers, started = scaled.started.len(), "group scaled up");
        } else if members.len() > workers {
            let extra = members.len() - workers;
            members.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
            let newest: Vec<WorkerRef> = members.into_iter().take(extra).map(|(_, w)| w).collect();
            let stops = newest.iter().map(|w| self.shutdown_worker(w.id, DEFAULT_SHUTDOWN_TIMEOUT));
            let outcomes = futures::future::join_all(stops).await;
            for (worker, outcome) in newest.into_iter().zip(outcomes) {
                let outcome = outcome.map_err(|e| e.with_context("worker", &worker.name))?;
                if !self.inner.change(|d| d.remove(worker.id)) {
                    tracing::warn!(worker = %worker, "a stopped member's process outlived its stop; its record stays");
                }
                scaled.stopped.push((worker, outcome));
            }
            tracing::info!(group, workers, stopped = scaled.stopped.len(), "group scaled down");
        }
        Ok(scaled)
    }

    /// [`Primary::broadcast`] to group `group`'s connected members only.
    pub async fn broadcast_group<C: Command>(
        &self,
        group: &str,
        command: C,
    ) -> Result<Vec<BroadcastReply<C::Reply>>> {
        let ids = {
            let directory = self.inner.directory();
            directory.groups().options(group)?;
            directory.members(group).into_iter().map(|(_, w)| w.id).collect()
        };
        self.broadcast_to(ids, format!("group {group:?}"), command).await
    }

    /// [`Primary::run`] on one ready member of group `group`, each call the next one in turn.
    pub async fn run_group<C: Command>(&self, group: &str, command: C) -> Result<C::Reply> {
        let member = {
            let directory = self.inner.directory();
            directory.groups().options(group)?;
            let ready: Vec<WorkerRef> = directory
                .members(group)
                .into_iter()
                .filter(|(_, w)| directory.get(w.id).is_some_and(|s| s.state() == super::WorkerState::Ready))
                .map(|(_, w)| w)
                .collect();
            if ready.is_empty() {
                return Err(Error::new(
                    ErrorKind::WorkerExited,
                    format!("no member of group {group:?} is ready to run the command"),
                )
                .with_context("command", C::NAME));
            }
            ready[self.inner.next_in_group.fetch_add(1, Ordering::Relaxed) % ready.len()].clone()
        };
        self.run(member.id, command).await
    }
}

/// Most workers a group may have: far more than cores on any host, few enough that a typo
/// (`scale http 4000000000`) is an error and not a fork storm.
pub const MAX_GROUP_WORKERS: usize = 1024;

fn check_count(group: &str, workers: usize) -> Result<()> {
    if workers > MAX_GROUP_WORKERS {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "a group has at most {MAX_GROUP_WORKERS} workers, so {group:?} cannot be scaled to {workers}"
            ),
        )
        .with_context("group", group));
    }
    if workers == 0 {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "a group keeps at least 1 worker, so {group:?} cannot be scaled to 0; stop its workers with \
                 Primary::shutdown_worker (clusterfy stop NAME), or the cluster with Primary::shutdown"
            ),
        )
        .with_context("group", group));
    }
    Ok(())
}
