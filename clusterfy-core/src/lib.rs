//! The contracts of Clusterfy: what a transport, a storage backend and a command must provide,
//! plus the pieces both sides of the protocol share (values, paths, errors, wire messages, framing
//! and the sans-IO protocol state).
//!
//! Applications depend on the `clusterfy` facade; authors of transports and storage backends
//! depend on this crate only.

pub mod codec;
pub mod command;
pub mod control;
pub mod env;
pub mod error;
pub mod kv;
pub mod os;
pub mod path;
pub mod protocol;
pub mod session;
pub mod storage;
pub mod transport;
pub mod value;

pub use command::{Command, Target, validate_command_name, validate_user_command_name};
pub use error::{Error, ErrorKind, Result, WireError};
pub use path::Path;
pub use protocol::{Origin, WorkerId, WorkerSelector, WorkerStatus};
pub use storage::{BatchOp, Capabilities, NoticeReceiver, StorageBackend, StorageBackendExt, StorageNotice};
pub use transport::{Authentication, Connection, Rendezvous, SpawnInfo, Transport, WorkerEnv};
pub use value::{Value, from_value, to_value};
