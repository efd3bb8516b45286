//! The whole async read path on real memcached: `Cache::begin_read_async` (lookup, lease, the
//! lease's waits on tokio timers) and `PreparedFill::publish_async` (register, check,
//! publish) run the same protocol code as the blocking driver, on the backend's tokio client:
//!
//! - a miss, its fill and the next hit need no blocking thread (the pool's only thread is
//!   held busy), on one server and on two (stages spread over servers);
//! - the blocking and the async driver share entries and leases: an async reader waits for a
//!   blocking reader's fill and is served it, without reading the database;
//! - a read or fill cancelled at any await point leaves nothing stale, and a miss abandoned
//!   between the halves gives its lease up (the next reader does not wait);
//! - a server that restarts among two defers the read to the blocking driver (which checks
//!   the servers), then the async path serves again;
//! - `Cache::invalidate_async` runs a write's invalidation on the same client, with the
//!   blocking pool held too, and one dropped at any await is delivered by the background
//!   delivery: the next read is fresh; over two servers, a list is never cleared while a
//!   delete of an entry it led to failed on the other server;
//! - on a private redis-server (feature `redis`) too: misses, fills and hits without the
//!   blocking pool, even for the first fill on a fresh server.
#![cfg(feature = "async")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use caching_core::backend::memcached::{Memcached, MemcachedOptions};
use caching_core::{
    Backend, Cache, FillOutcome, Invalidation, ObjectKey, ReadOutcome, ReadPlan, ReadStart,
    Registrations,
};
use caching_tests::async_db::PollLimit;
use caching_tests::{test_memcached_options, unique_prefix, MemcachedProcess, YieldingBackend};

fn cache_on(servers: &[String], options: MemcachedOptions, test: &str) -> Cache {
    let mc = Arc::new(Memcached::new(servers, options).unwrap());
    cache_with(mc, test, Duration::from_millis(500))
}

/// A cache of its own (a fresh prefix) on `backend`, readers waiting `lease_wait` for
/// another reader's fill.
fn cache_with(backend: Arc<dyn Backend>, test: &str, lease_wait: Duration) -> Cache {
    Cache::builder()
        .shared_backend(backend)
        .prefix(unique_prefix(test))
        .lease_wait(lease_wait)
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
    read_async_filling(cache, key, db, loads, true).await
}

/// [`read_async`]; `must_store`: a miss's fill must be stored (not so where fills race).
async fn read_async_filling(
    cache: &Cache,
    key: &str,
    db: &str,
    loads: &mut usize,
    must_store: bool,
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
            if must_store {
                assert_eq!(
                    outcome,
                    Some(FillOutcome::Stored),
                    "the async fill of {key}"
                );
            }
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
    no_blocking_pool_on(cache_on(servers, test_memcached_options(), test));
}

fn no_blocking_pool_on(cache: Cache) {
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

/// A cache on `server` whose non-blocking calls yield once before they run
/// ([`YieldingBackend`]): every await is then a point to drop a future at.
fn yielding_cache(server: &MemcachedProcess, test: &str, lease_wait: Duration) -> Cache {
    let mc = Memcached::new(&[server.addr()], test_memcached_options()).unwrap();
    cache_with(Arc::new(YieldingBackend(Arc::new(mc))), test, lease_wait)
}

/// Reads and fills dropped at every await point (after 1, 2, .. polls; each backend call
/// yields once, so every await is one): none leaves a stale entry once the row is written.
/// (A lease whose request was still in flight when its future was dropped is given up
/// twice, at once and 100 ms later; a request that reaches the server later still leaves
/// its marker until it expires: counted and printed, not asserted.)
#[test]
fn a_read_cancelled_anywhere_leaves_nothing_stale() {
    let test = "async_reads_cancelled";
    let Some(server) = MemcachedProcess::start(test) else {
        return;
    };
    // A short lease wait: a reader meeting a marker left behind waits little.
    let cache = yielding_cache(&server, test, Duration::from_millis(20));
    let key = cache.keys().manual_key("q");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut cancelled, mut left_behind) = (0, 0);
    for step in 1..=40usize {
        let db = format!("v{step}");
        // Dropped after `step` polls (if not done by then).
        let deadline = step;
        let finished = rt.block_on(async {
            let mut loads = 0;
            PollLimit::new(
                read_async_filling(&cache, &key, &db, &mut loads, false),
                step,
            )
            .await
            .is_some()
        });
        if !finished {
            cancelled += 1;
        }
        // A lease the cancelled read took is given up in the background (at once, and
        // again after 100 ms): one still there after 300 ms was left behind.
        let waited = std::time::Instant::now();
        let pending = || {
            cache.backend().get(&key).is_ok_and(|item| {
                // A pending marker (`P1...`) or memcached's native lease (an empty item).
                item.is_some_and(|i| i.value.is_empty() || i.value.starts_with(b"P1"))
            })
        };
        while pending() && waited.elapsed() < Duration::from_millis(300) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if pending() {
            left_behind += 1;
        }
        // The row changes: the next read must see the new value.
        invalidate_row(&cache);
        let next = format!("w{step}");
        let (got, _) = read_blocking(&cache, &key, &next);
        assert_eq!(got, next, "a stale value after dropping at poll {deadline}");
        invalidate_row(&cache);
    }
    println!("async_reads cancelled: {cancelled} of 40 reads cancelled, {left_behind} leases found left behind");
    assert!(
        cancelled > 0,
        "no read was cancelled: the test tested nothing"
    );
}

/// A miss given up between the halves (its load failed, or the request was cancelled while
/// it read the database), dropped on the runtime's thread: its lease is given up (on the
/// blocking pool), so the next reader does not wait for it.
#[test]
fn an_abandoned_async_miss_gives_its_lease_up() {
    let test = "async_reads_abandoned";
    let Some(server) = MemcachedProcess::start(test) else {
        return;
    };
    let cache = cache_on(&[server.addr()], test_memcached_options(), test);
    let rt = runtime_without_blocking_pool();
    for (i, prepared) in [false, true].into_iter().enumerate() {
        let key = cache.keys().manual_key(&format!("q{i}"));
        rt.block_on(async {
            let start = cache.begin_read_async::<String>(&plan(&key)).await;
            let Some(ReadStart::Miss(fill)) = start else {
                panic!("a miss");
            };
            if prepared {
                // Registered and encoded, never published.
                drop(fill.prepare(&"unused".to_string(), register(&cache, &key)));
            } else {
                drop(fill);
            }
            // The release runs on the blocking pool: let it.
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        let waited = std::time::Instant::now();
        while waited.elapsed() < Duration::from_secs(2)
            && cache.backend().get(&key).unwrap().is_some()
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let waits = cache.stats().lease_waits;
        assert_eq!(
            read_blocking(&cache, &key, "fresh"),
            ("fresh".to_string(), ReadOutcome::Miss)
        );
        assert_eq!(
            cache.stats().lease_waits,
            waits,
            "the next reader waited for an abandoned lease (prepared: {prepared})"
        );
    }
}

/// Fills `keys` with `value` (async), then invalidates the row with the blocking pool held:
/// the invalidation needs no blocking thread, and the next reads load `next`.
fn invalidation_without_the_blocking_pool(cache: &Cache) {
    let keys: Vec<String> = (0..6)
        .map(|i| cache.keys().manual_key(&format!("w{i}")))
        .collect();
    let rt = runtime_without_blocking_pool();
    rt.block_on(async {
        // Warm: counters, connections (and, on several servers, their check).
        for key in &keys {
            let mut n = 0;
            if read_async(cache, key, "old", &mut n).await.is_none() {
                read_blocking(cache, key, "old");
            }
        }
        let mut inv = Invalidation::new();
        inv.object(row());
        cache.invalidate_async(&inv).await.unwrap();
        for key in &keys {
            let mut n = 0;
            if read_async(cache, key, "old", &mut n).await.is_none() {
                read_blocking(cache, key, "old");
            }
        }
        let release = Arc::new(AtomicBool::new(false));
        let held = hold_blocking_pool(release.clone()).await;
        let run = async {
            let report = cache.invalidate_async(&inv).await.unwrap();
            let mut loads = 0;
            for key in &keys {
                let got = read_async(cache, key, "new", &mut loads).await;
                assert_eq!(got, Some(("new".to_string(), ReadOutcome::Miss)), "{key}");
            }
            report
        };
        let report = tokio::time::timeout(Duration::from_secs(10), run).await;
        release.store(true, Ordering::SeqCst);
        held.await.unwrap();
        let report = report.expect("the invalidation waited for the blocking pool");
        assert_eq!(report.deleted, keys.len(), "{report:?}");
        assert!(!report.deferred);
    });
}

#[test]
fn an_invalidation_needs_no_blocking_thread() {
    let test = "async_reads_invalidation";
    let Some(server) = MemcachedProcess::start(test) else {
        return;
    };
    invalidation_without_the_blocking_pool(&cache_on(
        &[server.addr()],
        test_memcached_options(),
        test,
    ));
}

#[test]
fn an_invalidation_on_two_servers_needs_no_blocking_thread() {
    let test = "async_reads_invalidation_two";
    let (Some(a), Some(b)) = (
        MemcachedProcess::start(test),
        MemcachedProcess::start(&format!("{test}_b")),
    ) else {
        return;
    };
    invalidation_without_the_blocking_pool(&cache_on(
        &[a.addr(), b.addr()],
        test_memcached_options(),
        test,
    ));
}

/// Invalidations dropped at every await (after 1, 2, .. polls; each backend call yields
/// once): each is delivered anyway (by the background delivery), and the next read loads
/// the new value.
#[test]
fn an_invalidation_dropped_at_any_await_is_delivered() {
    let test = "async_reads_invalidation_dropped";
    let Some(server) = MemcachedProcess::start(test) else {
        return;
    };
    let cache = yielding_cache(&server, test, Duration::from_millis(200));
    let key = cache.keys().manual_key("q");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut cancelled = 0;
    for step in 1..=30usize {
        let old = format!("old{step}");
        read_blocking(&cache, &key, &old);
        assert_eq!(read_blocking(&cache, &key, "unused").0, old);
        // Dropped after `step` polls (if not done by then).
        let deadline = step;
        let finished = rt.block_on(async {
            let mut inv = Invalidation::new();
            inv.object(row());
            PollLimit::new(cache.invalidate_async(&inv), step)
                .await
                .is_some()
        });
        if !finished {
            cancelled += 1;
        }
        assert!(
            cache.wait_for_delivery(Duration::from_secs(10)),
            "undelivered after dropping at poll {deadline}"
        );
        let new = format!("new{step}");
        assert_eq!(
            read_blocking(&cache, &key, &new).0,
            new,
            "stale after an invalidation dropped at poll {deadline}"
        );
        invalidate_row(&cache);
    }
    assert!(
        cancelled > 0,
        "no invalidation was dropped: the test tested nothing"
    );
}

/// Two servers: the row's flush lists and every counter on one (A), a cached entry on the
/// other (B). B is marked down (a read of it timed out while it was frozen; it answers
/// again, but calls fail fast for `retry_after`) while an async invalidation of the row
/// runs: its delete of the entry fails without being sent, so no list may be cleared (the
/// retry would find the list empty and leave the entry stale). Once B is tried again the
/// queued invalidation is delivered, and the next read loads the new value.
#[test]
fn a_walk_never_clears_a_list_whose_deletes_failed() {
    let test = "async_reads_walk_order";
    let (Some(a), Some(b)) = (
        MemcachedProcess::start(test),
        MemcachedProcess::start(&format!("{test}_b")),
    ) else {
        return;
    };
    let options = MemcachedOptions {
        op_timeout: Duration::from_millis(300),
        // Long enough that the invalidation below certainly meets the mark.
        retry_after: Duration::from_secs(3),
        ..test_memcached_options()
    };
    // A key space whose lists and counters all live on A, and an entry key on B.
    let (cache, key) = (0..500)
        .find_map(|_| {
            let mc = Arc::new(Memcached::new(&[a.addr(), b.addr()], options.clone()).unwrap());
            let cache = Cache::builder()
                .shared_backend(mc.clone())
                .prefix(unique_prefix(test))
                .invalidation_wait(Duration::from_millis(100))
                .build()
                .unwrap();
            let ks = cache.keys();
            let on_a = [
                ks.flush_key(&row()),
                ks.children_key(&row()),
                ks.generation_key("users"),
                ks.version_key("users"),
                ks.namespace_key(),
            ]
            .iter()
            .all(|k| mc.server_of(k) == a.addr());
            // The entry on B, its own flush list (which the row's list links to) on A.
            let key = (0..50).map(|i| ks.manual_key(&format!("q{i}"))).find(|k| {
                mc.server_of(k) == b.addr() && mc.server_of(&ks.key_flush_key(k)) == a.addr()
            })?;
            on_a.then_some((cache, key))
        })
        .expect("a key space placed as the test needs");
    assert_eq!(read_blocking(&cache, &key, "old").0, "old");
    assert_eq!(
        read_blocking(&cache, &key, "unused"),
        ("old".to_string(), ReadOutcome::Hit)
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    b.pause().unwrap();
    assert!(
        cache.backend().get(&key).is_err(),
        "the frozen server answered"
    );
    b.resume().unwrap();
    let report = rt.block_on(async {
        let mut inv = Invalidation::new();
        inv.object(row());
        cache.invalidate_async(&inv).await.unwrap()
    });
    // The first attempt failed (and was queued; the background delivery may have delivered
    // it already, probing the server, which answers).
    assert_eq!(
        cache.stats().failed_invalidations,
        1,
        "the deletes on the server marked down succeeded: {report:?}"
    );
    assert!(
        cache.wait_for_delivery(Duration::from_secs(10)),
        "the invalidation was not delivered once the server answered"
    );
    assert_eq!(
        read_blocking(&cache, &key, "new").0,
        "new",
        "the entry on the server marked down survived the invalidation"
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

#[cfg(feature = "redis")]
mod redis_backend {
    use super::*;
    use caching_core::backend::redis::Redis;
    use caching_tests::{test_redis_options, RedisProcess};

    fn redis_cache(server: &RedisProcess, test: &str) -> Cache {
        let backend = Redis::new(&server.url(), test_redis_options()).unwrap();
        cache_with(Arc::new(backend), test, Duration::from_millis(500))
    }

    #[test]
    fn a_miss_its_fill_and_the_hit_need_no_blocking_thread() {
        let test = "async_reads_redis_no_blocking";
        let Some(server) = RedisProcess::start(test) else {
            return;
        };
        no_blocking_pool_on(redis_cache(&server, test));
    }

    #[test]
    fn an_invalidation_needs_no_blocking_thread() {
        let test = "async_reads_redis_invalidation";
        let Some(server) = RedisProcess::start(test) else {
            return;
        };
        invalidation_without_the_blocking_pool(&redis_cache(&server, test));
    }

    /// A fresh server and a process whose first connection is non-blocking: the scripts a
    /// fill's batch calls are loaded by that connection, so the first fill is stored.
    #[test]
    fn the_first_fill_on_a_fresh_server_needs_no_blocking_connection() {
        let test = "async_reads_redis_fresh";
        let Some(server) = RedisProcess::start(test) else {
            return;
        };
        let cache = redis_cache(&server, test);
        let key = cache.keys().manual_key("q");
        let rt = runtime_without_blocking_pool();
        rt.block_on(async {
            let mut loads = 0;
            let got = read_async(&cache, &key, "fliggy", &mut loads).await;
            assert_eq!(got, Some(("fliggy".to_string(), ReadOutcome::Miss)));
            let got = read_async(&cache, &key, "unused", &mut loads).await;
            assert_eq!(got, Some(("fliggy".to_string(), ReadOutcome::Hit)));
            assert_eq!(loads, 1);
        });
        assert_eq!(cache.stats().backend_errors, 0);
    }
}
