//! Every storage operation, defined once: what it does to the draft of the writer's round and
//! what it answers. The writer runs them one after the other, so each sees the ones before it
//! (atomic operations on one key fold into one write per round), and one that fails changes
//! nothing and fails alone.
//!
//! An operation is a wire request ([`StorageRequest`], the same for the primary's own calls and a
//! worker's) applied by [`apply`]; adding one takes its variant in `clusterfy-core`'s protocol,
//! its function here, and its method on [`Storage`](super::Storage).

use clusterfy_core::protocol::{Reply, StorageRequest};
use clusterfy_core::{Error, ErrorKind, Path, Result, Value, to_value};

use super::custom::Operations;
use super::layout::{
    Encoder, LEAF_TAG, MAP_NODE, Node, NodePut, check_leaf_node, corrupt, decode_node, describe, encode_node,
    is_map_node, key_of,
};
use super::state::DraftView;

/// What an operation answers: the wire reply, or for a delete also whether it removed anything
/// (which the wire does not carry).
#[derive(Debug)]
pub(crate) enum Outcome {
    Reply(Reply),
    Removed(bool),
    /// A compare-and-swap that found something else than it expected: answered, once the round
    /// ran, with what the round commits at `path` (see [`Outcome::settle`]).
    SwapLost {
        path: Path,
        expected: Option<Value>,
        seen: Option<Value>,
    },
}

impl Outcome {
    pub(crate) fn into_reply(self) -> Reply {
        match self {
            Outcome::Reply(reply) => reply,
            Outcome::Removed(_) => Reply::Done,
            Outcome::SwapLost { seen, .. } => Reply::Swapped(Err(seen)),
        }
    }

    /// The answer of a lost swap once its whole round ran on `view`. What it saw at its place in
    /// the round may be changed again by a later job of the same round; answered with that, its
    /// caller's retry would be stale before it is sent and lose again, round after round, while
    /// later callers win (a retry loop starves). Answered with what the round commits, the retry
    /// holds unless another write comes first. Only when the round put back the value it expected
    /// (A, B, A) does it keep what it saw, so a lost swap never reports its own expected value.
    pub(crate) fn settle(self, view: &DraftView<'_>) -> Outcome {
        let Outcome::SwapLost { path, expected, seen } = self else { return self };
        let committed = view.read(&path).unwrap_or_else(|_| seen.clone());
        let seen = if committed == expected { seen } else { committed };
        Outcome::Reply(Reply::Swapped(Err(seen)))
    }
}

fn value_reply(value: Value) -> Outcome {
    Outcome::Reply(Reply::Value(Some(value)))
}

/// Applies `request` (whose path was taken out as `path`) to the draft.
pub(crate) fn apply(
    view: &mut DraftView<'_>,
    path: &Path,
    request: StorageRequest,
    operations: &Operations,
) -> Result<Outcome> {
    match request {
        StorageRequest::Get { .. } => Ok(Outcome::Reply(Reply::Value(view.read(path)?))),
        StorageRequest::Save { value, create_parents, .. } => {
            save(view, path, value, create_parents).map(|()| Outcome::Reply(Reply::Done))
        }
        StorageRequest::SaveNode { node, create_parents, .. } => {
            save_node(view, path, node, create_parents).map(|()| Outcome::Reply(Reply::Done))
        }
        StorageRequest::Delete { .. } => Ok(Outcome::Removed(delete(view, path))),
        StorageRequest::CompareAndSwap { expected, new, .. } => compare_and_swap(view, path, expected, new),
        StorageRequest::Increment { by, .. } => increment(view, path, by).map(|n| value_reply(Value::Int(n))),
        StorageRequest::IncrementFloat { by, .. } => {
            increment_float(view, path, by).map(|f| value_reply(Value::Float(f)))
        }
        StorageRequest::Append { value, .. } => append(view, path, value).map(count_reply),
        StorageRequest::RemoveValue { value, .. } => remove_value(view, path, &value).map(count_reply),
        StorageRequest::InsertIfAbsent { value, .. } => {
            insert_if_absent(view, path, value).map(|inserted| value_reply(Value::Bool(inserted)))
        }
        StorageRequest::Take { .. } => take(view, path).map(|taken| Outcome::Reply(Reply::Value(taken))),
        StorageRequest::Apply { operation, payload, .. } => {
            apply_registered(view, path, &operation, &payload, operations)
                .map(|reply| Outcome::Reply(Reply::Command(reply)))
        }
        StorageRequest::Watch { .. } | StorageRequest::Replicate { .. } => Err(Error::new(
            ErrorKind::InvalidState,
            "a watch or a replica belongs to the connection, not to the storage's writer",
        )),
    }
}

fn count_reply(count: usize) -> Outcome {
    value_reply(Value::Int(i64::try_from(count).unwrap_or(i64::MAX)))
}

/// The initial storage, saved only into an empty storage.
pub(crate) fn initialize(view: &mut DraftView<'_>, initial: Value) -> Result<()> {
    if view.exists(&Path::root()) {
        return Ok(());
    }
    save(view, &Path::root(), initial, false)
}

/// See [`SharedStorage::save`](super::SharedStorage::save).
fn save(view: &mut DraftView<'_>, path: &Path, value: Value, create_parents: bool) -> Result<()> {
    if path.is_root() && !matches!(value, Value::Map(_)) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "cannot save {} at the root: the root of the storage is always a map; save a map, or \
                 save the value at a path such as \"config\"",
                value.kind_phrase()
            ),
        )
        .with_context("path", path));
    }
    let key = key_of(path);
    // Encode first: an unstorable value fails before anything changes.
    let nodes = Encoder::encode(path, key.clone(), value)?;
    let parents = parents_to_create(view, path, &key, create_parents)?;
    replace(view, path, &key, parents, nodes);
    Ok(())
}

/// [`save`] of a leaf that came as its encoded node, checked without decoding it.
fn save_node(view: &mut DraftView<'_>, path: &Path, node: Vec<u8>, create_parents: bool) -> Result<()> {
    if path.is_root() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "cannot save a value that is not a map at the root: the root of the storage is always a map",
        )
        .with_context("path", path));
    }
    if let Err(why) = check_leaf_node(&node) {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!("the value sent to save at {} is malformed: {why}", describe(path.as_str())),
        )
        .with_context("path", path));
    }
    let key = key_of(path);
    for (parent, map) in parents_to_create(view, path, &key, create_parents)? {
        view.put(parent, map);
    }
    // A leaf over a leaf, or over nothing, in place; a map there goes with everything below it.
    if view.node(&key).is_some_and(is_map_node) {
        view.delete_subtree(&key);
    }
    view.put(key, node);
    Ok(())
}

/// Puts `nodes` at `path` in place of what is there: a leaf over a leaf (or nothing) is one put;
/// a map there is removed with everything below it first.
fn replace(view: &mut DraftView<'_>, path: &Path, key: &[u8], parents: Vec<NodePut>, nodes: Vec<NodePut>) {
    for (parent, node) in parents {
        view.put(parent, node);
    }
    if path.is_root() || view.node(key).is_some_and(is_map_node) || nodes.len() > 1 {
        view.delete_subtree(key);
    }
    for (key, node) in nodes {
        view.put(key, node);
    }
}

/// Removes the value or subtree at `path`; whether anything was there.
fn delete(view: &mut DraftView<'_>, path: &Path) -> bool {
    if !view.exists(path) {
        return false;
    }
    view.delete_subtree(&key_of(path));
    true
}

fn compare_and_swap(
    view: &mut DraftView<'_>,
    path: &Path,
    expected: Option<Value>,
    new: Option<Value>,
) -> Result<Outcome> {
    let current = view.read(path)?;
    if current != expected {
        return Ok(Outcome::SwapLost { path: path.clone(), expected, seen: current });
    }
    match new {
        Some(value) => save(view, path, value, false)?,
        // Nothing there and nothing wanted: the swap holds without a write.
        None if current.is_none() => {}
        None => view.delete_subtree(&key_of(path)),
    }
    Ok(Outcome::Reply(Reply::Swapped(Ok(()))))
}

fn increment(view: &mut DraftView<'_>, path: &Path, by: i64) -> Result<i64> {
    let now = match current_leaf(view, path, "increment", "an integer")? {
        None => 0,
        Some(Value::Int(n)) => n,
        Some(other) => return Err(wrong_type(path, "increment", &other, "an integer")),
    };
    let next = now.checked_add(by).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "cannot increment {} by {by}: {now} + {by} does not fit in a 64-bit integer",
                describe(path.as_str())
            ),
        )
        .with_context("path", path)
        .with_context("operation", "increment")
    })?;
    put_leaf(view, path, Value::Int(next), "increment")?;
    Ok(next)
}

fn increment_float(view: &mut DraftView<'_>, path: &Path, by: f64) -> Result<f64> {
    let now = match current_leaf(view, path, "increment_float", "a number")? {
        None => 0.0,
        Some(Value::Float(f)) => f,
        Some(Value::Int(n)) => n as f64,
        Some(Value::UInt(n)) => n as f64,
        Some(other) => return Err(wrong_type(path, "increment_float", &other, "a number")),
    };
    let next = now + by;
    if !next.is_finite() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("cannot increment {} by {by}: the result would be {next}", describe(path.as_str())),
        )
        .with_context("path", path)
        .with_context("operation", "increment_float"));
    }
    put_leaf(view, path, Value::Float(next), "increment_float")?;
    Ok(next)
}

fn append(view: &mut DraftView<'_>, path: &Path, element: Value) -> Result<usize> {
    let mut list = match current_leaf(view, path, "append", "a list")? {
        None => Vec::new(),
        Some(Value::List(list)) => list,
        Some(other) => return Err(wrong_type(path, "append", &other, "a list")),
    };
    list.push(element);
    let len = list.len();
    put_leaf(view, path, Value::List(list), "append")?;
    Ok(len)
}

fn remove_value(view: &mut DraftView<'_>, path: &Path, element: &Value) -> Result<usize> {
    let mut list = match current_leaf(view, path, "remove_value", "a list")? {
        None => return Ok(0),
        Some(Value::List(list)) => list,
        Some(other) => return Err(wrong_type(path, "remove_value", &other, "a list")),
    };
    let before = list.len();
    list.retain(|item| item != element);
    let removed = before - list.len();
    if removed > 0 {
        put_leaf(view, path, Value::List(list), "remove_value")?;
    }
    Ok(removed)
}

fn insert_if_absent(view: &mut DraftView<'_>, path: &Path, value: Value) -> Result<bool> {
    // The root is always there: a map, maybe empty.
    if path.is_root() || view.exists(path) {
        return Ok(false);
    }
    save(view, path, value, false)?;
    Ok(true)
}

fn take(view: &mut DraftView<'_>, path: &Path) -> Result<Option<Value>> {
    let current = view.read(path)?;
    if current.is_some() {
        view.delete_subtree(&key_of(path));
    }
    Ok(current)
}

fn apply_registered(
    view: &mut DraftView<'_>,
    path: &Path,
    name: &str,
    payload: &[u8],
    operations: &Operations,
) -> Result<Vec<u8>> {
    let operation = operations.get(name).map_err(|e| e.with_context("path", path))?;
    let current = view.read(path)?;
    let existed = current.is_some();
    let (next, reply) = operation(payload, current).map_err(|e| {
        let e = if e.context_value("path").is_none() { e.with_context("path", path) } else { e };
        e.with_context("operation", name)
    })?;
    match next {
        Some(value) => save(view, path, value, false)?,
        None if existed => view.delete_subtree(&key_of(path)),
        None => {}
    }
    Ok(reply)
}

/// The value at `path` for an operation on a leaf: `None` when nothing is there; a map is refused
/// (`operation` and what it `wants` name the operation and the type in the error).
fn current_leaf(view: &DraftView<'_>, path: &Path, operation: &str, wants: &str) -> Result<Option<Value>> {
    if path.is_root() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("cannot {operation} the root: the root of the storage is a map"),
        )
        .with_context("path", path)
        .with_context("operation", operation.to_owned()));
    }
    let key = key_of(path);
    match view.node(&key) {
        None => Ok(None),
        Some(node) if is_map_node(node) => {
            Err(wrong_type(path, operation, &Value::Map(Default::default()), wants))
        }
        Some(node) => match decode_node(node) {
            Ok(Node::Leaf(value)) => Ok(Some(value)),
            Ok(Node::Map) => Err(wrong_type(path, operation, &Value::Map(Default::default()), wants)),
            Err(why) => Err(corrupt(path, &key, why)),
        },
    }
}

/// Puts the leaf `value` at `path` after an atomic operation computed it: where something was,
/// in place; where nothing was, as a save, so a missing parent fails as a save's does.
fn put_leaf(view: &mut DraftView<'_>, path: &Path, value: Value, operation: &str) -> Result<()> {
    let key = key_of(path);
    if view.node(&key).is_none() {
        let parents = parents_to_create(view, path, &key, false)
            .map_err(|e| e.with_context("operation", operation.to_owned()))?;
        for (parent, node) in parents {
            view.put(parent, node);
        }
    }
    view.put(key, encode_node(&Node::Leaf(value), path)?);
    Ok(())
}

fn wrong_type(path: &Path, operation: &str, found: &Value, wanted: &str) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!(
            "cannot {operation} {}: it holds {}, not {wanted}; nothing was changed",
            describe(path.as_str()),
            found.kind_phrase()
        ),
    )
    .with_context("path", path)
    .with_context("operation", operation.to_owned())
}

/// Checks the ancestors of `path` (whose key is `key`), outermost first, and returns the puts
/// that create the missing ones (none unless `create_parents`). Fails if one is missing and may
/// not be created, or exists but is not a map. The ancestors' keys are the prefixes of `key` that
/// end at one of its NULs but the last, so this reads the draft's view of them and allocates
/// nothing when they are all there.
fn parents_to_create(
    view: &DraftView<'_>,
    path: &Path,
    key: &[u8],
    create_parents: bool,
) -> Result<Vec<NodePut>> {
    let mut puts = Vec::new();
    let last = key.len().saturating_sub(1);
    for end in (0..last).filter(|&at| key[at] == 0) {
        let ancestor = &key[..=end];
        // Below a missing map nothing else can exist, so no more lookups are needed.
        if puts.is_empty() {
            match view.node(ancestor) {
                Some(node) if is_map_node(node) => continue,
                Some(node) => return Err(not_a_map(path, ancestor, node)),
                None if create_parents => {}
                None => {
                    let dotted = dotted_of(ancestor);
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!(
                            "cannot save {}: {} does not exist; save the parent map first or ask to \
                             create parents",
                            describe(path.as_str()),
                            describe(&dotted),
                        ),
                    )
                    .with_context("path", path)
                    .with_context("prefix", &dotted));
                }
            }
        }
        puts.push((ancestor.to_vec(), MAP_NODE.to_vec()));
    }
    Ok(puts)
}

/// An ancestor of `path` that holds a leaf, where a save needs a map.
fn not_a_map(path: &Path, ancestor: &[u8], node: &[u8]) -> Error {
    let held = match decode_node(node) {
        Ok(Node::Leaf(value)) => value.kind_phrase(),
        Ok(Node::Map) => "a map",
        Err(why) => return corrupt(path, ancestor, why),
    };
    let dotted = dotted_of(ancestor);
    Error::new(
        ErrorKind::InvalidInput,
        format!(
            "cannot save {}: {} holds {held}, not a map; only maps have children, so delete or replace {} first",
            describe(path.as_str()),
            describe(&dotted),
            describe(&dotted),
        ),
    )
    .with_context("path", path)
    .with_context("prefix", &dotted)
}

/// The dotted path of a key (for messages): `a\0b\0` is `a.b`.
fn dotted_of(key: &[u8]) -> String {
    String::from_utf8_lossy(key.strip_suffix(&[0]).unwrap_or(key)).replace('\0', ".")
}

/// The node a leaf value is stored as: what [`StorageRequest::SaveNode`] carries.
pub(crate) fn leaf_node(value: &Value) -> Result<Vec<u8>> {
    let mut node = Vec::with_capacity(32);
    node.push(LEAF_TAG);
    postcard::to_extend(value, node)
        .map_err(|err| Error::new(ErrorKind::Serialization, format!("cannot encode a value: {err}")))
}

/// `value` as a [`Value`] for an operation's argument, its error naming the path.
pub(crate) fn argument<T: serde::Serialize + ?Sized>(path: &str, value: &T) -> Result<Value> {
    to_value(value).map_err(|e| e.with_context("path", clusterfy_core::error::excerpt(path)))
}
