//! [`Balance`] and [`ListenOptions`]: how a listener's connections are spread over the workers.

/// How the connections of a shared listener are spread over the workers.
///
/// The default, [`Balance::PerWorker`] for TCP and [`Balance::Shared`] for Unix sockets, is
/// the balanced policy wherever the kernel offers one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each worker (by name) accepts on a socket of its own, all bound to the listener's address
    /// with `SO_REUSEPORT`: the kernel hashes each new connection to one of them, so the
    /// workers get even shares whichever of them is awake first. The primary keeps every
    /// worker's socket open, so the connections queued on it wait while that worker is revived
    /// or replaced (the replacement inherits the same socket) instead of being dropped. TCP
    /// only: Linux has no `SO_REUSEPORT` group for Unix sockets.
    PerWorker,
    /// Every worker accepts on the one socket the primary bound: no queue is ever tied to one
    /// worker, but the worker that is awake first takes what is queued, so under load a few
    /// workers may serve nearly every connection.
    Shared,
}

/// Options of one shared listener, for
/// [`PrimaryBuilder::listen_with`](crate::PrimaryBuilder::listen_with).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenOptions {
    balance: Option<Balance>,
}

impl ListenOptions {
    /// The defaults: the balanced policy for the listener's kind of address (see [`Balance`]).
    pub fn new() -> Self {
        ListenOptions::default()
    }

    /// How its connections are spread over the workers.
    #[must_use]
    pub fn balance(mut self, balance: Balance) -> Self {
        self.balance = Some(balance);
        self
    }

    /// The policy asked for, if any (else the default for the address).
    pub(crate) fn chosen_balance(&self) -> Option<Balance> {
        self.balance
    }
}
