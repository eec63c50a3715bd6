//! What a pooled connection holds: a connection to one server, or a cluster connection (a
//! connection per node it uses).

use std::time::{Duration, Instant};

use redis::{ConnectionLike, Value};

use crate::cluster::ClusterLink;
use crate::config::Addr;
use crate::conn::Connection;
use crate::error::{to_redis_error, Result};

/// A connection to one server, or a cluster connection.
// The node variant is the common one: kept inline (no indirection on every call).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Link {
    // Boxed: the pool moves a connection in and out of its idle list on every checkout,
    // and a connection (its TLS state inline) is large.
    Node(Box<Connection>),
    Cluster(Box<ClusterLink>),
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Link::Node(c) => c.fmt(f),
            Link::Cluster(c) => c.fmt(f),
        }
    }
}

impl Link {
    /// The response timeout of later calls (`None`: wait forever, for blocking commands).
    pub(crate) fn set_response_timeout(&mut self, d: Option<Duration>) {
        match self {
            Link::Node(c) => c.set_response_timeout(d),
            Link::Cluster(c) => c.set_response_timeout(d),
        }
    }

    /// A cluster connection stays open: a failed node connection is closed inside it.
    pub(crate) fn is_open(&self) -> bool {
        match self {
            Link::Node(c) => !c.is_broken(),
            Link::Cluster(_) => true,
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Link::Cluster(_))
    }

    /// The database selected (0 on a cluster).
    pub(crate) fn db(&self) -> i64 {
        match self {
            Link::Node(c) => c.db(),
            Link::Cluster(_) => 0,
        }
    }

    /// Closes every socket now.
    pub(crate) fn close(&mut self) {
        match self {
            Link::Node(c) => c.close(),
            Link::Cluster(c) => c.close(),
        }
    }

    /// Sends one packed command and reads its reply by `cap`, telling apart a command that
    /// was never completely written from one whose reply did not come.
    pub(crate) fn exec(&mut self, cmd: &[u8], cap: Option<Instant>) -> Result<Value> {
        match self {
            Link::Node(c) => c.exec(cmd, cap),
            Link::Cluster(c) => c.exec(cmd, cap),
        }
    }

    /// Sends a packed pipeline and reads `offset + count` replies, keeping the last `count`.
    pub(crate) fn pipeline(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
        cap: Option<Instant>,
    ) -> Result<Vec<Value>> {
        match self {
            Link::Node(c) => c.pipeline(cmd, offset, count, cap),
            Link::Cluster(c) => c.pipeline(cmd, offset, count, cap),
        }
    }

    /// One packed command on the cluster node `addr` (a plain connection sends it to its
    /// server).
    pub(crate) fn exec_on(
        &mut self,
        addr: &Addr,
        cmd: &[u8],
        cap: Option<Instant>,
    ) -> Result<Value> {
        match self {
            Link::Cluster(c) => c.exec_on(addr, cmd, cap),
            Link::Node(c) => c.exec(cmd, cap),
        }
    }

    /// `PING` by `deadline`.
    pub(crate) fn ping(&mut self, deadline: Instant) -> Result<()> {
        let packed = redis::cmd("PING").get_packed_command();
        match self.exec(&packed, Some(deadline))? {
            Value::ServerError(e) => Err(crate::Error::from_redis(
                e.into(),
                crate::Delivery::Answered,
            )),
            _ => Ok(()),
        }
    }
}

impl ConnectionLike for Link {
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
        self.db()
    }

    fn check_connection(&mut self) -> bool {
        self.ping(crate::util::time::after(Duration::from_secs(5)))
            .is_ok()
    }

    fn is_open(&self) -> bool {
        Link::is_open(self)
    }
}
