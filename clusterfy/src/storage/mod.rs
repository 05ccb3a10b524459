//! Shared storage: the tree semantics over a [`StorageBackend`] (in [`SharedStorage`]), the typed
//! handle both the primary and workers use ([`Storage`]), replicas of branches in workers
//! ([`Replica`]), and storage operations of the program's own ([`Operation`]).
//!
//! The parts, by job: `layout` (the byte layout of nodes and keys), `state` (the committed tree
//! in memory and the draft of a round), `ops` (every operation, defined once), `custom` (the
//! program's own operations), `job` (what the writer's queue holds), `writer` (the task that
//! runs them and commits each round),
//! `core` (what the writer and the readers share), `shared` (the value-level API), `handle`
//! (the typed API), `serve` (a worker's requests on the primary), `replicas` and `replica` (the
//! primary's and the worker's side of replicas).
//!
//! One pair of verbs throughout, the original's: `retrieve` reads and `save` writes, on
//! [`Storage`], [`SharedStorage`], [`Replica`] and the control client (`get` and `set` find them
//! in the docs' search; the `clusterfy storage get|set` commands keep the shell's words).
//!
//! The backends live here too (each behind its feature), with what they report
//! ([`StorageNotice`], also published as [`Event::Storage`](crate::events::Event::Storage)).
//!
//! # Keeping a handle to the backend
//!
//! [`PrimaryBuilder::storage`](crate::PrimaryBuilder::storage) takes any [`StorageBackend`], and
//! an `Arc` of a backend is one. Hand the primary a clone of an `Arc` to keep using the backend's
//! own methods afterwards, such as `RedisMirror::wait_mirrored` before a clean exit or
//! `RedisMirror::status` for a health check:
//!
//! ```no_run
//! # #[cfg(feature = "storage-mem")]
//! # async fn example() -> clusterfy::Result<()> {
//! use std::sync::Arc;
//!
//! use clusterfy::Primary;
//! use clusterfy::storage::{MemStorage, StorageBackend};
//!
//! // With feature `storage-redis`, the same for `Arc::new(RedisMirror::connect(url).await?)`.
//! let backend = Arc::new(MemStorage::new());
//! let primary = Primary::builder().storage(Arc::clone(&backend)).build().await?;
//! primary.storage().save("greeting", "hello").await?;
//! assert!(!backend.scan_prefix(b"").await?.is_empty(), "the backend is still ours to use");
//! # Ok(())
//! # }
//! ```

mod core;
mod custom;
mod handle;
mod job;
mod layout;
mod ops;
mod replica;
mod replicas;
mod serve;
mod shared;
mod state;
mod writer;

use clusterfy_core::Path;

pub use custom::Operation;
pub(crate) use custom::Operations;
pub(crate) use handle::RemoteStorage;
pub use handle::Storage;
pub(crate) use replica::ReplicaRegistry;
pub use replica::{Replica, ReplicaEvent};
pub(crate) use replicas::LAGGING_ABOVE;
pub(crate) use serve::StorageSession;
pub use shared::SharedStorage;

pub use clusterfy_core::{
    BatchOp, Capabilities, NoticeReceiver, StorageBackend, StorageBackendExt, StorageNotice,
};
#[cfg(feature = "storage-mem")]
pub use clusterfy_storage_mem::MemStorage;
#[cfg(feature = "storage-redis")]
pub use clusterfy_storage_redis::{
    AckMode, DEFAULT_ACK_TIMEOUT, MirrorStatus, RedisMirror, RedisMirrorBuilder,
};
#[cfg(feature = "storage-sled")]
pub use clusterfy_storage_sled::{SledStorage, SledStorageBuilder};

/// Whether a write at `written` can change what is at `watched`: one lies on the other's branch.
pub(crate) fn on_one_branch(written: &Path, watched: &Path) -> bool {
    written.starts_with(watched) || watched.starts_with(written)
}

#[cfg(test)]
mod tests;
