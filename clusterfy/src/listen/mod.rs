//! Listening sockets shared by every worker (cluster mode): the primary binds each one once, or
//! takes it from systemd's socket activation, and every worker process inherits it by the same
//! convention (`LISTEN_FDS`, `LISTEN_FDNAMES`, descriptors from 3): the one socket, a socket of
//! the worker's own in the listener's `SO_REUSEPORT` group, or a channel on which the primary
//! hands it the connections it accepted ([`Balance`]). The port stays open while any worker
//! restarts.

mod accepted;
mod address;
mod balance;
mod env;
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

/// Number of inherited listeners, from descriptor 3 on (the socket-activation convention).
pub const ENV_LISTEN_FDS: &str = "LISTEN_FDS";
/// Their names, separated by `:`, in descriptor order.
pub const ENV_LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// The process the descriptors are meant for; the primary leaves it unset for its workers, as
/// `listenfd` allows, because a child's pid is not known before it is started.
pub const ENV_LISTEN_PID: &str = "LISTEN_PID";
