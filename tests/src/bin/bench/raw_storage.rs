//! The storage baselines, written from the bench process itself: raw sled and raw Redis.

use std::time::Instant;

use redis::aio::MultiplexedConnection;

use crate::sampling::{Figures, sequential};
use crate::{BenchResult, IN_FLIGHT, payload};

/// The sled baseline: a database of its own in a temporary directory, written from this process.
pub(crate) struct RawSled {
    db: sled::Db,
    tree: sled::Tree,
    /// The number in the next key written; keys are never reused.
    next_key: u64,
    /// Declared last, so removed after the database is closed.
    _dir: tempfile::TempDir,
}

impl RawSled {
    pub(crate) fn open() -> BenchResult<RawSled> {
        let dir = tempfile::Builder::new().prefix("cy-bench-raw-sled").tempdir()?;
        let db = sled::open(dir.path().join("db"))?;
        let tree = db.open_tree("bench")?;
        Ok(RawSled { db, tree, next_key: 0, _dir: dir })
    }

    /// Sequential `tree.insert(k<n>, <payload>); db.flush()`: `warmup` unmeasured, then
    /// `iterations` measured, on tokio's blocking pool (sled blocks).
    pub(crate) async fn insert_flush(&mut self, warmup: u32, iterations: u32) -> BenchResult<Figures> {
        let (db, tree) = (self.db.clone(), self.tree.clone());
        let mut key = self.next_key;
        self.next_key += u64::from(warmup) + u64::from(iterations);
        let figures = tokio::task::spawn_blocking(move || {
            let value = payload();
            let mut insert_flush = || -> sled::Result<()> {
                tree.insert(format!("k{key}").as_bytes(), value.as_bytes())?;
                key += 1;
                db.flush()?;
                Ok(())
            };
            // `sequential` awaits nothing but the ready futures here: run it on this thread.
            futures::executor::block_on(sequential(warmup, iterations, || std::future::ready(insert_flush())))
        })
        .await??;
        Ok(figures)
    }
}

/// The Redis baseline: a multiplexed connection (as the mirror uses) writing fields of one hash.
pub(crate) struct RawRedis {
    conn: MultiplexedConnection,
    /// The hash written.
    key: String,
    /// The number in the next field written by the pipelined measurement.
    next_field: u64,
}

impl RawRedis {
    pub(crate) async fn connect(url: &str, key: String) -> BenchResult<RawRedis> {
        let conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
        Ok(RawRedis { conn, key, next_field: 0 })
    }

    /// `HSET <key> raw<n> <payload>` for new fields, in pipelines of [`IN_FLIGHT`] commands, one
    /// pipeline at a time: `warmup` unmeasured, then `iterations` measured.
    pub(crate) async fn pipelined(&mut self, warmup: u32, iterations: u32) -> BenchResult<Figures> {
        self.hset_pipelines(warmup).await?;
        let start = Instant::now();
        self.hset_pipelines(iterations).await?;
        Ok(Figures::throughput(iterations, start.elapsed()))
    }

    /// The hash the baseline writes.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// Deletes `keys` (the baseline's hash and the mirrors' data, at the end of the section).
    pub(crate) async fn delete(&mut self, keys: &[String]) -> redis::RedisResult<()> {
        redis::cmd("DEL").arg(keys).exec_async(&mut self.conn).await
    }

    async fn hset_pipelines(&mut self, count: u32) -> redis::RedisResult<()> {
        let value = payload();
        let mut left = count as usize;
        while left > 0 {
            let batch = left.min(IN_FLIGHT);
            let mut pipe = redis::pipe();
            for _ in 0..batch {
                pipe.hset(&self.key, format!("raw{}", self.next_field), value.as_str()).ignore();
                self.next_field += 1;
            }
            pipe.exec_async(&mut self.conn).await?;
            left -= batch;
        }
        Ok(())
    }

    /// Sequential `HSET <key> rtt <payload>` round trips: `warmup` unmeasured, then
    /// `iterations` measured.
    pub(crate) async fn sequential(&mut self, warmup: u32, iterations: u32) -> BenchResult<Figures> {
        let mut hset = redis::cmd("HSET");
        hset.arg(&self.key).arg("rtt").arg(payload());
        let conn = &self.conn;
        let hset = &hset;
        // A multiplexed connection is a handle: a clone per request costs a reference count.
        Ok(sequential(warmup, iterations, || {
            let mut conn = conn.clone();
            async move { hset.exec_async(&mut conn).await }
        })
        .await?)
    }
}
