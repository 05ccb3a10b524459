//! The shared storage against a model, on every backend: random sequences of every operation
//! (saves, deletes, compare-and-swap, the atomic operations, a registered operation, reads), run
//! through a primary's `Storage` in groups that the writer takes in one round, give the answers
//! and the tree a plain `BTreeMap` of `Value`s gives when each operation runs alone in order.
//! A lost compare-and-swap is the one answer that depends on where the writer's round ends: it
//! is what its round leaves at its path (so its retry can win), unless that is the value it
//! expected; the round ends somewhere between it and the group's end, so any of those values
//! is right.
//! On the durable backends a step starts a new primary on the same data (sled reopened, Redis
//! loaded again), after sled's tests/tree/mod.rs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clusterfy::storage::{MemStorage, RedisMirror, SledStorage, StorageBackend};
use clusterfy::{ErrorKind, Primary, Value, from_value};
use clusterfy_test_support::redis_server::RedisServer;
use clusterfy_tests::TopScores;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

type Tree = BTreeMap<String, Value>;

#[derive(Debug, Clone)]
enum Op {
    Get(Vec<String>),
    Save {
        path: Vec<String>,
        value: Value,
        create_parents: bool,
    },
    Delete(Vec<String>),
    Cas {
        path: Vec<String>,
        expect_current: bool,
        expected: Option<Value>,
        new: Option<Value>,
    },
    Increment {
        path: Vec<String>,
        by: i64,
    },
    IncrementFloat {
        path: Vec<String>,
        by: f64,
    },
    Append {
        path: Vec<String>,
        value: Value,
    },
    RemoveValue {
        path: Vec<String>,
        value: Value,
    },
    InsertIfAbsent {
        path: Vec<String>,
        value: Value,
    },
    Take(Vec<String>),
    TopScores {
        path: Vec<String>,
        n: i64,
    },
    /// A new primary on the same data (durable backends only).
    Reopen,
}

fn segment() -> impl Strategy<Value = String> {
    // Few, similar names: collisions, prefixes ("a" / "ab") and replacements happen often.
    prop_oneof![Just("a"), Just("b"), Just("ab")].prop_map(str::to_owned)
}

fn path() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(segment(), 0..4)
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..3).prop_map(Value::Int),
        any::<i64>().prop_map(Value::Int),
        ((i64::MAX as u64 + 1)..=u64::MAX).prop_map(Value::UInt),
        (-1e9f64..1e9).prop_map(Value::Float),
        "[a-z]{0,3}".prop_map(Value::String),
        prop::collection::vec(any::<u8>(), 0..3).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            prop::collection::btree_map(segment(), inner.clone(), 0..3).prop_map(Value::Map),
            prop::collection::vec(inner, 0..2).prop_map(Value::List),
        ]
    })
}

fn op(reopen: bool) -> BoxedStrategy<Op> {
    let ops = prop_oneof![
        2 => path().prop_map(Op::Get),
        4 => (path(), value(), any::<bool>())
            .prop_map(|(path, value, create_parents)| Op::Save { path, value, create_parents }),
        1 => path().prop_map(Op::Delete),
        2 => (path(), any::<bool>(), prop::option::of(value()), prop::option::of(value()))
            .prop_map(|(path, expect_current, expected, new)| Op::Cas { path, expect_current, expected, new }),
        3 => (path(), prop_oneof![-2i64..3, any::<i64>()]).prop_map(|(path, by)| Op::Increment { path, by }),
        1 => (path(), -10f64..10.0).prop_map(|(path, by)| Op::IncrementFloat { path, by }),
        2 => (path(), value()).prop_map(|(path, value)| Op::Append { path, value }),
        1 => (path(), value()).prop_map(|(path, value)| Op::RemoveValue { path, value }),
        1 => (path(), value()).prop_map(|(path, value)| Op::InsertIfAbsent { path, value }),
        1 => path().prop_map(Op::Take),
        1 => (path(), -5i64..5).prop_map(|(path, n)| Op::TopScores { path, n }),
    ];
    if reopen { prop_oneof![20 => ops, 1 => Just(Op::Reopen)].boxed() } else { ops.boxed() }
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// What one operation answered, comparable between the storage and the model.
#[derive(Debug, PartialEq)]
enum Answer {
    Read(Option<Value>),
    Done(Result<(), ErrorKind>),
    Swapped(Result<Result<(), Option<Value>>, ErrorKind>),
    Counted(Result<i64, ErrorKind>),
    Float(Result<f64, ErrorKind>),
    Length(Result<usize, ErrorKind>),
    Inserted(Result<bool, ErrorKind>),
    Taken(Result<Option<Value>, ErrorKind>),
    Kept(Result<bool, ErrorKind>),
}

fn model_get(root: &Tree, path: &[String]) -> Option<Value> {
    let Some((last, parents)) = path.split_last() else {
        return Some(Value::Map(root.clone()));
    };
    let mut map = root;
    for segment in parents {
        match map.get(segment) {
            Some(Value::Map(inner)) => map = inner,
            _ => return None,
        }
    }
    map.get(last).cloned()
}

/// The check a save makes of `path`'s ancestors, without writing.
fn model_parents(root: &Tree, path: &[String], create_parents: bool) -> Result<(), ErrorKind> {
    let Some((_, parents)) = path.split_last() else { return Ok(()) };
    let mut map = root;
    for segment in parents {
        match map.get(segment) {
            Some(Value::Map(inner)) => map = inner,
            Some(_) => return Err(ErrorKind::InvalidInput),
            None if create_parents => return Ok(()),
            None => return Err(ErrorKind::NotFound),
        }
    }
    Ok(())
}

fn model_save(root: &mut Tree, path: &[String], value: Value, create_parents: bool) -> Result<(), ErrorKind> {
    let Some((last, parents)) = path.split_last() else {
        return match value {
            Value::Map(new_root) => {
                *root = new_root;
                Ok(())
            }
            _ => Err(ErrorKind::InvalidInput),
        };
    };
    model_parents(root, path, create_parents)?;
    let mut map = root;
    for segment in parents {
        let entry = map.entry(segment.clone()).or_insert_with(|| Value::Map(BTreeMap::new()));
        let Value::Map(inner) = entry else { unreachable!("checked above") };
        map = inner;
    }
    map.insert(last.clone(), value);
    Ok(())
}

fn model_delete(root: &mut Tree, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        let had_any = !root.is_empty();
        root.clear();
        return had_any;
    };
    let mut map = root;
    for segment in parents {
        match map.get_mut(segment) {
            Some(Value::Map(inner)) => map = inner,
            _ => return false,
        }
    }
    map.remove(last).is_some()
}

/// The leaf an atomic operation works on: the root and maps are not leaves.
fn model_leaf(root: &Tree, path: &[String]) -> Result<Option<Value>, ErrorKind> {
    if path.is_empty() {
        return Err(ErrorKind::InvalidInput);
    }
    match model_get(root, path) {
        Some(Value::Map(_)) => Err(ErrorKind::InvalidInput),
        other => Ok(other),
    }
}

/// Writes a leaf an atomic operation computed: in place, or as a save where nothing was.
fn model_put_leaf(root: &mut Tree, path: &[String], value: Value) -> Result<(), ErrorKind> {
    model_save(root, path, value, false)
}

fn model_apply(root: &mut Tree, op: Op) -> Answer {
    match op {
        Op::Get(path) => Answer::Read(model_get(root, &path)),
        Op::Save { path, value, create_parents } => {
            Answer::Done(model_save(root, &path, value, create_parents))
        }
        Op::Delete(path) => {
            model_delete(root, &path);
            Answer::Done(Ok(()))
        }
        Op::Cas { path, expected, new, .. } => {
            let current = model_get(root, &path);
            Answer::Swapped(if current != expected {
                Ok(Err(current))
            } else {
                match new {
                    Some(value) => model_save(root, &path, value, false).map(Ok),
                    None => {
                        model_delete(root, &path);
                        Ok(Ok(()))
                    }
                }
            })
        }
        Op::Increment { path, by } => Answer::Counted((|| {
            let now = match model_leaf(root, &path)? {
                None => 0,
                Some(Value::Int(n)) => n,
                Some(_) => return Err(ErrorKind::InvalidInput),
            };
            let next = now.checked_add(by).ok_or(ErrorKind::InvalidInput)?;
            model_put_leaf(root, &path, Value::Int(next))?;
            Ok(next)
        })()),
        Op::IncrementFloat { path, by } => Answer::Float((|| {
            let now = match model_leaf(root, &path)? {
                None => 0.0,
                Some(Value::Float(f)) => f,
                Some(Value::Int(n)) => n as f64,
                Some(Value::UInt(n)) => n as f64,
                Some(_) => return Err(ErrorKind::InvalidInput),
            };
            let next = now + by;
            if !next.is_finite() {
                return Err(ErrorKind::InvalidInput);
            }
            model_put_leaf(root, &path, Value::Float(next))?;
            Ok(next)
        })()),
        Op::Append { path, value } => Answer::Length((|| {
            let mut list = match model_leaf(root, &path)? {
                None => Vec::new(),
                Some(Value::List(list)) => list,
                Some(_) => return Err(ErrorKind::InvalidInput),
            };
            list.push(value);
            let len = list.len();
            model_put_leaf(root, &path, Value::List(list))?;
            Ok(len)
        })()),
        Op::RemoveValue { path, value } => Answer::Length((|| {
            let mut list = match model_leaf(root, &path)? {
                None => return Ok(0),
                Some(Value::List(list)) => list,
                Some(_) => return Err(ErrorKind::InvalidInput),
            };
            let before = list.len();
            list.retain(|item| *item != value);
            let removed = before - list.len();
            if removed > 0 {
                model_put_leaf(root, &path, Value::List(list))?;
            }
            Ok(removed)
        })()),
        Op::InsertIfAbsent { path, value } => Answer::Inserted(if model_get(root, &path).is_some() {
            Ok(false)
        } else {
            model_save(root, &path, value, false).map(|()| true)
        }),
        Op::Take(path) => {
            let current = model_get(root, &path);
            if current.is_some() {
                model_delete(root, &path);
            }
            Answer::Taken(Ok(current))
        }
        Op::TopScores { path, n } => Answer::Kept((|| {
            let current = model_get(root, &path);
            let mut scores = match current {
                None => Vec::new(),
                Some(value) => from_value::<Vec<i64>>(value).map_err(|e| e.kind())?,
            };
            scores.push(n);
            scores.sort_unstable_by(|a, b| b.cmp(a));
            scores.truncate(TOP_KEEP);
            let kept = scores.contains(&n);
            model_save(root, &path, clusterfy::to_value(&scores).map_err(|e| e.kind())?, false)?;
            Ok(kept)
        })()),
        Op::Reopen => unreachable!("handled by the runner"),
    }
}

const TOP_KEEP: usize = 2;

/// A compare-and-swap drawn to expect the current value expects what the model holds there.
fn expecting_the_current_value(op: Op, model: &Tree) -> Op {
    match op {
        Op::Cas { path, expect_current: true, new, .. } => {
            let expected = model_get(model, &path);
            Op::Cas { path, expect_current: false, expected, new }
        }
        other => other,
    }
}

fn dotted(path: &[String]) -> String {
    path.join(".")
}

fn count_nodes(map: &Tree) -> usize {
    map.values().map(|v| 1 + if let Value::Map(inner) = v { count_nodes(inner) } else { 0 }).sum()
}

// ---------------------------------------------------------------------------------------------
// Running a sequence
// ---------------------------------------------------------------------------------------------

async fn run_on_storage(storage: &clusterfy::storage::Storage, op: Op) -> Answer {
    let kind = |e: clusterfy::Error| e.kind();
    match op {
        Op::Get(path) => Answer::Read(storage.retrieve_value(&dotted(&path)).await.expect("a read")),
        Op::Save { path, value, create_parents } => {
            let path = dotted(&path);
            let saved = if create_parents {
                storage.save_with_parents(&path, &value).await
            } else {
                storage.save(&path, &value).await
            };
            Answer::Done(saved.map_err(kind))
        }
        Op::Delete(path) => Answer::Done(storage.delete(&dotted(&path)).await.map_err(kind)),
        Op::Cas { path, expected, new, .. } => Answer::Swapped(
            storage.compare_and_swap(&dotted(&path), expected.as_ref(), new.as_ref()).await.map_err(kind),
        ),
        Op::Increment { path, by } => {
            Answer::Counted(storage.increment(&dotted(&path), by).await.map_err(kind))
        }
        Op::IncrementFloat { path, by } => {
            Answer::Float(storage.increment_float(&dotted(&path), by).await.map_err(kind))
        }
        Op::Append { path, value } => {
            Answer::Length(storage.append(&dotted(&path), &value).await.map_err(kind))
        }
        Op::RemoveValue { path, value } => {
            Answer::Length(storage.remove_value(&dotted(&path), &value).await.map_err(kind))
        }
        Op::InsertIfAbsent { path, value } => {
            Answer::Inserted(storage.insert_if_absent(&dotted(&path), &value).await.map_err(kind))
        }
        Op::Take(path) => Answer::Taken(storage.take::<Value>(&dotted(&path)).await.map_err(kind)),
        Op::TopScores { path, n } => {
            Answer::Kept(storage.apply(&dotted(&path), TopScores { n, keep: TOP_KEEP }).await.map_err(kind))
        }
        Op::Reopen => unreachable!("handled by the runner"),
    }
}

/// Opens the backend of one sequence; `reopen` opens the same data again.
trait Backend {
    /// The backend, fresh for the first call of a sequence.
    fn open(&mut self) -> futures::future::BoxFuture<'_, Arc<dyn StorageBackend>>;
    /// Everything written has reached the store (the Redis mirror's queue is drained).
    fn settle<'a>(&'a self, _: &'a Arc<dyn StorageBackend>) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    /// Keys in the store, when the test can count them.
    fn count_keys<'a>(
        &'a self,
        backend: &'a Arc<dyn StorageBackend>,
    ) -> futures::future::BoxFuture<'a, usize> {
        Box::pin(async move { backend.scan_prefix(&[]).await.expect("scan").len() })
    }
}

async fn primary_on(backend: Arc<dyn StorageBackend>) -> Primary {
    Primary::builder()
        .storage(backend)
        .storage_operation::<TopScores>()
        .handle_signals(false)
        .build()
        .await
        .expect("a primary on the backend")
}

/// The answers a lost swap of a group may get, one per place its writer round may end (from the
/// swap itself to the group's last operation), as they stand in the model after the latest one.
struct LostSwap {
    at: usize,
    acceptable: Vec<Option<Value>>,
}

impl LostSwap {
    /// Adds what the swap would be answered if its round ended now.
    fn round_may_end(&mut self, sent: &[Op], wanted: &[Answer], model: &Tree) {
        let (Op::Cas { path, expected, .. }, Answer::Swapped(Ok(Err(seen)))) =
            (&sent[self.at], &wanted[self.at])
        else {
            return;
        };
        let now = model_get(model, path);
        self.acceptable.push(if now == *expected { seen.clone() } else { now });
    }

    fn accepts(&self, answer: &Answer) -> bool {
        matches!(answer, Answer::Swapped(Ok(Err(seen))) if self.acceptable.contains(seen))
    }
}

/// Runs `ops`: writes in groups of up to `round` submitted together (so the writer takes them in
/// one round), reads and reopens between groups; every answer and the whole tree after every
/// group must be the model's.
async fn run_sequence(backend: &mut dyn Backend, ops: Vec<Op>, round: usize) {
    let mut store = backend.open().await;
    let mut primary = primary_on(Arc::clone(&store)).await;
    let mut model = Tree::new();
    let mut pending: Vec<Op> = Vec::new();
    let mut ops = ops.into_iter().peekable();
    while ops.peek().is_some() || !pending.is_empty() {
        let next = ops.next();
        let group_ends = match &next {
            None | Some(Op::Get(_)) | Some(Op::Reopen) => true,
            Some(_) => pending.len() + 1 >= round,
        };
        if let Some(op) = next.clone().filter(|op| !matches!(op, Op::Get(_) | Op::Reopen)) {
            pending.push(op);
        }
        if group_ends && !pending.is_empty() {
            let storage = primary.storage();
            // Each operation of the group sees the ones before it: so does the model.
            let mut wanted = Vec::with_capacity(pending.len());
            let mut sent = Vec::with_capacity(pending.len());
            let mut lost: Vec<LostSwap> = Vec::new();
            for op in pending.drain(..) {
                let op = expecting_the_current_value(op, &model);
                let answer = model_apply(&mut model, op.clone());
                if matches!(answer, Answer::Swapped(Ok(Err(_)))) {
                    lost.push(LostSwap { at: wanted.len(), acceptable: Vec::new() });
                }
                wanted.push(answer);
                sent.push(op);
                for swap in &mut lost {
                    swap.round_may_end(&sent, &wanted, &model);
                }
            }
            let calls = sent.into_iter().map(|op| run_on_storage(&storage, op));
            let answers = futures::future::join_all(calls).await;
            for (at, (answer, want)) in answers.iter().zip(&wanted).enumerate() {
                match lost.iter().find(|swap| swap.at == at) {
                    Some(swap) => assert!(
                        swap.accepts(answer),
                        "a lost swap of a round of writes: got {answer:?}, any of {:?} would do; the round's \
                         answers {answers:?}",
                        swap.acceptable
                    ),
                    None => assert_eq!(answer, want, "a round of writes: answer {at} of {answers:?}"),
                }
            }
            let root = storage.retrieve_value("").await.expect("the root");
            assert_eq!(root, Some(Value::Map(model.clone())), "the tree after the round");
        }
        match next {
            Some(Op::Get(path)) => {
                let want = model_apply(&mut model, Op::Get(path.clone()));
                assert_eq!(run_on_storage(&primary.storage(), Op::Get(path)).await, want, "a read");
            }
            Some(Op::Reopen) => {
                backend.settle(&store).await;
                primary.shutdown(Duration::from_secs(1)).await.expect("shutdown");
                drop((primary, store));
                store = backend.open().await;
                primary = primary_on(Arc::clone(&store)).await;
                let root = primary.storage().retrieve_value("").await.expect("the root");
                assert_eq!(
                    root,
                    Some(Value::Map(model.clone())),
                    "the tree after a new primary took the data"
                );
            }
            _ => {}
        }
    }
    backend.settle(&store).await;
    // The layout itself: exactly one key per node of the model.
    assert_eq!(backend.count_keys(&store).await, count_nodes(&model), "keys in the store");
    primary.shutdown(Duration::from_secs(1)).await.expect("shutdown");
}

fn run_model(name: &str, cases: u32, reopen: bool, make: impl Fn() -> Box<dyn Backend>) {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(cases);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let strategy = (prop::collection::vec(op(reopen), 1..40), 1usize..12);
    let result = runner.run(&strategy, |(ops, round)| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let mut backend = make();
        runtime.block_on(run_sequence(backend.as_mut(), ops, round));
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{name}: the storage differs from the model: {failure}");
    }
}

struct Memory;

impl Backend for Memory {
    fn open(&mut self) -> futures::future::BoxFuture<'_, Arc<dyn StorageBackend>> {
        Box::pin(async { Arc::new(MemStorage::new()) as Arc<dyn StorageBackend> })
    }
}

struct Sled {
    dir: tempfile::TempDir,
    open: Option<Arc<SledStorage>>,
}

impl Backend for Sled {
    fn open(&mut self) -> futures::future::BoxFuture<'_, Arc<dyn StorageBackend>> {
        Box::pin(async move {
            if let Some(open) = self.open.take() {
                // Sled opens a directory once: a dropped primary must have let go of it.
                assert_eq!(Arc::strong_count(&open), 1, "the dropped primary still holds the sled database");
            }
            let sled = Arc::new(SledStorage::open(self.dir.path()).await.expect("open sled"));
            self.open = Some(Arc::clone(&sled));
            sled as Arc<dyn StorageBackend>
        })
    }
}

struct Redis {
    url: String,
    prefix: String,
    open: Option<Arc<RedisMirror>>,
}

impl Backend for Redis {
    fn open(&mut self) -> futures::future::BoxFuture<'_, Arc<dyn StorageBackend>> {
        Box::pin(async move {
            let mirror = RedisMirror::builder(&self.url).key_prefix(&self.prefix).connect().await;
            let mirror = Arc::new(mirror.expect("connect the mirror"));
            self.open = Some(Arc::clone(&mirror));
            mirror as Arc<dyn StorageBackend>
        })
    }

    fn settle<'a>(&'a self, _: &'a Arc<dyn StorageBackend>) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(mirror) = &self.open {
                mirror.wait_mirrored().await.expect("mirrored");
            }
        })
    }
}

#[test]
fn every_operation_on_memory_matches_the_model() {
    run_model("memory", 256, false, || Box::new(Memory));
}

#[test]
fn every_operation_on_sled_with_reopens_matches_the_model() {
    run_model("sled", 64, true, || {
        Box::new(Sled { dir: tempfile::tempdir().expect("temp dir"), open: None })
    });
}

#[test]
fn every_operation_on_the_redis_mirror_with_reloads_matches_the_model() {
    let Some(server) =
        RedisServer::start_or_skip("every_operation_on_the_redis_mirror_with_reloads_matches_the_model")
    else {
        return;
    };
    let sequence = std::sync::atomic::AtomicU64::new(0);
    run_model("redis mirror", 32, true, || {
        let n = sequence.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::new(Redis { url: server.url().to_owned(), prefix: format!("model-{n}"), open: None })
    });
}
