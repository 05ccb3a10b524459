//! The Unix-socket cluster on memory storage against the raw socket ping-pong.

use std::time::{Duration, Instant};

use clusterfy::Primary;

use crate::cluster::{
    ClusterStorage, ClusterTransport, SaveSequence, StalenessSeen, StopWriting, WatchStaleness, Workload,
    measure, measure_on, start_cluster,
};
use crate::options::{Options, Plan};
use crate::raw_echo::{RawLink, RawPeer};
use crate::sampling::Samples;
use crate::sampling::rate;
use crate::{BenchResult, WORKER_A, WORKER_B};

/// The Unix-socket cluster against the raw socket baseline, interleaved in each repetition.
pub(crate) async fn run_uds_phase(options: &Options, plan: &Plan, samples: &mut Samples) -> BenchResult<()> {
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
        let figures = measure(&primary, Workload::IncrementPipelined, plan.pipelined).await?;
        samples.add("increment_pipelined_ops", figures.ops_per_sec);
        samples.add("increment_hot_key_ops", hot_key_increments(&primary, plan.pipelined / 2).await?);
        let figures = measure(&primary, Workload::RawMapRead, plan.replica_reads).await?;
        samples.add("raw_map_read_ops", figures.ops_per_sec);
        let figures = measure(&primary, Workload::ReplicaRead, plan.replica_reads).await?;
        samples.add("replica_read_ops", figures.ops_per_sec);
        samples.add("replica_staleness_p99", replica_staleness_p99(&primary, plan.sequential).await?);
        samples.add("save_rtt_p99_beside_flood", save_p99_beside_flood(&primary, plan.sequential).await?);
    }
    raw.finish().await?;
    primary.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}

/// Both bench workers incrementing the one hot counter at once, `each` increments each: all
/// their increments per second, timed at the primary.
async fn hot_key_increments(primary: &Primary, each: u32) -> BenchResult<f64> {
    let start = Instant::now();
    let (a, b) = futures::future::join(
        measure_on(primary, WORKER_A, Workload::IncrementHot, each),
        measure_on(primary, WORKER_B, Workload::IncrementHot, each),
    )
    .await;
    let elapsed = start.elapsed();
    a?;
    b?;
    // The warm-ups ran inside the same window: count them too.
    Ok(rate(2 * (each + crate::options::Plan::warmup(each)) as usize, elapsed))
}

/// [`WORKER_A`]'s sequential save p99, in microseconds, while [`WORKER_B`] keeps
/// [`FLOOD_IN_FLIGHT`](crate::cluster::FLOOD_IN_FLIGHT) retrieves in flight (the primary reads it only as fast as its bound lets).
async fn save_p99_beside_flood(primary: &Primary, count: u32) -> BenchResult<f64> {
    let flooder = primary.clone();
    let flooding =
        tokio::spawn(async move { measure_on(&flooder, WORKER_B, Workload::FloodUntilStopped, 0).await });
    let saves = measure(primary, Workload::SaveSequential, count).await;
    if let Err(err) = primary.run(WORKER_B, StopWriting).await {
        flooding.abort();
        return Err(err.into());
    }
    let flooded = flooding.await.map_err(|_| "the flooding measurement panicked")??;
    if flooded.ops_per_sec == 0.0 {
        return Err("no flood ran while the saves were measured".into());
    }
    Ok(saves?.latency.map_or(0.0, |l| l.p99_us))
}

/// The p99, in microseconds, of how long after [`WORKER_A`]'s save of a value was acknowledged
/// [`WORKER_B`]'s replica showed it (0 when it showed it before the acknowledgement arrived).
async fn replica_staleness_p99(primary: &Primary, count: u32) -> BenchResult<f64> {
    let count = u64::from(count);
    primary.run(WORKER_B, WatchStaleness { count }).await?;
    let acked = primary.run(WORKER_A, SaveSequence { count }).await?;
    let seen = primary.run(WORKER_B, StalenessSeen).await?;
    let seen: std::collections::BTreeMap<u64, u64> = seen.into_iter().collect();
    let mut lags: Vec<u64> = acked
        .iter()
        .map(|(n, acked_at)| seen.get(n).map_or(u64::MAX, |seen_at| seen_at.saturating_sub(*acked_at)))
        .collect();
    if lags.contains(&u64::MAX) {
        return Err("a value saved by the writer never showed in the reader's replica".into());
    }
    lags.sort_unstable();
    let rank = (lags.len() * 99).div_ceil(100).saturating_sub(1);
    Ok(lags.get(rank).copied().unwrap_or(0) as f64 / 1e3)
}
