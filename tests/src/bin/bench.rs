//! Benchmark: what a cached read saves, and what caching costs on the miss and write paths.
//! Every number is a median over many runs, printed next to the uncached baseline measured in
//! the same run (the machine is noisy: compare the ratios, not absolute times).
//!
//! `cargo run --release -p caching-tests --bin bench` runs SQLite with locmem (and memcached
//! when `MEMCACHED_URL` is set); with `--all-features` and `PG_DATABASE_URL`, PostgreSQL too.
//!
//! `-- --fetch-by-id` runs only the fetch-by-id comparison: wide rows in overlapping lists,
//! cached whole against fetched by id (hit latency, bytes stored, re-reading after a write).
//!
//! `-- --registrations` times building a fill's registrations for results of 10 to 10,000
//! rows that all point at one parent (the shape that made building them quadratic), per row.
//!
//! `-- --mix` runs only the write-heavy mix (issue 8): 90% cached reads (author lists and
//! rows by key), 10% writes that move a row to another author, under each
//! [`DependencyTracking`]: predicate dependencies, table-level, and flush lists only (the
//! original's model). It reports throughput, hit rate and how many cached lists a final sweep
//! finds stale; then the SQL analysis cost per statement, cached and uncached.

use std::time::{Duration, Instant};

use caching_diesel::prelude::*;
use caching_diesel::{Cache, CacheSet, CachedConnection, DependencyTracking};
use caching_tests::db::schema::addons;
use caching_tests::db::Addon;
use diesel::connection::SimpleConnection;

const ROWS: i32 = 20_000;
const SAMPLES: usize = 300;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median of `n` timed calls of `f`, which returns the duration to count.
fn sample(n: usize, mut f: impl FnMut(usize) -> Duration) -> Duration {
    median((0..n).map(&mut f).collect())
}

fn timed<T>(f: impl FnOnce() -> T) -> Duration {
    let t = Instant::now();
    std::hint::black_box(f());
    t.elapsed()
}

fn seed(conn: &mut impl SimpleConnection) {
    conn.batch_execute(
        "DROP TABLE IF EXISTS addons; CREATE TABLE addons (id INTEGER PRIMARY KEY, val INTEGER NOT NULL, author1_id INTEGER NOT NULL, author2_id INTEGER NOT NULL)",
    )
    .unwrap();
    for chunk in (1..=ROWS).collect::<Vec<_>>().chunks(1000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|i| format!("({i}, {}, {}, {})", i % 1000, i % 50 + 1, i % 7 + 1))
            .collect();
        conn.batch_execute(&format!("INSERT INTO addons VALUES {}", values.join(",")))
            .unwrap();
    }
}

/// A small deterministic generator (xorshift), so every mode sees the same operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const MIX_OPS: usize = 4000;
const MIX_AUTHORS: u64 = 50;
const MIX_HOT_ROWS: u64 = 500;

/// The tracking modes compared by the mix.
/// Their names are the `dependencies` URL parameter's values.
fn trackings() -> [(&'static str, DependencyTracking); 3] {
    [
        ("predicates", DependencyTracking::Predicates),
        ("table", DependencyTracking::TableLevel),
        ("flush-lists", DependencyTracking::FlushListsOnly),
    ]
}

/// Cache builders for the mix: locmem, and memcached when `MEMCACHED_URL` is set.
fn mix_caches(tracking: DependencyTracking, run: &str) -> Vec<(&'static str, Cache)> {
    let mut out = vec![(
        "locmem",
        Cache::builder()
            .locmem()
            .dependency_tracking(tracking)
            .build()
            .unwrap(),
    )];
    if let Ok(url) = std::env::var("MEMCACHED_URL") {
        let url = format!(
            "{url}?prefix=mix{}{}&dependencies={run}",
            std::process::id(),
            run.replace('-', "")
        );
        match Cache::from_url(&url) {
            Ok(c) => out.push(("memcached", c)),
            Err(e) => println!("skipped memcached mix: {e}"),
        }
    } else {
        println!("skipped memcached mix ({run}): MEMCACHED_URL unset");
    }
    out
}

fn caches() -> Vec<(&'static str, Cache)> {
    let mut out = vec![
        ("locmem", Cache::locmem()),
        (
            "lm+safe",
            Cache::builder()
                .locmem()
                .eviction_safe(true)
                .build()
                .unwrap(),
        ),
    ];
    if let Ok(url) = std::env::var("MEMCACHED_URL") {
        let url = format!("{url}?prefix=bench{}", std::process::id());
        match Cache::from_url(&url) {
            Ok(c) => out.push(("memcached", c)),
            Err(e) => eprintln!("memcached skipped: {e}"),
        }
        // The eviction-safe mode's cost: a second round trip per hit.
        match Cache::from_url(&format!("{url}safe&eviction_safe=true")) {
            Ok(c) => out.push(("mc+safe", c)),
            Err(e) => eprintln!("memcached (eviction-safe) skipped: {e}"),
        }
    }
    match std::env::var("REDIS_URL") {
        Ok(url) => {
            let url = format!("{url}?prefix=bench{}", std::process::id());
            match Cache::from_url(&url) {
                Ok(c) => out.push(("redis", c)),
                Err(e) => println!("skipped redis: {e}"),
            }
            match Cache::from_url(&format!("{url}safe&eviction_safe=true")) {
                Ok(c) => out.push(("rd+safe", c)),
                Err(e) => println!("skipped redis (eviction-safe): {e}"),
            }
        }
        Err(_) => println!("skipped redis: REDIS_URL unset"),
    }
    out
}

macro_rules! bench_db {
    ($db:expr, $raw:expr) => {{
        for (backend, cache) in caches() {
            let mut raw = $raw;
            seed(&mut raw);
            let mut conn = CachedConnection::with_caches(raw, CacheSet::new(cache.clone()));
            let list = |u: i32| {
                addons::table
                    .filter(addons::author1_id.eq(u))
                    .order(addons::val.desc())
                    .limit(20)
            };
            let user = |i: usize| (i % 50) as i32 + 1;
            let uncached = sample(SAMPLES, |i| timed(|| list(user(i)).load::<Addon>(&mut *conn).unwrap()));
            // Every read misses after a namespace bump: lookup + database + fill.
            let miss = sample(100, |i| {
                cache.invalidate_everything().unwrap();
                timed(|| -> Vec<Addon> { list(user(i)).cached().load(&mut conn).unwrap() })
            });
            for u in 1..=50 {
                let _: Vec<Addon> = list(u).cached().load(&mut conn).unwrap();
            }
            let hit = sample(SAMPLES, |i| timed(|| -> Vec<Addon> { list(user(i)).cached().load(&mut conn).unwrap() }));
            let pk = |i: usize| (i % 1000) as i32 + 1;
            let pk_uncached = sample(SAMPLES, |i| timed(|| addons::table.find(pk(i)).first::<Addon>(&mut *conn).unwrap()));
            for i in 0..1000 {
                let _: Addon = addons::table.find(pk(i)).cached().first(&mut conn).unwrap();
            }
            let pk_hit = sample(SAMPLES, |i| timed(|| -> Addon { addons::table.find(pk(i)).cached().first(&mut conn).unwrap() }));
            // Writes: a plain UPDATE vs save_changes (UPDATE + fetch + invalidation) of a row
            // that sits on a cached list.
            let plain_write = sample(100, |i| {
                timed(|| {
                    diesel::update(addons::table.find(pk(i)))
                        .set(addons::val.eq(addons::val + 1))
                        .execute(&mut *conn)
                        .unwrap()
                })
            });
            let cached_write = sample(100, |i| {
                let rows: Vec<Addon> = list(user(i)).cached().load(&mut conn).unwrap();
                let mut a = rows[0].clone();
                a.val += 1;
                timed(|| -> Addon { conn.save_changes(&a).unwrap() })
            });
            let r = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
            println!(
                "{:<9} {:<9} | list of 20: uncached {:>8.1?} hit {:>8.1?} = {:>5.1}x faster; miss+fill {:>8.1?} = {:>4.2}x uncached | by pk: uncached {:>8.1?} hit {:>8.1?} = {:>4.1}x | write: plain {:>8.1?} with invalidation {:>8.1?} = {:>4.2}x",
                $db, backend, uncached, hit, r(uncached, hit), miss, r(miss, uncached), pk_uncached, pk_hit,
                r(pk_uncached, pk_hit), plain_write, cached_write, r(cached_write, plain_write),
            );
            let s = cache.stats();
            println!("{:<9} {:<9} | stats: hits={} misses={} fills={} invalidations={} backend_errors={}", "", "", s.hits, s.misses, s.fills, s.invalidations, s.backend_errors);
        }
    }};
}

mod mix_schema {
    diesel::table! {
        posts (id) {
            id -> Integer,
            author_id -> Integer,
            val -> Integer,
        }
    }
}
use mix_schema::posts;

/// The mix's model: no foreign key declared for the cache, so a write invalidates what its
/// dependencies say and nothing through a parent's flush list (the foreign-key fan-out is
/// measured elsewhere).
#[derive(
    Queryable,
    Selectable,
    Identifiable,
    AsChangeset,
    Cached,
    serde::Serialize,
    serde::Deserialize,
    Debug,
    Clone,
    PartialEq,
)]
#[diesel(table_name = posts)]
struct Post {
    id: i32,
    author_id: i32,
    val: i32,
}

fn seed_posts(conn: &mut impl SimpleConnection) {
    conn.batch_execute(
        "DROP TABLE IF EXISTS posts; CREATE TABLE posts (id INTEGER PRIMARY KEY, author_id INTEGER NOT NULL, val INTEGER NOT NULL)",
    )
    .unwrap();
    for chunk in (1..=ROWS).collect::<Vec<_>>().chunks(1000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|i| format!("({i}, {}, 0)", i % MIX_AUTHORS as i32 + 1))
            .collect();
        conn.batch_execute(&format!("INSERT INTO posts VALUES {}", values.join(",")))
            .unwrap();
    }
    conn.batch_execute("CREATE INDEX posts_author ON posts (author_id)")
        .unwrap();
}

/// The write-heavy mix on one connection: throughput, hit rate, stale lists at the end.
macro_rules! mix_db {
    ($db:expr, $raw:expr) => {{
        for (mode, tracking) in trackings() {
            for (backend, cache) in mix_caches(tracking, mode) {
                let mut raw = $raw;
                seed_posts(&mut raw);
                let mut conn = CachedConnection::with_caches(raw, CacheSet::new(cache.clone()));
                let list = |u: i32| {
                    posts::table
                        .filter(posts::author_id.eq(u))
                        .order(posts::id)
                        .limit(20)
                };
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
                // Warm: every list and hot row once.
                for u in 1..=MIX_AUTHORS as i32 {
                    let _: Vec<Post> = list(u).cached().load(&mut conn).unwrap();
                }
                for id in 1..=MIX_HOT_ROWS as i32 {
                    let _: Post = posts::table.find(id).cached().first(&mut conn).unwrap();
                }
                let before = cache.stats();
                let start = Instant::now();
                let mut writes = 0;
                for _ in 0..MIX_OPS {
                    let roll = rng.below(100);
                    if roll < 10 {
                        // Move a hot post (low ids are in their lists' first 20) to another
                        // author: it leaves one cached list and enters another.
                        let id = rng.below(MIX_HOT_ROWS) as i32 + 1;
                        let to = rng.below(MIX_AUTHORS) as i32 + 1;
                        let mut p: Post = posts::table.find(id).first(&mut *conn).unwrap();
                        p.author_id = to;
                        p.val += 1;
                        let _: Post = conn.save_changes(&p).unwrap();
                        writes += 1;
                    } else if roll < 55 {
                        let u = rng.below(MIX_AUTHORS) as i32 + 1;
                        let _: Vec<Post> = list(u).cached().load(&mut conn).unwrap();
                    } else {
                        let id = rng.below(MIX_HOT_ROWS) as i32 + 1;
                        let _: Post = posts::table.find(id).cached().first(&mut conn).unwrap();
                    }
                }
                let elapsed = start.elapsed();
                let s = cache.stats();
                let (hits, misses) = (s.hits - before.hits, s.misses - before.misses);
                let mut stale = 0;
                for u in 1..=MIX_AUTHORS as i32 {
                    let cached: Vec<Post> = list(u).cached().load(&mut conn).unwrap();
                    let direct: Vec<Post> = list(u).load(&mut *conn).unwrap();
                    if cached != direct {
                        stale += 1;
                    }
                }
                let name = format!("mix_{}_{}_{}", $db, backend, mode);
                println!(
                    "metric {name}_throughput {:.0} ops/s",
                    MIX_OPS as f64 / elapsed.as_secs_f64()
                );
                println!(
                    "metric {name}_hit_rate {:.3} ratio",
                    hits as f64 / (hits + misses).max(1) as f64
                );
                println!(
                    "metric {name}_stale_lists {stale} of {MIX_AUTHORS} (after {writes} writes)"
                );
            }
        }
    }};
}

/// The SQL analysis: per statement, through the per-process cache (every hit) and parsed
/// afresh (the first time a statement is seen).
fn parse_cost() {
    let statements = [
        ("sqlite", "SELECT `addons`.`id`, `addons`.`val`, `addons`.`author1_id`, `addons`.`author2_id` FROM `addons` WHERE (`addons`.`author1_id` = ?) ORDER BY `addons`.`id` LIMIT ?"),
        ("postgres", r#"SELECT "users"."id", "users"."name", "addons"."id", "addons"."val" FROM ("users" INNER JOIN "addons" ON ("addons"."author1_id" = "users"."id")) WHERE ("addons"."val" = $1) AND ("users"."name" = $2) ORDER BY "addons"."id" DESC LIMIT $3"#),
    ];
    for (backend, sql) in statements {
        let uncached = sample(SAMPLES, |_| {
            timed(|| caching_diesel::__private::analyse_sql(sql, backend, false))
        });
        let cached = sample(SAMPLES * 10, |_| {
            timed(|| caching_diesel::__private::analyse_sql(sql, backend, true))
        });
        println!(
            "metric parse_{backend}_uncached {:.1} us",
            uncached.as_secs_f64() * 1e6
        );
        println!(
            "metric parse_{backend}_cached {:.2} us",
            cached.as_secs_f64() * 1e6
        );
        println!(
            "ratio parse_{backend}_uncached_over_cached {:.0}",
            uncached.as_secs_f64() / cached.as_secs_f64()
        );
    }
}

mod wide_schema {
    diesel::table! {
        docs (id) {
            id -> Integer,
            author_id -> Integer,
            body -> Text,
        }
    }
}
use wide_schema::docs;

/// A wide row for the fetch-by-id figures: a 2 KB body.
#[derive(
    Queryable,
    Selectable,
    Identifiable,
    AsChangeset,
    Cached,
    serde::Serialize,
    serde::Deserialize,
    Debug,
    Clone,
    PartialEq,
)]
#[diesel(table_name = docs)]
struct Doc {
    id: i32,
    author_id: i32,
    body: String,
}

const WIDE_ROWS: i32 = 400;
const WIDE_LISTS: i32 = 40;
const WIDE_LIST_LEN: i64 = 50;

/// Fetch by id against whole-result caching on wide rows and overlapping lists: list `k`
/// holds the 50 docs from id `10k`, so each doc is in about 5 lists. Hit latency, bytes
/// stored, and the cost of re-reading every list after one doc is saved.
macro_rules! fetch_by_id_db {
    ($db:expr, $raw:expr) => {{
        let mut backends = vec![("locmem", Cache::locmem())];
        match std::env::var("MEMCACHED_URL") {
            Ok(url) => match Cache::from_url(&format!("{url}?prefix=fbi{}", std::process::id())) {
                Ok(c) => backends.push(("memcached", c)),
                Err(e) => println!("skipped memcached fetch-by-id: {e}"),
            },
            Err(_) => println!("skipped memcached fetch-by-id: MEMCACHED_URL unset"),
        }
        for (backend, cache) in backends {
            let mut raw = $raw;
            raw.batch_execute(
                "DROP TABLE IF EXISTS docs; CREATE TABLE docs (id INTEGER PRIMARY KEY, author_id INTEGER NOT NULL, body TEXT NOT NULL)",
            )
            .unwrap();
            let body = "x".repeat(2048);
            let values: Vec<String> = (1..=WIDE_ROWS)
                .map(|i| format!("({i}, {}, '{body}')", i % 10))
                .collect();
            raw.batch_execute(&format!("INSERT INTO docs VALUES {}", values.join(",")))
                .unwrap();
            let mut conn = CachedConnection::with_caches(raw, CacheSet::new(cache.clone()));
            let list = |k: i32| {
                docs::table
                    .filter(docs::id.gt(k * 10))
                    .order(docs::id)
                    .limit(WIDE_LIST_LEN)
            };
            let whole = |conn: &mut CachedConnection<_>, k: i32| -> Vec<Doc> {
                list(k).cached().load(conn).unwrap()
            };
            let by_id = |conn: &mut CachedConnection<_>, k: i32| -> Vec<Doc> {
                list(k).cached().fetch_by_id(conn).unwrap()
            };
            let k = |i: usize| (i % WIDE_LISTS as usize) as i32;
            // Bytes stored: every list whole, against the id lists plus each doc once.
            let mut whole_bytes = 0;
            let mut ids_bytes = 0;
            let mut seen = std::collections::BTreeSet::new();
            let mut object_bytes = 0;
            for kk in 0..WIDE_LISTS {
                let rows = whole(&mut conn, kk);
                whole_bytes += serde_json::to_vec(&rows).unwrap().len();
                let ids: Vec<i32> = rows.iter().map(|d| d.id).collect();
                ids_bytes += serde_json::to_vec(&ids).unwrap().len();
                for d in rows {
                    if seen.insert(d.id) {
                        object_bytes += serde_json::to_vec(&d).unwrap().len();
                    }
                }
                by_id(&mut conn, kk);
            }
            let whole_hit = sample(SAMPLES, |i| timed(|| whole(&mut conn, k(i))));
            let by_id_hit = sample(SAMPLES, |i| timed(|| by_id(&mut conn, k(i))));
            // One doc saved (it sits in ~5 lists), then every list read again.
            let mut round = 0;
            let mut after_write = |fetch: bool| {
                round += 1;
                let d = Doc { id: 200, author_id: 0, body: format!("{body}{round}") };
                let _: Doc = conn.save_changes(&d).unwrap();
                timed(|| {
                    for kk in 0..WIDE_LISTS {
                        if fetch { by_id(&mut conn, kk) } else { whole(&mut conn, kk) };
                    }
                })
            };
            let whole_refill = sample(30, |_| after_write(false));
            let by_id_refill = sample(30, |_| after_write(true));
            let name = format!("fetch_by_id_{}_{backend}", $db);
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            println!("metric {name}_hit_whole {:.1} us", us(whole_hit));
            println!("metric {name}_hit_by_id {:.1} us", us(by_id_hit));
            println!("ratio {name}_hit_by_id_over_whole {:.2}", us(by_id_hit) / us(whole_hit));
            println!("metric {name}_bytes_whole {whole_bytes} bytes");
            println!("metric {name}_bytes_by_id {} bytes", ids_bytes + object_bytes);
            println!(
                "ratio {name}_bytes_by_id_over_whole {:.2}",
                (ids_bytes + object_bytes) as f64 / whole_bytes as f64
            );
            println!("metric {name}_reread_{WIDE_LISTS}_lists_after_write_whole {:.1} us", us(whole_refill));
            println!("metric {name}_reread_{WIDE_LISTS}_lists_after_write_by_id {:.1} us", us(by_id_refill));
            println!(
                "ratio {name}_reread_after_write_by_id_over_whole {:.2}",
                us(by_id_refill) / us(whole_refill)
            );
        }
    }};
}

/// Building the registrations of a fill whose rows all link to one parent: per row, for
/// growing results. Flat per-row figures mean linear cost.
fn registrations_cost() {
    use caching_diesel::__private::{KeySpace, Registrations};
    use caching_diesel::ObjectKey;
    let ks = KeySpace::new("bench").unwrap();
    let parent = ObjectKey::new("users", &["1"]);
    let mut per_row = Vec::new();
    for n in [10usize, 100, 1_000, 10_000] {
        let rows: Vec<ObjectKey> = (0..n)
            .map(|i| ObjectKey::new("addons", &[i.to_string()]))
            .collect();
        let samples = (200_000 / n).clamp(5, 300);
        let t = sample(samples, |_| {
            timed(|| {
                let mut regs = Registrations::new();
                for r in &rows {
                    regs.row(&ks, r, "bench:q:0123456789abcdef");
                    regs.link(&ks, r, &parent);
                }
                regs
            })
        });
        let us = t.as_secs_f64() * 1e6 / n as f64;
        println!("metric registrations_{n}_rows_per_row {us:.3} us");
        per_row.push(us);
    }
    println!(
        "ratio registrations_per_row_10000_over_100 {:.2}",
        per_row[3] / per_row[1]
    );
}

/// A PostgreSQL connection whose search path is a new schema (tables of a run never meet
/// another run's).
#[cfg(feature = "postgres")]
fn pg_in_fresh_schema(url: &str, name: &str) -> diesel::PgConnection {
    let mut c = diesel::PgConnection::establish(url).unwrap();
    let schema = caching_tests::db::unique_name(name);
    c.batch_execute(&format!(
        "CREATE SCHEMA {schema}; SET search_path TO {schema}"
    ))
    .unwrap();
    c
}

fn main() {
    if std::env::args().any(|a| a == "--registrations") {
        registrations_cost();
        return;
    }
    if std::env::args().any(|a| a == "--fetch-by-id") {
        println!("fetch by id: {WIDE_ROWS} docs of 2 KB, {WIDE_LISTS} overlapping lists of {WIDE_LIST_LEN}; medians of {SAMPLES} list reads (30 re-reads after a write)");
        fetch_by_id_db!(
            "sqlite",
            diesel::SqliteConnection::establish(":memory:").unwrap()
        );
        #[cfg(feature = "postgres")]
        match std::env::var("PG_DATABASE_URL") {
            Ok(url) => fetch_by_id_db!("postgres", pg_in_fresh_schema(&url, "fbi")),
            Err(_) => println!("skipped postgres fetch-by-id: PG_DATABASE_URL unset"),
        }
        return;
    }
    if std::env::args().any(|a| a == "--mix") {
        println!("write-heavy mix: {MIX_OPS} ops (10% writes moving a post to another author, 45% author lists of 20, 45% posts by key among {MIX_HOT_ROWS}), {ROWS} posts, {MIX_AUTHORS} authors");
        mix_db!(
            "sqlite",
            diesel::SqliteConnection::establish(":memory:").unwrap()
        );
        #[cfg(feature = "postgres")]
        match std::env::var("PG_DATABASE_URL") {
            Ok(url) => mix_db!("postgres", pg_in_fresh_schema(&url, "mix")),
            Err(_) => println!("skipped postgres mix: PG_DATABASE_URL unset"),
        }
        parse_cost();
        return;
    }
    println!("medians of {SAMPLES} reads (100 misses / writes); {ROWS} rows; ratios measured in this run");
    bench_db!(
        "sqlite",
        diesel::SqliteConnection::establish(":memory:").unwrap()
    );
    #[cfg(feature = "postgres")]
    if let Ok(url) = std::env::var("PG_DATABASE_URL") {
        bench_db!("postgres", pg_in_fresh_schema(&url, "bench"));
    }
}
