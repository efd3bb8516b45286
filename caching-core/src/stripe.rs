//! Per-thread stripes: state that every read updates (counters, the in-process cache's hot
//! entries) is split so that threads reading at once each write their own cache line.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// This thread's number: threads are numbered in the order they first ask (a thread that
/// is exiting gets 0).
pub(crate) fn thread_index() -> usize {
    THREAD
        .try_with(|t| match t.get() {
            Some(n) => n,
            None => {
                let n = NEXT_THREAD.fetch_add(1, Relaxed);
                t.set(Some(n));
                n
            }
        })
        .unwrap_or(0)
}

/// How many stripes state is split into.
const STRIPES: usize = 8;

/// A value alone on its cache lines (128 bytes, as locmem's shards and stripes: the
/// adjacent-line prefetcher moves lines in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Line<T>(T);

/// One `T` per thread stripe, each on its own cache line: a thread updates its stripe's,
/// readers of the whole combine them.
#[derive(Debug, Default)]
pub(crate) struct PerStripe<T>([Line<T>; STRIPES]);

impl<T> PerStripe<T> {
    /// This thread's.
    pub(crate) fn mine(&self) -> &T {
        &self.0[thread_index() % STRIPES].0
    }

    /// Every stripe's.
    pub(crate) fn all(&self) -> impl Iterator<Item = &T> {
        self.0.iter().map(|line| &line.0)
    }
}

/// A counter split over stripes: threads counting at once (every hit counts) do not take
/// one cache line from each other.
#[derive(Debug, Default)]
pub(crate) struct Striped(PerStripe<AtomicU64>);

impl Striped {
    /// Adds `n`, on this thread's stripe.
    pub(crate) fn add(&self, n: u64) {
        self.0.mine().fetch_add(n, Relaxed);
    }

    /// The total.
    pub(crate) fn load(&self) -> u64 {
        self.0
            .all()
            .fold(0u64, |sum, n| sum.wrapping_add(n.load(Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_counters_add_up_across_threads() {
        let c = std::sync::Arc::new(Striped::default());
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        c.add(5);
        assert_eq!(c.load(), 12_005);
    }

    #[test]
    fn threads_get_distinct_indexes() {
        let here = thread_index();
        assert_eq!(here, thread_index());
        let there = std::thread::spawn(thread_index).join().unwrap();
        assert_ne!(here, there);
    }
}
