//! What can go wrong in this backend, and how it is told to the user as a
//! [`clusterfy_core::Error`]: always with the database directory as `path` context, and with what
//! to do about it.

use std::io;
use std::path::PathBuf;

use clusterfy_core::{Error, ErrorKind};

/// The operation that failed, named in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Open,
    Get,
    ScanPrefix,
    ApplyBatch,
    Flush,
    Close,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Open => "open",
            Op::Get => "get",
            Op::ScanPrefix => "prefix scan",
            Op::ApplyBatch => "batch",
            Op::Flush => "flush",
            Op::Close => "close",
        }
    }
}

/// Why a shared flush (group commit) did not make the writes durable. Cloned to every caller the
/// flush served, so it holds no `Error` (which is not `Clone`).
#[derive(Debug, Clone)]
pub(crate) enum FlushFailure {
    /// sled's flush failed.
    Sled(sled::Error),
    /// The flush never ran or did not finish: the blocking task was dropped (the runtime is
    /// shutting down) or panicked.
    NotRun,
    /// The storage was dropped before the flush could start.
    Closed,
}

#[derive(Debug)]
pub(crate) enum SledError {
    /// The path given to the builder is empty.
    EmptyPath,
    /// Another process (or another `SledStorage` in this one) holds the database's file lock.
    Locked { path: PathBuf, source: sled::Error },
    /// sled returned an error.
    Sled { op: Op, path: PathBuf, source: sled::Error },
    /// A flush shared with other callers failed.
    Flush { path: PathBuf, failure: FlushFailure },
    /// The blocking task running the sled call panicked, or was dropped because the runtime is
    /// shutting down.
    Task { op: Op, path: PathBuf, source: tokio::task::JoinError },
    /// The call was polled outside a tokio runtime, so there is no thread pool for sled's
    /// blocking calls.
    NoRuntime { op: Op, path: PathBuf },
}

impl SledError {
    /// Classifies an error of `op`: a failed lock at open becomes [`SledError::Locked`].
    pub(crate) fn sled(op: Op, path: PathBuf, source: sled::Error) -> Self {
        if op == Op::Open && is_lock_error(&source) {
            SledError::Locked { path, source }
        } else {
            SledError::Sled { op, path, source }
        }
    }
}

/// Whether `err` is sled's report that it could not take the exclusive lock on its data file.
///
/// sled 0.34 reports it only as an `io::ErrorKind::Other` with a fixed message
/// (`could not acquire lock on "<dir>/db": ...`, from `Config::try_lock`); the unit test
/// `second_open_of_a_held_directory_fails_fast_with_advice` pins it down for the sled version
/// in use.
fn is_lock_error(err: &sled::Error) -> bool {
    match err {
        sled::Error::Io(io) => {
            io.kind() == io::ErrorKind::Other && io.to_string().starts_with("could not acquire lock on")
        }
        _ => false,
    }
}

fn io_advice(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            "the directory and its files must be writable by the user running the primary"
        }
        io::ErrorKind::NotADirectory | io::ErrorKind::AlreadyExists => {
            "the path must be a directory (sled creates it if it is missing), not a file"
        }
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            "the disk is full: free space, then restart the primary"
        }
        _ => "check the disk and the directory; the operating system error follows",
    }
}

fn sled_error(op: Op, path: &std::path::Path, source: sled::Error) -> Error {
    let dir = path.display();
    let (kind, message) = match &source {
        sled::Error::Io(io) => {
            let kind = match (op, io.kind()) {
                (
                    Op::Open,
                    io::ErrorKind::PermissionDenied
                    | io::ErrorKind::NotADirectory
                    | io::ErrorKind::AlreadyExists
                    | io::ErrorKind::ReadOnlyFilesystem,
                ) => ErrorKind::Config,
                _ => ErrorKind::Io,
            };
            (kind, format!("sled {} failed on the database at {dir}: {}", op.as_str(), io_advice(io)))
        }
        sled::Error::Corruption { at, .. } => (
            ErrorKind::Storage,
            format!(
                "the sled database at {dir} is corrupt (found during {}{}); stop the primary, then restore \
                 the directory from a backup or move it aside to start with empty storage",
                op.as_str(),
                at.map(|at| format!(" at {at:?}")).unwrap_or_default(),
            ),
        ),
        sled::Error::Unsupported(why) if op == Op::Open => (
            ErrorKind::Config,
            format!(
                "sled cannot open the database at {dir} with these options ({why}); open it with the \
                 options it was created with"
            ),
        ),
        sled::Error::Unsupported(why) => {
            (ErrorKind::Storage, format!("sled refused the {} on the database at {dir}: {why}", op.as_str()))
        }
        sled::Error::ReportableBug(what) => (
            ErrorKind::Storage,
            format!(
                "sled hit an internal bug during {} on the database at {dir} ({what}); restart the \
                 primary, and report it to sled if it repeats",
                op.as_str()
            ),
        ),
        sled::Error::CollectionNotFound(_) => (
            ErrorKind::Storage,
            format!(
                "sled lost its default tree during {} on the database at {dir}; restart the primary",
                op.as_str()
            ),
        ),
    };
    Error::new(kind, message).with_context("path", dir).with_source(source)
}

impl From<SledError> for Error {
    fn from(err: SledError) -> Self {
        match err {
            SledError::EmptyPath => Error::new(
                ErrorKind::Config,
                "the sled database path is empty: give SledStorage::open the directory that holds (or \
                 will hold) the shared storage",
            ),
            SledError::Locked { path, source } => Error::new(
                ErrorKind::Storage,
                format!(
                    "cannot open the sled database at {}: another process holds its lock, probably another \
                     Clusterfy primary using the same directory (or this process opened it already); stop \
                     that primary, or give each primary its own storage directory",
                    path.display()
                ),
            )
            .with_context("path", path.display())
            .with_source(source),
            SledError::Sled { op, path, source } => sled_error(op, &path, source),
            SledError::Flush { path, failure } => match failure {
                FlushFailure::Sled(source) => sled_error(Op::Flush, &path, source),
                FlushFailure::NotRun => Error::new(
                    ErrorKind::Storage,
                    format!(
                        "the flush of the sled database at {} did not complete (its thread panicked or the \
                         runtime is shutting down), so recent writes may not be durable",
                        path.display()
                    ),
                )
                .with_context("path", path.display()),
                FlushFailure::Closed => Error::new(
                    ErrorKind::Closed,
                    format!(
                        "the sled database at {} was closed before the flush started, so recent writes \
                         may not be durable",
                        path.display()
                    ),
                )
                .with_context("path", path.display()),
            },
            SledError::Task { op, path, source } => {
                let why =
                    if source.is_panic() { "panicked" } else { "was cancelled (runtime shutting down)" };
                Error::new(
                    ErrorKind::Storage,
                    format!(
                        "the sled {} on the database at {} {why}; its outcome is unknown",
                        op.as_str(),
                        path.display()
                    ),
                )
                .with_context("path", path.display())
                .with_source(source)
            }
            SledError::NoRuntime { op, path } => Error::new(
                ErrorKind::InvalidState,
                format!(
                    "the sled {} on the database at {} must run inside a tokio runtime, which runs sled's \
                     blocking calls on its blocking thread pool",
                    op.as_str(),
                    path.display()
                ),
            )
            .with_context("path", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> PathBuf {
        PathBuf::from("/data/cluster")
    }

    #[test]
    fn corruption_names_path_and_remedy() {
        let err = Error::from(SledError::sled(Op::Get, path(), sled::Error::Corruption { at: None, bt: () }));
        assert_eq!(err.kind(), ErrorKind::Storage);
        assert_eq!(err.context_value("path"), Some("/data/cluster"));
        assert!(err.message().contains("corrupt"), "{err}");
        assert!(err.message().contains("backup"), "{err}");
    }

    #[test]
    fn io_errors_keep_the_os_error_as_source() {
        let io = io::Error::new(io::ErrorKind::PermissionDenied, "denied");
        let err = Error::from(SledError::sled(Op::Open, path(), sled::Error::Io(io)));
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("writable"), "{err}");
        assert!(err.to_string().contains("denied"), "{err}");
        let io = io::Error::other("disk on fire");
        let err = Error::from(SledError::sled(Op::ApplyBatch, path(), sled::Error::Io(io)));
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(err.to_string().contains("batch"), "{err}");
    }

    #[test]
    fn only_the_lock_message_at_open_is_a_lock_error() {
        let lock = || sled::Error::Io(io::Error::other("could not acquire lock on \"/x/db\": WouldBlock"));
        assert!(matches!(SledError::sled(Op::Open, path(), lock()), SledError::Locked { .. }));
        assert!(matches!(SledError::sled(Op::ApplyBatch, path(), lock()), SledError::Sled { .. }));
        let other = sled::Error::Io(io::Error::other("something else"));
        assert!(matches!(SledError::sled(Op::Open, path(), other), SledError::Sled { .. }));
    }

    #[test]
    fn config_mismatch_at_open_is_a_config_error() {
        let err =
            Error::from(SledError::sled(Op::Open, path(), sled::Error::Unsupported("segment size".into())));
        assert_eq!(err.kind(), ErrorKind::Config);
    }

    #[test]
    fn flush_failures_say_writes_may_not_be_durable() {
        for failure in [FlushFailure::NotRun, FlushFailure::Closed] {
            let err = Error::from(SledError::Flush { path: path(), failure });
            assert!(err.message().contains("may not be durable"), "{err}");
            assert_eq!(err.context_value("path"), Some("/data/cluster"));
        }
    }
}
