//! The driver of one connection: a reader task that decodes frames and dispatches them, a writer
//! task that batches outgoing frames into few writes, and the table of requests in flight.
//!
//! Both the primary (one link per worker) and a worker (one link to the primary) use it; what
//! differs is the [`Inbound`] that handles the peer's requests and notices.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use clusterfy_core::codec::{FrameDecoder, encode_frame};
use clusterfy_core::protocol::{Message, Notice, Reply, Request, RequestId};
use clusterfy_core::session::RequestTable;
use clusterfy_core::transport::{ByteReader, ByteWriter};
use clusterfy_core::{Error, ErrorKind, Result, WireError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Frames queued for the writer before senders wait: enough to keep hundreds of requests in
/// flight without unbounded memory.
const OUTBOX_CAPACITY: usize = 1024;

/// Handles what the peer sends besides replies.
pub(crate) trait Inbound: Send + Sync + 'static {
    /// A request; the handler answers with [`Link::reply`] (usually from a spawned task, so slow
    /// handlers never stall the reader).
    fn on_request(self: Arc<Self>, link: &Arc<Link>, id: RequestId, body: Request);
    /// A one-way notice.
    fn on_notice(&self, notice: Notice);
}

enum Outgoing {
    /// One encoded frame. Callers encode, so an oversize message fails at its sender.
    Frame(Vec<u8>),
    /// Answered once everything queued before it is written.
    Flush(oneshot::Sender<()>),
    /// Write what is queued before it, then close the stream so the peer sees it end.
    Close,
}

type Waiter = oneshot::Sender<Result<Reply>>;

/// One live connection to a peer.
pub(crate) struct Link {
    peer: String,
    outbox: mpsc::Sender<Outgoing>,
    pending: Mutex<RequestTable<Waiter>>,
    /// The kind requests in flight fail with when the connection ends: `WorkerExited` on the
    /// primary's side, `Closed` on a worker's.
    closed_kind: ErrorKind,
    max_frame_len: usize,
}

/// Reads the first frame of a connection (the handshake), leaving any further bytes in `decoder`.
pub(crate) async fn read_first(reader: &mut ByteReader, decoder: &mut FrameDecoder) -> Result<Message> {
    loop {
        if let Some(message) = decoder.decode::<Message>()? {
            return Ok(message);
        }
        let n =
            reader.read_buf(decoder.buffer_mut()).await.map_err(|e| Error::io("reading the handshake", e))?;
        if n == 0 {
            return Err(Error::new(ErrorKind::Closed, "the peer closed the connection during the handshake"));
        }
    }
}

/// Writes one frame directly (the handshake, before a link exists).
pub(crate) async fn write_single(
    writer: &mut ByteWriter,
    message: &Message,
    max_frame_len: usize,
) -> Result<()> {
    let mut buf = Vec::new();
    encode_frame(message, max_frame_len, &mut buf)?;
    writer.write_all(&buf).await.map_err(|e| Error::io("writing the handshake", e))?;
    writer.flush().await.map_err(|e| Error::io("writing the handshake", e))
}

/// Why a link ended.
#[derive(Debug)]
pub(crate) enum LinkEnd {
    /// The peer closed the stream.
    Eof,
    /// Reading failed or the peer broke the protocol.
    Failed(Error),
}

impl Link {
    /// Starts the writer over an authenticated connection. Incoming frames are not read until
    /// [`LinkReader::spawn`] gives them a handler, so the handler may hold the link itself.
    pub(crate) fn new(
        peer: String,
        reader: ByteReader,
        writer: ByteWriter,
        decoder: FrameDecoder,
        max_frame_len: usize,
        closed_kind: ErrorKind,
    ) -> (Arc<Link>, LinkReader) {
        let (outbox, rx) = mpsc::channel(OUTBOX_CAPACITY);
        let link = Arc::new(Link {
            peer,
            outbox,
            pending: Mutex::new(RequestTable::new()),
            closed_kind,
            max_frame_len,
        });
        tokio::spawn(write_loop(writer, rx, link.peer.clone()));
        let reader = LinkReader { link: Arc::clone(&link), reader, decoder };
        (link, reader)
    }

    fn pending(&self) -> MutexGuard<'_, RequestTable<Waiter>> {
        // A panic while holding this lock cannot leave the table inconsistent (each method is a
        // single map operation), so a poisoned lock is safe to reuse.
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends a request and waits for its reply, at most `deadline`.
    pub(crate) async fn request(&self, body: Request, deadline: Duration) -> Result<Reply> {
        let (tx, rx) = oneshot::channel();
        let id = self.pending().start(tx).map_err(|_| self.closed_error())?;
        if let Err(err) = self.send(&Message::Request { id, body }).await {
            self.pending().abandon(id);
            return Err(err);
        }
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(result)) => result,
            // The waiter was dropped without an answer: only happens when the link closed.
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => {
                self.pending().abandon(id);
                Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "no reply from {} within {deadline:?}; the handler may be stuck, or raise the request timeout",
                        self.peer
                    ),
                ))
            }
        }
    }

    /// Answers the peer's request `id`. Fails only if the connection is gone.
    pub(crate) async fn reply(&self, id: RequestId, result: Result<Reply>) -> Result<()> {
        let result = result.map_err(|e| WireError::from(&e));
        match self.send(&Message::Reply { id, result }).await {
            // The answer itself cannot go out (too large): the asker still gets exactly one reply.
            Err(err) if err.kind() != self.closed_kind => {
                let result = Err(WireError::from(&err));
                self.send(&Message::Reply { id, result }).await
            }
            other => other,
        }
    }

    /// Sends a one-way notice.
    pub(crate) async fn notify(&self, notice: Notice) -> Result<()> {
        self.send(&Message::Notice(notice)).await
    }

    async fn send(&self, message: &Message) -> Result<()> {
        // Most frames are small; one right-sized allocation beats growing from empty.
        let mut frame = Vec::with_capacity(128);
        encode_frame(message, self.max_frame_len, &mut frame)
            .map_err(|e| e.with_context("peer", &self.peer))?;
        self.outbox.send(Outgoing::Frame(frame)).await.map_err(|_| self.closed_error())
    }

    /// Waits until everything queued so far is written (before a worker exits).
    pub(crate) async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.outbox.send(Outgoing::Flush(tx)).await.map_err(|_| self.closed_error())?;
        rx.await.map_err(|_| self.closed_error())
    }

    fn closed_error(&self) -> Error {
        let message = match self.closed_kind {
            ErrorKind::WorkerExited => format!("{} exited or disconnected before answering", self.peer),
            _ => format!("the connection to {} is closed", self.peer),
        };
        Error::new(self.closed_kind, message)
    }

    /// Fails every request in flight; later requests fail at once.
    pub(crate) fn close(&self) {
        let waiters = self.pending().close();
        for waiter in waiters {
            let _ = waiter.send(Err(self.closed_error()));
        }
    }

    fn complete(&self, id: RequestId, result: std::result::Result<Reply, WireError>) {
        match self.pending().finish(id) {
            Some(waiter) => {
                let _ = waiter.send(result.map_err(Error::from));
            }
            None => tracing::debug!(peer = %self.peer, id, "reply to a request nobody waits for (timed out)"),
        }
    }
}

/// The not-yet-started reading side of a [`Link`].
pub(crate) struct LinkReader {
    link: Arc<Link>,
    reader: ByteReader,
    decoder: FrameDecoder,
}

impl LinkReader {
    /// Starts dispatching incoming frames to `inbound`. The task ends when the connection does;
    /// by then every request in flight has failed.
    pub(crate) fn spawn(self, inbound: Arc<dyn Inbound>) -> tokio::task::JoinHandle<LinkEnd> {
        tokio::spawn(read_loop(self.link, self.reader, self.decoder, inbound))
    }
}

async fn read_loop(
    link: Arc<Link>,
    mut reader: ByteReader,
    mut decoder: FrameDecoder,
    inbound: Arc<dyn Inbound>,
) -> LinkEnd {
    let end = loop {
        match decoder.decode::<Message>() {
            Ok(Some(message)) => {
                dispatch(&link, &inbound, message);
                continue;
            }
            Ok(None) => {}
            Err(err) => break LinkEnd::Failed(err),
        }
        match reader.read_buf(decoder.buffer_mut()).await {
            Ok(0) if decoder.buffered_len() == 0 => break LinkEnd::Eof,
            Ok(0) => {
                break LinkEnd::Failed(Error::new(
                    ErrorKind::Protocol,
                    format!("{} closed the connection in the middle of a frame", link.peer),
                ));
            }
            Ok(_) => {}
            Err(err) => break LinkEnd::Failed(Error::io(format!("reading from {}", link.peer), err)),
        }
    };
    if let LinkEnd::Failed(err) = &end
        && err.kind() == ErrorKind::Protocol
    {
        // Tell the peer why before hanging up; it may be a misbuilt but honest program.
        let mut frame = Vec::new();
        let notice = Message::Notice(Notice::Error(WireError::from(err)));
        if encode_frame(&notice, link.max_frame_len, &mut frame).is_ok() {
            let _ = link.outbox.try_send(Outgoing::Frame(frame));
        }
    }
    // Whatever ended reading ends the connection both ways, so the peer is never left waiting.
    let _ = link.outbox.try_send(Outgoing::Close);
    link.close();
    end
}

fn dispatch(link: &Arc<Link>, inbound: &Arc<dyn Inbound>, message: Message) {
    match message {
        Message::Reply { id, result } => link.complete(id, result),
        Message::Request { id, body } => Arc::clone(inbound).on_request(link, id, body),
        Message::Notice(notice) => inbound.on_notice(notice),
        Message::Hello(_) | Message::Welcome(_) => {
            tracing::warn!(peer = %link.peer, "ignoring a second handshake frame");
        }
    }
}

async fn write_loop(mut writer: ByteWriter, mut rx: mpsc::Receiver<Outgoing>, peer: String) {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut flushed = Vec::new();
    let mut close = false;
    while !close && let Some(first) = rx.recv().await {
        buf.clear();
        let mut next = Some(first);
        // Drain what is already queued so many small frames go out in one write.
        while let Some(item) = next {
            match item {
                Outgoing::Frame(frame) => buf.extend_from_slice(&frame),
                Outgoing::Flush(done) => flushed.push(done),
                Outgoing::Close => close = true,
            }
            next = if buf.len() < 256 * 1024 && !close { rx.try_recv().ok() } else { None };
        }
        if !buf.is_empty()
            && let Err(err) = writer.write_all(&buf).await
        {
            tracing::debug!(%peer, error = %err, "write failed; the reader will see the connection end");
            return;
        }
        if let Err(err) = writer.flush().await {
            tracing::debug!(%peer, error = %err, "flush failed");
            return;
        }
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
    let _ = writer.shutdown().await;
}
