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

mod binds;
mod caches;
mod columns;
mod connection;
mod deps;
mod diesel_impls;
mod dsl;
mod error;
mod key;
mod model;
mod plain;
#[cfg(feature = "r2d2")]
pub mod pool;
mod query;
mod sql;
mod transaction;
mod write;

pub use caches::{install, process_caches, CacheSet};
pub use caching_core::{
    self as core, Cache, CacheBuilder, CacheConfig, DependencyTracking, InvalidateOnCreate,
    Invalidation, ObjectKey, PredicateValue, ReadOutcome, StatsSnapshot, Timeout,
};
pub use caching_derive::{Cached, CachedRow};
pub use columns::{ColumnClass, ModelInfo};
pub use connection::CachedConnection;
pub use diesel_impls::CachedTransactionManager;
pub use dsl::CacheDsl;
pub use error::Error;
pub use key::{CacheConnection, QueryIdentity, DIESEL_KEY_TAG};
pub use model::{CacheableRow, CachedModel};
pub use query::{CachedQuery, CachedRunQueryDsl, FirstCached, LoadCached, QueryOptions};
pub use write::rows_invalidation;

/// Everything a module using cached queries needs: Diesel's prelude, `.cached()`, and the
/// derive.
pub mod prelude {
    pub use crate::dsl::CacheDsl;
    pub use crate::model::{CacheableRow, CachedModel};
    pub use crate::query::CachedRunQueryDsl;
    pub use caching_derive::{Cached, CachedRow};
    pub use diesel::prelude::*;
}

/// Paths the derive's generated code names. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::model::{push_predicate_value, register_model};

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
