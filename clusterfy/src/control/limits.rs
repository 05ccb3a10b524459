//! Bounds on what control clients can make the primary hold: open connections, and the bytes of
//! the requests it reads. Control clients are of the primary's own uid, but a stuck script or a
//! runaway loop of the same user must not grow the primary without bound either.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use clusterfy_core::codec::FrameDecoder;
use clusterfy_core::control::{ControlRequest, MAX_CONTROL_REQUEST_LEN, SMALL_CONTROL_REQUEST_LEN};
use clusterfy_core::{Error, ErrorKind, Result};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;

/// Bytes of large requests (above [`SMALL_CONTROL_REQUEST_LEN`]) read at once, over all
/// connections: with the small ones, a primary buffers at most
/// `control_connections * SMALL_CONTROL_REQUEST_LEN + LARGE_REQUEST_BUDGET` (8 MiB with the
/// default [`Limits::control_connections`](crate::primary::Limits)) for its control clients.
const LARGE_REQUEST_BUDGET: usize = 4 * MAX_CONTROL_REQUEST_LEN;
/// The budget's unit: a semaphore counts permits in `u32`s, and a KiB is fine enough.
const BUDGET_UNIT: usize = 1024;

/// The limits of one control socket.
pub(crate) struct ControlLimits {
    /// Connections served at once (streams of events and watches included).
    max_connections: usize,
    open: Mutex<OpenConnections>,
    large_requests: Arc<Semaphore>,
}

#[derive(Default)]
struct OpenConnections {
    /// Ids count up, so the first entry is the oldest connection.
    next_id: u64,
    by_age: BTreeMap<u64, Entry>,
}

struct Entry {
    /// Still waiting for its request: an idle connection, dropped first when the cap is reached.
    waiting: Arc<AtomicBool>,
    /// Set once its task runs.
    abort: Option<AbortHandle>,
}

/// A connection's place among the open ones; leaves when dropped (when its task ends).
pub(crate) struct Admission {
    id: u64,
    waiting: Arc<AtomicBool>,
    limits: Arc<ControlLimits>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.limits.lock().by_age.remove(&self.id);
    }
}

impl ControlLimits {
    pub(crate) fn new(max_connections: usize) -> Arc<Self> {
        Arc::new(ControlLimits {
            max_connections,
            open: Mutex::new(OpenConnections::default()),
            large_requests: Arc::new(Semaphore::new(LARGE_REQUEST_BUDGET / BUDGET_UNIT)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, OpenConnections> {
        // Each change is a single map operation: nothing is left half-done by a panic.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes room for a new connection: below the cap it is admitted; at the cap the oldest
    /// connection still waiting for its request is dropped for it (a client that connected and
    /// said nothing must not keep `clusterfy ls` out); when every open connection is busy, the
    /// new one is refused with the error to send it.
    pub(crate) fn admit(self: &Arc<Self>) -> std::result::Result<Admission, Error> {
        let mut open = self.lock();
        if open.by_age.len() >= self.max_connections {
            let idle = open.by_age.iter().find(|(_, e)| e.waiting.load(Ordering::SeqCst)).map(|(id, _)| *id);
            match idle.and_then(|id| open.by_age.remove(&id)) {
                Some(evicted) => {
                    if let Some(abort) = evicted.abort {
                        abort.abort();
                    }
                }
                None => {
                    return Err(Error::new(
                        ErrorKind::Busy,
                        format!(
                            "the primary serves {} control connections already (event streams, watches, \
                             reloads); close some, retry when one ends, or raise Limits::control_connections",
                            self.max_connections
                        ),
                    ));
                }
            }
        }
        let id = open.next_id;
        open.next_id += 1;
        let waiting = Arc::new(AtomicBool::new(true));
        open.by_age.insert(id, Entry { waiting: Arc::clone(&waiting), abort: None });
        Ok(Admission { id, waiting, limits: Arc::clone(self) })
    }

    /// Records the task serving `admission`'s connection, so that it can be dropped at the cap.
    pub(crate) fn serving(&self, admission_id: u64, abort: AbortHandle) {
        // A task that already ended has left: nothing to record.
        if let Some(entry) = self.lock().by_age.get_mut(&admission_id) {
            entry.abort = Some(abort);
        }
    }
}

impl Admission {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Reads the connection's one request, within the limits: at most
    /// [`MAX_CONTROL_REQUEST_LEN`] bytes, and a request above [`SMALL_CONTROL_REQUEST_LEN`]
    /// only with room in the shared budget, which the returned permit holds until dropped.
    /// `None` when the client closed without a request.
    pub(crate) async fn read_request(
        &self,
        reader: &mut (impl AsyncRead + Unpin),
    ) -> Result<Option<(ControlRequest, Option<OwnedSemaphorePermit>)>> {
        let mut frames = FrameDecoder::new(MAX_CONTROL_REQUEST_LEN);
        let mut room = None;
        loop {
            if room.is_none()
                && let Some(len) = frames.announced_len()
                && (SMALL_CONTROL_REQUEST_LEN + 1..=MAX_CONTROL_REQUEST_LEN).contains(&len)
            {
                room = Some(self.room_for(len)?);
            }
            if let Some(request) = frames.decode::<ControlRequest>()? {
                self.waiting.store(false, Ordering::SeqCst);
                return Ok(Some((request, room)));
            }
            let n = reader
                .read_buf(frames.buffer_mut())
                .await
                .map_err(|e| Error::io("reading a control request", e))?;
            if n == 0 {
                return Ok(None);
            }
        }
    }

    fn room_for(&self, len: usize) -> Result<OwnedSemaphorePermit> {
        let units = len.div_ceil(BUDGET_UNIT) as u32;
        Arc::clone(&self.limits.large_requests).try_acquire_many_owned(units).map_err(|_| {
            Error::new(
                ErrorKind::Busy,
                format!(
                    "the primary is reading other large control requests ({} KiB at most at once); retry in a \
                     moment",
                    LARGE_REQUEST_BUDGET / 1024
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    const TEST_CAP: usize = 64;

    /// A client that announced `len` bytes and sent all but the last: its request is never whole.
    async fn stalled_request(len: usize) -> tokio::io::DuplexStream {
        let (mut client, server) = tokio::io::duplex(2 * MAX_CONTROL_REQUEST_LEN);
        client.write_all(&(len as u32).to_le_bytes()).await.expect("header");
        client.write_all(&vec![0; len - 1]).await.expect("body");
        // The client end stays open in the returned pair's other half: leak it into a task.
        tokio::spawn(async move {
            std::future::pending::<()>().await;
            drop(client)
        });
        server
    }

    #[tokio::test]
    async fn large_requests_share_a_budget_and_the_one_past_it_is_told_busy() {
        let limits = ControlLimits::new(TEST_CAP);
        let len = MAX_CONTROL_REQUEST_LEN - 16;
        let mut readers = Vec::new();
        for _ in 0..LARGE_REQUEST_BUDGET / MAX_CONTROL_REQUEST_LEN {
            let admission = limits.admit().expect("admitted");
            let mut server = stalled_request(len).await;
            readers.push(tokio::spawn(async move { admission.read_request(&mut server).await.map(|_| ()) }));
        }
        // Let each of them take its room: they then wait for a last byte that never comes.
        while limits.large_requests.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let admission = limits.admit().expect("admitted");
        let mut server = stalled_request(len).await;
        let err = admission.read_request(&mut server).await.expect_err("no room left");
        assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
        assert!(err.message().contains("large control requests"), "{err}");
        // A small request still gets in.
        let (mut client, mut server) = tokio::io::duplex(1024);
        let mut frame = Vec::new();
        clusterfy_core::codec::encode_frame(&ControlRequest::Info, 1024, &mut frame).expect("frame");
        client.write_all(&frame).await.expect("write");
        let (request, room) = limits
            .admit()
            .expect("admitted")
            .read_request(&mut server)
            .await
            .expect("read")
            .expect("a request");
        assert_eq!((request, room.is_none()), (ControlRequest::Info, true));
        for reader in readers {
            reader.abort();
        }
    }

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room_and_busy_ones_do_not() {
        let limits = ControlLimits::new(TEST_CAP);
        let mut held: Vec<Admission> =
            (0..TEST_CAP).map(|_| limits.admit().expect("below the cap")).collect();
        let oldest = held[0].id();
        let newcomer = limits.admit().expect("an idle one made room");
        assert!(!limits.lock().by_age.contains_key(&oldest), "the oldest idle connection left");
        for admission in &held {
            admission.waiting.store(false, Ordering::SeqCst);
        }
        newcomer.waiting.store(false, Ordering::SeqCst);
        let err = limits.admit().err().expect("all busy");
        assert_eq!(err.kind(), ErrorKind::Busy);
        held.pop();
        limits.admit().expect("a connection that ended made room");
    }
}
