//! The shared storage as workers in separate processes see it.

mod common;

use clusterfy::{ErrorKind, Value, value};
use clusterfy_tests::{
    CompareAndSwapAt, IncrementMany, NextChange, ReadAt, SaveAt, StartWatch, WriteSequence,
};
use common::{bounded, shut_down_cleanly, start_cluster};
use futures::StreamExt;

fn save(path: &str, value: Value) -> SaveAt {
    SaveAt { path: path.into(), value, create_parents: false }
}

fn read(path: &str) -> ReadAt {
    ReadAt { path: path.into() }
}

async fn two_workers_write_and_read_the_same_path() {
    let primary = start_cluster(&["writer", "reader"]).await;

    bounded("writer saves", primary.run("writer", save("greeting", value!("hello from writer"))))
        .await
        .expect("save");
    let seen = bounded("reader reads", primary.run("reader", read("greeting"))).await.expect("read");
    assert_eq!(seen, Some(value!("hello from writer")));

    bounded("reader overwrites", primary.run("reader", save("greeting", value!({"by": "reader", "n": 2}))))
        .await
        .expect("save");
    let seen = bounded("writer reads", primary.run("writer", read("greeting"))).await.expect("read");
    assert_eq!(seen, Some(value!({"by": "reader", "n": 2})));

    // The primary's own view agrees.
    let on_primary: Option<i64> = primary.storage().retrieve("greeting.n").await.expect("primary reads");
    assert_eq!(on_primary, Some(2));
    shut_down_cleanly(&primary).await;
}

async fn save_under_a_missing_parent_fails_with_not_found_naming_the_prefix() {
    let primary = start_cluster(&["saver"]).await;
    primary.storage().save("present", &value!({})).await.expect("primary saves a map");

    let err = bounded("save", primary.run("saver", save("present.missing.leaf", value!(1))))
        .await
        .expect_err("no parent");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(err.context_value("prefix"), Some("present.missing"), "{err}");
    assert!(err.message().contains("present.missing"), "the message names the missing prefix: {err}");

    let nothing = bounded("read", primary.run("saver", read("present.missing"))).await.expect("read");
    assert_eq!(nothing, None, "a failed save leaves nothing behind");
    shut_down_cleanly(&primary).await;
}

async fn save_with_parents_creates_them_and_a_map_path_reads_the_whole_subtree() {
    let primary = start_cluster(&["saver", "reader"]).await;
    let deep = SaveAt { path: "tree.branch.leaf".into(), value: value!(1), create_parents: true };
    bounded("save with parents", primary.run("saver", deep)).await.expect("save with parents");
    bounded("save sibling", primary.run("saver", save("tree.branch.other", value!([1, "two"]))))
        .await
        .expect("save");
    bounded("save second branch", primary.run("saver", save("tree.twig", value!({"x": true}))))
        .await
        .expect("save");

    let subtree = bounded("read subtree", primary.run("reader", read("tree"))).await.expect("read subtree");
    assert_eq!(subtree, Some(value!({"branch": {"leaf": 1, "other": [1, "two"]}, "twig": {"x": true}})));
    let leaf =
        bounded("read leaf", primary.run("reader", read("tree.branch.leaf"))).await.expect("read leaf");
    assert_eq!(leaf, Some(value!(1)));
    let missing =
        bounded("read missing", primary.run("reader", read("tree.nothing.here"))).await.expect("read");
    assert_eq!(missing, None, "a missing leaf is None, not an error");
    shut_down_cleanly(&primary).await;
}

async fn compare_and_swap_from_racing_workers_has_exactly_one_winner() {
    let names = ["w1", "w2", "w3"];
    let primary = start_cluster(&names).await;
    let attempts = names.map(|name| {
        let cas = CompareAndSwapAt { path: "leader".into(), expected: None, new: Some(value!(name)) };
        primary.run(name, cas)
    });
    let outcomes = bounded("racing compare-and-swaps", futures::future::join_all(attempts)).await;
    let stored: Option<String> = primary.storage().retrieve("leader").await.expect("read leader");
    let leader = stored.expect("someone won");
    let mut winners = Vec::new();
    for (name, outcome) in names.iter().zip(outcomes) {
        match outcome.expect("compare-and-swap request") {
            Ok(()) => winners.push(*name),
            Err(current) => {
                assert_eq!(current, Some(value!(leader.as_str())), "a loser sees the winner's value")
            }
        }
    }
    assert_eq!(winners, [leader.as_str()], "exactly one compare-and-swap wins, and its value is stored");

    // With the right expectation, a later swap succeeds.
    let swap = CompareAndSwapAt {
        path: "leader".into(),
        expected: Some(value!(leader.as_str())),
        new: Some(value!("w2")),
    };
    let outcome = bounded("swap with the right expectation", primary.run("w2", swap)).await.expect("request");
    assert_eq!(outcome, Ok(()));
    shut_down_cleanly(&primary).await;
}

async fn concurrent_updates_from_several_workers_lose_no_increment() {
    let names = ["inc1", "inc2", "inc3"];
    let primary = start_cluster(&names).await;
    primary.storage().save("stats", &value!({"hits": 0})).await.expect("initial counter");
    let per_worker = 40;
    let runs =
        names.map(|name| primary.run(name, IncrementMany { path: "stats.hits".into(), times: per_worker }));
    // The primary increments too, through the same storage.
    let local = async {
        for _ in 0..per_worker {
            primary
                .storage()
                .update::<i64, _>("stats.hits", |n| Some(n.unwrap_or(0) + 1))
                .await
                .expect("local update");
        }
    };
    let (results, ()) =
        bounded("concurrent increments", futures::future::join(futures::future::join_all(runs), local)).await;
    for (name, result) in names.iter().zip(results) {
        let last = result.unwrap_or_else(|e| panic!("{name} failed: {e}"));
        assert!(last >= i64::from(per_worker), "{name} wrote {last}, below its own count");
    }
    let total: Option<i64> = primary.storage().retrieve("stats.hits").await.expect("read counter");
    assert_eq!(total, Some(4 * i64::from(per_worker)), "every increment counted");
    shut_down_cleanly(&primary).await;
}

async fn a_worker_watching_a_path_is_told_of_writes_on_its_branch_only() {
    let primary = start_cluster(&["watcher", "writer"]).await;
    bounded("watch", primary.run("watcher", StartWatch { path: "config".into() })).await.expect("watch");
    let storage = primary.storage();
    storage.save("config", &value!({"mode": "fast"})).await.expect("primary saves the branch");
    storage.save("elsewhere", &1).await.expect("a write off the branch");
    bounded("writer saves below", primary.run("writer", save("config.mode", value!("slow"))))
        .await
        .expect("save");
    let first = bounded("first change", primary.run("watcher", NextChange)).await.expect("next change");
    let second = bounded("second change", primary.run("watcher", NextChange)).await.expect("next change");
    // The write to "elsewhere" came between the two and is not reported.
    assert_eq!((first.as_str(), second.as_str()), ("config", "config.mode"));
    shut_down_cleanly(&primary).await;
}

async fn the_primary_watches_its_own_storage() {
    let primary = start_cluster(&[]).await;
    let storage = primary.storage();
    storage.save("a", &value!({})).await.expect("save");
    let mut changes = storage.watch("a").await.expect("watch");
    storage.save("b", &1).await.expect("off the branch");
    storage.save("a.x", &2).await.expect("below");
    storage.delete("a").await.expect("at");
    let seen: Vec<String> = bounded("two changes", (&mut changes).take(2).collect::<Vec<_>>())
        .await
        .into_iter()
        .map(|p| p.as_str().to_owned())
        .collect();
    assert_eq!(seen, ["a.x", "a"]);
    shut_down_cleanly(&primary).await;
}

/// Saves in flight at once from three workers and from the primary are combined into few backend
/// batches (the storage's writer takes whatever is queued): all of them land, saves to one path
/// keep the order they were sent in, and a save under a missing parent fails alone.
async fn saves_in_flight_together_all_land_in_order_and_a_bad_one_fails_alone() {
    const EACH: u64 = 200;
    const LOCAL: i64 = 50;
    let workers = ["w1", "w2", "w3"];
    let primary = start_cluster(&workers).await;
    primary.storage().save("shared", &value!({})).await.expect("the parent map");
    let storage = primary.storage();

    let sequences = futures::future::join_all(
        workers.map(|w| primary.run(w, WriteSequence { count: EACH, announce: false })),
    );
    let bad = primary.run("w2", save("missing.leaf", value!(1)));
    let local = futures::future::join_all((0..LOCAL).map(|n| {
        let storage = storage.clone();
        async move {
            storage.save(&format!("shared.p{n}"), &n).await?;
            storage.save("shared.last", &n).await
        }
    }));
    let (sequences, bad, local) = bounded("the writes", async { tokio::join!(sequences, bad, local) }).await;
    for (worker, written) in workers.iter().zip(sequences) {
        assert_eq!(written.unwrap_or_else(|e| panic!("{worker}'s saves: {e}")), EACH);
    }
    assert_eq!(bad.expect_err("no parent").kind(), ErrorKind::NotFound);
    for result in local {
        result.expect("the primary's own saves");
    }

    for worker in workers {
        let acks: Option<Value> = storage.retrieve(&format!("acks.{worker}")).await.expect("read");
        let Some(Value::Map(acks)) = acks else { panic!("no acks of {worker}: {acks:?}") };
        assert_eq!(acks.len() as u64, EACH, "every save of {worker} landed");
    }
    let shared: Option<Value> = storage.retrieve("shared").await.expect("read");
    let Some(Value::Map(shared)) = shared else { panic!("no shared map: {shared:?}") };
    assert_eq!(shared.len() as i64, LOCAL + 1, "p0..p49 and last");
    assert_eq!(shared.get("last"), Some(&value!(LOCAL - 1)), "the last save sent to a path wins");
    assert_eq!(storage.retrieve::<Value>("missing").await.expect("read"), None, "the bad save left nothing");
    shut_down_cleanly(&primary).await;
}

/// Every scenario above, written once: each runs over both transports and on both durable backends.
macro_rules! storage_scenarios {
    ($($runner:tt)*) => {
        $($runner)*!(
    a_worker_watching_a_path_is_told_of_writes_on_its_branch_only,
    the_primary_watches_its_own_storage,
    two_workers_write_and_read_the_same_path,
    save_under_a_missing_parent_fails_with_not_found_naming_the_prefix,
    save_with_parents_creates_them_and_a_map_path_reads_the_whole_subtree,
    compare_and_swap_from_racing_workers_has_exactly_one_winner,
    concurrent_updates_from_several_workers_lose_no_increment,
    saves_in_flight_together_all_land_in_order_and_a_bad_one_fails_alone,
);
    };
}

storage_scenarios!(common::over_transports);
storage_scenarios!(common::over_durable_storages);
