//! The primary's storage when the bench needs more than the primary exposes: [`Kept`], and the
//! time its backend calls took ([`BackendStats`]).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clusterfy::storage::{BatchOp, Capabilities, NoticeReceiver, StorageBackend};

use crate::sampling::Samples;

/// Backend calls [`BackendStats`] tells apart.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Call {
    Get,
    ScanPrefix,
    ApplyBatch,
    Flush,
}

/// How many backend calls of each kind returned, and the time they took in total (wall time
/// from call to return, so overlapping calls add up).
#[derive(Debug, Default)]
pub(crate) struct BackendStats {
    calls: [AtomicU64; 4],
    nanos: [AtomicU64; 4],
}

impl BackendStats {
    pub(crate) fn record(&self, call: Call, took: Duration) {
        let i = call as usize;
        self.calls[i].fetch_add(1, Ordering::Relaxed);
        self.nanos[i].fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Calls and total microseconds of each kind of call so far, indexed by [`Call`].
    pub(crate) fn read(&self) -> [(u64, f64); 4] {
        std::array::from_fn(|i| {
            (self.calls[i].load(Ordering::Relaxed), self.nanos[i].load(Ordering::Relaxed) as f64 / 1e3)
        })
    }

    /// Adds where the saves' backend time went since `before` (a [`read`](Self::read) taken
    /// `elapsed` ago) to `samples` under `names`: microseconds per save in `get`, `scan_prefix`
    /// and `apply_batch`, which a save calls under the storage's write lock (so one save at a time),
    /// microseconds per save waiting in `flush` (outside the lock, overlapping), and the share of
    /// `elapsed` the locked calls took. A save flushes once, so flushes count the saves.
    pub(crate) fn add_since(
        &self,
        before: [(u64, f64); 4],
        elapsed: Duration,
        names: &Breakdown,
        samples: &mut Samples,
    ) {
        let now = self.read();
        let micros = |call: Call| now[call as usize].1 - before[call as usize].1;
        let saves = (now[Call::Flush as usize].0 - before[Call::Flush as usize].0).max(1) as f64;
        let locked = micros(Call::Get) + micros(Call::ScanPrefix) + micros(Call::ApplyBatch);
        samples.add(names.get, micros(Call::Get) / saves);
        samples.add(names.scan, micros(Call::ScanPrefix) / saves);
        samples.add(names.batch, micros(Call::ApplyBatch) / saves);
        samples.add(names.flush, micros(Call::Flush) / saves);
        samples.add(names.busy, locked / (elapsed.as_secs_f64() * 1e6));
    }
}

/// Sample names of [`BackendStats::add_since`]'s figures for one kind of measurement.
pub(crate) struct Breakdown {
    /// How the report calls the measurement.
    pub(crate) what: &'static str,
    pub(crate) get: &'static str,
    pub(crate) scan: &'static str,
    pub(crate) batch: &'static str,
    pub(crate) flush: &'static str,
    pub(crate) busy: &'static str,
}

/// The sled breakdown of the sequential saves...
pub(crate) const SLED_SEQ_BREAKDOWN: Breakdown = Breakdown {
    what: "sequential",
    get: "sled_seq_get_us",
    scan: "sled_seq_scan_us",
    batch: "sled_seq_batch_us",
    flush: "sled_seq_flush_us",
    busy: "sled_seq_lock_busy",
};
/// ... and of the pipelined ones.
pub(crate) const SLED_PIPELINED_BREAKDOWN: Breakdown = Breakdown {
    what: "pipelined",
    get: "sled_pipelined_get_us",
    scan: "sled_pipelined_scan_us",
    batch: "sled_pipelined_batch_us",
    flush: "sled_pipelined_flush_us",
    busy: "sled_pipelined_lock_busy",
};

/// The primary's storage when the bench needs more than the primary exposes (it keeps only a
/// `dyn StorageBackend`): the backend, shared with the bench, and optionally the time of every
/// call. The Redis clusters share the mirror with the
/// [`WaitMirrored`](crate::cluster::WaitMirrored) handler (which needs
/// `RedisMirror::wait_mirrored`); the sled cluster counts where a save's time goes. The method
/// signatures are `async_trait`'s expansion of the trait's (this crate does not depend on
/// `async_trait`); without stats every call returns the backend's own future.
#[derive(Debug)]
pub(crate) struct Kept<B> {
    pub(crate) backend: Arc<B>,
    pub(crate) stats: Option<Arc<BackendStats>>,
}

/// What `async_trait` methods return.
pub(crate) type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = clusterfy::Result<T>> + Send + 'a>>;

impl<B> Kept<B> {
    fn observe<'a, T: 'a>(&self, call: Call, future: BackendFuture<'a, T>) -> BackendFuture<'a, T> {
        let Some(stats) = &self.stats else { return future };
        let stats = Arc::clone(stats);
        Box::pin(async move {
            let start = Instant::now();
            let result = future.await;
            stats.record(call, start.elapsed());
            result
        })
    }
}

impl<B: StorageBackend> StorageBackend for Kept<B> {
    fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }

    fn get<'life0, 'life1, 'async_trait>(
        &'life0 self,
        key: &'life1 [u8],
    ) -> BackendFuture<'async_trait, Option<Vec<u8>>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        self.observe(Call::Get, self.backend.get(key))
    }

    fn scan_prefix<'life0, 'life1, 'async_trait>(
        &'life0 self,
        prefix: &'life1 [u8],
    ) -> BackendFuture<'async_trait, Vec<(Vec<u8>, Vec<u8>)>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        self.observe(Call::ScanPrefix, self.backend.scan_prefix(prefix))
    }

    fn apply_batch<'life0, 'async_trait>(&'life0 self, ops: Vec<BatchOp>) -> BackendFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        self.observe(Call::ApplyBatch, self.backend.apply_batch(ops))
    }

    fn flush<'life0, 'async_trait>(&'life0 self) -> BackendFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        self.observe(Call::Flush, self.backend.flush())
    }

    fn notices(&self) -> Option<NoticeReceiver> {
        self.backend.notices()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sled_breakdown;

    #[test]
    fn backend_stats_break_saves_down() {
        let stats = BackendStats::default();
        stats.record(Call::Flush, Duration::from_micros(1_000));
        let before = stats.read();
        for _ in 0..2 {
            stats.record(Call::Get, Duration::from_micros(10));
            stats.record(Call::ScanPrefix, Duration::from_micros(20));
            stats.record(Call::ApplyBatch, Duration::from_micros(30));
            stats.record(Call::Flush, Duration::from_micros(40));
        }
        let mut samples = Samples::default();
        stats.add_since(before, Duration::from_micros(240), &SLED_SEQ_BREAKDOWN, &mut samples);
        let median = |name| samples.summary(name).expect("added").median;
        assert!((median(SLED_SEQ_BREAKDOWN.get) - 10.0).abs() < 1e-6);
        assert!((median(SLED_SEQ_BREAKDOWN.batch) - 30.0).abs() < 1e-6);
        assert!((median(SLED_SEQ_BREAKDOWN.flush) - 40.0).abs() < 1e-6, "the earlier flush is not counted");
        assert!((median(SLED_SEQ_BREAKDOWN.busy) - 0.5).abs() < 1e-6);
        let lines = sled_breakdown(&samples);
        assert_eq!(lines.len(), 1, "only the sequential figures were added");
        assert!(lines[0].contains("60.0 us"), "{}", lines[0]);
    }
}
