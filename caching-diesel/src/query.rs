//! The cached query: `load`, `get_results`, `get_result`, `first` and `count` through the
//! cache.
//!
//! Read path, top to bottom (`CachedQuery::load`): pick the cache; skip it when the rows are
//! not models and no timeout was given, or when the connection's transaction must see its own
//! writes; build the key; one lookup round trip; on a hit decode and return; on a miss read
//! the database, then fill (unless empty and empty results are not cached, or inside a
//! transaction). Any cache failure falls back to the database; it is logged and counted.

use std::time::Duration;

use caching_core::{Cache, Expiry, ReadPlan, Registrations, Timeout};
use diesel::dsl::{CountStar, Limit, Select};
use diesel::query_builder::{AsQuery, QueryFragment};
use diesel::query_dsl::methods::{LimitDsl, SelectDsl};
use diesel::query_dsl::LoadQuery;
use diesel::{QueryResult, RunQueryDsl};

use crate::connection::CachedConnection;
use crate::key::{query_key_builder, CacheConnection};
use crate::model::{CacheableRow, CachedModel};

/// Per-query cache settings; "whatever is set last sticks".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryOptions {
    timeout: Option<Timeout>,
    cache: Option<String>,
    tables: Vec<&'static str>,
    disabled: bool,
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

    /// Sets this query's timeout (overrides the cache's default; the cache's maximum timeout
    /// still applies). Rows that are not models are cached only with an explicit timeout.
    pub fn timeout(mut self, timeout: impl Into<Timeout>) -> Self {
        self.options.timeout = Some(timeout.into());
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

    /// Declares tables the query reads that are not among the loaded models (a subquery's):
    /// any write to them (through the write helpers, or `invalidate_all`) makes this
    /// query's cached result miss, at table granularity.
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
        U: CacheableRow,
        Q: AsQuery,
        Q::Query: QueryFragment<C::Backend>,
    {
        let cache = conn.caches.get(self.options.cache.as_deref())?.clone();
        let tables = self.tables_of::<U>();
        let query = self.query.as_query();
        key_of::<U, C, _>(conn, &cache, "query", &tables, &query)
    }

    fn tables_of<U: CacheableRow>(&self) -> Vec<&'static str> {
        let mut tables = Vec::new();
        U::tables(&mut tables);
        tables.extend_from_slice(&self.options.tables);
        tables.sort_unstable();
        tables.dedup();
        tables
    }

    /// Loads every row, through the cache.
    ///
    /// ```
    /// use caching_diesel::prelude::*;
    /// use caching_diesel::{Cache, CacheSet, CachedConnection};
    /// let raw = SqliteConnection::establish(":memory:").unwrap();
    /// let mut conn = CachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
    /// // Scalars are cached only with an explicit timeout.
    /// let v: Vec<i32> = diesel::select(1.into_sql::<diesel::sql_types::Integer>())
    ///     .cached()
    ///     .cached_for(std::time::Duration::from_secs(60))
    ///     .load(&mut conn)
    ///     .unwrap();
    /// assert_eq!(v, vec![1]);
    /// ```
    pub fn load<'query, U, C>(self, conn: &mut CachedConnection<C>) -> QueryResult<Vec<U>>
    where
        C: CacheConnection,
        U: CacheableRow + 'static,
        Q: AsQuery,
        Q::Query: QueryFragment<C::Backend> + LoadQuery<'query, C, U> + 'query,
    {
        let cache = conn.caches.get(self.options.cache.as_deref())?.clone();
        let tables = self.tables_of::<U>();
        let query = self.query.as_query();
        let cacheable = !self.options.disabled && (U::MODEL || self.options.timeout.is_some());
        if !cacheable {
            return query.load(&mut conn.conn);
        }
        let key = match key_of::<U, C, _>(conn, &cache, "query", &tables, &query) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "could not build a cache key; reading the database");
                return query.load(&mut conn.conn);
            }
        };
        let timeout = self.options.timeout.unwrap_or_default();
        read_through(
            conn,
            &cache,
            &key,
            &tables,
            timeout,
            Guard::Tables(&self.options.tables),
            |c| query.load(c),
            |rows: &Vec<U>, regs| {
                for row in rows {
                    row.register(cache.keys(), &key, regs);
                }
            },
        )
    }

    /// Same as [`load`](CachedQuery::load).
    pub fn get_results<'query, U, C>(self, conn: &mut CachedConnection<C>) -> QueryResult<Vec<U>>
    where
        C: CacheConnection,
        U: CacheableRow + 'static,
        Q: AsQuery,
        Q::Query: QueryFragment<C::Backend> + LoadQuery<'query, C, U> + 'query,
    {
        self.load(conn)
    }

    /// The first row of the result (`Err(NotFound)` if empty), through the cache.
    pub fn get_result<'query, U, C>(self, conn: &mut CachedConnection<C>) -> QueryResult<U>
    where
        C: CacheConnection,
        U: CacheableRow + 'static,
        Q: AsQuery,
        Q::Query: QueryFragment<C::Backend> + LoadQuery<'query, C, U> + 'query,
    {
        self.load(conn)?
            .into_iter()
            .next()
            .ok_or(diesel::result::Error::NotFound)
    }

    /// The first row with `LIMIT 1` (like Diesel's `first`), through the cache.
    pub fn first<'query, U, C>(self, conn: &mut CachedConnection<C>) -> QueryResult<U>
    where
        C: CacheConnection,
        U: CacheableRow + 'static,
        Q: LimitDsl,
        Limit<Q>: AsQuery,
        <Limit<Q> as AsQuery>::Query: QueryFragment<C::Backend> + LoadQuery<'query, C, U> + 'query,
    {
        CachedQuery {
            query: self.query.limit(1),
            options: self.options,
        }
        .get_result(conn)
    }

    /// `COUNT(*)` of the query, cached for at most the cache's count timeout (none configured:
    /// always asks the database). `M` names the model counted; the count also misses after
    /// any write to `M`'s table, so it is exact at table granularity.
    ///
    /// ```
    /// use caching_diesel::prelude::*;
    /// use caching_diesel::{Cache, CacheSet, CachedConnection};
    /// diesel::table! { users (id) { id -> Integer, name -> Text } }
    /// #[derive(Queryable, Selectable, Identifiable, Cached, serde::Serialize, serde::Deserialize)]
    /// #[diesel(table_name = users)]
    /// struct User { id: i32, name: String }
    /// let raw = SqliteConnection::establish(":memory:").unwrap();
    /// let mut conn = CachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
    /// diesel::sql_query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)").execute(&mut *conn).unwrap();
    /// assert_eq!(users::table.cached().count::<User, _>(&mut conn).unwrap(), 0);
    /// ```
    pub fn count<'query, M, C>(self, conn: &mut CachedConnection<C>) -> QueryResult<i64>
    where
        C: CacheConnection,
        M: CachedModel + CacheableRow,
        Q: SelectDsl<CountStar>,
        Select<Q, CountStar>: AsQuery,
        <Select<Q, CountStar> as AsQuery>::Query:
            QueryFragment<C::Backend> + LoadQuery<'query, C, i64> + 'query,
    {
        let cache = conn.caches.get(self.options.cache.as_deref())?.clone();
        let tables = self.tables_of::<M>();
        let query = self.query.select(diesel::dsl::count_star()).as_query();
        let timeout = match (cache.config().count_timeout, self.options.disabled) {
            (Some(t), false) => t,
            _ => return query.get_result(&mut conn.conn),
        };
        let key = match key_of::<i64, C, _>(conn, &cache, "count", &tables, &query) {
            Ok(k) => k,
            Err(_) => return query.get_result(&mut conn.conn),
        };
        let rows = read_through(
            conn,
            &cache,
            &key,
            &tables,
            Timeout::After(timeout),
            Guard::All,
            |c| query.get_result::<i64>(c).map(|n| vec![n]),
            |_: &Vec<i64>, _| {},
        )?;
        rows.into_iter()
            .next()
            .ok_or(diesel::result::Error::NotFound)
    }
}

pub(crate) fn key_of<U, C, Q>(
    conn: &mut CachedConnection<C>,
    cache: &Cache,
    kind: &str,
    tables: &[&str],
    query: &Q,
) -> QueryResult<String>
where
    C: CacheConnection,
    U: CacheableRow,
    Q: QueryFragment<C::Backend>,
{
    let identity = conn.conn.query_identity(query)?;
    let builder = query_key_builder::<U, C>(kind, conn.label(), tables, &identity);
    Ok(cache.keys().query_key(&builder))
}

/// Which tables' write generations an entry records (any write to them makes it miss).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Guard<'a> {
    /// Every table read (counts: no flush list protects them).
    All,
    /// Only these (tables declared with `.tables()`, whose rows are not in the result).
    Tables(&'a [&'static str]),
}

/// The shared read path: the connection's part (bypass inside a foreign transaction or over
/// a table this transaction wrote, no fills inside transactions, replica cap), then the
/// engine's one read-through.
#[allow(clippy::too_many_arguments)]
pub(crate) fn read_through<C, U, R, G>(
    conn: &mut CachedConnection<C>,
    cache: &Cache,
    key: &str,
    tables: &[&str],
    timeout: Timeout,
    guard: Guard<'_>,
    read: R,
    register: G,
) -> QueryResult<Vec<U>>
where
    C: CacheConnection,
    U: serde::Serialize + serde::de::DeserializeOwned,
    R: FnOnce(&mut C) -> QueryResult<Vec<U>>,
    G: FnOnce(&Vec<U>, &mut Registrations),
{
    let mut plan = ReadPlan::new(key, tables).timeout(timeout);
    plan = match guard {
        Guard::All => plan.guard_all(),
        Guard::Tables(t) => plan.guard(t),
    };
    if conn.must_bypass(tables) {
        plan = plan.bypass("transaction sees its own writes");
    } else if conn.in_transaction() {
        plan = plan.no_fill("inside a transaction");
    }
    if conn.is_replica() {
        plan = plan.cap(Expiry::from_duration(cache.config().replica_timeout));
    }
    let cache_empty = cache.config().cache_empty_results;
    let inner = &mut conn.conn;
    let (rows, _) = cache.read_through(
        &plan,
        || read(inner),
        |rows: &Vec<U>, regs: &mut Registrations| {
            if rows.is_empty() && !cache_empty {
                return Err("empty result");
            }
            register(rows, regs);
            Ok(())
        },
    )?;
    Ok(rows)
}
