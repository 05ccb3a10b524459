//! Figures of one measurement, and the samples of every figure over the repetitions.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::BenchResult;
use crate::report::Section;

/// Per-request latency percentiles of a sequential measurement.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Latency {
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
}

/// What one measurement found.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Figures {
    /// Only for sequential measurements.
    pub(crate) latency: Option<Latency>,
    pub(crate) ops_per_sec: f64,
    /// Only for [`Workload::SaveDistinctMirrored`](crate::cluster::Workload::SaveDistinctMirrored):
    /// the rate until the last save's ack, before the mirror drained (`ops_per_sec` includes the
    /// draining).
    pub(crate) acked_ops_per_sec: Option<f64>,
}

impl Figures {
    /// A throughput-only measurement: `operations` in `elapsed`.
    pub(crate) fn throughput(operations: u32, elapsed: Duration) -> Self {
        Figures { latency: None, ops_per_sec: rate(operations as usize, elapsed), acked_ops_per_sec: None }
    }
}

/// Collects the duration of every request of a sequential measurement.
pub(crate) struct LatencyLog {
    samples: Vec<Duration>,
    start: Instant,
}

impl LatencyLog {
    pub(crate) fn new(iterations: u32) -> Self {
        LatencyLog { samples: Vec::with_capacity(iterations as usize), start: Instant::now() }
    }

    pub(crate) fn record(&mut self, request_start: Instant) {
        self.samples.push(request_start.elapsed());
    }

    pub(crate) fn finish(mut self) -> Figures {
        let elapsed = self.start.elapsed();
        self.samples.sort_unstable();
        let latency =
            Latency { p50_us: percentile(&self.samples, 50), p99_us: percentile(&self.samples, 99) };
        Figures {
            latency: Some(latency),
            ops_per_sec: rate(self.samples.len(), elapsed),
            acked_ops_per_sec: None,
        }
    }
}

/// The nearest-rank percentile `pct` of `sorted`, in microseconds.
fn percentile(sorted: &[Duration], pct: usize) -> f64 {
    let rank = (sorted.len() * pct).div_ceil(100).saturating_sub(1);
    sorted.get(rank).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

pub(crate) fn rate(operations: usize, elapsed: Duration) -> f64 {
    operations as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// Runs `op` `warmup` times unmeasured, then `iterations` times one after the other, timing each.
pub(crate) async fn sequential<F, Fut, E>(warmup: u32, iterations: u32, mut op: F) -> Result<Figures, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    for _ in 0..warmup {
        op().await?;
    }
    let mut log = LatencyLog::new(iterations);
    for _ in 0..iterations {
        let start = Instant::now();
        op().await?;
        log.record(start);
    }
    Ok(log.finish())
}

/// Every repetition's value of every figure, by result name, and what the report has to say
/// besides.
#[derive(Default)]
pub(crate) struct Samples {
    values: BTreeMap<&'static str, Vec<f64>>,
    /// Sections that did not run, with the reason.
    pub(crate) skipped: BTreeMap<Section, String>,
    /// Remarks for the report (something that happened during a measurement and bears on it).
    pub(crate) notes: Vec<String>,
}

impl Samples {
    pub(crate) fn add(&mut self, name: &'static str, value: f64) {
        self.values.entry(name).or_default().push(value);
    }

    /// Adds `took` in milliseconds under `name`.
    pub(crate) fn add_millis(&mut self, name: &'static str, took: Duration) {
        self.add(name, took.as_secs_f64() * 1e3);
    }

    /// Records that `section` did not run, and says so loudly on stderr at once.
    pub(crate) fn skip(&mut self, section: Section, reason: String) {
        eprintln!(
            "\n==============================================================\n\
             SKIPPED: bench {section:?} rows: {reason}\n\
             ==============================================================\n"
        );
        self.skipped.insert(section, reason);
    }

    /// Adds a sequential measurement's p50, p99 and requests per second under `names`, in that
    /// order.
    pub(crate) fn add_sequential(&mut self, names: [&'static str; 3], figures: Figures) -> BenchResult<()> {
        let latency = figures.latency.ok_or("a sequential measurement came back without latencies")?;
        self.add(names[0], latency.p50_us);
        self.add(names[1], latency.p99_us);
        self.add(names[2], figures.ops_per_sec);
        Ok(())
    }

    /// Median, minimum and maximum of the repetitions of `name`.
    pub(crate) fn summary(&self, name: &str) -> BenchResult<Summary> {
        let mut values = self.values.get(name).cloned().unwrap_or_default();
        if values.is_empty() {
            return Err(format!("no samples of {name}").into());
        }
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        let median = if values.len() % 2 == 1 {
            values[mid]
        } else {
            // `mid >= 1` here, as the list has an even, non-zero length.
            f64::midpoint(values[mid - 1], values[mid])
        };
        Ok(Summary { median, min: values[0], max: values[values.len() - 1] })
    }

    /// As [`summary`](Self::summary), but with the sum of the repetitions in place of the median.
    pub(crate) fn total(&self, name: &str) -> BenchResult<Summary> {
        let summary = self.summary(name)?;
        let sum = self.values.get(name).map_or(0.0, |values| values.iter().sum());
        Ok(Summary { median: sum, ..summary })
    }
}

/// One figure over the repetitions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Summary {
    /// The median, or the sum from [`Samples::total`].
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert!((percentile(&sorted, 50) - 50.0).abs() < 1e-9);
        assert!((percentile(&sorted, 99) - 99.0).abs() < 1e-9);
        assert!(percentile(&[], 50).abs() < 1e-9);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        let mut samples = Samples::default();
        for v in [3.0, 1.0, 2.0] {
            samples.add("odd", v);
        }
        for v in [4.0, 1.0, 3.0, 2.0] {
            samples.add("even", v);
        }
        let odd = samples.summary("odd").expect("samples were added");
        assert!(
            (odd.median - 2.0).abs() < 1e-9 && (odd.min - 1.0).abs() < 1e-9 && (odd.max - 3.0).abs() < 1e-9
        );
        let even = samples.summary("even").expect("samples were added");
        assert!((even.median - 2.5).abs() < 1e-9);
        assert!(samples.summary("missing").is_err());
    }
}
