//! The driver of one connection: a reader task that decodes frames, a writer task that batches
//! outgoing frames into few writes, and the sweeper of requests past their deadline. What a frame
//! means, which requests wait, when reading pauses, which answer goes back and what is said
//! before hanging up are the sans-IO [`LinkState`]'s to decide; this file moves bytes and wakes
//! tasks.
//!
//! Both the primary (one link per worker) and a worker (one link to the primary) use it; what
//! differs is the [`Inbound`] that handles the peer's requests and notices.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use clusterfy_core::codec::{FrameDecoder, encode_frame};
use clusterfy_core::protocol::{Message, Notice, Reply, Request, RequestId};
use clusterfy_core::session::{Incoming, LinkState, encode_answer, farewell};
use clusterfy_core::transport::{ByteReader, ByteWriter};
use clusterfy_core::{Error, ErrorKind, Result, WireError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, oneshot};

/// Bytes queued for the writer before senders wait, on a worker's side (the primary's side
/// takes [`Limits::queued_bytes_per_worker`](crate::primary::Limits)): enough to keep hundreds
/// of requests in flight without unbounded memory. Replies and notices the link must not lose
/// are queued past it.
const OUTBOX_HIGH_WATER: usize = 1 << 20;
/// Most bytes the writer hands to one write call.
const WRITE_CHUNK: usize = 256 * 1024;
/// How often the sweeper looks for requests past their deadline while any are in flight: a
/// request fails at most this much after its deadline.
const SWEEP_EVERY: Duration = Duration::from_millis(20);
/// Requests of the peer being handled at once on a worker's link (the primary's side takes
/// [`Limits::requests_per_worker`](crate::primary::Limits)).
const MAX_ANSWERING: usize = 1024;

/// What one link may hold for its peer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkBounds {
    /// The peer's requests handled at once: past it, the link reads no more of the peer's frames
    /// until some are answered, so a peer that pipelines without end slows itself down instead
    /// of growing this process's memory (the other links go on).
    pub(crate) answering: usize,
    /// Bytes queued for the peer past which senders wait.
    pub(crate) queued_bytes: usize,
    /// Also read none of the peer's frames while `queued_bytes` wait for it: a peer that does
    /// not read its replies stops being served. The primary's side only: if both sides did it,
    /// two peers writing to each other could each wait for the other to read, for good.
    pub(crate) pause_when_backed_up: bool,
    /// Bytes left unread by the peer past which the link ends instead of queueing more: answers
    /// that cannot wait (the storage writer's) still arrive while reading is paused. `None` on a
    /// worker's side, whose peer is its own primary.
    pub(crate) unread_bytes: Option<usize>,
}

impl LinkBounds {
    /// A worker's link to its primary: it always reads, so the primary's bounds can work.
    pub(crate) const WORKER: LinkBounds = LinkBounds {
        answering: MAX_ANSWERING,
        queued_bytes: OUTBOX_HIGH_WATER,
        pause_when_backed_up: false,
        unread_bytes: None,
    };
}

/// Handles what the peer sends besides replies.
pub(crate) trait Inbound: Send + Sync + 'static {
    /// A request; the handler answers with [`Link::reply`] or [`Link::reply_soon`] (never by
    /// blocking the reader: slow handlers run in tasks of their own).
    fn on_request(self: Arc<Self>, link: &Arc<Link>, id: RequestId, body: Request);
    /// A one-way notice.
    fn on_notice(&self, link: &Arc<Link>, notice: Notice);
}

/// Frames on their way to the writer task, encoded straight into one buffer that the writer
/// swaps out whole: no allocation and no channel operation per frame.
struct Outbox {
    /// Bytes queued past which senders wait.
    high_water: usize,
    /// Bytes queued past which nothing more is queued and the link ends
    /// ([`LinkBounds::unread_bytes`]).
    unread_cap: Option<usize>,
    /// Wakes the reader to end the link once the cap is passed (a permit is kept).
    overflow: Notify,
    state: Mutex<Queued>,
    /// Wakes the writer; `notify_one` keeps a permit, so a wake-up between its checks is kept.
    /// Shared with the writer task, which waits on it without holding the link.
    wake_writer: Arc<Notify>,
    /// Wakes senders waiting for the buffer to drain.
    room: Notify,
}

#[derive(Default)]
struct Queued {
    bytes: Vec<u8>,
    /// Answered once everything queued before them is written.
    flushes: Vec<oneshot::Sender<()>>,
    /// Write what is queued, then close the stream so the peer sees it end.
    close: bool,
    /// The writer is gone: nothing more goes out.
    gone: bool,
    /// The peer left more than the unread cap queued: the link ends.
    overflowed: bool,
}

impl Outbox {
    fn new(bounds: &LinkBounds) -> Self {
        Outbox {
            high_water: bounds.queued_bytes,
            unread_cap: bounds.unread_bytes,
            overflow: Notify::new(),
            state: Mutex::default(),
            wake_writer: Arc::default(),
            room: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queued> {
        // Every change keeps the state consistent (a failed encode leaves the bytes as they were).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Encodes `message` into the queue, waiting while the queue is over its high water.
    async fn send(&self, message: &Message, max_frame_len: usize) -> Result<(), SendError> {
        self.send_with(|bytes| encode_frame(message, max_frame_len, bytes).map_err(SendError::Encode)).await
    }

    /// [`Outbox::send`] of what `encode` appends to the queue (it leaves the queue as it was if
    /// it fails).
    async fn send_with(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), SendError>,
    ) -> Result<(), SendError> {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            {
                let mut queued = self.lock();
                if queued.gone || queued.close || queued.overflowed {
                    return Err(SendError::Gone);
                }
                if queued.bytes.len() < self.high_water {
                    encode(&mut queued.bytes)?;
                    drop(queued);
                    self.wake_writer.notify_one();
                    return Ok(());
                }
                // Registered before the lock is released, so the writer's wake-up is not missed.
                room.as_mut().enable();
            }
            room.await;
        }
    }

    /// Encodes `message` into the queue at once, past the high water: for answers that must not
    /// wait (or be lost) while the queue drains.
    fn push(&self, message: &Message, max_frame_len: usize) -> Result<(), SendError> {
        self.push_with(|bytes| encode_frame(message, max_frame_len, bytes).map_err(SendError::Encode))
    }

    /// [`Outbox::push`] of what `encode` appends to the queue (it leaves the queue as it was if it
    /// fails).
    fn push_with(&self, encode: impl FnOnce(&mut Vec<u8>) -> Result<(), SendError>) -> Result<(), SendError> {
        let mut queued = self.lock();
        if queued.gone || queued.close || queued.overflowed {
            return Err(SendError::Gone);
        }
        if self.unread_cap.is_some_and(|cap| queued.bytes.len() > cap) {
            queued.overflowed = true;
            drop(queued);
            // The reader may be waiting for room or for answers rather than reading: wake both.
            self.overflow.notify_one();
            self.room.notify_waiters();
            return Err(SendError::Gone);
        }
        encode(&mut queued.bytes)?;
        drop(queued);
        self.wake_writer.notify_one();
        Ok(())
    }

    fn flush(&self) -> Option<oneshot::Receiver<()>> {
        let mut queued = self.lock();
        if queued.gone {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        queued.flushes.push(tx);
        drop(queued);
        self.wake_writer.notify_one();
        Some(rx)
    }

    fn close(&self) {
        self.lock().close = true;
        self.wake_writer.notify_one();
        // Senders waiting for room see the link closing instead of waiting for a stuck writer.
        self.room.notify_waiters();
    }
}

enum SendError {
    /// The message does not fit in a frame.
    Encode(Error),
    /// The connection is closed or closing.
    Gone,
}

/// A request in flight.
struct Waiter {
    reply: oneshot::Sender<Result<Reply>>,
    /// For the timeout's message.
    deadline: Duration,
}

/// One live connection to a peer.
pub(crate) struct Link {
    peer: String,
    outbox: Outbox,
    state: Mutex<LinkState<Waiter>>,
    /// Wakes the sweeper when the first request of a quiet spell starts, and when the link goes.
    sweep: Arc<Notify>,
    /// The kind requests in flight fail with when the connection ends: `WorkerExited` on the
    /// primary's side, `Closed` on a worker's.
    closed_kind: ErrorKind,
    max_frame_len: usize,
    bounds: LinkBounds,
    /// Wakes the reader paused at [`LinkBounds::answering`] of the peer's requests.
    answered: Notify,
}

/// Forgets a request whose caller stopped waiting (its future was dropped): its entry leaves the
/// table at once instead of at its deadline.
struct Asked<'l> {
    link: &'l Link,
    id: RequestId,
    answered: bool,
}

impl Drop for Asked<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.link.state().abandon(self.id);
        }
    }
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
        bounds: LinkBounds,
    ) -> (Arc<Link>, LinkReader) {
        let link = Arc::new(Link {
            peer,
            outbox: Outbox::new(&bounds),
            state: Mutex::new(LinkState::new(bounds.answering)),
            sweep: Arc::new(Notify::new()),
            closed_kind,
            max_frame_len,
            bounds,
            answered: Notify::new(),
        });
        tokio::spawn(write_loop(writer, Arc::downgrade(&link), Arc::clone(&link.outbox.wake_writer)));
        tokio::spawn(sweep_expired(Arc::downgrade(&link), Arc::clone(&link.sweep)));
        let reader = LinkReader { link: Arc::clone(&link), reader, decoder };
        (link, reader)
    }

    fn state(&self) -> MutexGuard<'_, LinkState<Waiter>> {
        // A panic while holding this lock cannot leave the state inconsistent (each method is a
        // single map operation or counter step), so a poisoned lock is safe to reuse.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends a request and waits for its reply, at most `deadline`.
    pub(crate) async fn request(&self, body: Request, deadline: Duration) -> Result<Reply> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut state = self.state();
            let first = !state.is_waiting();
            let id = state
                .start(Waiter { reply: tx, deadline }, Instant::now() + deadline)
                .map_err(|_| self.closed_error())?;
            if first {
                self.sweep.notify_one();
            }
            id
        };
        let mut asked = Asked { link: self, id, answered: false };
        let mut rx = rx;
        let message = Message::Request { id, body };
        // The deadline covers waiting for room to send, too: a peer that reads nothing must not
        // hold the request (a shutdown's, say) past it.
        let answer = tokio::select! {
            sent = self.send(&message) => match sent {
                Ok(()) => (&mut rx).await,
                Err(err) => return Err(err),
            },
            unsent = &mut rx => unsent,
        };
        asked.answered = true;
        // The waiter is dropped without an answer only when the link closed.
        answer.unwrap_or_else(|_| Err(self.closed_error()))
    }

    /// Counts one of the peer's requests as answered, and lets a paused reader go on.
    fn answered_one(&self) {
        if self.state().answered() {
            self.answered.notify_one();
        }
    }

    /// Waits while reading is paused: at [`LinkBounds::answering`] of the peer's requests, or
    /// with [`LinkBounds::pause_when_backed_up`] while the peer leaves its queue unread.
    async fn room_to_read(&self) {
        loop {
            let answered = self.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            if !self.state().reading_paused() || self.outbox.lock().overflowed {
                break;
            }
            tokio::select! {
                () = answered => {}
                // The unread cap was passed while no answer came: the reader must end the link.
                () = self.outbox.overflow.notified() => break,
            }
        }
        // Nothing is read meanwhile, so the count of requests being answered cannot grow again.
        if self.bounds.pause_when_backed_up {
            self.drained_below(self.bounds.queued_bytes).await;
        }
    }

    /// Fails the requests past their deadline; true while requests are in flight.
    fn expire(&self) -> bool {
        let expired = self.state().expire(Instant::now());
        for waiter in expired {
            let _ = waiter.reply.send(Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "no reply from {} within {:?}; the handler may be stuck, or raise the request timeout",
                    self.peer, waiter.deadline
                ),
            )));
        }
        self.state().is_waiting()
    }

    /// Answers the peer's request `id`, waiting while the outbox is over its high water. Fails
    /// only if the connection is gone.
    pub(crate) async fn reply(&self, id: RequestId, result: Result<Reply>) -> Result<()> {
        self.answered_one();
        let result = result.map_err(|e| WireError::from(&e));
        let sent = self.outbox.send_with(|bytes| self.encode_answer(id, result, bytes)).await;
        sent.map_err(|_| self.closed_error())
    }

    /// Answers the peer's request `id` without waiting, past the outbox's high water (the asker
    /// bounds how many answers it waits for). A connection that is gone drops the answer: its
    /// supervisor reports the end.
    pub(crate) fn reply_soon(&self, id: RequestId, result: Result<Reply>) {
        self.answered_one();
        let result = result.map_err(|e| WireError::from(&e));
        let _ = self.outbox.push_with(|bytes| self.encode_answer(id, result, bytes));
    }

    /// Appends the one answer to request `id` (see [`encode_answer`]), and logs one that was too
    /// large for a frame (the asker got an error saying so instead).
    fn encode_answer(
        &self,
        id: RequestId,
        result: std::result::Result<Reply, WireError>,
        bytes: &mut Vec<u8>,
    ) -> Result<(), SendError> {
        if let Some(err) = encode_answer(id, result, self.max_frame_len, bytes) {
            tracing::warn!(peer = %self.peer, error = %err, "an answer too large for a frame was replaced by an error");
        }
        Ok(())
    }

    /// Sends a one-way notice.
    pub(crate) async fn notify(&self, notice: Notice) -> Result<()> {
        self.send(&Message::Notice(notice)).await
    }

    /// Sends a one-way notice without waiting, past the outbox's high water: for notices that
    /// must keep their place before a reply (a replica's change), whose volume the caller bounds.
    /// A connection that is gone drops it.
    pub(crate) fn notify_soon(&self, notice: Notice) {
        if let Err(SendError::Encode(err)) = self.outbox.push(&Message::Notice(notice), self.max_frame_len) {
            tracing::warn!(peer = %self.peer, error = %err, "a notice too large for a frame was dropped");
        }
    }

    /// Who is at the other end, for logs.
    pub(crate) fn peer(&self) -> &str {
        &self.peer
    }

    /// The largest frame this link sends or reads.
    pub(crate) fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Bytes queued for the peer and not yet handed to the writer: how far the peer is behind.
    pub(crate) fn queued_len(&self) -> usize {
        self.outbox.lock().bytes.len()
    }

    /// Waits until fewer than `bytes` are queued for the peer, or the connection is gone or ending.
    pub(crate) async fn drained_below(&self, bytes: usize) {
        loop {
            let room = self.outbox.room.notified();
            tokio::pin!(room);
            {
                let queued = self.outbox.lock();
                if queued.gone || queued.overflowed || queued.bytes.len() < bytes {
                    return;
                }
                // Registered before the lock is released, so the writer's wake-up is not missed.
                room.as_mut().enable();
            }
            room.await;
        }
    }

    async fn send(&self, message: &Message) -> Result<()> {
        match self.outbox.send(message, self.max_frame_len).await {
            Ok(()) => Ok(()),
            Err(SendError::Encode(err)) => Err(err.with_context("peer", &self.peer)),
            Err(SendError::Gone) => Err(self.closed_error()),
        }
    }

    /// Waits until everything queued so far is written (before a worker exits).
    pub(crate) async fn flush(&self) -> Result<()> {
        let written = self.outbox.flush().ok_or_else(|| self.closed_error())?;
        written.await.map_err(|_| self.closed_error())
    }

    /// Why a link whose peer left more than [`LinkBounds::unread_bytes`] unread ended.
    fn unread_error(&self) -> Error {
        let cap = self.outbox.unread_cap.unwrap_or_default();
        Error::new(
            ErrorKind::Busy,
            format!(
                "{} left more than {} KiB of replies and notices unread (Limits::unread_bytes_per_worker): \
                 its connection is closed; a worker must read its replies, or raise the limit",
                self.peer,
                cap / 1024
            ),
        )
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
        let waiters = self.state().close();
        for waiter in waiters {
            let _ = waiter.reply.send(Err(self.closed_error()));
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The sweeper and the writer hold only weak references: wake them to see the link gone.
        self.sweep.notify_one();
        self.outbox.wake_writer.notify_one();
    }
}

/// Fails requests past their deadline, one sweep every [`SWEEP_EVERY`] while any are in flight,
/// instead of a timer per request. Ends with the link.
async fn sweep_expired(link: Weak<Link>, wake: Arc<Notify>) {
    loop {
        let busy = match link.upgrade() {
            Some(link) if !link.state().is_closed() => link.expire(),
            _ => return,
        };
        if busy {
            tokio::time::sleep(SWEEP_EVERY).await;
        } else {
            wake.notified().await;
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
                let incoming = link.state().receive(message);
                dispatch(&link, &inbound, incoming);
                // Decoding from the buffer never waits, so a peer that sent thousands of frames
                // at once would hold this thread for all of them: after tokio's budget of
                // frames, the other connections' tasks run first.
                tokio::task::coop::consume_budget().await;
                link.room_to_read().await;
                if link.outbox.lock().overflowed {
                    break LinkEnd::Failed(link.unread_error());
                }
                continue;
            }
            Ok(None) => {}
            Err(err) => break LinkEnd::Failed(err),
        }
        let read = tokio::select! {
            read = reader.read_buf(decoder.buffer_mut()) => read,
            () = link.outbox.overflow.notified() => break LinkEnd::Failed(link.unread_error()),
        };
        match read {
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
        && let Some(notice) = farewell(err)
    {
        let _ = link.outbox.push(&notice, link.max_frame_len);
    }
    // Whatever ended reading ends the connection both ways, so the peer is never left waiting.
    link.outbox.close();
    link.close();
    end
}

/// Does what the connection made of a frame.
fn dispatch(link: &Arc<Link>, inbound: &Arc<dyn Inbound>, incoming: Incoming<Waiter>) {
    match incoming {
        Incoming::Answer { waiter, result } => drop(waiter.reply.send(result.map_err(Error::from))),
        Incoming::Late { id } => {
            tracing::debug!(peer = %link.peer, id, "reply to a request nobody waits for (timed out)")
        }
        Incoming::Request { id, body } => Arc::clone(inbound).on_request(link, id, body),
        Incoming::Notice(notice) => inbound.on_notice(link, notice),
        Incoming::Misplaced(frame) => {
            tracing::warn!(peer = %link.peer, frame, "ignoring a second handshake frame")
        }
    }
}

/// Writes what senders queued, many frames per write call, until the link closes or goes.
async fn write_loop(mut writer: ByteWriter, link: Weak<Link>, wake: Arc<Notify>) {
    let mut out = Vec::with_capacity(16 * 1024);
    let mut flushed = Vec::new();
    loop {
        let Some(link) = link.upgrade() else { break };
        let close = {
            let mut queued = link.outbox.lock();
            std::mem::swap(&mut queued.bytes, &mut out);
            flushed.append(&mut queued.flushes);
            queued.close
        };
        if out.is_empty() && flushed.is_empty() && !close {
            // Holds the link only while it has something to say; a permit left by a sender since
            // the check above makes this return at once.
            drop(link);
            wake.notified().await;
            continue;
        }
        link.outbox.room.notify_waiters();
        let peer = link.peer.clone();
        drop(link);
        if let Err(err) = write_out(&mut writer, &out).await {
            tracing::debug!(%peer, error = %err, "write failed; the reader will see the connection end");
            break;
        }
        out.clear();
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
        if close {
            let _ = writer.shutdown().await;
            break;
        }
    }
    if let Some(link) = link.upgrade() {
        let mut queued = link.outbox.lock();
        queued.gone = true;
        // Waiting flushes fail with the link (their senders drop), and waiting senders see it gone.
        queued.flushes.clear();
        drop(queued);
        link.outbox.room.notify_waiters();
    }
}

async fn write_out(writer: &mut ByteWriter, bytes: &[u8]) -> std::io::Result<()> {
    for chunk in bytes.chunks(WRITE_CHUNK) {
        writer.write_all(chunk).await?;
    }
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use clusterfy_core::Value;

    use super::*;

    /// Handles nothing: the test drives the link's answers itself.
    struct Nothing;

    impl Inbound for Nothing {
        fn on_request(self: Arc<Self>, _: &Arc<Link>, _: RequestId, _: Request) {}
        fn on_notice(&self, _: &Arc<Link>, _: Notice) {}
    }

    /// Largest frame of the test links.
    const FRAMES: usize = 1 << 20;
    /// The test links' unread cap.
    const UNREAD_CAP: usize = 8 * 1024;

    /// A primary-side link to a peer whose end (returned, kept open) reads nothing, handling
    /// `answering` of its requests at once, and its reader task.
    fn link_to_a_greedy_peer(
        answering: usize,
    ) -> (Arc<Link>, tokio::task::JoinHandle<LinkEnd>, tokio::io::DuplexStream) {
        let (ours, peer) = tokio::io::duplex(4096);
        let (read, write) = tokio::io::split(ours);
        let bounds = LinkBounds {
            answering,
            queued_bytes: 1024,
            pause_when_backed_up: true,
            unread_bytes: Some(UNREAD_CAP),
        };
        let (link, reader) = Link::new(
            "worker \"greedy\"".into(),
            Box::new(read),
            Box::new(write),
            FrameDecoder::new(FRAMES),
            FRAMES,
            ErrorKind::WorkerExited,
            bounds,
        );
        (link, reader.spawn(Arc::new(Nothing)), peer)
    }

    /// Waits for the reader to end the link, and checks it ended for the unread cap.
    async fn ended_by_the_unread_cap(reading: tokio::task::JoinHandle<LinkEnd>) {
        let end = tokio::time::timeout(Duration::from_secs(10), reading)
            .await
            .expect("the link ends instead of queueing on")
            .expect("the reader task");
        let LinkEnd::Failed(err) = &end else { panic!("ended by the cap, not {end:?}") };
        assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
        assert!(err.message().contains("unread_bytes_per_worker"), "names the bound: {err}");
    }

    /// Counts the notices it is given.
    #[derive(Default)]
    struct CountingNotices(std::sync::atomic::AtomicUsize);

    impl Inbound for CountingNotices {
        fn on_request(self: Arc<Self>, _: &Arc<Link>, _: RequestId, _: Request) {}
        fn on_notice(&self, _: &Arc<Link>, _: Notice) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn a_reader_with_thousands_of_frames_buffered_lets_other_tasks_run_between_them() {
        const SENT: usize = 10_000;
        let (ours, mut peer) = tokio::io::duplex(1 << 20);
        let mut frames = Vec::new();
        for _ in 0..SENT {
            let notice = Message::Notice(Notice::StorageChanged { path: "p".into() });
            encode_frame(&notice, FRAMES, &mut frames).expect("encodes");
        }
        tokio::io::AsyncWriteExt::write_all(&mut peer, &frames).await.expect("frames sent");
        let (read, write) = tokio::io::split(ours);
        let (_link, reader) = Link::new(
            "worker \"chatty\"".into(),
            Box::new(read),
            Box::new(write),
            FrameDecoder::new(FRAMES),
            FRAMES,
            ErrorKind::WorkerExited,
            LinkBounds::WORKER,
        );
        let counted = Arc::new(CountingNotices::default());
        let _reading = reader.spawn(Arc::clone(&counted) as Arc<dyn Inbound>);
        // On this one-thread runtime, the task spawned after the reader runs only once the
        // reader gives way.
        let seen = tokio::spawn({
            let counted = Arc::clone(&counted);
            async move { counted.0.load(std::sync::atomic::Ordering::Relaxed) }
        })
        .await
        .expect("the other task");
        assert!(
            seen > 0 && seen < SENT,
            "the reader handled {seen} of {SENT} frames before another task ran"
        );
    }

    #[tokio::test]
    async fn a_peer_that_leaves_more_than_the_unread_cap_is_cut_off_with_the_reason() {
        let (link, reading, _peer) = link_to_a_greedy_peer(16);
        // Answers that cannot wait, as the storage writer's: 64 KiB of them against a cap of 8.
        for id in 0..64 {
            link.reply_soon(id, Ok(Reply::Value(Some(Value::String("x".repeat(1024))))));
        }
        ended_by_the_unread_cap(reading).await;
        assert!(link.queued_len() <= UNREAD_CAP + 2048, "queued {} bytes", link.queued_len());
    }

    #[tokio::test]
    async fn a_reader_paused_at_its_cap_of_requests_still_ends_the_link_past_the_unread_cap() {
        let (link, reading, mut peer) = link_to_a_greedy_peer(4);
        // Four requests nobody answers: the reader pauses, waiting for answers, not for bytes.
        let mut requests = Vec::new();
        for id in 1..=4 {
            let get = Request::Storage(clusterfy_core::protocol::StorageRequest::Get { path: "x".into() });
            encode_frame(&Message::Request { id, body: get }, FRAMES, &mut requests).expect("encodes");
        }
        tokio::io::AsyncWriteExt::write_all(&mut peer, &requests).await.expect("requests sent");
        while link.state().answering() < 4 {
            tokio::task::yield_now().await;
        }
        // Notices that must not wait, as a replica's changes: 32 KiB of them against a cap of 8.
        for _ in 0..64 {
            link.notify_soon(Notice::StorageChanged { path: "p".repeat(512) });
        }
        ended_by_the_unread_cap(reading).await;
    }
}
