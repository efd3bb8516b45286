//! Redis backend: the [`Backend`] guarantees of memcached on a Redis (or Valkey) server.
//!
//! # Why the `redis` crate, and which features
//!
//! The [`redis`](https://docs.rs/redis) crate is the ecosystem's client, kept up with the
//! server's protocol (RESP2/RESP3, ACL authentication, `SELECT`); writing one more wire client
//! (as the memcached backend does) would buy nothing here. It is used with
//! `default-features = false` and only its `script` feature: the blocking
//! [`redis::Connection`] (the engine is synchronous), no connection manager, no TLS, no
//! cluster, no sentinel. `script` brings the SHA-1 of our Lua scripts (`sha1_smol`, without
//! dependencies) so that they are sent by hash (`EVALSHA`).
//!
//! With `caching-core`'s feature `tokio` as well, the crate's `tokio-comp` feature is on: its
//! async connection (`redis::aio::MultiplexedConnection`) serves
//! [`Backend::get_multi_async`] and [`Backend::batch_async`], the async read path. `tokio-comp` is the
//! smallest set that has one (`aio` alone does not build without a runtime feature): it adds
//! the crate's async codec and multiplexer (tokio-util, futures-util, async-lock, bytes) to
//! tokio's `net`, `rt` and `time`, which the feature `tokio` enables anyway. Still no
//! connection manager, TLS or cluster.
//!
//! # Memcached semantics on Redis
//!
//! Redis has no CAS tokens, no `add`-returns-`NOT_STORED` for over-size values, no
//! wrapping 64-bit `incr` on a decimal text, and no append that can refuse to grow past an
//! item size. Each is built here:
//!
//! - **Values** are stored as an 8-byte CAS token followed by the bytes: `token || value`.
//!   Every store (`set`, `add`, `cas`, `append`, `incr`) writes a fresh token, a 64-bit value
//!   unique to this client (a per-process random seed mixed with a counter, so two writers
//!   never share one), so the token changes whenever the value does, as memcached's does.
//!   [`Item::cas`] is the token, [`Item::value`] the bytes after it. A value written by
//!   another client has no token: its first 8 bytes are taken for one, and a value shorter
//!   than 8 bytes is returned whole, with a token derived from its length and bytes. Either
//!   way the engine sees bytes it cannot parse and treats them as damage (a list that does
//!   not parse is overflowed, a counter that is not a number is replaced), and a `cas` over
//!   them works. A key of another Redis type (a list, a hash: someone else's key under our
//!   prefix) reads as missing; `append` and `cas` delete it when they meet it, and `incr`
//!   reports it as [`Error::NotANumber`] (the engine then overwrites it), so the key heals.
//! - **get_multi**: `MGET`, one round trip (chunks of [`MGET_CHUNK`] keys, pipelined).
//!   [`Backend::get_multi_async`] sends the same commands and reads their replies through the
//!   same code, so both answer alike (a value of another client, a key of another type).
//! - **add**: `SET k v NX [EX n]`; **set**: `SET k v [EX n]`; the multi forms are pipelined
//!   (one round trip). A value over [`RedisOptions::item_size`] is not sent: `add` answers
//!   `false`, `set` deletes the old value instead (memcached drops it too), so a reader never
//!   sees a value older than the one that failed.
//! - **append**, **cas**, **incr** are Lua scripts (atomic on the server, sent with
//!   `EVALSHA`, and with `EVAL` when the server answers `NOSCRIPT`: a new or restarted
//!   server, or `SCRIPT FLUSH`). `append` checks existence and the resulting size (over the
//!   item size: `TooLarge`, nothing stored), writes a new token over the first 8 bytes
//!   (`SETRANGE`) and `APPEND`s: both keep the key's TTL. `cas` compares the first 8 bytes
//!   with the token read and stores only if they match. `incr` adds in decimal, digit by
//!   digit (Lua numbers are doubles: no 64-bit arithmetic there) and wraps at 2^64, keeping
//!   the TTL; a value that is not a decimal number (memcached's rule: digits, optional
//!   surrounding spaces, at most 2^64 - 1) is [`Error::NotANumber`].
//! - **delete_multi**: `DEL`, pipelined. **probe**: `PING`.
//! - **Expiry**: [`Expiry::Forever`] stores without TTL; [`Expiry::Seconds`] is `EX n`,
//!   relative, whatever its length (memcached's 30-day switch to unix times does not exist in
//!   Redis, and the lifetime is the same).
//!
//! # Connections
//!
//! A small pool of blocking connections ([`RedisOptions::pool_size`] kept idle, more opened
//! under load and closed after use), so concurrent threads do not queue on one socket. Every
//! connection has the connect timeout and a read/write timeout of `io_timeout`. A connection
//! goes back to the pool only after an exchange that succeeded (server error replies, which
//! leave the connection in step, included); after an I/O error it is dropped. When a pooled
//! connection turns out to be closed (the server restarted, closed it as idle, or an
//! operator ran `CLIENT KILL`), the idle pool is emptied and the call is made once more on a
//! new connection, so a restart between two calls costs no error. Otherwise a failure to talk
//! to the server marks it down for `retry_after`: calls fail fast with
//! [`Error::Unavailable`] meanwhile (the read path falls through to the database, the write
//! path queues its invalidation), as with memcached. [`Backend::probe`] ignores the window.
//!
//! A command a pooled connection sent just before the server closed it may have run; sending
//! it again is harmless to the engine (a second `append` of a registration repeats a token,
//! a second `incr` is one more change, a `cas` or `add` that already succeeded reports
//! `Changed` / `false`, which the engine treats as a lost race).
//!
//! What the blocking client does not give: a deadline on a whole exchange (memcached's
//! `op_timeout`): each read and write waits at most `io_timeout`, but a server trickling a
//! long reply a byte at a time can stretch one exchange past that. The crate trusts the
//! lengths a server announces; point it only at a Redis you run.
//!
//! The non-blocking calls ([`Backend::get_multi_async`] and [`Backend::batch_async`], feature
//! `tokio`, inside a tokio runtime) have a pool of their own, of the crate's async
//! connections, under the same rules and the same fail-fast window: a failure there marks the
//! server down for blocking calls too, and a server marked down fails both at once. A batch
//! sends the commands a blocking batch sends, and its replies are decoded by the same code.
//! Each such connection serves one exchange at a time, and the exchange itself drives it (its
//! requests and replies move while it is awaited; no task is spawned). Opening one (TCP,
//! authentication, `SELECT`) is bounded by `connect_timeout`, then its name, the eviction
//! policy (while unknown) and loading the scripts by `io_timeout`; an exchange (sending its
//! commands and receiving every reply) is bounded by `io_timeout` as a whole, which a
//! trickling server cannot stretch. An exchange that fails, times out or is cancelled (its
//! future dropped) drops its connection, so a reply left in flight is never read as the
//! answer to a later request. The backend counts no connections opened
//! ([`Backend::connections_opened`] is 0): that count serves the check of servers that came
//! back empty among several, and a Redis backend has one server.
//!
//! # Eviction policy
//!
//! On its first connection (and again after an outage) the backend reads the server's
//! `maxmemory-policy` (`CONFIG GET`, or `INFO memory` where `CONFIG` is disabled or renamed),
//! logs it at `info` and warns for `allkeys-*` policies, which can evict flush lists: see
//! [`EvictionPolicy`] and [`Redis::eviction_policy`].

use std::collections::HashMap;
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redis::{Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo, Value};

use super::{check_keys, AppendOutcome, Backend, CasOutcome, Item, Op, OpReply, Placeholder};
#[cfg(feature = "tokio")]
use super::{AsyncBatch, AsyncGets};
use crate::error::{ConfigError, Error, Result};
use crate::timeout::Expiry;

/// Keys per `MGET` command (the commands of one `get_multi` are pipelined).
pub const MGET_CHUNK: usize = 500;

/// Length of the CAS token stored in front of every value.
const TOKEN_LEN: usize = 8;

/// Connection settings of a [`Redis`] backend. The timeouts, the pool size and the fail-fast
/// window mean what [`MemcachedOptions`](crate::backend::memcached::MemcachedOptions)' do
/// (and have the same URL names); there is no `op_timeout` (see the module docs).
///
/// ```
/// use std::time::Duration;
/// use caching_core::backend::redis::RedisOptions;
/// let o = RedisOptions::default();
/// assert_eq!(o.pool_size, 16);
/// assert_eq!(o.item_size, 1024 * 1024);
/// let fast = RedisOptions { retry_after: Duration::from_millis(100), db: 2, ..o };
/// assert_eq!(fast.io_timeout, Duration::from_millis(500));
/// // The password never shows in logs.
/// let secret = RedisOptions { password: Some("hunter2".into()), ..RedisOptions::default() };
/// assert!(!format!("{secret:?}").contains("hunter2"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// Time allowed to open a connection (TCP connect, authentication, `SELECT`).
    pub connect_timeout: Duration,
    /// Time allowed for each read or write on a blocking connection; a non-blocking read
    /// ([`Backend::get_multi_async`]) is allowed it for the whole exchange.
    pub io_timeout: Duration,
    /// Idle connections kept (more are opened under load and closed after use).
    pub pool_size: usize,
    /// After a failure, how long the server is considered down (calls fail fast) before the
    /// next attempt to reach it.
    pub retry_after: Duration,
    /// Database number (`SELECT`). A `/db` in the address given to [`Redis::new`] overrides it.
    pub db: u32,
    /// Largest value stored, in bytes (memcached's default item size). Bounds flush lists
    /// as memcached's item size does; Redis's own limit is 512 MiB.
    pub item_size: usize,
    /// Name given to every connection (`CLIENT SETNAME`, shown by `CLIENT LIST`): printable
    /// ASCII without spaces. None: unnamed.
    pub client_name: Option<String>,
    /// ACL user name (`AUTH user password`); None: the default user.
    pub username: Option<String>,
    /// Password (`AUTH`); None: no authentication. Never printed.
    pub password: Option<String>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            connect_timeout: Duration::from_millis(250),
            io_timeout: Duration::from_millis(500),
            pool_size: 16,
            retry_after: Duration::from_secs(1),
            db: 0,
            item_size: 1024 * 1024,
            client_name: None,
            username: None,
            password: None,
        }
    }
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("io_timeout", &self.io_timeout)
            .field("pool_size", &self.pool_size)
            .field("retry_after", &self.retry_after)
            .field("db", &self.db)
            .field("item_size", &self.item_size)
            .field("client_name", &self.client_name)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The server's `maxmemory-policy`: which keys Redis evicts when it reaches `maxmemory`.
///
/// What it means for this cache (see `docs/src/failure-modes.md`):
///
/// - `allkeys-*`: any key can go, flush lists and counters included, as in memcached. An
///   evicted flush list leaves the entries registered on it stale until they expire: use
///   `eviction_safe=true` (or a `max_timeout`).
/// - `volatile-*`: only keys with a TTL are evicted. Flush lists, counters and entries stored
///   forever have none, so they are never evicted: no staleness from eviction, but memory
///   is only reclaimed from entries with a timeout (set `max_timeout` so that every entry has
///   one), and once nothing evictable is left, writes fail as under `noeviction`.
/// - `noeviction`: nothing is evicted; a full server refuses writes (`OOM`): fills fail and
///   reads fall through to the database, invalidations are queued and retried. Never stale,
///   but the cache stops caching.
///
/// ```
/// use caching_core::backend::redis::EvictionPolicy;
/// let p = EvictionPolicy::parse("allkeys-lru");
/// assert_eq!(p, EvictionPolicy::AllKeysLru);
/// assert!(p.evicts_keys_without_ttl());
/// assert!(!EvictionPolicy::parse("volatile-lfu").evicts_keys_without_ttl());
/// assert_eq!(EvictionPolicy::parse("noeviction").as_str(), "noeviction");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EvictionPolicy {
    /// `noeviction`: nothing is evicted, writes fail when memory is full.
    NoEviction,
    /// `allkeys-lru`: any key, least recently used first.
    AllKeysLru,
    /// `allkeys-lfu`: any key, least frequently used first.
    AllKeysLfu,
    /// `allkeys-random`: any key, at random.
    AllKeysRandom,
    /// `volatile-lru`: keys with a TTL, least recently used first.
    VolatileLru,
    /// `volatile-lfu`: keys with a TTL, least frequently used first.
    VolatileLfu,
    /// `volatile-random`: keys with a TTL, at random.
    VolatileRandom,
    /// `volatile-ttl`: keys with a TTL, nearest expiry first.
    VolatileTtl,
    /// A policy this version does not know (a newer server), as the server named it.
    Other(String),
    /// The server would not say (`CONFIG` and `INFO` both refused).
    Unknown,
}

impl EvictionPolicy {
    /// The policy named `name` (the server's spelling).
    pub fn parse(name: &str) -> EvictionPolicy {
        match name.trim() {
            "noeviction" => EvictionPolicy::NoEviction,
            "allkeys-lru" => EvictionPolicy::AllKeysLru,
            "allkeys-lfu" => EvictionPolicy::AllKeysLfu,
            "allkeys-random" => EvictionPolicy::AllKeysRandom,
            "volatile-lru" => EvictionPolicy::VolatileLru,
            "volatile-lfu" => EvictionPolicy::VolatileLfu,
            "volatile-random" => EvictionPolicy::VolatileRandom,
            "volatile-ttl" => EvictionPolicy::VolatileTtl,
            other => EvictionPolicy::Other(other.to_string()),
        }
    }

    /// The server's name of the policy (`unknown` for [`EvictionPolicy::Unknown`]).
    pub fn as_str(&self) -> &str {
        match self {
            EvictionPolicy::NoEviction => "noeviction",
            EvictionPolicy::AllKeysLru => "allkeys-lru",
            EvictionPolicy::AllKeysLfu => "allkeys-lfu",
            EvictionPolicy::AllKeysRandom => "allkeys-random",
            EvictionPolicy::VolatileLru => "volatile-lru",
            EvictionPolicy::VolatileLfu => "volatile-lfu",
            EvictionPolicy::VolatileRandom => "volatile-random",
            EvictionPolicy::VolatileTtl => "volatile-ttl",
            EvictionPolicy::Other(name) => name,
            EvictionPolicy::Unknown => "unknown",
        }
    }

    /// Whether the policy may evict keys without a TTL (flush lists, counters, entries
    /// stored forever): `allkeys-*`, and, to be safe, any policy not known to spare them.
    pub fn evicts_keys_without_ttl(&self) -> bool {
        match self {
            EvictionPolicy::NoEviction
            | EvictionPolicy::VolatileLru
            | EvictionPolicy::VolatileLfu
            | EvictionPolicy::VolatileRandom
            | EvictionPolicy::VolatileTtl => false,
            EvictionPolicy::Other(name) => !(name.starts_with("volatile-") || name == "noeviction"),
            _ => true,
        }
    }
}

impl std::fmt::Display for EvictionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Lua script and its SHA-1.
struct Lua {
    src: &'static str,
    sha: String,
}

impl Lua {
    fn new(src: &'static str) -> Lua {
        Lua {
            src,
            sha: redis::Script::new(src).get_hash().to_string(),
        }
    }
}

/// `append`: KEYS[1] the key; ARGV[1] the new token; ARGV[2] the bytes; ARGV[3] the largest
/// value (without token). Returns 0 (missing), 1 (appended), 2 (too large).
const APPEND_LUA: &str = r"
local k = KEYS[1]
local t = redis.call('TYPE', k)['ok']
if t == 'none' then return 0 end
if t ~= 'string' then redis.call('DEL', k) return 0 end
local len = redis.call('STRLEN', k)
local limit = tonumber(ARGV[3])
if len < 8 then
  if len + #ARGV[2] > limit then return 2 end
  local v = ARGV[1] .. redis.call('GET', k) .. ARGV[2]
  local ttl = redis.call('PTTL', k)
  if ttl > 0 then redis.call('SET', k, v, 'PX', ttl) else redis.call('SET', k, v) end
  return 1
end
if len - 8 + #ARGV[2] > limit then return 2 end
redis.call('SETRANGE', k, 0, ARGV[1])
redis.call('APPEND', k, ARGV[2])
return 1
";

/// `cas`: KEYS[1] the key; ARGV[1] the token read; ARGV[2] the new stored value (token and
/// bytes); ARGV[3] seconds to live, `0` for none. Returns 0 (missing), 1 (changed), 2
/// (stored). A value shorter than a token has the token `len || bytes || zeros`, as the
/// client computes it.
const CAS_LUA: &str = r"
local k = KEYS[1]
local t = redis.call('TYPE', k)['ok']
if t == 'none' then return 0 end
if t ~= 'string' then redis.call('DEL', k) return 0 end
local cur = redis.call('GETRANGE', k, 0, 7)
if #cur < 8 then cur = string.char(#cur) .. cur .. string.rep(string.char(0), 7 - #cur) end
if cur ~= ARGV[1] then return 1 end
if ARGV[3] == '0' then
  redis.call('SET', k, ARGV[2])
else
  redis.call('SET', k, ARGV[2], 'EX', ARGV[3])
end
return 2
";

/// `incr`: KEYS[1] the key; ARGV[1] the delta in decimal (no leading zeros); ARGV[2] the new
/// token. Returns nil (missing), -1 (not a number), or the new value in decimal.
const INCR_LUA: &str = r"
local k = KEYS[1]
local t = redis.call('TYPE', k)['ok']
if t == 'none' then return false end
if t ~= 'string' then return -1 end
local cur = redis.call('GET', k)
if #cur < 8 then return -1 end
local n = string.match(string.sub(cur, 9), '^%s*(%d+)%s*$')
if not n then return -1 end
n = string.gsub(n, '^0+', '')
if n == '' then n = '0' end
local TWO64 = '18446744073709551616'
local function ge(a, b)
  if #a ~= #b then return #a > #b end
  for i = 1, #a do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return true
end
local function digits(rev)
  local out = {}
  for i = #rev, 1, -1 do out[#out + 1] = string.char(48 + rev[i]) end
  local s = string.gsub(table.concat(out), '^0+', '')
  if s == '' then s = '0' end
  return s
end
if ge(n, TWO64) then return -1 end
local rev, carry, i, j = {}, 0, #n, #ARGV[1]
while i > 0 or j > 0 or carry > 0 do
  local s = carry
  if i > 0 then s = s + string.byte(n, i) - 48; i = i - 1 end
  if j > 0 then s = s + string.byte(ARGV[1], j) - 48; j = j - 1 end
  rev[#rev + 1] = s % 10
  carry = (s - s % 10) / 10
end
local sum = digits(rev)
if ge(sum, TWO64) then
  rev = {}
  local borrow = 0
  i, j = #sum, #TWO64
  while i > 0 do
    local d = string.byte(sum, i) - 48 - borrow
    if j > 0 then d = d - (string.byte(TWO64, j) - 48); j = j - 1 end
    if d < 0 then d = d + 10; borrow = 1 else borrow = 0 end
    rev[#rev + 1] = d
    i = i - 1
  end
  sum = digits(rev)
end
local v = ARGV[2] .. sum
local ttl = redis.call('PTTL', k)
if ttl > 0 then redis.call('SET', k, v, 'PX', ttl) else redis.call('SET', k, v) end
return sum
";

/// What the backend knows of the server's eviction policy.
#[derive(Debug, Default)]
struct PolicyState {
    /// Read on the latest connection that asked; `None` until then and after an outage.
    current: Option<EvictionPolicy>,
    /// The last policy logged, so each change is logged once.
    logged: Option<EvictionPolicy>,
}

/// Where and how to connect, parsed from `host[:port]` or a `redis://` URL.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    db: Option<u32>,
    username: Option<String>,
    password: Option<String>,
}

/// Parses `host[:port]` or `redis://[[user]:password@]host[:port][/db]`.
fn parse_target(addr: &str) -> std::result::Result<Target, String> {
    let rest = match addr.split_once("://") {
        Some(("redis", rest)) => rest,
        Some((scheme, _)) => return Err(format!("expected redis://, not {scheme}://")),
        None => addr,
    };
    if rest.contains('?') {
        return Err("parameters belong to Cache::from_url, not to the address".into());
    }
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((u, r)) => (Some(u), r),
        None => (None, rest),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(u) => {
            let (user, pass) = u
                .split_once(':')
                .ok_or("credentials must be written [user]:password@")?;
            (
                (!user.is_empty()).then(|| user.to_string()),
                Some(pass.to_string()),
            )
        }
    };
    let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path = path.trim_end_matches('/');
    let db = if path.is_empty() {
        None
    } else {
        Some(
            path.parse::<u32>()
                .map_err(|_| format!("database {path:?} is not a number"))?,
        )
    };
    if hostport.contains(',') {
        return Err("redis:// takes one host".into());
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(p.strip_prefix(':').ok_or("expected :port after ]")?),
            ),
        }
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let port = match port {
        None => crate::config::DEFAULT_REDIS_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{hostport:?} is not host or host:port"))?,
    };
    Ok(Target {
        host: host.to_string(),
        port,
        db,
        username,
        password,
    })
}

/// The Redis backend.
///
/// ```no_run
/// use caching_core::backend::{Backend, redis::{Redis, RedisOptions}};
/// use caching_core::Expiry;
/// let r = Redis::new("redis://127.0.0.1:6379/0", RedisOptions::default()).unwrap();
/// r.set("greeting", b"hello", Expiry::Forever).unwrap();
/// assert_eq!(r.get("greeting").unwrap().unwrap().value, b"hello");
/// println!("eviction policy: {}", r.eviction_policy().unwrap());
/// ```
pub struct Redis {
    /// `host:port` (and `/db` when not 0), for errors and logs.
    name: String,
    client: redis::Client,
    options: RedisOptions,
    idle: Mutex<Vec<redis::Connection>>,
    /// The server's address, resolved once (the non-blocking connections open sockets to it).
    #[cfg(feature = "tokio")]
    addr: std::net::SocketAddr,
    /// Idle non-blocking connections (feature `tokio`): the async hit path's reads.
    #[cfg(feature = "tokio")]
    idle_async: Mutex<Vec<AsyncConn>>,
    down: DownMark,
    policy: Mutex<PolicyState>,
    append: Lua,
    cas: Lua,
    incr: Lua,
    token_seed: u64,
    token_seq: AtomicU64,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("server", &self.name)
            .field("options", &self.options)
            .field("idle", &lock(&self.idle).len())
            .finish_non_exhaustive()
    }
}

use crate::backend::fail_fast::{lock, DownMark};

/// splitmix64's output function: a bijection of `u64`, so distinct inputs give distinct tokens.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A random seed for one backend's tokens: blake3 of the time, the process and a
/// process-wide counter.
fn token_seed() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.update(b"caching-core redis token seed");
    h.update(&now.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&SEQ.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// The token of a stored value: its first 8 bytes, or, for a shorter value (not written by
/// this backend), its length, its bytes and zeros (as `CAS_LUA` computes it).
fn token_of(stored: &[u8]) -> [u8; TOKEN_LEN] {
    let mut t = [0u8; TOKEN_LEN];
    if stored.len() >= TOKEN_LEN {
        t.copy_from_slice(&stored[..TOKEN_LEN]);
    } else {
        t[0] = stored.len() as u8;
        t[1..=stored.len()].copy_from_slice(stored);
    }
    t
}

/// An item from a stored value (see [`token_of`]).
fn item_of(mut stored: Vec<u8>) -> Item {
    let cas = u64::from_be_bytes(token_of(&stored));
    if stored.len() >= TOKEN_LEN {
        stored.drain(..TOKEN_LEN);
    }
    Item { value: stored, cas }
}

/// Whether a Redis error means the connection is closed (so a new one may do better).
fn is_closed(e: &redis::RedisError) -> bool {
    e.is_connection_dropped() || e.is_connection_refusal()
}

/// The future that moves a non-blocking connection's requests and replies.
#[cfg(feature = "tokio")]
type Driver = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// One non-blocking connection (feature `tokio`): the crate's async connection and its
/// driver, the future that writes the requests and reads the replies. The driver is not
/// spawned: an exchange polls it together with its requests, so the connection works on
/// whichever runtime awaits the read and nothing runs between reads. One exchange at a time.
#[cfg(feature = "tokio")]
struct AsyncConn {
    conn: redis::aio::MultiplexedConnection,
    /// `None` once it ended (the connection is closed): never polled again, never pooled.
    driver: Option<Driver>,
}

#[cfg(feature = "tokio")]
impl AsyncConn {
    /// Sends `cmds` and reads their replies, in order, within `limit`. Each is its own
    /// request on the connection (all in flight at once: one round trip), so a reply the
    /// crate cannot parse fails as such: in a pipeline, the crate would report it as a
    /// closed connection. Error replies are values ([`Value::ServerError`]), as in the
    /// blocking client's pipelines.
    async fn query_each(
        &mut self,
        cmds: &[Cmd],
        limit: Duration,
    ) -> redis::RedisResult<Vec<Value>> {
        use std::future::Future;
        use std::task::Poll;
        type Reply<'c> =
            std::pin::Pin<Box<dyn Future<Output = redis::RedisResult<Value>> + Send + 'c>>;
        let mut requests: Vec<Reply<'_>> = cmds
            .iter()
            .map(|cmd| {
                let mut conn = self.conn.clone();
                Box::pin(async move { conn.send_packed_command(cmd).await }) as Reply<'_>
            })
            .collect();
        let mut replies: Vec<Option<Value>> = vec![None; cmds.len()];
        let all = std::future::poll_fn(|cx| {
            for (request, reply) in requests.iter_mut().zip(replies.iter_mut()) {
                if reply.is_none() {
                    match request.as_mut().poll(cx) {
                        Poll::Ready(Ok(v)) => *reply = Some(v),
                        // Replies come in order: the first error is the earliest command's.
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {}
                    }
                }
            }
            if replies.iter().all(Option::is_some) {
                Poll::Ready(Ok(replies.iter_mut().filter_map(Option::take).collect()))
            } else {
                Poll::Pending
            }
        });
        drive(&mut self.driver, all, limit).await
    }

    /// Sends `pipe` (made with `ignore_errors`) and reads its replies within `limit` (the
    /// connection's setup; a reply not parsed fails it as a closed connection would).
    async fn query_pipe(
        &mut self,
        pipe: &redis::Pipeline,
        limit: Duration,
    ) -> redis::RedisResult<Value> {
        let AsyncConn { conn, driver } = self;
        drive(driver, pipe.query_async::<Value>(conn), limit).await
    }

    /// Whether the connection may be used again (its driver still runs).
    fn is_open(&self) -> bool {
        self.driver.is_some()
    }
}

/// Awaits `request` while polling the connection's `driver`, within `limit`: a timeout is an
/// I/O error (`TimedOut`); a connection that ended with the request unanswered is a closed
/// one (`BrokenPipe`), and its driver is then `None`. A reply cut short by the server
/// closing the connection, which the crate's codec reports as a parse error ("end of
/// input"), is the I/O error the blocking client reports for it (`UnexpectedEof`, a closed
/// connection).
#[cfg(feature = "tokio")]
async fn drive<T>(
    driver: &mut Option<Driver>,
    request: impl std::future::Future<Output = redis::RedisResult<T>>,
    limit: Duration,
) -> redis::RedisResult<T> {
    use std::task::Poll;
    let mut request = std::pin::pin!(request);
    let exchange = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = request.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        let Some(running) = driver.as_mut() else {
            return Poll::Ready(Err(closed_error()));
        };
        if running.as_mut().poll(cx).is_ready() {
            // Ended: dropped now (never polled again), with whatever it had in flight.
            *driver = None;
        }
        // The driver may have just handed a reply over (or dropped the request).
        match request.as_mut().poll(cx) {
            Poll::Pending if driver.is_none() => Poll::Ready(Err(closed_error())),
            r => r,
        }
    });
    match tokio::time::timeout(limit, exchange).await {
        Ok(Err(e))
            if driver.is_none()
                && e.kind() == redis::ErrorKind::Parse
                && e.to_string().contains("end of input") =>
        {
            Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("connection closed mid-reply: {e}"),
            )))
        }
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no complete reply within {limit:?}"),
        ))),
    }
}

/// A batch's replies to decode ([`Redis::encode_batch`]).
struct EncodedBatch {
    /// Per stage and op, its reply when known without asking.
    out: Vec<Vec<Option<OpReply>>>,
    /// Per stage: what it sent.
    sent: Vec<SentStage>,
}

/// One stage of a batch as sent: its gets, the other ops sent, the values its leases stored,
/// and how many commands it sent.
type SentStage = (Vec<usize>, Vec<usize>, Vec<Option<Vec<u8>>>, usize);

/// Whether a script call was answered `NOSCRIPT` (the server's scripts were flushed).
fn refused_scripts(replies: &[Value]) -> bool {
    replies
        .iter()
        .any(|v| matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT"))
}

/// A connection that ended under a request, as the crate reports it (a dropped connection).
#[cfg(feature = "tokio")]
fn closed_error() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "connection closed",
    ))
}

/// The `EX` arguments of an expiry.
fn expire_args(c: &mut Cmd, expiry: Expiry) {
    if let Expiry::Seconds(s) = expiry {
        c.arg("EX").arg(s.max(1));
    }
}

/// A reply's bytes, for the policy readers.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

impl Redis {
    /// A backend on the server at `addr`: `host[:port]` (port 6379 by default, IPv6 in
    /// brackets) or `redis://[[user]:password@]host[:port][/db]` (a `/db` and credentials
    /// there override `options`). The address is resolved now; nothing is connected until
    /// first use.
    ///
    /// ```
    /// use caching_core::backend::redis::{Redis, RedisOptions};
    /// assert!(Redis::new("127.0.0.1", RedisOptions::default()).is_ok());
    /// assert!(Redis::new("redis://127.0.0.1:6380/2", RedisOptions::default()).is_ok());
    /// assert!(Redis::new("127.0.0.1:notaport", RedisOptions::default()).is_err());
    /// assert!(Redis::new("redis://a:1,b:2", RedisOptions::default()).is_err());
    /// ```
    pub fn new(addr: &str, options: RedisOptions) -> Result<Self> {
        let addr = addr.trim();
        let bad = |reason: &str| -> Error {
            ConfigError::Url {
                url: crate::config::redact_credentials(addr),
                reason: reason.to_string(),
            }
            .into()
        };
        let target = parse_target(addr).map_err(|r| bad(&r))?;
        let mut options = options;
        if let Some(db) = target.db {
            options.db = db;
        }
        if target.password.is_some() {
            options.username = target.username.clone();
            options.password = target.password.clone();
        }
        if options.pool_size == 0 || options.item_size == 0 {
            return Err(bad("pool_size and item_size must be positive"));
        }
        if let Some(n) = &options.client_name {
            if n.is_empty() || !n.chars().all(|c| c.is_ascii_graphic()) {
                return Err(ConfigError::Parameter {
                    name: "client_name",
                    value: n.clone(),
                    reason: "expected printable ASCII without spaces".into(),
                }
                .into());
            }
        }
        let resolved = (target.host.as_str(), target.port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| bad("not a resolvable host:port"))?;
        let shown_host = if target.host.contains(':') {
            format!("[{}]", target.host)
        } else {
            target.host.clone()
        };
        let mut name = format!("{shown_host}:{}", target.port);
        if options.db != 0 {
            name.push_str(&format!("/{}", options.db));
        }
        let mut redis_info = RedisConnectionInfo::default().set_db(i64::from(options.db));
        if let Some(user) = &options.username {
            redis_info = redis_info.set_username(user);
        }
        if let Some(password) = &options.password {
            redis_info = redis_info.set_password(password);
        }
        let info: ConnectionInfo = ConnectionAddr::Tcp(resolved.ip().to_string(), resolved.port())
            .into_connection_info()
            .map_err(|e| bad(&e.to_string()))?
            .set_redis_settings(redis_info)
            // Small pipelined requests: do not let Nagle's algorithm hold them back.
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info).map_err(|e| bad(&e.to_string()))?;
        Ok(Redis {
            name,
            client,
            options,
            idle: Mutex::new(Vec::new()),
            #[cfg(feature = "tokio")]
            addr: resolved,
            #[cfg(feature = "tokio")]
            idle_async: Mutex::new(Vec::new()),
            down: DownMark::default(),
            policy: Mutex::new(PolicyState::default()),
            append: Lua::new(APPEND_LUA),
            cas: Lua::new(CAS_LUA),
            incr: Lua::new(INCR_LUA),
            token_seed: token_seed(),
            token_seq: AtomicU64::new(0),
        })
    }

    /// The server, as `host:port` (and `/db` when not 0).
    ///
    /// ```
    /// use caching_core::backend::redis::{Redis, RedisOptions};
    /// let r = Redis::new("127.0.0.1", RedisOptions::default()).unwrap();
    /// assert_eq!(r.server(), "127.0.0.1:6379");
    /// ```
    pub fn server(&self) -> &str {
        &self.name
    }

    /// The options in effect (with the database and credentials of the address applied).
    ///
    /// ```
    /// use caching_core::backend::redis::{Redis, RedisOptions};
    /// let r = Redis::new("redis://127.0.0.1/3", RedisOptions::default()).unwrap();
    /// assert_eq!(r.options().db, 3);
    /// ```
    pub fn options(&self) -> &RedisOptions {
        &self.options
    }

    /// The server's eviction policy (`maxmemory-policy`), read on the first connection and
    /// again on the first one after an outage; this connects (failing fast while the server
    /// is marked down) when it is not known yet. [`EvictionPolicy::Unknown`] when the server
    /// refuses both `CONFIG GET` and `INFO`.
    ///
    /// ```no_run
    /// use caching_core::backend::redis::{EvictionPolicy, Redis, RedisOptions};
    /// let r = Redis::new("127.0.0.1:6379", RedisOptions::default()).unwrap();
    /// if r.eviction_policy().unwrap().evicts_keys_without_ttl() {
    ///     eprintln!("flush lists can be evicted: consider eviction_safe=true");
    /// }
    /// ```
    pub fn eviction_policy(&self) -> Result<EvictionPolicy> {
        if let Some(p) = lock(&self.policy).current.clone() {
            return Ok(p);
        }
        // A new connection reads the policy; on a pooled one, ask.
        self.exchange(true, |conn| {
            let known = lock(&self.policy).current.clone();
            match known {
                Some(p) => Ok(p),
                None => self.read_policy(conn),
            }
        })
    }

    fn next_token(&self) -> [u8; TOKEN_LEN] {
        let n = self.token_seq.fetch_add(1, Ordering::Relaxed);
        mix(self
            .token_seed
            .wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .to_be_bytes()
    }

    /// `token || value` under a fresh token.
    fn stored(&self, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(TOKEN_LEN + value.len());
        v.extend_from_slice(&self.next_token());
        v.extend_from_slice(value);
        v
    }

    fn fits(&self, value: &[u8]) -> bool {
        value.len() <= self.options.item_size
    }

    /// A server marked down is not tried (fail fast) until its `retry_after` is over.
    fn refuse_if_down(&self) -> Result<()> {
        self.down.refuse(&self.name)
    }

    /// After a failure to talk to the server: calls fail fast for `retry_after`, and every
    /// idle connection, blocking or not, is dropped.
    fn mark_down(&self) {
        self.down.mark(self.options.retry_after);
        lock(&self.idle).clear();
        #[cfg(feature = "tokio")]
        lock(&self.idle_async).clear();
        // The server may come back another one (a restart with another configuration).
        lock(&self.policy).current = None;
    }

    /// A pooled connection turned out closed (a restart, an idle timeout, `CLIENT KILL`):
    /// the rest of `pool` is likely closed too, and is dropped.
    fn closed_while_idle<C>(&self, e: &redis::RedisError, pool: &Mutex<Vec<C>>) {
        tracing::debug!(
            server = %self.name,
            error = %e,
            "pooled redis connection was closed; reconnecting"
        );
        lock(pool).clear();
    }

    /// The end of every exchange, blocking or not: a success clears the server's mark and
    /// pools its connection (when `reusable` and the pool has room); a failure to reach the
    /// server (connect, I/O, timeout) marks it down. An error reply or a reply not
    /// understood does not: it is an answer, the server is up.
    fn settle<T, C>(
        &self,
        result: Result<(T, C)>,
        pool: &Mutex<Vec<C>>,
        reusable: impl FnOnce(&C) -> bool,
    ) -> Result<T> {
        match result {
            Ok((v, conn)) => {
                self.down.clear();
                if reusable(&conn) {
                    let mut idle = lock(pool);
                    if idle.len() < self.options.pool_size {
                        idle.push(conn);
                    }
                }
                Ok(v)
            }
            Err(e) => {
                if matches!(e, Error::Io { .. } | Error::Unavailable { .. }) {
                    self.mark_down();
                }
                Err(e)
            }
        }
    }

    fn io_error(&self, e: &redis::RedisError) -> Error {
        use std::io::ErrorKind;
        let kind = if e.is_timeout() {
            ErrorKind::TimedOut
        } else if e.is_connection_refusal() {
            ErrorKind::ConnectionRefused
        } else if e.is_connection_dropped() {
            ErrorKind::ConnectionReset
        } else {
            ErrorKind::Other
        };
        Error::Io {
            server: self.name.clone(),
            source: std::io::Error::new(kind, e.to_string()),
        }
    }

    /// A Redis error as the crate's error: I/O (timeouts, resets, a closed connection) or a
    /// reply this client cannot use.
    fn map_err(&self, e: &redis::RedisError) -> Error {
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
            self.io_error(e)
        } else {
            self.protocol(&e.to_string())
        }
    }

    fn protocol(&self, what: &str) -> Error {
        Error::Protocol {
            server: self.name.clone(),
            line: what.chars().take(200).collect(),
        }
    }

    /// An error reply (`ERR ...`, `OOM ...`) or a reply of an unexpected shape, as an error.
    fn bad_reply(&self, v: &Value) -> Error {
        match v {
            Value::ServerError(e) => self.protocol(&e.to_string()),
            other => self.protocol(&format!("unexpected reply {other:?}")),
        }
    }

    /// Opens a connection: timeouts, name, and the eviction policy while it is unknown.
    fn connect(&self) -> Result<redis::Connection> {
        let unavailable = |e: &redis::RedisError| Error::Unavailable {
            server: self.name.clone(),
            reason: e.to_string(),
        };
        let mut conn = self
            .client
            .get_connection_with_timeout(self.options.connect_timeout)
            .map_err(|e| unavailable(&e))?;
        let io = Some(self.options.io_timeout);
        conn.set_read_timeout(io)
            .and_then(|()| conn.set_write_timeout(io))
            .map_err(|e| unavailable(&e))?;
        if let Some(cmd) = self.setname() {
            match cmd.query::<Value>(&mut conn) {
                Ok(_) => {}
                Err(e) if is_closed(&e) || e.is_io_error() || e.is_timeout() => {
                    return Err(unavailable(&e))
                }
                Err(e) => self.setname_refused(&e),
            }
        }
        let known = lock(&self.policy).current.is_some();
        if !known {
            self.read_policy(&mut conn).map_err(|e| unavailable(&e))?;
        }
        // Batches send scripts by hash only (a `NOSCRIPT` there cannot be re-sent in order):
        // make sure the server knows them. It does until it restarts (a new connection) or
        // someone runs `SCRIPT FLUSH`.
        match self.load_scripts(&mut conn) {
            Ok(()) => {}
            Err(e) if is_closed(&e) || e.is_io_error() || e.is_timeout() => {
                return Err(unavailable(&e))
            }
            Err(e) => tracing::warn!(server = %self.name, error = %e, "SCRIPT LOAD refused"),
        }
        Ok(conn)
    }

    /// Loads the scripts into the server's script cache (one round trip).
    fn load_scripts(&self, conn: &mut redis::Connection) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        for script in [&self.append, &self.cas, &self.incr] {
            pipe.cmd("SCRIPT").arg("LOAD").arg(script.src);
        }
        pipe.query::<Value>(conn).map(|_| ())
    }

    /// `CLIENT SETNAME` with the configured name, if any (sent on every new connection).
    fn setname(&self) -> Option<Cmd> {
        let name = self.options.client_name.as_ref()?;
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("SETNAME").arg(name);
        Some(cmd)
    }

    /// The server refused the name (an error reply): the connection is still usable.
    fn setname_refused(&self, e: &dyn std::fmt::Display) {
        tracing::warn!(server = %self.name, error = %e, "CLIENT SETNAME refused");
    }

    /// Adds the two commands that read `maxmemory-policy` (`CONFIG GET`, and `INFO memory`
    /// where `CONFIG` is refused) to `pipe`; [`record_policy`](Self::record_policy) reads
    /// their replies.
    fn policy_commands(pipe: &mut redis::Pipeline) {
        pipe.cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .cmd("INFO")
            .arg("memory");
    }

    /// Reads `maxmemory-policy` (`CONFIG GET`, else `INFO memory`, in one round trip),
    /// records it and logs it when it changed.
    fn read_policy(&self, conn: &mut redis::Connection) -> redis::RedisResult<EvictionPolicy> {
        let mut pipe = redis::pipe();
        Self::policy_commands(&mut pipe);
        let replies: Value = pipe.ignore_errors().query(conn)?;
        let replies = match replies {
            Value::Array(r) => r,
            _ => Vec::new(),
        };
        Ok(self.record_policy(replies.first(), replies.get(1)))
    }

    /// The policy from the replies to [`policy_commands`](Self::policy_commands) (either may
    /// be an error reply, or missing), recorded, and logged when it changed.
    fn record_policy(&self, config: Option<&Value>, info: Option<&Value>) -> EvictionPolicy {
        let from_config = config.and_then(|v| match v {
            Value::Array(kv) => kv.get(1).and_then(text),
            Value::Map(kv) => kv.first().and_then(|(_, v)| text(v)),
            _ => None,
        });
        let from_info = || {
            info.and_then(text).and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("maxmemory_policy:"))
                    .map(|p| p.trim().to_string())
            })
        };
        let policy = from_config
            .or_else(from_info)
            .map_or(EvictionPolicy::Unknown, |p| EvictionPolicy::parse(&p));
        let mut state = lock(&self.policy);
        state.current = Some(policy.clone());
        if state.logged.as_ref() != Some(&policy) {
            state.logged = Some(policy.clone());
            tracing::info!(server = %self.name, policy = %policy, "redis eviction policy");
            if policy == EvictionPolicy::Unknown {
                tracing::warn!(
                    server = %self.name,
                    "redis refused CONFIG GET and INFO: its eviction policy is unknown; if it can evict keys without a TTL (allkeys-*), set eviction_safe=true"
                );
            } else if policy.evicts_keys_without_ttl() {
                tracing::warn!(
                    server = %self.name,
                    policy = %policy,
                    "redis may evict flush lists (keys without TTL): an evicted list leaves its entries stale until they expire; set eviction_safe=true (or max_timeout), or use a volatile-* policy"
                );
            }
        }
        policy
    }

    /// Runs `f` on a pooled or new connection. With `fail_fast`, a server marked down is not
    /// tried. A pooled connection found closed empties the pool and `f` runs once more on a
    /// new connection. A failure to reach the server (connect, I/O) marks it down; error
    /// replies do not (the connection stays in step and goes back to the pool).
    fn exchange<T>(
        &self,
        fail_fast: bool,
        mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        if fail_fast {
            self.refuse_if_down()?;
        }
        let pooled = lock(&self.idle).pop();
        let (mut conn, reused) = match pooled {
            Some(c) => (c, true),
            None => (self.connect_or_mark()?, false),
        };
        let result = match f(&mut conn) {
            Err(e) if reused && is_closed(&e) => {
                self.closed_while_idle(&e, &self.idle);
                conn = self.connect_or_mark()?;
                f(&mut conn)
            }
            r => r,
        };
        let result = result.map(|v| (v, conn)).map_err(|e| self.map_err(&e));
        self.settle(result, &self.idle, |_| true)
    }

    fn connect_or_mark(&self) -> Result<redis::Connection> {
        self.connect().inspect_err(|e| {
            if matches!(e, Error::Unavailable { .. } | Error::Io { .. }) {
                self.mark_down();
            }
        })
    }

    /// [`exchange`](Self::exchange) without blocking (feature `tokio`): sends `cmds` on a
    /// pooled or new non-blocking connection and returns their replies, one per command.
    /// Fails fast while the server is marked down; a pooled connection found closed empties
    /// that pool and the read runs once more on a new connection; a failure to reach the
    /// server marks it down (for blocking calls too). The connection is pooled only after a
    /// complete exchange: one that failed, timed out or was cancelled is dropped with
    /// whatever it had in flight.
    #[cfg(feature = "tokio")]
    async fn exchange_async(&self, cmds: &[Cmd]) -> Result<Vec<Value>> {
        self.refuse_if_down()?;
        let limit = self.options.io_timeout;
        // (Popped in its own statement: the pool's lock is not held across an await.)
        let pooled = lock(&self.idle_async).pop();
        let result = match pooled {
            Some(mut conn) => match conn.query_each(cmds, limit).await {
                Err(e) if is_closed(&e) => {
                    self.closed_while_idle(&e, &self.idle_async);
                    self.exchange_on_new(cmds).await
                }
                r => r.map(|v| (v, conn)).map_err(|e| self.map_err(&e)),
            },
            None => self.exchange_on_new(cmds).await,
        };
        self.settle(result, &self.idle_async, AsyncConn::is_open)
    }

    /// Sends `cmds` on a new non-blocking connection; the connection comes back with the
    /// replies, to be pooled.
    #[cfg(feature = "tokio")]
    async fn exchange_on_new(&self, cmds: &[Cmd]) -> Result<(Vec<Value>, AsyncConn)> {
        let mut conn = self.connect_async().await?;
        let replies = conn
            .query_each(cmds, self.options.io_timeout)
            .await
            .map_err(|e| self.map_err(&e))?;
        Ok((replies, conn))
    }

    /// Opens a non-blocking connection (feature `tokio`), as [`connect`](Self::connect)
    /// opens a blocking one: TCP, authentication and `SELECT` within `connect_timeout`, then
    /// the name, while it is unknown the eviction policy, and the scripts batches call (one
    /// round trip within `io_timeout`). Any failure is [`Error::Unavailable`].
    #[cfg(feature = "tokio")]
    async fn connect_async(&self) -> Result<AsyncConn> {
        let unavailable = |reason: String| Error::Unavailable {
            server: self.name.clone(),
            reason,
        };
        let open = async {
            let stream = tokio::net::TcpStream::connect(self.addr).await?;
            // Small pipelined requests: do not let Nagle's algorithm hold them back.
            let _ = stream.set_nodelay(true);
            // No response timeout of the crate's: the caller bounds each exchange.
            let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
            let settings = self.client.get_connection_info().redis_settings();
            let (conn, driver) =
                redis::aio::MultiplexedConnection::new_with_config(settings, stream, config)
                    .await?;
            redis::RedisResult::Ok(AsyncConn {
                conn,
                driver: Some(Box::pin(driver)),
            })
        };
        let mut conn = match tokio::time::timeout(self.options.connect_timeout, open).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(unavailable(e.to_string())),
            Err(_) => {
                return Err(unavailable(format!(
                    "no connection within {:?}",
                    self.options.connect_timeout
                )))
            }
        };
        let mut setup = redis::pipe();
        let named = match self.setname() {
            Some(cmd) => {
                setup.add_command(cmd);
                true
            }
            None => false,
        };
        let read_policy = lock(&self.policy).current.is_none();
        if read_policy {
            Self::policy_commands(&mut setup);
        }
        // Batches send scripts by hash only, as on blocking connections: make sure the
        // server knows them (it does until it restarts, a new connection, or a
        // `SCRIPT FLUSH`). Their replies are not read: a refusal shows as `NOSCRIPT`.
        for script in [&self.append, &self.cas, &self.incr] {
            setup.cmd("SCRIPT").arg("LOAD").arg(script.src);
        }
        setup.ignore_errors();
        let replies = conn
            .query_pipe(&setup, self.options.io_timeout)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let mut replies = match replies {
            Value::Array(r) => r.into_iter(),
            other => return Err(unavailable(format!("unexpected reply {other:?}"))),
        };
        if named {
            if let Some(Value::ServerError(e)) = replies.next() {
                self.setname_refused(&e);
            }
        }
        if read_policy {
            let (config, info) = (replies.next(), replies.next());
            self.record_policy(config.as_ref(), info.as_ref());
        }
        Ok(conn)
    }

    /// Sends `pipe` (made without `atomic`) and returns one reply per command; error replies
    /// are returned as [`Value::ServerError`], not as an error.
    fn run(&self, pipe: &mut redis::Pipeline) -> Result<Vec<Value>> {
        if pipe.is_empty() {
            return Ok(Vec::new());
        }
        pipe.ignore_errors();
        let replies = self.exchange(true, |conn| pipe.query::<Value>(conn))?;
        self.replies(pipe.len(), replies)
    }

    /// The replies to a pipeline of `n` commands (made with `ignore_errors`), one per command.
    fn replies(&self, n: usize, replies: Value) -> Result<Vec<Value>> {
        match replies {
            Value::Array(r) if r.len() == n => Ok(r),
            other => Err(self.bad_reply(&other)),
        }
    }

    /// The `MGET`s reading `keys`, [`MGET_CHUNK`] keys per command (the blocking and
    /// non-blocking reads send the same).
    fn mget_cmds<'k>(keys: &'k [&'k str]) -> impl Iterator<Item = Cmd> + 'k {
        keys.chunks(MGET_CHUNK).map(|chunk| {
            let mut cmd = redis::cmd("MGET");
            cmd.arg(chunk);
            cmd
        })
    }

    /// The items of one `MGET` of `len` keys, in their order, from its reply (blocking and
    /// non-blocking reads, and a batch's gets, read it here). A missing key is `None`, and so
    /// is a key of another type (`MGET` answers nil for it); a value is an item by
    /// [`item_of`]; an error reply or any other shape is an error.
    fn mget_items(&self, len: usize, reply: Value) -> Result<Vec<Option<Item>>> {
        let values = match reply {
            Value::Array(v) if v.len() == len => v,
            other => return Err(self.bad_reply(&other)),
        };
        values
            .into_iter()
            .map(|v| match v {
                Value::Nil => Ok(None),
                Value::BulkString(bytes) => Ok(Some(item_of(bytes))),
                other => Err(self.bad_reply(&other)),
            })
            .collect()
    }

    /// Runs `script` once per call (`args(cmd, i)` adds the key count, key and arguments of
    /// call `i`), pipelined by hash; calls answered `NOSCRIPT` are sent again with the source.
    /// Replies in order.
    fn eval_multi(
        &self,
        script: &Lua,
        calls: usize,
        args: impl Fn(&mut Cmd, usize),
    ) -> Result<Vec<Value>> {
        let build = |verb: &str, body: &str, i: usize| {
            let mut c = redis::cmd(verb);
            c.arg(body).arg(1);
            args(&mut c, i);
            c
        };
        let mut pipe = redis::pipe();
        for i in 0..calls {
            pipe.add_command(build("EVALSHA", &script.sha, i));
        }
        let mut replies = self.run(&mut pipe)?;
        let unknown: Vec<usize> = replies
            .iter()
            .enumerate()
            .filter(|(_, v)| matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT"))
            .map(|(i, _)| i)
            .collect();
        if !unknown.is_empty() {
            let mut pipe = redis::pipe();
            for &i in &unknown {
                pipe.add_command(build("EVAL", script.src, i));
            }
            for (i, v) in unknown.into_iter().zip(self.run(&mut pipe)?) {
                replies[i] = v;
            }
        }
        Ok(replies)
    }

    /// A batch's commands, in order, and what decoding their replies needs (both clients).
    fn encode_batch(&self, stages: &[&[Op<'_>]]) -> Result<(Vec<Cmd>, EncodedBatch)> {
        for ops in stages {
            check_keys(ops.iter().map(|op| op.key()))?;
        }
        let limit = self.options.item_size;
        let mut cmds: Vec<Cmd> = Vec::new();
        let mut out: Vec<Vec<Option<OpReply>>> = Vec::with_capacity(stages.len());
        // Per stage: its gets (one MGET per chunk), then the ops sent, in order: the gets,
        // the other ops sent, the values its leases stored, and how many commands it sent.
        let mut sent = Vec::with_capacity(stages.len());
        let script = |c: &mut Cmd, lua: &Lua| {
            c.arg(&lua.sha).arg(1);
        };
        for ops in stages {
            let sent_before = cmds.len();
            let gets: Vec<usize> = (0..ops.len())
                .filter(|i| matches!(ops[*i], Op::Get(_)))
                .collect();
            for chunk in gets.chunks(MGET_CHUNK) {
                let keys: Vec<&str> = chunk.iter().map(|i| ops[*i].key()).collect();
                let mut mget = redis::cmd("MGET");
                mget.arg(keys);
                cmds.push(mget);
            }
            let mut replies = vec![None; ops.len()];
            let mut leases: Vec<Option<Vec<u8>>> = vec![None; ops.len()];
            let mut others = Vec::new();
            for (i, op) in ops.iter().enumerate() {
                let cmd = match *op {
                    Op::Get(_) => continue,
                    // A read, then an add of the marker: two commands, one reply.
                    Op::Lease(k, v, expiry) => {
                        let mut get = redis::cmd("GET");
                        get.arg(k);
                        cmds.push(get);
                        let stored = self.stored(if self.fits(v) { v } else { &[] });
                        let mut c = redis::cmd("SET");
                        c.arg(k).arg(&stored).arg("NX");
                        expire_args(&mut c, expiry);
                        leases[i] = Some(stored);
                        c
                    }
                    Op::Add(k, v, expiry) if self.fits(v) => {
                        let mut c = redis::cmd("SET");
                        c.arg(k).arg(self.stored(v)).arg("NX");
                        expire_args(&mut c, expiry);
                        c
                    }
                    Op::Add(..) => {
                        replies[i] = Some(OpReply::Added(false));
                        continue;
                    }
                    Op::Append(k, v) if self.fits(v) => {
                        let mut c = redis::cmd("EVALSHA");
                        script(&mut c, &self.append);
                        c.arg(k).arg(&self.next_token()[..]).arg(v).arg(limit);
                        c
                    }
                    Op::Append(..) => {
                        replies[i] = Some(OpReply::Appended(AppendOutcome::TooLarge));
                        continue;
                    }
                    Op::Cas(k, v, expiry, cas) if self.fits(v) => {
                        let secs = match expiry {
                            Expiry::Forever => 0,
                            Expiry::Seconds(s) => s.max(1),
                        };
                        let mut c = redis::cmd("EVALSHA");
                        script(&mut c, &self.cas);
                        c.arg(k)
                            .arg(&cas.to_be_bytes()[..])
                            .arg(self.stored(v))
                            .arg(secs);
                        c
                    }
                    Op::Cas(..) => {
                        replies[i] = Some(OpReply::Cas(CasOutcome::Changed));
                        continue;
                    }
                    Op::Delete(k) => {
                        let mut c = redis::cmd("DEL");
                        c.arg(k);
                        c
                    }
                    Op::Incr(k, delta) => {
                        let mut c = redis::cmd("EVALSHA");
                        script(&mut c, &self.incr);
                        c.arg(k).arg(delta.to_string()).arg(&self.next_token()[..]);
                        c
                    }
                };
                cmds.push(cmd);
                others.push(i);
            }
            out.push(replies);
            sent.push((gets, others, leases, cmds.len() - sent_before));
        }
        Ok((cmds, EncodedBatch { out, sent }))
    }

    /// Each op's reply from the `replies` to [`encode_batch`](Self::encode_batch)'s commands.
    fn decode_batch(
        &self,
        stages: &[&[Op<'_>]],
        encoded: EncodedBatch,
        replies: Vec<Value>,
    ) -> Result<Vec<Vec<OpReply>>> {
        let EncodedBatch { mut out, sent } = encoded;
        if replies.len() != sent.iter().map(|s| s.3).sum::<usize>() {
            return Err(self.protocol("a batch's replies do not match its commands"));
        }
        let mut replies = replies.into_iter();
        for ((ops, (gets, others, mut leases, _)), stage) in
            stages.iter().zip(sent).zip(out.iter_mut())
        {
            for chunk in gets.chunks(MGET_CHUNK) {
                let items = self.mget_items(chunk.len(), replies.next().unwrap_or(Value::Nil))?;
                for (i, item) in chunk.iter().zip(items) {
                    stage[*i] = Some(OpReply::Value(item));
                }
            }
            for i in others {
                if let Op::Lease(..) = ops[i] {
                    let (read, add) = (replies.next(), replies.next());
                    stage[i] = Some(match (read, add) {
                        (Some(Value::BulkString(bytes)), Some(Value::Nil | Value::Okay)) => {
                            OpReply::Leased {
                                found: Some(item_of(bytes)),
                                won: None,
                            }
                        }
                        (Some(Value::Nil), Some(Value::Okay)) => {
                            let item = item_of(leases[i].take().unwrap_or_default());
                            OpReply::Leased {
                                found: None,
                                won: Some(Placeholder {
                                    value: item.value,
                                    cas: Some(item.cas),
                                }),
                            }
                        }
                        (Some(Value::Nil), Some(Value::Nil)) => OpReply::Leased {
                            found: None,
                            won: None,
                        },
                        (read, add) => {
                            return Err(self.bad_reply(&Value::Array(
                                [read, add].into_iter().flatten().collect(),
                            )))
                        }
                    });
                    continue;
                }
                let reply = replies.next().unwrap_or(Value::Nil);
                stage[i] = Some(match (ops[i], &reply) {
                    (Op::Add(..), Value::Okay) => OpReply::Added(true),
                    (Op::Add(..), Value::Nil) => OpReply::Added(false),
                    (Op::Append(..), Value::Int(0)) => OpReply::Appended(AppendOutcome::Missing),
                    (Op::Append(..), Value::Int(1)) => OpReply::Appended(AppendOutcome::Appended),
                    (Op::Append(..), Value::Int(2)) => OpReply::Appended(AppendOutcome::TooLarge),
                    (Op::Cas(..), Value::Int(0)) => OpReply::Cas(CasOutcome::Missing),
                    (Op::Cas(..), Value::Int(1)) => OpReply::Cas(CasOutcome::Changed),
                    (Op::Cas(..), Value::Int(2)) => OpReply::Cas(CasOutcome::Stored),
                    (Op::Delete(_), Value::Int(_)) => OpReply::Deleted,
                    (Op::Incr(..), Value::Nil) => OpReply::Counter(None),
                    (Op::Incr(..), Value::Int(-1)) => OpReply::NotANumber,
                    (Op::Incr(..), Value::BulkString(n)) => std::str::from_utf8(n)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .map(|n| OpReply::Counter(Some(n)))
                        .ok_or_else(|| self.protocol(&format!("incr answered {n:?}")))?,
                    _ => return Err(self.bad_reply(&reply)),
                });
            }
        }
        Ok(out
            .into_iter()
            .map(|s| {
                s.into_iter()
                    .map(|r| r.unwrap_or(OpReply::Deleted))
                    .collect()
            })
            .collect())
    }

    /// A script's small-integer outcome.
    fn outcome(&self, v: &Value) -> Result<i64> {
        match v {
            Value::Int(n) => Ok(*n),
            other => Err(self.bad_reply(other)),
        }
    }
}

impl Backend for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn max_item_size(&self) -> usize {
        self.options.item_size
    }

    fn get_multi(&self, keys: &[&str]) -> Result<HashMap<String, Item>> {
        check_keys(keys.iter().copied())?;
        let mut out = HashMap::with_capacity(keys.len());
        if keys.is_empty() {
            return Ok(out);
        }
        let mut pipe = redis::pipe();
        for cmd in Self::mget_cmds(keys) {
            pipe.add_command(cmd);
        }
        let replies = self.run(&mut pipe)?;
        for (chunk, reply) in keys.chunks(MGET_CHUNK).zip(replies) {
            for (key, item) in chunk.iter().zip(self.mget_items(chunk.len(), reply)?) {
                if let Some(item) = item {
                    out.insert(key.to_string(), item);
                }
            }
        }
        Ok(out)
    }

    /// The same `MGET`s as [`get_multi`](Backend::get_multi) on the crate's async connection
    /// (feature `tokio`), their replies read by the same code, under the same fail-fast
    /// window and pool rules; the read bounded by `io_timeout` as a whole (see the module
    /// docs, "Connections"). `None` outside a tokio runtime.
    #[cfg(feature = "tokio")]
    fn get_multi_async<'a>(&'a self, keys: &'a [&'a str]) -> Option<AsyncGets<'a>> {
        tokio::runtime::Handle::try_current().ok()?;
        Some(Box::pin(async move {
            check_keys(keys.iter().copied())?;
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let cmds: Vec<Cmd> = Self::mget_cmds(keys).collect();
            let replies = self.exchange_async(&cmds).await?;
            let mut out = Vec::with_capacity(keys.len());
            for (chunk, reply) in keys.chunks(MGET_CHUNK).zip(replies) {
                out.extend(self.mget_items(chunk.len(), reply)?);
            }
            Ok(out)
        }))
    }

    fn batch(&self, stages: &[&[Op<'_>]]) -> Result<Vec<Vec<OpReply>>> {
        // One server that runs a connection's commands in order: the whole batch is one
        // pipeline.
        let (cmds, encoded) = self.encode_batch(stages)?;
        let mut pipe = redis::pipe();
        for cmd in cmds {
            pipe.add_command(cmd);
        }
        let replies = self.run(&mut pipe)?;
        if refused_scripts(&replies) {
            // The scripts were flushed since they were loaded: the commands after the
            // refused ones ran out of order. Load them for the next call, and fail this one
            // (every caller treats a failed batch as not done).
            let _ = self.exchange(true, |conn| self.load_scripts(conn));
            return Err(self.protocol("NOSCRIPT in a batch (scripts flushed); not completed"));
        }
        self.decode_batch(stages, encoded, replies)
    }

    /// [`batch`](Backend::batch) on the crate's async connection (feature `tokio`): the same
    /// commands, their replies decoded by the same code ([`Redis::encode_batch`],
    /// [`Redis::decode_batch`]), under the fail-fast window and pool rules of the
    /// non-blocking reads; `None` outside a tokio runtime.
    #[cfg(feature = "tokio")]
    fn batch_async<'a>(&'a self, stages: &'a [&'a [Op<'a>]]) -> Option<AsyncBatch<'a>> {
        tokio::runtime::Handle::try_current().ok()?;
        Some(Box::pin(async move {
            let (cmds, encoded) = self.encode_batch(stages)?;
            let replies = if cmds.is_empty() {
                Vec::new()
            } else {
                self.exchange_async(&cmds).await?
            };
            if refused_scripts(&replies) {
                let mut load = Vec::new();
                for script in [&self.append, &self.cas, &self.incr] {
                    let mut c = redis::cmd("SCRIPT");
                    c.arg("LOAD").arg(script.src);
                    load.push(c);
                }
                let _ = self.exchange_async(&load).await;
                return Err(self.protocol("NOSCRIPT in a batch (scripts flushed); not completed"));
            }
            self.decode_batch(stages, encoded, replies)
        }))
    }

    fn add_multi(&self, items: &[(&str, &[u8])], expiry: Expiry) -> Result<Vec<bool>> {
        check_keys(items.iter().map(|i| i.0))?;
        let mut pipe = redis::pipe();
        let mut sent = Vec::new();
        for (i, (k, v)) in items.iter().enumerate() {
            if self.fits(v) {
                let mut c = redis::cmd("SET");
                c.arg(*k).arg(self.stored(v)).arg("NX");
                expire_args(&mut c, expiry);
                pipe.add_command(c);
                sent.push(i);
            }
        }
        let mut out = vec![false; items.len()];
        for (i, reply) in sent.into_iter().zip(self.run(&mut pipe)?) {
            out[i] = match reply {
                Value::Okay => true,
                Value::Nil => false,
                other => return Err(self.bad_reply(&other)),
            };
        }
        Ok(out)
    }

    fn set_multi(&self, items: &[(&str, &[u8])], expiry: Expiry) -> Result<()> {
        check_keys(items.iter().map(|i| i.0))?;
        let mut pipe = redis::pipe();
        for (k, v) in items {
            if self.fits(v) {
                let mut c = redis::cmd("SET");
                c.arg(*k).arg(self.stored(v));
                expire_args(&mut c, expiry);
                pipe.add_command(c);
            } else {
                // Not stored: drop the old value, as memcached does, so no reader sees a
                // value older than the one that failed.
                pipe.cmd("DEL").arg(*k);
            }
        }
        for reply in self.run(&mut pipe)? {
            if !matches!(reply, Value::Okay | Value::Int(_)) {
                return Err(self.bad_reply(&reply));
            }
        }
        Ok(())
    }

    fn append_multi(&self, items: &[(&str, &[u8])]) -> Result<Vec<AppendOutcome>> {
        check_keys(items.iter().map(|i| i.0))?;
        let mut out = vec![AppendOutcome::TooLarge; items.len()];
        let sent: Vec<usize> = (0..items.len())
            .filter(|i| self.fits(items[*i].1))
            .collect();
        let limit = self.options.item_size;
        let replies = self.eval_multi(&self.append, sent.len(), |c, n| {
            let (k, v) = items[sent[n]];
            c.arg(k).arg(&self.next_token()[..]).arg(v).arg(limit);
        })?;
        for (i, reply) in sent.into_iter().zip(replies) {
            out[i] = match self.outcome(&reply)? {
                0 => AppendOutcome::Missing,
                1 => AppendOutcome::Appended,
                2 => AppendOutcome::TooLarge,
                _ => return Err(self.bad_reply(&reply)),
            };
        }
        Ok(out)
    }

    fn cas(&self, key: &str, value: &[u8], expiry: Expiry, cas: u64) -> Result<CasOutcome> {
        Ok(self
            .cas_multi(&[(key, value, cas)], expiry)?
            .first()
            .copied()
            .unwrap_or(CasOutcome::Changed))
    }

    fn cas_multi(&self, items: &[(&str, &[u8], u64)], expiry: Expiry) -> Result<Vec<CasOutcome>> {
        check_keys(items.iter().map(|i| i.0))?;
        // Over the item size: not stored, like memcached's too-large `cas`.
        let mut out = vec![CasOutcome::Changed; items.len()];
        let sent: Vec<usize> = (0..items.len())
            .filter(|i| self.fits(items[*i].1))
            .collect();
        let secs = match expiry {
            Expiry::Forever => 0,
            Expiry::Seconds(s) => s.max(1),
        };
        let replies = self.eval_multi(&self.cas, sent.len(), |c, n| {
            let (k, v, cas) = items[sent[n]];
            c.arg(k)
                .arg(&cas.to_be_bytes()[..])
                .arg(self.stored(v))
                .arg(secs);
        })?;
        for (i, reply) in sent.into_iter().zip(replies) {
            out[i] = match self.outcome(&reply)? {
                0 => CasOutcome::Missing,
                1 => CasOutcome::Changed,
                2 => CasOutcome::Stored,
                _ => return Err(self.bad_reply(&reply)),
            };
        }
        Ok(out)
    }

    fn delete_multi(&self, keys: &[&str]) -> Result<()> {
        check_keys(keys.iter().copied())?;
        let mut pipe = redis::pipe();
        for chunk in keys.chunks(MGET_CHUNK) {
            pipe.cmd("DEL").arg(chunk);
        }
        for reply in self.run(&mut pipe)? {
            if !matches!(reply, Value::Int(_)) {
                return Err(self.bad_reply(&reply));
            }
        }
        Ok(())
    }

    fn incr(&self, key: &str, delta: u64) -> Result<Option<u64>> {
        match self.incr_multi(&[key], delta)?.pop() {
            Some(r) => r,
            None => Err(self.protocol("no reply to incr")),
        }
    }

    fn incr_multi(&self, keys: &[&str], delta: u64) -> Result<Vec<Result<Option<u64>>>> {
        check_keys(keys.iter().copied())?;
        let delta = delta.to_string();
        let replies = self.eval_multi(&self.incr, keys.len(), |c, n| {
            c.arg(keys[n]).arg(&delta).arg(&self.next_token()[..]);
        })?;
        if replies.len() != keys.len() {
            return Err(self.protocol("wrong number of replies to incr"));
        }
        Ok(keys
            .iter()
            .zip(&replies)
            .map(|(key, reply)| match reply {
                Value::Nil => Ok(None),
                Value::Int(-1) => Err(Error::NotANumber {
                    key: key.to_string(),
                }),
                Value::BulkString(n) => std::str::from_utf8(n)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .map(Some)
                    .ok_or_else(|| self.protocol(&format!("incr answered {n:?}"))),
                other => Err(self.bad_reply(other)),
            })
            .collect())
    }

    fn probe(&self) -> Result<()> {
        // Ignores the fail-fast window; a success clears it.
        let reply = self.exchange(false, |conn| redis::cmd("PING").query::<Value>(conn));
        match reply {
            Ok(Value::SimpleString(s)) if s == "PONG" => Ok(()),
            Ok(other) => Err(self.bad_reply(&other)),
            Err(e) => {
                self.mark_down();
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        let t = parse_target("redis://u:p@[::1]:6380/4").unwrap();
        assert_eq!(
            t,
            Target {
                host: "::1".into(),
                port: 6380,
                db: Some(4),
                username: Some("u".into()),
                password: Some("p".into()),
            }
        );
        let t = parse_target("localhost").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.db), ("localhost", 6379, None));
        let t = parse_target("redis://:secret@h/").unwrap();
        assert_eq!(
            (t.username, t.password, t.db),
            (None, Some("secret".into()), None)
        );
        for bad in [
            "memcached://h",
            "redis://",
            "redis://h:0",
            "redis://h:x",
            "redis://h/x",
            "redis://a,b",
            "redis://h?prefix=a",
            "redis://nocolon@h",
            "redis://[::1",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_are_distinct_and_short_values_get_tagged_tokens() {
        let r = Redis::new("127.0.0.1", RedisOptions::default()).unwrap();
        let tokens: std::collections::HashSet<[u8; 8]> =
            (0..10_000).map(|_| r.next_token()).collect();
        assert_eq!(tokens.len(), 10_000);
        let item = item_of(b"12345678abc".to_vec());
        assert_eq!(item.value, b"abc");
        assert_eq!(item.cas, u64::from_be_bytes(*b"12345678"));
        let short = item_of(b"ab".to_vec());
        assert_eq!(short.value, b"ab");
        assert_eq!(short.cas.to_be_bytes(), [2, b'a', b'b', 0, 0, 0, 0, 0]);
        assert_ne!(item_of(Vec::new()).cas, item_of(vec![0]).cas);
    }

    #[test]
    fn policies_parse() {
        for name in [
            "noeviction",
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
        ] {
            let p = EvictionPolicy::parse(name);
            assert_eq!(p.as_str(), name);
            assert_eq!(p.evicts_keys_without_ttl(), name.starts_with("allkeys"));
        }
        assert!(EvictionPolicy::parse("allkeys-new").evicts_keys_without_ttl());
        assert!(!EvictionPolicy::parse("volatile-new").evicts_keys_without_ttl());
        assert!(EvictionPolicy::Unknown.evicts_keys_without_ttl());
    }
}
