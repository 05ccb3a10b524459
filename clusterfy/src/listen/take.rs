//! The worker's side of the shared listeners: find one by name among the inherited descriptors
//! and make it a tokio listener, or the receiving end of the primary's handover.

use std::os::fd::{AsRawFd, OwnedFd};

use clusterfy_core::transport::FIRST_INHERITED_FD;
use clusterfy_core::{Error, ErrorKind, Result, os};

use super::handover::HandedListener;
use super::shared::local_address;
use super::{Accepted, ListenAddr};

/// A shared listener as a worker gets it from [`Worker::listener`](crate::Worker::listener):
/// a listening socket, or the connections the primary hands over. [`Listener::accept`] takes
/// the next connection from either.
#[derive(Debug)]
#[non_exhaustive]
pub enum Listener {
    /// A TCP listener (IPv4 or IPv6).
    Tcp(tokio::net::TcpListener),
    /// A Unix stream socket listener.
    Unix(tokio::net::UnixListener),
    /// Connections the primary accepts and hands to this process
    /// ([`Balance::Handover`](crate::listen::Balance::Handover)).
    Handed(HandedListener),
}

impl Listener {
    /// The next connection, whatever the listener's address and policy. A handed-over
    /// listener whose primary is gone gets no connection any more and waits forever (the worker
    /// ends with its primary, or on its shutdown request: select on that too).
    pub async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            Listener::Tcp(listener) => listener.accept().await.map(|(stream, _)| Accepted::Tcp(stream)),
            Listener::Unix(listener) => listener.accept().await.map(|(stream, _)| Accepted::Unix(stream)),
            Listener::Handed(listener) => listener.accept().await,
        }
    }

    /// The TCP listener, or an error naming what it is instead.
    pub fn into_tcp(self) -> Result<tokio::net::TcpListener> {
        match self {
            Listener::Tcp(listener) => Ok(listener),
            Listener::Unix(_) => {
                Err(Error::new(ErrorKind::InvalidInput, "this listener is a Unix socket, not TCP"))
            }
            Listener::Handed(_) => Err(not_a_socket()),
        }
    }

    /// The Unix socket listener, or an error naming what it is instead.
    pub fn into_unix(self) -> Result<tokio::net::UnixListener> {
        match self {
            Listener::Unix(listener) => Ok(listener),
            Listener::Tcp(_) => {
                Err(Error::new(ErrorKind::InvalidInput, "this listener is TCP, not a Unix socket"))
            }
            Listener::Handed(_) => Err(not_a_socket()),
        }
    }
}

fn not_a_socket() -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        "this listener is balanced by the primary (Balance::Handover): it hands each connection over, \
         so there is no listening socket; take connections with Listener::accept, or have the primary listen \
         with another Balance",
    )
}

/// Marks every inherited listener (`names`, in descriptor order) close-on-exec, so the worker's
/// own children (a shell, a helper, a nested primary) do not inherit the cluster's sockets.
/// `LISTEN_FDS` stays in the environment, which a process cannot change safely once it runs
/// threads.
pub(crate) fn keep_listeners_from_children(names: &[String]) {
    for fd in FIRST_INHERITED_FD..FIRST_INHERITED_FD + names.len() as i32 {
        os::keep_from_children(fd);
    }
}

/// Takes the inherited listener `name`, one of `names` (in descriptor order). Must run inside a
/// tokio runtime.
pub(crate) fn take_listener(names: &[String], name: &str) -> Result<Listener> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::new(
            ErrorKind::InvalidState,
            "Worker::listener needs a tokio runtime: call it from async code running on one",
        ));
    }
    let Some(at) = names.iter().position(|n| n == name) else {
        let known = if names.is_empty() { "none".to_owned() } else { names.join(", ") };
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "no shared listener named {:?}; this worker inherited: {known}. The primary shares the \
                 listeners it was built with (PrimaryBuilder::listen)",
                clusterfy_core::error::excerpt(name)
            ),
        )
        .with_context("listener", name));
    };
    let fd = FIRST_INHERITED_FD + at as i32;
    match os::adopt_inherited_socket_or_listener(fd, name)? {
        os::InheritedSocket::Listening(socket) => into_tokio(socket, name),
        os::InheritedSocket::Connected(channel) => HandedListener::new(channel, name).map(Listener::Handed),
    }
}

fn into_tokio(socket: OwnedFd, name: &str) -> Result<Listener> {
    let registering = |e| Error::io(format!("registering the listener {name:?} with the runtime"), e);
    match local_address(&socket) {
        Some(ListenAddr::Tcp(_)) => {
            let listener = std::net::TcpListener::from(socket);
            listener.set_nonblocking(true).map_err(registering)?;
            tokio::net::TcpListener::from_std(listener).map(Listener::Tcp).map_err(registering)
        }
        Some(ListenAddr::Unix(_)) => {
            let listener = std::os::unix::net::UnixListener::from(socket);
            listener.set_nonblocking(true).map_err(registering)?;
            tokio::net::UnixListener::from_std(listener).map(Listener::Unix).map_err(registering)
        }
        None => Err(Error::new(
            ErrorKind::Config,
            format!(
                "the inherited listener {name:?} (descriptor {}) is neither TCP nor a Unix socket",
                socket.as_raw_fd()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[tokio::test]
    async fn an_unknown_name_is_refused_naming_the_inherited_listeners() {
        let err = take_listener(&names(&["http", "admin"]), "metrics").expect_err("no such listener");
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.message().contains("http, admin"), "{err}");
        let none = take_listener(&[], "http").expect_err("no listeners at all");
        assert!(none.message().contains("inherited: none"), "{none}");
    }

    #[test]
    fn outside_a_runtime_the_error_says_so() {
        let err = take_listener(&names(&["http"]), "http").expect_err("no runtime");
        assert!(err.message().contains("tokio runtime"), "{err}");
    }
}
