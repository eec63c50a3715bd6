//! `Config` from and to serde formats (feature `serde`): a settings file in TOML, JSON,
//! YAML... with human durations, serialised with every secret redacted.
//!
//! ```
//! # #[cfg(feature = "serde")] {
//! let config: redkit::Config = serde_json::from_str(r#"{
//!     "host": "cache.internal", "port": 6380, "password": "s3cret",
//!     "timeouts": { "connect": "2s", "response": "250ms" },
//!     "pool": { "max_size": 32, "idle_timeout": "5m" }
//! }"#)?;
//! assert_eq!(config.pool().max_size(), 32);
//! let shown = serde_json::to_string(&config)?;
//! assert!(shown.contains("<redacted>") && !shown.contains("s3cret"));
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Every field is optional and means what the [`ConfigBuilder`] setter of the same name
//! means; `url` (any URL [`Config::from_url`] reads) is applied first, the other fields over
//! it. Unknown fields are errors. Durations are strings such as `"250ms"`, `"2s"`, `"1m"`,
//! `"100us"` (or integers, in milliseconds); `"off"` turns off what can be off
//! (`heartbeat.interval`, `pool.idle_timeout`, `pool.max_lifetime`, `tcp_keepalive`). TLS
//! material is given as files (`ca_file`, `client_cert_file`, `client_key_file`) or as PEM
//! text (`ca_pem`, `client_cert_pem`, `client_key_pem`).
//!
//! Serialised, a config shows every setting (including the defaults) except the backoff and
//! breaker policies (set those with the builder), and every password and private key reads
//! `"<redacted>"`; reading `"<redacted>"` back as a password or key is an error, so a
//! serialised config never silently runs with a placeholder.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use super::{Addr, Config, ConfigBuilder, Protocol, SentinelRole, Timeouts};
use crate::error::{Error, Result};
use crate::heartbeat::HeartbeatConfig;
use crate::retry::RetryPolicy;

/// What every secret reads when serialised.
const REDACTED: &str = "<redacted>";

/// A duration as a human string (`"250ms"`), or an integer of milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Human(Duration);

fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros())
    }
}

impl Serialize for Human {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

/// A duration, or `"off"` (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OrOff(Option<Duration>);

impl Serialize for OrOff {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.0 {
            Some(d) => s.serialize_str(&format_duration(d)),
            None => s.serialize_str("off"),
        }
    }
}

struct DurationVisitor {
    off: bool,
}

impl de::Visitor<'_> for DurationVisitor {
    type Value = Option<Duration>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"250ms\", \"2s\" or \"1m\", or milliseconds")?;
        if self.off {
            f.write_str(", or \"off\"")?;
        }
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, ms: u64) -> std::result::Result<Self::Value, E> {
        Ok(Some(Duration::from_millis(ms)))
    }

    fn visit_i64<E: de::Error>(self, ms: i64) -> std::result::Result<Self::Value, E> {
        u64::try_from(ms)
            .map(|ms| Some(Duration::from_millis(ms)))
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(ms), &self))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<Self::Value, E> {
        if self.off && s.trim() == "off" {
            return Ok(None);
        }
        super::url::parse_duration(s)
            .map(Some)
            .ok_or_else(|| E::invalid_value(de::Unexpected::Str(s), &self))
    }
}

impl<'de> Deserialize<'de> for Human {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = d.deserialize_any(DurationVisitor { off: false })?;
        v.map(Human)
            .ok_or_else(|| de::Error::custom("a duration cannot be \"off\" here"))
    }
}

impl<'de> Deserialize<'de> for OrOff {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor { off: true }).map(OrOff)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TimeoutsRepr {
    connect: Option<Human>,
    response: Option<Human>,
    write: Option<Human>,
    checkout: Option<Human>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PoolRepr {
    max_size: Option<u32>,
    min_idle: Option<u32>,
    idle_timeout: Option<OrOff>,
    max_lifetime: Option<OrOff>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RetryRepr {
    max_attempts: Option<u32>,
    max_elapsed: Option<Human>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HeartbeatRepr {
    interval: Option<OrOff>,
    timeout: Option<Human>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TlsRepr {
    #[serde(skip_serializing_if = "Option::is_none")]
    insecure: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_pem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_cert_pem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_key_pem: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct SentinelRepr {
    master_name: String,
    /// `host:port` (`[v6]:port`), port 26379 when left out.
    addrs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ClusterRepr {
    /// `host:port` (`[v6]:port`).
    seeds: Vec<String>,
    /// [`ConfigBuilder::cluster_read_from_replicas`].
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    read_from_replicas: bool,
    /// [`ConfigBuilder::cluster_max_redirects`].
    #[serde(skip_serializing_if = "Option::is_none")]
    max_redirects: Option<usize>,
}

/// The serde form of a [`Config`].
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Repr {
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unix_socket: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    db: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_name: Option<String>,
    /// `resp2` or `resp3` (also `2`, `3`).
    protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_prefix: Option<String>,
    transaction_attempts: Option<u32>,
    /// Connections of the multiplexed connection (0: none).
    multiplexed: Option<u32>,
    max_value_size: Option<u64>,
    max_reply_size: Option<u64>,
    tcp_keepalive: Option<OrOff>,
    timeouts: Option<TimeoutsRepr>,
    pool: Option<PoolRepr>,
    retry: Option<RetryRepr>,
    heartbeat: Option<HeartbeatRepr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<TlsRepr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sentinel: Option<SentinelRepr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterRepr>,
}

fn join_host(host: &str, port: u16) -> String {
    Addr::Tcp {
        host: host.to_owned(),
        port,
    }
    .to_string()
}

fn split_host(setting: &'static str, s: &str, default_port: Option<u16>) -> Result<(String, u16)> {
    let bad = || Error::config(setting, format!("`{s}` is not host:port"));
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            (host, after.strip_prefix(':'))
        }
        None => match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        },
    };
    let port = match (port, default_port) {
        (Some(p), _) => p.parse().map_err(|_| bad())?,
        (None, Some(p)) => p,
        (None, None) => return Err(bad()),
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

fn secret(setting: &'static str, s: String) -> Result<String> {
    if s == REDACTED {
        return Err(Error::config(
            setting,
            "reads \"<redacted>\" (a serialised config): give the real secret",
        ));
    }
    Ok(s)
}

impl Repr {
    fn from_config(c: &Config) -> Repr {
        let (host, port, unix_socket) = match &c.addr {
            Addr::Tcp { host, port } => (Some(host.clone()), Some(*port), None),
            Addr::Unix(p) => (None, None, Some(p.clone())),
        };
        let t = &c.timeouts;
        let tls = c.tls.as_ref().map(|tls| TlsRepr {
            insecure: tls.insecure.then_some(true),
            ca_pem: tls
                .ca_pem
                .as_ref()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            client_cert_pem: tls
                .client_cert_pem
                .as_ref()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            client_key_pem: tls.client_key_pem.as_ref().map(|_| REDACTED.to_owned()),
            ..TlsRepr::default()
        });
        let sentinel = c.sentinel.as_ref().map(|s| SentinelRepr {
            master_name: s.master_name.clone(),
            addrs: s.addrs.iter().map(|(h, p)| join_host(h, *p)).collect(),
            role: Some(s.role.as_str().to_owned()),
            username: s.username.clone(),
            password: s.password.as_ref().map(|_| REDACTED.to_owned()),
            tls: s.tls,
        });
        let cluster = c.cluster.as_ref().map(|cl| ClusterRepr {
            seeds: cl.seeds.iter().map(|(h, p)| join_host(h, *p)).collect(),
            read_from_replicas: cl.options.read_from_replicas,
            max_redirects: (cl.options.max_redirects != crate::config::DEFAULT_MAX_REDIRECTS)
                .then_some(cl.options.max_redirects),
        });
        Repr {
            url: None,
            host,
            port,
            unix_socket,
            username: c.username.clone(),
            password: c.password.as_ref().map(|_| REDACTED.to_owned()),
            db: Some(c.db),
            client_name: c.client_name.clone(),
            protocol: Some(
                match c.protocol {
                    Protocol::Resp2 => "resp2",
                    Protocol::Resp3 => "resp3",
                }
                .to_owned(),
            ),
            key_prefix: c.key_prefix.clone(),
            transaction_attempts: Some(c.transaction_attempts),
            multiplexed: Some(c.multiplex.connections),
            max_value_size: Some(c.max_value_size),
            max_reply_size: Some(c.max_reply_size),
            tcp_keepalive: Some(OrOff(c.tcp_keepalive)),
            timeouts: Some(TimeoutsRepr {
                connect: Some(Human(t.connect)),
                response: Some(Human(t.response)),
                write: Some(Human(t.write)),
                checkout: Some(Human(t.checkout)),
            }),
            pool: Some(PoolRepr {
                max_size: Some(c.pool.max_size),
                min_idle: Some(c.pool.min_idle),
                idle_timeout: Some(OrOff(c.pool.idle_timeout)),
                max_lifetime: Some(OrOff(c.pool.max_lifetime)),
            }),
            retry: Some(RetryRepr {
                max_attempts: Some(c.retry.max_attempts),
                max_elapsed: Some(Human(c.retry.max_elapsed)),
            }),
            heartbeat: Some(HeartbeatRepr {
                interval: Some(OrOff(c.heartbeat.interval)),
                timeout: Some(Human(c.heartbeat.timeout)),
            }),
            tls,
            sentinel,
            cluster,
        }
    }

    fn into_builder(self) -> Result<ConfigBuilder> {
        let mut b = match self.url {
            Some(url) => ConfigBuilder::from_url(&url)?,
            None => ConfigBuilder::default(),
        };
        if let Some(h) = self.host {
            b = b.host(h);
        }
        if let Some(p) = self.port {
            b = b.port(p);
        }
        if let Some(p) = self.unix_socket {
            b = b.unix_socket(p);
        }
        if let Some(u) = self.username {
            b = b.username(u);
        }
        if let Some(p) = self.password {
            b = b.password(secret("password", p)?);
        }
        if let Some(db) = self.db {
            b = b.db(db);
        }
        if let Some(n) = self.client_name {
            b = b.client_name(n);
        }
        if let Some(p) = self.protocol {
            b = b.protocol(match p.as_str() {
                "2" | "resp2" | "RESP2" => Protocol::Resp2,
                "3" | "resp3" | "RESP3" => Protocol::Resp3,
                other => {
                    return Err(Error::config(
                        "protocol",
                        format!("`{other}` is not resp2 or resp3"),
                    ))
                }
            });
        }
        if let Some(p) = self.key_prefix {
            b = b.key_prefix(p);
        }
        if let Some(n) = self.transaction_attempts {
            b = b.transaction_attempts(n);
        }
        if let Some(n) = self.multiplexed {
            b = b.multiplexed(n);
        }
        if let Some(n) = self.max_value_size {
            b = b.max_value_size(n);
        }
        if let Some(n) = self.max_reply_size {
            b = b.max_reply_size(n);
        }
        if let Some(k) = self.tcp_keepalive {
            b = b.tcp_keepalive(k.0);
        }
        if let Some(t) = self.timeouts {
            let mut timeouts: Timeouts = b.config.timeouts;
            if let Some(d) = t.connect {
                timeouts = timeouts.connect(d.0);
            }
            if let Some(d) = t.response {
                timeouts = timeouts.response(d.0);
            }
            if let Some(d) = t.write {
                timeouts = timeouts.write(d.0);
            }
            if let Some(d) = t.checkout {
                timeouts = timeouts.checkout(d.0);
            }
            b = b.timeouts(timeouts);
        }
        if let Some(p) = self.pool {
            if let Some(n) = p.max_size {
                b = b.pool_max_size(n);
            }
            if let Some(n) = p.min_idle {
                b = b.pool_min_idle(n);
            }
            if let Some(d) = p.idle_timeout {
                b = b.pool_idle_timeout(d.0);
            }
            if let Some(d) = p.max_lifetime {
                b = b.pool_max_lifetime(d.0);
            }
        }
        if let Some(r) = self.retry {
            let mut retry: RetryPolicy = b.config.retry;
            if let Some(n) = r.max_attempts {
                retry = retry.max_attempts(n);
            }
            if let Some(d) = r.max_elapsed {
                retry = retry.max_elapsed(d.0);
            }
            b = b.retry(retry);
        }
        if let Some(h) = self.heartbeat {
            let mut hb: HeartbeatConfig = b.config.heartbeat;
            match h.interval {
                Some(OrOff(None)) => hb = HeartbeatConfig::disabled(),
                Some(OrOff(Some(d))) => hb = hb.interval(d),
                None => {}
            }
            if let Some(d) = h.timeout {
                hb = hb.timeout(d.0);
            }
            b = b.heartbeat(hb);
        }
        if let Some(t) = self.tls {
            b = b.tls();
            if t.insecure == Some(true) {
                b = b.tls_insecure();
            }
            if let Some(f) = t.ca_file {
                b = b.tls_ca_file(f);
            }
            if let Some(p) = t.ca_pem {
                b = b.tls_ca_pem(p.into_bytes());
            }
            match (t.client_cert_file, t.client_key_file) {
                (Some(c), Some(k)) => b = b.tls_client_identity_files(c, k),
                (None, None) => {}
                _ => {
                    return Err(Error::config(
                        "tls.client_identity",
                        "needs both client_cert_file and client_key_file",
                    ))
                }
            }
            match (t.client_cert_pem, t.client_key_pem) {
                (Some(c), Some(k)) => {
                    let k = secret("tls.client_key_pem", k)?;
                    b = b.tls_client_identity_pem(c.into_bytes(), k.into_bytes());
                }
                (None, None) => {}
                _ => {
                    return Err(Error::config(
                        "tls.client_identity",
                        "needs both client_cert_pem and client_key_pem",
                    ))
                }
            }
        }
        if let Some(s) = self.sentinel {
            let addrs = s
                .addrs
                .iter()
                .map(|a| split_host("sentinel.addrs", a, Some(26379)))
                .collect::<Result<Vec<_>>>()?;
            b = b.sentinel(s.master_name, addrs);
            if let Some(role) = s.role {
                let role: SentinelRole = role.parse()?;
                b = b.sentinel_role(role);
            }
            if let Some(p) = s.password {
                b = b.sentinel_auth(s.username, secret("sentinel.password", p)?);
            }
            if let Some(tls) = s.tls {
                b = b.sentinel_tls(tls);
            }
        }
        if let Some(c) = self.cluster {
            let seeds = c
                .seeds
                .iter()
                .map(|a| split_host("cluster.seeds", a, None))
                .collect::<Result<Vec<_>>>()?;
            b = b
                .cluster(seeds)
                .cluster_read_from_replicas(c.read_from_replicas);
            if let Some(n) = c.max_redirects {
                b = b.cluster_max_redirects(n);
            }
        }
        Ok(b)
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
impl Serialize for Config {
    /// Every setting but the backoff and breaker policies, with passwords and private keys
    /// as `"<redacted>"`.
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        Repr::from_config(self).serialize(s)
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
impl<'de> Deserialize<'de> for Config {
    /// Reads the settings (see [`crate::config::settings`]) and validates them like
    /// [`ConfigBuilder::build`]: an invalid setting is an error naming it.
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let repr = Repr::deserialize(d)?;
        repr.into_builder()
            .and_then(ConfigBuilder::build)
            .map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_write_like_humans() {
        let read = |s: &str| serde_json::from_str::<Human>(s).map(|h| h.0);
        assert_eq!(read("\"250ms\"").unwrap(), Duration::from_millis(250));
        assert_eq!(read("\"2s\"").unwrap(), Duration::from_secs(2));
        assert_eq!(read("\"1m\"").unwrap(), Duration::from_secs(60));
        assert_eq!(read("1500").unwrap(), Duration::from_millis(1500));
        assert!(read("\"soon\"").is_err());
        assert!(read("\"off\"").is_err());
        assert!(read("-3").is_err());
        let off: OrOff = serde_json::from_str("\"off\"").unwrap();
        assert_eq!(off.0, None);
        for d in [
            Duration::from_secs(2),
            Duration::from_millis(250),
            Duration::from_micros(1500),
        ] {
            let text = serde_json::to_string(&Human(d)).unwrap();
            assert_eq!(read(&text).unwrap(), d, "{text}");
        }
    }

    #[test]
    fn hosts_split_with_ports_and_brackets() {
        assert_eq!(split_host("s", "h:1", None).unwrap(), ("h".to_owned(), 1));
        assert_eq!(
            split_host("s", "[::1]:7000", None).unwrap(),
            ("::1".to_owned(), 7000)
        );
        assert_eq!(
            split_host("s", "h", Some(26379)).unwrap(),
            ("h".to_owned(), 26379)
        );
        assert!(split_host("s", "h", None).is_err());
        assert!(split_host("s", ":1", None).is_err());
        assert!(split_host("s", "h:x", None).is_err());
    }

    #[test]
    fn a_redacted_secret_is_refused_and_bad_input_is_typed() {
        let e = serde_json::from_str::<Config>(r#"{"password": "<redacted>"}"#).unwrap_err();
        assert!(e.to_string().contains("password"), "{e}");
        let e = serde_json::from_str::<Config>(r#"{"colour": "blue"}"#).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let e = serde_json::from_str::<Config>(r#"{"pool": {"max_size": 0}}"#).unwrap_err();
        assert!(e.to_string().contains("pool.max_size"), "{e}");
        let e = serde_json::from_str::<Config>(r#"{"protocol": "resp9"}"#).unwrap_err();
        assert!(e.to_string().contains("resp9"), "{e}");
    }

    #[test]
    fn sentinel_and_cluster_round_trip() {
        let c: Config = "redis+sentinel://:pw@h1,h2:5000/mymaster/2?sentinel_role=replica"
            .parse()
            .unwrap();
        let text = serde_json::to_string(&c).unwrap();
        assert!(!text.contains("pw\"") && text.contains(REDACTED), "{text}");
        let back: Config = serde_json::from_str(&text.replace("\"<redacted>\"", "\"pw\"")).unwrap();
        assert_eq!(format!("{back:?}"), format!("{c:?}"));
        let c: Config = "redis+cluster://h1:7000,[::1]:7001".parse().unwrap();
        let back: Config = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.cluster(), c.cluster());
        let c: Config =
            "redis+cluster://h1:7000,h2:7001?cluster_read_from_replicas=true&cluster_max_redirects=9"
                .parse()
                .unwrap();
        let options = c.cluster().unwrap().options;
        assert!(options.read_from_replicas);
        assert_eq!(options.max_redirects, 9);
        let text = serde_json::to_string(&c).unwrap();
        assert!(text.contains("\"read_from_replicas\":true"), "{text}");
        let back: Config = serde_json::from_str(&text).unwrap();
        assert_eq!(back.cluster(), c.cluster());
        // The options need a Cluster; bad values are named.
        let plain = "redis://h1?cluster_read_from_replicas=true".parse::<Config>();
        assert!(plain.is_err());
        let bad = "redis+cluster://h1?cluster_read_from_replicas=maybe".parse::<Config>();
        assert!(format!("{}", bad.unwrap_err()).contains("cluster_read_from_replicas"));
    }
}
