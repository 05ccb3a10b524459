//! The one rule for the socket files Clusterfy binds (a Unix-socket listener, the control
//! socket): what is at the path before the bind (nothing, a socket file that a dead process left
//! and is taken over, a socket something still listens on, or another file), and the directory
//! it goes in. A directory the program names is used as it is: Clusterfy never creates it or
//! changes its mode; only its own control directory is made and kept private.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use clusterfy_core::{Error, ErrorKind, Result};

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

/// Checks that the directory a socket at `path` goes in exists, without touching it: a
/// directory the program named is its own to create and to set the mode of. `what` names the
/// socket in the error ("the control socket", "listener \"api\"").
pub(crate) fn check_named_directory(path: &Path, what: &str) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        // A bare file name goes in the working directory, which exists.
        _ => return Ok(()),
    };
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "cannot create {what} at {}: {} is not a directory; choose a path in an existing directory",
                path.display(),
                dir.display()
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "cannot create {what} at {}: the directory {} does not exist; create it first (with the \
                 owner and mode it should have: Clusterfy does not create or change directories you name)",
                path.display(),
                dir.display()
            ),
        )),
        Err(e) => Err(Error::io(format!("checking the directory of {what} at {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_is_named_and_an_existing_one_is_fine() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing-dir").join("x.sock");
        let err = check_named_directory(&missing, "the control socket").expect_err("missing");
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.message().contains("missing-dir does not exist"), "{err}");
        check_named_directory(&dir.path().join("x.sock"), "the control socket").expect("exists");
        check_named_directory(Path::new("x.sock"), "the control socket").expect("the working directory");
    }
}
