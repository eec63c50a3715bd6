//! Where the keys of a command are, for the key prefix of a handle
//! ([`key_prefix`](crate::ConfigBuilder::key_prefix)). Pure functions.
//!
//! What is prefixed: every key argument of the commands below, in plain commands,
//! pipelines and transactions (`WATCH` included), script and function `KEYS`
//! (`EVAL`/`EVALSHA`/`FCALL` and their `_RO` forms), and the keys of multi-key commands
//! (`MGET`, `MSET`, `DEL`, `SINTERSTORE`, `ZUNIONSTORE`, `BLPOP`, `XREAD ... STREAMS`,
//! `SORT ... STORE`, `GEORADIUS ... STORE`...). What is not: patterns (`SCAN MATCH`,
//! `KEYS`, `SORT BY`/`GET`), channels, and anything in replies (a `SCAN`, `KEYS` or
//! `XREAD` reply shows the full, prefixed names); commands redkit does not know (module
//! commands) pass through unchanged.

use crate::util::resp;

fn is(name: &[u8], what: &str) -> bool {
    name.eq_ignore_ascii_case(what.as_bytes())
}

fn number(arg: Option<&&[u8]>) -> Option<usize> {
    std::str::from_utf8(arg?).ok()?.parse().ok()
}

/// The indices (into `args`, the command name at 0) of the command's keys.
pub(crate) fn key_indices(args: &[&[u8]]) -> Vec<usize> {
    let Some(name) = args.first() else {
        return Vec::new();
    };
    let n = args.len();
    let all_from = |start: usize| (start..n).collect::<Vec<_>>();
    let range = |start: usize, count: usize| {
        (start..start.saturating_add(count).min(n)).collect::<Vec<_>>()
    };
    let upper = name.to_ascii_uppercase();
    match upper.as_slice() {
        // No keys.
        b"PING" | b"ECHO" | b"INFO" | b"CLIENT" | b"CONFIG" | b"CLUSTER" | b"COMMAND"
        | b"DBSIZE" | b"FLUSHALL" | b"FLUSHDB" | b"TIME" | b"WAIT" | b"WAITAOF" | b"MULTI"
        | b"EXEC" | b"DISCARD" | b"UNWATCH" | b"ASKING" | b"READONLY" | b"READWRITE" | b"SCAN"
        | b"KEYS" | b"RANDOMKEY" | b"AUTH" | b"HELLO" | b"SELECT" | b"LASTSAVE" | b"SAVE"
        | b"BGSAVE" | b"BGREWRITEAOF" | b"DEBUG" | b"SLOWLOG" | b"LATENCY" | b"ACL"
        | b"FUNCTION" | b"SCRIPT" | b"PUBLISH" | b"SPUBLISH" | b"PUBSUB" | b"ROLE" | b"MODULE"
        | b"SWAPDB" | b"QUIT" | b"RESET" | b"LOLWUT" | b"SHUTDOWN" | b"MONITOR" | b"SUBSCRIBE"
        | b"PSUBSCRIBE" | b"SSUBSCRIBE" | b"UNSUBSCRIBE" | b"PUNSUBSCRIBE" | b"SUNSUBSCRIBE"
        | b"REPLICAOF" | b"SLAVEOF" | b"FAILOVER" | b"SYNC" | b"PSYNC" => Vec::new(),
        // Every argument is a key.
        b"DEL" | b"UNLINK" | b"EXISTS" | b"TOUCH" | b"MGET" | b"WATCH" | b"SINTER" | b"SUNION"
        | b"SDIFF" | b"SINTERSTORE" | b"SUNIONSTORE" | b"SDIFFSTORE" | b"PFCOUNT" | b"PFMERGE"
        | b"RENAME" | b"RENAMENX" | b"RPOPLPUSH" => all_from(1),
        // Every argument but the last (a timeout) is a key.
        b"BLPOP" | b"BRPOP" | b"BZPOPMIN" | b"BZPOPMAX" => (1..n.saturating_sub(1)).collect(),
        // Two keys first.
        b"SMOVE" | b"LMOVE" | b"BLMOVE" | b"BRPOPLPUSH" | b"COPY" | b"ZRANGESTORE"
        | b"GEOSEARCHSTORE" | b"LCS" => range(1, 2),
        // Keys and values alternate.
        b"MSET" | b"MSETNX" => (1..n).step_by(2).collect(),
        // The operation, then the destination and the sources.
        b"BITOP" => all_from(2),
        // A subcommand, then one key.
        b"OBJECT" | b"XINFO" | b"XGROUP" | b"MEMORY" => range(2, 1),
        // numkeys after the script: EVAL script numkeys key... arg...
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            range(3, number(args.get(2)).unwrap_or(0))
        }
        // destination numkeys key...
        b"ZUNIONSTORE" | b"ZINTERSTORE" | b"ZDIFFSTORE" => {
            let mut v = vec![1];
            v.extend(range(3, number(args.get(2)).unwrap_or(0)));
            v.retain(|&i| i < n);
            v
        }
        // numkeys key...
        b"ZUNION" | b"ZINTER" | b"ZDIFF" | b"ZINTERCARD" | b"SINTERCARD" | b"LMPOP" | b"ZMPOP" => {
            range(2, number(args.get(1)).unwrap_or(0))
        }
        // timeout numkeys key...
        b"BLMPOP" | b"BZMPOP" => range(3, number(args.get(2)).unwrap_or(0)),
        // ... STREAMS key... id...
        b"XREAD" | b"XREADGROUP" => match args.iter().position(|a| is(a, "STREAMS")) {
            Some(at) => {
                let rest = n - at - 1;
                range(at + 1, rest / 2)
            }
            None => Vec::new(),
        },
        // key ... [STORE destination]
        b"SORT" | b"SORT_RO" | b"GEORADIUS" | b"GEORADIUSBYMEMBER" => {
            let mut v = vec![1];
            let mut i = 2;
            while i + 1 < n {
                if is(args[i], "STORE") || is(args[i], "STOREDIST") {
                    v.push(i + 1);
                }
                i += 1;
            }
            v.retain(|&i| i < n);
            v
        }
        // Commands redkit does not know keep their arguments as they are; every other known
        // command has one key, first.
        _ if n > 1 && is_single_key(&upper) => vec![1],
        _ => Vec::new(),
    }
}

/// Known commands whose only key is their first argument.
fn is_single_key(upper: &[u8]) -> bool {
    const SINGLE: &[&str] = &[
        "APPEND",
        "BITCOUNT",
        "BITFIELD",
        "BITFIELD_RO",
        "BITPOS",
        "DECR",
        "DECRBY",
        "DUMP",
        "EXPIRE",
        "EXPIREAT",
        "EXPIRETIME",
        "GEOADD",
        "GEODIST",
        "GEOHASH",
        "GEOPOS",
        "GEOSEARCH",
        "GET",
        "GETBIT",
        "GETDEL",
        "GETEX",
        "GETRANGE",
        "GETSET",
        "HDEL",
        "HEXISTS",
        "HEXPIRE",
        "HGET",
        "HGETALL",
        "HGETDEL",
        "HGETEX",
        "HINCRBY",
        "HINCRBYFLOAT",
        "HKEYS",
        "HLEN",
        "HMGET",
        "HMSET",
        "HPERSIST",
        "HPEXPIRE",
        "HPTTL",
        "HRANDFIELD",
        "HSCAN",
        "HSET",
        "HSETEX",
        "HSETNX",
        "HSTRLEN",
        "HTTL",
        "HVALS",
        "INCR",
        "INCRBY",
        "INCRBYFLOAT",
        "LINDEX",
        "LINSERT",
        "LLEN",
        "LPOP",
        "LPOS",
        "LPUSH",
        "LPUSHX",
        "LRANGE",
        "LREM",
        "LSET",
        "LTRIM",
        "PERSIST",
        "PEXPIRE",
        "PEXPIREAT",
        "PEXPIRETIME",
        "PFADD",
        "PSETEX",
        "PTTL",
        "RESTORE",
        "RPOP",
        "RPUSH",
        "RPUSHX",
        "SADD",
        "SCARD",
        "SET",
        "SETBIT",
        "SETEX",
        "SETNX",
        "SETRANGE",
        "SISMEMBER",
        "SMEMBERS",
        "SMISMEMBER",
        "SPOP",
        "SRANDMEMBER",
        "SREM",
        "SSCAN",
        "STRLEN",
        "SUBSTR",
        "TTL",
        "TYPE",
        "XACK",
        "XADD",
        "XAUTOCLAIM",
        "XCLAIM",
        "XDEL",
        "XLEN",
        "XPENDING",
        "XRANGE",
        "XREVRANGE",
        "XSETID",
        "XTRIM",
        "ZADD",
        "ZCARD",
        "ZCOUNT",
        "ZINCRBY",
        "ZLEXCOUNT",
        "ZMSCORE",
        "ZPOPMAX",
        "ZPOPMIN",
        "ZRANDMEMBER",
        "ZRANGE",
        "ZRANGEBYLEX",
        "ZRANGEBYSCORE",
        "ZRANK",
        "ZREM",
        "ZREMRANGEBYLEX",
        "ZREMRANGEBYRANK",
        "ZREMRANGEBYSCORE",
        "ZREVRANGE",
        "ZREVRANGEBYLEX",
        "ZREVRANGEBYSCORE",
        "ZREVRANK",
        "ZSCAN",
        "ZSCORE",
        "GEORADIUS_RO",
        "GEORADIUSBYMEMBER_RO",
    ];
    SINGLE.iter().any(|s| s.as_bytes() == upper)
}

/// `packed` (one command or a pipeline) with `prefix` in front of every key; `None` when
/// no command in it has a key (nothing to change) or it does not parse.
pub(crate) fn prefixed(packed: &[u8], prefix: &[u8]) -> Option<Vec<u8>> {
    let cmds = resp::split_pipeline(packed)?;
    let mut any = false;
    let mut out = Vec::with_capacity(packed.len() + 16 * cmds.len());
    for (raw, args) in &cmds {
        let keys = key_indices(args);
        if keys.is_empty() {
            out.extend_from_slice(raw);
            continue;
        }
        any = true;
        let owned: Vec<Vec<u8>> = args
            .iter()
            .enumerate()
            .map(|(i, a)| {
                if keys.contains(&i) {
                    let mut k = Vec::with_capacity(prefix.len() + a.len());
                    k.extend_from_slice(prefix);
                    k.extend_from_slice(a);
                    k
                } else {
                    a.to_vec()
                }
            })
            .collect();
        let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        resp::pack_into(&mut out, &refs);
    }
    any.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(words: &[&str]) -> Vec<String> {
        let args: Vec<&[u8]> = words.iter().map(|w| w.as_bytes()).collect();
        key_indices(&args)
            .into_iter()
            .map(|i| words[i].to_owned())
            .collect()
    }

    #[test]
    fn keys_are_found_where_each_command_keeps_them() {
        assert_eq!(keys_of(&["GET", "a"]), ["a"]);
        assert_eq!(keys_of(&["SET", "a", "1", "EX", "5"]), ["a"]);
        assert_eq!(keys_of(&["MGET", "a", "b"]), ["a", "b"]);
        assert_eq!(keys_of(&["MSET", "a", "1", "b", "2"]), ["a", "b"]);
        assert_eq!(keys_of(&["DEL", "a", "b", "c"]), ["a", "b", "c"]);
        assert_eq!(keys_of(&["BLPOP", "a", "b", "5"]), ["a", "b"]);
        assert_eq!(keys_of(&["LMOVE", "a", "b", "LEFT", "RIGHT"]), ["a", "b"]);
        assert_eq!(keys_of(&["EVALSHA", "sha", "2", "a", "b", "x"]), ["a", "b"]);
        assert_eq!(keys_of(&["EVAL", "s", "0", "x"]), Vec::<String>::new());
        assert_eq!(
            keys_of(&["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"]),
            ["d", "a", "b"]
        );
        assert_eq!(
            keys_of(&["ZINTERCARD", "2", "a", "b", "LIMIT", "1"]),
            ["a", "b"]
        );
        assert_eq!(keys_of(&["BLMPOP", "1", "2", "a", "b", "LEFT"]), ["a", "b"]);
        assert_eq!(
            keys_of(&[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "COUNT",
                "1",
                "STREAMS",
                "s1",
                "s2",
                ">",
                ">"
            ]),
            ["s1", "s2"]
        );
        assert_eq!(
            keys_of(&["SORT", "l", "BY", "w_*", "STORE", "d"]),
            ["l", "d"]
        );
        assert_eq!(keys_of(&["BITOP", "AND", "d", "a", "b"]), ["d", "a", "b"]);
        assert_eq!(keys_of(&["OBJECT", "ENCODING", "a"]), ["a"]);
        assert_eq!(keys_of(&["MEMORY", "USAGE", "a"]), ["a"]);
        assert_eq!(keys_of(&["SCAN", "0", "MATCH", "a*"]), Vec::<String>::new());
        assert_eq!(keys_of(&["PUBLISH", "ch", "x"]), Vec::<String>::new());
        assert_eq!(keys_of(&["MODULE.CMD", "a"]), Vec::<String>::new());
        assert_eq!(keys_of(&["get", "a"]), ["a"]);
        // A corrupt numkeys never indexes past the arguments.
        assert_eq!(keys_of(&["EVAL", "s", "99", "a"]), ["a"]);
    }

    #[test]
    fn pipelines_are_rewritten_command_by_command() {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg("a")
            .arg("1")
            .cmd("PING")
            .cmd("MGET")
            .arg("a")
            .arg("b");
        let out = prefixed(&pipe.get_packed_pipeline(), b"p:").expect("has keys");
        let mut want = redis::pipe();
        want.cmd("SET")
            .arg("p:a")
            .arg("1")
            .cmd("PING")
            .cmd("MGET")
            .arg("p:a")
            .arg("p:b");
        assert_eq!(out, want.get_packed_pipeline());
        assert!(prefixed(&redis::cmd("PING").get_packed_command(), b"p:").is_none());
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn word() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("GET".to_owned()),
                Just("MSET".to_owned()),
                Just("EVAL".to_owned()),
                Just("ZUNIONSTORE".to_owned()),
                Just("XREAD".to_owned()),
                Just("STREAMS".to_owned()),
                Just("BLPOP".to_owned()),
                Just("SORT".to_owned()),
                Just("STORE".to_owned()),
                Just("BLMPOP".to_owned()),
                Just("99999999999999999999".to_owned()),
                "[0-9]{1,3}",
                "[a-z]{0,6}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::util::property_cases()))]

            #[test]
            fn key_positions_stay_inside_the_command(words in proptest::collection::vec(word(), 0..12)) {
                let args: Vec<&[u8]> = words.iter().map(|w| w.as_bytes()).collect();
                let keys = key_indices(&args);
                prop_assert!(keys.iter().all(|&i| i > 0 && i < args.len()), "{:?} -> {:?}", words, keys);
                let packed = crate::util::resp::pack(&args);
                if let Some(out) = prefixed(&packed, b"p:") {
                    let (new, _) = crate::util::resp::split_command(&out).expect("packed");
                    prop_assert_eq!(new.len(), args.len());
                    for &i in &keys {
                        prop_assert!(new[i].starts_with(b"p:"));
                    }
                }
            }
        }
    }
}
