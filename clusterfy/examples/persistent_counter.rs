//! Workers increment a shared counter kept in sled: stop the program and run it again, and the
//! count goes on from where it was.
//!
//! `cargo run --example persistent_counter --features storage-sled`
//! (data in `$TMPDIR/clusterfy-persistent-counter`, or the directory given as first argument).

use std::path::PathBuf;
use std::time::Duration;

use clusterfy::storage::SledStorage;
use clusterfy::{Command, Primary, Result, Role, Worker, primary::WorkerOptions, role, value};
use serde::{Deserialize, Serialize};

/// Asks a worker to add one to the counter `times` times; answers the last value it wrote.
#[derive(Serialize, Deserialize, Command)]
#[command(name = "count_up", target = worker, reply = i64)]
struct CountUp {
    times: u32,
}

const WORKERS: [&str; 3] = ["Paul", "Sarah", "John"];
const TIMES: u32 = 100;

#[tokio::main]
async fn main() -> Result<()> {
    match role() {
        Role::Primary => primary().await,
        Role::Worker => worker().await,
    }
}

async fn primary() -> Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map_or_else(|| std::env::temp_dir().join("clusterfy-persistent-counter"), PathBuf::from);
    let storage = SledStorage::open(&dir).await?;
    let primary = Primary::builder().storage(storage).initial_storage(value!({"counter": 0})).build().await?;
    let before: i64 = primary.storage().retrieve("counter").await?.unwrap_or(0);
    println!("counter in {} starts at {before}", dir.display());

    for name in WORKERS {
        primary.fork(name, WorkerOptions::default()).await?;
    }
    primary.ready().await?;
    let counting = WORKERS.map(|name| {
        let primary = primary.clone();
        async move { primary.run(name, CountUp { times: TIMES }).await }
    });
    for result in futures::future::join_all(counting).await {
        result?;
    }

    let after: i64 = primary.storage().retrieve("counter").await?.unwrap_or(0);
    println!("{} workers added {TIMES} each: counter is now {after}", WORKERS.len());
    primary.shutdown(Duration::from_secs(2)).await?;
    println!("run me again: the count goes on from {after}");
    Ok(())
}

async fn worker() -> Result<()> {
    let worker = Worker::builder()
        .command(|count: CountUp, ctx| async move {
            let storage = ctx.worker().storage();
            let mut last = 0;
            for _ in 0..count.times {
                // update() retries on a concurrent change, so no increment is lost between workers.
                last = storage.update::<i64, _>("counter", |n| Some(n.unwrap_or(0) + 1)).await?.unwrap_or(0);
            }
            Ok(last)
        })
        .connect()
        .await?;
    worker.shutdown_requested().await;
    Ok(())
}
