//! Transaction-aware invalidation: writes inside a transaction queue their invalidation; the
//! outermost successful COMMIT runs it, a ROLLBACK drops it, and a savepoint rollback drops
//! only its own part. Reads inside a transaction that has written a table bypass the cache for
//! that table (the transaction sees its own writes), and no read inside a transaction fills
//! the cache (its snapshot may be older than what the cache protocol checks).
//!
//! The transaction entry point is [`CachedConnection::transaction`]: it hands the closure the
//! cached connection, so cached reads and write helpers inside it know the transaction. A
//! transaction begun behind the cache's back (through the wrapped connection) is detected
//! through Diesel's instrumentation events: cached reads then bypass the cache, and write
//! helpers refuse to run ([`Error::ForeignTransaction`](crate::Error::ForeignTransaction)).

use std::collections::BTreeSet;

use caching_core::Invalidation;
use diesel::connection::TransactionManager;
use diesel::Connection;

use crate::connection::CachedConnection;
use crate::key::CacheConnection;

#[derive(Debug, Default)]
struct Level {
    pending: Invalidation,
    dirty: BTreeSet<String>,
}

/// Pending invalidations and dirtied tables, one level per open transaction or savepoint.
#[derive(Debug, Default)]
pub(crate) struct TxState {
    levels: Vec<Level>,
}

impl TxState {
    pub(crate) fn depth(&self) -> usize {
        self.levels.len()
    }

    pub(crate) fn begin(&mut self) {
        self.levels.push(Level::default());
    }

    pub(crate) fn is_dirty(&self, table: &str) -> bool {
        self.levels.iter().any(|l| l.dirty.contains(table))
    }

    pub(crate) fn queue(&mut self, inv: Invalidation) {
        if let Some(level) = self.levels.last_mut() {
            level.dirty.extend(inv.tables().map(str::to_string));
            level.pending.merge(inv);
        }
    }

    /// Closes a level that committed; returns the invalidation to run when it was the
    /// outermost one.
    pub(crate) fn commit(&mut self) -> Option<Invalidation> {
        let level = self.levels.pop()?;
        match self.levels.last_mut() {
            Some(parent) => {
                parent.dirty.extend(level.dirty);
                parent.pending.merge(level.pending);
                None
            }
            None => Some(level.pending),
        }
    }

    /// What the outermost COMMIT would run now: every level's queued invalidations, merged
    /// (the async transaction owes them from the moment its COMMIT is sent).
    #[cfg(feature = "async")]
    pub(crate) fn outermost_pending(&self) -> Invalidation {
        let mut inv = Invalidation::new();
        for level in &self.levels {
            inv.merge(level.pending.clone());
        }
        inv
    }

    /// Closes a level that rolled back: its invalidations are dropped.
    pub(crate) fn rollback(&mut self) {
        self.levels.pop();
    }
}

/// Whether a statement (or COMMIT) that failed with `e` certainly changed nothing: the
/// database answered it with an error (a constraint, a serialization failure, a refused
/// COMMIT). Any other error (the connection lost mid-statement) leaves the outcome unknown:
/// whatever it may have written is still owed its invalidation.
pub(crate) fn wrote_nothing(e: &diesel::result::Error) -> bool {
    matches!(e, diesel::result::Error::DatabaseError(..))
}

/// Whether a COMMIT that ended with `result` delivers its level's invalidations: committed,
/// yes; refused by the database at the outermost level (nothing committed), no; anything else
/// (an unknown outcome, or a failed savepoint release whose writes stay in the outer
/// transaction), yes: invalidating too much is harmless, too little is not. Blocking and
/// async transactions both decide by it.
pub(crate) fn commit_delivers(outermost: bool, result: &diesel::QueryResult<()>) -> bool {
    match result {
        Ok(()) => true,
        Err(e) => !(outermost && wrote_nothing(e)),
    }
}

impl<C: CacheConnection> CachedConnection<C> {
    /// Closes the transaction level whose COMMIT ended with `result`: delivers its
    /// invalidations, or drops them ([`commit_delivers`]).
    pub(crate) fn end_commit(&mut self, outermost: bool, result: &diesel::QueryResult<()>) {
        if commit_delivers(outermost, result) {
            if let Some(inv) = self.tx.commit() {
                self.run_invalidation(&inv);
            }
        } else {
            self.tx.rollback();
        }
    }

    /// Runs `f` in a transaction (a savepoint when nested), like Diesel's
    /// `Connection::transaction`, deferring the invalidations of writes made through `f`'s
    /// connection until the outermost COMMIT succeeds.
    ///
    /// ```
    /// use caching_diesel::{Cache, CacheSet, CachedConnection};
    /// use diesel::prelude::*;
    /// let raw = SqliteConnection::establish(":memory:").unwrap();
    /// let mut conn = CachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
    /// let n = conn
    ///     .transaction(|conn| {
    ///         assert!(conn.in_transaction());
    ///         diesel::sql_query("SELECT 1").execute(&mut **conn)
    ///     })
    ///     .unwrap();
    /// assert_eq!(n, 0);
    /// assert!(!conn.in_transaction());
    /// ```
    pub fn transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        <C as Connection>::TransactionManager::begin_transaction(&mut self.conn)?;
        self.tx.begin();
        match f(self) {
            Ok(value) => {
                let outermost = self.tx.depth() == 1;
                let committed =
                    <C as Connection>::TransactionManager::commit_transaction(&mut self.conn);
                self.end_commit(outermost, &committed);
                committed.map_err(E::from)?;
                Ok(value)
            }
            Err(user_error) => {
                self.tx.rollback();
                match <C as Connection>::TransactionManager::rollback_transaction(&mut self.conn) {
                    Ok(()) | Err(diesel::result::Error::BrokenTransactionManager) => {
                        Err(user_error)
                    }
                    Err(rollback_error) => Err(rollback_error.into()),
                }
            }
        }
    }

    /// Begins a transaction that is never committed (Diesel's test transaction); its writes'
    /// invalidations are dropped with it, and nothing is filled while it is open.
    pub fn begin_test_transaction(&mut self) -> diesel::QueryResult<()> {
        self.conn.begin_test_transaction()?;
        self.tx.begin();
        Ok(())
    }
}
