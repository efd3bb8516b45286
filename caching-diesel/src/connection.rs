//! The cached connection: a Diesel connection plus the caches it reads and invalidates, its
//! database label, and the transaction state that defers invalidation to COMMIT.
//!
//! It dereferences to the wrapped connection, so every plain Diesel call works unchanged
//! (`users.load::<User>(&mut *conn)`); cached reads and write helpers take the
//! `CachedConnection` itself, so they always know whether a transaction is open.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use caching_core::{Cache, Expiry, Invalidation, ReadPlan};
use diesel::connection::{Instrumentation, InstrumentationEvent};

use crate::caches::{process_caches, CacheSet};
use crate::error::Error;
use crate::key::{CacheConnection, Templates};
use crate::plain::PlainWrites;
use crate::transaction::TxState;

/// Watches Diesel's events on the wrapped connection: transactions (so the cache can tell
/// when one was begun behind its back) and write statements not made by a write helper
/// (invalidated at table level once they commit, see [`crate::plain`]). Every event is
/// forwarded to the user's own instrumentation.
struct Observer {
    depth: Arc<AtomicU32>,
    plain: Arc<Mutex<PlainWrites>>,
    user: Arc<Mutex<Option<Box<dyn Instrumentation>>>>,
}

impl Instrumentation for Observer {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match &event {
            InstrumentationEvent::BeginTransaction { depth, .. } => {
                self.depth.store(depth.get(), Ordering::Relaxed)
            }
            InstrumentationEvent::CommitTransaction { depth, .. }
            | InstrumentationEvent::RollbackTransaction { depth, .. } => {
                self.depth.store(depth.get() - 1, Ordering::Relaxed)
            }
            _ => {}
        }
        crate::plain::observe(&self.plain, &event);
        if let Some(inner) = self.user.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            inner.on_connection_event(event);
        }
    }
}

/// A Diesel connection with a query cache.
///
/// ```
/// use caching_diesel::{Cache, CacheSet, CachedConnection};
/// use diesel::prelude::*;
/// let raw = SqliteConnection::establish(":memory:").unwrap();
/// let mut conn = CachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
/// assert_eq!(conn.label(), "default");
/// // Plain Diesel through deref:
/// diesel::sql_query("CREATE TABLE t (id INTEGER PRIMARY KEY)").execute(&mut *conn).unwrap();
/// ```
pub struct CachedConnection<C: CacheConnection> {
    pub(crate) conn: C,
    pub(crate) caches: CacheSet,
    pub(crate) label: String,
    /// What the connection remembers per query type (SQL, analysis, key prefixes).
    pub(crate) templates: Templates,
    replica: bool,
    pub(crate) tx: TxState,
    observed_depth: Arc<AtomicU32>,
    pub(crate) plain: Arc<Mutex<PlainWrites>>,
    user_instrumentation: Arc<Mutex<Option<Box<dyn Instrumentation>>>>,
}

impl<C: CacheConnection> std::fmt::Debug for CachedConnection<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedConnection")
            .field("label", &self.label)
            .field("replica", &self.replica)
            .field("caches", &self.caches)
            .field("transaction_depth", &self.tx.depth())
            .finish()
    }
}

impl<C: CacheConnection> CachedConnection<C> {
    /// Wraps `conn` with the process caches ([`install`](crate::install), else `CACHE_URL`).
    pub fn new(conn: C) -> Result<Self, Error> {
        Ok(Self::with_caches(conn, process_caches()?))
    }

    /// Connects to `database_url` and wraps the connection with the process caches.
    pub fn establish(database_url: &str) -> Result<Self, Error> {
        Self::new(C::establish(database_url)?)
    }

    /// Wraps `conn` with explicit caches. Diesel's global default instrumentation, if any, is
    /// kept (chained).
    pub fn with_caches(conn: C, caches: CacheSet) -> Self {
        let inner = diesel::connection::get_default_instrumentation();
        Self::build(conn, caches, inner)
    }

    /// Wraps `conn` with explicit caches and an instrumentation of your own (a connection
    /// holds one instrumentation; the cached connection installs its own observer and forwards
    /// every event to `instrumentation`). Replacing the instrumentation later through the
    /// wrapped connection disables detection of transactions begun behind the cache's back.
    pub fn with_instrumentation(
        conn: C,
        caches: CacheSet,
        instrumentation: impl Instrumentation,
    ) -> Self {
        Self::build(conn, caches, Some(Box::new(instrumentation)))
    }

    fn build(mut conn: C, caches: CacheSet, inner: Option<Box<dyn Instrumentation>>) -> Self {
        let observed_depth = Arc::new(AtomicU32::new(0));
        let plain = Arc::new(Mutex::new(PlainWrites::new(
            caches.clone(),
            crate::deps::dialect_of(C::BACKEND),
        )));
        let user_instrumentation = Arc::new(Mutex::new(inner));
        conn.set_instrumentation(Observer {
            depth: observed_depth.clone(),
            plain: plain.clone(),
            user: user_instrumentation.clone(),
        });
        CachedConnection {
            conn,
            caches,
            label: "default".to_string(),
            templates: Templates::default(),
            replica: false,
            tx: TxState::default(),
            observed_depth,
            plain,
            user_instrumentation,
        }
    }

    /// Replaces your own instrumentation (the cache's observer stays in place and forwards
    /// every event to it). Same as Diesel's `Connection::set_instrumentation` on this
    /// connection.
    pub fn set_user_instrumentation(&mut self, instrumentation: Option<Box<dyn Instrumentation>>) {
        *self
            .user_instrumentation
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = instrumentation;
    }

    /// Runs a write helper's statement: its writes are invalidated by the helper, precisely,
    /// so the plain-write observer leaves them alone.
    pub(crate) fn helper_write<T>(
        &mut self,
        f: impl FnOnce(&mut C) -> diesel::QueryResult<T>,
    ) -> diesel::QueryResult<T> {
        let _helper = crate::plain::HelperScope::enter(&self.plain);
        crate::plain::take_helper_tables(&self.plain);
        f(&mut self.conn)
    }

    /// Adds to a helper's invalidation the tables its statements wrote that the helper's
    /// model does not cover (`execute_bulk::<User, _>(delete(addons))`, an insert into another
    /// table): those are invalidated whole. (A helper statement whose tables cannot be told
    /// is logged; its model's invalidation is all it gets.)
    pub(crate) fn with_helper_tables(&self, mut inv: Invalidation) -> Invalidation {
        let known: std::collections::BTreeSet<String> = inv.tables().map(str::to_string).collect();
        for t in crate::plain::take_helper_tables(&self.plain) {
            if t == crate::sql::EVERYTHING {
                tracing::warn!(
                    "a write helper's statement writes tables its SQL does not name; only its model is invalidated"
                );
            } else if !known.contains(&t) {
                inv.whole_table(&t);
            }
        }
        inv
    }

    /// Runs the invalidations of plain writes whose COMMIT has completed (normally the
    /// observer runs them as soon as the COMMIT returns; this catches a COMMIT whose end
    /// the observer did not see).
    pub(crate) fn settle_plain_writes(&mut self) {
        crate::plain::settle(&self.plain);
    }

    /// Whether strict writes are on (any cache of the set asks for them).
    pub(crate) fn strict_writes(&self) -> bool {
        crate::plain::strict(&self.plain)
    }

    /// Sets the database label (part of every query key: a primary and a replica, or two
    /// databases, are cached separately; invalidation reaches all of them).
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        // The label is part of the remembered key prefixes.
        self.templates = Templates::default();
        self
    }

    /// Marks the connection as reading from a replica: its fills live at most the cache's
    /// replica timeout, which bounds how long replica lag can keep an old row cached.
    pub fn as_replica(mut self, replica: bool) -> Self {
        self.replica = replica;
        self
    }

    /// The database label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether the connection is labelled as a replica.
    pub fn is_replica(&self) -> bool {
        self.replica
    }

    /// The caches of this connection.
    pub fn caches(&self) -> &CacheSet {
        &self.caches
    }

    /// The default cache of this connection.
    pub fn cache(&self) -> &Cache {
        self.caches.default_cache()
    }

    /// The wrapped connection.
    pub fn inner(&mut self) -> &mut C {
        &mut self.conn
    }

    /// Unwraps the connection. Pending invalidations of plain writes that have committed are
    /// run, and the connection's instrumentation is put back as it was before wrapping (the
    /// one given to [`with_instrumentation`](Self::with_instrumentation), else Diesel's
    /// default): writes made on the unwrapped connection are no longer seen.
    ///
    /// ```
    /// use caching_diesel::{Cache, CacheSet, CachedConnection};
    /// use diesel::prelude::*;
    /// let raw = SqliteConnection::establish(":memory:").unwrap();
    /// let conn = CachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
    /// let mut raw: SqliteConnection = conn.into_inner();
    /// diesel::sql_query("SELECT 1").execute(&mut raw).unwrap();
    /// ```
    pub fn into_inner(mut self) -> C {
        self.settle_plain_writes();
        let user = self
            .user_instrumentation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.conn.set_instrumentation(user);
        self.conn
    }

    /// Whether a transaction is open that was not begun through this wrapper.
    pub(crate) fn in_foreign_transaction(&self) -> bool {
        self.observed_depth.load(Ordering::Relaxed) as usize > self.tx.depth()
            || crate::plain::in_raw_transaction(&self.plain)
    }

    /// Whether a transaction (of either kind) is open.
    pub fn in_transaction(&self) -> bool {
        self.tx.depth() > 0 || self.in_foreign_transaction()
    }

    /// Runs an invalidation now in every cache of the connection, or queues it until the
    /// outermost COMMIT when a transaction is open. Backend failures are retried, logged and
    /// counted by the cache; the write they follow has happened either way.
    pub fn invalidate_with(&mut self, inv: Invalidation) -> Result<(), Error> {
        if inv.is_empty() {
            return Ok(());
        }
        if self.tx.depth() > 0 {
            self.tx.queue(inv);
            return Ok(());
        }
        if self.in_foreign_transaction() {
            return Err(Error::ForeignTransaction);
        }
        self.run_invalidation(&inv);
        Ok(())
    }

    pub(crate) fn run_invalidation(&self, inv: &Invalidation) {
        for cache in self.caches.all() {
            // Errors are logged and counted inside; nothing more to do here.
            let _ = cache.invalidate(inv);
        }
    }

    /// The connection's rules for a cached read over `tables`: bypass the cache where
    /// [`must_bypass`](Self::must_bypass) says so, never fill inside a transaction, and live at
    /// most `cap` and, on a replica, the cache's replica timeout.
    pub(crate) fn plan_read<'a>(
        &self,
        cache: &Cache,
        mut plan: ReadPlan<'a>,
        tables: &[&str],
        cap: Option<Duration>,
    ) -> ReadPlan<'a> {
        if self.must_bypass(tables) {
            plan = plan.bypass("transaction sees its own writes");
        } else if self.in_transaction() {
            plan = plan.no_fill("inside a transaction");
        }
        let replica = self
            .is_replica()
            .then(|| Expiry::from_duration(cache.config().replica_timeout));
        match cap
            .map(Expiry::from_duration)
            .into_iter()
            .chain(replica)
            .reduce(Expiry::min)
        {
            Some(cap) => plan.cap(cap),
            None => plan,
        }
    }

    /// Whether a cached read over `tables` must skip the cache: inside a transaction begun
    /// behind the cache's back, or over a table this transaction has written.
    pub(crate) fn must_bypass(&self, tables: &[&str]) -> bool {
        self.in_foreign_transaction()
            || tables.iter().any(|t| self.tx.is_dirty(t))
            || crate::plain::dirties(&self.plain, tables)
    }
}

impl<C: CacheConnection> Deref for CachedConnection<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.conn
    }
}

impl<C: CacheConnection> DerefMut for CachedConnection<C> {
    fn deref_mut(&mut self) -> &mut C {
        &mut self.conn
    }
}
