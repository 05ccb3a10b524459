//! Runs one case: its own thread and runtime, under a watchdog.

use std::sync::Arc;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use super::cases::{CASES, Case};
use super::check::{Ctx, Failure, Outcome, tell};
use super::{ErasedHarness, StorageHarness};

/// A case that has not finished after this long fails.
const WATCHDOG: Duration = Duration::from_secs(30);

/// The model test runs dozens of sequences and may shrink a failure, so it gets longer.
const MODEL_WATCHDOG: Duration = Duration::from_secs(60);

/// How long the runtime may take to stop the backend's tasks after a case.
const SHUTDOWN: Duration = Duration::from_secs(5);

/// Runs the case `name` of the storage suite on backends opened by `harness`, and panics (fails
/// the test) with what went wrong unless it passes; what
/// [`storage_conformance!`](crate::storage_conformance) calls in each generated test.
///
/// The case runs on a thread of its own with a fresh tokio multi-thread runtime and fails if it
/// has not finished within its watchdog's time. A case the harness [skips](super::Skip) passes
/// after saying so on stderr, except when the `CI` environment variable is set.
///
/// # Panics
///
/// If the case fails, is skipped under `CI`, or `name` is not one of [`case_names`](super::case_names).
pub fn run_case<H: StorageHarness>(name: &str, harness: H) {
    let Some(case) = CASES.iter().find(|case| case.name == name) else {
        let names: Vec<&str> = CASES.iter().map(|case| case.name).collect();
        panic!("`{name}` is not a case of the storage suite; the cases are {names:?}");
    };
    // libtest names the thread of a test after it (`<backend>::<case>`); a single-threaded run
    // may not, and the case name alone is what is left.
    let test = match std::thread::current().name() {
        Some(thread) if thread.ends_with(name) => thread.to_owned(),
        _ => name.to_owned(),
    };
    let watchdog = if case.name == "model_matches_btreemap" { MODEL_WATCHDOG } else { WATCHDOG };
    match run_watched(case, Arc::new(harness), &test, watchdog) {
        Ok(()) => {}
        Err(Failure::Skipped(reason)) => {
            tell(&format!("{test}: skipped: {reason}"));
            if std::env::var_os("CI").is_some() {
                panic!("{name} was skipped ({reason}), and CI is set: a CI run must test every case");
            }
        }
        Err(Failure::Failed(message)) => panic!("{name} failed: {message}"),
    }
}

fn run_watched(
    case: &'static Case,
    harness: Arc<dyn ErasedHarness>,
    test: &str,
    watchdog: Duration,
) -> Outcome {
    let (done, finished) = std::sync::mpsc::channel();
    let ctx = Ctx::new(harness, test.to_owned());
    let thread = std::thread::Builder::new()
        .name(test.to_owned())
        .spawn(move || {
            let _ = done.send(run_on_runtime(case, ctx));
        })
        .map_err(|err| Failure::failed(format!("could not start a thread for the case: {err}")))?;
    match finished.recv_timeout(watchdog) {
        Ok(outcome) => outcome,
        // The thread is left behind: it may be stuck in a blocking call of the backend.
        Err(RecvTimeoutError::Timeout) => Err(Failure::failed(format!(
            "watchdog: the case did not finish within {watchdog:?}; a backend call blocks its thread or \
             the backend is far too slow"
        ))),
        Err(RecvTimeoutError::Disconnected) => Err(Failure::failed(match thread.join() {
            Err(panic) => crate::watchdog::describe_panic(panic.as_ref()),
            Ok(()) => "the case ended without an outcome".to_owned(),
        })),
    }
}

fn run_on_runtime(case: &Case, ctx: Ctx) -> Outcome {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .map_err(|err| Failure::failed(format!("starting a tokio runtime: {err}")))?;
    let outcome = runtime.block_on((case.run)(ctx));
    runtime.shutdown_timeout(SHUTDOWN);
    outcome
}
