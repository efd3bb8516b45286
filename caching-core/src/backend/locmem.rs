//! In-process backend: thread-safe, bounded by entries and bytes, least-recently-used
//! eviction, honours forever and TTLs. The embedded default.
//!
//! # Design
//!
//! **Shards.** Keys are hashed once (SipHash with a per-backend random key, so keys chosen
//! by an attacker cannot be made to collide) and spread over 32 shards, each a [`RwLock`]
//! around its own table. A change takes the write lock of its key's shard (and, one at a
//! time, of the stripes holding the key, below); a read that its stripe does not serve
//! takes the shard's read lock.
//! A call on several keys is atomic per key, not across keys: like memcached, which the
//! rest of the crate is written for (the trait promises no more).
//!
//! **Reads that write nothing shared.** Even a read lock writes its lock word, which then
//! moves between the cores of the threads reading that shard: on a hot key (a counter every
//! hit reads, a popular query) that transfer dominates a hit. So each thread also reads
//! through one of 64 *stripes* (threads are given stripes in turn), each a [`Mutex`] around
//! a small direct-mapped table of the hot entries that stripe's threads read: an entry read
//! from its shard that was already read in the last 2 ms is copied there, as an [`Arc`]
//! shared with the shard (the value is not duplicated). A thread that has its stripe to
//! itself thus reads hot keys with no write to memory another core uses. Entries are
//! immutable once shared: every change of a key, under its shard's write lock, first takes
//! it out of every stripe that holds it (each slot records them in a bit mask), so once a
//! call returns no stripe shows what it replaced, and a stripe never keeps an entry alive
//! after its shard dropped it. A call holds at most one shard lock and one stripe lock at a
//! time, and takes a stripe's only after the shard's, if both.
//!
//! **Recency without allocation.** Each shard keeps its entries in a slab (a `Vec` of
//! slots, freed slots reused) threaded by an intrusive doubly linked list in the order they
//! were *linked* (stored or changed), each with the tick of that moment; a hash index maps
//! keys to slots. A read moves nothing: it stores its tick into the entry's atomic `touched`
//! field: always on the first read since the entry was linked, then at most once per
//! millisecond, so readers of a hot key do not keep writing its cache line. Ticks are
//! nanoseconds since the backend was created, made strictly increasing by a global atomic
//! clock that writes advance and reads only load: a read ticks after every write that
//! happened before it, and a write after every read that happened before it.
//!
//! **Eviction.** Each shard publishes the link tick of its list's tail (its oldest link) in
//! an atomic. When a write leaves the cache over a bound, the writing call, after releasing
//! its own shard, repeatedly picks the shard with the oldest tail, locks it (and only it),
//! and looks at the tail: if it was read since it was linked, it is moved to its place in
//! link order for the time of that read (its "second chance"); otherwise it is the least
//! recently used entry of the whole cache and is evicted. This is exact least-recently-used
//! order, except that (a) a read less than a millisecond after an earlier read of the same
//! entry does not refresh it, (b) a second chance looks for the entry's place among the 16
//! newest links of its shard only (an entry read before more writes than that in its shard
//! is kept as if read just before them), (c) a pass gives at most 256 second chances before
//! evicting tails as they come, and (d) concurrent calls race as on any shared store.
//! Expired entries are dropped when a call meets them, and otherwise age out like others.
//!
//! **Bounds.** The number of entries and of bytes (keys plus values; the slab, index and
//! stripes, about 160 bytes an entry, 12 KiB a backend and 4 KiB a stripe in use, are not
//! counted) are global
//! atomic counters, changed under the lock of the shard that changes. A write that leaves
//! either over its limit evicts as above until both are within their limits again before it
//! returns (a multi-key write after each key). So whenever no call is in progress both
//! bounds hold exactly; while writes run concurrently the cache can exceed them by at most
//! one value and one entry per write in progress. A value over `max_item_size` is never
//! stored.
//!
//! **CAS tokens** come from one global atomic counter: unique across the whole cache, and
//! every change of a value (set, add, cas, append, incr) gives it a new one.
//!
//! **Why not moka.** moka bounds a cache by entry count *or* by one weight, not both, and
//! only on a best-effort, deferred basis, and its TinyLFU admission may drop a fresh write
//! (a flush list, a counter) at once; add/append/cas/incr, CAS tokens and the item size
//! rules would still have to be built on top of it, so its dependencies would buy little.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use super::{check_keys, AppendOutcome, Backend, CasOutcome, Item, Op, OpReply, Placeholder};
use crate::error::Result;
use crate::timeout::Expiry;

/// Limits of a [`LocMem`] backend.
///
/// `max_entries` and `max_bytes` bound the whole cache (all shards together); see the
/// [module documentation](self) for how they hold under concurrency.
///
/// ```
/// use caching_core::backend::locmem::LocMemLimits;
/// let l = LocMemLimits::default();
/// assert_eq!(l.max_item_size, 1024 * 1024);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocMemLimits {
    /// Most entries kept; least recently used are evicted beyond it.
    pub max_entries: usize,
    /// Most bytes (keys + values) kept; least recently used are evicted beyond it.
    pub max_bytes: usize,
    /// Largest value stored (memcached's default: 1 MiB).
    pub max_item_size: usize,
}

impl Default for LocMemLimits {
    fn default() -> Self {
        LocMemLimits {
            max_entries: 100_000,
            max_bytes: 256 * 1024 * 1024,
            max_item_size: 1024 * 1024,
        }
    }
}

/// Values up to this size are copied out of the shard onto the stack, and allocated for
/// the caller only once the shard is unlocked.
const SMALL: usize = 64;
/// Number of shards (a power of two).
const SHARDS: usize = 32;
/// Number of read stripes (a power of two, at most 64: a slot's stripe mask is a `u64`).
const STRIPES: usize = 64;
/// Entries of a stripe's table (a power of two).
const STRIPE_SLOTS: usize = 256;
const _: () = assert!(
    SHARDS.is_power_of_two()
        && STRIPES.is_power_of_two()
        && STRIPES <= 64
        && STRIPE_SLOTS.is_power_of_two()
);
/// No slot (end of a list or chain).
const NIL: usize = usize::MAX;
/// The published tail tick of an empty shard.
const EMPTY: u64 = u64::MAX;
/// A read already recorded since the entry was linked is refreshed at most this often (ns).
const TOUCH_EVERY: u64 = 1_000_000;
/// An entry read from its shard goes into the reader's stripe if it had been read less
/// than this long before (ns).
const HOT: u64 = 2 * TOUCH_EVERY;
/// How far down from the head a second chance looks for its entry's place.
const SORT_STEPS: usize = 16;
/// Second chances given by one eviction pass before it evicts tails regardless, so a pass
/// ends even while other threads keep reading every tail it looks at.
const MAX_SECOND_CHANCES: usize = 256;

/// A hasher for keys that are already hashes (the SipHash of the cache key).
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else so the hasher stays total.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A key and its value, shared (behind an [`Arc`]) by its slot and the stripes holding it:
/// only changed while no stripe holds it, under the shard's write lock.
#[derive(Debug)]
struct Entry {
    key: Box<str>,
    value: Vec<u8>,
    cas: u64,
    expires: Option<Instant>,
    /// Tick at which the slot took its place in the recency list.
    linked: AtomicU64,
    /// Tick of the last recorded read; `<= linked` when not read since linked.
    touched: AtomicU64,
}

impl Clone for Entry {
    fn clone(&self) -> Self {
        Entry {
            key: self.key.clone(),
            value: self.value.clone(),
            cas: self.cas,
            expires: self.expires,
            linked: AtomicU64::new(self.linked.load(Relaxed)),
            touched: AtomicU64::new(self.touched.load(Relaxed)),
        }
    }
}

impl Entry {
    fn new(key: &str, value: Vec<u8>, meta: Meta) -> Self {
        Entry {
            key: key.into(),
            value,
            cas: meta.cas,
            expires: meta.expires,
            linked: AtomicU64::new(meta.tick),
            touched: AtomicU64::new(meta.tick),
        }
    }

    fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|t| t <= now)
    }

    fn size(&self) -> usize {
        self.key.len() + self.value.len()
    }

    /// Records a read at `tick` (see the module documentation); returns the tick of the
    /// read recorded before, for [`Entry::was_hot`].
    fn touch(&self, tick: u64) -> u64 {
        let seen = self.touched.load(Relaxed);
        let linked = self.linked.load(Relaxed);
        if seen <= linked || tick >= seen.saturating_add(TOUCH_EVERY) {
            let tick = tick.max(linked.saturating_add(1));
            if tick > seen {
                self.touched.store(tick, Relaxed);
            }
        }
        seen
    }

    /// Whether a read at `tick` that found `seen` (see [`Entry::touch`]) follows another
    /// read by less than [`HOT`].
    fn was_hot(&self, seen: u64, tick: u64) -> bool {
        seen > self.linked.load(Relaxed) && tick < seen.saturating_add(HOT)
    }

    fn item(&self) -> Item {
        Item {
            value: self.value.clone(),
            cas: self.cas,
        }
    }
}

#[derive(Debug)]
struct Slot {
    entry: Arc<Entry>,
    /// SipHash of the key.
    hash: u64,
    /// Stripes that may hold `entry` (bit `s`: stripe `s`); set under the shard's read
    /// lock, cleared under its write lock.
    stripes: AtomicU64,
    /// Neighbours in the recency list (`next` also links free slots).
    prev: usize,
    next: usize,
    /// Next slot whose key has the same hash.
    chain: usize,
}

/// What a store writes besides the key and value.
#[derive(Debug, Clone, Copy)]
struct Meta {
    cas: u64,
    expires: Option<Instant>,
    tick: u64,
}

/// One shard's entries: a slab of slots, an index from key hash to the first slot of the
/// chain of keys with that hash, and a recency list from `head` (newest) to `tail`.
#[derive(Debug)]
struct Table {
    index: HashMap<u64, usize, BuildHasherDefault<Prehashed>>,
    slots: Vec<Slot>,
    free: usize,
    head: usize,
    tail: usize,
    /// Entries and bytes of this table (their sums are the global counters).
    count: usize,
    bytes: usize,
    /// What free slots point to (one allocation per table).
    vacant: Arc<Entry>,
}

impl Table {
    fn new() -> Self {
        let meta = Meta {
            cas: 0,
            expires: None,
            tick: 0,
        };
        Table {
            index: HashMap::default(),
            slots: Vec::new(),
            free: NIL,
            head: NIL,
            tail: NIL,
            count: 0,
            bytes: 0,
            vacant: Arc::new(Entry::new("", Vec::new(), meta)),
        }
    }

    fn find(&self, hash: u64, key: &str) -> Option<usize> {
        let mut i = *self.index.get(&hash)?;
        loop {
            let slot = self.slots.get(i)?;
            if &*slot.entry.key == key {
                return Some(i);
            }
            i = slot.chain;
        }
    }

    /// Link tick of the oldest entry, [`EMPTY`] if none.
    fn oldest(&self) -> u64 {
        self.slots
            .get(self.tail)
            .map_or(EMPTY, |s| s.entry.linked.load(Relaxed))
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.slots[i].prev, self.slots[i].next);
        match prev {
            NIL => self.head = next,
            p => self.slots[p].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slots[n].prev = prev,
        }
    }

    /// Links slot `i` between `prev` and `next` (neighbours, or NIL at an end).
    fn link(&mut self, i: usize, prev: usize, next: usize) {
        self.slots[i].prev = prev;
        self.slots[i].next = next;
        match prev {
            NIL => self.head = i,
            p => self.slots[p].next = i,
        }
        match next {
            NIL => self.tail = i,
            n => self.slots[n].prev = i,
        }
    }

    /// Marks slot `i` linked (and not read since) at `tick`.
    fn stamp(&self, i: usize, tick: u64) {
        let entry = &self.slots[i].entry;
        entry.linked.store(tick, Relaxed);
        entry.touched.store(tick, Relaxed);
    }

    /// Moves slot `i` to the head, linked at `tick`.
    fn relink(&mut self, i: usize, tick: u64) {
        self.unlink(i);
        self.stamp(i, tick);
        self.link(i, NIL, self.head);
    }

    /// Gives slot `i`, read at `tick` since it was linked, its second chance: moves it to
    /// its place in link order for `tick`, looking at most [`SORT_STEPS`] entries down
    /// from the head (beyond them it stays there, a little younger than it is).
    fn relink_read(&mut self, i: usize, tick: u64) {
        self.unlink(i);
        self.stamp(i, tick);
        let (mut prev, mut next) = (NIL, self.head);
        for _ in 0..SORT_STEPS {
            match self.slots.get(next) {
                Some(s) if s.entry.linked.load(Relaxed) > tick => (prev, next) = (next, s.next),
                _ => break,
            }
        }
        self.link(i, prev, next);
    }

    /// Adds a new key (not present); returns its slot and the bytes added.
    fn insert(&mut self, hash: u64, entry: Entry) -> (usize, usize) {
        let size = entry.size();
        let slot = Slot {
            entry: Arc::new(entry),
            hash,
            stripes: AtomicU64::new(0),
            prev: NIL,
            next: NIL,
            chain: self.index.get(&hash).copied().unwrap_or(NIL),
        };
        let i = match self.free {
            NIL => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
            i => {
                self.free = self.slots[i].next;
                self.slots[i] = slot;
                i
            }
        };
        self.index.insert(hash, i);
        self.link(i, NIL, self.head);
        self.count += 1;
        self.bytes += size;
        (i, size)
    }

    /// Removes slot `i` (which no stripe holds); returns the bytes freed.
    fn remove(&mut self, i: usize) -> usize {
        self.unlink(i);
        let (hash, chain) = (self.slots[i].hash, self.slots[i].chain);
        match self.index.get(&hash).copied() {
            Some(first) if first == i => {
                if chain == NIL {
                    self.index.remove(&hash);
                } else {
                    self.index.insert(hash, chain);
                }
            }
            Some(mut p) => {
                while self.slots[p].chain != i && self.slots[p].chain != NIL {
                    p = self.slots[p].chain;
                }
                if self.slots[p].chain == i {
                    self.slots[p].chain = chain;
                }
            }
            None => {}
        }
        let (free, vacant) = (self.free, self.vacant.clone());
        let slot = &mut self.slots[i];
        let size = slot.entry.size();
        slot.entry = vacant;
        slot.chain = NIL;
        slot.prev = NIL;
        slot.next = free;
        self.free = i;
        self.count -= 1;
        self.bytes -= size;
        size
    }
}

/// A shard, alone on its cache lines so shards do not slow each other down.
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    table: RwLock<Table>,
    /// `table.oldest()`, published for eviction (written under the write lock).
    oldest: AtomicU64,
}

/// A stripe's entries: [`STRIPE_SLOTS`] places (none until first used), each empty or an
/// entry with the hash of its key.
type StripeMap = Vec<Option<(u64, Arc<Entry>)>>;

/// A read stripe: hot entries by key hash, direct-mapped.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe {
    map: Mutex<StripeMap>,
}

fn stripe_index(hash: u64) -> usize {
    // Bits 40..48: independent of the shard's (32..37) and of the index's.
    (hash >> 40) as usize & (STRIPE_SLOTS - 1)
}

/// This thread's stripe.
fn reader_stripe() -> usize {
    crate::stripe::thread_index() & (STRIPES - 1)
}

/// The in-process backend.
///
/// ```
/// use caching_core::backend::{Backend, locmem::LocMem};
/// use caching_core::Expiry;
/// let b = LocMem::new();
/// assert!(b.add("k", b"v", Expiry::Forever).unwrap());
/// assert!(!b.add("k", b"w", Expiry::Forever).unwrap());
/// assert_eq!(b.get("k").unwrap().unwrap().value, b"v");
/// ```
pub struct LocMem {
    shards: Box<[Shard]>,
    stripes: Box<[Stripe]>,
    hasher: RandomState,
    limits: LocMemLimits,
    /// Entries and bytes (keys + values) of all shards.
    entries: AtomicUsize,
    bytes: AtomicUsize,
    /// Last CAS token given.
    last_cas: AtomicU64,
    /// Tick of the last write (ticks are nanoseconds since `epoch`, see `write_tick`).
    clock: AtomicU64,
    epoch: Instant,
}

impl fmt::Debug for LocMem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocMem")
            .field("limits", &self.limits)
            .field("entries", &self.len())
            .field("bytes", &self.bytes())
            .finish_non_exhaustive()
    }
}

impl Default for LocMem {
    fn default() -> Self {
        LocMem::new()
    }
}

impl LocMem {
    /// A backend with default limits.
    ///
    /// ```
    /// use caching_core::backend::locmem::LocMem;
    /// assert!(LocMem::new().is_empty());
    /// ```
    pub fn new() -> Self {
        LocMem::with_limits(LocMemLimits::default())
    }

    /// A backend with the given limits.
    ///
    /// ```
    /// use caching_core::backend::{Backend, locmem::{LocMem, LocMemLimits}};
    /// use caching_core::Expiry;
    /// let b = LocMem::with_limits(LocMemLimits { max_entries: 1, ..LocMemLimits::default() });
    /// b.set("a", b"1", Expiry::Forever).unwrap();
    /// b.set("b", b"2", Expiry::Forever).unwrap();
    /// assert_eq!(b.len(), 1);
    /// assert!(b.get("a").unwrap().is_none());
    /// ```
    pub fn with_limits(limits: LocMemLimits) -> Self {
        LocMem {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    table: RwLock::new(Table::new()),
                    oldest: AtomicU64::new(EMPTY),
                })
                .collect(),
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            hasher: RandomState::new(),
            limits,
            entries: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            last_cas: AtomicU64::new(0),
            clock: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Number of live and not yet collected entries.
    ///
    /// ```
    /// use caching_core::backend::{Backend, locmem::LocMem};
    /// use caching_core::Expiry;
    /// let b = LocMem::new();
    /// b.set("k", b"v", Expiry::Forever).unwrap();
    /// assert_eq!(b.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.entries.load(Relaxed)
    }

    /// Whether the backend holds no entries.
    ///
    /// ```
    /// use caching_core::backend::locmem::LocMem;
    /// assert!(LocMem::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held (keys and values).
    ///
    /// ```
    /// use caching_core::backend::{Backend, locmem::LocMem};
    /// use caching_core::Expiry;
    /// let b = LocMem::new();
    /// b.set("k", b"vv", Expiry::Forever).unwrap();
    /// assert_eq!(b.bytes(), 3);
    /// ```
    pub fn bytes(&self) -> usize {
        self.bytes.load(Relaxed)
    }

    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, hash: u64) -> &Shard {
        // Bits 32..37: hashbrown uses the low bits (bucket) and the top seven (tag) of the
        // same hash inside the shard's index, so these leave both well spread.
        &self.shards[(hash >> 32) as usize & (SHARDS - 1)]
    }

    /// The read lock of a shard. A panic while a shard was locked may have left it
    /// inconsistent: losing its entries matters less than losing the cache, so a poisoned
    /// shard is emptied and used again, never propagated.
    fn read<'a>(&self, shard: &'a Shard) -> RwLockReadGuard<'a, Table> {
        loop {
            match shard.table.read() {
                Ok(t) => return t,
                Err(poisoned) => {
                    drop(poisoned);
                    drop(self.write(shard));
                }
            }
        }
    }

    /// The write lock of a shard (emptying it if poisoned, see [`LocMem::read`]).
    fn write<'a>(&self, shard: &'a Shard) -> RwLockWriteGuard<'a, Table> {
        let mut t = shard.table.write().unwrap_or_else(PoisonError::into_inner);
        if shard.table.is_poisoned() {
            let old = std::mem::replace(&mut *t, Table::new());
            self.entries.fetch_sub(old.count, Relaxed);
            self.bytes.fetch_sub(old.bytes, Relaxed);
            shard.oldest.store(EMPTY, Relaxed);
            // Stripes may hold the shard's entries: empty them all.
            for stripe in self.stripes.iter() {
                self.lock_stripe(stripe).clear();
            }
            shard.table.clear_poison();
        }
        t
    }

    /// A stripe's table (emptied if a panic poisoned it: it only copies the shards).
    fn lock_stripe<'a>(&self, stripe: &'a Stripe) -> MutexGuard<'a, StripeMap> {
        stripe.map.lock().unwrap_or_else(|poisoned| {
            let mut map = poisoned.into_inner();
            map.clear();
            stripe.map.clear_poison();
            map
        })
    }

    /// Takes slot `i`'s entry out of every stripe that holds it: it may change (or go)
    /// once this returns. Under the shard's write lock.
    fn unshare(&self, slot: &Slot) {
        let mut mask = slot.stripes.swap(0, Relaxed);
        while mask != 0 {
            let s = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            let mut map = self.lock_stripe(&self.stripes[s]);
            if let Some(held) = map.get_mut(stripe_index(slot.hash)) {
                if held
                    .as_ref()
                    .is_some_and(|(_, e)| Arc::ptr_eq(e, &slot.entry))
                {
                    *held = None;
                }
            }
        }
    }

    /// Slot `i`'s entry, to change in place (under the write lock).
    fn entry_mut<'t>(&self, t: &'t mut Table, i: usize) -> &'t mut Entry {
        self.unshare(&t.slots[i]);
        // No stripe holds it, and readers of the shard are locked out: it is not shared,
        // and `make_mut` does not copy it.
        Arc::make_mut(&mut t.slots[i].entry)
    }

    /// Runs `f` on the table of `hash`'s shard under its write lock, then publishes the
    /// shard's oldest tick.
    fn with_shard<R>(&self, hash: u64, f: impl FnOnce(&mut Table) -> R) -> R {
        let shard = self.shard(hash);
        let mut t = self.write(shard);
        let r = f(&mut t);
        shard.oldest.store(t.oldest(), Relaxed);
        r
    }

    fn ns_since_epoch(&self, now: Instant) -> u64 {
        let ns = now.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(ns).unwrap_or(EMPTY - 1).min(EMPTY - 1)
    }

    /// Tick of a write: the clock's time, strictly after every earlier write's tick.
    /// Also strictly after every read that happened before it: a read ticks at most
    /// `max(clock + 1, its time)`, a write at least `max(clock + 2, its time + 1)`.
    fn write_tick(&self, now: Instant) -> u64 {
        let ns = self.ns_since_epoch(now);
        let next = |c: u64| c.saturating_add(2).max(ns.saturating_add(1)).min(EMPTY - 1);
        match self.clock.fetch_update(Relaxed, Relaxed, |c| Some(next(c))) {
            Ok(c) | Err(c) => next(c),
        }
    }

    /// Tick of a read: the clock's time, strictly after the tick of every write it follows.
    fn read_tick(&self, now: Instant) -> u64 {
        let ns = self.ns_since_epoch(now);
        self.clock
            .load(Relaxed)
            .saturating_add(1)
            .max(ns)
            .min(EMPTY - 1)
    }

    fn next_cas(&self) -> u64 {
        self.last_cas.fetch_add(1, Relaxed).wrapping_add(1)
    }

    fn expires(expiry: Expiry, now: Instant) -> Option<Instant> {
        expiry
            .as_duration()
            .and_then(|d| now.checked_add(d.min(Duration::from_secs(100 * 365 * 24 * 3600))))
    }

    /// Slot of `key` if it is live; an expired entry is removed.
    fn live(&self, t: &mut Table, hash: u64, key: &str, now: Instant) -> Option<usize> {
        let i = t.find(hash, key)?;
        if t.slots[i].entry.expired(now) {
            self.remove(t, i);
            return None;
        }
        Some(i)
    }

    fn remove(&self, t: &mut Table, i: usize) {
        self.unshare(&t.slots[i]);
        let size = t.remove(i);
        self.entries.fetch_sub(1, Relaxed);
        self.bytes.fetch_sub(size, Relaxed);
    }

    /// Stores `value` under `key` (at slot `found` if it exists): a new CAS token, most
    /// recently used.
    #[allow(clippy::too_many_arguments)]
    fn store(
        &self,
        t: &mut Table,
        found: Option<usize>,
        hash: u64,
        key: &str,
        value: Vec<u8>,
        expires: Option<Instant>,
        now: Instant,
    ) {
        let meta = Meta {
            cas: self.next_cas(),
            expires,
            tick: self.write_tick(now),
        };
        match found {
            Some(i) => {
                let new = value.len();
                let entry = self.entry_mut(t, i);
                let old = std::mem::replace(&mut entry.value, value).len();
                entry.cas = meta.cas;
                entry.expires = meta.expires;
                t.bytes = t.bytes - old + new;
                t.relink(i, meta.tick);
                self.bytes.fetch_add(new, Relaxed);
                self.bytes.fetch_sub(old, Relaxed);
            }
            None => {
                let (_, size) = t.insert(hash, Entry::new(key, value, meta));
                self.entries.fetch_add(1, Relaxed);
                self.bytes.fetch_add(size, Relaxed);
            }
        }
    }

    /// Records a use of slot `i` by a write-locked call that did not change it (as a read
    /// would).
    fn used(&self, t: &Table, i: usize, now: Instant) {
        t.slots[i].entry.touch(self.read_tick(now));
    }

    fn over_limits(&self) -> bool {
        self.entries.load(Relaxed) > self.limits.max_entries
            || self.bytes.load(Relaxed) > self.limits.max_bytes
    }

    /// Evicts least recently used entries until the cache is within its limits (see the
    /// module documentation). Holds one shard lock at a time; call it with none held.
    fn evict(&self) {
        let mut second_chances = 0;
        while self.over_limits() {
            let Some(shard) = self
                .shards
                .iter()
                .map(|s| (s.oldest.load(Relaxed), s))
                .filter(|(oldest, _)| *oldest != EMPTY)
                .min_by_key(|(oldest, _)| *oldest)
                .map(|(_, s)| s)
            else {
                break;
            };
            let mut t = self.write(shard);
            let tail = t.tail;
            if let Some(slot) = t.slots.get(tail) {
                let touched = slot.entry.touched.load(Relaxed);
                if touched > slot.entry.linked.load(Relaxed) && second_chances < MAX_SECOND_CHANCES
                {
                    second_chances += 1;
                    t.relink_read(tail, touched);
                } else {
                    self.remove(&mut t, tail);
                }
            }
            shard.oldest.store(t.oldest(), Relaxed);
        }
    }

    /// Removes the expired entries among `keys` (met by a read holding only read locks).
    fn collect_expired(&self, keys: &[&str], now: Instant) {
        for key in keys {
            let hash = self.hash(key);
            self.with_shard(hash, |t| {
                self.live(t, hash, key, now);
            });
        }
    }

    /// Reads `key` (of hash `hash`) from its shard, and copies it to stripe `s` if it is
    /// hot; `None` if missing, `Err(())` if expired.
    fn read_shard(
        &self,
        key: &str,
        hash: u64,
        s: usize,
        now: Instant,
        tick: u64,
    ) -> Option<std::result::Result<Item, ()>> {
        let t = self.read(self.shard(hash));
        let slot = t.find(hash, key).and_then(|i| t.slots.get(i))?;
        let entry = &slot.entry;
        if entry.expired(now) {
            return Some(Err(()));
        }
        let seen = entry.touch(tick);
        if entry.was_hot(seen, tick) {
            let mut map = self.lock_stripe(&self.stripes[s]);
            if map.is_empty() {
                map.resize(STRIPE_SLOTS, None);
            }
            if let Some(held) = map.get_mut(stripe_index(hash)) {
                *held = Some((hash, entry.clone()));
                slot.stripes.fetch_or(1 << s, Relaxed);
            }
        }
        let cas = entry.cas;
        let value = if entry.value.len() <= SMALL {
            // Allocate after unlocking: the shard's lock is held for a copy of a few
            // bytes only.
            let mut small = [0u8; SMALL];
            let n = entry.value.len();
            small[..n].copy_from_slice(&entry.value);
            drop(t);
            small[..n].to_vec()
        } else {
            let value = entry.value.clone();
            drop(t);
            value
        };
        Some(Ok(Item { value, cas }))
    }
}

impl LocMem {
    /// Reads `keys`, handing each item found to `found` with its key's index in `keys`.
    fn read_each(&self, keys: &[&str], found: impl FnMut(usize, Item)) -> Result<()> {
        self.read_each_of(keys, |k| *k, found)
    }

    /// [`read_each`](LocMem::read_each) of the keys `key_of` finds in `of` (the ops of a
    /// batch, read without collecting their keys first).
    fn read_each_of<'k, T>(
        &self,
        of: &'k [T],
        key_of: impl Fn(&'k T) -> &'k str,
        mut found: impl FnMut(usize, Item),
    ) -> Result<()> {
        check_keys(of.iter().map(&key_of))?;
        let now = Instant::now();
        let tick = self.read_tick(now);
        let mut expired = false;
        let s = reader_stripe();
        for (c, chunk) in of.chunks(64).enumerate() {
            // The reader's stripe first (bit k of `missed`: chunk[k] was not there), then
            // the shards: never a stripe and then a shard.
            let mut missed = 0u64;
            let mut hashes = [0u64; 64];
            let mut hits: [Option<Item>; 64] = [const { None }; 64];
            {
                let map = self.lock_stripe(&self.stripes[s]);
                for (k, key) in chunk.iter().map(&key_of).enumerate() {
                    let hash = self.hash(key);
                    hashes[k] = hash;
                    let held = map.get(stripe_index(hash)).and_then(Option::as_ref);
                    match held {
                        Some((h, e)) if *h == hash && &*e.key == key && !e.expired(now) => {
                            e.touch(tick);
                            hits[k] = Some(e.item());
                        }
                        _ => missed |= 1 << k,
                    }
                }
            }
            for (k, key) in chunk.iter().map(&key_of).enumerate() {
                let item = if missed & (1 << k) != 0 {
                    match self.read_shard(key, hashes[k], s, now, tick) {
                        Some(Ok(item)) => Some(item),
                        Some(Err(())) => {
                            expired = true;
                            None
                        }
                        None => None,
                    }
                } else {
                    hits[k].take()
                };
                if let Some(item) = item {
                    found(c * 64 + k, item);
                }
            }
        }
        if expired {
            let keys: Vec<&str> = of.iter().map(&key_of).collect();
            self.collect_expired(&keys, now);
        }
        Ok(())
    }
}

impl Backend for LocMem {
    fn name(&self) -> &'static str {
        "locmem"
    }

    fn max_item_size(&self) -> usize {
        self.limits.max_item_size
    }

    fn get_multi(&self, keys: &[&str]) -> Result<HashMap<String, Item>> {
        let mut out = HashMap::with_capacity(keys.len());
        self.read_each(keys, |i, item| {
            out.insert(keys[i].to_string(), item);
        })?;
        Ok(out)
    }

    /// A stage of reads (and leases) answers in the order of its ops without the map of
    /// `get_multi`: the lookup of every hit is one.
    fn batch(&self, stages: &[&[Op<'_>]]) -> Result<Vec<Vec<OpReply>>> {
        let mut out = Vec::with_capacity(stages.len());
        for ops in stages {
            if !ops.iter().all(|o| matches!(o, Op::Get(_) | Op::Lease(..))) {
                out.push(super::run_stage(self, ops)?);
                continue;
            }
            let mut replies: Vec<OpReply> = Vec::with_capacity(ops.len());
            replies.resize_with(ops.len(), || OpReply::Value(None));
            self.read_each_of(ops, Op::key, |i, item| {
                replies[i] = OpReply::Value(Some(item))
            })?;
            for (op, reply) in ops.iter().zip(&mut replies) {
                let OpReply::Value(found) = reply else {
                    continue;
                };
                *reply = match (*op, found.take()) {
                    (Op::Lease(key, marker, expiry), None) => {
                        // A lease of a missing key: an add, after the read.
                        let won = self.add(key, marker, expiry)?.then(|| Placeholder {
                            value: marker.to_vec(),
                            cas: None,
                        });
                        OpReply::Leased { found: None, won }
                    }
                    (Op::Lease(..), found) => OpReply::Leased { found, won: None },
                    (_, found) => OpReply::Value(found),
                };
            }
            out.push(replies);
        }
        Ok(out)
    }

    fn add_multi(&self, items: &[(&str, &[u8])], expiry: Expiry) -> Result<Vec<bool>> {
        check_keys(items.iter().map(|i| i.0))?;
        let now = Instant::now();
        let expires = Self::expires(expiry, now);
        let mut out = Vec::with_capacity(items.len());
        for (key, value) in items {
            let hash = self.hash(key);
            let stored = self.with_shard(hash, |t| match self.live(t, hash, key, now) {
                Some(i) => {
                    self.used(t, i, now);
                    false
                }
                None if value.len() > self.limits.max_item_size => false,
                None => {
                    self.store(t, None, hash, key, value.to_vec(), expires, now);
                    true
                }
            });
            out.push(stored);
            self.evict();
        }
        Ok(out)
    }

    fn set_multi(&self, items: &[(&str, &[u8])], expiry: Expiry) -> Result<()> {
        check_keys(items.iter().map(|i| i.0))?;
        let now = Instant::now();
        let expires = Self::expires(expiry, now);
        for (key, value) in items {
            let hash = self.hash(key);
            self.with_shard(hash, |t| {
                let found = t.find(hash, key);
                if value.len() > self.limits.max_item_size {
                    // memcached drops the old value when a set is rejected; so do we.
                    if let Some(i) = found {
                        self.remove(t, i);
                    }
                } else {
                    self.store(t, found, hash, key, value.to_vec(), expires, now);
                }
            });
            self.evict();
        }
        Ok(())
    }

    fn append_multi(&self, items: &[(&str, &[u8])]) -> Result<Vec<AppendOutcome>> {
        check_keys(items.iter().map(|i| i.0))?;
        let now = Instant::now();
        let limit = self.limits.max_item_size;
        let mut out = Vec::with_capacity(items.len());
        for (key, value) in items {
            let hash = self.hash(key);
            let outcome = self.with_shard(hash, |t| {
                let Some(i) = self.live(t, hash, key, now) else {
                    return AppendOutcome::Missing;
                };
                if t.slots[i].entry.value.len().saturating_add(value.len()) > limit {
                    self.used(t, i, now);
                    return AppendOutcome::TooLarge;
                }
                let cas = self.next_cas();
                let entry = self.entry_mut(t, i);
                entry.value.extend_from_slice(value);
                entry.cas = cas;
                t.bytes += value.len();
                self.bytes.fetch_add(value.len(), Relaxed);
                t.relink(i, self.write_tick(now));
                AppendOutcome::Appended
            });
            out.push(outcome);
            self.evict();
        }
        Ok(out)
    }

    fn cas(&self, key: &str, value: &[u8], expiry: Expiry, cas: u64) -> Result<CasOutcome> {
        check_keys([key])?;
        let now = Instant::now();
        let hash = self.hash(key);
        let outcome = self.with_shard(hash, |t| {
            let Some(i) = self.live(t, hash, key, now) else {
                return CasOutcome::Missing;
            };
            if t.slots[i].entry.cas != cas || value.len() > self.limits.max_item_size {
                self.used(t, i, now);
                return CasOutcome::Changed;
            }
            let expires = Self::expires(expiry, now);
            self.store(t, Some(i), hash, key, value.to_vec(), expires, now);
            CasOutcome::Stored
        });
        self.evict();
        Ok(outcome)
    }

    fn delete_multi(&self, keys: &[&str]) -> Result<()> {
        check_keys(keys.iter().copied())?;
        for key in keys {
            let hash = self.hash(key);
            self.with_shard(hash, |t| {
                if let Some(i) = t.find(hash, key) {
                    self.remove(t, i);
                }
            });
        }
        Ok(())
    }

    fn incr(&self, key: &str, delta: u64) -> Result<Option<u64>> {
        check_keys([key])?;
        let now = Instant::now();
        let hash = self.hash(key);
        let next = self.with_shard(hash, |t| {
            let Some(i) = self.live(t, hash, key, now) else {
                return Ok(None);
            };
            let entry = &t.slots[i].entry;
            let Some(current) = std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            else {
                self.used(t, i, now);
                return Err(crate::Error::NotANumber {
                    key: key.to_string(),
                });
            };
            let next = current.wrapping_add(delta);
            let expires = entry.expires;
            self.store(
                t,
                Some(i),
                hash,
                key,
                next.to_string().into_bytes(),
                expires,
                now,
            );
            Ok(Some(next))
        })?;
        self.evict();
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The global counters match the tables, every list and chain is consistent, and
    /// every stripe entry is the current entry of a live slot that knows it.
    fn check_invariants(b: &LocMem) {
        let (mut entries, mut bytes) = (0, 0);
        let mut live = Vec::new();
        for shard in b.shards.iter() {
            let t = b.read(shard);
            let mut n = 0;
            let mut i = t.head;
            let mut prev = NIL;
            while i != NIL {
                let s = &t.slots[i];
                assert_eq!(s.prev, prev);
                assert_eq!(t.find(s.hash, &s.entry.key), Some(i));
                assert_eq!(b.hash(&s.entry.key), s.hash);
                assert!(std::ptr::eq(b.shard(s.hash), shard));
                live.push((s.entry.clone(), s.stripes.load(Relaxed)));
                n += 1;
                bytes += s.entry.size();
                prev = i;
                i = s.next;
            }
            assert_eq!(t.tail, prev);
            assert_eq!(n, t.count);
            assert_eq!(t.oldest(), shard.oldest.load(Relaxed));
            entries += n;
        }
        assert_eq!(entries, b.len());
        assert_eq!(bytes, b.bytes());
        for (s, stripe) in b.stripes.iter().enumerate() {
            for held in b.lock_stripe(stripe).iter().flatten() {
                let (entry, mask) = live
                    .iter()
                    .find(|(e, _)| Arc::ptr_eq(e, &held.1))
                    .expect("a stripe holds an entry no shard has");
                assert_eq!(b.hash(&entry.key), held.0);
                assert_ne!(
                    mask & (1 << s),
                    0,
                    "a stripe holds an entry unknown to its slot"
                );
            }
        }
    }

    #[test]
    fn evicts_least_recently_used_beyond_entry_limit() {
        let b = LocMem::with_limits(LocMemLimits {
            max_entries: 2,
            ..Default::default()
        });
        b.set("a", b"1", Expiry::Forever).unwrap();
        b.set("b", b"2", Expiry::Forever).unwrap();
        b.get("a").unwrap();
        b.set("c", b"3", Expiry::Forever).unwrap();
        assert!(b.get("a").unwrap().is_some());
        assert!(b.get("b").unwrap().is_none());
        assert_eq!(b.len(), 2);
        check_invariants(&b);
    }

    #[test]
    fn evicts_in_recency_order_across_shards() {
        let b = LocMem::with_limits(LocMemLimits {
            max_entries: 10,
            ..Default::default()
        });
        for i in 0..10 {
            b.set(&format!("k{i}"), b"v", Expiry::Forever).unwrap();
        }
        // Read the even keys (newest first), then add five: the odd ones go, oldest first.
        for i in (0..10).step_by(2).rev() {
            assert!(b.get(&format!("k{i}")).unwrap().is_some());
        }
        for i in 10..15 {
            b.set(&format!("k{i}"), b"v", Expiry::Forever).unwrap();
            check_invariants(&b);
        }
        for i in 0..15 {
            let kept = b.get(&format!("k{i}")).unwrap().is_some();
            assert_eq!(kept, i >= 10 || i % 2 == 0, "k{i}");
        }
        assert_eq!(b.len(), 10);
    }

    /// Whether this thread's stripe holds `key`.
    fn in_stripe(b: &LocMem, key: &str) -> bool {
        let hash = b.hash(key);
        let map = b.lock_stripe(&b.stripes[reader_stripe()]);
        map.get(stripe_index(hash))
            .and_then(Option::as_ref)
            .is_some_and(|(h, e)| *h == hash && &*e.key == key)
    }

    /// Reads `key` (which holds a value) until it is in this thread's stripe.
    fn warm(b: &LocMem, key: &str) {
        for _ in 0..1000 {
            assert!(b.get(key).unwrap().is_some());
            if in_stripe(b, key) {
                break;
            }
        }
        assert!(in_stripe(b, key));
    }

    #[test]
    fn stripes_follow_every_change() {
        let b = LocMem::new();
        // Read until the key is in the stripe (a read less than 2 ms after another puts
        // it there), then once more from there: the same value every time.
        let read = |k: &str| {
            let first = b.get(k).unwrap().map(|i| i.value);
            for _ in 0..1000 {
                assert_eq!(b.get(k).unwrap().map(|i| i.value), first);
                if first.is_none() || in_stripe(&b, k) {
                    break;
                }
            }
            assert_eq!(b.get(k).unwrap().map(|i| i.value), first);
            check_invariants(&b);
            first
        };
        b.set("n", b"1", Expiry::Forever).unwrap();
        assert_eq!(read("n").as_deref(), Some(&b"1"[..]));
        assert!(in_stripe(&b, "n"));
        b.incr("n", 41).unwrap();
        assert!(
            !in_stripe(&b, "n"),
            "a change takes the entry out of the stripes"
        );
        assert_eq!(read("n").as_deref(), Some(&b"42"[..]));
        b.append_multi(&[("n", b"0")]).unwrap();
        assert_eq!(read("n").as_deref(), Some(&b"420"[..]));
        let big = vec![b'0'; 5000];
        b.append_multi(&[("n", &big)]).unwrap();
        assert_eq!(read("n").map(|v| v.len()), Some(5003));
        assert!(in_stripe(&b, "n"));
        b.set("n", b"7", Expiry::Forever).unwrap();
        assert_eq!(read("n").as_deref(), Some(&b"7"[..]));
        let cas = b.get("n").unwrap().unwrap().cas;
        assert_eq!(
            b.cas("n", b"8", Expiry::Forever, cas).unwrap(),
            CasOutcome::Stored
        );
        assert_eq!(read("n").as_deref(), Some(&b"8"[..]));
        assert!(b.get("n").unwrap().unwrap().cas != cas);
        b.delete("n").unwrap();
        assert!(!in_stripe(&b, "n"));
        assert_eq!(read("n"), None);
        b.set("n", b"9", Expiry::Seconds(0)).unwrap();
        assert_eq!(read("n"), None);
        // A value over the item size drops the old one, from the stripes too.
        let b = LocMem::with_limits(LocMemLimits {
            max_item_size: 4,
            ..Default::default()
        });
        b.set("n", b"1", Expiry::Forever).unwrap();
        warm(&b, "n");
        b.set("n", b"12345", Expiry::Forever).unwrap();
        assert!(b.get("n").unwrap().is_none());
        check_invariants(&b);
        // Eviction too.
        let b = LocMem::with_limits(LocMemLimits {
            max_entries: 1,
            ..Default::default()
        });
        b.set("n", b"1", Expiry::Forever).unwrap();
        warm(&b, "n");
        b.set("m", b"1", Expiry::Forever).unwrap();
        assert!(b.get("n").unwrap().is_none());
        assert!(!in_stripe(&b, "n"));
        check_invariants(&b);
    }

    #[test]
    fn a_counter_read_while_incremented_only_moves_forward() {
        let b = std::sync::Arc::new(LocMem::new());
        b.set("c", b"0", Expiry::Forever).unwrap();
        b.set("other", b"x", Expiry::Forever).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (b, stop) = (b.clone(), stop.clone());
                std::thread::spawn(move || {
                    let (mut last, mut seen) = (0u64, std::collections::HashMap::new());
                    while !stop.load(Relaxed) {
                        let got = b.get_multi(&["c", "other"]).unwrap();
                        let item = &got["c"];
                        let n: u64 = std::str::from_utf8(&item.value).unwrap().parse().unwrap();
                        assert!(n >= last, "{n} after {last}");
                        // One token, one value.
                        assert_eq!(*seen.entry(item.cas).or_insert(n), n);
                        last = n;
                    }
                    last
                })
            })
            .collect();
        for i in 1..=3000u64 {
            assert_eq!(b.incr("c", 1).unwrap(), Some(i));
        }
        stop.store(true, Relaxed);
        for r in readers {
            assert!(r.join().unwrap() <= 3000);
        }
        assert_eq!(b.get("c").unwrap().unwrap().value, b"3000");
        check_invariants(&b);
    }

    #[test]
    fn an_entry_given_a_second_chance_stays_older_than_later_writes() {
        let b = LocMem::with_limits(LocMemLimits {
            max_entries: 40,
            ..Default::default()
        });
        let key = |i: usize| format!("k{i}");
        for i in 0..20 {
            b.set(&key(i), b"v", Expiry::Forever).unwrap();
        }
        for i in 0..10 {
            b.get(&key(i)).unwrap().unwrap();
        }
        // Written after those reads, before any eviction.
        for i in 20..40 {
            b.set(&key(i), b"v", Expiry::Forever).unwrap();
        }
        // The unread ones go first, then the ones read before k20..k39 were written.
        for i in 40..60 {
            b.set(&key(i), b"v", Expiry::Forever).unwrap();
        }
        let kept: Vec<usize> = (0..60)
            .filter(|i| b.get(&key(*i)).unwrap().is_some())
            .collect();
        assert_eq!(kept, (20..60).collect::<Vec<_>>());
        check_invariants(&b);
    }

    #[test]
    fn second_chances_keep_link_order() {
        let mut t = Table::new();
        for (i, tick) in [10, 20, 30, 40].into_iter().enumerate() {
            let meta = Meta {
                cas: 1,
                expires: None,
                tick,
            };
            t.insert(i as u64, Entry::new(&format!("k{i}"), Vec::new(), meta));
        }
        // k0 (tail) was read at 25: between k1 and k2.
        t.relink_read(0, 25);
        let mut order = Vec::new();
        let mut i = t.tail;
        while i != NIL {
            order.push(t.slots[i].entry.linked.load(Relaxed));
            i = t.slots[i].prev;
        }
        assert_eq!(order, [20, 25, 30, 40]);
        // Read after everything: the head.
        t.relink_read(t.tail, 50);
        assert_eq!(t.slots[t.head].entry.linked.load(Relaxed), 50);
        assert_eq!(t.oldest(), 25);
    }

    #[test]
    fn the_documented_overheads_hold() {
        let per_entry = std::mem::size_of::<Slot>()
            + std::mem::size_of::<Entry>()
            + 2 * std::mem::size_of::<usize>() // the Arc's counts
            + std::mem::size_of::<(u64, usize)>() * 8 / 7; // the index, at most 7/8 full
        assert!(per_entry <= 170, "{per_entry}");
        assert!(STRIPE_SLOTS * std::mem::size_of::<Option<(u64, Arc<Entry>)>>() <= 4096);
        let fixed = SHARDS * std::mem::size_of::<Shard>() + STRIPES * std::mem::size_of::<Stripe>();
        assert!(fixed <= 12 * 1024, "{fixed}");
    }

    #[test]
    fn evicts_beyond_byte_limit() {
        let b = LocMem::with_limits(LocMemLimits {
            max_bytes: 100,
            ..Default::default()
        });
        for i in 0..10 {
            b.set(&format!("k{i}"), &[0u8; 30], Expiry::Forever)
                .unwrap();
        }
        assert!(b.bytes() <= 100);
        assert!(b.get("k9").unwrap().is_some());
        check_invariants(&b);
    }

    #[test]
    fn appends_keep_the_byte_count_exact() {
        let b = LocMem::new();
        b.set("list", b"ab", Expiry::Forever).unwrap();
        for _ in 0..3 {
            b.append_multi(&[("list", b"cd")]).unwrap();
        }
        assert_eq!(b.bytes(), "list".len() + "abcdcdcd".len());
        check_invariants(&b);
    }

    #[test]
    fn zero_limits_keep_nothing() {
        let b = LocMem::with_limits(LocMemLimits {
            max_entries: 0,
            ..Default::default()
        });
        b.set("a", b"1", Expiry::Forever).unwrap();
        assert!(b.add("b", b"1", Expiry::Forever).unwrap());
        assert!(b.is_empty());
        assert_eq!(b.bytes(), 0);
        check_invariants(&b);
    }

    #[test]
    fn cas_tokens_are_unique_and_change_on_every_write() {
        let b = LocMem::new();
        let mut seen = std::collections::HashSet::new();
        for i in 0..100 {
            let k = format!("k{}", i % 7);
            b.set(&k, b"1", Expiry::Forever).unwrap();
            assert!(seen.insert(b.get(&k).unwrap().unwrap().cas));
            b.incr(&k, 1).unwrap();
            assert!(seen.insert(b.get(&k).unwrap().unwrap().cas));
            b.append_multi(&[(&k, b"0")]).unwrap();
            let item = b.get(&k).unwrap().unwrap();
            assert!(seen.insert(item.cas));
            assert_eq!(
                b.cas(&k, b"x", Expiry::Forever, item.cas).unwrap(),
                CasOutcome::Stored
            );
            assert_eq!(
                b.cas(&k, b"y", Expiry::Forever, item.cas).unwrap(),
                CasOutcome::Changed
            );
        }
        check_invariants(&b);
    }

    #[test]
    fn expired_entries_are_collected_when_read() {
        let b = LocMem::new();
        b.set("k", b"v", Expiry::Seconds(0)).unwrap();
        assert_eq!(b.len(), 1);
        assert!(b.get("k").unwrap().is_none());
        assert_eq!((b.len(), b.bytes()), (0, 0));
        assert!(b.add("k", b"w", Expiry::Forever).unwrap());
        assert!(matches!(
            b.incr("k", 1),
            Err(crate::Error::NotANumber { key }) if key == "k"
        ));
        check_invariants(&b);
    }

    #[test]
    fn colliding_hashes_are_chained() {
        // Force a collision by putting two keys in the same chain through the table directly.
        let mut t = Table::new();
        let meta = Meta {
            cas: 1,
            expires: None,
            tick: 1,
        };
        t.insert(7, Entry::new("a", b"1".to_vec(), meta));
        t.insert(7, Entry::new("b", b"22".to_vec(), meta));
        t.insert(7, Entry::new("c", b"333".to_vec(), meta));
        assert_eq!(t.find(7, "a"), Some(0));
        assert_eq!(t.find(7, "c"), Some(2));
        assert_eq!(t.remove(1), 3);
        assert_eq!(
            (t.find(7, "a"), t.find(7, "b"), t.find(7, "c")),
            (Some(0), None, Some(2))
        );
        assert_eq!(t.remove(2), 4);
        assert_eq!(t.remove(0), 2);
        assert!(t.index.is_empty());
        assert_eq!((t.count, t.bytes, t.head, t.tail), (0, 0, NIL, NIL));
    }

    #[test]
    fn concurrent_use_keeps_the_counters_exact_and_the_bounds() {
        let b = std::sync::Arc::new(LocMem::with_limits(LocMemLimits {
            max_entries: 50,
            max_bytes: 4000,
            max_item_size: 200,
        }));
        let threads: Vec<_> = (0..4)
            .map(|n| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for i in 0..2000usize {
                        let k = format!("k{}", (i * 7 + n) % 120);
                        match i % 5 {
                            0 => b.set(&k, &vec![b'1'; i % 150], Expiry::Forever).unwrap(),
                            1 => drop(b.append_multi(&[(&k, b"12")]).unwrap()),
                            2 => drop(b.incr(&k, 1)),
                            3 => b.delete(&k).unwrap(),
                            _ => drop(b.get_multi(&[&k, "k1", "k2"]).unwrap()),
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(b.len() <= 50 && b.bytes() <= 4000, "{b:?}");
        check_invariants(&b);
    }
}
