//! Pub/Sub that survives a server restart: a chat room with a typed topic, a pattern
//! subscription read with `select!`, a callback handler, keyspace events, and the events a
//! subscriber sends when its connection goes away and comes back.
//!
//! Runs against `REDIS_URL` when it is set; otherwise it starts a throwaway `redis-server`
//! (and, to show the recovery, restarts it halfway).
//!
//! ```text
//! cargo run --example pubsub
//! ```

use redkit::pubsub::Subscriber;
use std::time::Duration;

use crossbeam_channel::{select, tick};
use redkit::pubsub::Topic;
use redkit::testing::RedisServer;
use redkit::{Event, Redis};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct ChatMessage {
    from: String,
    text: String,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let (mut server, redis) = match std::env::var("REDIS_URL") {
        Ok(_) => (None, Redis::from_env()?),
        Err(_) => {
            let server = RedisServer::start()?;
            let redis = Redis::connect(server.url())?;
            (Some(server), redis)
        }
    };
    let events = redis.events();
    let subscriber = Subscriber::new(&redis)?;

    // A typed topic: values in, values out; a bad payload is reported, not dropped.
    let room: Topic<ChatMessage> = Topic::new("chat.lobby");
    let lobby = room.subscribe(&subscriber)?;

    // A pattern subscription, read alongside other channels with select!.
    let metrics = subscriber.psubscribe(["metrics.*"])?;

    // A callback on its own dispatcher thread; a panic in it is caught and counted.
    let audit = subscriber.subscribe(["audit"])?.handle(|msg| {
        println!(
            "  [audit handler] {}",
            String::from_utf8_lossy(msg.payload())
        );
    })?;

    // Keyspace events for session keys (only where CONFIG SET is allowed).
    let sessions = match redis.enable_keyspace_events("A") {
        Ok(_) => Some(subscriber.keyspace("session:*")?),
        Err(e) => {
            println!("keyspace events unavailable here: {e}");
            None
        }
    };

    let publish_round = |round: u32| -> redkit::Result<()> {
        room.publish(
            &redis,
            &ChatMessage {
                from: "ada".into(),
                text: format!("hello #{round}"),
            },
        )?;
        redis.publish("metrics.cpu", format!("{}", 40 + round))?;
        redis.publish("audit", format!("round {round} published"))?;
        redis.query::<()>(
            redis::cmd("SET")
                .arg(format!("session:{round}"))
                .arg("x")
                .arg("EX")
                .arg(60),
        )?;
        Ok(())
    };

    for round in 1..=2 {
        println!("round {round}: publishing");
        publish_round(round)?;
        let ticker = tick(Duration::from_millis(300));
        loop {
            select! {
                recv(lobby.subscription().receiver()) -> msg => {
                    let Ok(msg) = msg else { break };
                    match msg.json::<ChatMessage>() {
                        Ok(chat) => println!("  chat: {} says {:?}", chat.from, chat.text),
                        Err(e) => println!("  chat: undecodable payload ({e})"),
                    }
                }
                recv(metrics.receiver()) -> msg => {
                    let Ok(msg) = msg else { break };
                    println!("  metric {} = {}", msg.channel_str(), String::from_utf8_lossy(msg.payload()));
                }
                recv(ticker) -> _ => break,
            }
        }
        if let Some(sessions) = &sessions {
            while let Ok(e) = sessions.try_recv() {
                println!("  key {} -> {}", e.key_str(), e.event);
            }
        }

        if round == 1 {
            let Some(server) = server.as_mut() else {
                break;
            };
            println!("restarting the server; the subscriber reconnects and resubscribes by itself");
            server.restart()?;
            // Keyspace notification settings do not survive a restart of a throwaway server.
            let _ = redis.enable_keyspace_events("A");
            loop {
                match events.recv_timeout(Duration::from_secs(10))? {
                    Event::Resubscribed {
                        downtime,
                        channels,
                        patterns,
                        ..
                    } => {
                        println!("  resubscribed after {downtime:?} ({channels} channels, {patterns} patterns)");
                        break;
                    }
                    other => println!("  event: {other}"),
                }
            }
        }
    }

    let stats = subscriber.stats();
    println!(
        "subscriber: {} received, {} delivered, {} dropped, {} disconnection(s), {} resubscription(s)",
        stats.received, stats.delivered, stats.dropped, stats.disconnections, stats.resubscriptions
    );
    drop(audit);
    Ok(())
}
