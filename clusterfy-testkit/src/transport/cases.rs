//! The cases of the transport suite, one per rule of the `Transport` contract, named as its
//! `# Contract` bullets name them.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use clusterfy_core::codec::{DEFAULT_MAX_FRAME_LEN, HEADER_LEN, encode_frame, to_payload};
use clusterfy_core::protocol::Message;
use clusterfy_core::transport::{
    Authentication, ENV_TOKEN, ENV_TRANSPORT, ENV_WORKER_ID, SpawnInfo, WorkerEnv,
};
use clusterfy_core::{Connection, ErrorKind, Result, WorkerId};
use tokio::process::Command;
use tokio::task::JoinSet;

use super::failure::{Context, Failure, Outcome, ensure, within};
use super::launch::{Link, PeerExit, Suite, receive};
use super::listening_unix_sockets_of_this_process;
use super::peer::{Script, exit};
use super::wire::{FrameReader, ToPeer, ToPrimary, burst_body, pattern};

/// A case's future.
pub(crate) type CaseFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// One named case.
pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) run: fn(Arc<Suite>) -> CaseFuture,
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        /// Every case, in the order they are listed.
        pub(crate) const CASES: &[Case] = &[
            $(Case { name: stringify!($case), run: |suite| Box::pin($case(suite)) }),*
        ];
    };
}

cases!(
    frames_round_trip_both_ways,
    order_is_kept,
    largest_allowed_frame_passes_and_larger_is_refused,
    peer_going_away_is_seen_as_closed,
    workers_stay_isolated,
    worker_that_never_connects_times_out,
    worker_without_environment_gets_config_error,
    close_removes_what_prepare_created,
    inherited_channel_leaves_no_way_in,
);

/// How long a case waits for something that must not happen.
const NOTHING_COMES: Duration = Duration::from_millis(250);

/// Frames of several sizes go to the worker and come back, and the worker's own frames arrive.
async fn frames_round_trip_both_ways(suite: Arc<Suite>) -> Outcome {
    let mut worker = suite.launch(Script::Serve).await?;
    // The worker speaks first: its Hello is checked here.
    let mut link = worker.connect().await?;
    // Sizes around pipe and socket buffer sizes, so partial reads and writes happen.
    for (seq, len) in (0u64..).zip([0, 1, 255, 4 * 1024, 64 * 1024 + 1, 1024 * 1024]) {
        let body = pattern(seq, len);
        link.send(&ToPeer::Ping { seq, body: body.clone() }).await?;
        let reply = link.receive(&format!("the answer to ping {seq}")).await?;
        check_pong(&reply, seq, &body, &link.label)?;
    }
    link.send(&ToPeer::SendBurst { count: 3 }).await?;
    for seq in 0..3 {
        let frame = link.receive(&format!("burst frame {seq}")).await?;
        check_burst(&frame, seq, &link.label)?;
    }
    link.send(&ToPeer::Exit).await?;
    worker.expect_exit(&[exit::ON_REQUEST], "it was sent Exit").await
}

/// Thousands of frames, pipelined both ways, arrive in the order they were sent.
async fn order_is_kept(suite: Arc<Suite>) -> Outcome {
    const FRAMES: u64 = 5_000;
    let mut worker = suite.launch(Script::Serve).await?;
    let mut link = worker.connect().await?;
    let Link { reader, writer, label } = &mut link;
    let sending = async {
        let doing = format!("sending {FRAMES} pings to {label} without waiting for answers");
        within(&doing, async {
            for seq in 0..FRAMES {
                writer.queue(&ToPeer::Ping { seq, body: ping_body(seq) }).await?;
            }
            writer.flush().await
        })
        .await?
        .context(&doing)
    };
    let receiving = async {
        for seq in 0..FRAMES {
            let reply = receive(reader, label, &format!("the answer to ping {seq} of {FRAMES}")).await?;
            check_pong(&reply, seq, &ping_body(seq), label)?;
        }
        Ok(())
    };
    tokio::try_join!(sending, receiving)?;

    link.send(&ToPeer::SendBurst { count: FRAMES }).await?;
    for seq in 0..FRAMES {
        let frame = link.receive(&format!("burst frame {seq} of {FRAMES}")).await?;
        check_burst(&frame, seq, &link.label)?;
    }
    link.send(&ToPeer::Exit).await?;
    worker.expect_exit(&[exit::ON_REQUEST], "it was sent Exit").await
}

fn ping_body(seq: u64) -> Vec<u8> {
    pattern(seq, (seq % 251) as usize)
}

/// A frame of exactly the maximum goes through; one byte more is refused by the codec on the
/// sending side, and a header announcing it makes the receiving decoder fail.
async fn largest_allowed_frame_passes_and_larger_is_refused(suite: Arc<Suite>) -> Outcome {
    const MAX: usize = 64 * 1024;
    let largest = ping_of_payload_len(MAX)?;
    let mut out = Vec::new();
    encode_frame(&largest, MAX, &mut out).context(format!("encoding a frame of exactly {MAX} bytes"))?;
    ensure!(out.len() == HEADER_LEN + MAX, "a {MAX}-byte payload was framed into {} bytes", out.len());

    let too_large = ping_of_payload_len(MAX + 1)?;
    let mut out = b"earlier frames".to_vec();
    match encode_frame(&too_large, MAX, &mut out) {
        Ok(()) => {
            return Err(Failure::new(format!(
                "encode_frame accepted {} bytes above the {MAX}-byte maximum",
                MAX + 1
            )));
        }
        Err(err) => ensure!(
            err.kind() == ErrorKind::Protocol,
            "encode_frame refused an oversize frame with the wrong kind (expected {}): {err}",
            ErrorKind::Protocol
        ),
    }
    ensure!(
        out == b"earlier frames",
        "a refused frame changed the buffer it was to be appended to: {:?}",
        String::from_utf8_lossy(&out)
    );

    let mut worker = suite.launch(Script::Serve).await?;
    let connection = worker.accept().await?;
    let mut link = worker.handshake(connection, MAX).await?;
    let ToPeer::Ping { body, .. } = &largest else {
        return Err(Failure::new("ping_of_payload_len made something other than a ping"));
    };
    let body = body.clone();
    link.send(&largest).await?;
    // The answer has the same size: it must pass the primary's decoder limited to MAX.
    let reply = link.receive(&format!("the answer to a ping of exactly {MAX} bytes")).await?;
    check_pong(&reply, 0, &body, &link.label)?;

    let announced = u32::try_from(MAX + 1).context("the maximum fits a frame header")?;
    link.send(&ToPeer::AnnounceFrameOf { len: announced }).await?;
    let doing = format!("reading a frame header announcing {announced} bytes from {}", link.label);
    match within(&doing, link.reader.next::<ToPrimary>()).await? {
        Err(err) if err.kind() == ErrorKind::Protocol => {}
        Err(err) => {
            return Err(Failure::new(format!(
                "{doing}: expected a {} error, got {err}",
                ErrorKind::Protocol
            )));
        }
        Ok(Some(frame)) => return Err(Failure::new(format!("{doing}: decoded {}", describe(&frame)))),
        Ok(None) => return Err(Failure::new(format!("{doing}: the stream ended"))),
    }
    // After a protocol error the connection is closed, as the facade does.
    drop(link);
    worker.expect_exit(&[exit::SAW_EOF, exit::STREAM_FAILED], "the primary closed the connection").await
}

/// A ping whose encoded payload is exactly `len` bytes.
fn ping_of_payload_len(len: usize) -> Outcome<ToPeer> {
    // The body's length prefix is a varint, so try the few body lengths that can fit.
    for body_len in len.saturating_sub(12)..=len {
        let ping = ToPeer::Ping { seq: 0, body: pattern(u64::MAX, body_len) };
        if to_payload(&ping).context("encoding a ping")?.len() == len {
            return Ok(ping);
        }
    }
    Err(Failure::new(format!("no ping body gives a payload of exactly {len} bytes")))
}

/// Reads end and writes fail when the peer exits, when it is killed, and the peer's reads end and
/// writes fail when the primary closes.
async fn peer_going_away_is_seen_as_closed(suite: Arc<Suite>) -> Outcome {
    tokio::try_join!(
        peer_exits(&suite),
        peer_is_killed(&suite),
        primary_closes_while_peer_reads(&suite),
        primary_closes_while_peer_writes(&suite),
    )?;
    Ok(())
}

async fn peer_exits(suite: &Suite) -> Outcome {
    let mut worker = suite.launch(Script::Serve).await?;
    let mut link = worker.connect().await?;
    link.send(&ToPeer::Exit).await?;
    reads_end(&mut link, "after it exited").await?;
    worker.expect_exit(&[exit::ON_REQUEST], "it was sent Exit").await?;
    writes_fail(&mut link, "after it exited").await
}

async fn peer_is_killed(suite: &Suite) -> Outcome {
    let mut worker = suite.launch(Script::Serve).await?;
    let mut link = worker.connect().await?;
    let doing = format!("reading from {} while it is killed ({})", link.label, worker.kill_description());
    {
        let reading = link.reader.next::<ToPrimary>();
        tokio::pin!(reading);
        // Start the read first: it must already wait when the peer dies.
        let early = tokio::time::timeout(Duration::ZERO, &mut reading).await;
        ensure!(early.is_err(), "{doing}: the read returned before the kill: {early:?}");
        worker.kill()?;
        check_end(within(&doing, reading).await?, &doing)?;
    }
    let exit = worker.wait().await?;
    ensure!(exit == PeerExit::Killed, "{} should have been killed, but it ended with {exit:?}", worker.label);
    writes_fail(&mut link, "after it was killed").await
}

async fn primary_closes_while_peer_reads(suite: &Suite) -> Outcome {
    let mut worker = suite.launch(Script::Serve).await?;
    let link = worker.connect().await?;
    drop(link);
    worker
        .expect_exit(
            &[exit::SAW_EOF, exit::STREAM_FAILED],
            "the primary closed its connection while it was reading",
        )
        .await
}

async fn primary_closes_while_peer_writes(suite: &Suite) -> Outcome {
    let mut worker = suite.launch(Script::Serve).await?;
    let mut link = worker.connect().await?;
    // More than any buffer holds: the peer is still writing when the primary goes away.
    link.send(&ToPeer::SendBurst { count: 1 << 40 }).await?;
    let first = link.receive("the first frame of an endless burst").await?;
    check_burst(&first, 0, &link.label)?;
    drop(link);
    worker
        .expect_exit(
            &[exit::STREAM_FAILED],
            "the primary closed its connection while it was writing, so its writes must fail",
        )
        .await
}

/// Reading from a peer that went away ends (EOF or an error) within the deadline.
async fn reads_end(link: &mut Link, after: &str) -> Outcome {
    let doing = format!("reading from {} {after}", link.label);
    check_end(within(&doing, link.reader.next::<ToPrimary>()).await?, &doing)
}

fn check_end(read: Result<Option<ToPrimary>>, doing: &str) -> Outcome {
    match read {
        Ok(None) => Ok(()),
        Err(err) if matches!(err.kind(), ErrorKind::Io | ErrorKind::Closed) => Ok(()),
        Ok(Some(frame)) => {
            Err(Failure::new(format!("{doing}: got {} instead of the end of the stream", describe(&frame))))
        }
        Err(err) => Err(Failure::new(format!("{doing}: expected EOF or an I/O error, got {err}"))),
    }
}

/// Writing to a peer that went away fails within the deadline (after at most 16 MiB).
async fn writes_fail(link: &mut Link, after: &str) -> Outcome {
    let chunk = vec![0u8; 64 * 1024];
    let doing = format!("writing to {} {after}", link.label);
    within(&doing, async {
        for _ in 0..256 {
            if link.writer.send_raw(&chunk).await.is_err() {
                return Ok(());
            }
        }
        Err(Failure::new(format!(
            "{doing}: 16 MiB were written without an error; writes to a gone peer must fail"
        )))
    })
    .await?
}

/// Several workers at once: each gets its own stream, and only its own answers.
async fn workers_stay_isolated(suite: Arc<Suite>) -> Outcome {
    const WORKERS: usize = 4;
    const PINGS: u64 = 300;
    let mut workers = Vec::with_capacity(WORKERS);
    for _ in 0..WORKERS {
        workers.push(suite.launch(Script::Serve).await?);
    }
    // Every worker was started before any is accepted, so their connections race. Each Hello
    // must carry the id and token of the worker whose rendezvous accepted it.
    let mut exchanges = JoinSet::new();
    for worker in &mut workers {
        let mut link = worker.connect().await?;
        let id = worker.id;
        exchanges.spawn(async move { exchange_tagged_pings(&mut link, id, PINGS).await });
    }
    while let Some(joined) = exchanges.join_next().await {
        joined.context("a worker's exchange panicked")??;
    }
    for worker in &mut workers {
        worker.expect_exit(&[exit::ON_REQUEST], "it was sent Exit").await?;
    }
    Ok(())
}

/// Pipelines `count` pings whose bodies are unique to worker `id`, checks every answer, then
/// asks the worker to exit.
async fn exchange_tagged_pings(link: &mut Link, id: WorkerId, count: u64) -> Outcome {
    let body = |seq: u64| pattern((id.0 << 32) | seq, 32 + (seq % 64) as usize);
    let Link { reader, writer, label } = link;
    let sending = async {
        let doing = format!("sending {count} pings to {label}");
        within(&doing, async {
            for seq in 0..count {
                writer.queue(&ToPeer::Ping { seq, body: body(seq) }).await?;
            }
            writer.flush().await
        })
        .await?
        .context(&doing)
    };
    let receiving = async {
        for seq in 0..count {
            let reply = receive(reader, label, &format!("the answer to ping {seq}")).await?;
            check_pong(&reply, seq, &body(seq), label)
                .map_err(|failure| Failure::new(format!("{failure} (data crossed between workers?)")))?;
        }
        Ok(())
    };
    tokio::try_join!(sending, receiving)?;
    link.send(&ToPeer::Exit).await
}

/// Accepting and reading the first frame of a worker that never connects, or connects and never
/// says Hello, runs into the caller's deadline instead of hanging or inventing a frame; an accept
/// cancelled by a deadline leaves the rendezvous usable (or cleanly failed).
async fn worker_that_never_connects_times_out(suite: Arc<Suite>) -> Outcome {
    tokio::try_join!(
        absent_worker_times_out(&suite),
        silent_worker_times_out(&suite),
        cancelled_accept_leaves_rendezvous_usable(&suite),
    )?;
    Ok(())
}

async fn absent_worker_times_out(suite: &Suite) -> Outcome {
    let mut worker = suite.launch(Script::Absent).await?;
    let rendezvous = &mut worker.rendezvous;
    let waited = tokio::time::timeout(NOTHING_COMES, async {
        let connection = rendezvous.accept().await?;
        FrameReader::new(connection.reader, DEFAULT_MAX_FRAME_LEN).next::<Message>().await
    })
    .await;
    let doing = format!("accepting {}, which never connects, and reading its first frame", worker.label);
    match waited {
        Err(_elapsed) => {}
        Ok(Ok(Some(frame))) => return Err(Failure::new(format!("{doing}: got a frame: {frame:?}"))),
        Ok(Ok(None)) => return Err(Failure::new(format!("{doing}: the stream ended at once"))),
        Ok(Err(err)) => {
            return Err(Failure::new(format!(
                "{doing}: failed with \"{err}\" instead of waiting for the caller's deadline"
            )));
        }
    }
    worker.kill()?;
    let exit = worker.wait().await?;
    ensure!(
        exit == PeerExit::Killed,
        "{} should have waited to be killed, but it ended with {exit:?}",
        worker.label
    );
    Ok(())
}

async fn silent_worker_times_out(suite: &Suite) -> Outcome {
    let mut worker = suite.launch(Script::Silent).await?;
    let Connection { reader, writer, .. } = worker.accept().await?;
    let mut reader = FrameReader::new(reader, DEFAULT_MAX_FRAME_LEN);
    let waited = tokio::time::timeout(NOTHING_COMES, reader.next::<Message>()).await;
    ensure!(
        waited.is_err(),
        "reading the first frame of {}, which never sends one, gave {waited:?} instead of running into the deadline",
        worker.label
    );
    drop((reader, writer));
    worker
        .expect_exit(
            &[exit::SAW_EOF, exit::STREAM_FAILED],
            "the primary gave up on it and closed the connection",
        )
        .await
}

async fn cancelled_accept_leaves_rendezvous_usable(suite: &Suite) -> Outcome {
    let mut worker = suite.launch(Script::Serve).await?;
    let connection = match tokio::time::timeout(Duration::ZERO, worker.rendezvous.accept()).await {
        // Already connected: nothing was cancelled, and the connection is used below.
        Ok(accepted) => accepted.context(format!("accepting {} failed at once", worker.label))?,
        Err(_elapsed) => {
            let doing = format!("accepting {} again after an accept was cancelled", worker.label);
            match within(&doing, worker.rendezvous.accept()).await? {
                Ok(connection) => connection,
                Err(err) => {
                    // The contract allows a rendezvous to fail cleanly after a cancelled accept.
                    eprintln!("note: {doing}: it failed cleanly, as the contract allows: {err}");
                    worker.kill()?;
                    return Ok(());
                }
            }
        }
    };
    let mut link = worker.handshake(connection, DEFAULT_MAX_FRAME_LEN).await?;
    let body = pattern(99, 99);
    link.send(&ToPeer::Ping { seq: 7, body: body.clone() }).await?;
    let reply = link.receive("the answer to a ping").await?;
    check_pong(&reply, 7, &body, &link.label)?;
    link.send(&ToPeer::Exit).await?;
    worker.expect_exit(&[exit::ON_REQUEST], "it was sent Exit").await
}

/// `connect` with an empty environment is a configuration error that names a variable the
/// worker would have been given.
async fn worker_without_environment_gets_config_error(suite: Arc<Suite>) -> Outcome {
    let mut given: Vec<String> = [ENV_TRANSPORT, ENV_WORKER_ID, ENV_TOKEN].map(str::to_owned).into();
    let (rendezvous, env) = prepare_unspawned(&suite, 1).await?;
    given.extend(env.into_iter().map(|(key, _)| key));
    drop(rendezvous);

    let doing = "connecting with an empty environment";
    let err = match within(doing, suite.transport.connect(&WorkerEnv::default())).await? {
        Ok(connection) => {
            return Err(Failure::new(format!("{doing}: it connected ({})", connection.description)));
        }
        Err(err) => err,
    };
    ensure!(err.kind() == ErrorKind::Config, "{doing}: expected a {} error, got {err}", ErrorKind::Config);
    let message = err.to_string();
    ensure!(
        given.iter().any(|name| message.contains(name.as_str())),
        "{doing}: the error should name the missing variable (one of {}): {err}",
        given.join(", ")
    );
    Ok(())
}

/// Every file-system path `prepare` hands to workers is gone after `close`, even with a
/// rendezvous still alive; `close` is idempotent.
async fn close_removes_what_prepare_created(suite: Arc<Suite>) -> Outcome {
    let (dropped_before, first_env) = prepare_unspawned(&suite, 1).await?;
    let (alive_during_close, second_env) = prepare_unspawned(&suite, 2).await?;
    let created: Vec<(String, PathBuf)> = first_env
        .into_iter()
        .chain(second_env)
        .map(|(key, value)| (key, PathBuf::from(value)))
        .filter(|(_, path)| path.is_absolute() && path.symlink_metadata().is_ok())
        .collect();
    drop(dropped_before);
    suite.transport.close().context("closing the transport")?;
    for (key, path) in &created {
        ensure!(
            path.symlink_metadata().is_err(),
            "close left {} behind (set in {key} by prepare)",
            path.display()
        );
    }
    suite.transport.close().context("closing the transport a second time")?;
    drop(alive_during_close);
    if created.is_empty() {
        eprintln!(
            "note: the {} transport's prepare hands no file-system paths to workers; this case only \
             checked that close succeeds twice",
            suite.transport.name()
        );
    }
    Ok(())
}

/// A transport that authenticates by the channel itself must offer nothing else to connect to.
async fn inherited_channel_leaves_no_way_in(suite: Arc<Suite>) -> Outcome {
    if suite.transport.authentication() != Authentication::InheritedChannel {
        eprintln!(
            "note: the {} transport authenticates with a token; only inherited channels must leave no way in",
            suite.transport.name()
        );
        return Ok(());
    }
    let listening_before = listening_unix_sockets_of_this_process();
    let (rendezvous, env) = prepare_unspawned(&suite, 1).await?;
    for (key, value) in &env {
        ensure!(
            !std::path::Path::new(value).exists(),
            "prepare handed the worker the path {value} (in {key}), which another process could open too"
        );
    }
    let new: Vec<u64> =
        listening_unix_sockets_of_this_process().difference(&listening_before).copied().collect();
    ensure!(new.is_empty(), "prepare left sockets listening for connections (inodes {new:?})");
    drop(rendezvous);
    Ok(())
}

/// Prepares a spawn that never happens; returns the rendezvous and the variables `prepare` set.
async fn prepare_unspawned(
    suite: &Suite,
    id: u64,
) -> Outcome<(Box<dyn clusterfy_core::Rendezvous>, Vec<(String, String)>)> {
    let mut command = Command::new("never-spawned");
    let info = SpawnInfo::new(WorkerId(id), format!("testkit-unspawned-{id}"));
    let doing = format!("preparing worker {id}");
    let rendezvous = within(&doing, suite.transport.prepare(&info, &mut command)).await?.context(&doing)?;
    let env = command
        .as_std()
        .get_envs()
        .filter_map(|(key, value)| Some((key.to_str()?.to_owned(), value?.to_str()?.to_owned())))
        .collect();
    Ok((rendezvous, env))
}

fn check_pong(reply: &ToPrimary, seq: u64, body: &[u8], label: &str) -> Outcome {
    match reply {
        ToPrimary::Pong { seq: got, body: got_body } if *got == seq && got_body == body => Ok(()),
        other => Err(Failure::new(format!(
            "{label} should have answered ping {seq} with its {} bytes; got {}",
            body.len(),
            describe_against(other, body)
        ))),
    }
}

fn check_burst(frame: &ToPrimary, seq: u64, label: &str) -> Outcome {
    let body = burst_body(seq);
    match frame {
        ToPrimary::Burst { seq: got, body: got_body } if *got == seq && *got_body == body => Ok(()),
        other => Err(Failure::new(format!(
            "{label} should have sent burst frame {seq}; got {}",
            describe_against(other, &body)
        ))),
    }
}

/// A frame without its bulk.
fn describe(frame: &ToPrimary) -> String {
    match frame {
        ToPrimary::Burst { seq, body } => format!("burst frame {seq} ({} bytes)", body.len()),
        ToPrimary::Pong { seq, body } => format!("the answer to ping {seq} ({} bytes)", body.len()),
    }
}

/// [`describe`], plus where its body first differs from `expected`.
fn describe_against(frame: &ToPrimary, expected: &[u8]) -> String {
    let (ToPrimary::Burst { body, .. } | ToPrimary::Pong { body, .. }) = frame;
    match body.iter().zip(expected).position(|(a, b)| a != b) {
        Some(at) => format!("{} differing from the expected bytes at byte {at}", describe(frame)),
        None => describe(frame),
    }
}
