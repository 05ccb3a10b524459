//! Where control sockets live, and which app names can name one.

use std::path::PathBuf;

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

/// The socket of app `app` in [`control_dir`]; fails with [`ErrorKind::InvalidInput`] for a
/// name that cannot be a file name.
pub fn socket_path(app: &str) -> Result<PathBuf> {
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
}
