//! A job of a stream queue, what it carries (payload, headers, priority, its unique id) and
//! how it is laid out: in a stream entry, and as a member of a delayed set.
//!
//! ## The formats (what operators see with `redis-cli`; `redkit queue` decodes them)
//!
//! A stream entry holds the fields `p` (payload), and when set: `o` (the origin: the id it
//! was first produced with, on a retried or handed-back job), `a` (how many runs failed
//! before), `h` (headers, encoded by [`encode_headers`]), `i` (the unique id given at
//! produce, for deduplication). A dead letter adds `e` (the last error) and `l` (its
//! priority level).
//!
//! A member of a delayed set is `<origin>\n<attempt>\n<payload>` for a plain job, and
//! `<origin>\n<attempt>;<level>;<headers length>;<id length>\n<headers><id><payload>` for
//! one with a priority, headers or an id (lengths in bytes, decimal).

use std::sync::Arc;

use crate::client::Redis;
use crate::error::Result;
use crate::script::Script;

/// One job taken from a [`StreamQueue`](super::StreamQueue).
#[derive(Clone)]
pub struct Job {
    pub(crate) id: String,
    pub(crate) level: u8,
    pub(crate) origin: Option<String>,
    pub(crate) attempt: u32,
    pub(crate) payload: Vec<u8>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) unique: Option<String>,
    pub(crate) lease: Option<Arc<Lease>>,
}

impl PartialEq for Job {
    fn eq(&self, other: &Job) -> bool {
        self.id == other.id
            && self.level == other.level
            && self.origin == other.origin
            && self.attempt == other.attempt
            && self.payload == other.payload
            && self.headers == other.headers
            && self.unique == other.unique
    }
}

impl Eq for Job {}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("origin", &self.origin())
            .field("attempt", &self.attempt)
            .field("priority", &self.level)
            .field("unique_id", &self.unique)
            .field("headers", &self.headers.len())
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl Job {
    pub(crate) fn new(id: String, level: u8) -> Job {
        Job {
            id,
            level,
            origin: None,
            attempt: 0,
            payload: Vec::new(),
            headers: Vec::new(),
            unique: None,
            lease: None,
        }
    }

    /// The stream entry id this job was read from.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The job's identity across retries and hand-backs: the stream id it was first produced
    /// with (a retried job is a new stream entry with a new [`id`](Job::id)).
    pub fn origin(&self) -> &str {
        self.origin.as_deref().unwrap_or(&self.id)
    }

    /// How many times this job failed before (0 on its first run).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Its priority level (0, the first served, on a queue without
    /// [`priorities`](super::StreamQueueBuilder::priorities)).
    pub fn priority(&self) -> u8 {
        self.level
    }

    /// The unique id it was produced with ([`NewJob::unique_id`]), if any.
    pub fn unique_id(&self) -> Option<&str> {
        self.unique.as_deref()
    }

    /// Its headers, in the order they were given.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The value of header `name` (the first, if given twice).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The payload as UTF-8, if it is.
    pub fn payload_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.payload).ok()
    }

    /// Takes the payload.
    pub fn into_payload(self) -> Vec<u8> {
        self.payload
    }

    /// Tells the queue this job's handler is alive and still working on it: its idle time
    /// restarts, so that it is not claimed by another consumer for another
    /// [`claim_idle`](super::StreamQueueBuilder::claim_idle) (its visibility timeout). Call
    /// it more often than that during a long job. `Ok(false)` when this consumer no longer
    /// owns the job (it was claimed by another after going idle, or handed back by a
    /// shutdown): stop working on it, another run has it. A job not taken by a consumer (one
    /// built by hand) answers `Ok(false)`.
    ///
    /// ```no_run
    /// # let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
    /// # let queue = redis.stream_queue("videos").build()?;
    /// let workers = queue.workers().run(|job| {
    ///     for chunk in 0..100 {
    ///         // ... transcode chunk ...
    ///         if !job.heartbeat()? {
    ///             return Err("taken over by another worker".into());
    ///         }
    ///     }
    ///     Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn heartbeat(&self) -> Result<bool> {
        let Some(lease) = &self.lease else {
            return Ok(false);
        };
        let Some(stream) = lease.streams.get(usize::from(self.level)) else {
            return Ok(false);
        };
        let call = lease
            .script
            .key(stream)
            .arg(&lease.group)
            .arg(&lease.consumer)
            .arg(&self.id);
        // Resending is safe: it only resets the idle time of an entry this consumer owns.
        let n: i64 = lease.redis.run_idempotent(|con| call.invoke(con))?;
        Ok(n == 1)
    }
}

/// What a job needs to extend its own visibility: shared by every job one consumer took.
pub(crate) struct Lease {
    pub(crate) redis: Redis,
    pub(crate) streams: Arc<[String]>,
    pub(crate) group: String,
    pub(crate) consumer: String,
    pub(crate) script: Script,
}

/// A job to add to a [`StreamQueue`](super::StreamQueue) with options: a priority, headers,
/// a unique id (deduplication), a delay. Made by
/// [`StreamQueue::job`](super::StreamQueue::job); [`send`](NewJob::send) adds it.
///
/// ```no_run
/// use std::time::Duration;
/// use redkit::queue::Produced;
/// # let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// let queue = redis
///     .stream_queue("orders")
///     .priorities(3)
///     .dedup_window(Duration::from_secs(3600))
///     .build()?;
/// let sent = queue
///     .job(b"charge order 42")
///     .priority(0)
///     .header("tenant", "acme")
///     .unique_id("charge-42")
///     .send()?;
/// if sent == Produced::Duplicate {
///     // a job with the id "charge-42" was added less than an hour ago: dropped
/// }
/// # Ok::<(), redkit::Error>(())
/// ```
#[must_use = "a job is added only by `send`"]
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub(crate) queue: &'a super::StreamQueue,
    pub(crate) payload: Vec<u8>,
    pub(crate) level: Option<u8>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) unique: Option<String>,
    pub(crate) delay: Option<std::time::Duration>,
}

impl NewJob<'_> {
    /// Its priority level: 0 is served first, up to the queue's
    /// [`priorities`](super::StreamQueueBuilder::priorities) minus one. Defaults to the
    /// queue's [`default_priority`](super::StreamQueueBuilder::default_priority).
    pub fn priority(mut self, level: u8) -> Self {
        self.level = Some(level);
        self
    }

    /// Adds a header (metadata the handler reads with [`Job::header`]; kept across retries,
    /// hand-backs and dead letters). Names must not be empty.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// A unique id: a second job with the same id sent within the queue's
    /// [`dedup_window`](super::StreamQueueBuilder::dedup_window) is dropped
    /// ([`Produced::Duplicate`]). Sending with an id is safe to resend when its fate is
    /// unknown (redkit does, on a connection lost mid-call).
    pub fn unique_id(mut self, id: &str) -> Self {
        self.unique = Some(id.to_owned());
        self
    }

    /// Makes it ready only after `delay` (on the server's clock), through the queue's
    /// delayed set.
    pub fn delay(mut self, delay: std::time::Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

/// What [`NewJob::send`] did.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Produced {
    /// Added to the stream, with this entry id.
    Added(String),
    /// Added to the delayed set; it enters the stream when due.
    Scheduled,
    /// Dropped: a job with the same unique id was sent within the deduplication window.
    Duplicate,
}

impl Produced {
    /// The stream entry id, when it was added to the stream.
    pub fn id(&self) -> Option<&str> {
        match self {
            Produced::Added(id) => Some(id),
            _ => None,
        }
    }
}

/// Encodes headers for the `h` field: `<name length>:<name><value length>:<value>` for each,
/// lengths in bytes, decimal.
///
/// ```
/// let h = vec![("tenant".to_owned(), "acme".to_owned())];
/// let bytes = redkit::queue::encode_headers(&h);
/// assert_eq!(bytes, b"6:tenant4:acme");
/// assert_eq!(redkit::queue::decode_headers(&bytes), Some(h));
/// ```
pub fn encode_headers(headers: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in headers {
        for part in [k, v] {
            out.extend_from_slice(part.len().to_string().as_bytes());
            out.push(b':');
            out.extend_from_slice(part.as_bytes());
        }
    }
    out
}

/// Decodes what [`encode_headers`] wrote; `None` when the bytes are not in that form.
pub fn decode_headers(mut bytes: &[u8]) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let take = |bytes: &mut &[u8]| -> Option<String> {
        let colon = bytes.iter().position(|&b| b == b':')?;
        let len: usize = std::str::from_utf8(&bytes[..colon]).ok()?.parse().ok()?;
        let rest = &bytes[colon + 1..];
        let part = rest.get(..len)?;
        *bytes = &rest[len..];
        String::from_utf8(part.to_vec()).ok()
    };
    while !bytes.is_empty() {
        let k = take(&mut bytes)?;
        let v = take(&mut bytes)?;
        out.push((k, v));
    }
    Some(out)
}

/// What a delayed-set member carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member<'a> {
    pub(crate) origin: &'a str,
    pub(crate) attempt: u32,
    pub(crate) level: u8,
    pub(crate) headers: &'a [u8],
    pub(crate) unique: &'a str,
    pub(crate) payload: &'a [u8],
}

impl Member<'_> {
    /// The member's bytes (see the module docs).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(
            self.origin.len() + self.payload.len() + self.headers.len() + self.unique.len() + 24,
        );
        m.extend_from_slice(self.origin.as_bytes());
        m.push(b'\n');
        m.extend_from_slice(self.attempt.to_string().as_bytes());
        let plain = self.level == 0 && self.headers.is_empty() && self.unique.is_empty();
        if !plain {
            m.extend_from_slice(
                format!(
                    ";{};{};{}",
                    self.level,
                    self.headers.len(),
                    self.unique.len()
                )
                .as_bytes(),
            );
        }
        m.push(b'\n');
        if !plain {
            m.extend_from_slice(self.headers);
            m.extend_from_slice(self.unique.as_bytes());
        }
        m.extend_from_slice(self.payload);
        m
    }
}

/// The member of a delayed set for a plain job: `<origin>\n<attempt>\n<payload>`.
pub(crate) fn member(origin: &str, attempt: u32, payload: &[u8]) -> Vec<u8> {
    Member {
        origin,
        attempt,
        level: 0,
        headers: b"",
        unique: "",
        payload,
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_reject_garbage() {
        let h = vec![
            ("a".to_owned(), String::new()),
            ("naïve:key".to_owned(), "1:2".to_owned()),
        ];
        assert_eq!(decode_headers(&encode_headers(&h)), Some(h));
        assert_eq!(decode_headers(b""), Some(Vec::new()));
        assert_eq!(decode_headers(b"3:ab"), None);
        assert_eq!(decode_headers(b"x:ab"), None);
        assert_eq!(decode_headers(b"1:a"), None);
    }

    #[test]
    fn members_are_plain_unless_they_carry_more() {
        assert_eq!(member("1-0", 3, b"x\ny"), b"1-0\n3\nx\ny".to_vec());
        let m = Member {
            origin: "1-0",
            attempt: 0,
            level: 2,
            headers: b"1:a1:b",
            unique: "u",
            payload: b"p",
        };
        assert_eq!(m.encode(), b"1-0\n0;2;6;1\n1:a1:bup".to_vec());
    }
}
