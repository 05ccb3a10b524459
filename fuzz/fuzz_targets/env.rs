//! Any environment gives a worker its checked settings or a configuration error, and the
//! listener names stay within their bound.
#![no_main]

use clusterfy_core::env::{WorkerSettings, listen_fd_names};
use clusterfy_core::error::ErrorKind;
use clusterfy_core::transport::WorkerEnv;
use libfuzzer_sys::fuzz_target;

/// Keys the parsers read, so arbitrary values reach them often.
const KEYS: [&str; 8] = [
    "CLUSTERFY_WORKER_ID",
    "CLUSTERFY_TRANSPORT",
    "CLUSTERFY_TOKEN",
    "CLUSTERFY_MAX_FRAME_LEN",
    "CLUSTERFY_PARENT_PID",
    "CLUSTERFY_NON_DUMPABLE",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
];

fuzz_target!(|pairs: Vec<(u8, String)>| {
    let env = WorkerEnv::from_pairs(
        pairs.iter().map(|(key, value)| (KEYS[usize::from(*key) % KEYS.len()], value.clone())),
    );
    match WorkerSettings::from_env(&env) {
        Ok(settings) => assert!(settings.listeners.len() <= 1024),
        Err(err) => assert_eq!(err.kind(), ErrorKind::Config, "{err}"),
    }
    if let Ok(names) = listen_fd_names(env.get("LISTEN_FDS"), env.get("LISTEN_FDNAMES")) {
        assert!(names.len() <= 1024);
    }
});
