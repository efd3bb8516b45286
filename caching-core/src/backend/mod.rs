//! The storage a cache talks to, and its implementations.
//!
//! The trait holds exactly what the read, fill and invalidation paths need (see
//! `docs/src/protocol.md`): a multi-get that returns CAS tokens, add-only and CAS stores,
//! batched set / append / delete, and counters. Every method that takes several keys is one
//! round trip per server. [`Backend::batch`] runs several such steps in order, in one round
//! trip where the backend can keep their order (one server).

use std::collections::HashMap;
use std::fmt::Debug;

use crate::error::Result;
use crate::timeout::Expiry;

#[cfg(any(feature = "memcached", feature = "redis"))]
mod fail_fast;
pub mod locmem;
#[cfg(feature = "memcached")]
pub mod memcached;
#[cfg(feature = "redis")]
pub mod redis;

/// A value read from a backend with its CAS token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The stored bytes.
    pub value: Vec<u8>,
    /// Token for [`Backend::cas`]: changes whenever the value changes.
    pub cas: u64,
}

/// Outcome of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Appended.
    Appended,
    /// The key does not exist; nothing was stored.
    Missing,
    /// The result would exceed the item size limit; nothing was stored.
    TooLarge,
}

/// Outcome of a compare-and-swap store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    /// Stored: the value had not changed since it was read.
    Stored,
    /// Not stored: the value changed since it was read.
    Changed,
    /// Not stored: the key no longer exists.
    Missing,
}

/// One command of a [`Backend::batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    /// Read a key with its CAS token: [`OpReply::Value`].
    Get(&'a str),
    /// Read a key with its CAS token and, if it is missing, take its lease: store `marker`
    /// under it as [`Op::Add`] would (expiring after the expiry): [`OpReply::Leased`]. A
    /// backend with a native lease may store an empty value instead of `marker` (memcached's
    /// meta get with `N` creates an empty item); the reply says what was stored. On a key
    /// that exists this costs what a get costs.
    Lease(&'a str, &'a [u8], Expiry),
    /// Store only if the key does not exist: [`OpReply::Added`].
    Add(&'a str, &'a [u8], Expiry),
    /// Append to an existing value: [`OpReply::Appended`].
    Append(&'a str, &'a [u8]),
    /// Compare-and-swap against a token read earlier: [`OpReply::Cas`].
    Cas(&'a str, &'a [u8], Expiry, u64),
    /// Delete (a missing key is not an error): [`OpReply::Deleted`].
    Delete(&'a str),
    /// Increment a decimal counter: [`OpReply::Counter`] (or [`OpReply::NotANumber`]).
    Incr(&'a str, u64),
}

impl<'a> Op<'a> {
    /// The key the command is about.
    pub fn key(&self) -> &'a str {
        match *self {
            Op::Get(k)
            | Op::Lease(k, ..)
            | Op::Add(k, ..)
            | Op::Append(k, _)
            | Op::Cas(k, ..)
            | Op::Delete(k)
            | Op::Incr(k, _) => k,
        }
    }
}

/// A lease stored by [`Op::Lease`]: the value stored (the marker asked for, or empty where
/// the backend's native lease stores an empty item) and, when the backend reports it, its CAS
/// token. The lease is still held while the key holds this value (with this token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    /// The value stored.
    pub value: Vec<u8>,
    /// Its CAS token, if known.
    pub cas: Option<u64>,
}

impl Placeholder {
    /// Whether `item` is this placeholder, unchanged.
    ///
    /// ```
    /// use caching_core::backend::{Item, Placeholder};
    /// let p = Placeholder { value: vec![], cas: Some(7) };
    /// assert!(p.is(&Item { value: vec![], cas: 7 }));
    /// assert!(!p.is(&Item { value: vec![], cas: 8 }));
    /// let q = Placeholder { value: b"P1x".to_vec(), cas: None };
    /// assert!(q.is(&Item { value: b"P1x".to_vec(), cas: 8 }));
    /// ```
    pub fn is(&self, item: &Item) -> bool {
        item.value == self.value && self.cas.is_none_or(|c| c == item.cas)
    }
}

/// The answer to one [`Op`], what the corresponding single-purpose method returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpReply {
    /// [`Op::Get`]: the item, if the key exists.
    Value(Option<Item>),
    /// [`Op::Lease`]: the item the key held (`None` if it was missing), and the lease this
    /// op stored, if it stored one. Both `None`: the key was missing when read and created by
    /// someone else before the lease could be stored.
    Leased {
        /// What the key held.
        found: Option<Item>,
        /// What this op stored under the missing key.
        won: Option<Placeholder>,
    },
    /// [`Op::Add`]: whether it was stored.
    Added(bool),
    /// [`Op::Append`].
    Appended(AppendOutcome),
    /// [`Op::Cas`].
    Cas(CasOutcome),
    /// [`Op::Delete`].
    Deleted,
    /// [`Op::Incr`]: the new value, `None` if the counter does not exist.
    Counter(Option<u64>),
    /// [`Op::Incr`] of a value that is not a decimal number (nothing was changed).
    NotANumber,
}

/// The reads of [`Backend::get_multi_async`]: a future answering the items of the keys asked
/// for, in their order (`None` for a missing key).
pub type AsyncGets<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<Option<Item>>>> + Send + 'a>>;

/// The replies of [`Backend::batch_async`]: a future answering each stage's replies, as
/// [`Backend::batch`] does.
pub type AsyncBatch<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<Vec<OpReply>>>> + Send + 'a>>;

/// A key-value store with memcached's semantics.
///
/// Implementations must be thread-safe; every method may be called concurrently. Keys passed
/// in are valid memcached keys (see [`is_valid_key`](crate::key::is_valid_key)); an
/// implementation rejects anything else with [`Error::InvalidKey`](crate::Error::InvalidKey).
pub trait Backend: Send + Sync + Debug + 'static {
    /// Short name for logs (`locmem`, `memcached`, `redis`).
    fn name(&self) -> &'static str;

    /// Largest value (in bytes) the backend stores.
    fn max_item_size(&self) -> usize;

    /// Whether a call may block the calling thread on I/O (a network round trip). Async
    /// callers run such a backend's calls on a blocking pool and the others inline.
    /// Default: every backend but the built-in in-process one (`locmem`) may block; an
    /// in-process backend of your own overrides it.
    ///
    /// ```
    /// use caching_core::Cache;
    /// assert!(!Cache::locmem().backend().may_block());
    /// ```
    fn may_block(&self) -> bool {
        self.name() != "locmem"
    }

    /// Reads several keys at once; missing keys are absent from the map.
    fn get_multi(&self, keys: &[&str]) -> Result<HashMap<String, Item>>;

    /// Reads `keys` without blocking the calling thread: a future to await on an async
    /// runtime, answering each key's item in the order of `keys` (a key listed twice gets
    /// its item twice). `None` (the default) when the backend has no non-blocking client
    /// here; async callers then run blocking calls off their runtime's threads. The
    /// memcached and Redis backends have one with `caching-core`'s feature `tokio`, inside a
    /// tokio runtime (whose I/O and time drivers must be enabled, as `#[tokio::main]` does).
    /// The in-process cache needs none: it never waits on I/O.
    ///
    /// [`Cache::try_hit_async`](crate::Cache::try_hit_async) reads a hit through it.
    ///
    /// ```
    /// use caching_core::backend::{locmem::LocMem, Backend};
    /// let cache = LocMem::new();
    /// assert!(cache.get_multi_async(&["a", "b"]).is_none());
    /// ```
    fn get_multi_async<'a>(&'a self, keys: &'a [&'a str]) -> Option<AsyncGets<'a>> {
        let _ = keys;
        None
    }

    /// [`batch`](Backend::batch) without blocking the calling thread: a future to await on an
    /// async runtime, with the same stages, order and replies. `None` (the default) when the
    /// backend has no non-blocking client here, as for
    /// [`get_multi_async`](Backend::get_multi_async); a backend answers `Some` for every
    /// batch or for none (it may tell by the runtime it is called in, never by the batch).
    ///
    /// The async driver runs the whole read protocol (lookup, lease, register, check,
    /// publish) through it when it is there ([`Cache::begin_read_async`]); otherwise those
    /// steps run off the runtime's threads with the blocking calls.
    ///
    /// [`Cache::begin_read_async`]: crate::Cache::begin_read_async
    ///
    /// ```
    /// use caching_core::backend::{locmem::LocMem, Backend, Op};
    /// let cache = LocMem::new();
    /// assert!(cache.batch_async(&[&[Op::Get("a")]]).is_none());
    /// ```
    fn batch_async<'a>(&'a self, stages: &'a [&'a [Op<'a>]]) -> Option<AsyncBatch<'a>> {
        let _ = stages;
        None
    }

    /// Stores each value only if its key does not exist; returns, per item, whether it was
    /// stored. A value over the item size is not stored (`false`), not an error.
    fn add_multi(&self, items: &[(&str, &[u8])], expiry: Expiry) -> Result<Vec<bool>>;

    /// Stores every value unconditionally. Values over the item size are skipped.
    fn set_multi(&self, items: &[(&str, &[u8])], expiry: Expiry) -> Result<()>;

    /// Appends bytes to existing values, atomically per key.
    fn append_multi(&self, items: &[(&str, &[u8])]) -> Result<Vec<AppendOutcome>>;

    /// Replaces a value only if it is unchanged since it was read with token `cas`.
    fn cas(&self, key: &str, value: &[u8], expiry: Expiry, cas: u64) -> Result<CasOutcome>;

    /// Several compare-and-swap stores at once (one round trip per server where the backend
    /// can pipeline); outcomes in input order.
    fn cas_multi(&self, items: &[(&str, &[u8], u64)], expiry: Expiry) -> Result<Vec<CasOutcome>> {
        items
            .iter()
            .map(|(k, v, cas)| self.cas(k, v, expiry, *cas))
            .collect()
    }

    /// Deletes keys; missing keys are not an error.
    fn delete_multi(&self, keys: &[&str]) -> Result<()>;

    /// Increments a decimal counter (wrapping at 2^64); `None` if the key does not exist.
    /// A value that is not a decimal number is [`Error::NotANumber`](crate::Error::NotANumber),
    /// never a failure of the backend.
    fn incr(&self, key: &str, delta: u64) -> Result<Option<u64>>;

    /// Increments several counters at once (one round trip per server where the backend can
    /// pipeline). Per key, in input order, what [`incr`](Backend::incr) returns for it: the
    /// new value, `None` if the key does not exist, or [`Error::NotANumber`](crate::Error::NotANumber).
    /// The outer error is a failure of the backend; some counters may have been incremented
    /// by then.
    ///
    /// ```
    /// use caching_core::backend::{Backend, locmem::LocMem};
    /// use caching_core::Expiry;
    /// let b = LocMem::new();
    /// b.set("a", b"1", Expiry::Forever).unwrap();
    /// b.set("c", b"x", Expiry::Forever).unwrap();
    /// let got = b.incr_multi(&["a", "b", "c"], 2).unwrap();
    /// assert_eq!(got[0].as_ref().ok(), Some(&Some(3)));
    /// assert_eq!(got[1].as_ref().ok(), Some(&None));
    /// assert!(got[2].is_err());
    /// ```
    fn incr_multi(&self, keys: &[&str], delta: u64) -> Result<Vec<Result<Option<u64>>>> {
        Ok(keys.iter().map(|k| self.incr(k, delta)).collect())
    }

    /// Tries to reach every server now, ignoring any fail-fast state ("marked down") left by
    /// earlier failures, and clears that state for the servers that answer. `Ok` when all
    /// answered. Retries of failed invalidations call it before trying again, so a fail-fast
    /// window never delays their delivery. Backends without servers answer `Ok`.
    fn probe(&self) -> Result<()> {
        Ok(())
    }

    /// How many servers the keys are spread over: 1 for in-process and single-server
    /// backends. With more than one, a server that restarts (or is flushed) loses its keys
    /// while the others keep theirs, which the cache must notice (see
    /// [`connections_opened`](Backend::connections_opened)).
    fn server_count(&self) -> usize {
        1
    }

    /// How many connections the backend has opened so far, to any server. Every server that
    /// restarted is reached through a new connection, so a cache on several servers checks
    /// that each server still holds its sentinel whenever this number moved.
    fn connections_opened(&self) -> u64 {
        0
    }

    /// Reads `key` from server `server` (0-based, in configuration order), wherever
    /// placement would put it. Backends with one server read it as usual.
    fn get_on_server(&self, server: usize, key: &str) -> Result<Option<Item>> {
        let _ = server;
        self.get(key)
    }

    /// Stores `value` under `key` (forever) on server `server`, wherever placement would put
    /// it. Backends with one server store it as usual.
    fn set_on_server(&self, server: usize, key: &str, value: &[u8]) -> Result<()> {
        let _ = server;
        self.set(key, value, Expiry::Forever)
    }

    /// Runs `stages` in order and returns their replies, stage by stage, op by op.
    ///
    /// Every command of a stage is applied after every command of the stages before it;
    /// inside a stage the commands are unordered, as the keys of one `_multi` call are, so a
    /// stage names each key at most once. A backend whose commands all reach one server in
    /// order (one memcached server, Redis) sends the whole batch in one round trip; the
    /// default runs each stage with the `_multi` methods, one after another. The outer error
    /// is a failure of the backend, after which any prefix of the batch may have been
    /// applied.
    ///
    /// ```
    /// use caching_core::backend::{Backend, Op, OpReply, locmem::LocMem};
    /// use caching_core::Expiry;
    /// let b = LocMem::new();
    /// let replies = b
    ///     .batch(&[
    ///         &[Op::Add("list", b"", Expiry::Forever)],
    ///         &[Op::Append("list", b" q1")],
    ///         &[Op::Get("list")],
    ///     ])
    ///     .unwrap();
    /// assert_eq!(replies[0], [OpReply::Added(true)]);
    /// let OpReply::Value(Some(item)) = &replies[2][0] else { panic!("list exists") };
    /// assert_eq!(item.value, b" q1");
    /// ```
    fn batch(&self, stages: &[&[Op<'_>]]) -> Result<Vec<Vec<OpReply>>> {
        stages.iter().map(|ops| run_stage(self, ops)).collect()
    }

    /// Reads one key.
    fn get(&self, key: &str) -> Result<Option<Item>> {
        Ok(self.get_multi(&[key])?.remove(key))
    }

    /// Stores one value only if its key does not exist.
    fn add(&self, key: &str, value: &[u8], expiry: Expiry) -> Result<bool> {
        Ok(self
            .add_multi(&[(key, value)], expiry)?
            .first()
            .copied()
            .unwrap_or(false))
    }

    /// Stores one value.
    fn set(&self, key: &str, value: &[u8], expiry: Expiry) -> Result<()> {
        self.set_multi(&[(key, value)], expiry)
    }

    /// Deletes one key.
    fn delete(&self, key: &str) -> Result<()> {
        self.delete_multi(&[key])
    }
}

/// One stage of [`Backend::batch`] through the `_multi` methods: one call per kind of
/// command (and per expiry or delta), replies in op order.
pub(crate) fn run_stage<B: Backend + ?Sized>(backend: &B, ops: &[Op<'_>]) -> Result<Vec<OpReply>> {
    let mut out: Vec<Option<OpReply>> = vec![None; ops.len()];
    let idx = |f: &dyn Fn(&Op<'_>) -> bool| -> Vec<usize> {
        (0..ops.len()).filter(|i| f(&ops[*i])).collect()
    };
    let gets = idx(&|o| matches!(o, Op::Get(_) | Op::Lease(..)));
    if !gets.is_empty() {
        let keys: Vec<&str> = gets.iter().map(|i| ops[*i].key()).collect();
        let mut got = backend.get_multi(&keys)?;
        // A lease of a missing key: an add, after the read.
        let mut leases: Vec<(usize, &str, &[u8], Expiry)> = Vec::new();
        for i in gets {
            let found = got.remove(ops[i].key());
            out[i] = Some(match (ops[i], found) {
                (Op::Lease(k, marker, expiry), None) => {
                    leases.push((i, k, marker, expiry));
                    continue;
                }
                (Op::Lease(..), found) => OpReply::Leased { found, won: None },
                (_, found) => OpReply::Value(found),
            });
        }
        for (i, key, marker, expiry) in leases {
            let won = backend.add(key, marker, expiry)?.then(|| Placeholder {
                value: marker.to_vec(),
                cas: None,
            });
            out[i] = Some(OpReply::Leased { found: None, won });
        }
    }
    let mut pending: Vec<usize> = idx(&|o| !matches!(o, Op::Get(_) | Op::Lease(..)));
    while let Some(&first) = pending.first() {
        // Every op of the first one's kind (and expiry or delta) goes in one call.
        let same: Vec<usize> = pending
            .iter()
            .copied()
            .filter(|i| same_call(&ops[first], &ops[*i]))
            .collect();
        pending.retain(|i| !same.contains(i));
        let replies: Vec<OpReply> = match ops[first] {
            Op::Add(_, _, expiry) => {
                let items: Vec<(&str, &[u8])> = same.iter().map(|i| item_of(&ops[*i])).collect();
                let r = backend.add_multi(&items, expiry)?;
                r.into_iter().map(OpReply::Added).collect()
            }
            Op::Append(..) => {
                let items: Vec<(&str, &[u8])> = same.iter().map(|i| item_of(&ops[*i])).collect();
                let r = backend.append_multi(&items)?;
                r.into_iter().map(OpReply::Appended).collect()
            }
            Op::Cas(_, _, expiry, _) => {
                let items: Vec<(&str, &[u8], u64)> = same
                    .iter()
                    .filter_map(|i| match ops[*i] {
                        Op::Cas(k, v, _, cas) => Some((k, v, cas)),
                        _ => None,
                    })
                    .collect();
                let r = backend.cas_multi(&items, expiry)?;
                r.into_iter().map(OpReply::Cas).collect()
            }
            Op::Delete(_) => {
                let keys: Vec<&str> = same.iter().map(|i| ops[*i].key()).collect();
                backend.delete_multi(&keys)?;
                vec![OpReply::Deleted; keys.len()]
            }
            Op::Incr(_, delta) => {
                let keys: Vec<&str> = same.iter().map(|i| ops[*i].key()).collect();
                let mut r = Vec::with_capacity(keys.len());
                for outcome in backend.incr_multi(&keys, delta)? {
                    r.push(match outcome {
                        Ok(n) => OpReply::Counter(n),
                        Err(crate::Error::NotANumber { .. }) => OpReply::NotANumber,
                        Err(e) => return Err(e),
                    });
                }
                r
            }
            // Gets and leases ran first; none is pending.
            Op::Get(_) | Op::Lease(..) => Vec::new(),
        };
        if replies.len() != same.len() {
            return Err(crate::Error::Protocol {
                server: backend.name().to_string(),
                line: format!("{} replies to {} commands", replies.len(), same.len()),
            });
        }
        for (i, r) in same.into_iter().zip(replies) {
            out[i] = Some(r);
        }
    }
    Ok(out
        .into_iter()
        .map(|r| r.unwrap_or(OpReply::Deleted))
        .collect())
}

/// Whether two ops go in one `_multi` call.
fn same_call(a: &Op<'_>, b: &Op<'_>) -> bool {
    match (a, b) {
        (Op::Add(_, _, x), Op::Add(_, _, y)) => x == y,
        (Op::Cas(_, _, x, _), Op::Cas(_, _, y, _)) => x == y,
        (Op::Incr(_, x), Op::Incr(_, y)) => x == y,
        (Op::Append(..), Op::Append(..)) | (Op::Delete(_), Op::Delete(_)) => true,
        _ => false,
    }
}

fn item_of<'a>(op: &Op<'a>) -> (&'a str, &'a [u8]) {
    match *op {
        Op::Add(k, v, _) | Op::Lease(k, v, _) | Op::Append(k, v) | Op::Cas(k, v, _, _) => (k, v),
        Op::Get(k) | Op::Delete(k) | Op::Incr(k, _) => (k, &[]),
    }
}

pub(crate) fn check_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> Result<()> {
    for k in keys {
        if !crate::key::is_valid_key(k) {
            return Err(crate::Error::InvalidKey(k.chars().take(300).collect()));
        }
    }
    Ok(())
}
