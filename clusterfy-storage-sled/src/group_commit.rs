//! Group commit: concurrent `flush()` callers share one sled flush.
//!
//! Flushes are numbered (generations) and never overlap. A caller needs a flush that *starts after
//! its call*, because only such a flush is sure to cover every write that completed before the call:
//!
//! - when no flush runs, the caller starts the next generation itself;
//! - when one runs, the caller needs the next generation, which the running flush's leader starts as
//!   soon as it finishes. Everyone who arrives meanwhile needs that same generation, so one flush
//!   serves them all.
//!
//! With `n` callers arriving during a flush, the cost is two flushes, not `n`. The leader is a
//! blocking task, not one of the callers, so a caller that is cancelled never strands the others.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::error::FlushFailure;

/// What group commit flushes: the sled database, or a stand-in in tests.
pub(crate) trait Flush: Send + Sync + 'static {
    /// Makes every write that completed before the call durable; blocks until then.
    fn flush_now(&self) -> Result<(), sled::Error>;
}

#[derive(Debug, Default)]
struct State {
    /// The generation of the flush started last (0: none yet).
    started: u64,
    /// The highest generation a caller waits for.
    requested: u64,
    /// Whether a leader is running flushes.
    running: bool,
    /// How many flushes actually ran (for tests and measurements).
    flushes: u64,
}

/// What the completed flushes achieved.
#[derive(Debug, Clone)]
struct Done {
    /// The generation of the flush completed last.
    generation: u64,
    /// The generation of the latest flush that succeeded (0: none yet).
    succeeded: u64,
    /// Why the flush completed last failed, if it did.
    failure: Option<FlushFailure>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    // Written only while `state` is locked, so generations are published in order.
    done: watch::Sender<Done>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves `State` consistent before anything that could panic, so a
        // poisoned lock still guards valid state.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The group-commit coordinator of one database.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
}

/// A registered flush request; [`Ticket::wait`] resolves once a flush that started after the
/// registration has completed.
#[derive(Debug)]
pub(crate) struct Ticket {
    shared: Arc<Shared>,
    generation: u64,
}

impl GroupCommit {
    pub(crate) fn new() -> Self {
        let (done, _) = watch::channel(Done { generation: 0, succeeded: 0, failure: None });
        GroupCommit { shared: Arc::new(Shared { state: Mutex::new(State::default()), done }) }
    }

    /// Registers a flush request, starting a leader on `runtime`'s blocking pool if none runs.
    ///
    /// The leader holds `target` only weakly between flushes, so dropping the storage is never
    /// delayed by an idle leader and the database's file lock is free once the last flush returns.
    pub(crate) fn begin<T: Flush>(&self, target: &Arc<T>, runtime: &Handle) -> Ticket {
        let (generation, lead) = {
            let mut state = self.shared.lock();
            // The running flush (if any) may have started before this call: wait for the next one.
            let generation = state.started + 1;
            state.requested = state.requested.max(generation);
            let lead = !state.running;
            if lead {
                state.running = true;
                state.started = generation;
            }
            (generation, lead)
        };
        if lead {
            let leader = Leader { shared: Arc::clone(&self.shared), generation, finished: false };
            let target = Arc::downgrade(target);
            // If the runtime is shutting down the closure is dropped unrun, and the leader's Drop
            // fails the waiting callers instead of stranding them.
            drop(runtime.spawn_blocking(move || leader.run(&target)));
        }
        Ticket { shared: Arc::clone(&self.shared), generation }
    }

    /// How many flushes ran so far.
    #[cfg(test)]
    pub(crate) fn flushes(&self) -> u64 {
        self.shared.lock().flushes
    }
}

impl Ticket {
    /// Waits for a flush that started after [`GroupCommit::begin`] returned this ticket.
    pub(crate) async fn wait(self) -> Result<(), FlushFailure> {
        let mut done = self.shared.done.subscribe();
        match done.wait_for(|done| done.generation >= self.generation).await {
            // Any flush at or after our generation started after our call, so one success among
            // them is enough; if they all failed, the latest failure says why.
            Ok(done) if done.succeeded >= self.generation => Ok(()),
            Ok(done) => Err(done.failure.clone().unwrap_or(FlushFailure::NotRun)),
            // Unreachable: the sender lives in `shared`, which this ticket keeps alive.
            Err(_) => Err(FlushFailure::NotRun),
        }
    }
}

/// Runs flushes on a blocking thread until no caller waits for a later generation.
struct Leader {
    shared: Arc<Shared>,
    /// The generation being flushed.
    generation: u64,
    finished: bool,
}

impl Leader {
    fn run<T: Flush>(mut self, target: &Weak<T>) {
        loop {
            let result = match target.upgrade() {
                Some(target) => {
                    self.shared.lock().flushes += 1;
                    let result = target.flush_now().map_err(FlushFailure::Sled);
                    // Released before publishing, so a caller that drops the storage after its
                    // flush returns drops the last reference and frees the database lock.
                    drop(target);
                    result
                }
                None => Err(FlushFailure::Closed),
            };
            if let Err(failure) = &result {
                tracing::warn!(?failure, generation = self.generation, "sled flush failed");
            }
            let mut state = self.shared.lock();
            let generation = self.generation;
            self.shared.done.send_modify(|done| {
                done.generation = generation;
                match result {
                    Ok(()) => {
                        done.succeeded = generation;
                        done.failure = None;
                    }
                    Err(failure) => done.failure = Some(failure),
                }
            });
            if state.requested > self.generation {
                state.started += 1;
                self.generation = state.started;
            } else {
                state.running = false;
                self.finished = true;
                return;
            }
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // The flush panicked, or the task was dropped unrun: fail every caller waiting now, and let
        // the next caller start a fresh leader.
        let mut state = self.shared.lock();
        let generation = state.requested.max(self.generation);
        state.started = state.started.max(generation);
        state.running = false;
        self.shared.done.send_modify(|done| {
            done.generation = generation;
            done.failure = Some(FlushFailure::NotRun);
        });
    }
}

#[cfg(test)]
// A failed unwrap is the clearest failure report a test can give.
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Condvar;

    use super::*;

    /// A flush that blocks until the test hands out a permit, and counts how often it ran.
    #[derive(Default)]
    struct GatedFlush(Arc<Gate>);

    #[derive(Default)]
    struct Gate {
        state: Mutex<GateState>,
        changed: Condvar,
    }

    #[derive(Default)]
    struct GateState {
        permits: u64,
        entered: u64,
        completed: u64,
        fail: bool,
        panic: bool,
    }

    impl Gate {
        fn state(&self) -> MutexGuard<'_, GateState> {
            self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
        }

        fn allow(&self, permits: u64) {
            self.state().permits += permits;
            self.changed.notify_all();
        }

        /// Blocks until `n` flushes have entered `flush_now`.
        fn wait_entered(&self, n: u64) {
            let mut state = self.state();
            while state.entered < n {
                state = self.changed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        }

        fn completed(&self) -> u64 {
            self.state().completed
        }
    }

    impl std::ops::Deref for GatedFlush {
        type Target = Gate;

        fn deref(&self) -> &Gate {
            &self.0
        }
    }

    impl Flush for GatedFlush {
        fn flush_now(&self) -> Result<(), sled::Error> {
            let mut state = self.state();
            state.entered += 1;
            self.changed.notify_all();
            while state.permits == 0 {
                state = self.changed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            state.permits -= 1;
            state.completed += 1;
            if state.panic {
                state.panic = false;
                drop(state);
                panic!("deliberate panic in a flush (expected by a test)");
            }
            if state.fail {
                return Err(sled::Error::Unsupported("deliberate failure".into()));
            }
            Ok(())
        }
    }

    async fn wait_entered(flush: &Arc<GatedFlush>, n: u64) {
        let flush = Arc::clone(flush);
        tokio::task::spawn_blocking(move || flush.wait_entered(n)).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_arriving_during_a_flush_share_the_next_one() {
        let flush = Arc::new(GatedFlush::default());
        let commit = GroupCommit::new();
        let runtime = Handle::current();
        let first = commit.begin(&flush, &runtime);
        wait_entered(&flush, 1).await;
        // 255 callers arrive while flush 1 is running: none may be served by it.
        let rest: Vec<_> = (0..255).map(|_| commit.begin(&flush, &runtime)).collect();
        assert!(rest.iter().all(|ticket| ticket.generation == 2));
        flush.allow(2);
        first.wait().await.unwrap();
        for ticket in rest {
            ticket.wait().await.unwrap();
        }
        assert_eq!(flush.completed(), 2, "256 flush calls should take exactly 2 flushes");
        assert_eq!(commit.flushes(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flush_that_started_before_the_call_does_not_serve_it() {
        let flush = Arc::new(GatedFlush::default());
        let commit = GroupCommit::new();
        let runtime = Handle::current();
        let early = commit.begin(&flush, &runtime);
        wait_entered(&flush, 1).await;
        let late = commit.begin(&flush, &runtime);
        flush.allow(1);
        early.wait().await.unwrap();
        // Flush 1 is done; the late caller must still be waiting for flush 2, which the leader
        // starts on its own and which now blocks at the gate.
        wait_entered(&flush, 2).await;
        assert_eq!(flush.completed(), 1);
        assert!(commit.shared.done.borrow().generation < late.generation);
        flush.allow(1);
        late.wait().await.unwrap();
        assert_eq!(flush.completed(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_arriving_when_idle_starts_a_new_flush() {
        let flush = Arc::new(GatedFlush::default());
        flush.allow(u64::MAX / 2);
        let commit = GroupCommit::new();
        let runtime = Handle::current();
        for round in 1..=5 {
            commit.begin(&flush, &runtime).wait().await.unwrap();
            assert_eq!(flush.completed(), round);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_flush_fails_every_caller_it_served_and_the_next_can_succeed() {
        let flush = Arc::new(GatedFlush::default());
        let commit = GroupCommit::new();
        let runtime = Handle::current();
        let first = commit.begin(&flush, &runtime);
        wait_entered(&flush, 1).await;
        let group: Vec<_> = (0..8).map(|_| commit.begin(&flush, &runtime)).collect();
        flush.state().fail = true;
        flush.allow(2);
        assert!(matches!(first.wait().await, Err(FlushFailure::Sled(_))));
        for ticket in group {
            assert!(matches!(ticket.wait().await, Err(FlushFailure::Sled(_))));
        }
        flush.state().fail = false;
        flush.allow(1);
        commit.begin(&flush, &runtime).wait().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_flush_fails_its_callers_instead_of_hanging_them() {
        let flush = Arc::new(GatedFlush::default());
        let commit = GroupCommit::new();
        let runtime = Handle::current();
        let first = commit.begin(&flush, &runtime);
        wait_entered(&flush, 1).await;
        let waiting = commit.begin(&flush, &runtime);
        flush.state().panic = true;
        flush.allow(1);
        assert!(matches!(first.wait().await, Err(FlushFailure::NotRun)));
        assert!(matches!(waiting.wait().await, Err(FlushFailure::NotRun)));
        // The next caller gets a fresh leader.
        flush.allow(1);
        commit.begin(&flush, &runtime).wait().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_target_fails_waiting_callers_as_closed() {
        let flush = Arc::new(GatedFlush::default());
        let commit = GroupCommit::new();
        let runtime = Handle::current();
        let first = commit.begin(&flush, &runtime);
        wait_entered(&flush, 1).await;
        let waiting = commit.begin(&flush, &runtime);
        let weak = Arc::downgrade(&flush);
        let gate = Arc::clone(&flush.0);
        // The running flush now holds the only strong reference; the next flush finds it gone.
        drop(flush);
        gate.allow(1);
        first.wait().await.unwrap();
        assert!(matches!(waiting.wait().await, Err(FlushFailure::Closed)));
        assert!(weak.upgrade().is_none());
        assert_eq!(gate.completed(), 1);
    }

    #[test]
    fn a_leader_on_a_shut_down_runtime_fails_its_callers() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let handle = runtime.handle().clone();
        drop(runtime);
        let flush = Arc::new(GatedFlush::default());
        let commit = GroupCommit::new();
        let ticket = commit.begin(&flush, &handle);
        let check = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert!(matches!(check.block_on(ticket.wait()), Err(FlushFailure::NotRun)));
        assert_eq!(flush.completed(), 0);
    }
}
