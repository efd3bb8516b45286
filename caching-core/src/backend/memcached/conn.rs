//! Connections to one server: deadlines, the idle pool, the fail-fast ("marked down") window
//! and the item size learnt from `stats settings`.
//!
//! Every exchange with a server runs under one [`Deadline`] (`op_timeout`): connecting,
//! asking the item size, writing the batch and reading every reply. Each socket read or write
//! waits at most `io_timeout` and never past the deadline, so a server that trickles bytes
//! (each one resetting a per-read timeout) still fails on time. A connection goes back to the
//! pool only after an exchange that succeeded and left nothing unread: after any error it is
//! dropped, so a half-read reply can never be mistaken for the answer to the next request.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;

use crate::backend::fail_fast::DownMark;
use std::time::{Duration, Instant};

use super::wire::{Decoder, Frame, Request};
use super::MemcachedOptions;
use crate::error::{Error, Result};

/// memcached's default item size, assumed when a server (or a proxy in front of it) does not
/// say.
pub(super) const DEFAULT_ITEM_SIZE: usize = 1024 * 1024;
/// Item sizes announced by a server are clamped to this range (memcached's own: 1 KiB to 1 GiB).
const MIN_ITEM_SIZE: usize = 1024;
const MAX_ITEM_SIZE: usize = 1024 * 1024 * 1024;
/// Slack over the item size for a data block (no value is longer than the item holding it).
const DATA_MARGIN: usize = 1024;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

pub(super) fn io_err(server: &str, source: std::io::Error) -> Error {
    Error::Io {
        server: server.to_string(),
        source,
    }
}

pub(super) fn protocol_err(server: &str, what: &str) -> Error {
    Error::Protocol {
        server: server.to_string(),
        line: what.chars().take(200).collect(),
    }
}

pub(super) use crate::backend::fail_fast::lock;

/// The time by which an exchange with a server must be over.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadline {
    at: Instant,
    budget: Duration,
}

impl Deadline {
    pub(super) fn after(budget: Duration) -> Self {
        Deadline {
            at: Instant::now() + budget,
            budget,
        }
    }

    /// Time left, or a timeout error once it is over.
    fn remaining(&self, server: &str) -> Result<Duration> {
        match self.at.checked_duration_since(Instant::now()) {
            Some(d) if !d.is_zero() => Ok(d),
            _ => Err(io_err(
                server,
                std::io::Error::new(
                    ErrorKind::TimedOut,
                    format!("operation deadline of {:?} exceeded", self.budget),
                ),
            )),
        }
    }
}

/// The receiving side of a connection, blocking or not: the reply decoder and the bytes read
/// but not yet decoded.
#[derive(Debug)]
pub(super) struct Inbox {
    decoder: Decoder,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Bytes received so far: an exchange that failed before receiving any was not
    /// answered at all (see [`Server::exchange`]).
    pub(super) received: u64,
}

impl Inbox {
    pub(super) fn new(max_data: usize) -> Self {
        Inbox {
            decoder: Decoder::new(max_data),
            buf: vec![0u8; READ_CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
            received: 0,
        }
    }

    /// The next complete reply frame among the bytes received; `None` when more bytes are
    /// needed (read them into [`space`](Self::space), then [`filled`](Self::filled)).
    pub(super) fn frame(&mut self, server: &str) -> Result<Option<Frame>> {
        if self.start < self.end {
            let mut input = &self.buf[self.start..self.end];
            let decoded = self.decoder.decode(&mut input);
            self.start = self.end - input.len();
            match decoded {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => return Err(protocol_err(server, &e.to_string())),
            }
        }
        // Everything received is decoded (or held by the decoder): read anew.
        self.start = 0;
        self.end = 0;
        Ok(None)
    }

    /// Where the next bytes from the socket go.
    pub(super) fn space(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// `n` bytes were read into [`space`](Self::space); 0 is the server closing the
    /// connection.
    pub(super) fn filled(&mut self, n: usize, server: &str) -> Result<()> {
        if n == 0 {
            return Err(io_err(
                server,
                std::io::Error::new(ErrorKind::UnexpectedEof, "connection closed by the server"),
            ));
        }
        self.end = n;
        self.received += n as u64;
        Ok(())
    }

    /// Whether the connection is between replies with nothing unread, so it can be reused.
    pub(super) fn is_clean(&self) -> bool {
        self.start == self.end && self.decoder.is_idle()
    }

    pub(super) fn set_max_data(&mut self, max_data: usize) {
        self.decoder.set_max_data(max_data);
    }
}

/// One blocking connection: the socket and its [`Inbox`].
#[derive(Debug)]
pub(super) struct Conn {
    stream: TcpStream,
    inbox: Inbox,
    /// Longest wait for one read or write (`io_timeout`), within the deadline.
    io_timeout: Duration,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl Conn {
    fn open(
        addr: &SocketAddr,
        connect_timeout: Duration,
        io_timeout: Duration,
        max_data: usize,
    ) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(addr, connect_timeout)?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            inbox: Inbox::new(max_data),
            io_timeout,
            read_timeout: None,
            write_timeout: None,
        })
    }

    /// Writes all of `bytes` before the deadline.
    pub(super) fn send(&mut self, bytes: &[u8], deadline: &Deadline, server: &str) -> Result<()> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let wait = deadline.remaining(server)?.min(self.io_timeout);
            if self.write_timeout != Some(wait) {
                self.stream
                    .set_write_timeout(Some(wait))
                    .map_err(|e| io_err(server, e))?;
                self.write_timeout = Some(wait);
            }
            match self.stream.write(rest) {
                Ok(0) => {
                    return Err(io_err(
                        server,
                        std::io::Error::new(ErrorKind::WriteZero, "connection closed"),
                    ))
                }
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(server, timed_out(e))),
            }
        }
        Ok(())
    }

    /// Encodes `requests` and writes them in one go.
    pub(super) fn send_requests(
        &mut self,
        requests: &[Request<'_>],
        deadline: &Deadline,
        server: &str,
    ) -> Result<()> {
        let mut buf = Vec::new();
        for r in requests {
            r.encode(&mut buf);
        }
        self.send(&buf, deadline, server)
    }

    /// The next reply frame, read before the deadline.
    pub(super) fn recv(&mut self, deadline: &Deadline, server: &str) -> Result<Frame> {
        loop {
            if let Some(frame) = self.inbox.frame(server)? {
                return Ok(frame);
            }
            let wait = deadline.remaining(server)?.min(self.io_timeout);
            if self.read_timeout != Some(wait) {
                self.stream
                    .set_read_timeout(Some(wait))
                    .map_err(|e| io_err(server, e))?;
                self.read_timeout = Some(wait);
            }
            match self.stream.read(self.inbox.space()) {
                Ok(n) => self.inbox.filled(n, server)?,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(server, timed_out(e))),
            }
        }
    }
}

/// One non-blocking connection (feature `tokio`): a tokio socket and its [`Inbox`]. Its
/// exchanges are bounded by the caller's timeout ([`Server::meta_gets_async`]).
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub(super) struct AsyncConn {
    stream: tokio::net::TcpStream,
    inbox: Inbox,
}

#[cfg(feature = "tokio")]
impl AsyncConn {
    /// Sends `requests` and reads `count` reply frames.
    async fn frames(&mut self, requests: &[u8], count: usize, server: &str) -> Result<Vec<Frame>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.stream
            .write_all(requests)
            .await
            .map_err(|e| io_err(server, e))?;
        let mut frames = Vec::with_capacity(count);
        while frames.len() < count {
            match self.inbox.frame(server)? {
                Some(frame) => frames.push(frame),
                None => {
                    let n = self
                        .stream
                        .read(self.inbox.space())
                        .await
                        .map_err(|e| io_err(server, e))?;
                    self.inbox.filled(n, server)?;
                }
            }
        }
        Ok(frames)
    }
}

/// A read or write timeout surfaces as `WouldBlock` on some platforms: report it as a timeout.
fn timed_out(e: std::io::Error) -> std::io::Error {
    if e.kind() == ErrorKind::WouldBlock {
        std::io::Error::new(ErrorKind::TimedOut, "no data from the server in time")
    } else {
        e
    }
}

/// One server: its address, rendezvous seed, idle connections and fail-fast state.
#[derive(Debug)]
pub(super) struct Server {
    pub(super) name: String,
    addr: SocketAddr,
    /// blake3 of the server name, the rendezvous seed.
    pub(super) seed: [u8; 32],
    idle: Mutex<Vec<Conn>>,
    /// Idle non-blocking connections (feature `tokio`): the async hit path's reads.
    #[cfg(feature = "tokio")]
    idle_async: Mutex<Vec<AsyncConn>>,
    down: DownMark,
    /// The largest item the server stores, once known (asked once, on the first connection).
    item_size: Mutex<Option<usize>>,
    /// Connections opened so far (each may be to a server that restarted since the last).
    opened: std::sync::atomic::AtomicU64,
}

/// What `stats settings` told about the item size.
enum ItemSize {
    Known(usize),
    /// The server or proxy refused the command with an error line (`ERROR`, ...); the
    /// connection is still in sync.
    Refused,
}

impl Server {
    pub(super) fn new(name: String, addr: SocketAddr) -> Self {
        Server {
            seed: super::placement::seed(&name),
            name,
            addr,
            idle: Mutex::new(Vec::new()),
            #[cfg(feature = "tokio")]
            idle_async: Mutex::new(Vec::new()),
            down: DownMark::default(),
            item_size: Mutex::new(None),
            opened: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How many connections to this server were opened so far.
    pub(super) fn connections_opened(&self) -> u64 {
        self.opened.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The largest item the server stores, if known yet.
    pub(super) fn item_size(&self) -> Option<usize> {
        *lock(&self.item_size)
    }

    pub(super) fn mark_down(&self, options: &MemcachedOptions) {
        self.down.mark(options.retry_after);
        lock(&self.idle).clear();
        #[cfg(feature = "tokio")]
        lock(&self.idle_async).clear();
    }

    /// Runs one exchange `f` on a pooled or new connection, under one deadline of
    /// `op_timeout`. With `fail_fast`, a server marked down is not tried. A failure to talk to
    /// the server (connect, I/O, timeout) marks it down; an answer the client does not
    /// understand (`Error::Protocol`, such as a `CLIENT_ERROR`) drops the connection but does
    /// not. A successful exchange clears the mark.
    ///
    /// A pooled connection the server closed while it sat idle (a restart, an idle timeout)
    /// fails its first exchange with a closed-connection error: the exchange is then run
    /// again, once, on a new connection, and the rest of the pool is dropped (it went to
    /// the same server). Running an exchange twice is safe for every command this client
    /// sends: reads, `set` and `delete` are idempotent; a repeated `incr` only invalidates
    /// more, a repeated `append` adds a token twice (read as once); a repeated `add`, `cas` or
    /// lease finds the first one's item and reports a lost race, which the protocol treats
    /// as such (`docs/src/failure-modes.md`).
    pub(super) fn exchange<T>(
        &self,
        options: &MemcachedOptions,
        fail_fast: bool,
        mut f: impl FnMut(&mut Conn, &Deadline) -> Result<T>,
    ) -> Result<T> {
        if fail_fast {
            self.refuse_if_down()?;
        }
        let deadline = Deadline::after(options.op_timeout);
        // (Popped before the match: the pool's lock must not be held while it runs.)
        let pooled = lock(&self.idle).pop();
        let result = match pooled {
            Some(mut pooled) => match (pooled.inbox.received, f(&mut pooled, &deadline)) {
                // Closed before a byte of the reply: the connection was closed while idle.
                (before, Err(e)) if is_close(&e) && pooled.inbox.received == before => {
                    self.closed_while_idle(&e, &self.idle);
                    self.checkout(options, &deadline)
                        .and_then(|mut conn| f(&mut conn, &deadline).map(|v| (v, conn)))
                }
                (_, r) => r.map(|v| (v, pooled)),
            },
            None => self
                .checkout(options, &deadline)
                .and_then(|mut conn| f(&mut conn, &deadline).map(|v| (v, conn))),
        };
        self.settle(options, result, &self.idle, |c| c.inbox.is_clean())
    }

    /// A server marked down is not tried (fail fast) until its `retry_after` is over.
    fn refuse_if_down(&self) -> Result<()> {
        self.down.refuse(&self.name)
    }

    /// A pooled connection was found closed before any reply: the rest of `pool` went to the
    /// same server and is dropped.
    fn closed_while_idle<C>(&self, e: &Error, pool: &Mutex<Vec<C>>) {
        tracing::debug!(server = %self.name, error = %e, "pooled memcached connection was closed; reconnecting");
        lock(pool).clear();
    }

    /// The end of every exchange, blocking or not: a success clears the server's mark and
    /// pools its connection if nothing is left unread; a failure to talk to the server
    /// marks it down (an answer not understood only drops the connection).
    fn settle<T, C>(
        &self,
        options: &MemcachedOptions,
        result: Result<(T, C)>,
        pool: &Mutex<Vec<C>>,
        clean: impl FnOnce(&C) -> bool,
    ) -> Result<T> {
        match result {
            Ok((v, conn)) => {
                self.down.clear();
                if clean(&conn) {
                    let mut idle = lock(pool);
                    if idle.len() < options.pool_size {
                        idle.push(conn);
                    }
                }
                Ok(v)
            }
            Err(e) => {
                if matches!(e, Error::Io { .. } | Error::Unavailable { .. }) {
                    self.mark_down(options);
                }
                Err(e)
            }
        }
    }

    /// The blocking connections' largest data block: the item size once known.
    fn max_data(&self) -> usize {
        self.item_size().unwrap_or(DEFAULT_ITEM_SIZE) + DATA_MARGIN
    }

    /// [`exchange`](Self::exchange) without blocking the thread (feature `tokio`): sends
    /// `requests` (`count` encoded commands) on a pooled or new non-blocking connection,
    /// reads their `count` reply frames and hands them to `answer`, all under one
    /// `op_timeout`. Fails fast, retries a connection closed while idle, and marks the
    /// server down, as a blocking exchange does; an error from `answer` (a reply out of
    /// step) drops the connection; a connection is pooled only after a complete exchange, so
    /// a cancelled or timed-out one is never reused.
    #[cfg(feature = "tokio")]
    pub(super) async fn exchange_async<T>(
        &self,
        options: &MemcachedOptions,
        requests: &[u8],
        count: usize,
        answer: impl FnOnce(Vec<Frame>) -> Result<T>,
    ) -> Result<T> {
        self.refuse_if_down()?;
        let run = async {
            // (Popped in its own statement: the pool's lock is not held across an await.)
            let pooled = lock(&self.idle_async).pop();
            match pooled {
                Some(mut pooled) => {
                    let before = pooled.inbox.received;
                    match pooled.frames(requests, count, &self.name).await {
                        Err(e) if is_close(&e) && pooled.inbox.received == before => {
                            self.closed_while_idle(&e, &self.idle_async);
                            let mut conn = self.connect_async(options).await?;
                            let frames = conn.frames(requests, count, &self.name).await?;
                            Ok((frames, conn))
                        }
                        r => r.map(|frames| (frames, pooled)),
                    }
                }
                None => {
                    let mut conn = self.connect_async(options).await?;
                    let frames = conn.frames(requests, count, &self.name).await?;
                    Ok((frames, conn))
                }
            }
        };
        let result = match tokio::time::timeout(options.op_timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(io_err(
                &self.name,
                std::io::Error::new(
                    ErrorKind::TimedOut,
                    format!("operation deadline of {:?} exceeded", options.op_timeout),
                ),
            )),
        };
        let result = result.and_then(|(frames, conn)| answer(frames).map(|v| (v, conn)));
        self.settle(options, result, &self.idle_async, |c| c.inbox.is_clean())
    }

    #[cfg(feature = "tokio")]
    async fn connect_async(&self, options: &MemcachedOptions) -> Result<AsyncConn> {
        let unavailable = |reason: String| Error::Unavailable {
            server: self.name.clone(),
            reason,
        };
        let stream = match tokio::time::timeout(
            options.connect_timeout,
            tokio::net::TcpStream::connect(self.addr),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(unavailable(e.to_string())),
            Err(_) => return Err(unavailable("connect timed out".into())),
        };
        let _ = stream.set_nodelay(true);
        self.opened
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(AsyncConn {
            stream,
            inbox: Inbox::new(self.max_data()),
        })
    }

    /// An idle connection, or a new one (that learns the item size if still unknown).
    fn checkout(&self, options: &MemcachedOptions, deadline: &Deadline) -> Result<Conn> {
        if let Some(conn) = lock(&self.idle).pop() {
            return Ok(conn);
        }
        let mut conn = self.connect(options, deadline)?;
        if self.item_size().is_some() {
            return Ok(conn);
        }
        match Self::ask_item_size(&mut conn, deadline, &self.name) {
            Ok(ItemSize::Known(size)) => {
                self.learn_item_size(size);
                conn.inbox.set_max_data(size + DATA_MARGIN);
                Ok(conn)
            }
            Ok(ItemSize::Refused) => {
                tracing::warn!(
                    server = %self.name,
                    "memcached server refused `stats settings`; assuming the default item size"
                );
                self.learn_item_size(DEFAULT_ITEM_SIZE);
                Ok(conn)
            }
            // A proxy may close the connection, or answer nonsense, on a command it does not
            // know: assume the default and continue on a fresh connection. A timeout is the
            // server being slow, not an answer: ask again next time.
            Err(e @ Error::Io { .. }) if !is_close(&e) => Err(e),
            Err(e) => {
                tracing::warn!(
                    server = %self.name,
                    error = %e,
                    "no item size from memcached server; assuming the default"
                );
                self.learn_item_size(DEFAULT_ITEM_SIZE);
                self.connect(options, deadline)
            }
        }
    }

    fn learn_item_size(&self, size: usize) {
        lock(&self.item_size).get_or_insert(size);
    }

    fn connect(&self, options: &MemcachedOptions, deadline: &Deadline) -> Result<Conn> {
        let timeout = deadline.remaining(&self.name)?.min(options.connect_timeout);
        let conn =
            Conn::open(&self.addr, timeout, options.io_timeout, self.max_data()).map_err(|e| {
                Error::Unavailable {
                    server: self.name.clone(),
                    reason: e.to_string(),
                }
            })?;
        self.opened
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(conn)
    }

    fn ask_item_size(conn: &mut Conn, deadline: &Deadline, server: &str) -> Result<ItemSize> {
        conn.send_requests(&[Request::StatsSettings], deadline, server)?;
        let mut size = DEFAULT_ITEM_SIZE;
        loop {
            match conn.recv(deadline, server)? {
                Frame::End => return Ok(ItemSize::Known(size)),
                Frame::Stat { name, value } if name == "item_size_max" => {
                    size = value
                        .trim()
                        .parse::<u64>()
                        .ok()
                        .and_then(|v| usize::try_from(v).ok())
                        .map_or(DEFAULT_ITEM_SIZE, |v| v.clamp(MIN_ITEM_SIZE, MAX_ITEM_SIZE));
                }
                Frame::Stat { .. } => {}
                Frame::Error | Frame::ClientError(_) | Frame::ServerError(_) => {
                    return Ok(ItemSize::Refused)
                }
                other => return Err(protocol_err(server, &format!("{other:?}"))),
            }
        }
    }
}

/// Whether an error is the server closing or resetting the connection.
pub(super) fn is_close(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if matches!(
        source.kind(),
        ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
    ))
}
