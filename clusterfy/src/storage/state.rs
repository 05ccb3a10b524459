//! The shared storage's state in the primary's memory: the committed tree (every write that was
//! acknowledged, or is being made durable right now), and the draft of the writer's round in
//! progress on top of it. Readers read the committed tree without waiting for anything; the
//! writer plans and checks each operation against the draft, so that every operation of a round
//! sees the ones before it, and the draft's entries are exactly the round's backend batch: one
//! write per key, however many operations touched it.

use std::collections::BTreeMap;
use std::ops::Bound;

use clusterfy_core::kv::{self, KvMap};
use clusterfy_core::{BatchOp, Path, Result, Value};

use super::layout::{decode_subtree, key_of};

/// Every node, by key: the committed content of the storage.
pub(crate) type Committed = KvMap;

/// The value or subtree at `path` in `nodes`; see [`SharedStorage::retrieve_value`](super::SharedStorage::retrieve_value).
pub(crate) fn read(nodes: &Committed, path: &Path) -> Result<Option<Value>> {
    let prefix = key_of(path);
    decode_subtree(path, &prefix, kv::scan_prefix(nodes, &prefix).map(|(k, v)| (k.as_slice(), v.as_slice())))
}

/// The changes of one writer round, not yet committed.
#[derive(Debug, Default)]
pub(crate) struct Draft {
    /// Keys put or deleted, with their node as it stands (`None`: deleted).
    entries: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Prefixes whose committed keys are all deleted (`DeletePrefix`), in order; an entry of
    /// `entries` below one was put after it.
    deleted_prefixes: Vec<Vec<u8>>,
    /// Puts and subtree deletes so far, to tell whether an operation changed anything.
    changes: usize,
}

/// The committed tree as the draft changes it: what the writer reads while it plans.
pub(crate) struct DraftView<'a> {
    pub(crate) committed: &'a Committed,
    pub(crate) draft: &'a mut Draft,
}

impl Draft {
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.deleted_prefixes.is_empty()
    }

    /// The round's batch: the prefix deletes first, then every key's final node.
    pub(crate) fn into_batch(self) -> Vec<BatchOp> {
        let mut batch = Vec::with_capacity(self.deleted_prefixes.len() + self.entries.len());
        batch.extend(self.deleted_prefixes.into_iter().map(|prefix| BatchOp::DeletePrefix { prefix }));
        batch.extend(self.entries.into_iter().map(|(key, node)| match node {
            Some(value) => BatchOp::Put { key, value },
            None => BatchOp::Delete { key },
        }));
        batch
    }
}

impl DraftView<'_> {
    /// How many changes the round made so far.
    pub(crate) fn changes(&self) -> usize {
        self.draft.changes
    }

    fn deleted_by_prefix(&self, key: &[u8]) -> bool {
        self.draft.deleted_prefixes.iter().any(|prefix| key.starts_with(prefix))
    }

    /// The node at `key` as the round left it so far.
    pub(crate) fn node(&self, key: &[u8]) -> Option<&[u8]> {
        match self.draft.entries.get(key) {
            Some(node) => node.as_deref(),
            None if self.deleted_by_prefix(key) => None,
            None => self.committed.get(key).map(Vec::as_slice),
        }
    }

    /// Every node whose key starts with `prefix`, in key order, as the round left them so far.
    pub(crate) fn scan<'s>(&'s self, prefix: &'s [u8]) -> Vec<(&'s [u8], &'s [u8])> {
        let committed = kv::scan_prefix(self.committed, prefix)
            .filter(|(key, _)| !self.draft.entries.contains_key(*key) && !self.deleted_by_prefix(key))
            .map(|(k, v)| (k.as_slice(), v.as_slice()));
        let drafted = self
            .draft
            .entries
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .filter_map(|(k, v)| v.as_deref().map(|v| (k.as_slice(), v)));
        let mut all: Vec<(&[u8], &[u8])> = committed.chain(drafted).collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all
    }

    /// The value or subtree at `path` as the round left it so far.
    pub(crate) fn read(&self, path: &Path) -> Result<Option<Value>> {
        let prefix = key_of(path);
        decode_subtree(path, &prefix, self.scan(&prefix))
    }

    /// Whether anything is stored at `path` (the root: whether anything is stored at all).
    pub(crate) fn exists(&self, path: &Path) -> bool {
        if path.is_root() {
            return !self.scan(&[]).is_empty();
        }
        self.node(&key_of(path)).is_some()
    }

    /// Puts `node` at `key`.
    pub(crate) fn put(&mut self, key: Vec<u8>, node: Vec<u8>) {
        self.draft.changes += 1;
        self.draft.entries.insert(key, Some(node));
    }

    /// Removes `key` and everything below it.
    pub(crate) fn delete_subtree(&mut self, prefix: &[u8]) {
        self.draft.changes += 1;
        let below: Vec<Vec<u8>> = self
            .draft
            .entries
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, _)| key.clone())
            .collect();
        for key in below {
            self.draft.entries.remove(&key);
        }
        // A prefix under one deleted already adds nothing; one above them covers them.
        if !self.deleted_by_prefix(prefix) {
            self.draft.deleted_prefixes.retain(|deleted| !deleted.starts_with(prefix));
            self.draft.deleted_prefixes.push(prefix.to_vec());
        }
    }
}

/// Commits a round's batch to the committed tree (after the backend took it).
pub(crate) fn commit(committed: &mut Committed, batch: Vec<BatchOp>) {
    kv::apply_batch(committed, batch);
}
