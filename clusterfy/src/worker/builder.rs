//! [`WorkerBuilder`]: a worker's configuration, and its connection to the primary (the
//! environment the primary set, the transport it chose, the handshake).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clusterfy_core::codec::FrameDecoder;
use clusterfy_core::env::{ENV_TOKEN, ENV_TRANSPORT, WorkerSettings};
use clusterfy_core::protocol::{Hello, Message, PROTOCOL_VERSION};
use clusterfy_core::session::check_welcome;
use clusterfy_core::transport::Authentication;
use clusterfy_core::{Command, Error, ErrorKind, Result, Target, Transport, WorkerEnv, WorkerStatus};
use futures::FutureExt;
use tokio::sync::{broadcast, watch};

use super::inbound::WorkerInbound;
use super::shutdown::{ShutdownHook, ShutdownReason, ShutdownState, shut_down_when_primary_is_gone};
use super::{DEFAULT_WORKER_REQUEST_TIMEOUT, Worker, WorkerContext, WorkerInner};
use crate::events::{EVENT_BUFFER, WorkerRef};
use crate::handlers::CommandRegistry;
use crate::link::{Link, LinkBounds, read_first, write_single};
use crate::listen::keep_listeners_from_children;
use crate::storage::{RemoteStorage, ReplicaRegistry};

/// Builds a [`Worker`] and connects it.
pub struct WorkerBuilder {
    commands: CommandRegistry<WorkerContext>,
    hooks: Vec<ShutdownHook>,
    request_timeout: Duration,
    env: Option<WorkerEnv>,
    transport: Option<Arc<dyn Transport>>,
    manual_ready: bool,
}

// By hand: the shutdown hooks are closures, shown by their count.
impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("commands", &self.commands)
            .field("shutdown_hooks", &self.hooks.len())
            .field("request_timeout", &self.request_timeout)
            .field("env", &self.env)
            .field("transport", &self.transport)
            .field("manual_ready", &self.manual_ready)
            .finish()
    }
}

impl WorkerBuilder {
    pub(super) fn new() -> Self {
        WorkerBuilder {
            commands: CommandRegistry::new(Target::Worker),
            hooks: Vec::new(),
            request_timeout: DEFAULT_WORKER_REQUEST_TIMEOUT,
            env: None,
            transport: None,
            manual_ready: false,
        }
    }
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
    /// order added, within [`SHUTDOWN_HOOKS_TIMEOUT`](super::SHUTDOWN_HOOKS_TIMEOUT) together, beside the program's own code;
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
        let settings = WorkerSettings::from_env(&env)?;
        if let Some(parent) = settings.parent_pid {
            clusterfy_core::os::die_with_parent_now(parent)?;
        }
        if settings.non_dumpable {
            // Before the channel is adopted: from here on no process of this user may take it.
            crate::hardening::mark_non_dumpable()?;
        }
        keep_listeners_from_children(&settings.listeners);
        let (worker_id, max_frame_len) = (settings.worker_id, settings.max_frame_len);
        let transport = match self.transport.take() {
            Some(t) => t,
            None => match &settings.transport {
                Some(name) => transport_named(name)?,
                None => transport_named(env.require(ENV_TRANSPORT)?)?,
            },
        };
        let token = match (transport.authentication(), settings.token) {
            (Authentication::Token, Some(token)) => token,
            (Authentication::Token, None) => env.require(ENV_TOKEN).map(str::to_owned)?,
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
            LinkBounds::WORKER,
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
                listeners: settings.listeners,
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
