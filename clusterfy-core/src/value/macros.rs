//! The [`value!`](crate::value!) macro; `#[macro_export]` puts it at the crate root.

/// Builds a [`Value`](crate::value::Value) from JSON-like syntax.
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::value::Value;

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
}
