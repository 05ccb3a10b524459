//! Spawns every worker process from one thread that lives as long as the primary's process.
//!
//! Linux sends a child its parent-death signal when the *thread* that forked it ends, not the
//! process. Forking from a runtime thread would kill workers by surprise whenever that thread
//! goes (tokio lets idle blocking threads go, a runtime may be dropped while the program goes
//! on), so all forks happen on this thread, which never ends before the process does.

use std::sync::OnceLock;
use std::sync::mpsc;

use clusterfy_core::{Error, ErrorKind, Result};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

struct Job {
    command: Command,
    /// The runtime the child is registered with, so `Child::wait` works on it.
    runtime: tokio::runtime::Handle,
    done: oneshot::Sender<std::io::Result<Child>>,
}

static SPAWNER: OnceLock<std::io::Result<mpsc::Sender<Job>>> = OnceLock::new();

fn start() -> std::io::Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new().name("clusterfy-spawner".to_owned()).spawn(move || {
        // Ends only with the process: the sender lives in a static.
        for job in rx {
            let _entered = job.runtime.enter();
            let mut command = job.command;
            // A panic here would end the thread, and with it every worker it forked.
            let spawned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| command.spawn()))
                .unwrap_or_else(|_| Err(std::io::Error::other("spawning the worker process panicked")));
            // Dropped here, after the fork: descriptors the command held for the child (its
            // end of the channel) close in the primary, so the primary sees the child's exit.
            drop(command);
            let _ = job.done.send(spawned);
        }
    })?;
    Ok(tx)
}

fn on_main_thread() -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        nix::unistd::gettid() == nix::unistd::getpid()
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        false
    }
}

/// Spawns `command` on the spawner thread and registers the child with the current runtime.
/// The command is consumed: whatever it held for the child is closed in this process afterwards.
pub(super) async fn spawn(command: Command) -> Result<std::io::Result<Child>> {
    let unavailable = |why: String| {
        Error::new(ErrorKind::Io, format!("the thread that spawns worker processes is unavailable: {why}"))
    };
    if on_main_thread() {
        // The main thread ends only with the process, so a child it forks keeps its
        // parent-death signal for as long as the primary runs: no hop to the spawner thread
        // (two cross-thread wake-ups per spawn) and no spawner thread at all.
        let mut command = command;
        let spawned = command.spawn();
        drop(command);
        return Ok(spawned);
    }
    let sender = match SPAWNER.get_or_init(start) {
        Ok(sender) => sender,
        Err(err) => return Err(unavailable(err.to_string())),
    };
    let (done, spawned) = oneshot::channel();
    let job = Job { command, runtime: tokio::runtime::Handle::current(), done };
    sender.send(job).map_err(|_| unavailable("it has stopped".to_owned()))?;
    spawned.await.map_err(|_| unavailable("it dropped the request".to_owned()))
}
