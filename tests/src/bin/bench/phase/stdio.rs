//! The stdio cluster on memory storage against the raw pipe ping-pong.

use std::time::Duration;

use crate::BenchResult;
use crate::cluster::{ClusterStorage, ClusterTransport, Workload, measure, start_cluster};
use crate::options::{Options, Plan};
use crate::raw_echo::{RawLink, RawPeer};
use crate::sampling::Samples;

/// A second cluster on the stdio transport against the raw pipe baseline, interleaved in each
/// repetition.
pub(crate) async fn run_stdio_phase(
    options: &Options,
    plan: &Plan,
    samples: &mut Samples,
) -> BenchResult<()> {
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
