//! The in-memory state and the bounded queue of writes on their way to Redis, without any I/O.
//!
//! Every write changes the map and is given the next sequence number under one lock, so the
//! queue holds the writes in exactly the order memory saw them. The mirror task takes work from
//! here and reports back; what it sends is either queued writes, in order, or a snapshot of the
//! whole map with the sequence number it reflects.

use std::collections::VecDeque;

use clusterfy_core::kv::Change;

/// Keys and values.
pub(crate) type Map = clusterfy_core::kv::KvMap;

/// A write as Redis has to replay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Mirrored inside one `MULTI`/`EXEC`, so Redis never shows part of it.
    Batch(Vec<Change>),
}

impl Op {
    /// How much of the queue's capacity the write takes: one per key written.
    pub(crate) fn weight(&self) -> usize {
        match self {
            Op::Batch(ops) => ops.len().max(1),
        }
    }

    /// Roughly how many bytes it puts on the wire.
    pub(crate) fn bytes(&self) -> usize {
        let one = |change: &Change| match change {
            Change::Put { key, value } => key.len() + value.len(),
            Change::Delete { key } => key.len(),
        };
        match self {
            Op::Batch(ops) => ops.iter().map(one).sum(),
        }
    }
}

/// A write with its place in memory's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) seq: u64,
    pub(crate) op: Op,
}

/// What happened to a recorded write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// Queued for the mirror.
    Queued,
    /// Not queued: a resync is pending and its snapshot will carry the write.
    Covered,
    /// The queue was full: it was emptied and a resync scheduled, whose snapshot carries this
    /// write and every dropped one.
    Overflowed {
        /// Writes (weights) the queue held and dropped: never more than its capacity. Neither this
        /// write, which was never queued, nor the writes in flight, which the mirror task had
        /// already taken, count.
        dropped: usize,
    },
}

/// Work for the mirror task.
#[derive(Debug)]
pub(crate) enum Work {
    /// Queued writes, oldest first.
    Writes(Vec<Entry>),
    /// The whole map as of write `seq`.
    Snapshot { seq: u64, map: Map },
}

/// Limits of one chunk of queued writes sent at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChunkLimits {
    pub(crate) max_weight: usize,
    pub(crate) max_bytes: usize,
}

#[derive(Debug)]
pub(crate) struct State {
    map: Map,
    /// Sequence number of the last write (0: none since start).
    seq: u64,
    queue: VecDeque<Entry>,
    /// Sum of the weights in `queue`.
    queued: usize,
    /// Weight of the writes the mirror task took and has not reported back.
    in_flight: usize,
    capacity: usize,
    /// Redis must be rewritten from a snapshot before any queued write can go.
    resync: bool,
}

impl State {
    /// The state loaded from Redis at start: Redis holds exactly `map`.
    pub(crate) fn new(map: Map, capacity: usize) -> Self {
        State { map, seq: 0, queue: VecDeque::new(), queued: 0, in_flight: 0, capacity, resync: false }
    }

    pub(crate) fn map(&self) -> &Map {
        &self.map
    }

    /// For writes: change the map, then [`record`](State::record) what Redis has to replay.
    pub(crate) fn map_mut(&mut self) -> &mut Map {
        &mut self.map
    }

    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Writes waiting for Redis, in weight units (queued plus in flight).
    pub(crate) fn pending(&self) -> usize {
        self.queued + self.in_flight
    }

    pub(crate) fn resync_pending(&self) -> bool {
        self.resync
    }

    /// Gives `op` (already applied to the map) the next sequence number and queues it for Redis;
    /// returns its sequence number and what became of it.
    pub(crate) fn record(&mut self, op: Op) -> (u64, Recorded) {
        self.seq += 1;
        if self.resync {
            return (self.seq, Recorded::Covered);
        }
        let weight = op.weight();
        if self.pending().saturating_add(weight) > self.capacity {
            let dropped = self.queued;
            self.schedule_resync();
            return (self.seq, Recorded::Overflowed { dropped });
        }
        self.queue.push_back(Entry { seq: self.seq, op });
        self.queued += weight;
        (self.seq, Recorded::Queued)
    }

    /// Forgets the queue: the next work is a snapshot of the whole map, which carries every
    /// write the queue held.
    pub(crate) fn schedule_resync(&mut self) {
        self.resync = true;
        self.queue.clear();
        self.queued = 0;
    }

    /// The next work for the mirror task, if any: a snapshot when a resync is pending, else the
    /// oldest queued writes within `limits` (at least one write, however large).
    pub(crate) fn take_work(&mut self, limits: ChunkLimits) -> Option<Work> {
        if self.resync {
            self.resync = false;
            return Some(Work::Snapshot { seq: self.seq, map: self.map.clone() });
        }
        let mut entries = Vec::new();
        let (mut weight, mut bytes) = (0usize, 0usize);
        while let Some(next) = self.queue.front() {
            let (w, b) = (next.op.weight(), next.op.bytes());
            if !entries.is_empty() && (weight + w > limits.max_weight || bytes + b > limits.max_bytes) {
                break;
            }
            weight += w;
            bytes += b;
            if let Some(entry) = self.queue.pop_front() {
                entries.push(entry);
            }
        }
        if entries.is_empty() {
            return None;
        }
        self.queued -= weight;
        self.in_flight = weight;
        Some(Work::Writes(entries))
    }

    /// Redis has the writes last taken.
    pub(crate) fn writes_done(&mut self) {
        self.in_flight = 0;
    }

    /// The writes last taken may not have reached Redis: they go back to the front of the queue
    /// to be sent again, in order (unless a resync is pending meanwhile, which carries them).
    pub(crate) fn writes_failed(&mut self, entries: Vec<Entry>) {
        let weight = std::mem::take(&mut self.in_flight);
        if self.resync {
            return;
        }
        for entry in entries.into_iter().rev() {
            self.queue.push_front(entry);
        }
        self.queued += weight;
    }

    /// The snapshot last taken did not reach Redis: take a new one next time.
    pub(crate) fn snapshot_failed(&mut self) {
        self.schedule_resync();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ChunkLimits = ChunkLimits { max_weight: 3, max_bytes: 1 << 20 };

    fn put(key: &[u8]) -> Op {
        Op::Batch(vec![Change::Put { key: key.to_vec(), value: b"v".to_vec() }])
    }

    fn seqs(work: Option<Work>) -> Vec<u64> {
        match work {
            Some(Work::Writes(entries)) => entries.iter().map(|e| e.seq).collect(),
            other => panic!("expected writes, got {other:?}"),
        }
    }

    #[test]
    fn writes_are_taken_in_order_in_chunks() {
        let mut state = State::new(Map::new(), 100);
        for k in 0..5u8 {
            assert_eq!(state.record(put(&[k])), (u64::from(k) + 1, Recorded::Queued));
        }
        assert_eq!(seqs(state.take_work(LIMITS)), [1, 2, 3]);
        assert_eq!(state.pending(), 5, "in-flight writes still count");
        state.writes_done();
        assert_eq!(seqs(state.take_work(LIMITS)), [4, 5]);
        state.writes_done();
        assert!(state.take_work(LIMITS).is_none());
        assert_eq!(state.pending(), 0);
    }

    #[test]
    fn a_batch_larger_than_a_chunk_goes_alone() {
        let mut state = State::new(Map::new(), 100);
        state.record(put(b"a"));
        let big: Vec<Change> = (0..10u8).map(|k| Change::Delete { key: vec![k] }).collect();
        assert_eq!(state.record(Op::Batch(big)).1, Recorded::Queued);
        assert_eq!(seqs(state.take_work(LIMITS)), [1]);
        state.writes_done();
        assert_eq!(seqs(state.take_work(LIMITS)), [2]);
    }

    #[test]
    fn failed_writes_go_back_to_the_front() {
        let mut state = State::new(Map::new(), 100);
        for k in 0..4u8 {
            state.record(put(&[k]));
        }
        let Some(Work::Writes(taken)) = state.take_work(LIMITS) else { panic!("no work") };
        state.record(put(b"late"));
        state.writes_failed(taken);
        assert_eq!(state.pending(), 5);
        assert_eq!(seqs(state.take_work(LIMITS)), [1, 2, 3]);
        state.writes_done();
        assert_eq!(seqs(state.take_work(LIMITS)), [4, 5]);
    }

    #[test]
    fn overflow_drops_the_queue_and_schedules_one_snapshot() {
        let mut state = State::new(Map::new(), 3);
        for k in 0..3u8 {
            state.map_mut().insert(vec![k], b"v".to_vec());
            assert_eq!(state.record(put(&[k])).1, Recorded::Queued);
        }
        state.map_mut().insert(vec![3], b"v".to_vec());
        // postmortem: this reported 4 dropped writes from a queue of capacity 3, counting the
        // write that overflowed, which was never queued.
        assert_eq!(state.record(put(&[3])), (4, Recorded::Overflowed { dropped: 3 }));
        assert_eq!(state.pending(), 0);
        assert_eq!(state.record(put(&[4])), (5, Recorded::Covered), "no queueing until the snapshot");
        match state.take_work(LIMITS) {
            Some(Work::Snapshot { seq, map }) => {
                assert_eq!(seq, 5);
                assert_eq!(map.len(), 4);
            }
            other => panic!("expected a snapshot, got {other:?}"),
        }
        assert_eq!(state.record(put(&[5])), (6, Recorded::Queued), "queueing resumes after the snapshot");
        assert_eq!(seqs(state.take_work(LIMITS)), [6]);
    }

    #[test]
    fn overflow_counts_no_more_writes_than_the_queue_held() {
        // Writes in flight are not dropped (the mirror task has them), so they do not count.
        let mut state = State::new(Map::new(), 4);
        for k in 0..3u8 {
            state.record(put(&[k]));
        }
        let Some(Work::Writes(_)) = state.take_work(LIMITS) else { panic!("no work") };
        assert_eq!(state.record(put(b"x")).1, Recorded::Queued);
        assert_eq!(state.record(put(b"y")).1, Recorded::Overflowed { dropped: 1 });

        // A batch larger than the whole capacity overflows an empty queue: nothing was dropped.
        let mut state = State::new(Map::new(), 3);
        let big = Op::Batch((0..10u8).map(|k| Change::Delete { key: vec![k] }).collect());
        assert_eq!(state.record(big).1, Recorded::Overflowed { dropped: 0 });

        // Any mix of sizes, taken and not: the count is what was queued, within the capacity.
        for capacity in 1..8 {
            let mut state = State::new(Map::new(), capacity);
            for i in 0..200usize {
                let op = match i % 5 {
                    0 => Op::Batch((0..(i % 7) as u8).map(|k| Change::Delete { key: vec![k] }).collect()),
                    _ => put(&[i as u8]),
                };
                let queued_before = state.pending() - state.in_flight;
                match state.record(op).1 {
                    Recorded::Overflowed { dropped } => {
                        assert_eq!(dropped, queued_before, "capacity {capacity}, write {i}");
                        assert!(dropped <= capacity, "capacity {capacity}, write {i}: {dropped}");
                    }
                    Recorded::Queued | Recorded::Covered => {}
                }
                match i % 4 {
                    0 => drop(state.take_work(LIMITS)),
                    1 => state.writes_done(),
                    _ => {}
                }
                assert!(state.pending() <= capacity, "capacity {capacity}, write {i}");
            }
        }
    }

    #[test]
    fn overflow_counts_writes_in_flight() {
        let mut state = State::new(Map::new(), 4);
        for k in 0..3u8 {
            state.record(put(&[k]));
        }
        let Some(Work::Writes(taken)) = state.take_work(LIMITS) else { panic!("no work") };
        assert_eq!(state.record(put(b"x")).1, Recorded::Queued);
        assert!(matches!(state.record(put(b"y")).1, Recorded::Overflowed { .. }));
        // The failed chunk is not queued again: the snapshot carries it.
        state.writes_failed(taken);
        assert_eq!(state.pending(), 0);
        assert!(matches!(state.take_work(LIMITS), Some(Work::Snapshot { seq: 5, .. })));
    }

    #[test]
    fn a_failed_snapshot_is_taken_again_with_later_writes() {
        let mut state = State::new(Map::new(), 10);
        state.schedule_resync();
        assert!(matches!(state.take_work(LIMITS), Some(Work::Snapshot { seq: 0, .. })));
        state.map_mut().insert(b"k".to_vec(), b"v".to_vec());
        assert_eq!(state.record(put(b"k")).1, Recorded::Queued);
        state.snapshot_failed();
        assert!(state.resync_pending());
        match state.take_work(LIMITS) {
            Some(Work::Snapshot { seq: 1, map }) => assert_eq!(map.len(), 1),
            other => panic!("expected a new snapshot, got {other:?}"),
        }
        assert!(state.take_work(LIMITS).is_none(), "the queued write is in the snapshot");
    }
}
