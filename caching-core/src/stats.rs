//! Counters of what a cache did, readable as a snapshot by tests and users: the global
//! counters ([`StatsSnapshot`]) and the read outcomes of each table ([`TableStats`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use crate::stripe::{PerStripe, Striped};

macro_rules! stats {
    ($($(#[doc = $doc:expr])* $name:ident),* $(,)?) => {
        /// Live counters of one [`Cache`](crate::Cache) (shared by its clones).
        #[derive(Debug, Default)]
        pub struct Stats {
            $($name: Striped,)*
            tables: TableCounters,
        }

        /// A point-in-time copy of [`Stats`].
        ///
        /// ```
        /// let cache = caching_core::Cache::locmem();
        /// let s = cache.stats();
        /// assert_eq!(s.hits, 0);
        /// ```
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        /// Adds another snapshot's counters (several caches, or several processes).
        ///
        /// ```
        /// let (a, b) = (caching_core::Cache::locmem(), caching_core::Cache::locmem());
        /// let total: caching_core::StatsSnapshot = [a.stats(), b.stats()].into_iter().sum();
        /// assert_eq!(total.hits, 0);
        /// ```
        impl std::ops::AddAssign for StatsSnapshot {
            fn add_assign(&mut self, other: StatsSnapshot) {
                $(self.$name += other.$name;)*
            }
        }

        impl std::iter::Sum for StatsSnapshot {
            fn sum<I: Iterator<Item = StatsSnapshot>>(iter: I) -> StatsSnapshot {
                let mut total = StatsSnapshot::default();
                for s in iter {
                    total += s;
                }
                total
            }
        }

        impl Stats {
            /// Copies the counters.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(),)* }
            }
        }
    };
}

stats! {
    /// Reads answered from the cache.
    hits,
    /// Reads not answered from the cache (including ones that failed to decode).
    misses,
    /// Results stored after a miss.
    fills,
    /// Results not stored after a miss (too large, empty, raced with a write, registration
    /// failed, inside a transaction).
    skipped_fills,
    /// Invalidations run (one per write or `invalidate` call).
    invalidations,
    /// Invalidations the backend could not take when they were made: each was queued and is
    /// retried in the background until delivered (see `Cache::pending_invalidations`).
    failed_invalidations,
    /// Queued invalidations delivered later by the background thread.
    retried_invalidations,
    /// Times undelivered invalidations collapsed into a namespace bump (queue overflow, or
    /// deliveries failing although the server answers).
    coarse_invalidations,
    /// Reads that skipped the cache: an invalidation of their tables was not delivered yet,
    /// or the caller asked (inside a foreign transaction, over a table the transaction wrote).
    bypassed_reads,
    /// Corrupted cache metadata repaired by invalidation: non-numeric counters replaced,
    /// flush lists that did not parse treated as overflowed.
    repairs,
    /// Calls to the backend that failed (unreachable, timeout, protocol error).
    backend_errors,
    /// Cached values that did not decode (deleted and counted as misses).
    decode_errors,
    /// Flush lists that hit their size cap (the row fell back to table-level invalidation).
    overflows,
    /// Writes not made through a write helper (plain Diesel or raw SQL on a cached
    /// connection), recognised from their SQL and invalidated at table level.
    plain_writes,
    /// Reads that missed while another reader was filling the same entry, and waited for
    /// that fill (stampede protection, see `CacheConfig::lease_wait`) instead of reading the
    /// database at once. Those the fill then answered count as hits too.
    lease_waits,
    /// Cache servers found without this key space's sentinel (restarted, flushed, new, or
    /// the sentinel evicted) when several servers share the keys: each made every entry of
    /// the key space miss (a namespace bump), since entries on the other servers may rely on
    /// flush lists that server lost.
    lost_servers,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Counter {
    Hits,
    Misses,
    Fills,
    SkippedFills,
    Invalidations,
    FailedInvalidations,
    RetriedInvalidations,
    CoarseInvalidations,
    BypassedReads,
    Repairs,
    BackendErrors,
    DecodeErrors,
    Overflows,
    PlainWrites,
    LeaseWaits,
    LostServers,
}

impl Stats {
    pub(crate) fn add(&self, c: Counter, n: u64) {
        let a = match c {
            Counter::Hits => &self.hits,
            Counter::Misses => &self.misses,
            Counter::Fills => &self.fills,
            Counter::SkippedFills => &self.skipped_fills,
            Counter::Invalidations => &self.invalidations,
            Counter::FailedInvalidations => &self.failed_invalidations,
            Counter::RetriedInvalidations => &self.retried_invalidations,
            Counter::CoarseInvalidations => &self.coarse_invalidations,
            Counter::BypassedReads => &self.bypassed_reads,
            Counter::Repairs => &self.repairs,
            Counter::BackendErrors => &self.backend_errors,
            Counter::DecodeErrors => &self.decode_errors,
            Counter::Overflows => &self.overflows,
            Counter::PlainWrites => &self.plain_writes,
            Counter::LeaseWaits => &self.lease_waits,
            Counter::LostServers => &self.lost_servers,
        };
        a.add(n);
    }

    pub(crate) fn inc(&self, c: Counter) {
        self.add(c, 1);
    }

    /// Counts a read's `event` under each of its tables.
    pub(crate) fn count_tables(&self, tables: &[&str], event: TableEvent) {
        if !tables.is_empty() {
            self.tables.count(tables, event);
        }
    }

    /// Copies the per-table counters.
    pub(crate) fn table_snapshot(&self) -> BTreeMap<String, TableStats> {
        self.tables.snapshot()
    }
}

/// The read outcomes of one table, as [`Cache::table_stats`](crate::Cache::table_stats)
/// reports them. A read counts once under each table it depends on (a join under both), and
/// every read through [`Cache::read_through`](crate::Cache::read_through) or a wrapper that
/// reports its own bypasses ([`Cache::record_read`](crate::Cache::record_read)) counts:
/// unlike the global counters, reads the wrapper never tried to cache (turned off for the
/// query, SQL it cannot read) count here, as bypassed, with their reason.
///
/// ```
/// use caching_core::{Cache, ReadOutcome, ReadPlan};
/// let cache = Cache::locmem();
/// let plan = ReadPlan::new("app:q:1", &["users"]);
/// let load = || Ok::<_, std::convert::Infallible>(vec![1u32]);
/// cache.read_through(&plan, load, |_, _| Ok(())).unwrap(); // miss, filled
/// cache.read_through(&plan, load, |_, _| Ok(())).unwrap(); // hit
/// cache.record_read(&["users"], ReadOutcome::Bypassed("caching turned off for this query"));
/// let users = &cache.table_stats()["users"];
/// assert_eq!((users.hits, users.misses, users.bypassed, users.fills), (1, 1, 1, 1));
/// assert_eq!(users.bypassed_by["caching turned off for this query"], 1);
/// assert_eq!(users.reads(), 3);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableStats {
    /// Reads answered from the cache ([`ReadOutcome::Hit`](crate::ReadOutcome::Hit)).
    pub hits: u64,
    /// Reads answered by the database after looking the cache up
    /// ([`ReadOutcome::Miss`](crate::ReadOutcome::Miss)).
    pub misses: u64,
    /// Reads answered by the database without looking the cache up
    /// ([`ReadOutcome::Bypassed`](crate::ReadOutcome::Bypassed)).
    pub bypassed: u64,
    /// [`bypassed`](TableStats::bypassed) by reason: the `why` of `ReadOutcome::Bypassed`
    /// (`"transaction sees its own writes"`, `"caching turned off for this query"`,
    /// `"undelivered invalidation"`, ...).
    pub bypassed_by: BTreeMap<&'static str, u64>,
    /// Results stored after a miss.
    pub fills: u64,
    /// Results not stored after a miss.
    pub skipped_fills: u64,
    /// [`skipped_fills`](TableStats::skipped_fills) by reason (`"inside a transaction"`,
    /// `"empty result"`, `"too large"`, `"raced with a write"`, ...).
    pub skipped_fills_by: BTreeMap<&'static str, u64>,
}

impl TableStats {
    /// Every read counted: hits, misses and bypassed reads.
    pub fn reads(&self) -> u64 {
        self.hits + self.misses + self.bypassed
    }
}

/// Adds another table's counts (the same table in several caches, or several processes).
///
/// ```
/// use caching_core::TableStats;
/// let mut total = TableStats::default();
/// total += TableStats::default();
/// assert_eq!(total.reads(), 0);
/// ```
impl std::ops::AddAssign for TableStats {
    fn add_assign(&mut self, other: TableStats) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.bypassed += other.bypassed;
        self.fills += other.fills;
        self.skipped_fills += other.skipped_fills;
        for (why, n) in other.bypassed_by {
            *self.bypassed_by.entry(why).or_default() += n;
        }
        for (why, n) in other.skipped_fills_by {
            *self.skipped_fills_by.entry(why).or_default() += n;
        }
    }
}

impl crate::Cache {
    /// The read outcomes of each table read through this cache (every clone shares them):
    /// see [`TableStats`]. A copy; a table appears once it has been read.
    ///
    /// ```
    /// let cache = caching_core::Cache::locmem();
    /// assert!(cache.table_stats().is_empty());
    /// ```
    pub fn table_stats(&self) -> BTreeMap<String, TableStats> {
        self.inner.stats.table_snapshot()
    }

    /// Counts, in the per-table stats only, a read that did not go through
    /// [`read_through`](crate::Cache::read_through) (which counts its own): a wrapper's read
    /// that bypassed the cache before getting that far (caching turned off for the query, a
    /// statement it cannot key or read dependencies from). The global counters do not move.
    ///
    /// ```
    /// use caching_core::{Cache, ReadOutcome};
    /// let cache = Cache::locmem();
    /// cache.record_read(&["users", "addons"], ReadOutcome::Bypassed("caching turned off for this query"));
    /// assert_eq!(cache.table_stats()["addons"].bypassed, 1);
    /// assert_eq!(cache.stats().bypassed_reads, 0);
    /// ```
    pub fn record_read(&self, tables: &[&str], outcome: crate::ReadOutcome) {
        let event = match outcome {
            crate::ReadOutcome::Hit => TableEvent::Hit,
            crate::ReadOutcome::Miss => TableEvent::Miss,
            crate::ReadOutcome::Bypassed(why) => TableEvent::Bypassed(why),
        };
        self.inner.stats.count_tables(tables, event);
    }
}

/// Something that happened to a read, counted under each of its tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TableEvent {
    Hit,
    Miss,
    Bypassed(&'static str),
    Filled,
    FillSkipped(&'static str),
}

impl TableEvent {
    /// The event of a fill's outcome.
    pub(crate) fn of_fill(outcome: &crate::Result<crate::FillOutcome>) -> TableEvent {
        use crate::FillOutcome;
        match outcome {
            Ok(FillOutcome::Stored) => TableEvent::Filled,
            Ok(FillOutcome::AlreadyCached) => TableEvent::FillSkipped("already cached"),
            Ok(FillOutcome::TooLarge) => TableEvent::FillSkipped("too large"),
            Ok(FillOutcome::Raced) => TableEvent::FillSkipped("raced with a write"),
            Ok(FillOutcome::Unregistered) => TableEvent::FillSkipped("registration failed"),
            Err(_) => TableEvent::FillSkipped("fill failed"),
        }
    }
}

/// The live counters of one table. The outcome counters are atomics, read under the map's
/// read lock; only the reason maps (bypasses, skipped fills: not the hit path) take a mutex.
#[derive(Debug, Default)]
struct TableCounter {
    hits: AtomicU64,
    misses: AtomicU64,
    bypassed: AtomicU64,
    fills: AtomicU64,
    skipped_fills: AtomicU64,
    reasons: Mutex<Reasons>,
}

#[derive(Debug, Default)]
struct Reasons {
    bypassed: BTreeMap<&'static str, u64>,
    skipped_fills: BTreeMap<&'static str, u64>,
}

impl TableCounter {
    fn count(&self, event: TableEvent) {
        let (counter, reason) = match event {
            TableEvent::Hit => (&self.hits, None),
            TableEvent::Miss => (&self.misses, None),
            TableEvent::Filled => (&self.fills, None),
            TableEvent::Bypassed(why) => (&self.bypassed, Some((false, why))),
            TableEvent::FillSkipped(why) => (&self.skipped_fills, Some((true, why))),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some((fill, why)) = reason {
            let mut r = self.reasons.lock().unwrap_or_else(PoisonError::into_inner);
            let map = if fill {
                &mut r.skipped_fills
            } else {
                &mut r.bypassed
            };
            *map.entry(why).or_default() += 1;
        }
    }

    fn snapshot(&self) -> TableStats {
        let r = self.reasons.lock().unwrap_or_else(PoisonError::into_inner);
        TableStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bypassed: self.bypassed.load(Ordering::Relaxed),
            bypassed_by: r.bypassed.clone(),
            fills: self.fills.load(Ordering::Relaxed),
            skipped_fills: self.skipped_fills.load(Ordering::Relaxed),
            skipped_fills_by: r.skipped_fills.clone(),
        }
    }
}

/// The per-table counters: a table's entry is created by its first read on a stripe (the
/// only time a read allocates here); every later read takes its stripe's read lock and bumps
/// atomics. Each thread stripe has its own map, so threads reading at once do not share a
/// lock or a counter.
#[derive(Debug, Default)]
struct TableCounters(PerStripe<RwLock<HashMap<Box<str>, TableCounter>>>);

impl TableCounters {
    /// Counts `event` once under each of `tables` (a table named twice counts once).
    fn count(&self, tables: &[&str], event: TableEvent) {
        let stripe = self.0.mine();
        // The positions in `tables` of the tables without an entry yet (created afterwards,
        // under the write lock). A read names a handful of tables; past 64 (never, in
        // practice) everything is counted under the write lock.
        let mut missing = u64::MAX;
        if tables.len() <= 64 {
            missing = 0;
            let map = stripe.read().unwrap_or_else(PoisonError::into_inner);
            for (i, t) in tables.iter().enumerate() {
                if tables[..i].contains(t) {
                    continue;
                }
                match map.get(*t) {
                    Some(c) => c.count(event),
                    None => missing |= 1 << i,
                }
            }
        }
        if missing == 0 {
            return;
        }
        let mut map = stripe.write().unwrap_or_else(PoisonError::into_inner);
        for (i, t) in tables.iter().enumerate() {
            let first = !tables[..i].contains(t);
            if first && (i >= 64 || missing & (1 << i) != 0) {
                map.entry(Box::from(*t)).or_default().count(event);
            }
        }
    }

    fn snapshot(&self) -> BTreeMap<String, TableStats> {
        let mut out: BTreeMap<String, TableStats> = BTreeMap::new();
        for stripe in self.0.all() {
            let map = stripe.read().unwrap_or_else(PoisonError::into_inner);
            for (t, c) in map.iter() {
                *out.entry(t.to_string()).or_default() += c.snapshot();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up_per_table_and_overall() {
        let stats = std::sync::Arc::new(Stats::default());
        let threads: Vec<_> = (0..10)
            .map(|i| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        stats.inc(Counter::Hits);
                        stats.count_tables(&["users", "addons", "users"], TableEvent::Hit);
                    }
                    if i % 2 == 0 {
                        stats.count_tables(&["users"], TableEvent::Bypassed("why"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(stats.snapshot().hits, 1000);
        let tables = stats.table_snapshot();
        assert_eq!(
            tables["users"].hits, 1000,
            "a table named twice counts once"
        );
        assert_eq!(tables["addons"].hits, 1000);
        assert_eq!(tables["users"].bypassed, 5);
        assert_eq!(tables["users"].bypassed_by["why"], 5);
        assert_eq!(tables.len(), 2);
    }
}
