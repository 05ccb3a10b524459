//! The control protocol: what an operator's tool (the `clusterfy` command) and a primary's
//! control socket say to each other. Framed like the worker protocol (`u32` little-endian
//! length, then postcard), one request per connection, answered by one reply, or by a stream of
//! replies for [`ControlRequest::Events`] and [`ControlRequest::StorageWatch`] until either side
//! closes. Every enum here is append-only, as in [`crate::protocol`]; see `docs/protocol.md`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::{FrameDecoder, encode_frame};
use crate::error::{Error, Result, WireError};
use crate::value::Value;

/// Version of the control protocol; [`ControlReply::Info`] carries the primary's.
pub const CONTROL_PROTOCOL_VERSION: u32 = 2;

/// Largest control frame a client accepts (a reply: a worker list, a storage subtree).
pub const MAX_CONTROL_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Largest request frame a primary accepts: room for a [`ControlRequest::StorageSet`] of a
/// sizeable value. Larger values go through the library (`Storage::save`), not the shell.
pub const MAX_CONTROL_REQUEST_LEN: usize = 1024 * 1024;

/// Request frames up to this size are always read; a larger one (a storage value) must first
/// get room in the primary's shared budget for large control requests, so that many clients
/// cannot make it buffer much.
pub const SMALL_CONTROL_REQUEST_LEN: usize = 64 * 1024;

/// What the operator asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Who is this primary: [`ControlReply::Info`].
    Info,
    /// Every worker: [`ControlReply::Workers`].
    Workers,
    /// Replace the worker named so with a new process, new one first (a reload of one).
    Restart {
        /// The worker's name.
        worker: String,
    },
    /// Stop the worker named so, by the stop ladder, and do not revive it.
    Stop {
        /// The worker's name.
        worker: String,
    },
    /// Roll a reload of every worker.
    Reload,
    /// Stream the cluster's events: [`ControlReply::Event`] until the client closes.
    Events,
    /// Read the value or subtree at `path`: [`ControlReply::Value`].
    StorageGet {
        /// Dotted path.
        path: String,
    },
    /// Save `value` at `path` (its parent must exist).
    StorageSet {
        /// Dotted path.
        path: String,
        /// The value.
        value: Value,
    },
    /// Stream the writes on the branch of `path`: [`ControlReply::Changed`] until the client
    /// closes.
    StorageWatch {
        /// Dotted path.
        path: String,
    },
    /// Save `value` at `path`, creating missing parent maps if `create_parents` (what
    /// [`ControlRequest::StorageSet`] does when it is false).
    StorageSave {
        /// Dotted path.
        path: String,
        /// The value.
        value: Value,
        /// Create missing parent maps instead of failing with `NotFound`.
        create_parents: bool,
    },
    /// Grow or shrink a worker group to `workers` members (`Primary::scale`).
    Scale {
        /// The group's name.
        group: String,
        /// How many members it should have (at least 1).
        workers: u32,
    },
    /// Roll a reload of one group's members (`Primary::reload_group`).
    ReloadGroup {
        /// The group's name.
        group: String,
    },
    /// The captured output of the worker or group `which` (every worker when `None`): a
    /// [`ControlReply::LogsSkipped`] for older lines not sent, then the last `lines` lines as
    /// [`ControlReply::Log`], then [`ControlReply::Done`], or with `follow` every new line until
    /// the client closes.
    Logs {
        /// A worker's or a group's name.
        which: Option<String>,
        /// How many of the last lines of each worker.
        lines: u32,
        /// Go on with every new line.
        follow: bool,
    },
}

/// What the primary answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlReply {
    /// The primary.
    Info(AppInfo),
    /// Every worker, in id order.
    Workers(Vec<WorkerRow>),
    /// Done.
    Done,
    /// The value read (`None`: nothing there).
    Value(Option<Value>),
    /// One event of the stream.
    Event(EventRow),
    /// One write on a watched branch: the path written.
    Changed {
        /// Dotted path of the write.
        path: String,
    },
    /// The request failed.
    Error(WireError),
    /// One line a worker wrote.
    Log {
        /// The worker's name.
        worker: String,
        /// The line (lossy UTF-8, a cut one marked).
        text: String,
    },
    /// Lines that were not sent: older than those asked for, dropped from a full ring, or
    /// missed by a follower that fell behind.
    LogsSkipped {
        /// How many.
        lines: u64,
    },
}

/// Who a primary is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppInfo {
    /// The name it was given (`PrimaryBuilder::control`).
    pub app: String,
    /// Its process id.
    pub pid: u32,
    /// Its [`CONTROL_PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// How many workers it has.
    pub workers: u32,
}

/// One worker, as `clusterfy ls` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Milliseconds since its current process started.
    pub uptime_ms: u64,
    /// CPU use at the last sample, as a share of one core in percent.
    pub cpu_percent: Option<f64>,
    /// Resident memory at the last sample, in bytes.
    pub memory: Option<u64>,
}

/// One event, as `clusterfy events` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRow {
    /// Its kind, in snake case (`exit`, `revived`, `replaced`, ...).
    pub kind: String,
    /// The worker it is about, if any.
    pub worker: Option<String>,
    /// A one-line description.
    pub text: String,
}

/// Reads the next control frame from `reader` (a client's decoder takes frames of up to
/// [`MAX_CONTROL_FRAME_LEN`]); `None` when the peer closed the stream between frames.
pub async fn read_frame<T: DeserializeOwned>(
    reader: &mut (impl AsyncRead + Unpin),
    decoder: &mut FrameDecoder,
) -> Result<Option<T>> {
    loop {
        if let Some(message) = decoder.decode::<T>()? {
            return Ok(Some(message));
        }
        let n = reader
            .read_buf(decoder.buffer_mut())
            .await
            .map_err(|e| Error::io("reading a control frame", e))?;
        if n == 0 {
            return Ok(None);
        }
    }
}

/// Writes one control frame of at most `max_len` bytes to `writer` and flushes it.
pub async fn write_frame<T: Serialize>(
    writer: &mut (impl AsyncWrite + Unpin),
    message: &T,
    max_len: usize,
) -> Result<()> {
    let mut bytes = Vec::new();
    encode_frame(message, max_len, &mut bytes)?;
    writer.write_all(&bytes).await.map_err(|e| Error::io("writing a control frame", e))?;
    writer.flush().await.map_err(|e| Error::io("writing a control frame", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn index_of<T: Serialize>(value: &T) -> u8 {
        postcard::to_allocvec(value).expect("encodes")[0]
    }

    /// docs/protocol.md, section 14, lists these indices: the wire must keep them.
    #[test]
    fn variant_indices_are_the_ones_documented() {
        let path = || "a.b".to_owned();
        let requests = [
            ControlRequest::Info,
            ControlRequest::Workers,
            ControlRequest::Restart { worker: "w".into() },
            ControlRequest::Stop { worker: "w".into() },
            ControlRequest::Reload,
            ControlRequest::Events,
            ControlRequest::StorageGet { path: path() },
            ControlRequest::StorageSet { path: path(), value: Value::Null },
            ControlRequest::StorageWatch { path: path() },
            ControlRequest::StorageSave { path: path(), value: Value::Null, create_parents: true },
        ];
        for (at, request) in requests.iter().enumerate() {
            assert_eq!(index_of(request) as usize, at, "{request:?}");
        }
        let info =
            AppInfo { app: "x".into(), pid: 1, protocol_version: CONTROL_PROTOCOL_VERSION, workers: 0 };
        let row = EventRow { kind: "k".into(), worker: None, text: "t".into() };
        let error = WireError { kind: ErrorKind::Unauthorized, message: "no".into(), context: Vec::new() };
        let replies = [
            ControlReply::Info(info),
            ControlReply::Workers(Vec::new()),
            ControlReply::Done,
            ControlReply::Value(None),
            ControlReply::Event(row),
            ControlReply::Changed { path: path() },
            ControlReply::Error(error),
        ];
        for (at, reply) in replies.iter().enumerate() {
            assert_eq!(index_of(reply) as usize, at, "{reply:?}");
        }
    }
}
