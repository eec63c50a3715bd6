//! Commands that change a connection's state for whoever uses it next, and the rules that
//! keep that state from leaking between callers of a shared connection. Pure functions.

use crate::error::Error;
use crate::util::resp;

/// What a command does to its connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Nothing that outlives the command.
    None,
    /// `MULTI`: commands queue until `EXEC` or `DISCARD`.
    Multi,
    /// `EXEC` or `DISCARD`: the transaction ends and every `WATCH` is cleared.
    EndMulti,
    /// `WATCH`: a later `EXEC` depends on it.
    Watch,
    /// `UNWATCH`.
    Unwatch,
    /// Changes the connection for every later command (database, protocol, identity,
    /// subscriptions, replies, tracking...): the command as named, and what to use instead.
    Changes {
        command: &'static str,
        instead: &'static str,
    },
}

const USE_SUBSCRIBER: &str =
    "a subscribed connection serves nothing else: use redkit::Subscriber::new(&redis) (or Redis::dedicated())";
const USE_DEDICATED: &str =
    "it changes the connection for later callers: use Redis::dedicated() for a connection of your own";
const USE_CONFIG_DB: &str =
    "it would change the database for later callers: set the database in the config \
     (`/2` in the URL, ConfigBuilder::db), or use Redis::dedicated()";
const USE_CONFIG_AUTH: &str =
    "connections authenticate and pick their protocol from the config (username, password, \
     protocol); for another identity use another handle, or Redis::dedicated()";
const USE_TRANSACTION: &str =
    "transactions on a shared connection must be whole: use Redis::transaction(), an \
     atomic Pipeline (MULTI..EXEC in one call), or Redis::dedicated()";

fn is(name: &[u8], what: &[u8]) -> bool {
    name.eq_ignore_ascii_case(what)
}

/// What the command `name` (with its first argument `sub`) does to its connection.
pub(crate) fn effect(name: &[u8], sub: Option<&[u8]>) -> Effect {
    let changes = |command, instead| Effect::Changes { command, instead };
    // Most commands are none of these: dispatch on the length first.
    match name.len() {
        4 if is(name, b"EXEC") => Effect::EndMulti,
        4 if is(name, b"AUTH") => changes("AUTH", USE_CONFIG_AUTH),
        4 if is(name, b"QUIT") => changes("QUIT", USE_DEDICATED),
        4 if is(name, b"SYNC") => changes("SYNC", USE_DEDICATED),
        5 if is(name, b"MULTI") => Effect::Multi,
        5 if is(name, b"WATCH") => Effect::Watch,
        5 if is(name, b"HELLO") => changes("HELLO", USE_CONFIG_AUTH),
        5 if is(name, b"RESET") => changes("RESET", USE_DEDICATED),
        5 if is(name, b"PSYNC") => changes("PSYNC", USE_DEDICATED),
        6 if is(name, b"SELECT") => changes("SELECT", USE_CONFIG_DB),
        6 if is(name, b"CLIENT") => client(sub),
        6 if is(name, b"ASKING") => changes("ASKING", USE_DEDICATED),
        7 if is(name, b"DISCARD") => Effect::EndMulti,
        7 if is(name, b"UNWATCH") => Effect::Unwatch,
        7 if is(name, b"MONITOR") => changes("MONITOR", USE_DEDICATED),
        8 if is(name, b"READONLY") => changes("READONLY", USE_DEDICATED),
        8 if is(name, b"REPLCONF") => changes("REPLCONF", USE_DEDICATED),
        9 if is(name, b"SUBSCRIBE") => changes("SUBSCRIBE", USE_SUBSCRIBER),
        9 if is(name, b"READWRITE") => changes("READWRITE", USE_DEDICATED),
        10 if is(name, b"PSUBSCRIBE") => changes("PSUBSCRIBE", USE_SUBSCRIBER),
        10 if is(name, b"SSUBSCRIBE") => changes("SSUBSCRIBE", USE_SUBSCRIBER),
        11 if is(name, b"UNSUBSCRIBE") => changes("UNSUBSCRIBE", USE_SUBSCRIBER),
        12 if is(name, b"PUNSUBSCRIBE") => changes("PUNSUBSCRIBE", USE_SUBSCRIBER),
        12 if is(name, b"SUNSUBSCRIBE") => changes("SUNSUBSCRIBE", USE_SUBSCRIBER),
        _ => Effect::None,
    }
}

fn client(sub: Option<&[u8]>) -> Effect {
    let Some(sub) = sub else {
        return Effect::None;
    };
    let changes = |command| Effect::Changes {
        command,
        instead: USE_DEDICATED,
    };
    if is(sub, b"TRACKING") {
        changes("CLIENT TRACKING")
    } else if is(sub, b"REPLY") {
        changes("CLIENT REPLY")
    } else if is(sub, b"SETNAME") {
        changes("CLIENT SETNAME")
    } else if is(sub, b"SETINFO") {
        changes("CLIENT SETINFO")
    } else if is(sub, b"NO-EVICT") {
        changes("CLIENT NO-EVICT")
    } else if is(sub, b"NO-TOUCH") {
        changes("CLIENT NO-TOUCH")
    } else if is(sub, b"CACHING") {
        changes("CLIENT CACHING")
    } else {
        Effect::None
    }
}

/// Whether a command may block its connection for long on the server (`BLPOP` and the other
/// blocking pops, `XREAD`/`XREADGROUP ... BLOCK`, `WAIT`, `WAITAOF`): such a command must not
/// share a connection with others, whose replies would wait behind it.
pub(crate) fn is_blocking(args_name: &[u8], args: &[&[u8]]) -> bool {
    if !may_block(args_name) {
        return false;
    }
    let blocking = [
        "BLPOP",
        "BRPOP",
        "BLMOVE",
        "BRPOPLPUSH",
        "BZPOPMIN",
        "BZPOPMAX",
        "BLMPOP",
        "BZMPOP",
        "WAIT",
        "WAITAOF",
    ];
    if blocking.iter().any(|b| is(args_name, b.as_bytes())) {
        return true;
    }
    (is(args_name, b"XREAD") || is(args_name, b"XREADGROUP"))
        && args.iter().any(|a| is(a, b"BLOCK"))
}

/// A quick filter for [`is_blocking`]: every blocking command starts with `B`, `W` or `X`
/// (most commands are not looked at further).
pub(crate) fn may_block(name: &[u8]) -> bool {
    matches!(
        name.first().map(u8::to_ascii_uppercase),
        Some(b'B' | b'W' | b'X')
    )
}

/// Whether any command of a packed request may block its connection (see [`is_blocking`]);
/// a request that does not parse counts as blocking.
pub(crate) fn any_blocking(packed: &[u8]) -> bool {
    // Names first, without allocating: most requests hold no command that may block.
    let mut maybe = false;
    let parsed = resp::each_command(packed, |name, _| {
        maybe = may_block(name);
        !maybe
    });
    if !maybe {
        return !parsed;
    }
    match resp::split_pipeline(packed) {
        Some(cmds) => cmds.iter().any(|(_, args)| {
            args.first()
                .is_some_and(|name| is_blocking(name, &args[1..]))
        }),
        None => true,
    }
}

/// The state a connection is left in by the commands sent on it so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Left {
    /// Inside `MULTI`.
    pub(crate) multi: bool,
    /// A `WATCH` is in force.
    pub(crate) watch: bool,
    /// Something that changes the connection for good was sent.
    pub(crate) changed: bool,
}

impl Left {
    /// Accounts for one command.
    pub(crate) fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::None => {}
            Effect::Multi => self.multi = true,
            Effect::EndMulti => {
                self.multi = false;
                self.watch = false;
            }
            Effect::Watch => self.watch = true,
            Effect::Unwatch => self.watch = false,
            Effect::Changes { .. } => self.changed = true,
        }
    }

    /// Accounts for every command in a packed command or pipeline (a request that does not
    /// parse counts as a change: its effect is unknown).
    pub(crate) fn apply_packed(&mut self, packed: &[u8]) {
        let parsed = resp::each_command(packed, |name, sub| {
            self.apply(effect(name, sub));
            true
        });
        if !parsed {
            self.changed = true;
        }
    }

    /// Whether the next user of the connection would see a state other than the configured
    /// one.
    pub(crate) fn is_dirty(&self) -> bool {
        self.multi || self.watch || self.changed
    }
}

/// Checks a packed command or pipeline for a shared connection (a pooled call through the
/// handle, the multiplexed connection): nothing may outlive the request. A whole transaction
/// (`MULTI` ... `EXEC` in one request) is fine; a lone `WATCH`, `MULTI` or `EXEC`, or any
/// command that changes the connection, is refused before anything is sent.
///
/// Also tells, in the same pass over the request, whether a command may block its
/// connection (see [`any_blocking`]): `Ok(true)` then.
pub(crate) fn check_shared(packed: &[u8]) -> Result<bool, Error> {
    let mut left = Left::default();
    let mut refused: Option<Error> = None;
    let mut maybe_blocking = false;
    let parsed = resp::each_command(packed, |name, sub| {
        maybe_blocking |= may_block(name);
        let e = effect(name, sub);
        let bad = match e {
            Effect::Changes { command, instead } => Some((command.to_owned(), instead)),
            Effect::Multi if left.multi => Some(("MULTI".to_owned(), USE_TRANSACTION)),
            Effect::EndMulti if !left.multi => Some((upper(name), USE_TRANSACTION)),
            _ => None,
        };
        if let Some((command, instead)) = bad {
            refused = Some(Error::WrongConnection { command, instead });
            return false;
        }
        left.apply(e);
        true
    });
    if let Some(e) = refused {
        return Err(e);
    }
    if parsed && (left.multi || left.watch) {
        let command = if left.multi { "MULTI" } else { "WATCH" };
        return Err(Error::WrongConnection {
            command: command.to_owned(),
            instead: USE_TRANSACTION,
        });
    }
    // A request that does not parse counts as blocking; a name that may block has its
    // arguments looked at.
    Ok(!parsed || (maybe_blocking && any_blocking(packed)))
}

fn upper(name: &[u8]) -> String {
    String::from_utf8_lossy(name).to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(args: &[&str]) -> Vec<u8> {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.get_packed_command()
    }

    #[test]
    fn blocking_commands_are_found_in_a_request() {
        assert!(!any_blocking(&packed(&["GET", "k"])));
        assert!(any_blocking(&packed(&["blpop", "q", "0"])));
        assert!(any_blocking(&packed(&[
            "XREAD", "COUNT", "1", "block", "0", "STREAMS", "s", "$"
        ])));
        assert!(!any_blocking(&packed(&[
            "XREAD", "COUNT", "1", "STREAMS", "s", "0"
        ])));
        assert!(!any_blocking(&packed(&["WATCH", "k"])));
        assert!(any_blocking(&packed(&["WAIT", "1", "0"])));
        let mut two = packed(&["GET", "k"]);
        two.extend(packed(&["BRPOP", "q", "1"]));
        assert!(any_blocking(&two));
        // A request that does not parse counts as blocking.
        assert!(any_blocking(b"*2\r\n$3\r\nGET"));
        assert!(!may_block(b"GET") && may_block(b"bzpopmin") && !may_block(b""));
        // The same answers from the shared-connection check's single pass.
        assert_eq!(check_shared(&packed(&["GET", "k"])).ok(), Some(false));
        assert_eq!(check_shared(&packed(&["BLPOP", "q", "0"])).ok(), Some(true));
        assert_eq!(check_shared(&packed(&["BITCOUNT", "k"])).ok(), Some(false));
        assert_eq!(check_shared(&two).ok(), Some(true));
    }

    #[test]
    fn stateful_commands_are_known() {
        for cmd in [
            &["SELECT", "5"][..],
            &["subscribe", "ch"],
            &["PSUBSCRIBE", "c*"],
            &["SSUBSCRIBE", "s"],
            &["MONITOR"],
            &["CLIENT", "TRACKING", "on"],
            &["client", "reply", "off"],
            &["CLIENT", "SETNAME", "x"],
            &["CLIENT", "NO-EVICT", "on"],
            &["READONLY"],
            &["READWRITE"],
            &["HELLO", "3"],
            &["AUTH", "pw"],
            &["RESET"],
            &["QUIT"],
        ] {
            let p = packed(cmd);
            let e = check_shared(&p).expect_err(cmd[0]);
            assert!(matches!(e, Error::WrongConnection { .. }), "{e:?}");
            let mut left = Left::default();
            left.apply_packed(&p);
            assert!(left.is_dirty(), "{cmd:?}");
        }
        for cmd in [
            &["GET", "k"][..],
            &["CLIENT", "ID"],
            &["UNWATCH"],
            &["PING"],
        ] {
            assert!(check_shared(&packed(cmd)).is_ok(), "{cmd:?}");
            let mut left = Left::default();
            left.apply_packed(&packed(cmd));
            assert!(!left.is_dirty(), "{cmd:?}");
        }
    }

    #[test]
    fn blocking_commands_are_known() {
        assert!(any_blocking(&packed(&["BLPOP", "q", "1"])));
        assert!(any_blocking(&packed(&[
            "xreadgroup",
            "GROUP",
            "g",
            "c",
            "BLOCK",
            "5",
            "STREAMS",
            "s",
            ">"
        ])));
        assert!(!any_blocking(&packed(&["XREAD", "STREAMS", "s", "0"])));
        assert!(!any_blocking(&packed(&["GET", "k"])));
        assert!(any_blocking(b"garbage"));
    }

    #[test]
    fn whole_transactions_pass_and_halves_do_not() {
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("INCR").arg("a").cmd("GET").arg("a");
        assert!(check_shared(&pipe.get_packed_pipeline()).is_ok());
        for lone in [&["MULTI"][..], &["EXEC"], &["DISCARD"], &["WATCH", "k"]] {
            assert!(check_shared(&packed(lone)).is_err(), "{lone:?}");
        }
        let mut left = Left::default();
        left.apply_packed(&packed(&["WATCH", "k"]));
        assert!(left.is_dirty());
        left.apply_packed(&packed(&["MULTI"]));
        left.apply_packed(&packed(&["EXEC"]));
        assert!(!left.is_dirty());
        left.apply_packed(b"garbage");
        assert!(left.is_dirty());
    }
}
