//! From the `redis` crate's own connection settings: code that already builds a
//! `redis::Client` or `redis::ConnectionInfo` hands it over as it is.

use super::{ConfigBuilder, Protocol};
use crate::error::{Error, Result};

impl ConfigBuilder {
    /// A builder with the address, TLS choice, database, user, password and protocol of a
    /// `redis` crate [`ConnectionInfo`](redis::ConnectionInfo) (what `redis::Client::open`
    /// parsed); everything else at redkit's defaults, to be set on the builder.
    ///
    /// Custom TLS certificates inside a `rediss://` connection info cannot be read back out
    /// of the `redis` crate: such an info is refused with a
    /// [`Config`](crate::ErrorClass::Config) error (give redkit the certificates with
    /// [`tls_ca_pem`](ConfigBuilder::tls_ca_pem) and
    /// [`tls_client_identity_pem`](ConfigBuilder::tls_client_identity_pem) on a builder
    /// made from the URL instead), never silently dropped.
    ///
    /// ```
    /// let client = redis::Client::open("redis://app:s3cret@10.0.0.5:6380/2?protocol=resp3")?;
    /// let config = redkit::ConfigBuilder::from_connection_info(client.get_connection_info())?
    ///     .pool_max_size(32)
    ///     .build()?;
    /// assert_eq!(config.db(), 2);
    /// assert_eq!(config.username(), Some("app"));
    /// assert!(config.has_password());
    /// assert_eq!(config.protocol(), redkit::Protocol::Resp3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_connection_info(info: &redis::ConnectionInfo) -> Result<ConfigBuilder> {
        let mut b = ConfigBuilder::default();
        b = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => b.host(host.clone()).port(*port),
            redis::ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                tls_params,
            } => {
                if tls_params.is_some() {
                    return Err(Error::config(
                        "tls",
                        "the redis::ConnectionInfo carries custom TLS certificates, which \
                         cannot be read back: build the config from the URL and give the \
                         certificates with tls_ca_pem / tls_client_identity_pem",
                    ));
                }
                let b = b.host(host.clone()).port(*port).tls();
                if *insecure {
                    b.tls_insecure()
                } else {
                    b
                }
            }
            redis::ConnectionAddr::Unix(path) => b.unix_socket(path),
            _ => {
                return Err(Error::config(
                    "addr",
                    "a kind of redis::ConnectionAddr redkit does not know",
                ))
            }
        };
        let r = info.redis_settings();
        if let Some(user) = r.username() {
            b = b.username(user);
        }
        if let Some(password) = r.password() {
            b = b.password(password);
        }
        b = b.db(r.db());
        b = b.protocol(match r.protocol() {
            redis::ProtocolVersion::RESP3 => Protocol::Resp3,
            _ => Protocol::Resp2,
        });
        Ok(b)
    }
}
