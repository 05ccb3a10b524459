//! Where a worker stands in its supervision cycle, as its slot says and the API shows.

/// Where a worker is in its supervision cycle (its process, not its self-reported status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WorkerState {
    /// Spawned, not yet connected.
    Starting,
    /// Connected and authenticated, not yet ready.
    Connected,
    /// Ready for work.
    Ready,
    /// Crashed; waiting for its restart backoff.
    Restarting,
    /// Exited and not revived (clean exit, or no restart policy).
    Exited,
    /// Crashed too often; not revived any more.
    GaveUp,
    /// Exited after a shutdown request.
    Stopped,
}

impl WorkerState {
    /// True when no process runs and none will be started for this worker.
    pub fn is_final(self) -> bool {
        matches!(self, WorkerState::Exited | WorkerState::GaveUp | WorkerState::Stopped)
    }

    /// Lower-case name for tables.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Connected => "connected",
            WorkerState::Ready => "ready",
            WorkerState::Restarting => "restarting",
            WorkerState::Exited => "exited",
            WorkerState::GaveUp => "gave up",
            WorkerState::Stopped => "stopped",
        }
    }
}
