//! The Unix-socket cluster on sled against raw sled insert + flush.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clusterfy::storage::SledStorage;

use crate::BenchResult;
use crate::cluster::{ClusterStorage, ClusterTransport, Workload, measure, start_cluster};
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
        stats.add_since(before, start.elapsed(), &SLED_PIPELINED_BREAKDOWN, samples);
    }
    primary.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}
