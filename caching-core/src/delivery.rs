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
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

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
    /// Every invalidation with an id below this one is delivered (or covered by a delivered
    /// namespace bump).
    delivered_below: u64,
    /// When the queue last went from empty to not empty: the start of the current outage.
    outage_since: Option<Instant>,
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
    /// Signalled after every delivery (writers waiting for theirs).
    delivered: Condvar,
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

    /// Queues `inv` for background delivery; returns its ticket for [`wait`](Delivery::wait)
    /// and the deadline until which a writer may wait for it: `wait` after the start of the
    /// outage (once an outage lasts longer than that, writers stop waiting).
    pub(crate) fn defer(&self, cache: &Cache, inv: Invalidation, wait: Duration) -> (u64, Instant) {
        let mut st = lock(&self.state);
        let id = st.next_id;
        st.next_id += 1;
        if st.queue.len() >= CAPACITY {
            tracing::error!(
                capacity = CAPACITY,
                "undelivered invalidations overflowed the queue; the namespace version will be bumped instead"
            );
            cache.inner.stats.inc(Counter::CoarseInvalidations);
            st.queue.clear();
            st.everything = true;
        } else {
            st.queue.push_back((id, inv));
        }
        let since = *st.outage_since.get_or_insert_with(Instant::now);
        self.start(cache, st);
        (id, since + wait)
    }

    /// Queues a namespace bump (it replaces everything queued).
    pub(crate) fn defer_everything(&self, cache: &Cache) {
        let mut st = lock(&self.state);
        st.queue.clear();
        st.everything = true;
        st.outage_since.get_or_insert_with(Instant::now);
        self.start(cache, st);
    }

    /// Waits until invalidation `ticket` is delivered, at most until `deadline`; returns
    /// whether it was.
    pub(crate) fn wait(&self, ticket: u64, deadline: Instant) -> bool {
        let mut st = lock(&self.state);
        loop {
            if st.delivered_below > ticket {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .delivered
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Records progress and wakes waiting writers.
    fn settle(&self, mut st: std::sync::MutexGuard<'_, State>, delivered_below: u64) {
        st.delivered_below = st.delivered_below.max(delivered_below);
        let pending = st.pending();
        if pending == 0 {
            st.outage_since = None;
        }
        self.pending.store(pending, Ordering::Release);
        drop(st);
        self.delivered.notify_all();
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
                st.outage_since = None;
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
                    d.settle(st, 0);
                    failures = 0;
                }
            }
        }
    }
}

/// Delivers what is queued, front first; stops at the first failure.
fn deliver_some(cache: &Cache) -> crate::Result<()> {
    let d = &cache.inner.delivery;
    let (requested, covers_below) = {
        let mut st = lock(&d.state);
        let requested = std::mem::take(&mut st.everything);
        st.sending_everything = requested;
        (requested, st.next_id)
    };
    if requested {
        // Covers every invalidation made before this point; later ones are queued anew.
        let sent = cache.bump_namespace();
        let mut st = lock(&d.state);
        st.sending_everything = false;
        st.everything |= sent.is_err();
        let below = if sent.is_ok() { covers_below } else { 0 };
        d.settle(st, below);
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
        d.settle(st, id + 1);
        cache.inner.stats.inc(Counter::RetriedInvalidations);
        tracing::info!(tables = ?inv.tables().collect::<Vec<_>>(), "queued invalidation delivered");
    }
}
