//! Tests that need a second process: `kill -9` of a writer, and a directory held by another process.
//!
//! The second process is this test binary run again on one of the `#[ignore]`d helper tests
//! (`--ignored --exact <name>`), told what to do through a `CLUSTERFY_SLED_TEST_*` variable.
//! Every wait on a child has a deadline, and a child still running when a test ends is killed.

// A failed unwrap or expect is the clearest failure report a test can give.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use clusterfy_core::{ErrorKind, StorageBackend, StorageBackendExt};
use clusterfy_storage_sled::SledStorage;

/// Directory the writer child writes to; its presence makes the helper test act.
const ENV_WRITE_DIR: &str = "CLUSTERFY_SLED_TEST_WRITE_DIR";
/// Key prefix (one byte, the round) the writer child uses.
const ENV_WRITE_ROUND: &str = "CLUSTERFY_SLED_TEST_WRITE_ROUND";
/// Directory the opener child tries to open.
const ENV_OPEN_DIR: &str = "CLUSTERFY_SLED_TEST_OPEN_DIR";

/// Concurrent writer tasks in the child, so flushes are shared while it is killed.
const WRITERS: u8 = 8;
/// Upper bound on acknowledgements per writer, so an orphaned child stops on its own.
const MAX_ACKS_PER_WRITER: u32 = 50_000;
/// How long a child may take for what the test waits for, far beyond what it needs.
const DEADLINE: Duration = Duration::from_secs(60);

/// A child process that is killed and reaped if the test ends before it exits.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs this test binary on the ignored helper test `name`, with `env` set and stdout piped.
fn spawn_helper(name: &str, env: &[(&str, &std::ffi::OsStr)]) -> (ChildGuard, Receiver<String>) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--ignored", "--exact", name, "--nocapture", "--test-threads=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    // Lines arrive through a channel so the test can wait for them with a deadline.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    (ChildGuard(child), lines)
}

/// Waits, with the deadline, until the child closed its stdout (it exits), then reaps it; returns
/// its status and the lines it printed meanwhile.
fn wait_exit(child: &mut ChildGuard, lines: &Receiver<String>) -> (std::process::ExitStatus, Vec<String>) {
    let start = Instant::now();
    let mut rest = Vec::new();
    loop {
        match lines.recv_timeout(DEADLINE.saturating_sub(start.elapsed())) {
            Ok(line) => rest.push(line),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!("the child did not exit within {DEADLINE:?}"),
        }
    }
    (child.0.wait().unwrap(), rest)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn key(round: u8, writer: u8, n: u32) -> Vec<u8> {
    let mut key = vec![round, writer];
    key.extend_from_slice(&n.to_be_bytes());
    key
}

/// A value that depends on the key, so a write of the wrong value is caught too.
fn value(round: u8, writer: u8, n: u32) -> Vec<u8> {
    format!("value {round}/{writer}/{n}").into_bytes()
}

/// What follows `marker` in a line of a helper's output. libtest prints `test <name> ... ` before
/// the first line of output, so the marker need not start the line.
fn after_marker<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.split_once(marker).map(|(_, rest)| rest)
}

/// Parses an acknowledgement line `ACKED <writer> <n>`.
fn parse_ack(line: &str) -> Option<(u8, u32)> {
    let mut words = after_marker(line, "ACKED ")?.split(' ');
    let writer = words.next()?.parse().ok()?;
    let n = words.next()?.parse().ok()?;
    Some((writer, n))
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut acknowledged: Vec<(u8, u8, u32)> = Vec::new();
    let random = RandomState::new();
    for round in 0..3u8 {
        // Kill after a random number of acknowledgements; with eight writers in flight, the kill
        // lands at a random point of their put / flush cycles.
        let kill_after = 20 + random.hash_one(round) % 400;
        let round_text = round.to_string();
        let (mut child, lines) = spawn_helper(
            "helper_write_and_acknowledge",
            &[(ENV_WRITE_DIR, path.as_os_str()), (ENV_WRITE_ROUND, round_text.as_ref())],
        );
        let start = Instant::now();
        let mut acks = 0u64;
        while acks < kill_after {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some((writer, n)) = parse_ack(&line) {
                        acknowledged.push((round, writer, n));
                        acks += 1;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("round {round}: only {acks} acks in {DEADLINE:?}"),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("round {round}: child exited after {acks} acks")
                }
            }
        }
        child.0.kill().unwrap();
        let (status, rest) = wait_exit(&mut child, &lines);
        assert_eq!(status.signal(), Some(9), "round {round}: the child was not killed by SIGKILL: {status}");
        // Lines printed before the kill are acknowledgements too.
        for line in rest {
            if let Some((writer, n)) = parse_ack(&line) {
                acknowledged.push((round, writer, n));
            }
        }

        let runtime = runtime();
        runtime.block_on(async {
            let storage = SledStorage::open(&path).await.unwrap();
            let mut missing = Vec::new();
            for &(round, writer, n) in &acknowledged {
                match storage.get(&key(round, writer, n)).await.unwrap() {
                    Some(found) => assert_eq!(found, value(round, writer, n), "key {round}/{writer}/{n}"),
                    None => missing.push((round, writer, n)),
                }
            }
            assert!(
                missing.is_empty(),
                "{} of {} acknowledged writes lost after kill -9 (round {round}): {:?}",
                missing.len(),
                acknowledged.len(),
                &missing[..missing.len().min(20)]
            );
            storage.close().await.unwrap();
        });
        eprintln!(
            "round {round}: killed after {} acks in total; all present after reopen",
            acknowledged.len()
        );
    }
    let distinct: BTreeSet<_> = acknowledged.iter().collect();
    assert_eq!(distinct.len(), acknowledged.len(), "an acknowledgement was printed twice");
}

/// Helper for `acknowledged_writes_survive_kill_9`: writes keys from several tasks and prints
/// `ACKED <writer> <n>` after each write's flush returned, until killed.
#[test]
#[ignore = "helper process of acknowledged_writes_survive_kill_9"]
fn helper_write_and_acknowledge() {
    let Some(path) = std::env::var_os(ENV_WRITE_DIR) else {
        eprintln!("helper_write_and_acknowledge: {ENV_WRITE_DIR} is not set, nothing to do (helper process)");
        return;
    };
    let Some(round) = std::env::var(ENV_WRITE_ROUND).ok().and_then(|r| r.parse::<u8>().ok()) else {
        panic!("{ENV_WRITE_ROUND} must be set to a round number 0..=255");
    };
    runtime().block_on(async {
        let storage = Arc::new(SledStorage::open(Path::new(&path)).await.unwrap());
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let storage = Arc::clone(&storage);
                tokio::spawn(async move {
                    for n in 0..MAX_ACKS_PER_WRITER {
                        storage.put(&key(round, writer, n), &value(round, writer, n)).await.unwrap();
                        storage.flush().await.unwrap();
                        let mut stdout = std::io::stdout().lock();
                        // The parent is gone (pipe closed): stop.
                        if writeln!(stdout, "ACKED {writer} {n}").and_then(|()| stdout.flush()).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
    });
}

#[test]
fn opening_a_directory_held_by_another_process_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let runtime = runtime();
    let storage = runtime.block_on(SledStorage::open(&path)).unwrap();

    let (mut child, lines) = spawn_helper("helper_try_open", &[(ENV_OPEN_DIR, path.as_os_str())]);
    let started = Instant::now();
    let result = loop {
        let line = lines.recv_timeout(DEADLINE).expect("the second process hung on the held directory");
        if let Some(result) = after_marker(&line, "OPEN-RESULT ") {
            break result.to_owned();
        }
    };
    let waited = started.elapsed();
    assert!(wait_exit(&mut child, &lines).0.success());
    assert!(result.starts_with(&format!("kind={}; ", ErrorKind::Storage)), "{result}");
    assert!(result.contains("another process holds its lock"), "{result}");
    assert!(result.contains("probably another Clusterfy primary"), "{result}");
    assert!(result.contains(&path.display().to_string()), "{result}");
    eprintln!("the second process was refused after {waited:?}: {result}");

    // Once the holder closes, another process can open the directory.
    runtime.block_on(storage.close()).unwrap();
    let (mut child, lines) = spawn_helper("helper_try_open", &[(ENV_OPEN_DIR, path.as_os_str())]);
    let result = loop {
        let line = lines.recv_timeout(DEADLINE).expect("the second process hung on a free directory");
        if let Some(result) = after_marker(&line, "OPEN-RESULT ") {
            break result.to_owned();
        }
    };
    assert!(wait_exit(&mut child, &lines).0.success());
    assert_eq!(result, "ok");
}

/// Helper for `opening_a_directory_held_by_another_process_fails_fast`: tries to open the directory
/// once and prints `OPEN-RESULT ok` or `OPEN-RESULT kind=<kind>; <error>`.
#[test]
#[ignore = "helper process of opening_a_directory_held_by_another_process_fails_fast"]
fn helper_try_open() {
    let Some(path) = std::env::var_os(ENV_OPEN_DIR) else {
        eprintln!("helper_try_open: {ENV_OPEN_DIR} is not set, nothing to do (helper process)");
        return;
    };
    let result = runtime().block_on(async {
        match SledStorage::open(Path::new(&path)).await {
            Ok(storage) => storage.close().await.map(|()| "ok".to_owned()),
            Err(err) => Ok(format!("kind={}; {err}", err.kind())),
        }
    });
    println!("OPEN-RESULT {}", result.unwrap());
}
