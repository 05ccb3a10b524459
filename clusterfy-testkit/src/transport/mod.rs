//! The transport conformance suite, and [`DuplexReference`], the in-process transport it is
//! checked against.
//!
//! Run it on a transport with one [`transport_conformance!`](crate::transport_conformance) call in
//! a test target declared with `harness = false`; see the [crate docs](crate).
//!
//! # How it runs
//!
//! Each case is a named test (`<transport>::<case>`) that gets a fresh transport from the factory
//! and starts its workers exactly as the Clusterfy primary does: a command with the worker's
//! environment (`CLUSTERFY_WORKER_ID`, `CLUSTERFY_TOKEN`, and `CLUSTERFY_TRANSPORT` set to the
//! transport's name), [`Transport::prepare`], spawn,
//! [`Rendezvous::attach`](clusterfy_core::Rendezvous::attach), [`Rendezvous::accept`](clusterfy_core::Rendezvous::accept),
//! then the worker's `Hello` frame, whose id and token must match. Frames are made by
//! [`clusterfy_core::codec`]. With [`PeerMode::Process`] the worker is the test binary itself,
//! started again with [`ENV_TESTKIT_PEER`] set, so transports that need a real child process
//! (its stdin and stdout, its socket) are tested for real; it connects with
//! [`Transport::connect`] and [`WorkerEnv::from_process`](clusterfy_core::WorkerEnv::from_process)
//! and reports through its exit code, writing nothing to stdout. Every case runs under a
//! watchdog and fails, rather than hangs, after 20 seconds.
//!
//! # Cases
//!
//! Named as the bullets of the `# Contract` of [`Transport`] name them:
//!
//! - `frames_round_trip_both_ways`: frames from empty to 1 MiB reach the worker and come back
//!   unchanged; the worker's own frames arrive.
//! - `order_is_kept`: 5,000 pipelined frames each way arrive in order and intact.
//! - `largest_allowed_frame_passes_and_larger_is_refused`: with a 64 KiB limit, a frame of exactly
//!   64 KiB crosses both ways; one byte more is refused by `encode_frame` (`Protocol`), and a
//!   header announcing it makes the receiving `FrameDecoder` fail (`Protocol`).
//! - `peer_going_away_is_seen_as_closed`: the primary's reads end and its writes fail when the
//!   worker exits or is killed (SIGKILL) during a read; the worker's reads end and its writes
//!   fail when the primary closes the connection.
//! - `workers_stay_isolated`: four workers connect at once; each `Hello` arrives through its own
//!   rendezvous and each worker answers only its own data.
//! - `worker_that_never_connects_times_out`: accepting and reading the first frame of a worker
//!   that never connects, or connects and never says `Hello`, runs into the caller's deadline;
//!   an accept cancelled by a deadline leaves the rendezvous usable (or cleanly failed).
//! - `worker_without_environment_gets_config_error`: [`Transport::connect`] with an empty
//!   environment fails with [`ErrorKind::Config`](clusterfy_core::ErrorKind::Config) naming a
//!   variable a worker is given.
//! - `close_removes_what_prepare_created`: every file-system path `prepare` handed to workers is
//!   gone after [`Transport::close`], which succeeds twice.
//! - `inherited_channel_leaves_no_way_in`: for a transport whose
//!   [`Transport::authentication`] is
//!   [`InheritedChannel`](clusterfy_core::Authentication::InheritedChannel), `prepare` hands the
//!   worker no file-system path and leaves this process no new listening socket (on Linux, where
//!   `/proc` tells); token transports are exempt, with a note.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use clusterfy_core::Transport;
use libtest_mimic::{Arguments, Failed, Trial};

mod cases;
mod duplex;
mod failure;
mod launch;
mod peer;
mod sockets;
mod wire;

pub use sockets::listening_unix_sockets_of_this_process;

pub use duplex::{DuplexReference, ENV_DUPLEX_KEY};

use cases::Case;
use failure::{Context, Failure, Outcome};
use launch::Suite;

/// Environment variable that makes a suite binary act as a worker peer instead of running the
/// cases; its value names what the peer does. Set by the suite on the processes it starts.
pub const ENV_TESTKIT_PEER: &str = "CLUSTERFY_TESTKIT_PEER";

/// A case that has not finished after this long fails.
const WATCHDOG: Duration = Duration::from_secs(20);

/// Where the suite runs the worker side of each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerMode {
    /// In a separate process: the test binary itself, started as the primary starts a worker.
    /// What every real transport needs.
    Process,
    /// In a task of the test's own runtime, calling `connect` on the same transport value, with
    /// no process spawned and no [`Rendezvous::attach`](clusterfy_core::Rendezvous::attach). For
    /// in-process transports such as [`DuplexReference`].
    InProcess,
}

/// The names of the cases, in the order they run.
pub fn case_names() -> impl Iterator<Item = &'static str> {
    cases::CASES.iter().map(|case| case.name)
}

/// The `main` of a transport suite binary; what [`transport_conformance!`](crate::transport_conformance)
/// expands to.
///
/// With [`PeerMode::Process`] and [`ENV_TESTKIT_PEER`] set, runs as a worker peer and exits.
/// Otherwise runs every case (as the test-runner arguments filter them) as a test named
/// `<name>::<case>`, each on a fresh transport from `factory`, and returns the runner's exit code.
pub fn run_suite<T, F>(name: &str, mode: PeerMode, factory: F) -> ExitCode
where
    T: Transport,
    F: Fn() -> T + Send + Sync + 'static,
{
    let factory: Arc<Factory> = Arc::new(move || Arc::new(factory()) as Arc<dyn Transport>);
    if mode == PeerMode::Process
        && let Some(script) = std::env::var_os(ENV_TESTKIT_PEER)
    {
        return peer::process_main(factory(), &script.to_string_lossy());
    }
    let args = Arguments::from_args();
    let trials = cases::CASES
        .iter()
        .map(|case| {
            let factory = Arc::clone(&factory);
            Trial::test(format!("{name}::{}", case.name), move || run_case(case, mode, factory.as_ref()))
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

type Factory = dyn Fn() -> Arc<dyn Transport> + Send + Sync;

/// Runs one case on its own thread and runtime, under the watchdog.
fn run_case(case: &'static Case, mode: PeerMode, factory: &Factory) -> Result<(), Failed> {
    let suite = Arc::new(Suite::new(factory(), mode));
    let (done, finished) = std::sync::mpsc::channel();
    let case_suite = Arc::clone(&suite);
    let thread = std::thread::Builder::new()
        .name(case.name.to_owned())
        .spawn(move || {
            let _ = done.send(run_on_runtime(case, case_suite));
        })
        .map_err(|err| Failed::from(format!("could not start a thread for the case: {err}")))?;
    let outcome = match finished.recv_timeout(WATCHDOG) {
        Ok(outcome) => outcome,
        // The thread is left behind: it may be stuck in a blocking call. Its peers end by themselves.
        Err(RecvTimeoutError::Timeout) => Err(Failure::new(format!(
            "watchdog: the case did not finish within {WATCHDOG:?}; a transport call blocks or hangs"
        ))),
        Err(RecvTimeoutError::Disconnected) => Err(Failure::new(match thread.join() {
            Err(panic) => crate::watchdog::describe_panic(panic.as_ref()),
            Ok(()) => "the case ended without an outcome".to_owned(),
        })),
    };
    outcome.map_err(|failure| Failed::from(format!("{failure}{}", suite.peer_logs())))
}

fn run_on_runtime(case: &Case, suite: Arc<Suite>) -> Outcome {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting a tokio runtime")?;
    let outcome = runtime.block_on((case.run)(Arc::clone(&suite)));
    // Ends the peers' tasks; peer processes were killed when the case dropped them.
    drop(runtime);
    let closed = suite.transport.close().context("closing the transport after the case");
    outcome.and(closed)
}
