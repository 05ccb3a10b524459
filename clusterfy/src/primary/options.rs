//! How a worker is started and supervised.

use std::ffi::OsString;
use std::path::PathBuf;

use super::restart::RestartPolicy;

/// What to run as a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Options of one forked worker (the original's `ClusterfyWorkerOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerOptions {
    pub(crate) restart: Option<RestartPolicy>,
    pub(crate) program: Option<Program>,
    pub(crate) env: Vec<(OsString, OsString)>,
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

    /// Sets an extra environment variable for the worker process.
    #[must_use]
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}
