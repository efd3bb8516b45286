//! Writes made outside the write helpers: plain Diesel (`diesel::update(..).execute(&mut
//! conn)`, Diesel's own `save_changes`), raw `sql_query("UPDATE ..")`, or statements run on
//! the wrapped connection through `*conn`.
//!
//! The cached connection's observer sees every statement through Diesel's instrumentation.
//! A statement that writes is recognised from its SQL ([`crate::sql`]); the rows it wrote are
//! unknown, so the tables it writes are invalidated whole (their versions bumped) once it has
//! committed: right after the statement outside a transaction, after the outermost COMMIT
//! inside one (dropped on ROLLBACK; a savepoint's own part dropped on its rollback). Reads
//! inside that transaction bypass the cache for those tables. Each such write is counted in
//! the `plain_writes` statistic and logged once per distinct SQL text at `warn` (at `error`
//! with strict writes, which refuses them when they go through the cached connection itself).
//! A write whose tables cannot be told (SQL the parser does not understand) invalidates the
//! whole key space.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use caching_core::Invalidation;
use diesel::connection::InstrumentationEvent;

use crate::caches::CacheSet;
use crate::sql::{self, Dialect, Statement, EVERYTHING};

/// How many distinct SQL texts are remembered as already warned about.
const MAX_WARNED: usize = 1024;

/// What the observer knows of plain writes on one connection.
pub(crate) struct PlainWrites {
    caches: CacheSet,
    dialect: Dialect,
    helpers: u32,
    strict: bool,
    current: Option<BTreeSet<String>>,
    levels: Vec<BTreeSet<String>>,
    /// Transactions and savepoints opened with raw SQL (`BEGIN`, `SAVEPOINT` run as
    /// statements, which Diesel's transaction manager does not know about).
    raw: Vec<BTreeSet<String>>,
    /// Diesel announced a transaction event: the next statement is its own `BEGIN`,
    /// `COMMIT`, `SAVEPOINT`, .., not a raw one.
    diesel_statement_next: bool,
    /// Tables the running write helper's statements write (a helper invalidates its model's
    /// table precisely; any other table it writes, whole).
    helper_tables: BTreeSet<String>,
    committing: Option<BTreeSet<String>>,
    warned: HashSet<String>,
}

impl PlainWrites {
    pub(crate) fn new(caches: CacheSet, dialect: Dialect) -> Self {
        let strict = caches.all().iter().any(|c| c.config().strict_writes);
        PlainWrites {
            caches,
            dialect,
            helpers: 0,
            strict,
            current: None,
            levels: Vec::new(),
            raw: Vec::new(),
            diesel_statement_next: false,
            helper_tables: BTreeSet::new(),
            committing: None,
            warned: HashSet::new(),
        }
    }

    fn run(&mut self, tables: BTreeSet<String>) {
        if tables.is_empty() {
            return;
        }
        for cache in self.caches.all() {
            if tables.contains(EVERYTHING) {
                let _ = cache.invalidate_everything();
                continue;
            }
            // Failures are queued, retried, logged and counted inside.
            let _ = cache.invalidate(&plain_invalidation(&tables));
        }
    }

    fn settle(&mut self) {
        if let Some(tables) = self.committing.take() {
            self.run(tables);
        }
    }

    /// The innermost open transaction level (raw SQL ones first), if any.
    fn level(&mut self) -> Option<&mut BTreeSet<String>> {
        if self.raw.is_empty() {
            self.levels.last_mut()
        } else {
            self.raw.last_mut()
        }
    }

    /// Tracks a transaction-control statement run as raw SQL.
    fn raw_control(&mut self, control: RawControl) {
        match control {
            RawControl::Begin => self.raw.push(BTreeSet::new()),
            RawControl::Savepoint if !self.raw.is_empty() => self.raw.push(BTreeSet::new()),
            RawControl::Release if self.raw.len() > 1 => {
                let top = self.raw.pop().unwrap_or_default();
                if let Some(parent) = self.raw.last_mut() {
                    parent.extend(top);
                }
            }
            RawControl::RollbackTo => {
                // Back to a savepoint (which stays): what was written since is undone.
                let n = self.raw.len();
                if n > 1 {
                    self.raw[n - 1].clear();
                }
            }
            RawControl::Rollback => self.raw.clear(),
            RawControl::Commit if !self.raw.is_empty() => {
                let all = self.raw.drain(..).flatten().collect::<BTreeSet<_>>();
                self.committing
                    .get_or_insert_with(BTreeSet::new)
                    .extend(all);
            }
            _ => {}
        }
    }

    /// Whether a transaction opened with raw SQL is open.
    fn in_raw_transaction(&self) -> bool {
        !self.raw.is_empty()
    }

    fn warn_once(&mut self, sql: &str, tables: &BTreeSet<String>) {
        if self.warned.len() >= MAX_WARNED || !self.warned.insert(sql.to_string()) {
            return;
        }
        if self.strict {
            tracing::error!(sql, ?tables, "write on the wrapped connection outside the write helpers (strict writes): its tables are invalidated whole");
        } else {
            tracing::warn!(sql, ?tables, "write outside the write helpers: its tables are invalidated whole once it commits (use the write helpers for precise invalidation)");
        }
    }
}

/// The statement text of an instrumentation event's query (without Diesel's bind comment).
pub(crate) fn statement_text(query: &dyn std::fmt::Display) -> String {
    let mut text = query.to_string();
    if let Some(i) = text.rfind(" -- binds: ") {
        text.truncate(i);
    }
    text
}

/// The tables a statement writes, if it writes (`*` when it writes tables it cannot name).
pub(crate) fn written_tables(sql_text: &str, dialect: Dialect) -> Option<BTreeSet<String>> {
    if !sql::may_write(sql_text) {
        return None;
    }
    match &*sql::analysed(sql_text, dialect) {
        Ok(Statement::Write { tables }) => Some(tables.iter().cloned().collect()),
        Ok(_) => None,
        // SQL the parser cannot read that is not a plain read (checked above) may write
        // anything.
        Err(_) => Some(BTreeSet::from([EVERYTHING.to_string()])),
    }
}

/// The tables the write helper's statements wrote since the last call.
pub(crate) fn take_helper_tables(state: &Mutex<PlainWrites>) -> BTreeSet<String> {
    std::mem::take(
        &mut state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .helper_tables,
    )
}

/// Whether a write helper's statement is running.
pub(crate) fn in_helper(state: &Mutex<PlainWrites>) -> bool {
    state.lock().unwrap_or_else(|e| e.into_inner()).helpers > 0
}

/// Handles one instrumentation event.
pub(crate) fn observe(state: &Mutex<PlainWrites>, event: &InstrumentationEvent<'_>) {
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    match event {
        InstrumentationEvent::StartQuery { query, .. } => {
            s.current = None;
            let diesel_statement = std::mem::take(&mut s.diesel_statement_next);
            let text = statement_text(query);
            if s.helpers > 0 {
                if let Some(tables) = written_tables(&text, s.dialect) {
                    s.helper_tables.extend(tables);
                }
                return;
            }
            if let Some(control) = RawControl::of(&text).filter(|_| !diesel_statement) {
                s.raw_control(control);
                return;
            }
            if let Some(tables) = written_tables(&text, s.dialect) {
                s.warn_once(&text, &tables);
                s.current = Some(tables);
            }
        }
        InstrumentationEvent::FinishQuery { .. } => {
            if let Some(tables) = s.current.take() {
                // Outside a transaction, even a failed statement may have written (the first
                // statements of a failed batch committed); inside one, what it may have
                // written is dropped or kept with the transaction.
                match s.level() {
                    Some(level) => level.extend(tables),
                    None => s.run(tables),
                }
            }
            // The COMMIT (or whatever ran after it) has finished.
            s.settle();
        }
        InstrumentationEvent::BeginTransaction { depth, .. } => {
            s.diesel_statement_next = true;
            s.settle();
            let keep = depth.get().saturating_sub(1) as usize;
            s.levels.truncate(keep);
            while s.levels.len() < depth.get() as usize {
                s.levels.push(BTreeSet::new());
            }
        }
        InstrumentationEvent::CommitTransaction { depth, .. } => {
            s.diesel_statement_next = true;
            // Sent before the COMMIT runs: the invalidation waits for its end.
            let top = s.levels.pop().unwrap_or_default();
            if depth.get() > 1 {
                if let Some(parent) = s.levels.last_mut() {
                    parent.extend(top);
                }
            } else {
                s.committing.get_or_insert_with(BTreeSet::new).extend(top);
            }
        }
        InstrumentationEvent::RollbackTransaction { .. } => {
            s.diesel_statement_next = true;
            s.levels.pop();
        }
        _ => {}
    }
}

/// Runs what a finished COMMIT owes, if the observer did not see its end.
pub(crate) fn settle(state: &Mutex<PlainWrites>) {
    state.lock().unwrap_or_else(|e| e.into_inner()).settle();
}

/// Whether strict writes are on (any cache of the connection's set asks for them).
pub(crate) fn strict(state: &Mutex<PlainWrites>) -> bool {
    state.lock().unwrap_or_else(|e| e.into_inner()).strict
}

/// Whether a transaction opened with raw SQL (`BEGIN` run as a statement) is open: the cache
/// treats it like any transaction begun behind its back.
pub(crate) fn in_raw_transaction(state: &Mutex<PlainWrites>) -> bool {
    state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .in_raw_transaction()
}

/// The invalidation a plain write of `tables` owes: each table whole, marked as a plain
/// write (blocking and async connections).
pub(crate) fn plain_invalidation(tables: &BTreeSet<String>) -> Invalidation {
    let mut inv = Invalidation::new();
    for t in tables {
        inv.whole_table(t);
    }
    inv.plain_write();
    inv
}

/// A transaction-control statement run as raw SQL (not by Diesel's transaction manager),
/// which blocking and async connections track to hold a raw transaction's invalidations
/// until its `COMMIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawControl {
    /// `BEGIN`, `START TRANSACTION`.
    Begin,
    /// `SAVEPOINT name`.
    Savepoint,
    /// `RELEASE [SAVEPOINT] name`.
    Release,
    /// `ROLLBACK [WORK] TO [SAVEPOINT] name`.
    RollbackTo,
    /// `ROLLBACK`, `ABORT`.
    Rollback,
    /// `COMMIT`, `END`.
    Commit,
}

impl RawControl {
    /// What `sql_text` is, if it is one transaction-control statement.
    pub(crate) fn of(sql_text: &str) -> Option<RawControl> {
        if !crate::sql::single_statement(sql_text) {
            return None;
        }
        let lower = sql_text.trim_start().to_ascii_lowercase();
        let mut words = lower
            .split(|c: char| c.is_whitespace() || c == ';')
            .filter(|w| !w.is_empty());
        let first = words.next().unwrap_or_default();
        let rest: Vec<&str> = words.take(3).collect();
        Some(match first {
            "begin" => RawControl::Begin,
            "start" if rest.first() == Some(&"transaction") => RawControl::Begin,
            "savepoint" => RawControl::Savepoint,
            "release" => RawControl::Release,
            "rollback" | "abort" if rest.contains(&"to") => RawControl::RollbackTo,
            "rollback" | "abort" => RawControl::Rollback,
            "commit" | "end" => RawControl::Commit,
            _ => return None,
        })
    }
}

/// Whether the open transaction wrote one of `tables` through plain writes.
pub(crate) fn dirties(state: &Mutex<PlainWrites>, tables: &[&str]) -> bool {
    let s = state.lock().unwrap_or_else(|e| e.into_inner());
    s.levels
        .iter()
        .chain(&s.raw)
        .any(|l| l.contains(EVERYTHING) || tables.iter().any(|t| l.contains(*t)))
}

/// Marks a write helper's statements: the helper invalidates them precisely.
pub(crate) struct HelperScope(Arc<Mutex<PlainWrites>>);

impl HelperScope {
    pub(crate) fn enter(state: &Arc<Mutex<PlainWrites>>) -> Self {
        state.lock().unwrap_or_else(|e| e.into_inner()).helpers += 1;
        HelperScope(state.clone())
    }
}

impl Drop for HelperScope {
    fn drop(&mut self) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.helpers = s.helpers.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::RawControl;

    #[test]
    fn raw_control_statements_are_told_apart() {
        for (sql, want) in [
            ("BEGIN", Some(RawControl::Begin)),
            ("begin transaction;", Some(RawControl::Begin)),
            ("START TRANSACTION READ ONLY", Some(RawControl::Begin)),
            ("  SAVEPOINT s1", Some(RawControl::Savepoint)),
            ("RELEASE SAVEPOINT s1", Some(RawControl::Release)),
            ("ROLLBACK TO SAVEPOINT s1", Some(RawControl::RollbackTo)),
            ("rollback work to s1", Some(RawControl::RollbackTo)),
            ("ROLLBACK", Some(RawControl::Rollback)),
            ("ABORT", Some(RawControl::Rollback)),
            ("COMMIT", Some(RawControl::Commit)),
            ("END", Some(RawControl::Commit)),
            ("START SLAVE", None),
            ("UPDATE users SET name = 'begin'", None),
            ("BEGIN; UPDATE users SET id = 2; COMMIT", None),
        ] {
            assert_eq!(RawControl::of(sql), want, "{sql}");
        }
    }
}
