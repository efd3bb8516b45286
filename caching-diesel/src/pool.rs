//! r2d2 pools of cached connections: every connection of the pool shares the pool's caches
//! and database label.

use std::marker::PhantomData;

use diesel::r2d2::R2D2Connection;

use crate::caches::CacheSet;
use crate::connection::CachedConnection;
use crate::key::CacheConnection;

/// An r2d2 connection manager that hands out [`CachedConnection`]s.
///
/// ```
/// use caching_diesel::pool::CachedConnectionManager;
/// use caching_diesel::{Cache, CacheSet};
/// use diesel::SqliteConnection;
/// let manager = CachedConnectionManager::<SqliteConnection>::new(":memory:", CacheSet::new(Cache::locmem()));
/// let pool = r2d2::Pool::builder().max_size(2).build(manager).unwrap();
/// let conn = pool.get().unwrap();
/// assert_eq!(conn.label(), "default");
/// ```
#[derive(Debug)]
pub struct CachedConnectionManager<C> {
    url: String,
    caches: CacheSet,
    label: String,
    replica: bool,
    _conn: PhantomData<fn() -> C>,
}

impl<C> CachedConnectionManager<C> {
    /// A manager for `database_url` whose connections use `caches`.
    pub fn new(database_url: impl Into<String>, caches: CacheSet) -> Self {
        CachedConnectionManager {
            url: database_url.into(),
            caches,
            label: "default".into(),
            replica: false,
            _conn: PhantomData,
        }
    }

    /// Sets the database label of every connection.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Marks every connection as reading from a replica.
    pub fn as_replica(mut self, replica: bool) -> Self {
        self.replica = replica;
        self
    }
}

impl<C> r2d2::ManageConnection for CachedConnectionManager<C>
where
    C: CacheConnection + R2D2Connection,
{
    type Connection = CachedConnection<C>;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<Self::Connection, Self::Error> {
        let conn = C::establish(&self.url).map_err(diesel::r2d2::Error::ConnectionError)?;
        Ok(CachedConnection::with_caches(conn, self.caches.clone())
            .with_label(self.label.clone())
            .as_replica(self.replica))
    }

    fn is_valid(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        conn.inner().ping().map_err(diesel::r2d2::Error::QueryError)
    }

    /// Broken: a transaction is open (seen by the wrapper, or begun behind its back), or the
    /// Diesel connection itself reports broken ([`R2D2Connection::is_broken`]: for example a
    /// transaction manager left in an error state by a failed rollback, or a transaction the
    /// wrapper could not observe because its instrumentation was replaced). r2d2 then drops
    /// the connection instead of handing it out again.
    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        conn.in_transaction() || conn.inner().is_broken()
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use diesel::connection::{Connection, TransactionManager};
    use diesel::SqliteConnection;
    use r2d2::ManageConnection;

    use super::*;
    use crate::Cache;

    fn manager() -> CachedConnectionManager<SqliteConnection> {
        CachedConnectionManager::new(":memory:", CacheSet::new(Cache::locmem()))
    }

    #[test]
    fn a_fresh_connection_is_not_broken() {
        let m = manager();
        let mut conn = m.connect().unwrap();
        assert!(!m.has_broken(&mut conn));
        m.is_valid(&mut conn).unwrap();
    }

    /// A transaction begun on the Diesel connection after its instrumentation was replaced is
    /// invisible to the wrapper (`in_transaction()` is false), but Diesel's own transaction
    /// manager knows it is open: the pool must not hand that connection out again.
    #[test]
    fn a_transaction_the_wrapper_cannot_see_still_breaks_the_connection() {
        let m = manager();
        let mut conn = m.connect().unwrap();
        conn.inner()
            .set_instrumentation(diesel::connection::get_default_instrumentation());
        <SqliteConnection as Connection>::TransactionManager::begin_transaction(conn.inner())
            .unwrap();
        assert!(!conn.in_transaction(), "the wrapper does not see it");
        assert!(conn.inner().is_broken(), "diesel does");
        assert!(m.has_broken(&mut conn));
        // Closing the transaction makes the connection reusable again.
        <SqliteConnection as Connection>::TransactionManager::rollback_transaction(conn.inner())
            .unwrap();
        assert!(!m.has_broken(&mut conn));
    }
}
