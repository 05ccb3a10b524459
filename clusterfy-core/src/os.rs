//! The operating-system edges of spawning a worker: adopting a descriptor the child inherited
//! (its channel, its listeners), duplicating one for a child, passing descriptors over a Unix
//! socket, and asking the kernel to kill the child when its primary dies.
//!
//! This is the only module of the workspace that may use `unsafe`; every block says why it is
//! sound.
#![allow(unsafe_code)]

use std::collections::BTreeSet;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, PoisonError};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::stat::{SFlag, fstat};

use crate::error::{Error, ErrorKind, Result};

/// Descriptors this process already adopted: each inherited descriptor has one owner.
static ADOPTED: Mutex<BTreeSet<RawFd>> = Mutex::new(BTreeSet::new());

/// Takes ownership of the inherited socket `fd` (named in the environment variable `source`, for
/// errors) and marks it close-on-exec, so the worker's own children do not inherit its channel.
///
/// Fails with [`ErrorKind::Config`] when `fd` is a standard stream, is not open, or is not a
/// socket, and with [`ErrorKind::InvalidState`] when this process already took it.
pub fn adopt_inherited_socket(fd: RawFd, source: &str) -> Result<OwnedFd> {
    let owned = adopt(fd, &format!("{source}={fd}"), "this worker's channel")?;
    if nix::sys::socket::getsockopt(&owned, nix::sys::socket::sockopt::AcceptConn).unwrap_or(false) {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "{source}={fd} is a listening socket, not this worker's channel: the transport mapped its channel \
                 over a shared listener; a transport must map from SpawnInfo::first_free_fd on"
            ),
        )
        .with_context("fd", fd));
    }
    Ok(owned)
}

/// Takes the worker's channel that the primary passed as stdin (`source`=0): a close-on-exec
/// duplicate numbered [`FIRST_INHERITED_FD`](crate::transport::FIRST_INHERITED_FD) or above, with
/// stdin pointed at `/dev/null`, so the program's own reads and children never see the channel.
pub fn adopt_channel_from_stdin(source: &str) -> Result<OwnedFd> {
    let stdin = std::io::stdin();
    let stdin = std::os::fd::AsFd::as_fd(&stdin);
    let refuse = |why: &str| {
        Error::new(
            ErrorKind::Config,
            format!(
                "{source}=0 names stdin as this worker's channel, but {why}; it must be started by a Clusterfy primary"
            ),
        )
    };
    let is_socket =
        fstat(stdin).map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK);
    if !matches!(is_socket, Ok(true)) {
        return Err(refuse("stdin is not a socket"));
    }
    if nix::sys::socket::getsockopt(&stdin, nix::sys::socket::sockopt::AcceptConn).unwrap_or(false) {
        return Err(refuse("stdin is a listening socket"));
    }
    let mut adopted = ADOPTED.lock().unwrap_or_else(PoisonError::into_inner);
    if adopted.contains(&0) {
        return Err(Error::new(ErrorKind::InvalidState, "this worker's channel on stdin was already taken"));
    }
    let channel = duplicate_at_or_above(stdin, crate::transport::FIRST_INHERITED_FD)
        .map_err(|e| Error::io("moving this worker's channel off stdin", e))?;
    let null = std::fs::File::open("/dev/null").map_err(|e| Error::io("opening /dev/null", e))?;
    nix::unistd::dup2_stdin(&null)
        .map_err(|e| Error::new(ErrorKind::Io, format!("pointing stdin at /dev/null: {e}")))?;
    adopted.insert(0);
    Ok(channel)
}

/// Asks the kernel to SIGKILL this process when the thread that spawned it ends (the primary's
/// spawner thread, which lives as long as the primary), for a worker spawned without
/// [`die_with_parent`]. Fails with [`ErrorKind::Closed`] when `parent` is already gone.
pub fn die_with_parent_now(parent: u32) -> Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
            .map_err(|e| Error::new(ErrorKind::Io, format!("setting the parent-death signal: {e}")))?;
        // The primary may have died before the call above; then this process was re-parented.
        if nix::unistd::getppid().as_raw() as u32 != parent {
            return Err(Error::new(ErrorKind::Closed, "the primary that started this worker is gone"));
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = parent;
    Ok(())
}

/// Takes ownership of the inherited listening socket `fd`, passed as `name` under the
/// socket-activation convention (`LISTEN_FDS`, `LISTEN_FDNAMES`), and marks it close-on-exec.
/// Fails as [`adopt_inherited_socket`] does, and with [`ErrorKind::Config`] when the socket does
/// not listen.
pub fn adopt_inherited_listener(fd: RawFd, name: &str) -> Result<OwnedFd> {
    let owned = adopt(fd, &format!("descriptor {fd} of LISTEN_FDS"), &format!("the listener {name:?}"))?;
    match nix::sys::socket::getsockopt(&owned, nix::sys::socket::sockopt::AcceptConn) {
        Ok(true) => Ok(owned),
        _ => Err(not_listening(fd, name)),
    }
}

/// What a worker found at a shared listener's descriptor.
#[derive(Debug)]
pub enum InheritedSocket {
    /// A listening socket: the worker accepts on it.
    Listening(OwnedFd),
    /// A connected `SOCK_SEQPACKET` socket: the primary hands connections over on it.
    Connected(OwnedFd),
}

/// [`adopt_inherited_listener`] that also takes the channel a primary hands connections over
/// on, in place of a listening socket.
pub fn adopt_inherited_socket_or_listener(fd: RawFd, name: &str) -> Result<InheritedSocket> {
    use nix::sys::socket::{getsockopt, sockopt};
    let owned = adopt(fd, &format!("descriptor {fd} of LISTEN_FDS"), &format!("the listener {name:?}"))?;
    if getsockopt(&owned, sockopt::AcceptConn).unwrap_or(false) {
        return Ok(InheritedSocket::Listening(owned));
    }
    if getsockopt(&owned, sockopt::SockType).is_ok_and(|kind| kind == nix::sys::socket::SockType::SeqPacket) {
        return Ok(InheritedSocket::Connected(owned));
    }
    Err(not_listening(fd, name))
}

fn not_listening(fd: RawFd, name: &str) -> Error {
    Error::new(
        ErrorKind::Config,
        format!(
            "descriptor {fd} of LISTEN_FDS, named {name:?}, is a socket that does not listen; whoever \
             started this process passed the wrong descriptor"
        ),
    )
    .with_context("fd", fd)
}

/// Marks the inherited descriptor `fd` close-on-exec, if it is open, so that programs this
/// process starts do not inherit it (the shared listeners a worker did not take).
pub fn keep_from_children(fd: RawFd) {
    if fd <= 2 {
        return;
    }
    // SAFETY: F_GETFD and F_SETFD only read and set the descriptor's flags; on a number that is
    // not open they fail with EBADF and touch nothing. No object of this process is affected.
    unsafe {
        let flags = nix::libc::fcntl(fd, nix::libc::F_GETFD);
        if flags != -1 {
            nix::libc::fcntl(fd, nix::libc::F_SETFD, flags | nix::libc::FD_CLOEXEC);
        }
    }
}

/// A close-on-exec duplicate of `fd` numbered `min` or above, for handing it to a child at a
/// low number without colliding with the descriptors a transport maps there.
pub fn duplicate_at_or_above(fd: BorrowedFd<'_>, min: RawFd) -> std::io::Result<OwnedFd> {
    let raw = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(min)).map_err(std::io::Error::from)?;
    // SAFETY: F_DUPFD_CLOEXEC just created `raw`; nothing else in this process knows the number.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Sends `bytes` and a copy of `fd` as one message on the connected Unix socket `socket`
/// (`SCM_RIGHTS`), without blocking: [`std::io::ErrorKind::WouldBlock`] when its buffer is full.
pub fn send_with_descriptor(socket: BorrowedFd<'_>, bytes: &[u8], fd: BorrowedFd<'_>) -> std::io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let fds = [std::os::fd::AsRawFd::as_raw_fd(&fd)];
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    let sent = sendmsg::<()>(
        std::os::fd::AsRawFd::as_raw_fd(&socket),
        &[std::io::IoSlice::new(bytes)],
        &[ControlMessage::ScmRights(&fds)],
        flags,
        None,
    )?;
    if sent != bytes.len() {
        return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "the message was cut short"));
    }
    Ok(())
}

/// A descriptor registered with a tokio runtime's reactor ([`register_with_runtime`]): waits
/// until it is readable or writable. Only shared access is given out, so the registered
/// descriptor cannot be swapped for another while it is registered.
#[derive(Debug)]
pub struct Registered(tokio::io::unix::AsyncFd<OwnedFd>);

impl std::ops::Deref for Registered {
    type Target = tokio::io::unix::AsyncFd<OwnedFd>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// Registers `fd` with the current tokio runtime's reactor. Must run inside the runtime.
pub fn register_with_runtime(fd: OwnedFd) -> std::io::Result<Registered> {
    // SAFETY: an `OwnedFd` keeps its descriptor open and returns the same number from
    // `as_raw_fd` for as long as it lives, and `Registered` lets no one replace it (no mutable
    // access) until the `AsyncFd` is dropped with it.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map(Registered).map_err(std::io::Error::from)
}

/// One message read by [`receive_with_descriptor`].
#[derive(Debug)]
pub struct Received {
    /// Bytes of the message placed in the buffer (0 for an empty message, or the end of file).
    pub len: usize,
    /// The first descriptor sent with it, if any, owned (and close-on-exec) here; any other is
    /// closed.
    pub descriptor: Option<OwnedFd>,
    /// The message was longer than the buffer, or came with more than one descriptor.
    pub truncated: bool,
}

/// Most descriptors Linux passes in one message (`SCM_MAX_FD`): room for all of them, so the
/// kernel never truncates the control data and every descriptor sent is owned (and closed) here.
const MAX_DESCRIPTORS_PER_MESSAGE: usize = 253;

/// Receives one message and the descriptors sent with it on the Unix socket `socket`, without
/// blocking: [`std::io::ErrorKind::WouldBlock`] when none is queued.
pub fn receive_with_descriptor(socket: BorrowedFd<'_>, buffer: &mut [u8]) -> std::io::Result<Received> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut space = nix::cmsg_space!([RawFd; MAX_DESCRIPTORS_PER_MESSAGE]);
    let mut iov = [std::io::IoSliceMut::new(buffer)];
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC;
    let message = recvmsg::<()>(std::os::fd::AsRawFd::as_raw_fd(&socket), &mut iov, Some(&mut space), flags)?;
    let mut truncated = message.flags.contains(MsgFlags::MSG_TRUNC);
    let mut descriptors = Vec::new();
    // Truncated control data (impossible with room for SCM_MAX_FD) would be an error here.
    for control in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = control {
            // SAFETY: the kernel installed each of these numbers in this process for this very
            // message; no other object knows them, so each gets exactly one owner here.
            descriptors.extend(fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    truncated |= descriptors.len() > 1;
    Ok(Received { len: message.bytes, descriptor: descriptors.into_iter().next(), truncated })
}

/// `described` names the descriptor for errors ("CLUSTERFY_UDS_FD=3"), `what` says what it was
/// meant to be.
fn adopt(fd: RawFd, described: &str, what: &str) -> Result<OwnedFd> {
    let config = |why: String| {
        Error::new(
            ErrorKind::Config,
            format!(
                "{described} does not name {what}: {why}; it must be inherited from the process that started \
                 this one (a Clusterfy primary's Primary::fork, or systemd's socket activation)"
            ),
        )
        .with_context("fd", fd)
    };
    if fd <= 2 {
        return Err(config("descriptors 0 to 2 are the standard streams".to_owned()));
    }
    let mut adopted = ADOPTED.lock().unwrap_or_else(PoisonError::into_inner);
    // SAFETY: F_GETFD only reads the descriptor's flags; with a number that is not open it fails
    // with EBADF and touches nothing.
    if unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } == -1 {
        return Err(config("no such open descriptor".to_owned()));
    }
    if adopted.contains(&fd) {
        return Err(Error::new(
            ErrorKind::InvalidState,
            format!("{what} in {described} was already taken: a worker process takes it once"),
        ));
    }
    // SAFETY: `fd` is open (checked just above) and owned by no other object of this process: it
    // was inherited at spawn, nothing in this process created it, and `ADOPTED` (held locked
    // until the end of this function) makes sure Clusterfy takes it at most once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let is_socket =
        fstat(&owned).map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK);
    match is_socket {
        Ok(true) => {}
        Ok(false) | Err(_) => {
            // Not ours to close: give the number back untouched.
            std::mem::forget(owned);
            return Err(config("it is not a socket".to_owned()));
        }
    }
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| {
        Error::new(ErrorKind::Io, format!("marking {what} in {described} close-on-exec: {e}"))
    })?;
    adopted.insert(fd);
    Ok(owned)
}

/// Makes the child of `command` receive SIGKILL when the primary process dies, from the first
/// instruction of the program it executes: any program, whether it links Clusterfy or not.
///
/// Linux delivers the parent-death signal when the *thread* that forked the child ends, so the
/// caller must spawn from a thread that lives as long as the process (the facade has one
/// spawner thread for that). Elsewhere this does nothing; workers there notice the end of their
/// connection instead.
pub fn die_with_parent(command: &mut tokio::process::Command) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let parent = nix::unistd::getpid();
        let in_child = move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(|errno| std::io::Error::from_raw_os_error(errno as i32))?;
            // The primary may have died between fork and the call above; then the child was
            // already handed to another parent and would never get the signal.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        };
        // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
        // calls are allowed: it makes two system calls (prctl, getppid), takes no lock and
        // allocates nothing (an io::Error from a raw OS error does not allocate).
        unsafe {
            command.pre_exec(in_child);
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = command;
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, IntoRawFd};

    use super::*;

    #[test]
    fn a_socket_is_adopted_once() {
        let (mine, _peer) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let raw = OwnedFd::from(mine).into_raw_fd();
        let owned = adopt_inherited_socket(raw, "TEST_FD").expect("a socket is adopted");
        assert_eq!(owned.as_raw_fd(), raw);
        let flags = fcntl(&owned, FcntlArg::F_GETFD).expect("flags");
        assert!(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC));
        let again = adopt_inherited_socket(raw, "TEST_FD").expect_err("second adoption");
        assert_eq!(again.kind(), ErrorKind::InvalidState);
        // Kept open, so that no other test of this process gets the number, which stays taken.
        std::mem::forget(owned);
    }

    #[test]
    fn standard_streams_closed_descriptors_and_files_are_refused() {
        for fd in [0, 2] {
            assert_eq!(
                adopt_inherited_socket(fd, "TEST_FD").expect_err("std stream").kind(),
                ErrorKind::Config
            );
        }
        let closed = adopt_inherited_socket(1_000_000, "TEST_FD").expect_err("not open");
        assert_eq!(closed.kind(), ErrorKind::Config);
        assert!(closed.message().contains("TEST_FD=1000000"), "{closed}");
        let file = tempfile_fd();
        let err = adopt_inherited_socket(file.as_raw_fd(), "TEST_FD").expect_err("a file");
        assert!(err.message().contains("not a socket"), "{err}");
        // Refused descriptors are left open for their owner.
        assert!(fcntl(&file, FcntlArg::F_GETFD).is_ok());
    }

    fn tempfile_fd() -> OwnedFd {
        let path = std::env::temp_dir().join(format!("clusterfy-os-test-{}", std::process::id()));
        let file = std::fs::File::create(&path).expect("temp file");
        let _ = std::fs::remove_file(&path);
        OwnedFd::from(file)
    }
}
