//! [`Storage`]: typed access to the shared storage, the same on the primary and on workers.

use std::sync::Arc;
use std::time::Duration;

use clusterfy_core::codec::{from_payload, to_payload};
use clusterfy_core::error::excerpt;
use clusterfy_core::protocol::{Reply, Request, StorageRequest};
use clusterfy_core::{Error, ErrorKind, Path, Result, Value, from_value};
use futures::StreamExt;
use rand::Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

use super::custom::Operation;
use super::ops::{argument, leaf_node};
use super::replica::{Replica, ReplicaRegistry};
use super::{SharedStorage, on_one_branch};
use crate::events::{EventStream, subscribe};
use crate::link::Link;

/// Attempts of [`Storage::update`] before it reports contention instead of spinning on.
const UPDATE_ATTEMPTS: usize = 10_000;
/// The longest pause between two attempts of [`Storage::update`].
const UPDATE_MAX_BACKOFF: Duration = Duration::from_millis(1);

/// A worker's side of the storage: its connection to the primary, and what hangs on it.
pub(crate) struct RemoteStorage {
    pub(crate) link: Arc<Link>,
    pub(crate) deadline: Duration,
    /// Where the connection's reader delivers [`Storage::watch`] notices.
    pub(crate) changes: broadcast::Sender<Path>,
    /// This worker's replicas.
    pub(crate) replicas: ReplicaRegistry,
}

#[derive(Clone)]
enum Access {
    /// On the primary: the storage itself.
    Local(Arc<SharedStorage>),
    /// On a worker: requests to the primary.
    Remote(Arc<RemoteStorage>),
}

/// Typed access to the shared storage by dotted path, the same on the primary and on workers.
///
/// Values go in and out as any `serde` type; a map path reads or writes the whole subtree.
///
/// Reads ([`retrieve`](Storage::retrieve)) see every write acknowledged before them and this
/// process's own earlier writes, and never wait for another worker's write or flush. For values
/// read on every request, a [`replica`](Storage::replica) answers from local memory.
///
/// For read-modify-write, prefer the atomic operations, which the primary runs in one step, one
/// round trip each, never retried: [`increment`](Storage::increment),
/// [`append`](Storage::append), [`remove_value`](Storage::remove_value),
/// [`insert_if_absent`](Storage::insert_if_absent), [`take`](Storage::take),
/// [`compare_and_swap`](Storage::compare_and_swap), and operations of your own
/// ([`apply`](Storage::apply)). [`update`](Storage::update) (a compare-and-swap loop) is for
/// one-off changes, not hot keys.
///
/// Errors are the same on both sides too: the same kind, message and context for the same
/// failure, whether the primary's storage or a worker's request to it ran into it. Every error of
/// a call on a path has a `path` context entry (a backend error names it as well); on a worker,
/// only failures of the request itself (a timeout, a lost connection) differ.
#[derive(Clone)]
pub struct Storage {
    access: Access,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let access = match &self.access {
            Access::Local(_) => "local",
            Access::Remote(_) => "remote",
        };
        f.debug_struct("Storage").field("access", &access).finish()
    }
}

fn unexpected(reply: Reply) -> Error {
    // The variant only: the reply may carry a value of any size.
    let kind = match reply {
        Reply::Done => "Done",
        Reply::Value(_) => "Value",
        Reply::Swapped(_) => "Swapped",
        Reply::Command(_) => "Command",
        Reply::Broadcast(_) => "Broadcast",
        Reply::Shutdown(_) => "Shutdown",
    };
    Error::new(ErrorKind::Protocol, format!("unexpected reply to a storage request: {kind}"))
}

/// Names `path` on an error that does not name a path yet (a backend failure, or on a worker a
/// timeout or a closed connection), so that every storage error says where it happened, and the
/// same failure carries the same context on the primary and on a worker.
fn at_path(err: Error, path: &Path) -> Error {
    if err.context_value("path").is_some() { err } else { err.with_context("path", path) }
}

fn done(reply: Reply) -> Result<()> {
    match reply {
        Reply::Done => Ok(()),
        other => Err(unexpected(other)),
    }
}

fn value(reply: Reply) -> Result<Option<Value>> {
    match reply {
        Reply::Value(value) => Ok(value),
        other => Err(unexpected(other)),
    }
}

/// The integer an atomic operation answered with.
fn integer(reply: Reply) -> Result<i64> {
    match value(reply)? {
        Some(Value::Int(n)) => Ok(n),
        other => Err(Error::new(
            ErrorKind::Protocol,
            format!("an atomic operation answered {other:?}, not an integer"),
        )),
    }
}

fn count(reply: Reply) -> Result<usize> {
    integer(reply).map(|n| usize::try_from(n).unwrap_or(0))
}

impl Storage {
    pub(crate) fn local(storage: Arc<SharedStorage>) -> Self {
        Storage { access: Access::Local(storage) }
    }

    pub(crate) fn remote(remote: Arc<RemoteStorage>) -> Self {
        Storage { access: Access::Remote(remote) }
    }

    /// Runs `request` on `path` (already parsed), locally or on the primary.
    async fn call(&self, path: &Path, request: StorageRequest) -> Result<Reply> {
        let reply = match &self.access {
            Access::Local(storage) => storage.request(path.clone(), request).await,
            Access::Remote(remote) => {
                let writes = !matches!(request, StorageRequest::Get { .. });
                let reply = remote.link.request(Request::Storage(request), remote.deadline).await;
                if writes && reply.is_ok() {
                    // A write returns once this worker's replicas show it.
                    remote.replicas.caught_up(path).await;
                }
                reply
            }
        };
        reply.map_err(|err| at_path(err, path))
    }

    /// Saves `value` at `path` (the original's `saveToStorage`). The parent map must exist:
    /// otherwise the error is [`ErrorKind::NotFound`] naming the missing prefix.
    #[doc(alias = "set")]
    pub async fn save<T: Serialize + ?Sized>(&self, path: &str, value: &T) -> Result<()> {
        self.save_value(path, argument(path, value)?, false).await
    }

    /// Saves `value` at `path`, creating missing parent maps.
    pub async fn save_with_parents<T: Serialize + ?Sized>(&self, path: &str, value: &T) -> Result<()> {
        self.save_value(path, argument(path, value)?, true).await
    }

    async fn save_value(&self, path: &str, value: Value, create_parents: bool) -> Result<()> {
        let path = Path::parse(path)?;
        let dotted = path.as_str().to_owned();
        let request = match (&self.access, &value) {
            // A map is split into nodes by the primary; any other value travels as its node.
            (Access::Remote(_), Value::Map(_)) | (Access::Local(_), _) => {
                StorageRequest::Save { path: dotted, value, create_parents }
            }
            (Access::Remote(_), leaf) => {
                StorageRequest::SaveNode { path: dotted, node: leaf_node(leaf)?, create_parents }
            }
        };
        done(self.call(&path, request).await?)
    }

    /// Reads the value at `path` as `T` (the original's `retrieveFromStorage`); `None` if nothing
    /// is there.
    #[doc(alias = "get")]
    pub async fn retrieve<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        match self.retrieve_value(path).await? {
            None => Ok(None),
            Some(value) => from_value(value).map(Some).map_err(|e| e.with_context("path", excerpt(path))),
        }
    }

    /// Reads the value or subtree at `path` as a [`Value`].
    pub async fn retrieve_value(&self, path: &str) -> Result<Option<Value>> {
        let path = Path::parse(path)?;
        match &self.access {
            // Memory, at once: this process's writes returned only once committed.
            Access::Local(storage) => storage.core().read(&path).map_err(|err| at_path(err, &path)),
            Access::Remote(_) => {
                value(self.call(&path, StorageRequest::Get { path: path.as_str().to_owned() }).await?)
            }
        }
    }

    /// Removes the value or subtree at `path`; a missing path is fine.
    pub async fn delete(&self, path: &str) -> Result<()> {
        let path = Path::parse(path)?;
        done(self.call(&path, StorageRequest::Delete { path: path.as_str().to_owned() }).await?)
    }

    /// Writes `new` at `path` (`None` deletes) only if the current value equals `expected`
    /// (`None`: nothing there). A lost race is `Ok(Err(current))`, not an error: `current` is
    /// the value as the writes applied with this one leave it (so a retry built on it holds
    /// unless yet another write comes first).
    pub async fn compare_and_swap<T: Serialize>(
        &self,
        path: &str,
        expected: Option<&T>,
        new: Option<&T>,
    ) -> Result<std::result::Result<(), Option<Value>>> {
        let expected = expected.map(|v| argument(path, v)).transpose()?;
        let new = new.map(|v| argument(path, v)).transpose()?;
        self.compare_and_swap_value(path, expected, new).await
    }

    async fn compare_and_swap_value(
        &self,
        path: &str,
        expected: Option<Value>,
        new: Option<Value>,
    ) -> Result<std::result::Result<(), Option<Value>>> {
        let path = Path::parse(path)?;
        let request = StorageRequest::CompareAndSwap { path: path.as_str().to_owned(), expected, new };
        match self.call(&path, request).await? {
            Reply::Swapped(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    /// Adds `by` (negative to subtract) to the integer at `path` and returns the new value, in
    /// one step on the primary (Redis's `INCRBY`): concurrent increments from any number of
    /// workers all count, and each caller gets the value its own increment made. Nothing there
    /// counts as 0 (the parent map must exist, as for a save). Fails with
    /// [`ErrorKind::InvalidInput`], changing nothing, if the value is not an integer or the
    /// result would overflow an `i64`.
    pub async fn increment(&self, path: &str, by: i64) -> Result<i64> {
        let path = Path::parse(path)?;
        integer(self.call(&path, StorageRequest::Increment { path: path.as_str().to_owned(), by }).await?)
    }

    /// [`Storage::increment`] for floats (Redis's `INCRBYFLOAT`): an integer there becomes a
    /// float; a result that is not finite is refused.
    pub async fn increment_float(&self, path: &str, by: f64) -> Result<f64> {
        let path = Path::parse(path)?;
        match value(
            self.call(&path, StorageRequest::IncrementFloat { path: path.as_str().to_owned(), by }).await?,
        )? {
            Some(Value::Float(f)) => Ok(f),
            other => Err(Error::new(
                ErrorKind::Protocol,
                format!("increment_float answered {other:?}, not a float"),
            )),
        }
    }

    /// Appends `element` to the list at `path` (nothing there: a new list) and returns the list's
    /// new length, in one step (Redis's `RPUSH`). Fails with [`ErrorKind::InvalidInput`] if the
    /// value there is not a list.
    pub async fn append<T: Serialize + ?Sized>(&self, path: &str, element: &T) -> Result<usize> {
        let value = argument(path, element)?;
        let path = Path::parse(path)?;
        count(self.call(&path, StorageRequest::Append { path: path.as_str().to_owned(), value }).await?)
    }

    /// Removes every element equal to `element` from the list at `path` and returns how many
    /// went, in one step (Redis's `LREM`). Nothing there removes nothing.
    pub async fn remove_value<T: Serialize + ?Sized>(&self, path: &str, element: &T) -> Result<usize> {
        let value = argument(path, element)?;
        let path = Path::parse(path)?;
        count(self.call(&path, StorageRequest::RemoveValue { path: path.as_str().to_owned(), value }).await?)
    }

    /// Saves `value` at `path` only if nothing is there, and returns whether it did (Redis's
    /// `HSETNX`, for a map's key: `insert_if_absent("online.alice", &true)`).
    pub async fn insert_if_absent<T: Serialize + ?Sized>(&self, path: &str, value: &T) -> Result<bool> {
        let inserted = argument(path, value)?;
        let path = Path::parse(path)?;
        let request = StorageRequest::InsertIfAbsent { path: path.as_str().to_owned(), value: inserted };
        match self::value(self.call(&path, request).await?)? {
            Some(Value::Bool(inserted)) => Ok(inserted),
            other => Err(Error::new(
                ErrorKind::Protocol,
                format!("insert_if_absent answered {other:?}, not a bool"),
            )),
        }
    }

    /// Reads the value or subtree at `path` and deletes it, in one step (Redis's `GETDEL`):
    /// of several workers taking the same path, one gets it.
    pub async fn take<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        let parsed = Path::parse(path)?;
        let taken =
            value(self.call(&parsed, StorageRequest::Take { path: parsed.as_str().to_owned() }).await?)?;
        taken.map(from_value).transpose().map_err(|e| e.with_context("path", excerpt(path)))
    }

    /// Runs the storage operation `operation` (registered on the primary with
    /// [`PrimaryBuilder::storage_operation`](crate::PrimaryBuilder::storage_operation)) on the
    /// value at `path`, in one step on the primary, and returns its reply.
    pub async fn apply<O: Operation>(&self, path: &str, operation: O) -> Result<O::Reply> {
        let path = Path::parse(path)?;
        let request = StorageRequest::Apply {
            path: path.as_str().to_owned(),
            operation: O::NAME.to_owned(),
            payload: to_payload(&operation)?,
        };
        match self.call(&path, request).await? {
            Reply::Command(reply) => from_payload(&reply).map_err(|e| e.with_context("operation", O::NAME)),
            other => Err(unexpected(other)),
        }
    }

    /// A live local copy of the branch at `path`: reads of it are reads of this process's memory,
    /// kept current by the primary (see [`Replica`] for what a reader sees). On the primary, it
    /// reads the storage itself.
    pub async fn replica(&self, path: &str) -> Result<Replica> {
        let path = Path::parse(path)?;
        match &self.access {
            Access::Local(storage) => Ok(Replica::local(Arc::clone(storage.core()), path)),
            Access::Remote(remote) => {
                // Registered before it is asked for: what the primary sends for it is kept.
                let replica = Replica::start(&remote.replicas, Arc::clone(&remote.link), path.clone());
                let request =
                    StorageRequest::Replicate { path: path.as_str().to_owned(), replica: replica.id() };
                let answered = remote.link.request(Request::Storage(request), remote.deadline).await;
                done(answered.map_err(|err| at_path(err, &path))?)?;
                // Its snapshot came before the answer: one that could not be sent failed it.
                replica.failure().map_or(Ok(replica), Err)
            }
        }
    }

    /// The paths written from now on at, above or below `path` (beyond the original: watching).
    /// Each item is the path of one write; re-read what you need. A watcher that falls behind
    /// gets the root path, meaning "anything may have changed". On a worker, the primary sends
    /// the changes for the rest of the connection.
    pub async fn watch(&self, path: &str) -> Result<EventStream<Path>> {
        let watched = Path::parse(path)?;
        let receiver = match &self.access {
            Access::Local(storage) => storage.changes(),
            Access::Remote(remote) => {
                // Subscribe before asking, so no change between the two is missed.
                let receiver = remote.changes.subscribe();
                let request = StorageRequest::Watch { path: watched.as_str().to_owned() };
                done(self.call(&watched, request).await?)?;
                receiver
            }
        };
        let all = subscribe(receiver, |_| Path::root());
        Ok(Box::pin(all.filter(move |written| futures::future::ready(on_one_branch(written, &watched)))))
    }

    /// Read-modify-write with a closure, for one-off changes: applies `f` to the current value
    /// and retries on a concurrent change, with a short random pause between attempts. `f`
    /// returning `None` deletes. Returns the value written.
    ///
    /// Each attempt is a compare-and-swap round trip, and concurrent updates of one key lose
    /// attempts to each other: for a hot key (a counter, a list, a set of names) use
    /// [`Storage::increment`], [`Storage::append`] or an [`Operation`] of your own, which run
    /// on the primary in one step.
    pub async fn update<T, F>(&self, path: &str, mut f: F) -> Result<Option<T>>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> Option<T>,
    {
        let mut current = self.retrieve_value(path).await?;
        for attempt in 0..UPDATE_ATTEMPTS {
            let typed =
                current.clone().map(from_value::<T>).transpose().map_err(|e| e.with_context("path", path))?;
            let next = f(typed);
            let next_value = next.as_ref().map(|v| argument(path, v)).transpose()?;
            match self.compare_and_swap_value(path, current, next_value).await? {
                Ok(()) => return Ok(next),
                Err(seen) => current = seen,
            }
            // Spread the next attempts of the writers that lost, so they stop colliding.
            let ceiling = UPDATE_MAX_BACKOFF.min(Duration::from_micros(50) * (1u32 << attempt.min(9)));
            let pause = rand::rng().random_range(Duration::ZERO..=ceiling);
            tokio::time::sleep(pause).await;
        }
        Err(Error::new(
            ErrorKind::Storage,
            format!(
                "update gave up after {UPDATE_ATTEMPTS} attempts lost to concurrent writers; use an atomic \
                 operation (increment, append, an Operation) for a hot path, or spread the writes over more paths"
            ),
        )
        .with_context("path", path))
    }
}
