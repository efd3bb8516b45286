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
//! Lists are bounded by the backend's item size. When an append would exceed it, the list is
//! compacted (duplicates removed) with CAS; if it is still too large it is replaced by an
//! overflow marker `!{version key}`: from then on a write to that row bumps its table
//! version, which invalidates every cached query over the table (each entry records the table
//! versions it was read under). The row stays cacheable; its invalidation is just coarser
//! until the next write clears the list.

use std::collections::{BTreeMap, HashSet};

use crate::backend::{AppendOutcome, Backend, CasOutcome};
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
/// regs.row(&ks, &addon, "app:q:abc");
/// regs.link(&ks, &addon, &user);
/// assert_eq!(regs.len(), 2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Registrations {
    /// flush key -> (version key of the row's table, tokens to append)
    lists: BTreeMap<String, (String, Vec<String>)>,
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

    fn push(&mut self, ks: &KeySpace, list_owner: &crate::ObjectKey, token: String) {
        let entry = self
            .lists
            .entry(ks.flush_key(list_owner))
            .or_insert_with(|| (ks.version_key(list_owner.model()), Vec::new()));
        if !entry.1.contains(&token) {
            entry.1.push(token);
        }
    }

    /// Registers `key` (a query or a value) and its own flush list on row `row`: a write to the
    /// row deletes the key and everything in the key's flush list.
    pub fn row(&mut self, ks: &KeySpace, row: &crate::ObjectKey, key: &str) {
        self.push(ks, row, key.to_string());
        self.push(ks, row, ks.key_flush_key(key));
    }

    /// Links a row's flush list into its foreign-key target's list: a write to `parent`
    /// invalidates what is registered on `child`.
    pub fn link(&mut self, ks: &KeySpace, child: &crate::ObjectKey, parent: &crate::ObjectKey) {
        // A self-reference adds nothing but must not add a cycle either.
        if child != parent {
            self.push(ks, parent, ks.flush_key(child));
        }
    }

    /// The lists on which `key` itself is registered (not through links).
    pub(crate) fn lists_holding<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.lists
            .iter()
            .filter(move |(_, (_, toks))| toks.iter().any(|t| t == key))
            .map(|(list, _)| list.as_str())
    }

    /// Registers `key` directly on a flush list (an object's or a query's).
    pub fn on_list(&mut self, flush_key: String, version_key: String, key: &str) {
        let entry = self
            .lists
            .entry(flush_key)
            .or_insert_with(|| (version_key, Vec::new()));
        if !entry.1.iter().any(|t| t == key) {
            entry.1.push(key.to_string());
        }
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

fn tokens(value: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(value)
        .unwrap_or("")
        .split(' ')
        .filter(|t| !t.is_empty())
}

/// The epoch token (`@n`) of a list created in eviction-safe mode.
pub(crate) fn epoch_token(value: &[u8]) -> Option<&str> {
    tokens(value).find(|t| t.starts_with('@'))
}

/// The epoch of a list, if it has one.
pub(crate) fn epoch_of(value: &[u8]) -> Option<u64> {
    epoch_token(value).and_then(|t| t[1..].parse().ok())
}

/// Whether a list holds `key`.
pub(crate) fn holds(value: &[u8], key: &str) -> bool {
    tokens(value).any(|t| t == key)
}

fn join(tokens: &[impl AsRef<str>]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in tokens {
        out.push(b' ');
        out.extend_from_slice(t.as_ref().as_bytes());
    }
    out
}

/// Appends every entry of `regs` to its list, atomically per list.
pub(crate) fn register(
    backend: &dyn Backend,
    regs: &Registrations,
    epochs: bool,
) -> Result<RegisterOutcome> {
    let mut outcome = RegisterOutcome {
        complete: true,
        overflows: 0,
    };
    let mut pending: Vec<(&str, &str, Vec<u8>)> = regs
        .lists
        .iter()
        .map(|(list, (ver, toks))| (list.as_str(), ver.as_str(), join(toks)))
        .collect();
    for _ in 0..MAX_REGISTER_ROUNDS {
        if pending.is_empty() {
            return Ok(outcome);
        }
        let items: Vec<(&str, &[u8])> =
            pending.iter().map(|(k, _, d)| (*k, d.as_slice())).collect();
        let results = backend.append_multi(&items)?;
        let mut missing = Vec::new();
        let mut retry = Vec::new();
        for (p, r) in pending.into_iter().zip(results) {
            match r {
                AppendOutcome::Appended => {}
                AppendOutcome::Missing => missing.push(p),
                AppendOutcome::TooLarge => {
                    outcome.overflows += 1;
                    if !compact(backend, p.0, p.1, &p.2)? {
                        retry.push(p);
                    }
                }
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
            let items: Vec<(&str, &[u8])> = missing
                .iter()
                .zip(&created)
                .map(|((k, _, _), d)| (*k, d.as_slice()))
                .collect();
            let added = backend.add_multi(&items, Expiry::Forever)?;
            for (p, ok) in missing.into_iter().zip(added) {
                if !ok {
                    // Created by someone else meanwhile (or too large): append again.
                    retry.push(p);
                }
            }
        }
        pending = retry;
    }
    outcome.complete = pending.is_empty();
    Ok(outcome)
}

/// Makes room in a full list: drops duplicates, or replaces the list by an overflow marker.
/// Returns whether `extra` is now covered (`false`: the list changed meanwhile, retry).
fn compact(backend: &dyn Backend, list: &str, version_key: &str, extra: &[u8]) -> Result<bool> {
    let Some(item) = backend.get(list)? else {
        return Ok(false);
    };
    let mut seen = HashSet::new();
    let mut kept: Vec<&str> = Vec::new();
    let mut overflowed = false;
    for t in tokens(&item.value).chain(tokens(extra)) {
        if t.starts_with('!') {
            overflowed = true;
        } else if seen.insert(t) {
            kept.push(t);
        }
    }
    let compacted = join(&kept);
    let limit = backend.max_item_size();
    let value = if !overflowed && compacted.len() + list.len() + 64 <= limit / 2 {
        compacted
    } else {
        tracing::debug!(list, "flush list overflowed: falling back to table version");
        let epoch = epoch_token(&item.value)
            .map(|e| format!(" {e}"))
            .unwrap_or_default();
        format!("{epoch} !{version_key}").into_bytes()
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
}

/// Hook points of the invalidation walk (for interleaving tests).
pub(crate) trait WalkHooks {
    fn step(&self, name: &'static str);
}

/// Deletes everything reachable from `roots` and clears the lists read, with CAS.
pub(crate) fn invalidate(
    backend: &dyn Backend,
    ks: &KeySpace,
    roots: Vec<String>,
    hooks: &dyn WalkHooks,
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
            let got = backend.get_multi(&refs)?;
            let mut next = Vec::new();
            for list in &level {
                let Some(item) = got.get(list) else { continue };
                report.lists_read += 1;
                let epoch = epoch_token(&item.value)
                    .map(|e| format!(" {e}").into_bytes())
                    .unwrap_or_default();
                read.push((list.clone(), item.cas, epoch));
                for t in tokens(&item.value) {
                    if t.starts_with('@') {
                        continue;
                    } else if let Some(v) = t.strip_prefix('!') {
                        versions.push(v.to_string());
                    } else if ks.is_flush_key(t) {
                        if visited.insert(t.to_string()) {
                            next.push(t.to_string());
                        }
                    } else if crate::key::is_valid_key(t) {
                        doomed.push(t.to_string());
                    } else {
                        // Never produced by this crate; a foreign token must not block the
                        // invalidation of everything else on the list.
                        tracing::warn!(list, token = t, "ignoring invalid token in flush list");
                    }
                }
            }
            level = next;
        }
        if !versions.is_empty() {
            versions.sort();
            versions.dedup();
            crate::clock::bump(backend, &versions)?;
            report.overflow_versions.extend(versions);
        }
        hooks.step("delete");
        doomed.sort();
        doomed.dedup();
        if !doomed.is_empty() {
            let refs: Vec<&str> = doomed.iter().map(String::as_str).collect();
            backend.delete_multi(&refs)?;
            report.deleted += doomed.len();
        }
        // Clear with CAS: a list that changed since we read it holds registrations we have not
        // seen; read it again rather than lose them.
        hooks.step("clear");
        let clears: Vec<(&str, &[u8], u64)> = read
            .iter()
            .map(|(list, cas, epoch)| (list.as_str(), epoch.as_slice(), *cas))
            .collect();
        let outcomes = backend.cas_multi(&clears, Expiry::Forever)?;
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
