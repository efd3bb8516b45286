//! The cache handle: configuration, backend, key space, stats and the queue of undelivered
//! invalidations behind one cheap clone. The paths built on it live in their own modules:
//! `read` (look up, fill, read through), `invalidate`
//! (the write path), `delivery` (retrying what a failing backend could not
//! take), `envelope` (what an entry holds) and `hooks`.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::locmem::LocMem;
use crate::backend::Backend;
use crate::config::{CacheBuilder, CacheConfig};
use crate::delivery::Delivery;
use crate::error::{ConfigError, Error, Result};
use crate::hooks::StepHook;
use crate::key::KeySpace;
use crate::lease::Flights;
use crate::servers::ServerWatch;
use crate::stats::{Counter, Stats, StatsSnapshot};
use crate::timeout::{Expiry, Timeout};

pub(crate) struct Inner {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) config: CacheConfig,
    pub(crate) keys: KeySpace,
    pub(crate) stats: Stats,
    pub(crate) hook: Option<Arc<dyn StepHook>>,
    pub(crate) delivery: Delivery,
    pub(crate) flights: Arc<Flights>,
    pub(crate) servers: ServerWatch,
    pub(crate) guard_memo: crate::guards::GuardMemo,
}

/// A cache: cheap to clone, `Send + Sync`; clones share backend, stats and the queue of
/// undelivered invalidations.
///
/// ```
/// use caching_core::{Cache, Timeout};
/// let cache = Cache::locmem();
/// let mut calls = 0;
/// let v: u32 = cache.cached("answer", Timeout::Forever, || { calls += 1; 42 });
/// let w: u32 = cache.cached("answer", Timeout::Forever, || { calls += 1; 0 });
/// assert_eq!((v, w, calls), (42, 42, 1));
/// ```
#[derive(Clone)]
pub struct Cache {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("backend", &self.inner.backend.name())
            .field("config", &self.inner.config)
            .field("pending_invalidations", &self.pending_invalidations())
            .finish()
    }
}

impl Cache {
    /// A builder.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::new()
    }

    /// A cache on a fresh in-process backend with the default configuration.
    pub fn locmem() -> Cache {
        Cache::from_parts(
            Arc::new(LocMem::new()),
            CacheConfig::default(),
            KeySpace::new("").expect("empty prefix is valid"),
        )
    }

    /// A cache from a URL (`locmem://...`, `memcached://host:port,...?prefix=...`); see
    /// [`config`](crate::config) for the parameters.
    ///
    /// ```
    /// let c = caching_core::Cache::from_url("locmem://?prefix=app&count_timeout=5").unwrap();
    /// assert_eq!(c.config().prefix, "app");
    /// assert!(caching_core::Cache::from_url("memcached://127.0.0.1:notaport").is_err());
    /// ```
    pub fn from_url(url: &str) -> Result<Cache> {
        Ok(crate::config::parse_url(url)?.build()?)
    }

    /// A cache from the `CACHE_URL` environment variable; `locmem://` when unset (said once
    /// per process at `info`).
    pub fn from_env() -> Result<Cache> {
        match std::env::var("CACHE_URL") {
            Ok(url) => Cache::from_url(&url),
            Err(std::env::VarError::NotPresent) => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    tracing::info!(
                        "CACHE_URL is unset: using an in-process cache (locmem://); set CACHE_URL=memcached://host:port to share one"
                    )
                });
                Cache::from_url("locmem://")
            }
            Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::Url {
                url: "<CACHE_URL>".into(),
                reason: "not valid unicode".into(),
            }
            .into()),
        }
    }

    pub(crate) fn from_parts(
        backend: Arc<dyn Backend>,
        config: CacheConfig,
        keys: KeySpace,
    ) -> Cache {
        Cache::assemble(backend, config, keys, None)
    }

    pub(crate) fn assemble(
        backend: Arc<dyn Backend>,
        config: CacheConfig,
        keys: KeySpace,
        hook: Option<Arc<dyn StepHook>>,
    ) -> Cache {
        Cache {
            inner: Arc::new(Inner {
                backend,
                config,
                keys,
                stats: Stats::default(),
                hook,
                delivery: Delivery::default(),
                flights: Arc::default(),
                servers: ServerWatch::default(),
                guard_memo: Default::default(),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// The key space (prefix and key builders).
    pub fn keys(&self) -> &KeySpace {
        &self.inner.keys
    }

    /// The backend.
    pub fn backend(&self) -> &dyn Backend {
        &*self.inner.backend
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Whether two handles share one backend and key space (reads through one are
    /// invalidated by writes through the other).
    pub fn same_cache(&self, other: &Cache) -> bool {
        Arc::ptr_eq(&self.inner.backend, &other.inner.backend)
            && self.inner.keys == other.inner.keys
    }

    /// Invalidations this cache could not deliver yet (the backend failed when they were
    /// made); a background thread retries them until the backend answers. While any is
    /// pending, reads of the tables it touches bypass the cache.
    ///
    /// ```
    /// let cache = caching_core::Cache::locmem();
    /// assert_eq!(cache.pending_invalidations(), 0);
    /// ```
    pub fn pending_invalidations(&self) -> usize {
        self.inner.delivery.len()
    }

    /// Waits until every queued invalidation is delivered, at most `timeout`; returns whether
    /// none is left. For graceful shutdown (deliver before exiting) and for tests.
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache = caching_core::Cache::locmem();
    /// assert!(cache.wait_for_delivery(Duration::from_millis(10)));
    /// ```
    pub fn wait_for_delivery(&self, timeout: Duration) -> bool {
        self.inner.delivery.wait_idle(Instant::now() + timeout)
    }

    /// Resolves a requested timeout against the configuration (default, then the cap).
    ///
    /// ```
    /// use caching_core::{Cache, Expiry, Timeout};
    /// let cache = Cache::locmem();
    /// assert_eq!(cache.expiry(Timeout::Forever), Expiry::Forever);
    /// ```
    pub fn expiry(&self, t: Timeout) -> Expiry {
        let cfg = &self.inner.config;
        let base = match t {
            Timeout::Default => cfg.default_timeout,
            other => other,
        };
        let e = match base {
            Timeout::Forever | Timeout::Default => Expiry::Forever,
            Timeout::After(d) => Expiry::from_duration(d),
        };
        match cfg.max_timeout {
            Some(cap) => e.min(Expiry::from_duration(cap)),
            None => e,
        }
    }

    /// Counts a backend error and logs it; callers then fall back to the database.
    pub(crate) fn record_backend_error(&self, op: &'static str, err: &Error) {
        self.inner.stats.inc(Counter::BackendErrors);
        tracing::warn!(op, error = %err, "cache backend error; falling back to the database");
    }
}
