//! The mirror task: the only code that writes to Redis. It takes work from the state, in order,
//! sends it, and reports back; on failure it reconnects with backoff and decides whether the
//! writes that waited can simply be sent again or Redis must be rewritten from memory.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clusterfy_core::StorageNotice;
use clusterfy_core::kv::Change;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, RedisResult};

use crate::config::Settings;
use crate::error::is_refusal;
use crate::mirror::Shared;
use crate::state::{ChunkLimits, Entry, Map, Op, Work};

/// At most this much is sent in one transaction of queued writes (a larger batch goes alone).
const CHUNK: ChunkLimits = ChunkLimits { max_weight: 1024, max_bytes: 4 << 20 };

/// A resync sends the snapshot in `HSET`s of at most this many fields or bytes...
const SNAPSHOT_FIELDS_PER_HSET: usize = 512;
const SNAPSHOT_BYTES_PER_HSET: usize = 1 << 20;
/// ...and at most this many of them per round trip.
const SNAPSHOT_HSETS_PER_ROUND_TRIP: usize = 8;

/// The client settings every connection of a mirror uses.
pub(crate) fn connection_config(settings: &Settings) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout))
        .set_response_timeout(Some(settings.response_timeout))
}

/// A connection and what identifies it and the server behind it.
pub(crate) struct Connection {
    pub(crate) conn: MultiplexedConnection,
    /// `CLIENT ID` of this connection, to cut it off from a later one (`None` if the server
    /// refuses `CLIENT`).
    client_id: Option<i64>,
    /// The server's `run_id`, which changes when it restarts (`None` if it refuses `INFO`).
    run_id: Option<String>,
}

/// Connects and identifies the connection and the server.
pub(crate) async fn open(client: &redis::Client, config: &AsyncConnectionConfig) -> RedisResult<Connection> {
    let mut conn = client.get_multiplexed_async_connection_with_config(config).await?;
    let client_id = match redis::cmd("CLIENT").arg("ID").query_async::<i64>(&mut conn).await {
        Ok(id) => Some(id),
        Err(err) if is_refusal(&err) => None,
        Err(err) => return Err(err),
    };
    let run_id = run_id(&mut conn).await?;
    Ok(Connection { conn, client_id, run_id })
}

/// The server's `run_id` (`None` if it refuses `INFO`, for example when the command is renamed).
async fn run_id(conn: &mut MultiplexedConnection) -> RedisResult<Option<String>> {
    match redis::cmd("INFO").arg("server").query_async::<String>(conn).await {
        Ok(info) => {
            Ok(info.lines().find_map(|line| line.strip_prefix("run_id:")).map(|id| id.trim().to_owned()))
        }
        Err(err) if is_refusal(&err) => Ok(None),
        Err(err) => Err(err),
    }
}

pub(crate) struct Mirror {
    shared: Arc<Shared>,
    client: redis::Client,
    config: AsyncConnectionConfig,
    settings: Arc<Settings>,
    data_key: String,
    resync_key: String,
}

impl Mirror {
    pub(crate) fn new(shared: Arc<Shared>, client: redis::Client, settings: Arc<Settings>) -> Self {
        Mirror {
            shared,
            client,
            config: connection_config(&settings),
            data_key: settings.data_key(),
            resync_key: settings.resync_key(),
            settings,
        }
    }

    fn url(&self) -> &str {
        self.settings.url.redacted()
    }

    fn closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Runs until the backend is dropped, starting on the connection the state was loaded from.
    pub(crate) async fn run(self, first: Connection) {
        let mut last_client_id = first.client_id;
        let mut last_run_id = first.run_id.clone();
        let mut connection = Some(first);
        let mut backoff = self.settings.backoff_initial;
        // Whether a Disconnected notice went out and no Reconnected yet.
        let mut in_outage = false;
        loop {
            let Some(current) = connection.as_mut() else {
                if self.closed() {
                    self.stop_with_pending("Redis is unreachable");
                    return;
                }
                match open(&self.client, &self.config).await {
                    Ok(mut new) => {
                        let fenced = self.fence(&mut new, last_client_id).await;
                        // Queued writes may simply be sent again only to the same server process,
                        // and only when no write of the old connection can still arrive after them.
                        let same_server = new.run_id.is_some() && new.run_id == last_run_id;
                        if !(fenced && same_server) {
                            self.shared.lock().schedule_resync();
                        }
                        last_client_id = new.client_id;
                        last_run_id = new.run_id.clone();
                        connection = Some(new);
                        backoff = self.settings.backoff_initial;
                        self.shared.connected.store(true, Ordering::Relaxed);
                        if in_outage {
                            in_outage = false;
                            tracing::info!(url = %self.url(), same_server, "reconnected to Redis");
                            self.shared.notify(StorageNotice::Reconnected);
                        }
                    }
                    Err(err) => {
                        tracing::debug!(url = %self.url(), error = %err, ?backoff, "reconnecting to Redis failed");
                        if !in_outage {
                            in_outage = true;
                            self.announce_outage(&err);
                        }
                        self.pause(backoff).await;
                        backoff = (backoff * 2).min(self.settings.backoff_max);
                    }
                }
                continue;
            };

            let work = self.shared.lock().take_work(CHUNK);
            let outcome = match work {
                Some(Work::Writes(entries)) => self.send_writes(current, entries).await,
                Some(Work::Snapshot { seq, map }) => self.send_snapshot(current, seq, &map).await,
                None if self.closed() => {
                    self.shared.connected.store(false, Ordering::Relaxed);
                    return;
                }
                None => self.idle(current, &mut last_run_id).await,
            };
            if let Err(err) = outcome {
                connection = None;
                self.shared.connected.store(false, Ordering::Relaxed);
                if !in_outage {
                    in_outage = true;
                    self.announce_outage(&err);
                }
                if self.closed() {
                    self.stop_with_pending("writing to Redis failed");
                    return;
                }
            }
        }
    }

    /// Cuts off the previous connection, so that none of its writes can still be executed after
    /// those of the new one (Redis runs commands one at a time, so once `CLIENT KILL` ran, each of
    /// them ran or never will). Returns whether that is known.
    async fn fence(&self, new: &mut Connection, previous: Option<i64>) -> bool {
        let Some(previous) = previous else { return false };
        match redis::cmd("CLIENT").arg("KILL").arg("ID").arg(previous).query_async::<i64>(&mut new.conn).await
        {
            // The number of connections killed; 0 if the old one was gone already, which is as good.
            Ok(_) => true,
            Err(err) => {
                tracing::debug!(url = %self.url(), error = %err, "could not cut off the old connection");
                false
            }
        }
    }

    /// Waits for work, the backend's drop, or the next health check.
    async fn idle(&self, current: &mut Connection, last_run_id: &mut Option<String>) -> RedisResult<()> {
        tokio::select! {
            () = self.shared.wake.notified() => Ok(()),
            () = self.shared.closing.notified() => Ok(()),
            () = tokio::time::sleep(self.settings.health_check_interval) => {
                // A server that restarted behind a proxy keeps the connection but not the data.
                let run_id = run_id(&mut current.conn).await?;
                if run_id.is_none() {
                    redis::cmd("PING").query_async::<()>(&mut current.conn).await?;
                } else if run_id != *last_run_id {
                    tracing::info!(url = %self.url(), "Redis restarted behind the connection; rewriting it");
                    self.shared.lock().schedule_resync();
                    *last_run_id = run_id;
                }
                Ok(())
            }
        }
    }

    /// Sleeps `pause`, or less if the backend is dropped meanwhile.
    async fn pause(&self, pause: Duration) {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = self.shared.closing.notified() => {}
        }
    }

    fn announce_outage(&self, err: &RedisError) {
        let capacity = self.settings.queue_capacity;
        let url = self.url();
        let detail = if is_refusal(err) {
            tracing::warn!(
                url = %url, error = %err,
                "Redis refused mirrored writes; reconnecting to rewrite it from memory, writes are queued"
            );
            format!(
                "Redis at {url} refused mirrored writes ({err}); the mirror reconnects and rewrites the state \
                 from memory, and writes are queued (up to {capacity}) meanwhile"
            )
        } else {
            tracing::warn!(
                url = %url, error = %err,
                "lost the connection to Redis; writes are queued (up to {capacity}) until it is back"
            );
            format!(
                "lost the connection to Redis at {url}: {err}; writes are queued (up to {capacity}) and sent \
                 once it is back"
            )
        };
        self.shared.notify(StorageNotice::Disconnected { detail });
    }

    fn stop_with_pending(&self, why: &str) {
        self.shared.connected.store(false, Ordering::Relaxed);
        let state = self.shared.lock();
        if state.pending() > 0 || state.resync_pending() {
            tracing::warn!(
                url = %self.url(),
                queued = state.pending(),
                resync_pending = state.resync_pending(),
                "the storage was dropped before Redis had every write ({why}); Redis misses the last writes"
            );
        }
    }

    /// Sends queued writes in one transaction, so Redis shows all of them or none.
    async fn send_writes(&self, current: &mut Connection, entries: Vec<Entry>) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for entry in &entries {
            match &entry.op {
                Op::Batch(changes) => {
                    for change in changes {
                        match change {
                            Change::Put { key, value } => {
                                pipe.hset(&self.data_key, key.as_slice(), value.as_slice()).ignore();
                            }
                            Change::Delete { key } => {
                                pipe.hdel(&self.data_key, key.as_slice()).ignore();
                            }
                        }
                    }
                }
            }
        }
        let last = entries.last().map_or(0, |entry| entry.seq);
        match pipe.exec_async(&mut current.conn).await {
            Ok(()) => {
                self.shared.lock().writes_done();
                self.shared.confirm(last);
                Ok(())
            }
            Err(err) => {
                let mut state = self.shared.lock();
                state.writes_failed(entries);
                if is_refusal(&err) {
                    // Redis answered with an error: some commands of the transaction may have
                    // been applied and others refused; sending them again would repeat that.
                    tracing::warn!(url = %self.url(), error = %err, "Redis refused mirrored writes; rewriting it");
                    state.schedule_resync();
                }
                Err(err)
            }
        }
    }

    /// Rewrites the data hash from `map`: built under the resync key, then moved over the data
    /// key with one `RENAME`, so readers see the old state or the new one.
    async fn send_snapshot(&self, current: &mut Connection, seq: u64, map: &Map) -> RedisResult<()> {
        let result = self.write_snapshot(&mut current.conn, map).await;
        match &result {
            Ok(()) => {
                self.shared.confirm(seq);
                let entries = u64::try_from(map.len()).unwrap_or(u64::MAX);
                tracing::info!(url = %self.url(), entries, "rewrote the Redis state from memory");
                self.shared.notify(StorageNotice::Resynced { entries });
            }
            Err(_) => self.shared.lock().snapshot_failed(),
        }
        result
    }

    async fn write_snapshot(&self, conn: &mut MultiplexedConnection, map: &Map) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.del(&self.resync_key).ignore();
        let mut hsets_in_pipe = 0;
        let mut hset: Option<(redis::Cmd, usize, usize)> = None;
        for (key, value) in map {
            let (cmd, fields, bytes) = hset.get_or_insert_with(|| {
                let mut cmd = redis::cmd("HSET");
                cmd.arg(&self.resync_key);
                (cmd, 0, 0)
            });
            cmd.arg(key.as_slice()).arg(value.as_slice());
            *fields += 1;
            *bytes += key.len() + value.len();
            if *fields == SNAPSHOT_FIELDS_PER_HSET || *bytes >= SNAPSHOT_BYTES_PER_HSET {
                if let Some((cmd, _, _)) = hset.take() {
                    pipe.add_command(cmd).ignore();
                    hsets_in_pipe += 1;
                }
                if hsets_in_pipe == SNAPSHOT_HSETS_PER_ROUND_TRIP {
                    pipe.exec_async(conn).await?;
                    pipe = redis::pipe();
                    hsets_in_pipe = 0;
                }
            }
        }
        if let Some((cmd, _, _)) = hset.take() {
            pipe.add_command(cmd).ignore();
        }
        if map.is_empty() {
            pipe.del(&self.data_key).ignore();
        } else {
            pipe.rename(&self.resync_key, &self.data_key).ignore();
        }
        pipe.exec_async(conn).await
    }
}
