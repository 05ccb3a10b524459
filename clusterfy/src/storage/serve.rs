//! The primary's side of one worker's storage requests: reads answered from memory at once,
//! everything else through the writer, and the replicas the worker holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use clusterfy_core::Path;
use clusterfy_core::protocol::{Reply, RequestId, StorageRequest};

use super::SharedStorage;
use super::job::{Completion, Work};
use crate::link::Link;

/// The storage side of one worker's connection.
pub(crate) struct StorageSession {
    storage: Arc<SharedStorage>,
    /// Writes of this worker not yet committed: while there are some, its reads go through the
    /// writer behind them, so it reads its own writes.
    uncommitted: Arc<AtomicUsize>,
    /// Replicas this worker may keep at once ([`Limits::replicas_per_worker`](crate::primary::Limits)).
    max_replicas: usize,
}

impl StorageSession {
    pub(crate) fn new(storage: Arc<SharedStorage>, max_replicas: usize) -> Self {
        StorageSession { storage, uncommitted: Arc::new(AtomicUsize::new(0)), max_replicas }
    }

    /// Serves `request` (not a watch: that belongs to the connection), answering on `link`
    /// itself: no task per request.
    pub(crate) fn serve(&self, link: &Arc<Link>, id: RequestId, mut request: StorageRequest) {
        let path = match Path::parse_owned(std::mem::take(request.path_mut())) {
            Ok(path) => path,
            Err(err) => return link.reply_soon(id, Err(err)),
        };
        let name = request.name();
        match request {
            StorageRequest::Get { .. } if self.uncommitted.load(Ordering::Acquire) == 0 => {
                // Every write this worker made is committed: memory shows them all.
                let read = self.storage.core().read(&path);
                crate::metrics::storage_operation(name, read.is_ok());
                link.reply_soon(id, read.map(Reply::Value));
            }
            StorageRequest::Replicate { replica, .. } => {
                let link_ref = Arc::downgrade(link);
                let work = Work::Replicate { path, replica, link: link_ref, max_per_link: self.max_replicas };
                self.storage.submit(work, Completion::Reply { link: Arc::clone(link), id, pending: None });
            }
            request => {
                // A read here follows this worker's own writes still in the writer.
                let pending = match request {
                    StorageRequest::Get { .. } => None,
                    _ => {
                        self.uncommitted.fetch_add(1, Ordering::AcqRel);
                        Some(Arc::clone(&self.uncommitted))
                    }
                };
                let done = Completion::Reply { link: Arc::clone(link), id, pending };
                self.storage.submit(Work::Request { path, request }, done);
            }
        }
    }

    /// The worker dropped replica `replica`: send it nothing more. Queued behind its start,
    /// which may still wait in the writer's queue (the worker gave up waiting for it).
    pub(crate) fn replica_dropped(&self, link: &Arc<Link>, replica: u64) {
        let work = Work::DropReplica { replica, link: Arc::downgrade(link) };
        self.storage.submit(work, Completion::Nobody);
    }
}
