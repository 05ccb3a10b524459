//! Benchmark of Clusterfy's request path against a raw Unix-socket ping-pong, of its sled and
//! Redis storage backends against raw sled and Redis clients, and of an HTTP cluster against a
//! plain tokio HTTP server.
//!
//! Run it with `cargo run --release -p clusterfy-tests --bin bench` (add `-- --quick` for a short
//! smoke run, `-- --multi-thread` to use tokio's multi-thread runtime instead of the default
//! current-thread one). The same binary plays every part: started by hand it is the primary and
//! the driver; re-executed by `Primary::fork` it is a Clusterfy worker (judged by
//! [`clusterfy::role`]; a worker named `http-<n>` serves HTTP); re-executed with
//! `--raw-echo <socket>` it is the baseline's echo server, with `--raw-http` the HTTP baseline's
//! server, with `--noop` or `--idle` the bare process of the process baselines. The code is split
//! by job: [`options`] (command line, [`Plan`]), [`sampling`] (figures and statistics),
//! [`report`] (the rows, the table and the `RESULT` lines), [`raw_echo`], [`raw_storage`] and
//! [`bare`] (the baselines), [`cluster`] (the bench's commands, the worker side, starting
//! clusters), [`http_server`] (the HTTP server of a worker and of the HTTP baseline), [`kept`]
//! (the primary's instrumented storage), [`phase`] (one module per group of rows) and [`only`]
//! (single workloads for `tests/bench-instructions.sh`).
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
//! **Redis** (a `redis-server` started through `clusterfy_test_support::redis_server::RedisServer`, or
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
//! **Processes** (run first, so that the primary's figure is that of a fresh process; several
//! repetitions, each starting new primaries on Unix sockets and memory storage):
//! - `spawn_to_ready_1`, `spawn_to_ready_8`: the time from the first `Primary::fork` call until
//!   `Primary::ready` returns, for 1 and for 8 workers (this binary as the worker, see
//!   [`cluster::run_worker`]); baseline `spawn_wait_noop_<n>`: spawning as many bare processes of
//!   this binary with `--noop` (which exits 0 before a runtime is built) and waiting for them all;
//! - `worker_idle_rss`, `primary_idle_rss`: `VmRSS` in `/proc/<pid>/status` of the one worker and
//!   of the primary (this process) just after `ready` returned; baseline `bare_idle_rss`: that of a
//!   bare process of this binary started with `--idle` (it says so on its stdout, which is when it
//!   is measured, and parks until killed).
//!
//! **Storm** (a cluster on Unix sockets and memory storage with 64 workers `storm-<i>`, run right
//! after the process rows, before the other phases leave the primary's heap several times larger):
//! - `storm_save_ops`: the primary broadcasts one `bench_measure` to all 64 workers; each saves a
//!   fixed number of times with 16 saves in flight, cycling over 16 paths of its own
//!   (`bench.storm-<i>-<slot>`, so the stored data does not grow with the number of saves). The
//!   figure is all workers' saves per second, timed at the primary from the broadcast to its last
//!   reply; baseline `storm_single_worker_pipelined_ops`: `storm-0` alone running the
//!   `save_pipelined_ops` workload (256 in flight) on the same cluster in the same repetition.
//!   The target is a ratio of at least 1: many connections carry at least what one does;
//! - `primary_rss_after_storm`: the primary's `VmRSS` after the last storm, beside
//!   `primary_rss_before_storm`, taken just before the first (with the 64 workers connected).
//!
//! **HTTP** (run last; three clusters on Unix sockets and memory storage, each with a TCP
//! listener on `127.0.0.1:0` (`PrimaryBuilder::listen_with`: the default `Balance::PerWorker`,
//! and `Balance::Shared` for the third), started once for the phase; their workers
//! `http-<i>` run [`http_server::serve_worker`]: the handler of `clusterfy/examples/http_cluster.rs`,
//! an HTTP/1 hyper server whose every request bumps the hit counter `hits` in the shared storage
//! with `Storage::update` and answers `hello from <worker> ...`, and which, asked to stop, stops
//! accepting, answers with `Connection: close` for up to 1 s and then closes what is still open).
//! The load is `clusterfy_test_support::http_load::run`: 32 keep-alive connections of hyper's
//! pooled client to the loopback address, each sending one GET after the other, on a thread of
//! the bench process with a runtime of its own (so it shares no thread with the primary); a
//! steady load runs 3 s (0.5 s under `--quick`) or until it sent 1,000,000 requests (100,000),
//! after a warm-up of a tenth as much. Each repetition measures, in this order:
//! - baseline `raw_http_rps`: answered requests per second of the same handler and drain in one
//!   plain tokio process, a child of this binary started with `--raw-http` (it binds
//!   `127.0.0.1:0`, writes the address on its stdout, serves until its stdin closes), its hit
//!   counter an in-process atomic as there is no shared storage;
//! - `http_rps_1`: the same through a cluster of one worker;
//! - `http_rps_n`: the same through a cluster of n workers, n = the number of cores
//!   (`available_parallelism`), at least 2; this steady load also gives `http_steady_p99` (its
//!   p99 latency) and `http_steady_failed` (its failed requests plus connection errors), and
//!   `http_busiest` (the busiest worker's answers) beside `http_fair_share` (all answers over n;
//!   target at most 1.25);
//! - `http_busiest_shared` beside `http_fair_share_shared`: the same on the third cluster, n
//!   workers on one shared socket;
//! - `http_rps_n`: the plain handler (`/plain`, no counter) on the n-worker cluster, beside
//!   `raw_http_rps` (target at least 0.9);
//! - `http_rps_cpu_n` beside `http_rps_cpu_1_times_n`: requests for `/cpu`, which spend 200 us of
//!   the thread's CPU time each, on n workers, beside n times the rate of the one-worker cluster
//!   (target at least 0.8);
//! - `http_new_conn_p99` beside `http_new_conn_p99_shared`: the p99 latency of `/plain` requests
//!   each over a new connection (connect, accept, answer), on the n-worker cluster and on the
//!   shared-socket one (target at most 1.5);
//! - `http_scale_failed`: failed requests plus connection errors of a load that runs while the
//!   n-worker group is scaled to 2n, then to 1, then back to n (each step waited for), summed over
//!   the repetitions (target 0);
//! - the reload: the same load on the n-worker cluster, started just before
//!   `Primary::reload(ReloadOptions::default())` (one worker at a time: the new one ready, then
//!   the old one stopped gracefully) and stopped when it returned. `http_reload_served` is the
//!   requests answered in that window, beside `http_steady_served`: the steady `http_rps_n` rate
//!   of the same repetition times the window's length; `http_reload_failed` the failed requests
//!   plus connection errors, summed over all repetitions (not the median, so no failure is
//!   hidden; target 0), beside the same sum of `http_steady_failed`; `http_reload_p99` the p99
//!   latency in the window, beside `http_steady_p99`.
//!
//! The report notes the reload windows' lengths, how the answers spread over the workers in the
//! last repetition, the load generator's first errors whenever a load saw a failure, and a hit
//! counter that does not match the answers the load generator got from its cluster.
//!
//! **Instructions** are counted by `tests/bench-instructions.sh` (callgrind), not by this run: it
//! runs this binary with `--only-pipelined-save <n>` (a primary whose one worker does `n` saves with
//! 256 in flight, see [`only`]) and `--only-raw-echo <n> -- <wrapper>...` (the socket baseline's
//! driver sending `n` frames, 256 in flight, to an echo child started under `<wrapper>`).
//!
//! # How
//!
//! Every process (and the HTTP load thread) uses the same tokio runtime flavor (current-thread by
//! default). Each measurement is preceded by a warm-up of a tenth of its iterations (of its
//! duration for the HTTP loads; the reload has none). The whole set of
//! measurements is repeated (five times by default), baseline and Clusterfy interleaved in each
//! repetition so that noise on a shared machine hits both alike, and each printed figure is the
//! median of its repetitions (the table also shows their range; the process rows have repetitions
//! of their own, the storm's RSS rows are one reading each, and `http_reload_failed` and its
//! baseline are sums). Every figure is printed in a
//! table and as one machine-readable line:
//! `RESULT <name> <value> <unit> baseline=<value> ratio=<value>`, where `ratio = value / baseline`
//! (1 when both are 0, `inf` when only the baseline is).

mod bare;
mod cluster;
mod http_server;
mod kept;
mod only;
mod options;
mod phase;
mod raw_echo;
mod raw_storage;
mod report;
mod sampling;

use std::time::Instant;

use clusterfy::{Role, role};

use crate::options::{BareProcess, Only, Options, Plan, build_runtime, parse_args};
use crate::sampling::Samples;

/// Any error, for `main` and the driver.
type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The driver's result.
type BenchResult<T> = Result<T, BoxError>;

/// Payload bytes per request, in the baseline and in Clusterfy.
const PAYLOAD_LEN: usize = 64;
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

fn main() -> BenchResult<()> {
    let options = parse_args(std::env::args_os().skip(1))?;
    // Before anything else, so that the bare process does no more than any program must.
    match options.bare {
        Some(BareProcess::Noop) => return Ok(()),
        Some(BareProcess::Idle) => return bare::idle(),
        None => {}
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = build_runtime(options.flavor)?;
    if let Some(socket) = &options.raw_echo {
        return runtime.block_on(raw_echo::raw_echo_server(socket));
    }
    if options.raw_pipe_echo {
        return runtime.block_on(raw_echo::raw_pipe_echo_server());
    }
    if options.raw_http {
        return runtime.block_on(http_server::raw_http_server());
    }
    match (role(), &options.only) {
        // A worker is started with the primary's arguments, `--only-*` included.
        (Role::Worker, _) => runtime.block_on(cluster::run_worker()),
        (Role::Primary, None) => runtime.block_on(run_primary(&options)),
        (Role::Primary, Some(Only::PipelinedSave { saves })) => {
            runtime.block_on(only::pipelined_save(*saves))
        }
        (Role::Primary, Some(Only::RawEcho { frames, wrapper })) => {
            runtime.block_on(only::raw_echo(options.flavor, *frames, wrapper))
        }
    }
}

/// The whole benchmark: every phase, then the report.
async fn run_primary(options: &Options) -> BenchResult<()> {
    let began = Instant::now();
    let plan = Plan::new(options.quick);
    let mut samples = Samples::default();
    // First, so that a run that must not skip the Redis rows fails at once.
    let redis = phase::redis::redis_server(options.quick)?;
    // These two before the others, whose data leaves the primary's heap (and so its resident
    // set) several times larger: the resident-set rows would then measure that instead.
    phase::process::run_process_phase(&plan, &mut samples).await?;
    phase::storm::run_storm_phase(&plan, &mut samples).await?;
    phase::uds::run_uds_phase(options, &plan, &mut samples).await?;
    phase::stdio::run_stdio_phase(options, &plan, &mut samples).await?;
    phase::sled::run_sled_phase(&plan, &mut samples).await?;
    phase::redis::run_redis_phase(&plan, redis, &mut samples).await?;
    phase::http::run_http_phase(options, &plan, &mut samples).await?;
    report::report(options, &plan, &samples, began.elapsed())
}

/// The payload of every request: [`PAYLOAD_LEN`] bytes.
fn payload() -> String {
    "x".repeat(PAYLOAD_LEN)
}
