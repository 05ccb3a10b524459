//! The CPU use and resident memory of every worker process, sampled from `/proc` at an
//! interval, and the memory limit that replaces a worker grown past it.

use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use clusterfy_core::WorkerId;

use super::restart::RestartDecision;
use super::{Primary, PrimaryInner, WorkerState};
use crate::events::{Event, GiveUpCause, WorkerRef};

/// Default time between two samples of every worker.
pub const DEFAULT_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// After a failed memory-limit replacement, the time before the next try: a new process that
/// cannot start is not forked again at every sample.
const MEMORY_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Shortest sample interval accepted: reading `/proc` is cheap, but not free.
pub(super) const MIN_SAMPLE_INTERVAL: Duration = Duration::from_millis(10);

/// The last sample of one worker process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    /// Resident memory, in bytes.
    pub(crate) rss: u64,
    /// CPU time used since the sample before, as a share of one core (100.0 = one core busy);
    /// `None` at the first sample of a process.
    pub(crate) cpu_percent: Option<f64>,
    pid: u32,
    cpu_ticks: u64,
    at: Instant,
}

/// Samples every worker at `interval` for as long as the primary lives.
pub(super) fn sample_workers(primary: Weak<PrimaryInner>, interval: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticks.tick().await;
            let Some(inner) = primary.upgrade() else { return };
            for (worker, rss, limit) in sample_once(&inner) {
                replace_over_limit(&inner, worker, rss, limit);
            }
        }
    });
}

/// Takes one sample of each running worker; returns the workers over their memory limit, now
/// marked as being replaced.
fn sample_once(inner: &PrimaryInner) -> Vec<(WorkerRef, u64, u64)> {
    let pids: Vec<(WorkerId, u32)> =
        inner.slots().values().filter_map(|s| s.pid.map(|pid| (s.worker.id, pid))).collect();
    // Read outside the directory's lock: /proc reads are system calls.
    let samples: Vec<_> = pids.into_iter().filter_map(|(id, pid)| Some((id, pid, read_proc(pid)?))).collect();
    let now = Instant::now();
    let mut over = Vec::new();
    let mut slots = inner.slots();
    for (id, pid, sample) in samples {
        let Some(slot) = slots.get_mut(&id) else { continue };
        if slot.pid != Some(pid) {
            continue;
        }
        let cpu_percent = match slot.usage {
            Some(before) if before.pid == pid => {
                let used = sample.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / clock_ticks();
                let elapsed = now.duration_since(before.at).as_secs_f64();
                if elapsed > 0.0 { Some(100.0 * used / elapsed) } else { before.cpu_percent }
            }
            _ => None,
        };
        slot.usage = Some(Usage { rss: sample.rss, cpu_percent, pid, cpu_ticks: sample.cpu_ticks, at: now });
        crate::metrics::worker_usage(&slot.worker.name, sample.rss, cpu_percent.unwrap_or(0.0));
        if let Some(limit) = slot.options.max_memory {
            let cooling_down = slot.no_memory_replacement_before.is_some_and(|at| now < at);
            let replaceable = slot.state == WorkerState::Ready
                && slot.answers_to_name()
                && !slot.replacing
                && !cooling_down;
            if sample.rss > limit
                && replaceable
                && !inner.shutting_down.load(std::sync::atomic::Ordering::SeqCst)
            {
                slot.replacing = true;
                over.push((slot.worker.clone(), sample.rss, limit));
            }
        }
    }
    over
}

/// Replaces a worker over its memory limit, as a restart under its restart policy (the default
/// policy if it has none): after the policy's backoff, and, once the intensity limit is passed,
/// not again: the limit is then below what the program needs, so the worker is stopped for good
/// (`GaveUp`) instead of being replaced in a loop.
fn replace_over_limit(inner: &Arc<PrimaryInner>, worker: WorkerRef, rss: u64, limit: u64) {
    tracing::warn!(worker = %worker, rss, limit, "worker passed its memory limit: replacing it");
    inner.emit(Event::MemoryLimit { worker: worker.clone(), rss, limit });
    let primary = Primary { inner: Arc::clone(inner) };
    tokio::spawn(async move {
        let inner = &primary.inner;
        let Some((decision, grace)) = inner.update_slot(worker.id, |s| {
            let policy = s.options.restart.clone().unwrap_or_default();
            (s.history.on_restart_needed(&policy, Instant::now()), s.options.memory_limit_grace)
        }) else {
            return;
        };
        let delay = match decision {
            RestartDecision::RestartAfter(delay) => delay,
            RestartDecision::GiveUp => return give_up_over_limit(&primary, &worker, rss, limit, grace).await,
        };
        // The old process keeps serving meanwhile; a reload may run.
        tokio::time::sleep(delay).await;
        let _one_at_a_time = inner.reloading.lock().await;
        if inner.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
            inner.update_slot(worker.id, |s| s.replacing = false);
            return;
        }
        match primary.replace_one(&worker, grace, true).await {
            Ok(new) => crate::metrics::restart(&new.name),
            Err(err) => {
                tracing::error!(worker = %worker, error = %err, "replacing a worker over its memory limit failed");
                let retry = Instant::now() + MEMORY_RETRY_AFTER;
                inner.update_slot(worker.id, |s| s.no_memory_replacement_before = Some(retry));
            }
        }
    });
}

/// Stops a worker whose replacements kept outgrowing its memory limit, for good.
async fn give_up_over_limit(primary: &Primary, worker: &WorkerRef, rss: u64, limit: u64, grace: Duration) {
    let inner = &primary.inner;
    let restarts = inner.update_slot(worker.id, |s| {
        s.stop_as = WorkerState::GaveUp;
        s.restarts
    });
    tracing::error!(worker = %worker, rss, limit, "worker keeps outgrowing its memory limit: giving up on it");
    let cause = GiveUpCause::MemoryLimit { rss, limit };
    inner.emit(Event::GaveUp { worker: worker.clone(), restarts: restarts.unwrap_or(0), cause });
    if let Err(err) = primary.shutdown_worker(worker.id, grace).await {
        tracing::warn!(worker = %worker, error = %err, "stopping a worker over its memory limit failed");
    }
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

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten();
        ticks.map_or(100.0, |t| t as f64)
    })
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
