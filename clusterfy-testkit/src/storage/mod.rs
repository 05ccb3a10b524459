//! The storage conformance suite: every rule of the `# Contract` of [`StorageBackend`] as a named
//! test, plus a model test against a `BTreeMap`.
//!
//! Run it on a backend with one [`storage_conformance!`](crate::storage_conformance) call in an
//! ordinary test target, given a [`StorageHarness`] that opens your backend; see the
//! [crate docs](crate).
//!
//! # How it runs
//!
//! Every case is its own `#[test]` (`<name>::<case>`), with its own harness (the macro's
//! expression is evaluated once per case), its own tokio multi-thread runtime on its own thread,
//! and a watchdog: a case that has not finished after 30 seconds (60 for the model test) fails
//! instead of hanging the run. Every backend call a case makes has a deadline of its own, so a
//! call that never returns fails its case with the call named. Each case starts from a fresh
//! store and first checks that the backend it opens is empty.
//!
//! # Cases
//!
//! Named as the bullets of the `# Contract` of [`StorageBackend`] name them:
//!
//! - `get_of_missing_key_is_none`: `get` of keys never written, including the empty key, a key
//!   that is a prefix of a written one and a key deleted again, is `Ok(None)`.
//! - `put_then_get_returns_value`: values from empty to 64 KiB come back unchanged.
//! - `put_replaces_previous_value`: a second `put` wins, whether the new value is longer, shorter
//!   or empty, and leaves one pair, not two.
//! - `delete_removes_key`: the deleted key is gone from `get` and `scan_prefix`; its neighbours
//!   stay; it can be written again.
//! - `delete_of_missing_key_is_ok`: deleting a key never written, or twice, is `Ok(())` and
//!   changes nothing.
//! - `scan_prefix_is_ordered_and_exact`: keys in unsigned byte order (`0x00` before `a`, `0xff`
//!   last, a key before its extensions), exactly those with the prefix, the empty prefix giving
//!   everything, a prefix ending in `0xff`, and a prefix matching nothing.
//! - `batch_applies_in_order`: later operations on a key win, a put after a delete revives, a
//!   delete of an absent key is fine, an empty batch changes nothing.
//! - `batch_is_atomic_for_readers`: one task applies batches (each sets 64 keys to its round
//!   number and moves a marker key to its round) for at least 200 rounds and 300 ms, until three
//!   reader tasks have read 2,000 times between them (5 s at most); no reader, scanning or reading
//!   two keys in either order, sees two rounds at once. A race between two operations of a batch
//!   can be a tiny window, so this case finds most non-atomic batches on most runs, not all on
//!   every run.
//! - `batch_delete_prefix_removes_exactly_the_prefix`: a `DeletePrefix` removes the stored keys
//!   with the prefix and those put earlier in the same batch, keeps the key that is one byte
//!   short of the prefix and the neighbours on either side, and a put after it in the batch
//!   stays; the empty prefix empties the store.
//! - `keys_and_values_are_binary_safe`: empty keys and values, NUL bytes, `0xff`, invalid UTF-8,
//!   all 256 byte values, through every method.
//! - `flush_after_writes_succeeds`: `flush` after every kind of write, on an empty backend, twice
//!   in a row and from four tasks racing with each other's writes, returns `Ok(())` and the data
//!   stays readable.
//! - `durable_writes_survive_reopen`: if the harness can reopen a store, flushed writes (puts,
//!   replaced values, deletes, compare-and-swaps, batches) are all there after the backend is
//!   dropped and opened again, twice. A backend that claims [`Capabilities::durable`] must be
//!   reopenable; one that cannot be reopened passes only if it does not claim durability, and
//!   says so on stderr.
//! - `concurrent_writers_lose_nothing`: eight tasks at once write disjoint keys (puts, batches,
//!   deletes) and increment one shared counter by compare-and-swap; every write and every
//!   increment is there at the end.
//! - `model_matches_btreemap`: random sequences of get, put, delete, compare-and-swap, scan,
//!   batch and flush (and reopen, when the harness can reopen), over a small key alphabet with
//!   empty keys and NUL bytes so that operations collide, give the same results as a
//!   `BTreeMap<Vec<u8>, Vec<u8>>`; after every reopen and at the end the whole content must
//!   equal the model's. 32 sequences of up to 40 operations (set `PROPTEST_CASES` for more).
//!
//! [`Capabilities::durable`]: clusterfy_core::Capabilities::durable

use std::any::Any;
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use clusterfy_core::StorageBackend;

mod cases;
mod check;
mod model;
mod run;

pub use run::run_case;

/// The error a [`StorageHarness`] returns: any error, boxed, so that `?` works on the errors of
/// whatever the harness calls (file system, a client library, [`clusterfy_core::Error`]).
pub type HarnessError = Box<dyn StdError + Send + Sync + 'static>;

/// `Result` with [`HarnessError`] as the error type.
pub type HarnessResult<T> = Result<T, HarnessError>;

/// Opens the backend under test for the storage suite; implemented by the backend's author in
/// the backend's `tests/conformance.rs`.
///
/// The suite asks for a new *store* (the place a backend's data lives: a temporary directory,
/// a key prefix on a server, nothing at all for memory) for every case and for every run of the
/// model test, and opens the backend on it. A harness that [can reopen](Self::can_reopen) is
/// asked to open a store again after the suite dropped every backend it opened there, to check
/// that flushed data comes back.
///
/// The harness value lives for one case (the macro evaluates its expression once per case);
/// every method is called from that case's tokio multi-thread runtime, so a backend whose client
/// is bound to a runtime can be opened in any of them.
///
/// ```
/// use std::sync::Arc;
///
/// use async_trait::async_trait;
/// use clusterfy_core::StorageBackend;
/// use clusterfy_storage_mem::MemStorage;
/// use clusterfy_testkit::storage::{HarnessResult, StorageHarness};
///
/// struct MemHarness;
///
/// #[async_trait]
/// impl StorageHarness for MemHarness {
///     // Memory keeps nothing outside the backend value.
///     type Store = ();
///
///     async fn create_store(&self) -> HarnessResult<()> {
///         Ok(())
///     }
///
///     async fn open(&self, _store: &()) -> HarnessResult<Arc<dyn StorageBackend>> {
///         Ok(Arc::new(MemStorage::new()))
///     }
///
///     fn can_reopen(&self) -> bool {
///         false
///     }
/// }
/// ```
#[async_trait]
pub trait StorageHarness: Send + Sync + 'static {
    /// Where one store's data lives, and all that opening it again needs: a
    /// `tempfile::TempDir`, a key prefix (with the server it is on), `()` for memory. The suite
    /// drops it after every backend opened on it, so its `Drop` can clean up.
    type Store: Send + Sync + 'static;

    /// Creates a new, empty store that shares nothing with any other store this or another
    /// harness creates, even while other cases run in parallel in the same process (use a fresh
    /// temporary directory, a unique key prefix, ...).
    ///
    /// When the environment lacks what the backend needs (no `redis-server` installed, say),
    /// return [`Skip`]: the case then says so on stderr and passes, except under `CI`, where it
    /// fails.
    async fn create_store(&self) -> HarnessResult<Self::Store>;

    /// Opens the backend on `store`.
    ///
    /// Called once on every new store. If [`can_reopen`](Self::can_reopen) is true it is
    /// called on the same store again, after the suite flushed and dropped every clone of the
    /// backend it was given before (and waited for every task of its own using it): the new
    /// backend must see every write that was flushed.
    async fn open(&self, store: &Self::Store) -> HarnessResult<Arc<dyn StorageBackend>>;

    /// Whether opening a store again gives back its data: `true` for backends whose data outlives
    /// the backend value (on disk, on a server), `false` for volatile ones such as memory. A
    /// backend whose capabilities claim [`durable`](clusterfy_core::Capabilities::durable) must be
    /// reopenable, or `durable_writes_survive_reopen` fails.
    fn can_reopen(&self) -> bool;
}

/// A [`StorageHarness`] error meaning "this environment cannot run the backend": the case is
/// skipped with the reason on stderr, and fails instead when the `CI` environment variable is
/// set, so that a CI run never passes without testing.
///
/// ```
/// # use clusterfy_testkit::storage::{HarnessResult, Skip};
/// fn create_store() -> HarnessResult<()> {
///     Err(Skip::new("redis-server is not installed").into())
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    reason: String,
}

impl Skip {
    /// A skip with the reason shown on stderr (say what is missing and how to get it).
    pub fn new(reason: impl Into<String>) -> Self {
        Skip { reason: reason.into() }
    }

    /// Why the case cannot run.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "skipped: {}", self.reason)
    }
}

impl StdError for Skip {}

/// The names of the cases, in the order they are listed (the order of the `# Contract` bullets,
/// then the model test).
pub fn case_names() -> impl Iterator<Item = &'static str> {
    cases::CASES.iter().map(|case| case.name)
}

/// A [`StorageHarness`] with its store type erased, so that cases need no type parameter.
#[async_trait]
trait ErasedHarness: Send + Sync {
    async fn create_store(&self) -> HarnessResult<Box<dyn Any + Send + Sync>>;
    async fn open(&self, store: &(dyn Any + Send + Sync)) -> HarnessResult<Arc<dyn StorageBackend>>;
    fn can_reopen(&self) -> bool;
}

#[async_trait]
impl<H: StorageHarness> ErasedHarness for H {
    async fn create_store(&self) -> HarnessResult<Box<dyn Any + Send + Sync>> {
        Ok(Box::new(StorageHarness::create_store(self).await?))
    }

    async fn open(&self, store: &(dyn Any + Send + Sync)) -> HarnessResult<Arc<dyn StorageBackend>> {
        let store = store
            .downcast_ref::<H::Store>()
            .ok_or("the suite passed a store of another harness (a bug in the suite)")?;
        StorageHarness::open(self, store).await
    }

    fn can_reopen(&self) -> bool {
        StorageHarness::can_reopen(self)
    }
}

/// Expands to a module `$name` with one `#[test]` per case of the storage conformance suite,
/// each running that case on the backend opened by the [`StorageHarness`] `$harness`.
///
/// `$harness` is an expression evaluated once per case, inside the generated module, which
/// glob-imports its parent (so names in scope where the macro is called can be used). The tests
/// run with the ordinary test harness: no `harness = false` needed.
///
/// ```
/// # use std::sync::Arc;
/// # use async_trait::async_trait;
/// # use clusterfy_core::StorageBackend;
/// # use clusterfy_testkit::storage::{HarnessResult, StorageHarness};
/// # struct MemHarness;
/// # #[async_trait]
/// # impl StorageHarness for MemHarness {
/// #     type Store = ();
/// #     async fn create_store(&self) -> HarnessResult<()> { Ok(()) }
/// #     async fn open(&self, _: &()) -> HarnessResult<Arc<dyn StorageBackend>> {
/// #         Ok(Arc::new(clusterfy_storage_mem::MemStorage::new()))
/// #     }
/// #     fn can_reopen(&self) -> bool { false }
/// # }
/// clusterfy_testkit::storage_conformance!(mem, MemHarness);
/// // Tests: mem::get_of_missing_key_is_none, mem::put_then_get_returns_value, ...
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! storage_conformance {
    ($name:ident, $harness:expr $(,)?) => {
        $crate::__storage_case_list!(__storage_case_tests! { $name, $harness });
    };
}

/// The one list of the storage suite's cases: calls `$crate::$callback!` with the arguments in
/// brackets followed by every case name. Not part of the public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __storage_case_list {
    ($callback:ident! { $($args:tt)* }) => {
        $crate::$callback! {
            [$($args)*]
            get_of_missing_key_is_none
            put_then_get_returns_value
            put_replaces_previous_value
            delete_removes_key
            delete_of_missing_key_is_ok
            scan_prefix_is_ordered_and_exact
            batch_applies_in_order
            batch_is_atomic_for_readers
            batch_delete_prefix_removes_exactly_the_prefix
            keys_and_values_are_binary_safe
            flush_after_writes_succeeds
            durable_writes_survive_reopen
            concurrent_writers_lose_nothing
            model_matches_btreemap
        }
    };
}

/// What [`storage_conformance!`] expands to, given the case list. Not part of the public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __storage_case_tests {
    ([$name:ident, $harness:expr] $($case:ident)*) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(
                #[test]
                fn $case() {
                    $crate::storage::run_case(::core::stringify!($case), $harness);
                }
            )*
        }
    };
}

/// The table of case functions, given the case list.
#[doc(hidden)]
#[macro_export]
macro_rules! __storage_case_table {
    ([] $($case:ident)*) => {
        /// Every case, in the order of the list.
        pub(crate) const CASES: &[Case] = &[
            $(Case { name: ::core::stringify!($case), run: |ctx| ::std::boxed::Box::pin($case(ctx)) }),*
        ];
    };
}
