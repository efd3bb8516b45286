//! Shared support for the integration suites of Cache Machine for Diesel.
//!
//! The suites talk to real servers. A test that needs a server it cannot find fails under
//! `CI=true` and otherwise says that it skipped, on the real standard error (libtest captures
//! `eprintln!`, so a passing test's skip notice would be invisible):
//!
//! - [`require_env`] / [`memcached_url`] / `redis_url`: the skip-or-fail rule for environment
//!   variables naming servers (`MEMCACHED_URL`, `REDIS_URL`, `PG_DATABASE_URL`,
//!   `MYSQL_DATABASE_URL`, ...).
//! - [`unique_prefix`]: a key prefix unique per test and per run, so parallel tests (and
//!   successive runs) on one memcached never see each other's keys.
//! - [`each_backend`] / [`each_cache`]: run one test body against every available backend
//!   (locmem always, memcached when `MEMCACHED_URL` is set, Redis when `REDIS_URL` is set and
//!   the `redis` feature is on).
//! - [`MemcachedProcess`]: a private memcached on a free loopback port that a test can kill
//!   and restart (the "server went away" cases), pause and resume (a stalled server), or
//!   start with its own arguments (a small server that evicts).
//! - `RedisProcess` (feature `redis`): the same for a private `redis-server`;
//!   `redis_connection`, `redis_ttl`: a direct client for what the backend does not show
//!   (TTLs, foreign values, `CLIENT KILL`).
//! - [`RecordingBackend`]: a real backend wrapped to record every key it is sent.
//! - [`memcached_ttl`]: asks memcached for the remaining lifetime of an item (meta protocol),
//!   to check what expiry actually reached the server; [`memcached_expiry`] reads it with the
//!   server's clock, for expiries sent as unix times (memcached's clock may lag the wall
//!   clock).
//! - [`query_key`], [`fill_query`], [`is_hit`], [`QueryFlushTarget`]: the read path of a
//!   query without a database, as `caching-diesel` drives it (look up, miss, fill with
//!   flush-list registrations).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use caching_core::backend::locmem::LocMem;
use caching_core::backend::memcached::{Memcached, MemcachedOptions};
#[cfg(feature = "redis")]
use caching_core::backend::redis::{Redis, RedisOptions};
use caching_core::{
    AppendOutcome, Backend, Cache, CacheBuilder, CasOutcome, Expiry, FillOutcome, FlushTarget,
    Item, KeySpace, QueryKeyBuilder, Registrations,
};

/// Whether the suite runs under CI (`CI=true`, as set by GitHub Actions and most CI systems),
/// where a missing server is a failure rather than a skip.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Writes a skip notice straight to the process's standard error, where a person sees it even
/// when the test passes (libtest only captures `print!`/`eprint!`).
pub fn report_skip(message: &str) {
    let _ = writeln!(std::io::stderr(), "skipped: {message}");
}

/// The value of environment variable `var`, needed by test `test`.
///
/// Unset (or empty): under `CI=true` this panics ("`var` must be set under CI=true");
/// otherwise it writes `skipped: set VAR to run TEST` to the real standard error and returns
/// `None`, and the caller skips (or narrows) the test.
pub fn require_env(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().to_string()),
        _ => {
            if under_ci() {
                panic!("{var} must be set under CI=true (needed by {test})");
            }
            report_skip(&format!("set {var} to run {test}"));
            None
        }
    }
}

/// `MEMCACHED_URL` (for example `memcached://127.0.0.1:11211`), by the rule of
/// [`require_env`]: panics under `CI=true` when unset, otherwise reports the skip of `test`
/// and returns `None`.
pub fn memcached_url(test: &str) -> Option<String> {
    require_env("MEMCACHED_URL", test)
}

/// The `host:port` list of a `memcached://host:port,host:port?params` URL. Query
/// parameters are ignored: the suites choose their own options.
///
/// # Panics
/// If the URL is not a `memcached://` URL with at least one host.
pub fn memcached_servers(url: &str) -> Vec<String> {
    let rest = url
        .strip_prefix("memcached://")
        .unwrap_or_else(|| panic!("MEMCACHED_URL {url:?} must start with memcached://"));
    let hosts = rest.split_once('?').map_or(rest, |(h, _)| h);
    let servers: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    assert!(
        !servers.is_empty(),
        "MEMCACHED_URL {url:?} names no host:port"
    );
    servers
}

/// A key prefix unique to this test, this process and this call: the test name (reduced to
/// `[A-Za-z0-9_.-]`), the process id, a process-wide counter and the current time. Valid for
/// [`KeySpace`](caching_core::KeySpace) (at most 64 bytes of `[A-Za-z0-9_.:-]`), so tests
/// running in parallel on one memcached, and successive runs, never share a key.
///
/// ```
/// let a = caching_tests::unique_prefix("some test");
/// let b = caching_tests::unique_prefix("some test");
/// assert_ne!(a, b);
/// assert!(caching_core::KeySpace::new(&a).is_ok());
/// ```
pub fn unique_prefix(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tail = format!(
        "-{}-{}-{}",
        std::process::id(),
        n,
        base36(nanos % 36u128.pow(10))
    );
    let budget = caching_core::key::MAX_PREFIX_LEN - tail.len();
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(budget)
        .collect();
    format!("{name}{tail}")
}

fn base36(mut n: u128) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii digits")
}

/// Connection options for the suites' memcached backends: the defaults, except a short retry
/// window so a test that stops a server does not wait long for it to be tried again.
pub fn test_memcached_options() -> MemcachedOptions {
    MemcachedOptions {
        retry_after: Duration::from_millis(100),
        ..MemcachedOptions::default()
    }
}

/// Every backend available to test `test`, by name: a fresh `locmem` always, `memcached`
/// (a new client on the servers of `MEMCACHED_URL`) when that variable is set, and, with the
/// `redis` feature, `redis` (a new client on `REDIS_URL`) when that one is set. A variable
/// that is not set reports the skip of its half (or, under `CI=true`, fails the test).
///
/// Backends on a shared server hold other tests' keys: combine with [`unique_prefix`].
pub fn each_backend(test: &str) -> Vec<(&'static str, Arc<dyn Backend>)> {
    let mut out: Vec<(&'static str, Arc<dyn Backend>)> = vec![("locmem", Arc::new(LocMem::new()))];
    if let Some(url) = memcached_url(&format!("{test} on memcached")) {
        let mc = Memcached::new(&memcached_servers(&url), test_memcached_options())
            .unwrap_or_else(|e| panic!("MEMCACHED_URL {url:?}: {e}"));
        out.push(("memcached", Arc::new(mc)));
    }
    #[cfg(feature = "redis")]
    if let Some(url) = redis_url(&format!("{test} on redis")) {
        out.push(("redis", Arc::new(test_redis(&url))));
    }
    out
}

/// `REDIS_URL` (for example `redis://127.0.0.1:6379`), by the rule of [`require_env`]: panics
/// under `CI=true` when unset, otherwise reports the skip of `test` and returns `None`.
#[cfg(feature = "redis")]
pub fn redis_url(test: &str) -> Option<String> {
    require_env("REDIS_URL", test)
}

/// Connection options for the suites' Redis backends: the defaults, except a short retry
/// window (as [`test_memcached_options`]).
#[cfg(feature = "redis")]
pub fn test_redis_options() -> RedisOptions {
    RedisOptions {
        retry_after: Duration::from_millis(100),
        ..RedisOptions::default()
    }
}

/// A Redis backend on `url` (`REDIS_URL`; its query parameters, if any, are ignored) with
/// [`test_redis_options`].
///
/// # Panics
/// If the URL is invalid.
#[cfg(feature = "redis")]
pub fn test_redis(url: &str) -> Redis {
    let server = url.split_once('?').map_or(url, |(s, _)| s);
    Redis::new(server, test_redis_options()).unwrap_or_else(|e| panic!("REDIS_URL {url:?}: {e}"))
}

/// A direct connection to the Redis at `url` (`redis://host:port[/db]`), for what the backend
/// does not show: TTLs, raw values, `CLIENT LIST` / `CLIENT KILL`. Never use it to flush: the
/// server is shared.
///
/// # Panics
/// If the server cannot be reached.
#[cfg(feature = "redis")]
pub fn redis_connection(url: &str) -> redis::Connection {
    let server = url.split_once('?').map_or(url, |(s, _)| s);
    redis::Client::open(server)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("connecting to {url:?}: {e}"))
}

/// The remaining lifetime of `key` on the Redis at `url`, in whole seconds (`TTL`): `Some(-1)`
/// for no expiry, `None` when the key is missing.
///
/// # Panics
/// If the server cannot be reached.
#[cfg(feature = "redis")]
pub fn redis_ttl(url: &str, key: &str) -> Option<i64> {
    let ttl: i64 = redis::cmd("TTL")
        .arg(key)
        .query(&mut redis_connection(url))
        .unwrap_or_else(|e| panic!("TTL {key}: {e}"));
    (ttl != -2).then_some(ttl)
}

/// One cache per backend of [`each_backend`], each with its own [`unique_prefix`], after
/// `build` adjusted the builder (timeouts, flags; it may replace the prefix). Run the test
/// body in a loop over the result, naming the backend in assertion messages.
///
/// # Panics
/// If `build` leaves an invalid configuration.
pub fn each_cache(
    test: &str,
    build: impl Fn(CacheBuilder) -> CacheBuilder,
) -> Vec<(&'static str, Cache)> {
    each_backend(test)
        .into_iter()
        .map(|(name, backend)| {
            let builder = Cache::builder()
                .shared_backend(backend)
                .prefix(unique_prefix(test));
            let cache = build(builder)
                .build()
                .unwrap_or_else(|e| panic!("{test} on {name}: {e}"));
            (name, cache)
        })
        .collect()
}

/// The flush-list tokens stored under `flush_key` (empty if the list is missing or empty).
///
/// # Panics
/// If the backend fails.
pub fn list_tokens(cache: &Cache, flush_key: &str) -> Vec<String> {
    cache
        .backend()
        .get(flush_key)
        .unwrap_or_else(|e| panic!("reading flush list {flush_key}: {e}"))
        .map(|item| {
            String::from_utf8_lossy(&item.value)
                .split(' ')
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The server (`host:port`) of the memcached at `url` that holds `key` (the client's own
/// placement, which is deterministic).
///
/// # Panics
/// If the URL is invalid.
pub fn memcached_server_of(url: &str, key: &str) -> String {
    let mc = Memcached::new(&memcached_servers(url), MemcachedOptions::default())
        .unwrap_or_else(|e| panic!("MEMCACHED_URL {url:?}: {e}"));
    mc.server_of(key).to_string()
}

/// A query key of `cache` for a query labelled `label` (distinct labels, distinct keys).
pub fn query_key(cache: &Cache, label: &str) -> String {
    let mut b = QueryKeyBuilder::new("query");
    b.part("label", label.as_bytes());
    cache.keys().query_key(&b)
}

/// The read path after a miss, as the adapter runs it: looks `key` up over `tables`
/// (asserting a miss), then fills it with `payload` and the flush-list registrations
/// `regs`, forever. Returns what the fill did.
///
/// # Panics
/// If the key is already cached or the backend fails.
pub fn fill_query(
    cache: &Cache,
    key: &str,
    tables: &[&str],
    payload: &[u8],
    regs: &Registrations,
) -> FillOutcome {
    let lookup = cache
        .lookup(key, tables)
        .unwrap_or_else(|e| panic!("lookup {key}: {e}"));
    assert!(lookup.hit.is_none(), "{key} was already cached");
    cache
        .fill(&lookup.token, payload, regs, Expiry::Forever)
        .unwrap_or_else(|e| panic!("fill {key}: {e}"))
}

/// The cached payload of `key` read over `tables`, if it is a hit.
///
/// # Panics
/// If the backend fails.
pub fn cached_payload(cache: &Cache, key: &str, tables: &[&str]) -> Option<Vec<u8>> {
    cache
        .lookup(key, tables)
        .unwrap_or_else(|e| panic!("lookup {key}: {e}"))
        .hit
}

/// Whether `key` read over `tables` is a hit.
///
/// # Panics
/// If the backend fails.
pub fn is_hit(cache: &Cache, key: &str, tables: &[&str]) -> bool {
    cached_payload(cache, key, tables).is_some()
}

/// A query as a [`FlushTarget`]: values tied to it with
/// [`Cache::cached_with`] go on the query's own flush list and die with the query's result
/// (scenario 21: a `cached_with` on a query, a template fragment around it).
#[derive(Debug, Clone)]
pub struct QueryFlushTarget {
    /// The query's key.
    pub key: String,
    /// The tables the query reads.
    pub tables: Vec<String>,
}

impl QueryFlushTarget {
    /// The query with key `key`, reading `tables`.
    pub fn new(key: &str, tables: &[&str]) -> Self {
        QueryFlushTarget {
            key: key.to_string(),
            tables: tables.iter().map(|t| t.to_string()).collect(),
        }
    }
}

impl FlushTarget for QueryFlushTarget {
    fn flush_key(&self, keys: &KeySpace) -> Option<String> {
        Some(keys.key_flush_key(&self.key))
    }

    fn tables(&self) -> Vec<String> {
        self.tables.clone()
    }
}

/// Asks the memcached server at `addr` (`host:port`) how long `key` still lives, with the
/// meta protocol's `mg KEY t`: `Some(-1)` for no expiry, `Some(seconds)` otherwise, `None`
/// when the key is missing. Needs memcached 1.6 or later.
///
/// The answer is by the server's own clock. That is exact for relative expiries (up to 30
/// days), which the server counts from its own now; an expiry over 30 days is sent as a unix
/// time computed from the client's wall clock, and memcached's clock can lag the wall clock
/// (by tens of seconds on a long-running, loaded server): check those with
/// [`memcached_expiry`] instead.
pub fn memcached_ttl(addr: &str, key: &str) -> std::io::Result<Option<i64>> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream);
    reader
        .get_mut()
        .write_all(format!("mg {key} t\r\n").as_bytes())?;
    read_mg_ttl(&mut reader, key)
}

/// Reads the answer to `mg KEY t`.
fn read_mg_ttl(reader: &mut impl BufRead, key: &str) -> std::io::Result<Option<i64>> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end();
    if line == "EN" {
        return Ok(None);
    }
    let ttl = line
        .split(' ')
        .find_map(|f| f.strip_prefix('t'))
        .and_then(|t| t.parse::<i64>().ok());
    match (line.starts_with("HD") || line.starts_with("OK"), ttl) {
        (true, Some(t)) => Ok(Some(t)),
        _ => Err(std::io::Error::other(format!(
            "unexpected answer to mg {key} t: {line:?}"
        ))),
    }
}

/// An item's remaining lifetime read together with the clock it is counted on: see
/// [`memcached_expiry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemcachedExpiry {
    /// Remaining lifetime in seconds by the server's clock (`mg KEY t`), `-1` for no expiry.
    pub ttl: i64,
    /// The server's idea of now, in unix seconds (`stats` field `time`), in the same instant.
    pub server_time: i64,
    /// The wall clock (unix seconds) right after the server answered.
    pub wall_time: i64,
}

impl MemcachedExpiry {
    /// The unix time at which the item expires, `None` for no expiry. Clock skew cancels out:
    /// for an expiry sent as a unix time (over 30 days), this is exactly the value the client
    /// sent, however far the server's clock lags the wall clock.
    pub fn expires_at(&self) -> Option<i64> {
        (self.ttl >= 0).then_some(self.server_time + self.ttl)
    }

    /// How many seconds the server's clock is behind the wall clock (negative: ahead), to
    /// within a second.
    pub fn clock_lag(&self) -> i64 {
        self.wall_time - self.server_time
    }
}

/// Like [`memcached_ttl`], together with the server's clock: `mg KEY t` and `stats` are sent
/// in one write and answered back to back, from the same reading of the server's clock (or
/// one tick apart). `None` when the key is missing.
///
/// memcached counts lifetimes on its own clock, which can lag the wall clock by tens of
/// seconds on a long-running, loaded server, while a client sends an expiry over 30 days as a
/// unix time from its wall clock. A check of such an expiry compares
/// [`expires_at`](MemcachedExpiry::expires_at) (the server's now plus the remaining
/// lifetime: the skew cancels) with the wall clock at the store plus the timeout.
///
/// ```no_run
/// # let (addr, key) = ("127.0.0.1:11211", "app:q:1");
/// let stored = caching_tests::unix_time(); // just before storing with a 40-day timeout
/// // ... store ...
/// let stored_by = caching_tests::unix_time();
/// let e = caching_tests::memcached_expiry(addr, key).unwrap().expect("still there");
/// let want = 40 * 24 * 3600;
/// assert!((stored + want..=stored_by + want + 1).contains(&e.expires_at().unwrap()));
/// ```
pub fn memcached_expiry(addr: &str, key: &str) -> std::io::Result<Option<MemcachedExpiry>> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream);
    reader
        .get_mut()
        .write_all(format!("mg {key} t\r\nstats\r\n").as_bytes())?;
    let ttl = read_mg_ttl(&mut reader, key)?;
    let mut server_time = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("connection closed during stats"));
        }
        let line = line.trim_end();
        if line == "END" {
            break;
        }
        if let Some(t) = line.strip_prefix("STAT time ") {
            server_time = t.parse::<i64>().ok();
        } else if !line.starts_with("STAT ") {
            return Err(std::io::Error::other(format!(
                "unexpected answer to stats: {line:?}"
            )));
        }
    }
    let wall_time = unix_time();
    let server_time = server_time.ok_or_else(|| std::io::Error::other("stats reported no time"))?;
    Ok(ttl.map(|ttl| MemcachedExpiry {
        ttl,
        server_time,
        wall_time,
    }))
}

/// The wall clock in whole unix seconds (as a client computes an absolute expiry).
pub fn unix_time() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A real backend that records every key it is sent (reads and writes), so a test can check
/// what reached the server, and counts the calls that reach it (round trips, for a backend
/// on one server: every method, a whole [`Backend::batch`] included, is one). Calls go
/// straight through to the wrapped backend.
#[derive(Debug)]
pub struct RecordingBackend {
    inner: Arc<dyn Backend>,
    keys: Mutex<Vec<String>>,
    calls: std::sync::atomic::AtomicUsize,
}

impl RecordingBackend {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        RecordingBackend {
            inner,
            keys: Mutex::new(Vec::new()),
            calls: Default::default(),
        }
    }

    /// Calls made so far (each one round trip to a single server).
    pub fn round_trips(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every key sent so far, in order (with repeats).
    pub fn keys(&self) -> Vec<String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().extend(keys.into_iter().map(str::to_string));
    }
}

impl Backend for RecordingBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn max_item_size(&self) -> usize {
        self.inner.max_item_size()
    }

    fn get_multi(&self, keys: &[&str]) -> caching_core::Result<HashMap<String, Item>> {
        self.record(keys.iter().copied());
        self.inner.get_multi(keys)
    }

    fn add_multi(
        &self,
        items: &[(&str, &[u8])],
        expiry: Expiry,
    ) -> caching_core::Result<Vec<bool>> {
        self.record(items.iter().map(|i| i.0));
        self.inner.add_multi(items, expiry)
    }

    fn set_multi(&self, items: &[(&str, &[u8])], expiry: Expiry) -> caching_core::Result<()> {
        self.record(items.iter().map(|i| i.0));
        self.inner.set_multi(items, expiry)
    }

    fn append_multi(&self, items: &[(&str, &[u8])]) -> caching_core::Result<Vec<AppendOutcome>> {
        self.record(items.iter().map(|i| i.0));
        self.inner.append_multi(items)
    }

    fn cas(
        &self,
        key: &str,
        value: &[u8],
        expiry: Expiry,
        cas: u64,
    ) -> caching_core::Result<CasOutcome> {
        self.record([key]);
        self.inner.cas(key, value, expiry, cas)
    }

    fn delete_multi(&self, keys: &[&str]) -> caching_core::Result<()> {
        self.record(keys.iter().copied());
        self.inner.delete_multi(keys)
    }

    fn incr(&self, key: &str, delta: u64) -> caching_core::Result<Option<u64>> {
        self.record([key]);
        self.inner.incr(key, delta)
    }

    fn incr_multi(
        &self,
        keys: &[&str],
        delta: u64,
    ) -> caching_core::Result<Vec<caching_core::Result<Option<u64>>>> {
        self.record(keys.iter().copied());
        self.inner.incr_multi(keys, delta)
    }

    fn cas_multi(
        &self,
        items: &[(&str, &[u8], u64)],
        expiry: Expiry,
    ) -> caching_core::Result<Vec<CasOutcome>> {
        self.record(items.iter().map(|i| i.0));
        self.inner.cas_multi(items, expiry)
    }

    fn batch(
        &self,
        stages: &[&[caching_core::Op<'_>]],
    ) -> caching_core::Result<Vec<Vec<caching_core::OpReply>>> {
        self.record(stages.iter().flat_map(|ops| ops.iter().map(|o| o.key())));
        self.inner.batch(stages)
    }
}

/// A network backend whose non-blocking calls yield to the runtime once before they run
/// (feature `async`): every await of the async read and invalidation paths is then a real
/// suspension point, whatever the machine's load (on loopback a reply can be there before it
/// is asked for, and a whole exchange complete in one poll). Cancellation tests drop futures
/// at each of them. Everything else goes straight through to the wrapped backend.
#[cfg(feature = "async")]
#[derive(Debug)]
pub struct YieldingBackend(pub Arc<dyn Backend>);

#[cfg(feature = "async")]
impl Backend for YieldingBackend {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn max_item_size(&self) -> usize {
        self.0.max_item_size()
    }
    fn may_block(&self) -> bool {
        self.0.may_block()
    }
    fn get_multi(&self, keys: &[&str]) -> caching_core::Result<HashMap<String, Item>> {
        self.0.get_multi(keys)
    }
    fn get_multi_async<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> Option<caching_core::backend::AsyncGets<'a>> {
        let inner = self.0.get_multi_async(keys)?;
        Some(Box::pin(async move {
            tokio::task::yield_now().await;
            inner.await
        }))
    }
    fn batch_async<'a>(
        &'a self,
        stages: &'a [&'a [caching_core::Op<'a>]],
    ) -> Option<caching_core::backend::AsyncBatch<'a>> {
        let inner = self.0.batch_async(stages)?;
        Some(Box::pin(async move {
            tokio::task::yield_now().await;
            inner.await
        }))
    }
    fn add_multi(
        &self,
        items: &[(&str, &[u8])],
        expiry: Expiry,
    ) -> caching_core::Result<Vec<bool>> {
        self.0.add_multi(items, expiry)
    }
    fn set_multi(&self, items: &[(&str, &[u8])], expiry: Expiry) -> caching_core::Result<()> {
        self.0.set_multi(items, expiry)
    }
    fn append_multi(&self, items: &[(&str, &[u8])]) -> caching_core::Result<Vec<AppendOutcome>> {
        self.0.append_multi(items)
    }
    fn cas(
        &self,
        key: &str,
        value: &[u8],
        expiry: Expiry,
        cas: u64,
    ) -> caching_core::Result<CasOutcome> {
        self.0.cas(key, value, expiry, cas)
    }
    fn cas_multi(
        &self,
        items: &[(&str, &[u8], u64)],
        expiry: Expiry,
    ) -> caching_core::Result<Vec<CasOutcome>> {
        self.0.cas_multi(items, expiry)
    }
    fn delete_multi(&self, keys: &[&str]) -> caching_core::Result<()> {
        self.0.delete_multi(keys)
    }
    fn incr(&self, key: &str, delta: u64) -> caching_core::Result<Option<u64>> {
        self.0.incr(key, delta)
    }
    fn incr_multi(
        &self,
        keys: &[&str],
        delta: u64,
    ) -> caching_core::Result<Vec<caching_core::Result<Option<u64>>>> {
        self.0.incr_multi(keys, delta)
    }
    fn batch(
        &self,
        stages: &[&[caching_core::Op<'_>]],
    ) -> caching_core::Result<Vec<Vec<caching_core::OpReply>>> {
        self.0.batch(stages)
    }
    fn probe(&self) -> caching_core::Result<()> {
        self.0.probe()
    }
    fn server_count(&self) -> usize {
        self.0.server_count()
    }
    fn connections_opened(&self) -> u64 {
        self.0.connections_opened()
    }
    fn get_on_server(&self, server: usize, key: &str) -> caching_core::Result<Option<Item>> {
        self.0.get_on_server(server, key)
    }
    fn set_on_server(&self, server: usize, key: &str, value: &[u8]) -> caching_core::Result<()> {
        self.0.set_on_server(server, key, value)
    }
}

/// Finds an executable named `name` on `PATH`, as `which` does.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(p: &Path) -> bool {
    p.is_file()
}

/// A private memcached server on a free loopback port, for tests (and the stress harness)
/// that inject faults: kill and restart the server ([`kill`](Self::kill),
/// [`restart`](Self::restart)), or freeze it with SIGSTOP ([`pause`](Self::pause),
/// [`resume`](Self::resume): connections stay open, requests hang, like a stalled server).
///
/// Started as `memcached -u root -l 127.0.0.1 -p PORT -U 0 -m 64` followed by the extra
/// arguments of [`start_with_args`](Self::start_with_args), which override the defaults
/// (memcached keeps the last value of a repeated flag), for example `-m 1 -I 512k` for a small
/// server that evicts. `-u root` lets it run when the tests run as root; it is ignored
/// otherwise. Dropping it resumes a paused server and kills it.
#[derive(Debug)]
pub struct MemcachedProcess {
    binary: PathBuf,
    port: u16,
    extra_args: Vec<String>,
    child: Option<Child>,
    /// Whether the server is stopped by [`pause`](Self::pause).
    paused: std::sync::atomic::AtomicBool,
}

/// Whether every thread of process `pid` is stopped (SIGSTOP), from procfs; `None` when
/// procfs cannot tell.
fn all_threads_stopped(pid: u32) -> Option<bool> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in tasks {
        let status = std::fs::read_to_string(task.ok()?.path().join("status")).ok()?;
        let state = status.lines().find(|l| l.starts_with("State:"))?;
        if !state.contains("stopped") {
            return Some(false);
        }
    }
    Some(true)
}

impl MemcachedProcess {
    /// How long a starting server may take to accept connections.
    const START_WAIT: Duration = Duration::from_secs(10);

    /// Starts a server for test `test` and waits until it accepts connections. Without a
    /// `memcached` binary on `PATH`: panics under `CI=true`, otherwise reports the skip and
    /// returns `None`.
    ///
    /// # Panics
    /// If the server does not start.
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with_args(test, &[])
    }

    /// Like [`start`](Self::start), with `args` appended to the default command line (and
    /// kept across restarts): `&["-m", "1", "-I", "512k"]` starts a 1 MB server with 512 KiB
    /// items, which evicts under a modest load.
    ///
    /// # Panics
    /// If the server does not start (for example, memcached rejects `args`).
    pub fn start_with_args(test: &str, args: &[&str]) -> Option<Self> {
        let Some(binary) = find_on_path("memcached") else {
            if under_ci() {
                panic!("a memcached binary must be on PATH under CI=true (needed by {test})");
            }
            report_skip(&format!("install memcached (on PATH) to run {test}"));
            return None;
        };
        let mut p = MemcachedProcess {
            binary,
            port: 0,
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
            paused: std::sync::atomic::AtomicBool::new(false),
        };
        start_on_a_free_port("memcached", |port| {
            p.port = port;
            p.spawn()
        });
        Some(p)
    }

    /// The port the server listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `memcached://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("memcached://{}", self.addr())
    }

    /// Whether the server process is running (started and not killed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server is paused (stopped with SIGSTOP and not resumed yet).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Freezes the server (SIGSTOP): it keeps its port and its connections, and the kernel
    /// still accepts new ones, but nothing is answered until [`resume`](Self::resume). Takes
    /// `&self`, so another thread can resume it while this one waits on the server.
    ///
    /// Fails if the server is not running or the signal cannot be sent.
    pub fn pause(&self) -> std::io::Result<()> {
        self.signal("STOP")?;
        self.paused.store(true, Ordering::SeqCst);
        // The signal is delivered asynchronously: a thread of the server may still answer
        // a request sent right after `kill` returned. Wait until the kernel says stopped.
        if let Some(pid) = self.pid() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && !all_threads_stopped(pid).unwrap_or(true) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    }

    /// Lets a [paused](Self::pause) server run again (SIGCONT); it then answers what queued
    /// up meanwhile. Harmless on a server that is not paused.
    ///
    /// Fails if the server is not running or the signal cannot be sent.
    pub fn resume(&self) -> std::io::Result<()> {
        self.signal("CONT")?;
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Sends `SIG{name}` to the server with `kill(1)` (no libc binding: the workspace forbids
    /// unsafe code).
    fn signal(&self, name: &str) -> std::io::Result<()> {
        let pid = self.pid().ok_or_else(|| {
            std::io::Error::other(format!(
                "SIG{name}: memcached on port {} is not running",
                self.port
            ))
        })?;
        let status = Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .stdin(Stdio::null())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "kill -{name} {pid} exited with {status}"
            )))
        }
    }

    /// Kills the server (SIGKILL, which also ends a paused one) and waits for it to exit; its
    /// port then refuses connections.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Kills the server if it runs, then starts a fresh one (empty) on the same port and waits
    /// until it accepts connections.
    ///
    /// # Panics
    /// If the server does not start again.
    pub fn restart(&mut self) {
        if let Err(e) = self.try_restart() {
            panic!("{e}");
        }
    }

    /// Like [`restart`](Self::restart), returning the failure instead of panicking.
    pub fn try_restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn()
    }

    /// Starts the server on `self.port` and waits until it accepts connections.
    fn spawn(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Self::START_WAIT;
        let port = self.port.to_string();
        let mut child = Command::new(&self.binary)
            .args([
                "-u",
                "root",
                "-l",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "0",
                "-m",
                "64",
            ])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.binary.display()))?;
        loop {
            if TcpStream::connect(self.addr()).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut s, &mut err);
                }
                return Err(format!(
                    "memcached on port {port} exited with {status}: {err}"
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "memcached on port {port} did not accept connections within {:?}",
                    Self::START_WAIT
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for MemcachedProcess {
    fn drop(&mut self) {
        if self.is_paused() {
            // Never leave a stopped process behind, even if the kill below failed.
            let _ = self.resume();
        }
        self.kill();
    }
}

/// A private Redis server on a free loopback port, for tests that kill and restart it (the
/// "server went away" cases): `redis-server --bind 127.0.0.1 --port PORT --save "" --appendonly
/// no`, in memory only, so a restart comes back empty. Dropping it kills it.
#[cfg(feature = "redis")]
#[derive(Debug)]
pub struct RedisProcess {
    binary: PathBuf,
    port: u16,
    child: Option<Child>,
}

#[cfg(feature = "redis")]
impl RedisProcess {
    /// How long a starting server may take to accept connections.
    const START_WAIT: Duration = Duration::from_secs(10);

    /// Starts a server for test `test` and waits until it accepts connections. Without a
    /// `redis-server` binary on `PATH`: panics under `CI=true`, otherwise reports the skip and
    /// returns `None`.
    ///
    /// # Panics
    /// If the server does not start.
    pub fn start(test: &str) -> Option<Self> {
        let Some(binary) = find_on_path("redis-server") else {
            if under_ci() {
                panic!("a redis-server binary must be on PATH under CI=true (needed by {test})");
            }
            report_skip(&format!("install redis-server (on PATH) to run {test}"));
            return None;
        };
        let mut p = RedisProcess {
            binary,
            port: 0,
            child: None,
        };
        start_on_a_free_port("redis-server", |port| {
            p.port = port;
            p.spawn()
        });
        Some(p)
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    /// Kills the server (SIGKILL) and waits for it to exit; its port then refuses connections.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts a fresh one (empty) on the same port.
    ///
    /// # Panics
    /// If the server does not start again.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn() {
            panic!("{e}");
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered, as a server
    /// stalled by its host. Returns once every thread of it is stopped.
    ///
    /// Fails if the server is not running or the signal cannot be sent.
    pub fn pause(&self) -> std::io::Result<()> {
        self.signal("STOP")?;
        // The signal is delivered asynchronously: the server may still answer a request sent
        // right after `kill` returned. Wait until the kernel says stopped.
        if let Some(pid) = self.child.as_ref().map(Child::id) {
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && !all_threads_stopped(pid).unwrap_or(true) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    }

    /// Lets a [paused](Self::pause) server run again (SIGCONT).
    ///
    /// Fails if the server is not running or the signal cannot be sent.
    pub fn resume(&self) -> std::io::Result<()> {
        self.signal("CONT")
    }

    fn signal(&self, name: &str) -> std::io::Result<()> {
        let pid = self.child.as_ref().map(Child::id).ok_or_else(|| {
            std::io::Error::other(format!(
                "SIG{name}: redis-server on port {} is not running",
                self.port
            ))
        })?;
        let status = Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .stdin(Stdio::null())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "kill -{name} {pid}: {status}"
            )))
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Self::START_WAIT;
        let port = self.port.to_string();
        let mut child = Command::new(&self.binary)
            .args(["--bind", "127.0.0.1", "--port", &port, "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.binary.display()))?;
        loop {
            if TcpStream::connect(self.addr()).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("redis-server on port {port} exited with {status}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "redis-server on port {port} did not accept connections within {:?}",
                    Self::START_WAIT
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        Ok(())
    }
}

#[cfg(feature = "redis")]
impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port that was free a moment ago (bound to port 0, then released).
/// Runs `spawn` on a free port, up to three times: the port may be taken between the probe
/// and the server's bind.
///
/// # Panics
/// If the server did not start on three ports.
fn start_on_a_free_port(server: &str, mut spawn: impl FnMut(u16) -> Result<(), String>) {
    let mut failures = Vec::new();
    for _ in 0..3 {
        match spawn(free_port()) {
            Ok(()) => return,
            Err(e) => failures.push(e),
        }
    }
    panic!("{server} did not start: {failures:?}");
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    listener.local_addr().expect("local address").port()
}

#[cfg(feature = "async")]
pub mod async_db;
pub mod db;

/// Instantiates a suite once per database and cache backend this build has: modules
/// `sqlite_locmem`, `sqlite_memcached`, `postgres_locmem`, `postgres_memcached`,
/// `mysql_locmem`, `mysql_memcached` (each behind its database's feature), and
/// `sqlite_redis`, `postgres_redis`, `mysql_redis` (behind the database's feature and
/// `redis`), each invoking
/// `$suite!(Connection type, BackendKind)`. Tests that exist for one combination only go in
/// the optional `sqlite_locmem: { ... }` block, which is expanded inside that module (so it
/// sees what the suite defines).
///
/// ```
/// macro_rules! suite { ($conn:ty, $kind:expr) => { pub fn kind() -> caching_tests::db::BackendKind { $kind } } }
/// caching_tests::for_each_database!(suite);
/// ```
#[macro_export]
macro_rules! for_each_database {
    ($suite:ident) => {
        $crate::for_each_database!($suite, sqlite_locmem: {});
    };
    ($suite:ident, sqlite_locmem: { $($extra:tt)* }) => {
        #[cfg(feature = "sqlite")]
        mod sqlite_locmem {
            $suite!(diesel::SqliteConnection, $crate::db::BackendKind::LocMem);
            $($extra)*
        }
        #[cfg(feature = "sqlite")]
        mod sqlite_memcached {
            $suite!(diesel::SqliteConnection, $crate::db::BackendKind::Memcached);
        }
        #[cfg(feature = "postgres")]
        mod postgres_locmem {
            $suite!(diesel::PgConnection, $crate::db::BackendKind::LocMem);
        }
        #[cfg(feature = "postgres")]
        mod postgres_memcached {
            $suite!(diesel::PgConnection, $crate::db::BackendKind::Memcached);
        }
        #[cfg(feature = "mysql")]
        mod mysql_locmem {
            $suite!(diesel::MysqlConnection, $crate::db::BackendKind::LocMem);
        }
        #[cfg(feature = "mysql")]
        mod mysql_memcached {
            $suite!(diesel::MysqlConnection, $crate::db::BackendKind::Memcached);
        }
        #[cfg(all(feature = "sqlite", feature = "redis"))]
        mod sqlite_redis {
            $suite!(diesel::SqliteConnection, $crate::db::BackendKind::Redis);
        }
        #[cfg(all(feature = "postgres", feature = "redis"))]
        mod postgres_redis {
            $suite!(diesel::PgConnection, $crate::db::BackendKind::Redis);
        }
        #[cfg(all(feature = "mysql", feature = "redis"))]
        mod mysql_redis {
            $suite!(diesel::MysqlConnection, $crate::db::BackendKind::Redis);
        }
    };
}
