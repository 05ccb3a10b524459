//! Every environment variable through which a primary configures the workers it spawns, named
//! once. A process is a worker when [`ENV_WORKER_ID`] is set; the transport, the handshake and
//! the facade read the others. Transports re-export the ones they own.

/// The transport a worker must use (its [`Transport::name`](crate::Transport::name)).
pub const ENV_TRANSPORT: &str = "CLUSTERFY_TRANSPORT";
/// The worker's id; its presence makes a process a worker.
pub const ENV_WORKER_ID: &str = "CLUSTERFY_WORKER_ID";
/// The worker's one-time handshake token, set only for transports that authenticate with one
/// ([`Authentication::Token`](crate::Authentication::Token)).
pub const ENV_TOKEN: &str = "CLUSTERFY_TOKEN";
/// The worker's name (informational; the handshake is authoritative).
pub const ENV_WORKER_NAME: &str = "CLUSTERFY_WORKER_NAME";
/// The largest frame the primary accepts.
pub const ENV_MAX_FRAME_LEN: &str = "CLUSTERFY_MAX_FRAME_LEN";
/// The primary's pid, set when the worker is to set its own parent-death signal (a re-executed
/// primary program without shared listeners).
pub const ENV_PARENT_PID: &str = "CLUSTERFY_PARENT_PID";
/// Set to `1` when the primary asks its workers to mark themselves non-dumpable.
pub const ENV_NON_DUMPABLE: &str = "CLUSTERFY_NON_DUMPABLE";
/// The Unix-socket transport's inherited descriptor number. The number is no secret: only the
/// worker holds that descriptor.
pub const ENV_UDS_FD: &str = "CLUSTERFY_UDS_FD";
/// The prefix of every variable above: a worker's environment is cleaned of them before it
/// spawns programs of its own.
pub const ENV_PREFIX: &str = "CLUSTERFY_";
