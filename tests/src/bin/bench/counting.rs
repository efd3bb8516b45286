//! A backend wrapper that counts round trips: every call of a [`Backend`] method that talks
//! to the server (everything but `name` and `max_item_size`) is one round trip, since every
//! multi-key method is one round trip per server and the bench runs one server per backend.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use caching_core::{AppendOutcome, Backend, CasOutcome, Expiry, Item, Op, OpReply};

/// `inner`, with a count of the calls made through it.
#[derive(Debug)]
pub struct Counting {
    inner: Arc<dyn Backend>,
    calls: Arc<AtomicU64>,
}

impl Counting {
    /// Wraps `inner`; `calls` counts every round trip.
    pub fn new(inner: Arc<dyn Backend>, calls: Arc<AtomicU64>) -> Self {
        Counting { inner, calls }
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

impl Backend for Counting {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn max_item_size(&self) -> usize {
        self.inner.max_item_size()
    }

    fn get_multi(&self, keys: &[&str]) -> caching_core::Result<HashMap<String, Item>> {
        self.count();
        self.inner.get_multi(keys)
    }

    fn add_multi(
        &self,
        items: &[(&str, &[u8])],
        expiry: Expiry,
    ) -> caching_core::Result<Vec<bool>> {
        self.count();
        self.inner.add_multi(items, expiry)
    }

    fn set_multi(&self, items: &[(&str, &[u8])], expiry: Expiry) -> caching_core::Result<()> {
        self.count();
        self.inner.set_multi(items, expiry)
    }

    fn append_multi(&self, items: &[(&str, &[u8])]) -> caching_core::Result<Vec<AppendOutcome>> {
        self.count();
        self.inner.append_multi(items)
    }

    fn cas(
        &self,
        key: &str,
        value: &[u8],
        expiry: Expiry,
        cas: u64,
    ) -> caching_core::Result<CasOutcome> {
        self.count();
        self.inner.cas(key, value, expiry, cas)
    }

    fn cas_multi(
        &self,
        items: &[(&str, &[u8], u64)],
        expiry: Expiry,
    ) -> caching_core::Result<Vec<CasOutcome>> {
        self.count();
        self.inner.cas_multi(items, expiry)
    }

    fn delete_multi(&self, keys: &[&str]) -> caching_core::Result<()> {
        self.count();
        self.inner.delete_multi(keys)
    }

    fn incr(&self, key: &str, delta: u64) -> caching_core::Result<Option<u64>> {
        self.count();
        self.inner.incr(key, delta)
    }

    fn incr_multi(
        &self,
        keys: &[&str],
        delta: u64,
    ) -> caching_core::Result<Vec<caching_core::Result<Option<u64>>>> {
        self.count();
        self.inner.incr_multi(keys, delta)
    }

    /// One round trip: every backend the bench measures runs a batch on one server.
    fn batch(&self, stages: &[&[Op<'_>]]) -> caching_core::Result<Vec<Vec<OpReply>>> {
        self.count();
        self.inner.batch(stages)
    }

    fn probe(&self) -> caching_core::Result<()> {
        self.count();
        self.inner.probe()
    }

    fn get(&self, key: &str) -> caching_core::Result<Option<Item>> {
        self.count();
        self.inner.get(key)
    }

    fn add(&self, key: &str, value: &[u8], expiry: Expiry) -> caching_core::Result<bool> {
        self.count();
        self.inner.add(key, value, expiry)
    }

    fn set(&self, key: &str, value: &[u8], expiry: Expiry) -> caching_core::Result<()> {
        self.count();
        self.inner.set(key, value, expiry)
    }

    fn delete(&self, key: &str) -> caching_core::Result<()> {
        self.count();
        self.inner.delete(key)
    }
}
