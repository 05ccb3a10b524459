//! The workers' output, captured (`pm2 logs`): each worker's stdout and stderr share one pipe
//! (so its lines keep the order it wrote them in), which the primary reads as fast as the worker
//! writes. Every line goes into a bounded ring per worker name (oldest dropped first, and
//! counted) and to the followers, and is echoed on the primary's stderr with the worker's name in
//! front. Nothing the primary does with a line can block the worker: an echo or a follower that
//! falls behind loses lines (and is told how many), the ring never grows past its bound.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, OnceLock};

use clusterfy_core::{Error, Result};
use tokio::io::AsyncReadExt;
use tokio::sync::broadcast;

use super::Primary;

/// Lines kept per worker (fewer if they hold more than [`LOG_RING_BYTES`]).
pub const LOG_RING_LINES: usize = 1000;
/// Bytes of text kept per worker: long lines make the ring shorter, never larger.
pub const LOG_RING_BYTES: usize = 1 << 20;
/// Longest line kept whole, in bytes; a longer one is cut there and says so.
pub const MAX_LOG_LINE: usize = 16 * 1024;
/// Lines waiting to be echoed on the primary's stderr before echoes are dropped (at most
/// 16 MiB, as each is at most [`MAX_LOG_LINE`]).
const ECHO_QUEUE: usize = 1024;
/// Lines a follower may lag behind before it misses some (the same bound).
const FOLLOW_QUEUE: usize = 1024;
/// How a cut line ends.
const CUT_MARK: &str = " [line cut: longer than 16 KiB]";

/// One line a worker wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogLine {
    /// The worker's name.
    pub worker: String,
    /// The line, without its newline; invalid UTF-8 replaced (lossy), a cut one marked.
    pub text: String,
}

/// One worker's last lines.
#[derive(Default)]
struct Ring {
    lines: VecDeque<LogLine>,
    /// Bytes of text in `lines`.
    bytes: usize,
    /// Lines dropped to keep the bounds.
    dropped: u64,
}

/// The captured output of every worker.
pub(crate) struct Logs {
    rings: Mutex<BTreeMap<String, Ring>>,
    followers: broadcast::Sender<LogLine>,
    /// The thread that echoes lines on this process's stderr, started with the first line.
    echo: OnceLock<Option<SyncSender<LogLine>>>,
}

impl Logs {
    /// Rings and followers; with `echo`, every line on this process's stderr too.
    pub(crate) fn new(echo: bool) -> Self {
        let (followers, _) = broadcast::channel(FOLLOW_QUEUE);
        let logs = Logs { rings: Mutex::new(BTreeMap::new()), followers, echo: OnceLock::new() };
        if !echo {
            let _ = logs.echo.set(None);
        }
        logs
    }

    /// The echo: a thread of its own, so a terminal or a pipe that stalls stalls only it.
    fn echo(&self) -> Option<&SyncSender<LogLine>> {
        self.echo
            .get_or_init(|| {
                let (echo, echoes) = std::sync::mpsc::sync_channel::<LogLine>(ECHO_QUEUE);
                let started =
                    std::thread::Builder::new().name("clusterfy-logs".to_owned()).spawn(move || {
                        for line in echoes {
                            let _ = writeln!(std::io::stderr().lock(), "[{}] {}", line.worker, line.text);
                        }
                    });
                // Without the thread the lines are still kept and followed, only not echoed.
                started.ok().map(|_| echo)
            })
            .as_ref()
    }

    fn rings(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Ring>> {
        // A ring is never left half-changed.
        self.rings.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn keep(&self, line: LogLine) {
        {
            let mut rings = self.rings();
            let ring = rings.entry(line.worker.clone()).or_default();
            ring.bytes += line.text.len();
            ring.lines.push_back(line.clone());
            while ring.lines.len() > LOG_RING_LINES || ring.bytes > LOG_RING_BYTES {
                let Some(oldest) = ring.lines.pop_front() else { break };
                ring.bytes -= oldest.text.len();
                ring.dropped += 1;
            }
            // Under the lock, so a follower that read the rings first sees each line once.
            // No follower is fine.
            let _ = self.followers.send(line.clone());
        }
        // A full echo queue drops the echo, never the line.
        if let Some(echo) = self.echo() {
            let _ = echo.try_send(line);
        }
    }

    /// The last `lines` lines of every worker `which` accepts, oldest first, worker by worker;
    /// and how many older lines those workers' rings dropped.
    pub(crate) fn last(&self, which: impl Fn(&str) -> bool, lines: usize) -> (Vec<LogLine>, u64) {
        Self::last_of(&self.rings(), which, lines)
    }

    /// Whether worker `name` wrote lines that are kept (it may have left the directory since).
    fn has(&self, name: &str) -> bool {
        self.rings().contains_key(name)
    }

    /// [`Logs::last`], and every line after those.
    pub(crate) fn last_then_follow(
        &self,
        which: impl Fn(&str) -> bool,
        lines: usize,
    ) -> ((Vec<LogLine>, u64), broadcast::Receiver<LogLine>) {
        let rings = self.rings();
        (Self::last_of(&rings, which, lines), self.followers.subscribe())
    }

    fn last_of(
        rings: &BTreeMap<String, Ring>,
        which: impl Fn(&str) -> bool,
        lines: usize,
    ) -> (Vec<LogLine>, u64) {
        let mut found = Vec::new();
        let mut dropped = 0;
        for (_, ring) in rings.iter().filter(|(name, _)| which(name)) {
            let skip = ring.lines.len().saturating_sub(lines);
            dropped += ring.dropped + skip as u64;
            found.extend(ring.lines.iter().skip(skip).cloned());
        }
        (found, dropped)
    }
}

/// The pipe a worker process writes its stdout and stderr to; set on its command before the
/// transport prepares it (a transport that carries the protocol on stdout takes stdout back, and
/// the worker then writes its output to stderr).
pub(crate) struct Capture {
    reader: std::io::PipeReader,
}

impl Capture {
    pub(crate) fn set_on(command: &mut tokio::process::Command) -> Result<Capture> {
        let (reader, writer) =
            std::io::pipe().map_err(|e| Error::io("creating a pipe for a worker's output", e))?;
        let copy = writer.try_clone().map_err(|e| Error::io("copying the pipe of a worker's output", e))?;
        command.stdout(copy).stderr(writer);
        Ok(Capture { reader })
    }

    /// Reads the worker's lines into `logs` until the pipe closes (every process that held it ended).
    pub(crate) fn start(self, logs: Arc<Logs>, worker: String) -> Result<()> {
        let fd = std::os::fd::OwnedFd::from(self.reader);
        let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
            .map_err(|e| Error::io("reading a worker's output", e))?;
        tokio::spawn(read_lines(pipe, logs, worker));
        Ok(())
    }
}

async fn read_lines(mut pipe: tokio::net::unix::pipe::Receiver, logs: Arc<Logs>, worker: String) {
    let mut line = Vec::new();
    let mut cut = false;
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &byte in &buffer[..read] {
            if byte == b'\n' {
                logs.keep(line_of(&worker, &line, cut));
                line.clear();
                cut = false;
            } else if line.len() < MAX_LOG_LINE {
                line.push(byte);
            } else {
                cut = true;
            }
        }
    }
    if !line.is_empty() {
        logs.keep(line_of(&worker, &line, cut));
    }
}

fn line_of(worker: &str, bytes: &[u8], cut: bool) -> LogLine {
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    if cut {
        text.push_str(CUT_MARK);
    }
    LogLine { worker: worker.to_owned(), text }
}

/// The lines the workers it follows write from now on ([`Primary::follow_logs`]).
#[derive(Debug)]
pub struct LogStream {
    lines: broadcast::Receiver<LogLine>,
    which: Option<String>,
}

impl LogStream {
    /// The next line, or `Err(n)` when this stream fell `n` lines behind and skipped them (of
    /// any worker: it goes on with the next); `None` once the primary is gone.
    pub async fn next(&mut self) -> Option<std::result::Result<LogLine, u64>> {
        loop {
            match self.lines.recv().await {
                Ok(line) if names(self.which.as_deref(), &line.worker) => return Some(Ok(line)),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => return Some(Err(missed)),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Primary {
    /// The last `lines` lines (at most) of each worker `which` names, a worker's name or a
    /// group's (every worker when `None`), worker by worker in name order, each oldest first;
    /// and how many older lines of theirs are not among them (dropped from the rings, or past
    /// `lines`). Only workers whose output is captured have lines
    /// ([`WorkerOptions::capture_output`](super::WorkerOptions::capture_output)). A name that is
    /// neither a worker's nor a group's is an error naming those there are.
    pub fn logs(&self, which: Option<&str>, lines: usize) -> Result<(Vec<LogLine>, u64)> {
        self.check_which(which)?;
        Ok(self.inner.logs.last(|name| names(which, name), lines))
    }

    /// [`Primary::logs`], and a stream of every line the same workers write after those, as
    /// they write them.
    pub fn follow_logs(&self, which: Option<&str>, lines: usize) -> Result<((Vec<LogLine>, u64), LogStream)> {
        self.check_which(which)?;
        let (last, lines) = self.inner.logs.last_then_follow(|name| names(which, name), lines);
        Ok((last, LogStream { lines, which: which.map(str::to_owned) }))
    }

    fn check_which(&self, which: Option<&str>) -> Result<()> {
        let Some(which) = which else { return Ok(()) };
        let directory = self.inner.directory();
        let logged = self.inner.logs.has(which);
        if logged
            || directory.slots().any(|s| names(Some(which), &s.worker().name))
            || directory.groups().options(which).is_ok()
        {
            return Ok(());
        }
        let workers: Vec<&str> = directory.slots().map(|s| s.worker().name.as_str()).collect();
        let groups: Vec<&str> = directory.groups().names().collect();
        Err(Error::new(
            clusterfy_core::ErrorKind::UnknownWorker,
            format!(
                "no worker or group named {:?}; the workers are [{}], the groups [{}]",
                clusterfy_core::error::excerpt(which),
                workers.join(", "),
                groups.join(", ")
            ),
        ))
    }
}

/// Whether worker `name` is `which`: its name, or its group's (see [`Primary::fork_group`]).
fn names(which: Option<&str>, name: &str) -> bool {
    which.is_none_or(|which| which == name || super::group::member_index(which, name).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(worker: &str, text: &str) -> LogLine {
        LogLine { worker: worker.to_owned(), text: text.to_owned() }
    }

    #[tokio::test]
    async fn rings_are_bounded_per_worker_and_count_what_they_dropped() {
        let logs = Logs::new(false);
        for n in 0..LOG_RING_LINES + 5 {
            logs.keep(line("a", &n.to_string()));
        }
        logs.keep(line("b", "only"));
        let (last, dropped) = logs.last(|name| name == "a", 2);
        assert_eq!(
            last,
            [line("a", &(LOG_RING_LINES + 3).to_string()), line("a", &(LOG_RING_LINES + 4).to_string())]
        );
        assert_eq!(dropped, 5 + (LOG_RING_LINES as u64 - 2));
        let (all, _) = logs.last(|_| true, usize::MAX);
        assert_eq!(all.len(), LOG_RING_LINES + 1);
        // Long lines: the bytes bound holds, with the newest kept.
        let long = "y".repeat(MAX_LOG_LINE);
        for _ in 0..2 * LOG_RING_BYTES / MAX_LOG_LINE {
            logs.keep(line("c", &long));
        }
        let (kept, _) = logs.last(|name| name == "c", usize::MAX);
        assert_eq!(kept.len(), LOG_RING_BYTES / MAX_LOG_LINE);
    }

    #[tokio::test]
    async fn lines_are_split_cut_and_kept_lossy() {
        let logs = Arc::new(Logs::new(false));
        let (reader, mut writer) = std::io::pipe().expect("pipe");
        Capture { reader }.start(Arc::clone(&logs), "w".to_owned()).expect("reading");
        let (_, mut follower) = logs.last_then_follow(|_| true, 0);
        let long = "x".repeat(MAX_LOG_LINE + 10);
        writer.write_all(format!("one\n{long}\n").as_bytes()).expect("write");
        writer.write_all(b"bad \xff utf-8\nlast without newline").expect("write");
        drop(writer);
        let mut got = Vec::new();
        while got.len() < 4 {
            got.push(follower.recv().await.expect("a line").text);
        }
        assert_eq!(got[0], "one");
        assert_eq!(got[1], format!("{}{CUT_MARK}", "x".repeat(MAX_LOG_LINE)));
        assert_eq!(got[2], "bad \u{fffd} utf-8");
        assert_eq!(got[3], "last without newline");
    }
}
