//! What the suite sends through a transport: frames made by `clusterfy_core::codec`, holding the
//! real `Hello` first and then the suite's own probe messages.

use clusterfy_core::codec::{FrameDecoder, encode_frame};
use clusterfy_core::transport::{ByteReader, ByteWriter};
use clusterfy_core::{Error, ErrorKind, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Frames written in one go are gathered up to this many bytes first.
const WRITE_BATCH: usize = 32 * 1024;

/// What the primary side asks of a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ToPeer {
    /// Answer with [`ToPrimary::Pong`] carrying the same `seq` and `body`.
    Ping { seq: u64, body: Vec<u8> },
    /// Send `count` [`ToPrimary::Burst`] frames, `seq` 0 to `count - 1`, with [`burst_body`]s.
    SendBurst { count: u64 },
    /// Write a frame header announcing `len` bytes, then a few bytes, and go on reading.
    AnnounceFrameOf { len: u32 },
    /// Close the connection and exit at once with [`exit::ON_REQUEST`](crate::transport::peer::exit::ON_REQUEST).
    Exit,
}

/// What a peer sends back.
///
/// `Pong` is deliberately not variant 0, the index of [`ToPeer::Ping`]: a transport that loops the
/// primary's own bytes back would otherwise pass the echo checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ToPrimary {
    /// One frame of a requested burst.
    Burst { seq: u64, body: Vec<u8> },
    /// The answer to a ping.
    Pong { seq: u64, body: Vec<u8> },
}

/// Deterministic bytes, different for every seed and covering every byte value.
pub(crate) fn pattern(seed: u64, len: usize) -> Vec<u8> {
    // xorshift64; the state must never be zero.
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// The body of burst frame `seq`.
pub(crate) fn burst_body(seq: u64) -> Vec<u8> {
    pattern(seq ^ 0xB0B5, (seq % 97) as usize)
}

/// Reads frames from a byte stream.
pub(crate) struct FrameReader {
    reader: ByteReader,
    decoder: FrameDecoder,
}

impl FrameReader {
    pub(crate) fn new(reader: ByteReader, max_frame_len: usize) -> Self {
        FrameReader { reader, decoder: FrameDecoder::new(max_frame_len) }
    }

    /// The next frame, or `None` if the stream ended cleanly between frames.
    ///
    /// A stream that ends inside a frame is [`ErrorKind::Closed`]; an I/O error is
    /// [`ErrorKind::Io`]; an oversize or undecodable frame is [`ErrorKind::Protocol`].
    pub(crate) async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        loop {
            if let Some(message) = self.decoder.decode()? {
                return Ok(Some(message));
            }
            let read = self
                .reader
                .read_buf(self.decoder.buffer_mut())
                .await
                .map_err(|err| Error::io("reading from the peer", err))?;
            if read == 0 {
                return match self.decoder.buffered_len() {
                    0 => Ok(None),
                    partial => Err(Error::new(
                        ErrorKind::Closed,
                        format!("the stream ended inside a frame, {partial} bytes into it"),
                    )),
                };
            }
        }
    }

    /// Reads and discards bytes until the stream ends; `Ok` for a clean end.
    pub(crate) async fn drain(&mut self) -> Result<()> {
        loop {
            self.decoder.buffer_mut().clear();
            let read = self
                .reader
                .read_buf(self.decoder.buffer_mut())
                .await
                .map_err(|err| Error::io("reading from the peer", err))?;
            if read == 0 {
                return Ok(());
            }
        }
    }
}

/// Writes frames to a byte stream.
pub(crate) struct FrameWriter {
    writer: ByteWriter,
    max_frame_len: usize,
    queued: Vec<u8>,
}

impl FrameWriter {
    pub(crate) fn new(writer: ByteWriter, max_frame_len: usize) -> Self {
        FrameWriter { writer, max_frame_len, queued: Vec::with_capacity(WRITE_BATCH) }
    }

    /// Encodes `message` behind the frames already queued, writing them out once the batch is full.
    pub(crate) async fn queue<T: Serialize + ?Sized>(&mut self, message: &T) -> Result<()> {
        encode_frame(message, self.max_frame_len, &mut self.queued)?;
        if self.queued.len() >= WRITE_BATCH { self.write_queued().await } else { Ok(()) }
    }

    /// Writes out and flushes everything queued.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        self.write_queued().await?;
        self.writer.flush().await.map_err(|err| Error::io("flushing to the peer", err))
    }

    /// Sends one frame now.
    pub(crate) async fn send<T: Serialize + ?Sized>(&mut self, message: &T) -> Result<()> {
        encode_frame(message, self.max_frame_len, &mut self.queued)?;
        self.flush().await
    }

    /// Sends bytes as they are, outside any framing.
    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.write_queued().await?;
        self.writer.write_all(bytes).await.map_err(|err| Error::io("writing to the peer", err))?;
        self.writer.flush().await.map_err(|err| Error::io("flushing to the peer", err))
    }

    async fn write_queued(&mut self) -> Result<()> {
        let written = self.writer.write_all(&self.queued).await;
        self.queued.clear();
        written.map_err(|err| Error::io("writing to the peer", err))
    }
}
