//! The runner's fixture: the `addons` table, the databases (in-memory SQLite always,
//! PostgreSQL with the `postgres` feature and `PG_DATABASE_URL`), the cache servers
//! (locmem always, memcached with `MEMCACHED_URL`, Redis with the `redis` feature and
//! `REDIS_URL`), and caches built over a round-trip counter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use caching_core::backend::locmem::LocMem;
use caching_core::backend::memcached::{Memcached, MemcachedOptions};
use caching_core::Backend;
use caching_diesel::prelude::*;
use caching_diesel::{Cache, CachedConnection, Timeout};
use diesel::connection::SimpleConnection;

use crate::counting::Counting;
use crate::report::Report;

/// Rows of the main fixture.
pub const ROWS: i32 = 20_000;
/// Authors (`author1_id`), 1000 rows each; `author2_id` is `author1_id + 100`, so two
/// authors never share a row and a write to one author's rows never reaches another's.
pub const AUTHORS: i32 = 20;

/// The rows by author, ordered by id, at most `$n`: the 100-row list (and the size sweep).
macro_rules! by_author {
    ($u:expr, $n:expr) => {
        caching_tests::db::schema::addons::table
            .filter(caching_tests::db::schema::addons::author1_id.eq($u))
            .order(caching_tests::db::schema::addons::id)
            .limit($n)
    };
}
pub(crate) use by_author;

/// A row by primary key.
macro_rules! by_pk {
    ($id:expr) => {
        caching_tests::db::schema::addons::table.find($id)
    };
}
pub(crate) use by_pk;

/// The rows of one author, for counts.
macro_rules! of_author {
    ($u:expr) => {
        caching_tests::db::schema::addons::table
            .filter(caching_tests::db::schema::addons::author1_id.eq($u))
    };
}
pub(crate) use of_author;

/// Creates and fills `addons` (`ROWS` rows, indexed by author).
pub fn seed(conn: &mut impl SimpleConnection) -> Result<(), String> {
    conn.batch_execute(
        "DROP TABLE IF EXISTS addons; CREATE TABLE addons (id INTEGER PRIMARY KEY, val INTEGER NOT NULL, author1_id INTEGER NOT NULL, author2_id INTEGER NOT NULL)",
    )
    .map_err(|e| e.to_string())?;
    for chunk in (1..=ROWS).collect::<Vec<_>>().chunks(1000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|i| {
                let a = i % AUTHORS + 1;
                format!("({i}, {}, {a}, {})", i % 1000, a + 100)
            })
            .collect();
        conn.batch_execute(&format!("INSERT INTO addons VALUES {}", values.join(",")))
            .map_err(|e| e.to_string())?;
    }
    conn.batch_execute(
        "CREATE INDEX addons_author1 ON addons (author1_id); CREATE INDEX addons_author2 ON addons (author2_id); ANALYZE",
    )
    .map_err(|e| e.to_string())
}

/// The first id of author `u`'s rows (ids `u - 1 + 20k`).
pub fn first_id_of(u: i32) -> i32 {
    if u == 1 {
        AUTHORS
    } else {
        u - 1
    }
}

/// A cache server the run can use, as a raw client (the floor reads through it).
pub struct Server {
    /// `locmem`, `memcached`, `redis`.
    pub name: &'static str,
    /// The client, shared by every cache built on this server.
    pub raw: Arc<dyn Backend>,
}

/// The `host:port` list of a `memcached://` URL.
fn memcached_hosts(url: &str) -> Result<Vec<String>, String> {
    let rest = url
        .strip_prefix("memcached://")
        .ok_or_else(|| format!("MEMCACHED_URL {url:?} does not start with memcached://"))?;
    let hosts = rest.split_once('?').map_or(rest, |(h, _)| h);
    let hosts: Vec<String> = hosts
        .trim_end_matches('/')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if hosts.is_empty() {
        return Err(format!("MEMCACHED_URL {url:?} names no host"));
    }
    Ok(hosts)
}

/// Whether a server answers: a probe, then a get.
fn reachable(backend: &dyn Backend) -> Result<(), String> {
    backend.probe().map_err(|e| e.to_string())?;
    backend
        .get("bench-probe")
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// Every server of this run: locmem always, memcached and Redis when configured and
/// reachable (a missing one is reported once, and its figures are skipped).
pub fn servers(report: &mut Report) -> Vec<Server> {
    let mut out = vec![Server {
        name: "locmem",
        raw: Arc::new(LocMem::new()),
    }];
    match env("MEMCACHED_URL") {
        None => report.missing("memcached", "MEMCACHED_URL unset"),
        Some(url) => {
            let mc = memcached_hosts(&url).and_then(|hosts| {
                Memcached::new(&hosts, MemcachedOptions::default()).map_err(|e| e.to_string())
            });
            match mc.and_then(|mc| reachable(&mc).map(|_| mc)) {
                Ok(mc) => out.push(Server {
                    name: "memcached",
                    raw: Arc::new(mc),
                }),
                Err(e) => report.missing("memcached", format!("{url}: {e}")),
            }
        }
    }
    redis_server(report, &mut out);
    out
}

#[cfg(feature = "redis")]
fn redis_server(report: &mut Report, out: &mut Vec<Server>) {
    use caching_core::backend::redis::{Redis, RedisOptions};
    match env("REDIS_URL") {
        None => report.missing("redis", "REDIS_URL unset"),
        Some(url) => {
            let server = url.split_once('?').map_or(url.as_str(), |(s, _)| s);
            let rd = Redis::new(server, RedisOptions::default()).map_err(|e| e.to_string());
            match rd.and_then(|rd| reachable(&rd).map(|_| rd)) {
                Ok(rd) => out.push(Server {
                    name: "redis",
                    raw: Arc::new(rd),
                }),
                Err(e) => report.missing("redis", format!("{url}: {e}")),
            }
        }
    }
}

#[cfg(not(feature = "redis"))]
fn redis_server(report: &mut Report, _out: &mut [Server]) {
    report.missing(
        "redis",
        "built without the `redis` feature (use --all-features)",
    );
}

/// A cache of the run over a server, counting its round trips.
#[derive(Clone)]
pub struct BenchCache {
    /// Name in figures and in the connection's cache set: the server's, `_safe` appended
    /// for the eviction-safe mode.
    pub name: String,
    /// The server's name.
    pub server: &'static str,
    /// The cache (its backend is the counting wrapper).
    pub cache: Cache,
    /// The server's raw client.
    pub raw: Arc<dyn Backend>,
    calls: Arc<AtomicU64>,
}

impl BenchCache {
    /// A cache on `server` with a prefix of its own.
    pub fn new(server: &Server, eviction_safe: bool, tag: &str) -> Result<Self, String> {
        let calls = Arc::new(AtomicU64::new(0));
        let counting = Counting::new(server.raw.clone(), calls.clone());
        let name = if eviction_safe {
            format!("{}_safe", server.name)
        } else {
            server.name.to_string()
        };
        let cache = Cache::builder()
            .shared_backend(Arc::new(counting))
            .prefix(caching_tests::unique_prefix(&format!("bench-{tag}-{name}")))
            .eviction_safe(eviction_safe)
            // Entries outlive any run, never the server: no leftovers pile up.
            .default_timeout(Timeout::After(Duration::from_secs(3600)))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(BenchCache {
            name,
            server: server.name,
            cache,
            raw: server.raw.clone(),
            calls,
        })
    }

    /// Round trips so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

/// A database of the run, behind its cached connection (which carries every cache).
pub enum Db {
    /// In-memory SQLite.
    Sqlite(CachedConnection<diesel::SqliteConnection>),
    /// PostgreSQL, in a schema of its own.
    #[cfg(feature = "postgres")]
    Pg(CachedConnection<diesel::PgConnection>),
}

/// Runs `$body` with `$c` bound to the cached connection of whichever database `$db` is.
macro_rules! on_db {
    ($db:expr, |$c:ident| $body:expr) => {
        match $db {
            $crate::fixture::Db::Sqlite($c) => $body,
            #[cfg(feature = "postgres")]
            $crate::fixture::Db::Pg($c) => $body,
        }
    };
}
pub(crate) use on_db;

/// A fresh in-memory SQLite database holding the fixture.
pub fn sqlite() -> Result<diesel::SqliteConnection, String> {
    let mut c = diesel::SqliteConnection::establish(":memory:").map_err(|e| e.to_string())?;
    seed(&mut c)?;
    Ok(c)
}

/// A PostgreSQL connection whose search path is a new schema (a run's tables never meet
/// another run's), and the schema's name.
#[cfg(feature = "postgres")]
pub fn pg_in_fresh_schema(url: &str, name: &str) -> Result<(diesel::PgConnection, String), String> {
    let mut c = diesel::PgConnection::establish(url).map_err(|e| e.to_string())?;
    let schema = caching_tests::db::unique_name(name);
    c.batch_execute(&format!(
        "CREATE SCHEMA {schema}; SET search_path TO {schema}"
    ))
    .map_err(|e| e.to_string())?;
    Ok((c, schema))
}

/// The PostgreSQL database of the run, holding the fixture, or why there is none.
#[cfg(feature = "postgres")]
pub fn postgres() -> Result<(diesel::PgConnection, String), String> {
    let url = env("PG_DATABASE_URL").ok_or("PG_DATABASE_URL unset")?;
    let (mut c, schema) = pg_in_fresh_schema(&url, "bench")?;
    seed(&mut c)?;
    Ok((c, schema))
}

/// Without the feature, there is none.
#[cfg(not(feature = "postgres"))]
pub fn postgres() -> Result<(), String> {
    Err("built without the `postgres` feature (use --all-features)".into())
}
