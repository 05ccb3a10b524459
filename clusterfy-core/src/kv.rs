//! The ordered key-value core that in-memory stores share: the memory backend, the Redis
//! mirror's state and the test backends all keep a [`KvMap`] and change it only through
//! [`apply_batch`], so a batch means the same everywhere.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::storage::BatchOp;

/// Keys and values, ordered by key bytes.
pub type KvMap = BTreeMap<Vec<u8>, Vec<u8>>;

/// One key's change, as [`apply_batch_recording`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `key` now holds `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// Its new value.
        value: Vec<u8>,
    },
    /// `key` was removed (or was absent).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

/// The pairs whose key starts with `prefix`, in key order (they are contiguous in a `BTreeMap`).
pub fn scan_prefix<'m>(map: &'m KvMap, prefix: &'m [u8]) -> impl Iterator<Item = (&'m Vec<u8>, &'m Vec<u8>)> {
    map.range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |(key, _)| key.starts_with(prefix))
}

/// Applies `ops` in order: a later operation on the same key wins, and a
/// [`BatchOp::DeletePrefix`] also removes keys put earlier in the same batch.
///
/// Nothing here can fail, so a caller that holds its lock around this call never leaves a batch
/// half applied.
pub fn apply_batch(map: &mut KvMap, ops: Vec<BatchOp>) {
    apply(map, ops, None);
}

/// [`apply_batch`], returning what changed key by key, in order: a prefix delete becomes one
/// delete per key it removed (none if it removed nothing). For stores that replay the changes
/// elsewhere, such as the Redis mirror.
pub fn apply_batch_recording(map: &mut KvMap, ops: Vec<BatchOp>) -> Vec<Change> {
    let mut changes = Vec::with_capacity(ops.len());
    apply(map, ops, Some(&mut changes));
    changes
}

/// Applies `ops`, telling `changes` (if any) what changed; nothing is copied for nobody.
fn apply(map: &mut KvMap, ops: Vec<BatchOp>, mut changes: Option<&mut Vec<Change>>) {
    for op in ops {
        match op {
            BatchOp::Put { key, value } => {
                if let Some(changes) = changes.as_deref_mut() {
                    changes.push(Change::Put { key: key.clone(), value: value.clone() });
                }
                map.insert(key, value);
            }
            BatchOp::Delete { key } => {
                map.remove(&key);
                if let Some(changes) = changes.as_deref_mut() {
                    changes.push(Change::Delete { key });
                }
            }
            BatchOp::DeletePrefix { prefix } => {
                let doomed: Vec<Vec<u8>> = scan_prefix(map, &prefix).map(|(key, _)| key.clone()).collect();
                for key in doomed {
                    map.remove(&key);
                    if let Some(changes) = changes.as_deref_mut() {
                        changes.push(Change::Delete { key });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &[u8], value: &[u8]) -> BatchOp {
        BatchOp::Put { key: key.to_vec(), value: value.to_vec() }
    }

    #[test]
    fn a_prefix_delete_removes_exactly_the_prefix_also_what_the_batch_put_before() {
        let mut map = KvMap::new();
        apply_batch(&mut map, vec![put(b"a", b"1"), put(b"ab", b"2"), put(b"b", b"3")]);
        let changes = apply_batch_recording(
            &mut map,
            vec![put(b"ac", b"4"), BatchOp::DeletePrefix { prefix: b"a".to_vec() }, put(b"ad", b"5")],
        );
        assert_eq!(map.keys().collect::<Vec<_>>(), [b"ad".as_slice(), b"b"]);
        let deleted: Vec<&[u8]> = changes
            .iter()
            .filter_map(|c| if let Change::Delete { key } = c { Some(key.as_slice()) } else { None })
            .collect();
        assert_eq!(deleted, [b"a".as_slice(), b"ab", b"ac"]);
        assert_eq!(changes.len(), 5, "the two puts and the three deletes: {changes:?}");
    }

    #[test]
    fn scan_prefix_is_ordered_and_exact() {
        let mut map = KvMap::new();
        apply_batch(&mut map, vec![put(b"b", b""), put(b"a\x00", b""), put(b"a", b""), put(b"a\xff", b"")]);
        let keys: Vec<&[u8]> = scan_prefix(&map, b"a").map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, [b"a".as_slice(), b"a\x00", b"a\xff"]);
        assert_eq!(scan_prefix(&map, b"").count(), 4);
    }
}
