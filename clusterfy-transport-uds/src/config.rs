//! Options of the UDS transport.

use std::path::{Path, PathBuf};

use crate::UdsTransport;

/// Builds a [`UdsTransport`]; [`UdsTransport::new`] is the same with every option at its default.
///
/// ```
/// use clusterfy_transport_uds::UdsTransport;
///
/// let transport = UdsTransport::builder().parent_dir("/run/my-app").build();
/// # drop(transport);
/// ```
#[derive(Debug, Clone, Default)]
pub struct UdsTransportBuilder {
    parent_dir: Option<PathBuf>,
}

impl UdsTransportBuilder {
    /// A builder with every option at its default.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates the private socket directory inside `dir`.
    ///
    /// By default it goes to `$XDG_RUNTIME_DIR` when that is set and usable, else to
    /// [`std::env::temp_dir`]. `dir` must exist, be writable by the primary's user and be short:
    /// a socket path must fit the OS limit (107 bytes on Linux, 103 elsewhere), so `dir` may be at
    /// most about 60 bytes long. Nothing is checked until the first worker is prepared; problems
    /// then surface as [`ErrorKind::Config`](clusterfy_core::ErrorKind::Config) errors naming `dir`.
    #[must_use]
    pub fn parent_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.parent_dir = Some(dir.into());
        self
    }

    /// The transport.
    pub fn build(self) -> UdsTransport {
        UdsTransport::from_parent_dir(self.parent_dir)
    }
}

/// Where the socket directory may be created.
#[derive(Debug, Clone)]
pub(crate) struct ParentDirs {
    /// Tried first; if creating the directory there fails, the fallback is used.
    pub(crate) preferred: Option<PathBuf>,
    /// Tried last; its failure is the error.
    pub(crate) fallback: PathBuf,
}

impl ParentDirs {
    /// The configured directory alone (its failures are reported, never papered over), or else
    /// `$XDG_RUNTIME_DIR` (when absolute, as the XDG spec asks) with the temp dir as fallback.
    pub(crate) fn resolve(configured: Option<&Path>) -> Self {
        if let Some(path) = configured {
            return ParentDirs { preferred: None, fallback: path.to_owned() };
        }
        let runtime_dir =
            std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|dir| dir.is_absolute());
        ParentDirs { preferred: runtime_dir, fallback: std::env::temp_dir() }
    }
}
