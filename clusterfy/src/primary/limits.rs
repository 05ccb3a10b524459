//! [`Limits`]: how much one worker, or one control client, can make the primary hold.

use clusterfy_core::{Error, ErrorKind, Result};

use crate::link::LinkBounds;
use crate::storage::LAGGING_ABOVE;

/// Smallest [`Limits::unread_bytes_per_worker`]: room for what replicas queue before they are
/// told they lag.
const MIN_UNREAD_BYTES: usize = 2 * LAGGING_ABOVE;

/// How much one peer can make the primary hold ([`PrimaryBuilder::limits`]). A worker past a
/// bound is slowed (the primary stops reading its connection until it catches up) or refused
/// (its request fails with [`ErrorKind::Busy`]); the other workers keep their pace. Start from
/// [`Limits::default`] and change the fields that matter:
///
/// ```
/// let mut limits = clusterfy::primary::Limits::default();
/// limits.watches_per_worker = 16;
/// let builder = clusterfy::Primary::builder().limits(limits);
/// # drop(builder);
/// ```
///
/// What the bounds add up to: a worker's connection holds at most
/// [`requests_per_worker`](Limits::requests_per_worker) of its requests (so the storage's write
/// queue holds at most that many per worker), and for it about
/// [`queued_bytes_per_worker`](Limits::queued_bytes_per_worker) of replies, notices and
/// requests while it reads, never much more than twice
/// [`unread_bytes_per_worker`](Limits::unread_bytes_per_worker) (what waits, and what is being
/// written) when it does not. Event streams need no bound of their own: each buffers a fixed number of
/// events and a subscriber that falls behind skips the oldest ([`Event`](crate::events::Event)),
/// and control clients' streams count among the control connections.
///
/// [`PrimaryBuilder::limits`]: crate::PrimaryBuilder::limits
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// A worker's requests handled at once (storage operations, commands it sends, watches).
    /// Past it the primary reads no more of that worker's frames until some are answered: a
    /// worker that pipelines without end slows itself, not the cluster. Default 1024.
    pub requests_per_worker: usize,
    /// Bytes queued for a worker that it has not read yet (replies, replica changes, commands
    /// for it). Past it, the primary reads no more of that worker's requests until it reads
    /// what is queued, and senders of new requests to it wait. Default 1 MiB.
    pub queued_bytes_per_worker: usize,
    /// Bytes queued for a worker past which its connection is closed (it is revived by its
    /// restart policy): answers of storage operations already under way are queued even while
    /// the primary reads nothing more of the worker, so this bounds what a worker that never
    /// reads can pile up. At least `queued_bytes_per_worker` and 8 MiB, and above the largest
    /// branch a worker replicates (a replica's snapshot is queued whole). Default 64 MiB.
    pub unread_bytes_per_worker: usize,
    /// Distinct paths one worker watches (`Storage::watch`; a watch lasts as long as the
    /// worker's connection, after its stream is dropped too): every commit is checked against
    /// each. Past it, a new watch fails with [`ErrorKind::Busy`]. Default 1024.
    pub watches_per_worker: usize,
    /// Replicas one worker keeps at once (`Storage::replica`): each is sent every change of its
    /// branch. Past it, a new replica fails with [`ErrorKind::Busy`]. Default 64.
    pub replicas_per_worker: usize,
    /// Control connections served at once (the `clusterfy` command's, streams included). Past
    /// it, the longest-waiting idle connection is dropped to make room, and a new one is refused
    /// with [`ErrorKind::Busy`] when every connection is busy. Default 64.
    pub control_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            requests_per_worker: 1024,
            queued_bytes_per_worker: 1 << 20,
            unread_bytes_per_worker: 64 << 20,
            watches_per_worker: 1024,
            replicas_per_worker: 64,
            control_connections: 64,
        }
    }
}

impl Limits {
    /// The bounds of a worker's link on the primary's side.
    pub(crate) fn link_bounds(&self) -> LinkBounds {
        LinkBounds {
            answering: self.requests_per_worker,
            queued_bytes: self.queued_bytes_per_worker,
            pause_when_backed_up: true,
            unread_bytes: Some(self.unread_bytes_per_worker),
        }
    }

    /// Fails with [`ErrorKind::Config`] for a bound of 0, which would stop every worker.
    pub(crate) fn check(&self) -> Result<()> {
        let bounds = [
            ("requests_per_worker", self.requests_per_worker),
            ("queued_bytes_per_worker", self.queued_bytes_per_worker),
            ("unread_bytes_per_worker", self.unread_bytes_per_worker),
            ("watches_per_worker", self.watches_per_worker),
            ("replicas_per_worker", self.replicas_per_worker),
            ("control_connections", self.control_connections),
        ];
        if let Some((name, _)) = bounds.iter().find(|(_, bound)| *bound == 0) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("Limits::{name} is 0, which would stop every peer; use at least 1 (or the default)"),
            ));
        }
        // Below either, a worker would be cut off before it is slowed, or before its lagging
        // replicas are told to wait for a resync.
        let least = self.queued_bytes_per_worker.max(MIN_UNREAD_BYTES);
        if self.unread_bytes_per_worker < least {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "Limits::unread_bytes_per_worker ({}) is below {least}: the larger of queued_bytes_per_worker \
                     and {MIN_UNREAD_BYTES} (twice what a lagging replica may queue); make it at least that",
                    self.unread_bytes_per_worker
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_of_zero_is_refused_by_name() {
        assert!(Limits::default().check().is_ok());
        let limits = Limits { replicas_per_worker: 0, ..Limits::default() };
        let err = limits.check().expect_err("zero");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("replicas_per_worker"), "{err}");
        let smaller = Limits { unread_bytes_per_worker: 1024, ..Limits::default() };
        let err = smaller.check().expect_err("a cut-off before the slow-down");
        assert!(err.message().contains("unread_bytes_per_worker"), "{err}");
    }
}
