//! The storage conformance suite through a worker's remote view of the shared storage: every
//! key-value call goes to a real worker process, which runs it with its `Storage` handle over
//! the Unix-socket transport against the primary's storage.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use clusterfy::storage::{BatchOp, Capabilities, StorageBackend};
use clusterfy::{ErrorKind, Primary, Result, value};
use clusterfy_testkit::storage::{HarnessResult, StorageHarness};
use clusterfy_tests::RunKv;
use clusterfy_tests::remote_kv::{KvOp, KvReply, batch_op};
use common::start_cluster;

/// The worker that runs the operations, and the map below which it keeps the keys.
const WORKER: &str = "kv";
const ROOT: &str = "kv";

struct WorkerRemoteView;

#[async_trait]
impl StorageHarness for WorkerRemoteView {
    type Store = Primary;

    async fn create_store(&self) -> HarnessResult<Primary> {
        let primary = start_cluster(&[WORKER]).await;
        primary.storage().save(ROOT, &value!({})).await?;
        Ok(primary)
    }

    async fn open(&self, primary: &Primary) -> HarnessResult<Arc<dyn StorageBackend>> {
        Ok(Arc::new(ViaWorker { primary: primary.clone() }))
    }

    fn can_reopen(&self) -> bool {
        false
    }
}

/// A backend whose every call is a command to the worker.
struct ViaWorker {
    primary: Primary,
}

impl std::fmt::Debug for ViaWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViaWorker").field("worker", &WORKER).finish()
    }
}

impl ViaWorker {
    async fn run(&self, op: KvOp) -> Result<KvReply> {
        self.primary.run(WORKER, RunKv { root: ROOT.to_owned(), op }).await
    }
}

fn unexpected(reply: KvReply) -> clusterfy::Error {
    clusterfy::Error::new(ErrorKind::Protocol, format!("unexpected key-value reply {reply:?}"))
}

#[async_trait]
impl StorageBackend for ViaWorker {
    fn capabilities(&self) -> Capabilities {
        Capabilities::volatile()
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.run(KvOp::Get(key.to_vec())).await? {
            KvReply::Value(value) => Ok(value),
            other => Err(unexpected(other)),
        }
    }

    async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        match self.run(KvOp::ScanPrefix(prefix.to_vec())).await? {
            KvReply::Pairs(pairs) => Ok(pairs),
            other => Err(unexpected(other)),
        }
    }

    async fn apply_batch(&self, ops: Vec<BatchOp>) -> Result<()> {
        match self.run(batch_op(ops)).await? {
            KvReply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn notices(&self) -> Option<clusterfy::storage::NoticeReceiver> {
        None
    }
}

clusterfy_testkit::storage_conformance!(worker_remote_view_over_uds, WorkerRemoteView);
