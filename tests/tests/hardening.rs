//! `PrimaryBuilder::non_dumpable`: a process of the same user without `CAP_SYS_PTRACE` cannot
//! take a worker's channel, or any descriptor of the primary, with `pidfd_getfd`, which on a
//! kernel without Yama it otherwise can.
//!
//! The cluster is a `test-worker primary` process. Run as root, it and the thief run with every
//! capability dropped (`setpriv`), as an ordinary user's processes would: uid 0 with
//! `CAP_SYS_PTRACE` may take anything anyway.

mod common;

use std::path::PathBuf;
use std::process::Stdio;

use clusterfy_tests::{ENV_NON_DUMPABLE_PRIMARY, PIDS_LINE_PREFIX, Scenario};
use common::{bounded, test_worker_program};
use tokio::io::AsyncBufReadExt;

/// The channel's descriptor in a worker without shared listeners.
const CHANNEL_FD: &str = "3";

fn steal_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pidfd-steal"))
}

/// `program` as a process without capabilities: through `setpriv` for root, as it is otherwise.
/// `None` (after a loud message; a failure under `CI`) when root has no `setpriv`.
fn without_capabilities(program: &std::ffi::OsStr) -> Option<tokio::process::Command> {
    if !nix::unistd::getuid().is_root() {
        return Some(tokio::process::Command::new(program));
    }
    let found =
        std::process::Command::new("setpriv").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        let message =
            "SKIPPED the non-dumpable test: as root it needs setpriv (util-linux) to drop capabilities";
        assert!(std::env::var_os("CI").is_none(), "{message}, which CI must offer");
        eprintln!("{message}");
        return None;
    }
    let mut command = tokio::process::Command::new("setpriv");
    command.args(["--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--"]).arg(program);
    Some(command)
}

/// Whether `pidfd-steal pid fd`, without capabilities, took the descriptor (`false`: the kernel
/// refused).
async fn steal(pid: u32, fd: &str) -> bool {
    let mut command = without_capabilities(steal_binary().as_os_str()).expect("checked by the caller");
    let output = bounded("pidfd-steal", command.arg(pid.to_string()).arg(fd).output()).await.expect("runs");
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    match output.status.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!("pidfd-steal failed ({other:?}): {said} {}", String::from_utf8_lossy(&output.stderr)),
    }
}

/// Yama's `ptrace_scope`, 0 when the kernel has no Yama: above 0, only ancestors may take a
/// process's descriptors, dumpable or not.
fn yama_scope() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A `test-worker primary` process without capabilities, and the pid of its first worker.
async fn primary_process(non_dumpable: bool) -> Option<(tokio::process::Child, u32)> {
    let program = test_worker_program(Scenario::Primary);
    let mut command = without_capabilities(program.path.as_os_str())?;
    command.args(&program.args).stdout(Stdio::piped()).kill_on_drop(true);
    if non_dumpable {
        command.env(ENV_NON_DUMPABLE_PRIMARY, "1");
    }
    let mut child = command.spawn().expect("spawning test-worker as a primary");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let line = bounded("the pids line", lines.next_line()).await.expect("stdout").expect("a pids line");
    let first_worker = line
        .strip_prefix(PIDS_LINE_PREFIX)
        .and_then(|pids| pids.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("not a pids line: {line}"));
    Some((child, first_worker))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_dumpable_cluster_keeps_same_user_processes_from_taking_its_descriptors() {
    // First the hole, where the kernel has it: an ordinary worker's channel can be taken.
    let Some((mut open, worker)) = primary_process(false).await else { return };
    let expected = yama_scope() == 0;
    assert_eq!(steal(worker, CHANNEL_FD).await, expected, "a same-user process takes the channel (Yama off)");
    assert_eq!(steal(open.id().expect("running"), "0").await, expected, "and the primary's descriptors");
    open.kill().await.expect("kill");

    let Some((mut hardened, worker)) = primary_process(true).await else { return };
    assert!(!steal(worker, CHANNEL_FD).await, "the worker's channel stays its own");
    assert!(!steal(hardened.id().expect("running"), "0").await, "so do the primary's descriptors");
    hardened.kill().await.expect("kill");
}
