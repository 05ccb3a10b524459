//! What both suites' watchdogs report about a case thread that ended without an outcome.

use std::any::Any;

/// A case thread's panic as a failure message, with the panic's own message when it has one.
pub(crate) fn describe_panic(panic: &(dyn Any + Send)) -> String {
    let message =
        panic.downcast_ref::<String>().map(String::as_str).or(panic.downcast_ref::<&str>().copied());
    match message {
        Some(message) => format!("the case panicked: {message}"),
        None => "the case panicked".to_owned(),
    }
}
