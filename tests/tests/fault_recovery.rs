//! Faults after which the cache must recover on its own: a write whose invalidation could not
//! reach memcached must not leave the old row cached forever. Once the fault is over, a read
//! (through any process's cache) returns the database's value within a few seconds.
//!
//! Each test models separate processes with separate [`Cache`] objects on one private
//! memcached ([`MemcachedProcess`]): every cache has its own memcached client, so its own
//! connections and its own fail-fast ("marked down") window. The database is an SQLite file
//! ([`SqliteFile`]) shared by all of them.
//!
//! - `restart_inside_fail_fast_window_is_not_stale_forever`: memcached restarts while two
//!   processes are inside their fail-fast windows. The reader's window ends first and it
//!   refills a row; the writer, still inside its window, updates the row: every attempt of
//!   its invalidation fails fast.
//! - `stall_during_write_is_not_stale_forever`: memcached freezes (SIGSTOP) for 700 ms during a
//!   write: the first attempt times out, the retries 40 and 80 ms later fall inside the
//!   client's own 1 s fail-fast window.
//!
//! - `one_dead_server_of_two_does_not_leave_entries_on_the_other_stale`: two servers; the one
//!   holding a row's flush list dies for good, so no walk can finish; the entry and the
//!   namespace counter live on the other. The writer's queue collapses into a namespace bump.
//!
//! Without a `memcached` binary on `PATH` these tests report a skip, or fail under `CI=true`.

#![cfg(feature = "sqlite")]

use std::time::{Duration, Instant};

use caching_core::backend::memcached::MemcachedOptions;
use caching_diesel::prelude::*;
use caching_diesel::{Cache, CachedConnection};
use caching_tests::db::schema::addons;
use caching_tests::db::{Addon, SqliteFile};
use caching_tests::{unique_prefix, MemcachedProcess};
use diesel::SqliteConnection;

/// How long after the write the cache may still serve the old row.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(5);

type Conn = CachedConnection<SqliteConnection>;

/// The production defaults that matter here: a 500 ms I/O timeout and a 1 s fail-fast window.
fn options() -> MemcachedOptions {
    let o = MemcachedOptions::default();
    assert_eq!(
        (o.io_timeout, o.retry_after),
        (Duration::from_millis(500), Duration::from_secs(1)),
        "these tests are timed for the default options"
    );
    o
}

/// A cache of one "process": its own memcached client on `mc`, sharing `prefix`.
fn process_cache(mc: &MemcachedProcess, prefix: &str) -> Cache {
    Cache::builder()
        .memcached(&[mc.addr()], options())
        .expect("private memcached address")
        .prefix(prefix)
        .build()
        .expect("cache configuration")
}

fn find(conn: &mut Conn, id: i32) -> Addon {
    addons::table
        .find(id)
        .cached()
        .first(conn)
        .unwrap_or_else(|e| panic!("cached find({id}) must not fail: {e}"))
}

fn direct(conn: &mut Conn, id: i32) -> Addon {
    addons::table
        .find(id)
        .first(&mut **conn)
        .unwrap_or_else(|e| panic!("find({id}) on the database: {e}"))
}

fn write_val(conn: &mut Conn, old: &Addon, val: i32) -> Addon {
    let saved: Addon = conn
        .save_changes(&Addon { val, ..old.clone() })
        .unwrap_or_else(|e| panic!("the write of val {val} must succeed whatever the cache: {e}"));
    assert_eq!(saved.val, val);
    saved
}

/// Reads add-on `id` through every connection of `readers` until all return `want`, for at
/// most [`RECOVERY_DEADLINE`] after `since`; panics with what they returned otherwise.
fn assert_recovers(
    readers: &mut [(&str, &mut Conn, &Cache)],
    id: i32,
    want: &Addon,
    since: Instant,
) {
    let deadline = since + RECOVERY_DEADLINE;
    loop {
        let got: Vec<(String, Addon)> = readers
            .iter_mut()
            .map(|(name, conn, _)| (name.to_string(), find(conn, id)))
            .collect();
        if got.iter().all(|(_, a)| a == want) {
            return;
        }
        if Instant::now() >= deadline {
            let stats: Vec<String> = readers
                .iter()
                .map(|(name, _, cache)| format!("{name}: {:?}", cache.stats()))
                .collect();
            panic!(
                "still stale {:?} after the write: the database holds {want:?}, the caches \
                 returned {got:?}\nstats: {stats:#?}",
                since.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fault 1. Processes A (a reader) and B (a writer), each with its own client:
///
/// 1. memcached is killed; A reads (fails: A marks the server down for 1 s);
/// 2. 500 ms later B writes (fails: B marks it down until 500 ms after A's window ends);
/// 3. memcached comes back, empty;
/// 4. A's window ends first: A reads add-on 1 and caches the current row;
/// 5. B, still inside its own window, updates add-on 1: the commit succeeds, and every
///    attempt of the invalidation fails fast (the helper returns `Ok`).
///
/// Afterwards reads through A, and through a process C started after the write, must return the new row within
/// a few seconds. Without a recovery mechanism they return A's entry forever.
#[test]
fn restart_inside_fail_fast_window_is_not_stale_forever() {
    let test = "restart_inside_fail_fast_window";
    let Some(mut mc) = MemcachedProcess::start(test) else {
        return;
    };
    let prefix = unique_prefix(test);
    let (cache_a, cache_b) = (process_cache(&mc, &prefix), process_cache(&mc, &prefix));
    let db = SqliteFile::new(test);
    let (mut a, mut b) = (db.cached_conn(&cache_a), db.cached_conn(&cache_b));
    // Both processes have talked to the server (pooled connections, known item size).
    let original = find(&mut a, 1);
    assert_eq!(find(&mut b, 2).id, 2);

    mc.kill();
    // 1. A's read fails and opens A's fail-fast window.
    assert_eq!(find(&mut a, 2).id, 2);
    let a_down = Instant::now();
    assert!(cache_a.stats().backend_errors > 0, "A saw the outage");

    // 2. B's write fails and opens B's window, 500 ms after A's.
    std::thread::sleep(Duration::from_millis(500));
    let first = write_val(&mut b, &original, 43);
    let b_down = Instant::now();
    assert!(cache_b.stats().failed_invalidations > 0 || cache_b.stats().backend_errors > 0);

    // 3. The server comes back (empty) while both windows are open.
    mc.restart();

    // 4. A's window ends: A caches the current row of add-on 1.
    let a_window_end = a_down + options().retry_after + Duration::from_millis(30);
    std::thread::sleep(a_window_end.saturating_duration_since(Instant::now()));
    let fills = cache_a.stats().fills;
    assert_eq!(find(&mut a, 1), first);
    assert_eq!(find(&mut a, 1), first);
    let sa = cache_a.stats();
    assert!(
        sa.fills > fills && sa.hits > 0,
        "set-up: A's window ended, so A must have cached add-on 1 again: {sa:?}"
    );

    // 5. B, still inside its window, updates add-on 1.
    let b_failed = cache_b.stats().failed_invalidations;
    let started = Instant::now();
    let b_window_end = b_down + options().retry_after;
    assert!(
        started + Duration::from_millis(150) < b_window_end,
        "set-up too slow: B's update starts {:?} before B's window ends, too late for its \
         retries to fall inside it",
        b_window_end.saturating_duration_since(started)
    );
    let second = write_val(&mut b, &first, 44);
    let written = Instant::now();
    assert_eq!(direct(&mut b, 1), second);
    eprintln!(
        "restart: B's update took {:?}; B's failed_invalidations {} -> {}",
        written - started,
        b_failed,
        cache_b.stats().failed_invalidations
    );

    // C: a process started after the write.
    let cache_c = process_cache(&mc, &prefix);
    let mut c = db.cached_conn(&cache_c);
    assert_recovers(
        &mut [("A", &mut a, &cache_a), ("C", &mut c, &cache_c)],
        1,
        &second,
        written,
    );
}

/// Fault 2. memcached freezes (SIGSTOP) for 700 ms while process B writes add-on 1, which
/// process A has cached. B's first invalidation attempt times out after 500 ms and marks the
/// server down for 1 s in B's client; the retries 40 and 80 ms later fail fast inside that
/// window, and the helper returns `Ok`. After the server resumes, reads through A (and a
/// process C started after the write) must return the new row within a few seconds.
#[test]
fn stall_during_write_is_not_stale_forever() {
    let test = "stall_during_write";
    let Some(mc) = MemcachedProcess::start(test) else {
        return;
    };
    let prefix = unique_prefix(test);
    let (cache_a, cache_b) = (process_cache(&mc, &prefix), process_cache(&mc, &prefix));
    let db = SqliteFile::new(test);
    let (mut a, mut b) = (db.cached_conn(&cache_a), db.cached_conn(&cache_b));
    let original = find(&mut a, 1);
    assert_eq!(find(&mut a, 1), original);
    assert!(
        cache_a.stats().hits > 0,
        "set-up: A serves add-on 1 from the cache"
    );
    // B has a pooled connection and knows the item size: the stall hits the write itself.
    assert_eq!(find(&mut b, 2).id, 2);

    let stall = Duration::from_millis(700);
    let (saved, written) = std::thread::scope(|s| {
        mc.pause().expect("SIGSTOP memcached");
        let paused = Instant::now();
        let resumer = s.spawn(|| {
            std::thread::sleep(stall);
            mc.resume().expect("SIGCONT memcached");
        });
        let saved = write_val(&mut b, &original, 43);
        let written = Instant::now();
        eprintln!(
            "stall: B's write returned {:?} into a {stall:?} stall; B's stats {:?}",
            written - paused,
            cache_b.stats()
        );
        resumer.join().expect("resumer thread");
        (saved, written)
    });
    assert_eq!(direct(&mut b, 1), saved);
    // The stall was shorter than the invalidation wait: B's write returned only once its
    // invalidation was through, so A's very first read after it is fresh.
    assert_eq!(
        find(&mut a, 1),
        saved,
        "B's write waited out the stall: {:?}",
        cache_b.stats()
    );
    assert_eq!(cache_b.pending_invalidations(), 0);

    let cache_c = process_cache(&mc, &prefix);
    let mut c = db.cached_conn(&cache_c);
    assert_recovers(
        &mut [("A", &mut a, &cache_a), ("C", &mut c, &cache_c)],
        1,
        &saved,
        written,
    );
}

/// Found in review: with two servers, a dead one holding a row's flush list blocked every
/// delivery attempt (each probe failed), so an entry on the live server stayed stale for as
/// long as the dead one was down. Now deliveries are attempted anyway and, failing for
/// `COLLAPSE_AFTER` (5 s), collapse into a namespace bump, which the live server takes.
#[test]
fn one_dead_server_of_two_does_not_leave_entries_on_the_other_stale() {
    use caching_core::backend::memcached::Memcached;
    use caching_core::{Invalidation, KeySpace, ObjectKey, Timeout};

    let test = "one_dead_server";
    let Some(live) = MemcachedProcess::start(test) else {
        return;
    };
    let Some(mut dead) = MemcachedProcess::start(test) else {
        return;
    };
    let servers = [live.addr(), dead.addr()];
    let placement = Memcached::new(&servers, options()).expect("two loopback servers");
    let on_live = |k: &str| placement.server_of(k) == live.addr();
    // A prefix whose namespace, version and generation keys of `addons` are on the live
    // server, and a row whose flush list is on the dead one while its value is on the live.
    let base = unique_prefix(test);
    let prefix = (0..)
        .map(|i| format!("{base}{i}"))
        .find(|p| {
            let ks = KeySpace::new(p).expect("valid prefix");
            on_live(&ks.namespace_key())
                && on_live(&ks.version_key("addons"))
                && on_live(&ks.generation_key("addons"))
        })
        .expect("some prefix places its counters on the live server");
    let ks = KeySpace::new(&prefix).expect("valid prefix");
    let row = (0..)
        .map(|i| ObjectKey::new("addons", &[i.to_string()]))
        .find(|r| {
            let list = ks.flush_key(r);
            !on_live(&list) && on_live(&ks.manual_key(&format!("v@{list}")))
        })
        .expect("some row has its list on the dead server and its value on the live one");
    let build = || {
        Cache::builder()
            .memcached(&servers, options())
            .expect("two loopback servers")
            .prefix(prefix.clone())
            .build()
            .expect("cache configuration")
    };
    let (writer, reader) = (build(), build());
    let v: u32 = reader.cached_with(&row, "v", Timeout::Forever, || 1);
    assert_eq!(v, 1);
    let again: u32 = reader.cached_with(&row, "v", Timeout::Forever, || 0);
    assert_eq!(again, 1, "set-up: the value is cached on the live server");

    dead.kill();
    let mut inv = Invalidation::new();
    inv.object(row.clone());
    let written = Instant::now();
    assert!(writer.invalidate(&inv).unwrap().deferred);
    let deadline = written + Duration::from_secs(15);
    loop {
        let read: u32 = reader.cached_with(&row, "v", Timeout::Forever, || 2);
        if read == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still stale {:?} after the write; writer: pending {} {:?}",
            written.elapsed(),
            writer.pending_invalidations(),
            writer.stats()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(writer.stats().coarse_invalidations, 1);
    eprintln!(
        "one dead server: fresh {:?} after the write",
        written.elapsed()
    );
}
