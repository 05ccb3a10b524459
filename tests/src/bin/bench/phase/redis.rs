//! The Unix-socket clusters on the Redis mirror against raw `HSET`s, and the Redis server they
//! use.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use clusterfy::Primary;
use clusterfy::storage::{AckMode, NoticeReceiver, RedisMirror, StorageBackend, StorageNotice};
use clusterfy_test_support::redis_server::{RedisServer, TEST_REDIS_URL_ENV, running_in_ci};

use crate::BenchResult;
use crate::cluster::{ClusterStorage, ClusterTransport, Workload, measure, start_cluster};
use crate::options::{Plan, QUICK_FLAG};
use crate::raw_storage::RawRedis;
use crate::report::Section;
use crate::sampling::Samples;

/// How long `wait_mirrored` may wait in the Redis measurements (the default 10 s could cut a
/// measurement short on a slow machine).
const MIRROR_WAIT: Duration = Duration::from_secs(120);

/// Two more clusters on the Redis mirror against raw `HSET`s from this process: first in
/// [`AckMode::Memory`] (pipelined, timed until mirrored), then in [`AckMode::Redis`] (sequential
/// round trips), each interleaved with its baseline in each repetition.
pub(crate) async fn run_redis_phase(
    plan: &Plan,
    server: Result<RedisServer, String>,
    samples: &mut Samples,
) -> BenchResult<()> {
    let server = match server {
        Ok(server) => server,
        Err(reason) => {
            samples.skip(Section::Redis, reason);
            return Ok(());
        }
    };
    let url = server.url().to_owned();
    // Keys of their own, in case CLUSTERFY_TEST_REDIS_URL names a server others use too.
    let prefix = format!("clusterfy-bench-{}", std::process::id());
    let mut raw = RawRedis::connect(&url, format!("{prefix}:raw")).await?;
    let mut keys = vec![raw.key().to_owned()];

    let (mirror, notices, primary) =
        mirrored_cluster(&url, &format!("{prefix}-memory"), AckMode::Memory, &mut keys).await?;
    for repetition in 1..=plan.repetitions {
        eprintln!("[bench] redis mirror (AckMode::Memory) repetition {repetition}/{}", plan.repetitions);
        let figures = raw.pipelined(Plan::warmup(plan.redis_pipelined), plan.redis_pipelined).await?;
        samples.add("raw_redis_pipelined_set_ops", figures.ops_per_sec);
        let figures = measure(&primary, Workload::SaveDistinctMirrored, plan.redis_pipelined).await?;
        samples.add("redis_mirror_save_ops", figures.ops_per_sec);
        let acked =
            figures.acked_ops_per_sec.ok_or("the mirrored measurement came back without its ack rate")?;
        samples.add("redis_mirror_acked_ops", acked);
        // The share of the mirrored run after the last ack: 1 - acked time / mirrored time.
        samples.add("redis_mirror_drain_share", (1.0 - figures.ops_per_sec / acked).max(0.0));
    }
    primary.shutdown(Duration::from_secs(5)).await?;
    drop(primary);
    mirror.wait_mirrored().await?;
    note_mirror_trouble(notices, samples);
    drop(mirror);

    let (mirror, notices, primary) =
        mirrored_cluster(&url, &format!("{prefix}-ack"), AckMode::Redis, &mut keys).await?;
    for repetition in 1..=plan.repetitions {
        eprintln!("[bench] redis mirror (AckMode::Redis) repetition {repetition}/{}", plan.repetitions);
        let figures = raw.sequential(Plan::warmup(plan.redis_sequential), plan.redis_sequential).await?;
        samples.add_sequential(["raw_redis_rtt_p50", "raw_redis_rtt_p99", "raw_redis_seq_ops"], figures)?;
        let figures = measure(&primary, Workload::SaveSequential, plan.redis_sequential).await?;
        samples.add_sequential(
            ["redis_ack_save_rtt_p50", "redis_ack_save_rtt_p99", "redis_ack_save_seq_ops"],
            figures,
        )?;
    }
    primary.shutdown(Duration::from_secs(5)).await?;
    drop(primary);
    note_mirror_trouble(notices, samples);
    drop(mirror);

    // An owned server goes away with its data; an outside one keeps only what we leave.
    raw.delete(&keys).await?;
    drop(server);
    Ok(())
}

/// A mirror on its own key prefix (its data key noted in `keys`, to delete afterwards), its
/// notices, and a cluster on it.
async fn mirrored_cluster(
    url: &str,
    prefix: &str,
    ack: AckMode,
    keys: &mut Vec<String>,
) -> BenchResult<(Arc<RedisMirror>, Option<NoticeReceiver>, Primary)> {
    let mirror = Arc::new(
        RedisMirror::builder(url).key_prefix(prefix).ack(ack).ack_timeout(MIRROR_WAIT).connect().await?,
    );
    keys.push(mirror.data_key().to_owned());
    let notices = mirror.notices();
    let primary = start_cluster(ClusterTransport::Uds, ClusterStorage::Redis(Arc::clone(&mirror))).await?;
    Ok((mirror, notices, primary))
}

/// The Redis server for the Redis section, or why the section is skipped: skipped in a quick run
/// and when `redis-server` is not installed, except that a missing server is an error when `CI`
/// is set (so a quick run in CI still checks that a server starts).
pub(crate) fn redis_server(quick: bool) -> BenchResult<Result<RedisServer, String>> {
    let quick_reason = format!("{QUICK_FLAG} run: the Redis measurements are left out of smoke runs");
    if quick && !running_in_ci() {
        return Ok(Err(quick_reason));
    }
    let server = match RedisServer::from_env_or_start() {
        Ok(server) => server,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let reason = format!(
                "redis-server is not installed ({err}); install it (apt-get install redis-server) or set \
                 {TEST_REDIS_URL_ENV}"
            );
            if running_in_ci() {
                return Err(
                    format!("CI is set, so the Redis measurements must not be skipped: {reason}").into()
                );
            }
            return Ok(Err(reason));
        }
        Err(err) => return Err(format!("redis-server is installed but did not start: {err}").into()),
    };
    if quick {
        return Ok(Err(format!("{quick_reason} (CI is set: checked that redis-server starts)")));
    }
    Ok(Ok(server))
}

/// Adds a note to the report if the mirror lost its connection, overflowed or resynced during
/// the measurements (which then measured that too).
fn note_mirror_trouble(notices: Option<NoticeReceiver>, samples: &mut Samples) {
    let Some(mut notices) = notices else { return };
    let mut seen = Vec::new();
    while let Ok(notice) = notices.try_recv() {
        seen.push(match notice {
            StorageNotice::Disconnected { .. } => "disconnected",
            StorageNotice::Reconnected => "reconnected",
            StorageNotice::Resynced { .. } => "resynced",
            StorageNotice::Overflow { .. } => "queue overflow",
            _ => "other notice",
        });
    }
    if !seen.is_empty() {
        samples.notes.push(format!(
            "WARNING: the Redis mirror reported {} during the measurements; its figures include that",
            seen.join(", ")
        ));
    }
}
