//! The one error type of redkit and its classification.
//!
//! Every failure is an [`Error`]. Its [`ErrorClass`] says what kind of trouble it is (connection,
//! timeout, authentication, ...) and is derived from the `redis` crate's own error kind, server
//! error code and I/O error kind, never from message text. Its [`Delivery`] says whether the
//! command may have reached the server, which is what decides whether resending it is safe.

use std::fmt;
use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};

/// The result type of redkit.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] is.
///
/// Counts of errors per class are kept in [`Stats`](crate::Stats).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The connection could not be made, or broke (refused, reset, closed, end of stream).
    Connection,
    /// A connect, read or write timed out.
    Timeout,
    /// Authentication failed (wrong password or user, `NOAUTH`).
    Auth,
    /// The authenticated user lacks an ACL permission (`NOPERM`).
    Permission,
    /// The server is temporarily unable to serve: `LOADING`, `BUSY` (a script runs), `TRYAGAIN`,
    /// `MASTERDOWN`, `CLUSTERDOWN`.
    Busy,
    /// A write reached a replica (`READONLY`), typically after a failover.
    ReadOnly,
    /// A cluster redirection (`MOVED`, `ASK`).
    ClusterRedirect,
    /// A script is not loaded on the server (`NOSCRIPT`).
    Script,
    /// The server rejected the command: `ERR`, `WRONGTYPE`, `CROSSSLOT`, `EXECABORT`, a failing
    /// script, or any other error reply.
    Command,
    /// The reply could not be converted into the requested Rust type.
    Conversion,
    /// The server sent bytes that are not valid RESP.
    Protocol,
    /// TLS could not be set up: handshake failure, untrusted certificate, wrong hostname, bad key.
    Tls,
    /// No pooled connection became available within the checkout timeout.
    PoolTimeout,
    /// The circuit breaker is open: the call failed fast without touching the network.
    CircuitOpen,
    /// A transaction kept conflicting with other writers (`WATCH`) until its retry cap.
    TransactionConflict,
    /// Invalid configuration (a setting, a URL, certificates that do not parse).
    Config,
    /// The handle was closed ([`Redis::close`](crate::Redis::close)).
    Closed,
    /// A rate limiter did not grant the request within the wait allowed.
    RateLimited,
    /// A lock, semaphore permit or leadership did not come free within the wait allowed.
    LockTimeout,
    /// A value or reply is larger than a limit: the server's (`proto-max-bulk-len`) for a
    /// value sent, or [`max_reply_size`](crate::ConfigBuilder::max_reply_size) for a reply.
    TooLarge,
    /// The call cannot run here: the server lacks the feature (too old a version), or the
    /// command would change a shared connection for later callers and needs another kind of
    /// connection ([`Error::ServerTooOld`], [`Error::WrongConnection`]).
    Unsupported,
    /// Anything else (sentinel or cluster topology errors, client-side errors).
    Other,
}

impl ErrorClass {
    /// Every class, in a stable order (used for per-class counters).
    pub const ALL: [ErrorClass; 22] = [
        ErrorClass::Connection,
        ErrorClass::Timeout,
        ErrorClass::Auth,
        ErrorClass::Permission,
        ErrorClass::Busy,
        ErrorClass::ReadOnly,
        ErrorClass::ClusterRedirect,
        ErrorClass::Script,
        ErrorClass::Command,
        ErrorClass::Conversion,
        ErrorClass::Protocol,
        ErrorClass::Tls,
        ErrorClass::PoolTimeout,
        ErrorClass::CircuitOpen,
        ErrorClass::TransactionConflict,
        ErrorClass::Config,
        ErrorClass::Closed,
        ErrorClass::RateLimited,
        ErrorClass::LockTimeout,
        ErrorClass::TooLarge,
        ErrorClass::Unsupported,
        ErrorClass::Other,
    ];

    pub(crate) fn index(self) -> usize {
        ErrorClass::ALL
            .iter()
            .position(|c| *c == self)
            .unwrap_or(ErrorClass::ALL.len() - 1)
    }

    /// A short lower-case name, stable for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Connection => "connection",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Auth => "auth",
            ErrorClass::Permission => "permission",
            ErrorClass::Busy => "busy",
            ErrorClass::ReadOnly => "read_only",
            ErrorClass::ClusterRedirect => "cluster_redirect",
            ErrorClass::Script => "script",
            ErrorClass::Command => "command",
            ErrorClass::Conversion => "conversion",
            ErrorClass::Protocol => "protocol",
            ErrorClass::Tls => "tls",
            ErrorClass::PoolTimeout => "pool_timeout",
            ErrorClass::CircuitOpen => "circuit_open",
            ErrorClass::TransactionConflict => "transaction_conflict",
            ErrorClass::Config => "config",
            ErrorClass::Closed => "closed",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::LockTimeout => "lock_timeout",
            ErrorClass::TooLarge => "too_large",
            ErrorClass::Unsupported => "unsupported",
            ErrorClass::Other => "other",
        }
    }

    /// Whether a later attempt may succeed (the trouble is transient).
    ///
    /// This says nothing about whether resending is *safe*: see [`Error::delivery`].
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorClass::Connection
                | ErrorClass::Timeout
                | ErrorClass::Busy
                | ErrorClass::ReadOnly
                | ErrorClass::PoolTimeout
                | ErrorClass::CircuitOpen
                | ErrorClass::TransactionConflict
                | ErrorClass::LockTimeout
        )
    }

    /// Whether this class says the server or the path to it is unhealthy (it counts against
    /// the circuit breaker). Command errors, type errors and the like do not.
    pub(crate) fn is_infrastructure(self) -> bool {
        matches!(
            self,
            ErrorClass::Connection
                | ErrorClass::Timeout
                | ErrorClass::Busy
                | ErrorClass::PoolTimeout
                | ErrorClass::Protocol
        )
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far a failed command got: the fact that decides whether resending it is safe.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The command surely did not run: no connection, the breaker was open, or writing it
    /// failed before it was complete.
    NotSent,
    /// The command was written but no reply came (a read timeout, a dropped connection): it
    /// may or may not have run. Resending a non-idempotent command here could apply it twice.
    Unknown,
    /// The server answered (with an error reply).
    Answered,
}

/// Every failure of redkit.
///
/// Use [`Error::class`] to tell failures apart, [`Error::delivery`] to know whether the
/// command could have run, and [`std::error::Error::source`] to reach the underlying
/// [`redis::RedisError`].
#[non_exhaustive]
#[derive(Clone)]
pub enum Error {
    /// A failure reported by the `redis` crate: a connection problem or an error reply.
    Redis {
        /// The classification.
        class: ErrorClass,
        /// How far the command got.
        delivery: Delivery,
        /// The underlying error.
        source: RedisError,
    },
    /// No pooled connection became available in time.
    PoolTimeout {
        /// How long the caller waited.
        waited: Duration,
    },
    /// The circuit breaker is open; no network I/O was attempted.
    CircuitOpen {
        /// When the breaker will let a probe call through.
        retry_after: Duration,
    },
    /// A `WATCH`ed transaction was aborted by concurrent writers on every attempt.
    TransactionConflict {
        /// How many attempts were made.
        attempts: u32,
    },
    /// An invalid setting.
    Config {
        /// The setting at fault (for example `"pool.max_size"` or `"url"`).
        setting: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// The handle was closed with [`Redis::close`](crate::Redis::close); no call runs any more.
    Closed,
    /// A rate limiter did not grant the request within the wait allowed
    /// ([`RateLimiter::acquire`](crate::ratelimit::RateLimiter::acquire)).
    RateLimited {
        /// When it may succeed; `None` when it never can (it asks for more than the limit).
        retry_after: Option<Duration>,
    },
    /// A [lock](crate::lock) (or a semaphore permit, a read or write lock, a Redlock) was
    /// held by others for the whole wait allowed.
    LockTimeout {
        /// How long the caller waited.
        waited: Duration,
    },
    /// An acquisition was not confirmed by enough replicas in time (a lock built with a
    /// [`ReplicaAck`](crate::lock::ReplicaAck)); it was released again.
    NotReplicated {
        /// The lock's name.
        name: String,
        /// How many replicas confirmed it.
        acknowledged: u32,
        /// How many were asked for.
        wanted: u32,
        /// How long the server waited for them.
        waited: Duration,
    },
    /// A background thread of redkit failed (reported by [`Redis::close`](crate::Redis::close)).
    Background {
        /// The thread's name.
        thread: &'static str,
        /// What happened (a panic message).
        reason: String,
    },
    /// A value or a reply is larger than allowed: a value over the server's
    /// `proto-max-bulk-len` is refused before anything is sent; a reply over
    /// [`max_reply_size`](crate::ConfigBuilder::max_reply_size) ends the read (the
    /// connection is closed; the command did run).
    TooLarge {
        /// `"value"` or `"reply"`.
        what: &'static str,
        /// Its size in bytes, when known.
        size: Option<u64>,
        /// The limit in bytes.
        limit: u64,
    },
    /// The server lacks a feature this call needs (its version is too old). Nothing was
    /// sent for the call.
    ServerTooOld {
        /// What needs it (a command or a redkit feature, such as `"LMOVE"`).
        feature: &'static str,
        /// The server versions that have it (for example `"Redis 6.2 or Valkey 7.2"`).
        needs: &'static str,
        /// The server it ran against (for example `"Redis 6.0.9"`).
        server: String,
    },
    /// The command cannot run on this kind of connection: it would change a shared
    /// connection's state for later callers (`SELECT`, `SUBSCRIBE`, `MULTI`, `CLIENT
    /// TRACKING`...) or it needs a connection of its own. Nothing was sent.
    WrongConnection {
        /// The command, as sent (for example `"SELECT"` or `"CLIENT TRACKING"`).
        command: String,
        /// What to use instead.
        instead: &'static str,
    },
    /// A stored value could not be decoded (a cache entry or session written in another
    /// format, or by another program). Never turned into a silent miss.
    Decode {
        /// The key that holds the value.
        key: String,
        /// Why it could not be decoded.
        reason: String,
    },
}

impl Error {
    /// Builds an error from a `redis` crate error, classifying it.
    pub(crate) fn from_redis(source: RedisError, delivery: Delivery) -> Error {
        if let Some(carried) = carried(&source) {
            return carried;
        }
        let class = classify(&source);
        let delivery = if matches!(class, ErrorClass::Tls | ErrorClass::Config) {
            Delivery::NotSent
        } else {
            delivery
        };
        Error::Redis {
            class,
            delivery,
            source,
        }
    }

    /// A connection-level error redkit itself detected (no server answer to classify), as
    /// an I/O error of `kind`, so that it classifies like the `redis` crate's own.
    pub(crate) fn io(
        kind: std::io::ErrorKind,
        message: impl Into<String>,
        delivery: Delivery,
    ) -> Error {
        let message: String = message.into();
        Error::from_redis(
            RedisError::from(std::io::Error::new(kind, message)),
            delivery,
        )
    }

    /// An error that came off the wire while reading a reply: here a parse error means the
    /// byte stream is corrupt (not that a reply failed to convert to a Rust type).
    pub(crate) fn from_wire(source: RedisError, delivery: Delivery) -> Error {
        let protocol = source.kind() == ErrorKind::Parse;
        let mut e = Error::from_redis(source, delivery);
        if let (true, Error::Redis { class, .. }) = (protocol, &mut e) {
            *class = ErrorClass::Protocol;
        }
        e
    }

    /// A TLS failure (set-up or handshake), in the shape the `redis` crate gives its own
    /// handshake errors (an I/O kind with a detail and no I/O source), so that both classify
    /// as [`ErrorClass::Tls`].
    pub(crate) fn tls(summary: &'static str, detail: String) -> Error {
        Error::from_redis(
            RedisError::from((ErrorKind::Io, summary, detail)),
            Delivery::NotSent,
        )
    }

    /// A configuration error.
    pub(crate) fn config(setting: &'static str, reason: impl Into<String>) -> Error {
        Error::Config {
            setting,
            reason: reason.into(),
        }
    }

    /// The classification of this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Redis { class, .. } => *class,
            Error::PoolTimeout { .. } => ErrorClass::PoolTimeout,
            Error::CircuitOpen { .. } => ErrorClass::CircuitOpen,
            Error::TransactionConflict { .. } => ErrorClass::TransactionConflict,
            Error::Config { .. } => ErrorClass::Config,
            Error::Closed => ErrorClass::Closed,
            Error::RateLimited { .. } => ErrorClass::RateLimited,
            Error::LockTimeout { .. } => ErrorClass::LockTimeout,
            Error::NotReplicated { .. } => ErrorClass::Timeout,
            Error::Background { .. } => ErrorClass::Other,
            Error::Decode { .. } => ErrorClass::Conversion,
            Error::ServerTooOld { .. } | Error::WrongConnection { .. } => ErrorClass::Unsupported,
            Error::TooLarge { .. } => ErrorClass::TooLarge,
        }
    }

    /// The same error with another delivery (a redis error only; others are unchanged).
    pub(crate) fn with_delivery(mut self, to: Delivery) -> Error {
        if let Error::Redis { delivery, .. } = &mut self {
            *delivery = to;
        }
        self
    }

    /// How far the failed command got.
    pub fn delivery(&self) -> Delivery {
        match self {
            Error::Redis { delivery, .. } => *delivery,
            Error::TransactionConflict { .. } | Error::NotReplicated { .. } => Delivery::Answered,
            Error::TooLarge { what: "reply", .. } => Delivery::Unknown,
            _ => Delivery::NotSent,
        }
    }

    /// Whether a later attempt may succeed. Whether redkit resends automatically also depends
    /// on [`Error::delivery`] and on the command being idempotent (see [`RetryPolicy`](crate::RetryPolicy)).
    pub fn is_retryable(&self) -> bool {
        self.class().is_transient()
    }

    /// Whether this is a timeout: connect, read or write timeout, or pool checkout timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self.class(), ErrorClass::Timeout | ErrorClass::PoolTimeout)
    }

    /// Whether the connection failed or broke (including TLS set-up failures).
    pub fn is_connection(&self) -> bool {
        matches!(self.class(), ErrorClass::Connection | ErrorClass::Tls)
    }

    /// The server's error code (`"WRONGTYPE"`, `"NOPERM"`, `"ERR"`...), when the server replied
    /// with an error.
    pub fn server_code(&self) -> Option<&str> {
        match self {
            Error::Redis { source, .. } => source.code(),
            _ => None,
        }
    }

    /// The underlying `redis` crate error, if any.
    pub fn redis_error(&self) -> Option<&RedisError> {
        match self {
            Error::Redis { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Whether the connection that produced this error must not be used again: its state is
    /// unknown (broken socket, a reply still in flight after a timeout, a protocol error).
    pub(crate) fn poisons_connection(&self) -> bool {
        match self {
            Error::Redis {
                class, delivery, ..
            } => {
                matches!(
                    class,
                    ErrorClass::Connection
                        | ErrorClass::Timeout
                        | ErrorClass::Protocol
                        | ErrorClass::Tls
                ) || *delivery == Delivery::Unknown
            }
            _ => false,
        }
    }
}

/// The I/O error inside a `redis` error, if it wraps one.
pub(crate) fn io_error_of(e: &RedisError) -> Option<&std::io::Error> {
    let source = std::error::Error::source(e)?;
    // The `redis` crate keeps the I/O error behind an `Arc<dyn Error>`, which is what
    // `source` returns.
    source.downcast_ref::<std::io::Error>().or_else(|| {
        source
            .downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>()
            .and_then(|inner| (**inner).downcast_ref::<std::io::Error>())
    })
}

/// A redkit error that travelled through the `redis` crate's `ConnectionLike` surface.
fn carried(e: &RedisError) -> Option<Error> {
    io_error_of(e)?
        .get_ref()?
        .downcast_ref::<Carried>()
        .map(|c| c.0.clone())
}

/// Turns our error into a `redis` error for the [`redis::ConnectionLike`] surface, keeping
/// redkit-only errors recoverable by [`Error::from`].
pub(crate) fn to_redis_error(e: Error) -> RedisError {
    match e {
        // A redis error that converts back to the same class and delivery travels as is
        // (callers of the `redis` crate see its own kind); others are carried whole.
        Error::Redis {
            class,
            delivery,
            source,
        } if Error::from(source.clone()).class() == class
            && Error::from(source.clone()).delivery() == delivery =>
        {
            source
        }
        other => {
            let kind = if other.is_timeout() {
                std::io::ErrorKind::TimedOut
            } else {
                std::io::ErrorKind::Other
            };
            RedisError::from(std::io::Error::new(kind, Carried(other)))
        }
    }
}

/// A redkit error travelling inside a `redis::RedisError` (see [`to_redis_error`]).
#[derive(Debug)]
pub(crate) struct Carried(pub(crate) Error);

impl fmt::Display for Carried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Carried {}

/// Classifies a `redis` crate error from its kind, server code and I/O error kind.
pub(crate) fn classify(e: &RedisError) -> ErrorClass {
    if e.is_timeout() {
        return ErrorClass::Timeout;
    }
    match e.kind() {
        ErrorKind::Io => {
            // The `redis` crate reports a failed TLS handshake as a bare I/O error that wraps
            // no `std::io::Error` (every real socket error wraps one).
            if std::error::Error::source(e).is_none() && e.detail().is_some() {
                ErrorClass::Tls
            } else {
                ErrorClass::Connection
            }
        }
        ErrorKind::AuthenticationFailed => ErrorClass::Auth,
        ErrorKind::Server(kind) => match kind {
            ServerErrorKind::NoPerm => ErrorClass::Permission,
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ClusterDown => ErrorClass::Busy,
            ServerErrorKind::ReadOnly => ErrorClass::ReadOnly,
            ServerErrorKind::Moved | ServerErrorKind::Ask => ErrorClass::ClusterRedirect,
            ServerErrorKind::NoScript => ErrorClass::Script,
            _ => ErrorClass::Command,
        },
        ErrorKind::Extension => match e.code() {
            Some("WRONGPASS") | Some("NOAUTH") => ErrorClass::Auth,
            Some("BUSY") | Some("NOREPLICAS") => ErrorClass::Busy,
            _ => ErrorClass::Command,
        },
        // The `redis` crate reports both a reply that does not convert to the requested type
        // and a corrupt byte stream as `Parse`; redkit tells them apart by where they arise
        // (see `Error::from_wire`).
        ErrorKind::UnexpectedReturnType | ErrorKind::Parse => ErrorClass::Conversion,
        ErrorKind::InvalidClientConfig | ErrorKind::RESP3NotSupported => ErrorClass::Config,
        ErrorKind::ClusterConnectionNotFound => ErrorClass::Connection,
        _ => ErrorClass::Other,
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Redis {
                class,
                delivery,
                source,
            } => {
                write!(f, "redis {class} error: {source}")?;
                if *delivery == Delivery::Unknown {
                    f.write_str(" (the command may or may not have run)")?;
                }
                Ok(())
            }
            Error::PoolTimeout { waited } => {
                write!(f, "no pooled connection became available within {waited:?}")
            }
            Error::CircuitOpen { retry_after } => write!(
                f,
                "circuit breaker is open: failing fast, next probe in {retry_after:?}"
            ),
            Error::TransactionConflict { attempts } => write!(
                f,
                "transaction aborted by concurrent writes on all {attempts} attempts"
            ),
            Error::Config { setting, reason } => {
                write!(f, "invalid configuration `{setting}`: {reason}")
            }
            Error::Closed => f.write_str("the redis handle is closed"),
            Error::RateLimited {
                retry_after: Some(d),
            } => write!(f, "rate limited: retry after {d:?}"),
            Error::RateLimited { retry_after: None } => {
                f.write_str("rate limited: the request is larger than the limit can ever grant")
            }
            Error::LockTimeout { waited } => {
                write!(f, "the lock stayed held by others for {waited:?}")
            }
            Error::NotReplicated {
                name,
                acknowledged,
                wanted,
                waited,
            } => write!(
                f,
                "lock {name}: {acknowledged} of {wanted} replicas confirmed the acquisition \
                 within {waited:?}; it was released"
            ),
            Error::Background { thread, reason } => {
                write!(f, "background thread `{thread}` failed: {reason}")
            }
            Error::Decode { key, reason } => {
                write!(f, "the value at `{key}` could not be decoded: {reason}")
            }
            Error::ServerTooOld {
                feature,
                needs,
                server,
            } => write!(f, "`{feature}` needs {needs}; the server is {server}"),
            Error::WrongConnection { command, instead } => {
                write!(f, "`{command}` cannot run on this connection: {instead}")
            }
            Error::TooLarge {
                what,
                size: Some(size),
                limit,
            } => write!(
                f,
                "the {what} is {size} bytes, over the limit of {limit} bytes"
            ),
            Error::TooLarge {
                what,
                size: None,
                limit,
            } => write!(f, "the {what} is over the limit of {limit} bytes"),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Redis {
                class,
                delivery,
                source,
            } => f
                .debug_struct("Redis")
                .field("class", class)
                .field("delivery", delivery)
                .field("source", &format_args!("{source}"))
                .finish(),
            Error::PoolTimeout { waited } => f
                .debug_struct("PoolTimeout")
                .field("waited", waited)
                .finish(),
            Error::CircuitOpen { retry_after } => f
                .debug_struct("CircuitOpen")
                .field("retry_after", retry_after)
                .finish(),
            Error::TransactionConflict { attempts } => f
                .debug_struct("TransactionConflict")
                .field("attempts", attempts)
                .finish(),
            Error::Config { setting, reason } => f
                .debug_struct("Config")
                .field("setting", setting)
                .field("reason", reason)
                .finish(),
            Error::Closed => f.write_str("Closed"),
            Error::RateLimited { retry_after } => f
                .debug_struct("RateLimited")
                .field("retry_after", retry_after)
                .finish(),
            Error::LockTimeout { waited } => f
                .debug_struct("LockTimeout")
                .field("waited", waited)
                .finish(),
            Error::NotReplicated {
                name,
                acknowledged,
                wanted,
                waited,
            } => f
                .debug_struct("NotReplicated")
                .field("name", name)
                .field("acknowledged", acknowledged)
                .field("wanted", wanted)
                .field("waited", waited)
                .finish(),
            Error::Background { thread, reason } => f
                .debug_struct("Background")
                .field("thread", thread)
                .field("reason", reason)
                .finish(),
            Error::Decode { key, reason } => f
                .debug_struct("Decode")
                .field("key", key)
                .field("reason", reason)
                .finish(),
            Error::ServerTooOld {
                feature,
                needs,
                server,
            } => f
                .debug_struct("ServerTooOld")
                .field("feature", feature)
                .field("needs", needs)
                .field("server", server)
                .finish(),
            Error::TooLarge { what, size, limit } => f
                .debug_struct("TooLarge")
                .field("what", what)
                .field("size", size)
                .field("limit", limit)
                .finish(),
            Error::WrongConnection { command, instead } => f
                .debug_struct("WrongConnection")
                .field("command", command)
                .field("instead", instead)
                .finish(),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Redis { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<RedisError> for Error {
    /// Converts an error from direct use of the `redis` crate (a reply error, a conversion
    /// error). Its delivery is taken to be [`Delivery::Unknown`] for connection trouble and
    /// [`Delivery::Answered`] otherwise.
    fn from(e: RedisError) -> Error {
        let delivery = if e.is_io_error() {
            Delivery::Unknown
        } else {
            Delivery::Answered
        };
        Error::from_redis(e, delivery)
    }
}

impl From<crossbeam_channel::RecvError> for Error {
    /// A subscription (or event listener) whose sender is gone: the subscriber, handle or
    /// queue was closed. Lets `?` turn `Subscription::recv` into `redkit::Result`.
    fn from(_: crossbeam_channel::RecvError) -> Error {
        Error::Closed
    }
}

impl From<crossbeam_channel::RecvTimeoutError> for Error {
    /// Nothing arrived in time (a [`ErrorClass::Timeout`] error, nothing was sent), or the
    /// sender is gone ([`Error::Closed`]).
    fn from(e: crossbeam_channel::RecvTimeoutError) -> Error {
        match e {
            crossbeam_channel::RecvTimeoutError::Timeout => Error::io(
                std::io::ErrorKind::TimedOut,
                "nothing was received in time",
                Delivery::NotSent,
            ),
            crossbeam_channel::RecvTimeoutError::Disconnected => Error::Closed,
        }
    }
}

impl From<crossbeam_channel::TryRecvError> for Error {
    /// Nothing is waiting (a [`ErrorClass::Timeout`] error), or the sender is gone
    /// ([`Error::Closed`]).
    fn from(e: crossbeam_channel::TryRecvError) -> Error {
        match e {
            crossbeam_channel::TryRecvError::Empty => Error::io(
                std::io::ErrorKind::WouldBlock,
                "nothing is waiting to be received",
                Delivery::NotSent,
            ),
            crossbeam_channel::TryRecvError::Disconnected => Error::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn receive_errors_convert_with_question_marks() {
        let f = || -> Result<()> {
            let (tx, rx) = crossbeam_channel::bounded::<()>(1);
            drop(tx);
            rx.recv()?;
            Ok(())
        };
        assert!(matches!(f(), Err(Error::Closed)));
        let g = || -> Result<()> {
            let (_tx, rx) = crossbeam_channel::bounded::<()>(1);
            rx.recv_timeout(std::time::Duration::from_millis(1))?;
            Ok(())
        };
        assert_eq!(g().map_err(|e| e.class()), Err(ErrorClass::Timeout));
        let h = || -> Result<()> {
            let (_tx, rx) = crossbeam_channel::bounded::<()>(1);
            rx.try_recv()?;
            Ok(())
        };
        assert_eq!(h().map_err(|e| e.class()), Err(ErrorClass::Timeout));
    }

    #[test]
    fn redkit_errors_survive_the_connection_like_surface() {
        let waited = std::time::Duration::from_millis(5);
        let through = to_redis_error(Error::PoolTimeout { waited });
        assert!(matches!(Error::from(through), Error::PoolTimeout { .. }));
        let open = to_redis_error(Error::CircuitOpen {
            retry_after: waited,
        });
        assert_eq!(Error::from(open).class(), ErrorClass::CircuitOpen);
    }

    fn server_err(reply: &[u8]) -> RedisError {
        match redis::parse_redis_value(reply) {
            Ok(v) => match v.extract_error() {
                Err(e) => e,
                Ok(v) => panic!("not an error: {v:?}"),
            },
            Err(e) => e,
        }
    }

    #[test]
    fn classifies_server_codes() {
        let cases: &[(&[u8], ErrorClass)] = &[
            (
                b"-WRONGTYPE Operation against a key\r\n",
                ErrorClass::Command,
            ),
            (b"-ERR unknown command\r\n", ErrorClass::Command),
            (
                b"-NOPERM this user has no permissions\r\n",
                ErrorClass::Permission,
            ),
            (
                b"-WRONGPASS invalid username-password pair\r\n",
                ErrorClass::Auth,
            ),
            (b"-NOAUTH Authentication required.\r\n", ErrorClass::Auth),
            (b"-LOADING Redis is loading\r\n", ErrorClass::Busy),
            (
                b"-BUSY Redis is busy running a script\r\n",
                ErrorClass::Busy,
            ),
            (
                b"-READONLY You can't write against a read only replica.\r\n",
                ErrorClass::ReadOnly,
            ),
            (
                b"-MOVED 3999 127.0.0.1:6381\r\n",
                ErrorClass::ClusterRedirect,
            ),
            (b"-NOSCRIPT No matching script\r\n", ErrorClass::Script),
        ];
        for (reply, class) in cases {
            let e = Error::from_redis(server_err(reply), Delivery::Answered);
            assert_eq!(e.class(), *class, "{}", String::from_utf8_lossy(reply));
        }
    }

    #[test]
    fn classifies_io() {
        let timeout = RedisError::from(io::Error::from(io::ErrorKind::WouldBlock));
        assert_eq!(classify(&timeout), ErrorClass::Timeout);
        let reset = RedisError::from(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(classify(&reset), ErrorClass::Connection);
        let handshake = RedisError::from((ErrorKind::Io, "SSL Handshake error", "x".to_string()));
        assert_eq!(classify(&handshake), ErrorClass::Tls);
    }

    #[test]
    fn poisoning() {
        let timeout = Error::from_redis(
            RedisError::from(io::Error::from(io::ErrorKind::TimedOut)),
            Delivery::Unknown,
        );
        assert!(timeout.poisons_connection());
        assert!(timeout.is_timeout() && timeout.is_retryable());
        let wrongtype = Error::from_redis(server_err(b"-WRONGTYPE x\r\n"), Delivery::Answered);
        assert!(!wrongtype.poisons_connection());
        assert!(!wrongtype.is_retryable());
    }
}
