//! The crate's own signal type, so the public API does not carry a version of `nix`.

use std::fmt;

/// A Unix signal: what [`PrimaryBuilder::stop_signal`](crate::PrimaryBuilder::stop_signal)
/// sends and what [`ExitReason::Signal`](crate::events::ExitReason::Signal) reports.
///
/// The constants name the signals a cluster meets; any other number (a real-time signal that
/// ended a worker, say) is kept as it came with [`Signal::from_raw`].
///
/// ```
/// use clusterfy::Signal;
///
/// assert_eq!(Signal::TERM.as_raw(), 15);
/// assert_eq!(Signal::from_raw(9), Signal::KILL);
/// assert_eq!(Signal::INT.to_string(), "SIGINT");
/// assert_eq!(Signal::from_raw(40).to_string(), "signal 40");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Signal(i32);

impl Signal {
    /// SIGHUP: the terminal hung up; to a Clusterfy primary, "reload".
    pub const HUP: Signal = Signal(nix::libc::SIGHUP);
    /// SIGINT: interrupt from the keyboard (Ctrl-C).
    pub const INT: Signal = Signal(nix::libc::SIGINT);
    /// SIGQUIT: quit from the keyboard.
    pub const QUIT: Signal = Signal(nix::libc::SIGQUIT);
    /// SIGABRT: `abort()`, a Rust panic with `panic = "abort"` for one.
    pub const ABRT: Signal = Signal(nix::libc::SIGABRT);
    /// SIGKILL: ends a process without asking; it cannot be caught.
    pub const KILL: Signal = Signal(nix::libc::SIGKILL);
    /// SIGSEGV: an invalid memory access.
    pub const SEGV: Signal = Signal(nix::libc::SIGSEGV);
    /// SIGPIPE: a write to a pipe or socket nobody reads.
    pub const PIPE: Signal = Signal(nix::libc::SIGPIPE);
    /// SIGTERM: the polite request to end (the default stop signal).
    pub const TERM: Signal = Signal(nix::libc::SIGTERM);
    /// SIGUSR1: for the application.
    pub const USR1: Signal = Signal(nix::libc::SIGUSR1);
    /// SIGUSR2: for the application.
    pub const USR2: Signal = Signal(nix::libc::SIGUSR2);
    /// SIGTTIN: to a Clusterfy primary, "one worker more".
    pub const TTIN: Signal = Signal(nix::libc::SIGTTIN);
    /// SIGTTOU: to a Clusterfy primary, "one worker fewer".
    pub const TTOU: Signal = Signal(nix::libc::SIGTTOU);

    /// The signal with this number, named or not.
    pub const fn from_raw(number: i32) -> Signal {
        Signal(number)
    }

    /// The signal's number.
    pub const fn as_raw(self) -> i32 {
        self.0
    }

    /// Its name (`"SIGTERM"`), when this system knows one.
    pub fn name(self) -> Option<&'static str> {
        self.to_nix().map(nix::sys::signal::Signal::as_str)
    }

    /// The same signal for `kill(2)`, when the system knows it (real-time signals it does not).
    pub(crate) fn to_nix(self) -> Option<nix::sys::signal::Signal> {
        nix::sys::signal::Signal::try_from(self.0).ok()
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "signal {}", self.0),
        }
    }
}
