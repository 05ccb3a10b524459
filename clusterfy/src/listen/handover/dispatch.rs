//! The primary's side of [`Balance::Handover`](crate::listen::Balance::Handover): accept on the listener
//! while some worker process has room, hand each connection to the next one (round-robin), and
//! take back what a process that ended had not taken.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use clusterfy_core::os::{self, Registered};
use clusterfy_core::{Error, Result};
use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::{Kind, TAKEN_LEN, decode_taken, encode_handed};

/// Connections handed to one process and not yet taken. Round-robin hands each process its
/// share of a burst whether or not it took the last ones yet (with a small window the process
/// whose accept task runs first would take most of a burst of new keep-alive connections); a
/// process that hangs holds at most this many, until it ends and gives them back.
const IN_FLIGHT_PER_PROCESS: usize = 64;
/// Pause before trying again after the system refused for a moment (out of descriptors or
/// memory, a full buffer).
const RETRY_PAUSE: Duration = Duration::from_millis(10);

/// One listener balanced by handover: its accept loop and every worker process's pair.
pub(in crate::listen) struct Handover {
    state: Arc<Mutex<State>>,
    accepting: AbortHandle,
}

/// What the accept loop and the readers of the pairs share.
struct State {
    listener: String,
    kind: Kind,
    /// One per worker process that may take connections, in the order they were spawned.
    pairs: Vec<Pair>,
    /// Where the round-robin goes on.
    next: usize,
    /// Accepted (or given back) and not handed to any process yet, oldest first. The loop
    /// accepts only while this is empty and some process has room, so it holds few; the rest
    /// wait in the kernel's backlog.
    waiting: VecDeque<OwnedFd>,
    /// Wakes the accept loop: room again, or a retry due.
    wake: Arc<Notify>,
    /// The system refused a moment ago; the accept loop tries again after [`RETRY_PAUSE`].
    retry_due: bool,
    last_sequence: u64,
    last_pair: u64,
}

/// The primary's end of one worker process's pair.
struct Pair {
    id: u64,
    worker: String,
    socket: Arc<Registered>,
    /// The process took the listener: it accepts.
    accepting: bool,
    /// New connections may go to it: its worker is not stopping for good.
    steered: bool,
    /// The last send was refused for a moment (full buffer, no memory): nothing more until it
    /// takes one or the retry.
    paused: bool,
    /// The process is gone (the send said so); its reader sees the end and gives its own back.
    gone: bool,
    /// Handed and not yet taken, with their sequence numbers: the primary's copies.
    in_flight: VecDeque<(u64, OwnedFd)>,
    /// The highest sequence number handed to it: it cannot have taken more.
    last_handed: u64,
    reader: AbortHandle,
}

impl Pair {
    fn has_room(&self) -> bool {
        self.accepting
            && self.steered
            && !self.paused
            && !self.gone
            && self.in_flight.len() < IN_FLIGHT_PER_PROCESS
    }
}

/// How the reader of a pair stopped.
enum PairEnd {
    /// The process ended or dropped the listener: its queue is gone, so what it had not taken
    /// goes to others.
    Closed,
    /// It broke the protocol: it may still take what it holds, so that is not handed again.
    Misbehaved(&'static str),
}

impl Handover {
    /// Accepts on `socket` (listening already) from now on. Must run inside the runtime.
    pub(in crate::listen) fn start(listener: &str, socket: OwnedFd, kind: Kind) -> std::io::Result<Self> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(std::io::Error::other(
                "the primary's accept loop needs a tokio runtime: build it inside one",
            ));
        }
        socket2::SockRef::from(&socket).set_nonblocking(true)?;
        let socket = os::register_with_runtime(socket)?;
        let wake = Arc::new(Notify::new());
        let state = Arc::new(Mutex::new(State {
            listener: listener.to_owned(),
            kind,
            pairs: Vec::new(),
            next: 0,
            waiting: VecDeque::new(),
            wake: Arc::clone(&wake),
            retry_due: false,
            last_sequence: 0,
            last_pair: 0,
        }));
        let accepting = tokio::spawn(accept_loop(socket, Arc::clone(&state), wake)).abort_handle();
        Ok(Handover { state, accepting })
    }

    /// A new pair for a process of worker `worker`: its end to pass to the process. The process
    /// gets connections once it takes the listener, until it ends or `worker` stops for good.
    pub(in crate::listen) fn pair_for(&self, worker: &str) -> Result<OwnedFd> {
        let opening = |e: Errno| {
            Error::io(format!("opening worker {worker:?}'s handover channel"), std::io::Error::from(e))
        };
        let (primary_end, worker_end) = nix::sys::socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .map_err(opening)?;
        let socket = Arc::new(
            os::register_with_runtime(primary_end)
                .map_err(|e| Error::io(format!("registering worker {worker:?}'s handover channel"), e))?,
        );
        let mut state = lock(&self.state);
        state.last_pair += 1;
        let id = state.last_pair;
        let reader =
            tokio::spawn(read_taken(Arc::clone(&socket), id, Arc::clone(&self.state))).abort_handle();
        state.pairs.push(Pair {
            id,
            worker: worker.to_owned(),
            socket,
            accepting: false,
            steered: true,
            paused: false,
            gone: false,
            in_flight: VecDeque::new(),
            last_handed: 0,
            reader,
        });
        Ok(worker_end)
    }

    /// Hands no new connection to worker `worker`'s processes: it is stopping for good. What
    /// they hold already they take, or give back when they end.
    pub(in crate::listen) fn stop_steering(&self, worker: &str) {
        for pair in lock(&self.state).pairs.iter_mut().filter(|p| p.worker == worker) {
            pair.steered = false;
        }
    }
}

#[cfg(test)]
impl Handover {
    /// Waits until `count` processes accept.
    async fn until_accepting(&self, count: usize) {
        while lock(&self.state).pairs.iter().filter(|p| p.accepting).count() < count {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        self.accepting.abort();
        let mut state = lock(&self.state);
        for pair in state.pairs.drain(..) {
            pair.reader.abort();
        }
        if !state.waiting.is_empty() {
            tracing::warn!(
                listener = %state.listener,
                connections = state.waiting.len(),
                "closing connections that no worker took before the listener closed"
            );
            state.waiting.clear();
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every change below is one step; a panic elsewhere leaves nothing half-done.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    /// The accept loop may take one more connection: nothing waits, and some process has room.
    fn can_accept(&self) -> bool {
        self.waiting.is_empty() && self.pairs.iter().any(Pair::has_room)
    }

    /// Hands waiting connections over while some process has room; wakes the accept loop when
    /// it may accept again.
    fn dispatch(&mut self) {
        while !self.waiting.is_empty() && !self.pairs.is_empty() {
            let count = self.pairs.len();
            let Some(at) = (0..count).map(|i| (self.next + i) % count).find(|&at| self.pairs[at].has_room())
            else {
                break;
            };
            let Some(connection) = self.waiting.pop_front() else { break };
            let sequence = self.last_sequence + 1;
            let message = encode_handed(self.kind, sequence);
            let pair = &mut self.pairs[at];
            match os::send_with_descriptor(pair.socket.get_ref().as_fd(), &message, connection.as_fd()) {
                Ok(()) => {
                    self.last_sequence = sequence;
                    pair.last_handed = sequence;
                    pair.in_flight.push_back((sequence, connection));
                    self.next = at + 1;
                    continue;
                }
                Err(err) if is_gone(&err) => pair.gone = true,
                Err(err) => {
                    tracing::debug!(worker = %pair.worker, error = %err, "a worker's handover channel refused for now");
                    pair.paused = true;
                    self.retry_due = true;
                }
            }
            self.waiting.push_front(connection);
        }
        if self.can_accept() || self.retry_due {
            self.wake.notify_one();
        }
    }

    /// A retry is due: the processes paused may take connections again.
    fn retry(&mut self) {
        self.retry_due = false;
        for pair in &mut self.pairs {
            pair.paused = false;
        }
        self.dispatch();
    }

    /// Pair `id`'s process took every connection up to `sequence` (0: it accepts now). False
    /// when it says it took one it was never handed.
    fn taken(&mut self, id: u64, sequence: u64) -> bool {
        let Some(pair) = self.pairs.iter_mut().find(|p| p.id == id) else { return true };
        if sequence > pair.last_handed {
            return false;
        }
        pair.accepting = true;
        pair.paused = false;
        while pair.in_flight.front().is_some_and(|(handed, _)| *handed <= sequence) {
            pair.in_flight.pop_front();
        }
        self.dispatch();
        true
    }

    /// Pair `id`'s reader stopped: a process that ended gives what it had not taken to others
    /// first, in the order it was accepted; one that misbehaved keeps it.
    fn ended(&mut self, id: u64, end: PairEnd) {
        let Some(at) = self.pairs.iter().position(|p| p.id == id) else { return };
        let pair = self.pairs.remove(at);
        if self.next > at {
            self.next -= 1;
        }
        match end {
            PairEnd::Closed => {
                if !pair.in_flight.is_empty() {
                    tracing::debug!(
                        listener = %self.listener,
                        worker = %pair.worker,
                        connections = pair.in_flight.len(),
                        "a worker process ended before taking its connections; handing them to others"
                    );
                }
                for (_, connection) in pair.in_flight.into_iter().rev() {
                    self.waiting.push_front(connection);
                }
            }
            PairEnd::Misbehaved(what) => tracing::warn!(
                listener = %self.listener,
                worker = %pair.worker,
                "{what} on a worker's handover channel; no more connections go to that process"
            ),
        }
        self.dispatch();
    }
}

/// The send failed because the process at the other end is gone.
fn is_gone(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(nix::libc::EPIPE | nix::libc::ECONNRESET | nix::libc::ENOTCONN))
}

/// Accepts one connection at a time while some process has room, handing each over at once.
async fn accept_loop(socket: Registered, state: Arc<Mutex<State>>, wake: Arc<Notify>) {
    loop {
        // A permit stored by `notify_one` is not lost between the check and the wait.
        loop {
            let retry_due = {
                let state = lock(&state);
                if state.can_accept() {
                    break;
                }
                state.retry_due
            };
            if retry_due {
                tokio::time::sleep(RETRY_PAUSE).await;
                lock(&state).retry();
            } else {
                wake.notified().await;
            }
        }
        let Ok(mut ready) = socket.readable().await else { return };
        match ready.try_io(|socket| socket2::SockRef::from(socket.get_ref()).accept()) {
            Ok(Ok((connection, _))) => {
                let mut state = lock(&state);
                state.waiting.push_back(connection.into());
                state.dispatch();
            }
            Ok(Err(err)) if is_out_of_resources(&err) => {
                tracing::warn!(error = %err, "cannot accept a connection now; retrying shortly");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            // The client gave up before the accept (ECONNABORTED), or a signal: next one.
            Ok(Err(_)) | Err(_) => {}
        }
    }
}

fn is_out_of_resources(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ENOBUFS | nix::libc::ENOMEM)
    )
}

/// Reads what pair `id`'s process took, until it ends or breaks the protocol.
async fn read_taken(socket: Arc<Registered>, id: u64, state: Arc<Mutex<State>>) {
    let mut message = [0u8; TAKEN_LEN + 1];
    let end = loop {
        let Ok(mut ready) = socket.readable().await else { break PairEnd::Closed };
        let received = ready.try_io(|socket| {
            nix::sys::socket::recv(socket.get_ref().as_raw_fd(), &mut message, MsgFlags::MSG_DONTWAIT)
                .map_err(std::io::Error::from)
        });
        match received {
            Err(_would_block) => continue,
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(Err(_)) => break PairEnd::Closed,
            // The end of the file, or an empty message (which no worker of ours sends).
            Ok(Ok(0)) if peer_closed(socket.get_ref()) => break PairEnd::Closed,
            Ok(Ok(0)) => break PairEnd::Misbehaved("an empty message"),
            Ok(Ok(len)) => match decode_taken(&message[..len]) {
                Some(sequence) if lock(&state).taken(id, sequence) => {}
                Some(_) => break PairEnd::Misbehaved("a connection taken that was never handed"),
                None => break PairEnd::Misbehaved("a malformed answer"),
            },
        }
    };
    lock(&state).ended(id, end);
}

/// The other end of `socket` is closed, as the kernel says now (the reactor's view may lag): a
/// pair whose peer closed reports a hang-up.
fn peer_closed(socket: &OwnedFd) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLHUP)),
        // Cannot tell: as if closed, so what it held is not lost.
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::super::receive::HandedListener;
    use super::*;
    use crate::listen::Accepted;

    fn listening() -> (OwnedFd, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        (OwnedFd::from(listener), address)
    }

    async fn peer_of(accepted: Accepted) -> std::net::SocketAddr {
        match accepted {
            Accepted::Tcp(stream) => stream.peer_addr().expect("peer"),
            Accepted::Unix(_) => panic!("a TCP connection"),
        }
    }

    #[tokio::test]
    async fn connections_go_round_robin_and_a_process_that_ends_gives_its_own_back() {
        let (socket, address) = listening();
        let handover = Handover::start("http", socket, Kind::Tcp).expect("accepting");
        let first = HandedListener::new(handover.pair_for("w1").expect("pair"), "http").expect("w1 takes it");
        let second =
            HandedListener::new(handover.pair_for("w2").expect("pair"), "http").expect("w2 takes it");
        handover.until_accepting(2).await;
        let clients: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(address).expect("connect")).collect();
        // Each process gets every other connection, with the client's address.
        let mut peers = Vec::new();
        for _ in 0..2 {
            peers.push(peer_of(first.accept().await.expect("w1 accepts")).await);
            peers.push(peer_of(second.accept().await.expect("w2 accepts")).await);
        }
        let mut expected: Vec<_> = clients.iter().map(|c| c.local_addr().expect("local")).collect();
        expected.sort();
        peers.sort();
        assert_eq!(peers, expected);

        // Two more reach w1 and w2 in turn; w2 ends without taking its own: it goes to w1.
        let later: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(address).expect("connect")).collect();
        let taken_by_first = peer_of(first.accept().await.expect("w1 accepts")).await;
        drop(second);
        let handed_back = peer_of(first.accept().await.expect("w1 takes w2's")).await;
        let mut got = vec![taken_by_first, handed_back];
        got.sort();
        let mut want: Vec<_> = later.iter().map(|c| c.local_addr().expect("local")).collect();
        want.sort();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn a_process_that_breaks_the_protocol_is_cut_off_and_the_others_go_on() {
        use super::super::{HANDED_LEN, encode_taken};
        for bad_answer in [Vec::new(), encode_taken(99).to_vec(), vec![1, 2, 3]] {
            let (socket, address) = listening();
            let handover = Handover::start("http", socket, Kind::Tcp).expect("accepting");
            let bad = std::os::unix::net::UnixDatagram::from(handover.pair_for("bad").expect("pair"));
            bad.send(&encode_taken(0)).expect("says it accepts");
            handover.until_accepting(1).await;
            bad.send(&bad_answer).expect("a bad answer");
            // The primary closes its end: the bad process reads to the end of what it was sent.
            bad.set_nonblocking(false).expect("blocking");
            bad.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            let mut message = [0u8; HANDED_LEN];
            let read = tokio::task::spawn_blocking(move || {
                loop {
                    match bad.recv(&mut message) {
                        Ok(0) => return Ok(()),
                        Ok(_) => continue,
                        Err(err) => return Err(err),
                    }
                }
            });
            read.await.expect("joined").unwrap_or_else(|e| panic!("{bad_answer:?}: the pair closes: {e}"));
            let good =
                HandedListener::new(handover.pair_for("good").expect("pair"), "http").expect("takes it");
            let client = TcpStream::connect(address).expect("connect");
            let peer = peer_of(good.accept().await.expect("the good process gets it")).await;
            assert_eq!(peer, client.local_addr().expect("local"), "{bad_answer:?}");
        }
    }

    #[test]
    fn a_closed_peer_is_told_from_a_live_one() {
        let (mine, peer) = nix::sys::socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("pair");
        assert!(!peer_closed(&mine));
        drop(peer);
        assert!(peer_closed(&mine));
    }

    #[tokio::test]
    async fn a_process_gets_nothing_before_it_accepts_nor_once_its_worker_stops() {
        let (socket, address) = listening();
        let handover = Handover::start("http", socket, Kind::Tcp).expect("accepting");
        let stopping = handover.pair_for("old").expect("pair");
        let _not_accepting_yet = handover.pair_for("idle").expect("pair");
        let stopping = HandedListener::new(stopping, "http").expect("old takes it");
        handover.stop_steering("old");
        let client = TcpStream::connect(address).expect("connect");
        let fresh =
            HandedListener::new(handover.pair_for("new").expect("pair"), "http").expect("new takes it");
        let peer = peer_of(fresh.accept().await.expect("the new process gets it")).await;
        assert_eq!(peer, client.local_addr().expect("local"));
        let nothing = tokio::time::timeout(Duration::from_millis(50), stopping.accept()).await;
        assert!(nothing.is_err(), "a stopping worker gets no new connection");
    }
}
