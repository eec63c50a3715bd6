//! `redkit`: a command line for the people who operate services built on redkit. It reads
//! redkit's own formats (framed cache values, job fields, lock values) through the library's
//! public API, so an operator never needs to know them.
//!
//! Exit codes (scripts rely on them):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | failed: the server refused the command, or a value could not be decoded |
//! | 2 | usage: bad arguments (the message says which) |
//! | 3 | not found: no such queue, dead letter, cache entry or session user |
//! | 4 | unreachable: the server could not be reached in time (refused, timed out) |
//! | 5 | configuration: a bad URL, no URL given, an unknown connection name |
//! | 6 | refused: authentication or permission (ACL) denied |

mod cmd;
mod out;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use redkit::{Error, ErrorClass, Redis};

/// Inspect and operate redkit queues, locks, limits, caches, sessions and keys.
#[derive(Debug, Parser)]
#[command(name = "redkit", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    /// Print JSON (for scripts) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Conn {
    /// The server's URL (redis://, rediss://, redis+sentinel://, redis+cluster://...).
    #[arg(long, env = "REDIS_URL", global = true, hide_env_values = true)]
    url: Option<String>,
    /// A connection name from the environment: REDIS_URL_<NAME> (as redkit's Registry).
    /// (Wins over --url and REDIS_URL.)
    #[arg(long = "redis", id = "redis_name", value_name = "NAME", global = true)]
    name: Option<String>,
    /// Connect and response timeout.
    #[arg(long, global = true, default_value = "5s", value_parser = out::parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The server: version, memory, clients, throughput, replication, keyspace (INFO, typed).
    Info,
    /// The slowest recent commands (SLOWLOG GET).
    Slowlog {
        /// How many entries.
        #[arg(long, default_value_t = 20)]
        count: usize,
    },
    /// Stream queues: stats, dead letters, replay, purge, pending jobs.
    #[command(subcommand)]
    Queue(QueueCmd),
    /// Locks.
    #[command(subcommand)]
    Lock(LockCmd),
    /// Rate limiters.
    #[command(subcommand)]
    Limit(LimitCmd),
    /// Caches (values decoded from redkit's frame).
    #[command(subcommand)]
    Cache(CacheCmd),
    /// Session stores.
    #[command(subcommand)]
    Sessions(SessionCmd),
    /// Keys by pattern and type, with counts and memory (SCAN).
    Keys {
        /// A glob pattern (SCAN MATCH).
        #[arg(long, default_value = "*")]
        pattern: String,
        /// Only keys of this type (string, list, set, zset, hash, stream).
        #[arg(long = "type")]
        kind: Option<String>,
        /// Keys listed one by one (the counts cover every key).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Skip MEMORY USAGE (faster on big keyspaces).
        #[arg(long)]
        no_memory: bool,
    },
}

#[derive(Debug, Args)]
struct QueueArgs {
    /// The queue's name (as given to `StreamQueue::builder`).
    queue: String,
    /// The consumer group.
    #[arg(long, default_value = "workers")]
    group: String,
}

#[derive(Debug, Subcommand)]
enum QueueCmd {
    /// Length, pending, lag, delayed, dead letters, consumers.
    Stats(QueueArgs),
    /// Dead letters, oldest first.
    Dead {
        #[command(flatten)]
        q: QueueArgs,
        /// How many.
        #[arg(long, default_value_t = 20)]
        count: usize,
        /// Start at this id (the next page starts after the last id shown).
        #[arg(long, default_value = "-")]
        from: String,
    },
    /// Put dead letters back into the queue as fresh jobs (each runs once).
    Replay(DeadSelect),
    /// Delete dead letters.
    Purge(DeadSelect),
    /// Jobs taken and not acknowledged: who holds them, for how long.
    Pending {
        #[command(flatten)]
        q: QueueArgs,
        /// How many per priority level.
        #[arg(long, default_value_t = 50)]
        count: usize,
    },
}

#[derive(Debug, Args)]
struct DeadSelect {
    #[command(flatten)]
    q: QueueArgs,
    /// One dead letter, by id.
    #[arg(conflicts_with_all = ["all", "from"], required_unless_present_any = ["all", "from"])]
    id: Option<String>,
    /// Every dead letter there is now.
    #[arg(long)]
    all: bool,
    /// The first id of a range.
    #[arg(long, requires = "to")]
    from: Option<String>,
    /// The last id of a range.
    #[arg(long, requires = "from")]
    to: Option<String>,
}

#[derive(Debug, Subcommand)]
enum LockCmd {
    /// Holder, TTL, fencing token, queued waiters.
    Show {
        /// The lock's name.
        name: String,
        /// The lock keys' prefix.
        #[arg(long, default_value = "redkit:lock:")]
        prefix: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LimitKind {
    Gcra,
    FixedWindow,
    SlidingWindow,
    SlidingLog,
    TokenBucket,
}

#[derive(Debug, Args)]
struct LimitArgs {
    /// The limiter's algorithm.
    kind: LimitKind,
    /// The limiter's name.
    name: String,
    /// The subject (user, IP, API key...).
    subject: String,
    /// The limiters' key prefix.
    #[arg(long, default_value = "redkit:rl:")]
    prefix: String,
}

#[derive(Debug, Subcommand)]
enum LimitCmd {
    /// How many units a subject has left (takes none). Needs the limit it runs with.
    Peek {
        #[command(flatten)]
        l: LimitArgs,
        /// The limit: units per period (token bucket: its capacity).
        #[arg(long)]
        limit: u64,
        /// The period (token bucket: the refill period, one unit each).
        #[arg(long, value_parser = out::parse_duration)]
        per: Duration,
        /// GCRA burst.
        #[arg(long)]
        burst: Option<u64>,
    },
    /// Forget a subject's state: its whole limit is available again.
    Reset(LimitArgs),
}

#[derive(Debug, Args)]
struct CacheArgs {
    /// The cache's name.
    cache: String,
    /// The caches' key prefix.
    #[arg(long, default_value = "redkit:cache:")]
    prefix: String,
}

#[derive(Debug, Subcommand)]
enum CacheCmd {
    /// One entry, decoded: value, kind, TTL, load time.
    Get {
        #[command(flatten)]
        c: CacheArgs,
        key: String,
    },
    /// Delete every key under a tag.
    InvalidateTag {
        #[command(flatten)]
        c: CacheArgs,
        tag: String,
    },
    /// Delete every key matching a glob pattern (within the cache).
    InvalidatePattern {
        #[command(flatten)]
        c: CacheArgs,
        pattern: String,
    },
}

#[derive(Debug, Args)]
struct SessionArgs {
    /// The session store's name.
    store: String,
    /// The user.
    user: String,
    /// The stores' key prefix.
    #[arg(long)]
    prefix: Option<String>,
}

#[derive(Debug, Subcommand)]
enum SessionCmd {
    /// How many live sessions a user has.
    Count(SessionArgs),
    /// A user's live sessions (ids shortened; field names, not values).
    List(SessionArgs),
    /// Destroy every session of a user.
    DestroyUser(SessionArgs),
}

/// An error with the exit code it means.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let code = match &e {
            Error::NotFound { .. } => 3,
            Error::Config { .. } => 5,
            e if e.is_connection() || e.is_timeout() => 4,
            e if matches!(e.class(), ErrorClass::CircuitOpen | ErrorClass::Closed) => 4,
            e if matches!(e.class(), ErrorClass::Auth | ErrorClass::Permission) => 6,
            _ => 1,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

impl Failure {
    pub fn not_found(message: String) -> Failure {
        Failure { code: 3, message }
    }

    pub fn usage(message: String) -> Failure {
        Failure { code: 2, message }
    }
}

fn connect(conn: &Conn) -> Result<Redis, Failure> {
    let timeouts = redkit::Timeouts::default()
        .connect(conn.timeout)
        .response(conn.timeout)
        .checkout(conn.timeout);
    let config = match (&conn.url, &conn.name) {
        (_, Some(name)) => {
            let registry = redkit::Registry::from_env()?;
            let known = registry.list().into_iter().any(|e| e.name == *name);
            if !known {
                return Err(Failure {
                    code: 5,
                    message: format!(
                        "no connection named `{name}`: set REDIS_URL_{}",
                        name.to_uppercase()
                    ),
                });
            }
            // Connects with the entry's settings and our timeouts.
            let redis = registry.get(name)?;
            let config = redis.config().to_builder().timeouts(timeouts).build()?;
            let _ = redis.close();
            config
        }
        (Some(url), None) => redkit::Config::from_url(url)?
            .to_builder()
            .timeouts(timeouts)
            .build()?,
        (None, None) => {
            return Err(Failure {
                code: 5,
                message: "no server given: pass --url, set REDIS_URL, or --redis NAME".to_owned(),
            })
        }
    };
    Ok(Redis::connect(config)?)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let out = out::Out { json: cli.json };
    let result = connect(&cli.conn).and_then(|redis| {
        let r = cmd::run(&redis, &out, cli.command);
        let _ = redis.close();
        r
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if out.json {
                out.json(serde_json::json!({ "error": f.message, "exit_code": f.code }));
            }
            eprintln!("redkit: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
