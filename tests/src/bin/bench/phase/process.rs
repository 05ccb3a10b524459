//! Fresh primaries starting workers against bare processes started and reaped, and the resident
//! sets of an idle worker and of the primary against that of a bare idle process.

use std::time::{Duration, Instant};

use clusterfy::primary::WorkerOptions;

use crate::BenchResult;
use crate::bare::{idle_rss, rss_kib, spawn_wait_noop};
use crate::cluster::{ClusterStorage, ClusterTransport, cluster_builder};
use crate::options::Plan;
use crate::sampling::Samples;

/// The cluster sizes measured, with the names of their figure and of its baseline.
const SIZES: [(usize, &str, &str); 2] =
    [(1, "spawn_to_ready_1", "spawn_wait_noop_1"), (8, "spawn_to_ready_8", "spawn_wait_noop_8")];

/// In each repetition: the idle bare process's resident set; then for each of [`SIZES`], the
/// bare processes spawned and reaped, and a new primary (built before the clock starts) forking
/// that many workers until `ready` returns. The one-worker cluster also gives the resident sets
/// of its idle worker and of the primary.
pub(crate) async fn run_process_phase(plan: &Plan, samples: &mut Samples) -> BenchResult<()> {
    for repetition in 1..=plan.process_repetitions {
        eprintln!("[bench] processes repetition {repetition}/{}", plan.process_repetitions);
        samples.add("bare_idle_rss", idle_rss().await?);
        for (count, name, baseline) in SIZES {
            samples.add_millis(baseline, spawn_wait_noop(count).await?);
            let primary = cluster_builder(ClusterTransport::Uds, ClusterStorage::Memory).build().await?;
            let start = Instant::now();
            for i in 0..count {
                primary.fork(&format!("spawn-{i}"), WorkerOptions::default()).await?;
            }
            primary.ready().await?;
            samples.add_millis(name, start.elapsed());
            if count == 1 {
                let workers = primary.workers();
                let pid = workers.first().and_then(|w| w.pid).ok_or("the ready worker has no process id")?;
                samples.add("worker_idle_rss", rss_kib(pid)?);
                samples.add("primary_idle_rss", rss_kib(std::process::id())?);
            }
            primary.shutdown(Duration::from_secs(5)).await?;
        }
    }
    Ok(())
}
