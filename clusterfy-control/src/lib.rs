//! The client of a running Clusterfy primary's control socket: what the `clusterfy` command is
//! made of, in a crate of its own so that a tool operating a cluster builds without the cluster
//! runtime (transports, storage, supervision). The primary's side of the socket is
//! `clusterfy::PrimaryBuilder::control`; `clusterfy::control` re-exports this crate's items.
//!
//! The socket is `<dir>/<app>.sock`, where `<dir>` ([`control_dir`]) is
//! `$XDG_RUNTIME_DIR/clusterfy`, else `/run/user/<uid>/clusterfy` when that exists, else
//! `/tmp/clusterfy-<uid>`: a directory of mode 0700 that belongs to the user, holding sockets of
//! mode 0600. The primary also refuses every peer whose uid is not its own (`SO_PEERCRED`), root
//! included, so only the user who runs the cluster can operate it.
//!
//! ```no_run
//! # async fn run() -> clusterfy_control::Result<()> {
//! use clusterfy_control::{ControlClient, workers_table};
//!
//! let client = ControlClient::for_app("shop")?;
//! println!("{}", workers_table(&client.workers().await?));
//! client.reload().await?;
//! # Ok(())
//! # }
//! ```

mod client;
mod location;
mod rows;
mod table;

pub use client::{ControlClient, ControlStream, RunningApp};
pub use clusterfy_core::control::CONTROL_PROTOCOL_VERSION;
pub use clusterfy_core::{Error, ErrorKind, Result, Value, from_value, to_value};
pub use location::{control_dir, socket_path};
pub use rows::{AppInfo, EventRow, LogEntry, WorkerRow};
pub use table::workers_table;
