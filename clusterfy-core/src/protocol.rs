//! Wire messages between the primary and a worker. The byte layout is in `docs/protocol.md`.
//!
//! postcard is not self-describing, so every enum here is append-only: new variants go at the
//! end, existing ones never change, and [`PROTOCOL_VERSION`] is bumped for anything else.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::value::Value;

/// The protocol version both sides announce in their first frame.
pub const PROTOCOL_VERSION: u32 = 1;

/// A worker's id, unique for the life of a primary and kept across revivals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkerId(pub u64);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Id of a request, chosen by its sender, unique among that sender's requests in flight on one
/// connection. Each side numbers its own requests.
pub type RequestId = u64;

/// A worker's lifecycle status: `Initializing -> Loaded -> Idle <-> Processing -> Stopping`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WorkerStatus {
    /// Spawned, not yet connected.
    Initializing,
    /// Connected and authenticated; the worker program is starting.
    Loaded,
    /// Ready and not working on anything.
    Idle,
    /// Working; a shutdown request turns it Stopping instead of exiting it.
    Processing,
    /// Asked to shut down; expected to exit soon.
    Stopping,
}

impl WorkerStatus {
    /// Whether `self -> next` is a legal transition. Staying in the same status is legal.
    pub fn can_become(self, next: WorkerStatus) -> bool {
        use WorkerStatus::*;
        self == next
            || matches!(
                (self, next),
                (Initializing, Loaded)
                    | (Loaded, Idle)
                    | (Idle, Processing)
                    | (Processing, Idle)
                    | (_, Stopping)
            )
    }

    /// Upper-case name as the original library prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Initializing => "INITIALIZING",
            WorkerStatus::Loaded => "LOADED",
            WorkerStatus::Idle => "IDLE",
            WorkerStatus::Processing => "PROCESSING",
            WorkerStatus::Stopping => "STOPPING",
        }
    }
}

impl fmt::Display for WorkerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every frame's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// First frame from the worker.
    Hello(Hello),
    /// First frame from the primary, after it accepted the worker's `Hello`.
    Welcome(Welcome),
    /// A request that expects exactly one [`Message::Reply`] with the same id.
    Request {
        /// Sender-chosen id.
        id: RequestId,
        /// What is asked.
        body: Request,
    },
    /// The answer to the peer's request `id`.
    Reply {
        /// The request's id.
        id: RequestId,
        /// The answer or the error.
        result: Result<Reply, WireError>,
    },
    /// A one-way notice; never answered.
    Notice(Notice),
}

/// The worker's introduction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The worker's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The id the primary gave it in its environment.
    pub worker_id: WorkerId,
    /// The one-time token the primary gave it in its environment.
    pub token: String,
}

/// The primary's answer to a valid [`Hello`]: the worker's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The primary's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The worker's id.
    pub worker_id: WorkerId,
    /// The worker's name.
    pub name: String,
    /// How often this worker slot was revived before this process.
    pub restarts: u32,
}

/// Addresses one worker.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WorkerSelector {
    /// By id.
    Id(WorkerId),
    /// By its unique name.
    Name(String),
}

impl fmt::Display for WorkerSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerSelector::Id(id) => write!(f, "worker #{id}"),
            WorkerSelector::Name(name) => write!(f, "worker {name:?}"),
        }
    }
}

impl From<WorkerId> for WorkerSelector {
    fn from(id: WorkerId) -> Self {
        WorkerSelector::Id(id)
    }
}

impl From<&str> for WorkerSelector {
    fn from(name: &str) -> Self {
        WorkerSelector::Name(name.to_owned())
    }
}

impl From<String> for WorkerSelector {
    fn from(name: String) -> Self {
        WorkerSelector::Name(name)
    }
}

impl From<&String> for WorkerSelector {
    fn from(name: &String) -> Self {
        WorkerSelector::Name(name.clone())
    }
}

/// Where a command goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Destination {
    /// Run by the receiver of the frame itself.
    Here,
    /// Run by the primary (sent by a worker).
    Primary,
    /// Run by one worker (a worker's request is routed by the primary).
    Worker(WorkerSelector),
    /// Run by every worker; the reply gathers every answer.
    AllWorkers,
}

/// Where a command came from, as told to its handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Origin {
    /// The primary.
    Primary,
    /// A worker.
    Worker {
        /// Its id.
        id: WorkerId,
        /// Its name.
        name: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Primary => f.write_str("primary"),
            Origin::Worker { id, name } => write!(f, "worker {name:?} (#{id})"),
        }
    }
}

/// A request body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// A shared-storage operation, worker -> primary.
    Storage(StorageRequest),
    /// A command.
    Command(CommandRequest),
    /// Built-in `cy_shutdown`, primary -> worker: exit if idle, else turn Stopping.
    Shutdown,
}

/// A shared-storage operation on a dotted path (sent as text, validated by the primary).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StorageRequest {
    /// Read the value or subtree at `path`.
    Get {
        /// Dotted path.
        path: String,
    },
    /// Replace the value or subtree at `path`.
    Save {
        /// Dotted path.
        path: String,
        /// The new value.
        value: Value,
        /// Create missing parent maps instead of failing with `NotFound`.
        create_parents: bool,
    },
    /// Remove the value or subtree at `path`.
    Delete {
        /// Dotted path.
        path: String,
    },
    /// Replace the value at `path` with `new` (`None` deletes) only if it equals `expected`
    /// (`None` means absent).
    CompareAndSwap {
        /// Dotted path.
        path: String,
        /// The value the caller last saw.
        expected: Option<Value>,
        /// The value to write.
        new: Option<Value>,
    },
    /// Worker -> primary: send [`Notice::StorageChanged`] for every later write on the branch
    /// of `path` (at it, above it or below it), for the rest of the connection.
    Watch {
        /// Dotted path.
        path: String,
    },
    /// [`StorageRequest::Save`] of a value that is not a map, sent as the node it is stored as
    /// (`0x01`, then the value's postcard encoding), so the primary checks it and stores it
    /// without building the value. Answered with [`Reply::Done`].
    SaveNode {
        /// Dotted path.
        path: String,
        /// The encoded leaf node.
        #[serde(with = "crate::value::bytes_repr")]
        node: Vec<u8>,
        /// Create missing parent maps instead of failing with `NotFound`.
        create_parents: bool,
    },
    /// Add `by` to the integer at `path` (nothing there counts as 0), checked for overflow.
    /// Answered with [`Reply::Value`] holding the new integer.
    Increment {
        /// Dotted path.
        path: String,
        /// The amount, negative to subtract.
        by: i64,
    },
    /// Add `by` to the number at `path` (an integer becomes a float; nothing there counts as
    /// 0.0). Answered with [`Reply::Value`] holding the new float.
    IncrementFloat {
        /// Dotted path.
        path: String,
        /// The amount.
        by: f64,
    },
    /// Append `value` to the list at `path` (nothing there: a new list). Answered with
    /// [`Reply::Value`] holding the list's new length.
    Append {
        /// Dotted path.
        path: String,
        /// The element.
        value: Value,
    },
    /// Remove every element equal to `value` from the list at `path`. Answered with
    /// [`Reply::Value`] holding how many were removed.
    RemoveValue {
        /// Dotted path.
        path: String,
        /// The element.
        value: Value,
    },
    /// Save `value` at `path` only if nothing is there. Answered with [`Reply::Value`] holding
    /// whether it was saved.
    InsertIfAbsent {
        /// Dotted path.
        path: String,
        /// The value.
        value: Value,
    },
    /// Read the value or subtree at `path` and delete it, in one step. Answered with
    /// [`Reply::Value`].
    Take {
        /// Dotted path.
        path: String,
    },
    /// Apply the operation registered on the primary under `operation` to the value at `path`.
    /// Answered with [`Reply::Command`] holding the operation's encoded reply.
    Apply {
        /// Dotted path.
        path: String,
        /// The operation's registered name.
        operation: String,
        /// The postcard encoding of the operation.
        #[serde(with = "crate::value::bytes_repr")]
        payload: Vec<u8>,
    },
    /// Worker -> primary: keep replica `replica` (an id the worker chose, unique on its
    /// connection) of the branch at `path` current for the rest of the connection. The primary
    /// sends the branch as [`Notice::ReplicaReset`], answers [`Reply::Done`], and then sends
    /// [`Notice::ReplicaChanged`] for every committed change of the branch, in commit order.
    Replicate {
        /// Dotted path.
        path: String,
        /// The worker's id for the replica.
        replica: u64,
    },
}

impl StorageRequest {
    /// The operation's name in snake case, for metrics, logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            StorageRequest::Get { .. } => "get",
            StorageRequest::Save { .. } | StorageRequest::SaveNode { .. } => "save",
            StorageRequest::Delete { .. } => "delete",
            StorageRequest::CompareAndSwap { .. } => "compare_and_swap",
            StorageRequest::Watch { .. } => "watch",
            StorageRequest::Increment { .. } => "increment",
            StorageRequest::IncrementFloat { .. } => "increment_float",
            StorageRequest::Append { .. } => "append",
            StorageRequest::RemoveValue { .. } => "remove_value",
            StorageRequest::InsertIfAbsent { .. } => "insert_if_absent",
            StorageRequest::Take { .. } => "take",
            StorageRequest::Apply { .. } => "apply",
            StorageRequest::Replicate { .. } => "replicate",
        }
    }

    /// The dotted path the request is about (every variant has one).
    pub fn path_mut(&mut self) -> &mut String {
        match self {
            StorageRequest::Get { path }
            | StorageRequest::Save { path, .. }
            | StorageRequest::Delete { path }
            | StorageRequest::CompareAndSwap { path, .. }
            | StorageRequest::Watch { path }
            | StorageRequest::SaveNode { path, .. }
            | StorageRequest::Increment { path, .. }
            | StorageRequest::IncrementFloat { path, .. }
            | StorageRequest::Append { path, .. }
            | StorageRequest::RemoveValue { path, .. }
            | StorageRequest::InsertIfAbsent { path, .. }
            | StorageRequest::Take { path }
            | StorageRequest::Apply { path, .. }
            | StorageRequest::Replicate { path, .. } => path,
        }
    }
}

/// One change of a replicated branch, in the storage's byte layout (`docs/protocol.md`,
/// section 15): what a primary's write did to the keys of the branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeChange {
    /// `key` now holds the encoded node `node`.
    Put {
        /// The key.
        #[serde(with = "crate::value::bytes_repr")]
        key: Vec<u8>,
        /// The encoded node.
        #[serde(with = "crate::value::bytes_repr")]
        node: Vec<u8>,
    },
    /// `key` holds nothing any more.
    Delete {
        /// The key.
        #[serde(with = "crate::value::bytes_repr")]
        key: Vec<u8>,
    },
    /// Every key starting with `prefix` holds nothing any more.
    DeletePrefix {
        /// The prefix.
        #[serde(with = "crate::value::bytes_repr")]
        prefix: Vec<u8>,
    },
}

/// A replicated branch as it stands at one commit: every node of it, in key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSnapshot {
    /// The replica's id on this connection (chosen by the worker).
    pub replica: u64,
    /// The storage's commit version the snapshot shows.
    pub version: u64,
    /// Keys of the branch and their encoded nodes: all of them, or one part (see `more`).
    pub nodes: Vec<NodeChange>,
    /// More parts of this snapshot follow (a branch larger than a frame travels in parts); the
    /// replica shows the snapshot once its last part (`more: false`) arrived.
    pub more: bool,
}

/// A command on the wire; `payload` is the postcard encoding of the typed command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRequest {
    /// The command's `NAME`.
    pub name: String,
    /// Where it runs.
    pub destination: Destination,
    /// Who sent it; filled in by the primary when it routes a worker's command.
    pub origin: Origin,
    /// The encoded arguments.
    #[serde(with = "crate::value::bytes_repr")]
    pub payload: Vec<u8>,
}

/// A successful reply body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// Done, nothing to return.
    Done,
    /// The value read (`None`: nothing at that path).
    Value(Option<Value>),
    /// Outcome of a compare-and-swap: `Err(current)` when it lost.
    Swapped(Result<(), Option<Value>>),
    /// The encoded reply of one command.
    Command(#[serde(with = "crate::value::bytes_repr")] Vec<u8>),
    /// Every worker's answer to a broadcast, in worker-id order.
    Broadcast(Vec<BroadcastEntry>),
    /// The worker's answer to `cy_shutdown`.
    Shutdown(ShutdownAck),
}

/// One worker's answer in a broadcast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BroadcastEntry {
    /// The worker.
    pub worker_id: WorkerId,
    /// Its name.
    pub name: String,
    /// Its encoded reply or its error.
    pub result: Result<Vec<u8>, WireError>,
}

/// How a worker takes a shutdown request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShutdownAck {
    /// It was idle: it runs its shutdown hooks and exits now.
    Exiting,
    /// It is busy: it turned Stopping and is expected to exit by itself.
    Stopping,
}

/// One-way notices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notice {
    /// Worker -> primary: the worker's status changed.
    Status(WorkerStatus),
    /// Worker -> primary: the worker finished connecting and is ready for work.
    Ready,
    /// Either way: a message for the peer's log and event stream (protocol errors before closing).
    Error(WireError),
    /// Primary -> worker: the value at `path` was written; sent to workers watching its branch.
    StorageChanged {
        /// Dotted path of the write.
        path: String,
    },
    /// Primary -> worker: one commit's changes to a replicated branch, in order; sent before the
    /// replies to the writes of that commit.
    ReplicaChanged {
        /// The replica.
        replica: u64,
        /// The commit version.
        version: u64,
        /// What the commit did to the branch's keys: all of it, or one part (see `more`).
        changes: Vec<NodeChange>,
        /// More parts of this commit's changes follow; the replica shows the commit once its
        /// last part (`more: false`) arrived.
        more: bool,
    },
    /// Primary -> worker: the worker fell behind reading its connection, so changes of this
    /// replica were dropped; a [`Notice::ReplicaReset`] follows once the worker catches up.
    ReplicaLagged {
        /// The replica.
        replica: u64,
    },
    /// Primary -> worker: the branch as it stands now, replacing the replica's content: a new
    /// replica's first state, or a lagging one's catching up (after [`Notice::ReplicaLagged`]).
    ReplicaReset(ReplicaSnapshot),
    /// Worker -> primary: replica `replica` is no longer held; send it nothing more.
    ReplicaDropped {
        /// The replica.
        replica: u64,
    },
    /// Primary -> worker: replica `replica` can no longer be kept current (one node of its
    /// branch is larger than a frame); it gets nothing more.
    ReplicaFailed {
        /// The replica.
        replica: u64,
        /// Why.
        error: WireError,
    },
}
