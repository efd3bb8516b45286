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
//! blocking (a server check after a reconnection, replacing a counter that is not a number) it reports
//! ([`Io::blocking`] is `None`), and its caller runs the blocking driver for that read.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::backend::{Backend, CasOutcome, Item, Op, OpReply};
use crate::error::{Error, Result};
use crate::timeout::Expiry;

/// How the protocol reaches the backend (see the module docs).
pub(crate) trait Io: Sync {
    /// [`Backend::batch`].
    fn batch<'a>(
        &'a self,
        stages: &'a [&'a [Op<'a>]],
    ) -> impl Future<Output = Result<Vec<Vec<OpReply>>>> + Send + 'a;

    /// Waits `d` (a lease's poll interval).
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send;

    /// The backend, when this driver may block the thread on it: the rare repairs of a read
    /// (a server check after a reconnection, a counter that is not a number) need it. `None` for the
    /// non-blocking driver, whose reads then end early for the blocking one to do.
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
        async move {
            let ops = [Op::Get(key)];
            match one(self.batch(&[&ops]).await?) {
                Some(OpReply::Value(item)) => Ok(item),
                other => Err(unexpected("get", other)),
            }
        }
    }

    /// [`Backend::add`].
    fn add<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        expiry: Expiry,
    ) -> impl Future<Output = Result<bool>> + Send + 'a {
        async move {
            let ops = [Op::Add(key, value, expiry)];
            match one(self.batch(&[&ops]).await?) {
                Some(OpReply::Added(added)) => Ok(added),
                other => Err(unexpected("add", other)),
            }
        }
    }

    /// [`Backend::cas`].
    fn cas<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        expiry: Expiry,
        cas: u64,
    ) -> impl Future<Output = Result<CasOutcome>> + Send + 'a {
        async move {
            let ops = [Op::Cas(key, value, expiry, cas)];
            match one(self.batch(&[&ops]).await?) {
                Some(OpReply::Cas(outcome)) => Ok(outcome),
                other => Err(unexpected("cas", other)),
            }
        }
    }

    /// [`Backend::delete`].
    fn delete<'a>(&'a self, key: &'a str) -> impl Future<Output = Result<()>> + Send + 'a {
        async move {
            let ops = [Op::Delete(key)];
            self.batch(&[&ops]).await.map(|_| ())
        }
    }
}

/// The only reply of a one-op batch.
fn one(replies: Vec<Vec<OpReply>>) -> Option<OpReply> {
    replies.into_iter().next()?.into_iter().next()
}

fn unexpected(op: &str, reply: Option<OpReply>) -> Error {
    Error::Protocol {
        server: String::new(),
        line: format!("{reply:?} answering a batched {op}"),
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
