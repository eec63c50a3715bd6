//! The rustls backend: ring as the crypto provider, the system's roots (through
//! rustls-native-certs) unless a CA is given, a client certificate from PEM, and for
//! `tls_insecure` a verifier that accepts any certificate for any name (handshake
//! signatures are still checked, so the session is at least with the holder of the
//! certificate shown).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::handshake_failed;
use crate::config::tls::{certificates, private_key};
use crate::config::{Addr, TlsConfig};
use crate::conn::socket::{Timed, TlsIo};
use crate::error::{Error, Result};

#[derive(Clone)]
pub(super) struct Backend {
    config: Arc<ClientConfig>,
}

fn setup_err(e: impl std::fmt::Display) -> Error {
    Error::tls("TLS set-up error", e.to_string())
}

/// The system's root certificates; at least one must load.
fn system_roots() -> Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        log::debug!("TLS: a system root certificate source did not load: {e}");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        log::debug!("TLS: {ignored} system root certificates did not parse");
    }
    if added == 0 {
        return Err(setup_err(
            "no system root certificate found (set a CA with tls_ca_pem or tls_ca_file)",
        ));
    }
    Ok(roots)
}

impl Backend {
    pub(super) fn new(tls: &TlsConfig) -> Result<Backend> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(setup_err)?;
        let builder = if tls.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        } else {
            let roots = match &tls.ca_pem {
                Some(pem) => {
                    let mut roots = RootCertStore::empty();
                    for cert in certificates("tls.ca", pem)? {
                        roots.add(cert).map_err(setup_err)?;
                    }
                    roots
                }
                None => system_roots()?,
            };
            builder.with_root_certificates(roots)
        };
        let config = match (&tls.client_cert_pem, &tls.client_key_pem) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(
                    certificates("tls.client_identity", cert)?,
                    private_key(key)?,
                )
                .map_err(setup_err)?,
            _ => builder.with_no_client_auth(),
        };
        Ok(Backend {
            config: Arc::new(config),
        })
    }

    pub(super) fn connect(
        &self,
        host: &str,
        mut tcp: Timed<TcpStream>,
        addr: &Addr,
        deadline: Instant,
    ) -> Result<Box<dyn TlsIo>> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| handshake_failed(addr, deadline, false, &format!("host name: {e}")))?;
        let mut conn = ClientConnection::new(self.config.clone(), name).map_err(setup_err)?;
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut tcp) {
                let timed_out = matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                );
                return Err(handshake_failed(addr, deadline, timed_out, &e.to_string()));
            }
        }
        Ok(Box::new(Rustls(rustls::StreamOwned::new(conn, tcp))))
    }
}

struct Rustls(rustls::StreamOwned<ClientConnection, Timed<TcpStream>>);

impl Read for Rustls {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Rustls {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl TlsIo for Rustls {
    fn timed(&mut self) -> &mut Timed<TcpStream> {
        &mut self.0.sock
    }

    fn timed_ref(&self) -> &Timed<TcpStream> {
        &self.0.sock
    }

    fn close_notify(&mut self) {
        let s = &mut self.0;
        s.conn.send_close_notify();
        while s.conn.wants_write() {
            if s.conn.write_tls(&mut s.sock).is_err() {
                break;
            }
        }
        let _ = s.sock.flush();
    }
}

/// `tls_insecure`: any certificate, any name. Signatures are verified with the provider's
/// algorithms all the same.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
