//! Query → key: the SQL text and the type-tagged bind values of a Diesel query, per backend.
//!
//! Diesel's `debug_query` is not injective (an `Integer` 1 and a `BigInt` 1 print alike), so
//! the key uses the backend's own bind collector, whose `Debug` output carries each bind's
//! SQL type (SQLite: value variant and `SqliteType`; PostgreSQL: type OIDs and raw bytes;
//! MySQL: type and raw bytes). That output is not a stable Diesel API, so the Diesel version
//! is part of every key ([`DIESEL_KEY_TAG`]): a Diesel upgrade starts from a cold cache
//! instead of risking a mismatch. On SQLite, a borrowed and an owned string print differently:
//! the same query may get two keys, which is harmless.

use diesel::connection::LoadConnection;
use diesel::query_builder::{QueryBuilder, QueryFragment};
use diesel::{Connection, QueryResult};

use crate::model::CacheableRow;
use caching_core::QueryKeyBuilder;

/// The Diesel release family whose bind `Debug` output the keys are built from.
pub const DIESEL_KEY_TAG: &str = "diesel-2.3";

/// The SQL text and bind values of a query, as the key sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryIdentity {
    /// SQL text with placeholders.
    pub sql: String,
    /// Type-tagged bind values.
    pub binds: String,
    /// Each bind's value where the cache can compare it (predicate dependencies).
    pub(crate) values: Vec<BindValue>,
}

/// A bind value as predicate dependencies see it: decoded from the bind collector by its SQL
/// type. Only integers, booleans and text are decoded; anything else cannot be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BindValue {
    Int(i64),
    Text(String),
    Other,
}

/// A Diesel connection whose queries can be keyed. Implemented for `SqliteConnection`,
/// `PgConnection` and `MysqlConnection` (each behind its cargo feature).
pub trait CacheConnection: Connection + LoadConnection + Send + 'static {
    /// Backend name, part of every key.
    const BACKEND: &'static str;

    /// The SQL text and type-tagged binds of `query`.
    fn query_identity<Q>(&mut self, query: &Q) -> QueryResult<QueryIdentity>
    where
        Q: QueryFragment<Self::Backend> + ?Sized;
}

#[cfg(feature = "sqlite")]
impl CacheConnection for diesel::sqlite::SqliteConnection {
    const BACKEND: &'static str = "sqlite";

    fn query_identity<Q>(&mut self, query: &Q) -> QueryResult<QueryIdentity>
    where
        Q: QueryFragment<Self::Backend> + ?Sized,
    {
        use diesel::sqlite::{Sqlite, SqliteQueryBuilder};
        let mut qb = SqliteQueryBuilder::new();
        query.to_sql(&mut qb, &Sqlite)?;
        let mut binds = <Sqlite as diesel::backend::Backend>::BindCollector::default();
        query.collect_binds(&mut binds, &mut (), &Sqlite)?;
        let binds = format!("{binds:?}");
        Ok(QueryIdentity {
            sql: qb.finish(),
            values: crate::binds::sqlite_values(&binds),
            binds,
        })
    }
}

#[cfg(feature = "postgres")]
impl CacheConnection for diesel::pg::PgConnection {
    const BACKEND: &'static str = "postgres";

    fn query_identity<Q>(&mut self, query: &Q) -> QueryResult<QueryIdentity>
    where
        Q: QueryFragment<Self::Backend> + ?Sized,
    {
        use diesel::pg::{Pg, PgMetadataLookup, PgQueryBuilder};
        use diesel::query_builder::bind_collector::RawBytesBindCollector;
        let mut qb = PgQueryBuilder::new();
        query.to_sql(&mut qb, &Pg)?;
        let mut binds = RawBytesBindCollector::<Pg>::new();
        query.collect_binds(&mut binds, self as &mut dyn PgMetadataLookup, &Pg)?;
        Ok(QueryIdentity {
            sql: qb.finish(),
            values: crate::binds::pg_values(&binds),
            binds: format!("{binds:?}"),
        })
    }
}

#[cfg(feature = "mysql")]
impl CacheConnection for diesel::mysql::MysqlConnection {
    const BACKEND: &'static str = "mysql";

    fn query_identity<Q>(&mut self, query: &Q) -> QueryResult<QueryIdentity>
    where
        Q: QueryFragment<Self::Backend> + ?Sized,
    {
        use diesel::mysql::{Mysql, MysqlQueryBuilder};
        use diesel::query_builder::bind_collector::RawBytesBindCollector;
        let mut qb = MysqlQueryBuilder::new();
        query.to_sql(&mut qb, &Mysql)?;
        let mut binds = RawBytesBindCollector::<Mysql>::new();
        query.collect_binds(&mut binds, &mut (), &Mysql)?;
        Ok(QueryIdentity {
            sql: qb.finish(),
            values: crate::binds::mysql_values(&binds),
            binds: format!("{binds:?}"),
        })
    }
}

/// The key builder of a query: every part that distinguishes two results.
pub(crate) fn query_key_builder<U: CacheableRow, C: CacheConnection>(
    kind: &str,
    db_label: &str,
    codec: &str,
    tables: &[&str],
    identity: &QueryIdentity,
) -> QueryKeyBuilder {
    let mut b = QueryKeyBuilder::new(kind);
    b.part("diesel", DIESEL_KEY_TAG.as_bytes())
        .part("backend", C::BACKEND.as_bytes())
        .part("codec", codec.as_bytes())
        .part("db", db_label.as_bytes());
    U::fingerprint(&mut b);
    for t in tables {
        b.part("table", t.as_bytes());
    }
    b.part("sql", identity.sql.as_bytes())
        .part("binds", identity.binds.as_bytes());
    b
}
