//! The primary's side of a worker's handshake: accept connections on the worker's rendezvous
//! until one presents the right Hello, answer it with a Welcome, and explain the failures a
//! newcomer meets (text printed where the Hello belongs, a program that never connects).

use std::sync::Arc;
use std::time::Duration;

use clusterfy_core::codec::{FrameDecoder, HEADER_LEN};
use clusterfy_core::protocol::{Message, Notice, PROTOCOL_VERSION, Welcome};
use clusterfy_core::session::PrimaryHandshake;
use clusterfy_core::transport::Rendezvous;
use clusterfy_core::{Error, ErrorKind, WireError};

use super::PrimaryInner;
use crate::events::{Event, WorkerRef};
use crate::link::{Link, LinkReader, read_first, write_single};

/// Largest frame an unauthenticated connection may send (a `Hello` is well below 1 KiB).
const HANDSHAKE_MAX_FRAME_LEN: usize = 4096;

/// Accepts connections until one passes the handshake, by `deadline`; refused ones are reported
/// and dropped. The link's reader is not started: the caller records the connection first, so
/// nothing the worker sends is handled before its slot knows it is connected.
pub(super) async fn connect(
    inner: &Arc<PrimaryInner>,
    worker: &WorkerRef,
    rendezvous: &mut dyn Rendezvous,
    token: Option<String>,
    deadline: tokio::time::Instant,
) -> Result<(Arc<Link>, LinkReader), ConnectFailure> {
    let mut handshake = PrimaryHandshake::new(worker.id, token);
    let mut refused = None;
    loop {
        let accepted = tokio::time::timeout_at(deadline, rendezvous.accept()).await;
        let mut connection = match (accepted, refused) {
            (Ok(Ok(connection)), _) => connection,
            // A channel with one try (inherited, stdio): its refusal is why, not the end of it.
            (_, Some(refusal)) => return Err(ConnectFailure::Published(refusal)),
            (Ok(Err(err)), None) => return Err(err.into()),
            (Err(_), None) => {
                return Err(not_connected_in_time(inner.ready_timeout).with_context("worker", worker).into());
            }
        };
        // Until it authenticates, a connection may only send a small Hello.
        let mut decoder = FrameDecoder::new(HANDSHAKE_MAX_FRAME_LEN);
        let checked =
            match tokio::time::timeout_at(deadline, read_first(&mut connection.reader, &mut decoder)).await {
                Ok(Ok(first)) => handshake.check_hello(first),
                Ok(Err(err)) => Err(explain_text_instead_of_hello(err, decoder.buffer_mut())),
                Err(_) => Err(handshake_not_finished(inner.ready_timeout, decoder.buffered_len())),
            };
        if let Err(err) = checked {
            let err = err.with_context("worker", worker).with_context("connection", &connection.description);
            let notice = Message::Notice(Notice::Error(WireError::from(&err)));
            let _ = write_single(&mut connection.writer, &notice, inner.max_frame_len).await;
            let err = Arc::new(err);
            inner.emit(Event::Error { worker: Some(worker.clone()), error: Arc::clone(&err) });
            refused = Some(err);
            continue;
        }
        decoder.set_max_frame_len(inner.max_frame_len);
        let restarts = inner.directory().get(worker.id).map_or(0, |s| s.restarts());
        let welcome = Message::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            worker_id: worker.id,
            name: worker.name.clone(),
            restarts,
        });
        write_single(&mut connection.writer, &welcome, inner.max_frame_len).await?;
        let (link, reader) = Link::new(
            format!("worker {:?} (#{})", worker.name, worker.id),
            connection.reader,
            connection.writer,
            decoder,
            inner.max_frame_len,
            ErrorKind::WorkerExited,
            inner.limits.link_bounds(),
        );
        return Ok((link, reader));
    }
}

/// A connection whose Hello did not arrive in time: one that sent nothing did not connect, one
/// that sent part of it connected and then stalled.
fn handshake_not_finished(waited: Duration, received: usize) -> Error {
    if received == 0 {
        return not_connected_in_time(waited);
    }
    Error::new(
        ErrorKind::Timeout,
        format!(
            "the worker connected and began its handshake, but sent only {received} bytes of its Hello within \
             {waited:?}, so it is killed; is it stuck, or does it speak another protocol on its channel?"
        ),
    )
}

/// Why a worker did not get connected.
pub(super) enum ConnectFailure {
    /// A refused handshake, already published as an event.
    Published(Arc<Error>),
    /// Anything else, not published yet.
    New(Error),
}

impl From<Error> for ConnectFailure {
    fn from(err: Error) -> Self {
        ConnectFailure::New(err)
    }
}

/// A worker that printed to stdout before it connected (over stdio) sends text where its `Hello`
/// belongs: say that, rather than only what the text looks like as a frame header.
fn explain_text_instead_of_hello(err: Error, received: &[u8]) -> Error {
    // Only the text at the start counts: the worker's real Hello may already follow it.
    let text =
        received.iter().take(60).take_while(|b| b.is_ascii_graphic() || b.is_ascii_whitespace()).count();
    if err.kind() != ErrorKind::Protocol || text < HEADER_LEN {
        return err;
    }
    let head = &received[..text];
    Error::new(
        ErrorKind::Protocol,
        format!(
            "the worker sent text ({:?}) where its Hello belongs: over the stdio transport a worker must not \
             print to stdout before Worker::builder().connect(); print to stderr instead",
            String::from_utf8_lossy(head)
        ),
    )
    .with_source(err)
}

/// The one description of a worker that did not connect in time, whichever deadline noticed it:
/// the ready timeout here or in [`Primary::ready`](super::Primary::ready).
pub(super) fn not_connected_in_time(waited: Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!(
            "the worker did not connect within {waited:?}, so it is killed; does its program call \
             Worker::builder().connect() at start?"
        ),
    )
}

#[cfg(test)]
mod tests {
    use clusterfy_core::codec::encode_frame;
    use clusterfy_core::protocol::Hello;

    use super::*;

    fn oversize() -> Error {
        Error::new(ErrorKind::Protocol, "peer announced a frame above the maximum")
    }

    #[test]
    fn text_before_the_hello_is_named_even_when_the_real_hello_already_follows() {
        let mut received = b"starting up...\n".to_vec();
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            worker_id: clusterfy_core::WorkerId(1),
            token: "t".into(),
        };
        encode_frame(&Message::Hello(hello), 4096, &mut received).expect("a Hello frame");
        for bytes in [&received[..], &received[..15], &received[..6]] {
            let err = explain_text_instead_of_hello(oversize(), bytes);
            assert!(err.message().contains("must not print to stdout"), "{err}");
            assert!(err.message().contains("start"), "quotes the text: {err}");
        }
    }

    #[test]
    fn a_hello_begun_and_not_finished_is_not_called_a_missing_connect() {
        let silent = handshake_not_finished(Duration::from_secs(30), 0);
        assert!(silent.message().contains("call Worker::builder().connect()"), "{silent}");
        let stalled = handshake_not_finished(Duration::from_secs(30), 3);
        assert_eq!(stalled.kind(), ErrorKind::Timeout);
        assert!(stalled.message().contains("began its handshake"), "{stalled}");
        assert!(!stalled.message().contains("call Worker::builder().connect()"), "{stalled}");
    }

    #[test]
    fn a_binary_or_short_first_frame_keeps_its_own_error() {
        for bytes in [&b"\x07\x00\x00\x00abc"[..], b"ok\n", b""] {
            let err = explain_text_instead_of_hello(oversize(), bytes);
            assert_eq!(err.message(), "peer announced a frame above the maximum", "{bytes:?}");
        }
        let timeout = explain_text_instead_of_hello(Error::new(ErrorKind::Timeout, "slow"), b"text text");
        assert_eq!(timeout.kind(), ErrorKind::Timeout, "only protocol errors are explained");
    }
}
