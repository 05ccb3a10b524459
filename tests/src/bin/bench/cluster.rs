//! The Clusterfy side: the bench's commands, the worker process that measures, and starting the
//! clusters the phases measure.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clusterfy::storage::{RedisMirror, SledStorage};
use clusterfy::transport::StdioTransport;
use clusterfy::{
    Command, Error, ErrorKind, Primary, PrimaryBuilder, Worker, primary::WorkerOptions, value,
    worker::WorkerContext,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::http_server::{self, HTTP_WORKER_PREFIX};
use crate::kept::{BackendStats, Kept};
use crate::options::Plan;
use crate::sampling::{Figures, rate, sequential};
use crate::{
    BenchResult, DISTINCT_PARENT, IN_FLIGHT, PAYLOAD_LEN, STORAGE_PATH, WORKER_A, WORKER_B, payload,
};

/// Workers of the storm.
pub(crate) const STORM_WORKERS: usize = 64;
/// Saves each storm worker keeps in flight; also the number of paths it cycles over.
pub(crate) const STORM_IN_FLIGHT: usize = 16;

/// What a [`Measure`] command measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Workload {
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
    /// One worker's part of the storm: `save`s with [`STORM_IN_FLIGHT`] in flight, cycling over
    /// as many paths of this worker's own, `<DISTINCT_PARENT>.<worker name>-<slot>`.
    Storm,
    /// `increment`s with [`IN_FLIGHT`] in flight, cycling over as many counters
    /// `<DISTINCT_PARENT>.c<slot>` (distinct keys).
    IncrementPipelined,
    /// `increment`s of the one counter [`HOT_PATH`] with [`HOT_IN_FLIGHT`] in flight (run by two
    /// workers at once).
    IncrementHot,
    /// Reads of [`STORAGE_PATH`] from a replica of [`DISTINCT_PARENT`], one after the other.
    ReplicaRead,
    /// The baseline of [`Workload::ReplicaRead`]: the same read of a plain `HashMap` (std's
    /// hasher) of the same paths and values in this process, without the replica's lock and
    /// bookkeeping.
    RawMapRead,
    /// `save`s to new paths below [`DISTINCT_PARENT`] with [`IN_FLIGHT`] in flight, until
    /// [`StopWriting`] arrives: the load other workers' reads are measured under.
    SaveDistinctUntilStopped,
    /// Retrieves of [`STORAGE_PATH`] with [`FLOOD_IN_FLIGHT`] in flight, far past the primary's
    /// `Limits::requests_per_worker`, until [`StopWriting`] arrives: the greedy peer that other
    /// workers' latency is measured beside.
    FloodUntilStopped,
}

/// Requests [`Workload::FloodUntilStopped`] keeps in flight: four times the primary's default
/// bound, so the primary slows this worker down.
pub(crate) const FLOOD_IN_FLIGHT: usize = 4096;

/// The counter of [`Workload::IncrementHot`].
pub(crate) const HOT_PATH: &str = "bench.hot";
/// Increments each worker keeps in flight in [`Workload::IncrementHot`].
pub(crate) const HOT_IN_FLIGHT: usize = 32;
/// Where [`SaveSequence`] writes and [`WatchStaleness`] watches.
const STALE_PATH: &str = "bench.stale";

/// Ends a running [`Workload::SaveDistinctUntilStopped`] or [`Workload::FloodUntilStopped`] on
/// this worker.
#[derive(Debug, Serialize, Deserialize, Command)]
#[command(name = "bench_stop_writing", target = worker, reply = ())]
pub(crate) struct StopWriting;

/// Starts a replica of [`STALE_PATH`] on this worker and records, for each of the next `count`
/// values written there, when the replica first showed it; answers once it watches.
#[derive(Debug, Serialize, Deserialize, Command)]
#[command(name = "bench_watch_staleness", target = worker, reply = ())]
pub(crate) struct WatchStaleness {
    pub(crate) count: u64,
}

/// The times [`WatchStaleness`] recorded: `(value, monotonic nanoseconds)`, once all arrived.
#[derive(Debug, Serialize, Deserialize, Command)]
#[command(name = "bench_staleness_seen", target = worker, reply = Vec<(u64, u64)>)]
pub(crate) struct StalenessSeen;

/// Saves `1..=count` at [`STALE_PATH`] one after the other; answers `(value, monotonic
/// nanoseconds of its acknowledgement)` for each.
#[derive(Debug, Serialize, Deserialize, Command)]
#[command(name = "bench_save_sequence", target = worker, reply = Vec<(u64, u64)>)]
pub(crate) struct SaveSequence {
    pub(crate) count: u64,
}

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process of the machine.
pub(crate) fn monotonic_nanos() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(now) => now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64,
        Err(_) => 0,
    }
}

/// Set by [`StopWriting`].
static STOP_WRITING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// When each value showed: `(value, monotonic nanoseconds)`.
type Seen = Vec<(u64, u64)>;

/// What [`WatchStaleness`] recorded, once it has all.
static STALENESS: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<Seen>>> =
    std::sync::Mutex::new(None);

/// Asks the measuring worker to run one measurement and answer with its figures.
#[derive(Debug, Serialize, Deserialize, Command)]
#[command(name = "bench_measure", target = worker, reply = Figures)]
pub(crate) struct Measure {
    pub(crate) workload: Workload,
    pub(crate) warmup: u32,
    pub(crate) iterations: u32,
}

/// The trivial worker -> worker command: answers its payload.
#[derive(Debug, Serialize, Deserialize, Command)]
#[command(name = "bench_echo", target = worker, reply = String)]
struct Echo(String);

/// Sent by the measuring worker to the primary of a Redis-mirrored cluster: answers once Redis
/// has every write that returned before the command arrived ([`RedisMirror::wait_mirrored`]).
#[derive(Debug, Serialize, Deserialize, Command)]
#[command(name = "bench_wait_mirrored", target = primary, reply = ())]
pub(crate) struct WaitMirrored;

/// The number in the next distinct path this worker saves to (paths are never reused within a
/// cluster: each cluster has its own workers).
static NEXT_DISTINCT: AtomicU64 = AtomicU64::new(0);

/// Saves `value` at a path this worker never saved to before.
async fn save_distinct(worker: &Worker, value: &str) -> clusterfy::Result<()> {
    let n = NEXT_DISTINCT.fetch_add(1, Ordering::Relaxed);
    worker.save(&format!("{DISTINCT_PARENT}.k{n}"), value).await
}

/// A worker process: answers [`Measure`] and [`Echo`] until the primary shuts it down; one whose
/// name starts with [`HTTP_WORKER_PREFIX`] also serves HTTP on the shared listener meanwhile.
pub(crate) async fn run_worker() -> BenchResult<()> {
    let worker = Worker::builder()
        .command(|measure: Measure, ctx: WorkerContext| async move {
            run_measurement(ctx.worker(), &measure).await
        })
        .command(|echo: Echo, _| async move { Ok(echo.0) })
        .command(|_: StopWriting, _| async move {
            STOP_WRITING.store(true, Ordering::SeqCst);
            Ok(())
        })
        .command(|watch: WatchStaleness, ctx: WorkerContext| async move {
            watch_staleness(ctx.worker(), watch.count).await
        })
        .command(|_: StalenessSeen, _| async move {
            let seen = STALENESS.lock().map_err(|_| Error::new(ErrorKind::InvalidState, "poisoned"))?.take();
            let seen =
                seen.ok_or_else(|| Error::new(ErrorKind::InvalidState, "no staleness watch started"))?;
            seen.await.map_err(|_| Error::new(ErrorKind::Closed, "the staleness watch ended early"))
        })
        .command(|sequence: SaveSequence, ctx: WorkerContext| async move {
            let mut acked = Vec::with_capacity(sequence.count as usize);
            for n in 1..=sequence.count {
                ctx.worker().save(STALE_PATH, &n).await?;
                acked.push((n, monotonic_nanos()));
            }
            Ok(acked)
        })
        .connect()
        .await?;
    if worker.name().starts_with(HTTP_WORKER_PREFIX) {
        return http_server::serve_worker(&worker).await;
    }
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
            pipelined(IN_FLIGHT, warmup, || worker.save(STORAGE_PATH, value)).await?;
            let start = Instant::now();
            pipelined(IN_FLIGHT, iterations, || worker.save(STORAGE_PATH, value)).await?;
            Ok(Figures::throughput(iterations, start.elapsed()))
        }
        Workload::SaveDistinctPipelined => {
            pipelined(IN_FLIGHT, warmup, || save_distinct(worker, value)).await?;
            let start = Instant::now();
            pipelined(IN_FLIGHT, iterations, || save_distinct(worker, value)).await?;
            Ok(Figures::throughput(iterations, start.elapsed()))
        }
        Workload::SaveDistinctMirrored => {
            pipelined(IN_FLIGHT, warmup, || save_distinct(worker, value)).await?;
            worker.run_on_primary(WaitMirrored).await?;
            let start = Instant::now();
            pipelined(IN_FLIGHT, iterations, || save_distinct(worker, value)).await?;
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
        Workload::IncrementPipelined => {
            let paths: Vec<String> =
                (0..IN_FLIGHT).map(|slot| format!("{DISTINCT_PARENT}.c{slot}")).collect();
            let mut next = 0;
            let mut increment = || {
                let path = &paths[next % IN_FLIGHT];
                next += 1;
                async move { worker.storage().increment(path, 1).await.map(drop) }
            };
            pipelined(IN_FLIGHT, warmup, &mut increment).await?;
            let start = Instant::now();
            pipelined(IN_FLIGHT, iterations, &mut increment).await?;
            Ok(Figures::throughput(iterations, start.elapsed()))
        }
        Workload::IncrementHot => {
            let increment = || async { worker.storage().increment(HOT_PATH, 1).await.map(drop) };
            pipelined(HOT_IN_FLIGHT, warmup, increment).await?;
            let start = Instant::now();
            pipelined(HOT_IN_FLIGHT, iterations, increment).await?;
            Ok(Figures::throughput(iterations, start.elapsed()))
        }
        Workload::ReplicaRead => {
            let replica = worker.storage().replica(DISTINCT_PARENT).await?;
            read_loop(warmup, || replica.retrieve::<String>(STORAGE_PATH))?;
            read_loop(iterations, || replica.retrieve::<String>(STORAGE_PATH))
        }
        Workload::RawMapRead => {
            // The same paths and values the replica holds, in a plain map of this process.
            let mut map: std::collections::HashMap<String, clusterfy::Value> =
                std::collections::HashMap::new();
            // Copied from a replica: the branch may be larger than one frame (a retrieve of it).
            let replica = worker.storage().replica(DISTINCT_PARENT).await?;
            flatten(DISTINCT_PARENT, replica.retrieve_value(DISTINCT_PARENT)?, &mut map);
            drop(replica);
            let read = || map.get(STORAGE_PATH).cloned().map(clusterfy::from_value::<String>).transpose();
            read_loop(warmup, read)?;
            read_loop(iterations, read)
        }
        Workload::SaveDistinctUntilStopped => {
            STOP_WRITING.store(false, Ordering::SeqCst);
            let mut saved = 0u32;
            let start = Instant::now();
            while !STOP_WRITING.load(Ordering::SeqCst) {
                pipelined(IN_FLIGHT, IN_FLIGHT as u32, || save_distinct(worker, value)).await?;
                saved += IN_FLIGHT as u32;
            }
            Ok(Figures::throughput(saved, start.elapsed()))
        }
        Workload::FloodUntilStopped => {
            STOP_WRITING.store(false, Ordering::SeqCst);
            let mut read = 0u32;
            let start = Instant::now();
            while !STOP_WRITING.load(Ordering::SeqCst) {
                let retrieve = || async { worker.retrieve::<String>(STORAGE_PATH).await.map(drop) };
                pipelined(FLOOD_IN_FLIGHT, FLOOD_IN_FLIGHT as u32, retrieve).await?;
                read += FLOOD_IN_FLIGHT as u32;
            }
            Ok(Figures::throughput(read, start.elapsed()))
        }
        Workload::Storm => {
            let paths: Vec<String> = (0..STORM_IN_FLIGHT)
                .map(|slot| format!("{DISTINCT_PARENT}.{}-{slot}", worker.name()))
                .collect();
            let mut next = 0;
            let mut save = || {
                let path = &paths[next % STORM_IN_FLIGHT];
                next += 1;
                worker.save(path, value)
            };
            pipelined(STORM_IN_FLIGHT, warmup, &mut save).await?;
            let start = Instant::now();
            pipelined(STORM_IN_FLIGHT, iterations, &mut save).await?;
            Ok(Figures::throughput(iterations, start.elapsed()))
        }
    }
}

/// Starts the replica of [`STALE_PATH`] and a task that records when each of the next `count`
/// values shows in it.
async fn watch_staleness(worker: &Worker, count: u64) -> clusterfy::Result<()> {
    let replica = worker.storage().replica(STALE_PATH).await?;
    let mut changes = replica.changed();
    let (done, seen) = tokio::sync::oneshot::channel();
    *STALENESS.lock().map_err(|_| Error::new(ErrorKind::InvalidState, "poisoned"))? = Some(seen);
    tokio::spawn(async move {
        let mut times = Vec::with_capacity(count as usize);
        let mut last = 0;
        while last < count && changes.next().await.is_some() {
            let now = monotonic_nanos();
            if let Ok(Some(shown)) = replica.retrieve::<u64>(STALE_PATH)
                && shown > last
            {
                // Every value between was shown by an earlier event or this one.
                times.extend((last + 1..=shown).map(|n| (n, now)));
                last = shown;
            }
        }
        let _ = done.send(times);
    });
    Ok(())
}

/// Every leaf of `value` (stored at `path`) by its dotted path.
fn flatten(
    path: &str,
    value: Option<clusterfy::Value>,
    into: &mut std::collections::HashMap<String, clusterfy::Value>,
) {
    match value {
        Some(clusterfy::Value::Map(entries)) => {
            for (key, value) in entries {
                flatten(&format!("{path}.{key}"), Some(value), into);
            }
        }
        Some(leaf) => drop(into.insert(path.to_owned(), leaf)),
        None => {}
    }
}

/// Reads [`STORAGE_PATH`] `iterations` times with `read`; fails unless it is the payload.
fn read_loop(
    iterations: u32,
    mut read: impl FnMut() -> clusterfy::Result<Option<String>>,
) -> clusterfy::Result<Figures> {
    let start = Instant::now();
    for _ in 0..iterations {
        let value = read()?;
        if value.as_ref().map(String::len) != Some(PAYLOAD_LEN) {
            return Err(Error::new(ErrorKind::InvalidState, format!("read {value:?}, not the payload")));
        }
    }
    Ok(Figures::throughput(iterations, start.elapsed()))
}

/// Runs `op` `count` times with `in_flight` at once.
async fn pipelined<F, Fut>(in_flight: usize, count: u32, mut op: F) -> clusterfy::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = clusterfy::Result<()>>,
{
    let mut results = futures::stream::iter(0..count).map(|_| op()).buffer_unordered(in_flight);
    while let Some(result) = results.next().await {
        result?;
    }
    Ok(())
}

/// Runs [`Measure`] on the measuring worker.
pub(crate) async fn measure(primary: &Primary, workload: Workload, iterations: u32) -> BenchResult<Figures> {
    measure_on(primary, WORKER_A, workload, iterations).await
}

/// Runs [`Measure`] on `worker`, after a warm-up of a tenth of `iterations`.
pub(crate) async fn measure_on(
    primary: &Primary,
    worker: &str,
    workload: Workload,
    iterations: u32,
) -> BenchResult<Figures> {
    let warmup = Plan::warmup(iterations);
    Ok(primary.run(worker, Measure { workload, warmup, iterations }).await?)
}

/// Which Clusterfy transport a cluster uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClusterTransport {
    /// The default: Unix sockets.
    Uds,
    /// [`StdioTransport`]: each worker talks over its stdin and stdout.
    Stdio,
}

/// Where a cluster keeps its shared storage.
pub(crate) enum ClusterStorage {
    /// The default, memory.
    Memory,
    /// A sled database, every call timed into the stats.
    Sled(SledStorage, Arc<BackendStats>),
    /// A Redis mirror, also kept by the caller; the primary answers [`WaitMirrored`] with it.
    Redis(Arc<RedisMirror>),
}

/// A primary's builder on `transport` and `storage`, whose storage starts with the empty map
/// [`DISTINCT_PARENT`].
pub(crate) fn cluster_builder(transport: ClusterTransport, storage: ClusterStorage) -> PrimaryBuilder {
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
    builder
}

/// Starts a primary on `transport` and `storage` with the two bench workers, and saves the bench
/// value.
pub(crate) async fn start_cluster(
    transport: ClusterTransport,
    storage: ClusterStorage,
) -> BenchResult<Primary> {
    start_cluster_with(transport, storage, &[WORKER_A, WORKER_B]).await
}

/// Starts a primary on `transport` and `storage` with the workers `names`, and saves the bench
/// value.
pub(crate) async fn start_cluster_with(
    transport: ClusterTransport,
    storage: ClusterStorage,
    names: &[impl AsRef<str>],
) -> BenchResult<Primary> {
    let primary = cluster_builder(transport, storage).build().await?;
    for name in names {
        primary.fork(name.as_ref(), WorkerOptions::default()).await?;
    }
    primary.ready().await?;
    primary.storage().save(STORAGE_PATH, payload().as_str()).await?;
    Ok(primary)
}
