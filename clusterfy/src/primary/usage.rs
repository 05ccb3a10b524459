//! The CPU use and resident memory of every worker process, sampled from `/proc` at an
//! interval, and the driver of the memory limit that replaces a worker grown past it (the
//! decision is the slot's).

use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::sample::Usage;
use super::slot::{Action, Input, MEMORY_RETRY_AFTER};
use super::{Primary, PrimaryInner};
use crate::events::WorkerRef;

/// Default time between two samples of every worker.
pub const DEFAULT_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest sample interval accepted: reading `/proc` is cheap, but not free.
pub(super) const MIN_SAMPLE_INTERVAL: Duration = Duration::from_millis(10);

/// Samples every worker at `interval` for as long as the primary lives.
pub(super) fn sample_workers(primary: Weak<PrimaryInner>, interval: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticks.tick().await;
            let Some(inner) = primary.upgrade() else { return };
            sample_once(&inner);
        }
    });
}

/// Takes one sample of each running worker and gives it to its slot.
fn sample_once(inner: &Arc<PrimaryInner>) {
    let pids: Vec<(WorkerRef, u32)> =
        inner.directory().slots().filter_map(|s| s.pid().map(|pid| (s.worker().clone(), pid))).collect();
    // Read outside the directory's lock: /proc reads are system calls.
    for (worker, pid) in pids {
        let Some(ProcSample { cpu_ticks, rss }) = read_proc(pid) else { continue };
        let actions = inner.apply(worker.id, Input::Sampled(Usage::new(pid, rss, cpu_ticks, Instant::now())));
        if let Some(kept) = inner.directory().get(worker.id).and_then(|s| s.usage()).filter(|u| u.pid == pid)
        {
            crate::metrics::worker_usage(&worker.name, kept.rss, kept.cpu_percent.unwrap_or(0.0));
        }
        for action in actions {
            match action {
                Action::ReplaceAfter { delay, grace } => replace_after(inner, worker.clone(), delay, grace),
                Action::StopForGood { grace } => stop_for_good(inner, worker.clone(), grace),
                other => tracing::debug!(?other, "not an action for the sampler"),
            }
        }
    }
}

/// Replaces a worker over its memory limit after `delay` (the old process keeps serving
/// meanwhile), as a restart.
fn replace_after(inner: &Arc<PrimaryInner>, worker: WorkerRef, delay: Duration, grace: Duration) {
    let primary = Primary { inner: Arc::clone(inner) };
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let inner = &primary.inner;
        // A reload may run meanwhile: one replacement at a time.
        let _one_at_a_time = inner.reloading.lock().await;
        if inner.directory().shutting_down() {
            inner.change(|d| d.replacement_ended(&worker, None, None));
            return;
        }
        match primary.replace_one(&worker, grace, true, Some(MEMORY_RETRY_AFTER)).await {
            Ok(new) => crate::metrics::restart(&new.name),
            Err(err) => {
                tracing::error!(worker = %worker, error = %err, "replacing a worker over its memory limit failed");
            }
        }
    });
}

/// Stops a worker whose replacements kept outgrowing its memory limit, for good.
fn stop_for_good(inner: &Arc<PrimaryInner>, worker: WorkerRef, grace: Duration) {
    let primary = Primary { inner: Arc::clone(inner) };
    tokio::spawn(async move {
        if let Err(err) = primary.shutdown_worker(worker.id, grace).await {
            tracing::warn!(worker = %worker, error = %err, "stopping a worker over its memory limit failed");
        }
    });
}

struct ProcSample {
    cpu_ticks: u64,
    rss: u64,
}

/// CPU ticks (user + system) and resident bytes of `pid`, from `/proc/<pid>/stat`.
fn read_proc(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat, page_size())
}

fn parse_stat(stat: &str, page_size: u64) -> Option<ProcSample> {
    // The command name (field 2) is in parentheses and may hold spaces or parentheses itself.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields are numbered from 1 in proc(5); `fields[0]` is field 3, the state.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(ProcSample { cpu_ticks: field(14)? + field(15)?, rss: field(24)? * page_size })
}

fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| {
        let size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten();
        size.map_or(4096, |s| s as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_cpu_ticks_and_resident_bytes_even_with_odd_command_names() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 \
                    1000 123456789 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let sample = parse_stat(line, 4096).expect("parses");
        assert_eq!(sample.cpu_ticks, 300);
        assert_eq!(sample.rss, 300 * 4096);
        assert!(parse_stat("garbage", 4096).is_none());
    }

    #[test]
    fn this_process_can_be_sampled() {
        let sample = read_proc(std::process::id()).expect("/proc of this process");
        assert!(sample.rss > 1 << 20, "a test process uses more than 1 MiB: {}", sample.rss);
    }
}
