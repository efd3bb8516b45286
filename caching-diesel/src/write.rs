//! Writes that invalidate. Diesel has no save signals, so writes that should invalidate go
//! through these helpers: each runs the statement on the wrapped connection, then invalidates
//! (immediately, or at the outermost COMMIT inside [`CachedConnection::transaction`]).
//!
//! | helper | rows it learns | works on |
//! |---|---|---|
//! | [`save_changes`](CachedConnection::save_changes) | the updated row (Diesel's `UpdateAndFetchResults`) | all |
//! | [`insert`](CachedConnection::insert) | rows from `RETURNING` | PostgreSQL, SQLite |
//! | [`update`](CachedConnection::update) / [`delete`](CachedConnection::delete) | rows from `RETURNING` | PostgreSQL, SQLite |
//! | [`insert_for`](CachedConnection::insert_for) | the models you pass (created) | all (MySQL inserts) |
//! | [`execute_for`](CachedConnection::execute_for) | the models you pass | all |
//! | [`execute_bulk`](CachedConnection::execute_bulk) | none: whole table | all (MySQL bulk writes) |
//!
//! Creating a row invalidates its foreign-key targets' lists (so cached lists that contained
//! a sibling are dropped) and, with invalidate-on-create `whole-model`, every query of the
//! model.

use caching_core::{InvalidateOnCreate, Invalidation};
use diesel::query_dsl::methods::ExecuteDsl;
use diesel::query_dsl::{LoadQuery, UpdateAndFetchResults};
use diesel::QueryResult;

use crate::connection::CachedConnection;
use crate::key::CacheConnection;
use crate::model::CachedModel;

/// The invalidation of written rows: each row, its foreign-key targets, its table.
pub fn rows_invalidation<'a, M: CachedModel + 'a>(
    rows: impl IntoIterator<Item = &'a M>,
) -> Invalidation {
    let mut inv = Invalidation::new();
    inv.table_written(M::TABLE);
    for row in rows {
        inv.object(row.object_key());
        for parent in row.foreign_keys() {
            inv.object(parent);
        }
    }
    inv
}

impl<C: CacheConnection> CachedConnection<C> {
    fn guard(&self) -> QueryResult<()> {
        if self.tx.depth() == 0 && self.in_foreign_transaction() {
            return Err(crate::Error::ForeignTransaction.into());
        }
        #[cfg(feature = "test-hooks")]
        self.cache().hook_step("write");
        Ok(())
    }

    fn after_write(&mut self, inv: Invalidation) -> QueryResult<()> {
        self.invalidate_with(inv).map_err(Into::into)
    }

    fn creation<M: CachedModel>(&self, rows: &[M]) -> Invalidation {
        let mut inv = rows_invalidation(rows.iter());
        let whole_model = self
            .caches
            .all()
            .iter()
            .any(|c| c.config().invalidate_on_create == InvalidateOnCreate::WholeModel);
        if whole_model && !rows.is_empty() {
            inv.whole_table(M::TABLE);
        }
        inv
    }

    /// Saves a changed model (Diesel's `save_changes`: update by primary key, then fetch) and
    /// invalidates the row and its foreign-key targets.
    pub fn save_changes<M, T>(&mut self, changes: T) -> QueryResult<M>
    where
        M: CachedModel,
        C: UpdateAndFetchResults<T, M>,
    {
        self.guard()?;
        let row = self.conn.update_and_fetch(changes)?;
        self.after_write(rows_invalidation([&row]))?;
        Ok(row)
    }

    /// Runs an `INSERT` (single, batch or upsert) that returns its rows, and invalidates
    /// them as created rows.
    ///
    /// ```
    /// use caching_diesel::prelude::*;
    /// use caching_diesel::{Cache, CacheSet, CachedConnection};
    /// diesel::table! { users (id) { id -> Integer, name -> Text } }
    /// #[derive(Queryable, Selectable, Identifiable, Insertable, Cached, serde::Serialize, serde::Deserialize)]
    /// #[diesel(table_name = users)]
    /// struct User { id: i32, name: String }
    /// let raw = SqliteConnection::establish(":memory:").unwrap();
    /// let mut conn = CachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
    /// diesel::sql_query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)").execute(&mut *conn).unwrap();
    /// let rows: Vec<User> = conn
    ///     .insert(diesel::insert_into(users::table).values(User { id: 1, name: "fliggy".into() }))
    ///     .unwrap();
    /// assert_eq!(rows[0].name, "fliggy");
    /// ```
    pub fn insert<'query, M, S>(&mut self, statement: S) -> QueryResult<Vec<M>>
    where
        M: CachedModel,
        S: LoadQuery<'query, C, M>,
    {
        self.guard()?;
        let rows: Vec<M> = statement.get_results(&mut self.conn)?;
        let inv = self.creation(&rows);
        self.after_write(inv)?;
        Ok(rows)
    }

    /// Runs an `INSERT` without `RETURNING` (MySQL) whose rows you know, and invalidates them
    /// as created rows.
    pub fn insert_for<M, S>(&mut self, rows: &[M], statement: S) -> QueryResult<usize>
    where
        M: CachedModel,
        S: ExecuteDsl<C>,
    {
        self.guard()?;
        let n = ExecuteDsl::execute(statement, &mut self.conn)?;
        let inv = self.creation(rows);
        self.after_write(inv)?;
        Ok(n)
    }

    /// Runs an `UPDATE ... RETURNING` (bulk or single) and invalidates the returned rows.
    pub fn update<'query, M, S>(&mut self, statement: S) -> QueryResult<Vec<M>>
    where
        M: CachedModel,
        S: LoadQuery<'query, C, M>,
    {
        self.guard()?;
        let rows: Vec<M> = statement.get_results(&mut self.conn)?;
        self.after_write(rows_invalidation(rows.iter()))?;
        Ok(rows)
    }

    /// Runs a `DELETE ... RETURNING` (bulk or single) and invalidates the deleted rows.
    pub fn delete<'query, M, S>(&mut self, statement: S) -> QueryResult<Vec<M>>
    where
        M: CachedModel,
        S: LoadQuery<'query, C, M>,
    {
        self.update(statement)
    }

    /// Runs any write statement and invalidates the given rows (use it when you know the rows
    /// a statement writes: deleting or updating a loaded object on any backend).
    pub fn execute_for<M, S>(&mut self, rows: &[M], statement: S) -> QueryResult<usize>
    where
        M: CachedModel,
        S: ExecuteDsl<C>,
    {
        self.guard()?;
        let n = ExecuteDsl::execute(statement, &mut self.conn)?;
        self.after_write(rows_invalidation(rows.iter()))?;
        Ok(n)
    }

    /// Runs a write whose rows are unknown (bulk statements on MySQL, raw SQL) and invalidates
    /// every cached query of model `M` (bumps its table version).
    pub fn execute_bulk<M, S>(&mut self, statement: S) -> QueryResult<usize>
    where
        M: CachedModel,
        S: ExecuteDsl<C>,
    {
        self.guard()?;
        let n = ExecuteDsl::execute(statement, &mut self.conn)?;
        let mut inv = Invalidation::new();
        inv.whole_table(M::TABLE);
        self.after_write(inv)?;
        Ok(n)
    }

    /// Invalidates rows written outside the helpers.
    pub fn invalidate<M: CachedModel>(&mut self, rows: &[M]) -> QueryResult<()> {
        self.after_write(rows_invalidation(rows.iter()))
    }

    /// Invalidates every cached query of model `M` (for writes made outside the library).
    pub fn invalidate_all<M: CachedModel>(&mut self) -> QueryResult<()> {
        let mut inv = Invalidation::new();
        inv.whole_table(M::TABLE);
        self.after_write(inv)
    }
}
