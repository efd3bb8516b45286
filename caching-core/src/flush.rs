//! Flush lists: register query keys on the rows they contain, expand, invalidate.
//!
//! A flush list is a memcached value holding space-separated keys. Registration appends
//! atomically (`append`, or `add` when the list does not exist yet), so concurrent fills never
//! lose each other's registrations. Invalidation walks the lists breadth-first with a visited
//! set (one multi-get per level; cycles terminate), deletes every key found, then clears each
//! list it read with compare-and-swap: a list that changed since it was read is read again
//! instead of being cleared, so a registration made meanwhile is never lost. This is the
//! "add, then register; CAS clear; generation check" protocol of `docs/src/protocol.md`.
//!
//! Foreign keys: a fill registers its query on the row's own list (`f:o:`) and on the
//! *children list* (`f:c:`) of each row the row points at ([`Registrations::child`]). A write
//! to a row walks both of its lists; a write's foreign-key parents are walked through their
//! own lists only, so saving one child never reads or deletes the queries of its siblings
//! (the cost of a write does not grow with them). A children list also carries a *table tag*
//! `#{version key}` per child table registered on it, which compaction turns into overflow
//! markers (a query token does not tell which table it reads). The older scheme, linking a
//! row's list into its parent's list ([`Registrations::link`]), is still walked.
//!
//! Lists are bounded by the backend's item size. When an append would exceed it, the list is
//! compacted (duplicates removed) with CAS; if it is still too large it is replaced by an
//! overflow marker `!{version key}`: from then on a write to that row bumps its table
//! version, which invalidates every cached query over the table (each entry records the table
//! versions it was read under). The row stays cacheable; its invalidation is just coarser
//! until the next write clears the list.
//!
//! Lists are read defensively: a list holding anything this crate does not write (bytes that
//! are not UTF-8, tokens that are not keys) is treated as overflowed, never as empty: its
//! table's version is bumped (the namespace's, for a list that belongs to no table), and
//! whatever valid keys it holds are still deleted.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::backend::{AppendOutcome, CasOutcome, Item, Op, OpReply};
use crate::error::Result;
use crate::io::Io;
use crate::key::KeySpace;
use crate::timeout::Expiry;

/// How many times a list that keeps changing under a writer is re-read before the writer
/// leaves it uncleared (never clearing is always safe; it only costs space).
const MAX_CLEAR_ROUNDS: usize = 8;
/// How many times a registration retries a list that races with creation or compaction.
const MAX_REGISTER_ROUNDS: usize = 4;

/// The flush-list entries a fill must make, grouped per list.
///
/// ```
/// use caching_core::{KeySpace, ObjectKey, Registrations};
/// let ks = KeySpace::new("app").unwrap();
/// let mut regs = Registrations::new();
/// let addon = ObjectKey::new("addons", &["1"]);
/// let user = ObjectKey::new("users", &["1"]);
/// regs.row(&ks, &addon, "app:q:abc"); // on app:f:o:addons:1
/// regs.child(&ks, &addon, &user, "app:q:abc"); // on app:f:c:users:1 (addon 1's author)
/// assert_eq!(regs.len(), 2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Registrations {
    /// flush key -> the list's version key and the tokens to append, as ids into `names`
    /// (A hash map with fixed keys: a 10,000-row fill makes 10,000 lists, whose keys share
    /// long prefixes that a tree compares over and over; its order is deterministic.)
    lists: HashMap<String, ListRegs, FixedState>,
    /// Every token and version key, once: a fill registers the same few strings (its key,
    /// the key's own list, a table's version and tag) on thousands of lists, so a list
    /// holds their ids, inline, and a row costs one allocation (its list's key).
    names: Interned,
    /// The last key registered and the ids of it and its own flush list (a fill registers
    /// one key on every row's lists: its strings are built once, not per row).
    last_key: Option<(String, u32, u32)>,
    /// Per table: the ids of its version key and of the tag children lists carry for it. A
    /// fill names a handful of tables, once per row: a scan beats hashing.
    tables: Vec<(String, u32, u32)>,
    /// A list key being named (a children list, looked up without a key of its own: the
    /// rows of a result mostly share their parents).
    scratch: String,
}

/// A fixed hash: deterministic iteration order for the same registrations. Not SipHash: a
/// fill hashes three list keys per row, and SipHash with fixed keys resists flooding no
/// better than this (its keys are known), at four times the cost.
type FixedState = std::hash::BuildHasherDefault<FillHasher>;

/// Word-at-a-time multiply-rotate (FxHash's step) with a murmur3 finaliser, so the low bits
/// a hash table indexes by and the high bits it tags with both depend on every input byte.
#[derive(Debug, Default, Clone, Copy)]
struct FillHasher(u64);

impl FillHasher {
    const K: u64 = 0x517c_c1b7_2722_0a95;

    fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(Self::K);
    }
}

impl std::hash::Hasher for FillHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.word(u64::from_le_bytes(b));
        }
        let rest = words.remainder();
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        // The length keeps "a" and "a\0" apart.
        self.word(u64::from_le_bytes(b) ^ ((rest.len() as u64) << 59));
    }

    fn write_u8(&mut self, n: u8) {
        self.word(u64::from(n));
    }

    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// Strings stored once, named by their index.
#[derive(Debug, Clone, Default)]
struct Interned {
    names: Vec<String>,
    ids: HashMap<String, u32, FixedState>,
}

impl Interned {
    /// The id of `name`, storing it if new.
    fn id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        self.push(name.to_string())
    }

    /// The id of `name`, taking it if new.
    fn id_owned(&mut self, name: String) -> u32 {
        match self.ids.get(name.as_str()) {
            Some(id) => *id,
            None => self.push(name),
        }
    }

    fn push(&mut self, name: String) -> u32 {
        // More than 4 billion distinct strings cannot fit in memory before this wraps.
        let id = self.names.len() as u32;
        self.ids.insert(name.clone(), id);
        self.names.push(name);
        id
    }

    fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", String::as_str)
    }
}

/// The tokens one fill appends to one list, each once, in the order first registered.
#[derive(Debug, Clone)]
struct ListRegs {
    /// The id of the version key of the list's table.
    version: u32,
    tokens: TokenIds,
    /// Built once the list holds more than [`INDEX_AFTER`] tokens (a parent shared by many
    /// rows of a result): with it, adding a token is O(1) instead of a scan of the list,
    /// which made a fill quadratic in the rows linked to one parent.
    index: Option<HashSet<u32>>,
}

/// Token ids: up to [`INLINE`] inline (a row's list holds a key and its own list; a
/// children list adds a table tag), then on the heap.
#[derive(Debug, Clone)]
enum TokenIds {
    Inline(u8, [u32; INLINE]),
    Heap(Vec<u32>),
}

const INLINE: usize = 3;

impl TokenIds {
    fn as_slice(&self) -> &[u32] {
        match self {
            TokenIds::Inline(n, ids) => &ids[..usize::from(*n)],
            TokenIds::Heap(v) => v,
        }
    }

    fn push(&mut self, id: u32) {
        match self {
            TokenIds::Inline(n, ids) if usize::from(*n) < INLINE => {
                ids[usize::from(*n)] = id;
                *n += 1;
            }
            TokenIds::Inline(_, ids) => {
                let mut v = ids.to_vec();
                v.push(id);
                *self = TokenIds::Heap(v);
            }
            TokenIds::Heap(v) => v.push(id),
        }
    }
}

/// Below this many tokens a scan is cheaper than hashing.
const INDEX_AFTER: usize = 16;

impl ListRegs {
    fn new(version: u32) -> Self {
        ListRegs {
            version,
            tokens: TokenIds::Inline(0, [0; INLINE]),
            index: None,
        }
    }

    /// Adds each of `ids` the list does not have.
    fn add_all(&mut self, ids: &[u32]) {
        for id in ids {
            self.add(*id);
        }
    }

    /// Adds token `id` unless the list has it.
    fn add(&mut self, id: u32) {
        match &mut self.index {
            Some(index) => {
                if index.insert(id) {
                    self.tokens.push(id);
                }
            }
            None => {
                if !self.tokens.as_slice().contains(&id) {
                    self.tokens.push(id);
                    if self.tokens.as_slice().len() > INDEX_AFTER {
                        self.index = Some(self.tokens.as_slice().iter().copied().collect());
                    }
                }
            }
        }
    }
}

/// The ids of `key` and its own flush list, interned once per key (`last` remembers the
/// last one).
fn key_tokens(
    last: &mut Option<(String, u32, u32)>,
    names: &mut Interned,
    ks: &KeySpace,
    key: &str,
) -> (u32, u32) {
    match last {
        Some((k, id, own)) if k == key => (*id, *own),
        _ => {
            let ids = (names.id(key), names.id_owned(ks.key_flush_key(key)));
            *last = Some((key.to_string(), ids.0, ids.1));
            ids
        }
    }
}

/// The ids of the version key of `table` and of the tag children lists carry for it,
/// interned once.
fn table_tokens(
    tables: &mut Vec<(String, u32, u32)>,
    names: &mut Interned,
    ks: &KeySpace,
    table: &str,
) -> (u32, u32) {
    if let Some((_, version, tag)) = tables.iter().find(|(t, ..)| t == table) {
        return (*version, *tag);
    }
    let version = ks.version_key(table);
    let tag = names.id_owned(format!("#{version}"));
    let ids = (names.id_owned(version), tag);
    tables.push((table.to_string(), ids.0, ids.1));
    ids
}

impl Registrations {
    /// No registrations.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of flush lists touched.
    pub fn len(&self) -> usize {
        self.lists.len()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    /// Adds the tokens `ids` to list `flush_key` (of the table whose version key is
    /// `version`), creating it if new.
    fn add_to(&mut self, flush_key: String, version: u32, ids: &[u32]) {
        self.lists
            .entry(flush_key)
            .or_insert_with(|| ListRegs::new(version))
            .add_all(ids);
    }

    /// Registers `key` (a query or a value) and its own flush list on row `row`: a write to the
    /// row deletes the key and everything in the key's flush list.
    pub fn row(&mut self, ks: &KeySpace, row: &crate::ObjectKey, key: &str) {
        let (key, own) = key_tokens(&mut self.last_key, &mut self.names, ks, key);
        let (version, _) = table_tokens(&mut self.tables, &mut self.names, ks, row.model());
        self.add_to(ks.flush_key(row), version, &[key, own]);
    }

    /// Registers `key` (a query or a value that holds row `child`) and its own flush list on
    /// the children list of `parent`, a row `child` points at through a foreign key: a write
    /// to `parent` ([`Invalidation::object`](crate::Invalidation::object)) deletes it, a write
    /// to another child of `parent` does not. This is what a fill does for each foreign key
    /// of each row it holds.
    ///
    /// The list also gets the tag of `child`'s table (`#{version key}`): if the list
    /// overflows, its overflow markers bump that table's version, which covers the queries it
    /// held. A self-reference registers nothing (the row's own list already holds `key`).
    ///
    /// ```
    /// use caching_core::{KeySpace, ObjectKey, Registrations};
    /// let ks = KeySpace::new("app").unwrap();
    /// let (addon, user) = (ObjectKey::new("addons", &["1"]), ObjectKey::new("users", &["1"]));
    /// let mut regs = Registrations::new();
    /// regs.child(&ks, &addon, &user, "app:q:abc");
    /// assert_eq!(regs.len(), 1);
    /// regs.child(&ks, &user, &user, "app:q:abc"); // a self-reference: nothing more
    /// assert_eq!(regs.len(), 1);
    /// ```
    pub fn child(
        &mut self,
        ks: &KeySpace,
        child: &crate::ObjectKey,
        parent: &crate::ObjectKey,
        key: &str,
    ) {
        if child != parent {
            self.on_children(ks, parent, child.model(), key);
        }
    }

    /// [`child`](Registrations::child) for a key that holds a row of `table` pointing at
    /// `parent` (no self-reference check).
    pub(crate) fn on_children(
        &mut self,
        ks: &KeySpace,
        parent: &crate::ObjectKey,
        table: &str,
        key: &str,
    ) {
        let (key, own) = key_tokens(&mut self.last_key, &mut self.names, ks, key);
        let (version, tag) = table_tokens(&mut self.tables, &mut self.names, ks, table);
        let mut list = std::mem::take(&mut self.scratch);
        ks.children_key_into(&mut list, parent);
        match self.lists.get_mut(list.as_str()) {
            Some(regs) => {
                regs.add_all(&[key, own, tag]);
                self.scratch = list;
            }
            None => self.add_to(list, version, &[key, own, tag]),
        }
    }

    /// Links a row's flush list into its foreign-key target's list: a write to `parent`
    /// invalidates what is registered on `child`, and so does any write that walks
    /// `parent`'s list, a write to another child of `parent` included (through
    /// [`Invalidation::object`](crate::Invalidation::object) or
    /// [`Invalidation::parent`](crate::Invalidation::parent)).
    ///
    /// The scheme of earlier versions, still walked: fills now register on children lists
    /// instead ([`child`](Registrations::child)), whose cost to a write does not grow with
    /// the parent's children.
    pub fn link(&mut self, ks: &KeySpace, child: &crate::ObjectKey, parent: &crate::ObjectKey) {
        // A self-reference adds nothing but must not add a cycle either.
        if child != parent {
            let (version, _) = table_tokens(&mut self.tables, &mut self.names, ks, parent.model());
            let linked = self.names.id_owned(ks.flush_key(child));
            self.add_to(ks.flush_key(parent), version, &[linked]);
        }
    }

    /// Every list this registration writes to (the rows' own lists, their foreign-key
    /// targets' children lists, predicate and exit lists).
    pub(crate) fn lists(&self) -> impl Iterator<Item = &str> {
        self.lists.keys().map(String::as_str)
    }

    /// The tokens this registration appends to `list`.
    pub(crate) fn tokens_of(&self, list: &str) -> impl Iterator<Item = &str> {
        let ids = self
            .lists
            .get(list)
            .map_or(&[][..], |l| l.tokens.as_slice());
        ids.iter().map(|id| self.names.name(*id))
    }

    /// The version key of `list`'s table and the bytes to append to it (each token
    /// preceded by a space).
    fn appends(&self) -> impl Iterator<Item = (&str, &str, Vec<u8>)> {
        self.lists.iter().map(|(list, l)| {
            let ids = l.tokens.as_slice();
            let len = ids.iter().map(|id| self.names.name(*id).len() + 1).sum();
            let mut bytes = Vec::with_capacity(len);
            for id in ids {
                bytes.push(b' ');
                bytes.extend_from_slice(self.names.name(*id).as_bytes());
            }
            (list.as_str(), self.names.name(l.version), bytes)
        })
    }

    /// Registers `key` (and its own flush list) on the predicate list of
    /// `table.column = value`: a write whose row has that value deletes it. This is how a
    /// row that enters a result invalidates it.
    ///
    /// ```
    /// use caching_core::{KeySpace, PredicateValue, Registrations};
    /// let ks = KeySpace::new("app").unwrap();
    /// let mut regs = Registrations::new();
    /// regs.predicate(&ks, "addons", "author_id", &PredicateValue::from_int(7), "app:q:abc");
    /// assert_eq!(regs.len(), 1);
    /// ```
    pub fn predicate(
        &mut self,
        ks: &KeySpace,
        table: &str,
        column: &str,
        value: &crate::PredicateValue,
        key: &str,
    ) {
        self.on_table_list(ks, ks.predicate_key(table, column, value), table, key);
    }

    /// Registers `key` (and its own flush list) on the exit list of `table`: for results that
    /// depend on rows of `table` they do not contain (counts, aggregates, subqueries), which
    /// a write that does not know its rows' old values must invalidate.
    pub fn exit(&mut self, ks: &KeySpace, table: &str, key: &str) {
        self.on_table_list(ks, ks.exit_list_key(table), table, key);
    }

    fn on_table_list(&mut self, ks: &KeySpace, list: String, table: &str, key: &str) {
        let (key, own) = key_tokens(&mut self.last_key, &mut self.names, ks, key);
        let (version, _) = table_tokens(&mut self.tables, &mut self.names, ks, table);
        self.add_to(list, version, &[key, own]);
    }

    /// Registers `key` directly on a flush list (an object's or a query's).
    pub fn on_list(&mut self, flush_key: String, version_key: String, key: &str) {
        let version = self.names.id_owned(version_key);
        let key = self.names.id(key);
        self.add_to(flush_key, version, &[key]);
    }
}

/// What a registration did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RegisterOutcome {
    /// Every entry is on its list (or covered by an overflow marker).
    pub complete: bool,
    /// Lists that overflowed and fell back to table-level invalidation.
    pub overflows: u64,
}

/// One space-separated token of a flush list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token<'a> {
    /// A key to delete, or another flush list to walk (`ks.is_flush_key`).
    Key(&'a str),
    /// The list's epoch (`@n`), eviction-safe mode.
    Epoch(&'a str),
    /// An overflow marker: the version key to bump instead (`!ver:t`).
    Overflow(&'a str),
    /// A table tag of a children list, whole (`#ver:t`): the list holds queries over table
    /// `t`, whose version its overflow markers must bump. Nothing to walk or delete.
    Tag(&'a str),
    /// Anything else: not UTF-8, not a valid key. The list cannot be trusted.
    Bad,
}

fn tokens(value: &[u8]) -> impl Iterator<Item = Token<'_>> {
    value
        .split(|b| *b == b' ')
        .filter(|t| !t.is_empty())
        .map(|t| match std::str::from_utf8(t) {
            Ok(t) if t.starts_with('@') && t[1..].parse::<u64>().is_ok() => Token::Epoch(t),
            Ok(t) if t.starts_with('!') && crate::key::is_valid_key(&t[1..]) => {
                Token::Overflow(&t[1..])
            }
            Ok(t) if t.starts_with('#') && crate::key::is_valid_key(&t[1..]) => Token::Tag(t),
            Ok(t) if crate::key::is_valid_key(t) => Token::Key(t),
            _ => Token::Bad,
        })
}

/// The epoch token (`@n`) of a list created in eviction-safe mode.
pub(crate) fn epoch_token(value: &[u8]) -> Option<&str> {
    tokens(value).find_map(|t| match t {
        Token::Epoch(e) => Some(e),
        _ => None,
    })
}

/// The epoch of a list, if it has one.
pub(crate) fn epoch_of(value: &[u8]) -> Option<u64> {
    epoch_token(value).and_then(|t| t[1..].parse().ok())
}

/// Whether a list still covers every token in `wanted`: each is on it, or the list overflowed
/// (its overflow markers cover what compaction dropped).
pub(crate) fn holds_all<'a>(value: &[u8], mut wanted: impl Iterator<Item = &'a str>) -> bool {
    let mut present = HashSet::new();
    for t in tokens(value) {
        match t {
            Token::Key(k) | Token::Tag(k) => {
                present.insert(k);
            }
            Token::Overflow(_) => return true,
            Token::Bad => return false,
            Token::Epoch(_) => {}
        }
    }
    wanted.all(|w| present.contains(w))
}

fn join(tokens: &[impl AsRef<str>]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in tokens {
        out.push(b' ');
        out.extend_from_slice(t.as_ref().as_bytes());
    }
    out
}

/// Appends every entry of `regs` to its list, atomically per list, then reads `check`: the
/// read is ordered after every registration (in the same batch when the backend can keep the
/// order, so a fill whose lists all exist registers and checks in one round trip). Lists
/// that do not exist yet are created (`add`) and the check is read again after them.
pub(crate) async fn register<I: Io>(
    io: &I,
    ks: &KeySpace,
    regs: &Registrations,
    epochs: bool,
    check: &[&str],
) -> Result<(RegisterOutcome, HashMap<String, Item>)> {
    let mut outcome = RegisterOutcome {
        complete: true,
        overflows: 0,
    };
    let gets: Vec<Op<'_>> = check.iter().map(|k| Op::Get(k)).collect();
    // The latest read of `check`, if no registration was written after it.
    let mut checked: Option<HashMap<String, Item>> = None;
    let mut pending: Vec<(&str, &str, Vec<u8>)> = regs.appends().collect();
    for _ in 0..MAX_REGISTER_ROUNDS {
        if pending.is_empty() {
            break;
        }
        let appends: Vec<Op<'_>> = pending
            .iter()
            .map(|(k, _, d)| Op::Append(k, d.as_slice()))
            .collect();
        let mut replies = io.batch(&[&appends, &gets]).await?.into_iter();
        let appended = replies.next().unwrap_or_default();
        checked = Some(crate::read::values_of(
            check,
            replies.next().unwrap_or_default(),
        ));
        let mut missing = Vec::new();
        let mut retry = Vec::new();
        for (p, r) in pending.into_iter().zip(appended) {
            match r {
                OpReply::Appended(AppendOutcome::Appended) => {}
                OpReply::Appended(AppendOutcome::TooLarge) => {
                    outcome.overflows += 1;
                    checked = None;
                    if !compact(io, ks, p.0, p.1, &p.2).await? {
                        retry.push(p);
                    }
                }
                _ => missing.push(p),
            }
        }
        if !missing.is_empty() {
            // A list created in eviction-safe mode starts with its epoch: a list evicted and
            // re-created gets another one, which entries registered on the old list detect.
            let created: Vec<Vec<u8>> = missing
                .iter()
                .map(|(_, _, d)| {
                    if epochs {
                        let mut v = format!(" @{}", crate::clock::random_start()).into_bytes();
                        v.extend_from_slice(d);
                        v
                    } else {
                        d.clone()
                    }
                })
                .collect();
            let adds: Vec<Op<'_>> = missing
                .iter()
                .zip(&created)
                .map(|((k, _, _), d)| Op::Add(k, d.as_slice(), Expiry::Forever))
                .collect();
            let mut replies = io.batch(&[&adds, &gets]).await?.into_iter();
            let added = replies.next().unwrap_or_default();
            checked = Some(crate::read::values_of(
                check,
                replies.next().unwrap_or_default(),
            ));
            for (p, r) in missing.into_iter().zip(added) {
                if r != OpReply::Added(true) {
                    // Created by someone else meanwhile (or too large): append again.
                    retry.push(p);
                }
            }
        }
        if !retry.is_empty() {
            checked = None;
        }
        pending = retry;
    }
    outcome.complete = pending.is_empty();
    let checked = match checked {
        Some(c) => c,
        None if check.is_empty() => HashMap::new(),
        None => io.get_multi(check).await?,
    };
    Ok((outcome, checked))
}

/// Makes room in a full list: drops duplicates, or replaces the list by overflow markers.
/// Returns whether `extra` is now covered (`false`: the list changed meanwhile, retry).
///
/// The markers cover everything the dropped tokens protected: the list's own table version
/// (queries over the row; for a children list, the table of the child that registered), the
/// version of each table whose rows' lists were linked here (a write to this row reached
/// those queries through the links), and the version of each table a tag of a children list
/// names (the tables of the queries registered on it). A list that does not parse is never
/// compacted into a shorter list: it overflows.
async fn compact<I: Io>(
    io: &I,
    ks: &KeySpace,
    list: &str,
    version_key: &str,
    extra: &[u8],
) -> Result<bool> {
    let Some(item) = io.get(list).await? else {
        return Ok(false);
    };
    let mut seen = HashSet::new();
    let mut kept: Vec<&str> = Vec::new();
    let mut tags: BTreeSet<&str> = BTreeSet::new();
    let mut epoch = None;
    let mut markers: BTreeSet<String> = BTreeSet::new();
    let mut overflowed = false;
    for t in tokens(&item.value).chain(tokens(extra)) {
        match t {
            Token::Key(k) => {
                if seen.insert(k) {
                    kept.push(k);
                }
            }
            Token::Tag(t) => {
                tags.insert(t);
            }
            Token::Epoch(e) => {
                epoch.get_or_insert(e);
            }
            Token::Overflow(v) => {
                overflowed = true;
                markers.insert(v.to_string());
            }
            Token::Bad => overflowed = true,
        }
    }
    let mut compacted = join(&kept);
    compacted.extend_from_slice(&join(&tags.iter().collect::<Vec<_>>()));
    let limit = io.max_item_size();
    let value = if !overflowed && compacted.len() + list.len() + 64 <= limit / 2 {
        let mut v = epoch
            .map(|e| format!(" {e}").into_bytes())
            .unwrap_or_default();
        v.extend_from_slice(&compacted);
        v
    } else {
        tracing::debug!(
            list,
            "flush list overflowed: falling back to table versions"
        );
        markers.insert(version_key.to_string());
        // Links to other rows' lists: a write to this row reached the queries over those
        // rows' tables through them. (A query's own list, `f:k:`, holds values tied to a
        // query over this row's table: the row's table version covers them.)
        markers.extend(kept.iter().filter_map(|k| ks.row_list_version_key(k)));
        // The tables of the queries registered on a children list.
        markers.extend(tags.iter().map(|t| t[1..].to_string()));
        let mut v = epoch.map(|e| format!(" {e}")).unwrap_or_default();
        for m in &markers {
            v.push_str(" !");
            v.push_str(m);
        }
        v.into_bytes()
    };
    Ok(io.cas(list, &value, Expiry::Forever, item.cas).await? == CasOutcome::Stored)
}

/// What an invalidation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvalidationReport {
    /// Keys deleted (queries and values).
    pub deleted: usize,
    /// Flush lists read.
    pub lists_read: usize,
    /// Levels of the breadth-first walk (over all rounds).
    pub levels: usize,
    /// Table versions bumped because a list had overflowed.
    pub overflow_versions: Vec<String>,
    /// Lists left uncleared because they kept changing (safe, costs space).
    pub uncleared: usize,
    /// Lists that did not parse (treated as overflowed: their table version was bumped).
    pub repaired: usize,
    /// The backend could not take the invalidation: it was queued and is delivered in the
    /// background (see `Cache::pending_invalidations`).
    pub deferred: bool,
}

/// Hook points of the invalidation walk (for interleaving tests).
pub(crate) trait WalkHooks: Sync {
    fn step(&self, name: &'static str);
}

/// What [`invalidate`] did: the bump of the counters it was given, and the walk.
pub(crate) struct Walked {
    /// The counters' bump: how many were repaired.
    pub(crate) bumped: Result<u64>,
    /// The walk.
    pub(crate) walked: Result<InvalidationReport>,
}

/// Bumps `counters`, then deletes everything reachable from `roots` and clears the lists
/// read, with CAS. The bump and the first read of the lists go in one batch (the read is
/// ordered after the increments), the deletes and the clears in another.
pub(crate) async fn invalidate<I: Io>(
    io: &I,
    ks: &KeySpace,
    counters: &[String],
    roots: Vec<String>,
    hooks: &dyn WalkHooks,
) -> Walked {
    let mut bumped = None;
    let walked = walk(io, ks, counters, roots, hooks, &mut bumped).await;
    // A walk that failed before its first read has not bumped yet: bump now.
    let bumped = match bumped {
        Some(b) => b,
        None => crate::clock::bump(io, counters).await,
    };
    Walked { bumped, walked }
}

/// Reads the first level of `roots` in one batch after the increments of `counters`
/// (setting `bumped`), or only reads them once `bumped` is set.
async fn read_level<I: Io>(
    io: &I,
    counters: &[String],
    refs: &[&str],
    bumped: &mut Option<Result<u64>>,
) -> Result<HashMap<String, Item>> {
    if bumped.is_some() {
        return io.get_multi(refs).await;
    }
    let names: Vec<&str> = counters.iter().map(String::as_str).collect();
    let incrs: Vec<Op<'_>> = names.iter().map(|k| Op::Incr(k, 1)).collect();
    let gets: Vec<Op<'_>> = refs.iter().map(|k| Op::Get(k)).collect();
    match io.batch(&[&incrs, &gets]).await {
        Ok(replies) => {
            let mut replies = replies.into_iter();
            let incr = crate::clock::incr_outcomes(&names, replies.next().unwrap_or_default());
            *bumped = Some(crate::clock::settle(io, &names, incr).await);
            Ok(crate::read::values_of(
                refs,
                replies.next().unwrap_or_default(),
            ))
        }
        Err(_) => {
            // Bump counter by counter (each one that can be is), then read.
            *bumped = Some(crate::clock::bump(io, counters).await);
            io.get_multi(refs).await
        }
    }
}

async fn walk<I: Io>(
    io: &I,
    ks: &KeySpace,
    counters: &[String],
    roots: Vec<String>,
    hooks: &dyn WalkHooks,
    bumped: &mut Option<Result<u64>>,
) -> Result<InvalidationReport> {
    let mut report = InvalidationReport::default();
    let mut visited: HashSet<String> = roots.iter().cloned().collect();
    let mut level = roots;
    for _round in 0..MAX_CLEAR_ROUNDS {
        // Breadth-first walk: one multi-get per level.
        // (list, CAS token, what clearing leaves: the epoch, if the list has one)
        let mut read: Vec<(String, u64, Vec<u8>)> = Vec::new();
        let mut doomed: Vec<String> = Vec::new();
        let mut versions: Vec<String> = Vec::new();
        hooks.step("read_lists");
        while !level.is_empty() {
            report.levels += 1;
            let refs: Vec<&str> = level.iter().map(String::as_str).collect();
            let got = read_level(io, counters, &refs, bumped).await?;
            let mut next = Vec::new();
            for list in &level {
                let Some(item) = got.get(list) else { continue };
                report.lists_read += 1;
                let epoch = epoch_token(&item.value)
                    .map(|e| format!(" {e}").into_bytes())
                    .unwrap_or_default();
                read.push((list.clone(), item.cas, epoch));
                let mut corrupt = false;
                for t in tokens(&item.value) {
                    match t {
                        Token::Epoch(_) | Token::Tag(_) => {}
                        Token::Overflow(v) => versions.push(v.to_string()),
                        Token::Key(k) if ks.is_flush_key(k) => {
                            if visited.insert(k.to_string()) {
                                next.push(k.to_string());
                            }
                        }
                        Token::Key(k) => doomed.push(k.to_string()),
                        Token::Bad => corrupt = true,
                    }
                }
                if corrupt {
                    // Never written by this crate: the list may have lost registrations, so
                    // what it protected is invalidated by version, like an overflowed list.
                    tracing::warn!(list, "flush list does not parse; treating it as overflowed");
                    report.repaired += 1;
                    versions.push(ks.covering_version_key(list));
                }
            }
            level = next;
        }
        // A failed version bump must not stop the deletions, but the lists that asked for it
        // must not be cleared either: the next attempt has to find their markers again.
        let mut bump_failed = None;
        if !versions.is_empty() {
            versions.sort();
            versions.dedup();
            match crate::clock::bump(io, &versions).await {
                Ok(_) => report.overflow_versions.extend(versions),
                Err(e) => bump_failed = Some(e),
            }
        }
        hooks.step("delete");
        doomed.sort();
        doomed.dedup();
        report.deleted += doomed.len();
        let deletes: Vec<Op<'_>> = doomed.iter().map(|k| Op::Delete(k)).collect();
        if let Some(e) = bump_failed {
            let doomed: Vec<&str> = doomed.iter().map(String::as_str).collect();
            io.delete_multi(&doomed).await?;
            return Err(e);
        }
        // Clear with CAS: a list that changed since we read it holds registrations we have not
        // seen; read it again rather than lose them. (A reader that registers again after the
        // clear is found by the next write.) The clears are a stage after the deletes: no list
        // is cleared before every entry it led to is deleted, on whichever server (a batch over
        // several servers runs stage by stage, and stops at a failed one), or the entries a
        // failed delete left would be reachable from no list.
        hooks.step("clear");
        let clears: Vec<Op<'_>> = read
            .iter()
            .map(|(list, cas, epoch)| Op::Cas(list, epoch.as_slice(), Expiry::Forever, *cas))
            .collect();
        let replies = io
            .batch(&[&deletes, &clears])
            .await?
            .pop()
            .unwrap_or_default();
        let outcomes: Vec<CasOutcome> = replies
            .into_iter()
            .map(|r| match r {
                OpReply::Cas(o) => o,
                _ => CasOutcome::Changed,
            })
            .collect();
        for ((list, _, _), outcome) in read.iter().zip(outcomes) {
            if outcome == CasOutcome::Changed {
                visited.remove(list);
                level.push(list.clone());
            }
        }
        if level.is_empty() {
            return Ok(report);
        }
        for l in &level {
            visited.insert(l.clone());
        }
    }
    report.uncleared = level.len();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fill's hash spreads keys that differ only in their last digits over the low bits
    /// (a table's bucket) and the top seven (its tag) alike, and does not collide on them.
    #[test]
    fn fill_hash_spreads_similar_keys() {
        use std::hash::BuildHasher;
        let state = FixedState::default();
        let hash = |s: &str| state.hash_one(s);
        let n = 65_536;
        let mut low = vec![0u32; 1024];
        let mut top = vec![0u32; 128];
        let mut seen = std::collections::HashSet::new();
        for i in 0..n {
            let h = hash(&format!("app:f:o:addons:{i}"));
            assert!(seen.insert(h), "collision at {i}");
            low[(h & 1023) as usize] += 1;
            top[(h >> 57) as usize] += 1;
        }
        // An even share is 64 per bucket and 512 per tag.
        assert!(low.iter().all(|&c| (24..=112).contains(&c)), "{low:?}");
        assert!(top.iter().all(|&c| (384..=640).contains(&c)), "{top:?}");
        assert_ne!(hash("a"), hash("a\0"));
        assert_ne!(hash(""), hash("\0"));
    }
    use crate::ObjectKey;

    /// Every token once, in first-registered order, whether the list is scanned or indexed.
    #[test]
    fn tokens_are_deduplicated_before_and_after_the_index() {
        let ks = KeySpace::new("t").unwrap();
        let parent = ObjectKey::new("users", &["1"]);
        let mut regs = Registrations::new();
        for round in 0..2 {
            for i in 0..100 {
                let child = ObjectKey::new("addons", &[i.to_string()]);
                regs.link(&ks, &child, &parent);
                if round == 0 && i < 20 {
                    // Repeated while the list is still scanned, and again once indexed.
                    regs.link(&ks, &child, &parent);
                }
            }
        }
        let tokens: Vec<&str> = regs.tokens_of(&ks.flush_key(&parent)).collect();
        let expected: Vec<String> = (0..100)
            .map(|i| ks.flush_key(&ObjectKey::new("addons", &[i.to_string()])))
            .collect();
        assert_eq!(tokens, expected);
    }
}
