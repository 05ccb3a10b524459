//! The stdio transport: the child's stdin/stdout pipes carry the byte stream.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::process::Stdio;

use async_trait::async_trait;
use clusterfy_core::transport::{Authentication, ENV_TRANSPORT};
use clusterfy_core::{Connection, Error, ErrorKind, Rendezvous, Result, SpawnInfo, Transport, WorkerEnv};
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use tokio::net::unix::pipe;
use tokio::process::{Child, ChildStdin, ChildStdout};

/// The name written to `CLUSTERFY_TRANSPORT`.
const NAME: &str = "stdio";

/// Carries the protocol over each worker's stdin and stdout.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdioTransport;

impl StdioTransport {
    /// The stdio transport.
    pub fn new() -> Self {
        StdioTransport
    }
}

#[async_trait]
impl Transport for StdioTransport {
    fn name(&self) -> &'static str {
        NAME
    }

    /// A token: the pipes may lead through a wrapper (ssh, a container runtime) to a program
    /// the primary did not start itself.
    fn authentication(&self) -> Authentication {
        Authentication::Token
    }

    async fn prepare(
        &self,
        _info: &SpawnInfo,
        command: &mut tokio::process::Command,
    ) -> Result<Box<dyn Rendezvous>> {
        // stderr stays inherited: it is where the worker's logs go.
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        Ok(Box::new(StdioRendezvous { pipes: None, taken: false }))
    }

    async fn connect(&self, env: &WorkerEnv) -> Result<Connection> {
        let chosen = env.require(ENV_TRANSPORT)?;
        if chosen != NAME {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{ENV_TRANSPORT} is {chosen:?}, not {NAME:?}: the primary did not start this worker over stdio"
                ),
            ));
        }
        let (input, output) = take_stdio()?;
        let reader = pipe::Receiver::from_owned_fd(input).map_err(|e| not_a_pipe("stdin", e))?;
        let writer = pipe::Sender::from_owned_fd(output).map_err(|e| not_a_pipe("stdout", e))?;
        Ok(Connection {
            reader: Box::new(reader),
            writer: Box::new(writer),
            description: "stdio of this worker".into(),
        })
    }

    fn close(&self) -> Result<()> {
        // Pipes close with their processes; nothing is left on disk.
        Ok(())
    }
}

fn not_a_pipe(which: &str, err: std::io::Error) -> Error {
    Error::new(
        ErrorKind::Config,
        format!(
            "the worker's {which} is not a pipe ({err}); the stdio transport needs the primary (or a wrapper such as ssh) \
             to connect {which} with a pipe"
        ),
    )
    .with_source(err)
}

/// Moves the protocol to private copies of stdin and stdout, then points stdout at stderr and
/// stdin at /dev/null so stray prints and reads cannot touch the stream.
fn take_stdio() -> Result<(OwnedFd, OwnedFd)> {
    let os = |what: &str, err: nix::Error| Error::new(ErrorKind::Io, format!("{what}: {err}"));
    // Whatever the program printed before is flushed to the real stdout first, not later into
    // the redirected one.
    let _ = std::io::stdout().flush();
    let input = private_copy(std::io::stdin().as_fd()).map_err(|e| os("duplicating stdin", e))?;
    let output = private_copy(std::io::stdout().as_fd()).map_err(|e| os("duplicating stdout", e))?;
    nix::unistd::dup2_stdout(std::io::stderr()).map_err(|e| os("redirecting stdout to stderr", e))?;
    let null = File::open("/dev/null").map_err(|e| Error::io("opening /dev/null", e))?;
    nix::unistd::dup2_stdin(&null).map_err(|e| os("redirecting stdin to /dev/null", e))?;
    Ok((input, output))
}

/// A duplicate of `fd` that child processes do not inherit.
fn private_copy(fd: std::os::fd::BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    let copy = nix::unistd::dup(fd)?;
    fcntl(&copy, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(copy)
}

struct StdioRendezvous {
    pipes: Option<(ChildStdout, ChildStdin)>,
    taken: bool,
}

#[async_trait]
impl Rendezvous for StdioRendezvous {
    fn attach(&mut self, child: &mut Child) -> Result<()> {
        let missing =
            || Error::new(ErrorKind::InvalidState, "the worker was spawned without piped stdin/stdout");
        let stdout = child.stdout.take().ok_or_else(missing)?;
        let stdin = child.stdin.take().ok_or_else(missing)?;
        self.pipes = Some((stdout, stdin));
        Ok(())
    }

    async fn accept(&mut self) -> Result<Connection> {
        match self.pipes.take() {
            Some((stdout, stdin)) => {
                self.taken = true;
                Ok(Connection {
                    reader: Box::new(stdout),
                    writer: Box::new(stdin),
                    description: "worker's stdio".into(),
                })
            }
            None if self.taken => Err(Error::new(
                ErrorKind::Closed,
                "the worker's stdio was already used by a refused connection; a stdio worker gets one try",
            )),
            None => Err(Error::new(
                ErrorKind::InvalidState,
                "accept before attach: the child's pipes are not taken yet",
            )),
        }
    }
}
