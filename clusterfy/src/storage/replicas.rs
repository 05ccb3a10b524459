//! The primary's side of the replicas workers keep of branches of the storage: who holds which
//! branch, the snapshot that starts one, and each commit's changes of its branch, sent in commit
//! order before the replies to that commit's writes (so a worker reads its own acknowledged
//! writes through its replica). A worker that falls behind reading its connection is not sent
//! more: it is told its replica lags, and gets the branch again once it has caught up, so the
//! primary never queues more than a bound for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, Weak};

use clusterfy_core::protocol::{NodeChange, Notice, ReplicaSnapshot};
use clusterfy_core::{BatchOp, Error, ErrorKind, Path, Result, WireError};

use tokio::sync::mpsc::WeakUnboundedSender;

use super::job::{Completion, Job, Work};
use super::layout::key_of;
use super::state::Committed;
use crate::link::Link;

/// Bytes queued for a worker above which its replicas get no more changes and resync later.
pub(crate) const LAGGING_ABOVE: usize = 4 << 20;
/// Bytes queued for a worker below which a lagging replica is sent its branch again.
const RESYNC_BELOW: usize = 64 << 10;
/// Room a frame leaves for one node change beside the notice's other fields (tags, ids, the
/// version, the lengths): a change within this of the frame limit is sent alone.
const NOTICE_OVERHEAD: usize = 64;

/// A replica to start, to bring current again, or to forget. All three go through the writer's
/// queue, in the order the worker sent them: a replica dropped while its start still waits in
/// the queue is forgotten after it started, never before.
pub(crate) enum ReplicaChange {
    /// Refused when `link` holds `max_per_link` replicas already.
    Start {
        path: Path,
        replica: u64,
        link: Weak<Link>,
        max_per_link: usize,
    },
    Resync(u64),
    /// The worker dropped replica `replica`: send it nothing more.
    Stop {
        replica: u64,
        link: Weak<Link>,
    },
}

struct Subscription {
    /// Unique among this storage's subscriptions.
    id: u64,
    /// The worker's id for the replica.
    replica: u64,
    /// The key of the branch's path: every key of the branch starts with it.
    prefix: Vec<u8>,
    link: Weak<Link>,
    /// Told it lags; sent nothing until its resync.
    lagging: bool,
}

/// Every replica of this storage's branches.
#[derive(Default)]
pub(crate) struct Replicas {
    subscriptions: Mutex<Vec<Subscription>>,
    next_id: AtomicU64,
}

/// A commit's changes, cut per replica: the subscription and what changed in its branch.
pub(crate) type Cut = Vec<(u64, Vec<NodeChange>)>;

impl Replicas {
    fn lock(&self) -> MutexGuard<'_, Vec<Subscription>> {
        // Every change is a single push, remove or flag: nothing is left half-done.
        self.subscriptions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What `batch` does to each replicated branch (nothing, and no work, when none is
    /// replicated).
    pub(crate) fn changes_of(&self, batch: &[BatchOp]) -> Cut {
        let subscriptions = self.lock();
        subscriptions
            .iter()
            .filter(|s| !s.lagging)
            .filter_map(|s| {
                let changes = branch_changes(&s.prefix, batch);
                (!changes.is_empty()).then_some((s.id, changes))
            })
            .collect()
    }

    /// Sends each replica its changes of commit `version`; a worker that lags gets told so
    /// instead, and is resynced once it has room again.
    /// `jobs`: the writer's queue, which a lagging replica's resync goes through.
    pub(crate) fn publish(&self, jobs: &WeakUnboundedSender<Job>, cut: Cut, version: u64) {
        if cut.is_empty() {
            return;
        }
        let mut subscriptions = self.lock();
        let mut failed = Vec::new();
        for (id, changes) in cut {
            let Some(subscription) = subscriptions.iter_mut().find(|s| s.id == id) else { continue };
            let Some(link) = subscription.link.upgrade() else { continue };
            let replica = subscription.replica;
            if link.queued_len() > LAGGING_ABOVE {
                subscription.lagging = true;
                link.notify_soon(Notice::ReplicaLagged { replica });
                resync_when_drained(jobs.clone(), subscription.link.clone(), id);
            } else {
                let part = |changes, more| Notice::ReplicaChanged { replica, version, changes, more };
                if !send_in_parts(&link, replica, changes, part) {
                    failed.push(id);
                }
            }
        }
        subscriptions.retain(|s| s.link.strong_count() > 0 && !failed.contains(&s.id));
    }

    /// Replicas kept, of every worker.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Starts a replica, or resyncs a lagging one (sending its branch as it stands now in
    /// `committed`, at commit `version`), or forgets one.
    pub(crate) fn change(&self, committed: &Committed, version: u64, change: ReplicaChange) -> Result<()> {
        let mut subscriptions = self.lock();
        let (id, link, replica, prefix) = match change {
            ReplicaChange::Stop { replica, link } => {
                subscriptions.retain(|s| !(s.replica == replica && s.link.ptr_eq(&link)));
                return Ok(());
            }
            ReplicaChange::Start { path, replica, link, max_per_link } => {
                let held = subscriptions.iter().filter(|s| s.link.ptr_eq(&link)).count();
                if held >= max_per_link {
                    return Err(Error::new(
                        ErrorKind::Busy,
                        format!(
                            "this worker keeps {held} replicas already, the most Limits::replicas_per_worker \
                             allows; drop one, replicate a common parent branch, or raise the limit"
                        ),
                    )
                    .with_context("path", path.as_str()));
                }
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let prefix = key_of(&path);
                subscriptions.push(Subscription {
                    id,
                    replica,
                    prefix: prefix.clone(),
                    link: link.clone(),
                    lagging: false,
                });
                (id, link, replica, prefix)
            }
            ReplicaChange::Resync(id) => {
                let Some(subscription) = subscriptions.iter_mut().find(|s| s.id == id) else { return Ok(()) };
                subscription.lagging = false;
                (id, subscription.link.clone(), subscription.replica, subscription.prefix.clone())
            }
        };
        // The writer runs this between commits: the snapshot shows every commit before it, and
        // every later commit's changes follow it.
        let nodes = branch_of(committed, &prefix);
        let sent = link.upgrade().is_some_and(|link| {
            let part = |nodes, more| Notice::ReplicaReset(ReplicaSnapshot { replica, version, nodes, more });
            send_in_parts(&link, replica, nodes, part)
        });
        subscriptions.retain(|s| s.link.strong_count() > 0 && (sent || s.id != id));
        Ok(())
    }
}

/// Sends `changes` to replica `replica` as one message in parts that each fit a frame of `link`
/// (`part` makes the notice of one part, and says whether more follow); the worker shows the
/// message once its last part arrived. A single change too large for any frame (a value saved
/// on the primary itself, not over a link) cannot reach the replica: it is told it failed, and
/// `false` says to forget it.
fn send_in_parts(
    link: &Link,
    replica: u64,
    changes: Vec<NodeChange>,
    part: impl Fn(Vec<NodeChange>, bool) -> Notice,
) -> bool {
    let max_frame_len = link.max_frame_len();
    if let Some(too_large) = changes.iter().find(|c| change_len(c) + NOTICE_OVERHEAD > max_frame_len) {
        let error = Error::new(
            ErrorKind::Protocol,
            format!(
                "replica stopped: a node of its branch takes {} bytes, more than a frame holds ({max_frame_len}); \
                 read that branch with Storage::retrieve, or raise max_frame_len on both sides",
                change_len(too_large)
            ),
        )
        .with_context("replica", replica);
        tracing::warn!(peer = link.peer(), error = %error, "a replica cannot be kept current");
        link.notify_soon(Notice::ReplicaFailed { replica, error: WireError::from(&error) });
        return false;
    }
    // Half a frame per part: a part's own size is estimated, so it keeps well clear of the limit.
    let budget = max_frame_len / 2;
    let mut changes = changes.into_iter().peekable();
    loop {
        let mut taken = Vec::new();
        let mut len = 0;
        while let Some(next) = changes.peek() {
            if !taken.is_empty() && len + change_len(next) > budget {
                break;
            }
            len += change_len(next);
            taken.extend(changes.next());
        }
        let more = changes.peek().is_some();
        link.notify_soon(part(taken, more));
        if !more {
            return true;
        }
    }
}

/// About the bytes `change` takes in a notice: its key and node, and their lengths.
fn change_len(change: &NodeChange) -> usize {
    match change {
        NodeChange::Put { key, node } => key.len() + node.len() + 20,
        NodeChange::Delete { key } => key.len() + 10,
        NodeChange::DeletePrefix { prefix } => prefix.len() + 10,
    }
}

/// Every node of the branch whose keys start with `prefix`.
fn branch_of(committed: &Committed, prefix: &[u8]) -> Vec<NodeChange> {
    clusterfy_core::kv::scan_prefix(committed, prefix)
        .map(|(key, node)| NodeChange::Put { key: key.clone(), node: node.clone() })
        .collect()
}

/// What `batch` does to the keys starting with `prefix`.
fn branch_changes(prefix: &[u8], batch: &[BatchOp]) -> Vec<NodeChange> {
    let mut changes = Vec::new();
    for op in batch {
        match op {
            BatchOp::Put { key, value } if key.starts_with(prefix) => {
                changes.push(NodeChange::Put { key: key.clone(), node: value.clone() });
            }
            BatchOp::Delete { key } if key.starts_with(prefix) => {
                changes.push(NodeChange::Delete { key: key.clone() })
            }
            BatchOp::DeletePrefix { prefix: deleted } if deleted.starts_with(prefix) => {
                changes.push(NodeChange::DeletePrefix { prefix: deleted.clone() });
            }
            // A delete above the branch empties it.
            BatchOp::DeletePrefix { prefix: deleted } if prefix.starts_with(deleted) => {
                changes.push(NodeChange::DeletePrefix { prefix: prefix.to_vec() });
            }
            _ => {}
        }
    }
    changes
}

/// Once `link` has little queued again, asks the writer to resync subscription `id` (in order
/// with the commits).
fn resync_when_drained(writes: WeakUnboundedSender<Job>, link: Weak<Link>, id: u64) {
    tokio::spawn(async move {
        match link.upgrade() {
            Some(link) => link.drained_below(RESYNC_BELOW).await,
            None => return,
        }
        if let Some(writes) = writes.upgrade() {
            let _ = writes.send(Job { work: Work::Resync { subscription: id }, done: Completion::Nobody });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &[u8]) -> BatchOp {
        BatchOp::Put { key: key.to_vec(), value: vec![1] }
    }

    #[test]
    fn a_branch_sees_the_changes_below_it_and_a_delete_above_it_as_its_own() {
        let batch = vec![
            BatchOp::DeletePrefix { prefix: b"a\0".to_vec() },
            put(b"a\0b\0"),
            put(b"a\0bc\0"),
            BatchOp::Delete { key: b"a\0b\0x\0".to_vec() },
            put(b"z\0"),
        ];
        let changes = branch_changes(b"a\0b\0", &batch);
        assert_eq!(
            changes,
            [
                NodeChange::DeletePrefix { prefix: b"a\0b\0".to_vec() },
                NodeChange::Put { key: b"a\0b\0".to_vec(), node: vec![1] },
                NodeChange::Delete { key: b"a\0b\0x\0".to_vec() },
            ]
        );
        assert!(branch_changes(b"q\0", &batch).is_empty());
        assert_eq!(branch_changes(b"", &batch).len(), batch.len(), "the root's branch is everything");
    }
}
