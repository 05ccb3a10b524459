//! How a worker is started and supervised.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::DEFAULT_SHUTDOWN_TIMEOUT;
use super::restart::RestartPolicy;

/// What to run as a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Program {
    /// The executable.
    pub path: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
}

impl Program {
    /// `path` with `args`.
    pub fn new(path: impl Into<PathBuf>, args: impl IntoIterator<Item = impl Into<OsString>>) -> Self {
        Program { path: path.into(), args: args.into_iter().map(Into::into).collect() }
    }
}

/// How the primary checks that a worker is responsive: it pings the worker's connection every
/// `interval`, and a worker that has not answered a ping within `timeout` is killed and
/// restarted under its policy (like gunicorn's worker timeout or systemd's `WatchdogSec`).
///
/// The ping is answered by the worker's connection task, not by a handler, so a worker that is
/// merely busy answers; one whose runtime is blocked (a handler that blocks a current-thread
/// runtime, a deadlock of every runtime thread) does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Heartbeat {
    /// Time between pings.
    pub interval: Duration,
    /// Time a ping may stay unanswered.
    pub timeout: Duration,
}

impl Heartbeat {
    /// A ping every `interval`, unresponsive after `timeout` without an answer.
    pub const fn new(interval: Duration, timeout: Duration) -> Self {
        Heartbeat { interval, timeout }
    }
}

/// Shortest heartbeat interval and timeout accepted.
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

/// The default [`Heartbeat`]: a ping every 5 s, unresponsive after 10 s without an answer
/// (gunicorn's default worker timeout is 30 s; systemd has no watchdog unless configured).
pub const DEFAULT_HEARTBEAT: Heartbeat =
    Heartbeat { interval: Duration::from_secs(5), timeout: Duration::from_secs(10) };

/// Options of one forked worker (the original's `ClusterfyWorkerOptions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerOptions {
    pub(crate) restart: Option<RestartPolicy>,
    pub(crate) program: Option<Program>,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) heartbeat: Option<Heartbeat>,
    pub(crate) max_memory: Option<u64>,
    pub(crate) memory_limit_grace: Duration,
    pub(crate) capture_output: Option<bool>,
}

impl Default for WorkerOptions {
    /// No revival, the current binary, the [`DEFAULT_HEARTBEAT`], no memory limit.
    fn default() -> Self {
        WorkerOptions {
            restart: None,
            program: None,
            env: Vec::new(),
            heartbeat: Some(DEFAULT_HEARTBEAT),
            max_memory: None,
            memory_limit_grace: DEFAULT_SHUTDOWN_TIMEOUT,
            capture_output: None,
        }
    }
}

impl WorkerOptions {
    /// Revive the worker after every crash (non-zero exit code or a signal) with the default
    /// [`RestartPolicy`] — the original's `{revive: true}`.
    pub fn revive() -> Self {
        WorkerOptions::default().restart_policy(RestartPolicy::default())
    }

    /// Revive the worker after crashes with `policy`.
    #[must_use]
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.restart = Some(policy);
        self
    }

    /// Run `program` instead of re-executing the current binary with its arguments.
    #[must_use]
    pub fn program(mut self, program: Program) -> Self {
        self.program = Some(program);
        self
    }

    /// How the primary checks that the worker is responsive ([`DEFAULT_HEARTBEAT`] unless set);
    /// `None` turns the check off.
    #[must_use]
    pub fn heartbeat(mut self, heartbeat: Option<Heartbeat>) -> Self {
        // A ping loop without a pause, or a timeout no answer can meet, would help nobody.
        self.heartbeat = heartbeat.map(|h| Heartbeat {
            interval: h.interval.max(MIN_HEARTBEAT),
            timeout: h.timeout.max(MIN_HEARTBEAT),
        });
        self
    }

    /// Replaces the worker when its resident memory (RSS) exceeds `bytes`: a new process is
    /// started first and, once it is ready, the old one is stopped gracefully, as in a
    /// [`Primary::reload`](super::Primary::reload), with [`Event::MemoryLimit`] naming both
    /// figures. The primary samples every worker's memory at the interval set with
    /// [`PrimaryBuilder::sample_interval`](super::PrimaryBuilder::sample_interval) (default
    /// 1 s; pm2's `max_memory_restart` polls every 30 s).
    ///
    /// [`Event::MemoryLimit`]: crate::events::Event::MemoryLimit
    ///
    /// Each such replacement counts as a restart of the worker (in [`WorkerInfo::restarts`] and
    /// the statistics) and follows its [`RestartPolicy`] (the default one if it has none): the
    /// policy's backoff before the replacement, and once the replacements pass its intensity
    /// limit, the limit is taken to be below what the program needs: the worker is stopped for
    /// good, with [`Event::GaveUp`] naming [`GiveUpCause::MemoryLimit`].
    ///
    /// [`WorkerInfo::restarts`]: super::WorkerInfo::restarts
    /// [`Event::GaveUp`]: crate::events::Event::GaveUp
    /// [`GiveUpCause::MemoryLimit`]: crate::events::GiveUpCause::MemoryLimit
    #[must_use]
    pub fn max_memory(mut self, bytes: u64) -> Self {
        self.max_memory = Some(bytes);
        self
    }

    /// The grace period the old process of a memory-limit replacement has to finish its work
    /// once its replacement is ready, before the stop signal (default
    /// [`DEFAULT_SHUTDOWN_TIMEOUT`]; see [`Primary::shutdown_worker`](super::Primary::shutdown_worker)).
    #[must_use]
    pub fn memory_limit_grace(mut self, grace: Duration) -> Self {
        self.memory_limit_grace = grace;
        self
    }

    /// Whether the primary captures the worker's stdout and stderr (`pm2 logs`): each line is
    /// echoed on the primary's stderr as `[name] line`, kept in a ring of the last
    /// [`LOG_RING_LINES`](crate::primary::LOG_RING_LINES) per worker, and read with
    /// [`Primary::logs`](super::Primary::logs), [`Primary::follow_logs`](super::Primary::follow_logs)
    /// or `clusterfy logs`. The default is on when the primary has a control socket
    /// ([`PrimaryBuilder::control`](super::PrimaryBuilder::control): someone may ask for the
    /// logs), off otherwise (the worker writes to the primary's own stdout and stderr).
    #[must_use]
    pub fn capture_output(mut self, capture: bool) -> Self {
        self.capture_output = Some(capture);
        self
    }

    /// Sets an extra environment variable for the worker process.
    #[must_use]
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}
