//! Undelivered invalidations (caching-core's delivery queue), on the in-process backend behind
//! a switch that makes every call fail the way an unreachable server does: the queue keeps
//! what failed, the writer's own reads bypass the cache meanwhile, a full queue collapses
//! into a namespace bump, and nothing is lost when the last handle is dropped. The same
//! machinery against real memcached faults (kill, restart, SIGSTOP) is in
//! `fault_recovery.rs` and the stress harness's fault modes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use caching_core::backend::locmem::LocMem;
use caching_core::{
    AppendOutcome, Backend, Cache, CasOutcome, Error, Expiry, Invalidation, Item, ObjectKey,
    Result, Timeout,
};

/// Real locmem behind switches: `down` fails every call (and probes) like an unreachable
/// server; `garbled` fails every call but answers probes, like a server that answers
/// `version` and garbles everything else; `block` holds an `incr` of one key until it is
/// released (a delivery caught mid-way); `panic_probe` makes the next probe panic (a buggy
/// user backend).
#[derive(Debug, Default)]
struct Switched {
    inner: LocMem,
    down: AtomicBool,
    garbled: AtomicBool,
    probes: AtomicU32,
    block: Mutex<Option<String>>,
    released: Condvar,
    blocked: AtomicU32,
    panic_probe: AtomicBool,
}

impl Switched {
    fn hold(&self, key: Option<String>) {
        *self.block.lock().unwrap() = key;
        self.released.notify_all();
    }

    fn check(&self) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Unavailable {
                server: "switched".into(),
                reason: "switched off".into(),
            });
        }
        if self.garbled.load(Ordering::SeqCst) {
            return Err(Error::Protocol {
                server: "switched".into(),
                line: "garbage".into(),
            });
        }
        Ok(())
    }
}

impl Backend for Switched {
    fn name(&self) -> &'static str {
        "switched-locmem"
    }
    fn max_item_size(&self) -> usize {
        self.inner.max_item_size()
    }
    fn get_multi(&self, keys: &[&str]) -> Result<HashMap<String, Item>> {
        self.check()?;
        self.inner.get_multi(keys)
    }
    fn add_multi(&self, items: &[(&str, &[u8])], expiry: Expiry) -> Result<Vec<bool>> {
        self.check()?;
        self.inner.add_multi(items, expiry)
    }
    fn set_multi(&self, items: &[(&str, &[u8])], expiry: Expiry) -> Result<()> {
        self.check()?;
        self.inner.set_multi(items, expiry)
    }
    fn append_multi(&self, items: &[(&str, &[u8])]) -> Result<Vec<AppendOutcome>> {
        self.check()?;
        self.inner.append_multi(items)
    }
    fn cas(&self, key: &str, value: &[u8], expiry: Expiry, cas: u64) -> Result<CasOutcome> {
        self.check()?;
        self.inner.cas(key, value, expiry, cas)
    }
    fn delete_multi(&self, keys: &[&str]) -> Result<()> {
        self.check()?;
        self.inner.delete_multi(keys)
    }
    fn incr(&self, key: &str, delta: u64) -> Result<Option<u64>> {
        self.check()?;
        let mut held = self.block.lock().unwrap();
        if held.as_deref() == Some(key) {
            self.blocked.fetch_add(1, Ordering::SeqCst);
            while held.as_deref() == Some(key) {
                held = self.released.wait(held).unwrap();
            }
        }
        drop(held);
        self.inner.incr(key, delta)
    }
    fn probe(&self) -> Result<()> {
        self.probes.fetch_add(1, Ordering::SeqCst);
        if self.panic_probe.swap(false, Ordering::SeqCst) {
            panic!("a bug in a user's backend");
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Unavailable {
                server: "switched".into(),
                reason: "switched off".into(),
            });
        }
        Ok(())
    }
}

/// A cache whose writes do not wait for failed invalidations (the waiting has its own tests).
fn cache_on(backend: &Arc<Switched>) -> Cache {
    waiting_cache_on(backend, Duration::ZERO)
}

fn waiting_cache_on(backend: &Arc<Switched>, wait: Duration) -> Cache {
    Cache::builder()
        .shared_backend(backend.clone())
        .prefix("delivery")
        .invalidation_wait(wait)
        .build()
        .unwrap()
}

fn user(id: i32) -> ObjectKey {
    ObjectKey::new("users", &[id.to_string()])
}

fn write(id: i32) -> Invalidation {
    let mut inv = Invalidation::new();
    inv.object(user(id));
    inv
}

/// A value tied to user `id`'s row, computed by `f` on a miss.
fn score(cache: &Cache, id: i32, f: impl FnOnce() -> u32) -> u32 {
    cache.cached_with(&user(id), "score", Timeout::Forever, f)
}

#[test]
fn a_failed_invalidation_is_queued_delivered_later_and_bypasses_only_its_tables() {
    let backend = Arc::new(Switched::default());
    let cache = cache_on(&backend);
    let other = cache_on(&backend); // another process: its own queue
    assert_eq!(score(&cache, 1, || 1), 1);
    assert_eq!(score(&cache, 1, || 0), 1, "cached");
    let addon = ObjectKey::new("addons", &["1"]);
    let a: u32 = cache.cached_with(&addon, "n", Timeout::Forever, || 10);
    assert_eq!(a, 10);

    backend.down.store(true, Ordering::SeqCst);
    let report = cache.invalidate(&write(1)).unwrap();
    assert!(report.deferred);
    assert_eq!(cache.pending_invalidations(), 1);
    assert_eq!(cache.stats().failed_invalidations, 1);
    // Until the retry lands the writer reads its own write for `users`, without even asking
    // the cache (no lookup, so no backend error)...
    let before = cache.stats();
    assert_eq!(score(&cache, 1, || 2), 2);
    let after = cache.stats();
    assert_eq!(after.bypassed_reads, before.bypassed_reads + 1, "{after:?}");
    assert_eq!(after.backend_errors, before.backend_errors, "{after:?}");
    // ...while reads of other tables still ask the cache (and fail over to the loader).
    let c: u32 = cache.cached_with(&addon, "n", Timeout::Forever, || 12);
    assert_eq!(c, 12);
    assert_eq!(cache.stats().bypassed_reads, after.bypassed_reads);
    assert!(cache.stats().backend_errors > after.backend_errors);
    backend.down.store(false, Ordering::SeqCst);
    assert!(cache.wait_for_delivery(Duration::from_secs(5)));
    assert_eq!(cache.stats().retried_invalidations, 1);
    assert!(
        backend.probes.load(Ordering::SeqCst) >= 1,
        "retries probe first"
    );
    // ...and once delivered, every process sees the invalidation.
    assert_eq!(score(&other, 1, || 3), 3);
    // Other tables were never bypassed: the add-on value is still a hit.
    let b: u32 = cache.cached_with(&addon, "n", Timeout::Forever, || 11);
    assert_eq!(b, 10);
}

#[test]
fn reads_bypass_until_delivery_even_when_the_server_answers_probes() {
    let backend = Arc::new(Switched::default());
    let cache = cache_on(&backend);
    assert_eq!(score(&cache, 1, || 1), 1);
    // A server that answers `version` but garbles everything else: the retries reach it,
    // the deliveries fail, the invalidation stays queued, and the writer keeps reading its
    // own write instead of the cached old value.
    backend.garbled.store(true, Ordering::SeqCst);
    assert!(cache.invalidate(&write(1)).unwrap().deferred);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(cache.pending_invalidations(), 1);
    backend.garbled.store(false, Ordering::SeqCst);
    let bypassed = cache.stats().bypassed_reads;
    let v = score(&cache, 1, || 2);
    assert_eq!(v, 2, "never the cached old value");
    assert!(cache.wait_for_delivery(Duration::from_secs(5)));
    assert!(cache.stats().bypassed_reads <= bypassed + 1);
    assert_eq!(score(&cache, 1, || 3), 3, "the bypassed read did not fill");
    assert_eq!(score(&cache, 1, || 4), 3, "cached again after delivery");
}

#[test]
fn a_full_queue_collapses_into_a_namespace_bump() {
    let backend = Arc::new(Switched::default());
    let cache = cache_on(&backend);
    assert_eq!(score(&cache, 5000, || 1), 1);
    let unrelated: u32 = cache.cached("unrelated", Timeout::Forever, || 7);
    assert_eq!(unrelated, 7);
    backend.down.store(true, Ordering::SeqCst);
    for id in 0..1100 {
        assert!(cache.invalidate(&write(id)).unwrap().deferred);
    }
    let s = cache.stats();
    assert_eq!(s.coarse_invalidations, 1, "{s:?}");
    assert!(
        cache.pending_invalidations() < 1100,
        "bounded: {}",
        cache.pending_invalidations()
    );
    backend.down.store(false, Ordering::SeqCst);
    assert!(cache.wait_for_delivery(Duration::from_secs(10)));
    // The namespace bump reached every entry of the key space, even ones no write named.
    assert_eq!(score(&cache, 5000, || 2), 2);
    let again: u32 = cache.cached("unrelated", Timeout::Forever, || 8);
    assert_eq!(again, 8);
}

#[test]
fn deliveries_that_keep_failing_while_the_server_answers_fall_back_to_the_namespace() {
    let backend = Arc::new(Switched::default());
    let cache = cache_on(&backend);
    assert_eq!(score(&cache, 1, || 1), 1);
    backend.garbled.store(true, Ordering::SeqCst);
    assert!(cache.invalidate(&write(1)).unwrap().deferred);
    // Probes succeed, deliveries fail: after a bounded number of attempts the queue becomes
    // a namespace bump (which fails too while garbled).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while cache.stats().coarse_invalidations == 0 {
        assert!(std::time::Instant::now() < deadline, "never collapsed");
        std::thread::sleep(Duration::from_millis(20));
    }
    backend.garbled.store(false, Ordering::SeqCst);
    assert!(cache.wait_for_delivery(Duration::from_secs(5)));
    assert_eq!(score(&cache, 1, || 2), 2);
}

#[test]
fn dropping_the_last_handle_does_not_drop_undelivered_invalidations() {
    let backend = Arc::new(Switched::default());
    let reader = cache_on(&backend);
    assert_eq!(score(&reader, 1, || 1), 1);
    {
        let writer = cache_on(&backend);
        backend.down.store(true, Ordering::SeqCst);
        assert!(writer.invalidate(&write(1)).unwrap().deferred);
    } // the writer's handle is gone; its delivery thread keeps the queue
    backend.down.store(false, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if score(&reader, 1, || 2) == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dropped writer's invalidation was never delivered"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_failed_namespace_bump_is_queued_too() {
    let backend = Arc::new(Switched::default());
    let cache = cache_on(&backend);
    let v: u32 = cache.cached("k", Timeout::Forever, || 1);
    assert_eq!(v, 1);
    backend.down.store(true, Ordering::SeqCst);
    cache.invalidate_everything().unwrap();
    assert_eq!(cache.pending_invalidations(), 1);
    backend.down.store(false, Ordering::SeqCst);
    assert!(cache.wait_for_delivery(Duration::from_secs(5)));
    let w: u32 = cache.cached("k", Timeout::Forever, || 2);
    assert_eq!(w, 2);
}

#[test]
fn a_write_waits_for_its_invalidation_through_a_short_outage() {
    let backend = Arc::new(Switched::default());
    let cache = waiting_cache_on(&backend, Duration::from_secs(10));
    let other = cache_on(&backend);
    assert_eq!(score(&other, 1, || 1), 1);
    backend.down.store(true, Ordering::SeqCst);
    let heal = {
        let backend = backend.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            backend.down.store(false, Ordering::SeqCst);
        })
    };
    let report = cache.invalidate(&write(1)).unwrap();
    heal.join().unwrap();
    // The outage ended within the wait: the invalidation was delivered before the write
    // returned, so no reader anywhere can see the old value after it.
    assert!(!report.deferred, "{report:?}");
    assert_eq!(cache.pending_invalidations(), 0);
    assert_eq!(cache.stats().failed_invalidations, 1);
    assert_eq!(cache.stats().retried_invalidations, 1);
    assert_eq!(score(&other, 1, || 2), 2);
}

#[test]
fn writes_stop_waiting_once_an_outage_outlasts_the_wait() {
    let backend = Arc::new(Switched::default());
    let cache = waiting_cache_on(&backend, Duration::from_secs(2));
    backend.down.store(true, Ordering::SeqCst);
    // The first write of the outage waits its 2 s, then leaves the invalidation queued.
    assert!(cache.invalidate(&write(1)).unwrap().deferred);
    // Later writes of the same outage do not wait at all: the outage began more than the
    // wait ago.
    let started = std::time::Instant::now();
    assert!(cache.invalidate(&write(2)).unwrap().deferred);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(cache.pending_invalidations(), 2);
    backend.down.store(false, Ordering::SeqCst);
    assert!(cache.wait_for_delivery(Duration::from_secs(5)));
}

/// Polls `f` until it holds (at most 20 s).
fn until(what: &str, f: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Found in review: the queue overflowing while the worker was delivering an earlier
/// invalidation let the next delivery report every collapsed invalidation as delivered
/// before the namespace bump that alone covered them was sent.
#[test]
fn a_collapse_during_a_delivery_is_not_reported_delivered_before_its_bump() {
    let backend = Arc::new(Switched::default());
    let build = || waiting_cache_on(&backend, Duration::from_secs(60));
    let cache = build();
    let other = cache_on(&backend); // another process: its own queue
    assert_eq!(score(&other, 500, || 1), 1);
    let spawn = |id: i32| {
        let c = cache.clone();
        std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || (id, c.invalidate(&write(id)).unwrap().deferred))
            .unwrap()
    };
    // Invalidation 0 fails and is queued; its delivery then blocks inside `incr gen:users`.
    backend.down.store(true, Ordering::SeqCst);
    let mut threads = vec![spawn(0)];
    until("0 queued", || cache.pending_invalidations() == 1);
    backend.hold(Some(cache.keys().generation_key("users")));
    backend.down.store(false, Ordering::SeqCst);
    until("delivery of 0 under way", || {
        backend.blocked.load(Ordering::SeqCst) == 1
    });
    // 1,024 more fail meanwhile: the queue overflows into a namespace bump (the last one,
    // 1024, is queued after the collapse), then one more, 1025.
    backend.down.store(true, Ordering::SeqCst);
    for id in 1..=1023 {
        threads.push(spawn(id));
        until("queued", || {
            cache.pending_invalidations() == id as usize + 1
        });
    }
    threads.push(spawn(1024));
    until("collapsed", || {
        cache.stats().coarse_invalidations == 1 && cache.pending_invalidations() == 2
    });
    threads.push(spawn(1025));
    until("1025 queued", || cache.pending_invalidations() == 3);
    // The server is back, but the namespace bump is held: nobody covered only by it may
    // have been told "delivered".
    backend.hold(Some(cache.keys().namespace_key()));
    backend.down.store(false, Ordering::SeqCst);
    until("the bump is being sent", || {
        backend.blocked.load(Ordering::SeqCst) == 2
    });
    std::thread::sleep(Duration::from_millis(50));
    let finished = threads.iter().filter(|t| t.is_finished()).count();
    assert_eq!(
        finished, 0,
        "a write returned although its invalidation was not delivered"
    );
    assert_eq!(score(&other, 500, || 2), 1, "the bump is really still held");
    backend.hold(None);
    for t in threads {
        let (id, deferred) = t.join().unwrap();
        assert!(
            !deferred,
            "{id} was delivered (by the bump) before its writer returned"
        );
    }
    assert!(cache.wait_for_delivery(Duration::from_secs(10)));
    assert_eq!(score(&other, 500, || 3), 3);
}

/// Found in review: a panic inside a delivery attempt killed the worker and left the queue
/// (and this process's bypass) stuck forever.
#[test]
fn a_panicking_backend_does_not_stop_delivery() {
    let backend = Arc::new(Switched::default());
    let cache = cache_on(&backend);
    assert_eq!(score(&cache, 1, || 1), 1);
    backend.down.store(true, Ordering::SeqCst);
    backend.panic_probe.store(true, Ordering::SeqCst);
    assert!(cache.invalidate(&write(1)).unwrap().deferred);
    until("the probe panicked", || {
        !backend.panic_probe.load(Ordering::SeqCst)
    });
    backend.down.store(false, Ordering::SeqCst);
    assert!(cache.wait_for_delivery(Duration::from_secs(5)));
    assert_eq!(score(&cache, 1, || 2), 2);
}

/// Found in review: a caller's bad key was handled like an outage (the write waited, then
/// the whole namespace was bumped). Invalid flush-list keys are skipped, the rest of the
/// invalidation runs, nothing is queued.
#[test]
fn an_invalid_flush_list_key_is_skipped_not_retried() {
    let backend = Arc::new(Switched::default());
    let cache = waiting_cache_on(&backend, Duration::from_secs(3));
    let kept: u32 = cache.cached("unrelated", Timeout::Forever, || 1);
    assert_eq!(score(&cache, 1, || 1), 1);
    let mut inv = write(1);
    inv.flush_list("not a valid key".to_string());
    let report = cache.invalidate(&inv).unwrap();
    assert!(!report.deferred);
    assert_eq!(cache.pending_invalidations(), 0);
    assert_eq!(cache.stats().coarse_invalidations, 0);
    assert_eq!(score(&cache, 1, || 2), 2, "the valid part ran");
    let again: u32 = cache.cached("unrelated", Timeout::Forever, || 2);
    assert_eq!((kept, again), (1, 1), "no namespace bump");
}

/// Deliveries that keep failing while probes fail too (one dead server of several blocks
/// every walk) collapse into a namespace bump as well, sent to whichever server holds it.
#[test]
fn deliveries_failing_for_long_collapse_even_when_probes_fail() {
    let backend = Arc::new(Switched::default());
    let cache = cache_on(&backend);
    assert_eq!(score(&cache, 1, || 1), 1);
    backend.down.store(true, Ordering::SeqCst);
    assert!(cache.invalidate(&write(1)).unwrap().deferred);
    until("collapsed", || cache.stats().coarse_invalidations == 1);
    backend.down.store(false, Ordering::SeqCst);
    assert!(cache.wait_for_delivery(Duration::from_secs(5)));
    assert_eq!(score(&cache, 1, || 2), 2);
}
