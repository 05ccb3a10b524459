//! The primary's side of the control directory: created private, and checked to be this user's.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use clusterfy_core::{Error, ErrorKind, Result};

/// Creates Clusterfy's own control directory `dir` ([`control_dir`](super::control_dir)) with mode 0700 if it is
/// missing (its parent must exist: that is the user's runtime or temporary directory, never
/// created here), checks that it belongs to this user, and makes it private again if its mode was
/// loosened. Only this directory is ever created or changed; a directory the program names with
/// `control_at` is left as it is.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io(format!("creating the control directory {}", dir.display()), e)),
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| Error::io(format!("checking the control directory {}", dir.display()), e))?;
    let uid = nix::unistd::getuid().as_raw();
    if !meta.is_dir() || meta.uid() != uid {
        return Err(Error::new(
            ErrorKind::Unauthorized,
            format!(
                "the control directory {} is not a directory of this user (uid {uid}); remove it or set \
                 XDG_RUNTIME_DIR to a directory of yours",
                dir.display()
            ),
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("making {} private (mode 0700)", dir.display()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusterfys_own_directory_open_to_others_is_made_private() {
        let parent = tempfile::tempdir().expect("temp dir");
        let dir = parent.path().join("clusterfy");
        std::fs::create_dir(&dir).expect("dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        ensure_private_dir(&dir).expect("ours");
        let mode = std::fs::metadata(&dir).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn clusterfys_own_directory_is_made_in_an_existing_parent_only() {
        let parent = tempfile::tempdir().expect("temp dir");
        let nested = parent.path().join("no-runtime-dir").join("clusterfy");
        ensure_private_dir(&nested).expect_err("the runtime directory is not ours to create");
        assert!(!parent.path().join("no-runtime-dir").exists());
    }
}
