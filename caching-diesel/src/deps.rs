//! What a cached read depends on, from its SQL: the tables it reads and, per table, the
//! equality conditions its rows must satisfy (predicate dependencies).
//!
//! For each table the statement reads:
//!
//! - the most selective usable equality condition (`col = v`, `col IN (..)`, see
//!   [`crate::sql`]) registers the entry on the predicate list of each of its values: a write
//!   whose new row (or deleted row) has that value invalidates it. A row entering the result
//!   must satisfy every condition, so any one of them catches it, provided the writer knows
//!   the row's value of that column: a write through a model that lacks a comparable column
//!   another model of the table declares invalidates the whole table instead.
//! - a table with no usable condition is *guarded*: the entry records the table's write
//!   generation, and any write to the table makes it miss.
//! - a table whose rows the result does not contain as models (counts, aggregates, raw rows,
//!   subqueries, joined tables not loaded) also registers on the table's exit list: a row that
//!   *leaves* such a result is not on any flush list of the entry, so an update that does not
//!   know its rows' old values walks the exit list.
//!
//! A condition is usable only if its column is comparable (declared by a `Cached` model of
//! the table with a comparable class, see [`crate::columns`]) and each value has a canonical
//! form. On MySQL, text values are not used (collations make `'a' = 'A'` and `'e' = 'é'`).
//! Dropping a condition only makes the dependency broader.

use caching_core::{DependencyTracking, KeySpace, PredicateValue, Registrations};

use crate::columns::{self, ColumnClass};
use crate::key::BindValue;
use crate::sql::{Dialect, Literal, Operand, Statement};

/// The dependencies of one cached read. Names are borrowed from the statement's analysis
/// (`Deps<&str>`, what a blocking read uses) or owned ([`Deps::to_owned`], what a read that
/// must outlive its borrow of the connection holds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Deps<S> {
    /// Every table read: SQL names, plus the model names of the rows loaded (their versions
    /// are recorded), plus tables declared with `.tables()`.
    pub tables: Vec<S>,
    /// Tables any write to which makes the entry miss.
    pub guarded: Vec<S>,
    /// `(table, column, value)` predicate lists to register on.
    pub predicates: Vec<(S, S, PredicateValue)>,
    /// Tables whose exit list to register on.
    pub exits: Vec<S>,
    /// Whether the statement is a plain count (bounded by the count timeout).
    pub counts: bool,
}

impl<S: AsRef<str>> Deps<S> {
    /// Registers `key` on the predicate and exit lists.
    pub(crate) fn register(&self, ks: &KeySpace, key: &str, regs: &mut Registrations) {
        for (t, c, v) in &self.predicates {
            regs.predicate(ks, t.as_ref(), c.as_ref(), v, key);
        }
        for t in &self.exits {
            regs.exit(ks, t.as_ref(), key);
        }
    }
}

impl Deps<&str> {
    /// The same dependencies, owning their names.
    #[cfg_attr(not(feature = "async"), allow(dead_code))] // the async driver's
    pub(crate) fn to_owned(&self) -> Deps<String> {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_string()).collect();
        Deps {
            tables: owned(&self.tables),
            guarded: owned(&self.guarded),
            predicates: self
                .predicates
                .iter()
                .map(|(t, c, v)| ((*t).to_string(), (*c).to_string(), v.clone()))
                .collect(),
            exits: owned(&self.exits),
            counts: self.counts,
        }
    }
}

/// The dialect of a backend name.
pub(crate) fn dialect_of(backend: &str) -> Dialect {
    match backend {
        "postgres" => Dialect::Postgres,
        "mysql" => Dialect::Mysql,
        _ => Dialect::Sqlite,
    }
}

/// The dependencies of the statement `sql` (whose analysis is `analysis`, see
/// [`crate::sql::analysed`]) with bind values `binds`, whose result rows are made of models whose
/// SQL tables are `row_tables` (model names `model_tables`), plus declared `extra` tables.
/// `Err` if the statement cannot be understood (it must then not be cached).
#[allow(clippy::too_many_arguments)]
pub(crate) fn dependencies<'a>(
    sql: &str,
    analysis: &'a Result<Statement, String>,
    binds: &[BindValue],
    dialect: Dialect,
    row_tables: &[&'a str],
    model_tables: &[&'a str],
    extra: &[&'a str],
    tracking: DependencyTracking,
) -> Result<Deps<&'a str>, String> {
    let (read_tables, counts, shifts) = match analysis {
        Ok(Statement::Read {
            tables,
            counts,
            shifts,
        }) => (tables, *counts, *shifts),
        Ok(Statement::Write { .. }) => return Err("the statement writes".into()),
        Ok(Statement::Other) => return Err("not a query".into()),
        Err(e) => return Err(e.clone()),
    };
    let mut deps = Deps {
        counts,
        ..Deps::default()
    };
    for t in read_tables {
        // The most selective usable condition: a row entering the result satisfies all of
        // them, so the one it is registered under catches it.
        let best = t
            .conditions
            .iter()
            .filter_map(|cond| {
                let values =
                    condition_values(&t.table, &cond.column, &cond.values, binds, dialect)?;
                Some((selectivity_rank(&cond.column, values.len()), cond, values))
            })
            .min_by_key(|(rank, _, _)| *rank);
        if let Some((_, cond, values)) = &best {
            for v in values {
                deps.predicates
                    .push((t.table.as_str(), cond.column.as_str(), v.clone()));
            }
        }
        if best.is_none() {
            deps.guarded.push(t.table.as_str());
        } else if shifts || !row_tables.contains(&t.table.as_str()) {
            // Rows the result does not contain can still change it: they are counted or
            // aggregated, or (OFFSET) they are skipped before it.
            deps.exits.push(t.table.as_str());
        }
        deps.tables.push(t.table.as_str());
    }
    for t in extra {
        deps.guarded.push(t);
    }
    // A loaded model whose table the SQL does not name (a view, or a `table!` renamed with
    // `#[sql_name]` without `#[cached(sql_table = ..)]`): the rows that enter the result are
    // written under another name. Guard the model's table, so at least the helpers' writes
    // through that model reach the entry, and say so once.
    for rt in row_tables {
        if !read_tables.iter().any(|t| t.table == *rt) {
            deps.guarded.push(rt);
            deps.tables.push(rt);
            warn_once(
                sql,
                &format!(
                    "a loaded model's table `{rt}` is not named by the SQL: if it is renamed \
                     with #[sql_name], add #[cached(sql_table = \"..\")] to the model; if the \
                     query reads a view, declare its base tables with .tables(&[..])"
                ),
                "cached query guarded at table level: its SQL does not name a loaded model's table",
            );
        }
    }
    deps.tables
        .extend(model_tables.iter().chain(extra).copied());
    match tracking {
        DependencyTracking::Predicates => {}
        DependencyTracking::TableLevel => {
            deps.predicates.clear();
            deps.exits.clear();
            deps.guarded = deps.tables.clone();
        }
        DependencyTracking::FlushListsOnly => {
            deps.predicates.clear();
            deps.exits.clear();
            deps.guarded.retain(|t| extra.contains(t));
        }
    }
    for v in [&mut deps.tables, &mut deps.guarded, &mut deps.exits] {
        v.sort_unstable();
        v.dedup();
    }
    deps.predicates.sort_unstable();
    deps.predicates.dedup();
    Ok(deps)
}

/// How selective a condition on `column` with `n` values probably is (lower is better):
/// primary keys, then foreign keys, then anything else; fewer values first.
fn selectivity_rank(column: &str, n: usize) -> (u8, usize) {
    let kind = if column == "id" {
        0
    } else if column.ends_with("_id") {
        1
    } else {
        2
    };
    (kind, n)
}

/// The canonical values of one condition, or `None` if it cannot be used.
fn condition_values(
    table: &str,
    column: &str,
    operands: &[Operand],
    binds: &[BindValue],
    dialect: Dialect,
) -> Option<Vec<PredicateValue>> {
    let class = columns::class_of(table, column)?;
    if !class.is_comparable() || operands.is_empty() {
        return None;
    }
    // MySQL compares text loosely (collations: case, accents, trailing spaces) and converts
    // between text and numbers (`name = 0` matches 'abc'; `flag = 'true'` means 0): no
    // condition on a text column, and only numeric text against a number column.
    if dialect == Dialect::Mysql && class == ColumnClass::Text {
        return None;
    }
    let text = |s: &str| {
        if dialect == Dialect::Mysql {
            s.trim().parse::<f64>().ok()?;
        }
        PredicateValue::from_text(s)
    };
    let mut out = Vec::with_capacity(operands.len());
    for op in operands {
        let v = match op {
            Operand::Bind(i) => match binds.get(*i)? {
                BindValue::Int(n) => PredicateValue::from_int(*n),
                BindValue::Text(s) => text(s)?,
                BindValue::Other => return None,
            },
            Operand::Literal(Literal::Number(n)) => PredicateValue::from_text(n)?,
            Operand::Literal(Literal::Text(s)) => text(s)?,
            Operand::Literal(Literal::Bool(b)) => PredicateValue::from_bool(*b),
            Operand::Literal(Literal::Null) => return None,
        };
        // A number column compares text as a number: text that is not one cannot match a
        // row, but to be safe it makes the condition unusable rather than guessed.
        if matches!(class, ColumnClass::Int | ColumnClass::Float)
            && matches!(v, PredicateValue::Text(_))
        {
            return None;
        }
        // A float column holds integers exactly only below 2^53: a row's value there could
        // not be canonicalised the same way.
        const EXACT: i64 = 1 << 53;
        if class == ColumnClass::Float
            && matches!(v, PredicateValue::Int(n) if n.unsigned_abs() >= EXACT.unsigned_abs())
        {
            return None;
        }
        out.push(v);
    }
    Some(out)
}

/// Logs, once per distinct SQL text, that a statement is read from the database because its
/// dependencies cannot be told.
pub(crate) fn warn_uncacheable(sql_text: &str, why: &str) {
    warn_once(
        sql_text,
        why,
        "query not cached: its dependencies cannot be read from its SQL",
    );
}

/// Logs `message` at `warn`, once per distinct SQL text and message (up to a bound).
fn warn_once(sql_text: &str, why: &str, message: &'static str) {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static WARNED: OnceLock<Mutex<HashSet<(&'static str, String)>>> = OnceLock::new();
    let mut warned = WARNED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if warned.len() < 1024 && warned.insert((message, sql_text.to_string())) {
        tracing::warn!(sql = sql_text, why, "{message}");
    }
}
