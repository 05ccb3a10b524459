//! `RedisMirror` against a real `redis-server` owned by each test: loading at start, mirroring in
//! order, outages (the server killed and restarted while writes go on), overflow, the Redis ack
//! mode, and clear errors. (Passwords in logs: `tests/password.rs`.)
//!
//! Without `redis-server` installed, the tests that need one say so on stderr and pass, except
//! when `CI` is set, where they fail.

// A failed unwrap is the clearest failure report a test can give.
#![allow(clippy::unwrap_used)]

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clusterfy_core::{BatchOp, ErrorKind, StorageBackend, StorageBackendExt, StorageNotice};
use clusterfy_storage_redis::{AckMode, DEFAULT_ACK_TIMEOUT, RedisMirror};
use clusterfy_test_support::redis_server::RedisServer;
use tokio::sync::watch;
use tokio::time::timeout;

mod common;
use common::*;

/// Kills or restarts the server from async code: those calls block for a few milliseconds.
fn blocking<T>(f: impl FnOnce() -> io::Result<T>) -> T {
    tokio::task::block_in_place(f).unwrap()
}

async fn wait_for_progress(progress: &mut watch::Receiver<u64>, at_least: u64) {
    timeout(DEADLINE, progress.wait_for(|&done| done >= at_least))
        .await
        .unwrap_or_else(|_| panic!("the writer did not reach {at_least} writes within {DEADLINE:?}"))
        .unwrap();
}

/// Writes until `stop`, a mix of every kind of write, and returns what the state must be.
/// Reports its number of writes on `progress`. Every write must succeed, outage or not.
async fn write_until(mirror: Arc<RedisMirror>, stop: Arc<AtomicBool>, progress: watch::Sender<u64>) -> Map {
    let mut model = Map::new();
    let mut i: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("k{}", i % 50).into_bytes();
        let value = i.to_le_bytes().to_vec();
        match i % 10 {
            0..=5 => {
                mirror.put(&key, &value).await.unwrap();
                model.insert(key, value);
            }
            6 => {
                let victim = format!("k{}", (i * 7) % 50).into_bytes();
                mirror.delete(&victim).await.unwrap();
                model.remove(&victim);
            }
            7 => {
                let ops = vec![
                    // Redis gets the deletes of the keys it removes, key by key.
                    BatchOp::DeletePrefix { prefix: b"batch-".to_vec() },
                    BatchOp::Put { key: format!("batch-{}", i % 3).into_bytes(), value: value.clone() },
                    BatchOp::Put { key: b"batch-a".to_vec(), value: value.clone() },
                    BatchOp::Put { key: b"batch-b".to_vec(), value: value.clone() },
                    BatchOp::Delete { key: key.clone() },
                    BatchOp::Put { key: vec![0, 0xff, (i % 256) as u8], value: Vec::new() },
                ];
                for op in &ops {
                    match op {
                        BatchOp::Put { key, value } => drop(model.insert(key.clone(), value.clone())),
                        BatchOp::Delete { key } => drop(model.remove(key)),
                        BatchOp::DeletePrefix { prefix } => model.retain(|key, _| !key.starts_with(prefix)),
                    }
                }
                mirror.apply_batch(ops).await.unwrap();
            }
            8 => {
                let next = (i + 1).to_le_bytes().to_vec();
                mirror.put(b"counter", &next).await.unwrap();
                model.insert(b"counter".to_vec(), next);
            }
            _ => {
                let key = vec![0, (i % 7) as u8];
                mirror.put(&key, &value).await.unwrap();
                model.insert(key, value);
            }
        }
        i += 1;
        if i.is_multiple_of(10) {
            progress.send_replace(i);
            tokio::task::yield_now().await;
        }
    }
    model
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_mid_run_and_restarted_ends_equal_to_memory_with_nothing_lost() {
    let Some(mut server) = RedisServer::start_owned_or_skip("redis_killed_mid_run_and_restarted") else {
        return;
    };
    let url = server.url().to_owned();
    let mirror = Arc::new(builder(&url, &prefix("kill")).connect().await.unwrap());
    let mut notices = mirror.notices().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (progress_tx, mut progress) = watch::channel(0);
    let writer = tokio::spawn(write_until(Arc::clone(&mirror), Arc::clone(&stop), progress_tx));

    wait_for_progress(&mut progress, 1_000).await;
    blocking(|| server.kill());
    let lost = notice(&mut notices, "Disconnected", is_disconnected).await;
    assert!(matches!(&lost, StorageNotice::Disconnected { detail } if detail.contains(&url)), "{lost:?}");
    assert!(!mirror.status().connected);

    // Writes go on during the outage, and succeed.
    let during = *progress.borrow() + 1_000;
    wait_for_progress(&mut progress, during).await;
    let status = mirror.status();
    assert!(status.queued_writes > 0 && !status.resync_pending, "the writes are queued: {status:?}");

    blocking(|| server.restart());
    notice(&mut notices, "Reconnected", is_reconnected).await;
    // The restarted server is empty: only a rewrite from memory can bring it back.
    notice(&mut notices, "Resynced", is_resynced).await;
    let after = *progress.borrow() + 1_000;
    wait_for_progress(&mut progress, after).await;

    stop.store(true, Ordering::Relaxed);
    let model = writer.await.unwrap();
    mirror.wait_mirrored().await.unwrap();
    assert_eq!(in_memory(&mirror).await, model, "memory lost writes");
    assert_eq!(in_redis(&url, mirror.data_key()).await, model, "Redis differs from memory");
    let status = mirror.status();
    assert!(status.connected && !status.resync_pending, "{status:?}");
    assert_eq!((status.queued_writes, status.unconfirmed_writes), (0, 0), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_during_an_outage_is_announced_and_resynced_exactly() {
    let Some(mut server) = RedisServer::start_owned_or_skip("overflow_during_an_outage") else { return };
    let url = server.url().to_owned();
    let mirror = builder(&url, &prefix("overflow")).queue_capacity(8).connect().await.unwrap();
    // Fewer writes than the capacity, so that only the outage makes the queue overflow.
    for i in 0..6u8 {
        mirror.put(&[i], b"before").await.unwrap();
    }
    mirror.wait_mirrored().await.unwrap();
    let mut notices = mirror.notices().unwrap();

    blocking(|| server.kill());
    for i in 0..100u8 {
        mirror.put(&[i % 30], &[i]).await.unwrap();
        if i.is_multiple_of(9) {
            mirror.delete(&[i % 30 + 1]).await.unwrap();
        }
    }
    let overflow = notice(&mut notices, "Overflow", |n| matches!(n, StorageNotice::Overflow { .. })).await;
    let StorageNotice::Overflow { detail } = &overflow else { unreachable!("{overflow:?}") };
    assert!(detail.contains("capacity of 8"), "{detail}");
    // The count is of the writes the queue held, so never more than its capacity.
    let dropped: usize = detail
        .split_once("; the ")
        .and_then(|(_, rest)| rest.split_once(" writes it held were dropped"))
        .and_then(|(count, _)| count.parse().ok())
        .unwrap_or_else(|| panic!("no count of dropped writes in {detail:?}"));
    assert!(dropped <= 8, "{detail}");
    let status = mirror.status();
    assert!(status.queued_writes <= 8 && status.resync_pending, "{status:?}");

    blocking(|| server.restart());
    let resynced = notice(&mut notices, "Resynced", is_resynced).await;
    let memory = in_memory(&mirror).await;
    assert_eq!(resynced, StorageNotice::Resynced { entries: memory.len() as u64 });
    mirror.wait_mirrored().await.unwrap();
    assert_eq!(in_redis(&url, mirror.data_key()).await, memory);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_idle_is_noticed_and_resynced_without_a_write() {
    let Some(mut server) = RedisServer::start_owned_or_skip("a_restart_while_idle") else { return };
    let url = server.url().to_owned();
    let mirror = builder(&url, &prefix("idle")).connect().await.unwrap();
    let mut notices = mirror.notices().unwrap();
    mirror
        .apply_batch((0..10u8).map(|k| BatchOp::Put { key: vec![k], value: vec![k] }).collect())
        .await
        .unwrap();
    mirror.wait_mirrored().await.unwrap();

    blocking(|| server.restart());
    notice(&mut notices, "Resynced", is_resynced).await;
    assert_eq!(in_redis(&url, mirror.data_key()).await, in_memory(&mirror).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_redis_returns_only_once_redis_has_the_write() {
    let Some(server) = RedisServer::start_or_skip("ack_redis_returns_only_once_redis_has_the_write") else {
        return;
    };
    let mirror = builder(server.url(), &prefix("ack")).ack(AckMode::Redis).connect().await.unwrap();
    assert!(mirror.capabilities().durable && mirror.capabilities().visible_outside);
    let key = mirror.data_key().to_owned();
    let mut redis = direct(server.url()).await;
    let mut hget = async |field: &[u8]| -> Option<Vec<u8>> {
        redis::cmd("HGET").arg(&key).arg(field).query_async(&mut redis).await.unwrap()
    };

    for i in 0..50u32 {
        mirror.put(b"k", &i.to_le_bytes()).await.unwrap();
        assert_eq!(hget(b"k").await, Some(i.to_le_bytes().to_vec()));
    }
    mirror.delete(b"k").await.unwrap();
    assert_eq!(hget(b"k").await, None);
    mirror.put(b"\0", b"").await.unwrap();
    assert_eq!(hget(b"\0").await, Some(Vec::new()));
    mirror
        .apply_batch(vec![
            BatchOp::Put { key: b"a".to_vec(), value: b"1".to_vec() },
            BatchOp::Put { key: b"b".to_vec(), value: b"2".to_vec() },
        ])
        .await
        .unwrap();
    assert_eq!((hget(b"a").await, hget(b"b").await), (Some(b"1".to_vec()), Some(b"2".to_vec())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_redis_write_during_an_outage_times_out_and_still_arrives() {
    let Some(mut server) = RedisServer::start_owned_or_skip("ack_redis_write_during_an_outage") else {
        return;
    };
    let url = server.url().to_owned();
    let mirror = builder(&url, &prefix("ack-outage"))
        .ack(AckMode::Redis)
        .ack_timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    let mut notices = mirror.notices().unwrap();
    blocking(|| server.kill());

    let err = mirror.put(b"k", b"v").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.message().contains("stays queued"), "{err}");
    assert_eq!(mirror.get(b"k").await.unwrap(), Some(b"v".to_vec()), "memory has the write");
    assert_eq!(mirror.flush().await.unwrap_err().kind(), ErrorKind::Timeout);

    blocking(|| server.restart());
    notice(&mut notices, "Resynced", is_resynced).await;
    mirror.flush().await.unwrap();
    assert_eq!(in_redis(&url, mirror.data_key()).await, Map::from([(b"k".to_vec(), b"v".to_vec())]));
}

/// A worker's request timeout by default (`clusterfy::worker::DEFAULT_WORKER_REQUEST_TIMEOUT`; this crate
/// does not depend on the facade). A worker's save waits for the primary, which waits for Redis.
const WORKER_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_redis_save_with_redis_down_fails_with_the_mirrors_error_before_a_workers_deadline() {
    let Some(mut server) = RedisServer::start_owned_or_skip("ack_redis_save_with_redis_down") else {
        return;
    };
    let url = server.url().to_owned();
    // The default ack timeout: what a user who only picks AckMode::Redis gets.
    let mirror = builder(&url, &prefix("ack-default")).ack(AckMode::Redis).connect().await.unwrap();
    blocking(|| server.kill());

    // A save through the shared storage is one batch.
    let started = Instant::now();
    let save = vec![BatchOp::Put { key: b"config\0".to_vec(), value: b"v".to_vec() }];
    let err = timeout(DEADLINE, mirror.apply_batch(save)).await.unwrap().unwrap_err();
    let waited = started.elapsed();

    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_eq!(
        err.message(),
        "Redis did not confirm the write within 5s (it is unreachable or slow); the memory state has it, \
         and it stays queued for Redis"
    );
    assert_eq!(err.context_value("url"), Some(url.as_str()));
    assert!(waited >= DEFAULT_ACK_TIMEOUT, "failed after {waited:?}, before the ack timeout");
    // Half the worker's deadline: room for the request's own way and for one save queued behind.
    assert!(DEFAULT_ACK_TIMEOUT * 2 <= WORKER_REQUEST_TIMEOUT);
    assert!(waited < WORKER_REQUEST_TIMEOUT, "{waited:?}: a worker would have given up first");
}

#[tokio::test]
async fn an_arc_of_the_mirror_is_a_backend_and_the_mirror_stays_at_hand() {
    let Some(server) = RedisServer::start_or_skip("an_arc_of_the_mirror_is_a_backend") else { return };
    let mirror = Arc::new(builder(server.url(), &prefix("arc")).connect().await.unwrap());
    // What `PrimaryBuilder::storage(impl StorageBackend)` does with the clone it is given.
    let given: Arc<dyn StorageBackend> = Arc::new(Arc::clone(&mirror));
    assert!(given.capabilities().visible_outside && given.notices().is_some());
    given.put(b"through", b"the primary").await.unwrap();
    given.apply_batch(vec![BatchOp::Put { key: b"b".to_vec(), value: b"2".to_vec() }]).await.unwrap();

    mirror.wait_mirrored().await.unwrap();
    let status = mirror.status();
    assert!(status.connected && status.unconfirmed_writes == 0, "{status:?}");
    assert_eq!(in_redis(server.url(), mirror.data_key()).await, in_memory(&mirror).await);
    assert_eq!(given.get(b"through").await.unwrap(), Some(b"the primary".to_vec()));
}

#[tokio::test]
async fn ack_memory_is_not_durable_and_flush_returns_at_once() {
    let Some(server) = RedisServer::start_or_skip("ack_memory_is_not_durable") else { return };
    let mirror = builder(server.url(), &prefix("ack-memory")).connect().await.unwrap();
    assert_eq!(mirror.ack_mode(), AckMode::Memory);
    assert!(!mirror.capabilities().durable && mirror.capabilities().visible_outside);
    mirror.put(b"k", b"v").await.unwrap();
    mirror.flush().await.unwrap();
    mirror.wait_mirrored().await.unwrap();
    assert_eq!(in_redis(server.url(), mirror.data_key()).await, in_memory(&mirror).await);
}

#[tokio::test]
async fn the_state_is_loaded_from_redis_at_start() {
    let Some(server) = RedisServer::start_or_skip("the_state_is_loaded_from_redis_at_start") else { return };
    let prefix = prefix("load");
    let stored: Map = [(&b""[..], &b"empty key"[..]), (b"\0", b""), (b"a.b", b"\xff\0"), (b"\xff", b"x")]
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    let mut hset = redis::cmd("HSET");
    hset.arg(format!("{prefix}:data"));
    for (k, v) in &stored {
        hset.arg(k.as_slice()).arg(v.as_slice());
    }
    hset.exec_async(&mut direct(server.url()).await).await.unwrap();

    let first = builder(server.url(), &prefix).connect().await.unwrap();
    assert_eq!(in_memory(&first).await, stored);
    first.put(b"new", b"1").await.unwrap();
    first.delete(b"\xff").await.unwrap();
    first.wait_mirrored().await.unwrap();
    let expected = in_memory(&first).await;
    drop(first);

    // A primary started again finds the state where the last one left it.
    let second = builder(server.url(), &prefix).connect().await.unwrap();
    assert_eq!(in_memory(&second).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_never_shows_part_of_a_batch() {
    let Some(server) = RedisServer::start_or_skip("redis_never_shows_part_of_a_batch") else { return };
    let url = server.url().to_owned();
    let mirror = builder(&url, &prefix("batch")).connect().await.unwrap();
    let key = mirror.data_key().to_owned();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (done, url) = (Arc::clone(&done), url.clone());
        tokio::spawn(async move {
            let mut redis = direct(&url).await;
            let mut complete_reads = 0;
            while !done.load(Ordering::Relaxed) {
                let seen: Map = redis::cmd("HGETALL").arg(&key).query_async(&mut redis).await.unwrap();
                if seen.is_empty() {
                    continue;
                }
                assert_eq!(seen.len(), 8, "part of a batch: {seen:?}");
                assert!(
                    seen.values().all(|v| Some(v) == seen.values().next()),
                    "two batches mixed: {seen:?}"
                );
                complete_reads += 1;
            }
            complete_reads
        })
    };
    for round in 0..300u16 {
        let ops =
            (0..8u8).map(|k| BatchOp::Put { key: vec![k], value: round.to_le_bytes().to_vec() }).collect();
        mirror.apply_batch(ops).await.unwrap();
        if round.is_multiple_of(20) {
            mirror.wait_mirrored().await.unwrap();
        }
    }
    mirror.wait_mirrored().await.unwrap();
    done.store(true, Ordering::Relaxed);
    assert!(reader.await.unwrap() > 0, "the reader never saw a batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_overwrite_of_the_hash_is_repaired_by_a_resync() {
    let Some(server) = RedisServer::start_or_skip("a_foreign_overwrite_of_the_hash") else { return };
    let mirror = builder(server.url(), &prefix("foreign")).connect().await.unwrap();
    let mut notices = mirror.notices().unwrap();
    mirror.put(b"a", b"1").await.unwrap();
    mirror.wait_mirrored().await.unwrap();

    redis::cmd("SET")
        .arg(mirror.data_key())
        .arg("not a hash")
        .exec_async(&mut direct(server.url()).await)
        .await
        .unwrap();
    mirror.put(b"b", b"2").await.unwrap();
    let refused = notice(&mut notices, "Disconnected", is_disconnected).await;
    assert!(
        matches!(&refused, StorageNotice::Disconnected { detail } if detail.contains("refused mirrored writes")),
        "{refused:?}"
    );
    notice(&mut notices, "Resynced", is_resynced).await;
    mirror.wait_mirrored().await.unwrap();
    assert_eq!(in_redis(server.url(), mirror.data_key()).await, in_memory(&mirror).await);
}

#[tokio::test]
async fn a_key_that_is_not_a_hash_stops_the_start_with_advice() {
    let Some(server) = RedisServer::start_or_skip("a_key_that_is_not_a_hash") else { return };
    let prefix = prefix("wrongtype");
    redis::cmd("SET")
        .arg(format!("{prefix}:data"))
        .arg("x")
        .exec_async(&mut direct(server.url()).await)
        .await
        .unwrap();
    let err = builder(server.url(), &prefix).connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Storage);
    assert!(err.message().contains("choose another key_prefix"), "{err}");
    assert_eq!(err.context_value("key"), Some(format!("{prefix}:data").as_str()));
}

#[tokio::test]
async fn unix_socket_urls_work() {
    let Some(server) = RedisServer::start_owned_or_skip("unix_socket_urls_work") else { return };
    let unix = server.unix_url().unwrap();
    let mirror = builder(&unix, &prefix("unix")).ack(AckMode::Redis).connect().await.unwrap();
    mirror.put(b"over", b"the socket").await.unwrap();
    assert_eq!(in_redis(server.url(), mirror.data_key()).await, in_memory(&mirror).await);
}

#[tokio::test]
async fn unreachable_redis_at_start_is_a_clear_error_without_the_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = RedisMirror::builder(format!("redis://:hunter2@127.0.0.1:{port}"))
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Storage);
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("the state cannot be loaded"), "{shown}");
    assert!(shown.contains(&format!("redis://:***@127.0.0.1:{port}")), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[tokio::test]
async fn bad_urls_are_config_errors_without_the_password() {
    for url in ["rediss://:hunter2@127.0.0.1:1#unknown-fragment", "http://:hunter2@127.0.0.1:1", "hunter2"] {
        let err = RedisMirror::connect(url).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{url}: {err}");
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{err}");
    }
    // TLS options need a TLS URL.
    let err =
        RedisMirror::builder("redis://:hunter2@127.0.0.1:1").tls_ca_cert("pem").connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.message().contains("rediss://"), "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err}");
    // rediss:// is supported: nobody listening is an unreachable server, not a bad URL.
    let err = RedisMirror::connect("rediss://127.0.0.1:1").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Storage, "{err}");
}

#[test]
fn connect_outside_a_tokio_runtime_is_a_config_error() {
    let err = futures::executor::block_on(RedisMirror::connect("redis://127.0.0.1:1")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("tokio runtime"), "{err}");
}
