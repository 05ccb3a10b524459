//! An HTTP server in N worker processes on one port (cluster mode): the primary binds the port
//! once, every worker inherits it and accepts on it, a hit counter lives in the shared storage,
//! a crashed worker is revived while the others go on serving, and SIGHUP replaces the workers
//! one by one without a failed request.
//!
//! Run it with `cargo run --example http_cluster` (options: `--workers N`, default the number
//! of cores; `--listen ADDRESS`, default `127.0.0.1:8080`; `--balance per-worker|handover|shared`,
//! how connections are spread, default per worker for TCP), then `curl http://127.0.0.1:8080/`.
//! `kill -HUP <primary pid>` reloads every worker, `kill -TTIN` / `kill -TTOU` add and remove one
//! (as `clusterfy scale http N` does); Ctrl-C shuts the cluster down gracefully.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clusterfy::{
    Primary, Result, Role, Worker,
    listen::{Balance, ListenOptions},
    primary::WorkerOptions,
    role, value,
};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::task::JoinSet;

/// After a shutdown request, how long open connections may still send a request (answered with
/// `Connection: close`, so the client opens its next connection to another worker).
const DRAIN: Duration = Duration::from_millis(1000);
/// Then the connections still open are closed once their current request is answered.
const CLOSE: Duration = Duration::from_millis(500);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    match role() {
        Role::Primary => primary().await,
        Role::Worker => worker().await,
    }
}

struct Settings {
    workers: usize,
    listen: String,
    listen_options: ListenOptions,
}

fn settings() -> std::result::Result<Settings, String> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut settings = Settings {
        workers: cores,
        listen: "127.0.0.1:8080".to_owned(),
        listen_options: ListenOptions::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--workers" => {
                let n = value("--workers")?;
                settings.workers = n
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or(format!("--workers {n:?}: give a number from 1"))?;
            }
            "--listen" => settings.listen = value("--listen")?,
            "--balance" => {
                let balance = match value("--balance")?.as_str() {
                    "per-worker" => Balance::PerWorker,
                    "handover" => Balance::Handover,
                    "shared" => Balance::Shared,
                    other => return Err(format!("--balance {other:?}: give per-worker, handover or shared")),
                };
                settings.listen_options = settings.listen_options.balance(balance);
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}; use --workers N, --listen ADDRESS and --balance per-worker|handover|shared"
                ));
            }
        }
    }
    Ok(settings)
}

async fn primary() -> Result<()> {
    let settings = match settings() {
        Ok(settings) => settings,
        Err(usage) => {
            eprintln!("http_cluster: {usage}");
            std::process::exit(2);
        }
    };
    let primary = Primary::builder()
        .listen_with("http", &settings.listen, settings.listen_options)
        .initial_storage(value!({ "hits": 0 }))
        // Operate it from the shell: `clusterfy ls`, `clusterfy reload`, `clusterfy events`.
        .control("http_cluster")
        .build()
        .await?;
    // Workers http-1 .. http-N: `clusterfy scale http 4`, or SIGTTIN and SIGTTOU, change N.
    primary.fork_group("http", settings.workers, WorkerOptions::revive()).await?;
    primary.ready().await?;
    let address = primary.listener_addr("http").map_or_else(|| settings.listen.clone(), |a| a.to_string());
    println!(
        "listening on http://{address}/ with {} workers (primary pid {})",
        settings.workers,
        std::process::id()
    );
    println!("SIGHUP (or `clusterfy reload`) reloads the workers one by one; Ctrl-C stops the cluster");
    primary.print_statistics();
    // SIGINT and SIGTERM shut the cluster down and end the process; SIGHUP reloads it.
    std::future::pending::<()>().await;
    Ok(())
}

async fn worker() -> Result<()> {
    // Ready once it can serve: a reload waits for that before it stops an old worker.
    let worker = Worker::builder().manual_ready().connect().await?;
    // Whatever the balance: a socket of its own, the shared one, or connections handed over.
    let listener = worker.listener("http")?;
    worker.ready().await?;
    let draining = Arc::new(AtomicBool::new(false));
    let (close, _) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok(stream) => stream,
                    // Out of descriptors, say: wait a moment instead of spinning on the error.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let service = {
                    let (worker, draining) = (worker.clone(), Arc::clone(&draining));
                    hyper::service::service_fn(move |request| answer(worker.clone(), Arc::clone(&draining), request))
                };
                let mut close = close.subscribe();
                connections.spawn(async move {
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(connection);
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        _ = async { let _ = close.wait_for(|close| *close).await; } => {
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                    }
                });
            }
            () = worker.shutdown_requested() => break,
        }
    }
    // Stop accepting: the other workers accept on the same socket, so no connection is refused.
    drop(listener);
    draining.store(true, Ordering::SeqCst);
    let all_closed = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN, all_closed).await.is_err() {
        let _ = close.send(true);
        let all_closed = async { while connections.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(CLOSE, all_closed).await;
    }
    Ok(())
}

async fn answer(
    worker: Worker,
    draining: Arc<AtomicBool>,
    _request: Request<Incoming>,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    // One round trip, run by the primary in one step: no retry, however many workers count.
    let hits = worker.storage().increment("hits", 1).await;
    let body = match hits {
        Ok(hits) => format!("hello from {} (pid {}), hit #{hits}\n", worker.name(), std::process::id()),
        Err(err) => format!("hello from {}; the hit counter failed: {err}\n", worker.name()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    if draining.load(Ordering::SeqCst) {
        // This worker is stopping: the client's next request goes over a new connection.
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response)
}
