//! TLS for every connection kind, built once per handle from [`TlsConfig`] (system roots or a
//! custom CA, an optional client certificate, or verification off), through `native-tls`.
//! The session runs over a [`Timed`] socket, so the handshake is bounded by the connect
//! deadline like everything else.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use redis::{ErrorKind, RedisError};

use super::socket::{Timed, TlsIo};
use crate::config::{Addr, TlsConfig};
use crate::error::{Delivery, Error, Result};
use crate::util::time;

/// The TLS settings turned into a connector (certificates parsed once).
#[derive(Clone)]
pub(crate) struct TlsConnector {
    inner: native_tls::TlsConnector,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConnector")
    }
}

fn tls_err(e: native_tls::Error) -> Error {
    Error::from_redis(RedisError::from(e), Delivery::NotSent)
}

impl TlsConnector {
    /// Parses the CA and the client identity; a certificate or key that does not parse is a
    /// typed [`ErrorClass::Tls`](crate::ErrorClass::Tls) error.
    pub(crate) fn new(tls: &TlsConfig) -> Result<TlsConnector> {
        let mut builder = native_tls::TlsConnector::builder();
        if tls.insecure {
            builder
                .danger_accept_invalid_certs(true)
                .danger_accept_invalid_hostnames(true);
        }
        if let Some(ca) = &tls.ca_pem {
            let cert = native_tls::Certificate::from_pem(ca).map_err(tls_err)?;
            builder.disable_built_in_roots(true);
            builder.add_root_certificate(cert);
        }
        if let (Some(cert), Some(key)) = (&tls.client_cert_pem, &tls.client_key_pem) {
            let id = native_tls::Identity::from_pkcs8(cert, key).map_err(tls_err)?;
            builder.identity(id);
        }
        Ok(TlsConnector {
            inner: builder.build().map_err(tls_err)?,
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
        match self.inner.connect(host, tcp) {
            Ok(s) => Ok(Box::new(NativeTls(s))),
            Err(_) if time::left(deadline).is_zero() => Err(Error::io(
                io::ErrorKind::TimedOut,
                format!("TLS handshake with {addr} timed out"),
                Delivery::NotSent,
            )),
            // Reported the way the `redis` crate reports it, so both classify alike
            // (`ErrorClass::Tls`).
            Err(native_tls::HandshakeError::Failure(e)) => Err(Error::from_redis(
                RedisError::from((ErrorKind::Io, "SSL Handshake error", format!("{addr}: {e}"))),
                Delivery::NotSent,
            )),
            Err(native_tls::HandshakeError::WouldBlock(_)) => Err(Error::io(
                io::ErrorKind::TimedOut,
                format!("TLS handshake with {addr} timed out"),
                Delivery::NotSent,
            )),
        }
    }
}

struct NativeTls(native_tls::TlsStream<Timed<TcpStream>>);

impl Read for NativeTls {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for NativeTls {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl TlsIo for NativeTls {
    fn timed(&mut self) -> &mut Timed<TcpStream> {
        self.0.get_mut()
    }

    fn timed_ref(&self) -> &Timed<TcpStream> {
        self.0.get_ref()
    }

    fn close_notify(&mut self) {
        let _ = self.0.shutdown();
    }
}
