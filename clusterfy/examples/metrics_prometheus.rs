//! The cluster's metrics (feature `metrics`) served for Prometheus: run it with
//! `cargo run --example metrics_prometheus --features metrics`, then
//! `curl http://127.0.0.1:9000/metrics` while the workers save, run commands and get revived.

use std::time::Duration;

use clusterfy::{Command, Primary, Result, Role, Worker, primary::WorkerOptions, role, value};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde::{Deserialize, Serialize};

/// Asks a worker to count.
#[derive(Serialize, Deserialize, Command)]
#[command(name = "tick", target = worker, reply = u64)]
struct Tick;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    match role() {
        Role::Primary => primary().await,
        Role::Worker => worker().await,
    }
}

async fn primary() -> Result<()> {
    // Any exporter of the `metrics` facade works; this one answers GET /metrics on port 9000.
    PrometheusBuilder::new().with_http_listener(([127, 0, 0, 1], 9000)).install().map_err(|e| {
        clusterfy::Error::new(clusterfy::ErrorKind::Io, format!("starting the exporter: {e}"))
    })?;
    let primary = Primary::builder()
        .initial_storage(value!({ "ticks": 0 }))
        .control("metrics_prometheus")
        .build()
        .await?;
    for name in ["counter-a", "counter-b"] {
        primary.fork(name, WorkerOptions::revive()).await?;
    }
    primary.ready().await?;
    println!("metrics on http://127.0.0.1:9000/metrics; Ctrl-C stops");
    let mut ticks = tokio::time::interval(Duration::from_millis(500));
    loop {
        ticks.tick().await;
        for reply in primary.broadcast(Tick).await? {
            if let Err(err) = reply.result {
                eprintln!("{}: {err}", reply.worker);
            }
        }
    }
}

async fn worker() -> Result<()> {
    let worker = Worker::builder()
        .command(|_: Tick, ctx| async move {
            let ticks =
                ctx.worker().storage().update::<u64, _>("ticks", |n| Some(n.unwrap_or(0) + 1)).await?;
            Ok(ticks.unwrap_or(0))
        })
        .connect()
        .await?;
    worker.shutdown_requested().await;
    Ok(())
}
