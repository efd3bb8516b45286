//! `CachedConnection::insert` on MySQL, which has no `RETURNING`: the statement runs, then
//! its rows are read back, on the same connection and in the same transaction (a savepoint
//! inside an open one), by the ids `LAST_INSERT_ID()` tells.
//!
//! `LAST_INSERT_ID()` is the id generated for the *first* row of the connection's last
//! `INSERT` that generated one. The ids of the rows of one `INSERT .. VALUES` are that id
//! plus multiples of `@@auto_increment_increment`, with no gap: the number of rows of such a
//! statement (a "simple insert" to InnoDB) is known before it runs, and InnoDB reserves all
//! of its ids at once under every `innodb_autoinc_lock_mode` (0, 1 and 2; MariaDB as well).
//! Only "bulk inserts" (`INSERT .. SELECT`, `LOAD DATA`) can get interleaved ids under mode 2,
//! and "mixed-mode" inserts (some ids given) use part of the reserved range; both are
//! refused here. So the rows are read with `pk BETWEEN first AND last` (an `IN` list when the
//! increment is not 1), and the read must find exactly as many rows as the statement
//! inserted, or the whole is rolled back and refused.
//!
//! What this relies on, checked on every insert:
//!
//! - the statement is a plain `INSERT .. VALUES` (not `REPLACE`, `IGNORE`, `ON DUPLICATE KEY
//!   UPDATE` or `INSERT .. SELECT`): read from its SQL before it runs;
//! - the table's primary key is one AUTO_INCREMENT integer column: read from
//!   `information_schema.COLUMNS` once per process, server, database and table (restart the
//!   process after changing a table's primary key);
//! - the statement leaves that column to the database (it does not name it, or gives
//!   `DEFAULT` in every row), so every row got a generated id and `LAST_INSERT_ID()` is this
//!   statement's, not an older one's.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use diesel::dsl::sql;
use diesel::expression::SqlLiteral;
use diesel::mysql::MysqlConnection;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Unsigned};
use diesel::{Connection, QueryResult, RunQueryDsl};
use sqlparser::ast::{self, Expr, SetExpr, TableObject};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;

use crate::error::{Error, InsertRefusal};

/// How many tables' primary keys are remembered (per server and database).
const MAX_KEYS: usize = 4096;

/// What the SQL of an `INSERT .. VALUES` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InsertForm {
    /// The schema (database) named with the table, if any.
    pub schema: Option<String>,
    /// The table, as written (MySQL table names may be case-sensitive).
    pub table: String,
    /// The columns named, lowercased.
    pub columns: Vec<String>,
    /// Per row, per column: whether the value is `DEFAULT`.
    pub defaults: Vec<Vec<bool>>,
}

impl InsertForm {
    /// Whether the statement gives `column` a value in some row.
    fn gives(&self, column: &str) -> bool {
        let column = column.to_lowercase();
        match self.columns.iter().position(|c| *c == column) {
            Some(i) => self
                .defaults
                .iter()
                .any(|row| !row.get(i).copied().unwrap_or(false)),
            None => false,
        }
    }
}

fn ident_value(part: &ast::ObjectNamePart) -> Option<String> {
    part.as_ident().map(|i| i.value.clone())
}

/// Reads an `INSERT`'s form from its SQL (as Diesel renders it for MySQL). `Err` with the
/// table if known.
pub(crate) fn insert_form(sql_text: &str) -> Result<InsertForm, (String, InsertRefusal)> {
    let unknown = |r| Err(("?".to_string(), r));
    let Ok(statements) = Parser::new(&MySqlDialect {})
        .with_recursion_limit(64)
        .try_with_sql(sql_text)
        .and_then(|mut p| p.parse_statements())
    else {
        return unknown(InsertRefusal::NotValues);
    };
    let [ast::Statement::Insert(insert)] = statements.as_slice() else {
        return unknown(InsertRefusal::NotValues);
    };
    let TableObject::TableName(name) = &insert.table else {
        return unknown(InsertRefusal::NotValues);
    };
    let parts: Vec<String> = name.0.iter().filter_map(ident_value).collect();
    let (schema, table) = match parts.as_slice() {
        [t] => (None, t.clone()),
        [s, t] => (Some(s.clone()), t.clone()),
        _ => return unknown(InsertRefusal::NotValues),
    };
    let refuse = |r| Err((table.clone(), r));
    if insert.ignore || insert.replace_into || insert.on.is_some() || insert.or.is_some() {
        return refuse(InsertRefusal::Upsert);
    }
    if !insert.assignments.is_empty() || insert.returning.is_some() {
        return refuse(InsertRefusal::NotValues);
    }
    let rows = match insert.source.as_deref().map(|q| q.body.as_ref()) {
        Some(SetExpr::Values(v)) => &v.rows,
        _ => return refuse(InsertRefusal::NotValues),
    };
    let columns = insert
        .columns
        .iter()
        .filter_map(|c| c.0.last().and_then(ident_value))
        .map(|c| c.to_lowercase())
        .collect();
    let defaults = rows
        .iter()
        .map(|row| {
            row.content
                .iter()
                .map(|e| {
                    matches!(e, Expr::Identifier(i)
                        if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default"))
                })
                .collect()
        })
        .collect();
    Ok(InsertForm {
        schema,
        table,
        columns,
        defaults,
    })
}

/// One column of a primary key, as `information_schema` describes it.
#[derive(diesel::QueryableByName)]
pub(crate) struct KeyColumn {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    data_type: String,
    #[diesel(sql_type = Text)]
    extra: String,
}

type KeyCache = HashMap<(String, Option<String>, String), Result<String, InsertRefusal>>;

fn key_cache() -> &'static Mutex<KeyCache> {
    static KEYS: OnceLock<Mutex<KeyCache>> = OnceLock::new();
    KEYS.get_or_init(Default::default)
}

/// The columns of the table's primary key, from `information_schema` (binds: the schema, or
/// NULL for the current database; the table).
pub(crate) const KEY_COLUMNS_SQL: &str =
    "SELECT CAST(COLUMN_NAME AS CHAR) AS name, CAST(DATA_TYPE AS CHAR) AS data_type, \
     CAST(EXTRA AS CHAR) AS extra FROM information_schema.COLUMNS \
     WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? AND COLUMN_KEY = 'PRI'";

/// Resets `LAST_INSERT_ID()`: it keeps the connection's previous value when a statement
/// generates no id (a trigger setting the key, say), so such an insert then reads 0 and is
/// refused instead of naming rows of an earlier insert.
pub(crate) const RESET_LAST_INSERT_ID: &str = "LAST_INSERT_ID(0)";

/// What to select after the insert: the first id, the id increment, and where the table
/// lives (server and database: the key memo's place).
pub(crate) fn ids_selection() -> (
    SqlLiteral<Unsigned<BigInt>>,
    SqlLiteral<Unsigned<BigInt>>,
    SqlLiteral<Text>,
) {
    (
        sql::<Unsigned<BigInt>>("CAST(LAST_INSERT_ID() AS UNSIGNED)"),
        sql::<Unsigned<BigInt>>("CAST(@@auto_increment_increment AS UNSIGNED)"),
        sql::<Text>("CONCAT_WS('/', @@hostname, @@port, DATABASE())"),
    )
}

/// The memo key of a table's primary key: server and database (`place`), schema, table.
fn memo_key(place: &str, form: &InsertForm) -> (String, Option<String>, String) {
    (place.to_string(), form.schema.clone(), form.table.clone())
}

/// The table's auto-increment primary key column (or why it has none), if known already
/// (`place`: server and database).
pub(crate) fn known_key(place: &str, form: &InsertForm) -> Option<Result<String, InsertRefusal>> {
    key_cache()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&memo_key(place, form))
        .cloned()
}

/// Judges the primary key's `columns` ([`KEY_COLUMNS_SQL`]) and remembers the answer.
pub(crate) fn learn_key(
    place: &str,
    form: &InsertForm,
    columns: &[KeyColumn],
) -> Result<String, InsertRefusal> {
    let integer = |t: &str| {
        matches!(
            t.to_ascii_lowercase().as_str(),
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint"
        )
    };
    let known = match columns {
        [c] if integer(&c.data_type) && c.extra.to_ascii_lowercase().contains("auto_increment") => {
            Ok(c.name.clone())
        }
        [_, _, ..] => Err(InsertRefusal::CompositeKey),
        _ => Err(InsertRefusal::NotAutoIncrement),
    };
    let mut keys = key_cache().lock().unwrap_or_else(PoisonError::into_inner);
    if keys.len() >= MAX_KEYS {
        keys.clear();
    }
    keys.insert(memo_key(place, form), known.clone());
    known
}

/// The table's auto-increment primary key column, or why it has none (`place`: server and
/// database, part of the memo's key).
fn auto_increment_key(
    conn: &mut MysqlConnection,
    place: &str,
    form: &InsertForm,
) -> QueryResult<Result<String, InsertRefusal>> {
    if let Some(known) = known_key(place, form) {
        return Ok(known);
    }
    let columns: Vec<KeyColumn> = diesel::sql_query(KEY_COLUMNS_SQL)
        .bind::<Nullable<Text>, _>(form.schema.as_deref())
        .bind::<Text, _>(&form.table)
        .load(conn)?;
    Ok(learn_key(place, form, &columns))
}

/// `` `name` `` (backticks doubled inside).
fn quoted(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The condition on `pk` selecting the ids of `n` rows inserted from `first` on, `step`
/// apart (`None` on overflow).
fn id_condition(pk: &str, first: u64, step: u64, n: usize) -> Option<String> {
    let last = first.checked_add(step.checked_mul(n.checked_sub(1)? as u64)?)?;
    let pk = quoted(pk);
    if step == 1 {
        return Some(format!("{pk} BETWEEN {first} AND {last}"));
    }
    let ids: Vec<String> = (0..n as u64)
        .map(|k| (first + k * step).to_string())
        .collect();
    Some(format!("{pk} IN ({})", ids.join(", ")))
}

/// The refusal as Diesel's error.
pub(crate) fn refused(table: String, refusal: InsertRefusal) -> diesel::result::Error {
    Error::InsertRowsUnknown { table, refusal }.into()
}

/// Runs an `INSERT` (`execute`, whose SQL is `sql_text` and which inserts `expected` rows when
/// Diesel knows) and reads its rows back by id with `load` (given the condition on the ids and
/// the primary key to order by), in one transaction (a savepoint inside an open one), rolled
/// back on any error or refusal.
pub(crate) fn insert_and_read<M>(
    conn: &mut MysqlConnection,
    sql_text: &str,
    expected: Option<usize>,
    execute: impl FnOnce(&mut MysqlConnection) -> QueryResult<usize>,
    load: impl FnOnce(&mut MysqlConnection, SqlLiteral<Bool>, SqlLiteral<BigInt>) -> QueryResult<Vec<M>>,
) -> QueryResult<Vec<M>> {
    if expected == Some(0) {
        // Diesel sends `SELECT 1 FROM t WHERE 1=0` for an empty batch: nothing to read.
        return Ok(Vec::new());
    }
    let form = insert_form(sql_text).map_err(|(t, r)| refused(t, r))?;
    conn.transaction(|c| {
        diesel::select(sql::<BigInt>(RESET_LAST_INSERT_ID)).execute(c)?;
        let inserted = execute(c)?;
        if inserted == 0 {
            return Ok(Vec::new());
        }
        let (first, step, place): (u64, u64, String) =
            diesel::select(ids_selection()).get_result(c)?;
        let pk =
            auto_increment_key(c, &place, &form)?.map_err(|r| refused(form.table.clone(), r))?;
        let (condition, order) = read_back(&form, &pk, first, step, inserted)?;
        let rows = load(c, condition, order)?;
        check_found(&form, inserted, rows.len())?;
        Ok(rows)
    })
}

/// After an insert of `inserted` rows whose first id is `first`, `step` apart, into a table
/// whose auto-increment key is `pk`: the condition selecting them and the order to read them
/// in, or the refusal (the statement gave the key itself, or the ids cannot be told).
pub(crate) fn read_back(
    form: &InsertForm,
    pk: &str,
    first: u64,
    step: u64,
    inserted: usize,
) -> QueryResult<(SqlLiteral<Bool>, SqlLiteral<BigInt>)> {
    if form.gives(pk) {
        return Err(refused(
            form.table.clone(),
            InsertRefusal::ExplicitKey {
                column: pk.to_string(),
            },
        ));
    }
    match id_condition(pk, first, step.max(1), inserted) {
        Some(condition) if first != 0 => Ok((sql::<Bool>(&condition), sql::<BigInt>(&quoted(pk)))),
        _ => Err(refused(
            form.table.clone(),
            InsertRefusal::RowsNotFound { inserted, found: 0 },
        )),
    }
}

/// The rows read back must be exactly the rows inserted.
pub(crate) fn check_found(form: &InsertForm, inserted: usize, found: usize) -> QueryResult<()> {
    if found == inserted {
        return Ok(());
    }
    Err(refused(
        form.table.clone(),
        InsertRefusal::RowsNotFound { inserted, found },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_diesel_inserts() {
        let f = insert_form(
            "INSERT INTO `notes` (`id`, `title`) VALUES (DEFAULT, ?), (?, ?), (default, ?)",
        )
        .unwrap();
        assert_eq!(f.table, "notes");
        assert_eq!(f.schema, None);
        assert_eq!(f.columns, ["id", "title"]);
        assert_eq!(f.defaults, [[true, false], [false, false], [true, false]]);
        assert!(f.gives("id"));
        assert!(f.gives("title"));
        let f = insert_form("INSERT INTO `app`.`Notes` (`title`) VALUES (?)").unwrap();
        assert_eq!(
            (f.schema.as_deref(), f.table.as_str()),
            (Some("app"), "Notes")
        );
        assert!(!f.gives("id"));
        let f = insert_form("INSERT INTO `notes` (`ID`, `title`) VALUES (DEFAULT, ?)").unwrap();
        assert!(!f.gives("id"));
        let f = insert_form("INSERT INTO `notes` () VALUES ()").unwrap();
        assert!(!f.gives("id"));
        assert_eq!(f.defaults.len(), 1);
    }

    #[test]
    fn refuses_what_it_cannot_read_back() {
        for (sql_text, refusal) in [
            (
                "REPLACE INTO `notes` (`title`) VALUES (?)",
                InsertRefusal::Upsert,
            ),
            (
                "INSERT IGNORE INTO `notes` (`title`) VALUES (?)",
                InsertRefusal::Upsert,
            ),
            (
                "INSERT INTO `notes` (`title`) VALUES (?) ON DUPLICATE KEY UPDATE `title` = ?",
                InsertRefusal::Upsert,
            ),
            (
                "INSERT INTO `notes` (`title`) SELECT `name` FROM `users`",
                InsertRefusal::NotValues,
            ),
            (
                "INSERT INTO `notes` SET `title` = ?",
                InsertRefusal::NotValues,
            ),
            ("SELECT 1 FROM `notes` WHERE 1=0", InsertRefusal::NotValues),
        ] {
            assert_eq!(
                insert_form(sql_text).map_err(|(_, r)| r),
                Err(refusal),
                "{sql_text}"
            );
        }
    }

    #[test]
    fn id_conditions() {
        assert_eq!(id_condition("id", 7, 1, 3).unwrap(), "`id` BETWEEN 7 AND 9");
        assert_eq!(
            id_condition("i`d", 7, 10, 3).unwrap(),
            "`i``d` IN (7, 17, 27)"
        );
        assert_eq!(id_condition("id", u64::MAX, 1, 2), None);
        assert_eq!(id_condition("id", 1, 1, 0), None);
    }
}
