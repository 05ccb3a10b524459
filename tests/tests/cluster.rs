//! Cluster mode with real processes and real sockets: workers sharing a listening port (each on
//! a socket of its own in the port's `SO_REUSEPORT` group, by default), balance, revival
//! and rolling reload without a refused connection or a failed request, a failing new version,
//! the stop ladder, the memory limit and hung workers.
//!
//! The HTTP workers are the `http_cluster` example itself (built from its source as this crate's
//! binary `http-cluster-example`): the primary here is this test process, which forks it as its
//! workers.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use clusterfy::{
    Primary,
    events::{Event, ExitReason, GiveUpCause},
    listen::{Balance, ListenAddr, ListenOptions},
    primary::{
        Heartbeat, Program, ReloadOptions, RestartPolicy, ShutdownOutcome, WorkerOptions, WorkerState,
    },
    value,
};
use clusterfy_test_support::http_load::{self, LoadReport};
use clusterfy_tests::{API_ANSWER, ENV_GROW_BYTES, LISTENFD_ANSWER, READY_LINE, Scenario};
use common::{WAIT, bounded, is_about, next_event_matching, options, pid_of, primary_builder, with_notes};
use nix::sys::signal::{Signal, kill};
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

/// The `http_cluster` example, built from its source as this crate's binary.
fn http_cluster_example() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_http-cluster-example"))
}

/// Revives at once, as often as needed within these tests.
fn revive() -> RestartPolicy {
    RestartPolicy::new(10, Duration::from_secs(60))
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
}

fn http_worker(program: Program) -> WorkerOptions {
    WorkerOptions::default().program(program).restart_policy(revive())
}

/// A primary sharing `127.0.0.1:<free port>` as "http", with `workers` example workers, ready;
/// and the URL to load.
async fn http_cluster(workers: usize, program: Program) -> (Primary, String) {
    let primary = primary_builder()
        .listen("http", "127.0.0.1:0")
        .initial_storage(value!({ "hits": 0 }))
        .handle_signals(false)
        .build()
        .await
        .expect("primary with a shared listener");
    for n in 1..=workers {
        primary.fork(&format!("http-{n}"), http_worker(program.clone())).await.expect("fork");
    }
    bounded("ready", primary.ready()).await.expect("ready");
    let Some(ListenAddr::Tcp(addr)) = primary.listener_addr("http") else { panic!("a TCP listener") };
    (primary, format!("http://{addr}/"))
}

/// Load on `url` until the returned sender says stop (or 200,000 requests).
fn start_load(url: &str, connections: usize) -> (watch::Sender<bool>, tokio::task::JoinHandle<LoadReport>) {
    let (stop, stopped) = watch::channel(false);
    let url = url.to_owned();
    (stop, tokio::spawn(async move { http_load::run(&url, connections, 200_000, stopped).await }))
}

async fn stop_load(stop: watch::Sender<bool>, load: tokio::task::JoinHandle<LoadReport>) -> LoadReport {
    let _ = stop.send(true);
    bounded("the load to stop", load).await.expect("load task")
}

/// Waits until the load answered at least `n` requests more than it had (by polling the hit
/// counter in the shared storage, which every answer increments).
async fn wait_for_hits(primary: &Primary, more: u64) {
    let start: u64 = primary.storage().retrieve("hits").await.expect("hits").unwrap_or(0);
    bounded("requests to be answered", async {
        loop {
            let now: u64 = primary.storage().retrieve("hits").await.expect("hits").unwrap_or(0);
            if now >= start + more {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

fn assert_clean(report: &LoadReport, what: &str) {
    assert!(report.ok > 0, "{what}: no request was answered: {report:?}");
    assert_eq!(
        (report.failed, report.connect_errors),
        (0, 0),
        "{what}: {} failed and {} connection errors among {} answered; first errors: {:?}",
        report.failed,
        report.connect_errors,
        report.ok,
        report.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_serves_real_http_requests_from_several_workers() {
    let mut child = tokio::process::Command::new(http_cluster_example())
        .args(["--workers", "3", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the example");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let url = bounded("the example to listen", async {
        loop {
            let line = lines.next_line().await.expect("stdout").expect("the example printed its address");
            if let Some(rest) = line.strip_prefix("listening on ") {
                return rest.split_whitespace().next().expect("a URL").to_owned();
            }
        }
    })
    .await;
    let (stop, stopped) = watch::channel(false);
    // A new connection per request: keep-alive connections opened at once may all land on the
    // first worker that accepts, as with any shared listening socket.
    let report = http_load::run_closing(&url, 8, 600, stopped).await;
    drop(stop);
    assert_clean(&report, "steady load");
    assert_eq!(report.ok, 600);
    assert!(report.by_server.len() >= 2, "requests reached only {:?}", report.by_server);
    kill(nix::unistd::Pid::from_raw(child.id().expect("pid") as i32), Signal::SIGINT).expect("SIGINT");
    let status = bounded("the example to shut down", child.wait()).await.expect("wait");
    assert_eq!(status.code(), Some(130), "a graceful stop by SIGINT exits with 128 + 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_revived_and_the_port_never_refuses_a_connection() {
    let (primary, url) = http_cluster(2, Program::new(http_cluster_example(), Vec::<String>::new())).await;
    let mut events = primary.events();
    let (stop, load) = start_load(&url, 8);
    wait_for_hits(&primary, 100).await;
    kill(pid_of(&primary, "http-1"), Signal::SIGKILL).expect("SIGKILL");
    next_event_matching(&mut events, WAIT, "http-1 revived and ready", {
        let mut revived = false;
        move |e| {
            revived |= matches!(e, Event::Revived { .. }) && is_about(e, "http-1");
            revived && matches!(e, Event::Ready { .. }) && is_about(e, "http-1")
        }
    })
    .await;
    wait_for_hits(&primary, 100).await;
    let report = stop_load(stop, load).await;
    // Requests in flight on the killed worker's connections die with it; a refused connection
    // would mean the port closed.
    assert_eq!(report.connect_errors, 0, "connections refused while a worker restarted: {:?}", report.errors);
    assert!(report.ok > 200, "{report:?}");
    primary.shutdown(Duration::from_secs(5)).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_opened_at_once_are_spread_over_every_worker() {
    let (primary, url) = http_cluster(2, Program::new(http_cluster_example(), Vec::<String>::new())).await;
    let (_stop, stopped) = watch::channel(false);
    let report = bounded("the load", http_load::run(&url, 32, 3_000, stopped)).await;
    assert_clean(&report, "32 keep-alive connections");
    // By hash the busiest of 2 workers gets more than 90% of 32 connections about once in 10^6
    // runs; one shared socket gave one worker all of them in 3 of 7 runs.
    let busiest = report.by_server.values().copied().max().unwrap_or(0);
    assert!(
        report.by_server.len() == 2 && busiest * 10 <= report.ok * 9,
        "requests per worker: {:?}",
        report.by_server
    );
    primary.shutdown(Duration::from_secs(5)).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_for_good_is_handed_no_more_connections() {
    let (primary, url) = http_cluster(2, Program::new(http_cluster_example(), Vec::<String>::new())).await;
    let outcome = primary.shutdown_worker("http-2", Duration::from_secs(5)).await.expect("stop http-2");
    assert!(matches!(outcome, ShutdownOutcome::Exited(_)), "{outcome:?}");
    // Its socket closed with it: were it still in the port's group, about half of these new
    // connections would wait for it forever.
    let (_stop, stopped) = watch::channel(false);
    let report = bounded("the load", http_load::run_closing(&url, 4, 100, stopped)).await;
    assert_clean(&report, "new connections after a worker stopped");
    assert_eq!(report.by_server.keys().collect::<Vec<_>>(), ["http-1"], "{report:?}");
    primary.shutdown(Duration::from_secs(5)).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_reload_under_load_fails_no_request() {
    let (primary, url) = http_cluster(3, Program::new(http_cluster_example(), Vec::<String>::new())).await;
    let before: Vec<_> = primary.workers().into_iter().map(|w| (w.id, w.pid)).collect();
    let mut events = primary.events();
    let (stop, load) = start_load(&url, 16);
    wait_for_hits(&primary, 200).await;
    let replaced = bounded("the reload", primary.reload(ReloadOptions::new())).await.expect("reload");
    wait_for_hits(&primary, 200).await;
    let report = stop_load(stop, load).await;
    assert_clean(&report, "load during a full reload");
    assert_eq!(replaced.len(), 3, "every worker replaced: {replaced:?}");
    let after = primary.workers();
    assert_eq!(after.len(), 3, "old records are gone, one per name: {after:?}");
    for (old, new) in &replaced {
        assert_eq!(old.name, new.name);
        assert!(after.iter().any(|w| w.id == new.id && w.state == WorkerState::Ready), "{new} serves");
        assert!(!before.iter().any(|(id, _)| *id == new.id));
    }
    let mut replacements = 0;
    while replacements < 3 {
        if let Event::Replaced { .. } =
            next_event_matching(&mut events, WAIT, "Replaced", |e| matches!(e, Event::Replaced { .. })).await
        {
            replacements += 1;
        }
    }
    primary.shutdown(Duration::from_secs(5)).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_scaled_up_and_down_under_load_fails_no_request() {
    let primary = primary_builder()
        .listen("http", "127.0.0.1:0")
        .initial_storage(value!({ "hits": 0 }))
        .handle_signals(false)
        .build()
        .await
        .expect("primary with a listener");
    let program = Program::new(http_cluster_example(), Vec::<String>::new());
    primary.fork_group("http", 2, http_worker(program)).await.expect("a group of 2");
    bounded("ready", primary.ready()).await.expect("ready");
    let Some(ListenAddr::Tcp(addr)) = primary.listener_addr("http") else { panic!("a TCP listener") };
    let names =
        |workers: &[clusterfy::events::WorkerRef]| workers.iter().map(|w| w.name.clone()).collect::<Vec<_>>();
    let (stop, load) = start_load(&format!("http://{addr}/"), 16);
    wait_for_hits(&primary, 100).await;
    let up = bounded("scaling up", primary.scale("http", 4)).await.expect("scale to 4");
    assert_eq!(names(&up.started), ["http-3", "http-4"]);
    bounded("ready", primary.ready()).await.expect("ready");
    wait_for_hits(&primary, 100).await;
    let down = bounded("scaling down", primary.scale("http", 1)).await.expect("scale to 1");
    let stopped: Vec<_> = down.stopped.iter().map(|(w, _)| w.name.clone()).collect();
    assert_eq!(stopped, ["http-4", "http-3", "http-2"], "the newest stop first");
    wait_for_hits(&primary, 100).await;
    let report = stop_load(stop, load).await;
    assert_clean(&report, "load while the group went from 2 to 4 to 1 workers");
    let left: Vec<_> = primary.workers().into_iter().map(|w| (w.name, w.group)).collect();
    assert_eq!(left, [("http-1".to_owned(), Some("http".to_owned()))]);
    let zero = primary.scale("http", 0).await.expect_err("0 workers");
    assert_eq!(zero.kind(), clusterfy::ErrorKind::InvalidInput, "{zero}");
    let unknown = primary.scale("htp", 2).await.expect_err("no such group");
    assert!(unknown.message().contains("[http]"), "names the groups: {unknown}");
    primary.shutdown(Duration::from_secs(5)).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_that_cannot_start_stops_the_rollout_and_the_old_workers_keep_serving() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broken = dir.path().join("broken");
    // The "deployed" program: the example, until the flag file says the new version is broken:
    // then it connects, and fails before it is ready (as a release that cannot open its port or
    // its database would).
    let program = Program::new(
        "/bin/sh",
        [
            "-c".into(),
            r#"if [ -e "$1" ]; then exec "$2" connect-then-crash; fi; exec "$0""#.into(),
            http_cluster_example().into_os_string(),
            broken.clone().into_os_string(),
            env!("CARGO_BIN_EXE_test-worker").into(),
        ],
    );
    let (primary, url) = http_cluster(2, program).await;
    let before: Vec<_> = primary.workers().into_iter().map(|w| w.id).collect();
    let mut events = primary.events();
    std::fs::write(&broken, b"").expect("break the next version");
    let (stop, load) = start_load(&url, 8);
    let err =
        bounded("the reload", primary.reload(ReloadOptions::new())).await.expect_err("the rollout stops");
    assert!(err.message().contains("old one keeps serving"), "{err}");
    next_event_matching(&mut events, WAIT, "ReloadFailed", |e| matches!(e, Event::ReloadFailed { .. })).await;
    wait_for_hits(&primary, 100).await;
    let report = stop_load(stop, load).await;
    assert_clean(&report, "load during a failed reload");
    let after = primary.workers();
    assert_eq!(after.iter().map(|w| w.id).collect::<Vec<_>>(), before, "the old workers stay: {after:?}");
    assert!(after.iter().all(|w| w.state == WorkerState::Ready), "{after:?}");
    primary.shutdown(Duration::from_secs(5)).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stop_ladder_asks_then_signals_then_kills() {
    let (builder, mut notes) = with_notes(primary_builder());
    let primary = builder
        .kill_timeout(Duration::from_millis(500))
        .handle_signals(false)
        .build()
        .await
        .expect("primary");
    primary.fork("polite", options(Scenario::Normal)).await.expect("fork");
    primary.fork("deaf", options(Scenario::IgnoreRequest)).await.expect("fork");
    primary.fork("stubborn", options(Scenario::IgnoreShutdown)).await.expect("fork");
    bounded("ready", primary.ready()).await.expect("ready");
    let grace = Duration::from_millis(300);
    let polite = primary.shutdown_worker("polite", grace).await.expect("polite");
    assert_eq!(polite, ShutdownOutcome::Exited(ExitReason::Code(0)));
    let deaf = primary.shutdown_worker("deaf", grace).await.expect("deaf");
    assert_eq!(deaf, ShutdownOutcome::Terminated(ExitReason::Signal(clusterfy::Signal::TERM)));
    let stubborn = primary.shutdown_worker("stubborn", grace).await.expect("stubborn");
    assert_eq!(stubborn, ShutdownOutcome::Killed);
    // It trapped the stop signal (and told us) before SIGKILL came.
    let note = bounded("the trapped SIGTERM's note", notes.recv()).await.expect("a note");
    assert_eq!(note, ("stubborn".to_owned(), "sigterm".to_owned()));
}

/// A primary that samples its workers every 50 ms.
async fn sampling_primary() -> Primary {
    let builder = primary_builder().sample_interval(Duration::from_millis(50)).handle_signals(false);
    builder.build().await.expect("primary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_over_its_memory_limit_is_replaced_by_a_new_one_first() {
    let primary = sampling_primary().await;
    let limit = 48 << 20;
    let mut events = primary.events();
    let grower = options(Scenario::Grow).env(ENV_GROW_BYTES, (96u64 << 20).to_string()).max_memory(limit);
    let old = primary.fork("grower", grower).await.expect("fork");
    let over =
        next_event_matching(&mut events, WAIT, "MemoryLimit", |e| matches!(e, Event::MemoryLimit { .. }))
            .await;
    let Event::MemoryLimit { worker, rss, limit: seen_limit } = over else { unreachable!() };
    assert_eq!(worker, old);
    assert_eq!(seen_limit, limit);
    assert!(rss > limit, "rss {rss} over {limit}");
    let replaced =
        next_event_matching(&mut events, WAIT, "Replaced", |e| matches!(e, Event::Replaced { .. })).await;
    let Event::Replaced { old: gone, new } = replaced else { unreachable!() };
    assert_eq!(gone, old);
    assert_eq!(new.name, "grower");
    assert_ne!(new.id, old.id);
    // The new process was ready before the old one was stopped: its exit comes after.
    next_event_matching(
        &mut events,
        WAIT,
        "the old grower's exit",
        |e| matches!(e, Event::Exit { worker, .. } if *worker == old),
    )
    .await;
    let stats = primary.statistics();
    let sampled = stats.workers.iter().find(|w| w.id == new.id).expect("the replacement is listed");
    assert!(sampled.pid.is_some(), "{sampled:?}");
    primary.shutdown(Duration::from_secs(2)).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_limit_below_what_the_program_needs_backs_off_counts_restarts_and_gives_up() {
    let primary = sampling_primary().await;
    let limit = 48 << 20;
    let mut events = primary.events();
    // Every process of it needs 96 MiB from the start: no replacement can help.
    let policy = RestartPolicy::new(2, Duration::from_secs(60))
        .backoff(Duration::from_millis(20), Duration::from_millis(100));
    let greedy = options(Scenario::Grow)
        .env(ENV_GROW_BYTES, (96u64 << 20).to_string())
        .max_memory(limit)
        .restart_policy(policy)
        .memory_limit_grace(Duration::from_millis(300));
    primary.fork("greedy", greedy).await.expect("fork");
    let seen =
        common::events_until(&mut events, WAIT, "the give-up", |e| matches!(e, Event::GaveUp { .. })).await;
    let replacements = seen.iter().filter(|e| matches!(e, Event::Replaced { .. })).count();
    let over = seen.iter().filter(|e| matches!(e, Event::MemoryLimit { .. })).count();
    assert_eq!(replacements, 2, "as many replacements as the policy allows: {seen:#?}");
    assert_eq!(over, 3, "the third time over the limit gives up: {seen:#?}");
    let Some(Event::GaveUp { worker: last, restarts, cause }) = seen.last() else {
        unreachable!("ends with GaveUp")
    };
    assert_eq!(*restarts, 2);
    let GiveUpCause::MemoryLimit { rss, limit: seen_limit } = *cause else { panic!("the cause: {cause:?}") };
    assert!(rss > limit && seen_limit == limit, "{cause:?}");
    assert!(cause.to_string().contains("below what the program needs"), "{cause}");
    // The last process is stopped for good, and nothing is forked again.
    next_event_matching(
        &mut events,
        WAIT,
        "the last greedy's exit",
        |e| matches!(e, Event::Exit { worker, .. } if worker == last),
    )
    .await;
    let gave_up = primary.workers().into_iter().find(|w| w.name == "greedy").expect("listed");
    assert_eq!((gave_up.state, gave_up.restarts, gave_up.pid), (WorkerState::GaveUp, 2, None));
    assert_eq!(primary.statistics().total_restarts(), 2, "memory replacements count as restarts");
    primary.shutdown(Duration::from_secs(2)).await.expect("shutdown");
    let after: Vec<Event> = std::iter::from_fn(|| {
        futures::FutureExt::now_or_never(futures::StreamExt::next(&mut events)).flatten()
    })
    .collect();
    assert!(!after.iter().any(|e| matches!(e, Event::Forked { .. })), "no fork after giving up: {after:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_is_found_by_its_heartbeat_and_revived() {
    let primary = primary_builder().handle_signals(false).build().await.expect("primary");
    let mut events = primary.events();
    let heartbeat = Heartbeat::new(Duration::from_millis(100), Duration::from_millis(300));
    let hung = options(Scenario::Hang).heartbeat(Some(heartbeat)).restart_policy(revive());
    primary.fork("hung", hung).await.expect("fork");
    let found =
        next_event_matching(&mut events, WAIT, "Unresponsive", |e| matches!(e, Event::Unresponsive { .. }))
            .await;
    let Event::Unresponsive { waited, .. } = found else { unreachable!() };
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    let exit = next_event_matching(&mut events, WAIT, "Exit", |e| matches!(e, Event::Exit { .. })).await;
    assert!(
        matches!(exit, Event::Exit { reason: ExitReason::Signal(clusterfy::Signal::KILL), .. }),
        "{exit:?}"
    );
    next_event_matching(&mut events, WAIT, "Revived", |e| matches!(e, Event::Revived { .. })).await;
    primary.shutdown(Duration::from_millis(200)).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_show_each_workers_cpu_and_memory() {
    let primary = sampling_primary().await;
    primary.fork("sampled", options(Scenario::Normal)).await.expect("fork");
    bounded("ready", primary.ready()).await.expect("ready");
    // A sample taken right after the fork sees the process before its program ran; a later one
    // sees the running worker.
    let info = bounded("a sample of the running worker", async {
        loop {
            let info = primary.workers().into_iter().next().expect("one worker");
            if info.memory.is_some_and(|m| m > 1 << 20) && info.cpu_percent.is_some() {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let memory = info.memory.expect("memory");
    assert!(memory < 1 << 30, "a test worker's RSS is below 1 GiB: {memory}");
    assert!(info.cpu_percent.is_some_and(|c| (0.0..=200.0).contains(&c)), "{info:?}");
    let table = primary.statistics().table();
    assert!(table.contains("cpu") && table.contains("MiB"), "{table}");
    primary.shutdown(Duration::from_secs(2)).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_activated_primary_hands_its_socket_to_workers_written_for_listenfd() {
    use command_fds::{CommandFdExt, FdMapping};
    use tokio::io::AsyncReadExt;
    // This test plays systemd: it binds the socket and starts the primary with it as descriptor 3.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let mut primary = tokio::process::Command::new(env!("CARGO_BIN_EXE_test-worker"));
    primary
        .arg(Scenario::SocketActivatedPrimary.as_str())
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "http")
        .env_remove("LISTEN_PID")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    primary
        .fd_mappings(vec![FdMapping { parent_fd: std::os::fd::OwnedFd::from(listener), child_fd: 3 }])
        .expect("descriptor 3");
    let mut primary = primary.spawn().expect("start the primary");
    let mut lines = tokio::io::BufReader::new(primary.stdout.take().expect("stdout")).lines();
    bounded("the socket-activated cluster", async {
        while let Some(line) = lines.next_line().await.expect("stdout") {
            if line == READY_LINE {
                return;
            }
        }
        panic!("the primary ended before it was ready");
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("the inherited socket accepts");
    let mut answer = String::new();
    bounded("the worker's answer", stream.read_to_string(&mut answer)).await.expect("read");
    let client = stream.local_addr().expect("local address").to_string();
    assert_eq!(answered(&answer, LISTENFD_ANSWER), ("activated".to_owned(), client));
    primary.start_kill().expect("kill the primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_written_for_listenfd_each_take_their_own_socket_of_a_balanced_port() {
    use tokio::io::AsyncReadExt;
    let primary = primary_builder()
        .listen("http", "127.0.0.1:0")
        .handle_signals(false)
        .build()
        .await
        .expect("primary with a TCP listener");
    for name in ["lfd-a", "lfd-b"] {
        primary.fork(name, options(Scenario::ListenfdWorker)).await.expect("fork");
    }
    bounded("ready", primary.ready()).await.expect("ready");
    let Some(ListenAddr::Tcp(addr)) = primary.listener_addr("http") else { panic!("a TCP listener") };
    let mut answered_by = std::collections::BTreeSet::new();
    // Each new connection is hashed to one worker's socket: both answer within 40 (1 in 2^39).
    for _ in 0..40 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("the port accepts");
        let mut answer = String::new();
        bounded("an answer", stream.read_to_string(&mut answer)).await.expect("read");
        answered_by.insert(answered(&answer, LISTENFD_ANSWER).0);
    }
    assert_eq!(answered_by.into_iter().collect::<Vec<_>>(), ["lfd-a", "lfd-b"]);
    primary.shutdown(Duration::from_secs(2)).await.expect("shutdown");
}

/// The worker's name and the client's address (or `unix`) in an answer line that starts with
/// `prefix`.
fn answered(answer: &str, prefix: &str) -> (String, String) {
    let rest = answer.strip_prefix(prefix).unwrap_or_else(|| panic!("not a worker's answer: {answer:?}"));
    let mut words = rest.split_whitespace().map(str::to_owned);
    let (Some(name), Some(peer), None) = (words.next(), words.next(), words.next()) else {
        panic!("not a worker's answer: {answer:?}")
    };
    (name, peer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_hands_unix_socket_connections_to_every_worker_and_removes_the_file_at_shutdown() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("api.sock");
    let primary = primary_builder()
        .listen("api", format!("unix:{}", path.display()))
        .handle_signals(false)
        .build()
        .await
        .expect("primary with a Unix listener");
    assert_eq!(primary.listener_addr("api"), Some(ListenAddr::Unix(path.clone())));
    for name in ["unix-a", "unix-b"] {
        primary.fork(name, options(Scenario::ApiWorker)).await.expect("fork");
    }
    bounded("ready", primary.ready()).await.expect("ready");
    // Handed over round-robin (the default for Unix sockets) once both take the listener.
    let mut answered_by = std::collections::BTreeSet::new();
    bounded("both workers answer", async {
        while answered_by.len() < 2 {
            let mut stream = tokio::net::UnixStream::connect(&path).await.expect("the socket accepts");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.expect("read");
            answered_by.insert(answered(&answer, API_ANSWER).0);
        }
    })
    .await;
    assert_eq!(answered_by.into_iter().collect::<Vec<_>>(), ["unix-a", "unix-b"]);
    primary.shutdown(Duration::from_secs(2)).await.expect("shutdown");
    assert!(!path.exists(), "the socket file the primary created is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_handed_to_a_worker_that_dies_before_taking_them_go_to_another_with_their_peer() {
    use tokio::io::AsyncReadExt;
    let primary = primary_builder()
        .listen_with("api", "127.0.0.1:0", ListenOptions::new().balance(Balance::Handover))
        .handle_signals(false)
        .build()
        .await
        .expect("primary with a handover listener");
    let Some(ListenAddr::Tcp(addr)) = primary.listener_addr("api") else { panic!("a TCP listener") };
    primary.fork("holder", options(Scenario::HoldListener)).await.expect("fork");
    bounded("ready", primary.ready()).await.expect("ready");
    // The holder took the listener before it said it was ready: these go to it, and wait there.
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(tokio::net::TcpStream::connect(addr).await.expect("the port accepts"));
    }
    let holder = pid_of(&primary, "holder");
    kill(holder, Signal::SIGKILL).expect("kill the holder");
    primary.fork("server", options(Scenario::ApiWorker)).await.expect("fork");
    for mut client in clients {
        let mut answer = String::new();
        bounded("an answer from the other worker", client.read_to_string(&mut answer)).await.expect("read");
        let mine = client.local_addr().expect("local address").to_string();
        assert_eq!(answered(&answer, API_ANSWER), ("server".to_owned(), mine), "handed over with its peer");
    }
    primary.shutdown(Duration::from_secs(2)).await.expect("shutdown");
}

/// The example with 2 workers on a free port, listening, its runtime directory a temporary one.
struct RunningExample {
    child: tokio::process::Child,
    /// The client of its control socket, in that runtime directory.
    control: clusterfy::control::ControlClient,
    /// Read on: the example prints to it, and a closed pipe would end it.
    _stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    _runtime_dir: tempfile::TempDir,
}

async fn example_with_control_socket() -> RunningExample {
    let runtime_dir = tempfile::tempdir().expect("temp dir");
    let mut child = tokio::process::Command::new(http_cluster_example())
        .args(["--workers", "2", "--listen", "127.0.0.1:0"])
        .env("XDG_RUNTIME_DIR", runtime_dir.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the example");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    bounded("the example to listen", async {
        while let Some(line) = lines.next_line().await.expect("stdout") {
            if line.starts_with("listening on ") {
                return;
            }
        }
        panic!("the example ended before it listened");
    })
    .await;
    let socket = runtime_dir.path().join("clusterfy").join("http_cluster.sock");
    let control = clusterfy::control::ControlClient::at(socket);
    RunningExample { child, control, _stdout: lines, _runtime_dir: runtime_dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigttin_and_sigttou_to_the_example_add_and_remove_a_worker_of_its_group() {
    // Bound whole: its stdout and runtime directory must live as long as the example.
    let mut example = example_with_control_socket().await;
    let (child, control) = (&mut example.child, &example.control);
    let pid = nix::unistd::Pid::from_raw(child.id().expect("pid") as i32);
    for (signal, names) in
        [(Signal::SIGTTIN, vec!["http-1", "http-2", "http-3"]), (Signal::SIGTTOU, vec!["http-1", "http-2"])]
    {
        kill(pid, signal).expect("signal");
        bounded("the group to follow the signal", async {
            loop {
                let rows = control.workers().await.expect("workers");
                let now: Vec<&str> = rows.iter().map(|w| w.name.as_str()).collect();
                if now == names
                    && rows.iter().all(|w| w.state == "ready" && w.group.as_deref() == Some("http"))
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }
    kill(pid, Signal::SIGINT).expect("SIGINT");
    bounded("the example to shut down", child.wait()).await.expect("wait");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_to_the_example_reloads_every_worker_as_the_control_socket_shows() {
    // Bound whole: its stdout and runtime directory must live as long as the example.
    let mut example = example_with_control_socket().await;
    let (child, control) = (&mut example.child, &example.control);
    let before: Vec<u64> = control.workers().await.expect("workers").iter().map(|w| w.id).collect();
    assert_eq!(before.len(), 2);
    kill(nix::unistd::Pid::from_raw(child.id().expect("pid") as i32), Signal::SIGHUP).expect("SIGHUP");
    bounded("every worker replaced", async {
        loop {
            let rows = control.workers().await.expect("workers");
            let replaced =
                rows.len() == 2 && rows.iter().all(|w| !before.contains(&w.id) && w.state == "ready");
            if replaced {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    kill(nix::unistd::Pid::from_raw(child.id().expect("pid") as i32), Signal::SIGINT).expect("SIGINT");
    bounded("the example to shut down", child.wait()).await.expect("wait");
}
