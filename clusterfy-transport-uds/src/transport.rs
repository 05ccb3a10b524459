//! [`UdsTransport`]: one listening socket per worker spawn, in a private directory.

use std::fmt;
use std::fs::{self, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use clusterfy_core::Result;
use clusterfy_core::transport::{Connection, Rendezvous, SpawnInfo, Transport, WorkerEnv};
use tempfile::TempDir;
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};

use crate::config::{ParentDirs, UdsTransportBuilder};
use crate::error::{UdsError, WorkerRef};

/// Environment variable through which the primary tells a worker the path of its socket.
pub const ENV_UDS_PATH: &str = "CLUSTERFY_UDS_PATH";

/// The longest socket path the OS accepts, in bytes: `sun_path` minus its terminating NUL.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) const MAX_SOCKET_PATH: usize = 107;
/// The longest socket path the OS accepts, in bytes: `sun_path` minus its terminating NUL.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) const MAX_SOCKET_PATH: usize = 103;

const DIR_PREFIX: &str = "clusterfy-";
const DIR_RANDOM_CHARS: usize = 6;
/// Room kept for socket file names when the directory is created, so that a too-long parent
/// directory fails at once with a clear message rather than at some later worker id. Each socket
/// path is still checked exactly when it is bound.
const SOCKET_NAME_ROOM: usize = "/worker-999999-999999.sock".len();
const PRIVATE_MODE: u32 = 0o700;

/// The Unix domain socket transport, Clusterfy's default.
///
/// On the primary, the first [`Transport::prepare`] creates a private directory (mode 0700,
/// named `clusterfy-XXXXXX`); every prepared spawn gets its own listening socket
/// `worker-<id>-<n>.sock` in it, whose path reaches the worker in [`ENV_UDS_PATH`]. `n` counts
/// spawns, so a revived worker never meets the socket of its predecessor.
///
/// [`Transport::close`] removes the directory and everything in it; so does dropping the
/// transport. A `prepare` after `close` creates a new directory.
pub struct UdsTransport {
    parent_dir: Option<PathBuf>,
    socket_dir: Mutex<Option<TempDir>>,
    next_socket: AtomicU64,
}

impl UdsTransport {
    /// A transport with the default options (see [`UdsTransportBuilder`]).
    pub fn new() -> Self {
        Self::from_parent_dir(None)
    }

    /// A builder to set options.
    pub fn builder() -> UdsTransportBuilder {
        UdsTransportBuilder::new()
    }

    pub(crate) fn from_parent_dir(parent_dir: Option<PathBuf>) -> Self {
        UdsTransport { parent_dir, socket_dir: Mutex::new(None), next_socket: AtomicU64::new(0) }
    }

    /// The private directory holding the sockets, once the first worker was prepared and until
    /// [`Transport::close`].
    pub fn socket_dir(&self) -> Option<PathBuf> {
        self.lock_socket_dir().as_ref().map(|dir| dir.path().to_owned())
    }

    fn lock_socket_dir(&self) -> MutexGuard<'_, Option<TempDir>> {
        // The guarded value is a plain Option that no panic can leave half-updated.
        self.socket_dir.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The socket directory, created on first use.
    ///
    /// Creating it blocks briefly (mkdir, chmod, stat) once per transport, which is why it is not
    /// moved to a blocking thread.
    fn ensure_socket_dir(&self) -> Result<PathBuf, UdsError> {
        let mut guard = self.lock_socket_dir();
        if let Some(dir) = guard.as_ref() {
            return Ok(dir.path().to_owned());
        }
        let dir = create_socket_dir(&ParentDirs::resolve(self.parent_dir.as_deref()))?;
        let path = dir.path().to_owned();
        tracing::debug!(dir = %path.display(), "created the socket directory");
        *guard = Some(dir);
        Ok(path)
    }
}

impl Default for UdsTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for UdsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdsTransport")
            .field("parent_dir", &self.parent_dir)
            // try_lock: Debug must never wait, nor deadlock when called with the lock held.
            .field(
                "socket_dir",
                &self.socket_dir.try_lock().ok().map(|dir| dir.as_ref().map(|d| d.path().to_owned())),
            )
            .finish_non_exhaustive()
    }
}

/// Creates the socket directory in the preferred parent directory if there is one and it works
/// (say, `$XDG_RUNTIME_DIR`), else in the fallback.
fn create_socket_dir(parents: &ParentDirs) -> Result<TempDir, UdsError> {
    if let Some(preferred) = &parents.preferred {
        match create_socket_dir_in(preferred) {
            Ok(dir) => return Ok(dir),
            Err(err) => tracing::debug!(
                parent = %preferred.display(),
                error = %clusterfy_core::Error::from(err),
                fallback = %parents.fallback.display(),
                "cannot create the socket directory in the preferred place, using the fallback"
            ),
        }
    }
    create_socket_dir_in(&parents.fallback)
}

fn create_socket_dir_in(parent: &Path) -> Result<TempDir, UdsError> {
    let max_len = MAX_SOCKET_PATH - (1 + DIR_PREFIX.len() + DIR_RANDOM_CHARS) - SOCKET_NAME_ROOM;
    if byte_len(parent) > max_len {
        return Err(UdsError::ParentDirTooLong { parent: parent.to_owned(), max_len });
    }
    let dir = tempfile::Builder::new()
        .prefix(DIR_PREFIX)
        .rand_bytes(DIR_RANDOM_CHARS)
        .permissions(Permissions::from_mode(PRIVATE_MODE))
        .tempdir_in(parent)
        .map_err(|source| UdsError::CreateDir { parent: parent.to_owned(), source })?;
    // The mode given at creation is narrowed by the umask; set it exactly, then check that the
    // file system keeps it, since the directory is what keeps other users away from the sockets.
    let make_private = |source| UdsError::MakePrivate { dir: dir.path().to_owned(), source };
    fs::set_permissions(dir.path(), Permissions::from_mode(PRIVATE_MODE)).map_err(make_private)?;
    let mode = fs::metadata(dir.path()).map_err(make_private)?.permissions().mode() & 0o777;
    if mode != PRIVATE_MODE {
        return Err(UdsError::NotPrivate { dir: dir.path().to_owned(), mode });
    }
    Ok(dir)
}

fn byte_len(path: &Path) -> usize {
    path.as_os_str().as_bytes().len()
}

#[async_trait]
impl Transport for UdsTransport {
    fn name(&self) -> &'static str {
        "uds"
    }

    async fn prepare(&self, info: &SpawnInfo, command: &mut Command) -> Result<Box<dyn Rendezvous>> {
        let worker = WorkerRef { id: info.worker_id, name: info.name.clone() };
        let dir = self.ensure_socket_dir()?;
        let n = self.next_socket.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("worker-{}-{n}.sock", info.worker_id));
        if byte_len(&path) > MAX_SOCKET_PATH {
            return Err(UdsError::SocketPathTooLong { path, worker: Some(worker) }.into());
        }
        let listener = match UnixListener::bind(&path) {
            Ok(listener) => listener,
            Err(source) => return Err(UdsError::Bind { path, worker, source }.into()),
        };
        command.env(ENV_UDS_PATH, &path);
        Ok(Box::new(UdsRendezvous { listener, path, worker }))
    }

    async fn connect(&self, env: &WorkerEnv) -> Result<Connection> {
        let path = PathBuf::from(env.require(ENV_UDS_PATH)?);
        if path.as_os_str().is_empty() {
            return Err(UdsError::EmptyPath.into());
        }
        if byte_len(&path) > MAX_SOCKET_PATH {
            return Err(UdsError::SocketPathTooLong { path, worker: None }.into());
        }
        match UnixStream::connect(&path).await {
            Ok(stream) => Ok(into_connection(stream, &path)),
            Err(source) => Err(UdsError::Connect { path, source }.into()),
        }
    }

    fn close(&self) -> Result<()> {
        let Some(dir) = self.lock_socket_dir().take() else {
            return Ok(());
        };
        let path = dir.path().to_owned();
        match dir.close() {
            Ok(()) => {
                tracing::debug!(dir = %path.display(), "removed the socket directory");
                Ok(())
            }
            // Someone else (a tmp cleaner, a test) already removed it: the goal is reached.
            Err(source) if source.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(UdsError::RemoveDir { dir: path, source }.into()),
        }
    }
}

fn into_connection(stream: UnixStream, path: &Path) -> Connection {
    let (reader, writer) = stream.into_split();
    Connection { reader: Box::new(reader), writer: Box::new(writer), description: path.display().to_string() }
}

/// The listening socket of one spawn. Dropping it closes the listener and removes the socket file.
#[derive(Debug)]
pub(crate) struct UdsRendezvous {
    listener: UnixListener,
    path: PathBuf,
    worker: WorkerRef,
}

#[async_trait]
impl Rendezvous for UdsRendezvous {
    /// Nothing to take: the worker finds its socket through the environment set by `prepare`.
    fn attach(&mut self, _child: &mut Child) -> Result<()> {
        Ok(())
    }

    /// Accepts the next connection on this spawn's socket.
    ///
    /// Cancel-safe, as `UnixListener::accept` is: a dropped call loses no pending connection.
    async fn accept(&mut self) -> Result<Connection> {
        match self.listener.accept().await {
            Ok((stream, _)) => Ok(into_connection(stream, &self.path)),
            Err(source) => {
                Err(UdsError::Accept { path: self.path.clone(), worker: self.worker.clone(), source }.into())
            }
        }
    }
}

impl Drop for UdsRendezvous {
    fn drop(&mut self) {
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            // Already gone with its directory (transport closed).
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::debug!(path = %self.path.display(), error = %err, "could not remove the socket file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_preferred_parent_dir_falls_back() {
        let fallback = tempfile::tempdir().expect("temp dir");
        for preferred in ["/nonexistent/clusterfy-test".to_owned(), format!("/tmp/{}", "x".repeat(100))] {
            let parents =
                ParentDirs { preferred: Some(preferred.into()), fallback: fallback.path().to_owned() };
            let dir = create_socket_dir(&parents).expect("fallback works");
            assert_eq!(dir.path().parent(), Some(fallback.path()));
        }
    }

    #[test]
    fn failing_fallback_is_the_error() {
        let parents = ParentDirs { preferred: None, fallback: "/nonexistent/clusterfy-test".into() };
        let err = clusterfy_core::Error::from(create_socket_dir(&parents).expect_err("no such directory"));
        assert_eq!(err.kind(), clusterfy_core::ErrorKind::Config);
        assert_eq!(err.context_value("path"), Some("/nonexistent/clusterfy-test"));
    }

    #[test]
    fn longest_accepted_parent_dir_leaves_room_for_socket_names() {
        let max_len = MAX_SOCKET_PATH - (1 + DIR_PREFIX.len() + DIR_RANDOM_CHARS) - SOCKET_NAME_ROOM;
        let dir = format!("/{}/{DIR_PREFIX}{}", "p".repeat(max_len - 1), "r".repeat(DIR_RANDOM_CHARS));
        let socket = format!("{dir}/worker-999999-999999.sock");
        assert_eq!(socket.len(), MAX_SOCKET_PATH);
    }
}
