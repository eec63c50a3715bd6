//! TLS for every connection kind, built once per handle from [`TlsConfig`] (system roots or a
//! custom CA, an optional client certificate, or verification off), through the backend
//! compiled in: `native-tls` (feature `tls-native-tls`, the default) or rustls (feature
//! `tls-rustls`, which wins when both are on). The session runs over a [`Timed`] socket, so
//! the handshake is bounded by the connect deadline like everything else.

use std::io;
use std::net::TcpStream;
use std::time::Instant;

use super::socket::{Timed, TlsIo};
use crate::config::{Addr, TlsConfig};
use crate::error::{Delivery, Error, Result};
use crate::util::time;

#[cfg(all(feature = "tls-native-tls", not(feature = "tls-rustls")))]
mod with_native_tls;
#[cfg(all(feature = "tls-native-tls", not(feature = "tls-rustls")))]
use with_native_tls as backend;

#[cfg(feature = "tls-rustls")]
mod with_rustls;
#[cfg(feature = "tls-rustls")]
use with_rustls as backend;

#[cfg(not(any(feature = "tls-native-tls", feature = "tls-rustls")))]
mod backend {
    //! No TLS compiled in: `Config::build` already refused every TLS setting.
    use super::*;

    #[derive(Clone)]
    pub(super) struct Backend;

    impl Backend {
        pub(super) fn new(_: &TlsConfig) -> Result<Backend> {
            Err(crate::config::tls::not_compiled_in("tls"))
        }

        pub(super) fn connect(
            &self,
            _: &str,
            _: Timed<TcpStream>,
            _: &Addr,
            _: Instant,
        ) -> Result<Box<dyn TlsIo>> {
            Err(crate::config::tls::not_compiled_in("tls"))
        }
    }
}

/// The TLS settings turned into a connector (certificates parsed once).
#[derive(Clone)]
pub(crate) struct TlsConnector {
    inner: backend::Backend,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("backend", &crate::config::tls::BACKEND)
            .finish()
    }
}

impl TlsConnector {
    /// Parses the CA and the client identity; a certificate or key that does not parse is a
    /// typed [`ErrorClass::Tls`](crate::ErrorClass::Tls) error.
    pub(crate) fn new(tls: &TlsConfig) -> Result<TlsConnector> {
        Ok(TlsConnector {
            inner: backend::Backend::new(tls)?,
        })
    }

    /// Runs the handshake over `tcp` (whose deadline is `deadline`), verifying `host`.
    pub(crate) fn connect(
        &self,
        host: &str,
        mut tcp: Timed<TcpStream>,
        addr: &Addr,
        deadline: Instant,
    ) -> Result<Box<dyn TlsIo>> {
        tcp.set_read_deadline(Some(deadline));
        tcp.set_write_deadline(Some(deadline));
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.inner.connect(host, tcp, addr, deadline)
    }
}

/// A handshake that did not complete: a timeout when the deadline passed (or the socket
/// timed out), otherwise a TLS error naming the server and the reason.
#[cfg_attr(
    not(any(feature = "tls-native-tls", feature = "tls-rustls")),
    allow(dead_code)
)]
fn handshake_failed(addr: &Addr, deadline: Instant, timed_out: bool, reason: &str) -> Error {
    if timed_out || time::left(deadline).is_zero() {
        return Error::io(
            io::ErrorKind::TimedOut,
            format!("TLS handshake with {addr} timed out"),
            Delivery::NotSent,
        );
    }
    Error::tls("SSL Handshake error", format!("{addr}: {reason}"))
}
