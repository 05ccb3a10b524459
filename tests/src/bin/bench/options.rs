//! The command line, the runtime every process builds from it, and how much a run measures.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::BenchResult;

/// The internal flag that makes this binary the baseline's echo server.
pub(crate) const RAW_ECHO_FLAG: &str = "--raw-echo";
/// The internal flag that makes this binary the pipe baseline's echo server (on its stdin/stdout).
pub(crate) const RAW_PIPE_ECHO_FLAG: &str = "--raw-pipe-echo";
/// The internal flag that makes this binary the HTTP baseline's server: it binds `127.0.0.1:0`,
/// writes the address on its stdout and serves until its stdin closes.
pub(crate) const RAW_HTTP_FLAG: &str = "--raw-http";
/// The internal flag that makes this binary a bare process that exits 0 at once.
pub(crate) const NOOP_FLAG: &str = "--noop";
/// The internal flag that makes this binary a bare process that says so and parks until killed.
pub(crate) const IDLE_FLAG: &str = "--idle";
/// The flag selecting tokio's multi-thread runtime in every process.
pub(crate) const MULTI_THREAD_FLAG: &str = "--multi-thread";
/// The flag selecting a short smoke run.
pub(crate) const QUICK_FLAG: &str = "--quick";
/// The flag running only pipelined saves, for the instruction count of the primary.
pub(crate) const ONLY_PIPELINED_SAVE_FLAG: &str = "--only-pipelined-save";
/// The flag running only the socket baseline's pipelined frames, for the instruction count of its
/// echo server.
pub(crate) const ONLY_RAW_ECHO_FLAG: &str = "--only-raw-echo";

/// The tokio runtime every process of one run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// `new_current_thread`: one thread per process (the default).
    CurrentThread,
    /// `new_multi_thread` with one worker thread per core.
    MultiThread,
}

impl Flavor {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Flavor::CurrentThread => "current_thread",
            Flavor::MultiThread => "multi_thread (one worker thread per core)",
        }
    }
}

/// The bare processes of the process baselines: this binary doing (almost) nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BareProcess {
    /// [`NOOP_FLAG`]: exits 0 at once.
    Noop,
    /// [`IDLE_FLAG`]: writes a line to its stdout, then parks until killed.
    Idle,
}

/// A single workload run instead of the benchmark, for `tests/bench-instructions.sh`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Only {
    /// [`ONLY_PIPELINED_SAVE_FLAG`]: a primary whose worker does `saves` pipelined saves.
    PipelinedSave { saves: u32 },
    /// [`ONLY_RAW_ECHO_FLAG`]: `frames` pipelined frames to a socket echo child started as
    /// `<wrapper...> <this binary> --raw-echo <socket>` (the arguments after `--`).
    RawEcho { frames: u32, wrapper: Vec<OsString> },
}

/// What the command line asked for.
#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) quick: bool,
    pub(crate) flavor: Flavor,
    /// Set in the socket baseline's echo child: the socket to connect to.
    pub(crate) raw_echo: Option<PathBuf>,
    /// Set in the pipe baseline's echo child, which echoes its stdin to its stdout.
    pub(crate) raw_pipe_echo: bool,
    /// Set in the HTTP baseline's server.
    pub(crate) raw_http: bool,
    /// Set in a bare process of the process baselines.
    pub(crate) bare: Option<BareProcess>,
    /// Set when only one workload is to run.
    pub(crate) only: Option<Only>,
}

fn usage() -> String {
    format!(
        "usage: bench [{QUICK_FLAG}] [{MULTI_THREAD_FLAG} | --current-thread]\n  {QUICK_FLAG}           a short \
         smoke run (one repetition, a twentieth of the iterations)\n  {MULTI_THREAD_FLAG}    use tokio's \
         multi-thread runtime in every process\n  --current-thread  use tokio's current-thread runtime in every \
         process (the default)\n\nfor tests/bench-instructions.sh:\n  {ONLY_PIPELINED_SAVE_FLAG} <n>  only a \
         primary whose worker does <n> saves with 256 in flight\n  {ONLY_RAW_ECHO_FLAG} <n> [-- <wrapper>...]  \
         only <n> frames with 256 in flight to the raw echo child, started under <wrapper> if given"
    )
}

/// The number after `flag`.
fn count_after(flag: &str, value: Option<OsString>) -> BenchResult<u32> {
    let value = value.ok_or_else(|| format!("{flag} needs a number"))?;
    let parsed = value.to_str().and_then(|s| s.parse().ok());
    Ok(parsed.ok_or_else(|| format!("{flag} needs a number, not {value:?}"))?)
}

pub(crate) fn parse_args(args: impl IntoIterator<Item = OsString>) -> BenchResult<Options> {
    let mut options = Options {
        quick: false,
        flavor: Flavor::CurrentThread,
        raw_echo: None,
        raw_pipe_echo: false,
        raw_http: false,
        bare: None,
        only: None,
    };
    let mut wrapper = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some(QUICK_FLAG) => options.quick = true,
            Some(MULTI_THREAD_FLAG) => options.flavor = Flavor::MultiThread,
            Some("--current-thread") => options.flavor = Flavor::CurrentThread,
            Some(RAW_ECHO_FLAG) => {
                let path = args.next().ok_or_else(|| format!("{RAW_ECHO_FLAG} needs a socket path"))?;
                options.raw_echo = Some(PathBuf::from(path));
            }
            Some(RAW_PIPE_ECHO_FLAG) => options.raw_pipe_echo = true,
            Some(RAW_HTTP_FLAG) => options.raw_http = true,
            Some(NOOP_FLAG) => options.bare = Some(BareProcess::Noop),
            Some(IDLE_FLAG) => options.bare = Some(BareProcess::Idle),
            Some(ONLY_PIPELINED_SAVE_FLAG) => {
                let saves = count_after(ONLY_PIPELINED_SAVE_FLAG, args.next())?;
                options.only = Some(Only::PipelinedSave { saves });
            }
            Some(ONLY_RAW_ECHO_FLAG) => {
                let frames = count_after(ONLY_RAW_ECHO_FLAG, args.next())?;
                options.only = Some(Only::RawEcho { frames, wrapper: Vec::new() });
            }
            Some("--") => wrapper.extend(args.by_ref()),
            Some("-h" | "--help") => {
                println!("{}", usage());
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {arg:?}\n{}", usage()).into()),
        }
    }
    if !wrapper.is_empty() {
        match &mut options.only {
            Some(Only::RawEcho { wrapper: wrap, .. }) => *wrap = wrapper,
            _ => {
                return Err(
                    format!("`-- <wrapper>...` goes only with {ONLY_RAW_ECHO_FLAG}\n{}", usage()).into()
                );
            }
        }
    }
    Ok(options)
}

pub(crate) fn build_runtime(flavor: Flavor) -> io::Result<tokio::runtime::Runtime> {
    match flavor {
        Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Flavor::MultiThread => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    }
}

/// How much to run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) repetitions: usize,
    pub(crate) sequential: u32,
    pub(crate) pipelined: u32,
    /// Pipelined saves to distinct paths on memory storage (the reference of the backends' rows).
    pub(crate) distinct_pipelined: u32,
    /// Sequential saves on sled, and inserts of the raw sled baseline (each waits for a flush).
    pub(crate) durable_sequential: u32,
    /// Pipelined saves on sled.
    pub(crate) durable_pipelined: u32,
    /// Pipelined saves on the Redis mirror, and `HSET`s of the raw Redis baseline.
    pub(crate) redis_pipelined: u32,
    /// Sequential saves in `AckMode::Redis`, and round trips of the raw Redis baseline.
    pub(crate) redis_sequential: u32,
    /// Repetitions of the process rows (spawn to ready, resident sets), each cheap.
    pub(crate) process_repetitions: usize,
    /// Saves of each storm worker in one storm.
    pub(crate) storm_saves: u32,
    /// How long one steady HTTP load runs (after a warm-up of a tenth as long), unless it sent
    /// [`http_requests`](Self::http_requests) first.
    pub(crate) http_load: Duration,
    /// The most requests one steady HTTP load sends.
    pub(crate) http_requests: u64,
    /// Reads of a replica (and of the plain map of its baseline) in one measurement.
    pub(crate) replica_reads: u32,
}

impl Plan {
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Plan {
                repetitions: 1,
                sequential: 1_000,
                pipelined: 10_000,
                distinct_pipelined: 5_000,
                durable_sequential: 100,
                durable_pipelined: 1_000,
                // Unused: the Redis measurements are skipped in a quick run.
                redis_pipelined: 5_000,
                redis_sequential: 500,
                process_repetitions: 3,
                storm_saves: 200,
                http_load: Duration::from_millis(500),
                http_requests: 100_000,
                replica_reads: 200_000,
            }
        } else {
            Plan {
                repetitions: 5,
                sequential: 20_000,
                pipelined: 200_000,
                distinct_pipelined: 50_000,
                durable_sequential: 2_000,
                durable_pipelined: 10_000,
                redis_pipelined: 50_000,
                redis_sequential: 5_000,
                process_repetitions: 10,
                storm_saves: 2_000,
                http_load: Duration::from_secs(3),
                http_requests: 1_000_000,
                replica_reads: 5_000_000,
            }
        }
    }

    pub(crate) fn warmup(iterations: u32) -> u32 {
        iterations / 10
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let parsed =
            parse_args([QUICK_FLAG, MULTI_THREAD_FLAG].map(OsString::from)).expect("valid arguments");
        assert!(parsed.quick && parsed.flavor == Flavor::MultiThread && parsed.raw_echo.is_none());
        assert!(!parsed.raw_pipe_echo);
        assert!(parse_args([OsString::from(RAW_PIPE_ECHO_FLAG)]).expect("valid arguments").raw_pipe_echo);
        assert!(parse_args([OsString::from(RAW_HTTP_FLAG)]).expect("valid arguments").raw_http);
        assert!(parse_args([OsString::from("--bogus")]).is_err());
        assert!(parse_args([OsString::from(RAW_ECHO_FLAG)]).is_err());
    }

    #[test]
    fn bare_process_and_single_workload_arguments() {
        let parse = |args: &[&str]| parse_args(args.iter().map(OsString::from));
        assert_eq!(parse(&[NOOP_FLAG]).expect("valid").bare, Some(BareProcess::Noop));
        assert_eq!(parse(&[IDLE_FLAG]).expect("valid").bare, Some(BareProcess::Idle));
        let only = parse(&[ONLY_PIPELINED_SAVE_FLAG, "500"]).expect("valid").only;
        assert_eq!(only, Some(Only::PipelinedSave { saves: 500 }));
        let only =
            parse(&[ONLY_RAW_ECHO_FLAG, "7", "--", "valgrind", "--tool=callgrind"]).expect("valid").only;
        let wrapper = vec![OsString::from("valgrind"), OsString::from("--tool=callgrind")];
        assert_eq!(only, Some(Only::RawEcho { frames: 7, wrapper }));
        assert!(parse(&[ONLY_PIPELINED_SAVE_FLAG]).is_err(), "a count is needed");
        assert!(parse(&[ONLY_PIPELINED_SAVE_FLAG, "many"]).is_err(), "the count is a number");
        assert!(parse(&[QUICK_FLAG, "--", "valgrind"]).is_err(), "a wrapper needs --only-raw-echo");
    }
}
