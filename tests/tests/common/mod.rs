//! The harness of the end-to-end tests: the helper worker program, a primary with short
//! timeouts, and waiting for events with a deadline.

// Each test binary uses a different part of this module.
#![allow(dead_code, unused_macros, unused_imports)]

use std::ffi::OsString;
use std::time::Duration;

use clusterfy::storage::{RedisMirror, SledStorage};
use clusterfy::transport::{StdioTransport, UdsTransport};
use clusterfy::{
    ErrorKind, Primary, PrimaryBuilder,
    command::Origin,
    events::{Event, EventStream, WorkerRef},
    primary::{Program, WorkerInfo, WorkerOptions},
};
use clusterfy_tests::{Note, PrimaryEcho, Scenario};
use futures::StreamExt;
use tokio::sync::mpsc;

/// Bound of every single wait in these tests: far above what a healthy run needs, so that only a
/// real hang trips it.
pub(crate) const WAIT: Duration = Duration::from_secs(15);

/// The `test-worker` binary playing `scenario`.
pub(crate) fn test_worker_program(scenario: Scenario) -> Program {
    Program::new(env!("CARGO_BIN_EXE_test-worker"), [scenario.as_str()])
}

/// Options that run `test-worker` with `scenario`.
pub(crate) fn options(scenario: Scenario) -> WorkerOptions {
    WorkerOptions::default().program(test_worker_program(scenario))
}

/// Path of the `test-worker` binary.
pub(crate) fn test_worker_path() -> OsString {
    OsString::from(env!("CARGO_BIN_EXE_test-worker"))
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A primary builder with short timeouts (ready 20 s, requests 5 s) and a [`PrimaryEcho`]
/// handler answering `"<text> from <sender's name>"`.
/// The transports every end-to-end scenario runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransportKind {
    Uds,
    Stdio,
}

tokio::task_local! {
    /// The transport of the running scenario, set by [`over_transports!`].
    static TRANSPORT: TransportKind;
}

/// Runs `scenario` with [`primary_builder`] choosing `kind`.
pub(crate) async fn with_transport<F: std::future::Future>(kind: TransportKind, scenario: F) -> F::Output {
    TRANSPORT.scope(kind, scenario).await
}

/// Turns each named `async fn` scenario into one test per transport: `uds::name`, `stdio::name`.
macro_rules! over_transports {
    ($($scenario:ident),* $(,)?) => {
        mod uds {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    crate::common::with_transport(crate::common::TransportKind::Uds, super::$scenario()).await
                }
            )*
        }
        mod stdio {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    crate::common::with_transport(crate::common::TransportKind::Stdio, super::$scenario()).await
                }
            )*
        }
    };
}
pub(crate) use over_transports;

/// The storage backends the storage scenarios also run on (memory is the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StorageKind {
    Sled,
    /// A mirror to the Redis server at this URL.
    Redis(String),
}

tokio::task_local! {
    /// The storage of the running scenario, set by [`over_durable_storages!`].
    static STORAGE: StorageKind;
}

/// Runs `scenario` with [`start_cluster`] using `kind`.
pub(crate) async fn with_storage<F: std::future::Future>(kind: StorageKind, scenario: F) -> F::Output {
    STORAGE.scope(kind, scenario).await
}

/// One `redis-server` for every Redis scenario of a test binary; `None` when it is skipped.
pub(crate) fn shared_redis_url(test: &str) -> Option<String> {
    static SERVER: std::sync::OnceLock<Option<clusterfy_test_support::redis_server::RedisServer>> =
        std::sync::OnceLock::new();
    SERVER
        .get_or_init(|| clusterfy_test_support::redis_server::RedisServer::start_or_skip(test))
        .as_ref()
        .map(|s| s.url().to_owned())
}

/// Turns each named `async fn` scenario into one test per durable backend: `sled::name`,
/// `redis::name` (over Unix sockets).
macro_rules! over_durable_storages {
    ($($scenario:ident),* $(,)?) => {
        mod sled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    crate::common::with_storage(crate::common::StorageKind::Sled, super::$scenario()).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let Some(url) = crate::common::shared_redis_url(stringify!($scenario)) else { return };
                    crate::common::with_storage(crate::common::StorageKind::Redis(url), super::$scenario()).await
                }
            )*
        }
    };
}
pub(crate) use over_durable_storages;

/// `builder` with the scenario's storage backend, each run on fresh, empty data.
async fn with_scenario_storage(builder: PrimaryBuilder) -> PrimaryBuilder {
    static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = format!("{}-{}", std::process::id(), RUN.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
    match STORAGE.try_with(Clone::clone) {
        Err(_) => builder,
        Ok(StorageKind::Sled) => {
            // Cargo's scratch directory for integration tests: left behind is fine, it is in target/.
            let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sled-{unique}"));
            builder.storage(SledStorage::open(&dir).await.expect("open a sled directory"))
        }
        Ok(StorageKind::Redis(url)) => {
            let mirror = RedisMirror::builder(url).key_prefix(format!("e2e-{unique}")).connect().await;
            builder.storage(mirror.expect("connect the Redis mirror"))
        }
    }
}

/// A primary on the scenario's transport (Unix sockets outside [`over_transports!`]).
pub(crate) fn primary_builder() -> PrimaryBuilder {
    init_tracing();
    let builder = match TRANSPORT.try_with(|kind| *kind).unwrap_or(TransportKind::Uds) {
        TransportKind::Uds => Primary::builder().transport(UdsTransport::new()),
        TransportKind::Stdio => Primary::builder().transport(StdioTransport::new()),
    };
    builder
        .ready_timeout(Duration::from_secs(20))
        .request_timeout(Duration::from_secs(5))
        .storage_operation::<clusterfy_tests::TopScores>()
        .command(|echo: PrimaryEcho, ctx| async move {
            let from = match ctx.origin() {
                Origin::Primary => "the primary".to_owned(),
                Origin::Worker { name, .. } => name.clone(),
                other => panic!("an origin this test does not know: {other:?}"),
            };
            Ok(format!("{} from {from}", echo.text))
        })
}

/// Adds a [`Note`] handler to `builder` that forwards every note's sender and text to the
/// returned receiver.
pub(crate) fn with_notes(
    builder: PrimaryBuilder,
) -> (PrimaryBuilder, mpsc::UnboundedReceiver<(String, String)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let builder = builder.command(move |note: Note, ctx| {
        let tx = tx.clone();
        async move {
            let from = match ctx.origin() {
                Origin::Primary => "the primary".to_owned(),
                Origin::Worker { name, .. } => name.clone(),
                other => panic!("an origin this test does not know: {other:?}"),
            };
            let _ = tx.send((from, note.text));
            Ok(())
        }
    });
    (builder, rx)
}

/// Builds a primary (see [`primary_builder`]), forks a [`Scenario::Normal`] worker per name
/// and waits until all are ready.
pub(crate) async fn start_cluster(names: &[&str]) -> Primary {
    let primary = with_scenario_storage(primary_builder()).await.build().await.expect("building the primary");
    for name in names {
        primary.fork(name, options(Scenario::Normal)).await.expect("forking a worker");
    }
    bounded("ready()", primary.ready()).await.expect("every worker gets ready");
    primary
}

/// `future`, failing the test if it takes longer than [`WAIT`].
pub(crate) async fn bounded<F: std::future::Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(WAIT, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not finish within {WAIT:?}"),
    }
}

/// Reads events until one matches `predicate`, for at most `within`; returns every event read,
/// the matching one last. Fails the test on timeout, on the end of the stream, and on a
/// [`Event::Lagged`] the predicate does not accept (the awaited event may be among the missed).
pub(crate) async fn events_until(
    events: &mut EventStream,
    within: Duration,
    what: &str,
    mut predicate: impl FnMut(&Event) -> bool,
) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Err(_) => panic!("no event {what} within {within:?}; events seen meanwhile: {seen:#?}"),
            Ok(None) => panic!("the event stream ended before an event {what}; events seen: {seen:#?}"),
            Ok(Some(event)) => {
                let hit = predicate(&event);
                if !hit && matches!(event, Event::Lagged { .. }) {
                    panic!("the event stream lagged while waiting for an event {what}: {event:?}");
                }
                seen.push(event);
                if hit {
                    return seen;
                }
            }
        }
    }
}

/// The next event matching `predicate` within `within` (see [`events_until`]).
pub(crate) async fn next_event_matching(
    events: &mut EventStream,
    within: Duration,
    what: &str,
    predicate: impl FnMut(&Event) -> bool,
) -> Event {
    let mut seen = events_until(events, within, what, predicate).await;
    seen.pop().expect("events_until returns the matching event")
}

/// Whether `event` concerns the worker named `name`.
pub(crate) fn is_about(event: &Event, name: &str) -> bool {
    let worker: Option<&WorkerRef> = match event {
        Event::Forked { worker, .. }
        | Event::Online { worker }
        | Event::Ready { worker }
        | Event::Status { worker, .. }
        | Event::Disconnect { worker }
        | Event::Exit { worker, .. }
        | Event::Revived { worker, .. }
        | Event::GaveUp { worker, .. }
        | Event::Unresponsive { worker, .. }
        | Event::MemoryLimit { worker, .. }
        | Event::ReloadFailed { worker, .. } => Some(worker),
        Event::Error { worker, .. } => worker.as_ref(),
        _ => None,
    };
    worker.is_some_and(|w| w.name == name)
}

/// Whether `event` is an [`Event::Error`] of `kind` about the worker named `name`.
pub(crate) fn is_error_of(event: &Event, name: &str, kind: ErrorKind) -> bool {
    matches!(event, Event::Error { error, .. } if error.kind() == kind) && is_about(event, name)
}

/// The primary's record of the worker named `name`.
pub(crate) fn info(primary: &Primary, name: &str) -> WorkerInfo {
    primary
        .workers()
        .into_iter()
        .find(|w| w.name == name)
        .unwrap_or_else(|| panic!("no worker {name:?} in {:?}", primary.workers()))
}

/// The process id of the running worker named `name`.
pub(crate) fn pid_of(primary: &Primary, name: &str) -> nix::unistd::Pid {
    let pid = info(primary, name).pid.unwrap_or_else(|| panic!("worker {name:?} has no running process"));
    nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pids fit in i32"))
}

/// Whether process `pid` still runs (exists and is not a zombie waiting for a reaper).
pub(crate) fn process_is_running(pid: nix::unistd::Pid) -> bool {
    if nix::sys::signal::kill(pid, None).is_err() {
        return false;
    }
    // Orphans are re-parented to pid 1, which in a container may never reap them: a zombie
    // has finished running.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain spaces.
        Ok(stat) => stat.rsplit_once(')').is_none_or(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Entries named `clusterfy*` in the directories where a primary could leave files: the temp
/// dir and `$XDG_RUNTIME_DIR`.
pub(crate) fn clusterfy_entries() -> Vec<std::path::PathBuf> {
    let mut dirs = vec![std::env::temp_dir()];
    dirs.extend(std::env::var_os("XDG_RUNTIME_DIR").map(std::path::PathBuf::from));
    dirs.iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("clusterfy"))
        .map(|entry| entry.path())
        .collect()
}

/// Shuts the cluster down and checks every worker that was running exited by itself with code 0.
pub(crate) async fn shut_down_cleanly(primary: &Primary) {
    let running: Vec<String> =
        primary.workers().into_iter().filter(|w| w.is_running()).map(|w| w.name).collect();
    let outcomes = bounded("shutdown()", primary.shutdown(Duration::from_secs(5))).await.expect("shutdown");
    for (worker, outcome) in outcomes.into_iter().filter(|(w, _)| running.contains(&w.name)) {
        assert_eq!(
            outcome,
            clusterfy::primary::ShutdownOutcome::Exited(clusterfy::events::ExitReason::Code(0)),
            "{worker} should exit cleanly on shutdown"
        );
    }
}

/// Resident memory of this process (the primary), in bytes.
pub(crate) fn own_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}
