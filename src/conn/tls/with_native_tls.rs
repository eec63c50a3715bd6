//! The `native-tls` backend (OpenSSL on Linux, Secure Transport on macOS, SChannel on
//! Windows).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use super::handshake_failed;
use crate::config::{Addr, TlsConfig};
use crate::conn::socket::{Timed, TlsIo};
use crate::error::{Error, Result};

#[derive(Clone)]
pub(super) struct Backend {
    inner: native_tls::TlsConnector,
}

fn setup_err(e: native_tls::Error) -> Error {
    Error::tls("TLS set-up error", e.to_string())
}

impl Backend {
    pub(super) fn new(tls: &TlsConfig) -> Result<Backend> {
        let mut builder = native_tls::TlsConnector::builder();
        if tls.insecure {
            builder
                .danger_accept_invalid_certs(true)
                .danger_accept_invalid_hostnames(true);
        }
        if let Some(ca) = &tls.ca_pem {
            let cert = native_tls::Certificate::from_pem(ca).map_err(setup_err)?;
            builder.disable_built_in_roots(true);
            builder.add_root_certificate(cert);
        }
        if let (Some(cert), Some(key)) = (&tls.client_cert_pem, &tls.client_key_pem) {
            let id = native_tls::Identity::from_pkcs8(cert, key).map_err(setup_err)?;
            builder.identity(id);
        }
        Ok(Backend {
            inner: builder.build().map_err(setup_err)?,
        })
    }

    pub(super) fn connect(
        &self,
        host: &str,
        tcp: Timed<TcpStream>,
        addr: &Addr,
        deadline: Instant,
    ) -> Result<Box<dyn TlsIo>> {
        match self.inner.connect(host, tcp) {
            Ok(s) => Ok(Box::new(NativeTls(s))),
            Err(native_tls::HandshakeError::Failure(e)) => {
                Err(handshake_failed(addr, deadline, false, &e.to_string()))
            }
            Err(native_tls::HandshakeError::WouldBlock(_)) => {
                Err(handshake_failed(addr, deadline, true, "timed out"))
            }
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
