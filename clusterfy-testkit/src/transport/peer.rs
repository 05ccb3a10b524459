//! The worker side of the suite: what a peer process (or task) does once started.
//!
//! A peer never writes to stdout (it is the protocol under the stdio transport); it tells the
//! primary side how things went through its exit code, and why through stderr.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clusterfy_core::codec::DEFAULT_MAX_FRAME_LEN;
use clusterfy_core::protocol::{Hello, Message, PROTOCOL_VERSION};
use clusterfy_core::transport::{ENV_TOKEN, ENV_WORKER_ID, Transport, WorkerEnv};
use clusterfy_core::{Error, ErrorKind, Result, WorkerId};

use super::wire::{FrameReader, FrameWriter, ToPeer, ToPrimary, burst_body};

/// A peer process exits by itself after this long, so that no peer outlives a suite that was
/// interrupted (a watchdog fired, the runner was killed) by more than this.
const PEER_LIFETIME: Duration = Duration::from_secs(60);

/// The exit codes of a peer.
pub(crate) mod exit {
    /// It was asked to exit ([`ToPeer::Exit`](super::ToPeer::Exit)).
    pub(crate) const ON_REQUEST: u8 = 0;
    /// Something unexpected happened; stderr says what.
    pub(crate) const FAILED: u8 = 1;
    /// Its reads ended cleanly (EOF).
    pub(crate) const SAW_EOF: u8 = 3;
    /// A read or write failed with an I/O error (or the stream ended inside a frame): how a
    /// peer sees the primary going away while it writes, and which the contract allows in place
    /// of EOF while it reads.
    pub(crate) const STREAM_FAILED: u8 = 4;
    /// `Transport::connect` failed; stderr says why.
    pub(crate) const CONNECT_FAILED: u8 = 5;
    /// It ran for [`PEER_LIFETIME`](super::PEER_LIFETIME) and gave up.
    pub(crate) const LIFETIME_OVER: u8 = 6;

    /// What an exit code means, for failure messages.
    pub(crate) fn describe(code: i32) -> &'static str {
        match u8::try_from(code) {
            Ok(ON_REQUEST) => "exited on request",
            Ok(FAILED) => "failed (see its stderr)",
            Ok(SAW_EOF) => "saw its reads end with EOF",
            Ok(STREAM_FAILED) => "saw its reads or writes fail",
            Ok(CONNECT_FAILED) => "could not connect (see its stderr)",
            Ok(LIFETIME_OVER) => "ran out of lifetime",
            Ok(101) => "panicked (see its stderr)",
            _ => "exited with an unknown code",
        }
    }
}

/// What a peer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Script {
    /// Connect, send the `Hello`, then answer [`ToPeer`] requests until told to exit or the
    /// stream ends.
    Serve,
    /// Connect, send nothing, and wait for the stream to end.
    Silent,
    /// Never connect; wait to be killed.
    Absent,
}

impl Script {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Script::Serve => "serve",
            Script::Silent => "silent",
            Script::Absent => "absent",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<Self> {
        [Script::Serve, Script::Silent, Script::Absent].into_iter().find(|s| s.as_str() == name)
    }
}

/// Runs `script` as the worker whose environment is `env`, and returns its exit code; says why
/// on `log` (stderr for a process).
pub(crate) async fn run(
    transport: &dyn Transport,
    env: &WorkerEnv,
    script: Script,
    log: &(dyn Fn(String) + Sync),
) -> u8 {
    let connection = match script {
        Script::Absent => return std::future::pending().await,
        Script::Serve | Script::Silent => match transport.connect(env).await {
            Ok(connection) => connection,
            Err(err) => {
                log(format!("testkit peer ({}): connect failed: {err}", script.as_str()));
                return exit::CONNECT_FAILED;
            }
        },
    };
    let mut reader = FrameReader::new(connection.reader, DEFAULT_MAX_FRAME_LEN);
    let mut writer = FrameWriter::new(connection.writer, DEFAULT_MAX_FRAME_LEN);
    let ended = match script {
        Script::Serve => serve(env, &mut reader, &mut writer).await,
        Script::Silent | Script::Absent => reader.drain().await.map(|()| Ended::Eof),
    };
    match ended {
        Ok(Ended::Eof) => exit::SAW_EOF,
        Ok(Ended::OnRequest) => exit::ON_REQUEST,
        Err(err) if matches!(err.kind(), ErrorKind::Io | ErrorKind::Closed) => {
            log(format!("testkit peer ({}): the stream failed: {err}", script.as_str()));
            exit::STREAM_FAILED
        }
        Err(err) => {
            log(format!("testkit peer ({}): {err}", script.as_str()));
            exit::FAILED
        }
    }
}

/// How a serving peer stopped.
enum Ended {
    Eof,
    OnRequest,
}

async fn serve(env: &WorkerEnv, reader: &mut FrameReader, writer: &mut FrameWriter) -> Result<Ended> {
    let raw_id = env.require(ENV_WORKER_ID)?;
    let worker_id = raw_id
        .parse()
        .map(WorkerId)
        .map_err(|_| Error::new(ErrorKind::Config, format!("{ENV_WORKER_ID} is {raw_id:?}, not a number")))?;
    let hello =
        Hello { protocol_version: PROTOCOL_VERSION, worker_id, token: env.require(ENV_TOKEN)?.to_owned() };
    writer.send(&Message::Hello(hello)).await?;
    loop {
        let Some(request) = reader.next::<ToPeer>().await? else {
            return Ok(Ended::Eof);
        };
        match request {
            ToPeer::Ping { seq, body } => writer.send(&ToPrimary::Pong { seq, body }).await?,
            ToPeer::SendBurst { count } => {
                for seq in 0..count {
                    writer.queue(&ToPrimary::Burst { seq, body: burst_body(seq) }).await?;
                }
                writer.flush().await?;
            }
            ToPeer::AnnounceFrameOf { len } => {
                let mut bytes = len.to_le_bytes().to_vec();
                bytes.extend_from_slice(&[0xAB; 16]);
                writer.send_raw(&bytes).await?;
            }
            ToPeer::Exit => return Ok(Ended::OnRequest),
        }
    }
}

/// `main` of a peer process running `script` (as named in the environment).
pub(crate) fn process_main(transport: Arc<dyn Transport>, script: &str) -> ExitCode {
    let Some(script) = Script::parse(script) else {
        eprintln!("testkit peer: unknown script {script:?}");
        return ExitCode::from(exit::FAILED);
    };
    std::thread::spawn(|| {
        std::thread::sleep(PEER_LIFETIME);
        eprintln!("testkit peer: still running after {PEER_LIFETIME:?}; exiting so that no orphan is left");
        std::process::exit(i32::from(exit::LIFETIME_OVER));
    });
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("testkit peer: could not start a tokio runtime: {err}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let env = WorkerEnv::from_process();
    let log = |line: String| eprintln!("{line}");
    ExitCode::from(runtime.block_on(run(transport.as_ref(), &env, script, &log)))
}
