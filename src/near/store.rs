//! The in-process level: a sharded map bounded by entries and bytes, with a TTL cap, CLOCK
//! (second chance) eviction, and the bookkeeping that keeps it coherent:
//!
//! - **Epochs.** Every flush (a flush notice from the server, a lost connection) bumps the
//!   store's epoch and then clears every shard (or, with stale-if-error, marks its contents
//!   stale). A read that began in an older epoch is never stored.
//! - **Reads in flight.** A read registers its Redis key before it is sent; an invalidation
//!   of that key arriving while the read is in flight bumps the key's flight generation, and
//!   the read's reply is then not stored (the classic race).
//! - **Freshness.** Hits are served only before `valid_until`, which the tracking threads
//!   move forward each time every connection the cache depends on has been heard from.
//!
//! Pure logic, no I/O: unit tests below.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use parking_lot::Mutex;
use redis::Value;

/// What one entry costs beyond its key and value bytes: its slot (56 bytes, and the slab's
/// spare room), its place in the table (5 bytes a bucket, the table 44-88% full), its one
/// allocation's header and rounding (about 24 bytes), and the allocator's fragmentation under
/// eviction. Measured resident memory per entry: see `tests/near_memory.rs` and
/// `benches/nearcache.rs`.
pub(crate) const ENTRY_OVERHEAD: usize = 112;
/// The extra cost of an entry keyed by a whole command (its place in the per-key index).
const INDEX_OVERHEAD: usize = 48;

/// A cached reply, kept compact: most replies are a bulk string or nil.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Free,
    Nil,
    /// A bulk string, kept after the key in the slot's bytes.
    Bytes,
    /// Any other reply, kept in `other`.
    Other,
}

/// About how many bytes a reply holds in memory.
fn value_size(v: &Value) -> usize {
    const NODE: usize = std::mem::size_of::<Value>();
    NODE + match v {
        Value::BulkString(b) | Value::BigNumber(b) => b.len(),
        Value::SimpleString(s) => s.len(),
        Value::VerbatimString { text, .. } => text.len(),
        Value::Array(a) | Value::Set(a) | Value::Push { data: a, .. } => {
            a.iter().map(value_size).sum()
        }
        Value::Map(m) => m.iter().map(|(k, v)| value_size(k) + value_size(v)).sum(),
        Value::Attribute { data, attributes } => {
            value_size(data)
                + attributes
                    .iter()
                    .map(|(k, v)| value_size(k) + value_size(v))
                    .sum::<usize>()
        }
        _ => 0,
    }
}

/// The bounds of the store.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_entries: usize,
    pub(crate) max_bytes: usize,
    pub(crate) ttl: Duration,
    /// Stale-if-error: how long after the last confirmation a value may still be served
    /// when Redis fails (`None`: off, contents are cleared on a loss).
    pub(crate) stale_for: Option<Duration>,
}

/// Why the store is flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlushKind {
    /// The server said every key may have changed (a null invalidation: `FLUSHALL`,
    /// `FLUSHDB`), or the user cleared it: nothing is kept, not even for stale-if-error.
    Server,
    /// A connection the cache depends on was lost: invalidations may have been missed.
    /// With stale-if-error the contents are kept as stale values.
    Lost,
}

/// The store's counters (see `NearStats` for their meaning).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) stored: AtomicU64,
    pub(crate) invalidations: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) expirations: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) races: AtomicU64,
    pub(crate) stale_served: AtomicU64,
    pub(crate) too_large: AtomicU64,
    pub(crate) entries: AtomicUsize,
    pub(crate) bytes: AtomicUsize,
}

/// One entry: its key and (for a bulk string) its value in one allocation.
struct Slot {
    /// The map key (a Redis key for a `GET`, or a whole packed command), then the value's
    /// bytes for [`Kind::Bytes`].
    data: Box<[u8]>,
    /// The reply, for [`Kind::Other`].
    other: Option<Box<Value>>,
    /// When it expires (nanoseconds after the store's base).
    expires: u64,
    /// The map key's hash.
    hash: u64,
    size: u32,
    key_len: u32,
    kind: Kind,
    /// Keyed by a packed command (and listed in `index` under its Redis key).
    command: bool,
    referenced: bool,
}

impl Slot {
    fn free() -> Slot {
        Slot {
            data: Box::default(),
            other: None,
            expires: 0,
            hash: 0,
            size: 0,
            key_len: 0,
            kind: Kind::Free,
            command: false,
            referenced: false,
        }
    }

    fn key(&self) -> &[u8] {
        self.data.get(..self.key_len as usize).unwrap_or_default()
    }

    fn value(&self) -> Value {
        match self.kind {
            Kind::Free | Kind::Nil => Value::Nil,
            Kind::Bytes => Value::BulkString(
                self.data
                    .get(self.key_len as usize..)
                    .unwrap_or_default()
                    .to_vec(),
            ),
            Kind::Other => self.other.as_deref().cloned().unwrap_or(Value::Nil),
        }
    }
}

/// A read in flight for Redis keys of one hash (two keys sharing a hash share it: an
/// invalidation of one spoils the other's read, which is only a missed store).
#[derive(Debug, Clone, Copy)]
struct Flight {
    count: u32,
    gen: u64,
}

struct Shard {
    /// The epoch this shard's contents belong to.
    epoch: u64,
    /// `Some(since)`: the contents are stale (a connection was lost), known current until
    /// `since`; kept only for stale-if-error.
    stale_since: Option<u64>,
    /// Slot numbers, by their map key.
    table: HashTable<u32>,
    /// Redis key -> the slots of packed commands cached for it (replies other than `GET`'s).
    index: HashMap<Box<[u8]>, Vec<u32>>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    hand: usize,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
    /// Reads in flight, by the hash of their Redis key.
    flights: HashMap<u64, Flight>,
    next_gen: u64,
}

/// The outcome of an insert.
enum Insert {
    Stored,
    TooLarge,
}

impl Shard {
    fn new(max_entries: usize, max_bytes: usize) -> Shard {
        Shard {
            epoch: 1,
            stale_since: None,
            table: HashTable::new(),
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            hand: 0,
            bytes: 0,
            max_entries,
            max_bytes,
            flights: HashMap::new(),
            next_gen: 1,
        }
    }

    fn entries(&self) -> usize {
        self.table.len()
    }

    /// Drops every entry (reads in flight stay registered).
    fn clear(&mut self, counters: &Counters) {
        counters.entries.fetch_sub(self.table.len(), Relaxed);
        counters.bytes.fetch_sub(self.bytes, Relaxed);
        self.table = HashTable::new();
        self.index = HashMap::new();
        self.slots = Vec::new();
        self.free = Vec::new();
        self.hand = 0;
        self.bytes = 0;
        self.stale_since = None;
    }

    fn find(&self, hash: u64, key: &[u8]) -> Option<usize> {
        let slots = &self.slots;
        self.table
            .find(hash, |&i| {
                slots
                    .get(i as usize)
                    .is_some_and(|s| s.kind != Kind::Free && s.key() == key)
            })
            .map(|&i| i as usize)
    }

    /// Removes the slot `i` (from the table, the index, the byte count).
    fn remove_slot(&mut self, i: usize, counters: &Counters) {
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        if slot.kind == Kind::Free {
            return;
        }
        let slot = std::mem::replace(slot, Slot::free());
        if let Ok(entry) = self.table.find_entry(slot.hash, |&j| j as usize == i) {
            entry.remove();
        }
        let size = slot.size as usize;
        self.bytes = self.bytes.saturating_sub(size);
        counters.entries.fetch_sub(1, Relaxed);
        counters.bytes.fetch_sub(size, Relaxed);
        self.free.push(i as u32);
        if slot.command {
            if let Some(rkey) = command_key(slot.key()) {
                if let Some(list) = self.index.get_mut(rkey) {
                    list.retain(|&j| j as usize != i);
                    if list.is_empty() {
                        self.index.remove(rkey);
                    }
                }
            }
        }
    }

    /// Removes everything cached for the Redis key `rkey` (its hash `hash`).
    fn remove_all_of(&mut self, hash: u64, rkey: &[u8], counters: &Counters) {
        if let Some(i) = self.find(hash, rkey) {
            self.remove_slot(i, counters);
        }
        if let Some(list) = self.index.remove(rkey) {
            for i in list {
                self.remove_slot(i as usize, counters);
            }
        }
    }

    /// Makes room for `size` more bytes and one more entry, CLOCK style: expired entries go
    /// first, a referenced entry gets a second chance. At most two sweeps.
    fn make_room(&mut self, size: usize, now: u64, counters: &Counters) {
        let mut budget = self.slots.len() * 2 + 1;
        while (self.entries() >= self.max_entries || self.bytes + size > self.max_bytes)
            && self.entries() > 0
            && budget > 0
        {
            budget -= 1;
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let i = self.hand;
            self.hand += 1;
            let Some(slot) = self.slots.get_mut(i) else {
                continue;
            };
            if slot.kind == Kind::Free {
                continue;
            }
            if slot.expires <= now {
                self.remove_slot(i, counters);
                counters.expirations.fetch_add(1, Relaxed);
            } else if slot.referenced {
                slot.referenced = false;
            } else {
                self.remove_slot(i, counters);
                counters.evictions.fetch_add(1, Relaxed);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        hash: u64,
        key: &[u8],
        command: bool,
        value: &Value,
        expires: u64,
        now: u64,
        hasher: &RandomState,
        counters: &Counters,
    ) -> Insert {
        let (kind, bytes, other): (Kind, &[u8], Option<Box<Value>>) = match value {
            Value::Nil => (Kind::Nil, &[], None),
            Value::BulkString(b) => (Kind::Bytes, b, None),
            v => (Kind::Other, &[], Some(Box::new(v.clone()))),
        };
        let value_len = match &other {
            Some(v) => value_size(v),
            None => bytes.len(),
        };
        let extra = if command { INDEX_OVERHEAD } else { 0 };
        let size = key.len() + value_len + ENTRY_OVERHEAD + extra;
        if let Some(i) = self.find(hash, key) {
            self.remove_slot(i, counters);
        }
        if size > self.max_bytes || self.max_entries == 0 || size > u32::MAX as usize {
            // A value that can never fit.
            return Insert::TooLarge;
        }
        self.make_room(size, now, counters);
        let mut data = Vec::with_capacity(key.len() + bytes.len());
        data.extend_from_slice(key);
        data.extend_from_slice(bytes);
        let slot = Slot {
            data: data.into_boxed_slice(),
            other,
            expires,
            hash,
            size: size as u32,
            key_len: key.len() as u32,
            kind,
            command,
            referenced: false,
        };
        let i = match self.free.pop() {
            Some(i) => {
                if let Some(s) = self.slots.get_mut(i as usize) {
                    *s = slot;
                }
                i
            }
            None => {
                if self.slots.len() == self.slots.capacity() {
                    // Grow by an eighth, not twice over: the bound counts what is used.
                    self.slots.reserve_exact((self.slots.len() / 8).max(16));
                }
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        if command {
            if let Some(rkey) = command_key(key) {
                self.index.entry(Box::from(rkey)).or_default().push(i);
            }
        }
        let slots = &self.slots;
        self.table.insert_unique(hash, i, |&j| {
            slots
                .get(j as usize)
                .map_or_else(|| hasher.hash_one(b""), |s| s.hash)
        });
        self.bytes += size;
        counters.entries.fetch_add(1, Relaxed);
        counters.bytes.fetch_add(size, Relaxed);
        Insert::Stored
    }
}

/// The Redis key of a cached packed command (its first argument after the name).
fn command_key(packed: &[u8]) -> Option<&[u8]> {
    let (args, _) = crate::util::resp::split_command(packed)?;
    args.get(1).copied()
}

/// Where a cached reply is kept: under its Redis key (a `GET`) or under the whole command.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Place<'a> {
    /// `GET key`: kept under the key.
    Get,
    /// Another read of the key: kept under the packed command.
    Command(&'a [u8]),
}

/// A registered read: complete it with [`Store::complete`] or drop it (then nothing is
/// stored).
#[derive(Debug)]
pub(crate) struct Ticket<'a> {
    store: &'a Store,
    /// The hash of the Redis key.
    hash: u64,
    shard: usize,
    epoch: u64,
    gen: u64,
    done: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut shard = self.store.shards[self.shard].lock();
            release(&mut shard, self.hash);
        }
    }
}

/// One read ends: forget its flight when it was the last one in flight.
fn release(shard: &mut Shard, hash: u64) -> Option<Flight> {
    let flight = shard.flights.get_mut(&hash)?;
    let seen = *flight;
    flight.count = flight.count.saturating_sub(1);
    if flight.count == 0 {
        shard.flights.remove(&hash);
    }
    Some(seen)
}

/// The in-process level.
pub(crate) struct Store {
    shards: Box<[Mutex<Shard>]>,
    mask: usize,
    hasher: RandomState,
    base: Instant,
    limits: Limits,
    epoch: AtomicU64,
    /// Hits are served only before this moment (nanoseconds after `base`).
    valid_until: AtomicU64,
    /// The last moment every connection was confirmed (nanoseconds after `base`).
    confirmed: AtomicU64,
    /// Held by a flush while it goes over the shards.
    flushing: Mutex<()>,
    pub(crate) counters: Counters,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("shards", &self.shards.len())
            .field("limits", &self.limits)
            .field("epoch", &self.epoch.load(Relaxed))
            .finish_non_exhaustive()
    }
}

/// How many shards for these limits: up to 64, each with room for at least 256 entries and
/// 64 KiB (fewer for small caches, at least one).
fn shard_count(limits: &Limits) -> usize {
    let by_entries = (limits.max_entries / 256).max(1);
    let by_bytes = (limits.max_bytes / 65_536).max(1);
    let n = by_entries.min(by_bytes).min(64);
    // The largest power of two not above n.
    1 << (usize::BITS - 1 - n.leading_zeros())
}

impl Store {
    pub(crate) fn new(limits: Limits) -> Store {
        let n = shard_count(&limits);
        let per_entries = limits.max_entries / n;
        let per_bytes = limits.max_bytes / n;
        let shards = (0..n)
            .map(|_| Mutex::new(Shard::new(per_entries, per_bytes)))
            .collect();
        Store {
            shards,
            mask: n - 1,
            hasher: RandomState::new(),
            base: Instant::now(),
            limits,
            epoch: AtomicU64::new(1),
            valid_until: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            flushing: Mutex::new(()),
            counters: Counters::default(),
        }
    }

    /// Nanoseconds after the store's base.
    pub(crate) fn now(&self) -> u64 {
        self.at(Instant::now())
    }

    /// `t` in nanoseconds after the store's base (0 before it).
    pub(crate) fn at(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    fn hash(&self, bytes: &[u8]) -> u64 {
        self.hasher.hash_one(bytes)
    }

    fn shard_of(&self, hash: u64) -> usize {
        // The table uses the hash's top bits (control bytes) and low bits (buckets): the
        // shard takes bits from the middle.
        ((hash >> 20) as usize) & self.mask
    }

    /// The map key of a place, and its hash (`rhash`: the Redis key's).
    fn map_key<'k>(&self, rkey: &'k [u8], rhash: u64, place: Place<'k>) -> (&'k [u8], u64, bool) {
        match place {
            Place::Get => (rkey, rhash, false),
            Place::Command(packed) => (packed, self.hash(packed), true),
        }
    }

    /// The current epoch.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(SeqCst)
    }

    /// Every connection was heard from at `at` (nanoseconds): hits may be served until
    /// `at + silence`.
    pub(crate) fn confirm(&self, at: u64, silence: Duration) {
        let silence = u64::try_from(silence.as_nanos()).unwrap_or(u64::MAX);
        self.confirmed.store(at, SeqCst);
        self.valid_until.store(at.saturating_add(silence), SeqCst);
    }

    /// No hit is served until the next confirmation.
    pub(crate) fn suspend(&self) {
        self.valid_until.store(0, SeqCst);
    }

    /// A cached reply for `rkey`, counted as a hit, or `None` (counted as a miss when
    /// `count_miss`).
    pub(crate) fn get(&self, rkey: &[u8], place: Place<'_>, count_miss: bool) -> Option<Value> {
        let now = self.now();
        let found = if now < self.valid_until.load(SeqCst) {
            let rhash = self.hash(rkey);
            let (key, hash, _) = self.map_key(rkey, rhash, place);
            let epoch = self.epoch();
            let mut shard = self.shards[self.shard_of(rhash)].lock();
            if shard.epoch == epoch && shard.stale_since.is_none() {
                match shard.find(hash, key) {
                    Some(i) => match shard.slots.get_mut(i) {
                        Some(s) if s.expires > now => {
                            s.referenced = true;
                            Some(s.value())
                        }
                        Some(_) => {
                            shard.remove_slot(i, &self.counters);
                            self.counters.expirations.fetch_add(1, Relaxed);
                            None
                        }
                        None => None,
                    },
                    None => None,
                }
            } else {
                None
            }
        } else {
            None
        };
        match &found {
            Some(_) => self.counters.hits.fetch_add(1, Relaxed),
            None if count_miss => self.counters.misses.fetch_add(1, Relaxed),
            None => 0,
        };
        found
    }

    /// A stale value of `rkey` for stale-if-error: kept from before a lost connection, known
    /// current at most the configured staleness ago, and not past its TTL cap.
    pub(crate) fn get_stale(&self, rkey: &[u8], place: Place<'_>) -> Option<Value> {
        let max = self.limits.stale_for?;
        let max = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        let rhash = self.hash(rkey);
        let (key, hash, _) = self.map_key(rkey, rhash, place);
        let now = self.now();
        let shard = self.shards[self.shard_of(rhash)].lock();
        let since = match shard.stale_since {
            Some(since) => since,
            // Live contents while Redis fails: current as of the last confirmation.
            None if shard.epoch == self.epoch() => self.confirmed.load(SeqCst),
            None => return None,
        };
        if now.saturating_sub(since) > max {
            return None;
        }
        let value = shard
            .find(hash, key)
            .and_then(|i| shard.slots.get(i))
            .filter(|s| s.expires > now)
            .map(Slot::value)?;
        self.counters.stale_served.fetch_add(1, Relaxed);
        Some(value)
    }

    /// Registers a read of `rkey` about to be sent.
    pub(crate) fn begin(&self, rkey: &[u8]) -> Ticket<'_> {
        let hash = self.hash(rkey);
        let shard_i = self.shard_of(hash);
        let epoch = self.epoch();
        let mut shard = self.shards[shard_i].lock();
        let next = shard.next_gen;
        let flight = shard.flights.entry(hash).or_insert(Flight {
            count: 0,
            gen: next,
        });
        flight.count += 1;
        let gen = flight.gen;
        Ticket {
            store: self,
            hash,
            shard: shard_i,
            epoch,
            gen,
            done: false,
        }
    }

    /// Stores the reply of a registered read of `rkey`, unless the key was invalidated (or
    /// the store flushed) since the read was registered. Whether it was stored.
    pub(crate) fn complete(
        &self,
        mut ticket: Ticket<'_>,
        rkey: &[u8],
        place: Place<'_>,
        value: &Value,
    ) -> bool {
        ticket.done = true;
        let (key, hash, command) = self.map_key(rkey, ticket.hash, place);
        let now = self.now();
        let ttl = u64::try_from(self.limits.ttl.as_nanos()).unwrap_or(u64::MAX);
        let mut shard = self.shards[ticket.shard].lock();
        let seen = release(&mut shard, ticket.hash);
        let epoch = self.epoch();
        let current = seen.is_some_and(|f| f.gen == ticket.gen)
            && ticket.epoch == epoch
            && shard.epoch == epoch;
        if !current {
            self.counters.races.fetch_add(1, Relaxed);
            return false;
        }
        if shard.stale_since.is_some() {
            shard.clear(&self.counters);
        }
        let stored = shard.insert(
            hash,
            key,
            command,
            value,
            now.saturating_add(ttl),
            now,
            &self.hasher,
            &self.counters,
        );
        match stored {
            Insert::Stored => {
                self.counters.stored.fetch_add(1, Relaxed);
                true
            }
            Insert::TooLarge => {
                self.counters.too_large.fetch_add(1, Relaxed);
                false
            }
        }
    }

    /// The server invalidated `rkey` (`server`), or this process wrote it: removes what is
    /// cached for it and spoils the reads of it in flight.
    pub(crate) fn invalidate(&self, rkey: &[u8], server: bool) {
        let hash = self.hash(rkey);
        let mut shard = self.shards[self.shard_of(hash)].lock();
        shard.next_gen += 1;
        let gen = shard.next_gen;
        if let Some(f) = shard.flights.get_mut(&hash) {
            f.gen = gen;
        }
        // Stale contents of this key are known to have changed too.
        shard.remove_all_of(hash, rkey, &self.counters);
        drop(shard);
        if server {
            self.counters.invalidations.fetch_add(1, Relaxed);
        }
    }

    /// Bumps the epoch (nothing cached so far is served again, no read in flight is stored),
    /// then clears every shard, or with stale-if-error and a lost connection keeps the
    /// contents as stale values.
    pub(crate) fn flush(&self, kind: FlushKind) {
        let _one_at_a_time = self.flushing.lock();
        let epoch = self.epoch.fetch_add(1, SeqCst) + 1;
        let keep = kind == FlushKind::Lost && self.limits.stale_for.is_some();
        let since = self.confirmed.load(SeqCst);
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            if keep {
                if shard.stale_since.is_none() {
                    shard.stale_since = Some(since);
                }
            } else {
                shard.clear(&self.counters);
            }
            shard.epoch = epoch;
        }
        // Counted once done: whoever sees the count grow sees the entries gone.
        self.counters.flushes.fetch_add(1, Relaxed);
    }

    /// Entries and bytes now.
    pub(crate) fn size(&self) -> (usize, usize) {
        (
            self.counters.entries.load(Relaxed),
            self.counters.bytes.load(Relaxed),
        )
    }

    /// How many shards the store has.
    #[cfg(test)]
    fn shards(&self) -> usize {
        self.shards.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(entries: usize, bytes: usize) -> Limits {
        Limits {
            max_entries: entries,
            max_bytes: bytes,
            ttl: Duration::from_secs(60),
            stale_for: None,
        }
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn live(store: &Store) {
        store.confirm(store.now(), Duration::from_secs(60));
    }

    fn fill(store: &Store, key: &str, value: &str) -> bool {
        let t = store.begin(key.as_bytes());
        store.complete(t, key.as_bytes(), Place::Get, &bulk(value))
    }

    #[test]
    fn hit_after_a_read_and_miss_after_invalidation() {
        let store = Store::new(limits(1000, 1 << 20));
        live(&store);
        assert_eq!(store.get(b"k", Place::Get, true), None);
        assert!(fill(&store, "k", "v1"));
        assert_eq!(store.get(b"k", Place::Get, true), Some(bulk("v1")));
        store.invalidate(b"k", true);
        assert_eq!(store.get(b"k", Place::Get, true), None);
        let c = &store.counters;
        assert_eq!(c.hits.load(Relaxed), 1);
        assert_eq!(c.misses.load(Relaxed), 2);
        assert_eq!(c.invalidations.load(Relaxed), 1);
        assert_eq!(store.size(), (0, 0));
    }

    #[test]
    fn a_read_in_flight_when_its_key_is_invalidated_is_not_stored() {
        let store = Store::new(limits(1000, 1 << 20));
        live(&store);
        let t = store.begin(b"k");
        // A second read of the same key in flight, registered before the invalidation too.
        let t2 = store.begin(b"k");
        store.invalidate(b"k", true);
        // A read registered after the invalidation may be stored.
        let t3 = store.begin(b"k");
        assert!(!store.complete(t, b"k", Place::Get, &bulk("old")));
        assert!(!store.complete(t2, b"k", Place::Get, &bulk("old")));
        assert_eq!(store.get(b"k", Place::Get, false), None);
        assert!(store.complete(t3, b"k", Place::Get, &bulk("new")));
        assert_eq!(store.get(b"k", Place::Get, false), Some(bulk("new")));
        assert_eq!(store.counters.races.load(Relaxed), 2);
        // Every flight was released.
        for s in store.shards.iter() {
            assert!(s.lock().flights.is_empty());
        }
    }

    #[test]
    fn a_read_in_flight_across_a_flush_is_not_stored_and_nothing_survives_it() {
        let store = Store::new(limits(1000, 1 << 20));
        live(&store);
        assert!(fill(&store, "a", "1"));
        let t = store.begin(b"b");
        store.flush(FlushKind::Lost);
        assert!(!store.complete(t, b"b", Place::Get, &bulk("2")));
        assert_eq!(store.get(b"a", Place::Get, false), None);
        assert_eq!(store.size(), (0, 0));
    }

    #[test]
    fn a_dropped_ticket_releases_its_flight() {
        let store = Store::new(limits(1000, 1 << 20));
        live(&store);
        drop(store.begin(b"k"));
        for s in store.shards.iter() {
            assert!(s.lock().flights.is_empty());
        }
    }

    #[test]
    fn no_hit_after_the_confirmation_lapses() {
        let store = Store::new(limits(1000, 1 << 20));
        live(&store);
        assert!(fill(&store, "k", "v"));
        store.confirm(store.now(), Duration::ZERO);
        assert_eq!(store.get(b"k", Place::Get, false), None);
        store.confirm(store.now(), Duration::from_secs(1));
        assert_eq!(store.get(b"k", Place::Get, false), Some(bulk("v")));
        store.suspend();
        assert_eq!(store.get(b"k", Place::Get, false), None);
    }

    #[test]
    fn bounded_by_entries_and_bytes() {
        let store = Store::new(limits(1000, 1 << 30));
        live(&store);
        for i in 0..10_000 {
            fill(&store, &format!("key:{i}"), "v");
        }
        let (entries, bytes) = store.size();
        assert!(entries <= 1000, "{entries}");
        assert!(entries >= 900, "{entries}");
        assert!(store.counters.evictions.load(Relaxed) >= 9000);
        let real: usize = store.shards.iter().map(|s| s.lock().bytes).sum();
        assert_eq!(real, bytes);

        let cap = 64 * 1024;
        let store = Store::new(limits(1_000_000, cap));
        live(&store);
        for i in 0..10_000 {
            fill(&store, &format!("key:{i}"), &"x".repeat(100));
        }
        let (entries, bytes) = store.size();
        assert!(bytes <= cap, "{bytes}");
        assert!(entries > 100, "{entries}");
        // A value that can never fit is not stored (and counted).
        assert!(!fill(&store, "huge", &"x".repeat(cap)));
        assert_eq!(store.counters.too_large.load(Relaxed), 1);
    }

    #[test]
    fn second_chance_keeps_referenced_entries() {
        let store = Store::new(limits(100, 1 << 30));
        assert_eq!(store.shards(), 1);
        live(&store);
        for i in 0..100 {
            fill(&store, &format!("k{i}"), "v");
        }
        // Touch the first ten: they survive the next evictions.
        for i in 0..10 {
            assert!(store
                .get(format!("k{i}").as_bytes(), Place::Get, false)
                .is_some());
        }
        for i in 100..150 {
            fill(&store, &format!("k{i}"), "v");
        }
        for i in 0..10 {
            assert!(
                store
                    .get(format!("k{i}").as_bytes(), Place::Get, false)
                    .is_some(),
                "k{i} was evicted"
            );
        }
    }

    #[test]
    fn expired_entries_are_misses() {
        let store = Store::new(Limits {
            ttl: Duration::ZERO,
            ..limits(100, 1 << 20)
        });
        live(&store);
        assert!(fill(&store, "k", "v"));
        assert_eq!(store.get(b"k", Place::Get, false), None);
        assert_eq!(store.counters.expirations.load(Relaxed), 1);
    }

    #[test]
    fn commands_are_invalidated_with_their_key() {
        let store = Store::new(limits(1000, 1 << 20));
        live(&store);
        let hget = redis::cmd("HGET").arg("h").arg("f").get_packed_command();
        let hgetall = redis::cmd("HGETALL").arg("h").get_packed_command();
        let t = store.begin(b"h");
        assert!(store.complete(t, b"h", Place::Command(&hget), &bulk("1")));
        let t = store.begin(b"h");
        let all = Value::Array(vec![bulk("f"), bulk("1")]);
        assert!(store.complete(t, b"h", Place::Command(&hgetall), &all));
        assert_eq!(
            store.get(b"h", Place::Command(&hget), false),
            Some(bulk("1"))
        );
        assert_eq!(store.get(b"h", Place::Command(&hgetall), false), Some(all));
        assert_eq!(store.get(b"h", Place::Get, false), None);
        store.invalidate(b"h", true);
        assert_eq!(store.get(b"h", Place::Command(&hget), false), None);
        assert_eq!(store.get(b"h", Place::Command(&hgetall), false), None);
        assert_eq!(store.size(), (0, 0));
        for s in store.shards.iter() {
            assert!(s.lock().index.is_empty());
        }
    }

    #[test]
    fn stale_values_after_a_loss_within_the_bound_only() {
        let store = Store::new(Limits {
            stale_for: Some(Duration::from_secs(3600)),
            ..limits(1000, 1 << 20)
        });
        live(&store);
        assert!(fill(&store, "k", "v"));
        store.flush(FlushKind::Lost);
        // Never a hit, but a stale value for stale-if-error.
        assert_eq!(store.get(b"k", Place::Get, false), None);
        assert_eq!(store.get_stale(b"k", Place::Get), Some(bulk("v")));
        // A flush notice from the server drops stale values too.
        store.flush(FlushKind::Server);
        assert_eq!(store.get_stale(b"k", Place::Get), None);

        let store = Store::new(Limits {
            stale_for: Some(Duration::ZERO),
            ..limits(1000, 1 << 20)
        });
        live(&store);
        assert!(fill(&store, "k", "v"));
        store.flush(FlushKind::Lost);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(store.get_stale(b"k", Place::Get), None);
    }

    #[test]
    fn shard_counts_fit_the_limits() {
        assert_eq!(shard_count(&limits(10, 1 << 30)), 1);
        assert_eq!(shard_count(&limits(100_000, 1 << 30)), 64);
        assert_eq!(shard_count(&limits(100_000, 256 * 1024)), 4);
        assert_eq!(shard_count(&limits(0, 0)), 1);
    }
}
