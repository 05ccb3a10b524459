//! What the primary reports about its workers, and the printed table.

use std::time::Duration;

use clusterfy_core::control::WorkerRow as ControlRow;
use clusterfy_core::{WorkerId, WorkerStatus};

use crate::control::{WorkerRow, workers_table};

use super::slot::{Slot, SlotIo, WorkerState};
use crate::events::ExitReason;

/// A snapshot of one worker.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Its id.
    pub id: WorkerId,
    /// Its name.
    pub name: String,
    /// The group it belongs to ([`Primary::fork_group`](crate::Primary::fork_group)), if any.
    pub group: Option<String>,
    /// The process id of its current process, if one runs.
    pub pid: Option<u32>,
    /// The status the worker reported last.
    pub status: WorkerStatus,
    /// Where supervision stands.
    pub state: WorkerState,
    /// How often it was revived.
    pub restarts: u32,
    /// Time since its current process started (zero if none runs).
    pub uptime: Duration,
    /// How its last process ended, if one did.
    pub last_exit: Option<ExitReason>,
    /// CPU used by its process between the last two samples, as a share of one core (100.0 is
    /// one core busy), as `pm2 ls` shows it; `None` before the first sample.
    pub cpu_percent: Option<f64>,
    /// Resident memory of its process at the last sample, in bytes.
    pub memory: Option<u64>,
}

impl WorkerInfo {
    pub(crate) fn of<W: SlotIo>(slot: &Slot<W>, group: Option<&str>) -> Self {
        let running = slot.pid().is_some();
        let usage = slot.usage().filter(|_| running);
        WorkerInfo {
            id: slot.worker().id,
            name: slot.worker().name.clone(),
            group: group.map(str::to_owned),
            pid: slot.pid(),
            status: slot.status(),
            state: slot.state(),
            restarts: slot.restarts(),
            uptime: if running { slot.started().elapsed() } else { Duration::ZERO },
            last_exit: slot.last_exit(),
            cpu_percent: usage.and_then(|u| u.cpu_percent),
            memory: usage.map(|u| u.rss),
        }
    }

    /// The row `clusterfy ls` shows for it, as the control protocol carries it. A worker
    /// without a process shows how its last one ended as its status (`exit code 0`,
    /// `signal 9`): the status it reported before it ended says nothing any more.
    pub(crate) fn control_row(&self) -> ControlRow {
        let status = match (self.pid, self.last_exit) {
            (Some(_), _) => self.status.to_string(),
            (None, Some(exit)) => exit.to_string(),
            (None, None) => "-".to_owned(),
        };
        ControlRow {
            id: self.id.0,
            name: self.name.clone(),
            group: self.group.clone(),
            pid: self.pid,
            status,
            state: self.state.as_str().to_owned(),
            restarts: self.restarts,
            uptime_ms: self.uptime.as_millis() as u64,
            cpu_percent: self.cpu_percent,
            memory: self.memory,
        }
    }

    /// True while a process runs for this worker.
    pub fn is_running(&self) -> bool {
        self.pid.is_some()
    }
}

/// Statistics about the workers (the original's `getStatistics`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Statistics {
    /// Every worker, in id order.
    pub workers: Vec<WorkerInfo>,
}

impl Statistics {
    pub(crate) fn new(workers: Vec<WorkerInfo>) -> Self {
        Statistics { workers }
    }

    /// Workers with a running process.
    pub fn running(&self) -> usize {
        self.workers.iter().filter(|w| w.is_running()).count()
    }

    /// Restarts of all workers together.
    pub fn total_restarts(&self) -> u64 {
        self.workers.iter().map(|w| u64::from(w.restarts)).sum()
    }

    /// The statistics as a text table with a summary line.
    pub fn table(&self) -> String {
        let rows: Vec<WorkerRow> = self.workers.iter().map(|w| w.control_row().into()).collect();
        format!("{}\nRunning workers: {}", workers_table(&rows), self.running())
    }
}
