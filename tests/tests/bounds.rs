//! The primary's bounds on what one worker can make it hold (`Limits`): a worker past one is
//! slowed or refused, and the other workers are served as before.

mod common;

use std::time::Duration;

use clusterfy::events::ExitReason;
use clusterfy::primary::{Limits, ShutdownOutcome};
use clusterfy::{ErrorKind, Primary};
use clusterfy_tests::{
    Echo, GREEDY_BIG_PATH, GREEDY_COUNT_PATH, GREEDY_PAIRS, GREEDY_SENT_LINE, Scenario, StartReplica,
    StartWatch,
};
use common::{bounded, options, own_rss, primary_builder, shut_down_cleanly};

async fn cluster_with(limits: Limits, workers: &[&str]) -> Primary {
    let primary = primary_builder().limits(limits).build().await.expect("build");
    for name in workers {
        primary.fork(name, options(Scenario::Normal)).await.expect("fork");
    }
    bounded("ready", primary.ready()).await.expect("ready");
    primary
}

/// A worker that pipelines reads of a 256 KiB value and never reads the replies would make the
/// primary queue `GREEDY_PAIRS` of them (125 MiB). The primary stops reading it once 1 MiB waits
/// for it (`queued_bytes_per_worker`), and should the answers of requests already under way pile
/// up past `unread_bytes_per_worker`, closes its connection (the link's unit tests show that
/// cut-off); the other worker's commands and writes go on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_never_reads_its_replies_is_no_longer_read_and_the_others_go_on() {
    let mut limits = Limits::default();
    // Below greedy's 1000 requests, so that what it gets handled shows the bound.
    limits.requests_per_worker = 64;
    limits.unread_bytes_per_worker = 8 << 20;
    let primary = cluster_with(limits, &["polite"]).await;
    let big = "x".repeat(256 * 1024);
    primary.storage().save(GREEDY_BIG_PATH, &big).await.expect("save the big value");
    let (_, mut logs) = primary.follow_logs(None, 0).expect("follow logs");
    let before = own_rss();

    let greedy = options(Scenario::Greedy).capture_output(true);
    primary.fork("greedy", greedy).await.expect("fork greedy");
    loop {
        let line = bounded("greedy's line", logs.next()).await.expect("the primary is alive");
        let line = line.expect("no line missed");
        if line.worker == "greedy" && line.text == GREEDY_SENT_LINE {
            break;
        }
    }

    // The other worker is served: commands both ways and writes through the writer.
    for i in 0..50 {
        let text = format!("still served {i}");
        let echoed = bounded("echo polite", primary.run("polite", Echo { text: text.clone() })).await;
        assert_eq!(echoed.expect("the polite worker answers"), text);
    }
    primary.storage().save("after_greedy", &1).await.expect("the writer is not held up by greedy");

    // Unbounded, the primary would get through all of greedy's requests in well under this; bounded,
    // it never does, so the wait ends by its deadline and only makes the test take longer.
    let mut handled = 0;
    for _ in 0..40 {
        handled = primary.storage().retrieve(GREEDY_COUNT_PATH).await.expect("read").unwrap_or(0);
        if handled == GREEDY_PAIRS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        handled < GREEDY_PAIRS / 2,
        "the primary handled {handled} of greedy's {GREEDY_PAIRS} pairs though it reads none of the replies"
    );
    let grown = own_rss().saturating_sub(before);
    assert!(
        grown < 48 << 20,
        "the primary grew by {} MiB for a worker that reads nothing (the bound is 8 MiB unread)",
        grown >> 20
    );
    // Greedy reads no shutdown request either: the stop ladder ends it, polite leaves by itself.
    let outcomes = bounded("shutdown", primary.shutdown(Duration::from_secs(2))).await.expect("shutdown");
    let polite = outcomes.iter().find(|(w, _)| w.name == "polite").map(|(_, outcome)| outcome);
    assert_eq!(polite, Some(&ShutdownOutcome::Exited(ExitReason::Code(0))), "{outcomes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_past_watches_per_worker_is_refused_and_a_repeated_one_is_not_counted() {
    let mut limits = Limits::default();
    limits.watches_per_worker = 2;
    let primary = cluster_with(limits, &["watcher", "other"]).await;
    for path in ["a", "b", "a"] {
        let started = bounded("watch", primary.run("watcher", StartWatch { path: path.into() })).await;
        started.unwrap_or_else(|err| panic!("watch {path} is within the bound: {err}"));
    }
    let err = bounded("third watch", primary.run("watcher", StartWatch { path: "c".into() }))
        .await
        .expect_err("a third distinct path is one too many");
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    assert!(err.message().contains("watches_per_worker"), "the error names the bound: {err}");
    let other = bounded("other's watch", primary.run("other", StartWatch { path: "c".into() })).await;
    other.expect("another worker has bounds of its own");
    shut_down_cleanly(&primary).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_past_replicas_per_worker_is_refused() {
    let mut limits = Limits::default();
    limits.replicas_per_worker = 1;
    let primary = cluster_with(limits, &["reader"]).await;
    primary.storage().save("config", &clusterfy::value!({"limit": 3})).await.expect("save");
    let first = bounded("replica", primary.run("reader", StartReplica { path: "config".into() })).await;
    first.expect("one replica is within the bound");
    // The worker starts the new replica before it drops the one it holds: two at once.
    let err = bounded("second replica", primary.run("reader", StartReplica { path: "config".into() }))
        .await
        .expect_err("a second replica is one too many");
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    assert!(err.message().contains("replicas_per_worker"), "the error names the bound: {err}");
    shut_down_cleanly(&primary).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_of_zero_is_refused_when_building() {
    let mut limits = Limits::default();
    limits.requests_per_worker = 0;
    let err = Primary::builder().limits(limits).build().await.expect_err("zero stops every worker");
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
}
