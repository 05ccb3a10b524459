//! The baseline of the request path: a raw length-prefixed ping-pong with an echo child of this
//! binary, over a Unix socket or over the child's stdin/stdout pipes.

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::unix::pipe;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use crate::options::{Flavor, MULTI_THREAD_FLAG, RAW_ECHO_FLAG, RAW_PIPE_ECHO_FLAG};
use crate::sampling::{Figures, LatencyLog};
use crate::{BenchResult, IN_FLIGHT, PAYLOAD_LEN, payload};

/// Length of the baseline's frame header.
const HEADER_LEN: usize = 4;
/// Buffer size of the baseline's buffered reader and writer.
const RAW_BUFFER: usize = 64 * 1024;

/// Either end of a baseline connection: a Unix socket's half or a pipe.
type RawReader = BufReader<Box<dyn AsyncRead + Send + Unpin>>;
/// The writing end of a baseline connection.
type RawWriter = BufWriter<Box<dyn AsyncWrite + Send + Unpin>>;

/// The socket baseline's echo server, in its own process. Ends when the driver closes the
/// connection.
pub(crate) async fn raw_echo_server(socket: &Path) -> BenchResult<()> {
    let stream = UnixStream::connect(socket).await?;
    let (reader, writer) = stream.into_split();
    raw_echo_loop(reader, writer).await
}

/// The pipe baseline's echo server, in its own process: reads its stdin and writes its stdout
/// through tokio pipes on duplicates of fds 0 and 1. Ends when the driver closes the child's stdin.
pub(crate) async fn raw_pipe_echo_server() -> BenchResult<()> {
    let reader = pipe::Receiver::from_owned_fd(nix::unistd::dup(io::stdin())?)?;
    let writer = pipe::Sender::from_owned_fd(nix::unistd::dup(io::stdout())?)?;
    raw_echo_loop(reader, writer).await
}

/// Echoes each frame as it is read and flushes when no further request is buffered, until
/// end of input.
async fn raw_echo_loop(reader: impl AsyncRead + Unpin, writer: impl AsyncWrite + Unpin) -> BenchResult<()> {
    let mut reader = BufReader::with_capacity(RAW_BUFFER, reader);
    let mut writer = BufWriter::with_capacity(RAW_BUFFER, writer);
    let mut header = [0u8; HEADER_LEN];
    let mut payload = [0u8; PAYLOAD_LEN];
    loop {
        match reader.read_exact(&mut header).await {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => return Err(err.into()),
        }
        let len = u32::from_le_bytes(header) as usize;
        let body =
            payload.get_mut(..len).ok_or_else(|| format!("raw echo: frame of {len} bytes is too long"))?;
        reader.read_exact(body).await?;
        writer.write_all(&header).await?;
        writer.write_all(body).await?;
        if reader.buffer().is_empty() {
            writer.flush().await?;
        }
    }
}

/// One baseline request frame.
fn raw_frame() -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER_LEN + PAYLOAD_LEN);
    frame.extend_from_slice(&(PAYLOAD_LEN as u32).to_le_bytes());
    frame.extend_from_slice(payload().as_bytes());
    frame
}

/// Reads one echoed frame, checking its length.
async fn read_raw_frame(reader: &mut RawReader, payload: &mut [u8; PAYLOAD_LEN]) -> io::Result<()> {
    let mut header = [0u8; HEADER_LEN];
    reader.read_exact(&mut header).await?;
    let len = u32::from_le_bytes(header) as usize;
    if len != PAYLOAD_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("echo of {len} bytes, expected {PAYLOAD_LEN}"),
        ));
    }
    reader.read_exact(payload).await?;
    Ok(())
}

/// The driver's end of the baseline connection.
pub(crate) struct RawConnection {
    reader: RawReader,
    writer: RawWriter,
}

impl RawConnection {
    fn new(
        reader: impl AsyncRead + Send + Unpin + 'static,
        writer: impl AsyncWrite + Send + Unpin + 'static,
    ) -> Self {
        RawConnection {
            reader: BufReader::with_capacity(RAW_BUFFER, Box::new(reader)),
            writer: BufWriter::with_capacity(RAW_BUFFER, Box::new(writer)),
        }
    }
}

/// What carries a baseline connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawLink {
    /// A Unix socket the child connects to.
    Socket,
    /// The child's stdin and stdout pipes.
    Pipe,
}

/// The baseline's echo child and the connection to it.
pub(crate) struct RawPeer {
    connection: Option<RawConnection>,
    child: tokio::process::Child,
    /// Holds the socket file, if any; removed on drop.
    _dir: Option<tempfile::TempDir>,
}

impl RawPeer {
    /// Starts the echo child (this binary with [`RAW_ECHO_FLAG`] or [`RAW_PIPE_ECHO_FLAG`]) and
    /// connects to it.
    pub(crate) async fn spawn(flavor: Flavor, link: RawLink) -> BenchResult<RawPeer> {
        match link {
            RawLink::Socket => Self::spawn_socket(flavor, &[]).await,
            RawLink::Pipe => Self::spawn_pipe(flavor),
        }
    }

    /// This binary, or `wrapper` with this binary as its last argument (and the echo child's
    /// arguments after it), if `wrapper` is not empty.
    fn echo_command(flavor: Flavor, wrapper: &[OsString]) -> io::Result<tokio::process::Command> {
        let exe = std::env::current_exe()?;
        let mut command = match wrapper.split_first() {
            None => tokio::process::Command::new(exe),
            Some((program, args)) => {
                let mut command = tokio::process::Command::new(program);
                command.args(args).arg(exe);
                command
            }
        };
        command.kill_on_drop(true);
        if flavor == Flavor::MultiThread {
            command.arg(MULTI_THREAD_FLAG);
        }
        Ok(command)
    }

    fn spawn_pipe(flavor: Flavor) -> BenchResult<RawPeer> {
        let mut command = Self::echo_command(flavor, &[])?;
        command.arg(RAW_PIPE_ECHO_FLAG).stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = command.spawn()?;
        let writer = child.stdin.take().ok_or("the raw pipe echo child has no stdin pipe")?;
        let reader = child.stdout.take().ok_or("the raw pipe echo child has no stdout pipe")?;
        Ok(RawPeer { connection: Some(RawConnection::new(reader, writer)), child, _dir: None })
    }

    /// Starts the socket echo child, under `wrapper` if that is not empty (see
    /// [`echo_command`](Self::echo_command)), and connects to it.
    pub(crate) async fn spawn_socket(flavor: Flavor, wrapper: &[OsString]) -> BenchResult<RawPeer> {
        let dir = tempfile::Builder::new().prefix("cy-bench").tempdir()?;
        let socket = dir.path().join("raw.sock");
        let listener = UnixListener::bind(&socket)?;
        let mut command = Self::echo_command(flavor, wrapper)?;
        command.arg(RAW_ECHO_FLAG).arg(&socket).stdin(Stdio::null());
        let mut child = command.spawn()?;
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted?,
            status = child.wait() => return Err(format!("the raw echo child exited before connecting: {}", status?).into()),
            () = tokio::time::sleep(Duration::from_secs(30)) => {
                return Err("the raw echo child did not connect within 30 s".into());
            }
        };
        let (reader, writer) = accepted.0.into_split();
        Ok(RawPeer { connection: Some(RawConnection::new(reader, writer)), child, _dir: Some(dir) })
    }

    fn connection(&mut self) -> BenchResult<&mut RawConnection> {
        self.connection.as_mut().ok_or_else(|| "the raw connection was lost in an earlier measurement".into())
    }

    /// Sequential ping-pong: `warmup` unmeasured round trips, then `iterations` measured ones.
    pub(crate) async fn sequential(&mut self, warmup: u32, iterations: u32) -> BenchResult<Figures> {
        let frame = raw_frame();
        let mut echo = [0u8; PAYLOAD_LEN];
        let RawConnection { reader, writer } = self.connection()?;
        for _ in 0..warmup {
            writer.write_all(&frame).await?;
            writer.flush().await?;
            read_raw_frame(reader, &mut echo).await?;
        }
        let mut log = LatencyLog::new(iterations);
        for _ in 0..iterations {
            let start = Instant::now();
            writer.write_all(&frame).await?;
            writer.flush().await?;
            read_raw_frame(reader, &mut echo).await?;
            log.record(start);
        }
        Ok(log.finish())
    }

    /// Pipelined: [`IN_FLIGHT`] frames outstanding; `warmup` unmeasured frames first.
    pub(crate) async fn pipelined(&mut self, warmup: u32, iterations: u32) -> BenchResult<Figures> {
        let connection =
            self.connection.take().ok_or("the raw connection was lost in an earlier measurement")?;
        let (connection, _) = raw_pipelined_run(connection, warmup).await?;
        let (connection, elapsed) = raw_pipelined_run(connection, iterations).await?;
        self.connection = Some(connection);
        Ok(Figures::throughput(iterations, elapsed))
    }

    /// Closes the connection and waits for the child to exit.
    pub(crate) async fn finish(mut self) -> BenchResult<()> {
        drop(self.connection.take());
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .map_err(|_| "the raw echo child did not exit within 10 s of the connection closing")??;
        if !status.success() {
            return Err(format!("the raw echo child failed: {status}").into());
        }
        Ok(())
    }
}

/// Sends `count` frames with at most [`IN_FLIGHT`] unanswered, from a writer task and a reader
/// task; returns the connection and the time until the last echo arrived.
async fn raw_pipelined_run(connection: RawConnection, count: u32) -> BenchResult<(RawConnection, Duration)> {
    let RawConnection { reader, writer } = connection;
    let window = Arc::new(Semaphore::new(IN_FLIGHT));
    let start = Instant::now();
    let send = tokio::spawn(raw_send_frames(writer, Arc::clone(&window), count));
    let receive = tokio::spawn(raw_receive_frames(reader, window, count));
    let reader = receive.await??;
    let elapsed = start.elapsed();
    let writer = send.await??;
    Ok((RawConnection { reader, writer }, elapsed))
}

async fn raw_send_frames(mut writer: RawWriter, window: Arc<Semaphore>, count: u32) -> io::Result<RawWriter> {
    let frame = raw_frame();
    for _ in 0..count {
        match window.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(_) => {
                // The window is full: let the queued frames go, then wait for an echo.
                writer.flush().await?;
                window.acquire().await.map_err(io::Error::other)?.forget();
            }
        }
        writer.write_all(&frame).await?;
    }
    writer.flush().await?;
    Ok(writer)
}

async fn raw_receive_frames(
    mut reader: RawReader,
    window: Arc<Semaphore>,
    count: u32,
) -> io::Result<RawReader> {
    let mut echo = [0u8; PAYLOAD_LEN];
    for _ in 0..count {
        read_raw_frame(&mut reader, &mut echo).await?;
        window.add_permits(1);
    }
    Ok(reader)
}
