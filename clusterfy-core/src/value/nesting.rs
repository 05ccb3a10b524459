//! The depth limit on decoding a [`Value`] from its wire form: the `deserialize_with` functions
//! of `Value::List` and `Value::Map`.

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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may panic; the lint is meant for library code.
mod tests {
    use super::{MAX_NESTING, Value};

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
}
