//! Shared helpers for the integration tests: every test starts its own `redis-server`
//! (through `redkit::testing`) on a free loopback port.
#![allow(dead_code)]

use std::time::Duration;

use redkit::testing::RedisServer;
use redkit::{Config, ConfigBuilder, Redis};

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// Installs a logger once (set RUST_LOG=redkit=debug to see the library's logs).
pub fn init_logs() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// A fresh server.
pub fn server() -> RedisServer {
    init_logs();
    RedisServer::start().expect("start redis-server")
}

/// A builder aimed at `server`, with short timeouts suited to tests.
pub fn builder(server: &RedisServer) -> ConfigBuilder {
    Config::builder()
        .host(server.host())
        .port(server.port())
        .timeouts(
            redkit::Timeouts::default()
                .connect(Duration::from_secs(2))
                .response(Duration::from_secs(2))
                .checkout(Duration::from_secs(2)),
        )
}

/// A connected handle to `server` with default settings.
pub fn redis(server: &RedisServer) -> Redis {
    Redis::connect(builder(server)).expect("connect")
}

/// A direct admin connection (for CONFIG SET, DEBUG SLEEP, SCRIPT FLUSH, CLIENT LIST...).
pub fn admin(server: &RedisServer) -> redis::Connection {
    server.admin().expect("admin connection")
}
