//! A local process of the same user, reading everything it may, tries to get into the cluster
//! over the default transport: it must find no way to pass as a worker or to delay one.

mod common;

use std::os::unix::ffi::OsStrExt;

use clusterfy::primary::{Program, WorkerOptions};
use clusterfy::transport::ENV_TOKEN;
use clusterfy_testkit::transport::listening_unix_sockets_of_this_process;
use clusterfy_tests::{Echo, Scenario};
use common::{bounded, clusterfy_entries, options, pid_of, primary_builder, test_worker_path};

/// `NUL`-separated fields of a `/proc/<pid>` file.
fn proc_fields(pid: nix::unistd::Pid, file: &str) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/{file}")).unwrap_or_else(|e| panic!("reading {file}: {e}"));
    raw.split(|&b| b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_user_process_reading_environ_cmdline_and_temp_dirs_can_neither_enter_nor_delay_a_worker() {
    let before = clusterfy_entries();
    let primary = primary_builder().build().await.expect("primary");
    primary.fork("honest", options(Scenario::Normal)).await.expect("fork");
    bounded("ready", primary.ready()).await.expect("ready");
    // A worker that starts 2 s late: the window in which an impostor would try its luck.
    let late =
        Program::new("/bin/sh", ["-c".into(), "sleep 2; exec \"$0\" normal".into(), test_worker_path()]);
    primary.fork("late", WorkerOptions::default().program(late)).await.expect("fork");
    let pid = pid_of(&primary, "late");

    // Everything the impostor can read: the worker's environment and command line, the temp
    // dirs, and the worker's descriptors.
    let environ = proc_fields(pid, "environ");
    let cmdline = proc_fields(pid, "cmdline");
    assert!(
        !environ.iter().any(|var| var.starts_with(&format!("{ENV_TOKEN}="))),
        "no secret in the worker's environment: {environ:?}"
    );
    let mut candidates: Vec<std::path::PathBuf> =
        clusterfy_entries().into_iter().filter(|p| !before.contains(p)).collect();
    assert!(candidates.is_empty(), "the cluster created files others could find: {candidates:?}");
    let values = environ.iter().filter_map(|var| var.split_once('=').map(|(_, value)| value.to_owned()));
    candidates
        .extend(values.chain(cmdline.iter().cloned()).map(std::path::PathBuf::from).filter(|p| p.exists()));
    for candidate in &candidates {
        let connected = std::os::unix::net::UnixStream::connect(candidate);
        assert!(connected.is_err(), "{} accepts connections", candidate.display());
    }
    let mut sockets = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("the worker's descriptors").flatten() {
        // A descriptor can close between the listing and this read (the starting shell's loader
        // opens and closes its libraries): one that is gone was not the channel, which stays.
        let target = match std::fs::read_link(entry.path()) {
            Ok(target) => target,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("descriptor link {}: {e}", entry.path().display()),
        };
        if target.as_os_str().as_bytes().starts_with(b"socket:") {
            sockets += 1;
            let opened = std::fs::OpenOptions::new().read(true).write(true).open(entry.path());
            assert!(opened.is_err(), "the channel {target:?} opens through {}", entry.path().display());
        }
    }
    assert_eq!(sockets, 1, "the late worker holds its channel, and only that");
    assert!(listening_unix_sockets_of_this_process().is_empty(), "the primary listens nowhere");

    // Nothing could get in its way: the late worker connects once it starts.
    bounded("ready", primary.ready()).await.expect("the late worker gets ready");
    let echoed = bounded("echo", primary.run("late", Echo { text: "in".into() })).await;
    assert_eq!(echoed.expect("the late worker answers"), "in");
    common::shut_down_cleanly(&primary).await;
}

/// Linux sends the parent-death signal when the *thread* that forked a child ends, not the
/// process. A worker forked while the primary's runtime was driven by a thread that then ends
/// must not die with that thread.
#[test]
fn a_worker_outlives_the_thread_that_drove_its_fork() {
    let runtime = std::sync::Arc::new(
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"),
    );
    let primary = runtime.block_on(primary_builder().build()).expect("primary");
    let (driving, forking) = (std::sync::Arc::clone(&runtime), primary.clone());
    // This thread drives the runtime while the worker is forked, then ends.
    let thread = std::thread::spawn(move || {
        driving.block_on(forking.fork("survivor", options(Scenario::Normal))).expect("fork");
        nix::unistd::gettid()
    })
    .join()
    .expect("the forking thread");
    runtime.block_on(async {
        let task = format!("/proc/self/task/{thread}");
        bounded("the forking thread to be gone", async {
            while std::path::Path::new(&task).exists() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
        // A parent-death signal would be pending by now, and a process with SIGKILL pending runs
        // no code of its own again: only a worker that lives answers.
        bounded("ready", primary.ready()).await.expect("the worker gets ready");
        let echoed = bounded("echo", primary.run("survivor", Echo { text: "alive".into() })).await;
        assert_eq!(echoed.expect("the worker outlived the thread"), "alive");
        common::shut_down_cleanly(&primary).await;
    });
}
