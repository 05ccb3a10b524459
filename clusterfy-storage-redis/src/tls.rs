//! TLS (`rediss://`): the crypto provider, the certificates a builder was given, and telling TLS
//! failures apart from an unreachable server.

use std::fmt;
use std::path::PathBuf;
use std::sync::Once;

use redis::{ClientTlsConfig, RedisError, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::RedisMirrorError;
use crate::redact::SecretUrl;

/// PEM data given to the builder: the bytes, or a file read when the mirror connects.
#[derive(Clone)]
pub(crate) enum Pem {
    Bytes(Vec<u8>),
    File(PathBuf),
}

impl Pem {
    /// The PEM bytes; `option` names the builder option in the error.
    fn load(&self, option: &str) -> Result<Vec<u8>, RedisMirrorError> {
        match self {
            Pem::Bytes(bytes) => Ok(bytes.clone()),
            Pem::File(path) => std::fs::read(path).map_err(|err| {
                RedisMirrorError::Setting(format!("{option}: cannot read {}: {err}", path.display()))
            }),
        }
    }
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Certificates are public, but the bytes would drown the rest of the output.
            Pem::Bytes(bytes) => write!(f, "<{} bytes of PEM>", bytes.len()),
            Pem::File(path) => fmt::Debug::fmt(path, f),
        }
    }
}

/// The TLS options of a builder.
#[derive(Clone, Default)]
pub(crate) struct TlsSettings {
    /// The certificate authorities to trust instead of the system's.
    pub(crate) ca_cert: Option<Pem>,
    /// A client certificate chain and its private key.
    pub(crate) client_cert: Option<(Pem, Pem)>,
}

impl TlsSettings {
    fn is_set(&self) -> bool {
        self.ca_cert.is_some() || self.client_cert.is_some()
    }
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The private key is never shown, not even its file name.
        f.debug_struct("Tls")
            .field("ca_cert", &self.ca_cert)
            .field("client_cert", &self.client_cert.as_ref().map(|(cert, _key)| cert))
            .finish()
    }
}

/// Whether `url` asks for TLS (`rediss://`, or `valkeys://`, which the `redis` crate reads alike).
pub(crate) fn is_tls_url(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| {
        scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
    })
}

/// Checks that TLS options come with a TLS URL.
pub(crate) fn validate(url: &SecretUrl, tls: &TlsSettings) -> Result<(), RedisMirrorError> {
    if tls.is_set() && !is_tls_url(url.expose()) {
        return Err(RedisMirrorError::Setting(format!(
            "tls_ca_cert and tls_client_cert need a rediss:// URL, and the URL is {url}"
        )));
    }
    Ok(())
}

/// Makes rustls use *ring* for the process, unless the application installed a provider of its
/// own first (which then stays). Without a process-wide provider, rustls only picks one by itself
/// when exactly one is compiled in, and `#insecure` needs one installed.
pub(crate) fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // An error means another provider is installed already: the application chose it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The client for `url` with the TLS options; the URL is not contacted.
pub(crate) fn client(url: &SecretUrl, tls: &TlsSettings) -> Result<redis::Client, RedisMirrorError> {
    if is_tls_url(url.expose()) {
        install_crypto_provider();
    }
    let invalid = |source| RedisMirrorError::InvalidUrl { url: url.redacted().to_owned(), source };
    if !tls.is_set() {
        return redis::Client::open(url.expose()).map_err(invalid);
    }
    let root_cert = match &tls.ca_cert {
        Some(pem) => {
            let bytes = pem.load("tls_ca_cert")?;
            check_certificates(&bytes, "tls_ca_cert")?;
            Some(bytes)
        }
        None => None,
    };
    let client_tls = match &tls.client_cert {
        Some((cert, key)) => {
            let client_cert = cert.load("tls_client_cert (the certificate)")?;
            check_certificates(&client_cert, "tls_client_cert (the certificate)")?;
            let client_key = key.load("tls_client_cert (the private key)")?;
            if let Err(err) = PrivateKeyDer::from_pem_slice(&client_key) {
                return Err(RedisMirrorError::Setting(format!(
                    "tls_client_cert: the private key is not a PEM private key ({err})"
                )));
            }
            Some(ClientTlsConfig { client_cert, client_key })
        }
        None => None,
    };
    redis::Client::build_with_tls(url.expose(), TlsCertificates { client_tls, root_cert }).map_err(invalid)
}

/// Fails unless `pem` holds at least one certificate and nothing malformed.
fn check_certificates(pem: &[u8], option: &str) -> Result<(), RedisMirrorError> {
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|err| RedisMirrorError::Setting(format!("{option}: malformed PEM ({err})")))?;
        count += 1;
    }
    if count == 0 {
        return Err(RedisMirrorError::Setting(format!(
            "{option}: no certificate found (expected PEM: -----BEGIN CERTIFICATE-----)"
        )));
    }
    Ok(())
}

/// Why a TLS connection failed, when it is a TLS matter rather than an unreachable server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsFailure {
    /// The server's certificate was rejected: unknown authority, wrong name, expired...
    Untrusted,
    /// The server ended the handshake with an alert (often: it wants a client certificate).
    Refused,
    /// The server did not answer in TLS: probably a plain-text port.
    NotTls,
}

/// What kind of TLS failure `err` is, if any. rustls's error is only reachable through its text:
/// the `redis` crate wraps it in an `io::Error` behind an `Arc`.
pub(crate) fn failure(err: &RedisError) -> Option<TlsFailure> {
    let text = err.to_string();
    if text.contains("invalid peer certificate") {
        Some(TlsFailure::Untrusted)
    } else if text.contains("received fatal alert") {
        Some(TlsFailure::Refused)
    } else if text.contains("received corrupt message") || text.contains("peer is incompatible") {
        Some(TlsFailure::NotTls)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting_error(err: RedisMirrorError) -> String {
        let err = clusterfy_core::Error::from(err);
        assert_eq!(err.kind(), clusterfy_core::ErrorKind::Config, "{err}");
        err.to_string()
    }

    #[test]
    fn tls_options_need_a_tls_url() {
        let ca = TlsSettings { ca_cert: Some(Pem::Bytes(b"pem".to_vec())), client_cert: None };
        for url in ["rediss://h", "REDISS://h:1/#insecure", "valkeys://h"] {
            assert!(validate(&SecretUrl::new(url.into()), &ca).is_ok(), "{url}");
        }
        for url in ["redis://:s3cret@h", "unix:///r.sock"] {
            let shown = setting_error(validate(&SecretUrl::new(url.into()), &ca).unwrap_err());
            assert!(shown.contains("need a rediss:// URL"), "{shown}");
            assert!(!shown.contains("s3cret"), "{shown}");
        }
        assert!(validate(&SecretUrl::new("redis://h".into()), &TlsSettings::default()).is_ok());
    }

    #[test]
    fn unusable_certificates_are_config_errors_naming_the_option() {
        let url = SecretUrl::new("rediss://127.0.0.1:1".into());
        let with_ca = |pem| TlsSettings { ca_cert: Some(pem), client_cert: None };
        let cases = [
            (with_ca(Pem::Bytes(b"not PEM".to_vec())), "tls_ca_cert: no certificate found"),
            (
                with_ca(Pem::Bytes(
                    b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec(),
                )),
                "no certificate found",
            ),
            (
                with_ca(Pem::File("/nonexistent/ca.pem".into())),
                "tls_ca_cert: cannot read /nonexistent/ca.pem",
            ),
            (
                TlsSettings {
                    ca_cert: None,
                    client_cert: Some((Pem::File("/nonexistent/c.pem".into()), Pem::Bytes(Vec::new()))),
                },
                "tls_client_cert (the certificate): cannot read /nonexistent/c.pem",
            ),
        ];
        for (tls, expected) in cases {
            let shown = setting_error(client(&url, &tls).expect_err(expected));
            assert!(shown.contains(expected), "{shown}");
        }
    }

    #[test]
    fn debug_never_shows_the_client_key() {
        let tls = TlsSettings {
            ca_cert: Some(Pem::Bytes(vec![b'x'; 10])),
            client_cert: Some((Pem::File("/etc/c.pem".into()), Pem::Bytes(b"SECRET KEY".to_vec()))),
        };
        let shown = format!("{tls:?}");
        assert_eq!(shown, r#"Tls { ca_cert: Some(<10 bytes of PEM>), client_cert: Some("/etc/c.pem") }"#);
    }

    #[test]
    fn the_crypto_provider_is_installed_once_and_an_earlier_one_stays() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
