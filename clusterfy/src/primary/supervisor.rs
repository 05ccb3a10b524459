//! The task that owns one worker: spawns its process, completes the connection, watches it, and
//! revives it after a crash as its restart policy says.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clusterfy_core::codec::{FrameDecoder, HEADER_LEN};
use clusterfy_core::command::PING_COMMAND;
use clusterfy_core::protocol::{
    CommandRequest, Destination, Message, Notice, PROTOCOL_VERSION, Request, Welcome,
};
use clusterfy_core::session::PrimaryHandshake;
use clusterfy_core::transport::{
    Authentication, ENV_TOKEN, ENV_TRANSPORT, ENV_WORKER_ID, Rendezvous, SpawnInfo,
};
use clusterfy_core::{Error, ErrorKind, Origin, Result, WireError, WorkerStatus};
use nix::sys::signal::Signal;
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::inbound::PrimaryInbound;
use super::options::{Heartbeat, WorkerOptions};
use super::restart::RestartDecision;
use super::spawner;
use super::{Control, PrimaryInner, WorkerState};
use crate::events::{Event, ExitReason, GiveUpCause, WorkerRef};
use crate::link::{Link, LinkEnd, read_first, write_single};
use crate::{ENV_MAX_FRAME_LEN, ENV_NON_DUMPABLE, ENV_PARENT_PID, ENV_WORKER_NAME};

/// Time to read what a worker wrote just before it exited.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);
/// Largest frame an unauthenticated connection may send (a `Hello` is well below 1 KiB).
const HANDSHAKE_MAX_FRAME_LEN: usize = 4096;
/// Time a worker whose connection ended has to exit by itself before it is killed: a worker
/// without its connection can do nothing useful.
const DISCONNECTED_GRACE: Duration = Duration::from_secs(2);

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
        let outcome = run_once(&inner, &worker, &options, &mut control, &mut spawned).await;
        let mut link_failed = false;
        let reason = match outcome {
            Ok(end) => {
                link_failed = end.link_failed;
                Some(end.reason)
            }
            Err(err) => {
                if let Some(tx) = spawned.take() {
                    // The first spawn failed: fork() reports it and removes the slot.
                    let _ = tx.send(Err(err));
                    return;
                }
                inner.emit(Event::Error { worker: Some(worker.clone()), error: Arc::new(err) });
                None
            }
        };
        // A worker whose connection broke ends its program cleanly, but it did not mean to go.
        let crashed = link_failed || reason.is_none_or(|r| !r.is_success());
        let next = if let Some(stopped) = expected_exit(&inner, &worker) {
            stopped
        } else if !crashed {
            WorkerState::Exited
        } else {
            let decision = options.restart.as_ref().and_then(|policy| {
                inner.update_slot(worker.id, |s| s.history.on_restart_needed(policy, Instant::now()))
            });
            match decision {
                None => WorkerState::Exited,
                Some(RestartDecision::GiveUp) => WorkerState::GaveUp,
                Some(RestartDecision::RestartAfter(delay)) => {
                    record_exit(&inner, &worker, reason, WorkerState::Restarting);
                    tokio::time::sleep(delay).await;
                    if let Some(stopped) = expected_exit(&inner, &worker) {
                        inner.update_slot(worker.id, |s| s.state = stopped);
                        return;
                    }
                    let restarts = inner.update_slot(worker.id, |s| {
                        s.restarts += 1;
                        s.restarts
                    });
                    crate::metrics::restart(&worker.name);
                    inner.emit(Event::Revived { worker: worker.clone(), restarts: restarts.unwrap_or(0) });
                    continue;
                }
            }
        };
        record_exit(&inner, &worker, reason, next);
        if next == WorkerState::GaveUp {
            let restarts = inner.slots().get(&worker.id).map_or(0, |s| s.restarts);
            inner.emit(Event::GaveUp { worker: worker.clone(), restarts, cause: GiveUpCause::Crashes });
        }
        return;
    }
}

/// The state a worker that was asked to stop (or whose cluster shuts down) ends in, or `None`
/// when its exit was not expected.
fn expected_exit(inner: &PrimaryInner, worker: &WorkerRef) -> Option<WorkerState> {
    let asked = match inner.slots().get(&worker.id) {
        None => Some(WorkerState::Stopped),
        Some(slot) => slot.stop_requested.then_some(slot.stop_as),
    };
    let shutting_down = inner.shutting_down.load(std::sync::atomic::Ordering::SeqCst);
    asked.or(shutting_down.then_some(WorkerState::Stopped))
}

/// Records that the process ended, with the state supervision goes to, in one update so no
/// waiter sees an in-between state.
fn record_exit(inner: &PrimaryInner, worker: &WorkerRef, reason: Option<ExitReason>, state: WorkerState) {
    inner.update_slot(worker.id, |s| {
        s.state = state;
        s.pid = None;
        s.link = None;
        if reason.is_some() {
            s.last_exit = reason;
        }
    });
    // Published after the record, so a subscriber that reacts by asking `workers()` sees it.
    if let Some(reason) = reason {
        inner.emit(Event::Exit { worker: worker.clone(), reason });
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

/// How one process of a worker ended.
struct ProcessEnd {
    reason: ExitReason,
    /// Its connection was ended by an error (a protocol violation, a read error), not by the
    /// worker closing it cleanly.
    link_failed: bool,
}

impl From<ExitReason> for ProcessEnd {
    fn from(reason: ExitReason) -> Self {
        ProcessEnd { reason, link_failed: false }
    }
}

/// Spawns one process of the worker and runs it until it exits.
async fn run_once(
    inner: &Arc<PrimaryInner>,
    worker: &WorkerRef,
    options: &WorkerOptions,
    control: &mut mpsc::UnboundedReceiver<Control>,
    spawned: &mut Option<oneshot::Sender<Result<()>>>,
) -> Result<ProcessEnd> {
    let token = match inner.transport.authentication() {
        Authentication::Token => Some(new_token()),
        _ => None,
    };
    let mut command = build_command(inner, worker, options, token.as_deref())?;
    let mut info = SpawnInfo::new(worker.id, worker.name.clone());
    info.first_free_fd = inner.listeners.first_free_fd();
    info.stdin_free = plain_spawn(inner, options);
    let mut rendezvous = inner.transport.prepare(&info, &mut command).await?;
    // After the transport's mapping: see `SharedListeners::pass_to`.
    inner.listeners.pass_to(&mut command)?;
    let program = command.as_std().get_program().to_string_lossy().into_owned();
    let mut child = spawner::spawn(command).await?.map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("could not start worker program {program:?}: {e}; check the path and its permissions"),
        )
        .with_source(e)
    })?;
    rendezvous.attach(&mut child)?;
    let pid = child.id();
    // Connect: the process must pass the handshake within the ready timeout, counted from its
    // spawn (a large program on a cold cache may take a while before it calls connect). Set
    // before `fork` returns, so a `Primary::ready` called after it waits for this verdict.
    let deadline = tokio::time::Instant::now() + inner.ready_timeout;
    let spawned_now = inner.update_slot(worker.id, |s| {
        s.connect_by = Some(deadline);
        s.pid = pid;
        s.incarnation += 1;
        s.state = WorkerState::Starting;
        s.status = WorkerStatus::Initializing;
        s.started = Instant::now();
        s.link = None;
        s.connect_failure = None;
        s.watches.clear();
        (!s.stop_requested, s.incarnation)
    });
    let (still_wanted, incarnation) =
        spawned_now.map_or((false, 0), |(wanted, incarnation)| (wanted, incarnation));
    if let Some(tx) = spawned.take() {
        let _ = tx.send(Ok(()));
    }
    inner.emit(Event::Forked { worker: worker.clone(), pid: pid.unwrap_or(0) });

    let (signal_tx, signal_rx) = mpsc::unbounded_channel();
    let (exit_tx, mut exit_rx) = oneshot::channel();
    tokio::spawn(reap(child, signal_rx, exit_tx));
    // A send fails only once the process was reaped: then there is nothing left to signal.
    let signal_now = |signal: Signal| {
        let _ = signal_tx.send(signal);
    };
    let kill_now = || signal_now(Signal::SIGKILL);
    // Stopped (or its slot removed) while it was being spawned: it must not run unseen.
    if !still_wanted || inner.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
        kill_now();
        return Ok(wait_exit(&mut exit_rx).await.into());
    }

    let connecting = connect(inner, worker, rendezvous.as_mut(), token, deadline);
    tokio::pin!(connecting);
    let (link, mut reader) = loop {
        tokio::select! {
            connected = &mut connecting => match connected {
                Ok(pair) => break pair,
                Err(failure) => {
                    connect_failed(inner, worker, failure);
                    kill_now();
                    return Ok(wait_exit(&mut exit_rx).await.into());
                }
            },
            exit = &mut exit_rx => return Ok(exit.unwrap_or(ExitReason::Code(-1)).into()),
            Some(Control::Signal(signal, to)) = control.recv() => if to == incarnation { signal_now(signal) },
        }
    };
    inner.update_slot(worker.id, |s| {
        s.link = Some(Arc::clone(&link));
        s.state = WorkerState::Connected;
        s.status = WorkerStatus::Loaded;
    });
    inner.emit(Event::Online { worker: worker.clone() });

    let mut reader_done = false;
    let mut link_failed = false;
    let heartbeat = heartbeat(Arc::clone(&link), options.heartbeat);
    tokio::pin!(heartbeat);
    let mut hung = false;
    let reason = loop {
        tokio::select! {
            waited = &mut heartbeat, if !hung && !reader_done => {
                hung = true;
                inner.emit(Event::Unresponsive { worker: worker.clone(), waited });
                tracing::warn!(worker = %worker, ?waited, "worker does not answer pings: killing it");
                kill_now();
            }
            end = &mut reader, if !reader_done => {
                reader_done = true;
                inner.update_slot(worker.id, |s| s.link = None);
                link_failed = report_link_end(inner, worker, end.ok());
                match tokio::time::timeout(DISCONNECTED_GRACE, &mut exit_rx).await {
                    Ok(exit) => break exit.unwrap_or(ExitReason::Code(-1)),
                    Err(_) => kill_now(),
                }
            }
            exit = &mut exit_rx => break exit.unwrap_or(ExitReason::Code(-1)),
            Some(Control::Signal(signal, to)) = control.recv() => if to == incarnation { signal_now(signal) },
        }
    };
    if !reader_done {
        // The process is dead, so its end of the stream is closed: what it wrote last (a final
        // status, a reply) is still buffered and is read before the EOF; the bound only guards
        // against a descendant that inherited the connection.
        let end = match tokio::time::timeout(DRAIN_AFTER_EXIT, &mut reader).await {
            Ok(end) => end.ok(),
            Err(_) => {
                reader.abort();
                None
            }
        };
        // How the link ended decides whether this was a crash, whichever of the two the
        // select above saw first.
        link_failed = report_link_end(inner, worker, end);
    }
    // The process is gone: whatever was still in flight to it fails now.
    link.close();
    // A hung worker killed by the heartbeat crashed, whatever its exit says.
    Ok(ProcessEnd { reason, link_failed: link_failed || hung })
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

/// A worker that printed to stdout before it connected (over stdio) sends text where its `Hello`
/// belongs: say that, rather than only what the text looks like as a frame header.
fn explain_text_instead_of_hello(err: Error, received: &[u8]) -> Error {
    // Only the text at the start counts: the worker's real Hello may already follow it.
    let text =
        received.iter().take(60).take_while(|b| b.is_ascii_graphic() || b.is_ascii_whitespace()).count();
    if err.kind() != ErrorKind::Protocol || text < HEADER_LEN {
        return err;
    }
    let head = &received[..text];
    Error::new(
        ErrorKind::Protocol,
        format!(
            "the worker sent text ({:?}) where its Hello belongs: over the stdio transport a worker must not \
             print to stdout before Worker::builder().connect(); print to stderr instead",
            String::from_utf8_lossy(head)
        ),
    )
    .with_source(err)
}

/// The one description of a worker that did not connect in time, whichever deadline noticed it:
/// the ready timeout here or in [`Primary::ready`](super::Primary::ready).
pub(super) fn not_connected_in_time(waited: Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!(
            "the worker did not connect within {waited:?}, so it is killed; does its program call \
             Worker::builder().connect() at start?"
        ),
    )
}

/// Publishes the end of a worker's connection: the error that ended it, if any, first, so that
/// a subscriber always learns what went wrong before it sees the Disconnect (and then the Exit).
/// Returns whether an error ended it.
fn report_link_end(inner: &PrimaryInner, worker: &WorkerRef, end: Option<LinkEnd>) -> bool {
    let failed = matches!(end, Some(LinkEnd::Failed(_)));
    if let Some(LinkEnd::Failed(err)) = end {
        inner.emit(Event::Error {
            worker: Some(worker.clone()),
            error: Arc::new(err.with_context("worker", worker)),
        });
    }
    inner.emit(Event::Disconnect { worker: worker.clone() });
    failed
}

/// Why a worker did not get connected.
enum ConnectFailure {
    /// A refused handshake, already published as an event.
    Published(Arc<Error>),
    /// Anything else, not published yet.
    New(Error),
}

impl From<Error> for ConnectFailure {
    fn from(err: Error) -> Self {
        ConnectFailure::New(err)
    }
}

/// Reports why a worker could not connect (once) and keeps it for
/// [`Primary::ready`](super::Primary::ready).
fn connect_failed(inner: &PrimaryInner, worker: &WorkerRef, failure: ConnectFailure) {
    let err = match failure {
        ConnectFailure::Published(err) => err,
        ConnectFailure::New(err) => {
            let err = Arc::new(err);
            inner.emit(Event::Error { worker: Some(worker.clone()), error: Arc::clone(&err) });
            err
        }
    };
    inner.update_slot(worker.id, |s| s.connect_failure = Some(err));
}

async fn wait_exit(exit_rx: &mut oneshot::Receiver<ExitReason>) -> ExitReason {
    exit_rx.await.unwrap_or(ExitReason::Code(-1))
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

/// Accepts connections until one passes the handshake, by `deadline`; refused ones are reported
/// and dropped.
async fn connect(
    inner: &Arc<PrimaryInner>,
    worker: &WorkerRef,
    rendezvous: &mut dyn Rendezvous,
    token: Option<String>,
    deadline: tokio::time::Instant,
) -> Result<(Arc<Link>, JoinHandle<LinkEnd>), ConnectFailure> {
    let mut handshake = PrimaryHandshake::new(worker.id, token);
    let mut refused = None;
    loop {
        let accepted = tokio::time::timeout_at(deadline, rendezvous.accept()).await;
        let mut connection = match (accepted, refused) {
            (Ok(Ok(connection)), _) => connection,
            // A channel with one try (inherited, stdio): its refusal is why, not the end of it.
            (_, Some(refusal)) => return Err(ConnectFailure::Published(refusal)),
            (Ok(Err(err)), None) => return Err(err.into()),
            (Err(_), None) => {
                return Err(not_connected_in_time(inner.ready_timeout).with_context("worker", worker).into());
            }
        };
        // Until it authenticates, a connection may only send a small Hello.
        let mut decoder = FrameDecoder::new(HANDSHAKE_MAX_FRAME_LEN);
        let checked =
            match tokio::time::timeout_at(deadline, read_first(&mut connection.reader, &mut decoder)).await {
                Ok(Ok(first)) => handshake.check_hello(first),
                Ok(Err(err)) => Err(explain_text_instead_of_hello(err, decoder.buffer_mut())),
                Err(_) => Err(handshake_not_finished(inner.ready_timeout, decoder.buffered_len())),
            };
        if let Err(err) = checked {
            let err = err.with_context("worker", worker).with_context("connection", &connection.description);
            let notice = Message::Notice(Notice::Error(WireError::from(&err)));
            let _ = write_single(&mut connection.writer, &notice, inner.max_frame_len).await;
            let err = Arc::new(err);
            inner.emit(Event::Error { worker: Some(worker.clone()), error: Arc::clone(&err) });
            refused = Some(err);
            continue;
        }
        decoder.set_max_frame_len(inner.max_frame_len);
        let restarts = inner.slots().get(&worker.id).map_or(0, |s| s.restarts);
        let welcome = Message::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            worker_id: worker.id,
            name: worker.name.clone(),
            restarts,
        });
        write_single(&mut connection.writer, &welcome, inner.max_frame_len).await?;
        let (link, reader) = Link::new(
            format!("worker {:?} (#{})", worker.name, worker.id),
            connection.reader,
            connection.writer,
            decoder,
            inner.max_frame_len,
            ErrorKind::WorkerExited,
        );
        let reader = reader.spawn(Arc::new(PrimaryInbound::new(Arc::clone(inner), worker.clone())));
        return Ok((link, reader));
    }
}

/// A connection whose Hello did not arrive in time: one that sent nothing did not connect, one
/// that sent part of it connected and then stalled.
fn handshake_not_finished(waited: Duration, received: usize) -> Error {
    if received == 0 {
        return not_connected_in_time(waited);
    }
    Error::new(
        ErrorKind::Timeout,
        format!(
            "the worker connected and began its handshake, but sent only {received} bytes of its Hello within \
             {waited:?}, so it is killed; is it stuck, or does it speak another protocol on its channel?"
        ),
    )
}

#[cfg(test)]
mod tests {
    use clusterfy_core::codec::encode_frame;
    use clusterfy_core::protocol::Hello;

    use super::*;

    fn oversize() -> Error {
        Error::new(ErrorKind::Protocol, "peer announced a frame above the maximum")
    }

    #[test]
    fn text_before_the_hello_is_named_even_when_the_real_hello_already_follows() {
        let mut received = b"starting up...\n".to_vec();
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            worker_id: clusterfy_core::WorkerId(1),
            token: "t".into(),
        };
        encode_frame(&Message::Hello(hello), 4096, &mut received).expect("a Hello frame");
        for bytes in [&received[..], &received[..15], &received[..6]] {
            let err = explain_text_instead_of_hello(oversize(), bytes);
            assert!(err.message().contains("must not print to stdout"), "{err}");
            assert!(err.message().contains("start"), "quotes the text: {err}");
        }
    }

    #[test]
    fn a_hello_begun_and_not_finished_is_not_called_a_missing_connect() {
        let silent = handshake_not_finished(Duration::from_secs(30), 0);
        assert!(silent.message().contains("call Worker::builder().connect()"), "{silent}");
        let stalled = handshake_not_finished(Duration::from_secs(30), 3);
        assert_eq!(stalled.kind(), ErrorKind::Timeout);
        assert!(stalled.message().contains("began its handshake"), "{stalled}");
        assert!(!stalled.message().contains("call Worker::builder().connect()"), "{stalled}");
    }

    #[test]
    fn a_binary_or_short_first_frame_keeps_its_own_error() {
        for bytes in [&b"\x07\x00\x00\x00abc"[..], b"ok\n", b""] {
            let err = explain_text_instead_of_hello(oversize(), bytes);
            assert_eq!(err.message(), "peer announced a frame above the maximum", "{bytes:?}");
        }
        let timeout = explain_text_instead_of_hello(Error::new(ErrorKind::Timeout, "slow"), b"text text");
        assert_eq!(timeout.kind(), ErrorKind::Timeout, "only protocol errors are explained");
    }
}
