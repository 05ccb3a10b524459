//! Storage changes to the workers that watch them, and the backend's notices to the event stream.

use std::sync::{Arc, Weak};

use clusterfy_core::protocol::Notice;
use clusterfy_core::{NoticeReceiver, Path};
use tokio::sync::broadcast::error::RecvError;

use super::PrimaryInner;
use crate::events::Event;
use crate::link::Link;
use crate::storage::on_one_branch;

/// Tells each worker about the writes on the branches it watches, in write order.
pub(super) fn dispatch_changes(inner: &Arc<PrimaryInner>) {
    let mut changes = inner.storage.changes();
    // Weak: this task must not keep the primary alive.
    let primary: Weak<PrimaryInner> = Arc::downgrade(inner);
    tokio::spawn(async move {
        loop {
            let written = match changes.recv().await {
                Ok(path) => path,
                // Too far behind to say what changed: everything may have.
                Err(RecvError::Lagged(_)) => Path::root(),
                Err(RecvError::Closed) => return,
            };
            let Some(inner) = primary.upgrade() else { return };
            let watchers: Vec<Arc<Link>> = inner
                .directory()
                .slots()
                .filter(|slot| slot.watches().iter().any(|watched| on_one_branch(&written, watched)))
                .filter_map(|slot| slot.link().cloned())
                .collect();
            drop(inner);
            for link in watchers {
                // A worker that went away meanwhile simply misses the notice.
                let _ = link.notify(Notice::StorageChanged { path: written.as_str().to_owned() }).await;
            }
        }
    });
}

/// Publishes what the storage backend reports (outages, overflows, resyncs) as [`Event::Storage`].
pub(super) fn forward_backend_notices(inner: &Arc<PrimaryInner>, notices: Option<NoticeReceiver>) {
    let Some(mut notices) = notices else { return };
    let primary: Weak<PrimaryInner> = Arc::downgrade(inner);
    tokio::spawn(async move {
        loop {
            let notice = match notices.recv().await {
                Ok(notice) => notice,
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "storage notices were dropped before they could be published");
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let Some(inner) = primary.upgrade() else { return };
            inner.emit(Event::Storage { notice });
        }
    });
}
