//! What is at the path of a Unix socket Clusterfy is about to bind: nothing, a socket file that
//! a dead process left (taken over), a socket something still listens on, or another file.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// What [`probe`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketFile {
    /// Nothing at the path.
    Absent,
    /// A socket nobody accepts on: left by a process that died, safe to remove.
    Stale,
    /// A socket a live process accepts on.
    Live,
    /// A file that is not a socket.
    NotASocket,
    /// A socket that could not be probed (permission denied, ...): not taken over.
    Unknown,
}

pub(crate) fn probe(path: &Path) -> SocketFile {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return SocketFile::Absent };
    if !meta.file_type().is_socket() {
        return SocketFile::NotASocket;
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => SocketFile::Live,
        // Only a refusal proves that nobody accepts on it.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => SocketFile::Stale,
        Err(_) => SocketFile::Unknown,
    }
}
