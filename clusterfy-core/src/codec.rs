//! Framing: a `u32` little-endian length prefix followed by a postcard payload.
//!
//! Sans-IO: [`encode_frame`] appends to a buffer and [`FrameDecoder`] consumes bytes from one; the
//! tokio drivers in the facade only move those buffers through a transport.

use bytes::{Buf, BytesMut};
use serde::{Serialize, de::DeserializeOwned};

use crate::error::{Error, ErrorKind, Result};

/// Default largest payload of one frame: 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

/// Appends one frame holding `message` to `out`.
///
/// Fails with [`ErrorKind::Protocol`] if the payload is larger than `max_frame_len`; `out` is then
/// left as it was.
pub fn encode_frame<T: Serialize + ?Sized>(
    message: &T,
    max_frame_len: usize,
    out: &mut Vec<u8>,
) -> Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    if let Err(err) = postcard::serialize_with_flavor(message, AppendTo(out)) {
        out.truncate(start);
        return Err(Error::new(ErrorKind::Serialization, format!("could not encode a frame: {err}")));
    }
    let len = out.len() - start - HEADER_LEN;
    if len > max_frame_len {
        out.truncate(start);
        return Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "frame of {len} bytes exceeds the maximum of {max_frame_len} bytes; send less per message or raise max_frame_len"
            ),
        ));
    }
    let Ok(len) = u32::try_from(len) else {
        out.truncate(start);
        return Err(Error::new(ErrorKind::Protocol, "frame longer than 4 GiB; the length prefix is 32 bits"));
    };
    out[start..start + HEADER_LEN].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Appends the frame of `Message::Reply { id, result: Ok(Reply::Done) }`, the most common frame
/// there is (every acknowledged write), without serde: `[3, varint(id), 0, 0]` after its header.
/// The same bytes as [`encode_frame`] makes (a test checks).
pub fn encode_done_reply(id: crate::protocol::RequestId, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.push(3);
    let mut rest = id;
    while rest >= 0x80 {
        out.push((rest as u8) | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
    out.extend_from_slice(&[0, 0]);
    let len = (out.len() - start - HEADER_LEN) as u32;
    out[start..start + HEADER_LEN].copy_from_slice(&len.to_le_bytes());
}

/// A postcard flavor that appends to a borrowed buffer, so frames are encoded in place.
struct AppendTo<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendTo<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Splits a byte stream into frames and decodes them.
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame_len: usize,
    buf: BytesMut,
}

impl FrameDecoder {
    /// A decoder refusing payloads larger than `max_frame_len`.
    pub fn new(max_frame_len: usize) -> Self {
        FrameDecoder { max_frame_len, buf: BytesMut::with_capacity(8 * 1024) }
    }

    /// Changes the limit for frames not yet started (after a handshake, for example).
    pub fn set_max_frame_len(&mut self, max_frame_len: usize) {
        self.max_frame_len = max_frame_len;
    }

    /// The buffer to read more bytes into (for `AsyncReadExt::read_buf`).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Appends bytes received from the peer.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet decoded.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// The payload length the next frame's header announces, once its header is in (before the
    /// frame is checked against the maximum or room is reserved for it).
    pub fn announced_len(&self) -> Option<usize> {
        let header: [u8; HEADER_LEN] = self.buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(u32::from_le_bytes(header) as usize)
    }

    /// The payload of the next complete frame, if one is buffered.
    ///
    /// An announced length above the maximum is an error as soon as the header is in, before
    /// any room for the payload is reserved. After an error the stream is unusable.
    pub fn next_frame(&mut self) -> Result<Option<BytesMut>> {
        let Some(len) = self.announced_len() else {
            return Ok(None);
        };
        if len > self.max_frame_len {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "peer announced a frame of {len} bytes, above the maximum of {} bytes",
                    self.max_frame_len
                ),
            ));
        }
        if self.buf.len() < HEADER_LEN + len {
            // Reserve the rest of this frame once, now that its length is known to be acceptable.
            self.buf.reserve(HEADER_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        Ok(Some(self.buf.split_to(len)))
    }

    /// The next complete frame decoded as `T`, if one is buffered.
    pub fn decode<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        match self.next_frame()? {
            None => Ok(None),
            Some(payload) => decode_payload(&payload).map(Some),
        }
    }
}

/// Decodes one frame payload; the whole payload must be consumed.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T> {
    match postcard::take_from_bytes::<T>(payload) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "frame has {} trailing bytes after its message; the peer speaks another protocol version",
                rest.len()
            ),
        )),
        Err(err) => Err(Error::new(ErrorKind::Protocol, format!("undecodable frame: {err}"))),
    }
}

/// Encodes `value` as a bare postcard payload (command arguments and replies).
pub fn to_payload<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(value)
        .map_err(|err| Error::new(ErrorKind::Serialization, format!("could not encode: {err}")))
}

/// Decodes a bare postcard payload made by [`to_payload`].
pub fn from_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T> {
    decode_payload(payload).map_err(|err| {
        Error::new(
            ErrorKind::Serialization,
            format!("{}; do both sides use the same version of the command type?", err.message()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Message, Reply};

    #[test]
    fn the_done_reply_by_hand_is_the_frame_serde_makes() {
        for id in [0, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            let mut by_hand = vec![9];
            encode_done_reply(id, &mut by_hand);
            let mut by_serde = vec![9];
            encode_frame(
                &Message::Reply { id, result: Ok(Reply::Done) },
                DEFAULT_MAX_FRAME_LEN,
                &mut by_serde,
            )
            .expect("encodes");
            assert_eq!(by_hand, by_serde, "id {id}");
        }
    }
}
