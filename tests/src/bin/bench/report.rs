//! The report: which figure is compared to which baseline ([`ROWS`]), the table, and the
//! `RESULT` lines.

use std::time::Duration;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, Table};

use crate::cluster::{FLOOD_IN_FLIGHT, HOT_IN_FLIGHT, HOT_PATH, STORM_IN_FLIGHT, STORM_WORKERS};
use crate::http_server::PLAIN_PATH;
use crate::kept::{SLED_PIPELINED_BREAKDOWN, SLED_SEQ_BREAKDOWN};
use crate::options::{Options, Plan};
use crate::phase::http::{HTTP_CONNECTIONS, http_workers};
use crate::sampling::{Samples, Summary};
use crate::{BenchResult, IN_FLIGHT, PAYLOAD_LEN, STORAGE_PATH, WORKER_A, WORKER_B};

/// The unit of a figure, which also says which direction is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Microseconds of a round trip: lower is better.
    Micros,
    /// Operations per second: higher is better.
    OpsPerSec,
    /// Milliseconds (of a process's start, of an HTTP request): lower is better.
    Millis,
    /// Kibibytes of a resident set: lower is better.
    KiB,
    /// HTTP requests answered per second: higher is better.
    ReqPerSec,
    /// HTTP requests answered: higher is better.
    Answered,
    /// HTTP requests failed: lower is better.
    Failed,
    /// HTTP requests the busiest worker answered, beside a fair share: lower is better.
    Busiest,
}

impl Unit {
    fn symbol(self) -> &'static str {
        match self {
            Unit::Micros => "us",
            Unit::OpsPerSec => "ops/s",
            Unit::Millis => "ms",
            Unit::KiB => "KiB",
            Unit::ReqPerSec => "req/s",
            Unit::Answered | Unit::Failed | Unit::Busiest => "requests",
        }
    }

    fn better(self) -> &'static str {
        match self {
            Unit::Micros | Unit::Millis | Unit::KiB | Unit::Failed | Unit::Busiest => "lower",
            Unit::OpsPerSec | Unit::ReqPerSec | Unit::Answered => "higher",
        }
    }

    fn format(self, value: f64) -> String {
        match self {
            Unit::Micros | Unit::Millis => format!("{value:.2}"),
            Unit::OpsPerSec | Unit::KiB | Unit::ReqPerSec | Unit::Answered | Unit::Failed | Unit::Busiest => {
                format!("{value:.0}")
            }
        }
    }
}

/// The team's goal for a figure, as a bound on its ratio to the baseline or on the figure itself.
#[derive(Debug, Clone, Copy)]
enum Goal {
    AtMost(f64),
    AtLeast(f64),
    /// A bound on the figure, whatever the baseline.
    ValueAtMost(f64),
    /// A floor on the figure, whatever the baseline.
    ValueAtLeast(f64),
}

impl Goal {
    fn check(self, value: f64, ratio: f64) -> String {
        let (met, bound) = match self {
            Goal::AtMost(max) => (ratio <= max, format!("<= {max}")),
            Goal::AtLeast(min) => (ratio >= min, format!(">= {min}")),
            Goal::ValueAtMost(max) => (value <= max, format!("figure <= {max}")),
            Goal::ValueAtLeast(min) => (value >= min, format!("figure >= {min}")),
        };
        format!("{bound}: {}", if met { "met" } else { "MISSED" })
    }
}

/// `value / baseline`; when the baseline is 0, 1 if the figure is 0 too and infinity otherwise.
fn ratio(value: f64, baseline: f64) -> f64 {
    match (value == 0.0, baseline == 0.0) {
        (true, true) => 1.0,
        (false, true) => f64::INFINITY,
        _ => value / baseline,
    }
}

/// A group of figures measured together on one cluster (or skipped together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Section {
    /// The Unix-socket cluster on memory storage.
    Uds,
    /// The stdio cluster on memory storage.
    Stdio,
    /// The Unix-socket cluster on sled.
    Sled,
    /// The Unix-socket clusters on the Redis mirror.
    Redis,
    /// Fresh primaries starting workers, and resident sets.
    Process,
    /// The Unix-socket cluster of [`STORM_WORKERS`] workers on memory storage.
    Storm,
    /// HTTP clusters on a shared TCP listener, and the plain tokio HTTP server.
    Http,
}

/// One line of the report: a Clusterfy figure and the baseline figure it is compared to.
struct Row {
    name: &'static str,
    baseline: &'static str,
    unit: Unit,
    goal: Option<Goal>,
    section: Section,
    /// Whether the figure and its baseline are the sums of their repetitions, not the medians.
    summed: bool,
}

impl Row {
    const fn new(section: Section, name: &'static str, baseline: &'static str, unit: Unit) -> Row {
        Row { name, baseline, unit, goal: None, section, summed: false }
    }

    const fn goal(mut self, goal: Goal) -> Row {
        self.goal = Some(goal);
        self
    }

    /// Reports the sums over the repetitions (of a count none of which may be hidden by a median).
    const fn summed(mut self) -> Row {
        self.summed = true;
        self
    }
}

const ROWS: &[Row] = {
    use Section::{Http, Process, Redis, Sled, Stdio, Storm, Uds};
    use Unit::{Answered, Busiest, Failed, KiB, Micros, Millis, OpsPerSec, ReqPerSec};
    &[
        Row::new(Uds, "save_rtt_p50", "raw_rtt_p50", Micros).goal(Goal::AtMost(2.0)),
        Row::new(Uds, "save_rtt_p99", "raw_rtt_p99", Micros),
        Row::new(Uds, "save_seq_ops", "raw_seq_ops", OpsPerSec),
        Row::new(Uds, "retrieve_rtt_p50", "raw_rtt_p50", Micros),
        Row::new(Uds, "retrieve_rtt_p99", "raw_rtt_p99", Micros),
        Row::new(Uds, "retrieve_seq_ops", "raw_seq_ops", OpsPerSec),
        Row::new(Uds, "save_pipelined_ops", "raw_pipelined_ops", OpsPerSec).goal(Goal::AtLeast(0.5)),
        Row::new(Uds, "save_distinct_pipelined_ops", "raw_pipelined_ops", OpsPerSec),
        Row::new(Uds, "w2w_rtt_p50", "raw_rtt_p50", Micros),
        Row::new(Uds, "w2w_rtt_p99", "raw_rtt_p99", Micros),
        Row::new(Uds, "w2w_seq_ops", "raw_seq_ops", OpsPerSec),
        Row::new(Uds, "increment_pipelined_ops", "save_pipelined_ops", OpsPerSec).goal(Goal::AtLeast(1.0)),
        Row::new(Uds, "increment_hot_key_ops", "increment_pipelined_ops", OpsPerSec).goal(Goal::AtLeast(0.9)),
        Row::new(Uds, "replica_read_ops", "raw_map_read_ops", OpsPerSec)
            .goal(Goal::ValueAtLeast(10_000_000.0)),
        Row::new(Uds, "replica_staleness_p99", "save_rtt_p50", Micros).goal(Goal::AtMost(2.0)),
        Row::new(Uds, "save_rtt_p99_beside_flood", "save_rtt_p99", Micros).goal(Goal::AtMost(2.0)),
        Row::new(Stdio, "stdio_save_rtt_p50", "raw_pipe_rtt_p50", Micros).goal(Goal::AtMost(2.0)),
        Row::new(Stdio, "stdio_save_rtt_p99", "raw_pipe_rtt_p99", Micros),
        Row::new(Stdio, "stdio_w2w_rtt_p50", "raw_pipe_rtt_p50", Micros).goal(Goal::AtMost(2.0)),
        Row::new(Sled, "sled_save_rtt_p50", "raw_sled_insert_flush_p50", Micros),
        Row::new(Sled, "sled_save_rtt_p99", "raw_sled_insert_flush_p99", Micros),
        Row::new(Sled, "sled_save_seq_ops", "raw_sled_insert_flush", OpsPerSec),
        Row::new(Sled, "sled_save_pipelined_ops", "raw_sled_insert_flush", OpsPerSec)
            .goal(Goal::AtLeast(3.0)),
        Row::new(Sled, "sled_save_pipelined_vs_memory", "save_distinct_pipelined_ops", OpsPerSec)
            .goal(Goal::AtLeast(0.5)),
        Row::new(Sled, "sled_read_p50_under_writes", "sled_read_p50_idle", Micros).goal(Goal::AtMost(2.0)),
        Row::new(Redis, "redis_mirror_save_ops", "raw_redis_pipelined_set_ops", OpsPerSec)
            .goal(Goal::AtLeast(0.8)),
        Row::new(Redis, "redis_mirror_acked_ops", "raw_redis_pipelined_set_ops", OpsPerSec),
        Row::new(Redis, "redis_ack_save_rtt_p50", "raw_redis_rtt_p50", Micros),
        Row::new(Redis, "redis_ack_save_rtt_p99", "raw_redis_rtt_p99", Micros),
        Row::new(Process, "spawn_to_ready_1", "spawn_wait_noop_1", Millis),
        Row::new(Process, "spawn_to_ready_8", "spawn_wait_noop_8", Millis),
        Row::new(Process, "worker_idle_rss", "bare_idle_rss", KiB),
        Row::new(Process, "primary_idle_rss", "bare_idle_rss", KiB),
        Row::new(Storm, "storm_save_ops", "storm_single_worker_pipelined_ops", OpsPerSec)
            .goal(Goal::AtLeast(1.0)),
        Row::new(Storm, "primary_rss_after_storm", "primary_rss_before_storm", KiB),
        Row::new(Http, "http_rps_counter", "http_rps_plain", ReqPerSec).goal(Goal::AtLeast(0.8)),
        Row::new(Http, "http_rps_n", "raw_http_rps", ReqPerSec).goal(Goal::AtLeast(0.9)),
        Row::new(Http, "http_rps_cpu_n", "http_rps_cpu_1_times_n", ReqPerSec).goal(Goal::AtLeast(0.8)),
        Row::new(Http, "http_rps_1", "raw_http_rps", ReqPerSec),
        Row::new(Http, "http_reload_served", "http_steady_served", Answered),
        Row::new(Http, "http_reload_failed", "http_steady_failed", Failed)
            .goal(Goal::ValueAtMost(0.0))
            .summed(),
        Row::new(Http, "http_reload_p99", "http_steady_p99", Millis),
        Row::new(Http, "http_busiest", "http_fair_share", Busiest).goal(Goal::AtMost(1.25)),
        Row::new(Http, "http_busiest_shared", "http_fair_share_shared", Busiest),
        Row::new(Http, "http_new_conn_p99", "http_new_conn_p99_shared", Millis).goal(Goal::AtMost(1.5)),
        Row::new(Http, "http_scale_failed", "http_steady_failed", Failed)
            .goal(Goal::ValueAtMost(0.0))
            .summed(),
        Row::new(Http, "http_busiest_handover", "http_fair_share_handover", Busiest),
        Row::new(Http, "http_rps_n_handover", "raw_http_rps", ReqPerSec),
        Row::new(Http, "http_rps_n_shared", "raw_http_rps", ReqPerSec),
        Row::new(Http, "http_new_conn_p99_handover", "http_new_conn_p99_shared", Millis),
        Row::new(Http, "http_reload_failed_handover", "http_steady_failed", Failed)
            .goal(Goal::ValueAtMost(0.0))
            .summed(),
        Row::new(Http, "http_reload_failed_shared", "http_steady_failed", Failed)
            .goal(Goal::ValueAtMost(0.0))
            .summed(),
        Row::new(Http, "http_scale_failed_handover", "http_steady_failed", Failed)
            .goal(Goal::ValueAtMost(0.0))
            .summed(),
    ]
};

pub(crate) fn report(
    options: &Options,
    plan: &Plan,
    samples: &Samples,
    elapsed: Duration,
) -> BenchResult<()> {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "Clusterfy benchmark: Clusterfy vs. a raw tokio Unix-socket ping-pong, its sled and Redis storage vs. \
         raw sled and Redis clients, and HTTP clusters vs. a plain tokio HTTP server"
    );
    println!("  machine: nproc={nproc}");
    println!(
        "  tokio runtime: {} in every process (primary, workers, raw children) and in the HTTP load thread",
        options.flavor.describe()
    );
    println!("  payload: {PAYLOAD_LEN} bytes per request (raw frame: u32 LE length + {PAYLOAD_LEN} bytes)");
    println!(
        "  iterations: {} sequential, {} pipelined with {IN_FLIGHT} in flight, each after a warm-up of a tenth as many",
        plan.sequential, plan.pipelined
    );
    println!(
        "  figures: median of {} repetition(s), raw and Clusterfy interleaved in each; [min-max] over the repetitions",
        plan.repetitions
    );
    println!(
        "  save_*: Worker::save of a {PAYLOAD_LEN}-byte string at {STORAGE_PATH}; retrieve_*: Worker::retrieve of it;"
    );
    println!(
        "  w2w_*: {WORKER_A} runs a trivial echo command on {WORKER_B} by name, routed by the primary (2 hops);"
    );
    println!("  *_rtt_*: one request's round trip, sequential; *_seq_ops: sequential requests per second;");
    println!("  *_pipelined_ops: requests per second with {IN_FLIGHT} in flight");
    println!(
        "  increment_pipelined_ops: Storage::increment with {IN_FLIGHT} in flight over {IN_FLIGHT} counters \
         (distinct keys), against save_pipelined_ops; increment_hot_key_ops: {WORKER_A} and {WORKER_B} at once, \
         {HOT_IN_FLIGHT} in flight each, all on the one counter {HOT_PATH}, timed at the primary"
    );
    println!(
        "  replica_read_ops: Replica::retrieve::<String> of {STORAGE_PATH} from {WORKER_A}'s replica of bench, one read \
         after the other ({} per repetition); baseline raw_map_read_ops: the same read of a plain HashMap of the same \
         paths and values in the worker; goal: at least 10M/s",
        plan.replica_reads
    );
    println!(
        "  replica_staleness_p99: {WORKER_A} saves 1..n at bench.stale one after the other; how long after each \
         acknowledgement {WORKER_B}'s replica showed it (CLOCK_MONOTONIC of both processes; 0 if before), p99, \
         against save_rtt_p50"
    );
    println!(
        "  save_rtt_p99_beside_flood: {WORKER_A}'s sequential saves while {WORKER_B} keeps {FLOOD_IN_FLIGHT} \
         retrieves in flight (4x the primary's requests_per_worker, so it is slowed), p99; baseline save_rtt_p99 \
         (no flood); goal: at most 2x"
    );
    println!(
        "  save_distinct_pipelined_ops: pipelined saves each to a new path bench.k<n> ({} per repetition), the \
         reference for the sled and Redis rows below",
        plan.distinct_pipelined
    );
    println!(
        "  stdio_*: the same on a second cluster using StdioTransport (workers on their stdin/stdout), run after the"
    );
    println!(
        "    first one shut down; baseline raw_pipe_*: the raw ping-pong over a child's stdin/stdout pipes"
    );
    println!(
        "  sled_*: a third cluster on SledStorage (every acked save flushed to disk; concurrent flushes \
         grouped); sled_save_pipelined_ops saves to a distinct new path each time (bench.k<n>), timed to \
         the last ack"
    );
    println!(
        "    sled_save_pipelined_vs_memory: the same figure against save_distinct_pipelined_ops (the same \
         workload on memory): durability's cost under load; sled_read_p50_under_writes: {WORKER_A}'s sequential \
         retrieve p50 while {WORKER_B} saves to new paths with {IN_FLIGHT} in flight, against sled_read_p50_idle"
    );
    println!(
        "    baseline raw_sled_insert_flush*: this process, own sled db on the same file system, \
         sequential tree.insert(k<n>, {PAYLOAD_LEN} bytes) + db.flush() per op ({} ops per repetition)",
        plan.durable_sequential
    );
    println!(
        "  redis_mirror_*: a cluster on RedisMirror (AckMode::Memory), saves to distinct new paths with \
         {IN_FLIGHT} in flight ({} per repetition);",
        plan.redis_pipelined
    );
    println!(
        "    redis_mirror_save_ops is timed from the first save until the primary's \
         RedisMirror::wait_mirrored() returned"
    );
    println!(
        "    (asked by the worker after its last ack: Redis has every save), redis_mirror_acked_ops until \
         the last ack only"
    );
    println!(
        "    baseline raw_redis_pipelined_set_ops: this process, HSET <hash> raw<n> {PAYLOAD_LEN} bytes \
         (the mirror's command shape: one HSET to one hash per save), pipelines of {IN_FLIGHT}, one at a time"
    );
    println!(
        "  redis_ack_save_*: a cluster on RedisMirror (AckMode::Redis: acked once Redis has it), \
         sequential saves; baseline raw_redis_rtt_*: one HSET round trip"
    );
    println!(
        "  spawn_to_ready_<n>: a fresh primary, from the first fork until ready() returned, n workers \
         ({} repetitions); baseline spawn_wait_noop_<n>: spawn n bare processes of this binary (--noop: exit 0 \
         at once) and wait for them",
        plan.process_repetitions
    );
    println!(
        "  worker_idle_rss, primary_idle_rss: VmRSS of the one worker and of the primary (this process, before \
         the other phases) just after ready(); baseline bare_idle_rss: a bare process of this binary (--idle)"
    );
    println!(
        "  storm_save_ops: {STORM_WORKERS} workers, each {} saves with {STORM_IN_FLIGHT} in flight to \
         {STORM_IN_FLIGHT} paths of its own, all saves per second timed at the primary; baseline \
         storm_single_worker_pipelined_ops: one of them alone, as save_pipelined_ops",
        plan.storm_saves
    );
    println!(
        "  primary_rss_after_storm: VmRSS of the primary after the last storm; baseline \
         primary_rss_before_storm: just before the first one (the storm runs before the uds phase)"
    );
    println!(
        "  http_rps_n, http_rps_1: HTTP/1.1 GETs answered per second by a cluster of n = {} workers (one per core, \
         at least 2) and of 1 worker on a shared TCP listener on 127.0.0.1; http_rps_counter: each request bumps a \
         hit counter in the shared storage (Storage::increment), against http_rps_plain: the same cluster answering \
         {PLAIN_PATH} without counting; http_rps_n is http_rps_plain against raw_http_rps, http_rps_1 counts; load: \
         {HTTP_CONNECTIONS} keep-alive connections of hyper's pooled \
         client on a thread of this process, {:.1} s (at most {} requests) after a warm-up of a tenth as much",
        http_workers(),
        plan.http_load.as_secs_f64(),
        plan.http_requests
    );
    println!(
        "    baseline raw_http_rps: the same handler in one plain tokio process (--raw-http), its counter an atomic"
    );
    println!(
        "  http_reload_*: that load on the n-worker cluster from just before Primary::reload (one worker at a \
         time) until it returned: requests answered (baseline http_steady_served: the steady http_rps_n rate \
         times the same window), failed + connection errors (summed over the repetitions; baseline: those of the \
         steady load; target 0), p99 latency (baseline http_steady_p99: the steady load's)"
    );
    println!(
        "  balance policies: the rows without a suffix are the default (Balance::PerWorker, one SO_REUSEPORT \
         socket per worker); _handover: the primary accepts and hands each connection over (Balance::Handover); \
         _shared: every worker accepts on one socket (Balance::Shared). http_busiest*: answers of the busiest \
         worker in the counter load, baseline a fair share (all over n); http_new_conn_p99*: p99 latency of a \
         request over a new connection each; http_scale_failed*: the load while the group scales n -> 2n -> 1 -> n"
    );
    println!(
        "  ratio = Clusterfy / raw baseline (1 when both are 0); 'better' says which direction is better for the \
         figure"
    );
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "figure",
        "Clusterfy [min-max]",
        "raw baseline [min-max]",
        "ratio",
        "better",
        "target (ratio)",
    ]);
    let mut lines = Vec::new();
    for row in ROWS {
        if let Some(reason) = samples.skipped.get(&row.section) {
            table.add_row(vec![Cell::new(row.name), Cell::new("SKIPPED"), Cell::new("(see SKIPPED below)")]);
            lines.push(format!("SKIPPED {} ({reason})", row.name));
            continue;
        }
        let summary = |name| if row.summed { samples.total(name) } else { samples.summary(name) };
        let (value, baseline) = (summary(row.name)?, summary(row.baseline)?);
        let ratio = ratio(value.median, baseline.median);
        let unit = row.unit;
        let cell = |s: Summary| {
            format!(
                "{} {} [{}-{}]",
                unit.format(s.median),
                unit.symbol(),
                unit.format(s.min),
                unit.format(s.max)
            )
        };
        table.add_row(vec![
            Cell::new(row.name),
            Cell::new(cell(value)).set_alignment(CellAlignment::Right),
            Cell::new(cell(baseline)).set_alignment(CellAlignment::Right),
            Cell::new(format!("{ratio:.2}x")).set_alignment(CellAlignment::Right),
            Cell::new(unit.better()),
            Cell::new(row.goal.map_or_else(String::new, |goal| goal.check(value.median, ratio))),
        ]);
        lines.push(format!(
            "RESULT {} {} {} baseline={} ratio={ratio:.3}",
            row.name,
            unit.format(value.median),
            unit.symbol(),
            unit.format(baseline.median)
        ));
    }
    println!("{table}");
    for line in
        sled_breakdown(samples).into_iter().chain(redis_breakdown(samples)).chain(http_breakdown(samples))
    {
        println!("{line}");
    }
    for note in &samples.notes {
        println!("{note}");
    }
    for (section, reason) in &samples.skipped {
        println!(
            "==============================================================\n\
             SKIPPED: the {section:?} rows were not measured: {reason}\n\
             =============================================================="
        );
    }
    for line in lines {
        println!("{line}");
    }
    println!("total time: {:.1} s", elapsed.as_secs_f64());
    Ok(())
}

/// Where the sled saves' time went at the primary, if the sled section ran: medians over the
/// repetitions of [`BackendStats::add_since`](crate::kept::BackendStats::add_since)'s figures.
pub(crate) fn sled_breakdown(samples: &Samples) -> Vec<String> {
    let median = |name| samples.summary(name).map(|s| s.median).ok();
    let mut lines = Vec::new();
    for names in [&SLED_SEQ_BREAKDOWN, &SLED_PIPELINED_BREAKDOWN] {
        let figures = [names.get, names.scan, names.batch, names.flush, names.busy].map(median);
        let [Some(get), Some(scan), Some(batch), Some(flush), Some(busy)] = figures else { continue };
        let locked = get + scan + batch;
        lines.push(format!(
            "  sled {} saves at the primary, per save: {locked:.1} us in backend calls under the storage's \
             write lock (get {get:.1} + scan {scan:.1} + apply_batch {batch:.1}; one save at a time, so at \
             most {:.0} saves/s; busy {:.0}% of the run), then {flush:.1} us waiting in flush (group commit, \
             outside the lock)",
            names.what,
            1e6 / locked,
            busy * 100.0
        ));
    }
    lines
}

/// How long the reloads under HTTP load took, if the HTTP section ran.
fn http_breakdown(samples: &Samples) -> Option<String> {
    let window = samples.summary("http_reload_window_s").ok()?;
    Some(format!(
        "  http reload windows (Primary::reload of all {} workers under load): {:.2} s [{:.2}-{:.2}]",
        http_workers(),
        window.median,
        window.min,
        window.max
    ))
}

/// How the Redis mirror's pipelined figure compares to the same saves on memory storage, and
/// how much of its run was spent draining after the last ack, if the Redis section ran.
fn redis_breakdown(samples: &Samples) -> Option<String> {
    let median = |name| samples.summary(name).ok().map(|s| s.median);
    let mirrored = median("redis_mirror_save_ops")?;
    let drain = median("redis_mirror_drain_share")?;
    let memory = median("save_distinct_pipelined_ops")?;
    Some(format!(
        "  redis mirror pipelined saves: {:.0}% of the same saves on memory storage \
         (save_distinct_pipelined_ops); draining after the last ack took {:.1}% of the mirrored run",
        100.0 * mirrored / memory,
        100.0 * drain
    ))
}
