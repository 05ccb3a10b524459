//! Rolling reload: replace workers a few at a time, each new process first, so the cluster
//! never serves with fewer workers than it has, and a replacement that fails to start stops
//! the rollout while the old workers keep serving.

use std::time::{Duration, Instant};

use clusterfy_core::{Error, ErrorKind, Result, WorkerId, WorkerSelector};

use super::slot::Replacing;
use super::{DEFAULT_SHUTDOWN_TIMEOUT, Primary, WorkerState};
use crate::events::WorkerRef;

/// How [`Primary::reload`] replaces the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadOptions {
    at_once: usize,
    grace: Duration,
}

impl Default for ReloadOptions {
    /// One worker at a time, each old one with [`DEFAULT_SHUTDOWN_TIMEOUT`] of grace.
    fn default() -> Self {
        ReloadOptions { at_once: 1, grace: DEFAULT_SHUTDOWN_TIMEOUT }
    }
}

impl ReloadOptions {
    /// The defaults.
    pub fn new() -> Self {
        ReloadOptions::default()
    }

    /// How many workers are replaced at the same time (at least 1).
    #[must_use]
    pub fn at_once(mut self, workers: usize) -> Self {
        self.at_once = workers.max(1);
        self
    }

    /// The grace period each old worker has to finish what it serves after its shutdown
    /// request, before the stop signal (see [`Primary::shutdown_worker`]).
    #[must_use]
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }
}

impl Primary {
    /// Replaces every ready worker with a new process of the same program and options, a few at
    /// a time ([`ReloadOptions::at_once`]): start the new one, wait until it is ready, give it
    /// the name, then stop the old one gracefully (it stops accepting and finishes what it
    /// serves within [`ReloadOptions::grace`]). With shared listeners
    /// ([`PrimaryBuilder::listen`](super::PrimaryBuilder::listen)) no connection is refused
    /// meanwhile: the socket stays open and the other workers accept on it.
    ///
    /// The new process gets a new [`WorkerId`]; its name is the old one's. SIGHUP to the primary
    /// runs a reload with the default options (unless
    /// [`PrimaryBuilder::handle_signals`](super::PrimaryBuilder::handle_signals) is off).
    ///
    /// Ready means connected, unless the worker's program asked for
    /// [`WorkerBuilder::manual_ready`](crate::WorkerBuilder::manual_ready): then it is ready
    /// when it calls [`Worker::ready`](crate::Worker::ready), after it took its listener, say.
    /// If a new worker fails to get ready (it exits, or the ready timeout passes), the rollout
    /// stops: that new process is stopped, the old worker and every one not yet replaced keep
    /// serving, [`Event::ReloadFailed`](crate::events::Event::ReloadFailed) is published and the error is returned. Returns the
    /// `(old, new)` pairs replaced, in id order. One reload runs at a time; a second call waits.
    pub async fn reload(&self, options: ReloadOptions) -> Result<Vec<(WorkerRef, WorkerRef)>> {
        self.reload_where(options, |_| true).await
    }

    /// [`Primary::reload`] of group `group`'s members only (see [`Primary::fork_group`]); an
    /// unknown group is an error naming the groups.
    pub async fn reload_group(
        &self,
        group: &str,
        options: ReloadOptions,
    ) -> Result<Vec<(WorkerRef, WorkerRef)>> {
        self.inner.directory().groups().options(group)?;
        self.reload_where(options, |name| super::group::member_index(group, name).is_some()).await
    }

    async fn reload_where(
        &self,
        options: ReloadOptions,
        which: impl Fn(&str) -> bool,
    ) -> Result<Vec<(WorkerRef, WorkerRef)>> {
        let _one_at_a_time = self.inner.reloading.lock().await;
        let targets = self.inner.change(|d| d.ask_reload(which));
        let mut replaced = Vec::with_capacity(targets.len());
        let mut failure = None;
        for batch in targets.chunks(options.at_once) {
            if failure.is_some() {
                // Not started: these keep serving as they are.
                for worker in batch {
                    self.inner.change(|d| d.replacement_ended(worker, None, None));
                }
                continue;
            }
            let results = futures::future::join_all(
                batch.iter().map(|w| self.replace_one(w, options.grace, false, None)),
            )
            .await;
            for (old, result) in batch.iter().zip(results) {
                match result {
                    Ok(new) => replaced.push((old.clone(), new)),
                    Err(err) => {
                        failure.get_or_insert(err);
                    }
                }
            }
        }
        match failure {
            None => Ok(replaced),
            Some(err) => Err(err.with_context("replaced_before_failure", replaced.len())),
        }
    }

    /// Replaces one ready worker with a new process of the same program and options, new one
    /// first, as [`Primary::reload`] does for each worker (what `clusterfy restart NAME` does).
    /// Returns the new worker (a new id, the same name). Fails if the worker is not ready or is
    /// being replaced already.
    pub async fn restart_worker(&self, worker: impl Into<WorkerSelector>) -> Result<WorkerRef> {
        // Not while a scale may stop this worker, nor during a reload.
        let _one_at_a_time = self.inner.reloading.lock().await;
        let target = self.inner.find(&worker.into())?;
        if !self.inner.change(|d| d.ask_replace(target.id)) {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "the worker is not ready, or a replacement of it is under way; try again when it is ready",
            )
            .with_context("worker", &target));
        }
        self.replace_one(&target, DEFAULT_SHUTDOWN_TIMEOUT, false, None).await
    }

    /// Replaces one worker (already marked as being replaced): the new process first, then the
    /// old one, with `grace` to finish its work. Clears the mark when it fails, and then tries no
    /// memory-limit replacement again for `retry_after`. `as_restart` counts the replacement
    /// among the worker's restarts (the memory limit's).
    pub(super) async fn replace_one(
        &self,
        old: &WorkerRef,
        grace: Duration,
        as_restart: bool,
        retry_after: Option<Duration>,
    ) -> Result<WorkerRef> {
        let new = match self.start_replacement(old, as_restart).await {
            Ok(new) => new,
            Err(err) => {
                let err = err.with_context("worker", old);
                let retry = retry_after.map(|after| Instant::now() + after);
                let actions = self.inner.change(|d| d.replacement_ended(old, Some(&err), retry));
                self.inner.publish(actions);
                return Err(err);
            }
        };
        match self.shutdown_worker(old.id, grace).await {
            Ok(outcome) => tracing::debug!(worker = %old, ?outcome, "replaced worker stopped"),
            Err(err) => tracing::warn!(worker = %old, error = %err, "stopping a replaced worker failed"),
        }
        // Its name lives on in the replacement; the old record would only show it twice.
        if !self.inner.change(|d| d.remove(old.id)) {
            tracing::warn!(worker = %old, "a replaced worker's process outlived its stop; its record stays");
        }
        Ok(new)
    }

    /// Forks the replacement of `old` and waits until it is ready; stops it again if it is not.
    async fn start_replacement(&self, old: &WorkerRef, as_restart: bool) -> Result<WorkerRef> {
        let options = {
            let directory = self.inner.directory();
            if directory.shutting_down() {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    "the cluster is shutting down; reload refused",
                ));
            }
            match directory.get(old.id) {
                None => {
                    return Err(Error::new(
                        ErrorKind::UnknownWorker,
                        format!("worker {:?} left the cluster before its replacement started", old.name),
                    ));
                }
                // Stopped, or crashed, while the replacement waited (a memory limit's backoff).
                Some(slot) if slot.stop_requested() || slot.state() != WorkerState::Ready => {
                    return Err(Error::new(
                        ErrorKind::InvalidState,
                        format!("worker {:?} is no longer ready, so it is not replaced", old.name),
                    ));
                }
                Some(slot) => slot.options().clone(),
            }
        };
        let replacing = Replacing { old: old.id, as_restart };
        let new = super::supervisor::fork(&self.inner, &old.name, options, Some(replacing)).await?;
        let taken_over = match self.wait_ready(new.id).await {
            Ok(()) => self.inner.change(|d| d.take_over(old, &new)),
            Err(err) => Err(err),
        };
        if let Err(err) = taken_over.map(|actions| self.inner.publish(actions)) {
            let _ = self.shutdown_worker(new.id, Duration::ZERO).await;
            self.inner.change(|d| d.remove(new.id));
            return Err(Error::new(
                err.kind(),
                format!(
                    "the new process did not get ready, so the reload stopped and the old one keeps serving: {}",
                    err.message()
                ),
            ));
        }
        Ok(new)
    }

    /// Waits until worker `id` is ready, within the ready timeout; fails if it exits first.
    async fn wait_ready(&self, id: WorkerId) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.inner.ready_timeout;
        let mut changed = self.inner.changed.subscribe();
        loop {
            let state = self.inner.directory().get(id).map(|slot| (slot.state(), slot.readiness()));
            match state {
                None => return Err(Error::new(ErrorKind::WorkerExited, "the new worker left the directory")),
                Some((WorkerState::Ready, _)) => return Ok(()),
                Some((WorkerState::Stopped, _)) => {
                    return Err(Error::new(
                        ErrorKind::WorkerExited,
                        "the new worker was stopped before it was ready",
                    ));
                }
                // A replacement that crashed once has failed, even if its policy would revive it.
                Some((WorkerState::Restarting, _)) => {
                    return Err(Error::new(
                        ErrorKind::WorkerExited,
                        "the new worker crashed before it was ready; see its stderr",
                    ));
                }
                Some((_, Err(err))) => return Err(err),
                Some((_, Ok(_))) => {}
            }
            if tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
                let waited = self.inner.ready_timeout;
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the new worker was not ready within {waited:?}; does its program connect (and call \
                         Worker::ready, with manual_ready)?"
                    ),
                ));
            }
        }
    }
}
