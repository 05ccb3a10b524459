//! A primary's side of one worker connection, sans IO, driven by an arbitrary sequence of what
//! can happen to it: bytes and well-formed frames from the peer, requests of ours started,
//! abandoned, timed out, the peer's requests answered, the connection closed. Checks that it
//! never panics, refuses everything before a valid Hello, hands every waiter back exactly once,
//! and counts the peer's requests so reading pauses exactly at its cap.
#![no_main]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use clusterfy_core::codec::{FrameDecoder, decode_payload, encode_done_reply, encode_frame};
use clusterfy_core::protocol::{Hello, Message, PROTOCOL_VERSION, Request, WorkerId};
use clusterfy_core::session::{Incoming, LinkState, PrimaryHandshake};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 4096;
const MAX_ANSWERING: usize = 8;
const WORKER: WorkerId = WorkerId(7);
const TOKEN: &str = "secret";

#[derive(Debug, Arbitrary)]
enum Op {
    /// Raw bytes from the peer.
    Bytes(Vec<u8>),
    /// A Hello, right or wrong.
    Hello { right_id: bool, right_token: bool, right_version: bool },
    /// The answer to one of our requests (by its place among those started), or to any id.
    Reply { to: u8, any: Option<u64> },
    /// A request of the peer's.
    Request { id: u64 },
    /// We start a request, due in that many milliseconds.
    Start { due_ms: u16 },
    /// We stop waiting for one of ours.
    Abandon { which: u8 },
    /// Time passes; overdue requests expire.
    Advance { ms: u16 },
    /// We answered one of the peer's requests.
    Answered,
    /// The connection ends.
    Close,
}

struct Driver {
    decoder: FrameDecoder,
    handshake: PrimaryHandshake,
    authenticated: bool,
    /// Reading stopped for good (a decoding or handshake error).
    broken: bool,
    link: LinkState<u32>,
    now: Instant,
    next_waiter: u32,
    /// Our requests: (id, waiter) in the order started.
    started: Vec<(u64, u32)>,
    handed_back: BTreeSet<u32>,
    peer_requests: usize,
    answered: usize,
}

impl Driver {
    fn hand_back(&mut self, waiter: u32) {
        assert!(self.handed_back.insert(waiter), "waiter {waiter} handed back twice");
        assert!(waiter < self.next_waiter, "a waiter that was never started");
    }

    fn feed(&mut self, bytes: &[u8]) {
        if self.broken {
            return;
        }
        self.decoder.feed(bytes);
        loop {
            let frame = match self.decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(_) => {
                    self.broken = true;
                    return;
                }
            };
            let Ok(message) = decode_payload::<Message>(&frame) else {
                self.broken = true;
                return;
            };
            if !self.authenticated {
                match self.handshake.check_hello(message) {
                    Ok(hello) => {
                        assert_eq!(hello.worker_id, WORKER);
                        assert_eq!(hello.token, TOKEN);
                        self.authenticated = true;
                    }
                    Err(_) => self.broken = true,
                }
                if self.broken {
                    return;
                }
                continue;
            }
            match self.link.receive(message) {
                Incoming::Answer { waiter, .. } => self.hand_back(waiter),
                Incoming::Request { .. } => self.peer_requests += 1,
                Incoming::Late { .. } | Incoming::Notice(_) | Incoming::Misplaced(_) => {}
            }
        }
    }

    fn frame(message: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(message, LIMIT, &mut out).expect("a small frame encodes");
        out
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut driver = Driver {
        decoder: FrameDecoder::new(LIMIT),
        handshake: PrimaryHandshake::new(WORKER, Some(TOKEN.to_owned())),
        authenticated: false,
        broken: false,
        link: LinkState::new(MAX_ANSWERING),
        now: Instant::now(),
        next_waiter: 0,
        started: Vec::new(),
        handed_back: BTreeSet::new(),
        peer_requests: 0,
        answered: 0,
    };
    for op in ops {
        match op {
            Op::Bytes(bytes) => driver.feed(&bytes),
            Op::Hello { right_id, right_token, right_version } => {
                let hello = Message::Hello(Hello {
                    protocol_version: if right_version { PROTOCOL_VERSION } else { PROTOCOL_VERSION + 1 },
                    worker_id: if right_id { WORKER } else { WorkerId(8) },
                    token: if right_token { TOKEN.to_owned() } else { "guess".to_owned() },
                });
                driver.feed(&Driver::frame(&hello));
            }
            Op::Reply { to, any } => {
                let id = any.or_else(|| driver.started.get(usize::from(to)).map(|(id, _)| *id)).unwrap_or(0);
                let mut out = Vec::new();
                encode_done_reply(id, &mut out);
                driver.feed(&out);
            }
            Op::Request { id } => {
                driver.feed(&Driver::frame(&Message::Request { id, body: Request::Shutdown }))
            }
            Op::Start { due_ms } => {
                let waiter = driver.next_waiter;
                let due = driver.now + Duration::from_millis(u64::from(due_ms));
                match driver.link.start(waiter, due) {
                    Ok(id) => {
                        assert!(!driver.link.is_closed());
                        assert!(driver.started.iter().all(|(other, _)| *other != id), "ids are unique");
                        driver.started.push((id, waiter));
                        driver.next_waiter += 1;
                    }
                    Err(_) => assert!(driver.link.is_closed(), "only a closed link refuses a request"),
                }
            }
            Op::Abandon { which } => {
                if let Some(&(id, waiter)) = driver.started.get(usize::from(which)) {
                    driver.link.abandon(id);
                    // Abandoned: never handed back, so count it as settled.
                    driver.handed_back.insert(waiter);
                }
            }
            Op::Advance { ms } => {
                driver.now += Duration::from_millis(u64::from(ms));
                for waiter in driver.link.expire(driver.now) {
                    driver.hand_back(waiter);
                }
            }
            Op::Answered => {
                if driver.answered < driver.peer_requests {
                    driver.answered += 1;
                    driver.link.answered();
                }
            }
            Op::Close => {
                for waiter in driver.link.close() {
                    driver.hand_back(waiter);
                }
                assert!(!driver.link.is_waiting());
            }
        }
        let answering = driver.peer_requests - driver.answered;
        assert_eq!(driver.link.answering(), answering);
        assert_eq!(driver.link.reading_paused(), answering >= MAX_ANSWERING);
    }
    // However it went, once closed every waiter came back (or was abandoned), exactly once.
    for waiter in driver.link.close() {
        driver.hand_back(waiter);
    }
    assert_eq!(driver.handed_back.len(), driver.next_waiter as usize, "a waiter was never handed back");
});
