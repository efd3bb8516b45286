//! Database fixtures of the Diesel suites: the seed's `users` / `addons` schema, an isolated
//! database per test (SQLite in memory, a schema per test on PostgreSQL, a database per test
//! on MySQL), and a statement counter built on Diesel's instrumentation, which proves that a
//! read came from the cache (zero statements reached the database).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use caching_diesel::prelude::*;
use caching_diesel::{Cache, CacheBuilder, CacheConnection, CacheSet, CachedConnection};
use diesel::connection::{Instrumentation, InstrumentationEvent};
use serde::{Deserialize, Serialize};

/// The seed's schema.
pub mod schema {
    diesel::table! {
        /// Users.
        users (id) {
            /// Primary key.
            id -> Integer,
            /// Display name.
            name -> Text,
        }
    }
    diesel::table! {
        /// Add-ons, each with two authors.
        addons (id) {
            /// Primary key.
            id -> Integer,
            /// A value.
            val -> Integer,
            /// First author.
            author1_id -> Integer,
            /// Second author.
            author2_id -> Integer,
        }
    }
    diesel::joinable!(addons -> users (author1_id));
    diesel::allow_tables_to_appear_in_same_query!(users, addons);
}

use schema::{addons, users};

/// A user.
#[derive(
    Queryable,
    QueryableByName,
    Selectable,
    Identifiable,
    AsChangeset,
    Insertable,
    Cached,
    Serialize,
    Deserialize,
    Debug,
    Clone,
    PartialEq,
)]
#[diesel(table_name = users)]
pub struct User {
    /// Primary key.
    pub id: i32,
    /// Name.
    pub name: String,
}

/// An add-on: two foreign keys to users (the second declared for the cache only).
#[derive(
    Queryable,
    QueryableByName,
    Selectable,
    Identifiable,
    Associations,
    AsChangeset,
    Insertable,
    Cached,
    Serialize,
    Deserialize,
    Debug,
    Clone,
    PartialEq,
)]
#[diesel(table_name = addons, belongs_to(User, foreign_key = author1_id))]
#[cached(belongs_to(User, foreign_key = author2_id))]
pub struct Addon {
    /// Primary key.
    pub id: i32,
    /// A value.
    pub val: i32,
    /// First author.
    pub author1_id: i32,
    /// Second author.
    pub author2_id: i32,
}

/// Counts the statements that reach the database.
#[derive(Debug, Clone, Default)]
pub struct StatementCounter(Arc<AtomicUsize>);

impl StatementCounter {
    /// Statements since the last [`take`](StatementCounter::take).
    pub fn take(&self) -> usize {
        self.0.swap(0, Ordering::SeqCst)
    }
}

impl Instrumentation for StatementCounter {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        if let InstrumentationEvent::StartQuery { .. } = event {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Which cache backend a suite runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// In-process.
    LocMem,
    /// The memcached of `MEMCACHED_URL`.
    Memcached,
    /// The Redis of `REDIS_URL`.
    #[cfg(feature = "redis")]
    Redis,
}

impl BackendKind {
    /// Every backend this build has: locmem, memcached, and Redis with the `redis` feature.
    /// Tests that loop over backends use it, so a new backend joins them.
    pub fn all() -> Vec<BackendKind> {
        vec![
            BackendKind::LocMem,
            BackendKind::Memcached,
            #[cfg(feature = "redis")]
            BackendKind::Redis,
        ]
    }

    /// The backend's name, as [`Backend::name`](caching_diesel::core::Backend::name) says it.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::LocMem => "locmem",
            BackendKind::Memcached => "memcached",
            #[cfg(feature = "redis")]
            BackendKind::Redis => "redis",
        }
    }
}

/// A database the suites can run on.
pub trait TestDb: CacheConnection + Sized {
    /// Name for skip lines.
    const NAME: &'static str;
    /// A fresh, isolated database holding the seed's fixture, or `None` (skip) when the
    /// server is not configured.
    fn fresh(test: &str) -> Option<Self>;
}

const DDL: [&str; 2] = [
    "CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL)",
    "CREATE TABLE addons (id INTEGER PRIMARY KEY, val INTEGER NOT NULL, author1_id INTEGER NOT NULL, author2_id INTEGER NOT NULL)",
];
const FIXTURE: [&str; 2] = [
    "INSERT INTO users (id, name) VALUES (1, 'fliggy'), (2, 'clouseroo')",
    "INSERT INTO addons (id, val, author1_id, author2_id) VALUES (1, 42, 1, 2), (2, 42, 1, 2)",
];

fn run_all<C: Connection>(conn: &mut C, stmts: &[&str]) {
    for s in stmts {
        conn.batch_execute(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

/// A name unique per test and run, usable as a schema or database name.
pub fn unique_name(test: &str) -> String {
    let p = crate::unique_prefix(test);
    p.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(60)
        .collect()
}

#[cfg(feature = "sqlite")]
impl TestDb for diesel::SqliteConnection {
    const NAME: &'static str = "sqlite";
    fn fresh(_test: &str) -> Option<Self> {
        let mut c = diesel::SqliteConnection::establish(":memory:").expect("in-memory SQLite");
        run_all(&mut c, &DDL);
        run_all(&mut c, &FIXTURE);
        Some(c)
    }
}

#[cfg(feature = "postgres")]
impl TestDb for diesel::PgConnection {
    const NAME: &'static str = "postgres";
    fn fresh(test: &str) -> Option<Self> {
        let url = crate::require_env("PG_DATABASE_URL", test)?;
        let mut c = diesel::PgConnection::establish(&url)
            .unwrap_or_else(|e| panic!("PG_DATABASE_URL: {e}"));
        let schema = unique_name(test);
        run_all(
            &mut c,
            &[
                &format!("CREATE SCHEMA {schema}"),
                &format!("SET search_path TO {schema}"),
            ],
        );
        run_all(&mut c, &DDL);
        run_all(&mut c, &FIXTURE);
        Some(c)
    }
}

#[cfg(feature = "mysql")]
impl TestDb for diesel::MysqlConnection {
    const NAME: &'static str = "mysql";
    fn fresh(test: &str) -> Option<Self> {
        let url = crate::require_env("MYSQL_DATABASE_URL", test)?;
        let mut c = diesel::MysqlConnection::establish(&url)
            .unwrap_or_else(|e| panic!("MYSQL_DATABASE_URL: {e}"));
        let db = unique_name(test);
        run_all(&mut c, &[&format!("CREATE DATABASE {db}")]);
        let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&url);
        let mut c = diesel::MysqlConnection::establish(&format!("{base}/{db}"))
            .expect("per-test MySQL database");
        run_all(&mut c, &DDL);
        run_all(&mut c, &FIXTURE);
        Some(c)
    }
}

/// A cache for a test: locmem, or memcached or Redis with a prefix unique to the test.
pub fn test_cache(
    kind: BackendKind,
    test: &str,
    configure: impl FnOnce(CacheBuilder) -> CacheBuilder,
) -> Option<Cache> {
    let builder = match kind {
        BackendKind::LocMem => Cache::builder().locmem(),
        BackendKind::Memcached => {
            let url = crate::memcached_url(test)?;
            let servers = crate::memcached_servers(&url);
            Cache::builder()
                .memcached(&servers, Default::default())
                .expect("memcached servers resolve")
        }
        #[cfg(feature = "redis")]
        BackendKind::Redis => {
            let url = crate::redis_url(test)?;
            Cache::builder().backend(crate::test_redis(&url))
        }
    };
    Some(
        configure(builder.prefix(crate::unique_prefix(test)))
            .build()
            .expect("valid test cache configuration"),
    )
}

/// One test's world: a cached connection on a fresh database, its cache, and a statement
/// counter.
pub struct Env<C: TestDb> {
    /// The cached connection.
    pub conn: CachedConnection<C>,
    /// Its default cache.
    pub cache: Cache,
    /// Counts statements sent by `conn`.
    pub statements: StatementCounter,
}

impl<C: TestDb> Env<C> {
    /// A fresh world, or `None` (skip) when a server is missing.
    pub fn new(test: &str, kind: BackendKind) -> Option<Self> {
        Self::configured(test, kind, |b| b)
    }

    /// A fresh world with a configured cache.
    pub fn configured(
        test: &str,
        kind: BackendKind,
        configure: impl FnOnce(CacheBuilder) -> CacheBuilder,
    ) -> Option<Self> {
        let cache = test_cache(kind, test, configure)?;
        Self::with_cache(test, cache)
    }

    /// [`new`](Env::new) for a test of a suite run once per database: `test` is prefixed
    /// with the database's name, so the runs on different databases never share a database
    /// or a key prefix.
    pub fn suite(test: &str, kind: BackendKind) -> Option<Self> {
        Self::new(&format!("{}_{}", C::NAME, test), kind)
    }

    /// [`configured`](Env::configured) for a test of a suite run once per database (see
    /// [`suite`](Env::suite)).
    pub fn suite_configured(
        test: &str,
        kind: BackendKind,
        configure: impl FnOnce(CacheBuilder) -> CacheBuilder,
    ) -> Option<Self> {
        Self::configured(&format!("{}_{}", C::NAME, test), kind, configure)
    }

    /// A fresh world on an explicit cache, or `None` (skip) when a server is missing.
    pub fn with_cache(test: &str, cache: Cache) -> Option<Self> {
        let raw = C::fresh(test)?;
        let statements = StatementCounter::default();
        let conn = CachedConnection::with_instrumentation(
            raw,
            CacheSet::new(cache.clone()),
            statements.clone(),
        );
        statements.take();
        Some(Env {
            conn,
            cache,
            statements,
        })
    }

    /// Statements sent since the last call.
    pub fn queries(&self) -> usize {
        self.statements.take()
    }
}

/// Writes whose form differs per backend (PostgreSQL and SQLite learn rows with `RETURNING`,
/// MySQL cannot).
pub trait Writes: TestDb {
    /// Inserts an add-on through the write helpers.
    fn create_addon(conn: &mut CachedConnection<Self>, a: &Addon) -> QueryResult<()>;
    /// Inserts a user through the write helpers.
    fn create_user(conn: &mut CachedConnection<Self>, u: &User) -> QueryResult<()>;
    /// `UPDATE addons SET val = to WHERE val = from` through the bulk helpers.
    fn bulk_set_val(conn: &mut CachedConnection<Self>, from: i32, to: i32) -> QueryResult<usize>;
    /// `DELETE FROM addons WHERE val = v` through the bulk helpers.
    fn bulk_delete_val(conn: &mut CachedConnection<Self>, v: i32) -> QueryResult<usize>;
    /// A bind placeholder (`?` or `$n`).
    fn placeholder(n: usize) -> String;
    /// Inserts or replaces an add-on by primary key through the write helpers (an upsert:
    /// `ON CONFLICT DO UPDATE` with `RETURNING`, MySQL `REPLACE INTO`).
    fn upsert_addon(conn: &mut CachedConnection<Self>, a: &Addon) -> QueryResult<()>;
}

macro_rules! returning_writes {
    ($conn:ty, $ph:expr) => {
        impl Writes for $conn {
            fn create_addon(conn: &mut CachedConnection<Self>, a: &Addon) -> QueryResult<()> {
                let rows: Vec<Addon> =
                    conn.insert(diesel::insert_into(addons::table).values(a.clone()))?;
                assert_eq!(rows.len(), 1);
                Ok(())
            }
            fn create_user(conn: &mut CachedConnection<Self>, u: &User) -> QueryResult<()> {
                let rows: Vec<User> =
                    conn.insert(diesel::insert_into(users::table).values(u.clone()))?;
                assert_eq!(rows.len(), 1);
                Ok(())
            }
            fn bulk_set_val(
                conn: &mut CachedConnection<Self>,
                from: i32,
                to: i32,
            ) -> QueryResult<usize> {
                let rows: Vec<Addon> = conn.update(
                    diesel::update(addons::table.filter(addons::val.eq(from)))
                        .set(addons::val.eq(to)),
                )?;
                Ok(rows.len())
            }
            fn bulk_delete_val(conn: &mut CachedConnection<Self>, v: i32) -> QueryResult<usize> {
                let rows: Vec<Addon> =
                    conn.delete(diesel::delete(addons::table.filter(addons::val.eq(v))))?;
                Ok(rows.len())
            }
            fn placeholder(n: usize) -> String {
                #[allow(clippy::redundant_closure_call)]
                ($ph)(n)
            }
            fn upsert_addon(conn: &mut CachedConnection<Self>, a: &Addon) -> QueryResult<()> {
                let rows: Vec<Addon> = conn.insert(
                    diesel::insert_into(addons::table)
                        .values(a.clone())
                        .on_conflict(addons::id)
                        .do_update()
                        .set(a.clone()),
                )?;
                assert_eq!(rows.len(), 1);
                Ok(())
            }
        }
    };
}

#[cfg(feature = "sqlite")]
returning_writes!(diesel::SqliteConnection, |_n: usize| "?".to_string());
#[cfg(feature = "postgres")]
returning_writes!(diesel::PgConnection, |n: usize| format!("${n}"));

#[cfg(feature = "mysql")]
impl Writes for diesel::MysqlConnection {
    fn create_addon(conn: &mut CachedConnection<Self>, a: &Addon) -> QueryResult<()> {
        conn.insert_for(
            std::slice::from_ref(a),
            diesel::insert_into(addons::table).values(a.clone()),
        )
        .map(|_| ())
    }
    fn create_user(conn: &mut CachedConnection<Self>, u: &User) -> QueryResult<()> {
        conn.insert_for(
            std::slice::from_ref(u),
            diesel::insert_into(users::table).values(u.clone()),
        )
        .map(|_| ())
    }
    fn bulk_set_val(conn: &mut CachedConnection<Self>, from: i32, to: i32) -> QueryResult<usize> {
        conn.execute_bulk::<Addon, _>(
            diesel::update(addons::table.filter(addons::val.eq(from))).set(addons::val.eq(to)),
        )
    }
    fn bulk_delete_val(conn: &mut CachedConnection<Self>, v: i32) -> QueryResult<usize> {
        conn.execute_bulk::<Addon, _>(diesel::delete(addons::table.filter(addons::val.eq(v))))
    }
    fn placeholder(_n: usize) -> String {
        "?".to_string()
    }
    fn upsert_addon(conn: &mut CachedConnection<Self>, a: &Addon) -> QueryResult<()> {
        conn.insert_for(
            std::slice::from_ref(a),
            diesel::replace_into(addons::table).values(a.clone()),
        )
        .map(|_| ())
    }
}

/// A database that a second connection can join: another connection to the same isolated
/// database as `conn` (PostgreSQL: the same schema; MySQL: the same database), for tests in
/// which two connections (a reader and a writer, two caches) must see each other's commits.
pub trait SameDatabase: TestDb {
    /// Opens another connection to the database `conn` is on.
    ///
    /// # Panics
    /// If the server cannot be reached.
    fn another(conn: &mut Self) -> Self;
}

#[cfg(feature = "postgres")]
impl SameDatabase for diesel::PgConnection {
    fn another(conn: &mut Self) -> Self {
        let schema: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
            "current_schema()",
        ))
        .get_result(conn)
        .expect("current_schema()");
        pg_connect_schema(&schema)
    }
}

/// A connection to `PG_DATABASE_URL` whose `search_path` is `schema`.
///
/// # Panics
/// If `PG_DATABASE_URL` is unset or the server cannot be reached.
#[cfg(feature = "postgres")]
pub fn pg_connect_schema(schema: &str) -> diesel::PgConnection {
    let url = std::env::var("PG_DATABASE_URL").expect("PG_DATABASE_URL");
    let mut c =
        diesel::PgConnection::establish(&url).unwrap_or_else(|e| panic!("PG_DATABASE_URL: {e}"));
    run_all(&mut c, &[&format!("SET search_path TO {schema}")]);
    c
}

#[cfg(feature = "mysql")]
impl SameDatabase for diesel::MysqlConnection {
    fn another(conn: &mut Self) -> Self {
        let db: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>("DATABASE()"))
            .get_result(conn)
            .expect("DATABASE()");
        let url = std::env::var("MYSQL_DATABASE_URL").expect("MYSQL_DATABASE_URL");
        let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&url);
        diesel::MysqlConnection::establish(&format!("{base}/{db}"))
            .expect("second MySQL connection")
    }
}

/// An SQLite database in a temporary file holding the seed's fixture, removed when dropped:
/// for tests in which several connections (readers and writers with different caches) must
/// see one database, which an in-memory database cannot give.
#[cfg(feature = "sqlite")]
#[derive(Debug)]
pub struct SqliteFile(std::path::PathBuf);

#[cfg(feature = "sqlite")]
impl SqliteFile {
    /// A fresh database file for test `test`.
    ///
    /// # Panics
    /// If the file cannot be created.
    pub fn new(test: &str) -> SqliteFile {
        let path = std::env::temp_dir().join(format!("{}.sqlite3", unique_name(test)));
        let f = SqliteFile(path);
        let mut c = f.connect();
        run_all(&mut c, &DDL);
        run_all(&mut c, &FIXTURE);
        f
    }

    /// The file's path (for other processes to open it).
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// A new connection to the file (waits up to 5 s for another connection's lock).
    ///
    /// # Panics
    /// If the file cannot be opened.
    pub fn connect(&self) -> diesel::SqliteConnection {
        let path = self.0.to_str().expect("temporary path is UTF-8");
        let mut c = diesel::SqliteConnection::establish(path).expect("SQLite database file");
        run_all(&mut c, &["PRAGMA busy_timeout = 5000"]);
        c
    }

    /// A new connection to the file, cached by `cache`.
    pub fn cached_conn(&self, cache: &Cache) -> CachedConnection<diesel::SqliteConnection> {
        CachedConnection::with_caches(self.connect(), CacheSet::new(cache.clone()))
    }
}

#[cfg(feature = "sqlite")]
impl Drop for SqliteFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
