//! One connection to one server: a deadline-driven socket, the handshake, packed commands
//! out, frames in (parsed with the `redis` crate's own [`redis::Parser`]).

use std::io::{self, BufReader, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{ConnectionLike, RedisError, Value};

use super::socket::{self, Stream, Timed};
use super::tls::TlsConnector;
use crate::config::{Addr, Config, Protocol};
use crate::error::{Delivery, Error, Result};
use crate::util::time;

/// How much a connection buffers when reading (the parser reads 8 KiB at a time from it):
/// 16 KiB per connection, held by every pooled connection for its life.
const READ_BUFFER: usize = 16 * 1024;

/// Opens connections with every setting of one config: TLS (parsed once), credentials,
/// database, protocol, client name, timeouts. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Connector {
    inner: Arc<ConnectorInner>,
}

struct ConnectorInner {
    config: Config,
    tls: Option<TlsConnector>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("addr", &self.inner.config.addr)
            .field("tls", &self.inner.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// What the server said about itself in the handshake (`HELLO`'s `server` and `version`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Hello {
    /// `redis` or `valkey`; empty when the server did not say (no `HELLO`).
    pub(crate) server: String,
    /// Its version, such as `7.0.15`; empty when unknown.
    pub(crate) version: String,
}

impl Connector {
    /// A connector for `config` (its TLS material is parsed here: a bad certificate or key
    /// is a typed error now, not at the first connection).
    pub(crate) fn new(config: &Config) -> Result<Connector> {
        let tls = match &config.tls {
            Some(tls) => Some(TlsConnector::new(tls)?),
            None => None,
        };
        Ok(Connector {
            inner: Arc::new(ConnectorInner {
                config: config.clone(),
                tls,
            }),
        })
    }

    /// The config connections are opened with.
    pub(crate) fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Opens a connection to the config's address within the connect timeout.
    pub(crate) fn open_default(&self) -> Result<Connection> {
        self.open(&self.inner.config.addr)
    }

    /// Opens a connection to `addr` (the config's address, a master found through Sentinel,
    /// a cluster node) within the connect timeout.
    pub(crate) fn open(&self, addr: &Addr) -> Result<Connection> {
        self.open_by(addr, time::after(self.inner.config.timeouts.connect))
    }

    /// Opens a connection to `addr`: connect, TLS and handshake all end by `deadline`.
    pub(crate) fn open_by(&self, addr: &Addr, deadline: Instant) -> Result<Connection> {
        let config = &self.inner.config;
        let stream = match addr {
            Addr::Tcp { host, port } => {
                let tcp = socket::connect_tcp(host, *port, addr, config, deadline)?;
                let timed = Timed::new(tcp);
                match &self.inner.tls {
                    None => Stream::Tcp(timed),
                    Some(tls) => Stream::Tls(tls.connect(host, timed, addr, deadline)?),
                }
            }
            #[cfg(unix)]
            Addr::Unix(path) => Stream::Unix(Timed::new(socket::connect_unix(path, addr)?)),
            #[cfg(not(unix))]
            Addr::Unix(_) => {
                return Err(Error::config(
                    "addr",
                    "unix sockets are not supported on this platform",
                ))
            }
        };
        let mut conn = Connection {
            io: BufReader::with_capacity(READ_BUFFER, stream),
            parser: redis::Parser::new(),
            addr: addr.clone(),
            db: config.db,
            response: Some(config.timeouts.response),
            write: config.timeouts.write,
            max_reply: config.max_reply_size,
            max_value: config.max_value_size,
            broken: false,
            hello: Hello::default(),
        };
        conn.handshake(config, deadline)?;
        Ok(conn)
    }
}

/// A connection: its socket, its parser and the settings of its calls.
///
/// Every call takes an optional *cap*, an absolute moment it must end by whatever the server
/// does; within it the write gets the write timeout and the reply the response timeout, each
/// as a whole (a pipeline's replies share one response timeout). A call that fails with the
/// connection in an unknown state (a timeout, a broken or corrupt stream, a reply over the
/// size cap) closes the connection: it is never used out of sync.
pub(crate) struct Connection {
    io: BufReader<Stream>,
    parser: redis::Parser,
    addr: Addr,
    db: i64,
    /// How long a reply may take (`None`: forever, for blocking commands).
    response: Option<Duration>,
    write: Duration,
    max_reply: u64,
    max_value: u64,
    broken: bool,
    hello: Hello,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.addr)
            .field("db", &self.db)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// Whether a reply frame is an out-of-band push (RESP3), which is not the answer to a
/// command.
fn is_push(v: &Value) -> bool {
    matches!(v, Value::Push { .. })
}

impl Connection {
    /// The largest argument a command may carry.
    pub(crate) fn max_value(&self) -> u64 {
        self.max_value
    }

    /// The address this connection reaches.
    pub(crate) fn addr(&self) -> &Addr {
        &self.addr
    }

    /// The database selected at set-up.
    pub(crate) fn db(&self) -> i64 {
        self.db
    }

    /// What the server said about itself at set-up.
    pub(crate) fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Whether the connection failed and was closed.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }

    /// The response timeout of later calls (`None`: wait forever).
    pub(crate) fn set_response_timeout(&mut self, d: Option<Duration>) {
        self.response = d;
    }

    /// A write half for another thread (TCP and unix only): after this, the connection is
    /// only read from.
    pub(crate) fn write_half(&mut self) -> Option<super::socket::WriteHalf> {
        self.io.get_mut().write_half()
    }

    /// A handle that closes this connection's socket from another thread (a call blocked
    /// on it then fails at once).
    pub(crate) fn interrupter(&mut self) -> super::socket::Interrupter {
        self.io.get_mut().interrupter()
    }

    /// Closes the connection now.
    pub(crate) fn close(&mut self) {
        if !self.broken {
            self.broken = true;
            self.io.get_mut().shutdown();
        }
    }

    /// Marks the connection unusable (closing it) and returns `e`.
    fn fail(&mut self, e: Error) -> Error {
        self.close();
        e
    }

    fn write_deadline(&self, cap: Option<Instant>) -> Option<Instant> {
        time::earliest(Some(time::after(self.write)), cap)
    }

    fn read_deadline(&self, cap: Option<Instant>) -> Option<Instant> {
        time::earliest(self.response.map(time::after), cap)
    }

    fn stale(&self) -> Error {
        Error::io(
            io::ErrorKind::NotConnected,
            format!("connection to {} was closed after an error", self.addr),
            Delivery::NotSent,
        )
    }

    /// Writes `packed` by the write deadline. A write that fails part way leaves a single
    /// command incomplete on the server (it cannot run: `NotSent`), but the complete commands
    /// of a pipeline before the failure may run (`Unknown`, unless nothing was written).
    pub(crate) fn send(&mut self, packed: &[u8], cap: Option<Instant>, single: bool) -> Result<()> {
        if self.broken {
            return Err(self.stale());
        }
        check_sizes(packed, self.max_value)?;
        let deadline = self.write_deadline(cap);
        let stream = self.io.get_mut();
        stream.set_write_deadline(deadline);
        let mut written = 0;
        let result = loop {
            if written == packed.len() {
                break stream.flush();
            }
            match stream.write(&packed[written..]) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => written += n,
                Err(e) => break Err(e),
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                let delivery = if single || written == 0 {
                    Delivery::NotSent
                } else {
                    Delivery::Unknown
                };
                let e = socket::io_error(&self.addr, "cannot write to", &e, delivery);
                Err(self.fail(e))
            }
        }
    }

    /// Reads one frame by `deadline`, pushes included. `Ok(None)` when nothing complete
    /// arrived in time and `keep_partial` (a partly read frame is kept for the next call);
    /// otherwise a timeout closes the connection.
    fn read_value(
        &mut self,
        deadline: Option<Instant>,
        keep_partial: bool,
    ) -> Result<Option<Value>> {
        if self.broken {
            return Err(self.stale());
        }
        self.io.get_mut().set_read_deadline(deadline);
        match self.parser.parse_value(&mut self.io) {
            Ok(v) => {
                self.io.get_mut().set_budget(Some(self.max_reply));
                Ok(Some(v))
            }
            Err(e) => {
                if self.io.get_ref().over_budget() {
                    let limit = self.max_reply;
                    return Err(self.fail(Error::TooLarge {
                        what: "reply",
                        size: None,
                        limit,
                    }));
                }
                if e.is_timeout() {
                    if keep_partial {
                        return Ok(None);
                    }
                    let e = Error::io(
                        io::ErrorKind::TimedOut,
                        format!("no complete reply from {} in time", self.addr),
                        Delivery::Unknown,
                    );
                    return Err(self.fail(e));
                }
                Err(self.fail(self.wire_error(e)))
            }
        }
    }

    fn wire_error(&self, e: RedisError) -> Error {
        if e.kind() == redis::ErrorKind::Parse {
            return Error::from_wire(e, Delivery::Unknown);
        }
        if let Some(kind) = crate::error::io_error_of(&e).map(io::Error::kind) {
            let kind = if kind == io::ErrorKind::UnexpectedEof {
                io::ErrorKind::ConnectionAborted
            } else {
                kind
            };
            let what = if kind == io::ErrorKind::ConnectionAborted {
                "connection closed by the server".to_owned()
            } else {
                e.to_string()
            };
            return Error::io(kind, format!("{}: {what}", self.addr), Delivery::Unknown);
        }
        Error::from_wire(e, Delivery::Unknown)
    }

    /// Reads the reply to the next command (skipping RESP3 pushes) by `deadline`.
    fn reply(&mut self, deadline: Option<Instant>) -> Result<Value> {
        loop {
            match self.read_value(deadline, false)? {
                Some(v) if is_push(&v) => continue,
                Some(v) => return Ok(v),
                None => {
                    // Not reachable: `keep_partial` is false. Treat as a timeout.
                    let e = Error::io(
                        io::ErrorKind::TimedOut,
                        format!("no complete reply from {} in time", self.addr),
                        Delivery::Unknown,
                    );
                    return Err(self.fail(e));
                }
            }
        }
    }

    /// Reads `count` replies (skipping pushes) by one deadline.
    pub(crate) fn recv(&mut self, count: usize, cap: Option<Instant>) -> Result<Vec<Value>> {
        let deadline = self.read_deadline(cap);
        let mut out = Vec::with_capacity(count.min(4096));
        while out.len() < count {
            out.push(self.reply(deadline)?);
        }
        Ok(out)
    }

    /// Reads one frame of any kind (pushes included) for a reader that polls: `Ok(None)`
    /// when nothing complete arrived by `deadline` (a partly read frame is kept).
    pub(crate) fn read_frame(&mut self, deadline: Instant) -> Result<Option<Value>> {
        self.read_value(Some(deadline), true)
    }

    /// One command: its reply (an error reply is a `Value::ServerError`).
    pub(crate) fn exec(&mut self, packed: &[u8], cap: Option<Instant>) -> Result<Value> {
        self.send(packed, cap, true)?;
        let deadline = self.read_deadline(cap);
        self.reply(deadline)
    }

    /// A pipeline: sends `packed`, reads `offset + count` replies by one response deadline
    /// and returns the last `count`.
    pub(crate) fn pipeline(
        &mut self,
        packed: &[u8],
        offset: usize,
        count: usize,
        cap: Option<Instant>,
    ) -> Result<Vec<Value>> {
        self.send(packed, cap, false)?;
        let deadline = self.read_deadline(cap);
        let mut out = Vec::with_capacity(count.min(4096));
        for i in 0..offset + count {
            let v = self.reply(deadline)?;
            if i >= offset {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// `PING` by `deadline`.
    pub(crate) fn ping(&mut self, deadline: Instant) -> Result<()> {
        let packed = redis::cmd("PING").get_packed_command();
        match self.exec(&packed, Some(deadline))? {
            Value::ServerError(e) => Err(Error::from_redis(e.into(), Delivery::Answered)),
            _ => Ok(()),
        }
    }

    /// `HELLO` (protocol, credentials, client name), then `SELECT`, pipelined in one write
    /// and read by `deadline`; servers without `HELLO` (before 6.0) get `AUTH`, `CLIENT
    /// SETNAME` and `SELECT` instead.
    fn handshake(&mut self, config: &Config, deadline: Instant) -> Result<()> {
        let cap = Some(deadline);
        let proto = match config.protocol {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        };
        let mut hello = redis::cmd("HELLO");
        hello.arg(proto);
        if let Some(password) = &config.password {
            hello
                .arg("AUTH")
                .arg(config.username.as_deref().unwrap_or("default"))
                .arg(password.expose());
        }
        if let Some(name) = &config.client_name {
            hello.arg("SETNAME").arg(name);
        }
        let mut packed = hello.get_packed_command();
        let select =
            (config.db != 0).then(|| redis::cmd("SELECT").arg(config.db).get_packed_command());
        if let Some(s) = &select {
            packed.extend_from_slice(s);
        }
        let replies = self.handshake_replies(&packed, 1 + usize::from(select.is_some()), cap)?;
        let mut replies = replies.into_iter();
        if let Some(first) = replies.next() {
            match first {
                Value::ServerError(e) => {
                    // `ERR unknown command` (before Redis 6, or a proxy) or `NOPERM` (a user
                    // without HELLO): the old way, in RESP2 only.
                    let old_way = matches!(e.code(), "ERR" | "NOPERM");
                    if old_way && proto == 2 {
                        return self.legacy_handshake(config, cap);
                    }
                    let e = if old_way || e.code() == "NOPROTO" {
                        Error::from_redis(
                            RedisError::from((
                                redis::ErrorKind::RESP3NotSupported,
                                "the server does not speak RESP3 (HELLO 3 failed)",
                            )),
                            Delivery::NotSent,
                        )
                    } else {
                        Error::from_redis(e.into(), Delivery::NotSent)
                    };
                    return Err(self.fail(e));
                }
                v => self.hello = read_hello(&v),
            }
        }
        if let Some(Value::ServerError(e)) = replies.next() {
            let e = Error::from_redis(e.into(), Delivery::NotSent);
            return Err(self.fail(e));
        }
        Ok(())
    }

    fn legacy_handshake(&mut self, config: &Config, cap: Option<Instant>) -> Result<()> {
        let mut packed = Vec::new();
        let mut n = 0;
        if let Some(password) = &config.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = &config.username {
                auth.arg(user);
            }
            auth.arg(password.expose());
            packed.extend_from_slice(&auth.get_packed_command());
            n += 1;
        }
        if let Some(name) = &config.client_name {
            packed.extend_from_slice(
                &redis::cmd("CLIENT")
                    .arg("SETNAME")
                    .arg(name)
                    .get_packed_command(),
            );
            n += 1;
        }
        if config.db != 0 {
            packed.extend_from_slice(&redis::cmd("SELECT").arg(config.db).get_packed_command());
            n += 1;
        }
        if n == 0 {
            return Ok(());
        }
        for v in self.handshake_replies(&packed, n, cap)? {
            if let Value::ServerError(e) = v {
                let e = Error::from_redis(e.into(), Delivery::NotSent);
                return Err(self.fail(e));
            }
        }
        Ok(())
    }

    /// Sends the set-up commands and reads their replies; everything that goes wrong is
    /// `NotSent` for the caller's command (it was not sent yet), and a corrupt reply is a
    /// protocol error.
    fn handshake_replies(
        &mut self,
        packed: &[u8],
        count: usize,
        cap: Option<Instant>,
    ) -> Result<Vec<Value>> {
        self.send(packed, cap, false)
            .and_then(|()| self.recv(count, cap))
            .map_err(|e| e.with_delivery(Delivery::NotSent))
    }
}

/// Refuses a request with an argument over `limit` bytes before anything is sent (the server
/// would close the connection on it).
pub(crate) fn check_sizes(packed: &[u8], limit: u64) -> Result<()> {
    match crate::util::resp::oversized_argument(packed, limit) {
        None => Ok(()),
        Some(size) => Err(Error::TooLarge {
            what: "value",
            size: Some(size),
            limit,
        }),
    }
}

/// `server` and `version` from a `HELLO` reply (a map in RESP3, a flat array in RESP2).
fn read_hello(v: &Value) -> Hello {
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::VerbatimString { text, .. } => text.clone(),
        _ => String::new(),
    };
    let pairs: Vec<(String, String)> = match v {
        Value::Map(m) => m.iter().map(|(k, v)| (text(k), text(v))).collect(),
        Value::Array(a) => a
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => Some((text(k), text(v))),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    Hello {
        server: get("server"),
        version: get("version"),
    }
}

use crate::error::to_redis_error;

impl ConnectionLike for Connection {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<Value> {
        self.exec(cmd, None).map_err(to_redis_error)
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<Value>> {
        self.pipeline(cmd, offset, count, None)
            .map_err(to_redis_error)
    }

    fn get_db(&self) -> i64 {
        self.db
    }

    fn check_connection(&mut self) -> bool {
        self.ping(time::after(self.response.unwrap_or(Duration::from_secs(5))))
            .is_ok()
    }

    fn is_open(&self) -> bool {
        !self.broken
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_replies_in_both_protocols() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let resp3 = Value::Map(vec![
            (bulk("server"), bulk("valkey")),
            (bulk("version"), bulk("8.1.1")),
            (bulk("proto"), Value::Int(3)),
        ]);
        assert_eq!(
            read_hello(&resp3),
            Hello {
                server: "valkey".into(),
                version: "8.1.1".into()
            }
        );
        let resp2 = Value::Array(vec![
            bulk("server"),
            bulk("redis"),
            bulk("version"),
            bulk("7.0.15"),
        ]);
        assert_eq!(read_hello(&resp2).version, "7.0.15");
        assert_eq!(read_hello(&Value::Nil), Hello::default());
    }
}
