//! The `clusterfy` command (crate clusterfy-cli) against a real running cluster: every
//! subcommand, `--json` parsed, a storage round trip, a restart seen as an event, the errors an
//! operator gets, and a peer of another uid refused.
//!
//! The primary is this test process, with its control socket in a temporary directory that the
//! command finds as `$XDG_RUNTIME_DIR/clusterfy`. The command is built from clusterfy-cli's
//! source as this crate's binary `clusterfy-cli`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use clusterfy::{Primary, primary::WorkerState, value};
use clusterfy_tests::{Echo, Scenario, WhoAmI};
use common::{bounded, options, primary_builder};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

const APP: &str = "cli-test";

/// The `clusterfy` command, built from clusterfy-cli's source for these tests.
fn clusterfy_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_clusterfy-cli"))
}

/// A cluster of two ready workers with its control socket under `runtime_dir`.
async fn cluster(runtime_dir: &Path) -> Primary {
    let socket = runtime_dir.join("clusterfy").join(format!("{APP}.sock"));
    // `control_at` leaves directories to the program: this one plays the control directory.
    std::fs::create_dir_all(socket.parent().expect("dir")).expect("control dir");
    let primary = primary_builder()
        .control_at(APP, socket)
        // The logs test floods the workers' output: kept, not echoed on the tests' stderr.
        .echo_output(false)
        .initial_storage(value!({ "config": { "greeting": "hello" } }))
        .handle_signals(false)
        .build()
        .await
        .expect("primary with a control socket");
    for name in ["w1", "w2"] {
        primary.fork(name, options(Scenario::Normal)).await.expect("fork");
    }
    bounded("ready", primary.ready()).await.expect("ready");
    primary
}

fn command(runtime_dir: &Path, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(clusterfy_binary());
    command.args(args).env("XDG_RUNTIME_DIR", runtime_dir).env_remove("CLUSTERFY_APP").kill_on_drop(true);
    command
}

async fn run(runtime_dir: &Path, args: &[&str]) -> Output {
    bounded(&format!("clusterfy {}", args.join(" ")), command(runtime_dir, args).output())
        .await
        .expect("run clusterfy")
}

/// Runs the command and returns its stdout; fails the test if it did not succeed.
async fn ok(runtime_dir: &Path, args: &[&str]) -> String {
    let output = run(runtime_dir, args).await;
    assert!(
        output.status.success(),
        "clusterfy {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// Runs the command and returns its stderr; fails the test if it succeeded.
async fn fails(runtime_dir: &Path, args: &[&str]) -> String {
    let output = run(runtime_dir, args).await;
    assert!(!output.status.success(), "clusterfy {} succeeded", args.join(" "));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A streaming subcommand (`events`, `storage watch`), its stdout read line by line.
fn spawn_stream(runtime_dir: &Path, args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child =
        command(runtime_dir, args).stdout(std::process::Stdio::piped()).spawn().expect("spawn clusterfy");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, lines)
}

/// Repeats `poke` until the stream prints a line `until` accepts: proof that the stream was
/// subscribed before what the test does next.
async fn poke_until<F: std::future::Future<Output = ()>>(
    lines: &mut Lines<BufReader<ChildStdout>>,
    mut poke: impl FnMut() -> F,
    mut until: impl FnMut(&serde_json::Value) -> bool,
) {
    bounded("the stream to start", async {
        loop {
            poke().await;
            if let Ok(line) = tokio::time::timeout(Duration::from_millis(100), lines.next_line()).await
                && until(&json(&line.expect("stdout").expect("the stream ended")))
            {
                return;
            }
        }
    })
    .await;
}

async fn next_json_matching(
    lines: &mut Lines<BufReader<ChildStdout>>,
    mut matches: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    bounded("a matching line", async {
        loop {
            let line = json(&lines.next_line().await.expect("stdout").expect("the stream ended"));
            if matches(&line) {
                return line;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_works_against_a_running_cluster() {
    let dir = tempfile::tempdir().expect("temp dir");
    let primary = cluster(dir.path()).await;

    let apps = json(&ok(dir.path(), &["apps", "--json"]).await);
    assert_eq!(apps[0]["app"], APP, "{apps}");
    assert_eq!(apps[0]["pid"], std::process::id());
    assert_eq!(apps[0]["workers"], 2);

    let workers = json(&ok(dir.path(), &["ls", "--json"]).await);
    let names: Vec<&str> =
        workers.as_array().expect("a list").iter().map(|w| w["name"].as_str().expect("name")).collect();
    assert_eq!(names, ["w1", "w2"]);
    assert!(
        // Uptime in milliseconds, as the JSON always showed it.
        workers
            .as_array()
            .expect("list")
            .iter()
            .all(|w| w["state"] == "ready" && w["pid"].is_u64() && w["uptime_ms"].is_u64()),
        "{workers}"
    );
    let table = ok(dir.path(), &["ls", APP]).await;
    assert!(table.contains("w1") && table.contains("memory"), "{table}");
    let stats = ok(dir.path(), &["stats"]).await;
    assert!(stats.contains("w2") && stats.contains("cpu"), "{stats}");

    assert_eq!(json(&ok(dir.path(), &["storage", "get", "config.greeting"]).await), "hello");
    ok(dir.path(), &["storage", "set", "config.limits", r#"{"max": 3, "names": ["a", "b"]}"#]).await;
    let limits = json(&ok(dir.path(), &["storage", "get", "config.limits"]).await);
    assert_eq!(limits, serde_json::json!({ "max": 3, "names": ["a", "b"] }));
    let stored: Option<u64> = primary.storage().retrieve("config.limits.max").await.expect("retrieve");
    assert_eq!(stored, Some(3), "the command wrote the cluster's storage");
    // As the README shows it: a parent that does not exist yet is made with --parents.
    let orphan = run(dir.path(), &["storage", "set", "limits.max", "3"]).await;
    assert!(!orphan.status.success() && String::from_utf8_lossy(&orphan.stderr).contains("does not exist"));
    ok(dir.path(), &["storage", "set", "--parents", "limits.max", r#"{"max": 3}"#]).await;
    assert_eq!(
        json(&ok(dir.path(), &["storage", "get", "limits"]).await),
        serde_json::json!({ "max": { "max": 3 } })
    );

    let (mut watcher, mut changes) = spawn_stream(dir.path(), &["storage", "watch", "config"]);
    let storage = primary.storage();
    let mut n = 0;
    poke_until(
        &mut changes,
        || {
            n += 1;
            let storage = storage.clone();
            async move { storage.save("config.greeting", &format!("hi {n}")).await.expect("save") }
        },
        |change| change["changed"] == "config.greeting",
    )
    .await;
    watcher.start_kill().expect("stop watching");

    let (mut follower, mut events) = spawn_stream(dir.path(), &["events", "--json"]);
    poke_until(
        &mut events,
        || async {
            primary.run("w1", Echo { text: "ping".into() }).await.expect("echo");
        },
        |event| event["kind"] == "command",
    )
    .await;
    let old_w1 = primary.workers().into_iter().find(|w| w.name == "w1").expect("w1").id;
    ok(dir.path(), &["restart", "w1"]).await;
    let replaced = next_json_matching(&mut events, |e| e["kind"] == "replaced").await;
    assert_eq!(replaced["worker"], "w1", "{replaced}");
    let new_w1 = primary.workers().into_iter().find(|w| w.name == "w1").expect("w1");
    assert_ne!(new_w1.id, old_w1, "w1 runs as a new worker");
    assert_eq!(new_w1.state, WorkerState::Ready);

    ok(dir.path(), &["reload"]).await;
    next_json_matching(&mut events, |e| e["kind"] == "replaced" && e["worker"] == "w2").await;
    ok(dir.path(), &["stop", "w2"]).await;
    let w2 = primary.workers().into_iter().find(|w| w.name == "w2").expect("w2");
    assert_eq!(w2.state, WorkerState::Stopped);
    // A stopped worker shows how it ended, not the status it had, and no uptime.
    let rows = json(&ok(dir.path(), &["ls", "--json"]).await);
    let row = rows.as_array().expect("list").iter().find(|w| w["name"] == "w2").expect("w2 listed").clone();
    assert_eq!(
        (row["state"].as_str(), row["status"].as_str()),
        (Some("stopped"), Some("exit code 0")),
        "{row}"
    );
    assert!(row["pid"].is_null(), "{row}");
    let table = ok(dir.path(), &["ls"]).await;
    let line = table.lines().find(|l| l.contains("w2")).expect("w2's row");
    assert!(line.contains("exit code 0") && !line.contains("STOPPING") && !line.contains("0.0s"), "{line}");
    follower.start_kill().expect("stop following");

    primary.shutdown(Duration::from_secs(2)).await.expect("shutdown");
    assert!(!dir.path().join("clusterfy").join(format!("{APP}.sock")).exists(), "the socket is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_is_scaled_reloaded_listed_and_addressed_as_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let primary = cluster(dir.path()).await;
    primary.fork_group("jobs", 1, options(Scenario::Normal)).await.expect("a group of 1");
    bounded("ready", primary.ready()).await.expect("ready");
    ok(dir.path(), &["scale", "jobs", "3"]).await;
    bounded("ready", primary.ready()).await.expect("ready");
    let rows = json(&ok(dir.path(), &["ls", "--json"]).await);
    let grouped: Vec<(&str, &str)> = rows
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|w| Some((w["name"].as_str()?, w["group"].as_str()?)))
        .collect();
    assert_eq!(grouped, [("jobs-1", "jobs"), ("jobs-2", "jobs"), ("jobs-3", "jobs")], "{rows}");
    let table = ok(dir.path(), &["ls"]).await;
    assert!(
        table.contains("group") && table.lines().any(|l| l.contains("jobs-2") && l.contains("jobs ")),
        "{table}"
    );

    // A command to the group goes to each member in turn; a broadcast to it reaches only them.
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..3 {
        served
            .insert(bounded("run", primary.run_group("jobs", WhoAmI)).await.expect("run on the group").name);
    }
    assert_eq!(served.into_iter().collect::<Vec<_>>(), ["jobs-1", "jobs-2", "jobs-3"]);
    let replies = bounded("broadcast", primary.broadcast_group("jobs", WhoAmI)).await.expect("broadcast");
    assert_eq!(replies.len(), 3, "{replies:?}");

    let before: Vec<_> = primary.workers().into_iter().map(|w| (w.name, w.id)).collect();
    ok(dir.path(), &["reload", "jobs"]).await;
    for worker in primary.workers() {
        let old = before.iter().find(|(name, _)| *name == worker.name).expect("same names").1;
        assert_eq!(
            worker.id != old,
            worker.name.starts_with("jobs-"),
            "only the group is reloaded: {worker:?}"
        );
    }
    ok(dir.path(), &["scale", "jobs", "1"]).await;
    let names: Vec<String> = primary.workers().into_iter().map(|w| w.name).collect();
    assert_eq!(names, ["w1", "w2", "jobs-1"]);

    let said = fails(dir.path(), &["scale", "jobs", "0"]).await;
    assert!(said.contains("at least 1"), "{said}");
    let said = fails(dir.path(), &["reload", "nope"]).await;
    assert!(said.contains("[jobs]"), "names the groups: {said}");
    primary.shutdown(Duration::from_secs(2)).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_show_each_workers_last_lines_in_order_and_follow_new_ones_without_blocking_a_flood() {
    use clusterfy_tests::{ACK_LINE_PREFIX, WriteSequence};
    let dir = tempfile::tempdir().expect("temp dir");
    let primary = cluster(dir.path()).await;
    let announce = |count| WriteSequence { count, announce: true };
    bounded("w1's writes", primary.run("w1", announce(3))).await.expect("w1 writes");
    // A primary with a control socket captures its workers' output by default.
    let shown = ok(dir.path(), &["logs", "w1", "--lines", "10"]).await;
    let want: Vec<String> = (0..3).map(|n| format!("[w1] {ACK_LINE_PREFIX} w1 {n}")).collect();
    assert_eq!(shown.lines().collect::<Vec<_>>(), want, "{shown}");

    let (mut follower, mut lines) = spawn_stream(dir.path(), &["logs", "-f", "w2", "--lines", "5"]);
    bounded("w2's writes", primary.run("w2", announce(2))).await.expect("w2 writes");
    for n in 0..2 {
        let line = bounded("a followed line", lines.next_line()).await.expect("stdout").expect("a line");
        assert_eq!(line, format!("[w2] {ACK_LINE_PREFIX} w2 {n}"));
    }
    follower.start_kill().expect("stop following");

    // A worker printing far more than the ring holds is never held back, and the ring keeps the
    // newest lines, in order, and says how many it dropped.
    let flood = 3 * clusterfy::primary::LOG_RING_LINES as u64;
    bounded("a flood of lines", primary.run("w1", announce(flood))).await.expect("the flood");
    let last = bounded("the flood's last line", async {
        loop {
            let (lines, _) = primary.logs(Some("w1"), 1).expect("w1's logs");
            if lines.last().is_some_and(|l| l.text.ends_with(&format!(" {}", flood - 1))) {
                return primary.logs(Some("w1"), usize::MAX).expect("w1's logs");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (kept, dropped) = last;
    assert_eq!(kept.len(), clusterfy::primary::LOG_RING_LINES);
    assert_eq!(
        dropped,
        3 + flood - clusterfy::primary::LOG_RING_LINES as u64,
        "the earlier 3 and the flood's oldest"
    );
    let numbers: Vec<u64> =
        kept.iter().map(|l| l.text.rsplit(' ').next().expect("n").parse().expect("a number")).collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "in the order written");
    let shown = ok(dir.path(), &["logs", "w1", "--lines", "2"]).await;
    assert!(shown.starts_with("... "), "says what it leaves out: {shown}");

    let said = fails(dir.path(), &["logs", "nobody"]).await;
    assert!(said.contains("[w1, w2]"), "names the workers: {said}");
    primary.shutdown(Duration::from_secs(2)).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_what_to_do() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = run(dir.path(), &["ls", "--app", "nope"]).await;
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("no such app") && stderr.contains("clusterfy apps"), "{stderr}");

    let none = run(dir.path(), &["ls"]).await;
    assert!(String::from_utf8_lossy(&none.stderr).contains("no running app found"), "{none:?}");

    // A socket whose primary died (it was killed before it could remove the file).
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    let gone = run(dir.path(), &["--socket", stale.to_str().expect("path"), "ls"]).await;
    assert!(String::from_utf8_lossy(&gone.stderr).contains("primary is gone"), "{gone:?}");

    // A primary of the same app that was killed left its socket file: the new one takes it over.
    let left_behind = dir.path().join("clusterfy").join(format!("{APP}.sock"));
    std::fs::create_dir_all(left_behind.parent().expect("dir")).expect("control dir");
    drop(std::os::unix::net::UnixListener::bind(&left_behind).expect("bind"));
    let primary = cluster(dir.path()).await;
    let bad = run(dir.path(), &["storage", "set", "config.greeting", "not json"]).await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad JSON"), "{bad:?}");
    let orphan = run(dir.path(), &["storage", "set", "no.such.parent", "1"]).await;
    assert!(String::from_utf8_lossy(&orphan.stderr).contains("no"), "{orphan:?}");
    assert!(!orphan.status.success());
    let unknown = run(dir.path(), &["restart", "nobody"]).await;
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("known workers"), "{unknown:?}");
    primary.shutdown(Duration::from_secs(2)).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_uid_is_refused() {
    // Root runs the client as nobody with setpriv; another user can through password-less sudo.
    let as_stranger: Vec<&str> = if nix::unistd::getuid().is_root() {
        vec!["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    } else if std::process::Command::new("sudo").args(["-n", "true"]).status().is_ok_and(|s| s.success()) {
        vec!["sudo", "-n", "-u", "nobody", "--"]
    } else {
        let message = "SKIPPED a_peer_of_another_uid_is_refused: running a client as another user needs root \
                       (setpriv) or password-less sudo";
        assert!(std::env::var_os("CI").is_none(), "{message}, which CI must offer");
        eprintln!("{message}");
        return;
    };
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let primary = cluster(dir.path()).await;
    let binary = dir.path().join("clusterfy-copy");
    // Copied by another process: a file this (multi-threaded) process wrote could be held open
    // by a child another test forks meanwhile, and exec would then fail with "text file busy".
    let copied = std::process::Command::new("cp").arg(clusterfy_binary()).arg(&binary).status().expect("cp");
    assert!(copied.success(), "a copy the other user may run");
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let socket = dir.path().join("clusterfy").join(format!("{APP}.sock"));
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    std::fs::set_permissions(socket.parent().expect("dir"), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    let stranger = |args: &[&str]| {
        let mut command = tokio::process::Command::new(as_stranger[0]);
        command.args(&as_stranger[1..]).arg(&binary).args(args).env("XDG_RUNTIME_DIR", dir.path());
        command
    };
    // The control directory is still private: `apps` says whose it is, as `ls` does.
    let apps = bounded("apps as a stranger", stranger(&["apps"]).output()).await.expect("run");
    let said = String::from_utf8_lossy(&apps.stderr);
    assert!(!apps.status.success() && said.contains("permission denied"), "{said}");
    assert!(!said.contains("os error"), "no raw system error: {said}");
    // Loosen every permission on the way, as a careless operator might: the uid check must
    // still refuse the stranger.
    for (path, mode) in [
        (dir.path().to_owned(), 0o755),
        (socket.parent().expect("dir").to_owned(), 0o755),
        (socket.clone(), 0o777),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let output =
        stranger(&["--socket", socket.to_str().expect("path"), "ls"]).output().await.expect("setpriv");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a stranger was let in: {}", String::from_utf8_lossy(&output.stdout));
    assert!(stderr.contains("permission denied") && stderr.contains("accepts only it"), "{stderr}");
    // With the directory readable, `apps` finds the socket, is refused by it, and says so.
    let apps = bounded("apps as a stranger", stranger(&["apps"]).output()).await.expect("run");
    let said = String::from_utf8_lossy(&apps.stderr);
    assert!(!apps.status.success() && said.contains("permission denied"), "{said}");
    // The owner still gets in.
    ok(dir.path(), &["--socket", socket.to_str().expect("path"), "ls"]).await;
    primary.shutdown(Duration::from_secs(2)).await.expect("shutdown");
}
