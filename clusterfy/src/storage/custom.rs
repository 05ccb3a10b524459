//! User-defined storage operations: a typed read-modify-write that the primary's storage writer
//! runs on the current value, as it runs the built-in ones, so it costs one round trip and never
//! a retry.

use std::collections::HashMap;
use std::sync::Arc;

use clusterfy_core::codec::{from_payload, to_payload};
use clusterfy_core::command::validate_user_command_name;
use clusterfy_core::{Error, ErrorKind, Result, Value, from_value, to_value};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A read-modify-write of one value, defined by the program and run by the primary's storage
/// writer (register it with
/// [`PrimaryBuilder::storage_operation`](crate::PrimaryBuilder::storage_operation); call it with
/// [`Storage::apply`](super::Storage::apply)). Like a command, it has a stable wire `NAME`, and
/// both sides must agree on its serde shape.
///
/// [`Operation::apply`] runs in the writer task, one operation after the other: it must be quick
/// and must not block (no I/O), and it should be deterministic. Everything it returns is written
/// atomically, and an error changes nothing.
///
/// ```
/// use clusterfy::storage::Operation;
/// use serde::{Deserialize, Serialize};
///
/// /// Keeps the `keep` largest numbers seen, largest first; answers whether `n` made it.
/// #[derive(Serialize, Deserialize)]
/// struct TopScores {
///     n: i64,
///     keep: usize,
/// }
///
/// impl Operation for TopScores {
///     const NAME: &'static str = "top_scores";
///     type Value = Vec<i64>;
///     type Reply = bool;
///
///     fn apply(self, current: Option<Vec<i64>>) -> clusterfy::Result<(Option<Vec<i64>>, bool)> {
///         let mut scores = current.unwrap_or_default();
///         scores.push(self.n);
///         scores.sort_unstable_by(|a, b| b.cmp(a));
///         scores.truncate(self.keep);
///         let kept = scores.contains(&self.n);
///         Ok((Some(scores), kept))
///     }
/// }
/// ```
pub trait Operation: Serialize + DeserializeOwned + Send + 'static {
    /// The wire name: the same rules as a command's (`Command::NAME`).
    const NAME: &'static str;
    /// The value the operation works on (`Value` for any).
    type Value: Serialize + DeserializeOwned;
    /// What the caller gets back.
    type Reply: Serialize + DeserializeOwned + Send + 'static;

    /// The new value for `current` (`None`: nothing is there); `None` deletes it. The error, if
    /// any, goes back to the caller, and nothing changes.
    fn apply(self, current: Option<Self::Value>) -> Result<(Option<Self::Value>, Self::Reply)>;
}

/// An operation with its types erased: the encoded operation and the current value in, the new
/// value and the encoded reply out.
pub(crate) type ErasedOperation =
    Arc<dyn Fn(&[u8], Option<Value>) -> Result<(Option<Value>, Vec<u8>)> + Send + Sync>;

/// The operations registered on a primary, by name.
#[derive(Default, Clone)]
pub(crate) struct Operations {
    by_name: HashMap<&'static str, ErasedOperation>,
}

impl std::fmt::Debug for Operations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.by_name.keys()).finish()
    }
}

impl Operations {
    /// Registers `O`; fails for a bad, reserved or duplicate name.
    pub(crate) fn register<O: Operation>(&mut self) -> Result<()> {
        validate_user_command_name(O::NAME).map_err(|e| e.with_context("operation", O::NAME))?;
        if self.by_name.contains_key(O::NAME) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                "a storage operation of this name is already registered",
            )
            .with_context("operation", O::NAME));
        }
        let erased: ErasedOperation = Arc::new(|payload: &[u8], current: Option<Value>| {
            let operation: O = from_payload(payload)?;
            let current = current.map(from_value::<O::Value>).transpose()?;
            // A panic would end the writer task, and with it the storage.
            let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| operation.apply(current)))
                .map_err(|_| {
                    Error::new(
                        ErrorKind::CommandFailed,
                        "the storage operation panicked; nothing was changed",
                    )
                })??;
            let (next, reply) = applied;
            Ok((next.map(|v| to_value(&v)).transpose()?, to_payload(&reply)?))
        });
        self.by_name.insert(O::NAME, erased);
        Ok(())
    }

    /// The operation called `name`; an unknown name is an error naming the registered ones.
    pub(crate) fn get(&self, name: &str) -> Result<&ErasedOperation> {
        self.by_name.get(name).ok_or_else(|| {
            let mut names: Vec<&str> = self.by_name.keys().copied().collect();
            names.sort_unstable();
            Error::new(
                ErrorKind::UnknownCommand,
                format!(
                    "no storage operation {:?} is registered on the primary; registered: [{}]; register it \
                     with PrimaryBuilder::storage_operation",
                    clusterfy_core::error::excerpt(name),
                    names.join(", ")
                ),
            )
        })
    }
}
