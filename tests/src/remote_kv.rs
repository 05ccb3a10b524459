//! The key-value contract spoken through the tree API of [`Storage`], so the storage
//! conformance suite can run against a worker's remote view of the shared storage.
//!
//! Each key is one leaf below a root map. Its segment is `k<hex of the key>` for keys up to 100
//! bytes and `h<hash of the key>` for longer ones (segments are at most 256 bytes); the leaf
//! holds the pair `[key, value]` as bytes, so the key itself is never lost to the hash. A scan
//! is one `retrieve` of the root map. A batch of one put or delete writes its one leaf (one
//! step in the primary, so atomic); a longer batch rewrites the root map with `Storage::update`,
//! a compare-and-swap loop, so it is atomic too (and the suite's concurrent case exercises that
//! loop under contention, without making every put copy the whole map).

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use clusterfy::storage::{BatchOp, Storage};
use clusterfy::{Error, ErrorKind, Result, Value};
use serde::{Deserialize, Serialize};

/// One key-value operation, as sent to the worker that runs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KvOp {
    /// `get`.
    Get(Vec<u8>),
    /// `scan_prefix`.
    ScanPrefix(Vec<u8>),
    /// `apply_batch`.
    Batch(Vec<KvBatchOp>),
}

/// One operation of a [`KvOp::Batch`] ([`BatchOp`] on the wire).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KvBatchOp {
    /// [`BatchOp::Put`].
    Put(Vec<u8>, Vec<u8>),
    /// [`BatchOp::Delete`].
    Delete(Vec<u8>),
    /// [`BatchOp::DeletePrefix`].
    DeletePrefix(Vec<u8>),
}

/// The answer to a [`KvOp`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KvReply {
    /// Nothing to return.
    Done,
    /// The value of a key.
    Value(Option<Vec<u8>>),
    /// Scanned pairs, ordered by key.
    Pairs(Vec<(Vec<u8>, Vec<u8>)>),
}

/// Runs `op` through `storage` below `root` (a dotted path whose map exists).
pub async fn run(storage: &Storage, root: &str, op: KvOp) -> Result<KvReply> {
    let path = |key: &[u8]| format!("{root}.{}", segment(key));
    Ok(match op {
        KvOp::Get(key) => KvReply::Value(value_of(storage.retrieve_value(&path(&key)).await?)?),
        KvOp::ScanPrefix(prefix) => {
            let Some(Value::Map(entries)) = storage.retrieve_value(root).await? else {
                return Err(corrupt("the key-value root is not a map"));
            };
            let mut pairs = entries.into_values().map(pair_of).collect::<Result<Vec<_>>>()?;
            pairs.retain(|(key, _)| key.starts_with(&prefix));
            pairs.sort();
            KvReply::Pairs(pairs)
        }
        KvOp::Batch(ops) => match ops.as_slice() {
            [KvBatchOp::Put(key, value)] => {
                storage.save(&path(key), &leaf(key, value)).await?;
                KvReply::Done
            }
            [KvBatchOp::Delete(key)] => {
                storage.delete(&path(key)).await?;
                KvReply::Done
            }
            _ => update_root(storage, root, &ops).await?,
        },
    })
}

/// Runs a batch on the whole root map at once.
async fn update_root(storage: &Storage, root: &str, ops: &[KvBatchOp]) -> Result<KvReply> {
    storage
        .update::<Value, _>(root, |current| {
            let mut entries = match current {
                Some(Value::Map(entries)) => entries,
                _ => BTreeMap::new(),
            };
            for op in ops {
                match op {
                    KvBatchOp::Put(key, value) => drop(entries.insert(segment(key), leaf(key, value))),
                    KvBatchOp::Delete(key) => drop(entries.remove(&segment(key))),
                    KvBatchOp::DeletePrefix(prefix) => entries.retain(|_, leaf| {
                        pair_of(leaf.clone()).is_ok_and(|(key, _)| !key.starts_with(prefix))
                    }),
                }
            }
            Some(Value::Map(entries))
        })
        .await?;
    Ok(KvReply::Done)
}

/// Keys up to this many bytes are spelled out in their segment.
const SPELLED_OUT: usize = 100;

fn segment(key: &[u8]) -> String {
    if key.len() <= SPELLED_OUT {
        let mut segment = String::with_capacity(1 + 2 * key.len());
        segment.push('k');
        for byte in key {
            segment.push_str(&format!("{byte:02x}"));
        }
        segment
    } else {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        format!("h{:016x}{:x}", hasher.finish(), key.len())
    }
}

fn leaf(key: &[u8], value: &[u8]) -> Value {
    Value::List(vec![Value::Bytes(key.to_vec()), Value::Bytes(value.to_vec())])
}

fn pair_of(leaf: Value) -> Result<(Vec<u8>, Vec<u8>)> {
    match leaf {
        Value::List(items) => match <[Value; 2]>::try_from(items) {
            Ok([Value::Bytes(key), Value::Bytes(value)]) => Ok((key, value)),
            _ => Err(corrupt("a key-value leaf is not a [key, value] pair")),
        },
        _ => Err(corrupt("a key-value leaf is not a list")),
    }
}

fn value_of(leaf: Option<Value>) -> Result<Option<Vec<u8>>> {
    leaf.map(|leaf| pair_of(leaf).map(|(_, value)| value)).transpose()
}

fn corrupt(what: &str) -> Error {
    Error::new(ErrorKind::Storage, what.to_owned())
}

/// The [`KvOp`] of a batch.
pub fn batch_op(ops: Vec<BatchOp>) -> KvOp {
    KvOp::Batch(
        ops.into_iter()
            .map(|op| match op {
                BatchOp::Put { key, value } => KvBatchOp::Put(key, value),
                BatchOp::Delete { key } => KvBatchOp::Delete(key),
                BatchOp::DeletePrefix { prefix } => KvBatchOp::DeletePrefix(prefix),
            })
            .collect(),
    )
}
