//! The serde error of the converters, with the path to where it happened, and the wording of
//! its messages.

use std::fmt::{self, Write as _};

use serde::{de, ser};

use super::Value;
use crate::error::{Error, ErrorKind, excerpt};

/// The serde error of the converters; turned into an [`Error`] at the public boundary.
#[derive(Debug)]
pub(super) struct ConvError {
    message: String,
    /// Where the error happened, innermost segment first (pushed while unwinding).
    path: Vec<Segment>,
}

#[derive(Debug)]
pub(super) enum Segment {
    Key(String),
    Index(usize),
}

pub(super) type ConvResult<T> = std::result::Result<T, ConvError>;

impl ConvError {
    pub(super) fn new(message: impl Into<String>) -> Self {
        ConvError { message: message.into(), path: Vec::new() }
    }

    /// Records that the error happened inside `segment`.
    pub(super) fn at(mut self, segment: Segment) -> Self {
        self.path.push(segment);
        self
    }

    pub(super) fn into_error(self) -> Error {
        Error::new(ErrorKind::Serialization, self.to_string())
    }
}

/// The error for a value of the wrong kind: "expected `expected`, found a string".
pub(super) fn mismatch(expected: impl fmt::Display, found: &Value) -> ConvError {
    ConvError::new(format!("expected {expected}, found {}", found.kind_phrase()))
}

impl fmt::Display for ConvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if !self.path.is_empty() {
            f.write_str(" at `")?;
            for (i, segment) in self.path.iter().rev().enumerate() {
                match segment {
                    // Keys are data: a huge one must not make a huge message.
                    Segment::Key(key) if i == 0 => write!(f, "{}", excerpt(key))?,
                    Segment::Key(key) => write!(f, ".{}", excerpt(key))?,
                    Segment::Index(index) => write!(f, "[{index}]")?,
                }
            }
            f.write_char('`')?;
        }
        Ok(())
    }
}

impl std::error::Error for ConvError {}

impl ser::Error for ConvError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ConvError::new(msg.to_string())
    }
}

impl de::Error for ConvError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ConvError::new(msg.to_string())
    }

    // "expected ..., found ..." like the errors of this module, rather than serde's word order.
    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        ConvError::new(format!("expected {exp}, found {}", Unexpected(unexp)))
    }

    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        ConvError::new(format!("invalid value: expected {exp}, found {}", Unexpected(unexp)))
    }

    // serde's own wording, with the name from the data cut like every input a message quotes.
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        if expected.is_empty() {
            ConvError::new(format!("unknown variant `{}`, there are no variants", excerpt(variant)))
        } else {
            ConvError::new(format!("unknown variant `{}`, expected {}", excerpt(variant), OneOf(expected)))
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        if expected.is_empty() {
            ConvError::new(format!("unknown field `{}`, there are no fields", excerpt(field)))
        } else {
            ConvError::new(format!("unknown field `{}`, expected {}", excerpt(field), OneOf(expected)))
        }
    }
}

/// serde's `Unexpected`, with a string from the data cut like every input a message quotes.
struct Unexpected<'a>(de::Unexpected<'a>);

impl fmt::Display for Unexpected<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            de::Unexpected::Str(text) => write!(f, "string {:?}", excerpt(text)),
            other => fmt::Display::fmt(&other, f),
        }
    }
}

/// The names a variant or field may have, as serde lists them: "`a`", "`a` or `b`",
/// "one of `a`, `b`, `c`".
struct OneOf(&'static [&'static str]);

impl fmt::Display for OneOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [] => Ok(()),
            [one] => write!(f, "`{one}`"),
            [a, b] => write!(f, "`{a}` or `{b}`"),
            names => {
                f.write_str("one of ")?;
                for (i, name) in names.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "`{name}`")?;
                }
                Ok(())
            }
        }
    }
}
