//! The primary's control socket: accepts the operator's connections (same uid only), answers
//! one request each, and streams events and storage changes for as long as the client reads.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use clusterfy_core::control::{AppInfo, CONTROL_PROTOCOL_VERSION, ControlReply, ControlRequest, EventRow};
use clusterfy_core::{Error, ErrorKind, Result, WireError};
use futures::StreamExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use super::frames::{decoder, read_frame, write_frame};
use super::location::ensure_private_dir;
use crate::events::Event;
use crate::primary::{Primary, PrimaryInner, WorkerInfo};
use crate::socket_file::{self, SocketFile};
use crate::{DEFAULT_SHUTDOWN_TIMEOUT, ReloadOptions};

/// Time a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An open control socket; its file is removed when the cluster shuts down, or when the
/// primary is dropped.
pub(crate) struct ControlSocket {
    path: PathBuf,
    accepting: JoinHandle<()>,
    closed: std::sync::atomic::AtomicBool,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.close();
    }
}

impl ControlSocket {
    /// Stops accepting and removes the socket file, once: after that the path may belong to
    /// another primary.
    pub(crate) fn close(&self) {
        if self.closed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        self.accepting.abort();
        let _ = std::fs::remove_file(&self.path);
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Binds the control socket of `app` at `path` and serves it for as long as the primary lives.
pub(crate) fn open(app: &str, path: PathBuf, primary: Weak<PrimaryInner>) -> Result<ControlSocket> {
    if let Some(dir) = path.parent() {
        ensure_private_dir(dir)?;
    }
    let in_use = || {
        Error::new(
            ErrorKind::AlreadyExists,
            format!(
                "the control socket {} is in use: another primary runs as app {app:?}; stop it, or give this \
                 one another name",
                path.display()
            ),
        )
    };
    match socket_file::probe(&path) {
        SocketFile::Absent => {}
        // Left by a primary that died: nothing is lost by taking it over.
        SocketFile::Stale => std::fs::remove_file(&path)
            .map_err(|e| Error::io(format!("removing the stale control socket {}", path.display()), e))?,
        SocketFile::Live | SocketFile::Unknown => return Err(in_use()),
        SocketFile::NotASocket => {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket; remove it or choose another path", path.display()),
            ));
        }
    }
    let listener = UnixListener::bind(&path)
        .map_err(|e| Error::io(format!("binding the control socket {}", path.display()), e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("making the control socket {} private", path.display()), e))?;
    let app: Arc<str> = Arc::from(app);
    let accepting = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, primary.clone(), Arc::clone(&app)));
        }
    });
    Ok(ControlSocket { path, accepting, closed: std::sync::atomic::AtomicBool::new(false) })
}

async fn serve(stream: UnixStream, primary: Weak<PrimaryInner>, app: Arc<str>) {
    let own_uid = nix::unistd::getuid().as_raw();
    let peer_uid = stream.peer_cred().map(|cred| cred.uid());
    let (mut reader, mut writer) = stream.into_split();
    if peer_uid.as_ref().map_or(true, |uid| *uid != own_uid) {
        let who = peer_uid.map_or_else(|_| "an unknown uid".to_owned(), |uid| format!("uid {uid}"));
        let refused = Error::new(
            ErrorKind::Unauthorized,
            format!("permission denied: app {app:?} is run by uid {own_uid} and accepts only it, not {who}"),
        );
        let _ = write_frame(&mut writer, &ControlReply::Error(WireError::from(&refused))).await;
        return;
    }
    let mut frames = decoder();
    let request =
        match tokio::time::timeout(REQUEST_TIMEOUT, read_frame::<ControlRequest>(&mut reader, &mut frames))
            .await
        {
            Ok(Ok(Some(request))) => request,
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(err)) => {
                let _ = write_frame(&mut writer, &ControlReply::Error(WireError::from(&err))).await;
                return;
            }
        };
    let Some(inner) = primary.upgrade() else { return };
    let primary = Primary { inner };
    let reply = match request {
        ControlRequest::Events => return stream_events(&primary, &mut writer).await,
        ControlRequest::StorageWatch { path } => return stream_changes(&primary, &path, &mut writer).await,
        request => answer(&primary, &app, request).await,
    };
    let reply = reply.unwrap_or_else(|err| ControlReply::Error(WireError::from(&err)));
    let _ = write_frame(&mut writer, &reply).await;
}

async fn answer(primary: &Primary, app: &str, request: ControlRequest) -> Result<ControlReply> {
    Ok(match request {
        ControlRequest::Info => ControlReply::Info(AppInfo {
            app: app.to_owned(),
            pid: std::process::id(),
            protocol_version: CONTROL_PROTOCOL_VERSION,
            workers: primary.workers().len() as u32,
        }),
        ControlRequest::Workers => {
            ControlReply::Workers(primary.workers().iter().map(WorkerInfo::to_row).collect())
        }
        ControlRequest::Restart { worker } => {
            primary.restart_worker(worker.as_str()).await?;
            ControlReply::Done
        }
        ControlRequest::Stop { worker } => {
            primary.shutdown_worker(worker.as_str(), DEFAULT_SHUTDOWN_TIMEOUT).await?;
            ControlReply::Done
        }
        ControlRequest::Reload => {
            primary.reload(ReloadOptions::default()).await?;
            ControlReply::Done
        }
        ControlRequest::StorageGet { path } => {
            ControlReply::Value(primary.shared_storage().get(&clusterfy_core::Path::parse(&path)?).await?)
        }
        ControlRequest::StorageSet { path, value } => {
            primary.shared_storage().save(&clusterfy_core::Path::parse(&path)?, value, false).await?;
            ControlReply::Done
        }
        ControlRequest::Events | ControlRequest::StorageWatch { .. } => {
            return Err(Error::new(ErrorKind::InvalidState, "a stream request reached the one-reply path"));
        }
    })
}

async fn stream_events(primary: &Primary, writer: &mut (impl tokio::io::AsyncWrite + Unpin)) {
    let mut events = primary.events();
    while let Some(event) = events.next().await {
        if write_frame(writer, &ControlReply::Event(event_row(&event))).await.is_err() {
            return;
        }
    }
}

async fn stream_changes(primary: &Primary, path: &str, writer: &mut (impl tokio::io::AsyncWrite + Unpin)) {
    let mut changes = match primary.storage().watch(path).await {
        Ok(changes) => changes,
        Err(err) => return drop(write_frame(writer, &ControlReply::Error(WireError::from(&err))).await),
    };
    while let Some(changed) = changes.next().await {
        let reply = ControlReply::Changed { path: changed.to_string() };
        if write_frame(writer, &reply).await.is_err() {
            return;
        }
    }
}

/// An event as one row: its kind, the worker it is about, a line of text.
fn event_row(event: &Event) -> EventRow {
    let row = |kind: &str, worker: Option<&crate::WorkerRef>, text: String| EventRow {
        kind: kind.to_owned(),
        worker: worker.map(|w| w.name.clone()),
        text,
    };
    match event {
        Event::Forked { worker, pid } => row("forked", Some(worker), format!("{worker} forked as pid {pid}")),
        Event::Online { worker } => row("online", Some(worker), format!("{worker} connected")),
        Event::Ready { worker } => row("ready", Some(worker), format!("{worker} is ready")),
        Event::Status { worker, status } => row("status", Some(worker), format!("{worker} is {status}")),
        Event::Disconnect { worker } => row("disconnect", Some(worker), format!("{worker} disconnected")),
        Event::Exit { worker, reason } => row("exit", Some(worker), format!("{worker} exited ({reason})")),
        Event::Revived { worker, restarts } => {
            row("revived", Some(worker), format!("{worker} revived (restart {restarts})"))
        }
        Event::GaveUp { worker, restarts } => row(
            "gave_up",
            Some(worker),
            format!("{worker} crashed too often; gave up after {restarts} restarts"),
        ),
        Event::Command { from, name, to } => row("command", None, format!("{name} from {from} to {to}")),
        Event::Error { worker, error } => row("error", worker.as_ref(), error.to_string()),
        Event::Lagged { missed } => row("lagged", None, format!("{missed} events missed")),
        Event::Storage { notice } => row("storage", None, format!("{notice:?}")),
        Event::Unresponsive { worker, waited } => row(
            "unresponsive",
            Some(worker),
            format!("{worker} did not answer a ping for {waited:?}; killed"),
        ),
        Event::MemoryLimit { worker, rss, limit } => row(
            "memory_limit",
            Some(worker),
            format!("{worker} uses {rss} bytes, over its limit of {limit}; replacing it"),
        ),
        Event::Replaced { old, new } => row("replaced", Some(new), format!("{new} replaced {old}")),
        Event::ReloadFailed { worker, error } => {
            row("reload_failed", Some(worker), format!("replacing {worker} failed: {error}"))
        }
    }
}
