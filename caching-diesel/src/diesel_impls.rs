//! `CachedConnection` is a Diesel connection: `diesel::update(..).execute(&mut conn)`,
//! `users.load::<User>(&mut conn)`, `conn.transaction(..)` and r2d2 pools work on it
//! directly.
//!
//! Implementing `Connection` for a wrapper needs Diesel's
//! `i-implement-a-third-party-backend-and-opt-into-breaking-changes` feature, which is why
//! Diesel is pinned to 2.3.x (its minor releases may change these traits).
//!
//! Statements run through these impls reach the wrapped connection, where the cache's
//! observer sees them: a write that is not a write helper's is invalidated at table level
//! once it commits ([`crate::plain`]), or refused with strict writes. Transactions begun
//! through Diesel's `Connection::transaction` defer the write helpers' invalidations to the
//! outermost COMMIT, exactly like [`CachedConnection::transaction`].

use diesel::connection::{
    CacheSize, Connection, ConnectionSealed, DefaultLoadingMode, Instrumentation, LoadConnection,
    SimpleConnection, TransactionManager, TransactionManagerStatus,
};
use diesel::expression::QueryMetadata;
use diesel::query_builder::{Query, QueryFragment, QueryId};
use diesel::{ConnectionResult, QueryResult};

use crate::connection::CachedConnection;
use crate::error::Error;
use crate::key::CacheConnection;

impl<C: CacheConnection> CachedConnection<C> {
    /// With strict writes, refuses a write statement that is not a write helper's.
    fn check_strict(
        &mut self,
        sql_text: impl FnOnce(&mut C) -> QueryResult<String>,
    ) -> QueryResult<()> {
        if !self.strict_writes() || crate::plain::in_helper(&self.plain) {
            return Ok(());
        }
        let text = sql_text(&mut self.conn)?;
        match crate::plain::written_tables(&text, crate::deps::dialect_of(C::BACKEND)) {
            Some(tables) => Err(Error::PlainWrite {
                tables: tables.into_iter().collect(),
            }
            .into()),
            None => Ok(()),
        }
    }
}

impl<C: CacheConnection> SimpleConnection for CachedConnection<C> {
    fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        self.settle_plain_writes();
        self.check_strict(|_| Ok(query.to_string()))?;
        self.conn.batch_execute(query)
    }
}

impl<C: CacheConnection + ConnectionSealed> ConnectionSealed for CachedConnection<C> {}

/// The transaction manager of a [`CachedConnection`]: the wrapped connection's, plus the
/// cache's transaction levels (write helpers' invalidations wait for the outermost COMMIT).
#[derive(Debug)]
pub struct CachedTransactionManager<T>(std::marker::PhantomData<T>);

impl<C> TransactionManager<CachedConnection<C>> for CachedTransactionManager<C::TransactionManager>
where
    C: CacheConnection + ConnectionSealed,
{
    type TransactionStateData =
        <C::TransactionManager as TransactionManager<C>>::TransactionStateData;

    fn begin_transaction(conn: &mut CachedConnection<C>) -> QueryResult<()> {
        <C::TransactionManager as TransactionManager<C>>::begin_transaction(&mut conn.conn)?;
        conn.tx.begin();
        Ok(())
    }

    fn rollback_transaction(conn: &mut CachedConnection<C>) -> QueryResult<()> {
        conn.tx.rollback();
        <C::TransactionManager as TransactionManager<C>>::rollback_transaction(&mut conn.conn)
    }

    fn commit_transaction(conn: &mut CachedConnection<C>) -> QueryResult<()> {
        let outermost = conn.tx.depth() == 1;
        let committed =
            <C::TransactionManager as TransactionManager<C>>::commit_transaction(&mut conn.conn);
        conn.end_commit(outermost, &committed);
        committed
    }

    fn transaction_manager_status_mut(
        conn: &mut CachedConnection<C>,
    ) -> &mut TransactionManagerStatus {
        <C::TransactionManager as TransactionManager<C>>::transaction_manager_status_mut(
            &mut conn.conn,
        )
    }
}

impl<C> Connection for CachedConnection<C>
where
    C: CacheConnection + ConnectionSealed,
{
    type Backend = C::Backend;
    type TransactionManager = CachedTransactionManager<C::TransactionManager>;

    /// Connects and wraps the connection with the process caches
    /// ([`install`](crate::install), else `CACHE_URL`).
    fn establish(database_url: &str) -> ConnectionResult<Self> {
        let conn = C::establish(database_url)?;
        CachedConnection::new(conn)
            .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))
    }

    fn execute_returning_count<T>(&mut self, source: &T) -> QueryResult<usize>
    where
        T: QueryFragment<Self::Backend> + QueryId,
    {
        self.settle_plain_writes();
        self.check_strict(|_| C::render_sql(source))?;
        self.conn.execute_returning_count(source)
    }

    fn transaction_state(
        &mut self,
    ) -> &mut <Self::TransactionManager as TransactionManager<Self>>::TransactionStateData {
        self.conn.transaction_state()
    }

    fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        self.conn.instrumentation()
    }

    /// Sets your instrumentation; the cache's observer stays and forwards every event to it.
    fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
        self.set_user_instrumentation(Some(Box::new(instrumentation)));
    }

    fn set_prepared_statement_cache_size(&mut self, size: CacheSize) {
        self.conn.set_prepared_statement_cache_size(size)
    }
}

impl<C> LoadConnection<DefaultLoadingMode> for CachedConnection<C>
where
    C: CacheConnection + ConnectionSealed + LoadConnection<DefaultLoadingMode>,
{
    type Cursor<'conn, 'query> = <C as LoadConnection<DefaultLoadingMode>>::Cursor<'conn, 'query>;
    type Row<'conn, 'query> = <C as LoadConnection<DefaultLoadingMode>>::Row<'conn, 'query>;

    fn load<'conn, 'query, T>(
        &'conn mut self,
        source: T,
    ) -> QueryResult<Self::Cursor<'conn, 'query>>
    where
        T: Query + QueryFragment<Self::Backend> + QueryId + 'query,
        Self::Backend: QueryMetadata<T::SqlType>,
    {
        self.settle_plain_writes();
        self.check_strict(|_| C::render_sql(&source))?;
        self.conn.load(source)
    }
}

impl<Changes, Output, C> diesel::query_dsl::UpdateAndFetchResults<Changes, Output>
    for CachedConnection<C>
where
    C: CacheConnection
        + ConnectionSealed
        + diesel::query_dsl::UpdateAndFetchResults<Changes, Output>,
{
    /// Diesel's own `save_changes` on a cached connection: a plain write (its table is
    /// invalidated whole; refused with strict writes). Prefer
    /// [`CachedConnection::save_changes`], which invalidates precisely.
    fn update_and_fetch(&mut self, changeset: Changes) -> QueryResult<Output> {
        self.settle_plain_writes();
        if self.strict_writes() {
            return Err(Error::PlainWrite {
                tables: vec!["(save_changes)".to_string()],
            }
            .into());
        }
        self.conn.update_and_fetch(changeset)
    }
}

#[cfg(feature = "r2d2")]
impl<C> diesel::r2d2::R2D2Connection for CachedConnection<C>
where
    C: CacheConnection + ConnectionSealed + diesel::r2d2::R2D2Connection,
{
    fn ping(&mut self) -> QueryResult<()> {
        self.conn.ping()
    }

    fn is_broken(&mut self) -> bool {
        self.in_transaction() || self.conn.is_broken()
    }
}
