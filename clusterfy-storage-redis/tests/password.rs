//! Passwords never show: not in `Debug`, errors, notices, nor logs.
//!
//! Its own test binary, with one test: `tracing` caches per call site, process-wide, whether
//! anyone listens, and a test on another thread without a subscriber that reached a call site
//! first would make this test's capturing subscriber miss its events.

// A failed unwrap is the clearest failure report a test can give.
#![allow(clippy::unwrap_used)]

use std::io;
use std::sync::{Arc, Mutex};

use clusterfy_core::{StorageBackend, StorageBackendExt};
use clusterfy_test_support::redis_server::RedisServer;

mod common;
use common::*;

/// Collects everything the tracing subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// A current-thread runtime, so that the mirror task logs on this thread, to its subscriber.
#[tokio::test]
async fn the_password_never_shows_in_debug_errors_notices_or_logs() {
    const PASSWORD: &str = "hunter2-secret";
    let Some(server) = RedisServer::start_owned_or_skip("the_password_never_shows") else { return };
    let port = server.port().unwrap();
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer({
            let captured = captured.clone();
            move || captured.clone()
        })
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    let mut admin = direct(server.url()).await;
    redis::cmd("CONFIG").arg("SET").arg("requirepass").arg(PASSWORD).exec_async(&mut admin).await.unwrap();

    let wrong =
        builder(&format!("redis://:wrong-{PASSWORD}@127.0.0.1:{port}"), "pw").connect().await.unwrap_err();
    assert!(wrong.message().contains("refused the credentials"), "{wrong}");
    let mut shown = format!("{wrong} {wrong:?}");

    let url = format!("redis://:{PASSWORD}@127.0.0.1:{port}");
    let mirror = builder(&url, &prefix("password")).connect().await.unwrap();
    let mut notices = mirror.notices().unwrap();
    shown += &format!("{mirror:?} {:?} {}", builder(&url, "p"), mirror.url());
    assert!(shown.contains(&format!("redis://:***@127.0.0.1:{port}")), "{shown}");

    // Cut the mirror's connection (the server keeps its password, unlike a restart): it logs and
    // announces the outage and the reconnection, which must not show the password either.
    let mut admin = direct(&url).await;
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .exec_async(&mut admin)
        .await
        .unwrap();
    mirror.put(b"k", b"v").await.unwrap();
    let lost = notice(&mut notices, "Disconnected", is_disconnected).await;
    notice(&mut notices, "Reconnected", is_reconnected).await;
    mirror.wait_mirrored().await.unwrap();
    assert_eq!(in_redis(&url, mirror.data_key()).await, in_memory(&mirror).await);
    shown += &format!("{lost:?}");

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("lost the connection to Redis"), "the logs were not captured: {logs}");
    assert!(logs.contains("reconnected to Redis"), "{logs}");
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(!logs.contains(PASSWORD), "{logs}");
}
