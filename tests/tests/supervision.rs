//! Supervision of real worker processes: graceful and forced shutdown, revival after crashes and
//! kills, giving up, and no orphans when the primary dies.

mod common;

use std::time::Duration;

use clusterfy::{
    ErrorKind,
    events::{Event, ExitReason, GiveUpCause},
    primary::{RestartPolicy, ShutdownOutcome, WorkerOptions, WorkerState},
    worker::WorkerStatus,
};
use clusterfy_tests::{
    ENV_HOOK_FILE, Echo, ExitGracefully, ExitWith, HOOK_SHUTDOWN_REQUESTED, PIDS_LINE_PREFIX, Scenario,
    WhoAmI, WorkUntilShutdown,
};
use common::{
    WAIT, bounded, clusterfy_entries, events_until, info, is_about, next_event_matching, options, pid_of,
    primary_builder, process_is_running, test_worker_program, with_notes,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;

/// A restart policy that revives at once (10 ms backoff), at most `max_restarts` times a minute.
fn quick_revive(max_restarts: u32) -> WorkerOptions {
    options(Scenario::Normal).restart_policy(
        RestartPolicy::new(max_restarts, Duration::from_secs(60))
            .backoff(Duration::from_millis(10), Duration::from_millis(50)),
    )
}

fn is_exit_of(event: &Event, name: &str) -> bool {
    matches!(event, Event::Exit { .. }) && is_about(event, name)
}

/// A predicate for the first `Ready` of `name` after it was revived (`ready()` can return before
/// the first `Ready` event is published, so that one may still be in the stream).
fn ready_after_revival(name: &str) -> impl FnMut(&Event) -> bool + '_ {
    let mut revived = false;
    move |event| {
        if is_about(event, name) {
            match event {
                Event::Revived { .. } => revived = true,
                Event::Ready { .. } => return revived,
                _ => {}
            }
        }
        false
    }
}

async fn shutting_down_an_idle_worker_runs_its_hook_and_it_exits_with_code_0() {
    let dir = tempfile::tempdir().expect("temp dir");
    let hook_file = dir.path().join("hook");
    let primary = primary_builder().build().await.expect("primary");
    primary.fork("idle", options(Scenario::Normal).env(ENV_HOOK_FILE, &hook_file)).await.expect("fork");
    bounded("ready", primary.ready()).await.expect("ready");
    let mut events = primary.events();

    let outcome = bounded("shutdown_worker", primary.shutdown_worker("idle", Duration::from_secs(5))).await;
    assert_eq!(outcome.expect("shutdown_worker"), ShutdownOutcome::Exited(ExitReason::Code(0)));
    let hook = std::fs::read_to_string(&hook_file).expect("the shutdown hook wrote its file before the exit");
    assert_eq!(hook, format!("idle ran its shutdown hook: {HOOK_SHUTDOWN_REQUESTED}"));

    let exit = next_event_matching(&mut events, WAIT, "idle's exit", |e| is_exit_of(e, "idle")).await;
    assert!(matches!(exit, Event::Exit { reason: ExitReason::Code(0), .. }), "{exit:?}");
    let idle = info(&primary, "idle");
    assert_eq!(idle.state, WorkerState::Stopped);
    assert_eq!(idle.pid, None);
    let err = bounded("run after shutdown", primary.run("idle", Echo { text: "x".into() })).await;
    assert_eq!(err.expect_err("the worker is gone").kind(), ErrorKind::WorkerExited);
}

async fn shutting_down_a_busy_worker_turns_it_stopping_and_it_exits_by_itself_when_done() {
    let dir = tempfile::tempdir().expect("temp dir");
    let hook_file = dir.path().join("hook");
    let primary = primary_builder().build().await.expect("primary");
    primary.fork("busy", options(Scenario::Normal).env(ENV_HOOK_FILE, &hook_file)).await.expect("fork");
    bounded("ready", primary.ready()).await.expect("ready");

    bounded("start work", primary.run("busy", WorkUntilShutdown { finish_ms: 300 }))
        .await
        .expect("work starts");
    assert_eq!(
        info(&primary, "busy").status,
        WorkerStatus::Processing,
        "the status notice precedes the reply"
    );
    let mut events = primary.events();
    let started = tokio::time::Instant::now();
    let outcome = bounded("shutdown_worker", primary.shutdown_worker("busy", Duration::from_secs(10))).await;
    let took = started.elapsed();
    let seen = events_until(&mut events, WAIT, "busy's exit", |e| is_exit_of(e, "busy")).await;
    assert_eq!(
        outcome.expect("shutdown_worker"),
        ShutdownOutcome::Exited(ExitReason::Code(0)),
        "the busy worker exits by itself once its work is done; events: {seen:#?}"
    );
    assert!(took >= Duration::from_millis(300), "shutdown_worker waited for the work to finish ({took:?})");
    let statuses: Vec<WorkerStatus> = seen
        .iter()
        .filter_map(|e| if let Event::Status { status, .. } = e { Some(*status) } else { None })
        .collect();
    assert_eq!(statuses.first(), Some(&WorkerStatus::Stopping), "it turned Stopping first: {seen:#?}");
    assert!(!statuses.contains(&WorkerStatus::Idle), "a Stopping worker never reports Idle: {seen:#?}");
    let hook = std::fs::read_to_string(&hook_file).expect("the shutdown hook ran");
    assert_eq!(hook, format!("busy ran its shutdown hook: {HOOK_SHUTDOWN_REQUESTED}"));
}

async fn a_busy_worker_finishing_the_moment_it_is_asked_to_shut_down_still_exits() {
    // The workers finish as soon as `Worker::shutdown_requested` resolves, which races with the
    // worker turning Stopping; several at once so that a lost race shows up.
    let names = ["busy1", "busy2", "busy3", "busy4", "busy5", "busy6", "busy7", "busy8"];
    let primary = primary_builder().build().await.expect("primary");
    for name in names {
        primary.fork(name, options(Scenario::Normal)).await.expect("fork");
    }
    bounded("ready", primary.ready()).await.expect("ready");
    for name in names {
        bounded("start work", primary.run(name, WorkUntilShutdown { finish_ms: 0 }))
            .await
            .expect("work starts");
    }
    let mut events = primary.events();
    let shutdowns = names.map(|name| primary.shutdown_worker(name, Duration::from_secs(3)));
    let outcomes = bounded("shutdown_worker", futures::future::join_all(shutdowns)).await;
    let mut exited = 0;
    let seen = events_until(&mut events, WAIT, "every busy worker's exit", |e| {
        exited += usize::from(matches!(e, Event::Exit { .. }));
        exited == names.len()
    })
    .await;
    for (name, outcome) in names.iter().zip(outcomes) {
        let statuses: Vec<WorkerStatus> = seen
            .iter()
            .filter_map(|e| match e {
                Event::Status { worker, status } if worker.name == *name => Some(*status),
                _ => None,
            })
            .collect();
        assert_eq!(
            outcome.expect("shutdown_worker"),
            ShutdownOutcome::Exited(ExitReason::Code(0)),
            "{name} should exit by itself once its work is done; its statuses after the shutdown request: \
             {statuses:?}"
        );
    }
}

async fn a_worker_exiting_by_itself_tells_the_primary_before_it_goes() {
    // `Worker::exit` flushes a last Stopping status before the process ends; the primary must
    // read it even when it notices the exit first. Several workers, so that the race shows.
    let names: Vec<String> = (1..=20).map(|i| format!("leaver{i}")).collect();
    let primary = primary_builder().build().await.expect("primary");
    for name in &names {
        primary.fork(name, options(Scenario::Normal)).await.expect("fork");
    }
    bounded("ready", primary.ready()).await.expect("ready");
    let mut events = primary.events();
    let exits = names.iter().map(|name| primary.run(name, ExitGracefully { code: 0 }));
    for result in bounded("exits", futures::future::join_all(exits)).await {
        result.expect("a handler that calls exit still answers its caller");
    }
    let mut exited = 0;
    let seen = events_until(&mut events, WAIT, "every exit", |e| {
        exited += usize::from(matches!(e, Event::Exit { .. }));
        exited == names.len()
    })
    .await;
    for name in &names {
        let told = seen.iter().any(
            |e| matches!(e, Event::Status { worker, status: WorkerStatus::Stopping } if worker.name == *name),
        );
        assert!(told, "{name}'s last status (Stopping) never reached the primary: {seen:#?}");
    }
}

async fn a_worker_ignoring_shutdown_and_trapping_sigterm_is_killed_with_sigkill_after_the_timeout() {
    let (builder, mut notes) = with_notes(primary_builder());
    let primary = builder.build().await.expect("primary");
    let mut events = primary.events();
    primary.fork("stubborn", options(Scenario::IgnoreShutdown)).await.expect("fork");
    bounded("ready", primary.ready()).await.expect("ready");
    next_event_matching(&mut events, WAIT, "stubborn turning Processing", |e| {
        matches!(e, Event::Status { worker, status: WorkerStatus::Processing } if worker.name == "stubborn")
    })
    .await;

    // Prove the trap: SIGTERM does not end it, and it says so.
    kill(pid_of(&primary, "stubborn"), Signal::SIGTERM).expect("SIGTERM");
    let note = bounded("the SIGTERM note", notes.recv()).await.expect("a note");
    assert_eq!(note, ("stubborn".to_owned(), "sigterm".to_owned()));

    let started = tokio::time::Instant::now();
    let outcome =
        bounded("shutdown_worker", primary.shutdown_worker("stubborn", Duration::from_millis(500))).await;
    assert_eq!(outcome.expect("shutdown_worker"), ShutdownOutcome::Killed);
    assert!(started.elapsed() >= Duration::from_millis(500), "it had the whole timeout to exit");
    let exit = next_event_matching(&mut events, WAIT, "stubborn's exit", |e| is_exit_of(e, "stubborn")).await;
    assert!(
        matches!(exit, Event::Exit { reason: ExitReason::Signal(clusterfy::Signal::KILL), .. }),
        "killed with SIGKILL: {exit:?}"
    );
    assert_eq!(info(&primary, "stubborn").state, WorkerState::Stopped, "a shut-down worker is not revived");
}

async fn a_worker_exiting_with_a_non_zero_code_is_revived_and_answers_again() {
    let primary = primary_builder().build().await.expect("primary");
    primary.fork("phoenix", quick_revive(5)).await.expect("fork");
    bounded("ready", primary.ready()).await.expect("ready");
    let before = bounded("who am i", primary.run("phoenix", WhoAmI)).await.expect("who am i");
    assert_eq!(before.restarts, 0);
    let mut events = primary.events();

    let err = bounded("exit 3", primary.run("phoenix", ExitWith { code: 3 })).await.expect_err("no answer");
    assert_eq!(err.kind(), ErrorKind::WorkerExited, "{err}");
    let seen = events_until(&mut events, WAIT, "phoenix ready again", ready_after_revival("phoenix")).await;
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::Exit { reason: ExitReason::Code(3), .. } if is_about(e, "phoenix"))),
        "{seen:#?}"
    );
    assert!(
        seen.iter().any(|e| matches!(e, Event::Revived { restarts: 1, .. } if is_about(e, "phoenix"))),
        "{seen:#?}"
    );

    let after =
        bounded("who am i", primary.run("phoenix", WhoAmI)).await.expect("the revived worker answers");
    assert_eq!(after.name, "phoenix");
    assert_eq!(after.id, before.id, "revival keeps the worker id");
    assert_eq!(after.restarts, 1, "the new process knows it was revived");
    assert_ne!(after.pid, before.pid, "a new process");
    let phoenix = info(&primary, "phoenix");
    assert_eq!(phoenix.restarts, 1);
    assert_eq!(phoenix.last_exit, Some(ExitReason::Code(3)));
    assert_eq!(primary.statistics().total_restarts(), 1);
}

async fn a_worker_killed_with_sigkill_is_revived() {
    let primary = primary_builder().build().await.expect("primary");
    primary.fork("victim", quick_revive(5)).await.expect("fork");
    bounded("ready", primary.ready()).await.expect("ready");
    let mut events = primary.events();
    let old_pid = pid_of(&primary, "victim");

    kill(old_pid, Signal::SIGKILL).expect("SIGKILL");
    let seen = events_until(&mut events, WAIT, "victim ready again", ready_after_revival("victim")).await;
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::Exit { reason: ExitReason::Signal(clusterfy::Signal::KILL), .. } if is_about(e, "victim"))),
        "{seen:#?}"
    );
    assert!(
        seen.iter().any(|e| matches!(e, Event::Revived { restarts: 1, .. } if is_about(e, "victim"))),
        "{seen:#?}"
    );
    let echoed = bounded("echo", primary.run("victim", Echo { text: "back".into() })).await;
    assert_eq!(echoed.expect("the revived worker answers"), "back");
    assert_ne!(pid_of(&primary, "victim"), old_pid);
}

async fn a_replaced_worker_keeps_its_revival_history() {
    let primary = primary_builder().build().await.expect("primary");
    primary.fork("veteran", quick_revive(5)).await.expect("fork");
    bounded("ready", primary.ready()).await.expect("ready");
    let mut events = primary.events();
    kill(pid_of(&primary, "veteran"), Signal::SIGKILL).expect("SIGKILL");
    events_until(&mut events, WAIT, "veteran ready again", ready_after_revival("veteran")).await;
    assert_eq!(info(&primary, "veteran").restarts, 1);

    let new = bounded("restart", primary.restart_worker("veteran")).await.expect("replaced");
    let veteran = info(&primary, "veteran");
    assert_eq!((veteran.id, veteran.restarts), (new.id, 1), "the replacement carries the revival on");
    assert_eq!(primary.statistics().total_restarts(), 1);
    let identity = bounded("who are you", primary.run("veteran", WhoAmI)).await.expect("answers");
    assert_eq!(identity.restarts, 1, "the new process is told its restarts too");
}

async fn a_crashed_worker_without_revive_stays_down() {
    let primary = primary_builder().build().await.expect("primary");
    primary.fork("mortal", options(Scenario::Normal)).await.expect("fork");
    // A control worker with revival crashes at the same time: once it is back, a revival of
    // "mortal" would have happened too.
    primary.fork("control", quick_revive(5)).await.expect("fork");
    bounded("ready", primary.ready()).await.expect("ready");
    let mut events = primary.events();

    let (mortal, control) = futures::future::join(
        primary.run("mortal", ExitWith { code: 4 }),
        primary.run("control", ExitWith { code: 4 }),
    )
    .await;
    assert_eq!(mortal.expect_err("no answer").kind(), ErrorKind::WorkerExited);
    assert_eq!(control.expect_err("no answer").kind(), ErrorKind::WorkerExited);
    let seen = events_until(&mut events, WAIT, "control ready again", ready_after_revival("control")).await;
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::Exit { reason: ExitReason::Code(4), .. } if is_about(e, "mortal"))),
        "{seen:#?}"
    );
    assert!(!seen.iter().any(|e| matches!(e, Event::Revived { .. }) && is_about(e, "mortal")), "{seen:#?}");
    let mortal = info(&primary, "mortal");
    assert_eq!(mortal.state, WorkerState::Exited);
    assert_eq!((mortal.pid, mortal.restarts), (None, 0));
    let err = bounded("run on the dead", primary.run("mortal", Echo { text: "x".into() })).await;
    assert_eq!(err.expect_err("mortal is gone").kind(), ErrorKind::WorkerExited);
}

async fn a_worker_crashing_too_often_is_given_up() {
    let primary = primary_builder().build().await.expect("primary");
    let mut events = primary.events();
    let policy = RestartPolicy::new(2, Duration::from_secs(60))
        .backoff(Duration::from_millis(10), Duration::from_millis(20));
    primary.fork("fragile", options(Scenario::CrashOnStart).restart_policy(policy)).await.expect("fork");

    let seen =
        events_until(&mut events, WAIT, "fragile given up", |e| matches!(e, Event::GaveUp { .. })).await;
    let forks = seen.iter().filter(|e| matches!(e, Event::Forked { .. })).count();
    let revivals: Vec<u32> = seen
        .iter()
        .filter_map(|e| if let Event::Revived { restarts, .. } = e { Some(*restarts) } else { None })
        .collect();
    assert_eq!(forks, 3, "the first run and two restarts: {seen:#?}");
    assert_eq!(revivals, [1, 2]);
    assert!(
        matches!(
            seen.last(),
            Some(Event::GaveUp { restarts: 2, worker, cause: GiveUpCause::Crashes }) if worker.name == "fragile"
        ),
        "{seen:#?}"
    );
    let fragile = info(&primary, "fragile");
    assert_eq!(fragile.state, WorkerState::GaveUp);
    assert_eq!(fragile.restarts, 2);
    let err = bounded("ready", primary.ready()).await.expect_err("a worker that gave up before being ready");
    assert_eq!(err.kind(), ErrorKind::WorkerExited, "{err}");
}

async fn a_worker_exiting_before_it_connects_is_reported_with_an_exit_event() {
    let primary = primary_builder().build().await.expect("primary");
    let mut events = primary.events();
    primary.fork("early", options(Scenario::CrashOnStart)).await.expect("fork");
    // ready() fails once the worker exited; the Exit event must be out by then.
    let err = bounded("ready", primary.ready()).await.expect_err("crashed before ready");
    assert_eq!(err.kind(), ErrorKind::WorkerExited, "{err}");
    assert_eq!(info(&primary, "early").last_exit, Some(ExitReason::Code(1)));
    let exit =
        next_event_matching(&mut events, Duration::from_secs(2), "early's exit", |e| is_exit_of(e, "early"))
            .await;
    assert!(matches!(exit, Event::Exit { reason: ExitReason::Code(1), .. }), "{exit:?}");
}

/// Starts `test-worker primary`, returns the child and its workers' pids (two test workers and
/// the foreign one).
async fn start_primary_process(hook_file: Option<&std::path::Path>) -> (tokio::process::Child, Vec<Pid>) {
    start_primary_scenario(Scenario::Primary, hook_file, 3).await
}

/// Starts `test-worker <scenario>`, a primary that prints its `workers` pids.
async fn start_primary_scenario(
    scenario: Scenario,
    hook_file: Option<&std::path::Path>,
    workers: usize,
) -> (tokio::process::Child, Vec<Pid>) {
    let program = test_worker_program(scenario);
    let mut command = tokio::process::Command::new(&program.path);
    command.args(&program.args).stdout(std::process::Stdio::piped()).kill_on_drop(true);
    if let Some(path) = hook_file {
        command.env(ENV_HOOK_FILE, path);
    }
    let mut child = command.spawn().expect("spawning test-worker as a primary");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line =
        bounded("the pids line", lines.next_line()).await.expect("reading stdout").expect("a pids line");
    let pids: Vec<Pid> = line
        .strip_prefix(PIDS_LINE_PREFIX)
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .split_whitespace()
        .map(|p| Pid::from_raw(p.parse().expect("a pid")))
        .collect();
    assert_eq!(pids.len(), workers, "{line:?}");
    for pid in &pids {
        assert!(process_is_running(*pid), "worker {pid} runs before the primary dies");
    }
    (child, pids)
}

/// Waits, polling, until none of `pids` runs. Polling is the only way here: these processes are
/// not our children and send us no event.
async fn wait_until_gone(pids: &[Pid], within: Duration) -> Vec<Pid> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let running: Vec<Pid> = pids.iter().copied().filter(|p| process_is_running(*p)).collect();
        if running.is_empty() || tokio::time::Instant::now() >= deadline {
            return running;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_primary_leaves_no_process_and_no_file() {
    let before = clusterfy_entries();
    let (mut child, pids) = start_primary_process(None).await;
    let primary_pid = Pid::from_raw(i32::try_from(child.id().expect("running")).expect("pid fits"));
    kill(primary_pid, Signal::SIGKILL).expect("SIGKILL the primary");
    let status = bounded("the primary's death", child.wait()).await.expect("wait");
    assert!(!status.success());
    // The kernel kills every forked program at once (parent-death signal), the one that does
    // not link Clusterfy too; 1 s only bounds the polling.
    let survivors = wait_until_gone(&pids, Duration::from_secs(1)).await;
    assert!(survivors.is_empty(), "workers still run 1 s after the primary died: {survivors:?} of {pids:?}");
    let left: Vec<_> = clusterfy_entries().into_iter().filter(|path| !before.contains(path)).collect();
    assert!(left.is_empty(), "the killed primary left files behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_primary_that_re_executes_itself_leaves_no_worker() {
    // Its workers are spawned the fast way (no code between fork and exec) and arm their
    // parent-death signal themselves, and take their channel off stdin.
    let (mut child, pids) = start_primary_scenario(Scenario::SelfPrimary, None, 2).await;
    for pid in &pids {
        let stdin = std::fs::read_link(format!("/proc/{pid}/fd/0")).expect("the worker's stdin");
        assert_eq!(stdin, std::path::Path::new("/dev/null"), "the channel left stdin for /dev/null");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        assert!(status.contains(&format!("PPid:\t{}", child.id().expect("running"))), "{status}");
    }
    let primary_pid = Pid::from_raw(i32::try_from(child.id().expect("running")).expect("pid fits"));
    kill(primary_pid, Signal::SIGKILL).expect("SIGKILL the primary");
    bounded("the primary's death", child.wait()).await.expect("wait");
    let survivors = wait_until_gone(&pids, Duration::from_secs(1)).await;
    for pid in &survivors {
        // Not left behind to hold the test's output open.
        let _ = kill(*pid, Signal::SIGKILL);
    }
    assert!(survivors.is_empty(), "workers still run 1 s after the primary died: {survivors:?} of {pids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_primary_shuts_the_cluster_down_gracefully() {
    let dir = tempfile::tempdir().expect("temp dir");
    let hook_prefix = dir.path().join("hook");
    let (mut child, pids) = start_primary_process(Some(&hook_prefix)).await;
    let primary_pid = Pid::from_raw(i32::try_from(child.id().expect("running")).expect("pid fits"));
    kill(primary_pid, Signal::SIGTERM).expect("SIGTERM the primary");
    let status = bounded("the primary's exit", child.wait()).await.expect("wait");
    let survivors = wait_until_gone(&pids, Duration::from_secs(5)).await;
    assert!(survivors.is_empty(), "workers still run 5 s after SIGTERM to the primary: {survivors:?}");
    let hooks: Vec<(&str, Option<String>)> = ["orphan-a", "orphan-b"]
        .into_iter()
        .map(|name| {
            let mut path = hook_prefix.clone().into_os_string();
            path.push(format!(".{name}"));
            (name, std::fs::read_to_string(&path).ok())
        })
        .collect();
    for (name, hook) in &hooks {
        assert_eq!(
            hook.as_deref(),
            Some(format!("{name} ran its shutdown hook: {HOOK_SHUTDOWN_REQUESTED}").as_str()),
            "a graceful cluster shutdown asks every worker to shut down, so their hooks run; hooks: {hooks:?}; \
             the primary ended with {status}"
        );
    }
}

common::over_transports!(
    shutting_down_an_idle_worker_runs_its_hook_and_it_exits_with_code_0,
    shutting_down_a_busy_worker_turns_it_stopping_and_it_exits_by_itself_when_done,
    a_busy_worker_finishing_the_moment_it_is_asked_to_shut_down_still_exits,
    a_worker_exiting_by_itself_tells_the_primary_before_it_goes,
    a_worker_ignoring_shutdown_and_trapping_sigterm_is_killed_with_sigkill_after_the_timeout,
    a_worker_exiting_with_a_non_zero_code_is_revived_and_answers_again,
    a_worker_killed_with_sigkill_is_revived,
    a_replaced_worker_keeps_its_revival_history,
    a_crashed_worker_without_revive_stays_down,
    a_worker_crashing_too_often_is_given_up,
    a_worker_exiting_before_it_connects_is_reported_with_an_exit_event,
);
