//! The worker side: a [`Worker`] connects to its primary ([`WorkerBuilder::connect`]), reports
//! its [`WorkerStatus`], uses the shared storage, sends commands and handles them (with a
//! [`WorkerContext`]), and shuts down when asked ([`ShutdownReason`]).

// Inside: connecting in `builder`, handling commands in `inbound`, the shutdown in `shutdown`.

mod builder;
mod inbound;
mod shutdown;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clusterfy_core::codec::{from_payload, to_payload};
use clusterfy_core::protocol::{CommandRequest, Destination, Notice, Reply, Request};
use clusterfy_core::{Command, Error, ErrorKind, Origin, Result, Target, WorkerId, WorkerSelector};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, watch};

pub use builder::WorkerBuilder;
/// The status a worker reports ([`Worker::set_status`]).
pub use clusterfy_core::WorkerStatus;
pub use shutdown::{SHUTDOWN_HOOKS_TIMEOUT, ShutdownReason};
use shutdown::{ShutdownHook, ShutdownState};

use crate::events::{EventStream, WorkerRef, subscribe};
use crate::handlers::{BroadcastReply, CommandRegistry, expect_target};
use crate::link::Link;
use crate::listen::{Listener, take_listener};
use crate::storage::{RemoteStorage, Storage};

/// Default deadline of a worker's requests.
pub const DEFAULT_WORKER_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Something that happened to this worker.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum WorkerEvent {
    /// A command arrived for this worker.
    Command {
        /// Who sent it.
        from: Origin,
        /// Its name.
        name: String,
    },
    /// The primary asked this worker to shut down: finish what it does, then return from `main`
    /// (see [`Worker::shutdown_requested`]).
    ShutdownRequested,
    /// This worker's status changed.
    Status(WorkerStatus),
    /// This subscriber fell behind and missed this many events.
    Lagged {
        /// How many events were dropped for this subscriber.
        missed: u64,
    },
}

/// The context a worker-side command handler gets.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    worker: Worker,
    origin: Origin,
}

impl WorkerContext {
    /// This worker, to reach storage or other processes from a handler.
    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    /// Who sent the command.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }
}

struct WorkerInner {
    me: WorkerRef,
    restarts: u32,
    link: Arc<Link>,
    status: Mutex<WorkerStatus>,
    commands: CommandRegistry<WorkerContext>,
    hooks: Mutex<Vec<ShutdownHook>>,
    events: broadcast::Sender<WorkerEvent>,
    shutdown: watch::Sender<ShutdownState>,
    /// Command handlers running now; [`Worker::exit`] waits for their replies.
    handlers: watch::Sender<usize>,
    /// The storage side of the connection: watches and replicas.
    storage: Arc<RemoteStorage>,
    request_timeout: Duration,
    /// The names of the shared listeners this process inherited, in descriptor order.
    listeners: Vec<String>,
    /// [`Worker::ready`] ran.
    announced_ready: std::sync::atomic::AtomicBool,
}

/// Handle of this worker process. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<WorkerInner>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("id", &self.id()).field("name", &self.name()).finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts configuring this worker.
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder::new()
    }

    /// Tells the primary that this worker is ready for work (status Idle). [`connect`] does it
    /// unless the builder asked for [`WorkerBuilder::manual_ready`]. Calling it again does
    /// nothing.
    ///
    /// [`connect`]: WorkerBuilder::connect
    pub async fn ready(&self) -> Result<()> {
        if self.inner.announced_ready.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        self.set_local_status(WorkerStatus::Idle);
        self.inner.link.notify(Notice::Ready).await
    }

    /// Takes the shared listener `name` that the primary bound with
    /// [`PrimaryBuilder::listen`](crate::PrimaryBuilder::listen) (cluster mode): a socket this
    /// worker accepts on, or, with [`Balance::Handover`](crate::listen::Balance::Handover), the
    /// connections the primary hands it. [`Listener::accept`] takes the next one either way.
    /// Each listener can be taken once per process. Fails with [`ErrorKind::NotFound`] naming
    /// the inherited listeners when there is none called `name`. Call it inside the runtime.
    ///
    /// To stop accepting (at shutdown), drop the listener: the other workers go on accepting
    /// (or are handed this one's connections not yet accepted), so no connection is refused.
    pub fn listener(&self, name: &str) -> Result<Listener> {
        take_listener(&self.inner.listeners, name)
    }

    /// [`Worker::listener`] for a TCP listener with a socket of its own: not for
    /// [`Balance::Handover`](crate::listen::Balance::Handover), whose connections come from
    /// [`Listener::accept`].
    pub fn tcp_listener(&self, name: &str) -> Result<tokio::net::TcpListener> {
        self.listener(name)?.into_tcp().map_err(|e| e.with_context("listener", name))
    }

    /// This worker's id (stable across revivals).
    pub fn id(&self) -> WorkerId {
        self.inner.me.id
    }

    /// This worker's name.
    pub fn name(&self) -> &str {
        &self.inner.me.name
    }

    /// How often this worker was revived before this process.
    pub fn restarts(&self) -> u32 {
        self.inner.restarts
    }

    /// The current status.
    pub fn status(&self) -> WorkerStatus {
        *self.lock_status()
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, WorkerStatus> {
        // A status is a plain value; a panic elsewhere cannot leave it half-written.
        self.inner.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_local_status(&self, status: WorkerStatus) -> WorkerStatus {
        let mut current = self.lock_status();
        let before = *current;
        *current = status;
        drop(current);
        if before != status {
            let _ = self.inner.events.send(WorkerEvent::Status(status));
        }
        before
    }

    /// Changes the status and tells the primary (the original's `changeCurrentWorkerStatus`).
    /// Set `Processing` while working and `Idle` when done; the primary's statistics show it.
    /// After a shutdown request the status stays `Stopping`: setting `Idle` then is accepted and
    /// changes nothing. It never ends the process.
    pub async fn set_status(&self, status: WorkerStatus) -> Result<()> {
        // Decided under the lock, so a shutdown request arriving at the same moment either sees
        // the new status or turns it Stopping first; never both are lost.
        let changed = {
            let mut current = self.lock_status();
            let before = *current;
            if before == WorkerStatus::Stopping && status == WorkerStatus::Idle {
                None
            } else if !matches!(
                status,
                WorkerStatus::Idle | WorkerStatus::Processing | WorkerStatus::Stopping
            ) || !before.can_become(status)
            {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    format!("cannot change status from {before} to {status}"),
                )
                .with_context("worker", &self.inner.me));
            } else {
                *current = status;
                Some(before != status)
            }
        };
        match changed {
            None | Some(false) => Ok(()),
            Some(true) => {
                let _ = self.inner.events.send(WorkerEvent::Status(status));
                self.inner.link.notify(Notice::Status(status)).await
            }
        }
    }

    /// Typed access to the shared storage on the primary.
    pub fn storage(&self) -> Storage {
        Storage::remote(Arc::clone(&self.inner.storage))
    }

    /// Saves `value` at the dotted `path` (the original's `saveToStorage`); see [`Storage::save`].
    pub async fn save<T: Serialize + ?Sized>(&self, path: &str, value: &T) -> Result<()> {
        self.storage().save(path, value).await
    }

    /// Reads the value at the dotted `path` (the original's `retrieveFromStorage`); see
    /// [`Storage::retrieve`].
    pub async fn retrieve<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        self.storage().retrieve(path).await
    }

    async fn command(&self, destination: Destination, name: &'static str, payload: Vec<u8>) -> Result<Reply> {
        let request = CommandRequest { name: name.to_owned(), destination, origin: Origin::Primary, payload };
        self.inner.link.request(Request::Command(request), self.inner.request_timeout).await
    }

    /// Runs command `C` on the primary (the original's `runIPCCommand` with target primary).
    pub async fn run_on_primary<C: Command>(&self, command: C) -> Result<C::Reply> {
        expect_target::<C>(Target::Primary)?;
        let reply = self.command(Destination::Primary, C::NAME, to_payload(&command)?).await?;
        decode_single::<C>(reply)
    }

    /// Runs command `C` on another worker, by id or name, routed through the primary.
    pub async fn run<C: Command>(&self, worker: impl Into<WorkerSelector>, command: C) -> Result<C::Reply> {
        expect_target::<C>(Target::Worker)?;
        let reply = self.command(Destination::Worker(worker.into()), C::NAME, to_payload(&command)?).await?;
        decode_single::<C>(reply)
    }

    /// Runs command `C` on every connected worker (this one included) and gathers every answer.
    pub async fn broadcast<C: Command>(&self, command: C) -> Result<Vec<BroadcastReply<C::Reply>>> {
        expect_target::<C>(Target::Worker)?;
        match self.command(Destination::AllWorkers, C::NAME, to_payload(&command)?).await? {
            Reply::Broadcast(entries) => Ok(entries
                .into_iter()
                .map(|entry| BroadcastReply {
                    worker: WorkerRef { id: entry.worker_id, name: entry.name },
                    result: entry
                        .result
                        .map_err(Error::from)
                        .and_then(|p| from_payload(&p).map_err(|e| e.with_context("command", C::NAME))),
                })
                .collect()),
            other => {
                Err(Error::new(ErrorKind::Protocol, format!("unexpected reply to a broadcast: {other:?}")))
            }
        }
    }

    /// This worker's events.
    pub fn events(&self) -> EventStream<WorkerEvent> {
        subscribe(self.inner.events.subscribe(), |missed| WorkerEvent::Lagged { missed })
    }
}

fn decode_single<C: Command>(reply: Reply) -> Result<C::Reply> {
    match reply {
        Reply::Command(payload) => from_payload(&payload).map_err(|e| e.with_context("command", C::NAME)),
        other => Err(Error::new(ErrorKind::Protocol, format!("unexpected reply to a command: {other:?}"))
            .with_context("command", C::NAME)),
    }
}
