//! Keys: how objects, flush lists, queries and counters are named in the backend.
//!
//! Every key starts with the configured prefix, is at most 250 bytes and contains no
//! whitespace or control characters, whatever the caller passes in: a key part outside a
//! small safe alphabet is replaced by its blake3 hash (marked with `#`, which the safe alphabet
//! excludes, so a hashed part can never equal a raw one). Query keys are blake3 hashes of
//! length-prefixed parts, so they are injective over their inputs and stable across processes
//! and Rust versions.

use std::fmt;

use crate::error::ConfigError;

/// Version of the key layout. Bump it whenever the layout or the stored envelope changes, so
/// that two deployed versions never read each other's entries.
pub const KEY_SCHEMA_VERSION: &str = "cm1";

/// memcached's key length limit.
pub const MAX_KEY_LEN: usize = 250;

/// Longest prefix accepted.
pub const MAX_PREFIX_LEN: usize = 64;

/// Longest key part kept verbatim; longer parts are hashed.
const MAX_RAW_PART: usize = 48;

fn is_safe_part_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'
}

/// Whether `key` may be sent to memcached as a key.
///
/// ```
/// assert!(caching_core::key::is_valid_key("app:q:abc"));
/// assert!(!caching_core::key::is_valid_key("x\r\nflush_all"));
/// ```
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b > b' ' && b != 0x7f)
}

fn hash_hex(bytes: &[u8], len: usize) -> String {
    let hex = blake3::hash(bytes).to_hex();
    hex[..len].to_string()
}

/// `n` in decimal, written at the end of `buf` (keys and wire formats write numbers on every
/// read: this skips the formatting machinery).
///
/// ```
/// use caching_core::key::decimal;
/// assert_eq!(decimal(0, &mut [0; 20]), "0");
/// assert_eq!(decimal(u64::MAX, &mut [0; 20]), u64::MAX.to_string());
/// ```
pub fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits only.
    std::str::from_utf8(&buf[at..]).unwrap_or_default()
}

/// A key part made safe: verbatim when short and in `[A-Za-z0-9_.-]`, otherwise `#` followed
/// by 32 hex digits of its blake3 hash.
///
/// ```
/// use caching_core::key::safe_part;
/// assert_eq!(safe_part("users"), "users");
/// assert!(safe_part("x\r\nflush_all\r\n").starts_with('#'));
/// assert!(safe_part("héllo").starts_with('#'));
/// ```
pub fn safe_part(part: &str) -> String {
    let mut out = String::new();
    push_safe_part(&mut out, part);
    out
}

/// Whether [`safe_part`]`(part)` is `part` itself.
fn is_raw_safe_part(part: &str) -> bool {
    !part.is_empty() && part.len() <= MAX_RAW_PART && part.bytes().all(is_safe_part_byte)
}

/// Appends [`safe_part`]`(part)` to `out`.
fn push_safe_part(out: &mut String, part: &str) {
    if is_raw_safe_part(part) {
        out.push_str(part);
    } else {
        out.push('#');
        out.push_str(&hash_hex(part.as_bytes(), 32));
    }
}

/// The identity of one row: `o:{model}:{pk}`, without prefix or database label.
///
/// Composite primary keys join their parts with `:`; parts are [`safe_part`]s, which never
/// contain `:`, so the join is unambiguous.
///
/// ```
/// use caching_core::ObjectKey;
/// assert_eq!(ObjectKey::new("users", &["1"]).as_str(), "o:users:1");
/// assert_eq!(ObjectKey::new("pairs", &["1", "2"]).as_str(), "o:pairs:1:2");
/// assert_ne!(ObjectKey::new("t", &["a:b", "c"]), ObjectKey::new("t", &["a", "b:c"]));
/// assert_eq!(ObjectKey::new("users", &["1"]).model(), "users");
/// // A model name that cannot go into a key as is goes in hashed, and is still known.
/// assert_eq!(ObjectKey::new("user rows", &["1"]).model(), "user rows");
/// assert!(ObjectKey::new("user rows", &["1"]).as_str().starts_with("o:#"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    key: String,
    model: ModelName,
}

/// Where an [`ObjectKey`]'s model name is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum ModelName {
    /// In the key as is: `key[2..end]` (no copy: a fill builds an object key per row and
    /// per foreign key).
    InKey(usize),
    /// The key holds its hash: kept apart.
    Apart(Box<str>),
}

impl ObjectKey {
    /// The object key of the row of `model` (its table name) with primary key parts `pk`.
    pub fn new<S: AsRef<str>>(model: &str, pk: &[S]) -> Self {
        // Built in one buffer: every fill builds one per row and per foreign key.
        let (mut key, model) = Self::start(model, pk.len());
        for p in pk {
            key.push(':');
            push_safe_part(&mut key, p.as_ref());
        }
        ObjectKey { key, model }
    }

    /// [`new`](ObjectKey::new) with the primary key parts as anything displayable, written
    /// straight into the key (what `#[derive(Cached)]` builds, once per row and per foreign
    /// key of every result it caches: no string per part).
    ///
    /// ```
    /// use caching_core::ObjectKey;
    /// assert_eq!(ObjectKey::of("users", &[&7]), ObjectKey::new("users", &["7"]));
    /// assert_eq!(ObjectKey::of("pairs", &[&1, &"a b"]), ObjectKey::new("pairs", &["1", "a b"]));
    /// // A `Display` that fails (after writing "1") never names another row (row 1).
    /// struct Broken;
    /// impl std::fmt::Display for Broken {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         f.write_str("1")?;
    ///         Err(std::fmt::Error)
    ///     }
    /// }
    /// assert_ne!(ObjectKey::of("users", &[&Broken]), ObjectKey::new("users", &["1"]));
    /// ```
    pub fn of(model: &str, pk: &[&dyn fmt::Display]) -> Self {
        use fmt::Write as _;
        let (mut key, model) = Self::start(model, pk.len());
        for p in pk {
            key.push(':');
            let start = key.len();
            // Writing to a `String` cannot fail: an error is the `Display` impl's own. What it
            // wrote is kept, marked so the part never equals a complete value (another row's
            // key), and hashed with the mark (`to_string` would have panicked).
            if write!(key, "{p}").is_err() {
                key.push_str("\0display failed");
            }
            if !is_raw_safe_part(&key[start..]) {
                let part = key.split_off(start);
                push_safe_part(&mut key, &part);
            }
        }
        ObjectKey { key, model }
    }

    /// [`of`](ObjectKey::of) for a primary key made of integers, without going through
    /// `Display` (what `#[derive(Cached)]` builds for integer keys: a fill makes one per row
    /// and per foreign key). The key is the same.
    ///
    /// ```
    /// use caching_core::ObjectKey;
    /// assert_eq!(ObjectKey::of_ints("users", &[7]), ObjectKey::of("users", &[&7]));
    /// assert_eq!(ObjectKey::of_ints("t", &[i64::MIN, 0]), ObjectKey::of("t", &[&i64::MIN, &0]));
    /// ```
    pub fn of_ints(model: &str, pk: &[i64]) -> Self {
        let (mut key, model) = Self::start(model, pk.len());
        let mut digits = [0u8; 20];
        for &p in pk {
            key.push(':');
            if p < 0 {
                key.push('-');
            }
            // Digits and a sign: always a raw-safe part (at most 20 bytes).
            key.push_str(decimal(p.unsigned_abs(), &mut digits));
        }
        ObjectKey { key, model }
    }

    /// The key up to its primary key (`o:users`), room for `parts` more, and where the
    /// model's name is.
    fn start(model: &str, parts: usize) -> (String, ModelName) {
        let mut key = String::with_capacity(2 + model.len() + parts * 12);
        key.push_str("o:");
        if is_raw_safe_part(model) {
            key.push_str(model);
            let end = key.len();
            (key, ModelName::InKey(end))
        } else {
            push_safe_part(&mut key, model);
            (key, ModelName::Apart(model.into()))
        }
    }

    /// The key text (`o:users:1`).
    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// The model (table) this row belongs to.
    pub fn model(&self) -> &str {
        match &self.model {
            ModelName::InKey(end) => self.key.get(2..*end).unwrap_or_default(),
            ModelName::Apart(model) => model,
        }
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectKey")
            .field("key", &self.key)
            .field("model", &self.model())
            .finish()
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

/// How many hex digits of a query's hash its key holds (128 bits).
const QUERY_HEX_DIGITS: usize = 32;

/// A query key under construction: a blake3 hash over length-prefixed, tagged parts.
///
/// ```
/// use caching_core::QueryKeyBuilder;
/// let mut a = QueryKeyBuilder::new("query");
/// a.part("sql", b"SELECT 1").part("bind", b"Integer:1");
/// let mut b = QueryKeyBuilder::new("query");
/// b.part("sql", b"SELECT 1").part("bind", b"Text:1");
/// assert_ne!(a.finish_hex(), b.finish_hex());
/// ```
#[derive(Debug, Clone)]
pub struct QueryKeyBuilder {
    hasher: blake3::Hasher,
}

impl QueryKeyBuilder {
    /// Starts a key of a given kind (`query`, `count`, `raw`, ...), versioned by
    /// [`KEY_SCHEMA_VERSION`].
    pub fn new(kind: &str) -> Self {
        let mut b = QueryKeyBuilder {
            hasher: blake3::Hasher::new(),
        };
        b.part("schema", KEY_SCHEMA_VERSION.as_bytes());
        b.part("kind", kind.as_bytes());
        b
    }

    /// Adds a tagged part. Tag and bytes are length-prefixed, so no two sequences of parts
    /// hash the same input.
    pub fn part(&mut self, tag: &str, bytes: &[u8]) -> &mut Self {
        self.hasher.update(&(tag.len() as u64).to_le_bytes());
        self.hasher.update(tag.as_bytes());
        self.hasher.update(&(bytes.len() as u64).to_le_bytes());
        self.hasher.update(bytes);
        self
    }

    /// 32 hex digits (128 bits) of the hash.
    pub fn finish_hex(&self) -> String {
        let hex = self.hex_digits();
        // ASCII hex digits: always UTF-8.
        String::from_utf8_lossy(&hex).into_owned()
    }

    /// The first [`QUERY_HEX_DIGITS`] lowercase hex digits of the hash, on the stack (what
    /// `blake3::Hash::to_hex` gives, without writing all 64).
    fn hex_digits(&self) -> [u8; QUERY_HEX_DIGITS] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let hash = self.hasher.finalize();
        let mut out = [0u8; QUERY_HEX_DIGITS];
        for (pair, b) in out.chunks_exact_mut(2).zip(hash.as_bytes()) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0x0f)];
        }
        out
    }
}

/// The naming scheme of one cache: its prefix and the kinds of keys built under it.
///
/// ```
/// use caching_core::{KeySpace, ObjectKey};
/// let ks = KeySpace::new("app").unwrap();
/// let o = ObjectKey::new("users", &["1"]);
/// assert_eq!(ks.flush_key(&o), "app:f:o:users:1");
/// assert_eq!(ks.generation_key("users"), "app:gen:users");
/// assert!(KeySpace::new("bad prefix").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    prefix: String,
}

impl KeySpace {
    /// A key space with `prefix` (may be empty). The prefix must be at most 64 bytes of
    /// `[A-Za-z0-9_.:-]`.
    pub fn new(prefix: &str) -> Result<Self, ConfigError> {
        if prefix.len() > MAX_PREFIX_LEN {
            return Err(ConfigError::Prefix {
                prefix: prefix.to_string(),
                reason: format!("longer than {MAX_PREFIX_LEN} bytes"),
            });
        }
        if let Some(c) = prefix
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
        {
            return Err(ConfigError::Prefix {
                prefix: prefix.to_string(),
                reason: format!("character {c:?} is not allowed (use [A-Za-z0-9_.:-])"),
            });
        }
        let prefix = if prefix.is_empty() || prefix.ends_with(':') {
            prefix.to_string()
        } else {
            format!("{prefix}:")
        };
        Ok(KeySpace { prefix })
    }

    /// The prefix as used in keys (with its trailing `:`, empty if none).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Joins prefix, a kind tag and a body; hashes the body if the key would be too long.
    fn make(&self, kind: &str, body: &str) -> String {
        self.make_parts(kind, &[body])
    }

    /// [`make`](KeySpace::make) of [`safe_part`]`(part)`, without building it apart when it
    /// is `part` itself (the counters a lookup reads are named this way on every read).
    fn make_safe(&self, kind: &str, part: &str) -> String {
        if is_raw_safe_part(part) {
            self.make(kind, part)
        } else {
            self.make(kind, &safe_part(part))
        }
    }

    /// [`make`](KeySpace::make) of the concatenation of `body` (built in one buffer).
    fn make_parts(&self, kind: &str, body: &[&str]) -> String {
        let mut key = String::new();
        self.make_parts_into(&mut key, kind, body);
        key
    }

    /// [`make_parts`](KeySpace::make_parts) into `key` (cleared first), reusing its buffer.
    fn make_parts_into(&self, key: &mut String, kind: &str, body: &[&str]) {
        key.clear();
        let len = self.prefix.len() + kind.len() + 1 + body.iter().map(|b| b.len()).sum::<usize>();
        if len <= MAX_KEY_LEN {
            key.reserve(len);
            key.push_str(&self.prefix);
            key.push_str(kind);
            key.push(':');
            for b in body {
                key.push_str(b);
            }
            return;
        }
        let body = body.concat();
        key.push_str(&self.prefix);
        key.push_str(kind);
        key.push_str(":#");
        key.push_str(&hash_hex(body.as_bytes(), 40));
    }

    /// The flush list of an object (no database label: a write on the primary must reach
    /// what was cached from a replica).
    pub fn flush_key(&self, object: &ObjectKey) -> String {
        self.make("f", object.as_str())
    }

    /// The children list of an object: the cached queries (and values) that hold a row whose
    /// foreign key points at `object`, registered by their fills
    /// ([`Registrations::child`](crate::Registrations::child)). A write to the object itself
    /// walks it ([`Invalidation::object`](crate::Invalidation::object): renaming a user drops
    /// the cached lists of its add-ons); a write to one of those rows does not
    /// ([`Invalidation::parent`](crate::Invalidation::parent)), so saving one child never
    /// reaches the queries of its siblings.
    ///
    /// ```
    /// use caching_core::{KeySpace, ObjectKey};
    /// let ks = KeySpace::new("app").unwrap();
    /// let user = ObjectKey::new("users", &["1"]);
    /// assert_eq!(ks.children_key(&user), "app:f:c:users:1");
    /// assert!(ks.is_flush_key(&ks.children_key(&user)));
    /// ```
    pub fn children_key(&self, object: &ObjectKey) -> String {
        let mut key = String::new();
        self.children_key_into(&mut key, object);
        key
    }

    /// [`children_key`](KeySpace::children_key) into `key` (cleared first): a fill names a
    /// children list per row and per foreign key, most of them the same few parents.
    pub(crate) fn children_key_into(&self, key: &mut String, object: &ObjectKey) {
        let body = object.as_str();
        let rest = body.strip_prefix("o:").unwrap_or(body);
        self.make_parts_into(key, "f", &["c:", rest]);
    }

    /// The flush list of another key (a query's own flush list, holding extra keys that die
    /// with it).
    pub fn key_flush_key(&self, key: &str) -> String {
        let body = strip(key, &self.prefix);
        if is_valid_key(body) {
            self.make_parts("f", &["k:", body])
        } else {
            // Not a key this key space built: hash it rather than send it to the server.
            self.make("f", &format!("k:#{}", hash_hex(body.as_bytes(), 40)))
        }
    }

    /// The predicate list of `table.column = value`: the queries whose WHERE clause has that
    /// equality condition (a write whose row has that value walks it).
    ///
    /// ```
    /// use caching_core::{KeySpace, PredicateValue};
    /// let ks = KeySpace::new("app").unwrap();
    /// let k = ks.predicate_key("addons", "author_id", &PredicateValue::from_int(7));
    /// assert_eq!(k, "app:f:p:addons:author_id:i7");
    /// assert!(ks.is_flush_key(&k));
    /// ```
    pub fn predicate_key(
        &self,
        table: &str,
        column: &str,
        value: &crate::PredicateValue,
    ) -> String {
        self.make(
            "f",
            &format!(
                "p:{}:{}:{}",
                safe_part(table),
                safe_part(column),
                value.key_part()
            ),
        )
    }

    /// The exit list of a table: queries whose result depends on rows of `table` it does not
    /// contain (counts, aggregates, subqueries). A write that cannot tell which values its
    /// rows had before (an update) walks it, since a row may have left such a result.
    ///
    /// ```
    /// let ks = caching_core::KeySpace::new("app").unwrap();
    /// assert_eq!(ks.exit_list_key("addons"), "app:f:x:addons");
    /// ```
    pub fn exit_list_key(&self, table: &str) -> String {
        self.make("f", &format!("x:{}", safe_part(table)))
    }

    /// The version key that covers everything a flush list can protect, for when the list
    /// itself cannot be trusted (it does not parse): the version of its row's table for a
    /// row's list, else the namespace version (a query's own list; a children list, whose
    /// queries hold rows of tables only its table tags name, which the damage may have
    /// destroyed).
    pub(crate) fn covering_version_key(&self, flush_key: &str) -> String {
        self.row_list_version_key(flush_key)
            .unwrap_or_else(|| self.namespace_key())
    }

    /// The version key of the table whose list `flush_key` is: a row's list, a predicate
    /// list or an exit list (`None` for other lists: a query's own list, a children list,
    /// whose queries are over other tables than its row's, or a key too long to carry its
    /// table).
    pub(crate) fn row_list_version_key(&self, flush_key: &str) -> Option<String> {
        let body = strip(flush_key, &self.prefix);
        body.strip_prefix("f:o:")
            .or_else(|| body.strip_prefix("f:p:"))
            .or_else(|| body.strip_prefix("f:x:"))
            .and_then(|rest| rest.split(':').next())
            .filter(|m| !m.is_empty())
            .map(|m| self.make("ver", m))
    }

    /// Whether `key` names a flush list of this key space.
    pub fn is_flush_key(&self, key: &str) -> bool {
        key.strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.starts_with("f:"))
    }

    /// A cached single object: includes the database label, so equal primary keys in two
    /// databases never cross.
    pub fn object_entry_key(&self, db: &str, object: &ObjectKey) -> String {
        self.make("e", &format!("{}:{}", safe_part(db), object.as_str()))
    }

    /// A query result key from a finished [`QueryKeyBuilder`].
    pub fn query_key(&self, builder: &QueryKeyBuilder) -> String {
        // Its hex digits stay on the stack (`finish_hex` would copy them into a string).
        let hex = builder.hex_digits();
        // ASCII hex digits: always UTF-8 (borrowed, not copied).
        self.make("q", &String::from_utf8_lossy(&hex))
    }

    /// A manual (`cached`) key.
    pub fn manual_key(&self, key: &str) -> String {
        self.make("m", &safe_part(key))
    }

    /// The write generation of a table (bumped by every write).
    pub fn generation_key(&self, table: &str) -> String {
        self.make_safe("gen", table)
    }

    /// The version of a table (bumped by whole-table invalidation).
    pub fn version_key(&self, table: &str) -> String {
        self.make_safe("ver", table)
    }

    /// The namespace version: bumping it invalidates every query of this key space.
    pub fn namespace_key(&self) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 2);
        key.push_str(&self.prefix);
        key.push_str("ns");
        key
    }

    /// The sentinel this key space keeps on every server of a multi-server backend: a server
    /// without it lost its contents (see the cache's server check).
    ///
    /// ```
    /// let ks = caching_core::KeySpace::new("app").unwrap();
    /// assert_eq!(ks.sentinel_key(), "app:alive");
    /// ```
    pub fn sentinel_key(&self) -> String {
        format!("{}alive", self.prefix)
    }
}

fn strip<'a>(key: &'a str, prefix: &str) -> &'a str {
    key.strip_prefix(prefix).unwrap_or(key)
}

#[cfg(test)]
mod tests {
    /// Integer keys written without `Display` equal the `Display` ones, at every width.
    #[test]
    fn integer_keys_equal_displayed_ones() {
        let values = [
            0,
            1,
            -1,
            9,
            10,
            -10,
            99,
            100,
            i64::from(i32::MIN),
            i64::MAX,
            i64::MIN,
        ];
        for &a in &values {
            assert_eq!(
                super::ObjectKey::of_ints("t", &[a]),
                super::ObjectKey::new("t", &[a.to_string()])
            );
            for &b in &values {
                assert_eq!(
                    super::ObjectKey::of_ints("a b", &[a, b]),
                    super::ObjectKey::of("a b", &[&a, &b])
                );
            }
        }
    }

    /// The query hash's digits are blake3's own hex, cut to [`QUERY_HEX_DIGITS`].
    #[test]
    fn query_hex_is_blake3_hex() {
        for input in [&b""[..], b"x", &[0xff; 300]] {
            let mut b = super::QueryKeyBuilder::new("query");
            b.part("sql", input);
            let full = b.hasher.finalize().to_hex();
            assert_eq!(b.finish_hex(), &full[..super::QUERY_HEX_DIGITS]);
            let ks = super::KeySpace::new("p").unwrap();
            assert_eq!(
                ks.query_key(&b),
                format!("p:q:{}", &full[..super::QUERY_HEX_DIGITS])
            );
        }
    }

    use super::*;

    #[test]
    fn every_key_is_valid_whatever_the_input() {
        let ks = KeySpace::new("p").unwrap();
        let nasty = [
            "x\r\nflush_all\r\n",
            "with space",
            "ünïcödé",
            "\0",
            &"long".repeat(200),
        ];
        for n in nasty {
            let o = ObjectKey::new(n, &[n, n]);
            for k in [
                ks.flush_key(&o),
                ks.object_entry_key(n, &o),
                ks.manual_key(n),
                ks.generation_key(n),
                ks.version_key(n),
                ks.key_flush_key(n),
            ] {
                assert!(is_valid_key(&k), "{k:?}");
                assert!(k.starts_with("p:"));
            }
        }
    }

    #[test]
    fn hashed_parts_never_equal_raw_parts() {
        assert_ne!(safe_part("a b"), safe_part("a_b"));
        assert_eq!(safe_part("a b"), safe_part("a b"));
    }

    #[test]
    fn prefix_gets_separator_once() {
        assert_eq!(KeySpace::new("a").unwrap().prefix(), "a:");
        assert_eq!(KeySpace::new("a:").unwrap().prefix(), "a:");
        assert_eq!(KeySpace::new("").unwrap().prefix(), "");
        assert!(KeySpace::new(&"x".repeat(65)).is_err());
    }

    #[test]
    fn flush_keys_are_recognised() {
        let ks = KeySpace::new("p").unwrap();
        let o = ObjectKey::new("users", &["1"]);
        assert!(ks.is_flush_key(&ks.flush_key(&o)));
        assert!(ks.is_flush_key(&ks.key_flush_key("p:q:abc")));
        assert!(!ks.is_flush_key("p:q:abc"));
        assert!(ks.is_flush_key(&ks.children_key(&o)));
    }

    #[test]
    fn children_lists_are_apart_from_row_lists_and_carry_no_table() {
        let ks = KeySpace::new("p").unwrap();
        let o = ObjectKey::new("users", &["1", "2"]);
        assert_eq!(ks.children_key(&o), "p:f:c:users:1:2");
        assert_ne!(ks.children_key(&o), ks.flush_key(&o));
        assert_eq!(ks.row_list_version_key(&ks.children_key(&o)), None);
        assert_eq!(ks.covering_version_key(&ks.children_key(&o)), "p:ns");
        let long = ObjectKey::new(&"t".repeat(40), &vec!["x".repeat(40); 6]);
        assert!(is_valid_key(&ks.children_key(&long)));
    }
}
