//! The read path, in one place: [`Cache::read_through`] looks up, serves a hit, or loads and
//! fills, and every cached read of the library (queries, counts, raw SQL, manual values) goes
//! through it. `docs/src/protocol.md` states the steps and why they leave nothing stale:
//!
//! 1. **lookup**: one multi-get of the entry, the namespace and table versions, and the
//!    tables' write generations. A hit is an envelope whose recorded versions equal the
//!    current ones (in eviction-safe mode, whose flush lists also still carry the epochs
//!    recorded at fill time).
//! 2. **add** a pending marker (add-only): the entry's lease, which keeps other readers of
//!    the entry waiting for this fill instead of reading the database (`lease` module).
//! 3. **read**: the caller's loader reads the database.
//! 4. **register** on the flush lists, 5. **check** that no write generation moved,
//!    6. **publish** the result over the marker with CAS.
//!
//! A read of a table with an invalidation this process could not deliver yet bypasses the
//! cache (see [`Cache::pending_invalidations`]): a process always reads its own writes.
//!
//! The path has two halves around step 3: [`Cache::begin_read`] (bypass, lookup, lease) and
//! [`PendingFill::finish`] (register, check, publish). `read_through` is exactly the first
//! half, the load and the second; an async driver awaits its load between the same two
//! halves, so the protocol exists once.

use std::collections::HashMap;

use serde::{de::DeserializeOwned, Serialize};

use crate::backend::{CasOutcome, Item, Op, OpReply, Placeholder};
use crate::clock;
use crate::envelope::{envelope, open_envelope, pending_marker, PENDING_MAGIC, PENDING_TTL};
use crate::error::{Error, Result};
use crate::flush::{self, Registrations};
#[cfg(feature = "tokio")]
use crate::io::Nonblocking;
use crate::io::{drive, Blocking, Io};
use crate::key::KeySpace;
use crate::lease::{FlightGuard, Leased};
use crate::stats::{Counter, TableEvent};
use crate::timeout::{Expiry, Timeout};
use crate::{Cache, ObjectKey};

/// The items of `keys` from a multi-get's map, in the order of `keys` (a key listed twice
/// gets the item twice).
fn in_order(keys: &[&str], mut got: HashMap<String, Item>) -> Vec<Option<Item>> {
    let mut out: Vec<Option<Item>> = Vec::with_capacity(keys.len());
    for (i, k) in keys.iter().enumerate() {
        let item = got.remove(*k).or_else(|| {
            keys[..i]
                .iter()
                .position(|e| e == k)
                .and_then(|j| out[j].clone())
        });
        out.push(item);
    }
    out
}

/// Whether a stored value is a fill in progress: a pending marker, or the empty item a
/// backend's native lease stores (see [`Op::Lease`]). No envelope is empty.
pub(crate) fn is_pending(value: &[u8]) -> bool {
    value.is_empty() || value.starts_with(PENDING_MAGIC)
}

/// The keys one lookup reads, in order: the entries, the versions (namespace first), the
/// write generations, then the flush lists prefetched in eviction-safe mode.
fn lookup_order<'k>(
    keys: &[&'k str],
    version_keys: &'k [String],
    generation_keys: &'k [String],
    prefetched: &'k [String],
) -> Vec<&'k str> {
    let mut all = Vec::with_capacity(
        keys.len() + version_keys.len() + generation_keys.len() + prefetched.len(),
    );
    all.extend_from_slice(keys);
    all.extend(version_keys.iter().map(String::as_str));
    all.extend(generation_keys.iter().map(String::as_str));
    all.extend(prefetched.iter().map(String::as_str));
    all
}

/// The counters a lookup read, parsed; `None` if one is missing or not a number (then
/// they are created or repaired first, `clock::ensure`).
fn parse_counters(got: &[Option<Item>]) -> Option<Vec<u64>> {
    got.iter()
        .map(|i| i.as_ref().and_then(|i| clock::parse(&i.value)))
        .collect()
}

/// What an entry records: the versions, then the write generations of the guarded tables.
fn recorded_versions(
    versions: &[u64],
    generations: &[u64],
    tables: &[&str],
    guarded: &[&str],
) -> Vec<u64> {
    let mut recorded = Vec::with_capacity(versions.len() + guarded.len());
    recorded.extend_from_slice(versions);
    for (t, g) in tables.iter().zip(generations) {
        if guarded.contains(t) {
            recorded.push(*g);
        }
    }
    recorded
}

/// What a lookup makes of a stored item, before any I/O.
enum Verdict {
    /// A hit: the payload starts at this offset.
    Hit(usize),
    /// A hit if these guard lists still carry these epochs (eviction-safe mode).
    Guarded(usize, Vec<(String, u64)>),
    /// Recorded under versions that have changed since: it can never hit again.
    Stale,
    /// Another reader's fill in progress.
    Pending,
    /// Not an envelope.
    Garbage,
}

/// Judges `value` against the versions `recorded_now` (the entry's and the lookup's).
fn verdict(value: &[u8], recorded_now: &[u64]) -> Verdict {
    match open_envelope(value) {
        Some(e) if e.recorded_under(recorded_now) => {
            let offset = value.len() - e.payload.len();
            if e.guards.is_empty() {
                Verdict::Hit(offset)
            } else {
                Verdict::Guarded(offset, e.guards)
            }
        }
        Some(_) => Verdict::Stale,
        None if is_pending(value) => Verdict::Pending,
        None => Verdict::Garbage,
    }
}

/// What the lists read with an entry held, by name (`None`: read, and missing).
fn lists_read<'r>(read: (&'r [String], &'r [Option<Item>])) -> HashMap<&'r str, Option<&'r Item>> {
    let (asked, held) = read;
    asked
        .iter()
        .zip(held)
        .map(|(k, i)| (k.as_str(), i.as_ref()))
        .collect()
}

/// Whether every guard list carries its recorded epoch, looked up in `found` (read with
/// the entry) and then `fetched` (read after).
fn epochs_hold(
    guards: &[(String, u64)],
    found: &HashMap<&str, Option<&Item>>,
    fetched: &HashMap<String, Item>,
) -> bool {
    guards.iter().all(|(k, epoch)| {
        found
            .get(k.as_str())
            .copied()
            .unwrap_or_else(|| fetched.get(k))
            .and_then(|i| flush::epoch_of(&i.value))
            .is_some_and(|e| e == *epoch)
    })
}

/// The values among `replies` to `Op::Get(keys[i])`, by key.
pub(crate) fn values_of(keys: &[&str], replies: Vec<OpReply>) -> HashMap<String, Item> {
    keys.iter()
        .zip(replies)
        .filter_map(|(k, r)| match r {
            OpReply::Value(Some(item)) => Some((k.to_string(), item)),
            _ => None,
        })
        .collect()
}

/// What a lookup found.
#[derive(Debug)]
pub struct Lookup {
    /// The cached payload, on a hit.
    pub hit: Option<Vec<u8>>,
    /// What a fill after a miss must know about the state seen at lookup time.
    pub token: FillToken,
    /// Whether the key held another reader's pending fill marker.
    pub(crate) pending: bool,
    /// The pending marker this lookup stored under the key (a lookup that takes the lease
    /// adds it in the same round trip): this reader leads the fill.
    pub(crate) marker: Option<Placeholder>,
}

/// State observed by a lookup, carried to the fill that follows a miss.
#[derive(Debug, Clone)]
pub struct FillToken {
    key: String,
    versions: Vec<u64>,
    generation_keys: Vec<String>,
    generations: Vec<u64>,
}

impl FillToken {
    /// The entry key this token belongs to.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// What a fill did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillOutcome {
    /// Stored and registered; it stays cached.
    Stored,
    /// Another reader stored the entry first; theirs stays.
    AlreadyCached,
    /// The value exceeds the backend's item size.
    TooLarge,
    /// A write to one of the tables committed during the fill (or deleted the pending
    /// entry): nothing was published.
    Raced,
    /// A flush-list registration failed: the entry was deleted.
    Unregistered,
}

/// Which tables' write generations an entry records: any write to them makes it miss, even
/// when no flush list links the write to the entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Guarded<'a> {
    /// None: flush lists protect the entry (results made of model rows).
    #[default]
    None,
    /// Every table read (counts and aggregates: no row of theirs is in the result).
    All,
    /// These tables (read by a subquery, say, whose rows are not in the result).
    Tables(&'a [&'a str]),
}

/// One cached read, as [`Cache::read_through`] runs it: the entry key, the tables it reads,
/// which tables' writes it must miss after, its timeout, and whether it may be filled.
///
/// ```
/// use caching_core::{Cache, ReadPlan, Timeout};
/// let cache = Cache::locmem();
/// let plan = ReadPlan::new("app:q:1", &["users"]).guard_all().timeout(Timeout::Forever);
/// let (n, _) = cache
///     .read_through(&plan, || Ok::<_, std::convert::Infallible>(3u32), |_, _| Ok(()))
///     .unwrap();
/// assert_eq!(n, 3);
/// ```
#[derive(Debug, Clone)]
pub struct ReadPlan<'a> {
    key: &'a str,
    tables: &'a [&'a str],
    guarded: Guarded<'a>,
    timeout: Timeout,
    cap: Option<Expiry>,
    no_fill: Option<&'static str>,
    bypass: Option<&'static str>,
    no_wait: bool,
}

impl<'a> ReadPlan<'a> {
    /// A read of entry `key` (built by the cache's [`KeySpace`]) over `tables`.
    pub fn new(key: &'a str, tables: &'a [&'a str]) -> Self {
        ReadPlan {
            key,
            tables,
            guarded: Guarded::None,
            timeout: Timeout::Default,
            cap: None,
            no_fill: None,
            bypass: None,
            no_wait: false,
        }
    }

    /// Never wait for another reader's fill of the entry (stampede protection's waits block
    /// the calling thread): a reader that would wait reads the database at once instead, and
    /// its fill runs as usual. For callers on an async runtime's threads; what a fill checks
    /// is unchanged.
    ///
    /// ```
    /// use caching_core::{Cache, ReadPlan, ReadStart};
    /// let cache = Cache::locmem();
    /// let plan = ReadPlan::new("app:q:nowait", &["users"]).without_waiting();
    /// assert!(matches!(cache.begin_read::<u32>(&plan), ReadStart::Miss(_)));
    /// ```
    pub fn without_waiting(mut self) -> Self {
        self.no_wait = true;
        self
    }

    /// Whether a reader of this plan may wait for another reader's fill.
    pub(crate) fn waits(&self) -> bool {
        !self.no_wait
    }

    /// Any write to any of the tables makes the entry miss (counts, aggregates).
    pub fn guard_all(mut self) -> Self {
        self.guarded = Guarded::All;
        self
    }

    /// Any write to one of `tables` (a subset of the tables read) makes the entry miss.
    pub fn guard(mut self, tables: &'a [&'a str]) -> Self {
        self.guarded = Guarded::Tables(tables);
        self
    }

    /// The entry's timeout (resolved against the cache's default and maximum).
    pub fn timeout(mut self, timeout: Timeout) -> Self {
        self.timeout = timeout;
        self
    }

    /// A further cap on the entry's lifetime (replica reads).
    pub fn cap(mut self, cap: Expiry) -> Self {
        self.cap = Some(cap);
        self
    }

    /// Serve hits, but do not fill after a miss (`why` is logged and counted): reads inside
    /// a transaction, whose snapshot the fill protocol cannot order against writes.
    pub fn no_fill(mut self, why: &'static str) -> Self {
        self.no_fill = Some(why);
        self
    }

    /// Do not use the cache at all for this read (`why` is logged and counted).
    pub fn bypass(mut self, why: &'static str) -> Self {
        self.bypass = Some(why);
        self
    }

    /// The entry key.
    pub fn key(&self) -> &str {
        self.key
    }

    /// The tables read.
    pub(crate) fn tables(&self) -> &'a [&'a str] {
        self.tables
    }

    /// The tables whose write generations the entry records.
    pub(crate) fn guarded_tables(&self) -> &'a [&'a str] {
        match self.guarded {
            Guarded::None => &[],
            Guarded::All => self.tables,
            Guarded::Tables(t) => t,
        }
    }
}

/// How [`Cache::read_through`] answered a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// From the cache.
    Hit,
    /// From the loader, after a miss (the result was stored if it could be).
    Miss,
    /// From the loader without asking the cache, for the reason given.
    Bypassed(&'static str),
}

/// How a read starts ([`Cache::begin_read`]): the first half of the read path, before the
/// database read.
#[derive(Debug)]
#[must_use = "a miss must be finished (or abandoned) after the load"]
// Boxing the fill would cost every miss an allocation; the enum is built in its return slot.
#[allow(clippy::large_enum_variant)]
pub enum ReadStart<T> {
    /// From the cache: the decoded value. No database read.
    Hit(T),
    /// Do not use the cache for this read (the reason is given): read the database, fill
    /// nothing.
    Bypass(&'static str),
    /// A miss: read the database, then [`finish`](PendingFill::finish) the fill (or
    /// [`abandon`](PendingFill::abandon) it when the read failed).
    Miss(PendingFill),
}

/// A miss waiting for its value: everything the second half of the read path needs (the
/// entry key, the tables, the state seen at lookup, the lease marker this reader holds, its
/// place as this process's leader for the key). It owns all of it (`Send + 'static`), so it
/// can be held across an `.await` and finished on another thread.
///
/// Dropped without [`finish`](PendingFill::finish) (a load that failed, a future that was
/// cancelled), it gives up the lease: its marker is deleted, so readers waiting for this
/// fill stop waiting, and nothing is stored. Dropping it does backend I/O when it holds a
/// lease on a network backend.
///
/// ```
/// use caching_core::{Cache, FillOutcome, ReadPlan, ReadStart};
/// let cache = Cache::locmem();
/// let plan = ReadPlan::new("app:q:pending", &["users"]).guard_all();
/// let ReadStart::Miss(fill) = cache.begin_read::<String>(&plan) else { unreachable!() };
/// // A fill can move to another thread (an async task, a blocking pool).
/// let outcome = std::thread::spawn(move || fill.finish(&"fliggy".to_string(), |_, _| Ok(())))
///     .join()
///     .unwrap();
/// assert_eq!(outcome, Some(FillOutcome::Stored));
/// // A miss given up stores nothing.
/// let other = ReadPlan::new("app:q:given-up", &["users"]).guard_all();
/// let ReadStart::Miss(fill) = cache.begin_read::<String>(&other) else { unreachable!() };
/// fill.abandon();
/// assert!(matches!(cache.begin_read::<String>(&other), ReadStart::Miss(_)));
/// ```
#[derive(Debug)]
pub struct PendingFill {
    cache: Cache,
    key: String,
    tables: Vec<String>,
    /// `None` when the lookup failed: the value is returned, nothing is filled.
    lookup: Option<Lookup>,
    /// The pending marker this reader stored (the lease); released unless published over.
    marker: Option<Placeholder>,
    /// This process's leadership of the key's fill: dropping it wakes the readers waiting.
    _flight: Option<FlightGuard>,
    no_fill: Option<&'static str>,
    expiry: Expiry,
    /// Made by the non-blocking driver: dropped, it gives its lease up off the runtime's
    /// thread ([`Cache::release_lease_soon`]); a blocking one does so at once, as it always did.
    nonblocking: bool,
}

/// A fill whose value is registered and encoded, ready to be published
/// ([`PendingFill::prepare`]): the part of the fill that talks to the backend is all that is
/// left. `Send + 'static`; dropped unpublished, it gives up the lease like [`PendingFill`].
#[derive(Debug)]
#[must_use = "a prepared fill does nothing until published"]
pub struct PreparedFill {
    fill: PendingFill,
    work: Option<(Vec<u8>, Registrations)>,
}

impl PendingFill {
    /// The entry key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Finishes the fill with the loaded `value`: `register` names the flush lists it must be
    /// registered on (or refuses the fill, with a reason), then the protocol's register,
    /// check and publish steps run. Returns what the fill did, `None` when it was not
    /// attempted (refused, not encodable, the cache failed at lookup) or the backend failed
    /// (logged and counted). Same as [`prepare`](Self::prepare) then
    /// [`PreparedFill::publish`].
    pub fn finish<T, R>(self, value: &T, register: R) -> Option<FillOutcome>
    where
        T: Serialize + DeserializeOwned,
        R: FnOnce(&T, &mut Registrations) -> std::result::Result<(), &'static str>,
    {
        self.prepare(value, register).publish()
    }

    /// The part of [`finish`](Self::finish) that needs the value and no backend: registers
    /// and encodes it (no I/O). A refused fill, or a value that does not encode, publishes
    /// nothing; its [`publish`](PreparedFill::publish) only gives up the lease.
    pub fn prepare<T, R>(self, value: &T, register: R) -> PreparedFill
    where
        T: Serialize + DeserializeOwned,
        R: FnOnce(&T, &mut Registrations) -> std::result::Result<(), &'static str>,
    {
        if self.lookup.is_none() {
            return PreparedFill {
                fill: self,
                work: None,
            };
        }
        let cache = self.cache.clone();
        let mut regs = Registrations::new();
        let refused = self.no_fill.map_or_else(|| register(value, &mut regs), Err);
        if let Err(why) = refused {
            // The lease is given up by `publish` (or the drop): this half does no I/O.
            cache.inner.stats.inc(Counter::SkippedFills);
            self.count(TableEvent::FillSkipped(why));
            tracing::debug!(key = self.key, tables = ?self.tables, why, "cache fill skipped");
            return PreparedFill {
                fill: self,
                work: None,
            };
        }
        match cache.inner.config.codec.encode(value) {
            Ok(payload) => PreparedFill {
                fill: self,
                work: Some((payload, regs)),
            },
            Err(e) => {
                cache.inner.stats.inc(Counter::SkippedFills);
                self.count(TableEvent::FillSkipped("did not encode"));
                tracing::warn!(key = self.key, error = %e, "result did not encode; not cached");
                PreparedFill {
                    fill: self,
                    work: None,
                }
            }
        }
    }

    /// Gives the fill up (the load failed): releases the lease, stores nothing. Same as
    /// dropping it.
    pub fn abandon(self) {}

    /// Deletes this reader's marker, if it holds one (for the non-blocking driver, off a
    /// tokio runtime's thread: [`Cache::release_lease_soon`]).
    fn release(&mut self) {
        if self.marker.take().is_some() {
            if self.nonblocking {
                self.cache.release_lease_soon(&self.key);
            } else {
                self.cache.release_lease(&self.key, true);
            }
        }
    }

    fn count(&self, event: TableEvent) {
        let tables: Vec<&str> = self.tables.iter().map(String::as_str).collect();
        self.cache.inner.stats.count_tables(&tables, event);
    }
}

impl Drop for PendingFill {
    fn drop(&mut self) {
        self.release();
        // Then `flight` drops, waking this process's readers waiting for the key.
    }
}

/// How long after a cancelled lease's first release it is released again
/// ([`Cache::release_in_flight_lease`]).
#[cfg(feature = "tokio")]
const IN_FLIGHT_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// A lease a reader may hold while its future awaits the backend: dropped armed (the
/// future was cancelled between sending and reading), the key's marker is given up
/// ([`Cache::release_in_flight_lease`]), so other readers do not wait for a fill that will
/// not come. Deleting the key is safe whatever it holds by then: a published entry only
/// misses, another reader's marker only costs that reader its fill.
pub(crate) struct LeaseAttempt<'c>(pub(crate) Option<(&'c Cache, &'c str)>);

impl LeaseAttempt<'_> {
    /// The future got its answer: nothing to give up here.
    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for LeaseAttempt<'_> {
    fn drop(&mut self) {
        if let Some((cache, key)) = self.0.take() {
            cache.release_in_flight_lease(key);
        }
    }
}

impl PreparedFill {
    /// The backend part of the fill: register, check, publish (`docs/src/protocol.md`).
    /// Returns what the fill did; `None` when nothing was attempted or the backend failed
    /// (logged and counted).
    pub fn publish(self) -> Option<FillOutcome> {
        let cache = self.fill.cache.clone();
        drive(self.publish_io(&Blocking(&*cache.inner.backend)))
    }

    /// [`publish`](Self::publish) without blocking the thread (feature `tokio`): the same
    /// steps over the backend's non-blocking client
    /// ([`Backend::batch_async`](crate::Backend::batch_async)). A backend without one is
    /// published on the runtime's blocking pool (the in-process cache, which never blocks,
    /// on this thread). A dropped future gives up the lease, as a dropped fill does.
    ///
    /// ```
    /// use caching_core::{Cache, ReadPlan, ReadStart};
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let cache = Cache::locmem();
    /// let plan = ReadPlan::new("app:q:publish-async", &["users"]).guard_all();
    /// let ReadStart::Miss(fill) = cache.begin_read::<u32>(&plan) else { unreachable!() };
    /// let loaded = 7u32; // the awaited database read
    /// fill.prepare(&loaded, |_, _| Ok(())).publish_async().await;
    /// assert!(matches!(cache.begin_read::<u32>(&plan), ReadStart::Hit(7)));
    /// # });
    /// ```
    #[cfg(feature = "tokio")]
    pub async fn publish_async(self) -> Option<FillOutcome> {
        let cache = self.fill.cache.clone();
        if let Some(io) = Nonblocking::of(&*cache.inner.backend) {
            return self.publish_io(&io).await;
        }
        if !cache.inner.backend.may_block() || !self.needs_backend() {
            return self.publish();
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime
                .spawn_blocking(move || self.publish())
                .await
                .ok()
                .flatten(),
            Err(_) => self.publish(),
        }
    }

    /// The backend part of the fill over `io` (both drivers).
    async fn publish_io<I: Io>(mut self, io: &I) -> Option<FillOutcome> {
        let Some((payload, regs)) = self.work.take() else {
            // Refused or not encodable: give up the lease (if held) now (and, if this future
            // is dropped while it does, in the background).
            if self.fill.marker.take().is_some() {
                let attempt = LeaseAttempt(Some((&self.fill.cache, self.fill.key.as_str())));
                self.fill.cache.release_lease_io(io, &self.fill.key).await;
                attempt.disarm();
            }
            return None;
        };
        let fill = &mut self.fill;
        let lookup = fill.lookup.as_ref()?;
        let marker = fill.marker.take();
        let cache = &fill.cache;
        let filled = cache
            .fill_leased(
                io,
                &lookup.token,
                &payload,
                &regs,
                fill.expiry,
                marker.as_ref(),
            )
            .await;
        fill.count(TableEvent::of_fill(&filled));
        match filled {
            Ok(outcome) => Some(outcome),
            Err(e) => {
                cache.record_backend_error("fill", &e);
                None
            }
        }
    }

    /// Whether [`publish`](Self::publish) (or dropping this) talks to the backend: a fill
    /// to publish, or a lease to give up. When not, both are free of I/O.
    pub fn needs_backend(&self) -> bool {
        self.work.is_some() || self.fill.marker.is_some()
    }
}

/// Something values can be tied to with [`Cache::cached_with`]: an object, a query.
pub trait FlushTarget {
    /// The target's flush list in key space `keys`, or `None` if it has no cache key (then
    /// `cached_with` just calls the function).
    fn flush_key(&self, keys: &KeySpace) -> Option<String>;
    /// The tables the target is read from (their write generations guard the fill).
    fn tables(&self) -> Vec<String>;
    /// The rows the target points at through foreign keys. A value tied to the target is
    /// also registered on their children lists (as a cached query holding the target is), so
    /// a write to one of them (renaming a post's author) deletes it too, and a write to
    /// another of their children does not. Default: none (`#[derive(Cached)]` models name
    /// their foreign-key targets).
    fn parents(&self) -> Vec<ObjectKey> {
        Vec::new()
    }
}

impl FlushTarget for ObjectKey {
    fn flush_key(&self, keys: &KeySpace) -> Option<String> {
        Some(keys.flush_key(self))
    }
    fn tables(&self) -> Vec<String> {
        vec![self.model().to_string()]
    }
}

impl<T: FlushTarget + ?Sized> FlushTarget for &T {
    fn flush_key(&self, keys: &KeySpace) -> Option<String> {
        (**self).flush_key(keys)
    }
    fn tables(&self) -> Vec<String> {
        (**self).tables()
    }
    fn parents(&self) -> Vec<ObjectKey> {
        (**self).parents()
    }
}

impl<T: FlushTarget> FlushTarget for Option<T> {
    fn flush_key(&self, keys: &KeySpace) -> Option<String> {
        self.as_ref().and_then(|t| t.flush_key(keys))
    }
    fn tables(&self) -> Vec<String> {
        self.as_ref().map(|t| t.tables()).unwrap_or_default()
    }
    fn parents(&self) -> Vec<ObjectKey> {
        self.as_ref().map(|t| t.parents()).unwrap_or_default()
    }
}

impl Cache {
    /// Reads through the cache: a hit is decoded and returned; on a miss `load` runs, then
    /// `register` names the flush lists the result must be registered on (or refuses the
    /// fill, with a reason), and the result is filled by the protocol of
    /// `docs/src/protocol.md`. The cache failing only means `load` runs: errors are logged
    /// and counted, never returned; `load`'s own error is returned as is.
    ///
    /// ```
    /// use caching_core::{Cache, ObjectKey, ReadOutcome, ReadPlan, Registrations};
    /// let cache = Cache::locmem();
    /// let key = cache.keys().manual_key("users-page-1");
    /// let user = ObjectKey::new("users", &["1"]);
    /// let plan = ReadPlan::new(&key, &["users"]);
    /// let register = |_: &Vec<String>, regs: &mut Registrations| {
    ///     regs.row(cache.keys(), &user, &key);
    ///     Ok(())
    /// };
    /// let load = || Ok::<_, std::io::Error>(vec!["fliggy".to_string()]);
    /// let (_, first) = cache.read_through(&plan, load, register).unwrap();
    /// let (rows, second) = cache.read_through(&plan, load, register).unwrap();
    /// assert_eq!((first, second), (ReadOutcome::Miss, ReadOutcome::Hit));
    /// assert_eq!(rows, vec!["fliggy".to_string()]);
    /// ```
    pub fn read_through<T, E, L, R>(
        &self,
        plan: &ReadPlan<'_>,
        load: L,
        register: R,
    ) -> std::result::Result<(T, ReadOutcome), E>
    where
        T: Serialize + DeserializeOwned,
        L: FnOnce() -> std::result::Result<T, E>,
        R: FnOnce(&T, &mut Registrations) -> std::result::Result<(), &'static str>,
    {
        // The one protocol, in its two halves: everything before the load (lookup, lease),
        // the load, then everything after it (register, check, publish). The async driver
        // runs the same halves around an awaited load.
        match self.begin_read::<T>(plan) {
            ReadStart::Hit(value) => Ok((value, ReadOutcome::Hit)),
            ReadStart::Bypass(why) => load().map(|v| (v, ReadOutcome::Bypassed(why))),
            ReadStart::Miss(fill) => {
                let value = match load() {
                    Ok(v) => v,
                    Err(e) => {
                        fill.abandon();
                        return Err(e);
                    }
                };
                fill.finish(&value, register);
                Ok((value, ReadOutcome::Miss))
            }
        }
    }

    /// The first half of [`read_through`](Cache::read_through): everything before the
    /// database read. Decides whether the read bypasses the cache, looks the entry up (a hit
    /// is decoded and returned), and on a miss takes the entry's lease (or waits for the
    /// reader holding it) and returns the [`PendingFill`] that finishes the protocol once
    /// the caller has loaded the value. The cache failing only means a miss whose fill does
    /// nothing: errors are logged and counted, never returned.
    ///
    /// With stampede protection on, a reader that misses while another reader of this
    /// process (or another process) fills the same entry waits for it, at most
    /// [`CacheConfig::lease_wait`](crate::CacheConfig::lease_wait), blocking the calling
    /// thread: async callers run this on a blocking thread (as `caching-diesel`'s async
    /// driver does for network backends).
    ///
    /// ```
    /// use caching_core::{Cache, ReadPlan, ReadStart};
    /// let cache = Cache::locmem();
    /// let plan = ReadPlan::new("app:q:begin", &["users"]).guard_all();
    /// let ReadStart::Miss(fill) = cache.begin_read::<u32>(&plan) else { unreachable!() };
    /// let loaded = 7u32; // the database read (awaited, in async code)
    /// fill.finish(&loaded, |_, _| Ok(()));
    /// assert!(matches!(cache.begin_read::<u32>(&plan), ReadStart::Hit(7)));
    /// ```
    pub fn begin_read<T: DeserializeOwned>(&self, plan: &ReadPlan<'_>) -> ReadStart<T> {
        let io = Blocking(&*self.inner.backend);
        match drive(self.begin_read_io(&io, plan)) {
            Some(start) => start,
            // (The blocking driver never defers.)
            None => ReadStart::Bypass("the cache could not be read"),
        }
    }

    /// [`begin_read`](Cache::begin_read) without blocking the thread (feature `tokio`): the
    /// same protocol (the same code: `io` module) over the backend's non-blocking client
    /// ([`Backend::batch_async`](crate::Backend::batch_async)); a lease's waits are tokio
    /// timers. `None` when that cannot be done here: the backend has no non-blocking client
    /// (the in-process cache never blocks: call [`begin_read`](Cache::begin_read)), or the
    /// read needs a server check first (several servers, a connection opened since the last
    /// check; anything this call stored is given up first). The caller then runs
    /// [`begin_read`](Cache::begin_read) where blocking is allowed.
    ///
    /// A dropped future gives up the lease it may have taken.
    ///
    /// ```
    /// use caching_core::{Cache, ReadPlan};
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let cache = Cache::locmem();
    /// let plan = ReadPlan::new("app:q:begin-async", &["users"]).guard_all();
    /// // The in-process cache has no non-blocking client: it is read with begin_read.
    /// assert!(cache.begin_read_async::<u32>(&plan).await.is_none());
    /// # });
    /// ```
    #[cfg(feature = "tokio")]
    pub async fn begin_read_async<T: DeserializeOwned>(
        &self,
        plan: &ReadPlan<'_>,
    ) -> Option<ReadStart<T>> {
        let io = Nonblocking::of(&*self.inner.backend)?;
        self.begin_read_io(&io, plan).await
    }

    /// The first half of the read over `io` (both drivers); `None` when the non-blocking
    /// driver must leave this read to the blocking one.
    async fn begin_read_io<T: DeserializeOwned, I: Io>(
        &self,
        io: &I,
        plan: &ReadPlan<'_>,
    ) -> Option<ReadStart<T>> {
        let key = plan.key;
        if let Some(why) = self.bypass_of(plan) {
            tracing::debug!(key, tables = ?plan.tables, why, "cache bypassed");
            return Some(ReadStart::Bypass(why));
        }
        let guarded = plan.guarded_tables();
        // With stampede protection on, the lookup also tries to take the lease (the pending
        // marker's `add`, in the same round trip): a miss then already leads its fill.
        let leasing = plan.no_fill.is_none() && !self.inner.config.lease_wait.is_zero();
        let lease = leasing.then(|| {
            self.plan_expiry(plan)
                .min(Expiry::from_duration(PENDING_TTL))
        });
        let mut lookup = match self
            .lookup_io(io, &[key], plan.tables, guarded, lease)
            .await
        {
            Ok(Some(mut l)) => l.pop(),
            Ok(None) => return None,
            Err(e) => {
                self.record_backend_error("lookup", &e);
                // The lease may have been stored before the failure: do not leave a marker
                // that makes other readers wait. (The non-blocking driver's guard already
                // gave it up, in the background.)
                if lease.is_some() && io.blocking().is_some() {
                    self.release_lease_io(io, key).await;
                }
                None
            }
        };
        if let Some(bytes) = lookup.as_ref().and_then(|l| l.hit.as_deref()) {
            match self.inner.config.codec.decode::<T>(bytes) {
                Ok(v) => return Some(ReadStart::Hit(self.served_hit(plan, v))),
                Err(e) => self.record_decode_error_io(io, key, &e).await,
            }
        }
        // Stampede protection: lead this key's fill, or wait for the reader that does.
        let mut marker = None;
        let mut flight = None;
        if leasing {
            if let Some(l) = lookup.take() {
                match self.lease(io, plan, l).await {
                    Leased::Hit(bytes) => match self.inner.config.codec.decode::<T>(&bytes) {
                        Ok(v) => return Some(ReadStart::Hit(self.served_hit(plan, v))),
                        Err(e) => self.record_decode_error_io(io, key, &e).await,
                    },
                    Leased::Leader {
                        lookup: l,
                        marker: m,
                        flight: f,
                    } => {
                        lookup = Some(l);
                        marker = Some(m);
                        flight = f;
                    }
                    Leased::Proceed {
                        lookup: l,
                        flight: f,
                    } => {
                        lookup = Some(l);
                        flight = f;
                    }
                }
            }
        }
        self.inner.stats.inc(Counter::Misses);
        self.inner.stats.count_tables(plan.tables, TableEvent::Miss);
        tracing::debug!(key, tables = ?plan.tables, "cache miss");
        let fill = PendingFill {
            cache: self.clone(),
            key: key.to_string(),
            tables: plan.tables.iter().map(|t| t.to_string()).collect(),
            lookup,
            marker,
            _flight: flight,
            no_fill: plan.no_fill,
            expiry: self.plan_expiry(plan),
            nonblocking: io.blocking().is_none(),
        };
        self.step("read");
        Some(ReadStart::Miss(fill))
    }

    /// Counts and logs a hit of `plan`, and hands its value back.
    fn served_hit<T>(&self, plan: &ReadPlan<'_>, value: T) -> T {
        self.inner.stats.inc(Counter::Hits);
        self.inner.stats.count_tables(plan.tables, TableEvent::Hit);
        tracing::debug!(key = plan.key, tables = ?plan.tables, "cache hit");
        value
    }

    /// Gives up a lease this reader holds (its fill will not happen): deletes its marker, so
    /// readers waiting in other processes stop waiting.
    fn release_lease(&self, key: &str, held: bool) {
        if held {
            drive(self.release_lease_io(&Blocking(&*self.inner.backend), key));
        }
    }

    /// [`release_lease`](Cache::release_lease) over `io`.
    async fn release_lease_io<I: Io>(&self, io: &I, key: &str) {
        if let Err(e) = io.delete(key).await {
            self.record_backend_error("lease release", &e);
        }
    }

    /// Gives up a lease whose request may still be in flight: a future dropped between
    /// sending a lease (or a marker's `add`) and reading the answer. The request went out on
    /// a connection that was dropped with the future, so it may reach the server after a
    /// delete sent on another connection: the key is deleted now and once more after
    /// `IN_FLIGHT_GRACE` (off the runtime's threads, as [`release_lease_soon`] does). A
    /// request still unprocessed after that (a server paused in between) leaves its marker
    /// until it expires (at most `PENDING_TTL`): readers of the key wait `lease_wait` and
    /// read the database meanwhile, and nothing is stale.
    ///
    /// [`release_lease_soon`]: Cache::release_lease_soon
    pub(crate) fn release_in_flight_lease(&self, key: &str) {
        #[cfg(feature = "tokio")]
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let cache = self.clone();
            let key = key.to_string();
            drop(handle.spawn(async move {
                cache.release_lease_soon(&key);
                tokio::time::sleep(IN_FLIGHT_GRACE).await;
                cache.release_lease_soon(&key);
            }));
            return;
        }
        self.release_lease(key, true);
    }

    /// Gives up a lease from a destructor: on a tokio runtime's thread with a backend that
    /// may block, on the runtime's blocking pool (a dropped future must not block its
    /// thread); anywhere else, now.
    pub(crate) fn release_lease_soon(&self, key: &str) {
        #[cfg(feature = "tokio")]
        if self.inner.backend.may_block() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let cache = self.clone();
                let key = key.to_string();
                drop(handle.spawn_blocking(move || cache.release_lease(&key, true)));
                return;
            }
        }
        self.release_lease(key, true);
    }

    /// Why a read must not use the cache (the plan says so, or an invalidation of one of its
    /// tables is still undelivered), counted; `None` when it may.
    fn bypass_of(&self, plan: &ReadPlan<'_>) -> Option<&'static str> {
        let why = plan.bypass.or_else(|| {
            self.inner
                .delivery
                .blocks(plan.tables)
                .then_some("undelivered invalidation")
        })?;
        self.inner.stats.inc(Counter::BypassedReads);
        self.inner
            .stats
            .count_tables(plan.tables, TableEvent::Bypassed(why));
        Some(why)
    }

    /// The expiry of a plan's entry: its timeout, resolved, under its cap.
    pub(crate) fn plan_expiry(&self, plan: &ReadPlan<'_>) -> Expiry {
        let expiry = self.expiry(plan.timeout);
        plan.cap.map_or(expiry, |cap| expiry.min(cap))
    }

    /// Counts a payload that failed to decode and deletes it; it is served as a miss.
    fn record_decode_error(&self, key: &str, err: &Error) {
        drive(self.record_decode_error_io(&Blocking(&*self.inner.backend), key, err));
    }

    /// [`record_decode_error`](Cache::record_decode_error) over `io`.
    async fn record_decode_error_io<I: Io>(&self, io: &I, key: &str, err: &Error) {
        self.inner.stats.inc(Counter::DecodeErrors);
        tracing::warn!(key, error = %err, "cached value did not decode; deleting it");
        if let Err(e) = io.delete(key).await {
            self.record_backend_error("delete", &e);
        }
    }

    #[cfg(feature = "test-hooks")]
    pub(crate) fn lookup_inner(
        &self,
        key: &str,
        tables: &[&str],
        guarded: &[&str],
    ) -> Result<Lookup> {
        drive(self.lookup_one(&Blocking(&*self.inner.backend), key, tables, guarded))
            .map(|l| l.expect("the blocking driver never defers"))
    }

    /// [`lookup_inner`](Cache::lookup_inner) over `io`; `None` when the non-blocking driver
    /// defers the read (see [`lookup_io`](Cache::lookup_io)).
    pub(crate) async fn lookup_one<I: Io>(
        &self,
        io: &I,
        key: &str,
        tables: &[&str],
        guarded: &[&str],
    ) -> Result<Option<Lookup>> {
        // One key in, one lookup out.
        match self.lookup_io(io, &[key], tables, guarded, None).await? {
            None => Ok(None),
            Some(mut l) => l.pop().map(Some).ok_or_else(|| Error::Protocol {
                server: self.inner.backend.name().to_string(),
                line: "a lookup of one key returned none".to_string(),
            }),
        }
    }

    /// Step 1 for several entries over the same tables in one multi-get: each entry's hit
    /// (if any) and its fill token, in the order of `keys`.
    pub(crate) fn lookup_many(
        &self,
        keys: &[&str],
        tables: &[&str],
        guarded: &[&str],
    ) -> Result<Vec<Lookup>> {
        drive(self.lookup_io(&Blocking(&*self.inner.backend), keys, tables, guarded, None))
            .map(|l| l.expect("the blocking driver never defers"))
    }

    /// [`lookup_many`](Cache::lookup_many) over `io`; with `lease` (one key only), the same
    /// batch then adds a pending marker under the key (expiring after `lease`), ordered after
    /// the reads: the lookup's [`Lookup::marker`] says whether it was stored.
    ///
    /// `Ok(None)` only from a driver that must not block ([`Io::blocking`] is `None`), when
    /// a server check is due (a connection was opened since the last one): the read is left
    /// to the blocking driver, which checks first. It is checked before the read where
    /// possible; a lease the read took is given up first.
    async fn lookup_io<I: Io>(
        &self,
        io: &I,
        keys: &[&str],
        tables: &[&str],
        guarded: &[&str],
        lease: Option<Expiry>,
    ) -> Result<Option<Vec<Lookup>>> {
        if io.blocking().is_none() && !self.servers_checked() {
            return Ok(None);
        }
        self.step("lookup");
        let (version_keys, mut generation_keys) = self.counter_keys(tables);
        let n = keys.len();
        let counted = version_keys.len() + generation_keys.len();
        let prefetch = self.prefetch_of(keys);
        let prefetched = prefetch.as_deref().unwrap_or_default();
        let all = lookup_order(keys, &version_keys, &generation_keys, prefetched);
        // Dropped before its lease is handed over (a cancelled future: while the lease's
        // request is in flight, or at a later await of this lookup), the lease this read
        // may have taken is given up.
        let mut attempt = LeaseAttempt(None);
        let blocking = io.blocking().is_some();
        // A failure once the lease was asked for: with the blocking driver the caller gives
        // the lease up (now, on this thread); with the non-blocking one the guard does, in the
        // background, which a cancellation cannot interrupt.
        let failed = |attempt: LeaseAttempt<'_>, e: Error| {
            if blocking {
                attempt.disarm();
            }
            Err(e)
        };
        // What each key of `all` holds, in the order of `all`.
        let (mut got, mut marker) = match lease.filter(|_| n == 1) {
            None => (in_order(&all, io.get_multi(&all).await?), None),
            Some(expiry) => {
                // The entry's read takes its lease if it is missing (one op: memcached's meta
                // get vivifies it, costing a hit nothing).
                let marker = pending_marker();
                let mut ops: Vec<Op<'_>> = all.iter().map(|k| Op::Get(k)).collect();
                ops[0] = Op::Lease(keys[0], &marker, expiry);
                attempt.0 = Some((self, keys[0]));
                let replies = match io.batch(&[&ops]).await {
                    Ok(mut replies) => replies.pop().unwrap_or_default(),
                    Err(e) => return failed(attempt, e),
                };
                let mut won = None;
                let mut got: Vec<Option<Item>> = replies
                    .into_iter()
                    .map(|r| match r {
                        OpReply::Value(item) => item,
                        OpReply::Leased { found, won: w } => {
                            won = w;
                            found
                        }
                        _ => None,
                    })
                    .collect();
                got.resize(all.len(), None);
                if won.is_none() {
                    // Nothing of ours to give up.
                    attempt.0 = None;
                }
                (got, won)
            }
        };
        // A server reached on a new connection may have come back empty: if so the
        // namespace was just bumped, and the lookup is repeated to see it.
        if blocking {
            match self.watch_servers() {
                Ok(false) => {}
                Ok(true) => match io.get_multi(&all).await {
                    Ok(again) => got = in_order(&all, again),
                    Err(e) => return failed(attempt, e),
                },
                Err(e) => return failed(attempt, e),
            }
        } else if !self.servers_checked() {
            // Left to the blocking driver, which checks first; the lease this read took (if
            // any) is given up by the guard, in the background.
            drop(marker);
            return Ok(None);
        }
        let counters = match parse_counters(&got[n..n + counted]) {
            Some(counters) => counters,
            None => match clock::ensure(io, &all[n..n + counted]).await {
                Ok(counters) => counters,
                Err(e) => return failed(attempt, e),
            },
        };
        let (versions, generations) = counters.split_at(version_keys.len());
        let mut recorded_now = recorded_versions(versions, generations, tables, guarded);
        let (entries, rest) = got.split_at_mut(n);
        let lists = (prefetched, &rest[counted..]);
        let mut out = Vec::with_capacity(n);
        for (i, key) in keys.iter().enumerate() {
            // A key whose marker this lookup stored is not this lookup's to clean up.
            let offset = match entries[i].as_ref() {
                Some(item) => {
                    self.judge(io, key, &item.value, &recorded_now, lists, marker.is_none())
                        .await
                }
                None => None,
            };
            let pending = entries[i]
                .as_ref()
                .is_some_and(|item| is_pending(&item.value));
            // The payload is the entry's tail: taken, not copied (a key listed twice hits
            // twice: the copy stays for the later one).
            let hit = offset.and_then(|off| {
                let item = if keys[i + 1..].contains(key) {
                    entries[i].clone()
                } else {
                    entries[i].take()
                };
                item.map(|item| {
                    let mut v = item.value;
                    v.drain(..off);
                    v
                })
            });
            // The last lookup takes what the others copy (a lookup of one key copies none).
            let last = i + 1 == n;
            out.push(Lookup {
                hit,
                pending,
                marker: if last { marker.take() } else { marker.clone() },
                token: FillToken {
                    key: key.to_string(),
                    versions: if last {
                        std::mem::take(&mut recorded_now)
                    } else {
                        recorded_now.clone()
                    },
                    generation_keys: if last {
                        std::mem::take(&mut generation_keys)
                    } else {
                        generation_keys.clone()
                    },
                    generations: generations.to_vec(),
                },
            });
        }
        // Handed over with the lookup (its `marker`).
        attempt.disarm();
        Ok(Some(out))
    }

    /// The counters a lookup of entries over `tables` reads after them: the namespace and
    /// table versions, and the tables' write generations.
    fn counter_keys(&self, tables: &[&str]) -> (Vec<String>, Vec<String>) {
        let ks = &self.inner.keys;
        let mut version_keys = Vec::with_capacity(tables.len() + 1);
        version_keys.push(ks.namespace_key());
        version_keys.extend(tables.iter().map(|t| ks.version_key(t)));
        let generation_keys = tables.iter().map(|t| ks.generation_key(t)).collect();
        (version_keys, generation_keys)
    }

    /// Eviction-safe mode: the lists the entry's guards named last time, read with it (a
    /// lookup of one entry only).
    fn prefetch_of(&self, keys: &[&str]) -> Option<std::sync::Arc<[String]>> {
        match keys {
            [key] if self.inner.config.eviction_safe => self.inner.guard_memo.get(key),
            _ => None,
        }
    }

    /// Whether a stored item is a hit under the versions `recorded_now`: if so, where its
    /// payload starts. Entries that can never hit again, and garbage, are deleted (if
    /// `clean`). `lists` are flush lists read with the entry (names asked for, and what each
    /// held).
    async fn judge<I: Io>(
        &self,
        io: &I,
        key: &str,
        value: &[u8],
        recorded_now: &[u64],
        lists: (&[String], &[Option<Item>]),
        clean: bool,
    ) -> Option<usize> {
        let stays = match verdict(value, recorded_now) {
            Verdict::Hit(offset) => return Some(offset),
            Verdict::Guarded(offset, guards) => {
                if self.guards_hold(io, key, &guards, lists).await {
                    return Some(offset);
                }
                // A flush list it relies on was evicted (or evicted and re-created): a
                // write may have missed it.
                false
            }
            // Recorded under versions that have changed since: it can never hit again, and
            // while it sits there the add-only fill after this miss cannot replace it.
            Verdict::Stale => false,
            // Another reader's fill in progress: a miss, and not ours to delete.
            Verdict::Pending => true,
            Verdict::Garbage => {
                self.inner.stats.inc(Counter::DecodeErrors);
                false
            }
        };
        if !stays && clean {
            let _ = io.delete(key).await;
        }
        None
    }

    /// Eviction-safe mode: whether every flush list entry `key` is registered on still
    /// exists with the epoch recorded at fill time. Lists among `read` (names asked for with
    /// the entry, and what was found) cost nothing more; the others one more round trip. A
    /// backend error reads as "does not hold". The names are remembered for the key's next
    /// lookup (`guards` module).
    async fn guards_hold<I: Io>(
        &self,
        io: &I,
        key: &str,
        guards: &[(String, u64)],
        read: (&[String], &[Option<Item>]),
    ) -> bool {
        let found = lists_read(read);
        let missing: Vec<&str> = guards
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !found.contains_key(k))
            .collect();
        let fetched = if missing.is_empty() {
            HashMap::new()
        } else {
            match io.get_multi(&missing).await {
                Ok(lists) => lists,
                Err(e) => {
                    self.record_backend_error("guard check", &e);
                    return false;
                }
            }
        };
        self.inner.guard_memo.remember(key, guards);
        epochs_hold(guards, &found, &fetched)
    }

    /// The hit half of [`begin_read`](Cache::begin_read) for async callers on a network
    /// backend, without blocking the thread: reads the entry and its counters through the
    /// backend's non-blocking client ([`Backend::get_multi_async`](crate::Backend::get_multi_async))
    /// and returns the value when that is a hit the lookup would serve (counted and logged
    /// as one). `None` in every other case: the backend has no non-blocking client, the
    /// read bypasses the cache, a miss, an entry that is stale, pending or garbage, a
    /// guard list not read with the entry, a counter missing, a server reached on a new
    /// connection (its contents must be checked first), a backend error. Nothing is counted
    /// or changed then: the caller runs [`begin_read`](Cache::begin_read) where blocking is
    /// allowed, which looks again and does what the protocol asks (lease, clean-up, repair).
    ///
    /// Decides exactly as the lookup does (the same keys, the same judgement of the
    /// entry), so a hit here is a hit there.
    ///
    /// ```
    /// use caching_core::{Cache, ReadPlan, ReadStart};
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let cache = Cache::locmem();
    /// let plan = ReadPlan::new("app:q:hit-async", &["users"]).guard_all();
    /// // The in-process cache has no non-blocking client: it is read inline with begin_read.
    /// assert_eq!(cache.try_hit_async::<u32>(&plan).await, None);
    /// # });
    /// ```
    pub async fn try_hit_async<T: DeserializeOwned>(&self, plan: &ReadPlan<'_>) -> Option<T> {
        if plan.bypass.is_some() || self.inner.delivery.blocks(plan.tables) {
            return None;
        }
        if !self.servers_checked() {
            return None;
        }
        let key = plan.key;
        let tables = plan.tables;
        let (version_keys, generation_keys) = self.counter_keys(tables);
        let prefetch = self.prefetch_of(&[key]);
        let prefetched = prefetch.as_deref().unwrap_or_default();
        let all = lookup_order(&[key], &version_keys, &generation_keys, prefetched);
        let reads = self.inner.backend.get_multi_async(&all)?;
        self.step("lookup");
        let got = match reads.await {
            Ok(got) if got.len() == all.len() => got,
            _ => return None,
        };
        // A connection opened during the read may be to a server that came back empty.
        if !self.servers_checked() {
            return None;
        }
        let counted = version_keys.len() + generation_keys.len();
        let counters = parse_counters(&got[1..1 + counted])?;
        let (versions, generations) = counters.split_at(version_keys.len());
        let recorded_now = recorded_versions(versions, generations, tables, plan.guarded_tables());
        let value = &got[0].as_ref()?.value;
        let offset = match verdict(value, &recorded_now) {
            Verdict::Hit(offset) => offset,
            Verdict::Guarded(offset, guards) => {
                let found = lists_read((prefetched, &got[1 + counted..]));
                if guards.iter().any(|(k, _)| !found.contains_key(k.as_str())) {
                    return None;
                }
                self.inner.guard_memo.remember(key, &guards);
                if !epochs_hold(&guards, &found, &HashMap::new()) {
                    return None;
                }
                offset
            }
            Verdict::Stale | Verdict::Pending | Verdict::Garbage => return None,
        };
        let value = self.inner.config.codec.decode::<T>(&value[offset..]).ok()?;
        Some(self.served_hit(plan, value))
    }

    /// Stores `payload` after a miss, counting the outcome; on an error, deletes whatever
    /// the fill may have stored (an entry whose registration is unknown must not stay).
    pub(crate) fn fill_counted(
        &self,
        token: &FillToken,
        payload: &[u8],
        regs: &Registrations,
        expiry: Expiry,
    ) -> Result<FillOutcome> {
        let io = Blocking(&*self.inner.backend);
        drive(self.fill_leased(&io, token, payload, regs, expiry, None))
    }

    /// [`fill_counted`](Cache::fill_counted) for a reader that may already hold the key's
    /// lease: `marker` is the pending marker it stored (the fill publishes over it, or deletes
    /// it), `None` to store one now.
    async fn fill_leased<I: Io>(
        &self,
        io: &I,
        token: &FillToken,
        payload: &[u8],
        regs: &Registrations,
        expiry: Expiry,
        marker: Option<&Placeholder>,
    ) -> Result<FillOutcome> {
        // Dropped before the fill is done (a cancelled future), the marker it holds or may
        // have added is given up.
        let attempt = LeaseAttempt(Some((self, &token.key)));
        let outcome = self
            .fill_inner(io, token, payload, regs, expiry, marker)
            .await;
        attempt.disarm();
        let counter = match &outcome {
            Ok(FillOutcome::Stored) => Counter::Fills,
            _ => Counter::SkippedFills,
        };
        self.inner.stats.inc(counter);
        tracing::debug!(key = token.key, outcome = ?outcome, "cache fill");
        // An entry whose registration is unknown must not stay, nor must a lease's marker
        // that will never be published over.
        if outcome.is_err() || (marker.is_some() && matches!(outcome, Ok(FillOutcome::TooLarge))) {
            let _ = io.delete(&token.key).await;
        }
        outcome
    }

    /// Add a pending marker (add-only), register on the flush lists, re-check the write
    /// generations seen at lookup, then publish the result over the marker with CAS. On a
    /// race or a failed registration the marker is deleted, so nothing stale or unregistered
    /// stays, and no reader ever sees the result before the check passed.
    async fn fill_inner<I: Io>(
        &self,
        io: &I,
        token: &FillToken,
        payload: &[u8],
        regs: &Registrations,
        expiry: Expiry,
        leased: Option<&Placeholder>,
    ) -> Result<FillOutcome> {
        let backend = &*self.inner.backend;
        if token.versions.len() > usize::from(u8::MAX) {
            // More tables than the envelope records: not cacheable (never truncate a guard).
            return Ok(FillOutcome::TooLarge);
        }
        // Eviction-safe mode guards every list the fill writes to: the rows' own lists and
        // their foreign-key targets' lists, which hold the links through which a write to a
        // parent (a child created or moved under it) reaches this entry.
        let guard_lists: Vec<&str> = if self.inner.config.eviction_safe {
            regs.lists().collect()
        } else {
            Vec::new()
        };
        if guard_lists.len() > usize::from(u16::MAX) {
            return Ok(FillOutcome::TooLarge);
        }
        let guard_bytes: usize = guard_lists.iter().map(|l| l.len() + 9).sum::<usize>() + 2;
        if token.versions.len() * 8 + guard_bytes + payload.len() + token.key.len() + 64
            > backend.max_item_size()
        {
            return Ok(FillOutcome::TooLarge);
        }
        let own;
        let marker: &Placeholder = match leased {
            Some(m) => m,
            None => {
                self.step("add");
                own = Placeholder {
                    value: pending_marker().to_vec(),
                    cas: None,
                };
                let pending = expiry.min(Expiry::from_duration(PENDING_TTL));
                if !io.add(&token.key, &own.value, pending).await? {
                    return Ok(FillOutcome::AlreadyCached);
                }
                &own
            }
        };
        // Register, then check (one batch: the check reads after every registration).
        let mut refs: Vec<&str> = vec![&token.key];
        refs.extend(token.generation_keys.iter().map(String::as_str));
        let gens_end = refs.len();
        refs.extend(guard_lists.iter().copied());
        self.step("register");
        let (reg, now) = flush::register(
            io,
            &self.inner.keys,
            regs,
            self.inner.config.eviction_safe,
            &refs,
        )
        .await?;
        if reg.overflows > 0 {
            self.inner.stats.add(Counter::Overflows, reg.overflows);
        }
        if !reg.complete {
            io.delete(&token.key).await?;
            return Ok(FillOutcome::Unregistered);
        }
        self.step("check");
        let unchanged = refs[1..gens_end]
            .iter()
            .zip(&token.generations)
            .all(|(k, g0)| now.get(*k).and_then(|i| clock::parse(&i.value)) == Some(*g0));
        if !unchanged {
            io.delete(&token.key).await?;
            return Ok(FillOutcome::Raced);
        }
        // Our marker must still be there: a writer that found the registration deletes it,
        // and then this result must not be published.
        let Some(cas) = now.get(&token.key).filter(|i| marker.is(i)).map(|i| i.cas) else {
            return Ok(FillOutcome::Raced);
        };
        // Eviction-safe mode: record each list's epoch, read after our registration and only
        // if the list still holds what we registered on it (a list evicted and re-created
        // meanwhile does not).
        let mut guards = Vec::with_capacity(guard_lists.len());
        for list in &guard_lists {
            let epoch = now
                .get(*list)
                .filter(|i| flush::holds_all(&i.value, regs.tokens_of(list)))
                .and_then(|i| flush::epoch_of(&i.value));
            match epoch {
                Some(e) => guards.push((list.to_string(), e)),
                None => {
                    io.delete(&token.key).await?;
                    return Ok(FillOutcome::Unregistered);
                }
            }
        }
        let value = envelope(&token.versions, &guards, payload);
        self.step("publish");
        match io.cas(&token.key, &value, expiry, cas).await? {
            CasOutcome::Stored => {
                if !guards.is_empty() {
                    self.inner.guard_memo.remember(&token.key, &guards);
                }
                Ok(FillOutcome::Stored)
            }
            // Deleted (or replaced) by a writer since the check: its invalidation wins.
            CasOutcome::Changed | CasOutcome::Missing => Ok(FillOutcome::Raced),
        }
    }

    /// Manual caching: returns the value cached under `key`, or calls `f`, caches its result
    /// for `timeout` (a [`Timeout`], or a `Duration`) and returns it. The cache being down
    /// only means `f` runs every time.
    ///
    /// ```
    /// use caching_core::{Cache, Timeout};
    /// use std::time::Duration;
    /// let cache = Cache::locmem();
    /// let v: String = cache.cached("greeting", Timeout::Default, || "hello".to_string());
    /// assert_eq!(v, "hello");
    /// let n: u32 = cache.cached("answer", Duration::from_secs(60), || 42);
    /// assert_eq!(n, 42);
    /// ```
    pub fn cached<T, F>(&self, key: &str, timeout: impl Into<Timeout>, f: F) -> T
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> T,
    {
        let k = self.keys().manual_key(key);
        let plan = ReadPlan::new(&k, &[]).timeout(timeout.into());
        self.read_value(&plan, f, |_, _| Ok(()))
    }

    /// [`read_through`](Cache::read_through) for a loader that cannot fail (manual caching).
    fn read_value<T, R>(&self, plan: &ReadPlan<'_>, f: impl FnOnce() -> T, register: R) -> T
    where
        T: Serialize + DeserializeOwned,
        R: FnOnce(&T, &mut Registrations) -> std::result::Result<(), &'static str>,
    {
        let load = || Ok::<T, std::convert::Infallible>(f());
        match self.read_through(plan, load, register) {
            Ok((v, _)) => v,
            Err(never) => match never {},
        }
    }

    /// Like [`cached`](Cache::cached), with the value tied to `target`'s flush list: a write
    /// that invalidates the target (an object, a query) deletes the value. A target without a
    /// flush key makes this a plain call of `f`.
    ///
    /// ```
    /// use caching_core::{Cache, Invalidation, ObjectKey, Timeout};
    /// let cache = Cache::locmem();
    /// let user = ObjectKey::new("users", &["1"]);
    /// let a: u32 = cache.cached_with(&user, "score", Timeout::Forever, || 1);
    /// let b: u32 = cache.cached_with(&user, "score", Timeout::Forever, || 2);
    /// assert_eq!((a, b), (1, 1));
    /// let mut inv = Invalidation::new();
    /// inv.object(user.clone());
    /// cache.invalidate(&inv).unwrap();
    /// let c: u32 = cache.cached_with(&user, "score", Timeout::Forever, || 3);
    /// assert_eq!(c, 3);
    /// ```
    pub fn cached_with<T, F, X>(
        &self,
        target: &X,
        key: &str,
        timeout: impl Into<Timeout>,
        f: F,
    ) -> T
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> T,
        X: FlushTarget + ?Sized,
    {
        self.cached_with_all([target], key, timeout, f)
    }

    /// Like [`cached_with`](Cache::cached_with), with the value tied to several targets: it
    /// is registered on the flush list of every one of them, so a write that invalidates any
    /// of them deletes it (a rendered list of rows, a value computed from two objects).
    /// Targets of different types mix as `&dyn FlushTarget`.
    ///
    /// The stored key combines `key` with every target's flush list, in order. With one target
    /// this is exactly `cached_with`; with none it is [`cached`](Cache::cached) (nothing but
    /// the timeout removes the value); if any target has no flush key, `f` is just called.
    /// The fill follows the protocol of `docs/src/protocol.md`: a write to a target's table
    /// while `f` runs leaves nothing cached.
    ///
    /// ```
    /// use caching_core::{Cache, FlushTarget, Invalidation, ObjectKey, Timeout};
    /// let cache = Cache::locmem();
    /// let (post, author) = (ObjectKey::new("posts", &["1"]), ObjectKey::new("users", &["7"]));
    /// let targets: [&dyn FlushTarget; 2] = [&post, &author];
    /// let a: String = cache.cached_with_all(targets, "byline", Timeout::Forever, || "v1".into());
    /// let b: String = cache.cached_with_all(targets, "byline", Timeout::Forever, || "v2".into());
    /// assert_eq!((a.as_str(), b.as_str()), ("v1", "v1"));
    /// // A write to either target deletes the value.
    /// let mut inv = Invalidation::new();
    /// inv.object(author.clone());
    /// cache.invalidate(&inv).unwrap();
    /// let c: String = cache.cached_with_all(targets, "byline", Timeout::Forever, || "v3".into());
    /// assert_eq!(c, "v3");
    /// // A slice of one target type works too.
    /// let rows = vec![ObjectKey::new("posts", &["1"]), ObjectKey::new("posts", &["2"])];
    /// let n: usize = cache.cached_with_all(&rows, "count", Timeout::Forever, || rows.len());
    /// assert_eq!(n, 2);
    /// ```
    pub fn cached_with_all<T, F, I>(
        &self,
        targets: I,
        key: &str,
        timeout: impl Into<Timeout>,
        f: F,
    ) -> T
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> T,
        I: IntoIterator,
        I::Item: FlushTarget,
    {
        let load = || Ok::<T, std::convert::Infallible>(f());
        match self.try_cached_with_all(targets, key, timeout, load) {
            Ok(v) => v,
            Err(never) => match never {},
        }
    }

    /// [`cached_with_all`](Cache::cached_with_all) for a function that can fail: its error is
    /// returned as is and nothing is cached. The cache failing still only means `f` runs.
    ///
    /// ```
    /// use caching_core::{Cache, ObjectKey, Timeout};
    /// let cache = Cache::locmem();
    /// let user = [ObjectKey::new("users", &["1"])];
    /// let bad: Result<u32, &str> = cache.try_cached_with_all(&user, "n", Timeout::Forever, || Err("no"));
    /// assert_eq!(bad, Err("no"));
    /// let ok: Result<u32, &str> = cache.try_cached_with_all(&user, "n", Timeout::Forever, || Ok(5));
    /// let hit: Result<u32, &str> = cache.try_cached_with_all(&user, "n", Timeout::Forever, || Ok(6));
    /// assert_eq!((ok, hit), (Ok(5), Ok(5)));
    /// ```
    pub fn try_cached_with_all<T, E, F, I>(
        &self,
        targets: I,
        key: &str,
        timeout: impl Into<Timeout>,
        f: F,
    ) -> std::result::Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> std::result::Result<T, E>,
        I: IntoIterator,
        I::Item: FlushTarget,
    {
        let ks = self.keys();
        // Each target's flush list, with the version key its overflow marker bumps.
        let mut lists: Vec<(String, String)> = Vec::new();
        // The children lists of the targets' foreign-key parents, with the target's table.
        let mut children: Vec<(ObjectKey, String)> = Vec::new();
        let mut tables: Vec<String> = Vec::new();
        let mut full_key = key.to_string();
        for target in targets {
            let Some(flush_key) = target.flush_key(ks) else {
                return f();
            };
            let own = target.tables();
            let version_key = own
                .first()
                .map(|t| ks.version_key(t))
                .unwrap_or_else(|| ks.namespace_key());
            if let Some(table) = own.first() {
                for parent in target.parents() {
                    if ks.flush_key(&parent) != flush_key {
                        children.push((parent, table.clone()));
                    }
                }
            }
            for t in own {
                if !tables.contains(&t) {
                    tables.push(t);
                }
            }
            full_key.push('@');
            full_key.push_str(&flush_key);
            lists.push((flush_key, version_key));
        }
        let k = ks.manual_key(&full_key);
        let table_refs: Vec<&str> = tables.iter().map(String::as_str).collect();
        let plan = ReadPlan::new(&k, &table_refs).timeout(timeout.into());
        let register = |_: &T, regs: &mut Registrations| {
            for (flush_key, version_key) in lists {
                regs.on_list(flush_key, version_key, &k);
            }
            for (parent, table) in &children {
                regs.on_children(ks, parent, table, &k);
            }
            Ok(())
        };
        self.read_through(&plan, f, register).map(|(v, _)| v)
    }

    /// [`read_through`](Cache::read_through) for several entries at once, over the same
    /// tables (the per-object entries of a fetch by id): one multi-get looks them all up;
    /// `load` gets the positions (in `keys`) of the entries that missed and returns the values
    /// it found for them, tagged with their position; each found value is registered by
    /// `register` (value, its entry key, registrations) and filled by the usual protocol.
    /// The plan's settings (tables, guards, timeout, cap, no-fill, bypass) apply to every
    /// key; its own key is not read. Returns the values in the order of `keys` (`None` where
    /// nothing was cached and `load` found nothing), and [`ReadOutcome::Hit`] when every
    /// entry hit, [`ReadOutcome::Miss`] otherwise. As with `read_through`, the cache failing
    /// only means `load` gets every position.
    ///
    /// ```
    /// use caching_core::{Cache, ObjectKey, ReadOutcome, ReadPlan};
    /// let cache = Cache::locmem();
    /// let objects: Vec<ObjectKey> = (1..=3).map(|i| ObjectKey::new("users", &[i.to_string()])).collect();
    /// let keys: Vec<String> = objects.iter().map(|o| cache.keys().object_entry_key("db", o)).collect();
    /// let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    /// let plan = ReadPlan::new("", &["users"]);
    /// let load = |missing: &[usize]| Ok::<_, std::convert::Infallible>(
    ///     missing.iter().map(|&i| (i, format!("user {}", i + 1))).collect::<Vec<_>>());
    /// let register = |_: &String, key: &str, regs: &mut caching_core::Registrations| {
    ///     let i = keys.iter().position(|k| k == key).unwrap();
    ///     regs.row(cache.keys(), &objects[i], key);
    /// };
    /// let (first, outcome) = cache.read_many(&refs[..2], &plan, load, register).unwrap();
    /// assert_eq!(outcome, ReadOutcome::Miss);
    /// let (all, outcome) = cache.read_many(&refs, &plan, load, register).unwrap();
    /// assert_eq!(outcome, ReadOutcome::Miss); // user 3 was not cached yet
    /// assert_eq!(all[..2], first[..]);
    /// let (_, outcome) = cache.read_many(&refs, &plan, load, register).unwrap();
    /// assert_eq!(outcome, ReadOutcome::Hit);
    /// ```
    pub fn read_many<T, E, L, R>(
        &self,
        keys: &[&str],
        plan: &ReadPlan<'_>,
        load: L,
        register: R,
    ) -> std::result::Result<(Vec<Option<T>>, ReadOutcome), E>
    where
        T: Serialize + DeserializeOwned,
        L: FnOnce(&[usize]) -> std::result::Result<Vec<(usize, T)>, E>,
        R: Fn(&T, &str, &mut Registrations),
    {
        let place = |found: Vec<(usize, T)>, out: &mut Vec<Option<T>>| {
            for (i, v) in found {
                if let Some(slot) = out.get_mut(i) {
                    *slot = Some(v);
                }
            }
        };
        let mut out: Vec<Option<T>> = keys.iter().map(|_| None).collect();
        let all: Vec<usize> = (0..keys.len()).collect();
        if let Some(why) = self.bypass_of(plan) {
            tracing::debug!(keys = keys.len(), tables = ?plan.tables, why, "cache bypassed");
            place(load(&all)?, &mut out);
            return Ok((out, ReadOutcome::Bypassed(why)));
        }
        let guarded = plan.guarded_tables();
        let lookups = match self.lookup_many(keys, plan.tables, guarded) {
            Ok(l) => Some(l),
            Err(e) => {
                self.record_backend_error("lookup", &e);
                None
            }
        };
        let mut missing = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let hit = lookups
                .as_ref()
                .and_then(|l| l.get(i))
                .and_then(|l| l.hit.as_deref());
            match hit.map(|b| self.inner.config.codec.decode::<T>(b)) {
                Some(Ok(v)) => {
                    self.inner.stats.inc(Counter::Hits);
                    self.inner.stats.count_tables(plan.tables, TableEvent::Hit);
                    out[i] = Some(v);
                }
                Some(Err(e)) => {
                    self.record_decode_error(key, &e);
                    missing.push(i);
                }
                None => missing.push(i),
            }
        }
        tracing::debug!(keys = keys.len(), misses = missing.len(), tables = ?plan.tables, "cache multi-read");
        if missing.is_empty() {
            return Ok((out, ReadOutcome::Hit));
        }
        self.inner.stats.add(Counter::Misses, missing.len() as u64);
        for _ in &missing {
            self.inner.stats.count_tables(plan.tables, TableEvent::Miss);
        }
        self.step("read");
        let found = load(&missing)?;
        let Some(lookups) = lookups else {
            place(found, &mut out);
            return Ok((out, ReadOutcome::Miss));
        };
        let expiry = self.plan_expiry(plan);
        for (i, value) in &found {
            let (Some(lookup), Some(key)) = (lookups.get(*i), keys.get(*i)) else {
                continue;
            };
            if let Some(why) = plan.no_fill {
                self.inner.stats.inc(Counter::SkippedFills);
                self.inner
                    .stats
                    .count_tables(plan.tables, TableEvent::FillSkipped(why));
                tracing::debug!(key, why, "cache fill skipped");
                continue;
            }
            let mut regs = Registrations::new();
            register(value, key, &mut regs);
            let payload = match self.inner.config.codec.encode(value) {
                Ok(p) => p,
                Err(e) => {
                    self.inner.stats.inc(Counter::SkippedFills);
                    self.inner
                        .stats
                        .count_tables(plan.tables, TableEvent::FillSkipped("did not encode"));
                    tracing::warn!(key, error = %e, "value did not encode; not cached");
                    continue;
                }
            };
            let filled = self.fill_counted(&lookup.token, &payload, &regs, expiry);
            self.inner
                .stats
                .count_tables(plan.tables, TableEvent::of_fill(&filled));
            if let Err(e) = filled {
                self.record_backend_error("fill", &e);
            }
        }
        place(found, &mut out);
        Ok((out, ReadOutcome::Miss))
    }

    /// Deletes a manual key (`cached`).
    pub fn delete_manual(&self, key: &str) -> Result<()> {
        self.inner.backend.delete(&self.keys().manual_key(key))
    }
}

/// A pending fill crosses `.await` points and threads.
#[allow(dead_code)]
fn pending_fills_are_send_and_static() {
    fn check<T: Send + 'static>() {}
    check::<PendingFill>();
    check::<PreparedFill>();
    check::<ReadStart<Vec<String>>>();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_follows_the_keys_and_repeats_a_key_listed_twice() {
        let item = |v: &[u8]| Item {
            value: v.to_vec(),
            cas: 1,
        };
        let got: HashMap<String, Item> =
            [("a".to_string(), item(b"1")), ("c".to_string(), item(b"3"))]
                .into_iter()
                .collect();
        let out = in_order(&["c", "b", "a", "c"], got);
        let values: Vec<Option<&[u8]>> = out
            .iter()
            .map(|i| i.as_ref().map(|i| &i.value[..]))
            .collect();
        assert_eq!(
            values,
            [Some(&b"3"[..]), None, Some(&b"1"[..]), Some(&b"3"[..])]
        );
    }
}
