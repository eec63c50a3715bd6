//! The server binary the launchers run: found once, asked for its version once.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::version::Feature;
use crate::ServerVersion;

use super::{io_err, TestingError, REDIS_SERVER_ENV};

/// How long `--version` and the TLS probe may run.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `redis-server` (or `valkey-server`) binary the launchers run, with its version and
/// whether it was built with TLS. Each binary is asked once per process (`--version`, and
/// one start with an impossible TLS setting that exits at once); later calls answer from
/// memory.
///
/// ```no_run
/// use redkit::testing::ServerBinary;
/// use redkit::version::Feature;
///
/// let binary = ServerBinary::find()?;
/// println!("{} at {}", binary.version(), binary.path().display());
/// if !binary.supports(Feature::ShardedPubSub) || !binary.has_tls() {
///     eprintln!("skipped: needs Redis 7 with TLS");
/// }
/// # Ok::<(), redkit::testing::TestingError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerBinary {
    path: PathBuf,
    version: ServerVersion,
    tls: bool,
}

impl ServerBinary {
    /// The binary the launchers use (`REDKIT_REDIS_SERVER`, else `redis-server` or
    /// `valkey-server` in `PATH`, `/usr/bin` or `/usr/local/bin`), probed once.
    pub fn find() -> Result<ServerBinary, TestingError> {
        Self::at(&find_redis_server()?)
    }

    /// The binary at `path`, probed once.
    pub fn at(path: &Path) -> Result<ServerBinary, TestingError> {
        static CACHE: OnceLock<Mutex<HashMap<PathBuf, ServerBinary>>> = OnceLock::new();
        let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        if let Some(found) = cache.lock().ok().and_then(|c| c.get(path).cloned()) {
            return Ok(found);
        }
        let binary = ServerBinary {
            path: path.to_owned(),
            version: probe_version(path)?,
            tls: probe_tls(path)?,
        };
        if let Ok(mut c) = cache.lock() {
            c.insert(path.to_owned(), binary.clone());
        }
        Ok(binary)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its flavor and version (from `--version`; a Valkey's Redis-compatible version is
    /// taken as 7.2.4).
    pub fn version(&self) -> ServerVersion {
        self.version
    }

    /// Whether it has `feature`.
    pub fn supports(&self, feature: Feature) -> bool {
        self.version.supports(feature)
    }

    /// Whether it was built with TLS (many packaged builds are not).
    pub fn has_tls(&self) -> bool {
        self.tls
    }

    /// Whether it accepts the config directives that came with Redis `major.minor` (on
    /// Valkey: those of Redis 7.2 and before).
    pub(crate) fn knows_redis(&self, major: u16, minor: u16) -> bool {
        let (a, b, _) = self.version.redis_compatible();
        (a, b) >= (major, minor)
    }
}

/// Runs `command` (output captured), killing it after [`PROBE_TIMEOUT`]; returns stdout and
/// stderr together, and whether it exited by itself.
fn run_captured(command: &mut Command, what: &str) -> Result<(String, bool), TestingError> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(format!("running {what}")))?;
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let exited = loop {
        match child.try_wait() {
            Ok(Some(_)) => break true,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io_err(format!("waiting for {what}"))(e));
            }
        }
    };
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut out);
    }
    Ok((out, exited))
}

/// `redis-server --version`: `Redis server v=7.0.15 sha=...` or `Valkey server v=8.1.8 ...`.
fn probe_version(path: &Path) -> Result<ServerVersion, TestingError> {
    let what = format!("{} --version", path.display());
    let (out, _) = run_captured(Command::new(path).arg("--version"), &what)?;
    parse_version_line(&out).ok_or_else(|| TestingError::StartFailed {
        reason: format!("cannot tell the version from `{what}`"),
        log_tail: out.trim().to_owned(),
    })
}

pub(crate) fn parse_version_line(out: &str) -> Option<ServerVersion> {
    let line = out.lines().find(|l| l.contains(" v="))?;
    let flavor = line.split_whitespace().next()?;
    let number = line.split_whitespace().find_map(|w| w.strip_prefix("v="))?;
    format!("{flavor} {number}").parse().ok()
}

/// Starts the binary with a TLS port and certificate files that do not exist: a build with
/// TLS exits complaining about the certificate; one without rejects the directive (Redis)
/// or finds no TLS connection type (Valkey).
fn probe_tls(path: &Path) -> Result<bool, TestingError> {
    let missing = std::env::temp_dir().join("redkit-no-such-dir-for-tls-probe");
    let (out, exited) = run_captured(
        Command::new(path)
            .arg("--port")
            .arg("0")
            .arg("--tls-port")
            .arg(probe_port()?.to_string())
            .arg("--tls-cert-file")
            .arg(missing.join("cert.pem"))
            .arg("--tls-key-file")
            .arg(missing.join("key.pem"))
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--daemonize")
            .arg("no"),
        &format!("{} (TLS probe)", path.display()),
    )?;
    let unsupported = [
        "Bad directive",
        "wrong number of arguments",
        "TLS not supported",
        "Failed finding TLS support",
        "Missing implement of connection type tls",
    ];
    let tls = exited && !unsupported.iter().any(|u| out.contains(u)) && out.contains("TLS");
    log::debug!("{} TLS: {tls}", path.display());
    Ok(tls)
}

/// `REDKIT_REDIS_SERVER`, else `redis-server` (or `valkey-server`) in `PATH`, `/usr/bin` or
/// `/usr/local/bin`.
pub(crate) fn find_redis_server() -> Result<PathBuf, TestingError> {
    if let Some(path) = std::env::var_os(REDIS_SERVER_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(TestingError::ServerNotFound {
                searched: format!("{REDIS_SERVER_ENV}={}", path.display()),
            })
        };
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/bin".into(), "/usr/local/bin".into()]);
    dirs.iter()
        .flat_map(|dir| [dir.join("redis-server"), dir.join("valkey-server")])
        .find(|path| is_executable(path))
        .ok_or_else(|| TestingError::ServerNotFound {
            searched: format!(
                "{REDIS_SERVER_ENV} (unset), redis-server and valkey-server in PATH, /usr/bin \
                 and /usr/local/bin"
            ),
        })
}

pub(crate) fn is_executable(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

/// A loopback port that was free a moment ago (for the TLS probe, which exits before it
/// binds).
fn probe_port() -> Result<u16, TestingError> {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(io_err("binding 127.0.0.1:0"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("reading the bound port"))?
        .port();
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServerFlavor;

    #[test]
    fn version_lines() {
        let redis = "Redis server v=6.0.9 sha=00000000:0 malloc=jemalloc-5.1.0 bits=64 build=1b\n";
        let v = parse_version_line(redis).unwrap();
        assert_eq!(v.to_string(), "Redis 6.0.9");
        let valkey = "Valkey server v=9.1.2 sha=00000000:1 malloc=libc bits=64 build=15\n";
        let v = parse_version_line(valkey).unwrap();
        assert_eq!((v.flavor(), v.major()), (ServerFlavor::Valkey, 9));
        assert!(parse_version_line("garbage").is_none());
    }
}
