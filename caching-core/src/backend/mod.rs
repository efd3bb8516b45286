//! The storage a cache talks to, and its implementations.
//!
//! The trait holds exactly what the read, fill and invalidation paths need (see
//! `docs/src/protocol.md`): a multi-get that returns CAS tokens, add-only and CAS stores,
//! batched set / append / delete, and counters. Every method that takes several keys is one
//! round trip per server.

use std::collections::HashMap;
use std::fmt::Debug;

use crate::error::Result;
use crate::timeout::Expiry;

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

    /// Reads several keys at once; missing keys are absent from the map.
    fn get_multi(&self, keys: &[&str]) -> Result<HashMap<String, Item>>;

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

pub(crate) fn check_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> Result<()> {
    for k in keys {
        if !crate::key::is_valid_key(k) {
            return Err(crate::Error::InvalidKey(k.chars().take(300).collect()));
        }
    }
    Ok(())
}
