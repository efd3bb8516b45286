//! Which caches a connection reads and invalidates: a default cache and optional named ones,
//! set once per process (like Django settings) or per connection.
//!
//! Reads and writes of a model must reach the same cache. A connection therefore carries its
//! whole [`CacheSet`]: a query may read through any cache of the set, and every write
//! invalidates in every cache of the set, so a read through one cache and a write that
//! invalidates another cannot happen by accident.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use caching_core::Cache;

use crate::error::Error;

/// The caches of a connection: one default, any number of named ones.
///
/// ```
/// use caching_diesel::{Cache, CacheSet};
/// let set = CacheSet::new(Cache::locmem()).with("sessions", Cache::locmem());
/// assert!(set.get(Some("sessions")).is_ok());
/// assert!(set.get(Some("nope")).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct CacheSet {
    default: Cache,
    named: Arc<BTreeMap<String, Cache>>,
}

impl CacheSet {
    /// A set with only a default cache.
    pub fn new(default: Cache) -> Self {
        CacheSet {
            default,
            named: Arc::new(BTreeMap::new()),
        }
    }

    /// Adds a named cache (queries choose it with `.cached().cache("name")`).
    pub fn with(mut self, name: impl Into<String>, cache: Cache) -> Self {
        Arc::make_mut(&mut self.named).insert(name.into(), cache);
        self
    }

    /// The default cache.
    pub fn default_cache(&self) -> &Cache {
        &self.default
    }

    /// The named cache, or the default for `None`.
    pub fn get(&self, name: Option<&str>) -> Result<&Cache, Error> {
        match name {
            None => Ok(&self.default),
            Some(n) => self
                .named
                .get(n)
                .ok_or_else(|| Error::UnknownCache(n.to_string())),
        }
    }

    /// Every distinct cache of the set (writes invalidate in each).
    pub fn all(&self) -> Vec<&Cache> {
        let mut out: Vec<&Cache> = vec![&self.default];
        for c in self.named.values() {
            if !out.iter().any(|o| o.same_cache(c)) {
                out.push(c);
            }
        }
        out
    }
}

static PROCESS: OnceLock<CacheSet> = OnceLock::new();

/// Sets the process's caches, once, at start-up. Connections made with
/// [`CachedConnection::new`](crate::CachedConnection::new) use them.
///
/// ```
/// use caching_diesel::{install, Cache, CacheSet};
/// install(CacheSet::new(Cache::locmem())).unwrap();
/// assert!(install(CacheSet::new(Cache::locmem())).is_err());
/// ```
pub fn install(caches: CacheSet) -> Result<(), Error> {
    PROCESS.set(caches).map_err(|_| Error::AlreadyInstalled)
}

/// The process's caches: those given to [`install`], else built once from `CACHE_URL`
/// (`locmem://` when unset). An invalid `CACHE_URL` is an error here, never a silent
/// fallback (a per-process cache would not see other processes' invalidations).
pub fn process_caches() -> Result<CacheSet, Error> {
    if let Some(set) = PROCESS.get() {
        return Ok(set.clone());
    }
    let set = CacheSet::new(Cache::from_env()?);
    Ok(PROCESS.get_or_init(|| set).clone())
}
