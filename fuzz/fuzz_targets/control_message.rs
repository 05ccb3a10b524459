//! Any payload decodes as a control request or reply or fails cleanly; what decodes encodes back
//! to a payload that decodes to the same message (compared encoded: a NaN is not equal to
//! itself).
#![no_main]

use clusterfy_core::codec::{decode_payload, to_payload};
use clusterfy_core::control::{ControlReply, ControlRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|payload: &[u8]| {
    if let Ok(request) = decode_payload::<ControlRequest>(payload) {
        let again = to_payload(&request).expect("a decoded request encodes");
        let back = decode_payload::<ControlRequest>(&again).expect("decodes back");
        assert_eq!(to_payload(&back).expect("encodes"), again);
    }
    if let Ok(reply) = decode_payload::<ControlReply>(payload) {
        let again = to_payload(&reply).expect("a decoded reply encodes");
        let back = decode_payload::<ControlReply>(&again).expect("decodes back");
        assert_eq!(to_payload(&back).expect("encodes"), again);
    }
});
