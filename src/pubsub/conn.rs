//! The subscriber's own connection: a socket the subscriber thread reads with a short timeout
//! and writes between reads.
//!
//! The `redis` crate's sync `Connection` cannot serve here: after a read timeout it skips the
//! next reply it reads (so a `PING` answer or an error reply would vanish), and its `PubSub`
//! hides subscribe confirmations. So the subscriber opens its own socket (TCP, TLS through
//! `native-tls`, or a unix socket), does the handshake itself (`HELLO 3` or `AUTH`, `CLIENT
//! SETNAME`) and parses with the `redis` crate's own [`redis::Parser`], which keeps a partly
//! read frame across timeouts.

use std::io::{self, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use redis::{ErrorKind, RedisError, Value};

use crate::config::{Addr, Config, Protocol};
use crate::error::{Delivery, Error, Result};

/// The socket under the connection.
enum Stream {
    Tcp(TcpStream),
    Tls(Box<native_tls::TlsStream<TcpStream>>),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixStream),
}

impl Stream {
    fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(d),
            Stream::Tls(s) => s.get_ref().set_read_timeout(d),
            #[cfg(unix)]
            Stream::Unix(s) => s.set_read_timeout(d),
        }
    }

    fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(d),
            Stream::Tls(s) => s.get_ref().set_write_timeout(d),
            #[cfg(unix)]
            Stream::Unix(s) => s.set_write_timeout(d),
        }
    }

    /// Closes both directions now (the peer sees the connection end at once).
    fn shutdown(&mut self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Tls(s) => {
                let _ = s.shutdown();
                s.get_ref().shutdown(std::net::Shutdown::Both)
            }
            #[cfg(unix)]
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
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

/// How much the reader buffers: messages arrive in bursts.
const READ_BUFFER: usize = 64 * 1024;

/// A subscriber connection.
pub(crate) struct Conn {
    reader: BufReader<Stream>,
    parser: redis::Parser,
    tick: Duration,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

fn io_err(e: io::Error) -> Error {
    Error::from_redis(RedisError::from(e), Delivery::NotSent)
}

fn timed_out(what: &str) -> Error {
    Error::io(
        io::ErrorKind::TimedOut,
        format!("{what} timed out"),
        Delivery::NotSent,
    )
}

impl Conn {
    /// Connects to `addr` (`config.addr`, or a cluster node) with every setting of `config`,
    /// authenticates and names the connection, all within the connect timeout. Afterwards
    /// reads wait at most `tick` (see [`Conn::read`]).
    pub(crate) fn open_at(config: &Config, addr: &Addr, tick: Duration) -> Result<Conn> {
        let t = &config.timeouts;
        let deadline = Instant::now() + t.connect;
        let stream = connect(config, addr, deadline)?;
        stream.set_write_timeout(Some(t.write)).map_err(io_err)?;
        let mut conn = Conn {
            reader: BufReader::with_capacity(READ_BUFFER, stream),
            parser: redis::Parser::new(),
            tick,
        };
        conn.handshake(config, deadline)?;
        conn.reader
            .get_ref()
            .set_read_timeout(Some(tick))
            .map_err(io_err)?;
        Ok(conn)
    }

    fn handshake(&mut self, config: &Config, deadline: Instant) -> Result<()> {
        let mut setup = Vec::new();
        match config.protocol {
            Protocol::Resp3 => {
                let mut hello = redis::cmd("HELLO");
                hello.arg(3);
                if let Some(password) = &config.password {
                    hello
                        .arg("AUTH")
                        .arg(config.username.as_deref().unwrap_or("default"))
                        .arg(password.expose());
                }
                setup.push(hello);
            }
            Protocol::Resp2 => {
                if let Some(password) = &config.password {
                    let mut auth = redis::cmd("AUTH");
                    if let Some(user) = &config.username {
                        auth.arg(user);
                    }
                    auth.arg(password.expose());
                    setup.push(auth);
                }
            }
        }
        if let Some(name) = &config.client_name {
            setup.push(redis::cmd("CLIENT").arg("SETNAME").arg(name).clone());
        }
        if setup.is_empty() {
            // Nothing to set up: a PING proves the server answers before we call it connected.
            setup.push(redis::cmd("PING"));
        }
        for cmd in &setup {
            self.send(cmd)?;
        }
        for _ in &setup {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(timed_out("connection set-up"));
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(remaining))
                .map_err(io_err)?;
            match self.read_value() {
                Ok(Some(Value::ServerError(e))) => {
                    return Err(Error::from_redis(e.into(), Delivery::NotSent));
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err(timed_out("connection set-up")),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends one command (buffered writes are flushed at once).
    pub(crate) fn send(&mut self, cmd: &redis::Cmd) -> Result<()> {
        let packed = cmd.get_packed_command();
        let stream = self.reader.get_mut();
        stream
            .write_all(&packed)
            .and_then(|()| stream.flush())
            .map_err(|e| Error::from_redis(RedisError::from(e), Delivery::Unknown))
    }

    /// Reads one frame: `Ok(None)` when nothing complete arrived within the tick (a partly
    /// read frame is kept for the next call). An error means the connection is unusable.
    pub(crate) fn read(&mut self) -> Result<Option<Value>> {
        self.read_value()
    }

    fn read_value(&mut self) -> Result<Option<Value>> {
        match self.parser.parse_value(&mut self.reader) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                if e.is_timeout() {
                    return Ok(None);
                }
                if e.kind() == ErrorKind::Parse {
                    return Err(Error::from_wire(e, Delivery::NotSent));
                }
                Err(Error::from_redis(e, Delivery::NotSent))
            }
        }
    }

    /// The read timeout between control checks.
    pub(crate) fn tick(&self) -> Duration {
        self.tick
    }

    /// Changes the read timeout (the subscriber thread shares its tick among its
    /// connections).
    pub(crate) fn set_tick(&mut self, tick: Duration) -> Result<()> {
        if tick != self.tick {
            self.reader
                .get_ref()
                .set_read_timeout(Some(tick))
                .map_err(io_err)?;
            self.tick = tick;
        }
        Ok(())
    }

    /// Closes the socket now.
    pub(crate) fn close(mut self) {
        self.reader.get_mut().shutdown();
    }
}

fn connect(config: &Config, addr: &Addr, deadline: Instant) -> Result<Stream> {
    match addr {
        Addr::Tcp { host, port } => {
            let tcp = connect_tcp(host, *port, config, deadline)?;
            match &config.tls {
                None => Ok(Stream::Tcp(tcp)),
                Some(tls) => {
                    let mut builder = native_tls::TlsConnector::builder();
                    if tls.insecure {
                        builder
                            .danger_accept_invalid_certs(true)
                            .danger_accept_invalid_hostnames(true);
                    }
                    if let Some(ca) = &tls.ca_pem {
                        let cert = native_tls::Certificate::from_pem(ca).map_err(tls_err)?;
                        builder.disable_built_in_roots(true);
                        builder.add_root_certificate(cert);
                    }
                    if let (Some(cert), Some(key)) = (&tls.client_cert_pem, &tls.client_key_pem) {
                        let id = native_tls::Identity::from_pkcs8(cert, key).map_err(tls_err)?;
                        builder.identity(id);
                    }
                    let connector = builder.build().map_err(tls_err)?;
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        return Err(timed_out("TLS handshake"));
                    }
                    tcp.set_read_timeout(Some(remaining)).map_err(io_err)?;
                    tcp.set_write_timeout(Some(remaining)).map_err(io_err)?;
                    match connector.connect(host, tcp) {
                        Ok(s) => Ok(Stream::Tls(Box::new(s))),
                        // Reported the way the `redis` crate reports it, so both
                        // classify alike (`ErrorClass::Tls`).
                        Err(native_tls::HandshakeError::Failure(e)) => Err(Error::from_redis(
                            RedisError::from((ErrorKind::Io, "SSL Handshake error", e.to_string())),
                            Delivery::NotSent,
                        )),
                        Err(native_tls::HandshakeError::WouldBlock(_)) => {
                            Err(timed_out("TLS handshake"))
                        }
                    }
                }
            }
        }
        #[cfg(unix)]
        Addr::Unix(path) => {
            let s = std::os::unix::net::UnixStream::connect(path).map_err(io_err)?;
            Ok(Stream::Unix(s))
        }
        #[cfg(not(unix))]
        Addr::Unix(_) => Err(Error::config(
            "addr",
            "unix sockets are not supported on this platform",
        )),
    }
}

fn tls_err(e: native_tls::Error) -> Error {
    Error::from_redis(RedisError::from(e), Delivery::NotSent)
}

fn connect_tcp(host: &str, port: u16, config: &Config, deadline: Instant) -> Result<TcpStream> {
    let addrs = (host, port).to_socket_addrs().map_err(io_err)?;
    let mut last = None;
    for addr in addrs {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&addr, remaining) {
            Ok(s) => {
                s.set_nodelay(true).map_err(io_err)?;
                if let Some(keepalive) = crate::pool::tcp_settings(config).keepalive() {
                    redis::io::tcp::socket2::SockRef::from(&s)
                        .set_tcp_keepalive(keepalive)
                        .map_err(io_err)?;
                }
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => io_err(e),
        None if Instant::now() >= deadline => timed_out("connect"),
        None => io_err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolved to no address"),
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its chunks one per call and times out between them.
    struct Chunks {
        chunks: Vec<Vec<u8>>,
        timeout_next: bool,
    }

    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.timeout_next {
                self.timeout_next = false;
                return Err(io::Error::new(io::ErrorKind::WouldBlock, "tick"));
            }
            if self.chunks.is_empty() {
                return Err(io::Error::new(io::ErrorKind::WouldBlock, "tick"));
            }
            self.timeout_next = true;
            let chunk = self.chunks.remove(0);
            buf[..chunk.len()].copy_from_slice(&chunk);
            Ok(chunk.len())
        }
    }

    #[test]
    fn a_frame_split_by_timeouts_parses_whole() {
        let frame = b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$11\r\nhello world\r\n";
        let mut reader = Chunks {
            chunks: frame.chunks(5).map(<[u8]>::to_vec).collect(),
            timeout_next: false,
        };
        let mut parser = redis::Parser::new();
        let mut timeouts = 0;
        let value = loop {
            match parser.parse_value(&mut reader) {
                Ok(v) => break v,
                Err(e) if e.is_timeout() => timeouts += 1,
                Err(e) => panic!("unexpected error: {e}"),
            }
        };
        assert!(timeouts > 3, "the frame arrived in pieces");
        assert_eq!(
            value,
            Value::Array(vec![
                Value::BulkString(b"message".to_vec()),
                Value::BulkString(b"news".to_vec()),
                Value::BulkString(b"hello world".to_vec()),
            ])
        );
    }
}
