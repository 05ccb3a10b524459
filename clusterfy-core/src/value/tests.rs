//! The conversions as their users meet them: round trips through [`to_value`] and [`from_value`]
//! (and postcard), the error messages, canonical integers, map keys and the accessors.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use super::strategy::arb_value;
use super::*;
use crate::error::{ErrorKind, Result};
use crate::value;

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
    // A non-canonical `UInt` comes back canonical, as `to_value` and the wire form make it.
    assert_eq!(from_value::<Value>(Value::UInt(1)).unwrap(), Value::Int(1));
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
        format!("invalid value: expected a character, found string \"{}", &cut[..100]) + "\"… (5000 bytes)"
    );
    // A map key in the place of the error, and a map key that does not parse.
    let mut outer = BTreeMap::new();
    outer.insert(long.clone(), value!("not a number"));
    let message = err_message(from_value::<BTreeMap<String, i64>>(Value::Map(outer)));
    assert_eq!(message, format!("expected an integer, found a string at `{cut}`"));
    let message =
        err_message(from_value::<HashMap<u8, i32>>(Value::Map(BTreeMap::from([(long.clone(), value!(1))]))));
    assert!(message.starts_with("expected an integer map key, found \"zzz"), "{message}");
    assert!(message.len() < 400, "{message}");
    // A variant name from the data.
    let message = err_message(from_value::<Kind>(Value::String(long.clone())));
    assert!(message.starts_with(&format!("unknown variant `{cut}`, expected one of `Unit`")), "{message}");
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
    let nested = BTreeMap::from([("outer", BTreeMap::from([(1.5_f64.to_bits(), HashMap::from([((), 1)]))]))]);
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
}
