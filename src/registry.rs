//! Named connections: one [`Redis`] handle per name, each with its own configuration and
//! key prefix, configured in code or from environment variables, connected on first use.
//!
//! ```no_run
//! use redkit::Registry;
//!
//! // REDIS_URL=redis://10.0.0.1/0
//! // REDIS_URL_CACHE=redis://10.0.0.2/0?key_prefix=cache:
//! // REDIS_URL_JOBS=rediss://jobs:secret@10.0.0.3/2
//! let registry = Registry::from_env()?;
//! let jobs = registry.get("jobs")?;          // REDIS_URL_JOBS, connected now
//! let main = registry.get_default()?;       // REDIS_URL
//! for entry in registry.list() {
//!     println!("{} -> {}", entry.name, entry.url); // passwords redacted
//! }
//! # Ok::<(), redkit::Error>(())
//! ```
//!
//! `REDIS_URL_<NAME>` names the connection after the variable's suffix, in lower case
//! (`REDIS_URL_JOB_QUEUE` is `job_queue`). Every URL is checked when the registry is made;
//! each handle connects on its first [`get`](Registry::get). [`Registry::from_vars`] takes
//! the variables explicitly (from a test or a config file) instead of the environment.
//!
//! A CLI job picks its connection by name (`--redis cache`) without knowing URLs (as
//! `examples/batch.rs` in the repository does), and a test swaps one name for a test server
//! with [`Registry::insert`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::client::IntoConfig;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::Redis;

/// The environment variable of the default connection.
pub const ENV_DEFAULT: &str = "REDIS_URL";
/// The prefix of the environment variables of named connections (`REDIS_URL_<NAME>`).
pub const ENV_PREFIX: &str = "REDIS_URL_";

struct Entry {
    config: Config,
    handle: Option<Redis>,
    /// Tells a replaced entry from the one a `get` started with.
    id: u64,
}

fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// One entry of [`Registry::list`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEntry {
    /// The name.
    pub name: String,
    /// The URL with the password redacted.
    pub url: String,
    /// The key prefix of the handle, if any.
    pub key_prefix: Option<String>,
    /// Whether the handle has been created (connected) yet.
    pub connected: bool,
}

/// Named [`Redis`] handles. Thread-safe; share it behind an `Arc` or a `static`.
///
/// Handles are created on the first [`get`](Registry::get) of their name and shared by every
/// later `get` (clones of one handle, one pool). No lock is held while connecting.
pub struct Registry {
    default: String,
    entries: RwLock<BTreeMap<String, Entry>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("default", &self.default)
            .field("entries", &self.list())
            .finish()
    }
}

impl Default for Registry {
    fn default() -> Registry {
        Registry::new()
    }
}

impl Registry {
    /// An empty registry whose default name is `default`.
    pub fn new() -> Registry {
        Registry {
            default: "default".to_owned(),
            entries: RwLock::new(BTreeMap::new()),
        }
    }

    /// The name [`Registry::get_default`] uses. Defaults to `default`.
    pub fn default_name(mut self, name: &str) -> Registry {
        self.default = name.to_owned();
        self
    }

    /// A registry from the process environment: `REDIS_URL` is the default connection,
    /// `REDIS_URL_<NAME>` the connection named `<name>` (lower case: `REDIS_URL_JOB_QUEUE`
    /// is `job_queue`). Every URL is validated now; nothing connects yet.
    pub fn from_env() -> Result<Registry> {
        Registry::from_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// Like [`Registry::from_env`], from the given variables (what tests and tools that
    /// read their settings elsewhere use). Variables that are neither `REDIS_URL` nor
    /// `REDIS_URL_<NAME>` are ignored.
    ///
    /// ```
    /// let registry = redkit::Registry::from_vars([
    ///     ("REDIS_URL", "redis://127.0.0.1/0"),
    ///     ("REDIS_URL_CACHE", "redis://:s3cret@127.0.0.1/1?key_prefix=cache:"),
    ///     ("HOME", "/root"),
    /// ])?;
    /// assert_eq!(registry.names(), ["cache", "default"]);
    /// assert!(!format!("{registry:?}").contains("s3cret"));
    /// # Ok::<(), redkit::Error>(())
    /// ```
    pub fn from_vars<I, K, V>(vars: I) -> Result<Registry>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let registry = Registry::new();
        for (k, v) in vars {
            let (k, v) = (k.as_ref(), v.as_ref());
            let name = if k == ENV_DEFAULT {
                registry.default.clone()
            } else if let Some(suffix) = k.strip_prefix(ENV_PREFIX) {
                if suffix.is_empty() {
                    return Err(Error::config(
                        "registry",
                        format!("{k}: no name after the prefix"),
                    ));
                }
                suffix.to_ascii_lowercase()
            } else {
                continue;
            };
            let config = Config::from_url(v).map_err(|e| {
                Error::config("registry", format!("{k} is not a valid Redis URL: {e}"))
            })?;
            registry.add(&name, config)?;
        }
        Ok(registry)
    }

    /// Adds (or replaces) the connection `name`, connected on first use. A replaced handle
    /// closes when its last clone is dropped.
    pub fn add(&self, name: &str, config: impl IntoConfig) -> Result<()> {
        let config = config.into_config()?;
        if name.is_empty() {
            return Err(Error::config(
                "registry",
                "a connection name must not be empty",
            ));
        }
        let old = self.entries.write().insert(
            name.to_owned(),
            Entry {
                config,
                handle: None,
                id: next_id(),
            },
        );
        drop(old);
        Ok(())
    }

    /// Adds (or replaces) the connection `name` with an existing handle.
    pub fn insert(&self, name: &str, redis: Redis) {
        let old = self.entries.write().insert(
            name.to_owned(),
            Entry {
                config: redis.config().clone(),
                handle: Some(redis),
                id: next_id(),
            },
        );
        drop(old);
    }

    /// The handle named `name`, connecting it on first use ([`Redis::connect`]: a server that
    /// cannot be reached is an error now, and the next `get` tries again).
    pub fn get(&self, name: &str) -> Result<Redis> {
        let (config, id) = {
            let entries = self.entries.read();
            match entries.get(name) {
                Some(Entry {
                    handle: Some(h), ..
                }) => return Ok(h.clone()),
                Some(e) => (e.config.clone(), e.id),
                None => {
                    let known: Vec<&str> = entries.keys().map(String::as_str).collect();
                    return Err(Error::config(
                        "registry",
                        format!("no connection named `{name}` (known: {})", known.join(", ")),
                    ));
                }
            }
        };
        let redis = Redis::connect(config)?;
        let mut entries = self.entries.write();
        match entries.get_mut(name) {
            // Someone else connected meanwhile: share theirs (ours closes when dropped).
            Some(Entry {
                handle: Some(h), ..
            }) => Ok(h.clone()),
            Some(e) if e.id == id => {
                e.handle = Some(redis.clone());
                Ok(redis)
            }
            // Replaced or removed meanwhile: the caller still gets what it asked for.
            _ => Ok(redis),
        }
    }

    /// The default handle (see [`Registry::default_name`]).
    pub fn get_default(&self) -> Result<Redis> {
        self.get(&self.default.clone())
    }

    /// Removes the connection `name`. Returns whether it existed. Its handle closes when
    /// its last clone is dropped.
    pub fn remove(&self, name: &str) -> bool {
        let old = self.entries.write().remove(name);
        old.is_some()
    }

    /// The names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.entries.read().keys().cloned().collect()
    }

    /// Every connection, with its URL redacted.
    pub fn list(&self) -> Vec<RegistryEntry> {
        self.entries
            .read()
            .iter()
            .map(|(name, e)| RegistryEntry {
                name: name.clone(),
                url: e.config.to_string(),
                key_prefix: e.config.key_prefix().map(str::to_owned),
                connected: e.handle.is_some(),
            })
            .collect()
    }
}
