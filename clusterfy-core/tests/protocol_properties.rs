//! Property tests of the wire protocol: framing (`clusterfy_core::codec`) over every [`Message`].
//!
//! The byte layout these tests pin is documented in `docs/protocol.md`; the tests named
//! `docs_*` fail when the code and that page drift apart.

#![allow(clippy::unwrap_used)] // Tests may panic; the lint is meant for library code.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::Config as ProptestConfig;
use serde::Serialize;
use serde::de::DeserializeOwned;

use clusterfy_core::codec::{DEFAULT_MAX_FRAME_LEN, FrameDecoder, HEADER_LEN, decode_payload, encode_frame};
use clusterfy_core::error::{ErrorKind, WireError};
use clusterfy_core::protocol::{
    BroadcastEntry, CommandRequest, Destination, Hello, Message, NodeChange, Notice, Origin,
    PROTOCOL_VERSION, ReplicaSnapshot, Reply, Request, ShutdownAck, StorageRequest, Welcome, WorkerId,
    WorkerSelector, WorkerStatus,
};
use clusterfy_core::value::{MAX_NESTING, Value};
use strategy::arb_value;

/// The crate's own strategy for values, included where its unit tests have it.
#[path = "../src/value/strategy.rs"]
mod strategy;

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// Every [`ErrorKind`], in declaration order (= wire variant index). Completeness is checked by
/// `docs_error_kind_indices_are_the_declaration_order`.
const ALL_ERROR_KINDS: [ErrorKind; 19] = [
    ErrorKind::NotFound,
    ErrorKind::InvalidPath,
    ErrorKind::InvalidInput,
    ErrorKind::Serialization,
    ErrorKind::Protocol,
    ErrorKind::Unauthorized,
    ErrorKind::Closed,
    ErrorKind::Timeout,
    ErrorKind::WorkerExited,
    ErrorKind::UnknownWorker,
    ErrorKind::UnknownCommand,
    ErrorKind::CommandFailed,
    ErrorKind::AlreadyExists,
    ErrorKind::Config,
    ErrorKind::InvalidState,
    ErrorKind::Io,
    ErrorKind::Storage,
    ErrorKind::Unsupported,
    ErrorKind::Busy,
];

/// Every [`WorkerStatus`], in declaration order.
const ALL_STATUSES: [WorkerStatus; 5] = [
    WorkerStatus::Initializing,
    WorkerStatus::Loaded,
    WorkerStatus::Idle,
    WorkerStatus::Processing,
    WorkerStatus::Stopping,
];

/// Short strings most of the time (readable shrinks), any Unicode sometimes.
fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[a-z._]{0,12}", 1 => any::<String>()]
}

fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..48)
}

fn arb_worker_id() -> impl Strategy<Value = WorkerId> {
    prop_oneof![(0_u64..8).prop_map(WorkerId), any::<u64>().prop_map(WorkerId)]
}

/// Request ids: small ones, and ones that need every byte of a varint.
fn arb_request_id() -> impl Strategy<Value = u64> {
    prop_oneof![0_u64..300, any::<u64>()]
}

fn arb_error_kind() -> impl Strategy<Value = ErrorKind> {
    select(ALL_ERROR_KINDS.to_vec())
}

fn arb_status() -> impl Strategy<Value = WorkerStatus> {
    select(ALL_STATUSES.to_vec())
}

prop_compose! {
    fn arb_wire_error()(
        kind in arb_error_kind(),
        message in arb_text(),
        context in vec((arb_text(), arb_text()), 0..3),
    ) -> WireError {
        WireError { kind, message, context }
    }
}

prop_compose! {
    fn arb_hello()(
        protocol_version in prop_oneof![Just(PROTOCOL_VERSION), any::<u32>()],
        worker_id in arb_worker_id(),
        token in arb_text(),
    ) -> Hello {
        Hello { protocol_version, worker_id, token }
    }
}

prop_compose! {
    fn arb_welcome()(
        protocol_version in prop_oneof![Just(PROTOCOL_VERSION), any::<u32>()],
        worker_id in arb_worker_id(),
        name in arb_text(),
        restarts in any::<u32>(),
    ) -> Welcome {
        Welcome { protocol_version, worker_id, name, restarts }
    }
}

fn arb_selector() -> impl Strategy<Value = WorkerSelector> {
    prop_oneof![arb_worker_id().prop_map(WorkerSelector::Id), arb_text().prop_map(WorkerSelector::Name)]
}

fn arb_destination() -> impl Strategy<Value = Destination> {
    prop_oneof![
        Just(Destination::Here),
        Just(Destination::Primary),
        arb_selector().prop_map(Destination::Worker),
        Just(Destination::AllWorkers),
    ]
}

fn arb_origin() -> impl Strategy<Value = Origin> {
    prop_oneof![
        Just(Origin::Primary),
        (arb_worker_id(), arb_text()).prop_map(|(id, name)| Origin::Worker { id, name }),
    ]
}

prop_compose! {
    fn arb_command_request()(
        name in arb_text(),
        destination in arb_destination(),
        origin in arb_origin(),
        payload in arb_bytes(),
    ) -> CommandRequest {
        CommandRequest { name, destination, origin, payload }
    }
}

fn arb_storage_request() -> BoxedStrategy<StorageRequest> {
    prop_oneof![
        arb_text().prop_map(|path| StorageRequest::Get { path }),
        (arb_text(), arb_value(), any::<bool>())
            .prop_map(|(path, value, create_parents)| StorageRequest::Save { path, value, create_parents }),
        arb_text().prop_map(|path| StorageRequest::Delete { path }),
        (arb_text(), proptest::option::of(arb_value()), proptest::option::of(arb_value()))
            .prop_map(|(path, expected, new)| StorageRequest::CompareAndSwap { path, expected, new }),
        arb_text().prop_map(|path| StorageRequest::Watch { path }),
        (arb_text(), arb_bytes(), any::<bool>())
            .prop_map(|(path, node, create_parents)| StorageRequest::SaveNode { path, node, create_parents }),
        (arb_text(), any::<i64>()).prop_map(|(path, by)| StorageRequest::Increment { path, by }),
        (arb_text(), any::<f64>().prop_filter("NaN never equals itself", |f| !f.is_nan()))
            .prop_map(|(path, by)| StorageRequest::IncrementFloat { path, by }),
        (arb_text(), arb_value()).prop_map(|(path, value)| StorageRequest::Append { path, value }),
        (arb_text(), arb_value()).prop_map(|(path, value)| StorageRequest::RemoveValue { path, value }),
        (arb_text(), arb_value()).prop_map(|(path, value)| StorageRequest::InsertIfAbsent { path, value }),
        arb_text().prop_map(|path| StorageRequest::Take { path }),
        (arb_text(), arb_text(), arb_bytes()).prop_map(|(path, operation, payload)| StorageRequest::Apply {
            path,
            operation,
            payload
        }),
        (arb_text(), any::<u64>()).prop_map(|(path, replica)| StorageRequest::Replicate { path, replica }),
    ]
    .boxed()
}

fn arb_node_change() -> BoxedStrategy<NodeChange> {
    prop_oneof![
        (arb_bytes(), arb_bytes()).prop_map(|(key, node)| NodeChange::Put { key, node }),
        arb_bytes().prop_map(|key| NodeChange::Delete { key }),
        arb_bytes().prop_map(|prefix| NodeChange::DeletePrefix { prefix }),
    ]
    .boxed()
}

prop_compose! {
    fn arb_snapshot()(
        replica in any::<u64>(),
        version in any::<u64>(),
        nodes in vec(arb_node_change(), 0..4),
        more in any::<bool>(),
    ) -> ReplicaSnapshot {
        ReplicaSnapshot { replica, version, nodes, more }
    }
}

fn arb_request() -> BoxedStrategy<Request> {
    prop_oneof![
        arb_storage_request().prop_map(Request::Storage),
        arb_command_request().prop_map(Request::Command),
        Just(Request::Shutdown),
    ]
    .boxed()
}

prop_compose! {
    fn arb_broadcast_entry()(
        worker_id in arb_worker_id(),
        name in arb_text(),
        result in prop_oneof![arb_bytes().prop_map(Ok), arb_wire_error().prop_map(Err)],
    ) -> BroadcastEntry {
        BroadcastEntry { worker_id, name, result }
    }
}

fn arb_reply() -> BoxedStrategy<Reply> {
    prop_oneof![
        Just(Reply::Done),
        proptest::option::of(arb_value()).prop_map(Reply::Value),
        prop_oneof![Just(Ok(())), proptest::option::of(arb_value()).prop_map(Err)].prop_map(Reply::Swapped),
        arb_bytes().prop_map(Reply::Command),
        vec(arb_broadcast_entry(), 0..4).prop_map(Reply::Broadcast),
        select(vec![ShutdownAck::Exiting, ShutdownAck::Stopping]).prop_map(Reply::Shutdown),
    ]
    .boxed()
}

fn arb_notice() -> impl Strategy<Value = Notice> {
    prop_oneof![
        arb_status().prop_map(Notice::Status),
        Just(Notice::Ready),
        arb_wire_error().prop_map(Notice::Error),
        arb_text().prop_map(|path| Notice::StorageChanged { path }),
        (any::<u64>(), any::<u64>(), vec(arb_node_change(), 0..4), any::<bool>()).prop_map(
            |(replica, version, changes, more)| Notice::ReplicaChanged { replica, version, changes, more }
        ),
        any::<u64>().prop_map(|replica| Notice::ReplicaLagged { replica }),
        arb_snapshot().prop_map(Notice::ReplicaReset),
        any::<u64>().prop_map(|replica| Notice::ReplicaDropped { replica }),
        (any::<u64>(), arb_wire_error())
            .prop_map(|(replica, error)| Notice::ReplicaFailed { replica, error }),
    ]
}

/// Any [`Message`]: every variant of it and of every enum inside it.
fn arb_message() -> BoxedStrategy<Message> {
    // Boxed (like the strategies it is made of): the nested strategy types of a whole message, monomorphised, make frames that
    // overflow a test thread's stack in debug builds.
    prop_oneof![
        arb_hello().prop_map(Message::Hello),
        arb_welcome().prop_map(Message::Welcome),
        (arb_request_id(), arb_request()).prop_map(|(id, body)| Message::Request { id, body }),
        (arb_request_id(), prop_oneof![arb_reply().prop_map(Ok), arb_wire_error().prop_map(Err)])
            .prop_map(|(id, result)| Message::Reply { id, result }),
        arb_notice().prop_map(Message::Notice),
    ]
    .boxed()
}

/// Bytes a hostile or broken peer might send: noise, valid frames, corrupted frames, frames
/// with a correct header around a random payload, and headers announcing random lengths.
fn arb_hostile_segment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..32),
        arb_message().prop_map(|m| frame(&m)),
        (arb_message(), any::<Index>(), any::<u8>()).prop_map(|(m, at, byte)| {
            let mut bytes = frame(&m);
            let at = at.index(bytes.len());
            bytes[at] ^= byte | 1;
            bytes
        }),
        // A correct header around a payload that starts with a plausible variant index.
        (0_u8..6, vec(any::<u8>(), 0..40)).prop_map(|(variant, rest)| {
            let mut payload = vec![variant];
            payload.extend(rest);
            header_then(payload.len() as u32, &payload)
        }),
        (any::<u32>(), vec(any::<u8>(), 0..16)).prop_map(|(len, rest)| header_then(len, &rest)),
    ]
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Proptest settings: modest case counts, and no regression files (shrunk failures become named
/// `// postmortem:` tests in this module instead).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn frame(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(message, DEFAULT_MAX_FRAME_LEN, &mut out).unwrap();
    out
}

fn header_then(len: u32, rest: &[u8]) -> Vec<u8> {
    let mut bytes = len.to_le_bytes().to_vec();
    bytes.extend_from_slice(rest);
    bytes
}

/// Turns arbitrary indexes into sorted, distinct cut points inside `0..=len`.
fn cut_points(len: usize, cuts: &[Index]) -> Vec<usize> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(len + 1)).collect();
    points.sort_unstable();
    points.dedup();
    points
}

/// What a decoder made of a byte stream: the messages decoded, and the kind of the error that
/// stopped it, if one did.
#[derive(Debug, PartialEq)]
struct Outcome {
    messages: Vec<Message>,
    error: Option<ErrorKind>,
}

/// Feeds `bytes` to a fresh decoder in the chunks `cuts` delimit, decoding everything complete
/// after each chunk, and stops at the first error (after an error the stream is unusable).
/// Chunks alternate between [`FrameDecoder::feed`] and [`FrameDecoder::buffer_mut`], the way
/// the drivers fill it.
fn decode_in_chunks(bytes: &[u8], cuts: &[usize], max_frame_len: usize) -> Outcome {
    let mut decoder = FrameDecoder::new(max_frame_len);
    let mut messages = Vec::new();
    let mut start = 0;
    let ends = cuts.iter().copied().chain([bytes.len()]);
    for (n, end) in ends.enumerate() {
        let chunk = &bytes[start..end];
        start = end;
        if n % 2 == 0 {
            decoder.feed(chunk);
        } else {
            decoder.buffer_mut().extend_from_slice(chunk);
        }
        loop {
            match decoder.decode::<Message>() {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                Err(err) => return Outcome { messages, error: Some(err.kind()) },
            }
        }
    }
    Outcome { messages, error: None }
}

/// The encoded bytes of `value` on its own (no frame header).
fn encoded<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).unwrap()
}

/// Checks that `T`'s variants are exactly `expected` (in wire order): each one encodes to its
/// position as the leading variant index, and the next index is refused.
fn assert_variants<T: Serialize + DeserializeOwned>(type_name: &str, expected: &[(&str, T)]) {
    for (index, (name, value)) in expected.iter().enumerate() {
        let bytes = encoded(value);
        assert_eq!(
            bytes.first().copied(),
            Some(index as u8),
            "{type_name}::{name} must be variant {index}, as docs/protocol.md says"
        );
    }
    let next = expected.len() as u8;
    assert!(
        postcard::from_bytes::<T>(&[next, 0, 0, 0, 0, 0, 0, 0, 0]).is_err(),
        "{type_name} has a variant {next} that docs/protocol.md does not list"
    );
}

/// A list value nested `depth` levels deep around a null.
fn nested_list(depth: usize) -> Value {
    let mut value = Value::Null;
    for _ in 0..depth {
        value = Value::List(vec![value]);
    }
    value
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn every_message_survives_encode_frame_and_frame_decoder(message in arb_message()) {
        let bytes = frame(&message);
        let payload_len = u32::from_le_bytes(bytes[..HEADER_LEN].try_into().unwrap()) as usize;
        prop_assert_eq!(payload_len, bytes.len() - HEADER_LEN, "the header holds the payload length");

        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
        decoder.feed(&bytes);
        prop_assert_eq!(decoder.decode::<Message>().unwrap(), Some(message));
        prop_assert_eq!(decoder.buffered_len(), 0);
        prop_assert_eq!(decoder.decode::<Message>().unwrap(), None);
    }

    #[test]
    fn a_frame_is_decoded_only_once_its_last_byte_is_in(message in arb_message()) {
        let bytes = frame(&message);
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
        let (last, init) = bytes.split_last().unwrap();
        for byte in init {
            decoder.feed(std::slice::from_ref(byte));
            prop_assert_eq!(decoder.decode::<Message>().unwrap(), None);
        }
        decoder.feed(std::slice::from_ref(last));
        prop_assert_eq!(decoder.decode::<Message>().unwrap(), Some(message));
    }

    #[test]
    fn a_stream_of_frames_split_anywhere_decodes_to_the_same_messages(
        messages in vec(arb_message(), 1..6),
        cuts in vec(any::<Index>(), 0..12),
    ) {
        let mut stream = Vec::new();
        for message in &messages {
            encode_frame(message, DEFAULT_MAX_FRAME_LEN, &mut stream).unwrap();
        }
        let cuts = cut_points(stream.len(), &cuts);
        let outcome = decode_in_chunks(&stream, &cuts, DEFAULT_MAX_FRAME_LEN);
        prop_assert_eq!(outcome, Outcome { messages, error: None });
    }

    #[test]
    fn a_payload_exactly_at_the_maximum_passes_and_one_byte_over_is_refused(message in arb_message()) {
        let len = encoded(&message).len();

        let mut out = Vec::new();
        encode_frame(&message, len, &mut out).unwrap();
        let mut decoder = FrameDecoder::new(len);
        decoder.feed(&out);
        prop_assert_eq!(decoder.decode::<Message>().unwrap(), Some(message.clone()));

        let mut strict = FrameDecoder::new(len - 1);
        strict.feed(&out[..HEADER_LEN]);
        prop_assert_eq!(strict.decode::<Message>().unwrap_err().kind(), ErrorKind::Protocol);
    }

    #[test]
    fn encode_frame_refuses_an_oversize_message_and_leaves_the_buffer_byte_for_byte_unchanged(
        earlier in vec(arb_message(), 0..4),
        message in arb_message(),
        max in any::<Index>(),
    ) {
        let mut out = Vec::new();
        for m in &earlier {
            encode_frame(m, DEFAULT_MAX_FRAME_LEN, &mut out).unwrap();
        }
        let before = out.clone();
        let max = max.index(encoded(&message).len()); // strictly below the payload's length

        let err = encode_frame(&message, max, &mut out).unwrap_err();
        prop_assert_eq!(err.kind(), ErrorKind::Protocol);
        prop_assert_eq!(&out, &before);

        // The buffer still holds exactly the earlier frames, and takes more after the refusal.
        encode_frame(&message, DEFAULT_MAX_FRAME_LEN, &mut out).unwrap();
        let mut expected = earlier;
        expected.push(message);
        prop_assert_eq!(decode_in_chunks(&out, &[], DEFAULT_MAX_FRAME_LEN), Outcome { messages: expected, error: None });
    }

    #[test]
    fn decode_payload_refuses_trailing_bytes_with_a_protocol_error(
        message in arb_message(),
        trailing in vec(any::<u8>(), 1..16),
    ) {
        let mut payload = encoded(&message);
        payload.extend_from_slice(&trailing);
        prop_assert_eq!(decode_payload::<Message>(&payload).unwrap_err().kind(), ErrorKind::Protocol);

        // Through the decoder too: a header that counts the extra bytes makes an undecodable frame.
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
        decoder.feed(&header_then(payload.len() as u32, &payload));
        prop_assert_eq!(decoder.decode::<Message>().unwrap_err().kind(), ErrorKind::Protocol);
    }

    #[test]
    fn a_truncated_payload_is_a_protocol_error_never_a_shorter_message(
        message in arb_message(),
        cut in any::<Index>(),
    ) {
        let payload = encoded(&message);
        let cut = cut.index(payload.len()); // strictly shorter
        prop_assert_eq!(decode_payload::<Message>(&payload[..cut]).unwrap_err().kind(), ErrorKind::Protocol);
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_bytes_in_arbitrary_chunks_never_panic_and_chunking_changes_nothing(
        segments in vec(arb_hostile_segment(), 0..6),
        cuts in vec(any::<Index>(), 0..12),
        max_frame_len in prop_oneof![Just(DEFAULT_MAX_FRAME_LEN), 0_usize..96],
    ) {
        let bytes = segments.concat();
        let cuts = cut_points(bytes.len(), &cuts);
        let chunked = decode_in_chunks(&bytes, &cuts, max_frame_len);
        let whole = decode_in_chunks(&bytes, &[], max_frame_len);
        if let Some(kind) = whole.error {
            prop_assert_eq!(kind, ErrorKind::Protocol, "bad input is a protocol error");
        }
        prop_assert_eq!(chunked, whole);
    }

    #[test]
    fn arbitrary_payloads_never_panic_decode_payload(payload in vec(any::<u8>(), 0..128)) {
        if let Err(err) = decode_payload::<Message>(&payload) {
            prop_assert_eq!(err.kind(), ErrorKind::Protocol);
        }
    }

    #[test]
    fn an_oversize_header_is_refused_as_soon_as_its_four_bytes_are_in_without_reserving_memory(
        earlier in vec(arb_message(), 0..3),
        max_frame_len in prop_oneof![Just(DEFAULT_MAX_FRAME_LEN), 0_usize..4096],
        over in any::<u32>(),
        split in 1..HEADER_LEN,
    ) {
        let max = u32::try_from(max_frame_len).unwrap();
        let announced = over.max(max + 1);

        // Earlier frames that fit decode normally; the refusal is about the header that follows.
        let earlier: Vec<Message> = earlier.into_iter().filter(|m| encoded(m).len() <= max_frame_len).collect();
        let mut stream = Vec::new();
        for m in &earlier {
            encode_frame(m, max_frame_len, &mut stream).unwrap();
        }
        let mut decoder = FrameDecoder::new(max_frame_len);
        decoder.feed(&stream);
        for expected in &earlier {
            prop_assert_eq!(decoder.decode::<Message>().unwrap(), Some(expected.clone()));
        }

        let header = announced.to_le_bytes();
        let (first, rest) = header.split_at(split);
        decoder.feed(first);
        prop_assert_eq!(decoder.decode::<Message>().unwrap(), None, "part of a header is not a length yet");
        decoder.feed(rest);
        prop_assert_eq!(decoder.decode::<Message>().unwrap_err().kind(), ErrorKind::Protocol);
        prop_assert!(decoder.buffer_mut().capacity() < 64 * 1024, "nothing reserved for a refused frame");
        // The stream stays refused.
        prop_assert_eq!(decoder.decode::<Message>().unwrap_err().kind(), ErrorKind::Protocol);
    }
}

// ---------------------------------------------------------------------------------------------
// Examples
// ---------------------------------------------------------------------------------------------

#[test]
fn the_header_of_a_one_gib_frame_is_refused_before_any_memory_is_reserved() {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    let capacity_before = decoder.buffer_mut().capacity();
    decoder.feed(&(1_u32 << 30).to_le_bytes());
    let err = decoder.decode::<Message>().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol);
    assert!(err.message().contains("1073741824"), "{err}");
    let capacity = decoder.buffer_mut().capacity();
    assert!(capacity < 64 * 1024, "capacity grew from {capacity_before} to {capacity} for a refused frame");
}

#[test]
fn a_frame_at_the_default_maximum_is_accepted_and_one_byte_more_is_not() {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    decoder.feed(&u32::try_from(DEFAULT_MAX_FRAME_LEN).unwrap().to_le_bytes());
    assert_eq!(
        decoder.decode::<Message>().unwrap(),
        None,
        "a 16 MiB frame is allowed; its payload is awaited"
    );

    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    decoder.feed(&u32::try_from(DEFAULT_MAX_FRAME_LEN + 1).unwrap().to_le_bytes());
    assert_eq!(decoder.decode::<Message>().unwrap_err().kind(), ErrorKind::Protocol);
}

#[test]
fn an_undecodable_frame_is_a_protocol_error() {
    // Variant 9 of Message does not exist.
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    decoder.feed(&header_then(1, &[9]));
    assert_eq!(decoder.decode::<Message>().unwrap_err().kind(), ErrorKind::Protocol);
    // An empty payload is not a message either.
    assert_eq!(decode_payload::<Message>(&[]).unwrap_err().kind(), ErrorKind::Protocol);
}

#[test]
fn a_frame_nested_far_too_deep_is_a_protocol_error_and_leaves_the_depth_counter_clean() {
    // Reply { id: 1, result: Ok(Value(Some(List[List[...]]))) } with 10 000 levels.
    let mut payload = vec![3, 1, 0, 1, 1];
    for _ in 0..10_000 {
        payload.extend_from_slice(&[7, 1]);
    }
    payload.push(0);
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    decoder.feed(&header_then(payload.len() as u32, &payload));
    assert_eq!(decoder.decode::<Message>().unwrap_err().kind(), ErrorKind::Protocol);

    // The refused frame must not leave nesting levels counted on this thread: the deepest legal
    // value still decodes afterwards.
    let deepest = Message::Reply { id: 2, result: Ok(Reply::Value(Some(nested_list(MAX_NESTING)))) };
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    decoder.feed(&frame(&deepest));
    assert_eq!(decoder.decode::<Message>().unwrap(), Some(deepest));
}

#[test]
fn docs_hello_frame_for_worker_1_with_token_ab_is_exactly_these_bytes() {
    // The worked example of docs/protocol.md.
    let hello = Message::Hello(Hello { protocol_version: 1, worker_id: WorkerId(1), token: "ab".into() });
    assert_eq!(PROTOCOL_VERSION, 1, "docs/protocol.md shows protocol version 1; update the example");
    let bytes = frame(&hello);
    assert_eq!(bytes, [0x06, 0x00, 0x00, 0x00, 0x00, 0x01, 0x01, 0x02, 0x61, 0x62]);

    // A real token has 64 hex characters: 68 payload bytes, token length 0x40.
    let real = Message::Hello(Hello { protocol_version: 1, worker_id: WorkerId(1), token: "f".repeat(64) });
    let bytes = frame(&real);
    assert_eq!(bytes[..8], [0x44, 0x00, 0x00, 0x00, 0x00, 0x01, 0x01, 0x40]);
    assert_eq!(bytes.len(), 8 + 64);
}

#[test]
fn docs_postcard_basics_hold() {
    // Unsigned varints: 7 bits a byte, low group first, high bit = "more follows".
    assert_eq!(encoded(&0_u64), [0x00]);
    assert_eq!(encoded(&127_u64), [0x7f]);
    assert_eq!(encoded(&128_u64), [0x80, 0x01]);
    assert_eq!(encoded(&300_u32), [0xac, 0x02]);
    assert_eq!(encoded(&u64::MAX).len(), 10);
    assert_eq!(postcard::from_bytes::<u32>(&[0x80, 0x00]).unwrap(), 0, "longer forms are read too");
    // Signed integers: zigzag, then varint.
    assert_eq!(encoded(&0_i64), [0x00]);
    assert_eq!(encoded(&-1_i64), [0x01]);
    assert_eq!(encoded(&1_i64), [0x02]);
    // f64: 8 bytes little-endian.
    assert_eq!(encoded(&1.0_f64), 1.0_f64.to_le_bytes());
    // bool: one byte 0 or 1; anything else is refused.
    assert_eq!(encoded(&true), [0x01]);
    assert!(postcard::from_bytes::<bool>(&[2]).is_err());
    // Strings and byte strings: varint length, then the bytes.
    assert_eq!(encoded("ab"), [0x02, 0x61, 0x62]);
    assert_eq!(encoded(&vec![7_u8, 8]), [0x02, 0x07, 0x08]);
    assert_eq!(encoded(&Value::Bytes(vec![7, 8])), [0x06, 0x02, 0x07, 0x08]);
    // Option: tag 0 = None, 1 = Some followed by the value; any other tag is refused.
    assert_eq!(encoded(&None::<u8>), [0x00]);
    assert_eq!(encoded(&Some(5_u8)), [0x01, 0x05]);
    assert!(postcard::from_bytes::<Option<u8>>(&[2, 5]).is_err());
    // Result: variant 0 = Ok, 1 = Err.
    assert_eq!(encoded(&Ok::<u8, u8>(5)), [0x00, 0x05]);
    assert_eq!(encoded(&Err::<u8, u8>(5)), [0x01, 0x05]);
    // Structs and tuples: fields in order, nothing between them; WorkerId is its u64.
    assert_eq!(encoded(&WorkerId(300)), [0xac, 0x02]);
    assert_eq!(encoded(&(1_u8, "a")), [0x01, 0x01, 0x61]);
    // Maps: varint count, then key, value, key, value, ... (Value::Map is sorted by key).
    let map = Value::Map([("a".to_owned(), Value::Int(1))].into_iter().collect());
    assert_eq!(encoded(&map), [0x08, 0x01, 0x01, 0x61, 0x02, 0x02]);
}

#[test]
fn docs_message_variant_indices_are_the_declaration_order() {
    let hello = Hello { protocol_version: 1, worker_id: WorkerId(1), token: String::new() };
    let welcome = Welcome { protocol_version: 1, worker_id: WorkerId(1), name: String::new(), restarts: 0 };
    assert_variants::<Message>(
        "Message",
        &[
            ("Hello", Message::Hello(hello)),
            ("Welcome", Message::Welcome(welcome)),
            ("Request", Message::Request { id: 0, body: Request::Shutdown }),
            ("Reply", Message::Reply { id: 0, result: Ok(Reply::Done) }),
            ("Notice", Message::Notice(Notice::Ready)),
        ],
    );
}

#[test]
fn docs_request_and_storage_request_variant_indices_are_the_declaration_order() {
    let command = CommandRequest {
        name: String::new(),
        destination: Destination::Here,
        origin: Origin::Primary,
        payload: Vec::new(),
    };
    assert_variants::<Request>(
        "Request",
        &[
            ("Storage", Request::Storage(StorageRequest::Get { path: String::new() })),
            ("Command", Request::Command(command)),
            ("Shutdown", Request::Shutdown),
        ],
    );
    assert_variants::<StorageRequest>(
        "StorageRequest",
        &[
            ("Get", StorageRequest::Get { path: String::new() }),
            ("Save", StorageRequest::Save { path: String::new(), value: Value::Null, create_parents: false }),
            ("Delete", StorageRequest::Delete { path: String::new() }),
            (
                "CompareAndSwap",
                StorageRequest::CompareAndSwap { path: String::new(), expected: None, new: None },
            ),
            ("Watch", StorageRequest::Watch { path: String::new() }),
            (
                "SaveNode",
                StorageRequest::SaveNode { path: String::new(), node: Vec::new(), create_parents: false },
            ),
            ("Increment", StorageRequest::Increment { path: String::new(), by: 0 }),
            ("IncrementFloat", StorageRequest::IncrementFloat { path: String::new(), by: 0.0 }),
            ("Append", StorageRequest::Append { path: String::new(), value: Value::Null }),
            ("RemoveValue", StorageRequest::RemoveValue { path: String::new(), value: Value::Null }),
            ("InsertIfAbsent", StorageRequest::InsertIfAbsent { path: String::new(), value: Value::Null }),
            ("Take", StorageRequest::Take { path: String::new() }),
            (
                "Apply",
                StorageRequest::Apply { path: String::new(), operation: String::new(), payload: Vec::new() },
            ),
            ("Replicate", StorageRequest::Replicate { path: String::new(), replica: 0 }),
        ],
    );
    assert_variants::<NodeChange>(
        "NodeChange",
        &[
            ("Put", NodeChange::Put { key: Vec::new(), node: Vec::new() }),
            ("Delete", NodeChange::Delete { key: Vec::new() }),
            ("DeletePrefix", NodeChange::DeletePrefix { prefix: Vec::new() }),
        ],
    );
}

/// docs/protocol.md, section 3, spells out these frames byte by byte.
#[test]
fn docs_atomic_operation_requests_have_the_documented_bytes() {
    let payload =
        |request: StorageRequest| encoded(&Message::Request { id: 7, body: Request::Storage(request) });
    // Message::Request (2), id 7, Request::Storage (0), then the StorageRequest.
    assert_eq!(
        payload(StorageRequest::Increment { path: "hits".into(), by: -1 }),
        [2, 7, 0, 6, 4, b'h', b'i', b't', b's', 1]
    );
    assert_eq!(
        payload(StorageRequest::SaveNode { path: "a".into(), node: vec![1, 2, 6], create_parents: false }),
        [2, 7, 0, 5, 1, b'a', 3, 1, 2, 6, 0]
    );
    assert_eq!(payload(StorageRequest::Take { path: "q".into() }), [2, 7, 0, 11, 1, b'q']);
    assert_eq!(
        payload(StorageRequest::Replicate { path: "c".into(), replica: 3 }),
        [2, 7, 0, 13, 1, b'c', 3]
    );
}

#[test]
fn docs_addressing_variant_indices_are_the_declaration_order() {
    assert_variants::<Destination>(
        "Destination",
        &[
            ("Here", Destination::Here),
            ("Primary", Destination::Primary),
            ("Worker", Destination::Worker(WorkerSelector::Id(WorkerId(0)))),
            ("AllWorkers", Destination::AllWorkers),
        ],
    );
    assert_variants::<WorkerSelector>(
        "WorkerSelector",
        &[("Id", WorkerSelector::Id(WorkerId(0))), ("Name", WorkerSelector::Name(String::new()))],
    );
    assert_variants::<Origin>(
        "Origin",
        &[("Primary", Origin::Primary), ("Worker", Origin::Worker { id: WorkerId(0), name: String::new() })],
    );
}

#[test]
fn docs_reply_and_notice_variant_indices_are_the_declaration_order() {
    assert_variants::<Reply>(
        "Reply",
        &[
            ("Done", Reply::Done),
            ("Value", Reply::Value(None)),
            ("Swapped", Reply::Swapped(Ok(()))),
            ("Command", Reply::Command(Vec::new())),
            ("Broadcast", Reply::Broadcast(Vec::new())),
            ("Shutdown", Reply::Shutdown(ShutdownAck::Exiting)),
        ],
    );
    assert_variants::<ShutdownAck>(
        "ShutdownAck",
        &[("Exiting", ShutdownAck::Exiting), ("Stopping", ShutdownAck::Stopping)],
    );
    assert_variants::<Notice>(
        "Notice",
        &[
            ("Status", Notice::Status(WorkerStatus::Idle)),
            ("Ready", Notice::Ready),
            (
                "Error",
                Notice::Error(WireError {
                    kind: ErrorKind::Protocol,
                    message: String::new(),
                    context: Vec::new(),
                }),
            ),
            ("StorageChanged", Notice::StorageChanged { path: String::new() }),
            (
                "ReplicaChanged",
                Notice::ReplicaChanged { replica: 0, version: 0, changes: Vec::new(), more: false },
            ),
            ("ReplicaLagged", Notice::ReplicaLagged { replica: 0 }),
            (
                "ReplicaReset",
                Notice::ReplicaReset(ReplicaSnapshot {
                    replica: 0,
                    version: 0,
                    nodes: Vec::new(),
                    more: false,
                }),
            ),
            ("ReplicaDropped", Notice::ReplicaDropped { replica: 0 }),
            (
                "ReplicaFailed",
                Notice::ReplicaFailed {
                    replica: 0,
                    error: WireError {
                        kind: ErrorKind::Protocol,
                        message: String::new(),
                        context: Vec::new(),
                    },
                },
            ),
        ],
    );
    let statuses: Vec<(&str, WorkerStatus)> = ALL_STATUSES.iter().map(|s| (s.as_str(), *s)).collect();
    assert_variants::<WorkerStatus>("WorkerStatus", &statuses);
}

#[test]
fn docs_error_kind_indices_are_the_declaration_order() {
    let kinds: Vec<(&str, ErrorKind)> = ALL_ERROR_KINDS.iter().map(|k| (k.as_str(), *k)).collect();
    assert_variants::<ErrorKind>("ErrorKind", &kinds);
}

#[test]
fn docs_value_variant_indices_are_the_declaration_order() {
    assert_variants::<Value>(
        "Value",
        &[
            ("Null", Value::Null),
            ("Bool", Value::Bool(false)),
            ("Int", Value::Int(0)),
            ("UInt", Value::UInt(u64::MAX)),
            ("Float", Value::Float(0.0)),
            ("String", Value::String(String::new())),
            ("Bytes", Value::Bytes(Vec::new())),
            ("List", Value::List(Vec::new())),
            ("Map", Value::Map(Default::default())),
        ],
    );
}

#[test]
fn docs_status_transitions_are_the_ones_listed() {
    use WorkerStatus::*;
    // docs/protocol.md, "Statuses": staying is legal, every status may become Stopping, and
    // Initializing -> Loaded -> Idle <-> Processing.
    let legal = [(Initializing, Loaded), (Loaded, Idle), (Idle, Processing), (Processing, Idle)];
    for from in ALL_STATUSES {
        for to in ALL_STATUSES {
            let expected = from == to || to == Stopping || legal.contains(&(from, to));
            assert_eq!(from.can_become(to), expected, "{from} -> {to}");
        }
    }
}
