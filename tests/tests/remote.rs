//! A worker reached through a wrapper command over stdio, as `ssh host ./worker` would reach one
//! on another host: the primary runs a shell that `exec`s the worker, and the protocol crosses
//! the wrapper's stdin/stdout.

mod common;

use clusterfy::transport::StdioTransport;
use clusterfy::{Primary, Program, Value, WorkerOptions};
use clusterfy_tests::{Echo, SaveAt, Scenario};
use common::{bounded, shut_down_cleanly, test_worker_path};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_behind_a_wrapper_command_serves_over_stdio() {
    let primary = Primary::builder().transport(StdioTransport::new()).build().await.expect("primary");
    // `sh -c 'exec "$0" normal' <worker>` stands in for `ssh host <worker> normal`: a program
    // between the primary and the worker that only passes stdin/stdout through.
    let wrapper = Program::new(
        "/bin/sh",
        [
            "-c".into(),
            format!("exec \"$0\" {}", Scenario::Normal.as_str()),
            test_worker_path().to_string_lossy().into_owned(),
        ],
    );
    primary
        .fork("remote", WorkerOptions::default().program(wrapper))
        .await
        .expect("fork through the wrapper");
    bounded("ready", primary.ready()).await.expect("the wrapped worker connects");
    let reply = bounded("echo", primary.run("remote", Echo { text: "over the wrapper".into() })).await;
    assert_eq!(reply.expect("echo"), "over the wrapper");
    let save = SaveAt { path: "greeting".into(), value: Value::from("from afar"), create_parents: false };
    bounded("worker saves", primary.run("remote", save))
        .await
        .expect("the wrapped worker saves to the storage");
    let stored = bounded("read", primary.storage().retrieve::<String>("greeting")).await;
    assert_eq!(stored.expect("read").as_deref(), Some("from afar"));
    shut_down_cleanly(&primary).await;
}
