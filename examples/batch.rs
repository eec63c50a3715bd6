//! A CLI batch job: write 200,000 keys in pipelined chunks, scan them back (resuming from the
//! last cursor if the connection drops), then delete them, with progress bars.
//!
//! The connection is picked by name from the environment (`REDIS_URL`, `REDIS_URL_<NAME>`):
//! `cargo run --example batch -- <name>` (default: the default connection). Without
//! `REDIS_URL` it starts a throwaway `redis-server`.
//!
//! ```text
//! cargo run --example batch
//! REDIS_URL_SCRATCH=redis://127.0.0.1/9 cargo run --example batch -- scratch
//! ```

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use redkit::scan::{Bulk, ScanIter};
use redkit::testing::RedisServer;
use redkit::Registry;

const KEYS: u64 = 200_000;

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>8} [{bar:40}] {pos}/{len} ({per_sec}, {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let name = std::env::args().nth(1);
    let (_server, registry) = match std::env::var("REDIS_URL") {
        Ok(_) => (None, Registry::from_env()?),
        Err(_) => {
            let server = RedisServer::start()?;
            let registry = Registry::from_vars([("REDIS_URL", server.url())])?;
            (Some(server), registry)
        }
    };
    for entry in registry.list() {
        eprintln!("connection {}: {}", entry.name, entry.url);
    }
    let redis = match &name {
        Some(n) => registry.get(n)?,
        None => registry.get_default()?,
    };

    let start = Instant::now();
    let write = bar(KEYS, "write");
    Bulk::new(&redis)
        .chunk_size(1000)
        .write((0..KEYS).map(|i| (format!("batch:{i}"), i)), |p| {
            write.set_position(p.done)
        })?;
    write.finish();

    let read = bar(KEYS, "scan");
    let mut keys = Vec::with_capacity(KEYS as usize);
    for key in ScanIter::<String>::keys(&redis)
        .pattern("batch:*")
        .count(1000)
    {
        keys.push(key?);
        read.inc(1);
    }
    read.finish();

    let delete = bar(keys.len() as u64, "delete");
    let removed = Bulk::new(&redis)
        .chunk_size(1000)
        .delete(&keys, |p| delete.set_position(p.done))?;
    delete.finish();
    eprintln!(
        "wrote, scanned and deleted {removed} keys in {:.2?}",
        start.elapsed()
    );
    Ok(())
}
