//! The one public error type of Clusterfy.

use std::fmt;

/// What went wrong, for callers to match on.
///
/// New kinds may be added in any minor release, so match with a wildcard arm.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ErrorKind {
    /// A storage path (or a parent of it) does not exist.
    NotFound,
    /// A dotted path is malformed (empty segment, forbidden character, ...).
    InvalidPath,
    /// An argument or value is not acceptable (wrong type, bad option, ...).
    InvalidInput,
    /// A value could not be converted to or from the requested Rust type.
    Serialization,
    /// The peer broke the wire protocol (undecodable or oversize frame, bad handshake, ...).
    Protocol,
    /// A handshake carried the wrong token: the peer is not the expected worker.
    Unauthorized,
    /// The connection is closed; nothing more can be sent or received on it.
    Closed,
    /// A deadline passed before the operation completed.
    Timeout,
    /// The worker that had to answer exited before it did.
    WorkerExited,
    /// No worker with the given id or name is running.
    UnknownWorker,
    /// No handler is registered for the command name on the target.
    UnknownCommand,
    /// A command handler returned an error, or panicked.
    CommandFailed,
    /// The name is already registered, or is reserved for built-in commands (`cy_`).
    AlreadyExists,
    /// Required configuration (environment, builder option) is missing or wrong.
    Config,
    /// The call is not valid in the current role or state (for example a worker-only call on the primary).
    InvalidState,
    /// An operating-system I/O error.
    Io,
    /// A storage backend failed.
    Storage,
    /// The backend or transport does not support the operation.
    Unsupported,
}

impl ErrorKind {
    /// A short lowercase name, used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::InvalidPath => "invalid path",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Serialization => "serialization",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Closed => "closed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::WorkerExited => "worker exited",
            ErrorKind::UnknownWorker => "unknown worker",
            ErrorKind::UnknownCommand => "unknown command",
            ErrorKind::CommandFailed => "command failed",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::Config => "configuration",
            ErrorKind::InvalidState => "invalid state",
            ErrorKind::Io => "i/o",
            ErrorKind::Storage => "storage",
            ErrorKind::Unsupported => "unsupported",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error of every fallible Clusterfy call: a kind to match on, a message that says what failed
/// and what to do, key/value context (worker, path, command, ...) and an optional source.
pub struct Error {
    kind: ErrorKind,
    message: String,
    context: Vec<(&'static str, String)>,
    source: Option<Source>,
}

/// `Result` with [`Error`] as the error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), context: Vec::new(), source: None }
    }

    /// Adds a context entry such as `("worker", "Paul")` or `("path", "test.some")`.
    #[must_use]
    pub fn with_context(mut self, key: &'static str, value: impl fmt::Display) -> Self {
        self.context.push((key, value.to_string()));
        self
    }

    /// Sets the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without kind or context.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The context entries, in the order they were added.
    pub fn context(&self) -> &[(&'static str, String)] {
        &self.context
    }

    /// The value of the first context entry named `key`.
    pub fn context_value(&self, key: &str) -> Option<&str> {
        self.context.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    }

    /// Shorthand for an [`ErrorKind::Io`] error from a `std::io::Error`, with what was being done.
    pub fn io(doing: impl Into<String>, err: std::io::Error) -> Self {
        Error::new(ErrorKind::Io, format!("{}: {err}", doing.into())).with_source(err)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug shows the same text as Display so that `unwrap()` failures in tests stay readable.
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        if !self.context.is_empty() {
            f.write_str(" (")?;
            for (i, (k, v)) in self.context.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{k}: {v}")?;
            }
            f.write_str(")")?;
        }
        if let Some(source) = &self.source {
            write!(f, ": caused by: {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// An error as it travels on the wire: kind, message and context, without the source chain
/// (which is flattened into the message).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WireError {
    /// The kind, unchanged.
    pub kind: ErrorKind,
    /// The message, with the source chain appended.
    pub message: String,
    /// The context entries.
    pub context: Vec<(String, String)>,
}

impl From<&Error> for WireError {
    fn from(err: &Error) -> Self {
        let mut message = err.message.clone();
        if let Some(source) = &err.source {
            message.push_str(&format!(": caused by: {source}"));
        }
        WireError {
            kind: err.kind,
            message,
            context: err.context.iter().map(|(k, v)| ((*k).to_string(), v.clone())).collect(),
        }
    }
}

impl From<WireError> for Error {
    fn from(wire: WireError) -> Self {
        let mut err = Error::new(wire.kind, wire.message);
        for (k, v) in wire.context {
            // Context keys are `&'static str` locally; keys from the wire are a small known set,
            // so map them back where possible and keep the rest under a generic key.
            let key = static_context_key(&k);
            err = if key == "remote" {
                err.with_context(key, format!("{k}={v}"))
            } else {
                err.with_context(key, v)
            };
        }
        err
    }
}

fn static_context_key(k: &str) -> &'static str {
    match k {
        "worker" => "worker",
        "worker_id" => "worker_id",
        "path" => "path",
        "command" => "command",
        "prefix" => "prefix",
        "target" => "target",
        _ => "remote",
    }
}
