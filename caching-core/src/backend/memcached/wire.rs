//! memcached's text protocol without I/O: an incremental [`Decoder`] of server replies and an
//! encoder of requests ([`Request::encode`]).
//!
//! Everything here is pure (bytes in, frames out), so it is tested without a server. The
//! decoder takes bytes in any chunking, one at a time included, and bounds everything it holds:
//! a line longer than [`MAX_LINE`], or a data block announced longer than the `max_data` given
//! to [`Decoder::new`], is an error, never an allocation. It only ever allocates for bytes it
//! has actually received, so a server announcing `VALUE k 0 1000000000000` costs nothing.
//!
//! ```
//! use caching_core::backend::memcached::wire::{Decoder, Frame, Request};
//! let mut request = Vec::new();
//! Request::Gets(&["a"]).encode(&mut request);
//! assert_eq!(request, b"gets a\r\n");
//!
//! let mut decoder = Decoder::new(1024);
//! let mut input: &[u8] = b"VALUE a 0 2 7\r\nhi\r\nEND\r\n";
//! let first = decoder.decode(&mut input).unwrap();
//! assert_eq!(
//!     first,
//!     Some(Frame::Value { key: "a".into(), flags: 0, cas: Some(7), data: b"hi".to_vec() })
//! );
//! assert_eq!(decoder.decode(&mut input).unwrap(), Some(Frame::End));
//! assert!(input.is_empty() && decoder.is_idle());
//! ```

/// Longest reply line accepted, CRLF included. Real lines are far shorter: a `VALUE` line with a
/// 250-byte key and 20-digit numbers is under 320 bytes.
///
/// ```
/// assert!(caching_core::backend::memcached::wire::MAX_LINE >= 320);
/// ```
pub const MAX_LINE: usize = 2048;

/// Longest key memcached accepts.
///
/// ```
/// assert_eq!(caching_core::backend::memcached::wire::MAX_KEY, 250);
/// ```
pub const MAX_KEY: usize = 250;

/// Longest text kept in an error (the offending line is truncated to it).
const MAX_ERROR_TEXT: usize = 200;

/// One complete reply unit from a server.
///
/// ```
/// use caching_core::backend::memcached::wire::{Decoder, Frame};
/// let mut d = Decoder::new(16);
/// let mut input: &[u8] = b"STORED\r\n42\r\n";
/// assert_eq!(d.decode(&mut input).unwrap(), Some(Frame::Stored));
/// assert_eq!(d.decode(&mut input).unwrap(), Some(Frame::Number(42)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `VALUE <key> <flags> <bytes> [<cas>]` and its data block (without the final CRLF).
    Value {
        /// The key.
        key: String,
        /// The client flags stored with the value.
        flags: u32,
        /// The CAS token (present in answers to `gets`).
        cas: Option<u64>,
        /// The value.
        data: Vec<u8>,
    },
    /// `VA <bytes> <flags>*` and its data block: the answer of a meta get (`mg`) with `v`.
    /// Of the return flags only `c` (the CAS token) and `W` (this request vivified the
    /// missing item, and so won its lease) are kept.
    MetaValue {
        /// The CAS token (`c` flag).
        cas: Option<u64>,
        /// Whether the item was created by this request (`W` flag).
        won: bool,
        /// The value.
        data: Vec<u8>,
    },
    /// `EN`: a meta get found nothing (and created nothing).
    MetaMiss,
    /// `END`: the end of a retrieval or `stats` answer.
    End,
    /// `STORED`.
    Stored,
    /// `NOT_STORED`: an `add` of an existing key, an `append` to a missing key (or one that
    /// would grow too large).
    NotStored,
    /// `EXISTS`: a `cas` whose token is out of date.
    Exists,
    /// `NOT_FOUND`: the key does not exist (`cas`, `delete`, `incr`).
    NotFound,
    /// `DELETED`.
    Deleted,
    /// `TOUCHED`.
    Touched,
    /// A decimal number: the new value of a counter after `incr`/`decr`.
    Number(u64),
    /// `VERSION <text>`.
    Version(String),
    /// `STAT <name> <value>`.
    Stat {
        /// The statistic's or setting's name.
        name: String,
        /// Its value, as text.
        value: String,
    },
    /// `ERROR`: the server (or proxy) does not know the command.
    Error,
    /// `CLIENT_ERROR <message>`: the server rejects the request.
    ClientError(String),
    /// `SERVER_ERROR <message>`: the server failed to carry out the request.
    ServerError(String),
}

/// A reply that breaks the protocol. After one, the stream is out of sync: the connection
/// must be dropped, and the decoder keeps returning the same error.
///
/// ```
/// use caching_core::backend::memcached::wire::{Decoder, WireError};
/// let mut d = Decoder::new(1024);
/// let mut input: &[u8] = b"VALUE k 0 1000000000000 1\r\n";
/// assert!(matches!(d.decode(&mut input), Err(WireError::DataTooLong { .. })));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A line without its end within [`MAX_LINE`] bytes.
    #[error("reply line longer than {limit} bytes")]
    LineTooLong {
        /// The limit.
        limit: usize,
    },
    /// A line ending in a bare LF instead of CRLF.
    #[error("reply line not terminated by CRLF: {0:?}")]
    BareNewline(String),
    /// A line that is not UTF-8 text.
    #[error("reply line is not text: {0:?}")]
    NotText(String),
    /// A line that is no reply of the protocol.
    #[error("unknown reply line {0:?}")]
    UnknownLine(String),
    /// A `VALUE` or `STAT` line with missing, extra or invalid fields.
    #[error("malformed reply line {0:?}")]
    Malformed(String),
    /// A number that is not decimal digits or does not fit its field.
    #[error("number out of range or malformed in {0:?}")]
    BadNumber(String),
    /// A data block announced longer than the decoder's limit.
    #[error("data block of {len} bytes announced, over the limit of {limit} bytes")]
    DataTooLong {
        /// The announced length.
        len: u64,
        /// The limit.
        limit: usize,
    },
    /// A data block not followed by CRLF (its announced length was wrong).
    #[error("data block not terminated by CRLF")]
    BadDataTerminator,
}

/// Incremental decoder of server replies.
///
/// Feed it whatever bytes have arrived with [`decode`](Decoder::decode); it consumes them and
/// returns a [`Frame`] as soon as one is complete. It holds at most one partial frame: a line
/// of at most [`MAX_LINE`] bytes, or a data block of at most `max_data + 2` bytes, growing its
/// buffers only as bytes arrive ([`capacity`](Decoder::capacity) never exceeds
/// `MAX_LINE + max_data + 2`).
///
/// ```
/// use caching_core::backend::memcached::wire::{Decoder, Frame};
/// let mut d = Decoder::new(1024);
/// let reply = b"VERSION 1.6.21\r\n";
/// let mut frames = Vec::new();
/// for byte in reply.chunks(1) {
///     let mut input = byte;
///     if let Some(f) = d.decode(&mut input).unwrap() {
///         frames.push(f);
///     }
/// }
/// assert_eq!(frames, [Frame::Version("1.6.21".into())]);
/// ```
#[derive(Debug)]
pub struct Decoder {
    max_data: usize,
    line: Vec<u8>,
    state: State,
    failed: Option<WireError>,
}

#[derive(Debug)]
enum State {
    Line,
    Data {
        header: Header,
        len: usize,
        data: Vec<u8>,
    },
}

/// The line announcing a data block.
#[derive(Debug)]
enum Header {
    /// `VALUE <key> <flags> <bytes> [<cas>]`.
    Value {
        key: String,
        flags: u32,
        cas: Option<u64>,
    },
    /// `VA <bytes> <flags>*`.
    Meta { cas: Option<u64>, won: bool },
}

enum Parsed {
    Frame(Frame),
    Data { header: Header, len: usize },
}

impl Decoder {
    /// A decoder that accepts data blocks of at most `max_data` bytes.
    ///
    /// ```
    /// let d = caching_core::backend::memcached::wire::Decoder::new(1 << 20);
    /// assert_eq!(d.max_data(), 1 << 20);
    /// ```
    pub fn new(max_data: usize) -> Self {
        Decoder {
            max_data,
            line: Vec::new(),
            state: State::Line,
            failed: None,
        }
    }

    /// The longest data block accepted.
    ///
    /// ```
    /// assert_eq!(caching_core::backend::memcached::wire::Decoder::new(7).max_data(), 7);
    /// ```
    pub fn max_data(&self) -> usize {
        self.max_data
    }

    /// Changes the longest data block accepted (from the next `VALUE` line on).
    ///
    /// ```
    /// let mut d = caching_core::backend::memcached::wire::Decoder::new(7);
    /// d.set_max_data(9);
    /// assert_eq!(d.max_data(), 9);
    /// ```
    pub fn set_max_data(&mut self, max_data: usize) {
        self.max_data = max_data;
    }

    /// Consumes bytes from the front of `input` until a frame is complete (`Some`, with the rest
    /// of `input` left for the next call) or `input` is used up (`None`: more bytes needed).
    ///
    /// ```
    /// use caching_core::backend::memcached::wire::{Decoder, Frame};
    /// let mut d = Decoder::new(1024);
    /// let mut input: &[u8] = b"DELE";
    /// assert_eq!(d.decode(&mut input).unwrap(), None);
    /// let mut input: &[u8] = b"TED\r\n";
    /// assert_eq!(d.decode(&mut input).unwrap(), Some(Frame::Deleted));
    /// ```
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.decode_inner(input);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
            self.line = Vec::new();
            self.state = State::Line;
        }
        result
    }

    /// Whether the decoder is between frames with nothing buffered (a connection in this state,
    /// with no unread bytes, can be reused).
    ///
    /// ```
    /// let mut d = caching_core::backend::memcached::wire::Decoder::new(8);
    /// let mut input: &[u8] = b"EN";
    /// d.decode(&mut input).unwrap();
    /// assert!(!d.is_idle());
    /// ```
    pub fn is_idle(&self) -> bool {
        self.failed.is_none() && self.line.is_empty() && matches!(self.state, State::Line)
    }

    /// Bytes held of the frame in progress.
    ///
    /// ```
    /// let mut d = caching_core::backend::memcached::wire::Decoder::new(8);
    /// let mut input: &[u8] = b"VALUE k 0 8\r\nabc";
    /// d.decode(&mut input).unwrap();
    /// assert_eq!(d.buffered(), 3);
    /// ```
    pub fn buffered(&self) -> usize {
        self.line.len()
            + match &self.state {
                State::Line => 0,
                State::Data { data, .. } => data.len(),
            }
    }

    /// Bytes allocated by the decoder's buffers: at most `MAX_LINE + max_data + 2`.
    ///
    /// ```
    /// use caching_core::backend::memcached::wire::{Decoder, MAX_LINE};
    /// let mut d = Decoder::new(8);
    /// let mut input: &[u8] = b"VALUE k 0 8\r\nabc";
    /// d.decode(&mut input).unwrap();
    /// assert!(d.capacity() <= MAX_LINE + 8 + 2);
    /// ```
    pub fn capacity(&self) -> usize {
        self.line.capacity()
            + match &self.state {
                State::Line => 0,
                State::Data { data, .. } => data.capacity(),
            }
    }

    fn decode_inner(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, WireError> {
        loop {
            match std::mem::replace(&mut self.state, State::Line) {
                State::Line => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let room = MAX_LINE - self.line.len();
                    let scan = &input[..input.len().min(room)];
                    let Some(end) = scan.iter().position(|&b| b == b'\n') else {
                        push_capped(&mut self.line, scan, MAX_LINE);
                        *input = &input[scan.len()..];
                        if self.line.len() >= MAX_LINE {
                            return Err(WireError::LineTooLong { limit: MAX_LINE });
                        }
                        return Ok(None);
                    };
                    // A line that arrived whole is parsed where it lies; one split across
                    // reads is put together in `line` first.
                    let parsed = if self.line.is_empty() {
                        parse_line(&scan[..=end], self.max_data)
                    } else {
                        push_capped(&mut self.line, &scan[..=end], MAX_LINE);
                        let parsed = parse_line(&self.line, self.max_data);
                        self.line.clear();
                        parsed
                    };
                    *input = &input[end + 1..];
                    match parsed? {
                        Parsed::Frame(f) => return Ok(Some(f)),
                        Parsed::Data { header, len } => {
                            self.state = State::Data {
                                header,
                                len,
                                data: Vec::new(),
                            };
                        }
                    }
                }
                State::Data {
                    header,
                    len,
                    mut data,
                } => {
                    // `len <= max_data`, checked on the VALUE line, so `len + 2` cannot overflow.
                    let total = len + 2;
                    let take = (total - data.len()).min(input.len());
                    push_capped(&mut data, &input[..take], total);
                    *input = &input[take..];
                    if data.len() < total {
                        self.state = State::Data { header, len, data };
                        return Ok(None);
                    }
                    if data[len..] != *b"\r\n" {
                        return Err(WireError::BadDataTerminator);
                    }
                    data.truncate(len);
                    return Ok(Some(match header {
                        Header::Value { key, flags, cas } => Frame::Value {
                            key,
                            flags,
                            cas,
                            data,
                        },
                        Header::Meta { cas, won } => Frame::MetaValue { cas, won, data },
                    }));
                }
            }
        }
    }
}

/// Appends `bytes`, growing the allocation geometrically but never past `cap` bytes.
/// The caller guarantees `v.len() + bytes.len() <= cap`.
fn push_capped(v: &mut Vec<u8>, bytes: &[u8], cap: usize) {
    let needed = v.len() + bytes.len();
    if needed > v.capacity() {
        let target = needed.max(v.capacity().saturating_mul(2)).max(64).min(cap);
        let target = target.max(needed);
        v.reserve_exact(target - v.len());
    }
    v.extend_from_slice(bytes);
}

fn excerpt(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_ERROR_TEXT)]).into_owned()
}

/// Parses one line, CRLF included.
fn parse_line(raw: &[u8], max_data: usize) -> Result<Parsed, WireError> {
    let Some(body) = raw.strip_suffix(b"\r\n") else {
        return Err(WireError::BareNewline(excerpt(raw)));
    };
    // The answer to a meta get, the most frequent line, is read as bytes.
    if let Some(fields) = body.strip_prefix(b"VA ") {
        return parse_meta_value(body, fields, max_data);
    }
    let Ok(line) = std::str::from_utf8(body) else {
        return Err(WireError::NotText(excerpt(body)));
    };
    let text = |s: &str| s.chars().take(MAX_ERROR_TEXT).collect::<String>();
    let frame = match line {
        "END" => Frame::End,
        "EN" => Frame::MetaMiss,
        "STORED" => Frame::Stored,
        "NOT_STORED" => Frame::NotStored,
        "EXISTS" => Frame::Exists,
        "NOT_FOUND" => Frame::NotFound,
        "DELETED" => Frame::Deleted,
        "TOUCHED" => Frame::Touched,
        "ERROR" => Frame::Error,
        l if l.starts_with("ERROR ") => Frame::Error,
        l if l == "CLIENT_ERROR" || l.starts_with("CLIENT_ERROR ") => {
            Frame::ClientError(text(l["CLIENT_ERROR".len()..].trim_start()))
        }
        l if l == "SERVER_ERROR" || l.starts_with("SERVER_ERROR ") => {
            Frame::ServerError(text(l["SERVER_ERROR".len()..].trim_start()))
        }
        l if l.starts_with("VERSION ") => Frame::Version(text(&l["VERSION ".len()..])),
        l if l.starts_with("STAT ") => {
            let (name, value) = l["STAT ".len()..].split_once(' ').unwrap_or((&l[5..], ""));
            if name.is_empty() {
                return Err(WireError::Malformed(text(l)));
            }
            Frame::Stat {
                name: name.to_string(),
                value: value.to_string(),
            }
        }
        l if l.starts_with("VALUE ") => return parse_value(l, max_data),
        l if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) => {
            Frame::Number(parse_u64(l).ok_or_else(|| WireError::BadNumber(text(l)))?)
        }
        l => return Err(WireError::UnknownLine(text(l))),
    };
    Ok(Parsed::Frame(frame))
}

fn parse_value(line: &str, max_data: usize) -> Result<Parsed, WireError> {
    let text = || line.chars().take(MAX_ERROR_TEXT).collect::<String>();
    let fields: Vec<&str> = line.split(' ').collect();
    let (key, flags, len, cas) = match fields.as_slice() {
        ["VALUE", key, flags, len] => (*key, *flags, *len, None),
        ["VALUE", key, flags, len, cas] => (*key, *flags, *len, Some(*cas)),
        _ => return Err(WireError::Malformed(text())),
    };
    if key.is_empty() || key.len() > MAX_KEY || key.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(WireError::Malformed(text()));
    }
    let number = |s: &str| parse_u64(s).ok_or_else(|| WireError::BadNumber(text()));
    let flags = u32::try_from(number(flags)?).map_err(|_| WireError::BadNumber(text()))?;
    let len = number(len)?;
    let cas = cas.map(number).transpose()?;
    Ok(Parsed::Data {
        header: Header::Value {
            key: key.to_string(),
            flags,
            cas,
        },
        len: data_len(len, max_data)?,
    })
}

/// A data block's announced length, within `max_data`.
fn data_len(len: u64, max_data: usize) -> Result<usize, WireError> {
    match usize::try_from(len) {
        Ok(l) if l <= max_data => Ok(l),
        _ => Err(WireError::DataTooLong {
            len,
            limit: max_data,
        }),
    }
}

/// `VA <bytes> <flags>*` (`line`, whose `fields` follow `VA `): flags are single letters,
/// most followed by a token; `c<cas>` and `W` are kept, the others (`k`, `t`, `s`, `Z`, `X`,
/// ..) are checked for shape and dropped.
fn parse_meta_value(line: &[u8], fields: &[u8], max_data: usize) -> Result<Parsed, WireError> {
    let text = || String::from_utf8_lossy(&line[..line.len().min(MAX_ERROR_TEXT)]).into_owned();
    let mut fields = fields.split(|&b| b == b' ');
    let len = fields
        .next()
        .and_then(parse_u64_bytes)
        .ok_or_else(|| WireError::BadNumber(text()))?;
    let (mut cas, mut won) = (None, false);
    for flag in fields {
        match flag {
            [b'c', token @ ..] => {
                cas = Some(parse_u64_bytes(token).ok_or_else(|| WireError::BadNumber(text()))?)
            }
            [b'W'] => won = true,
            [c, ..] if c.is_ascii_alphabetic() && flag.iter().all(|&b| b > b' ' && b != 0x7f) => {}
            _ => return Err(WireError::Malformed(text())),
        }
    }
    Ok(Parsed::Data {
        header: Header::Meta { cas, won },
        len: data_len(len, max_data)?,
    })
}

/// A decimal `u64`: digits only (no sign, no spaces), no overflow.
fn parse_u64(s: &str) -> Option<u64> {
    parse_u64_bytes(s.as_bytes())
}

/// [`parse_u64`] of bytes.
fn parse_u64_bytes(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// The storage commands without a CAS token.
///
/// ```
/// use caching_core::backend::memcached::wire::StoreVerb;
/// assert_eq!(StoreVerb::Append.as_str(), "append");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreVerb {
    /// `set`: store unconditionally.
    Set,
    /// `add`: store only if the key does not exist.
    Add,
    /// `append`: append to an existing value.
    Append,
}

impl StoreVerb {
    /// The command's name.
    ///
    /// ```
    /// assert_eq!(caching_core::backend::memcached::wire::StoreVerb::Add.as_str(), "add");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            StoreVerb::Set => "set",
            StoreVerb::Add => "add",
            StoreVerb::Append => "append",
        }
    }
}

/// A request, encoded by [`encode`](Request::encode). Keys must be valid memcached keys (no
/// whitespace or control characters, at most 250 bytes): the encoder does not check them.
/// Every request gets a reply (`noreply` is never used).
///
/// ```
/// use caching_core::backend::memcached::wire::{Request, StoreVerb};
/// let mut buf = Vec::new();
/// Request::Store { verb: StoreVerb::Set, key: "k", value: b"v", exptime: 0 }.encode(&mut buf);
/// Request::Cas { key: "k", value: b"w", exptime: 60, cas: 9 }.encode(&mut buf);
/// Request::Incr { key: "n", delta: 2 }.encode(&mut buf);
/// assert_eq!(buf, b"set k 0 0 1\r\nv\r\ncas k 0 60 1 9\r\nw\r\nincr n 2\r\n");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// `gets <key>*`: values with their CAS tokens, then `END`.
    Gets(&'a [&'a str]),
    /// `set`, `add` or `append` with flags 0.
    Store {
        /// The command.
        verb: StoreVerb,
        /// The key.
        key: &'a str,
        /// The value.
        value: &'a [u8],
        /// memcached's exptime (0: never).
        exptime: u64,
    },
    /// `cas`: store if the value's token is still `cas`.
    Cas {
        /// The key.
        key: &'a str,
        /// The value.
        value: &'a [u8],
        /// memcached's exptime (0: never).
        exptime: u64,
        /// The token read with the value.
        cas: u64,
    },
    /// `mg <key> v c`: the value and its CAS token (`VA`), or `EN`.
    MetaGet(&'a str),
    /// `mg <key> v c N<exptime>`: the value and its CAS token; a missing key is created
    /// empty, expiring as `exptime` says, and the reply says this request won it (`W`).
    MetaGetLease {
        /// The key.
        key: &'a str,
        /// memcached's exptime for an item created for the lease (0: never).
        exptime: u64,
    },
    /// `delete <key>`.
    Delete(&'a str),
    /// `incr <key> <delta>`.
    Incr {
        /// The counter's key.
        key: &'a str,
        /// The increment.
        delta: u64,
    },
    /// `version`.
    Version,
    /// `stats settings` (its `item_size_max` is the largest item the server stores).
    StatsSettings,
}

impl Request<'_> {
    /// Appends the request's bytes (command line and data block) to `buf`.
    ///
    /// ```
    /// use caching_core::backend::memcached::wire::Request;
    /// let mut buf = Vec::new();
    /// Request::Gets(&["a", "b"]).encode(&mut buf);
    /// Request::Delete("a").encode(&mut buf);
    /// Request::Version.encode(&mut buf);
    /// assert_eq!(buf, b"gets a b\r\ndelete a\r\nversion\r\n");
    /// ```
    pub fn encode(&self, buf: &mut Vec<u8>) {
        // Written byte by byte rather than with `write!`: the formatting machinery cost more
        // than the rest of a lookup's encoding (a hit sends one request per key it reads).
        let line = |buf: &mut Vec<u8>, parts: &[&[u8]]| {
            for p in parts {
                buf.extend_from_slice(p);
            }
        };
        match *self {
            Request::Gets(keys) => {
                buf.extend_from_slice(b"gets");
                for k in keys {
                    buf.push(b' ');
                    buf.extend_from_slice(k.as_bytes());
                }
                buf.extend_from_slice(b"\r\n");
            }
            Request::Store {
                verb,
                key,
                value,
                exptime,
            } => {
                line(
                    buf,
                    &[verb.as_str().as_bytes(), b" ", key.as_bytes(), b" 0 "],
                );
                push_decimal(buf, exptime);
                buf.push(b' ');
                push_decimal(buf, value.len() as u64);
                buf.extend_from_slice(b"\r\n");
                buf.extend_from_slice(value);
                buf.extend_from_slice(b"\r\n");
            }
            Request::Cas {
                key,
                value,
                exptime,
                cas,
            } => {
                line(buf, &[b"cas ", key.as_bytes(), b" 0 "]);
                push_decimal(buf, exptime);
                buf.push(b' ');
                push_decimal(buf, value.len() as u64);
                buf.push(b' ');
                push_decimal(buf, cas);
                buf.extend_from_slice(b"\r\n");
                buf.extend_from_slice(value);
                buf.extend_from_slice(b"\r\n");
            }
            Request::MetaGet(key) => line(buf, &[b"mg ", key.as_bytes(), b" v c\r\n"]),
            Request::MetaGetLease { key, exptime } => {
                line(buf, &[b"mg ", key.as_bytes(), b" v c N"]);
                push_decimal(buf, exptime);
                buf.extend_from_slice(b"\r\n");
            }
            Request::Delete(key) => line(buf, &[b"delete ", key.as_bytes(), b"\r\n"]),
            Request::Incr { key, delta } => {
                line(buf, &[b"incr ", key.as_bytes(), b" "]);
                push_decimal(buf, delta);
                buf.extend_from_slice(b"\r\n");
            }
            Request::Version => buf.extend_from_slice(b"version\r\n"),
            Request::StatsSettings => buf.extend_from_slice(b"stats settings\r\n"),
        }
    }
}

/// Appends `n` in decimal.
fn push_decimal(buf: &mut Vec<u8>, n: u64) {
    buf.extend_from_slice(crate::key::decimal(n, &mut [0u8; 20]).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes `input` fed in chunks of `chunk` bytes; the frames, then the error if any.
    fn decode_chunked(
        max_data: usize,
        input: &[u8],
        chunk: usize,
    ) -> (Vec<Frame>, Option<WireError>) {
        let mut d = Decoder::new(max_data);
        let mut frames = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            let mut rest = piece;
            loop {
                match d.decode(&mut rest) {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(e) => return (frames, Some(e)),
                }
            }
        }
        (frames, None)
    }

    fn decode_all(input: &[u8]) -> (Vec<Frame>, Option<WireError>) {
        decode_chunked(1024, input, input.len())
    }

    fn value(key: &str, cas: Option<u64>, data: &[u8]) -> Frame {
        Frame::Value {
            key: key.into(),
            flags: 0,
            cas,
            data: data.to_vec(),
        }
    }

    #[test]
    fn every_reply_kind_decodes() {
        let input = b"VALUE a 5 3 10\r\nabc\r\nVALUE b 0 0\r\n\r\nEND\r\nSTORED\r\nNOT_STORED\r\n\
EXISTS\r\nNOT_FOUND\r\nDELETED\r\nTOUCHED\r\n18446744073709551615\r\n0\r\nVERSION 1.6.21\r\n\
STAT item_size_max 1048576\r\nSTAT empty\r\nERROR\r\nERROR unknown command\r\n\
CLIENT_ERROR cannot increment or decrement non-numeric value\r\n\
SERVER_ERROR object too large for cache\r\n";
        let (frames, err) = decode_all(input);
        assert_eq!(err, None);
        assert_eq!(
            frames,
            vec![
                Frame::Value {
                    key: "a".into(),
                    flags: 5,
                    cas: Some(10),
                    data: b"abc".to_vec()
                },
                value("b", None, b""),
                Frame::End,
                Frame::Stored,
                Frame::NotStored,
                Frame::Exists,
                Frame::NotFound,
                Frame::Deleted,
                Frame::Touched,
                Frame::Number(u64::MAX),
                Frame::Number(0),
                Frame::Version("1.6.21".into()),
                Frame::Stat {
                    name: "item_size_max".into(),
                    value: "1048576".into()
                },
                Frame::Stat {
                    name: "empty".into(),
                    value: "".into()
                },
                Frame::Error,
                Frame::Error,
                Frame::ClientError("cannot increment or decrement non-numeric value".into()),
                Frame::ServerError("object too large for cache".into()),
            ]
        );
        // Any chunking gives the same frames.
        for chunk in [1, 2, 3, 7, 64] {
            assert_eq!(decode_chunked(1024, input, chunk), (frames.clone(), None));
        }
    }

    #[test]
    fn data_may_contain_crlf_and_binary() {
        let input = b"VALUE k 0 6 1\r\n\r\nEND\0\r\nEND\r\n";
        let (frames, err) = decode_all(input);
        assert_eq!(err, None);
        assert_eq!(frames, vec![value("k", Some(1), b"\r\nEND\0"), Frame::End]);
    }

    #[test]
    fn announced_lengths_are_bounded_never_allocated() {
        for line in [
            &b"VALUE k 0 1000000000000 1\r\n"[..],
            b"VALUE k 0 18446744073709551615 1\r\n",
            b"VALUE k 0 1025 1\r\n",
        ] {
            let mut d = Decoder::new(1024);
            let mut input = line;
            assert!(
                matches!(d.decode(&mut input), Err(WireError::DataTooLong { .. })),
                "{line:?}"
            );
            assert!(d.capacity() <= MAX_LINE);
        }
        // Exactly the limit is fine.
        let mut input = Vec::from(&b"VALUE k 0 1024 1\r\n"[..]);
        input.extend_from_slice(&[b'x'; 1024]);
        input.extend_from_slice(b"\r\n");
        let (frames, err) = decode_all(&input);
        assert_eq!(err, None);
        assert_eq!(frames.len(), 1);
    }

    #[test]
    fn numbers_out_of_range_or_malformed_are_errors() {
        for line in [
            &b"18446744073709551616\r\n"[..],
            b"99999999999999999999999\r\n",
            b"VALUE k 0 3 18446744073709551616\r\n",
            b"VALUE k 4294967296 3 1\r\n",
            b"VALUE k 0 +3 1\r\n",
            b"VALUE k 0 -3 1\r\n",
            b"VALUE k 0 3x 1\r\n",
            b"VALUE k 0  3 1\r\n",
        ] {
            let (frames, err) = decode_all(line);
            assert!(frames.is_empty(), "{line:?}");
            assert!(
                matches!(err, Some(WireError::BadNumber(_) | WireError::Malformed(_))),
                "{line:?}: {err:?}"
            );
        }
    }

    #[test]
    fn malformed_lines_are_errors() {
        type Check = fn(&WireError) -> bool;
        let cases: &[(&[u8], Check)] = &[
            (b"HELLO\r\n", |e| matches!(e, WireError::UnknownLine(_))),
            (b"\r\n", |e| matches!(e, WireError::UnknownLine(_))),
            (b"END\n", |e| matches!(e, WireError::BareNewline(_))),
            (b"\xff\xfe\r\n", |e| matches!(e, WireError::NotText(_))),
            (b"VALUE k 0\r\n", |e| matches!(e, WireError::Malformed(_))),
            (b"VALUE k 0 1 2 3\r\n", |e| {
                matches!(e, WireError::Malformed(_))
            }),
            (b"VALUE k\x01 0 1 2\r\n", |e| {
                matches!(e, WireError::Malformed(_))
            }),
            (b"STAT \r\n", |e| matches!(e, WireError::Malformed(_))),
            (b"VALUE k 0 3 1\r\nabcd\r\n", |e| {
                matches!(e, WireError::BadDataTerminator)
            }),
            (b"VALUE k 0 3 1\r\nab\r\nEND\r\n", |e| {
                matches!(e, WireError::BadDataTerminator)
            }),
        ];
        for (input, expected) in cases {
            let (_, err) = decode_all(input);
            let err = err.unwrap_or_else(|| panic!("{input:?} decoded"));
            assert!(expected(&err), "{input:?}: {err:?}");
        }
        let long_key = format!("VALUE {} 0 1 1\r\n", "k".repeat(MAX_KEY + 1));
        assert!(matches!(
            decode_all(long_key.as_bytes()).1,
            Some(WireError::Malformed(_))
        ));
    }

    #[test]
    fn overlong_lines_are_errors_and_bounded() {
        let mut d = Decoder::new(16);
        let junk = vec![b'a'; 10 * MAX_LINE];
        let mut input = &junk[..];
        assert_eq!(
            d.decode(&mut input),
            Err(WireError::LineTooLong { limit: MAX_LINE })
        );
        assert!(d.capacity() <= MAX_LINE);
        // Byte by byte too.
        let mut d = Decoder::new(16);
        let mut err = None;
        for b in junk.chunks(1) {
            let mut input = b;
            if let Err(e) = d.decode(&mut input) {
                err = Some(e);
                break;
            }
            assert!(d.capacity() <= MAX_LINE);
        }
        assert_eq!(err, Some(WireError::LineTooLong { limit: MAX_LINE }));
    }

    #[test]
    fn truncated_frames_wait_for_more_and_an_error_sticks() {
        let mut d = Decoder::new(16);
        let mut input: &[u8] = b"VALUE k 0 3 1\r\nab";
        assert_eq!(d.decode(&mut input), Ok(None));
        assert!(!d.is_idle());
        assert_eq!(d.buffered(), 2);
        let mut input: &[u8] = b"cX\r\n";
        assert_eq!(d.decode(&mut input), Err(WireError::BadDataTerminator));
        let mut input: &[u8] = b"END\r\n";
        assert_eq!(d.decode(&mut input), Err(WireError::BadDataTerminator));
        assert!(!d.is_idle());
    }

    #[test]
    fn decode_stops_after_each_frame() {
        let mut d = Decoder::new(16);
        let mut input: &[u8] = b"STORED\r\nDELETED\r\nEN";
        assert_eq!(d.decode(&mut input), Ok(Some(Frame::Stored)));
        assert_eq!(input, b"DELETED\r\nEN");
        assert_eq!(d.decode(&mut input), Ok(Some(Frame::Deleted)));
        assert_eq!(d.decode(&mut input), Ok(None));
        assert!(input.is_empty());
        assert!(!d.is_idle());
    }

    #[test]
    fn requests_encode_as_the_protocol_says() {
        let mut buf = Vec::new();
        Request::Store {
            verb: StoreVerb::Add,
            key: "a",
            value: b"\r\n",
            exptime: 2_592_001,
        }
        .encode(&mut buf);
        Request::Store {
            verb: StoreVerb::Append,
            key: "a",
            value: b"",
            exptime: 0,
        }
        .encode(&mut buf);
        Request::StatsSettings.encode(&mut buf);
        Request::Gets(&[]).encode(&mut buf);
        assert_eq!(
            buf,
            b"add a 0 2592001 2\r\n\r\n\r\nappend a 0 0 0\r\n\r\nstats settings\r\ngets\r\n"
        );
    }

    /// Input that often looks like replies, so the decoder reaches every state.
    #[test]
    fn meta_get_replies_decode() {
        let input = b"VA 0 c856774 W\r\n\r\nVA 2 c5 Z t-1 kkey\r\nab\r\nEN\r\nVA 1\r\nx\r\n";
        let (frames, err) = decode_all(input);
        assert_eq!(err, None);
        assert_eq!(
            frames,
            [
                Frame::MetaValue {
                    cas: Some(856774),
                    won: true,
                    data: vec![]
                },
                Frame::MetaValue {
                    cas: Some(5),
                    won: false,
                    data: b"ab".to_vec()
                },
                Frame::MetaMiss,
                Frame::MetaValue {
                    cas: None,
                    won: false,
                    data: b"x".to_vec()
                },
            ]
        );
        for chunk in [1, 2, 5] {
            assert_eq!(decode_chunked(1024, input, chunk), (frames.clone(), None));
        }
        for bad in [
            &b"VA\r\n"[..],
            b"VA x c1\r\n",
            b"VA 1 cx\r\n",
            b"VA 1 1\r\n",
        ] {
            let (_, err) = decode_all(bad);
            assert!(err.is_some(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(matches!(
            decode_all(b"VA 2000 c1\r\n").1,
            Some(WireError::DataTooLong { .. })
        ));
        let mut buf = Vec::new();
        Request::MetaGetLease {
            key: "k",
            exptime: 10,
        }
        .encode(&mut buf);
        Request::MetaGet("j").encode(&mut buf);
        assert_eq!(buf, b"mg k v c N10\r\nmg j v c\r\n");
    }

    fn replyish() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"VALUE k 0 5 1\r\n".to_vec()),
            Just(b"VALUE k 0 40 1\r\n".to_vec()),
            Just(b"VALUE k 0 18446744073709551615 1\r\n".to_vec()),
            Just(b"END\r\n".to_vec()),
            Just(b"VA 3 c9 W\r\n".to_vec()),
            Just(b"VA 18446744073709551615 c1\r\n".to_vec()),
            Just(b"EN\r\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"STAT a b\r\n".to_vec()),
            Just(b"123\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::collection::vec(b'a'..=b'z', 0..(MAX_LINE + 10)),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Every request encodes as the protocol's text says, numbers in plain decimal at
        /// every width (checked against `format!`).
        #[test]
        fn requests_encode_like_their_formatted_text(
            key in "[a-z:0-9]{1,20}",
            value in proptest::collection::vec(any::<u8>(), 0..40),
            exptime in prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>(), 0u64..100],
            n in prop_oneof![Just(0u64), Just(9u64), Just(10u64), Just(u64::MAX), any::<u64>()],
        ) {
            let encoded = |r: Request<'_>| {
                let mut buf = Vec::new();
                r.encode(&mut buf);
                buf
            };
            let with_data = |line: String| [line.as_bytes(), &value[..], b"\r\n"].concat();
            let len = value.len();
            for verb in [StoreVerb::Set, StoreVerb::Add, StoreVerb::Append] {
                prop_assert_eq!(
                    encoded(Request::Store { verb, key: &key, value: &value, exptime }),
                    with_data(format!("{} {key} 0 {exptime} {len}\r\n", verb.as_str()))
                );
            }
            prop_assert_eq!(
                encoded(Request::Cas { key: &key, value: &value, exptime, cas: n }),
                with_data(format!("cas {key} 0 {exptime} {len} {n}\r\n"))
            );
            prop_assert_eq!(encoded(Request::MetaGet(&key)), format!("mg {key} v c\r\n").into_bytes());
            prop_assert_eq!(
                encoded(Request::MetaGetLease { key: &key, exptime }),
                format!("mg {key} v c N{exptime}\r\n").into_bytes()
            );
            prop_assert_eq!(encoded(Request::Delete(&key)), format!("delete {key}\r\n").into_bytes());
            prop_assert_eq!(
                encoded(Request::Incr { key: &key, delta: n }),
                format!("incr {key} {n}\r\n").into_bytes()
            );
        }

        /// Arbitrary bytes in arbitrary chunks: the decoder never panics, never holds more than
        /// its bounds, decodes the same frames whatever the chunking, and consumes every byte
        /// it is given until it fails.
        #[test]
        fn never_panics_never_exceeds_its_bound(
            input in prop_oneof![proptest::collection::vec(any::<u8>(), 0..4096), replyish()],
            cuts in proptest::collection::vec(1usize..300, 1..64),
            max_data in 0usize..64,
        ) {
            let bound = MAX_LINE + max_data + 2;
            let mut d = Decoder::new(max_data);
            let mut frames = Vec::new();
            let mut failed = None;
            let mut rest = &input[..];
            let mut cut = cuts.iter().cycle();
            'feed: while !rest.is_empty() {
                let n = (*cut.next().unwrap()).min(rest.len());
                let (mut chunk, tail) = rest.split_at(n);
                rest = tail;
                loop {
                    let before = chunk.len();
                    let r = d.decode(&mut chunk);
                    prop_assert!(d.buffered() <= bound, "buffered {}", d.buffered());
                    prop_assert!(d.capacity() <= bound, "capacity {}", d.capacity());
                    match r {
                        Ok(Some(f)) => {
                            if let Frame::Value { data, .. } = &f {
                                prop_assert!(data.len() <= max_data);
                            }
                            frames.push(f);
                        }
                        Ok(None) => {
                            prop_assert!(chunk.is_empty(), "left {} of {before}", chunk.len());
                            break;
                        }
                        Err(e) => {
                            failed = Some(e);
                            break 'feed;
                        }
                    }
                }
            }
            // Same result when fed all at once.
            let whole = decode_chunked(max_data, &input, input.len().max(1));
            prop_assert_eq!(whole, (frames, failed));
        }
    }
}
