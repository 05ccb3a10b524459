//! Any bytes decode as a storage `Value` or fail cleanly (deep nesting included); a decoded value
//! encodes back to itself and converts to typed values, or fails, without panicking.
#![no_main]

use std::collections::BTreeMap;

use clusterfy_core::value::{Value, from_value, to_value};
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    name: String,
    count: u32,
    tags: Vec<String>,
    nested: Option<Box<Record>>,
}

/// The postcard form of `value`: compares values whose floats may be NaN, which is not equal to
/// itself.
fn encoded<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("encodes")
}

/// `value` as `T`; if it converts, the typed value converts back to a value that gives `T` again.
fn typed<T: serde::de::DeserializeOwned + Serialize>(value: &Value) {
    if let Ok(typed) = from_value::<T>(value.clone()) {
        let again = to_value(&typed).expect("a typed value converts back");
        assert_eq!(encoded(&from_value::<T>(again).expect("and again")), encoded(&typed));
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(value) = postcard::from_bytes::<Value>(bytes) else { return };
    let again = encoded(&value);
    assert_eq!(encoded(&postcard::from_bytes::<Value>(&again).expect("decodes back")), again);
    typed::<u64>(&value);
    typed::<i8>(&value);
    typed::<f64>(&value);
    typed::<String>(&value);
    typed::<Vec<u16>>(&value);
    typed::<Option<bool>>(&value);
    typed::<BTreeMap<String, i64>>(&value);
    typed::<Record>(&value);
    typed::<Value>(&value);
});
