//! A fault-injection TCP proxy, to put between a client and a real server.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use redis::io::tcp::socket2::SockRef;

use super::{io_err, RedisServer, TestingError};

const HOST: &str = "127.0.0.1";
/// How often idle threads look at the mode and the stop flags: the longest a mode change,
/// [`FaultProxy::cut`] or a drop waits for a thread blocked on a socket.
const POLL: Duration = Duration::from_millis(20);
/// How long the accept thread sleeps when no connection is waiting.
const ACCEPT_POLL: Duration = Duration::from_millis(10);
/// How long a new connection keeps trying to reach the target before it is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One connect attempt to the target; short, so that a drop does not wait for it.
const CONNECT_SLICE: Duration = Duration::from_millis(100);
/// Bytes read per chunk.
const CHUNK: usize = 16 * 1024;
/// Bytes a direction holds back (in `Delay` mode) before it stops reading: back-pressure.
const MAX_QUEUED: usize = 1024 * 1024;

/// What a [`FaultProxy`] does with the bytes of its connections; see
/// [`FaultProxy::set_mode`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forwards bytes both ways as soon as they arrive. The initial mode.
    Pass,
    /// Forwards every chunk, in both directions, this long after the proxy received it:
    /// latency injection. A round trip takes at least twice the delay.
    Delay(Duration),
    /// Accepts connections but forwards nothing, on existing and new connections alike: the
    /// client sees a silent, half-open server. The proxy stops reading, so bytes are held
    /// (in the proxy and the kernel's buffers), not lost, and flow again when the mode goes
    /// back to `Pass` or `Delay`. A close is held like the bytes: a client that disconnects
    /// meanwhile stays counted in [`FaultProxy::connections`] until the mode changes (or a
    /// [`FaultProxy::cut`]).
    BlackHole,
    /// New connections are accepted and reset at once (TCP RST). Existing connections
    /// forward as in `Pass`.
    Refuse,
}

/// A TCP proxy on a free loopback port that forwards to a target (usually a
/// [`RedisServer`]) and injects faults on demand: latency, a silent server, refused
/// connections, resets.
///
/// When one side of a connection closes, the proxy delivers what it holds for the other
/// side and closes that too; when one side resets, the other is reset.
///
/// Every connection is served by two threads (`redkit-proxy-io`, one per direction), and
/// the listener by one (`redkit-proxy-accept`); a connection's threads exit when it ends.
/// Dropping the proxy stops accepting, closes every connection and joins every thread,
/// within a few tens of milliseconds whatever the mode.
///
/// The proxy forwards bytes and knows nothing of the protocol, so it works for TLS servers
/// too (connect with `rediss://` to [`port`](Self::port), without the host-name check, or
/// with a certificate for `127.0.0.1`).
///
/// ```no_run
/// use std::time::Duration;
/// use redkit::testing::{FaultProxy, ProxyMode, RedisServer, TestingError};
///
/// # fn main() -> Result<(), TestingError> {
/// let server = RedisServer::start()?;
/// let proxy = FaultProxy::start_for(&server)?;
/// let client = redis::Client::open(proxy.url())?;
/// let mut con = client.get_connection_with_timeout(Duration::from_secs(2))?;
/// con.set_read_timeout(Some(Duration::from_millis(500)))?;
///
/// proxy.set_mode(ProxyMode::BlackHole);
/// let err = redis::cmd("PING").query::<String>(&mut con).unwrap_err();
/// assert!(err.is_timeout());
///
/// proxy.set_mode(ProxyMode::Pass);
/// assert_eq!(proxy.cut(), 1); // resets the connection on both sides
/// # Ok(())
/// # }
/// ```
pub struct FaultProxy {
    shared: Arc<Shared>,
    port: u16,
    target: String,
    accept_thread: Option<JoinHandle<()>>,
}

/// State shared by the handle and every thread.
struct Shared {
    mode: Mutex<ProxyMode>,
    /// Signalled (under `mode`) on mode changes, cuts and shutdown.
    changed: Condvar,
    /// Set once, by `Drop`.
    stopping: AtomicBool,
    accepted: AtomicU64,
    registry: Mutex<Registry>,
    targets: Vec<SocketAddr>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    /// Live connections. The thread serving one removes it when it ends.
    live: HashMap<u64, Entry>,
    /// Threads of ended connections, joined by the accept thread (or `Drop`).
    finished: Vec<JoinHandle<()>>,
}

struct Entry {
    conn: Arc<Conn>,
    thread: JoinHandle<()>,
}

/// One proxied connection. Its sockets close when the last `Arc` goes.
struct Conn {
    id: u64,
    client: TcpStream,
    /// Set once the target has been reached.
    server: OnceLock<TcpStream>,
    /// Set when the connection ends (EOF, error, [`FaultProxy::cut`]).
    stop: AtomicBool,
}

/// Why one direction stopped forwarding.
enum End {
    /// Its source closed (and everything read was delivered).
    Eof,
    /// Reading or writing failed.
    Failed,
    /// The connection or the proxy was stopped.
    Stopped,
}

impl FaultProxy {
    /// Starts a proxy listening on `127.0.0.1` (a free port) that forwards every
    /// connection to `target_host:target_port`, in [`ProxyMode::Pass`].
    ///
    /// The target is resolved now, and connected to once per accepted connection. When it
    /// cannot be reached, the client's connection is reset.
    pub fn start(target_host: &str, target_port: u16) -> Result<FaultProxy, TestingError> {
        let target = format!("{target_host}:{target_port}");
        let targets: Vec<SocketAddr> = (target_host, target_port)
            .to_socket_addrs()
            .map_err(io_err(format!("resolving {target}")))?
            .collect();
        if targets.is_empty() {
            return Err(io_err(format!("resolving {target}"))(io::Error::new(
                io::ErrorKind::NotFound,
                "no address",
            )));
        }
        let listener = TcpListener::bind((HOST, 0)).map_err(io_err("binding 127.0.0.1:0"))?;
        let port = listener
            .local_addr()
            .map_err(io_err("reading the bound port"))?
            .port();
        listener
            .set_nonblocking(true)
            .map_err(io_err("making the proxy listener non-blocking"))?;
        let shared = Arc::new(Shared {
            mode: Mutex::new(ProxyMode::Pass),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            registry: Mutex::new(Registry::default()),
            targets,
        });
        let accept_shared = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name("redkit-proxy-accept".into())
            .spawn(move || accept_loop(&accept_shared, &listener))
            .map_err(io_err("spawning the proxy's accept thread"))?;
        log::debug!("fault proxy 127.0.0.1:{port} -> {target} started");
        Ok(FaultProxy {
            shared,
            port,
            target,
            accept_thread: Some(accept_thread),
        })
    }

    /// Starts a proxy in front of `server` (its host and port).
    pub fn start_for(server: &RedisServer) -> Result<FaultProxy, TestingError> {
        Self::start(server.host(), server.port())
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the proxy listens on: always `"127.0.0.1"`.
    pub fn host(&self) -> &'static str {
        HOST
    }

    /// `redis://127.0.0.1:PORT/`, the proxy's address as a Redis URL.
    pub fn url(&self) -> String {
        format!("redis://{HOST}:{}/", self.port)
    }

    /// Switches the mode, for existing and new connections at once: once this returns, no
    /// byte the proxy receives is forwarded under the old mode. (A chunk received just
    /// before may still be delivered just after.) Bytes held back by `Delay` or `BlackHole`
    /// follow the new mode: switching to `Pass` delivers them at once.
    pub fn set_mode(&self, mode: ProxyMode) {
        let mut current = self.shared.mode.lock();
        if *current != mode {
            log::debug!(
                "fault proxy 127.0.0.1:{}: {:?} -> {mode:?}",
                self.port,
                *current
            );
            *current = mode;
            self.shared.changed.notify_all();
        }
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        self.shared.mode()
    }

    /// Resets every current connection on both sides: the client and the server each get a
    /// TCP RST (`SO_LINGER` 0), and bytes held back are dropped. Returns how many
    /// connections were cut. When it returns, the sockets are closed and
    /// [`connections`](Self::connections) no longer counts them. The mode is unchanged.
    pub fn cut(&self) -> usize {
        let cut: Vec<Entry> = self
            .shared
            .registry
            .lock()
            .live
            .drain()
            .map(|(_, e)| e)
            .collect();
        for entry in &cut {
            entry.conn.reset();
        }
        self.shared.wake();
        let count = cut.len();
        for entry in cut {
            join(entry.thread);
        }
        log::debug!(
            "fault proxy 127.0.0.1:{}: cut {count} connections",
            self.port
        );
        count
    }

    /// How many proxied connections are live (accepted and not yet ended).
    pub fn connections(&self) -> usize {
        self.shared.registry.lock().live.len()
    }

    /// How many connections were accepted since the start, including those reset at once
    /// in [`ProxyMode::Refuse`].
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("listen", &format_args!("{HOST}:{}", self.port))
            .field("target", &self.target)
            .field("mode", &self.mode())
            .field("connections", &self.connections())
            .field("accepted", &self.accepted())
            .finish()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        {
            // Under the mode lock, so that no thread misses the wake-up.
            let _mode = self.shared.mode.lock();
            self.shared.stopping.store(true, Ordering::SeqCst);
            self.shared.changed.notify_all();
        }
        // No new connection after this.
        if let Some(accept_thread) = self.accept_thread.take() {
            join(accept_thread);
        }
        let (live, finished) = {
            let mut registry = self.shared.registry.lock();
            let live: Vec<Entry> = registry.live.drain().map(|(_, e)| e).collect();
            (live, std::mem::take(&mut registry.finished))
        };
        for entry in live {
            join(entry.thread);
        }
        // Threads of connections that ended before the drain moved themselves to
        // `finished` (in the same critical section as leaving `live`); the others find no
        // entry of theirs, so nothing can be added to `finished` after this.
        for thread in finished {
            join(thread);
        }
        log::debug!("fault proxy 127.0.0.1:{} stopped", self.port);
    }
}

impl Shared {
    fn mode(&self) -> ProxyMode {
        *self.mode.lock()
    }

    fn stopped(&self, conn: &Conn) -> bool {
        self.stopping.load(Ordering::SeqCst) || conn.stop.load(Ordering::SeqCst)
    }

    /// Wakes every thread waiting in [`wait`](Self::wait).
    fn wake(&self) {
        let _mode = self.mode.lock();
        self.changed.notify_all();
    }

    /// Waits up to `timeout`, or until the mode is no longer `seen` or `conn` is stopped.
    fn wait(&self, seen: ProxyMode, conn: &Conn, timeout: Duration) {
        let mut mode = self.mode.lock();
        if *mode == seen && !self.stopped(conn) {
            self.changed.wait_for(&mut mode, timeout);
        }
    }
}

impl Conn {
    /// Stops the connection and makes its sockets reset when they close.
    fn reset(&self) {
        self.stop.store(true, Ordering::SeqCst);
        set_linger_zero(&self.client);
        if let Some(server) = self.server.get() {
            set_linger_zero(server);
        }
    }

    /// Ends the connection after one direction ended: the first direction to end closes
    /// both sides (gracefully after an EOF, with a reset after an error), which also wakes
    /// the other direction. A stopped connection is left as it is.
    fn finish(&self, end: &End) {
        if self.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        let sockets = [Some(&self.client), self.server.get()];
        for socket in sockets.into_iter().flatten() {
            match end {
                End::Eof => {
                    let _ = socket.shutdown(Shutdown::Both);
                }
                End::Failed => set_linger_zero(socket),
                End::Stopped => {}
            }
        }
    }
}

fn set_linger_zero(stream: &TcpStream) {
    if let Err(e) = SockRef::from(stream).set_linger(Some(Duration::ZERO)) {
        log::debug!("fault proxy: could not set SO_LINGER 0: {e}");
    }
}

fn join(thread: JoinHandle<()>) {
    let name = thread.thread().name().unwrap_or("proxy").to_owned();
    if thread.join().is_err() {
        log::warn!("fault proxy thread {name} panicked");
    }
}

/// The accept thread: accepts until the proxy stops, and joins the threads of ended
/// connections as it goes.
fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    while !shared.stopping.load(Ordering::SeqCst) {
        let finished = std::mem::take(&mut shared.registry.lock().finished);
        for thread in finished {
            join(thread);
        }
        match listener.accept() {
            Ok((client, peer)) => {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                serve(shared, client, peer);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Sleeps without missing the stop signal (set under the same lock).
                let mut mode = shared.mode.lock();
                if !shared.stopping.load(Ordering::SeqCst) {
                    shared.changed.wait_for(&mut mode, ACCEPT_POLL);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                log::warn!("fault proxy: accept failed: {e}");
                let mut mode = shared.mode.lock();
                if !shared.stopping.load(Ordering::SeqCst) {
                    shared.changed.wait_for(&mut mode, POLL);
                }
            }
        }
    }
}

/// Starts serving an accepted connection, or resets it in `Refuse` mode.
fn serve(shared: &Arc<Shared>, client: TcpStream, peer: SocketAddr) {
    if shared.mode() == ProxyMode::Refuse {
        log::debug!("fault proxy: refusing {peer}");
        set_linger_zero(&client);
        return;
    }
    // Accepted sockets inherit non-blocking mode on some platforms.
    if let Err(e) = client.set_nonblocking(false) {
        log::debug!("fault proxy: dropping {peer}: {e}");
        set_linger_zero(&client);
        return;
    }
    let _ = client.set_nodelay(true);
    // The registry lock is held until the entry is in, so the thread cannot end (and look
    // for its entry) before that.
    let mut registry = shared.registry.lock();
    let id = registry.next_id;
    registry.next_id += 1;
    let conn = Arc::new(Conn {
        id,
        client,
        server: OnceLock::new(),
        stop: AtomicBool::new(false),
    });
    let thread_conn = Arc::clone(&conn);
    let thread_shared = Arc::clone(shared);
    let spawned = thread::Builder::new()
        .name("redkit-proxy-io".into())
        .spawn(move || run_connection(&thread_shared, &thread_conn));
    match spawned {
        Ok(thread) => {
            log::debug!("fault proxy: connection {id} from {peer}");
            registry.live.insert(id, Entry { conn, thread });
        }
        Err(e) => {
            log::warn!("fault proxy: could not spawn a connection thread: {e}");
            conn.reset();
        }
    }
}

/// A connection's thread: reaches the target, forwards client-to-server itself and
/// server-to-client on a second (scoped) thread, then unregisters the connection.
fn run_connection(shared: &Arc<Shared>, conn: &Arc<Conn>) {
    /// Moves the connection's own thread handle to `finished` however the thread ends.
    struct Unregister<'a>(&'a Shared, u64);
    impl Drop for Unregister<'_> {
        fn drop(&mut self) {
            let mut registry = self.0.registry.lock();
            // Absent when `cut` or `Drop` took it: they join the thread themselves.
            if let Some(entry) = registry.live.remove(&self.1) {
                registry.finished.push(entry.thread);
            }
        }
    }
    let _unregister = Unregister(shared, conn.id);

    let server = match connect_target(shared, conn) {
        Some(server) => server,
        None => {
            conn.reset();
            return;
        }
    };
    let server = conn.server.get_or_init(|| server);
    let _ = server.set_nodelay(true);
    if shared.stopped(conn) {
        // Cut while connecting: `reset` may have missed the server socket.
        conn.reset();
        return;
    }
    thread::scope(|scope| {
        let back = thread::Builder::new()
            .name("redkit-proxy-io".into())
            .spawn_scoped(scope, || {
                let end = pump(shared, conn, server, &conn.client);
                conn.finish(&end);
            });
        if let Err(e) = back {
            log::warn!("fault proxy: could not spawn a connection thread: {e}");
            conn.reset();
            return;
        }
        let end = pump(shared, conn, &conn.client, server);
        conn.finish(&end);
    });
    log::debug!("fault proxy: connection {} ended", conn.id);
}

/// Connects to one of the target's addresses, in short attempts so that a stop is noticed.
fn connect_target(shared: &Shared, conn: &Conn) -> Option<TcpStream> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let mut last_error = None;
        for addr in &shared.targets {
            match TcpStream::connect_timeout(addr, CONNECT_SLICE) {
                Ok(stream) => return Some(stream),
                Err(e) => last_error = Some(e),
            }
        }
        let timed_out = last_error.as_ref().is_some_and(|e| {
            matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            )
        });
        if !timed_out || shared.stopped(conn) || Instant::now() >= deadline {
            if let Some(e) = last_error {
                log::debug!(
                    "fault proxy: connection {}: target unreachable: {e}",
                    conn.id
                );
            }
            return None;
        }
    }
}

/// Forwards `from` to `to` according to the mode until the source closes, an error, or a
/// stop. Chunks wait in a queue stamped with their arrival time, and go when the current
/// mode allows: at once in `Pass`/`Refuse`, at arrival + delay in `Delay`, never in
/// `BlackHole` (which also stops reading).
fn pump(shared: &Shared, conn: &Conn, mut from: &TcpStream, to: &TcpStream) -> End {
    let mut buf = vec![0_u8; CHUNK];
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut queued = 0_usize;
    let mut eof = false;
    let mut read_timeout = None;
    if to.set_write_timeout(Some(POLL)).is_err() {
        return End::Failed;
    }
    loop {
        if shared.stopped(conn) {
            return End::Stopped;
        }
        let mode = shared.mode();
        let delay = match mode {
            ProxyMode::BlackHole => {
                shared.wait(mode, conn, POLL);
                continue;
            }
            ProxyMode::Delay(delay) => delay,
            ProxyMode::Pass | ProxyMode::Refuse => Duration::ZERO,
        };
        let now = Instant::now();
        // When the oldest held chunk is due (`None`: nothing held, or a delay too long to
        // represent, which never comes).
        let due = queue
            .front()
            .and_then(|(arrived, _)| arrived.checked_add(delay));
        if due.is_some_and(|due| due <= now) {
            if let Some((_, chunk)) = queue.pop_front() {
                queued -= chunk.len();
                if let Some(end) = write_all(shared, conn, to, &chunk) {
                    return end;
                }
            }
            // Look at the mode again before the next chunk.
            continue;
        }
        let until_due = due.map_or(POLL, |due| due.saturating_duration_since(now).min(POLL));
        if eof || queued >= MAX_QUEUED {
            if eof && queue.is_empty() {
                return End::Eof;
            }
            shared.wait(mode, conn, until_due);
            continue;
        }
        // Wakes up for the next due chunk; `Some(ZERO)` is not a valid socket timeout.
        let timeout = until_due.max(Duration::from_millis(1));
        if read_timeout != Some(timeout) {
            if from.set_read_timeout(Some(timeout)).is_err() {
                return End::Failed;
            }
            read_timeout = Some(timeout);
        }
        match from.read(&mut buf) {
            Ok(0) => eof = true,
            Ok(n) => {
                // The mode may have changed during the read: go by the current one.
                if queue.is_empty() && matches!(shared.mode(), ProxyMode::Pass | ProxyMode::Refuse)
                {
                    if let Some(end) = write_all(shared, conn, to, &buf[..n]) {
                        return end;
                    }
                } else {
                    queue.push_back((Instant::now(), buf[..n].to_vec()));
                    queued += n;
                }
            }
            Err(e) if is_transient(&e) => {}
            Err(e) => {
                if !shared.stopped(conn) {
                    log::debug!("fault proxy: connection {}: read failed: {e}", conn.id);
                }
                return End::Failed;
            }
        }
    }
}

/// Writes all of `data`, noticing a stop while the destination does not read. `None` when
/// written.
fn write_all(shared: &Shared, conn: &Conn, mut to: &TcpStream, data: &[u8]) -> Option<End> {
    let mut written = 0;
    while written < data.len() {
        match to.write(&data[written..]) {
            Ok(0) => return Some(End::Failed),
            Ok(n) => written += n,
            Err(e) if is_transient(&e) => {
                if shared.stopped(conn) {
                    return Some(End::Stopped);
                }
            }
            Err(e) => {
                if !shared.stopped(conn) {
                    log::debug!("fault proxy: connection {}: write failed: {e}", conn.id);
                }
                return Some(End::Failed);
            }
        }
    }
    None
}

/// A socket timeout or an interruption: try again.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}
