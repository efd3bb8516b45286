//! Configuration: the builder and `CACHE_URL` parsing.
//!
//! URL forms (every parameter optional):
//!
//! ```text
//! locmem://?prefix=app&max_entries=100000&max_bytes=268435456&item_size=1048576
//! memcached://127.0.0.1:11211,127.0.0.1:11212?prefix=app&connect_timeout_ms=250&io_timeout_ms=500&op_timeout_ms=2000&pool_size=16&retry_after_ms=1000
//! redis://127.0.0.1:6379/0?prefix=app&connect_timeout_ms=250&io_timeout_ms=500&pool_size=16&retry_after_ms=1000&item_size=1048576&client_name=app
//! ```
//!
//! A memcached host without a port gets 11211 ([`DEFAULT_MEMCACHED_PORT`]); a trailing `/`
//! after the hosts is ignored. A Redis URL names one host (port 6379 by default,
//! [`DEFAULT_REDIS_PORT`]), optionally a database number (`/2`) and credentials
//! (`redis://user:password@host`, `redis://:password@host`; taken literally, so the password
//! cannot contain `@`, `/` or `?`; error messages show it as `***`).
//!
//! Parameters for every scheme:
//!
//! | parameter | meaning | default |
//! |---|---|---|
//! | `prefix` | prepended to every key, `[A-Za-z0-9_.:-]`, ≤ 64 bytes | empty |
//! | `timeout` | default timeout in seconds, or `forever` | `forever` |
//! | `max_timeout` | cap in seconds applied even to "forever" | none |
//! | `count_timeout` | upper bound in seconds on how long a count lives (`none`: no bound; counts are invalidated by writes either way) | `none` |
//! | `cache_empty_results` | `true`/`false` | `false` |
//! | `invalidate_on_create` | `precise` (alias `off`) or `whole-model` | `precise` |
//! | `replica_timeout` | seconds a fill from a replica-labelled connection lives | `60` |
//! | `eviction_safe` | `true`: a hit checks that its flush lists survived (one more round trip) | `false` |
//! | `dependencies` | `predicates`, `table` or `flush-lists` (see [`DependencyTracking`]) | `predicates` |
//! | `strict_writes` | `true`: a write through a cached connection that is not made by a write helper is an error | `false` |
//! | `invalidation_wait_ms` | how long a write waits for its invalidation when the backend fails (`0`: never) | `3000` |
//! | `codec` | how values are stored: `postcard` (compact binary; a type it cannot carry is stored as JSON) or `json` (see [`CodecKind`]) | `postcard` |
//! | `lease_wait_ms` | stampede protection: how long a reader that missed waits for another reader's fill of the same entry before reading the database (`0`: off) | `200` |

use std::sync::Arc;
use std::time::Duration;

use crate::backend::locmem::{LocMem, LocMemLimits};
use crate::backend::Backend;
use crate::codec::CodecKind;
use crate::error::ConfigError;
use crate::key::KeySpace;
use crate::timeout::{Timeout, MAX_TIMEOUT};
use crate::Cache;

/// What creating a row invalidates (the seed's `CACHE_INVALIDATE_ON_CREATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InvalidateOnCreate {
    /// Exactly the queries the new row can enter: those whose equality conditions match
    /// the row's values (predicate dependencies), those with no usable condition on the
    /// table, and the lists of the row's foreign-key targets. (URL value `precise`, or `off`
    /// for compatibility with django-cache-machine's setting.)
    #[default]
    Precise,
    /// Every cached query of the model (bumps its table version).
    WholeModel,
}

/// What a cached read registers on, that is, which writes invalidate it.
///
/// ```
/// use caching_core::{Cache, DependencyTracking};
/// let cache = Cache::builder().locmem().dependency_tracking(DependencyTracking::TableLevel).build().unwrap();
/// assert_eq!(cache.config().dependencies, DependencyTracking::TableLevel);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DependencyTracking {
    /// Flush lists of the rows a result contains, plus, per table it reads, the predicate
    /// lists of its most selective equality condition, or the table's write generation when
    /// it has none: a read misses exactly when a write changes, removes or adds one of its
    /// rows (or, without a usable condition, writes its table). URL value `predicates`.
    #[default]
    Predicates,
    /// Every write to a table invalidates every read of it (django-cachalot's model): always
    /// complete, cheaper to register, more misses under writes. URL value `table`.
    TableLevel,
    /// Flush lists only: django-cache-machine's model. A row that *enters* a result (an
    /// update into a filter, an insert under `Precise`) does not invalidate it, so reads can
    /// stay stale until they expire. For comparisons and benchmarks; do not use it where a
    /// stale read matters. URL value `flush-lists`.
    FlushListsOnly,
}

/// Settings of a [`Cache`], mirroring django-cache-machine's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Key prefix (seed: `CACHE_PREFIX`).
    pub prefix: String,
    /// Timeout used when a caller asks for [`Timeout::Default`]. Never `Default` itself.
    pub default_timeout: Timeout,
    /// Cap applied to every stored value, even "forever" ones: a safety net for writes that
    /// bypass the library.
    pub max_timeout: Option<Duration>,
    /// An upper bound on how long a count lives (seed: `CACHE_COUNT_TIMEOUT`). Counts depend
    /// on their tables and conditions like any read and are invalidated by the writes that
    /// change them; `None` (the default): no bound beyond that.
    pub count_timeout: Option<Duration>,
    /// Whether empty results are cached (seed: `CACHE_EMPTY_QUERYSETS`).
    pub cache_empty_results: bool,
    /// What a create invalidates (seed: `CACHE_INVALIDATE_ON_CREATE`).
    pub invalidate_on_create: InvalidateOnCreate,
    /// Timeout of fills read from a connection labelled as a replica (bounds replica lag).
    pub replica_timeout: Duration,
    /// Eviction-safe mode: every flush list carries an epoch, entries record the epochs of
    /// the lists they are registered on, and a hit first checks that those lists still exist
    /// with the same epoch (a list evicted, or evicted and re-created, makes the entry miss).
    /// Costs a second round trip per hit. Off by default.
    pub eviction_safe: bool,
    /// What reads register on, so which writes invalidate them (default: predicate
    /// dependencies, see [`DependencyTracking`]).
    pub dependencies: DependencyTracking,
    /// Strict writes: a write statement run on a cached connection outside the write helpers
    /// (plain Diesel, raw SQL) is refused with an error instead of being invalidated at table
    /// level with a warning. Writes through the wrapped connection itself cannot be refused;
    /// they are still invalidated and logged at `error`. Off by default.
    pub strict_writes: bool,
    /// How long a write waits for its invalidation to be delivered when the backend fails
    /// (stalled, restarting, marked down): the invalidation is retried meanwhile, so a stall
    /// shorter than this never lets another process read the old row after the write
    /// returned. Once an outage has lasted longer than this, writes stop waiting (their
    /// invalidations are still queued and delivered later). Zero: never wait.
    pub invalidation_wait: Duration,
    /// Stampede protection: after a miss, one reader per entry reads the database and fills
    /// it (it holds the entry's lease: the fill's pending marker, stored before the read);
    /// the others, in this process and in others, wait up to this long for that fill, then
    /// read the database themselves. Hits never wait. Zero turns it off: every reader that
    /// misses reads the database. Default 200 ms.
    pub lease_wait: Duration,
    /// How values are encoded (default: postcard, see [`CodecKind`]). Its id is part of every
    /// query key.
    pub codec: CodecKind,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            prefix: String::new(),
            default_timeout: Timeout::Forever,
            max_timeout: None,
            count_timeout: None,
            cache_empty_results: false,
            invalidate_on_create: InvalidateOnCreate::Precise,
            replica_timeout: Duration::from_secs(60),
            eviction_safe: false,
            dependencies: DependencyTracking::Predicates,
            strict_writes: false,
            invalidation_wait: Duration::from_secs(3),
            lease_wait: Duration::from_millis(200),
            codec: CodecKind::Postcard,
        }
    }
}

/// Builds a [`Cache`]; validates everything at [`build`](CacheBuilder::build).
///
/// ```
/// use caching_core::{Cache, Timeout};
/// use std::time::Duration;
/// let cache = Cache::builder()
///     .locmem()
///     .prefix("app")
///     .count_timeout(Some(Duration::from_secs(5)))
///     .build()
///     .unwrap();
/// assert_eq!(cache.config().prefix, "app");
/// assert!(Cache::builder().prefix("has space").build().is_err());
/// ```
#[derive(Debug, Default)]
pub struct CacheBuilder {
    backend: Option<Arc<dyn Backend>>,
    config: CacheConfig,
}

impl CacheBuilder {
    /// A builder with the default configuration and no backend (locmem if none is set).
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses a fresh in-process backend with default limits.
    pub fn locmem(self) -> Self {
        self.backend(LocMem::new())
    }

    /// Uses a memcached backend over `servers` (`host:port`).
    #[cfg(feature = "memcached")]
    pub fn memcached<S: AsRef<str>>(
        self,
        servers: &[S],
        options: crate::backend::memcached::MemcachedOptions,
    ) -> Result<Self, crate::Error> {
        Ok(self.backend(crate::backend::memcached::Memcached::new(servers, options)?))
    }

    /// Uses a Redis backend on `server`: `host[:port]` or
    /// `redis://[[user]:password@]host[:port][/db]` (see
    /// [`Redis::new`](crate::backend::redis::Redis::new)).
    ///
    /// ```
    /// use caching_core::backend::redis::RedisOptions;
    /// use caching_core::Cache;
    /// let cache = Cache::builder()
    ///     .redis("127.0.0.1:6379", RedisOptions::default())
    ///     .unwrap()
    ///     .prefix("app")
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(cache.backend().name(), "redis");
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis(
        self,
        server: &str,
        options: crate::backend::redis::RedisOptions,
    ) -> Result<Self, crate::Error> {
        Ok(self.backend(crate::backend::redis::Redis::new(server, options)?))
    }

    /// Uses `backend`.
    pub fn backend(self, backend: impl Backend) -> Self {
        self.shared_backend(Arc::new(backend))
    }

    /// Uses a backend shared with other caches (for example two prefixes on one server).
    pub fn shared_backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.prefix = prefix.into();
        self
    }

    /// Sets the default timeout (`Timeout::Default` here means forever).
    pub fn default_timeout(mut self, t: Timeout) -> Self {
        self.config.default_timeout = t;
        self
    }

    /// Sets the maximum timeout, applied even to "forever".
    pub fn max_timeout(mut self, t: Option<Duration>) -> Self {
        self.config.max_timeout = t;
        self
    }

    /// Sets the count timeout (`None`: counts are not cached).
    pub fn count_timeout(mut self, t: Option<Duration>) -> Self {
        self.config.count_timeout = t;
        self
    }

    /// Caches empty results too.
    pub fn cache_empty_results(mut self, yes: bool) -> Self {
        self.config.cache_empty_results = yes;
        self
    }

    /// Sets what a create invalidates.
    pub fn invalidate_on_create(mut self, v: InvalidateOnCreate) -> Self {
        self.config.invalidate_on_create = v;
        self
    }

    /// Sets the timeout of fills read from a replica.
    pub fn replica_timeout(mut self, t: Duration) -> Self {
        self.config.replica_timeout = t;
        self
    }

    /// Sets how long a write waits for an invalidation the backend failed to take (see
    /// [`CacheConfig::invalidation_wait`]).
    pub fn invalidation_wait(mut self, wait: Duration) -> Self {
        self.config.invalidation_wait = wait;
        self
    }

    /// Sets what reads register on (see [`DependencyTracking`]).
    pub fn dependency_tracking(mut self, tracking: DependencyTracking) -> Self {
        self.config.dependencies = tracking;
        self
    }

    /// Turns strict writes on or off (see [`CacheConfig::strict_writes`]).
    pub fn strict_writes(mut self, yes: bool) -> Self {
        self.config.strict_writes = yes;
        self
    }

    /// How long a reader that missed waits for another reader's fill of the same entry
    /// (see [`CacheConfig::lease_wait`]); zero turns stampede protection off.
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache = caching_core::Cache::builder().locmem().lease_wait(Duration::ZERO).build().unwrap();
    /// assert!(cache.config().lease_wait.is_zero());
    /// ```
    pub fn lease_wait(mut self, wait: Duration) -> Self {
        self.config.lease_wait = wait;
        self
    }

    /// The codec values are stored with (see [`CacheConfig::codec`]).
    ///
    /// ```
    /// use caching_core::codec::CodecKind;
    /// let cache = caching_core::Cache::builder().locmem().codec(CodecKind::Json).build().unwrap();
    /// assert_eq!(cache.config().codec, CodecKind::Json);
    /// ```
    pub fn codec(mut self, codec: CodecKind) -> Self {
        self.config.codec = codec;
        self
    }

    /// Turns the eviction-safe mode on or off (see [`CacheConfig::eviction_safe`]).
    pub fn eviction_safe(mut self, yes: bool) -> Self {
        self.config.eviction_safe = yes;
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: CacheConfig) -> Self {
        self.config = config;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<Cache, ConfigError> {
        let mut config = self.config;
        let keys = KeySpace::new(&config.prefix)?;
        if config.default_timeout == Timeout::Default {
            config.default_timeout = Timeout::Forever;
        }
        config.default_timeout.validate()?;
        for d in [
            config.max_timeout,
            config.count_timeout,
            Some(config.replica_timeout),
        ]
        .into_iter()
        .flatten()
        {
            Timeout::After(d).validate()?;
        }
        let backend = self.backend.unwrap_or_else(|| Arc::new(LocMem::new()));
        Ok(Cache::from_parts(backend, config, keys))
    }
}

fn param_err(name: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Parameter {
        name,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn parse_secs(name: &'static str, v: &str) -> Result<Duration, ConfigError> {
    let n: u64 = v
        .parse()
        .map_err(|_| param_err(name, v, "expected a whole number of seconds"))?;
    let d = Duration::from_secs(n);
    // Name the parameter: "timeout 0ns is out of range" alone does not say which one.
    Timeout::After(d).validate().map_err(|_| {
        let max = MAX_TIMEOUT.as_secs();
        param_err(
            name,
            v,
            &format!("out of range (1 to {max} seconds, ten years)"),
        )
    })?;
    Ok(d)
}

fn parse_usize(name: &'static str, v: &str) -> Result<usize, ConfigError> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(param_err(name, v, "expected a positive whole number")),
    }
}

fn parse_bool(name: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(param_err(name, v, "expected true or false")),
    }
}

/// The port a `memcached://` host without one gets.
pub const DEFAULT_MEMCACHED_PORT: u16 = 11211;

/// The port a `redis://` host without one gets.
pub const DEFAULT_REDIS_PORT: u16 = 6379;

/// The URL schemes this build supports, for error messages.
pub(crate) fn supported_schemes() -> &'static str {
    match (cfg!(feature = "memcached"), cfg!(feature = "redis")) {
        (true, true) => "locmem://, memcached:// or redis://",
        (true, false) => "locmem:// or memcached://",
        (false, true) => "locmem:// or redis://",
        (false, false) => "locmem://",
    }
}

/// `url` with the credentials of its authority (`user:password@`) replaced by `***`, for
/// error messages and logs.
pub(crate) fn redact_credentials(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let sep = if url.contains("://") { "://" } else { "" };
            format!("{scheme}{sep}***{}", &rest[at..])
        }
        None => url.to_string(),
    }
}

/// Connection parameters of the server backends (`memcached://`, `redis://`), which share
/// their names.
#[derive(Debug, Default)]
struct ServerParams {
    connect_timeout: Option<Duration>,
    io_timeout: Option<Duration>,
    op_timeout: Option<Duration>,
    pool_size: Option<usize>,
    retry_after: Option<Duration>,
    /// `redis://` only.
    client_name: Option<String>,
}

impl ServerParams {
    fn any(&self) -> bool {
        self.connect_timeout.is_some()
            || self.io_timeout.is_some()
            || self.op_timeout.is_some()
            || self.pool_size.is_some()
            || self.retry_after.is_some()
            || self.client_name.is_some()
    }
}

fn parse_ms(name: &'static str, v: &str) -> Result<Duration, ConfigError> {
    Ok(Duration::from_millis(parse_usize(name, v)? as u64))
}

/// Parses a cache URL into a builder. See the module docs for the parameters.
pub(crate) fn parse_url(url: &str) -> Result<CacheBuilder, crate::Error> {
    let bad = |reason: &str| ConfigError::Url {
        url: redact_credentials(url),
        reason: reason.to_string(),
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("whitespace or control characters").into());
    }
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected scheme://..."))?;
    let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
    // `memcached://host:11211/` and `locmem:///` are common spellings: a trailing `/` is
    // not part of the host list.
    let hosts = hosts.trim_end_matches('/');
    let mut b = CacheBuilder::new();
    let mut limits = LocMemLimits::default();
    let mut server = ServerParams::default();
    let mut item_size = None;
    let mut locmem_params = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| bad("parameters must be name=value"))?;
        match k {
            "prefix" => {
                KeySpace::new(v)?;
                b = b.prefix(v);
            }
            "timeout" => {
                b = b.default_timeout(if v == "forever" {
                    Timeout::Forever
                } else {
                    Timeout::After(parse_secs("timeout", v)?)
                })
            }
            "max_timeout" => b = b.max_timeout(Some(parse_secs("max_timeout", v)?)),
            "count_timeout" => {
                b = b.count_timeout(if v == "none" {
                    None
                } else {
                    Some(parse_secs("count_timeout", v)?)
                })
            }
            "cache_empty_results" => {
                b = b.cache_empty_results(parse_bool("cache_empty_results", v)?)
            }
            "invalidate_on_create" => {
                b = b.invalidate_on_create(match v {
                    "whole-model" => InvalidateOnCreate::WholeModel,
                    "precise" | "off" => InvalidateOnCreate::Precise,
                    _ => {
                        return Err(param_err(
                            "invalidate_on_create",
                            v,
                            "expected precise, off or whole-model",
                        )
                        .into())
                    }
                })
            }
            "eviction_safe" => b = b.eviction_safe(parse_bool("eviction_safe", v)?),
            "strict_writes" => b = b.strict_writes(parse_bool("strict_writes", v)?),
            "dependencies" => {
                b = b.dependency_tracking(match v {
                    "predicates" => DependencyTracking::Predicates,
                    "table" => DependencyTracking::TableLevel,
                    "flush-lists" => DependencyTracking::FlushListsOnly,
                    _ => {
                        return Err(param_err(
                            "dependencies",
                            v,
                            "expected predicates, table or flush-lists",
                        )
                        .into())
                    }
                })
            }
            "invalidation_wait_ms" => {
                let ms: u64 = v.parse().ok().filter(|ms| *ms <= 600_000).ok_or_else(|| {
                    param_err(
                        "invalidation_wait_ms",
                        v,
                        "expected milliseconds from 0 to 600000",
                    )
                })?;
                b = b.invalidation_wait(Duration::from_millis(ms))
            }
            "codec" => {
                b = b.codec(
                    CodecKind::from_name(v)
                        .ok_or_else(|| param_err("codec", v, "expected postcard or json"))?,
                )
            }
            "lease_wait_ms" => {
                let ms: u64 = v.parse().ok().filter(|ms| *ms <= 60_000).ok_or_else(|| {
                    param_err("lease_wait_ms", v, "expected milliseconds from 0 to 60000")
                })?;
                b = b.lease_wait(Duration::from_millis(ms))
            }
            "replica_timeout" => b = b.replica_timeout(parse_secs("replica_timeout", v)?),
            "max_entries" => {
                locmem_params = true;
                limits.max_entries = parse_usize("max_entries", v)?
            }
            "max_bytes" => {
                locmem_params = true;
                limits.max_bytes = parse_usize("max_bytes", v)?
            }
            // locmem:// and redis:// (memcached asks its servers).
            "item_size" => item_size = Some(parse_usize("item_size", v)?),
            "connect_timeout_ms" => {
                server.connect_timeout = Some(parse_ms("connect_timeout_ms", v)?)
            }
            "io_timeout_ms" => server.io_timeout = Some(parse_ms("io_timeout_ms", v)?),
            "op_timeout_ms" => server.op_timeout = Some(parse_ms("op_timeout_ms", v)?),
            "pool_size" => server.pool_size = Some(parse_usize("pool_size", v)?),
            "retry_after_ms" => server.retry_after = Some(parse_ms("retry_after_ms", v)?),
            "client_name" => {
                if v.is_empty() || !v.chars().all(|c| c.is_ascii_graphic()) {
                    return Err(param_err(
                        "client_name",
                        v,
                        "expected printable ASCII without spaces",
                    )
                    .into());
                }
                server.client_name = Some(v.to_string())
            }
            other => return Err(ConfigError::UnknownParameter(other.to_string()).into()),
        }
    }
    match scheme {
        "locmem" => {
            if !hosts.is_empty() {
                return Err(bad("locmem:// takes no host").into());
            }
            if server.any() {
                return Err(bad("server parameters given to locmem://").into());
            }
            if let Some(n) = item_size {
                limits.max_item_size = n;
            }
            Ok(b.backend(LocMem::with_limits(limits)))
        }
        #[cfg(feature = "memcached")]
        "memcached" => {
            if locmem_params || item_size.is_some() {
                return Err(bad("locmem parameters given to memcached://").into());
            }
            if server.client_name.is_some() {
                return Err(bad("client_name is a redis:// parameter").into());
            }
            let defaults = crate::backend::memcached::MemcachedOptions::default();
            let mc = crate::backend::memcached::MemcachedOptions {
                connect_timeout: server.connect_timeout.unwrap_or(defaults.connect_timeout),
                io_timeout: server.io_timeout.unwrap_or(defaults.io_timeout),
                op_timeout: server.op_timeout.unwrap_or(defaults.op_timeout),
                pool_size: server.pool_size.unwrap_or(defaults.pool_size),
                retry_after: server.retry_after.unwrap_or(defaults.retry_after),
            };
            // A host without a port gets memcached's default, 11211.
            let servers: Vec<String> = hosts
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| {
                    let bare_v6 = s.starts_with('[') && s.ends_with(']');
                    if bare_v6 || !s.contains(':') {
                        format!("{s}:{DEFAULT_MEMCACHED_PORT}")
                    } else {
                        s.to_string()
                    }
                })
                .collect();
            if servers.is_empty() {
                return Err(bad("memcached:// needs at least one host or host:port").into());
            }
            for s in &servers {
                let ok = s
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                if !ok {
                    return Err(bad(&format!("{s:?} is not host or host:port")).into());
                }
            }
            let servers: Vec<&str> = servers.iter().map(String::as_str).collect();
            b.memcached(&servers, mc)
        }
        #[cfg(feature = "redis")]
        "redis" => {
            if locmem_params {
                return Err(bad("locmem parameters given to redis://").into());
            }
            if server.op_timeout.is_some() {
                return Err(bad(
                    "op_timeout_ms is not supported by redis:// (each read or write is bounded by io_timeout_ms)",
                )
                .into());
            }
            let defaults = crate::backend::redis::RedisOptions::default();
            let options = crate::backend::redis::RedisOptions {
                connect_timeout: server.connect_timeout.unwrap_or(defaults.connect_timeout),
                io_timeout: server.io_timeout.unwrap_or(defaults.io_timeout),
                pool_size: server.pool_size.unwrap_or(defaults.pool_size),
                retry_after: server.retry_after.unwrap_or(defaults.retry_after),
                item_size: item_size.unwrap_or(defaults.item_size),
                client_name: server.client_name,
                ..defaults
            };
            // `hosts` still holds any credentials and `/db`: Redis::new parses them.
            b.redis(&format!("redis://{hosts}"), options)
        }
        other => {
            let _ = (&server, item_size, locmem_params);
            match other {
                "memcached" | "redis" => Err(ConfigError::FeatureDisabled {
                    scheme: other.to_string(),
                }
                .into()),
                _ => Err(ConfigError::Scheme(other.to_string()).into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "memcached")]
    #[test]
    fn memcached_hosts_default_their_port_and_ignore_a_trailing_slash() {
        for url in [
            "memcached://127.0.0.1",
            "memcached://127.0.0.1/",
            "memcached://127.0.0.1:11211/?prefix=a",
            "memcached://[::1]",
        ] {
            assert!(parse_url(url).is_ok(), "{url}");
        }
        assert!(parse_url("memcached://127.0.0.1:notaport").is_err());
        assert!(parse_url("memcached:///").is_err());
        assert!(parse_url("locmem:///").is_ok());
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_urls_parse_into_a_redis_backend() {
        for url in [
            "redis://127.0.0.1",
            "redis://127.0.0.1:6379/",
            "redis://127.0.0.1:6379/2?prefix=a&item_size=4096&pool_size=2&client_name=app",
            "redis://:secret@[::1]:6380/1?connect_timeout_ms=100&io_timeout_ms=100&retry_after_ms=10",
        ] {
            let cache = parse_url(url)
                .unwrap_or_else(|e| panic!("{url}: {e}"))
                .build()
                .unwrap();
            assert_eq!(cache.backend().name(), "redis", "{url}");
        }
        let cache = parse_url("redis://127.0.0.1/2?item_size=4096")
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(cache.backend().max_item_size(), 4096);
        for (url, needle) in [
            ("redis://", "no host"),
            ("redis://a:1,b:2", "one host"),
            ("redis://h:0", "host:port"),
            ("redis://h/x", "database"),
            ("redis://h?op_timeout_ms=5", "op_timeout_ms"),
            ("redis://h?max_entries=5", "locmem parameters"),
            ("redis://user@h", "password"),
        ] {
            let err = parse_url(url)
                .err()
                .unwrap_or_else(|| panic!("{url} parsed"))
                .to_string();
            assert!(err.contains(needle), "{url}: {err}");
        }
        // A password never appears in an error.
        let err = parse_url("redis://user:hunter2@h:x")
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains("hunter2") && err.contains("***"), "{err}");
    }

    #[cfg(not(feature = "redis"))]
    #[test]
    fn redis_urls_name_the_missing_feature() {
        let err = parse_url("redis://127.0.0.1").err().unwrap().to_string();
        assert!(err.contains("`redis` cargo feature"), "{err}");
    }

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(
            redact_credentials("redis://u:p@h:1/2?prefix=a@b"),
            "redis://***@h:1/2?prefix=a@b"
        );
        assert_eq!(redact_credentials("redis://h:1"), "redis://h:1");
        assert_eq!(
            redact_credentials("locmem://?prefix=a@b"),
            "locmem://?prefix=a@b"
        );
    }

    #[test]
    fn parses_every_parameter() {
        let c = parse_url("locmem://?prefix=a&timeout=60&max_timeout=3600&count_timeout=5&cache_empty_results=true&invalidate_on_create=whole-model&replica_timeout=9&max_entries=10")
            .unwrap()
            .build()
            .unwrap();
        let cfg = c.config();
        assert_eq!(cfg.prefix, "a");
        assert_eq!(cfg.default_timeout, Timeout::After(Duration::from_secs(60)));
        assert_eq!(cfg.max_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(cfg.count_timeout, Some(Duration::from_secs(5)));
        assert!(cfg.cache_empty_results);
        assert_eq!(cfg.invalidate_on_create, InvalidateOnCreate::WholeModel);
        assert_eq!(cfg.replica_timeout, Duration::from_secs(9));
    }

    #[test]
    fn rejects_bad_urls_with_clear_errors() {
        for (url, needle) in [
            ("", "scheme"),
            ("redis2://x", "unsupported"),
            ("locmem://?prefix=a b", "whitespace"),
            ("locmem://?prefix=a%20b", "prefix"),
            ("locmem://?timeout=0", "out of range"),
            ("locmem://?timeout=-1", "seconds"),
            ("locmem://?nope=1", "unknown"),
            ("locmem://?count_timeout=99999999999", "out of range"),
            ("memcached://", "host:port"),
            ("memcached://localhost:x", "host:port"),
            ("memcached://h:0", "host:port"),
            ("locmem://?pool_size=2", "server parameters"),
            ("locmem://?client_name=x", "server parameters"),
            ("locmem://?client_name=é", "printable"),
            ("locmem://?max_entries=0", "positive"),
            ("locmem://?invalidate_on_create=sometimes", "whole-model"),
        ] {
            let err = parse_url(url)
                .err()
                .unwrap_or_else(|| panic!("{url} parsed"))
                .to_string();
            assert!(err.contains(needle), "{url}: {err}");
        }
    }
}
