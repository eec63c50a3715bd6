//! Server-side sessions: random ids, sliding expiry, atomic field merges, and a per-user
//! index (never `KEYS`).
//!
//! ```no_run
//! use std::time::Duration;
//! use redkit::session::SessionStore;
//!
//! let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
//! let sessions = SessionStore::builder(&redis, "web")
//!     .ttl(Duration::from_secs(1800))
//!     .build()?;
//!
//! let s = sessions.create("user:42", &[("theme", "dark")])?;
//! // Each read extends the session by the TTL (sliding expiry).
//! let again = sessions.get(&s.id)?.expect("live");
//! assert_eq!(again.fields["theme"], "dark");
//! // Two writers merging different fields never lose one another's.
//! sessions.update(&s.id, &[("cart", "3 items")])?;
//! // Sign out everywhere.
//! assert_eq!(sessions.count("user:42")?, 1);
//! sessions.destroy_user("user:42")?;
//! # Ok::<(), redkit::Error>(())
//! ```
//!
//! ## Layout
//!
//! Each user has a *shard*: four hex digits from the hash slot of the user's name. A store
//! named `web` keeps session `<id>` in the hash `redkit:session:web:s:{<shard>}:<id>` (the
//! session's fields, plus the reserved fields `__user` and `__created`) and user `<u>`'s
//! session ids in the set `redkit:session:web:u:{<shard>}:<u>`. A session id starts with
//! its user's shard (then 128 random bits), so a session, its user's other sessions and
//! the user's index share one hash tag: on Redis Cluster they live in one slot, and every
//! operation (create, read and touch, update, destroy, a user's sessions, destroying them
//! all) is one script, atomic. Different users' sessions spread over every slot.
//!
//! The index set lives as long as the user's longest-lived session; ids of sessions that
//! expired are pruned whenever the index is read.
//!
//! ## Expiry, merges, typed data
//!
//! Expiry slides: every read ([`SessionStore::get`]), [`touch`](SessionStore::touch) and
//! change ([`update`](SessionStore::update), [`remove_fields`](SessionStore::remove_fields))
//! extends the session by the TTL, and its user's index with it. A change merges fields in
//! one script, so two writers of different fields never lose each other's (the test suite
//! runs 2 threads of 200 updates each and finds every field), and it never recreates a
//! session that was destroyed or has expired: it returns `false` instead.
//! [`sessions_of`](SessionStore::sessions_of), [`count`](SessionStore::count) and
//! [`destroy_user`](SessionStore::destroy_user) see only live sessions.
//!
//! With the `json` feature, `create_json`, `update_json` and `get_json` store a type that
//! serializes to a JSON object, one hash field per top-level field, so merges stay atomic per
//! field. `examples/sessions.rs` in the repository signs a user in on two devices, merges
//! fields from two threads and signs out everywhere.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::script::static_script;
use crate::Redis;

static_script!(create_script, "create.lua");
static_script!(touch_script, "touch.lua");
static_script!(destroy_script, "destroy.lua");
static_script!(user_sessions_script, "user_sessions.lua");

const USER_FIELD: &str = "__user";
const CREATED_FIELD: &str = "__created";

/// A session read from the store.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The session id: its user's shard (4 hex digits, see the [module docs](self)) and 128
    /// random bits from the operating system, in hex.
    pub id: String,
    /// The user the session belongs to.
    pub user: String,
    /// When it was created (the creating client's clock).
    pub created: SystemTime,
    /// The session's fields.
    pub fields: BTreeMap<String, String>,
}

/// Builds a [`SessionStore`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct SessionStoreBuilder {
    redis: Redis,
    name: String,
    prefix: String,
    ttl: Duration,
}

impl SessionStoreBuilder {
    /// The prefix in front of the store's name in every key. Defaults to `redkit:session:`
    /// (after the handle's own key prefix, if any).
    pub fn prefix(mut self, prefix: &str) -> SessionStoreBuilder {
        self.prefix = prefix.to_owned();
        self
    }

    /// How long a session lives after it was last created, read, touched or updated.
    /// Defaults to 30 minutes.
    pub fn ttl(mut self, ttl: Duration) -> SessionStoreBuilder {
        self.ttl = ttl;
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<SessionStore> {
        if self.ttl < Duration::from_millis(1) {
            return Err(Error::config("session.ttl", "must be at least 1 ms"));
        }
        if self.name.is_empty() {
            return Err(Error::config("session.name", "must not be empty"));
        }
        let namespace = self.redis.key(&format!("{}{}:", self.prefix, self.name));
        Ok(SessionStore {
            redis: self.redis,
            namespace,
            ttl_ms: u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX),
        })
    }
}

/// A session store on a [`Redis`] handle. Cheap to clone. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct SessionStore {
    redis: Redis,
    namespace: String,
    ttl_ms: u64,
}

impl SessionStore {
    /// A store named `name` (part of its keys) with default settings.
    pub fn new(redis: &Redis, name: &str) -> Result<SessionStore> {
        SessionStore::builder(redis, name).build()
    }

    /// A builder for a store named `name`.
    pub fn builder(redis: &Redis, name: &str) -> SessionStoreBuilder {
        SessionStoreBuilder {
            redis: redis.unprefixed(),
            name: name.to_owned(),
            prefix: "redkit:session:".to_owned(),
            ttl: Duration::from_secs(30 * 60),
        }
    }

    /// The Redis key of a session's hash.
    pub fn key(&self, id: &str) -> String {
        format!("{}{id}", self.session_prefix(id_shard(id)))
    }

    /// The Redis key of a user's index set.
    pub fn user_key(&self, user: &str) -> String {
        format!("{}{user}", self.index_prefix(&shard(user)))
    }

    /// `...:s:{<shard>}:`: the keys of the sessions of a shard's users start so.
    fn session_prefix(&self, shard: &str) -> String {
        format!("{}s:{{{shard}}}:", self.namespace)
    }

    /// `...:u:{<shard>}:`: the index keys of a shard's users start so.
    fn index_prefix(&self, shard: &str) -> String {
        format!("{}u:{{{shard}}}:", self.namespace)
    }

    /// The session TTL.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }

    /// Creates a session for `user` with a fresh random id and `fields`. Field names
    /// starting with `__` are reserved.
    pub fn create(&self, user: &str, fields: &[(&str, &str)]) -> Result<Session> {
        check_fields(fields.iter().map(|(k, _)| *k))?;
        let created = SystemTime::now();
        let created_ms = created
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
            .to_string();
        // A collision of 128 random bits does not happen; the script refuses to overwrite
        // anyway, and a second id is drawn.
        for _ in 0..3 {
            let id = format!("{}{}", shard(user), new_id()?);
            let mut call = create_script()
                .key(self.key(&id))
                .key(self.user_key(user))
                .arg(self.ttl_ms)
                .arg(&id)
                .arg(USER_FIELD)
                .arg(user)
                .arg(CREATED_FIELD)
                .arg(&created_ms);
            for (k, v) in fields {
                call = call.arg(*k).arg(*v);
            }
            let created_now: i64 = call.run(&self.redis)?;
            if created_now == 1 {
                return Ok(Session {
                    id,
                    user: user.to_owned(),
                    created: UNIX_EPOCH
                        + Duration::from_millis(created_ms.parse().unwrap_or_default()),
                    fields: fields
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                });
            }
        }
        Err(Error::config(
            "session.id",
            "three random session ids in a row were taken",
        ))
    }

    /// The session, extending its life by the TTL (sliding expiry); `None` when it does not
    /// exist (expired or destroyed).
    pub fn get(&self, id: &str) -> Result<Option<Session>> {
        let reply: Option<Vec<(String, String)>> = self.touch_call(id, true, &[], &[])?;
        reply.map(|pairs| self.session(id, pairs)).transpose()
    }

    /// Extends the session's life by the TTL. Returns whether it exists.
    pub fn touch(&self, id: &str) -> Result<bool> {
        let reply: Option<Vec<(String, String)>> = self.touch_call(id, false, &[], &[])?;
        Ok(reply.is_some())
    }

    /// Merges `fields` into the session atomically (fields not named are left as they are,
    /// so concurrent writers of different fields never lose each other's) and extends its
    /// life. Returns `false` when the session does not exist: it is never recreated.
    pub fn update(&self, id: &str, fields: &[(&str, &str)]) -> Result<bool> {
        self.modify(id, fields, &[])
    }

    /// Removes fields from the session atomically and extends its life. Returns `false`
    /// when the session does not exist.
    pub fn remove_fields(&self, id: &str, fields: &[&str]) -> Result<bool> {
        self.modify(id, &[], fields)
    }

    fn modify(&self, id: &str, set: &[(&str, &str)], remove: &[&str]) -> Result<bool> {
        check_fields(set.iter().map(|(k, _)| *k).chain(remove.iter().copied()))?;
        let reply: Option<Vec<(String, String)>> = self.touch_call(id, false, set, remove)?;
        Ok(reply.is_some())
    }

    /// Like [`SessionStore::get`], on a connection of your own (any
    /// [`redis::ConnectionLike`]: a plain `redis::Connection`, a pooled or dedicated
    /// connection), with the same keys: the session is read and its life extended in one
    /// script, with no retry and no circuit breaker of the handle's.
    pub fn get_on(&self, con: &mut dyn redis::ConnectionLike, id: &str) -> Result<Option<Session>> {
        let reply: Option<Vec<(String, String)>> =
            self.touch_script_call(id, true, &[], &[]).invoke(con)?;
        reply.map(|pairs| self.session(id, pairs)).transpose()
    }

    fn touch_call(
        &self,
        id: &str,
        read: bool,
        set: &[(&str, &str)],
        remove: &[&str],
    ) -> Result<Option<Vec<(String, String)>>> {
        self.touch_script_call(id, read, set, remove)
            .run(&self.redis)
    }

    fn touch_script_call(
        &self,
        id: &str,
        read: bool,
        set: &[(&str, &str)],
        remove: &[&str],
    ) -> crate::ScriptCall {
        let mut call = touch_script()
            .key(self.key(id))
            .arg(self.ttl_ms)
            .arg(self.index_prefix(id_shard(id)))
            .arg(if read { "1" } else { "0" })
            .arg(remove.len());
        for f in remove {
            call = call.arg(*f);
        }
        for (k, v) in set {
            call = call.arg(*k).arg(*v);
        }
        call
    }

    fn session(&self, id: &str, pairs: Vec<(String, String)>) -> Result<Session> {
        let mut user = None;
        let mut created = UNIX_EPOCH;
        let mut fields = BTreeMap::new();
        for (k, v) in pairs {
            match k.as_str() {
                USER_FIELD => user = Some(v),
                CREATED_FIELD => {
                    created += Duration::from_millis(v.parse().unwrap_or_default());
                }
                _ => {
                    fields.insert(k, v);
                }
            }
        }
        let user = user.ok_or_else(|| Error::Decode {
            key: self.key(id),
            reason: "not a redkit session (no user field)".to_owned(),
        })?;
        Ok(Session {
            id: id.to_owned(),
            user,
            created,
            fields,
        })
    }

    /// Destroys the session. Returns whether it existed.
    pub fn destroy(&self, id: &str) -> Result<bool> {
        let n: i64 = destroy_script()
            .key(self.key(id))
            .arg(self.index_prefix(id_shard(id)))
            .arg(id)
            .run(&self.redis)?;
        Ok(n > 0)
    }

    /// The ids of `user`'s live sessions (ids of expired sessions are pruned from the index).
    pub fn sessions_of(&self, user: &str) -> Result<Vec<String>> {
        user_sessions_script()
            .key(self.user_key(user))
            .arg(self.session_prefix(&shard(user)))
            .arg("0")
            .run(&self.redis)
    }

    /// How many live sessions `user` has.
    pub fn count(&self, user: &str) -> Result<u64> {
        Ok(self.sessions_of(user)?.len() as u64)
    }

    /// Destroys every session of `user`, atomically. Returns how many there were.
    pub fn destroy_user(&self, user: &str) -> Result<u64> {
        user_sessions_script()
            .key(self.user_key(user))
            .arg(self.session_prefix(&shard(user)))
            .arg("1")
            .run(&self.redis)
    }
}

#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
impl SessionStore {
    /// Creates a session whose data is `data`, a type that serializes to a JSON object:
    /// each top-level field becomes one hash field holding its JSON text.
    pub fn create_json<T: serde::Serialize>(&self, user: &str, data: &T) -> Result<Session> {
        let fields = json_fields(&self.key("(new)"), data)?;
        let borrowed: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.create(user, &borrowed)
    }

    /// Merges the top-level fields of `data` into the session (see [`SessionStore::update`]).
    pub fn update_json<T: serde::Serialize>(&self, id: &str, data: &T) -> Result<bool> {
        let fields = json_fields(&self.key(id), data)?;
        let borrowed: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.update(id, &borrowed)
    }

    /// The session's data as `T` (extending its life, as [`SessionStore::get`] does). A
    /// field that is not JSON, or data that does not fit `T`, is an [`Error::Decode`].
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, id: &str) -> Result<Option<T>> {
        let Some(session) = self.get(id)? else {
            return Ok(None);
        };
        let decode = |reason: String| Error::Decode {
            key: self.key(id),
            reason,
        };
        let mut object = serde_json::Map::new();
        for (k, v) in session.fields {
            let value = serde_json::from_str(&v).map_err(|e| decode(format!("field {k}: {e}")))?;
            object.insert(k, value);
        }
        serde_json::from_value(serde_json::Value::Object(object))
            .map(Some)
            .map_err(|e| decode(e.to_string()))
    }
}

#[cfg(feature = "json")]
fn json_fields<T: serde::Serialize>(key: &str, data: &T) -> Result<Vec<(String, String)>> {
    let err = |reason: String| Error::Decode {
        key: key.to_owned(),
        reason,
    };
    match serde_json::to_value(data).map_err(|e| err(e.to_string()))? {
        serde_json::Value::Object(map) => {
            Ok(map.into_iter().map(|(k, v)| (k, v.to_string())).collect())
        }
        other => Err(err(format!(
            "session data must serialize to a JSON object, not {other}"
        ))),
    }
}

fn check_fields<'a>(mut names: impl Iterator<Item = &'a str>) -> Result<()> {
    match names.find(|n| n.starts_with("__")) {
        Some(n) => Err(Error::config(
            "session.field",
            format!("field names starting with `__` are reserved: {n}"),
        )),
        None => Ok(()),
    }
}

/// 128 random bits from the operating system, in hex.
fn new_id() -> Result<String> {
    Ok(crate::util::ids::token())
}

/// How many hex digits of a session id name its user's shard.
const SHARD_DIGITS: usize = 4;

/// A user's shard: the hash slot of the user's name, as four hex digits (the hash tag of
/// the user's keys; 16384 of them spread over every slot).
fn shard(user: &str) -> String {
    format!("{:04x}", crate::cluster::route::slot(user.as_bytes()))
}

/// The shard a session id starts with (an id of another form is a shard of its own).
fn id_shard(id: &str) -> &str {
    match id.get(..SHARD_DIGITS) {
        Some(s) if id.len() > SHARD_DIGITS && s.bytes().all(|b| b.is_ascii_hexdigit()) => s,
        _ => id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_128_random_bits() {
        let a = new_id().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_id().unwrap());
    }

    #[test]
    fn a_session_shares_its_users_hash_tag() {
        let user = "user:42";
        let id = format!("{}{}", shard(user), new_id().unwrap());
        assert_eq!(id.len(), 36);
        assert_eq!(id_shard(&id), shard(user));
        let slot = |k: &str| crate::cluster::route::slot(k.as_bytes());
        assert_eq!(
            slot(&format!("p:s:{{{}}}:{id}", id_shard(&id))),
            slot(&format!("p:u:{{{}}}:{user}", shard(user)))
        );
        // Anything else is a shard of its own, never a panic.
        assert_eq!(id_shard("ab"), "ab");
        assert_eq!(id_shard("é€xyz"), "é€xyz");
        assert_eq!(id_shard(""), "");
    }

    #[test]
    fn reserved_fields_are_refused() {
        assert!(check_fields(["a", "b"].into_iter()).is_ok());
        assert!(check_fields(["a", "__user"].into_iter()).is_err());
    }
}
