// The README's examples use every backend, so it is the crate's documentation (and its examples
// are compiled as doc tests) when the crate is built with them, as `cargo test --workspace` and
// docs.rs do.
#![cfg_attr(all(feature = "storage-sled", feature = "storage-redis"), doc = include_str!("../../README.md"))]
#![cfg_attr(
    not(all(feature = "storage-sled", feature = "storage-redis")),
    doc = "Run one Rust program as a primary that forks, supervises and talks to named worker processes, \
           with a shared storage. The full guide is the repository's README.md; these docs include it \
           when the crate is built with the features `storage-sled` and `storage-redis` (or `full`)."
)]

pub mod control;
pub mod events;
mod handlers;
mod hardening;
mod link;
pub mod listen;
mod metrics;
pub mod primary;
mod signal;
mod socket_file;
pub mod storage;
pub mod worker;

// The handful of items a program starts with; everything else has its home in a module.
pub use clusterfy_core::{
    Command, Error, ErrorKind, Path, Result, Target, Value, WorkerId, from_value, to_value, value,
};
/// `#[derive(Command)]`: `#[command(name = "...", target = worker, reply = Type)]` (see
/// [`clusterfy_derive`](https://docs.rs/clusterfy-derive) for the keys).
pub use clusterfy_derive::Command;
pub use primary::{Primary, PrimaryBuilder};
pub use signal::Signal;
pub use worker::{Worker, WorkerBuilder};

/// Commands: the naming rule, where one goes and who sent it, and what a broadcast returns. The
/// trait, its derive and [`Target`] are at the crate root.
pub mod command {
    pub use crate::handlers::BroadcastReply;
    pub use clusterfy_core::command::{MAX_COMMAND_NAME_LEN, RESERVED_PREFIX, validate_user_command_name};
    pub use clusterfy_core::{Origin, WorkerSelector};
}

/// The environment variables a primary sets for its workers (besides those of
/// [`transport`] and [`listen`]).
pub mod env {
    pub use clusterfy_core::env::{ENV_MAX_FRAME_LEN, ENV_NON_DUMPABLE, ENV_PARENT_PID, ENV_WORKER_NAME};
}

/// What `#[derive(Command)]` expands to refers to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use clusterfy_core::command::command_name_problem;
}

/// Transports: how workers talk to the primary.
pub mod transport {
    pub use clusterfy_core::transport::{ENV_TOKEN, ENV_TRANSPORT, ENV_WORKER_ID};
    pub use clusterfy_core::{Authentication, Connection, Rendezvous, SpawnInfo, Transport, WorkerEnv};
    #[cfg(feature = "transport-stdio")]
    pub use clusterfy_transport_stdio::StdioTransport;
    #[cfg(feature = "transport-uds")]
    pub use clusterfy_transport_uds::{ENV_UDS_FD, UdsTransport};
}

/// Which side of the cluster this process is. Exhaustive on purpose: a cluster has two sides, and
/// `match role()` in `main` should need no catch-all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Started by hand: the primary.
    Primary,
    /// Started by a primary's `fork`.
    Worker,
}

/// Whether this process is the primary or a worker (the original's
/// `isCurrentProcessPrimary`), judged by the `CLUSTERFY_WORKER_ID` variable a primary sets.
///
/// In a worker that the primary started by re-executing its own program, the first call also
/// arms the parent-death signal it was spawned without (to spawn it faster), so a worker that is told its role
/// first thing in `main`, as the README's example is, dies with its primary from then on.
pub fn role() -> Role {
    if std::env::var_os(clusterfy_core::transport::ENV_WORKER_ID).is_some() {
        static ARMED: std::sync::Once = std::sync::Once::new();
        ARMED.call_once(die_with_the_primary);
        Role::Worker
    } else {
        Role::Primary
    }
}

/// For a worker spawned without a parent-death signal (the primary re-executed its own program
/// and passed no shared listeners, so it could spawn it without running code between fork and
/// exec): asks the kernel for SIGKILL when the primary dies, as every other worker gets before
/// its program starts. If the primary is gone already, this process ends as that signal would
/// have ended it.
fn die_with_the_primary() {
    let Some(parent) = std::env::var(env::ENV_PARENT_PID).ok().and_then(|pid| pid.parse::<u32>().ok()) else {
        return;
    };
    match clusterfy_core::os::die_with_parent_now(parent) {
        Ok(()) => {}
        Err(err) if err.kind() == ErrorKind::Closed => {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
        Err(err) => tracing::warn!(error = %err, "could not arm the parent-death signal"),
    }
}
