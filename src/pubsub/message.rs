//! Messages, delivery queues and their backpressure policies.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TrySendError};
use redis::{FromRedisValue, Value};

use super::frame::Kind;
use crate::error::{Delivery, Error, Result};

/// A published message, as a [`Subscription`](super::Subscription) receives it.
///
/// Cheap to clone (shared): several subscriptions to one channel receive the same message
/// without copying its payload.
#[derive(Clone)]
pub struct Message(Arc<Parts>);

struct Parts {
    kind: Kind,
    pattern: Option<Vec<u8>>,
    channel: Vec<u8>,
    payload: Vec<u8>,
}

impl Message {
    pub(crate) fn new(
        kind: Kind,
        pattern: Option<Vec<u8>>,
        channel: Vec<u8>,
        payload: Vec<u8>,
    ) -> Message {
        Message(Arc::new(Parts {
            kind,
            pattern,
            channel,
            payload,
        }))
    }

    /// How it was subscribed: by channel, by pattern, or as a shard channel.
    pub fn kind(&self) -> Kind {
        self.0.kind
    }

    /// The channel it was published to (for a pattern subscription: the matching channel).
    pub fn channel(&self) -> &[u8] {
        &self.0.channel
    }

    /// The channel as text (invalid UTF-8 replaced by `U+FFFD`).
    pub fn channel_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0.channel)
    }

    /// The pattern that matched, for a pattern subscription.
    pub fn pattern(&self) -> Option<&[u8]> {
        self.0.pattern.as_deref()
    }

    /// The payload, exactly as published (any bytes).
    pub fn payload(&self) -> &[u8] {
        &self.0.payload
    }

    /// The payload as UTF-8 text.
    pub fn payload_str(&self) -> std::result::Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.0.payload)
    }

    /// The payload converted like a reply: `i64`, `f64`, `String`, `Vec<u8>`, ... A payload
    /// that does not convert is an [`ErrorClass::Conversion`](crate::ErrorClass::Conversion)
    /// error.
    ///
    /// ```
    /// # fn f(msg: redkit::pubsub::Message) -> redkit::Result<()> {
    /// let count: i64 = msg.payload_as()?;
    /// # Ok(()) }
    /// ```
    pub fn payload_as<T: FromRedisValue>(&self) -> Result<T> {
        T::from_redis_value(Value::BulkString(self.0.payload.clone()))
            .map_err(|e| Error::from_redis(e.into(), Delivery::Unknown))
    }

    /// The payload decoded from JSON.
    #[cfg(feature = "json")]
    #[cfg_attr(docsrs, doc(cfg(feature = "json")))]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.0.payload)
    }

    /// The payload, without a copy when this is the only clone.
    pub fn into_payload(self) -> Vec<u8> {
        match Arc::try_unwrap(self.0) {
            Ok(parts) => parts.payload,
            Err(shared) => shared.payload.clone(),
        }
    }
}

impl fmt::Debug for Message {
    /// Shows the channel and the payload's size, never the payload itself (it may be
    /// sensitive).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Message");
        d.field("kind", &self.0.kind)
            .field("channel", &self.channel_str());
        if let Some(p) = &self.0.pattern {
            d.field("pattern", &String::from_utf8_lossy(p));
        }
        d.field("payload_len", &self.0.payload.len()).finish()
    }
}

/// What a subscription does when its queue is full because its reader is slower than the
/// publishers.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backpressure {
    /// Keep the queued messages, drop the new one.
    DropNewest,
    /// Drop the oldest queued message to make room for the new one: the reader sees the
    /// freshest messages. The default.
    #[default]
    DropOldest,
    /// Wait until the reader makes room. Nothing is dropped by redkit, but while one
    /// subscription's queue is full the subscriber thread reads nothing at all: every other
    /// subscription of the same [`Subscriber`](super::Subscriber) stalls too, and the
    /// server buffers the messages instead. When that buffer passes the server's
    /// `client-output-buffer-limit pubsub` (32 MB hard, or 8 MB for 60 s by default) the
    /// server **disconnects** the subscriber, and every message published until it is
    /// resubscribed is lost. Use it for a reader that is always fast, or give the slow
    /// reader its own `Subscriber`.
    Block,
}

/// Settings of one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionOptions {
    pub(crate) capacity: usize,
    pub(crate) backpressure: Backpressure,
    pub(crate) timeout: Option<Duration>,
}

impl Default for SubscriptionOptions {
    /// A queue of 4096 messages, [`Backpressure::DropOldest`], and the handle's response
    /// timeout to wait for the server's confirmation.
    fn default() -> Self {
        SubscriptionOptions {
            capacity: 4096,
            backpressure: Backpressure::DropOldest,
            timeout: None,
        }
    }
}

impl SubscriptionOptions {
    /// The queue length between the subscriber thread and the reader. Defaults to 4096.
    /// Memory held by a subscription whose reader stopped is at most this many messages.
    /// At most [`MAX_CAPACITY`](crate::pubsub::MAX_CAPACITY); a larger one is refused with a
    /// config error when subscribing.
    pub fn capacity(mut self, messages: usize) -> Self {
        self.capacity = messages;
        self
    }

    /// What to do when the queue is full. Defaults to [`Backpressure::DropOldest`].
    pub fn backpressure(mut self, policy: Backpressure) -> Self {
        self.backpressure = policy;
        self
    }

    /// How long `subscribe` waits for the server's confirmation (also while the subscriber
    /// is reconnecting). Defaults to the handle's response timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// Counters of one subscription (shared between the subscriber thread and the reader).
#[derive(Debug, Default)]
pub(crate) struct SubCounters {
    pub(crate) delivered: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

/// The subscriber thread's end of a subscription's queue.
pub(crate) struct Sink {
    pub(crate) tx: Sender<Message>,
    /// Only for [`Backpressure::DropOldest`]: to take the oldest message out. (Holding a
    /// receiver keeps the channel connected, so the other policies do not.)
    pub(crate) oldest: Option<Receiver<Message>>,
    pub(crate) policy: Backpressure,
    pub(crate) counters: Arc<SubCounters>,
}

/// How a delivery went.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivered {
    Yes,
    Dropped,
    /// The reader is gone.
    Gone,
    /// The subscriber is stopping (only while blocked).
    Stopping,
}

impl Sink {
    /// Queues a message under the policy. `stopping` is polled while blocked.
    pub(crate) fn deliver(&self, msg: Message, stopping: &dyn Fn() -> bool) -> Delivered {
        let outcome = match self.policy {
            Backpressure::DropNewest => match self.tx.try_send(msg) {
                Ok(()) => Delivered::Yes,
                Err(TrySendError::Full(_)) => Delivered::Dropped,
                Err(TrySendError::Disconnected(_)) => Delivered::Gone,
            },
            Backpressure::DropOldest => {
                let mut msg = msg;
                let mut dropped = false;
                loop {
                    match self.tx.try_send(msg) {
                        Ok(()) => {
                            break if dropped {
                                Delivered::Dropped
                            } else {
                                Delivered::Yes
                            }
                        }
                        Err(TrySendError::Full(m)) => {
                            msg = m;
                            if let Some(rx) = &self.oldest {
                                if rx.try_recv().is_ok() {
                                    dropped = true;
                                }
                            }
                        }
                        Err(TrySendError::Disconnected(_)) => break Delivered::Gone,
                    }
                }
            }
            Backpressure::Block => {
                let mut msg = msg;
                loop {
                    match self.tx.send_timeout(msg, Duration::from_millis(20)) {
                        Ok(()) => break Delivered::Yes,
                        Err(SendTimeoutError::Timeout(m)) => {
                            if stopping() {
                                break Delivered::Stopping;
                            }
                            msg = m;
                        }
                        Err(SendTimeoutError::Disconnected(_)) => break Delivered::Gone,
                    }
                }
            }
        };
        match outcome {
            // DropOldest delivered the new message but dropped an old one.
            Delivered::Dropped | Delivered::Stopping => {
                self.counters.dropped.fetch_add(1, Relaxed);
                if self.policy == Backpressure::DropOldest {
                    self.counters.delivered.fetch_add(1, Relaxed);
                }
            }
            Delivered::Yes => {
                self.counters.delivered.fetch_add(1, Relaxed);
            }
            Delivered::Gone => {}
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;

    fn msg(n: u8) -> Message {
        Message::new(Kind::Channel, None, b"c".to_vec(), vec![n])
    }

    fn sink(policy: Backpressure, cap: usize) -> (Sink, Receiver<Message>) {
        let (tx, rx) = bounded(cap);
        let oldest = (policy == Backpressure::DropOldest).then(|| rx.clone());
        (
            Sink {
                tx,
                oldest,
                policy,
                counters: Arc::default(),
            },
            rx,
        )
    }

    #[test]
    fn drop_newest_keeps_the_first() {
        let (s, rx) = sink(Backpressure::DropNewest, 2);
        for n in 0..5 {
            s.deliver(msg(n), &|| false);
        }
        let got: Vec<u8> = rx.try_iter().map(|m| m.payload()[0]).collect();
        assert_eq!(got, vec![0, 1]);
        assert_eq!(s.counters.dropped.load(Relaxed), 3);
        assert_eq!(s.counters.delivered.load(Relaxed), 2);
    }

    #[test]
    fn drop_oldest_keeps_the_last() {
        let (s, rx) = sink(Backpressure::DropOldest, 2);
        for n in 0..5 {
            s.deliver(msg(n), &|| false);
        }
        let got: Vec<u8> = rx.try_iter().map(|m| m.payload()[0]).collect();
        assert_eq!(got, vec![3, 4]);
        assert_eq!(s.counters.dropped.load(Relaxed), 3);
    }

    #[test]
    fn block_gives_up_only_when_stopping_or_gone() {
        let (s, rx) = sink(Backpressure::Block, 1);
        assert_eq!(s.deliver(msg(0), &|| false), Delivered::Yes);
        assert_eq!(s.deliver(msg(1), &|| true), Delivered::Stopping);
        drop(rx);
        assert_eq!(s.deliver(msg(2), &|| false), Delivered::Gone);
    }

    #[test]
    fn debug_hides_the_payload() {
        let m = Message::new(
            Kind::Pattern,
            Some(b"p*".to_vec()),
            b"pc".to_vec(),
            b"secret".to_vec(),
        );
        let shown = format!("{m:?}");
        assert!(!shown.contains("secret"));
        assert!(shown.contains("payload_len: 6"));
        assert_eq!(m.clone().into_payload(), b"secret");
        let n: std::result::Result<i64, _> = m.payload_as();
        assert!(n.is_err());
    }
}
