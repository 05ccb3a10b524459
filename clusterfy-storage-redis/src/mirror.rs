//! [`RedisMirror`]: the state in memory, every write mirrored to Redis in order.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use clusterfy_core::kv;
use clusterfy_core::{BatchOp, Capabilities, NoticeReceiver, Result, StorageBackend, StorageNotice};
use tokio::sync::{Notify, broadcast, watch};

use crate::config::{AckMode, Settings};
use crate::error::RedisMirrorError;
use crate::state::{Map, Op, Recorded, State};
use crate::task::{self, Mirror};
use crate::tls;

/// How many notices a subscriber may fall behind before it misses some.
const NOTICE_BUFFER: usize = 64;

/// What the backend and its mirror task share.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// New work for the mirror task.
    pub(crate) wake: Notify,
    /// The backend was dropped: the mirror task finishes what it can and stops.
    pub(crate) closing: Notify,
    pub(crate) closed: AtomicBool,
    /// Sequence number of the last write Redis is known to have.
    pub(crate) applied: watch::Sender<u64>,
    pub(crate) notices: broadcast::Sender<StorageNotice>,
    pub(crate) connected: AtomicBool,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // Poisoning only means another thread panicked while holding the guard. Every change to
        // the state is completed before anything that could panic (only allocation failure,
        // which aborts), so the state is consistent whenever the lock is released: keep serving it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Redis has every write up to `seq`.
    pub(crate) fn confirm(&self, seq: u64) {
        self.applied.send_if_modified(|applied| {
            let advanced = seq > *applied;
            *applied = (*applied).max(seq);
            advanced
        });
    }

    pub(crate) fn notify(&self, notice: StorageNotice) {
        // No subscriber is fine: notices are for whoever listens.
        let _ = self.notices.send(notice);
    }
}

/// A [`StorageBackend`] that keeps the state in memory and mirrors every write to a Redis hash,
/// in order, so the state outlives the primary and other programs can read it.
///
/// - **Reads** (`get`, `scan_prefix`) are served from memory and never touch the network.
/// - **Writes** change memory, then go to Redis in the order memory applied them, through one
///   mirror task and a bounded queue. `apply_batch` goes to Redis as one `MULTI`/`EXEC`, so Redis
///   never shows part of a batch. In [`AckMode::Memory`] (the default) a write returns at once; in
///   [`AckMode::Redis`] it returns once Redis has it.
/// - **Layout**: one hash, `<prefix>:data`, field = key, value = value (`HGETALL clusterfy:data`
///   shows the whole state). It is loaded into memory by [`connect`](RedisMirror::connect).
/// - **Outages**: writes keep succeeding in memory and wait in the queue; the mirror reconnects
///   with exponential backoff, then sends what waited, or, if the server restarted, lost the
///   connection mid-transaction or the queue overflowed, rewrites the whole hash from memory in one
///   `RENAME` (a resync). Afterwards Redis holds exactly the memory state. Each step is reported
///   as a [`StorageNotice`] on [`notices`](StorageBackend::notices).
///
/// Its `Debug` shows the URL with the password replaced by `***`; neither it nor any log line
/// shows the password. Share it between tasks through an `Arc`; dropping the last reference stops
/// the mirror task once it has sent what is queued (if Redis is reachable).
pub struct RedisMirror {
    shared: Arc<Shared>,
    settings: Arc<Settings>,
    data_key: String,
}

/// A snapshot of a [`RedisMirror`]'s progress, from [`RedisMirror::status`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorStatus {
    /// Whether the mirror task holds a working connection to Redis.
    pub connected: bool,
    /// Writes waiting in the queue or being sent (a batch counts one per operation); never more
    /// than the queue capacity.
    pub queued_writes: usize,
    /// Whether Redis is to be rewritten from memory as a whole (after an overflow or a restart of
    /// Redis) before further writes are sent.
    pub resync_pending: bool,
    /// Writes (a batch counts one) that returned but are not yet confirmed by Redis.
    pub unconfirmed_writes: u64,
}

impl RedisMirror {
    /// Connects, loads the state, and spawns the mirror task; the settings are valid.
    pub(crate) async fn start(settings: Settings) -> Result<RedisMirror, RedisMirrorError> {
        let url = settings.url.redacted().to_owned();
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| RedisMirrorError::NoRuntime { url: url.clone() })?;
        let client = tls::client(&settings.url, &settings.tls)?;
        let data_key = settings.data_key();
        let mut connection =
            task::open(&client, &task::connection_config(&settings)).await.map_err(|source| {
                match tls::failure(&source).filter(|_| tls::is_tls_url(settings.url.expose())) {
                    Some(failure) => RedisMirrorError::Tls { url: url.clone(), failure, source },
                    None => RedisMirrorError::Unreachable { url: url.clone(), source },
                }
            })?;
        let map: Map =
            redis::cmd("HGETALL").arg(&data_key).query_async(&mut connection.conn).await.map_err(
                |source| RedisMirrorError::Load { url: url.clone(), key: data_key.clone(), source },
            )?;
        tracing::info!(url = %url, key = %data_key, entries = map.len(), "loaded the storage state from Redis");

        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(map, settings.queue_capacity)),
            wake: Notify::new(),
            closing: Notify::new(),
            closed: AtomicBool::new(false),
            applied: watch::Sender::new(0),
            notices: broadcast::Sender::new(NOTICE_BUFFER),
            connected: AtomicBool::new(true),
        });
        let settings = Arc::new(settings);
        let mirror = Mirror::new(Arc::clone(&shared), client, Arc::clone(&settings));
        runtime.spawn(mirror.run(connection));
        Ok(RedisMirror { shared, settings, data_key })
    }

    /// The Redis URL, with the password replaced by `***`.
    pub fn url(&self) -> &str {
        self.settings.url.redacted()
    }

    /// The key prefix given to the builder.
    pub fn key_prefix(&self) -> &str {
        &self.settings.key_prefix
    }

    /// The Redis hash that holds the state: `<prefix>:data`.
    pub fn data_key(&self) -> &str {
        &self.data_key
    }

    /// When writes return.
    pub fn ack_mode(&self) -> AckMode {
        self.settings.ack
    }

    /// How far the mirror is: connection, queue, pending resync.
    pub fn status(&self) -> MirrorStatus {
        let state = self.shared.lock();
        let applied = *self.shared.applied.borrow();
        MirrorStatus {
            connected: self.shared.connected.load(Ordering::Relaxed),
            queued_writes: state.pending(),
            resync_pending: state.resync_pending(),
            unconfirmed_writes: state.seq().saturating_sub(applied),
        }
    }

    /// Waits until Redis holds every write that returned before this call, in either
    /// [`AckMode`]; for a clean shutdown, or before handing the state to another program.
    ///
    /// Fails with [`ErrorKind::Timeout`](clusterfy_core::ErrorKind::Timeout) after the
    /// [`ack_timeout`](crate::RedisMirrorBuilder::ack_timeout) if Redis stays unreachable; the
    /// writes stay queued.
    pub async fn wait_mirrored(&self) -> Result<()> {
        let seq = self.shared.lock().seq();
        self.wait_for(seq, "the writes so far").await
    }

    async fn wait_for(&self, seq: u64, waiting_for: &'static str) -> Result<()> {
        let mut applied = self.shared.applied.subscribe();
        match tokio::time::timeout(self.settings.ack_timeout, applied.wait_for(|&done| done >= seq)).await {
            Ok(Ok(_)) => Ok(()),
            // The sender lives in `shared`, which `self` holds, so only the timeout can end the wait.
            Ok(Err(_)) | Err(_) => Err(RedisMirrorError::NotConfirmed {
                url: self.url().to_owned(),
                timeout: self.settings.ack_timeout,
                waiting_for,
            }
            .into()),
        }
    }

    /// Applies a write to memory and queues it for Redis, under one lock so that the queue has
    /// the writes in memory's order. `change` returns what Redis has to replay, or `None` if it
    /// wrote nothing. Returns the write's sequence number.
    fn write(&self, change: impl FnOnce(&mut Map) -> Option<Op>) -> Option<u64> {
        let (seq, recorded) = {
            let mut state = self.shared.lock();
            let op = change(state.map_mut())?;
            state.record(op)
        };
        if let Recorded::Overflowed { dropped } = recorded {
            let capacity = self.settings.queue_capacity;
            tracing::warn!(
                url = %self.url(), capacity, dropped,
                "the queue of writes for Redis is full; dropped it, Redis will be rewritten from memory"
            );
            self.shared.notify(StorageNotice::Overflow { detail: overflow_detail(capacity, dropped) });
        }
        self.shared.wake.notify_one();
        Some(seq)
    }

    /// In [`AckMode::Redis`], waits until Redis has the write `seq`.
    async fn acknowledge(&self, seq: Option<u64>) -> Result<()> {
        match (self.settings.ack, seq) {
            (AckMode::Redis, Some(seq)) => self.wait_for(seq, "the write").await,
            _ => Ok(()),
        }
    }
}

/// What an overflow notice says. `dropped` counts the writes the queue held, which is at most
/// its capacity: writes already being sent are not dropped, and the write that found the queue
/// full was never in it.
fn overflow_detail(capacity: usize, dropped: usize) -> String {
    format!(
        "the queue of writes waiting for Redis reached its capacity of {capacity}; the {dropped} writes \
         it held were dropped and Redis will be rewritten from memory (resync) once it is reachable, \
         so no write is lost"
    )
}

impl Drop for RedisMirror {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.closing.notify_one();
        self.shared.wake.notify_one();
    }
}

impl fmt::Debug for RedisMirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.status();
        f.debug_struct("RedisMirror")
            .field("url", &self.url())
            .field("data_key", &self.data_key)
            .field("ack", &self.settings.ack)
            .field("keys", &self.shared.lock().map().len())
            .field("connected", &status.connected)
            .field("queued_writes", &status.queued_writes)
            .field("resync_pending", &status.resync_pending)
            .finish()
    }
}

#[async_trait]
impl StorageBackend for RedisMirror {
    fn capabilities(&self) -> Capabilities {
        Capabilities::volatile().with_durable(self.settings.ack == AckMode::Redis).with_visible_outside(true)
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.shared.lock().map().get(key).cloned())
    }

    async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let state = self.shared.lock();
        Ok(kv::scan_prefix(state.map(), prefix).map(|(key, value)| (key.clone(), value.clone())).collect())
    }

    async fn apply_batch(&self, ops: Vec<BatchOp>) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let seq = self.write(|map| {
            // Applied under the one lock, so readers see all of the batch or none of it. Redis
            // replays the plain changes: a prefix delete becomes the deletes of the keys it hit.
            let changes = kv::apply_batch_recording(map, ops);
            (!changes.is_empty()).then_some(Op::Batch(changes))
        });
        self.acknowledge(seq).await
    }

    async fn flush(&self) -> Result<()> {
        match self.settings.ack {
            // Every write already waited for Redis; this also covers writes whose wait timed out.
            AckMode::Redis => {
                let seq = self.shared.lock().seq();
                self.wait_for(seq, "the writes before the flush").await
            }
            // Nothing is promised beyond memory: `durable` is false in this mode.
            AckMode::Memory => Ok(()),
        }
    }

    fn notices(&self) -> Option<NoticeReceiver> {
        Some(self.shared.notices.subscribe())
    }
}
