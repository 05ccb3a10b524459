//! One control frame in, one out: the control protocol's framing over a Unix stream.

use clusterfy_core::codec::{FrameDecoder, encode_frame};
use clusterfy_core::control::MAX_CONTROL_FRAME_LEN;
use clusterfy_core::{Error, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads the next frame; `None` when the peer closed the stream between frames.
pub(crate) async fn read_frame<T: DeserializeOwned>(
    reader: &mut (impl AsyncRead + Unpin),
    decoder: &mut FrameDecoder,
) -> Result<Option<T>> {
    loop {
        if let Some(message) = decoder.decode::<T>()? {
            return Ok(Some(message));
        }
        let n = reader
            .read_buf(decoder.buffer_mut())
            .await
            .map_err(|e| Error::io("reading a control frame", e))?;
        if n == 0 {
            return Ok(None);
        }
    }
}

/// Writes one frame of at most `max_len` bytes and flushes it.
pub(crate) async fn write_frame<T: Serialize>(
    writer: &mut (impl AsyncWrite + Unpin),
    message: &T,
    max_len: usize,
) -> Result<()> {
    let mut bytes = Vec::new();
    encode_frame(message, max_len, &mut bytes)?;
    writer.write_all(&bytes).await.map_err(|e| Error::io("writing a control frame", e))?;
    writer.flush().await.map_err(|e| Error::io("writing a control frame", e))
}

/// A decoder for the primary's control replies.
pub(crate) fn decoder() -> FrameDecoder {
    FrameDecoder::new(MAX_CONTROL_FRAME_LEN)
}
