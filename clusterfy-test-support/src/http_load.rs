//! A bounded HTTP/1.1 load generator on loopback: a fixed number of keep-alive connections, each
//! sending one GET after the other, until a request count or a stop signal; every outcome is
//! counted, none is retried by this code.
//!
//! The client is hyper's pooled client, as a real service would use it: it opens a new
//! connection when the server answers `Connection: close`, and resends a request only when the
//! pool knew the connection was closed before the request was written (hyper's own rule).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

/// What a load run saw.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Requests answered with 200.
    pub ok: u64,
    /// Requests answered with another status, or whose answer broke off.
    pub failed: u64,
    /// Requests whose connection could not be made (refused, reset while connecting).
    pub connect_errors: u64,
    /// Latency of every answered request, sorted.
    pub latencies: Vec<Duration>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Answers per server, keyed by the first word after "from " in the body (a worker's name).
    pub by_server: BTreeMap<String, u64>,
    /// The first few errors, for the failure message.
    pub errors: Vec<String>,
}

impl LoadReport {
    /// Answered requests per second.
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency at quantile `q` (0.0 to 1.0) of the answered requests.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let at = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[at]
    }

    fn merge(&mut self, other: LoadReport) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.connect_errors += other.connect_errors;
        self.latencies.extend(other.latencies);
        for (server, n) in other.by_server {
            *self.by_server.entry(server).or_default() += n;
        }
        for err in other.errors {
            if self.errors.len() < 5 {
                self.errors.push(err);
            }
        }
    }
}

/// Sends GET `url` over `connections` concurrent keep-alive connections until `max_requests`
/// were sent in total or `stop` turns true, whichever comes first.
pub async fn run(
    url: &str,
    connections: usize,
    max_requests: u64,
    stop: watch::Receiver<bool>,
) -> LoadReport {
    load(url, connections, max_requests, stop, false).await
}

/// [`run`], but every request asks for `Connection: close`: each goes over a new connection,
/// which the server's kernel hands to whichever worker accepts first.
pub async fn run_closing(
    url: &str,
    clients: usize,
    max_requests: u64,
    stop: watch::Receiver<bool>,
) -> LoadReport {
    load(url, clients, max_requests, stop, true).await
}

async fn load(
    url: &str,
    connections: usize,
    max_requests: u64,
    stop: watch::Receiver<bool>,
    close: bool,
) -> LoadReport {
    let uri: hyper::Uri = url.parse().expect("a valid URL");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(connections).build(connector);
    let budget = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(max_requests));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (client, uri, budget, stop) = (client.clone(), uri.clone(), budget.clone(), stop.clone());
        tasks.spawn(async move {
            let mut report = LoadReport::default();
            loop {
                if *stop.borrow() {
                    break;
                }
                let taken = budget.fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                );
                if taken.is_err() {
                    break;
                }
                let sent = Instant::now();
                let mut request = hyper::Request::get(uri.clone());
                if close {
                    request = request.header(hyper::header::CONNECTION, "close");
                }
                let request = request.body(Empty::new()).expect("a GET request");
                match client.request(request).await {
                    Ok(response) => {
                        let ok = response.status() == hyper::StatusCode::OK;
                        match response.into_body().collect().await {
                            Ok(body) if ok => {
                                report.ok += 1;
                                report.latencies.push(sent.elapsed());
                                let body = String::from_utf8_lossy(&body.to_bytes()).into_owned();
                                let server =
                                    body.split("from ").nth(1).and_then(|r| r.split_whitespace().next());
                                *report.by_server.entry(server.unwrap_or("?").to_owned()).or_default() += 1;
                            }
                            Ok(_) => {
                                report.failed += 1;
                                note(&mut report, "a status other than 200".to_owned());
                            }
                            Err(err) => {
                                report.failed += 1;
                                note(&mut report, format!("reading the answer: {err}"));
                            }
                        }
                    }
                    Err(err) if err.is_connect() => {
                        report.connect_errors += 1;
                        note(&mut report, format!("connecting: {err:?}"));
                    }
                    Err(err) => {
                        report.failed += 1;
                        note(&mut report, format!("request: {err:?}"));
                    }
                }
            }
            report
        });
    }
    let mut total = LoadReport::default();
    while let Some(done) = tasks.join_next().await {
        total.merge(done.expect("a load task panicked"));
    }
    total.elapsed = started.elapsed();
    total.latencies.sort_unstable();
    total
}

fn note(report: &mut LoadReport, error: String) {
    if report.errors.len() < 5 {
        report.errors.push(error);
    }
}
