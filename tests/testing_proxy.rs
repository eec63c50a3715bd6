//! Tests of `redkit::testing::FaultProxy` against a real redis-server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use redkit::testing::{wait_until, FaultProxy, ProxyMode, RedisServer};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Generous: the machine may be loaded.
const PATIENCE: Duration = Duration::from_secs(10);
/// Read timeout of commands expected to time out.
const SHORT: Duration = Duration::from_millis(300);

/// A connection through the proxy with 5 s connect and read timeouts.
fn connect(proxy: &FaultProxy) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(proxy.url())?;
    let con = client.get_connection_with_timeout(Duration::from_secs(5))?;
    con.set_read_timeout(Some(Duration::from_secs(5)))?;
    con.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(con)
}

fn ping(con: &mut redis::Connection) -> redis::RedisResult<String> {
    redis::cmd("PING").query(con)
}

/// How many clients the server itself has (`CLIENT LIST`, counting the admin connection).
fn server_clients(admin: &mut redis::Connection) -> usize {
    redis::cmd("CLIENT")
        .arg("LIST")
        .query::<String>(admin)
        .map_or(usize::MAX, |list| list.lines().count())
}

/// A raw socket to the proxy, for byte-level checks.
fn raw(proxy: &FaultProxy) -> Result<TcpStream> {
    let stream = TcpStream::connect((proxy.host(), proxy.port()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(stream)
}

/// Reads until `n` bytes came, or fails.
fn read_n(stream: &mut TcpStream, n: usize) -> Result<Vec<u8>> {
    let mut out = vec![0; n];
    stream.read_exact(&mut out)?;
    Ok(out)
}

#[test]
fn pass_forwards_both_ways() -> Result {
    let server = RedisServer::start()?;
    let proxy = FaultProxy::start_for(&server)?;
    assert_eq!(proxy.host(), "127.0.0.1");
    assert_eq!(proxy.url(), format!("redis://127.0.0.1:{}/", proxy.port()));
    assert_ne!(proxy.port(), server.port());
    assert_eq!(proxy.mode(), ProxyMode::Pass);
    assert!(format!("{proxy:?}").contains("FaultProxy"));

    let mut con = connect(&proxy)?;
    redis::cmd("SET").arg("k").arg("through").exec(&mut con)?;
    let value: String = redis::cmd("GET").arg("k").query(&mut con)?;
    assert_eq!(value, "through");
    // Larger than one chunk, both ways.
    let big = "x".repeat(200_000);
    redis::cmd("SET").arg("big").arg(&big).exec(&mut con)?;
    let back: String = redis::cmd("GET").arg("big").query(&mut con)?;
    assert_eq!(back, big);
    // It really went to the server.
    let direct: String = redis::cmd("GET").arg("k").query(&mut server.admin()?)?;
    assert_eq!(direct, "through");
    assert_eq!(proxy.connections(), 1);
    assert_eq!(proxy.accepted(), 1);
    Ok(())
}

#[test]
fn delay_adds_latency_until_pass() -> Result {
    let server = RedisServer::start()?;
    let proxy = FaultProxy::start_for(&server)?;
    let mut con = connect(&proxy)?;
    assert_eq!(ping(&mut con)?, "PONG");

    let delay = Duration::from_millis(150);
    proxy.set_mode(ProxyMode::Delay(delay));
    assert_eq!(proxy.mode(), ProxyMode::Delay(delay));
    let started = Instant::now();
    assert_eq!(ping(&mut con)?, "PONG");
    let round_trip = started.elapsed();
    assert!(round_trip >= delay, "round trip {round_trip:?} < {delay:?}");

    // Bytes held by a long delay go at once when the mode goes back to Pass.
    proxy.set_mode(ProxyMode::Delay(Duration::from_secs(60)));
    let mut stream = raw(&proxy)?;
    stream.write_all(b"PING\r\n")?;
    wait_until(PATIENCE, "the raw connection to be proxied", || {
        proxy.connections() == 2
    })?;
    let started = Instant::now();
    proxy.set_mode(ProxyMode::Pass);
    assert_eq!(read_n(&mut stream, 7)?, b"+PONG\r\n");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(ping(&mut con)?, "PONG");
    Ok(())
}

#[test]
fn black_hole_times_out_and_holds_bytes() -> Result {
    let server = RedisServer::start()?;
    let proxy = FaultProxy::start_for(&server)?;
    let mut existing = connect(&proxy)?;
    assert_eq!(ping(&mut existing)?, "PONG");
    let mut stream = raw(&proxy)?;

    proxy.set_mode(ProxyMode::BlackHole);
    assert_eq!(proxy.mode(), ProxyMode::BlackHole);

    // An existing connection: the command times out.
    existing.set_read_timeout(Some(SHORT))?;
    let err = ping(&mut existing).expect_err("PING through a black hole");
    assert!(err.is_timeout(), "not a timeout: {err:?}");

    // A new connection: accepted, then silent (the handshake or the first command times out).
    let client = redis::Client::open(proxy.url())?;
    let err = client
        .get_connection_with_timeout(SHORT)
        .and_then(|mut con| {
            con.set_read_timeout(Some(SHORT))?;
            ping(&mut con)
        })
        .expect_err("a new connection through a black hole");
    assert!(err.is_timeout(), "not a timeout: {err:?}");

    // Bytes are held, not lost.
    stream.write_all(b"PING\r\n")?;
    stream.set_read_timeout(Some(SHORT))?;
    let mut byte = [0_u8; 1];
    let held = stream
        .read(&mut byte)
        .expect_err("a reply through a black hole");
    assert!(
        matches!(
            held.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{held:?}"
    );

    proxy.set_mode(ProxyMode::Pass);
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    assert_eq!(read_n(&mut stream, 7)?, b"+PONG\r\n");
    let mut fresh = connect(&proxy)?;
    assert_eq!(ping(&mut fresh)?, "PONG");
    Ok(())
}

#[test]
fn refuse_resets_new_connections_only() -> Result {
    let server = RedisServer::start()?;
    let proxy = FaultProxy::start_for(&server)?;
    let mut existing = connect(&proxy)?;
    assert_eq!(ping(&mut existing)?, "PONG");

    proxy.set_mode(ProxyMode::Refuse);
    let accepted = proxy.accepted();
    let refused = connect(&proxy).and_then(|mut con| ping(&mut con));
    assert!(refused.is_err(), "a new connection worked: {refused:?}");
    assert!(proxy.accepted() > accepted);
    assert_eq!(ping(&mut existing)?, "PONG");
    assert_eq!(proxy.connections(), 1);

    proxy.set_mode(ProxyMode::Pass);
    let mut fresh = connect(&proxy)?;
    assert_eq!(ping(&mut fresh)?, "PONG");
    Ok(())
}

#[test]
fn cut_resets_both_sides() -> Result {
    let server = RedisServer::start()?;
    let mut admin = server.admin()?;
    let proxy = FaultProxy::start_for(&server)?;
    let mut a = connect(&proxy)?;
    let mut b = connect(&proxy)?;
    assert_eq!(ping(&mut a)?, "PONG");
    assert_eq!(ping(&mut b)?, "PONG");
    assert_eq!(proxy.connections(), 2);
    assert_eq!(server_clients(&mut admin), 3);

    assert_eq!(proxy.cut(), 2);
    assert_eq!(proxy.connections(), 0);
    for con in [&mut a, &mut b] {
        let err = ping(con).expect_err("PING on a cut connection");
        assert!(
            err.is_connection_dropped() || err.is_io_error(),
            "not a connection error: {err:?}"
        );
    }
    // The server side was reset too: only the admin connection is left.
    wait_until(PATIENCE, "the server to drop the cut connections", || {
        server_clients(&mut admin) == 1
    })?;

    // The mode is unchanged, new connections work.
    assert_eq!(proxy.mode(), ProxyMode::Pass);
    let mut fresh = connect(&proxy)?;
    assert_eq!(ping(&mut fresh)?, "PONG");
    assert_eq!(proxy.cut(), 1);
    assert_eq!(proxy.cut(), 0);
    Ok(())
}

#[test]
fn cut_reaches_black_holed_and_delayed_connections() -> Result {
    let server = RedisServer::start()?;
    let proxy = FaultProxy::start_for(&server)?;
    let mut con = connect(&proxy)?;
    assert_eq!(ping(&mut con)?, "PONG");
    proxy.set_mode(ProxyMode::Delay(Duration::from_secs(60)));
    let mut stream = raw(&proxy)?;
    stream.write_all(b"PING\r\n")?;
    wait_until(PATIENCE, "two proxied connections", || {
        proxy.connections() == 2
    })?;
    proxy.set_mode(ProxyMode::BlackHole);

    let started = Instant::now();
    assert_eq!(proxy.cut(), 2);
    assert!(started.elapsed() < Duration::from_secs(1));
    // The held PING is dropped with the connection: the client gets a reset, no reply.
    let mut buf = [0_u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("got {:?} from a cut connection", &buf[..n]),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e:?}"),
    }
    Ok(())
}

#[test]
fn connections_are_counted_and_end_with_either_side() -> Result {
    let server = RedisServer::start()?;
    let mut admin = server.admin()?;
    let proxy = FaultProxy::start_for(&server)?;
    let mut cons = Vec::new();
    for _ in 0..3 {
        let mut con = connect(&proxy)?;
        assert_eq!(ping(&mut con)?, "PONG");
        cons.push(con);
    }
    assert_eq!(proxy.connections(), 3);
    assert_eq!(proxy.accepted(), 3);

    // Clients going away.
    cons.truncate(1);
    wait_until(PATIENCE, "two connections to end", || {
        proxy.connections() == 1
    })?;

    // The server closing one: the proxy closes the client side too.
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut cons[0])?;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query(&mut admin)?;
    assert_eq!(killed, 1);
    wait_until(PATIENCE, "the killed connection to end", || {
        proxy.connections() == 0
    })?;
    let err = ping(&mut cons[0]).expect_err("PING after the server closed");
    assert!(
        err.is_connection_dropped() || err.is_io_error(),
        "not a connection error: {err:?}"
    );
    assert_eq!(proxy.accepted(), 3);
    Ok(())
}

#[test]
fn unreachable_target_closes_clients() -> Result {
    let server = RedisServer::start()?;
    let proxy = FaultProxy::start_for(&server)?;
    drop(server);
    let failed = connect(&proxy).and_then(|mut con| ping(&mut con));
    assert!(failed.is_err(), "worked without a server: {failed:?}");
    assert_eq!(proxy.accepted(), 1);
    wait_until(PATIENCE, "the failed connection to end", || {
        proxy.connections() == 0
    })?;
    Ok(())
}

#[test]
fn drop_closes_everything_promptly() -> Result {
    let server = RedisServer::start()?;
    let proxy = FaultProxy::start_for(&server)?;
    let port = proxy.port();
    let mut passing = raw(&proxy)?;
    passing.write_all(b"PING\r\n")?;
    assert_eq!(read_n(&mut passing, 7)?, b"+PONG\r\n");
    proxy.set_mode(ProxyMode::BlackHole);
    let mut held = raw(&proxy)?;
    held.write_all(b"PING\r\n")?;
    wait_until(PATIENCE, "two proxied connections", || {
        proxy.connections() == 2
    })?;

    let started = Instant::now();
    drop(proxy);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "drop took {took:?}");

    // Both connections are closed (EOF or reset, not a timeout).
    for stream in [&mut passing, &mut held] {
        let mut buf = [0_u8; 16];
        match stream.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("got {:?} after the drop", &buf[..n]),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e:?}"),
        }
    }
    // Nothing listens any more.
    let err = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))
        .expect_err("the proxy's port still accepts");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // The server itself was untouched.
    assert_eq!(
        redis::cmd("PING").query::<String>(&mut server.admin()?)?,
        "PONG"
    );
    Ok(())
}
