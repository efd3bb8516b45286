//! Quickstart: a cached Diesel query, its invalidation by a write, and a transaction.
//!
//! ```text
//! cargo run -p caching-diesel --example quickstart
//! ```
//!
//! By default it needs no server: the database is the bundled SQLite, in memory, and the cache
//! is an in-process (locmem) cache. Two environment variables switch them:
//!
//! - `CACHE_URL=memcached://127.0.0.1:11211` uses memcached instead of locmem (any URL
//!   [`Cache::from_url`](caching_diesel::Cache::from_url) accepts, for example
//!   `memcached://127.0.0.1:11211?prefix=quickstart`). The example reads it through
//!   [`process_caches`], the same way an application does.
//! - `DATABASE_URL=postgres://user@127.0.0.1/db` uses PostgreSQL, when built with the
//!   `postgres` feature:
//!   `DATABASE_URL=postgres://... cargo run -p caching-diesel --features postgres --example quickstart`.
//!   The tables are `TEMPORARY`, so nothing is left behind in that database.
//!
//! What it shows, in order: an uncached read and its time; the first cached read (a miss,
//! which fills the cache); cached reads (hits: zero statements reach the database, counted
//! with a Diesel `Instrumentation`); median times of both over 200 reads; a
//! `conn.save_changes(&row)` that invalidates exactly the affected queries; a transaction whose
//! invalidation waits for COMMIT, and one that rolls back; and the cache's statistics.

use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use caching_diesel::prelude::*;
use caching_diesel::{process_caches, CachedConnection, StatsSnapshot};
use diesel::connection::{Instrumentation, InstrumentationEvent, SimpleConnection};
use serde::{Deserialize, Serialize};

/// The schema of django-cache-machine's test fixture: users, and add-ons with two authors.
mod schema {
    diesel::table! {
        users (id) {
            id -> Integer,
            name -> Text,
        }
    }
    diesel::table! {
        addons (id) {
            id -> Integer,
            val -> Integer,
            author1_id -> Integer,
            author2_id -> Integer,
        }
    }
    diesel::joinable!(addons -> users (author1_id));
    diesel::allow_tables_to_appear_in_same_query!(users, addons);
}

use schema::{addons, users};

/// A user. `Cached` makes its rows cacheable and invalidatable; serde stores them.
#[derive(
    Queryable,
    Selectable,
    Identifiable,
    AsChangeset,
    Insertable,
    Cached,
    Serialize,
    Deserialize,
    Debug,
    Clone,
)]
#[diesel(table_name = users)]
struct User {
    id: i32,
    name: String,
}

/// An add-on. Diesel's `belongs_to` names the first author; `#[cached(belongs_to(...))]`
/// tells the cache about the second foreign key too, so a write to either author reaches the
/// add-on's cached queries.
#[derive(
    Queryable,
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
)]
#[diesel(table_name = addons, belongs_to(User, foreign_key = author1_id))]
#[cached(belongs_to(User, foreign_key = author2_id))]
struct Addon {
    id: i32,
    val: i32,
    author1_id: i32,
    author2_id: i32,
}

/// Counts the statements that reach the database: Diesel's equivalent of Django's
/// `assertNumQueries`. A cache hit sends none.
#[derive(Debug, Clone, Default)]
struct StatementCounter(Arc<AtomicUsize>);

impl StatementCounter {
    /// Statements since the last call.
    fn take(&self) -> usize {
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

/// Extra rows beyond the seed's fixture, so that an uncached read costs something.
const EXTRA_USERS: i32 = 48;
const EXTRA_ADDONS: i32 = 10_000;
/// Reads per timing sample.
const SAMPLES: usize = 200;

const DDL: [&str; 2] = [
    // TEMPORARY: the tables vanish with the connection (matters on PostgreSQL).
    "CREATE TEMPORARY TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL)",
    "CREATE TEMPORARY TABLE addons (id INTEGER PRIMARY KEY, val INTEGER NOT NULL, \
     author1_id INTEGER NOT NULL, author2_id INTEGER NOT NULL)",
];

/// The seed's fixture plus extra rows: 50 users, 10,002 add-ons.
fn fixture() -> (Vec<User>, Vec<Addon>) {
    let mut users = vec![
        User {
            id: 1,
            name: "fliggy".into(),
        },
        User {
            id: 2,
            name: "clouseroo".into(),
        },
    ];
    users.extend((3..3 + EXTRA_USERS).map(|id| User {
        id,
        name: format!("user{id:02}"),
    }));
    let n_users = users.len() as i32;
    let mut addons = vec![
        Addon {
            id: 1,
            val: 42,
            author1_id: 1,
            author2_id: 2,
        },
        Addon {
            id: 2,
            val: 42,
            author1_id: 1,
            author2_id: 2,
        },
    ];
    addons.extend((3..3 + EXTRA_ADDONS).map(|id| Addon {
        id,
        val: (id * 7919) % 997,
        author1_id: 1 + id % n_users,
        author2_id: 1 + (id + n_users / 2) % n_users,
    }));
    (users, addons)
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed())
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn show(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
}

/// What the cache did during one read, from the change in its statistics.
fn outcome(before: &StatsSnapshot, after: &StatsSnapshot) -> String {
    if after.hits > before.hits {
        "hit".into()
    } else if after.fills > before.fills {
        "miss, filled".into()
    } else if after.skipped_fills > before.skipped_fills {
        "miss, no fill".into()
    } else if after.misses > before.misses {
        "miss".into()
    } else {
        "bypassed".into()
    }
}

/// One line of the tour: what was read, statements sent, what the cache did, time, rows.
fn line(label: &str, statements: usize, cache: &str, time: Option<Duration>, rows: &[Addon]) {
    let time = time.map(show).unwrap_or_default();
    println!(
        "   {label:<34} {statements:>7}  {cache:<13} {time:>9}  {}",
        ids(rows)
    );
}

fn header() {
    let (read, queries, cache, time) = ("", "queries", "cache", "time");
    println!("   {read:<34} {queries:>7}  {cache:<13} {time:>9}  rows (#id=val)");
}

fn ids(rows: &[Addon]) -> String {
    let parts: Vec<String> = rows
        .iter()
        .map(|a| format!("#{}={}", a.id, a.val))
        .collect();
    parts.join(" ")
}

fn print_stats(s: &StatsSnapshot) {
    println!(
        "   hits                 {:>5}   reads answered from the cache",
        s.hits
    );
    println!(
        "   misses               {:>5}   reads that went to the database",
        s.misses
    );
    println!(
        "   fills                {:>5}   results stored after a miss",
        s.fills
    );
    println!(
        "   skipped_fills        {:>5}   results not stored (empty, in a transaction, raced, ...)",
        s.skipped_fills
    );
    println!(
        "   invalidations        {:>5}   invalidations run (one per write)",
        s.invalidations
    );
    println!("   failed_invalidations {:>5}", s.failed_invalidations);
    println!(
        "   backend_errors       {:>5}   cache calls that failed",
        s.backend_errors
    );
    println!("   decode_errors        {:>5}", s.decode_errors);
    println!("   overflows            {:>5}", s.overflows);
}

/// The tour, written once and compiled for each database (a Diesel query's type depends on
/// its backend, so a macro is the simplest way to run the same code on SQLite and PostgreSQL).
macro_rules! tour {
    ($Db:ty) => {
        pub fn tour(
            mut conn: CachedConnection<$Db>,
            statements: StatementCounter,
            database: &str,
        ) -> Result<(), Box<dyn Error>> {
            let cache = conn.cache().clone();
            println!("Cache Machine for Diesel: quickstart");
            println!("   database: {database}");
            println!(
                "   cache:    {} (prefix {:?})",
                cache.backend().name(),
                cache.config().prefix
            );
            println!();

            // 1. Schema and data. Plain Diesel calls go through the connection (`&mut *conn`);
            // these writes bypass invalidation, which is fine only because nothing is cached yet.
            conn.batch_execute(&DDL.join(";"))?;
            let (all_users, all_addons) = fixture();
            diesel::insert_into(users::table).values(&all_users).execute(&mut *conn)?;
            for chunk in all_addons.chunks(1_000) {
                diesel::insert_into(addons::table).values(chunk).execute(&mut *conn)?;
            }
            println!(
                "1. Seeded the fixture (fliggy, clouseroo; add-ons 1 and 2) plus extra rows: \
                 {} users, {} add-ons.",
                all_users.len(),
                all_addons.len()
            );

            // A cached read of a single row: `.cached()` on any Diesel query.
            let fliggy: User = users::table.find(1).cached().first(&mut conn)?;
            let clouseroo: User = users::table.find(2).cached().first(&mut conn)?;
            // The query of the tour: an author's five most valuable add-ons.
            let top_of = |user: &User| {
                addons::table
                    .filter(addons::author1_id.eq(user.id))
                    .order((addons::val.desc(), addons::id))
                    .limit(5)
            };
            println!("   query: the 5 most valuable add-ons of {} (user {})", fliggy.name, fliggy.id);
            println!();

            // 2. Uncached, first cached (miss), cached (hit).
            println!("2. One read of each kind:");
            header();
            statements.take();
            let (rows, t) = timed(|| top_of(&fliggy).load::<Addon>(&mut *conn));
            let rows = rows?;
            line("uncached (plain Diesel)", statements.take(), "not asked", Some(t), &rows);
            let before = cache.stats();
            let (rows, t) = timed(|| top_of(&fliggy).cached().load::<Addon>(&mut conn));
            let rows = rows?;
            line("cached, first read", statements.take(), &outcome(&before, &cache.stats()), Some(t), &rows);
            let before = cache.stats();
            let (rows, t) = timed(|| top_of(&fliggy).cached().load::<Addon>(&mut conn));
            let rows = rows?;
            line("cached, second read", statements.take(), &outcome(&before, &cache.stats()), Some(t), &rows);
            println!();

            // 3. Medians.
            let mut plain = Vec::with_capacity(SAMPLES);
            let mut cached = Vec::with_capacity(SAMPLES);
            let (mut plain_sent, mut cached_sent) = (0, 0);
            for _ in 0..SAMPLES {
                let (r, t) = timed(|| top_of(&fliggy).load::<Addon>(&mut *conn));
                r?;
                plain.push(t);
                plain_sent += statements.take();
                let (r, t) = timed(|| top_of(&fliggy).cached().load::<Addon>(&mut conn));
                r?;
                cached.push(t);
                cached_sent += statements.take();
            }
            let (m_plain, m_cached) = (median(plain), median(cached));
            println!("3. Median of {SAMPLES} reads each (debug build; --release makes both faster):");
            println!("   uncached {:>9}   {plain_sent:>3} queries sent", show(m_plain));
            println!(
                "   cached   {:>9}   {cached_sent:>3} queries sent   {:.1}x faster",
                show(m_cached),
                m_plain.as_secs_f64() / m_cached.as_secs_f64().max(1e-9),
            );
            println!();

            // 4. A write through the cached connection invalidates exactly what it touches.
            let theirs: Vec<Addon> = top_of(&clouseroo).cached().load(&mut conn)?;
            let mut changed = rows[rows.len() - 1].clone();
            let old_val = changed.val;
            changed.val = 1_000;
            let before = cache.stats();
            let saved: Addon = conn.save_changes(&changed)?;
            statements.take();
            println!(
                "4. conn.save_changes(&addon): add-on #{} val {old_val} -> {}; invalidations +{}.",
                saved.id,
                saved.val,
                cache.stats().invalidations - before.invalidations
            );
            header();
            for label in ["fliggy's top 5", "fliggy's top 5, again"] {
                let before = cache.stats();
                let rows: Vec<Addon> = top_of(&fliggy).cached().load(&mut conn)?;
                line(label, statements.take(), &outcome(&before, &cache.stats()), None, &rows);
            }
            let before = cache.stats();
            let again: Vec<Addon> = top_of(&clouseroo).cached().load(&mut conn)?;
            line("clouseroo's top 5", statements.take(), &outcome(&before, &cache.stats()), None, &again);
            println!(
                "   (clouseroo's list shares no row with the add-on written, so it {}.)",
                if again.iter().map(|a| a.id).eq(theirs.iter().map(|a| a.id)) {
                    "was left in the cache"
                } else {
                    "should not have changed"
                }
            );
            println!();

            // 5. Transactions: invalidation waits for the outermost COMMIT; ROLLBACK drops it.
            println!("5. conn.transaction(|conn| ...):");
            header();
            let new_addon = Addon {
                id: all_addons.len() as i32 + 1,
                val: 2_000,
                author1_id: fliggy.id,
                author2_id: 26,
            };
            let at_start = cache.stats().invalidations;
            conn.transaction(|conn| -> Result<(), Box<dyn Error>> {
                let created: Vec<Addon> = conn.insert(diesel::insert_into(addons::table).values(&new_addon))?;
                println!(
                    "   inside: conn.insert(..) created add-on #{}; invalidations +{} (queued until COMMIT)",
                    created[0].id,
                    cache.stats().invalidations - at_start
                );
                statements.take();
                let before = cache.stats();
                let rows: Vec<Addon> = top_of(&fliggy).cached().load(conn)?;
                line(
                    "inside: fliggy's top 5",
                    statements.take(),
                    &outcome(&before, &cache.stats()),
                    None,
                    &rows,
                );
                Ok(())
            })?;
            println!(
                "   (the transaction wrote add-ons: its reads of add-ons skip the cache and see its own writes)"
            );
            println!("   COMMIT: invalidations +{}", cache.stats().invalidations - at_start);
            statements.take();
            for label in ["after COMMIT: fliggy's top 5", "fliggy's top 5, again"] {
                let before = cache.stats();
                let rows: Vec<Addon> = top_of(&fliggy).cached().load(&mut conn)?;
                line(label, statements.take(), &outcome(&before, &cache.stats()), None, &rows);
            }

            let at_start = cache.stats().invalidations;
            let mut doomed = new_addon.clone();
            doomed.val = 0;
            let rolled_back = conn.transaction(|conn| -> Result<(), Box<dyn Error>> {
                let _: Addon = conn.save_changes(&doomed)?;
                Err("changed my mind".into())
            });
            println!(
                "   a transaction that saves add-on #{} with val 0, then fails ({:?}):",
                doomed.id,
                rolled_back.err().map(|e| e.to_string()).unwrap_or_default()
            );
            println!(
                "   ROLLBACK: invalidations +{} (the queued invalidation was dropped with the write)",
                cache.stats().invalidations - at_start
            );
            statements.take();
            let before = cache.stats();
            let rows: Vec<Addon> = top_of(&fliggy).cached().load(&mut conn)?;
            line("after ROLLBACK: fliggy's top 5", statements.take(), &outcome(&before, &cache.stats()), None, &rows);
            println!();

            // 6. What the cache did.
            let stats = cache.stats();
            println!("6. cache.stats():");
            print_stats(&stats);
            if stats.backend_errors > 0 {
                println!(
                    "   The cache was unreachable at times: those reads went to the database \
                     and nothing failed. Check CACHE_URL."
                );
            }
            Ok(())
        }
    };
}

#[cfg(feature = "sqlite")]
mod on_sqlite {
    use super::*;
    tour!(diesel::SqliteConnection);
}

#[cfg(feature = "postgres")]
mod on_postgres {
    use super::*;
    tour!(diesel::PgConnection);
}

fn footer(started: Instant) {
    println!();
    println!("Switch the database: DATABASE_URL=postgres://... and --features postgres.");
    println!("Switch the cache:    CACHE_URL=memcached://127.0.0.1:11211 (or locmem://).");
    println!("Done in {:.2} s.", started.elapsed().as_secs_f64());
}

fn main() -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    // The process's caches: built once from CACHE_URL, or an in-process cache when unset.
    let caches = process_caches().map_err(|e| format!("CACHE_URL: {e}"))?;
    let statements = StatementCounter::default();
    // Each run creates a new database, so give it its own label: the label is part of every
    // query key, so a shared memcached never serves one run's rows to another. (In an
    // application, labels name your databases: "primary", "replica", ...)
    let run = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros();
    let label = format!("quickstart-{run}");
    let database_url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty());
    let is_postgres = database_url
        .as_deref()
        .is_some_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"));

    #[cfg(feature = "postgres")]
    if let (true, Some(url)) = (is_postgres, database_url.as_deref()) {
        let raw = diesel::PgConnection::establish(url)?;
        let conn = CachedConnection::with_instrumentation(raw, caches, statements.clone())
            .with_label(label);
        on_postgres::tour(conn, statements, "PostgreSQL (DATABASE_URL)")?;
        footer(started);
        return Ok(());
    }

    if is_postgres && cfg!(not(feature = "postgres")) {
        println!(
            "note: DATABASE_URL names PostgreSQL, but this build lacks the `postgres` feature; \
             using SQLite.\n      Run: cargo run -p caching-diesel --features postgres --example quickstart\n"
        );
    } else if database_url.is_some() && !is_postgres {
        println!("note: DATABASE_URL is not a postgres:// URL; the quickstart uses its own SQLite database.\n");
    }

    #[cfg(feature = "sqlite")]
    {
        let raw = diesel::SqliteConnection::establish(":memory:")?;
        let conn = CachedConnection::with_instrumentation(raw, caches, statements.clone())
            .with_label(label);
        on_sqlite::tour(conn, statements, "SQLite (bundled, in memory)")?;
        footer(started);
        Ok(())
    }
    #[cfg(not(feature = "sqlite"))]
    {
        let _ = (caches, statements, label, started);
        Err("this build has no SQLite (the default `sqlite` feature); build with --features postgres and set DATABASE_URL".into())
    }
}
