//! Keeping processes of the same user out of the cluster's processes where the kernel allows it
//! (`PrimaryBuilder::non_dumpable`).

use clusterfy_core::{Error, ErrorKind, Result};

/// Marks this process non-dumpable: same-user processes without `CAP_SYS_PTRACE` can no longer
/// `ptrace` it, take its descriptors with `pidfd_getfd`, or read its `/proc/<pid>` entries, and
/// it leaves no core dump. Reset by `execve`, so each program sets it for itself.
pub(crate) fn mark_non_dumpable() -> Result<()> {
    nix::sys::prctl::set_dumpable(false).map_err(|errno| {
        Error::new(
            ErrorKind::Io,
            format!("could not mark the process non-dumpable (prctl PR_SET_DUMPABLE): {errno}"),
        )
    })
}
