//! Connecting a [`RedisMirror`], with options.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clusterfy_core::Result;

use crate::RedisMirror;
use crate::error::RedisMirrorError;
use crate::redact::SecretUrl;
use crate::tls::{self, Pem, TlsSettings};

/// How long a write in [`AckMode::Redis`], a `flush` in that mode, or
/// [`RedisMirror::wait_mirrored`] waits for Redis by default: 5 s.
///
/// Half of a worker's default request timeout (10 s, `clusterfy::worker::DEFAULT_WORKER_REQUEST_TIMEOUT`),
/// so that a worker's save that waits for an unreachable Redis fails with the mirror's own error
/// ("Redis did not confirm the write within 5s (it is unreachable or slow) ...") rather than with
/// the worker's "no reply from the primary within 10s". See [`RedisMirrorBuilder::ack_timeout`]
/// before changing either.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// When a write counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckMode {
    /// A write returns as soon as memory has it (the default). Redis gets it a moment later, in
    /// order; during a Redis outage writes keep succeeding and wait in the queue.
    /// [`Capabilities::durable`](clusterfy_core::Capabilities::durable) is `false`, and `flush`
    /// returns at once.
    #[default]
    Memory,
    /// A write returns only once Redis has it (and every write before it), or fails with
    /// [`ErrorKind::Timeout`](clusterfy_core::ErrorKind::Timeout) after the
    /// [`ack_timeout`](RedisMirrorBuilder::ack_timeout) (default [`DEFAULT_ACK_TIMEOUT`], 5 s)
    /// when Redis cannot be reached. For users who prefer consistency with Redis to availability;
    /// `durable` is `true`.
    Redis,
}

/// The settings a [`RedisMirror`] runs with, as given to the builder.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) url: SecretUrl,
    pub(crate) key_prefix: String,
    pub(crate) queue_capacity: usize,
    pub(crate) ack: AckMode,
    pub(crate) ack_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) health_check_interval: Duration,
    pub(crate) tls: TlsSettings,
}

impl Settings {
    /// The hash holding the state.
    pub(crate) fn data_key(&self) -> String {
        format!("{}:data", self.key_prefix)
    }

    /// Where a resync builds the new hash before it replaces the data hash in one `RENAME`.
    pub(crate) fn resync_key(&self) -> String {
        format!("{}:resync", self.key_prefix)
    }

    fn validate(&self) -> Result<(), RedisMirrorError> {
        let bad = |what: &str| Err(RedisMirrorError::Setting(what.to_owned()));
        if self.key_prefix.is_empty() {
            return bad("key_prefix must not be empty (the default is \"clusterfy\")");
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity must be at least 1");
        }
        for (name, value) in [
            ("ack_timeout", self.ack_timeout),
            ("connect_timeout", self.connect_timeout),
            ("response_timeout", self.response_timeout),
            ("the initial reconnect backoff", self.backoff_initial),
            ("health_check_interval", self.health_check_interval),
        ] {
            if value.is_zero() {
                return bad(&format!("{name} must be longer than zero"));
            }
        }
        if self.backoff_max < self.backoff_initial {
            return bad("the longest reconnect backoff must not be shorter than the first");
        }
        tls::validate(&self.url, &self.tls)
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisMirrorBuilder")
            .field("url", &self.url)
            .field("key_prefix", &self.key_prefix)
            .field("queue_capacity", &self.queue_capacity)
            .field("ack", &self.ack)
            .field("ack_timeout", &self.ack_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("reconnect_backoff", &(self.backoff_initial..=self.backoff_max))
            .field("health_check_interval", &self.health_check_interval)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Connects a [`RedisMirror`] with options; [`RedisMirror::connect`] is the same with every option
/// at its default.
///
/// Its `Debug` shows the URL with the password replaced by `***`.
///
/// ```no_run
/// use std::time::Duration;
///
/// use clusterfy_storage_redis::{AckMode, RedisMirror};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> clusterfy_core::Result<()> {
/// let storage = RedisMirror::builder("redis://:secret@127.0.0.1:6379/0")
///     .key_prefix("shop")
///     .queue_capacity(10_000)
///     .ack(AckMode::Redis)
///     .ack_timeout(Duration::from_secs(2))
///     .connect()
///     .await?;
/// assert_eq!(storage.data_key(), "shop:data");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisMirrorBuilder {
    settings: Settings,
}

impl fmt::Debug for RedisMirrorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.settings, f)
    }
}

impl RedisMirror {
    /// Connects to the Redis at `url` with default options, loads the state from it, and starts
    /// mirroring: see [`RedisMirrorBuilder::connect`].
    ///
    /// `url` is `redis://[[user]:password@]host[:port][/db]`, `rediss://...` (the same over TLS,
    /// trusting the system's certificate authorities unless
    /// [`tls_ca_cert`](RedisMirrorBuilder::tls_ca_cert) names others), or
    /// `unix:///path/to/socket[?db=N&user=U&pass=P]`.
    pub async fn connect(url: impl Into<String>) -> Result<RedisMirror> {
        RedisMirror::builder(url).connect().await
    }

    /// A builder for a mirror to the Redis at `url` (see [`connect`](RedisMirror::connect) for
    /// the URL forms).
    pub fn builder(url: impl Into<String>) -> RedisMirrorBuilder {
        RedisMirrorBuilder {
            settings: Settings {
                url: SecretUrl::new(url.into()),
                key_prefix: "clusterfy".to_owned(),
                queue_capacity: 100_000,
                ack: AckMode::Memory,
                ack_timeout: DEFAULT_ACK_TIMEOUT,
                connect_timeout: Duration::from_secs(5),
                response_timeout: Duration::from_secs(10),
                backoff_initial: Duration::from_millis(100),
                backoff_max: Duration::from_secs(5),
                health_check_interval: Duration::from_secs(1),
                tls: TlsSettings::default(),
            },
        }
    }
}

impl RedisMirrorBuilder {
    /// The prefix of the Redis keys (default `"clusterfy"`): the state is the hash
    /// `<prefix>:data`, and a resync builds its new content in `<prefix>:resync`. Each primary
    /// needs a prefix of its own.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings.key_prefix = prefix.into();
        self
    }

    /// How many writes may wait for Redis (default 100,000). A put or delete counts one, a batch
    /// one per operation. When a write finds the queue full, the queue is dropped, a
    /// [`StorageNotice::Overflow`](clusterfy_core::StorageNotice::Overflow) is sent, and once Redis
    /// is reachable it is rewritten from memory as a whole (a resync): no write is lost, but the
    /// intermediate states the dropped writes went through never appear in Redis.
    #[must_use]
    pub fn queue_capacity(mut self, writes: usize) -> Self {
        self.settings.queue_capacity = writes;
        self
    }

    /// When writes return: [`AckMode::Memory`] (default) or [`AckMode::Redis`].
    #[must_use]
    pub fn ack(mut self, mode: AckMode) -> Self {
        self.settings.ack = mode;
        self
    }

    /// How long a write in [`AckMode::Redis`], a `flush` in that mode, or
    /// [`RedisMirror::wait_mirrored`] waits for Redis before failing with
    /// [`ErrorKind::Timeout`](clusterfy_core::ErrorKind::Timeout) (default
    /// [`DEFAULT_ACK_TIMEOUT`], 5 s). The write stays applied in memory and queued for Redis
    /// either way.
    ///
    /// **Keep it below the workers' request timeout** (`WorkerBuilder::request_timeout` in the
    /// `clusterfy` facade, 10 s by default). A worker's save is a request to the primary, which
    /// answers it once the mirror has: with an `ack_timeout` as long or longer, the worker gives up
    /// first and reports only "no reply from the primary within 10s; the handler may be stuck",
    /// instead of the mirror's error that says Redis is unreachable. The shared storage applies
    /// writes one at a time, so a save queued behind one that waits for Redis waits in turn:
    /// leave room for that, or raise the request timeout along with this one. (The primary's own
    /// saves have no request timeout: they wait `ack_timeout`.)
    #[must_use]
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.settings.ack_timeout = timeout;
        self
    }

    /// How long one attempt to connect to Redis may take (default 5 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// How long Redis may take to answer one request before the connection counts as lost
    /// (default 10 s). The initial load of the state is one request, so make this long enough
    /// for it on large states.
    #[must_use]
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.settings.response_timeout = timeout;
        self
    }

    /// The pause after the first failed reconnect attempt, doubled after each further one up to
    /// `max` (default 100 ms up to 5 s).
    #[must_use]
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.settings.backoff_initial = initial;
        self.settings.backoff_max = max;
        self
    }

    /// How often an idle mirror checks that Redis is still the server it wrote to (default 1 s).
    /// A Redis that restarted empty while no one wrote is thereby rewritten from memory without
    /// waiting for the next write.
    #[must_use]
    pub fn health_check_interval(mut self, interval: Duration) -> Self {
        self.settings.health_check_interval = interval;
        self
    }

    /// For a `rediss://` URL: trusts the certificate authorities in `pem` (one or more PEM
    /// certificates, `-----BEGIN CERTIFICATE-----`) instead of the system's, to verify the
    /// server's certificate with. For a server whose certificate comes from a private authority.
    ///
    /// The host in the URL must still be a name or IP address the server's certificate is made out
    /// to. `connect` fails with [`ErrorKind::Config`](clusterfy_core::ErrorKind::Config) if `pem`
    /// holds no certificate, or if the URL is not a `rediss://` one.
    #[must_use]
    pub fn tls_ca_cert(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.settings.tls.ca_cert = Some(Pem::Bytes(pem.into()));
        self
    }

    /// Like [`tls_ca_cert`](RedisMirrorBuilder::tls_ca_cert), with the PEM read from the file at
    /// `path` when the mirror connects (a file that cannot be read is a
    /// [`ErrorKind::Config`](clusterfy_core::ErrorKind::Config) error naming it).
    #[must_use]
    pub fn tls_ca_cert_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.settings.tls.ca_cert = Some(Pem::File(path.into()));
        self
    }

    /// For a `rediss://` URL: presents the client certificate `cert_pem` (the certificate, then
    /// any intermediates) with its private key `key_pem` (PKCS#8, PKCS#1 or SEC1 PEM), for servers
    /// that require one (`tls-auth-clients yes`, Redis's default when TLS is on). The key is never
    /// shown in `Debug` output.
    #[must_use]
    pub fn tls_client_cert(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.settings.tls.client_cert = Some((Pem::Bytes(cert_pem.into()), Pem::Bytes(key_pem.into())));
        self
    }

    /// Like [`tls_client_cert`](RedisMirrorBuilder::tls_client_cert), with both read from files
    /// when the mirror connects.
    #[must_use]
    pub fn tls_client_cert_files(
        mut self,
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Self {
        self.settings.tls.client_cert = Some((Pem::File(cert_path.into()), Pem::File(key_path.into())));
        self
    }

    /// Connects to Redis, loads the state (every field of the hash `<prefix>:data`) into
    /// memory, and starts the mirror task on the current tokio runtime.
    ///
    /// Fails, rather than starting empty, when Redis cannot be reached: the state lives there
    /// between runs, and starting without it would overwrite it. Errors:
    /// [`ErrorKind::Config`](clusterfy_core::ErrorKind::Config) for a bad URL or option, when
    /// not called within a tokio runtime, or when the TLS handshake fails (the server's certificate
    /// is not trusted, the server wants a client certificate, or the port does not speak TLS);
    /// [`ErrorKind::Storage`](clusterfy_core::ErrorKind::Storage) when Redis is unreachable,
    /// refuses the credentials, or `<prefix>:data` is not a hash.
    pub async fn connect(self) -> Result<RedisMirror> {
        self.settings.validate()?;
        Ok(RedisMirror::start(self.settings).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let builder = RedisMirror::builder("redis://user:hunter2@example:6379").key_prefix("p");
        let shown = format!("{builder:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redis://user:***@example:6379"), "{shown}");
        assert!(shown.contains("key_prefix: \"p\""), "{shown}");
    }

    #[test]
    fn debug_of_a_tls_builder_hides_the_password_and_the_client_key() {
        let builder = RedisMirror::builder("rediss://:hunter2@example:6380/0")
            .tls_ca_cert_file("/etc/redis/ca.pem")
            .tls_client_cert(b"cert".to_vec(), b"-----BEGIN PRIVATE KEY----- hunter3".to_vec());
        let shown = format!("{builder:?}");
        assert!(shown.contains("rediss://:***@example:6380/0"), "{shown}");
        assert!(shown.contains("/etc/redis/ca.pem"), "{shown}");
        assert!(!shown.contains("hunter2") && !shown.contains("hunter3"), "{shown}");
    }

    #[test]
    fn keys_are_named_after_the_prefix() {
        let builder = RedisMirror::builder("redis://x").key_prefix("app:1");
        assert_eq!(builder.settings.data_key(), "app:1:data");
        assert_eq!(builder.settings.resync_key(), "app:1:resync");
    }

    #[test]
    fn bad_options_are_config_errors() {
        let base = || RedisMirror::builder("redis://127.0.0.1:1");
        let cases = [
            (base().key_prefix(""), "key_prefix"),
            (base().queue_capacity(0), "queue_capacity"),
            (base().ack_timeout(Duration::ZERO), "ack_timeout"),
            (base().reconnect_backoff(Duration::from_secs(2), Duration::from_secs(1)), "backoff"),
        ];
        for (builder, named) in cases {
            let err = clusterfy_core::Error::from(builder.settings.validate().expect_err(named));
            assert_eq!(err.kind(), clusterfy_core::ErrorKind::Config, "{err}");
            assert!(err.message().contains(named), "{err}");
        }
    }
}
