//! The byte layout of the shared storage in a key-value store: what the primary's memory holds,
//! what every backend persists, and what replicas receive.
//!
//! - The key of a path is each segment's UTF-8 bytes followed by a `0x00` byte: `a.b` is `a\0b\0`.
//!   Segments never contain NUL, so the key of `a.b` is a prefix of exactly the keys of `a.b` and
//!   its descendants (not of `a.bc`, whose key is `a\0bc\0`), and the root is the empty prefix.
//! - The value of a key is the postcard encoding of a node: either "map" (a marker, so that empty
//!   maps exist; the single byte `0x00`) or "leaf" with a [`Value`] that is not a map (`0x01`
//!   followed by the value's postcard encoding). A map value is stored as a map node plus one node
//!   per entry, recursively; lists and scalars are leaves, whatever they contain.
//! - The root map is implicit: it has no key and always exists.
//!
//! Durable backends keep this layout across restarts, so it is a storage format: change it only
//! together with a migration.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;

use clusterfy_core::error::excerpt;
use clusterfy_core::path::{MAX_DEPTH, MAX_SEGMENT_LEN};
use clusterfy_core::value::MAX_NESTING;
use clusterfy_core::{Error, ErrorKind, Path, Result, Value};
use serde::de::{self, Deserialize, Deserializer, EnumAccess, SeqAccess, VariantAccess, Visitor};
use serde::{Deserialize as DeriveDeserialize, Serialize};

/// What one key holds. Variants are append-only: durable backends keep old bytes.
#[derive(Debug, Serialize, DeriveDeserialize)]
pub(crate) enum Node {
    /// A map; its entries are the nodes one segment below.
    Map,
    /// Any value other than a map.
    Leaf(Value),
}

/// The encoding of [`Node::Map`].
pub(crate) const MAP_NODE: &[u8] = &[0];
/// The first byte of every encoded [`Node::Leaf`]; the value's encoding follows.
pub(crate) const LEAF_TAG: u8 = 1;
/// The first byte of an encoded [`Value::Map`] (its variant index).
const VALUE_MAP_TAG: u8 = 8;

/// Whether an encoded node is a map node.
pub(crate) fn is_map_node(node: &[u8]) -> bool {
    node == MAP_NODE
}

/// One put of a planned write: a key and its node.
pub(crate) type NodePut = (Vec<u8>, Vec<u8>);

/// Turns a value to save into the puts of its nodes, checking map keys and depth on the way.
pub(crate) struct Encoder<'p> {
    path: &'p Path,
    ops: Vec<NodePut>,
    // Key of the node being encoded; extended and truncated while recursing.
    key: Vec<u8>,
}

impl Encoder<'_> {
    /// The nodes of `value` saved at `path` (whose key is `key`), parents first; the root map has
    /// no node of its own. Fails on a map key no path can address, or maps nested too deep.
    pub(crate) fn encode(path: &Path, key: Vec<u8>, value: Value) -> Result<Vec<NodePut>> {
        match value {
            // The common case, one leaf: its node takes the key as it is.
            Value::Map(_) => {}
            leaf => return Ok(vec![(key, encode_node(&Node::Leaf(leaf), path)?)]),
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
                self.ops.push((self.key.clone(), MAP_NODE.to_vec()));
                self.entries(entries, depth)
            }
            leaf => {
                let bytes = encode_node(&Node::Leaf(leaf), self.path)?;
                self.ops.push((self.key.clone(), bytes));
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

/// Rebuilds the value at `path` from the pairs of its prefix (in key order). Anything this layout never writes is
/// reported as [`ErrorKind::Storage`] rather than guessed around.
pub(crate) fn decode_subtree<'e>(
    path: &Path,
    prefix: &[u8],
    entries: impl IntoIterator<Item = (&'e [u8], &'e [u8])>,
) -> Result<Option<Value>> {
    let depth = path.segments().count();
    let mut top = path.is_root().then(|| Built::Map(BTreeMap::new()));
    for (key, bytes) in entries {
        let Some(rest) = key.strip_prefix(prefix) else {
            return Err(corrupt(path, key, "a key outside the prefix was read as part of it"));
        };
        let Some(segments) = split_segments(rest) else {
            return Err(corrupt(path, key, "the key is not a sequence of NUL-terminated path segments"));
        };
        if depth + segments.len() > MAX_DEPTH {
            return Err(corrupt(path, key, format!("the key is deeper than {MAX_DEPTH} segments")));
        }
        let node = match decode_node(bytes) {
            Ok(Node::Map) => Built::Map(BTreeMap::new()),
            Ok(Node::Leaf(Value::Map(_))) => {
                return Err(corrupt(path, key, "a leaf node holds a map (maps are stored as map nodes)"));
            }
            Ok(Node::Leaf(value)) => Built::Leaf(value),
            Err(why) => return Err(corrupt(path, key, why)),
        };
        let Some((last, parents)) = segments.split_last() else {
            if top.is_some() {
                let why = if path.is_root() {
                    "a node is stored under the empty key, but the root map has no key"
                } else {
                    "the prefix scan returned the key twice"
                };
                return Err(corrupt(path, key, why));
            }
            top = Some(node);
            continue;
        };
        let mut map = match &mut top {
            Some(Built::Map(map)) => map,
            Some(Built::Leaf(_)) => return Err(corrupt(path, key, "the key lies below a leaf value")),
            None => return Err(corrupt(path, key, "the key's parent map is missing")),
        };
        for segment in parents {
            map = match map.get_mut(*segment) {
                Some(Built::Map(map)) => map,
                Some(Built::Leaf(_)) => return Err(corrupt(path, key, "the key lies below a leaf value")),
                // Also what an out-of-order scan looks like: parents sort before their children.
                None => return Err(corrupt(path, key, "the key's parent map is missing")),
            };
        }
        match map.entry((*last).to_owned()) {
            Entry::Vacant(slot) => {
                slot.insert(node);
            }
            Entry::Occupied(_) => return Err(corrupt(path, key, "the prefix scan returned the key twice")),
        }
    }
    Ok(top.map(Built::into_value))
}

/// The backend key of `path`: every segment followed by NUL; empty for the root.
pub(crate) fn key_of(path: &Path) -> Vec<u8> {
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

pub(crate) fn encode_node(node: &Node, path: &Path) -> Result<Vec<u8>> {
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

pub(crate) fn decode_node(bytes: &[u8]) -> Result<Node, String> {
    match postcard::take_from_bytes::<Node>(bytes) {
        Ok((node, [])) => Ok(node),
        Ok((_, rest)) => Err(format!("the node has {} unexpected trailing bytes", rest.len())),
        Err(err) => Err(format!("the node does not decode: {err}")),
    }
}

pub(crate) fn corrupt(path: &Path, key: &[u8], why: impl fmt::Display) -> Error {
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
pub(crate) fn describe(dotted: &str) -> String {
    if dotted.is_empty() { "the root".to_owned() } else { format!("{:?}", excerpt(dotted)) }
}

/// Checks that `node` is an encoded [`Node::Leaf`] whose value is not a map, exactly as decoding
/// it would, without building the [`Value`]: the fast path of a save, whose value travels as the
/// node it is stored as. Fails with the reason decoding would give.
pub(crate) fn check_leaf_node(node: &[u8]) -> std::result::Result<(), String> {
    let Some((&LEAF_TAG, value)) = node.split_first() else {
        return Err("it is not a leaf node".to_owned());
    };
    if value.first() == Some(&VALUE_MAP_TAG) {
        return Err("a leaf node holds a map (maps are stored as map nodes)".to_owned());
    }
    if plainly_a_scalar(value) {
        return Ok(());
    }
    match postcard::take_from_bytes::<ValueShape>(value) {
        Ok((_, [])) => Ok(()),
        Ok((_, rest)) => Err(format!("the node has {} unexpected trailing bytes", rest.len())),
        Err(err) => Err(format!("the node does not decode: {err}")),
    }
}

/// The common case without serde: a scalar value (null, bool, integer, float, string, bytes)
/// whose variant index is one byte, checked byte by byte as postcard decodes it. `false` means
/// "not plainly": the full check decides, and says what is wrong.
fn plainly_a_scalar(value: &[u8]) -> bool {
    let Some((&tag, rest)) = value.split_first() else { return false };
    match tag {
        0 => rest.is_empty(),
        1 => matches!(rest, [0] | [1]),
        2 | 3 => varint_u64(rest).is_some_and(|(_, used)| used == rest.len()),
        4 => rest.len() == 8,
        5 | 6 => match varint_u64(rest) {
            Some((len, used)) if (rest.len() - used) as u64 == len => {
                tag == 6 || std::str::from_utf8(&rest[used..]).is_ok()
            }
            _ => false,
        },
        _ => false,
    }
}

/// A `u64` varint at the start of `bytes`, as postcard reads it: at most ten bytes, the tenth at
/// most 1. The value and the bytes it took.
fn varint_u64(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (at, &byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * at);
        if byte & 0x80 == 0 {
            return (at < 9 || byte <= 1).then_some((value, at + 1));
        }
    }
    None
}

/// Accepts exactly the encodings [`Value`]'s own `Deserialize` accepts (the same variant
/// indices, postcard's own varints, valid UTF-8, the nesting limit), and keeps nothing.
struct ValueShape;

/// [`Value`]'s variant names, in wire order: what its derived `Deserialize` announces.
const VALUE_VARIANTS: &[&str] = &["Null", "Bool", "Int", "UInt", "Float", "String", "Bytes", "List", "Map"];

thread_local! {
    // Checking runs synchronously on one thread, so a thread-local depth is exact.
    static SHAPE_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One level of lists or maps, counted against [`MAX_NESTING`] while it is checked.
struct Nested;

impl Nested {
    fn enter<E: de::Error>() -> std::result::Result<Nested, E> {
        SHAPE_DEPTH.with(|depth| {
            if depth.get() >= MAX_NESTING {
                return Err(E::custom(format_args!("value nested deeper than {MAX_NESTING} levels")));
            }
            depth.set(depth.get() + 1);
            Ok(Nested)
        })
    }
}

impl Drop for Nested {
    fn drop(&mut self) {
        SHAPE_DEPTH.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

impl<'de> Deserialize<'de> for ValueShape {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_enum("$clusterfy::Value", VALUE_VARIANTS, ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = ValueShape;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> std::result::Result<ValueShape, A::Error> {
        let (index, variant) = data.variant::<u32>()?;
        // Each arm checks its variant's content and keeps nothing of it.
        match index {
            0 => variant.unit_variant()?,
            1 => variant.newtype_variant::<bool>().map(|_| ())?,
            2 => variant.newtype_variant::<i64>().map(|_| ())?,
            3 => variant.newtype_variant::<u64>().map(|_| ())?,
            4 => variant.newtype_variant::<f64>().map(|_| ())?,
            5 => variant.newtype_variant::<BorrowedText>().map(|_| ())?,
            6 => variant.newtype_variant::<BorrowedBytes>().map(|_| ())?,
            7 => {
                let _level = Nested::enter::<A::Error>()?;
                variant.newtype_variant::<ShapeList>().map(|_| ())?
            }
            8 => {
                let _level = Nested::enter::<A::Error>()?;
                variant.newtype_variant::<ShapeMap>().map(|_| ())?
            }
            other => {
                return Err(de::Error::invalid_value(
                    de::Unexpected::Unsigned(u64::from(other)),
                    &"variant index 0 <= i < 9",
                ));
            }
        }
        Ok(ValueShape)
    }
}

/// A string, checked and not kept.
struct BorrowedText;

impl<'de> Deserialize<'de> for BorrowedText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        <&'de str>::deserialize(deserializer).map(|_| BorrowedText)
    }
}

/// Bytes, not kept.
struct BorrowedBytes;

impl<'de> Deserialize<'de> for BorrowedBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        <&'de [u8]>::deserialize(deserializer).map(|_| BorrowedBytes)
    }
}

/// A list of values, each checked.
struct ShapeList;

impl<'de> Deserialize<'de> for ShapeList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Items;
        impl<'de> Visitor<'de> for Items {
            type Value = ShapeList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of values")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<ShapeList, A::Error> {
                while seq.next_element::<ValueShape>()?.is_some() {}
                Ok(ShapeList)
            }
        }
        deserializer.deserialize_seq(Items)
    }
}

/// A map of strings to values (inside a list: any keys), each checked.
struct ShapeMap;

impl<'de> Deserialize<'de> for ShapeMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = ShapeMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings to values")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<ShapeMap, A::Error> {
                while map.next_entry::<BorrowedText, ValueShape>()?.is_some() {}
                Ok(ShapeMap)
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

#[cfg(test)]
// A failed unwrap is the clearest failure report a test can give.
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What decoding the node's value says: whether [`check_leaf_node`] must accept it.
    fn decodes_as_a_leaf(value_bytes: &[u8]) -> bool {
        matches!(postcard::take_from_bytes::<Value>(value_bytes), Ok((value, [])) if !matches!(value, Value::Map(_)))
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<u64>().prop_map(Value::UInt),
            any::<f64>().prop_map(Value::Float),
            ".{0,4}".prop_map(Value::String),
            prop::collection::vec(any::<u8>(), 0..4).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::List),
                prop::collection::btree_map(".{0,3}", inner, 0..3).prop_map(Value::Map),
            ]
        })
    }

    proptest! {
        #[test]
        fn the_check_of_a_leaf_node_accepts_exactly_what_decoding_accepts(bytes in prop::collection::vec(any::<u8>(), 0..24)) {
            let node = [&[LEAF_TAG][..], &bytes].concat();
            prop_assert_eq!(check_leaf_node(&node).is_ok(), decodes_as_a_leaf(&bytes), "{:?}", bytes);
        }

        #[test]
        fn the_quick_scalar_check_accepts_only_what_decoding_accepts(
            tag in 0u8..9,
            len in 0u8..12,
            body in prop::collection::vec(prop_oneof![any::<u8>(), Just(b'a'), Just(0x80), Just(1)], 0..12),
        ) {
            let bytes = [&[tag, len][..], &body].concat();
            if plainly_a_scalar(&bytes) {
                prop_assert!(decodes_as_a_leaf(&bytes), "{:?}", bytes);
            }
        }

        #[test]
        fn every_encoded_scalar_takes_the_quick_check(value in value().prop_filter("a scalar", |v| !matches!(v, Value::List(_) | Value::Map(_)))) {
            let bytes = postcard::to_allocvec(&value).unwrap();
            prop_assert!(plainly_a_scalar(&bytes), "{:?}", value);
        }

        #[test]
        fn every_encoded_leaf_passes_the_check_and_a_corrupted_one_as_decoding_says(value in value(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut node = encode_node(&Node::Leaf(value.clone()), &Path::root()).unwrap();
            prop_assert_eq!(check_leaf_node(&node).is_ok(), !matches!(value, Value::Map(_)));
            let at = 1 + at.index(node.len().max(2) - 1);
            if at < node.len() {
                node[at] = byte;
                prop_assert_eq!(check_leaf_node(&node).is_ok(), decodes_as_a_leaf(&node[1..]));
            }
        }
    }

    #[test]
    fn a_map_node_and_deep_nesting_are_refused_as_leaves() {
        assert!(check_leaf_node(MAP_NODE).is_err());
        let mut deep = Value::Null;
        for _ in 0..=MAX_NESTING {
            deep = Value::List(vec![deep]);
        }
        let node = [&[LEAF_TAG][..], &postcard::to_allocvec(&deep).unwrap()].concat();
        assert!(check_leaf_node(&node).is_err(), "as decoding refuses it");
        assert!(!decodes_as_a_leaf(&node[1..]));
    }
}
