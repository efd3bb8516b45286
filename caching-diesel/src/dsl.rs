//! The `.cached()` extension: turns any Diesel query into a cached one.

use diesel::dsl::{CountStar, Select};
use diesel::query_builder::{AsQuery, QueryFragment, QueryId};
use diesel::query_dsl::methods::SelectDsl;
use diesel::query_dsl::LoadQuery;
use diesel::QueryResult;

use crate::connection::CachedConnection;
use crate::key::CacheConnection;
use crate::query::CachedQuery;

/// Adds `.cached()` to every Diesel query (query builder, boxed, `sql_query`): any type that
/// implements Diesel's `AsQuery`.
///
/// ```
/// use caching_diesel::prelude::*;
/// diesel::table! { users (id) { id -> Integer, name -> Text } }
/// let q = users::table.filter(users::id.eq(1)).cached();
/// # let _ = q;
/// ```
pub trait CacheDsl: Sized {
    /// A cached version of this query: `load`, `get_results`, `get_result`, `first` and
    /// `count` read through the cache.
    fn cached(self) -> CachedQuery<Self> {
        CachedQuery::new(self)
    }

    /// `COUNT(*)` of this query through the cache (same as `.cached().count(conn)`): it
    /// depends on the equality conditions of the query's WHERE clause, so a matching insert,
    /// delete or update invalidates it at once; the cache's count timeout, if set, bounds
    /// how long it stays.
    ///
    /// ```
    /// use caching_diesel::prelude::*;
    /// use caching_diesel::{Cache, CacheSet, CachedConnection};
    /// diesel::table! { users (id) { id -> Integer, name -> Text } }
    /// let raw = SqliteConnection::establish(":memory:").unwrap();
    /// let mut conn = CachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
    /// diesel::sql_query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)").execute(&mut conn).unwrap();
    /// let n = users::table.filter(users::name.eq("fliggy")).cached_count(&mut conn).unwrap();
    /// assert_eq!(n, 0);
    /// ```
    fn cached_count<'query, C>(self, conn: &mut CachedConnection<C>) -> QueryResult<i64>
    where
        C: CacheConnection,
        Self: SelectDsl<CountStar>,
        Select<Self, CountStar>: AsQuery,
        <Select<Self, CountStar> as AsQuery>::Query:
            QueryFragment<C::Backend> + QueryId + LoadQuery<'query, C, i64> + 'query,
    {
        CachedQuery::new(self).count(conn)
    }
}

/// Every Diesel query: query builders, boxed queries, `sql_query` (all implement `AsQuery`).
/// Nothing else, so that `cache.cached(key, timeout, f)` on a [`Cache`](crate::Cache) with
/// the prelude imported is [`Cache::cached`](crate::Cache::cached), not this trait's method.
///
/// ```
/// use caching_diesel::prelude::*;
/// use caching_diesel::{Cache, Timeout};
/// let cache = Cache::locmem();
/// let v: u32 = cache.cached("answer", Timeout::Forever, || 42);
/// assert_eq!(v, 42);
/// ```
impl<T: AsQuery> CacheDsl for T {}
