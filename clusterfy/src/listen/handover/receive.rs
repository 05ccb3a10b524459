//! The worker's side of [`Balance::Handover`](crate::listen::Balance::Handover): connections arrive on
//! the process's handover channel instead of a listening socket.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use clusterfy_core::os::{self, Registered};
use clusterfy_core::{Error, Result};
use nix::sys::socket::MsgFlags;

use super::{HANDED_LEN, Kind, decode_handed, encode_taken};
use crate::listen::Accepted;

/// A shared listener balanced by the primary ([`Balance::Handover`](crate::listen::Balance::Handover)):
/// the primary accepts each connection and hands it to this worker process, which takes it with
/// [`HandedListener::accept`]. A TCP connection's [`peer_addr`](tokio::net::TcpStream::peer_addr)
/// is the client's, as on a listener of its own.
///
/// From the moment the worker takes the listener (with
/// [`Worker::listener`](crate::Worker::listener)) the primary hands it connections; dropping it
/// hands the ones not yet accepted to the other workers.
#[derive(Debug)]
pub struct HandedListener {
    channel: Registered,
    name: String,
    /// The highest sequence number taken but not yet confirmed to the primary (its buffer was
    /// full): confirmed with the next one.
    unconfirmed: AtomicU64,
    /// The primary closed the channel; said once.
    primary_gone: AtomicBool,
}

impl HandedListener {
    /// Takes the process's end of listener `name`'s channel and tells the primary it accepts.
    pub(crate) fn new(channel: OwnedFd, name: &str) -> Result<Self> {
        let registering = |e| Error::io(format!("registering the handover channel of listener {name:?}"), e);
        let channel = os::register_with_runtime(channel).map_err(registering)?;
        let listener = HandedListener {
            channel,
            name: name.to_owned(),
            unconfirmed: AtomicU64::new(0),
            primary_gone: AtomicBool::new(false),
        };
        listener
            .confirm(0)
            .map_err(|e| Error::io(format!("telling the primary that {name:?} accepts"), e))?;
        Ok(listener)
    }

    /// The next connection the primary hands to this process. Once the primary is gone (and
    /// with it the cluster) no connection comes any more: this waits forever.
    pub async fn accept(&self) -> std::io::Result<Accepted> {
        let mut message = [0u8; HANDED_LEN];
        loop {
            let mut ready = self.channel.readable().await?;
            let received = match ready
                .try_io(|channel| os::receive_with_descriptor(channel.get_ref().as_fd(), &mut message))
            {
                Err(_would_block) => continue,
                Ok(received) => received,
            };
            let received = match received {
                Ok(received) => received,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            let handed = decode_handed(&message[..received.len]).filter(|_| !received.truncated);
            match (handed, received.descriptor) {
                (Some((kind, sequence)), Some(connection)) => {
                    self.take(sequence);
                    return into_stream(kind, connection);
                }
                (_, None) if received.len == 0 => {
                    if !self.primary_gone.swap(true, Ordering::Relaxed) {
                        tracing::warn!(listener = %self.name, "the primary closed the handover channel; no more connections come");
                    }
                    std::future::pending::<()>().await;
                }
                // Not from a primary of this version: dropped (with any descriptor), not fatal.
                _ => {
                    tracing::warn!(listener = %self.name, len = received.len, "a malformed handover message; ignored")
                }
            }
        }
    }

    /// Confirms connection `sequence` (and those before it) to the primary; should its buffer
    /// be full, with the next one.
    fn take(&self, sequence: u64) {
        let highest = self.unconfirmed.fetch_max(sequence, Ordering::Relaxed).max(sequence);
        if self.confirm(highest).is_ok() {
            // Only if no later one came meanwhile; that one confirms this too.
            let _ = self.unconfirmed.compare_exchange(highest, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn confirm(&self, sequence: u64) -> std::io::Result<()> {
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        nix::sys::socket::send(self.channel.get_ref().as_raw_fd(), &encode_taken(sequence), flags)?;
        Ok(())
    }
}

fn into_stream(kind: Kind, connection: OwnedFd) -> std::io::Result<Accepted> {
    Ok(match kind {
        Kind::Tcp => {
            let stream = std::net::TcpStream::from(connection);
            stream.set_nonblocking(true)?;
            Accepted::Tcp(tokio::net::TcpStream::from_std(stream)?)
        }
        Kind::Unix => {
            let stream = std::os::unix::net::UnixStream::from(connection);
            stream.set_nonblocking(true)?;
            Accepted::Unix(tokio::net::UnixStream::from_std(stream)?)
        }
    })
}
