//! A proptest strategy for arbitrary values, shared by the crate's unit tests (as
//! `value::strategy`) and its integration tests (which include this file by path), so both draw
//! values the same way.

use super::Value;

/// Arbitrary canonical values without NaN (which is never equal to itself).
pub(crate) fn arb_value() -> impl proptest::strategy::Strategy<Value = Value> {
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
