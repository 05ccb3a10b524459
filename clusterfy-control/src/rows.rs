//! What the primary answers, as this crate hands it out: its own types, so that the control
//! protocol's messages (in `clusterfy-core`) can change without breaking a program, and these
//! can grow fields (they are `#[non_exhaustive]`) without a protocol change. Serialize gives
//! the JSON `clusterfy ... --json` prints.

use std::time::Duration;

use clusterfy_core::control as wire;
use serde::{Serialize, Serializer};

/// Who a primary is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AppInfo {
    /// The name it was given (`PrimaryBuilder::control`).
    pub app: String,
    /// Its process id.
    pub pid: u32,
    /// The control protocol it speaks ([`CONTROL_PROTOCOL_VERSION`](crate::CONTROL_PROTOCOL_VERSION)
    /// for this crate's).
    pub protocol_version: u32,
    /// How many workers it has.
    pub workers: u32,
}

impl From<wire::AppInfo> for AppInfo {
    fn from(info: wire::AppInfo) -> Self {
        let wire::AppInfo { app, pid, protocol_version, workers } = info;
        AppInfo { app, pid, protocol_version, workers }
    }
}

/// One worker, as `clusterfy ls` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct WorkerRow {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// The group it belongs to (`Primary::fork_group`), if any.
    pub group: Option<String>,
    /// Its current process, if one runs.
    pub pid: Option<u32>,
    /// The status it reported (`IDLE`, `PROCESSING`, ...) while a process runs; once none does,
    /// how the last one ended (`exit code 0`, `signal 9`), or `-` if none ever ran.
    pub status: String,
    /// Where its supervision stands (`ready`, `restarting`, ...).
    pub state: String,
    /// How often it was revived.
    pub restarts: u32,
    /// How long its current process has run (zero without one).
    #[serde(rename = "uptime_ms", serialize_with = "as_millis")]
    pub uptime: Duration,
    /// CPU use at the last sample, as a share of one core in percent.
    pub cpu_percent: Option<f64>,
    /// Resident memory at the last sample, in bytes.
    pub memory: Option<u64>,
}

impl From<wire::WorkerRow> for WorkerRow {
    fn from(row: wire::WorkerRow) -> Self {
        let wire::WorkerRow { id, name, group, pid, status, state, restarts, uptime_ms, cpu_percent, memory } =
            row;
        let uptime = Duration::from_millis(uptime_ms);
        WorkerRow { id, name, group, pid, status, state, restarts, uptime, cpu_percent, memory }
    }
}

fn as_millis<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// One event, as `clusterfy events` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct EventRow {
    /// Its kind, in snake case (`exit`, `revived`, `replaced`, ...).
    pub kind: String,
    /// The worker it is about, if any.
    pub worker: Option<String>,
    /// A one-line description.
    pub text: String,
}

impl From<wire::EventRow> for EventRow {
    fn from(row: wire::EventRow) -> Self {
        let wire::EventRow { kind, worker, text } = row;
        EventRow { kind, worker, text }
    }
}

/// One entry of a logs stream ([`ControlClient::logs`](crate::ControlClient::logs)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogEntry {
    /// A line worker `worker` wrote.
    Line {
        /// The worker's name.
        worker: String,
        /// The line.
        text: String,
    },
    /// This many lines were not sent (older than asked for, dropped from a full ring, or
    /// missed by a follower that fell behind).
    Skipped(u64),
}
