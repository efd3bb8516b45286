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
//! delivered). If the queue overflows, or deliveries keep failing for [`COLLAPSE_AFTER`]
//! (one server of several is dead, say, so no walk can finish, while the namespace counter
//! lives on a server that answers), the queue collapses into one namespace bump: coarse
//! (every entry of the key space misses once) but never stale. The thread holds the cache
//! alive until the queue is empty, then exits; the next failure starts another. A panic in
//! a delivery attempt (a `Backend` of the user's, say) is caught and counted as a failure.
//!
//! Writers wait for their own invalidation with a ticket: every invalidation with an id
//! below `delivered_below` is delivered, or covered by a delivered namespace bump. Ids that
//! only a namespace bump still owed covers (`collapse_floor` and above, outside the queue)
//! are never reported delivered before that bump is.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
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
/// How long deliveries may keep failing before the queue collapses into a namespace bump.
pub(crate) const COLLAPSE_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<(u64, Invalidation)>,
    next_id: u64,
    /// A namespace bump is owed: it covers every invalidation made before it is sent.
    everything: bool,
    /// A namespace bump is being sent (reads still bypass until it is through).
    sending_everything: bool,
    /// Ids from here up that are not in the queue were dropped by a collapse: only the owed
    /// namespace bump covers them.
    collapse_floor: Option<u64>,
    /// Every invalidation with an id below this one is delivered (or covered by a delivered
    /// namespace bump).
    delivered_below: u64,
    /// When the queue last went from empty to not empty: the start of the current outage.
    outage_since: Option<Instant>,
    worker: bool,
}

impl State {
    fn pending(&self) -> usize {
        self.queue.len() + usize::from(self.everything || self.sending_everything)
    }

    /// Replaces everything queued by a namespace bump.
    fn collapse(&mut self) {
        let floor = self.collapse_floor.unwrap_or(u64::MAX);
        self.collapse_floor = Some(floor.min(self.delivered_below));
        self.queue.clear();
        self.everything = true;
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

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
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
            st.collapse();
        }
        st.queue.push_back((id, inv));
        let since = *st.outage_since.get_or_insert_with(Instant::now);
        self.start(cache, st);
        (id, since + wait)
    }

    /// Queues a namespace bump (it replaces everything queued).
    pub(crate) fn defer_everything(&self, cache: &Cache, wait: Duration) -> (u64, Instant) {
        let mut st = lock(&self.state);
        // The ticket of the bump: it is delivered when every id up to here is covered.
        let id = st.next_id;
        st.next_id += 1;
        st.collapse();
        let since = *st.outage_since.get_or_insert_with(Instant::now);
        self.start(cache, st);
        (id, since + wait)
    }

    /// Waits until invalidation `ticket` is delivered, at most until `deadline`; returns
    /// whether it was.
    pub(crate) fn wait(&self, ticket: u64, deadline: Instant) -> bool {
        self.wait_until(deadline, |st| st.delivered_below > ticket)
    }

    /// Waits until nothing is pending, at most until `deadline`; returns whether so.
    pub(crate) fn wait_idle(&self, deadline: Instant) -> bool {
        self.wait_until(deadline, |st| st.pending() == 0)
    }

    fn wait_until(&self, deadline: Instant, done: impl Fn(&State) -> bool) -> bool {
        let mut st = lock(&self.state);
        loop {
            if done(&st) {
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

    /// Records progress (never past what only an owed namespace bump covers) and wakes the
    /// waiting writers.
    fn settle(&self, mut st: MutexGuard<'_, State>, delivered_below: u64) {
        let cap = st.collapse_floor.unwrap_or(u64::MAX);
        st.delivered_below = st.delivered_below.max(delivered_below.min(cap));
        let pending = st.pending();
        if pending == 0 {
            st.outage_since = None;
        }
        self.pending.store(pending, Ordering::Release);
        drop(st);
        self.delivered.notify_all();
    }

    fn start(&self, cache: &Cache, mut st: MutexGuard<'_, State>) {
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

/// The delivery loop: probe (which clears the client's fail-fast state of the servers that
/// answer), then deliver the namespace bump (if owed) and the queue in order; back off on
/// failure; collapse into a namespace bump after failing for [`COLLAPSE_AFTER`]; exit when
/// nothing is left.
fn deliver(cache: Cache) {
    let d = &cache.inner.delivery;
    let mut delay = FIRST_BACKOFF;
    let mut failing_since: Option<Instant> = None;
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
        // Even if some server does not answer the probe, try: the servers that do may hold
        // everything this delivery needs (or the namespace counter, after a collapse).
        let attempt = catch_unwind(AssertUnwindSafe(|| {
            if let Err(e) = cache.backend().probe() {
                tracing::debug!(error = %e, "cache (partly) unreachable; trying to deliver anyway");
            }
            deliver_some(&cache)
        }));
        let error = match attempt {
            Ok(Ok(())) => {
                failing_since = None;
                delay = FIRST_BACKOFF;
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "a delivery attempt panicked".to_string(),
        };
        cache.inner.stats.inc(Counter::BackendErrors);
        tracing::debug!(error, "queued invalidation not delivered yet");
        let since = *failing_since.get_or_insert_with(Instant::now);
        let mut st = lock(&d.state);
        if since.elapsed() >= COLLAPSE_AFTER && !st.queue.is_empty() {
            tracing::error!(
                error,
                "queued invalidations keep failing; bumping the namespace version instead"
            );
            cache.inner.stats.inc(Counter::CoarseInvalidations);
            st.collapse();
            d.settle(st, 0);
        }
    }
}

/// Delivers the owed namespace bump and what is queued, front first; stops at the first
/// failure.
fn deliver_some(cache: &Cache) -> crate::Result<()> {
    let d = &cache.inner.delivery;
    loop {
        let (bump, front, covers_below) = {
            let mut st = lock(&d.state);
            let bump = std::mem::take(&mut st.everything);
            st.sending_everything = bump;
            (bump, st.queue.front().cloned(), st.next_id)
        };
        if bump {
            // Covers every invalidation made before this point.
            let sent = cache.bump_namespace();
            let mut st = lock(&d.state);
            st.sending_everything = false;
            match &sent {
                Ok(()) => {
                    st.queue.retain(|(id, _)| *id >= covers_below);
                    st.collapse_floor = if st.everything {
                        // Collapsed again while the bump was on its way: what that dropped
                        // from `covers_below` up still needs the next bump.
                        st.collapse_floor.map(|f| f.max(covers_below))
                    } else {
                        None
                    };
                }
                Err(_) => st.everything = true,
            }
            // Counted before `settle` wakes the writers waiting for it, so they see it.
            if sent.is_ok() {
                cache.inner.stats.inc(Counter::RetriedInvalidations);
            }
            d.settle(st, if sent.is_ok() { covers_below } else { 0 });
            sent?;
            tracing::info!("queued namespace bump delivered");
            continue;
        }
        let Some((id, inv)) = front else {
            return Ok(());
        };
        cache.invalidate_once(&inv)?;
        // Counted before `settle` wakes the writers waiting for it, so they see it.
        cache.inner.stats.inc(Counter::RetriedInvalidations);
        let mut st = lock(&d.state);
        if st.queue.front().is_some_and(|(f, _)| *f == id) {
            st.queue.pop_front();
        }
        d.settle(st, id + 1);
        tracing::info!(tables = ?inv.tables().collect::<Vec<_>>(), "queued invalidation delivered");
    }
}
