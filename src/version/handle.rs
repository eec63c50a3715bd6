//! [`Redis::server_version`]: asked once per handle, kept in the handle's extension slot.

use parking_lot::Mutex;

use super::{Feature, ServerVersion};
use crate::client::{Extension, Redis};
use crate::error::{ErrorClass, Result};

/// What a handle learned of its server: the version, or the error that keeps it from
/// asking (a user whose ACL denies `INFO`).
#[derive(Default)]
struct Known {
    answer: Mutex<Option<Result<ServerVersion>>>,
}

impl Extension for Known {}

impl Redis {
    /// The server's flavor and version, as the server named them in the handshake of the
    /// handle's last new connection (`HELLO`: read at every connection set-up, so it follows
    /// a failover to another server); a server that does not answer `HELLO` is asked
    /// `INFO server` once per handle.
    ///
    /// ```no_run
    /// let redis = redkit::Redis::connect("redis://127.0.0.1/")?;
    /// let server = redis.server_version()?;
    /// if server.flavor() == redkit::ServerFlavor::Valkey {
    ///     println!("Valkey {}.{}", server.major(), server.minor());
    /// }
    /// # Ok::<(), redkit::Error>(())
    /// ```
    ///
    /// A user whose ACL denies `INFO` gets that permission error (also remembered: redkit's
    /// helpers then assume a current server).
    pub fn server_version(&self) -> Result<ServerVersion> {
        if let Some(hello) = self.pool_state().hello() {
            if let Ok(v) = ServerVersion::from_hello_fields(&hello.server, &hello.version) {
                return Ok(v);
            }
        }
        let known = self.extension::<Known>();
        if let Some(answer) = known.as_ref().and_then(|k| k.answer.lock().clone()) {
            return answer;
        }
        let answer = self
            .query_idempotent::<String>(redis::cmd("INFO").arg("server"))
            .and_then(|text| ServerVersion::from_info(&text));
        let keep = match &answer {
            Ok(_) => true,
            Err(e) => e.class() == ErrorClass::Permission,
        };
        if let (true, Some(known)) = (keep, known) {
            *known.answer.lock() = Some(answer.clone());
        }
        answer
    }

    /// Whether the server has `feature`; `true` when the version cannot be known because
    /// the ACL denies `INFO` (the helpers then behave as on a current server). Other errors
    /// (the server is down) are returned.
    pub(crate) fn server_supports(&self, feature: Feature) -> Result<bool> {
        match self.server_version() {
            Ok(v) => Ok(v.supports(feature)),
            Err(e) if e.class() == ErrorClass::Permission => {
                log::debug!("server version unknown ({e}); assuming {feature} is there");
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// `Ok` when the server has `feature` (or its version cannot be known, see
    /// [`server_supports`](Self::server_supports)), else [`Error::ServerTooOld`](crate::Error::ServerTooOld).
    pub(crate) fn require(&self, feature: Feature) -> Result<()> {
        match self.server_version() {
            Ok(v) => v.require(feature),
            Err(e) if e.class() == ErrorClass::Permission => Ok(()),
            Err(e) => Err(e),
        }
    }
}
