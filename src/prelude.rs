//! The names most programs need, in one `use`:
//!
//! ```no_run
//! use redkit::prelude::*;
//!
//! fn main() -> redkit::Result<()> {
//!     let redis = Redis::connect("redis://127.0.0.1/")?;
//!     let mut r = redis.clone();
//!     r.set::<_, _, ()>("greeting", "hello")?; // redis::Commands, re-exported here
//!     let n: i64 = redis.query(redis::cmd("INCR").arg("counter"))?;
//!     println!("{n}");
//!     Ok(())
//! }
//! ```
//!
//! It brings the handle and its configuration, errors, pipelines and scripts, the
//! `redis::Commands` trait (so that every command works on a handle or connection without
//! a `redis` dependency of your own), and the most used helpers.

pub use crate::near::NearCache;
pub use crate::pubsub::{Message, Subscriber, Subscription};
pub use crate::redis;
pub use crate::redis::{Commands, ConnectionLike, FromRedisValue, ToRedisArgs};
pub use crate::{
    Cache, Config, ConfigBuilder, DedicatedConnection, Delivery, Error, ErrorClass, Event, Health,
    Lock, Pipeline, Redis, Result, Script, SessionStore, StreamQueue,
};
