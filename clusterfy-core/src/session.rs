//! The protocol's decisions as sans-IO state: handshake checks, the table of requests in flight,
//! and routing. No sockets, tasks or clocks here, so they are tested directly.

use std::collections::HashMap;
use std::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::protocol::{
    Destination, Hello, Message, PROTOCOL_VERSION, RequestId, Welcome, WorkerId, WorkerSelector,
};

/// The primary's side of one worker's handshake: checks the first frame against the worker's id
/// and, for transports that authenticate with one, the one-time token it gave that worker.
#[derive(Debug)]
pub struct PrimaryHandshake {
    worker_id: WorkerId,
    /// `None` when the channel itself authenticates (it was inherited at spawn).
    token: Option<String>,
    spent: bool,
}

impl PrimaryHandshake {
    /// Expects worker `worker_id`, presenting `token` if one was given to it.
    pub fn new(worker_id: WorkerId, token: Option<String>) -> Self {
        PrimaryHandshake { worker_id, token, spent: false }
    }

    /// Checks the first frame of a connection. On success the handshake is spent: no later
    /// connection can pass it again.
    pub fn check_hello(&mut self, first: Message) -> Result<Hello> {
        let Message::Hello(hello) = first else {
            return Err(Error::new(
                ErrorKind::Protocol,
                "the first frame of a worker connection must be Hello",
            ));
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "worker speaks protocol version {}, this primary speaks {PROTOCOL_VERSION}; build both from the same clusterfy version",
                    hello.protocol_version
                ),
            )
            .with_context("worker_id", hello.worker_id));
        }
        if self.spent {
            return Err(Error::new(ErrorKind::Unauthorized, "this worker's handshake was already used")
                .with_context("worker_id", self.worker_id));
        }
        let token_ok =
            self.token.as_ref().is_none_or(|t| constant_time_eq(hello.token.as_bytes(), t.as_bytes()));
        if hello.worker_id != self.worker_id || !token_ok {
            return Err(Error::new(ErrorKind::Unauthorized, "connection refused: wrong worker id or token")
                .with_context("worker_id", self.worker_id));
        }
        self.spent = true;
        Ok(hello)
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The worker's check of the primary's first frame.
pub fn check_welcome(first: Message, expected: WorkerId) -> Result<Welcome> {
    match first {
        Message::Welcome(welcome) if welcome.protocol_version != PROTOCOL_VERSION => Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "primary speaks protocol version {}, this worker speaks {PROTOCOL_VERSION}",
                welcome.protocol_version
            ),
        )),
        Message::Welcome(welcome) if welcome.worker_id != expected => Err(Error::new(
            ErrorKind::Protocol,
            format!("primary welcomed worker #{} but this is worker #{expected}", welcome.worker_id),
        )),
        Message::Welcome(welcome) => Ok(welcome),
        Message::Notice(crate::protocol::Notice::Error(err)) => Err(Error::from(err)),
        _ => Err(Error::new(ErrorKind::Protocol, "the first frame from the primary must be Welcome")),
    }
}

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

/// What the primary knows about one worker when it routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry<'a> {
    /// The worker's id.
    pub id: WorkerId,
    /// Its name.
    pub name: &'a str,
    /// Whether it is connected and can take commands now.
    pub connected: bool,
}

/// Where the primary sends a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The primary runs it.
    Primary,
    /// One worker runs it.
    Worker(WorkerId),
    /// These workers run it, in id order; the reply gathers all answers.
    Broadcast(Vec<WorkerId>),
}

/// Decides where a command with `destination`, received by the primary, goes.
///
/// `workers` is the primary's directory in any order. Names are unique among workers (the primary
/// refuses a duplicate name at fork), so a name selects at most one worker.
pub fn route(destination: &Destination, workers: &[RouteEntry<'_>]) -> Result<Route> {
    match destination {
        Destination::Primary | Destination::Here => Ok(Route::Primary),
        Destination::AllWorkers => {
            let mut ids: Vec<WorkerId> = workers.iter().filter(|w| w.connected).map(|w| w.id).collect();
            ids.sort();
            Ok(Route::Broadcast(ids))
        }
        Destination::Worker(selector) => {
            let found = workers.iter().find(|w| match selector {
                WorkerSelector::Id(id) => w.id == *id,
                WorkerSelector::Name(name) => w.name == name,
            });
            match found {
                Some(w) if w.connected => Ok(Route::Worker(w.id)),
                Some(w) => Err(Error::new(
                    ErrorKind::WorkerExited,
                    format!("{selector} is not connected (exited or still starting); retry once it is ready"),
                )
                .with_context("worker", w.name)),
                None => {
                    let mut names: Vec<&str> = workers.iter().map(|w| w.name).collect();
                    names.sort_unstable();
                    Err(Error::new(
                        ErrorKind::UnknownWorker,
                        format!("no {selector} in this cluster; known workers: [{}]", names.join(", ")),
                    )
                    .with_context("target", selector))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(id: u64, token: &str) -> Message {
        Message::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            worker_id: WorkerId(id),
            token: token.into(),
        })
    }

    #[test]
    fn handshake_accepts_the_right_token_once() {
        let mut hs = PrimaryHandshake::new(WorkerId(3), Some("secret".into()));
        assert_eq!(hs.check_hello(hello(3, "wrong")).unwrap_err().kind(), ErrorKind::Unauthorized);
        assert_eq!(hs.check_hello(hello(4, "secret")).unwrap_err().kind(), ErrorKind::Unauthorized);
        assert!(hs.check_hello(hello(3, "secret")).is_ok());
        assert_eq!(hs.check_hello(hello(3, "secret")).unwrap_err().kind(), ErrorKind::Unauthorized);
    }

    #[test]
    fn an_inherited_channel_needs_no_token_but_the_right_id_once() {
        let mut hs = PrimaryHandshake::new(WorkerId(3), None);
        assert_eq!(hs.check_hello(hello(4, "")).unwrap_err().kind(), ErrorKind::Unauthorized);
        assert!(hs.check_hello(hello(3, "")).is_ok());
        assert_eq!(hs.check_hello(hello(3, "")).unwrap_err().kind(), ErrorKind::Unauthorized);
    }

    #[test]
    fn handshake_rejects_other_versions_and_other_first_frames() {
        let mut hs = PrimaryHandshake::new(WorkerId(1), Some("t".into()));
        let old = Message::Hello(Hello { protocol_version: 0, worker_id: WorkerId(1), token: "t".into() });
        assert_eq!(hs.check_hello(old).unwrap_err().kind(), ErrorKind::Protocol);
        assert_eq!(
            hs.check_hello(Message::Notice(crate::protocol::Notice::Ready)).unwrap_err().kind(),
            ErrorKind::Protocol
        );
        assert!(hs.check_hello(hello(1, "t")).is_ok(), "a refused attempt must not spend the token");
    }

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

    fn directory() -> Vec<RouteEntry<'static>> {
        vec![
            RouteEntry { id: WorkerId(2), name: "Sarah", connected: true },
            RouteEntry { id: WorkerId(1), name: "Paul", connected: true },
            RouteEntry { id: WorkerId(3), name: "John", connected: false },
        ]
    }

    #[test]
    fn routes_by_name_id_and_broadcast() {
        let dir = directory();
        assert_eq!(route(&Destination::Worker("Sarah".into()), &dir).unwrap(), Route::Worker(WorkerId(2)));
        assert_eq!(
            route(&Destination::Worker(WorkerId(1).into()), &dir).unwrap(),
            Route::Worker(WorkerId(1))
        );
        assert_eq!(
            route(&Destination::AllWorkers, &dir).unwrap(),
            Route::Broadcast(vec![WorkerId(1), WorkerId(2)])
        );
        assert_eq!(route(&Destination::Primary, &dir).unwrap(), Route::Primary);
    }

    #[test]
    fn routing_to_missing_or_disconnected_workers_says_why() {
        let dir = directory();
        let err = route(&Destination::Worker("Nobody".into()), &dir).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnknownWorker);
        assert!(err.to_string().contains("Paul, Sarah"), "{err}");
        let err = route(&Destination::Worker("John".into()), &dir).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WorkerExited);
    }
}
