//! Stampede protection (`lease_wait_ms`): concurrent misses of one entry read the source once,
//! inside a process (single flight) and across processes (the lease), on every backend; with
//! the protection off they do not; a leader that fails gives the lease back.
//!
//! Loaders sleep so that every reader misses before the first one could fill; the assertions
//! count loader calls, never time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use caching_core::{Cache, ReadPlan, Timeout};
use caching_tests::{each_backend, unique_prefix};

const SLOW: Duration = Duration::from_millis(300);

/// Runs `per_cache` threads on each of `caches` at once, each reading `hot` through a loader
/// that counts its calls and sleeps; returns the calls and every value read.
fn stampede(caches: &[Cache], per_cache: usize) -> (usize, Vec<u32>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(caches.len() * per_cache));
    let handles: Vec<_> = caches
        .iter()
        .flat_map(|c| std::iter::repeat_n(c.clone(), per_cache))
        .map(|cache| {
            let (calls, barrier) = (calls.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                cache.cached("hot", Timeout::Forever, || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(SLOW);
                    42u32
                })
            })
        })
        .collect();
    let values = handles.into_iter().map(|h| h.join().unwrap()).collect();
    (calls.load(Ordering::SeqCst), values)
}

fn caches(
    test: &str,
    processes: usize,
    lease: Duration,
) -> Vec<(&'static str, Vec<Cache>, Arc<dyn caching_core::Backend>)> {
    each_backend(test)
        .into_iter()
        .map(|(name, backend)| {
            let prefix = unique_prefix(test);
            let caches = (0..processes)
                .map(|_| {
                    Cache::builder()
                        .shared_backend(backend.clone())
                        .prefix(prefix.clone())
                        .lease_wait(lease)
                        .build()
                        .unwrap()
                })
                .collect();
            (name, caches, backend)
        })
        .collect()
}

/// Sixteen threads of one process miss together: one reads, fifteen wait for its fill.
#[test]
fn concurrent_misses_in_one_process_read_once() {
    for (name, caches, _) in caches("stampede_one_process", 1, Duration::from_secs(30)) {
        let (calls, values) = stampede(&caches, 16);
        assert_eq!(calls, 1, "{name}");
        assert!(values.iter().all(|v| *v == 42), "{name}: {values:?}");
        let stats = caches[0].stats();
        assert_eq!(stats.lease_waits, 15, "{name}: {stats:?}");
        assert_eq!((stats.hits, stats.misses), (15, 1), "{name}: {stats:?}");
    }
}

/// Three processes (each its own `Cache`, so no shared single flight) of six threads each:
/// their leaders meet at the entry's lease, and the source is still read once.
#[test]
fn concurrent_misses_across_processes_read_once() {
    for (name, caches, _) in caches("stampede_processes", 3, Duration::from_secs(30)) {
        let (calls, values) = stampede(&caches, 6);
        assert_eq!(calls, 1, "{name}");
        assert!(values.iter().all(|v| *v == 42), "{name}: {values:?}");
    }
}

/// The same stampede with the protection off reads the source more than once (so the tests
/// above can fail).
#[test]
fn with_the_lease_off_every_reader_that_misses_reads() {
    for (name, caches, _) in caches("stampede_off", 2, Duration::ZERO) {
        let (calls, values) = stampede(&caches, 8);
        assert!(calls > 1, "{name}: {calls}");
        assert!(values.iter().all(|v| *v == 42), "{name}: {values:?}");
        assert_eq!(caches[0].stats().lease_waits, 0, "{name}");
    }
}

/// A leader whose read fails deletes its marker: no other process is left waiting for a
/// fill that will never come, and the next reader takes the lease and fills.
#[test]
fn a_leader_that_fails_gives_the_lease_back() {
    for (name, caches, backend) in caches("stampede_failing", 2, Duration::from_secs(30)) {
        let key = caches[0].keys().manual_key("failing");
        let plan = ReadPlan::new(&key, &[]);
        let failed = caches[0].read_through(
            &plan,
            || Err::<u32, _>("the database is down"),
            |_, _| Ok(()),
        );
        assert_eq!(failed.err(), Some("the database is down"), "{name}");
        assert_eq!(
            backend.get(&key).unwrap(),
            None,
            "{name}: marker left behind"
        );
        let (v, _) = caches[1]
            .read_through(&plan, || Ok::<_, ()>(7u32), |_, _| Ok(()))
            .unwrap();
        assert_eq!(v, 7, "{name}");
        assert_eq!(caches[1].stats().lease_waits, 0, "{name}");
        // Filled: the first process now hits.
        let (v, outcome) = caches[0]
            .read_through(&plan, || Ok::<_, ()>(8u32), |_, _| Ok(()))
            .unwrap();
        assert_eq!((v, outcome), (7, caching_core::ReadOutcome::Hit), "{name}");
    }
}

/// A refused fill (here: inside a read that may not fill) never takes the lease, and a read
/// whose result is refused after loading releases it.
#[test]
fn a_refused_fill_releases_the_lease() {
    for (name, caches, backend) in caches("stampede_refused", 1, Duration::from_secs(30)) {
        let key = caches[0].keys().manual_key("refused");
        let plan = ReadPlan::new(&key, &[]);
        let (v, _) = caches[0]
            .read_through(&plan, || Ok::<_, ()>(1u32), |_, _| Err("not this one"))
            .unwrap();
        assert_eq!(v, 1, "{name}");
        assert_eq!(
            backend.get(&key).unwrap(),
            None,
            "{name}: marker left behind"
        );
        let no_fill = ReadPlan::new(&key, &[]).no_fill("inside a transaction");
        caches[0]
            .read_through(&no_fill, || Ok::<_, ()>(2u32), |_, _| Ok(()))
            .unwrap();
        assert_eq!(backend.get(&key).unwrap(), None, "{name}");
    }
}
