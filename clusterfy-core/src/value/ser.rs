//! Serialization into a [`Value`]: [`to_value`] and the serializers behind it.

use std::collections::BTreeMap;

use serde::ser::{self, Impossible, Serialize};

use super::error::{ConvError, ConvResult, Segment};
use super::{MAX_PREALLOC, VALUE_NAME, Value};
use crate::error::Result;

/// Converts any serializable value to a [`Value`], following the mapping in the
/// [module docs](super). A `Value` inside `value` is kept as it is.
///
/// # Errors
///
/// [`ErrorKind::Serialization`] if the `Serialize` impl fails, a map key is not a string, integer,
/// boolean or char, or a 128-bit integer does not fit in 64 bits.
///
/// [`ErrorKind::Serialization`]: crate::ErrorKind::Serialization
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
