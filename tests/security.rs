//! Authentication, ACL permissions, TLS and secret redaction against real servers.

mod support;

use std::time::Duration;

use redis::Commands;
use redkit::testing::{RedisServer, TlsMaterial};
use redkit::{Config, Delivery, Error, ErrorClass, Redis};
use support::*;

fn secured_server() -> RedisServer {
    init_logs();
    RedisServer::builder()
        .password("top-secret-pw")
        .acl_user("user reader on >reader-secret-pw ~* +get +ping +client +hello +info")
        .start()
        .expect("start redis-server")
}

#[test]
fn right_password_works() -> TestResult {
    let server = secured_server();
    let mut r = Redis::connect(builder(&server).password("top-secret-pw"))?;
    r.set::<_, _, ()>("k", "v")?;
    // ACL user with its own password.
    let mut reader = Redis::connect(
        builder(&server)
            .username("reader")
            .password("reader-secret-pw"),
    )?;
    let v: String = reader.get("k")?;
    assert_eq!(v, "v");
    Ok(())
}

#[test]
fn wrong_password_is_a_typed_auth_error_without_the_secret() -> TestResult {
    let server = secured_server();
    let err = Redis::connect(builder(&server).password("wrong-pw-hunter2")).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Auth, "{err:?}");
    assert!(!err.is_retryable());
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("hunter2"), "{shown}");

    let err = Redis::connect(
        builder(&server)
            .username("reader")
            .password("wrong-pw-hunter2"),
    )
    .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Auth, "{err:?}");

    // No password at all: the server says NOAUTH.
    let err = Redis::connect(builder(&server)).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Auth, "{err:?}");

    // A lazy handle reports the same error class on its first command, after the checkout
    // timeout at most, without retrying forever.
    let lazy = Redis::connect_lazy(
        builder(&server)
            .password("wrong-pw-hunter2")
            .timeouts(redkit::Timeouts::default().checkout(Duration::from_millis(500))),
    )?;
    let err = lazy.query::<String>(&redis::cmd("PING")).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Auth, "{err:?}");
    assert!(lazy.stats().pool.connect_failures >= 1);
    Ok(())
}

#[test]
fn missing_acl_permission_is_a_typed_permission_error() -> TestResult {
    let server = secured_server();
    let mut reader = Redis::connect(
        builder(&server)
            .username("reader")
            .password("reader-secret-pw"),
    )?;
    let err = Error::from(reader.set::<_, _, ()>("k", "v").unwrap_err());
    assert_eq!(err.class(), ErrorClass::Permission, "{err:?}");
    assert_eq!(err.delivery(), Delivery::Answered);
    assert!(!err.is_retryable());
    let err = reader
        .query::<()>(redis::cmd("SET").arg("k").arg("v"))
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permission);
    assert_eq!(reader.stats().errors.get(ErrorClass::Permission), 2);
    // The breaker does not count permission errors as outages.
    assert_eq!(reader.breaker_state(), redkit::BreakerState::Closed);
    Ok(())
}

#[test]
fn no_secret_in_any_debug_output() -> TestResult {
    let server = secured_server();
    let tls = TlsMaterial::generate()?;
    let config = builder(&server)
        .username("reader")
        .password("reader-secret-pw")
        .build()?;
    let redis = Redis::connect(config.clone())?;
    let url = format!(
        "redis://reader:reader-secret-pw@127.0.0.1:{}/0",
        server.port()
    );
    let from_url: Config = url.parse()?;
    // A build without TLS refuses TLS settings: the same secrets over plain TCP then.
    let tls_builder = Config::builder()
        .password("reader-secret-pw")
        .tls_client_identity_pem(tls.client_cert_pem(), tls.client_key_pem())
        .tls_ca_pem(tls.ca_cert_pem());
    let refused = tls_builder.clone().build().err();
    let tls_config = match refused {
        None => tls_builder.build()?,
        Some(e) => {
            assert!(!format!("{e} {e:?}").contains(&key_pem_line(&tls)?));
            Config::builder().password("reader-secret-pw").build()?
        }
    };
    let key_body = key_pem_line(&tls)?;
    let con = redis.conn()?;
    let shown = format!(
        "{config:?} {config} {redis:?} {from_url:?} {from_url} {tls_config:?} {tls_config} {:?} {con:?} {:?}",
        config.to_builder(),
        redis.stats(),
    );
    assert!(!shown.contains("reader-secret-pw"), "{shown}");
    assert!(!shown.contains(&key_body), "{shown}");
    assert!(shown.contains("<redacted>"));
    Ok(())
}

#[cfg(any(feature = "tls-native-tls", feature = "tls-rustls"))]
fn tls_server(tls: &TlsMaterial, client_auth: bool) -> RedisServer {
    init_logs();
    RedisServer::builder()
        .tls(tls.clone())
        .tls_auth_clients(client_auth)
        .start()
        .expect("start TLS redis-server")
}

#[cfg(any(feature = "tls-native-tls", feature = "tls-rustls"))]
#[test]
fn tls_with_custom_ca() -> TestResult {
    support::require!(tls);
    let tls = TlsMaterial::generate()?;
    let server = tls_server(&tls, false);
    let mut r = Redis::connect(builder(&server).tls_ca_pem(tls.ca_cert_pem()))?;
    r.set::<_, _, ()>("over-tls", 1)?;
    let v: i64 = r.get("over-tls")?;
    assert_eq!(v, 1);
    // The same from files, and through a rediss:// URL plus the CA.
    let from_files = Redis::connect(
        redkit::ConfigBuilder::from_url(&server.url())?.tls_ca_file(tls.ca_cert_path()),
    )?;
    let v: i64 = from_files.query(redis::cmd("GET").arg("over-tls"))?;
    assert_eq!(v, 1);
    Ok(())
}

#[cfg(any(feature = "tls-native-tls", feature = "tls-rustls"))]
#[test]
fn tls_with_client_certificate() -> TestResult {
    support::require!(tls);
    let tls = TlsMaterial::generate()?;
    let server = tls_server(&tls, true);
    let redis = Redis::connect(
        builder(&server)
            .tls_ca_pem(tls.ca_cert_pem())
            .tls_client_identity_files(tls.client_cert_path(), tls.client_key_path()),
    )?;
    let pong: String = redis.query(&redis::cmd("PING"))?;
    assert_eq!(pong, "PONG");
    // Without a client certificate the server refuses: a typed error, quickly.
    let start = std::time::Instant::now();
    let err = Redis::connect(builder(&server).tls_ca_pem(tls.ca_cert_pem())).unwrap_err();
    assert!(
        matches!(err.class(), ErrorClass::Tls | ErrorClass::Connection),
        "{err:?}"
    );
    assert!(err.is_connection());
    assert!(start.elapsed() < Duration::from_secs(5));
    Ok(())
}

#[cfg(any(feature = "tls-native-tls", feature = "tls-rustls"))]
#[test]
fn tls_wrong_ca_and_wrong_host_are_rejected_with_a_tls_error() -> TestResult {
    support::require!(tls);
    let tls = TlsMaterial::generate()?;
    let server = tls_server(&tls, false);
    let start = std::time::Instant::now();
    let err = Redis::connect(builder(&server).tls_ca_pem(tls.other_ca_cert_pem())).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Tls, "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(5), "no hang");

    // The system roots do not know our CA either.
    let err = Redis::connect(builder(&server).tls()).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Tls, "{err:?}");

    // A certificate for another host name.
    let wrong = tls.wrong_host_server_material();
    let wrong_server = tls_server(&wrong, false);
    let err = Redis::connect(builder(&wrong_server).tls_ca_pem(wrong.ca_cert_pem())).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Tls, "{err:?}");

    // Insecure mode connects anyway (and logs a warning).
    let insecure = Redis::connect(builder(&wrong_server).tls_insecure())?;
    let pong: String = insecure.query(&redis::cmd("PING"))?;
    assert_eq!(pong, "PONG");
    Ok(())
}

#[cfg(any(feature = "tls-native-tls", feature = "tls-rustls"))]
#[test]
fn plain_client_against_tls_server_fails_cleanly() -> TestResult {
    support::require!(tls);
    let tls = TlsMaterial::generate()?;
    let server = tls_server(&tls, false);
    let err = Redis::connect(
        builder(&server).timeouts(redkit::Timeouts::default().connect(Duration::from_millis(500))),
    )
    .unwrap_err();
    assert!(err.is_connection() || err.is_timeout(), "{err:?}");
    Ok(())
}

/// The first line of the client key's body (what must never show).
fn key_pem_line(tls: &TlsMaterial) -> TestResult<String> {
    let key_pem = String::from_utf8(tls.client_key_pem().to_vec())?;
    Ok(key_pem.lines().nth(1).unwrap_or("KEY").to_owned())
}

/// A build without TLS: `rediss://` and `ConfigBuilder::tls()` are typed Config errors that
/// say TLS is not compiled in, before anything is sent.
#[cfg(not(any(feature = "tls-native-tls", feature = "tls-rustls")))]
#[test]
fn without_tls_compiled_in_tls_settings_are_config_errors() -> TestResult {
    let tls = TlsMaterial::generate()?;
    let server = RedisServer::builder().tls(tls.clone()).start()?;
    let attempts = [
        Redis::connect(server.url().as_str()).err(),
        Redis::connect(builder(&server).tls()).err(),
        Redis::connect(builder(&server).tls_ca_pem(tls.ca_cert_pem())).err(),
        Config::from_url("rediss://127.0.0.1:6380/0").err(),
        Config::from_url("redis+sentinel://127.0.0.1/m?sentinel_tls=true").err(),
    ];
    for err in attempts {
        let err = err.ok_or("a TLS setting was accepted without TLS compiled in")?;
        assert_eq!(err.class(), ErrorClass::Config, "{err:?}");
        assert_eq!(err.delivery(), Delivery::NotSent);
        assert!(err.to_string().contains("TLS is not compiled in"), "{err}");
    }
    Ok(())
}
