//! Tests of `redkit::testing` against a real redis-server.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use redkit::testing::{wait_until, RedisServer, TestingError, TlsMaterial};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn ping(client: &redis::Client) -> redis::RedisResult<String> {
    let mut con = client.get_connection_with_timeout(Duration::from_secs(2))?;
    con.set_read_timeout(Some(Duration::from_secs(2)))?;
    redis::cmd("PING").query(&mut con)
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn plain_server_answers_ping() -> Result {
    let server = RedisServer::start()?;
    assert_eq!(server.host(), "127.0.0.1");
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    assert_eq!(ping(&redis::Client::open(server.url())?)?, "PONG");
    assert!(server.log_tail(50).contains("Ready to accept connections"));
    // Binds loopback only, persists nothing.
    let mut admin = server.admin()?;
    let bind: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("bind")
        .query(&mut admin)?;
    assert_eq!(bind, ["bind", "127.0.0.1"]);
    let save: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query(&mut admin)?;
    assert_eq!(save, ["save", ""]);
    Ok(())
}

#[test]
fn password_server_requires_auth() -> Result {
    let server = RedisServer::builder().password("p@ss word").start()?;
    let err = ping(&redis::Client::open(server.url())?).expect_err("PING without AUTH");
    assert!(err.to_string().contains("NOAUTH"), "{err}");
    assert_eq!(
        ping(&redis::Client::open(server.url_with_password())?)?,
        "PONG"
    );
    assert_eq!(ping(&server.client()?)?, "PONG");
    let mut admin = server.admin()?;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("10mb")
        .exec(&mut admin)?;
    Ok(())
}

#[test]
fn acl_user_line_is_applied() -> Result {
    let server = RedisServer::builder()
        .acl_user("user reader on >secret ~* +get +ping -set")
        .acl_user("writer on >w ~* +@all")
        .start()?;
    let url = format!("redis://reader:secret@127.0.0.1:{}", server.port());
    let mut reader = redis::Client::open(url)?.get_connection()?;
    let value: Option<String> = redis::cmd("GET").arg("k").query(&mut reader)?;
    assert_eq!(value, None);
    let err = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .exec(&mut reader)
        .expect_err("SET");
    assert!(err.to_string().contains("no permissions"), "{err}");
    let url = format!("redis://writer:w@127.0.0.1:{}", server.port());
    let mut writer = redis::Client::open(url)?.get_connection()?;
    redis::cmd("SET").arg("k").arg("v").exec(&mut writer)?;
    Ok(())
}

#[test]
fn tls_server_without_client_auth() -> Result {
    support::require!(tls);
    let tls = TlsMaterial::generate()?;
    let server = RedisServer::builder()
        .tls(tls.clone())
        .tls_auth_clients(false)
        .start()?;
    let url = server.url();
    assert_eq!(url, format!("rediss://127.0.0.1:{}", server.port()));

    let trusting = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(tls.ca_cert_pem().to_vec()),
    };
    assert_eq!(
        ping(&redis::Client::build_with_tls(url.as_str(), trusting)?)?,
        "PONG"
    );
    // `localhost` is in the server certificate's SAN too.
    let localhost = format!("rediss://localhost:{}", server.port());
    assert_eq!(
        ping(&redis::Client::build_with_tls(
            localhost,
            tls.redis_certificates(false)
        )?)?,
        "PONG"
    );

    let wrong_ca = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(tls.other_ca_cert_pem().to_vec()),
    };
    assert!(ping(&redis::Client::build_with_tls(url.as_str(), wrong_ca)?).is_err());
    // The plain port is off.
    let plain = format!("redis://127.0.0.1:{}", server.port());
    assert!(ping(&redis::Client::open(plain)?).is_err());
    Ok(())
}

#[test]
fn tls_server_with_client_auth() -> Result {
    support::require!(tls);
    let tls = TlsMaterial::generate()?;
    let server = RedisServer::builder()
        .tls(tls.clone())
        .tls_auth_clients(true)
        .password("pw")
        .start()?;
    let with_cert = redis::TlsCertificates {
        client_tls: Some(redis::ClientTlsConfig {
            client_cert: tls.client_cert_pem().to_vec(),
            client_key: tls.client_key_pem().to_vec(),
        }),
        root_cert: Some(tls.ca_cert_pem().to_vec()),
    };
    let client = redis::Client::build_with_tls(server.url_with_password(), with_cert)?;
    assert_eq!(ping(&client)?, "PONG");
    let no_cert =
        redis::Client::build_with_tls(server.url_with_password(), tls.redis_certificates(false))?;
    assert!(ping(&no_cert).is_err());
    let mut admin = server.admin()?;
    let _: String = redis::cmd("CLIENT").arg("LIST").query(&mut admin)?;
    Ok(())
}

#[test]
fn wrong_host_certificate_is_rejected() -> Result {
    support::require!(tls);
    let tls = TlsMaterial::generate()?;
    let server = RedisServer::builder()
        .tls(tls.wrong_host_server_material())
        .tls_auth_clients(false)
        .start()?;
    // The launcher's own connections skip the host-name check ...
    let mut admin = server.admin()?;
    let _: String = redis::cmd("PING").query(&mut admin)?;
    // ... but a verifying client refuses the server, for 127.0.0.1 and for localhost.
    assert!(ping(&server.client()?).is_err());
    let localhost = format!("rediss://localhost:{}", server.port());
    assert!(ping(&redis::Client::build_with_tls(
        localhost,
        tls.redis_certificates(false)
    )?)
    .is_err());
    Ok(())
}

#[test]
fn kill_then_restart_on_same_port() -> Result {
    let mut server = RedisServer::builder().password("pw").start()?;
    let port = server.port();
    let first_pid = server.pid().expect("running");
    server.kill()?;
    assert!(!server.is_running());
    assert_eq!(server.pid(), None);
    assert!(!process_exists(first_pid));
    assert!(ping(&server.client()?).is_err());

    server.restart()?;
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), Some(first_pid));
    assert_eq!(ping(&server.client()?)?, "PONG");

    // Restart of a running server stops it gracefully first.
    let second_pid = server.pid().expect("running");
    server.restart()?;
    assert!(!process_exists(second_pid));
    assert_eq!(ping(&server.client()?)?, "PONG");
    Ok(())
}

#[test]
fn restart_waits_for_a_busy_port() -> Result {
    let mut server = RedisServer::start()?;
    let port = server.port();
    server.kill()?;
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port))?;
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(squatter);
    });
    server.restart()?;
    release.join().expect("squatter thread");
    assert_eq!(server.port(), port);
    assert_eq!(ping(&server.client()?)?, "PONG");
    assert!(server.log_tail(100).contains("Address already in use"));
    Ok(())
}

#[test]
fn admin_can_use_debug_and_config() -> Result {
    let server = RedisServer::start()?;
    let mut admin = server.admin()?;
    redis::cmd("DEBUG").arg("SLEEP").arg("0").exec(&mut admin)?;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .exec(&mut admin)?;
    redis::cmd("SCRIPT").arg("FLUSH").exec(&mut admin)?;
    Ok(())
}

#[test]
fn handles_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RedisServer>();
    assert_send_sync::<TlsMaterial>();
    assert_send_sync::<TestingError>();
}

#[test]
fn tls_restart_on_same_port() -> Result {
    support::require!(tls);
    let tls = TlsMaterial::generate()?;
    let mut server = RedisServer::builder().tls(tls).start()?;
    let port = server.port();
    server.kill()?;
    server.restart()?;
    assert_eq!(server.port(), port);
    assert_eq!(ping(&server.client()?)?, "PONG");
    Ok(())
}

#[test]
fn stop_is_graceful_and_idempotent() -> Result {
    let mut server = RedisServer::start()?;
    let pid = server.pid().expect("running");
    let started = Instant::now();
    server.stop()?;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(!process_exists(pid));
    assert!(
        server.log_tail(20).contains("ready to exit, bye bye"),
        "{}",
        server.log_tail(20)
    );
    server.stop()?;
    server.kill()?;
    Ok(())
}

#[test]
fn drop_leaves_no_process_and_no_directory() -> Result {
    let server = RedisServer::start()?;
    let pid = server.pid().expect("running");
    let dir = server.dir().to_path_buf();
    assert!(process_exists(pid));
    assert!(dir.join("redis.conf").exists());
    drop(server);
    assert!(!process_exists(pid));
    assert!(!dir.exists());
    Ok(())
}

#[test]
fn drop_during_panic_kills_the_server() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let server = RedisServer::start().expect("start");
        tx.send(server.pid().expect("running")).expect("send");
        panic!("test panics while the server runs");
    })
    .join();
    assert!(result.is_err());
    let pid = rx.recv().expect("pid");
    assert!(!process_exists(pid));
}

#[test]
fn bad_config_reports_the_log() {
    let err = RedisServer::builder()
        .config("no-such-directive", "1")
        .start()
        .expect_err("bad config");
    let text = err.to_string();
    assert!(matches!(err, TestingError::StartFailed { .. }), "{text}");
    assert!(text.contains("no-such-directive"), "{text}");
}

#[test]
fn tls_material_files_and_pem() -> Result {
    let tls = TlsMaterial::generate()?;
    for path in [
        tls.ca_cert_path(),
        tls.server_cert_path(),
        tls.server_key_path(),
        tls.client_cert_path(),
        tls.client_key_path(),
        tls.other_ca_cert_path(),
    ] {
        assert!(path.is_file(), "{}", path.display());
    }
    assert!(tls
        .client_key_pem()
        .starts_with(b"-----BEGIN PRIVATE KEY-----"));
    assert_ne!(tls.ca_cert_pem(), tls.other_ca_cert_pem());
    let ca = openssl::x509::X509::from_pem(tls.ca_cert_pem())?;
    let server = openssl::x509::X509::from_pem(&std::fs::read(tls.server_cert_path())?)?;
    let client = openssl::x509::X509::from_pem(tls.client_cert_pem())?;
    let other = openssl::x509::X509::from_pem(tls.other_ca_cert_pem())?;
    let ca_key = ca.public_key()?;
    assert!(server.verify(&ca_key)?);
    assert!(client.verify(&ca_key)?);
    let other_key = other.public_key()?;
    assert!(!server.verify(&other_key)?);
    assert_ne!(
        server.serial_number().to_bn()?,
        client.serial_number().to_bn()?
    );

    let dir = tls.ca_cert_path().parent().expect("dir").to_path_buf();
    let clone = tls.clone();
    drop(tls);
    assert!(dir.exists(), "a clone keeps the directory");
    drop(clone);
    assert!(!dir.exists());
    Ok(())
}

#[test]
fn wait_until_polls_and_times_out() {
    let mut n = 0;
    assert!(wait_until(Duration::from_secs(1), "n to reach 3", || {
        n += 1;
        n >= 3
    })
    .is_ok());
    let started = Instant::now();
    let err = wait_until(Duration::from_millis(50), "never", || false).expect_err("timeout");
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert!(err.to_string().contains("never"), "{err}");
}
