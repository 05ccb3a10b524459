//! Benchmark of Clusterfy's request path against a raw Unix-socket ping-pong.
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
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clusterfy::transport::StdioTransport;
use clusterfy::{
    Command, Error, ErrorKind, Primary, Role, Target, Worker, WorkerContext, WorkerOptions, role, value,
};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, Table};
use futures::StreamExt;
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
        Figures { latency: Some(latency), ops_per_sec: rate(self.samples.len(), elapsed) }
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
        Ok(Figures { latency: None, ops_per_sec: rate(iterations as usize, elapsed) })
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

/// A worker process: answers [`Measure`] and [`Echo`] until the primary shuts it down.
async fn run_worker() -> BenchResult<()> {
    let _worker = Worker::builder()
        .command(|measure: Measure, ctx: WorkerContext| async move {
            run_measurement(ctx.worker(), &measure).await
        })
        .command(|echo: Echo, _| async move { Ok(echo.0) })
        .connect()
        .await?;
    // Work arrives as commands; an idle worker exits by itself when the primary shuts it down.
    std::future::pending::<()>().await;
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
            Ok(Figures { latency: None, ops_per_sec: rate(iterations as usize, start.elapsed()) })
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
async fn sequential<F, Fut>(warmup: u32, iterations: u32, mut op: F) -> clusterfy::Result<Figures>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = clusterfy::Result<()>>,
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
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan { repetitions: 1, sequential: 1_000, pipelined: 10_000 }
        } else {
            Plan { repetitions: 5, sequential: 20_000, pipelined: 200_000 }
        }
    }

    fn warmup(iterations: u32) -> u32 {
        iterations / 10
    }
}

/// Every repetition's value of every figure, by result name.
#[derive(Default)]
struct Samples(BTreeMap<&'static str, Vec<f64>>);

impl Samples {
    fn add(&mut self, name: &'static str, value: f64) {
        self.0.entry(name).or_default().push(value);
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
        let mut values = self.0.get(name).cloned().unwrap_or_default();
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

/// One line of the report: a Clusterfy figure and the baseline figure it is compared to.
struct Row {
    name: &'static str,
    baseline: &'static str,
    unit: Unit,
    goal: Option<Goal>,
}

const ROWS: &[Row] = &[
    Row { name: "save_rtt_p50", baseline: "raw_rtt_p50", unit: Unit::Micros, goal: Some(Goal::AtMost(2.0)) },
    Row { name: "save_rtt_p99", baseline: "raw_rtt_p99", unit: Unit::Micros, goal: None },
    Row { name: "save_seq_ops", baseline: "raw_seq_ops", unit: Unit::OpsPerSec, goal: None },
    Row { name: "retrieve_rtt_p50", baseline: "raw_rtt_p50", unit: Unit::Micros, goal: None },
    Row { name: "retrieve_rtt_p99", baseline: "raw_rtt_p99", unit: Unit::Micros, goal: None },
    Row { name: "retrieve_seq_ops", baseline: "raw_seq_ops", unit: Unit::OpsPerSec, goal: None },
    Row {
        name: "save_pipelined_ops",
        baseline: "raw_pipelined_ops",
        unit: Unit::OpsPerSec,
        goal: Some(Goal::AtLeast(0.5)),
    },
    Row { name: "w2w_rtt_p50", baseline: "raw_rtt_p50", unit: Unit::Micros, goal: None },
    Row { name: "w2w_rtt_p99", baseline: "raw_rtt_p99", unit: Unit::Micros, goal: None },
    Row { name: "w2w_seq_ops", baseline: "raw_seq_ops", unit: Unit::OpsPerSec, goal: None },
    Row {
        name: "stdio_save_rtt_p50",
        baseline: "raw_pipe_rtt_p50",
        unit: Unit::Micros,
        goal: Some(Goal::AtMost(2.0)),
    },
    Row { name: "stdio_save_rtt_p99", baseline: "raw_pipe_rtt_p99", unit: Unit::Micros, goal: None },
    Row {
        name: "stdio_w2w_rtt_p50",
        baseline: "raw_pipe_rtt_p50",
        unit: Unit::Micros,
        goal: Some(Goal::AtMost(2.0)),
    },
];

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

/// Starts a primary on `transport` with the two bench workers, and saves the bench value.
async fn start_cluster(transport: ClusterTransport) -> BenchResult<Primary> {
    let mut builder = Primary::builder()
        .initial_storage(value!({"bench": {}}))
        // A measurement is one command and may take several seconds on a slow machine.
        .request_timeout(Duration::from_secs(300));
    if transport == ClusterTransport::Stdio {
        builder = builder.transport(StdioTransport::new());
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
    let primary = start_cluster(ClusterTransport::Uds).await?;
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
    let primary = start_cluster(ClusterTransport::Stdio).await?;
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

async fn run_primary(options: &Options) -> BenchResult<()> {
    let began = Instant::now();
    let plan = Plan::new(options.quick);
    let mut samples = Samples::default();
    run_uds_phase(options, &plan, &mut samples).await?;
    run_stdio_phase(options, &plan, &mut samples).await?;
    report(options, &plan, &samples, began.elapsed())
}

fn report(options: &Options, plan: &Plan, samples: &Samples, elapsed: Duration) -> BenchResult<()> {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("Clusterfy benchmark: Clusterfy vs. a raw tokio Unix-socket ping-pong");
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
        "  stdio_*: the same on a second cluster using StdioTransport (workers on their stdin/stdout), run after the"
    );
    println!(
        "    first one shut down; baseline raw_pipe_*: the raw ping-pong over a child's stdin/stdout pipes"
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
    for line in lines {
        println!("{line}");
    }
    println!("total time: {:.1} s", elapsed.as_secs_f64());
    Ok(())
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
