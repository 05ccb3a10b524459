//! The Unix-socket cluster on sled against raw sled insert + flush.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clusterfy::storage::SledStorage;

use crate::BenchResult;
use crate::cluster::{
    ClusterStorage, ClusterTransport, StopWriting, Workload, measure, measure_on, start_cluster,
};
use crate::kept::{BackendStats, SLED_PIPELINED_BREAKDOWN, SLED_SEQ_BREAKDOWN};
use crate::options::Plan;
use crate::raw_storage::RawSled;
use crate::sampling::Samples;

/// A third cluster on sled against raw sled insert + flush in this process, interleaved in each
/// repetition.
pub(crate) async fn run_sled_phase(plan: &Plan, samples: &mut Samples) -> BenchResult<()> {
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
        samples.add("sled_save_pipelined_vs_memory", figures.ops_per_sec);
        stats.add_since(before, start.elapsed(), &SLED_PIPELINED_BREAKDOWN, samples);
        let figures = measure(&primary, Workload::RetrieveSequential, plan.durable_sequential).await?;
        samples.add("sled_read_p50_idle", figures.latency.map_or(0.0, |l| l.p50_us));
        samples.add("sled_read_p50_under_writes", read_p50_under_writes(&primary, plan).await?);
    }
    primary.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}

/// [`crate::WORKER_A`]'s read p50 while [`crate::WORKER_B`] writes durable saves with 256 in flight.
async fn read_p50_under_writes(primary: &clusterfy::Primary, plan: &Plan) -> BenchResult<f64> {
    let writer = primary.clone();
    let writing = tokio::spawn(async move {
        measure_on(&writer, crate::WORKER_B, Workload::SaveDistinctUntilStopped, 0).await
    });
    let reads =
        measure_on(primary, crate::WORKER_A, Workload::RetrieveSequential, plan.durable_sequential).await;
    primary.run(crate::WORKER_B, StopWriting).await?;
    let written = writing.await.map_err(|_| "the writing measurement panicked")??;
    if written.ops_per_sec == 0.0 {
        return Err("no durable save ran while the reads were measured".into());
    }
    Ok(reads?.latency.map_or(0.0, |l| l.p50_us))
}
