//! The primary's side of [`Balance::Handover`](crate::Balance::Handover): accept on the listener,
//! hand each connection to the next worker process that accepts (round-robin over those with
//! room), and take back what a process that ended had not taken.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use clusterfy_core::{Error, Result, os};
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::{Kind, TAKEN_LEN, decode_taken, encode_handed};

/// Connections handed to one process and not yet taken: a process whose runtime is busy gets
/// no more until it catches up, so the others get them (least busy, roughly), and one that hangs
/// holds at most this many.
const IN_FLIGHT_PER_PROCESS: usize = 4;
/// Connections the primary holds while no process can take them (all busy, or restarting);
/// beyond this the kernel's backlog queues them.
const MAX_WAITING: usize = 1024;
/// Pause after the process ran out of descriptors, before accepting again.
const OUT_OF_DESCRIPTORS_PAUSE: Duration = Duration::from_millis(100);

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
    /// Accepted, not handed to any process yet (oldest first).
    waiting: VecDeque<OwnedFd>,
    /// Wakes the accept loop when `waiting` has room again.
    room: Arc<Notify>,
    last_sequence: u64,
    last_pair: u64,
    /// Connections closed because no process could take them before the listener closed.
    closed_unhanded: u64,
}

/// The primary's end of one worker process's pair.
struct Pair {
    id: u64,
    worker: String,
    socket: Arc<AsyncFd<OwnedFd>>,
    /// The process took the listener: it accepts.
    accepting: bool,
    /// New connections may go to it: its worker is not stopping for good.
    steered: bool,
    /// Its buffer was full at the last try; until it takes one, nothing more is sent.
    full: bool,
    /// Handed and not yet taken, with their sequence numbers: the primary's copies.
    in_flight: VecDeque<(u64, OwnedFd)>,
    reader: AbortHandle,
}

impl Pair {
    fn has_room(&self) -> bool {
        self.accepting && self.steered && !self.full && self.in_flight.len() < IN_FLIGHT_PER_PROCESS
    }
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
        let room = Arc::new(Notify::new());
        let state = Arc::new(Mutex::new(State {
            listener: listener.to_owned(),
            kind,
            pairs: Vec::new(),
            next: 0,
            waiting: VecDeque::new(),
            room: Arc::clone(&room),
            last_sequence: 0,
            last_pair: 0,
            closed_unhanded: 0,
        }));
        let accepting = tokio::spawn(accept_loop(socket, Arc::clone(&state), room)).abort_handle();
        Ok(Handover { state, accepting })
    }

    /// A new pair for a process of worker `worker`: its end to pass to the process. The process
    /// gets connections once it takes the listener, until it ends or `worker` stops for good.
    pub(in crate::listen) fn pair_for(&self, worker: &str) -> Result<OwnedFd> {
        let opening = |e: nix::Error| {
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
            full: false,
            in_flight: VecDeque::new(),
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
        let unhanded = state.waiting.len() as u64;
        state.waiting.clear();
        state.closed_unhanded += unhanded;
        if state.closed_unhanded > 0 {
            tracing::warn!(
                listener = %state.listener,
                connections = state.closed_unhanded,
                "closed connections that no worker took before the listener closed"
            );
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every change below is one step; a panic elsewhere leaves nothing half-done.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    /// Hands waiting connections over while some process has room.
    fn dispatch(&mut self) {
        while !self.waiting.is_empty() && !self.pairs.is_empty() {
            let count = self.pairs.len();
            let Some(at) = (0..count).map(|i| (self.next + i) % count).find(|&at| self.pairs[at].has_room())
            else {
                return;
            };
            let sequence = self.last_sequence + 1;
            let message = encode_handed(self.kind, sequence);
            let Some(connection) = self.waiting.pop_front() else { return };
            let pair = &mut self.pairs[at];
            match os::send_with_descriptor(pair.socket.get_ref().as_fd(), &message, connection.as_fd()) {
                Ok(()) => {
                    self.last_sequence = sequence;
                    pair.in_flight.push_back((sequence, connection));
                    self.next = at + 1;
                    self.room.notify_one();
                    continue;
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => pair.full = true,
                // The process is gone: its reader sees the end and takes its connections back.
                Err(_) => pair.accepting = false,
            }
            self.waiting.push_front(connection);
        }
    }

    /// Pair `id`'s process took every connection up to `sequence` (0: it accepts now).
    fn taken(&mut self, id: u64, sequence: u64) {
        let Some(pair) = self.pairs.iter_mut().find(|p| p.id == id) else { return };
        pair.accepting = true;
        pair.full = false;
        while pair.in_flight.front().is_some_and(|(handed, _)| *handed <= sequence) {
            pair.in_flight.pop_front();
        }
        self.dispatch();
    }

    /// Pair `id`'s process ended or dropped the listener: what it had not taken goes to others
    /// first, in the order it was accepted.
    fn ended(&mut self, id: u64) {
        let Some(at) = self.pairs.iter().position(|p| p.id == id) else { return };
        let pair = self.pairs.remove(at);
        if self.next > at {
            self.next -= 1;
        }
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
        self.dispatch();
    }
}

/// Accepts while there is room to hold connections, handing each one over at once.
async fn accept_loop(socket: AsyncFd<OwnedFd>, state: Arc<Mutex<State>>, room: Arc<Notify>) {
    loop {
        // A permit stored by `notify_one` is not lost between the check and the wait.
        while lock(&state).waiting.len() >= MAX_WAITING {
            room.notified().await;
        }
        let Ok(mut ready) = socket.readable().await else { return };
        match ready.try_io(|socket| socket2::SockRef::from(socket.get_ref()).accept()) {
            Ok(Ok((connection, _))) => {
                let mut state = lock(&state);
                state.waiting.push_back(connection.into());
                state.dispatch();
            }
            Ok(Err(err)) if is_out_of_descriptors(&err) => {
                tracing::warn!(error = %err, "cannot accept a connection now; retrying shortly");
                tokio::time::sleep(OUT_OF_DESCRIPTORS_PAUSE).await;
            }
            // The client gave up before the accept (ECONNABORTED), or a signal: next one.
            Ok(Err(_)) | Err(_) => {}
        }
    }
}

fn is_out_of_descriptors(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ENOBUFS | nix::libc::ENOMEM)
    )
}

/// Reads what pair `id`'s process took, until it ends.
async fn read_taken(socket: Arc<AsyncFd<OwnedFd>>, id: u64, state: Arc<Mutex<State>>) {
    let mut message = [0u8; TAKEN_LEN + 1];
    loop {
        let Ok(mut ready) = socket.readable().await else { break };
        let received = ready.try_io(|socket| {
            nix::sys::socket::recv(socket.get_ref().as_raw_fd(), &mut message, MsgFlags::MSG_DONTWAIT)
                .map_err(std::io::Error::from)
        });
        match received {
            Err(_would_block) => continue,
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            // The end of the process (0 bytes), or its pair failed.
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(len)) => match decode_taken(&message[..len]) {
                Some(sequence) => lock(&state).taken(id, sequence),
                None => {
                    // Only a process of ours holds the other end; it does not speak the protocol.
                    tracing::warn!(len, "a malformed answer on a worker's handover channel; closing it");
                    break;
                }
            },
        }
    }
    lock(&state).ended(id);
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
