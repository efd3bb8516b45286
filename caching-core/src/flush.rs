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

use crate::backend::{AppendOutcome, Backend, CasOutcome, Item, Op, OpReply};
use crate::error::Result;
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
    /// flush key -> the version key of the list's table and the tokens to append
    /// (A hash map with fixed keys: a 10,000-row fill makes 10,000 lists, whose keys share
    /// long prefixes that a tree compares over and over; its order is deterministic.)
    lists: HashMap<String, ListRegs, FixedState>,
    /// The last key registered and its own flush list (a fill registers one key on every
    /// row's lists: its strings are built once, not per row).
    last_key: Option<(String, String)>,
    /// Per table: its version key and the tag children lists carry for it.
    tables: HashMap<String, (String, String)>,
}

/// SipHash with fixed keys: deterministic iteration order for the same registrations.
type FixedState = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// The tokens one fill appends to one list, each once, in the order first registered.
#[derive(Debug, Clone)]
struct ListRegs {
    version: String,
    tokens: Vec<String>,
    /// Built once the list holds more than [`INDEX_AFTER`] tokens (a parent shared by many
    /// rows of a result): with it, adding a token is O(1) instead of a scan of the list,
    /// which made a fill quadratic in the rows linked to one parent.
    index: Option<HashSet<String>>,
}

/// Below this many tokens a scan is cheaper than hashing.
const INDEX_AFTER: usize = 16;

impl ListRegs {
    fn new(version: String) -> Self {
        ListRegs {
            version,
            tokens: Vec::new(),
            index: None,
        }
    }

    /// Adds `token` unless the list has it (allocating only then: a fill adds the same
    /// tokens to a shared parent's list once per row).
    fn add(&mut self, token: &str) {
        match &mut self.index {
            Some(index) => {
                if !index.contains(token) {
                    index.insert(token.to_string());
                    self.tokens.push(token.to_string());
                }
            }
            None => {
                if !self.tokens.iter().any(|t| t == token) {
                    self.tokens.push(token.to_string());
                    if self.tokens.len() > INDEX_AFTER {
                        self.index = Some(self.tokens.iter().cloned().collect());
                    }
                }
            }
        }
    }
}

/// `key` and its own flush list, built once per key (`last` remembers the last one).
fn key_tokens<'a>(
    last: &'a mut Option<(String, String)>,
    ks: &KeySpace,
    key: &str,
) -> &'a (String, String) {
    if last.as_ref().is_none_or(|(k, _)| k != key) {
        *last = Some((key.to_string(), ks.key_flush_key(key)));
    }
    last.get_or_insert_with(|| (key.to_string(), ks.key_flush_key(key)))
}

/// The version key of `table` and the tag children lists carry for it, built once.
fn table_tokens<'a>(
    tables: &'a mut HashMap<String, (String, String)>,
    ks: &KeySpace,
    table: &str,
) -> &'a (String, String) {
    if !tables.contains_key(table) {
        let version = ks.version_key(table);
        let tag = format!("#{version}");
        tables.insert(table.to_string(), (version, tag));
    }
    static NONE: (String, String) = (String::new(), String::new());
    tables.get(table).unwrap_or(&NONE)
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

    /// Registers `key` (a query or a value) and its own flush list on row `row`: a write to the
    /// row deletes the key and everything in the key's flush list.
    pub fn row(&mut self, ks: &KeySpace, row: &crate::ObjectKey, key: &str) {
        let (key, own) = key_tokens(&mut self.last_key, ks, key);
        let (version, _) = table_tokens(&mut self.tables, ks, row.model());
        let list = self
            .lists
            .entry(ks.flush_key(row))
            .or_insert_with(|| ListRegs::new(version.clone()));
        list.add(key);
        list.add(own);
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
        let (key, own) = key_tokens(&mut self.last_key, ks, key);
        let (version, tag) = table_tokens(&mut self.tables, ks, table);
        let list = self
            .lists
            .entry(ks.children_key(parent))
            .or_insert_with(|| ListRegs::new(version.clone()));
        list.add(key);
        list.add(own);
        list.add(tag);
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
            let (version, _) = table_tokens(&mut self.tables, ks, parent.model());
            self.lists
                .entry(ks.flush_key(parent))
                .or_insert_with(|| ListRegs::new(version.clone()))
                .add(&ks.flush_key(child));
        }
    }

    /// Every list this registration writes to (the rows' own lists, their foreign-key
    /// targets' children lists, predicate and exit lists).
    pub(crate) fn lists(&self) -> impl Iterator<Item = &str> {
        self.lists.keys().map(String::as_str)
    }

    /// The tokens this registration appends to `list`.
    pub(crate) fn tokens_of(&self, list: &str) -> &[String] {
        self.lists.get(list).map_or(&[], |l| l.tokens.as_slice())
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
        let version = ks.version_key(table);
        let own = ks.key_flush_key(key);
        self.on_list(list.clone(), version.clone(), key);
        self.on_list(list, version, &own);
    }

    /// Registers `key` directly on a flush list (an object's or a query's).
    pub fn on_list(&mut self, flush_key: String, version_key: String, key: &str) {
        self.lists
            .entry(flush_key)
            .or_insert_with(|| ListRegs::new(version_key))
            .add(key);
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
pub(crate) fn holds_all(value: &[u8], wanted: &[String]) -> bool {
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
    wanted.iter().all(|w| present.contains(w.as_str()))
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
pub(crate) fn register(
    backend: &dyn Backend,
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
    let mut pending: Vec<(&str, &str, Vec<u8>)> = regs
        .lists
        .iter()
        .map(|(list, l)| (list.as_str(), l.version.as_str(), join(&l.tokens)))
        .collect();
    for _ in 0..MAX_REGISTER_ROUNDS {
        if pending.is_empty() {
            break;
        }
        let appends: Vec<Op<'_>> = pending
            .iter()
            .map(|(k, _, d)| Op::Append(k, d.as_slice()))
            .collect();
        let mut replies = backend.batch(&[&appends, &gets])?.into_iter();
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
                    if !compact(backend, ks, p.0, p.1, &p.2)? {
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
            let mut replies = backend.batch(&[&adds, &gets])?.into_iter();
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
        None => backend.get_multi(check)?,
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
fn compact(
    backend: &dyn Backend,
    ks: &KeySpace,
    list: &str,
    version_key: &str,
    extra: &[u8],
) -> Result<bool> {
    let Some(item) = backend.get(list)? else {
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
    let limit = backend.max_item_size();
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
    Ok(backend.cas(list, &value, Expiry::Forever, item.cas)? == CasOutcome::Stored)
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
pub(crate) trait WalkHooks {
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
pub(crate) fn invalidate(
    backend: &dyn Backend,
    ks: &KeySpace,
    counters: &[String],
    roots: Vec<String>,
    hooks: &dyn WalkHooks,
) -> Walked {
    let mut bumped = None;
    let walked = walk(backend, ks, counters, roots, hooks, &mut bumped);
    Walked {
        // A walk that failed before its first read has not bumped yet: bump now.
        bumped: bumped.unwrap_or_else(|| crate::clock::bump(backend, counters)),
        walked,
    }
}

/// Reads the first level of `roots` in one batch after the increments of `counters`
/// (setting `bumped`), or only reads them once `bumped` is set.
fn read_level(
    backend: &dyn Backend,
    counters: &[String],
    refs: &[&str],
    bumped: &mut Option<Result<u64>>,
) -> Result<HashMap<String, Item>> {
    if bumped.is_some() {
        return backend.get_multi(refs);
    }
    let names: Vec<&str> = counters.iter().map(String::as_str).collect();
    let incrs: Vec<Op<'_>> = names.iter().map(|k| Op::Incr(k, 1)).collect();
    let gets: Vec<Op<'_>> = refs.iter().map(|k| Op::Get(k)).collect();
    match backend.batch(&[&incrs, &gets]) {
        Ok(replies) => {
            let mut replies = replies.into_iter();
            let incr = crate::clock::incr_outcomes(&names, replies.next().unwrap_or_default());
            *bumped = Some(crate::clock::settle(backend, &names, incr));
            Ok(crate::read::values_of(
                refs,
                replies.next().unwrap_or_default(),
            ))
        }
        Err(_) => {
            // Bump counter by counter (each one that can be is), then read.
            *bumped = Some(crate::clock::bump(backend, counters));
            backend.get_multi(refs)
        }
    }
}

fn walk(
    backend: &dyn Backend,
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
            let got = read_level(backend, counters, &refs, bumped)?;
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
            match crate::clock::bump(backend, &versions) {
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
            backend.delete_multi(&doomed.iter().map(String::as_str).collect::<Vec<_>>())?;
            return Err(e);
        }
        // Clear with CAS: a list that changed since we read it holds registrations we have not
        // seen; read it again rather than lose them. (Deleting first is not needed: a reader
        // that registers again after the clear is found by the next write.)
        hooks.step("clear");
        let clears: Vec<Op<'_>> = read
            .iter()
            .map(|(list, cas, epoch)| Op::Cas(list, epoch.as_slice(), Expiry::Forever, *cas))
            .collect();
        let mut stage = deletes;
        stage.extend(clears);
        let replies = backend.batch(&[&stage])?.pop().unwrap_or_default();
        let outcomes: Vec<CasOutcome> = replies
            .into_iter()
            .skip(doomed.len())
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
        let tokens = regs.tokens_of(&ks.flush_key(&parent));
        let expected: Vec<String> = (0..100)
            .map(|i| ks.flush_key(&ObjectKey::new("addons", &[i.to_string()])))
            .collect();
        assert_eq!(tokens, expected.as_slice());
    }
}
