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
}

impl From<Error> for diesel::result::Error {
    fn from(e: Error) -> Self {
        diesel::result::Error::QueryBuilderError(Box::new(e))
    }
}
