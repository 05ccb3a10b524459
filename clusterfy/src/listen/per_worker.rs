//! The sockets of a listener balanced per worker ([`Balance::PerWorker`](super::Balance)): one
//! per worker name, all bound to the listener's address with `SO_REUSEPORT`, so the kernel
//! spreads new connections over them by hash. The primary keeps each one while a process of
//! that worker may run: a revived or replacing process inherits the socket its predecessor
//! accepted on, with the connections queued meanwhile.
//!
//! A worker that stops for good must get no new connection before its socket closes (closing
//! drops what is queued on it). So the primary steers the group with a small classic BPF
//! program: each connection's hash picks one of the sockets still steered to. It names sockets
//! by their place in the kernel's group, which this module mirrors: a socket joins at the end
//! when it starts listening, and the last one takes the place of one that leaves. A socket
//! leaves when the primary shuts it down for reading (which takes it out of the group at once,
//! whoever else still holds a copy: a forked child before its exec, a descendant).

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use clusterfy_core::{Error, Result};
use nix::libc;
use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Socket, Type};

/// What the program returns to leave the choice to the kernel's own hash: any place past the
/// last socket.
const KERNEL_CHOOSES: u32 = u32::MAX;

/// One worker's socket in the group.
struct Member {
    worker: String,
    socket: OwnedFd,
    /// New connections may go to it: its worker is not stopping for good.
    steered: bool,
}

/// The per-worker sockets of one listener, in the kernel's group order.
pub(super) struct PerWorkerSockets {
    /// Where they all listen: the address the primary's own (unlistened) socket holds.
    address: SocketAddr,
    members: Vec<Member>,
}

impl PerWorkerSockets {
    pub(super) fn new(address: SocketAddr) -> Self {
        PerWorkerSockets { address, members: Vec::new() }
    }

    /// Worker `worker`'s socket, opened (and so added to the kernel's group) at its first
    /// spawn; steered to again if its worker had been stopping.
    pub(super) fn for_worker(
        &mut self,
        listener: &str,
        worker: &str,
        backlog: i32,
    ) -> Result<BorrowedFd<'_>> {
        let at = match self.members.iter().position(|m| m.worker == worker) {
            Some(at) => at,
            None => {
                let socket = open_member(self.address, backlog).map_err(|e| {
                    Error::io(
                        format!(
                            "opening worker {worker:?}'s socket of listener {listener:?} on {} (SO_REUSEPORT)",
                            self.address
                        ),
                        e,
                    )
                })?;
                tracing::debug!(listener, worker, address = %self.address, "a worker's own listening socket");
                self.members.push(Member { worker: worker.to_owned(), socket, steered: false });
                self.members.len() - 1
            }
        };
        if !self.members[at].steered {
            self.members[at].steered = true;
            self.steer(listener);
        }
        Ok(self.members[at].socket.as_fd())
    }

    /// Sends no new connection to worker `worker`'s socket: it is stopping for good, and what
    /// is queued there when it closes is lost.
    pub(super) fn stop_steering(&mut self, listener: &str, worker: &str) {
        if let Some(member) = self.members.iter_mut().find(|m| m.worker == worker && m.steered) {
            member.steered = false;
            self.steer(listener);
        }
    }

    /// Closes worker `worker`'s socket: no process of it will accept there again.
    pub(super) fn release(&mut self, listener: &str, worker: &str) {
        if let Some(at) = self.members.iter().position(|m| m.worker == worker) {
            // As the kernel does: the last socket takes the place of the one that leaves.
            let member = self.members.swap_remove(at);
            if let Err(err) =
                nix::sys::socket::shutdown(member.socket.as_raw_fd(), nix::sys::socket::Shutdown::Read)
            {
                tracing::warn!(listener, worker, error = %err, "could not take a worker's socket out of the group");
            }
            drop(member);
            self.steer(listener);
        }
    }

    /// Attaches the program for the current members to the group. Should that fail, the kernel
    /// keeps the last program (or its own hash): connections still land, some perhaps on a
    /// stopping worker's socket.
    fn steer(&self, listener: &str) {
        let Some(first) = self.members.first() else { return };
        let targets: Vec<u32> =
            (0..self.members.len() as u32).filter(|&at| self.members[at as usize].steered).collect();
        let mut program = steering_program(&targets);
        let fprog = libc::sock_fprog { len: program.len() as u16, filter: program.as_mut_ptr() };
        if let Err(err) = setsockopt(&first.socket, sockopt::AttachReusePortCbpf, &fprog) {
            tracing::warn!(listener, error = %err, "could not steer the listener's connections");
        }
    }
}

/// A classic BPF program for `SO_ATTACH_REUSEPORT_CBPF`: the connection's hash modulo the number
/// of targets picks the socket at `targets[hash % len]`; a packet without a hash (no receive
/// hash from the device) takes a random number instead. Without targets the kernel chooses.
fn steering_program(targets: &[u32]) -> Vec<libc::sock_filter> {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter { code: code as u16, jt, jf, k };
    let ret = |k: u32| op(libc::BPF_RET | libc::BPF_K, 0, 0, k);
    if targets.is_empty() {
        return vec![ret(KERNEL_CHOOSES)];
    }
    let ancillary = |what: i32| (libc::SKF_AD_OFF + what) as u32;
    let mut program = vec![
        op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, ancillary(libc::SKF_AD_RXHASH)),
        // A hash of 0 is none: skip to the random number only then.
        op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 1, 0),
        op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, ancillary(libc::SKF_AD_RANDOM)),
        op(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, 0, 0, targets.len() as u32),
    ];
    for (at, target) in targets.iter().enumerate() {
        program.push(op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 1, at as u32));
        program.push(ret(*target));
    }
    program.push(ret(KERNEL_CHOOSES));
    program
}

/// The primary's own socket of the group, and the address it holds (with the port the system
/// chose for port 0): bound with `SO_REUSEPORT` so the members can join, but never listening,
/// so the kernel hands it no connection.
///
/// `SO_REUSEPORT` alone would let a second primary of the same user join the group and take a
/// share of the connections unnoticed; a plain bind first finds such a group (or any other
/// listener) and fails with "address in use", as a shared listener would. The anchor itself
/// sets no `SO_REUSEADDR`, so that probe fails against it too.
pub(super) fn open_anchor(address: SocketAddr) -> std::io::Result<(Socket, SocketAddr)> {
    if address.port() != 0 {
        let probe = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
        // As a shared listener binds: connections of an earlier primary in TIME_WAIT are no conflict.
        probe.set_reuse_address(true)?;
        probe.bind(&address.into())?;
    }
    let anchor = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    anchor.set_reuse_port(true)?;
    anchor.bind(&address.into())?;
    let bound = anchor.local_addr()?.as_socket().ok_or(std::io::ErrorKind::AddrNotAvailable)?;
    Ok((anchor, bound))
}

fn open_member(address: SocketAddr, backlog: i32) -> std::io::Result<OwnedFd> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    // Its accepted connections then linger in TIME_WAIT as reusable: no conflict for the probe
    // of a restarted primary.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&address.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    /// How many of `n` new connections each socket queues.
    fn queued(sockets: &PerWorkerSockets, n: usize) -> Vec<usize> {
        let held: Vec<TcpStream> =
            (0..n).map(|_| TcpStream::connect(sockets.address).expect("connect")).collect();
        let counts = sockets
            .members
            .iter()
            .map(|member| {
                let listener = TcpListener::from(member.socket.try_clone().expect("a copy"));
                listener.set_nonblocking(true).expect("non-blocking");
                std::iter::from_fn(|| listener.accept().ok()).count()
            })
            .collect();
        drop(held);
        counts
    }

    #[test]
    fn a_stopping_workers_socket_gets_no_new_connection_and_the_others_share_them() {
        let (anchor, address) = open_anchor("127.0.0.1:0".parse().expect("address")).expect("anchor");
        let mut sockets = PerWorkerSockets::new(address);
        for worker in ["w1", "w2", "w3"] {
            sockets.for_worker("http", worker, 128).expect("a member");
        }
        let all = queued(&sockets, 60);
        assert_eq!(all.iter().sum::<usize>(), 60, "{all:?}");
        assert!(all.iter().all(|n| *n > 0), "every socket gets a share: {all:?}");
        sockets.stop_steering("http", "w1");
        let steered = queued(&sockets, 40);
        assert_eq!(steered[0], 0, "w1 is stopping: {steered:?}");
        assert_eq!(steered.iter().sum::<usize>(), 40, "{steered:?}");
        // w1 closes: w3 takes its place in the group, and the program follows, even while a copy
        // of w1's socket lives on elsewhere (a child forked before its exec).
        let copy_elsewhere = sockets.members[0].socket.try_clone().expect("a copy");
        sockets.release("http", "w1");
        assert_eq!(sockets.members.iter().map(|m| m.worker.as_str()).collect::<Vec<_>>(), ["w3", "w2"]);
        sockets.stop_steering("http", "w2");
        let only_w3 = queued(&sockets, 20);
        assert_eq!(only_w3, [20, 0], "{only_w3:?}");
        drop((anchor, copy_elsewhere));
    }
}
