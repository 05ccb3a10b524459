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
    /// A bound was reached (connections, requests in flight, bytes buffered for peers): the
    /// request was refused so that others keep being served; retry later.
    Busy,
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
            ErrorKind::Busy => "busy",
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
///
/// # Display
///
/// `Display` (and `Debug`, so that a failed `unwrap()` reads the same) prints, in this order:
///
/// 1. the kind's short name ([`ErrorKind::as_str`]), a colon and the [message](Error::message):
///    `not found: cannot save "a.b": "a" does not exist; ...`;
/// 2. if there is [context](Error::context), every entry in the order it was added, as
///    `key: value` pairs separated by commas, in parentheses: ` (path: a.b, prefix: a)`;
/// 3. if there is a [source](std::error::Error::source), `: caused by: ` and the source's own
///    `Display` (for a source that is itself an [`Error`], with its kind, context and cause).
///
/// Nothing else is added: no trailing newline, no backtrace. An error that came over the wire from
/// the other side of the cluster prints the same text as it did there.
///
/// ```
/// use clusterfy_core::{Error, ErrorKind};
///
/// let err = Error::new(ErrorKind::NotFound, "cannot save \"a.b\": \"a\" does not exist")
///     .with_context("path", "a.b")
///     .with_context("prefix", "a")
///     .with_source(std::io::Error::other("disk gone"));
/// assert_eq!(
///     err.to_string(),
///     "not found: cannot save \"a.b\": \"a\" does not exist (path: a.b, prefix: a): caused by: disk gone"
/// );
/// assert_eq!(format!("{err:?}"), err.to_string());
///
/// // Without context and source, only kind and message.
/// assert_eq!(Error::new(ErrorKind::Timeout, "too slow").to_string(), "timeout: too slow");
/// ```
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
///
/// Converting back ([`Error::from`]) gives an error with the same kind, message, context and
/// `Display` as the original: the flattened source (everything after the first `": caused by: "`)
/// becomes the source again, as text, and context keys come back under their names as long as
/// they are among the keys Clusterfy uses (`worker`, `worker_id`, `path`, `prefix`, `command`,
/// `target`, `url`, `key`, `peer`, `connection`, `fd`); any other key comes back as `remote`,
/// with the value `key=value`.
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

/// What [`WireError`] puts between the message and the flattened source.
const CAUSED_BY: &str = ": caused by: ";

/// The flattened source of an error that came over the wire, as text.
#[derive(Debug)]
struct RemoteSource(String);

impl fmt::Display for RemoteSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RemoteSource {}

impl From<WireError> for Error {
    fn from(wire: WireError) -> Self {
        // Split the source off again, so that `message()` is the same on both sides of the wire.
        let mut err = match wire.message.split_once(CAUSED_BY) {
            Some((message, source)) => {
                Error::new(wire.kind, message).with_source(RemoteSource(source.to_owned()))
            }
            None => Error::new(wire.kind, wire.message),
        };
        for (k, v) in wire.context {
            // Context keys are `&'static str` locally; keys from the wire are a small known set,
            // so map them back where possible and keep the rest under a generic key.
            let key = static_context_key(&k);
            err = if key == "remote" {
                err.with_context(key, format!("{}={v}", excerpt(&k)))
            } else {
                err.with_context(key, v)
            };
        }
        err
    }
}

/// Every context key Clusterfy's crates use, so that an error keeps its keys across the wire.
fn static_context_key(k: &str) -> &'static str {
    match k {
        "worker" => "worker",
        "worker_id" => "worker_id",
        "path" => "path",
        "command" => "command",
        "prefix" => "prefix",
        "target" => "target",
        "url" => "url",
        "key" => "key",
        "peer" => "peer",
        "connection" => "connection",
        "fd" => "fd",
        "operation" => "operation",
        _ => "remote",
    }
}

/// The most bytes of an input that an error message shows: see [`excerpt`].
pub const MAX_EXCERPT_LEN: usize = 100;

/// An input (a path, a command name, a map key, ...) as error messages show it: at most
/// [`MAX_EXCERPT_LEN`] bytes of it, so that a huge input cannot blow up a message, a log line or
/// an error reply.
///
/// - `Display` (`{}`) shows the text as it is, cut on a character boundary after at most
///   `MAX_EXCERPT_LEN` bytes.
/// - `Debug` (`{:?}`) shows it in double quotes with Rust's escapes, like `{:?}` of a `str`, with
///   at most `MAX_EXCERPT_LEN` bytes of escaped text between the quotes.
///
/// Either way, a cut input is followed by `…` and its total length, so the reader knows it is
/// cut: `"xxxx"… (5000 bytes)`. An input that fits is shown exactly as `{}` or `{:?}` of the
/// `str` would show it.
///
/// ```
/// use clusterfy_core::error::{MAX_EXCERPT_LEN, excerpt};
///
/// assert_eq!(format!("{:?}", excerpt("x. a")), r#""x. a""#);
/// assert_eq!(format!("{}", excerpt("x. a")), "x. a");
/// let long = "é".repeat(300); // 600 bytes
/// let shown = format!("{:?}", excerpt(&long));
/// assert!(shown.ends_with("\"… (600 bytes)"), "{shown}");
/// assert!(shown.len() <= MAX_EXCERPT_LEN + "\"\"… (600 bytes)".len());
/// ```
pub fn excerpt(input: &str) -> Excerpt<'_> {
    Excerpt { input }
}

/// An input cut for an error message; made by [`excerpt`].
#[derive(Clone, Copy)]
pub struct Excerpt<'a> {
    input: &'a str,
}

impl Excerpt<'_> {
    /// The part shown, given how many bytes each character takes when shown.
    fn shown(&self, width: impl Fn(char) -> usize) -> &str {
        let mut used = 0;
        for (at, c) in self.input.char_indices() {
            used += width(c);
            if used > MAX_EXCERPT_LEN {
                return &self.input[..at];
            }
        }
        self.input
    }

    fn ellipsis(&self, shown: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if shown.len() < self.input.len() { write!(f, "… ({} bytes)", self.input.len()) } else { Ok(()) }
    }
}

impl fmt::Display for Excerpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = self.shown(char::len_utf8);
        f.write_str(shown)?;
        self.ellipsis(shown, f)
    }
}

impl fmt::Debug for Excerpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A str's Debug escapes like `char::escape_debug`, except that it leaves `'` alone.
        let shown = self.shown(|c| if c == '\'' { 1 } else { c.escape_debug().map(char::len_utf8).sum() });
        write!(f, "{shown:?}")?;
        self.ellipsis(shown, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_of_short_inputs_are_the_input() {
        for input in ["", "a.b", "x. a", "nul\0 and \"quotes\" and 'apostrophes'", "ü\u{301}"] {
            assert_eq!(excerpt(input).to_string(), input);
            assert_eq!(format!("{:?}", excerpt(input)), format!("{input:?}"));
        }
        let exactly = "x".repeat(MAX_EXCERPT_LEN);
        assert_eq!(excerpt(&exactly).to_string(), exactly);
        assert_eq!(format!("{:?}", excerpt(&exactly)), format!("{exactly:?}"));
    }

    #[test]
    fn excerpts_of_long_inputs_are_cut_on_a_char_boundary_with_the_total_length() {
        let long = format!("{}{}", "a".repeat(99), "€".repeat(10)); // 99 + 30 bytes
        assert_eq!(excerpt(&long).to_string(), format!("{}… (129 bytes)", "a".repeat(99)));
        assert_eq!(format!("{:?}", excerpt(&long)), format!("\"{}\"… (129 bytes)", "a".repeat(99)));

        // Escapes count as shown: 100 NULs are 200 bytes once escaped, so 50 are shown.
        let nuls = "\0".repeat(100);
        assert_eq!(format!("{:?}", excerpt(&nuls)), format!("\"{}\"… (100 bytes)", "\\0".repeat(50)));
        assert_eq!(excerpt(&nuls).to_string(), nuls, "unescaped, 100 bytes fit");

        let huge = "é".repeat(1 << 20);
        let shown = format!("{:?}", excerpt(&huge));
        assert!(shown.len() <= MAX_EXCERPT_LEN + "\"\"… (2097152 bytes)".len(), "{shown}");
        assert!(shown.ends_with("\"… (2097152 bytes)"), "{shown}");
    }

    #[test]
    fn display_is_kind_message_context_then_cause() {
        let inner = Error::new(ErrorKind::Io, "disk full").with_context("path", "/data");
        let err = Error::new(ErrorKind::Storage, "cannot save").with_context("path", "a").with_source(inner);
        assert_eq!(
            err.to_string(),
            "storage: cannot save (path: a): caused by: i/o: disk full (path: /data)"
        );
    }

    #[test]
    fn an_error_over_the_wire_keeps_message_context_and_display() {
        let err = Error::new(ErrorKind::Timeout, "Redis did not confirm the write")
            .with_context("url", "redis://h")
            .with_context("path", "a.b")
            .with_context("key", "k")
            .with_source(std::io::Error::other("gone"));
        let back = Error::from(WireError::from(&err));
        assert_eq!(back.kind(), err.kind());
        assert_eq!(back.message(), err.message());
        assert_eq!(back.context(), err.context());
        assert_eq!(back.to_string(), err.to_string());
        assert_eq!(std::error::Error::source(&back).map(ToString::to_string).as_deref(), Some("gone"));
        // And again: the text on the wire is stable.
        assert_eq!(WireError::from(&back), WireError::from(&err));
    }

    #[test]
    fn unknown_context_keys_come_back_as_remote_with_a_bounded_key() {
        let key = "k".repeat(500);
        let wire = WireError { kind: ErrorKind::Io, message: "m".into(), context: vec![(key, "v".into())] };
        let err = Error::from(wire);
        let remote = err.context_value("remote").unwrap_or_default();
        assert!(remote.starts_with("kkk") && remote.ends_with("… (500 bytes)=v"), "{remote}");
    }
}
