//! Bad inputs through the whole stack (SQLite, locmem): an enormous bind list, binds full of
//! unicode and control characters, extreme per-query timeouts, and invalid `CACHE_URL`s.
//! "From the cache" means zero statements reached the database.

use std::time::Duration;

use caching_core::{Cache, Expiry, Timeout, MAX_TIMEOUT};
use caching_diesel::prelude::*;
use caching_tests::db::schema::{addons, users};
use caching_tests::db::{Addon, BackendKind, Env, User, Writes};
use diesel::connection::SimpleConnection;
use diesel::sql_types::Text;
use diesel::SqliteConnection;

type Db = SqliteConnection;

fn env(test: &str) -> Env<Db> {
    env_with(test, |b| b)
}

fn env_with(
    test: &str,
    f: impl FnOnce(caching_diesel::CacheBuilder) -> caching_diesel::CacheBuilder,
) -> Env<Db> {
    Env::configured(&format!("sqlite_{test}"), BackendKind::LocMem, f)
        .expect("SQLite and locmem need no server")
}

/// Users 3..=`last` besides the fixture's 1 and 2, inserted behind the cache's back (before
/// anything is cached).
fn add_users(e: &mut Env<Db>, last: i32) {
    (*e.conn)
        .batch_execute(&format!(
            "WITH RECURSIVE n(x) AS (SELECT 3 UNION ALL SELECT x + 1 FROM n WHERE x < {last}) \
             INSERT INTO users (id, name) SELECT x, 'user ' || x FROM n"
        ))
        .unwrap();
    e.queries();
}

/// 20,000 binds: well under the 32,766 host parameters bundled SQLite allows (its default
/// `SQLITE_MAX_VARIABLE_NUMBER`). The whole list is part of the key.
#[test]
fn enormous_bind_list_is_cached() {
    let mut e = env("huge_in");
    add_users(&mut e, 3000);
    let ids: Vec<i32> = (0..20_000).collect();
    let q = |ids: &Vec<i32>| {
        users::table
            .filter(users::id.eq_any(ids.clone()))
            .order(users::id)
            .cached()
    };
    let a: Vec<User> = q(&ids).load(&mut e.conn).unwrap();
    assert_eq!(e.queries(), 1);
    assert_eq!(
        a.iter().map(|u| u.id).collect::<Vec<_>>(),
        (1..=3000).collect::<Vec<_>>()
    );
    assert_eq!(a[2].name, "user 3");
    let b: Vec<User> = q(&ids).load(&mut e.conn).unwrap();
    assert_eq!(e.queries(), 0, "the second read must come from the cache");
    assert_eq!(a, b);
    let s = e.cache.stats();
    assert_eq!((s.hits, s.misses, s.fills), (1, 1, 1));

    // Only the last bind differs: another key, not a hit on a truncated one.
    let mut other = ids.clone();
    *other.last_mut().unwrap() = 30_000;
    let c: Vec<User> = q(&other).load(&mut e.conn).unwrap();
    assert_eq!(
        e.queries(),
        1,
        "a list differing in its last bind is another query"
    );
    assert_eq!(a, c);
}

/// Past SQLite's limit the database refuses the statement: an error for the caller (never a
/// panic), and nothing cached.
#[test]
fn bind_list_over_the_sqlite_limit_is_an_error() {
    let mut e = env("too_many_binds");
    let ids: Vec<i32> = (0..40_000).collect();
    for _ in 0..2 {
        let r: QueryResult<Vec<User>> = users::table
            .filter(users::id.eq_any(ids.clone()))
            .order(users::id)
            .cached()
            .load(&mut e.conn);
        match r {
            Err(err) => assert!(err.to_string().contains("too many SQL variables"), "{err}"),
            // Only with SQLITE_MAX_VARIABLE_NUMBER raised at build time.
            Ok(rows) => assert_eq!(rows.len(), 2),
        }
    }
    assert_eq!(
        e.queries(),
        2,
        "a failed read is never served from the cache"
    );
}

const NASTY: [&str; 9] = [
    "nul\0inside",
    "\0",
    "del\x7f",
    "crlf\r\nflush_all\r\nset x 0 0 1\r\n",
    "emoji 😀 👩‍👩‍👧 🎉",
    "tab\tvt\x0bff\x0c bell\x07 esc\x1b[0m",
    "\u{202e}rtl \u{feff}bom \u{200b}zero-width",
    "ünïcødé 名前 ☃",
    " ",
];

/// Names with NUL, DEL, CR/LF, escapes, emoji and invisible characters are stored, keyed,
/// cached and returned byte for byte.
#[test]
fn unicode_and_control_characters_round_trip() {
    let mut e = env("nasty_binds");
    for (i, name) in NASTY.iter().enumerate() {
        let u = User {
            id: 10 + i as i32,
            name: (*name).to_string(),
        };
        <Db as Writes>::create_user(&mut e.conn, &u).unwrap();
    }
    e.queries();
    for (i, name) in NASTY.iter().enumerate() {
        let q = || users::table.filter(users::name.eq(*name)).cached();
        let a: Vec<User> = q().load(&mut e.conn).unwrap();
        assert_eq!(e.queries(), 1, "{name:?}");
        let b: Vec<User> = q().load(&mut e.conn).unwrap();
        assert_eq!(e.queries(), 0, "{name:?} must come from the cache");
        assert_eq!(a, b);
        assert_eq!(a.len(), 1, "{name:?}");
        assert_eq!(a[0].id, 10 + i as i32);
        assert_eq!(a[0].name.as_bytes(), name.as_bytes());

        // Raw SQL with the same bind: its own key, the same row.
        let raw = || {
            diesel::sql_query("SELECT id, name FROM users WHERE name = ?")
                .bind::<Text, _>(*name)
                .cached()
        };
        let c: Vec<User> = raw().load(&mut e.conn).unwrap();
        let d: Vec<User> = raw().load(&mut e.conn).unwrap();
        assert_eq!(e.queries(), 1, "{name:?}");
        assert_eq!((&c, &d), (&a, &a));
    }
    // All of them in one list; names that differ by one invisible character are distinct.
    let all: Vec<User> = users::table
        .filter(users::name.eq_any(NASTY))
        .order(users::id)
        .cached()
        .load(&mut e.conn)
        .unwrap();
    assert_eq!(all.len(), NASTY.len());
    for (u, name) in all.iter().zip(NASTY) {
        assert_eq!(u.name, name);
    }
    let near: Vec<User> = users::table
        .filter(users::name.eq("nul"))
        .cached()
        .load(&mut e.conn)
        .unwrap();
    assert!(near.is_empty(), "a NUL must not truncate the bind");
}

/// `Duration::MAX` saturates (and is capped where the backend needs it); the row is cached.
#[test]
fn duration_max_timeout_caches_without_panicking() {
    let mut e = env("t_max");
    assert_eq!(
        e.cache.expiry(Timeout::After(Duration::MAX)),
        Expiry::Seconds(u64::MAX)
    );
    let q = || addons::table.find(1).cached().cached_for(Duration::MAX);
    let a: Addon = q().first(&mut e.conn).unwrap();
    assert!(e.queries() > 0);
    let b: Addon = q().first(&mut e.conn).unwrap();
    assert_eq!(e.queries(), 0, "the second read must come from the cache");
    assert_eq!((a.id, a.val), (1, 42));
    assert_eq!(a, b);
    // Non-model rows are cached only with an explicit timeout: this one.
    let names = || {
        users::table
            .select(users::name)
            .order(users::id)
            .cached()
            .timeout(Duration::MAX)
    };
    let n: Vec<String> = names().load(&mut e.conn).unwrap();
    let m: Vec<String> = names().load(&mut e.conn).unwrap();
    assert_eq!(e.queries(), 1);
    assert_eq!(n, m);
    assert_eq!(n, ["fliggy", "clouseroo"]);

    // With a configured cap the cap wins.
    let mut e = env_with("t_max_cap", |b| {
        b.max_timeout(Some(Duration::from_secs(60)))
    });
    assert_eq!(
        e.cache.expiry(Timeout::After(Duration::MAX)),
        Expiry::Seconds(60)
    );
    let a: Addon = q().first(&mut e.conn).unwrap();
    let b: Addon = q().first(&mut e.conn).unwrap();
    assert_eq!(e.queries(), 1);
    assert_eq!(a, b);
}

/// `Duration::ZERO` becomes one second: cached, and gone a second later (memcached would
/// read an exptime of 0 as "forever").
#[test]
fn zero_timeout_is_one_second_not_forever() {
    let mut e = env("t_zero");
    assert_eq!(
        e.cache.expiry(Timeout::After(Duration::ZERO)),
        Expiry::Seconds(1)
    );
    assert_eq!(Expiry::Seconds(1).memcached_exptime(), 1);
    let q = || addons::table.find(2).cached().cached_for(Duration::ZERO);
    let a: Addon = q().first(&mut e.conn).unwrap();
    assert_eq!(a.id, 2);
    assert_eq!(
        e.cache.stats().fills,
        1,
        "a zero timeout still caches, for one second"
    );
    std::thread::sleep(Duration::from_millis(1200));
    e.queries();
    let b: Addon = q().first(&mut e.conn).unwrap();
    assert!(e.queries() > 0, "a zero timeout must not mean forever");
    assert_eq!(a, b);
}

/// Invalid `CACHE_URL`s are rejected with an error that names the problem.
#[test]
fn invalid_cache_urls_are_explained() {
    let long = "p".repeat(65);
    let cases: Vec<(String, &[&str])> = vec![
        ("locmem://?prefix=has space".into(), &["whitespace"]),
        (" locmem://?prefix=app".into(), &["whitespace"]),
        ("locmem://?prefix=app ".into(), &["whitespace"]),
        ("locmem://?prefix=tab\there".into(), &["whitespace"]),
        ("locmem://?prefix=x\r\nflush_all".into(), &["control"]),
        ("locmem://?prefix=has%20space".into(), &["prefix", "'%'"]),
        ("locmem://?prefix=ünï".into(), &["prefix", "'ü'"]),
        ("locmem://?prefix=a/b".into(), &["prefix", "'/'"]),
        (
            format!("locmem://?prefix={long}"),
            &["prefix", "longer than 64 bytes"],
        ),
        (
            "redis2://localhost:6379".into(),
            &["unsupported", "\"redis2\""],
        ),
        (
            "http://example.invalid/".into(),
            &["unsupported", "\"http\""],
        ),
        ("LOCMEM://".into(), &["unsupported", "\"LOCMEM\""]),
        ("locmem:/".into(), &["scheme://"]),
        ("locmem".into(), &["scheme://"]),
        ("".into(), &["scheme://"]),
        ("locmem://?prefx=app".into(), &["unknown", "\"prefx\""]),
        ("locmem://?=1".into(), &["unknown", "\"\""]),
        ("locmem://?timeout".into(), &["name=value"]),
        ("locmem://?timeout=0".into(), &["timeout", "out of range"]),
        (
            "locmem://?timeout=315360001".into(),
            &["timeout", "out of range"],
        ),
        (
            "locmem://?max_timeout=0".into(),
            &["max_timeout", "out of range"],
        ),
        (
            "locmem://?count_timeout=99999999999".into(),
            &["count_timeout", "out of range"],
        ),
        (
            "locmem://?replica_timeout=315360001".into(),
            &["replica_timeout", "out of range"],
        ),
        ("locmem://?timeout=-1".into(), &["timeout", "whole number"]),
        ("locmem://?timeout=1.5".into(), &["timeout", "whole number"]),
        (
            "locmem://?timeout=18446744073709551616".into(),
            &["timeout", "whole number"],
        ),
        (
            "locmem://?timeout=never".into(),
            &["timeout", "whole number"],
        ),
        (
            "locmem://?max_entries=0".into(),
            &["max_entries", "positive"],
        ),
        (
            "locmem://?io_timeout_ms=5".into(),
            &["server parameters", "locmem"],
        ),
        ("memcached://".into(), &["host:port"]),
        ("memcached://127.0.0.1:0".into(), &["host:port"]),
        ("memcached://127.0.0.1:65536".into(), &["host:port"]),
        (
            "memcached://127.0.0.1:1?max_entries=5".into(),
            &["locmem parameters"],
        ),
    ];
    for (url, needles) in cases {
        let err = match Cache::from_url(&url) {
            Ok(c) => panic!("{url:?} accepted: {c:?}"),
            Err(e) => e.to_string(),
        };
        for needle in needles {
            assert!(err.contains(needle), "{url:?}: {err:?} lacks {needle:?}");
        }
    }

    // The boundaries themselves are fine.
    let p64 = "p".repeat(64);
    let c = Cache::from_url(&format!("locmem://?prefix={p64}")).unwrap();
    assert_eq!(c.config().prefix, p64);
    let max = MAX_TIMEOUT.as_secs();
    let c = Cache::from_url(&format!("locmem://?timeout={max}&max_timeout=1")).unwrap();
    assert_eq!(c.config().default_timeout, Timeout::After(MAX_TIMEOUT));
    assert_eq!(c.expiry(Timeout::Default), Expiry::Seconds(1));
}
