//! Decoding a [`Value`] into its one canonical form: an integer up to `i64::MAX` is always
//! [`Value::Int`], whichever variant the wire (or a hand-built value) used, so that two equal
//! numbers compare equal (a compare-and-swap's expected value, a watch's old value).

use std::collections::BTreeMap;

use super::{Value, bytes_repr, nesting};

/// The wire form of [`Value`], decoded by the derived impl; [`Value`]'s own decoding goes
/// through it. Same name and variants, so the wire form and `from_value` see no difference.
#[derive(serde::Deserialize)]
#[serde(rename = "$clusterfy::Value")]
pub(super) enum WireValue {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    String(String),
    Bytes(#[serde(with = "bytes_repr")] Vec<u8>),
    List(#[serde(deserialize_with = "nesting::list")] Vec<Value>),
    Map(#[serde(deserialize_with = "nesting::map")] BTreeMap<String, Value>),
}

impl From<WireValue> for Value {
    fn from(wire: WireValue) -> Self {
        match wire {
            WireValue::Null => Value::Null,
            WireValue::Bool(b) => Value::Bool(b),
            WireValue::Int(n) => Value::Int(n),
            WireValue::UInt(n) => i64::try_from(n).map_or(Value::UInt(n), Value::Int),
            WireValue::Float(x) => Value::Float(x),
            WireValue::String(s) => Value::String(s),
            WireValue::Bytes(b) => Value::Bytes(b),
            WireValue::List(items) => Value::List(items),
            WireValue::Map(entries) => Value::Map(entries),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may panic; the lint is meant for library code.
mod tests {
    use super::Value;

    /// Found by the `value` fuzz target: `UInt(93)` on the wire decoded as `UInt(93)`, which
    /// is not equal to the `Int(93)` every encoder of Clusterfy produces.
    #[test]
    fn fuzz_value_a_small_uint_on_the_wire_decodes_as_int() {
        let wire = postcard::to_stdvec(&Value::UInt(93)).unwrap();
        assert_eq!(wire, [3, 93]);
        assert_eq!(postcard::from_bytes::<Value>(&wire).unwrap(), Value::Int(93));
        let big = postcard::to_stdvec(&Value::UInt(u64::MAX)).unwrap();
        assert_eq!(postcard::from_bytes::<Value>(&big).unwrap(), Value::UInt(u64::MAX));
        let nested = postcard::to_stdvec(&Value::List(vec![Value::UInt(1)])).unwrap();
        assert_eq!(postcard::from_bytes::<Value>(&nested).unwrap(), Value::List(vec![Value::Int(1)]));
        assert_eq!(super::super::from_value::<Value>(Value::UInt(5)).unwrap(), Value::Int(5));
    }
}
