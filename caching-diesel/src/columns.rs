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

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

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

#[derive(Default, Clone)]
struct TableColumns {
    models: HashSet<&'static str>,
    columns: HashMap<&'static str, ColumnClass>,
}

type Registry = HashMap<&'static str, TableColumns>;

/// The registry: replaced whole (copied and changed) when a model is first seen, which
/// happens a handful of times per process; read on every cached read.
fn registry() -> &'static RwLock<Arc<Registry>> {
    static REGISTRY: OnceLock<RwLock<Arc<Registry>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Bumped after each change of the registry.
static GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's copy of the registry and the generation it was taken at: a read checks
    /// the generation (a load of a line no one writes) instead of taking the registry's lock
    /// (a write to a line every reading thread shares).
    static LOCAL: RefCell<(u64, Option<Arc<Registry>>)> = const { RefCell::new((0, None)) };
}

/// Runs `f` on the registry as of now.
fn with_registry<R>(f: impl Fn(&Registry) -> R) -> R {
    let latest = || registry().read().unwrap_or_else(|e| e.into_inner()).clone();
    let generation = GENERATION.load(Ordering::Acquire);
    let local = LOCAL.try_with(|l| {
        let mut l = l.borrow_mut();
        let l = &mut *l;
        match &l.1 {
            Some(r) if l.0 == generation => f(r),
            _ => {
                l.0 = generation;
                f(l.1.insert(latest()))
            }
        }
    });
    // Without the thread's copy (the thread is exiting), the registry itself.
    local.unwrap_or_else(|_| f(&latest()))
}

/// Records a model's columns (cheap when it is already known).
pub(crate) fn register(info: &ModelInfo) {
    let known = with_registry(|r| {
        r.get(info.sql_table)
            .is_some_and(|t| t.models.contains(info.fingerprint))
    });
    if known {
        return;
    }
    let mut r = registry().write().unwrap_or_else(|e| e.into_inner());
    if r.get(info.sql_table)
        .is_some_and(|t| t.models.contains(info.fingerprint))
    {
        return;
    }
    let mut next = Registry::clone(&r);
    let t = next.entry(info.sql_table).or_default();
    t.models.insert(info.fingerprint);
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
    *r = Arc::new(next);
    GENERATION.fetch_add(1, Ordering::Release);
}

/// The class of `table.column`, if a model of the table declared it.
pub(crate) fn class_of(table: &str, column: &str) -> Option<ColumnClass> {
    with_registry(|r| r.get(table).and_then(|t| t.columns.get(column)).copied())
}

/// Whether a model with `columns` knows every comparable column other models of `table`
/// declared: if not, a write through it cannot name the predicate lists of the columns it
/// lacks, and must invalidate the whole table.
pub(crate) fn covers_table(table: &str, columns: &[(&'static str, ColumnClass)]) -> bool {
    with_registry(|r| {
        r.get(table).is_none_or(|t| {
            t.columns
                .iter()
                .filter(|(_, c)| c.is_comparable())
                .all(|(name, _)| columns.iter().any(|(n, c)| n == name && c.is_comparable()))
        })
    })
}
