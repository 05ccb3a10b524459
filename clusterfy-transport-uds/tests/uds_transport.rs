//! The UDS transport end to end in one process: the primary side through `prepare` / `accept`,
//! the worker side through `connect` with the environment `prepare` put on the command.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clusterfy_core::transport::{
    ByteReader, ByteWriter, Connection, Rendezvous, SpawnInfo, Transport, WorkerEnv,
};
use clusterfy_core::{ErrorKind, WorkerId};
use clusterfy_transport_uds::{ENV_UDS_PATH, UdsTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Generous: every wait here completes at once unless the transport is broken.
const DEADLINE: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {DEADLINE:?}"))
}

/// A transport whose socket directory goes into a fresh temp dir owned by the test.
fn transport_in_temp_dir() -> (UdsTransport, tempfile::TempDir) {
    let parent = tempfile::tempdir().expect("create a parent dir for the test");
    (UdsTransport::builder().parent_dir(parent.path()).build(), parent)
}

fn spawn_info(id: u64, name: &str) -> SpawnInfo {
    SpawnInfo { worker_id: WorkerId(id), name: name.to_owned() }
}

/// The worker's view of the environment `prepare` set on `command`.
fn worker_env(command: &Command) -> WorkerEnv {
    WorkerEnv::from_pairs(
        command
            .as_std()
            .get_envs()
            .filter_map(|(key, value)| Some((key.to_str()?.to_owned(), value?.to_str()?.to_owned()))),
    )
}

/// Prepares a spawn of worker `id` and returns its rendezvous and the environment its child would get.
async fn prepare(transport: &UdsTransport, id: u64) -> (Box<dyn Rendezvous>, WorkerEnv) {
    let mut command = Command::new("true");
    let rendezvous = transport.prepare(&spawn_info(id, "Paul"), &mut command).await.expect("prepare");
    (rendezvous, worker_env(&command))
}

/// The error of a `prepare` that must fail (`Box<dyn Rendezvous>` is not `Debug`, so no `expect_err`).
async fn prepare_error(transport: &UdsTransport) -> clusterfy_core::Error {
    match transport.prepare(&spawn_info(1, "Paul"), &mut Command::new("true")).await {
        Ok(_) => panic!("prepare succeeded"),
        Err(err) => err,
    }
}

/// Connects the worker side and accepts it on the primary side: (primary's end, worker's end).
async fn connect_pair(
    transport: &UdsTransport,
    rendezvous: &mut dyn Rendezvous,
    env: &WorkerEnv,
) -> (Connection, Connection) {
    let (accepted, connected) =
        within("accept and connect", async { tokio::join!(rendezvous.accept(), transport.connect(env)) })
            .await;
    (accepted.expect("accept"), connected.expect("connect"))
}

fn socket_path(env: &WorkerEnv) -> PathBuf {
    PathBuf::from(env.get(ENV_UDS_PATH).expect("prepare sets CLUSTERFY_UDS_PATH"))
}

async fn send(conn: &mut Connection, bytes: &[u8]) {
    within("write", async {
        conn.writer.write_all(bytes).await.expect("write");
        conn.writer.flush().await.expect("flush");
    })
    .await;
}

async fn receive(conn: &mut Connection, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    within("read", conn.reader.read_exact(&mut buf)).await.expect("read");
    buf
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

#[test]
fn name_is_uds() {
    assert_eq!(UdsTransport::new().name(), "uds");
    assert_eq!(UdsTransport::default().name(), "uds");
}

#[tokio::test]
async fn bytes_round_trip_both_ways() {
    let (transport, _parent) = transport_in_temp_dir();
    let (mut rendezvous, env) = prepare(&transport, 1).await;
    // The UDS transport takes nothing from the child, but callers attach it; do it as they do.
    let mut child = Command::new("sleep").arg("5").kill_on_drop(true).spawn().expect("spawn sleep");
    rendezvous.attach(&mut child).expect("attach");
    let (mut primary, mut worker) = connect_pair(&transport, rendezvous.as_mut(), &env).await;

    send(&mut primary, b"hello worker").await;
    assert_eq!(receive(&mut worker, 12).await, b"hello worker");
    send(&mut worker, b"hello primary").await;
    assert_eq!(receive(&mut primary, 13).await, b"hello primary");

    let path = socket_path(&env).display().to_string();
    assert_eq!(primary.description, path);
    assert_eq!(worker.description, path);
}

/// Writes all of `payload`, then closes the writing direction.
async fn write_all_and_shut(mut writer: ByteWriter, payload: Vec<u8>) {
    writer.write_all(&payload).await.expect("write");
    writer.shutdown().await.expect("shutdown");
}

async fn read_all(mut reader: ByteReader) -> Vec<u8> {
    let mut received = Vec::new();
    reader.read_to_end(&mut received).await.expect("read to end");
    received
}

#[tokio::test]
async fn large_transfer_arrives_complete_and_in_order() {
    let (transport, _parent) = transport_in_temp_dir();
    let (mut rendezvous, env) = prepare(&transport, 1).await;
    let (primary, worker) = connect_pair(&transport, rendezvous.as_mut(), &env).await;
    // Far bigger than the socket buffers, both directions at once: a side that stops reading while it
    // writes would deadlock here.
    let payload: Vec<u8> = (0..4 * 1024 * 1024_u32).map(|i| (i % 251) as u8).collect();

    let ((), (), at_worker, at_primary) = within("both transfers", async {
        tokio::join!(
            write_all_and_shut(primary.writer, payload.clone()),
            write_all_and_shut(worker.writer, payload.clone()),
            read_all(worker.reader),
            read_all(primary.reader),
        )
    })
    .await;
    assert!(at_worker == payload, "primary -> worker bytes differ");
    assert!(at_primary == payload, "worker -> primary bytes differ");
}

#[tokio::test]
async fn connection_outlives_its_rendezvous() {
    let (transport, _parent) = transport_in_temp_dir();
    let (mut rendezvous, env) = prepare(&transport, 1).await;
    let (mut primary, mut worker) = connect_pair(&transport, rendezvous.as_mut(), &env).await;
    // The caller drops the rendezvous once the handshake succeeded.
    drop(rendezvous);
    assert!(!socket_path(&env).exists());
    send(&mut primary, b"still here").await;
    assert_eq!(receive(&mut worker, 10).await, b"still here");
}

#[tokio::test]
async fn workers_stay_isolated() {
    let (transport, _parent) = transport_in_temp_dir();
    let (mut rendezvous_a, env_a) = prepare(&transport, 1).await;
    let (mut rendezvous_b, env_b) = prepare(&transport, 2).await;
    assert_ne!(socket_path(&env_a), socket_path(&env_b));
    let (mut primary_a, mut worker_a) = connect_pair(&transport, rendezvous_a.as_mut(), &env_a).await;
    let (mut primary_b, mut worker_b) = connect_pair(&transport, rendezvous_b.as_mut(), &env_b).await;

    send(&mut primary_a, b"for a").await;
    send(&mut primary_b, b"for b").await;
    assert_eq!(receive(&mut worker_a, 5).await, b"for a");
    assert_eq!(receive(&mut worker_b, 5).await, b"for b");
    send(&mut worker_b, b"from b").await;
    send(&mut worker_a, b"from a").await;
    assert_eq!(receive(&mut primary_a, 6).await, b"from a");
    assert_eq!(receive(&mut primary_b, 6).await, b"from b");
}

#[tokio::test]
async fn socket_directory_is_private_and_inside_the_parent_dir() {
    let (transport, parent) = transport_in_temp_dir();
    assert_eq!(transport.socket_dir(), None, "nothing is created before the first prepare");
    let (_rendezvous, env) = prepare(&transport, 1).await;

    let dir = transport.socket_dir().expect("socket dir after prepare");
    assert_eq!(dir.parent(), Some(parent.path()));
    assert!(dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("clusterfy-")), "{dir:?}");
    assert_eq!(mode(&dir), 0o700, "mode of {}", dir.display());
    let socket = socket_path(&env);
    assert_eq!(socket.parent(), Some(dir.as_path()));
    assert_eq!(socket.file_name().and_then(|n| n.to_str()), Some("worker-1-0.sock"));
    assert!(std::fs::metadata(&socket).expect("stat socket").file_type().is_socket());
}

#[tokio::test]
async fn default_parent_dir_is_the_runtime_dir_or_the_temp_dir() {
    let transport = UdsTransport::new();
    let (_rendezvous, _env) = prepare(&transport, 1).await;
    let dir = transport.socket_dir().expect("socket dir after prepare");
    let parent = dir.parent().expect("socket dir has a parent").to_owned();
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    assert!(
        runtime_dir.as_ref() == Some(&parent) || parent == std::env::temp_dir(),
        "socket dir {} is neither in $XDG_RUNTIME_DIR ({runtime_dir:?}) nor in the temp dir",
        dir.display()
    );
    assert_eq!(mode(&dir), 0o700);
    transport.close().expect("close");
    assert!(!dir.exists());
}

#[tokio::test]
async fn close_removes_the_socket_directory_and_is_idempotent() {
    let (transport, _parent) = transport_in_temp_dir();
    transport.close().expect("close before any prepare");
    let (_rendezvous, env) = prepare(&transport, 1).await;
    let dir = transport.socket_dir().expect("socket dir after prepare");
    assert!(socket_path(&env).exists());

    transport.close().expect("close");
    assert!(!dir.exists(), "{} still exists after close", dir.display());
    assert_eq!(transport.socket_dir(), None);
    transport.close().expect("second close");
}

#[tokio::test]
async fn dropping_the_transport_removes_the_socket_directory() {
    let (transport, _parent) = transport_in_temp_dir();
    let (rendezvous, _env) = prepare(&transport, 1).await;
    let dir = transport.socket_dir().expect("socket dir after prepare");
    drop(transport);
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
    // The rendezvous outliving its directory is harmless.
    drop(rendezvous);
}

#[tokio::test]
async fn prepare_after_close_uses_a_new_directory() {
    let (transport, _parent) = transport_in_temp_dir();
    let (_first, _) = prepare(&transport, 1).await;
    let first_dir = transport.socket_dir().expect("first dir");
    transport.close().expect("close");

    let (mut rendezvous, env) = prepare(&transport, 1).await;
    let second_dir = transport.socket_dir().expect("second dir");
    assert_ne!(first_dir, second_dir);
    assert_eq!(mode(&second_dir), 0o700);
    let (mut primary, mut worker) = connect_pair(&transport, rendezvous.as_mut(), &env).await;
    send(&mut worker, b"ok").await;
    assert_eq!(receive(&mut primary, 2).await, b"ok");
}

#[tokio::test]
async fn revived_worker_gets_a_fresh_socket() {
    let (transport, _parent) = transport_in_temp_dir();
    let (mut first, first_env) = prepare(&transport, 7).await;
    let (mut second, second_env) = prepare(&transport, 7).await;
    assert_ne!(socket_path(&first_env), socket_path(&second_env));

    let (mut primary_1, mut worker_1) = connect_pair(&transport, first.as_mut(), &first_env).await;
    let (mut primary_2, mut worker_2) = connect_pair(&transport, second.as_mut(), &second_env).await;
    send(&mut worker_1, b"1").await;
    send(&mut worker_2, b"2").await;
    assert_eq!(receive(&mut primary_1, 1).await, b"1");
    assert_eq!(receive(&mut primary_2, 1).await, b"2");
    send(&mut primary_2, b"2").await;
    assert_eq!(receive(&mut worker_2, 1).await, b"2");
    drop(worker_1);
}

#[tokio::test]
async fn accept_works_again_after_a_rejected_connection() {
    let (transport, _parent) = transport_in_temp_dir();
    let (mut rendezvous, env) = prepare(&transport, 1).await;
    let (rejected, intruder) = connect_pair(&transport, rendezvous.as_mut(), &env).await;
    // What the caller does with a wrong token: drop that connection and accept the next one.
    drop(rejected);
    drop(intruder);

    let (mut primary, mut worker) = connect_pair(&transport, rendezvous.as_mut(), &env).await;
    send(&mut primary, b"second").await;
    assert_eq!(receive(&mut worker, 6).await, b"second");
}

#[tokio::test]
async fn cancelled_accept_leaves_the_rendezvous_usable() {
    let (transport, _parent) = transport_in_temp_dir();
    let (mut rendezvous, env) = prepare(&transport, 1).await;
    // Poll accept once while nobody connects, then drop it, as a caller's deadline would.
    tokio::select! {
        biased;
        accepted = rendezvous.accept() => panic!("accept returned without a connection: {accepted:?}"),
        () = std::future::ready(()) => {}
    }
    let (mut primary, mut worker) = connect_pair(&transport, rendezvous.as_mut(), &env).await;
    send(&mut worker, b"late").await;
    assert_eq!(receive(&mut primary, 4).await, b"late");
}

#[tokio::test]
async fn dropping_the_rendezvous_removes_its_socket() {
    let (transport, _parent) = transport_in_temp_dir();
    let (rendezvous, env) = prepare(&transport, 3).await;
    let path = socket_path(&env);
    assert!(path.exists());
    drop(rendezvous);
    assert!(!path.exists(), "{} still exists", path.display());

    let err = within("connect", transport.connect(&env)).await.expect_err("nobody listens any more");
    assert_eq!(err.kind(), ErrorKind::Io);
    assert_eq!(err.context_value("path"), Some(path.display().to_string().as_str()));
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
}

#[tokio::test]
async fn worker_without_environment_gets_config_error() {
    let err = UdsTransport::new().connect(&WorkerEnv::default()).await.expect_err("no environment");
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains(ENV_UDS_PATH), "{err}");
    assert_eq!(ENV_UDS_PATH, "CLUSTERFY_UDS_PATH");
}

#[tokio::test]
async fn worker_with_empty_socket_path_gets_config_error() {
    let env = WorkerEnv::from_pairs([(ENV_UDS_PATH, "")]);
    let err = UdsTransport::new().connect(&env).await.expect_err("empty path");
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains(ENV_UDS_PATH), "{err}");
}

#[tokio::test]
async fn worker_with_too_long_socket_path_gets_config_error() {
    let path = format!("/tmp/{}.sock", "x".repeat(200));
    let env = WorkerEnv::from_pairs([(ENV_UDS_PATH, path.as_str())]);
    let err = UdsTransport::new().connect(&env).await.expect_err("path too long");
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(err.context_value("path"), Some(path.as_str()));
}

#[tokio::test]
async fn peer_going_away_is_seen_as_closed() {
    let (transport, _parent) = transport_in_temp_dir();
    let (mut rendezvous, env) = prepare(&transport, 1).await;

    // The worker goes away: the primary reads what was sent, then EOF, and its writes fail.
    let (mut primary, mut worker) = connect_pair(&transport, rendezvous.as_mut(), &env).await;
    send(&mut worker, b"bye").await;
    drop(worker);
    let mut rest = Vec::new();
    within("primary reads to EOF", primary.reader.read_to_end(&mut rest)).await.expect("read to EOF");
    assert_eq!(rest, b"bye");
    let write = within("primary writes to a gone worker", async {
        primary.writer.write_all(b"anyone?").await?;
        primary.writer.flush().await
    })
    .await;
    assert!(write.is_err(), "writing to a closed peer succeeded");

    // The primary goes away: the worker reads EOF.
    let (primary, mut worker) = connect_pair(&transport, rendezvous.as_mut(), &env).await;
    drop(primary);
    let mut rest = Vec::new();
    within("worker reads to EOF", worker.reader.read_to_end(&mut rest)).await.expect("read to EOF");
    assert!(rest.is_empty());
}

#[tokio::test]
async fn too_long_parent_dir_is_a_config_error_naming_it() {
    let parent = format!("/tmp/{}", "long-directory-name-".repeat(5));
    let transport = UdsTransport::builder().parent_dir(&parent).build();
    let err = prepare_error(&transport).await;
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(err.context_value("path"), Some(parent.as_str()));
    assert!(err.message().contains("parent_dir"), "the message should say how to fix it: {err}");
    assert!(!Path::new(&parent).exists());
}

#[tokio::test]
async fn missing_parent_dir_is_a_config_error_naming_it() {
    let parent = tempfile::tempdir().expect("temp dir");
    let missing = parent.path().join("missing");
    let transport = UdsTransport::builder().parent_dir(&missing).build();
    let err = prepare_error(&transport).await;
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(err.context_value("path"), Some(missing.display().to_string().as_str()));
    assert_eq!(transport.socket_dir(), None);
}
