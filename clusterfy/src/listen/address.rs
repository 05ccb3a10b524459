//! [`ListenAddr`]: where a shared listener accepts connections.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clusterfy_core::{Error, ErrorKind};

/// A TCP address (IPv4 or IPv6) or the path of a Unix socket.
///
/// Parsed from `"0.0.0.0:8080"`, `"[::1]:0"` (port 0: the system picks a free one), or
/// `"unix:/run/app.sock"` (also any text that starts with `/` or `.`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ListenAddr {
    /// A TCP socket address.
    Tcp(SocketAddr),
    /// A Unix stream socket at this path.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(Error::new(ErrorKind::InvalidInput, "\"unix:\" needs a path after it"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if text.starts_with('/') || text.starts_with('.') {
            return Ok(ListenAddr::Unix(PathBuf::from(text)));
        }
        text.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{:?} is not an address to listen on: write an IP address and port (\"0.0.0.0:8080\", \
                     \"[::]:8080\") or a Unix socket path (\"unix:/run/app.sock\")",
                    clusterfy_core::error::excerpt(text)
                ),
            )
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(addr: SocketAddr) -> Self {
        ListenAddr::Tcp(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_and_unix_addresses_parse_and_print_back() {
        for text in ["0.0.0.0:8080", "[::1]:0", "unix:/run/app.sock"] {
            let addr: ListenAddr = text.parse().expect(text);
            assert_eq!(addr.to_string(), text);
        }
        assert_eq!(
            "/tmp/a.sock".parse::<ListenAddr>().expect("path"),
            ListenAddr::Unix("/tmp/a.sock".into())
        );
    }

    #[test]
    fn malformed_addresses_say_what_is_expected() {
        for text in ["localhost", "8080", "unix:", "1.2.3.4:99999"] {
            let err = text.parse::<ListenAddr>().expect_err(text);
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{text}");
        }
        let err = "http://x".parse::<ListenAddr>().expect_err("url");
        assert!(err.message().contains("0.0.0.0:8080"), "{err}");
    }
}
