//! [`Replica`]: a live local copy of one branch of the shared storage, read without a round trip.
//!
//! On a worker, the primary sends the branch once, then every committed change of it, in commit
//! order, on the worker's connection; reads are reads of this process's memory. On the primary,
//! a replica reads the storage's own memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, RwLockReadGuard, Weak};

use clusterfy_core::protocol::{NodeChange, Notice, ReplicaSnapshot};
use clusterfy_core::{Error, ErrorKind, Path, Result, Value, WireError, from_value};
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, watch};

use super::core::StorageCore;
use super::layout::{Node, decode_node};
use crate::events::{EventStream, subscribe};
use crate::link::Link;

/// Events of a replica buffered per subscriber of [`Replica::changed`].
const EVENT_BUFFER: usize = 1024;

/// What happened to a replica ([`Replica::changed`]).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaEvent {
    /// A commit changed the branch; the replica shows it now.
    Changed {
        /// The storage's commit version the replica shows now.
        version: u64,
    },
    /// The worker fell behind reading its connection: the replica shows the state before, until
    /// [`ReplicaEvent::Resynced`].
    Lagged,
    /// The branch was sent again (after a lag), and the replica shows it as it stands.
    Resynced {
        /// The storage's commit version the replica shows now.
        version: u64,
    },
    /// The connection to the primary ended: the replica keeps its last state.
    Closed,
    /// The primary can no longer keep the replica current (one node of its branch is larger than
    /// a frame); reads of it fail from now on, saying why.
    Failed {
        /// Why, as the primary said it.
        reason: String,
    },
    /// This subscriber fell behind and missed this many events.
    Missed {
        /// How many.
        missed: u64,
    },
}

/// Where a replica stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Asked for; its snapshot has not arrived.
    Loading,
    Current,
    Lagging,
    Closed,
    Failed,
}

/// One stored node, decoded once when it arrived.
#[derive(Debug, Clone)]
enum Held {
    Map,
    Leaf(Value),
}

/// A replica's nodes by dotted path: a hash map for the reads of one path (the common case, and
/// the one to make fast), and the same paths in order for the reads and deletes of a subtree.
#[derive(Default)]
struct Nodes {
    by_path: HashMap<String, Held, BuildHasherDefault<FxHasher>>,
    in_order: BTreeSet<String>,
}

impl Nodes {
    fn get(&self, dotted: &str) -> Option<&Held> {
        self.by_path.get(dotted)
    }

    fn insert(&mut self, dotted: String, held: Held) {
        if self.by_path.insert(dotted.clone(), held).is_none() {
            self.in_order.insert(dotted);
        }
    }

    fn remove(&mut self, dotted: &str) {
        self.by_path.remove(dotted);
        self.in_order.remove(dotted);
    }

    fn clear(&mut self) {
        self.by_path.clear();
        self.in_order.clear();
    }

    /// The paths at `dotted` and below it, in order. The path itself and its descendants (those
    /// starting with `dotted.`) are not always neighbours: `a.c-e` sorts between `a.c` and
    /// `a.c.d`.
    fn subtree<'n>(&'n self, dotted: &'n str) -> Box<dyn Iterator<Item = (&'n String, &'n Held)> + 'n> {
        let held = |path: &'n String| self.by_path.get(path).map(|held| (path, held));
        if dotted.is_empty() {
            return Box::new(self.in_order.iter().filter_map(held));
        }
        let below = format!("{dotted}.");
        let descendants = self
            .in_order
            .range::<str, _>((std::ops::Bound::Included(below.as_str()), std::ops::Bound::Unbounded))
            .take_while(move |path| path.starts_with(&below));
        Box::new(self.in_order.get(dotted).into_iter().chain(descendants).filter_map(held))
    }
}

/// FxHash (rustc's): a multiply and a rotate per word, for short keys this process chose itself;
/// SipHash's defence against crafted collisions costs more than the rest of a replica read.
#[derive(Default)]
struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let word = u64::from_le_bytes(word.try_into().unwrap_or_default());
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
        }
        for &byte in words.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(SEED);
        }
    }
}

/// A worker's replica of one branch.
pub(crate) struct ReplicaState {
    /// The branch.
    path: Path,
    /// Every node of the branch, by dotted path.
    nodes: RwLock<Nodes>,
    version: AtomicU64,
    standing: watch::Sender<Standing>,
    events: broadcast::Sender<ReplicaEvent>,
    /// The first parts of a message that came in parts, until its last part.
    parts: Mutex<Vec<NodeChange>>,
    /// Why the primary stopped keeping it current.
    failure: OnceLock<WireError>,
}

impl ReplicaState {
    fn new(path: Path) -> Self {
        ReplicaState {
            path,
            nodes: RwLock::new(Nodes::default()),
            version: AtomicU64::new(0),
            standing: watch::Sender::new(Standing::Loading),
            events: broadcast::Sender::new(EVENT_BUFFER),
            parts: Mutex::new(Vec::new()),
            failure: OnceLock::new(),
        }
    }

    /// Keeps one part of a message that came in parts; once its last part (`more: false`)
    /// arrived, the whole of it. The parts of one message arrive together, in order: the
    /// primary queues them at once.
    fn whole(&self, mut part: Vec<NodeChange>, more: bool) -> Option<Vec<NodeChange>> {
        let mut parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
        if more {
            parts.append(&mut part);
            return None;
        }
        if parts.is_empty() {
            return Some(part);
        }
        parts.append(&mut part);
        Some(std::mem::take(&mut *parts))
    }

    fn fail(&self, error: WireError) {
        let reason = error.message.clone();
        let _ = self.failure.set(error);
        self.set(Standing::Failed, ReplicaEvent::Failed { reason });
    }

    fn nodes(&self) -> RwLockReadGuard<'_, Nodes> {
        // Changes are applied whole under the write lock and cannot fail half-way.
        self.nodes.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn reset(&self, snapshot: ReplicaSnapshot) {
        let Some(whole) = self.whole(snapshot.nodes, snapshot.more) else { return };
        let resync = *self.standing.borrow() == Standing::Lagging;
        {
            let mut nodes = self.nodes.write().unwrap_or_else(PoisonError::into_inner);
            nodes.clear();
            apply_changes(&mut nodes, whole);
        }
        self.version.fetch_max(snapshot.version, Ordering::AcqRel);
        self.standing.send_replace(Standing::Current);
        if resync {
            let _ = self.events.send(ReplicaEvent::Resynced { version: snapshot.version });
        }
    }

    fn apply(&self, version: u64, changes: Vec<NodeChange>, more: bool) {
        let Some(changes) = self.whole(changes, more) else { return };
        // Never backwards: a change the replica's state already covers is not applied again.
        if version < self.version.load(Ordering::Acquire) {
            return;
        }
        apply_changes(&mut self.nodes.write().unwrap_or_else(PoisonError::into_inner), changes);
        self.version.store(version, Ordering::Release);
        let _ = self.events.send(ReplicaEvent::Changed { version });
    }

    fn set(&self, standing: Standing, event: ReplicaEvent) {
        self.standing.send_replace(standing);
        let _ = self.events.send(event);
    }

    /// Whether a write at `path` can show in this replica.
    fn covers(&self, path: &Path) -> bool {
        path.starts_with(&self.path) || self.path.starts_with(path)
    }
}

/// Applies one commit's node changes (or a snapshot's puts) to a replica's nodes.
fn apply_changes(nodes: &mut Nodes, changes: Vec<NodeChange>) {
    for change in changes {
        match change {
            NodeChange::Put { key, node } => {
                let (Some(dotted), Ok(node)) = (dotted_of(&key), decode_node(&node)) else {
                    tracing::warn!("ignoring a replica change with a malformed key or node");
                    continue;
                };
                let held = match node {
                    Node::Map => Held::Map,
                    Node::Leaf(value) => Held::Leaf(value),
                };
                nodes.insert(dotted, held);
            }
            NodeChange::Delete { key } => {
                if let Some(dotted) = dotted_of(&key) {
                    nodes.remove(&dotted);
                }
            }
            NodeChange::DeletePrefix { prefix } => match dotted_of(&prefix) {
                Some(dotted) if dotted.is_empty() => nodes.clear(),
                Some(dotted) => {
                    let doomed: Vec<String> = nodes.subtree(&dotted).map(|(k, _)| k.clone()).collect();
                    for key in doomed {
                        nodes.remove(&key);
                    }
                }
                None => tracing::warn!("ignoring a replica change with a malformed prefix"),
            },
        }
    }
}

/// The dotted path of a storage key (`a\0b\0` is `a.b`, the empty key the root).
fn dotted_of(key: &[u8]) -> Option<String> {
    if key.is_empty() {
        return Some(String::new());
    }
    let inner = key.strip_suffix(&[0])?;
    let text = std::str::from_utf8(inner).ok()?;
    Some(text.replace('\0', "."))
}

/// Rebuilds the value at `dotted` from its nodes, or `None` when nothing is there.
fn assemble(nodes: &Nodes, dotted: &str) -> Option<Value> {
    let mut top: Option<Value> = dotted.is_empty().then(|| Value::Map(BTreeMap::new()));
    for (key, held) in nodes.subtree(dotted) {
        let value = match held {
            Held::Map => Value::Map(BTreeMap::new()),
            Held::Leaf(value) => value.clone(),
        };
        let relative = key[dotted.len()..].trim_start_matches('.');
        if relative.is_empty() {
            top = Some(value);
        } else if let Some(Value::Map(map)) = top.as_mut() {
            insert_at(map, relative, value);
        }
    }
    top
}

/// Puts `value` at the dotted `relative` path inside `map` (its parents sort before it, so they
/// are there).
fn insert_at(map: &mut BTreeMap<String, Value>, relative: &str, value: Value) {
    let mut segments = relative.split('.').peekable();
    let mut current = map;
    while let Some(segment) = segments.next() {
        if segments.peek().is_none() {
            current.insert(segment.to_owned(), value);
            return;
        }
        match current.get_mut(segment) {
            Some(Value::Map(inner)) => current = inner,
            _ => return,
        }
    }
}

/// A worker's replicas, by the id it gave each: where the reader of its connection delivers what
/// the primary sends for them.
#[derive(Default)]
pub(crate) struct ReplicaRegistry {
    next_id: AtomicU64,
    held: Mutex<HashMap<u64, Weak<ReplicaState>>>,
}

impl ReplicaRegistry {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Weak<ReplicaState>>> {
        // Single inserts and removals: nothing is left half-done by a panic.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, path: Path) -> (u64, Arc<ReplicaState>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ReplicaState::new(path));
        self.lock().insert(id, Arc::downgrade(&state));
        (id, state)
    }

    fn find(&self, replica: u64) -> Option<Arc<ReplicaState>> {
        self.lock().get(&replica).and_then(Weak::upgrade)
    }

    /// Takes a notice about a replica; `false` for any other notice.
    pub(crate) fn on_notice(&self, notice: &mut Option<Notice>) -> bool {
        match notice.take() {
            Some(Notice::ReplicaReset(snapshot)) => {
                if let Some(state) = self.find(snapshot.replica) {
                    state.reset(snapshot);
                }
            }
            Some(Notice::ReplicaChanged { replica, version, changes, more }) => {
                if let Some(state) = self.find(replica) {
                    state.apply(version, changes, more);
                }
            }
            Some(Notice::ReplicaFailed { replica, error }) => {
                if let Some(state) = self.find(replica) {
                    state.fail(error);
                }
            }
            Some(Notice::ReplicaLagged { replica }) => {
                if let Some(state) = self.find(replica) {
                    state.set(Standing::Lagging, ReplicaEvent::Lagged);
                }
            }
            other => {
                *notice = other;
                return false;
            }
        }
        true
    }

    /// The connection ended: every replica keeps its last state, and says so.
    pub(crate) fn close_all(&self) {
        for state in self.lock().drain().filter_map(|(_, state)| state.upgrade()) {
            state.set(Standing::Closed, ReplicaEvent::Closed);
        }
    }

    /// Waits until every replica that a write at `path` can show in is current: a write
    /// returns once this worker's replicas show it (they only lag while the worker falls
    /// behind reading, and catch up by reading on).
    pub(crate) async fn caught_up(&self, path: &Path) {
        let lagging: Vec<Arc<ReplicaState>> = self
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .filter(|state| state.covers(path) && *state.standing.borrow() == Standing::Lagging)
            .collect();
        for state in lagging {
            let mut standing = state.standing.subscribe();
            let _ = standing.wait_for(|s| *s != Standing::Lagging).await;
        }
    }
}

/// A live local copy of one branch of the shared storage ([`Storage::replica`]): typed reads of
/// local memory, without a round trip.
///
/// # What a reader sees
///
/// - **Its own writes.** A write through this worker's [`Storage`](super::Storage) returns only
///   once every replica of this worker that holds its path shows it (the change travels ahead of
///   the write's acknowledgement).
/// - **Never an older state.** Changes apply in commit order; the version only grows.
/// - **A bounded lag.** A worker that falls behind reading its connection is sent nothing more for
///   its replicas, which keep showing the state before the lag ([`ReplicaEvent::Lagged`]); once
///   the worker has read what was queued, the primary sends each such branch again
///   ([`ReplicaEvent::Resynced`]). The primary's memory never grows for a slow reader.
/// - **Whole commits.** A snapshot or a commit larger than a frame arrives in parts and shows
///   once complete. A node larger than a frame (saved on the primary itself) cannot be sent:
///   the replica fails ([`ReplicaEvent::Failed`]) and its reads say why.
/// - **The end.** A replica lives as long as the worker's connection; after it ends
///   ([`ReplicaEvent::Closed`]) it keeps showing the last state it had.
///
/// [`Storage::replica`]: super::Storage::replica
pub struct Replica {
    kind: Kind,
}

enum Kind {
    /// On the primary: the storage's own memory.
    Local { core: Arc<StorageCore>, path: Path },
    /// On a worker: kept current by the primary.
    Remote { state: Arc<ReplicaState>, id: u64, link: Arc<Link> },
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("path", self.path()).field("version", &self.version()).finish()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Kind::Remote { id, link, .. } = &self.kind {
            // The primary stops sending changes; a connection gone needs nothing.
            link.notify_soon(Notice::ReplicaDropped { replica: *id });
        }
    }
}

impl Replica {
    /// A replica on the primary: reads of the storage's memory.
    pub(crate) fn local(core: Arc<StorageCore>, path: Path) -> Replica {
        Replica { kind: Kind::Local { core, path } }
    }

    /// A replica of `path` registered with this worker's `registry`, to be asked for as
    /// [`Replica::id`] over `link`: what the primary sends for it from then on is kept.
    pub(crate) fn start(registry: &ReplicaRegistry, link: Arc<Link>, path: Path) -> Replica {
        let (id, state) = registry.add(path);
        Replica { kind: Kind::Remote { state, id, link } }
    }

    /// The worker's id for it (0 on the primary).
    pub(crate) fn id(&self) -> u64 {
        match &self.kind {
            Kind::Local { .. } => 0,
            Kind::Remote { id, .. } => *id,
        }
    }

    /// Why the primary stopped keeping it current, if it did.
    pub(crate) fn failure(&self) -> Option<Error> {
        match &self.kind {
            Kind::Local { .. } => None,
            Kind::Remote { state, .. } => {
                state.failure.get().map(|f| Error::from(f.clone()).with_context("path", state.path.as_str()))
            }
        }
    }

    /// The branch this replica holds.
    pub fn path(&self) -> &Path {
        match &self.kind {
            Kind::Local { path, .. } => path,
            Kind::Remote { state, .. } => &state.path,
        }
    }

    /// The storage's commit version the replica shows.
    pub fn version(&self) -> u64 {
        match &self.kind {
            Kind::Local { core, .. } => core.version(),
            Kind::Remote { state, .. } => state.version.load(Ordering::Acquire),
        }
    }

    /// Whether it shows the branch as the primary last sent it: not lagging, its connection not
    /// ended.
    pub fn is_current(&self) -> bool {
        match &self.kind {
            Kind::Local { .. } => true,
            Kind::Remote { state, .. } => *state.standing.borrow() == Standing::Current,
        }
    }

    /// Reads the value at the dotted `path`, which must lie in the replicated branch, as `T`;
    /// `None` if nothing is there. A map path gives its whole subtree. Local memory only.
    #[doc(alias = "get")]
    pub fn retrieve<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        let value = self.retrieve_value(path)?;
        value
            .map(|v| from_value(v).map_err(|e| e.with_context("path", clusterfy_core::error::excerpt(path))))
            .transpose()
    }

    /// [`Replica::retrieve`] as a [`Value`].
    pub fn retrieve_value(&self, path: &str) -> Result<Option<Value>> {
        match &self.kind {
            Kind::Local { core, path: branch } => {
                let path = self.checked(path, branch)?;
                core.read(&path)
            }
            Kind::Remote { state, .. } => {
                if let Some(failure) = self.failure() {
                    return Err(failure);
                }
                let nodes = state.nodes();
                // The common case first: a leaf, found by its dotted path without parsing it.
                match nodes.get(path) {
                    Some(Held::Leaf(value)) => return Ok(Some(value.clone())),
                    Some(Held::Map) => return Ok(assemble(&nodes, path)),
                    None => {}
                }
                let parsed = self.checked(path, &state.path)?;
                Ok(assemble(&nodes, parsed.as_str()))
            }
        }
    }

    /// `path` parsed, if it lies in the branch.
    fn checked(&self, path: &str, branch: &Path) -> Result<Path> {
        let parsed = Path::parse(path)?;
        if !parsed.starts_with(branch) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{:?} lies outside this replica of {:?}; read it with Storage::retrieve, or replicate a \
                     branch that holds it",
                    clusterfy_core::error::excerpt(path),
                    branch.as_str()
                ),
            )
            .with_context("path", clusterfy_core::error::excerpt(path)));
        }
        Ok(parsed)
    }

    /// What happens to the replica from now on: each commit that changed the branch, lags,
    /// resyncs and the end. A subscriber that falls behind gets [`ReplicaEvent::Missed`].
    pub fn changed(&self) -> EventStream<ReplicaEvent> {
        match &self.kind {
            Kind::Local { core, path } => {
                let core = Arc::clone(core);
                let watched = path.clone();
                let changes = subscribe(core.changes(), |_| Path::root());
                Box::pin(futures::StreamExt::filter_map(changes, move |written| {
                    let event = super::on_one_branch(&written, &watched)
                        .then(|| ReplicaEvent::Changed { version: core.version() });
                    futures::future::ready(event)
                }))
            }
            Kind::Remote { state, .. } => {
                subscribe(state.events.subscribe(), |missed| ReplicaEvent::Missed { missed })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &[u8], node: &Node) -> NodeChange {
        NodeChange::Put { key: key.to_vec(), node: postcard::to_allocvec(node).expect("encodes") }
    }

    fn state_with(changes: Vec<NodeChange>) -> ReplicaState {
        let state = ReplicaState::new(Path::parse("a").expect("path"));
        state.reset(ReplicaSnapshot { replica: 0, version: 1, nodes: changes, more: false });
        state
    }

    #[test]
    fn nodes_rebuild_leaves_and_subtrees_and_changes_apply_in_order() {
        let state = state_with(vec![
            put(b"a\0", &Node::Map),
            put(b"a\0b\0", &Node::Leaf(Value::Int(1))),
            put(b"a\0c\0", &Node::Map),
            put(b"a\0c\0d\0", &Node::Leaf(Value::from("x"))),
            put(b"a\0c-e\0", &Node::Leaf(Value::Null)),
        ]);
        let nodes = state.nodes();
        assert_eq!(assemble(&nodes, "a.b"), Some(Value::Int(1)));
        let c = assemble(&nodes, "a.c").expect("a map");
        assert_eq!(c, Value::Map([("d".to_owned(), Value::from("x"))].into()));
        assert_eq!(assemble(&nodes, "a.missing"), None);
        let a = assemble(&nodes, "a").expect("the branch");
        let Value::Map(a) = a else { panic!("a map") };
        assert_eq!(a.len(), 3, "{a:?}");
        drop(nodes);
        state.apply(2, vec![NodeChange::DeletePrefix { prefix: b"a\0c\0".to_vec() }], false);
        assert_eq!(assemble(&state.nodes(), "a.c"), None);
        assert_eq!(assemble(&state.nodes(), "a.c-e"), Some(Value::Null), "a neighbour stays");
        // A change older than the state is not applied again.
        state.apply(1, vec![put(b"a\0b\0", &Node::Leaf(Value::Int(0)))], false);
        assert_eq!(assemble(&state.nodes(), "a.b"), Some(Value::Int(1)));
    }
}
