//! `rediss://`: a mirror over TLS to a `redis-server` serving only TLS, with a throwaway
//! certificate authority (`RedisServer::start_tls`); wrong or missing certificates fail fast with
//! a `Config` error that says what to fix. The tests check Redis through the server's plain Unix
//! socket, which does not go through the client's TLS.

// A failed unwrap is the clearest failure report a test can give.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use clusterfy_core::{BatchOp, ErrorKind, StorageBackend, StorageBackendExt};
use clusterfy_storage_redis::RedisMirrorBuilder;
use clusterfy_test_support::redis_server::RedisServer;
use tokio::time::timeout;

mod common;
use common::*;

/// A failed connection must be reported well within this (the connect timeout is 5 s).
const FAILS_WITHIN: Duration = Duration::from_secs(4);

/// Connects, expecting a failure within [`FAILS_WITHIN`].
async fn connect_fails(builder: RedisMirrorBuilder) -> clusterfy_core::Error {
    let started = Instant::now();
    let outcome = timeout(DEADLINE, builder.connect()).await.expect("connect hung");
    let err = outcome.expect_err("the connection must fail");
    assert!(started.elapsed() < FAILS_WITHIN, "took {:?} to fail: {err}", started.elapsed());
    err
}

#[tokio::test]
async fn rediss_mirror_writes_reach_redis_and_the_state_reloads_at_start() {
    let Some(mut server) = RedisServer::start_tls_or_skip("rediss_mirror") else { return };
    let url = server.url().to_owned();
    assert!(url.starts_with("rediss://"), "{url}");
    let plain = server.unix_url().unwrap();
    let ca = server.tls().unwrap().ca_cert.clone();
    let prefix = prefix("tls");

    // State written before the mirror starts is loaded over TLS.
    let data_key = format!("{prefix}:data");
    redis::cmd("HSET")
        .arg(&data_key)
        .arg("before")
        .arg("start")
        .exec_async(&mut direct(&plain).await)
        .await
        .unwrap();
    let mirror = builder(&url, &prefix).tls_ca_cert_file(&ca).connect().await.unwrap();
    assert_eq!(mirror.get(b"before").await.unwrap(), Some(b"start".to_vec()));

    mirror.put(b"a", b"1").await.unwrap();
    mirror
        .apply_batch(vec![
            BatchOp::Put { key: b"b".to_vec(), value: b"2".to_vec() },
            BatchOp::Delete { key: b"before".to_vec() },
        ])
        .await
        .unwrap();
    mirror.delete(b"a").await.unwrap();
    mirror.put(b"c", b"3").await.unwrap();
    mirror.wait_mirrored().await.unwrap();
    let expected: Map = [(b"b".to_vec(), b"2".to_vec()), (b"c".to_vec(), b"3".to_vec())].into();
    assert_eq!(in_memory(&mirror).await, expected);
    assert_eq!(in_redis(&plain, &data_key).await, expected);

    // A restarted (empty) server is reconnected to over TLS and rewritten from memory.
    let mut notices = mirror.notices().unwrap();
    server.restart().unwrap();
    notice(&mut notices, "Resynced", is_resynced).await;
    mirror.put(b"d", b"4").await.unwrap();
    mirror.wait_mirrored().await.unwrap();
    let after_restart = in_memory(&mirror).await;
    assert_eq!(after_restart.len(), 3);
    assert_eq!(in_redis(&plain, &data_key).await, after_restart);

    // A new mirror (CA given as bytes this time) starts with the state kept in Redis.
    drop(mirror);
    let pem = std::fs::read(&ca).unwrap();
    let reopened = builder(&url, &prefix).tls_ca_cert(pem).connect().await.unwrap();
    assert_eq!(in_memory(&reopened).await, after_restart);
}

#[tokio::test]
async fn an_untrusted_certificate_fails_fast_with_a_config_error_naming_the_fix() {
    let Some(server) = RedisServer::start_tls_or_skip("untrusted_certificate") else { return };
    let port = server.port().unwrap();
    let tls = server.tls().unwrap();
    // The password in the URL must not show in the error either.
    let url = format!("rediss://:s3cret-pw@127.0.0.1:{port}");

    // A CA that did not sign the server's certificate, and the system's CAs (which do not know
    // the throwaway one).
    for (what, builder) in [
        ("another CA", builder(&url, "untrusted").tls_ca_cert_file(&tls.other_ca_cert)),
        ("the system's CAs", builder(&url, "untrusted")),
    ] {
        let err = connect_fails(builder).await;
        assert_eq!(err.kind(), ErrorKind::Config, "{what}: {err}");
        let shown = format!("{err} {err:?}");
        for needed in
            ["not trusted", "tls_ca_cert", "UnknownIssuer", &format!("rediss://:***@127.0.0.1:{port}")]
        {
            assert!(shown.contains(needed), "{what}: the error does not say {needed:?}: {shown}");
        }
        assert!(!shown.contains("s3cret-pw"), "{shown}");
    }

    // `#insecure` skips the check (for tests only).
    let insecure = builder(&format!("rediss://127.0.0.1:{port}/#insecure"), &prefix("insecure"));
    let mirror = insecure.connect().await.unwrap();
    mirror.put(b"k", b"v").await.unwrap();
    mirror.wait_mirrored().await.unwrap();
    assert_eq!(in_redis(&server.unix_url().unwrap(), mirror.data_key()).await, in_memory(&mirror).await);
}

#[tokio::test]
async fn tls_and_plain_ports_mixed_up_fail_fast() {
    let Some(tls_server) = RedisServer::start_tls_or_skip("tls_plain_mixup") else { return };
    let Some(plain_server) = RedisServer::start_owned_or_skip("tls_plain_mixup") else { return };
    let ca = &tls_server.tls().unwrap().ca_cert;

    // rediss:// to a plain-text port: Redis waits for the end of a line that never comes, so the
    // handshake times out (after the connect timeout).
    let plain_port = plain_server.port().unwrap();
    let rediss_to_plain = builder(&format!("rediss://127.0.0.1:{plain_port}"), "mixup")
        .tls_ca_cert_file(ca)
        .connect_timeout(Duration::from_secs(1));
    let err = connect_fails(rediss_to_plain).await;
    assert_eq!(err.kind(), ErrorKind::Storage, "{err}");
    assert!(err.message().contains("tls-port"), "{err}");

    // redis:// to a TLS port: the server hangs up on the plain text.
    let tls_port = tls_server.port().unwrap();
    let err = connect_fails(builder(&format!("redis://127.0.0.1:{tls_port}"), "mixup")).await;
    assert_eq!(err.kind(), ErrorKind::Storage, "{err}");
    assert!(err.message().contains("cannot reach Redis"), "{err}");
    assert!(err.message().contains("use rediss://"), "{err}");
}

#[tokio::test]
async fn a_server_requiring_client_certificates_takes_the_given_one() {
    let Some(server) = RedisServer::start_mtls_or_skip("client_certificates") else { return };
    let url = server.url().to_owned();
    let tls = server.tls().unwrap();

    let err = connect_fails(builder(&url, "mtls").tls_ca_cert_file(&tls.ca_cert)).await;
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.message().contains("tls_client_cert"), "{err}");

    let with_cert = builder(&url, &prefix("mtls"))
        .tls_ca_cert_file(&tls.ca_cert)
        .tls_client_cert_files(&tls.client_cert, &tls.client_key);
    let shown = format!("{with_cert:?}");
    assert!(shown.contains("client.crt") && !shown.contains("client.key"), "{shown}");
    let mirror = with_cert.connect().await.unwrap();
    mirror.put(b"k", b"v").await.unwrap();
    mirror.wait_mirrored().await.unwrap();
    assert_eq!(in_redis(&server.unix_url().unwrap(), mirror.data_key()).await, in_memory(&mirror).await);

    // The same, with the PEM as bytes.
    let (cert, key) = (std::fs::read(&tls.client_cert).unwrap(), std::fs::read(&tls.client_key).unwrap());
    let bad_key = builder(&url, "mtls").tls_client_cert(cert.clone(), b"not a key".to_vec());
    let err = bad_key.connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.message().contains("not a PEM private key"), "{err}");
    let with_bytes =
        builder(&url, mirror.key_prefix()).tls_ca_cert_file(&tls.ca_cert).tls_client_cert(cert, key);
    assert!(!format!("{with_bytes:?}").contains("PRIVATE KEY"));
    drop(mirror);
    let reopened = with_bytes.connect().await.unwrap();
    assert_eq!(reopened.get(b"k").await.unwrap(), Some(b"v".to_vec()));
}

#[tokio::test]
async fn the_password_of_a_rediss_url_never_shows() {
    const PASSWORD: &str = "tls-hunter2";
    let Some(server) = RedisServer::start_tls_or_skip("rediss_password") else { return };
    let port = server.port().unwrap();
    let ca = &server.tls().unwrap().ca_cert;
    let mut admin = direct(&server.unix_url().unwrap()).await;
    redis::cmd("CONFIG").arg("SET").arg("requirepass").arg(PASSWORD).exec_async(&mut admin).await.unwrap();

    let wrong = builder(&format!("rediss://:wrong-{PASSWORD}@127.0.0.1:{port}"), "pw").tls_ca_cert_file(ca);
    let err = connect_fails(wrong).await;
    assert!(err.message().contains("refused the credentials"), "{err}");
    let url = format!("rediss://default:{PASSWORD}@127.0.0.1:{port}/0");
    let mirror = builder(&url, &prefix("tls-password")).tls_ca_cert_file(ca).connect().await.unwrap();
    let shown =
        format!("{err} {err:?} {mirror:?} {} {:?}", mirror.url(), builder(&url, "p").tls_ca_cert_file(ca));
    assert!(shown.contains(&format!("rediss://default:***@127.0.0.1:{port}/0")), "{shown}");
    assert!(!shown.contains(PASSWORD), "{shown}");
}
