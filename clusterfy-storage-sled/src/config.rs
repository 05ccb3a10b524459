//! Opening a [`SledStorage`], with options.

use std::path::{Path, PathBuf};

use clusterfy_core::Result;

use crate::SledStorage;
use crate::error::{Op, SledError};
use crate::storage::runtime;

/// Opens a [`SledStorage`] with options; [`SledStorage::open`] is the same with every option at its
/// default.
///
/// ```
/// use clusterfy_storage_sled::SledStorage;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> clusterfy_core::Result<()> {
/// # let dir = tempfile::tempdir().map_err(|e| clusterfy_core::Error::io("tempdir", e))?;
/// # let path = dir.path().join("storage");
/// let storage = SledStorage::builder(&path).cache_capacity(64 * 1024 * 1024).open().await?;
/// # storage.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SledStorageBuilder {
    path: PathBuf,
    cache_capacity: Option<u64>,
}

impl SledStorage {
    /// Opens (creating it if missing) the sled database in the directory `path`, with default
    /// options.
    ///
    /// Fails at once, without waiting, if another process (or another `SledStorage` in this one)
    /// has the directory open: each primary needs its own directory.
    pub async fn open(path: impl AsRef<Path>) -> Result<SledStorage> {
        SledStorage::builder(path).open().await
    }

    /// A builder for the database in the directory `path`.
    pub fn builder(path: impl AsRef<Path>) -> SledStorageBuilder {
        SledStorageBuilder { path: path.as_ref().to_path_buf(), cache_capacity: None }
    }
}

impl SledStorageBuilder {
    /// The most memory, in bytes, sled's page cache may use (sled's default is 1 GiB).
    #[must_use]
    pub fn cache_capacity(mut self, bytes: u64) -> Self {
        self.cache_capacity = Some(bytes);
        self
    }

    /// Opens (creating it if missing) the database, on tokio's blocking thread pool: recovering a
    /// large database after a crash can take a while.
    ///
    /// Fails at once if another process, probably another primary, holds the directory
    /// ([`ErrorKind::Storage`](clusterfy_core::ErrorKind::Storage), the message says so).
    pub async fn open(self) -> Result<SledStorage> {
        let SledStorageBuilder { path, cache_capacity } = self;
        if path.as_os_str().is_empty() {
            return Err(SledError::EmptyPath.into());
        }
        let runtime = runtime(Op::Open, &path)?;
        let mut config = sled::Config::new().path(&path);
        if let Some(bytes) = cache_capacity {
            config = config.cache_capacity(bytes);
        }
        let db = match runtime.spawn_blocking(move || config.open()).await {
            Ok(Ok(db)) => db,
            Ok(Err(source)) => return Err(SledError::sled(Op::Open, path, source).into()),
            Err(source) => return Err(SledError::Task { op: Op::Open, path, source }.into()),
        };
        tracing::debug!(path = %path.display(), recovered = db.was_recovered(), "opened sled storage");
        Ok(SledStorage::from_db(db, path))
    }
}
