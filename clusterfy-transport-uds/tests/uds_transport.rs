//! The UDS transport's own promises, beyond the shared conformance suite: the child inherits its
//! end of the channel as a descriptor and nothing else, and the worker side refuses anything that
//! is not such a channel.

use std::os::fd::AsRawFd;
use std::time::Duration;

use clusterfy_core::transport::{ENV_TOKEN, Rendezvous, SpawnInfo, Transport, WorkerEnv};
use clusterfy_core::{ErrorKind, WorkerId};
use clusterfy_transport_uds::{ENV_UDS_FD, UdsTransport};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// Generous: every wait here completes at once unless the transport is broken.
const DEADLINE: Duration = Duration::from_secs(10);

fn spawn_info(id: u64) -> SpawnInfo {
    SpawnInfo::new(WorkerId(id), "Paul")
}

async fn prepare(command: &mut Command) -> Box<dyn Rendezvous> {
    UdsTransport::new().prepare(&spawn_info(1), command).await.expect("prepare")
}

/// The variables `prepare` set on `command`.
fn env_of(command: &Command) -> Vec<(String, String)> {
    command
        .as_std()
        .get_envs()
        .filter_map(|(key, value)| Some((key.to_str()?.to_owned(), value?.to_str()?.to_owned())))
        .collect()
}

#[tokio::test]
async fn prepare_gives_the_child_a_descriptor_number_and_no_secret_or_path() {
    let mut command = Command::new("true");
    let _rendezvous = prepare(&mut command).await;
    assert_eq!(env_of(&command), vec![(ENV_UDS_FD.to_owned(), "3".to_owned())]);
    assert!(env_of(&command).iter().all(|(key, _)| key != ENV_TOKEN));
}

#[tokio::test]
async fn the_child_writes_on_descriptor_3_and_its_exit_ends_the_stream() {
    let mut command = Command::new("sh");
    command.args(["-c", "printf 'hello from the child' >&3"]);
    let mut rendezvous = prepare(&mut command).await;
    let mut child = command.spawn().expect("spawn sh");
    // The primary keeps only its own end: the command held the child's until here.
    drop(command);
    let mut connection = rendezvous.accept().await.expect("the channel exists since prepare");
    let mut received = Vec::new();
    tokio::time::timeout(DEADLINE, connection.reader.read_to_end(&mut received))
        .await
        .expect("the stream ends when the child exits")
        .expect("read");
    assert_eq!(received, b"hello from the child");
    assert!(child.wait().await.expect("wait").success());
}

#[tokio::test]
async fn the_channel_is_handed_out_once() {
    let mut rendezvous = prepare(&mut Command::new("true")).await;
    let _first = rendezvous.accept().await.expect("first accept");
    let second = rendezvous.accept().await.map(|c| c.description).expect_err("second accept");
    assert_eq!(second.kind(), ErrorKind::Closed);
}

async fn connect_error(value: Option<&str>) -> clusterfy_core::Error {
    let env = match value {
        Some(value) => WorkerEnv::from_pairs([(ENV_UDS_FD, value)]),
        None => WorkerEnv::default(),
    };
    UdsTransport::new().connect(&env).await.map(|c| c.description).expect_err("connect must fail")
}

#[tokio::test]
async fn connect_without_an_inherited_channel_is_a_config_error_saying_so() {
    let missing = connect_error(None).await;
    assert_eq!(missing.kind(), ErrorKind::Config);
    assert!(missing.to_string().contains(ENV_UDS_FD), "{missing}");

    let malformed = connect_error(Some("three")).await;
    assert_eq!(malformed.kind(), ErrorKind::Config);
    assert!(malformed.to_string().contains("\"three\""), "{malformed}");

    for (value, why) in [("1", "standard streams"), ("987654", "no such open descriptor")] {
        let err = connect_error(Some(value)).await;
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.to_string().contains(why), "{value}: {err}");
        assert!(err.to_string().contains("Primary::fork"), "says what to do: {err}");
    }

    let file = tempfile::tempfile().expect("temp file");
    let number = file.as_raw_fd().to_string();
    let err = connect_error(Some(&number)).await;
    assert!(err.to_string().contains("not a socket"), "{err}");
    drop(file);
}
