//! memcached backend: a small client for memcached's text protocol.
//!
//! Why not the `memcache` crate: its client places keys by `DefaultHasher % n` (not stable
//! across Rust versions, and a resize moves almost every key), has no multi-set, multi-append
//! or multi-delete, reports `add`/`append` outcomes differently per protocol, and pulls in
//! OpenSSL by default. What we need is a few hundred lines: pipelined batches per server
//! (every command of a batch is written, then every reply is read: one round trip per server,
//! and never `noreply`, so a failed invalidation is always seen), CAS tokens, rendezvous
//! placement over blake3, a small connection pool per server, and fail-fast when a server is
//! down.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{check_keys, AppendOutcome, Backend, CasOutcome, Item};
use crate::error::{ConfigError, Error, Result};
use crate::timeout::Expiry;

/// Connection settings of a [`Memcached`] backend.
///
/// ```
/// use caching_core::backend::memcached::MemcachedOptions;
/// let o = MemcachedOptions::default();
/// assert_eq!(o.pool_size, 16);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemcachedOptions {
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for each read or write on a connection.
    pub io_timeout: Duration,
    /// Idle connections kept per server (more are opened under load and closed after use).
    pub pool_size: usize,
    /// After a failure, how long a server is considered down (calls fail fast) before the
    /// next attempt to reach it.
    pub retry_after: Duration,
}

impl Default for MemcachedOptions {
    fn default() -> Self {
        MemcachedOptions {
            connect_timeout: Duration::from_millis(250),
            io_timeout: Duration::from_millis(500),
            pool_size: 16,
            retry_after: Duration::from_secs(1),
        }
    }
}

const DEFAULT_ITEM_SIZE: usize = 1024 * 1024;
/// Keys per `gets` command (memcached splits long key lists, but keep lines moderate).
const GET_CHUNK: usize = 100;

#[derive(Debug)]
struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn line(&mut self, server: &str) -> Result<String> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| io_err(server, e))?;
        if n == 0 || !line.ends_with("\r\n") {
            return Err(io_err(
                server,
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"),
            ));
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }
}

fn io_err(server: &str, source: std::io::Error) -> Error {
    Error::Io {
        server: server.to_string(),
        source,
    }
}

fn protocol_err(server: &str, line: &str) -> Error {
    Error::Protocol {
        server: server.to_string(),
        line: line.chars().take(200).collect(),
    }
}

#[derive(Debug)]
struct Server {
    name: String,
    addr: SocketAddr,
    /// blake3 of the server name, the rendezvous seed.
    seed: [u8; 32],
    idle: Mutex<Vec<Conn>>,
    down_until: Mutex<Option<Instant>>,
    item_size: Mutex<Option<usize>>,
}

/// The memcached backend.
///
/// ```no_run
/// use caching_core::backend::{Backend, memcached::{Memcached, MemcachedOptions}};
/// use caching_core::Expiry;
/// let mc = Memcached::new(&["127.0.0.1:11211"], MemcachedOptions::default()).unwrap();
/// mc.set("greeting", b"hello", Expiry::Forever).unwrap();
/// ```
#[derive(Debug)]
pub struct Memcached {
    servers: Vec<Server>,
    options: MemcachedOptions,
}

/// One pipelined command: its text (with data block) and how to read its reply.
enum Cmd<'a> {
    Store {
        verb: &'static str,
        key: &'a str,
        value: &'a [u8],
        exptime: u64,
        cas: Option<u64>,
    },
    Delete(&'a str),
    Incr(&'a str, u64),
}

#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Stored,
    NotStored,
    Exists,
    NotFound,
    Deleted,
    TooLarge,
    Number(u64),
    /// `CLIENT_ERROR cannot increment or decrement non-numeric value`.
    NonNumeric,
}

impl Memcached {
    /// A backend over `servers` (`host:port` each). Addresses are resolved now; nothing is
    /// connected until first use.
    pub fn new<S: AsRef<str>>(servers: &[S], options: MemcachedOptions) -> Result<Self> {
        if servers.is_empty() {
            return Err(ConfigError::Url {
                url: String::new(),
                reason: "no memcached server given".into(),
            }
            .into());
        }
        let mut out = Vec::new();
        for s in servers {
            let name = s.as_ref().trim().to_string();
            let addr = name
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| ConfigError::Url {
                    url: name.clone(),
                    reason: "not a resolvable host:port".into(),
                })?;
            out.push(Server {
                seed: *blake3::hash(name.as_bytes()).as_bytes(),
                name,
                addr,
                idle: Mutex::new(Vec::new()),
                down_until: Mutex::new(None),
                item_size: Mutex::new(None),
            });
        }
        Ok(Memcached {
            servers: out,
            options,
        })
    }

    /// Index of the server that owns `key`: rendezvous (highest random weight) hashing over
    /// blake3, so every process places keys alike and adding a server moves only its share.
    fn server_for(&self, key: &str) -> usize {
        if self.servers.len() == 1 {
            return 0;
        }
        let mut best = (0usize, [0u8; 8]);
        for (i, s) in self.servers.iter().enumerate() {
            let mut h = blake3::Hasher::new();
            h.update(&s.seed);
            h.update(key.as_bytes());
            let mut w = [0u8; 8];
            w.copy_from_slice(&h.finalize().as_bytes()[..8]);
            if i == 0 || w > best.1 {
                best = (i, w);
            }
        }
        best.0
    }

    /// The server name (`host:port`) a key is placed on.
    pub fn server_of(&self, key: &str) -> &str {
        &self.servers[self.server_for(key)].name
    }

    fn group<'k, T>(
        &self,
        items: impl IntoIterator<Item = (usize, &'k str, T)>,
    ) -> Vec<Vec<(usize, T)>> {
        let mut groups: Vec<Vec<(usize, T)>> =
            (0..self.servers.len()).map(|_| Vec::new()).collect();
        for (i, key, t) in items {
            groups[self.server_for(key)].push((i, t));
        }
        groups
    }

    fn checkout(&self, s: &Server) -> Result<Conn> {
        if let Some(until) = *lock(&s.down_until) {
            if Instant::now() < until {
                return Err(Error::Unavailable {
                    server: s.name.clone(),
                    reason: "marked down after a recent failure".into(),
                });
            }
        }
        self.connect(s)
    }

    /// A pooled connection, or a new one, whatever the fail-fast state.
    fn connect(&self, s: &Server) -> Result<Conn> {
        if let Some(c) = lock(&s.idle).pop() {
            return Ok(c);
        }
        let stream =
            TcpStream::connect_timeout(&s.addr, self.options.connect_timeout).map_err(|e| {
                self.mark_down(s);
                Error::Unavailable {
                    server: s.name.clone(),
                    reason: e.to_string(),
                }
            })?;
        let _ = stream.set_nodelay(true);
        stream
            .set_read_timeout(Some(self.options.io_timeout))
            .and_then(|_| stream.set_write_timeout(Some(self.options.io_timeout)))
            .map_err(|e| io_err(&s.name, e))?;
        let mut conn = Conn {
            reader: BufReader::new(stream),
        };
        if lock(&s.item_size).is_none() {
            let size = Self::read_item_size(&mut conn, &s.name)?;
            *lock(&s.item_size) = Some(size);
        }
        Ok(conn)
    }

    fn read_item_size(conn: &mut Conn, server: &str) -> Result<usize> {
        conn.reader
            .get_mut()
            .write_all(b"stats settings\r\n")
            .map_err(|e| io_err(server, e))?;
        let mut size = DEFAULT_ITEM_SIZE;
        loop {
            let line = conn.line(server)?;
            if line == "END" {
                return Ok(size);
            }
            if let Some(v) = line.strip_prefix("STAT item_size_max ") {
                size = v.trim().parse().unwrap_or(DEFAULT_ITEM_SIZE);
            } else if !line.starts_with("STAT ") {
                return Err(protocol_err(server, &line));
            }
        }
    }

    fn checkin(&self, s: &Server, conn: Conn) {
        let mut idle = lock(&s.idle);
        if idle.len() < self.options.pool_size {
            idle.push(conn);
        }
    }

    fn mark_down(&self, s: &Server) {
        *lock(&s.down_until) = Some(Instant::now() + self.options.retry_after);
        lock(&s.idle).clear();
    }

    /// Runs `f` on a pooled connection of server `i`; a failed connection is dropped and the
    /// server marked down, so the next calls fail fast.
    fn with_conn<T>(&self, i: usize, f: impl FnOnce(&mut Conn, &str) -> Result<T>) -> Result<T> {
        let s = &self.servers[i];
        let mut conn = self.checkout(s)?;
        match f(&mut conn, &s.name) {
            Ok(v) => {
                *lock(&s.down_until) = None;
                self.checkin(s, conn);
                Ok(v)
            }
            Err(e) => {
                // The connection is in an unknown state: drop it. Only a failure to talk to
                // the server marks it down; an error answer (CLIENT_ERROR ...) does not.
                if matches!(e, Error::Io { .. } | Error::Unavailable { .. }) {
                    self.mark_down(s);
                }
                Err(e)
            }
        }
    }

    fn item_limit(&self) -> usize {
        self.servers
            .iter()
            .filter_map(|s| *lock(&s.item_size))
            .min()
            .unwrap_or(DEFAULT_ITEM_SIZE)
    }

    /// Whether a value fits in an item (memcached counts key and header too; keep a margin).
    fn fits(&self, key: &str, value: &[u8]) -> bool {
        value.len() + key.len() + 64 <= self.item_limit()
    }

    /// Sends `cmds` to one server in one write and reads every reply.
    fn pipeline(&self, server: usize, cmds: &[Cmd<'_>]) -> Result<Vec<Reply>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        self.with_conn(server, |conn, name| {
            let mut buf = Vec::new();
            for c in cmds {
                match c {
                    Cmd::Store {
                        verb,
                        key,
                        value,
                        exptime,
                        cas,
                    } => {
                        write!(buf, "{verb} {key} 0 {exptime} {}", value.len()).ok();
                        if let Some(cas) = cas {
                            write!(buf, " {cas}").ok();
                        }
                        buf.extend_from_slice(b"\r\n");
                        buf.extend_from_slice(value);
                        buf.extend_from_slice(b"\r\n");
                    }
                    Cmd::Delete(key) => {
                        write!(buf, "delete {key}\r\n").ok();
                    }
                    Cmd::Incr(key, d) => {
                        write!(buf, "incr {key} {d}\r\n").ok();
                    }
                }
            }
            conn.reader
                .get_mut()
                .write_all(&buf)
                .map_err(|e| io_err(name, e))?;
            let mut replies = Vec::with_capacity(cmds.len());
            for _ in cmds {
                let line = conn.line(name)?;
                let reply = match line.as_str() {
                    "STORED" => Reply::Stored,
                    "NOT_STORED" => Reply::NotStored,
                    "EXISTS" => Reply::Exists,
                    "NOT_FOUND" => Reply::NotFound,
                    "DELETED" => Reply::Deleted,
                    l if l.starts_with("SERVER_ERROR object too large")
                        || l.starts_with("SERVER_ERROR out of memory") =>
                    {
                        Reply::TooLarge
                    }
                    l if l.starts_with("CLIENT_ERROR cannot increment") => Reply::NonNumeric,
                    l => match l.parse::<u64>() {
                        Ok(n) => Reply::Number(n),
                        Err(_) => return Err(protocol_err(name, l)),
                    },
                };
                replies.push(reply);
            }
            Ok(replies)
        })
    }

    /// Runs storage commands grouped per server, returning replies in input order.
    fn store_multi(
        &self,
        verb: &'static str,
        items: &[(&str, &[u8])],
        exptime: u64,
    ) -> Result<Vec<Reply>> {
        check_keys(items.iter().map(|i| i.0))?;
        let mut out: Vec<Option<Reply>> = (0..items.len()).map(|_| None).collect();
        let groups = self.group(
            items
                .iter()
                .enumerate()
                .map(|(i, (k, v))| (i, *k, (*k, *v))),
        );
        for (server, group) in groups.iter().enumerate() {
            let mut cmds = Vec::new();
            let mut idx = Vec::new();
            for (i, (key, value)) in group {
                if self.fits(key, value) {
                    cmds.push(Cmd::Store {
                        verb,
                        key,
                        value,
                        exptime,
                        cas: None,
                    });
                    idx.push(*i);
                } else {
                    out[*i] = Some(Reply::TooLarge);
                }
            }
            for (i, r) in idx.into_iter().zip(self.pipeline(server, &cmds)?) {
                out[i] = Some(r);
            }
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or(Reply::TooLarge))
            .collect())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Backend for Memcached {
    fn name(&self) -> &'static str {
        "memcached"
    }

    fn max_item_size(&self) -> usize {
        self.item_limit()
    }

    fn get_multi(&self, keys: &[&str]) -> Result<HashMap<String, Item>> {
        check_keys(keys.iter().copied())?;
        let mut out = HashMap::with_capacity(keys.len());
        let groups = self.group(keys.iter().enumerate().map(|(i, k)| (i, *k, *k)));
        for (server, group) in groups.iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            self.with_conn(server, |conn, name| {
                let mut buf = Vec::new();
                for chunk in group.chunks(GET_CHUNK) {
                    buf.extend_from_slice(b"gets");
                    for (_, k) in chunk {
                        buf.push(b' ');
                        buf.extend_from_slice(k.as_bytes());
                    }
                    buf.extend_from_slice(b"\r\n");
                }
                conn.reader
                    .get_mut()
                    .write_all(&buf)
                    .map_err(|e| io_err(name, e))?;
                let mut ends = 0;
                let expected = group.len().div_ceil(GET_CHUNK);
                while ends < expected {
                    let line = conn.line(name)?;
                    if line == "END" {
                        ends += 1;
                        continue;
                    }
                    let parts: Vec<&str> = line.split(' ').collect();
                    let (key, len, cas) = match parts.as_slice() {
                        ["VALUE", key, _flags, len, cas] => (*key, *len, *cas),
                        _ => return Err(protocol_err(name, &line)),
                    };
                    let len: usize = len.parse().map_err(|_| protocol_err(name, &line))?;
                    let cas: u64 = cas.parse().map_err(|_| protocol_err(name, &line))?;
                    let mut value = vec![0u8; len + 2];
                    conn.reader
                        .read_exact(&mut value)
                        .map_err(|e| io_err(name, e))?;
                    if &value[len..] != b"\r\n" {
                        return Err(protocol_err(name, "data block not terminated by CRLF"));
                    }
                    value.truncate(len);
                    out.insert(key.to_string(), Item { value, cas });
                }
                Ok(())
            })?;
        }
        Ok(out)
    }

    fn add_multi(&self, items: &[(&str, &[u8])], expiry: Expiry) -> Result<Vec<bool>> {
        let replies = self.store_multi("add", items, expiry.memcached_exptime())?;
        Ok(replies.into_iter().map(|r| r == Reply::Stored).collect())
    }

    fn set_multi(&self, items: &[(&str, &[u8])], expiry: Expiry) -> Result<()> {
        let replies = self.store_multi("set", items, expiry.memcached_exptime())?;
        // A set rejected as too large leaves the old value in place on some servers; delete
        // it, so a reader never sees a value older than the one we failed to store.
        let too_large: Vec<&str> = items
            .iter()
            .zip(&replies)
            .filter(|(_, r)| **r == Reply::TooLarge)
            .map(|((k, _), _)| *k)
            .collect();
        if !too_large.is_empty() {
            self.delete_multi(&too_large)?;
        }
        Ok(())
    }

    fn append_multi(&self, items: &[(&str, &[u8])]) -> Result<Vec<AppendOutcome>> {
        let replies = self.store_multi("append", items, 0)?;
        // memcached answers NOT_STORED both when the key is missing and when the appended
        // item would exceed the item size. Tell them apart by reading the key (a missing key
        // costs nothing to ask about; a full one is read again by the compaction that
        // follows anyway), so a full flush list is compacted instead of looking missing. A
        // key that exists but has room was created since the append: report it missing, and
        // the caller's add fails and appends again.
        let ambiguous: Vec<&str> = items
            .iter()
            .zip(&replies)
            .filter(|(_, r)| **r == Reply::NotStored)
            .map(|((k, _), _)| *k)
            .collect();
        let existing = if ambiguous.is_empty() {
            HashMap::new()
        } else {
            self.get_multi(&ambiguous)?
        };
        let limit = self.item_limit();
        Ok(items
            .iter()
            .zip(replies)
            .map(|((k, v), r)| match r {
                Reply::Stored => AppendOutcome::Appended,
                Reply::TooLarge => AppendOutcome::TooLarge,
                Reply::NotStored
                    if existing
                        .get(*k)
                        .is_some_and(|i| i.value.len() + v.len() + k.len() + 64 > limit) =>
                {
                    AppendOutcome::TooLarge
                }
                _ => AppendOutcome::Missing,
            })
            .collect())
    }

    fn cas(&self, key: &str, value: &[u8], expiry: Expiry, cas: u64) -> Result<CasOutcome> {
        check_keys([key])?;
        if !self.fits(key, value) {
            return Ok(CasOutcome::Changed);
        }
        let cmd = Cmd::Store {
            verb: "cas",
            key,
            value,
            exptime: expiry.memcached_exptime(),
            cas: Some(cas),
        };
        let reply = self.pipeline(self.server_for(key), &[cmd])?;
        Ok(match reply.first() {
            Some(Reply::Stored) => CasOutcome::Stored,
            Some(Reply::NotFound) => CasOutcome::Missing,
            _ => CasOutcome::Changed,
        })
    }

    fn cas_multi(&self, items: &[(&str, &[u8], u64)], expiry: Expiry) -> Result<Vec<CasOutcome>> {
        check_keys(items.iter().map(|i| i.0))?;
        let exptime = expiry.memcached_exptime();
        let mut out = vec![CasOutcome::Changed; items.len()];
        let groups = self.group(items.iter().enumerate().map(|(i, it)| (i, it.0, *it)));
        for (server, group) in groups.iter().enumerate() {
            let mut cmds = Vec::new();
            let mut idx = Vec::new();
            for (i, (key, value, cas)) in group {
                if self.fits(key, value) {
                    cmds.push(Cmd::Store {
                        verb: "cas",
                        key,
                        value,
                        exptime,
                        cas: Some(*cas),
                    });
                    idx.push(*i);
                }
            }
            for (i, r) in idx.into_iter().zip(self.pipeline(server, &cmds)?) {
                out[i] = match r {
                    Reply::Stored => CasOutcome::Stored,
                    Reply::NotFound => CasOutcome::Missing,
                    _ => CasOutcome::Changed,
                };
            }
        }
        Ok(out)
    }

    fn delete_multi(&self, keys: &[&str]) -> Result<()> {
        check_keys(keys.iter().copied())?;
        let groups = self.group(keys.iter().enumerate().map(|(i, k)| (i, *k, *k)));
        for (server, group) in groups.iter().enumerate() {
            let cmds: Vec<Cmd<'_>> = group.iter().map(|(_, k)| Cmd::Delete(k)).collect();
            for r in self.pipeline(server, &cmds)? {
                if !matches!(r, Reply::Deleted | Reply::NotFound) {
                    return Err(protocol_err(&self.servers[server].name, &format!("{r:?}")));
                }
            }
        }
        Ok(())
    }

    fn probe(&self) -> Result<()> {
        let mut first_error = None;
        for s in &self.servers {
            let answered = self.connect(s).and_then(|mut conn| {
                conn.reader
                    .get_mut()
                    .write_all(b"version\r\n")
                    .map_err(|e| io_err(&s.name, e))?;
                let line = conn.line(&s.name)?;
                if !line.starts_with("VERSION") {
                    return Err(protocol_err(&s.name, &line));
                }
                Ok(conn)
            });
            match answered {
                Ok(conn) => {
                    *lock(&s.down_until) = None;
                    self.checkin(s, conn);
                }
                Err(e) => {
                    self.mark_down(s);
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn incr(&self, key: &str, delta: u64) -> Result<Option<u64>> {
        check_keys([key])?;
        let server = self.server_for(key);
        let reply = self.pipeline(server, &[Cmd::Incr(key, delta)])?;
        match reply.first() {
            Some(Reply::Number(n)) => Ok(Some(*n)),
            Some(Reply::NonNumeric) => Err(Error::NotANumber {
                key: key.to_string(),
            }),
            Some(Reply::NotFound) => Ok(None),
            r => Err(protocol_err(&self.servers[server].name, &format!("{r:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_placement_is_stable_and_spread() {
        let mc = Memcached::new(
            &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
            MemcachedOptions::default(),
        )
        .unwrap();
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            counts[mc.server_for(&format!("key{i}"))] += 1;
        }
        assert!(counts.iter().all(|c| *c > 800), "{counts:?}");
        // Pinned: placement must not change across builds or Rust versions.
        let placed: Vec<usize> = (0..8).map(|i| mc.server_for(&format!("k{i}"))).collect();
        let again: Vec<usize> = (0..8).map(|i| mc.server_for(&format!("k{i}"))).collect();
        assert_eq!(placed, again);
    }

    #[test]
    fn removing_a_server_moves_only_its_keys() {
        // An address that does not parse is a configuration error, reported at construction.
        assert!(Memcached::new(&["127.0.0.1"], MemcachedOptions::default()).is_err());
        let three = Memcached::new(
            &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
            MemcachedOptions::default(),
        )
        .unwrap();
        let two =
            Memcached::new(&["127.0.0.1:1", "127.0.0.1:2"], MemcachedOptions::default()).unwrap();
        for i in 0..1000 {
            let k = format!("key{i}");
            let a = three.server_of(&k);
            if a != "127.0.0.1:3" {
                assert_eq!(a, two.server_of(&k));
            }
        }
    }
}
