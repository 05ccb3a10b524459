//! Listening sockets shared by every worker (cluster mode): the primary binds each one once, or
//! takes it from systemd's socket activation, and every worker process inherits it by the same
//! convention (`LISTEN_FDS`, `LISTEN_FDNAMES`, descriptors from 3): the one socket, a socket of
//! the worker's own in the listener's `SO_REUSEPORT` group, or a channel on which the primary
//! hands it the connections it accepted ([`Balance`]). The port stays open while any worker
//! restarts.

mod accepted;
mod address;
mod balance;
mod handover;
mod per_worker;
mod shared;
mod take;

pub use accepted::Accepted;
pub use address::ListenAddr;
pub use balance::{Balance, ListenOptions};
pub use handover::HandedListener;
pub(crate) use shared::SharedListeners;
pub use take::Listener;
pub(crate) use take::{keep_listeners_from_children, take_listener};

pub use clusterfy_core::env::{ENV_LISTEN_FDNAMES, ENV_LISTEN_FDS, ENV_LISTEN_PID};
