//! Operating a running cluster from outside its program: the primary's opt-in control socket
//! ([`PrimaryBuilder::control`](crate::PrimaryBuilder::control)), and the client the `clusterfy`
//! command uses ([`ControlClient`]). The messages are [`clusterfy_core::control`]'s.
//!
//! The socket is `<dir>/<app>.sock`, where `<dir>` is `$XDG_RUNTIME_DIR/clusterfy`, else
//! `/run/user/<uid>/clusterfy` when that exists, else `/tmp/clusterfy-<uid>`: a directory of
//! mode 0700 that belongs to the user, holding sockets of mode 0600. The primary also refuses
//! every peer whose uid is not its own (`SO_PEERCRED`), root included, so only the user who
//! runs the cluster can operate it, even if the file permissions were loosened.

mod client;
mod frames;
mod limits;
mod location;
mod server;
mod table;

pub use client::{ControlClient, ControlStream, LogEntry, RunningApp};
pub use location::control_dir;
pub(crate) use location::socket_path;
pub(crate) use server::{ControlSocket, SocketPlace, open};
pub use table::workers_table;
