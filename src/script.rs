//! Lua scripts with `EVALSHA` and a `NOSCRIPT` fallback, alone and inside pipelines.
//!
//! ```no_run
//! use redkit::{Pipeline, Redis, Script};
//!
//! let redis = Redis::connect("redis://127.0.0.1/")?;
//! let incr_by = Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
//!
//! // Alone: EVALSHA, and on NOSCRIPT, SCRIPT LOAD then EVALSHA again.
//! let n: i64 = incr_by.key("counter").arg(5).run(&redis)?;
//!
//! // In a pipeline (or a MULTI/EXEC transaction), with the same fallback.
//! let mut pipe = Pipeline::new();
//! pipe.invoke(&incr_by.key("a").arg(1)).invoke(&incr_by.key("b").arg(2));
//! let (a, b): (i64, i64) = redis.pipeline(&pipe)?;
//! # Ok::<(), redkit::Error>(())
//! ```

use std::sync::Arc;

use redis::{Cmd, ConnectionLike, FromRedisValue, ServerErrorKind, ToRedisArgs, Value};

use crate::error::{Delivery, Error, Result};

/// A Lua script, hashed once and reused. Cheap to clone.
#[derive(Clone)]
pub struct Script {
    inner: Arc<ScriptInner>,
}

struct ScriptInner {
    code: String,
    hash: String,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Script")
            .field("hash", &self.inner.hash)
            .finish_non_exhaustive()
    }
}

impl Script {
    /// Creates a script from its Lua source.
    pub fn new(code: &str) -> Script {
        let hash = redis::Script::new(code).get_hash().to_owned();
        Script {
            inner: Arc::new(ScriptInner {
                code: code.to_owned(),
                hash,
            }),
        }
    }

    /// The SHA1 hash `EVALSHA` uses.
    pub fn hash(&self) -> &str {
        &self.inner.hash
    }

    /// The Lua source.
    pub fn code(&self) -> &str {
        &self.inner.code
    }

    /// Starts a call with no keys and no arguments.
    pub fn call(&self) -> ScriptCall {
        ScriptCall {
            script: self.clone(),
            keys: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Starts a call with a first key.
    pub fn key<K: ToRedisArgs>(&self, key: K) -> ScriptCall {
        self.call().key(key)
    }

    /// Starts a call with a first argument.
    pub fn arg<A: ToRedisArgs>(&self, arg: A) -> ScriptCall {
        self.call().arg(arg)
    }

    /// Loads the script on the server (`SCRIPT LOAD`).
    pub fn load(&self, con: &mut dyn ConnectionLike) -> Result<()> {
        self.load_cmd().query::<String>(con)?;
        Ok(())
    }

    fn load_cmd(&self) -> Cmd {
        let mut c = redis::cmd("SCRIPT");
        c.arg("LOAD").arg(&self.inner.code);
        c
    }
}

/// One call of a [`Script`] with its keys and arguments.
#[derive(Clone, Debug)]
pub struct ScriptCall {
    script: Script,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl ScriptCall {
    /// Adds a key (`KEYS[n]`).
    pub fn key<K: ToRedisArgs>(mut self, key: K) -> ScriptCall {
        self.keys.extend(key.to_redis_args());
        self
    }

    /// Adds an argument (`ARGV[n]`).
    pub fn arg<A: ToRedisArgs>(mut self, arg: A) -> ScriptCall {
        self.args.extend(arg.to_redis_args());
        self
    }

    /// The script being called.
    pub fn script(&self) -> &Script {
        &self.script
    }

    /// The `EVALSHA` command for this call.
    pub fn evalsha_cmd(&self) -> Cmd {
        let mut c = redis::cmd("EVALSHA");
        c.arg(self.script.hash())
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        c
    }

    /// Runs the call on any connection: `EVALSHA`, and on `NOSCRIPT`, `SCRIPT LOAD` and
    /// `EVALSHA` again.
    pub fn invoke<T: FromRedisValue>(&self, con: &mut dyn ConnectionLike) -> Result<T> {
        let cmd = self.evalsha_cmd();
        let mut value = con.req_command(&cmd)?;
        if is_noscript(&value) {
            self.script.load(con)?;
            value = con.req_command(&cmd)?;
        }
        convert(value)
    }
}

fn is_noscript(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript))
}

/// Converts a reply into `T`, turning an error reply into an [`Error`].
pub(crate) fn convert<T: FromRedisValue>(value: Value) -> Result<T> {
    let value = value
        .extract_error()
        .map_err(|e| Error::from_redis(e, Delivery::Answered))?;
    redis::from_redis_value(value).map_err(|e| Error::from_redis(e.into(), Delivery::Answered))
}

struct Entry {
    cmd: Cmd,
    ignored: bool,
    script: Option<Script>,
}

/// A pipeline that can hold script calls and recovers from `NOSCRIPT`.
///
/// - Plain pipelines send `EVALSHA`. When some entries answer `NOSCRIPT` (after a `SCRIPT
///   FLUSH` or a server restart), redkit loads those scripts and sends just those entries
///   again: every other entry ran exactly once; the reloaded scripts run after them.
/// - Atomic pipelines ([`Pipeline::atomic`], `MULTI`/`EXEC`) cannot be partly resent, so
///   redkit sends `SCRIPT LOAD` for their scripts ahead of `MULTI`, in the same round trip:
///   the transaction never meets `NOSCRIPT`.
///
/// The result converts like a `redis::Pipeline`'s: a tuple or `Vec` of the non-ignored
/// replies. An atomic pipeline whose `WATCH`ed keys changed yields `Nil`: ask for
/// `Option<T>` to see it.
#[derive(Default)]
pub struct Pipeline {
    entries: Vec<Entry>,
    atomic: bool,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("len", &self.entries.len())
            .field("atomic", &self.atomic)
            .finish()
    }
}

impl Pipeline {
    /// An empty, non-atomic pipeline.
    pub fn new() -> Pipeline {
        Pipeline::default()
    }

    /// Makes the pipeline a `MULTI`/`EXEC` transaction.
    pub fn atomic(&mut self) -> &mut Pipeline {
        self.atomic = true;
        self
    }

    /// Whether the pipeline is a transaction.
    pub fn is_atomic(&self) -> bool {
        self.atomic
    }

    /// Starts a new command.
    pub fn cmd(&mut self, name: &str) -> &mut Pipeline {
        self.add_command(redis::cmd(name))
    }

    /// Adds an argument to the last command.
    pub fn arg<A: ToRedisArgs>(&mut self, arg: A) -> &mut Pipeline {
        if let Some(e) = self.entries.last_mut() {
            e.cmd.arg(arg);
        }
        self
    }

    /// Adds a prepared command.
    pub fn add_command(&mut self, cmd: Cmd) -> &mut Pipeline {
        self.entries.push(Entry {
            cmd,
            ignored: false,
            script: None,
        });
        self
    }

    /// Adds a script call.
    pub fn invoke(&mut self, call: &ScriptCall) -> &mut Pipeline {
        self.entries.push(Entry {
            cmd: call.evalsha_cmd(),
            ignored: false,
            script: Some(call.script.clone()),
        });
        self
    }

    /// Leaves the last command's reply out of the result.
    pub fn ignore(&mut self) -> &mut Pipeline {
        if let Some(e) = self.entries.last_mut() {
            e.ignored = true;
        }
        self
    }

    /// How many commands the pipeline holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the pipeline holds no command.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Removes every command (keeps atomicity).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Refuses a pipeline that would leave a shared connection changed for later callers
    /// (see [`crate::conn::state::check_shared`]); `MULTI`/`EXEC` come from
    /// [`Pipeline::atomic`], not from commands in it. In the same pass, `Ok(true)` when a
    /// command may block its connection (`BLPOP`, `XREAD ... BLOCK`...).
    pub(crate) fn check_shared(&self) -> Result<bool> {
        use crate::conn::state::{effect, is_blocking, may_block, Effect};
        let mut blocking = false;
        for e in &self.entries {
            let mut args = e.cmd.args_iter().filter_map(|a| match a {
                redis::Arg::Simple(b) => Some(b),
                _ => None,
            });
            let (Some(name), sub) = (args.next(), args.next()) else {
                continue;
            };
            match effect(name, sub) {
                Effect::None | Effect::Unwatch => {}
                Effect::Changes { command, instead } => {
                    return Err(Error::WrongConnection {
                        command: command.to_owned(),
                        instead,
                    })
                }
                Effect::Multi | Effect::EndMulti | Effect::Watch => {
                    return Err(Error::WrongConnection {
                        command: String::from_utf8_lossy(name).to_ascii_uppercase(),
                        instead: "a Pipeline is made a transaction with Pipeline::atomic(); for WATCH use Redis::transaction()",
                    })
                }
            }
            // Only a command that may block has its arguments looked at.
            if !blocking && may_block(name) {
                let rest: Vec<&[u8]> = sub.into_iter().chain(args).collect();
                blocking = is_blocking(name, &rest);
            }
        }
        Ok(blocking)
    }

    /// Whether every command is one redkit knows to be read-only.
    pub(crate) fn is_read_only(&self) -> bool {
        self.entries
            .iter()
            .all(|e| e.script.is_none() && crate::retry::is_read_only_cmd(&e.cmd))
    }

    /// Runs the pipeline on any connection.
    pub fn query<T: FromRedisValue>(&self, con: &mut dyn ConnectionLike) -> Result<T> {
        if self.entries.is_empty() {
            return convert(Value::Array(Vec::new()));
        }
        let values = if self.atomic {
            self.run_atomic(con)?
        } else {
            self.run_plain(con)?
        };
        match values {
            None => convert(Value::Nil),
            Some(values) => {
                let kept: Vec<Value> = values
                    .into_iter()
                    .zip(&self.entries)
                    .filter(|(_, e)| !e.ignored)
                    .map(|(v, _)| v)
                    .collect();
                if let Some(Value::ServerError(e)) =
                    kept.iter().find(|v| matches!(v, Value::ServerError(_)))
                {
                    return Err(Error::from_redis(e.clone().into(), Delivery::Answered));
                }
                convert(Value::Array(kept))
            }
        }
    }

    fn run_plain(&self, con: &mut dyn ConnectionLike) -> Result<Option<Vec<Value>>> {
        let mut packed = Vec::with_capacity(self.entries.len() * 32);
        for e in &self.entries {
            e.cmd.write_packed_command(&mut packed);
        }
        let mut values = con.req_packed_commands(&packed, 0, self.entries.len())?;
        let missing: Vec<usize> = values
            .iter()
            .enumerate()
            .filter(|(i, v)| self.entries[*i].script.is_some() && is_noscript(v))
            .map(|(i, _)| i)
            .collect();
        if missing.is_empty() {
            return Ok(Some(values));
        }
        log::debug!(
            "pipeline: {} script call(s) met NOSCRIPT; loading and resending them",
            missing.len()
        );
        let mut packed = Vec::new();
        let mut loads = 0;
        for script in self.distinct_scripts(&missing) {
            script.load_cmd().write_packed_command(&mut packed);
            loads += 1;
        }
        for i in &missing {
            self.entries[*i].cmd.write_packed_command(&mut packed);
        }
        let again = con.req_packed_commands(&packed, loads, missing.len())?;
        for (i, v) in missing.into_iter().zip(again) {
            values[i] = v;
        }
        Ok(Some(values))
    }

    fn run_atomic(&self, con: &mut dyn ConnectionLike) -> Result<Option<Vec<Value>>> {
        let all: Vec<usize> = (0..self.entries.len()).collect();
        let mut packed = Vec::new();
        let mut loads = 0;
        for script in self.distinct_scripts(&all) {
            script.load_cmd().write_packed_command(&mut packed);
            loads += 1;
        }
        redis::cmd("MULTI").write_packed_command(&mut packed);
        for e in &self.entries {
            e.cmd.write_packed_command(&mut packed);
        }
        redis::cmd("EXEC").write_packed_command(&mut packed);
        // Skip the SCRIPT LOAD replies, +OK and every +QUEUED; keep EXEC's reply.
        let offset = loads + 1 + self.entries.len();
        let mut reply = con.req_packed_commands(&packed, offset, 1)?;
        match reply.pop() {
            Some(Value::Nil) => Ok(None),
            Some(Value::Array(values)) => Ok(Some(values)),
            Some(Value::ServerError(e)) => Err(Error::from_redis(e.into(), Delivery::Answered)),
            other => Err(Error::from_redis(
                redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "EXEC did not reply with an array",
                    format!("{other:?}"),
                )),
                Delivery::Answered,
            )),
        }
    }

    fn distinct_scripts(&self, idx: &[usize]) -> Vec<&Script> {
        let mut out: Vec<&Script> = Vec::new();
        for s in idx.iter().filter_map(|i| self.entries[*i].script.as_ref()) {
            if !out.iter().any(|o| o.hash() == s.hash()) {
                out.push(s);
            }
        }
        out
    }
}

/// Defines `fn $name() -> &'static Script` for a Lua file next to the module, built once.
///
/// ```ignore
/// static_script!(acquire_script, "acquire.lua");
/// // A shared prelude (local functions several scripts use), then the script itself:
/// static_script!(read_script, "rw_lib.lua" + "rw_read.lua");
/// ```
macro_rules! static_script {
    ($name:ident, $lib:literal + $file:literal) => {
        fn $name() -> &'static $crate::Script {
            static S: ::std::sync::OnceLock<$crate::Script> = ::std::sync::OnceLock::new();
            S.get_or_init(|| {
                $crate::Script::new(concat!(include_str!($lib), "\n", include_str!($file)))
            })
        }
    };
    ($name:ident, $file:literal) => {
        fn $name() -> &'static $crate::Script {
            static S: ::std::sync::OnceLock<$crate::Script> = ::std::sync::OnceLock::new();
            S.get_or_init(|| $crate::Script::new(include_str!($file)))
        }
    };
    (pub(crate) $name:ident, $file:literal) => {
        pub(crate) fn $name() -> &'static $crate::Script {
            static S: ::std::sync::OnceLock<$crate::Script> = ::std::sync::OnceLock::new();
            S.get_or_init(|| $crate::Script::new(include_str!($file)))
        }
    };
}
pub(crate) use static_script;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipeline_check_refuses_state_and_finds_blocking_commands() {
        let mut plain = Pipeline::new();
        plain.cmd("GET").arg("k").cmd("BITCOUNT").arg("k");
        assert!(matches!(plain.check_shared(), Ok(false)));
        let mut blpop = Pipeline::new();
        blpop.cmd("GET").arg("k").cmd("blpop").arg("q").arg(0);
        assert!(matches!(blpop.check_shared(), Ok(true)));
        let mut xread = Pipeline::new();
        xread
            .cmd("XREAD")
            .arg("BLOCK")
            .arg(0)
            .arg("STREAMS")
            .arg("s")
            .arg("$");
        assert!(matches!(xread.check_shared(), Ok(true)));
        let mut no_block = Pipeline::new();
        no_block
            .cmd("XREAD")
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg("s")
            .arg("0");
        assert!(matches!(no_block.check_shared(), Ok(false)));
        let mut select = Pipeline::new();
        select.cmd("SELECT").arg(1);
        assert!(matches!(
            select.check_shared(),
            Err(Error::WrongConnection { .. })
        ));
    }
}
