//! What `#[cached_method]` expands to: the cache a method reads through, its key, and the
//! call. See [`cached_method`](crate::cached_method) for the attribute itself.
//!
//! A method's value is one cached read: keyed by the method's path, the object's content and
//! the arguments; registered on the object's flush list; over the object's table plus the
//! tables the attribute declares (`tables = [..]`), whose writes all make it miss (their write
//! generations are recorded, as for a count). Read through a `CachedConnection`, it follows
//! the connection's transaction rules: bypassed after the transaction wrote one of those
//! tables, never filled inside a transaction.

use caching_core::{Cache, FlushTarget, ReadPlan, Registrations, Timeout};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::connection::CachedConnection;
use crate::key::CacheConnection;
use crate::model::CachedModel;

/// How a cache source lets a read use the cache, given the tables it reads.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceMode {
    /// Read and fill.
    Normal,
    /// Serve hits, do not fill (inside a transaction).
    NoFill(&'static str),
    /// Do not use the cache (the transaction wrote one of the tables).
    Bypass(&'static str),
}

/// Where a `#[cached_method]` finds its cache: the argument after `&self`, a [`Cache`] or a
/// [`CachedConnection`] (its default cache, and its transaction state), by reference or not.
///
/// ```
/// use caching_diesel::{Cache, CacheSource};
/// let cache = Cache::locmem();
/// assert!(CacheSource::source_cache(&&cache).same_cache(&cache));
/// ```
pub trait CacheSource {
    /// The cache (a cheap handle: clones share the backend).
    fn source_cache(&self) -> Cache;

    /// Whether a read over `tables` may use the cache now (a connection inside a
    /// transaction says no fill, or no cache at all after writing one of them).
    #[doc(hidden)]
    fn source_mode(&self, tables: &[&str]) -> SourceMode {
        let _ = tables;
        SourceMode::Normal
    }
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

    fn source_mode(&self, tables: &[&str]) -> SourceMode {
        if self.must_bypass(tables) {
            SourceMode::Bypass("transaction sees its own writes")
        } else if self.in_transaction() {
            SourceMode::NoFill("inside a transaction")
        } else {
            SourceMode::Normal
        }
    }
}

impl<T: CacheSource + ?Sized> CacheSource for &T {
    fn source_cache(&self) -> Cache {
        (**self).source_cache()
    }
    fn source_mode(&self, tables: &[&str]) -> SourceMode {
        (**self).source_mode(tables)
    }
}

impl<T: CacheSource + ?Sized> CacheSource for &mut T {
    fn source_cache(&self) -> Cache {
        (**self).source_cache()
    }
    fn source_mode(&self, tables: &[&str]) -> SourceMode {
        (**self).source_mode(tables)
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

/// One call of a cached method, prepared before its body runs (which may borrow the source
/// mutably).
#[doc(hidden)]
pub struct MethodCall {
    cache: Cache,
    mode: SourceMode,
    key: Option<String>,
    tables: Vec<String>,
    declared: &'static [&'static str],
    flush: Option<(String, String)>,
    timeout: Timeout,
}

impl MethodCall {
    /// `path` names the method uniquely (the generated code passes the type name of a
    /// function item declared inside it); `declared` are the tables the body reads besides
    /// the object's.
    pub fn new<M: CachedModel + FlushTarget>(
        source: &impl CacheSource,
        object: &M,
        path: &str,
        args: &[KeyArg],
        declared: &'static [&'static str],
        timeout: Timeout,
    ) -> Self {
        let cache = source.source_cache();
        let mut tables = object.tables();
        for t in declared {
            if !tables.iter().any(|x| x == t) {
                tables.push((*t).to_string());
            }
        }
        let refs: Vec<&str> = tables.iter().map(String::as_str).collect();
        let mode = source.source_mode(&refs);
        let key = method_key(object, path, args).map(|k| cache.keys().manual_key(&k));
        let flush = object.flush_key(cache.keys()).map(|f| {
            let version = cache.keys().version_key(M::TABLE);
            (f, version)
        });
        MethodCall {
            cache,
            mode,
            key,
            tables,
            declared,
            flush,
            timeout,
        }
    }

    /// Runs `f` through the cache (only `Ok` values are stored); any reason not to use the
    /// cache (an argument that does not serialize, a target without a flush list, a
    /// transaction that wrote a table read) just runs it.
    pub fn run<T, E>(self, f: impl FnOnce() -> Result<T, E>) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
    {
        let (Some(key), Some((flush, version))) = (self.key, self.flush) else {
            return f();
        };
        let tables: Vec<&str> = self.tables.iter().map(String::as_str).collect();
        let mut plan = ReadPlan::new(&key, &tables)
            .guard(self.declared)
            .timeout(self.timeout);
        match self.mode {
            SourceMode::Normal => {}
            SourceMode::NoFill(why) => plan = plan.no_fill(why),
            SourceMode::Bypass(why) => plan = plan.bypass(why),
        }
        let register = |_: &T, regs: &mut Registrations| {
            regs.on_list(flush, version, &key);
            Ok(())
        };
        self.cache.read_through(&plan, f, register).map(|(v, _)| v)
    }
}

/// The key of a method's value: the method's path, the model's fingerprint, a hash of the
/// object as serialized (a value is never computed from one version of a row and served for
/// another) and the arguments. `None` when the object or an argument does not serialize
/// (then the method just runs).
fn method_key<M: CachedModel>(object: &M, path: &str, args: &[KeyArg]) -> Option<String> {
    let args: Option<Vec<&serde_json::Value>> = args.iter().map(|a| a.0.as_ref()).collect();
    let (Some(args), Ok(me)) = (args, serde_json::to_vec(object)) else {
        tracing::warn!(
            model = M::TABLE,
            method = path,
            "the object or an argument of a cached method did not serialize; running it uncached"
        );
        return None;
    };
    let args = serde_json::to_vec(&args).ok()?;
    let mut h = blake3::Hasher::new();
    for part in [path.as_bytes(), M::FINGERPRINT.as_bytes(), &me, &args] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    Some(format!("method:{}:{}", M::TABLE, h.finalize().to_hex()))
}

/// A cached method returning a value.
#[doc(hidden)]
pub fn cached_method<T, F>(call: MethodCall, f: F) -> T
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> T,
{
    match call.run(|| Ok::<T, std::convert::Infallible>(f())) {
        Ok(v) => v,
        Err(never) => match never {},
    }
}

/// A cached method returning a `Result`: only `Ok` values are cached.
#[doc(hidden)]
pub fn try_cached_method<T, E, F>(call: MethodCall, f: F) -> Result<T, E>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Result<T, E>,
{
    call.run(f)
}
