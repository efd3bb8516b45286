//! Errors of the Diesel adapter. Query paths return Diesel's `QueryResult`; these errors reach
//! users at set-up time, or wrapped in `diesel::result::Error::QueryBuilderError`.

/// An error of the Diesel adapter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The cache configuration or backend failed.
    #[error(transparent)]
    Cache(#[from] caching_core::Error),
    /// Connecting to the database failed.
    #[error(transparent)]
    Connection(#[from] diesel::ConnectionError),
    /// [`install`](crate::install) was called after the process caches were set.
    #[error("the process caches are already installed (install them once, at start-up)")]
    AlreadyInstalled,
    /// A query named a cache the connection does not have.
    #[error("no cache named {0:?} on this connection (add it with CacheSet::with)")]
    UnknownCache(String),
    /// A write helper ran while a transaction not begun through
    /// [`CachedConnection::transaction`](crate::CachedConnection::transaction) was open: its
    /// invalidation could not wait for the COMMIT.
    #[error("a write helper ran inside a transaction not begun with CachedConnection::transaction; begin transactions through the cached connection so invalidation waits for COMMIT")]
    ForeignTransaction,
    /// Strict writes are on ([`CacheConfig::strict_writes`](caching_core::CacheConfig::strict_writes))
    /// and a write statement was run on the cached connection outside the write helpers.
    #[error("strict writes: a write to {tables:?} outside the write helpers was refused (use CachedConnection::insert/update/delete/save_changes/execute_for, or turn strict_writes off)")]
    PlainWrite {
        /// The tables the statement writes.
        tables: Vec<String>,
    },
    /// [`CachedConnection::insert`](crate::CachedConnection::insert) on MySQL could not read
    /// the statement's rows back; nothing was written (the statement ran in a transaction, or
    /// savepoint, that was rolled back, or did not run).
    #[error("cannot read the rows of this INSERT into `{table}` back on MySQL: {refusal}; use CachedConnection::insert_for(&rows, statement) with the rows you insert")]
    InsertRowsUnknown {
        /// The table inserted into.
        table: String,
        /// Why.
        refusal: InsertRefusal,
    },
}

/// Why [`CachedConnection::insert`](crate::CachedConnection::insert) cannot read an
/// `INSERT`'s rows back on MySQL (which has no `RETURNING`): it reads them by the ids
/// `LAST_INSERT_ID()` tells, which only an auto-increment primary key the statement leaves
/// to the database gives. Use
/// [`insert_for`](crate::CachedConnection::insert_for) with the rows you insert instead.
///
/// ```
/// use caching_diesel::{Error, InsertRefusal};
/// let e = Error::InsertRowsUnknown { table: "pairs".into(), refusal: InsertRefusal::CompositeKey };
/// assert_eq!(
///     e.to_string(),
///     "cannot read the rows of this INSERT into `pairs` back on MySQL: the primary key has \
///      several columns; use CachedConnection::insert_for(&rows, statement) with the rows you insert"
/// );
/// // Write helpers return it inside Diesel's error:
/// let err: diesel::result::Error = e.into();
/// let diesel::result::Error::QueryBuilderError(inner) = &err else { unreachable!() };
/// assert!(matches!(
///     inner.downcast_ref::<Error>(),
///     Some(Error::InsertRowsUnknown { refusal: InsertRefusal::CompositeKey, .. })
/// ));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InsertRefusal {
    /// The statement gives the primary key's values (`LAST_INSERT_ID()` tells only
    /// generated ones).
    ExplicitKey {
        /// The primary key column.
        column: String,
    },
    /// The table's primary key has several columns.
    CompositeKey,
    /// The table's primary key is not an auto-increment integer column (or it has none).
    NotAutoIncrement,
    /// `REPLACE`, `INSERT IGNORE` or `ON DUPLICATE KEY UPDATE`: rows may be replaced,
    /// skipped or updated instead of inserted.
    Upsert,
    /// Not an `INSERT .. VALUES` (`INSERT .. SELECT`: its rows' ids need not be
    /// consecutive), or SQL that could not be read.
    NotValues,
    /// The rows read back by id were not the rows inserted (the statement was rolled back).
    RowsNotFound {
        /// Rows the statement inserted.
        inserted: usize,
        /// Rows found with the ids `LAST_INSERT_ID()` gave.
        found: usize,
    },
}

impl std::fmt::Display for InsertRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InsertRefusal::ExplicitKey { column } => {
                write!(
                    f,
                    "the statement gives the primary key `{column}` its values"
                )
            }
            InsertRefusal::CompositeKey => f.write_str("the primary key has several columns"),
            InsertRefusal::NotAutoIncrement => {
                f.write_str("the primary key is not an AUTO_INCREMENT integer column")
            }
            InsertRefusal::Upsert => f.write_str(
                "REPLACE, INSERT IGNORE and ON DUPLICATE KEY UPDATE may not insert every row",
            ),
            InsertRefusal::NotValues => {
                f.write_str("only INSERT .. VALUES statements are read back by id")
            }
            InsertRefusal::RowsNotFound { inserted, found } => write!(
                f,
                "{inserted} rows were inserted but {found} were found by id (rolled back)"
            ),
        }
    }
}

impl From<Error> for diesel::result::Error {
    fn from(e: Error) -> Self {
        diesel::result::Error::QueryBuilderError(Box::new(e))
    }
}
