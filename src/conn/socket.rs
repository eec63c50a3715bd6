//! Sockets with deadlines: TCP, TLS and unix streams whose every read and write waits at most
//! the time left before an absolute deadline, however the peer sends (nothing at all, or a
//! byte at a time).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::config::{Addr, Config};
use crate::error::{Delivery, Error, Result};
use crate::util::time;

/// A socket whose timeouts can be set (TCP or unix).
pub(crate) trait RawSocket: Read + Write + Send {
    fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()>;
    fn shutdown(&self);
}

impl RawSocket for TcpStream {
    fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, d)
    }
    fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, d)
    }
    fn shutdown(&self) {
        let _ = TcpStream::shutdown(self, std::net::Shutdown::Both);
    }
}

#[cfg(unix)]
impl RawSocket for std::os::unix::net::UnixStream {
    fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, d)
    }
    fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_write_timeout(self, d)
    }
    fn shutdown(&self) {
        let _ = std::os::unix::net::UnixStream::shutdown(self, std::net::Shutdown::Both);
    }
}

/// How much later than its deadline a read may end because the socket's timeout was set
/// for an earlier moment (saves a `setsockopt` per call).
const SLACK: Duration = Duration::from_millis(1);

/// What one direction's socket timeout was last set to (`valid == false`: unknown, set it
/// before the next call).
#[derive(Debug, Clone, Copy, Default)]
struct Armed {
    timeout: Option<Duration>,
    valid: bool,
}

/// A socket that enforces deadlines: before each read or write its timeout is set to the
/// time left (unless the one already set ends no later than the deadline plus [`SLACK`]); a
/// timeout that fires early is retried with the time left; once the deadline has passed the
/// call fails with [`io::ErrorKind::TimedOut`]. Reads also count against a byte budget (the
/// cap on one reply's size).
pub(crate) struct Timed<S> {
    inner: S,
    read_deadline: Option<Instant>,
    write_deadline: Option<Instant>,
    read_armed: Armed,
    write_armed: Armed,
    /// Bytes the current reply may still take; `None`: no cap.
    budget: Option<u64>,
    /// Whether the budget ran out (a typed error, not a broken socket).
    over_budget: bool,
}

impl<S: RawSocket> Timed<S> {
    pub(crate) fn new(inner: S) -> Timed<S> {
        Timed {
            inner,
            read_deadline: None,
            write_deadline: None,
            read_armed: Armed::default(),
            write_armed: Armed::default(),
            budget: None,
            over_budget: false,
        }
    }

    pub(crate) fn set_read_deadline(&mut self, d: Option<Instant>) {
        self.read_deadline = d;
    }

    pub(crate) fn set_write_deadline(&mut self, d: Option<Instant>) {
        self.write_deadline = d;
    }

    pub(crate) fn set_budget(&mut self, bytes: Option<u64>) {
        self.budget = bytes;
        self.over_budget = false;
    }

    pub(crate) fn over_budget(&self) -> bool {
        self.over_budget
    }

    pub(crate) fn shutdown(&self) {
        self.inner.shutdown();
    }

    /// Arms one direction for `deadline`: `Err(TimedOut)` when it has passed.
    fn arm(inner: &S, armed: &mut Armed, deadline: Option<Instant>, read: bool) -> io::Result<()> {
        let want = match deadline {
            None => None,
            Some(d) => {
                let left = time::left(d);
                if left.is_zero() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
                }
                Some(left)
            }
        };
        // Keep the timeout already set when a read started now ends by the deadline (plus
        // the slack) and does not wake up much too early.
        let keep = armed.valid
            && match (armed.timeout, want) {
                (None, None) => true,
                (Some(set), Some(left)) => set <= left + SLACK && set * 2 >= left,
                _ => false,
            };
        if !keep {
            // A zero timeout means "block forever" to the OS: never pass one.
            let t = want.map(|d| d.max(Duration::from_micros(100)));
            if read {
                inner.set_read_timeout(t)?;
            } else {
                inner.set_write_timeout(t)?;
            }
            armed.timeout = t;
            armed.valid = true;
        }
        Ok(())
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl<S: RawSocket> Read for Timed<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.over_budget {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply too large",
            ));
        }
        loop {
            Self::arm(&self.inner, &mut self.read_armed, self.read_deadline, true)?;
            match self.inner.read(buf) {
                Ok(n) => {
                    if let Some(b) = &mut self.budget {
                        match b.checked_sub(n as u64) {
                            Some(rest) => *b = rest,
                            None => {
                                self.over_budget = true;
                                return Err(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    "reply too large",
                                ));
                            }
                        }
                    }
                    return Ok(n);
                }
                Err(e) if is_timeout(&e) => {
                    // Early (a timeout set for a shorter wait) or final: `arm` tells.
                    self.read_armed.valid = false;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl<S: RawSocket> Write for Timed<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            Self::arm(
                &self.inner,
                &mut self.write_armed,
                self.write_deadline,
                false,
            )?;
            match self.inner.write(buf) {
                Ok(n) => return Ok(n),
                Err(e) if is_timeout(&e) => {
                    self.write_armed.valid = false;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A TLS session over a [`Timed`] TCP socket (the backend stays behind this trait).
pub(crate) trait TlsIo: Read + Write + Send {
    fn timed(&mut self) -> &mut Timed<TcpStream>;
    fn timed_ref(&self) -> &Timed<TcpStream>;
    /// Sends the TLS close notification (best effort, never blocks past the deadline set).
    fn close_notify(&mut self);
}

/// The byte stream under a connection.
pub(crate) enum Stream {
    Tcp(Timed<TcpStream>),
    Tls(Box<dyn TlsIo>),
    #[cfg(unix)]
    Unix(Timed<std::os::unix::net::UnixStream>),
}

/// Runs `$body` with `$t` bound to the stream's [`Timed`] layer.
macro_rules! with_timed {
    ($stream:expr, $t:ident => $body:expr) => {
        match $stream {
            Stream::Tcp($t) => $body,
            Stream::Tls(s) => {
                let $t = s.timed();
                $body
            }
            #[cfg(unix)]
            Stream::Unix($t) => $body,
        }
    };
}

/// The write half of a plain (TCP or unix) stream, for a writer on another thread than the
/// reader; every write waits at most the time left before its deadline.
pub(crate) enum WriteHalf {
    Tcp(Timed<TcpStream>),
    #[cfg(unix)]
    Unix(Timed<std::os::unix::net::UnixStream>),
}

impl WriteHalf {
    /// Writes all of `buf` by `deadline`: `Err((bytes written, error))` otherwise.
    pub(crate) fn write_all_by(
        &mut self,
        buf: &[u8],
        deadline: Instant,
    ) -> std::result::Result<(), (usize, io::Error)> {
        let w: &mut dyn Write = match self {
            WriteHalf::Tcp(t) => {
                t.set_write_deadline(Some(deadline));
                t
            }
            #[cfg(unix)]
            WriteHalf::Unix(t) => {
                t.set_write_deadline(Some(deadline));
                t
            }
        };
        let mut written = 0;
        while written < buf.len() {
            match w.write(&buf[written..]) {
                Ok(0) => return Err((written, io::Error::from(io::ErrorKind::WriteZero))),
                Ok(n) => written += n,
                Err(e) => return Err((written, e)),
            }
        }
        Ok(())
    }
}

/// A second handle on a connection's socket that closes it from another thread: a read or
/// write blocked on it returns at once with an error.
#[derive(Debug)]
pub(crate) enum Interrupter {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixStream),
    None,
}

impl Interrupter {
    /// Shuts the socket down (both directions).
    pub(crate) fn interrupt(&self) {
        match self {
            Interrupter::Tcp(s) => {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
            #[cfg(unix)]
            Interrupter::Unix(s) => {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
            Interrupter::None => {}
        }
    }
}

impl Stream {
    /// A write half on its own socket handle (TCP and unix; `None` for TLS, whose session
    /// cannot be split).
    pub(crate) fn write_half(&mut self) -> Option<WriteHalf> {
        match self {
            Stream::Tcp(t) => t
                .inner
                .try_clone()
                .ok()
                .map(|s| WriteHalf::Tcp(Timed::new(s))),
            Stream::Tls(_) => None,
            #[cfg(unix)]
            Stream::Unix(t) => t
                .inner
                .try_clone()
                .ok()
                .map(|s| WriteHalf::Unix(Timed::new(s))),
        }
    }

    /// A handle that can close this stream's socket from another thread.
    pub(crate) fn interrupter(&mut self) -> Interrupter {
        match self {
            Stream::Tcp(t) => t
                .inner
                .try_clone()
                .map_or(Interrupter::None, Interrupter::Tcp),
            Stream::Tls(s) => s
                .timed()
                .inner
                .try_clone()
                .map_or(Interrupter::None, Interrupter::Tcp),
            #[cfg(unix)]
            Stream::Unix(t) => t
                .inner
                .try_clone()
                .map_or(Interrupter::None, Interrupter::Unix),
        }
    }

    pub(crate) fn set_read_deadline(&mut self, d: Option<Instant>) {
        with_timed!(self, t => t.set_read_deadline(d))
    }

    pub(crate) fn set_write_deadline(&mut self, d: Option<Instant>) {
        with_timed!(self, t => t.set_write_deadline(d))
    }

    pub(crate) fn set_budget(&mut self, bytes: Option<u64>) {
        with_timed!(self, t => t.set_budget(bytes))
    }

    pub(crate) fn over_budget(&self) -> bool {
        match self {
            Stream::Tcp(t) => t.over_budget(),
            Stream::Tls(s) => s.timed_ref().over_budget(),
            #[cfg(unix)]
            Stream::Unix(t) => t.over_budget(),
        }
    }

    /// Closes both directions now (the peer sees the connection end at once).
    pub(crate) fn shutdown(&mut self) {
        match self {
            Stream::Tcp(t) => t.shutdown(),
            Stream::Tls(s) => {
                // The close notification must not wait on a peer that does not read.
                s.timed()
                    .set_write_deadline(Some(time::after(Duration::from_millis(5))));
                s.close_notify();
                s.timed().shutdown();
            }
            #[cfg(unix)]
            Stream::Unix(t) => t.shutdown(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
            #[cfg(unix)]
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// An I/O error at `addr`, classified by its kind.
pub(crate) fn io_error(addr: &Addr, what: &str, e: &io::Error, delivery: Delivery) -> Error {
    let kind = if e.kind() == io::ErrorKind::WouldBlock {
        io::ErrorKind::TimedOut
    } else {
        e.kind()
    };
    Error::io(kind, format!("{what} {addr}: {e}"), delivery)
}

fn timed_out(addr: &Addr, what: &str) -> Error {
    Error::io(
        io::ErrorKind::TimedOut,
        format!("{what} {addr} timed out"),
        Delivery::NotSent,
    )
}

/// Resolves `host`, by `deadline`: an IP address at once, a name on a short-lived thread
/// (the system resolver has no timeout of its own).
fn resolve(host: &str, port: u16, addr: &Addr, deadline: Instant) -> Result<Vec<SocketAddr>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = crossbeam_channel::bounded(1);
    let name = host.to_owned();
    std::thread::Builder::new()
        .name("redkit-dns".into())
        .spawn(move || {
            let _ = tx.send((name.as_str(), port).to_socket_addrs().map(Vec::from_iter));
        })
        .map_err(|e| io_error(addr, "cannot resolve", &e, Delivery::NotSent))?;
    match rx.recv_deadline(deadline) {
        Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
        Ok(Ok(_)) => Err(Error::io(
            io::ErrorKind::NotFound,
            format!("{host} resolved to no address"),
            Delivery::NotSent,
        )),
        Ok(Err(e)) => Err(io_error(addr, "cannot resolve", &e, Delivery::NotSent)),
        Err(_) => Err(timed_out(addr, "resolving")),
    }
}

/// Opens a TCP connection to `host:port` by `deadline`, with `TCP_NODELAY` and the config's
/// keepalive.
pub(crate) fn connect_tcp(
    host: &str,
    port: u16,
    addr: &Addr,
    config: &Config,
    deadline: Instant,
) -> Result<TcpStream> {
    let addrs = resolve(host, port, addr, deadline)?;
    let mut last = None;
    for sa in addrs {
        let left = time::left(deadline);
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&sa, left) {
            Ok(s) => {
                s.set_nodelay(true)
                    .map_err(|e| io_error(addr, "cannot set up", &e, Delivery::NotSent))?;
                if let Some(idle) = config.tcp_keepalive {
                    set_keepalive(&s, idle)
                        .map_err(|e| io_error(addr, "cannot set up", &e, Delivery::NotSent))?;
                }
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) if is_timeout(&e) => timed_out(addr, "connecting to"),
        Some(e) => io_error(addr, "cannot connect to", &e, Delivery::NotSent),
        None => timed_out(addr, "connecting to"),
    })
}

/// TCP keepalive: first probe after `idle` of silence, then every `idle / 3` (at least 1 s),
/// 3 probes.
fn set_keepalive(s: &TcpStream, idle: Duration) -> io::Result<()> {
    use redis::io::tcp::socket2::{SockRef, TcpKeepalive};
    let keepalive = TcpKeepalive::new().with_time(idle);
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        windows
    ))]
    let keepalive = keepalive.with_interval((idle / 3).max(Duration::from_secs(1)));
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos"))]
    let keepalive = keepalive.with_retries(3);
    SockRef::from(s).set_tcp_keepalive(&keepalive)
}

/// Opens a unix socket by `deadline` (a local connect does not wait on the network; the
/// deadline bounds everything after it).
#[cfg(unix)]
pub(crate) fn connect_unix(
    path: &std::path::Path,
    addr: &Addr,
) -> Result<std::os::unix::net::UnixStream> {
    std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| io_error(addr, "cannot connect to", &e, Delivery::NotSent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_silent_peer_times_out_by_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (_peer, _) = listener.accept().expect("accept");
        let mut t = Timed::new(s);
        let start = Instant::now();
        t.set_read_deadline(Some(start + Duration::from_millis(50)));
        let mut buf = [0u8; 16];
        let e = t.read(&mut buf).expect_err("times out");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(49), "{took:?}");
        assert!(took < Duration::from_millis(500), "{took:?}");
    }

    #[test]
    fn a_dripping_peer_times_out_by_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (mut peer, _) = listener.accept().expect("accept");
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let drip = std::thread::spawn(move || {
            while stop_rx.recv_timeout(Duration::from_millis(5))
                == Err(crossbeam_channel::RecvTimeoutError::Timeout)
            {
                if peer.write_all(b"x").is_err() {
                    return;
                }
            }
        });
        let mut t = Timed::new(s);
        let start = Instant::now();
        t.set_read_deadline(Some(start + Duration::from_millis(100)));
        let mut buf = [0u8; 16];
        let mut got = 0;
        let e = loop {
            match t.read(&mut buf) {
                Ok(n) => got += n,
                Err(e) => break e,
            }
        };
        assert!(got > 0, "the drip arrived");
        drop(stop_tx);
        drip.join().expect("drip thread");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(
            start.elapsed() < Duration::from_millis(150),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn the_budget_caps_what_is_read() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (mut peer, _) = listener.accept().expect("accept");
        peer.write_all(&[b'x'; 100]).expect("write");
        let mut t = Timed::new(s);
        t.set_read_deadline(Some(Instant::now() + Duration::from_secs(5)));
        t.set_budget(Some(10));
        let mut buf = [0u8; 100];
        let mut got = 0;
        let e = loop {
            match t.read(&mut buf[..4]) {
                Ok(n) => got += n,
                Err(e) => break e,
            }
        };
        assert!(t.over_budget());
        assert!(got <= 10, "{got}");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
