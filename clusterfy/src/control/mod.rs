//! Operating a running cluster from outside its program: the primary's opt-in control socket
//! ([`PrimaryBuilder::control`](crate::PrimaryBuilder::control)), and the client the `clusterfy`
//! command uses ([`ControlClient`], from the crate `clusterfy-control`, which a tool can depend
//! on alone). The messages are [`clusterfy_core::control`]'s.
//!
//! The socket is `<dir>/<app>.sock`, where `<dir>` is `$XDG_RUNTIME_DIR/clusterfy`, else
//! `/run/user/<uid>/clusterfy` when that exists, else `/tmp/clusterfy-<uid>`: a directory of
//! mode 0700 that belongs to the user, holding sockets of mode 0600. The primary also refuses
//! every peer whose uid is not its own (`SO_PEERCRED`), root included, so only the user who
//! runs the cluster can operate it, even if the file permissions were loosened.

mod limits;
mod private_dir;
mod server;

pub use clusterfy_control::{
    AppInfo, ControlClient, ControlStream, EventRow, LogEntry, RunningApp, WorkerRow, control_dir,
    socket_path, workers_table,
};
pub(crate) use server::{ControlSocket, SocketPlace, open};
