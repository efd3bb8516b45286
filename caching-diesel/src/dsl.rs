//! The `.cached()` extension: turns any Diesel query into a cached one.

use crate::query::CachedQuery;

/// Adds `.cached()` to every Diesel query (query builder, boxed, `sql_query`).
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
}

impl<T> CacheDsl for T {}
