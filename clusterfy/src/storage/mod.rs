//! Shared storage: the tree semantics over a [`StorageBackend`]
//! (in [`SharedStorage`]) and the typed handle both the primary and workers use.

mod tree;

use std::sync::Arc;
use std::time::Duration;

use clusterfy_core::protocol::{Reply, Request, StorageRequest};
use clusterfy_core::{Error, ErrorKind, Path, Result, Value, from_value, to_value};
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

pub use tree::SharedStorage;

pub use clusterfy_core::{BatchOp, Capabilities, CasConflict, StorageBackend};
#[cfg(feature = "storage-mem")]
pub use clusterfy_storage_mem::MemStorage;
#[cfg(feature = "storage-redis")]
pub use clusterfy_storage_redis::{AckMode, MirrorStatus, RedisMirror, RedisMirrorBuilder};
#[cfg(feature = "storage-sled")]
pub use clusterfy_storage_sled::{SledStorage, SledStorageBuilder};

use crate::events::{EventStream, subscribe};
use crate::link::Link;

/// Whether a write at `written` can change what is at `watched`: one lies on the other's branch.
pub(crate) fn on_one_branch(written: &Path, watched: &Path) -> bool {
    written.starts_with(watched) || watched.starts_with(written)
}

/// Attempts of [`Storage::update`] before it reports contention instead of spinning on.
const UPDATE_ATTEMPTS: usize = 10_000;

#[derive(Clone)]
enum Access {
    /// On the primary: the storage itself.
    Local(Arc<SharedStorage>),
    /// On a worker: requests to the primary.
    Remote { link: Arc<Link>, deadline: Duration, changes: broadcast::Sender<Path> },
}

/// Typed access to the shared storage by dotted path, the same on the primary and on workers.
///
/// Values go in and out as any `serde` type; a map path reads or writes the whole subtree.
#[derive(Clone)]
pub struct Storage {
    access: Access,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let access = match &self.access {
            Access::Local(_) => "local",
            Access::Remote { .. } => "remote",
        };
        f.debug_struct("Storage").field("access", &access).finish()
    }
}

fn unexpected(reply: Reply) -> Error {
    Error::new(ErrorKind::Protocol, format!("unexpected reply to a storage request: {reply:?}"))
}

impl Storage {
    pub(crate) fn local(storage: Arc<SharedStorage>) -> Self {
        Storage { access: Access::Local(storage) }
    }

    pub(crate) fn remote(link: Arc<Link>, deadline: Duration, changes: broadcast::Sender<Path>) -> Self {
        Storage { access: Access::Remote { link, deadline, changes } }
    }

    async fn exec(&self, request: StorageRequest) -> Result<Reply> {
        match &self.access {
            Access::Local(storage) => storage.handle(request).await,
            Access::Remote { link, deadline, .. } => link.request(Request::Storage(request), *deadline).await,
        }
    }

    /// Saves `value` at `path` (the original's `saveToStorage`). The parent map must exist:
    /// otherwise the error is [`ErrorKind::NotFound`] naming the missing prefix.
    pub async fn save<T: Serialize + ?Sized>(&self, path: &str, value: &T) -> Result<()> {
        self.save_value(path, to_value(value)?, false).await
    }

    /// Saves `value` at `path`, creating missing parent maps.
    pub async fn save_with_parents<T: Serialize + ?Sized>(&self, path: &str, value: &T) -> Result<()> {
        self.save_value(path, to_value(value)?, true).await
    }

    async fn save_value(&self, path: &str, value: Value, create_parents: bool) -> Result<()> {
        let path = Path::parse(path)?;
        let request = StorageRequest::Save { path: path.as_str().to_owned(), value, create_parents };
        match self.exec(request).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Reads the value at `path` as `T` (the original's `retrieveFromStorage`); `None` if nothing
    /// is there.
    pub async fn retrieve<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        match self.retrieve_value(path).await? {
            None => Ok(None),
            Some(value) => from_value(value).map(Some).map_err(|e| e.with_context("path", path)),
        }
    }

    /// Reads the value or subtree at `path` as a [`Value`].
    pub async fn retrieve_value(&self, path: &str) -> Result<Option<Value>> {
        let path = Path::parse(path)?;
        match self.exec(StorageRequest::Get { path: path.as_str().to_owned() }).await? {
            Reply::Value(value) => Ok(value),
            other => Err(unexpected(other)),
        }
    }

    /// Removes the value or subtree at `path`; a missing path is fine.
    pub async fn delete(&self, path: &str) -> Result<()> {
        let path = Path::parse(path)?;
        match self.exec(StorageRequest::Delete { path: path.as_str().to_owned() }).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Writes `new` at `path` (`None` deletes) only if the current value equals `expected`
    /// (`None`: nothing there). A lost race is `Ok(Err(current))`, not an error.
    pub async fn compare_and_swap<T: Serialize>(
        &self,
        path: &str,
        expected: Option<&T>,
        new: Option<&T>,
    ) -> Result<std::result::Result<(), Option<Value>>> {
        let expected = expected.map(to_value).transpose()?;
        let new = new.map(to_value).transpose()?;
        self.compare_and_swap_value(path, expected, new).await
    }

    async fn compare_and_swap_value(
        &self,
        path: &str,
        expected: Option<Value>,
        new: Option<Value>,
    ) -> Result<std::result::Result<(), Option<Value>>> {
        let path = Path::parse(path)?;
        match self
            .exec(StorageRequest::CompareAndSwap { path: path.as_str().to_owned(), expected, new })
            .await?
        {
            Reply::Swapped(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    /// The paths written from now on at, above or below `path` (beyond the original: watching).
    /// Each item is the path of one write; re-read what you need. A watcher that falls behind
    /// gets the root path, meaning "anything may have changed". On a worker, the primary sends
    /// the changes for the rest of the connection.
    pub async fn watch(&self, path: &str) -> Result<EventStream<Path>> {
        let watched = Path::parse(path)?;
        let receiver = match &self.access {
            Access::Local(storage) => storage.changes(),
            Access::Remote { changes, .. } => {
                // Subscribe before asking, so no change between the two is missed.
                let receiver = changes.subscribe();
                match self.exec(StorageRequest::Watch { path: watched.as_str().to_owned() }).await? {
                    Reply::Done => receiver,
                    other => return Err(unexpected(other)),
                }
            }
        };
        let all = subscribe(receiver, |_| Path::root());
        Ok(Box::pin(all.filter(move |written| futures::future::ready(on_one_branch(written, &watched)))))
    }

    /// Read-modify-write without lost updates between workers: applies `f` to the current value
    /// and retries on a concurrent change. `f` returning `None` deletes. Returns the value written.
    pub async fn update<T, F>(&self, path: &str, mut f: F) -> Result<Option<T>>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> Option<T>,
    {
        let mut current = self.retrieve_value(path).await?;
        for _ in 0..UPDATE_ATTEMPTS {
            let typed =
                current.clone().map(from_value::<T>).transpose().map_err(|e| e.with_context("path", path))?;
            let next = f(typed);
            let next_value = next.as_ref().map(to_value).transpose()?;
            match self.compare_and_swap_value(path, current, next_value).await? {
                Ok(()) => return Ok(next),
                Err(seen) => current = seen,
            }
        }
        Err(Error::new(
            ErrorKind::Storage,
            format!("update gave up after {UPDATE_ATTEMPTS} attempts lost to concurrent writers; spread the writes over more paths"),
        )
        .with_context("path", path))
    }
}
