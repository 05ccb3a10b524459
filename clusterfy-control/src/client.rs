//! [`ControlClient`]: talks to a running primary's control socket.

use std::path::{Path, PathBuf};

use clusterfy_core::codec::FrameDecoder;
use clusterfy_core::control::{
    ControlReply, ControlRequest, MAX_CONTROL_FRAME_LEN, MAX_CONTROL_REQUEST_LEN, read_frame, write_frame,
};
use clusterfy_core::{Error, ErrorKind, Result, Value};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::location::{control_dir, socket_path};
use crate::rows::{AppInfo, EventRow, LogEntry, WorkerRow};

/// A primary found in the control directory.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunningApp {
    /// What the primary says about itself.
    pub info: AppInfo,
    /// Its control socket.
    pub socket: PathBuf,
}

/// A client of one primary's control socket. Each call opens its own connection.
#[derive(Debug, Clone)]
pub struct ControlClient {
    socket: PathBuf,
}

impl ControlClient {
    /// The client of app `app`, whose socket is in [`control_dir`].
    pub fn for_app(app: &str) -> Result<Self> {
        Ok(ControlClient { socket: socket_path(app)? })
    }

    /// The client of the control socket at `socket`.
    pub fn at(socket: impl Into<PathBuf>) -> Self {
        ControlClient { socket: socket.into() }
    }

    /// Its socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The primaries running now with a control socket in [`control_dir`]; sockets left by
    /// primaries that died are skipped. Fails with [`ErrorKind::Unauthorized`] when the directory
    /// or every socket in it belongs to another user, as [`ControlClient::info`] and the other
    /// calls do for one app.
    pub async fn apps() -> Result<Vec<RunningApp>> {
        let dir = control_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(another_users(&dir, "the control directory").with_source(e));
            }
            Err(e) => return Err(Error::io(format!("listing the control directory {}", dir.display()), e)),
        };
        let mut apps = Vec::new();
        let mut refused = None;
        for entry in entries.flatten() {
            let socket = entry.path();
            if socket.extension().is_none_or(|e| e != "sock") {
                continue;
            }
            match ControlClient::at(&socket).info().await {
                Ok(info) => apps.push(RunningApp { info, socket }),
                Err(err) if err.kind() == ErrorKind::Unauthorized => refused = Some(err),
                // A socket left by a primary that died, or one shutting down.
                Err(_) => {}
            }
        }
        if let (true, Some(err)) = (apps.is_empty(), refused) {
            return Err(err);
        }
        apps.sort_by(|a, b| a.info.app.cmp(&b.info.app));
        Ok(apps)
    }

    /// Who the primary is.
    pub async fn info(&self) -> Result<AppInfo> {
        match self.call(ControlRequest::Info).await? {
            ControlReply::Info(info) => Ok(info.into()),
            other => Err(unexpected(&other)),
        }
    }

    /// Every worker, in id order.
    pub async fn workers(&self) -> Result<Vec<WorkerRow>> {
        match self.call(ControlRequest::Workers).await? {
            ControlReply::Workers(rows) => Ok(rows.into_iter().map(WorkerRow::from).collect()),
            other => Err(unexpected(&other)),
        }
    }

    /// Replaces worker `name` with a new process (new one first).
    pub async fn restart(&self, name: &str) -> Result<()> {
        self.done(ControlRequest::Restart { worker: name.to_owned() }).await
    }

    /// Stops worker `name` gracefully; it is not revived.
    pub async fn stop(&self, name: &str) -> Result<()> {
        self.done(ControlRequest::Stop { worker: name.to_owned() }).await
    }

    /// Rolls a reload of every worker; returns when it is done.
    pub async fn reload(&self) -> Result<()> {
        self.done(ControlRequest::Reload).await
    }

    /// Rolls a reload of group `group`'s members; returns when it is done.
    pub async fn reload_group(&self, group: &str) -> Result<()> {
        self.done(ControlRequest::ReloadGroup { group: group.to_owned() }).await
    }

    /// Grows or shrinks group `group` to `workers` members; returns when it is done.
    pub async fn scale(&self, group: &str, workers: u32) -> Result<()> {
        self.done(ControlRequest::Scale { group: group.to_owned(), workers }).await
    }

    /// The value or subtree at `path` (`clusterfy storage get`).
    #[doc(alias = "storage_get")]
    pub async fn storage_retrieve(&self, path: &str) -> Result<Option<Value>> {
        match self.call(ControlRequest::StorageGet { path: path.to_owned() }).await? {
            ControlReply::Value(value) => Ok(value),
            other => Err(unexpected(&other)),
        }
    }

    /// Saves `value` at `path` (its parent must exist; `clusterfy storage set`).
    #[doc(alias = "storage_set")]
    pub async fn storage_save(&self, path: &str, value: Value) -> Result<()> {
        self.done(ControlRequest::StorageSet { path: path.to_owned(), value }).await
    }

    /// Saves `value` at `path`, creating missing parent maps (`clusterfy storage set --parents`).
    pub async fn storage_save_with_parents(&self, path: &str, value: Value) -> Result<()> {
        let request = ControlRequest::StorageSave { path: path.to_owned(), value, create_parents: true };
        self.done(request).await
    }

    /// The cluster's events, one after the other, for as long as the stream is read.
    pub async fn events(&self) -> Result<ControlStream> {
        self.stream(ControlRequest::Events).await
    }

    /// The last `lines` lines of each worker `which` names (a worker or a group; every worker
    /// when `None`), then with `follow` every new line, for as long as the stream is read
    /// ([`ControlStream::next_log`]).
    pub async fn logs(&self, which: Option<&str>, lines: u32, follow: bool) -> Result<ControlStream> {
        self.stream(ControlRequest::Logs { which: which.map(str::to_owned), lines, follow }).await
    }

    /// The paths written on the branch of `path`, for as long as the stream is read.
    pub async fn storage_watch(&self, path: &str) -> Result<ControlStream> {
        self.stream(ControlRequest::StorageWatch { path: path.to_owned() }).await
    }

    async fn done(&self, request: ControlRequest) -> Result<()> {
        match self.call(request).await? {
            ControlReply::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    async fn call(&self, request: ControlRequest) -> Result<ControlReply> {
        let mut stream = self.stream(request).await?;
        match stream.next_reply().await? {
            Some(reply) => Ok(reply),
            None => Err(Error::new(
                ErrorKind::Closed,
                "the primary closed the control connection without an answer; it may be shutting down",
            )),
        }
    }

    async fn stream(&self, request: ControlRequest) -> Result<ControlStream> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| self.connect_error(e))?;
        let (reader, mut writer) = stream.into_split();
        let sent = write_frame(&mut writer, &request, MAX_CONTROL_REQUEST_LEN).await.map_err(|err| {
            if err.kind() == ErrorKind::Protocol {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "the request is too large for the control socket ({}); it takes at most {} KiB, so save \
                         larger values from a program with Storage::save",
                        err.message(),
                        MAX_CONTROL_REQUEST_LEN / 1024
                    ),
                )
            } else {
                err
            }
        });
        let mut stream =
            ControlStream { reader, _writer: writer, frames: FrameDecoder::new(MAX_CONTROL_FRAME_LEN) };
        if let Err(err) = sent {
            // A primary that refuses the connection says why, then closes before the request
            // is read: its reason is worth more than the broken pipe.
            stream.next_reply().await?;
            return Err(err);
        }
        Ok(stream)
    }

    fn connect_error(&self, err: std::io::Error) -> Error {
        let socket = self.socket.display();
        let advice = match err.kind() {
            std::io::ErrorKind::NotFound => {
                "no such app: no primary runs with that name (list them with `clusterfy apps`)".to_owned()
            }
            std::io::ErrorKind::ConnectionRefused => {
                "the primary is gone: the socket was left by a primary that is no longer running".to_owned()
            }
            std::io::ErrorKind::PermissionDenied => {
                return another_users(&self.socket, "the control socket").with_source(err);
            }
            _ => "see the cause".to_owned(),
        };
        Error::new(ErrorKind::Closed, format!("cannot reach the control socket {socket}: {advice}"))
            .with_source(err)
    }
}

/// The one message for a control socket or directory this user may not use, whichever call
/// ran into it: it belongs to another user, who alone can operate that cluster.
fn another_users(path: &Path, what: &str) -> Error {
    use std::os::unix::fs::MetadataExt;
    let owner =
        std::fs::metadata(path).map_or_else(|_| "another user".to_owned(), |m| format!("uid {}", m.uid()));
    Error::new(
        ErrorKind::Unauthorized,
        format!(
            "permission denied: {what} {} belongs to {owner}, not to this user (uid {}); run this as that user",
            path.display(),
            nix::unistd::getuid()
        ),
    )
}

/// Replies streamed by the primary ([`ControlClient::events`], [`ControlClient::storage_watch`]).
#[derive(Debug)]
pub struct ControlStream {
    reader: OwnedReadHalf,
    // Held so the primary sees the connection open until the stream is dropped.
    _writer: OwnedWriteHalf,
    frames: FrameDecoder,
}

impl ControlStream {
    /// The next event; `None` when the primary closed the stream (it shut down).
    pub async fn next_event(&mut self) -> Result<Option<EventRow>> {
        match self.next_reply().await? {
            None => Ok(None),
            Some(ControlReply::Event(row)) => Ok(Some(row.into())),
            Some(other) => Err(unexpected(&other)),
        }
    }

    /// The next path written on the watched branch; `None` when the primary closed the stream.
    pub async fn next_change(&mut self) -> Result<Option<String>> {
        match self.next_reply().await? {
            None => Ok(None),
            Some(ControlReply::Changed { path }) => Ok(Some(path)),
            Some(other) => Err(unexpected(&other)),
        }
    }

    /// The next entry of a logs stream; `None` at its end (all lines sent without `follow`, or the
    /// primary closed the stream).
    pub async fn next_log(&mut self) -> Result<Option<LogEntry>> {
        match self.next_reply().await? {
            None | Some(ControlReply::Done) => Ok(None),
            Some(ControlReply::Log { worker, text }) => Ok(Some(LogEntry::Line { worker, text })),
            Some(ControlReply::LogsSkipped { lines }) => Ok(Some(LogEntry::Skipped(lines))),
            Some(other) => Err(unexpected(&other)),
        }
    }

    async fn next_reply(&mut self) -> Result<Option<ControlReply>> {
        match read_frame::<ControlReply>(&mut self.reader, &mut self.frames).await? {
            Some(ControlReply::Error(err)) => Err(Error::from(err)),
            other => Ok(other),
        }
    }
}

fn unexpected(reply: &ControlReply) -> Error {
    Error::new(ErrorKind::Protocol, format!("the primary sent an unexpected control reply: {reply:?}"))
}
