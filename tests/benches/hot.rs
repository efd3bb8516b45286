//! Criterion benches of the hot functions of a hit, on the bench runner's 100-row list:
//! deriving the query's key (and, for comparison, the key of the same query boxed, whose SQL
//! is rendered afresh on every read), decoding its payload (the runner's `floor_decode`, shared
//! through `#[path]`), a locmem get of its entry, and the whole locmem hit through
//! `.cached().load`, and the engine's miss path on locmem (lookup with the lease, register,
//! check, publish: `Cache::read_through` without a database). No server needed:
//!
//! ```text
//! cargo bench -p caching-tests --bench hot
//! ```

use std::hint::black_box;

use caching_diesel::prelude::*;
use caching_diesel::{Cache, CacheSet, CachedConnection};
use caching_tests::db::schema::addons;
use caching_tests::db::Addon;
use criterion::{criterion_group, criterion_main, Criterion};
use diesel::connection::SimpleConnection;

#[path = "../src/bin/bench/floor.rs"]
mod floor;

/// The 100-row list of the bench runner.
macro_rules! list100 {
    () => {
        addons::table
            .filter(addons::author1_id.eq(1))
            .order(addons::id)
            .limit(100)
    };
}

/// An in-memory SQLite database with 1000 rows (200 of author 1) over a locmem cache.
fn fixture() -> (CachedConnection<diesel::SqliteConnection>, Cache) {
    let mut raw = diesel::SqliteConnection::establish(":memory:").expect("in-memory SQLite");
    let values: Vec<String> = (1..=1000)
        .map(|i| format!("({i}, {}, {}, {})", i % 1000, i % 5 + 1, i % 5 + 101))
        .collect();
    raw.batch_execute(&format!(
        "CREATE TABLE addons (id INTEGER PRIMARY KEY, val INTEGER NOT NULL, author1_id INTEGER NOT NULL, author2_id INTEGER NOT NULL); INSERT INTO addons VALUES {}",
        values.join(",")
    ))
    .expect("fixture");
    let cache = Cache::locmem();
    let conn = CachedConnection::with_caches(raw, CacheSet::new(cache.clone()));
    (conn, cache)
}

fn hot(c: &mut Criterion) {
    let (mut conn, cache) = fixture();
    let rows: Vec<Addon> = list100!().cached().load(&mut conn).expect("fill");
    assert_eq!(rows.len(), 100);
    let key = list100!().cached().key::<Addon, _>(&mut conn).expect("key");
    let entry = cache
        .backend()
        .get(&key)
        .expect("locmem get")
        .expect("the list is cached")
        .value;
    let payload = floor::entry_payload(&entry)
        .expect("a published entry")
        .to_vec();
    c.bench_function("key_derivation_100", |b| {
        b.iter(|| list100!().cached().key::<Addon, _>(&mut conn).expect("key"))
    });
    // The same query boxed: no static query id, so its SQL is rendered and hashed on every
    // read (the path of `sql_query`, boxed queries and `eq_any` lists).
    c.bench_function("key_derivation_100_boxed", |b| {
        b.iter(|| {
            list100!()
                .into_boxed()
                .cached()
                .key::<Addon, _>(&mut conn)
                .expect("key")
        })
    });
    c.bench_function("codec_decode_100", |b| {
        b.iter(|| floor::floor_decode(black_box(&payload)).expect("decode"))
    });
    c.bench_function("locmem_get_100", |b| {
        b.iter(|| cache.backend().get(black_box(&key)).expect("get"))
    });
    c.bench_function("locmem_hit_100", |b| {
        b.iter(|| -> Vec<Addon> { list100!().cached().load(&mut conn).expect("hit") })
    });
    // A miss and its fill, each on a new key (so every one misses): the read path's two
    // halves around a load that costs nothing.
    let misses = Cache::locmem();
    let mut n = 0u64;
    c.bench_function("locmem_miss_fill", |b| {
        b.iter(|| {
            n += 1;
            let key = misses.keys().manual_key(&format!("bench-{n}"));
            let plan = caching_diesel::core::ReadPlan::new(&key, &["addons"]);
            let load = || Ok::<_, std::convert::Infallible>(vec![1u32, 2, 3]);
            misses
                .read_through(&plan, load, |_, _| Ok(()))
                .expect("infallible")
        })
    });
}

criterion_group!(benches, hot);
criterion_main!(benches);
