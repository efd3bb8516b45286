//! Counters of what a cache did, readable as a snapshot by tests and users.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! stats {
    ($($(#[doc = $doc:expr])* $name:ident),* $(,)?) => {
        /// Live counters of one [`Cache`](crate::Cache) (shared by its clones).
        #[derive(Debug, Default)]
        pub struct Stats {
            $($name: AtomicU64,)*
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
                StatsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
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
        };
        a.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn inc(&self, c: Counter) {
        self.add(c, 1);
    }
}
