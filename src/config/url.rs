//! Configs from URLs: `redis://`, `rediss://`, `unix://`, `redis+sentinel://`,
//! `redis+cluster://`, and the durations and host lists inside them.

use std::time::Duration;

use super::{Addr, ConfigBuilder, Protocol, Secret, SentinelRole};
use crate::error::{Error, Result};
use crate::heartbeat::HeartbeatConfig;

impl ConfigBuilder {
    /// Starts from a URL (see the [module docs](crate::config)).
    pub fn from_url(url: &str) -> Result<ConfigBuilder> {
        parse_url(url)
    }

    /// Starts from the `REDIS_URL` environment variable.
    pub fn from_env() -> Result<ConfigBuilder> {
        match std::env::var("REDIS_URL") {
            Ok(url) => parse_url(&url).map_err(|e| match e {
                Error::Config { reason, .. } => Error::config("REDIS_URL", reason),
                other => other,
            }),
            Err(std::env::VarError::NotPresent) => Err(Error::config(
                "REDIS_URL",
                "the environment variable is not set",
            )),
            Err(std::env::VarError::NotUnicode(_)) => Err(Error::config(
                "REDIS_URL",
                "the environment variable is not valid UTF-8",
            )),
        }
    }
}

/// Parses a duration: `250ms`, `2s`, `1m`, `500us`, or plain milliseconds.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    match unit {
        "" | "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        "us" => Some(Duration::from_micros(n)),
        _ => None,
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `redis+cluster://[user:pass@]host1:port1,host2:port2[/][?params]` (and `rediss+cluster`):
/// the first node parses as a plain URL, every node becomes a cluster seed.
fn parse_cluster_url(scheme: &str, rest: &str) -> Result<ConfigBuilder> {
    let HostList {
        userinfo,
        hosts,
        first,
        tail,
    } = host_list(rest, 6379, "cluster node")?;
    let seeds = hosts;
    let b = parse_url(&format!("{scheme}://{userinfo}{first}{tail}"))?;
    Ok(b.cluster(seeds))
}

/// The parts of a URL with several hosts: `[userinfo@]host[:port],host[:port]...[/path][?query][#fragment]`.
struct HostList<'a> {
    /// `user:password@`, or empty.
    userinfo: String,
    /// Every host with its port (`default_port` when left out).
    hosts: Vec<(String, u16)>,
    /// The first host as written (with its port, if any).
    first: &'a str,
    /// Everything after the hosts (path, query, fragment).
    tail: &'a str,
}

/// Parses the hosts of a Sentinel or Cluster URL (`what` names one host in errors). IPv6
/// hosts come in brackets (`[::1]:7000`).
fn host_list<'a>(rest: &'a str, default_port: u16, what: &str) -> Result<HostList<'a>> {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, list) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let mut hosts = Vec::new();
    for node in list.split(',') {
        let (host, port) = match node.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && (!h.starts_with('[') || h.ends_with(']')) => {
                let port = p.parse::<u16>().map_err(|_| {
                    Error::config(
                        "url",
                        format!("the port of {what} `{node}` is not a number from 1 to 65535"),
                    )
                })?;
                (h, port)
            }
            _ => (node, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(Error::config(
                "url",
                format!("every {what} needs a host (and a non-zero port): `{node}`"),
            ));
        }
        hosts.push((host.to_owned(), port));
    }
    Ok(HostList {
        userinfo,
        hosts,
        first: list.split(',').next().unwrap_or_default(),
        tail,
    })
}

/// The port of a sentinel whose URL gives none.
const SENTINEL_PORT: u16 = 26379;

/// `redis+sentinel://[user:pass@]host1:port1,host2:port2/master_name[/db][?params]` (and
/// `rediss+sentinel`): every host is a sentinel (port 26379 when none is given); the user,
/// password, database, TLS and other parameters are the data nodes', as in a plain URL;
/// `sentinel_username`, `sentinel_password`, `sentinel_tls` and `sentinel_role` configure the
/// sentinels and the role. Errors never repeat the URL (it may hold passwords).
fn parse_sentinel_url(scheme: &str, rest: &str) -> Result<ConfigBuilder> {
    let HostList {
        userinfo,
        hosts: sentinels,
        tail,
        ..
    } = host_list(rest, SENTINEL_PORT, "sentinel")?;

    let (tail, fragment) = match tail.split_once('#') {
        Some((t, f)) => (t, format!("#{f}")),
        None => (tail, String::new()),
    };
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    let mut segments = path.strip_prefix('/').unwrap_or(path).split('/');
    let master_name = segments
        .next()
        .filter(|n| !n.is_empty())
        .and_then(percent_decode)
        .ok_or_else(|| {
            Error::config(
                "url",
                "a sentinel URL names the master: redis+sentinel://host:port,.../master_name",
            )
        })?;
    let db = segments.next().unwrap_or_default();
    if segments.next().is_some() {
        return Err(Error::config(
            "url",
            "a sentinel URL's path is /master_name[/db]",
        ));
    }

    let mut username = None;
    let mut password = None;
    let mut tls = None;
    let mut role = None;
    let mut others = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !k.starts_with("sentinel_") {
            others.push(pair);
            continue;
        }
        let v = percent_decode(v)
            .ok_or_else(|| Error::config("url", format!("parameter `{k}` is not valid UTF-8")))?;
        match k {
            "sentinel_username" => username = Some(v),
            "sentinel_password" => password = Some(v),
            "sentinel_tls" => {
                tls = Some(match v.as_str() {
                    "true" | "yes" | "on" | "1" => true,
                    "false" | "no" | "off" | "0" => false,
                    _ => {
                        return Err(Error::config(
                            "sentinel.tls",
                            format!("`{v}` is not true or false"),
                        ))
                    }
                })
            }
            "sentinel_role" => role = Some(v.parse::<SentinelRole>()?),
            other => {
                return Err(Error::config(
                    "url",
                    format!("unknown parameter `{other}` (see the config module docs for the ones redkit reads)"),
                ))
            }
        }
    }
    if username.is_some() && password.is_none() {
        return Err(Error::config(
            "sentinel.password",
            "a sentinel_username needs a sentinel_password",
        ));
    }

    // The rest is a plain URL for the first sentinel (the data nodes' settings).
    let (host, port) = sentinels.first().cloned().unwrap_or_default();
    let first = Addr::Tcp { host, port };
    let query = if others.is_empty() {
        String::new()
    } else {
        format!("?{}", others.join("&"))
    };
    let mut b = parse_url(&format!(
        "{scheme}://{userinfo}{first}/{db}{query}{fragment}"
    ))?
    .sentinel(master_name, sentinels);
    // The first sentinel only stood in for the plain URL's host: a Sentinel handle's fixed
    // address is the builder's default, as with `ConfigBuilder::sentinel`.
    b.config.addr = ConfigBuilder::default().config.addr;
    if let Some(password) = password {
        b = b.sentinel_auth(username, password);
    }
    if let Some(tls) = tls {
        b = b.sentinel_tls(tls);
    }
    if let Some(role) = role {
        b = b.sentinel_role(role);
    }
    Ok(b)
}

/// The schemes redkit reads (and the ones it reads as the same: `valkey` for `redis`,
/// `valkeys` for `rediss`, `redis+unix` for `unix`).
const SCHEMES: &str = "redis, rediss, valkey, valkeys, unix, redis+unix, redis+sentinel, \
     rediss+sentinel, redis+cluster, rediss+cluster";

/// Checks the parts the `redis` crate's parser reports only as "invalid client config"
/// (scheme, port, database), naming the part at fault; returns the URL with the alias
/// schemes replaced. Never echoes the password.
fn precheck(url: &str) -> Result<String> {
    if url.trim().is_empty() {
        return Err(Error::config("url", "the URL is empty"));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(Error::config(
            "url",
            format!("no scheme (`redis://...`); redkit reads: {SCHEMES}"),
        ));
    };
    let lower = scheme.to_ascii_lowercase();
    let scheme = match lower.as_str() {
        "redis" | "rediss" | "unix" => lower.clone(),
        "valkey" => "redis".to_owned(),
        "valkeys" => "rediss".to_owned(),
        "redis+unix" => "unix".to_owned(),
        other => {
            return Err(Error::config(
                "url",
                format!("unsupported scheme `{other}` (the URL's scheme); redkit reads: {SCHEMES}"),
            ))
        }
    };
    if scheme != "unix" {
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let port = match hostport.rsplit_once(':') {
            Some((host, port))
                if !host.ends_with(':') && (!host.starts_with('[') || host.ends_with(']')) =>
            {
                Some(port)
            }
            _ => None,
        };
        if let Some(port) = port {
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(Error::config(
                    "url",
                    format!("the port `{port}` is not a number from 1 to 65535 (the URL's port)"),
                ));
            }
        }
        let path = tail.split(['?', '#']).next().unwrap_or("");
        let db = path.trim_start_matches('/');
        if !db.is_empty() && db.parse::<i64>().is_err() {
            return Err(Error::config(
                "url",
                format!(
                    "the database `{db}` is not a number (the URL's path, /0 to /15 by default)"
                ),
            ));
        }
    }
    Ok(format!("{scheme}://{rest}"))
}

pub(super) fn parse_url(url: &str) -> Result<ConfigBuilder> {
    use redis::IntoConnectionInfo;

    for scheme in ["redis", "rediss"] {
        if let Some(rest) = url
            .strip_prefix(scheme)
            .and_then(|r| r.strip_prefix("+cluster://"))
        {
            return parse_cluster_url(scheme, rest);
        }
        if let Some(rest) = url
            .strip_prefix(scheme)
            .and_then(|r| r.strip_prefix("+sentinel://"))
        {
            return parse_sentinel_url(scheme, rest);
        }
    }

    let checked = precheck(url)?;
    let url = checked.as_str();
    // Never echo the URL: it may hold a password.
    let info = url.into_connection_info().map_err(|e| {
        let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
        // The `redis` crate's messages name the problem, never the password.
        Error::config("url", format!("{}{detail}", redact_redis_message(&e)))
    })?;
    let mut b = ConfigBuilder::default();
    let mut tls_insecure = false;
    b.config.addr = match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => Addr::Tcp {
            host: host.clone(),
            port: *port,
        },
        redis::ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            ..
        } => {
            b = b.tls();
            tls_insecure = *insecure;
            Addr::Tcp {
                host: host.clone(),
                port: *port,
            }
        }
        redis::ConnectionAddr::Unix(path) => Addr::Unix(path.clone()),
        _ => return Err(Error::config("url", "unsupported address kind")),
    };
    if tls_insecure {
        b = b.tls_insecure();
    }
    let rs = info.redis_settings();
    b.config.username = rs.username().map(str::to_owned);
    b.config.password = rs.password().map(|p| Secret(p.to_owned()));
    b.config.db = rs.db();
    b.config.protocol = match rs.protocol() {
        redis::ProtocolVersion::RESP3 => Protocol::Resp3,
        _ => Protocol::Resp2,
    };

    let query = url
        .split_once('?')
        .map(|(_, q)| q.split_once('#').map_or(q, |(q, _)| q))
        .unwrap_or("");
    let is_unix = matches!(b.config.addr, Addr::Unix(_));
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v)
            .ok_or_else(|| Error::config("url", format!("parameter `{k}` is not valid UTF-8")))?;
        let duration = |setting: &'static str| {
            parse_duration(&v).ok_or_else(|| {
                Error::config(
                    setting,
                    format!("`{v}` is not a duration such as 250ms or 2s"),
                )
            })
        };
        let number = |setting: &'static str| {
            v.parse::<u32>()
                .map_err(|_| Error::config(setting, format!("`{v}` is not a whole number")))
        };
        match k {
            "protocol" => {}
            "db" | "user" | "pass" if is_unix => {}
            "client_name" => b.config.client_name = Some(v.clone()),
            "key_prefix" => b.config.key_prefix = Some(v.clone()),
            "connect_timeout" => b.config.timeouts.connect = duration("connect_timeout")?,
            "response_timeout" => b.config.timeouts.response = duration("response_timeout")?,
            "write_timeout" => b.config.timeouts.write = duration("write_timeout")?,
            "checkout_timeout" => b.config.timeouts.checkout = duration("checkout_timeout")?,
            "pool_max_size" => b.config.pool.max_size = number("pool_max_size")?,
            "multiplexed" => {
                b.config.multiplex.connections = match v.as_str() {
                    "true" | "yes" | "on" => 1,
                    "false" | "no" | "off" => 0,
                    n => n.parse::<u32>().map_err(|_| {
                        Error::config(
                            "multiplexed",
                            format!("`{n}` is not a number of connections (or true/false)"),
                        )
                    })?,
                }
            }
            "max_value_size" => {
                b.config.max_value_size = v.parse::<u64>().map_err(|_| {
                    Error::config("max_value_size", format!("`{v}` is not a whole number"))
                })?
            }
            "max_reply_size" => {
                b.config.max_reply_size = v.parse::<u64>().map_err(|_| {
                    Error::config("max_reply_size", format!("`{v}` is not a whole number"))
                })?
            }
            "pool_min_idle" => b.config.pool.min_idle = number("pool_min_idle")?,
            "cluster_read_from_replicas" => {
                b.cluster_options.read_from_replicas = match v.as_str() {
                    "true" | "yes" | "on" => true,
                    "false" | "no" | "off" => false,
                    other => {
                        return Err(Error::config(
                            "cluster_read_from_replicas",
                            format!("`{other}` is not true or false"),
                        ))
                    }
                }
            }
            "cluster_max_redirects" => {
                b.cluster_options.max_redirects =
                    number("cluster_max_redirects")? as usize
            }
            "heartbeat_interval" if v == "off" => {
                b.config.heartbeat = HeartbeatConfig {
                    interval: None,
                    ..b.config.heartbeat
                }
            }
            "heartbeat_interval" => {
                b.config.heartbeat.interval = Some(duration("heartbeat_interval")?)
            }
            "heartbeat_timeout" => b.config.heartbeat.timeout = duration("heartbeat_timeout")?,
            other => {
                return Err(Error::config(
                    "url",
                    format!("unknown parameter `{other}` (see the config module docs for the ones redkit reads)"),
                ))
            }
        }
    }
    Ok(b)
}

fn redact_redis_message(e: &redis::RedisError) -> String {
    // `RedisError`'s description is a fixed string chosen by the crate (for example "Redis URL
    // did not parse" or "Invalid database number"); it never includes the input.
    match e.kind() {
        redis::ErrorKind::InvalidClientConfig => e.category().to_owned(),
        _ => "not a valid redis URL".to_owned(),
    }
}
