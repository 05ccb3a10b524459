//! Where control sockets live, and the checks on that directory and on app names.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use clusterfy_core::{Error, ErrorKind, Result};

/// Longest app name: it becomes a file name.
const MAX_APP_NAME_LEN: usize = 100;

/// The directory of this user's control sockets: `$XDG_RUNTIME_DIR/clusterfy`, else
/// `/run/user/<uid>/clusterfy` when `/run/user/<uid>` exists, else `/tmp/clusterfy-<uid>`.
pub fn control_dir() -> PathBuf {
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(runtime).join("clusterfy");
    }
    let uid = nix::unistd::getuid();
    let run_user = PathBuf::from(format!("/run/user/{uid}"));
    if run_user.is_dir() {
        return run_user.join("clusterfy");
    }
    std::env::temp_dir().join(format!("clusterfy-{uid}"))
}

/// The socket of `app` in [`control_dir`]; fails for a name that cannot be a file name.
pub(crate) fn socket_path(app: &str) -> Result<PathBuf> {
    let fine = !app.is_empty()
        && app.len() <= MAX_APP_NAME_LEN
        && !app.starts_with('.')
        && app.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !fine {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{:?} cannot name an app: use 1 to {MAX_APP_NAME_LEN} letters, digits, '.', '_' or '-', not \
                 starting with '.'",
                clusterfy_core::error::excerpt(app)
            ),
        ));
    }
    Ok(control_dir().join(format!("{app}.sock")))
}

/// Creates Clusterfy's own control directory `dir` ([`control_dir`]) with mode 0700 if it is
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
    fn app_names_must_be_plain_file_names() {
        for bad in ["", "../x", "a/b", ".hidden", "with space"] {
            assert_eq!(socket_path(bad).expect_err(bad).kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
        let path = socket_path("my-app.v2").expect("fine");
        assert_eq!(path.file_name().and_then(|n| n.to_str()), Some("my-app.v2.sock"));
        assert_eq!(path.parent(), Some(control_dir().as_path()));
    }

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
