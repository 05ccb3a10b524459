//! The transport contract: a reliable ordered byte stream between the primary and one worker,
//! plus the rendezvous that sets it up around the worker's spawn.
//!
//! Framing, encoding and the handshake live once in this crate ([`crate::codec`],
//! [`crate::protocol`]); a transport only moves bytes.

use std::collections::BTreeMap;
use std::fmt::{self, Debug};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::{Error, ErrorKind, Result};
use crate::protocol::WorkerId;

pub use crate::env::{ENV_TOKEN, ENV_TRANSPORT, ENV_WORKER_ID};

/// The reading half of a connection.
pub type ByteReader = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a connection.
pub type ByteWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// An established byte stream to the peer.
pub struct Connection {
    /// Bytes from the peer.
    pub reader: ByteReader,
    /// Bytes to the peer.
    pub writer: ByteWriter,
    /// A short description for logs and errors (socket path, "stdio of pid 42", ...).
    pub description: String,
}

impl Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection").field("description", &self.description).finish_non_exhaustive()
    }
}

/// The environment a worker process was started with, as far as Clusterfy reads it.
///
/// Kept separate from the process environment so transports and tests can be driven without
/// touching global state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerEnv {
    vars: BTreeMap<String, String>,
}

impl WorkerEnv {
    /// The `CLUSTERFY_*` variables of the current process, and the shared listeners'
    /// `LISTEN_FDS` and `LISTEN_FDNAMES`.
    pub fn from_process() -> Self {
        let ours = |k: &str| {
            k.starts_with(crate::env::ENV_PREFIX)
                || k == crate::env::ENV_LISTEN_FDS
                || k == crate::env::ENV_LISTEN_FDNAMES
        };
        WorkerEnv { vars: std::env::vars().filter(|(k, _)| ours(k)).collect() }
    }

    /// An environment made of the given pairs.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        WorkerEnv { vars: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect() }
    }

    /// Sets one variable.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(key.into(), value.into());
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// The value of `key`, or a configuration error that says the process was probably not
    /// started by a Clusterfy primary.
    pub fn require(&self, key: &str) -> Result<&str> {
        self.get(key).ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "environment variable {key} is not set: this process was not started as a worker by a \
                     Clusterfy primary (start it with Primary::fork, or check Role before connecting)"
                ),
            )
        })
    }

    /// All variables, ordered by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// The first descriptor a child gets beyond its standard streams, by the socket-activation
/// convention (`SD_LISTEN_FDS_START`).
pub const FIRST_INHERITED_FD: i32 = 3;

/// How many descriptors from [`SpawnInfo::first_free_fd`] on a transport may map into the child.
pub const TRANSPORT_FDS: i32 = 16;

/// What a transport learns about the worker it prepares a spawn for. Made with
/// [`SpawnInfo::new`]; more fields may come.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct SpawnInfo {
    /// The worker's id.
    pub worker_id: WorkerId,
    /// The worker's name.
    pub name: String,
    /// The lowest descriptor number the transport may give the child. The ones below it, from
    /// [`FIRST_INHERITED_FD`] on, carry the primary's shared listeners (`LISTEN_FDS`); a
    /// transport maps what it passes at `first_free_fd` up to `first_free_fd + TRANSPORT_FDS`
    /// (exclusive), in one `fd_mappings` call.
    pub first_free_fd: i32,
    /// The child's stdin is the transport's to use: the primary re-executes its own program
    /// (which links Clusterfy and moves it away in `connect`) and passes no shared listeners. A
    /// transport that hands its channel over as stdin needs no descriptor mapped in the child,
    /// so the spawn takes `posix_spawn` (vfork) instead of fork.
    pub stdin_free: bool,
}

impl SpawnInfo {
    /// A spawn with no shared listeners: descriptors from [`FIRST_INHERITED_FD`] on are free.
    pub fn new(worker_id: WorkerId, name: impl Into<String>) -> Self {
        SpawnInfo { worker_id, name: name.into(), first_free_fd: FIRST_INHERITED_FD, stdin_free: false }
    }
}

/// How the primary knows that a connection comes from the worker it spawned.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authentication {
    /// The channel itself: it is handed to the child at spawn (an inherited, already connected
    /// socket) and no other process can open it, so the worker carries no secret.
    InheritedChannel,
    /// A one-time token: the primary puts it in the worker's environment ([`ENV_TOKEN`]) and
    /// the worker presents it in its `Hello`. For channels that another process could reach
    /// first (a wrapper, a network).
    Token,
}

/// Moves bytes between the primary and its workers.
///
/// `#[async_trait]` so it can be held as `Arc<dyn Transport>`.
///
/// # Contract
///
/// - Bytes written on one side arrive on the other complete and in order (`frames_round_trip_both_ways`,
///   `order_is_kept`).
/// - When one side closes or its process dies, the other side's reads end (EOF or error) and writes
///   fail; nothing hangs (`peer_going_away_is_seen_as_closed`).
/// - Each worker gets its own stream: bytes never cross between workers (`workers_stay_isolated`).
/// - [`Rendezvous::accept`] respects the caller's deadline by being cancel-safe: dropping its
///   future leaves the rendezvous usable or cleanly failed (`worker_that_never_connects_times_out`).
/// - [`Transport::connect`] on a worker with missing variables fails with
///   [`ErrorKind::Config`] naming the variable (`worker_without_environment_gets_config_error`).
/// - [`Transport::close`] releases what `prepare` created (socket files, directories)
///   (`close_removes_what_prepare_created`).
/// - A transport whose [`Transport::authentication`] is [`Authentication::InheritedChannel`]
///   offers no other way in: `prepare` hands the worker no file-system path and opens no
///   listening socket (`inherited_channel_leaves_no_way_in`).
#[async_trait]
pub trait Transport: Send + Sync + Debug + 'static {
    /// A short stable name, written to [`ENV_TRANSPORT`] so the worker picks the same transport.
    fn name(&self) -> &'static str;

    /// How the primary authenticates this transport's connections.
    fn authentication(&self) -> Authentication;

    /// Primary side, before spawn: set what the child needs (environment, piped stdio) on
    /// `command`, and return the rendezvous that completes the connection after spawn.
    async fn prepare(
        &self,
        info: &SpawnInfo,
        command: &mut tokio::process::Command,
    ) -> Result<Box<dyn Rendezvous>>;

    /// Worker side: connect to the primary as the environment says.
    async fn connect(&self, env: &WorkerEnv) -> Result<Connection>;

    /// Primary side, at shutdown: remove whatever `prepare` left behind. Idempotent.
    fn close(&self) -> Result<()>;
}

/// The primary's half of one worker's connection setup, created by [`Transport::prepare`].
#[async_trait]
pub trait Rendezvous: Send {
    /// Called once, right after the child was spawned and before any [`Rendezvous::accept`]:
    /// take from it what the connection needs (a pipe transport takes its stdin and stdout).
    fn attach(&mut self, child: &mut tokio::process::Child) -> Result<()>;

    /// Waits for the next incoming connection from the spawned child. May be called again if
    /// the caller rejected a connection (wrong token); the caller bounds it with a deadline, so it
    /// must be cancel-safe.
    async fn accept(&mut self) -> Result<Connection>;
}

/// A shared or boxed transport is a transport, so the caller can keep a handle to it.
macro_rules! forward_transport {
    ($($pointer:ident)::+) => {
        #[async_trait]
        impl<T: Transport + ?Sized> Transport for $($pointer)::+<T> {
            fn name(&self) -> &'static str {
                (**self).name()
            }

            fn authentication(&self) -> Authentication {
                (**self).authentication()
            }

            async fn prepare(
                &self,
                info: &SpawnInfo,
                command: &mut tokio::process::Command,
            ) -> Result<Box<dyn Rendezvous>> {
                (**self).prepare(info, command).await
            }

            async fn connect(&self, env: &WorkerEnv) -> Result<Connection> {
                (**self).connect(env).await
            }

            fn close(&self) -> Result<()> {
                (**self).close()
            }
        }
    };
}

forward_transport!(std::sync::Arc);
forward_transport!(Box);
