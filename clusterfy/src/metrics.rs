//! What the primary reports through the `metrics` crate's facade (feature `metrics`), so that
//! any exporter (Prometheus, StatsD, ...) installed by the program sees it. Without the feature
//! every function here is empty and costs nothing.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `clusterfy_commands_total` | counter | `command`, `outcome` (`ok`, `error`) |
//! | `clusterfy_storage_operations_total` | counter | `operation` (`get`, `save`, `delete`, `compare_and_swap`, `increment`, `append`, ..., in snake case), `outcome` |
//! | `clusterfy_restarts_total` | counter | `worker` |
//! | `clusterfy_storage_queue_depth` | gauge | none: storage jobs taken in the writer's last round |
//! | `clusterfy_worker_memory_bytes` | gauge | `worker` |
//! | `clusterfy_worker_cpu_percent` | gauge | `worker` |

fn outcome(ok: bool) -> &'static str {
    if ok { "ok" } else { "error" }
}

/// A command ran (on the primary, or on a worker through the primary).
pub(crate) fn command(name: &str, ok: bool) {
    #[cfg(feature = "metrics")]
    metrics::counter!("clusterfy_commands_total", "command" => name.to_owned(), "outcome" => outcome(ok))
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, outcome(ok));
}

/// A storage operation was answered.
pub(crate) fn storage_operation(operation: &'static str, ok: bool) {
    storage_operations(operation, ok, 1);
}

/// `count` storage operations were answered alike.
pub(crate) fn storage_operations(operation: &'static str, ok: bool, count: u64) {
    #[cfg(feature = "metrics")]
    metrics::counter!("clusterfy_storage_operations_total", "operation" => operation, "outcome" => outcome(ok))
        .increment(count);
    #[cfg(not(feature = "metrics"))]
    let _ = (operation, outcome(ok), count);
}

/// A crashed worker was started again.
pub(crate) fn restart(worker: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("clusterfy_restarts_total", "worker" => worker.to_owned()).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = worker;
}

/// The storage writer took `jobs` jobs in one round.
pub(crate) fn storage_queue_depth(jobs: usize) {
    #[cfg(feature = "metrics")]
    metrics::gauge!("clusterfy_storage_queue_depth").set(jobs as f64);
    #[cfg(not(feature = "metrics"))]
    let _ = jobs;
}

/// A worker process was sampled.
pub(crate) fn worker_usage(worker: &str, memory: u64, cpu_percent: f64) {
    #[cfg(feature = "metrics")]
    {
        metrics::gauge!("clusterfy_worker_memory_bytes", "worker" => worker.to_owned()).set(memory as f64);
        metrics::gauge!("clusterfy_worker_cpu_percent", "worker" => worker.to_owned()).set(cpu_percent);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (worker, memory, cpu_percent);
}
