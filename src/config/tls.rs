//! The TLS material checks `build()` makes, for the TLS backend compiled in (`tls-rustls`
//! wins when both TLS features are on); without one, any TLS setting is refused.

use super::TlsConfig;
use crate::error::{Error, Result};

/// Whether this build can do TLS at all.
pub(crate) const COMPILED_IN: bool = cfg!(any(feature = "tls-native-tls", feature = "tls-rustls"));

/// The name of the backend compiled in, for errors and docs.
pub(crate) const BACKEND: &str = if cfg!(feature = "tls-rustls") {
    "rustls"
} else if cfg!(feature = "tls-native-tls") {
    "native-tls"
} else {
    "none"
};

/// The error of a TLS setting in a build without TLS.
pub(crate) fn not_compiled_in(setting: &'static str) -> Error {
    Error::config(
        setting,
        "TLS is not compiled in: enable the `tls-native-tls` or `tls-rustls` feature of redkit",
    )
}

/// Checks that the CA and the client identity load, naming the setting at fault.
pub(crate) fn check(tls: &TlsConfig) -> Result<()> {
    if !COMPILED_IN {
        return Err(not_compiled_in("tls"));
    }
    match (&tls.client_cert_pem, &tls.client_key_pem) {
        (Some(_), Some(_)) | (None, None) => {}
        _ => {
            return Err(Error::config(
                "tls.client_identity",
                "needs both a certificate and a key",
            ))
        }
    }
    backend::check(tls)
}

#[cfg(feature = "tls-rustls")]
mod backend {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    use super::TlsConfig;
    use crate::error::{Error, Result};

    /// The certificates of a PEM bundle (at least one).
    pub(crate) fn certificates(
        setting: &'static str,
        pem: &[u8],
    ) -> Result<Vec<CertificateDer<'static>>> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::config(setting, format!("not a PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err(Error::config(setting, "no PEM certificate found"));
        }
        Ok(certs)
    }

    /// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1). The key itself never
    /// appears in an error.
    pub(crate) fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_slice(pem).map_err(|_| {
            Error::config(
                "tls.client_identity",
                "the key is not a PEM private key (PKCS#8, PKCS#1 or SEC1)",
            )
        })
    }

    pub(super) fn check(tls: &TlsConfig) -> Result<()> {
        if let Some(ca) = &tls.ca_pem {
            certificates("tls.ca", ca)?;
        }
        if let (Some(cert), Some(key)) = (&tls.client_cert_pem, &tls.client_key_pem) {
            certificates("tls.client_identity", cert)?;
            private_key(key)?;
        }
        Ok(())
    }
}

#[cfg(feature = "tls-rustls")]
pub(crate) use backend::{certificates, private_key};

#[cfg(all(feature = "tls-native-tls", not(feature = "tls-rustls")))]
mod backend {
    use super::TlsConfig;
    use crate::error::{Error, Result};

    pub(super) fn check(tls: &TlsConfig) -> Result<()> {
        if let Some(ca) = &tls.ca_pem {
            native_tls::Certificate::from_pem(ca)
                .map_err(|e| Error::config("tls.ca", format!("not a PEM certificate: {e}")))?;
        }
        if let (Some(cert), Some(key)) = (&tls.client_cert_pem, &tls.client_key_pem) {
            native_tls::Identity::from_pkcs8(cert, key).map_err(|e| {
                Error::config(
                    "tls.client_identity",
                    format!("certificate and PKCS#8 key (PEM) do not load: {e}"),
                )
            })?;
        }
        Ok(())
    }
}

#[cfg(not(any(feature = "tls-native-tls", feature = "tls-rustls")))]
mod backend {
    use super::TlsConfig;
    use crate::error::Result;

    pub(super) fn check(_: &TlsConfig) -> Result<()> {
        Err(super::not_compiled_in("tls"))
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    #[test]
    fn tls_settings_match_the_build() {
        let from_url = Config::from_url("rediss://127.0.0.1:6380/");
        let from_builder = Config::builder().tls().build();
        if super::COMPILED_IN {
            assert!(from_url.is_ok() && from_builder.is_ok());
        } else {
            for r in [from_url, from_builder] {
                let e = r.unwrap_err();
                assert_eq!(e.class(), crate::ErrorClass::Config);
                assert!(e.to_string().contains("TLS is not compiled in"), "{e}");
            }
        }
    }

    #[test]
    fn half_an_identity_is_refused() {
        let e = Config::builder()
            .tls_client_identity_pem(b"cert".to_vec(), b"key".to_vec())
            .build()
            .unwrap_err();
        assert_eq!(e.class(), crate::ErrorClass::Config);
        let mut b = Config::builder().tls();
        if let Some(t) = b.config.tls.as_mut() {
            t.client_cert_pem = Some(b"x".to_vec());
        }
        let e = b.build().unwrap_err();
        assert!(e.to_string().contains("`tls"), "{e}");
    }
}
