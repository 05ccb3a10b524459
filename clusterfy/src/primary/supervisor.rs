//! The task that owns one worker: the driver of its [`Slot`](super::slot::Slot). It spawns the
//! worker's processes, accepts their connections, pings them, reaps them and keeps their timers;
//! what each of those means for the worker (a crash or not, a revival, a kill) is the slot's to
//! decide: this task tells it what happened and does what it answers.

use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clusterfy_core::command::PING_COMMAND;
use clusterfy_core::protocol::{CommandRequest, Destination, Request};
use clusterfy_core::transport::{Authentication, ENV_TOKEN, ENV_TRANSPORT, ENV_WORKER_ID, SpawnInfo};
use clusterfy_core::{Error, ErrorKind, Origin, Result};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use nix::sys::signal::Signal;
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};

use super::connect::{ConnectFailure, connect};
use super::inbound::PrimaryInbound;
use super::logs::Capture;
use super::options::{Heartbeat, WorkerOptions};
use super::slot::{Action, Input, Replacing, Timer};
use super::spawner;
use super::{Control, PrimaryInner};
use crate::env::{ENV_MAX_FRAME_LEN, ENV_NON_DUMPABLE, ENV_PARENT_PID, ENV_WORKER_NAME};
use crate::events::{ExitReason, WorkerRef};
use crate::link::{Link, LinkEnd};

/// Time to read what a worker wrote just before it exited.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// Adds a slot for worker `name` to the directory and starts its supervisor; returns once its first process
/// is spawned. A replacement (`replacing`) does not answer to its name until it takes over.
pub(crate) async fn fork(
    inner: &Arc<PrimaryInner>,
    name: &str,
    options: WorkerOptions,
    replacing: Option<Replacing>,
) -> Result<WorkerRef> {
    let (control, control_rx) = mpsc::unbounded_channel();
    // Checked and added under the lock that `Primary::shutdown` lists the workers under, so a
    // worker is either listed there or never started, and two forks cannot both take a name.
    let worker = inner.change(|d| d.add(name, options.clone(), control, replacing, Instant::now()))?;
    let (spawned_tx, spawned_rx) = oneshot::channel();
    tokio::spawn(supervise(Arc::clone(inner), worker.clone(), options, control_rx, spawned_tx));
    match spawned_rx.await {
        Ok(Ok(())) => Ok(worker),
        Ok(Err(err)) => {
            inner.change(|d| d.remove(worker.id));
            Err(err.with_context("worker", name))
        }
        Err(_) => {
            Err(Error::new(ErrorKind::InvalidState, "the worker's supervisor stopped before spawning it"))
        }
    }
}

/// Runs worker `worker` until it exits for good. `spawned` learns whether the first spawn worked.
pub(super) async fn supervise(
    inner: Arc<PrimaryInner>,
    worker: WorkerRef,
    options: WorkerOptions,
    mut control: mpsc::UnboundedReceiver<Control>,
    spawned: oneshot::Sender<Result<()>>,
) {
    let mut spawned = Some(spawned);
    loop {
        let mut actions = match run_process(&inner, &worker, &options, &mut control, &mut spawned).await {
            Ok(ended) => ended,
            Err(err) => match spawned.take() {
                // The first spawn failed: fork() reports it and removes the slot.
                Some(tx) => {
                    inner.apply(worker.id, Input::NeverSpawned);
                    inner.supervisor_ended(&worker);
                    return drop(tx.send(Err(err)));
                }
                None => inner.apply(worker.id, Input::SpawnFailed(err)),
            },
        };
        // Between two processes: the slot finishes, or revives after its backoff.
        loop {
            match next_step(actions) {
                Between::Revive(delay) => {
                    tokio::time::sleep(delay).await;
                    actions = inner.apply(worker.id, Input::TimerFired(Timer::Revive));
                }
                Between::Respawn => {
                    crate::metrics::restart(&worker.name);
                    break;
                }
                Between::Finish => return inner.supervisor_ended(&worker),
            }
        }
    }
}

/// What the slot said to do once a process ended.
enum Between {
    Revive(Duration),
    Respawn,
    Finish,
}

fn next_step(actions: Vec<Action>) -> Between {
    for action in actions {
        match action {
            Action::Arm(Timer::Revive, delay) => return Between::Revive(delay),
            Action::Respawn => return Between::Respawn,
            Action::Finish => return Between::Finish,
            other => tracing::debug!(?other, "no process to act on"),
        }
    }
    // The slot always says one of the three once a process ended; ending is the safe reading.
    Between::Finish
}

/// The timers a slot armed for its current process.
type Timers = FuturesUnordered<Pin<Box<dyn Future<Output = Timer> + Send>>>;

/// Does what the slot said for the current process: signals go through the reaper (see [`reap`]),
/// timers are armed here.
fn perform(actions: Vec<Action>, signal: &mpsc::UnboundedSender<Signal>, timers: &mut Timers) {
    for action in actions {
        match action {
            // A send fails only once the process was reaped: then there is nothing to signal.
            Action::Signal(sig) => drop(signal.send(sig)),
            Action::Arm(timer, after) => timers.push(Box::pin(async move {
                tokio::time::sleep(after).await;
                timer
            })),
            other => tracing::debug!(?other, "not an action for a running process"),
        }
    }
}

/// Spawns one process of the worker and drives it until it exits: its connection, its pings,
/// its timers, the signals asked for it. Returns what the slot says once it ended.
async fn run_process(
    inner: &Arc<PrimaryInner>,
    worker: &WorkerRef,
    options: &WorkerOptions,
    control: &mut mpsc::UnboundedReceiver<Control>,
    spawned: &mut Option<oneshot::Sender<Result<()>>>,
) -> Result<Vec<Action>> {
    let token = match inner.transport.authentication() {
        Authentication::Token => Some(new_token()),
        _ => None,
    };
    let mut command = build_command(inner, worker, options, token.as_deref())?;
    // Before the transport's own settings, which win where they overlap (see `Capture`).
    let capture = match options.capture_output {
        Some(capture) => capture,
        None => inner.control.get().is_some(),
    };
    let capture = if capture { Some(Capture::set_on(&mut command)?) } else { None };
    let mut info = SpawnInfo::new(worker.id, worker.name.clone());
    info.first_free_fd = inner.listeners.first_free_fd();
    info.stdin_free = plain_spawn(inner, options);
    let mut rendezvous = inner.transport.prepare(&info, &mut command).await?;
    // After the transport's mapping: see `SharedListeners::pass_to`.
    inner.listeners.pass_to(&mut command, &worker.name)?;
    let program = command.as_std().get_program().to_string_lossy().into_owned();
    let mut child = spawner::spawn(command).await?.map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("could not start worker program {program:?}: {e}; check the path and its permissions"),
        )
        .with_source(e)
    })?;
    rendezvous.attach(&mut child)?;
    if let Some(capture) = capture {
        capture.start(Arc::clone(&inner.logs), worker.name.clone())?;
    }
    // The process must pass the handshake within the ready timeout, counted from its spawn (a
    // large program on a cold cache may take a while before it calls connect). Recorded before
    // `fork` returns, so a `Primary::ready` called after it waits for this verdict; published
    // after.
    let connect_by = tokio::time::Instant::now() + inner.ready_timeout;
    let spawned_now = Input::Spawned { pid: child.id(), connect_by };
    let (actions, incarnation) = inner.change(|d| {
        let actions = d.handle(worker.id, spawned_now, Instant::now());
        (actions, d.get(worker.id).map_or(0, |s| s.incarnation()))
    });
    if let Some(tx) = spawned.take() {
        let _ = tx.send(Ok(()));
    }
    let (signal, signals) = mpsc::unbounded_channel();
    let (exit_tx, mut exit) = oneshot::channel();
    tokio::spawn(reap(child, signals, exit_tx));
    let mut timers = Timers::new();
    perform(inner.publish(actions), &signal, &mut timers);

    let mut connecting = Some(Box::pin(connect(inner, worker, rendezvous.as_mut(), token, connect_by)));
    let mut link: Option<Arc<Link>> = None;
    let mut reader = None;
    let mut heartbeat_due = None;
    let reason = loop {
        let actions = tokio::select! {
            connected = pending_on(&mut connecting), if connecting.is_some() => {
                connecting = None;
                match connected {
                    Ok((connected, unread)) => {
                        let actions = inner.apply(worker.id, Input::Connected(Arc::clone(&connected)));
                        // Read only now that the slot knows the connection: a Ready the worker
                        // sent at once is taken after it.
                        let handler = PrimaryInbound::new(Arc::clone(inner), worker.clone());
                        reader = Some(unread.spawn(Arc::new(handler)));
                        heartbeat_due = Some(Box::pin(heartbeat(Arc::clone(&connected), options.heartbeat)));
                        link = Some(connected);
                        actions
                    }
                    Err(failure) => {
                        let (error, published) = match failure {
                            ConnectFailure::Published(err) => (err, true),
                            ConnectFailure::New(err) => (Arc::new(err), false),
                        };
                        inner.apply(worker.id, Input::ConnectFailed { error, published })
                    }
                }
            }
            waited = pending_on(&mut heartbeat_due), if heartbeat_due.is_some() => {
                heartbeat_due = None;
                inner.apply(worker.id, Input::PingMissed { waited })
            }
            end = pending_on(&mut reader), if reader.is_some() => {
                (reader, heartbeat_due) = (None, None);
                inner.apply(worker.id, Input::LinkEnded(failure_of(end.ok())))
            }
            ended = &mut exit => break ended.unwrap_or(ExitReason::Code(-1)),
            Some(timer) = timers.next() => inner.apply(worker.id, Input::TimerFired(timer)),
            Some(Control::Signal(sig, to)) = control.recv() => {
                if to == incarnation {
                    let _ = signal.send(sig);
                }
                Vec::new()
            }
        };
        perform(actions, &signal, &mut timers);
    };
    if let Some(mut reader) = reader {
        // The process is dead, so its end of the stream is closed: what it wrote last (a final
        // status, a reply) is still buffered and is read before the EOF; the bound only guards
        // against a descendant that inherited the connection. How the link ended decides
        // whether this was a crash, whichever of the two ends the select above saw first.
        let end = match tokio::time::timeout(DRAIN_AFTER_EXIT, &mut reader).await {
            Ok(end) => end.ok(),
            Err(_) => {
                reader.abort();
                None
            }
        };
        inner.apply(worker.id, Input::LinkEnded(failure_of(end)));
    }
    if let Some(link) = link {
        // The process is gone: whatever was still in flight to it fails now.
        link.close();
    }
    Ok(inner.apply(worker.id, Input::Exited(reason)))
}

/// What `future` gives, or never anything while there is none (a branch the select guards).
async fn pending_on<F: Future + Unpin>(future: &mut Option<F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// The error that ended a connection, if one did.
fn failure_of(end: Option<LinkEnd>) -> Option<Error> {
    match end {
        Some(LinkEnd::Failed(err)) => Some(err),
        Some(LinkEnd::Eof) | None => None,
    }
}

fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn build_command(
    inner: &PrimaryInner,
    worker: &WorkerRef,
    options: &WorkerOptions,
    token: Option<&str>,
) -> Result<tokio::process::Command> {
    let (path, args) = match &options.program {
        Some(program) => (program.path.clone(), program.args.clone()),
        None => {
            let exe = std::env::current_exe()
                .map_err(|e| Error::io("finding the current executable to re-execute as a worker", e))?;
            (exe, std::env::args_os().skip(1).collect())
        }
    };
    let mut command = tokio::process::Command::new(&path);
    command
        .args(&args)
        .envs(options.env.iter().map(|(k, v)| (k, v)))
        .env(ENV_WORKER_ID, worker.id.to_string())
        .env(ENV_WORKER_NAME, &worker.name)
        .env(ENV_TRANSPORT, inner.transport.name())
        .env(ENV_MAX_FRAME_LEN, inner.max_frame_len.to_string())
        .stdin(Stdio::null())
        // Its own process group: a Ctrl-C in the terminal reaches only the primary, which then
        // shuts the workers down gracefully instead of all of them dying at once.
        .process_group(0)
        // No orphans even if the primary's runtime is dropped without a shutdown.
        .kill_on_drop(true);
    if let Some(token) = token {
        command.env(ENV_TOKEN, token);
    }
    if inner.non_dumpable {
        command.env(ENV_NON_DUMPABLE, "1");
    }
    if plain_spawn(inner, options) {
        // This program re-executed: it sets the parent-death signal itself, first thing in
        // connect. No pre_exec closure, so std spawns with posix_spawn (vfork) and not fork,
        // which copies the primary's page tables and makes it take copy-on-write faults.
        command.env(ENV_PARENT_PID, std::process::id().to_string());
    } else {
        // And none if the primary process dies: the kernel kills the child, whatever it runs.
        clusterfy_core::os::die_with_parent(&mut command);
    }
    Ok(command)
}

/// The worker re-executes this program (which links Clusterfy) and gets no shared listeners:
/// its spawn needs nothing run between fork and exec.
fn plain_spawn(inner: &PrimaryInner, options: &WorkerOptions) -> bool {
    options.program.is_none()
        && inner.listeners.first_free_fd() == clusterfy_core::transport::FIRST_INHERITED_FD
}

/// Pings the worker at the heartbeat's interval; resolves with the time waited when a ping went
/// unanswered past its timeout. Never resolves without a heartbeat or once the link is closed
/// (its end is reported by the reader).
async fn heartbeat(link: Arc<Link>, heartbeat: Option<Heartbeat>) -> Duration {
    let Some(Heartbeat { interval, timeout }) = heartbeat else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        let started = tokio::time::Instant::now();
        let ping = CommandRequest {
            name: PING_COMMAND.to_owned(),
            destination: Destination::Here,
            origin: Origin::Primary,
            payload: Vec::new(),
        };
        match tokio::time::timeout(timeout, link.request(Request::Command(ping), timeout)).await {
            Ok(Err(err)) if err.kind() == ErrorKind::Timeout => return started.elapsed(),
            Err(_) => return started.elapsed(),
            // The connection ended: its reader reports that.
            Ok(Err(err)) if matches!(err.kind(), ErrorKind::WorkerExited | ErrorKind::Closed) => {
                return std::future::pending().await;
            }
            // Any answer, an error included (a worker that predates the heartbeat does not
            // know the command), shows a responsive worker.
            Ok(_) => {}
        }
    }
}

/// Owns the child: reports its exit, and signals it on request. Signals go through here so that
/// none reaches a pid the system has already reused for another process.
async fn reap(
    mut child: tokio::process::Child,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    exit: oneshot::Sender<ExitReason>,
) {
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            Some(signal) = signals.recv() => match (signal, child.id()) {
                (Signal::SIGKILL, _) => drop(child.start_kill()),
                (signal, Some(pid)) => {
                    if let Err(err) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal) {
                        tracing::debug!(pid, %signal, error = %err, "signalling a worker failed");
                    }
                }
                (_, None) => {}
            },
        }
    };
    let reason = match status {
        Ok(status) => ExitReason::from_status(status),
        Err(err) => {
            tracing::error!(error = %err, "waiting for a worker process failed");
            ExitReason::Code(-1)
        }
    };
    let _ = exit.send(reason);
}
