//! The primary's control socket: accepts the operator's connections (same uid only), answers
//! one request each, and streams events and storage changes for as long as the client reads.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use clusterfy_core::codec::encode_frame;
use clusterfy_core::control::{
    AppInfo, CONTROL_PROTOCOL_VERSION, ControlReply, ControlRequest, EventRow, MAX_CONTROL_FRAME_LEN,
    write_frame,
};
use clusterfy_core::{Error, ErrorKind, Result, WireError};
use futures::StreamExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use super::limits::{Admission, ControlLimits};
use super::private_dir::ensure_private_dir;
use crate::events::Event;
use crate::primary::{DEFAULT_SHUTDOWN_TIMEOUT, Primary, PrimaryInner, ReloadOptions, WorkerInfo};
use crate::socket_file::{self, SocketFile};

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

/// Where a control socket goes.
pub(crate) enum SocketPlace {
    /// In Clusterfy's own [`control_dir`](super::control_dir), created and kept private here.
    ControlDir(PathBuf),
    /// At a path the program named: its directory must exist and is left as it is.
    Named(PathBuf),
}

/// Binds the control socket of `app` and serves it for as long as the primary lives. The socket
/// file is made 0600 wherever it goes; the uid check on every connection is what guards it.
pub(crate) fn open(
    app: &str,
    place: SocketPlace,
    max_connections: usize,
    primary: Weak<PrimaryInner>,
) -> Result<ControlSocket> {
    let path = match place {
        SocketPlace::ControlDir(path) => {
            if let Some(dir) = path.parent() {
                ensure_private_dir(dir)?;
            }
            path
        }
        SocketPlace::Named(path) => {
            socket_file::check_named_directory(&path, "the control socket")?;
            path
        }
    };
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
    let limits = ControlLimits::new(max_connections);
    let accepting = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            match limits.admit() {
                Ok(admission) => {
                    let id = admission.id();
                    let task = tokio::spawn(serve(stream, admission, primary.clone(), Arc::clone(&app)));
                    limits.serving(id, task.abort_handle());
                }
                Err(busy) => refuse_at_once(&stream, &busy),
            }
        }
    });
    Ok(ControlSocket { path, accepting, closed: std::sync::atomic::AtomicBool::new(false) })
}

/// Sends one reply.
async fn send(writer: &mut (impl tokio::io::AsyncWrite + Unpin), reply: &ControlReply) -> Result<()> {
    write_frame(writer, reply, MAX_CONTROL_FRAME_LEN).await
}

/// Tells a client refused at the connection cap why, without a task of its own: the frame is
/// small enough for the socket's buffer, and a client that does not read it loses only the reason.
fn refuse_at_once(stream: &UnixStream, why: &Error) {
    let mut frame = Vec::new();
    if encode_frame(&ControlReply::Error(WireError::from(why)), MAX_CONTROL_FRAME_LEN, &mut frame).is_ok() {
        let _ = stream.try_write(&frame);
    }
}

async fn serve(stream: UnixStream, admission: Admission, primary: Weak<PrimaryInner>, app: Arc<str>) {
    let own_uid = nix::unistd::getuid().as_raw();
    let peer_uid = stream.peer_cred().map(|cred| cred.uid());
    let (mut reader, mut writer) = stream.into_split();
    if peer_uid.as_ref().map_or(true, |uid| *uid != own_uid) {
        let who = peer_uid.map_or_else(|_| "an unknown uid".to_owned(), |uid| format!("uid {uid}"));
        let refused = Error::new(
            ErrorKind::Unauthorized,
            format!("permission denied: app {app:?} is run by uid {own_uid} and accepts only it, not {who}"),
        );
        let _ = send(&mut writer, &ControlReply::Error(WireError::from(&refused))).await;
        return;
    }
    // Held until the request is answered: it is what the request's bytes cost.
    let (request, _room) =
        match tokio::time::timeout(REQUEST_TIMEOUT, admission.read_request(&mut reader)).await {
            Ok(Ok(Some(read))) => read,
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(err)) => {
                let _ = send(&mut writer, &ControlReply::Error(WireError::from(&err))).await;
                return;
            }
        };
    let Some(inner) = primary.upgrade() else { return };
    let primary = Primary { inner };
    let reply = match request {
        ControlRequest::Events => return stream_events(&primary, &mut writer).await,
        ControlRequest::StorageWatch { path } => return stream_changes(&primary, &path, &mut writer).await,
        ControlRequest::Logs { which, lines, follow } => {
            let (which, lines) = (which.as_deref(), lines as usize);
            return stream_logs(&primary, which, lines, follow, &mut reader, &mut writer).await;
        }
        request => answer(&primary, &app, request).await,
    };
    let reply = reply.unwrap_or_else(|err| ControlReply::Error(WireError::from(&err)));
    let _ = send(&mut writer, &reply).await;
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
            ControlReply::Workers(primary.workers().iter().map(WorkerInfo::control_row).collect())
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
        ControlRequest::ReloadGroup { group } => {
            primary.reload_group(&group, ReloadOptions::default()).await?;
            ControlReply::Done
        }
        ControlRequest::Scale { group, workers } => {
            primary.scale(&group, workers as usize).await?;
            ControlReply::Done
        }
        ControlRequest::StorageGet { path } => ControlReply::Value(
            primary.shared_storage().retrieve_value(&clusterfy_core::Path::parse(&path)?).await?,
        ),
        ControlRequest::StorageSet { path, value } => {
            primary.shared_storage().save(&clusterfy_core::Path::parse(&path)?, value, false).await?;
            ControlReply::Done
        }
        ControlRequest::StorageSave { path, value, create_parents } => {
            let path = clusterfy_core::Path::parse(&path)?;
            primary.shared_storage().save(&path, value, create_parents).await?;
            ControlReply::Done
        }
        ControlRequest::Events | ControlRequest::StorageWatch { .. } | ControlRequest::Logs { .. } => {
            return Err(Error::new(ErrorKind::InvalidState, "a stream request reached the one-reply path"));
        }
    })
}

async fn stream_events(primary: &Primary, writer: &mut (impl tokio::io::AsyncWrite + Unpin)) {
    let mut events = primary.events();
    while let Some(event) = events.next().await {
        if send(writer, &ControlReply::Event(event_row(&event))).await.is_err() {
            return;
        }
    }
}

async fn stream_changes(primary: &Primary, path: &str, writer: &mut (impl tokio::io::AsyncWrite + Unpin)) {
    let mut changes = match primary.storage().watch(path).await {
        Ok(changes) => changes,
        Err(err) => return drop(send(writer, &ControlReply::Error(WireError::from(&err))).await),
    };
    while let Some(changed) = changes.next().await {
        let reply = ControlReply::Changed { path: changed.to_string() };
        if send(writer, &reply).await.is_err() {
            return;
        }
    }
}

async fn stream_logs(
    primary: &Primary,
    which: Option<&str>,
    lines: usize,
    follow: bool,
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
) {
    let ((last, skipped), mut stream) = match primary.follow_logs(which, lines) {
        Ok(found) => found,
        Err(err) => return drop(send(writer, &ControlReply::Error(WireError::from(&err))).await),
    };
    let log = |line: crate::primary::LogLine| ControlReply::Log { worker: line.worker, text: line.text };
    if skipped > 0 && send(writer, &ControlReply::LogsSkipped { lines: skipped }).await.is_err() {
        return;
    }
    for line in last {
        if send(writer, &log(line)).await.is_err() {
            return;
        }
    }
    if !follow {
        return drop(send(writer, &ControlReply::Done).await);
    }
    let mut byte = [0u8; 1];
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            // The client sends nothing after its request: any read ending means it hung up, which
            // a quiet worker's stream would otherwise notice only at its next line.
            _ = tokio::io::AsyncReadExt::read(reader, &mut byte) => return,
        };
        let Some(next) = next else { return };
        let reply = match next {
            Ok(line) => log(line),
            Err(missed) => ControlReply::LogsSkipped { lines: missed },
        };
        if send(writer, &reply).await.is_err() {
            return;
        }
    }
}

/// An event as one row: its kind, the worker it is about, a line of text.
fn event_row(event: &Event) -> EventRow {
    let row = |kind: &str, worker: Option<&crate::events::WorkerRef>, text: String| EventRow {
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
        Event::GaveUp { worker, restarts, cause } => {
            row("gave_up", Some(worker), format!("{worker} gave up after {restarts} restarts: {cause}"))
        }
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
    }

    #[tokio::test]
    async fn a_directory_the_program_names_keeps_its_mode_and_the_socket_is_private() {
        for dir_mode in [0o755, 0o1777, 0o770] {
            let dir = tempfile::tempdir().expect("temp dir");
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(dir_mode)).expect("chmod");
            let path = dir.path().join("app.sock");
            let socket = open("app", SocketPlace::Named(path.clone()), 64, Weak::new()).expect("opens");
            assert_eq!(mode(dir.path()), dir_mode, "the named directory is left as it was");
            assert_eq!(mode(&path), 0o600, "the socket itself is private");
            socket.close();
            assert!(!path.exists(), "removed when closed");
        }
    }

    #[tokio::test]
    async fn a_named_socket_in_a_missing_directory_is_refused_and_nothing_is_created() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("missing").join("app.sock");
        let err = open("app", SocketPlace::Named(path), 64, Weak::new()).err().expect("refused");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(err.message().contains("does not exist"), "{err}");
        assert!(!dir.path().join("missing").exists(), "no directory was created");
    }
}
