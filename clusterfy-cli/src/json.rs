//! Storage values as JSON on the command line: what `clusterfy storage set` parses and
//! `clusterfy storage get` prints.

use clusterfy_control::{Error, ErrorKind, Result, Value, from_value, to_value};

/// The storage value a JSON text on the command line stands for; malformed JSON is an
/// [`ErrorKind::InvalidInput`] error that shows how to quote it.
pub fn parse_json(text: &str) -> Result<Value> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "bad JSON ({e}); quote it for the shell and write strings in double quotes: '\"text\"', '42', \
                 '{{\"a\": 1}}'"
            ),
        )
    })?;
    to_value(&json)
}

/// A stored value (or its absence, `null`) as JSON.
pub fn as_json(value: Option<Value>) -> Result<serde_json::Value> {
    value.map_or(Ok(serde_json::Value::Null), from_value)
}
