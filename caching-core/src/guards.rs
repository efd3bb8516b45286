//! Eviction-safe hits in one round trip, where possible.
//!
//! In eviction-safe mode an entry records the flush lists it is registered on, with their
//! epochs, and a hit must find every one of them still carrying its epoch (see
//! `docs/src/protocol.md`, "What remains"). The list names are inside the entry, so a lookup
//! that knows nothing reads the entry first and the lists in a second round trip. This
//! module remembers, per entry key, the lists its last hit or fill named: the next lookup of
//! the key reads them in the same multi-get as the entry, and the hit costs one round trip.
//! A remembered set that no longer matches (the entry was filled again from other rows) only
//! costs the second round trip for the lists it lacks, and is replaced.
//!
//! Reading the lists in the same round trip as the entry, instead of after it, checks the
//! same thing: a write that missed the entry because a list was evicted found the list gone
//! before it returned, so a read that starts after the write returned finds the list gone,
//! or re-created with another epoch, whichever of its keys it reads first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// How many entry keys are remembered; the memo starts over when it is full.
const CAPACITY: usize = 4096;

/// Entry key -> the flush lists its guards name.
#[derive(Debug, Default)]
pub(crate) struct GuardMemo(Mutex<HashMap<String, Arc<[String]>>>);

impl GuardMemo {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<[String]>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lists the entry `key` named when last seen.
    pub(crate) fn get(&self, key: &str) -> Option<Arc<[String]>> {
        self.lock().get(key).cloned()
    }

    /// Remembers the lists `guards` names for entry `key` (unless already remembered).
    pub(crate) fn remember(&self, key: &str, guards: &[(String, u64)]) {
        let mut memo = self.lock();
        let same = memo.get(key).is_some_and(|known| {
            known.len() == guards.len() && known.iter().zip(guards).all(|(a, (b, _))| a == b)
        });
        if same {
            return;
        }
        if memo.len() >= CAPACITY && !memo.contains_key(key) {
            memo.clear();
        }
        let lists: Arc<[String]> = guards.iter().map(|(k, _)| k.clone()).collect();
        memo.insert(key.to_string(), lists);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_names_and_starts_over_when_full() {
        let memo = GuardMemo::default();
        assert!(memo.get("q").is_none());
        memo.remember("q", &[("a".into(), 1), ("b".into(), 2)]);
        assert_eq!(
            memo.get("q").as_deref(),
            Some(&["a".to_string(), "b".to_string()][..])
        );
        memo.remember("q", &[("c".into(), 1)]);
        assert_eq!(memo.get("q").as_deref(), Some(&["c".to_string()][..]));
        for i in 0..CAPACITY {
            memo.remember(&format!("k{i}"), &[("l".into(), 0)]);
        }
        // Full: the next new key started it over.
        assert!(memo.get("q").is_none());
        assert_eq!(memo.lock().len(), 1);
    }
}
