//! Deserialization out of a [`Value`]: [`from_value`] and the deserializers behind it.

use std::collections::BTreeMap;

use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};

use super::error::{ConvError, ConvResult, Segment, mismatch};
use super::{VALUE_NAME, Value};
use crate::error::{Result, excerpt};

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
///
/// [`ErrorKind::Serialization`]: crate::ErrorKind::Serialization
pub fn from_value<T: de::DeserializeOwned>(value: Value) -> Result<T> {
    T::deserialize(ValueDeserializer(value)).map_err(ConvError::into_error)
}

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
///
/// [`to_value`]: super::to_value
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
