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

/// One job taken from a stream queue.
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
    /// When this consumer read it (its idle time on the server started then, or at its
    /// last heartbeat).
    pub(crate) read_at: Option<std::time::Instant>,
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
            read_at: None,
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

    /// Its priority level (0: the first served, and the only one of a queue without
    /// priorities).
    pub fn priority(&self) -> u8 {
        self.level
    }

    /// The unique id it was produced with (deduplication), if any.
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

    /// The payload as UTF-8, or the error saying where it is not.
    pub fn payload_str(&self) -> std::result::Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.payload)
    }

    /// Takes the payload.
    pub fn into_payload(self) -> Vec<u8> {
        self.payload
    }

    /// Tells the queue this job's handler is alive and still working on it: its idle time
    /// restarts, so that it is not claimed by another consumer for another `claim_idle`
    /// (the queue's visibility timeout). Call
    /// it more often than that during a long job. `Ok(false)` when this consumer no longer
    /// owns the job (it was claimed by another after going idle, or handed back by a
    /// shutdown): stop working on it, another run has it. A job not taken by a consumer (one
    /// built by hand) answers `Ok(false)`.
    ///
    /// ```no_run
    /// # let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
    /// # let queue = redkit::StreamQueue::builder(&redis, "videos").build()?;
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
