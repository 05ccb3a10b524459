//! The storage conformance suite on `MemStorage`, the reference backend: a failure here is a bug
//! in the backend or in the suite, and every other backend is held to what passes here.

use std::sync::Arc;

use async_trait::async_trait;
use clusterfy_core::StorageBackend;
use clusterfy_storage_mem::MemStorage;
use clusterfy_testkit::storage::{HarnessResult, StorageHarness};

/// Every store is a new `MemStorage`; memory is volatile, so a store cannot be opened again.
struct MemHarness;

#[async_trait]
impl StorageHarness for MemHarness {
    type Store = ();

    async fn create_store(&self) -> HarnessResult<()> {
        Ok(())
    }

    async fn open(&self, _store: &()) -> HarnessResult<Arc<dyn StorageBackend>> {
        Ok(Arc::new(MemStorage::new()))
    }

    fn can_reopen(&self) -> bool {
        false
    }
}

clusterfy_testkit::storage_conformance!(mem, MemHarness);
