//! The table of requests this side waits on.

use std::collections::HashMap;
use std::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::protocol::RequestId;

/// Requests this side sent and still waits on, each with a `waiter` (a channel, in the drivers)
/// and a deadline.
///
/// Ids are never reused while the table lives, so a late reply to a request that timed out
/// finds nothing instead of answering a newer one. Deadlines are kept here rather than in a
/// timer per request: the driver calls [`RequestTable::expire`] now and then (one sweeper per
/// connection).
#[derive(Debug)]
pub struct RequestTable<W> {
    next_id: RequestId,
    waiting: HashMap<RequestId, (W, Instant)>,
    closed: bool,
}

impl<W> Default for RequestTable<W> {
    fn default() -> Self {
        RequestTable { next_id: 1, waiting: HashMap::new(), closed: false }
    }
}

impl<W> RequestTable<W> {
    /// An empty, open table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a request that must be answered by `deadline` and returns its id; fails once
    /// the table is closed.
    pub fn start(&mut self, waiter: W, deadline: Instant) -> Result<RequestId> {
        if self.closed {
            return Err(Error::new(ErrorKind::Closed, "the connection is closed"));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.insert(id, (waiter, deadline));
        Ok(id)
    }

    /// Takes the waiter of a reply's id; `None` for unknown, late, expired or duplicate replies.
    pub fn finish(&mut self, id: RequestId) -> Option<W> {
        self.waiting.remove(&id).map(|(waiter, _)| waiter)
    }

    /// Takes the waiters whose deadline is at or before `now`, so each can be failed once.
    pub fn expire(&mut self, now: Instant) -> Vec<W> {
        let expired: Vec<RequestId> =
            self.waiting.iter().filter(|(_, (_, deadline))| *deadline <= now).map(|(id, _)| *id).collect();
        expired.into_iter().filter_map(|id| self.finish(id)).collect()
    }

    /// Forgets a request whose caller gave up (deadline, cancellation).
    pub fn abandon(&mut self, id: RequestId) {
        self.waiting.remove(&id);
    }

    /// Closes the table and hands back every waiter, so each can be failed exactly once.
    pub fn close(&mut self) -> Vec<W> {
        self.closed = true;
        self.waiting.drain().map(|(_, (w, _))| w).collect()
    }

    /// Requests in flight.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// True when nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// True once [`RequestTable::close`] ran.
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[test]
    fn expired_requests_are_taken_once_and_their_late_replies_find_nothing() {
        let mut table = RequestTable::new();
        let start = Instant::now();
        let soon = table.start("soon", start + Duration::from_millis(10)).unwrap();
        let later = table.start("later", start + Duration::from_secs(10)).unwrap();
        assert!(table.expire(start).is_empty(), "nothing is due yet");
        assert_eq!(table.expire(start + Duration::from_millis(10)), vec!["soon"], "due at its deadline");
        assert!(table.expire(start + Duration::from_secs(1)).is_empty(), "taken once");
        assert_eq!(table.finish(soon), None, "a late reply finds nothing");
        assert_eq!(table.finish(later), Some("later"));
    }

    #[test]
    fn request_table_fails_every_waiter_once_on_close() {
        let mut table = RequestTable::new();
        let a = table.start("a", far()).unwrap();
        let b = table.start("b", far()).unwrap();
        assert_ne!(a, b);
        assert_eq!(table.finish(a), Some("a"));
        assert_eq!(table.finish(a), None, "a duplicate reply finds nothing");
        assert_eq!(table.close(), vec!["b"]);
        assert_eq!(table.start("c", far()).unwrap_err().kind(), ErrorKind::Closed);
        assert!(table.is_empty());
    }

    #[test]
    fn abandoned_ids_are_not_reused() {
        let mut table = RequestTable::new();
        let a = table.start(1, far()).unwrap();
        table.abandon(a);
        let b = table.start(2, far()).unwrap();
        assert_ne!(a, b);
        assert_eq!(table.finish(a), None);
    }
}
