//! Commands between real processes: primary -> worker, worker -> primary, worker -> worker
//! (routed by the primary), broadcasts, and the errors of each.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use clusterfy::{Command, ErrorKind, command::WorkerSelector, events::Event, worker::WorkerStatus};
use clusterfy_tests::{
    AskWhoAmI, BroadcastWhoAmI, CallPrimary, Echo, Identity, Sleep, SlowWhoAmI, Unregistered, WhoAmI,
};
use common::{
    WAIT, bounded, info, is_about, next_event_matching, pid_of, primary_builder, shut_down_cleanly,
    start_cluster,
};

async fn primary_runs_a_command_on_a_worker_by_name_and_by_id() {
    let primary = start_cluster(&["alpha", "beta"]).await;

    let echoed = bounded("run by name", primary.run("beta", Echo { text: "hello".into() })).await;
    assert_eq!(echoed.expect("echo by name"), "hello");

    let beta = info(&primary, "beta");
    let by_name = bounded("run by name", primary.run("beta", WhoAmI)).await.expect("who am i by name");
    let by_id = bounded("run by id", primary.run(beta.id, WhoAmI)).await.expect("who am i by id");
    assert_eq!(by_name, by_id);
    assert_eq!(by_id.name, "beta");
    assert_eq!(by_id.id, beta.id.0);
    assert_eq!(Some(by_id.pid), beta.pid, "the answer comes from beta's own process");
    shut_down_cleanly(&primary).await;
}

async fn worker_runs_a_command_on_the_primary() {
    let primary = start_cluster(&["caller"]).await;
    let reply = bounded("call primary", primary.run("caller", CallPrimary { text: "ping".into() })).await;
    assert_eq!(reply.expect("worker -> primary command"), "ping from caller");
    shut_down_cleanly(&primary).await;
}

async fn worker_runs_a_command_on_another_worker_by_name_and_by_id_through_the_primary() {
    let primary = start_cluster(&["asker", "answerer"]).await;
    let mut events = primary.events();
    let answerer = info(&primary, "answerer");

    let by_name = AskWhoAmI { target: WorkerSelector::Name("answerer".into()) };
    let reply = bounded("ask by name", primary.run("asker", by_name)).await.expect("routed by name");
    assert_eq!(reply.name, "answerer");
    assert_eq!(Some(reply.pid), answerer.pid);

    let by_id = AskWhoAmI { target: WorkerSelector::Id(answerer.id) };
    let reply = bounded("ask by id", primary.run("asker", by_id)).await.expect("routed by id");
    assert_eq!(reply.name, "answerer");

    // The primary saw both routed commands go from asker to answerer, named by its name.
    for how in ["by name", "by id"] {
        let routed = next_event_matching(&mut events, WAIT, "for the routed command", |e| {
            matches!(e, Event::Command { from: clusterfy::command::Origin::Worker { name, .. }, name: command, .. }
                if name == "asker" && command == WhoAmI::NAME)
        })
        .await;
        let Event::Command { to, .. } = routed else { unreachable!("matched a command event") };
        assert_eq!(to, "answerer", "the routed command {how}");
    }
    shut_down_cleanly(&primary).await;
}

async fn broadcast_from_the_primary_gathers_the_replies_of_all_workers_not_just_the_first() {
    let primary = start_cluster(&["one", "two", "three"]).await;
    // "two" answers late: a broadcast that resolved on the first reply would miss it.
    let started = Instant::now();
    let replies = bounded("broadcast", primary.broadcast(SlowWhoAmI { slow: "two".into(), ms: 300 })).await;
    let replies = replies.expect("broadcast");
    assert!(started.elapsed() >= Duration::from_millis(300), "the broadcast waited for the slow worker");
    assert_eq!(replies.len(), 3, "{replies:?}");
    let mut names = BTreeSet::new();
    for reply in replies {
        let identity = reply.result.unwrap_or_else(|e| panic!("{} failed: {e}", reply.worker));
        assert_eq!(identity.name, reply.worker.name, "each reply is labelled with the worker that sent it");
        names.insert(identity.name);
    }
    assert_eq!(names, BTreeSet::from(["one".to_owned(), "two".to_owned(), "three".to_owned()]));
    shut_down_cleanly(&primary).await;
}

async fn broadcast_from_a_worker_reaches_every_worker_itself_included() {
    let primary = start_cluster(&["one", "two", "three"]).await;
    let replies = bounded("broadcast from a worker", primary.run("two", BroadcastWhoAmI)).await;
    let replies = replies.expect("broadcast from a worker");
    let names: BTreeSet<String> = replies
        .into_iter()
        .map(|(name, result)| {
            let identity: Identity = result.unwrap_or_else(|e| panic!("{name} failed: {e}"));
            assert_eq!(identity.name, name);
            name
        })
        .collect();
    assert_eq!(names, BTreeSet::from(["one".to_owned(), "two".to_owned(), "three".to_owned()]));
    shut_down_cleanly(&primary).await;
}

async fn unknown_command_fails_with_unknown_command() {
    let primary = start_cluster(&["plain"]).await;
    let err =
        bounded("unregistered command", primary.run("plain", Unregistered)).await.expect_err("unregistered");
    assert_eq!(err.kind(), ErrorKind::UnknownCommand, "{err}");
    assert_eq!(err.context_value("command"), Some(Unregistered::NAME), "{err}");
    // The worker is unharmed.
    let echoed = bounded("echo", primary.run("plain", Echo { text: "still here".into() })).await;
    assert_eq!(echoed.expect("echo after the failure"), "still here");
    shut_down_cleanly(&primary).await;
}

async fn command_to_an_unknown_worker_fails_with_unknown_worker() {
    let primary = start_cluster(&["known"]).await;
    let err =
        bounded("run on nobody", primary.run("nobody", Echo { text: "x".into() })).await.expect_err("nobody");
    assert_eq!(err.kind(), ErrorKind::UnknownWorker, "{err}");
    assert!(err.to_string().contains("known"), "the error lists the known workers: {err}");

    let err =
        bounded("run on id 999", primary.run(clusterfy::WorkerId(999), Echo { text: "x".into() })).await;
    assert_eq!(err.expect_err("no worker 999").kind(), ErrorKind::UnknownWorker);

    // Routed from a worker, the same error comes back through the asking worker.
    let ask = AskWhoAmI { target: WorkerSelector::Name("nobody".into()) };
    let err = bounded("routed to nobody", primary.run("known", ask)).await.expect_err("routed to nobody");
    assert_eq!(err.kind(), ErrorKind::UnknownWorker, "{err}");
    shut_down_cleanly(&primary).await;
}

async fn request_to_a_worker_that_dies_midway_fails_promptly_with_worker_exited() {
    let primary = primary_builder().request_timeout(Duration::from_secs(30)).build().await.expect("primary");
    primary.fork("doomed", common::options(clusterfy_tests::Scenario::Normal)).await.expect("fork");
    bounded("ready", primary.ready()).await.expect("ready");
    let mut events = primary.events();

    let asking = primary.clone();
    let request = tokio::spawn(async move {
        let started = Instant::now();
        let result = asking.run("doomed", Sleep { ms: 60_000 }).await;
        (result, started.elapsed())
    });
    next_event_matching(&mut events, WAIT, "doomed turning Processing", |e| {
        matches!(e, Event::Status { worker, status: WorkerStatus::Processing } if worker.name == "doomed")
    })
    .await;
    nix::sys::signal::kill(pid_of(&primary, "doomed"), nix::sys::signal::Signal::SIGKILL)
        .expect("SIGKILL doomed");

    let (result, elapsed) = bounded("the request to end", request).await.expect("request task");
    let err = result.expect_err("the worker died before answering");
    assert_eq!(err.kind(), ErrorKind::WorkerExited, "{err}");
    assert!(
        elapsed < Duration::from_secs(10),
        "failed after {elapsed:?}, not long before the 30 s request timeout"
    );
    let exit = next_event_matching(&mut events, WAIT, "doomed's exit", |e| {
        matches!(e, Event::Exit { .. }) && is_about(e, "doomed")
    })
    .await;
    assert!(
        matches!(
            exit,
            Event::Exit { reason: clusterfy::events::ExitReason::Signal(clusterfy::Signal::KILL), .. }
        ),
        "{exit:?}"
    );
}

common::over_transports!(
    primary_runs_a_command_on_a_worker_by_name_and_by_id,
    worker_runs_a_command_on_the_primary,
    worker_runs_a_command_on_another_worker_by_name_and_by_id_through_the_primary,
    broadcast_from_the_primary_gathers_the_replies_of_all_workers_not_just_the_first,
    broadcast_from_a_worker_reaches_every_worker_itself_included,
    unknown_command_fails_with_unknown_command,
    command_to_an_unknown_worker_fails_with_unknown_worker,
    request_to_a_worker_that_dies_midway_fails_promptly_with_worker_exited,
);
