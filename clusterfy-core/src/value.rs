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

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use serde::ser::{self, Impossible, Serialize};

use crate::error::{Error, ErrorKind, Result, excerpt};

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
/// [`to_value`] and [`from_value`] recognise a `Value` and keep it as it is instead.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename = "$clusterfy::Value")]
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
    List(#[serde(deserialize_with = "nesting::list")] Vec<Value>),
    /// A map with string keys, sorted by key.
    Map(#[serde(deserialize_with = "nesting::map")] BTreeMap<String, Value>),
}

/// Deepest nesting of lists and maps a decoded [`Value`] may have. Decoding is recursive, so
/// without a bound a hostile frame of nested lists would overflow the stack.
pub const MAX_NESTING: usize = 128;

mod nesting {
    use std::cell::Cell;
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer};

    use super::{MAX_NESTING, Value};

    thread_local! {
        // Decoding runs synchronously on one thread, so a thread-local depth is exact.
        static DEPTH: Cell<usize> = const { Cell::new(0) };
    }

    struct Level;

    impl Level {
        fn enter<E: serde::de::Error>() -> Result<Level, E> {
            DEPTH.with(|depth| {
                if depth.get() >= MAX_NESTING {
                    return Err(E::custom(format_args!("value nested deeper than {MAX_NESTING} levels")));
                }
                depth.set(depth.get() + 1);
                Ok(Level)
            })
        }
    }

    impl Drop for Level {
        fn drop(&mut self) {
            DEPTH.with(|depth| depth.set(depth.get().saturating_sub(1)));
        }
    }

    pub(super) fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Value>, D::Error> {
        let _level = Level::enter::<D::Error>()?;
        Vec::deserialize(d)
    }

    pub(super) fn map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Value>, D::Error> {
        let _level = Level::enter::<D::Error>()?;
        BTreeMap::deserialize(d)
    }
}

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

/// Builds a [`Value`] from JSON-like syntax.
///
/// `null`, lists `[...]` and maps `{key: value, ...}` nest freely; any other leaf is an expression
/// converted with `Value::from`, so it can be a literal or a variable of any type with a
/// `From` impl. Map keys are string literals or, in parentheses, any expression that implements
/// `Display`.
///
/// ```
/// use clusterfy_core::Value;
///
/// let n = 7_u64;
/// let v = clusterfy_core::value!({
///     "test": {"some": 1},
///     "list": [1, "two", null, true, 2.5],
///     "n": n,
///     (n + 1): [],
/// });
/// let map = v.as_map().expect("a map");
/// assert_eq!(map["n"], Value::Int(7));
/// assert_eq!(map["8"], Value::List(vec![]));
/// let text = r#"{"8": [], "list": [1, "two", null, true, 2.5], "n": 7, "test": {"some": 1}}"#;
/// assert_eq!(v.to_string(), text);
/// assert_eq!(clusterfy_core::value!(null), Value::Null);
/// ```
#[macro_export]
macro_rules! value {
    // Internal: list elements, munched one by one into the accumulator `[...]`.
    (@list [$($elems:expr,)*]) => {
        ::std::vec![$($elems,)*]
    };
    (@list [$($elems:expr,)*] null $(, $($rest:tt)*)?) => {
        $crate::value!(@list [$($elems,)* $crate::value::Value::Null,] $($($rest)*)?)
    };
    (@list [$($elems:expr,)*] [$($list:tt)*] $(, $($rest:tt)*)?) => {
        $crate::value!(@list [$($elems,)* $crate::value!([$($list)*]),] $($($rest)*)?)
    };
    (@list [$($elems:expr,)*] {$($map:tt)*} $(, $($rest:tt)*)?) => {
        $crate::value!(@list [$($elems,)* $crate::value!({$($map)*}),] $($($rest)*)?)
    };
    (@list [$($elems:expr,)*] $next:expr, $($rest:tt)*) => {
        $crate::value!(@list [$($elems,)* $crate::value::Value::from($next),] $($rest)*)
    };
    (@list [$($elems:expr,)*] $last:expr) => {
        $crate::value!(@list [$($elems,)* $crate::value::Value::from($last),])
    };

    // Internal: map entries, inserted one by one into the map named `$map`.
    (@map $map:ident) => {};
    (@map $map:ident $key:tt : null $(, $($rest:tt)*)?) => {
        $map.insert($crate::value!(@key $key), $crate::value::Value::Null);
        $crate::value!(@map $map $($($rest)*)?);
    };
    (@map $map:ident $key:tt : [$($list:tt)*] $(, $($rest:tt)*)?) => {
        $map.insert($crate::value!(@key $key), $crate::value!([$($list)*]));
        $crate::value!(@map $map $($($rest)*)?);
    };
    (@map $map:ident $key:tt : {$($inner:tt)*} $(, $($rest:tt)*)?) => {
        $map.insert($crate::value!(@key $key), $crate::value!({$($inner)*}));
        $crate::value!(@map $map $($($rest)*)?);
    };
    (@map $map:ident $key:tt : $value:expr, $($rest:tt)*) => {
        $map.insert($crate::value!(@key $key), $crate::value::Value::from($value));
        $crate::value!(@map $map $($rest)*);
    };
    (@map $map:ident $key:tt : $value:expr) => {
        $map.insert($crate::value!(@key $key), $crate::value::Value::from($value));
    };
    (@key $key:expr) => {
        ::std::string::ToString::to_string(&$key)
    };

    // Public forms.
    (null) => {
        $crate::value::Value::Null
    };
    ([$($tt:tt)*]) => {
        $crate::value::Value::List($crate::value!(@list [] $($tt)*))
    };
    ({}) => {
        $crate::value::Value::Map(::std::collections::BTreeMap::new())
    };
    ({$($tt:tt)+}) => {{
        let mut map =
            ::std::collections::BTreeMap::<::std::string::String, $crate::value::Value>::new();
        $crate::value!(@map map $($tt)+);
        $crate::value::Value::Map(map)
    }};
    ($other:expr) => {
        $crate::value::Value::from($other)
    };
}

/// Converts any serializable value to a [`Value`], following the mapping in the
/// [module docs](self). A `Value` inside `value` is kept as it is.
///
/// # Errors
///
/// [`ErrorKind::Serialization`] if the `Serialize` impl fails, a map key is not a string, integer,
/// boolean or char, or a 128-bit integer does not fit in 64 bits.
///
/// ```
/// use clusterfy_core::value::{from_value, to_value, Value};
///
/// let v = to_value(&(1_u8, "two", Some(3.5))).expect("serializable");
/// assert_eq!(v, Value::List(vec![Value::Int(1), Value::from("two"), Value::Float(3.5)]));
/// let back: (u8, String, Option<f64>) = from_value(v).expect("same shape");
/// assert_eq!(back, (1, "two".to_owned(), Some(3.5)));
/// ```
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value> {
    value.serialize(ValueSerializer).map_err(ConvError::into_error)
}

/// Converts a [`Value`] to any deserializable type; `from_value::<Value>(v)` returns `v` unchanged.
///
/// Integers are accepted from [`Int`](Value::Int), [`UInt`](Value::UInt) and whole
/// [`Float`](Value::Float)s when they fit the target type; floats are accepted from integers; bytes
/// from [`Bytes`](Value::Bytes) or a list of integers in `0..=255`; enums from a string (unit
/// variant) or a map with a single key (the variant name).
///
/// # Errors
///
/// [`ErrorKind::Serialization`] if the value does not have the shape of `T`. The message says
/// what was expected, what was found and where, for example
/// ``expected an integer, found a string at `users[2].age` ``.
pub fn from_value<T: de::DeserializeOwned>(value: Value) -> Result<T> {
    T::deserialize(ValueDeserializer(value)).map_err(ConvError::into_error)
}

// ---------------------------------------------------------------------------------------------
// Errors

/// The serde error of the converters; turned into an [`Error`] at the public boundary.
#[derive(Debug)]
struct ConvError {
    message: String,
    /// Where the error happened, innermost segment first (pushed while unwinding).
    path: Vec<Segment>,
}

#[derive(Debug)]
enum Segment {
    Key(String),
    Index(usize),
}

type ConvResult<T> = std::result::Result<T, ConvError>;

impl ConvError {
    fn new(message: impl Into<String>) -> Self {
        ConvError { message: message.into(), path: Vec::new() }
    }

    /// Records that the error happened inside `segment`.
    fn at(mut self, segment: Segment) -> Self {
        self.path.push(segment);
        self
    }

    fn into_error(self) -> Error {
        Error::new(ErrorKind::Serialization, self.to_string())
    }
}

/// The error for a value of the wrong kind: "expected `expected`, found a string".
fn mismatch(expected: impl fmt::Display, found: &Value) -> ConvError {
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

// ---------------------------------------------------------------------------------------------
// Serialization: T -> Value

/// Serializes into a [`Value`].
struct ValueSerializer;

impl ser::Serializer for ValueSerializer {
    type Ok = Value;
    type Error = ConvError;
    type SerializeSeq = ListSerializer;
    type SerializeTuple = ListSerializer;
    type SerializeTupleStruct = ListSerializer;
    type SerializeTupleVariant = ListSerializer;
    type SerializeMap = MapSerializer;
    type SerializeStruct = MapSerializer;
    type SerializeStructVariant = MapSerializer;

    fn serialize_bool(self, v: bool) -> ConvResult<Value> {
        Ok(Value::Bool(v))
    }

    fn serialize_i8(self, v: i8) -> ConvResult<Value> {
        Ok(Value::from(v))
    }

    fn serialize_i16(self, v: i16) -> ConvResult<Value> {
        Ok(Value::from(v))
    }

    fn serialize_i32(self, v: i32) -> ConvResult<Value> {
        Ok(Value::from(v))
    }

    fn serialize_i64(self, v: i64) -> ConvResult<Value> {
        Ok(Value::from(v))
    }

    fn serialize_i128(self, v: i128) -> ConvResult<Value> {
        Value::from_i128(v)
            .ok_or_else(|| ConvError::new(format!("expected an integer that fits in 64 bits, found {v}")))
    }

    fn serialize_u8(self, v: u8) -> ConvResult<Value> {
        Ok(Value::from(v))
    }

    fn serialize_u16(self, v: u16) -> ConvResult<Value> {
        Ok(Value::from(v))
    }

    fn serialize_u32(self, v: u32) -> ConvResult<Value> {
        Ok(Value::from(v))
    }

    fn serialize_u64(self, v: u64) -> ConvResult<Value> {
        Ok(Value::from(v))
    }

    fn serialize_u128(self, v: u128) -> ConvResult<Value> {
        match u64::try_from(v) {
            Ok(u) => Ok(Value::from(u)),
            Err(_) => Err(ConvError::new(format!("expected an integer that fits in 64 bits, found {v}"))),
        }
    }

    fn serialize_f32(self, v: f32) -> ConvResult<Value> {
        Ok(Value::Float(v.into()))
    }

    fn serialize_f64(self, v: f64) -> ConvResult<Value> {
        Ok(Value::Float(v))
    }

    fn serialize_char(self, v: char) -> ConvResult<Value> {
        Ok(Value::String(v.to_string()))
    }

    fn serialize_str(self, v: &str) -> ConvResult<Value> {
        Ok(Value::String(v.to_owned()))
    }

    fn serialize_bytes(self, v: &[u8]) -> ConvResult<Value> {
        Ok(Value::Bytes(v.to_vec()))
    }

    fn serialize_none(self) -> ConvResult<Value> {
        Ok(Value::Null)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> ConvResult<Value> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> ConvResult<Value> {
        Ok(Value::Null)
    }

    fn serialize_unit_struct(self, _name: &'static str) -> ConvResult<Value> {
        Ok(Value::Null)
    }

    fn serialize_unit_variant(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> ConvResult<Value> {
        if name == VALUE_NAME {
            // `Value::Null` itself.
            Ok(Value::Null)
        } else {
            Ok(Value::String(variant.to_owned()))
        }
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> ConvResult<Value> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> ConvResult<Value> {
        if name == VALUE_NAME {
            // A `Value` other than `Null`: the content alone converts back to the same variant
            // (bytes go through `serialize_bytes`, nested values come back here).
            return value.serialize(self);
        }
        let content = value.serialize(ValueSerializer).map_err(|e| e.at(Segment::Key(variant.to_owned())))?;
        Ok(Value::Map(BTreeMap::from([(variant.to_owned(), content)])))
    }

    fn serialize_seq(self, len: Option<usize>) -> ConvResult<ListSerializer> {
        Ok(ListSerializer::new(None, len))
    }

    fn serialize_tuple(self, len: usize) -> ConvResult<ListSerializer> {
        Ok(ListSerializer::new(None, Some(len)))
    }

    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> ConvResult<ListSerializer> {
        Ok(ListSerializer::new(None, Some(len)))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> ConvResult<ListSerializer> {
        Ok(ListSerializer::new(Some(variant), Some(len)))
    }

    fn serialize_map(self, _len: Option<usize>) -> ConvResult<MapSerializer> {
        Ok(MapSerializer::new(None))
    }

    fn serialize_struct(self, _name: &'static str, _len: usize) -> ConvResult<MapSerializer> {
        Ok(MapSerializer::new(None))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> ConvResult<MapSerializer> {
        Ok(MapSerializer::new(Some(variant)))
    }
}

/// Wraps `content` as `{variant: content}` for variants, or returns it as is.
fn wrap_variant(variant: Option<&'static str>, content: Value) -> Value {
    match variant {
        Some(variant) => Value::Map(BTreeMap::from([(variant.to_owned(), content)])),
        None => content,
    }
}

/// Collects sequences, tuples and tuple variants (then `variant` is set) into a list.
struct ListSerializer {
    variant: Option<&'static str>,
    items: Vec<Value>,
}

impl ListSerializer {
    fn new(variant: Option<&'static str>, len: Option<usize>) -> Self {
        ListSerializer { variant, items: Vec::with_capacity(len.unwrap_or(0).min(MAX_PREALLOC)) }
    }

    fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> ConvResult<()> {
        let index = self.items.len();
        let value = value.serialize(ValueSerializer).map_err(|e| {
            let e = e.at(Segment::Index(index));
            match self.variant {
                Some(variant) => e.at(Segment::Key(variant.to_owned())),
                None => e,
            }
        })?;
        self.items.push(value);
        Ok(())
    }

    fn finish(self) -> Value {
        wrap_variant(self.variant, Value::List(self.items))
    }
}

impl ser::SerializeSeq for ListSerializer {
    type Ok = Value;
    type Error = ConvError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> ConvResult<()> {
        self.push(value)
    }

    fn end(self) -> ConvResult<Value> {
        Ok(self.finish())
    }
}

impl ser::SerializeTuple for ListSerializer {
    type Ok = Value;
    type Error = ConvError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> ConvResult<()> {
        self.push(value)
    }

    fn end(self) -> ConvResult<Value> {
        Ok(self.finish())
    }
}

impl ser::SerializeTupleStruct for ListSerializer {
    type Ok = Value;
    type Error = ConvError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> ConvResult<()> {
        self.push(value)
    }

    fn end(self) -> ConvResult<Value> {
        Ok(self.finish())
    }
}

impl ser::SerializeTupleVariant for ListSerializer {
    type Ok = Value;
    type Error = ConvError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> ConvResult<()> {
        self.push(value)
    }

    fn end(self) -> ConvResult<Value> {
        Ok(self.finish())
    }
}

/// Collects maps, structs and struct variants (then `variant` is set) into a map.
struct MapSerializer {
    variant: Option<&'static str>,
    map: BTreeMap<String, Value>,
    next_key: Option<String>,
}

impl MapSerializer {
    fn new(variant: Option<&'static str>) -> Self {
        MapSerializer { variant, map: BTreeMap::new(), next_key: None }
    }

    fn insert<T: Serialize + ?Sized>(&mut self, key: String, value: &T) -> ConvResult<()> {
        match value.serialize(ValueSerializer) {
            Ok(value) => {
                self.map.insert(key, value);
                Ok(())
            }
            Err(e) => {
                let e = e.at(Segment::Key(key));
                Err(match self.variant {
                    Some(variant) => e.at(Segment::Key(variant.to_owned())),
                    None => e,
                })
            }
        }
    }

    fn finish(self) -> Value {
        wrap_variant(self.variant, Value::Map(self.map))
    }
}

impl ser::SerializeMap for MapSerializer {
    type Ok = Value;
    type Error = ConvError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> ConvResult<()> {
        self.next_key = Some(key.serialize(KeySerializer)?);
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> ConvResult<()> {
        let key =
            self.next_key.take().ok_or_else(|| ConvError::new("a map value was given before its key"))?;
        self.insert(key, value)
    }

    fn end(self) -> ConvResult<Value> {
        Ok(self.finish())
    }
}

impl ser::SerializeStruct for MapSerializer {
    type Ok = Value;
    type Error = ConvError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> ConvResult<()> {
        self.insert(key.to_owned(), value)
    }

    fn end(self) -> ConvResult<Value> {
        Ok(self.finish())
    }
}

impl ser::SerializeStructVariant for MapSerializer {
    type Ok = Value;
    type Error = ConvError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> ConvResult<()> {
        self.insert(key.to_owned(), value)
    }

    fn end(self) -> ConvResult<Value> {
        Ok(self.finish())
    }
}

/// Serializes a map key to a string: strings and chars as they are, integers in decimal, booleans
/// as `true`/`false`, unit variants as their name.
struct KeySerializer;

/// The error for a map key that has no string form.
fn bad_key(found: &str) -> ConvError {
    ConvError::new(format!("expected a map key that is a string, integer, boolean or char, found {found}"))
}

impl ser::Serializer for KeySerializer {
    type Ok = String;
    type Error = ConvError;
    type SerializeSeq = Impossible<String, ConvError>;
    type SerializeTuple = Impossible<String, ConvError>;
    type SerializeTupleStruct = Impossible<String, ConvError>;
    type SerializeTupleVariant = Impossible<String, ConvError>;
    type SerializeMap = Impossible<String, ConvError>;
    type SerializeStruct = Impossible<String, ConvError>;
    type SerializeStructVariant = Impossible<String, ConvError>;

    fn serialize_bool(self, v: bool) -> ConvResult<String> {
        Ok(v.to_string())
    }

    fn serialize_i8(self, v: i8) -> ConvResult<String> {
        Ok(v.to_string())
    }

    fn serialize_i16(self, v: i16) -> ConvResult<String> {
        Ok(v.to_string())
    }

    fn serialize_i32(self, v: i32) -> ConvResult<String> {
        Ok(v.to_string())
    }

    fn serialize_i64(self, v: i64) -> ConvResult<String> {
        Ok(v.to_string())
    }

    fn serialize_i128(self, v: i128) -> ConvResult<String> {
        Ok(v.to_string())
    }

    fn serialize_u8(self, v: u8) -> ConvResult<String> {
        Ok(v.to_string())
    }

    fn serialize_u16(self, v: u16) -> ConvResult<String> {
        Ok(v.to_string())
    }

    fn serialize_u32(self, v: u32) -> ConvResult<String> {
        Ok(v.to_string())
    }

    fn serialize_u64(self, v: u64) -> ConvResult<String> {
        Ok(v.to_string())
    }

    fn serialize_u128(self, v: u128) -> ConvResult<String> {
        Ok(v.to_string())
    }

    fn serialize_f32(self, _v: f32) -> ConvResult<String> {
        Err(bad_key("a float"))
    }

    fn serialize_f64(self, _v: f64) -> ConvResult<String> {
        Err(bad_key("a float"))
    }

    fn serialize_char(self, v: char) -> ConvResult<String> {
        Ok(v.to_string())
    }

    fn serialize_str(self, v: &str) -> ConvResult<String> {
        Ok(v.to_owned())
    }

    fn serialize_bytes(self, _v: &[u8]) -> ConvResult<String> {
        Err(bad_key("bytes"))
    }

    fn serialize_none(self) -> ConvResult<String> {
        Err(bad_key("null"))
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> ConvResult<String> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> ConvResult<String> {
        Err(bad_key("null"))
    }

    fn serialize_unit_struct(self, _name: &'static str) -> ConvResult<String> {
        Err(bad_key("null"))
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> ConvResult<String> {
        Ok(variant.to_owned())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> ConvResult<String> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> ConvResult<String> {
        Err(bad_key("an enum variant with content"))
    }

    fn serialize_seq(self, _len: Option<usize>) -> ConvResult<Self::SerializeSeq> {
        Err(bad_key("a list"))
    }

    fn serialize_tuple(self, _len: usize) -> ConvResult<Self::SerializeTuple> {
        Err(bad_key("a list"))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> ConvResult<Self::SerializeTupleStruct> {
        Err(bad_key("a list"))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> ConvResult<Self::SerializeTupleVariant> {
        Err(bad_key("an enum variant with content"))
    }

    fn serialize_map(self, _len: Option<usize>) -> ConvResult<Self::SerializeMap> {
        Err(bad_key("a map"))
    }

    fn serialize_struct(self, _name: &'static str, _len: usize) -> ConvResult<Self::SerializeStruct> {
        Err(bad_key("a map"))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> ConvResult<Self::SerializeStructVariant> {
        Err(bad_key("an enum variant with content"))
    }
}

// ---------------------------------------------------------------------------------------------
// Deserialization: Value -> T

/// Deserializes from an owned [`Value`].
struct ValueDeserializer(Value);

/// Visits `items` as a sequence and fails if the visitor left elements unread (a too long tuple).
fn visit_list<'de, V: Visitor<'de>>(items: Vec<Value>, visitor: V) -> ConvResult<V::Value> {
    let total = items.len();
    let mut seq = ListAccess { iter: items.into_iter(), index: 0 };
    let out = visitor.visit_seq(&mut seq)?;
    if seq.iter.len() == 0 {
        Ok(out)
    } else {
        Err(ConvError::new(format!("expected a list of length {}, found one of length {total}", seq.index)))
    }
}

/// Visits `map` as a map and fails if the visitor left entries unread.
fn visit_map<'de, V: Visitor<'de>>(map: BTreeMap<String, Value>, visitor: V) -> ConvResult<V::Value> {
    let total = map.len();
    let mut access = MapEntries { iter: map.into_iter(), pending: None };
    let out = visitor.visit_map(&mut access)?;
    let left = access.iter.len();
    if left == 0 {
        Ok(out)
    } else {
        Err(ConvError::new(format!("expected a map of {} entries, found {total}", total - left)))
    }
}

/// Visits bytes as a sequence of `u8`, for targets like `Vec<u8>` that deserialize as sequences.
fn visit_bytes_as_seq<'de, V: Visitor<'de>>(bytes: Vec<u8>, visitor: V) -> ConvResult<V::Value> {
    let mut seq = de::value::SeqDeserializer::<_, ConvError>::new(bytes.into_iter());
    let out = visitor.visit_seq(&mut seq)?;
    seq.end()?;
    Ok(out)
}

/// The integer value of a whole float within the range of `i64` or `u64`.
fn whole_float(f: f64) -> Option<Value> {
    // 2^63 and 2^64 are exact in f64; below them every whole float converts exactly.
    const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
    const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
    if f.fract() != 0.0 {
        // Also true for NaN and infinities, whose `fract` is NaN.
        None
    } else if (-TWO_POW_63..TWO_POW_63).contains(&f) {
        Some(Value::Int(f as i64))
    } else if (0.0..TWO_POW_64).contains(&f) {
        Some(Value::UInt(f as u64))
    } else {
        None
    }
}

impl ValueDeserializer {
    /// The shared body of all integer methods; the visitor checks the range of its type.
    fn deserialize_integer<'de, V: Visitor<'de>>(self, visitor: V) -> ConvResult<V::Value> {
        match self.0 {
            Value::Int(i) => visitor.visit_i64(i),
            Value::UInt(u) => visitor.visit_u64(u),
            Value::Float(f) => match whole_float(f) {
                Some(Value::Int(i)) => visitor.visit_i64(i),
                Some(Value::UInt(u)) => visitor.visit_u64(u),
                _ => Err(ConvError::new(format!(
                    "expected an integer, found a float with a fractional part or out of range ({f:?})"
                ))),
            },
            other => Err(mismatch("an integer", &other)),
        }
    }
}

macro_rules! deserialize_integers {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> ConvResult<V::Value> {
                self.deserialize_integer(visitor)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for ValueDeserializer {
    type Error = ConvError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> ConvResult<V::Value> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Int(i) => visitor.visit_i64(i),
            Value::UInt(u) => visitor.visit_u64(u),
            Value::Float(f) => visitor.visit_f64(f),
            Value::String(s) => visitor.visit_string(s),
            Value::Bytes(b) => visitor.visit_byte_buf(b),
            Value::List(items) => visit_list(items, visitor),
            Value::Map(map) => visit_map(map, visitor),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> ConvResult<V::Value> {
        match self.0 {
            Value::Bool(b) => visitor.visit_bool(b),
            other => Err(mismatch("a boolean", &other)),
        }
    }

    deserialize_integers!(
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
    );

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> ConvResult<V::Value> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> ConvResult<V::Value> {
        match self.0 {
            Value::Float(f) => visitor.visit_f64(f),
            Value::Int(i) => visitor.visit_i64(i),
            Value::UInt(u) => visitor.visit_u64(u),
            other => Err(mismatch("a float", &other)),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> ConvResult<V::Value> {
        match self.0 {
            Value::String(s) => visitor.visit_string(s),
            other => Err(mismatch("a string of one char", &other)),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> ConvResult<V::Value> {
        self.deserialize_string(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> ConvResult<V::Value> {
        match self.0 {
            Value::String(s) => visitor.visit_string(s),
            other => Err(mismatch("a string", &other)),
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> ConvResult<V::Value> {
        self.deserialize_byte_buf(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> ConvResult<V::Value> {
        match self.0 {
            Value::Bytes(b) => visitor.visit_byte_buf(b),
            // Many byte visitors accept text too; those that do not report it themselves.
            Value::String(s) => visitor.visit_string(s),
            Value::List(items) => {
                let mut bytes = Vec::with_capacity(items.len());
                for (index, item) in items.iter().enumerate() {
                    match item.as_i64().and_then(|i| u8::try_from(i).ok()) {
                        Some(b) => bytes.push(b),
                        None => {
                            return Err(mismatch("bytes or a list of integers in 0..=255", item)
                                .at(Segment::Index(index)));
                        }
                    }
                }
                visitor.visit_byte_buf(bytes)
            }
            other => Err(mismatch("bytes", &other)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> ConvResult<V::Value> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(ValueDeserializer(other)),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> ConvResult<V::Value> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            other => Err(mismatch("null", &other)),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> ConvResult<V::Value> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            other => Err(mismatch(format_args!("null for unit struct {name}"), &other)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> ConvResult<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> ConvResult<V::Value> {
        match self.0 {
            Value::List(items) => visit_list(items, visitor),
            Value::Bytes(bytes) => visit_bytes_as_seq(bytes, visitor),
            other => Err(mismatch("a list", &other)),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> ConvResult<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> ConvResult<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> ConvResult<V::Value> {
        match self.0 {
            Value::Map(map) => visit_map(map, visitor),
            other => Err(mismatch("a map", &other)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> ConvResult<V::Value> {
        match self.0 {
            Value::Map(map) => visit_map(map, visitor),
            Value::List(items) => visit_list(items, visitor),
            other => Err(mismatch(format_args!("a map for struct {name}"), &other)),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> ConvResult<V::Value> {
        if name == VALUE_NAME {
            // A `Value` is wanted: present this value as its own variant, with itself as the
            // content, so the derived impl rebuilds it unchanged.
            let variant = self.0.variant_name();
            let content = if self.0.is_null() { None } else { Some(self.0) };
            return visitor.visit_enum(EnumContent { variant: variant.to_owned(), content, track: false });
        }
        match self.0 {
            Value::String(variant) => visitor.visit_enum(EnumContent { variant, content: None, track: true }),
            Value::Map(map) => {
                let len = map.len();
                let mut entries = map.into_iter();
                match (entries.next(), entries.next()) {
                    (Some((variant, content)), None) => {
                        visitor.visit_enum(EnumContent { variant, content: Some(content), track: true })
                    }
                    _ => Err(ConvError::new(format!(
                        "expected a string or a map with a single key for enum {name}, found a map with \
                         {len} keys"
                    ))),
                }
            }
            other => {
                Err(mismatch(format_args!("a string or a map with a single key for enum {name}"), &other))
            }
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> ConvResult<V::Value> {
        self.deserialize_any(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> ConvResult<V::Value> {
        visitor.visit_unit()
    }
}

/// The elements of a list.
struct ListAccess {
    iter: std::vec::IntoIter<Value>,
    /// The index of the next element, for error paths.
    index: usize,
}

impl<'de> SeqAccess<'de> for ListAccess {
    type Error = ConvError;

    fn next_element_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> ConvResult<Option<S::Value>> {
        let Some(value) = self.iter.next() else {
            return Ok(None);
        };
        let index = self.index;
        self.index += 1;
        seed.deserialize(ValueDeserializer(value)).map(Some).map_err(|e| e.at(Segment::Index(index)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// The entries of a map.
struct MapEntries {
    iter: std::collections::btree_map::IntoIter<String, Value>,
    /// The entry whose key was handed out and whose value is next.
    pending: Option<(String, Value)>,
}

impl<'de> MapAccess<'de> for MapEntries {
    type Error = ConvError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> ConvResult<Option<K::Value>> {
        let Some((key, value)) = self.iter.next() else {
            return Ok(None);
        };
        let result = seed.deserialize(KeyDeserializer(&key));
        match result {
            Ok(k) => {
                self.pending = Some((key, value));
                Ok(Some(k))
            }
            Err(e) => Err(e.at(Segment::Key(key))),
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> ConvResult<S::Value> {
        let Some((key, value)) = self.pending.take() else {
            return Err(ConvError::new("a map value was requested before its key"));
        };
        seed.deserialize(ValueDeserializer(value)).map_err(|e| e.at(Segment::Key(key)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// An enum read from a variant name and optional content.
struct EnumContent {
    variant: String,
    content: Option<Value>,
    /// Whether errors in the content get the variant name in their path (not for `Value` itself).
    track: bool,
}

impl<'de> EnumAccess<'de> for EnumContent {
    type Error = ConvError;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> ConvResult<(S::Value, Self)> {
        let tag = seed.deserialize(KeyDeserializer(&self.variant))?;
        Ok((tag, self))
    }
}

impl EnumContent {
    fn wrap(&self, e: ConvError) -> ConvError {
        if self.track { e.at(Segment::Key(self.variant.clone())) } else { e }
    }

    fn missing_content(&self) -> ConvError {
        ConvError::new(format!(
            "expected variant `{}` with content (a map with a single key), found only its name",
            excerpt(&self.variant)
        ))
    }
}

impl<'de> VariantAccess<'de> for EnumContent {
    type Error = ConvError;

    fn unit_variant(self) -> ConvResult<()> {
        match &self.content {
            None | Some(Value::Null) => Ok(()),
            Some(other) => {
                Err(mismatch(format_args!("no content for unit variant `{}`", excerpt(&self.variant)), other))
            }
        }
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(mut self, seed: S) -> ConvResult<S::Value> {
        match self.content.take() {
            Some(content) => seed.deserialize(ValueDeserializer(content)).map_err(|e| self.wrap(e)),
            None => Err(self.missing_content()),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(mut self, _len: usize, visitor: V) -> ConvResult<V::Value> {
        match self.content.take() {
            Some(Value::List(items)) => visit_list(items, visitor).map_err(|e| self.wrap(e)),
            Some(other) => Err(self.wrap(mismatch(
                format_args!("a list for tuple variant `{}`", excerpt(&self.variant)),
                &other,
            ))),
            None => Err(self.missing_content()),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        mut self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> ConvResult<V::Value> {
        match self.content.take() {
            Some(Value::Map(map)) => visit_map(map, visitor).map_err(|e| self.wrap(e)),
            Some(Value::List(items)) => visit_list(items, visitor).map_err(|e| self.wrap(e)),
            Some(other) => Err(self.wrap(mismatch(
                format_args!("a map for struct variant `{}`", excerpt(&self.variant)),
                &other,
            ))),
            None => Err(self.missing_content()),
        }
    }
}

/// Deserializes a map key or variant name. Keys are always strings, but a map may have integer or
/// boolean keys on the Rust side (converted to text by [`to_value`]), so those methods parse it.
struct KeyDeserializer<'a>(&'a str);

impl KeyDeserializer<'_> {
    fn deserialize_integer<'de, V: Visitor<'de>>(self, visitor: V) -> ConvResult<V::Value> {
        let key = self.0;
        if let Ok(i) = key.parse::<i64>() {
            visitor.visit_i64(i)
        } else if let Ok(u) = key.parse::<u64>() {
            visitor.visit_u64(u)
        } else if let Ok(i) = key.parse::<i128>() {
            visitor.visit_i128(i)
        } else if let Ok(u) = key.parse::<u128>() {
            visitor.visit_u128(u)
        } else {
            Err(ConvError::new(format!("expected an integer map key, found {:?}", excerpt(key))))
        }
    }
}

impl<'de> de::Deserializer<'de> for KeyDeserializer<'_> {
    type Error = ConvError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> ConvResult<V::Value> {
        visitor.visit_str(self.0)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> ConvResult<V::Value> {
        match self.0 {
            "true" => visitor.visit_bool(true),
            "false" => visitor.visit_bool(false),
            other => Err(ConvError::new(format!("expected a boolean map key, found {:?}", excerpt(other)))),
        }
    }

    deserialize_integers!(
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
    );

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> ConvResult<V::Value> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> ConvResult<V::Value> {
        match self.0.parse::<f64>() {
            Ok(f) => visitor.visit_f64(f),
            Err(_) => Err(ConvError::new(format!("expected a number map key, found {:?}", excerpt(self.0)))),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> ConvResult<V::Value> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> ConvResult<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> ConvResult<V::Value> {
        visitor.visit_enum(EnumContent { variant: self.0.to_owned(), content: None, track: true })
    }

    serde::forward_to_deserialize_any! {
        char str string bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

/// Serde support for [`Value::Bytes`]: bytes in, bytes out, while still accepting a sequence of
/// `u8` from formats that write bytes as arrays.
/// Serde glue for `Vec<u8>` as a byte string (postcard writes it exactly like a byte sequence,
/// but in one copy instead of one call per byte).
pub(crate) mod bytes_repr {
    use std::fmt;

    use serde::de::{self, SeqAccess, Visitor};

    pub(crate) fn serialize<S: serde::Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(super::MAX_PREALLOC));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

/// A proptest strategy for arbitrary canonical values without NaN (which is never equal to
/// itself), for tests across the crate.
#[cfg(test)]
pub fn arb_value() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;

    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        ((1_u64 << 63)..=u64::MAX).prop_map(Value::UInt),
        any::<f64>().prop_filter("NaN is not equal to itself", |f| !f.is_nan()).prop_map(Value::Float),
        any::<String>().prop_map(Value::String),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
            proptest::collection::btree_map(any::<String>(), inner, 0..8).prop_map(Value::Map),
        ]
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may panic; the lint is meant for library code.
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    use super::*;

    #[test]
    fn decoding_refuses_nesting_beyond_the_limit_instead_of_overflowing_the_stack() {
        // postcard: variant index 7 (List), length 1, repeated; far deeper than MAX_NESTING.
        let mut hostile = Vec::new();
        for _ in 0..100_000 {
            hostile.extend_from_slice(&[7, 1]);
        }
        hostile.push(0);
        assert!(postcard::from_bytes::<Value>(&hostile).is_err());
        let mut ok = Value::Null;
        for _ in 0..MAX_NESTING {
            ok = Value::List(vec![ok]);
        }
        let bytes = postcard::to_allocvec(&ok).unwrap();
        assert_eq!(postcard::from_bytes::<Value>(&bytes).unwrap(), ok);
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Kind {
        Unit,
        Newtype(i32),
        Tuple(i32, bool),
        Struct { a: String, b: Option<u8> },
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Unit;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Meters(f64);

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Record {
        name: String,
        age: u32,
        email: Option<String>,
        tags: Vec<String>,
        kinds: Vec<Kind>,
        big: u64,
        small: i64,
        raw: Vec<u8>,
        #[serde(with = "super::bytes_repr")]
        blob: Vec<u8>,
        pair: (i32, String),
        unit: (),
        marker: Unit,
        length: Meters,
        letter: char,
        by_id: HashMap<u32, String>,
        flags: BTreeMap<bool, i8>,
        by_kind: BTreeMap<Kind, u8>,
        extra: Value,
        nested: Option<Box<Record>>,
    }

    // `Kind` as a map key needs an order; only unit variants are used as keys.
    impl Eq for Kind {}
    impl PartialOrd for Kind {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Kind {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            format!("{self:?}").cmp(&format!("{other:?}"))
        }
    }

    fn record() -> Record {
        Record {
            name: "Paul".into(),
            age: 42,
            email: None,
            tags: vec!["a".into(), "b".into()],
            kinds: vec![
                Kind::Unit,
                Kind::Newtype(-1),
                Kind::Tuple(2, true),
                Kind::Struct { a: "x".into(), b: Some(3) },
                Kind::Struct { a: "y".into(), b: None },
            ],
            big: u64::MAX,
            small: i64::MIN,
            raw: vec![0, 1, 255],
            blob: vec![9, 8, 7],
            pair: (-5, "five".into()),
            unit: (),
            marker: Unit,
            length: Meters(1.5),
            letter: 'é',
            by_id: HashMap::from([(1, "one".into()), (u32::MAX, "max".into())]),
            flags: BTreeMap::from([(true, 1), (false, -1)]),
            by_kind: BTreeMap::from([(Kind::Unit, 1)]),
            extra: value!({
                "test": {"some": 1},
                "list": [1, "two", null, true],
                "bytes": (Value::Bytes(vec![1]))
            }),
            nested: Some(Box::new(Record {
                name: "inner".into(),
                age: 0,
                email: Some("i@example.invalid".into()),
                tags: vec![],
                kinds: vec![],
                big: 0,
                small: 0,
                raw: vec![],
                blob: vec![],
                pair: (0, String::new()),
                unit: (),
                marker: Unit,
                length: Meters(0.0),
                letter: 'x',
                by_id: HashMap::new(),
                flags: BTreeMap::new(),
                by_kind: BTreeMap::new(),
                extra: Value::Null,
                nested: None,
            })),
        }
    }

    fn err_message<T: std::fmt::Debug>(result: Result<T>) -> String {
        let err = result.expect_err("conversion should fail");
        assert_eq!(err.kind(), ErrorKind::Serialization, "{err}");
        err.message().to_owned()
    }

    #[test]
    fn record_round_trips() {
        let r = record();
        let v = to_value(&r).unwrap();
        let back: Record = from_value(v.clone()).unwrap();
        assert_eq!(back, r);

        let map = v.as_map().unwrap();
        assert_eq!(map["name"], Value::from("Paul"));
        assert_eq!(map["age"], Value::Int(42));
        assert_eq!(map["email"], Value::Null);
        assert_eq!(map["big"], Value::UInt(u64::MAX));
        assert_eq!(map["small"], Value::Int(i64::MIN));
        assert_eq!(map["raw"], value!([0, 1, 255]));
        assert_eq!(map["blob"], Value::Bytes(vec![9, 8, 7]));
        assert_eq!(map["pair"], value!([-5, "five"]));
        assert_eq!(map["unit"], Value::Null);
        assert_eq!(map["marker"], Value::Null);
        assert_eq!(map["length"], Value::Float(1.5));
        assert_eq!(map["letter"], Value::from("é"));
        assert_eq!(map["by_id"], value!({"1": "one", "4294967295": "max"}));
        assert_eq!(map["flags"], value!({"false": -1, "true": 1}));
        assert_eq!(map["by_kind"], value!({"Unit": 1}));
        assert_eq!(
            map["kinds"],
            value!([
                "Unit",
                {"Newtype": -1},
                {"Tuple": [2, true]},
                {"Struct": {"a": "x", "b": 3}},
                {"Struct": {"a": "y", "b": null}}
            ])
        );
        // Nested values pass through untouched.
        assert_eq!(map["extra"], r.extra);
    }

    #[test]
    fn record_round_trips_through_postcard_with_value_field() {
        let r = record();
        let bytes = postcard::to_allocvec(&r).unwrap();
        let back: Record = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn enums_and_options() {
        for kind in record().kinds {
            assert_eq!(from_value::<Kind>(to_value(&kind).unwrap()).unwrap(), kind);
        }
        assert_eq!(to_value(&None::<i32>).unwrap(), Value::Null);
        assert_eq!(to_value(&Some(5)).unwrap(), Value::Int(5));
        assert_eq!(from_value::<Option<i32>>(Value::Null).unwrap(), None);
        assert_eq!(from_value::<Option<i32>>(Value::Int(5)).unwrap(), Some(5));
        assert_eq!(from_value::<Kind>(value!({"Unit": null})).unwrap(), Kind::Unit);
        assert!(err_message(from_value::<Kind>(value!("Nope"))).contains("unknown variant `Nope`"));
        assert_eq!(
            err_message(from_value::<Kind>(value!({"Newtype": 1, "Unit": null}))),
            "expected a string or a map with a single key for enum Kind, found a map with 2 keys"
        );
        assert_eq!(
            err_message(from_value::<Kind>(value!("Newtype"))),
            "expected variant `Newtype` with content (a map with a single key), found only its name"
        );
        assert_eq!(
            err_message(from_value::<Kind>(value!({"Struct": {"a": 1}}))),
            "expected a string, found an integer at `Struct.a`"
        );
    }

    #[test]
    fn integers_are_canonical() {
        assert_eq!(to_value(&5_u64).unwrap(), Value::Int(5));
        assert_eq!(to_value(&(i64::MAX as u64)).unwrap(), Value::Int(i64::MAX));
        assert_eq!(to_value(&(i64::MAX as u64 + 1)).unwrap(), Value::UInt(i64::MAX as u64 + 1));
        assert_eq!(to_value(&u64::MAX).unwrap(), Value::UInt(u64::MAX));
        assert_eq!(to_value(&i64::MIN).unwrap(), Value::Int(i64::MIN));
        assert_eq!(to_value(&7_u128).unwrap(), Value::Int(7));
        assert_eq!(to_value(&-7_i128).unwrap(), Value::Int(-7));
        assert_eq!(to_value(&u128::from(u64::MAX)).unwrap(), Value::UInt(u64::MAX));
        assert_eq!(
            err_message(to_value(&u128::MAX)),
            format!("expected an integer that fits in 64 bits, found {}", u128::MAX)
        );
        assert_eq!(Value::from(5_u64), Value::Int(5));
        assert_eq!(Value::from(u64::MAX), Value::UInt(u64::MAX));
        assert_eq!(Value::from(3_usize), Value::Int(3));

        assert_eq!(from_value::<u64>(Value::UInt(u64::MAX)).unwrap(), u64::MAX);
        assert_eq!(from_value::<i64>(Value::Int(i64::MIN)).unwrap(), i64::MIN);
        assert_eq!(from_value::<u8>(Value::Int(255)).unwrap(), 255);
        assert_eq!(from_value::<i64>(Value::UInt(5)).unwrap(), 5);
        assert_eq!(from_value::<i128>(Value::UInt(u64::MAX)).unwrap(), i128::from(u64::MAX));
        assert_eq!(from_value::<i64>(Value::Float(-3.0)).unwrap(), -3);
        assert_eq!(from_value::<u64>(Value::Float(1e19)).unwrap(), 10_000_000_000_000_000_000);
        assert_eq!(from_value::<f64>(Value::Int(2)).unwrap(), 2.0);
        assert_eq!(from_value::<f32>(Value::Float(0.5)).unwrap(), 0.5);

        assert_eq!(
            err_message(from_value::<u8>(Value::Int(256))),
            "invalid value: expected u8, found integer `256`"
        );
        assert_eq!(
            err_message(from_value::<u64>(Value::Int(-1))),
            "invalid value: expected u64, found integer `-1`"
        );
        assert!(err_message(from_value::<i64>(Value::UInt(u64::MAX))).contains("expected i64"));
        assert_eq!(
            err_message(from_value::<i64>(Value::Float(2.5))),
            "expected an integer, found a float with a fractional part or out of range (2.5)"
        );
        assert!(err_message(from_value::<i64>(Value::Float(f64::NAN))).starts_with("expected an integer"));
        assert!(err_message(from_value::<u64>(Value::Float(1e20))).starts_with("expected an integer"));
    }

    #[test]
    fn value_passes_through() {
        let samples = [
            Value::Null,
            Value::Int(3),
            Value::UInt(u64::MAX),
            Value::Bytes(vec![1, 2]),
            value!({"a": [null, {"b": 1.5}], "c": (Value::Bytes(vec![]))}),
        ];
        for v in samples {
            assert_eq!(to_value(&v).unwrap(), v);
            assert_eq!(from_value::<Value>(v.clone()).unwrap(), v);
            assert_eq!(from_value::<Vec<Value>>(Value::List(vec![v.clone()])).unwrap(), vec![v.clone()]);
            assert_eq!(to_value(&Some(vec![v.clone()])).unwrap(), Value::List(vec![v.clone()]));
        }
        // A non-canonical `UInt` is kept as it is when read back as a `Value`.
        assert_eq!(from_value::<Value>(Value::UInt(1)).unwrap(), Value::UInt(1));
    }

    #[test]
    fn bytes() {
        assert_eq!(from_value::<Vec<u8>>(Value::Bytes(vec![1, 2])).unwrap(), vec![1, 2]);
        assert_eq!(from_value::<Vec<u8>>(value!([1, 2])).unwrap(), vec![1, 2]);
        assert_eq!(
            err_message(from_value::<Vec<u8>>(value!([1, 256]))),
            "invalid value: expected u8, found integer `256` at `[1]`"
        );

        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Blob(#[serde(with = "super::bytes_repr")] Vec<u8>);
        assert_eq!(to_value(&Blob(vec![1])).unwrap(), Value::Bytes(vec![1]));
        assert_eq!(from_value::<Blob>(value!([1, 2])).unwrap(), Blob(vec![1, 2]));
        assert_eq!(
            err_message(from_value::<Blob>(value!([1, -2]))),
            "expected bytes or a list of integers in 0..=255, found an integer at `[1]`"
        );
        assert_eq!(err_message(from_value::<Blob>(Value::Bool(true))), "expected bytes, found a boolean");
    }

    #[test]
    fn errors_say_what_and_where() {
        assert_eq!(err_message(from_value::<i64>(value!("x"))), "expected an integer, found a string");
        assert_eq!(err_message(from_value::<String>(Value::Int(1))), "expected a string, found an integer");
        assert_eq!(err_message(from_value::<bool>(Value::Null)), "expected a boolean, found null");
        assert_eq!(err_message(from_value::<Vec<i32>>(value!({}))), "expected a list, found a map");
        assert_eq!(err_message(from_value::<()>(Value::Int(1))), "expected null, found an integer");
        assert_eq!(
            err_message(from_value::<char>(value!("ab"))),
            "invalid value: expected a character, found string \"ab\""
        );

        let mut v = to_value(&record()).unwrap();
        if let Value::Map(map) = &mut v {
            map.insert("tags".into(), value!(["ok", 3]));
        }
        assert_eq!(
            err_message(from_value::<Record>(v.clone())),
            "expected a string, found an integer at `tags[1]`"
        );
        if let Value::Map(map) = &mut v {
            map.insert("tags".into(), value!([]));
            map.remove("age");
        }
        assert_eq!(err_message(from_value::<Record>(v)), "missing field `age`");

        assert_eq!(
            err_message(from_value::<HashMap<u8, i32>>(value!({"x": 1}))),
            "expected an integer map key, found \"x\" at `x`"
        );
        assert_eq!(
            err_message(from_value::<(i32, i32)>(value!([1, 2, 3]))),
            "expected a list of length 2, found one of length 3"
        );
        assert!(err_message(from_value::<(i32, i32, i32)>(value!([1, 2]))).contains("invalid length 2"));
    }

    #[test]
    fn errors_quote_at_most_about_a_hundred_bytes_of_the_data() {
        let long = "z".repeat(5000);
        let cut = format!("{}… (5000 bytes)", "z".repeat(crate::error::MAX_EXCERPT_LEN));
        // A string where another type was expected.
        let message = err_message(from_value::<char>(Value::String(long.clone())));
        assert_eq!(
            message,
            format!("invalid value: expected a character, found string \"{}", &cut[..100])
                + "\"… (5000 bytes)"
        );
        // A map key in the place of the error, and a map key that does not parse.
        let mut outer = BTreeMap::new();
        outer.insert(long.clone(), value!("not a number"));
        let message = err_message(from_value::<BTreeMap<String, i64>>(Value::Map(outer)));
        assert_eq!(message, format!("expected an integer, found a string at `{cut}`"));
        let message = err_message(from_value::<HashMap<u8, i32>>(Value::Map(BTreeMap::from([(
            long.clone(),
            value!(1),
        )]))));
        assert!(message.starts_with("expected an integer map key, found \"zzz"), "{message}");
        assert!(message.len() < 400, "{message}");
        // A variant name from the data.
        let message = err_message(from_value::<Kind>(Value::String(long.clone())));
        assert!(
            message.starts_with(&format!("unknown variant `{cut}`, expected one of `Unit`")),
            "{message}"
        );
        let message = err_message(from_value::<Kind>(Value::Map(BTreeMap::from([(long, Value::Null)]))));
        assert!(message.len() < 400, "{message}");
    }

    #[test]
    fn map_keys() {
        let bad = HashMap::from([(vec![1], 1)]);
        assert_eq!(
            err_message(to_value(&bad)),
            "expected a map key that is a string, integer, boolean or char, found a list"
        );
        let nested =
            BTreeMap::from([("outer", BTreeMap::from([(1.5_f64.to_bits(), HashMap::from([((), 1)]))]))]);
        assert_eq!(
            err_message(to_value(&nested)),
            format!(
                "expected a map key that is a string, integer, boolean or char, found null at `outer.{}`",
                1.5_f64.to_bits()
            )
        );
        let chars = BTreeMap::from([('a', 1), ('b', 2)]);
        let v = to_value(&chars).unwrap();
        assert_eq!(v, value!({"a": 1, "b": 2}));
        assert_eq!(from_value::<BTreeMap<char, u8>>(v).unwrap(), BTreeMap::from([('a', 1), ('b', 2)]));
        let signed = BTreeMap::from([(-1_i64, 'x'), (i64::MAX, 'y')]);
        assert_eq!(from_value::<BTreeMap<i64, char>>(to_value(&signed).unwrap()).unwrap(), signed);
    }

    #[test]
    fn structs_read_from_lists_and_unknown_fields_ignored() {
        #[derive(Debug, PartialEq, Deserialize)]
        struct P {
            x: i32,
            y: i32,
        }
        assert_eq!(from_value::<P>(value!([1, 2])).unwrap(), P { x: 1, y: 2 });
        assert_eq!(from_value::<P>(value!({"x": 1, "y": 2, "z": 3})).unwrap(), P { x: 1, y: 2 });
        assert_eq!(err_message(from_value::<P>(value!("p"))), "expected a map for struct P, found a string");
    }

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

    #[test]
    fn macro_forms() {
        let x = 5_u8;
        let name = String::from("n");
        assert_eq!(value!(null), Value::Null);
        assert_eq!(value!(true), Value::Bool(true));
        assert_eq!(value!(x), Value::Int(5));
        assert_eq!(value!(-1.5), Value::Float(-1.5));
        assert_eq!(value!([]), Value::List(vec![]));
        assert_eq!(value!({}), Value::Map(BTreeMap::new()));
        assert_eq!(
            value!([x, x + 1, [null], {},]),
            Value::List(vec![
                Value::Int(5),
                Value::Int(6),
                Value::List(vec![Value::Null]),
                Value::Map(BTreeMap::new()),
            ])
        );
        let v = value!({(name): x, "opt": (None::<i32>), "v": (vec![1, 2]), "s": &name, "k": {"n": null,},});
        assert_eq!(
            v,
            Value::Map(BTreeMap::from([
                ("n".to_owned(), Value::Int(5)),
                ("opt".to_owned(), Value::Null),
                ("v".to_owned(), Value::List(vec![Value::Int(1), Value::Int(2)])),
                ("s".to_owned(), Value::from("n")),
                ("k".to_owned(), Value::Map(BTreeMap::from([("n".to_owned(), Value::Null)]))),
            ]))
        );
    }

    #[test]
    fn accessors() {
        let v = value!({"a": 1, "s": "t"});
        assert_eq!(v.kind_name(), "map");
        assert_eq!(v.as_map().map(BTreeMap::len), Some(2));
        assert_eq!(v.as_str(), None);
        assert_eq!(value!("t").as_str(), Some("t"));
        assert_eq!(Value::Int(-1).as_i64(), Some(-1));
        assert_eq!(Value::Int(-1).as_u64(), None);
        assert_eq!(Value::UInt(u64::MAX).as_i64(), None);
        assert_eq!(Value::UInt(u64::MAX).as_u64(), Some(u64::MAX));
        assert!(Value::Null.is_null());
        assert!(Value::default().is_null());
        let kinds: Vec<_> = [
            Value::Null,
            Value::Bool(true),
            Value::Int(1),
            Value::UInt(u64::MAX),
            Value::Float(1.0),
            Value::from(""),
            Value::Bytes(vec![]),
            value!([]),
            value!({}),
        ]
        .iter()
        .map(Value::kind_name)
        .collect();
        assert_eq!(kinds, ["null", "bool", "integer", "integer", "float", "string", "bytes", "list", "map"]);
    }

    proptest! {
        #[test]
        fn to_value_of_value_is_identity(v in arb_value()) {
            prop_assert_eq!(to_value(&v).unwrap(), v);
        }

        #[test]
        fn from_value_to_value_is_identity(v in arb_value()) {
            prop_assert_eq!(from_value::<Value>(v.clone()).unwrap(), v);
        }

        #[test]
        fn postcard_round_trip(v in arb_value()) {
            let bytes = postcard::to_allocvec(&v).unwrap();
            prop_assert_eq!(postcard::from_bytes::<Value>(&bytes).unwrap(), v);
        }

        #[test]
        fn display_never_panics(v in arb_value()) {
            let _ = v.to_string();
        }
    }
}
