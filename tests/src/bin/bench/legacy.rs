//! The modes that run one comparison each: `--mix` (the write-heavy mix of issue 8 and the
//! SQL analysis cost), `--fetch-by-id` (fetch by id against whole results) and
//! `--registrations` (building a fill's registrations, per row).

use std::time::{Duration, Instant};

use caching_diesel::prelude::*;
use caching_diesel::{Cache, CacheSet, CachedConnection, DependencyTracking};
use diesel::connection::SimpleConnection;

use crate::report::Report;
use crate::sampling::{quantile, timed, us};

/// Samples per figure.
const SAMPLES: usize = 300;
/// Posts of the mix.
const MIX_ROWS: i32 = 20_000;

/// Median of `n` timed calls of `f`, which returns the duration to count.
fn sample(n: usize, mut f: impl FnMut(usize) -> Duration) -> Duration {
    let mut v: Vec<Duration> = (0..n).map(&mut f).collect();
    v.sort();
    quantile(&v, 0.5)
}

/// Times `f` (the old modes' shape: the duration only).
fn time<T>(f: impl FnOnce() -> T) -> Duration {
    timed(f).0
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
fn mix_caches(
    report: &mut Report,
    tracking: DependencyTracking,
    run: &str,
) -> Vec<(&'static str, Cache)> {
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
            Err(e) => report.skip(format!("memcached mix ({run})"), e.to_string()),
        }
    } else {
        report.skip(format!("memcached mix ({run})"), "MEMCACHED_URL unset");
    }
    out
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
    for chunk in (1..=MIX_ROWS).collect::<Vec<_>>().chunks(1000) {
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
    ($report:expr, $db:expr, $raw:expr) => {{
        for (mode, tracking) in trackings() {
            for (backend, cache) in mix_caches($report, tracking, mode) {
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
                $report.metric(
                    format!("{name}_throughput"),
                    MIX_OPS as f64 / elapsed.as_secs_f64(),
                    "ops/s",
                );
                $report.metric(
                    format!("{name}_hit_rate"),
                    hits as f64 / (hits + misses).max(1) as f64,
                    "ratio",
                );
                $report.metric(format!("{name}_writes"), writes as f64, "writes");
                $report.metric(
                    format!("{name}_stale_lists"),
                    stale as f64,
                    &format!("lists_of_{MIX_AUTHORS}"),
                );
            }
        }
    }};
}

/// The SQL analysis: per statement, through the per-process cache (every hit) and parsed
/// afresh (the first time a statement is seen).
fn parse_cost(report: &mut Report) {
    let statements = [
        ("sqlite", "SELECT `addons`.`id`, `addons`.`val`, `addons`.`author1_id`, `addons`.`author2_id` FROM `addons` WHERE (`addons`.`author1_id` = ?) ORDER BY `addons`.`id` LIMIT ?"),
        ("postgres", r#"SELECT "users"."id", "users"."name", "addons"."id", "addons"."val" FROM ("users" INNER JOIN "addons" ON ("addons"."author1_id" = "users"."id")) WHERE ("addons"."val" = $1) AND ("users"."name" = $2) ORDER BY "addons"."id" DESC LIMIT $3"#),
    ];
    for (backend, sql) in statements {
        let uncached = sample(SAMPLES, |_| {
            time(|| caching_diesel::__private::analyse_sql(sql, backend, false))
        });
        let cached = sample(SAMPLES * 10, |_| {
            time(|| caching_diesel::__private::analyse_sql(sql, backend, true))
        });
        report.metric(format!("parse_{backend}_uncached"), us(uncached), "us");
        report.metric(format!("parse_{backend}_cached"), us(cached), "us");
        report.ratio(
            format!("parse_{backend}_uncached_over_cached"),
            uncached.as_secs_f64() / cached.as_secs_f64(),
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
    ($report:expr, $db:expr, $raw:expr) => {{
        let mut backends = vec![("locmem", Cache::locmem())];
        match std::env::var("MEMCACHED_URL") {
            Ok(url) => match Cache::from_url(&format!("{url}?prefix=fbi{}", std::process::id())) {
                Ok(c) => backends.push(("memcached", c)),
                Err(e) => $report.skip("memcached fetch-by-id", e.to_string()),
            },
            Err(_) => $report.skip("memcached fetch-by-id", "MEMCACHED_URL unset"),
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
            // Bytes stored (payloads, with the cache's codec): every list whole, against the
            // id lists plus each doc once.
            let codec = cache.config().codec;
            let mut whole_bytes = 0;
            let mut ids_bytes = 0;
            let mut seen = std::collections::BTreeSet::new();
            let mut object_bytes = 0;
            for kk in 0..WIDE_LISTS {
                let rows = whole(&mut conn, kk);
                whole_bytes += codec.encode(&rows).unwrap().len();
                let ids: Vec<i32> = rows.iter().map(|d| d.id).collect();
                ids_bytes += codec.encode(&ids).unwrap().len();
                for d in rows {
                    if seen.insert(d.id) {
                        object_bytes += codec.encode(&d).unwrap().len();
                    }
                }
                by_id(&mut conn, kk);
            }
            let whole_hit = sample(SAMPLES, |i| time(|| whole(&mut conn, k(i))));
            let by_id_hit = sample(SAMPLES, |i| time(|| by_id(&mut conn, k(i))));
            // One doc saved (it sits in ~5 lists), then every list read again.
            let mut round = 0;
            let mut after_write = |fetch: bool| {
                round += 1;
                let d = Doc { id: 200, author_id: 0, body: format!("{body}{round}") };
                let _: Doc = conn.save_changes(&d).unwrap();
                time(|| {
                    for kk in 0..WIDE_LISTS {
                        if fetch { by_id(&mut conn, kk) } else { whole(&mut conn, kk) };
                    }
                })
            };
            let whole_refill = sample(30, |_| after_write(false));
            let by_id_refill = sample(30, |_| after_write(true));
            let name = format!("fetch_by_id_{}_{backend}", $db);
            $report.metric(format!("{name}_hit_whole"), us(whole_hit), "us");
            $report.metric(format!("{name}_hit_by_id"), us(by_id_hit), "us");
            $report.ratio(format!("{name}_hit_by_id_over_whole"), us(by_id_hit) / us(whole_hit));
            $report.metric(format!("{name}_bytes_whole"), whole_bytes as f64, "bytes");
            $report.metric(format!("{name}_bytes_by_id"), (ids_bytes + object_bytes) as f64, "bytes");
            $report.ratio(
                format!("{name}_bytes_by_id_over_whole"),
                (ids_bytes + object_bytes) as f64 / whole_bytes as f64,
            );
            $report.metric(format!("{name}_reread_{WIDE_LISTS}_lists_after_write_whole"), us(whole_refill), "us");
            $report.metric(format!("{name}_reread_{WIDE_LISTS}_lists_after_write_by_id"), us(by_id_refill), "us");
            $report.ratio(
                format!("{name}_reread_after_write_by_id_over_whole"),
                us(by_id_refill) / us(whole_refill),
            );
        }
    }};
}

/// Building the registrations of a fill whose rows all point at one parent: per row, for
/// growing results. Flat per-row figures mean linear cost.
fn registrations_cost(report: &mut Report) {
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
            time(|| {
                let mut regs = Registrations::new();
                for r in &rows {
                    regs.row(&ks, r, "bench:q:0123456789abcdef");
                    regs.child(&ks, r, &parent, "bench:q:0123456789abcdef");
                }
                regs
            })
        });
        let us = t.as_secs_f64() * 1e6 / n as f64;
        report.metric(format!("registrations_{n}_rows_per_row"), us, "us");
        per_row.push(us);
    }
    report.ratio(
        "registrations_per_row_10000_over_100",
        per_row[3] / per_row[1],
    );
}

/// The environment variable `var`, unless unset or empty.
#[cfg(feature = "postgres")]
fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// An in-memory SQLite database (it cannot be missing).
fn sqlite() -> diesel::SqliteConnection {
    diesel::SqliteConnection::establish(":memory:").expect("in-memory SQLite")
}

/// `--fetch-by-id`.
pub fn fetch_by_id(report: &mut Report) {
    println!("fetch by id: {WIDE_ROWS} docs of 2 KB, {WIDE_LISTS} overlapping lists of {WIDE_LIST_LEN}; medians of {SAMPLES} list reads (30 re-reads after a write)");
    fetch_by_id_db!(report, "sqlite", sqlite());
    #[cfg(feature = "postgres")]
    postgres(report, "fetch-by-id", |report, url| {
        fetch_by_id_db!(report, "postgres", pg(url, "fbi")?);
        Ok(())
    });
    #[cfg(not(feature = "postgres"))]
    report.skip("postgres fetch-by-id", NO_POSTGRES);
}

/// `--mix`.
pub fn mix(report: &mut Report) {
    println!("write-heavy mix: {MIX_OPS} ops (10% writes moving a post to another author, 45% author lists of 20, 45% posts by key among {MIX_HOT_ROWS}), {MIX_ROWS} posts, {MIX_AUTHORS} authors");
    mix_db!(report, "sqlite", sqlite());
    #[cfg(feature = "postgres")]
    postgres(report, "mix", |report, url| {
        mix_db!(report, "postgres", pg(url, "mix")?);
        Ok(())
    });
    #[cfg(not(feature = "postgres"))]
    report.skip("postgres mix", NO_POSTGRES);
    parse_cost(report);
}

/// `--registrations`.
pub fn registrations(report: &mut Report) {
    registrations_cost(report);
}

#[cfg(not(feature = "postgres"))]
const NO_POSTGRES: &str = "built without the `postgres` feature (use --all-features)";

/// A PostgreSQL connection in a fresh schema.
#[cfg(feature = "postgres")]
fn pg(url: &str, name: &str) -> Result<diesel::PgConnection, String> {
    crate::fixture::pg_in_fresh_schema(url, name).map(|(c, _)| c)
}

/// Runs `body` with `PG_DATABASE_URL`, or says why it cannot.
#[cfg(feature = "postgres")]
fn postgres(
    report: &mut Report,
    what: &str,
    body: impl FnOnce(&mut Report, &str) -> Result<(), String>,
) {
    let Some(url) = env("PG_DATABASE_URL") else {
        report.skip(format!("postgres {what}"), "PG_DATABASE_URL unset");
        return;
    };
    if let Err(e) = body(report, &url) {
        report.skip(format!("postgres {what}"), e);
    }
}
