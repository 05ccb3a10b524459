//! A `redis-server` owned by a test: started on a free loopback port in a private temporary
//! directory, killed and restarted on demand, and gone when the test is done.
//!
//! Tests that need Redis call [`RedisServer::start_or_skip`]: it starts a server, or uses the one
//! named by `CLUSTERFY_TEST_REDIS_URL`, or, when `redis-server` is not installed, prints a loud
//! `SKIPPED` line to stderr and returns `None` — except when the environment variable `CI` is set,
//! where a skipped test is a failed test (it panics). Tests that kill the server use
//! [`RedisServer::start_owned_or_skip`], which never hands out a server it cannot kill.
//!
//! [`RedisServer::start_tls`] starts one that speaks only TLS on its TCP port (`rediss://`), with a
//! throwaway certificate authority made by the `openssl` command in the server's directory (see
//! [`TlsFiles`]); [`RedisServer::start_tls_or_skip`] skips (or fails in CI) when `openssl` is
//! missing or `redis-server` was built without TLS.
//!
//! Everything here is blocking and uses only `std`; from async tests the short waits (a server is
//! ready in a few milliseconds) are harmless, or wrap them in `spawn_blocking`.
//!
//! ```no_run
//! use clusterfy_test_support::redis_server::RedisServer;
//!
//! # fn main() -> std::io::Result<()> {
//! let Some(mut server) = RedisServer::start_owned_or_skip("my_outage_test") else { return Ok(()) };
//! let url = server.url().to_owned(); // redis://127.0.0.1:<port>
//! server.kill()?;                    // SIGKILL: an abrupt outage, the data is gone
//! server.restart()?;                 // same port, empty
//! # Ok(())
//! # }
//! ```

use std::ffi::OsString;
use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Environment variable naming a running Redis (`redis://...`) that tests use instead of starting
/// their own (tests that must kill the server still start their own).
pub const TEST_REDIS_URL_ENV: &str = "CLUSTERFY_TEST_REDIS_URL";

/// Environment variable naming the `redis-server` binary to run (default: `redis-server` on `PATH`).
pub const REDIS_SERVER_BIN_ENV: &str = "CLUSTERFY_TEST_REDIS_SERVER";

/// How long a starting server may take to say it accepts connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Fresh ports tried when the one picked is taken between picking and binding.
const PORT_ATTEMPTS: usize = 5;

/// Log lines of the current server process kept for error messages.
const KEPT_LOG_LINES: usize = 100;

/// The line `redis-server` logs once it accepts connections (Redis 6 and 7).
const READY_LINE: &str = "Ready to accept connections";

/// Runs `redis-server` so that it dies with the test process, however that process ends.
///
/// A server shared by all tests of a process lives in a `static`, and statics are never dropped,
/// so `Drop` alone would leave it running. The wrapper shell holds the read end of a pipe whose
/// write end only the test process has: when that process exits (or [`RedisServer::kill`] closes
/// the pipe), `read` returns and the shell kills the server with SIGKILL and reaps it. The shell
/// points its own stdout away so that the server's log pipe reaches end-of-file exactly when the
/// server exits. A line on the pipe is an explicit kill (the directory stays for a restart);
/// end-of-file without one means the owner is gone, and the shell removes the directory too.
const GUARD_SCRIPT: &str = r#""$0" "$@" & pid=$!
exec >/dev/null 2>&1
if read -r _ignored; then owner_gone=no; else owner_gone=yes; fi
kill -9 "$pid"
wait "$pid"
if [ "$owner_gone" = yes ]; then rm -rf -- "$CLUSTERFY_REDIS_SERVER_DIR"; fi
"#;

/// Certificates made for a TLS server ([`RedisServer::start_tls`]), all PEM files in the server's
/// directory, valid for 7 days, with EC P-256 keys.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The throwaway certificate authority that signed the server's and the client's certificates:
    /// what a client has to trust.
    pub ca_cert: PathBuf,
    /// A client certificate signed by [`ca_cert`](TlsFiles::ca_cert), for servers that require one
    /// ([`RedisServer::start_mtls`]).
    pub client_cert: PathBuf,
    /// The private key of [`client_cert`](TlsFiles::client_cert).
    pub client_key: PathBuf,
    /// Another certificate authority, which signed nothing the server has: trusting only it must
    /// make the connection fail.
    pub other_ca_cert: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    require_client_certs: bool,
}

/// The `openssl` configuration the certificates are made with. The server's certificate is valid
/// for `127.0.0.1` and `localhost`.
const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = Clusterfy test
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

impl TlsFiles {
    /// Makes a certificate authority, a server and a client certificate signed by it, and an
    /// unrelated second authority, in `dir`.
    fn create(dir: &Path, require_client_certs: bool) -> io::Result<TlsFiles> {
        let file = |name: &str| dir.join(name);
        let config = file("openssl.cnf");
        std::fs::write(&config, OPENSSL_CONFIG)?;
        let files = TlsFiles {
            ca_cert: file("ca.crt"),
            client_cert: file("client.crt"),
            client_key: file("client.key"),
            other_ca_cert: file("other-ca.crt"),
            server_cert: file("server.crt"),
            server_key: file("server.key"),
            require_client_certs,
        };
        // A new EC P-256 key and a request (or, with -x509, a self-signed certificate) for it.
        let new_key = |key: &Path, out: &Path, subject: &str, x509: &[&str]| {
            let mut args: Vec<OsString> = vec!["req".into()];
            args.extend(x509.iter().map(OsString::from));
            args.extend(["-config".into(), config.clone().into_os_string()]);
            args.extend(
                ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", subject]
                    .map(OsString::from),
            );
            args.extend(["-keyout".into(), key.into(), "-out".into(), out.into()]);
            openssl(&args)
        };
        let ca_key = file("ca.key");
        let ca = ["-x509", "-extensions", "ca_ext", "-days", "7"];
        new_key(&ca_key, &files.ca_cert, "/CN=Clusterfy test CA", &ca)?;
        new_key(&file("other-ca.key"), &files.other_ca_cert, "/CN=Clusterfy unrelated test CA", &ca)?;
        let signed = |cert: &Path, key: &Path, subject: &str, extensions: &str, serial: &str| {
            let request = file("request.csr");
            new_key(key, &request, subject, &[])?;
            let mut args: Vec<OsString> =
                ["x509", "-req", "-days", "7", "-set_serial", serial, "-extensions", extensions]
                    .map(OsString::from)
                    .into();
            for (option, path) in [
                ("-extfile", &*config),
                ("-in", &*request),
                ("-CA", &*files.ca_cert),
                ("-CAkey", &*ca_key),
                ("-out", cert),
            ] {
                args.extend([option.into(), path.into()]);
            }
            openssl(&args)
        };
        signed(&files.server_cert, &files.server_key, "/CN=localhost", "server_ext", "2")?;
        signed(&files.client_cert, &files.client_key, "/CN=clusterfy-test-client", "client_ext", "3")?;
        Ok(files)
    }

    /// The `redis-server` arguments that serve TLS, and nothing else, on `port`.
    fn server_args(&self, port: u16) -> Vec<OsString> {
        let mut args: Vec<OsString> = ["--port", "0", "--tls-port"].map(OsString::from).into();
        args.push(port.to_string().into());
        for (option, path) in [
            ("--tls-cert-file", &self.server_cert),
            ("--tls-key-file", &self.server_key),
            ("--tls-ca-cert-file", &self.ca_cert),
        ] {
            args.extend([option.into(), path.into()]);
        }
        args.push("--tls-auth-clients".into());
        args.push(if self.require_client_certs { "yes" } else { "no" }.into());
        args
    }
}

/// Runs `openssl` with `args`, failing with its output; `NotFound` if it is not installed.
fn openssl(args: &[OsString]) -> io::Result<()> {
    let output = Command::new("openssl").args(args).stdin(Stdio::null()).output().map_err(|err| {
        io::Error::new(err.kind(), format!("cannot run openssl, which makes the test certificates: {err}"))
    })?;
    if output.status.success() {
        return Ok(());
    }
    let shown: Vec<_> = args.iter().map(|arg| arg.to_string_lossy()).collect();
    Err(io::Error::other(format!(
        "openssl {} failed ({}): {}",
        shown.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

/// A `redis-server` process owned by a test, or an outside server named by
/// `CLUSTERFY_TEST_REDIS_URL`.
///
/// An owned server listens on `127.0.0.1:<free port>` and on a Unix socket, keeps nothing on disk
/// (`--save "" --appendonly no`), so after [`kill`](RedisServer::kill) and
/// [`restart`](RedisServer::restart) it is empty — what an outage test wants: the client has to
/// rewrite its state. Dropping it kills the process and removes its directory. A TLS server
/// ([`start_tls`](RedisServer::start_tls)) serves only TLS on that port, and keeps its certificates
/// ([`tls`](RedisServer::tls)) in its directory across restarts.
pub struct RedisServer {
    url: String,
    owned: Option<Owned>,
}

struct Owned {
    binary: OsString,
    port: u16,
    dir: PathBuf,
    tls: Option<TlsFiles>,
    process: Option<Process>,
}

struct Process {
    /// The wrapper shell; closing `guard` makes it kill the server.
    shell: Child,
    guard: Option<ChildStdin>,
    reader: Option<thread::JoinHandle<()>>,
}

impl RedisServer {
    /// Starts a `redis-server` on a free loopback port in a new private temporary directory and
    /// waits until it accepts connections.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] if the binary is not installed; any other error if it does not
    /// start within 10 seconds (the message carries the server's log).
    pub fn start() -> io::Result<RedisServer> {
        RedisServer::start_owned(None)
    }

    /// Starts a `redis-server` like [`start`](RedisServer::start), but speaking only TLS on its TCP
    /// port: [`url`](RedisServer::url) is `rediss://127.0.0.1:<port>`. Its certificate, for
    /// `127.0.0.1` and `localhost`, is signed by a throwaway certificate authority made with the
    /// `openssl` command in the server's directory ([`tls`](RedisServer::tls) names the files).
    /// Clients need not present a certificate (`--tls-auth-clients no`).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] if `redis-server` or `openssl` is not installed;
    /// [`io::ErrorKind::Unsupported`] if `redis-server` was built without TLS; any other error as
    /// [`start`](RedisServer::start).
    pub fn start_tls() -> io::Result<RedisServer> {
        RedisServer::start_owned(Some(false))
    }

    /// Like [`start_tls`](RedisServer::start_tls), but the server requires a client certificate
    /// signed by its authority (`--tls-auth-clients yes`, Redis's default):
    /// [`TlsFiles::client_cert`] and [`TlsFiles::client_key`] are one.
    ///
    /// # Errors
    ///
    /// As [`start_tls`](RedisServer::start_tls).
    pub fn start_mtls() -> io::Result<RedisServer> {
        RedisServer::start_owned(Some(true))
    }

    /// `tls`: `None` for plain TCP, else whether clients must present a certificate.
    fn start_owned(tls: Option<bool>) -> io::Result<RedisServer> {
        let binary = std::env::var_os(REDIS_SERVER_BIN_ENV)
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| OsString::from("redis-server"));
        ensure_runs(&binary)?;
        if tls.is_some() {
            ensure_tls_built(&binary)?;
        }
        let dir = private_temp_dir()?;
        let result = RedisServer::start_in(&binary, &dir, tls);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    fn start_in(binary: &OsString, dir: &Path, tls: Option<bool>) -> io::Result<RedisServer> {
        let tls = match tls {
            Some(require_client_certs) => Some(TlsFiles::create(dir, require_client_certs)?),
            None => None,
        };
        let scheme = if tls.is_some() { "rediss" } else { "redis" };
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let mut owned =
                Owned { binary: binary.clone(), port, dir: dir.to_owned(), tls: tls.clone(), process: None };
            match owned.spawn() {
                Ok(()) => {
                    return Ok(RedisServer {
                        url: format!("{scheme}://127.0.0.1:{port}"),
                        owned: Some(owned),
                    });
                }
                // Another process may have taken the port since it was picked: try a fresh one.
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }

    /// The server `CLUSTERFY_TEST_REDIS_URL` names if it is set, else a fresh owned one
    /// ([`start`](RedisServer::start)); for harnesses that report a missing server their own way.
    ///
    /// # Errors
    ///
    /// As [`start`](RedisServer::start).
    pub fn from_env_or_start() -> io::Result<RedisServer> {
        match std::env::var_os(TEST_REDIS_URL_ENV).filter(|u| !u.is_empty()) {
            Some(url) => Ok(RedisServer { url: url.to_string_lossy().into_owned(), owned: None }),
            None => RedisServer::start(),
        }
    }

    /// A server for the test named `test`: the one `CLUSTERFY_TEST_REDIS_URL` names if set, else
    /// a fresh owned one; `None` (after a loud `SKIPPED` line on stderr) if `redis-server` is not
    /// installed.
    ///
    /// # Panics
    ///
    /// If the server would be skipped while the environment variable `CI` is set (a skipped test
    /// must not pass in CI), or if an installed `redis-server` fails to start.
    pub fn start_or_skip(test: &str) -> Option<RedisServer> {
        or_skip(test, RedisServer::from_env_or_start())
    }

    /// Like [`start_or_skip`](RedisServer::start_or_skip), but always an owned server (one the test
    /// may [`kill`](RedisServer::kill) and [`restart`](RedisServer::restart)), even when
    /// `CLUSTERFY_TEST_REDIS_URL` is set.
    ///
    /// # Panics
    ///
    /// As [`start_or_skip`](RedisServer::start_or_skip).
    pub fn start_owned_or_skip(test: &str) -> Option<RedisServer> {
        or_skip(test, RedisServer::start())
    }

    /// A fresh TLS server ([`start_tls`](RedisServer::start_tls)) for the test named `test`
    /// (never the one `CLUSTERFY_TEST_REDIS_URL` names); `None` (after a loud `SKIPPED` line on
    /// stderr) if `redis-server` or `openssl` is not installed or `redis-server` lacks TLS.
    ///
    /// # Panics
    ///
    /// As [`start_or_skip`](RedisServer::start_or_skip): in CI a skipped test fails.
    pub fn start_tls_or_skip(test: &str) -> Option<RedisServer> {
        or_skip(test, RedisServer::start_tls())
    }

    /// Like [`start_tls_or_skip`](RedisServer::start_tls_or_skip), with a server that requires a
    /// client certificate ([`start_mtls`](RedisServer::start_mtls)).
    ///
    /// # Panics
    ///
    /// As [`start_or_skip`](RedisServer::start_or_skip).
    pub fn start_mtls_or_skip(test: &str) -> Option<RedisServer> {
        or_skip(test, RedisServer::start_mtls())
    }

    /// The certificates of a TLS server ([`start_tls`](RedisServer::start_tls)); `None` for a
    /// plain or outside one.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.owned.as_ref().and_then(|owned| owned.tls.as_ref())
    }

    /// The URL clients connect with: `redis://127.0.0.1:<port>` for an owned server,
    /// `rediss://127.0.0.1:<port>` for a TLS one.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A `unix://` URL of the owned server's Unix socket (`None` for an outside server).
    pub fn unix_url(&self) -> Option<String> {
        self.owned.as_ref().map(|owned| format!("unix://{}", owned.socket_path().display()))
    }

    /// The TCP port of an owned server (`None` for an outside server).
    pub fn port(&self) -> Option<u16> {
        self.owned.as_ref().map(|owned| owned.port)
    }

    /// Whether this test started the server (and so may kill and restart it).
    pub fn is_owned(&self) -> bool {
        self.owned.is_some()
    }

    /// Kills the server with SIGKILL, as a crash would, and waits until it is gone. Its data is
    /// lost. Killing a killed server does nothing.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::Unsupported`] for an outside server; an error if waiting for the process fails.
    pub fn kill(&mut self) -> io::Result<()> {
        self.owned_mut()?.stop()
    }

    /// Starts the server again on the same port and directory (after [`kill`](RedisServer::kill),
    /// or killing it first) and waits until it accepts connections. It starts empty.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::Unsupported`] for an outside server; an error if it does not start (for
    /// example because another process took the port meanwhile).
    pub fn restart(&mut self) -> io::Result<()> {
        let owned = self.owned_mut()?;
        owned.stop()?;
        owned.spawn()
    }

    fn owned_mut(&mut self) -> io::Result<&mut Owned> {
        self.owned.as_mut().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!("this Redis comes from {TEST_REDIS_URL_ENV}; the test cannot kill or restart it"),
            )
        })
    }
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("RedisServer");
        match &self.owned {
            Some(owned) => {
                s.field("url", &self.url).field("dir", &owned.dir).field("running", &owned.process.is_some())
            }
            // An outside URL may carry a password; show only that it is outside.
            None => s.field("url", &format_args!("<from {TEST_REDIS_URL_ENV}>")),
        }
        .finish()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(owned) = &mut self.owned {
            let _ = owned.stop();
            let _ = std::fs::remove_dir_all(&owned.dir);
        }
    }
}

impl Owned {
    fn socket_path(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// Starts the server process and waits for its readiness line.
    fn spawn(&mut self) -> io::Result<()> {
        let listen = match &self.tls {
            Some(tls) => tls.server_args(self.port),
            None => vec!["--port".into(), self.port.to_string().into()],
        };
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(GUARD_SCRIPT)
            .env("CLUSTERFY_REDIS_SERVER_DIR", &self.dir)
            .arg(&self.binary)
            .args(listen)
            .args(["--bind", "127.0.0.1"])
            .arg("--unixsocket")
            .arg(self.socket_path())
            .args(["--unixsocketperm", "700"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", ""])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let guard = shell.stdin.take();
        let stdout = shell.stdout.take();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let reader = stdout.map(|stdout| {
            let log = Arc::clone(&log);
            thread::spawn(move || read_log(stdout, &log, &ready_tx))
        });
        self.process = Some(Process { shell, guard, reader });

        // Event-driven: the reader thread reports the readiness line, or hangs up when the server
        // exits (its log pipe closes); only the deadline bounds the wait.
        let deadline = Instant::now() + READY_TIMEOUT;
        let outcome = ready_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        let failure = match outcome {
            Ok(()) => return Ok(()),
            Err(mpsc::RecvTimeoutError::Disconnected) => "exited before accepting connections",
            Err(mpsc::RecvTimeoutError::Timeout) => "did not accept connections within 10 s",
        };
        let _ = self.stop();
        let lines = log.lock().map(|lines| lines.join("\n")).unwrap_or_default();
        Err(io::Error::other(format!("redis-server on 127.0.0.1:{} {failure}; its log:\n{lines}", self.port)))
    }

    /// Kills the server (if running) and reaps it.
    fn stop(&mut self) -> io::Result<()> {
        let Some(mut process) = self.process.take() else { return Ok(()) };
        // Closing the pipe is the signal: the wrapper kills the server and waits for it.
        if let Some(mut guard) = process.guard.take() {
            let _ = guard.write_all(b"\n");
        }
        let status = process.shell.wait();
        if let Some(reader) = process.reader.take() {
            let _ = reader.join();
        }
        status.map(|_| ())
    }
}

fn or_skip(test: &str, started: io::Result<RedisServer>) -> Option<RedisServer> {
    match started {
        Ok(server) => Some(server),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            skip(test, &format!("a program it needs is not installed ({err})"));
            None
        }
        Err(err) if err.kind() == io::ErrorKind::Unsupported => {
            skip(test, &err.to_string());
            None
        }
        Err(err) => panic!("{test}: redis-server is installed but did not start: {err}"),
    }
}

/// Forwards the server's log: keeps the last lines and reports the readiness line once.
fn read_log(stdout: impl io::Read, log: &Mutex<Vec<String>>, ready: &mpsc::Sender<()>) {
    let mut announced = false;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if !announced && line.contains(READY_LINE) {
            announced = true;
            let _ = ready.send(());
        }
        if let Ok(mut lines) = log.lock() {
            if lines.len() == KEPT_LOG_LINES {
                lines.remove(0);
            }
            lines.push(line);
        }
    }
}

/// Fails with `NotFound` when `binary` cannot be run at all, so callers can tell "not installed"
/// from "installed but broken" (the server itself is started through `sh`, which hides that).
fn ensure_runs(binary: &OsString) -> io::Result<()> {
    let status = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|err| {
            io::Error::new(err.kind(), format!("cannot run {}: {err}", Path::new(binary).display()))
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("{} --version failed: {status}", Path::new(binary).display())))
    }
}

/// Fails with `Unsupported` when `binary` was built without TLS. Asked to serve TLS without a
/// certificate, a build with TLS complains about the missing `tls-cert-file`; one without says
/// something else (and, told to listen nowhere, exits too).
fn ensure_tls_built(binary: &OsString) -> io::Result<()> {
    let mut probe = Command::new(binary)
        .args(["--port", "0", "--tls-port", "1", "--save", "", "--appendonly", "no", "--logfile", ""])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + READY_TIMEOUT;
    while probe.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = probe.kill();
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let output = probe.wait_with_output()?;
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if said.contains("tls-cert-file") {
        Ok(())
    } else {
        let last = said.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("");
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{} was built without TLS (asked for a TLS port it said: {last})",
                Path::new(binary).display()
            ),
        ))
    }
}

/// A loopback port nobody listened on a moment ago.
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// A new directory only this user can enter, under the system temp dir.
fn private_temp_dir() -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;

    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("clusterfy-redis-{}-{nanos}-{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err),
        }
    }
}

/// Whether this is a CI run: the environment variable `CI` is set (to anything, as the storage
/// suite's runner reads it too).
pub fn running_in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Reports that `test` is skipped because of `reason`: a loud line on stderr, and a panic when
/// [`running_in_ci`] (a test that did not run must not pass in CI).
///
/// # Panics
///
/// When the environment variable `CI` is set.
pub fn skip(test: &str, reason: &str) {
    assert!(
        !running_in_ci(),
        "{test}: cannot run: {reason}. CI is set, and in CI a skipped test is a failed test \
         (install redis-server or set {TEST_REDIS_URL_ENV}; TLS tests also need openssl and a TLS build)"
    );
    eprintln!(
        "\n==============================================================\n\
         SKIPPED: {test}: {reason}.\n\
         Install redis-server (apt-get install redis-server) or set {TEST_REDIS_URL_ENV}; TLS tests\n\
         also need the openssl command and a redis-server built with TLS (Debian's is).\n\
         ==============================================================\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_server_accepts_ping_and_restarts_on_the_same_port() {
        let Some(mut server) = RedisServer::start_owned_or_skip("redis_server::restart") else { return };
        let port = server.port().expect("owned");
        assert!(server.is_owned());
        assert_eq!(ping(port), "+PONG");
        server.kill().expect("kill");
        assert!(std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
        server.kill().expect("killing twice is fine");
        server.restart().expect("restart");
        assert_eq!(server.port(), Some(port));
        assert_eq!(ping(port), "+PONG");
        let dir = server.owned.as_ref().expect("owned").dir.clone();
        assert!(dir.exists());
        drop(server);
        assert!(!dir.exists(), "the temp dir is removed on drop");
        assert!(std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
    }

    #[test]
    fn outside_server_debug_hides_the_url() {
        let server = RedisServer { url: "redis://:secret@example:6379".into(), owned: None };
        assert!(!format!("{server:?}").contains("secret"));
        assert!(server.unix_url().is_none());
        let mut server = server;
        assert_eq!(server.kill().expect_err("not owned").kind(), io::ErrorKind::Unsupported);
    }

    #[test]
    fn tls_server_serves_only_tls_and_keeps_its_certificates_across_restarts() {
        let Some(mut server) = RedisServer::start_tls_or_skip("redis_server::tls") else { return };
        let port = server.port().expect("owned");
        assert_eq!(server.url(), format!("rediss://127.0.0.1:{port}"));
        let tls = server.tls().expect("a TLS server").clone();
        let verify = |ca: &Path, cert: &Path| {
            Command::new("openssl").arg("verify").arg("-CAfile").arg(ca).arg(cert).output().expect("openssl")
        };
        for cert in [&tls.server_cert, &tls.client_cert] {
            let verified = verify(&tls.ca_cert, cert);
            assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
            assert!(!verify(&tls.other_ca_cert, cert).status.success(), "the other CA signed nothing");
        }
        assert!(plain_ping(port).is_err(), "the TCP port speaks only TLS");
        server.restart().expect("restart");
        assert_eq!(server.port(), Some(port));
        assert!(plain_ping(port).is_err(), "still only TLS after a restart");
        assert!(tls.ca_cert.exists(), "the certificates stay for restarts");
        drop(server);
        assert!(!tls.ca_cert.exists(), "the temp dir is removed on drop");
    }

    /// A plain-text `PING` on `port`: the reply, or an error when the server closes the connection.
    fn plain_ping(port: u16) -> io::Result<String> {
        use std::io::Read;
        let mut stream = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        stream.set_read_timeout(Some(READY_TIMEOUT))?;
        stream.write_all(b"PING\r\n")?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply)?;
        Ok(String::from_utf8_lossy(&reply).trim_end().to_owned())
    }

    fn ping(port: u16) -> String {
        use std::io::Read;
        let mut stream = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
        stream.write_all(b"PING\r\n").expect("write");
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).expect("read");
        String::from_utf8_lossy(&reply).trim_end().to_owned()
    }
}
