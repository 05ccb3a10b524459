//! The control socket's bounds: what a client of the primary's own user sends cannot make the
//! primary buffer much, idle connections cannot keep an operator out, and busy ones are refused
//! with a reason. A file of its own: it measures this process's resident memory.

mod common;

use std::time::Duration;

use clusterfy::control::ControlClient;
use clusterfy::{ErrorKind, Primary, value};
use clusterfy_core::control::ControlRequest;
use common::{bounded, own_rss, primary_builder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

async fn primary_with_control(dir: &std::path::Path) -> (Primary, std::path::PathBuf) {
    let socket = dir.join("limits.sock");
    let primary = primary_builder()
        .control_at("limits", &socket)
        .initial_storage(value!({ "x": 1 }))
        .handle_signals(false)
        .build()
        .await
        .expect("primary");
    (primary, socket)
}

/// Connects and sends a frame header announcing `len` bytes, then `sent` bytes of it; returns
/// the connection, still open.
async fn announce(socket: &std::path::Path, len: u32, sent: usize) -> UnixStream {
    let mut stream = UnixStream::connect(socket).await.expect("connect");
    stream.write_all(&len.to_le_bytes()).await.expect("header");
    let chunk = vec![0u8; 64 * 1024];
    let mut left = sent;
    while left > 0 {
        let n = left.min(chunk.len());
        // The primary may refuse and close early: then the rest has nowhere to go.
        if stream.write_all(&chunk[..n]).await.is_err() {
            break;
        }
        left -= n;
    }
    stream
}

/// What the primary answered on `stream`, as text, once it closed it.
async fn answer(mut stream: UnixStream) -> String {
    let mut bytes = Vec::new();
    let _ = bounded("the answer", stream.read_to_end(&mut bytes)).await;
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_sending_huge_requests_make_the_primary_buffer_little_and_get_a_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (primary, socket) = primary_with_control(dir.path()).await;
    let before = own_rss();
    // Twenty clients announce 15 MiB each and send it; each is refused at the header.
    let senders: Vec<_> = (0..20).map(|_| announce(&socket, 15 << 20, 15 << 20)).collect();
    let streams = futures::future::join_all(senders).await;
    let grown = own_rss().saturating_sub(before);
    for stream in streams {
        let said = answer(stream).await;
        assert!(said.contains("above the maximum"), "the client is told why: {said:?}");
    }
    assert!(grown < 32 << 20, "the primary grew by {} MiB", grown >> 20);

    // Twenty more announce just under the request cap and stall: only the shared budget's worth
    // (4 MiB) is read; the rest are told the primary is busy (the budget's own unit test counts).
    let near_cap = (1 << 20) - 16;
    let stalled =
        futures::future::join_all((0..20).map(|_| announce(&socket, near_cap, near_cap as usize - 1))).await;
    assert!(own_rss().saturating_sub(before) < 40 << 20, "still little buffered");
    // Meanwhile an operator gets in.
    let client = ControlClient::at(&socket);
    assert_eq!(bounded("ls", client.workers()).await.expect("ls works").len(), 0);
    drop(stalled);
    primary.shutdown(Duration::from_secs(2)).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_idle_connections_do_not_keep_an_operator_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (primary, socket) = primary_with_control(dir.path()).await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(UnixStream::connect(&socket).await.expect("connect"));
    }
    let client = ControlClient::at(&socket);
    assert!(bounded("info", client.info()).await.is_ok(), "the oldest idle connection made room");
    assert_eq!(bounded("get", client.storage_retrieve("x")).await.expect("get"), Some(value!(1)));
    drop(idle);
    primary.shutdown(Duration::from_secs(2)).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_the_cap_of_busy_ones_is_refused_with_busy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (primary, socket) = primary_with_control(dir.path()).await;
    let client = ControlClient::at(&socket);
    let mut streams = Vec::new();
    for _ in 0..64 {
        streams.push(bounded("watch", client.storage_watch("x")).await.expect("a watch stream"));
    }
    // Each stream is busy once the primary has read its request: it then hears a write.
    let storage = primary.storage();
    for (n, stream) in streams.iter_mut().enumerate() {
        bounded("the stream to start", async {
            loop {
                storage.save("x", &n).await.expect("save");
                if let Ok(changed) =
                    tokio::time::timeout(Duration::from_millis(100), stream.next_change()).await
                {
                    assert_eq!(changed.expect("a change").as_deref(), Some("x"));
                    return;
                }
            }
        })
        .await;
    }
    let refused = client.info().await.err();
    let refused = refused.expect("the 65th connection is refused while 64 streams are busy");
    assert_eq!(refused.kind(), ErrorKind::Busy, "{refused}");
    assert!(refused.message().contains("64 control connections"), "{refused}");
    drop(streams);
    primary.shutdown(Duration::from_secs(2)).await.expect("shutdown");
}

#[test]
fn the_request_variants_fit_the_small_cap() {
    // Everything but a storage value is far below 64 KiB: the budget only ever holds values.
    let request = ControlRequest::Restart { worker: "w".repeat(1000) };
    let bytes = clusterfy_core::codec::to_payload(&request).expect("encodes");
    assert!(bytes.len() < clusterfy_core::control::SMALL_CONTROL_REQUEST_LEN);
}
