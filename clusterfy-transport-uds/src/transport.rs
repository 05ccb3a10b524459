//! [`UdsTransport`]: each worker inherits one end of a connected Unix socket pair.

use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;

use async_trait::async_trait;
use clusterfy_core::transport::{Authentication, Connection, Rendezvous, SpawnInfo, Transport, WorkerEnv};
use clusterfy_core::{Error, ErrorKind, Result, os};
use command_fds::{CommandFdExt, FdMapping};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

pub use clusterfy_core::env::ENV_UDS_FD;

/// The Unix domain socket transport, Clusterfy's default.
///
/// For every spawn, [`Transport::prepare`] creates a connected socket pair (`socketpair(2)`,
/// close-on-exec on both ends), keeps one end and has the child inherit the other as the first
/// free descriptor ([`SpawnInfo::first_free_fd`]: 3, or the one after the shared listeners),
/// named in [`ENV_UDS_FD`]; the worker's [`Transport::connect`] adopts it. There is no socket
/// file and no listening socket, so no other process can connect, and nothing is left on disk
/// when the primary dies.
#[derive(Debug, Clone, Copy, Default)]
pub struct UdsTransport;

impl UdsTransport {
    /// The transport.
    pub fn new() -> Self {
        UdsTransport
    }
}

#[async_trait]
impl Transport for UdsTransport {
    fn name(&self) -> &'static str {
        "uds"
    }

    fn authentication(&self) -> Authentication {
        Authentication::InheritedChannel
    }

    async fn prepare(&self, info: &SpawnInfo, command: &mut Command) -> Result<Box<dyn Rendezvous>> {
        let (primary_end, worker_end) = StdUnixStream::pair().map_err(|e| {
            Error::io("creating the socket pair of a worker's channel", e)
                .with_context("worker_id", info.worker_id)
        })?;
        if info.stdin_free {
            // posix_spawn's own dup2 puts it on the child's fd 0; the parent's copy stays
            // close-on-exec, so no other child can inherit it.
            command.stdin(std::process::Stdio::from(OwnedFd::from(worker_end)));
            command.env(ENV_UDS_FD, "0");
            let stream = into_tokio(primary_end)?;
            return Ok(Box::new(UdsRendezvous { stream: Some(stream), worker_id: info.worker_id }));
        }
        let channel_fd: RawFd = info.first_free_fd;
        command
            .fd_mappings(vec![FdMapping { parent_fd: OwnedFd::from(worker_end), child_fd: channel_fd }])
            .map_err(|_| {
            Error::new(
                ErrorKind::InvalidState,
                format!(
                    "descriptor {channel_fd} of the worker's process is already mapped by another \
                         descriptor passed to the same command"
                ),
            )
        })?;
        command.env(ENV_UDS_FD, channel_fd.to_string());
        let stream = into_tokio(primary_end)?;
        Ok(Box::new(UdsRendezvous { stream: Some(stream), worker_id: info.worker_id }))
    }

    async fn connect(&self, env: &WorkerEnv) -> Result<Connection> {
        let raw = env.require(ENV_UDS_FD)?;
        let fd: RawFd = raw.parse().map_err(|_| {
            Error::new(ErrorKind::Config, format!("{ENV_UDS_FD} must be a descriptor number, not {raw:?}"))
        })?;
        let owned = if fd == 0 {
            os::adopt_channel_from_stdin(ENV_UDS_FD)?
        } else {
            os::adopt_inherited_socket(fd, ENV_UDS_FD)?
        };
        let stream = into_tokio(StdUnixStream::from(owned))?;
        Ok(into_connection(stream, format!("inherited channel (descriptor {fd})")))
    }

    fn close(&self) -> Result<()> {
        // Socket pairs close with their holders; nothing was created anywhere else.
        Ok(())
    }
}

fn into_tokio(stream: StdUnixStream) -> Result<UnixStream> {
    stream
        .set_nonblocking(true)
        .and_then(|()| UnixStream::from_std(stream))
        .map_err(|e| Error::io("registering a worker channel with the runtime", e))
}

fn into_connection(stream: UnixStream, description: String) -> Connection {
    let (reader, writer) = stream.into_split();
    Connection { reader: Box::new(reader), writer: Box::new(writer), description }
}

/// The primary's end of one spawn's socket pair, handed out once.
#[derive(Debug)]
struct UdsRendezvous {
    stream: Option<UnixStream>,
    worker_id: clusterfy_core::WorkerId,
}

#[async_trait]
impl Rendezvous for UdsRendezvous {
    /// Nothing to take: the child inherited its end at spawn.
    fn attach(&mut self, _child: &mut Child) -> Result<()> {
        Ok(())
    }

    /// The connection at once: it exists since `prepare`. The channel has one peer, so a second
    /// call fails.
    async fn accept(&mut self) -> Result<Connection> {
        match self.stream.take() {
            Some(stream) => Ok(into_connection(stream, format!("channel of worker #{}", self.worker_id))),
            None => Err(Error::new(
                ErrorKind::Closed,
                "this worker's channel was already used by a refused handshake; an inherited channel gets one try",
            )
            .with_context("worker_id", self.worker_id)),
        }
    }
}
