//! Any text given to `clusterfy storage set` parses as a storage value or is refused with an
//! input error; a value it parses prints back as the same JSON.
#![no_main]

use clusterfy_cli::json::{as_json, parse_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match parse_json(text) {
        Ok(value) => {
            let printed = as_json(Some(value)).expect("a parsed value prints");
            let typed: serde_json::Value = serde_json::from_str(text).expect("it parsed once");
            assert_eq!(printed, typed);
        }
        Err(err) => assert!(
            matches!(
                err.kind(),
                clusterfy_core::error::ErrorKind::InvalidInput
                    | clusterfy_core::error::ErrorKind::Serialization
            ),
            "{err}"
        ),
    }
});
