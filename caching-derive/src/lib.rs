//! `#[derive(Cached)]` for Diesel models: object keys, flush keys, foreign-key relations and
//! the struct fingerprint that goes into query keys. Use it through `caching_diesel`, which
//! re-exports it (the generated code names `::caching_diesel` paths).
//!
//! The derive reads Diesel's own attributes and accepts `#[cached(...)]` for what Diesel does
//! not say:
//!
//! ```text
//! #[derive(Queryable, Identifiable, Associations, Cached, Serialize, Deserialize)]
//! #[diesel(table_name = addons, belongs_to(User, foreign_key = author1_id))]
//! #[cached(belongs_to(User, foreign_key = author2_id))]   // a second foreign key
//! #[cached(model = "addon")]                               // a model name other than the table
//! struct Addon { id: i32, val: i32, author1_id: i32, author2_id: Option<i32> }
//! ```
//!
//! - `#[diesel(table_name = t)]`: the table (default: the struct name in snake case plus `s`,
//!   as Diesel does).
//! - `#[diesel(primary_key(a, b))]`: primary key columns (default `id`); composite keys work.
//! - `#[diesel(belongs_to(Parent))]`, `#[diesel(belongs_to(Parent, foreign_key = col))]`,
//!   and the same under `#[cached(...)]`: foreign keys (default column `parent_id`). A field
//!   of type `Option<_>` is a nullable foreign key: `None` points nowhere.
//! - As in Diesel, primary and foreign keys name columns: a field renamed with
//!   `#[diesel(column_name = col)]` is found by `col`.
//! - Key parts are the fields' `Display` output (`ToString`).
//! - `#[cached(model = "name")]`: the model name in keys (default: the table name).

mod attrs;
mod expand;
mod method;
mod model;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Derives `caching_diesel::CachedModel` and `caching_diesel::CacheableRow` (and
/// `caching_diesel::core::FlushTarget`, so values can be tied to a row with `cached_with`).
/// See the crate docs for the attributes.
#[proc_macro_derive(Cached, attributes(cached))]
pub fn derive_cached(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    model::Model::from_input(&input)
        .map(|m| expand::expand(&m))
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Derives `CacheableRow` for a row type that is not a model: the rows of a raw
/// `sql_query` report or an aggregate (`QueryableByName` + serde). Its cached results depend
/// on what the query's SQL reads (tables and equality conditions), so no primary key is
/// needed.
///
/// ```ignore
/// #[derive(QueryableByName, CachedRow, Serialize, Deserialize)]
/// struct PostStats {
///     #[diesel(sql_type = Integer)]
///     post_id: i32,
///     #[diesel(sql_type = BigInt)]
///     comments: i64,
/// }
/// ```
#[proc_macro_derive(CachedRow)]
pub fn derive_cached_row(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::expand_row(&input).into()
}

/// Caches a method of a `#[derive(Cached)]` model per (object, method, arguments), on the
/// object's flush list: a write that invalidates the object (saving it, deleting it, a write
/// through a foreign key that reaches it) makes the next call compute it again. The
/// original's `@cached_method`.
///
/// The method takes `&self`, then the cache: a `&Cache` or a `&mut CachedConnection<_>` (its
/// default cache; the body may use the connection). Every other argument is part of the key
/// and must implement serde's `Serialize`; the result must implement `Serialize` and
/// `DeserializeOwned`. A method returning a `Result` (any type named `..Result`) caches only
/// its `Ok` values. `#[cached_method(timeout = 60)]` sets a timeout in seconds (the default
/// is the cache's); `tables = ["comments"]` names the tables the body reads besides the
/// model's, whose writes then make the value miss. The key includes the object's content, so
/// a value computed from an old copy of the row is never served for the new one. There is no per-instance memo as in the original: a `&self` method cannot
/// remember a value without a field for it, and the cache lookup is cheap.
///
/// ```ignore
/// impl Post {
///     #[cached_method(tables = ["comments"])]
///     fn comment_count(&self, conn: &mut CachedConnection<SqliteConnection>) -> QueryResult<i64> {
///         comments::table.filter(comments::post_id.eq(self.id)).count().get_result(conn)
///     }
///
///     #[cached_method(timeout = 300)]
///     fn summary(&self, cache: &Cache, words: usize) -> String {
///         self.body.split_whitespace().take(words).collect::<Vec<_>>().join(" ")
///     }
/// }
/// ```
///
/// The crate `caching_diesel` re-exports it and documents it with a compiled example.
#[proc_macro_attribute]
pub fn cached_method(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    method::expand(args.into(), item.clone())
        .unwrap_or_else(|e| {
            // The method stays as written, so the error is the only one reported.
            let mut out = e.into_compile_error();
            out.extend(item);
            out
        })
        .into()
}
