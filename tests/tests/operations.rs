//! The storage's operations, one named case each, on every backend (`memory::<case>`,
//! `sled::<case>`, `redis::<case>`): the same answers and the same errors wherever the data
//! lives.

use std::time::Duration;

use clusterfy::storage::{MemStorage, RedisMirror, SledStorage, Storage, StorageBackend};
use clusterfy::{ErrorKind, Primary, Value, value};
use clusterfy_tests::TopScores;

/// A primary on `backend` with the tests' registered operation.
async fn primary_on(backend: impl StorageBackend) -> Primary {
    Primary::builder()
        .storage(backend)
        .storage_operation::<TopScores>()
        .handle_signals(false)
        .build()
        .await
        .expect("a primary")
}

async fn increment_adds_checks_overflow_and_types(storage: Storage) {
    assert_eq!(storage.increment("n", 2).await.expect("from nothing"), 2);
    assert_eq!(storage.increment("n", -5).await.expect("negative"), -3);
    storage.save("max", &i64::MAX).await.expect("save");
    assert_eq!(storage.increment("max", 1).await.expect_err("overflow").kind(), ErrorKind::InvalidInput);
    storage.save("s", "text").await.expect("save");
    let err = storage.increment("s", 1).await.expect_err("a string");
    assert_eq!((err.kind(), err.context_value("operation")), (ErrorKind::InvalidInput, Some("increment")));
    assert_eq!(storage.increment("no.parent", 1).await.expect_err("orphan").kind(), ErrorKind::NotFound);
    assert_eq!(storage.retrieve::<i64>("max").await.expect("read"), Some(i64::MAX));
}

async fn increment_float_adds_to_any_number(storage: Storage) {
    storage.save("n", &1).await.expect("save");
    assert_eq!(storage.increment_float("n", 0.5).await.expect("an integer becomes a float"), 1.5);
    assert_eq!(storage.increment_float("m", -0.25).await.expect("from nothing"), -0.25);
    storage.save("list", &[1]).await.expect("save");
    assert_eq!(
        storage.increment_float("list", 1.0).await.expect_err("a list").kind(),
        ErrorKind::InvalidInput
    );
}

async fn append_and_remove_value_edit_lists(storage: Storage) {
    assert_eq!(storage.append("l", &1).await.expect("new"), 1);
    assert_eq!(storage.append("l", &2).await.expect("push"), 2);
    assert_eq!(storage.append("l", &1).await.expect("push"), 3);
    assert_eq!(storage.remove_value("l", &1).await.expect("remove"), 2);
    assert_eq!(storage.retrieve::<Vec<i64>>("l").await.expect("read"), Some(vec![2]));
    assert_eq!(storage.remove_value("absent", &1).await.expect("nothing"), 0);
    storage.save("m", &value!({})).await.expect("save");
    assert_eq!(storage.append("m", &1).await.expect_err("a map").kind(), ErrorKind::InvalidInput);
}

async fn insert_if_absent_saves_only_once(storage: Storage) {
    assert!(storage.insert_if_absent("k", "first").await.expect("saved"));
    assert!(!storage.insert_if_absent("k", "second").await.expect("not again"));
    assert_eq!(storage.retrieve::<String>("k").await.expect("read").as_deref(), Some("first"));
    assert!(!storage.insert_if_absent("", &value!({})).await.expect("the root is always there"));
}

async fn take_reads_and_deletes(storage: Storage) {
    storage.save("job", &value!({"id": 7})).await.expect("save");
    assert_eq!(storage.take::<Value>("job").await.expect("taken"), Some(value!({"id": 7})));
    assert_eq!(storage.take::<Value>("job").await.expect("gone"), None);
    assert_eq!(storage.retrieve_value("job").await.expect("read"), None);
}

async fn compare_and_swap_writes_only_on_a_match(storage: Storage) {
    assert_eq!(storage.compare_and_swap::<i64>("v", None, Some(&1)).await.expect("create"), Ok(()));
    assert_eq!(storage.compare_and_swap("v", Some(&2), Some(&3)).await.expect("lost"), Err(Some(value!(1))));
    assert_eq!(storage.compare_and_swap::<i64>("v", Some(&1), None).await.expect("delete"), Ok(()));
    assert_eq!(storage.retrieve_value("v").await.expect("read"), None);
}

async fn a_registered_operation_applies_in_one_step(storage: Storage) {
    for (n, kept) in [(4, true), (8, true), (2, false)] {
        assert_eq!(storage.apply("top", TopScores { n, keep: 2 }).await.expect("apply"), kept);
    }
    assert_eq!(storage.retrieve::<Vec<i64>>("top").await.expect("read"), Some(vec![8, 4]));
    storage.save("text", "x").await.expect("save");
    let err = storage.apply("text", TopScores { n: 1, keep: 1 }).await.expect_err("not a list");
    assert_eq!(err.context_value("path"), Some("text"), "{err}");
}

async fn concurrent_increments_of_one_key_each_see_their_own_value(storage: Storage) {
    let calls = (0..500).map(|_| storage.increment("hot", 1));
    let mut seen: Vec<i64> =
        futures::future::join_all(calls).await.into_iter().map(|r| r.expect("increment")).collect();
    seen.sort_unstable();
    assert!(seen.iter().copied().eq(1..=500), "each of 500 callers got its own value");
}

macro_rules! on_every_backend {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let primary = super::primary_on(super::MemStorage::new()).await;
                    super::$case(primary.storage()).await;
                    primary.shutdown(super::Duration::from_secs(1)).await.expect("shutdown");
                }
            )*
        }
        mod sled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let sled = super::SledStorage::open(dir.path()).await.expect("sled");
                    let primary = super::primary_on(sled).await;
                    super::$case(primary.storage()).await;
                    primary.shutdown(super::Duration::from_secs(1)).await.expect("shutdown");
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(url) = super::redis_url(stringify!($case)) else { return };
                    let mirror = super::RedisMirror::builder(url).key_prefix(stringify!($case)).connect().await;
                    let primary = super::primary_on(mirror.expect("the mirror")).await;
                    super::$case(primary.storage()).await;
                    primary.shutdown(super::Duration::from_secs(1)).await.expect("shutdown");
                }
            )*
        }
    };
}

/// One `redis-server` for the Redis cases; `None` (after a loud message) when none is installed.
fn redis_url(test: &str) -> Option<String> {
    static SERVER: std::sync::OnceLock<Option<clusterfy_test_support::redis_server::RedisServer>> =
        std::sync::OnceLock::new();
    SERVER
        .get_or_init(|| clusterfy_test_support::redis_server::RedisServer::start_or_skip(test))
        .as_ref()
        .map(|s| s.url().to_owned())
}

on_every_backend!(
    increment_adds_checks_overflow_and_types,
    increment_float_adds_to_any_number,
    append_and_remove_value_edit_lists,
    insert_if_absent_saves_only_once,
    take_reads_and_deletes,
    compare_and_swap_writes_only_on_a_match,
    a_registered_operation_applies_in_one_step,
    concurrent_increments_of_one_key_each_see_their_own_value,
);
