//! The worker side: connect to the primary, report status, use the storage, send and handle
//! commands, and shut down when asked.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clusterfy_core::codec::{DEFAULT_MAX_FRAME_LEN, FrameDecoder, from_payload, to_payload};
use clusterfy_core::command::PING_COMMAND;
use clusterfy_core::protocol::{
    CommandRequest, Destination, Hello, Message, Notice, PROTOCOL_VERSION, Reply, Request, RequestId,
    ShutdownAck,
};
use clusterfy_core::session::check_welcome;
use clusterfy_core::transport::{Authentication, ENV_TOKEN, ENV_TRANSPORT, ENV_WORKER_ID};
use clusterfy_core::{
    Command, Error, ErrorKind, Origin, Result, Target, Transport, WorkerEnv, WorkerId, WorkerSelector,
    WorkerStatus,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, watch};

use crate::commands::{BroadcastReply, CommandRegistry, expect_target};
use crate::events::{EVENT_BUFFER, EventStream, WorkerRef, subscribe};
use crate::link::{Inbound, Link, LinkEnd, read_first, write_single};
use crate::listen::{
    ENV_LISTEN_FDNAMES, ENV_LISTEN_FDS, Listener, keep_listeners_from_children, take_listener,
};
use crate::storage::{RemoteStorage, ReplicaRegistry, Storage};
use crate::{ENV_MAX_FRAME_LEN, ENV_NON_DUMPABLE, ENV_PARENT_PID};

/// Default deadline of a worker's requests.
pub const DEFAULT_WORKER_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time shutdown hooks may take together; after it the shutdown goes on without them.
pub const SHUTDOWN_HOOKS_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time [`Worker::exit`] waits for running command handlers to reply.
const EXIT_WAITS_FOR_HANDLERS: Duration = Duration::from_secs(10);

tokio::task_local! {
    /// Set while a command handler runs, so [`Worker::exit`] knows it must return for the
    /// handler's reply to go out.
    static IN_HANDLER: ();
}

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
#[derive(Clone)]
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

/// Why a worker is shutting down, as told to its shutdown hooks.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownReason {
    /// The primary asked (`cy_shutdown`, from `Primary::shutdown_worker` or a cluster shutdown).
    Requested,
    /// The connection to the primary ended: the primary exited or died.
    PrimaryGone,
    /// The worker program called [`Worker::exit`] with this code.
    Exit(i32),
}

type ShutdownHook = Box<dyn FnOnce(ShutdownReason) -> BoxFuture<'static, ()> + Send>;

/// Builds a [`Worker`] and connects it.
pub struct WorkerBuilder {
    commands: CommandRegistry<WorkerContext>,
    hooks: Vec<ShutdownHook>,
    request_timeout: Duration,
    env: Option<WorkerEnv>,
    transport: Option<Arc<dyn Transport>>,
    manual_ready: bool,
}

impl WorkerBuilder {
    /// Tells the primary that this worker is ready only when the program calls
    /// [`Worker::ready`], not as soon as it is connected: for a program that must take its
    /// listener, open its database or load its configuration first. [`Primary::ready`] and a
    /// rolling reload wait for it, so a new version that fails while it starts stops the reload
    /// before any old worker is stopped.
    ///
    /// [`Primary::ready`]: crate::Primary::ready
    #[must_use]
    pub fn manual_ready(mut self) -> Self {
        self.manual_ready = true;
        self
    }

    /// Registers the handler of a command that the primary or other workers send to this
    /// worker (the original's `registerIPCCommand` on a worker).
    #[must_use]
    pub fn command<C, F, Fut>(mut self, handler: F) -> Self
    where
        C: Command,
        F: Fn(C, WorkerContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C::Reply>> + Send + 'static,
    {
        self.commands.register::<C, F, Fut>(handler);
        self
    }

    /// Adds a hook run once when the shutdown begins: on a shutdown request, on [`Worker::exit`]
    /// or when the primary is gone (the original's `registerShutdownMethod`). Hooks run in the
    /// order added, within [`SHUTDOWN_HOOKS_TIMEOUT`] together, beside the program's own code;
    /// [`Worker::shutdown_requested`] resolves once they are done. They do not end the process.
    #[must_use]
    pub fn on_shutdown<F, Fut>(mut self, hook: F) -> Self
    where
        F: FnOnce(ShutdownReason) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks.push(Box::new(move |reason| hook(reason).boxed()));
        self
    }

    /// Deadline of this worker's requests (default [`DEFAULT_WORKER_REQUEST_TIMEOUT`]).
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Uses this transport instead of the one named by `CLUSTERFY_TRANSPORT` (for transports
    /// the facade does not know).
    #[must_use]
    pub fn transport(mut self, transport: impl Transport) -> Self {
        self.transport = Some(Arc::new(transport));
        self
    }

    /// Reads the connection settings from `env` instead of the process environment.
    #[must_use]
    pub fn env(mut self, env: WorkerEnv) -> Self {
        self.env = Some(env);
        self
    }

    /// Connects to the primary and waits for this worker's metadata (the original's
    /// `initAsWorker`). Afterwards the worker is ready (status Idle).
    pub async fn connect(mut self) -> Result<Worker> {
        if let Some(err) = self.commands.take_error() {
            return Err(err);
        }
        let env = self.env.take().unwrap_or_else(WorkerEnv::from_process);
        if let Some(parent) = env.get(ENV_PARENT_PID) {
            let parent = parent.parse::<u32>().map_err(|_| {
                Error::new(
                    ErrorKind::Config,
                    format!("{ENV_PARENT_PID} must be a process id, not {parent:?}"),
                )
            })?;
            clusterfy_core::os::die_with_parent_now(parent)?;
        }
        if env.get(ENV_NON_DUMPABLE) == Some("1") {
            // Before the channel is adopted: from here on no process of this user may take it.
            crate::hardening::mark_non_dumpable()?;
        }
        let listeners = WorkerEnv::from_pairs(
            [ENV_LISTEN_FDS, ENV_LISTEN_FDNAMES]
                .into_iter()
                .filter_map(|k| env.get(k).map(|v| (k, v.to_owned()))),
        );
        keep_listeners_from_children(&listeners);
        let worker_id = parse_env::<u64>(&env, ENV_WORKER_ID).map(WorkerId)?;
        let max_frame_len = match env.get(ENV_MAX_FRAME_LEN) {
            Some(_) => parse_env::<usize>(&env, ENV_MAX_FRAME_LEN)?,
            None => DEFAULT_MAX_FRAME_LEN,
        };
        let transport = match self.transport.take() {
            Some(t) => t,
            None => transport_named(env.require(ENV_TRANSPORT)?)?,
        };
        let token = match transport.authentication() {
            Authentication::Token => env.require(ENV_TOKEN)?.to_owned(),
            // The channel is the proof: nobody else holds it.
            _ => String::new(),
        };
        let mut connection = transport.connect(&env).await?;
        let hello = Message::Hello(Hello { protocol_version: PROTOCOL_VERSION, worker_id, token });
        write_single(&mut connection.writer, &hello, max_frame_len).await?;
        let mut decoder = FrameDecoder::new(max_frame_len);
        let first =
            tokio::time::timeout(self.request_timeout, read_first(&mut connection.reader, &mut decoder))
                .await
                .map_err(|_| {
                    Error::new(ErrorKind::Timeout, "the primary did not answer the handshake in time")
                })??;
        let welcome = check_welcome(first, worker_id)?;
        let (link, reader) = Link::new(
            "the primary".to_owned(),
            connection.reader,
            connection.writer,
            decoder,
            max_frame_len,
            ErrorKind::Closed,
        );
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (shutdown, _) = watch::channel(ShutdownState::default());
        let worker = Worker {
            inner: Arc::new(WorkerInner {
                me: WorkerRef { id: worker_id, name: welcome.name },
                restarts: welcome.restarts,
                link: Arc::clone(&link),
                status: Mutex::new(WorkerStatus::Loaded),
                commands: self.commands,
                hooks: Mutex::new(self.hooks),
                events,
                shutdown,
                handlers: watch::channel(0).0,
                storage: Arc::new(RemoteStorage {
                    link: Arc::clone(&link),
                    deadline: self.request_timeout,
                    changes: broadcast::channel(EVENT_BUFFER).0,
                    replicas: ReplicaRegistry::default(),
                }),
                request_timeout: self.request_timeout,
                listeners,
                announced_ready: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        let reader = reader.spawn(Arc::new(WorkerInbound { worker: worker.clone() }));
        tokio::spawn(shut_down_when_primary_is_gone(worker.clone(), reader));
        if !self.manual_ready {
            worker.ready().await?;
        }
        Ok(worker)
    }
}

fn parse_env<T: std::str::FromStr>(env: &WorkerEnv, key: &str) -> Result<T> {
    let raw = env.require(key)?;
    raw.parse().map_err(|_| {
        Error::new(ErrorKind::Config, format!("environment variable {key} has the malformed value {raw:?}"))
    })
}

fn transport_named(name: &str) -> Result<Arc<dyn Transport>> {
    match name {
        #[cfg(feature = "transport-uds")]
        "uds" => Ok(Arc::new(clusterfy_transport_uds::UdsTransport::new())),
        #[cfg(feature = "transport-stdio")]
        "stdio" => Ok(Arc::new(clusterfy_transport_stdio::StdioTransport::new())),
        other => Err(Error::new(
            ErrorKind::Config,
            format!(
                "the primary chose transport {other:?}, which this worker binary does not include; enable the \
                 matching clusterfy feature or pass it with WorkerBuilder::transport"
            ),
        )),
    }
}

async fn shut_down_when_primary_is_gone(worker: Worker, reader: tokio::task::JoinHandle<LinkEnd>) {
    let end = reader.await;
    tracing::warn!(worker = %worker.inner.me, end = ?end, "connection to the primary ended; shutting down");
    worker.inner.storage.replicas.close_all();
    worker.set_local_status(WorkerStatus::Stopping);
    worker.begin_shutdown(ShutdownReason::PrimaryGone);
}

/// Where this worker's shutdown stands.
#[derive(Debug, Clone, Copy, Default)]
struct ShutdownState {
    /// Why it began; `None` while the worker runs normally.
    reason: Option<ShutdownReason>,
    /// The shutdown hooks have run (or timed out).
    hooks_done: bool,
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
    /// `LISTEN_FDS` and `LISTEN_FDNAMES`: the shared listeners this process inherited.
    listeners: WorkerEnv,
    /// [`Worker::ready`] ran.
    announced_ready: std::sync::atomic::AtomicBool,
}

/// Handle of this worker process. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<WorkerInner>,
}

impl Worker {
    /// Starts configuring this worker.
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder {
            commands: CommandRegistry::new(Target::Worker),
            hooks: Vec::new(),
            request_timeout: DEFAULT_WORKER_REQUEST_TIMEOUT,
            env: None,
            transport: None,
            manual_ready: false,
        }
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
    /// [`PrimaryBuilder::listen`](crate::PrimaryBuilder::listen) and every worker inherits
    /// (cluster mode): the kernel hands each incoming connection to one of the workers accepting
    /// on it. Each listener can be taken once per process. Fails with [`ErrorKind::NotFound`]
    /// naming the inherited listeners when there is none called `name`. Call it inside the
    /// runtime.
    ///
    /// To stop accepting (at shutdown), drop the listener: the other workers go on accepting on
    /// the same socket, so no connection is refused.
    pub fn listener(&self, name: &str) -> Result<Listener> {
        take_listener(&self.inner.listeners, name)
    }

    /// [`Worker::listener`] for a TCP listener.
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

    /// Whether this worker's shutdown has begun: the primary asked, the primary is gone, or
    /// [`Worker::exit`] was called.
    pub fn is_shutdown_requested(&self) -> bool {
        self.inner.shutdown.borrow().reason.is_some()
    }

    /// Why this worker's shutdown began, once it has.
    pub fn shutdown_reason(&self) -> Option<ShutdownReason> {
        self.inner.shutdown.borrow().reason
    }

    /// Resolves once this worker's shutdown has begun (the primary asked, or the primary is gone)
    /// and its shutdown hooks have run. Return from `main` then: the process ends with every
    /// destructor run, and the primary sees a clean exit. A worker that does not end within the
    /// primary's grace period gets its stop signal (SIGTERM), then SIGKILL. After [`Worker::exit`] it never resolves: that call
    /// ends the process with its own code.
    pub async fn shutdown_requested(&self) {
        self.wait_shutdown(|state| {
            state.hooks_done && !matches!(state.reason, Some(ShutdownReason::Exit(_)))
        })
        .await;
    }

    async fn wait_shutdown(&self, until: impl FnMut(&ShutdownState) -> bool) {
        let mut rx = self.inner.shutdown.subscribe();
        // The sender lives as long as `self`, so this ends only when `until` holds.
        let _ = rx.wait_for(until).await;
    }

    /// Begins the shutdown for `reason` unless it has begun already: runs the hooks in a task
    /// of their own, then wakes [`Worker::shutdown_requested`].
    fn begin_shutdown(&self, reason: ShutdownReason) {
        let first = self.inner.shutdown.send_if_modified(|state| {
            let first = state.reason.is_none();
            if first {
                state.reason = Some(reason);
            }
            first
        });
        if first {
            let worker = self.clone();
            tokio::spawn(async move {
                worker.run_hooks(reason).await;
                worker.inner.shutdown.send_modify(|state| state.hooks_done = true);
            });
        }
    }

    async fn run_hooks(&self, reason: ShutdownReason) {
        let hooks: Vec<ShutdownHook> =
            std::mem::take(&mut *self.inner.hooks.lock().unwrap_or_else(|p| p.into_inner()));
        let all = async {
            for hook in hooks {
                if std::panic::AssertUnwindSafe(hook(reason)).catch_unwind().await.is_err() {
                    tracing::error!("a shutdown hook panicked");
                }
            }
        };
        if tokio::time::timeout(SHUTDOWN_HOOKS_TIMEOUT, all).await.is_err() {
            tracing::warn!(
                "shutdown hooks did not finish within {SHUTDOWN_HOOKS_TIMEOUT:?}; going on without them"
            );
        }
    }

    /// Ends this worker process with `code` (the original's `exit`): runs the shutdown hooks
    /// (unless they ran already), waits until every running command handler has replied, tells
    /// the primary, and exits.
    ///
    /// Called from a command handler, it returns at once so the handler can finish: the caller
    /// of that command still gets its reply, and the process exits right after. Called anywhere
    /// else, it does not return.
    pub async fn exit(&self, code: i32) {
        let worker = self.clone();
        tokio::spawn(async move { worker.finish(code).await });
        if IN_HANDLER.try_with(|()| ()).is_err() {
            std::future::pending::<()>().await;
        }
    }

    async fn finish(&self, code: i32) -> ! {
        self.begin_shutdown(ShutdownReason::Exit(code));
        self.wait_shutdown(|state| state.hooks_done).await;
        let mut handlers = self.inner.handlers.subscribe();
        if tokio::time::timeout(EXIT_WAITS_FOR_HANDLERS, handlers.wait_for(|&running| running == 0))
            .await
            .is_err()
        {
            tracing::warn!(
                "command handlers still running after {EXIT_WAITS_FOR_HANDLERS:?}; exiting anyway"
            );
        }
        self.set_local_status(WorkerStatus::Stopping);
        let link = &self.inner.link;
        // Best effort: the primary learns of the exit from the process anyway.
        let _ = link.notify(Notice::Status(WorkerStatus::Stopping)).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), link.flush()).await;
        std::process::exit(code)
    }
}

fn decode_single<C: Command>(reply: Reply) -> Result<C::Reply> {
    match reply {
        Reply::Command(payload) => from_payload(&payload).map_err(|e| e.with_context("command", C::NAME)),
        other => Err(Error::new(ErrorKind::Protocol, format!("unexpected reply to a command: {other:?}"))
            .with_context("command", C::NAME)),
    }
}

struct WorkerInbound {
    worker: Worker,
}

impl WorkerInbound {
    async fn handle(&self, link: &Link, id: RequestId, body: Request) {
        let worker = &self.worker;
        let result = match body {
            Request::Command(command) => {
                let _ = worker
                    .inner
                    .events
                    .send(WorkerEvent::Command { from: command.origin.clone(), name: command.name.clone() });
                let ctx = WorkerContext { worker: worker.clone(), origin: command.origin };
                worker.inner.commands.run(&command.name, command.payload, ctx).await.map(Reply::Command)
            }
            Request::Shutdown => {
                if worker.set_local_status(WorkerStatus::Stopping) != WorkerStatus::Stopping {
                    let _ = link.notify(Notice::Status(WorkerStatus::Stopping)).await;
                }
                let _ = worker.inner.events.send(WorkerEvent::ShutdownRequested);
                // The process ends when the program returns (or calls `exit`), never from here.
                let _ = link.reply(id, Ok(Reply::Shutdown(ShutdownAck::Stopping))).await;
                worker.begin_shutdown(ShutdownReason::Requested);
                return;
            }
            Request::Storage(_) => Err(Error::new(
                ErrorKind::InvalidInput,
                "storage requests go to the primary, which owns the storage; a worker holds none",
            )),
        };
        let _ = link.reply(id, result).await;
    }
}

impl Inbound for WorkerInbound {
    fn on_request(self: Arc<Self>, link: &Arc<Link>, id: RequestId, body: Request) {
        if let Request::Command(command) = &body
            && command.name == PING_COMMAND
        {
            // Answered by the reader itself: a worker whose runtime is blocked stays silent.
            return link.reply_soon(id, Ok(Reply::Command(Vec::new())));
        }
        let link = Arc::clone(link);
        let running = HandlerRunning::start(&self.worker.inner.handlers);
        tokio::spawn(IN_HANDLER.scope((), async move {
            self.handle(&link, id, body).await;
            drop(running);
        }));
    }

    fn on_notice(&self, _: &Arc<Link>, notice: Notice) {
        let storage = &self.worker.inner.storage;
        let mut notice = Some(notice);
        if storage.replicas.on_notice(&mut notice) {
            return;
        }
        let Some(notice) = notice else { return };
        match notice {
            Notice::Error(err) => tracing::error!(error = %Error::from(err), "the primary reported an error"),
            Notice::StorageChanged { path } => match clusterfy_core::Path::parse(&path) {
                // Nobody watching is fine.
                Ok(path) => drop(storage.changes.send(path)),
                Err(err) => tracing::warn!(error = %err, "the primary reported a change at a malformed path"),
            },
            other => tracing::debug!(notice = ?other, "ignoring a notice meant for the primary"),
        }
    }
}

/// Counts one running request handler for as long as it lives (its reply is queued by then).
struct HandlerRunning(watch::Sender<usize>);

impl HandlerRunning {
    fn start(count: &watch::Sender<usize>) -> Self {
        count.send_modify(|n| *n += 1);
        HandlerRunning(count.clone())
    }
}

impl Drop for HandlerRunning {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}
