//! What a frame read on a subscriber connection means, in RESP2 and RESP3 alike.

use redis::{PushKind, ServerError, Value};

/// The three kinds of subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `SUBSCRIBE`: a channel by name.
    Channel,
    /// `PSUBSCRIBE`: channels matching a glob pattern.
    Pattern,
    /// `SSUBSCRIBE`: a shard channel (Redis 7 sharded pub/sub).
    Shard,
}

impl Kind {
    pub(crate) fn subscribe_cmd(self) -> &'static str {
        match self {
            Kind::Channel => "SUBSCRIBE",
            Kind::Pattern => "PSUBSCRIBE",
            Kind::Shard => "SSUBSCRIBE",
        }
    }

    pub(crate) fn unsubscribe_cmd(self) -> &'static str {
        match self {
            Kind::Channel => "UNSUBSCRIBE",
            Kind::Pattern => "PUNSUBSCRIBE",
            Kind::Shard => "SUNSUBSCRIBE",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Kind::Channel => 0,
            Kind::Pattern => 1,
            Kind::Shard => 2,
        }
    }

    pub(crate) const ALL: [Kind; 3] = [Kind::Channel, Kind::Pattern, Kind::Shard];
}

/// A decoded frame.
#[derive(Debug)]
pub(crate) enum Frame {
    /// A published message.
    Message {
        kind: Kind,
        pattern: Option<Vec<u8>>,
        channel: Vec<u8>,
        payload: Vec<u8>,
    },
    /// A subscribe (`sub == true`) or unsubscribe confirmation for one name (the name, when
    /// the frame carries one).
    Confirm {
        kind: Kind,
        sub: bool,
        name: Option<Vec<u8>>,
    },
    /// The answer to `PING`.
    Pong,
    /// An error reply.
    Error(ServerError),
    /// Anything else (logged and ignored).
    Other(Value),
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        _ => None,
    }
}

fn kind_of_name(name: &[u8]) -> Option<PushKind> {
    let name = name.to_ascii_lowercase();
    Some(match name.as_slice() {
        b"message" => PushKind::Message,
        b"pmessage" => PushKind::PMessage,
        b"smessage" => PushKind::SMessage,
        b"subscribe" => PushKind::Subscribe,
        b"psubscribe" => PushKind::PSubscribe,
        b"ssubscribe" => PushKind::SSubscribe,
        b"unsubscribe" => PushKind::Unsubscribe,
        b"punsubscribe" => PushKind::PUnsubscribe,
        b"sunsubscribe" => PushKind::SUnsubscribe,
        b"pong" => return None,
        _ => PushKind::Other(String::from_utf8_lossy(&name).into_owned()),
    })
}

/// Decodes a frame.
pub(crate) fn classify(value: Value) -> Frame {
    match value {
        Value::Push { kind, data } => push(kind, data),
        Value::Array(mut items) => {
            let Some(first) = items.first() else {
                return Frame::Other(Value::Array(items));
            };
            let name = match first {
                Value::BulkString(b) => b.clone(),
                Value::SimpleString(s) => s.clone().into_bytes(),
                _ => return Frame::Other(Value::Array(items)),
            };
            match kind_of_name(&name) {
                // RESP2 `PING` in subscribed mode: ["pong", ""].
                None => Frame::Pong,
                Some(kind) => {
                    items.remove(0);
                    push(kind, items)
                }
            }
        }
        Value::SimpleString(s) if s.eq_ignore_ascii_case("pong") => Frame::Pong,
        Value::ServerError(e) => Frame::Error(e),
        other => Frame::Other(other),
    }
}

fn push(kind: PushKind, data: Vec<Value>) -> Frame {
    let name = || data.first().cloned().and_then(bytes);
    let confirm = |kind, sub| Frame::Confirm {
        kind,
        sub,
        name: name(),
    };
    match kind {
        PushKind::Message | PushKind::SMessage => {
            let mut it = data.into_iter();
            match (it.next().and_then(bytes), it.next().and_then(bytes)) {
                (Some(channel), Some(payload)) => Frame::Message {
                    kind: if kind == PushKind::Message {
                        Kind::Channel
                    } else {
                        Kind::Shard
                    },
                    pattern: None,
                    channel,
                    payload,
                },
                _ => Frame::Other(Value::Nil),
            }
        }
        PushKind::PMessage => {
            let mut it = data.into_iter();
            match (
                it.next().and_then(bytes),
                it.next().and_then(bytes),
                it.next().and_then(bytes),
            ) {
                (Some(pattern), Some(channel), Some(payload)) => Frame::Message {
                    kind: Kind::Pattern,
                    pattern: Some(pattern),
                    channel,
                    payload,
                },
                _ => Frame::Other(Value::Nil),
            }
        }
        PushKind::Subscribe => confirm(Kind::Channel, true),
        PushKind::PSubscribe => confirm(Kind::Pattern, true),
        PushKind::SSubscribe => confirm(Kind::Shard, true),
        PushKind::Unsubscribe => confirm(Kind::Channel, false),
        PushKind::PUnsubscribe => confirm(Kind::Pattern, false),
        PushKind::SUnsubscribe => confirm(Kind::Shard, false),
        PushKind::Other(name) if name.eq_ignore_ascii_case("pong") => Frame::Pong,
        other => Frame::Other(Value::Push { kind: other, data }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn resp2_frames() {
        let f = classify(Value::Array(vec![bulk("message"), bulk("ch"), bulk("hi")]));
        assert!(
            matches!(f, Frame::Message { kind: Kind::Channel, pattern: None, ref channel, ref payload }
            if channel == b"ch" && payload == b"hi")
        );
        let f = classify(Value::Array(vec![
            bulk("pmessage"),
            bulk("c*"),
            bulk("ch"),
            bulk("hi"),
        ]));
        assert!(
            matches!(f, Frame::Message { kind: Kind::Pattern, pattern: Some(ref p), .. } if p == b"c*")
        );
        let f = classify(Value::Array(vec![bulk("smessage"), bulk("s"), bulk("x")]));
        assert!(matches!(
            f,
            Frame::Message {
                kind: Kind::Shard,
                ..
            }
        ));
        let f = classify(Value::Array(vec![
            bulk("subscribe"),
            bulk("ch"),
            Value::Int(1),
        ]));
        assert!(matches!(
            f,
            Frame::Confirm {
                kind: Kind::Channel,
                sub: true,
                ..
            }
        ));
        let f = classify(Value::Array(vec![
            bulk("punsubscribe"),
            bulk("c*"),
            Value::Int(0),
        ]));
        assert!(matches!(
            f,
            Frame::Confirm {
                kind: Kind::Pattern,
                sub: false,
                name: Some(ref n),
            } if n == b"c*"
        ));
        assert!(matches!(
            classify(Value::Array(vec![bulk("pong"), bulk("")])),
            Frame::Pong
        ));
        assert!(matches!(
            classify(Value::SimpleString("PONG".into())),
            Frame::Pong
        ));
    }

    #[test]
    fn resp3_frames() {
        let f = classify(Value::Push {
            kind: PushKind::SMessage,
            data: vec![bulk("s"), bulk("payload")],
        });
        assert!(
            matches!(f, Frame::Message { kind: Kind::Shard, ref payload, .. } if payload == b"payload")
        );
        let f = classify(Value::Push {
            kind: PushKind::SSubscribe,
            data: vec![bulk("s"), Value::Int(1)],
        });
        assert!(matches!(
            f,
            Frame::Confirm {
                kind: Kind::Shard,
                sub: true,
                ..
            }
        ));
        let f = classify(Value::Push {
            kind: PushKind::Other("weird".into()),
            data: vec![],
        });
        assert!(matches!(f, Frame::Other(_)));
    }

    #[test]
    fn errors_and_oddities() {
        let e = redis::parse_redis_value(b"-NOPERM no permissions\r\n").unwrap();
        assert!(matches!(classify(e), Frame::Error(_)));
        assert!(matches!(classify(Value::Array(vec![])), Frame::Other(_)));
        assert!(matches!(classify(Value::Int(3)), Frame::Other(_)));
        // A message frame missing its payload is not a message.
        assert!(matches!(
            classify(Value::Array(vec![bulk("message"), bulk("ch")])),
            Frame::Other(_)
        ));
    }
}
