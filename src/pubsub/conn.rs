//! The subscriber's own connection: a core connection the subscriber thread reads with a
//! short deadline (its *tick*) and writes between reads. A frame split across ticks is kept
//! by the parser and completed on the next read.

use std::time::Duration;

use redis::Value;

use crate::config::Addr;
use crate::conn::{Connection, Connector};
use crate::error::Result;
use crate::util::time;

/// A subscriber connection.
#[derive(Debug)]
pub(crate) struct Conn {
    con: Connection,
    tick: Duration,
}

impl Conn {
    /// Connects to `addr` (the handle's address, the Sentinel master, or a cluster node) with
    /// every setting of the connector, all within the connect timeout. Afterwards reads wait
    /// at most `tick` (see [`Conn::read`]).
    pub(crate) fn open_at(connector: &Connector, addr: &Addr, tick: Duration) -> Result<Conn> {
        Ok(Conn {
            con: connector.open(addr)?,
            tick,
        })
    }

    /// Sends one command, written within the write timeout.
    pub(crate) fn send(&mut self, cmd: &redis::Cmd) -> Result<()> {
        self.con.send(&cmd.get_packed_command(), None, true)
    }

    /// Reads one frame: `Ok(None)` when nothing complete arrived within the tick (a partly
    /// read frame is kept for the next call). An error means the connection is unusable.
    pub(crate) fn read(&mut self) -> Result<Option<Value>> {
        self.con.read_frame(time::after(self.tick))
    }

    /// Reads one frame only if it has already arrived (no waiting): `Ok(None)` otherwise.
    pub(crate) fn read_ready(&mut self) -> Result<Option<Value>> {
        self.con.read_frame(std::time::Instant::now())
    }

    /// The read timeout between control checks.
    pub(crate) fn tick(&self) -> Duration {
        self.tick
    }

    /// Changes the read timeout (the subscriber thread shares its tick among its
    /// connections).
    pub(crate) fn set_tick(&mut self, tick: Duration) -> Result<()> {
        self.tick = tick;
        Ok(())
    }

    /// Closes the socket now.
    pub(crate) fn close(mut self) {
        self.con.close();
    }
}
