//! [`PrimaryBuilder`]: the options of a primary, checked and turned into a running [`Primary`].

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clusterfy_core::codec::DEFAULT_MAX_FRAME_LEN;
use clusterfy_core::{Command, Error, ErrorKind, Result, StorageBackend, Target, Transport, Value};
use tokio::sync::{broadcast, watch};

use super::directory::Directory;
use super::usage::{self, DEFAULT_SAMPLE_INTERVAL, MIN_SAMPLE_INTERVAL};
use super::{DEFAULT_KILL_TIMEOUT, Limits, Primary, PrimaryContext, PrimaryInner, signals, watchers};
use crate::Signal;
use crate::control::SocketPlace;
use crate::events::EVENT_BUFFER;
use crate::handlers::CommandRegistry;
use crate::listen::{ListenOptions, SharedListeners};
use crate::storage::{Operation, Operations, SharedStorage};

/// Default deadline of a request (storage operation or command).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a worker has from spawn to ready.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Smallest accepted `max_frame_len`: room for any handshake and error notice.
const MIN_MAX_FRAME_LEN: usize = 4096;

/// Builds a [`Primary`].
#[derive(Debug)]
pub struct PrimaryBuilder {
    transport: Option<Arc<dyn Transport>>,
    storage: Option<Arc<dyn StorageBackend>>,
    initial: Option<Value>,
    commands: CommandRegistry<PrimaryContext>,
    operations: Operations,
    /// The first storage operation that could not be registered, reported by `build`.
    operation_error: Option<Error>,
    request_timeout: Duration,
    ready_timeout: Duration,
    max_frame_len: usize,
    limits: Limits,
    handle_signals: bool,
    non_dumpable: bool,
    echo_output: bool,
    listen: Vec<(String, String, ListenOptions)>,
    stop_signal: Signal,
    kill_timeout: Duration,
    sample_interval: Duration,
    control: Option<(String, Option<PathBuf>)>,
}

impl PrimaryBuilder {
    /// The defaults; [`Primary::builder`] is the public way in.
    pub(super) fn new() -> Self {
        PrimaryBuilder {
            transport: None,
            storage: None,
            initial: None,
            commands: CommandRegistry::new(Target::Primary),
            operations: Operations::default(),
            operation_error: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            limits: Limits::default(),
            handle_signals: true,
            non_dumpable: false,
            echo_output: true,
            listen: Vec::new(),
            stop_signal: Signal::TERM,
            kill_timeout: DEFAULT_KILL_TIMEOUT,
            sample_interval: DEFAULT_SAMPLE_INTERVAL,
            control: None,
        }
    }

    /// Whether SIGINT and SIGTERM shut the cluster down gracefully and SIGHUP reloads it
    /// (default: yes). When SIGINT or SIGTERM arrives, every worker is shut down as by
    /// [`Primary::shutdown`] with [`DEFAULT_SHUTDOWN_TIMEOUT`], and the process then exits with
    /// 128 + the signal number; a second signal exits at once. SIGHUP runs
    /// [`Primary::reload`] with the default options. Turn it off to handle signals yourself.
    ///
    /// [`DEFAULT_SHUTDOWN_TIMEOUT`]: super::DEFAULT_SHUTDOWN_TIMEOUT
    #[must_use]
    pub fn handle_signals(mut self, handle: bool) -> Self {
        self.handle_signals = handle;
        self
    }

    /// Marks the primary and every worker non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`; default
    /// off), so that a process of the same user can neither `ptrace` them nor take their
    /// descriptors with `pidfd_getfd`: on a kernel without Yama (`kernel.yama.ptrace_scope` 0 or
    /// absent), that is the one way left for such a process into a worker's channel. The cost:
    /// no core dumps of these processes, no debugger or profiler attached by the same user
    /// (root still can), and their `/proc/<pid>` entries owned by root. A worker marks itself
    /// when it connects, so the few instructions between its start and
    /// [`WorkerBuilder::connect`](crate::WorkerBuilder::connect) stay open; see
    /// `docs/protocol.md`, section 13.
    #[must_use]
    pub fn non_dumpable(mut self, non_dumpable: bool) -> Self {
        self.non_dumpable = non_dumpable;
        self
    }

    /// Whether the captured output of the workers
    /// ([`WorkerOptions::capture_output`](super::WorkerOptions::capture_output)) is echoed on
    /// this process's stderr as `[name] line` (default on); it is kept for
    /// [`Primary::logs`](super::Primary::logs) either way.
    #[must_use]
    pub fn echo_output(mut self, echo: bool) -> Self {
        self.echo_output = echo;
        self
    }

    /// Shares a listener with every worker (cluster mode): the primary binds `address` once
    /// when it is built (`"0.0.0.0:8080"`, `"[::]:8080"`, `"127.0.0.1:0"` for a free port,
    /// `"unix:/run/app.sock"`; see [`ListenAddr`]), and each worker process, revived and replaced
    /// ones included, inherits a listening socket on it and takes it with
    /// [`Worker::listener`]`(name)`. The connections are spread over the workers by the default
    /// [`Balance`] policy of the address (see [`PrimaryBuilder::listen_with`] to choose), and no
    /// connection is refused while a worker restarts.
    ///
    /// Workers inherit the listeners by the systemd socket-activation convention (descriptors
    /// from 3, `LISTEN_FDS`, `LISTEN_FDNAMES`), so code written for the `listenfd` crate works in
    /// a worker as it is, with every policy. A primary that systemd started by socket activation
    /// uses the socket systemd passed under `name` (its `FileDescriptorName=`) instead of
    /// binding, shared by every worker (it is already listening, so it cannot be split), and
    /// hands on the ones no `listen` asks for under their names.
    ///
    /// [`PrimaryBuilder::build`] fails with an error naming the address when it cannot bind (in
    /// use, a privileged port, a malformed address or name).
    ///
    /// [`ListenAddr`]: crate::listen::ListenAddr
    /// [`Balance`]: crate::listen::Balance
    /// [`Worker::listener`]: crate::Worker::listener
    #[must_use]
    pub fn listen(self, name: impl Into<String>, address: impl Into<String>) -> Self {
        self.listen_with(name, address, ListenOptions::default())
    }

    /// [`PrimaryBuilder::listen`] with options: how the connections are spread over the
    /// workers ([`ListenOptions::balance`]).
    ///
    /// ```no_run
    /// # async fn run() -> clusterfy::Result<()> {
    /// use clusterfy::{Primary, listen::{Balance, ListenOptions}};
    ///
    /// let primary = Primary::builder()
    ///     .listen_with("http", "0.0.0.0:8080", ListenOptions::new().balance(Balance::Shared))
    ///     .build()
    ///     .await?;
    /// # drop(primary);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// [`ListenOptions::balance`]: crate::listen::ListenOptions::balance
    #[must_use]
    pub fn listen_with(
        mut self,
        name: impl Into<String>,
        address: impl Into<String>,
        options: ListenOptions,
    ) -> Self {
        self.listen.push((name.into(), address.into(), options));
        self
    }

    /// The signal a worker gets when it has not exited within the grace period after its
    /// shutdown request (default SIGTERM; pm2 uses SIGINT). See [`Primary::shutdown_worker`].
    #[must_use]
    pub fn stop_signal(mut self, signal: Signal) -> Self {
        self.stop_signal = signal;
        self
    }

    /// Time a worker has after the stop signal before SIGKILL (default [`DEFAULT_KILL_TIMEOUT`]).
    #[must_use]
    pub fn kill_timeout(mut self, timeout: Duration) -> Self {
        self.kill_timeout = timeout;
        self
    }

    /// How often the primary samples each worker's CPU use and resident memory, for
    /// [`Primary::statistics`] and [`WorkerOptions::max_memory`] (default 1 s).
    ///
    /// [`WorkerOptions::max_memory`]: super::WorkerOptions::max_memory
    #[must_use]
    pub fn sample_interval(mut self, interval: Duration) -> Self {
        self.sample_interval = interval.max(MIN_SAMPLE_INTERVAL);
        self
    }

    /// Opens a control socket for operating the cluster from the shell with the `clusterfy`
    /// command (`clusterfy ls`, `restart`, `reload`, `events`, `storage get`, ...), as app `app`:
    /// `<dir>/<app>.sock` in [`control_dir`](crate::control::control_dir) (a 0700 directory
    /// under `$XDG_RUNTIME_DIR` or `/run/user/<uid>`), mode 0600, and refusing any peer whose uid
    /// is not this process's. A socket left by a primary that died is taken over; one in use by
    /// a running primary makes [`PrimaryBuilder::build`] fail. Removed at
    /// [`Primary::shutdown`].
    #[must_use]
    pub fn control(mut self, app: impl Into<String>) -> Self {
        self.control = Some((app.into(), None));
        self
    }

    /// [`PrimaryBuilder::control`] with the socket at `path` instead of the control directory.
    /// The directory of `path` must exist, and is left as it is: Clusterfy creates and restricts
    /// only its own control directory, never one the program names (so `control_at(app,
    /// "/run/app.sock")` does not change `/run`). The socket file is made 0600, and peers of
    /// another uid are refused whatever the directory's mode.
    #[must_use]
    pub fn control_at(mut self, app: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        self.control = Some((app.into(), Some(path.into())));
        self
    }

    /// Chooses how workers connect (default: Unix sockets, with feature `transport-uds`).
    #[must_use]
    pub fn transport(mut self, transport: impl Transport) -> Self {
        self.transport = Some(Arc::new(transport));
        self
    }

    /// Chooses where the shared storage lives (default: memory, with feature `storage-mem`).
    #[must_use]
    pub fn storage(mut self, storage: impl StorageBackend) -> Self {
        self.storage = Some(Arc::new(storage));
        self
    }

    /// The storage's content when the backend is empty (the original's `initStorage`). Must be a
    /// map. A durable backend that already holds data keeps it.
    #[must_use]
    pub fn initial_storage(mut self, initial: Value) -> Self {
        self.initial = Some(initial);
        self
    }

    /// Registers the handler of a command that workers send to the primary (the original's
    /// `registerIPCCommand` on the primary). A reserved (`cy_`), duplicate or worker-targeted
    /// name makes [`PrimaryBuilder::build`] fail.
    #[must_use]
    pub fn command<C, F, Fut>(mut self, handler: F) -> Self
    where
        C: Command,
        F: Fn(C, PrimaryContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C::Reply>> + Send + 'static,
    {
        self.commands.register::<C, F, Fut>(handler);
        self
    }

    /// Registers the storage operation `O`, so that workers and the primary can run it with
    /// [`Storage::apply`](crate::storage::Storage::apply): the storage's writer runs it on the
    /// current value, in one step, as it runs the built-in atomic operations. A reserved
    /// (`cy_`), malformed or duplicate name makes [`PrimaryBuilder::build`] fail.
    #[must_use]
    pub fn storage_operation<O: Operation>(mut self) -> Self {
        if let Err(err) = self.operations.register::<O>() {
            self.operation_error.get_or_insert(err);
        }
        self
    }

    /// Deadline of every request the primary sends or routes (default
    /// [`DEFAULT_REQUEST_TIMEOUT`]). Workers use their own setting.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Time a worker has from spawn to ready before [`Primary::ready`] fails (default
    /// [`DEFAULT_READY_TIMEOUT`]).
    #[must_use]
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Largest frame accepted or sent (default 16 MiB; at least 4 KiB, below 4 GiB).
    #[must_use]
    pub fn max_frame_len(mut self, bytes: usize) -> Self {
        self.max_frame_len = bytes;
        self
    }

    /// How much one worker or control client can make the primary hold (see [`Limits`]; its
    /// default unless set).
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Checks the configuration, prepares the storage and returns the primary.
    pub async fn build(mut self) -> Result<Primary> {
        if let Some(err) = self.commands.take_error().or(self.operation_error.take()) {
            return Err(err);
        }
        self.limits.check()?;
        if !(MIN_MAX_FRAME_LEN..=u32::MAX as usize).contains(&self.max_frame_len) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "max_frame_len {} is out of range: it must be at least {MIN_MAX_FRAME_LEN} bytes and below 4 GiB",
                    self.max_frame_len
                ),
            ));
        }
        let Some(stop_signal) = self.stop_signal.to_nix() else {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "the stop signal {} cannot be sent on this system; use Signal::TERM or another named signal",
                    self.stop_signal
                ),
            ));
        };
        let control_place = match &self.control {
            None => None,
            Some((app, Some(path))) => {
                crate::control::socket_path(app)?;
                Some((app.clone(), SocketPlace::Named(path.clone())))
            }
            Some((app, None)) => {
                Some((app.clone(), SocketPlace::ControlDir(crate::control::socket_path(app)?)))
            }
        };
        if self.non_dumpable {
            crate::hardening::mark_non_dumpable()?;
        }
        let listeners = SharedListeners::open(&self.listen)?;
        let transport = match self.transport.take() {
            Some(t) => t,
            None => default_transport()?,
        };
        let backend = match self.storage.take() {
            Some(s) => s,
            None => default_storage()?,
        };
        // Taken here: the backend then belongs to the storage's writer task alone.
        let notices = backend.notices();
        let storage = Arc::new(SharedStorage::open(backend, std::mem::take(&mut self.operations)).await?);
        if let Some(initial) = self.initial.take() {
            storage.initialize(initial).await?;
        }
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (changed, _) = watch::channel(());
        let primary = Primary {
            inner: Arc::new(PrimaryInner {
                transport,
                storage,
                commands: self.commands,
                events,
                changed,
                directory: Mutex::new(Directory::new(1)),
                request_timeout: self.request_timeout,
                ready_timeout: self.ready_timeout,
                max_frame_len: self.max_frame_len,
                limits: self.limits,
                non_dumpable: self.non_dumpable,
                listeners,
                stop_signal,
                kill_timeout: self.kill_timeout,
                reloading: tokio::sync::Mutex::new(()),
                next_in_group: std::sync::atomic::AtomicUsize::new(0),
                control: std::sync::OnceLock::new(),
                logs: Arc::new(super::logs::Logs::new(self.echo_output)),
                watch_dispatch: std::sync::Once::new(),
            }),
        };
        if let Some((app, place)) = control_place {
            let max_connections = primary.inner.limits.control_connections;
            let socket = crate::control::open(&app, place, max_connections, Arc::downgrade(&primary.inner))?;
            tracing::info!(app = %app, socket = %socket.path().display(), "control socket open");
            let _ = primary.inner.control.set(socket);
        }
        watchers::forward_backend_notices(&primary.inner, notices);
        usage::sample_workers(Arc::downgrade(&primary.inner), self.sample_interval);
        if self.handle_signals {
            signals::shut_down_on_signals(Arc::downgrade(&primary.inner))?;
        }
        Ok(primary)
    }
}

fn default_transport() -> Result<Arc<dyn Transport>> {
    #[cfg(feature = "transport-uds")]
    {
        Ok(Arc::new(clusterfy_transport_uds::UdsTransport::new()))
    }
    #[cfg(not(feature = "transport-uds"))]
    {
        Err(Error::new(
            ErrorKind::Config,
            "no transport chosen: call PrimaryBuilder::transport or enable the `transport-uds` feature",
        ))
    }
}

fn default_storage() -> Result<Arc<dyn StorageBackend>> {
    #[cfg(feature = "storage-mem")]
    {
        Ok(Arc::new(clusterfy_storage_mem::MemStorage::new()))
    }
    #[cfg(not(feature = "storage-mem"))]
    {
        Err(Error::new(
            ErrorKind::Config,
            "no storage chosen: call PrimaryBuilder::storage or enable the `storage-mem` feature",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stop_signal_the_system_cannot_send_is_refused_at_build() {
        let Err(err) = Primary::builder().stop_signal(Signal::from_raw(40)).build().await else {
            panic!("signal 40 was accepted as the stop signal");
        };
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.to_string().contains("signal 40"), "{err}");
    }
}
