//! The session store against a real server.

mod support;

use std::time::Duration;

use redis::Commands;
use redkit::session::SessionStore;
use redkit::testing::wait_until;
use redkit::Error;
use support::*;

#[test]
fn create_get_update_destroy() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let store = SessionStore::builder(&redis, "web")
        .ttl(Duration::from_secs(20))
        .build()?;
    let s = store.create("u1", &[("theme", "dark"), ("lang", "en")])?;
    assert_eq!(s.id.len(), 36);
    assert_eq!(
        store.key(&s.id),
        format!("redkit:session:web:s:{{{}}}:{}", &s.id[..4], s.id)
    );
    let got = store.get(&s.id)?.expect("live");
    assert_eq!(got.user, "u1");
    assert_eq!(got.fields, s.fields);
    assert_eq!(got.created, s.created);
    assert!(store.update(&s.id, &[("theme", "light"), ("cart", "2")])?);
    assert!(store.remove_fields(&s.id, &["lang"])?);
    let got = store.get(&s.id)?.expect("live");
    let fields: Vec<(&str, &str)> = got
        .fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(fields, [("cart", "2"), ("theme", "light")]);
    // Reserved names are refused.
    assert!(matches!(
        store.update(&s.id, &[("__user", "mallory")]),
        Err(Error::Config { .. })
    ));
    assert!(store.destroy(&s.id)?);
    assert!(!store.destroy(&s.id)?);
    assert_eq!(store.get(&s.id)?, None);
    // An update never recreates a destroyed session.
    assert!(!store.update(&s.id, &[("x", "1")])?);
    assert!(!store.touch(&s.id)?);
    let mut admin = admin(&server);
    assert!(!admin.exists::<_, bool>(store.key(&s.id))?);
    assert_eq!(store.count("u1")?, 0);
    Ok(())
}

#[test]
fn reading_extends_the_ttl() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let store = SessionStore::builder(&redis, "slide")
        .ttl(Duration::from_secs(60))
        .build()?;
    let s = store.create("u", &[])?;
    let mut admin = admin(&server);
    admin.pexpire::<_, ()>(store.key(&s.id), 5_000)?;
    admin.pexpire::<_, ()>(store.user_key("u"), 5_000)?;
    assert!(store.get(&s.id)?.is_some());
    let ttl: i64 = admin.pttl(store.key(&s.id))?;
    assert!(ttl > 55_000, "{ttl}");
    let index_ttl: i64 = admin.pttl(store.user_key("u"))?;
    assert!(
        index_ttl > 55_000,
        "the index lives as long as the session: {index_ttl}"
    );
    admin.pexpire::<_, ()>(store.key(&s.id), 5_000)?;
    assert!(store.touch(&s.id)?);
    let ttl: i64 = admin.pttl(store.key(&s.id))?;
    assert!(ttl > 55_000, "{ttl}");
    Ok(())
}

#[test]
fn merges_from_two_threads_lose_no_field() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let store = SessionStore::new(&redis, "merge")?;
    let s = store.create("u", &[])?;
    std::thread::scope(|scope| {
        for t in 0..2 {
            let store = &store;
            let id = &s.id;
            scope.spawn(move || {
                for i in 0..200 {
                    let field = format!("t{t}-{i}");
                    assert!(store.update(id, &[(&field, "1")]).expect("update"));
                }
            });
        }
    });
    let got = store.get(&s.id)?.expect("live");
    assert_eq!(got.fields.len(), 400);
    Ok(())
}

#[test]
fn the_user_index_stays_right_after_expiry() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let long = SessionStore::builder(&redis, "idx")
        .ttl(Duration::from_secs(60))
        .build()?;
    let short = SessionStore::builder(&redis, "idx")
        .ttl(Duration::from_millis(300))
        .build()?;
    let keep = long.create("alice", &[])?;
    let gone1 = short.create("alice", &[])?;
    let _gone2 = short.create("alice", &[])?;
    let other = long.create("bob", &[])?;
    assert_eq!(long.count("alice")?, 3);
    wait_until(Duration::from_secs(10), "two sessions to expire", || {
        long.count("alice").expect("count") == 1
    })?;
    assert_eq!(long.sessions_of("alice")?, vec![keep.id.clone()]);
    assert_eq!(long.get(&gone1.id)?, None);
    // The expired ids were pruned from the index itself.
    let mut admin = admin(&server);
    let members: Vec<String> = admin.smembers(long.user_key("alice"))?;
    assert_eq!(members, vec![keep.id.clone()]);
    // Destroy all of alice's sessions: bob's stays.
    long.create("alice", &[])?;
    assert_eq!(long.destroy_user("alice")?, 2);
    assert_eq!(long.count("alice")?, 0);
    assert!(!admin.exists::<_, bool>(long.user_key("alice"))?);
    assert!(long.get(&other.id)?.is_some());
    assert_eq!(long.count("bob")?, 1);
    Ok(())
}

#[cfg(feature = "json")]
#[test]
fn typed_session_data() -> TestResult {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Data {
        cart: Vec<u32>,
        theme: String,
    }
    #[derive(serde::Serialize)]
    struct CartOnly {
        cart: Vec<u32>,
    }
    let server = server();
    let redis = redis(&server);
    let store = SessionStore::new(&redis, "typed")?;
    let s = store.create_json(
        "u",
        &Data {
            cart: vec![1],
            theme: "dark".into(),
        },
    )?;
    assert!(store.update_json(&s.id, &CartOnly { cart: vec![1, 2] })?);
    let data: Data = store.get_json(&s.id)?.expect("live");
    assert_eq!(
        data,
        Data {
            cart: vec![1, 2],
            theme: "dark".into()
        }
    );
    store.update(&s.id, &[("theme", "not json")])?;
    assert!(matches!(
        store.get_json::<Data>(&s.id),
        Err(Error::Decode { .. })
    ));
    assert!(store.create_json("u", &5).is_err());
    Ok(())
}
