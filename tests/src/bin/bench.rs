//! Benchmark: what a cached read saves, and what caching costs on the miss and write paths.
//! Every number is a median over many runs, printed next to the uncached baseline measured in
//! the same run (the machine is noisy: compare the ratios, not absolute times).
//!
//! `cargo run --release -p caching-tests --bin bench` runs SQLite with locmem (and memcached
//! when `MEMCACHED_URL` is set); with `--all-features` and `PG_DATABASE_URL`, PostgreSQL too.

use std::time::{Duration, Instant};

use caching_diesel::prelude::*;
use caching_diesel::{Cache, CacheSet, CachedConnection};
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

fn main() {
    println!("medians of {SAMPLES} reads (100 misses / writes); {ROWS} rows; ratios measured in this run");
    bench_db!(
        "sqlite",
        diesel::SqliteConnection::establish(":memory:").unwrap()
    );
    #[cfg(feature = "postgres")]
    if let Ok(url) = std::env::var("PG_DATABASE_URL") {
        bench_db!("postgres", {
            let mut c = diesel::PgConnection::establish(&url).unwrap();
            let schema = caching_tests::db::unique_name("bench");
            c.batch_execute(&format!(
                "CREATE SCHEMA {schema}; SET search_path TO {schema}"
            ))
            .unwrap();
            c
        });
    }
}
