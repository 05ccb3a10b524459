//! The tree semantics of the shared storage (dotted paths, subtrees, parents that must exist),
//! implemented once on top of any [`StorageBackend`] so that every backend behaves the same.
//!
//! # Layout in the backend
//!
//! A value is stored one node per key, so a subtree can be read with one prefix scan and replaced
//! with one atomic batch.
//!
//! - The key of a path is each segment's UTF-8 bytes followed by a `0x00` byte: `a.b` is `a\0b\0`.
//!   Segments never contain NUL, so the key of `a.b` is a prefix of exactly the keys of `a.b` and
//!   its descendants (not of `a.bc`, whose key is `a\0bc\0`), and the root is the empty prefix.
//! - The value of a key is the postcard encoding of a node: either "map" (a marker, so that empty
//!   maps exist) or "leaf" with a [`Value`] that is not a map. A map value is stored as a map node
//!   plus one node per entry, recursively; lists and scalars are leaves, whatever they contain.
//! - The root map is implicit: it has no key and always exists.
//!
//! Durable backends keep this layout across restarts, so it is a storage format: change it only
//! together with a migration.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::sync::Arc;

use clusterfy_core::error::excerpt;
use clusterfy_core::path::{MAX_DEPTH, MAX_SEGMENT_LEN};
use clusterfy_core::{BatchOp, Error, ErrorKind, Path, Result, StorageBackend, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::writer::{self, Completion, Job, Op, Outcome};

/// What one key of the backend holds. Variants are append-only: durable backends keep old bytes.
#[derive(Debug, Serialize, Deserialize)]
enum Node {
    /// A map; its entries are the nodes one segment below.
    Map,
    /// Any value other than a map.
    Leaf(Value),
}

/// The shared storage as workers and the primary see it: a tree of [`Value`]s addressed by dotted
/// [`Path`]s, stored in a key-value [`StorageBackend`].
///
/// Reads go straight to the backend: a subtree is one prefix scan, which the backend contract makes
/// atomic with respect to batches. Writes (save, delete, compare-and-swap) read before they write,
/// so one writer task takes them all, in the order they arrive, and applies what is queued as one
/// backend batch with at most one flush (write combining; see `writer.rs`). Give each backend
/// exactly one `SharedStorage` (share it with an `Arc`), and do not write to the backend behind
/// its back.
///
/// On a durable backend every write returns only after [`StorageBackend::flush`], and the writes
/// that queued meanwhile share that flush.
#[derive(Debug)]
pub struct SharedStorage {
    tree: Arc<Tree>,
    writes: mpsc::UnboundedSender<Job>,
}

/// The tree over the backend: what the writer task and readers share.
#[derive(Debug)]
pub(super) struct Tree {
    pub(super) backend: Arc<dyn StorageBackend>,
    pub(super) durable: bool,
    changes: tokio::sync::broadcast::Sender<Path>,
}

/// Changes buffered per watcher; one that falls further behind is told the root changed.
const CHANGE_BUFFER: usize = 4096;

impl SharedStorage {
    /// Tree semantics over `backend`, which is used as it is: existing data stays. Starts the
    /// writer task, so it must be called within a tokio runtime.
    pub fn new(backend: Arc<dyn StorageBackend>) -> Self {
        let durable = backend.capabilities().durable;
        let (changes, _) = tokio::sync::broadcast::channel(CHANGE_BUFFER);
        let tree = Arc::new(Tree { backend, durable, changes });
        let (writes, jobs) = mpsc::unbounded_channel();
        tokio::spawn(writer::run(Arc::clone(&tree), jobs));
        SharedStorage { tree, writes }
    }

    /// The paths written from now on (saved, deleted or swapped), in write order. A write at
    /// `p` changes `p`'s subtree, so a watcher of `w` cares when `p` and `w` are on one branch.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<Path> {
        self.tree.changes.subscribe()
    }

    /// The backend underneath, for flushing or inspecting its capabilities.
    pub fn backend(&self) -> &Arc<dyn StorageBackend> {
        &self.tree.backend
    }

    /// Hands `op` to the writer task; `done` hears the outcome.
    pub(crate) fn submit(&self, op: Op, done: Completion) {
        if let Err(mpsc::error::SendError(job)) = self.writes.send(Job { op, done }) {
            // The task only ends when this value is dropped, so this cannot happen while `self`
            // lives; answer anyway rather than leave the caller waiting.
            (job.done)(Err(Error::new(ErrorKind::Closed, "the storage's writer task has stopped")));
        }
    }

    /// Runs `op` through the writer task and waits for its outcome.
    async fn write(&self, op: Op) -> Result<Outcome> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(op, Box::new(move |outcome| drop(tx.send(outcome))));
        rx.await.map_err(|_| Error::new(ErrorKind::Closed, "the storage's writer task dropped a write"))?
    }

    /// Saves `initial` as the whole storage if the backend holds nothing yet, and does nothing
    /// otherwise, so that durable backends keep their state across restarts instead of being reset
    /// to the initial value. `initial` must be a [`Value::Map`] ([`ErrorKind::InvalidInput`]
    /// otherwise).
    ///
    /// An emptied storage counts as empty: after a restart it is initialised again.
    pub async fn initialize(&self, initial: Value) -> Result<()> {
        if !matches!(initial, Value::Map(_)) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "the initial storage must be a map, not {}; pass a map of the top-level keys",
                    initial.kind_phrase()
                ),
            ));
        }
        self.write(Op::Initialize(initial)).await.map(drop)
    }

    /// The value at `path`: a map path returns its whole subtree as a [`Value::Map`], a missing
    /// path (or one below a non-map) is `Ok(None)`, and the root is always a map, maybe empty.
    ///
    /// Fails with [`ErrorKind::Storage`] if the backend holds data this layout never writes.
    pub async fn get(&self, path: &Path) -> Result<Option<Value>> {
        self.tree.get(path).await
    }

    /// Replaces the value or subtree at `path` with `value`, atomically: readers and crashes see
    /// the old or the new subtree, never a mix.
    ///
    /// The parent of `path` must be an existing map. A missing parent fails with
    /// [`ErrorKind::NotFound`] naming the first missing prefix, unless `create_parents` is true,
    /// in which case the missing maps are created in the same atomic write. A parent or ancestor
    /// that holds something other than a map is never overwritten: that fails with
    /// [`ErrorKind::InvalidInput`]. The root can only be replaced by a map, and map keys must be
    /// valid path segments so that every stored value stays addressable.
    pub async fn save(&self, path: &Path, value: Value, create_parents: bool) -> Result<()> {
        self.write(Op::Save { path: path.clone(), value, create_parents }).await.map(drop)
    }

    /// Removes the value or subtree at `path` atomically. Returns whether anything was removed:
    /// deleting a missing path is `Ok(false)`. Deleting the root empties the storage.
    pub async fn delete(&self, path: &Path) -> Result<bool> {
        match self.write(Op::Delete(path.clone())).await? {
            Outcome::Removed(removed) => Ok(removed),
            other => Err(unexpected_outcome(&other)),
        }
    }

    /// Replaces the value at `path` with `new` (`None` deletes it) only if the current value, the
    /// whole subtree for a map, equals `expected` (`None` means absent). A lost race is not an
    /// error: it returns `Ok(Err(current))` and writes nothing, so the caller can retry with it.
    ///
    /// The root's current value is always a map, so `expected: None` never matches there. Writing
    /// `new` follows [`SharedStorage::save`] without creating parents. `Value` equality is used, so
    /// a NaN float never equals anything, itself included.
    pub async fn compare_and_swap(
        &self,
        path: &Path,
        expected: Option<&Value>,
        new: Option<Value>,
    ) -> Result<Result<(), Option<Value>>> {
        let op = Op::CompareAndSwap { path: path.clone(), expected: expected.cloned(), new };
        match self.write(op).await? {
            Outcome::Swapped(outcome) => Ok(outcome),
            other => Err(unexpected_outcome(&other)),
        }
    }
}

fn unexpected_outcome(outcome: &Outcome) -> Error {
    Error::new(ErrorKind::InvalidState, format!("the storage's writer answered with {outcome:?}"))
}

impl Tree {
    /// After the writes at `paths` are applied and durable: tell watchers.
    pub(super) fn announce(&self, path: &Path) {
        if self.changes.receiver_count() > 0 {
            let _ = self.changes.send(path.clone());
        }
    }

    /// See [`SharedStorage::get`].
    pub(super) async fn get(&self, path: &Path) -> Result<Option<Value>> {
        let prefix = key_of(path);
        let entries = self.backend.scan_prefix(&prefix).await?;
        decode_subtree(path, &prefix, entries)
    }

    /// Whether anything is stored at `path`. Every map and leaf has a key of its own, so one
    /// lookup answers, except at the root, which has none.
    pub(super) async fn exists(&self, path: &Path) -> Result<bool> {
        if path.is_root() {
            return Ok(!self.backend.scan_prefix(&[]).await?.is_empty());
        }
        Ok(self.backend.get(&key_of(path)).await?.is_some())
    }

    /// The batch that saves `value` at `path` (see [`SharedStorage::save`]): create missing
    /// parents if asked, remove the old subtree, put the new nodes. It reads only the ancestors.
    /// `key` is [`key_of`]`(path)`, which the caller has at hand.
    pub(super) async fn plan_save(
        &self,
        path: &Path,
        key: &[u8],
        value: Value,
        create_parents: bool,
    ) -> Result<Vec<BatchOp>> {
        if path.is_root() && !matches!(value, Value::Map(_)) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "cannot save {} at the root: the root of the storage is always a map; \
                     save a map, or save the value at a path such as \"config\"",
                    value.kind_phrase()
                ),
            )
            .with_context("path", path));
        }
        // Encode first: an unstorable value fails before any backend round trip.
        let new_nodes = Encoder::encode(path, key.to_vec(), value)?;
        let mut ops = self.missing_parents(path, create_parents).await?;
        ops.push(BatchOp::DeletePrefix { prefix: key.to_vec() });
        // After the delete, so that keys the new subtree shares with the old one end up written.
        ops.extend(new_nodes);
        Ok(ops)
    }

    /// The batch that removes the path whose key is `key`, and everything below it.
    pub(super) fn plan_delete(key: &[u8]) -> Vec<BatchOp> {
        vec![BatchOp::DeletePrefix { prefix: key.to_vec() }]
    }

    /// Checks the ancestors of `path`, outermost first, and returns the puts that create the
    /// missing ones (none unless `create_parents`). Errors if one is missing and may not be
    /// created, or exists but is not a map.
    async fn missing_parents(&self, path: &Path, create_parents: bool) -> Result<Vec<BatchOp>> {
        let mut ops = Vec::new();
        let Some(parent) = path.parent() else {
            return Ok(ops);
        };
        let mut key = Vec::new();
        let mut dotted = String::new();
        for segment in parent.segments() {
            push_segment(&mut key, segment);
            push_dotted(&mut dotted, segment);
            // Below a missing map nothing else can exist, so no more lookups are needed.
            if ops.is_empty() {
                match self.backend.get(&key).await? {
                    Some(bytes) => match decode_node(&bytes) {
                        Ok(Node::Map) => continue,
                        Ok(Node::Leaf(value)) => {
                            return Err(Error::new(
                                ErrorKind::InvalidInput,
                                format!(
                                    "cannot save {}: {} holds {}, not a map; only maps have \
                                     children, so delete or replace {} first",
                                    describe(path.as_str()),
                                    describe(&dotted),
                                    value.kind_phrase(),
                                    describe(&dotted),
                                ),
                            )
                            .with_context("path", path)
                            .with_context("prefix", &dotted));
                        }
                        Err(why) => return Err(corrupt(path, &key, why)),
                    },
                    None if create_parents => {}
                    None => {
                        return Err(Error::new(
                            ErrorKind::NotFound,
                            format!(
                                "cannot save {}: {} does not exist; save the parent map first \
                                 or ask to create parents",
                                describe(path.as_str()),
                                describe(&dotted),
                            ),
                        )
                        .with_context("path", path)
                        .with_context("prefix", &dotted));
                    }
                }
            }
            ops.push(BatchOp::Put { key: key.clone(), value: encode_node(&Node::Map, path)? });
        }
        Ok(ops)
    }
}

/// Turns a value to save into the puts of its nodes, checking map keys and depth on the way.
struct Encoder<'p> {
    path: &'p Path,
    ops: Vec<BatchOp>,
    // Key of the node being encoded; extended and truncated while recursing.
    key: Vec<u8>,
}

impl Encoder<'_> {
    /// `key` is the key of `path`.
    fn encode(path: &Path, key: Vec<u8>, value: Value) -> Result<Vec<BatchOp>> {
        match value {
            // The common case, one leaf: its node takes the key as it is.
            Value::Map(_) => {}
            leaf => return Ok(vec![BatchOp::Put { key, value: encode_node(&Node::Leaf(leaf), path)? }]),
        }
        let depth = path.segments().count();
        let mut encoder = Encoder { path, ops: Vec::new(), key };
        match value {
            // The root map has no node of its own.
            Value::Map(entries) if path.is_root() => encoder.entries(entries, depth)?,
            value => encoder.node(value, depth)?,
        }
        Ok(encoder.ops)
    }

    /// The dotted path of the node being encoded, for messages.
    fn dotted(&self) -> String {
        String::from_utf8_lossy(self.key.strip_suffix(&[0]).unwrap_or_default()).replace('\0', ".")
    }

    fn node(&mut self, value: Value, depth: usize) -> Result<()> {
        match value {
            Value::Map(entries) => {
                self.ops
                    .push(BatchOp::Put { key: self.key.clone(), value: encode_node(&Node::Map, self.path)? });
                self.entries(entries, depth)
            }
            leaf => {
                let bytes = encode_node(&Node::Leaf(leaf), self.path)?;
                self.ops.push(BatchOp::Put { key: self.key.clone(), value: bytes });
                Ok(())
            }
        }
    }

    fn entries(&mut self, entries: BTreeMap<String, Value>, depth: usize) -> Result<()> {
        for (name, value) in entries {
            if !Path::is_valid_segment(&name) {
                return Err(self.refuse(format!(
                    "the map at {} has the key {:?}, which no path can address; keys must be \
                     non-empty, at most {MAX_SEGMENT_LEN} bytes, contain neither '.' nor NUL, and \
                     not start or end with whitespace",
                    describe(&self.dotted()),
                    excerpt(&name),
                )));
            }
            if depth + 1 > MAX_DEPTH {
                return Err(self.refuse(format!(
                    "maps nest deeper than {MAX_DEPTH} levels below the root at {}; flatten the value",
                    describe(&self.dotted())
                )));
            }
            let key_len = self.key.len();
            push_segment(&mut self.key, &name);
            self.node(value, depth + 1)?;
            self.key.truncate(key_len);
        }
        Ok(())
    }

    fn refuse(&self, why: String) -> Error {
        Error::new(ErrorKind::InvalidInput, format!("cannot save {}: {why}", describe(self.path.as_str())))
            .with_context("path", self.path)
    }
}

/// A subtree while it is rebuilt from a scan; keeps map nodes apart from leaves.
enum Built {
    Map(BTreeMap<String, Built>),
    Leaf(Value),
}

impl Built {
    fn into_value(self) -> Value {
        match self {
            // Recursion depth is bounded by MAX_DEPTH, checked when the keys were split.
            Built::Map(entries) => {
                Value::Map(entries.into_iter().map(|(k, v)| (k, v.into_value())).collect())
            }
            Built::Leaf(value) => value,
        }
    }
}

/// Rebuilds the value at `path` from the scan of its prefix. Anything this layout never writes is
/// reported as [`ErrorKind::Storage`] rather than guessed around.
fn decode_subtree(path: &Path, prefix: &[u8], entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Option<Value>> {
    let depth = path.segments().count();
    let mut top = path.is_root().then(|| Built::Map(BTreeMap::new()));
    for (key, bytes) in entries {
        let Some(rest) = key.strip_prefix(prefix) else {
            return Err(corrupt(path, &key, "the backend's prefix scan returned a key outside the prefix"));
        };
        let Some(segments) = split_segments(rest) else {
            return Err(corrupt(path, &key, "the key is not a sequence of NUL-terminated path segments"));
        };
        if depth + segments.len() > MAX_DEPTH {
            return Err(corrupt(path, &key, format!("the key is deeper than {MAX_DEPTH} segments")));
        }
        let node = match decode_node(&bytes) {
            Ok(Node::Map) => Built::Map(BTreeMap::new()),
            Ok(Node::Leaf(Value::Map(_))) => {
                return Err(corrupt(path, &key, "a leaf node holds a map (maps are stored as map nodes)"));
            }
            Ok(Node::Leaf(value)) => Built::Leaf(value),
            Err(why) => return Err(corrupt(path, &key, why)),
        };
        let Some((last, parents)) = segments.split_last() else {
            if top.is_some() {
                let why = if path.is_root() {
                    "a node is stored under the empty key, but the root map has no key"
                } else {
                    "the prefix scan returned the key twice"
                };
                return Err(corrupt(path, &key, why));
            }
            top = Some(node);
            continue;
        };
        let mut map = match &mut top {
            Some(Built::Map(map)) => map,
            Some(Built::Leaf(_)) => return Err(corrupt(path, &key, "the key lies below a leaf value")),
            None => return Err(corrupt(path, &key, "the key's parent map is missing")),
        };
        for segment in parents {
            map = match map.get_mut(*segment) {
                Some(Built::Map(map)) => map,
                Some(Built::Leaf(_)) => return Err(corrupt(path, &key, "the key lies below a leaf value")),
                // Also what an out-of-order scan looks like: parents sort before their children.
                None => return Err(corrupt(path, &key, "the key's parent map is missing")),
            };
        }
        match map.entry((*last).to_owned()) {
            Entry::Vacant(slot) => {
                slot.insert(node);
            }
            Entry::Occupied(_) => return Err(corrupt(path, &key, "the prefix scan returned the key twice")),
        }
    }
    Ok(top.map(Built::into_value))
}

/// The backend key of `path`: every segment followed by NUL; empty for the root.
pub(super) fn key_of(path: &Path) -> Vec<u8> {
    let dotted = path.as_str().as_bytes();
    if dotted.is_empty() {
        return Vec::new();
    }
    // Segments hold neither `.` nor NUL, so turning every dot into NUL and ending with one is
    // the same as writing each segment and its NUL.
    let mut key = Vec::with_capacity(dotted.len() + 1);
    key.extend(dotted.iter().map(|&byte| if byte == b'.' { 0 } else { byte }));
    key.push(0);
    key
}

fn push_segment(key: &mut Vec<u8>, segment: &str) {
    key.extend_from_slice(segment.as_bytes());
    key.push(0);
}

fn push_dotted(dotted: &mut String, segment: &str) {
    if !dotted.is_empty() {
        dotted.push('.');
    }
    dotted.push_str(segment);
}

/// Whether `segment` can be a segment of a stored key. Laxer than [`Path::is_valid_segment`],
/// which new writes follow: keys with a segment that starts or ends with whitespace were
/// written before paths refused those, and stay readable.
fn is_stored_segment(segment: &str) -> bool {
    !segment.is_empty() && segment.len() <= MAX_SEGMENT_LEN && !segment.contains(['.', '\0'])
}

/// The segments of a key below a prefix; `None` if the bytes are not what [`key_of`] writes.
fn split_segments(rest: &[u8]) -> Option<Vec<&str>> {
    if rest.is_empty() {
        return Some(Vec::new());
    }
    rest.strip_suffix(&[0])?
        .split(|byte| *byte == 0)
        .map(|segment| std::str::from_utf8(segment).ok().filter(|s| is_stored_segment(s)))
        .collect()
}

fn encode_node(node: &Node, path: &Path) -> Result<Vec<u8>> {
    // Most nodes are small: one right-sized allocation rather than growing from empty.
    postcard::to_extend(node, Vec::with_capacity(64)).map_err(|err| {
        Error::new(
            ErrorKind::Serialization,
            format!("cannot encode the value saved at {}: {err}", describe(path.as_str())),
        )
        .with_context("path", path)
        .with_source(err)
    })
}

fn decode_node(bytes: &[u8]) -> Result<Node, String> {
    match postcard::take_from_bytes::<Node>(bytes) {
        Ok((node, [])) => Ok(node),
        Ok((_, rest)) => Err(format!("the node has {} unexpected trailing bytes", rest.len())),
        Err(err) => Err(format!("the node does not decode: {err}")),
    }
}

fn corrupt(path: &Path, key: &[u8], why: impl fmt::Display) -> Error {
    Error::new(
        ErrorKind::Storage,
        format!(
            "cannot read {}: the backend key {:?} holds data clusterfy never writes ({why}); the storage \
             is corrupt or was written by something else: delete or repair that key",
            describe(path.as_str()),
            excerpt(&String::from_utf8_lossy(key))
        ),
    )
    .with_context("path", path)
}

/// A dotted path for messages: quoted (and cut after about a hundred bytes), or "the root".
fn describe(dotted: &str) -> String {
    if dotted.is_empty() { "the root".to_owned() } else { format!("{:?}", excerpt(dotted)) }
}

#[cfg(test)]
// A failed unwrap is the clearest failure report a test can give.
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;
    use clusterfy_core::Capabilities;
    use proptest::prelude::*;

    use super::*;

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

    fn storage() -> (SharedStorage, Arc<TestBackend>) {
        let backend = Arc::new(TestBackend::default());
        (SharedStorage::new(backend.clone()), backend)
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
        let (storage, _) = storage();
        storage.save(&p("test"), map([("some", Value::Int(1))]), false).await.unwrap();
        storage.save(&p("test.other"), map([("deep", s("x"))]), false).await.unwrap();
        storage.save(&p("test.some"), Value::Int(2), false).await.unwrap();
        assert_eq!(storage.get(&p("test.some")).await.unwrap(), Some(Value::Int(2)));
        assert_eq!(storage.get(&p("test.other.deep")).await.unwrap(), Some(s("x")));
        assert_eq!(
            storage.get(&p("test")).await.unwrap(),
            Some(map([("other", map([("deep", s("x"))])), ("some", Value::Int(2))]))
        );
        assert_eq!(storage.get(&p("test.missing")).await.unwrap(), None);
        assert_eq!(storage.get(&p("nothing.at.all")).await.unwrap(), None);
        // Below a leaf there is nothing, and that is not an error either.
        assert_eq!(storage.get(&p("test.some.below")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn keys_are_nul_terminated_segments_one_node_per_key() {
        let (storage, backend) = storage();
        storage.save(&p("a"), map([("b", Value::Int(1)), ("c", empty())]), false).await.unwrap();
        assert_eq!(raw_keys(&backend), [&b"a\0"[..], b"a\0b\0", b"a\0c\0"]);
    }

    #[tokio::test]
    async fn saving_a_subtree_replaces_old_children() {
        let (storage, backend) = storage();
        storage
            .save(&p("a"), map([("old", map([("x", Value::Int(1))])), ("kept", Value::Int(1))]), false)
            .await
            .unwrap();
        storage.save(&p("a"), map([("kept", Value::Int(2)), ("new", Value::Null)]), false).await.unwrap();
        assert_eq!(
            storage.get(&p("a")).await.unwrap(),
            Some(map([("kept", Value::Int(2)), ("new", Value::Null)]))
        );
        assert_eq!(raw_keys(&backend), [&b"a\0"[..], b"a\0kept\0", b"a\0new\0"]);
        // A leaf replacing a map leaves no children behind either.
        storage.save(&p("a"), Value::Bool(true), false).await.unwrap();
        assert_eq!(raw_keys(&backend), [b"a\0"]);
        assert_eq!(storage.get(&p("a.kept")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn save_under_missing_parent_names_the_missing_prefix() {
        let (storage, backend) = storage();
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
        let (storage, _) = storage();
        storage.save(&p("a"), map([("keep", Value::Int(1))]), false).await.unwrap();
        storage.save(&p("a.b.c.d"), Value::Int(4), true).await.unwrap();
        assert_eq!(
            storage.get(&p("")).await.unwrap(),
            Some(map([(
                "a",
                map([("b", map([("c", map([("d", Value::Int(4))]))])), ("keep", Value::Int(1))])
            )]))
        );
        // Existing parents are left as they are.
        storage.save(&p("a.b.e"), Value::Int(5), true).await.unwrap();
        assert_eq!(storage.get(&p("a.b.c.d")).await.unwrap(), Some(Value::Int(4)));
        assert_eq!(storage.get(&p("a.keep")).await.unwrap(), Some(Value::Int(1)));
    }

    #[tokio::test]
    async fn save_below_a_leaf_is_refused_and_keeps_the_leaf() {
        let (storage, _) = storage();
        storage.save(&p("a"), map([("b", s("text"))]), false).await.unwrap();
        for create_parents in [false, true] {
            for below in ["a.b.c", "a.b.c.d"] {
                let err = storage.save(&p(below), Value::Int(1), create_parents).await.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
                assert!(err.message().contains("\"a.b\" holds a string, not a map"), "{err}");
                assert_eq!(err.context_value("prefix"), Some("a.b"));
            }
        }
        assert_eq!(storage.get(&p("a.b")).await.unwrap(), Some(s("text")));
    }

    #[tokio::test]
    async fn delete_removes_the_whole_subtree() {
        let (storage, backend) = storage();
        storage
            .save(&p("a"), map([("b", map([("c", Value::Int(1))])), ("d", Value::Int(2))]), false)
            .await
            .unwrap();
        assert!(storage.delete(&p("a.b")).await.unwrap());
        assert_eq!(storage.get(&p("a.b")).await.unwrap(), None);
        assert_eq!(storage.get(&p("a.b.c")).await.unwrap(), None);
        assert_eq!(raw_keys(&backend), [&b"a\0"[..], b"a\0d\0"]);
        assert!(storage.delete(&p("a.d")).await.unwrap());
        assert_eq!(storage.get(&p("a")).await.unwrap(), Some(empty()));
    }

    #[tokio::test]
    async fn delete_of_missing_path_is_ok_false() {
        let (storage, _) = storage();
        assert!(!storage.delete(&p("nothing")).await.unwrap());
        storage.save(&p("a"), Value::Int(1), false).await.unwrap();
        assert!(!storage.delete(&p("a.below.leaf")).await.unwrap());
        assert!(!storage.delete(&p("b")).await.unwrap());
        assert_eq!(storage.get(&p("a")).await.unwrap(), Some(Value::Int(1)));
    }

    #[tokio::test]
    async fn cas_succeeds_when_expected_matches() {
        let (storage, _) = storage();
        storage.save(&p("n"), Value::Int(1), false).await.unwrap();
        let swapped =
            storage.compare_and_swap(&p("n"), Some(&Value::Int(1)), Some(Value::Int(2))).await.unwrap();
        assert_eq!(swapped, Ok(()));
        assert_eq!(storage.get(&p("n")).await.unwrap(), Some(Value::Int(2)));
        // `None` as the new value deletes.
        assert_eq!(storage.compare_and_swap(&p("n"), Some(&Value::Int(2)), None).await.unwrap(), Ok(()));
        assert_eq!(storage.get(&p("n")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn cas_conflict_returns_current_and_writes_nothing() {
        let (storage, _) = storage();
        storage.save(&p("n"), Value::Int(1), false).await.unwrap();
        let lost =
            storage.compare_and_swap(&p("n"), Some(&Value::Int(0)), Some(Value::Int(2))).await.unwrap();
        assert_eq!(lost, Err(Some(Value::Int(1))));
        let lost = storage.compare_and_swap(&p("n"), None, None).await.unwrap();
        assert_eq!(lost, Err(Some(Value::Int(1))));
        assert_eq!(storage.get(&p("n")).await.unwrap(), Some(Value::Int(1)));
        let lost =
            storage.compare_and_swap(&p("gone"), Some(&Value::Int(0)), Some(Value::Int(2))).await.unwrap();
        assert_eq!(lost, Err(None));
        assert_eq!(storage.get(&p("gone")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn cas_with_none_expected_creates_only_if_absent() {
        let (storage, _) = storage();
        assert_eq!(storage.compare_and_swap(&p("lock"), None, Some(s("first"))).await.unwrap(), Ok(()));
        let lost = storage.compare_and_swap(&p("lock"), None, Some(s("second"))).await.unwrap();
        assert_eq!(lost, Err(Some(s("first"))));
        // Creating under a missing parent is the same error as a save.
        let err = storage.compare_and_swap(&p("no.parent"), None, Some(Value::Int(1))).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn cas_compares_the_whole_subtree() {
        let (storage, _) = storage();
        let before = map([("x", Value::Int(1)), ("y", empty())]);
        storage.save(&p("m"), before.clone(), false).await.unwrap();
        let lost = storage
            .compare_and_swap(&p("m"), Some(&map([("x", Value::Int(1))])), Some(empty()))
            .await
            .unwrap();
        assert_eq!(lost, Err(Some(before.clone())));
        assert_eq!(
            storage.compare_and_swap(&p("m"), Some(&before), Some(Value::Null)).await.unwrap(),
            Ok(())
        );
        assert_eq!(storage.get(&p("m")).await.unwrap(), Some(Value::Null));
        assert_eq!(storage.get(&p("m.x")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn concurrent_cas_increments_lose_nothing() {
        let (storage, _) = storage();
        let storage = Arc::new(storage);
        storage.save(&p("n"), Value::Int(0), false).await.unwrap();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let storage = Arc::clone(&storage);
                tokio::spawn(async move {
                    for _ in 0..25 {
                        let mut current = storage.get(&p("n")).await.unwrap();
                        loop {
                            let Some(Value::Int(n)) = current else {
                                panic!("counter vanished: {current:?}")
                            };
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
        assert_eq!(storage.get(&p("n")).await.unwrap(), Some(Value::Int(100)));
    }

    #[tokio::test]
    async fn initialize_saves_only_into_an_empty_backend() {
        let (storage, backend) = storage();
        storage.initialize(map([("test", map([("some", Value::Int(1))]))])).await.unwrap();
        assert_eq!(storage.get(&p("test.some")).await.unwrap(), Some(Value::Int(1)));
        storage.save(&p("test.some"), Value::Int(2), false).await.unwrap();
        // A restart over the same (durable) backend keeps the saved state.
        let reopened = SharedStorage::new(backend);
        reopened
            .initialize(map([("test", map([("some", Value::Int(1))])), ("extra", Value::Null)]))
            .await
            .unwrap();
        assert_eq!(
            reopened.get(&p("")).await.unwrap(),
            Some(map([("test", map([("some", Value::Int(2))]))]))
        );
        let err = reopened.initialize(Value::Int(1)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.message().contains("must be a map, not an integer"), "{err}");
    }

    #[tokio::test]
    async fn empty_map_round_trips() {
        let (storage, _) = storage();
        storage.save(&p("e"), empty(), false).await.unwrap();
        assert_eq!(storage.get(&p("e")).await.unwrap(), Some(empty()));
        storage.save(&p("n"), map([("inner", empty())]), false).await.unwrap();
        assert_eq!(storage.get(&p("n")).await.unwrap(), Some(map([("inner", empty())])));
        // An empty map is a parent that exists.
        storage.save(&p("e.child"), Value::Int(1), false).await.unwrap();
        assert_eq!(storage.get(&p("e")).await.unwrap(), Some(map([("child", Value::Int(1))])));
    }

    #[tokio::test]
    async fn root_get_save_delete() {
        let (storage, backend) = storage();
        assert_eq!(storage.get(&Path::root()).await.unwrap(), Some(empty()));
        assert!(!storage.delete(&Path::root()).await.unwrap());
        storage.save(&p("old"), Value::Int(1), false).await.unwrap();
        let root = map([("a", map([("b", Value::Int(1))])), ("c", s("x"))]);
        storage.save(&Path::root(), root.clone(), false).await.unwrap();
        assert_eq!(storage.get(&Path::root()).await.unwrap(), Some(root));
        assert_eq!(storage.get(&p("old")).await.unwrap(), None);
        let err = storage.save(&Path::root(), Value::Int(1), false).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.message().contains("cannot save an integer at the root"), "{err}");
        assert!(storage.delete(&Path::root()).await.unwrap());
        assert_eq!(storage.get(&Path::root()).await.unwrap(), Some(empty()));
        assert!(raw_keys(&backend).is_empty());
    }

    #[tokio::test]
    async fn segment_boundaries_separate_similar_paths() {
        let (storage, _) = storage();
        storage
            .save(&p("a"), map([("b", map([("x", Value::Int(1))])), ("bc", Value::Int(2))]), false)
            .await
            .unwrap();
        assert_eq!(storage.get(&p("a.b")).await.unwrap(), Some(map([("x", Value::Int(1))])));
        storage.save(&p("a.b"), Value::Null, false).await.unwrap();
        assert_eq!(storage.get(&p("a.bc")).await.unwrap(), Some(Value::Int(2)));
        assert!(storage.delete(&p("a.b")).await.unwrap());
        assert_eq!(storage.get(&p("a")).await.unwrap(), Some(map([("bc", Value::Int(2))])));
    }

    #[tokio::test]
    async fn unaddressable_map_keys_are_refused_and_nothing_is_written() {
        let (storage, backend) = storage();
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
        assert_eq!(storage.get(&p("l")).await.unwrap(), Some(list));
    }

    #[tokio::test]
    async fn keys_stored_with_surrounding_whitespace_before_it_was_refused_stay_readable() {
        let (storage, backend) = storage();
        let map_node = postcard::to_allocvec(&Node::Map).unwrap();
        let leaf = postcard::to_allocvec(&Node::Leaf(Value::Int(1))).unwrap();
        backend.map().insert(b"a\0".to_vec(), map_node);
        backend.map().insert(b"a\0 old\0".to_vec(), leaf);
        assert_eq!(storage.get(&p("a")).await.unwrap(), Some(map([(" old", Value::Int(1))])));
        // It cannot be addressed on its own any more, but goes with its parent.
        assert_eq!(Path::parse("a. old").unwrap_err().kind(), ErrorKind::InvalidPath);
        assert!(storage.delete(&p("a")).await.unwrap());
        assert!(raw_keys(&backend).is_empty());
    }

    #[tokio::test]
    async fn messages_quote_at_most_about_a_hundred_bytes_of_a_path_or_key() {
        let (storage, backend) = storage();
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
        let err = storage.get(&Path::root()).await.unwrap_err();
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
            let (storage, backend) = storage();
            for (key, value) in &case {
                backend.map().insert(key.to_vec(), value.clone());
            }
            for path in ["", "a"] {
                if let Err(err) = storage.get(&p(path)).await {
                    assert_eq!(err.kind(), ErrorKind::Storage, "{err}");
                    assert!(err.message().contains("clusterfy never writes"), "{err}");
                } else {
                    // Only the shape the key at "a" itself cannot see may read cleanly.
                    assert_eq!(path, "a", "{case:?} read cleanly at the root");
                }
            }
        }
        let (storage, backend) = storage();
        backend.map().insert(b"a\0".to_vec(), vec![0xff]);
        let err = storage.save(&p("a.b"), Value::Int(1), false).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Storage, "{err}");
    }

    #[tokio::test]
    async fn backend_errors_pass_through_unchanged() {
        let (storage, backend) = storage();
        backend.fail_writes.store(true, Ordering::SeqCst);
        let err = storage.save(&p("a"), Value::Int(1), false).await.unwrap_err();
        assert_eq!((err.kind(), err.message()), (ErrorKind::Storage, "injected failure"));
        assert_eq!(err.context_value("prefix"), Some("test"));
        assert_eq!(err.context().len(), 1);
    }

    // Model-based test: random operations against a plain Value tree.

    #[derive(Debug, Clone)]
    enum Op {
        Save { path: Vec<String>, value: Value, create_parents: bool },
        Delete { path: Vec<String> },
        Get { path: Vec<String> },
        Cas { path: Vec<String>, expect_current: bool, expected: Option<Value>, new: Option<Value> },
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
            any::<i64>().prop_map(Value::Int),
            any::<u64>().prop_map(Value::UInt),
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

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (path(), value(), any::<bool>())
                .prop_map(|(path, value, create_parents)| Op::Save { path, value, create_parents }),
            1 => path().prop_map(|path| Op::Delete { path }),
            2 => path().prop_map(|path| Op::Get { path }),
            2 => (path(), any::<bool>(), prop::option::of(value()), prop::option::of(value()))
                .prop_map(|(path, expect_current, expected, new)| Op::Cas { path, expect_current, expected, new }),
        ]
    }

    fn model_get(root: &BTreeMap<String, Value>, path: &[String]) -> Option<Value> {
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

    fn model_save(
        root: &mut BTreeMap<String, Value>,
        path: &[String],
        value: Value,
        create_parents: bool,
    ) -> Result<(), ErrorKind> {
        let Some((last, parents)) = path.split_last() else {
            return match value {
                Value::Map(new_root) => {
                    *root = new_root;
                    Ok(())
                }
                _ => Err(ErrorKind::InvalidInput),
            };
        };
        // Check first, then write: a refused save changes nothing.
        let mut map = &*root;
        for segment in parents {
            match map.get(segment) {
                Some(Value::Map(inner)) => map = inner,
                Some(_) => return Err(ErrorKind::InvalidInput),
                None if create_parents => break,
                None => return Err(ErrorKind::NotFound),
            }
        }
        let mut map = root;
        for segment in parents {
            let entry = map.entry(segment.clone()).or_insert_with(|| Value::Map(BTreeMap::new()));
            let Value::Map(inner) = entry else { unreachable!("checked above") };
            map = inner;
        }
        map.insert(last.clone(), value);
        Ok(())
    }

    fn model_delete(root: &mut BTreeMap<String, Value>, path: &[String]) -> bool {
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

    fn to_path(segments: &[String]) -> Path {
        p(&segments.join("."))
    }

    async fn run_against_model(ops: Vec<Op>) {
        let (storage, backend) = storage();
        let mut model = BTreeMap::new();
        for op in ops {
            match op {
                Op::Save { path, value, create_parents } => {
                    let got = storage
                        .save(&to_path(&path), value.clone(), create_parents)
                        .await
                        .map_err(|e| e.kind());
                    let want = model_save(&mut model, &path, value, create_parents);
                    assert_eq!(got, want, "save {path:?}");
                }
                Op::Delete { path } => {
                    let got = storage.delete(&to_path(&path)).await.unwrap();
                    assert_eq!(got, model_delete(&mut model, &path), "delete {path:?}");
                }
                Op::Get { path } => {
                    assert_eq!(
                        storage.get(&to_path(&path)).await.unwrap(),
                        model_get(&model, &path),
                        "get {path:?}"
                    );
                }
                Op::Cas { path, expect_current, expected, new } => {
                    let current = model_get(&model, &path);
                    let expected = if expect_current { current.clone() } else { expected };
                    let got = storage
                        .compare_and_swap(&to_path(&path), expected.as_ref(), new.clone())
                        .await
                        .map_err(|e| e.kind());
                    let want = if current != expected {
                        Ok(Err(current))
                    } else {
                        match new {
                            Some(value) => model_save(&mut model, &path, value, false).map(Ok),
                            None => {
                                model_delete(&mut model, &path);
                                Ok(Ok(()))
                            }
                        }
                    };
                    assert_eq!(got, want, "cas {path:?}");
                }
            }
            assert_eq!(storage.get(&Path::root()).await.unwrap(), Some(Value::Map(model.clone())));
        }
        // The layout itself: exactly one key per node of the model.
        assert_eq!(raw_keys(&backend).len(), count_nodes(&model));
    }

    /// A read through the writer, as a worker's read goes: in order with the writes before it.
    async fn queued_get(storage: &SharedStorage, path: Path) -> Option<Value> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        storage.submit(super::Op::Get(path), Box::new(move |outcome| drop(tx.send(outcome))));
        match rx.await.unwrap().unwrap() {
            Outcome::Value(value) => value,
            other => panic!("a read answered {other:?}"),
        }
    }

    /// What one operation returned, comparable between the storage and the model.
    #[derive(Debug, PartialEq)]
    enum Answer {
        Saved(Result<(), ErrorKind>),
        Deleted(bool),
        Read(Option<Value>),
        Swapped(Result<Result<(), Option<Value>>, ErrorKind>),
    }

    /// The operations of `ops` submitted `round` at a time, so that the writer combines each
    /// chunk into one round: every answer and the final tree must be those of running them one
    /// by one in submission order.
    async fn run_in_rounds_against_model(ops: Vec<Op>, round: usize) {
        let (storage, backend) = storage();
        let mut model = BTreeMap::new();
        for chunk in ops.chunks(round) {
            let mut wanted = Vec::new();
            let mut calls: Vec<futures::future::BoxFuture<'_, Answer>> = Vec::new();
            for op in chunk.iter().cloned() {
                let storage = &storage;
                match op {
                    Op::Save { path, value, create_parents } => {
                        wanted.push(Answer::Saved(model_save(
                            &mut model,
                            &path,
                            value.clone(),
                            create_parents,
                        )));
                        calls.push(Box::pin(async move {
                            Answer::Saved(
                                storage
                                    .save(&to_path(&path), value, create_parents)
                                    .await
                                    .map_err(|e| e.kind()),
                            )
                        }));
                    }
                    Op::Delete { path } => {
                        wanted.push(Answer::Deleted(model_delete(&mut model, &path)));
                        calls.push(Box::pin(async move {
                            Answer::Deleted(storage.delete(&to_path(&path)).await.unwrap())
                        }));
                    }
                    Op::Get { path } => {
                        wanted.push(Answer::Read(model_get(&model, &path)));
                        calls.push(Box::pin(async move {
                            Answer::Read(queued_get(storage, to_path(&path)).await)
                        }));
                    }
                    Op::Cas { path, expect_current, expected, new } => {
                        let current = model_get(&model, &path);
                        let expected = if expect_current { current.clone() } else { expected };
                        wanted.push(Answer::Swapped(if current != expected {
                            Ok(Err(current))
                        } else {
                            match new.clone() {
                                Some(value) => model_save(&mut model, &path, value, false).map(Ok),
                                None => {
                                    model_delete(&mut model, &path);
                                    Ok(Ok(()))
                                }
                            }
                        }));
                        calls.push(Box::pin(async move {
                            let swapped =
                                storage.compare_and_swap(&to_path(&path), expected.as_ref(), new).await;
                            Answer::Swapped(swapped.map_err(|e| e.kind()))
                        }));
                    }
                }
            }
            let answers = futures::future::join_all(calls).await;
            assert_eq!(answers, wanted, "the round {chunk:?}");
            assert_eq!(storage.get(&Path::root()).await.unwrap(), Some(Value::Map(model.clone())));
        }
        assert_eq!(raw_keys(&backend).len(), count_nodes(&model));
    }

    fn count_nodes(map: &BTreeMap<String, Value>) -> usize {
        map.values().map(|v| 1 + if let Value::Map(inner) = v { count_nodes(inner) } else { 0 }).sum()
    }

    proptest! {
        #[test]
        fn random_operations_match_a_value_tree_model(ops in prop::collection::vec(op(), 1..40)) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(run_against_model(ops));
        }

        #[test]
        fn random_operations_combined_in_rounds_match_the_model_run_one_by_one(
            ops in prop::collection::vec(op(), 1..60),
            round in 2usize..20,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(run_in_rounds_against_model(ops, round));
        }
    }

    #[tokio::test]
    async fn queued_saves_are_one_batch_with_one_flush_and_a_failing_one_fails_alone() {
        let backend = Arc::new(TestBackend { durable: true, ..TestBackend::default() });
        let storage = SharedStorage::new(Arc::clone(&backend) as Arc<dyn StorageBackend>);
        storage.save(&p("parent"), empty(), false).await.unwrap();
        let (batches, flushes) =
            (backend.batches.load(Ordering::SeqCst), backend.flushes.load(Ordering::SeqCst));
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
        let parent = storage.get(&p("parent")).await.unwrap().unwrap();
        assert!(matches!(parent, Value::Map(ref m) if m.len() == 100), "{parent:?}");
    }

    #[tokio::test]
    async fn every_write_of_a_round_is_announced_in_order_once_applied() {
        let (storage, _) = storage();
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
        assert_eq!(storage.get(&a).await.unwrap(), Some(empty()), "the save below a fresh map saw it");
    }

    #[tokio::test]
    async fn writes_to_a_durable_backend_are_flushed_before_they_return() {
        let backend = Arc::new(TestBackend { durable: true, ..TestBackend::default() });
        let storage = SharedStorage::new(Arc::clone(&backend) as Arc<dyn StorageBackend>);
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
        let storage = SharedStorage::new(Arc::clone(&backend) as Arc<dyn StorageBackend>);
        storage.save(&Path::parse("a").unwrap(), Value::Int(1), false).await.unwrap();
        assert_eq!(backend.flushes.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn every_successful_write_is_announced_in_order() {
        let storage = SharedStorage::new(Arc::new(TestBackend::default()));
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
}
