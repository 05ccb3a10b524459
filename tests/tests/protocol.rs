//! What the primary does with connections that break the protocol: a wrong worker id, undecodable
//! frames, oversize frames. Each concerns one worker and must not disturb the others.

mod common;

use clusterfy::{
    ErrorKind,
    events::{Event, ExitReason},
};
use clusterfy_tests::{
    ENV_GARBAGE, Echo, GARBAGE_OVERSIZE, GARBAGE_UNDECODABLE, HUNG_UP_WITH_NOTICE, Scenario,
};
use common::{
    WAIT, bounded, events_until, is_about, is_error_of, next_event_matching, options, start_cluster,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_presenting_another_id_is_refused_and_the_primary_keeps_serving() {
    let primary = start_cluster(&["honest"]).await;
    let mut events = primary.events();
    primary.fork("evil", options(Scenario::Evil)).await.expect("fork");
    let seen = events_until(&mut events, WAIT, "evil's exit", |e| {
        matches!(e, Event::Exit { .. }) && is_about(e, "evil")
    })
    .await;
    assert!(seen.iter().any(|e| is_error_of(e, "evil", ErrorKind::Unauthorized)), "the refusal: {seen:#?}");
    let errors = seen.iter().filter(|e| matches!(e, Event::Error { .. }) && is_about(e, "evil")).count();
    assert_eq!(errors, 1, "the refusal is reported once, not again as a failed second try: {seen:#?}");
    assert!(!seen.iter().any(|e| matches!(e, Event::Online { .. }) && is_about(e, "evil")), "{seen:#?}");
    // The channel gets one handshake: the impostor never gets in, and readiness says so.
    let err = bounded("ready", primary.ready()).await.expect_err("evil never got ready");
    assert_ne!(err.kind(), ErrorKind::Timeout, "the refusal is reported at once: {err}");

    let echoed = bounded("echo honest", primary.run("honest", Echo { text: "unaffected".into() })).await;
    assert_eq!(echoed.expect("other workers are unaffected"), "unaffected");
}

/// Forks a good worker and a `garbage` one sending `mode`, makes the garbage one misbehave, and
/// checks the primary reports a protocol error for it alone while the good one keeps answering.
async fn malformed_input_closes_only_that_workers_connection(mode: &str) {
    let primary = start_cluster(&["good"]).await;
    primary.fork("bad", options(Scenario::Garbage).env(ENV_GARBAGE, mode)).await.expect("fork");
    bounded("ready", primary.ready()).await.expect("the bad worker's handshake is valid");
    let mut events = primary.events();

    // The request that the bad worker answers with garbage.
    let err =
        bounded("request to bad", primary.run("bad", Echo { text: "x".into() })).await.expect_err("garbage");
    assert_eq!(err.kind(), ErrorKind::WorkerExited, "{err}");
    let seen = events_until(&mut events, WAIT, "bad's disconnect", |e| {
        matches!(e, Event::Disconnect { .. }) && is_about(e, "bad")
    })
    .await;
    assert!(
        seen.iter().any(|e| is_error_of(e, "bad", ErrorKind::Protocol)),
        "the cause comes first: {seen:#?}"
    );
    assert!(!seen.iter().any(|e| is_about(e, "good") && !matches!(e, Event::Command { .. })), "{seen:#?}");

    for i in 0..3 {
        let text = format!("still fine {i}");
        let echoed = bounded("echo good", primary.run("good", Echo { text: text.clone() })).await;
        assert_eq!(echoed.expect("the good worker keeps answering"), text);
    }
    let err = bounded("request to bad again", primary.run("bad", Echo { text: "y".into() })).await;
    assert_eq!(err.expect_err("bad is disconnected").kind(), ErrorKind::WorkerExited);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_frame_closes_only_that_workers_connection() {
    malformed_input_closes_only_that_workers_connection(GARBAGE_UNDECODABLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_frame_header_closes_only_that_workers_connection() {
    malformed_input_closes_only_that_workers_connection(GARBAGE_OVERSIZE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_sent_a_malformed_frame_is_told_why_and_sees_its_connection_closed() {
    let primary = start_cluster(&[]).await;
    primary
        .fork("bad", options(Scenario::Garbage).env(ENV_GARBAGE, GARBAGE_UNDECODABLE))
        .await
        .expect("fork");
    bounded("ready", primary.ready()).await.expect("ready");
    let mut events = primary.events();
    let err =
        bounded("request to bad", primary.run("bad", Echo { text: "x".into() })).await.expect_err("garbage");
    assert_eq!(err.kind(), ErrorKind::WorkerExited, "{err}");
    // The garbage worker exits by itself with HUNG_UP_WITH_NOTICE once it reads EOF after
    // a protocol-error notice; if the primary never hangs up, it is killed instead.
    let exit =
        next_event_matching(&mut events, WAIT, "bad's exit", |e| matches!(e, Event::Exit { .. })).await;
    assert!(
        matches!(exit, Event::Exit { reason: ExitReason::Code(HUNG_UP_WITH_NOTICE), .. }),
        "the primary should close the connection after a protocol error so the worker can leave by itself: {exit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revivable_worker_whose_connection_broke_is_revived_though_its_program_ended_cleanly() {
    let primary = start_cluster(&[]).await;
    let revive = clusterfy::primary::RestartPolicy::new(3, std::time::Duration::from_secs(60))
        .backoff(std::time::Duration::from_millis(10), std::time::Duration::from_millis(50));
    let garbage = options(Scenario::Garbage).env(ENV_GARBAGE, GARBAGE_UNDECODABLE).restart_policy(revive);
    primary.fork("bad", garbage).await.expect("fork");
    bounded("ready", primary.ready()).await.expect("the handshake is valid");
    let mut events = primary.events();
    let err = bounded("request to bad", primary.run("bad", Echo { text: "x".into() })).await;
    assert_eq!(err.expect_err("garbage").kind(), ErrorKind::WorkerExited);
    // It exits with code 0 once told why, yet it did not mean to leave: the primary broke the link.
    let seen = events_until(&mut events, WAIT, "bad's revival", |e| matches!(e, Event::Revived { .. })).await;
    assert!(
        seen.iter().any(|e| matches!(e, Event::Exit { reason: ExitReason::Code(HUNG_UP_WITH_NOTICE), .. })),
        "{seen:#?}"
    );
}
