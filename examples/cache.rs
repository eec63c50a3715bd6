//! A read-through cache in front of a slow "database": 16 threads ask for the same cold
//! product at once and the loader runs once; a missing product is cached as "not found";
//! a category tag invalidates a group; hit ratio and stampedes avoided at the end.
//!
//! Runs against `REDIS_URL` when it is set; otherwise it starts a throwaway `redis-server`.
//!
//! ```text
//! cargo run --example cache
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redkit::cache::{Cache, Json};
use redkit::testing::RedisServer;
use redkit::Redis;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Product {
    id: u32,
    name: String,
    price_cents: u64,
}

static DB_QUERIES: AtomicUsize = AtomicUsize::new(0);

/// The slow source of truth.
fn query_database(id: u32) -> Result<Option<Product>, redkit::Error> {
    DB_QUERIES.fetch_add(1, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(200));
    Ok((id < 100).then(|| Product {
        id,
        name: format!("product {id}"),
        price_cents: 100 * u64::from(id) + 99,
    }))
}

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
    let cache = Cache::builder(&redis, "example-products")
        .default_ttl(Duration::from_secs(60))
        .negative_ttl(Duration::from_secs(10))
        .early_refresh(1.0)
        .build()?;
    cache.invalidate_pattern("*")?;

    // A stampede on one cold key: one database query.
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                let p: Option<Json<Product>> = cache
                    .get_or_set_optional("product:7", None, || {
                        Ok::<_, redkit::Error>(query_database(7)?.map(Json))
                    })
                    .expect("get_or_set");
                assert_eq!(p.map(|Json(p)| p.id), Some(7));
            });
        }
    });
    println!(
        "16 threads, one cold key: {} database query in {:?}",
        DB_QUERIES.load(Ordering::SeqCst),
        start.elapsed()
    );

    // "Not found" is cached too.
    for _ in 0..3 {
        let missing: Option<Json<Product>> =
            cache.get_or_set_optional("product:404", None, || {
                Ok::<_, redkit::Error>(query_database(404)?.map(Json))
            })?;
        assert!(missing.is_none());
    }
    println!(
        "3 reads of a missing product: {} database queries in all",
        DB_QUERIES.load(Ordering::SeqCst)
    );

    // Tags: a category, invalidated at once.
    for id in 10..20 {
        let p = query_database(id)?.expect("exists");
        cache.set_tagged(
            &format!("product:{id}"),
            &Json(p),
            None,
            &["category:garden"],
        )?;
    }
    let keys: Vec<String> = (10..20).map(|id| format!("product:{id}")).collect();
    let cached: Vec<Option<Json<Product>>> = cache.mget(&keys)?;
    println!(
        "mget of 10 tagged products: {} hits",
        cached.iter().flatten().count()
    );
    println!(
        "invalidate_tag(category:garden) removed {} keys",
        cache.invalidate_tag("category:garden")?
    );

    let s = cache.stats();
    println!(
        "stats: {} hits, {} misses (hit ratio {:.2}), {} loads, {} stampedes avoided",
        s.hits,
        s.misses,
        s.hit_ratio(),
        s.loads,
        s.stampedes_avoided
    );
    Ok(())
}
