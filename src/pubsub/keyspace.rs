//! Keyspace notifications: what happened to which key.

use std::time::Duration;

use crossbeam_channel::{RecvError, RecvTimeoutError, TryRecvError};

use super::{Message, Subscription};
use crate::client::Redis;
use crate::error::Result;

/// One keyspace notification: `event` (such as `set`, `del`, `expired`, `lpush`) happened to
/// `key`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEvent {
    /// The key (full name, including any key prefix).
    pub key: Vec<u8>,
    /// The event, as the server names it.
    pub event: String,
}

impl KeyEvent {
    /// The key as text (invalid UTF-8 replaced by `U+FFFD`).
    pub fn key_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.key)
    }

    fn from_message(msg: &Message, prefix_len: usize) -> KeyEvent {
        KeyEvent {
            key: msg.channel().get(prefix_len..).unwrap_or_default().to_vec(),
            event: String::from_utf8_lossy(msg.payload()).into_owned(),
        }
    }
}

/// A keyspace subscription ([`Subscriber::keyspace`](super::Subscriber::keyspace)).
#[must_use = "dropping KeyEvents unsubscribes"]
#[derive(Debug)]
pub struct KeyEvents {
    sub: Subscription,
    prefix_len: usize,
}

impl KeyEvents {
    pub(crate) fn new(sub: Subscription, prefix_len: usize) -> KeyEvents {
        KeyEvents { sub, prefix_len }
    }

    /// Waits for the next event.
    pub fn recv(&self) -> std::result::Result<KeyEvent, RecvError> {
        self.sub
            .recv()
            .map(|m| KeyEvent::from_message(&m, self.prefix_len))
    }

    /// Waits at most `timeout` for the next event.
    pub fn recv_timeout(
        &self,
        timeout: Duration,
    ) -> std::result::Result<KeyEvent, RecvTimeoutError> {
        self.sub
            .recv_timeout(timeout)
            .map(|m| KeyEvent::from_message(&m, self.prefix_len))
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> std::result::Result<KeyEvent, TryRecvError> {
        self.sub
            .try_recv()
            .map(|m| KeyEvent::from_message(&m, self.prefix_len))
    }

    /// A blocking iterator over events; ends when the subscriber stops.
    pub fn iter(&self) -> impl Iterator<Item = KeyEvent> + '_ {
        self.sub
            .iter()
            .map(|m| KeyEvent::from_message(&m, self.prefix_len))
    }

    /// The underlying subscription (for `select!` on its receiver, or its counters).
    pub fn subscription(&self) -> &Subscription {
        &self.sub
    }
}

/// Merges notification flags: the current ones, `K` (keyspace channels) and `classes`.
fn merge_flags(current: &str, classes: &str) -> String {
    let mut flags: Vec<char> = current.chars().collect();
    for c in std::iter::once('K').chain(classes.chars()) {
        if !flags.contains(&c) {
            flags.push(c);
        }
    }
    flags.into_iter().collect()
}

impl Redis {
    /// Turns keyspace notifications on (`CONFIG SET notify-keyspace-events`) for the event
    /// `classes` (`A` for all, or letters such as `g$lshzxe`; see the Redis docs), keeping
    /// the flags already set. Returns the flags now in effect. Needs the `CONFIG` command
    /// (managed services often refuse it; set the option in their console instead).
    pub fn enable_keyspace_events(&self, classes: &str) -> Result<String> {
        let (_, current): (String, String) = self.query_idempotent(
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("notify-keyspace-events"),
        )?;
        let flags = merge_flags(&current, classes);
        self.query_idempotent::<()>(
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("notify-keyspace-events")
                .arg(&flags),
        )?;
        let (_, now): (String, String) = self.query_idempotent(
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("notify-keyspace-events"),
        )?;
        Ok(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_merge_without_duplicates() {
        assert_eq!(merge_flags("", "A"), "KA");
        assert_eq!(merge_flags("Ex", "A"), "ExKA");
        assert_eq!(merge_flags("KA", "A"), "KA");
    }

    #[test]
    fn key_comes_from_the_channel() {
        let m = Message::new(
            super::super::Kind::Pattern,
            Some(b"__keyspace@0__:user:*".to_vec()),
            b"__keyspace@0__:user:1".to_vec(),
            b"set".to_vec(),
        );
        let e = KeyEvent::from_message(&m, "__keyspace@0__:".len());
        assert_eq!(e.key, b"user:1");
        assert_eq!(e.event, "set");
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::util::property_cases()))]

            #[test]
            fn keyspace_flags_merge_into_one_set(current in "[KEg$lshzxeAtmdn]{0,12}", classes in "[KEg$lshzxeAtmdn]{0,12}") {
                // What the server holds has no duplicates.
                let mut once = std::collections::HashSet::new();
                let current: String = current.chars().filter(|c| once.insert(*c)).collect();
                let merged = merge_flags(&current, &classes);
                for c in current.chars().chain(classes.chars()) {
                    prop_assert!(merged.contains(c), "{} + {} -> {}", current, classes, merged);
                }
                let mut seen = std::collections::HashSet::new();
                prop_assert!(merged.chars().all(|c| seen.insert(c)), "no duplicates: {}", merged);
            }
        }
    }
}
