//! The primary side of the suite: starting peers exactly as the facade starts workers
//! (`prepare`, spawn, `attach`, `accept`, then the `Hello`), and watching them end.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use clusterfy_core::codec::DEFAULT_MAX_FRAME_LEN;
use clusterfy_core::protocol::{Hello, Message, PROTOCOL_VERSION};
use clusterfy_core::transport::{
    ENV_TOKEN, ENV_TRANSPORT, ENV_WORKER_ID, Rendezvous, SpawnInfo, Transport, WorkerEnv,
};
use clusterfy_core::{Connection, WorkerId};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::failure::{Context, Failure, Outcome, ensure, within};
use super::peer::{self, Script, exit};
use super::wire::{FrameReader, FrameWriter, ToPeer, ToPrimary};
use super::{ENV_TESTKIT_PEER, PeerMode};

/// The stderr of a peer process, kept for failure messages.
type Log = Arc<Mutex<Vec<u8>>>;

/// At most this much of each peer's stderr goes into a failure message.
const LOG_TAIL: usize = 4 * 1024;

/// One case's transport and the peers it started.
pub(crate) struct Suite {
    pub(crate) transport: Arc<dyn Transport>,
    mode: PeerMode,
    next_worker: AtomicU64,
    logs: Mutex<Vec<(String, Log)>>,
}

impl Suite {
    pub(crate) fn new(transport: Arc<dyn Transport>, mode: PeerMode) -> Self {
        Suite { transport, mode, next_worker: AtomicU64::new(1), logs: Mutex::new(Vec::new()) }
    }

    /// A command for a new worker, with the environment the facade gives every worker.
    fn worker_command(&self, worker_id: WorkerId, token: &str, script: Script) -> Outcome<Command> {
        let exe = match self.mode {
            PeerMode::Process => {
                std::env::current_exe().context("finding the test binary to start as a peer")?
            }
            // Never spawned: the peer runs as a task.
            PeerMode::InProcess => PathBuf::from("in-process-peer"),
        };
        let mut command = Command::new(exe);
        // Only what this primary sets may reach the peer, even if the test runs under another primary.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with(clusterfy_core::env::ENV_PREFIX) {
                command.env_remove(key);
            }
        }
        command
            .env(ENV_TESTKIT_PEER, script.as_str())
            .env(ENV_WORKER_ID, worker_id.to_string())
            .env(ENV_TOKEN, token)
            .env(ENV_TRANSPORT, self.transport.name())
            .stdin(Stdio::null())
            // Before `prepare`, which may claim stderr too; kept for failure messages.
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Ok(command)
    }

    /// Prepares, starts and attaches a new worker running `script`.
    pub(crate) async fn launch(&self, script: Script) -> Outcome<Worker> {
        let id = WorkerId(self.next_worker.fetch_add(1, Ordering::Relaxed));
        let label = format!("worker {id} ({})", script.as_str());
        let token = new_token(id);
        let mut command = self.worker_command(id, &token, script)?;
        let info = SpawnInfo::new(id, format!("testkit-{id}"));
        let mut rendezvous =
            within(format!("preparing {label}"), self.transport.prepare(&info, &mut command))
                .await?
                .context(format!("preparing {label}"))?;
        let peer = match self.mode {
            PeerMode::Process => {
                let mut child = command.spawn().context(format!("starting {label}"))?;
                rendezvous.attach(&mut child).context(format!("attaching {label}"))?;
                if let Some(stderr) = child.stderr.take() {
                    tokio::spawn(keep_log(stderr, self.new_log(&label)));
                }
                Peer::Process(child)
            }
            PeerMode::InProcess => {
                let env = worker_env(&command);
                let transport = Arc::clone(&self.transport);
                let log = self.new_log(&label);
                Peer::Task(tokio::spawn(async move {
                    let log = |line: String| {
                        let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
                        log.extend_from_slice(line.as_bytes());
                        log.push(b'\n');
                    };
                    peer::run(transport.as_ref(), &env, script, &log).await
                }))
            }
        };
        Ok(Worker { id, token, label, rendezvous, peer, exit: None })
    }

    /// A new, registered log for the peer `label`.
    fn new_log(&self, label: &str) -> Log {
        let log = Log::default();
        self.lock_logs().push((label.to_owned(), Arc::clone(&log)));
        log
    }

    /// What the peers wrote to stderr, for a failure message.
    pub(crate) fn peer_logs(&self) -> String {
        let mut text = String::new();
        for (label, log) in self.lock_logs().iter() {
            let log = log.lock().unwrap_or_else(PoisonError::into_inner);
            if log.is_empty() {
                continue;
            }
            let tail = &log[log.len().saturating_sub(LOG_TAIL)..];
            let _ = write!(text, "\n--- stderr of {label} ---\n{}", String::from_utf8_lossy(tail).trim_end());
        }
        text
    }

    fn lock_logs(&self) -> std::sync::MutexGuard<'_, Vec<(String, Log)>> {
        self.logs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A token unique to this launch, so a connection reaching the wrong rendezvous shows.
fn new_token(id: WorkerId) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("testkit-{}-{id}-{nanos:09}", std::process::id())
}

/// The worker's view of the `CLUSTERFY_*` environment set on `command`.
fn worker_env(command: &Command) -> WorkerEnv {
    WorkerEnv::from_pairs(command.as_std().get_envs().filter_map(|(key, value)| {
        let key = key.to_str().filter(|key| key.starts_with(clusterfy_core::env::ENV_PREFIX))?;
        Some((key.to_owned(), value?.to_str()?.to_owned()))
    }))
}

async fn keep_log(mut stderr: tokio::process::ChildStderr, log: Log) {
    let mut chunk = [0u8; 4096];
    while let Ok(read @ 1..) = stderr.read(&mut chunk).await {
        log.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(&chunk[..read]);
    }
}

/// A running peer: a process or, for in-process transports, a task.
enum Peer {
    Process(Child),
    Task(JoinHandle<u8>),
}

/// How a peer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerExit {
    /// It exited with this code.
    Code(i32),
    /// It was killed (a signal, or its task aborted).
    Killed,
}

/// The primary's handle on one launched worker.
pub(crate) struct Worker {
    pub(crate) id: WorkerId,
    token: String,
    pub(crate) label: String,
    pub(crate) rendezvous: Box<dyn Rendezvous>,
    peer: Peer,
    exit: Option<PeerExit>,
}

impl Worker {
    /// Accepts the worker's connection within the step deadline.
    pub(crate) async fn accept(&mut self) -> Outcome<Connection> {
        let doing = format!("accepting the connection of {}", self.label);
        within(&doing, self.rendezvous.accept()).await?.context(doing)
    }

    /// Reads the worker's `Hello` and checks it as the facade does.
    pub(crate) async fn handshake(&mut self, connection: Connection, max_frame_len: usize) -> Outcome<Link> {
        let mut link = Link {
            reader: FrameReader::new(connection.reader, max_frame_len),
            writer: FrameWriter::new(connection.writer, max_frame_len),
            label: self.label.clone(),
        };
        let doing = format!("reading the Hello of {}", self.label);
        let hello = within(&doing, link.reader.next::<Message>()).await?.context(&doing)?;
        let expected =
            Hello { protocol_version: PROTOCOL_VERSION, worker_id: self.id, token: self.token.clone() };
        match hello {
            Some(Message::Hello(hello)) if hello == expected => Ok(link),
            Some(other) => Err(Failure::new(format!(
                "{doing}: got {other:?}, expected {expected:?}: the connection reached the wrong \
                 rendezvous, or the environment set on the command did not reach the worker"
            ))),
            None => Err(Failure::new(format!("{doing}: the stream ended before the first frame"))),
        }
    }

    /// Accepts the connection and completes the handshake, with the default frame limit.
    pub(crate) async fn connect(&mut self) -> Outcome<Link> {
        let connection = self.accept().await?;
        self.handshake(connection, DEFAULT_MAX_FRAME_LEN).await
    }

    /// Waits (within the step deadline) for the peer to end.
    pub(crate) async fn wait(&mut self) -> Outcome<PeerExit> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        let doing = format!("waiting for {} to exit", self.label);
        let exit = match &mut self.peer {
            Peer::Process(child) => {
                let status = within(&doing, child.wait()).await?.context(&doing)?;
                status.code().map_or(PeerExit::Killed, PeerExit::Code)
            }
            Peer::Task(handle) => match within(&doing, handle).await? {
                Ok(code) => PeerExit::Code(i32::from(code)),
                Err(err) if err.is_cancelled() => PeerExit::Killed,
                Err(err) => return Err(Failure::new(format!("{doing}: the peer task panicked: {err}"))),
            },
        };
        self.exit = Some(exit);
        Ok(exit)
    }

    /// Waits for the peer to exit with one of `allowed` codes.
    pub(crate) async fn expect_exit(&mut self, allowed: &[u8], why: &str) -> Outcome {
        let exit = self.wait().await?;
        let ok = matches!(exit, PeerExit::Code(code) if allowed.iter().any(|a| i32::from(*a) == code));
        let wanted: Vec<_> = allowed.iter().map(|code| exit::describe(i32::from(*code))).collect();
        ensure!(
            ok,
            "{} should have exited because {why} ({}), but {}",
            self.label,
            wanted.join(" or "),
            match exit {
                PeerExit::Code(code) => format!("it {} (code {code})", exit::describe(code)),
                PeerExit::Killed => "it was killed".to_owned(),
            }
        );
        Ok(())
    }

    /// Kills the peer (SIGKILL, or aborting its task) without waiting for it.
    pub(crate) fn kill(&mut self) -> Outcome {
        match &mut self.peer {
            Peer::Process(child) => child.start_kill().context(format!("killing {}", self.label)),
            Peer::Task(handle) => {
                handle.abort();
                Ok(())
            }
        }
    }

    /// How [`Worker::kill`] kills this peer, for messages.
    pub(crate) fn kill_description(&self) -> String {
        match &self.peer {
            Peer::Process(child) => match child.id() {
                Some(pid) => format!("SIGKILL to pid {pid}"),
                None => "SIGKILL".to_owned(),
            },
            Peer::Task(_) => "aborting its task".to_owned(),
        }
    }
}

/// The primary's framed connection to one worker, after its `Hello`.
pub(crate) struct Link {
    pub(crate) reader: FrameReader,
    pub(crate) writer: FrameWriter,
    pub(crate) label: String,
}

impl Link {
    /// Sends one request within the step deadline.
    pub(crate) async fn send(&mut self, request: &ToPeer) -> Outcome {
        let doing = format!("sending {} to {}", short(request), self.label);
        within(&doing, self.writer.send(request)).await?.context(doing)
    }

    /// Receives one message within the step deadline; the stream ending is a failure.
    pub(crate) async fn receive(&mut self, what: &str) -> Outcome<ToPrimary> {
        receive(&mut self.reader, &self.label, what).await
    }
}

/// [`Link::receive`] on a reader borrowed apart from its writer.
pub(crate) async fn receive(reader: &mut FrameReader, label: &str, what: &str) -> Outcome<ToPrimary> {
    let doing = format!("receiving {what} from {label}");
    match within(&doing, reader.next::<ToPrimary>()).await?.context(&doing)? {
        Some(message) => Ok(message),
        None => Err(Failure::new(format!("{doing}: the stream ended"))),
    }
}

/// A request without its bulk, for messages.
fn short(request: &ToPeer) -> String {
    match request {
        ToPeer::Ping { seq, body } => format!("ping {seq} ({} bytes)", body.len()),
        other => format!("{other:?}"),
    }
}
