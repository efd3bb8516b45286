//! The cache handle: configuration, backend, key space and stats behind one cheap clone, and
//! the three paths built on them: look up, fill, invalidate.
//!
//! Read path: [`Cache::lookup`] is one multi-get of the entry, the namespace and table
//! versions, and the tables' write generations. A hit is an entry whose recorded versions
//! equal the current ones. On a miss the caller reads the database and calls [`Cache::fill`]:
//! add-only store of a pending marker, flush-list registration, a re-read of the write
//! generations, and only if none changed (no write committed meanwhile) the result replaces
//! the marker with CAS; otherwise the marker is deleted. Write path:
//! [`Cache::invalidate`] bumps generations (and versions for whole-table invalidation), then
//! deletes everything reachable from the written rows' flush lists and clears them with CAS.
//! `docs/src/protocol.md` explains why this order leaves no stale entry.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};

use crate::backend::locmem::LocMem;
use crate::backend::{Backend, CasOutcome};
use crate::clock;
use crate::codec::{Codec, JsonCodec};
use crate::config::{CacheBuilder, CacheConfig};
use crate::error::{ConfigError, Error, Result};
use crate::flush::{self, InvalidationReport, Registrations, WalkHooks};
use crate::key::{KeySpace, ObjectKey};
use crate::stats::{Counter, Stats, StatsSnapshot};
use crate::timeout::{Expiry, Timeout};

/// Receives the name of each protocol step as it is about to run (test hooks: lets an
/// interleaving test pause a reader or writer between steps).
pub trait StepHook: Send + Sync + 'static {
    /// Called before step `name`: the engine's `lookup`, `add`, `register`, `check`, `bump`,
    /// `read_lists`, `delete`, `clear`, and the adapter's database steps `read` (a miss reads
    /// the database) and `write` (a write helper runs its statement).
    fn step(&self, name: &'static str);
}

struct Inner {
    backend: Arc<dyn Backend>,
    config: CacheConfig,
    keys: KeySpace,
    stats: Stats,
    hook: Option<Arc<dyn StepHook>>,
}

/// A cache: cheap to clone, `Send + Sync`; clones share backend and stats.
///
/// ```
/// use caching_core::{Cache, Timeout};
/// let cache = Cache::locmem();
/// let mut calls = 0;
/// let v: u32 = cache.cached("answer", Timeout::Forever, || { calls += 1; 42 });
/// let w: u32 = cache.cached("answer", Timeout::Forever, || { calls += 1; 0 });
/// assert_eq!((v, w, calls), (42, 42, 1));
/// ```
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("backend", &self.inner.backend.name())
            .field("config", &self.inner.config)
            .finish()
    }
}

/// What [`Cache::lookup`] found.
#[derive(Debug)]
pub struct Lookup {
    /// The cached payload, on a hit.
    pub hit: Option<Vec<u8>>,
    /// What a fill after a miss must know about the state seen at lookup time.
    pub token: FillToken,
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

const ENVELOPE_MAGIC: &[u8; 2] = b"C1";
const GUARDED_MAGIC: &[u8; 2] = b"C2";
/// A fill in progress: stored by `add` before registration, replaced with CAS by the
/// result once the generation check passed. Lookups read it as a miss.
const PENDING_MAGIC: &[u8; 2] = b"P1";
/// Lifetime of a pending marker: far longer than a fill takes, short enough that a filler
/// that died (or failed to delete it) blocks the key only briefly.
const PENDING_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// A pending marker unique to one fill, so a filler never publishes over another's marker.
fn pending_marker() -> Vec<u8> {
    let mut out = PENDING_MAGIC.to_vec();
    out.extend_from_slice(&clock::random_start().to_le_bytes());
    out.extend_from_slice(&clock::random_start().to_le_bytes());
    out
}

/// Envelope of a published result: magic, the versions it was read under, in eviction-safe
/// mode the flush lists it is registered on with their epochs, then the payload.
fn envelope(versions: &[u64], guards: &[(String, u64)], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + versions.len() * 8 + payload.len());
    out.extend_from_slice(if guards.is_empty() {
        ENVELOPE_MAGIC
    } else {
        GUARDED_MAGIC
    });
    out.push(versions.len() as u8);
    for v in versions {
        out.extend_from_slice(&v.to_le_bytes());
    }
    if !guards.is_empty() {
        out.extend_from_slice(&(guards.len() as u16).to_le_bytes());
        for (list, epoch) in guards {
            out.push(list.len() as u8);
            out.extend_from_slice(list.as_bytes());
            out.extend_from_slice(&epoch.to_le_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// A decoded envelope.
struct Opened<'a> {
    versions: Vec<u64>,
    guards: Vec<(String, u64)>,
    payload: &'a [u8],
}

/// Splits an envelope into its recorded versions, guards and payload.
fn open_envelope(bytes: &[u8]) -> Option<Opened<'_>> {
    let (guarded, rest) = match bytes.strip_prefix(ENVELOPE_MAGIC) {
        Some(rest) => (false, rest),
        None => (true, bytes.strip_prefix(GUARDED_MAGIC)?),
    };
    let (&n, mut rest) = rest.split_first()?;
    let mut versions = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let (v, r) = rest.split_at_checked(8)?;
        versions.push(u64::from_le_bytes(v.try_into().ok()?));
        rest = r;
    }
    let mut guards = Vec::new();
    if guarded {
        let (count, r) = rest.split_at_checked(2)?;
        rest = r;
        for _ in 0..u16::from_le_bytes(count.try_into().ok()?) {
            let (&len, r) = rest.split_first()?;
            let (list, r) = r.split_at_checked(len as usize)?;
            let (epoch, r) = r.split_at_checked(8)?;
            guards.push((
                String::from_utf8(list.to_vec()).ok()?,
                u64::from_le_bytes(epoch.try_into().ok()?),
            ));
            rest = r;
        }
    }
    Some(Opened {
        versions,
        guards,
        payload: rest,
    })
}

/// Tables touched by a write, and the rows whose flush lists must be walked.
///
/// ```
/// use caching_core::{Invalidation, ObjectKey};
/// let mut inv = Invalidation::new();
/// inv.object(ObjectKey::new("addons", &["1"]));
/// inv.object(ObjectKey::new("users", &["1"]));
/// inv.whole_table("users");
/// assert_eq!(inv.tables().count(), 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invalidation {
    written: BTreeSet<String>,
    whole: BTreeSet<String>,
    objects: BTreeSet<ObjectKey>,
    keys: BTreeSet<String>,
}

impl Invalidation {
    /// Nothing to invalidate.
    pub fn new() -> Self {
        Self::default()
    }

    /// A row was written (or is a foreign-key target of a written row): its flush list is
    /// walked, and its model's write generation bumped.
    pub fn object(&mut self, object: ObjectKey) -> &mut Self {
        self.written.insert(object.model().to_string());
        self.objects.insert(object);
        self
    }

    /// `table` was written by a statement whose rows are unknown: bump its write generation
    /// and its version (every cached query over it misses).
    pub fn whole_table(&mut self, table: &str) -> &mut Self {
        self.written.insert(table.to_string());
        self.whole.insert(table.to_string());
        self
    }

    /// `table` was written (bump its generation) without naming rows: for inserts whose
    /// invalidation is otherwise by foreign-key targets only.
    pub fn table_written(&mut self, table: &str) -> &mut Self {
        self.written.insert(table.to_string());
        self
    }

    /// Also walk the flush list of `flush_key` (a query's or a value's own list).
    pub fn flush_list(&mut self, flush_key: String) -> &mut Self {
        self.keys.insert(flush_key);
        self
    }

    /// Adds everything from `other`.
    pub fn merge(&mut self, other: Invalidation) -> &mut Self {
        self.written.extend(other.written);
        self.whole.extend(other.whole);
        self.objects.extend(other.objects);
        self.keys.extend(other.keys);
        self
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.written.is_empty() && self.objects.is_empty() && self.keys.is_empty()
    }

    /// Tables whose generation will be bumped.
    pub fn tables(&self) -> impl Iterator<Item = &str> {
        self.written.iter().map(String::as_str)
    }

    /// Rows whose flush lists will be walked.
    pub fn objects(&self) -> impl Iterator<Item = &ObjectKey> {
        self.objects.iter()
    }
}

/// Something values can be tied to with [`Cache::cached_with`]: an object, a query.
pub trait FlushTarget {
    /// The target's flush list in key space `keys`, or `None` if it has no cache key (then
    /// `cached_with` just calls the function).
    fn flush_key(&self, keys: &KeySpace) -> Option<String>;
    /// The tables the target is read from (their write generations guard the fill).
    fn tables(&self) -> Vec<String>;
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
}

impl<T: FlushTarget> FlushTarget for Option<T> {
    fn flush_key(&self, keys: &KeySpace) -> Option<String> {
        self.as_ref().and_then(|t| t.flush_key(keys))
    }
    fn tables(&self) -> Vec<String> {
        self.as_ref().map(|t| t.tables()).unwrap_or_default()
    }
}

struct HookRef<'a>(&'a Option<Arc<dyn StepHook>>);

impl WalkHooks for HookRef<'_> {
    fn step(&self, name: &'static str) {
        if let Some(h) = self.0 {
            h.step(name);
        }
    }
}

impl Cache {
    /// A builder.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::new()
    }

    /// A cache on a fresh in-process backend with the default configuration.
    pub fn locmem() -> Cache {
        Cache::from_parts(
            Arc::new(LocMem::new()),
            CacheConfig::default(),
            KeySpace::new("").expect("empty prefix is valid"),
        )
    }

    /// A cache from a URL (`locmem://...`, `memcached://host:port,...?prefix=...`); see
    /// [`config`](crate::config) for the parameters.
    ///
    /// ```
    /// let c = caching_core::Cache::from_url("locmem://?prefix=app&count_timeout=5").unwrap();
    /// assert_eq!(c.config().prefix, "app");
    /// assert!(caching_core::Cache::from_url("memcached://nohostport").is_err());
    /// ```
    pub fn from_url(url: &str) -> Result<Cache> {
        Ok(crate::config::parse_url(url)?.build()?)
    }

    /// A cache from the `CACHE_URL` environment variable; `locmem://` when unset.
    pub fn from_env() -> Result<Cache> {
        match std::env::var("CACHE_URL") {
            Ok(url) => Cache::from_url(&url),
            Err(std::env::VarError::NotPresent) => Cache::from_url("locmem://"),
            Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::Url {
                url: "<CACHE_URL>".into(),
                reason: "not valid unicode".into(),
            }
            .into()),
        }
    }

    pub(crate) fn from_parts(
        backend: Arc<dyn Backend>,
        config: CacheConfig,
        keys: KeySpace,
    ) -> Cache {
        Cache {
            inner: Arc::new(Inner {
                backend,
                config,
                keys,
                stats: Stats::default(),
                hook: None,
            }),
        }
    }

    /// A copy of this cache that reports its protocol steps to `hook` (shares the backend;
    /// stats start at zero). For interleaving tests.
    #[cfg(feature = "test-hooks")]
    pub fn with_step_hook(&self, hook: Arc<dyn StepHook>) -> Cache {
        Cache {
            inner: Arc::new(Inner {
                backend: self.inner.backend.clone(),
                config: self.inner.config.clone(),
                keys: self.inner.keys.clone(),
                stats: Stats::default(),
                hook: Some(hook),
            }),
        }
    }

    /// Reports a step taken outside the engine (the adapter's database read) to the step
    /// hook, if any. Not part of the stable API.
    #[doc(hidden)]
    pub fn __step(&self, name: &'static str) {
        self.step(name);
    }

    fn step(&self, name: &'static str) {
        if let Some(h) = &self.inner.hook {
            h.step(name);
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// The key space (prefix and key builders).
    pub fn keys(&self) -> &KeySpace {
        &self.inner.keys
    }

    /// The backend.
    pub fn backend(&self) -> &dyn Backend {
        &*self.inner.backend
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Whether two handles share one backend and key space (reads through one are
    /// invalidated by writes through the other).
    pub fn same_cache(&self, other: &Cache) -> bool {
        Arc::ptr_eq(&self.inner.backend, &other.inner.backend)
            && self.inner.keys == other.inner.keys
    }

    /// Resolves a requested timeout against the configuration (default, then the cap).
    pub fn expiry(&self, t: Timeout) -> Expiry {
        let cfg = &self.inner.config;
        let base = match t {
            Timeout::Default => cfg.default_timeout,
            other => other,
        };
        let e = match base {
            Timeout::Forever | Timeout::Default => Expiry::Forever,
            Timeout::After(d) => Expiry::from_duration(d),
        };
        match cfg.max_timeout {
            Some(cap) => e.min(Expiry::from_duration(cap)),
            None => e,
        }
    }

    /// Counts a backend error and logs it; callers then fall back to the database.
    pub fn record_backend_error(&self, op: &'static str, err: &Error) {
        self.inner.stats.inc(Counter::BackendErrors);
        tracing::warn!(op, error = %err, "cache backend error; falling back to the database");
    }

    /// One round trip: the entry `key`, and the versions and write generations of `tables`.
    /// Missing counters are created (one more round trip, only then).
    pub fn lookup(&self, key: &str, tables: &[&str]) -> Result<Lookup> {
        self.lookup_inner(key, tables, &[])
    }

    /// Like [`lookup`](Cache::lookup), but the entry also records the tables' write
    /// generations: any write to those tables makes it miss. Exact at table granularity, for
    /// values no flush list protects (counts).
    pub fn lookup_exact(&self, key: &str, tables: &[&str]) -> Result<Lookup> {
        self.lookup_inner(key, tables, tables)
    }

    /// Like [`lookup`](Cache::lookup), with the write generations of `guarded` (a subset of
    /// `tables`) recorded too: any write to a guarded table makes the entry miss. For tables
    /// a query reads but whose rows it does not return (subqueries), which no flush list
    /// protects.
    pub fn lookup_guarded(&self, key: &str, tables: &[&str], guarded: &[&str]) -> Result<Lookup> {
        self.lookup_inner(key, tables, guarded)
    }

    fn lookup_inner(&self, key: &str, tables: &[&str], guarded: &[&str]) -> Result<Lookup> {
        self.step("lookup");
        let ks = &self.inner.keys;
        let mut version_keys = vec![ks.namespace_key()];
        version_keys.extend(tables.iter().map(|t| ks.version_key(t)));
        let generation_keys: Vec<String> = tables.iter().map(|t| ks.generation_key(t)).collect();
        let mut all: Vec<&str> = Vec::with_capacity(1 + version_keys.len() + generation_keys.len());
        all.push(key);
        all.extend(version_keys.iter().map(String::as_str));
        all.extend(generation_keys.iter().map(String::as_str));
        let mut got = self.inner.backend.get_multi(&all)?;
        let counters: Vec<Option<u64>> = all[1..]
            .iter()
            .map(|k| got.get(*k).and_then(|i| clock::parse(&i.value)))
            .collect();
        let counters: Vec<u64> = if counters.iter().all(Option::is_some) {
            counters.into_iter().flatten().collect()
        } else {
            clock::ensure(&*self.inner.backend, &all[1..])?
        };
        let (versions, generations) = counters.split_at(version_keys.len());
        let mut recorded_now = versions.to_vec();
        for (t, g) in tables.iter().zip(generations) {
            if guarded.contains(t) {
                recorded_now.push(*g);
            }
        }
        let hit = got
            .remove(key)
            .and_then(|item| match open_envelope(&item.value) {
                Some(e) if e.versions == recorded_now => {
                    if e.guards.is_empty() || self.guards_hold(&e.guards) {
                        Some(e.payload.to_vec())
                    } else {
                        // A flush list it relies on was evicted (or evicted and re-created):
                        // a write may have missed it.
                        let _ = self.inner.backend.delete(key);
                        None
                    }
                }
                Some(_) => {
                    // Recorded under versions that have changed since: it can never hit again,
                    // and while it sits there the add-only fill after this miss cannot replace it.
                    let _ = self.inner.backend.delete(key);
                    None
                }
                // Another reader's fill in progress: a miss, and not ours to delete.
                None if item.value.starts_with(PENDING_MAGIC) => None,
                None => {
                    self.inner.stats.inc(Counter::DecodeErrors);
                    let _ = self.inner.backend.delete(key);
                    None
                }
            });
        Ok(Lookup {
            hit,
            token: FillToken {
                key: key.to_string(),
                versions: recorded_now,
                generation_keys,
                generations: generations.to_vec(),
            },
        })
    }

    /// Eviction-safe mode: whether every flush list an entry is registered on still exists
    /// with the epoch recorded at fill time. One more round trip; a backend error reads as
    /// "does not hold".
    fn guards_hold(&self, guards: &[(String, u64)]) -> bool {
        let keys: Vec<&str> = guards.iter().map(|(k, _)| k.as_str()).collect();
        match self.inner.backend.get_multi(&keys) {
            Ok(lists) => guards.iter().all(|(k, epoch)| {
                lists
                    .get(k)
                    .and_then(|i| flush::epoch_of(&i.value))
                    .is_some_and(|e| e == *epoch)
            }),
            Err(e) => {
                self.record_backend_error("guard check", &e);
                false
            }
        }
    }

    /// Counts a hit (callers call it once the payload decoded).
    pub fn record_hit(&self, key: &str) {
        self.inner.stats.inc(Counter::Hits);
        tracing::debug!(key, "cache hit");
    }

    /// Counts a miss.
    pub fn record_miss(&self, key: &str) {
        self.inner.stats.inc(Counter::Misses);
        tracing::debug!(key, "cache miss");
    }

    /// Counts a payload that failed to decode and deletes it; it is served as a miss.
    pub fn record_decode_error(&self, key: &str, err: &Error) {
        self.inner.stats.inc(Counter::DecodeErrors);
        tracing::warn!(key, error = %err, "cached value did not decode; deleting it");
        if let Err(e) = self.inner.backend.delete(key) {
            self.record_backend_error("delete", &e);
        }
    }

    /// Counts a fill that was skipped before reaching the backend (empty, inside a
    /// transaction, not cacheable).
    pub fn record_skipped_fill(&self, key: &str, why: &'static str) {
        self.inner.stats.inc(Counter::SkippedFills);
        tracing::debug!(key, why, "cache fill skipped");
    }

    /// Stores `payload` after a miss: add a pending marker (add-only), register on the flush
    /// lists, re-check the write generations seen at lookup, then publish the result over the
    /// marker with CAS. On a race or a failed registration the marker is deleted, so nothing
    /// stale or unregistered stays, and no reader ever sees the result before the check
    /// passed (a reader that starts after a write's invalidation finished cannot get a result
    /// read before that write). A marker a failed fill could not delete expires on its own.
    pub fn fill(
        &self,
        token: &FillToken,
        payload: &[u8],
        regs: &Registrations,
        expiry: Expiry,
    ) -> Result<FillOutcome> {
        let outcome = self.fill_inner(token, payload, regs, expiry);
        let counter = match &outcome {
            Ok(FillOutcome::Stored) => Counter::Fills,
            _ => Counter::SkippedFills,
        };
        self.inner.stats.inc(counter);
        tracing::debug!(key = token.key, outcome = ?outcome, "cache fill");
        if outcome.is_err() {
            // Whatever step failed, do not leave an entry that may be unregistered.
            let _ = self.inner.backend.delete(&token.key);
        }
        outcome
    }

    fn fill_inner(
        &self,
        token: &FillToken,
        payload: &[u8],
        regs: &Registrations,
        expiry: Expiry,
    ) -> Result<FillOutcome> {
        let backend = &*self.inner.backend;
        if token.versions.len() > usize::from(u8::MAX) {
            // More tables than the envelope records: not cacheable (never truncate a guard).
            return Ok(FillOutcome::TooLarge);
        }
        let safe = self.inner.config.eviction_safe;
        // Guards are counted in a u16; a result on more rows than that is not cacheable in
        // eviction-safe mode.
        let guard_lists: Vec<&str> = if safe {
            regs.lists_holding(&token.key).collect()
        } else {
            Vec::new()
        };
        // Size check before any backend work (guards add at most 256 + 9 bytes each).
        if guard_lists.len() > usize::from(u16::MAX) {
            return Ok(FillOutcome::TooLarge);
        }
        let guard_bytes: usize = guard_lists.iter().map(|l| l.len() + 9).sum::<usize>() + 2;
        if token.versions.len() * 8 + guard_bytes + payload.len() + token.key.len() + 64
            > backend.max_item_size()
        {
            return Ok(FillOutcome::TooLarge);
        }
        // Readers must not see the result before the generation check: until then it may be
        // older than a write whose invalidation already finished (that invalidation could not
        // delete what was not registered yet). So the add claims the key with a pending
        // marker, and the result replaces it only after the check.
        self.step("add");
        let marker = pending_marker();
        let pending = expiry.min(Expiry::from_duration(PENDING_TTL));
        if !backend.add(&token.key, &marker, pending)? {
            return Ok(FillOutcome::AlreadyCached);
        }
        self.step("register");
        let reg = flush::register(backend, regs, safe)?;
        if reg.overflows > 0 {
            self.inner.stats.add(Counter::Overflows, reg.overflows);
        }
        if !reg.complete {
            backend.delete(&token.key)?;
            return Ok(FillOutcome::Unregistered);
        }
        self.step("check");
        let mut refs: Vec<&str> = vec![&token.key];
        refs.extend(token.generation_keys.iter().map(String::as_str));
        let gens_end = refs.len();
        refs.extend(guard_lists.iter().copied());
        let now = backend.get_multi(&refs)?;
        let unchanged = refs[1..gens_end]
            .iter()
            .zip(&token.generations)
            .all(|(k, g0)| now.get(*k).and_then(|i| clock::parse(&i.value)) == Some(*g0));
        if !unchanged {
            backend.delete(&token.key)?;
            return Ok(FillOutcome::Raced);
        }
        // Our marker must still be there: a writer that found the registration deletes it,
        // and then this result must not be published.
        let Some(cas) = now
            .get(&token.key)
            .filter(|i| i.value == marker)
            .map(|i| i.cas)
        else {
            return Ok(FillOutcome::Raced);
        };
        // Eviction-safe mode: record each list's epoch, read after our registration and only
        // if the list still holds it (a list evicted and re-created meanwhile does not).
        let mut guards = Vec::with_capacity(guard_lists.len());
        for list in &guard_lists {
            let epoch = now
                .get(*list)
                .filter(|i| flush::holds(&i.value, &token.key))
                .and_then(|i| flush::epoch_of(&i.value));
            match epoch {
                Some(e) => guards.push((list.to_string(), e)),
                None => {
                    backend.delete(&token.key)?;
                    return Ok(FillOutcome::Unregistered);
                }
            }
        }
        let value = envelope(&token.versions, &guards, payload);
        self.step("publish");
        match backend.cas(&token.key, &value, expiry, cas)? {
            CasOutcome::Stored => Ok(FillOutcome::Stored),
            // Deleted (or replaced) by a writer since the check: its invalidation wins.
            CasOutcome::Changed | CasOutcome::Missing => Ok(FillOutcome::Raced),
        }
    }

    /// Runs an invalidation: bump write generations (and versions of whole tables), then
    /// delete everything reachable from the rows' flush lists and clear the lists with CAS.
    /// Failed backend calls are retried; if it still fails the error is counted, logged and
    /// returned (entries may stay stale until they expire: see the docs on failure modes).
    pub fn invalidate(&self, inv: &Invalidation) -> Result<InvalidationReport> {
        if inv.is_empty() {
            return Ok(InvalidationReport::default());
        }
        self.inner.stats.inc(Counter::Invalidations);
        let mut last = None;
        for attempt in 0..3 {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_millis(20 << attempt));
            }
            match self.invalidate_once(inv) {
                Ok(r) => {
                    tracing::debug!(tables = ?inv.written, objects = inv.objects.len(), deleted = r.deleted, "invalidated");
                    return Ok(r);
                }
                Err(e) => {
                    self.inner.stats.inc(Counter::BackendErrors);
                    last = Some(e);
                }
            }
        }
        let err = last.expect("at least one attempt ran");
        self.inner.stats.inc(Counter::FailedInvalidations);
        tracing::error!(error = %err, tables = ?inv.written, "invalidation failed after retries; affected entries may be stale until they expire");
        Err(err)
    }

    fn invalidate_once(&self, inv: &Invalidation) -> Result<InvalidationReport> {
        let ks = &self.inner.keys;
        let backend = &*self.inner.backend;
        self.step("bump");
        let mut counters: Vec<String> = inv.written.iter().map(|t| ks.generation_key(t)).collect();
        counters.extend(inv.whole.iter().map(|t| ks.version_key(t)));
        clock::bump(backend, &counters)?;
        let mut roots: Vec<String> = inv.objects.iter().map(|o| ks.flush_key(o)).collect();
        roots.extend(inv.keys.iter().cloned());
        flush::invalidate(backend, ks, roots, &HookRef(&self.inner.hook))
    }

    /// Invalidates every query over `table` (and values tied to it), for writes made outside
    /// the library.
    pub fn invalidate_table(&self, table: &str) -> Result<()> {
        let mut inv = Invalidation::new();
        inv.whole_table(table);
        self.invalidate(&inv).map(|_| ())
    }

    /// Invalidates every entry of this cache's key space (bumps the namespace version)
    /// without `flush_all`, so other prefixes on the same server are untouched.
    pub fn invalidate_everything(&self) -> Result<()> {
        clock::bump(&*self.inner.backend, &[self.inner.keys.namespace_key()])
    }

    /// Reads an entry written with the versioned envelope, or fills it by calling `f`.
    fn get_or_fill<T, F>(
        &self,
        key: &str,
        target: Option<(&str, &[String])>,
        timeout: Timeout,
        f: F,
    ) -> T
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> T,
    {
        let tables: Vec<&str> = target
            .map(|(_, t)| t.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let lookup = match self.lookup(key, &tables) {
            Ok(l) => l,
            Err(e) => {
                self.record_backend_error("lookup", &e);
                return f();
            }
        };
        if let Some(bytes) = &lookup.hit {
            match JsonCodec::decode::<T>(bytes) {
                Ok(v) => {
                    self.record_hit(key);
                    return v;
                }
                Err(e) => self.record_decode_error(key, &e),
            }
        }
        self.record_miss(key);
        let value = f();
        let payload = match JsonCodec::encode(&value) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(key, error = %e, "value did not encode; not cached");
                return value;
            }
        };
        let mut regs = Registrations::new();
        if let Some((flush_key, tables)) = target {
            let version_key = tables
                .first()
                .map(|t| self.keys().version_key(t))
                .unwrap_or_else(|| self.keys().namespace_key());
            regs.on_list(flush_key.to_string(), version_key, key);
        }
        if let Err(e) = self.fill(&lookup.token, &payload, &regs, self.expiry(timeout)) {
            self.record_backend_error("fill", &e);
        }
        value
    }

    /// Manual caching: returns the value cached under `key`, or calls `f`, caches its result
    /// for `timeout` and returns it. The cache being down only means `f` runs every time.
    ///
    /// ```
    /// use caching_core::{Cache, Timeout};
    /// let cache = Cache::locmem();
    /// let v: String = cache.cached("greeting", Timeout::Default, || "hello".to_string());
    /// assert_eq!(v, "hello");
    /// ```
    pub fn cached<T, F>(&self, key: &str, timeout: Timeout, f: F) -> T
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> T,
    {
        let k = self.keys().manual_key(key);
        self.get_or_fill(&k, None, timeout, f)
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
    pub fn cached_with<T, F, X>(&self, target: &X, key: &str, timeout: Timeout, f: F) -> T
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> T,
        X: FlushTarget + ?Sized,
    {
        let Some(flush_key) = target.flush_key(self.keys()) else {
            return f();
        };
        let k = self.keys().manual_key(&format!("{key}@{flush_key}"));
        let tables = target.tables();
        self.get_or_fill(&k, Some((&flush_key, &tables)), timeout, f)
    }

    /// Deletes a manual key (`cached`).
    pub fn delete_manual(&self, key: &str) -> Result<()> {
        self.inner.backend.delete(&self.keys().manual_key(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_and_rejects_garbage() {
        let e = envelope(&[1, 2], &[], b"payload");
        let o = open_envelope(&e).unwrap();
        assert_eq!((o.versions, o.payload), (vec![1, 2], &b"payload"[..]));
        assert!(o.guards.is_empty());
        let g = envelope(&[3], &[("p:f:o:t:1".to_string(), 9)], b"x");
        let o = open_envelope(&g).unwrap();
        assert_eq!(o.guards, vec![("p:f:o:t:1".to_string(), 9)]);
        assert_eq!(o.payload, b"x");
        assert!(open_envelope(b"C1\x05short").is_none());
        assert!(open_envelope(b"C2\x00\x05\x00").is_none());
        assert!(open_envelope(b"xx").is_none());
    }
}
