//! What a call's commands run on: a pooled connection or the multiplexed connection.

use redis::{ConnectionLike, Value};

use crate::error::Result;
use crate::pool::PooledConnection;

/// A pooled connection or the multiplexed connection, as a call's operation sees it.
pub(crate) trait Calls: ConnectionLike {
    /// One packed command and its reply (an error reply as a value).
    fn exec_packed(&mut self, cmd: &[u8]) -> Result<Value>;
    /// A packed pipeline: `offset + count` replies read, the last `count` returned.
    fn exec_pipeline(&mut self, cmd: &[u8], offset: usize, count: usize) -> Result<Vec<Value>>;
}

impl Calls for PooledConnection {
    fn exec_packed(&mut self, cmd: &[u8]) -> Result<Value> {
        PooledConnection::exec_packed(self, cmd)
    }

    fn exec_pipeline(&mut self, cmd: &[u8], offset: usize, count: usize) -> Result<Vec<Value>> {
        PooledConnection::exec_pipeline(self, cmd, offset, count)
    }
}
