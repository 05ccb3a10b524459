//! The storage conformance suite on `RedisMirror`, against one `redis-server` per test process
//! (or the one `CLUSTERFY_TEST_REDIS_URL` names), each case under a key prefix of its own.
//!
//! The suite runs twice, once per `AckMode`: the modes differ exactly in what the suite checks
//! (when a write returns, whether `durable` is claimed), and a run takes well under a second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use clusterfy_core::StorageBackend;
use clusterfy_storage_redis::{AckMode, RedisMirror};
use clusterfy_test_support::redis_server::RedisServer;
use clusterfy_testkit::storage::{HarnessResult, Skip, StorageHarness};

clusterfy_testkit::storage_conformance!(redis_ack_redis, RedisHarness { ack: AckMode::Redis });
clusterfy_testkit::storage_conformance!(redis_ack_memory, RedisHarness { ack: AckMode::Memory });

/// Opens `RedisMirror`s with one ack mode.
struct RedisHarness {
    ack: AckMode,
}

/// One case's key prefix, and the backend last opened on it.
struct Store {
    url: String,
    prefix: String,
    /// Kept so that reopening can wait until Redis has every write of the previous backend: in
    /// `AckMode::Memory` a write returns before Redis has it.
    previous: Mutex<Option<Arc<RedisMirror>>>,
}

/// The server of this test process: started by the first case that needs it, killed with the
/// process (the testkit's server dies with its owner even when, as here, it is never dropped).
fn server() -> HarnessResult<&'static str> {
    static SERVER: OnceLock<Result<RedisServer, (bool, String)>> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        RedisServer::from_env_or_start()
            .map_err(|err| (err.kind() == std::io::ErrorKind::NotFound, err.to_string()))
    });
    match server {
        Ok(server) => Ok(server.url()),
        Err((true, why)) => Err(Skip::new(format!(
            "redis-server is not installed ({why}); install it or set CLUSTERFY_TEST_REDIS_URL"
        ))
        .into()),
        Err((false, why)) => Err(format!("redis-server did not start: {why}").into()),
    }
}

#[async_trait]
impl StorageHarness for RedisHarness {
    type Store = Store;

    async fn create_store(&self) -> HarnessResult<Store> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        // Starting the server blocks for a few milliseconds, once per process.
        let url = tokio::task::block_in_place(server)?.to_owned();
        let prefix = format!(
            "clusterfy-conformance-{}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Ok(Store { url, prefix, previous: Mutex::new(None) })
    }

    async fn open(&self, store: &Store) -> HarnessResult<Arc<dyn StorageBackend>> {
        let previous = store.previous.lock().map_err(|_| "poisoned")?.take();
        if let Some(previous) = previous {
            previous.wait_mirrored().await?;
        }
        let mirror = Arc::new(
            RedisMirror::builder(store.url.as_str())
                .key_prefix(store.prefix.as_str())
                .ack(self.ack)
                .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(200))
                .connect()
                .await?,
        );
        *store.previous.lock().map_err(|_| "poisoned")? = Some(Arc::clone(&mirror));
        Ok(mirror)
    }

    fn can_reopen(&self) -> bool {
        true
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Tidy for a shared outside server; an owned one dies with the process anyway.
        let Ok(client) = redis::Client::open(self.url.as_str()) else { return };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(1)) else { return };
        let _ = redis::cmd("DEL")
            .arg(format!("{}:data", self.prefix))
            .arg(format!("{}:resync", self.prefix))
            .exec(&mut conn);
    }
}
