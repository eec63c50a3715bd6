//! The connection core, under every kind of connection redkit opens (pooled, dedicated,
//! subscriber, sentinel, cluster node, heartbeat).
//!
//! It opens a socket (TCP, TLS through `native-tls` or rustls, or a unix socket), runs the handshake
//! (`HELLO` with the protocol, credentials and client name, then `SELECT`, pipelined in one
//! round trip), writes packed commands and reads frames with the `redis` crate's own
//! [`redis::Parser`], all against **absolute deadlines**:
//!
//! - Opening a connection (resolve, connect, TLS, handshake) ends by the connect timeout, as
//!   a whole.
//! - A call's write must end within the write timeout and its reply within the response
//!   timeout, each as a whole: a pipeline's replies share one response timeout. Each read
//!   waits at most the time left, whatever the server sends (nothing, or a byte at a time).
//! - A call may carry a *cap* (the handle passes its retry deadline plus one response
//!   timeout): no read or write goes past it.
//! - A call that fails with the stream in an unknown state (a timeout, a reset, a corrupt
//!   reply, a reply over [`max_reply_size`](crate::ConfigBuilder::max_reply_size)) closes the
//!   connection: it is never used out of sync.

mod connection;
pub(crate) mod keys;
pub(crate) mod mux;
mod socket;
pub(crate) mod state;
mod tls;

use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) use connection::{Connection, Connector, Hello};
pub(crate) use socket::Interrupter;

/// A generation counter: connections opened before the current generation are retired
/// (closed when next seen). Bumped on failover and after an outage.
#[derive(Debug, Default)]
pub(crate) struct Generation(AtomicU64);

impl Generation {
    /// The current generation (stamp new connections with it).
    pub(crate) fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Retires every connection opened so far.
    pub(crate) fn retire_all(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether a connection stamped `stamp` is retired.
    pub(crate) fn is_retired(&self, stamp: u64) -> bool {
        stamp < self.current()
    }
}
