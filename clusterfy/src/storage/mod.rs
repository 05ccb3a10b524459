//! Shared storage: the tree semantics over a [`StorageBackend`]
//! (in [`SharedStorage`]) and the typed handle both the primary and workers use.
//!
//! The backends live here too (each behind its feature), with what they report
//! ([`StorageNotice`], also published as [`Event::Storage`](crate::Event::Storage)).
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

mod tree;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use clusterfy_core::error::excerpt;
use clusterfy_core::protocol::{Reply, Request, StorageRequest};
use clusterfy_core::{Error, ErrorKind, Path, Result, Value, from_value, to_value};
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

pub use tree::SharedStorage;
pub(crate) use writer::{Op, Outcome};

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
///
/// Errors are the same on both sides too: the same kind, message and context for the same
/// failure, whether the primary's storage or a worker's request to it ran into it. Every error of
/// a call on a path has a `path` context entry (a backend error names it as well); on a worker,
/// only failures of the request itself (a timeout, a lost connection) differ.
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
    // The variant only: the reply may carry a value of any size.
    let kind = match reply {
        Reply::Done => "Done",
        Reply::Value(_) => "Value",
        Reply::Swapped(_) => "Swapped",
        Reply::Command(_) => "Command",
        Reply::Broadcast(_) => "Broadcast",
        Reply::Shutdown(_) => "Shutdown",
    };
    Error::new(ErrorKind::Protocol, format!("unexpected reply to a storage request: {kind}"))
}

/// Takes the reply of a request answered with `Done`.
fn done(reply: Reply) -> std::result::Result<(), Reply> {
    match reply {
        Reply::Done => Ok(()),
        other => Err(other),
    }
}

/// `value` as a [`Value`]; an error names the path it was for (cut: it is not validated yet).
fn encode<T: Serialize + ?Sized>(path: &str, value: &T) -> Result<Value> {
    to_value(value).map_err(|e| e.with_context("path", excerpt(path)))
}

/// Names `path` on an error that does not name a path yet (a backend failure, or on a worker a
/// timeout or a closed connection), so that every storage error says where it happened, and the
/// same failure carries the same context on the primary and on a worker.
fn at_path(err: Error, path: &Path) -> Error {
    if err.context_value("path").is_some() { err } else { err.with_context("path", path) }
}

impl Storage {
    pub(crate) fn local(storage: Arc<SharedStorage>) -> Self {
        Storage { access: Access::Local(storage) }
    }

    pub(crate) fn remote(link: Arc<Link>, deadline: Duration, changes: broadcast::Sender<Path>) -> Self {
        Storage { access: Access::Remote { link, deadline, changes } }
    }

    /// A worker's request to the primary's storage; `expected` takes the reply it should get and
    /// hands any other back.
    async fn ask<T>(
        link: &Link,
        deadline: Duration,
        request: StorageRequest,
        expected: impl FnOnce(Reply) -> std::result::Result<T, Reply>,
    ) -> Result<T> {
        expected(link.request(Request::Storage(request), deadline).await?).map_err(unexpected)
    }

    /// Saves `value` at `path` (the original's `saveToStorage`). The parent map must exist:
    /// otherwise the error is [`ErrorKind::NotFound`] naming the missing prefix.
    pub async fn save<T: Serialize + ?Sized>(&self, path: &str, value: &T) -> Result<()> {
        self.save_value(path, encode(path, value)?, false).await
    }

    /// Saves `value` at `path`, creating missing parent maps.
    pub async fn save_with_parents<T: Serialize + ?Sized>(&self, path: &str, value: &T) -> Result<()> {
        self.save_value(path, encode(path, value)?, true).await
    }

    async fn save_value(&self, path: &str, value: Value, create_parents: bool) -> Result<()> {
        let path = Path::parse(path)?;
        let saved = match &self.access {
            Access::Local(storage) => storage.save(&path, value, create_parents).await,
            Access::Remote { link, deadline, .. } => {
                let request = StorageRequest::Save { path: path.as_str().to_owned(), value, create_parents };
                Self::ask(link, *deadline, request, done).await
            }
        };
        saved.map_err(|err| at_path(err, &path))
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
        let read = match &self.access {
            Access::Local(storage) => storage.get(&path).await,
            Access::Remote { link, deadline, .. } => {
                let request = StorageRequest::Get { path: path.as_str().to_owned() };
                Self::ask(link, *deadline, request, |reply| match reply {
                    Reply::Value(value) => Ok(value),
                    other => Err(other),
                })
                .await
            }
        };
        read.map_err(|err| at_path(err, &path))
    }

    /// Removes the value or subtree at `path`; a missing path is fine.
    pub async fn delete(&self, path: &str) -> Result<()> {
        let path = Path::parse(path)?;
        let deleted = match &self.access {
            Access::Local(storage) => storage.delete(&path).await.map(drop),
            Access::Remote { link, deadline, .. } => {
                Self::ask(link, *deadline, StorageRequest::Delete { path: path.as_str().to_owned() }, done)
                    .await
            }
        };
        deleted.map_err(|err| at_path(err, &path))
    }

    /// Writes `new` at `path` (`None` deletes) only if the current value equals `expected`
    /// (`None`: nothing there). A lost race is `Ok(Err(current))`, not an error.
    pub async fn compare_and_swap<T: Serialize>(
        &self,
        path: &str,
        expected: Option<&T>,
        new: Option<&T>,
    ) -> Result<std::result::Result<(), Option<Value>>> {
        let expected = expected.map(|v| encode(path, v)).transpose()?;
        let new = new.map(|v| encode(path, v)).transpose()?;
        self.compare_and_swap_value(path, expected, new).await
    }

    async fn compare_and_swap_value(
        &self,
        path: &str,
        expected: Option<Value>,
        new: Option<Value>,
    ) -> Result<std::result::Result<(), Option<Value>>> {
        let path = Path::parse(path)?;
        let swapped = match &self.access {
            Access::Local(storage) => storage.compare_and_swap(&path, expected.as_ref(), new).await,
            Access::Remote { link, deadline, .. } => {
                let request =
                    StorageRequest::CompareAndSwap { path: path.as_str().to_owned(), expected, new };
                Self::ask(link, *deadline, request, |reply| match reply {
                    Reply::Swapped(outcome) => Ok(outcome),
                    other => Err(other),
                })
                .await
            }
        };
        swapped.map_err(|err| at_path(err, &path))
    }

    /// The paths written from now on at, above or below `path` (beyond the original: watching).
    /// Each item is the path of one write; re-read what you need. A watcher that falls behind
    /// gets the root path, meaning "anything may have changed". On a worker, the primary sends
    /// the changes for the rest of the connection.
    pub async fn watch(&self, path: &str) -> Result<EventStream<Path>> {
        let watched = Path::parse(path)?;
        let receiver = match &self.access {
            Access::Local(storage) => storage.changes(),
            Access::Remote { link, deadline, changes } => {
                // Subscribe before asking, so no change between the two is missed.
                let receiver = changes.subscribe();
                let request = StorageRequest::Watch { path: watched.as_str().to_owned() };
                Self::ask(link, *deadline, request, done).await.map_err(|err| at_path(err, &watched))?;
                receiver
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
            let next_value = next.as_ref().map(|v| encode(path, v)).transpose()?;
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

#[cfg(all(test, feature = "storage-mem"))]
// A failed unwrap is the clearest failure report a test can give.
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use async_trait::async_trait;
    use clusterfy_core::codec::{DEFAULT_MAX_FRAME_LEN, FrameDecoder};
    use clusterfy_core::protocol::{Notice, RequestId};
    use clusterfy_core::value;

    use super::*;
    use crate::link::Inbound;

    /// The primary's side of a worker's connection, for storage requests: what `PrimaryInbound`
    /// does with them.
    struct ServeStorage(Arc<SharedStorage>);

    impl Inbound for ServeStorage {
        fn on_request(self: Arc<Self>, link: &Arc<Link>, id: RequestId, body: Request) {
            match body {
                Request::Storage(request) => crate::primary::serve_storage(&self.0, link, id, request),
                other => panic!("not a storage request: {other:?}"),
            }
        }

        fn on_notice(&self, _: Notice) {}
    }

    /// The worker's side: nothing but replies arrive in these tests.
    struct NoRequests;

    impl Inbound for NoRequests {
        fn on_request(self: Arc<Self>, _: &Arc<Link>, _: RequestId, body: Request) {
            panic!("a request to the worker: {body:?}");
        }

        fn on_notice(&self, _: Notice) {}
    }

    /// One end of an in-memory connection as a running link whose peer's requests `inbound` serves.
    fn link_over(
        end: tokio::io::DuplexStream,
        peer: &str,
        closed_kind: ErrorKind,
        inbound: Arc<dyn Inbound>,
    ) -> Arc<Link> {
        let (read, write) = tokio::io::split(end);
        let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
        let (link, reader) = Link::new(
            peer.into(),
            Box::new(read),
            Box::new(write),
            decoder,
            DEFAULT_MAX_FRAME_LEN,
            closed_kind,
        );
        reader.spawn(inbound);
        link
    }

    /// The primary's `Storage` and a worker's `Storage` over an in-memory connection, both on
    /// the same shared storage.
    fn local_and_remote(backend: impl StorageBackend) -> (Storage, Storage) {
        let shared = Arc::new(SharedStorage::new(Arc::new(backend)));
        let (primary_end, worker_end) = tokio::io::duplex(1 << 16);
        let serve = Arc::new(ServeStorage(Arc::clone(&shared)));
        // The reader task keeps the primary's end alive.
        drop(link_over(primary_end, "worker \"w\" (#1)", ErrorKind::WorkerExited, serve));
        let worker_link = link_over(worker_end, "the primary", ErrorKind::Closed, Arc::new(NoRequests));
        let (changes, _) = broadcast::channel(16);
        (Storage::local(shared), Storage::remote(worker_link, Duration::from_secs(10), changes))
    }

    /// A backend whose writes all fail like a Redis mirror's in an outage: with a context key of
    /// its own and a source.
    #[derive(Debug)]
    struct Unreachable;

    impl Unreachable {
        fn fail<T>() -> Result<T> {
            Err(Error::new(ErrorKind::Timeout, "Redis did not confirm the write within 5s")
                .with_context("url", "redis://127.0.0.1:6379")
                .with_source(std::io::Error::other("connection refused")))
        }
    }

    #[async_trait]
    impl StorageBackend for Unreachable {
        fn capabilities(&self) -> Capabilities {
            Capabilities::volatile()
        }
        async fn get(&self, _: &[u8]) -> Result<Option<Vec<u8>>> {
            Ok(None)
        }
        async fn scan_prefix(&self, _: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
            Ok(Vec::new())
        }
        async fn apply_batch(&self, _: Vec<BatchOp>) -> Result<()> {
            Unreachable::fail()
        }
        async fn flush(&self) -> Result<()> {
            Unreachable::fail()
        }
        fn notices(&self) -> Option<clusterfy_core::NoticeReceiver> {
            None
        }
    }

    fn assert_same(what: &str, local: Error, remote: Error) -> Error {
        assert_eq!(local.kind(), remote.kind(), "{what}: kind");
        assert_eq!(local.message(), remote.message(), "{what}: message");
        assert_eq!(local.context(), remote.context(), "{what}: context");
        assert_eq!(local.to_string(), remote.to_string(), "{what}: Display");
        local
    }

    #[tokio::test]
    async fn a_storage_error_is_the_same_on_the_primary_and_on_a_worker() {
        let (local, remote) = local_and_remote(MemStorage::new());
        local.save("present", &value!({"leaf": "text"})).await.unwrap();
        for storage in [&local, &remote] {
            assert_eq!(storage.retrieve::<String>("present.leaf").await.unwrap().as_deref(), Some("text"));
        }

        let missing = assert_same(
            "missing parent",
            local.save("present.missing.leaf", &1).await.unwrap_err(),
            remote.save("present.missing.leaf", &1).await.unwrap_err(),
        );
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        assert_eq!(missing.context_value("path"), Some("present.missing.leaf"));
        assert_eq!(missing.context_value("prefix"), Some("present.missing"));

        let below_leaf = assert_same(
            "below a leaf",
            local.save("present.leaf.x", &1).await.unwrap_err(),
            remote.save("present.leaf.x", &1).await.unwrap_err(),
        );
        assert_eq!(below_leaf.kind(), ErrorKind::InvalidInput);
        assert_eq!(below_leaf.context_value("path"), Some("present.leaf.x"));

        let bad_key = value!({" padded": 1});
        let bad_key = assert_same(
            "unaddressable map key",
            local.save("present.map", &bad_key).await.unwrap_err(),
            remote.save("present.map", &bad_key).await.unwrap_err(),
        );
        assert_eq!(
            (bad_key.kind(), bad_key.context_value("path")),
            (ErrorKind::InvalidInput, Some("present.map"))
        );

        let bad_path = assert_same(
            "bad path",
            local.save("x. a", &1).await.unwrap_err(),
            remote.save("x. a", &1).await.unwrap_err(),
        );
        assert_eq!(
            (bad_path.kind(), bad_path.context_value("path")),
            (ErrorKind::InvalidPath, Some("\"x. a\""))
        );

        let wrong_type = assert_same(
            "wrong type",
            local.retrieve::<i64>("present.leaf").await.unwrap_err(),
            remote.retrieve::<i64>("present.leaf").await.unwrap_err(),
        );
        assert_eq!(wrong_type.context_value("path"), Some("present.leaf"));

        let not_a_map = BTreeMap::from([(vec![1u8], 1)]);
        let unencodable = assert_same(
            "unencodable value",
            local.save("present.x", &not_a_map).await.unwrap_err(),
            remote.save("present.x", &not_a_map).await.unwrap_err(),
        );
        assert_eq!(unencodable.context_value("path"), Some("present.x"));
    }

    #[tokio::test]
    async fn a_backend_error_keeps_its_context_keys_and_message_on_a_worker_and_names_the_path() {
        let (local, remote) = local_and_remote(Unreachable);
        let err = assert_same(
            "backend failure",
            local.save("a", &1).await.unwrap_err(),
            remote.save("a", &1).await.unwrap_err(),
        );
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert_eq!(err.message(), "Redis did not confirm the write within 5s");
        assert_eq!(err.context_value("url"), Some("redis://127.0.0.1:6379"));
        assert_eq!(err.context_value("path"), Some("a"));
        assert!(err.to_string().ends_with(": caused by: connection refused"), "{err}");
        let swap = |storage: Storage| async move {
            storage.compare_and_swap("b", None, Some(&2)).await.unwrap_err()
        };
        assert_same("compare-and-swap", swap(local.clone()).await, swap(remote.clone()).await);
    }

    #[tokio::test]
    async fn a_worker_request_that_fails_names_the_path_too() {
        let (_, remote) = local_and_remote(MemStorage::new());
        let Access::Remote { link, .. } = &remote.access else { unreachable!("a remote storage") };
        link.close();
        let err = remote.save("a.b", &1).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
        assert_eq!(err.context_value("path"), Some("a.b"));
    }

    #[test]
    fn an_unexpected_reply_is_named_by_its_variant_not_its_content() {
        let huge = Reply::Value(Some(Value::String("x".repeat(1 << 20))));
        assert_eq!(unexpected(huge).message(), "unexpected reply to a storage request: Value");
    }
}
