//! Query → key: the SQL text and the type-tagged bind values of a Diesel query, per backend.
//!
//! Diesel's `debug_query` is not injective (an `Integer` 1 and a `BigInt` 1 print alike), so
//! the key uses the backend's own bind collector, which knows each bind's SQL type.
//! PostgreSQL and MySQL expose it: each bind is written as its type (PostgreSQL: type OID and
//! array OID; MySQL: `MysqlType`), `=`, its wire bytes in hex (`-` for NULL), `;`. SQLite's
//! is private: its `Debug` output is used (value variant and `SqliteType`). Neither is a
//! stable Diesel API, so the Diesel version is part of every key ([`DIESEL_KEY_TAG`]): a
//! Diesel upgrade starts from a cold cache instead of risking a mismatch. On SQLite, a
//! borrowed and an owned string print differently: the same query may get two keys, which
//! is harmless.
//!
//! # What is remembered per query type
//!
//! Rendering the SQL, hashing it into the key and finding the statement's analysis cost more
//! than everything else of a key. Each connection remembers them per query type
//! ([`Templates`]), under the rule Diesel's own prepared-statement cache uses
//! (`diesel::connection::statement_cache`): a query's SQL depends on its type alone when its
//! `QueryId::query_id()` is `Some` and `QueryFragment::is_safe_to_cache_prepared` is true.
//! Boxed queries and `sql_query` have no static id; `eq_any` with a list of values (one `?`
//! per value except on PostgreSQL) and SQL literals are not safe to cache: those render their
//! SQL on every read, as before. Per query type the connection keeps the SQL text, its
//! analysis ([`crate::sql::analysed`]), and, per row type, kind, codec and declared tables,
//! the key builder fed with every part but the binds (the binds are the last part, so a key
//! is the same as without the memo). The bind values are collected on every read.

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use diesel::connection::LoadConnection;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
use diesel::query_builder::QueryBuilder;
use diesel::query_builder::{QueryFragment, QueryId};
use diesel::{Connection, QueryResult};

use crate::columns::ModelInfo;
use crate::model::CacheableRow;
use crate::sql::{Dialect, Statement};
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

/// The binds of one query as the key sees them: the collector's type-tagged `Debug` text and,
/// when asked for, the decoded values. Reused from read to read (no allocation once warm).
/// Not a public API.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct KeyBinds {
    /// Type-tagged bind values (the collector's `Debug` output).
    pub(crate) text: String,
    /// Each bind's value where the cache can compare it (filled only when asked for).
    pub(crate) values: Vec<BindValue>,
    /// PostgreSQL's collector, kept for its buffers.
    #[cfg(feature = "postgres")]
    pg: diesel::query_builder::bind_collector::RawBytesBindCollector<diesel::pg::Pg>,
    /// MySQL's collector, kept for its buffers.
    #[cfg(feature = "mysql")]
    mysql: diesel::query_builder::bind_collector::RawBytesBindCollector<diesel::mysql::Mysql>,
}

/// Appends `n` in decimal (a type OID: without the formatting machinery).
#[cfg(feature = "postgres")]
fn push_u32(text: &mut String, n: u32) {
    text.push_str(caching_core::key::decimal(u64::from(n), &mut [0; 20]));
}

/// A collector taken from [`KeyBinds`] for one read: emptied, and put back after unless an
/// unusually large read grew it.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn reuse<DB>(
    kept: &mut diesel::query_builder::bind_collector::RawBytesBindCollector<DB>,
) -> diesel::query_builder::bind_collector::RawBytesBindCollector<DB>
where
    DB: diesel::backend::Backend + diesel::sql_types::TypeMetadata,
{
    let mut c = std::mem::take(kept);
    c.metadata.clear();
    c.binds.clear();
    c
}

/// Gives a collector back to [`KeyBinds`] (see [`reuse`]).
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn give_back<DB>(
    kept: &mut diesel::query_builder::bind_collector::RawBytesBindCollector<DB>,
    c: diesel::query_builder::bind_collector::RawBytesBindCollector<DB>,
) where
    DB: diesel::backend::Backend + diesel::sql_types::TypeMetadata,
{
    const KEEP_BINDS: usize = 256;
    if c.binds.capacity() <= KEEP_BINDS {
        *kept = c;
    }
}

impl KeyBinds {
    /// Empties the text and the values (dropping buffers an unusually large read grew).
    fn clear(&mut self) {
        // Buffers grown by an unusually large read are not kept for the next ones.
        const KEEP_BYTES: usize = 16 << 10;
        const KEEP_VALUES: usize = 256;
        if self.text.capacity() > KEEP_BYTES {
            self.text = String::new();
        }
        if self.values.capacity() > KEEP_VALUES {
            self.values = Vec::new();
        }
        self.text.clear();
        self.values.clear();
    }

    /// Writes raw binds as the binds' text: per bind, its type tag (written by `tag`), `=`,
    /// its bytes in hex (`-` for NULL), `;`. Cheaper than the collector's `Debug` output,
    /// and as injective: the tag says the type, the hex the bytes.
    #[cfg(any(feature = "postgres", feature = "mysql"))]
    fn set_raw<M>(
        &mut self,
        metadata: &[M],
        binds: &[Option<Vec<u8>>],
        mut tag: impl FnMut(&mut String, &M),
    ) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.clear();
        let len: usize = binds
            .iter()
            .map(|b| b.as_ref().map_or(1, |b| 2 * b.len()) + 16)
            .sum();
        self.text.reserve(len);
        for (meta, bytes) in metadata.iter().zip(binds) {
            tag(&mut self.text, meta);
            self.text.push('=');
            match bytes {
                None => self.text.push('-'),
                Some(b) => {
                    for x in b {
                        self.text.push(char::from(HEX[usize::from(x >> 4)]));
                        self.text.push(char::from(HEX[usize::from(x & 15)]));
                    }
                }
            }
            self.text.push(';');
        }
    }

    /// Writes the `Debug` output of `collector` as the binds' text; empties the values.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    fn set_text(&mut self, collector: &dyn std::fmt::Debug) -> QueryResult<()> {
        self.clear();
        write!(self.text, "{collector:?}")
            .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))
    }
}

/// A Diesel connection whose queries can be keyed. Implemented for `SqliteConnection`,
/// `PgConnection` and `MysqlConnection` (each behind its cargo feature).
pub trait CacheConnection: Connection + LoadConnection + Send + 'static {
    /// Backend name, part of every key.
    const BACKEND: &'static str;

    /// The Diesel backend (a unit value), for `QueryFragment::is_safe_to_cache_prepared`.
    #[doc(hidden)]
    const DB: Self::Backend;

    /// The SQL text and type-tagged binds of `query`.
    fn query_identity<Q>(&mut self, query: &Q) -> QueryResult<QueryIdentity>
    where
        Q: QueryFragment<Self::Backend> + ?Sized,
    {
        let mut binds = KeyBinds::default();
        self.key_binds(query, &mut binds, true)?;
        Ok(QueryIdentity {
            sql: Self::render_sql(query)?,
            binds: binds.text,
            values: binds.values,
        })
    }

    /// The SQL text of `query`, with placeholders. Not a public API.
    #[doc(hidden)]
    fn render_sql<Q>(query: &Q) -> QueryResult<String>
    where
        Q: QueryFragment<Self::Backend> + ?Sized;

    /// Collects the binds of `query` into `out` (their values too if `decode`). Not a public
    /// API.
    #[doc(hidden)]
    fn key_binds<Q>(&mut self, query: &Q, out: &mut KeyBinds, decode: bool) -> QueryResult<()>
    where
        Q: QueryFragment<Self::Backend> + ?Sized;
}

#[cfg(feature = "sqlite")]
impl CacheConnection for diesel::sqlite::SqliteConnection {
    const BACKEND: &'static str = "sqlite";
    const DB: diesel::sqlite::Sqlite = diesel::sqlite::Sqlite;

    fn render_sql<Q>(query: &Q) -> QueryResult<String>
    where
        Q: QueryFragment<Self::Backend> + ?Sized,
    {
        use diesel::sqlite::{Sqlite, SqliteQueryBuilder};
        let mut qb = SqliteQueryBuilder::new();
        query.to_sql(&mut qb, &Sqlite)?;
        Ok(qb.finish())
    }

    fn key_binds<Q>(&mut self, query: &Q, out: &mut KeyBinds, decode: bool) -> QueryResult<()>
    where
        Q: QueryFragment<Self::Backend> + ?Sized,
    {
        sqlite_binds(query, out, decode)
    }
}

#[cfg(feature = "postgres")]
impl CacheConnection for diesel::pg::PgConnection {
    const BACKEND: &'static str = "postgres";
    const DB: diesel::pg::Pg = diesel::pg::Pg;

    fn render_sql<Q>(query: &Q) -> QueryResult<String>
    where
        Q: QueryFragment<Self::Backend> + ?Sized,
    {
        use diesel::pg::{Pg, PgQueryBuilder};
        let mut qb = PgQueryBuilder::new();
        query.to_sql(&mut qb, &Pg)?;
        Ok(qb.finish())
    }

    fn key_binds<Q>(&mut self, query: &Q, out: &mut KeyBinds, decode: bool) -> QueryResult<()>
    where
        Q: QueryFragment<Self::Backend> + ?Sized,
    {
        pg_binds(query, self, out, decode)
    }
}

#[cfg(feature = "mysql")]
impl CacheConnection for diesel::mysql::MysqlConnection {
    const BACKEND: &'static str = "mysql";
    const DB: diesel::mysql::Mysql = diesel::mysql::Mysql;

    fn render_sql<Q>(query: &Q) -> QueryResult<String>
    where
        Q: QueryFragment<Self::Backend> + ?Sized,
    {
        use diesel::mysql::{Mysql, MysqlQueryBuilder};
        let mut qb = MysqlQueryBuilder::new();
        query.to_sql(&mut qb, &Mysql)?;
        Ok(qb.finish())
    }

    fn key_binds<Q>(&mut self, query: &Q, out: &mut KeyBinds, decode: bool) -> QueryResult<()>
    where
        Q: QueryFragment<Self::Backend> + ?Sized,
    {
        mysql_binds(query, out, decode)
    }
}

/// SQLite: collects the binds of `query` into `out` (their values too if `decode`), for
/// every SQLite connection, blocking or async.
#[cfg(feature = "sqlite")]
pub(crate) fn sqlite_binds<Q>(query: &Q, out: &mut KeyBinds, decode: bool) -> QueryResult<()>
where
    Q: QueryFragment<diesel::sqlite::Sqlite> + ?Sized,
{
    use diesel::sqlite::Sqlite;
    let mut binds = <Sqlite as diesel::backend::Backend>::BindCollector::default();
    query.collect_binds(&mut binds, &mut (), &Sqlite)?;
    out.set_text(&binds)?;
    if decode {
        crate::binds::sqlite_values(&out.text, &mut out.values);
    }
    Ok(())
}

/// PostgreSQL: collects the binds of `query` into `out` (their values too if `decode`),
/// types looked up through `lookup`, for every PostgreSQL connection, blocking or async. A
/// bind whose type `lookup` could not find (a custom type on a connection that cannot look
/// types up) is an error: the read then bypasses the cache.
#[cfg(feature = "postgres")]
pub(crate) fn pg_binds<Q>(
    query: &Q,
    lookup: &mut (dyn diesel::pg::PgMetadataLookup + 'static),
    out: &mut KeyBinds,
    decode: bool,
) -> QueryResult<()>
where
    Q: QueryFragment<diesel::pg::Pg> + ?Sized,
{
    use diesel::pg::Pg;
    use diesel::query_builder::bind_collector::RawBytesBindCollector;
    let mut binds: RawBytesBindCollector<Pg> = reuse(&mut out.pg);
    let collected = query.collect_binds(&mut binds, lookup, &Pg).and_then(|()| {
        if binds.metadata.iter().any(|m| m.oid().is_err()) {
            return Err(diesel::result::Error::QueryBuilderError(
                "a bind of a PostgreSQL type whose OID could not be looked up".into(),
            ));
        }
        Ok(())
    });
    if let Err(e) = collected {
        give_back(&mut out.pg, binds);
        return Err(e);
    }
    out.set_raw(&binds.metadata, &binds.binds, |text, meta| {
        // Both are known: checked above.
        push_u32(text, meta.oid().unwrap_or_default());
        text.push('/');
        push_u32(text, meta.array_oid().unwrap_or_default());
    });
    if decode {
        crate::binds::pg_values(&binds, &mut out.values);
    }
    give_back(&mut out.pg, binds);
    Ok(())
}

/// MySQL: collects the binds of `query` into `out` (their values too if `decode`), for
/// every MySQL connection, blocking or async.
#[cfg(feature = "mysql")]
pub(crate) fn mysql_binds<Q>(query: &Q, out: &mut KeyBinds, decode: bool) -> QueryResult<()>
where
    Q: QueryFragment<diesel::mysql::Mysql> + ?Sized,
{
    use diesel::mysql::Mysql;
    use diesel::query_builder::bind_collector::RawBytesBindCollector;
    let mut binds: RawBytesBindCollector<Mysql> = reuse(&mut out.mysql);
    if let Err(e) = query.collect_binds(&mut binds, &mut (), &Mysql) {
        give_back(&mut out.mysql, binds);
        return Err(e);
    }
    out.set_raw(&binds.metadata, &binds.binds, |text, ty| {
        let _ = write!(text, "{ty:?}");
    });
    if decode {
        crate::binds::mysql_values(&binds, &mut out.values);
    }
    give_back(&mut out.mysql, binds);
    Ok(())
}

/// The key builder of a query fed with every part but its binds (which come last): every
/// part that distinguishes two results.
pub(crate) fn query_key_prefix<U: CacheableRow, C: CacheConnection>(
    kind: &str,
    db_label: &str,
    codec: &str,
    tables: &[&str],
    sql: &str,
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
    b.part("sql", sql.as_bytes());
    b
}

/// The key of a query: its prefix ([`query_key_prefix`]) and its binds.
pub(crate) fn finish_key(prefix: &QueryKeyBuilder, binds: &KeyBinds) -> QueryKeyBuilder {
    let mut b = prefix.clone();
    b.part("binds", binds.text.as_bytes());
    b
}

/// How many query types a connection remembers; when full it forgets them all (and renders
/// them again as they come). A type costs its SQL text and about 2 KB per key prefix (the
/// hasher's state), so a connection holds at most about 1 MB: less than the prepared
/// statements Diesel keeps for the same types.
const MAX_TEMPLATES: usize = 256;
/// How many key prefixes (row type, kind, codec, declared tables) one query type keeps; a
/// new one replaces the oldest.
const MAX_PREFIXES: usize = 2;

/// What a connection remembers of the queries whose SQL depends on their type alone (see the
/// module docs), and the buffers of the read in progress.
#[derive(Debug)]
pub(crate) struct Templates {
    by_type: HashMap<TypeId, Template, BuildHasherDefault<TypeIdHasher>>,
    /// The template of the last query whose SQL is not remembered (rendered afresh each time).
    transient: Template,
    /// The binds of the read in progress.
    binds: KeyBinds,
    cap: usize,
}

impl Default for Templates {
    fn default() -> Self {
        Templates {
            by_type: HashMap::default(),
            transient: Template::new(String::new()),
            binds: KeyBinds::default(),
            cap: MAX_TEMPLATES,
        }
    }
}

impl Templates {
    /// The template of `query` (remembered when its SQL depends on its type alone, else
    /// rendered afresh), and the buffer for its binds.
    pub(crate) fn get<C, Q>(&mut self, query: &Q) -> QueryResult<(&mut Template, &mut KeyBinds)>
    where
        C: CacheConnection,
        Q: QueryFragment<C::Backend> + QueryId + ?Sized,
    {
        let template = match static_sql_id::<C, Q>(query)? {
            Some(id) => {
                if self.by_type.len() >= self.cap && !self.by_type.contains_key(&id) {
                    self.by_type.clear();
                }
                match self.by_type.entry(id) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(Template::new(C::render_sql(query)?))
                    }
                }
            }
            None => {
                self.transient = Template::new(C::render_sql(query)?);
                &mut self.transient
            }
        };
        Ok((template, &mut self.binds))
    }

    /// How many query types are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_type.len()
    }
}

/// The type id under which `query`'s SQL can be remembered: Diesel's prepared-statement cache
/// rule (a static `QueryId` and `is_safe_to_cache_prepared`). `None`: render it every time.
fn static_sql_id<C, Q>(query: &Q) -> QueryResult<Option<TypeId>>
where
    C: CacheConnection,
    Q: QueryFragment<C::Backend> + QueryId + ?Sized,
{
    match Q::query_id() {
        Some(id) if query.is_safe_to_cache_prepared(&C::DB)? => Ok(Some(id)),
        _ => Ok(None),
    }
}

/// A query type's SQL, its analysis, and its key prefixes.
#[derive(Debug)]
pub(crate) struct Template {
    sql: String,
    analysis: Option<Arc<Result<Statement, String>>>,
    prefixes: Vec<Prefix>,
}

/// The parts of a read that depend on the query type, the row type, the kind of key, the
/// cache's codec and the declared tables, but not on the bind values.
#[derive(Debug)]
pub(crate) struct Prefix {
    row: TypeId,
    kind: &'static str,
    codec: &'static str,
    declared: Vec<&'static str>,
    /// The row's model names and the declared tables, sorted, deduplicated.
    pub(crate) model_tables: Vec<&'static str>,
    /// The SQL tables of the row's models.
    pub(crate) row_tables: Vec<&'static str>,
    models: Vec<ModelInfo>,
    registered: bool,
    /// The key builder fed with everything but the binds.
    pub(crate) builder: QueryKeyBuilder,
}

impl Prefix {
    /// Records the row's models' columns (once per prefix: the registry only grows).
    pub(crate) fn register_models(&mut self) {
        if !self.registered {
            for m in &self.models {
                crate::columns::register(m);
            }
            self.registered = true;
        }
    }
}

/// A template's parts for one read.
pub(crate) struct Resolved<'t> {
    pub(crate) sql: &'t str,
    /// The statement's analysis (if asked for).
    pub(crate) analysis: Option<&'t Arc<Result<Statement, String>>>,
    pub(crate) prefix: &'t mut Prefix,
}

impl Template {
    fn new(sql: String) -> Self {
        Template {
            sql,
            analysis: None,
            prefixes: Vec::new(),
        }
    }

    /// The SQL, its analysis in `dialect` (if given), and the key prefix of rows `U` read as
    /// `kind` through a cache with `codec`, on a connection labelled `db_label`, with the
    /// `declared` tables.
    pub(crate) fn resolve<U, C>(
        &mut self,
        kind: &'static str,
        codec: &'static str,
        db_label: &str,
        declared: &[&'static str],
        dialect: Option<Dialect>,
    ) -> Resolved<'_>
    where
        U: CacheableRow + 'static,
        C: CacheConnection,
    {
        if let Some(d) = dialect {
            if self.analysis.is_none() {
                self.analysis = Some(crate::sql::analysed(&self.sql, d));
            }
        }
        let row = TypeId::of::<U>();
        let found = self.prefixes.iter().position(|p| {
            p.row == row && p.kind == kind && p.codec == codec && p.declared == declared
        });
        let i = match found {
            Some(i) => i,
            None => {
                let mut model_tables = Vec::new();
                U::tables(&mut model_tables);
                model_tables.extend_from_slice(declared);
                model_tables.sort_unstable();
                model_tables.dedup();
                let mut models = Vec::new();
                U::models(&mut models);
                let builder =
                    query_key_prefix::<U, C>(kind, db_label, codec, &model_tables, &self.sql);
                if self.prefixes.len() >= MAX_PREFIXES {
                    self.prefixes.remove(0);
                }
                self.prefixes.push(Prefix {
                    row,
                    kind,
                    codec,
                    declared: declared.to_vec(),
                    row_tables: models.iter().map(|m| m.sql_table).collect(),
                    model_tables,
                    models,
                    registered: false,
                    builder,
                });
                self.prefixes.len() - 1
            }
        };
        Resolved {
            sql: &self.sql,
            analysis: self.analysis.as_ref(),
            prefix: &mut self.prefixes[i],
        }
    }
}

/// A `TypeId` is a hash already: its `Hash` writes it as integers, which this keeps.
#[derive(Debug, Default)]
pub(crate) struct TypeIdHasher(u64);

impl Hasher for TypeIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }

    fn write_u128(&mut self, n: u128) {
        self.0 ^= (n as u64) ^ ((n >> 64) as u64);
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::prelude::*;
    use crate::{Cache, CacheSet, CachedConnection};
    use diesel::query_builder::AsQuery;
    use diesel::sqlite::{Sqlite, SqliteConnection};

    diesel::table! { memo_items (id) { id -> Integer, val -> Integer } }

    type Row = (i32, i32);

    fn conn() -> CachedConnection<SqliteConnection> {
        let raw = SqliteConnection::establish(":memory:").expect("in-memory SQLite");
        let mut conn = CachedConnection::with_caches(raw, CacheSet::new(Cache::locmem()));
        diesel::sql_query(
            "CREATE TABLE memo_items (id INTEGER PRIMARY KEY, val INTEGER NOT NULL); \
             INSERT INTO memo_items VALUES (1, 10), (2, 20), (3, 30), (4, 40)",
        )
        .execute(&mut *conn)
        .ok();
        for (id, val) in [(1, 10), (2, 20), (3, 30), (4, 40)] {
            diesel::insert_into(memo_items::table)
                .values((memo_items::id.eq(id), memo_items::val.eq(val)))
                .execute(&mut *conn)
                .ok();
        }
        conn
    }

    /// The key as it was built before the per-type memo: everything rendered afresh.
    fn reference_key<U, Q>(conn: &mut CachedConnection<SqliteConnection>, query: Q) -> String
    where
        U: CacheableRow,
        Q: AsQuery,
        Q::Query: QueryFragment<Sqlite>,
    {
        let cache = conn.caches.get(None).expect("default cache").clone();
        let identity = conn
            .conn
            .query_identity(&query.as_query())
            .expect("identity");
        let mut tables = Vec::new();
        U::tables(&mut tables);
        let mut b = query_key_prefix::<U, SqliteConnection>(
            "query",
            conn.label(),
            cache.config().codec.id(),
            &tables,
            &identity.sql,
        );
        b.part("binds", identity.binds.as_bytes());
        cache.keys().query_key(&b)
    }

    /// `id IN (..)`: one `?` per value on SQLite, so one type renders many SQL texts.
    macro_rules! in_list {
        ($($id:expr),*) => {
            memo_items::table
                .filter(memo_items::id.eq_any(vec![$($id),*]))
                .order(memo_items::id)
        };
    }

    #[test]
    fn in_lists_of_one_type_get_their_own_keys() {
        let mut conn = conn();
        let two = in_list!(1, 2).cached().key::<Row, _>(&mut conn).unwrap();
        let three = in_list!(1, 2, 3).cached().key::<Row, _>(&mut conn).unwrap();
        assert_ne!(two, three);
        assert_eq!(two, reference_key::<Row, _>(&mut conn, in_list!(1, 2)));
        assert_eq!(three, reference_key::<Row, _>(&mut conn, in_list!(1, 2, 3)));
        // One `?` per value: not remembered by type.
        assert_eq!(conn.templates.len(), 0);
        for _ in 0..2 {
            let a: Vec<Row> = in_list!(1, 2).cached().load(&mut conn).unwrap();
            let b: Vec<Row> = in_list!(1, 2, 3).cached().load(&mut conn).unwrap();
            let c: Vec<Row> = in_list!(4).cached().load(&mut conn).unwrap();
            assert_eq!(a, [(1, 10), (2, 20)]);
            assert_eq!(b, [(1, 10), (2, 20), (3, 30)]);
            assert_eq!(c, [(4, 40)]);
        }
        assert_eq!(conn.cache().stats().hits, 3);
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn type_oids_are_written_in_decimal() {
        for n in [0u32, 7, 10, 23, 1007, 4_294_967_295] {
            let mut s = String::from("x");
            super::push_u32(&mut s, n);
            assert_eq!(s, format!("x{n}"));
        }
    }

    #[test]
    fn bind_values_are_in_the_key() {
        let mut conn = conn();
        let by_id = |id: i32| memo_items::table.filter(memo_items::id.eq(id)).limit(10);
        let one = by_id(1).cached().key::<Row, _>(&mut conn).unwrap();
        let two = by_id(2).cached().key::<Row, _>(&mut conn).unwrap();
        assert_ne!(one, two);
        assert_eq!(one, by_id(1).cached().key::<Row, _>(&mut conn).unwrap());
        assert_eq!(one, reference_key::<Row, _>(&mut conn, by_id(1)));
        assert_eq!(two, reference_key::<Row, _>(&mut conn, by_id(2)));
        // Another query type that renders the same SQL and binds: remembered on its own,
        // and the same key (a key is made of the SQL and the binds, not of the Rust type).
        let explicit = memo_items::table
            .filter(memo_items::id.eq(1))
            .limit(10)
            .select((memo_items::id, memo_items::val));
        assert_eq!(conn.templates.len(), 1);
        let explicit_key = explicit.cached().key::<Row, _>(&mut conn).unwrap();
        assert_eq!(conn.templates.len(), 2);
        assert_eq!(explicit_key, one);
        let a: Vec<Row> = by_id(1).cached().load(&mut conn).unwrap();
        let b: Vec<Row> = by_id(2).cached().load(&mut conn).unwrap();
        let a2: Vec<Row> = by_id(1).cached().load(&mut conn).unwrap();
        assert_eq!((a, b, a2), (vec![(1, 10)], vec![(2, 20)], vec![(1, 10)]));
        assert_eq!(conn.cache().stats().hits, 1);
    }

    #[test]
    fn boxed_queries_of_one_type_get_their_own_keys() {
        let mut conn = conn();
        let boxed = |by_val: bool, v: i32| {
            let q = memo_items::table.into_boxed::<Sqlite>();
            if by_val {
                q.filter(memo_items::val.eq(v))
            } else {
                q.filter(memo_items::id.eq(v))
            }
        };
        let by_val = boxed(true, 2).cached().key::<Row, _>(&mut conn).unwrap();
        let by_id = boxed(false, 2).cached().key::<Row, _>(&mut conn).unwrap();
        assert_ne!(by_val, by_id);
        assert_eq!(by_val, reference_key::<Row, _>(&mut conn, boxed(true, 2)));
        assert_eq!(by_id, reference_key::<Row, _>(&mut conn, boxed(false, 2)));
        assert_eq!(conn.templates.len(), 0);
        for _ in 0..2 {
            let a: Vec<Row> = boxed(true, 20).cached().load(&mut conn).unwrap();
            let b: Vec<Row> = boxed(false, 20).cached().load(&mut conn).unwrap();
            let c: Vec<Row> = boxed(false, 3).cached().load(&mut conn).unwrap();
            assert_eq!(a, [(2, 20)]);
            assert!(b.is_empty());
            assert_eq!(c, [(3, 30)]);
        }
    }

    #[test]
    fn raw_sql_is_rendered_every_time() {
        use diesel::sql_types::Integer;
        let mut conn = conn();
        let raw = |sql: &'static str| diesel::sql_query(sql).bind::<Integer, _>(1);
        let a = raw("SELECT id, val FROM memo_items WHERE id = ?")
            .cached()
            .key::<Row, _>(&mut conn)
            .unwrap();
        let b = raw("SELECT id, val FROM memo_items WHERE val = ?")
            .cached()
            .key::<Row, _>(&mut conn)
            .unwrap();
        assert_ne!(a, b);
        assert_eq!(
            b,
            reference_key::<Row, _>(
                &mut conn,
                raw("SELECT id, val FROM memo_items WHERE val = ?")
            )
        );
        // SQL literals inside a query builder: one type, any SQL.
        let literal = |cond: &'static str| {
            memo_items::table.filter(diesel::dsl::sql::<diesel::sql_types::Bool>(cond))
        };
        let one = literal("id = 1").cached().key::<Row, _>(&mut conn).unwrap();
        let two = literal("id = 2").cached().key::<Row, _>(&mut conn).unwrap();
        assert_ne!(one, two);
        assert_eq!(two, reference_key::<Row, _>(&mut conn, literal("id = 2")));
        let rows: Vec<Row> = literal("id = 2").cached().load(&mut conn).unwrap();
        assert_eq!(rows, [(2, 20)]);
        assert_eq!(conn.templates.len(), 0);
    }

    #[test]
    fn prefixes_keep_row_type_tables_and_label_apart() {
        let mut conn = conn();
        let q = || memo_items::table.filter(memo_items::id.eq(1));
        let plain = q().cached().key::<Row, _>(&mut conn).unwrap();
        let other_row = q().cached().key::<(i32, i64), _>(&mut conn).unwrap();
        let declared = q()
            .cached()
            .tables(&["elsewhere"])
            .key::<Row, _>(&mut conn)
            .unwrap();
        assert_eq!(conn.templates.len(), 1);
        assert_ne!(plain, other_row);
        assert_ne!(plain, declared);
        assert_ne!(other_row, declared);
        assert_eq!(plain, q().cached().key::<Row, _>(&mut conn).unwrap());
        let mut labelled = conn.with_label("replica");
        let elsewhere = q().cached().key::<Row, _>(&mut labelled).unwrap();
        assert_ne!(plain, elsewhere);
        assert_eq!(elsewhere, reference_key::<Row, _>(&mut labelled, q()));
    }

    #[test]
    fn the_memo_is_bounded() {
        let mut conn = conn();
        conn.templates.cap = 2;
        let a = memo_items::table.filter(memo_items::id.eq(1));
        let b = memo_items::table.filter(memo_items::val.eq(1));
        let c = memo_items::table.filter(memo_items::val.gt(1));
        let ka = a.cached().key::<Row, _>(&mut conn).unwrap();
        b.cached().key::<Row, _>(&mut conn).unwrap();
        assert_eq!(conn.templates.len(), 2);
        c.cached().key::<Row, _>(&mut conn).unwrap();
        assert_eq!(conn.templates.len(), 1);
        assert_eq!(ka, a.cached().key::<Row, _>(&mut conn).unwrap());
        assert_eq!(conn.templates.len(), 2);
    }
}
