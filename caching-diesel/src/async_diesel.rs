//! The cache for [diesel-async](https://docs.rs/diesel-async) connections (feature `async`):
//! [`AsyncCachedConnection`] wraps an `AsyncPgConnection` (feature `postgres`), an
//! `AsyncMysqlConnection` (`mysql`) or a `SyncConnectionWrapper<SqliteConnection>`
//! (`sqlite`) with the same [`CacheSet`] a [`CachedConnection`](crate::CachedConnection)
//! uses, and the same keys: a blocking and an async connection to one database share
//! entries.
//!
//! One protocol: a cached read runs the engine's two halves ([`Cache::begin_read`], then
//! [`PendingFill::finish`](caching_core::PendingFill::finish)) around the awaited database
//! read, exactly the steps the blocking `read_through` runs; the engine writes those steps
//! once, as `async fn`s over its I/O, and runs them with a blocking or a non-blocking driver.
//! Backend calls of the in-process cache (`locmem://`) run inline. On memcached and Redis the
//! whole read (lookup, lease and its waits, register, check, publish) runs on the backend's
//! tokio client ([`Cache::begin_read_async`], [`PreparedFill::publish_async`](caching_core::PreparedFill::publish_async));
//! the rare read that needs a server check first (after a reconnection, several servers) runs
//! its first half on tokio's blocking pool (`spawn_blocking`) with the blocking client. A
//! write's invalidation runs on the non-blocking client too ([`Cache::invalidate_async`]).
//! Inline reads never wait for another reader's fill (stampede protection's wait would block
//! the runtime's thread): such a reader reads the database at once.
//!
//! Writes through the helpers invalidate as the blocking ones do; inside
//! [`AsyncCachedConnection::transaction`] their invalidations wait for the COMMIT.
//! Cancellation (a future dropped at any `.await`) never loses the invalidation of a write
//! that may have committed, and never runs one for a write that rolled back:
//!
//! - dropped before COMMIT was sent (in the closure, in a write): nothing committed, the
//!   transaction's invalidations are dropped; the connection is left inside the
//!   transaction, so it counts as broken: cached reads bypass the cache, writes helpers and
//!   transactions refuse ([`Error::ForeignTransaction`](crate::Error::ForeignTransaction),
//!   Diesel's `BrokenTransactionManager`), and pools discard it;
//! - dropped while COMMIT is in flight (outcome unknown): the invalidation is delivered
//!   anyway, by the cache's background delivery (reads of its tables bypass the cache until
//!   it is delivered): invalidating too much is harmless, too little is not;
//! - dropped after COMMIT: the invalidation runs to its end (on the blocking pool), or, if
//!   it never started, is handed to the background delivery;
//! - a write helper outside a transaction dropped while its statement is in flight: its
//!   table is invalidated whole in the background (its rows are unknown).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use caching_core::{Cache, Expiry, Invalidation, ReadOutcome, ReadPlan, ReadStart, Timeout};
use diesel::dsl::{CountStar, Limit, Select};
use diesel::query_builder::{AsQuery, QueryFragment, QueryId};
use diesel::query_dsl::methods::{LimitDsl, SelectDsl};
use diesel::QueryResult;
use diesel_async::methods::{ExecuteDsl, LoadQuery};
use diesel_async::{
    AsyncConnection, AsyncConnectionCore, RunQueryDsl, SimpleAsyncConnection, TransactionManager,
};

use crate::caches::{process_caches, CacheSet};
use crate::error::Error;
use crate::key::{finish_key, CacheConnection, KeyBinds, Templates};
use crate::model::{CacheableRow, CachedModel};
use crate::plain::{plain_invalidation, RawControl};
use crate::query::{first_row, CachedQuery, QueryOptions};
use crate::transaction::{commit_delivers, wrote_nothing, TxState};
use crate::write::{creation_of, rows_invalidation, updated, whole};

/// A diesel-async connection whose queries can be keyed: its key derivation is the blocking
/// connection's ([`Keyed`](AsyncCacheConnection::Keyed)) of the same database, so both
/// read the same entries. Implemented for `AsyncPgConnection` (feature `postgres`),
/// `AsyncMysqlConnection` (`mysql`) and `SyncConnectionWrapper<SqliteConnection>`
/// (`sqlite`).
pub trait AsyncCacheConnection: AsyncConnection + Send + 'static {
    /// The blocking connection to the same database (SQL rendering, backend name).
    type Keyed: CacheConnection<Backend = Self::Backend>;

    /// Collects the binds of `query` into `out` (their values too if `decode`). An error
    /// makes the read bypass the cache. Not a public API.
    #[doc(hidden)]
    fn key_binds<Q>(&mut self, query: &Q, out: &mut KeyBinds, decode: bool) -> QueryResult<()>
    where
        Q: QueryFragment<Self::Backend> + ?Sized;
}

#[cfg(feature = "postgres")]
mod pg_lookup {
    use diesel::pg::{
        FailedToLookupTypeError, PgMetadataCacheKey, PgMetadataLookup, PgTypeMetadata,
    };

    /// The binds of a key need no round trip: built-in types carry their OIDs; a custom type
    /// (an enum, say) would need a lookup, which this one refuses (the read then bypasses
    /// the cache).
    pub(super) struct NoLookup;

    impl PgMetadataLookup for NoLookup {
        fn lookup_type(&mut self, type_name: &str, schema: Option<&str>) -> PgTypeMetadata {
            let key = PgMetadataCacheKey::new(
                schema.map(|s| s.to_string().into()),
                type_name.to_string().into(),
            );
            PgTypeMetadata::from_result(Err(FailedToLookupTypeError::new(key)))
        }
    }
}

#[cfg(feature = "postgres")]
impl AsyncCacheConnection for diesel_async::AsyncPgConnection {
    type Keyed = diesel::PgConnection;

    fn key_binds<Q>(&mut self, query: &Q, out: &mut KeyBinds, decode: bool) -> QueryResult<()>
    where
        Q: QueryFragment<Self::Backend> + ?Sized,
    {
        // Built-in types carry their OIDs; a custom type's is refused (the read bypasses).
        crate::key::pg_binds(query, &mut pg_lookup::NoLookup, out, decode)
    }
}

#[cfg(feature = "mysql")]
impl AsyncCacheConnection for diesel_async::AsyncMysqlConnection {
    type Keyed = diesel::MysqlConnection;

    fn key_binds<Q>(&mut self, query: &Q, out: &mut KeyBinds, decode: bool) -> QueryResult<()>
    where
        Q: QueryFragment<Self::Backend> + ?Sized,
    {
        crate::key::mysql_binds(query, out, decode)
    }
}

#[cfg(feature = "sqlite")]
impl AsyncCacheConnection
    for diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>
{
    type Keyed = diesel::SqliteConnection;

    fn key_binds<Q>(&mut self, query: &Q, out: &mut KeyBinds, decode: bool) -> QueryResult<()>
    where
        Q: QueryFragment<Self::Backend> + ?Sized,
    {
        crate::key::sqlite_binds(query, out, decode)
    }
}

/// Pooled connections (features `deadpool`, `bb8`) key their queries as the connection they
/// hold does: wrap each checkout, `AsyncCachedConnection::with_caches(pool.get().await?,
/// caches.clone())` (bb8: `Pool::get_owned`; see `docs/src/async.md`).
#[cfg(any(feature = "deadpool", feature = "bb8"))]
macro_rules! pooled {
    ($pooled:ty, $conn:ty) => {
        impl AsyncCacheConnection for $pooled {
            type Keyed = <$conn as AsyncCacheConnection>::Keyed;

            fn key_binds<Q>(
                &mut self,
                query: &Q,
                out: &mut KeyBinds,
                decode: bool,
            ) -> QueryResult<()>
            where
                Q: QueryFragment<Self::Backend> + ?Sized,
            {
                <$conn as AsyncCacheConnection>::key_binds(self, query, out, decode)
            }
        }
    };
}

#[cfg(all(feature = "deadpool", feature = "postgres"))]
pooled!(
    diesel_async::pooled_connection::deadpool::Object<diesel_async::AsyncPgConnection>,
    diesel_async::AsyncPgConnection
);
#[cfg(all(feature = "deadpool", feature = "mysql"))]
pooled!(
    diesel_async::pooled_connection::deadpool::Object<diesel_async::AsyncMysqlConnection>,
    diesel_async::AsyncMysqlConnection
);
#[cfg(all(feature = "deadpool", feature = "sqlite"))]
pooled!(
    diesel_async::pooled_connection::deadpool::Object<
        diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>,
    >,
    diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>
);
#[cfg(all(feature = "bb8", feature = "postgres"))]
pooled!(
    diesel_async::pooled_connection::bb8::PooledConnection<
        'static,
        diesel_async::AsyncPgConnection,
    >,
    diesel_async::AsyncPgConnection
);
#[cfg(all(feature = "bb8", feature = "mysql"))]
pooled!(
    diesel_async::pooled_connection::bb8::PooledConnection<
        'static,
        diesel_async::AsyncMysqlConnection,
    >,
    diesel_async::AsyncMysqlConnection
);
#[cfg(all(feature = "bb8", feature = "sqlite"))]
pooled!(
    diesel_async::pooled_connection::bb8::PooledConnection<
        'static,
        diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>,
    >,
    diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>
);

/// Whether `cache`'s backend calls may run on the runtime's thread (in-process, never
/// blocking on I/O).
fn inline(cache: &Cache) -> bool {
    !cache.backend().may_block()
}

/// Runs `f` where blocking is allowed: on tokio's blocking pool when a runtime is there,
/// else right here. `None` when the blocking task panicked or was cancelled (runtime
/// shutting down): what it owned was dropped (guards deliver on drop).
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.spawn_blocking(f).await.ok(),
        Err(_) => Some(f()),
    }
}

/// Drops its value where blocking is allowed (a pending fill on a network backend deletes
/// its lease marker when dropped): used for what a cancelled future leaves behind.
struct DropOffRuntime<T: Send + 'static> {
    value: Option<T>,
    inline: bool,
}

impl<T: Send + 'static> DropOffRuntime<T> {
    fn new(value: T, inline: bool) -> Self {
        DropOffRuntime {
            value: Some(value),
            inline,
        }
    }

    fn take(mut self) -> Option<T> {
        self.value.take()
    }
}

impl<T: Send + 'static> Drop for DropOffRuntime<T> {
    fn drop(&mut self) {
        let Some(value) = self.value.take() else {
            return;
        };
        if !self.inline {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                drop(handle.spawn_blocking(move || drop(value)));
                return;
            }
        }
        drop(value);
    }
}

/// An invalidation that must reach every cache of a set: [`run`](Self::run) delivers it now
/// (blocking); dropped without running (a future cancelled while a COMMIT or a write was in
/// flight, a blocking task that never ran), it is handed to each cache's background
/// delivery, so it is never lost. [`disarm`](Self::disarm) drops it (nothing committed).
struct OwedInvalidation {
    caches: Vec<Cache>,
    inv: Option<Invalidation>,
    /// A write whose tables are unknown: the whole key space (a namespace bump).
    everything: bool,
}

impl OwedInvalidation {
    fn new(caches: &CacheSet, inv: Invalidation) -> Self {
        OwedInvalidation {
            caches: caches.all().into_iter().cloned().collect(),
            inv: (!inv.is_empty()).then_some(inv),
            everything: false,
        }
    }

    /// Every entry of every cache of the set (a plain write whose tables are unknown).
    fn everything(caches: &CacheSet) -> Self {
        OwedInvalidation {
            caches: caches.all().into_iter().cloned().collect(),
            inv: None,
            everything: true,
        }
    }

    fn all_inline(&self) -> bool {
        self.caches.iter().all(inline)
    }

    fn run(mut self) {
        if std::mem::take(&mut self.everything) {
            for cache in &self.caches {
                // Errors are logged, counted and queued for retry inside.
                let _ = cache.invalidate_everything();
            }
        }
        if let Some(inv) = self.inv.take() {
            for cache in &self.caches {
                let _ = cache.invalidate(&inv);
            }
        }
    }

    fn disarm(mut self) {
        self.inv = None;
        self.everything = false;
    }

    /// Delivers it now. A namespace bump: inline for in-process caches, else on the blocking
    /// pool (a cancellation of the caller does not stop it). An invalidation: through each
    /// cache's [`Cache::invalidate_async`] (its non-blocking client; inline for an
    /// in-process cache). Cancelled mid-way, what is not delivered yet goes to the
    /// background delivery: the cache being invalidated by its own guard, the others by
    /// this one's drop.
    async fn deliver(mut self) {
        if self.everything {
            if self.all_inline() {
                self.run();
            } else {
                let _ = blocking(move || self.run()).await;
            }
            return;
        }
        let Some(inv) = self.inv.clone() else {
            return;
        };
        while let Some(cache) = <[Cache]>::first(&self.caches).cloned() {
            // Errors are logged, counted and queued for retry inside.
            let _ = cache.invalidate_async(&inv).await;
            self.caches.remove(0);
        }
        self.inv = None;
    }
}

impl Drop for OwedInvalidation {
    fn drop(&mut self) {
        if std::mem::take(&mut self.everything) {
            for cache in &self.caches {
                cache.invalidate_everything_in_background();
            }
        }
        if let Some(inv) = self.inv.take() {
            for cache in &self.caches {
                cache.invalidate_in_background(inv.clone());
            }
        }
    }
}

/// Counts the transactions of a connection whose future is alive: a level of the
/// connection's transaction state without its future was cancelled.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn enter(count: &Arc<AtomicUsize>) -> Live {
        count.fetch_add(1, Ordering::AcqRel);
        Live(count.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The callback of [`AsyncCachedConnection::transaction`]: an async closure whose future is
/// `Send` (diesel-async's pattern; `async |conn| { .. }` works).
pub trait TransactionFn<T, R>:
    AsyncFnOnce(T) -> R + FnOnce(T) -> <Self as TransactionFn<T, R>>::Fut
{
    /// The closure's future.
    type Fut: Future<Output = R>;
}

impl<F, T, Fut, R> TransactionFn<T, R> for F
where
    F: AsyncFnOnce(T) -> R + FnOnce(T) -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;
}

/// A diesel-async connection with a query cache: `.cached()` queries read through it
/// (`load(&mut conn).await`, `first`, `get_result`, `get_results`, `cached_count`, from
/// [`CachedRunQueryDsl`]), write helpers invalidate, and
/// [`transaction`](Self::transaction) defers invalidation to COMMIT. See the
/// [module docs](self) for cancellation.
///
/// ```
/// use caching_diesel::async_prelude::*;
/// use caching_diesel::{AsyncCachedConnection, Cache, CacheSet};
/// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
/// diesel::table! { users (id) { id -> Integer, name -> Text } }
/// #[derive(Queryable, Selectable, Identifiable, AsChangeset, Cached, serde::Serialize, serde::Deserialize)]
/// #[diesel(table_name = users)]
/// struct User { id: i32, name: String }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let raw = SyncConnectionWrapper::<SqliteConnection>::establish(":memory:").await?;
/// let mut conn = AsyncCachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
/// diesel::sql_query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)").execute(conn.inner()).await?;
/// diesel::sql_query("INSERT INTO users VALUES (1, 'fliggy')").execute(conn.inner()).await?;
/// let u: User = users::table.find(1).cached().first(&mut conn).await?; // database
/// let u: User = users::table.find(1).cached().first(&mut conn).await?; // cache
/// assert_eq!(conn.cache().stats().hits, 1);
/// conn.transaction(async |conn| {
///     conn.save_changes::<User, _>(&User { id: 1, name: "clouseroo".into() }).await
/// }).await?; // COMMIT, then the invalidation
/// let u: User = users::table.find(1).cached().first(&mut conn).await?;
/// assert_eq!(u.name, "clouseroo");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct AsyncCachedConnection<C: AsyncCacheConnection> {
    conn: C,
    caches: CacheSet,
    label: String,
    templates: Templates,
    replica: bool,
    tx: TxState,
    live: Arc<AtomicUsize>,
    /// Transactions and savepoints opened with raw SQL (`BEGIN` through `batch_execute` or
    /// `sql_query(..).execute`), with the invalidations their plain writes owe at `COMMIT`.
    raw: RawLevels,
}

impl<C: AsyncCacheConnection> std::fmt::Debug for AsyncCachedConnection<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncCachedConnection")
            .field("label", &self.label)
            .field("replica", &self.replica)
            .field("caches", &self.caches)
            .field("transaction_depth", &self.tx.depth())
            .finish()
    }
}

/// A read's key and dependencies, owned (nothing borrowed across the awaits).
struct Planned {
    key: String,
    tables: Vec<String>,
    guarded: Vec<String>,
    timeout: Timeout,
    cap: Option<Expiry>,
    bypass: Option<&'static str>,
    no_fill: Option<&'static str>,
}

impl Planned {
    fn with_plan<R>(&self, wait: bool, f: impl FnOnce(&ReadPlan<'_>) -> R) -> R {
        let (tables, guarded) = self.table_refs();
        f(&self.plan(&tables, &guarded, wait))
    }

    /// The tables read and the guarded ones, as a [`ReadPlan`] takes them.
    fn table_refs(&self) -> (Vec<&str>, Vec<&str>) {
        (
            self.tables.iter().map(String::as_str).collect(),
            self.guarded.iter().map(String::as_str).collect(),
        )
    }

    /// The first half of the read without blocking the runtime's thread, on a backend with a
    /// non-blocking client ([`Cache::begin_read_async`]): lookup and lease, waits on tokio
    /// timers. `None` when that cannot be done here.
    async fn begin_read_async<T: serde::de::DeserializeOwned>(
        &self,
        cache: &Cache,
    ) -> Option<ReadStart<T>> {
        let (tables, guarded) = self.table_refs();
        let plan = self.plan(&tables, &guarded, true);
        cache.begin_read_async(&plan).await
    }

    /// A hit read without blocking the runtime's thread ([`Cache::try_hit_async`]), for a
    /// backend that reads without blocking but cannot batch so; `None` for anything else.
    async fn try_hit<T: serde::de::DeserializeOwned>(&self, cache: &Cache) -> Option<T> {
        let (tables, guarded) = self.table_refs();
        let plan = self.plan(&tables, &guarded, false);
        cache.try_hit_async(&plan).await
    }

    fn plan<'p>(
        &'p self,
        tables: &'p [&'p str],
        guarded: &'p [&'p str],
        wait: bool,
    ) -> ReadPlan<'p> {
        let mut plan = ReadPlan::new(&self.key, tables)
            .timeout(self.timeout)
            .guard(guarded);
        if let Some(cap) = self.cap {
            plan = plan.cap(cap);
        }
        if let Some(why) = self.bypass {
            plan = plan.bypass(why);
        } else if let Some(why) = self.no_fill {
            plan = plan.no_fill(why);
        }
        if !wait {
            plan = plan.without_waiting();
        }
        plan
    }
}

impl<C: AsyncCacheConnection> AsyncCachedConnection<C> {
    /// Wraps `conn` with the process caches ([`install`](crate::install), else `CACHE_URL`).
    pub fn new(conn: C) -> Result<Self, Error> {
        Ok(Self::with_caches(conn, process_caches()?))
    }

    /// Connects to `database_url` and wraps the connection with the process caches.
    pub async fn establish(database_url: &str) -> Result<Self, Error> {
        let conn = C::establish(database_url).await?;
        Self::new(conn)
    }

    /// Wraps `conn` with explicit caches.
    pub fn with_caches(conn: C, caches: CacheSet) -> Self {
        AsyncCachedConnection {
            conn,
            caches,
            label: "default".to_string(),
            templates: Templates::default(),
            replica: false,
            tx: TxState::default(),
            live: Arc::new(AtomicUsize::new(0)),
            raw: RawLevels::default(),
        }
    }

    /// Sets the database label (part of every query key), as
    /// [`CachedConnection::with_label`](crate::CachedConnection::with_label).
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self.templates = Templates::default();
        self
    }

    /// Marks the connection as reading from a replica (fills live at most the cache's
    /// replica timeout).
    pub fn as_replica(mut self, replica: bool) -> Self {
        self.replica = replica;
        self
    }

    /// The database label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The caches of this connection.
    pub fn caches(&self) -> &CacheSet {
        &self.caches
    }

    /// The default cache of this connection.
    pub fn cache(&self) -> &Cache {
        self.caches.default_cache()
    }

    /// The wrapped connection, for plain diesel-async calls. Writes made through it are not
    /// seen by the cache (unlike the blocking wrapper, which observes them): write through
    /// the helpers, or invalidate with [`invalidate`](Self::invalidate) /
    /// [`invalidate_all`](Self::invalidate_all).
    pub fn inner(&mut self) -> &mut C {
        &mut self.conn
    }

    /// Unwraps the connection.
    pub fn into_inner(self) -> C {
        self.conn
    }

    /// Whether a transaction is open on this connection.
    pub fn in_transaction(&mut self) -> bool {
        self.tx.depth() > 0 || self.broken()
    }

    /// The wrapped connection's transaction depth (`None`: its manager is in error).
    fn inner_depth(&mut self) -> Option<usize> {
        C::TransactionManager::transaction_manager_status_mut(&mut self.conn)
            .transaction_depth()
            .ok()
            .map(|d| d.map_or(0, |d| d.get() as usize))
    }

    /// Whether the connection is not where this wrapper's transactions left it: a
    /// transaction future was dropped (its level is still open here, and on the database
    /// unless it was committed or rolled back since), a transaction was begun through the
    /// wrapped connection, or its transaction manager is broken (a future dropped during
    /// BEGIN, COMMIT or ROLLBACK). Reads then bypass the cache and writes refuse.
    fn broken(&mut self) -> bool {
        if self.raw.is_open() {
            // A transaction begun with raw SQL: treated like one begun behind the cache's
            // back (its plain writes are tracked; see `plain_write`).
            return true;
        }
        let live = AtomicUsize::load(&self.live, Ordering::Acquire);
        let Some(inner) = self.inner_depth() else {
            return true;
        };
        if self.tx.depth() > live {
            if inner == 0 && !C::TransactionManager::is_broken_transaction_manager(&mut self.conn) {
                // The database left the dropped transaction (rolled back, or committed by a
                // COMMIT whose invalidation was delivered on drop): its levels are over.
                while self.tx.depth() > live {
                    self.tx.rollback();
                }
                return live > 0;
            }
            return true;
        }
        inner != self.tx.depth()
            || (inner == 0 && C::TransactionManager::is_broken_transaction_manager(&mut self.conn))
    }

    /// The key and dependencies of a read (`Err`: read the database uncached, for this
    /// reason).
    fn plan<U, X>(
        &mut self,
        cache: &Cache,
        options: &QueryOptions,
        kind: &'static str,
        query: &X,
    ) -> Result<(Planned, crate::deps::Deps<String>), &'static str>
    where
        U: CacheableRow + 'static,
        X: QueryFragment<C::Backend> + QueryId,
    {
        let dialect = crate::deps::dialect_of(<C::Keyed as CacheConnection>::BACKEND);
        let remembered = self
            .templates
            .get::<C::Keyed, _>(query)
            .and_then(|(template, binds)| {
                self.conn.key_binds(query, binds, true)?;
                Ok((template, binds))
            });
        let (template, binds) = match remembered {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "could not build a cache key; reading the database");
                return Err("no cache key");
            }
        };
        let parts = template.resolve::<U, C::Keyed>(
            kind,
            cache.config().codec.id(),
            &self.label,
            options.declared_tables(),
            Some(dialect),
        );
        parts.prefix.register_models();
        let deps = match parts.analysis.map(|analysis| {
            crate::deps::dependencies(
                parts.sql,
                analysis,
                &binds.values,
                dialect,
                &parts.prefix.row_tables,
                &parts.prefix.model_tables,
                options.declared_tables(),
                cache.config().dependencies,
            )
        }) {
            Some(Ok(d)) => d,
            Some(Err(why)) => {
                crate::deps::warn_uncacheable(parts.sql, &why);
                return Err("dependencies cannot be read from the SQL");
            }
            None => return Err("dependencies cannot be read from the SQL"),
        };
        // Owned: the read holds them across its await, past its borrow of the connection.
        let deps = deps.to_owned();
        if deps.tables.is_empty() && options.explicit_timeout().is_none() {
            return Err("reads no table and has no timeout");
        }
        let key = cache
            .keys()
            .query_key(&finish_key(&parts.prefix.builder, binds));
        let cap = deps.counts.then(|| cache.config().count_timeout).flatten();
        let replica = self
            .replica
            .then(|| Expiry::from_duration(cache.config().replica_timeout));
        let cap = cap
            .map(Expiry::from_duration)
            .into_iter()
            .chain(replica)
            .reduce(Expiry::min);
        let mut planned = Planned {
            key,
            tables: deps.tables.clone(),
            guarded: deps.guarded.clone(),
            timeout: options.timeout_or_default(),
            cap,
            bypass: None,
            no_fill: None,
        };
        let table_refs: Vec<&str> = planned.tables.iter().map(String::as_str).collect();
        if self.broken() || table_refs.iter().any(|t| self.tx.is_dirty(t)) {
            planned.bypass = Some("transaction sees its own writes");
        } else if self.tx.depth() > 0 {
            planned.no_fill = Some("inside a transaction");
        }
        Ok((planned, deps))
    }

    /// A read that never reaches the engine: counted under its model's tables, then the
    /// database.
    async fn bypassed<'query, U, X>(
        &mut self,
        options: &QueryOptions,
        query: X,
        why: &'static str,
    ) -> QueryResult<(Vec<U>, ReadOutcome)>
    where
        U: CacheableRow + Send + 'static,
        X: LoadQuery<'query, C, U> + Send + 'query,
    {
        let outcome = ReadOutcome::Bypassed(why);
        if let Ok(cache) = self.caches.get(options.cache_name()) {
            let mut tables = Vec::new();
            U::tables(&mut tables);
            tables.extend_from_slice(options.declared_tables());
            tables.sort_unstable();
            tables.dedup();
            cache.record_read(&tables, outcome);
        }
        let rows = RunQueryDsl::load(query, &mut self.conn).await?;
        Ok((rows, outcome))
    }

    /// The read of `query` through the cache: the engine's first half, the awaited
    /// database read, the second half.
    async fn read<'query, U, X>(
        &mut self,
        options: QueryOptions,
        kind: &'static str,
        query: X,
    ) -> QueryResult<(Vec<U>, ReadOutcome)>
    where
        U: CacheableRow + Send + 'static,
        X: QueryFragment<C::Backend> + QueryId + LoadQuery<'query, C, U> + Send + 'query,
    {
        // A hit on an in-process cache completes without awaiting anything: it spends the
        // task's cooperative budget like a tokio resource, so a loop of hits still yields to
        // the runtime (timers, other tasks) now and then.
        tokio::task::coop::consume_budget().await;
        if options.is_disabled() {
            return self
                .bypassed(&options, query, "caching turned off for this query")
                .await;
        }
        let cache = self.caches.get(options.cache_name())?.clone();
        let (planned, deps) = match self.plan::<U, X>(&cache, &options, kind, &query) {
            Ok(p) => p,
            Err(why) => return self.bypassed(&options, query, why).await,
        };
        let inline = inline(&cache) || planned.bypass.is_some();
        let nonblocking = if planned.bypass.is_none() {
            // The whole first half on the backend's non-blocking client, if it has one.
            planned.begin_read_async::<Vec<U>>(&cache).await
        } else {
            None
        };
        let start: Option<ReadStart<Vec<U>>> = if nonblocking.is_some() {
            nonblocking
        } else if inline {
            Some(planned.with_plan(false, |plan| cache.begin_read(plan)))
        } else if let Some(rows) = planned.try_hit::<Vec<U>>(&cache).await {
            // A hit read on the backend's non-blocking client: no blocking thread involved.
            Some(ReadStart::Hit(rows))
        } else {
            // Anything else (a miss, a lease, a repair) runs the blocking half where it may
            // block; it looks again.
            let c = cache.clone();
            let key = planned.key.clone();
            let owned = Planned {
                key,
                tables: planned.tables.clone(),
                guarded: planned.guarded.clone(),
                ..planned
            };
            blocking(move || owned.with_plan(true, |plan| c.begin_read(plan))).await
        };
        let fill = match start {
            Some(ReadStart::Hit(rows)) => return Ok((rows, ReadOutcome::Hit)),
            Some(ReadStart::Bypass(why)) => {
                let rows = RunQueryDsl::load(query, &mut self.conn).await?;
                return Ok((rows, ReadOutcome::Bypassed(why)));
            }
            Some(ReadStart::Miss(fill)) => fill,
            // The blocking task failed: the database, nothing filled.
            None => {
                let rows = RunQueryDsl::load(query, &mut self.conn).await?;
                return Ok((rows, ReadOutcome::Miss));
            }
        };
        // Dropped with this future (or on a failed load), the fill gives up its lease off the
        // runtime's thread.
        let fill = DropOffRuntime::new(fill, inline);
        let rows: Vec<U> = RunQueryDsl::load(query, &mut self.conn).await?;
        let Some(fill) = fill.take() else {
            return Ok((rows, ReadOutcome::Miss));
        };
        let cache_empty = cache.config().cache_empty_results;
        let keys = cache.keys();
        let key = planned.key.as_str();
        let prepared = fill.prepare(&rows, |rows: &Vec<U>, regs| {
            if rows.is_empty() && !cache_empty {
                return Err("empty result");
            }
            for row in rows {
                row.register(keys, key, regs);
            }
            deps.register(keys, key, regs);
            Ok(())
        });
        // On the backend's non-blocking client if it has one, else inline (in-process) or
        // on the blocking pool.
        prepared.publish_async().await;
        Ok((rows, ReadOutcome::Miss))
    }

    /// Refuses a write helper where its invalidation could not follow its COMMIT.
    fn guard_write(&mut self) -> QueryResult<()> {
        if self.broken() {
            return Err(Error::ForeignTransaction.into());
        }
        #[cfg(feature = "test-hooks")]
        self.cache().hook_step("write");
        Ok(())
    }

    /// Before a helper's statement is sent outside a transaction: `coarse` (a superset of
    /// what the statement can write) is owed if this future is dropped while the statement
    /// is in flight. Inside a transaction nothing is owed (nothing commits without the
    /// transaction's own COMMIT).
    fn arm(&self, coarse: Invalidation) -> Option<OwedInvalidation> {
        (self.tx.depth() == 0).then(|| OwedInvalidation::new(&self.caches, coarse))
    }

    /// After a helper's statement: on success, the precise invalidation runs (or is queued
    /// until COMMIT) and the coarse one is dropped; on a database error nothing was written
    /// (the coarse one is dropped too); on any other error (connection lost, outcome
    /// unknown) the coarse one is delivered.
    async fn settle<T>(
        &mut self,
        armed: Option<OwedInvalidation>,
        result: QueryResult<T>,
        precise: impl FnOnce(&T) -> Invalidation,
    ) -> QueryResult<T> {
        let value = match result {
            Ok(v) => v,
            Err(e) => {
                if let Some(a) = armed {
                    if wrote_nothing(&e) {
                        a.disarm();
                    } else {
                        a.deliver().await;
                    }
                }
                return Err(e);
            }
        };
        let inv = precise(&value);
        self.invalidate_with(inv).await?;
        if let Some(a) = armed {
            a.disarm();
        }
        Ok(value)
    }

    /// Runs an invalidation now in every cache of the connection, or queues it until the
    /// outermost COMMIT when a transaction is open.
    ///
    /// ```
    /// # use caching_diesel::async_prelude::*;
    /// # use caching_diesel::{AsyncCachedConnection, Cache, CacheSet, Invalidation};
    /// # use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let raw = SyncConnectionWrapper::<SqliteConnection>::establish(":memory:").await?;
    /// let mut conn = AsyncCachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
    /// let mut inv = Invalidation::new();
    /// inv.whole_table("users");
    /// conn.invalidate_with(inv).await?;
    /// assert_eq!(conn.cache().stats().invalidations, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn invalidate_with(&mut self, inv: Invalidation) -> Result<(), Error> {
        if inv.is_empty() {
            return Ok(());
        }
        if self.broken() {
            return Err(Error::ForeignTransaction);
        }
        if self.tx.depth() > 0 {
            self.tx.queue(inv);
            return Ok(());
        }
        OwedInvalidation::new(&self.caches, inv).deliver().await;
        Ok(())
    }

    /// Invalidates rows written outside the helpers, given their current values.
    pub async fn invalidate<M: CachedModel>(&mut self, rows: &[M]) -> QueryResult<()> {
        Ok(self.invalidate_with(updated(rows.iter())).await?)
    }

    /// Invalidates every cached query of model `M`.
    pub async fn invalidate_all<M: CachedModel>(&mut self) -> QueryResult<()> {
        Ok(self.invalidate_with(whole::<M>()).await?)
    }

    /// Saves a changed model (diesel-async's `save_changes`: update by primary key, then
    /// fetch) and invalidates the row and its foreign-key targets.
    pub async fn save_changes<M, T>(&mut self, changes: T) -> QueryResult<M>
    where
        M: CachedModel + Send,
        T: diesel::Identifiable + diesel::associations::HasTable + Send,
        C: diesel_async::UpdateAndFetchResults<T, M>,
    {
        self.guard_write()?;
        let armed = self.arm(whole::<M>());
        let result = self.conn.update_and_fetch(changes).await;
        self.settle(armed, result, |row| updated([row])).await
    }

    /// Runs an `INSERT` and invalidates the rows it inserted as created rows: on PostgreSQL
    /// and SQLite the rows come from `RETURNING` (single, batch or upsert); on MySQL they are
    /// read back by the ids `LAST_INSERT_ID()` gives, in one transaction (a savepoint inside
    /// an open one), as [`CachedConnection::insert`](crate::CachedConnection::insert) does
    /// (plain `INSERT .. VALUES` into a table with an auto-increment key; anything else is
    /// refused with [`Error::InsertRowsUnknown`] and nothing is inserted).
    pub async fn insert<'query, M, S>(&mut self, statement: S) -> QueryResult<Vec<M>>
    where
        M: CachedModel + Send + 'static,
        S: AsyncInsertRows<'query, C, M> + 'query,
    {
        self.guard_write()?;
        let sql = <C::Keyed as CacheConnection>::render_sql(&statement)?;
        let caches = self.caches.clone();
        let armed = self.arm(whole::<M>());
        let result = statement.insert_rows(&mut self.conn, &sql).await;
        self.settle(armed, result, |rows| creation_of(&caches, rows, &sql, true))
            .await
    }

    /// [`insert`](Self::insert) of one row.
    pub async fn insert_one<'query, M, S>(&mut self, statement: S) -> QueryResult<M>
    where
        M: CachedModel + Send + 'static,
        S: AsyncInsertRows<'query, C, M> + 'query,
    {
        first_row(self.insert(statement).await?)
    }

    /// Runs an `INSERT` whose rows you know and invalidates them as created rows (every
    /// backend; MySQL inserts). Returns the number of rows affected.
    pub async fn insert_for<M, S>(&mut self, rows: &[M], statement: S) -> QueryResult<usize>
    where
        M: CachedModel,
        S: ExecuteDsl<C> + QueryFragment<C::Backend> + Send,
    {
        self.guard_write()?;
        let sql = <C::Keyed as CacheConnection>::render_sql(&statement)?;
        let inv = creation_of(&self.caches, rows, &sql, false);
        self.execute_then(statement, inv).await
    }

    /// Runs an `UPDATE .. RETURNING` and invalidates the returned rows.
    pub async fn update<'query, M, S>(&mut self, statement: S) -> QueryResult<Vec<M>>
    where
        M: CachedModel + Send + 'static,
        S: LoadQuery<'query, C, M> + Send + 'query,
    {
        self.guard_write()?;
        self.returning(statement, |rows| updated(rows.iter())).await
    }

    /// [`update`](Self::update) of one row.
    pub async fn update_one<'query, M, S>(&mut self, statement: S) -> QueryResult<M>
    where
        M: CachedModel + Send + 'static,
        S: LoadQuery<'query, C, M> + Send + 'query,
    {
        first_row(self.update(statement).await?)
    }

    /// Runs a `DELETE .. RETURNING` and invalidates the deleted rows.
    pub async fn delete<'query, M, S>(&mut self, statement: S) -> QueryResult<Vec<M>>
    where
        M: CachedModel + Send + 'static,
        S: LoadQuery<'query, C, M> + Send + 'query,
    {
        self.guard_write()?;
        self.returning(statement, |rows| rows_invalidation(rows.iter()))
            .await
    }

    /// [`delete`](Self::delete) of one row.
    pub async fn delete_one<'query, M, S>(&mut self, statement: S) -> QueryResult<M>
    where
        M: CachedModel + Send + 'static,
        S: LoadQuery<'query, C, M> + Send + 'query,
    {
        first_row(self.delete(statement).await?)
    }

    /// Runs any write statement and invalidates the given rows (`DELETE`, `INSERT`:
    /// precisely; anything else: the rows and every query of `M`'s table).
    pub async fn execute_for<M, S>(&mut self, rows: &[M], statement: S) -> QueryResult<usize>
    where
        M: CachedModel,
        S: ExecuteDsl<C> + QueryFragment<C::Backend> + Send,
    {
        self.guard_write()?;
        let sql = <C::Keyed as CacheConnection>::render_sql(&statement)?;
        let inv = match crate::sql::first_keyword(&sql).as_str() {
            "delete" => rows_invalidation(rows.iter()),
            "insert" | "replace" => creation_of(&self.caches, rows, &sql, false),
            _ => {
                let mut inv = updated(rows.iter());
                inv.merge(whole::<M>());
                inv
            }
        };
        self.execute_then(statement, inv).await
    }

    /// Runs a write whose rows are unknown and invalidates every cached query of `M`.
    pub async fn execute_bulk<M, S>(&mut self, statement: S) -> QueryResult<usize>
    where
        M: CachedModel,
        S: ExecuteDsl<C> + Send,
    {
        self.guard_write()?;
        self.execute_then(statement, whole::<M>()).await
    }

    /// A `RETURNING` write of `M` rows: armed with `M`'s whole table while in flight, then
    /// `precise` of the rows it returned.
    async fn returning<'query, M, S>(
        &mut self,
        statement: S,
        precise: impl FnOnce(&Vec<M>) -> Invalidation,
    ) -> QueryResult<Vec<M>>
    where
        M: CachedModel + Send + 'static,
        S: LoadQuery<'query, C, M> + Send + 'query,
    {
        let armed = self.arm(whole::<M>());
        let result = RunQueryDsl::get_results(statement, &mut self.conn).await;
        self.settle(armed, result, precise).await
    }

    /// A write whose invalidation `inv` is known before it runs: armed with it while in
    /// flight, delivered after.
    async fn execute_then<S>(&mut self, statement: S, inv: Invalidation) -> QueryResult<usize>
    where
        S: ExecuteDsl<C> + Send,
    {
        let armed = self.arm(inv.clone());
        let result = ExecuteDsl::execute(statement, &mut self.conn).await;
        self.settle(armed, result, |_| inv).await
    }

    /// Runs `f` in a transaction (a savepoint when nested), like diesel-async's
    /// `AsyncConnection::transaction`, deferring the invalidations of writes made through
    /// `f`'s connection until the outermost COMMIT succeeds (a failed COMMIT with a
    /// database error invalidates nothing; one whose outcome is unknown, including this
    /// future dropped while the COMMIT is in flight, invalidates anyway). Reads inside see
    /// the transaction's writes (they bypass the cache for the tables written) and fill
    /// nothing.
    ///
    /// ```
    /// use caching_diesel::async_prelude::*;
    /// use caching_diesel::{AsyncCachedConnection, Cache, CacheSet};
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let raw = SyncConnectionWrapper::<SqliteConnection>::establish(":memory:").await?;
    /// let mut conn = AsyncCachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
    /// let n = conn
    ///     .transaction(async |conn| {
    ///         assert!(conn.in_transaction());
    ///         diesel::sql_query("SELECT 1").execute(conn.inner()).await
    ///     })
    ///     .await?;
    /// assert_eq!(n, 0);
    /// assert!(!conn.in_transaction());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn transaction<'a, R, E, F>(&mut self, f: F) -> Result<R, E>
    where
        F: for<'r> TransactionFn<&'r mut Self, Result<R, E>, Fut: Send> + Send + 'a,
        E: From<diesel::result::Error> + Send + 'a,
        R: Send + 'a,
    {
        if self.broken() {
            return Err(diesel::result::Error::BrokenTransactionManager.into());
        }
        let outermost = self.tx.depth() == 0;
        C::TransactionManager::begin_transaction(&mut self.conn).await?;
        self.tx.begin();
        let live = Live::enter(&self.live);
        match f(&mut *self).await {
            Ok(value) => {
                // From the moment the COMMIT is sent its outcome is unknown until it
                // answers: what it commits is owed from here (a drop delivers it).
                let owed = outermost
                    .then(|| OwedInvalidation::new(&self.caches, self.tx.outermost_pending()));
                let committed = C::TransactionManager::commit_transaction(&mut self.conn).await;
                if commit_delivers(outermost, &committed) {
                    let _ = self.tx.commit();
                    drop(live);
                    if let Some(owed) = owed {
                        owed.deliver().await;
                    }
                } else {
                    self.tx.rollback();
                    drop(live);
                    if let Some(owed) = owed {
                        owed.disarm();
                    }
                }
                committed.map_err(E::from)?;
                Ok(value)
            }
            Err(user_error) => {
                self.tx.rollback();
                drop(live);
                match C::TransactionManager::rollback_transaction(&mut self.conn).await {
                    Ok(()) | Err(diesel::result::Error::BrokenTransactionManager) => {
                        Err(user_error)
                    }
                    Err(rollback_error) => Err(rollback_error.into()),
                }
            }
        }
    }
}

/// Cached reads on an [`AsyncCachedConnection`] with diesel-async's own methods: a `.cached()`
/// query is a diesel-async `LoadQuery` on the cached connection, so diesel-async's
/// `RunQueryDsl` gives it `load`, `get_results`, `get_result` and `first`
/// (`users::table.find(1).cached().first::<User>(&mut conn).await`), through the cache.
/// Queries must own their binds (`'static`: `name.eq(name.clone())`, not `name.eq(&name)`):
/// the cached read is a boxed future.
impl<'query, Q, C, U> LoadQuery<'query, AsyncCachedConnection<C>, U> for CachedQuery<Q>
where
    C: AsyncCacheConnection,
    U: CacheableRow + Send + 'static,
    Q: AsQuery,
    Q::Query: QueryFragment<C::Backend> + QueryId + LoadQuery<'static, C, U> + Send + 'static,
{
    type LoadFuture<'conn>
        = std::pin::Pin<Box<dyn Future<Output = QueryResult<Self::Stream<'conn>>> + Send + 'conn>>
    where
        AsyncCachedConnection<C>: 'conn;

    type Stream<'conn>
        = futures_util::stream::Iter<std::vec::IntoIter<QueryResult<U>>>
    where
        AsyncCachedConnection<C>: 'conn;

    fn internal_load(self, conn: &mut AsyncCachedConnection<C>) -> Self::LoadFuture<'_> {
        let (query, options) = self.into_parts();
        let query = query.as_query();
        Box::pin(async move {
            let (rows, _) = conn.read(options, "query", query).await?;
            Ok(futures_util::stream::iter(
                rows.into_iter().map(Ok).collect::<Vec<_>>(),
            ))
        })
    }
}

/// What diesel-async's `RunQueryDsl` does not have, for cached queries on an
/// [`AsyncCachedConnection`]: how a read was answered, and counts. In the
/// [async prelude](crate::async_prelude).
///
/// ```
/// use caching_diesel::async_prelude::*;
/// use caching_diesel::{AsyncCachedConnection, Cache, CacheSet, ReadOutcome};
/// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
/// diesel::table! { users (id) { id -> Integer, name -> Text } }
/// #[derive(Queryable, Selectable, Identifiable, Cached, serde::Serialize, serde::Deserialize)]
/// #[diesel(table_name = users)]
/// struct User { id: i32, name: String }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let raw = SyncConnectionWrapper::<SqliteConnection>::establish(":memory:").await?;
/// let mut conn = AsyncCachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
/// diesel::sql_query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)").execute(conn.inner()).await?;
/// let q = || users::table.filter(users::name.eq("fliggy")).cached();
/// let (_, first) = q().load_with_outcome::<User>(&mut conn).await?;
/// let (_, second) = q().load_with_outcome::<User>(&mut conn).await?;
/// assert_eq!((first, second), (ReadOutcome::Miss, ReadOutcome::Miss)); // empty: not cached
/// assert_eq!(q().cached_count(&mut conn).await?, 0);
/// assert_eq!(q().cached_count(&mut conn).await?, 0); // a count is cached even when zero
/// assert_eq!(conn.cache().stats().hits, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub trait AsyncCachedQueryDsl<Conn>: Sized {
    /// Loads every row through the cache, and says how the read was answered.
    fn load_with_outcome<'conn, U>(
        self,
        conn: &'conn mut Conn,
    ) -> impl Future<Output = QueryResult<(Vec<U>, ReadOutcome)>> + Send + 'conn
    where
        Self: AsyncLoadCached<'conn, Conn, U>,
    {
        self.load_with_outcome_cached(conn)
    }

    /// `COUNT(*)` of the query, through the cache (as the blocking
    /// [`CachedQuery::count`]).
    fn cached_count<'conn>(
        self,
        conn: &'conn mut Conn,
    ) -> impl Future<Output = QueryResult<i64>> + Send + 'conn
    where
        Self: AsyncCountCached<'conn, Conn>,
    {
        self.count_cached(conn)
    }
}

impl<Q, Conn> AsyncCachedQueryDsl<Conn> for CachedQuery<Q> {}

/// Loads the rows of a cached query on an async connection, with the read's outcome (the
/// bounds behind [`AsyncCachedQueryDsl::load_with_outcome`]).
pub trait AsyncLoadCached<'conn, Conn, U>: Sized {
    /// Loads every row, through the cache, and says how the read was answered.
    fn load_with_outcome_cached(
        self,
        conn: &'conn mut Conn,
    ) -> impl Future<Output = QueryResult<(Vec<U>, ReadOutcome)>> + Send + 'conn;
}

impl<'conn, Q, C, U> AsyncLoadCached<'conn, AsyncCachedConnection<C>, U> for CachedQuery<Q>
where
    C: AsyncCacheConnection,
    U: CacheableRow + Send + 'static,
    Q: AsQuery,
    Q::Query: QueryFragment<C::Backend> + QueryId + LoadQuery<'static, C, U> + Send + 'static,
{
    fn load_with_outcome_cached(
        self,
        conn: &'conn mut AsyncCachedConnection<C>,
    ) -> impl Future<Output = QueryResult<(Vec<U>, ReadOutcome)>> + Send + 'conn {
        let (query, options) = self.into_parts();
        conn.read(options, "query", query.as_query())
    }
}

/// `COUNT(*)` of a cached query on an async connection (the bounds behind
/// [`AsyncCachedQueryDsl::cached_count`]).
pub trait AsyncCountCached<'conn, Conn> {
    /// The count, through the cache.
    fn count_cached(
        self,
        conn: &'conn mut Conn,
    ) -> impl Future<Output = QueryResult<i64>> + Send + 'conn;
}

impl<'conn, Q, C> AsyncCountCached<'conn, AsyncCachedConnection<C>> for CachedQuery<Q>
where
    C: AsyncCacheConnection,
    Q: SelectDsl<CountStar>,
    Select<Q, CountStar>: AsQuery,
    <Select<Q, CountStar> as AsQuery>::Query:
        QueryFragment<C::Backend> + QueryId + LoadQuery<'static, C, i64> + Send + 'static,
{
    fn count_cached(
        self,
        conn: &'conn mut AsyncCachedConnection<C>,
    ) -> impl Future<Output = QueryResult<i64>> + Send + 'conn {
        let (query, options) = self.into_parts();
        let query = query.select(diesel::dsl::count_star()).as_query();
        let read = conn.read::<i64, _>(options, "count", query);
        async move { first_row(read.await?.0) }
    }
}

/// `.cached().limit(n)` keeps the query cached (and gives diesel-async's `first` its
/// `LIMIT 1`).
impl<Q: LimitDsl> LimitDsl for CachedQuery<Q> {
    type Output = CachedQuery<Limit<Q>>;

    fn limit(self, limit: i64) -> Self::Output {
        let (query, options) = self.into_parts();
        CachedQuery::with_options(query.limit(limit), options)
    }
}

/// The statement of a plain write on the cached connection (diesel-async's `execute`, not
/// a write helper): its tables, read from its SQL, are invalidated whole once it has run
/// (by the cache's background delivery: reads of them bypass the cache until it is
/// delivered; inside a transaction, at its COMMIT). A statement whose tables cannot be told
/// invalidates the whole cache (a namespace bump), as on the blocking connection; inside a
/// transaction it is refused: run it on [`AsyncCachedConnection::inner`] and invalidate
/// yourself.
#[must_use = "futures do nothing unless awaited"]
pub struct PlainWrite<F> {
    inner: Option<std::pin::Pin<Box<F>>>,
    refused: Option<diesel::result::Error>,
    owed: Option<OwedInvalidation>,
    step: Option<RawStep>,
}

/// The future of [`AsyncInsertRows::insert_rows`].
#[doc(hidden)]
pub type InsertedRows<'c, M> =
    std::pin::Pin<Box<dyn Future<Output = QueryResult<Vec<M>>> + Send + 'c>>;

/// An `INSERT` statement whose inserted rows [`AsyncCachedConnection::insert`] can learn on
/// connection `C`: every statement that loads rows on PostgreSQL and SQLite (`RETURNING`),
/// and Diesel's `INSERT` statements on MySQL (read back by `LAST_INSERT_ID()`). The async
/// counterpart of [`InsertRows`](crate::InsertRows).
///
/// ```
/// # use caching_diesel::async_prelude::*;
/// # use caching_diesel::{AsyncCachedConnection, AsyncCacheConnection, AsyncInsertRows, Cache, CacheSet};
/// # use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
/// diesel::table! { users (id) { id -> Integer, name -> Text } }
/// #[derive(Queryable, Selectable, Identifiable, Cached, serde::Serialize, serde::Deserialize)]
/// #[diesel(table_name = users)]
/// struct User { id: i32, name: String }
///
/// /// Inserts a user with `statement`, on any database; the database picks the id.
/// async fn create<'q, C, S>(conn: &mut AsyncCachedConnection<C>, statement: S) -> QueryResult<User>
/// where
///     C: AsyncCacheConnection,
///     S: AsyncInsertRows<'q, C, User> + 'q,
/// {
///     conn.insert_one(statement).await
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let raw = SyncConnectionWrapper::<SqliteConnection>::establish(":memory:").await?;
/// let mut conn = AsyncCachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
/// conn.batch_execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)").await?;
/// let u = create(&mut conn, diesel::insert_into(users::table).values(users::name.eq("fliggy"))).await?;
/// assert_eq!((u.id, u.name.as_str()), (1, "fliggy"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub trait AsyncInsertRows<'query, C: AsyncCacheConnection, M>:
    QueryFragment<C::Backend> + Send + Sized
{
    /// Runs the statement (whose SQL is `sql`) and returns the rows it inserted. (Boxed: an
    /// opaque future here could not be proven `Send` inside `transaction`'s closure.)
    #[doc(hidden)]
    fn insert_rows<'c>(self, conn: &'c mut C, sql: &'c str) -> InsertedRows<'c, M>
    where
        'query: 'c,
        Self: 'c,
        M: 'c;
}

/// `RETURNING`: the statement loads its rows itself.
#[allow(unused_macros)]
macro_rules! returning_inserts_async {
    ($conn:ty) => {
        impl<'query, S, M> AsyncInsertRows<'query, $conn, M> for S
        where
            S: LoadQuery<'query, $conn, M>
                + QueryFragment<<$conn as AsyncConnectionCore>::Backend>
                + Send
                + 'query,
            M: Send,
        {
            fn insert_rows<'c>(self, conn: &'c mut $conn, _sql: &'c str) -> InsertedRows<'c, M>
            where
                'query: 'c,
                Self: 'c,
                M: 'c,
            {
                Box::pin(diesel_async::RunQueryDsl::get_results(self, conn))
            }
        }
    };
}

#[cfg(feature = "postgres")]
returning_inserts_async!(diesel_async::AsyncPgConnection);
#[cfg(feature = "sqlite")]
returning_inserts_async!(
    diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>
);
#[cfg(all(feature = "deadpool", feature = "postgres"))]
returning_inserts_async!(
    diesel_async::pooled_connection::deadpool::Object<diesel_async::AsyncPgConnection>
);
#[cfg(all(feature = "deadpool", feature = "sqlite"))]
returning_inserts_async!(
    diesel_async::pooled_connection::deadpool::Object<
        diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>,
    >
);
#[cfg(all(feature = "bb8", feature = "postgres"))]
returning_inserts_async!(
    diesel_async::pooled_connection::bb8::PooledConnection<
        'static,
        diesel_async::AsyncPgConnection,
    >
);
#[cfg(all(feature = "bb8", feature = "sqlite"))]
returning_inserts_async!(
    diesel_async::pooled_connection::bb8::PooledConnection<
        'static,
        diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>,
    >
);

/// MySQL: the statement runs, then its rows are read back by the ids `LAST_INSERT_ID()`
/// gives, in one transaction (the steps of `mysql_insert`, awaited). `$inner` turns the
/// connection (a pooled one) into the `AsyncMysqlConnection` it holds.
#[cfg(feature = "mysql")]
macro_rules! read_back_inserts_async {
    ($conn:ty, |$c:ident| $inner:expr) => {
        impl<'query, T, U, Op, M> AsyncInsertRows<'query, $conn, M>
            for diesel::query_builder::InsertStatement<T, U, Op>
        where
            T: diesel::Table
                + Clone
                + Send
                + diesel::query_dsl::methods::FilterDsl<mysql_read_back::IdsCondition>,
            U: diesel::insertable::CanInsertInSingleQuery<diesel::mysql::Mysql> + Send,
            Op: Send,
            Self: ExecuteDsl<diesel_async::AsyncMysqlConnection>
                + QueryFragment<diesel::mysql::Mysql>
                + Send
                + 'query,
            diesel::dsl::Filter<T, mysql_read_back::IdsCondition>:
                diesel::query_dsl::methods::OrderDsl<mysql_read_back::IdsOrder>,
            diesel::dsl::Order<
                diesel::dsl::Filter<T, mysql_read_back::IdsCondition>,
                mysql_read_back::IdsOrder,
            >: LoadQuery<'query, diesel_async::AsyncMysqlConnection, M> + Send + 'query,
            M: Send,
        {
            fn insert_rows<'c>(self, $c: &'c mut $conn, sql: &'c str) -> InsertedRows<'c, M>
            where
                'query: 'c,
                Self: 'c,
                M: 'c,
            {
                Box::pin(mysql_read_back::insert_and_read($inner, self, sql))
            }
        }
    };
}

#[cfg(feature = "mysql")]
read_back_inserts_async!(diesel_async::AsyncMysqlConnection, |c| c);
#[cfg(all(feature = "deadpool", feature = "mysql"))]
read_back_inserts_async!(
    diesel_async::pooled_connection::deadpool::Object<diesel_async::AsyncMysqlConnection>,
    |c| &mut **c
);
#[cfg(all(feature = "bb8", feature = "mysql"))]
read_back_inserts_async!(
    diesel_async::pooled_connection::bb8::PooledConnection<
        'static,
        diesel_async::AsyncMysqlConnection,
    >,
    |c| &mut **c
);

/// `CachedConnection::insert`'s MySQL read-back, on diesel-async: the same steps
/// (`mysql_insert`), awaited.
#[cfg(feature = "mysql")]
mod mysql_read_back {
    use diesel::dsl::sql;
    use diesel::expression::SqlLiteral;
    use diesel::query_builder::{InsertStatement, QueryFragment};
    use diesel::query_dsl::methods::{FilterDsl, OrderDsl};
    use diesel::sql_types::{BigInt, Bool, Nullable, Text};
    use diesel::QueryResult;
    use diesel_async::methods::{ExecuteDsl, LoadQuery};
    use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl, TransactionManager};

    use crate::mysql_insert::{
        check_found, ids_selection, insert_form, known_key, learn_key, read_back, refused,
        KeyColumn, KEY_COLUMNS_SQL, RESET_LAST_INSERT_ID,
    };

    pub(crate) type IdsCondition = SqlLiteral<Bool>;
    pub(crate) type IdsOrder = SqlLiteral<BigInt>;

    type Manager = <AsyncMysqlConnection as AsyncConnection>::TransactionManager;

    pub(crate) async fn insert_and_read<'query, T, U, Op, M>(
        conn: &mut AsyncMysqlConnection,
        statement: InsertStatement<T, U, Op>,
        sql_text: &str,
    ) -> QueryResult<Vec<M>>
    where
        T: diesel::Table + Clone + FilterDsl<IdsCondition>,
        U: diesel::insertable::CanInsertInSingleQuery<diesel::mysql::Mysql>,
        InsertStatement<T, U, Op>:
            ExecuteDsl<AsyncMysqlConnection> + QueryFragment<diesel::mysql::Mysql> + 'query,
        diesel::dsl::Filter<T, IdsCondition>: OrderDsl<IdsOrder>,
        diesel::dsl::Order<diesel::dsl::Filter<T, IdsCondition>, IdsOrder>:
            LoadQuery<'query, AsyncMysqlConnection, M> + 'query,
        M: Send,
    {
        if statement.records.rows_to_insert() == Some(0) {
            // Diesel sends `SELECT 1 FROM t WHERE 1=0` for an empty batch: nothing to read.
            return Ok(Vec::new());
        }
        let form = insert_form(sql_text).map_err(|(t, r)| refused(t, r))?;
        let table = statement.target.clone();
        Manager::begin_transaction(conn).await?;
        let result = async {
            RunQueryDsl::execute(diesel::select(sql::<BigInt>(RESET_LAST_INSERT_ID)), conn).await?;
            let inserted = ExecuteDsl::execute(statement, conn).await?;
            if inserted == 0 {
                return Ok(Vec::new());
            }
            let (first, step, place): (u64, u64, String) =
                RunQueryDsl::get_result(diesel::select(ids_selection()), conn).await?;
            let pk = match known_key(&place, &form) {
                Some(known) => known,
                None => {
                    let columns: Vec<KeyColumn> = RunQueryDsl::load(
                        diesel::sql_query(KEY_COLUMNS_SQL)
                            .bind::<Nullable<Text>, _>(form.schema.as_deref())
                            .bind::<Text, _>(&form.table),
                        conn,
                    )
                    .await?;
                    learn_key(&place, &form, &columns)
                }
            }
            .map_err(|r| refused(form.table.clone(), r))?;
            let (condition, order) = read_back(&form, &pk, first, step, inserted)?;
            let rows: Vec<M> =
                RunQueryDsl::load(FilterDsl::filter(table, condition).order(order), conn).await?;
            check_found(&form, inserted, rows.len())?;
            Ok(rows)
        }
        .await;
        match result {
            Ok(rows) => {
                Manager::commit_transaction(conn).await?;
                Ok(rows)
            }
            Err(e) => {
                // The error says what went wrong; a failed rollback leaves the transaction
                // manager broken, which Diesel reports on the next use.
                let _ = Manager::rollback_transaction(conn).await;
                Err(e)
            }
        }
    }
}

/// After a plain statement ran: a write the database refused owes nothing; any other outcome
/// hands what it owes to the background delivery (dropping it does: never blocks here); a
/// raw transaction-control statement updates the raw levels.
fn settle_plain<T>(owed: Option<OwedInvalidation>, step: Option<RawStep>, result: &QueryResult<T>) {
    if let Some(owed) = owed {
        if result.as_ref().is_err_and(wrote_nothing) {
            owed.disarm();
        } else {
            drop(owed);
        }
    }
    if let Some(step) = step {
        step.ran(result);
    }
}

impl<F> std::fmt::Debug for PlainWrite<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainWrite")
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

impl<F: Future<Output = QueryResult<usize>>> Future for PlainWrite<F> {
    type Output = QueryResult<usize>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let this = self.get_mut();
        if let Some(e) = this.refused.take() {
            return Poll::Ready(Err(e));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(diesel::result::Error::QueryBuilderError(
                "a plain write polled after it finished".into(),
            )));
        };
        let result = match inner.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        this.inner = None;
        settle_plain(this.owed.take(), this.step.take(), &result);
        Poll::Ready(result)
    }
}

impl<C: AsyncCacheConnection> AsyncCachedConnection<C> {
    /// What a plain write of `sql` owes: queued in the open transaction, owed after the
    /// statement, or refused; and, for a transaction-control statement run as raw SQL, what
    /// it does to the raw transaction once it has run.
    fn plain_write(
        &mut self,
        sql: &str,
    ) -> Result<(Option<OwedInvalidation>, Option<RawStep>), diesel::result::Error> {
        let dialect = crate::deps::dialect_of(<C::Keyed as CacheConnection>::BACKEND);
        if let Some(control) = RawControl::of(sql) {
            if self.tx.depth() > 0 {
                // Inside `transaction`: its own levels decide (diesel-async's manager).
                return Ok((None, None));
            }
            return Ok(self.raw.control(control, &self.caches));
        }
        let Some(tables) = crate::plain::written_tables(sql, dialect) else {
            return Ok((None, None));
        };
        if self.raw.is_open() {
            if tables.contains(crate::sql::EVERYTHING) {
                return Err(untellable_in_transaction());
            }
            // Invalidated now, as outside a transaction (harmless if the BEGIN never ran),
            // and again at the raw COMMIT (a reader may refill the old rows meanwhile).
            let inv = plain_invalidation(&tables);
            self.raw.queue(inv.clone());
            return Ok((Some(OwedInvalidation::new(&self.caches, inv)), None));
        }
        if self.broken() {
            return Err(Error::ForeignTransaction.into());
        }
        if tables.contains(crate::sql::EVERYTHING) {
            // Tables the SQL does not name (or SQL the parser cannot read): every entry, as
            // the blocking connection does; refused inside a transaction, whose reads could
            // not tell which tables it dirtied.
            if self.tx.depth() > 0 {
                return Err(untellable_in_transaction());
            }
            tracing::warn!(
                sql,
                "a plain write whose tables cannot be told: invalidating the whole cache"
            );
            return Ok((Some(OwedInvalidation::everything(&self.caches)), None));
        }
        let inv = plain_invalidation(&tables);
        if self.tx.depth() > 0 {
            self.tx.queue(inv);
            return Ok((None, None));
        }
        Ok((Some(OwedInvalidation::new(&self.caches, inv)), None))
    }
}

/// A plain write whose tables cannot be told, inside a transaction (raw or not): refused,
/// since the transaction's reads could not tell which tables it dirtied.
fn untellable_in_transaction() -> diesel::result::Error {
    diesel::result::Error::QueryBuilderError(
        "a plain write whose tables cannot be told, inside a transaction: run it on `inner()` and invalidate".into(),
    )
}

/// Transactions opened with raw SQL on an async connection: one level per `BEGIN` or
/// `SAVEPOINT`, holding what the plain writes inside it owe at the outermost `COMMIT`. Shared
/// with the statement's future ([`RawStep`]), which applies what the statement did once it
/// has run.
#[derive(Debug, Default, Clone)]
struct RawLevels(Arc<std::sync::Mutex<Vec<Invalidation>>>);

impl RawLevels {
    fn levels(&self) -> std::sync::MutexGuard<'_, Vec<Invalidation>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_open(&self) -> bool {
        !self.levels().is_empty()
    }

    fn queue(&self, inv: Invalidation) {
        if let Some(top) = self.levels().last_mut() {
            top.merge(inv);
        }
    }

    /// Before `control` is sent: a `COMMIT` owes every level's invalidations from now on
    /// (its outcome is unknown until it answers; a refusal disarms them); a `BEGIN` opens a
    /// level at once (so no write slips out before it is known to have run; closed again
    /// if the database refuses it). Everything else changes the levels once it has run.
    fn control(
        &self,
        control: RawControl,
        caches: &CacheSet,
    ) -> (Option<OwedInvalidation>, Option<RawStep>) {
        let mut levels = self.levels();
        match control {
            RawControl::Commit if !levels.is_empty() => {
                let mut all = Invalidation::new();
                for level in levels.drain(..) {
                    all.merge(level);
                }
                (Some(OwedInvalidation::new(caches, all)), None)
            }
            RawControl::Begin => {
                levels.push(Invalidation::new());
                (None, Some(RawStep::new(self, control)))
            }
            RawControl::Savepoint
            | RawControl::Release
            | RawControl::RollbackTo
            | RawControl::Rollback
                if !levels.is_empty() =>
            {
                (None, Some(RawStep::new(self, control)))
            }
            _ => (None, None),
        }
    }
}

/// What a raw transaction-control statement does to the connection's raw levels, applied
/// when it has run: a refused `BEGIN` closes the level it opened; a `SAVEPOINT` opens one, a
/// `RELEASE` merges the innermost into its parent, `ROLLBACK TO` empties the innermost,
/// `ROLLBACK` drops them all. A statement whose future is dropped before it answered changes
/// nothing (the invalidations stay owed: too many is harmless).
#[derive(Debug)]
pub(crate) struct RawStep {
    levels: RawLevels,
    control: RawControl,
}

impl RawStep {
    fn new(levels: &RawLevels, control: RawControl) -> Self {
        RawStep {
            levels: levels.clone(),
            control,
        }
    }

    fn ran(self, result: &QueryResult<impl Sized>) {
        let mut levels = self.levels.levels();
        match (self.control, result) {
            (RawControl::Begin, Err(e)) if wrote_nothing(e) => {
                levels.pop();
            }
            (_, Err(_)) => {}
            (RawControl::Savepoint, Ok(_)) => levels.push(Invalidation::new()),
            (RawControl::Release, Ok(_)) if levels.len() > 1 => {
                if let Some(top) = levels.pop() {
                    if let Some(parent) = levels.last_mut() {
                        parent.merge(top);
                    }
                }
            }
            (RawControl::RollbackTo, Ok(_)) if levels.len() > 1 => {
                if let Some(top) = levels.last_mut() {
                    *top = Invalidation::new();
                }
            }
            (RawControl::Rollback, Ok(_)) => levels.clear(),
            _ => {}
        }
    }
}

impl<C: AsyncCacheConnection> SimpleAsyncConnection for AsyncCachedConnection<C> {
    async fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        let (owed, step) = self.plain_write(query)?;
        let result = SimpleAsyncConnection::batch_execute(&mut self.conn, query).await;
        settle_plain(owed, step, &result);
        result
    }
}

impl<C: AsyncCacheConnection> AsyncConnectionCore for AsyncCachedConnection<C> {
    type ExecuteFuture<'conn, 'query> = PlainWrite<C::ExecuteFuture<'conn, 'query>>;
    type LoadFuture<'conn, 'query> = C::LoadFuture<'conn, 'query>;
    type Stream<'conn, 'query> = C::Stream<'conn, 'query>;
    type Row<'conn, 'query> = C::Row<'conn, 'query>;
    type Backend = C::Backend;

    fn load<'conn, 'query, T>(&'conn mut self, source: T) -> Self::LoadFuture<'conn, 'query>
    where
        T: AsQuery + 'query,
        T::Query: QueryFragment<Self::Backend> + QueryId + 'query,
    {
        AsyncConnectionCore::load(&mut self.conn, source)
    }

    fn execute_returning_count<'conn, 'query, T>(
        &'conn mut self,
        source: T,
    ) -> Self::ExecuteFuture<'conn, 'query>
    where
        T: QueryFragment<Self::Backend> + QueryId + 'query,
    {
        let owed = <C::Keyed as CacheConnection>::render_sql(&source)
            .and_then(|sql| self.plain_write(&sql));
        match owed {
            Ok((owed, step)) => PlainWrite {
                inner: Some(Box::pin(AsyncConnectionCore::execute_returning_count(
                    &mut self.conn,
                    source,
                ))),
                refused: None,
                owed,
                step,
            },
            Err(e) => PlainWrite {
                inner: None,
                refused: Some(e),
                owed: None,
                step: None,
            },
        }
    }
}
