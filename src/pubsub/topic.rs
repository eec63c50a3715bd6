//! A typed bus: publish and subscribe values of one type as JSON (feature `json`).

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use crossbeam_channel::{RecvError, RecvTimeoutError, TryRecvError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Kind, Message, Subscriber, Subscription, SubscriptionOptions};
use crate::client::Redis;
use crate::error::{Error, Result};

/// A channel that carries values of type `T`, encoded as JSON.
///
/// ```no_run
/// use redkit::pubsub::{Subscriber, Topic};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct OrderPlaced { id: u64, total_cents: i64 }
///
/// # let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// let orders: Topic<OrderPlaced> = Topic::new("orders.placed");
/// let subscriber = Subscriber::new(&redis)?;
/// let placed = orders.subscribe(&subscriber)?;
/// orders.publish(&redis, &OrderPlaced { id: 7, total_cents: 1250 })?;
/// match placed.recv() {
///     Ok(Ok(order)) => assert_eq!(order.id, 7),
///     Ok(Err(bad)) => log::warn!("undecodable payload on {}: {bad}", bad.message().channel_str()),
///     Err(_) => {} // the subscriber stopped
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Topic<T> {
    name: String,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Topic<T> {
    fn clone(&self) -> Self {
        Topic {
            name: self.name.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Topic<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topic").field("name", &self.name).finish()
    }
}

impl<T: Serialize + DeserializeOwned> Topic<T> {
    /// A topic on channel `name`.
    pub fn new(name: impl Into<String>) -> Topic<T> {
        Topic {
            name: name.into(),
            _t: PhantomData,
        }
    }

    /// The channel name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Publishes `value`; returns how many subscribers received it.
    pub fn publish(&self, redis: &Redis, value: &T) -> Result<usize> {
        let payload = serde_json::to_vec(value)
            .map_err(|e| Error::config("topic.payload", format!("cannot encode as JSON: {e}")))?;
        redis.publish(&self.name, payload)
    }

    /// Subscribes with the default [`SubscriptionOptions`].
    pub fn subscribe(&self, subscriber: &Subscriber) -> Result<TopicSubscription<T>> {
        self.subscribe_with(subscriber, SubscriptionOptions::default())
    }

    /// Subscribes with explicit options.
    pub fn subscribe_with(
        &self,
        subscriber: &Subscriber,
        options: SubscriptionOptions,
    ) -> Result<TopicSubscription<T>> {
        let sub = subscriber.subscribe_with(Kind::Channel, [&self.name], options)?;
        Ok(TopicSubscription {
            sub,
            _t: PhantomData,
        })
    }
}

/// A payload that did not decode as the topic's type: the raw message and why.
#[derive(Debug)]
pub struct DecodeError {
    message: Message,
    error: serde_json::Error,
}

impl DecodeError {
    /// The message as received (its raw payload bytes included).
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The JSON error.
    pub fn json_error(&self) -> &serde_json::Error {
        &self.error
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a {}-byte payload on channel {} is not valid JSON for the topic's type: {}",
            self.message.payload().len(),
            self.message.channel_str(),
            self.error
        )
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<DecodeError> for Error {
    /// An [`Error::Decode`] naming the channel, so that `?` works in a function returning
    /// `redkit::Result`.
    fn from(e: DecodeError) -> Error {
        Error::Decode {
            key: e.message.channel_str().into_owned(),
            reason: e.error.to_string(),
        }
    }
}

/// A subscription to a [`Topic`]: yields decoded values, or a [`DecodeError`] with the raw
/// message for a payload that does not decode (never dropped silently).
#[must_use = "dropping a TopicSubscription unsubscribes"]
pub struct TopicSubscription<T> {
    sub: Subscription,
    _t: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for TopicSubscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicSubscription")
            .field("subscription", &self.sub)
            .finish()
    }
}

fn decode<T: DeserializeOwned>(message: Message) -> std::result::Result<T, DecodeError> {
    serde_json::from_slice(message.payload()).map_err(|error| DecodeError { message, error })
}

impl<T: DeserializeOwned> TopicSubscription<T> {
    /// Waits for the next value.
    pub fn recv(&self) -> std::result::Result<std::result::Result<T, DecodeError>, RecvError> {
        self.sub.recv().map(decode)
    }

    /// Waits at most `timeout` for the next value.
    pub fn recv_timeout(
        &self,
        timeout: Duration,
    ) -> std::result::Result<std::result::Result<T, DecodeError>, RecvTimeoutError> {
        self.sub.recv_timeout(timeout).map(decode)
    }

    /// The next value if one is queued.
    pub fn try_recv(
        &self,
    ) -> std::result::Result<std::result::Result<T, DecodeError>, TryRecvError> {
        self.sub.try_recv().map(decode)
    }

    /// A blocking iterator; ends when the subscriber stops.
    pub fn iter(&self) -> impl Iterator<Item = std::result::Result<T, DecodeError>> + '_ {
        self.sub.iter().map(decode)
    }

    /// The underlying subscription.
    pub fn subscription(&self) -> &Subscription {
        &self.sub
    }
}
