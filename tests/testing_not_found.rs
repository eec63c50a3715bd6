//! `REDKIT_REDIS_SERVER` pointing nowhere gives the typed "not found" error.
//! (Its own test binary: it sets an environment variable.)

use redkit::testing::{RedisServer, TestingError};

#[test]
fn missing_binary_says_how_to_install() {
    std::env::set_var("REDKIT_REDIS_SERVER", "/nonexistent/redis-server");
    let err = RedisServer::start().expect_err("no binary");
    assert!(matches!(err, TestingError::ServerNotFound { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("apt-get install -y redis-server"), "{text}");
    assert!(text.contains("REDKIT_REDIS_SERVER"), "{text}");
}
