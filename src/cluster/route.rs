//! Pure cluster logic: hash slots, where a packed command goes, splitting multi-key commands
//! across slots, redirections and the `CLUSTER SLOTS` reply. No I/O here.

use redis::{ServerErrorKind, Value};

use crate::config::Addr;

/// The number of hash slots.
pub(crate) const SLOTS: usize = 16384;

/// CRC16/XMODEM, the checksum Redis Cluster hashes keys with.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The hash slot of a key: only the part between the first `{` and the next `}` counts when
/// it is not empty (a hash tag).
pub(crate) fn slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS as u16
}

pub(crate) use crate::util::resp::{split_command, split_pipeline, Packed};

/// One part of a split multi-key command: its packed bytes and the positions of its keys in
/// the original command.
pub(crate) type Part = (Vec<u8>, Vec<usize>);

/// Where a command goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// The master owning this slot.
    Slot(u16),
    /// No key: the node the connection used last (so that `UNWATCH` follows `WATCH` and
    /// `EXEC` follows `MULTI`), or any master.
    Any,
}

fn upper(name: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (o, c) in out.iter_mut().zip(name) {
        *o = c.to_ascii_uppercase();
    }
    out
}

fn is(name: &[u8; 16], what: &[u8]) -> bool {
    what.len() <= 16 && name[..what.len()] == *what && (what.len() == 16 || name[what.len()] == 0)
}

/// The index of a command's first key, if it has one.
pub(crate) fn first_key(args: &[&[u8]]) -> Option<usize> {
    let name_arg = *args.first()?;
    if name_arg.len() > 16 {
        return (args.len() > 1).then_some(1);
    }
    let upper = upper(name_arg);
    let name = &upper[..name_arg.len()];
    let key_at = |i: usize| (args.len() > i).then_some(i);
    let n = |i: usize| -> Option<usize> { std::str::from_utf8(args.get(i)?).ok()?.parse().ok() };
    match name {
        b"PING" | b"ECHO" | b"INFO" | b"CLIENT" | b"CONFIG" | b"CLUSTER" | b"COMMAND"
        | b"DBSIZE" | b"FLUSHALL" | b"FLUSHDB" | b"TIME" | b"WAIT" | b"WAITAOF" | b"MULTI"
        | b"EXEC" | b"DISCARD" | b"UNWATCH" | b"ASKING" | b"READONLY" | b"READWRITE" | b"SCAN"
        | b"KEYS" | b"RANDOMKEY" | b"AUTH" | b"HELLO" | b"SELECT" | b"LASTSAVE" | b"SAVE"
        | b"BGSAVE" | b"BGREWRITEAOF" | b"DEBUG" | b"SLOWLOG" | b"LATENCY" | b"ACL"
        | b"FUNCTION" | b"SCRIPT" | b"PUBLISH" | b"PUBSUB" | b"ROLE" | b"MODULE" | b"SWAPDB"
        | b"QUIT" | b"RESET" | b"LOLWUT" | b"SHUTDOWN" | b"MONITOR" | b"SUBSCRIBE"
        | b"PSUBSCRIBE" | b"UNSUBSCRIBE" | b"PUNSUBSCRIBE" | b"REPLICAOF" | b"SLAVEOF"
        | b"FAILOVER" | b"SYNC" | b"PSYNC" => None,
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => match n(2) {
            Some(k) if k > 0 => key_at(3),
            _ => None,
        },
        b"XREAD" | b"XREADGROUP" => {
            let streams = args
                .iter()
                .position(|a| a.eq_ignore_ascii_case(b"STREAMS"))?;
            key_at(streams + 1)
        }
        b"LMPOP" | b"ZMPOP" | b"SINTERCARD" | b"ZINTERCARD" | b"ZDIFF" | b"ZINTER" | b"ZUNION" => {
            key_at(2)
        }
        b"BLMPOP" | b"BZMPOP" => key_at(3),
        b"XGROUP" | b"XINFO" | b"OBJECT" | b"MEMORY" => key_at(2),
        _ => key_at(1),
    }
}

/// Where a command goes by its key (see [`plan`] for the whole picture).
#[cfg(test)]
pub(crate) fn route(args: &[&[u8]]) -> Route {
    match first_key(args) {
        Some(i) => Route::Slot(slot(args[i])),
        None => Route::Any,
    }
}

/// Whether a parsed command is `MULTI` (a pipeline holding one is a transaction).
pub(crate) fn is_multi(args: &[&[u8]]) -> bool {
    args.first()
        .is_some_and(|n| n.eq_ignore_ascii_case(b"MULTI"))
}

/// How the replies of a keyless command sent to every master become one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Merge {
    /// `FLUSHALL`, `FLUSHDB`, `SCRIPT LOAD`/`FLUSH`, `FUNCTION LOAD`/`DELETE`/`FLUSH`/
    /// `RESTORE`: the first error reply, else the first reply.
    First,
    /// `DBSIZE`: the sum.
    Sum,
    /// `KEYS`: every master's keys, one array (masters in map order).
    Concat,
    /// `INFO`: every master's text, each after a `# Node host:port` line.
    PerNode,
}

/// Whether a keyless command goes to every master, and how its replies merge.
pub(crate) fn every_master(args: &[&[u8]]) -> Option<Merge> {
    let name = upper(args.first().filter(|n| n.len() <= 16)?);
    let sub = args.get(1).filter(|s| s.len() <= 16).map(|s| upper(s));
    let sub_is = |w: &[&[u8]]| sub.is_some_and(|s| w.iter().any(|w| is(&s, w)));
    if is(&name, b"FLUSHALL")
        || is(&name, b"FLUSHDB")
        || (is(&name, b"SCRIPT") && sub_is(&[b"LOAD", b"FLUSH"]))
        || (is(&name, b"FUNCTION") && sub_is(&[b"LOAD", b"DELETE", b"FLUSH", b"RESTORE"]))
    {
        Some(Merge::First)
    } else if is(&name, b"DBSIZE") && args.len() == 1 {
        Some(Merge::Sum)
    } else if is(&name, b"KEYS") && args.len() == 2 {
        Some(Merge::Concat)
    } else if is(&name, b"INFO") {
        Some(Merge::PerNode)
    } else {
        None
    }
}

/// Merges every master's reply to a keyless command (see [`Merge`]); `nodes` names the
/// master of each reply. An error reply from any master is the reply.
pub(crate) fn merge(how: Merge, replies: Vec<(Addr, Value)>) -> Value {
    if let Some((_, e)) = replies
        .iter()
        .find(|(_, v)| matches!(v, Value::ServerError(_)))
    {
        return e.clone();
    }
    match how {
        Merge::First => replies.into_iter().next().map_or(Value::Nil, |(_, v)| v),
        Merge::Sum => Value::Int(
            replies
                .iter()
                .map(|(_, v)| match v {
                    Value::Int(n) => *n,
                    _ => 0,
                })
                .sum(),
        ),
        Merge::Concat => Value::Array(
            replies
                .into_iter()
                .flat_map(|(_, v)| match v {
                    Value::Array(items) | Value::Set(items) => items,
                    _ => Vec::new(),
                })
                .collect(),
        ),
        Merge::PerNode => {
            let mut out = Vec::new();
            for (addr, v) in replies {
                let text = match v {
                    Value::BulkString(b) => b,
                    Value::VerbatimString { text, .. } => text.into_bytes(),
                    Value::SimpleString(s) => s.into_bytes(),
                    _ => Vec::new(),
                };
                out.extend_from_slice(format!("# Node {addr}\r\n").as_bytes());
                out.extend_from_slice(&text);
                if !text.ends_with(b"\r\n") {
                    out.extend_from_slice(b"\r\n");
                }
            }
            Value::BulkString(out)
        }
    }
}

/// What one command of a request becomes on a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// One command, to the owner of `slot` (`None`: no key, any node).
    One {
        /// The slot of its first key.
        slot: Option<u16>,
    },
    /// A multi-key command whose keys span slots: one part per slot.
    Split {
        /// How the parts' replies combine.
        how: Combine,
        /// How many values the combined reply has (`MGET`).
        total: usize,
        /// Each part: packed, positions of its keys in the original, its slot.
        parts: Vec<(Vec<u8>, Vec<usize>, u16)>,
    },
    /// A keyless command for every master.
    Masters(Merge),
}

/// What `args` (one parsed command) becomes on a cluster.
pub(crate) fn plan(args: &[&[u8]]) -> Plan {
    if let Some(how) = every_master(args) {
        return Plan::Masters(how);
    }
    if let Some((how, parts)) = split_multi_key(args) {
        let stride = if how == Combine::Ok { 2 } else { 1 };
        let total = (args.len() - 1) / stride;
        let parts = parts
            .into_iter()
            .map(|(packed, positions)| {
                let s = positions
                    .first()
                    .and_then(|p| args.get(1 + p * stride))
                    .map_or(0, |k| slot(k));
                (packed, positions, s)
            })
            .collect();
        return Plan::Split { how, total, parts };
    }
    Plan::One {
        slot: first_key(args).map(|i| slot(args[i])),
    }
}

/// How a multi-key command splits over slots, and how its replies combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Combine {
    /// `MGET`: the values in the order the keys were given.
    Values,
    /// `DEL`, `UNLINK`, `EXISTS`, `TOUCH`: the sum.
    Sum,
    /// `MSET`: `OK` when every part said `OK`.
    Ok,
}

/// A multi-key command whose keys live in more than one slot, split into one packed command
/// per slot: `(packed, positions of its keys in the original)`. `None` when the command is
/// not one redkit splits, or all its keys share a slot.
pub(crate) fn split_multi_key(args: &[&[u8]]) -> Option<(Combine, Vec<Part>)> {
    let name = upper(args.first().filter(|n| n.len() <= 16)?);
    let (combine, stride) = if is(&name, b"MGET") {
        (Combine::Values, 1)
    } else if ["DEL", "UNLINK", "EXISTS", "TOUCH"]
        .iter()
        .any(|k| is(&name, k.as_bytes()))
    {
        (Combine::Sum, 1)
    } else if is(&name, b"MSET") {
        (Combine::Ok, 2)
    } else {
        return None;
    };
    let rest = &args[1..];
    if rest.len() < 2 * stride || !rest.len().is_multiple_of(stride) {
        return None;
    }
    let first = slot(rest[0]);
    if rest.iter().step_by(stride).all(|k| slot(k) == first) {
        return None;
    }
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    for (i, key) in rest.iter().enumerate().step_by(stride) {
        let s = slot(key);
        match groups.iter_mut().find(|(gs, _)| *gs == s) {
            Some((_, v)) => v.push(i / stride),
            None => groups.push((s, vec![i / stride])),
        }
    }
    let parts = groups
        .into_iter()
        .map(|(_, positions)| {
            let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap_or("MGET"));
            for &p in &positions {
                for j in 0..stride {
                    cmd.arg(rest[p * stride + j]);
                }
            }
            (cmd.get_packed_command(), positions)
        })
        .collect();
    Some((combine, parts))
}

/// Puts the replies of the parts of a split command back together (see [`split_multi_key`]).
/// An error reply from any part is the reply.
pub(crate) fn combine(combine: Combine, total: usize, parts: Vec<(Value, Vec<usize>)>) -> Value {
    if let Some((e, _)) = parts
        .iter()
        .find(|(v, _)| matches!(v, Value::ServerError(_)))
    {
        return e.clone();
    }
    match combine {
        Combine::Values => {
            let mut out = vec![Value::Nil; total];
            for (value, positions) in parts {
                if let Value::Array(values) = value {
                    for (v, p) in values.into_iter().zip(positions) {
                        if let Some(slot) = out.get_mut(p) {
                            *slot = v;
                        }
                    }
                }
            }
            Value::Array(out)
        }
        Combine::Sum => Value::Int(
            parts
                .iter()
                .map(|(v, _)| match v {
                    Value::Int(n) => *n,
                    _ => 0,
                })
                .sum(),
        ),
        Combine::Ok => Value::Okay,
    }
}

/// A redirection in a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Redirect {
    /// `MOVED slot host:port`: the slot has a new owner for good.
    Moved(u16, Addr),
    /// `ASK slot host:port`: this key is being migrated; ask there once, after `ASKING`.
    Ask(Addr),
}

/// The redirection a reply carries, if any. `asked`: the node that answered (an empty host
/// in the reply means that node's host).
pub(crate) fn redirect(value: &Value, asked: &Addr) -> Option<Redirect> {
    let Value::ServerError(e) = value else {
        return None;
    };
    let kind = e.kind()?;
    if kind != ServerErrorKind::Moved && kind != ServerErrorKind::Ask {
        return None;
    }
    let mut parts = e.details()?.split_whitespace();
    let slot: u16 = parts.next()?.parse().ok()?;
    let (host, port) = parts.next()?.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = match (host, asked) {
        ("", Addr::Tcp { host, .. }) => host.clone(),
        (h, _) => h.trim_start_matches('[').trim_end_matches(']').to_owned(),
    };
    let addr = Addr::Tcp { host, port };
    Some(if kind == ServerErrorKind::Moved {
        Redirect::Moved(slot, addr)
    } else {
        Redirect::Ask(addr)
    })
}

/// One range of `CLUSTER SLOTS`: first slot, last slot, master, replicas.
pub(crate) type SlotRange = (u16, u16, Addr, Vec<Addr>);

/// Parses a `CLUSTER SLOTS` reply. `asked`: the node that answered (a node listed with an
/// empty host or `?` is reached at that node's host).
pub(crate) fn parse_slots(value: &Value, asked: &Addr) -> Option<Vec<SlotRange>> {
    let Value::Array(ranges) = value else {
        return None;
    };
    let node = |v: &Value| -> Option<Addr> {
        let Value::Array(fields) = v else { return None };
        let host = match fields.first()? {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
            Value::SimpleString(s) => s.clone(),
            _ => return None,
        };
        let port = match fields.get(1)? {
            Value::Int(p) => u16::try_from(*p).ok()?,
            _ => return None,
        };
        let host = match (host.as_str(), asked) {
            ("" | "?", Addr::Tcp { host, .. }) => host.clone(),
            _ => host,
        };
        Some(Addr::Tcp { host, port })
    };
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let Value::Array(fields) = r else { return None };
        let num = |i: usize| match fields.get(i) {
            Some(Value::Int(n)) => u16::try_from(*n).ok().filter(|n| usize::from(*n) < SLOTS),
            _ => None,
        };
        let (start, end) = (num(0)?, num(1)?);
        let master = node(fields.get(2)?)?;
        let replicas = fields.iter().skip(3).filter_map(node).collect();
        out.push((start, end, master, replicas));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &redis::Cmd) -> Vec<Vec<u8>> {
        let packed = cmd.get_packed_command();
        let (a, rest) = split_command(&packed).expect("parses");
        assert!(rest.is_empty());
        a.into_iter().map(<[u8]>::to_vec).collect()
    }

    fn route_of(cmd: &redis::Cmd) -> Route {
        let a = args(cmd);
        let refs: Vec<&[u8]> = a.iter().map(Vec::as_slice).collect();
        route(&refs)
    }

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"user:42"), slot(b"user:42"));
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn commands_route_by_their_first_key() {
        assert_eq!(route_of(redis::cmd("GET").arg("foo")), Route::Slot(12182));
        assert_eq!(route_of(redis::cmd("get").arg("foo")), Route::Slot(12182));
        assert_eq!(route_of(&redis::cmd("PING")), Route::Any);
        assert_eq!(
            route_of(redis::cmd("PUBLISH").arg("c").arg("m")),
            Route::Any
        );
        assert_eq!(
            route_of(redis::cmd("SPUBLISH").arg("foo").arg("m")),
            Route::Slot(12182)
        );
        assert_eq!(
            route_of(redis::cmd("EVALSHA").arg("abc").arg(1).arg("foo").arg("x")),
            Route::Slot(12182)
        );
        assert_eq!(
            route_of(redis::cmd("EVAL").arg("return 1").arg(0)),
            Route::Any
        );
        assert_eq!(
            route_of(
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("g")
                    .arg("c")
                    .arg("COUNT")
                    .arg(1)
                    .arg("STREAMS")
                    .arg("foo")
                    .arg(">")
            ),
            Route::Slot(12182)
        );
        assert_eq!(
            route_of(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg("foo")
                    .arg("g")
                    .arg("$")
            ),
            Route::Slot(12182)
        );
        assert_eq!(
            route_of(redis::cmd("BLMPOP").arg(1).arg(1).arg("foo").arg("LEFT")),
            Route::Slot(12182)
        );
        let plan_of = |cmd: &redis::Cmd| {
            let a = args(cmd);
            let refs: Vec<&[u8]> = a.iter().map(Vec::as_slice).collect();
            plan(&refs)
        };
        assert_eq!(
            plan_of(redis::cmd("SCRIPT").arg("LOAD").arg("x")),
            Plan::Masters(Merge::First)
        );
        assert_eq!(plan_of(&redis::cmd("DBSIZE")), Plan::Masters(Merge::Sum));
        assert_eq!(
            plan_of(redis::cmd("KEYS").arg("*")),
            Plan::Masters(Merge::Concat)
        );
        assert_eq!(
            plan_of(redis::cmd("INFO").arg("memory")),
            Plan::Masters(Merge::PerNode)
        );
        assert_eq!(
            plan_of(&redis::cmd("FLUSHALL")),
            Plan::Masters(Merge::First)
        );
        assert_eq!(plan_of(&redis::cmd("PING")), Plan::One { slot: None });
        assert!(matches!(
            plan_of(redis::cmd("MSET").arg("a").arg(1).arg("b").arg(2)),
            Plan::Split {
                how: Combine::Ok,
                total: 2,
                ..
            }
        ));
        assert_eq!(
            route_of(redis::cmd("SCRIPT").arg("EXISTS").arg("x")),
            Route::Any
        );
        assert_eq!(route_of(redis::cmd("SCAN").arg(0)), Route::Any);
    }

    #[test]
    fn pipelines_split_into_commands() {
        let mut p = redis::pipe();
        p.cmd("SET")
            .arg("a")
            .arg(b"x\r\ny".as_slice())
            .cmd("GET")
            .arg("b")
            .cmd("PING");
        let packed = p.get_packed_pipeline();
        let cmds = split_pipeline(&packed).expect("parses");
        assert_eq!(cmds.len(), 3);
        assert_eq!(cmds[0].1[2], b"x\r\ny");
        let joined: Vec<u8> = cmds.iter().flat_map(|(b, _)| b.iter().copied()).collect();
        assert_eq!(joined, packed);
        assert!(split_pipeline(b"*1\r\n$3\r\nGE").is_none());
    }

    #[test]
    fn multi_key_commands_split_by_slot_and_combine() {
        let a = args(redis::cmd("MGET").arg("a").arg("b").arg("{a}x"));
        let refs: Vec<&[u8]> = a.iter().map(Vec::as_slice).collect();
        let (how, parts) = split_multi_key(&refs).expect("a and b differ");
        assert_eq!(how, Combine::Values);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].1, vec![0, 2]);
        assert_eq!(parts[1].1, vec![1]);
        let v = combine(
            how,
            3,
            vec![
                (Value::Array(vec![Value::Int(1), Value::Int(3)]), vec![0, 2]),
                (Value::Array(vec![Value::Int(2)]), vec![1]),
            ],
        );
        assert_eq!(
            v,
            Value::Array(vec![Value::Int(1), Value::Int(2), Value::Int(3)])
        );
        let same = args(redis::cmd("DEL").arg("{t}a").arg("{t}b"));
        let refs: Vec<&[u8]> = same.iter().map(Vec::as_slice).collect();
        assert!(split_multi_key(&refs).is_none());
        let mset = args(redis::cmd("MSET").arg("a").arg(1).arg("b").arg(2));
        let refs: Vec<&[u8]> = mset.iter().map(Vec::as_slice).collect();
        let (how, parts) = split_multi_key(&refs).expect("split");
        assert_eq!(how, Combine::Ok);
        let (first, _) = split_command(&parts[0].0).expect("packed");
        assert_eq!(first, vec![&b"MSET"[..], b"a", b"1"]);
        assert_eq!(
            combine(
                Combine::Sum,
                2,
                vec![(Value::Int(1), vec![0]), (Value::Int(1), vec![1])]
            ),
            Value::Int(2)
        );
    }

    #[test]
    fn redirections_parse() {
        let asked = Addr::Tcp {
            host: "10.0.0.9".into(),
            port: 1,
        };
        let moved = redis::parse_redis_value(b"-MOVED 3999 127.0.0.1:6381\r\n").expect("parses");
        assert_eq!(
            redirect(&moved, &asked),
            Some(Redirect::Moved(
                3999,
                Addr::Tcp {
                    host: "127.0.0.1".into(),
                    port: 6381
                }
            ))
        );
        let ask = redis::parse_redis_value(b"-ASK 3999 :6381\r\n").expect("parses");
        assert_eq!(
            redirect(&ask, &asked),
            Some(Redirect::Ask(Addr::Tcp {
                host: "10.0.0.9".into(),
                port: 6381
            }))
        );
        let other = redis::parse_redis_value(b"-ERR no\r\n").expect("parses");
        assert_eq!(redirect(&other, &asked), None);
    }

    #[test]
    fn cluster_slots_replies_parse() {
        let asked = Addr::Tcp {
            host: "127.0.0.1".into(),
            port: 7000,
        };
        let node = |h: &str, p: i64| {
            Value::Array(vec![
                Value::BulkString(h.as_bytes().to_vec()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("", 7000),
                node("127.0.0.1", 7003),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node("127.0.0.2", 7001),
            ]),
        ]);
        let ranges = parse_slots(&reply, &asked).expect("parses");
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0].2, asked);
        assert_eq!(ranges[0].3.len(), 1);
        assert_eq!(ranges[1].0, 5461);
        assert!(parse_slots(&Value::Int(1), &asked).is_none());
    }
}
