//! How a case fails: a message, never a panic, so that helper functions need no `unwrap`.

use std::fmt;
use std::future::Future;
use std::time::Duration;

/// Longest wait for any single step that completes at once unless the transport is broken.
pub(crate) const STEP_DEADLINE: Duration = Duration::from_secs(10);

/// Why a case failed.
#[derive(Debug)]
pub(crate) struct Failure(String);

/// The result of a case or of one of its steps.
pub(crate) type Outcome<T = ()> = Result<T, Failure>;

impl Failure {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Failure(message.into())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Adds what was being done to an error.
pub(crate) trait Context<T> {
    fn context(self, doing: impl fmt::Display) -> Outcome<T>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn context(self, doing: impl fmt::Display) -> Outcome<T> {
        self.map_err(|err| Failure(format!("{doing}: {err}")))
    }
}

/// Fails the case with a formatted message unless the condition holds.
macro_rules! ensure {
    ($condition:expr, $($message:tt)+) => {
        if !$condition {
            return Err($crate::transport::failure::Failure::new(format!($($message)+)));
        }
    };
}
pub(crate) use ensure;

/// `future`'s output, or a failure naming the step if it takes longer than [`STEP_DEADLINE`].
pub(crate) async fn within<F: Future>(doing: impl fmt::Display, future: F) -> Outcome<F::Output> {
    tokio::time::timeout(STEP_DEADLINE, future).await.map_err(|_| {
        Failure(format!("{doing}: nothing happened within {STEP_DEADLINE:?}; the transport hangs"))
    })
}
