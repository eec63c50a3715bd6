//! `Registry::from_env` with the real process environment: the only test in this binary,
//! so that setting variables races no other test.

mod support;

use redkit::Registry;
use support::*;

#[test]
fn registry_from_the_environment() -> TestResult {
    let server = server();
    let base = format!("redis://{}:{}", server.host(), server.port());
    std::env::set_var("REDIS_URL", format!("{base}/0"));
    std::env::set_var("REDIS_URL_REPORTS", format!("{base}/4?key_prefix=rep:"));
    let registry = Registry::from_env()?;
    assert!(registry.names().contains(&"reports".to_owned()));
    let reports = registry.get("reports")?;
    assert_eq!(reports.config().db(), 4);
    assert_eq!(reports.key("a"), "rep:a");
    let pong: String = registry.get_default()?.query(&redis::cmd("PING"))?;
    assert_eq!(pong, "PONG");
    Ok(())
}
