//! The writer task of a [`SharedStorage`](super::SharedStorage): it takes every write (and the
//! workers' reads) in arrival order, and applies whatever is queued as one backend batch with at
//! most one flush. Write combining at the tree level, and group commit for durable backends.
//!
//! Each write is still atomic and fails alone: a save whose parent is missing is answered at once
//! while the rest of its round goes on. A write whose checks read keys that an earlier write of
//! the same round changes (a save below a map saved just before) first has the round so far
//! applied, so every check reads what the writes before it left.

use std::collections::HashSet;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use clusterfy_core::{BatchOp, Error, Path, Result, Value, WireError};
use tokio::sync::mpsc;

use super::tree::{Tree, key_of};

/// Most jobs taken in one round: enough to batch hundreds of writes in flight, few enough that a
/// round's replies do not wait long.
const ROUND_JOBS: usize = 1024;

/// What the writer does for a caller.
#[derive(Debug)]
pub(crate) enum Op {
    /// Read `path` (for a worker: in order with its writes).
    Get(Path),
    /// [`SharedStorage::save`](super::SharedStorage::save).
    Save {
        /// Where.
        path: Path,
        /// What.
        value: Value,
        /// Whether missing parent maps are created.
        create_parents: bool,
    },
    /// [`SharedStorage::delete`](super::SharedStorage::delete).
    Delete(Path),
    /// [`SharedStorage::compare_and_swap`](super::SharedStorage::compare_and_swap).
    CompareAndSwap {
        /// Where.
        path: Path,
        /// The value that must be there (`None`: nothing).
        expected: Option<Value>,
        /// What to write if so (`None`: delete).
        new: Option<Value>,
    },
    /// [`SharedStorage::initialize`](super::SharedStorage::initialize).
    Initialize(Value),
}

impl Op {
    /// Its name in snake case, for metrics.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Op::Get(_) => "get",
            Op::Save { .. } => "save",
            Op::Delete(_) => "delete",
            Op::CompareAndSwap { .. } => "compare_and_swap",
            Op::Initialize(_) => "initialize",
        }
    }
}

/// How an [`Op`] ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Written (a save or an initialisation).
    Done,
    /// A delete, and whether it removed anything.
    Removed(bool),
    /// A read.
    Value(Option<Value>),
    /// A compare-and-swap: `Err(current)` when it lost.
    Swapped(std::result::Result<(), Option<Value>>),
}

/// Hears the outcome of one job, once: a channel to a local caller, or a reply to a worker.
pub(crate) type Completion = Box<dyn FnOnce(Result<Outcome>) + Send>;

/// One job for the writer.
pub(crate) struct Job {
    pub(crate) op: Op,
    pub(crate) done: Completion,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job").field("op", &self.op).finish_non_exhaustive()
    }
}

/// Takes jobs until every sender is gone.
pub(super) async fn run(tree: Arc<Tree>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut taken = Vec::with_capacity(ROUND_JOBS);
    while jobs.recv_many(&mut taken, ROUND_JOBS).await > 0 {
        crate::metrics::storage_queue_depth(taken.len());
        let mut round = Round::default();
        for job in taken.drain(..) {
            round.take(&tree, job).await;
        }
        round.finish(&tree).await;
    }
}

/// A write whose operations are in the round's batch, waiting to be answered.
struct Staged {
    /// Announced to watchers once the write is durable.
    path: Path,
    outcome: Outcome,
    done: Completion,
}

/// The writes of one round.
#[derive(Default)]
struct Round {
    /// Operations not yet given to the backend.
    pending: Vec<BatchOp>,
    /// Keys of the paths that `pending` replaces or creates: a check that reads one of them must
    /// wait until `pending` is applied.
    touched: HashSet<Vec<u8>, BuildHasherDefault<Fnv>>,
    /// Writes whose operations are in `pending`.
    staged: Vec<Staged>,
    /// Writes applied to the backend, answered after the round's flush.
    applied: Vec<Staged>,
}

impl Round {
    async fn take(&mut self, tree: &Tree, Job { op, done }: Job) {
        match op {
            Op::Get(path) => {
                self.settle_around(tree, &key_of(&path)).await;
                done(tree.get(&path).await.map(Outcome::Value));
            }
            Op::Save { path, value, create_parents } => {
                let key = key_of(&path);
                if self.touches_an_ancestor(&key) {
                    self.apply(tree).await;
                }
                match tree.plan_save(&path, &key, value, create_parents).await {
                    Ok(ops) => self.stage(path, key, ops, Outcome::Done, done),
                    Err(err) => done(Err(err)),
                }
            }
            Op::Delete(path) => {
                let key = key_of(&path);
                self.settle_around(tree, &key).await;
                match tree.exists(&path).await {
                    Ok(true) => {
                        let ops = Tree::plan_delete(&key);
                        self.stage(path, key, ops, Outcome::Removed(true), done);
                    }
                    Ok(false) => done(Ok(Outcome::Removed(false))),
                    Err(err) => done(Err(err)),
                }
            }
            Op::CompareAndSwap { path, expected, new } => {
                let key = key_of(&path);
                self.settle_around(tree, &key).await;
                let current = match tree.get(&path).await {
                    Ok(current) => current,
                    Err(err) => return done(Err(err)),
                };
                if current != expected {
                    return done(Ok(Outcome::Swapped(Err(current))));
                }
                let ops = match new {
                    Some(value) => tree.plan_save(&path, &key, value, false).await,
                    // Nothing there and nothing wanted: the swap holds without a write.
                    None if current.is_none() => return done(Ok(Outcome::Swapped(Ok(())))),
                    None => Ok(Tree::plan_delete(&key)),
                };
                match ops {
                    Ok(ops) => self.stage(path, key, ops, Outcome::Swapped(Ok(())), done),
                    Err(err) => done(Err(err)),
                }
            }
            Op::Initialize(initial) => {
                self.apply(tree).await;
                // The contract has no "is empty" call; a scan of everything is fine once at start-up.
                let root = Path::root();
                match tree.exists(&root).await {
                    Ok(true) => done(Ok(Outcome::Done)),
                    Ok(false) => match tree.plan_save(&root, &[], initial, false).await {
                        Ok(ops) => self.stage(root, Vec::new(), ops, Outcome::Done, done),
                        Err(err) => done(Err(err)),
                    },
                    Err(err) => done(Err(err)),
                }
            }
        }
    }

    /// Adds a write's operations to the batch; `key` is the key of `path`.
    fn stage(&mut self, path: Path, key: Vec<u8>, ops: Vec<BatchOp>, outcome: Outcome, done: Completion) {
        // The parents the batch creates: the puts of keys above the path.
        for op in &ops {
            if let BatchOp::Put { key: put, .. } = op
                && put.len() < key.len()
                && key.starts_with(put)
            {
                self.touched.insert(put.clone());
            }
        }
        self.touched.insert(key);
        self.pending.extend(ops);
        self.staged.push(Staged { path, outcome, done });
    }

    /// Whether the batch changes a key above the path whose key is `key`, which a save's parent
    /// check reads.
    fn touches_an_ancestor(&self, key: &[u8]) -> bool {
        if self.touched.is_empty() {
            return false;
        }
        // The root's key is empty; every other ancestor's ends at one of the key's NULs but the last.
        let last = key.len().saturating_sub(1);
        self.touched.contains(&[][..])
            || key[..last]
                .iter()
                .enumerate()
                .any(|(at, &byte)| byte == 0 && self.touched.contains(&key[..=at]))
    }

    /// Applies the batch so far if it changes anything on the branch of the path whose key is
    /// `key` (above, at or below it), which a read of that path must see.
    async fn settle_around(&mut self, tree: &Tree, key: &[u8]) {
        if self.touched.iter().any(|touched| touched.starts_with(key) || key.starts_with(touched)) {
            self.apply(tree).await;
        }
    }

    /// Gives the batch so far to the backend; its writes are answered after the flush.
    async fn apply(&mut self, tree: &Tree) {
        if self.pending.is_empty() {
            return;
        }
        self.touched.clear();
        let ops = std::mem::take(&mut self.pending);
        match tree.backend.apply_batch(ops).await {
            Ok(()) => self.applied.append(&mut self.staged),
            Err(err) => fail_all(self.staged.drain(..), &err),
        }
    }

    /// Applies what is left, makes it durable, announces the changes and answers every write.
    async fn finish(mut self, tree: &Tree) {
        self.apply(tree).await;
        if self.applied.is_empty() {
            return;
        }
        if tree.durable
            && let Err(err) = tree.backend.flush().await
        {
            return fail_all(self.applied.into_iter(), &err);
        }
        for staged in self.applied {
            tree.announce(&staged.path);
            (staged.done)(Ok(staged.outcome));
        }
    }
}

/// Answers every write of a failed batch or flush with that failure.
fn fail_all(writes: impl Iterator<Item = Staged>, err: &Error) {
    for staged in writes {
        // The same failure for each: kind, message and context (the source as text).
        (staged.done)(Err(Error::from(WireError::from(err))));
    }
}

/// FNV-1a, for the round's set of touched keys: short keys, and a round holds at most
/// [`ROUND_JOBS`] writes, so even keys crafted to collide cost little; SipHash cost more than the
/// rest of a save's bookkeeping.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}
