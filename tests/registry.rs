//! Named connections. The environment is passed explicitly (`Registry::from_vars`) so that
//! no test here depends on the process environment; `tests/registry_env.rs` reads the real
//! one, alone in its own binary.

mod support;

use redis::Commands;
use redkit::{Error, Redis, Registry};
use support::*;

#[test]
fn connections_by_name_from_variables() -> TestResult {
    let server = server();
    let base = format!("redis://{}:{}", server.host(), server.port());
    let registry = Registry::from_vars([
        ("REDIS_URL".to_owned(), format!("{base}/0")),
        (
            "REDIS_URL_CACHE".to_owned(),
            format!("{base}/1?key_prefix=cache:"),
        ),
        // Never connected in this test: listing it must not need the server.
        (
            "REDIS_URL_JOB_QUEUE".to_owned(),
            "redis://worker:s3cret@127.0.0.1:1/2".to_owned(),
        ),
        ("PATH".to_owned(), "/usr/bin".to_owned()),
    ])?;
    assert_eq!(registry.names(), ["cache", "default", "job_queue"]);
    let list = registry.list();
    assert!(list.iter().all(|e| !e.connected));
    let jobs = list
        .iter()
        .find(|e| e.name == "job_queue")
        .expect("job_queue");
    assert!(!jobs.url.contains("s3cret"), "{}", jobs.url);
    assert!(jobs.url.contains("worker"), "{}", jobs.url);
    assert!(!format!("{registry:?}").contains("s3cret"));

    let cache = registry.get("cache")?;
    assert_eq!(cache.key("x"), "cache:x");
    let mut c = cache.clone();
    c.set::<_, _, ()>(cache.key("x"), "in db 1")?;
    let main = registry.get_default()?;
    assert_eq!(main.key("x"), "x");
    let mut m = main.clone();
    assert_eq!(
        m.get::<_, Option<String>>("cache:x")?,
        None,
        "db 0 is another database"
    );
    // Later gets share the handle.
    let again = registry.get("cache")?;
    let mut a = again.clone();
    assert_eq!(a.get::<_, String>("cache:x")?, "in db 1");
    assert!(registry
        .list()
        .iter()
        .any(|e| e.name == "cache" && e.connected));
    assert_eq!(
        registry
            .list()
            .iter()
            .find(|e| e.name == "cache")
            .and_then(|e| e.key_prefix.clone()),
        Some("cache:".to_owned())
    );

    // An unknown name says which ones exist; an unreachable server is an error at get.
    match registry.get("nope") {
        Err(Error::Config { reason, .. }) => assert!(reason.contains("cache"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(registry.get("job_queue").is_err());

    // Add, insert, remove.
    registry.add("other", format!("{base}/3").as_str())?;
    let mine = Redis::connect(builder(&server).key_prefix("t:"))?;
    registry.insert("test", mine);
    assert_eq!(registry.get("test")?.key("k"), "t:k");
    assert!(registry.remove("test"));
    assert!(!registry.remove("test"));
    assert!(registry.get("test").is_err());
    assert!(registry.add("", format!("{base}/0").as_str()).is_err());
    Ok(())
}

#[test]
fn bad_variables_are_typed_errors() {
    let e = Registry::from_vars([("REDIS_URL_X", "not a url")]).unwrap_err();
    assert!(e.to_string().contains("REDIS_URL_X"), "{e}");
    assert!(matches!(e, Error::Config { .. }));
    let secret =
        Registry::from_vars([("REDIS_URL_X", "redis://u:s3cret@host:notaport/0")]).unwrap_err();
    assert!(!secret.to_string().contains("s3cret"), "{secret}");
    assert!(Registry::from_vars([("REDIS_URL_", "redis://127.0.0.1/")]).is_err());
    let empty = Registry::from_vars(Vec::<(String, String)>::new()).expect("empty");
    assert!(empty.names().is_empty());
    assert!(empty.get_default().is_err());
}
