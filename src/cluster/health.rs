//! The heartbeat's check of every node of a cluster: one `ROLE` per node per beat, on
//! connections of its own, every node asked before any answer is read, all answers by the
//! heartbeat timeout.
//!
//! - A node that does not answer in time (a black hole, a frozen or dead process) is down:
//!   [`Event::ClusterNodeDown`](crate::Event::ClusterNodeDown), its breaker opens (calls to
//!   it fail fast), the slot map is refreshed (to find its replacement), and the
//!   multiplexed connection to it is closed (its calls in flight fail at once). A black hole
//!   is thus noticed within one heartbeat interval plus the heartbeat timeout.
//! - A node that answers again is up: [`Event::ClusterNodeUp`](crate::Event::ClusterNodeUp),
//!   and its breaker closes.
//! - A replica serves reads (with
//!   [`cluster_read_from_replicas`](crate::ConfigBuilder::cluster_read_from_replicas))
//!   while its link to the master is `connected` and its replication offset has reached
//!   the offset its master had at the previous beat: it lags its master by less than about
//!   one heartbeat interval at that moment.
//! - A node whose role differs from the map's has the map refreshed.

use std::collections::HashMap;
use std::time::Duration;

use log::debug;
use redis::Value;

use super::Topology;
use crate::config::Addr;
use crate::conn::Connection;
use crate::error::{Delivery, Error};
use crate::util::time;

/// What `ROLE` says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Master { offset: i64 },
    Replica { connected: bool, offset: i64 },
    Other,
}

fn parse_role(v: &Value) -> Option<Role> {
    let Value::Array(items) = v else { return None };
    let text = |v: Option<&Value>| match v {
        Some(Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        Some(Value::SimpleString(s)) => Some(s.clone()),
        _ => None,
    };
    let int = |v: Option<&Value>| match v {
        Some(Value::Int(n)) => Some(*n),
        _ => None,
    };
    Some(match text(items.first())?.as_str() {
        "master" => Role::Master {
            offset: int(items.get(1))?,
        },
        "slave" => Role::Replica {
            connected: text(items.get(3)).as_deref() == Some("connected"),
            offset: int(items.get(4))?,
        },
        _ => Role::Other,
    })
}

/// The heartbeat's connections to every node, and what the last beat found.
#[derive(Debug, Default)]
pub(crate) struct NodeChecks {
    conns: HashMap<Addr, Connection>,
    /// Each master's replication offset at the previous beat.
    offsets: HashMap<Addr, i64>,
}

impl NodeChecks {
    pub(crate) fn new() -> NodeChecks {
        NodeChecks::default()
    }

    /// One beat: `ROLE` to every node of the map, every answer by `timeout`. `Ok` when at
    /// least one master answered (the cluster is reachable), else the first master's error.
    pub(crate) fn beat(&mut self, topo: &Topology, timeout: Duration) -> Result<(), Error> {
        topo.refresh_if_stale();
        let map = topo.map();
        // (node, the index of its master for a replica)
        let mut nodes: Vec<(Addr, Option<usize>)> =
            map.masters.iter().map(|m| (m.clone(), None)).collect();
        for (i, replicas) in map.replicas.iter().enumerate() {
            nodes.extend(replicas.iter().map(|r| (r.clone(), Some(i))));
        }
        let all: Vec<Addr> = nodes.iter().map(|(a, _)| a.clone()).collect();
        self.conns.retain(|a, _| all.contains(a));
        topo.keep_health_of(&all);
        let deadline = time::after(timeout);
        let role = redis::cmd("ROLE").get_packed_command();
        // The first master is also asked for the slot map: replicas appear in it once they
        // have replicated something, and a reshard shows without any call redirected.
        let mut role_and_slots = role.clone();
        role_and_slots.extend_from_slice(&redis::cmd("CLUSTER").arg("SLOTS").get_packed_command());
        let mut sent: Vec<Result<(), Error>> = Vec::with_capacity(nodes.len());
        for (n, (addr, _)) in nodes.iter().enumerate() {
            let packed = if n == 0 { &role_and_slots } else { &role };
            let ready = match self.conns.get(addr) {
                Some(c) if !c.is_broken() => Ok(()),
                _ => topo.open_by(addr, deadline).map(|mut c| {
                    c.set_response_timeout(Some(timeout));
                    self.conns.insert(addr.clone(), c);
                }),
            };
            sent.push(ready.and_then(|()| match self.conns.get_mut(addr) {
                Some(c) => c.send(packed, Some(deadline), n > 0),
                None => Err(gone(addr)),
            }));
        }
        let mut roles: Vec<Result<Role, Error>> = Vec::with_capacity(nodes.len());
        let mut slots = None;
        for (n, ((addr, _), sent)) in nodes.iter().zip(sent).enumerate() {
            let answer = sent.and_then(|()| {
                let con = self.conns.get_mut(addr).ok_or_else(|| gone(addr))?;
                let mut replies = con.recv(if n == 0 { 2 } else { 1 }, Some(deadline))?;
                if n == 0 {
                    slots = replies
                        .pop()
                        .and_then(|v| super::route::parse_slots(&v, addr))
                        .filter(|r| !r.is_empty());
                }
                let reply = replies.pop().ok_or_else(|| gone(addr))?;
                Ok(parse_role(&reply).unwrap_or(Role::Other))
            });
            if answer.is_err() {
                self.conns.remove(addr);
            }
            roles.push(answer);
        }
        let mut offsets = HashMap::with_capacity(map.masters.len());
        let mut reachable = false;
        let mut first_error = None;
        for ((addr, master), role) in nodes.iter().zip(roles) {
            let role = match role {
                Ok(r) => r,
                Err(e) => {
                    if master.is_none() {
                        first_error.get_or_insert_with(|| e.clone());
                    }
                    topo.node_silent(addr, e);
                    continue;
                }
            };
            reachable |= master.is_none();
            topo.node_answered(addr);
            match (master, role) {
                (None, Role::Master { offset }) => {
                    offsets.insert(addr.clone(), offset);
                }
                (Some(m), Role::Replica { connected, offset }) => {
                    let before = map.masters.get(*m).and_then(|m| self.offsets.get(m));
                    let fit = connected && before.is_some_and(|b| offset >= *b);
                    topo.set_fit(addr, fit);
                }
                (_, role) => {
                    debug!("cluster node {addr} answers ROLE {role:?}, not what the map says");
                    topo.set_fit(addr, false);
                    topo.mark_stale();
                }
            }
        }
        self.offsets = offsets;
        if let Some(ranges) = slots {
            topo.install(ranges);
        }
        topo.settle();
        match (reachable, first_error) {
            (true, _) => Ok(()),
            (false, Some(e)) => Err(e),
            (false, None) => Err(Error::io(
                std::io::ErrorKind::NotConnected,
                "the cluster has no master to check",
                Delivery::NotSent,
            )),
        }
    }
}

fn gone(addr: &Addr) -> Error {
    Error::io(
        std::io::ErrorKind::NotConnected,
        format!("no health-check connection to {addr}"),
        Delivery::NotSent,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_replies_parse() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let master = Value::Array(vec![b("master"), Value::Int(3129659), Value::Array(vec![])]);
        assert_eq!(parse_role(&master), Some(Role::Master { offset: 3129659 }));
        let replica = Value::Array(vec![
            b("slave"),
            b("127.0.0.1"),
            Value::Int(9000),
            b("connected"),
            Value::Int(3167038),
        ]);
        assert_eq!(
            parse_role(&replica),
            Some(Role::Replica {
                connected: true,
                offset: 3167038
            })
        );
        let syncing = Value::Array(vec![
            b("slave"),
            b("127.0.0.1"),
            Value::Int(9000),
            b("sync"),
            Value::Int(-1),
        ]);
        assert!(matches!(
            parse_role(&syncing),
            Some(Role::Replica {
                connected: false,
                ..
            })
        ));
        assert_eq!(parse_role(&Value::Int(1)), None);
    }
}
