//! The Unix-socket cluster on memory storage against the raw socket ping-pong.

use std::time::Duration;

use crate::BenchResult;
use crate::cluster::{ClusterStorage, ClusterTransport, Workload, measure, start_cluster};
use crate::options::{Options, Plan};
use crate::raw_echo::{RawLink, RawPeer};
use crate::sampling::Samples;

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
    }
    raw.finish().await?;
    primary.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}
