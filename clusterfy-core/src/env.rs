//! Every environment variable through which a primary configures the workers it spawns, named
//! once, and their parsing ([`WorkerSettings`], [`listen_fd_names`]). A process is a worker
//! when [`ENV_WORKER_ID`] is set; the transport, the handshake and the facade read the others.
//! Transports re-export the ones they own.

use crate::codec::DEFAULT_MAX_FRAME_LEN;
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::WorkerId;
use crate::transport::WorkerEnv;

/// The transport a worker must use (its [`Transport::name`](crate::Transport::name)).
pub const ENV_TRANSPORT: &str = "CLUSTERFY_TRANSPORT";
/// The worker's id; its presence makes a process a worker.
pub const ENV_WORKER_ID: &str = "CLUSTERFY_WORKER_ID";
/// The worker's one-time handshake token, set only for transports that authenticate with one
/// ([`Authentication::Token`](crate::Authentication::Token)).
pub const ENV_TOKEN: &str = "CLUSTERFY_TOKEN";
/// The worker's name (informational; the handshake is authoritative).
pub const ENV_WORKER_NAME: &str = "CLUSTERFY_WORKER_NAME";
/// The largest frame the primary accepts.
pub const ENV_MAX_FRAME_LEN: &str = "CLUSTERFY_MAX_FRAME_LEN";
/// The primary's pid, set when the worker is to set its own parent-death signal (a re-executed
/// primary program without shared listeners).
pub const ENV_PARENT_PID: &str = "CLUSTERFY_PARENT_PID";
/// Set to `1` when the primary asks its workers to mark themselves non-dumpable.
pub const ENV_NON_DUMPABLE: &str = "CLUSTERFY_NON_DUMPABLE";
/// The Unix-socket transport's inherited descriptor number. The number is no secret: only the
/// worker holds that descriptor.
pub const ENV_UDS_FD: &str = "CLUSTERFY_UDS_FD";
/// The prefix of every variable above: a worker's environment is cleaned of them before it
/// spawns programs of its own.
pub const ENV_PREFIX: &str = "CLUSTERFY_";

/// Number of inherited listeners, from descriptor 3 on (the socket-activation convention).
pub const ENV_LISTEN_FDS: &str = "LISTEN_FDS";
/// Their names, separated by `:`, in descriptor order.
pub const ENV_LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// The process the descriptors are meant for; a primary leaves it unset for its workers, as
/// `listenfd` allows, because a child's pid is not known before it is started.
pub const ENV_LISTEN_PID: &str = "LISTEN_PID";

/// Most inherited listeners accepted: far more than any service is given.
const MAX_INHERITED_LISTENERS: usize = 1024;
/// systemd's name for a socket passed without `FileDescriptorName=`.
const UNNAMED_LISTENER: &str = "unknown";

/// The names of the inherited listeners, in descriptor order (the first is descriptor 3), from
/// the values of [`ENV_LISTEN_FDS`] and [`ENV_LISTEN_FDNAMES`]; none without `LISTEN_FDS`. Read
/// by a primary that systemd started and by a worker its primary started.
pub fn listen_fd_names(fds: Option<&str>, names: Option<&str>) -> Result<Vec<String>> {
    let Some(fds) = fds else { return Ok(Vec::new()) };
    let count = fds.parse::<usize>().ok().filter(|n| *n <= MAX_INHERITED_LISTENERS).ok_or_else(|| {
        Error::new(
            ErrorKind::Config,
            format!(
                "{ENV_LISTEN_FDS}={:?} is not a number of descriptors from 0 to {MAX_INHERITED_LISTENERS}",
                crate::error::excerpt(fds)
            ),
        )
    })?;
    let mut given = names.map(|n| n.split(':')).into_iter().flatten();
    Ok((0..count).map(|_| given.next().unwrap_or(UNNAMED_LISTENER).to_owned()).collect())
}

/// What a worker process reads from the environment its primary set, checked once before the
/// worker acts on any of it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerSettings {
    /// [`ENV_WORKER_ID`].
    pub worker_id: WorkerId,
    /// [`ENV_TRANSPORT`]: the transport's name (not needed by a worker given its transport).
    pub transport: Option<String>,
    /// [`ENV_TOKEN`], for transports that authenticate with one.
    pub token: Option<String>,
    /// [`ENV_MAX_FRAME_LEN`], or the default.
    pub max_frame_len: usize,
    /// [`ENV_PARENT_PID`]: the worker sets its own parent-death signal against this process.
    pub parent_pid: Option<u32>,
    /// [`ENV_NON_DUMPABLE`] is `1`.
    pub non_dumpable: bool,
    /// The names of the inherited listeners ([`listen_fd_names`]).
    pub listeners: Vec<String>,
}

impl WorkerSettings {
    /// Reads and checks every setting in `env`: a missing or malformed one is a
    /// [`ErrorKind::Config`] error naming the variable and its value, listeners included (a
    /// worker with a malformed `LISTEN_FDS` fails to connect, whether or not it takes one).
    pub fn from_env(env: &WorkerEnv) -> Result<Self> {
        let max_frame_len = match env.get(ENV_MAX_FRAME_LEN) {
            Some(_) => parsed::<usize>(env, ENV_MAX_FRAME_LEN)?,
            None => DEFAULT_MAX_FRAME_LEN,
        };
        let parent_pid = match env.get(ENV_PARENT_PID) {
            Some(_) => Some(parsed::<u32>(env, ENV_PARENT_PID)?),
            None => None,
        };
        Ok(WorkerSettings {
            worker_id: WorkerId(parsed::<u64>(env, ENV_WORKER_ID)?),
            transport: env.get(ENV_TRANSPORT).map(str::to_owned),
            token: env.get(ENV_TOKEN).map(str::to_owned),
            max_frame_len,
            parent_pid,
            non_dumpable: env.get(ENV_NON_DUMPABLE) == Some("1"),
            listeners: listen_fd_names(env.get(ENV_LISTEN_FDS), env.get(ENV_LISTEN_FDNAMES))?,
        })
    }
}

fn parsed<T: std::str::FromStr>(env: &WorkerEnv, key: &str) -> Result<T> {
    let raw = env.require(key)?;
    raw.parse().map_err(|_| {
        Error::new(
            ErrorKind::Config,
            format!("environment variable {key} has the malformed value {:?}", crate::error::excerpt(raw)),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_names_follow_the_count_and_unnamed_ones_are_unknown() {
        assert_eq!(listen_fd_names(None, Some("http")).expect("none"), Vec::<String>::new());
        assert_eq!(listen_fd_names(Some("2"), Some("http:admin:extra")).expect("two"), ["http", "admin"]);
        assert_eq!(listen_fd_names(Some("2"), None).expect("unnamed"), ["unknown", "unknown"]);
        for bad in ["two", "-1", "100000"] {
            assert_eq!(listen_fd_names(Some(bad), None).expect_err(bad).kind(), ErrorKind::Config);
        }
    }

    #[test]
    fn worker_settings_are_read_and_a_malformed_one_is_named() {
        let env = WorkerEnv::from_pairs([
            (ENV_WORKER_ID, "7"),
            (ENV_TRANSPORT, "uds"),
            (ENV_PARENT_PID, "42"),
            (ENV_LISTEN_FDS, "1"),
            (ENV_LISTEN_FDNAMES, "http"),
        ]);
        let settings = WorkerSettings::from_env(&env).expect("settings");
        assert_eq!(settings.worker_id, WorkerId(7));
        assert_eq!((settings.parent_pid, settings.max_frame_len), (Some(42), DEFAULT_MAX_FRAME_LEN));
        assert_eq!(settings.listeners, ["http"]);
        let bad_values = [
            (ENV_WORKER_ID, "seven"),
            (ENV_MAX_FRAME_LEN, "-1"),
            (ENV_PARENT_PID, "x"),
            (ENV_LISTEN_FDS, "two"),
        ];
        for (key, bad) in bad_values {
            let mut env = env.clone();
            env.set(key, bad);
            let err = WorkerSettings::from_env(&env).expect_err(key);
            assert_eq!(err.kind(), ErrorKind::Config, "{key}");
            assert!(err.message().contains(key) && err.message().contains(bad), "{err}");
        }
        let missing = WorkerSettings::from_env(&WorkerEnv::default()).expect_err("not a worker");
        assert!(missing.message().contains("not started as a worker"), "{missing}");
    }
}
