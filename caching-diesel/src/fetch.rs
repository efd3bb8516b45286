//! Fetch by id (the original's `FETCH_BY_ID`): a cached query loads only its rows' primary
//! keys; the rows come from per-object entries, taken in one multi-get, and the ones not
//! cached are loaded with one `IN` query and cached one by one.
//!
//! Each row is then cached once, however many queries it appears in, and a write to a row
//! drops one entry (its own) plus the id lists it entered or left, not every list it is in.
//! It pays when rows are wide and queries overlap (the same rows in many lists); for a
//! query read once, or narrow rows, a plain `.cached().load()` is one round trip cheaper on a
//! hit (`docs/src/benchmarks.md` has the numbers).
//!
//! Never stale, by the same rules as any cached read: the id list is a cached query over the
//! table (its dependencies come from its SQL: the rows it filters on, rows entering or
//! leaving it); each object entry is registered on its row's flush list and guarded by the
//! table's versions, so a write to the row (through the helpers, or a plain Diesel write
//! seen by the connection) drops it.

use std::fmt::Display;

use caching_core::{ObjectKey, PredicateValue, ReadPlan, Registrations};
use diesel::associations::HasTable;
use diesel::dsl::{EqAny, Select};
use diesel::expression::array_comparison::AsInExpression;
use diesel::expression::Expression;
use diesel::query_builder::AsQuery;
use diesel::query_dsl::methods::{FilterDsl, SelectDsl};
use diesel::query_dsl::LoadQuery;
use diesel::sql_types::{SingleValue, SqlType};
use diesel::{Column, ExpressionMethods, QueryResult, RunQueryDsl, Table};

use crate::connection::CachedConnection;
use crate::key::CacheConnection;
use crate::model::{CacheableRow, CachedModel};
use crate::query::{CachedQuery, CachedRunQueryDsl, LoadCached};

/// A model whose rows can be fetched by primary key from per-object entries
/// ([`fetch_by_id`](crate::CachedRunQueryDsl::fetch_by_id)). `#[derive(Cached)]` implements it for models with a
/// single-column primary key.
///
/// ```
/// use caching_diesel::{CachedModel, FetchById, ObjectKey};
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct User { id: i32 }
/// # impl CachedModel for User {
/// #     const TABLE: &'static str = "users";
/// #     const FINGERPRINT: &'static str = "User{id:i32}";
/// #     fn object_key(&self) -> ObjectKey { ObjectKey::new("users", &[self.id.to_string()]) }
/// #     fn foreign_keys(&self) -> Vec<ObjectKey> { Vec::new() }
/// # }
/// // What the derive generates, by hand:
/// impl FetchById for User {
///     type Id = i32;
///     fn id(&self) -> &i32 { &self.id }
/// }
/// assert_eq!(*User { id: 7 }.id(), 7);
/// ```
pub trait FetchById: CachedModel {
    /// The Rust type of the primary key.
    type Id;
    /// This row's primary key.
    fn id(&self) -> &Self::Id;
}

/// The primary-key column of model `U`'s table.
type PrimaryKeyOf<U> = <<U as HasTable>::Table as Table>::PrimaryKey;

/// `pk IN (ids)` for model `U`.
type ByIds<U> = EqAny<PrimaryKeyOf<U>, Vec<<U as FetchById>::Id>>;

/// The `SELECT .. FROM` query of model `U`'s table.
type TableQuery<U> = <<U as HasTable>::Table as AsQuery>::Query;

/// Loads a cached query's rows by id (the bounds behind
/// [`CachedRunQueryDsl::fetch_by_id`](crate::CachedRunQueryDsl::fetch_by_id)).
pub trait FetchCached<'query, Conn, U> {
    /// Loads the rows by id, through the cache.
    fn fetch_by_id_cached(self, conn: &mut Conn) -> QueryResult<Vec<U>>;
}

impl<'query, Q, C, U> FetchCached<'query, CachedConnection<C>, U> for CachedQuery<Q>
where
    C: CacheConnection,
    U: FetchById + CacheableRow + HasTable + 'static,
    U::Id: CacheableRow + Display + Clone + 'static,
    Q: SelectDsl<PrimaryKeyOf<U>>,
    CachedQuery<Select<Q, PrimaryKeyOf<U>>>: LoadCached<'query, CachedConnection<C>, U::Id>,
    PrimaryKeyOf<U>: Expression + Column,
    <PrimaryKeyOf<U> as Expression>::SqlType: SqlType + SingleValue,
    Vec<U::Id>: AsInExpression<<PrimaryKeyOf<U> as Expression>::SqlType>,
    TableQuery<U>: FilterDsl<ByIds<U>>,
    <TableQuery<U> as FilterDsl<ByIds<U>>>::Output: LoadQuery<'query, C, U>,
{
    fn fetch_by_id_cached(self, conn: &mut CachedConnection<C>) -> QueryResult<Vec<U>> {
        let (query, options) = self.into_parts();
        let pk = U::table().primary_key();
        let disabled = options.is_disabled();
        let cache_name = options.cache_name().map(str::to_string);
        let timeout = options.timeout_or_default();
        let declared = options.declared_tables().to_vec();
        // The id list loads no model, so its dependencies come from the columns registered
        // for the table: register the model's first, or the list's dependencies (and so its
        // entry) would differ between the first fetch in a process and the next.
        crate::columns::register(&crate::columns::ModelInfo::of::<U>());
        let ids: Vec<U::Id> = CachedQuery::with_options(query.select(pk), options).load(conn)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let by_ids = |conn: &mut C, ids: Vec<U::Id>| {
            let predicate: ByIds<U> = U::table().primary_key().eq_any(ids);
            FilterDsl::filter(U::table().as_query(), predicate).load::<U>(conn)
        };
        let cache = conn.caches.get(cache_name.as_deref())?.clone();
        let db = entry_namespace::<U>(conn.label());
        let objects: Vec<ObjectKey> = ids
            .iter()
            .map(|id| ObjectKey::new(U::TABLE, &[id.to_string()]))
            .collect();
        let keys: Vec<String> = objects
            .iter()
            .map(|o| cache.keys().object_entry_key(&db, o))
            .collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        // The model's tables, and those declared with `.tables(..)` (a view's base tables),
        // whose writes all make the entries miss, as they do the query.
        let mut tables = vec![U::SQL_TABLE, U::TABLE];
        for t in &declared {
            if !tables.contains(t) {
                tables.push(t);
            }
        }
        tables.dedup();
        let plan = ReadPlan::new("", &tables).guard(&declared).timeout(timeout);
        let plan = if disabled {
            plan.bypass("caching turned off for this query")
        } else {
            conn.plan_read(&cache, plan, &tables, None)
        };
        let inner = &mut conn.conn;
        let load = |missing: &[usize]| -> QueryResult<Vec<(usize, U)>> {
            let wanted: Vec<U::Id> = missing.iter().map(|&i| ids[i].clone()).collect();
            let rows = by_ids(inner, wanted)?;
            // Place each row at the position of its key (ids may repeat in a join's list).
            let mut out = Vec::with_capacity(missing.len());
            for row in rows {
                let me = row.object_key();
                let positions: Vec<usize> = missing
                    .iter()
                    .copied()
                    .filter(|&i| objects[i] == me)
                    .collect();
                if let Some((&last, rest)) = positions.split_last() {
                    for &i in rest {
                        out.push((i, clone_row(&row)?));
                    }
                    out.push((last, row));
                }
            }
            Ok(out)
        };
        let keyspace = cache.keys().clone();
        // Like a query's rows: the row's flush list and its foreign-key parents' children
        // lists; and the predicate list of its primary key, which a write through another
        // model of the same table walks too.
        let pk_column = <PrimaryKeyOf<U> as Column>::NAME.to_lowercase();
        let register = |row: &U, key: &str, regs: &mut Registrations| {
            row.register(&keyspace, key, regs);
            if let Some(v) = serde_json::to_value(row.id())
                .ok()
                .as_ref()
                .and_then(PredicateValue::from_json)
            {
                regs.predicate(&keyspace, U::SQL_TABLE, &pk_column, &v, key);
            }
        };
        let (rows, outcome) = cache.read_many(&refs, &plan, load, register)?;
        tracing::debug!(
            model = U::TABLE,
            ids = ids.len(),
            outcome = ?outcome,
            "fetch by id"
        );
        Ok(rows.into_iter().flatten().collect())
    }
}

/// A copy of a row for an id listed twice, through its serialized form (models need not be
/// `Clone`).
fn clone_row<U: CacheableRow>(row: &U) -> QueryResult<U> {
    serde_json::to_vec(row)
        .and_then(|bytes| serde_json::from_slice(&bytes))
        .map_err(|e| diesel::result::Error::DeserializationError(Box::new(e)))
}

/// The database part of a per-object entry key: the connection's label and the model's
/// fingerprint, so a deploy that changes the struct never reads entries of the old one.
fn entry_namespace<U: CachedModel>(label: &str) -> String {
    let fp = blake3::hash(U::FINGERPRINT.as_bytes()).to_hex();
    format!("{label}~{}", &fp[..16])
}
