//! What cases are written with: failures as values (never panics, so helpers need no `unwrap`),
//! a fresh store per case, and the backend's methods wrapped with a deadline and a description.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use clusterfy_core::{BatchOp, Capabilities, StorageBackend, StorageBackendExt};

use super::{ErasedHarness, HarnessError, Skip};

/// Longest wait for one backend call; far beyond what any working backend needs.
pub(crate) const STEP_DEADLINE: Duration = Duration::from_secs(10);

/// Why a case did not pass.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The backend (or the harness) broke a rule; the message says which and how.
    Failed(String),
    /// The harness cannot run the backend here ([`Skip`]).
    Skipped(String),
}

/// The result of a case or of one of its steps.
pub(crate) type Outcome<T = ()> = Result<T, Failure>;

impl Failure {
    pub(crate) fn failed(message: impl Into<String>) -> Self {
        Failure::Failed(message.into())
    }

    /// A harness error: a [`Skip`] skips, anything else fails.
    fn from_harness(doing: &str, err: HarnessError) -> Self {
        match err.downcast::<Skip>() {
            Ok(skip) => Failure::Skipped(skip.reason().to_owned()),
            Err(err) => Failure::Failed(format!("{doing}: {err}")),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Failed(message) => f.write_str(message),
            Failure::Skipped(reason) => write!(f, "skipped: {reason}"),
        }
    }
}

/// Writes a line to the process's stderr, past the test harness's output capture (which only
/// takes `eprintln!`), so that a skip shows in an ordinary `cargo test` run.
pub(crate) fn tell(message: &str) {
    use std::io::Write;
    // Nothing sensible is left to do if stderr itself is gone.
    let _ = writeln!(std::io::stderr().lock(), "{message}");
}

/// Adds what was being done to an error.
pub(crate) trait Context<T> {
    fn context(self, doing: impl fmt::Display) -> Outcome<T>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn context(self, doing: impl fmt::Display) -> Outcome<T> {
        self.map_err(|err| Failure::Failed(format!("{doing}: {err}")))
    }
}

/// Fails the case with a formatted message unless the condition holds.
macro_rules! ensure {
    ($condition:expr, $($message:tt)+) => {
        if !$condition {
            return Err($crate::storage::check::Failure::failed(format!($($message)+)));
        }
    };
}
pub(crate) use ensure;

/// Fails the case unless the two are equal, showing both.
macro_rules! ensure_eq {
    ($found:expr, $expected:expr, $($message:tt)+) => {
        let (found, expected) = (&$found, &$expected);
        if found != expected {
            return Err($crate::storage::check::Failure::failed(format!(
                "{}\n  expected: {}\n     found: {}",
                format!($($message)+),
                $crate::storage::check::Show(expected),
                $crate::storage::check::Show(found),
            )));
        }
    };
}
pub(crate) use ensure_eq;

/// `future`'s output, or a failure naming the step if it takes longer than [`STEP_DEADLINE`].
pub(crate) async fn within<F: Future>(doing: impl fmt::Display, future: F) -> Outcome<F::Output> {
    tokio::time::timeout(STEP_DEADLINE, future).await.map_err(|_| {
        Failure::Failed(format!("{doing}: no answer within {STEP_DEADLINE:?}; the backend hangs"))
    })
}

/// A pair as the backend returns it.
pub(crate) type Pair = (Vec<u8>, Vec<u8>);

/// What a case gets: the harness, to open stores with.
pub(crate) struct Ctx {
    harness: Arc<dyn ErasedHarness>,
    /// The test's name (`<backend>::<case>`), for what the case tells on stderr.
    pub(crate) test: String,
}

impl Ctx {
    pub(crate) fn new(harness: Arc<dyn ErasedHarness>, test: String) -> Self {
        Ctx { harness, test }
    }

    /// Whether the harness can open a store again.
    pub(crate) fn can_reopen(&self) -> bool {
        self.harness.can_reopen()
    }

    /// A backend on a new store, checked to be empty.
    pub(crate) async fn fresh(&self) -> Outcome<Fixture> {
        let doing = "the harness creating a new store";
        let store = within(doing, self.harness.create_store())
            .await?
            .map_err(|err| Failure::from_harness(doing, err))?;
        let doing = "the harness opening the backend on a new store";
        let backend = within(doing, self.harness.open(store.as_ref()))
            .await?
            .map_err(|err| Failure::from_harness(doing, err))?;
        let fixture = Fixture { db: Db { backend }, store, harness: Arc::clone(&self.harness) };
        let found = fixture.db.scan(b"").await?;
        ensure!(
            found.is_empty(),
            "the backend opened on a new store is not empty (the harness must give every case a store \
             of its own): scan_prefix(b\"\") returned {}",
            Show(&found)
        );
        Ok(fixture)
    }
}

/// A backend and the store it was opened on.
pub(crate) struct Fixture {
    // Declared before `store`: the backend is dropped first.
    pub(crate) db: Db,
    store: Box<dyn Any + Send + Sync>,
    harness: Arc<dyn ErasedHarness>,
}

impl Fixture {
    /// Flushes, drops the backend and opens the store again. Only for harnesses that can reopen.
    pub(crate) async fn reopen(self) -> Outcome<Fixture> {
        let Fixture { db, store, harness } = self;
        db.flush().await?;
        let Db { backend } = db;
        // Anything but 1 means the backend or the harness keeps a clone; worth knowing when
        // opening again fails (a file lock still held, say).
        let others = Arc::strong_count(&backend) - 1;
        drop(backend);
        let doing = format!(
            "the harness opening the store again after the suite flushed and dropped the backend \
             ({others} other reference(s) to it were still alive)"
        );
        let backend = within(&doing, harness.open(store.as_ref()))
            .await?
            .map_err(|err| Failure::from_harness(&doing, err))?;
        Ok(Fixture { db: Db { backend }, store, harness })
    }
}

/// The backend under test, each method wrapped with a deadline and turned into an [`Outcome`]
/// that says which call failed.
#[derive(Clone)]
pub(crate) struct Db {
    backend: Arc<dyn StorageBackend>,
}

impl Db {
    pub(crate) fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }

    pub(crate) async fn get(&self, key: &[u8]) -> Outcome<Option<Vec<u8>>> {
        let doing = format!("get({})", Bytes(key));
        within(&doing, self.backend.get(key)).await?.context(&doing)
    }

    /// A batch of one `Put`.
    pub(crate) async fn put(&self, key: &[u8], value: &[u8]) -> Outcome {
        let doing = format!("apply_batch([Put({}, {})])", Bytes(key), Bytes(value));
        within(&doing, self.backend.put(key, value)).await?.context(&doing)
    }

    /// A batch of one `Delete`.
    pub(crate) async fn delete(&self, key: &[u8]) -> Outcome {
        let doing = format!("apply_batch([Delete({})])", Bytes(key));
        within(&doing, self.backend.delete(key)).await?.context(&doing)
    }

    pub(crate) async fn scan(&self, prefix: &[u8]) -> Outcome<Vec<Pair>> {
        let doing = format!("scan_prefix({})", Bytes(prefix));
        within(&doing, self.backend.scan_prefix(prefix)).await?.context(&doing)
    }

    pub(crate) async fn batch(&self, ops: Vec<BatchOp>) -> Outcome {
        let doing = format!("apply_batch({})", Show(&ops));
        within(&doing, self.backend.apply_batch(ops)).await?.context(&doing)
    }

    pub(crate) async fn flush(&self) -> Outcome {
        within("flush()", self.backend.flush()).await?.context("flush()")
    }

    /// Fails unless `get(key)` returns `expected`; `why` says what should have made it so.
    pub(crate) async fn expect(&self, key: &[u8], expected: Option<&[u8]>, why: &str) -> Outcome {
        let found = self.get(key).await?;
        ensure_eq!(found.as_deref(), expected, "get({}) {why}", Bytes(key));
        Ok(())
    }

    /// Fails unless the whole content (`scan_prefix(b"")`) is exactly `expected`, in that order.
    pub(crate) async fn expect_all(&self, expected: &[(&[u8], &[u8])], why: &str) -> Outcome {
        let found = self.scan(b"").await?;
        let expected: Vec<Pair> = expected.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        ensure_eq!(found, expected, "scan_prefix(b\"\") {why}");
        Ok(())
    }
}

/// A put, for building batches.
pub(crate) fn put(key: &[u8], value: &[u8]) -> BatchOp {
    BatchOp::Put { key: key.to_vec(), value: value.to_vec() }
}

/// A delete, for building batches.
pub(crate) fn del(key: &[u8]) -> BatchOp {
    BatchOp::Delete { key: key.to_vec() }
}

/// Bytes shown as a byte-string literal, long ones cut short.
pub(crate) struct Bytes<'a>(pub(crate) &'a [u8]);

impl fmt::Display for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 40;
        if self.0.len() <= SHOWN {
            write!(f, "b\"{}\"", self.0.escape_ascii())
        } else {
            write!(f, "b\"{}\"... ({} bytes)", self.0[..SHOWN].escape_ascii(), self.0.len())
        }
    }
}

/// Shows values of the shapes the suite compares, with bytes as byte strings.
pub(crate) struct Show<'a, T: ?Sized>(pub(crate) &'a T);

/// How a value is shown in a failure message.
pub(crate) trait Describe {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

impl<T: Describe + ?Sized> fmt::Display for Show<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.describe(f)
    }
}

impl Describe for [u8] {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&Bytes(self), f)
    }
}

impl Describe for Vec<u8> {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_slice().describe(f)
    }
}

impl<T: Describe + ?Sized> Describe for &T {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).describe(f)
    }
}

impl<T: Describe> Describe for Option<T> {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Some(value) => {
                f.write_str("Some(")?;
                value.describe(f)?;
                f.write_str(")")
            }
            None => f.write_str("None"),
        }
    }
}

impl<A: Describe, B: Describe> Describe for (A, B) {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(")?;
        self.0.describe(f)?;
        f.write_str(", ")?;
        self.1.describe(f)?;
        f.write_str(")")
    }
}

impl<T: Describe> Describe for [T] {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, item) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            item.describe(f)?;
        }
        f.write_str("]")
    }
}

impl<T: Describe> Describe for Vec<T> {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_slice().describe(f)
    }
}

impl<T: Describe, E: Describe> Describe for Result<T, E> {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ok(value) => {
                f.write_str("Ok(")?;
                value.describe(f)?;
                f.write_str(")")
            }
            Err(err) => {
                f.write_str("Err(")?;
                err.describe(f)?;
                f.write_str(")")
            }
        }
    }
}

impl Describe for () {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("()")
    }
}

impl Describe for usize {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Describe for bool {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Describe for BatchOp {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchOp::Put { key, value } => write!(f, "Put({}, {})", Bytes(key), Bytes(value)),
            BatchOp::Delete { key } => write!(f, "Delete({})", Bytes(key)),
            BatchOp::DeletePrefix { prefix } => write!(f, "DeletePrefix({})", Bytes(prefix)),
        }
    }
}
