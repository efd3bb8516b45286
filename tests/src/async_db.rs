//! Database fixtures of the async suites: the seed's schema on a fresh database per test,
//! reached through diesel-async (PostgreSQL: a schema per test; MySQL: a database per test;
//! SQLite: a temporary file, so that a second connection sees the first one's commits), each
//! connection counting its statements through Diesel's instrumentation.

use std::future::Future;

use caching_diesel::{AsyncCacheConnection, AsyncCachedConnection, Cache, CacheSet};
use diesel_async::{AsyncConnection, SimpleAsyncConnection};

use crate::db::{test_cache, unique_name, BackendKind, StatementCounter};

const DDL: [&str; 2] = [
    "CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL)",
    "CREATE TABLE addons (id INTEGER PRIMARY KEY, val INTEGER NOT NULL, author1_id INTEGER NOT NULL, author2_id INTEGER NOT NULL)",
];
const FIXTURE: [&str; 2] = [
    "INSERT INTO users (id, name) VALUES (1, 'fliggy'), (2, 'clouseroo')",
    "INSERT INTO addons (id, val, author1_id, author2_id) VALUES (1, 42, 1, 2), (2, 42, 1, 2)",
];

async fn run_all<C: SimpleAsyncConnection>(conn: &mut C, stmts: &[&str]) {
    for s in stmts {
        conn.batch_execute(s)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

/// An async database the suites can run on.
pub trait AsyncTestDb: AsyncCacheConnection + Sized {
    /// Name for skip lines and prefixes.
    const NAME: &'static str;
    /// Creates a fresh, isolated database holding the seed's fixture; returns where it is
    /// (for [`connect`](AsyncTestDb::connect)), or `None` (skip) when the server is not
    /// configured.
    fn create(test: &str) -> impl Future<Output = Option<String>> + Send;
    /// A new connection to the database at `place`.
    fn connect(place: &str) -> impl Future<Output = Self> + Send;
    /// Removes what [`create`](AsyncTestDb::create) left outside the server (files).
    fn cleanup(_place: &str) {}
    /// The blocking connection to the same database.
    type Blocking: caching_diesel::CacheConnection;
    /// A blocking connection to the database at `place`.
    fn connect_blocking(place: &str) -> Self::Blocking;
}

#[cfg(feature = "sqlite")]
impl AsyncTestDb
    for diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>
{
    const NAME: &'static str = "sqlite";
    async fn create(test: &str) -> Option<String> {
        let path = std::env::temp_dir().join(format!("{}.sqlite3", unique_name(test)));
        let place = path.to_str().expect("temporary path is UTF-8").to_string();
        let mut c = Self::connect(&place).await;
        run_all(&mut c, &DDL).await;
        run_all(&mut c, &FIXTURE).await;
        Some(place)
    }
    async fn connect(place: &str) -> Self {
        let mut c = Self::establish(place).await.expect("SQLite database file");
        run_all(&mut c, &["PRAGMA busy_timeout = 5000"]).await;
        c
    }
    fn cleanup(place: &str) {
        let _ = std::fs::remove_file(place);
    }
    type Blocking = diesel::SqliteConnection;
    fn connect_blocking(place: &str) -> Self::Blocking {
        use diesel::connection::SimpleConnection;
        use diesel::Connection;
        let mut c = diesel::SqliteConnection::establish(place).expect("SQLite database file");
        c.batch_execute("PRAGMA busy_timeout = 5000")
            .expect("busy timeout");
        c
    }
}

#[cfg(feature = "postgres")]
impl AsyncTestDb for diesel_async::AsyncPgConnection {
    const NAME: &'static str = "postgres";
    async fn create(test: &str) -> Option<String> {
        let url = crate::require_env("PG_DATABASE_URL", test)?;
        let schema = unique_name(test);
        let mut c = Self::establish(&url)
            .await
            .unwrap_or_else(|e| panic!("PG_DATABASE_URL: {e}"));
        run_all(
            &mut c,
            &[
                &format!("CREATE SCHEMA {schema}"),
                &format!("SET search_path TO {schema}"),
            ],
        )
        .await;
        run_all(&mut c, &DDL).await;
        run_all(&mut c, &FIXTURE).await;
        Some(format!("{url}#{schema}"))
    }
    async fn connect(place: &str) -> Self {
        let (url, schema) = place.rsplit_once('#').expect("url#schema");
        let mut c = Self::establish(url)
            .await
            .unwrap_or_else(|e| panic!("PG_DATABASE_URL: {e}"));
        run_all(&mut c, &[&format!("SET search_path TO {schema}")]).await;
        c
    }
    type Blocking = diesel::PgConnection;
    fn connect_blocking(place: &str) -> Self::Blocking {
        let (_, schema) = place.rsplit_once('#').expect("url#schema");
        crate::db::pg_connect_schema(schema)
    }
}

#[cfg(feature = "mysql")]
impl AsyncTestDb for diesel_async::AsyncMysqlConnection {
    const NAME: &'static str = "mysql";
    async fn create(test: &str) -> Option<String> {
        let url = crate::require_env("MYSQL_DATABASE_URL", test)?;
        let db = unique_name(test);
        let mut c = Self::establish(&url)
            .await
            .unwrap_or_else(|e| panic!("MYSQL_DATABASE_URL: {e}"));
        run_all(&mut c, &[&format!("CREATE DATABASE {db}")]).await;
        let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&url);
        let place = format!("{base}/{db}");
        let mut c = Self::connect(&place).await;
        run_all(&mut c, &DDL).await;
        run_all(&mut c, &FIXTURE).await;
        Some(place)
    }
    async fn connect(place: &str) -> Self {
        Self::establish(place)
            .await
            .unwrap_or_else(|e| panic!("per-test MySQL database: {e}"))
    }
    type Blocking = diesel::MysqlConnection;
    fn connect_blocking(place: &str) -> Self::Blocking {
        use diesel::Connection;
        diesel::MysqlConnection::establish(place).expect("per-test MySQL database")
    }
}

/// One async test's world: a cached connection on a fresh database, its cache, and a
/// statement counter.
pub struct AsyncEnv<C: AsyncTestDb> {
    /// The cached connection.
    pub conn: AsyncCachedConnection<C>,
    /// Its default cache.
    pub cache: Cache,
    /// Counts statements sent by `conn`.
    pub statements: StatementCounter,
    place: String,
}

impl<C: AsyncTestDb> AsyncEnv<C> {
    /// A fresh world for test `test` of a suite run once per database, or `None` (skip)
    /// when a server is missing.
    pub async fn suite(test: &str, kind: BackendKind) -> Option<Self> {
        let test = format!("async_{}_{}", C::NAME, test);
        let cache = test_cache(kind, &test, |b| b)?;
        let place = C::create(&test).await?;
        let statements = StatementCounter::default();
        let conn = Self::cached(&place, &cache, Some(statements.clone())).await;
        statements.take();
        Some(AsyncEnv {
            conn,
            cache,
            statements,
            place,
        })
    }

    async fn cached(
        place: &str,
        cache: &Cache,
        counter: Option<StatementCounter>,
    ) -> AsyncCachedConnection<C> {
        let mut raw = C::connect(place).await;
        if let Some(counter) = counter {
            raw.set_instrumentation(counter);
        }
        AsyncCachedConnection::with_caches(raw, CacheSet::new(cache.clone()))
    }

    /// Another cached connection to the same database and cache.
    pub async fn another(&self) -> AsyncCachedConnection<C> {
        Self::cached(&self.place, &self.cache, None).await
    }

    /// A plain (uncached) connection to the same database.
    pub async fn plain(&self) -> C {
        C::connect(&self.place).await
    }

    /// Where the database is (for [`AsyncTestDb::connect_blocking`]).
    pub fn place(&self) -> &str {
        &self.place
    }

    /// Statements sent through `conn` since the last call.
    pub fn queries(&self) -> usize {
        self.statements.take()
    }
}

impl<C: AsyncTestDb> Drop for AsyncEnv<C> {
    fn drop(&mut self) {
        C::cleanup(&self.place);
    }
}

/// A runtime for one test: two worker threads, like the benchmark machine.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Polls a future at most `limit` times: `Some(output)` if it finished within them, `None`
/// if it was still pending (then it is dropped with this wrapper, as a request's future is
/// when the request is cancelled).
pub struct PollLimit<F: Future> {
    fut: std::pin::Pin<Box<F>>,
    left: usize,
}

impl<F: Future> PollLimit<F> {
    /// Wraps `fut`.
    pub fn new(fut: F, limit: usize) -> Self {
        PollLimit {
            fut: Box::pin(fut),
            left: limit,
        }
    }
}

impl<F: Future> Future for PollLimit<F> {
    type Output = Option<F::Output>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        match self.fut.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}
