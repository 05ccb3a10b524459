//! The shared storage as workers in separate processes see it.

mod common;

use clusterfy::{ErrorKind, Value, value};
use clusterfy_tests::{
    AtomicOp, CompareAndSwapAt, IncrementHot, IncrementMany, NextChange, ReadAt, ReplicaGet, RunAtomic,
    SaveAt, SaveThenReadReplica, StartReplica, StartWatch, WriteSequence,
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

async fn eight_workers_incrementing_one_key_count_every_increment_once() {
    let names = ["i1", "i2", "i3", "i4", "i5", "i6", "i7", "i8"];
    let primary = start_cluster(&names).await;
    // 10,000 each, as ten commands of 1,000 (each well within the request deadline on a disk).
    let (commands, per_command) = (10, 1_000);
    let per_worker = commands * per_command;
    let runs = names.map(|name| {
        let primary = &primary;
        async move {
            let mut values = Vec::new();
            for _ in 0..commands {
                let hot = IncrementHot { path: "hits".into(), times: per_command, in_flight: 32 };
                values.extend(primary.run(name, hot).await.unwrap_or_else(|e| panic!("{name} failed: {e}")));
            }
            values
        }
    });
    let results = bounded("80,000 increments", futures::future::join_all(runs)).await;
    let mut seen: Vec<i64> = Vec::with_capacity(8 * per_worker as usize);
    for (name, values) in names.iter().zip(results) {
        assert_eq!(values.len(), per_worker as usize, "{name}");
        seen.extend(values);
    }
    seen.sort_unstable();
    let total = 8 * i64::from(per_worker);
    assert_eq!(seen.len() as i64, total);
    assert!(seen.iter().copied().eq(1..=total), "every caller got a value of its own, 1 to {total}");
    let stored: Option<i64> = primary.storage().retrieve("hits").await.expect("read");
    assert_eq!(stored, Some(total));
    shut_down_cleanly(&primary).await;
}

async fn atomic_operations_of_workers_run_in_one_step_and_refuse_the_wrong_type() {
    let primary = start_cluster(&["a", "b"]).await;
    let run = |name: &'static str, op: AtomicOp| primary.run(name, RunAtomic(op));
    let append = |name, value: Value| run(name, AtomicOp::Append { path: "online".into(), value });
    assert_eq!(bounded("append", append("a", value!("alice"))).await.expect("append"), value!(1));
    assert_eq!(bounded("append", append("b", value!("bob"))).await.expect("append"), value!(2));
    let removed = run("b", AtomicOp::RemoveValue { path: "online".into(), value: value!("alice") });
    assert_eq!(bounded("remove", removed).await.expect("remove"), value!(1));
    let online: Option<Vec<String>> = primary.storage().retrieve("online").await.expect("read");
    assert_eq!(online, Some(vec!["bob".to_owned()]));
    let claim = |name| run(name, AtomicOp::InsertIfAbsent { path: "leader".into(), value: value!(name) });
    let (first, second) = futures::future::join(claim("a"), claim("b")).await;
    let claims = [first.expect("claim"), second.expect("claim")];
    assert_eq!(claims.iter().filter(|c| **c == value!(true)).count(), 1, "one claim wins: {claims:?}");
    let taken = bounded("take", run("a", AtomicOp::Take { path: "leader".into() })).await.expect("take");
    assert!(taken == value!("a") || taken == value!("b"), "{taken:?}");
    assert_eq!(primary.storage().retrieve_value("leader").await.expect("read"), None, "taken means gone");
    for n in [3, 9, 1] {
        run("a", AtomicOp::TopScores { path: "top".into(), n, keep: 2 })
            .await
            .expect("a registered operation");
    }
    let top: Option<Vec<i64>> = primary.storage().retrieve("top").await.expect("read");
    assert_eq!(top, Some(vec![9, 3]));
    let float = run("b", AtomicOp::IncrementFloat { path: "load".into(), by: 0.25 }).await.expect("float");
    assert_eq!(float, value!(0.25));
    // The wrong type: a clear error naming the path, the operation and what is there, and
    // nothing changes.
    let err = bounded("increment a list", run("a", AtomicOp::Increment { path: "online".into(), by: 1 }))
        .await
        .expect_err("a list is not a counter");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.message().contains("\"online\"") && err.message().contains("increment"), "{err}");
    assert!(err.message().contains("holds a list"), "{err}");
    let online: Option<Vec<String>> = primary.storage().retrieve("online").await.expect("read");
    assert_eq!(online, Some(vec!["bob".to_owned()]), "unchanged");
    shut_down_cleanly(&primary).await;
}

async fn a_replica_in_a_worker_shows_its_own_writes_at_once_and_another_workers_soon() {
    let primary = start_cluster(&["holder", "writer"]).await;
    primary.storage().save("config", &value!({"limit": 1})).await.expect("initial");
    bounded("start", primary.run("holder", StartReplica { path: "config".into() })).await.expect("replica");
    let read =
        |path: &str, until: Option<Value>| primary.run("holder", ReplicaGet { path: path.into(), until });
    assert_eq!(bounded("read", read("config.limit", None)).await.expect("read"), Some(value!(1)));
    // Another worker's write arrives in the replica.
    bounded("save", primary.run("writer", save("config.limit", value!(2)))).await.expect("save");
    let shown = bounded("wait", read("config.limit", Some(value!(2)))).await.expect("shows the write");
    assert_eq!(shown, Some(value!(2)));
    // The holder's own write is there the moment it returns.
    for n in 3..13 {
        let own = SaveThenReadReplica { path: "config.limit".into(), value: value!(n) };
        let shown = bounded("save and read", primary.run("holder", own)).await.expect("save");
        assert_eq!(shown, Some(value!(n)), "read-your-writes through the replica");
    }
    // A subtree written whole, then deleted whole.
    primary.storage().save("config", &value!({"a": {"b": true}})).await.expect("save");
    let shown = bounded("wait", read("config", Some(value!({"a": {"b": true}})))).await.expect("subtree");
    assert_eq!(shown, Some(value!({"a": {"b": true}})));
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
    eight_workers_incrementing_one_key_count_every_increment_once,
    atomic_operations_of_workers_run_in_one_step_and_refuse_the_wrong_type,
    a_replica_in_a_worker_shows_its_own_writes_at_once_and_another_workers_soon,
);
    };
}

storage_scenarios!(common::over_transports);
storage_scenarios!(common::over_durable_storages);
