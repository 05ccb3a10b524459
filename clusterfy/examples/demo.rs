//! Replays the original clusterfy demo: a primary with four named workers, commands between
//! them, shared storage, a crash with revival, and a graceful shutdown.
//!
//! Run it with `cargo run --example demo` (Unix sockets), or over the workers' stdin/stdout with
//! `cargo run --example demo -- --transport stdio`. The same binary is the primary and,
//! re-executed by `fork` with the same arguments, each worker.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clusterfy::transport::{StdioTransport, UdsTransport};
use clusterfy::{
    Command, Primary, Result, Role, Worker, events::Event, primary::WorkerOptions, role, value,
    worker::WorkerStatus,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// Asks a worker for its clock.
#[derive(Serialize, Deserialize, Command)]
#[command(name = "get_timestamp", target = worker, reply = u128)]
struct GetTimestamp;

/// Asks a worker to get the timestamp of another worker (worker -> worker, through the primary).
#[derive(Serialize, Deserialize, Command)]
#[command(name = "ask_timestamp_of", target = worker, reply = u128)]
struct AskTimestampOf {
    other: String,
}

/// Asks a worker to save a greeting to `test` and read it back.
#[derive(Serialize, Deserialize, Command)]
#[command(name = "save_greeting", target = worker, reply = Option<String>)]
struct SaveGreeting {
    text: String,
}

/// Asks a worker to read `test`.
#[derive(Serialize, Deserialize, Command)]
#[command(name = "read_greeting", target = worker, reply = Option<String>)]
struct ReadGreeting;

/// Makes a worker crash, to show revival.
#[derive(Serialize, Deserialize, Command)]
#[command(name = "crash", target = worker, reply = ())]
struct Crash;

fn now_millis() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match role() {
        Role::Primary => primary().await,
        Role::Worker => worker().await,
    }
}

/// A primary builder with the transport named by `--transport uds|stdio` (default uds).
fn builder_with_chosen_transport() -> Result<clusterfy::PrimaryBuilder> {
    let args: Vec<String> = std::env::args().collect();
    let name = args
        .iter()
        .position(|a| a == "--transport")
        .and_then(|i| args.get(i + 1))
        .map_or("uds", String::as_str);
    match name {
        "uds" => Ok(Primary::builder().transport(UdsTransport::new())),
        "stdio" => Ok(Primary::builder().transport(StdioTransport::new())),
        other => Err(clusterfy::Error::new(
            clusterfy::ErrorKind::InvalidInput,
            format!("unknown transport {other:?}; use --transport uds or --transport stdio"),
        )),
    }
}

async fn primary() -> Result<()> {
    let primary =
        // `clusterfy ls` (crate clusterfy-cli) shows its workers while it runs.
        builder_with_chosen_transport()?.initial_storage(value!({"test": {"some": 1}})).control("demo").build().await?;

    let mut events = primary.events();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Event::Ready { worker } => println!("[primary] event: {worker} is ready"),
                Event::Status { worker, status } => println!("[primary] event: {worker} is now {status}"),
                Event::Exit { worker, reason } => println!("[primary] event: {worker} exited ({reason})"),
                Event::Revived { worker, restarts } => {
                    println!("[primary] event: {worker} revived ({restarts}x)")
                }
                _ => {}
            }
        }
    });

    for name in ["Paul", "Sarah"] {
        primary.fork(name, WorkerOptions::default()).await?;
    }
    primary.fork("John", WorkerOptions::revive()).await?;
    primary.fork("Michael", WorkerOptions::default()).await?;
    primary.ready().await?;
    println!("[primary] all {} workers are ready", primary.workers().len());

    let stamp = primary.run("Paul", GetTimestamp).await?;
    println!("[primary] Paul's timestamp: {stamp}");

    for reply in primary.broadcast(GetTimestamp).await? {
        println!("[primary] timestamp from {}: {}", reply.worker.name, reply.result?);
    }

    let stamp = primary.run("Sarah", AskTimestampOf { other: "Michael".into() }).await?;
    println!("[primary] Sarah asked Michael for his timestamp: {stamp}");

    let echoed = primary.run("Paul", SaveGreeting { text: "Hello World!".into() }).await?;
    println!("[primary] Paul saved and read back test = {echoed:?}");
    let read = primary.run("Sarah", ReadGreeting).await?;
    println!("[primary] Sarah reads test = {read:?}");

    println!("[primary] John crashes on purpose and is revived");
    let mut watch = primary.events();
    let _ = primary.run("John", Crash).await;
    while let Some(event) = watch.next().await {
        if matches!(&event, Event::Ready { worker } if worker.name == "John") {
            break;
        }
    }
    let stamp = primary.run("John", GetTimestamp).await?;
    println!("[primary] revived John answers: {stamp}");

    primary.print_statistics();
    println!("[primary] shutting down all workers");
    for (worker, outcome) in primary.shutdown(Duration::from_secs(2)).await? {
        println!("[primary] {worker}: {outcome:?}");
    }
    println!("Running workers: {}", primary.statistics().running());
    Ok(())
}

async fn worker() -> Result<()> {
    let worker = Worker::builder()
        .command(|_: GetTimestamp, _| async { Ok(now_millis()) })
        .command(|ask: AskTimestampOf, ctx| async move {
            ctx.worker().run(ask.other.as_str(), GetTimestamp).await
        })
        .command(|save: SaveGreeting, ctx| async move {
            let worker = ctx.worker();
            worker.set_status(WorkerStatus::Processing).await?;
            worker.save("test", &save.text).await?;
            let back = worker.retrieve::<String>("test").await?;
            worker.set_status(WorkerStatus::Idle).await?;
            Ok(back)
        })
        .command(|_: ReadGreeting, ctx| async move { ctx.worker().retrieve::<String>("test").await })
        .command(|_: Crash, _| async { std::process::exit(3) })
        .on_shutdown(|reason| async move { eprintln!("[worker] shutdown hook ran ({reason:?})") })
        .connect()
        .await?;
    println!("[worker] {} (#{}) is ready", worker.name(), worker.id());
    // Work arrives as commands until the primary shuts this worker down; returning then ends
    // the process cleanly.
    worker.shutdown_requested().await;
    Ok(())
}
