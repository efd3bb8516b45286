//! Writes that invalidate. Diesel has no save signals, so writes that should invalidate go
//! through these helpers: each runs the statement on the wrapped connection, then invalidates
//! (immediately, or at the outermost COMMIT inside [`CachedConnection::transaction`]).
//!
//! | helper | rows it learns | works on |
//! |---|---|---|
//! | [`save_changes`](CachedConnection::save_changes) | the updated row (Diesel's `UpdateAndFetchResults`) | all |
//! | [`insert`](CachedConnection::insert) | rows from `RETURNING` (upserts too); on MySQL, read back by `LAST_INSERT_ID()` | all (MySQL: auto-increment keys) |
//! | [`update`](CachedConnection::update) / [`delete`](CachedConnection::delete) | rows from `RETURNING` | PostgreSQL, SQLite |
//! | [`insert_for`](CachedConnection::insert_for) | the models you pass (created) | all (MySQL inserts `insert` cannot read back) |
//! | [`execute_for`](CachedConnection::execute_for) | the models you pass | all |
//! | [`execute_bulk`](CachedConnection::execute_bulk) | none: whole table | all (MySQL bulk writes) |
//!
//! Every helper invalidates by the written rows' values (see `docs/src/invalidation.md`):
//! each row's flush list (the queries that contained it) and children list (the queries that
//! hold a row pointing at it), its foreign-key targets' own lists (not their children lists:
//! the queries of the row's siblings stay),
//! the predicate lists of its comparable column values (the queries it enters or matched)
//! and its table's write generation (the queries with no usable condition). Updates whose
//! old values are unknown (`save_changes`, `update`, `invalidate`, upserts) also walk the
//! table's exit list (counts and aggregates the rows may have left). With invalidate-on-create
//! `whole-model`, a create also invalidates every query of the model. Writes made without the
//! helpers on the cached connection are seen and invalidated at table level
//! ([`crate::plain`]).

use caching_core::{InvalidateOnCreate, Invalidation};

use crate::query::first_row;
use crate::sql::Upsert;
use diesel::query_dsl::methods::ExecuteDsl;
use diesel::query_dsl::{LoadQuery, UpdateAndFetchResults};
use diesel::QueryResult;

use diesel::query_builder::QueryFragment;

use crate::columns::{self, ModelInfo};
use crate::connection::CachedConnection;
use crate::key::CacheConnection;
use crate::model::CachedModel;

/// The invalidation of written rows, given the values they have now (or had, for deleted
/// rows): each row's flush list and children list ([`Invalidation::object`]), its
/// foreign-key targets' own lists ([`Invalidation::parent`]: the queries that hold them, not
/// those that hold only their other children), the predicate lists of its comparable column
/// values (the cached queries the row is in or can enter now), and its table's write
/// generation. If `M` lacks a comparable column another model of the table declares, the
/// whole table is invalidated (the predicate lists of that column cannot be named).
///
/// ```
/// use caching_diesel::prelude::*;
/// diesel::table! { users (id) { id -> Integer, name -> Text } }
/// #[derive(Queryable, Identifiable, Cached, serde::Serialize, serde::Deserialize)]
/// #[diesel(table_name = users)]
/// struct User { id: i32, name: String }
/// let inv = caching_diesel::rows_invalidation([&User { id: 1, name: "fliggy".into() }]);
/// assert_eq!(inv.objects().count(), 1);
/// assert_eq!(inv.parents().count(), 0);
/// assert_eq!(inv.tables().collect::<Vec<_>>(), ["users"]);
/// ```
pub fn rows_invalidation<'a, M: CachedModel + 'a>(
    rows: impl IntoIterator<Item = &'a M>,
) -> Invalidation {
    let info = ModelInfo::of::<M>();
    columns::register(&info);
    let mut inv = Invalidation::new();
    inv.table_written(M::TABLE);
    inv.table_written(M::SQL_TABLE);
    if !columns::covers_table(M::SQL_TABLE, M::COLUMNS) {
        inv.whole_table(M::SQL_TABLE);
    }
    let mut values = Vec::new();
    for row in rows {
        inv.object(row.object_key());
        for parent in row.foreign_keys() {
            inv.parent(parent);
        }
        values.clear();
        row.predicate_values(&mut values);
        for (column, value) in values.drain(..) {
            inv.predicate(M::SQL_TABLE, column, value);
        }
    }
    inv
}

/// The invalidation of rows updated in place: their new values are known, their old ones
/// are not (a row may have left a count or an aggregate it is not part of).
pub(crate) fn updated<'a, M: CachedModel + 'a>(
    rows: impl IntoIterator<Item = &'a M>,
) -> Invalidation {
    let mut inv = rows_invalidation(rows);
    inv.old_values_unknown(M::SQL_TABLE);
    inv
}

/// Whole-table invalidation of `M` (model name and SQL table).
pub(crate) fn whole<M: CachedModel>() -> Invalidation {
    let mut inv = Invalidation::new();
    inv.whole_table(M::TABLE);
    inv.whole_table(M::SQL_TABLE);
    inv
}

/// An `INSERT` whose rows [`CachedConnection::insert`] can get back on connection `C`:
///
/// - SQLite and PostgreSQL: any statement Diesel loads `M` rows from, through `RETURNING`
///   (a bare `insert_into(..).values(..)` returns the table's columns, upserts too);
/// - MySQL, which has no `RETURNING`: `insert_into(table).values(..)` (one row or a batch)
///   whose rows `M` loads from the table's columns. The rows are read back by id, which
///   needs a table whose primary key is one AUTO_INCREMENT integer column that the statement
///   leaves to the database; anything else is refused at run time with
///   [`Error::InsertRowsUnknown`](crate::Error::InsertRowsUnknown) (use
///   [`insert_for`](CachedConnection::insert_for) there).
///
/// Implemented by the library for those statements; you do not implement it. Code generic
/// over the database names it as the bound of the statement:
///
/// ```
/// use caching_diesel::prelude::*;
/// use caching_diesel::{Cache, CacheConnection, CacheSet, CachedConnection, InsertRows};
/// diesel::table! { users (id) { id -> Integer, name -> Text } }
/// #[derive(Queryable, Selectable, Identifiable, Cached, serde::Serialize, serde::Deserialize)]
/// #[diesel(table_name = users)]
/// struct User { id: i32, name: String }
///
/// /// Inserts a user with `statement`, on any database; the database picks the id.
/// fn create<'q, C, S>(conn: &mut CachedConnection<C>, statement: S) -> QueryResult<User>
/// where
///     C: CacheConnection,
///     S: InsertRows<'q, C, User>,
/// {
///     conn.insert_one(statement)
/// }
///
/// let raw = SqliteConnection::establish(":memory:").unwrap();
/// let mut conn = CachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
/// diesel::sql_query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)").execute(&mut conn).unwrap();
/// let u = create(&mut conn, diesel::insert_into(users::table).values(users::name.eq("fliggy"))).unwrap();
/// assert_eq!((u.id, u.name.as_str()), (1, "fliggy"));
/// ```
pub trait InsertRows<'query, C: CacheConnection, M>: QueryFragment<C::Backend> + Sized {
    /// Runs the statement (whose SQL is `sql`) and returns the rows it inserted.
    #[doc(hidden)]
    fn insert_rows(self, conn: &mut C, sql: &str) -> QueryResult<Vec<M>>;
}

/// `RETURNING`: the statement loads its rows itself.
macro_rules! returning_inserts {
    ($conn:ty) => {
        impl<'query, S, M> InsertRows<'query, $conn, M> for S
        where
            S: LoadQuery<'query, $conn, M> + QueryFragment<<$conn as diesel::Connection>::Backend>,
        {
            fn insert_rows(self, conn: &mut $conn, _sql: &str) -> QueryResult<Vec<M>> {
                self.get_results(conn)
            }
        }
    };
}

#[cfg(feature = "sqlite")]
returning_inserts!(diesel::SqliteConnection);
#[cfg(feature = "postgres")]
returning_inserts!(diesel::PgConnection);

/// The condition on the ids of the rows read back on MySQL, and their order.
#[cfg(feature = "mysql")]
type IdsCondition = diesel::expression::SqlLiteral<diesel::sql_types::Bool>;
#[cfg(feature = "mysql")]
type IdsOrder = diesel::expression::SqlLiteral<diesel::sql_types::BigInt>;

/// MySQL: the statement runs, then its rows are read back by the ids `LAST_INSERT_ID()`
/// gives, in one transaction (see `mysql_insert`).
#[cfg(feature = "mysql")]
impl<'query, T, U, Op, M> InsertRows<'query, diesel::MysqlConnection, M>
    for diesel::query_builder::InsertStatement<T, U, Op>
where
    T: diesel::Table + Clone + diesel::query_dsl::methods::FilterDsl<IdsCondition>,
    U: diesel::insertable::CanInsertInSingleQuery<diesel::mysql::Mysql>,
    Self: ExecuteDsl<diesel::MysqlConnection> + QueryFragment<diesel::mysql::Mysql>,
    diesel::dsl::Filter<T, IdsCondition>: diesel::query_dsl::methods::OrderDsl<IdsOrder>,
    diesel::dsl::Order<diesel::dsl::Filter<T, IdsCondition>, IdsOrder>:
        LoadQuery<'query, diesel::MysqlConnection, M>,
{
    fn insert_rows(self, conn: &mut diesel::MysqlConnection, sql: &str) -> QueryResult<Vec<M>> {
        use diesel::query_dsl::methods::OrderDsl;
        use diesel::RunQueryDsl;
        let table = self.target.clone();
        let expected = self.records.rows_to_insert();
        crate::mysql_insert::insert_and_read(
            conn,
            sql,
            expected,
            |c| ExecuteDsl::execute(self, c),
            |c, ids, pk| table.filter(ids).order(pk).load(c),
        )
    }
}

/// The invalidation of inserted rows, for a connection with `caches` (see
/// `CachedConnection::creation`; the async connection shares it).
pub(crate) fn creation_of<M: CachedModel>(
    caches: &crate::CacheSet,
    rows: &[M],
    sql: &str,
    returned: bool,
) -> Invalidation {
    let mut inv = rows_invalidation(rows.iter());
    match (crate::sql::upsert_kind(sql), returned) {
        (Upsert::No, _) => {}
        (Upsert::OnConflict, true) => {
            inv.old_values_unknown(M::SQL_TABLE);
        }
        _ => {
            inv.merge(whole::<M>());
        }
    }
    let whole_model = caches
        .all()
        .iter()
        .any(|c| c.config().invalidate_on_create == InvalidateOnCreate::WholeModel);
    if whole_model && !rows.is_empty() {
        inv.merge(whole::<M>());
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
        let inv = self.with_helper_tables(inv);
        self.invalidate_with(inv).map_err(Into::into)
    }

    /// The invalidation of inserted rows (`returned`: the rows come from `RETURNING`, not
    /// from the caller). An `ON CONFLICT` upsert whose rows are returned also reaches the
    /// counts and aggregates the rows it updated may have left; any other upsert (`REPLACE`,
    /// `ON DUPLICATE KEY UPDATE`, or rows the caller only claims) may change rows nobody
    /// named: the whole table.
    fn creation<M: CachedModel>(&self, rows: &[M], sql: &str, returned: bool) -> Invalidation {
        creation_of(&self.caches, rows, sql, returned)
    }

    /// Saves a changed model (Diesel's `save_changes`: update by primary key, then fetch) and
    /// invalidates the row and its foreign-key targets.
    pub fn save_changes<M, T>(&mut self, changes: T) -> QueryResult<M>
    where
        M: CachedModel,
        C: UpdateAndFetchResults<T, M>,
    {
        self.guard()?;
        let row = self.helper_write(|c| c.update_and_fetch(changes))?;
        self.after_write(updated([&row]))?;
        Ok(row)
    }

    /// Runs an `INSERT` (single, batch or upsert) and invalidates the rows it inserted as
    /// created rows, which it returns. On SQLite and PostgreSQL they come from `RETURNING`;
    /// on MySQL they are read back by id, in the same transaction (a savepoint inside an open
    /// one): for an `insert_into(table).values(..)` into a table whose primary key is one
    /// AUTO_INCREMENT integer column the statement leaves to the database. Anything else is
    /// refused on MySQL, with nothing written, by
    /// `Err(QueryBuilderError(`[`Error::InsertRowsUnknown`](crate::Error::InsertRowsUnknown)`))`:
    /// an upsert, `INSERT .. SELECT`, a composite or non-auto-increment key, ids given by the
    /// statement (use [`insert_for`](Self::insert_for) there). See [`InsertRows`].
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
        S: InsertRows<'query, C, M>,
    {
        self.guard()?;
        let sql = C::render_sql(&statement)?;
        let rows: Vec<M> = self.helper_write(|c| statement.insert_rows(c, &sql))?;
        let inv = self.creation(&rows, &sql, true);
        self.after_write(inv)?;
        Ok(rows)
    }

    /// Runs an `INSERT` whose rows you know, and invalidates them as created rows: for
    /// inserts [`insert`](Self::insert) cannot read back on MySQL (ids given by the statement,
    /// composite or non-integer keys, `REPLACE`, `INSERT IGNORE`, ...). Returns the number of
    /// rows affected.
    pub fn insert_for<M, S>(&mut self, rows: &[M], statement: S) -> QueryResult<usize>
    where
        M: CachedModel,
        S: ExecuteDsl<C> + QueryFragment<C::Backend>,
    {
        self.guard()?;
        let sql = C::render_sql(&statement)?;
        let n = self.helper_write(|c| ExecuteDsl::execute(statement, c))?;
        let inv = self.creation(rows, &sql, false);
        self.after_write(inv)?;
        Ok(n)
    }

    /// Runs an `UPDATE ... RETURNING` (bulk or single) and invalidates the returned rows:
    /// the queries they are in, the queries their new values enter, and the counts and
    /// aggregates over their table (their old values are unknown).
    pub fn update<'query, M, S>(&mut self, statement: S) -> QueryResult<Vec<M>>
    where
        M: CachedModel,
        S: LoadQuery<'query, C, M>,
    {
        self.guard()?;
        let rows: Vec<M> = self.helper_write(|c| statement.get_results(c))?;
        self.after_write(updated(rows.iter()))?;
        Ok(rows)
    }

    /// Runs a `DELETE ... RETURNING` (bulk or single) and invalidates the deleted rows: the
    /// queries they were in, and those whose conditions their values matched (counts).
    pub fn delete<'query, M, S>(&mut self, statement: S) -> QueryResult<Vec<M>>
    where
        M: CachedModel,
        S: LoadQuery<'query, C, M>,
    {
        self.guard()?;
        let rows: Vec<M> = self.helper_write(|c| statement.get_results(c))?;
        self.after_write(rows_invalidation(rows.iter()))?;
        Ok(rows)
    }

    /// [`insert`](Self::insert) of one row: the inserted row (`Err(NotFound)` if the
    /// statement returned none, e.g. `ON CONFLICT DO NOTHING`; the first if it returned
    /// several, all of which are invalidated).
    ///
    /// ```
    /// use caching_diesel::prelude::*;
    /// use caching_diesel::{Cache, CacheSet, CachedConnection};
    /// diesel::table! { users (id) { id -> Integer, name -> Text } }
    /// #[derive(Queryable, Selectable, Insertable, Identifiable, AsChangeset, Cached, serde::Serialize, serde::Deserialize)]
    /// #[diesel(table_name = users)]
    /// struct User { id: i32, name: String }
    /// let raw = SqliteConnection::establish(":memory:").unwrap();
    /// let mut conn = CachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
    /// diesel::sql_query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)").execute(&mut conn).unwrap();
    /// let u: User = conn
    ///     .insert_one(diesel::insert_into(users::table).values(User { id: 1, name: "fliggy".into() }))
    ///     .unwrap();
    /// let u: User = conn
    ///     .update_one(diesel::update(users::table.find(u.id)).set(users::name.eq("clouseroo")))
    ///     .unwrap();
    /// assert_eq!(u.name, "clouseroo");
    /// let gone: User = conn.delete_one(diesel::delete(users::table.find(1))).unwrap();
    /// assert_eq!(gone.id, 1);
    /// assert!(conn.delete_one::<User, _>(diesel::delete(users::table.find(1))).is_err());
    /// ```
    pub fn insert_one<'query, M, S>(&mut self, statement: S) -> QueryResult<M>
    where
        M: CachedModel,
        S: InsertRows<'query, C, M>,
    {
        first_row(self.insert(statement)?)
    }

    /// [`update`](Self::update) of one row: the updated row (`Err(NotFound)` if none matched;
    /// the first if several did, all of which are invalidated).
    pub fn update_one<'query, M, S>(&mut self, statement: S) -> QueryResult<M>
    where
        M: CachedModel,
        S: LoadQuery<'query, C, M>,
    {
        first_row(self.update(statement)?)
    }

    /// [`delete`](Self::delete) of one row: the deleted row (`Err(NotFound)` if none matched;
    /// the first if several did, all of which are invalidated).
    pub fn delete_one<'query, M, S>(&mut self, statement: S) -> QueryResult<M>
    where
        M: CachedModel,
        S: LoadQuery<'query, C, M>,
    {
        first_row(self.delete(statement)?)
    }

    /// Runs any write statement and invalidates the given rows (use it when you know the rows
    /// a statement writes, on any backend): for a `DELETE` or an `INSERT`, `rows` are the
    /// rows deleted or inserted and the invalidation is precise; for an `UPDATE` (or any
    /// other statement) the new values are unknown, so every query of `M`'s table is
    /// invalidated as well.
    pub fn execute_for<M, S>(&mut self, rows: &[M], statement: S) -> QueryResult<usize>
    where
        M: CachedModel,
        S: ExecuteDsl<C> + QueryFragment<C::Backend>,
    {
        self.guard()?;
        let sql = C::render_sql(&statement)?;
        let n = self.helper_write(|c| ExecuteDsl::execute(statement, c))?;
        let first = crate::sql::first_keyword(&sql);
        let inv = match first.as_str() {
            "delete" => rows_invalidation(rows.iter()),
            "insert" | "replace" => self.creation(rows, &sql, false),
            _ => {
                let mut inv = updated(rows.iter());
                inv.merge(whole::<M>());
                inv
            }
        };
        self.after_write(inv)?;
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
        let n = self.helper_write(|c| ExecuteDsl::execute(statement, c))?;
        self.after_write(whole::<M>())?;
        Ok(n)
    }

    /// Invalidates rows written outside the helpers, given their current values (for
    /// deleted rows, their last values): the queries they are in or can enter now, and the
    /// counts and aggregates over their table.
    pub fn invalidate<M: CachedModel>(&mut self, rows: &[M]) -> QueryResult<()> {
        self.after_write(updated(rows.iter()))
    }

    /// Invalidates every cached query of model `M` (for writes made outside the library).
    pub fn invalidate_all<M: CachedModel>(&mut self) -> QueryResult<()> {
        self.after_write(whole::<M>())
    }
}
