//! The frame decoder fed the same bytes in arbitrary pieces: it yields the same frames (and the
//! same first error) as when fed all at once, never more than its limit, and every frame that
//! decodes as a worker-protocol message encodes back to one that decodes the same.
#![no_main]

use clusterfy_core::codec::{FrameDecoder, HEADER_LEN, decode_payload, encode_frame};
use clusterfy_core::protocol::Message;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Picks the decoder's limit: small ones make "too large" reachable.
    limit: u16,
    pieces: Vec<Vec<u8>>,
}

/// Frames (or the error that ended decoding) from `decoder` after feeding `bytes`.
fn drain(decoder: &mut FrameDecoder, out: &mut Vec<Result<Vec<u8>, String>>) -> bool {
    loop {
        match decoder.next_frame() {
            Ok(Some(frame)) => out.push(Ok(frame.to_vec())),
            Ok(None) => return true,
            Err(err) => {
                out.push(Err(err.kind().to_string()));
                return false;
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let limit = usize::from(input.limit).max(16);
    let mut piecewise = Vec::new();
    let mut decoder = FrameDecoder::new(limit);
    for piece in &input.pieces {
        decoder.feed(piece);
        if !drain(&mut decoder, &mut piecewise) {
            break;
        }
        assert!(decoder.buffered_len() < limit + HEADER_LEN, "only a partial frame stays buffered");
    }
    let mut at_once = Vec::new();
    let mut whole = FrameDecoder::new(limit);
    let all: Vec<u8> = input.pieces.concat();
    whole.feed(&all);
    drain(&mut whole, &mut at_once);
    // Piecewise decoding stops at its first error; so does the whole.
    assert_eq!(piecewise, at_once);
    for frame in piecewise.into_iter().flatten() {
        assert!(frame.len() <= limit);
        if let Ok(message) = decode_payload::<Message>(&frame) {
            let mut again = Vec::new();
            encode_frame(&message, usize::MAX >> 1, &mut again).expect("a decoded message encodes");
            let mut decoder = FrameDecoder::new(usize::MAX >> 1);
            decoder.feed(&again);
            let back = decoder.decode::<Message>().expect("decodes").expect("one frame");
            // Compared encoded: a NaN is not equal to itself.
            let mut twice = Vec::new();
            encode_frame(&back, usize::MAX >> 1, &mut twice).expect("encodes");
            assert_eq!(twice, again);
        }
    }
});
