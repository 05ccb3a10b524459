//! Single workloads instead of the benchmark, for `tests/bench-instructions.sh`, which runs each
//! twice under callgrind with different counts: the difference of the two instruction counts
//! divided by the difference of the counts is the cost of one operation, start-up removed.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use crate::cluster::{ClusterStorage, ClusterTransport, Measure, Workload, start_cluster_with};
use crate::options::Flavor;
use crate::raw_echo::RawPeer;
use crate::{BenchResult, IN_FLIGHT, WORKER_A};

/// A primary (this process) on Unix sockets and memory storage with one worker, which does
/// `saves` saves of [`Workload::SavePipelined`] ([`IN_FLIGHT`] in flight, no warm-up); then the
/// cluster shuts down.
pub(crate) async fn pipelined_save(saves: u32) -> BenchResult<()> {
    let primary = start_cluster_with(ClusterTransport::Uds, ClusterStorage::Memory, &[WORKER_A]).await?;
    let start = Instant::now();
    let measure = Measure { workload: Workload::SavePipelined, warmup: 0, iterations: saves };
    let figures = primary.run(WORKER_A, measure).await?;
    eprintln!(
        "[bench] {saves} saves with {IN_FLIGHT} in flight: {:.0} ops/s at the worker, {:.2} s at the primary",
        figures.ops_per_sec,
        start.elapsed().as_secs_f64()
    );
    primary.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}

/// The socket baseline's driver (this process): starts the echo child, under `wrapper` if it is
/// not empty, sends it `frames` frames with [`IN_FLIGHT`] in flight (no warm-up) and waits for it
/// to exit.
pub(crate) async fn raw_echo(flavor: Flavor, frames: u32, wrapper: &[OsString]) -> BenchResult<()> {
    let mut peer = RawPeer::spawn_socket(flavor, wrapper).await?;
    let figures = peer.pipelined(0, frames).await?;
    eprintln!("[bench] {frames} frames with {IN_FLIGHT} in flight: {:.0} ops/s", figures.ops_per_sec);
    peer.finish().await
}
