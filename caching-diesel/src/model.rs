//! What a cached result is made of: `Cached` models (derived), and rows built from them.
//!
//! [`CachedModel`] is implemented by `#[derive(Cached)]`: it names a row (its object key), the
//! rows it points at (foreign-key targets) and the model's table. [`CacheableRow`] is what
//! `.cached()` loads: a model, an `Option` of one (left joins), a tuple of them (joins), a
//! plain value, or a `#[derive(CachedRow)]` struct (raw SQL rows). Rows that contain no model
//! register on no flush list: their dependencies come from the statement's SQL (tables and
//! equality conditions, see [`crate::deps`]).

use caching_core::{KeySpace, ObjectKey, PredicateValue, QueryKeyBuilder, Registrations};

pub use crate::columns::{ColumnClass, ModelInfo};
use serde::{de::DeserializeOwned, Serialize};

/// A Diesel model whose rows can be cached and invalidated. Derive it with
/// `#[derive(Cached)]`; see the crate docs for the attributes.
///
/// ```
/// use caching_diesel::{CachedModel, ObjectKey};
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct User { id: i32 }
/// // What the derive generates, by hand:
/// impl CachedModel for User {
///     const TABLE: &'static str = "users";
///     const FINGERPRINT: &'static str = "User{id:i32}";
///     fn object_key(&self) -> ObjectKey { ObjectKey::new("users", &[self.id.to_string()]) }
///     fn foreign_keys(&self) -> Vec<ObjectKey> { Vec::new() }
/// }
/// assert_eq!(User { id: 1 }.object_key().as_str(), "o:users:1");
/// ```
pub trait CachedModel: Serialize + DeserializeOwned {
    /// The model name used in keys: the table name unless overridden.
    const TABLE: &'static str;
    /// The table's name in SQL (lowercase), which predicate dependencies and the tables a
    /// query reads are named by. Defaults to [`TABLE`](CachedModel::TABLE).
    const SQL_TABLE: &'static str = Self::TABLE;
    /// The model's columns (lowercase SQL names) and how their values compare. A column
    /// listed here with a comparable class lets cached queries depend on equality
    /// conditions over it; the derive fills it from the field types. Default: none (every
    /// query over the table then depends on every write to it).
    const COLUMNS: &'static [(&'static str, ColumnClass)] = &[];
    /// Field names and type tokens of the struct; part of every query key, so changing the
    /// struct never reads entries written by the old one.
    const FINGERPRINT: &'static str;
    /// The row's identity (`o:{table}:{pk}`).
    fn object_key(&self) -> ObjectKey;
    /// The rows this row points at through non-null foreign keys.
    fn foreign_keys(&self) -> Vec<ObjectKey>;
    /// The row's values of its comparable columns ([`COLUMNS`](CachedModel::COLUMNS) whose
    /// class is not [`ColumnClass::Opaque`]), in canonical form; a write walks the predicate
    /// lists they name. A NULL (or otherwise incomparable) value is left out.
    fn predicate_values(&self, out: &mut Vec<(&'static str, PredicateValue)>) {
        let _ = out;
    }
}

/// A row type `.cached()` can load. Implemented for every [`CachedModel`] (by the derive),
/// `Option`s and tuples of rows, and common scalar types.
pub trait CacheableRow: Serialize + DeserializeOwned {
    /// Whether the row is made only of models (so object writes invalidate it).
    const MODEL: bool;
    /// Adds the tables the row is read from.
    fn tables(out: &mut Vec<&'static str>);
    /// Adds the row type's fingerprint to a key.
    fn fingerprint(key: &mut QueryKeyBuilder);
    /// Registers `key` on this row's flush lists: the row's own list, and the children list
    /// of each row it points at through a foreign key.
    fn register(&self, keys: &KeySpace, key: &str, regs: &mut Registrations);
    /// Adds the models the row is made of (their SQL tables and columns).
    fn models(out: &mut Vec<ModelInfo>) {
        let _ = out;
    }
}

/// Implements [`CacheableRow`] for a [`CachedModel`]; used by the derive.
#[doc(hidden)]
pub fn register_model<M: CachedModel>(
    row: &M,
    keys: &KeySpace,
    key: &str,
    regs: &mut Registrations,
) {
    let me = row.object_key();
    regs.row(keys, &me, key);
    // On the parents' children lists, not linked into their own lists: a write to a parent
    // reaches `key`, a write to a sibling of this row does not (`Invalidation::parent`).
    for parent in row.foreign_keys() {
        regs.child(keys, &me, &parent, key);
    }
}

/// Adds a field's canonical value to a model's predicate values; used by the derive.
#[doc(hidden)]
pub fn push_predicate_value<T: Serialize + ?Sized>(
    out: &mut Vec<(&'static str, PredicateValue)>,
    column: &'static str,
    value: &T,
) {
    if let Some(v) = serde_json::to_value(value)
        .ok()
        .as_ref()
        .and_then(PredicateValue::from_json)
    {
        out.push((column, v));
    }
}

impl<T: CacheableRow> CacheableRow for Option<T> {
    const MODEL: bool = T::MODEL;
    fn tables(out: &mut Vec<&'static str>) {
        T::tables(out)
    }
    fn models(out: &mut Vec<ModelInfo>) {
        T::models(out)
    }
    fn fingerprint(key: &mut QueryKeyBuilder) {
        key.part("option", b"");
        T::fingerprint(key);
    }
    fn register(&self, keys: &KeySpace, key: &str, regs: &mut Registrations) {
        if let Some(v) = self {
            v.register(keys, key, regs)
        }
    }
}

macro_rules! scalar_rows {
    ($($t:ty),*) => {$(
        impl CacheableRow for $t {
            const MODEL: bool = false;
            fn tables(_: &mut Vec<&'static str>) {}
            fn fingerprint(key: &mut QueryKeyBuilder) {
                key.part("scalar", stringify!($t).as_bytes());
            }
            fn register(&self, _: &KeySpace, _: &str, _: &mut Registrations) {}
        }
    )*};
}

scalar_rows!(i16, i32, i64, f32, f64, bool, String, Vec<u8>);

macro_rules! tuple_rows {
    ($($name:ident . $idx:tt),+) => {
        impl<$($name: CacheableRow),+> CacheableRow for ($($name,)+) {
            const MODEL: bool = true $(&& $name::MODEL)+;
            fn tables(out: &mut Vec<&'static str>) {
                $($name::tables(out);)+
            }
            fn models(out: &mut Vec<ModelInfo>) {
                $($name::models(out);)+
            }
            fn fingerprint(key: &mut QueryKeyBuilder) {
                key.part("tuple", b"(");
                $($name::fingerprint(key);)+
                key.part("tuple", b")");
            }
            fn register(&self, keys: &KeySpace, key: &str, regs: &mut Registrations) {
                $(self.$idx.register(keys, key, regs);)+
            }
        }
    };
}

tuple_rows!(A.0);
tuple_rows!(A.0, B.1);
tuple_rows!(A.0, B.1, C.2);
tuple_rows!(A.0, B.1, C.2, D.3);
tuple_rows!(A.0, B.1, C.2, D.3, E.4);
tuple_rows!(A.0, B.1, C.2, D.3, E.4, F.5);
