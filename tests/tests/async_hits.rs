//! The async hit path (`Cache::try_hit_async`) on real memcached: it serves exactly the hits
//! the blocking lookup serves, and leaves everything else (misses, stale or pending entries,
//! evicted guard lists, servers to check after a new connection, a frozen server) to the
//! blocking half, which then does what the protocol asks. A hit it serves is counted like any
//! other.
//!
//! And on a private redis-server (feature `redis`): a restart between two non-blocking reads
//! costs no error; a frozen server fails the read within `io_timeout` and is marked down, so
//! the blocking half fails fast too; hits come back once it answers again.
#![cfg(feature = "async")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use caching_core::backend::memcached::{Memcached, MemcachedOptions};
use caching_core::{Backend, Cache, ObjectKey, ReadOutcome, ReadPlan, ReadStart, Registrations};
use caching_tests::{test_memcached_options, unique_prefix, MemcachedProcess};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn cache_on(servers: &[String], options: MemcachedOptions, test: &str, safe: bool) -> Cache {
    let mc: Arc<dyn Backend> = Arc::new(Memcached::new(servers, options).unwrap());
    Cache::builder()
        .shared_backend(mc)
        .prefix(unique_prefix(test))
        .eviction_safe(safe)
        .build()
        .unwrap()
}

/// The row the cached value holds: its flush list is what a write to it deletes through.
fn row() -> ObjectKey {
    ObjectKey::new("users", &["1"])
}

/// A blocking read through the cache: loads `value` on a miss, registered on the row's list.
fn read(cache: &Cache, key: &str, value: &str) -> (String, ReadOutcome) {
    let plan = ReadPlan::new(key, &["users"]);
    let register = |_: &String, regs: &mut Registrations| {
        regs.row(cache.keys(), &row(), key);
        Ok(())
    };
    cache
        .read_through(
            &plan,
            || Ok::<_, std::convert::Infallible>(value.to_string()),
            register,
        )
        .unwrap()
}

async fn try_hit(cache: &Cache, key: &str) -> Option<String> {
    cache
        .try_hit_async::<String>(&ReadPlan::new(key, &["users"]))
        .await
}

/// The async hit of `key` once the servers are checked: a blocking lookup (a hit) checks
/// them when a connection was opened since the last check; the async read may then open its
/// own first connections, which need one more check. Two rounds at most.
async fn checked_hit(cache: &Cache, key: &str) -> Option<String> {
    for _ in 0..3 {
        assert_eq!(read(cache, key, "x").1, ReadOutcome::Hit);
        if let Some(hit) = try_hit(cache, key).await {
            return Some(hit);
        }
    }
    None
}

#[test]
fn serves_hits_and_nothing_else() {
    let test = "async_hits_serves_hits";
    let Some(server) = MemcachedProcess::start(test) else {
        return;
    };
    let cache = cache_on(&[server.addr()], test_memcached_options(), test, false);
    let key = cache.keys().manual_key("q");
    runtime().block_on(async {
        // A miss is not served (and not counted: the blocking half counts it).
        assert_eq!(try_hit(&cache, &key).await, None);
        assert_eq!(cache.stats().misses, 0);
        assert_eq!(
            read(&cache, &key, "fliggy"),
            ("fliggy".into(), ReadOutcome::Miss)
        );
        // A hit, counted as one.
        let hits = cache.stats().hits;
        assert_eq!(try_hit(&cache, &key).await.as_deref(), Some("fliggy"));
        assert_eq!(cache.stats().hits, hits + 1);
        // After a write to the row: not served, and the blocking read misses and refills.
        let mut inv = caching_core::Invalidation::new();
        inv.object(row());
        cache.invalidate(&inv).unwrap();
        assert_eq!(try_hit(&cache, &key).await, None);
        assert_eq!(
            read(&cache, &key, "rosie"),
            ("rosie".into(), ReadOutcome::Miss)
        );
        assert_eq!(try_hit(&cache, &key).await.as_deref(), Some("rosie"));
        // After a table-wide write (the table's version moved): not served either.
        cache.invalidate_table("users").unwrap();
        assert_eq!(try_hit(&cache, &key).await, None);
        // Another reader's fill in progress (its lease): not served, and left alone.
        let other = cache.keys().manual_key("pending");
        let ReadStart::Miss(fill) = cache.begin_read::<String>(&ReadPlan::new(&other, &["users"]))
        else {
            panic!("a miss");
        };
        assert_eq!(try_hit(&cache, &other).await, None);
        fill.finish(&"late".to_string(), |_, _| Ok(()));
        assert_eq!(try_hit(&cache, &other).await.as_deref(), Some("late"));
        // Garbage under the key: not served, and not deleted here (the blocking half does).
        cache
            .backend()
            .set(&other, b"\x00garbage", caching_core::Expiry::Forever)
            .unwrap();
        assert_eq!(try_hit(&cache, &other).await, None);
        assert!(cache.backend().get(&other).unwrap().is_some());
        // A read that bypasses the cache is not served.
        let plan = ReadPlan::new(&key, &["users"]).bypass("test");
        assert_eq!(cache.try_hit_async::<String>(&plan).await, None);
    });
}

#[test]
fn eviction_safe_hits_need_their_guard_lists() {
    let test = "async_hits_eviction_safe";
    let Some(server) = MemcachedProcess::start(test) else {
        return;
    };
    let cache = cache_on(&[server.addr()], test_memcached_options(), test, true);
    let key = cache.keys().manual_key("q");
    let list = cache.keys().flush_key(&row());
    runtime().block_on(async {
        read(&cache, &key, "fliggy");
        // The first blocking hit learns which lists to read with the entry.
        assert_eq!(read(&cache, &key, "x").1, ReadOutcome::Hit);
        assert_eq!(try_hit(&cache, &key).await.as_deref(), Some("fliggy"));
        // The list is evicted: the entry must not be served by either path.
        cache.backend().delete(&list).unwrap();
        assert_eq!(try_hit(&cache, &key).await, None);
        assert_eq!(
            read(&cache, &key, "rosie"),
            ("rosie".into(), ReadOutcome::Miss)
        );
        // Evicted and re-created (a new epoch): still not served.
        cache.backend().delete(&list).unwrap();
        cache
            .backend()
            .set(&list, b"", caching_core::Expiry::Forever)
            .unwrap();
        assert_eq!(try_hit(&cache, &key).await, None);
    });
}

#[test]
fn a_server_reached_on_a_new_connection_is_checked_before_a_hit() {
    let test = "async_hits_restart";
    let (Some(mut a), Some(mut b)) = (MemcachedProcess::start(test), MemcachedProcess::start(test))
    else {
        return;
    };
    let cache = cache_on(&[a.addr(), b.addr()], test_memcached_options(), test, false);
    let key = cache.keys().manual_key("q");
    let url = format!("memcached://{},{}", a.addr(), b.addr());
    // The server holding the entry restarts (the one the hit's reads must reach).
    let holder = if caching_tests::memcached_server_of(&url, &key) == a.addr() {
        &mut a
    } else {
        &mut b
    };
    runtime().block_on(async {
        read(&cache, &key, "fliggy");
        // New connections (the fill's, the non-blocking reads' first ones) make the hit wait
        // for a check, which a blocking lookup runs; then it is served.
        assert_eq!(checked_hit(&cache, &key).await.as_deref(), Some("fliggy"));
        // The server restarts, empty: whatever it held (the entry, a counter, a list) is
        // gone. Its pooled connection is dead; the read reaches it on a new one, so no hit is
        // served before the servers are checked.
        let lost = cache.stats().lost_servers;
        holder.restart();
        assert_eq!(try_hit(&cache, &key).await, None);
        // The blocking lookup checks them, finds the lost contents, invalidates the key
        // space: the entry misses.
        assert_eq!(
            read(&cache, &key, "rosie"),
            ("rosie".into(), ReadOutcome::Miss)
        );
        assert_eq!(cache.stats().lost_servers, lost + 1);
        assert_eq!(checked_hit(&cache, &key).await.as_deref(), Some("rosie"));
    });
}

#[test]
fn a_frozen_server_fails_the_hit_within_the_deadline_and_recovers() {
    let test = "async_hits_frozen";
    let Some(server) = MemcachedProcess::start(test) else {
        return;
    };
    let options = MemcachedOptions {
        op_timeout: Duration::from_millis(500),
        ..test_memcached_options()
    };
    let cache = cache_on(&[server.addr()], options, test, false);
    let key = cache.keys().manual_key("q");
    runtime().block_on(async {
        read(&cache, &key, "fliggy");
        assert_eq!(try_hit(&cache, &key).await.as_deref(), Some("fliggy"));
        server.pause().unwrap();
        let start = Instant::now();
        assert_eq!(try_hit(&cache, &key).await, None);
        let waited = start.elapsed();
        // Marked down: the blocking half fails fast and reads the database.
        let start = Instant::now();
        assert_eq!(read(&cache, &key, "db").0, "db");
        let fell_back = start.elapsed();
        server.resume().unwrap();
        assert!(waited < Duration::from_secs(3), "{waited:?}");
        assert!(fell_back < Duration::from_secs(1), "{fell_back:?}");
        // Once the fail-fast window is over, hits come back.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let mut served = None;
        for _ in 0..20 {
            read(&cache, &key, "refill");
            served = try_hit(&cache, &key).await;
            if served.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(served.is_some(), "hits came back after the server did");
    });
}

#[cfg(feature = "redis")]
mod redis {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use caching_core::backend::redis::{Redis, RedisOptions};
    use caching_core::{Backend, Cache, Error, Expiry};
    use caching_tests::{test_redis_options, unique_prefix, RedisProcess};

    use super::{read, runtime, try_hit};

    fn cache_on(server: &RedisProcess, options: RedisOptions, test: &str) -> Cache {
        let r: Arc<dyn Backend> = Arc::new(Redis::new(&server.url(), options).unwrap());
        Cache::builder()
            .shared_backend(r)
            .prefix(unique_prefix(test))
            .build()
            .unwrap()
    }

    /// The backend's non-blocking read of `key`.
    async fn read_async(cache: &Cache, key: &str) -> caching_core::Result<Option<Vec<u8>>> {
        let keys = [key];
        let got = cache
            .backend()
            .get_multi_async(&keys)
            .expect("redis reads without blocking inside a runtime")
            .await?;
        Ok(got.into_iter().next().flatten().map(|i| i.value))
    }

    #[test]
    fn a_restart_between_two_reads_costs_no_error() {
        let test = "async_hits_redis_restart";
        let Some(mut server) = RedisProcess::start(test) else {
            return;
        };
        let options = RedisOptions {
            // Long enough that a read marking the server down would show.
            retry_after: Duration::from_secs(30),
            ..test_redis_options()
        };
        let cache = cache_on(&server, options, test);
        let key = cache.keys().manual_key("q");
        let raw = cache.keys().manual_key("raw");
        runtime().block_on(async {
            read(&cache, &key, "fliggy");
            assert_eq!(try_hit(&cache, &key).await.as_deref(), Some("fliggy"));
            for round in 0..3 {
                cache.backend().set(&raw, b"v", Expiry::Forever).unwrap();
                assert_eq!(
                    read_async(&cache, &raw).await.unwrap().as_deref(),
                    Some(&b"v"[..])
                );
                // The server restarts, empty: the pooled connections (blocking and not) are
                // dead. The next read reconnects without an error.
                server.restart();
                let got = read_async(&cache, &raw)
                    .await
                    .unwrap_or_else(|e| panic!("round {round}: {e}"));
                assert_eq!(got, None, "round {round}: the restarted server is empty");
                // Nothing was marked down: the blocking client works at once too.
                assert_eq!(cache.backend().get(&raw).unwrap(), None, "round {round}");
            }
            // The entry went with the restart: a miss, refilled, then hits again.
            assert_eq!(try_hit(&cache, &key).await, None);
            assert_eq!(
                read(&cache, &key, "rosie"),
                ("rosie".into(), caching_core::ReadOutcome::Miss)
            );
            assert_eq!(try_hit(&cache, &key).await.as_deref(), Some("rosie"));
            assert_eq!(cache.stats().backend_errors, 0);
        });
    }

    #[test]
    fn a_frozen_server_fails_the_read_within_the_timeout_and_recovers() {
        let test = "async_hits_redis_frozen";
        let Some(server) = RedisProcess::start(test) else {
            return;
        };
        let options = RedisOptions {
            io_timeout: Duration::from_millis(300),
            retry_after: Duration::from_millis(500),
            ..test_redis_options()
        };
        let (io_timeout, retry_after) = (options.io_timeout, options.retry_after);
        let cache = cache_on(&server, options, test);
        let key = cache.keys().manual_key("q");
        runtime().block_on(async {
            read(&cache, &key, "fliggy");
            assert_eq!(try_hit(&cache, &key).await.as_deref(), Some("fliggy"));
            server.pause().unwrap();
            // The read fails within the timeout (plus slack for a loaded machine)...
            let start = Instant::now();
            let e = read_async(&cache, &key).await.unwrap_err();
            let waited = start.elapsed();
            assert!(matches!(e, Error::Io { .. }), "{e}");
            assert!(
                waited >= io_timeout && waited < io_timeout + Duration::from_secs(1),
                "{waited:?}"
            );
            // ...and marks the server down: both clients fail fast, and the blocking half
            // of a read goes to the database at once.
            let start = Instant::now();
            let e = read_async(&cache, &key).await.unwrap_err();
            assert!(matches!(e, Error::Unavailable { .. }), "{e}");
            let e = cache.backend().get(&key).unwrap_err();
            assert!(matches!(e, Error::Unavailable { .. }), "{e}");
            assert_eq!(try_hit(&cache, &key).await, None);
            assert_eq!(read(&cache, &key, "db").0, "db");
            let fell_back = start.elapsed();
            assert!(fell_back < Duration::from_millis(250), "{fell_back:?}");
            server.resume().unwrap();
            // Once the fail-fast window is over, reads and hits come back.
            tokio::time::sleep(retry_after).await;
            let mut served = None;
            for _ in 0..20 {
                if read_async(&cache, &key).await.is_ok() {
                    served = try_hit(&cache, &key).await;
                    if served.is_some() {
                        break;
                    }
                    read(&cache, &key, "refill");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(served.is_some(), "hits came back after the server did");
        });
    }
}
