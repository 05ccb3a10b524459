//! Benchmark of Clusterfy's request path against a raw Unix-socket ping-pong, and of its sled and
//! Redis storage backends against raw sled and Redis clients.
//!
//! Run it with `cargo run --release -p clusterfy-tests --bin bench` (add `-- --quick` for a short
//! smoke run, `-- --multi-thread` to use tokio's multi-thread runtime instead of the default
//! current-thread one). The same binary plays every part: started by hand it is the primary and
//! the driver; re-executed by `Primary::fork` it is a Clusterfy worker (judged by
//! [`clusterfy::role`]); re-executed with `--raw-echo <socket>` it is the baseline's echo server.
//!
//! # What is measured
//!
//! **Baseline** (driven from the primary process, against a child process of this binary): a raw
//! tokio `UnixStream` carrying frames of a `u32` little-endian length followed by 64 payload
//! bytes, both ends buffered (`BufReader`/`BufWriter`). The child echoes every frame as it reads
//! it and flushes whenever its read buffer runs dry, so echoes of frames that arrived together
//! leave together.
//! - sequential round trip: write one frame, flush, read the echo; p50 and p99 of the per-request
//!   times, and requests per second over the whole loop;
//! - pipelined throughput: a writer task keeps 256 frames outstanding (it flushes when the window
//!   is full and waits for a slot), a reader task reads the echoes and frees one slot per echo.
//!
//! **Clusterfy** (driven from worker `bench-a`, which measures and answers the primary's
//! `bench_measure` command with the figures; the primary prints them):
//! - `save` of a 64-byte string at `bench.value` (whose parent exists), sequential: p50, p99,
//!   requests per second;
//! - `retrieve` of that value, sequential: p50, p99, requests per second;
//! - `save` pipelined: `buffer_unordered(256)` over a stream of saves, so 256 are in flight;
//! - `save_distinct_pipelined_ops`: the same, but each save goes to a new path `bench.k<n>`: the
//!   workload of the sled and Redis pipelined rows, on memory storage, as their reference;
//! - worker -> worker: `bench-a` runs the trivial `bench_echo` command (64 bytes there and back) on
//!   `bench-b` by name; the primary routes it, so a round trip crosses two hops (four socket
//!   writes) where the baseline crosses one (two writes).
//!
//! **Stdio** (a second cluster, started after the first one shut down, whose primary uses
//! `StdioTransport`, so each worker talks over its stdin/stdout): `stdio_save_rtt_*` and
//! `stdio_w2w_rtt_*` as above, against `raw_pipe_rtt_*`: the same sequential ping-pong over the
//! stdin/stdout pipes of a child of this binary (`--raw-pipe-echo`), which reads and writes them
//! through tokio pipes on duplicates of fds 0 and 1. Pipe baseline and stdio cluster are
//! interleaved in each repetition like the others.
//!
//! **Sled** (a third cluster whose primary stores in `SledStorage::open(<temp dir>)`, so every
//! acknowledged save was flushed to disk first; concurrent flushes share one sled flush):
//! - `sled_save_rtt_*` / `sled_save_seq_ops`: sequential saves of `bench.value` from `bench-a`;
//! - `sled_save_pipelined_ops`: saves from `bench-a` with 256 in flight, each to a *distinct* new
//!   path `bench.k<n>` (a one-node batch, no old node to delete), timed until the last ack;
//! - baseline `raw_sled_insert_flush*`, measured in the bench process itself on a second sled
//!   database in another temporary directory of the same file system: sequential
//!   `tree.insert(k<n>, <64 bytes>); db.flush()` per operation (distinct keys), p50/p99 of one
//!   insert+flush and operations per second; run on tokio's blocking pool.
//!
//! **Redis** (a `redis-server` started through `clusterfy_testkit::redis_server::RedisServer`, or
//! the one `CLUSTERFY_TEST_REDIS_URL` names; skipped with a loud `SKIPPED` line under `--quick` or
//! when `redis-server` is not installed, but a missing server fails the run when `CI` is set):
//! - `redis_mirror_save_ops`: a cluster on `RedisMirror` in `AckMode::Memory` (saves are acked
//!   after the in-memory write, Redis is written in order in the background). `bench-a` sends
//!   saves to distinct paths `bench.k<n>` with 256 in flight (each is one `HSET` on the mirror's
//!   hash, inside the mirror's `MULTI`/`EXEC` chunks), then runs `bench_wait_mirrored` on the
//!   primary, whose handler holds the mirror and awaits `RedisMirror::wait_mirrored()`. The time
//!   runs from the first save to that command's reply, so it includes draining the mirror's
//!   queue; `redis_mirror_acked_ops` is the same run timed only until the last save's ack. The
//!   warm-up is drained before the clock starts;
//! - baseline `raw_redis_pipelined_set_ops`: from the bench process with the `redis` crate on a
//!   multiplexed connection, `HSET <hash> raw<n> <64 bytes>` (the mirror's command shape: one
//!   hash, a new field per write) in pipelines of 256 commands, one pipeline at a time;
//! - `redis_ack_save_rtt_*`: a further cluster on `RedisMirror` in `AckMode::Redis` (a save is
//!   acked once Redis has it), sequential saves of `bench.value` from `bench-a`, against
//!   `raw_redis_rtt_*`: one `HSET` round trip from the bench process, sequential.
//!
//! # How
//!
//! Every process uses the same tokio runtime flavor (current-thread by default). Each
//! measurement is preceded by a warm-up of a tenth of its iterations. The whole set of
//! measurements is repeated (five times by default), baseline and Clusterfy interleaved in each
//! repetition so that noise on a shared machine hits both alike, and each printed figure is the
//! median of its repetitions (the table also shows their range). Every figure is printed in a
//! table and as one machine-readable line:
//! `RESULT <name> <value> <unit> baseline=<value> ratio=<value>`, where `ratio = value / baseline`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clusterfy::core::{NoticeReceiver, StorageNotice};
use clusterfy::storage::{
    AckMode, BatchOp, Capabilities, CasConflict, RedisMirror, SledStorage, StorageBackend,
};
use clusterfy::transport::StdioTransport;
use clusterfy::{
    Command, Error, ErrorKind, Primary, Role, Target, Worker, WorkerContext, WorkerOptions, role, value,
};
use clusterfy_testkit::redis_server::{RedisServer, TEST_REDIS_URL_ENV, running_in_ci};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, Table};
use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::unix::pipe;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

/// Any error, for `main` and the driver.
type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The driver's result.
type BenchResult<T> = Result<T, BoxError>;

/// Payload bytes per request, in the baseline and in Clusterfy.
const PAYLOAD_LEN: usize = 64;
/// Length of the baseline's frame header.
const HEADER_LEN: usize = 4;
/// Requests in flight in the pipelined measurements.
const IN_FLIGHT: usize = 256;
/// Where the saves and retrieves go; its parent `bench` exists from the start.
const STORAGE_PATH: &str = "bench.value";
/// Saves to distinct paths go to `<DISTINCT_PARENT>.k<n>`, a new path each time.
const DISTINCT_PARENT: &str = "bench";
/// The worker that measures.
const WORKER_A: &str = "bench-a";
/// The worker `WORKER_A` sends its worker -> worker commands to.
const WORKER_B: &str = "bench-b";
/// The internal flag that makes this binary the baseline's echo server.
const RAW_ECHO_FLAG: &str = "--raw-echo";
/// The internal flag that makes this binary the pipe baseline's echo server (on its stdin/stdout).
const RAW_PIPE_ECHO_FLAG: &str = "--raw-pipe-echo";
/// The flag selecting tokio's multi-thread runtime in every process.
const MULTI_THREAD_FLAG: &str = "--multi-thread";
/// The flag selecting a short smoke run.
const QUICK_FLAG: &str = "--quick";
/// Buffer size of the baseline's buffered reader and writer.
const RAW_BUFFER: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Command line and runtime
// ---------------------------------------------------------------------------------------------

/// The tokio runtime every process of one run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    /// `new_current_thread`: one thread per process (the default).
    CurrentThread,
    /// `new_multi_thread` with one worker thread per core.
    MultiThread,
}

impl Flavor {
    fn describe(self) -> &'static str {
        match self {
            Flavor::CurrentThread => "current_thread",
            Flavor::MultiThread => "multi_thread (one worker thread per core)",
        }
    }
}

/// What the command line asked for.
#[derive(Debug)]
struct Options {
    quick: bool,
    flavor: Flavor,
    /// Set in the socket baseline's echo child: the socket to connect to.
    raw_echo: Option<PathBuf>,
    /// Set in the pipe baseline's echo child, which echoes its stdin to its stdout.
    raw_pipe_echo: bool,
}

fn usage() -> String {
    format!(
        "usage: bench [{QUICK_FLAG}] [{MULTI_THREAD_FLAG} | --current-thread]\n  {QUICK_FLAG}           a short \
         smoke run (one repetition, a twentieth of the iterations)\n  {MULTI_THREAD_FLAG}    use tokio's \
         multi-thread runtime in every process\n  --current-thread  use tokio's current-thread runtime in every \
         process (the default)"
    )
}

fn parse_args(args: impl IntoIterator<Item = OsString>) -> BenchResult<Options> {
    let mut options =
        Options { quick: false, flavor: Flavor::CurrentThread, raw_echo: None, raw_pipe_echo: false };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some(QUICK_FLAG) => options.quick = true,
            Some(MULTI_THREAD_FLAG) => options.flavor = Flavor::MultiThread,
            Some("--current-thread") => options.flavor = Flavor::CurrentThread,
            Some(RAW_ECHO_FLAG) => {
                let path = args.next().ok_or_else(|| format!("{RAW_ECHO_FLAG} needs a socket path"))?;
                options.raw_echo = Some(PathBuf::from(path));
            }
            Some(RAW_PIPE_ECHO_FLAG) => options.raw_pipe_echo = true,
            Some("-h" | "--help") => {
                println!("{}", usage());
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {arg:?}\n{}", usage()).into()),
        }
    }
    Ok(options)
}

fn build_runtime(flavor: Flavor) -> io::Result<tokio::runtime::Runtime> {
    match flavor {
        Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Flavor::MultiThread => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    }
}

fn main() -> BenchResult<()> {
    let options = parse_args(std::env::args_os().skip(1))?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = build_runtime(options.flavor)?;
    if let Some(socket) = &options.raw_echo {
        return runtime.block_on(raw_echo_server(socket));
    }
    if options.raw_pipe_echo {
        return runtime.block_on(raw_pipe_echo_server());
    }
    match role() {
        Role::Worker => runtime.block_on(run_worker()),
        Role::Primary => runtime.block_on(run_primary(&options)),
    }
}

// ---------------------------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------------------------

/// Per-request latency percentiles of a sequential measurement.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Latency {
    p50_us: f64,
    p99_us: f64,
}

/// What one measurement found.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Figures {
    /// Only for sequential measurements.
    latency: Option<Latency>,
    ops_per_sec: f64,
    /// Only for [`Workload::SaveDistinctMirrored`]: the rate until the last save's ack, before
    /// the mirror drained (`ops_per_sec` includes the draining).
    acked_ops_per_sec: Option<f64>,
}

impl Figures {
    /// A throughput-only measurement: `operations` in `elapsed`.
    fn throughput(operations: u32, elapsed: Duration) -> Self {
        Figures { latency: None, ops_per_sec: rate(operations as usize, elapsed), acked_ops_per_sec: None }
    }
}

/// Collects the duration of every request of a sequential measurement.
struct LatencyLog {
    samples: Vec<Duration>,
    start: Instant,
}

impl LatencyLog {
    fn new(iterations: u32) -> Self {
        LatencyLog { samples: Vec::with_capacity(iterations as usize), start: Instant::now() }
    }

    fn record(&mut self, request_start: Instant) {
        self.samples.push(request_start.elapsed());
    }

    fn finish(mut self) -> Figures {
        let elapsed = self.start.elapsed();
        self.samples.sort_unstable();
        let latency =
            Latency { p50_us: percentile(&self.samples, 50), p99_us: percentile(&self.samples, 99) };
        Figures {
            latency: Some(latency),
            ops_per_sec: rate(self.samples.len(), elapsed),
            acked_ops_per_sec: None,
        }
    }
}

/// The nearest-rank percentile `pct` of `sorted`, in microseconds.
fn percentile(sorted: &[Duration], pct: usize) -> f64 {
    let rank = (sorted.len() * pct).div_ceil(100).saturating_sub(1);
    sorted.get(rank).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

fn rate(operations: usize, elapsed: Duration) -> f64 {
    operations as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

fn payload() -> String {
    "x".repeat(PAYLOAD_LEN)
}

// ---------------------------------------------------------------------------------------------
// Baseline: raw length-prefixed ping-pong over a Unix socket
// ---------------------------------------------------------------------------------------------

/// Either end of a baseline connection: a Unix socket's half or a pipe.
type RawReader = BufReader<Box<dyn AsyncRead + Send + Unpin>>;
/// The writing end of a baseline connection.
type RawWriter = BufWriter<Box<dyn AsyncWrite + Send + Unpin>>;

/// The socket baseline's echo server, in its own process. Ends when the driver closes the
/// connection.
async fn raw_echo_server(socket: &Path) -> BenchResult<()> {
    let stream = UnixStream::connect(socket).await?;
    let (reader, writer) = stream.into_split();
    raw_echo_loop(reader, writer).await
}

/// The pipe baseline's echo server, in its own process: reads its stdin and writes its stdout
/// through tokio pipes on duplicates of fds 0 and 1. Ends when the driver closes the child's stdin.
async fn raw_pipe_echo_server() -> BenchResult<()> {
    let reader = pipe::Receiver::from_owned_fd(nix::unistd::dup(io::stdin())?)?;
    let writer = pipe::Sender::from_owned_fd(nix::unistd::dup(io::stdout())?)?;
    raw_echo_loop(reader, writer).await
}

/// Echoes each frame as it is read and flushes when no further request is buffered, until
/// end of input.
async fn raw_echo_loop(reader: impl AsyncRead + Unpin, writer: impl AsyncWrite + Unpin) -> BenchResult<()> {
    let mut reader = BufReader::with_capacity(RAW_BUFFER, reader);
    let mut writer = BufWriter::with_capacity(RAW_BUFFER, writer);
    let mut header = [0u8; HEADER_LEN];
    let mut payload = [0u8; PAYLOAD_LEN];
    loop {
        match reader.read_exact(&mut header).await {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => return Err(err.into()),
        }
        let len = u32::from_le_bytes(header) as usize;
        let body =
            payload.get_mut(..len).ok_or_else(|| format!("raw echo: frame of {len} bytes is too long"))?;
        reader.read_exact(body).await?;
        writer.write_all(&header).await?;
        writer.write_all(body).await?;
        if reader.buffer().is_empty() {
            writer.flush().await?;
        }
    }
}

/// One baseline request frame.
fn raw_frame() -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER_LEN + PAYLOAD_LEN);
    frame.extend_from_slice(&(PAYLOAD_LEN as u32).to_le_bytes());
    frame.extend_from_slice(payload().as_bytes());
    frame
}

/// Reads one echoed frame, checking its length.
async fn read_raw_frame(reader: &mut RawReader, payload: &mut [u8; PAYLOAD_LEN]) -> io::Result<()> {
    let mut header = [0u8; HEADER_LEN];
    reader.read_exact(&mut header).await?;
    let len = u32::from_le_bytes(header) as usize;
    if len != PAYLOAD_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("echo of {len} bytes, expected {PAYLOAD_LEN}"),
        ));
    }
    reader.read_exact(payload).await?;
    Ok(())
}

/// The driver's end of the baseline connection.
struct RawConnection {
    reader: RawReader,
    writer: RawWriter,
}

impl RawConnection {
    fn new(
        reader: impl AsyncRead + Send + Unpin + 'static,
        writer: impl AsyncWrite + Send + Unpin + 'static,
    ) -> Self {
        RawConnection {
            reader: BufReader::with_capacity(RAW_BUFFER, Box::new(reader)),
            writer: BufWriter::with_capacity(RAW_BUFFER, Box::new(writer)),
        }
    }
}

/// What carries a baseline connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawLink {
    /// A Unix socket the child connects to.
    Socket,
    /// The child's stdin and stdout pipes.
    Pipe,
}

/// The baseline's echo child and the connection to it.
struct RawPeer {
    connection: Option<RawConnection>,
    child: tokio::process::Child,
    /// Holds the socket file, if any; removed on drop.
    _dir: Option<tempfile::TempDir>,
}

impl RawPeer {
    /// Starts the echo child (this binary with [`RAW_ECHO_FLAG`] or [`RAW_PIPE_ECHO_FLAG`]) and
    /// connects to it.
    async fn spawn(flavor: Flavor, link: RawLink) -> BenchResult<RawPeer> {
        match link {
            RawLink::Socket => Self::spawn_socket(flavor).await,
            RawLink::Pipe => Self::spawn_pipe(flavor),
        }
    }

    fn echo_command(flavor: Flavor) -> io::Result<tokio::process::Command> {
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        command.kill_on_drop(true);
        if flavor == Flavor::MultiThread {
            command.arg(MULTI_THREAD_FLAG);
        }
        Ok(command)
    }

    fn spawn_pipe(flavor: Flavor) -> BenchResult<RawPeer> {
        let mut command = Self::echo_command(flavor)?;
        command.arg(RAW_PIPE_ECHO_FLAG).stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = command.spawn()?;
        let writer = child.stdin.take().ok_or("the raw pipe echo child has no stdin pipe")?;
        let reader = child.stdout.take().ok_or("the raw pipe echo child has no stdout pipe")?;
        Ok(RawPeer { connection: Some(RawConnection::new(reader, writer)), child, _dir: None })
    }

    async fn spawn_socket(flavor: Flavor) -> BenchResult<RawPeer> {
        let dir = tempfile::Builder::new().prefix("cy-bench").tempdir()?;
        let socket = dir.path().join("raw.sock");
        let listener = UnixListener::bind(&socket)?;
        let mut command = Self::echo_command(flavor)?;
        command.arg(RAW_ECHO_FLAG).arg(&socket).stdin(Stdio::null());
        let mut child = command.spawn()?;
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted?,
            status = child.wait() => return Err(format!("the raw echo child exited before connecting: {}", status?).into()),
            () = tokio::time::sleep(Duration::from_secs(30)) => {
                return Err("the raw echo child did not connect within 30 s".into());
            }
        };
        let (reader, writer) = accepted.0.into_split();
        Ok(RawPeer { connection: Some(RawConnection::new(reader, writer)), child, _dir: Some(dir) })
    }

    fn connection(&mut self) -> BenchResult<&mut RawConnection> {
        self.connection.as_mut().ok_or_else(|| "the raw connection was lost in an earlier measurement".into())
    }

    /// Sequential ping-pong: `warmup` unmeasured round trips, then `iterations` measured ones.
    async fn sequential(&mut self, warmup: u32, iterations: u32) -> BenchResult<Figures> {
        let frame = raw_frame();
        let mut echo = [0u8; PAYLOAD_LEN];
        let RawConnection { reader, writer } = self.connection()?;
        for _ in 0..warmup {
            writer.write_all(&frame).await?;
            writer.flush().await?;
            read_raw_frame(reader, &mut echo).await?;
        }
        let mut log = LatencyLog::new(iterations);
        for _ in 0..iterations {
            let start = Instant::now();
            writer.write_all(&frame).await?;
            writer.flush().await?;
            read_raw_frame(reader, &mut echo).await?;
            log.record(start);
        }
        Ok(log.finish())
    }

    /// Pipelined: [`IN_FLIGHT`] frames outstanding; `warmup` unmeasured frames first.
    async fn pipelined(&mut self, warmup: u32, iterations: u32) -> BenchResult<Figures> {
        let connection =
            self.connection.take().ok_or("the raw connection was lost in an earlier measurement")?;
        let (connection, _) = raw_pipelined_run(connection, warmup).await?;
        let (connection, elapsed) = raw_pipelined_run(connection, iterations).await?;
        self.connection = Some(connection);
        Ok(Figures::throughput(iterations, elapsed))
    }

    /// Closes the connection and waits for the child to exit.
    async fn finish(mut self) -> BenchResult<()> {
        drop(self.connection.take());
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .map_err(|_| "the raw echo child did not exit within 10 s of the connection closing")??;
        if !status.success() {
            return Err(format!("the raw echo child failed: {status}").into());
        }
        Ok(())
    }
}

/// Sends `count` frames with at most [`IN_FLIGHT`] unanswered, from a writer task and a reader
/// task; returns the connection and the time until the last echo arrived.
async fn raw_pipelined_run(connection: RawConnection, count: u32) -> BenchResult<(RawConnection, Duration)> {
    let RawConnection { reader, writer } = connection;
    let window = Arc::new(Semaphore::new(IN_FLIGHT));
    let start = Instant::now();
    let send = tokio::spawn(raw_send_frames(writer, Arc::clone(&window), count));
    let receive = tokio::spawn(raw_receive_frames(reader, window, count));
    let reader = receive.await??;
    let elapsed = start.elapsed();
    let writer = send.await??;
    Ok((RawConnection { reader, writer }, elapsed))
}

async fn raw_send_frames(mut writer: RawWriter, window: Arc<Semaphore>, count: u32) -> io::Result<RawWriter> {
    let frame = raw_frame();
    for _ in 0..count {
        match window.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(_) => {
                // The window is full: let the queued frames go, then wait for an echo.
                writer.flush().await?;
                window.acquire().await.map_err(io::Error::other)?.forget();
            }
        }
        writer.write_all(&frame).await?;
    }
    writer.flush().await?;
    Ok(writer)
}

async fn raw_receive_frames(
    mut reader: RawReader,
    window: Arc<Semaphore>,
    count: u32,
) -> io::Result<RawReader> {
    let mut echo = [0u8; PAYLOAD_LEN];
    for _ in 0..count {
        read_raw_frame(&mut reader, &mut echo).await?;
        window.add_permits(1);
    }
    Ok(reader)
}

// ---------------------------------------------------------------------------------------------
// Baselines: raw sled and raw Redis, from the bench process
// ---------------------------------------------------------------------------------------------

/// The sled baseline: a database of its own in a temporary directory, written from this process.
struct RawSled {
    db: sled::Db,
    tree: sled::Tree,
    /// The number in the next key written; keys are never reused.
    next_key: u64,
    /// Declared last, so removed after the database is closed.
    _dir: tempfile::TempDir,
}

impl RawSled {
    fn open() -> BenchResult<RawSled> {
        let dir = tempfile::Builder::new().prefix("cy-bench-raw-sled").tempdir()?;
        let db = sled::open(dir.path().join("db"))?;
        let tree = db.open_tree("bench")?;
        Ok(RawSled { db, tree, next_key: 0, _dir: dir })
    }

    /// Sequential `tree.insert(k<n>, <payload>); db.flush()`: `warmup` unmeasured, then
    /// `iterations` measured, on tokio's blocking pool (sled blocks).
    async fn insert_flush(&mut self, warmup: u32, iterations: u32) -> BenchResult<Figures> {
        let (db, tree) = (self.db.clone(), self.tree.clone());
        let mut key = self.next_key;
        self.next_key += u64::from(warmup) + u64::from(iterations);
        let figures = tokio::task::spawn_blocking(move || {
            let value = payload();
            let mut insert_flush = || -> sled::Result<()> {
                tree.insert(format!("k{key}").as_bytes(), value.as_bytes())?;
                key += 1;
                db.flush()?;
                Ok(())
            };
            // `sequential` awaits nothing but the ready futures here: run it on this thread.
            futures::executor::block_on(sequential(warmup, iterations, || std::future::ready(insert_flush())))
        })
        .await??;
        Ok(figures)
    }
}

/// The Redis baseline: a multiplexed connection (as the mirror uses) writing fields of one hash.
struct RawRedis {
    conn: MultiplexedConnection,
    /// The hash written.
    key: String,
    /// The number in the next field written by the pipelined measurement.
    next_field: u64,
}

impl RawRedis {
    async fn connect(url: &str, key: String) -> BenchResult<RawRedis> {
        let conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
        Ok(RawRedis { conn, key, next_field: 0 })
    }

    /// `HSET <key> raw<n> <payload>` for new fields, in pipelines of [`IN_FLIGHT`] commands, one
    /// pipeline at a time: `warmup` unmeasured, then `iterations` measured.
    async fn pipelined(&mut self, warmup: u32, iterations: u32) -> BenchResult<Figures> {
        self.hset_pipelines(warmup).await?;
        let start = Instant::now();
        self.hset_pipelines(iterations).await?;
        Ok(Figures::throughput(iterations, start.elapsed()))
    }

    async fn hset_pipelines(&mut self, count: u32) -> redis::RedisResult<()> {
        let value = payload();
        let mut left = count as usize;
        while left > 0 {
            let batch = left.min(IN_FLIGHT);
            let mut pipe = redis::pipe();
            for _ in 0..batch {
                pipe.hset(&self.key, format!("raw{}", self.next_field), value.as_str()).ignore();
                self.next_field += 1;
            }
            pipe.exec_async(&mut self.conn).await?;
            left -= batch;
        }
        Ok(())
    }

    /// Sequential `HSET <key> rtt <payload>` round trips: `warmup` unmeasured, then
    /// `iterations` measured.
    async fn sequential(&mut self, warmup: u32, iterations: u32) -> BenchResult<Figures> {
        let mut hset = redis::cmd("HSET");
        hset.arg(&self.key).arg("rtt").arg(payload());
        let conn = &self.conn;
        let hset = &hset;
        // A multiplexed connection is a handle: a clone per request costs a reference count.
        Ok(sequential(warmup, iterations, || {
            let mut conn = conn.clone();
            async move { hset.exec_async(&mut conn).await }
        })
        .await?)
    }
}

/// Backend calls [`BackendStats`] tells apart.
#[derive(Debug, Clone, Copy)]
enum Call {
    Get,
    ScanPrefix,
    ApplyBatch,
    Flush,
    /// `put`, `delete`, `compare_and_swap` (a save uses none of them).
    Other,
}

/// How many backend calls of each kind returned, and the time they took in total (wall time
/// from call to return, so overlapping calls add up).
#[derive(Debug, Default)]
struct BackendStats {
    calls: [AtomicU64; 5],
    nanos: [AtomicU64; 5],
}

impl BackendStats {
    fn record(&self, call: Call, took: Duration) {
        let i = call as usize;
        self.calls[i].fetch_add(1, Ordering::Relaxed);
        self.nanos[i].fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Calls and total microseconds of each kind of call so far, indexed by [`Call`].
    fn read(&self) -> [(u64, f64); 5] {
        std::array::from_fn(|i| {
            (self.calls[i].load(Ordering::Relaxed), self.nanos[i].load(Ordering::Relaxed) as f64 / 1e3)
        })
    }

    /// Adds where the saves' backend time went since `before` (a [`read`](Self::read) taken
    /// `elapsed` ago) to `samples` under `names`: microseconds per save in `get`, `scan_prefix`
    /// and `apply_batch`, which a save calls under the storage's write lock (so one save at a time),
    /// microseconds per save waiting in `flush` (outside the lock, overlapping), and the share of
    /// `elapsed` the locked calls took. A save flushes once, so flushes count the saves.
    fn add_since(
        &self,
        before: [(u64, f64); 5],
        elapsed: Duration,
        names: &Breakdown,
        samples: &mut Samples,
    ) {
        let now = self.read();
        let micros = |call: Call| now[call as usize].1 - before[call as usize].1;
        let saves = (now[Call::Flush as usize].0 - before[Call::Flush as usize].0).max(1) as f64;
        let locked = micros(Call::Get) + micros(Call::ScanPrefix) + micros(Call::ApplyBatch);
        samples.add(names.get, micros(Call::Get) / saves);
        samples.add(names.scan, micros(Call::ScanPrefix) / saves);
        samples.add(names.batch, micros(Call::ApplyBatch) / saves);
        samples.add(names.flush, micros(Call::Flush) / saves);
        samples.add(names.busy, locked / (elapsed.as_secs_f64() * 1e6));
    }
}

/// Sample names of [`BackendStats::add_since`]'s figures for one kind of measurement.
struct Breakdown {
    /// How the report calls the measurement.
    what: &'static str,
    get: &'static str,
    scan: &'static str,
    batch: &'static str,
    flush: &'static str,
    busy: &'static str,
}

/// The sled breakdown of the sequential saves...
const SLED_SEQ_BREAKDOWN: Breakdown = Breakdown {
    what: "sequential",
    get: "sled_seq_get_us",
    scan: "sled_seq_scan_us",
    batch: "sled_seq_batch_us",
    flush: "sled_seq_flush_us",
    busy: "sled_seq_lock_busy",
};
/// ... and of the pipelined ones.
const SLED_PIPELINED_BREAKDOWN: Breakdown = Breakdown {
    what: "pipelined",
    get: "sled_pipelined_get_us",
    scan: "sled_pipelined_scan_us",
    batch: "sled_pipelined_batch_us",
    flush: "sled_pipelined_flush_us",
    busy: "sled_pipelined_lock_busy",
};

/// The primary's storage when the bench needs more than the primary exposes (it keeps only a
/// `dyn StorageBackend`): the backend, shared with the bench, and optionally the time of every
/// call. The Redis clusters share the mirror with the [`WaitMirrored`] handler (which needs
/// `RedisMirror::wait_mirrored`); the sled cluster counts where a save's time goes. The method
/// signatures are `async_trait`'s expansion of the trait's (this crate does not depend on
/// `async_trait`); without stats every call returns the backend's own future.
#[derive(Debug)]
struct Kept<B> {
    backend: Arc<B>,
    stats: Option<Arc<BackendStats>>,
}

/// What `async_trait` methods return.
type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = clusterfy::Result<T>> + Send + 'a>>;

impl<B> Kept<B> {
    fn observe<'a, T: 'a>(&self, call: Call, future: BackendFuture<'a, T>) -> BackendFuture<'a, T> {
        let Some(stats) = &self.stats else { return future };
        let stats = Arc::clone(stats);
        Box::pin(async move {
            let start = Instant::now();
            let result = future.await;
            stats.record(call, start.elapsed());
            result
        })
    }
}

impl<B: StorageBackend> StorageBackend for Kept<B> {
    fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }

    fn get<'life0, 'life1, 'async_trait>(
        &'life0 self,
        key: &'life1 [u8],
    ) -> BackendFuture<'async_trait, Option<Vec<u8>>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        self.observe(Call::Get, self.backend.get(key))
    }

    fn put<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        key: &'life1 [u8],
        value: &'life2 [u8],
    ) -> BackendFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        self.observe(Call::Other, self.backend.put(key, value))
    }

    fn delete<'life0, 'life1, 'async_trait>(
        &'life0 self,
        key: &'life1 [u8],
    ) -> BackendFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        self.observe(Call::Other, self.backend.delete(key))
    }

    fn compare_and_swap<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        key: &'life1 [u8],
        expected: Option<&'life2 [u8]>,
        new: Option<&'life3 [u8]>,
    ) -> BackendFuture<'async_trait, Result<(), CasConflict>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        self.observe(Call::Other, self.backend.compare_and_swap(key, expected, new))
    }

    fn scan_prefix<'life0, 'life1, 'async_trait>(
        &'life0 self,
        prefix: &'life1 [u8],
    ) -> BackendFuture<'async_trait, Vec<(Vec<u8>, Vec<u8>)>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        self.observe(Call::ScanPrefix, self.backend.scan_prefix(prefix))
    }

    fn apply_batch<'life0, 'async_trait>(&'life0 self, ops: Vec<BatchOp>) -> BackendFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        self.observe(Call::ApplyBatch, self.backend.apply_batch(ops))
    }

    fn flush<'life0, 'async_trait>(&'life0 self) -> BackendFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        self.observe(Call::Flush, self.backend.flush())
    }

    fn notices(&self) -> Option<NoticeReceiver> {
        self.backend.notices()
    }
}

// ---------------------------------------------------------------------------------------------
// Clusterfy: commands and the worker side
// ---------------------------------------------------------------------------------------------

/// What a [`Measure`] command measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Workload {
    /// Sequential `save` of a 64-byte string.
    SaveSequential,
    /// Sequential `retrieve` of that string.
    RetrieveSequential,
    /// `save`s with [`IN_FLIGHT`] in flight.
    SavePipelined,
    /// `save`s with [`IN_FLIGHT`] in flight, each to a new path below [`DISTINCT_PARENT`].
    SaveDistinctPipelined,
    /// As [`Workload::SaveDistinctPipelined`], timed until the primary's Redis mirror has every
    /// save ([`WaitMirrored`]); the warm-up is drained before the clock starts.
    SaveDistinctMirrored,
    /// Sequential [`Echo`] commands to [`WORKER_B`].
    WorkerToWorker,
}

/// Asks the measuring worker to run one measurement and answer with its figures.
#[derive(Debug, Serialize, Deserialize)]
struct Measure {
    workload: Workload,
    warmup: u32,
    iterations: u32,
}

impl Command for Measure {
    const NAME: &'static str = "bench_measure";
    const TARGET: Target = Target::Worker;
    type Reply = Figures;
}

/// The trivial worker -> worker command: answers its payload.
#[derive(Debug, Serialize, Deserialize)]
struct Echo(String);

impl Command for Echo {
    const NAME: &'static str = "bench_echo";
    const TARGET: Target = Target::Worker;
    type Reply = String;
}

/// Sent by the measuring worker to the primary of a Redis-mirrored cluster: answers once Redis
/// has every write that returned before the command arrived ([`RedisMirror::wait_mirrored`]).
#[derive(Debug, Serialize, Deserialize)]
struct WaitMirrored;

impl Command for WaitMirrored {
    const NAME: &'static str = "bench_wait_mirrored";
    const TARGET: Target = Target::Primary;
    type Reply = ();
}

/// The number in the next distinct path this worker saves to (paths are never reused within a
/// cluster: each cluster has its own workers).
static NEXT_DISTINCT: AtomicU64 = AtomicU64::new(0);

/// Saves `value` at a path this worker never saved to before.
async fn save_distinct(worker: &Worker, value: &str) -> clusterfy::Result<()> {
    let n = NEXT_DISTINCT.fetch_add(1, Ordering::Relaxed);
    worker.save(&format!("{DISTINCT_PARENT}.k{n}"), value).await
}

/// A worker process: answers [`Measure`] and [`Echo`] until the primary shuts it down.
async fn run_worker() -> BenchResult<()> {
    let worker = Worker::builder()
        .command(|measure: Measure, ctx: WorkerContext| async move {
            run_measurement(ctx.worker(), &measure).await
        })
        .command(|echo: Echo, _| async move { Ok(echo.0) })
        .connect()
        .await?;
    // Work arrives as commands until the primary shuts this worker down.
    worker.shutdown_requested().await;
    Ok(())
}

async fn run_measurement(worker: &Worker, measure: &Measure) -> clusterfy::Result<Figures> {
    let value = payload();
    let value = value.as_str();
    let (warmup, iterations) = (measure.warmup, measure.iterations);
    match measure.workload {
        Workload::SaveSequential => sequential(warmup, iterations, || worker.save(STORAGE_PATH, value)).await,
        Workload::RetrieveSequential => {
            sequential(warmup, iterations, || async {
                match worker.retrieve::<String>(STORAGE_PATH).await? {
                    Some(read) if read.len() == PAYLOAD_LEN => Ok(()),
                    other => Err(Error::new(
                        ErrorKind::InvalidState,
                        format!("retrieve of {STORAGE_PATH} found {other:?}, not the saved value"),
                    )),
                }
            })
            .await
        }
        Workload::SavePipelined => {
            pipelined(warmup, || worker.save(STORAGE_PATH, value)).await?;
            let start = Instant::now();
            pipelined(iterations, || worker.save(STORAGE_PATH, value)).await?;
            Ok(Figures::throughput(iterations, start.elapsed()))
        }
        Workload::SaveDistinctPipelined => {
            pipelined(warmup, || save_distinct(worker, value)).await?;
            let start = Instant::now();
            pipelined(iterations, || save_distinct(worker, value)).await?;
            Ok(Figures::throughput(iterations, start.elapsed()))
        }
        Workload::SaveDistinctMirrored => {
            pipelined(warmup, || save_distinct(worker, value)).await?;
            worker.run_on_primary(WaitMirrored).await?;
            let start = Instant::now();
            pipelined(iterations, || save_distinct(worker, value)).await?;
            let acked = start.elapsed();
            // Every save above was acked, so the primary applied it before this command arrives.
            worker.run_on_primary(WaitMirrored).await?;
            let mirrored = start.elapsed();
            Ok(Figures {
                acked_ops_per_sec: Some(rate(iterations as usize, acked)),
                ..Figures::throughput(iterations, mirrored)
            })
        }
        Workload::WorkerToWorker => {
            sequential(warmup, iterations, || async {
                let echoed = worker.run(WORKER_B, Echo(value.to_owned())).await?;
                if echoed.len() != PAYLOAD_LEN {
                    return Err(Error::new(ErrorKind::InvalidState, "bench_echo answered something else"));
                }
                Ok(())
            })
            .await
        }
    }
}

/// Runs `op` `warmup` times unmeasured, then `iterations` times one after the other, timing each.
async fn sequential<F, Fut, E>(warmup: u32, iterations: u32, mut op: F) -> Result<Figures, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    for _ in 0..warmup {
        op().await?;
    }
    let mut log = LatencyLog::new(iterations);
    for _ in 0..iterations {
        let start = Instant::now();
        op().await?;
        log.record(start);
    }
    Ok(log.finish())
}

/// Runs `op` `count` times with [`IN_FLIGHT`] at once.
async fn pipelined<F, Fut>(count: u32, mut op: F) -> clusterfy::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = clusterfy::Result<()>>,
{
    let mut results = futures::stream::iter(0..count).map(|_| op()).buffer_unordered(IN_FLIGHT);
    while let Some(result) = results.next().await {
        result?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The driver (primary)
// ---------------------------------------------------------------------------------------------

/// How much to run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    repetitions: usize,
    sequential: u32,
    pipelined: u32,
    /// Pipelined saves to distinct paths on memory storage (the reference of the backends' rows).
    distinct_pipelined: u32,
    /// Sequential saves on sled, and inserts of the raw sled baseline (each waits for a flush).
    durable_sequential: u32,
    /// Pipelined saves on sled.
    durable_pipelined: u32,
    /// Pipelined saves on the Redis mirror, and `HSET`s of the raw Redis baseline.
    redis_pipelined: u32,
    /// Sequential saves in `AckMode::Redis`, and round trips of the raw Redis baseline.
    redis_sequential: u32,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                repetitions: 1,
                sequential: 1_000,
                pipelined: 10_000,
                distinct_pipelined: 5_000,
                durable_sequential: 100,
                durable_pipelined: 1_000,
                // Unused: the Redis measurements are skipped in a quick run.
                redis_pipelined: 5_000,
                redis_sequential: 500,
            }
        } else {
            Plan {
                repetitions: 5,
                sequential: 20_000,
                pipelined: 200_000,
                distinct_pipelined: 50_000,
                durable_sequential: 2_000,
                durable_pipelined: 10_000,
                redis_pipelined: 50_000,
                redis_sequential: 5_000,
            }
        }
    }

    fn warmup(iterations: u32) -> u32 {
        iterations / 10
    }
}

/// Every repetition's value of every figure, by result name, and what the report has to say
/// besides.
#[derive(Default)]
struct Samples {
    values: BTreeMap<&'static str, Vec<f64>>,
    /// Sections that did not run, with the reason.
    skipped: BTreeMap<Section, String>,
    /// Remarks for the report (something that happened during a measurement and bears on it).
    notes: Vec<String>,
}

impl Samples {
    fn add(&mut self, name: &'static str, value: f64) {
        self.values.entry(name).or_default().push(value);
    }

    /// Records that `section` did not run, and says so loudly on stderr at once.
    fn skip(&mut self, section: Section, reason: String) {
        eprintln!(
            "\n==============================================================\n\
             SKIPPED: bench {section:?} rows: {reason}\n\
             ==============================================================\n"
        );
        self.skipped.insert(section, reason);
    }

    /// Adds a sequential measurement's p50, p99 and requests per second under `names`, in that
    /// order.
    fn add_sequential(&mut self, names: [&'static str; 3], figures: Figures) -> BenchResult<()> {
        let latency = figures.latency.ok_or("a sequential measurement came back without latencies")?;
        self.add(names[0], latency.p50_us);
        self.add(names[1], latency.p99_us);
        self.add(names[2], figures.ops_per_sec);
        Ok(())
    }

    /// Median, minimum and maximum of the repetitions of `name`.
    fn summary(&self, name: &str) -> BenchResult<Summary> {
        let mut values = self.values.get(name).cloned().unwrap_or_default();
        if values.is_empty() {
            return Err(format!("no samples of {name}").into());
        }
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        let median = if values.len() % 2 == 1 {
            values[mid]
        } else {
            // `mid >= 1` here, as the list has an even, non-zero length.
            f64::midpoint(values[mid - 1], values[mid])
        };
        Ok(Summary { median, min: values[0], max: values[values.len() - 1] })
    }
}

/// One figure over the repetitions.
#[derive(Debug, Clone, Copy)]
struct Summary {
    median: f64,
    min: f64,
    max: f64,
}

/// The unit of a figure, which also says which direction is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Microseconds of a round trip: lower is better.
    Micros,
    /// Operations per second: higher is better.
    OpsPerSec,
}

impl Unit {
    fn symbol(self) -> &'static str {
        match self {
            Unit::Micros => "us",
            Unit::OpsPerSec => "ops/s",
        }
    }

    fn better(self) -> &'static str {
        match self {
            Unit::Micros => "lower",
            Unit::OpsPerSec => "higher",
        }
    }

    fn format(self, value: f64) -> String {
        match self {
            Unit::Micros => format!("{value:.2}"),
            Unit::OpsPerSec => format!("{value:.0}"),
        }
    }
}

/// The team's goal for a figure, as a bound on its ratio to the baseline.
#[derive(Debug, Clone, Copy)]
enum Goal {
    AtMost(f64),
    AtLeast(f64),
}

impl Goal {
    fn check(self, ratio: f64) -> String {
        let (met, bound) = match self {
            Goal::AtMost(max) => (ratio <= max, format!("<= {max}")),
            Goal::AtLeast(min) => (ratio >= min, format!(">= {min}")),
        };
        format!("{bound}: {}", if met { "met" } else { "MISSED" })
    }
}

/// A group of figures measured together on one cluster (or skipped together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Section {
    /// The Unix-socket cluster on memory storage.
    Uds,
    /// The stdio cluster on memory storage.
    Stdio,
    /// The Unix-socket cluster on sled.
    Sled,
    /// The Unix-socket clusters on the Redis mirror.
    Redis,
}

/// One line of the report: a Clusterfy figure and the baseline figure it is compared to.
struct Row {
    name: &'static str,
    baseline: &'static str,
    unit: Unit,
    goal: Option<Goal>,
    section: Section,
}

impl Row {
    const fn new(section: Section, name: &'static str, baseline: &'static str, unit: Unit) -> Row {
        Row { name, baseline, unit, goal: None, section }
    }

    const fn goal(mut self, goal: Goal) -> Row {
        self.goal = Some(goal);
        self
    }
}

const ROWS: &[Row] = {
    use Section::{Redis, Sled, Stdio, Uds};
    use Unit::{Micros, OpsPerSec};
    &[
        Row::new(Uds, "save_rtt_p50", "raw_rtt_p50", Micros).goal(Goal::AtMost(2.0)),
        Row::new(Uds, "save_rtt_p99", "raw_rtt_p99", Micros),
        Row::new(Uds, "save_seq_ops", "raw_seq_ops", OpsPerSec),
        Row::new(Uds, "retrieve_rtt_p50", "raw_rtt_p50", Micros),
        Row::new(Uds, "retrieve_rtt_p99", "raw_rtt_p99", Micros),
        Row::new(Uds, "retrieve_seq_ops", "raw_seq_ops", OpsPerSec),
        Row::new(Uds, "save_pipelined_ops", "raw_pipelined_ops", OpsPerSec).goal(Goal::AtLeast(0.5)),
        Row::new(Uds, "save_distinct_pipelined_ops", "raw_pipelined_ops", OpsPerSec),
        Row::new(Uds, "w2w_rtt_p50", "raw_rtt_p50", Micros),
        Row::new(Uds, "w2w_rtt_p99", "raw_rtt_p99", Micros),
        Row::new(Uds, "w2w_seq_ops", "raw_seq_ops", OpsPerSec),
        Row::new(Stdio, "stdio_save_rtt_p50", "raw_pipe_rtt_p50", Micros).goal(Goal::AtMost(2.0)),
        Row::new(Stdio, "stdio_save_rtt_p99", "raw_pipe_rtt_p99", Micros),
        Row::new(Stdio, "stdio_w2w_rtt_p50", "raw_pipe_rtt_p50", Micros).goal(Goal::AtMost(2.0)),
        Row::new(Sled, "sled_save_rtt_p50", "raw_sled_insert_flush_p50", Micros),
        Row::new(Sled, "sled_save_rtt_p99", "raw_sled_insert_flush_p99", Micros),
        Row::new(Sled, "sled_save_seq_ops", "raw_sled_insert_flush", OpsPerSec),
        Row::new(Sled, "sled_save_pipelined_ops", "raw_sled_insert_flush", OpsPerSec)
            .goal(Goal::AtLeast(3.0)),
        Row::new(Redis, "redis_mirror_save_ops", "raw_redis_pipelined_set_ops", OpsPerSec)
            .goal(Goal::AtLeast(0.8)),
        Row::new(Redis, "redis_mirror_acked_ops", "raw_redis_pipelined_set_ops", OpsPerSec),
        Row::new(Redis, "redis_ack_save_rtt_p50", "raw_redis_rtt_p50", Micros),
        Row::new(Redis, "redis_ack_save_rtt_p99", "raw_redis_rtt_p99", Micros),
    ]
};

/// Runs [`Measure`] on the measuring worker.
async fn measure(primary: &Primary, workload: Workload, iterations: u32) -> BenchResult<Figures> {
    let warmup = Plan::warmup(iterations);
    Ok(primary.run(WORKER_A, Measure { workload, warmup, iterations }).await?)
}

/// Which Clusterfy transport a cluster uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClusterTransport {
    /// The default: Unix sockets.
    Uds,
    /// [`StdioTransport`]: each worker talks over its stdin and stdout.
    Stdio,
}

/// Where a cluster keeps its shared storage.
enum ClusterStorage {
    /// The default, memory.
    Memory,
    /// A sled database, every call timed into the stats.
    Sled(SledStorage, Arc<BackendStats>),
    /// A Redis mirror, also kept by the caller; the primary answers [`WaitMirrored`] with it.
    Redis(Arc<RedisMirror>),
}

/// Starts a primary on `transport` and `storage` with the two bench workers, and saves the bench
/// value.
async fn start_cluster(transport: ClusterTransport, storage: ClusterStorage) -> BenchResult<Primary> {
    let mut builder = Primary::builder()
        .initial_storage(value!({"bench": {}}))
        // A measurement is one command and may take several seconds on a slow machine.
        .request_timeout(Duration::from_secs(300));
    if transport == ClusterTransport::Stdio {
        builder = builder.transport(StdioTransport::new());
    }
    match storage {
        ClusterStorage::Memory => {}
        ClusterStorage::Sled(sled, stats) => {
            builder = builder.storage(Kept { backend: Arc::new(sled), stats: Some(stats) });
        }
        ClusterStorage::Redis(mirror) => {
            let kept = Kept { backend: Arc::clone(&mirror), stats: None };
            builder = builder.storage(kept).command(move |_: WaitMirrored, _| {
                let mirror = Arc::clone(&mirror);
                async move { mirror.wait_mirrored().await }
            });
        }
    }
    let primary = builder.build().await?;
    for name in [WORKER_A, WORKER_B] {
        primary.fork(name, WorkerOptions::default()).await?;
    }
    primary.ready().await?;
    primary.storage().save(STORAGE_PATH, payload().as_str()).await?;
    Ok(primary)
}

/// The Unix-socket cluster against the raw socket baseline, interleaved in each repetition.
async fn run_uds_phase(options: &Options, plan: &Plan, samples: &mut Samples) -> BenchResult<()> {
    let primary = start_cluster(ClusterTransport::Uds, ClusterStorage::Memory).await?;
    let mut raw = RawPeer::spawn(options.flavor, RawLink::Socket).await?;
    for repetition in 1..=plan.repetitions {
        eprintln!("[bench] unix socket repetition {repetition}/{}", plan.repetitions);
        let warmup = Plan::warmup(plan.sequential);
        let figures = raw.sequential(warmup, plan.sequential).await?;
        samples.add_sequential(["raw_rtt_p50", "raw_rtt_p99", "raw_seq_ops"], figures)?;
        let figures = raw.pipelined(Plan::warmup(plan.pipelined), plan.pipelined).await?;
        samples.add("raw_pipelined_ops", figures.ops_per_sec);

        let figures = measure(&primary, Workload::SaveSequential, plan.sequential).await?;
        samples.add_sequential(["save_rtt_p50", "save_rtt_p99", "save_seq_ops"], figures)?;
        let figures = measure(&primary, Workload::RetrieveSequential, plan.sequential).await?;
        samples.add_sequential(["retrieve_rtt_p50", "retrieve_rtt_p99", "retrieve_seq_ops"], figures)?;
        let figures = measure(&primary, Workload::SavePipelined, plan.pipelined).await?;
        samples.add("save_pipelined_ops", figures.ops_per_sec);
        let figures = measure(&primary, Workload::SaveDistinctPipelined, plan.distinct_pipelined).await?;
        samples.add("save_distinct_pipelined_ops", figures.ops_per_sec);
        let figures = measure(&primary, Workload::WorkerToWorker, plan.sequential).await?;
        samples.add_sequential(["w2w_rtt_p50", "w2w_rtt_p99", "w2w_seq_ops"], figures)?;
    }
    raw.finish().await?;
    primary.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}

/// A second cluster on the stdio transport against the raw pipe baseline, interleaved in each
/// repetition.
async fn run_stdio_phase(options: &Options, plan: &Plan, samples: &mut Samples) -> BenchResult<()> {
    let primary = start_cluster(ClusterTransport::Stdio, ClusterStorage::Memory).await?;
    let mut raw = RawPeer::spawn(options.flavor, RawLink::Pipe).await?;
    for repetition in 1..=plan.repetitions {
        eprintln!("[bench] stdio repetition {repetition}/{}", plan.repetitions);
        let figures = raw.sequential(Plan::warmup(plan.sequential), plan.sequential).await?;
        samples.add_sequential(["raw_pipe_rtt_p50", "raw_pipe_rtt_p99", "raw_pipe_seq_ops"], figures)?;
        let figures = measure(&primary, Workload::SaveSequential, plan.sequential).await?;
        samples
            .add_sequential(["stdio_save_rtt_p50", "stdio_save_rtt_p99", "stdio_save_seq_ops"], figures)?;
        let figures = measure(&primary, Workload::WorkerToWorker, plan.sequential).await?;
        samples.add_sequential(["stdio_w2w_rtt_p50", "stdio_w2w_rtt_p99", "stdio_w2w_seq_ops"], figures)?;
    }
    raw.finish().await?;
    primary.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}

/// A third cluster on sled against raw sled insert + flush in this process, interleaved in each
/// repetition.
async fn run_sled_phase(plan: &Plan, samples: &mut Samples) -> BenchResult<()> {
    // Declared before the primary, so dropped after it (and after the database it closes).
    let dir = tempfile::Builder::new().prefix("cy-bench-sled").tempdir()?;
    let storage = SledStorage::open(dir.path().join("db")).await?;
    let stats = Arc::new(BackendStats::default());
    let primary =
        start_cluster(ClusterTransport::Uds, ClusterStorage::Sled(storage, Arc::clone(&stats))).await?;
    let mut raw = RawSled::open()?;
    for repetition in 1..=plan.repetitions {
        eprintln!("[bench] sled repetition {repetition}/{}", plan.repetitions);
        let figures =
            raw.insert_flush(Plan::warmup(plan.durable_sequential), plan.durable_sequential).await?;
        samples.add_sequential(
            ["raw_sled_insert_flush_p50", "raw_sled_insert_flush_p99", "raw_sled_insert_flush"],
            figures,
        )?;
        let (before, start) = (stats.read(), Instant::now());
        let figures = measure(&primary, Workload::SaveSequential, plan.durable_sequential).await?;
        samples.add_sequential(["sled_save_rtt_p50", "sled_save_rtt_p99", "sled_save_seq_ops"], figures)?;
        stats.add_since(before, start.elapsed(), &SLED_SEQ_BREAKDOWN, samples);
        let (before, start) = (stats.read(), Instant::now());
        let figures = measure(&primary, Workload::SaveDistinctPipelined, plan.durable_pipelined).await?;
        samples.add("sled_save_pipelined_ops", figures.ops_per_sec);
        stats.add_since(before, start.elapsed(), &SLED_PIPELINED_BREAKDOWN, samples);
    }
    primary.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}

/// How long `wait_mirrored` may wait in the Redis measurements (the default 10 s could cut a
/// measurement short on a slow machine).
const MIRROR_WAIT: Duration = Duration::from_secs(120);

/// Two more clusters on the Redis mirror against raw `HSET`s from this process: first in
/// [`AckMode::Memory`] (pipelined, timed until mirrored), then in [`AckMode::Redis`] (sequential
/// round trips), each interleaved with its baseline in each repetition.
async fn run_redis_phase(
    plan: &Plan,
    server: Result<RedisServer, String>,
    samples: &mut Samples,
) -> BenchResult<()> {
    let server = match server {
        Ok(server) => server,
        Err(reason) => {
            samples.skip(Section::Redis, reason);
            return Ok(());
        }
    };
    let url = server.url().to_owned();
    // Keys of their own, in case CLUSTERFY_TEST_REDIS_URL names a server others use too.
    let prefix = format!("clusterfy-bench-{}", std::process::id());
    let mut raw = RawRedis::connect(&url, format!("{prefix}:raw")).await?;
    let mut keys = vec![raw.key.clone()];

    let mirror = Arc::new(
        RedisMirror::builder(url.as_str())
            .key_prefix(format!("{prefix}-memory"))
            .ack_timeout(MIRROR_WAIT)
            .connect()
            .await?,
    );
    keys.push(mirror.data_key().to_owned());
    let notices = mirror.notices();
    let primary = start_cluster(ClusterTransport::Uds, ClusterStorage::Redis(Arc::clone(&mirror))).await?;
    for repetition in 1..=plan.repetitions {
        eprintln!("[bench] redis mirror (AckMode::Memory) repetition {repetition}/{}", plan.repetitions);
        let figures = raw.pipelined(Plan::warmup(plan.redis_pipelined), plan.redis_pipelined).await?;
        samples.add("raw_redis_pipelined_set_ops", figures.ops_per_sec);
        let figures = measure(&primary, Workload::SaveDistinctMirrored, plan.redis_pipelined).await?;
        samples.add("redis_mirror_save_ops", figures.ops_per_sec);
        let acked =
            figures.acked_ops_per_sec.ok_or("the mirrored measurement came back without its ack rate")?;
        samples.add("redis_mirror_acked_ops", acked);
        // The share of the mirrored run after the last ack: 1 - acked time / mirrored time.
        samples.add("redis_mirror_drain_share", (1.0 - figures.ops_per_sec / acked).max(0.0));
    }
    primary.shutdown(Duration::from_secs(5)).await?;
    drop(primary);
    mirror.wait_mirrored().await?;
    note_mirror_trouble(notices, samples);
    drop(mirror);

    let mirror = Arc::new(
        RedisMirror::builder(url.as_str())
            .key_prefix(format!("{prefix}-ack"))
            .ack(AckMode::Redis)
            .ack_timeout(MIRROR_WAIT)
            .connect()
            .await?,
    );
    keys.push(mirror.data_key().to_owned());
    let notices = mirror.notices();
    let primary = start_cluster(ClusterTransport::Uds, ClusterStorage::Redis(Arc::clone(&mirror))).await?;
    for repetition in 1..=plan.repetitions {
        eprintln!("[bench] redis mirror (AckMode::Redis) repetition {repetition}/{}", plan.repetitions);
        let figures = raw.sequential(Plan::warmup(plan.redis_sequential), plan.redis_sequential).await?;
        samples.add_sequential(["raw_redis_rtt_p50", "raw_redis_rtt_p99", "raw_redis_seq_ops"], figures)?;
        let figures = measure(&primary, Workload::SaveSequential, plan.redis_sequential).await?;
        samples.add_sequential(
            ["redis_ack_save_rtt_p50", "redis_ack_save_rtt_p99", "redis_ack_save_seq_ops"],
            figures,
        )?;
    }
    primary.shutdown(Duration::from_secs(5)).await?;
    drop(primary);
    note_mirror_trouble(notices, samples);
    drop(mirror);

    // An owned server goes away with its data; an outside one keeps only what we leave.
    redis::cmd("DEL").arg(&keys).exec_async(&mut raw.conn).await?;
    drop(server);
    Ok(())
}

/// The Redis server for the Redis section, or why the section is skipped: skipped in a quick run
/// and when `redis-server` is not installed, except that a missing server is an error when `CI`
/// is set (so a quick run in CI still checks that a server starts).
fn redis_server(quick: bool) -> BenchResult<Result<RedisServer, String>> {
    let quick_reason = format!("{QUICK_FLAG} run: the Redis measurements are left out of smoke runs");
    if quick && !running_in_ci() {
        return Ok(Err(quick_reason));
    }
    let server = match RedisServer::from_env_or_start() {
        Ok(server) => server,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let reason = format!(
                "redis-server is not installed ({err}); install it (apt-get install redis-server) or set \
                 {TEST_REDIS_URL_ENV}"
            );
            if running_in_ci() {
                return Err(
                    format!("CI is set, so the Redis measurements must not be skipped: {reason}").into()
                );
            }
            return Ok(Err(reason));
        }
        Err(err) => return Err(format!("redis-server is installed but did not start: {err}").into()),
    };
    if quick {
        return Ok(Err(format!("{quick_reason} (CI is set: checked that redis-server starts)")));
    }
    Ok(Ok(server))
}

/// Adds a note to the report if the mirror lost its connection, overflowed or resynced during
/// the measurements (which then measured that too).
fn note_mirror_trouble(notices: Option<NoticeReceiver>, samples: &mut Samples) {
    let Some(mut notices) = notices else { return };
    let mut seen = Vec::new();
    while let Ok(notice) = notices.try_recv() {
        seen.push(match notice {
            StorageNotice::Disconnected { .. } => "disconnected",
            StorageNotice::Reconnected => "reconnected",
            StorageNotice::Resynced { .. } => "resynced",
            StorageNotice::Overflow { .. } => "queue overflow",
            _ => "other notice",
        });
    }
    if !seen.is_empty() {
        samples.notes.push(format!(
            "WARNING: the Redis mirror reported {} during the measurements; its figures include that",
            seen.join(", ")
        ));
    }
}

async fn run_primary(options: &Options) -> BenchResult<()> {
    let began = Instant::now();
    let plan = Plan::new(options.quick);
    let mut samples = Samples::default();
    // First, so that a run that must not skip the Redis rows fails at once.
    let redis = redis_server(options.quick)?;
    run_uds_phase(options, &plan, &mut samples).await?;
    run_stdio_phase(options, &plan, &mut samples).await?;
    run_sled_phase(&plan, &mut samples).await?;
    run_redis_phase(&plan, redis, &mut samples).await?;
    report(options, &plan, &samples, began.elapsed())
}

fn report(options: &Options, plan: &Plan, samples: &Samples, elapsed: Duration) -> BenchResult<()> {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "Clusterfy benchmark: Clusterfy vs. a raw tokio Unix-socket ping-pong, and its sled and Redis storage vs. \
         raw sled and Redis clients"
    );
    println!("  machine: nproc={nproc}");
    println!(
        "  tokio runtime: {} in every process (primary, both workers, raw echo child)",
        options.flavor.describe()
    );
    println!("  payload: {PAYLOAD_LEN} bytes per request (raw frame: u32 LE length + {PAYLOAD_LEN} bytes)");
    println!(
        "  iterations: {} sequential, {} pipelined with {IN_FLIGHT} in flight, each after a warm-up of a tenth as many",
        plan.sequential, plan.pipelined
    );
    println!(
        "  figures: median of {} repetition(s), raw and Clusterfy interleaved in each; [min-max] over the repetitions",
        plan.repetitions
    );
    println!(
        "  save_*: Worker::save of a {PAYLOAD_LEN}-byte string at {STORAGE_PATH}; retrieve_*: Worker::retrieve of it;"
    );
    println!(
        "  w2w_*: {WORKER_A} runs a trivial echo command on {WORKER_B} by name, routed by the primary (2 hops);"
    );
    println!("  *_rtt_*: one request's round trip, sequential; *_seq_ops: sequential requests per second;");
    println!("  *_pipelined_ops: requests per second with {IN_FLIGHT} in flight");
    println!(
        "  save_distinct_pipelined_ops: pipelined saves each to a new path bench.k<n> ({} per repetition), the \
         reference for the sled and Redis rows below",
        plan.distinct_pipelined
    );
    println!(
        "  stdio_*: the same on a second cluster using StdioTransport (workers on their stdin/stdout), run after the"
    );
    println!(
        "    first one shut down; baseline raw_pipe_*: the raw ping-pong over a child's stdin/stdout pipes"
    );
    println!(
        "  sled_*: a third cluster on SledStorage (every acked save flushed to disk; concurrent flushes \
         grouped); sled_save_pipelined_ops saves to a distinct new path each time (bench.k<n>), timed to \
         the last ack"
    );
    println!(
        "    baseline raw_sled_insert_flush*: this process, own sled db on the same file system, \
         sequential tree.insert(k<n>, {PAYLOAD_LEN} bytes) + db.flush() per op ({} ops per repetition)",
        plan.durable_sequential
    );
    println!(
        "  redis_mirror_*: a cluster on RedisMirror (AckMode::Memory), saves to distinct new paths with \
         {IN_FLIGHT} in flight ({} per repetition);",
        plan.redis_pipelined
    );
    println!(
        "    redis_mirror_save_ops is timed from the first save until the primary's \
         RedisMirror::wait_mirrored() returned"
    );
    println!(
        "    (asked by the worker after its last ack: Redis has every save), redis_mirror_acked_ops until \
         the last ack only"
    );
    println!(
        "    baseline raw_redis_pipelined_set_ops: this process, HSET <hash> raw<n> {PAYLOAD_LEN} bytes \
         (the mirror's command shape: one HSET to one hash per save), pipelines of {IN_FLIGHT}, one at a time"
    );
    println!(
        "  redis_ack_save_*: a cluster on RedisMirror (AckMode::Redis: acked once Redis has it), \
         sequential saves; baseline raw_redis_rtt_*: one HSET round trip"
    );
    println!("  ratio = Clusterfy / raw baseline; 'better' says which direction is better for the figure");
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "figure",
        "Clusterfy [min-max]",
        "raw baseline [min-max]",
        "ratio",
        "better",
        "target (ratio)",
    ]);
    let mut lines = Vec::new();
    for row in ROWS {
        if let Some(reason) = samples.skipped.get(&row.section) {
            table.add_row(vec![Cell::new(row.name), Cell::new("SKIPPED"), Cell::new("(see SKIPPED below)")]);
            lines.push(format!("SKIPPED {} ({reason})", row.name));
            continue;
        }
        let value = samples.summary(row.name)?;
        let baseline = samples.summary(row.baseline)?;
        let ratio = value.median / baseline.median;
        let unit = row.unit;
        let cell = |s: Summary| {
            format!(
                "{} {} [{}-{}]",
                unit.format(s.median),
                unit.symbol(),
                unit.format(s.min),
                unit.format(s.max)
            )
        };
        table.add_row(vec![
            Cell::new(row.name),
            Cell::new(cell(value)).set_alignment(CellAlignment::Right),
            Cell::new(cell(baseline)).set_alignment(CellAlignment::Right),
            Cell::new(format!("{ratio:.2}x")).set_alignment(CellAlignment::Right),
            Cell::new(unit.better()),
            Cell::new(row.goal.map_or_else(String::new, |goal| goal.check(ratio))),
        ]);
        lines.push(format!(
            "RESULT {} {} {} baseline={} ratio={ratio:.3}",
            row.name,
            unit.format(value.median),
            unit.symbol(),
            unit.format(baseline.median)
        ));
    }
    println!("{table}");
    for line in sled_breakdown(samples).into_iter().chain(redis_breakdown(samples)) {
        println!("{line}");
    }
    for note in &samples.notes {
        println!("{note}");
    }
    for (section, reason) in &samples.skipped {
        println!(
            "==============================================================\n\
             SKIPPED: the {section:?} rows were not measured: {reason}\n\
             =============================================================="
        );
    }
    for line in lines {
        println!("{line}");
    }
    println!("total time: {:.1} s", elapsed.as_secs_f64());
    Ok(())
}

/// Where the sled saves' time went at the primary, if the sled section ran: medians over the
/// repetitions of [`BackendStats::add_since`]'s figures.
fn sled_breakdown(samples: &Samples) -> Vec<String> {
    let median = |name| samples.summary(name).map(|s| s.median).ok();
    let mut lines = Vec::new();
    for names in [&SLED_SEQ_BREAKDOWN, &SLED_PIPELINED_BREAKDOWN] {
        let figures = [names.get, names.scan, names.batch, names.flush, names.busy].map(median);
        let [Some(get), Some(scan), Some(batch), Some(flush), Some(busy)] = figures else { continue };
        let locked = get + scan + batch;
        lines.push(format!(
            "  sled {} saves at the primary, per save: {locked:.1} us in backend calls under the storage's \
             write lock (get {get:.1} + scan {scan:.1} + apply_batch {batch:.1}; one save at a time, so at \
             most {:.0} saves/s; busy {:.0}% of the run), then {flush:.1} us waiting in flush (group commit, \
             outside the lock)",
            names.what,
            1e6 / locked,
            busy * 100.0
        ));
    }
    lines
}

/// How the Redis mirror's pipelined figure compares to the same saves on memory storage, and
/// how much of its run was spent draining after the last ack, if the Redis section ran.
fn redis_breakdown(samples: &Samples) -> Option<String> {
    let median = |name| samples.summary(name).ok().map(|s| s.median);
    let mirrored = median("redis_mirror_save_ops")?;
    let drain = median("redis_mirror_drain_share")?;
    let memory = median("save_distinct_pipelined_ops")?;
    Some(format!(
        "  redis mirror pipelined saves: {:.0}% of the same saves on memory storage \
         (save_distinct_pipelined_ops); draining after the last ack took {:.1}% of the mirrored run",
        100.0 * mirrored / memory,
        100.0 * drain
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert!((percentile(&sorted, 50) - 50.0).abs() < 1e-9);
        assert!((percentile(&sorted, 99) - 99.0).abs() < 1e-9);
        assert!(percentile(&[], 50).abs() < 1e-9);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        let mut samples = Samples::default();
        for v in [3.0, 1.0, 2.0] {
            samples.add("odd", v);
        }
        for v in [4.0, 1.0, 3.0, 2.0] {
            samples.add("even", v);
        }
        let odd = samples.summary("odd").expect("samples were added");
        assert!(
            (odd.median - 2.0).abs() < 1e-9 && (odd.min - 1.0).abs() < 1e-9 && (odd.max - 3.0).abs() < 1e-9
        );
        let even = samples.summary("even").expect("samples were added");
        assert!((even.median - 2.5).abs() < 1e-9);
        assert!(samples.summary("missing").is_err());
    }

    #[test]
    fn backend_stats_break_saves_down() {
        let stats = BackendStats::default();
        stats.record(Call::Flush, Duration::from_micros(1_000));
        let before = stats.read();
        for _ in 0..2 {
            stats.record(Call::Get, Duration::from_micros(10));
            stats.record(Call::ScanPrefix, Duration::from_micros(20));
            stats.record(Call::ApplyBatch, Duration::from_micros(30));
            stats.record(Call::Flush, Duration::from_micros(40));
        }
        let mut samples = Samples::default();
        stats.add_since(before, Duration::from_micros(240), &SLED_SEQ_BREAKDOWN, &mut samples);
        let median = |name| samples.summary(name).expect("added").median;
        assert!((median(SLED_SEQ_BREAKDOWN.get) - 10.0).abs() < 1e-6);
        assert!((median(SLED_SEQ_BREAKDOWN.batch) - 30.0).abs() < 1e-6);
        assert!((median(SLED_SEQ_BREAKDOWN.flush) - 40.0).abs() < 1e-6, "the earlier flush is not counted");
        assert!((median(SLED_SEQ_BREAKDOWN.busy) - 0.5).abs() < 1e-6);
        let lines = sled_breakdown(&samples);
        assert_eq!(lines.len(), 1, "only the sequential figures were added");
        assert!(lines[0].contains("60.0 us"), "{}", lines[0]);
    }

    #[test]
    fn arguments() {
        let parsed =
            parse_args([QUICK_FLAG, MULTI_THREAD_FLAG].map(OsString::from)).expect("valid arguments");
        assert!(parsed.quick && parsed.flavor == Flavor::MultiThread && parsed.raw_echo.is_none());
        assert!(!parsed.raw_pipe_echo);
        assert!(parse_args([OsString::from(RAW_PIPE_ECHO_FLAG)]).expect("valid arguments").raw_pipe_echo);
        assert!(parse_args([OsString::from("--bogus")]).is_err());
        assert!(parse_args([OsString::from(RAW_ECHO_FLAG)]).is_err());
    }
}
