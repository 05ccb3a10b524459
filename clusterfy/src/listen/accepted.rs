//! [`Accepted`]: one connection taken from a shared listener, whatever its policy.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection from [`Listener::accept`](crate::listen::Listener::accept): it reads and writes as the
/// stream inside it does, so a server can take it whatever the listener's address and
/// [`Balance`](crate::listen::Balance).
#[derive(Debug)]
#[non_exhaustive]
pub enum Accepted {
    /// From a TCP listener; its `peer_addr` is the client's.
    Tcp(tokio::net::TcpStream),
    /// From a Unix socket listener.
    Unix(tokio::net::UnixStream),
}

impl AsyncRead for Accepted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Accepted::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            Accepted::Unix(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Accepted::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
            Accepted::Unix(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Accepted::Tcp(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Accepted::Unix(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Accepted::Tcp(stream) => stream.is_write_vectored(),
            Accepted::Unix(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Accepted::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            Accepted::Unix(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Accepted::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            Accepted::Unix(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}
