//! The storage conformance suite on `SledStorage`: every store is a fresh temporary directory,
//! and reopening opens the same directory again after the suite flushed and dropped the backend.

use std::sync::Arc;

use async_trait::async_trait;
use clusterfy_core::StorageBackend;
use clusterfy_storage_sled::SledStorage;
use clusterfy_testkit::storage::{HarnessResult, StorageHarness};
use tempfile::TempDir;

struct SledHarness;

#[async_trait]
impl StorageHarness for SledHarness {
    type Store = TempDir;

    async fn create_store(&self) -> HarnessResult<TempDir> {
        Ok(tempfile::tempdir()?)
    }

    async fn open(&self, store: &TempDir) -> HarnessResult<Arc<dyn StorageBackend>> {
        // Dropping the last clone of the previous backend closed sled and released its file lock,
        // so a reopen sees the directory free.
        Ok(Arc::new(SledStorage::open(store.path().join("db")).await?))
    }

    fn can_reopen(&self) -> bool {
        true
    }
}

clusterfy_testkit::storage_conformance!(sled, SledHarness);
