//! One connection's protocol state, sans IO: the requests this side waits on, the peer's requests
//! being answered (and the cap on how many at once), what each incoming frame means, the answer
//! that always goes back, and the notice sent before hanging up. The driver around it (the
//! facade's `link.rs`) only reads and writes bytes and wakes tasks.

use std::time::Instant;

use super::RequestTable;
use crate::codec::{encode_done_reply, encode_frame};
use crate::error::{Error, ErrorKind, Result, WireError};
use crate::protocol::{Message, Notice, Reply, Request, RequestId};

/// What an incoming frame means for this side.
#[derive(Debug)]
pub enum Incoming<W> {
    /// The answer to a request of ours: give `result` to `waiter`.
    Answer {
        /// Who waits for it.
        waiter: W,
        /// The answer.
        result: std::result::Result<Reply, WireError>,
    },
    /// An answer nobody waits for any more: its request timed out or was given up.
    Late {
        /// The request's id.
        id: RequestId,
    },
    /// The peer's request: handle it, and answer it exactly once ([`encode_answer`]), then tell
    /// the connection ([`LinkState::answered`]).
    Request {
        /// Its id, for the answer.
        id: RequestId,
        /// What it asks.
        body: Request,
    },
    /// A one-way notice.
    Notice(Notice),
    /// A handshake frame once the handshake is over: ignored.
    Misplaced(&'static str),
}

/// The state of one authenticated connection.
#[derive(Debug)]
pub struct LinkState<W> {
    requests: RequestTable<W>,
    /// The peer's requests handed out and not yet answered.
    answering: usize,
    /// Past this many, reading pauses: a peer that pipelines without reading its replies slows
    /// itself down instead of growing this process's memory.
    max_answering: usize,
}

impl<W> LinkState<W> {
    /// A connection that handles at most `max_answering` of the peer's requests at once.
    pub fn new(max_answering: usize) -> Self {
        LinkState { requests: RequestTable::new(), answering: 0, max_answering: max_answering.max(1) }
    }

    /// What `message`, just read, means. A request counts as being answered until
    /// [`LinkState::answered`].
    pub fn receive(&mut self, message: Message) -> Incoming<W> {
        match message {
            Message::Reply { id, result } => match self.requests.finish(id) {
                Some(waiter) => Incoming::Answer { waiter, result },
                None => Incoming::Late { id },
            },
            Message::Request { id, body } => {
                self.answering += 1;
                Incoming::Request { id, body }
            }
            Message::Notice(notice) => Incoming::Notice(notice),
            Message::Hello(_) => Incoming::Misplaced("Hello"),
            Message::Welcome(_) => Incoming::Misplaced("Welcome"),
        }
    }

    /// Whether the driver must stop reading until a request is answered.
    pub fn reading_paused(&self) -> bool {
        self.answering >= self.max_answering
    }

    /// One of the peer's requests was answered. True if that lets reading go on again.
    pub fn answered(&mut self) -> bool {
        let was_paused = self.reading_paused();
        self.answering = self.answering.saturating_sub(1);
        was_paused && !self.reading_paused()
    }

    /// The peer's requests handed out and not yet answered.
    pub fn answering(&self) -> usize {
        self.answering
    }

    /// Registers a request of ours, to be answered by `deadline`; fails once closed.
    pub fn start(&mut self, waiter: W, deadline: Instant) -> Result<RequestId> {
        self.requests.start(waiter, deadline)
    }

    /// Forgets a request whose caller stopped waiting: a late answer finds nothing.
    pub fn abandon(&mut self, id: RequestId) {
        self.requests.abandon(id);
    }

    /// Takes the waiters of requests past their deadline at `now`, to fail each once.
    pub fn expire(&mut self, now: Instant) -> Vec<W> {
        self.requests.expire(now)
    }

    /// Whether requests of ours are in flight.
    pub fn is_waiting(&self) -> bool {
        !self.requests.is_empty()
    }

    /// The connection ended: every waiter is handed back to be failed once; later requests fail
    /// at once.
    pub fn close(&mut self) -> Vec<W> {
        self.requests.close()
    }

    /// Whether [`LinkState::close`] ran.
    pub fn is_closed(&self) -> bool {
        self.requests.is_closed()
    }
}

/// What to tell the peer before hanging up after `error` ended reading: a protocol error is
/// explained (the peer may be a misbuilt but honest program); a broken stream needs no word.
pub fn farewell(error: &Error) -> Option<Message> {
    (error.kind() == ErrorKind::Protocol).then(|| Message::Notice(Notice::Error(WireError::from(error))))
}

/// Appends the answer to the peer's request `id` to `out`: `result`, or, when that does not fit
/// in a frame of `max_frame_len`, an error saying so, so the asker gets exactly one answer
/// whatever happens. Returns the error that replaced a too-large answer, for the log.
pub fn encode_answer(
    id: RequestId,
    result: std::result::Result<Reply, WireError>,
    max_frame_len: usize,
    out: &mut Vec<u8>,
) -> Option<Error> {
    if let Ok(Reply::Done) = result {
        // Every acknowledged write: its few bytes by hand.
        encode_done_reply(id, out);
        return None;
    }
    let too_large = encode_frame(&Message::Reply { id, result }, max_frame_len, out).err()?;
    let fallback = Message::Reply { id, result: Err(WireError::from(&too_large)) };
    if encode_frame(&fallback, max_frame_len, out).is_err() {
        // Only a frame limit too small for any error: say it in as few bytes as there are.
        let bare =
            WireError { kind: ErrorKind::Protocol, message: "answer too large".into(), context: Vec::new() };
        let _ = encode_frame(&Message::Reply { id, result: Err(bare) }, max_frame_len, out);
    }
    Some(too_large)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::codec::FrameDecoder;
    use crate::protocol::StorageRequest;
    use crate::value::Value;

    /// One thing that can happen to a connection.
    #[derive(Debug, Clone)]
    enum Step {
        /// We ask; the waiter is its number.
        Ask,
        /// The peer answers one of our requests (by position among all ids ever used, or one
        /// never used).
        Answer(usize),
        /// The peer asks.
        PeerAsks,
        /// We answer one of the peer's requests.
        WeAnswer,
        /// Our caller stops waiting.
        GiveUp(usize),
        /// Time passes.
        Wait(u64),
        /// The peer sends a handshake frame.
        Hello,
        Close,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::Ask),
            3 => (0usize..40).prop_map(Step::Answer),
            3 => Just(Step::PeerAsks),
            3 => Just(Step::WeAnswer),
            1 => (0usize..40).prop_map(Step::GiveUp),
            1 => (0u64..3000).prop_map(Step::Wait),
            1 => Just(Step::Hello),
            1 => Just(Step::Close),
        ]
    }

    proptest! {
        /// Every request of ours ends exactly once (answered, timed out, given up or failed at
        /// the close) and a late answer reaches nobody; reading pauses exactly while the cap of
        /// the peer's requests is reached, and resumes when one is answered.
        #[test]
        fn every_request_ends_once_and_reading_pauses_exactly_at_the_cap(
            steps in prop::collection::vec(step(), 1..200),
            max_answering in 1usize..6,
        ) {
            let mut connection = LinkState::new(max_answering);
            let start = Instant::now();
            let mut now = start;
            let mut ids: Vec<RequestId> = Vec::new();
            let mut ended = vec![];
            let (mut asked, mut peer_waiting) = (0usize, 0usize);
            for step in steps {
                match step {
                    Step::Ask => match connection.start(asked, now + Duration::from_secs(1)) {
                        Ok(id) => {
                            ids.push(id);
                            ended.push(0u32);
                            asked += 1;
                        }
                        Err(err) => prop_assert!(connection.is_closed(), "{err}"),
                    },
                    Step::Answer(n) => {
                        let id = ids.get(n).copied().unwrap_or(u64::MAX);
                        match connection.receive(Message::Reply { id, result: Ok(Reply::Done) }) {
                            Incoming::Answer { waiter, .. } => {
                                prop_assert_eq!(ids[waiter], id, "the answer reached its own waiter");
                                ended[waiter] += 1;
                            }
                            Incoming::Late { id: late } => prop_assert_eq!(late, id),
                            other => prop_assert!(false, "{other:?}"),
                        }
                    }
                    Step::PeerAsks => {
                        if connection.reading_paused() {
                            // The driver reads nothing more until an answer.
                            continue;
                        }
                        let body = Request::Storage(StorageRequest::Get { path: "a".into() });
                        let incoming = connection.receive(Message::Request { id: 7, body });
                        prop_assert!(matches!(incoming, Incoming::Request { id: 7, .. }), "{incoming:?}");
                        peer_waiting += 1;
                    }
                    Step::WeAnswer => {
                        if peer_waiting > 0 {
                            let paused = connection.reading_paused();
                            let resumes = connection.answered();
                            peer_waiting -= 1;
                            prop_assert_eq!(resumes, paused, "reading resumes exactly when it was paused");
                        }
                    }
                    Step::GiveUp(n) => {
                        if let Some(&id) = ids.get(n) {
                            connection.abandon(id);
                            if ended[n] == 0 {
                                ended[n] = 1;
                            }
                        }
                    }
                    Step::Wait(ms) => {
                        now += Duration::from_millis(ms);
                        for waiter in connection.expire(now) {
                            ended[waiter] += 1;
                        }
                    }
                    Step::Hello => {
                        let hello = Message::Hello(crate::protocol::Hello {
                            protocol_version: 1,
                            worker_id: crate::protocol::WorkerId(1),
                            token: String::new(),
                        });
                        prop_assert!(matches!(connection.receive(hello), Incoming::Misplaced("Hello")));
                    }
                    Step::Close => {
                        for waiter in connection.close() {
                            ended[waiter] += 1;
                        }
                    }
                }
                prop_assert_eq!(connection.answering(), peer_waiting);
                prop_assert_eq!(connection.reading_paused(), peer_waiting >= max_answering);
                prop_assert!(ended.iter().all(|n| *n <= 1), "a request ended twice: {:?}", ended);
            }
            for waiter in connection.close() {
                ended[waiter] += 1;
            }
            prop_assert!(ended.iter().all(|n| *n == 1), "every request ended exactly once: {:?}", ended);
        }

        /// Whatever the answer and the frame limit, exactly one frame goes back, within the
        /// limit, for the asked id: the answer itself when it fits.
        #[test]
        fn exactly_one_answer_goes_back_within_the_frame_limit(
            id in any::<u64>(),
            text_len in 0usize..3000,
            as_error in any::<bool>(),
            // From well below the smallest limit a primary accepts (4 KiB) to above the answers.
            max_frame_len in 160usize..2000,
        ) {
            let text = "x".repeat(text_len);
            let result = if as_error {
                Err(WireError { kind: ErrorKind::Io, message: text, context: Vec::new() })
            } else {
                Ok(Reply::Value(Some(Value::String(text))))
            };
            let mut out = Vec::new();
            let replaced = encode_answer(id, result.clone(), max_frame_len, &mut out);
            let mut decoder = FrameDecoder::new(max_frame_len);
            decoder.buffer_mut().extend_from_slice(&out);
            let first = decoder.decode::<Message>().expect("a frame within the limit").expect("a whole frame");
            prop_assert_eq!(decoder.buffered_len(), 0, "exactly one frame");
            let Message::Reply { id: answered, result: got } = first else {
                return Err(TestCaseError::fail("not a reply"));
            };
            prop_assert_eq!(answered, id);
            if replaced.is_none() {
                prop_assert_eq!(got, result);
            } else {
                prop_assert!(got.is_err(), "a too-large answer becomes an error");
            }
        }
    }

    #[test]
    fn a_protocol_error_is_explained_before_hanging_up_and_a_broken_stream_is_not() {
        let violation = Error::new(ErrorKind::Protocol, "frame too large");
        assert!(matches!(farewell(&violation), Some(Message::Notice(Notice::Error(_)))));
        let broken = Error::io("reading", std::io::Error::other("reset"));
        assert!(farewell(&broken).is_none());
    }
}
