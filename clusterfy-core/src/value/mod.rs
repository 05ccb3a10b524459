//! [`Value`], the dynamically typed data that storage holds and commands exchange, and the
//! conversions between it and any serde type: [`to_value`] and [`from_value`].
//!
//! # Canonical integers
//!
//! Any integer that fits in an `i64` is stored as [`Value::Int`]; [`Value::UInt`] only holds values
//! greater than `i64::MAX`. Every constructor in this module ([`to_value`], the `From` impls, the
//! [`value!`](crate::value!) macro) follows this rule, so two equal numbers always compare equal.
//! Reading accepts both forms: a `u8` field can be read from an `Int`, an `i64` from a small `UInt`.
//!
//! # Mapping of serde types
//!
//! | Rust / serde                                | `Value`                              |
//! |---------------------------------------------|--------------------------------------|
//! | `()`, `None`, unit struct                   | `Null`                               |
//! | `Some(x)`, newtype struct                   | the value of `x`                     |
//! | integers                                    | `Int`, or `UInt` above `i64::MAX`    |
//! | `f32`, `f64`                                | `Float`                              |
//! | `char`, `str`, `String`                     | `String`                             |
//! | bytes (`serialize_bytes`)                   | `Bytes`                              |
//! | `Vec<T>` (also `Vec<u8>`), tuples           | `List`                               |
//! | maps, structs                               | `Map` (keys converted to strings)    |
//! | unit variant                                | `String` holding the variant name    |
//! | newtype, tuple and struct variants          | `Map` with the variant name as key   |
//!
//! A [`Value`] nested anywhere inside the converted data is kept as it is.

/// Serde support for [`Value::Bytes`]: bytes in, bytes out, while still accepting a sequence of
/// `u8` from formats that write bytes as arrays.
/// Serde glue for `Vec<u8>` as a byte string (postcard writes it exactly like a byte sequence,
/// but in one copy instead of one call per byte).
pub(crate) mod bytes_repr;
mod canonical;
mod de;
mod display;
mod error;
mod macros;
mod nesting;
mod ser;
#[cfg(test)]
pub(crate) mod strategy;
#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may panic; the lint is meant for library code.
mod tests;

use std::collections::BTreeMap;

pub use de::from_value;
pub use ser::to_value;

/// The serde name of [`Value`]. The converters recognise it so that a `Value` passes through
/// [`to_value`] and [`from_value`] unchanged instead of taking its tagged wire form.
const VALUE_NAME: &str = "$clusterfy::Value";

/// Upper bound for capacities taken from size hints, so a lying hint cannot trigger a huge allocation.
const MAX_PREALLOC: usize = 1024;

/// A dynamically typed value: what storage holds and what commands take and return.
///
/// Integers are canonical: any integer that fits in an `i64` is an [`Int`](Value::Int), and
/// [`UInt`](Value::UInt) only holds values greater than `i64::MAX` (see the [module docs](self)).
///
/// The serde form is the derived, externally tagged one; it is the wire form used with postcard.
/// Decoding gives the canonical form (a `UInt` up to `i64::MAX` comes back as `Int`).
/// [`to_value`] and [`from_value`] recognise a `Value` and keep it as it is (in canonical form)
/// instead of converting it.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename = "$clusterfy::Value", from = "canonical::WireValue")]
pub enum Value {
    /// No value: `()`, `None`, a unit struct.
    #[default]
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer that fits in an `i64`.
    Int(i64),
    /// An integer greater than `i64::MAX`; smaller ones are [`Int`](Value::Int).
    UInt(u64),
    /// A floating-point number.
    Float(f64),
    /// A UTF-8 string.
    String(String),
    /// A byte string.
    // Serialized with `serialize_bytes` so that converters see bytes and not a list of integers;
    // postcard encodes both the same way.
    Bytes(#[serde(with = "bytes_repr")] Vec<u8>),
    /// An ordered list of values.
    List(Vec<Value>),
    /// A map with string keys, sorted by key.
    Map(BTreeMap<String, Value>),
}

/// Deepest nesting of lists and maps a decoded [`Value`] may have. Decoding is recursive, so
/// without a bound a hostile frame of nested lists would overflow the stack.
pub const MAX_NESTING: usize = 128;

impl Value {
    /// The name of the kind of this value, for messages: `"null"`, `"bool"`, `"integer"` (both
    /// [`Int`](Value::Int) and [`UInt`](Value::UInt)), `"float"`, `"string"`, `"bytes"`, `"list"`
    /// or `"map"`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::UInt(_) => "integer",
            Value::Float(_) => "float",
            Value::String(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Map(_) => "map",
        }
    }

    /// The kind with an article, for messages: "a string", "an integer", "null".
    pub fn kind_phrase(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::UInt(_) => "an integer",
            Value::Float(_) => "a float",
            Value::String(_) => "a string",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "a list",
            Value::Map(_) => "a map",
        }
    }

    /// The name of the variant, as the derived serde impls know it.
    fn variant_name(&self) -> &'static str {
        match self {
            Value::Null => "Null",
            Value::Bool(_) => "Bool",
            Value::Int(_) => "Int",
            Value::UInt(_) => "UInt",
            Value::Float(_) => "Float",
            Value::String(_) => "String",
            Value::Bytes(_) => "Bytes",
            Value::List(_) => "List",
            Value::Map(_) => "Map",
        }
    }

    /// Whether this is [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The boolean, if this is a [`Bool`](Value::Bool).
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The integer, if this is an integer that fits in an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::UInt(u) => i64::try_from(*u).ok(),
            _ => None,
        }
    }

    /// The integer, if this is an integer that fits in a `u64` (that is, not negative).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Int(i) => u64::try_from(*i).ok(),
            Value::UInt(u) => Some(*u),
            _ => None,
        }
    }

    /// The number, if this is a [`Float`](Value::Float). Integers are not converted.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The string, if this is a [`String`](Value::String).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes, if this is [`Bytes`](Value::Bytes).
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The elements, if this is a [`List`](Value::List).
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// The map, if this is a [`Map`](Value::Map).
    pub fn as_map(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The canonical value of a 128-bit integer, or `None` if it does not fit in 64 bits.
    fn from_i128(v: i128) -> Option<Value> {
        if let Ok(i) = i64::try_from(v) {
            Some(Value::Int(i))
        } else {
            u64::try_from(v).ok().map(Value::UInt)
        }
    }
}

macro_rules! from_lossless {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        $(
            impl From<$ty> for Value {
                fn from(v: $ty) -> Self {
                    Value::$variant(v.into())
                }
            }
        )*
    };
}

from_lossless!(
    Bool(bool),
    Int(i8),
    Int(i16),
    Int(i32),
    Int(i64),
    Int(u8),
    Int(u16),
    Int(u32),
    Float(f32),
    Float(f64),
    String(String),
    String(&str),
    String(char),
);

impl From<u64> for Value {
    /// `Int` if the value fits in an `i64`, else `UInt` (the canonical rule).
    fn from(v: u64) -> Self {
        match i64::try_from(v) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::UInt(v),
        }
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::from(v as u64)
    }
}

impl From<isize> for Value {
    fn from(v: isize) -> Self {
        Value::Int(v as i64)
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::String(v.clone())
    }
}

impl From<()> for Value {
    fn from((): ()) -> Self {
        Value::Null
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    /// `None` becomes [`Value::Null`].
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl<T: Into<Value>> From<Vec<T>> for Value {
    /// A [`List`](Value::List). Note that a `Vec<u8>` also becomes a list of integers, as with
    /// [`to_value`]; use [`Value::Bytes`] for a byte string.
    fn from(v: Vec<T>) -> Self {
        Value::List(v.into_iter().map(Into::into).collect())
    }
}

impl<T: Into<Value>> From<BTreeMap<String, T>> for Value {
    fn from(v: BTreeMap<String, T>) -> Self {
        Value::Map(v.into_iter().map(|(k, v)| (k, v.into())).collect())
    }
}
