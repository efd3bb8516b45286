//! Stampede protection: after a hot entry is invalidated, one reader reads the database and
//! fills it while the others wait briefly for that fill instead of all reading the database.
//!
//! Two layers, both bounded by [`CacheConfig::lease_wait`](crate::CacheConfig::lease_wait):
//!
//! - **Inside a process** (single-flight): the first reader that misses a key becomes the
//!   key's leader; the others wait until it is done (or the wait is over), then look the
//!   entry up once more and, if it still misses (the leader's fill raced a write), read the
//!   database.
//! - **Across processes** (the lease): the leader stores the fill's pending marker *before*
//!   it reads the database (the protocol's `add`, moved ahead of the read). A leader whose
//!   `add` fails finds another process's marker, and polls the entry (1, 2, 4, 8, 8, .. ms)
//!   until it is published, or the marker vanished (its fill raced a write or was refused:
//!   this reader then tries to take the lease itself), or the wait is over.
//!
//! A reader that waited in vain reads the database and fills as usual (its `add` tells
//! whether the marker is still held). Nothing here changes what a fill checks before it
//! publishes (`docs/src/protocol.md`): the marker is the same add-only marker, only stored
//! earlier, so the interleaving search covers the lease. Hits never come here.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::backend::Placeholder;
use crate::envelope::{pending_marker, PENDING_TTL};
use crate::io::Io;
use crate::read::{LeaseAttempt, Lookup, ReadPlan};
use crate::stats::Counter;
use crate::timeout::Expiry;
use crate::Cache;

/// The keys this process is filling right now, each with the readers waiting for it.
#[derive(Debug, Default)]
pub(crate) struct Flights(Mutex<HashMap<String, Arc<Flight>>>);

#[derive(Debug, Default)]
struct Flight {
    done: Mutex<bool>,
    cv: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Flight {
    /// Whether the leader is done.
    fn is_done(&self) -> bool {
        *lock(&self.done)
    }

    /// Waits until the leader is done or `deadline` passed: on its condition variable with
    /// the blocking driver, by polling every millisecond or two with the non-blocking one
    /// (its waits are timers on the caller's runtime).
    async fn wait<I: Io>(&self, io: &I, deadline: Instant) {
        if io.blocking().is_some() {
            return self.wait_until(deadline);
        }
        let mut pause = Duration::from_millis(1);
        while !self.is_done() {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            if left.is_zero() {
                return;
            }
            io.sleep(pause.min(left)).await;
            pause = Duration::from_millis(2);
        }
    }

    /// Waits until the leader is done or `deadline` passed.
    fn wait_until(&self, deadline: Instant) {
        let mut done = lock(&self.done);
        while !*done {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            if left.is_zero() {
                return;
            }
            done = match self.cv.wait_timeout(done, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

/// Held by the reader leading a key's fill in this process; dropping it (after the fill, or
/// on any early return or panic) wakes the readers waiting for the key.
#[derive(Debug)]
pub(crate) struct FlightGuard {
    flights: Arc<Flights>,
    key: String,
    flight: Arc<Flight>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        {
            let mut map = lock(&self.flights.0);
            if map
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                map.remove(&self.key);
            }
        }
        *lock(&self.flight.done) = true;
        self.flight.cv.notify_all();
    }
}

enum Join {
    Leader(FlightGuard),
    Follower(Arc<Flight>),
}

impl Flights {
    fn join(self: &Arc<Self>, key: &str) -> Join {
        let mut map = lock(&self.0);
        if let Some(f) = map.get(key) {
            return Join::Follower(f.clone());
        }
        let flight = Arc::new(Flight::default());
        map.insert(key.to_string(), flight.clone());
        Join::Leader(FlightGuard {
            flights: self.clone(),
            key: key.to_string(),
            flight,
        })
    }
}

/// The pauses between polls of an entry another process is filling: 1, 2, 4, 8, 8, .. ms,
/// as many as fit in `wait`. Fixed by `wait` alone (not by the clock), so a schedule replays
/// the same polls.
fn poll_delays(wait: Duration) -> impl Iterator<Item = Duration> {
    let mut spent = Duration::ZERO;
    let mut next = Duration::from_millis(1);
    std::iter::from_fn(move || {
        if spent >= wait {
            return None;
        }
        let d = next.min(wait - spent);
        spent += d;
        next = (next * 2).min(Duration::from_millis(8));
        Some(d)
    })
}

/// What a reader that missed got from [`Cache::lease`].
pub(crate) enum Leased {
    /// Another reader's fill was published while this one waited: its payload.
    Hit(Vec<u8>),
    /// This reader leads the fill: `marker` is stored under the key (the fill must publish
    /// over it, or delete it); `flight`, if this reader also leads in this process, wakes
    /// this process's waiters when dropped.
    Leader {
        lookup: Lookup,
        marker: Placeholder,
        flight: Option<FlightGuard>,
    },
    /// No lease: read the database and fill as usual. `lookup` is the latest one.
    Proceed {
        lookup: Lookup,
        flight: Option<FlightGuard>,
    },
}

impl Cache {
    /// After a miss of `plan` seen by `lookup`: takes the key's lease, or waits for the
    /// reader holding it (see the module docs). Costs nothing more when the lookup took the
    /// lease already (its batch adds the marker), one `add` when it could not yet.
    pub(crate) async fn lease<I: Io>(&self, io: &I, plan: &ReadPlan<'_>, lookup: Lookup) -> Leased {
        let key = plan.key();
        // A plan that must not wait (an async caller on its runtime's thread) gets no polls and a
        // zero budget: it reads the database at once, as a reader that waited in vain does.
        let wait = if plan.waits() {
            self.inner.config.lease_wait
        } else {
            Duration::ZERO
        };
        let mut delays = poll_delays(wait);
        let mut lookup = lookup;
        if let Some(marker) = lookup.marker.take() {
            // The lookup stored our marker: we lead the fill across processes, and must not
            // wait for anybody (a reader of this process that joined the flight first waits
            // for our result through the marker, as a reader elsewhere would).
            let flight = match self.inner.flights.join(key) {
                Join::Leader(guard) => Some(guard),
                Join::Follower(_) => None,
            };
            return Leased::Leader {
                lookup,
                marker,
                flight,
            };
        }
        let marker_expiry = self
            .plan_expiry(plan)
            .min(Expiry::from_duration(PENDING_TTL));
        let flight = match self.inner.flights.join(key) {
            Join::Leader(guard) => guard,
            Join::Follower(f) => {
                self.inner.stats.inc(Counter::LeaseWaits);
                // The leader wakes its followers when it is done: wait (at most the whole
                // budget), look again once, then read the database if it still misses.
                let budget: Duration = delays.sum();
                if self.inner.hook.is_none() {
                    f.wait(io, Instant::now() + budget).await;
                }
                return match self.relookup(io, plan).await {
                    Some(Lookup { hit: Some(hit), .. }) => Leased::Hit(hit),
                    Some(l) => Leased::Proceed {
                        lookup: l,
                        flight: None,
                    },
                    None => Leased::Proceed {
                        lookup,
                        flight: None,
                    },
                };
            }
        };
        // This process's leader for the key: take the lease across processes.
        let mut waited = false;
        loop {
            self.step("add");
            let marker = pending_marker();
            // Dropped while the add is in flight, the marker it may store is given up.
            let attempt = LeaseAttempt(Some((self, key)));
            let added = io.add(key, &marker, marker_expiry).await;
            if added.is_ok() || io.blocking().is_some() {
                attempt.disarm();
            }
            match added {
                Ok(true) => {
                    return Leased::Leader {
                        lookup,
                        marker: Placeholder {
                            value: marker.to_vec(),
                            cas: None,
                        },
                        flight: Some(flight),
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    self.record_backend_error("lease", &e);
                    return Leased::Proceed {
                        lookup,
                        flight: Some(flight),
                    };
                }
            }
            if !waited {
                waited = true;
                self.inner.stats.inc(Counter::LeaseWaits);
            }
            // Held elsewhere: wait for its result, or for the marker to go.
            loop {
                let Some(d) = delays.next() else {
                    return Leased::Proceed {
                        lookup,
                        flight: Some(flight),
                    };
                };
                // (Not under a step hook: an interleaving test's scheduler orders every step
                // itself, and a wait there could only end by its timeout.)
                if self.inner.hook.is_none() {
                    io.sleep(d).await;
                }
                match self.relookup(io, plan).await {
                    Some(Lookup { hit: Some(hit), .. }) => return Leased::Hit(hit),
                    Some(l) => {
                        let held = l.pending;
                        lookup = l;
                        if !held {
                            // Gone without a result: try to take the lease ourselves.
                            break;
                        }
                    }
                    None => {
                        return Leased::Proceed {
                            lookup,
                            flight: Some(flight),
                        }
                    }
                }
            }
        }
    }

    /// A fresh lookup of `plan`'s entry; `None` (counted) when the backend failed, or when
    /// the non-blocking driver could not look (a repair is due: the read goes on as one
    /// that waited in vain).
    async fn relookup<I: Io>(&self, io: &I, plan: &ReadPlan<'_>) -> Option<Lookup> {
        match self
            .lookup_one(io, plan.key(), plan.tables(), plan.guarded_tables())
            .await
        {
            Ok(l) => l,
            Err(e) => {
                self.record_backend_error("lookup", &e);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_delays_fit_the_wait() {
        let d: Vec<u64> = poll_delays(Duration::from_millis(30))
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(d, [1, 2, 4, 8, 8, 7]);
        assert_eq!(poll_delays(Duration::ZERO).count(), 0);
        let total: Duration = poll_delays(Duration::from_millis(200)).sum();
        assert_eq!(total, Duration::from_millis(200));
    }

    #[test]
    fn a_flight_wakes_its_followers_when_its_leader_is_done() {
        let flights = Arc::new(Flights::default());
        let Join::Leader(guard) = flights.join("k") else {
            panic!("first reader leads");
        };
        let Join::Follower(f) = flights.join("k") else {
            panic!("second reader follows");
        };
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            f.wait_until(start + Duration::from_secs(30));
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(20));
        drop(guard);
        assert!(t.join().unwrap() < Duration::from_secs(30));
        // The key is free again.
        assert!(matches!(flights.join("k"), Join::Leader(_)));
    }
}
