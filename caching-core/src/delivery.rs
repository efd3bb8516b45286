//! Delivery of invalidations the backend could not take when they were made.
//!
//! A write has committed before its invalidation runs, so an invalidation that fails (server
//! down, stalled, restarting, marked down by this client's fail-fast window) must not be
//! dropped: the cached results it should delete would be served forever. Each [`Cache`]
//! keeps a bounded queue of such invalidations and one background thread that delivers
//! them, with backoff, until the backend answers. Before each attempt it calls
//! [`Backend::probe`](crate::Backend::probe), which ignores the fail-fast window, so a
//! retry is never blocked by the client's own "marked down" state.
//!
//! While an invalidation is queued, this cache's reads of the tables it touches bypass the
//! cache (the process reads its own writes; other processes' reads are protected once it is
//! delivered). If the queue overflows, or an invalidation keeps failing although the
//! server answers probes, the queue collapses into one namespace bump: coarse (every entry
//! of the key space misses once) but never stale. The thread holds the cache alive until
//! the queue is empty, then exits; the next failure starts another.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::invalidate::Invalidation;
use crate::stats::Counter;
use crate::Cache;

/// Invalidations kept before the queue collapses into a namespace bump.
const CAPACITY: usize = 1024;
/// First retry delay; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// Longest wait between two delivery attempts (bounds the staleness other processes see
/// after the backend comes back).
const MAX_BACKOFF: Duration = Duration::from_millis(200);
/// Failed deliveries while probes succeed before the queue collapses into a namespace bump
/// (a server that answers `version` but garbles everything else).
const MAX_FAILURES_WHILE_REACHABLE: u32 = 20;

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<(u64, Invalidation)>,
    next_id: u64,
    /// Bump the namespace version: covers every invalidation made before the bump is sent.
    everything: bool,
    /// A namespace bump is being sent (reads still bypass until it is through).
    sending_everything: bool,
    worker: bool,
}

impl State {
    fn pending(&self) -> usize {
        self.queue.len() + usize::from(self.everything || self.sending_everything)
    }
}

/// The per-cache queue of undelivered invalidations.
#[derive(Debug, Default)]
pub(crate) struct Delivery {
    /// Mirrors `State::pending` so reads check it without taking the lock.
    pending: AtomicUsize,
    state: Mutex<State>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Delivery {
    /// Number of undelivered invalidations (a pending namespace bump counts as one).
    pub(crate) fn len(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Whether a read of `tables` must bypass the cache: an undelivered invalidation may
    /// have to delete what it would find.
    pub(crate) fn blocks(&self, tables: &[&str]) -> bool {
        if self.len() == 0 {
            return false;
        }
        let st = lock(&self.state);
        st.everything
            || st.sending_everything
            || st
                .queue
                .iter()
                .any(|(_, inv)| tables.iter().any(|t| inv.may_affect(t)))
    }

    /// Queues `inv` for background delivery.
    pub(crate) fn defer(&self, cache: &Cache, inv: Invalidation) {
        let mut st = lock(&self.state);
        if st.queue.len() >= CAPACITY {
            tracing::error!(
                capacity = CAPACITY,
                "undelivered invalidations overflowed the queue; the namespace version will be bumped instead"
            );
            cache.inner.stats.inc(Counter::CoarseInvalidations);
            st.queue.clear();
            st.everything = true;
        } else {
            let id = st.next_id;
            st.next_id += 1;
            st.queue.push_back((id, inv));
        }
        self.start(cache, st);
    }

    /// Queues a namespace bump (it replaces everything queued).
    pub(crate) fn defer_everything(&self, cache: &Cache) {
        let mut st = lock(&self.state);
        st.queue.clear();
        st.everything = true;
        self.start(cache, st);
    }

    fn start(&self, cache: &Cache, mut st: std::sync::MutexGuard<'_, State>) {
        self.pending.store(st.pending(), Ordering::Release);
        if st.worker {
            return;
        }
        let worker = cache.clone();
        let spawned = std::thread::Builder::new()
            .name("cache-invalidations".into())
            .spawn(move || deliver(worker));
        match spawned {
            Ok(_) => st.worker = true,
            // The queue stays; the next deferred invalidation tries again.
            Err(e) => {
                tracing::error!(error = %e, "could not start the invalidation delivery thread")
            }
        }
    }
}

/// The delivery loop: probe, then deliver the namespace bump (if any) and the queue in
/// order; back off on failure; exit when nothing is left.
fn deliver(cache: Cache) {
    let d = &cache.inner.delivery;
    let mut delay = FIRST_BACKOFF;
    let mut failures = 0u32;
    loop {
        {
            let mut st = lock(&d.state);
            if st.pending() == 0 {
                st.worker = false;
                return;
            }
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(MAX_BACKOFF);
        if let Err(e) = cache.backend().probe() {
            tracing::debug!(error = %e, "cache still unreachable; invalidations stay queued");
            continue;
        }
        match deliver_some(&cache) {
            Ok(()) => {
                failures = 0;
                delay = FIRST_BACKOFF;
            }
            Err(e) => {
                failures += 1;
                cache.inner.stats.inc(Counter::BackendErrors);
                tracing::debug!(error = %e, failures, "queued invalidation not delivered yet");
                if failures >= MAX_FAILURES_WHILE_REACHABLE {
                    tracing::error!(error = %e, "queued invalidations keep failing although the cache answers; bumping the namespace version instead");
                    cache.inner.stats.inc(Counter::CoarseInvalidations);
                    let mut st = lock(&d.state);
                    st.queue.clear();
                    st.everything = true;
                    d.pending.store(st.pending(), Ordering::Release);
                    failures = 0;
                }
            }
        }
    }
}

/// Delivers what is queued, front first; stops at the first failure.
fn deliver_some(cache: &Cache) -> crate::Result<()> {
    let d = &cache.inner.delivery;
    let requested = {
        let mut st = lock(&d.state);
        let requested = std::mem::take(&mut st.everything);
        st.sending_everything = requested;
        requested
    };
    if requested {
        // Covers every invalidation made before this point; later ones are queued anew.
        let sent = cache.bump_namespace();
        let mut st = lock(&d.state);
        st.sending_everything = false;
        st.everything |= sent.is_err();
        d.pending.store(st.pending(), Ordering::Release);
        drop(st);
        sent?;
        cache.inner.stats.inc(Counter::RetriedInvalidations);
        tracing::info!("queued namespace bump delivered");
    }
    loop {
        let front = lock(&d.state).queue.front().cloned();
        let Some((id, inv)) = front else {
            return Ok(());
        };
        cache.invalidate_once(&inv)?;
        let mut st = lock(&d.state);
        if st.queue.front().is_some_and(|(f, _)| *f == id) {
            st.queue.pop_front();
        }
        d.pending.store(st.pending(), Ordering::Release);
        drop(st);
        cache.inner.stats.inc(Counter::RetriedInvalidations);
        tracing::info!(tables = ?inv.tables().collect::<Vec<_>>(), "queued invalidation delivered");
    }
}
