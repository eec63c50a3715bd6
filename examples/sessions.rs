//! Web sessions: sign in on two devices, merge fields from two request threads at once,
//! list a user's devices through the index, sign out everywhere.
//!
//! Runs against `REDIS_URL` when it is set; otherwise it starts a throwaway `redis-server`.
//!
//! ```text
//! cargo run --example sessions
//! ```

use std::time::Duration;

use redkit::session::SessionStore;
use redkit::testing::RedisServer;
use redkit::Redis;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let (_server, redis) = match std::env::var("REDIS_URL") {
        Ok(_) => (None, Redis::from_env()?),
        Err(_) => {
            let server = RedisServer::start()?;
            let redis = Redis::connect(server.url())?;
            (Some(server), redis)
        }
    };
    let sessions = SessionStore::builder(&redis, "example-web")
        .ttl(Duration::from_secs(30 * 60))
        .build()?;
    sessions.destroy_user("ada")?;

    let laptop = sessions.create("ada", &[("device", "laptop"), ("theme", "dark")])?;
    let phone = sessions.create("ada", &[("device", "phone")])?;
    println!("signed in twice: {} and {}", laptop.id, phone.id);

    // Two requests of one session write different fields at the same time: nothing is lost.
    std::thread::scope(|s| {
        s.spawn(|| {
            sessions
                .update(&laptop.id, &[("cart", "3 items")])
                .expect("update")
        });
        s.spawn(|| {
            sessions
                .update(&laptop.id, &[("last_page", "/checkout")])
                .expect("update")
        });
    });
    let current = sessions.get(&laptop.id)?.expect("live");
    println!(
        "laptop session after two concurrent updates: {:?}",
        current.fields
    );

    println!(
        "ada has {} sessions: {:?}",
        sessions.count("ada")?,
        sessions.sessions_of("ada")?
    );
    println!(
        "signed out everywhere: {} sessions destroyed",
        sessions.destroy_user("ada")?
    );
    assert!(sessions.get(&phone.id)?.is_none());
    Ok(())
}
