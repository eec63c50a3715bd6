//! Run-time generated TLS material: a CA, server and client certificates, and an unrelated CA.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509Name, X509NameRef, X509Ref, X509};

use super::{io_err, TempDir, TestingError};

const CA_CERT: &str = "ca.crt";
const SERVER_CERT: &str = "server.crt";
const SERVER_KEY: &str = "server.key";
const WRONG_HOST_SERVER_CERT: &str = "wrong-host-server.crt";
const CLIENT_CERT: &str = "client.crt";
const CLIENT_KEY: &str = "client.key";
const OTHER_CA_CERT: &str = "other-ca.crt";

/// The only name in the SAN of the wrong-host server certificate.
const WRONG_HOST: &str = "wrong-host.invalid";

/// TLS certificates and keys generated at run time, as PEM files in a private temporary
/// directory.
///
/// Contents:
/// * a CA (self-signed, `CA:TRUE`, `keyCertSign`);
/// * a server certificate signed by that CA, for `DNS:localhost` and `IP:127.0.0.1`;
/// * a client certificate signed by that CA (`extendedKeyUsage = clientAuth`);
/// * an unrelated "other" CA, for wrong-CA tests;
/// * a server certificate signed by the CA for another host name only, used by the material
///   returned from [`wrong_host_server_material`](Self::wrong_host_server_material).
///
/// Keys are ECDSA P-256 (PKCS#8 PEM): generating a whole set takes a few milliseconds, where
/// RSA 2048 takes most of a second. Certificates are signed with SHA-256, are valid from one
/// day ago to one year ahead, and have random serial numbers.
///
/// Cloning is cheap: clones share the directory, which is removed when the last clone is
/// dropped (a [`RedisServer`](super::RedisServer) started with the material keeps a clone).
#[derive(Clone)]
pub struct TlsMaterial {
    inner: Arc<Inner>,
    wrong_host: bool,
}

struct Inner {
    dir: TempDir,
    ca_cert_pem: Vec<u8>,
    client_cert_pem: Vec<u8>,
    client_key_pem: Vec<u8>,
    other_ca_cert_pem: Vec<u8>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("dir", &self.inner.dir.path())
            .field("wrong_host", &self.wrong_host)
            .finish()
    }
}

impl TlsMaterial {
    /// Generates fresh keys and certificates and writes them into a new temporary directory.
    pub fn generate() -> Result<TlsMaterial, TestingError> {
        let dir = TempDir::new("tls")?;

        let ca_key = new_key()?;
        let ca = ca_cert("redkit test CA", &ca_key)?;
        let other_ca_key = new_key()?;
        let other_ca = ca_cert("redkit unrelated test CA", &other_ca_key)?;

        let server_key = new_key()?;
        let server = leaf_cert(
            "localhost",
            &server_key,
            &ca,
            &ca_key,
            Usage::Server(&["localhost"], &["127.0.0.1"]),
        )?;
        let wrong_host_server = leaf_cert(
            WRONG_HOST,
            &server_key,
            &ca,
            &ca_key,
            Usage::Server(&[WRONG_HOST], &[]),
        )?;
        let client_key = new_key()?;
        let client = leaf_cert(
            "redkit test client",
            &client_key,
            &ca,
            &ca_key,
            Usage::Client,
        )?;

        let ca_cert_pem = ca.to_pem()?;
        let other_ca_cert_pem = other_ca.to_pem()?;
        let client_cert_pem = client.to_pem()?;
        let client_key_pem = client_key.private_key_to_pem_pkcs8()?;
        let files: [(&str, Vec<u8>); 7] = [
            (CA_CERT, ca_cert_pem.clone()),
            (SERVER_CERT, server.to_pem()?),
            (SERVER_KEY, server_key.private_key_to_pem_pkcs8()?),
            (WRONG_HOST_SERVER_CERT, wrong_host_server.to_pem()?),
            (CLIENT_CERT, client_cert_pem.clone()),
            (CLIENT_KEY, client_key_pem.clone()),
            (OTHER_CA_CERT, other_ca_cert_pem.clone()),
        ];
        for (name, pem) in files {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).map_err(io_err(format!("writing {}", path.display())))?;
        }

        Ok(TlsMaterial {
            inner: Arc::new(Inner {
                dir,
                ca_cert_pem,
                client_cert_pem,
                client_key_pem,
                other_ca_cert_pem,
            }),
            wrong_host: false,
        })
    }

    /// The same material, except that [`server_cert_path`](Self::server_cert_path) is a
    /// certificate (signed by the same CA, same key) valid only for another host name, so
    /// clients connecting to `127.0.0.1` or `localhost` must reject the server.
    pub fn wrong_host_server_material(&self) -> TlsMaterial {
        TlsMaterial {
            inner: Arc::clone(&self.inner),
            wrong_host: true,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.inner.dir.path().join(name)
    }

    /// Path of the CA certificate (PEM).
    pub fn ca_cert_path(&self) -> PathBuf {
        self.path(CA_CERT)
    }

    /// Path of the server certificate (PEM), signed by the CA.
    pub fn server_cert_path(&self) -> PathBuf {
        self.path(if self.wrong_host {
            WRONG_HOST_SERVER_CERT
        } else {
            SERVER_CERT
        })
    }

    /// Path of the server's private key (PKCS#8 PEM).
    pub fn server_key_path(&self) -> PathBuf {
        self.path(SERVER_KEY)
    }

    /// Path of the client certificate (PEM), signed by the CA.
    pub fn client_cert_path(&self) -> PathBuf {
        self.path(CLIENT_CERT)
    }

    /// Path of the client's private key (PKCS#8 PEM).
    pub fn client_key_path(&self) -> PathBuf {
        self.path(CLIENT_KEY)
    }

    /// Path of the unrelated CA's certificate (PEM).
    pub fn other_ca_cert_path(&self) -> PathBuf {
        self.path(OTHER_CA_CERT)
    }

    /// The CA certificate, PEM.
    pub fn ca_cert_pem(&self) -> &[u8] {
        &self.inner.ca_cert_pem
    }

    /// The client certificate, PEM.
    pub fn client_cert_pem(&self) -> &[u8] {
        &self.inner.client_cert_pem
    }

    /// The client's private key, PKCS#8 PEM (`BEGIN PRIVATE KEY`).
    pub fn client_key_pem(&self) -> &[u8] {
        &self.inner.client_key_pem
    }

    /// The unrelated CA's certificate, PEM.
    pub fn other_ca_cert_pem(&self) -> &[u8] {
        &self.inner.other_ca_cert_pem
    }

    /// Certificates for [`redis::Client::build_with_tls`]: trust the CA, and present the
    /// client certificate when `with_client_cert` is true.
    pub fn redis_certificates(&self, with_client_cert: bool) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: with_client_cert.then(|| redis::ClientTlsConfig {
                client_cert: self.client_cert_pem().to_vec(),
                client_key: self.client_key_pem().to_vec(),
            }),
            root_cert: Some(self.ca_cert_pem().to_vec()),
        }
    }
}

enum Usage<'a> {
    /// Server authentication for these DNS names and IP addresses.
    Server(&'a [&'a str], &'a [&'a str]),
    Client,
}

fn new_key() -> Result<PKey<Private>, ErrorStack> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    PKey::from_ec_key(EcKey::generate(&group)?)
}

fn name(common_name: &str) -> Result<X509Name, ErrorStack> {
    let mut name = X509Name::builder()?;
    name.append_entry_by_text("O", "redkit tests")?;
    name.append_entry_by_text("CN", common_name)?;
    Ok(name.build())
}

/// A v3 certificate builder with subject, issuer, key, random serial and validity set.
fn builder(
    subject: &X509NameRef,
    issuer: &X509NameRef,
    key: &PKey<Private>,
) -> Result<X509Builder, ErrorStack> {
    const DAY: i64 = 24 * 60 * 60;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2));

    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    b.set_serial_number(serial.to_asn1_integer()?.as_ref())?;
    b.set_subject_name(subject)?;
    b.set_issuer_name(issuer)?;
    b.set_pubkey(key)?;
    b.set_not_before(Asn1Time::from_unix((now - DAY) as _)?.as_ref())?;
    b.set_not_after(Asn1Time::from_unix((now + 365 * DAY) as _)?.as_ref())?;
    Ok(b)
}

fn ca_cert(common_name: &str, key: &PKey<Private>) -> Result<X509, ErrorStack> {
    let name = name(common_name)?;
    let mut b = builder(&name, &name, key)?;
    b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()?,
    )?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
    b.append_extension(ski)?;
    b.sign(key, MessageDigest::sha256())?;
    Ok(b.build())
}

fn leaf_cert(
    common_name: &str,
    key: &PKey<Private>,
    ca: &X509Ref,
    ca_key: &PKey<Private>,
    usage: Usage<'_>,
) -> Result<X509, ErrorStack> {
    let mut b = builder(&*name(common_name)?, ca.subject_name(), key)?;
    b.append_extension(BasicConstraints::new().build()?)?;
    b.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(Some(ca), None))?;
    b.append_extension(ski)?;
    let aki = AuthorityKeyIdentifier::new()
        .keyid(true)
        .build(&b.x509v3_context(Some(ca), None))?;
    b.append_extension(aki)?;
    match usage {
        Usage::Server(dns_names, ips) => {
            b.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
            let mut san = SubjectAlternativeName::new();
            for dns in dns_names {
                san.dns(dns);
            }
            for ip in ips {
                san.ip(ip);
            }
            let san = san.build(&b.x509v3_context(Some(ca), None))?;
            b.append_extension(san)?;
        }
        Usage::Client => {
            b.append_extension(ExtendedKeyUsage::new().client_auth().build()?)?;
        }
    }
    b.sign(ca_key, MessageDigest::sha256())?;
    Ok(b.build())
}
