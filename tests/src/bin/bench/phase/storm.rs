//! [`STORM_WORKERS`] workers saving at once against one of them saving alone, and the primary's
//! resident set after the storms against before them.

use std::time::{Duration, Instant};

use clusterfy::Primary;

use crate::BenchResult;
use crate::bare::rss_kib;
use crate::cluster::{
    ClusterStorage, ClusterTransport, Measure, STORM_WORKERS, Workload, measure_on, start_cluster_with,
};
use crate::options::Plan;
use crate::sampling::{Samples, rate};

/// A cluster of [`STORM_WORKERS`] workers `storm-<i>` on Unix sockets and memory storage. In each
/// repetition, `storm-0` alone runs [`Workload::SavePipelined`] (the baseline), then a warm-up
/// storm of a tenth as many saves, then the measured storm. The primary's resident set is read
/// once just before the first storm and once after the last.
pub(crate) async fn run_storm_phase(plan: &Plan, samples: &mut Samples) -> BenchResult<()> {
    let names: Vec<String> = (0..STORM_WORKERS).map(|i| format!("storm-{i}")).collect();
    let primary = start_cluster_with(ClusterTransport::Uds, ClusterStorage::Memory, &names).await?;
    for repetition in 1..=plan.repetitions {
        eprintln!("[bench] storm repetition {repetition}/{}", plan.repetitions);
        let figures = measure_on(&primary, &names[0], Workload::SavePipelined, plan.pipelined).await?;
        samples.add("storm_single_worker_pipelined_ops", figures.ops_per_sec);
        if repetition == 1 {
            samples.add("primary_rss_before_storm", rss_kib(std::process::id())?);
        }
        storm(&primary, Plan::warmup(plan.storm_saves)).await?;
        let elapsed = storm(&primary, plan.storm_saves).await?;
        samples.add("storm_save_ops", rate(STORM_WORKERS * plan.storm_saves as usize, elapsed));
    }
    samples.add("primary_rss_after_storm", rss_kib(std::process::id())?);
    primary.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}

/// One storm: every worker runs [`Workload::Storm`] with `saves` saves, all started by one
/// broadcast; the time from the broadcast until the last worker answered.
async fn storm(primary: &Primary, saves: u32) -> BenchResult<Duration> {
    let start = Instant::now();
    let replies =
        primary.broadcast(Measure { workload: Workload::Storm, warmup: 0, iterations: saves }).await?;
    let elapsed = start.elapsed();
    if replies.len() != STORM_WORKERS {
        return Err(format!("the storm reached {} workers, not {STORM_WORKERS}", replies.len()).into());
    }
    for reply in replies {
        reply.result.map_err(|err| format!("the storm failed on worker {}: {err}", reply.worker))?;
    }
    Ok(elapsed)
}
