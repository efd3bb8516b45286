//! The protocol's I/O behind one trait, so that the protocol exists once.
//!
//! The read protocol (lookup, lease, register, check, publish: `docs/src/protocol.md`) is
//! written as `async fn`s over an [`Io`]: every backend call it makes is awaited through it.
//! Two drivers run those functions:
//!
//! - [`Blocking`]: the backend's blocking calls. Each of its futures has done its work by the
//!   time it is first polled, so [`drive`] runs a protocol function to its end in one poll on
//!   the calling thread, as plain blocking code would (`Cache::begin_read`,
//!   `PreparedFill::publish`, `Cache::read_through`, ...).
//! - `Nonblocking` (feature `tokio`): the backend's non-blocking client
//!   ([`Backend::batch_async`]) and tokio's timer, awaited on the caller's runtime
//!   (`Cache::begin_read_async`, `PreparedFill::publish_async`).
//!
//! The interleaving search and the stress harness therefore exercise the same code in both
//! modes; only the bytes' transport differs. What the async driver cannot do without
//! blocking, a server check after a reconnection (several servers), it leaves to the blocking
//! driver: a read ends early ([`Io::blocking`] is `None`) and its caller runs the blocking
//! driver; an invalidation runs the check on the runtime's blocking pool
//! ([`Io::watch_servers`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::backend::{Backend, CasOutcome, Item, Op, OpReply};
use crate::error::{Error, Result};
use crate::timeout::Expiry;
use crate::Cache;

/// How the protocol reaches the backend (see the module docs).
pub(crate) trait Io: Sync {
    /// [`Backend::batch`].
    fn batch<'a>(
        &'a self,
        stages: &'a [&'a [Op<'a>]],
    ) -> impl Future<Output = Result<Vec<Vec<OpReply>>>> + Send + 'a;

    /// Waits `d` (a lease's poll interval).
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send;

    /// The backend, when this driver may block the thread on it: a read's server check after
    /// a reconnection needs it, and a counter's repair uses its `set`. `None` for the
    /// non-blocking driver, whose reads then end early for the blocking one to do (and which
    /// repairs a counter with [`replace`](Io::replace)).
    fn blocking(&self) -> Option<&dyn Backend>;

    /// [`Backend::max_item_size`].
    fn max_item_size(&self) -> usize;

    /// [`Backend::get_multi`].
    fn get_multi<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> impl Future<Output = Result<HashMap<String, Item>>> + Send + 'a {
        async move {
            let ops: Vec<Op<'_>> = keys.iter().map(|k| Op::Get(k)).collect();
            let replies = self.batch(&[&ops]).await?;
            Ok(crate::read::values_of(
                keys,
                replies.into_iter().next().unwrap_or_default(),
            ))
        }
    }

    /// [`Backend::get`].
    fn get<'a>(&'a self, key: &'a str) -> impl Future<Output = Result<Option<Item>>> + Send + 'a {
        single(self, Op::Get(key), |r| match r {
            OpReply::Value(item) => Ok(item),
            other => Err(other),
        })
    }

    /// [`Backend::add`].
    fn add<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        expiry: Expiry,
    ) -> impl Future<Output = Result<bool>> + Send + 'a {
        single(self, Op::Add(key, value, expiry), |r| match r {
            OpReply::Added(added) => Ok(added),
            other => Err(other),
        })
    }

    /// [`Backend::cas`].
    fn cas<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        expiry: Expiry,
        cas: u64,
    ) -> impl Future<Output = Result<CasOutcome>> + Send + 'a {
        single(self, Op::Cas(key, value, expiry, cas), |r| match r {
            OpReply::Cas(outcome) => Ok(outcome),
            other => Err(other),
        })
    }

    /// [`Backend::delete`].
    fn delete<'a>(&'a self, key: &'a str) -> impl Future<Output = Result<()>> + Send + 'a {
        single(self, Op::Delete(key), |_| Ok(()))
    }

    /// [`Backend::delete_multi`].
    fn delete_multi<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        async move {
            let ops: Vec<Op<'_>> = keys.iter().map(|k| Op::Delete(k)).collect();
            self.batch(&[&ops]).await.map(|_| ())
        }
    }

    /// [`Backend::add_multi`].
    fn add_multi<'a>(
        &'a self,
        items: &'a [(&'a str, &'a [u8])],
        expiry: Expiry,
    ) -> impl Future<Output = Result<Vec<bool>>> + Send + 'a {
        async move {
            let ops: Vec<Op<'_>> = items.iter().map(|(k, v)| Op::Add(k, v, expiry)).collect();
            let replies = self
                .batch(&[&ops])
                .await?
                .into_iter()
                .next()
                .unwrap_or_default();
            Ok(replies
                .into_iter()
                .map(|r| matches!(r, OpReply::Added(true)))
                .collect())
        }
    }

    /// [`Backend::incr_multi`].
    fn incr_multi<'a>(
        &'a self,
        keys: &'a [&'a str],
        delta: u64,
    ) -> impl Future<Output = Result<Vec<Result<Option<u64>>>>> + Send + 'a {
        async move {
            let ops: Vec<Op<'_>> = keys.iter().map(|k| Op::Incr(k, delta)).collect();
            let replies = self
                .batch(&[&ops])
                .await?
                .into_iter()
                .next()
                .unwrap_or_default();
            Ok(crate::clock::incr_outcomes(keys, replies))
        }
    }

    /// [`Backend::incr`].
    fn incr<'a>(
        &'a self,
        key: &'a str,
        delta: u64,
    ) -> impl Future<Output = Result<Option<u64>>> + Send + 'a {
        async move {
            let keys = [key];
            let mut outcomes = self.incr_multi(&keys, delta).await?;
            outcomes.pop().unwrap_or(Ok(None))
        }
    }

    /// Replaces `key`'s value ([`Backend::set`]). Without a blocking backend, as a delete
    /// then an add in one batch: an add that loses to another writer leaves that writer's
    /// value (`Ok(false)`), which is all a counter's repair needs (it reads as changed).
    fn replace<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
    ) -> impl Future<Output = Result<bool>> + Send + 'a {
        async move {
            let (delete, add) = ([Op::Delete(key)], [Op::Add(key, value, Expiry::Forever)]);
            let replies = self.batch(&[&delete, &add]).await?;
            Ok(matches!(
                replies.get(1).and_then(|r| r.first()),
                Some(OpReply::Added(true))
            ))
        }
    }

    /// Checks the servers after a reconnection ([`Cache::watch_servers`]): on the calling
    /// thread for the blocking driver; on the runtime's blocking pool for the non-blocking
    /// one, when a check is due (an atomic load otherwise).
    fn watch_servers<'a>(
        &'a self,
        cache: &'a Cache,
    ) -> impl Future<Output = Result<bool>> + Send + 'a;
}

/// One op as a one-op batch, its reply read by `answer` (which hands back a reply that does
/// not answer that op).
async fn single<I: Io + ?Sized, T>(
    io: &I,
    op: Op<'_>,
    answer: fn(OpReply) -> std::result::Result<T, OpReply>,
) -> Result<T> {
    let ops = [op];
    let reply = io
        .batch(&[&ops])
        .await?
        .into_iter()
        .next()
        .and_then(|stage| stage.into_iter().next());
    let unexpected = |reply: Option<OpReply>| Error::Protocol {
        server: String::new(),
        line: format!("{reply:?} answering a batched {:?}", op.key()),
    };
    match reply {
        Some(r) => answer(r).map_err(|r| unexpected(Some(r))),
        None => Err(unexpected(None)),
    }
}

/// The blocking driver: the backend's own calls, on the calling thread.
pub(crate) struct Blocking<'b>(pub(crate) &'b dyn Backend);

impl Io for Blocking<'_> {
    fn batch<'a>(
        &'a self,
        stages: &'a [&'a [Op<'a>]],
    ) -> impl Future<Output = Result<Vec<Vec<OpReply>>>> + Send + 'a {
        std::future::ready(self.0.batch(stages))
    }

    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send {
        std::thread::sleep(d);
        std::future::ready(())
    }

    fn blocking(&self) -> Option<&dyn Backend> {
        Some(self.0)
    }

    fn max_item_size(&self) -> usize {
        self.0.max_item_size()
    }

    // The single-purpose calls go to the backend as such (not as one-op batches): the
    // blocking path makes exactly the calls it made before the protocol was written once.
    fn get_multi<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> impl Future<Output = Result<HashMap<String, Item>>> + Send + 'a {
        std::future::ready(self.0.get_multi(keys))
    }

    fn get<'a>(&'a self, key: &'a str) -> impl Future<Output = Result<Option<Item>>> + Send + 'a {
        std::future::ready(self.0.get(key))
    }

    fn add<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        expiry: Expiry,
    ) -> impl Future<Output = Result<bool>> + Send + 'a {
        std::future::ready(self.0.add(key, value, expiry))
    }

    fn cas<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        expiry: Expiry,
        cas: u64,
    ) -> impl Future<Output = Result<CasOutcome>> + Send + 'a {
        std::future::ready(self.0.cas(key, value, expiry, cas))
    }

    fn delete<'a>(&'a self, key: &'a str) -> impl Future<Output = Result<()>> + Send + 'a {
        std::future::ready(self.0.delete(key))
    }

    fn delete_multi<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        std::future::ready(self.0.delete_multi(keys))
    }

    fn add_multi<'a>(
        &'a self,
        items: &'a [(&'a str, &'a [u8])],
        expiry: Expiry,
    ) -> impl Future<Output = Result<Vec<bool>>> + Send + 'a {
        std::future::ready(self.0.add_multi(items, expiry))
    }

    fn incr_multi<'a>(
        &'a self,
        keys: &'a [&'a str],
        delta: u64,
    ) -> impl Future<Output = Result<Vec<Result<Option<u64>>>>> + Send + 'a {
        std::future::ready(self.0.incr_multi(keys, delta))
    }

    fn incr<'a>(
        &'a self,
        key: &'a str,
        delta: u64,
    ) -> impl Future<Output = Result<Option<u64>>> + Send + 'a {
        std::future::ready(self.0.incr(key, delta))
    }

    fn replace<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
    ) -> impl Future<Output = Result<bool>> + Send + 'a {
        std::future::ready(self.0.set(key, value, Expiry::Forever).map(|()| true))
    }

    fn watch_servers<'a>(
        &'a self,
        cache: &'a Cache,
    ) -> impl Future<Output = Result<bool>> + Send + 'a {
        std::future::ready(cache.watch_servers())
    }
}

/// Runs a protocol function over [`Blocking`] to its end on this thread. Its futures are
/// ready when first polled, so this is one poll; should a future ever be pending, the
/// thread yields and polls again (it never sleeps on a waker nobody wakes).
pub(crate) fn drive<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

/// The non-blocking driver (feature `tokio`): the backend's non-blocking batches
/// ([`Backend::batch_async`]) and tokio's timer. Only for a backend that has them
/// ([`Nonblocking::of`]).
#[cfg(feature = "tokio")]
pub(crate) struct Nonblocking<'b>(&'b dyn Backend);

#[cfg(feature = "tokio")]
impl<'b> Nonblocking<'b> {
    /// The driver for `backend`, if it runs batches without blocking here (inside a tokio
    /// runtime, with a non-blocking client).
    pub(crate) fn of(backend: &'b dyn Backend) -> Option<Self> {
        backend.batch_async(&[]).map(|_| Nonblocking(backend))
    }
}

#[cfg(feature = "tokio")]
impl Io for Nonblocking<'_> {
    async fn batch<'a>(&'a self, stages: &'a [&'a [Op<'a>]]) -> Result<Vec<Vec<OpReply>>> {
        match self.0.batch_async(stages) {
            Some(batch) => batch.await,
            // A backend answers every batch or none (`Backend::batch_async`): this one broke
            // that; fail the read rather than block the runtime.
            None => Err(Error::Unavailable {
                server: self.0.name().to_string(),
                reason: "no non-blocking client for this batch".to_string(),
            }),
        }
    }

    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(d)
    }

    fn blocking(&self) -> Option<&dyn Backend> {
        None
    }

    fn max_item_size(&self) -> usize {
        self.0.max_item_size()
    }

    async fn watch_servers<'a>(&'a self, cache: &'a Cache) -> Result<bool> {
        if cache.servers_checked() {
            return Ok(false);
        }
        let cache = cache.clone();
        match tokio::task::spawn_blocking(move || cache.watch_servers()).await {
            Ok(watched) => watched,
            Err(e) => Err(Error::Unavailable {
                server: String::new(),
                reason: format!("the server check did not run: {e}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::locmem::LocMem;

    #[test]
    fn the_blocking_driver_runs_in_one_poll_and_the_default_calls_match_the_backend() {
        let backend = LocMem::new();
        let io = Blocking(&backend);
        assert!(drive(io.add("k", b"v", Expiry::Forever)).unwrap());
        assert!(!drive(io.add("k", b"w", Expiry::Forever)).unwrap());
        let item = drive(io.get("k")).unwrap().unwrap();
        assert_eq!(item.value, b"v");
        assert_eq!(
            drive(io.cas("k", b"x", Expiry::Forever, item.cas)).unwrap(),
            CasOutcome::Stored
        );
        drive(io.delete("k")).unwrap();
        assert!(drive(io.get_multi(&["k"])).unwrap().is_empty());
    }

    /// The trait's own (batched) calls, as the non-blocking driver makes them, answer what
    /// the backend's single-purpose calls answer.
    #[test]
    fn batched_calls_answer_as_the_single_purpose_ones() {
        struct Batched<'b>(&'b dyn Backend);
        impl Io for Batched<'_> {
            fn batch<'a>(
                &'a self,
                stages: &'a [&'a [Op<'a>]],
            ) -> impl Future<Output = Result<Vec<Vec<OpReply>>>> + Send + 'a {
                std::future::ready(self.0.batch(stages))
            }
            fn sleep(&self, _: Duration) -> impl Future<Output = ()> + Send {
                std::future::ready(())
            }
            fn blocking(&self) -> Option<&dyn Backend> {
                None
            }
            fn max_item_size(&self) -> usize {
                self.0.max_item_size()
            }
            fn watch_servers<'a>(
                &'a self,
                cache: &'a Cache,
            ) -> impl Future<Output = Result<bool>> + Send + 'a {
                std::future::ready(cache.watch_servers())
            }
        }
        let backend = LocMem::new();
        let io = Batched(&backend);
        assert!(drive(io.add("k", b"v", Expiry::Forever)).unwrap());
        assert!(!drive(io.add("k", b"w", Expiry::Forever)).unwrap());
        let item = drive(io.get("k")).unwrap().unwrap();
        assert_eq!(item.value, b"v");
        assert_eq!(
            drive(io.cas("k", b"x", Expiry::Forever, item.cas)).unwrap(),
            CasOutcome::Stored
        );
        assert_eq!(
            drive(io.cas("k", b"y", Expiry::Forever, item.cas)).unwrap(),
            CasOutcome::Changed
        );
        assert_eq!(drive(io.get_multi(&["k", "nope"])).unwrap().len(), 1);
        drive(io.delete("k")).unwrap();
        assert_eq!(drive(io.get("k")).unwrap(), None);
    }
}
