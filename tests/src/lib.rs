//! Shared pieces of Clusterfy's end-to-end tests and benchmarks: the command types the helper
//! worker binary (`test-worker`) and the tests agree on, the scenarios that binary plays, and the
//! environment variables the tests use to talk to it.
//!
//! Every command here targets workers unless its docs say otherwise; `test-worker` registers a
//! handler for each worker command except [`Unregistered`].

use std::fmt;

pub mod remote_kv;

use clusterfy::{Command, Value, command::WorkerSelector, worker::WorkerStatus};
use serde::{Deserialize, Serialize};

/// Path of a file the worker's shutdown hook writes `"<name> ran its shutdown hook: <why>"` to,
/// where `<why>` is [`HOOK_SHUTDOWN_REQUESTED`] or [`HOOK_NO_SHUTDOWN_REQUEST`].
pub const ENV_HOOK_FILE: &str = "CLUSTERFY_TEST_HOOK_FILE";
/// The hook ran after the primary asked the worker to shut down.
pub const HOOK_SHUTDOWN_REQUESTED: &str = "shutdown requested";
/// The hook ran without a shutdown request (for example because the primary went away).
pub const HOOK_NO_SHUTDOWN_REQUEST: &str = "no shutdown request";
/// What the `garbage` scenario sends instead of a reply: [`GARBAGE_UNDECODABLE`] or
/// [`GARBAGE_OVERSIZE`].
pub const ENV_GARBAGE: &str = "CLUSTERFY_TEST_GARBAGE";
/// A complete frame whose payload is not a protocol message.
pub const GARBAGE_UNDECODABLE: &str = "undecodable";
/// A frame header announcing a payload far above the primary's maximum frame size.
pub const GARBAGE_OVERSIZE: &str = "oversize";

/// How many increment-and-read pairs the `greedy` scenario sends.
pub const GREEDY_PAIRS: u64 = 500;
/// What the `greedy` scenario increments.
pub const GREEDY_COUNT_PATH: &str = "greedy_count";
/// What the `greedy` scenario reads, again and again (the test stores a large value there).
pub const GREEDY_BIG_PATH: &str = "greedy_big";
/// The stdout line of the `greedy` scenario once all its requests are written.
pub const GREEDY_SENT_LINE: &str = "GREEDY SENT";

/// What the `garbage` and `evil` scenarios' processes exit with when the primary closed their
/// connection having told them why (a `Notice::Error` of kind protocol, or unauthorized).
pub const HUNG_UP_WITH_NOTICE: i32 = 0;
/// What the `garbage` and `evil` scenarios' processes exit with when the connection closed
/// without that notice.
pub const HUNG_UP_WITHOUT_NOTICE: i32 = 3;

/// The worker of the `primary` scenario that runs a program without Clusterfy (`sleep`).
pub const FOREIGN_WORKER: &str = "foreign-sleep";

/// The first line the `primary` scenario prints on stdout, followed by its workers' pids.
pub const PIDS_LINE_PREFIX: &str = "worker-pids";

/// How a `test-worker` process behaves; passed as its first argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Registers every worker command, connects, serves until a shutdown request, lets running
    /// work finish and returns from `main`.
    Normal,
    /// Connects, turns Processing for good, never finishes and traps SIGTERM (each one is
    /// reported to the primary as [`Note`] `"sigterm"`), so only SIGKILL ends it.
    IgnoreShutdown,
    /// Never connects to the primary; just waits.
    NeverConnect,
    /// Exits with code 1 before connecting.
    CrashOnStart,
    /// Presents another worker's id in the `Hello` on its own channel, then exits once the primary
    /// hangs up: [`HUNG_UP_WITH_NOTICE`] if it was told it is unauthorized first.
    Evil,
    /// Speaks the protocol by hand: a valid handshake, `Ready`, then answers the first request
    /// with the malformed bytes [`ENV_GARBAGE`] names, and exits once the primary hangs up.
    Garbage,
    /// Speaks the protocol by hand: a valid handshake, `Ready`, then [`GREEDY_PAIRS`] pairs of
    /// requests in one write, each an increment of [`GREEDY_COUNT_PATH`] and a read of
    /// [`GREEDY_BIG_PATH`], and never reads a reply. Prints [`GREEDY_SENT_LINE`] once all are
    /// written, then waits.
    Greedy,
    /// Plays a primary: forks two [`Scenario::Normal`] workers of this binary, waits until they
    /// are ready, forks `sleep 1000` as [`FOREIGN_WORKER`], prints [`PIDS_LINE_PREFIX`] and the
    /// three pids on one stdout line, and waits. It registers [`Note`], passes
    /// [`ENV_HOOK_FILE`] (with the worker's name appended) on to its workers, and is built
    /// `non_dumpable` when [`ENV_NON_DUMPABLE_PRIMARY`] is set.
    Primary,
    /// Plays a primary on a durable storage (`persist-primary sled <dir>` or
    /// `persist-primary redis <url> <key prefix>`): forks [`PERSIST_WRITERS`] normal workers and
    /// has each run [`WriteSequence`] for good; the workers print an [`ACK_LINE_PREFIX`] line per
    /// acknowledged write. Made to be killed with SIGKILL.
    PersistPrimary,
    /// Connects, turns Processing for good and never finishes, but keeps SIGTERM's default, so
    /// the stop signal ends it.
    IgnoreRequest,
    /// Connects, then blocks its (current-thread) runtime for good: it cannot answer a ping.
    Hang,
    /// Connects, then allocates and touches [`ENV_GROW_BYTES`] bytes and holds them, serving
    /// as [`Scenario::Normal`] does.
    Grow,
    /// Connects, takes the first shared listener with the `listenfd` crate (as code written for
    /// systemd socket activation does), and answers every connection with one line
    /// [`LISTENFD_ANSWER`] and its name.
    ListenfdWorker,
    /// Plays a primary that systemd started by socket activation (the caller passes a listening
    /// socket as descriptor 3 with `LISTEN_FDS=1`, `LISTEN_FDNAMES=http`): it asks for "http"
    /// at an address it could not bind, forks one [`Scenario::ListenfdWorker`], prints
    /// [`READY_LINE`] when it is ready, and waits.
    SocketActivatedPrimary,
    /// Connects, takes the shared listener "api" with `Worker::listener`, and answers every
    /// connection with one line: [`API_ANSWER`], its name, and the client's address (TCP) or
    /// `unix`.
    ApiWorker,
    /// Connects with `manual_ready`, takes the shared listener "api", says it is ready, and
    /// never accepts on it; serves as [`Scenario::Normal`] does.
    HoldListener,
    /// Connects with `manual_ready`, then exits with code 3 before it says it is ready: a new
    /// version that fails while it starts.
    ConnectThenCrash,
    /// Waits [`ENV_START_DELAY_MS`] before it connects (a large program on a cold cache), then
    /// serves as [`Scenario::Normal`] does.
    SlowStart,
    /// Sends the first bytes of its `Hello` on its channel, then stalls for good: a worker that
    /// connected and never finished its handshake.
    StallHello,
    /// Started by hand, plays a primary that forks two workers by re-executing itself (no
    /// `program`, no shared listeners: the fast spawn), prints [`PIDS_LINE_PREFIX`] and their
    /// pids once they are ready, and waits; as such a worker (`role()` says so), connects and
    /// then blocks its main thread for good, so that only its parent-death signal ends it.
    SelfPrimary,
}

/// Set (to anything) to build the [`Scenario::Primary`] primary with `non_dumpable(true)`.
pub const ENV_NON_DUMPABLE_PRIMARY: &str = "CLUSTERFY_TEST_NON_DUMPABLE_PRIMARY";

/// Milliseconds a [`Scenario::SlowStart`] worker waits before it connects.
pub const ENV_START_DELAY_MS: &str = "CLUSTERFY_TEST_START_DELAY_MS";

/// What a [`Scenario::ApiWorker`] answers, before its name.
pub const API_ANSWER: &str = "api worker";

/// What a [`Scenario::ListenfdWorker`] answers, before its name.
pub const LISTENFD_ANSWER: &str = "listenfd worker";
/// What a primary scenario prints once its workers are ready.
pub const READY_LINE: &str = "cluster ready";

/// Bytes a [`Scenario::Grow`] worker allocates.
pub const ENV_GROW_BYTES: &str = "CLUSTERFY_TEST_GROW_BYTES";

/// Workers of [`Scenario::PersistPrimary`].
pub const PERSIST_WRITERS: [&str; 3] = ["writer-a", "writer-b", "writer-c"];

/// Starts a stdout line `ACK <worker> <n>`: the write of `acks.<worker>.k<n>` was acknowledged.
pub const ACK_LINE_PREFIX: &str = "ACK";

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 20] = [
        Scenario::Normal,
        Scenario::IgnoreShutdown,
        Scenario::NeverConnect,
        Scenario::CrashOnStart,
        Scenario::Evil,
        Scenario::Garbage,
        Scenario::Greedy,
        Scenario::Primary,
        Scenario::PersistPrimary,
        Scenario::IgnoreRequest,
        Scenario::Hang,
        Scenario::Grow,
        Scenario::ListenfdWorker,
        Scenario::SocketActivatedPrimary,
        Scenario::ApiWorker,
        Scenario::HoldListener,
        Scenario::ConnectThenCrash,
        Scenario::SlowStart,
        Scenario::StallHello,
        Scenario::SelfPrimary,
    ];

    /// The argument that selects it.
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Normal => "normal",
            Scenario::IgnoreShutdown => "ignore-shutdown",
            Scenario::NeverConnect => "never-connect",
            Scenario::CrashOnStart => "crash-on-start",
            Scenario::Evil => "evil",
            Scenario::Garbage => "garbage",
            Scenario::Greedy => "greedy",
            Scenario::Primary => "primary",
            Scenario::PersistPrimary => "persist-primary",
            Scenario::IgnoreRequest => "ignore-request",
            Scenario::Hang => "hang",
            Scenario::Grow => "grow",
            Scenario::ListenfdWorker => "listenfd-worker",
            Scenario::SocketActivatedPrimary => "socket-activated-primary",
            Scenario::ApiWorker => "api-worker",
            Scenario::HoldListener => "hold-listener",
            Scenario::ConnectThenCrash => "connect-then-crash",
            Scenario::SlowStart => "slow-start",
            Scenario::StallHello => "stall-hello",
            Scenario::SelfPrimary => "self-primary",
        }
    }

    /// The scenario an argument selects.
    pub fn parse(arg: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.as_str() == arg)
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Answers with its text.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.echo", target = worker, reply = String)]
pub struct Echo {
    /// What to send back.
    pub text: String,
}

/// Who a worker is, as it sees itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Its worker id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// How often it was revived before this process.
    pub restarts: u32,
}

/// Answers with the worker's [`Identity`].
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.who_am_i", target = worker, reply = Identity)]
pub struct WhoAmI;

/// As [`WhoAmI`], but the worker named `slow` first waits `ms` milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.slow_who_am_i", target = worker, reply = Identity)]
pub struct SlowWhoAmI {
    /// The worker that answers late.
    pub slow: String,
    /// How late.
    pub ms: u64,
}

/// Turns Processing, sleeps `ms` milliseconds, turns Idle (which exits the worker if a shutdown
/// request arrived meanwhile), then answers.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.sleep", target = worker, reply = ())]
pub struct Sleep {
    /// How long to be busy.
    pub ms: u64,
}

/// Exits the worker process at once with `code`; never answers.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.exit_with", target = worker, reply = ())]
pub struct ExitWith {
    /// The exit code.
    pub code: i32,
}

/// Ends the worker with `Worker::exit(code)`: shutdown hooks, a last Stopping status to the
/// primary, then the process exits; never answers.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.exit_gracefully", target = worker, reply = ())]
pub struct ExitGracefully {
    /// The exit code.
    pub code: i32,
}

/// Changes the worker's status with `Worker::set_status`; answers with the status afterwards.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.set_status", target = worker, reply = WorkerStatus)]
pub struct SetStatus {
    /// The status to set.
    pub status: WorkerStatus,
}

/// Switches Processing / Idle `times` times each, as fast as possible (many status events).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.flap_status", target = worker, reply = ())]
pub struct FlapStatus {
    /// How many Processing -> Idle rounds.
    pub times: u32,
}

/// Turns Processing and answers; the worker stays busy until the primary asks it to shut down
/// (`Worker::shutdown_requested`), works `finish_ms` milliseconds more, then turns Idle; the
/// process ends only after that work.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.work_until_shutdown", target = worker, reply = ())]
pub struct WorkUntilShutdown {
    /// Time from the shutdown request to the end of the work.
    pub finish_ms: u64,
}

/// Asks another worker, through the primary, for its [`Identity`].
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.ask_who_am_i", target = worker, reply = Identity)]
pub struct AskWhoAmI {
    /// The worker to ask.
    pub target: WorkerSelector,
}

/// Broadcasts [`WhoAmI`] from this worker to every worker; answers with each worker's name and
/// identity or error text, in the order the broadcast returned them.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.broadcast_who_am_i", target = worker, reply = Vec<(String, Result<Identity, String>)>)]
pub struct BroadcastWhoAmI;

/// Runs [`PrimaryEcho`] on the primary and answers with its reply.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.call_primary", target = worker, reply = String)]
pub struct CallPrimary {
    /// The text to pass on.
    pub text: String,
}

/// Saves `value` at `path` from the worker (`save`, or `save_with_parents` if `create_parents`).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.save_at", target = worker, reply = ())]
pub struct SaveAt {
    /// Dotted path.
    pub path: String,
    /// The value.
    pub value: Value,
    /// Create missing parent maps.
    pub create_parents: bool,
}

/// Reads the value or subtree at `path` from the worker.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.read_at", target = worker, reply = Option<Value>)]
pub struct ReadAt {
    /// Dotted path.
    pub path: String,
}

/// Saves `acks.<worker name>.k<n>` = n for n = 0, 1, ... `count - 1`, one after the other,
/// printing an [`ACK_LINE_PREFIX`] line on stdout after each acknowledgement if `announce`.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.write_sequence", target = worker, reply = u64)]
pub struct WriteSequence {
    /// How many writes.
    pub count: u64,
    /// Whether each acknowledgement is printed (for a test that kills the primary meanwhile).
    pub announce: bool,
}

/// Runs one key-value operation through the worker's remote view of the storage, below `root`
/// (see [`remote_kv`]).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.run_kv", target = worker, reply = remote_kv::KvReply)]
pub struct RunKv {
    /// Dotted path of the map that holds the keys.
    pub root: String,
    /// The operation.
    pub op: remote_kv::KvOp,
}

/// Makes the worker watch `path`; answers once the primary registered the watch.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.start_watch", target = worker, reply = ())]
pub struct StartWatch {
    /// Dotted path.
    pub path: String,
}

/// Answers the next change the worker's watch (from [`StartWatch`]) reported, as a dotted path.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.next_change", target = worker, reply = String)]
pub struct NextChange;

/// Compare-and-swap from the worker; answers `Err(current)` when it lost.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.compare_and_swap_at", target = worker, reply = Result<(), Option<Value>>)]
pub struct CompareAndSwapAt {
    /// Dotted path.
    pub path: String,
    /// The value expected there (`None`: nothing).
    pub expected: Option<Value>,
    /// The value to write (`None`: delete).
    pub new: Option<Value>,
}

/// Adds one to the integer at `path` (missing counts as 0) `times` times, each with
/// `Storage::update`; answers with the last value written.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.increment_many", target = worker, reply = i64)]
pub struct IncrementMany {
    /// Dotted path of the counter.
    pub path: String,
    /// How many increments.
    pub times: u32,
}

/// Adds one to the integer at `path` `times` times with `Storage::increment`, `in_flight` at a
/// time; answers with every value its increments made, in no particular order.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.increment_hot", target = worker, reply = Vec<i64>)]
pub struct IncrementHot {
    /// Dotted path of the counter.
    pub path: String,
    /// How many increments.
    pub times: u32,
    /// How many are in flight at once.
    pub in_flight: usize,
}

/// One atomic operation of the shared storage, run by a worker with its `Storage` handle.
// Each variant's fields are the arguments of the `Storage` method it names.
#[allow(missing_docs)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AtomicOp {
    /// `Storage::increment`.
    Increment { path: String, by: i64 },
    /// `Storage::increment_float`.
    IncrementFloat { path: String, by: f64 },
    /// `Storage::append`.
    Append { path: String, value: Value },
    /// `Storage::remove_value`.
    RemoveValue { path: String, value: Value },
    /// `Storage::insert_if_absent`.
    InsertIfAbsent { path: String, value: Value },
    /// `Storage::take`.
    Take { path: String },
    /// `Storage::apply` of [`TopScores`].
    TopScores { path: String, n: i64, keep: usize },
}

/// Runs an [`AtomicOp`] on the worker; answers with what the operation returned, as a `Value`.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.run_atomic", target = worker, reply = Value)]
pub struct RunAtomic(pub AtomicOp);

/// A storage operation of the tests' own, registered on every test primary: keeps the `keep`
/// largest numbers seen at its path, largest first, and answers whether `n` made it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopScores {
    /// The new number.
    pub n: i64,
    /// How many to keep.
    pub keep: usize,
}

impl clusterfy::storage::Operation for TopScores {
    const NAME: &'static str = "test.top_scores";
    type Value = Vec<i64>;
    type Reply = bool;

    fn apply(self, current: Option<Vec<i64>>) -> clusterfy::Result<(Option<Vec<i64>>, bool)> {
        let mut scores = current.unwrap_or_default();
        scores.push(self.n);
        scores.sort_unstable_by(|a, b| b.cmp(a));
        scores.truncate(self.keep);
        let kept = scores.contains(&self.n);
        Ok((Some(scores), kept))
    }
}

/// Starts the worker's replica of the branch at `path`, kept until the worker ends (one at a
/// time: a second replaces the first).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.start_replica", target = worker, reply = ())]
pub struct StartReplica {
    /// The branch.
    pub path: String,
}

/// Reads `path` from the worker's replica; with `until`, waits (for up to 10 s of changes) until
/// it shows that value. Answers with what it shows.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.replica_get", target = worker, reply = Option<Value>)]
pub struct ReplicaGet {
    /// The dotted path.
    pub path: String,
    /// The value to wait for.
    pub until: Option<Value>,
}

/// Saves `value` at `path` through the worker's storage, then reads `path` from its replica at
/// once (no waiting); answers with what the replica showed.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.save_then_read_replica", target = worker, reply = Option<Value>)]
pub struct SaveThenReadReplica {
    /// The dotted path.
    pub path: String,
    /// The value.
    pub value: Value,
}

/// Never registered by `test-worker`: sending it must fail with an unknown-command error.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.unregistered", target = worker, reply = ())]
pub struct Unregistered;

/// Targets the primary: the tests register a handler that answers with the text and who sent it.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.primary_echo", target = primary, reply = String)]
pub struct PrimaryEcho {
    /// The text.
    pub text: String,
}

/// Targets the primary: a one-way report from a worker (for example `"sigterm"` when the
/// `ignore-shutdown` scenario traps one).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "test.note", target = primary, reply = ())]
pub struct Note {
    /// What happened.
    pub text: String,
}
