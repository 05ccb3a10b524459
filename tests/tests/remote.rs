//! A worker reached through a wrapper command over stdio, as `ssh host ./worker` would reach one
//! on another host: the primary runs a shell that `exec`s the worker, and the protocol crosses
//! the wrapper's stdin/stdout.

mod common;

use clusterfy::transport::StdioTransport;
use clusterfy::{
    ErrorKind, Primary, Value,
    events::Event,
    primary::{Program, WorkerOptions},
};
use clusterfy_tests::{Echo, SaveAt, Scenario};
use common::{WAIT, bounded, is_error_of, next_event_matching, shut_down_cleanly, test_worker_path};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdio_worker_that_prints_before_it_connects_is_told_that_this_is_the_cause() {
    let primary = Primary::builder().transport(StdioTransport::new()).build().await.expect("primary");
    let mut events = primary.events();
    let careless = Program::new(
        "/bin/sh",
        [
            "-c".into(),
            format!("echo 'starting up...'; exec \"$0\" {}", Scenario::Normal.as_str()),
            test_worker_path().to_string_lossy().into_owned(),
        ],
    );
    primary.fork("careless", WorkerOptions::default().program(careless)).await.expect("fork");
    let refused = next_event_matching(&mut events, WAIT, "the refusal", |e| {
        is_error_of(e, "careless", ErrorKind::Protocol)
    })
    .await;
    let Event::Error { error, .. } = refused else { unreachable!("matched an error event") };
    let message = error.to_string();
    assert!(message.contains("starting up..."), "quotes what came: {message}");
    assert!(message.contains("must not print to stdout before"), "names the cause: {message}");
    let not_ready =
        bounded("ready", primary.ready()).await.expect_err("the careless worker never gets ready");
    // Its stderr is empty: readiness names the cause the event named, not "see its stderr".
    assert!(not_ready.message().contains("must not print to stdout before"), "{not_ready}");
    assert!(not_ready.context_value("worker").is_some_and(|w| w.starts_with("careless")), "{not_ready}");
}
