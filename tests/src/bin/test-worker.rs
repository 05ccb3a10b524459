//! The helper process of the end-to-end tests: a worker (or, in scenario `primary`, a primary)
//! whose behaviour the first argument selects; see [`clusterfy_tests::Scenario`].

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clusterfy::transport::{Connection, Transport, WorkerEnv};
use clusterfy::{
    Error, ErrorKind, Primary, Result, Value, Worker, WorkerBuilder, WorkerId,
    env::ENV_WORKER_NAME,
    listen::{Accepted, Listener},
    primary::{Program, WorkerOptions},
    worker::{ShutdownReason, WorkerStatus},
};
use clusterfy_core::codec::{DEFAULT_MAX_FRAME_LEN, FrameDecoder, HEADER_LEN, encode_frame};
use clusterfy_core::protocol::{Hello, Message, Notice, PROTOCOL_VERSION, Request, StorageRequest};
use clusterfy_core::transport::{ByteReader, ByteWriter, ENV_TOKEN, ENV_TRANSPORT, ENV_WORKER_ID};
use clusterfy_tests::{
    ACK_LINE_PREFIX, API_ANSWER, AskWhoAmI, AtomicOp, BroadcastWhoAmI, CallPrimary, CompareAndSwapAt,
    ENV_GARBAGE, ENV_GROW_BYTES, ENV_HOOK_FILE, ENV_NON_DUMPABLE_PRIMARY, ENV_START_DELAY_MS, Echo,
    ExitGracefully, ExitWith, FOREIGN_WORKER, FlapStatus, GARBAGE_OVERSIZE, GARBAGE_UNDECODABLE,
    GREEDY_BIG_PATH, GREEDY_COUNT_PATH, GREEDY_PAIRS, GREEDY_SENT_LINE, HOOK_NO_SHUTDOWN_REQUEST,
    HOOK_SHUTDOWN_REQUESTED, HUNG_UP_WITH_NOTICE, HUNG_UP_WITHOUT_NOTICE, Identity, IncrementHot,
    IncrementMany, LISTENFD_ANSWER, NextChange, Note, PERSIST_WRITERS, PIDS_LINE_PREFIX, PrimaryEcho,
    READY_LINE, ReadAt, ReplicaGet, RunAtomic, RunKv, SaveAt, SaveThenReadReplica, Scenario, SetStatus,
    Sleep, SlowWhoAmI, StartReplica, StartWatch, TopScores, WhoAmI, WorkUntilShutdown, WriteSequence,
};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::RwLock;

/// Held (shared) by work that must finish before the process may end after a shutdown request.
static WORK: RwLock<()> = RwLock::const_new(());

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
    // A hung worker must block the one thread that could answer its pings.
    let mut builder = if scenario == Scenario::Hang {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(2);
        builder
    };
    let runtime = match builder.enable_all().build() {
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
        Scenario::Normal => serve_until_shutdown(connect(worker_builder()).await?).await,
        Scenario::IgnoreShutdown => ignore_shutdown().await?,
        Scenario::NeverConnect => std::future::pending::<()>().await,
        Scenario::CrashOnStart => unreachable!("handled before the runtime starts"),
        Scenario::Evil => impersonate().await?,
        Scenario::Garbage => garbage().await?,
        Scenario::Greedy => greedy().await?,
        Scenario::Primary => primary().await?,
        Scenario::PersistPrimary => persist_primary().await?,
        Scenario::IgnoreRequest => {
            let worker = connect(worker_builder()).await?;
            worker.set_status(WorkerStatus::Processing).await?;
            std::future::pending::<()>().await
        }
        Scenario::Hang => {
            let _worker = connect(worker_builder()).await?;
            eprintln!("test-worker: blocking the runtime, as scenario {scenario} asks");
            // Blocking on purpose: nothing else on this runtime may run again.
            std::thread::sleep(Duration::from_secs(3600));
        }
        Scenario::Grow => {
            let worker = connect(worker_builder()).await?;
            let bytes: usize = env_var(ENV_GROW_BYTES)?
                .parse()
                .map_err(|_| Error::new(ErrorKind::Config, ENV_GROW_BYTES))?;
            // Touched, so it counts as resident memory.
            let held = std::hint::black_box(vec![1u8; bytes]);
            serve_until_shutdown(worker).await;
            drop(std::hint::black_box(held));
        }
        Scenario::ListenfdWorker => listenfd_worker().await?,
        Scenario::SocketActivatedPrimary => socket_activated_primary().await?,
        Scenario::ConnectThenCrash => {
            let _worker = connect(worker_builder().manual_ready()).await?;
            eprintln!("test-worker: failing before it is ready, as scenario {scenario} asks");
            std::process::exit(3);
        }
        Scenario::ApiWorker => {
            let worker = connect(worker_builder()).await?;
            let listener = worker.listener("api")?;
            answer_each_connection(&worker, listener, API_ANSWER).await?;
        }
        Scenario::HoldListener => {
            let worker = connect(worker_builder().manual_ready()).await?;
            let _listener = worker.listener("api")?;
            worker.ready().await?;
            serve_until_shutdown(worker).await;
        }
        Scenario::SlowStart => {
            let delay: u64 = env_var(ENV_START_DELAY_MS)?
                .parse()
                .map_err(|_| Error::new(ErrorKind::Config, ENV_START_DELAY_MS))?;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            serve_until_shutdown(connect(worker_builder()).await?).await;
        }
        Scenario::StallHello => stall_hello().await?,
        Scenario::SelfPrimary => match clusterfy::role() {
            clusterfy::Role::Worker => {
                let _worker = connect(worker_builder()).await?;
                // Deaf to its connection's end: only the parent-death signal can end it.
                std::thread::sleep(Duration::from_secs(3600));
            }
            clusterfy::Role::Primary => self_primary().await?,
        },
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

/// What a well-behaved worker does: serve until the shutdown request, let running work finish,
/// then return from `main`.
async fn serve_until_shutdown(worker: Worker) {
    worker.shutdown_requested().await;
    let _no_work_left = WORK.write().await;
}

/// Connects `builder`.
async fn connect(builder: WorkerBuilder) -> Result<Worker> {
    builder.connect().await
}

/// The replica [`StartReplica`] started, for [`ReplicaGet`] and [`SaveThenReadReplica`].
type HeldReplica = Arc<tokio::sync::Mutex<Option<clusterfy::storage::Replica>>>;

/// The stream of the watch a [`StartWatch`] command opened.
type Watch = Arc<tokio::sync::Mutex<Option<clusterfy::events::EventStream<clusterfy::Path>>>>;

/// A builder with a handler for every worker command of `clusterfy_tests` and a shutdown hook
/// that writes to the file named by [`ENV_HOOK_FILE`], if set.
fn worker_builder() -> WorkerBuilder {
    let watch: Watch = Arc::default();
    let next_watch = Arc::clone(&watch);
    let start_replica: HeldReplica = Arc::default();
    let (get_replica, read_replica) = (Arc::clone(&start_replica), Arc::clone(&start_replica));
    Worker::builder()
        .command(|kv: RunKv, ctx| async move {
            clusterfy_tests::remote_kv::run(&ctx.worker().storage(), &kv.root, kv.op).await
        })
        .command(|writes: WriteSequence, ctx| async move {
            use std::io::Write as _;
            let worker = ctx.worker();
            for n in 0..writes.count {
                worker.storage().save_with_parents(&format!("acks.{}.k{n}", worker.name()), &n).await?;
                if !writes.announce {
                    continue;
                }
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
        .command(|exit: ExitGracefully, ctx| async move {
            ctx.worker().exit(exit.code).await;
            Ok(())
        })
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
            // Taken before the reply, so the process cannot end before this work is done.
            let working = WORK.read().await;
            tokio::spawn(async move {
                worker.shutdown_requested().await;
                if work.finish_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(work.finish_ms)).await;
                }
                if let Err(err) = worker.set_status(WorkerStatus::Idle).await {
                    eprintln!("test-worker: turning Idle after the shutdown request failed: {err}");
                }
                drop(working);
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
        .command(|hot: IncrementHot, ctx| async move {
            let storage = ctx.worker().storage();
            let increments = futures::stream::iter(0..hot.times).map(|_| storage.increment(&hot.path, 1));
            let seen: Vec<Result<i64>> = increments.buffer_unordered(hot.in_flight.max(1)).collect().await;
            seen.into_iter().collect()
        })
        .command(|RunAtomic(op), ctx| async move { run_atomic(&ctx.worker().storage(), op).await })
        .command(move |start: StartReplica, ctx| {
            let replica = Arc::clone(&start_replica);
            async move {
                let started = ctx.worker().storage().replica(&start.path).await?;
                *replica.lock().await = Some(started);
                Ok(())
            }
        })
        .command(move |get: ReplicaGet, _| {
            let replica = Arc::clone(&get_replica);
            async move {
                let guard = replica.lock().await;
                let replica = guard
                    .as_ref()
                    .ok_or_else(|| Error::new(ErrorKind::InvalidState, "no replica started"))?;
                let Some(until) = get.until else { return replica.retrieve_value(&get.path) };
                let mut changes = replica.changed();
                let wait = async {
                    loop {
                        let shown = replica.retrieve_value(&get.path)?;
                        if shown.as_ref() == Some(&until) {
                            return Ok(shown);
                        }
                        if changes.next().await.is_none() {
                            return Err(Error::new(ErrorKind::Closed, "the replica's changes ended"));
                        }
                    }
                };
                tokio::time::timeout(Duration::from_secs(10), wait).await.map_err(|_| {
                    Error::new(ErrorKind::Timeout, "the replica did not show the value within 10 s")
                })?
            }
        })
        .command(move |save: SaveThenReadReplica, ctx| {
            let replica = Arc::clone(&read_replica);
            async move {
                ctx.worker().storage().save(&save.path, &save.value).await?;
                let guard = replica.lock().await;
                guard
                    .as_ref()
                    .ok_or_else(|| Error::new(ErrorKind::InvalidState, "no replica started"))?
                    .retrieve_value(&save.path)
            }
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

/// Runs one atomic operation, its answer as a `Value`.
async fn run_atomic(storage: &clusterfy::storage::Storage, op: AtomicOp) -> Result<Value> {
    Ok(match op {
        AtomicOp::Increment { path, by } => Value::Int(storage.increment(&path, by).await?),
        AtomicOp::IncrementFloat { path, by } => Value::Float(storage.increment_float(&path, by).await?),
        AtomicOp::Append { path, value } => Value::from(storage.append(&path, &value).await? as u64),
        AtomicOp::RemoveValue { path, value } => {
            Value::from(storage.remove_value(&path, &value).await? as u64)
        }
        AtomicOp::InsertIfAbsent { path, value } => {
            Value::Bool(storage.insert_if_absent(&path, &value).await?)
        }
        AtomicOp::Take { path } => storage.take::<Value>(&path).await?.unwrap_or(Value::Null),
        AtomicOp::TopScores { path, n, keep } => {
            Value::Bool(storage.apply(&path, TopScores { n, keep }).await?)
        }
    })
}

/// Busy for good, and deaf to SIGTERM: only SIGKILL ends it.
async fn ignore_shutdown() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| Error::io("trapping SIGTERM", e))?;
    let worker = connect(worker_builder()).await?;
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

/// This worker's own channel, taken with the transport the primary chose, to speak the protocol
/// by hand.
async fn raw_channel() -> Result<Connection> {
    let env = WorkerEnv::from_process();
    match env.require(ENV_TRANSPORT)? {
        "uds" => clusterfy::transport::UdsTransport::new().connect(&env).await,
        "stdio" => clusterfy::transport::StdioTransport::new().connect(&env).await,
        other => Err(Error::new(ErrorKind::Config, format!("unknown transport {other:?}"))),
    }
}

async fn write_message(writer: &mut ByteWriter, message: &Message) -> Result<()> {
    let mut frame = Vec::new();
    encode_frame(message, DEFAULT_MAX_FRAME_LEN, &mut frame)?;
    writer.write_all(&frame).await.map_err(|e| Error::io("writing a frame", e))?;
    writer.flush().await.map_err(|e| Error::io("writing a frame", e))
}

/// The next message, or `None` at EOF.
async fn read_message(reader: &mut ByteReader, decoder: &mut FrameDecoder) -> Result<Option<Message>> {
    loop {
        if let Some(message) = decoder.decode::<Message>()? {
            return Ok(Some(message));
        }
        let n = reader.read_buf(decoder.buffer_mut()).await.map_err(|e| Error::io("reading a frame", e))?;
        if n == 0 {
            return Ok(None);
        }
    }
}

/// Reads until the primary hangs up; the exit code says whether it sent a `Notice::Error` of
/// kind `expected` first.
async fn exit_when_hung_up(reader: &mut ByteReader, decoder: &mut FrameDecoder, expected: ErrorKind) -> ! {
    let mut noticed = false;
    loop {
        match read_message(reader, decoder).await {
            Ok(Some(Message::Notice(Notice::Error(err)))) if err.kind == expected => noticed = true,
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(err) => {
                eprintln!("test-worker: reading until the primary hung up failed: {err}");
                break;
            }
        }
    }
    std::process::exit(if noticed { HUNG_UP_WITH_NOTICE } else { HUNG_UP_WITHOUT_NOTICE })
}

/// Presents another worker's id on its own channel, then waits for the primary to hang up.
async fn impersonate() -> Result<()> {
    let Connection { mut reader, mut writer, .. } = raw_channel().await?;
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        worker_id: WorkerId(worker_id_from_env()?.0 + 1000),
        token: std::env::var(ENV_TOKEN).unwrap_or_default(),
    };
    write_message(&mut writer, &Message::Hello(hello)).await?;
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    exit_when_hung_up(&mut reader, &mut decoder, ErrorKind::Unauthorized).await
}

/// The first bytes of a valid Hello frame, and then nothing.
async fn stall_hello() -> Result<()> {
    let Connection { writer: mut channel, reader: _keep_open, .. } = raw_channel().await?;
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        worker_id: worker_id_from_env()?,
        token: std::env::var(ENV_TOKEN).unwrap_or_default(),
    };
    let mut frame = Vec::new();
    encode_frame(&Message::Hello(hello), DEFAULT_MAX_FRAME_LEN, &mut frame)?;
    channel.write_all(&frame[..HEADER_LEN + 1]).await.map_err(|e| Error::io("writing part of a Hello", e))?;
    channel.flush().await.map_err(|e| Error::io("writing part of a Hello", e))?;
    std::future::pending().await
}

/// This worker's own channel after a valid handshake by hand and `Ready`, with the decoder of
/// what the primary sends.
async fn ready_by_hand() -> Result<(ByteReader, ByteWriter, FrameDecoder)> {
    let Connection { mut reader, mut writer, .. } = raw_channel().await?;
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        worker_id: worker_id_from_env()?,
        token: std::env::var(ENV_TOKEN).unwrap_or_default(),
    };
    write_message(&mut writer, &Message::Hello(hello)).await?;
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    match read_message(&mut reader, &mut decoder).await? {
        Some(Message::Welcome(_)) => {}
        other => return Err(Error::new(ErrorKind::Protocol, format!("expected Welcome, got {other:?}"))),
    }
    write_message(&mut writer, &Message::Notice(Notice::Ready)).await?;
    Ok((reader, writer, decoder))
}

/// A valid handshake by hand, then malformed bytes in answer to the first request.
async fn garbage() -> Result<()> {
    let mode = env_var(ENV_GARBAGE)?;
    let (mut reader, mut writer, mut decoder) = ready_by_hand().await?;
    loop {
        match read_message(&mut reader, &mut decoder).await? {
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
    writer.write_all(&bytes).await.map_err(|e| Error::io("writing garbage", e))?;
    writer.flush().await.map_err(|e| Error::io("writing garbage", e))?;
    exit_when_hung_up(&mut reader, &mut decoder, ErrorKind::Protocol).await
}

/// Pipelines requests whose replies are large and never reads one: what the primary's bounds
/// on one worker are for.
async fn greedy() -> Result<()> {
    let (_reader, mut writer, _decoder) = ready_by_hand().await?;
    // One write for all (a few dozen KiB): it fits the socket's buffer even when the primary
    // stops reading, so the line below says the primary was offered everything.
    let mut frames = Vec::new();
    for pair in 0..GREEDY_PAIRS {
        let increment = StorageRequest::Increment { path: GREEDY_COUNT_PATH.to_owned(), by: 1 };
        let read = StorageRequest::Get { path: GREEDY_BIG_PATH.to_owned() };
        for (n, body) in [increment, read].into_iter().enumerate() {
            let request = Message::Request { id: 2 * pair + n as u64 + 1, body: Request::Storage(body) };
            encode_frame(&request, DEFAULT_MAX_FRAME_LEN, &mut frames)?;
        }
    }
    writer.write_all(&frames).await.map_err(|e| Error::io("writing the greedy requests", e))?;
    writer.flush().await.map_err(|e| Error::io("writing the greedy requests", e))?;
    println!("{GREEDY_SENT_LINE}");
    std::future::pending().await
}

/// A primary of two workers of this binary and one `sleep`, that prints their pids and waits.
async fn primary() -> Result<()> {
    let primary = Primary::builder()
        .non_dumpable(std::env::var_os(ENV_NON_DUMPABLE_PRIMARY).is_some())
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
    // A program that knows nothing of Clusterfy: only the kernel can end it with its primary.
    primary.fork(FOREIGN_WORKER, WorkerOptions::default().program(Program::new("sleep", ["1000"]))).await?;
    let pids: Vec<String> = primary.workers().iter().filter_map(|w| w.pid).map(|p| p.to_string()).collect();
    println!("{PIDS_LINE_PREFIX} {}", pids.join(" "));
    std::future::pending::<()>().await;
    Ok(())
}

/// A primary whose workers re-execute this program, as the README's example does.
async fn self_primary() -> Result<()> {
    let primary = Primary::builder().ready_timeout(Duration::from_secs(20)).build().await?;
    for name in ["self-a", "self-b"] {
        primary.fork(name, WorkerOptions::default()).await?;
    }
    primary.ready().await?;
    let pids: Vec<String> = primary.workers().iter().filter_map(|w| w.pid).map(|p| p.to_string()).collect();
    println!("{PIDS_LINE_PREFIX} {}", pids.join(" "));
    std::future::pending::<()>().await;
    Ok(())
}

/// A worker whose listener comes through the `listenfd` crate, not Clusterfy's API.
async fn listenfd_worker() -> Result<()> {
    let worker = connect(worker_builder()).await?;
    let std_listener = listenfd::ListenFd::from_env()
        .take_tcp_listener(0)
        .map_err(|e| Error::io("taking descriptor 3 with listenfd", e))?
        .ok_or_else(|| Error::new(ErrorKind::NotFound, "listenfd found no listener"))?;
    std_listener.set_nonblocking(true).map_err(|e| Error::io("non-blocking listener", e))?;
    let listener =
        tokio::net::TcpListener::from_std(std_listener).map_err(|e| Error::io("tokio listener", e))?;
    answer_each_connection(&worker, Listener::Tcp(listener), LISTENFD_ANSWER).await
}

/// Writes one line to every connection until shutdown: `answer`, the worker's name, and the
/// client's address (TCP) or `unix`.
async fn answer_each_connection(worker: &Worker, listener: Listener, answer: &str) -> Result<()> {
    loop {
        let mut stream = tokio::select! {
            accepted = listener.accept() => accepted.map_err(|e| Error::io("accepting", e))?,
            () = worker.shutdown_requested() => return Ok(()),
        };
        let peer = match &stream {
            Accepted::Tcp(tcp) => {
                tcp.peer_addr().map_or_else(|e| format!("unknown ({e})"), |a| a.to_string())
            }
            Accepted::Unix(_) => "unix".to_owned(),
            _ => "another kind".to_owned(),
        };
        let _ = stream.write_all(format!("{answer} {} {peer}\n", worker.name()).as_bytes()).await;
    }
}

/// A primary started by socket activation (see [`Scenario::SocketActivatedPrimary`]).
async fn socket_activated_primary() -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| Error::io("finding test-worker", e))?;
    // Port 1 needs privileges this test does not have: only the inherited socket can serve.
    let primary = Primary::builder().listen("http", "127.0.0.1:1").build().await?;
    let worker = WorkerOptions::default().program(Program::new(&exe, [Scenario::ListenfdWorker.as_str()]));
    primary.fork("activated", worker).await?;
    primary.ready().await?;
    println!("{READY_LINE}");
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
        async move { primary.run(name, WriteSequence { count: u64::MAX, announce: true }).await }
    });
    futures::future::join_all(writing).await;
    std::future::pending::<()>().await;
    Ok(())
}
