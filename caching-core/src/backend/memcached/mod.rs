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
//!
//! A cache must never take the application down with it, so the client trusts nothing a server
//! sends: every length is bounded by the server's item size before anything is allocated
//! (a reply announcing a terabyte is a protocol error, not an allocation), every exchange runs
//! under a deadline (`op_timeout`) that a server trickling bytes cannot stretch, a reply that
//! breaks the protocol drops its connection, and a server or proxy that refuses
//! `stats settings` is assumed to have memcached's default 1 MiB item size.
//!
//! The code is split in three: [`wire`] (the protocol as pure functions: an incremental,
//! bounded reply decoder and the request encoder), `conn` (connections, deadlines, the pool
//! and the fail-fast window) and `placement` (which server owns a key).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::{
    check_keys, run_stage, AppendOutcome, Backend, CasOutcome, Item, Op, OpReply, Placeholder,
};
#[cfg(feature = "tokio")]
use super::{AsyncBatch, AsyncGets};
use crate::error::{ConfigError, Error, Result};
use crate::timeout::Expiry;

mod conn;
mod placement;
pub mod wire;

use conn::{protocol_err, Conn, Deadline, Server, DEFAULT_ITEM_SIZE};
use wire::{Frame, Request, StoreVerb};

/// Connection settings of a [`Memcached`] backend.
///
/// ```
/// use std::time::Duration;
/// use caching_core::backend::memcached::MemcachedOptions;
/// let o = MemcachedOptions::default();
/// assert_eq!(o.pool_size, 16);
/// assert_eq!(o.op_timeout, Duration::from_secs(2));
/// let fast = MemcachedOptions { op_timeout: Duration::from_millis(300), ..o };
/// assert_eq!(fast.io_timeout, Duration::from_millis(500));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemcachedOptions {
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for each read or write on a connection.
    pub io_timeout: Duration,
    /// Time allowed for a whole exchange with one server (connecting, writing a batch and
    /// reading every reply), whatever the pace of the bytes: a server that answers part of a
    /// reply and stalls, or trickles it a byte at a time, fails by then. Default 2 seconds;
    /// it must leave room for the largest batch (a multi-set of big values) to cross the
    /// network.
    pub op_timeout: Duration,
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
            op_timeout: Duration::from_secs(2),
            pool_size: 16,
            retry_after: Duration::from_secs(1),
        }
    }
}

/// Keys per `gets` command (memcached splits long key lists, but keep lines moderate).
const GET_CHUNK: usize = 100;

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

#[derive(Debug, Clone, PartialEq, Eq)]
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

impl Reply {
    /// The reply to a storage, delete or incr command; anything else breaks the protocol.
    fn from_frame(frame: Frame, server: &str) -> Result<Reply> {
        Ok(match frame {
            Frame::Stored => Reply::Stored,
            Frame::NotStored => Reply::NotStored,
            Frame::Exists => Reply::Exists,
            Frame::NotFound => Reply::NotFound,
            Frame::Deleted => Reply::Deleted,
            Frame::Number(n) => Reply::Number(n),
            Frame::ServerError(m)
                if m.starts_with("object too large") || m.starts_with("out of memory") =>
            {
                Reply::TooLarge
            }
            Frame::ClientError(m) if m.starts_with("cannot increment") => Reply::NonNumeric,
            Frame::ClientError(m) => {
                return Err(protocol_err(server, &format!("CLIENT_ERROR {m}")))
            }
            Frame::ServerError(m) => {
                return Err(protocol_err(server, &format!("SERVER_ERROR {m}")))
            }
            other => return Err(protocol_err(server, &format!("unexpected reply {other:?}"))),
        })
    }
}

impl Memcached {
    /// A backend over `servers` (`host:port` each). Addresses are resolved now; nothing is
    /// connected until first use.
    ///
    /// ```
    /// use caching_core::backend::memcached::{Memcached, MemcachedOptions};
    /// assert!(Memcached::new(&["127.0.0.1:11211"], MemcachedOptions::default()).is_ok());
    /// assert!(Memcached::new(&["no port"], MemcachedOptions::default()).is_err());
    /// ```
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
            let addr = std::net::ToSocketAddrs::to_socket_addrs(&name)
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| ConfigError::Url {
                    url: name.clone(),
                    reason: "not a resolvable host:port".into(),
                })?;
            out.push(Server::new(name, addr));
        }
        Ok(Memcached {
            servers: out,
            options,
        })
    }

    /// Index of the server that owns `key` (see `placement`).
    fn server_for(&self, key: &str) -> usize {
        // One server owns every key: no hash needed (what `owner` answers for one seed).
        if self.servers.len() == 1 {
            return 0;
        }
        placement::owner(self.servers.iter().map(|s| &s.seed), key)
    }

    /// The server name (`host:port`) a key is placed on.
    ///
    /// ```
    /// use caching_core::backend::memcached::{Memcached, MemcachedOptions};
    /// let mc = Memcached::new(&["127.0.0.1:11211"], MemcachedOptions::default()).unwrap();
    /// assert_eq!(mc.server_of("any key"), "127.0.0.1:11211");
    /// ```
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

    /// One exchange with server `i`, failing fast while it is marked down.
    fn with_conn<T>(
        &self,
        i: usize,
        mut f: impl FnMut(&mut Conn, &Deadline, &str) -> Result<T>,
    ) -> Result<T> {
        let s = &self.servers[i];
        s.exchange(&self.options, true, |conn, deadline| {
            f(conn, deadline, &s.name)
        })
    }

    fn item_limit(&self) -> usize {
        self.servers
            .iter()
            .filter_map(Server::item_size)
            .min()
            .unwrap_or(DEFAULT_ITEM_SIZE)
    }

    /// Whether a value fits in an item (memcached counts key and header too; keep a margin).
    fn fits(&self, key: &str, value: &[u8]) -> bool {
        value.len() + key.len() + 64 <= self.item_limit()
    }

    /// Sends `requests` to one server in one write and reads every reply. A reply that is not
    /// one of those `expected` for the command is an error (and drops the connection: a
    /// `STORED` answering a `delete` means the stream is out of step with the requests).
    fn pipeline(
        &self,
        server: usize,
        requests: &[Request<'_>],
        expected: fn(&Reply) -> bool,
    ) -> Result<Vec<Reply>> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        self.with_conn(server, |conn, deadline, name| {
            conn.send_requests(requests, deadline, name)?;
            let mut replies = Vec::with_capacity(requests.len());
            for _ in requests {
                let reply = Reply::from_frame(conn.recv(deadline, name)?, name)?;
                if !expected(&reply) {
                    return Err(protocol_err(name, &format!("unexpected reply {reply:?}")));
                }
                replies.push(reply);
            }
            Ok(replies)
        })
    }

    /// Reads `keys` (all placed on `server`) from `server` in one exchange, into `out`.
    fn gets_from(
        &self,
        server: usize,
        keys: &[&str],
        out: &mut HashMap<String, Item>,
    ) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        // Collected apart, so that an exchange run again on a new connection does not mix
        // in what the closed one sent.
        let got = self.with_conn(server, |conn, deadline, name| {
            let mut got = Vec::with_capacity(keys.len());
            let wanted: HashSet<&str> = keys.iter().copied().collect();
            let mut buf = Vec::new();
            for chunk in keys.chunks(GET_CHUNK) {
                Request::Gets(chunk).encode(&mut buf);
            }
            conn.send(&buf, deadline, name)?;
            let mut ends = 0;
            let expected = keys.len().div_ceil(GET_CHUNK);
            while ends < expected {
                match conn.recv(deadline, name)? {
                    Frame::End => ends += 1,
                    Frame::Value {
                        key,
                        cas: Some(cas),
                        data,
                        ..
                    } if wanted.contains(key.as_str()) => {
                        got.push((key, Item { value: data, cas }));
                    }
                    Frame::Value { key, cas: None, .. } => {
                        return Err(protocol_err(
                            name,
                            &format!("VALUE {key} without a CAS token"),
                        ))
                    }
                    Frame::Value { key, .. } => {
                        return Err(protocol_err(
                            name,
                            &format!("VALUE for a key not asked for: {key}"),
                        ))
                    }
                    other => {
                        return Err(protocol_err(name, &format!("unexpected reply {other:?}")))
                    }
                }
            }
            Ok(got)
        })?;
        out.extend(got);
        Ok(())
    }

    /// Runs storage commands grouped per server, returning replies in input order.
    fn store_multi(
        &self,
        verb: StoreVerb,
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
            let mut requests = Vec::new();
            let mut idx = Vec::new();
            for (i, (key, value)) in group {
                if self.fits(key, value) {
                    requests.push(Request::Store {
                        verb,
                        key,
                        value,
                        exptime,
                    });
                    idx.push(*i);
                } else {
                    out[*i] = Some(Reply::TooLarge);
                }
            }
            for (i, r) in idx.into_iter().zip(self.pipeline(server, &requests, |r| {
                matches!(r, Reply::Stored | Reply::NotStored | Reply::TooLarge)
            })?) {
                out[i] = Some(r);
            }
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or(Reply::TooLarge))
            .collect())
    }
}

impl Memcached {
    /// What appends answered `replies` did, reading the keys of those answered
    /// `NOT_STORED` ([`append_outcomes`]).
    fn read_append_outcomes(
        &self,
        items: &[(&str, &[u8])],
        replies: &[Reply],
    ) -> Result<Vec<AppendOutcome>> {
        let ambiguous = ambiguous_appends(items, replies);
        let existing = if ambiguous.is_empty() {
            HashMap::new()
        } else {
            self.get_multi(&ambiguous)?
        };
        Ok(append_outcomes(
            items,
            replies,
            &existing,
            self.item_limit(),
        ))
    }

    /// A whole batch on one server, in one write and one read of the replies: the server
    /// runs a connection's commands in order, which is what the batch's stages ask for.
    /// Reads are meta gets (`mg <key> v c`), one per key: memcached answers a pipeline of
    /// meta commands as fast as one multi-get, while a classic `gets` followed by any other
    /// command costs a second flush of its answer (measured: 7-10 µs on loopback).
    ///
    /// The blocking and the non-blocking batch ([`batch_on_async`](Self::batch_on_async))
    /// differ only in how the bytes move: both encode with [`encode_batch`], read the
    /// replies with [`answers`] and map them with [`settle_batch`].
    fn batch_on(&self, server: usize, stages: &[&[Op<'_>]]) -> Result<Vec<Vec<OpReply>>> {
        let mut enc = self.encode_batch(stages);
        if enc.asked == 0 {
            return Ok(finish_batch(enc.known));
        }
        // The replies are kept apart from `enc.known` until the exchange succeeds: one run
        // again on a new connection (its pooled one was closed) must see it as it was.
        let answered = self.with_conn(server, |conn, deadline, name| {
            conn.send(&enc.buf, deadline, name)?;
            let mut frames = Vec::with_capacity(enc.asked);
            for _ in 0..enc.asked {
                frames.push(conn.recv(deadline, name)?);
            }
            answers(stages, &enc.known, frames, name)
        })?;
        let appends = settle_batch(stages, &mut enc.known, answered, &self.servers[server].name)?;
        if !appends.is_empty() {
            let existing = self.get_multi(&appends.ambiguous())?;
            appends.tell_apart(&mut enc.known, &existing, self.item_limit());
        }
        Ok(finish_batch(enc.known))
    }

    /// [`batch_on`](Self::batch_on) without blocking the thread (feature `tokio`).
    #[cfg(feature = "tokio")]
    async fn batch_on_async(
        &self,
        server: usize,
        stages: &[&[Op<'_>]],
    ) -> Result<Vec<Vec<OpReply>>> {
        let mut enc = self.encode_batch(stages);
        if enc.asked == 0 {
            return Ok(finish_batch(enc.known));
        }
        let s = &self.servers[server];
        let answered = s
            .exchange_async(&self.options, &enc.buf, enc.asked, |frames: Vec<Frame>| {
                answers(stages, &enc.known, frames, &s.name)
            })
            .await?;
        let appends = settle_batch(stages, &mut enc.known, answered, &s.name)?;
        if !appends.is_empty() {
            let keys = appends.ambiguous();
            let items = self.gets_async(&keys).await?;
            let existing: HashMap<String, Item> = keys
                .iter()
                .zip(items)
                .filter_map(|(k, i)| Some((k.to_string(), i?)))
                .collect();
            appends.tell_apart(&mut enc.known, &existing, self.item_limit());
        }
        Ok(finish_batch(enc.known))
    }

    /// Meta gets of `keys` on tokio sockets: one pipelined exchange per server holding some
    /// of them; each key's item in the order of `keys`.
    #[cfg(feature = "tokio")]
    async fn gets_async(&self, keys: &[&str]) -> Result<Vec<Option<Item>>> {
        check_keys(keys.iter().copied())?;
        let mut out = vec![None; keys.len()];
        let groups = self.group(keys.iter().enumerate().map(|(i, k)| (i, *k, *k)));
        for (server, group) in groups.iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let mut requests = Vec::new();
            for (_, key) in group {
                Request::MetaGet(key).encode(&mut requests);
            }
            let s = &self.servers[server];
            let items = s
                .exchange_async(
                    &self.options,
                    &requests,
                    group.len(),
                    |frames: Vec<Frame>| {
                        frames
                            .into_iter()
                            .map(|f| meta_get_item(f, &s.name))
                            .collect::<Result<Vec<_>>>()
                    },
                )
                .await?;
            for ((i, _), item) in group.iter().zip(items) {
                out[*i] = item;
            }
        }
        Ok(out)
    }

    /// Where a batch's keys are placed (after checking them).
    fn batch_server(&self, stages: &[&[Op<'_>]]) -> Result<Placed> {
        for ops in stages {
            check_keys(ops.iter().map(|op| op.key()))?;
        }
        let mut keys = stages.iter().flat_map(|ops| ops.iter().map(|op| op.key()));
        let Some(first) = keys.next() else {
            return Ok(Placed::Empty);
        };
        let server = self.server_for(first);
        Ok(
            if self.servers.len() == 1 || keys.all(|k| self.server_for(k) == server) {
                Placed::One(server)
            } else {
                Placed::Several
            },
        )
    }

    /// Encodes a batch for one server: the requests, and per op its reply when it is known
    /// without asking (a value too large to send).
    fn encode_batch(&self, stages: &[&[Op<'_>]]) -> Encoded {
        // Room for every request's line (a command, a key, a few numbers) and value, so the
        // buffer is allocated once.
        let room = stages
            .iter()
            .flat_map(|ops| ops.iter())
            .map(|op| {
                let value = match *op {
                    Op::Add(_, v, _) | Op::Append(_, v) | Op::Cas(_, v, _, _) => v.len() + 2,
                    _ => 0,
                };
                op.key().len() + 64 + value
            })
            .sum();
        let mut buf = Vec::with_capacity(room);
        let mut asked = 0;
        let mut known: Vec<Vec<Option<OpReply>>> = Vec::with_capacity(stages.len());
        for ops in stages {
            let mut replies = Vec::with_capacity(ops.len());
            for op in *ops {
                let (request, refused) = match *op {
                    Op::Get(key) => (Request::MetaGet(key), None),
                    // Served by the meta get's own lease: on a hit it is a plain read.
                    Op::Lease(key, _, expiry) => (
                        Request::MetaGetLease {
                            key,
                            exptime: expiry.memcached_exptime(),
                        },
                        None,
                    ),
                    Op::Add(key, value, expiry) => (
                        Request::Store {
                            verb: StoreVerb::Add,
                            key,
                            value,
                            exptime: expiry.memcached_exptime(),
                        },
                        Some(OpReply::Added(false)),
                    ),
                    Op::Append(key, value) => (
                        Request::Store {
                            verb: StoreVerb::Append,
                            key,
                            value,
                            exptime: 0,
                        },
                        Some(OpReply::Appended(AppendOutcome::TooLarge)),
                    ),
                    Op::Cas(key, value, expiry, cas) => (
                        Request::Cas {
                            key,
                            value,
                            exptime: expiry.memcached_exptime(),
                            cas,
                        },
                        Some(OpReply::Cas(CasOutcome::Changed)),
                    ),
                    Op::Delete(key) => (Request::Delete(key), None),
                    Op::Incr(key, delta) => (Request::Incr { key, delta }, None),
                };
                let value = match *op {
                    Op::Add(_, v, _) | Op::Append(_, v) | Op::Cas(_, v, _, _) => v,
                    _ => &[],
                };
                match refused {
                    Some(refused) if !self.fits(op.key(), value) => replies.push(Some(refused)),
                    _ => {
                        request.encode(&mut buf);
                        asked += 1;
                        replies.push(None);
                    }
                }
            }
            known.push(replies);
        }
        Encoded { buf, known, asked }
    }
}

/// Where a batch's keys are placed ([`Memcached::batch_server`]).
enum Placed {
    /// No key at all.
    Empty,
    /// All on this server.
    One(usize),
    /// On several servers.
    Several,
}

/// A batch encoded for one server ([`Memcached::encode_batch`]).
struct Encoded {
    /// The requests, in op order.
    buf: Vec<u8>,
    /// Per stage and op, its reply when it was known without asking.
    known: Vec<Vec<Option<OpReply>>>,
    /// How many requests `buf` holds (one reply frame each).
    asked: usize,
}

/// What a server answered one stage: replies already mapped (reads, leases) and the replies
/// to storage commands, mapped after the exchange ([`settle_batch`]).
type Answered = (Vec<(usize, OpReply)>, Vec<(usize, Reply)>);

/// Maps the reply `frames` of a batch (one per request, in order) to each op, per stage. A
/// frame that does not answer its request is a protocol error (the exchange's connection is
/// then dropped: the stream is out of step).
fn answers(
    stages: &[&[Op<'_>]],
    known: &[Vec<Option<OpReply>>],
    frames: Vec<Frame>,
    name: &str,
) -> Result<Vec<Answered>> {
    let mut frames = frames.into_iter();
    let mut raw = Vec::with_capacity(stages.len());
    for (ops, replies) in stages.iter().zip(known) {
        let mut stage_read = Vec::new();
        let mut stage_raw = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            if replies[i].is_some() {
                continue;
            }
            let Some(frame) = frames.next() else {
                return Err(protocol_err(name, "fewer replies than requests"));
            };
            let unexpected =
                |f: &Frame| protocol_err(name, &format!("unexpected reply to mg: {f:?}"));
            stage_read.push((
                i,
                match (op, frame) {
                    (Op::Get(_), f) => OpReply::Value(meta_get_item(f, name)?),
                    (
                        Op::Lease(..),
                        Frame::MetaValue {
                            cas: Some(cas),
                            won: true,
                            data,
                        },
                    ) => OpReply::Leased {
                        found: None,
                        won: Some(Placeholder {
                            value: data,
                            cas: Some(cas),
                        }),
                    },
                    (
                        Op::Lease(..),
                        Frame::MetaValue {
                            cas: Some(cas),
                            won: false,
                            data,
                        },
                    ) => OpReply::Leased {
                        found: Some(Item { value: data, cas }),
                        won: None,
                    },
                    (Op::Lease(..), Frame::MetaMiss) => OpReply::Leased {
                        found: None,
                        won: None,
                    },
                    (Op::Lease(..), f) => return Err(unexpected(&f)),
                    (_, f) => {
                        stage_raw.push((i, Reply::from_frame(f, name)?));
                        continue;
                    }
                },
            ));
        }
        raw.push((stage_read, stage_raw));
    }
    Ok(raw)
}

/// Appends a server answered `NOT_STORED`: missing or full, told apart by reading them
/// ([`append_outcomes`]).
struct Unsettled<'a> {
    /// Stage and op index of each.
    at: Vec<(usize, usize)>,
    items: Vec<(&'a str, &'a [u8])>,
    replies: Vec<Reply>,
}

impl Unsettled<'_> {
    fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// The keys to read to tell the appends apart.
    fn ambiguous(&self) -> Vec<&str> {
        ambiguous_appends(&self.items, &self.replies)
    }

    /// Stores each append's outcome, given what its key held (`existing`).
    fn tell_apart(
        self,
        known: &mut [Vec<Option<OpReply>>],
        existing: &HashMap<String, Item>,
        limit: usize,
    ) {
        let outcomes = append_outcomes(&self.items, &self.replies, existing, limit);
        for ((s, i), o) in self.at.into_iter().zip(outcomes) {
            known[s][i] = Some(OpReply::Appended(o));
        }
    }
}

/// Maps what a server `answered` into `known`; the appends answered `NOT_STORED` are left to
/// tell apart ([`Unsettled`]).
fn settle_batch<'a>(
    stages: &[&[Op<'a>]],
    known: &mut [Vec<Option<OpReply>>],
    answered: Vec<Answered>,
    name: &str,
) -> Result<Unsettled<'a>> {
    let mut unsettled = Unsettled {
        at: Vec::new(),
        items: Vec::new(),
        replies: Vec::new(),
    };
    for (s, (ops, (stage_read, stage_raw))) in stages.iter().zip(answered).enumerate() {
        let replies = &mut known[s];
        for (i, reply) in stage_read {
            replies[i] = Some(reply);
        }
        for (i, reply) in stage_raw {
            let mapped = match (ops[i], reply) {
                (Op::Add(..), Reply::Stored) => OpReply::Added(true),
                (Op::Add(..), Reply::NotStored | Reply::TooLarge) => OpReply::Added(false),
                (Op::Append(k, v), r @ (Reply::Stored | Reply::NotStored | Reply::TooLarge)) => {
                    unsettled.at.push((s, i));
                    unsettled.items.push((k, v));
                    unsettled.replies.push(r);
                    continue;
                }
                (Op::Cas(..), r) if cas_reply(&r) => OpReply::Cas(cas_outcome(&r)),
                (Op::Delete(_), Reply::Deleted | Reply::NotFound) => OpReply::Deleted,
                (Op::Incr(..), Reply::Number(n)) => OpReply::Counter(Some(n)),
                (Op::Incr(..), Reply::NotFound) => OpReply::Counter(None),
                (Op::Incr(..), Reply::NonNumeric) => OpReply::NotANumber,
                (op, r) => {
                    return Err(protocol_err(
                        name,
                        &format!("unexpected reply {r:?} to {:?}", op.key()),
                    ))
                }
            };
            replies[i] = Some(mapped);
        }
    }
    Ok(unsettled)
}

/// The keys of the appends answered `NOT_STORED`: missing or full, read to tell apart.
fn ambiguous_appends<'k>(items: &[(&'k str, &[u8])], replies: &[Reply]) -> Vec<&'k str> {
    items
        .iter()
        .zip(replies)
        .filter(|(_, r)| **r == Reply::NotStored)
        .map(|((k, _), _)| *k)
        .collect()
}

/// What appends answered `replies` did. memcached answers NOT_STORED both when the key is
/// missing and when the appended item would exceed the item size. They are told apart by
/// what the key holds (`existing`, read after the appends: a missing key costs nothing to
/// ask about; a full one is read again by the compaction that follows anyway), so a full
/// flush list is compacted instead of looking missing. A key that exists but has room was
/// created since the append: reported missing, and the caller's add fails and appends again.
fn append_outcomes(
    items: &[(&str, &[u8])],
    replies: &[Reply],
    existing: &HashMap<String, Item>,
    limit: usize,
) -> Vec<AppendOutcome> {
    items
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
        .collect()
}

/// Every op's reply, once each is known.
fn finish_batch(known: Vec<Vec<Option<OpReply>>>) -> Vec<Vec<OpReply>> {
    known
        .into_iter()
        .map(|s| {
            s.into_iter()
                .map(|r| r.unwrap_or(OpReply::Deleted))
                .collect()
        })
        .collect()
}

/// The item a meta get (`mg <key> v c`) answered: `EN` is none, `VA` with a CAS token is
/// the item; anything else breaks the protocol. Blocking and non-blocking reads share it.
pub(super) fn meta_get_item(frame: Frame, server: &str) -> Result<Option<Item>> {
    match frame {
        Frame::MetaMiss => Ok(None),
        Frame::MetaValue {
            cas: Some(cas),
            data,
            ..
        } => Ok(Some(Item { value: data, cas })),
        f => Err(protocol_err(
            server,
            &format!("unexpected reply to mg: {f:?}"),
        )),
    }
}

/// The replies a `cas` may get: a too-large value or a `NOT_STORED` count as changed.
fn cas_reply(r: &Reply) -> bool {
    matches!(
        r,
        Reply::Stored | Reply::Exists | Reply::NotFound | Reply::NotStored | Reply::TooLarge
    )
}

/// What a `cas` answered `r` did (one of [`cas_reply`]'s).
fn cas_outcome(r: &Reply) -> CasOutcome {
    match r {
        Reply::Stored => CasOutcome::Stored,
        Reply::NotFound => CasOutcome::Missing,
        _ => CasOutcome::Changed,
    }
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
            let keys: Vec<&str> = group.iter().map(|(_, k)| *k).collect();
            self.gets_from(server, &keys, &mut out)?;
        }
        Ok(out)
    }

    fn batch(&self, stages: &[&[Op<'_>]]) -> Result<Vec<Vec<OpReply>>> {
        match self.batch_server(stages)? {
            Placed::Empty => Ok(stages.iter().map(|_| Vec::new()).collect()),
            Placed::One(server) => self.batch_on(server, stages),
            // Several servers: their connections are not ordered against each other, so each
            // stage completes before the next one starts.
            Placed::Several => stages.iter().map(|ops| run_stage(self, ops)).collect(),
        }
    }

    fn server_count(&self) -> usize {
        self.servers.len()
    }

    /// Meta gets on tokio sockets (feature `tokio`), one pipelined exchange per server
    /// holding some of `keys`, under the same timeouts, fail-fast window and connection
    /// reuse rules as the blocking client; `None` outside a tokio runtime.
    #[cfg(feature = "tokio")]
    fn get_multi_async<'a>(&'a self, keys: &'a [&'a str]) -> Option<AsyncGets<'a>> {
        tokio::runtime::Handle::try_current().ok()?;
        Some(Box::pin(self.gets_async(keys)))
    }

    /// Batches on tokio sockets (feature `tokio`), under the blocking client's timeouts,
    /// fail-fast window and pool rules; `None` outside a tokio runtime. A batch placed on
    /// one server is one exchange, as a blocking one; a batch over several servers runs
    /// stage by stage, each stage one exchange per server it touches.
    #[cfg(feature = "tokio")]
    fn batch_async<'a>(&'a self, stages: &'a [&'a [Op<'a>]]) -> Option<AsyncBatch<'a>> {
        tokio::runtime::Handle::try_current().ok()?;
        Some(Box::pin(async move {
            match self.batch_server(stages)? {
                Placed::Empty => return Ok(stages.iter().map(|_| Vec::new()).collect()),
                Placed::One(server) => return self.batch_on_async(server, stages).await,
                Placed::Several => {}
            }
            let mut out = Vec::with_capacity(stages.len());
            for ops in stages {
                let mut replies: Vec<Option<OpReply>> = vec![None; ops.len()];
                let groups = self.group(ops.iter().enumerate().map(|(i, op)| (i, op.key(), *op)));
                for (server, group) in groups.iter().enumerate() {
                    if group.is_empty() {
                        continue;
                    }
                    let group_ops: Vec<Op<'_>> = group.iter().map(|(_, op)| *op).collect();
                    let mut answered = self.batch_on_async(server, &[&group_ops]).await?;
                    for ((i, _), r) in group.iter().zip(answered.pop().unwrap_or_default()) {
                        replies[*i] = Some(r);
                    }
                }
                out.push(
                    replies
                        .into_iter()
                        .map(|r| r.unwrap_or(OpReply::Deleted))
                        .collect(),
                );
            }
            Ok(out)
        }))
    }

    fn connections_opened(&self) -> u64 {
        self.servers.iter().map(Server::connections_opened).sum()
    }

    fn get_on_server(&self, server: usize, key: &str) -> Result<Option<Item>> {
        check_keys([key])?;
        if server >= self.servers.len() {
            return Ok(None);
        }
        let mut out = HashMap::new();
        self.gets_from(server, &[key], &mut out)?;
        Ok(out.remove(key))
    }

    fn set_on_server(&self, server: usize, key: &str, value: &[u8]) -> Result<()> {
        check_keys([key])?;
        if server >= self.servers.len() {
            return Ok(());
        }
        let request = Request::Store {
            verb: StoreVerb::Set,
            key,
            value,
            exptime: 0,
        };
        self.pipeline(server, &[request], |r| {
            matches!(r, Reply::Stored | Reply::NotStored | Reply::TooLarge)
        })?;
        Ok(())
    }

    fn add_multi(&self, items: &[(&str, &[u8])], expiry: Expiry) -> Result<Vec<bool>> {
        let replies = self.store_multi(StoreVerb::Add, items, expiry.memcached_exptime())?;
        Ok(replies.into_iter().map(|r| r == Reply::Stored).collect())
    }

    fn set_multi(&self, items: &[(&str, &[u8])], expiry: Expiry) -> Result<()> {
        let replies = self.store_multi(StoreVerb::Set, items, expiry.memcached_exptime())?;
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
        let replies = self.store_multi(StoreVerb::Append, items, 0)?;
        self.read_append_outcomes(items, &replies)
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
        let exptime = expiry.memcached_exptime();
        let mut out = vec![CasOutcome::Changed; items.len()];
        let groups = self.group(items.iter().enumerate().map(|(i, it)| (i, it.0, *it)));
        for (server, group) in groups.iter().enumerate() {
            let mut requests = Vec::new();
            let mut idx = Vec::new();
            for (i, (key, value, cas)) in group {
                if self.fits(key, value) {
                    requests.push(Request::Cas {
                        key,
                        value,
                        exptime,
                        cas: *cas,
                    });
                    idx.push(*i);
                }
            }
            for (i, r) in idx
                .into_iter()
                .zip(self.pipeline(server, &requests, cas_reply)?)
            {
                out[i] = cas_outcome(&r);
            }
        }
        Ok(out)
    }

    fn delete_multi(&self, keys: &[&str]) -> Result<()> {
        check_keys(keys.iter().copied())?;
        let groups = self.group(keys.iter().enumerate().map(|(i, k)| (i, *k, *k)));
        for (server, group) in groups.iter().enumerate() {
            let requests: Vec<Request<'_>> =
                group.iter().map(|(_, k)| Request::Delete(k)).collect();
            self.pipeline(server, &requests, |r| {
                matches!(r, Reply::Deleted | Reply::NotFound)
            })?;
        }
        Ok(())
    }

    fn probe(&self) -> Result<()> {
        let mut first_error = None;
        for s in &self.servers {
            // Ignores the fail-fast window; a success clears it.
            let version = || {
                s.exchange(&self.options, false, |conn, deadline| {
                    conn.send_requests(&[Request::Version], deadline, &s.name)?;
                    match conn.recv(deadline, &s.name)? {
                        Frame::Version(_) => Ok(()),
                        other => Err(protocol_err(
                            &s.name,
                            &format!("unexpected reply {other:?}"),
                        )),
                    }
                })
            };
            // (A pooled connection the server closed since is replaced inside the exchange.)
            let answered = version();
            if let Err(e) = answered {
                s.mark_down(&self.options);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn incr_multi(&self, keys: &[&str], delta: u64) -> Result<Vec<Result<Option<u64>>>> {
        check_keys(keys.iter().copied())?;
        let mut out: Vec<Result<Option<u64>>> = keys.iter().map(|_| Ok(None)).collect();
        let mut first_error = None;
        let groups = self.group(keys.iter().enumerate().map(|(i, k)| (i, *k, *k)));
        for (server, group) in groups.iter().enumerate() {
            let requests: Vec<Request<'_>> = group
                .iter()
                .map(|(_, key)| Request::Incr { key, delta })
                .collect();
            // Every server is tried, even after one failed.
            match self.pipeline(server, &requests, |r| {
                matches!(r, Reply::Number(_) | Reply::NonNumeric | Reply::NotFound)
            }) {
                Ok(replies) => {
                    for ((i, key), reply) in group.iter().zip(replies) {
                        out[*i] = match reply {
                            Reply::Number(n) => Ok(Some(n)),
                            Reply::NonNumeric => Err(Error::NotANumber {
                                key: key.to_string(),
                            }),
                            _ => Ok(None),
                        };
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(out), Err)
    }

    fn incr(&self, key: &str, delta: u64) -> Result<Option<u64>> {
        check_keys([key])?;
        let server = self.server_for(key);
        let reply = self.pipeline(server, &[Request::Incr { key, delta }], |r| {
            matches!(r, Reply::Number(_) | Reply::NonNumeric | Reply::NotFound)
        })?;
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
    fn unparsable_addresses_are_configuration_errors() {
        // An address that does not parse is a configuration error, reported at construction.
        assert!(Memcached::new(&["127.0.0.1"], MemcachedOptions::default()).is_err());
        let none: [&str; 0] = [];
        assert!(Memcached::new(&none, MemcachedOptions::default()).is_err());
    }

    #[test]
    fn server_of_follows_placement() {
        let names = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
        let mc = Memcached::new(&names, MemcachedOptions::default()).unwrap();
        // Same pins as `placement::tests::placement_is_pinned`, through the public API.
        let placed: Vec<&str> = (0..6).map(|i| mc.server_of(&format!("k{i}"))).collect();
        let pinned = [1, 2, 2, 0, 1, 2].map(|i| names[i]);
        assert_eq!(placed, pinned);
    }
}
