//! What `#[cached_method]` expands to: the cache a method reads through, its key, and the
//! call. See [`cached_method`](crate::cached_method) for the attribute itself.

use caching_core::{Cache, FlushTarget, Timeout};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::connection::CachedConnection;
use crate::key::CacheConnection;
use crate::model::CachedModel;

/// Where a `#[cached_method]` finds its cache: the argument after `&self`, a [`Cache`] or a
/// [`CachedConnection`] (its default cache), by reference or not.
///
/// ```
/// use caching_diesel::{Cache, CacheSource};
/// let cache = Cache::locmem();
/// assert!(CacheSource::source_cache(&&cache).same_cache(&cache));
/// ```
pub trait CacheSource {
    /// The cache (a cheap handle: clones share the backend).
    fn source_cache(&self) -> Cache;
}

impl CacheSource for Cache {
    fn source_cache(&self) -> Cache {
        self.clone()
    }
}

impl<C: CacheConnection> CacheSource for CachedConnection<C> {
    fn source_cache(&self) -> Cache {
        self.cache().clone()
    }
}

impl<T: CacheSource + ?Sized> CacheSource for &T {
    fn source_cache(&self) -> Cache {
        (**self).source_cache()
    }
}

impl<T: CacheSource + ?Sized> CacheSource for &mut T {
    fn source_cache(&self) -> Cache {
        (**self).source_cache()
    }
}

/// One argument of a cached method, serialized for its key.
#[doc(hidden)]
pub struct KeyArg(Option<serde_json::Value>);

impl KeyArg {
    pub fn new<T: Serialize + ?Sized>(value: &T) -> Self {
        KeyArg(serde_json::to_value(value).ok())
    }
}

/// The key of a method's value for one object: model, method and arguments (the object is
/// added by the flush list it is tied to). `None` when an argument does not serialize (then
/// the method just runs).
#[doc(hidden)]
pub fn method_key<M: CachedModel>(method: &str, args: &[KeyArg]) -> Option<String> {
    let args: Option<Vec<&serde_json::Value>> = args.iter().map(|a| a.0.as_ref()).collect();
    let Some(args) = args else {
        tracing::warn!(
            model = M::TABLE,
            method,
            "an argument of a cached method did not serialize; running it uncached"
        );
        return None;
    };
    let args = serde_json::to_string(&args).ok()?;
    Some(format!("method:{}:{method}:{args}", M::TABLE))
}

/// A cached method returning a value.
#[doc(hidden)]
pub fn cached_method<M, T, F>(
    cache: &Cache,
    model: &M,
    key: Option<String>,
    timeout: Timeout,
    f: F,
) -> T
where
    M: FlushTarget,
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> T,
{
    match key {
        Some(key) => cache.cached_with(model, &key, timeout, f),
        None => f(),
    }
}

/// A cached method returning a `Result`: only `Ok` values are cached.
#[doc(hidden)]
pub fn try_cached_method<M, T, E, F>(
    cache: &Cache,
    model: &M,
    key: Option<String>,
    timeout: Timeout,
    f: F,
) -> Result<T, E>
where
    M: FlushTarget,
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Result<T, E>,
{
    match key {
        Some(key) => cache.try_cached_with_all([model], &key, timeout, f),
        None => f(),
    }
}
