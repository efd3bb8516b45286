//! In-process backend: thread-safe, bounded by entries and bytes, least-recently-used
//! eviction, honours forever and TTLs. The embedded default.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{check_keys, AppendOutcome, Backend, CasOutcome, Item};
use crate::error::Result;
use crate::timeout::Expiry;

/// Limits of a [`LocMem`] backend.
///
/// ```
/// use caching_core::backend::locmem::LocMemLimits;
/// let l = LocMemLimits::default();
/// assert_eq!(l.max_item_size, 1024 * 1024);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocMemLimits {
    /// Most entries kept; least recently used are evicted beyond it.
    pub max_entries: usize,
    /// Most bytes (keys + values) kept; least recently used are evicted beyond it.
    pub max_bytes: usize,
    /// Largest value stored (memcached's default: 1 MiB).
    pub max_item_size: usize,
}

impl Default for LocMemLimits {
    fn default() -> Self {
        LocMemLimits {
            max_entries: 100_000,
            max_bytes: 256 * 1024 * 1024,
            max_item_size: 1024 * 1024,
        }
    }
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    cas: u64,
    expires: Option<Instant>,
    tick: u64,
}

#[derive(Debug, Default)]
struct State {
    map: HashMap<String, Entry>,
    lru: BTreeMap<u64, String>,
    tick: u64,
    bytes: usize,
    next_cas: u64,
}

impl State {
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        let expired = match self.map.get(key) {
            None => return None,
            Some(e) => e.expires.is_some_and(|t| t <= now),
        };
        if expired {
            self.remove(key);
            return None;
        }
        self.tick += 1;
        let tick = self.tick;
        let e = self.map.get_mut(key)?;
        self.lru.remove(&e.tick);
        e.tick = tick;
        self.lru.insert(tick, key.to_string());
        Some(e)
    }

    fn remove(&mut self, key: &str) {
        if let Some(e) = self.map.remove(key) {
            self.lru.remove(&e.tick);
            self.bytes -= key.len() + e.value.len();
        }
    }

    fn store(&mut self, key: &str, value: Vec<u8>, expires: Option<Instant>) {
        self.remove(key);
        self.tick += 1;
        self.next_cas += 1;
        self.bytes += key.len() + value.len();
        self.lru.insert(self.tick, key.to_string());
        self.map.insert(
            key.to_string(),
            Entry {
                value,
                cas: self.next_cas,
                expires,
                tick: self.tick,
            },
        );
    }

    fn evict(&mut self, limits: &LocMemLimits) {
        while self.map.len() > limits.max_entries || self.bytes > limits.max_bytes {
            let Some((_, key)) = self.lru.pop_first() else {
                break;
            };
            if let Some(e) = self.map.remove(&key) {
                self.bytes -= key.len() + e.value.len();
            }
        }
    }
}

/// The in-process backend.
///
/// ```
/// use caching_core::backend::{Backend, locmem::LocMem};
/// use caching_core::Expiry;
/// let b = LocMem::new();
/// assert!(b.add("k", b"v", Expiry::Forever).unwrap());
/// assert!(!b.add("k", b"w", Expiry::Forever).unwrap());
/// assert_eq!(b.get("k").unwrap().unwrap().value, b"v");
/// ```
#[derive(Debug)]
pub struct LocMem {
    state: Mutex<State>,
    limits: LocMemLimits,
}

impl Default for LocMem {
    fn default() -> Self {
        LocMem::new()
    }
}

impl LocMem {
    /// A backend with default limits.
    pub fn new() -> Self {
        LocMem::with_limits(LocMemLimits::default())
    }

    /// A backend with the given limits.
    pub fn with_limits(limits: LocMemLimits) -> Self {
        LocMem {
            state: Mutex::new(State::default()),
            limits,
        }
    }

    /// Number of live and not yet collected entries.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether the backend holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held (keys and values).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters more than losing the cache, so recover the state instead of propagating.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expires(expiry: Expiry, now: Instant) -> Option<Instant> {
        expiry
            .as_duration()
            .map(|d| now + d.min(Duration::from_secs(100 * 365 * 24 * 3600)))
    }
}

impl Backend for LocMem {
    fn name(&self) -> &'static str {
        "locmem"
    }

    fn max_item_size(&self) -> usize {
        self.limits.max_item_size
    }

    fn get_multi(&self, keys: &[&str]) -> Result<HashMap<String, Item>> {
        check_keys(keys.iter().copied())?;
        let now = Instant::now();
        let mut st = self.lock();
        let mut out = HashMap::with_capacity(keys.len());
        for k in keys {
            if let Some(e) = st.live(k, now) {
                out.insert(
                    k.to_string(),
                    Item {
                        value: e.value.clone(),
                        cas: e.cas,
                    },
                );
            }
        }
        Ok(out)
    }

    fn add_multi(&self, items: &[(&str, &[u8])], expiry: Expiry) -> Result<Vec<bool>> {
        check_keys(items.iter().map(|i| i.0))?;
        let now = Instant::now();
        let mut st = self.lock();
        let mut out = Vec::with_capacity(items.len());
        for (k, v) in items {
            if v.len() > self.limits.max_item_size || st.live(k, now).is_some() {
                out.push(false);
                continue;
            }
            st.store(k, v.to_vec(), Self::expires(expiry, now));
            out.push(true);
        }
        st.evict(&self.limits);
        Ok(out)
    }

    fn set_multi(&self, items: &[(&str, &[u8])], expiry: Expiry) -> Result<()> {
        check_keys(items.iter().map(|i| i.0))?;
        let now = Instant::now();
        let mut st = self.lock();
        for (k, v) in items {
            if v.len() > self.limits.max_item_size {
                // memcached drops the old value when a set is rejected; so do we.
                st.remove(k);
                continue;
            }
            st.store(k, v.to_vec(), Self::expires(expiry, now));
        }
        st.evict(&self.limits);
        Ok(())
    }

    fn append_multi(&self, items: &[(&str, &[u8])]) -> Result<Vec<AppendOutcome>> {
        check_keys(items.iter().map(|i| i.0))?;
        let now = Instant::now();
        let mut st = self.lock();
        let mut out = Vec::with_capacity(items.len());
        for (k, v) in items {
            let limit = self.limits.max_item_size;
            let outcome = match st.live(k, now) {
                None => AppendOutcome::Missing,
                Some(e) if e.value.len() + v.len() > limit => AppendOutcome::TooLarge,
                Some(e) => {
                    let mut value = std::mem::take(&mut e.value);
                    let expires = e.expires;
                    // `take` left the entry empty, so `store` (which uncounts the entry it
                    // replaces) would not uncount the old bytes: do it here.
                    st.bytes -= value.len();
                    value.extend_from_slice(v);
                    st.store(k, value, expires);
                    AppendOutcome::Appended
                }
            };
            out.push(outcome);
        }
        st.evict(&self.limits);
        Ok(out)
    }

    fn cas(&self, key: &str, value: &[u8], expiry: Expiry, cas: u64) -> Result<CasOutcome> {
        check_keys([key])?;
        let now = Instant::now();
        let mut st = self.lock();
        let outcome = match st.live(key, now) {
            None => CasOutcome::Missing,
            Some(e) if e.cas != cas => CasOutcome::Changed,
            Some(_) if value.len() > self.limits.max_item_size => CasOutcome::Changed,
            Some(_) => {
                st.store(key, value.to_vec(), Self::expires(expiry, now));
                CasOutcome::Stored
            }
        };
        st.evict(&self.limits);
        Ok(outcome)
    }

    fn delete_multi(&self, keys: &[&str]) -> Result<()> {
        check_keys(keys.iter().copied())?;
        let mut st = self.lock();
        for k in keys {
            st.remove(k);
        }
        Ok(())
    }

    fn incr(&self, key: &str, delta: u64) -> Result<Option<u64>> {
        check_keys([key])?;
        let now = Instant::now();
        let mut st = self.lock();
        let Some(e) = st.live(key, now) else {
            return Ok(None);
        };
        let current: u64 = std::str::from_utf8(&e.value)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| crate::Error::NotANumber {
                key: key.to_string(),
            })?;
        let next = current.wrapping_add(delta);
        let expires = e.expires;
        st.store(key, next.to_string().into_bytes(), expires);
        Ok(Some(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_beyond_entry_limit() {
        let b = LocMem::with_limits(LocMemLimits {
            max_entries: 2,
            ..Default::default()
        });
        b.set("a", b"1", Expiry::Forever).unwrap();
        b.set("b", b"2", Expiry::Forever).unwrap();
        b.get("a").unwrap();
        b.set("c", b"3", Expiry::Forever).unwrap();
        assert!(b.get("a").unwrap().is_some());
        assert!(b.get("b").unwrap().is_none());
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn evicts_beyond_byte_limit() {
        let b = LocMem::with_limits(LocMemLimits {
            max_bytes: 100,
            ..Default::default()
        });
        for i in 0..10 {
            b.set(&format!("k{i}"), &[0u8; 30], Expiry::Forever)
                .unwrap();
        }
        assert!(b.bytes() <= 100);
        assert!(b.get("k9").unwrap().is_some());
    }

    #[test]
    fn appends_keep_the_byte_count_exact() {
        let b = LocMem::new();
        b.set("list", b"ab", Expiry::Forever).unwrap();
        for _ in 0..3 {
            b.append_multi(&[("list", b"cd")]).unwrap();
        }
        assert_eq!(b.bytes(), "list".len() + "abcdcdcd".len());
    }
}
