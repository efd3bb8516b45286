//! The write path: what a write invalidates ([`Invalidation`]) and how
//! ([`Cache::invalidate`]): bump the written tables' write generations (and versions, for
//! whole-table invalidation), then delete everything reachable from the written rows' flush
//! lists (their own lists and their children lists; their foreign-key parents' own lists)
//! and clear the lists with CAS.
//!
//! Nothing the cache holds can make an invalidation skip work: a counter that is not a number
//! is repaired and counts as bumped, a flush list that does not parse is treated as
//! overflowed (its table's version is bumped), and a failing step does not stop the steps
//! after it. An invalidation the backend could not take is not lost: it is queued and
//! delivered in the background (see [`Cache::pending_invalidations`]).

use std::collections::BTreeSet;

use std::time::Duration;

use crate::clock;
use crate::error::Result;
use crate::flush::{self, InvalidationReport};
use crate::hooks::HookRef;
use crate::io::{drive, Blocking, Io};
use crate::key::ObjectKey;
use crate::predicate::PredicateValue;
use crate::stats::Counter;
use crate::Cache;

/// Tables touched by a write, and the rows whose flush lists must be walked.
///
/// A written row is named with [`object`](Invalidation::object) (its own list and its
/// children list are walked); a row it points at through a foreign key with
/// [`parent`](Invalidation::parent) (its own list only: the queries that hold the parent go,
/// the queries that hold its other children stay).
///
/// ```
/// use caching_core::{Invalidation, ObjectKey};
/// let mut inv = Invalidation::new();
/// inv.object(ObjectKey::new("addons", &["1"])); // saved
/// inv.parent(ObjectKey::new("users", &["1"])); // its author
/// inv.whole_table("users");
/// assert_eq!(inv.tables().count(), 2);
/// assert_eq!(inv.objects().count(), 1);
/// assert_eq!(inv.parents().count(), 1);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invalidation {
    written: BTreeSet<String>,
    whole: BTreeSet<String>,
    objects: BTreeSet<ObjectKey>,
    parents: BTreeSet<ObjectKey>,
    keys: BTreeSet<String>,
    predicates: BTreeSet<(String, String, PredicateValue)>,
    exits: BTreeSet<String>,
    plain: bool,
}

impl Invalidation {
    /// Nothing to invalidate.
    pub fn new() -> Self {
        Self::default()
    }

    /// A row was written: its flush list (the queries and values that hold it) and its
    /// children list (those that hold a row pointing at it through a foreign key, see
    /// [`Registrations::child`](crate::Registrations::child)) are walked, and its model's
    /// write generation bumped.
    ///
    /// Walking the row's own list also follows the links of the older scheme
    /// ([`Registrations::link`](crate::Registrations::link)), so naming a foreign-key target
    /// here, as earlier versions did, still reaches the lists linked into it.
    pub fn object(&mut self, object: ObjectKey) -> &mut Self {
        self.written.insert(object.model().to_string());
        self.objects.insert(object);
        self
    }

    /// A row a written row points at through a foreign key (scenario 15: saving an add-on
    /// invalidates the cached queries that hold its authors): its own flush list is walked
    /// and its model's write generation bumped, but not its children list, so the queries
    /// that hold only its other children (the written row's siblings) stay cached and the
    /// write's cost does not grow with them. Queries a written row enters or leaves are
    /// reached through predicate and exit lists and generations, not through siblings (see
    /// `docs/src/invalidation.md`). A row also named with [`object`](Invalidation::object)
    /// has both of its lists walked.
    ///
    /// ```
    /// use caching_core::{Cache, Invalidation, ObjectKey, ReadOutcome, ReadPlan};
    /// let cache = Cache::locmem();
    /// let user = ObjectKey::new("users", &["1"]);
    /// let addons = [ObjectKey::new("addons", &["1"]), ObjectKey::new("addons", &["2"])];
    /// // One cached query per add-on of user 1, registered as a fill registers its rows.
    /// let read = |i: usize| {
    ///     let key = cache.keys().manual_key(&format!("addon-{i}"));
    ///     let plan = ReadPlan::new(&key, &["addons"]);
    ///     let load = || Ok::<_, std::convert::Infallible>(i);
    ///     let (_, outcome) = cache
    ///         .read_through(&plan, load, |_, regs| {
    ///             regs.row(cache.keys(), &addons[i], &key);
    ///             regs.child(cache.keys(), &addons[i], &user, &key);
    ///             Ok(())
    ///         })
    ///         .unwrap();
    ///     outcome
    /// };
    /// read(0);
    /// read(1);
    /// // Saving add-on 1: its own query goes, its sibling's stays.
    /// let mut inv = Invalidation::new();
    /// inv.object(addons[0].clone()).parent(user.clone());
    /// cache.invalidate(&inv).unwrap();
    /// assert_eq!((read(0), read(1)), (ReadOutcome::Miss, ReadOutcome::Hit));
    /// // Renaming the user: every query holding one of its add-ons goes.
    /// let mut inv = Invalidation::new();
    /// inv.object(user.clone());
    /// cache.invalidate(&inv).unwrap();
    /// assert_eq!((read(0), read(1)), (ReadOutcome::Miss, ReadOutcome::Miss));
    /// // The scheme of earlier versions: naming the parent with `object` walks its
    /// // children list too, so every sibling's query goes.
    /// let mut inv = Invalidation::new();
    /// inv.object(addons[0].clone()).object(user.clone());
    /// cache.invalidate(&inv).unwrap();
    /// assert_eq!((read(0), read(1)), (ReadOutcome::Miss, ReadOutcome::Miss));
    /// ```
    pub fn parent(&mut self, parent: ObjectKey) -> &mut Self {
        self.written.insert(parent.model().to_string());
        self.parents.insert(parent);
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

    /// A row of `table` with `column = value` was written (its new values, or the old values
    /// of a deleted row): every query with that equality condition is invalidated, and the
    /// table's write generation bumped.
    ///
    /// ```
    /// use caching_core::{Invalidation, PredicateValue};
    /// let mut inv = Invalidation::new();
    /// inv.predicate("addons", "author_id", PredicateValue::from_int(7));
    /// assert_eq!(inv.tables().collect::<Vec<_>>(), ["addons"]);
    /// ```
    pub fn predicate(&mut self, table: &str, column: &str, value: PredicateValue) -> &mut Self {
        self.written.insert(table.to_string());
        self.predicates
            .insert((table.to_string(), column.to_string(), value));
        self
    }

    /// Rows of `table` were written whose old values are unknown (an update that returned
    /// only the new rows): results that depend on rows of the table they do not contain
    /// (counts, aggregates) are invalidated, since a row may have left them.
    pub fn old_values_unknown(&mut self, table: &str) -> &mut Self {
        self.written.insert(table.to_string());
        self.exits.insert(table.to_string());
        self
    }

    /// Tables written by a statement whose rows are unknown (whole-table invalidation).
    pub fn whole_tables(&self) -> impl Iterator<Item = &str> {
        self.whole.iter().map(String::as_str)
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
        self.parents.extend(other.parents);
        self.keys.extend(other.keys);
        self.predicates.extend(other.predicates);
        self.exits.extend(other.exits);
        self.plain |= other.plain;
        self
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
            && self.objects.is_empty()
            && self.parents.is_empty()
            && self.keys.is_empty()
    }

    /// Marks the invalidation as following a write made outside the write helpers (counted in
    /// the `plain_writes` statistic).
    pub fn plain_write(&mut self) -> &mut Self {
        self.plain = true;
        self
    }

    /// Tables whose generation will be bumped.
    pub fn tables(&self) -> impl Iterator<Item = &str> {
        self.written.iter().map(String::as_str)
    }

    /// Written rows: their own flush lists and their children lists will be walked.
    pub fn objects(&self) -> impl Iterator<Item = &ObjectKey> {
        self.objects.iter()
    }

    /// Foreign-key parents of written rows that are not written rows themselves: their own
    /// flush lists will be walked, not their children lists.
    pub fn parents(&self) -> impl Iterator<Item = &ObjectKey> {
        self.parents.iter().filter(|p| !self.objects.contains(*p))
    }

    /// Whether a read of `table` may depend on what this invalidation deletes. Flush lists
    /// named without a table ([`flush_list`](Invalidation::flush_list)) may protect anything.
    pub(crate) fn may_affect(&self, table: &str) -> bool {
        !self.keys.is_empty() || self.written.contains(table)
    }
}

impl Cache {
    /// Runs an invalidation: bump write generations (and versions of whole tables), then
    /// delete everything reachable from the rows' flush lists and clear the lists with CAS.
    ///
    /// If the backend cannot take it (down, stalled, answering garbage), the invalidation is
    /// not lost: it is queued and retried in the background until it is delivered, and until
    /// then this cache's reads of the affected tables bypass the cache. The call waits for
    /// the delivery up to [`CacheConfig::invalidation_wait`](crate::CacheConfig::invalidation_wait)
    /// counted from the start of the outage (so a short stall is invisible to other
    /// processes, and a long outage does not slow every write); if it is still queued then,
    /// the report says so ([`InvalidationReport::deferred`]). The failure is counted in
    /// `failed_invalidations` and logged. Only a process that exits with undelivered invalidations leaves entries
    /// stale, until they expire (bound them with `max_timeout`).
    pub fn invalidate(&self, inv: &Invalidation) -> Result<InvalidationReport> {
        if inv.is_empty() {
            return Ok(InvalidationReport::default());
        }
        self.count_invalidation(inv);
        match self.settle_invalidation(inv, self.invalidate_once(inv)) {
            Settled::Done(report) => report,
            Settled::Queued(ticket) => Ok(self.wait_for(ticket)),
        }
    }

    /// [`invalidate`](Cache::invalidate) without blocking the thread (feature `tokio`): the
    /// same steps (the same code: the `io` module) on the backend's non-blocking client
    /// ([`Backend::batch_async`](crate::Backend::batch_async)). A backend without one is
    /// invalidated on the runtime's blocking pool (the in-process cache, which never blocks,
    /// on this thread). The rare steps that block (a server check after a reconnection,
    /// waiting for a queued invalidation's delivery) run on the blocking pool.
    ///
    /// A dropped future loses nothing: an invalidation it had not finished is handed to the
    /// background delivery (reads of its tables bypass the cache until it is delivered).
    ///
    /// ```
    /// use caching_core::{Cache, Invalidation, ObjectKey, Timeout};
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let cache = Cache::locmem();
    /// let user = ObjectKey::new("users", &["1"]);
    /// let a: u32 = cache.cached_with(&user, "score", Timeout::Forever, || 1);
    /// let mut inv = Invalidation::new();
    /// inv.object(user.clone());
    /// cache.invalidate_async(&inv).await.unwrap();
    /// let b: u32 = cache.cached_with(&user, "score", Timeout::Forever, || 2);
    /// assert_eq!((a, b), (1, 2));
    /// # });
    /// ```
    #[cfg(feature = "tokio")]
    pub async fn invalidate_async(&self, inv: &Invalidation) -> Result<InvalidationReport> {
        if inv.is_empty() {
            return Ok(InvalidationReport::default());
        }
        let Some(io) = crate::io::Nonblocking::of(&*self.inner.backend) else {
            if !self.inner.backend.may_block() || tokio::runtime::Handle::try_current().is_err() {
                // In-process, or not inside a runtime at all: nothing to keep unblocked.
                return self.invalidate(inv);
            }
            let (cache, owned) = (self.clone(), inv.clone());
            // Dropped while the blocking task runs, the invalidation is queued as well (the
            // caller's reads of its tables bypass the cache until one of them delivers it).
            let mut owed = Owed(Some((self, inv)));
            let ran = tokio::task::spawn_blocking(move || cache.invalidate(&owned)).await;
            owed.0 = None;
            return match ran {
                Ok(report) => report,
                // Never ran (the runtime is shutting down): the background delivery takes it.
                Err(_) => Ok(self.queue_unfinished(inv)),
            };
        };
        self.count_invalidation(inv);
        // Dropped before it is settled, the invalidation goes to the background delivery.
        let mut owed = Owed(Some((self, inv)));
        let attempt = self.invalidate_once_io(&io, inv).await;
        owed.0 = None;
        match self.settle_invalidation(inv, attempt) {
            Settled::Done(report) => report,
            Settled::Queued(ticket) => {
                let cache = self.clone();
                match tokio::task::spawn_blocking(move || cache.wait_for(ticket)).await {
                    Ok(report) => Ok(report),
                    Err(_) => Ok(InvalidationReport {
                        deferred: true,
                        ..InvalidationReport::default()
                    }),
                }
            }
        }
    }

    /// Queues an invalidation whose delivery is unknown for the background delivery.
    #[cfg(feature = "tokio")]
    fn queue_unfinished(&self, inv: &Invalidation) -> InvalidationReport {
        tracing::warn!(tables = ?inv.written, "invalidation not finished; queued for background delivery");
        let _ticket = self.inner.delivery.defer(self, inv.clone(), Duration::ZERO);
        InvalidationReport {
            deferred: true,
            ..InvalidationReport::default()
        }
    }

    /// Counts an invalidation about to be attempted.
    fn count_invalidation(&self, inv: &Invalidation) {
        self.inner.stats.inc(Counter::Invalidations);
        if inv.plain {
            self.inner.stats.inc(Counter::PlainWrites);
        }
    }

    /// What to do after one attempt at `inv`: done (delivered, or an error retrying cannot
    /// help), or queued for delivery (the backend failed), to be waited for.
    fn settle_invalidation(
        &self,
        inv: &Invalidation,
        attempt: Result<InvalidationReport>,
    ) -> Settled {
        Settled::Done(match attempt {
            Ok(r) => {
                tracing::debug!(tables = ?inv.written, objects = inv.objects.len(), parents = inv.parents.len(), deleted = r.deleted, "invalidated");
                Ok(r)
            }
            Err(e) if !e.is_backend_failure() => {
                // Not the backend's doing (a key no key space builds, say): retrying cannot
                // help, and the caller should know.
                tracing::error!(error = %e, tables = ?inv.written, "invalidation failed");
                Err(e)
            }
            Err(e) => {
                self.inner.stats.inc(Counter::BackendErrors);
                self.inner.stats.inc(Counter::FailedInvalidations);
                tracing::warn!(error = %e, tables = ?inv.written, "invalidation not delivered; queued for retry (reads of these tables bypass the cache until it is delivered)");
                let wait = self.inner.config.invalidation_wait;
                return Settled::Queued(self.inner.delivery.defer(self, inv.clone(), wait));
            }
        })
    }

    /// One attempt at an invalidation. Every step runs even if an earlier one failed (a
    /// deletion that can happen should); the first error is returned, and the caller
    /// delivers the whole invalidation again later (each step is idempotent).
    pub(crate) fn invalidate_once(&self, inv: &Invalidation) -> Result<InvalidationReport> {
        drive(self.invalidate_once_io(&Blocking(&*self.inner.backend), inv))
    }

    /// [`invalidate_once`](Cache::invalidate_once) over `io` (both drivers).
    async fn invalidate_once_io<I: Io>(
        &self,
        io: &I,
        inv: &Invalidation,
    ) -> Result<InvalidationReport> {
        let ks = &self.inner.keys;
        self.step("bump");
        let mut counters: Vec<String> = inv.written.iter().map(|t| ks.generation_key(t)).collect();
        counters.extend(inv.whole.iter().map(|t| ks.version_key(t)));
        let mut roots: Vec<String> = Vec::new();
        for o in &inv.objects {
            roots.push(ks.flush_key(o));
            roots.push(ks.children_key(o));
        }
        roots.extend(inv.parents().map(|p| ks.flush_key(p)));
        roots.extend(
            inv.predicates
                .iter()
                .map(|(t, c, v)| ks.predicate_key(t, c, v)),
        );
        roots.extend(inv.exits.iter().map(|t| ks.exit_list_key(t)));
        for k in &inv.keys {
            if crate::key::is_valid_key(k) {
                roots.push(k.clone());
            } else {
                // No key space builds it, so nothing can be registered on it; it must not
                // stop the rest of the walk.
                tracing::warn!(key = %k, "ignoring an invalid flush-list key in an invalidation");
            }
        }
        let flush::Walked { bumped, walked } =
            flush::invalidate(io, ks, &counters, roots, &HookRef(&self.inner.hook)).await;
        if let Ok(repaired) = &bumped {
            self.inner.stats.add(Counter::Repairs, *repaired);
        }
        if let Ok(r) = &walked {
            if r.repaired > 0 {
                self.inner.stats.add(Counter::Repairs, r.repaired as u64);
            }
        }
        // A server the walk reached on a new connection may have come back empty, its lists
        // (and the registrations of entries on other servers) gone: not done until checked.
        let watched = io.watch_servers(self).await;
        bumped.and(walked).and_then(|r| watched.map(|_| r))
    }

    /// Invalidates every query over `table` (and values tied to it), for writes made outside
    /// the library.
    ///
    /// ```
    /// let cache = caching_core::Cache::locmem();
    /// cache.invalidate_table("users").unwrap();
    /// assert_eq!(cache.stats().invalidations, 1);
    /// ```
    pub fn invalidate_table(&self, table: &str) -> Result<()> {
        let mut inv = Invalidation::new();
        inv.whole_table(table);
        self.invalidate(&inv).map(|_| ())
    }

    /// Invalidates every entry of this cache's key space (bumps the namespace version)
    /// without `flush_all`, so other prefixes on the same server are untouched. If the
    /// backend cannot take it now, it is queued like any invalidation (every read of this
    /// cache bypasses it until it is delivered), the call waits for it like
    /// [`invalidate`](Cache::invalidate) does, and the report says whether it is still
    /// queued.
    ///
    /// ```
    /// use caching_core::{Cache, Timeout};
    /// let cache = Cache::locmem();
    /// let a: u32 = cache.cached("k", Timeout::Forever, || 1);
    /// assert!(!cache.invalidate_everything().unwrap().deferred);
    /// let b: u32 = cache.cached("k", Timeout::Forever, || 2);
    /// assert_eq!((a, b), (1, 2));
    /// ```
    pub fn invalidate_everything(&self) -> Result<InvalidationReport> {
        self.inner.stats.inc(Counter::Invalidations);
        match self.bump_namespace() {
            Ok(()) => Ok(InvalidationReport::default()),
            Err(e) if !e.is_backend_failure() => Err(e),
            Err(e) => {
                self.inner.stats.inc(Counter::BackendErrors);
                self.inner.stats.inc(Counter::FailedInvalidations);
                tracing::warn!(error = %e, "namespace bump not delivered; queued for retry");
                let wait = self.inner.config.invalidation_wait;
                let ticket = self.inner.delivery.defer_everything(self, wait);
                Ok(self.wait_for(ticket))
            }
        }
    }

    /// Queues an invalidation for delivery by this cache's background thread, without
    /// waiting for it: for a write whose invalidation cannot run where it is known (a
    /// future dropped while its COMMIT was in flight, whose guard must not block). Until it
    /// is delivered, this cache's reads of the tables it touches bypass the cache
    /// ([`Cache::pending_invalidations`]), exactly as for an invalidation the backend failed
    /// to take.
    ///
    /// ```
    /// use std::time::Duration;
    /// use caching_core::{Cache, Invalidation, ObjectKey, Timeout};
    /// let cache = Cache::locmem();
    /// let user = ObjectKey::new("users", &["1"]);
    /// let _: u32 = cache.cached_with(&user, "score", Timeout::Forever, || 1);
    /// let mut inv = Invalidation::new();
    /// inv.object(user.clone());
    /// cache.invalidate_in_background(inv);
    /// assert!(cache.wait_for_delivery(Duration::from_secs(5)));
    /// let fresh: u32 = cache.cached_with(&user, "score", Timeout::Forever, || 2);
    /// assert_eq!(fresh, 2);
    /// ```
    pub fn invalidate_in_background(&self, inv: Invalidation) {
        if inv.is_empty() {
            return;
        }
        self.inner.stats.inc(Counter::Invalidations);
        if inv.plain {
            self.inner.stats.inc(Counter::PlainWrites);
        }
        tracing::debug!(tables = ?inv.written, "invalidation queued for background delivery");
        let _ticket = self.inner.delivery.defer(self, inv, Duration::ZERO);
    }

    /// [`invalidate_everything`](Cache::invalidate_everything) by the background delivery,
    /// without waiting (see [`invalidate_in_background`](Cache::invalidate_in_background));
    /// until it is delivered, every read of this cache bypasses it.
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache = caching_core::Cache::locmem();
    /// let a: u32 = cache.cached("n", caching_core::Timeout::Forever, || 1);
    /// cache.invalidate_everything_in_background();
    /// assert!(cache.wait_for_delivery(Duration::from_secs(5)));
    /// let b: u32 = cache.cached("n", caching_core::Timeout::Forever, || 2);
    /// assert_eq!((a, b), (1, 2));
    /// ```
    pub fn invalidate_everything_in_background(&self) {
        self.inner.stats.inc(Counter::Invalidations);
        tracing::debug!("namespace bump queued for background delivery");
        let _ticket = self.inner.delivery.defer_everything(self, Duration::ZERO);
    }

    /// Waits for a queued invalidation until its deadline. A stall or a restart usually ends
    /// within it: the write returns once its invalidation is through, so no reader that
    /// starts after it returned can be served the old row.
    fn wait_for(&self, (ticket, deadline): (u64, std::time::Instant)) -> InvalidationReport {
        InvalidationReport {
            deferred: !self.inner.delivery.wait(ticket, deadline),
            ..InvalidationReport::default()
        }
    }

    pub(crate) fn bump_namespace(&self) -> Result<()> {
        let io = Blocking(&*self.inner.backend);
        let repaired = drive(clock::bump(&io, &[self.inner.keys.namespace_key()]))?;
        self.inner.stats.add(Counter::Repairs, repaired);
        Ok(())
    }
}

/// What an attempt at an invalidation leaves to do ([`Cache::settle_invalidation`]).
enum Settled {
    /// Delivered, or failed in a way retrying cannot help.
    Done(Result<InvalidationReport>),
    /// Queued for the background delivery: its ticket and deadline, to wait for.
    Queued((u64, std::time::Instant)),
}

/// An invalidation [`Cache::invalidate_async`] has not settled yet: dropped so (a cancelled
/// future), it is queued for the background delivery.
#[cfg(feature = "tokio")]
struct Owed<'c>(Option<(&'c Cache, &'c Invalidation)>);

#[cfg(feature = "tokio")]
impl Drop for Owed<'_> {
    fn drop(&mut self) {
        if let Some((cache, inv)) = self.0.take() {
            cache.queue_unfinished(inv);
        }
    }
}
