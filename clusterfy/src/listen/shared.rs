//! The primary's side of the shared listeners: bind (or take from systemd), keep, and hand to
//! every worker process at spawn: the one shared socket, the worker's own
//! ([`Balance::PerWorker`]), or its end of the channel the primary hands connections over on
//! ([`Balance::Handover`]).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Mutex;

use clusterfy_core::transport::{FIRST_INHERITED_FD, TRANSPORT_FDS};
use clusterfy_core::{Error, ErrorKind, Result, os};
use command_fds::{CommandFdExt, FdMapping};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::socket_file::{self, SocketFile};

use super::handover::{self, Handover};
use super::per_worker::{self, PerWorkerSockets};
use super::{Balance, ENV_LISTEN_FDNAMES, ENV_LISTEN_FDS, ENV_LISTEN_PID, ListenAddr, ListenOptions};
use clusterfy_core::env::listen_fd_names;

/// Connections a listener queues before one is accepted: enough to ride out a worker restart.
const BACKLOG: i32 = 1024;
/// Longest listener name; systemd's limit for `FileDescriptorName=`.
const MAX_NAME_LEN: usize = 255;

/// One listener every worker inherits.
struct SharedListener {
    name: String,
    /// The socket every worker accepts on, or the primary accepts on for them; with per-worker
    /// sockets, the group's unlistened anchor.
    socket: OwnedFd,
    address: ListenAddr,
    spread: Spread,
    /// The socket file this primary created (and its inode), removed when the listener closes.
    created: Option<(PathBuf, u64)>,
}

/// How a listener's connections reach the workers.
enum Spread {
    /// Every worker accepts on the one socket.
    Shared,
    /// Each worker accepts on a socket of its own.
    PerWorker(PerWorkerSockets),
    /// The primary accepts and hands each connection over.
    Handover(Handover),
}

impl Drop for SharedListener {
    fn drop(&mut self) {
        // Only our own file: a newer primary may have taken the path over since.
        if let Some((path, inode)) = &self.created
            && std::fs::symlink_metadata(path).is_ok_and(|m| m.ino() == *inode)
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The primary's listeners, in descriptor order (the first is descriptor 3 in every worker).
/// Closed (and their socket files removed) by [`SharedListeners::close`] or when dropped.
#[derive(Default)]
pub(crate) struct SharedListeners {
    listeners: Mutex<Vec<SharedListener>>,
}

impl SharedListeners {
    /// Takes the sockets systemd passed this process (socket activation), then binds each
    /// requested `(name, address, options)` that is not among them.
    pub(crate) fn open(requested: &[(String, String, ListenOptions)]) -> Result<Self> {
        let mut inherited = inherited_from_systemd()?;
        let mut listeners = Vec::with_capacity(requested.len() + inherited.len());
        for (name, address, options) in requested {
            check_name(name)?;
            if listeners.iter().any(|l: &SharedListener| l.name == *name) {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!(
                        "two listeners are named {name:?}; workers ask for them by name, so names must be unique"
                    ),
                ));
            }
            match inherited.iter().position(|l| l.name == *name) {
                Some(at) => {
                    let mut listener = inherited.remove(at);
                    tracing::info!(listener = %name, address = %listener.address, "using the socket systemd passed");
                    listener.spread = spread_of_inherited(&listener, options.chosen_balance())?;
                    listeners.push(listener);
                }
                None => listeners.push(bind(name, &address.parse()?, options.chosen_balance())?),
            }
        }
        // Sockets systemd passed that no `listen` asked for are handed on under their names too.
        listeners.append(&mut inherited);
        Ok(SharedListeners { listeners: Mutex::new(listeners) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SharedListener>> {
        // Nothing here is left half-changed by a panic.
        self.listeners.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The first descriptor number after the listeners in a worker.
    pub(crate) fn first_free_fd(&self) -> i32 {
        FIRST_INHERITED_FD + self.lock().len() as i32
    }

    /// The address listener `name` accepts on (with the port the system chose for port 0).
    pub(crate) fn address(&self, name: &str) -> Option<ListenAddr> {
        self.lock().iter().find(|l| l.name == name).map(|l| l.address.clone())
    }

    /// Closes every listener (a client connecting now is refused, not left waiting) and
    /// removes the socket files this primary created. Idempotent.
    pub(crate) fn close(&self) {
        self.lock().clear();
    }

    /// Has the child of `command`, a process of worker `worker`, inherit every listener at 3..
    /// with `LISTEN_FDS` and `LISTEN_FDNAMES`: the shared socket, or the worker's own. Call it
    /// after the transport prepared `command`: the copies passed here are numbered above the
    /// transport's range, so neither mapping overwrites the other's source between fork and exec.
    pub(crate) fn pass_to(&self, command: &mut tokio::process::Command, worker: &str) -> Result<()> {
        // Set by systemd for this process only; a worker must not take them for its own.
        for var in [ENV_LISTEN_PID, ENV_LISTEN_FDS, ENV_LISTEN_FDNAMES, "LISTEN_FDS_FIRST_FD"] {
            command.env_remove(var);
        }
        let mut listeners = self.lock();
        if listeners.is_empty() {
            return Ok(());
        }
        let above = FIRST_INHERITED_FD + listeners.len() as i32 + TRANSPORT_FDS;
        let mut mappings = Vec::with_capacity(listeners.len());
        for (at, listener) in listeners.iter_mut().enumerate() {
            let passing = |e| Error::io(format!("passing the listener {:?} to a worker", listener.name), e);
            let parent_fd = match &mut listener.spread {
                Spread::Shared => os::duplicate_at_or_above(listener.socket.as_fd(), above),
                Spread::PerWorker(sockets) => {
                    os::duplicate_at_or_above(sockets.for_worker(&listener.name, worker, BACKLOG)?, above)
                }
                Spread::Handover(handover) => {
                    os::duplicate_at_or_above(handover.pair_for(worker)?.as_fd(), above)
                }
            }
            .map_err(passing)?;
            mappings.push(FdMapping { parent_fd, child_fd: FIRST_INHERITED_FD + at as i32 });
        }
        command.fd_mappings(mappings).map_err(|_| {
            Error::new(ErrorKind::InvalidState, "two shared listeners were mapped to the same descriptor")
        })?;
        let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
        command.env(ENV_LISTEN_FDS, listeners.len().to_string()).env(ENV_LISTEN_FDNAMES, names.join(":"));
        Ok(())
    }

    /// Sends no new connection to worker `worker`'s own sockets or processes: it is stopping for
    /// good.
    pub(crate) fn stop_steering(&self, worker: &str) {
        for listener in self.lock().iter_mut() {
            match &mut listener.spread {
                Spread::Shared => {}
                Spread::PerWorker(sockets) => sockets.stop_steering(&listener.name, worker),
                Spread::Handover(handover) => handover.stop_steering(worker),
            }
        }
    }

    /// Closes worker `worker`'s own sockets, once no process of it may run again.
    pub(crate) fn release(&self, worker: &str) {
        for listener in self.lock().iter_mut() {
            // A handover channel is the process's own and closes with it.
            if let Spread::PerWorker(sockets) = &mut listener.spread {
                sockets.release(&listener.name, worker);
            }
        }
    }
}

fn check_name(name: &str) -> Result<()> {
    let fine = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    if fine {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::InvalidInput,
        format!(
            "{:?} cannot name a listener: use 1 to {MAX_NAME_LEN} printable ASCII characters without spaces \
             or ':' (LISTEN_FDNAMES separates names with ':')",
            clusterfy_core::error::excerpt(name)
        ),
    ))
}

fn bind(name: &str, address: &ListenAddr, balance: Option<Balance>) -> Result<SharedListener> {
    let failed = |doing: &str, err: std::io::Error| bind_error(name, address, doing, err);
    let balance = balance.unwrap_or(match address {
        ListenAddr::Tcp(_) => Balance::PerWorker,
        ListenAddr::Unix(_) => Balance::Handover,
    });
    let (socket, created) = match (address, balance) {
        (ListenAddr::Tcp(addr), Balance::PerWorker) => {
            let (anchor, bound) = per_worker::open_anchor(*addr).map_err(|e| failed("binding", e))?;
            tracing::debug!(listener = %name, address = %bound, "each worker will listen on a socket of its own");
            return Ok(SharedListener {
                name: name.to_owned(),
                socket: anchor.into(),
                address: ListenAddr::Tcp(bound),
                spread: Spread::PerWorker(PerWorkerSockets::new(bound)),
                created: None,
            });
        }
        (ListenAddr::Unix(_), Balance::PerWorker) => {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "listener {name:?} on {address} cannot be balanced per worker: Linux has no SO_REUSEPORT \
                     group for Unix sockets; use Balance::Handover (the default for Unix sockets) or \
                     Balance::Shared"
                ),
            ));
        }
        (ListenAddr::Tcp(addr), Balance::Shared | Balance::Handover) => {
            let socket = Socket::new(Domain::for_address(*addr), Type::STREAM, None)
                .map_err(|e| failed("creating the socket", e))?;
            // A restarted primary can bind at once, while connections of the last one linger.
            socket.set_reuse_address(true).map_err(|e| failed("setting SO_REUSEADDR", e))?;
            socket.bind(&(*addr).into()).map_err(|e| failed("binding", e))?;
            (socket, None)
        }
        (ListenAddr::Unix(path), Balance::Shared | Balance::Handover) => {
            socket_file::check_named_directory(path, &format!("the socket of listener {name:?}"))?;
            remove_stale_socket(name, address, path)?;
            let socket = Socket::new(Domain::UNIX, Type::STREAM, None)
                .map_err(|e| failed("creating the socket", e))?;
            let to = SockAddr::unix(path).map_err(|e| failed("naming the socket", e))?;
            socket.bind(&to).map_err(|e| failed("binding", e))?;
            let inode =
                std::fs::symlink_metadata(path).map_err(|e| failed("checking the socket file", e))?.ino();
            (socket, Some((path.clone(), inode)))
        }
    };
    socket.listen(BACKLOG).map_err(|e| failed("listening", e))?;
    let spread = match balance {
        Balance::Shared | Balance::PerWorker => Spread::Shared,
        Balance::Handover => Spread::Handover(start_handover(name, address, socket.as_fd())?),
    };
    let socket = OwnedFd::from(socket);
    let address = local_address(&socket).unwrap_or_else(|| address.clone());
    tracing::debug!(listener = %name, %address, ?balance, "listening for the workers");
    Ok(SharedListener { name: name.to_owned(), socket, address, spread, created })
}

/// How a socket systemd passed is spread: already listening, it is shared unless the primary
/// asked to hand its connections over; it cannot join a group of per-worker sockets it did not
/// create.
fn spread_of_inherited(listener: &SharedListener, balance: Option<Balance>) -> Result<Spread> {
    match balance {
        None | Some(Balance::Shared) => Ok(Spread::Shared),
        Some(Balance::Handover) => {
            Ok(Spread::Handover(start_handover(&listener.name, &listener.address, listener.socket.as_fd())?))
        }
        Some(Balance::PerWorker) => Err(Error::new(
            ErrorKind::Config,
            format!(
                "listener {:?} is the socket systemd passed (socket activation): it cannot be balanced per \
                 worker, which needs a socket the primary binds for each worker; use Balance::Handover or \
                 Balance::Shared",
                listener.name
            ),
        )),
    }
}

/// Starts the primary's accept loop that hands the connections of a listening socket to the
/// workers, on a copy of the socket (the original stays for reloads and inheritance).
fn start_handover(name: &str, address: &ListenAddr, socket: BorrowedFd<'_>) -> Result<Handover> {
    let failed = |doing: &str, err: std::io::Error| bind_error(name, address, doing, err);
    let accepting = socket.try_clone_to_owned().map_err(|e| failed("copying the socket", e))?;
    Handover::start(name, accepting, kind_of(address)).map_err(|e| failed("accepting", e))
}

fn kind_of(address: &ListenAddr) -> handover::Kind {
    match address {
        ListenAddr::Tcp(_) => handover::Kind::Tcp,
        ListenAddr::Unix(_) => handover::Kind::Unix,
    }
}

/// A socket file left by a primary that died is taken over; one that something still listens
/// on is not.
fn remove_stale_socket(name: &str, address: &ListenAddr, path: &std::path::Path) -> Result<()> {
    match socket_file::probe(path) {
        SocketFile::Absent => Ok(()),
        SocketFile::Stale => {
            std::fs::remove_file(path).map_err(|e| bind_error(name, address, "removing the stale socket", e))
        }
        SocketFile::Live | SocketFile::Unknown => {
            Err(bind_error(name, address, "binding", std::io::ErrorKind::AddrInUse.into()))
        }
        SocketFile::NotASocket => Err(Error::new(
            ErrorKind::AlreadyExists,
            format!(
                "cannot listen on {address} for {name:?}: the path exists and is not a socket; remove it or \
                 choose another path"
            ),
        )),
    }
}

fn bind_error(name: &str, address: &ListenAddr, doing: &str, err: std::io::Error) -> Error {
    let advice = match (err.kind(), address) {
        (std::io::ErrorKind::AddrInUse, _) => {
            "the address is in use: another process (or another primary) listens there; stop it, or choose \
             another address (port 0 lets the system pick a free one)"
        }
        (std::io::ErrorKind::PermissionDenied, ListenAddr::Tcp(_)) => {
            "permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE; choose a port from 1024 \
             on, or let systemd pass the socket (socket activation)"
        }
        (std::io::ErrorKind::PermissionDenied, ListenAddr::Unix(_)) => {
            "permission denied: this user may not create a file in that directory; choose a path it may write"
        }
        (std::io::ErrorKind::AddrNotAvailable, _) => {
            "the address is not one of this host's; use 0.0.0.0 or [::] for every interface"
        }
        _ => "see the cause",
    };
    Error::new(ErrorKind::Io, format!("cannot listen on {address} for {name:?} ({doing}): {advice}"))
        .with_context("listener", name)
        .with_source(err)
}

/// The address a socket is bound to, as the system reports it.
pub(super) fn local_address(socket: &OwnedFd) -> Option<ListenAddr> {
    let addr = socket2::SockRef::from(socket).local_addr().ok()?;
    match addr.as_socket() {
        Some(tcp) => Some(ListenAddr::Tcp(tcp)),
        None => addr.as_pathname().map(|p| ListenAddr::Unix(p.to_owned())),
    }
}

/// The listening sockets systemd passed this process, if it started it by socket activation
/// (`LISTEN_PID` unset or this process, `LISTEN_FDS`, optional `LISTEN_FDNAMES`).
fn inherited_from_systemd() -> Result<Vec<SharedListener>> {
    let for_us = std::env::var(ENV_LISTEN_PID)
        .map_or(true, |pid| pid.is_empty() || pid.parse::<u32>().ok() == Some(std::process::id()));
    if !for_us {
        return Ok(Vec::new());
    }
    let (fds, names) = (std::env::var(ENV_LISTEN_FDS).ok(), std::env::var(ENV_LISTEN_FDNAMES).ok());
    let names = listen_fd_names(fds.as_deref(), names.as_deref())?;
    let mut listeners = Vec::with_capacity(names.len());
    for (at, name) in names.into_iter().enumerate() {
        let fd = FIRST_INHERITED_FD + at as i32;
        // A socket a worker could not take (datagram, unnamed Unix) is not handed on; not fatal.
        let adopted = os::adopt_inherited_listener(fd, &name).and_then(|socket| {
            local_address(&socket)
                .map(|address| (socket, address))
                .ok_or_else(|| Error::new(ErrorKind::Config, "not a TCP or named Unix stream socket"))
        });
        match adopted {
            Ok((socket, address)) => listeners.push(SharedListener {
                name,
                socket,
                address,
                spread: Spread::Shared,
                created: None,
            }),
            Err(err) => {
                tracing::warn!(fd, name = %name, error = %err, "not handing on a socket systemd passed")
            }
        }
    }
    Ok(listeners)
}

#[cfg(test)]
mod tests {
    use std::os::fd::BorrowedFd;

    use super::*;

    fn spec(name: &str, address: &str) -> [(String, String, ListenOptions); 1] {
        spec_with(name, address, ListenOptions::new())
    }

    fn spec_with(name: &str, address: &str, options: ListenOptions) -> [(String, String, ListenOptions); 1] {
        [(name.to_owned(), address.to_owned(), options)]
    }

    #[tokio::test]
    async fn a_bound_port_is_reported_and_a_second_bind_names_the_address_in_use() {
        // Each policy finds the others' sockets, so two primaries never split one port unnoticed.
        let policies = [Balance::PerWorker, Balance::Shared, Balance::Handover];
        for first_policy in policies {
            for second_policy in policies {
                let first = SharedListeners::open(&spec_with(
                    "http",
                    "127.0.0.1:0",
                    ListenOptions::new().balance(first_policy),
                ))
                .expect("binds");
                let Some(ListenAddr::Tcp(addr)) = first.address("http") else { panic!("a TCP address") };
                assert_ne!(addr.port(), 0, "the chosen port is reported");
                let second = ListenOptions::new().balance(second_policy);
                let again = SharedListeners::open(&spec_with("http", &addr.to_string(), second))
                    .err()
                    .unwrap_or_else(|| panic!("{second_policy:?} after {first_policy:?}: in use"));
                assert!(again.message().contains(&addr.to_string()), "{again}");
                assert!(again.message().contains("in use"), "{again}");
            }
        }
    }

    #[test]
    fn per_worker_sockets_are_one_per_name_on_the_listeners_address_until_released() {
        let listeners = SharedListeners::open(&spec("http", "127.0.0.1:0")).expect("binds");
        let Some(ListenAddr::Tcp(address)) = listeners.address("http") else { panic!("a TCP address") };
        let mut guard = listeners.lock();
        let Spread::PerWorker(sockets) = &mut guard[0].spread else {
            panic!("TCP is balanced per worker by default")
        };
        let local = |fd: BorrowedFd<'_>| socket2::SockRef::from(&fd).local_addr().expect("bound").as_socket();
        let first = sockets.for_worker("http", "w1", BACKLOG).expect("w1's socket");
        assert_eq!(local(first), Some(address));
        let w1 = os::duplicate_at_or_above(first, 3).expect("a copy");
        let again = sockets.for_worker("http", "w1", BACKLOG).expect("w1's socket again");
        assert_eq!(local(again), Some(address));
        let same = |a: BorrowedFd<'_>, b: BorrowedFd<'_>| {
            let inode = |fd: BorrowedFd<'_>| nix::sys::stat::fstat(fd).expect("fstat").st_ino;
            inode(a) == inode(b)
        };
        assert!(same(w1.as_fd(), again), "a revived w1 inherits the socket its predecessor had");
        let w2 = sockets.for_worker("http", "w2", BACKLOG).expect("w2's socket");
        assert!(!same(w1.as_fd(), w2), "each worker has a socket of its own");
        drop(guard);
        listeners.release("w1");
        let mut guard = listeners.lock();
        let Spread::PerWorker(sockets) = &mut guard[0].spread else { panic!("per worker") };
        let fresh = sockets.for_worker("http", "w1", BACKLOG).expect("a new w1 socket");
        assert!(!same(w1.as_fd(), fresh), "a released name gets a new socket");
    }

    #[tokio::test]
    async fn unix_sockets_cannot_be_balanced_per_worker_and_say_so() {
        let dir = tempfile::tempdir().expect("temp dir");
        let address = format!("unix:{}", dir.path().join("app.sock").display());
        let per_worker = ListenOptions::new().balance(Balance::PerWorker);
        let err = SharedListeners::open(&spec_with("api", &address, per_worker)).err().expect("refused");
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.message().contains("Balance::Shared"), "{err}");
        let listeners =
            SharedListeners::open(&spec("api", &address)).expect("the default is handover for Unix");
        assert!(matches!(listeners.lock()[0].spread, Spread::Handover(_)));
    }

    #[tokio::test]
    async fn a_socket_systemd_passed_is_shared_or_handed_over_but_not_per_worker() {
        let passed = || {
            let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let address = ListenAddr::Tcp(socket.local_addr().expect("address"));
            SharedListener {
                name: "http".into(),
                socket: socket.into(),
                address,
                spread: Spread::Shared,
                created: None,
            }
        };
        assert!(matches!(spread_of_inherited(&passed(), None), Ok(Spread::Shared)));
        let handed = spread_of_inherited(&passed(), Some(Balance::Handover));
        assert!(matches!(handed, Ok(Spread::Handover(_))));
        let Err(err) = spread_of_inherited(&passed(), Some(Balance::PerWorker)) else { panic!("refused") };
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.message().contains("Balance::Handover"), "{err}");
    }

    #[test]
    fn names_must_be_unique_and_fit_listen_fdnames() {
        let one = spec("a", "127.0.0.1:0");
        let twice = [one[0].clone(), one[0].clone()];
        assert_eq!(SharedListeners::open(&twice).err().expect("duplicate").kind(), ErrorKind::AlreadyExists);
        for bad in ["", "a:b", "with space"] {
            let err = SharedListeners::open(&spec(bad, "127.0.0.1:0")).err().expect(bad);
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_stale_unix_socket_is_replaced_and_removed_at_the_end() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("app.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("a stale socket"));
        let spec = spec("api", &format!("unix:{}", path.display()));
        let listeners = SharedListeners::open(&spec).expect("stale socket taken over");
        assert_eq!(listeners.address("api"), Some(ListenAddr::Unix(path.clone())));
        let busy = SharedListeners::open(&spec).err().expect("a live socket is not taken");
        assert!(busy.message().contains("in use"), "{busy}");
        listeners.close();
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_unix_socket_in_a_missing_directory_names_the_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("missing-dir").join("x.sock");
        let err = SharedListeners::open(&spec("api", &format!("unix:{}", path.display())))
            .err()
            .expect("no directory");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(err.message().contains("missing-dir does not exist"), "{err}");
        assert!(err.message().contains("\"api\""), "names the listener: {err}");
    }
}
