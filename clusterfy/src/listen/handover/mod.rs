//! [`Balance::Handover`](super::Balance::Handover): the primary accepts each connection and hands
//! it to one worker process, as Node's `cluster` module does by default.
//!
//! Each worker process inherits, at the listener's descriptor, its end of a private
//! `SOCK_SEQPACKET` socket pair. The primary sends each accepted connection on it as one message
//! with the descriptor attached (`SCM_RIGHTS`); the worker answers each one it took with a
//! message of its own. Until then the primary keeps its copy of the connection: when a worker
//! process ends (or drops its listener) with connections still queued on its pair, those go to
//! another worker instead of being closed with its socket.
//!
//! Messages, both fixed-size:
//! - primary to worker, [`HANDED_LEN`] bytes and one descriptor: the kind of connection (one
//!   byte) and its sequence number (from 1, little-endian `u64`);
//! - worker to primary, [`TAKEN_LEN`] bytes: the highest sequence number it took (so each one
//!   also confirms those before it); 0, sent once when it takes the listener, says it accepts.

mod dispatch;
mod receive;

pub(super) use dispatch::Handover;
pub use receive::HandedListener;

/// Bytes of a message that hands a connection over.
const HANDED_LEN: usize = 9;
/// Bytes of a worker's answer.
const TAKEN_LEN: usize = 8;

/// What kind of connection a message carries, so the worker makes the right stream of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Tcp = 0,
    Unix = 1,
}

fn encode_handed(kind: Kind, sequence: u64) -> [u8; HANDED_LEN] {
    let mut message = [0u8; HANDED_LEN];
    message[0] = kind as u8;
    message[1..].copy_from_slice(&sequence.to_le_bytes());
    message
}

fn decode_handed(message: &[u8]) -> Option<(Kind, u64)> {
    let (&kind, sequence) = message.split_first()?;
    let kind = match kind {
        0 => Kind::Tcp,
        1 => Kind::Unix,
        _ => return None,
    };
    Some((kind, u64::from_le_bytes(sequence.try_into().ok()?)))
}

fn encode_taken(sequence: u64) -> [u8; TAKEN_LEN] {
    sequence.to_le_bytes()
}

fn decode_taken(message: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(message.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_decode_back_and_malformed_ones_are_refused() {
        for kind in [Kind::Tcp, Kind::Unix] {
            assert_eq!(decode_handed(&encode_handed(kind, 7)), Some((kind, 7)));
        }
        assert_eq!(decode_taken(&encode_taken(u64::MAX)), Some(u64::MAX));
        let mut unknown_kind = encode_handed(Kind::Tcp, 1);
        unknown_kind[0] = 9;
        assert_eq!(decode_handed(&unknown_kind), None);
        assert_eq!(decode_handed(&[0; 4]), None);
        assert_eq!(decode_handed(&[]), None);
        assert_eq!(decode_taken(&[0; 9]), None);
    }
}
