//! A `redis-server` child process on a private loopback port.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use redis::IntoConnectionInfo;

use super::binary::ServerBinary;
use super::{io_err, TempDir, TestingError, TlsMaterial};

const HOST: &str = "127.0.0.1";
/// How long a launched server gets to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`RedisServer::stop`] waits after SIGTERM before it sends SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`RedisServer::restart`] keeps retrying while its port is still taken.
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);
/// Connect, read and write timeout of [`RedisServer::admin`] connections.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How many fresh ports [`ServerBuilder::start`] tries when the chosen one gets taken.
const PORT_ATTEMPTS: usize = 5;
/// Lines of log included in start errors.
const ERROR_LOG_LINES: usize = 30;

/// Polls `f` every 10 ms until it returns `true`, or fails with [`TestingError::Timeout`]
/// (mentioning `what`) once `timeout` has passed. `f` is always called at least once.
pub fn wait_until<F: FnMut() -> bool>(
    timeout: Duration,
    what: &str,
    mut f: F,
) -> Result<(), TestingError> {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(TestingError::Timeout {
                what: what.to_owned(),
                timeout,
            });
        }
        sleep(Duration::from_millis(10));
    }
}

/// Configures a [`RedisServer`]; made by [`RedisServer::builder`].
#[must_use = "a builder does nothing until `start` is called"]
#[derive(Debug, Clone, Default)]
pub struct ServerBuilder {
    password: Option<String>,
    acl_users: Vec<String>,
    tls: Option<TlsMaterial>,
    tls_auth_clients: Option<bool>,
    extra: Vec<(String, String)>,
    sentinel: bool,
    cluster_bus: bool,
}

impl ServerBuilder {
    /// Protects the default user with this password (`requirepass`).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Adds an ACL user, as a config-file rule line such as
    /// `"user reader on >secret ~* +get -set"` (the leading `user` may be omitted).
    pub fn acl_user(mut self, line: impl Into<String>) -> Self {
        let line = line.into();
        let line = line.trim();
        self.acl_users.push(if line.starts_with("user ") {
            line.to_owned()
        } else {
            format!("user {line}")
        });
        self
    }

    /// Serves TLS only (`port 0`, `tls-port`), with the server certificate and CA of
    /// `material`.
    pub fn tls(mut self, material: TlsMaterial) -> Self {
        self.tls = Some(material);
        self
    }

    /// Whether a TLS server requires client certificates (`tls-auth-clients yes|no`).
    /// Defaults to Redis' own default, `yes`. Ignored without [`tls`](Self::tls).
    pub fn tls_auth_clients(mut self, required: bool) -> Self {
        self.tls_auth_clients = Some(required);
        self
    }

    /// Adds a config directive, written verbatim as `key value` after all others (so it can
    /// override them); quote `value` yourself if it needs it, e.g. `.config("save", "\"\"")`.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.push((key.into(), value.into()));
        self
    }

    /// Runs the process as a Redis Sentinel (`redis-server <config> --sentinel`) instead of a
    /// data server; add its `sentinel monitor ...` lines with [`config`](Self::config). The
    /// config file stays writable: Sentinel rewrites it. Defaults to a data server.
    /// [`SentinelSetup`](super::SentinelSetup) builds a whole Sentinel deployment.
    pub fn sentinel(mut self) -> Self {
        self.sentinel = true;
        self
    }

    /// A Cluster node: its bus port is free too (`cluster-port` on 7.0 and later; on older
    /// servers, which always use port + 10000, a port whose +10000 is free).
    pub(crate) fn cluster_node(mut self) -> Self {
        self.cluster_bus = true;
        self
    }

    /// Launches the server and waits until it answers `PING`.
    pub fn start(self) -> Result<RedisServer, TestingError> {
        let binary = ServerBinary::find()?;
        let dir = TempDir::new("server")?;
        let mut server = RedisServer {
            child: None,
            port: 0,
            binary: binary.path().to_owned(),
            config_path: dir.path().join("redis.conf"),
            log_path: dir.path().join("redis.log"),
            password: self.password.clone(),
            tls: self.tls.clone(),
            sentinel: self.sentinel,
            dir,
        };
        let mut attempt = 1;
        loop {
            let mut bus = None;
            if !self.cluster_bus {
                server.port = free_port()?;
            } else if binary.knows_redis(7, 0) {
                server.port = free_port()?;
                bus = Some(free_port()?);
            } else {
                server.port = free_port_with_bus()?;
            }
            let config = self.render(
                &binary,
                server.dir.path(),
                &server.log_path,
                server.port,
                bus,
            );
            std::fs::write(&server.config_path, config)
                .map_err(io_err(format!("writing {}", server.config_path.display())))?;
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e) if e.port_busy && attempt < PORT_ATTEMPTS => {
                    log::debug!("port {} got taken, retrying on another", server.port);
                    attempt += 1;
                }
                Err(e) => return Err(e.error),
            }
        }
    }

    fn render(
        &self,
        binary: &ServerBinary,
        dir: &Path,
        log_path: &Path,
        port: u16,
        bus: Option<u16>,
    ) -> String {
        let mut c = String::new();
        let mut line = |key: &str, value: &str| {
            let _ = writeln!(c, "{key} {value}");
        };
        line("bind", HOST);
        line("protected-mode", "no");
        line("daemonize", "no");
        line("dir", &quote(&dir.to_string_lossy()));
        line("logfile", &quote(&log_path.to_string_lossy()));
        line("save", "\"\"");
        line("appendonly", "no");
        // DEBUG is always allowed before 7.0, which brought this setting.
        if binary.knows_redis(7, 0) {
            line("enable-debug-command", "yes");
        }
        if let Some(bus) = bus {
            line("cluster-port", &bus.to_string());
        }
        match &self.tls {
            None => line("port", &port.to_string()),
            Some(tls) => {
                line("port", "0");
                line("tls-port", &port.to_string());
                line(
                    "tls-cert-file",
                    &quote(&tls.server_cert_path().to_string_lossy()),
                );
                line(
                    "tls-key-file",
                    &quote(&tls.server_key_path().to_string_lossy()),
                );
                line(
                    "tls-ca-cert-file",
                    &quote(&tls.ca_cert_path().to_string_lossy()),
                );
                let auth = self.tls_auth_clients.unwrap_or(true);
                line("tls-auth-clients", if auth { "yes" } else { "no" });
            }
        }
        if let Some(password) = &self.password {
            line("requirepass", &quote(password));
        }
        for user in &self.acl_users {
            let _ = writeln!(c, "{user}");
        }
        for (key, value) in &self.extra {
            let _ = writeln!(c, "{key} {value}");
        }
        c
    }
}

/// A `redis-server` child process, listening on `127.0.0.1` only, on a port of its own.
///
/// It persists nothing (`save ""`, `appendonly no`), and its working directory, config file
/// and log file live in a private temporary directory. Dropping the handle kills the process
/// (SIGKILL), waits for it, and removes the directory.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    binary: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    password: Option<String>,
    tls: Option<TlsMaterial>,
    sentinel: bool,
    // Declared last: removed after everything else, and `Drop` has killed the child by then.
    dir: TempDir,
}

/// A failed launch; `port_busy` when the server could not bind its port.
struct LaunchError {
    error: TestingError,
    port_busy: bool,
}

impl RedisServer {
    /// Starts a plain server: no password, no TLS.
    pub fn start() -> Result<RedisServer, TestingError> {
        Self::builder().start()
    }

    /// A builder for a server with a password, ACL users, TLS or extra config.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The port the server listens on (its TLS port when TLS is on); kept across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the server listens on: always `"127.0.0.1"`.
    pub fn host(&self) -> &'static str {
        HOST
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://…` with TLS. The password is not included.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://{HOST}:{}", self.port)
    }

    /// Like [`url`](Self::url), with the password (percent-encoded) as the default user's:
    /// `redis://:PASSWORD@127.0.0.1:PORT`. Same as `url()` when there is no password.
    pub fn url_with_password(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.password {
            Some(p) => format!("{scheme}://:{}@{HOST}:{}", percent_encode(p), self.port),
            None => self.url(),
        }
    }

    /// The `requirepass` password, if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The process id of the running server; `None` after [`stop`](Self::stop) or
    /// [`kill`](Self::kill) (until [`restart`](Self::restart)).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The TLS material the server was started with.
    pub fn tls_material(&self) -> Option<&TlsMaterial> {
        self.tls.as_ref()
    }

    /// The server's temporary directory (its `dir`, holding `redis.conf` and `redis.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `n_lines` lines of the server's log file (empty if there is none yet).
    pub fn log_tail(&self, n_lines: usize) -> String {
        let log = std::fs::read(&self.log_path).unwrap_or_default();
        tail(&String::from_utf8_lossy(&log), n_lines)
    }

    /// A client for the default user: with the password, and with TLS trusting the generated
    /// CA and presenting the client certificate. It checks the server's host name, so with
    /// [`TlsMaterial::wrong_host_server_material`] it fails to connect.
    pub fn client(&self) -> Result<redis::Client, TestingError> {
        self.client_checking_host(true)
    }

    /// [`client`](Self::client), optionally without the host-name check (the certificate
    /// chain is still verified). The launcher's own connections skip the check, so that a
    /// server with a wrong-host certificate can still be started and administered.
    fn client_checking_host(&self, check_host: bool) -> Result<redis::Client, TestingError> {
        let mut info = self.url().into_connection_info()?;
        if let Some(password) = &self.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let Some(tls) = &self.tls else {
            return Ok(redis::Client::open(info)?);
        };
        let client = redis::Client::build_with_tls(info, tls.redis_certificates(true))?;
        if check_host {
            return Ok(client);
        }
        let info = client.get_connection_info();
        let mut addr = info.addr().clone();
        addr.set_danger_accept_invalid_hostnames(true);
        Ok(redis::Client::open(info.clone().set_addr(addr))?)
    }

    /// A direct connection as the default user (with the password and TLS client certificate
    /// as needed, without the host-name check) with 5 s connect, read and write timeouts, for
    /// test setup: `CONFIG SET`, `DEBUG SLEEP`, `CLIENT LIST`, ...
    pub fn admin(&self) -> Result<redis::Connection, TestingError> {
        let client = self.client_checking_host(false)?;
        let con = client.get_connection_with_timeout(ADMIN_TIMEOUT)?;
        con.set_read_timeout(Some(ADMIN_TIMEOUT))?;
        con.set_write_timeout(Some(ADMIN_TIMEOUT))?;
        Ok(con)
    }

    /// Stops the server gracefully (SIGTERM, or `SHUTDOWN NOSAVE` where there is no `kill`
    /// command), and SIGKILLs it if it has not exited within 5 s. Does nothing if it is not
    /// running.
    pub fn stop(&mut self) -> Result<(), TestingError> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        if self.is_running() {
            let signalled = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if !signalled {
                if let Ok(mut con) = self.admin() {
                    // The server closes the connection, so this "fails" on success too.
                    let _ = redis::cmd("SHUTDOWN").arg("NOSAVE").exec(&mut con);
                }
            }
            let what = format!("redis-server (pid {pid}) to exit");
            if wait_until(STOP_TIMEOUT, &what, || !self.is_running()).is_err() {
                log::warn!("redis-server (pid {pid}) ignored SIGTERM for {STOP_TIMEOUT:?}");
                return self.kill();
            }
        }
        self.reap()
    }

    /// Kills the server at once (SIGKILL) and waits for it. Does nothing if it is not running.
    pub fn kill(&mut self) -> Result<(), TestingError> {
        if let Some(child) = self.child.as_mut() {
            if let Err(e) = child.kill() {
                // `InvalidInput` means it had already exited.
                if e.kind() != std::io::ErrorKind::InvalidInput {
                    return Err(io_err("killing redis-server")(e));
                }
            }
        }
        self.reap()
    }

    /// Stops the server if it is running, starts it again on the same port with the same
    /// config (retrying for a few seconds while the port is still taken), and waits until it
    /// answers `PING`. Data is not kept.
    pub fn restart(&mut self) -> Result<(), TestingError> {
        self.stop()?;
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(e) if e.port_busy && Instant::now() < deadline => {
                    sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e.error),
            }
        }
    }

    /// Waits for an exited (or killed) child, and forgets it.
    fn reap(&mut self) -> Result<(), TestingError> {
        if let Some(mut child) = self.child.take() {
            child.wait().map_err(io_err("waiting for redis-server"))?;
        }
        Ok(())
    }

    /// Spawns the server with the current config file and waits until it answers `PING`.
    fn launch(&mut self) -> Result<(), LaunchError> {
        let fail = |error| LaunchError {
            error,
            port_busy: false,
        };
        let log_start = std::fs::metadata(&self.log_path).map_or(0, |m| m.len());
        // Output before the log file is opened (e.g. config errors) goes to the same file.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(io_err(format!("opening {}", self.log_path.display())))
            .map_err(fail)?;
        let log_err = log
            .try_clone()
            .map_err(io_err("duplicating the log file handle"))
            .map_err(fail)?;
        let mut command = Command::new(&self.binary);
        command.arg(&self.config_path);
        if self.sentinel {
            command.arg("--sentinel");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(io_err(format!("spawning {}", self.binary.display())))
            .map_err(fail)?;
        let pid = child.id();
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let exited = self
                .child
                .as_mut()
                .map(Child::try_wait)
                .transpose()
                .map_err(io_err("checking on redis-server"))
                .map_err(fail)?;
            if let Some(Some(status)) = exited {
                self.child = None;
                let new_log = read_from(&self.log_path, log_start);
                return Err(LaunchError {
                    port_busy: new_log.contains("Address already in use"),
                    error: self.start_failed(format!(
                        "{} exited ({status}) before answering PING on port {}",
                        self.binary.display(),
                        self.port
                    )),
                });
            }
            let last_error = match self.ping_self(pid) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                let _ = self.kill();
                return Err(fail(self.start_failed(format!(
                    "no PING reply on port {} within {READY_TIMEOUT:?}; last error: {last_error}",
                    self.port
                ))));
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// PINGs the server, and checks it is our child (not another server that got the port).
    fn ping_self(&self, pid: u32) -> Result<(), String> {
        let timeout = Duration::from_secs(1);
        let client = self
            .client_checking_host(false)
            .map_err(|e| e.to_string())?;
        let mut con = client
            .get_connection_with_timeout(timeout)
            .map_err(|e| e.to_string())?;
        con.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        redis::cmd("PING")
            .query::<String>(&mut con)
            .map_err(|e| e.to_string())?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query(&mut con)
            .map_err(|e| e.to_string())?;
        let wanted = format!("process_id:{pid}");
        if info.lines().any(|l| l.trim() == wanted) {
            Ok(())
        } else {
            Err(format!("port {} is served by another process", self.port))
        }
    }

    fn start_failed(&self, reason: String) -> TestingError {
        TestingError::StartFailed {
            reason,
            log_tail: self.log_tail(ERROR_LOG_LINES),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> Result<u16, TestingError> {
    let listener = TcpListener::bind((HOST, 0)).map_err(io_err("binding 127.0.0.1:0"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("reading the bound port"))?
        .port();
    Ok(port)
}

/// A free loopback port whose cluster bus port (+10000) is free too, for servers before 7.0
/// (no `cluster-port`).
fn free_port_with_bus() -> Result<u16, TestingError> {
    for _ in 0..100 {
        let listener = TcpListener::bind((HOST, 0)).map_err(io_err("binding 127.0.0.1:0"))?;
        let port = listener
            .local_addr()
            .map_err(io_err("reading the bound port"))?
            .port();
        if port > u16::MAX - 10_000 {
            continue;
        }
        if TcpListener::bind((HOST, port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err(TestingError::StartFailed {
        reason: "found no free port whose +10000 (the cluster bus) is free too".into(),
        log_tail: String::new(),
    })
}

/// A double-quoted redis.conf string.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            _ => out.push(ch),
        }
    }
    out.push('"');
    out
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    s.bytes().fold(String::new(), |mut out, b| {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
        out
    })
}

/// The log file's contents from byte `offset` on (lossy UTF-8; empty if unreadable).
fn read_from(path: &Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

pub(crate) fn tail(text: &str, n_lines: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n_lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_encoding() {
        assert_eq!(quote(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(percent_encode("p@ss w/rd-_.~"), "p%40ss%20w%2Frd-_.~");
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
