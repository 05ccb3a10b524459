//! Any payload decodes as a worker-protocol message or fails cleanly; what decodes encodes back
//! to a payload that decodes to the same message (compared encoded: a NaN is not equal to
//! itself).
#![no_main]

use clusterfy_core::codec::{decode_payload, to_payload};
use clusterfy_core::protocol::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|payload: &[u8]| {
    if let Ok(message) = decode_payload::<Message>(payload) {
        let again = to_payload(&message).expect("a decoded message encodes");
        let back = decode_payload::<Message>(&again).expect("decodes back");
        assert_eq!(to_payload(&back).expect("encodes"), again);
    }
});
