//! The handshake: the primary's check of a worker's Hello, and the worker's of the Welcome.

use crate::error::{Error, ErrorKind, Result};
use crate::protocol::{Hello, Message, PROTOCOL_VERSION, Welcome, WorkerId};

/// The primary's side of one worker's handshake: checks the first frame against the worker's id
/// and, for transports that authenticate with one, the one-time token it gave that worker.
#[derive(Debug)]
pub struct PrimaryHandshake {
    worker_id: WorkerId,
    /// `None` when the channel itself authenticates (it was inherited at spawn).
    token: Option<String>,
    spent: bool,
}

impl PrimaryHandshake {
    /// Expects worker `worker_id`, presenting `token` if one was given to it.
    pub fn new(worker_id: WorkerId, token: Option<String>) -> Self {
        PrimaryHandshake { worker_id, token, spent: false }
    }

    /// Checks the first frame of a connection. On success the handshake is spent: no later
    /// connection can pass it again.
    pub fn check_hello(&mut self, first: Message) -> Result<Hello> {
        let Message::Hello(hello) = first else {
            return Err(Error::new(
                ErrorKind::Protocol,
                "the first frame of a worker connection must be Hello",
            ));
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "worker speaks protocol version {}, this primary speaks {PROTOCOL_VERSION}; build both from the same clusterfy version",
                    hello.protocol_version
                ),
            )
            .with_context("worker_id", hello.worker_id));
        }
        if self.spent {
            return Err(Error::new(ErrorKind::Unauthorized, "this worker's handshake was already used")
                .with_context("worker_id", self.worker_id));
        }
        let token_ok =
            self.token.as_ref().is_none_or(|t| constant_time_eq(hello.token.as_bytes(), t.as_bytes()));
        if hello.worker_id != self.worker_id || !token_ok {
            return Err(Error::new(ErrorKind::Unauthorized, "connection refused: wrong worker id or token")
                .with_context("worker_id", self.worker_id));
        }
        self.spent = true;
        Ok(hello)
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The worker's check of the primary's first frame.
pub fn check_welcome(first: Message, expected: WorkerId) -> Result<Welcome> {
    match first {
        Message::Welcome(welcome) if welcome.protocol_version != PROTOCOL_VERSION => Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "primary speaks protocol version {}, this worker speaks {PROTOCOL_VERSION}",
                welcome.protocol_version
            ),
        )),
        Message::Welcome(welcome) if welcome.worker_id != expected => Err(Error::new(
            ErrorKind::Protocol,
            format!("primary welcomed worker #{} but this is worker #{expected}", welcome.worker_id),
        )),
        Message::Welcome(welcome) => Ok(welcome),
        Message::Notice(crate::protocol::Notice::Error(err)) => Err(Error::from(err)),
        _ => Err(Error::new(ErrorKind::Protocol, "the first frame from the primary must be Welcome")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(id: u64, token: &str) -> Message {
        Message::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            worker_id: WorkerId(id),
            token: token.into(),
        })
    }

    #[test]
    fn handshake_accepts_the_right_token_once() {
        let mut hs = PrimaryHandshake::new(WorkerId(3), Some("secret".into()));
        assert_eq!(hs.check_hello(hello(3, "wrong")).unwrap_err().kind(), ErrorKind::Unauthorized);
        assert_eq!(hs.check_hello(hello(4, "secret")).unwrap_err().kind(), ErrorKind::Unauthorized);
        assert!(hs.check_hello(hello(3, "secret")).is_ok());
        assert_eq!(hs.check_hello(hello(3, "secret")).unwrap_err().kind(), ErrorKind::Unauthorized);
    }

    #[test]
    fn an_inherited_channel_needs_no_token_but_the_right_id_once() {
        let mut hs = PrimaryHandshake::new(WorkerId(3), None);
        assert_eq!(hs.check_hello(hello(4, "")).unwrap_err().kind(), ErrorKind::Unauthorized);
        assert!(hs.check_hello(hello(3, "")).is_ok());
        assert_eq!(hs.check_hello(hello(3, "")).unwrap_err().kind(), ErrorKind::Unauthorized);
    }

    #[test]
    fn handshake_rejects_other_versions_and_other_first_frames() {
        let mut hs = PrimaryHandshake::new(WorkerId(1), Some("t".into()));
        let old = Message::Hello(Hello { protocol_version: 0, worker_id: WorkerId(1), token: "t".into() });
        assert_eq!(hs.check_hello(old).unwrap_err().kind(), ErrorKind::Protocol);
        assert_eq!(
            hs.check_hello(Message::Notice(crate::protocol::Notice::Ready)).unwrap_err().kind(),
            ErrorKind::Protocol
        );
        assert!(hs.check_hello(hello(1, "t")).is_ok(), "a refused attempt must not spend the token");
    }
}
