//! The HTTP server of the HTTP rows, written after `clusterfy/examples/http_cluster.rs`: an
//! HTTP/1 hyper server whose one handler bumps a hit counter and answers which server it is,
//! and which, once asked to stop, stops accepting and answers with `Connection: close` for
//! [`DRAIN`], then closes what is still open once its current request is answered. A Clusterfy
//! worker ([`serve_worker`]) keeps the counter in the shared storage, on the listener the primary
//! shares; the baseline ([`raw_http_server`], started with
//! [`RAW_HTTP_FLAG`](crate::options::RAW_HTTP_FLAG)) is one plain tokio process with the counter
//! in an atomic.

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use clusterfy::{Worker, listen::Listener};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::net::unix::pipe;
use tokio::task::JoinSet;

use crate::BenchResult;

/// The name of the shared listener of the HTTP clusters.
pub(crate) const HTTP_LISTENER: &str = "http";
/// A worker whose name starts with this serves HTTP ([`serve_worker`]) instead of measuring.
pub(crate) const HTTP_WORKER_PREFIX: &str = "http-";
/// The group of the HTTP workers (`Primary::fork_group`): its members are named with
/// [`HTTP_WORKER_PREFIX`].
pub(crate) const HTTP_GROUP: &str = "http";
/// The path of the hit counter in the shared storage.
pub(crate) const HITS_PATH: &str = "hits";
/// A request for this URL path is answered without counting it (the `http_rps_plain` row).
pub(crate) const PLAIN_PATH: &str = "/plain";
/// A request for this URL path spends [`CPU_PER_REQUEST`] of the thread's CPU time first, and
/// is not counted (the `http_rps_cpu_*` rows).
pub(crate) const CPU_PATH: &str = "/cpu";
/// What a request for [`CPU_PATH`] costs.
const CPU_PER_REQUEST: Duration = Duration::from_micros(200);
/// The name the baseline answers with.
pub(crate) const RAW_HTTP_NAME: &str = "raw";
/// After a stop request, how long open connections may still send a request (answered with
/// `Connection: close`, so the client opens its next connection to another worker).
const DRAIN: Duration = Duration::from_millis(1000);
/// Then the connections still open are closed once their current request is answered.
const CLOSE: Duration = Duration::from_millis(500);

/// Where the hit counter lives.
#[derive(Clone)]
enum Hits {
    /// At [`HITS_PATH`] in the cluster's shared storage, bumped with `Storage::increment`.
    Shared(Worker),
    /// In this process.
    Local(Arc<AtomicU64>),
}

/// A Clusterfy worker's HTTP server on the shared listener, until the primary stops it.
pub(crate) async fn serve_worker(worker: &Worker) -> BenchResult<()> {
    let listener = worker.listener(HTTP_LISTENER)?;
    let name = worker.name().to_owned();
    serve(listener, name, Hits::Shared(worker.clone()), worker.shutdown_requested()).await;
    Ok(())
}

/// The baseline: binds `127.0.0.1:0`, writes the bound address as a line on its stdout, and
/// serves until its stdin (a pipe, read through a tokio pipe on a duplicate of fd 0) closes.
pub(crate) async fn raw_http_server() -> BenchResult<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", listener.local_addr()?)?;
    stdout.flush()?;
    drop(stdout);
    let mut stdin = pipe::Receiver::from_owned_fd(nix::unistd::dup(std::io::stdin())?)?;
    let stdin_closed = async move {
        let mut byte = [0u8; 1];
        while !matches!(stdin.read(&mut byte).await, Ok(0) | Err(_)) {}
    };
    let hits = Hits::Local(Arc::new(AtomicU64::new(0)));
    serve(Listener::Tcp(listener), RAW_HTTP_NAME.to_owned(), hits, stdin_closed).await;
    Ok(())
}

/// Accepts on `listener` until `stop` resolves, then drains as the example does.
async fn serve(listener: Listener, name: String, hits: Hits, stop: impl Future<Output = ()>) {
    let (name, draining) = (Arc::<str>::from(name), Arc::new(AtomicBool::new(false)));
    let (close, _) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok(stream) = accepted else { continue };
                let (hits, name, draining) = (hits.clone(), Arc::clone(&name), Arc::clone(&draining));
                let service = hyper::service::service_fn(move |request| {
                    answer(hits.clone(), Arc::clone(&name), Arc::clone(&draining), request)
                });
                let mut close = close.subscribe();
                connections.spawn(async move {
                    let connection =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(connection);
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        () = async { let _ = close.wait_for(|close| *close).await; } => {
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                    }
                });
            }
            () = &mut stop => break,
        }
    }
    // Stop accepting: the other workers accept on the same port, so no connection is refused.
    drop(listener);
    draining.store(true, Ordering::SeqCst);
    let all_closed = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN, all_closed).await.is_err() {
        let _ = close.send(true);
        let all_closed = async { while connections.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(CLOSE, all_closed).await;
    }
}

/// Spins until this thread used `cpu` of CPU time (not wall time: a thread that waits for a
/// core does not count the wait as work).
fn spend_cpu(cpu: Duration) {
    let used = || {
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
            .map(Duration::from)
            .unwrap_or_default()
    };
    let start = used();
    while used().saturating_sub(start) < cpu {
        std::hint::spin_loop();
    }
}

async fn answer(
    hits: Hits,
    name: Arc<str>,
    draining: Arc<AtomicBool>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let bumped = match &hits {
        // The plain handler's row: the same server without the counter.
        _ if request.uri().path() == PLAIN_PATH => Ok(0),
        _ if request.uri().path() == CPU_PATH => {
            spend_cpu(CPU_PER_REQUEST);
            Ok(0)
        }
        Hits::Shared(worker) => worker.storage().increment(HITS_PATH, 1).await,
        Hits::Local(count) => Ok(count.fetch_add(1, Ordering::Relaxed) as i64 + 1),
    };
    let body = match bumped {
        Ok(hits) => format!("hello from {name} (pid {}), hit #{hits}\n", std::process::id()),
        Err(err) => format!("hello from {name}; the hit counter failed: {err}\n"),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    if draining.load(Ordering::SeqCst) {
        // This server is stopping: the client's next request goes over a new connection.
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response)
}
