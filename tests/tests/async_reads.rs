//! The whole async read path on real memcached: `Cache::begin_read_async` (lookup, lease, the
//! lease's waits on tokio timers) and `PreparedFill::publish_async` (register, check,
//! publish) run the same protocol code as the blocking driver, on the backend's tokio client:
//!
//! - a miss, its fill and the next hit need no blocking thread (the pool's only thread is
//!   held busy), on one server and on two (stages spread over servers);
//! - the blocking and the async driver share entries and leases: an async reader waits for a
//!   blocking reader's fill and is served it, without reading the database;
//! - a read or fill cancelled at any await point leaves no lease behind (the next reader
//!   does not wait) and nothing stale;
//! - a server that restarts among two defers the read to the blocking driver (which checks
//!   the servers), then the async path serves again.
#![cfg(feature = "async")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use caching_core::backend::memcached::{Memcached, MemcachedOptions};
use caching_core::{
    Backend, Cache, FillOutcome, Invalidation, ObjectKey, ReadOutcome, ReadPlan, ReadStart,
    Registrations,
};
use caching_tests::{test_memcached_options, unique_prefix, MemcachedProcess};

fn cache_on(servers: &[String], options: MemcachedOptions, test: &str) -> Cache {
    let mc: Arc<dyn Backend> = Arc::new(Memcached::new(servers, options).unwrap());
    Cache::builder()
        .shared_backend(mc)
        .prefix(unique_prefix(test))
        .lease_wait(Duration::from_millis(500))
        .build()
        .unwrap()
}

/// A runtime whose blocking pool has one thread, held busy by the returned guard's thread
/// until it is dropped: anything that needs the pool meanwhile waits (and times out).
fn runtime_without_blocking_pool() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Holds the blocking pool's only thread until `release` is set.
async fn hold_blocking_pool(release: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let started = Arc::new(AtomicBool::new(false));
    let s = started.clone();
    let held = tokio::task::spawn_blocking(move || {
        s.store(true, Ordering::SeqCst);
        while !release.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    while !started.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    held
}

fn row() -> ObjectKey {
    ObjectKey::new("users", &["1"])
}

fn plan(key: &str) -> ReadPlan<'_> {
    ReadPlan::new(key, &["users"])
}

fn register<'a>(
    cache: &'a Cache,
    key: &'a str,
) -> impl FnOnce(&String, &mut Registrations) -> Result<(), &'static str> + 'a {
    move |_, regs| {
        regs.row(cache.keys(), &row(), key);
        Ok(())
    }
}

/// An async read through the cache: the first half, the "database" (`db`, counted in
/// `loads`), the second half. `None` when the async path deferred the read.
async fn read_async(
    cache: &Cache,
    key: &str,
    db: &str,
    loads: &mut usize,
) -> Option<(String, ReadOutcome)> {
    match cache.begin_read_async::<String>(&plan(key)).await? {
        ReadStart::Hit(v) => Some((v, ReadOutcome::Hit)),
        ReadStart::Bypass(why) => Some((db.to_string(), ReadOutcome::Bypassed(why))),
        ReadStart::Miss(fill) => {
            *loads += 1;
            let value = db.to_string();
            let outcome = fill
                .prepare(&value, register(cache, key))
                .publish_async()
                .await;
            assert_eq!(
                outcome,
                Some(FillOutcome::Stored),
                "the async fill of {key}"
            );
            Some((value, ReadOutcome::Miss))
        }
    }
}

/// The blocking driver's read of the same entry.
fn read_blocking(cache: &Cache, key: &str, db: &str) -> (String, ReadOutcome) {
    cache
        .read_through(
            &plan(key),
            || Ok::<_, std::convert::Infallible>(db.to_string()),
            register(cache, key),
        )
        .unwrap()
}

fn invalidate_row(cache: &Cache) {
    let mut inv = Invalidation::new();
    inv.object(row());
    cache.invalidate(&inv).unwrap();
}

/// Reads, fills, hits and refills with the blocking pool held busy throughout.
fn miss_fill_hit_without_the_blocking_pool(test: &str, servers: &[String]) {
    let cache = cache_on(servers, test_memcached_options(), test);
    let keys: Vec<String> = (0..8)
        .map(|i| cache.keys().manual_key(&format!("q{i}")))
        .collect();
    // Several servers: a connection opened is followed by a check of every server's
    // sentinel, which the async path leaves to the blocking driver. Open the async
    // connections and check once, before the pool is held.
    let rt = runtime_without_blocking_pool();
    rt.block_on(async {
        for key in &keys {
            let mut n = 0;
            if read_async(&cache, key, "warm", &mut n).await.is_none() {
                read_blocking(&cache, key, "warm");
            }
        }
        for key in &keys {
            let mut n = 0;
            let _ = read_async(&cache, key, "warm", &mut n).await;
            read_blocking(&cache, key, "warm");
        }
        invalidate_row(&cache);
        let release = Arc::new(AtomicBool::new(false));
        let held = hold_blocking_pool(release.clone()).await;
        let run = async {
            let mut loads = 0;
            for key in &keys {
                let got = read_async(&cache, key, "fliggy", &mut loads).await;
                assert_eq!(
                    got,
                    Some(("fliggy".to_string(), ReadOutcome::Miss)),
                    "{key}"
                );
            }
            for key in &keys {
                let got = read_async(&cache, key, "unused", &mut loads).await;
                assert_eq!(got, Some(("fliggy".to_string(), ReadOutcome::Hit)), "{key}");
            }
            loads
        };
        let loads = tokio::time::timeout(Duration::from_secs(10), run).await;
        release.store(true, Ordering::SeqCst);
        held.await.unwrap();
        assert_eq!(
            loads.expect("an async read waited for the blocking pool"),
            keys.len(),
            "one load per miss, none per hit"
        );
    });
    // The blocking driver sees what the async one published, and a write reaches it.
    for key in &keys {
        assert_eq!(
            read_blocking(&cache, key, "unused"),
            ("fliggy".to_string(), ReadOutcome::Hit)
        );
    }
    invalidate_row(&cache);
    rt.block_on(async {
        for key in &keys {
            let mut loads = 0;
            let got = read_async(&cache, key, "rosie", &mut loads).await;
            assert_eq!(got, Some(("rosie".to_string(), ReadOutcome::Miss)));
        }
    });
}

#[test]
fn a_miss_its_fill_and_the_hit_need_no_blocking_thread() {
    let test = "async_reads_no_blocking";
    let Some(server) = MemcachedProcess::start(test) else {
        return;
    };
    miss_fill_hit_without_the_blocking_pool(test, &[server.addr()]);
}

#[test]
fn the_same_on_two_servers() {
    let test = "async_reads_two_servers";
    let (Some(a), Some(b)) = (
        MemcachedProcess::start(test),
        MemcachedProcess::start(&format!("{test}_b")),
    ) else {
        return;
    };
    miss_fill_hit_without_the_blocking_pool(test, &[a.addr(), b.addr()]);
}

/// A blocking reader holds the entry's lease while it reads the database; an async reader
/// of the same entry waits for its fill (tokio timers) and is served it.
#[test]
fn an_async_reader_waits_for_a_blocking_readers_fill() {
    let test = "async_reads_lease";
    let Some(server) = MemcachedProcess::start(test) else {
        return;
    };
    let cache = cache_on(&[server.addr()], test_memcached_options(), test);
    let key = cache.keys().manual_key("hot");
    let ReadStart::Miss(fill) = cache.begin_read::<String>(&plan(&key)) else {
        panic!("a miss");
    };
    let waits = cache.stats().lease_waits;
    let filler = {
        let (cache, key) = (cache.clone(), key.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(60));
            let outcome = fill.finish(&"leader".to_string(), register(&cache, &key));
            assert_eq!(outcome, Some(FillOutcome::Stored));
        })
    };
    let rt = runtime_without_blocking_pool();
    let got = rt.block_on(async {
        let mut loads = 0;
        let got = read_async(&cache, &key, "follower", &mut loads).await;
        assert_eq!(loads, 0, "the follower read the database");
        got
    });
    filler.join().unwrap();
    assert_eq!(got, Some(("leader".to_string(), ReadOutcome::Hit)));
    assert_eq!(cache.stats().lease_waits, waits + 1);
}

/// Reads and fills cancelled at every await point (timeouts from zero up, on a server that
/// answers in microseconds): none leaves a lease that makes the next reader wait, and none
/// leaves a stale entry once the row is written.
#[test]
fn a_read_cancelled_anywhere_leaves_no_lease_and_nothing_stale() {
    let test = "async_reads_cancelled";
    let Some(server) = MemcachedProcess::start(test) else {
        return;
    };
    let cache = cache_on(&[server.addr()], test_memcached_options(), test);
    let key = cache.keys().manual_key("q");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut cancelled = 0;
    for step in 0..60u64 {
        let db = format!("v{step}");
        let deadline = Duration::from_micros(step * 15);
        let finished = rt.block_on(async {
            let mut loads = 0;
            tokio::time::timeout(deadline, read_async(&cache, &key, &db, &mut loads))
                .await
                .is_ok()
        });
        if !finished {
            cancelled += 1;
        }
        // What a cancelled future gave up is given up on the blocking pool: let it run.
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
        // The row changes: the next read must see the new value, without waiting for a
        // lease a cancelled reader left.
        invalidate_row(&cache);
        let next = format!("w{step}");
        let waits = cache.stats().lease_waits;
        let (got, _) = read_blocking(&cache, &key, &next);
        assert_eq!(got, next, "a stale value after cancelling at {deadline:?}");
        assert_eq!(
            cache.stats().lease_waits,
            waits,
            "a lease was left behind by a read cancelled at {deadline:?}"
        );
        invalidate_row(&cache);
    }
    assert!(
        cancelled > 0,
        "no read was cancelled: the test tested nothing"
    );
}

/// One of two servers restarts: the async path defers the read to the blocking driver (a
/// server check is due), which checks the servers; then the async path serves again.
#[test]
fn a_restarted_server_defers_the_read_to_the_blocking_driver() {
    let test = "async_reads_restart";
    let (Some(a), Some(mut b)) = (
        MemcachedProcess::start(test),
        MemcachedProcess::start(&format!("{test}_b")),
    ) else {
        return;
    };
    let cache = cache_on(&[a.addr(), b.addr()], test_memcached_options(), test);
    let keys: Vec<String> = (0..6)
        .map(|i| cache.keys().manual_key(&format!("q{i}")))
        .collect();
    let rt = runtime_without_blocking_pool();
    for key in &keys {
        read_blocking(&cache, key, "old");
    }
    rt.block_on(async {
        for key in &keys {
            let mut loads = 0;
            let _ = read_async(&cache, key, "old", &mut loads).await;
        }
    });
    b.restart();
    // Reaching b again is a new connection: a server check is due, which the async path
    // leaves to the blocking driver. Nothing was written: both serve "old" (a hit, or a
    // miss that loads it).
    let mut deferred = 0;
    rt.block_on(async {
        for key in &keys {
            let mut loads = 0;
            match read_async(&cache, key, "old", &mut loads).await {
                Some((v, _)) => assert_eq!(v, "old"),
                None => {
                    deferred += 1;
                    assert_eq!(read_blocking(&cache, key, "old").0, "old");
                }
            }
        }
    });
    assert!(deferred > 0, "no read was deferred to the server check");
    // A write after the restart (its flush lists on b are gone; the check bumped the
    // namespace): no read may serve "old".
    invalidate_row(&cache);
    rt.block_on(async {
        for key in &keys {
            let mut loads = 0;
            match read_async(&cache, key, "new", &mut loads).await {
                Some((v, _)) => assert_eq!(v, "new", "{key} served stale after a restart"),
                None => assert_eq!(read_blocking(&cache, key, "new").0, "new"),
            }
        }
    });
    rt.block_on(async {
        for key in &keys {
            let mut loads = 0;
            let got = read_async(&cache, key, "unused", &mut loads).await;
            assert_eq!(got, Some(("new".to_string(), ReadOutcome::Hit)));
        }
    });
}
