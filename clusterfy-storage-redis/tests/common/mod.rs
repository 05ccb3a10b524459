//! Helpers shared by the integration tests.

// Each test binary uses a different subset.
#![allow(dead_code)]
// A failed unwrap is the clearest failure report a test can give.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clusterfy_core::{NoticeReceiver, StorageBackend, StorageNotice};
use clusterfy_storage_redis::{RedisMirror, RedisMirrorBuilder};
use tokio::sync::broadcast;
use tokio::time::timeout;

pub(crate) type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// Every wait on the mirror or the server ends by then, or the test fails.
pub(crate) const DEADLINE: Duration = Duration::from_secs(20);

/// A key prefix no other test (or test run, on a shared server) uses.
pub(crate) fn prefix(test: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("clusterfy-test-{test}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A builder that reconnects and notices restarts quickly.
pub(crate) fn builder(url: &str, prefix: &str) -> RedisMirrorBuilder {
    RedisMirror::builder(url)
        .key_prefix(prefix)
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .health_check_interval(Duration::from_millis(50))
}

pub(crate) async fn direct(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// The state as Redis has it.
pub(crate) async fn in_redis(url: &str, key: &str) -> Map {
    redis::cmd("HGETALL").arg(key).query_async(&mut direct(url).await).await.unwrap()
}

pub(crate) async fn in_memory(mirror: &RedisMirror) -> Map {
    mirror.scan_prefix(b"").await.unwrap().into_iter().collect()
}

/// Waits for the first notice that `wanted` accepts, failing the test after the deadline.
pub(crate) async fn notice(
    notices: &mut NoticeReceiver,
    what: &str,
    wanted: impl Fn(&StorageNotice) -> bool,
) -> StorageNotice {
    let wait = async {
        loop {
            match notices.recv().await {
                Ok(notice) if wanted(&notice) => return notice,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("notices closed while waiting for {what}"),
            }
        }
    };
    timeout(DEADLINE, wait).await.unwrap_or_else(|_| panic!("no {what} notice within {DEADLINE:?}"))
}

pub(crate) fn is_disconnected(notice: &StorageNotice) -> bool {
    matches!(notice, StorageNotice::Disconnected { .. })
}

pub(crate) fn is_reconnected(notice: &StorageNotice) -> bool {
    matches!(notice, StorageNotice::Reconnected)
}

pub(crate) fn is_resynced(notice: &StorageNotice) -> bool {
    matches!(notice, StorageNotice::Resynced { .. })
}
