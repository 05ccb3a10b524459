//! What can go wrong in this backend, and how it is told to the user as a
//! [`clusterfy_core::Error`]: with the Redis URL (password hidden) as `url` context and with what
//! to do about it.

use std::time::Duration;

use clusterfy_core::{Error, ErrorKind};
use redis::RedisError;

use crate::tls::{TlsFailure, is_tls_url};

#[derive(Debug)]
pub(crate) enum RedisMirrorError {
    /// A builder option is out of range; the text names it.
    Setting(String),
    /// `connect` was polled outside a tokio runtime, so the mirror task has nowhere to run.
    NoRuntime { url: String },
    /// The URL does not parse, or the TLS certificates given do not fit it.
    InvalidUrl { url: String, source: RedisError },
    /// The TLS handshake failed at start.
    Tls { url: String, failure: TlsFailure, source: RedisError },
    /// Redis could not be reached, or refused the connection, at start.
    Unreachable { url: String, source: RedisError },
    /// The state could not be loaded from the data hash at start.
    Load { url: String, key: String, source: RedisError },
    /// Redis has not confirmed a write within the ack timeout.
    NotConfirmed { url: String, timeout: Duration, waiting_for: &'static str },
}

/// A hint for TLS and plain text mixed up: a plain-text server never answers a TLS handshake (the
/// attempt times out), and a TLS server hangs up on plain text.
fn mixup_hint(url: &str, err: &RedisError) -> &'static str {
    if is_tls_url(url) && err.is_timeout() {
        " (for rediss://, the port must be Redis's tls-port)"
    } else if err.is_connection_dropped() && !err.is_connection_refusal() {
        " (if that port serves TLS, use rediss://)"
    } else {
        ""
    }
}

/// Whether Redis refused the credentials (or wanted some and got none).
fn is_auth_error(err: &RedisError) -> bool {
    err.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
}

/// Whether Redis itself answered with an error reply (rather than not answering, or the reply
/// being cut off): then parts of a transaction may have been refused while the rest was applied.
///
/// A reply cut off by a dying server is a parse error in redis-rs, which is a lost connection,
/// not a refusal.
pub(crate) fn is_refusal(err: &RedisError) -> bool {
    matches!(
        err.kind(),
        redis::ErrorKind::Server(_) | redis::ErrorKind::Extension | redis::ErrorKind::AuthenticationFailed
    )
}

impl From<RedisMirrorError> for Error {
    fn from(err: RedisMirrorError) -> Self {
        match err {
            RedisMirrorError::Setting(what) => {
                Error::new(ErrorKind::Config, format!("invalid RedisMirror option: {what}"))
            }
            RedisMirrorError::NoRuntime { url } => Error::new(
                ErrorKind::Config,
                "RedisMirror::connect must run within a tokio runtime: the mirror task runs on it",
            )
            .with_context("url", url),
            RedisMirrorError::InvalidUrl { url, source } => Error::new(
                ErrorKind::Config,
                format!(
                    "the Redis URL {url} is not usable ({source}); use redis://[[user]:password@]host[:port][/db], \
                     rediss://... (TLS; an optional #insecure at the end skips the certificate check) or \
                     unix:///path/to/socket"
                ),
            )
            .with_context("url", url),
            RedisMirrorError::Tls { url, failure, source } => {
                let message = match failure {
                    TlsFailure::Untrusted => format!(
                        "Redis at {url} presented a TLS certificate that is not trusted; if it comes from a \
                         private certificate authority, trust that with tls_ca_cert or tls_ca_cert_file \
                         (otherwise the system's authorities are used), and connect to a host name or IP address \
                         the certificate is made out to"
                    ),
                    TlsFailure::Refused => format!(
                        "Redis at {url} ended the TLS handshake; if it requires client certificates \
                         (tls-auth-clients yes, its default), give one with tls_client_cert"
                    ),
                    TlsFailure::NotTls => format!(
                        "the server at {url} does not speak TLS on that port; use redis:// for a plain-text \
                         port, or the server's tls-port"
                    ),
                };
                Error::new(ErrorKind::Config, message).with_context("url", url).with_source(source)
            }
            RedisMirrorError::Unreachable { url, source } => {
                let message = if is_auth_error(&source) {
                    format!(
                        "Redis at {url} refused the credentials; check the user and password in the URL"
                    )
                } else {
                    format!(
                        "cannot reach Redis at {url}, so the state cannot be loaded and the storage does not \
                         start (starting empty would overwrite the state kept there); start Redis or fix the \
                         URL{}",
                        mixup_hint(&url, &source)
                    )
                };
                Error::new(ErrorKind::Storage, message).with_context("url", url).with_source(source)
            }
            RedisMirrorError::Load { url, key, source } => {
                let message = if source.code() == Some("WRONGTYPE") {
                    format!(
                        "the Redis key {key} holds something other than a hash, so it is not a Clusterfy state; \
                         choose another key_prefix, or delete the key if it is yours"
                    )
                } else {
                    format!("loading the state from the Redis hash {key} failed; the storage does not start")
                };
                Error::new(ErrorKind::Storage, message)
                    .with_context("url", url)
                    .with_context("key", key)
                    .with_source(source)
            }
            RedisMirrorError::NotConfirmed { url, timeout, waiting_for } => Error::new(
                ErrorKind::Timeout,
                format!(
                    "Redis did not confirm {waiting_for} within {timeout:?} (it is unreachable or slow); \
                     the memory state has it, and it stays queued for Redis"
                ),
            )
            .with_context("url", url),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_url_and_what_to_do() {
        let source = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(!is_refusal(&source));
        let cut_off = redis::parse_redis_value(b"*2\r\n+QUEUED\r\n").unwrap_err();
        assert!(!is_refusal(&cut_off), "a reply cut off is a lost connection: {cut_off}");
        let refused = redis::parse_redis_value(b"-WRONGTYPE Operation against a key\r\n")
            .and_then(|value| value.extract_error())
            .unwrap_err();
        assert!(is_refusal(&refused), "{refused}");
        let err = Error::from(RedisMirrorError::Unreachable { url: "redis://:***@h".into(), source });
        assert_eq!(err.kind(), ErrorKind::Storage);
        assert_eq!(err.context_value("url"), Some("redis://:***@h"));
        assert!(err.message().contains("cannot be loaded"), "{err}");

        let err = Error::from(RedisMirrorError::NotConfirmed {
            url: "redis://h".into(),
            timeout: Duration::from_secs(1),
            waiting_for: "the write",
        });
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(err.message().contains("stays queued"), "{err}");
    }
}
