//! Automatic query caching with precise invalidation for Diesel: the Rust heir of
//! django-cache-machine.
//!
//! Derive [`Cached`] on a model, wrap your connection in a [`CachedConnection`], write
//! `.cached()` on a query, and write through the helpers: reads come from the cache until a
//! write to one of the rows in a result makes it stale, and then exactly the affected queries
//! are dropped.
//!
//! ```
//! use caching_diesel::prelude::*;
//! use caching_diesel::{Cache, CacheSet, CachedConnection};
//!
//! diesel::table! { users (id) { id -> Integer, name -> Text } }
//!
//! #[derive(Queryable, Selectable, Identifiable, AsChangeset, Cached, Debug, serde::Serialize, serde::Deserialize)]
//! #[diesel(table_name = users)]
//! struct User { id: i32, name: String }
//!
//! let raw = SqliteConnection::establish(":memory:").unwrap();
//! let mut conn = CachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
//! diesel::sql_query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)").execute(&mut *conn).unwrap();
//! diesel::sql_query("INSERT INTO users VALUES (1, 'fliggy')").execute(&mut *conn).unwrap();
//!
//! let u: User = users::table.find(1).cached().first(&mut conn).unwrap(); // database
//! let u: User = users::table.find(1).cached().first(&mut conn).unwrap(); // cache
//! assert_eq!(conn.cache().stats().hits, 1);
//!
//! let renamed: User = conn.save_changes(&User { id: 1, name: "clouseroo".into() }).unwrap();
//! let u: User = users::table.find(1).cached().first(&mut conn).unwrap(); // database again
//! assert_eq!(u.name, "clouseroo");
//! ```

#[cfg(feature = "async")]
pub mod async_diesel;
mod binds;
mod caches;
mod columns;
mod connection;
mod deps;
mod diesel_impls;
mod dsl;
mod error;
mod fetch;
mod key;
mod method;
mod model;
#[cfg(feature = "mysql")]
mod mysql_insert;
mod plain;
#[cfg(feature = "r2d2")]
pub mod pool;
mod query;
mod sql;
#[cfg(feature = "minijinja")]
pub mod template;
mod transaction;
mod write;

#[cfg(feature = "async")]
pub use async_diesel::{AsyncCacheConnection, AsyncCachedConnection, AsyncInsertRows};
pub use caches::{install, process_caches, CacheSet};
pub use caching_core::{
    self as core, Cache, CacheBuilder, CacheConfig, DependencyTracking, InvalidateOnCreate,
    Invalidation, ObjectKey, PredicateValue, ReadOutcome, StatsSnapshot, TableStats, Timeout,
};
/// A method of a cached model, cached per (object, method, arguments) on the object's flush
/// list (the original's `@cached_method`).
///
/// ```
/// use caching_diesel::prelude::*;
/// use caching_diesel::{cached_method, Cache, CacheSet, CachedConnection};
/// diesel::table! { users (id) { id -> Integer, name -> Text } }
/// diesel::table! { posts (id) { id -> Integer, author_id -> Integer } }
/// #[derive(Queryable, Selectable, Identifiable, AsChangeset, Cached, serde::Serialize, serde::Deserialize)]
/// #[diesel(table_name = users)]
/// struct User { id: i32, name: String }
///
/// impl User {
///     /// Counted once, then served from the cache until this user, or `posts`, is written.
///     #[cached_method(tables = ["posts"])]
///     fn post_count(&self, conn: &mut CachedConnection<SqliteConnection>) -> QueryResult<i64> {
///         posts::table.filter(posts::author_id.eq(self.id)).count().get_result(conn.inner())
///     }
///
///     /// Arguments are part of the key; the timeout is in seconds.
///     #[cached_method(timeout = 300)]
///     fn shout(&self, cache: &Cache, times: usize) -> String {
///         let _ = cache;
///         self.name.to_uppercase().repeat(times)
///     }
/// }
///
/// let raw = SqliteConnection::establish(":memory:").unwrap();
/// let mut conn = CachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
/// diesel::sql_query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)").execute(&mut conn).unwrap();
/// diesel::sql_query("CREATE TABLE posts (id INTEGER PRIMARY KEY, author_id INTEGER NOT NULL)").execute(&mut conn).unwrap();
/// diesel::sql_query("INSERT INTO users VALUES (1, 'fliggy')").execute(&mut conn).unwrap();
/// diesel::sql_query("INSERT INTO posts VALUES (1, 1), (2, 1)").execute(&mut conn).unwrap();
/// let user: User = users::table.find(1).cached().first(&mut conn).unwrap();
/// assert_eq!(user.post_count(&mut conn).unwrap(), 2);
/// assert_eq!(user.post_count(&mut conn).unwrap(), 2); // from the cache
/// let cache = conn.cache().clone();
/// assert_eq!(user.shout(&cache, 2), "FLIGGYFLIGGY");
/// // Saving the user drops its cached method values.
/// let user: User = conn.save_changes(&User { id: 1, name: "clouseroo".into() }).unwrap();
/// assert_eq!(user.shout(&cache, 1), "CLOUSEROO");
/// ```
pub use caching_derive::cached_method;
pub use caching_derive::{Cached, CachedRow};
pub use columns::{ColumnClass, ModelInfo};
pub use connection::CachedConnection;
pub use diesel_impls::CachedTransactionManager;
pub use dsl::CacheDsl;
pub use error::{Error, InsertRefusal};
pub use fetch::{FetchById, FetchCached};
pub use key::{CacheConnection, QueryIdentity, DIESEL_KEY_TAG};
pub use method::CacheSource;
pub use model::{CacheableRow, CachedModel};
pub use query::{CachedQuery, CachedRunQueryDsl, FirstCached, LoadCached, QueryOptions};
pub use write::{rows_invalidation, InsertRows};

/// Everything a module using cached queries needs: Diesel's prelude, `.cached()`, and the
/// derive.
pub mod prelude {
    pub use crate::dsl::CacheDsl;
    pub use crate::model::{CacheableRow, CachedModel};
    pub use crate::query::CachedRunQueryDsl;
    pub use caching_derive::{cached_method, Cached, CachedRow};
    pub use diesel::prelude::*;
}

/// The [prelude](crate::prelude) for [`AsyncCachedConnection`] (feature `async`): Diesel's
/// prelude with diesel-async's `RunQueryDsl` in place of Diesel's (named explicitly, it
/// shadows the glob's), which loads `.cached()` queries through the cache on an
/// `AsyncCachedConnection`, and [`AsyncCachedQueryDsl`](crate::async_diesel::AsyncCachedQueryDsl)
/// (outcomes, counts). Do not import the blocking [prelude](crate::prelude) in the same
/// scope: its `CachedRunQueryDsl` makes `load` ambiguous.
#[cfg(feature = "async")]
pub mod async_prelude {
    pub use crate::async_diesel::AsyncCachedQueryDsl;
    pub use crate::dsl::CacheDsl;
    pub use crate::model::{CacheableRow, CachedModel};
    pub use caching_derive::{cached_method, Cached, CachedRow};
    pub use diesel::prelude::*;
    pub use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
}

/// Paths the derive's generated code names. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::method::{cached_method, try_cached_method, KeyArg, MethodCall};
    pub use crate::model::{push_predicate_value, register_model};
    pub use crate::CacheSource;

    /// Analyses `sql` for `backend` (`sqlite`, `postgres`, `mysql`): through the per-process
    /// cache of analyses, or parsed afresh. For the benchmark; not a public API.
    pub fn analyse_sql(sql: &str, backend: &str, cached: bool) -> bool {
        let dialect = crate::deps::dialect_of(backend);
        if cached {
            crate::sql::analysed(sql, dialect).is_ok()
        } else {
            crate::sql::analyse(sql, dialect).is_ok()
        }
    }
    pub use caching_core::{KeySpace, ObjectKey, QueryKeyBuilder, Registrations};
    pub use serde;
}

/// The user guide (`docs/src`): every Rust block of every chapter is compiled as a doctest
/// (most also run, against an in-memory SQLite), one item per chapter so that a failure names
/// its chapter. Chapters that need a server or a feature the default build lacks are gated on
/// that feature; their blocks are `no_run`.
#[cfg(doctest)]
mod guide {
    #[doc = include_str!("../../README.md")]
    struct Readme;
    #[doc = include_str!("../../docs/src/introduction.md")]
    struct Introduction;
    #[doc = include_str!("../../docs/src/quickstart.md")]
    struct Quickstart;
    #[doc = include_str!("../../docs/src/models.md")]
    struct Models;
    #[doc = include_str!("../../docs/src/queries.md")]
    struct Queries;
    #[doc = include_str!("../../docs/src/writes.md")]
    struct Writes;
    #[doc = include_str!("../../docs/src/invalidation.md")]
    struct Invalidation;
    #[doc = include_str!("../../docs/src/transactions.md")]
    struct Transactions;
    #[doc = include_str!("../../docs/src/configuration.md")]
    struct Configuration;
    #[doc = include_str!("../../docs/src/manual-caching.md")]
    struct ManualCaching;
    #[doc = include_str!("../../docs/src/failure-modes.md")]
    struct FailureModes;
    #[doc = include_str!("../../docs/src/observability.md")]
    struct Observability;
    #[doc = include_str!("../../docs/src/protocol.md")]
    struct Protocol;
    #[doc = include_str!("../../docs/src/benchmarks.md")]
    struct Benchmarks;
    #[doc = include_str!("../../docs/src/migration.md")]
    struct Migration;
    #[cfg(all(doctest, feature = "postgres", feature = "r2d2"))]
    #[doc = include_str!("../../docs/src/postgres-r2d2.md")]
    struct PostgresR2d2;
    #[cfg(all(doctest, feature = "async", feature = "sqlite"))]
    #[doc = include_str!("../../docs/src/async.md")]
    struct Async;
    #[cfg(all(doctest, feature = "deadpool", feature = "bb8", feature = "sqlite"))]
    #[doc = include_str!("../../docs/src/async-pools.md")]
    struct AsyncPools;
    #[cfg(all(doctest, feature = "minijinja"))]
    #[doc = include_str!("../../docs/src/templates.md")]
    struct Templates;
}
