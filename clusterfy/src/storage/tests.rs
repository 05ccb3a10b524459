//! The storage's own tests: the tree semantics on a minimal backend, the writer's rounds, the
//! typed handle on the primary and on a worker over an in-memory connection, and replicas.
// A failed unwrap is the clearest failure report a test can give.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use clusterfy_core::path::{MAX_DEPTH, MAX_SEGMENT_LEN};
use clusterfy_core::{BatchOp, Capabilities, Error, ErrorKind, Path, Result, StorageBackend, Value};

use std::time::Duration;

use clusterfy_core::codec::{DEFAULT_MAX_FRAME_LEN, FrameDecoder};
use clusterfy_core::protocol::{Notice, Request, RequestId};
use clusterfy_core::value;
use tokio::sync::broadcast;

use super::layout::Node;
use super::{Operations, RemoteStorage, ReplicaRegistry, SharedStorage, Storage, StorageSession};
use crate::link::{Inbound, Link, LinkBounds, LinkReader};

/// A minimal backend: the facade may be built without any backend crate.
#[derive(Debug, Default)]
struct TestBackend {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    fail_writes: AtomicBool,
    /// Claims durability and counts flushes, to check writes are flushed before they return.
    durable: bool,
    flushes: std::sync::atomic::AtomicUsize,
    /// Batches applied, to check that queued writes are combined.
    batches: std::sync::atomic::AtomicUsize,
    /// Operations in the last batch.
    last_batch_len: std::sync::atomic::AtomicUsize,
}

impl TestBackend {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.map.lock().unwrap()
    }

    fn check_writable(&self) -> Result<()> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::Storage, "injected failure").with_context("prefix", "test"));
        }
        Ok(())
    }
}

#[async_trait]
impl StorageBackend for TestBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities::volatile().with_durable(self.durable)
    }
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.map().get(key).cloned())
    }
    async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .map()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    async fn apply_batch(&self, ops: Vec<BatchOp>) -> Result<()> {
        self.check_writable()?;
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.last_batch_len.store(ops.len(), Ordering::SeqCst);
        clusterfy_core::kv::apply_batch(&mut self.map(), ops);
        Ok(())
    }
    async fn flush(&self) -> Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn notices(&self) -> Option<clusterfy_core::NoticeReceiver> {
        None
    }
}

async fn open(backend: Arc<dyn StorageBackend>) -> SharedStorage {
    SharedStorage::open(backend, Operations::default()).await.unwrap()
}

async fn storage() -> (SharedStorage, Arc<TestBackend>) {
    let backend = Arc::new(TestBackend::default());
    (open(backend.clone()).await, backend)
}

fn p(dotted: &str) -> Path {
    Path::parse(dotted).unwrap()
}

fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn empty() -> Value {
    Value::Map(BTreeMap::new())
}

fn s(text: &str) -> Value {
    Value::String(text.to_owned())
}

fn raw_keys(backend: &TestBackend) -> Vec<Vec<u8>> {
    backend.map().keys().cloned().collect()
}

#[tokio::test]
async fn nested_save_then_get_returns_value_and_subtree() {
    let (storage, _) = storage().await;
    storage.save(&p("test"), map([("some", Value::Int(1))]), false).await.unwrap();
    storage.save(&p("test.other"), map([("deep", s("x"))]), false).await.unwrap();
    storage.save(&p("test.some"), Value::Int(2), false).await.unwrap();
    assert_eq!(storage.retrieve_value(&p("test.some")).await.unwrap(), Some(Value::Int(2)));
    assert_eq!(storage.retrieve_value(&p("test.other.deep")).await.unwrap(), Some(s("x")));
    assert_eq!(
        storage.retrieve_value(&p("test")).await.unwrap(),
        Some(map([("other", map([("deep", s("x"))])), ("some", Value::Int(2))]))
    );
    assert_eq!(storage.retrieve_value(&p("test.missing")).await.unwrap(), None);
    assert_eq!(storage.retrieve_value(&p("nothing.at.all")).await.unwrap(), None);
    // Below a leaf there is nothing, and that is not an error either.
    assert_eq!(storage.retrieve_value(&p("test.some.below")).await.unwrap(), None);
}

#[tokio::test]
async fn keys_are_nul_terminated_segments_one_node_per_key() {
    let (storage, backend) = storage().await;
    storage.save(&p("a"), map([("b", Value::Int(1)), ("c", empty())]), false).await.unwrap();
    assert_eq!(raw_keys(&backend), [&b"a\0"[..], b"a\0b\0", b"a\0c\0"]);
}

#[tokio::test]
async fn saving_a_subtree_replaces_old_children() {
    let (storage, backend) = storage().await;
    storage
        .save(&p("a"), map([("old", map([("x", Value::Int(1))])), ("kept", Value::Int(1))]), false)
        .await
        .unwrap();
    storage.save(&p("a"), map([("kept", Value::Int(2)), ("new", Value::Null)]), false).await.unwrap();
    assert_eq!(
        storage.retrieve_value(&p("a")).await.unwrap(),
        Some(map([("kept", Value::Int(2)), ("new", Value::Null)]))
    );
    assert_eq!(raw_keys(&backend), [&b"a\0"[..], b"a\0kept\0", b"a\0new\0"]);
    // A leaf replacing a map leaves no children behind either.
    storage.save(&p("a"), Value::Bool(true), false).await.unwrap();
    assert_eq!(raw_keys(&backend), [b"a\0"]);
    assert_eq!(storage.retrieve_value(&p("a.kept")).await.unwrap(), None);
}

#[tokio::test]
async fn save_under_missing_parent_names_the_missing_prefix() {
    let (storage, backend) = storage().await;
    storage.save(&p("a"), empty(), false).await.unwrap();
    let err = storage.save(&p("a.b.c"), Value::Int(1), false).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(
        err.message(),
        "cannot save \"a.b.c\": \"a.b\" does not exist; save the parent map first or ask to create parents"
    );
    assert_eq!(err.context_value("path"), Some("a.b.c"));
    assert_eq!(err.context_value("prefix"), Some("a.b"));
    let err = storage.save(&p("x.y"), Value::Int(1), false).await.unwrap_err();
    assert_eq!(err.context_value("prefix"), Some("x"));
    assert_eq!(raw_keys(&backend), [b"a\0"]);
}

#[tokio::test]
async fn create_parents_creates_missing_maps() {
    let (storage, _) = storage().await;
    storage.save(&p("a"), map([("keep", Value::Int(1))]), false).await.unwrap();
    storage.save(&p("a.b.c.d"), Value::Int(4), true).await.unwrap();
    assert_eq!(
        storage.retrieve_value(&p("")).await.unwrap(),
        Some(map([("a", map([("b", map([("c", map([("d", Value::Int(4))]))])), ("keep", Value::Int(1))]))]))
    );
    // Existing parents are left as they are.
    storage.save(&p("a.b.e"), Value::Int(5), true).await.unwrap();
    assert_eq!(storage.retrieve_value(&p("a.b.c.d")).await.unwrap(), Some(Value::Int(4)));
    assert_eq!(storage.retrieve_value(&p("a.keep")).await.unwrap(), Some(Value::Int(1)));
}

#[tokio::test]
async fn save_below_a_leaf_is_refused_and_keeps_the_leaf() {
    let (storage, _) = storage().await;
    storage.save(&p("a"), map([("b", s("text"))]), false).await.unwrap();
    for create_parents in [false, true] {
        for below in ["a.b.c", "a.b.c.d"] {
            let err = storage.save(&p(below), Value::Int(1), create_parents).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
            assert!(err.message().contains("\"a.b\" holds a string, not a map"), "{err}");
            assert_eq!(err.context_value("prefix"), Some("a.b"));
        }
    }
    assert_eq!(storage.retrieve_value(&p("a.b")).await.unwrap(), Some(s("text")));
}

#[tokio::test]
async fn delete_removes_the_whole_subtree() {
    let (storage, backend) = storage().await;
    storage
        .save(&p("a"), map([("b", map([("c", Value::Int(1))])), ("d", Value::Int(2))]), false)
        .await
        .unwrap();
    assert!(storage.delete(&p("a.b")).await.unwrap());
    assert_eq!(storage.retrieve_value(&p("a.b")).await.unwrap(), None);
    assert_eq!(storage.retrieve_value(&p("a.b.c")).await.unwrap(), None);
    assert_eq!(raw_keys(&backend), [&b"a\0"[..], b"a\0d\0"]);
    assert!(storage.delete(&p("a.d")).await.unwrap());
    assert_eq!(storage.retrieve_value(&p("a")).await.unwrap(), Some(empty()));
}

#[tokio::test]
async fn delete_of_missing_path_is_ok_false() {
    let (storage, _) = storage().await;
    assert!(!storage.delete(&p("nothing")).await.unwrap());
    storage.save(&p("a"), Value::Int(1), false).await.unwrap();
    assert!(!storage.delete(&p("a.below.leaf")).await.unwrap());
    assert!(!storage.delete(&p("b")).await.unwrap());
    assert_eq!(storage.retrieve_value(&p("a")).await.unwrap(), Some(Value::Int(1)));
}

#[tokio::test]
async fn cas_succeeds_when_expected_matches() {
    let (storage, _) = storage().await;
    storage.save(&p("n"), Value::Int(1), false).await.unwrap();
    let swapped = storage.compare_and_swap(&p("n"), Some(&Value::Int(1)), Some(Value::Int(2))).await.unwrap();
    assert_eq!(swapped, Ok(()));
    assert_eq!(storage.retrieve_value(&p("n")).await.unwrap(), Some(Value::Int(2)));
    // `None` as the new value deletes.
    assert_eq!(storage.compare_and_swap(&p("n"), Some(&Value::Int(2)), None).await.unwrap(), Ok(()));
    assert_eq!(storage.retrieve_value(&p("n")).await.unwrap(), None);
}

#[tokio::test]
async fn cas_conflict_returns_current_and_writes_nothing() {
    let (storage, _) = storage().await;
    storage.save(&p("n"), Value::Int(1), false).await.unwrap();
    let lost = storage.compare_and_swap(&p("n"), Some(&Value::Int(0)), Some(Value::Int(2))).await.unwrap();
    assert_eq!(lost, Err(Some(Value::Int(1))));
    let lost = storage.compare_and_swap(&p("n"), None, None).await.unwrap();
    assert_eq!(lost, Err(Some(Value::Int(1))));
    assert_eq!(storage.retrieve_value(&p("n")).await.unwrap(), Some(Value::Int(1)));
    let lost = storage.compare_and_swap(&p("gone"), Some(&Value::Int(0)), Some(Value::Int(2))).await.unwrap();
    assert_eq!(lost, Err(None));
    assert_eq!(storage.retrieve_value(&p("gone")).await.unwrap(), None);
}

#[tokio::test]
async fn a_swap_lost_early_in_a_round_is_answered_with_what_the_round_commits() {
    let (storage, _) = storage().await;
    storage.save(&p("n"), Value::Int(1), false).await.unwrap();
    // One round, in this order: a stale swap, a winning one, a swap that restores the old value
    // after a second stale one (A, B, A for that one).
    let (n, zero, one, two) = (p("n"), Value::Int(0), Value::Int(1), Value::Int(2));
    let stale = storage.compare_and_swap(&n, Some(&zero), Some(Value::Int(5)));
    let wins = storage.compare_and_swap(&n, Some(&one), Some(Value::Int(2)));
    let (stale, wins) = futures::future::join(stale, wins).await;
    assert_eq!(wins.unwrap(), Ok(()));
    assert_eq!(stale.unwrap(), Err(Some(Value::Int(2))), "the loser's retry can win the next round");
    let expects_one = storage.compare_and_swap(&n, Some(&one), Some(Value::Int(9)));
    let to_one = storage.compare_and_swap(&n, Some(&two), Some(Value::Int(1)));
    let (expects_one, to_one) = futures::future::join(expects_one, to_one).await;
    assert_eq!(to_one.unwrap(), Ok(()));
    assert_eq!(
        expects_one.unwrap(),
        Err(Some(Value::Int(2))),
        "A, B, A: a lost swap reports what it saw, never its own expected value"
    );
    assert_eq!(storage.retrieve_value(&n).await.unwrap(), Some(one));
}

#[tokio::test]
async fn cas_with_none_expected_creates_only_if_absent() {
    let (storage, _) = storage().await;
    assert_eq!(storage.compare_and_swap(&p("lock"), None, Some(s("first"))).await.unwrap(), Ok(()));
    let lost = storage.compare_and_swap(&p("lock"), None, Some(s("second"))).await.unwrap();
    assert_eq!(lost, Err(Some(s("first"))));
    // Creating under a missing parent is the same error as a save.
    let err = storage.compare_and_swap(&p("no.parent"), None, Some(Value::Int(1))).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn cas_compares_the_whole_subtree() {
    let (storage, _) = storage().await;
    let before = map([("x", Value::Int(1)), ("y", empty())]);
    storage.save(&p("m"), before.clone(), false).await.unwrap();
    let lost =
        storage.compare_and_swap(&p("m"), Some(&map([("x", Value::Int(1))])), Some(empty())).await.unwrap();
    assert_eq!(lost, Err(Some(before.clone())));
    assert_eq!(storage.compare_and_swap(&p("m"), Some(&before), Some(Value::Null)).await.unwrap(), Ok(()));
    assert_eq!(storage.retrieve_value(&p("m")).await.unwrap(), Some(Value::Null));
    assert_eq!(storage.retrieve_value(&p("m.x")).await.unwrap(), None);
}

#[tokio::test]
async fn concurrent_cas_increments_lose_nothing() {
    let (storage, _) = storage().await;
    let storage = Arc::new(storage);
    storage.save(&p("n"), Value::Int(0), false).await.unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let storage = Arc::clone(&storage);
            tokio::spawn(async move {
                for _ in 0..25 {
                    let mut current = storage.retrieve_value(&p("n")).await.unwrap();
                    loop {
                        let Some(Value::Int(n)) = current else { panic!("counter vanished: {current:?}") };
                        match storage
                            .compare_and_swap(&p("n"), current.as_ref(), Some(Value::Int(n + 1)))
                            .await
                        {
                            Ok(Ok(())) => break,
                            Ok(Err(seen)) => current = seen,
                            Err(err) => panic!("{err}"),
                        }
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(storage.retrieve_value(&p("n")).await.unwrap(), Some(Value::Int(100)));
}

#[tokio::test]
async fn initialize_saves_only_into_an_empty_backend() {
    let (storage, backend) = storage().await;
    storage.initialize(map([("test", map([("some", Value::Int(1))]))])).await.unwrap();
    assert_eq!(storage.retrieve_value(&p("test.some")).await.unwrap(), Some(Value::Int(1)));
    storage.save(&p("test.some"), Value::Int(2), false).await.unwrap();
    // A restart over the same (durable) backend keeps the saved state.
    let reopened = open(backend).await;
    reopened
        .initialize(map([("test", map([("some", Value::Int(1))])), ("extra", Value::Null)]))
        .await
        .unwrap();
    assert_eq!(
        reopened.retrieve_value(&p("")).await.unwrap(),
        Some(map([("test", map([("some", Value::Int(2))]))]))
    );
    let err = reopened.initialize(Value::Int(1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().contains("must be a map, not an integer"), "{err}");
}

#[tokio::test]
async fn empty_map_round_trips() {
    let (storage, _) = storage().await;
    storage.save(&p("e"), empty(), false).await.unwrap();
    assert_eq!(storage.retrieve_value(&p("e")).await.unwrap(), Some(empty()));
    storage.save(&p("n"), map([("inner", empty())]), false).await.unwrap();
    assert_eq!(storage.retrieve_value(&p("n")).await.unwrap(), Some(map([("inner", empty())])));
    // An empty map is a parent that exists.
    storage.save(&p("e.child"), Value::Int(1), false).await.unwrap();
    assert_eq!(storage.retrieve_value(&p("e")).await.unwrap(), Some(map([("child", Value::Int(1))])));
}

#[tokio::test]
async fn root_get_save_delete() {
    let (storage, backend) = storage().await;
    assert_eq!(storage.retrieve_value(&Path::root()).await.unwrap(), Some(empty()));
    assert!(!storage.delete(&Path::root()).await.unwrap());
    storage.save(&p("old"), Value::Int(1), false).await.unwrap();
    let root = map([("a", map([("b", Value::Int(1))])), ("c", s("x"))]);
    storage.save(&Path::root(), root.clone(), false).await.unwrap();
    assert_eq!(storage.retrieve_value(&Path::root()).await.unwrap(), Some(root));
    assert_eq!(storage.retrieve_value(&p("old")).await.unwrap(), None);
    let err = storage.save(&Path::root(), Value::Int(1), false).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().contains("cannot save an integer at the root"), "{err}");
    assert!(storage.delete(&Path::root()).await.unwrap());
    assert_eq!(storage.retrieve_value(&Path::root()).await.unwrap(), Some(empty()));
    assert!(raw_keys(&backend).is_empty());
}

#[tokio::test]
async fn segment_boundaries_separate_similar_paths() {
    let (storage, _) = storage().await;
    storage
        .save(&p("a"), map([("b", map([("x", Value::Int(1))])), ("bc", Value::Int(2))]), false)
        .await
        .unwrap();
    assert_eq!(storage.retrieve_value(&p("a.b")).await.unwrap(), Some(map([("x", Value::Int(1))])));
    storage.save(&p("a.b"), Value::Null, false).await.unwrap();
    assert_eq!(storage.retrieve_value(&p("a.bc")).await.unwrap(), Some(Value::Int(2)));
    assert!(storage.delete(&p("a.b")).await.unwrap());
    assert_eq!(storage.retrieve_value(&p("a")).await.unwrap(), Some(map([("bc", Value::Int(2))])));
}

#[tokio::test]
async fn unaddressable_map_keys_are_refused_and_nothing_is_written() {
    let (storage, backend) = storage().await;
    for bad in ["", "x.y", "nul\0", &"k".repeat(MAX_SEGMENT_LEN + 1), " lead", "trail ", "\ttab"] {
        let err = storage
            .save(&p("a"), map([("fine", Value::Int(1)), (bad, Value::Int(1))]), true)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(err.message().contains("which no path can address"), "{err}");
    }
    let mut deep = Value::Int(1);
    for _ in 0..MAX_DEPTH {
        deep = map([("d", deep)]);
    }
    let err = storage.save(&p("a"), deep, false).await.unwrap_err();
    assert!(err.message().contains("deeper than 64"), "{err}");
    assert!(raw_keys(&backend).is_empty());
    // Maps inside lists are leaf data and may use any keys.
    let list = Value::List(vec![map([("x.y", Value::Null)])]);
    storage.save(&p("l"), list.clone(), false).await.unwrap();
    assert_eq!(storage.retrieve_value(&p("l")).await.unwrap(), Some(list));
}

#[tokio::test]
async fn keys_stored_with_surrounding_whitespace_before_it_was_refused_stay_readable() {
    let backend = Arc::new(TestBackend::default());
    let map_node = postcard::to_allocvec(&Node::Map).unwrap();
    let leaf = postcard::to_allocvec(&Node::Leaf(Value::Int(1))).unwrap();
    backend.map().insert(b"a\0".to_vec(), map_node);
    backend.map().insert(b"a\0 old\0".to_vec(), leaf);
    let storage = open(backend.clone()).await;
    assert_eq!(storage.retrieve_value(&p("a")).await.unwrap(), Some(map([(" old", Value::Int(1))])));
    // It cannot be addressed on its own any more, but goes with its parent.
    assert_eq!(Path::parse("a. old").unwrap_err().kind(), ErrorKind::InvalidPath);
    assert!(storage.delete(&p("a")).await.unwrap());
    assert!(raw_keys(&backend).is_empty());
}

#[tokio::test]
async fn messages_quote_at_most_about_a_hundred_bytes_of_a_path_or_key() {
    let (storage, backend) = storage().await;
    let long = vec!["s".repeat(MAX_SEGMENT_LEN); 8].join(".");
    let err = storage.save(&p(&format!("{long}.leaf")), Value::Int(1), false).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.message().len() < 400, "{} bytes: {err}", err.message().len());
    assert!(err.message().contains("\"… (2060 bytes): \""), "{err}");
    assert!(err.message().contains("\"… (256 bytes) does not exist"), "{err}");
    let key = "k".repeat(5000);
    let err = storage.save(&p("a"), map([(&format!("{key}.x"), Value::Null)]), true).await.unwrap_err();
    assert!(err.message().len() < 500 && err.message().contains("… (5002 bytes)"), "{err}");
    backend.map().insert([key.as_bytes(), b"\0"].concat(), vec![0xff]);
    // Data written behind the storage's back counts from its next start.
    let storage = open(backend.clone()).await;
    let err = storage.retrieve_value(&Path::root()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Storage);
    assert!(err.message().len() < 500 && err.message().contains("… (5001 bytes)"), "{err}");
}

#[tokio::test]
async fn corrupt_backend_data_is_a_storage_error_not_a_panic() {
    let map_node = postcard::to_allocvec(&Node::Map).unwrap();
    let leaf = postcard::to_allocvec(&Node::Leaf(Value::Int(1))).unwrap();
    let leaf_map = postcard::to_allocvec(&Node::Leaf(empty())).unwrap();
    let cases: Vec<Vec<(&[u8], Vec<u8>)>> = vec![
        vec![(b"a\0", vec![0xff, 0xff])],
        vec![(b"a\0", [leaf.clone(), vec![0]].concat())],
        vec![(b"a\0", leaf_map)],
        vec![(b"a\0", leaf.clone()), (b"a\0b\0", leaf.clone())],
        vec![(b"a\0b\0", leaf.clone())],
        vec![(b"a", leaf.clone())],
        vec![(b"a\0\xff\0", leaf.clone())],
        vec![(b"", map_node.clone())],
        vec![(b"a\0", map_node.clone()), (b"a\0x.y\0", leaf.clone())],
    ];
    for case in cases {
        let backend = Arc::new(TestBackend::default());
        for (key, value) in &case {
            backend.map().insert(key.to_vec(), value.clone());
        }
        let storage = open(backend.clone()).await;
        for path in ["", "a"] {
            if let Err(err) = storage.retrieve_value(&p(path)).await {
                assert_eq!(err.kind(), ErrorKind::Storage, "{err}");
                assert!(err.message().contains("clusterfy never writes"), "{err}");
            } else {
                // Only the shape the key at "a" itself cannot see may read cleanly.
                assert_eq!(path, "a", "{case:?} read cleanly at the root");
            }
        }
    }
    let backend = Arc::new(TestBackend::default());
    backend.map().insert(b"a\0".to_vec(), vec![0xff]);
    let storage = open(backend).await;
    let err = storage.save(&p("a.b"), Value::Int(1), false).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Storage, "{err}");
}

#[tokio::test]
async fn backend_errors_pass_through_unchanged() {
    let (storage, backend) = storage().await;
    backend.fail_writes.store(true, Ordering::SeqCst);
    let err = storage.save(&p("a"), Value::Int(1), false).await.unwrap_err();
    assert_eq!((err.kind(), err.message()), (ErrorKind::Storage, "injected failure"));
    assert_eq!(err.context_value("prefix"), Some("test"));
    assert_eq!(err.context().len(), 1);
}

#[tokio::test]
async fn queued_saves_are_one_batch_with_one_flush_and_a_failing_one_fails_alone() {
    let backend = Arc::new(TestBackend { durable: true, ..TestBackend::default() });
    let storage = open(Arc::clone(&backend) as Arc<dyn StorageBackend>).await;
    storage.save(&p("parent"), empty(), false).await.unwrap();
    let (batches, flushes) = (backend.batches.load(Ordering::SeqCst), backend.flushes.load(Ordering::SeqCst));
    let paths: Vec<Path> = (0..100).map(|n| p(&format!("parent.k{n}"))).collect();
    let orphan = p("missing.k");
    let mut saves: Vec<futures::future::BoxFuture<'_, Result<()>>> =
        paths.iter().map(|path| Box::pin(storage.save(path, Value::Int(1), false)) as _).collect();
    saves.insert(50, Box::pin(storage.save(&orphan, Value::Int(1), false)));
    let results = futures::future::join_all(saves).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 100, "{results:?}");
    assert_eq!(results[50].as_ref().unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(backend.batches.load(Ordering::SeqCst) - batches, 1, "one backend batch for the round");
    assert_eq!(backend.flushes.load(Ordering::SeqCst) - flushes, 1, "one flush for the round");
    let parent = storage.retrieve_value(&p("parent")).await.unwrap().unwrap();
    assert!(matches!(parent, Value::Map(ref m) if m.len() == 100), "{parent:?}");
}

#[tokio::test]
async fn every_write_of_a_round_is_announced_in_order_once_applied() {
    let (storage, _) = storage().await;
    let mut changes = storage.changes();
    let (a, ab, b) = (p("a"), p("a.b"), p("b"));
    let writes: Vec<futures::future::BoxFuture<'_, Result<()>>> = vec![
        Box::pin(storage.save(&a, empty(), false)),
        Box::pin(storage.save(&ab, Value::Int(1), false)),
        Box::pin(storage.save(&b, Value::Int(2), false)),
        Box::pin(async { storage.delete(&ab).await.map(drop) }),
    ];
    for result in futures::future::join_all(writes).await {
        result.unwrap();
    }
    for expected in [&a, &ab, &b, &ab] {
        assert_eq!(&changes.try_recv().unwrap(), expected);
    }
    assert_eq!(storage.retrieve_value(&a).await.unwrap(), Some(empty()), "the save below a fresh map saw it");
}

#[tokio::test]
async fn writes_to_a_durable_backend_are_flushed_before_they_return() {
    let backend = Arc::new(TestBackend { durable: true, ..TestBackend::default() });
    let storage = open(Arc::clone(&backend) as Arc<dyn StorageBackend>).await;
    let a = Path::parse("a").unwrap();
    storage.save(&a, Value::Int(1), false).await.unwrap();
    assert_eq!(backend.flushes.load(Ordering::SeqCst), 1, "save");
    storage.compare_and_swap(&a, Some(&Value::Int(1)), Some(Value::Int(2))).await.unwrap().unwrap();
    assert_eq!(backend.flushes.load(Ordering::SeqCst), 2, "compare-and-swap");
    let lost = storage.compare_and_swap(&a, Some(&Value::Int(7)), None).await.unwrap();
    assert!(lost.is_err());
    assert_eq!(backend.flushes.load(Ordering::SeqCst), 2, "a lost swap writes nothing to flush");
    assert!(storage.delete(&a).await.unwrap());
    assert_eq!(backend.flushes.load(Ordering::SeqCst), 3, "delete");
}

#[tokio::test]
async fn volatile_backends_are_not_flushed() {
    let backend = Arc::new(TestBackend::default());
    let storage = open(Arc::clone(&backend) as Arc<dyn StorageBackend>).await;
    storage.save(&Path::parse("a").unwrap(), Value::Int(1), false).await.unwrap();
    assert_eq!(backend.flushes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn every_successful_write_is_announced_in_order() {
    let storage = open(Arc::new(TestBackend::default())).await;
    let mut changes = storage.changes();
    let (a, ab) = (Path::parse("a").unwrap(), Path::parse("a.b").unwrap());
    storage.save(&a, Value::Map(BTreeMap::new()), false).await.unwrap();
    assert!(storage.save(&Path::parse("x.y").unwrap(), Value::Int(1), false).await.is_err());
    storage.save(&ab, Value::Int(1), false).await.unwrap();
    assert!(!storage.delete(&Path::parse("missing").unwrap()).await.unwrap());
    storage.delete(&a).await.unwrap();
    let seen: Vec<Path> = (0..3).map(|_| changes.try_recv().unwrap()).collect();
    assert_eq!(seen, [a.clone(), ab, a]);
    assert!(changes.try_recv().is_err(), "failed writes and no-op deletes are not announced");
}

// ---------------------------------------------------------------------------------------------
// The typed handle on the primary and on a worker over an in-memory connection
// ---------------------------------------------------------------------------------------------

/// The primary's side of a worker's connection, for storage requests: what `PrimaryInbound`
/// does with them.
struct ServeStorage(StorageSession);

impl Inbound for ServeStorage {
    fn on_request(self: Arc<Self>, link: &Arc<Link>, id: RequestId, body: Request) {
        match body {
            Request::Storage(request) => self.0.serve(link, id, request),
            other => panic!("not a storage request: {other:?}"),
        }
    }

    fn on_notice(&self, link: &Arc<Link>, notice: Notice) {
        if let Notice::ReplicaDropped { replica } = notice {
            self.0.replica_dropped(link, replica);
        }
    }
}

/// The worker's side: replies, and what the primary sends for its replicas.
struct WorkerSide(Arc<RemoteStorage>);

impl Inbound for WorkerSide {
    fn on_request(self: Arc<Self>, _: &Arc<Link>, _: RequestId, body: Request) {
        panic!("a request to the worker: {body:?}");
    }

    fn on_notice(&self, _: &Arc<Link>, notice: Notice) {
        let mut notice = Some(notice);
        self.0.replicas.on_notice(&mut notice);
    }
}

/// One end of an in-memory connection as a running link.
fn link_over(end: tokio::io::DuplexStream, peer: &str, closed_kind: ErrorKind) -> (Arc<Link>, LinkReader) {
    link_with_frames(end, peer, closed_kind, DEFAULT_MAX_FRAME_LEN)
}

/// [`link_over`] with frames of at most `max_frame_len` bytes.
fn link_with_frames(
    end: tokio::io::DuplexStream,
    peer: &str,
    closed_kind: ErrorKind,
    max_frame_len: usize,
) -> (Arc<Link>, LinkReader) {
    let (read, write) = tokio::io::split(end);
    let decoder = FrameDecoder::new(max_frame_len);
    Link::new(
        peer.into(),
        Box::new(read),
        Box::new(write),
        decoder,
        max_frame_len,
        closed_kind,
        LinkBounds::WORKER,
    )
}

/// The primary's `Storage` and a worker's `Storage` over an in-memory connection, both on the
/// same shared storage.
async fn local_and_remote(backend: impl StorageBackend) -> (Storage, Storage) {
    local_and_remote_with_frames(backend, DEFAULT_MAX_FRAME_LEN).await
}

/// [`local_and_remote`] over a connection of frames of at most `max_frame_len` bytes.
async fn local_and_remote_with_frames(
    backend: impl StorageBackend,
    max_frame_len: usize,
) -> (Storage, Storage) {
    let shared = Arc::new(open(Arc::new(backend)).await);
    let (primary_end, worker_end) = tokio::io::duplex(1 << 16);
    let (_, reader) =
        link_with_frames(primary_end, "worker \"w\" (#1)", ErrorKind::WorkerExited, max_frame_len);
    // The reader task keeps the primary's end alive.
    reader.spawn(Arc::new(ServeStorage(StorageSession::new(
        Arc::clone(&shared),
        crate::primary::Limits::default().replicas_per_worker,
    ))));
    let (worker_link, reader) = link_with_frames(worker_end, "the primary", ErrorKind::Closed, max_frame_len);
    let remote = Arc::new(RemoteStorage {
        link: worker_link,
        deadline: Duration::from_secs(10),
        changes: broadcast::channel(16).0,
        replicas: ReplicaRegistry::default(),
    });
    reader.spawn(Arc::new(WorkerSide(Arc::clone(&remote))));
    (Storage::local(shared), Storage::remote(remote))
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
    let (local, remote) = local_and_remote(TestBackend::default()).await;
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
    assert_eq!((bad_path.kind(), bad_path.context_value("path")), (ErrorKind::InvalidPath, Some("\"x. a\"")));

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
    let (local, remote) = local_and_remote(Unreachable).await;
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
    let swap =
        |storage: Storage| async move { storage.compare_and_swap("b", None, Some(&2)).await.unwrap_err() };
    assert_same("compare-and-swap", swap(local.clone()).await, swap(remote.clone()).await);
}

// ---------------------------------------------------------------------------------------------
// Atomic operations
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn increment_counts_from_nothing_checks_overflow_and_refuses_other_types() {
    let (local, remote) = local_and_remote(TestBackend::default()).await;
    assert_eq!(local.increment("hits", 5).await.unwrap(), 5, "nothing there counts as 0");
    assert_eq!(remote.increment("hits", -2).await.unwrap(), 3);
    assert_eq!(local.retrieve::<i64>("hits").await.unwrap(), Some(3));
    local.save("max", &i64::MAX).await.unwrap();
    let overflow = assert_same(
        "overflow",
        local.increment("max", 1).await.unwrap_err(),
        remote.increment("max", 1).await.unwrap_err(),
    );
    assert_eq!(overflow.kind(), ErrorKind::InvalidInput);
    assert_eq!(overflow.context_value("path"), Some("max"));
    assert_eq!(local.retrieve::<i64>("max").await.unwrap(), Some(i64::MAX), "nothing changed");
    local.save("name", "text").await.unwrap();
    let wrong = assert_same(
        "wrong type",
        local.increment("name", 1).await.unwrap_err(),
        remote.increment("name", 1).await.unwrap_err(),
    );
    assert_eq!(wrong.kind(), ErrorKind::InvalidInput);
    assert_eq!(
        (wrong.context_value("path"), wrong.context_value("operation")),
        (Some("name"), Some("increment"))
    );
    assert!(wrong.message().contains("holds a string, not an integer"), "{wrong}");
    assert_eq!(local.retrieve::<String>("name").await.unwrap().as_deref(), Some("text"));
    let orphan = remote.increment("no.parent", 1).await.unwrap_err();
    assert_eq!(orphan.kind(), ErrorKind::NotFound, "{orphan}");
    assert_eq!(orphan.context_value("prefix"), Some("no"));
}

#[tokio::test]
async fn increment_float_takes_integers_and_refuses_results_that_are_not_finite() {
    let (local, remote) = local_and_remote(TestBackend::default()).await;
    local.save("n", &2).await.unwrap();
    assert_eq!(remote.increment_float("n", 0.5).await.unwrap(), 2.5);
    assert_eq!(local.retrieve::<f64>("n").await.unwrap(), Some(2.5));
    assert_eq!(remote.increment_float("fresh", 1.25).await.unwrap(), 1.25);
    remote.increment_float("n", f64::MAX).await.unwrap();
    let again = remote.increment_float("n", f64::MAX).await.unwrap_err();
    assert_eq!(again.kind(), ErrorKind::InvalidInput, "{again}");
    assert!(again.message().contains("would be inf"), "{again}");
}

#[tokio::test]
async fn lists_take_appends_and_removals_by_value() {
    let (local, remote) = local_and_remote(TestBackend::default()).await;
    assert_eq!(remote.append("online", "alice").await.unwrap(), 1);
    assert_eq!(remote.append("online", "bob").await.unwrap(), 2);
    assert_eq!(local.append("online", "alice").await.unwrap(), 3);
    assert_eq!(remote.remove_value("online", "alice").await.unwrap(), 2, "every equal element goes");
    assert_eq!(local.retrieve::<Vec<String>>("online").await.unwrap(), Some(vec!["bob".to_owned()]));
    assert_eq!(remote.remove_value("nobody-here", "x").await.unwrap(), 0);
    local.save("map", &value!({"a": 1})).await.unwrap();
    let err = assert_same(
        "append to a map",
        local.append("map", &1).await.unwrap_err(),
        remote.append("map", &1).await.unwrap_err(),
    );
    assert!(err.message().contains("holds a map, not a list"), "{err}");
    assert_eq!(local.retrieve_value("map").await.unwrap(), Some(value!({"a": 1})));
}

#[tokio::test]
async fn insert_if_absent_saves_once_and_take_reads_and_deletes() {
    let (local, remote) = local_and_remote(TestBackend::default()).await;
    local.save("locks", &value!({})).await.unwrap();
    assert!(remote.insert_if_absent("locks.job1", "worker-a").await.unwrap());
    assert!(!local.insert_if_absent("locks.job1", "worker-b").await.unwrap());
    assert_eq!(remote.take::<String>("locks.job1").await.unwrap().as_deref(), Some("worker-a"));
    assert_eq!(remote.take::<String>("locks.job1").await.unwrap(), None, "taken once");
    assert_eq!(local.retrieve_value("locks").await.unwrap(), Some(value!({})));
    assert_eq!(local.take::<Value>("locks").await.unwrap(), Some(value!({})), "a subtree too");
    assert_eq!(local.retrieve_value("locks").await.unwrap(), None);
}

/// Keeps the `keep` largest numbers seen, largest first; answers whether `n` made it.
#[derive(serde::Serialize, serde::Deserialize)]
struct TopScores {
    n: i64,
    keep: usize,
}

impl super::Operation for TopScores {
    const NAME: &'static str = "test.top_scores";
    type Value = Vec<i64>;
    type Reply = bool;

    fn apply(self, current: Option<Vec<i64>>) -> Result<(Option<Vec<i64>>, bool)> {
        if self.n < 0 {
            return Err(Error::new(ErrorKind::InvalidInput, "scores are not negative"));
        }
        let mut scores = current.unwrap_or_default();
        scores.push(self.n);
        scores.sort_unstable_by(|a, b| b.cmp(a));
        scores.truncate(self.keep);
        let kept = scores.contains(&self.n);
        Ok((Some(scores), kept))
    }
}

#[tokio::test]
async fn a_registered_operation_runs_on_the_primary_and_an_unknown_one_names_the_known() {
    let mut operations = Operations::default();
    operations.register::<TopScores>().unwrap();
    assert_eq!(operations.register::<TopScores>().unwrap_err().kind(), ErrorKind::AlreadyExists);
    let storage = Storage::local(Arc::new(
        SharedStorage::open(Arc::new(TestBackend::default()), operations).await.unwrap(),
    ));
    for (n, kept) in [(5, true), (9, true), (1, false), (7, true)] {
        assert_eq!(storage.apply("top", TopScores { n, keep: 2 }).await.unwrap(), kept, "{n}");
    }
    assert_eq!(storage.retrieve::<Vec<i64>>("top").await.unwrap(), Some(vec![9, 7]));
    let refused = storage.apply("top", TopScores { n: -1, keep: 2 }).await.unwrap_err();
    assert_eq!((refused.kind(), refused.context_value("path")), (ErrorKind::InvalidInput, Some("top")));
    assert_eq!(storage.retrieve::<Vec<i64>>("top").await.unwrap(), Some(vec![9, 7]), "nothing changed");

    let (plain, _) = local_and_remote(TestBackend::default()).await;
    let unknown = plain.apply("top", TopScores { n: 1, keep: 1 }).await.unwrap_err();
    assert_eq!(unknown.kind(), ErrorKind::UnknownCommand, "{unknown}");
    assert!(unknown.message().contains("registered: []"), "{unknown}");
}

#[tokio::test]
async fn increments_of_one_key_in_one_round_are_one_write_and_each_caller_gets_its_own_result() {
    let backend = Arc::new(TestBackend::default());
    let shared = Arc::new(open(Arc::clone(&backend) as Arc<dyn StorageBackend>).await);
    let storage = Storage::local(Arc::clone(&shared));
    storage.save("n", &0).await.unwrap();
    let batches = backend.batches.load(Ordering::SeqCst);
    let results = futures::future::join_all((0..200).map(|_| storage.increment("n", 1))).await;
    let mut seen: Vec<i64> = results.into_iter().map(|r| r.unwrap()).collect();
    seen.sort_unstable();
    assert_eq!(seen, (1..=200).collect::<Vec<_>>(), "each increment saw the ones before it");
    assert_eq!(storage.retrieve::<i64>("n").await.unwrap(), Some(200));
    let rounds = backend.batches.load(Ordering::SeqCst) - batches;
    assert!(rounds <= 2, "200 increments queued together made {rounds} batches");
    // One put per key per round, however many operations touched it.
    assert_eq!(backend.last_batch_len.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------------
// Replicas
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_replica_shows_its_branch_its_own_writes_at_once_and_others_writes_in_order() {
    let (local, remote) = local_and_remote(TestBackend::default()).await;
    local.save("config", &value!({"limit": 3, "name": "x"})).await.unwrap();
    local.save("other", &1).await.unwrap();
    let replica = remote.replica("config").await.unwrap();
    assert!(replica.is_current());
    assert_eq!(replica.retrieve::<i64>("config.limit").unwrap(), Some(3));
    assert_eq!(replica.retrieve_value("config").unwrap(), Some(value!({"limit": 3, "name": "x"})));
    assert_eq!(replica.retrieve::<i64>("config.missing").unwrap(), None);
    let outside = replica.retrieve::<i64>("other").unwrap_err();
    assert_eq!(outside.kind(), ErrorKind::InvalidInput, "{outside}");
    // Its own acknowledged write is there when the write returns.
    for n in 0..50 {
        remote.save("config.limit", &n).await.unwrap();
        assert_eq!(replica.retrieve::<i64>("config.limit").unwrap(), Some(n), "read-your-writes");
    }
    // Another's writes arrive in commit order, and the version never goes back.
    let mut changed = replica.changed();
    let mut last = replica.version();
    for n in 0..20 {
        local.save("config.name", &format!("n{n}")).await.unwrap();
        let event = futures::StreamExt::next(&mut changed).await.unwrap();
        let super::ReplicaEvent::Changed { version } = event else { panic!("{event:?}") };
        assert!(version > last, "{version} after {last}");
        last = version;
        assert_eq!(replica.retrieve::<String>("config.name").unwrap(), Some(format!("n{n}")));
    }
    local.delete("config").await.unwrap();
    futures::StreamExt::next(&mut changed).await.unwrap();
    assert_eq!(replica.retrieve_value("config").unwrap(), None, "a delete of the branch empties it");
}

#[tokio::test]
async fn a_worker_that_stops_reading_gets_no_more_changes_then_its_branch_again() {
    let shared = Arc::new(open(Arc::new(TestBackend::default())).await);
    let local = Storage::local(Arc::clone(&shared));
    local.save("big", &value!({})).await.unwrap();
    // A small pipe: the worker side reads nothing until told.
    let (primary_end, worker_end) = tokio::io::duplex(4096);
    let (primary_link, reader) = link_over(primary_end, "worker \"w\" (#1)", ErrorKind::WorkerExited);
    reader.spawn(Arc::new(ServeStorage(StorageSession::new(
        Arc::clone(&shared),
        crate::primary::Limits::default().replicas_per_worker,
    ))));
    let (worker_link, worker_reader) = link_over(worker_end, "the primary", ErrorKind::Closed);
    let remote = Arc::new(RemoteStorage {
        link: worker_link,
        deadline: Duration::from_secs(10),
        changes: broadcast::channel(16).0,
        replicas: ReplicaRegistry::default(),
    });
    let worker = Storage::remote(Arc::clone(&remote));
    let replica =
        super::Replica::start(&remote.replicas, Arc::clone(&remote.link), Path::parse("big").unwrap());
    // Start it by hand, as `Storage::replica` does, without waiting for the (unread) answer.
    let request =
        clusterfy_core::protocol::StorageRequest::Replicate { path: "big".into(), replica: replica.id() };
    let ask = tokio::spawn({
        let link = Arc::clone(&remote.link);
        async move { link.request(Request::Storage(request), Duration::from_secs(30)).await }
    });
    // 64 KiB values, 200 of them: far more than the lag bound, all queued for a worker that
    // does not read.
    let blob = "x".repeat(64 * 1024);
    for n in 0..200 {
        local.save(&format!("big.k{}", n % 20), &format!("{n}{blob}")).await.unwrap();
    }
    let queued = primary_link.queued_len();
    assert!(queued < super::replicas::LAGGING_ABOVE + (1 << 20), "the primary queued {queued} bytes");
    // Now it reads: the lag is reported, then its branch comes again, as it stands.
    let mut changed = replica.changed();
    worker_reader.spawn(Arc::new(WorkerSide(Arc::clone(&remote))));
    ask.await.unwrap().unwrap();
    let mut saw_lag = false;
    loop {
        match futures::StreamExt::next(&mut changed).await.unwrap() {
            super::ReplicaEvent::Lagged => saw_lag = true,
            super::ReplicaEvent::Resynced { .. } => break,
            _ => {}
        }
    }
    assert!(saw_lag, "the lag was reported before the resync");
    assert!(replica.is_current());
    for k in 0..20 {
        let n = 180 + k;
        assert_eq!(replica.retrieve::<String>(&format!("big.k{k}")).unwrap(), Some(format!("{n}{blob}")));
    }
    // And its own writes show at once again.
    worker.save("big.k0", "mine").await.unwrap();
    assert_eq!(replica.retrieve::<String>("big.k0").unwrap().as_deref(), Some("mine"));
}

#[tokio::test]
async fn a_branch_and_a_commit_larger_than_a_frame_reach_the_replica_in_parts_and_show_whole() {
    let (local, remote) = local_and_remote_with_frames(TestBackend::default(), 4096).await;
    let entry = "v".repeat(200);
    let branch: BTreeMap<String, Value> =
        (0..100).map(|n| (format!("k{n}"), Value::from(entry.as_str()))).collect();
    local.save("big", &Value::Map(branch.clone())).await.unwrap();
    let replica = remote.replica("big").await.unwrap();
    assert_eq!(replica.retrieve_value("big").unwrap(), Some(Value::Map(branch)), "the snapshot came whole");
    // One commit of 100 new entries, about 25 KiB: parts again, shown at once when complete.
    let mut changed = replica.changed();
    let mut again: BTreeMap<String, Value> = (0..100).map(|n| (format!("n{n}"), Value::Int(n))).collect();
    again.insert("pad".into(), Value::from("p".repeat(2000).as_str()));
    local.save("big", &Value::Map(again.clone())).await.unwrap();
    let event = futures::StreamExt::next(&mut changed).await.unwrap();
    assert!(matches!(event, super::ReplicaEvent::Changed { .. }), "one event for the commit: {event:?}");
    assert_eq!(replica.retrieve_value("big").unwrap(), Some(Value::Map(again)));
    assert!(replica.is_current());
}

#[tokio::test]
async fn a_node_larger_than_a_frame_fails_the_replica_with_a_reason_instead_of_leaving_it_stale() {
    let (local, remote) = local_and_remote_with_frames(TestBackend::default(), 4096).await;
    local.save("big", &value!({"small": 1})).await.unwrap();
    let replica = remote.replica("big").await.unwrap();
    let mut changed = replica.changed();
    // Saved on the primary itself: no frame bounded it.
    local.save("big.huge", &"h".repeat(8192)).await.unwrap();
    let event = futures::StreamExt::next(&mut changed).await.unwrap();
    let super::ReplicaEvent::Failed { reason } = event else { panic!("{event:?}") };
    assert!(reason.contains("more than a frame holds"), "{reason}");
    let err = replica.retrieve::<i64>("big.small").unwrap_err();
    assert!(err.message().contains("Storage::retrieve"), "says what to do instead: {err}");
    assert!(!replica.is_current());
    let refused = remote.replica("big").await.unwrap_err();
    assert!(refused.message().contains("more than a frame holds"), "{refused}");
    // The worker's other reads are unaffected.
    assert_eq!(remote.retrieve::<i64>("big.small").await.unwrap(), Some(1));
}

#[tokio::test]
async fn close_lets_go_of_the_backend_while_the_storage_lives_on() {
    let (storage, backend) = storage().await;
    storage.save(&p("kept"), Value::Int(1), false).await.unwrap();
    storage.close().await;
    assert_eq!(Arc::strong_count(&backend), 1, "the closed storage still holds its backend");
    let refused = storage.save(&p("late"), Value::Int(2), false).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Closed);
    assert_eq!(storage.retrieve_value(&p("kept")).await.unwrap(), Some(Value::Int(1)));
    assert_eq!(storage.capabilities(), backend.capabilities());
}

#[tokio::test]
async fn a_replica_dropped_while_its_start_waits_in_the_queue_is_not_kept() {
    let shared = Arc::new(open(Arc::new(TestBackend::default())).await);
    let session = StorageSession::new(Arc::clone(&shared), 1);
    let (primary_end, _worker_end) = tokio::io::duplex(1 << 16);
    let (link, _reader) = link_over(primary_end, "worker \"w\" (#1)", ErrorKind::WorkerExited);
    // The worker asks for a replica and gives up on it (its request timed out) before the
    // writer got to the start: the drop arrives while the start is still queued.
    let replicate =
        |replica| clusterfy_core::protocol::StorageRequest::Replicate { path: "a".into(), replica };
    session.serve(&link, 1, replicate(1));
    session.replica_dropped(&link, 1);
    // Once a later write is answered, the writer has taken everything queued before it.
    shared.save(&p("after"), Value::Int(1), false).await.unwrap();
    assert_eq!(shared.core().replicas().len(), 0, "the dropped replica is kept and counts against the cap");
    session.serve(&link, 2, replicate(2));
    shared.save(&p("after"), Value::Int(2), false).await.unwrap();
    assert_eq!(shared.core().replicas().len(), 1, "a new replica fits under a cap of one");
}
