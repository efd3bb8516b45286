//! What the process knows of each table's columns: how their values compare, from the
//! `Cached` models that read or wrote the table.
//!
//! A cached query may depend on an equality condition `table.column = value` only when a
//! writer of the table produces the same canonical value for every row the database finds
//! equal. That holds for integer, boolean, float and text fields (see
//! [`PredicateValue`](caching_core::PredicateValue)); it does not for dates, decimals,
//! UUIDs or custom types, whose text form may differ between a literal in SQL and the value
//! serde writes. So a condition is used only on a column some model of the table declares
//! comparable, and never on a column two models disagree about.

use std::collections::{HashMap, HashSet};
use std::sync::{OnceLock, RwLock};

use crate::model::CachedModel;

/// How a column's values compare, for predicate dependencies.
///
/// ```
/// use caching_diesel::ColumnClass;
/// assert!(ColumnClass::Int.is_comparable());
/// assert!(!ColumnClass::Opaque.is_comparable());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnClass {
    /// Integers and booleans.
    Int,
    /// Floating-point numbers (only integral values make predicates).
    Float,
    /// Text.
    Text,
    /// Anything else: conditions on the column are never used.
    Opaque,
}

impl ColumnClass {
    /// Whether conditions on such a column can be used.
    pub fn is_comparable(self) -> bool {
        self != ColumnClass::Opaque
    }
}

/// A model's table and columns, as [`CacheableRow::models`](crate::CacheableRow::models)
/// reports them.
#[derive(Debug, Clone, Copy)]
pub struct ModelInfo {
    /// The model's fingerprint (identifies the struct).
    pub fingerprint: &'static str,
    /// The model name used in object keys.
    pub table: &'static str,
    /// The table's SQL name (lowercase).
    pub sql_table: &'static str,
    /// Its columns and their classes.
    pub columns: &'static [(&'static str, ColumnClass)],
}

impl ModelInfo {
    /// The info of model `M`.
    pub fn of<M: CachedModel>() -> Self {
        ModelInfo {
            fingerprint: M::FINGERPRINT,
            table: M::TABLE,
            sql_table: M::SQL_TABLE,
            columns: M::COLUMNS,
        }
    }
}

#[derive(Default)]
struct TableColumns {
    models: HashSet<&'static str>,
    columns: HashMap<&'static str, ColumnClass>,
}

fn registry() -> &'static RwLock<HashMap<&'static str, TableColumns>> {
    static REGISTRY: OnceLock<RwLock<HashMap<&'static str, TableColumns>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Records a model's columns (cheap when it is already known).
pub(crate) fn register(info: &ModelInfo) {
    {
        let r = registry().read().unwrap_or_else(|e| e.into_inner());
        if r.get(info.sql_table)
            .is_some_and(|t| t.models.contains(info.fingerprint))
        {
            return;
        }
    }
    let mut r = registry().write().unwrap_or_else(|e| e.into_inner());
    let t = r.entry(info.sql_table).or_default();
    if !t.models.insert(info.fingerprint) {
        return;
    }
    for (column, class) in info.columns {
        t.columns
            .entry(column)
            .and_modify(|c| {
                if *c != *class {
                    // Two models disagree about how the column compares: use neither.
                    *c = ColumnClass::Opaque
                }
            })
            .or_insert(*class);
    }
}

/// The class of `table.column`, if a model of the table declared it.
pub(crate) fn class_of(table: &str, column: &str) -> Option<ColumnClass> {
    let r = registry().read().unwrap_or_else(|e| e.into_inner());
    r.get(table).and_then(|t| t.columns.get(column)).copied()
}

/// Whether a model with `columns` knows every comparable column other models of `table`
/// declared: if not, a write through it cannot name the predicate lists of the columns it
/// lacks, and must invalidate the whole table.
pub(crate) fn covers_table(table: &str, columns: &[(&'static str, ColumnClass)]) -> bool {
    let r = registry().read().unwrap_or_else(|e| e.into_inner());
    r.get(table).is_none_or(|t| {
        t.columns
            .iter()
            .filter(|(_, c)| c.is_comparable())
            .all(|(name, _)| columns.iter().any(|(n, c)| n == name && c.is_comparable()))
    })
}
