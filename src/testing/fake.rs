//! A hostile fake server: it speaks just enough RESP to accept connections and read
//! commands, then answers each command the way the test says (slowly, a byte at a time,
//! never, with garbage, or with a reply that never ends).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use super::TestingError;

/// What the fake server does with one command.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Action {
    /// Sends these bytes at once.
    Reply(Vec<u8>),
    /// Sends these bytes one at a time, `every` apart.
    Drip {
        /// The reply.
        bytes: Vec<u8>,
        /// The pause before each byte.
        every: Duration,
    },
    /// Sends nothing (and keeps reading).
    Silent,
    /// Sends `prefix`, then `chunk` over and over, `every` apart, until the client goes away:
    /// a reply that never ends.
    Endless {
        /// The start of the reply.
        prefix: Vec<u8>,
        /// What follows, forever.
        chunk: Vec<u8>,
        /// The pause between chunks.
        every: Duration,
    },
    /// Closes the connection.
    Close,
}

impl Action {
    /// The answer a real server would give to the connection set-up commands (`HELLO`,
    /// `AUTH`, `SELECT`, `CLIENT ...`, `PING`); `None` for anything else.
    pub fn handshake(cmd: &[Vec<u8>]) -> Option<Action> {
        let name = cmd.first()?.to_ascii_uppercase();
        let reply: &[u8] = match name.as_slice() {
            b"HELLO" => b"*6\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n$5\r\nproto\r\n:2\r\n",
            b"AUTH" | b"SELECT" | b"CLIENT" => b"+OK\r\n",
            b"PING" => b"+PONG\r\n",
            _ => return None,
        };
        Some(Action::Reply(reply.to_vec()))
    }
}

type Script = dyn Fn(&[Vec<u8>]) -> Action + Send + Sync;

/// A fake server on a free loopback port that answers each command as `script` says.
/// Dropping it stops every thread and closes every connection.
///
/// ```no_run
/// use std::time::Duration;
/// use redkit::testing::{Action, FakeServer};
///
/// // Connection set-up works; every command's reply then drips a byte every 5 ms.
/// let fake = FakeServer::start(|cmd| {
///     Action::handshake(cmd).unwrap_or(Action::Drip {
///         bytes: b"+OK\r\n".to_vec(),
///         every: Duration::from_millis(5),
///     })
/// })?;
/// let url = fake.url();
/// # Ok::<(), redkit::testing::TestingError>(())
/// ```
pub struct FakeServer {
    port: u16,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: Option<JoinHandle<()>>,
    accepted: Arc<AtomicU64>,
}

impl std::fmt::Debug for FakeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeServer")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl FakeServer {
    /// Starts the server.
    pub fn start(
        script: impl Fn(&[Vec<u8>]) -> Action + Send + Sync + 'static,
    ) -> Result<FakeServer, TestingError> {
        let io_err = |context: &str| {
            let context = context.to_owned();
            move |source| TestingError::Io { context, source }
        };
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("bind"))?;
        let port = listener.local_addr().map_err(io_err("local_addr"))?.port();
        listener
            .set_nonblocking(true)
            .map_err(io_err("set_nonblocking"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let threads: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicU64::new(0));
        let script: Arc<Script> = Arc::new(script);
        let accept = {
            let (stop, streams, threads, accepted) = (
                stop.clone(),
                streams.clone(),
                threads.clone(),
                accepted.clone(),
            );
            std::thread::Builder::new()
                .name("redkit-fake".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        match listener.accept() {
                            Ok((s, _)) => {
                                accepted.fetch_add(1, Ordering::Relaxed);
                                let _ = s.set_nonblocking(false);
                                let _ = s.set_nodelay(true);
                                if let Ok(clone) = s.try_clone() {
                                    streams.lock().push(clone);
                                }
                                let (stop, script) = (stop.clone(), script.clone());
                                let t = std::thread::Builder::new()
                                    .name("redkit-fake-c".into())
                                    .spawn(move || serve(s, &*script, &stop));
                                if let Ok(t) = t {
                                    threads.lock().push(t);
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                std::thread::sleep(Duration::from_millis(2));
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(2)),
                        }
                    }
                })
                .map_err(io_err("spawn"))?
        };
        Ok(FakeServer {
            port,
            stop,
            streams,
            threads,
            accept: Some(accept),
            accepted,
        })
    }

    /// The port it listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// How many connections it accepted.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for s in self.streams.lock().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let threads: Vec<_> = self.threads.lock().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Sleeps `d` in small steps; `false` when asked to stop meanwhile.
fn pause(d: Duration, stop: &AtomicBool) -> bool {
    let step = Duration::from_millis(5);
    let mut left = d;
    while !left.is_zero() {
        if stop.load(Ordering::Acquire) {
            return false;
        }
        let now = left.min(step);
        std::thread::sleep(now);
        left -= now;
    }
    !stop.load(Ordering::Acquire)
}

fn serve(mut s: TcpStream, script: &Script, stop: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while !stop.load(Ordering::Acquire) {
        // Every complete command in the buffer.
        while let Some((cmd, used)) = parse_command(&buf) {
            buf.drain(..used);
            if !act(&mut s, script(&cmd), stop) {
                return;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// One packed command at the start of `buf` (`*N\r\n$len\r\narg\r\n...`): its arguments
/// and how many bytes it took; `None` while incomplete (or not a command).
fn parse_command(buf: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    fn header(b: &[u8], at: usize, marker: u8) -> Option<(usize, usize)> {
        if *b.get(at)? != marker {
            return None;
        }
        let nl = at + b.get(at..)?.iter().position(|&c| c == b'\n')?;
        let n = std::str::from_utf8(b.get(at + 1..nl.checked_sub(1)?)?)
            .ok()?
            .parse()
            .ok()?;
        Some((n, nl + 1))
    }
    let (count, mut at) = header(buf, 0, b'*')?;
    let mut args = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let (len, start) = header(buf, at, b'$')?;
        args.push(buf.get(start..start + len)?.to_vec());
        at = start + len + 2;
        if at > buf.len() {
            return None;
        }
    }
    Some((args, at))
}

/// Carries out one action; `false` when the connection is done.
fn act(s: &mut TcpStream, action: Action, stop: &AtomicBool) -> bool {
    match action {
        Action::Reply(bytes) => s.write_all(&bytes).is_ok(),
        Action::Drip { bytes, every } => {
            for b in bytes {
                if !pause(every, stop) || s.write_all(&[b]).is_err() {
                    return false;
                }
            }
            true
        }
        Action::Silent => true,
        Action::Endless {
            prefix,
            chunk,
            every,
        } => {
            if s.write_all(&prefix).is_err() {
                return false;
            }
            loop {
                if !pause(every, stop) || s.write_all(&chunk).is_err() {
                    return false;
                }
            }
        }
        Action::Close => {
            let _ = s.shutdown(Shutdown::Both);
            false
        }
    }
}
