//! The helper process of the end-to-end tests: a worker (or, in scenario `primary`, a primary)
//! whose behaviour the first argument selects; see [`clusterfy_tests::Scenario`].

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clusterfy::core::codec::{DEFAULT_MAX_FRAME_LEN, FrameDecoder, HEADER_LEN, encode_frame};
use clusterfy::core::protocol::{Hello, Message, Notice, PROTOCOL_VERSION};
use clusterfy::core::transport::{ENV_TOKEN, ENV_WORKER_ID};
use clusterfy::{
    ENV_WORKER_NAME, Error, ErrorKind, Primary, Program, Result, ShutdownReason, Worker, WorkerBuilder,
    WorkerId, WorkerOptions, WorkerStatus,
};
use clusterfy_tests::{
    ACK_LINE_PREFIX, AskWhoAmI, BroadcastWhoAmI, CallPrimary, CompareAndSwapAt, ENV_GARBAGE, ENV_HOOK_FILE,
    Echo, ExitGracefully, ExitWith, FlapStatus, GARBAGE_CLOSED_WITH_NOTICE, GARBAGE_CLOSED_WITHOUT_NOTICE,
    GARBAGE_OVERSIZE, GARBAGE_UNDECODABLE, HOOK_NO_SHUTDOWN_REQUEST, HOOK_SHUTDOWN_REQUESTED,
    HandshakeReport, Identity, IncrementMany, NextChange, Note, PERSIST_WRITERS, PIDS_LINE_PREFIX,
    PrimaryEcho, ReadAt, RunKv, SaveAt, Scenario, SetStatus, Sleep, SlowWhoAmI, StartWatch, WhoAmI,
    WorkUntilShutdown, WriteSequence,
};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Environment variable of the uds transport with the worker's socket path.
const ENV_UDS_PATH: &str = "CLUSTERFY_UDS_PATH";

fn main() -> ExitCode {
    let arg = std::env::args().nth(1).unwrap_or_default();
    let Some(scenario) = Scenario::parse(&arg) else {
        eprintln!(
            "test-worker: unknown scenario {arg:?}; expected one of {:?}",
            Scenario::ALL.map(Scenario::as_str)
        );
        return ExitCode::from(2);
    };
    if scenario == Scenario::CrashOnStart {
        eprintln!("test-worker: crashing on start, as scenario {scenario} asks");
        return ExitCode::from(1);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("test-worker: cannot start a tokio runtime: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(scenario)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("test-worker ({scenario}): {err}");
            ExitCode::from(2)
        }
    }
}

async fn run(scenario: Scenario) -> Result<()> {
    match scenario {
        Scenario::Normal => {
            connect(worker_builder("no such attempt".to_owned())).await?;
            std::future::pending::<()>().await;
        }
        Scenario::IgnoreShutdown => ignore_shutdown().await?,
        Scenario::NeverConnect => std::future::pending::<()>().await,
        Scenario::CrashOnStart => unreachable!("handled before the runtime starts"),
        Scenario::Evil => {
            let report = connect_with_wrong_token().await?;
            connect(worker_builder(report)).await?;
            std::future::pending::<()>().await;
        }
        Scenario::Garbage => garbage().await?,
        Scenario::Primary => primary().await?,
        Scenario::PersistPrimary => persist_primary().await?,
    }
    Ok(())
}

fn identity(worker: &Worker) -> Identity {
    Identity {
        id: worker.id().0,
        name: worker.name().to_owned(),
        pid: std::process::id(),
        restarts: worker.restarts(),
    }
}

/// Connects `builder`.
async fn connect(builder: WorkerBuilder) -> Result<Worker> {
    builder.connect().await
}

/// The stream of the watch a [`StartWatch`] command opened.
type Watch = Arc<tokio::sync::Mutex<Option<clusterfy::EventStream<clusterfy::Path>>>>;

/// A builder with a handler for every worker command of `clusterfy_tests` and a shutdown hook
/// that writes to the file named by [`ENV_HOOK_FILE`], if set.
fn worker_builder(handshake_report: String) -> WorkerBuilder {
    let handshake_report = Arc::new(handshake_report);
    let watch: Watch = Arc::default();
    let next_watch = Arc::clone(&watch);
    Worker::builder()
        .command(|kv: RunKv, ctx| async move {
            clusterfy_tests::remote_kv::run(&ctx.worker().storage(), &kv.root, kv.op).await
        })
        .command(|writes: WriteSequence, ctx| async move {
            use std::io::Write as _;
            let worker = ctx.worker();
            for n in 0..writes.count {
                worker.storage().save_with_parents(&format!("acks.{}.k{n}", worker.name()), &n).await?;
                let mut out = std::io::stdout().lock();
                // One short line per write, so lines of concurrent writers do not interleave.
                let _ = writeln!(out, "{ACK_LINE_PREFIX} {} {n}", worker.name());
                let _ = out.flush();
            }
            Ok(writes.count)
        })
        .command(move |start: StartWatch, ctx| {
            let watch = Arc::clone(&watch);
            async move {
                let stream = ctx.worker().storage().watch(&start.path).await?;
                *watch.lock().await = Some(stream);
                Ok(())
            }
        })
        .command(move |_: NextChange, _| {
            let watch = Arc::clone(&next_watch);
            async move {
                let mut guard = watch.lock().await;
                let stream =
                    guard.as_mut().ok_or_else(|| Error::new(ErrorKind::InvalidState, "no watch started"))?;
                match stream.next().await {
                    Some(path) => Ok(path.as_str().to_owned()),
                    None => Err(Error::new(ErrorKind::Closed, "the watch ended")),
                }
            }
        })
        .command(|echo: Echo, _| async move { Ok(echo.text) })
        .command(|_: WhoAmI, ctx| async move { Ok(identity(ctx.worker())) })
        .command(|slow: SlowWhoAmI, ctx| async move {
            if ctx.worker().name() == slow.slow {
                tokio::time::sleep(Duration::from_millis(slow.ms)).await;
            }
            Ok(identity(ctx.worker()))
        })
        .command(|sleep: Sleep, ctx| async move {
            let worker = ctx.worker();
            worker.set_status(WorkerStatus::Processing).await?;
            tokio::time::sleep(Duration::from_millis(sleep.ms)).await;
            worker.set_status(WorkerStatus::Idle).await
        })
        .command(|exit: ExitWith, _| async move { std::process::exit(exit.code) })
        .command(|exit: ExitGracefully, ctx| async move { ctx.worker().exit(exit.code).await })
        .command(|set: SetStatus, ctx| async move {
            ctx.worker().set_status(set.status).await?;
            Ok(ctx.worker().status())
        })
        .command(|flap: FlapStatus, ctx| async move {
            for _ in 0..flap.times {
                ctx.worker().set_status(WorkerStatus::Processing).await?;
                ctx.worker().set_status(WorkerStatus::Idle).await?;
            }
            Ok(())
        })
        .command(|work: WorkUntilShutdown, ctx| async move {
            let worker = ctx.worker().clone();
            worker.set_status(WorkerStatus::Processing).await?;
            tokio::spawn(async move {
                worker.shutdown_requested().await;
                if work.finish_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(work.finish_ms)).await;
                }
                // Finishing the work: Idle after a shutdown request exits the process.
                if let Err(err) = worker.set_status(WorkerStatus::Idle).await {
                    eprintln!("test-worker: turning Idle after the shutdown request failed: {err}");
                }
            });
            Ok(())
        })
        .command(|ask: AskWhoAmI, ctx| async move { ctx.worker().run(ask.target, WhoAmI).await })
        .command(|_: BroadcastWhoAmI, ctx| async move {
            let replies = ctx.worker().broadcast(WhoAmI).await?;
            Ok(replies.into_iter().map(|r| (r.worker.name, r.result.map_err(|e| e.to_string()))).collect())
        })
        .command(|call: CallPrimary, ctx| async move {
            ctx.worker().run_on_primary(PrimaryEcho { text: call.text }).await
        })
        .command(|save: SaveAt, ctx| async move {
            let storage = ctx.worker().storage();
            if save.create_parents {
                storage.save_with_parents(&save.path, &save.value).await
            } else {
                storage.save(&save.path, &save.value).await
            }
        })
        .command(|read: ReadAt, ctx| async move { ctx.worker().storage().retrieve_value(&read.path).await })
        .command(|cas: CompareAndSwapAt, ctx| async move {
            ctx.worker().storage().compare_and_swap(&cas.path, cas.expected.as_ref(), cas.new.as_ref()).await
        })
        .command(|inc: IncrementMany, ctx| async move {
            let storage = ctx.worker().storage();
            let mut last = 0;
            for _ in 0..inc.times {
                let written = storage.update::<i64, _>(&inc.path, |n| Some(n.unwrap_or(0) + 1)).await?;
                last = written.unwrap_or_default();
            }
            Ok(last)
        })
        .command(move |_: HandshakeReport, _| {
            let report = Arc::clone(&handshake_report);
            async move { Ok(report.as_str().to_owned()) }
        })
        .on_shutdown(|reason| async move {
            if let Some(path) = std::env::var_os(ENV_HOOK_FILE) {
                let name = std::env::var(ENV_WORKER_NAME).unwrap_or_default();
                let why = match reason {
                    ShutdownReason::Requested => HOOK_SHUTDOWN_REQUESTED,
                    _ => HOOK_NO_SHUTDOWN_REQUEST,
                };
                if let Err(err) = std::fs::write(&path, format!("{name} ran its shutdown hook: {why}")) {
                    eprintln!("test-worker: shutdown hook could not write {}: {err}", path.to_string_lossy());
                }
            }
        })
}

/// Busy for good, and deaf to SIGTERM: only SIGKILL ends it.
async fn ignore_shutdown() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| Error::io("trapping SIGTERM", e))?;
    let worker = connect(worker_builder("no such attempt".to_owned())).await?;
    worker.set_status(WorkerStatus::Processing).await?;
    while sigterm.recv().await.is_some() {
        worker.run_on_primary(Note { text: "sigterm".to_owned() }).await?;
    }
    std::future::pending::<()>().await;
    Ok(())
}

fn env_var(key: &str) -> Result<String> {
    std::env::var(key).map_err(|_| Error::new(ErrorKind::Config, format!("{key} is not set")))
}

fn worker_id_from_env() -> Result<WorkerId> {
    let raw = env_var(ENV_WORKER_ID)?;
    raw.parse().map(WorkerId).map_err(|_| Error::new(ErrorKind::Config, format!("{ENV_WORKER_ID}={raw:?}")))
}

async fn write_message(stream: &mut UnixStream, message: &Message) -> Result<()> {
    let mut frame = Vec::new();
    encode_frame(message, DEFAULT_MAX_FRAME_LEN, &mut frame)?;
    stream.write_all(&frame).await.map_err(|e| Error::io("writing a frame", e))
}

/// The next message, or `None` at EOF.
async fn read_message(stream: &mut UnixStream, decoder: &mut FrameDecoder) -> Result<Option<Message>> {
    loop {
        if let Some(message) = decoder.decode::<Message>()? {
            return Ok(Some(message));
        }
        let n = stream.read_buf(decoder.buffer_mut()).await.map_err(|e| Error::io("reading a frame", e))?;
        if n == 0 {
            return Ok(None);
        }
    }
}

/// Connects with a wrong token and tells how the primary answered.
async fn connect_with_wrong_token() -> Result<String> {
    let path = env_var(ENV_UDS_PATH)?;
    let mut stream =
        UnixStream::connect(&path).await.map_err(|e| Error::io("connecting with a wrong token", e))?;
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        worker_id: worker_id_from_env()?,
        token: "0123456789abcdef-certainly-not-the-token".to_owned(),
    };
    write_message(&mut stream, &Message::Hello(hello)).await?;
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    let first = tokio::time::timeout(Duration::from_secs(10), read_message(&mut stream, &mut decoder))
        .await
        .map_err(|_| Error::new(ErrorKind::Timeout, "the primary neither answered nor closed"))??;
    let report = match first {
        None => "closed without a notice".to_owned(),
        Some(Message::Welcome(_)) => return Ok("welcomed".to_owned()),
        Some(Message::Notice(Notice::Error(err))) => {
            let rest =
                tokio::time::timeout(Duration::from_secs(10), read_message(&mut stream, &mut decoder)).await;
            match rest {
                Ok(Ok(None)) => format!("refused: {:?}, then closed", err.kind),
                Ok(other) => format!("refused: {:?}, then {other:?}", err.kind),
                Err(_) => format!("refused: {:?}, but left open", err.kind),
            }
        }
        Some(other) => format!("unexpected answer {other:?}"),
    };
    Ok(report)
}

/// A valid handshake by hand, then malformed bytes in answer to the first request.
async fn garbage() -> Result<()> {
    let mode = env_var(ENV_GARBAGE)?;
    let path = env_var(ENV_UDS_PATH)?;
    let mut stream = UnixStream::connect(&path).await.map_err(|e| Error::io("connecting", e))?;
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        worker_id: worker_id_from_env()?,
        token: env_var(ENV_TOKEN)?,
    };
    write_message(&mut stream, &Message::Hello(hello)).await?;
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    match read_message(&mut stream, &mut decoder).await? {
        Some(Message::Welcome(_)) => {}
        other => return Err(Error::new(ErrorKind::Protocol, format!("expected Welcome, got {other:?}"))),
    }
    write_message(&mut stream, &Message::Notice(Notice::Ready)).await?;
    loop {
        match read_message(&mut stream, &mut decoder).await? {
            Some(Message::Request { .. }) => break,
            Some(_) => {}
            None => return Err(Error::new(ErrorKind::Closed, "the primary closed before sending a request")),
        }
    }
    let bytes: Vec<u8> = match mode.as_str() {
        // A whole frame whose payload starts with an enum variant `Message` does not have.
        GARBAGE_UNDECODABLE => [1u32.to_le_bytes().as_slice(), &[0x7f]].concat(),
        // Announces 4 GiB - 1; nothing after the header is needed to reject it.
        GARBAGE_OVERSIZE => [u32::MAX.to_le_bytes().as_slice(), &[0u8; 16]].concat(),
        other => return Err(Error::new(ErrorKind::Config, format!("{ENV_GARBAGE}={other:?}"))),
    };
    debug_assert!(bytes.len() > HEADER_LEN);
    stream.write_all(&bytes).await.map_err(|e| Error::io("writing garbage", e))?;
    // Wait for the primary to hang up; note whether it said why first.
    let mut noticed = false;
    loop {
        match read_message(&mut stream, &mut decoder).await {
            Ok(Some(Message::Notice(Notice::Error(err)))) if err.kind == ErrorKind::Protocol => {
                noticed = true
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(err) => {
                eprintln!("test-worker (garbage): reading after the garbage failed: {err}");
                break;
            }
        }
    }
    std::process::exit(if noticed { GARBAGE_CLOSED_WITH_NOTICE } else { GARBAGE_CLOSED_WITHOUT_NOTICE })
}

/// A primary of two workers of this binary that prints their pids and waits.
async fn primary() -> Result<()> {
    let primary = Primary::builder()
        .ready_timeout(Duration::from_secs(20))
        .command(|_: Note, _| async { Ok(()) })
        .build()
        .await?;
    let exe = std::env::current_exe().map_err(|e| Error::io("finding test-worker", e))?;
    let hook_file = std::env::var_os(ENV_HOOK_FILE);
    for name in ["orphan-a", "orphan-b"] {
        let mut options = WorkerOptions::default().program(Program::new(&exe, [Scenario::Normal.as_str()]));
        if let Some(prefix) = &hook_file {
            let mut path = prefix.clone();
            path.push(format!(".{name}"));
            options = options.env(ENV_HOOK_FILE, path);
        }
        primary.fork(name, options).await?;
    }
    primary.ready().await?;
    let pids: Vec<String> = primary.workers().iter().filter_map(|w| w.pid).map(|p| p.to_string()).collect();
    println!("{PIDS_LINE_PREFIX} {}", pids.join(" "));
    std::future::pending::<()>().await;
    Ok(())
}

/// A primary on sled or Redis whose workers write for good (see [`Scenario::PersistPrimary`]).
async fn persist_primary() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let builder = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["sled", dir] => Primary::builder().storage(clusterfy::storage::SledStorage::open(dir).await?),
        ["redis", url, prefix] => {
            let mirror = clusterfy::storage::RedisMirror::builder(*url)
                .key_prefix(*prefix)
                .ack(clusterfy::storage::AckMode::Redis)
                .connect()
                .await?;
            Primary::builder().storage(mirror)
        }
        other => {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("persist-primary takes `sled <dir>` or `redis <url> <prefix>`, not {other:?}"),
            ));
        }
    };
    let primary = builder.ready_timeout(Duration::from_secs(20)).build().await?;
    let exe = std::env::current_exe().map_err(|e| Error::io("finding test-worker", e))?;
    for name in PERSIST_WRITERS {
        primary
            .fork(name, WorkerOptions::default().program(Program::new(&exe, [Scenario::Normal.as_str()])))
            .await?;
    }
    primary.ready().await?;
    let writing = PERSIST_WRITERS.map(|name| {
        let primary = primary.clone();
        async move { primary.run(name, WriteSequence { count: u64::MAX }).await }
    });
    futures::future::join_all(writing).await;
    std::future::pending::<()>().await;
    Ok(())
}
