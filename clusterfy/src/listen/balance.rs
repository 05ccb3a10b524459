//! [`Balance`] and [`ListenOptions`]: how a listener's connections are spread over the workers.

/// How the connections of a shared listener are spread over the workers.
///
/// The default is the balanced policy for the address: [`Balance::PerWorker`] for TCP,
/// [`Balance::Handover`] for Unix sockets. A socket systemd passed is [`Balance::Shared`] unless
/// asked for [`Balance::Handover`]. The README compares the three, measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Balance {
    /// Each worker (by name) accepts on a socket of its own, all bound to the listener's address
    /// with `SO_REUSEPORT`: the kernel hashes each new connection to one of them, so the
    /// workers get even shares whichever of them is awake first. The primary keeps every
    /// worker's socket open, so the connections queued on it wait while that worker is revived
    /// or replaced (the replacement inherits the same socket) instead of being dropped. TCP
    /// only: Linux has no `SO_REUSEPORT` group for Unix sockets. Every worker should accept on
    /// it: one that never takes the listener still gets its share, which waits.
    PerWorker,
    /// The primary accepts each connection and hands it to one worker process over a private
    /// channel (`SCM_RIGHTS`), as Node's `cluster` module does: round-robin over the processes
    /// that took the listener (each holds at most 64 connections it has not accepted yet; the
    /// primary accepts while one has room, the kernel's backlog queues the rest). A process that
    /// ends with connections it had not accepted gives them back, and they go to another. TCP and Unix sockets; the worker accepts with [`Listener::accept`]
    /// (`into_tcp` has no listening socket to give, and a worker written for `listenfd` cannot
    /// use it). Costs the primary an accept and two messages per connection.
    ///
    /// [`Listener::accept`]: crate::listen::Listener::accept
    Handover,
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
