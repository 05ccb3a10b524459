//! One sample of a worker process's CPU use and resident memory: what the sampler reads from
//! `/proc` and the slot keeps (and judges against its memory limit).

use std::sync::OnceLock;
use std::time::Instant;

/// One sample of one worker process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    /// Resident memory, in bytes.
    pub(crate) rss: u64,
    /// CPU time used since the sample before, as a share of one core (100.0 = one core busy);
    /// `None` at the first sample of a process.
    pub(crate) cpu_percent: Option<f64>,
    pub(crate) pid: u32,
    cpu_ticks: u64,
    pub(crate) at: Instant,
}

impl Usage {
    /// A sample of process `pid` taken at `at`: `rss` bytes resident, `cpu_ticks` of CPU time
    /// used so far.
    pub(crate) fn new(pid: u32, rss: u64, cpu_ticks: u64, at: Instant) -> Usage {
        Usage { rss, cpu_percent: None, pid, cpu_ticks, at }
    }

    /// The CPU share used between `before` (of the same process) and this sample; `None` if no
    /// time passed.
    pub(crate) fn cpu_since(&self, before: &Usage) -> Option<f64> {
        let used = self.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / clock_ticks();
        let elapsed = self.at.duration_since(before.at).as_secs_f64();
        (elapsed > 0.0).then(|| 100.0 * used / elapsed)
    }
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten();
        ticks.map_or(100.0, |t| t as f64)
    })
}
