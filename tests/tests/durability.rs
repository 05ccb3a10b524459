//! Acknowledged writes survive a crash of the primary: workers write, the primary is killed with
//! SIGKILL at a random moment, and the storage opened again holds every write a worker saw
//! acknowledged. And a primary that shut down lets go of its durable backend at once.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clusterfy::storage::{RedisMirror, SledStorage, StorageBackend};
use clusterfy::{Path, Primary};
use clusterfy_test_support::redis_server::RedisServer;
use clusterfy_tests::{ACK_LINE_PREFIX, Scenario};
use common::{bounded, test_worker_path};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::Rng;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Runs `test-worker persist-primary <args>`, SIGKILLs it after a random number of acknowledged
/// writes, and returns every acknowledged write (worker name -> the numbers it wrote).
async fn crash_primary_while_workers_write(args: &[&str]) -> BTreeMap<String, Vec<u64>> {
    let mut child = Command::new(test_worker_path())
        .arg(Scenario::PersistPrimary.as_str())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the primary");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let kill_after = rand::rng().random_range(30..300);
    let mut acked: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut count = 0;
    let mut killed = false;
    // Acks printed after the kill still count: their replies left the primary before it died.
    // The stream ends once the primary and all its workers (which die with it) are gone.
    while let Some(line) = bounded("the next ack", lines.next_line()).await.expect("read stdout") {
        let mut parts = line.split(' ');
        if parts.next() != Some(ACK_LINE_PREFIX) {
            continue;
        }
        let (Some(worker), Some(n)) = (parts.next(), parts.next().and_then(|n| n.parse().ok())) else {
            panic!("malformed ack line {line:?}");
        };
        acked.entry(worker.to_owned()).or_default().push(n);
        count += 1;
        if count == kill_after && !killed {
            let pid = Pid::from_raw(i32::try_from(child.id().expect("running")).expect("pid fits"));
            kill(pid, Signal::SIGKILL).expect("SIGKILL the primary");
            killed = true;
        }
    }
    assert!(killed, "the primary's output ended after {count} acks, before the kill at {kill_after}");
    let status = bounded("the primary's death", child.wait()).await.expect("wait");
    assert!(!status.success(), "the primary was killed, yet exited with {status}");
    acked
}

/// Checks that `backend` holds every acknowledged write.
async fn assert_every_ack_is_stored(backend: Arc<dyn StorageBackend>, acked: &BTreeMap<String, Vec<u64>>) {
    // A new primary on the backend, as after a restart.
    let primary = clusterfy::Primary::builder()
        .storage(backend)
        .handle_signals(false)
        .build()
        .await
        .expect("a primary");
    let storage = primary.shared_storage();
    let mut checked = 0;
    for (worker, numbers) in acked {
        for n in numbers {
            let path = Path::parse(&format!("acks.{worker}.k{n}")).expect("path");
            let stored = storage.retrieve_value(&path).await.expect("read back");
            assert_eq!(stored, Some(clusterfy::Value::from(*n)), "acknowledged write {path} is lost");
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} acknowledged writes were checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_of_the_primary_on_sled() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("db");
    let db_arg = db.to_str().expect("utf-8 temp path");
    let acked = crash_primary_while_workers_write(&["sled", db_arg]).await;
    // The dead primary's lock is gone, so the directory opens at once.
    let reopened = bounded("reopen", SledStorage::open(&db)).await.expect("reopen the sled directory");
    assert_every_ack_is_stored(Arc::new(reopened), &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_of_the_primary_on_redis_and_are_reloaded() {
    let Some(server) =
        RedisServer::start_or_skip("acknowledged_writes_survive_sigkill_of_the_primary_on_redis")
    else {
        return;
    };
    let prefix = format!("durability-{}", rand::rng().random::<u32>());
    // The primary acknowledges only writes Redis has (AckMode::Redis): those must be reloaded.
    let acked = crash_primary_while_workers_write(&["redis", server.url(), &prefix]).await;
    let reloaded =
        bounded("reload from Redis", RedisMirror::builder(server.url()).key_prefix(&prefix).connect())
            .await
            .expect("a new primary loads the state from Redis");
    assert_every_ack_is_stored(Arc::new(reloaded), &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_go_of_the_sled_directory_while_the_primary_lives_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sled = Arc::new(bounded("open", SledStorage::open(dir.path())).await.expect("open sled"));
    let primary = Primary::builder()
        .storage(Arc::clone(&sled))
        .handle_signals(false)
        .build()
        .await
        .expect("build the primary");
    primary.storage().save("kept", &7u64).await.expect("save");
    bounded("shutdown", primary.shutdown(Duration::from_secs(5))).await.expect("shut down");
    // The primary (and its background tasks) still live, yet nothing of it holds the database:
    // the release does not wait for those tasks to notice.
    assert_eq!(Arc::strong_count(&sled), 1, "the shut-down primary still holds the sled database");
    drop(sled);
    let reopened = bounded("reopen", SledStorage::open(dir.path())).await.expect("reopen the sled directory");
    let stored = Primary::builder().storage(reopened).handle_signals(false).build().await.expect("rebuild");
    assert_eq!(stored.storage().retrieve::<u64>("kept").await.expect("read"), Some(7));
    drop(primary);
}
