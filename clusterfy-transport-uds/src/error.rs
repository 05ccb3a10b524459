//! What can go wrong in this transport, and how it is told to the user as a
//! [`clusterfy_core::Error`].

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use clusterfy_core::{Error, ErrorKind, WorkerId};

use crate::transport::{ENV_UDS_PATH, MAX_SOCKET_PATH};

const SET_PARENT_DIR: &str = "set a shorter parent directory with UdsTransport::builder().parent_dir(..)";

/// The worker a primary-side failure concerns.
#[derive(Debug, Clone)]
pub(crate) struct WorkerRef {
    pub(crate) id: WorkerId,
    pub(crate) name: String,
}

#[derive(Debug)]
pub(crate) enum UdsError {
    /// Even the socket directory's own name would not leave room for socket file names.
    ParentDirTooLong {
        parent: PathBuf,
        max_len: usize,
    },
    CreateDir {
        parent: PathBuf,
        source: io::Error,
    },
    MakePrivate {
        dir: PathBuf,
        source: io::Error,
    },
    /// chmod 0700 did not stick, as on file systems without Unix permissions.
    NotPrivate {
        dir: PathBuf,
        mode: u32,
    },
    SocketPathTooLong {
        path: PathBuf,
        worker: Option<WorkerRef>,
    },
    Bind {
        path: PathBuf,
        worker: WorkerRef,
        source: io::Error,
    },
    Accept {
        path: PathBuf,
        worker: WorkerRef,
        source: io::Error,
    },
    EmptyPath,
    Connect {
        path: PathBuf,
        source: io::Error,
    },
    RemoveDir {
        dir: PathBuf,
        source: io::Error,
    },
}

fn path_len(path: &std::path::Path) -> usize {
    path.as_os_str().as_bytes().len()
}

impl From<UdsError> for Error {
    fn from(err: UdsError) -> Self {
        match err {
            UdsError::ParentDirTooLong { parent, max_len } => Error::new(
                ErrorKind::Config,
                format!(
                    "cannot put the worker sockets under {}: that path is {} bytes long, but socket paths \
                     must fit in {MAX_SOCKET_PATH} bytes, which leaves at most {max_len} bytes for the \
                     parent directory; {SET_PARENT_DIR}",
                    parent.display(),
                    path_len(&parent),
                ),
            )
            .with_context("path", parent.display()),
            UdsError::CreateDir { parent, source } => {
                let kind = match source.kind() {
                    io::ErrorKind::NotFound
                    | io::ErrorKind::PermissionDenied
                    | io::ErrorKind::NotADirectory
                    | io::ErrorKind::ReadOnlyFilesystem => ErrorKind::Config,
                    _ => ErrorKind::Io,
                };
                Error::new(
                    kind,
                    format!(
                        "could not create the private socket directory in {}: it must be an existing \
                         directory writable by this user; choose another with \
                         UdsTransport::builder().parent_dir(..)",
                        parent.display()
                    ),
                )
                .with_context("path", parent.display())
                .with_source(source)
            }
            UdsError::MakePrivate { dir, source } => Error::new(
                ErrorKind::Io,
                format!("could not restrict the socket directory {} to its owner (mode 0700)", dir.display()),
            )
            .with_context("path", dir.display())
            .with_source(source),
            UdsError::NotPrivate { dir, mode } => Error::new(
                ErrorKind::Config,
                format!(
                    "the socket directory {} has mode {mode:04o} after setting 0700, so other users could \
                     reach the worker sockets; the file system ignores Unix permissions: choose a parent \
                     directory on a local file system with UdsTransport::builder().parent_dir(..)",
                    dir.display()
                ),
            )
            .with_context("path", dir.display()),
            UdsError::SocketPathTooLong { path, worker } => {
                let fix = if worker.is_some() {
                    SET_PARENT_DIR.to_owned()
                } else {
                    format!(
                        "{ENV_UDS_PATH} was set by the primary, which must use a shorter parent \
                         directory (UdsTransport::builder().parent_dir(..))"
                    )
                };
                let err = Error::new(
                    ErrorKind::Config,
                    format!(
                        "the socket path {} is {} bytes long, more than the {MAX_SOCKET_PATH} bytes a Unix \
                         socket address can hold; {fix}",
                        path.display(),
                        path_len(&path),
                    ),
                )
                .with_context("path", path.display());
                with_worker(err, worker.as_ref())
            }
            UdsError::Bind { path, worker, source } => with_worker(
                Error::new(
                    ErrorKind::Io,
                    format!(
                        "could not listen on the socket {} for worker {}; check that its directory still \
                         exists (was the transport closed, or the directory removed by a cleaner?)",
                        path.display(),
                        worker.name
                    ),
                ),
                Some(&worker),
            )
            .with_context("path", path.display())
            .with_source(source),
            UdsError::Accept { path, worker, source } => with_worker(
                Error::new(
                    ErrorKind::Io,
                    format!(
                        "could not accept the connection of worker {} on the socket {}",
                        worker.name,
                        path.display()
                    ),
                ),
                Some(&worker),
            )
            .with_context("path", path.display())
            .with_source(source),
            UdsError::EmptyPath => Error::new(
                ErrorKind::Config,
                format!(
                    "environment variable {ENV_UDS_PATH} is empty: it must hold the socket path the \
                     Clusterfy primary set when it started this worker"
                ),
            ),
            UdsError::Connect { path, source } => {
                let why = match source.kind() {
                    io::ErrorKind::NotFound => {
                        "the socket does not exist: the primary has shut down or stopped waiting for this \
                         worker"
                    }
                    io::ErrorKind::ConnectionRefused => {
                        "nobody listens on it: the primary shut down or stopped waiting for this worker"
                    }
                    io::ErrorKind::PermissionDenied => {
                        "permission denied: the socket directory is private (mode 0700), so the worker \
                         must run as the same user as the primary"
                    }
                    _ => "check that the primary is running",
                };
                Error::new(
                    ErrorKind::Io,
                    format!("could not connect to the primary's socket {}: {why}", path.display()),
                )
                .with_context("path", path.display())
                .with_source(source)
            }
            UdsError::RemoveDir { dir, source } => Error::new(
                ErrorKind::Io,
                format!(
                    "could not remove the socket directory {}; nothing uses it any more, remove it by hand",
                    dir.display()
                ),
            )
            .with_context("path", dir.display())
            .with_source(source),
        }
    }
}

fn with_worker(err: Error, worker: Option<&WorkerRef>) -> Error {
    match worker {
        Some(worker) => err.with_context("worker", &worker.name).with_context("worker_id", worker.id),
        None => err,
    }
}
