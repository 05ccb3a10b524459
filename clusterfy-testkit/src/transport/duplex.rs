//! [`DuplexReference`]: the trivially correct in-process transport the suite is checked against.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use clusterfy_core::transport::{Authentication, Connection, Rendezvous, SpawnInfo, Transport, WorkerEnv};
use clusterfy_core::{Error, ErrorKind, Result};
use tokio::io::{DuplexStream, duplex};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Environment variable through which [`DuplexReference::prepare`](Transport::prepare) tells the
/// worker side which rendezvous to connect to.
pub const ENV_DUPLEX_KEY: &str = "CLUSTERFY_DUPLEX_KEY";

/// Bytes each direction buffers before a writer waits for its reader, as a pipe would.
const DIRECTION_CAPACITY: usize = 64 * 1024;

/// An in-process transport built on [`tokio::io::duplex`]: the reference the transport suite is
/// checked against, so that a failing case points at the transport under test, not at the suite.
///
/// [`Transport::prepare`] registers a rendezvous under a fresh key and writes the key to
/// [`ENV_DUPLEX_KEY`]; [`Transport::connect`], called with that environment *on the same
/// transport value* (so the worker must be a task of the same process, see
/// [`PeerMode::InProcess`](crate::transport::PeerMode::InProcess)), creates the stream and hands
/// the primary's end to the waiting [`Rendezvous::accept`]. Each direction is its own duplex
/// pipe, so closing one side's writer ends the other side's reads, as with pipes and sockets.
///
/// ```
/// use clusterfy_core::transport::{SpawnInfo, Transport, WorkerEnv};
/// use clusterfy_core::WorkerId;
/// use clusterfy_testkit::transport::{DuplexReference, ENV_DUPLEX_KEY};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> clusterfy_core::Result<()> {
/// let transport = DuplexReference::new();
/// let mut command = tokio::process::Command::new("unused");
/// let info = SpawnInfo::new(WorkerId(1), "Paul");
/// let mut rendezvous = transport.prepare(&info, &mut command).await?;
///
/// let key = command.as_std().get_envs().find(|(k, _)| *k == ENV_DUPLEX_KEY);
/// let key = key.and_then(|(_, v)| v?.to_str()).unwrap_or_default();
/// let mut worker = transport.connect(&WorkerEnv::from_pairs([(ENV_DUPLEX_KEY, key)])).await?;
/// let mut primary = rendezvous.accept().await?;
///
/// worker.writer.write_all(b"hi").await.map_err(|e| clusterfy_core::Error::io("writing", e))?;
/// let mut greeting = [0; 2];
/// primary.reader.read_exact(&mut greeting).await.map_err(|e| clusterfy_core::Error::io("reading", e))?;
/// assert_eq!(&greeting, b"hi");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct DuplexReference {
    waiting: Arc<Mutex<Waiting>>,
}

/// The rendezvous that wait for their worker, by key.
#[derive(Debug, Default)]
struct Waiting {
    next_key: u64,
    by_key: HashMap<u64, mpsc::UnboundedSender<Connection>>,
}

impl DuplexReference {
    /// A transport with no rendezvous yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        lock(&self.waiting)
    }
}

fn lock(waiting: &Mutex<Waiting>) -> MutexGuard<'_, Waiting> {
    // The guarded map stays consistent whatever panicked while holding it.
    waiting.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl Transport for DuplexReference {
    fn name(&self) -> &'static str {
        "duplex"
    }

    /// A token: the rendezvous key in the environment is no secret.
    fn authentication(&self) -> Authentication {
        Authentication::Token
    }

    async fn prepare(&self, _info: &SpawnInfo, command: &mut Command) -> Result<Box<dyn Rendezvous>> {
        let (sender, connections) = mpsc::unbounded_channel();
        let key = {
            let mut waiting = self.lock();
            let key = waiting.next_key;
            waiting.next_key += 1;
            waiting.by_key.insert(key, sender);
            key
        };
        command.env(ENV_DUPLEX_KEY, key.to_string());
        Ok(Box::new(DuplexRendezvous { key, connections, waiting: Arc::clone(&self.waiting) }))
    }

    async fn connect(&self, env: &WorkerEnv) -> Result<Connection> {
        let raw = env.require(ENV_DUPLEX_KEY)?;
        let key: u64 = raw.parse().map_err(|_| {
            Error::new(
                ErrorKind::Config,
                format!("{ENV_DUPLEX_KEY} is {raw:?}, not a rendezvous key set by DuplexReference::prepare"),
            )
        })?;
        let gone = || {
            Error::new(
                ErrorKind::Closed,
                format!(
                    "no rendezvous waits under key {key}: the primary stopped waiting or closed the transport"
                ),
            )
        };
        let sender = self.lock().by_key.get(&key).cloned().ok_or_else(gone)?;
        let (to_worker_writer, to_worker_reader) = duplex(DIRECTION_CAPACITY);
        let (to_primary_writer, to_primary_reader) = duplex(DIRECTION_CAPACITY);
        let description = format!("duplex rendezvous {key}");
        let primary = one_way_pair(to_primary_reader, to_worker_writer, format!("{description} (primary)"));
        sender.send(primary).map_err(|_| gone())?;
        Ok(one_way_pair(to_worker_reader, to_primary_writer, format!("{description} (worker)")))
    }

    fn close(&self) -> Result<()> {
        // Dropping the senders ends every pending accept with `Closed` and makes later connects fail.
        self.lock().by_key.clear();
        Ok(())
    }
}

/// A connection whose reading and writing directions are separate duplex pipes.
fn one_way_pair(reader: DuplexStream, writer: DuplexStream, description: String) -> Connection {
    Connection { reader: Box::new(reader), writer: Box::new(writer), description }
}

/// The primary's half of one prepared spawn.
struct DuplexRendezvous {
    key: u64,
    connections: mpsc::UnboundedReceiver<Connection>,
    waiting: Arc<Mutex<Waiting>>,
}

#[async_trait]
impl Rendezvous for DuplexRendezvous {
    /// Nothing to take: the worker finds the rendezvous through the environment.
    fn attach(&mut self, _child: &mut Child) -> Result<()> {
        Ok(())
    }

    /// Cancel-safe, as [`mpsc::UnboundedReceiver::recv`] is.
    async fn accept(&mut self) -> Result<Connection> {
        self.connections.recv().await.ok_or_else(|| {
            Error::new(ErrorKind::Closed, "the transport was closed while waiting for the worker to connect")
        })
    }
}

impl Drop for DuplexRendezvous {
    fn drop(&mut self) {
        lock(&self.waiting).by_key.remove(&self.key);
    }
}
