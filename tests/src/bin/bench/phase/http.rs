//! HTTP requests per second through Clusterfy clusters of [`http_workers`] workers and of one
//! worker against one plain tokio process serving the same handler, and a full reload of the
//! N-worker cluster under that load.

use std::process::Stdio;
use std::time::Duration;

use clusterfy::{
    Primary,
    listen::{Balance, ListenAddr, ListenOptions},
    primary::{ReloadOptions, WorkerOptions},
};
use clusterfy_test_support::http_load::{self, LoadReport};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{oneshot, watch};

use crate::BenchResult;
use crate::cluster::{ClusterStorage, ClusterTransport, cluster_builder};
use crate::http_server::{CPU_PATH, HITS_PATH, HTTP_GROUP, HTTP_LISTENER, PLAIN_PATH};
use crate::options::{Flavor, MULTI_THREAD_FLAG, Options, Plan, RAW_HTTP_FLAG, build_runtime};
use crate::sampling::Samples;

/// Connections of the load generator.
pub(crate) const HTTP_CONNECTIONS: usize = 32;
/// The longest a reload may take before the run fails.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// Workers of the N-worker cluster: one per core, at least 2.
pub(crate) fn http_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).max(2)
}

/// The baseline process, a one-worker and an N-worker cluster, all started once. In each
/// repetition: a steady load on each (the baseline first), then a load on the N-worker cluster
/// for exactly as long as `Primary::reload` takes to replace all its workers.
pub(crate) async fn run_http_phase(options: &Options, plan: &Plan, samples: &mut Samples) -> BenchResult<()> {
    let (flavor, workers) = (options.flavor, http_workers());
    let raw = RawHttp::spawn(flavor).await?;
    let mut one = HttpCluster::start(1, ListenOptions::new()).await?;
    let mut many = HttpCluster::start(workers, ListenOptions::new()).await?;
    let mut shared = HttpCluster::start(workers, ListenOptions::new().balance(Balance::Shared)).await?;
    let mut handover = HttpCluster::start(workers, ListenOptions::new().balance(Balance::Handover)).await?;
    for repetition in 1..=plan.repetitions {
        eprintln!("[bench] http repetition {repetition}/{}", plan.repetitions);
        let load = Steady { flavor, plan, repetition };
        let (report, _) = load.run(&raw.url, "raw_http_rps", samples).await?;
        samples.add("raw_http_rps", report.per_second());
        let report = one.steady(&load, "http_rps_1", samples).await?;
        samples.add("http_rps_1", report.per_second());
        let report = many.steady(&load, "http_rps_counter", samples).await?;
        samples.add("http_rps_counter", report.per_second());
        samples.add_millis("http_steady_p99", report.quantile(0.99));
        samples.add("http_steady_failed", failures(&report));
        note_balance(samples, ["http_busiest", "http_fair_share"], workers, &report);
        let on_shared = shared.steady(&load, "http_rps_shared_accept", samples).await?;
        note_balance(samples, ["http_busiest_shared", "http_fair_share_shared"], workers, &on_shared);
        let handed = handover.steady(&load, "http_rps_counter_handover", samples).await?;
        samples.add("http_rps_counter_handover", handed.per_second());
        note_balance(samples, ["http_busiest_handover", "http_fair_share_handover"], workers, &handed);
        let plain = many.steady_uncounted(&load, PLAIN_PATH, "http_rps_plain", samples).await?;
        samples.add("http_rps_plain", plain.per_second());
        samples.add("http_rps_n", plain.per_second());
        let plain = handover.steady_uncounted(&load, PLAIN_PATH, "http_rps_n_handover", samples).await?;
        samples.add("http_rps_n_handover", plain.per_second());
        let plain = shared.steady_uncounted(&load, PLAIN_PATH, "http_rps_n_shared", samples).await?;
        samples.add("http_rps_n_shared", plain.per_second());
        let cpu_1 = one.steady_uncounted(&load, CPU_PATH, "http_rps_cpu_1", samples).await?;
        samples.add("http_rps_cpu_1_times_n", cpu_1.per_second() * workers as f64);
        let cpu_n = many.steady_uncounted(&load, CPU_PATH, "http_rps_cpu_n", samples).await?;
        samples.add("http_rps_cpu_n", cpu_n.per_second());
        // A new connection per request: the accept path, balanced against shared.
        let fresh = many.new_connections(&load, "http_new_conn", samples).await?;
        samples.add_millis("http_new_conn_p99", fresh.quantile(0.99));
        let fresh = shared.new_connections(&load, "http_new_conn_shared", samples).await?;
        samples.add_millis("http_new_conn_p99_shared", fresh.quantile(0.99));
        let fresh = handover.new_connections(&load, "http_new_conn_handover", samples).await?;
        samples.add_millis("http_new_conn_p99_handover", fresh.quantile(0.99));
        let scaled = many.scale_under_load(flavor).await?;
        note_failures(samples, "http_scale", repetition, &scaled);
        samples.add("http_scale_failed", failures(&scaled));
        let scaled = handover.scale_under_load(flavor).await?;
        note_failures(samples, "http_scale_handover", repetition, &scaled);
        samples.add("http_scale_failed_handover", failures(&scaled));
        let other_policies = [
            (&mut handover, "http_reload_handover", "http_reload_failed_handover"),
            (&mut shared, "http_reload_shared", "http_reload_failed_shared"),
        ];
        for (cluster, what, row) in other_policies {
            let reload = cluster.reload_under_load(flavor).await?;
            note_failures(samples, what, repetition, &reload);
            samples.add(row, failures(&reload));
        }
        let reload = many.reload_under_load(flavor).await?;
        note_failures(samples, "http_reload", repetition, &reload);
        let window = reload.elapsed.as_secs_f64();
        samples.add("http_reload_served", reload.ok as f64);
        samples.add("http_steady_served", report.per_second() * window);
        samples.add("http_reload_failed", failures(&reload));
        samples.add_millis("http_reload_p99", reload.quantile(0.99));
        samples.add("http_reload_window_s", window);
        if repetition == plan.repetitions {
            samples.notes.push(format!(
                "  http answers per server in the last repetition: steady load on {workers} workers {}; \
                 during the reload {}",
                spread(&report),
                spread(&reload)
            ));
        }
    }
    raw.finish().await?;
    one.finish(samples).await?;
    many.finish(samples).await?;
    shared.finish(samples).await?;
    handover.finish(samples).await?;
    Ok(())
}

/// Failed requests plus connection errors.
fn failures(report: &LoadReport) -> f64 {
    (report.failed + report.connect_errors) as f64
}

/// The busiest server's answers (as `busiest`) beside a fair share of them (as `fair`: all
/// answers over `workers`).
fn note_balance(
    samples: &mut Samples,
    [busiest, fair]: [&'static str; 2],
    workers: usize,
    report: &LoadReport,
) {
    let most = report.by_server.values().copied().max().unwrap_or(0);
    samples.add(busiest, most as f64);
    samples.add(fair, report.ok as f64 / workers as f64);
}

/// `<server> <answers>, ...`.
fn spread(report: &LoadReport) -> String {
    let servers: Vec<String> = report.by_server.iter().map(|(server, n)| format!("{server} {n}")).collect();
    servers.join(", ")
}

/// Says in the report, with the errors the load generator kept, that requests failed.
fn note_failures(samples: &mut Samples, what: &str, repetition: usize, report: &LoadReport) {
    if report.failed + report.connect_errors > 0 {
        samples.notes.push(format!(
            "WARNING: {what} (repetition {repetition}): {} requests failed and {} could not connect ({} answered); \
             first errors: {:?}",
            report.failed, report.connect_errors, report.ok, report.errors
        ));
    }
}

/// A steady load of one repetition.
struct Steady<'a> {
    flavor: Flavor,
    plan: &'a Plan,
    repetition: usize,
}

impl Steady<'_> {
    /// A warm-up load of a tenth of [`Plan::http_load`] and [`Plan::http_requests`], then the
    /// measured one (failures of either noted under `what`); the measured one's report, and the
    /// answers of both.
    async fn run(&self, url: &str, what: &str, samples: &mut Samples) -> BenchResult<(LoadReport, u64)> {
        let (flavor, plan) = (self.flavor, self.plan);
        let warmup = Load::start(flavor, url, plan.http_requests / 10)?.run_for(plan.http_load / 10).await?;
        note_failures(samples, &format!("{what} warm-up"), self.repetition, &warmup);
        let report = Load::start(flavor, url, plan.http_requests)?.run_for(plan.http_load).await?;
        note_failures(samples, what, self.repetition, &report);
        let answered = warmup.ok + report.ok;
        Ok((report, answered))
    }
}

/// One run of [`http_load::run`] over [`HTTP_CONNECTIONS`], on a thread and a runtime (of the
/// run's flavor) of its own, so that it shares no thread with the primary. Stopped when dropped.
struct Load {
    stop: watch::Sender<bool>,
    report: oneshot::Receiver<Result<LoadReport, String>>,
}

impl Load {
    fn start(flavor: Flavor, url: &str, max_requests: u64) -> BenchResult<Load> {
        Load::start_with(flavor, url, max_requests, false)
    }

    /// [`Load::start`] with a new connection per request.
    fn start_closing(flavor: Flavor, url: &str, max_requests: u64) -> BenchResult<Load> {
        Load::start_with(flavor, url, max_requests, true)
    }

    fn start_with(flavor: Flavor, url: &str, max_requests: u64, closing: bool) -> BenchResult<Load> {
        let (stop, stopped) = watch::channel(false);
        let (done, report) = oneshot::channel();
        let url = url.to_owned();
        std::thread::Builder::new().name("bench-http-load".to_owned()).spawn(move || {
            let result = build_runtime(flavor).map_err(|e| e.to_string()).map(|runtime| {
                runtime.block_on(async {
                    if closing {
                        http_load::run_closing(&url, HTTP_CONNECTIONS, max_requests, stopped).await
                    } else {
                        http_load::run(&url, HTTP_CONNECTIONS, max_requests, stopped).await
                    }
                })
            });
            let _ = done.send(result);
        })?;
        Ok(Load { stop, report })
    }

    /// Runs for `duration`, or less if it sent all its requests sooner.
    async fn run_for(mut self, duration: Duration) -> BenchResult<LoadReport> {
        tokio::select! {
            report = &mut self.report => Ok(report.map_err(|_| "the HTTP load thread panicked")??),
            () = tokio::time::sleep(duration) => self.finish().await,
        }
    }

    async fn finish(mut self) -> BenchResult<LoadReport> {
        let _ = self.stop.send(true);
        Ok((&mut self.report).await.map_err(|_| "the HTTP load thread panicked")??)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A cluster whose workers serve HTTP on a shared listener.
struct HttpCluster {
    primary: Primary,
    workers: usize,
    url: String,
    /// Answers the load generator got from it, warm-ups included: what its hit counter should say.
    answered: u64,
}

impl HttpCluster {
    async fn start(workers: usize, listen: ListenOptions) -> BenchResult<HttpCluster> {
        let primary = cluster_builder(ClusterTransport::Uds, ClusterStorage::Memory)
            .listen_with(HTTP_LISTENER, "127.0.0.1:0", listen)
            .build()
            .await?;
        primary.fork_group(HTTP_GROUP, workers, WorkerOptions::default()).await?;
        primary.ready().await?;
        let Some(ListenAddr::Tcp(address)) = primary.listener_addr(HTTP_LISTENER) else {
            return Err("the HTTP cluster has no TCP listener".into());
        };
        Ok(HttpCluster { primary, workers, url: format!("http://{address}/"), answered: 0 })
    }

    async fn steady(
        &mut self,
        load: &Steady<'_>,
        what: &str,
        samples: &mut Samples,
    ) -> BenchResult<LoadReport> {
        let (report, answered) = load.run(&self.url, what, samples).await?;
        self.answered += answered;
        Ok(report)
    }

    /// A steady load of requests for `path`, which its servers answer without counting them.
    async fn steady_uncounted(
        &mut self,
        load: &Steady<'_>,
        path: &str,
        what: &str,
        samples: &mut Samples,
    ) -> BenchResult<LoadReport> {
        let url = format!("{}{}", self.url, path.trim_start_matches('/'));
        let (report, _) = load.run(&url, what, samples).await?;
        Ok(report)
    }

    /// [`Steady::run`] of uncounted requests, each over a new connection.
    async fn new_connections(
        &mut self,
        load: &Steady<'_>,
        what: &str,
        samples: &mut Samples,
    ) -> BenchResult<LoadReport> {
        let url = format!("{}{}", self.url, PLAIN_PATH.trim_start_matches('/'));
        let report = Load::start_closing(load.flavor, &url, load.plan.http_requests)?
            .run_for(load.plan.http_load)
            .await?;
        note_failures(samples, what, load.repetition, &report);
        Ok(report)
    }

    /// A load while the group grows to twice its size, shrinks to 1, and grows back (each step
    /// waited for: ready, or stopped); the load's report.
    async fn scale_under_load(&mut self, flavor: Flavor) -> BenchResult<LoadReport> {
        let load = Load::start(flavor, &self.url, u64::MAX)?;
        let steps = async {
            for workers in [2 * self.workers, 1, self.workers] {
                self.primary.scale(HTTP_GROUP, workers).await?;
                self.primary.ready().await?;
            }
            Ok::<(), clusterfy::Error>(())
        };
        let scaled = tokio::time::timeout(RELOAD_TIMEOUT, steps).await;
        let report = load.finish().await?;
        scaled.map_err(|_| format!("scaling took longer than {RELOAD_TIMEOUT:?}"))??;
        self.answered += report.ok;
        Ok(report)
    }

    /// A load from just before `Primary::reload` is called until it returned.
    async fn reload_under_load(&mut self, flavor: Flavor) -> BenchResult<LoadReport> {
        let load = Load::start(flavor, &self.url, u64::MAX)?;
        let reloaded =
            tokio::time::timeout(RELOAD_TIMEOUT, self.primary.reload(ReloadOptions::default())).await;
        let report = load.finish().await?;
        let replaced = reloaded.map_err(|_| format!("the reload took longer than {RELOAD_TIMEOUT:?}"))??;
        if replaced.len() != self.workers {
            return Err(
                format!("the reload replaced {} workers, not {}", replaced.len(), self.workers).into()
            );
        }
        self.answered += report.ok;
        Ok(report)
    }

    async fn hits(&self) -> BenchResult<u64> {
        Ok(self.primary.storage().retrieve::<u64>(HITS_PATH).await?.unwrap_or(0))
    }

    /// Notes a hit counter that does not match the answers after the last reload (a counted
    /// request whose answer was lost, or an answer whose count failed), then shuts down.
    async fn finish(self, samples: &mut Samples) -> BenchResult<()> {
        let hits = self.hits().await?;
        if hits != self.answered {
            samples.notes.push(format!(
                "WARNING: the hit counter of the {}-worker HTTP cluster says {hits}, but the load generator got \
                 {} answers from it",
                self.workers, self.answered
            ));
        }
        self.primary.shutdown(Duration::from_secs(5)).await?;
        Ok(())
    }
}

/// The baseline's server: this binary with [`RAW_HTTP_FLAG`].
struct RawHttp {
    child: tokio::process::Child,
    url: String,
}

impl RawHttp {
    async fn spawn(flavor: Flavor) -> BenchResult<RawHttp> {
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        if flavor == Flavor::MultiThread {
            command.arg(MULTI_THREAD_FLAG);
        }
        command.arg(RAW_HTTP_FLAG).stdin(Stdio::piped()).stdout(Stdio::piped()).kill_on_drop(true);
        let mut child = command.spawn()?;
        let stdout = child.stdout.take().ok_or("the raw HTTP server has no stdout pipe")?;
        let mut line = String::new();
        let mut stdout = BufReader::new(stdout);
        let read = stdout.read_line(&mut line);
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .map_err(|_| "the raw HTTP server did not say its address within 30 s")??;
        let address: std::net::SocketAddr = line
            .trim()
            .parse()
            .map_err(|_| format!("the raw HTTP server wrote {line:?}, not its address"))?;
        Ok(RawHttp { child, url: format!("http://{address}/") })
    }

    /// Closes its stdin and waits for it to exit.
    async fn finish(mut self) -> BenchResult<()> {
        drop(self.child.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .map_err(|_| "the raw HTTP server did not exit within 10 s of its stdin closing")??;
        if !status.success() {
            return Err(format!("the raw HTTP server failed: {status}").into());
        }
        Ok(())
    }
}
