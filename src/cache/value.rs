//! What the cache stores: a [`CacheValue`] inside a small frame.

use std::time::Duration;

/// A type the [`Cache`](super::Cache) (and the session store) can store: bytes, strings and
/// integers always, any `Serialize + DeserializeOwned` type through `Json` with the `json`
/// feature.
///
/// ```
/// use redkit::cache::CacheValue;
///
/// let mut bytes = Vec::new();
/// "hello".to_owned().encode(&mut bytes).unwrap();
/// assert_eq!(String::decode(&bytes).unwrap(), "hello");
/// assert!(String::decode(&[0xff, 0xfe]).is_err());
/// ```
pub trait CacheValue: Sized {
    /// Appends the encoded value to `out`.
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), String>;

    /// Decodes a value; the error says why it could not be.
    fn decode(bytes: &[u8]) -> Result<Self, String>;
}

impl CacheValue for Vec<u8> {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), String> {
        out.extend_from_slice(self);
        Ok(())
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        Ok(bytes.to_vec())
    }
}

impl CacheValue for String {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), String> {
        out.extend_from_slice(self.as_bytes());
        Ok(())
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        String::from_utf8(bytes.to_vec()).map_err(|e| format!("not UTF-8: {e}"))
    }
}

macro_rules! number_value {
    ($($t:ty),*) => {$(
        impl CacheValue for $t {
            fn encode(&self, out: &mut Vec<u8>) -> Result<(), String> {
                out.extend_from_slice(self.to_string().as_bytes());
                Ok(())
            }

            fn decode(bytes: &[u8]) -> Result<Self, String> {
                std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("not a valid {}", stringify!($t)))
            }
        }
    )*};
}

number_value!(i64, u64, f64, bool);

/// Any `Serialize + DeserializeOwned` type, stored as JSON (the `json` feature).
///
/// ```no_run
/// # #[cfg(feature = "json")] {
/// use redkit::cache::{Cache, Json};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct User { name: String }
///
/// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
/// let cache = Cache::new(&redis, "users")?;
/// cache.set("42", &Json(User { name: "Ada".into() }))?;
/// let user: Option<Json<User>> = cache.get("42")?;
/// # }
/// # Ok::<(), redkit::Error>(())
/// ```
#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Json<T>(pub T);

#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
impl<T: serde::Serialize + serde::de::DeserializeOwned> CacheValue for Json<T> {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), String> {
        serde_json::to_writer(out, &self.0).map_err(|e| e.to_string())
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes)
            .map(Json)
            .map_err(|e| e.to_string())
    }
}

/// Frame kinds: the first byte of every stored cache entry.
const VALUE: u8 = 0;
/// A value with the time its load took (for early refresh), 4 bytes of milliseconds.
const TIMED: u8 = 1;
/// "Not found", cached (negative caching).
const ABSENT: u8 = 2;

/// A decoded frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A value, and how long loading it took, when known.
    Value(&'a [u8], Option<Duration>),
    /// A cached "not found".
    Absent,
}

/// Encodes `value` in a frame.
pub(crate) fn frame<V: CacheValue>(value: &V, load: Option<Duration>) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(64);
    match load {
        Some(d) => {
            out.push(TIMED);
            let ms = u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
            out.extend_from_slice(&ms.to_le_bytes());
        }
        None => out.push(VALUE),
    }
    value.encode(&mut out)?;
    Ok(out)
}

/// The frame of a cached "not found".
pub(crate) fn absent_frame() -> Vec<u8> {
    vec![ABSENT]
}

/// Reads a frame.
pub(crate) fn unframe(bytes: &[u8]) -> Result<Frame<'_>, String> {
    match bytes.split_first() {
        Some((&VALUE, rest)) => Ok(Frame::Value(rest, None)),
        Some((&TIMED, rest)) if rest.len() >= 4 => {
            let (ms, payload) = rest.split_at(4);
            let mut b = [0u8; 4];
            b.copy_from_slice(ms);
            let ms = u32::from_le_bytes(b);
            Ok(Frame::Value(
                payload,
                Some(Duration::from_millis(u64::from(ms))),
            ))
        }
        Some((&ABSENT, [])) => Ok(Frame::Absent),
        Some((kind, _)) => Err(format!(
            "not a redkit cache entry (frame kind {kind:#04x}); values written by other \
             programs, or counters (read those with `Cache::counter`), cannot be read with `get`"
        )),
        None => Err("empty entry: not a redkit cache entry".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let f = frame(&"abc".to_owned(), None).unwrap();
        assert_eq!(unframe(&f).unwrap(), Frame::Value(b"abc", None));
        let f = frame(&b"xyz".to_vec(), Some(Duration::from_millis(1234))).unwrap();
        assert_eq!(
            unframe(&f).unwrap(),
            Frame::Value(b"xyz", Some(Duration::from_millis(1234)))
        );
        assert_eq!(unframe(&absent_frame()).unwrap(), Frame::Absent);
        assert!(unframe(b"").is_err());
        assert!(unframe(b"42").is_err());
        assert!(unframe(&[TIMED, 1]).is_err());
    }

    #[test]
    fn numbers_and_strings() {
        let mut out = Vec::new();
        (-5i64).encode(&mut out).unwrap();
        assert_eq!(i64::decode(&out).unwrap(), -5);
        assert!(u64::decode(b"x").is_err());
        assert!(String::decode(&[0xff]).is_err());
    }
}
