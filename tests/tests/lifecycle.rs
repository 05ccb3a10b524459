//! Forking, readiness, statuses, statistics, configuration errors and the event stream, with
//! real worker processes.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use clusterfy::{
    Command, ErrorKind, Primary, Target, Worker,
    events::Event,
    primary::{PrimaryContext, WorkerState},
    worker::{WorkerContext, WorkerStatus},
};
use clusterfy_tests::{ENV_START_DELAY_MS, Echo, FlapStatus, Scenario, SetStatus, WhoAmI};
use common::{
    WAIT, bounded, events_until, info, is_about, is_error_of, next_event_matching, options, primary_builder,
    shut_down_cleanly, start_cluster,
};
use serde::{Deserialize, Serialize};

async fn primary_forks_workers_and_ready_returns_once_all_are_ready() {
    let primary = primary_builder().build().await.expect("primary");
    let mut events = primary.events();
    let names = ["w1", "w2", "w3"];
    for name in names {
        let worker = primary.fork(name, options(Scenario::Normal)).await.expect("fork");
        assert_eq!(worker.name, name);
    }
    bounded("ready", primary.ready()).await.expect("ready");

    let workers = primary.workers();
    assert_eq!(workers.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(), names, "in id order");
    for w in &workers {
        assert_eq!(w.state, WorkerState::Ready, "{w:?}");
        assert_eq!(w.status, WorkerStatus::Idle, "{w:?}");
        assert!(w.pid.is_some(), "{w:?}");
        assert_eq!(w.restarts, 0);
    }
    let ids: BTreeSet<_> = workers.iter().map(|w| w.id).collect();
    assert_eq!(ids.len(), 3, "ids are unique");
    // Each worker went through Forked, Online and Ready.
    let mut ready = BTreeSet::new();
    let seen = events_until(&mut events, WAIT, "every Ready", |e| {
        if let Event::Ready { worker } = e {
            ready.insert(worker.name.clone());
        }
        ready.len() == names.len()
    })
    .await;
    for name in names {
        let kinds: Vec<&str> = seen
            .iter()
            .filter(|e| is_about(e, name))
            .map(|e| match e {
                Event::Forked { .. } => "forked",
                Event::Online { .. } => "online",
                Event::Ready { .. } => "ready",
                _ => "other",
            })
            .filter(|k| *k != "other")
            .collect();
        assert_eq!(kinds, ["forked", "online", "ready"], "{name}: {seen:#?}");
    }
    // The processes really are the workers.
    for w in &workers {
        let me = bounded("who am i", primary.run(w.id, WhoAmI)).await.expect("who am i");
        assert_eq!((me.id, me.name.as_str(), Some(me.pid)), (w.id.0, w.name.as_str(), w.pid));
    }
    shut_down_cleanly(&primary).await;
}

async fn statuses_a_worker_sets_are_seen_by_the_primary() {
    let primary = start_cluster(&["moody"]).await;
    let mut events = primary.events();

    let now =
        bounded("set Processing", primary.run("moody", SetStatus { status: WorkerStatus::Processing })).await;
    assert_eq!(now.expect("set Processing"), WorkerStatus::Processing);
    next_event_matching(
        &mut events,
        WAIT,
        "Processing",
        |e| matches!(e, Event::Status { worker, status: WorkerStatus::Processing } if worker.name == "moody"),
    )
    .await;
    assert_eq!(info(&primary, "moody").status, WorkerStatus::Processing);

    let now = bounded("set Idle", primary.run("moody", SetStatus { status: WorkerStatus::Idle })).await;
    assert_eq!(now.expect("set Idle"), WorkerStatus::Idle);
    next_event_matching(
        &mut events,
        WAIT,
        "Idle",
        |e| matches!(e, Event::Status { worker, status: WorkerStatus::Idle } if worker.name == "moody"),
    )
    .await;
    assert_eq!(info(&primary, "moody").status, WorkerStatus::Idle);

    // A status a worker may not set is refused on the worker, and the primary's view stays.
    let err = bounded("set Loaded", primary.run("moody", SetStatus { status: WorkerStatus::Loaded })).await;
    assert_eq!(err.expect_err("Idle -> Loaded is illegal").kind(), ErrorKind::InvalidState);
    assert_eq!(info(&primary, "moody").status, WorkerStatus::Idle);
    shut_down_cleanly(&primary).await;
}

async fn forking_a_second_worker_with_a_name_in_use_fails_with_already_exists() {
    let primary = start_cluster(&["unique"]).await;
    let err = primary.fork("unique", options(Scenario::Normal)).await.expect_err("duplicate name");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert_eq!(err.context_value("worker"), Some("unique"), "{err}");
    assert_eq!(primary.workers().len(), 1, "no second worker was started");
    let echoed = bounded("echo", primary.run("unique", Echo { text: "one".into() })).await;
    assert_eq!(echoed.expect("the first worker still answers"), "one");
    shut_down_cleanly(&primary).await;
}

// Written by hand: `#[derive(Command)]` refuses a reserved name at compile time, and these
// check that registering one is refused at run time too.
#[derive(Serialize, Deserialize)]
struct ReservedOnPrimary;

impl Command for ReservedOnPrimary {
    const NAME: &'static str = "cy_mine";
    const TARGET: Target = Target::Primary;
    type Reply = ();
}

#[derive(Serialize, Deserialize)]
struct ReservedOnWorker;

impl Command for ReservedOnWorker {
    const NAME: &'static str = "cy_mine";
    const TARGET: Target = Target::Worker;
    type Reply = ();
}

async fn on_primary<C: Command<Reply = ()>>(_: C, _: PrimaryContext) -> clusterfy::Result<()> {
    Ok(())
}

async fn on_worker<C: Command<Reply = ()>>(_: C, _: WorkerContext) -> clusterfy::Result<()> {
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_a_reserved_or_duplicate_command_fails_when_building() {
    let reserved = Primary::builder().command(on_primary::<ReservedOnPrimary>).build().await;
    let err = reserved.expect_err("a cy_ name is refused at build()");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert_eq!(err.context_value("command"), Some("cy_mine"), "{err}");

    let duplicate = Primary::builder()
        .command(on_primary::<clusterfy_tests::Note>)
        .command(on_primary::<clusterfy_tests::Note>)
        .build()
        .await;
    let err = duplicate.expect_err("a duplicate name is refused at build()");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");

    let wrong_side = Primary::builder().command(on_primary::<clusterfy_tests::Unregistered>).build().await;
    assert_eq!(wrong_side.expect_err("a worker command on the primary").kind(), ErrorKind::InvalidInput);

    // A worker checks its registrations before it reads its environment or connects.
    let reserved = Worker::builder().command(on_worker::<ReservedOnWorker>).connect().await;
    let err = reserved.expect_err("a cy_ name is refused at connect()");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    let duplicate = Worker::builder()
        .command(on_worker::<clusterfy_tests::Unregistered>)
        .command(on_worker::<clusterfy_tests::Unregistered>)
        .connect()
        .await;
    assert_eq!(duplicate.expect_err("a duplicate name at connect()").kind(), ErrorKind::AlreadyExists);
}

async fn ready_fails_with_timeout_when_a_worker_never_connects() {
    let primary = primary_builder().ready_timeout(Duration::from_millis(700)).build().await.expect("primary");
    let mut events = primary.events();
    primary.fork("silent", options(Scenario::NeverConnect)).await.expect("fork");
    primary.fork("prompt", options(Scenario::Normal)).await.expect("fork");
    // As an application might: see the first worker come up before waiting for all of them.
    next_event_matching(&mut events, WAIT, "prompt ready", |e| matches!(e, Event::Ready { .. })).await;
    let err = bounded("ready", primary.ready()).await.expect_err("never ready");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.to_string().contains("silent"), "the error names the worker: {err}");
    // The supervisor's own deadline fires too; both say the same.
    let failure = next_event_matching(&mut events, WAIT, "silent's connect failure", |e| {
        is_error_of(e, "silent", ErrorKind::Timeout)
    })
    .await;
    let Event::Error { error, .. } = failure else { unreachable!("matched an error event") };
    assert_eq!(error.message(), err.message(), "one message, whichever deadline fires first");
}

async fn a_worker_that_takes_longer_than_five_seconds_to_connect_gets_ready_within_the_ready_timeout() {
    // The ready timeout (20 s here) covers spawn to ready; nothing else cuts a slow start short.
    let primary = primary_builder().build().await.expect("primary");
    let slow = options(Scenario::SlowStart).env(ENV_START_DELAY_MS, "5500");
    primary.fork("slow", slow).await.expect("fork");
    bounded("ready", primary.ready()).await.expect("a slow start within the ready timeout is fine");
    assert_eq!(info(&primary, "slow").state, WorkerState::Ready);
    shut_down_cleanly(&primary).await;
}

async fn a_worker_that_stalls_in_its_hello_is_told_it_began_its_handshake_not_that_it_never_connected() {
    let primary = primary_builder().ready_timeout(Duration::from_millis(700)).build().await.expect("primary");
    let mut events = primary.events();
    primary.fork("stalled", options(Scenario::StallHello)).await.expect("fork");
    let err = bounded("ready", primary.ready()).await.expect_err("never ready");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.message().contains("began its handshake"), "{err}");
    assert!(!err.message().contains("connect() at start"), "it did connect: {err}");
    let failure = next_event_matching(&mut events, WAIT, "stalled's handshake failure", |e| {
        is_error_of(e, "stalled", ErrorKind::Timeout)
    })
    .await;
    let Event::Error { error, .. } = failure else { unreachable!("matched an error event") };
    assert_eq!(error.message(), err.message(), "the event and readiness say the same");
}

async fn ready_fails_with_worker_exited_when_a_worker_crashes_on_start_without_revive() {
    let primary = primary_builder().build().await.expect("primary");
    primary.fork("crasher", options(Scenario::CrashOnStart)).await.expect("fork");
    primary.fork("fine", options(Scenario::Normal)).await.expect("fork");
    let err = bounded("ready", primary.ready()).await.expect_err("crasher never gets ready");
    assert_eq!(err.kind(), ErrorKind::WorkerExited, "{err}");
    assert_eq!(err.context_value("worker").map(|w| w.starts_with("crasher")), Some(true), "{err}");
    assert_eq!(info(&primary, "crasher").state, WorkerState::Exited);
}

async fn statistics_count_running_workers_and_the_table_names_them() {
    let primary = start_cluster(&["Paul", "Sarah", "John"]).await;
    let stats = primary.statistics();
    assert_eq!(stats.running(), 3);
    assert_eq!(stats.total_restarts(), 0);
    let table = stats.table();
    for name in ["Paul", "Sarah", "John"] {
        assert!(table.contains(name), "{table}");
    }
    for w in &stats.workers {
        let pid = w.pid.expect("running").to_string();
        assert!(table.contains(&pid), "the table shows pid {pid}: {table}");
    }
    assert!(table.contains("IDLE"), "{table}");
    assert!(table.contains("Running workers: 3"), "{table}");
    primary.print_statistics();

    let outcome = bounded("shutdown Sarah", primary.shutdown_worker("Sarah", Duration::from_secs(5))).await;
    assert!(matches!(outcome.expect("shutdown Sarah"), clusterfy::primary::ShutdownOutcome::Exited(_)));
    let stats = primary.statistics();
    assert_eq!(stats.running(), 2);
    assert!(stats.table().contains("Running workers: 2"), "{}", stats.table());
    shut_down_cleanly(&primary).await;
}

async fn an_event_subscriber_that_never_reads_does_not_block_the_primary_and_learns_what_it_missed() {
    let primary = start_cluster(&["chatty"]).await;
    let mut lazy = primary.events();
    // 2 x 800 status events, more than a subscriber's buffer.
    let flaps = bounded("flapping", primary.run("chatty", FlapStatus { times: 800 })).await;
    flaps.expect("the primary kept up although one subscriber never read");
    let echoed = bounded("echo", primary.run("chatty", Echo { text: "responsive".into() })).await;
    assert_eq!(echoed.expect("echo"), "responsive");

    let first = bounded("the lazy subscriber's first event", futures::StreamExt::next(&mut lazy)).await;
    match first {
        Some(Event::Lagged { missed }) => assert!(missed > 0, "missed {missed}"),
        other => panic!("expected Lagged first, got {other:?}"),
    }
    // After the gap the stream goes on.
    let next = bounded("an event after the gap", futures::StreamExt::next(&mut lazy)).await;
    assert!(matches!(next, Some(Event::Status { .. } | Event::Command { .. })), "{next:?}");
    shut_down_cleanly(&primary).await;
}

async fn shutting_the_cluster_down_stops_every_worker_and_refuses_new_forks() {
    let primary = start_cluster(&["a", "b", "c"]).await;
    shut_down_cleanly(&primary).await;
    assert_eq!(primary.statistics().running(), 0);
    for w in primary.workers() {
        assert_eq!(w.state, WorkerState::Stopped, "{w:?}");
    }
    let err = primary.fork("late", options(Scenario::Normal)).await.expect_err("fork after shutdown");
    assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");
}

common::over_transports!(
    primary_forks_workers_and_ready_returns_once_all_are_ready,
    statuses_a_worker_sets_are_seen_by_the_primary,
    forking_a_second_worker_with_a_name_in_use_fails_with_already_exists,
    ready_fails_with_timeout_when_a_worker_never_connects,
    a_worker_that_takes_longer_than_five_seconds_to_connect_gets_ready_within_the_ready_timeout,
    a_worker_that_stalls_in_its_hello_is_told_it_began_its_handshake_not_that_it_never_connected,
    ready_fails_with_worker_exited_when_a_worker_crashes_on_start_without_revive,
    statistics_count_running_workers_and_the_table_names_them,
    an_event_subscriber_that_never_reads_does_not_block_the_primary_and_learns_what_it_missed,
    shutting_the_cluster_down_stops_every_worker_and_refuses_new_forks,
);
