//! What a statement reads and writes, from its SQL text.
//!
//! The analysis uses a real SQL parser ([`sqlparser`]: it knows the three dialects Diesel
//! speaks, tokenizes quoting and comments correctly, and exposes a visitor over every table a
//! statement names, wherever it is nested) rather than string matching, and keeps the result
//! of each distinct SQL text ([`analysed`]), so a cache hit never parses.
//!
//! A read ([`Statement::Read`]) lists every base table it names, anywhere (FROM, JOINs,
//! subqueries, CTE bodies, set-operation arms) and, per table, the equality conditions its
//! rows must satisfy ([`Condition`]): the top-level `AND` conjuncts of a `SELECT`'s `WHERE`
//! (and of its inner joins' `ON`) of the form `col = v`, `v = col` or `col IN (v, ..)`, where
//! `v` is a bind parameter or a literal and `col` resolves to exactly one occurrence of the
//! table. Everything else (ranges, `LIKE`, `OR`, `NOT`, functions, subqueries, `= ANY($1)`,
//! `col = col`, casts) is dropped, which makes the dependency broader, never narrower. A table
//! named more than once, or only inside a subquery, gets no conditions.
//!
//! A write ([`Statement::Write`]) lists the tables it writes (`*` when they cannot be told).
//! Statements that lock rows (`FOR UPDATE`) or create tables (`SELECT .. INTO`) are
//! [`Statement::Other`]: they must not be served from a cache.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{mpsc, Arc, Mutex, OnceLock, RwLock};

use sqlparser::ast::{
    self, BinaryOperator, Expr, FromTable, GroupByExpr, InTarget, JoinConstraint, JoinOperator,
    ObjectName, ObjectType, Query, Select, SelectItem, SetExpr, TableFactor, TableObject,
    TableWithJoins, UnaryOperator, Value,
};
use sqlparser::dialect::{MySqlDialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

/// Stands for "every table" in a write whose tables cannot be told.
pub(crate) const EVERYTHING: &str = "*";
/// How deep the parser may nest before it gives up (a statement nested deeper is not cached).
const RECURSION_LIMIT: usize = 64;
/// The stack of the thread an analysis runs on.
const ANALYSIS_STACK: usize = 256 << 20;
/// Longer statements are not analysed (a write among them invalidates everything).
const MAX_SQL_LEN: usize = 1 << 20;
/// How many distinct statements [`analysed`] keeps per dialect.
const CACHE_CAPACITY: usize = 4096;
/// The name given to the n-th (0-based) `?` placeholder, so its position survives parsing.
const NUMBERED: &str = "?@";

/// The SQL dialect of a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
    Mysql,
}

/// One side of an equality condition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Operand {
    /// The bind parameter at this 0-based position.
    Bind(usize),
    /// A literal written in the SQL.
    Literal(Literal),
}

/// A literal value in the SQL text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Literal {
    /// A number, as written (with a leading `-` if negated).
    Number(String),
    /// A single-quoted string (or double-quoted on MySQL).
    Text(String),
    /// `TRUE` / `FALSE`.
    Bool(bool),
    /// `NULL` (which equals nothing).
    Null,
}

/// `column = v1` (or `column IN (v1, v2, ..)`): every row of the table in the result has
/// one of these values in that column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Condition {
    /// The column, lowercased.
    pub column: String,
    /// The values (several for `IN`).
    pub values: Vec<Operand>,
}

/// A table a read names, with the conditions its rows in the result satisfy.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TableDeps {
    /// The table's name (last part of a qualified name, unquoted, lowercased).
    pub table: String,
    /// Equality conditions (empty when none could be told).
    pub conditions: Vec<Condition>,
}

/// What a statement does.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Statement {
    /// A query that only reads (each table once, in order of first appearance).
    Read {
        tables: Vec<TableDeps>,
        /// Whether it is a plain count (`SELECT COUNT(..) FROM ..` without `GROUP BY`), which
        /// the cache's count timeout bounds.
        counts: bool,
        /// Whether it skips rows (`OFFSET`): a row leaving the skipped part shifts the result
        /// without being in it, or matching any condition's new value.
        shifts: bool,
    },
    /// A statement that writes these tables ([`EVERYTHING`] when unknown).
    Write { tables: Vec<String> },
    /// Anything else: transaction control, settings, DDL that changes no rows, locking reads.
    Other,
}

/// Analyses `sql`, keeping the result: the same text is parsed once per process (up to a
/// bound; the cache is emptied when it fills).
pub(crate) fn analysed(sql: &str, dialect: Dialect) -> Arc<Result<Statement, String>> {
    type Cache = [HashMap<String, Arc<Result<Statement, String>>>; 3];
    static CACHE: OnceLock<RwLock<Cache>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let slot = dialect as usize;
    if let Some(hit) = cache
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(slot)
        .and_then(|m| m.get(sql))
    {
        return Arc::clone(hit);
    }
    let result = Arc::new(analyse(sql, dialect));
    let mut w = cache.write().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = w.get_mut(slot) {
        if m.len() >= CACHE_CAPACITY {
            m.clear();
        }
        m.insert(sql.to_string(), Arc::clone(&result));
    }
    result
}

/// Whether `sql` holds one statement (no `;` but trailing ones; a `;` inside a string literal
/// counts too, which only makes callers more careful).
pub(crate) fn single_statement(sql: &str) -> bool {
    !sql.trim_end().trim_end_matches(';').contains(';')
}

/// Whether `sql` may write: `false` only for statements that certainly do not (`SELECT`,
/// `SHOW`, transaction control, ..), so that reads skip the parser.
pub(crate) fn may_write(sql: &str) -> bool {
    // Several statements (`BEGIN; UPDATE ..; COMMIT`): the first keyword tells nothing.
    if !single_statement(sql) {
        return true;
    }
    !matches!(
        first_keyword(sql).as_str(),
        "select"
            | "values"
            | "show"
            | "describe"
            | "begin"
            | "start"
            | "commit"
            | "end"
            | "rollback"
            | "savepoint"
            | "release"
            | "set"
    )
}

/// How an insert may change existing rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upsert {
    /// A plain insert: only new rows.
    No,
    /// `ON CONFLICT ..`: the conflicting row is updated (or left); `RETURNING` reports it.
    OnConflict,
    /// `REPLACE`, `INSERT OR REPLACE`, `ON DUPLICATE KEY UPDATE`: rows conflicting on any
    /// unique key are deleted or updated, and neither `RETURNING` nor the caller's rows tell
    /// which.
    Replaces,
}

/// How an insert statement may change existing rows. A text check, conservative (a false
/// positive only costs invalidations).
pub(crate) fn upsert_kind(sql: &str) -> Upsert {
    let lower = sql.to_ascii_lowercase();
    if first_keyword(&lower) == "replace"
        || lower.contains("or replace")
        || lower.contains("on duplicate key")
    {
        Upsert::Replaces
    } else if lower.contains("on conflict") {
        Upsert::OnConflict
    } else {
        Upsert::No
    }
}

/// The first keyword of a statement, lowercased (after whitespace, comments and parentheses).
pub(crate) fn first_keyword(sql: &str) -> String {
    let mut rest = sql;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, r)| r);
        } else {
            break;
        }
    }
    rest.chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Analyses one SQL text (several statements: the union of their writes; a read among
/// several statements is an error, it is not cached).
///
/// The parser and the walk over its tree recurse; the analysis runs on a worker thread of
/// its own with a large stack ([`ANALYSIS_STACK`]), so that no statement can overflow the
/// caller's (a debug build's test thread has 2 MiB). It runs once per distinct SQL text.
pub(crate) fn analyse(sql: &str, dialect: Dialect) -> Result<Statement, String> {
    type Job = (String, Dialect, mpsc::Sender<Result<Statement, String>>);
    static WORKER: OnceLock<Option<Mutex<mpsc::Sender<Job>>>> = OnceLock::new();
    let worker = WORKER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sql-analysis".into())
            .stack_size(ANALYSIS_STACK)
            .spawn(move || {
                for (sql, dialect, reply) in rx {
                    let result = std::panic::catch_unwind(|| analyse_here(&sql, dialect))
                        .unwrap_or_else(|_| Err("the SQL analysis failed".into()));
                    let _ = reply.send(result);
                }
            })
            .ok()
            .map(|_| Mutex::new(tx))
    });
    let (reply, answer) = mpsc::channel();
    let sent = worker.as_ref().is_some_and(|w| {
        w.lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((sql.to_string(), dialect, reply))
            .is_ok()
    });
    if !sent {
        return Err("the SQL analysis worker is not running".into());
    }
    answer
        .recv()
        .unwrap_or_else(|_| Err("the SQL analysis failed".into()))
}

fn analyse_here(sql: &str, dialect: Dialect) -> Result<Statement, String> {
    if sql.len() > MAX_SQL_LEN {
        return Err(format!("statement longer than {MAX_SQL_LEN} bytes"));
    }
    let statements = parse(sql, dialect)?;
    let mut results = statements
        .iter()
        .map(|s| statement(s, dialect))
        .collect::<Vec<_>>();
    if results.len() == 1 {
        return Ok(results.remove(0));
    }
    let mut written = Vec::new();
    for r in results {
        if let Statement::Write { tables } = r {
            written.extend(tables);
        }
    }
    if written.is_empty() {
        return Err("several statements in one query".into());
    }
    Ok(Statement::Write {
        tables: unique(written),
    })
}

fn parse(sql: &str, dialect: Dialect) -> Result<Vec<ast::Statement>, String> {
    let d: &dyn sqlparser::dialect::Dialect = match dialect {
        Dialect::Sqlite => &SQLiteDialect {},
        Dialect::Postgres => &PostgreSqlDialect {},
        Dialect::Mysql => &MySqlDialect {},
    };
    let mut tokens = Tokenizer::new(d, sql)
        .tokenize_with_location()
        .map_err(|e| e.to_string())?;
    // `?` placeholders carry no number: name each after its position in the text. On SQLite,
    // numbered and named parameters (`?2`, `$x`, `:x`) renumber the bare `?` after them:
    // then no placeholder's position is trusted.
    let mixed = dialect == Dialect::Sqlite
        && tokens
            .iter()
            .any(|t| matches!(&t.token, Token::Placeholder(p) if p != "?"));
    let mut n = 0usize;
    for t in &mut tokens {
        if let Token::Placeholder(p) = &mut t.token {
            if mixed {
                *p = format!("{NUMBERED}?");
            } else if p == "?" {
                *p = format!("{NUMBERED}{n}");
                n += 1;
            }
        }
    }
    Parser::new(d)
        .with_recursion_limit(RECURSION_LIMIT)
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|e| e.to_string())
}

fn statement(s: &ast::Statement, dialect: Dialect) -> Statement {
    use ast::Statement as S;
    let write = |tables: Vec<String>| Statement::Write {
        tables: unique(tables),
    };
    match s {
        S::Query(q) => {
            if query_writes(q) {
                return write(relations(s));
            }
            if locks_or_creates(q) || names_tables_bare(&q.body) {
                return Statement::Other;
            }
            Statement::Read {
                tables: read_tables(s, q, dialect),
                counts: is_count(q),
                shifts: skips_rows(q),
            }
        }
        S::Insert(i) => write(vec![match &i.table {
            TableObject::TableName(name) => table_name(name),
            _ => EVERYTHING.to_string(),
        }]),
        S::Update(u) => {
            let mut tables = Vec::new();
            base_tables(&u.table, &mut tables);
            write(tables)
        }
        S::Delete(d) => {
            // `DELETE a FROM addons a JOIN ..` names aliases: with a table list, every table
            // of the FROM and USING clauses may be written (a superset).
            let mut tables: Vec<String> = d.tables.iter().map(table_name).collect();
            let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &d.from;
            let using = d.using.iter().flatten();
            if tables.is_empty() {
                for twj in from {
                    base_tables(twj, &mut tables);
                }
            } else {
                for twj in from.iter().chain(using) {
                    base_tables(twj, &mut tables);
                }
            }
            write(tables)
        }
        S::Merge(m) => {
            let mut tables = Vec::new();
            factor_tables(&m.table, &mut tables);
            write(tables)
        }
        S::Truncate(t) => write(t.table_names.iter().map(|t| table_name(&t.name)).collect()),
        S::Drop {
            object_type: ObjectType::Table,
            names,
            ..
        } => write(names.iter().map(table_name).collect()),
        S::AlterTable(a) => write(vec![table_name(&a.name)]),
        // A view's (or materialized view's) contents change: reads of it depend on its name.
        S::CreateView(v) => write(vec![table_name(&v.name)]),
        S::Drop {
            object_type: ObjectType::View | ObjectType::MaterializedView,
            names,
            ..
        } => write(names.iter().map(table_name).collect()),
        S::RefreshMaterializedView(r) => write(vec![table_name(&r.name)]),
        S::RenameTable(r) => write(
            r.iter()
                .flat_map(|r| [table_name(&r.old_name), table_name(&r.new_name)])
                .collect(),
        ),
        S::Explain {
            analyze: true,
            statement,
            ..
        } => match self::statement(statement, dialect) {
            w @ Statement::Write { .. } => w,
            _ => Statement::Other,
        },
        // Their effects cannot be told from the text.
        S::Call(_) | S::Copy { .. } | S::LoadData { .. } | S::Execute { .. } => {
            write(vec![EVERYTHING.to_string()])
        }
        _ => Statement::Other,
    }
}

/// Every table a statement names, as a relation, anywhere in it, in order, with repeats.
fn relations(s: &ast::Statement) -> Vec<String> {
    let mut out = Vec::new();
    let _ = ast::visit_relations(s, |name: &ObjectName| {
        out.push(table_name(name));
        ControlFlow::<()>::Continue(())
    });
    out
}

/// Whether a query contains a data-modifying statement (a CTE's `INSERT`/`UPDATE`/`DELETE`).
fn query_writes(q: &Query) -> bool {
    q.with
        .as_ref()
        .is_some_and(|w| w.cte_tables.iter().any(|c| query_writes(&c.query)))
        || set_expr_writes(&q.body)
}

fn set_expr_writes(e: &SetExpr) -> bool {
    match e {
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => true,
        SetExpr::Query(q) => query_writes(q),
        SetExpr::SetOperation { left, right, .. } => {
            set_expr_writes(left) || set_expr_writes(right)
        }
        SetExpr::Select(_) | SetExpr::Values(_) | SetExpr::Table(_) => false,
    }
}

/// Whether a query locks rows or creates a table: its result must come from the database.
fn locks_or_creates(q: &Query) -> bool {
    if !q.locks.is_empty() || q.for_clause.is_some() {
        return true;
    }
    fn body(e: &SetExpr) -> bool {
        match e {
            SetExpr::Select(s) => s.into.is_some(),
            SetExpr::Query(q) => locks_or_creates(q),
            SetExpr::SetOperation { left, right, .. } => body(left) || body(right),
            _ => false,
        }
    }
    body(&q.body)
}

/// Whether a query body uses `TABLE t`, whose table the relation visitor does not report.
fn names_tables_bare(e: &SetExpr) -> bool {
    match e {
        SetExpr::Table(_) => true,
        SetExpr::Query(q) => names_tables_bare(&q.body),
        SetExpr::SetOperation { left, right, .. } => {
            names_tables_bare(left) || names_tables_bare(right)
        }
        _ => false,
    }
}

/// Whether a query skips rows (`OFFSET`, `LIMIT skip, n`).
fn skips_rows(q: &Query) -> bool {
    match &q.limit_clause {
        Some(ast::LimitClause::LimitOffset { offset, .. }) => offset.is_some(),
        Some(ast::LimitClause::OffsetCommaLimit { .. }) => true,
        None => false,
    }
}

/// Whether a query is `SELECT COUNT(..) FROM ..` without `GROUP BY`.
fn is_count(q: &Query) -> bool {
    let SetExpr::Select(s) = &*q.body else {
        return false;
    };
    let [item] = s.projection.as_slice() else {
        return false;
    };
    let (SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }) = item else {
        return false;
    };
    let Expr::Function(f) = e else {
        return false;
    };
    table_name(&f.name) == "count"
        && matches!(&s.group_by, GroupByExpr::Expressions(g, _) if g.is_empty())
}

/// The tables of a read, each once, with the conditions of those named exactly once at the
/// top level of a `SELECT` (or of a set operation's arm).
fn read_tables(s: &ast::Statement, q: &Query, dialect: Dialect) -> Vec<TableDeps> {
    let all = relations(s);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &all {
        *counts.entry(t.as_str()).or_default() += 1;
    }
    let ctes: Vec<String> = q
        .with
        .iter()
        .flat_map(|w| &w.cte_tables)
        .map(|c| ident(&c.alias.name))
        .collect();
    let mut conditions: HashMap<String, Vec<Condition>> = HashMap::new();
    // MySQL reads `||` as OR and gives XOR a precedence the parser does not: an `AND` split
    // of such an expression could name a condition MySQL does not apply.
    let misparsed = dialect == Dialect::Mysql
        && ast::visit_expressions(s, |e: &Expr| match e {
            Expr::BinaryOp {
                op: BinaryOperator::StringConcat | BinaryOperator::Xor,
                ..
            } => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        })
        .is_break();
    if !misparsed {
        body_conditions(&q.body, &mut |table, conds| {
            if counts.get(table.as_str()) == Some(&1) && !ctes.contains(&table) {
                conditions.insert(table, conds);
            }
        });
    }
    let mut out: Vec<TableDeps> = Vec::new();
    for t in all {
        if out.iter().any(|d| d.table == t) {
            continue;
        }
        out.push(TableDeps {
            conditions: conditions.remove(&t).unwrap_or_default(),
            table: t,
        });
    }
    out
}

/// Calls `found` with each table occurrence at the top of a query body and its conditions.
fn body_conditions(e: &SetExpr, found: &mut dyn FnMut(String, Vec<Condition>)) {
    match e {
        SetExpr::Select(s) => select_conditions(s, found),
        SetExpr::Query(q) => body_conditions(&q.body, found),
        // A row entering the result of a set operation enters one arm, whose conditions it
        // satisfies.
        SetExpr::SetOperation { left, right, .. } => {
            body_conditions(left, found);
            body_conditions(right, found);
        }
        _ => {}
    }
}

/// A base table in a `SELECT`'s FROM clause.
struct Occurrence {
    table: String,
    alias: Option<String>,
    conditions: Vec<Condition>,
}

/// The FROM clause of one `SELECT`, flattened.
#[derive(Default)]
struct Scope {
    tables: Vec<Occurrence>,
    /// Whether something other than a base table is in the FROM clause (a derived table, a
    /// function): unqualified columns cannot be resolved.
    opaque: bool,
    /// Whether an outer join is in the FROM clause: `ON` conditions do not filter rows then.
    outer: bool,
    /// Inner joins' `ON` conditions (filters, like WHERE, when no join is outer).
    on: Vec<Expr>,
}

fn select_conditions(s: &Select, found: &mut dyn FnMut(String, Vec<Condition>)) {
    let mut scope = Scope::default();
    for twj in &s.from {
        scope.add(twj);
    }
    let mut conjuncts = Vec::new();
    if let Some(w) = &s.selection {
        split_and(w, &mut conjuncts);
    }
    let on = std::mem::take(&mut scope.on);
    if !scope.outer {
        for e in &on {
            split_and(e, &mut conjuncts);
        }
    }
    for c in conjuncts {
        if let Some((qualifier, column, values)) = equality(c) {
            if let Some(i) = scope.resolve(qualifier.as_deref()) {
                scope.tables[i]
                    .conditions
                    .push(Condition { column, values });
            }
        }
    }
    for occ in scope.tables {
        found(occ.table, occ.conditions);
    }
}

impl Scope {
    fn add(&mut self, twj: &TableWithJoins) {
        self.factor(&twj.relation);
        for j in &twj.joins {
            self.factor(&j.relation);
            match &j.join_operator {
                JoinOperator::Join(c) | JoinOperator::Inner(c) => {
                    if let JoinConstraint::On(e) = c {
                        self.on.push(e.clone());
                    }
                }
                JoinOperator::CrossJoin(_) => {}
                _ => self.outer = true,
            }
        }
    }

    fn factor(&mut self, f: &TableFactor) {
        match f {
            TableFactor::Table {
                name, alias, args, ..
            } if args.is_none() => self.tables.push(Occurrence {
                table: table_name(name),
                alias: alias.as_ref().map(|a| ident(&a.name)),
                conditions: Vec::new(),
            }),
            TableFactor::NestedJoin {
                table_with_joins,
                alias: None,
            } => self.add(table_with_joins),
            _ => self.opaque = true,
        }
    }

    /// The occurrence a column qualified by `qualifier` (or unqualified) belongs to.
    fn resolve(&self, qualifier: Option<&str>) -> Option<usize> {
        let mut matches = self
            .tables
            .iter()
            .enumerate()
            .filter(|(_, o)| match qualifier {
                Some(q) => o.alias.as_deref().map_or(o.table == q, |a| a == q),
                None => true,
            });
        let (i, _) = matches.next()?;
        if matches.next().is_some() || (qualifier.is_none() && self.opaque) {
            return None;
        }
        Some(i)
    }
}

/// The top-level `AND` conjuncts of `e`.
fn split_and<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_and(left, out);
            split_and(right, out);
        }
        Expr::Nested(inner) => split_and(inner, out),
        _ => out.push(e),
    }
}

/// `(qualifier, column, values)` of a conjunct `col = v`, `v = col` or `col IN (v, ..)`.
fn equality(e: &Expr) -> Option<(Option<String>, String, Vec<Operand>)> {
    match e {
        Expr::Nested(inner) => equality(inner),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            if let (Some((q, c)), Some(v)) = (column(left), operand(right)) {
                Some((q, c, vec![v]))
            } else if let (Some(v), Some((q, c))) = (operand(left), column(right)) {
                Some((q, c, vec![v]))
            } else {
                None
            }
        }
        Expr::In {
            expr,
            target: InTarget::List(list),
            negated: false,
            ..
        } if !list.is_empty() => {
            let (q, c) = column(expr)?;
            let values = list.iter().map(operand).collect::<Option<Vec<_>>>()?;
            Some((q, c, values))
        }
        _ => None,
    }
}

/// `(qualifier, column)` of a column reference.
fn column(e: &Expr) -> Option<(Option<String>, String)> {
    match e {
        Expr::Nested(inner) => column(inner),
        Expr::Identifier(c) => Some((None, ident(c))),
        Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
            let n = parts.len();
            Some((Some(ident(&parts[n - 2])), ident(&parts[n - 1])))
        }
        _ => None,
    }
}

/// A bind parameter or literal.
fn operand(e: &Expr) -> Option<Operand> {
    match e {
        Expr::Nested(inner) => operand(inner),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match operand(expr)? {
            Operand::Literal(Literal::Number(n)) if !n.starts_with('-') => {
                Some(Operand::Literal(Literal::Number(format!("-{n}"))))
            }
            _ => None,
        },
        Expr::Value(v) => match &v.value {
            Value::Placeholder(p) => placeholder(p).map(Operand::Bind),
            Value::Number(n, _) => Some(Operand::Literal(Literal::Number(n.to_string()))),
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => {
                Some(Operand::Literal(Literal::Text(s.clone())))
            }
            Value::Boolean(b) => Some(Operand::Literal(Literal::Bool(*b))),
            Value::Null => Some(Operand::Literal(Literal::Null)),
            _ => None,
        },
        _ => None,
    }
}

/// The 0-based position of a placeholder: a numbered `?`, `$n` or `?n`.
fn placeholder(p: &str) -> Option<usize> {
    if let Some(n) = p.strip_prefix(NUMBERED) {
        return n.parse().ok();
    }
    let n: usize = p
        .strip_prefix('$')
        .or_else(|| p.strip_prefix('?'))?
        .parse()
        .ok()?;
    n.checked_sub(1)
}

/// The base tables of a FROM item (the relation and its joins).
fn base_tables(twj: &TableWithJoins, out: &mut Vec<String>) {
    factor_tables(&twj.relation, out);
    for j in &twj.joins {
        factor_tables(&j.relation, out);
    }
}

fn factor_tables(f: &TableFactor, out: &mut Vec<String>) {
    match f {
        TableFactor::Table { name, .. } => out.push(table_name(name)),
        TableFactor::NestedJoin {
            table_with_joins, ..
        } => base_tables(table_with_joins, out),
        _ => out.push(EVERYTHING.to_string()),
    }
}

/// A table's name: the last part of a qualified name, unquoted, lowercased.
fn table_name(name: &ObjectName) -> String {
    match name.0.last().and_then(|p| p.as_ident()) {
        Some(i) => ident(i),
        None => EVERYTHING.to_string(),
    }
}

fn ident(i: &ast::Ident) -> String {
    i.value.to_lowercase()
}

fn unique(mut v: Vec<String>) -> Vec<String> {
    v.sort_unstable();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(sql: &str, d: Dialect) -> Vec<TableDeps> {
        match analyse(sql, d) {
            Ok(Statement::Read { tables, .. }) => tables,
            other => panic!("{sql}: {other:?}"),
        }
    }

    fn written(sql: &str, d: Dialect) -> Vec<String> {
        match analyse(sql, d) {
            Ok(Statement::Write { tables }) => tables,
            other => panic!("{sql}: {other:?}"),
        }
    }

    fn cond(column: &str, values: Vec<Operand>) -> Condition {
        Condition {
            column: column.into(),
            values,
        }
    }

    fn deps(table: &str, conditions: Vec<Condition>) -> TableDeps {
        TableDeps {
            table: table.into(),
            conditions,
        }
    }

    use Operand::Bind;

    #[test]
    fn diesel_sqlite_filter_and_in() {
        let sql = "SELECT `addons`.`id`, `addons`.`val` FROM `addons` WHERE ((`addons`.`val` = ?) \
                   AND (`addons`.`author1_id` IN (?, ?))) ORDER BY `addons`.`id` DESC LIMIT ?";
        assert_eq!(
            read(sql, Dialect::Sqlite),
            vec![deps(
                "addons",
                vec![
                    cond("val", vec![Bind(0)]),
                    cond("author1_id", vec![Bind(1), Bind(2)])
                ]
            )]
        );
    }

    #[test]
    fn diesel_postgres_numbers_dollar_placeholders() {
        let sql =
            r#"SELECT "users"."id" FROM "users" WHERE "users"."name" = $2 AND "users"."id" = $1"#;
        assert_eq!(
            read(sql, Dialect::Postgres),
            vec![deps(
                "users",
                vec![cond("name", vec![Bind(1)]), cond("id", vec![Bind(0)])]
            )]
        );
    }

    #[test]
    fn postgres_any_is_dropped() {
        let sql = r#"SELECT "users"."id" FROM "users" WHERE "users"."id" = ANY($1)"#;
        assert_eq!(read(sql, Dialect::Postgres), vec![deps("users", vec![])]);
    }

    #[test]
    fn inner_join_on_counts_and_each_table_gets_its_own() {
        let sql = "SELECT `users`.`id`, `addons`.`id` FROM (`users` INNER JOIN `addons` ON \
                   (`addons`.`author1_id` = `users`.`id`)) WHERE (`users`.`name` = ?) AND \
                   (`addons`.`val` = ?)";
        assert_eq!(
            read(sql, Dialect::Mysql),
            vec![
                deps("users", vec![cond("name", vec![Bind(0)])]),
                deps("addons", vec![cond("val", vec![Bind(1)])])
            ]
        );
        let sql = "SELECT * FROM users u JOIN addons a ON a.author1_id = u.id AND a.val = 'x'";
        assert_eq!(
            read(sql, Dialect::Sqlite),
            vec![
                deps("users", vec![]),
                deps(
                    "addons",
                    vec![cond(
                        "val",
                        vec![Operand::Literal(Literal::Text("x".into()))]
                    )]
                )
            ]
        );
    }

    #[test]
    fn outer_join_on_is_ignored_where_is_kept() {
        let sql = "SELECT * FROM users LEFT OUTER JOIN addons ON addons.author1_id = users.id \
                   AND addons.val = ? WHERE users.id = ?";
        assert_eq!(
            read(sql, Dialect::Sqlite),
            vec![
                deps("users", vec![cond("id", vec![Bind(1)])]),
                deps("addons", vec![])
            ]
        );
    }

    #[test]
    fn broader_conditions_are_dropped() {
        for w in [
            "id > 3",
            "id = 1 OR id = 2",
            "NOT (id = 1)",
            "name LIKE 'a%'",
            "name IS NULL",
            "id = id",
            "id IN (SELECT 1)",
            "id NOT IN (1, 2)",
            "lower(name) = 'a'",
            "id = CAST(? AS INTEGER)",
            "id = :named",
        ] {
            let sql = format!("SELECT * FROM users WHERE {w}");
            assert_eq!(
                read(&sql, Dialect::Sqlite),
                vec![deps("users", vec![])],
                "{w}"
            );
        }
    }

    #[test]
    fn literals() {
        let sql =
            "SELECT * FROM users WHERE id = -5 AND name = 'o''k' AND flag = TRUE AND x = NULL";
        use Literal::*;
        assert_eq!(
            read(sql, Dialect::Postgres),
            vec![deps(
                "users",
                vec![
                    cond("id", vec![Operand::Literal(Number("-5".into()))]),
                    cond("name", vec![Operand::Literal(Text("o'k".into()))]),
                    cond("flag", vec![Operand::Literal(Bool(true))]),
                    cond("x", vec![Operand::Literal(Null)]),
                ]
            )]
        );
    }

    #[test]
    fn tables_everywhere_and_repeats_get_no_conditions() {
        let sql = "WITH recent AS (SELECT * FROM comments WHERE comments.post_id = 1) \
                   SELECT p.id, (SELECT count(*) FROM votes v WHERE v.post_id = p.id) FROM posts p \
                   JOIN recent r ON r.post_id = p.id WHERE p.id = $1 AND r.id = 3 \
                   AND EXISTS (SELECT 1 FROM tags WHERE tags.id = 2)";
        let t = read(sql, Dialect::Postgres);
        let names: Vec<_> = t.iter().map(|d| d.table.as_str()).collect();
        for n in ["comments", "votes", "posts", "recent", "tags"] {
            assert!(names.contains(&n), "{n} in {names:?}");
        }
        for d in &t {
            if d.table == "posts" {
                assert_eq!(d.conditions, vec![cond("id", vec![Bind(0)])]);
            } else {
                assert!(d.conditions.is_empty(), "{d:?}");
            }
        }
        let self_join = "SELECT * FROM users a JOIN users b ON a.id = b.id WHERE a.id = 1";
        assert_eq!(
            read(self_join, Dialect::Sqlite),
            vec![deps("users", vec![])]
        );
    }

    #[test]
    fn unions_use_each_arms_conditions() {
        let sql = "SELECT id FROM users WHERE id = ? UNION SELECT id FROM addons WHERE val = ?";
        assert_eq!(
            read(sql, Dialect::Sqlite),
            vec![
                deps("users", vec![cond("id", vec![Bind(0)])]),
                deps("addons", vec![cond("val", vec![Bind(1)])])
            ]
        );
    }

    #[test]
    fn unqualified_columns_resolve_only_when_unambiguous() {
        assert_eq!(
            read("SELECT * FROM users WHERE name = ?", Dialect::Sqlite),
            vec![deps("users", vec![cond("name", vec![Bind(0)])])]
        );
        assert_eq!(
            read(
                "SELECT * FROM users, addons WHERE name = ?",
                Dialect::Sqlite
            ),
            vec![deps("users", vec![]), deps("addons", vec![])]
        );
        assert_eq!(
            read(
                "SELECT * FROM public.Users AS U WHERE u.ID = $1",
                Dialect::Postgres
            ),
            vec![deps("users", vec![cond("id", vec![Bind(0)])])]
        );
    }

    #[test]
    fn aggregate_report() {
        let sql =
            "SELECT p.id, count(c.id) AS n FROM posts p LEFT JOIN comments c ON c.post_id = p.id \
                   WHERE p.author_id = ? GROUP BY p.id";
        assert_eq!(
            read(sql, Dialect::Mysql),
            vec![
                deps("posts", vec![cond("author_id", vec![Bind(0)])]),
                deps("comments", vec![])
            ]
        );
    }

    #[test]
    fn mysql_or_and_xor_operators_drop_every_condition() {
        for w in ["id = 1 AND flag || val = 7", "id = 1 AND id = 2 XOR flag"] {
            let sql = format!("SELECT * FROM addons WHERE {w}");
            assert_eq!(
                read(&sql, Dialect::Mysql),
                vec![deps("addons", vec![])],
                "{w}"
            );
        }
    }

    #[test]
    fn sqlite_named_parameters_make_positions_unknown() {
        let sql = "SELECT * FROM users WHERE name = $2 AND id = ?";
        assert_eq!(read(sql, Dialect::Sqlite), vec![deps("users", vec![])]);
    }

    #[test]
    fn offsets_and_bare_tables_are_told() {
        let shifts = |sql: &str| match analyse(sql, Dialect::Sqlite) {
            Ok(Statement::Read { shifts, .. }) => shifts,
            other => panic!("{other:?}"),
        };
        assert!(shifts("SELECT * FROM users WHERE id = ? LIMIT ? OFFSET ?"));
        assert!(!shifts("SELECT * FROM users WHERE id = ? LIMIT ?"));
        assert_eq!(
            analyse(
                "SELECT id FROM users UNION TABLE archived",
                Dialect::Postgres
            ),
            Ok(Statement::Other)
        );
    }

    #[test]
    fn counts_are_told() {
        let counts = |sql: &str| match analyse(sql, Dialect::Sqlite) {
            Ok(Statement::Read { counts, .. }) => counts,
            other => panic!("{other:?}"),
        };
        assert!(counts(
            "SELECT COUNT(*) FROM `addons` WHERE `addons`.`val` = ?"
        ));
        assert!(counts("SELECT count(id) AS n FROM addons"));
        assert!(!counts("SELECT val, COUNT(*) FROM addons GROUP BY val"));
        assert!(!counts("SELECT COUNT(*) FROM addons GROUP BY val"));
        assert!(!counts("SELECT * FROM addons"));
    }

    #[test]
    fn writes() {
        use Dialect::*;
        assert_eq!(
            written("INSERT INTO `users` (`name`) VALUES (?)", Sqlite),
            ["users"]
        );
        assert_eq!(
            written(
                "INSERT OR REPLACE INTO users (id) SELECT id FROM addons",
                Sqlite
            ),
            ["users"]
        );
        assert_eq!(
            written(
                r#"INSERT INTO "users" ("name") VALUES ($1) ON CONFLICT ("id") DO UPDATE SET "name" = excluded."name" RETURNING "users"."id""#,
                Postgres
            ),
            ["users"]
        );
        assert_eq!(
            written("REPLACE INTO users (id) VALUES (1)", Mysql),
            ["users"]
        );
        assert_eq!(
            written("UPDATE users SET name = 'x' WHERE id = 1", Sqlite),
            ["users"]
        );
        assert_eq!(
            written(
                "UPDATE users u JOIN addons a ON a.author1_id = u.id SET a.val = 1",
                Mysql
            ),
            ["addons", "users"]
        );
        assert_eq!(
            written(
                "UPDATE users SET name = a.val FROM addons a WHERE a.id = users.id",
                Postgres
            ),
            ["users"]
        );
        assert_eq!(
            written("DELETE FROM `addons` WHERE `addons`.`id` = ?", Mysql),
            ["addons"]
        );
        assert_eq!(
            written(
                "DELETE FROM users USING addons WHERE addons.id = 1",
                Postgres
            ),
            ["users"]
        );
        assert_eq!(
            written("TRUNCATE TABLE users, addons", Postgres),
            ["addons", "users"]
        );
        assert_eq!(written("DROP TABLE IF EXISTS users", Sqlite), ["users"]);
        assert_eq!(
            written("ALTER TABLE users ADD COLUMN x INT", Sqlite),
            ["users"]
        );
        assert_eq!(
            written(
                "WITH d AS (DELETE FROM users WHERE id = 1 RETURNING id) SELECT * FROM d",
                Postgres
            ),
            ["d", "users"]
        );
        assert_eq!(written("CALL refresh()", Mysql), [EVERYTHING]);
        assert_eq!(
            written(
                "DELETE a FROM addons a JOIN users u ON u.id = a.author1_id",
                Mysql
            ),
            ["a", "addons", "users"]
        );
        assert_eq!(written("REFRESH MATERIALIZED VIEW mv", Postgres), ["mv"]);
        assert_eq!(
            written("CREATE OR REPLACE VIEW v AS SELECT 1", Postgres),
            ["v"]
        );
        assert_eq!(written("DROP VIEW v", Postgres), ["v"]);
        assert_eq!(
            written("UPDATE users SET name = 'a'; DELETE FROM addons", Sqlite),
            ["addons", "users"]
        );
    }

    #[test]
    fn other_statements() {
        for (sql, d) in [
            ("BEGIN", Dialect::Sqlite),
            ("COMMIT", Dialect::Postgres),
            ("SAVEPOINT diesel_savepoint_1", Dialect::Mysql),
            (
                "SELECT * FROM users WHERE id = 1 FOR UPDATE",
                Dialect::Postgres,
            ),
            ("SELECT * INTO copy FROM users", Dialect::Postgres),
            ("CREATE TABLE t (id INT)", Dialect::Sqlite),
        ] {
            assert_eq!(analyse(sql, d), Ok(Statement::Other), "{sql}");
        }
    }

    #[test]
    fn garbage_and_deep_nesting_are_errors_not_panics() {
        assert!(analyse("SELEC * FORM", Dialect::Sqlite).is_err());
        assert!(analyse("SELECT 1; SELECT 2", Dialect::Sqlite).is_err());
        let deep = format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(analyse(&deep, Dialect::Postgres).is_err());
    }

    #[test]
    fn long_and_chains() {
        let deep_and = format!(
            "SELECT * FROM users WHERE {}",
            vec!["id = 1"; 60_000].join(" AND ")
        );
        let t = read(&deep_and, Dialect::Postgres);
        assert_eq!(t[0].conditions.len(), 60_000);
    }

    #[test]
    fn upserts_are_told() {
        assert_eq!(
            upsert_kind(
                r#"INSERT INTO "users" ("id") VALUES ($1) ON CONFLICT ("id") DO UPDATE SET "id" = excluded."id""#
            ),
            Upsert::OnConflict
        );
        for sql in [
            "INSERT INTO `users` (`id`) VALUES (?) ON DUPLICATE KEY UPDATE `id` = VALUES(`id`)",
            "REPLACE INTO `users` (`id`) VALUES (?)",
            "INSERT OR REPLACE INTO `users` (`id`) VALUES (?)",
        ] {
            assert_eq!(upsert_kind(sql), Upsert::Replaces, "{sql}");
        }
        assert_eq!(
            upsert_kind("INSERT INTO `users` (`id`) VALUES (?)"),
            Upsert::No
        );
    }

    #[test]
    fn may_write_is_false_only_for_reads() {
        assert!(!may_write("  /* c */ SELECT 1"));
        assert!(!may_write("(SELECT 1) UNION (SELECT 2)"));
        assert!(may_write("-- x\nUPDATE users SET id = 1"));
        assert!(may_write("WITH d AS (DELETE FROM users) SELECT 1"));
        assert!(may_write("EXPLAIN ANALYZE DELETE FROM users"));
        assert!(may_write("BEGIN; UPDATE users SET name = 'x'; COMMIT"));
        assert!(may_write("SELECT 1; DELETE FROM users"));
        assert!(!may_write("SELECT 1;"));
    }

    #[test]
    fn analysed_keeps_results() {
        let a = analysed("SELECT * FROM users WHERE id = ?", Dialect::Sqlite);
        let b = analysed("SELECT * FROM users WHERE id = ?", Dialect::Sqlite);
        assert!(Arc::ptr_eq(&a, &b));
    }
}
