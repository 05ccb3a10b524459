//! The text form of a [`Value`]: JSON-like, for messages.

use std::fmt::{self, Write as _};

use super::Value;

impl fmt::Display for Value {
    /// JSON-like text: `null`, `true`, `3`, `1.5`, `"text"` (escaped), `b"00ff"` (bytes in hex),
    /// `[1, 2]`, `{"a": 1}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::UInt(u) => write!(f, "{u}"),
            // Debug keeps a `.0` on whole numbers, so floats stay recognisable.
            Value::Float(x) => write!(f, "{x:?}"),
            Value::String(s) => write_quoted(f, s),
            Value::Bytes(bytes) => {
                f.write_str("b\"")?;
                for b in bytes {
                    write!(f, "{b:02x}")?;
                }
                f.write_char('"')
            }
            Value::List(items) => {
                f.write_char('[')?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    fmt::Display::fmt(item, f)?;
                }
                f.write_char(']')
            }
            Value::Map(map) => {
                f.write_char('{')?;
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write_quoted(f, k)?;
                    f.write_str(": ")?;
                    fmt::Display::fmt(v, f)?;
                }
                f.write_char('}')
            }
        }
    }
}

/// Writes `s` as a double-quoted string with JSON escapes.
fn write_quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if c.is_control() => write!(f, "\\u{:04x}", u32::from(c))?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use crate::value;
    use crate::value::Value;
    use crate::value::strategy::arb_value;

    #[test]
    fn display_is_json_like() {
        let v = value!({
            "s": "a\"b\\c\nd\u{1}",
            "f": 1.0,
            "b": (Value::Bytes(vec![0, 0xab])),
            "l": [null, true, -1, (u64::MAX)],
            "m": {}
        });
        assert_eq!(
            v.to_string(),
            r#"{"b": b"00ab", "f": 1.0, "l": [null, true, -1, 18446744073709551615], "m": {}, "s": "a\"b\\c\nd\u0001"}"#
        );
        assert_eq!(value!([]).to_string(), "[]");
        assert_eq!(Value::Float(0.1).to_string(), "0.1");
    }

    proptest! {
        #[test]
        fn display_never_panics(v in arb_value()) {
            let _ = v.to_string();
        }
    }
}
