//! The storage contract: a small key-value interface every storage backend implements.
//!
//! Tree semantics (dotted paths, subtrees, parents that must exist) are built once on top of this
//! contract in the `clusterfy` facade, so every backend behaves the same.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;

/// What a backend guarantees beyond the contract.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// A write is on stable storage once [`StorageBackend::flush`] returns: it survives a crash of
    /// the process.
    pub durable: bool,
    /// Other programs can read the data while the cluster runs (for example Redis).
    pub visible_outside: bool,
}

impl Capabilities {
    /// Capabilities of a volatile, private backend (nothing beyond the contract).
    pub const fn volatile() -> Self {
        Capabilities { durable: false, visible_outside: false }
    }

    /// Sets [`Capabilities::durable`].
    #[must_use]
    pub const fn with_durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Sets [`Capabilities::visible_outside`].
    #[must_use]
    pub const fn with_visible_outside(mut self, visible: bool) -> Self {
        self.visible_outside = visible;
        self
    }
}

/// Something a backend reports outside any call: a lost or regained connection, a write queue
/// that overflowed, a resync. The primary publishes these as events.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageNotice {
    /// The backend lost its connection to the service behind it; writes are queued meanwhile.
    Disconnected {
        /// What failed, for logs (never contains credentials).
        detail: String,
    },
    /// The connection is back.
    Reconnected,
    /// The service was brought back to the backend's state after an outage or overflow.
    Resynced {
        /// Entries written during the resync.
        entries: u64,
    },
    /// A bounded queue overflowed; the backend says what it did about it.
    Overflow {
        /// What happened and what follows (for example "resync scheduled").
        detail: String,
    },
}

/// Receives a backend's [`StorageNotice`]s (a tokio broadcast receiver, so a slow reader only
/// misses notices and never blocks the backend).
pub type NoticeReceiver = tokio::sync::broadcast::Receiver<StorageNotice>;

/// One operation of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Remove `key` (no effect if absent).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Remove every key that starts with `prefix`, including keys put earlier in the same batch
    /// (no effect if there are none). The tree layer replaces a subtree with one of these, so a
    /// save needs no scan of the old subtree.
    DeletePrefix {
        /// The prefix; the empty prefix removes everything.
        prefix: Vec<u8>,
    },
}

/// A key-value store of byte strings, ordered by key: exactly what the tree layer of the facade
/// needs, and nothing more. One writer (the shared storage's writer task) changes it, through
/// atomic batches; reads may come from anywhere at any time.
///
/// Implement this to add a storage backend; depend on `clusterfy-core` only. Every method has to be
/// implemented (there are no defaults); single-key writes come with [`StorageBackendExt`]. The
/// conformance suite in `clusterfy-testkit` checks the contract below with one macro call.
///
/// # Contract
///
/// - `get` of a key never written returns `Ok(None)`, not an error (`get_of_missing_key_is_none`).
/// - A batch `Put` then `get` returns the value put; a later `Put` replaces it
///   (`put_then_get_returns_value`, `put_replaces_previous_value`).
/// - A batch `Delete` removes the key; deleting a missing key is fine (`delete_removes_key`,
///   `delete_of_missing_key_is_ok`).
/// - `scan_prefix` returns every pair whose key starts with the prefix, in ascending byte order of
///   the key, and nothing else; the empty prefix returns everything (`scan_prefix_is_ordered_and_exact`).
/// - `apply_batch` applies all of its operations or none, in order, so a later operation on the same
///   key wins; no reader sees part of a batch (`batch_applies_in_order`, `batch_is_atomic_for_readers`).
/// - [`BatchOp::DeletePrefix`] removes exactly the keys that start with its prefix, those put
///   earlier in the same batch included, and nothing else (`batch_delete_prefix_removes_exactly_the_prefix`).
///   In-memory stores get this from [`crate::kv::apply_batch`].
/// - Keys and values are arbitrary bytes, including empty ones and NUL bytes (`keys_and_values_are_binary_safe`).
/// - `flush` returns once every write that returned before it was called is as durable as
///   [`Capabilities::durable`] promises (`flush_after_writes_succeeds`; durability itself:
///   `durable_writes_survive_reopen`).
/// - All methods may be called concurrently from many tasks (`concurrent_writers_lose_nothing`).
///
/// # Shared backends
///
/// `Arc<B>` and `Box<B>` are backends too, for every backend `B` (also `dyn StorageBackend`), and
/// forward every call to `B`. So a backend can be handed to the primary while the application
/// keeps a handle to it, for the backend's own methods:
///
/// ```
/// use std::sync::Arc;
///
/// use clusterfy_core::StorageBackend;
/// # use clusterfy_core::{BatchOp, Capabilities, NoticeReceiver, Result};
/// # #[derive(Debug, Default)]
/// # struct MyBackend;
/// # impl MyBackend { fn queued_writes(&self) -> usize { 0 } }
/// # #[async_trait::async_trait]
/// # impl StorageBackend for MyBackend {
/// #     fn capabilities(&self) -> Capabilities { Capabilities::volatile() }
/// #     async fn get(&self, _: &[u8]) -> Result<Option<Vec<u8>>> { Ok(None) }
/// #     async fn scan_prefix(&self, _: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> { Ok(Vec::new()) }
/// #     async fn apply_batch(&self, _: Vec<BatchOp>) -> Result<()> { Ok(()) }
/// #     async fn flush(&self) -> Result<()> { Ok(()) }
/// #     fn notices(&self) -> Option<NoticeReceiver> { None }
/// # }
/// // Like `clusterfy::PrimaryBuilder::storage`, which takes `impl StorageBackend`.
/// fn give_to_the_primary(backend: impl StorageBackend) -> Arc<dyn StorageBackend> {
///     Arc::new(backend)
/// }
///
/// let backend = Arc::new(MyBackend::default());
/// let in_use = give_to_the_primary(Arc::clone(&backend));
/// assert_eq!(backend.queued_writes(), 0); // still ours to ask
/// # drop(in_use);
/// ```
#[async_trait]
pub trait StorageBackend: Send + Sync + Debug + 'static {
    /// What this backend guarantees.
    fn capabilities(&self) -> Capabilities;

    /// The value of `key`, or `None` if absent.
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// All pairs whose key starts with `prefix`, ordered by key.
    async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Applies every operation atomically, in order.
    async fn apply_batch(&self, ops: Vec<BatchOp>) -> Result<()>;

    /// Makes every completed write durable (a no-op for volatile backends).
    async fn flush(&self) -> Result<()>;

    /// A receiver of this backend's [`StorageNotice`]s, or `None` for a backend that has none
    /// (one that depends on no outside service).
    fn notices(&self) -> Option<NoticeReceiver>;
}

/// Forwards every method, so that a backend shared through an `Arc` (or boxed) can be handed to
/// the primary and still be used (for example a Redis mirror's `wait_mirrored`).
macro_rules! forward_backend {
    ($($pointer:ident)::+) => {
        #[async_trait]
        #[deny(clippy::missing_trait_methods)]
        impl<B: StorageBackend + ?Sized> StorageBackend for $($pointer)::+<B> {
            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }

            async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
                (**self).get(key).await
            }

            async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
                (**self).scan_prefix(prefix).await
            }

            async fn apply_batch(&self, ops: Vec<BatchOp>) -> Result<()> {
                (**self).apply_batch(ops).await
            }

            async fn flush(&self) -> Result<()> {
                (**self).flush().await
            }

            fn notices(&self) -> Option<NoticeReceiver> {
                (**self).notices()
            }
        }
    };
}

forward_backend!(Arc);
forward_backend!(Box);

/// Single-key writes on any [`StorageBackend`], each a batch of one: for tools and tests that
/// write a backend directly (never while a primary uses it).
#[async_trait]
pub trait StorageBackendExt: StorageBackend {
    /// Sets `key` to `value`.
    async fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.apply_batch(vec![BatchOp::Put { key: key.to_vec(), value: value.to_vec() }]).await
    }

    /// Removes `key`; absent keys are fine.
    async fn delete(&self, key: &[u8]) -> Result<()> {
        self.apply_batch(vec![BatchOp::Delete { key: key.to_vec() }]).await
    }
}

impl<B: StorageBackend + ?Sized> StorageBackendExt for B {}

#[cfg(test)]
// A failed unwrap is the clearest failure report a test can give.
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records every call, so a wrapper can be seen to forward each method to it.
    #[derive(Debug, Default)]
    struct Recording {
        calls: Mutex<Vec<&'static str>>,
    }

    impl Recording {
        fn called(&self, method: &'static str) {
            self.calls.lock().unwrap().push(method);
        }

        fn calls(&self) -> Vec<&'static str> {
            std::mem::take(&mut *self.calls.lock().unwrap())
        }
    }

    #[async_trait]
    impl StorageBackend for Recording {
        fn capabilities(&self) -> Capabilities {
            self.called("capabilities");
            Capabilities::volatile().with_visible_outside(true)
        }
        async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
            self.called("get");
            Ok(Some(key.to_vec()))
        }
        async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
            self.called("scan_prefix");
            Ok(vec![(prefix.to_vec(), Vec::new())])
        }
        async fn apply_batch(&self, ops: Vec<BatchOp>) -> Result<()> {
            self.called("apply_batch");
            assert_eq!(ops.len(), 1);
            Ok(())
        }
        async fn flush(&self) -> Result<()> {
            self.called("flush");
            Ok(())
        }
        fn notices(&self) -> Option<NoticeReceiver> {
            self.called("notices");
            None
        }
    }

    /// Calls every method of `backend` once, checking the answers `Recording` gives.
    async fn call_every_method(backend: &impl StorageBackend) {
        assert!(backend.capabilities().visible_outside);
        assert_eq!(backend.get(b"k").await.unwrap(), Some(b"k".to_vec()));
        assert_eq!(backend.scan_prefix(b"p").await.unwrap(), [(b"p".to_vec(), Vec::new())]);
        backend.apply_batch(vec![BatchOp::Delete { key: b"k".to_vec() }]).await.unwrap();
        backend.flush().await.unwrap();
        assert!(backend.notices().is_none());
    }

    const EVERY_METHOD: [&str; 6] = ["capabilities", "get", "scan_prefix", "apply_batch", "flush", "notices"];

    #[tokio::test]
    async fn an_arc_or_box_of_a_backend_forwards_every_method_and_the_backend_stays_usable() {
        let backend = Arc::new(Recording::default());
        // What `PrimaryBuilder::storage(impl StorageBackend)` does with what it is given.
        let handed_over: Arc<dyn StorageBackend> = Arc::new(Arc::clone(&backend));
        call_every_method(&handed_over).await;
        assert_eq!(backend.calls(), EVERY_METHOD, "through Arc<Arc<B>> as a trait object");

        call_every_method(&Arc::clone(&backend)).await;
        assert_eq!(backend.calls(), EVERY_METHOD, "through Arc<B>");

        let boxed: Box<dyn StorageBackend> = Box::new(Arc::clone(&backend));
        call_every_method(&boxed).await;
        assert_eq!(backend.calls(), EVERY_METHOD, "through Box<dyn StorageBackend>");

        let boxed_concrete = Box::new(Recording::default());
        call_every_method(&boxed_concrete).await;
        assert_eq!(boxed_concrete.calls(), EVERY_METHOD, "through Box<B>");

        drop((handed_over, boxed));
        assert_eq!(Arc::strong_count(&backend), 1, "the wrappers hold no extra reference");
    }
}
