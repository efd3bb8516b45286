//! The cached query: `load`, `get_results`, `get_result`, `first` and `count` through the
//! cache.
//!
//! Read path, top to bottom (`CachedQuery::read`): pick the cache; tell the statement's
//! dependencies from its SQL (read the database uncached when they cannot be told, or when it
//! reads no table and no timeout was given); skip the cache when the connection's transaction
//! must see its own writes; build the key; one lookup round trip; on a hit decode and return; on a miss read
//! the database, then fill (unless empty and empty results are not cached, or inside a
//! transaction). Any cache failure falls back to the database; it is logged and counted.

use std::time::Duration;

use caching_core::{Cache, ReadOutcome, ReadPlan, Registrations, Timeout};
use diesel::dsl::{CountStar, Limit, Select};
use diesel::query_builder::{AsQuery, QueryFragment, QueryId};
use diesel::query_dsl::methods::{LimitDsl, SelectDsl};
use diesel::query_dsl::LoadQuery;
use diesel::QueryResult;

use crate::connection::CachedConnection;
use crate::key::{finish_key, CacheConnection};
use crate::model::CacheableRow;

/// Per-query cache settings; "whatever is set last sticks".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryOptions {
    timeout: Option<Timeout>,
    cache: Option<String>,
    tables: Vec<&'static str>,
    disabled: bool,
}

impl QueryOptions {
    pub(crate) fn is_disabled(&self) -> bool {
        self.disabled
    }

    pub(crate) fn cache_name(&self) -> Option<&str> {
        self.cache.as_deref()
    }

    pub(crate) fn declared_tables(&self) -> &[&'static str] {
        &self.tables
    }

    /// The timeout set on the query, if any.
    #[cfg(feature = "async")]
    pub(crate) fn explicit_timeout(&self) -> Option<Timeout> {
        self.timeout
    }

    pub(crate) fn timeout_or_default(&self) -> Timeout {
        self.timeout.unwrap_or_default()
    }
}

/// A Diesel query that reads through the cache. Made by [`CacheDsl::cached`](crate::CacheDsl::cached).
#[derive(Debug, Clone)]
#[must_use = "a cached query does nothing until loaded"]
pub struct CachedQuery<Q> {
    query: Q,
    options: QueryOptions,
}

impl<Q> CachedQuery<Q> {
    pub(crate) fn new(query: Q) -> Self {
        CachedQuery {
            query,
            options: QueryOptions::default(),
        }
    }

    pub(crate) fn with_options(query: Q, options: QueryOptions) -> Self {
        CachedQuery { query, options }
    }

    pub(crate) fn into_parts(self) -> (Q, QueryOptions) {
        (self.query, self.options)
    }

    /// Sets this query's timeout (overrides the cache's default; the cache's maximum timeout
    /// still applies), and turns caching on: like the original's `no_cache().cache(12)`,
    /// whatever is set last sticks. A query that reads no table (`SELECT 1`, `SELECT now()`)
    /// is cached only with an explicit timeout.
    pub fn timeout(mut self, timeout: impl Into<Timeout>) -> Self {
        self.options.timeout = Some(timeout.into());
        self.options.disabled = false;
        self
    }

    /// Shorthand for `.timeout(duration)`.
    pub fn cached_for(self, duration: Duration) -> Self {
        self.timeout(duration)
    }

    /// Reads through the named cache of the connection's [`CacheSet`](crate::CacheSet).
    pub fn cache(mut self, name: impl Into<String>) -> Self {
        self.options.cache = Some(name.into());
        self
    }

    /// Declares tables the query depends on that its SQL does not name (the base tables of a
    /// view, or of a function): any write to them makes this query's cached result miss, at
    /// table granularity. Tables the SQL names are found by themselves.
    pub fn tables(mut self, tables: &[&'static str]) -> Self {
        self.options.tables.extend_from_slice(tables);
        self
    }

    /// Turns caching off (or back on) for this query: nothing is read from or written to the
    /// cache.
    pub fn enabled(mut self, on: bool) -> Self {
        self.options.disabled = !on;
        self
    }

    /// The per-query options.
    pub fn options(&self) -> &QueryOptions {
        &self.options
    }

    /// The wrapped query.
    pub fn into_inner(self) -> Q {
        self.query
    }

    /// The cache key this query gets on `conn` when loading rows of type `U`.
    ///
    /// ```
    /// use caching_diesel::prelude::*;
    /// use caching_diesel::{Cache, CacheSet, CachedConnection};
    /// use diesel::sql_types::{Integer, Text};
    /// let raw = SqliteConnection::establish(":memory:").unwrap();
    /// let mut conn = CachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
    /// let a = diesel::sql_query("SELECT ? AS v").bind::<Integer, _>(1).cached().key::<i32, _>(&mut conn).unwrap();
    /// let b = diesel::sql_query("SELECT ? AS v").bind::<Text, _>("1").cached().key::<i32, _>(&mut conn).unwrap();
    /// assert_ne!(a, b);
    /// ```
    pub fn key<U, C>(self, conn: &mut CachedConnection<C>) -> QueryResult<String>
    where
        C: CacheConnection,
        U: CacheableRow + 'static,
        Q: AsQuery,
        Q::Query: QueryFragment<C::Backend> + QueryId,
    {
        let cache = conn.caches.get(self.options.cache.as_deref())?;
        let query = self.query.as_query();
        let (template, binds) = conn.templates.get::<C, _>(&query)?;
        conn.conn.key_binds(&query, binds, false)?;
        let parts = template.resolve::<U, C>(
            "query",
            cache.config().codec.id(),
            &conn.label,
            &self.options.tables,
            None,
        );
        Ok(cache
            .keys()
            .query_key(&finish_key(&parts.prefix.builder, binds)))
    }

    fn tables_of<U: CacheableRow>(&self) -> Vec<&'static str> {
        let mut tables = Vec::new();
        U::tables(&mut tables);
        tables.extend_from_slice(&self.options.tables);
        tables.sort_unstable();
        tables.dedup();
        tables
    }

    /// The read of `query` through the cache: key, dependencies, then the shared read path.
    /// Anything that keeps the cache from being used safely reads the database.
    fn read<'query, U, C, X>(
        self,
        conn: &mut CachedConnection<C>,
        kind: &'static str,
        query: X,
    ) -> QueryResult<(Vec<U>, ReadOutcome)>
    where
        C: CacheConnection,
        U: CacheableRow + 'static,
        X: QueryFragment<C::Backend> + QueryId + LoadQuery<'query, C, U> + 'query,
    {
        // A read that never reaches the engine's read path: counted in the per-table stats
        // (under its model and declared tables: its SQL is not read) with its reason.
        let cache_name = self.options.cache.as_deref();
        let bypassed = |conn: &mut CachedConnection<C>, query: X, why: &'static str| {
            let outcome = ReadOutcome::Bypassed(why);
            if let Ok(cache) = conn.caches.get(cache_name) {
                cache.record_read(&self.tables_of::<U>(), outcome);
            }
            query.load(&mut conn.conn).map(|rows| (rows, outcome))
        };
        if self.options.disabled {
            return bypassed(conn, query, "caching turned off for this query");
        }
        // Borrowed, not cloned: every reading thread would otherwise write the cache's
        // shared reference count twice per read.
        let cache = conn.caches.get(self.options.cache.as_deref())?;
        let dialect = crate::deps::dialect_of(C::BACKEND);
        // The SQL, its analysis and the key's prefix: remembered per query type when its SQL
        // depends on its type alone (see `crate::key`); the binds, on every read.
        let remembered = conn
            .templates
            .get::<C, _>(&query)
            .and_then(|(template, binds)| {
                conn.conn.key_binds(&query, binds, true)?;
                Ok((template, binds))
            });
        let (template, binds) = match remembered {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "could not build a cache key; reading the database");
                return bypassed(conn, query, "no cache key");
            }
        };
        let parts = template.resolve::<U, C>(
            kind,
            cache.config().codec.id(),
            &conn.label,
            &self.options.tables,
            Some(dialect),
        );
        parts.prefix.register_models();
        // Held here: the dependencies borrow the analysis's table names, not the connection.
        let analysis = parts.analysis.cloned();
        let deps = match analysis.as_deref().map(|analysis| {
            crate::deps::dependencies(
                parts.sql,
                analysis,
                &binds.values,
                dialect,
                &parts.prefix.row_tables,
                &parts.prefix.model_tables,
                &self.options.tables,
                cache.config().dependencies,
            )
        }) {
            Some(Ok(d)) => d,
            Some(Err(why)) => {
                crate::deps::warn_uncacheable(parts.sql, &why);
                return bypassed(conn, query, "dependencies cannot be read from the SQL");
            }
            None => return bypassed(conn, query, "dependencies cannot be read from the SQL"),
        };
        if deps.tables.is_empty() && self.options.timeout.is_none() {
            // No table: a constant, or a function whose value no write changes (`now()`).
            // Cached only for an explicit timeout.
            return bypassed(conn, query, "reads no table and has no timeout");
        }
        let key = cache
            .keys()
            .query_key(&finish_key(&parts.prefix.builder, binds));
        let timeout = self.options.timeout.unwrap_or_default();
        let (tables, guarded) = (&deps.tables, &deps.guarded);
        // A count, however it was written (`.cached_count()`, `.count().cached()`, raw SQL),
        // lives at most the count timeout when one is set.
        let cap = if deps.counts {
            cache.config().count_timeout
        } else {
            None
        };
        let plan = conn.plan_read(
            cache,
            ReadPlan::new(&key, tables).timeout(timeout).guard(guarded),
            tables,
            cap,
        );
        let keys = cache.keys();
        read_through(
            cache,
            &plan,
            &mut conn.conn,
            |c| query.load(c),
            |rows: &Vec<U>, regs| {
                for row in rows {
                    row.register(keys, &key, regs);
                }
                deps.register(keys, &key, regs);
            },
        )
    }

    /// `COUNT(*)` of the query, through the cache. The count depends on the equality
    /// conditions of its WHERE clause (a matching insert, delete or update invalidates it at
    /// once) or, without one, on every write to its tables. The cache's count timeout, if
    /// set, bounds how long it stays.
    ///
    /// ```
    /// use caching_diesel::prelude::*;
    /// use caching_diesel::{Cache, CacheSet, CachedConnection};
    /// diesel::table! { users (id) { id -> Integer, name -> Text } }
    /// let raw = SqliteConnection::establish(":memory:").unwrap();
    /// let mut conn = CachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
    /// diesel::sql_query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)").execute(&mut conn).unwrap();
    /// assert_eq!(users::table.cached().count(&mut conn).unwrap(), 0);
    /// assert_eq!(users::table.cached().count(&mut conn).unwrap(), 0);
    /// assert_eq!(conn.cache().stats().hits, 1);
    /// ```
    pub fn count<'query, C>(self, conn: &mut CachedConnection<C>) -> QueryResult<i64>
    where
        C: CacheConnection,
        Q: SelectDsl<CountStar>,
        Select<Q, CountStar>: AsQuery,
        <Select<Q, CountStar> as AsQuery>::Query:
            QueryFragment<C::Backend> + QueryId + LoadQuery<'query, C, i64> + 'query,
    {
        conn.settle_plain_writes();
        let query = self.query.select(diesel::dsl::count_star()).as_query();
        let rows = CachedQuery {
            query: (),
            options: self.options,
        }
        .read::<i64, C, _>(conn, "count", query)?
        .0;
        first_row(rows)
    }
}

/// The reads of a cached query, shaped like Diesel's `RunQueryDsl` (`load::<User>(&mut conn)`
/// with one type parameter, as in Diesel): `load`, `get_results`, `get_result` and `first`
/// through the cache. In the [prelude](crate::prelude).
///
/// ```
/// use caching_diesel::prelude::*;
/// use caching_diesel::{Cache, CacheSet, CachedConnection};
/// let raw = SqliteConnection::establish(":memory:").unwrap();
/// let mut conn = CachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
/// // A query that reads no table is cached only with an explicit timeout.
/// let v = diesel::select(1.into_sql::<diesel::sql_types::Integer>())
///     .cached()
///     .cached_for(std::time::Duration::from_secs(60))
///     .load::<i32>(&mut conn)
///     .unwrap();
/// assert_eq!(v, vec![1]);
/// let one: i32 = diesel::select(1.into_sql::<diesel::sql_types::Integer>())
///     .cached()
///     .cached_for(std::time::Duration::from_secs(60))
///     .first(&mut conn)
///     .unwrap();
/// assert_eq!(one, 1);
/// ```
pub trait CachedRunQueryDsl<Conn>: Sized {
    /// Loads every row, through the cache.
    fn load<'query, U>(self, conn: &mut Conn) -> QueryResult<Vec<U>>
    where
        Self: LoadCached<'query, Conn, U>,
    {
        self.load_cached(conn)
    }

    /// [`load`](CachedRunQueryDsl::load), and how the read was answered: a hit, a miss, or
    /// bypassed and why (caching turned off for the query, dependencies that cannot be read
    /// from its SQL, a transaction that must see its own writes, ...).
    ///
    /// ```
    /// use caching_diesel::prelude::*;
    /// use caching_diesel::{Cache, CacheSet, CachedConnection, ReadOutcome};
    /// diesel::table! { users (id) { id -> Integer, name -> Text } }
    /// #[derive(Queryable, Selectable, Identifiable, Cached, serde::Serialize, serde::Deserialize)]
    /// #[diesel(table_name = users)]
    /// struct User { id: i32, name: String }
    /// let raw = SqliteConnection::establish(":memory:").unwrap();
    /// let mut conn = CachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
    /// diesel::sql_query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)").execute(&mut conn).unwrap();
    /// diesel::sql_query("INSERT INTO users VALUES (1, 'fliggy')").execute(&mut conn).unwrap();
    /// let q = || users::table.find(1).cached();
    /// let (_, first) = q().load_with_outcome::<User>(&mut conn).unwrap();
    /// let (_, second) = q().load_with_outcome::<User>(&mut conn).unwrap();
    /// assert_eq!((first, second), (ReadOutcome::Miss, ReadOutcome::Hit));
    /// let (_, off) = q().enabled(false).load_with_outcome::<User>(&mut conn).unwrap();
    /// assert!(matches!(off, ReadOutcome::Bypassed(_)));
    /// ```
    fn load_with_outcome<'query, U>(self, conn: &mut Conn) -> QueryResult<(Vec<U>, ReadOutcome)>
    where
        Self: LoadCached<'query, Conn, U>,
    {
        LoadCached::load_with_outcome(self, conn)
    }

    /// Loads the query's rows by id: the primary keys through the cache (a cached query of
    /// their own), then the rows from per-object entries in one multi-get, the missing ones
    /// with one `IN` query, each cached once. Rows come back in the order of the ids. A row
    /// deleted between the two reads is left out.
    ///
    /// The query must allow replacing its select clause with the primary key (a table, a
    /// `filter`, an `order`; not a boxed query); the model derives `Cached` and
    /// `Identifiable` and has a single-column primary key.
    ///
    /// ```
    /// use caching_diesel::prelude::*;
    /// use caching_diesel::{Cache, CacheSet, CachedConnection};
    /// diesel::table! { users (id) { id -> Integer, name -> Text } }
    /// #[derive(Queryable, Selectable, Identifiable, Cached, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    /// #[diesel(table_name = users)]
    /// struct User { id: i32, name: String }
    /// let raw = SqliteConnection::establish(":memory:").unwrap();
    /// let mut conn = CachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
    /// diesel::sql_query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)").execute(&mut conn).unwrap();
    /// diesel::sql_query("INSERT INTO users VALUES (1, 'a'), (2, 'b'), (3, 'c')").execute(&mut conn).unwrap();
    /// // Ids of the first query, then users 1 and 2 with one IN query.
    /// let some = users::table.filter(users::id.le(2)).order(users::id).cached().fetch_by_id::<User>(&mut conn).unwrap();
    /// // Another query: its ids, then user 3 only (1 and 2 come from their entries).
    /// let all: Vec<User> = users::table.order(users::id.desc()).cached().fetch_by_id(&mut conn).unwrap();
    /// assert_eq!(some.len(), 2);
    /// assert_eq!(all.iter().map(|u| u.id).collect::<Vec<_>>(), [3, 2, 1]);
    /// ```
    fn fetch_by_id<'query, U>(self, conn: &mut Conn) -> QueryResult<Vec<U>>
    where
        Self: crate::fetch::FetchCached<'query, Conn, U>,
    {
        self.fetch_by_id_cached(conn)
    }

    /// Same as [`load`](CachedRunQueryDsl::load).
    fn get_results<'query, U>(self, conn: &mut Conn) -> QueryResult<Vec<U>>
    where
        Self: LoadCached<'query, Conn, U>,
    {
        self.load_cached(conn)
    }

    /// The first row of the result (`Err(NotFound)` if empty), through the cache.
    fn get_result<'query, U>(self, conn: &mut Conn) -> QueryResult<U>
    where
        Self: LoadCached<'query, Conn, U>,
    {
        first_row(self.load_cached(conn)?)
    }

    /// The first row with `LIMIT 1` (like Diesel's `first`), through the cache.
    fn first<'query, U>(self, conn: &mut Conn) -> QueryResult<U>
    where
        Self: FirstCached<'query, Conn, U>,
    {
        self.first_cached(conn)
    }
}

impl<Q, Conn> CachedRunQueryDsl<Conn> for CachedQuery<Q> {}

/// Loads the rows of a cached query on a connection (the bounds behind
/// [`CachedRunQueryDsl::load`]; Diesel's `LoadQuery` plays this part for `RunQueryDsl`).
pub trait LoadCached<'query, Conn, U>: Sized {
    /// Loads every row, through the cache, and says how the read was answered.
    fn load_with_outcome(self, conn: &mut Conn) -> QueryResult<(Vec<U>, ReadOutcome)>;

    /// Loads every row, through the cache.
    fn load_cached(self, conn: &mut Conn) -> QueryResult<Vec<U>> {
        self.load_with_outcome(conn).map(|(rows, _)| rows)
    }
}

impl<'query, Q, C, U> LoadCached<'query, CachedConnection<C>, U> for CachedQuery<Q>
where
    C: CacheConnection,
    U: CacheableRow + 'static,
    Q: AsQuery,
    Q::Query: QueryFragment<C::Backend> + QueryId + LoadQuery<'query, C, U> + 'query,
{
    fn load_with_outcome(
        self,
        conn: &mut CachedConnection<C>,
    ) -> QueryResult<(Vec<U>, ReadOutcome)> {
        conn.settle_plain_writes();
        let query = self.query.as_query();
        CachedQuery {
            query: (),
            options: self.options,
        }
        .read(conn, "query", query)
    }
}

/// The first row of a cached query with `LIMIT 1` (the bounds behind
/// [`CachedRunQueryDsl::first`]).
pub trait FirstCached<'query, Conn, U> {
    /// The first row, through the cache.
    fn first_cached(self, conn: &mut Conn) -> QueryResult<U>;
}

impl<'query, Q, C, U> FirstCached<'query, CachedConnection<C>, U> for CachedQuery<Q>
where
    C: CacheConnection,
    U: CacheableRow + 'static,
    Q: LimitDsl,
    Limit<Q>: AsQuery,
    <Limit<Q> as AsQuery>::Query:
        QueryFragment<C::Backend> + QueryId + LoadQuery<'query, C, U> + 'query,
{
    fn first_cached(self, conn: &mut CachedConnection<C>) -> QueryResult<U> {
        CachedQuery {
            query: self.query.limit(1),
            options: self.options,
        }
        .get_result(conn)
    }
}

/// The first of `rows`, or `NotFound` (`get_result`, `first`, counts, single-row writes).
pub(crate) fn first_row<T>(rows: Vec<T>) -> QueryResult<T> {
    rows.into_iter()
        .next()
        .ok_or(diesel::result::Error::NotFound)
}

/// The engine's one read-through of `plan` (made by
/// [`CachedConnection::plan_read`]: bypass inside a foreign transaction or over a table this
/// transaction wrote, no fills inside transactions, replica cap), reading the database on
/// `inner`; empty results are not filled unless the cache says so.
pub(crate) fn read_through<C, U, R, G>(
    cache: &Cache,
    plan: &ReadPlan<'_>,
    inner: &mut C,
    read: R,
    register: G,
) -> QueryResult<(Vec<U>, ReadOutcome)>
where
    C: CacheConnection,
    U: serde::Serialize + serde::de::DeserializeOwned,
    R: FnOnce(&mut C) -> QueryResult<Vec<U>>,
    G: FnOnce(&Vec<U>, &mut Registrations),
{
    let cache_empty = cache.config().cache_empty_results;
    cache.read_through(
        plan,
        || read(inner),
        |rows: &Vec<U>, regs: &mut Registrations| {
            if rows.is_empty() && !cache_empty {
                return Err("empty result");
            }
            register(rows, regs);
            Ok(())
        },
    )
}
