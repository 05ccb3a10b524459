//! The process baselines: bare processes of this binary that do nothing ([`NOOP_FLAG`], exit at
//! once; [`IDLE_FLAG`], park until killed), and the resident set of a process.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::BenchResult;
use crate::options::{IDLE_FLAG, NOOP_FLAG};

/// What an idle bare process writes on its stdout once it is idle.
const IDLE_LINE: &str = "idle";

/// The [`IDLE_FLAG`] process: says it is idle, then parks until it is killed.
pub(crate) fn idle() -> BenchResult<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{IDLE_LINE}")?;
    stdout.flush()?;
    drop(stdout);
    loop {
        // `park` may return spuriously; nothing ever unparks this thread.
        std::thread::park();
    }
}

fn bare_command(flag: &str) -> std::io::Result<tokio::process::Command> {
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command.arg(flag).stdin(Stdio::null()).kill_on_drop(true);
    Ok(command)
}

/// Spawns `count` [`NOOP_FLAG`] processes, then waits for all of them: the time from the first
/// spawn until the last one was reaped.
pub(crate) async fn spawn_wait_noop(count: usize) -> BenchResult<Duration> {
    let mut command = bare_command(NOOP_FLAG)?;
    let start = Instant::now();
    let mut children = Vec::with_capacity(count);
    for _ in 0..count {
        children.push(command.spawn()?);
    }
    for mut child in children {
        let status = child.wait().await?;
        if !status.success() {
            return Err(format!("a bare {NOOP_FLAG} process failed: {status}").into());
        }
    }
    Ok(start.elapsed())
}

/// The resident set of an [`IDLE_FLAG`] process once it said it is idle, in KiB.
pub(crate) async fn idle_rss() -> BenchResult<f64> {
    let mut child = bare_command(IDLE_FLAG)?.stdout(Stdio::piped()).spawn()?;
    let stdout = child.stdout.take().ok_or("the bare idle process has no stdout pipe")?;
    let (mut stdout, mut line) = (BufReader::new(stdout), String::new());
    let read = stdout.read_line(&mut line);
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .map_err(|_| format!("the bare {IDLE_FLAG} process did not say it is idle within 30 s"))??;
    if line.trim_end() != IDLE_LINE {
        return Err(format!("the bare {IDLE_FLAG} process wrote {line:?}, not {IDLE_LINE:?}").into());
    }
    let pid = child.id().ok_or("the bare idle process exited")?;
    let rss = rss_kib(pid)?;
    child.kill().await?;
    Ok(rss)
}

/// The resident set of process `pid`, in KiB: `VmRSS` in `/proc/<pid>/status`.
pub(crate) fn rss_kib(pid: u32) -> BenchResult<f64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    let kib = vm_rss_kib(&status).ok_or_else(|| format!("{path} has no VmRSS line in kB"))?;
    Ok(kib as f64)
}

/// The `VmRSS:  <n> kB` line of a `/proc/<pid>/status` text.
fn vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    let mut words = line.split_whitespace();
    let kib = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_set_is_read_from_the_vm_rss_line() {
        let status = "Name:\tbench\nVmPeak:\t  9000 kB\nVmRSS:\t    4242 kB\nRssAnon:\t  1000 kB\n";
        assert_eq!(vm_rss_kib(status), Some(4242));
        assert_eq!(vm_rss_kib("Name:\tbench\n"), None, "a kernel thread has no VmRSS");
        assert_eq!(vm_rss_kib("VmRSS:\t12 MB\n"), None, "only kB is understood");
        let own = rss_kib(std::process::id()).expect("this process has a resident set");
        assert!(own > 0.0);
    }
}
