//! Counters that order reads against writes: write generations (`gen:{table}`, bumped by
//! every write, checked by a filling reader after its fill) and table versions
//! (`ver:{table}` and the namespace version, bumped by whole-table invalidation, recorded in
//! every cached entry and compared on every hit).
//!
//! A missing counter (never written, or evicted) is created with a random 64-bit value, so a
//! re-created counter does not repeat a value a reader saw before the eviction: a missing or
//! re-created counter reads as "changed".

use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::Backend;
use crate::error::Result;
use crate::timeout::Expiry;

/// Parses a counter's stored bytes.
pub(crate) fn parse(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// A fresh random starting value (blake3 of time, process id and a process-wide counter: no
/// RNG dependency needed for 64 unpredictable-enough bits).
pub(crate) fn random_start() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.update(&now.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&SEQ.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    // Keep well below 2^64 so increments do not wrap for a long time.
    u64::from_le_bytes(b) >> 8
}

/// Makes sure each counter exists and returns the current values, in order.
pub(crate) fn ensure(backend: &dyn Backend, keys: &[&str]) -> Result<Vec<u64>> {
    let fresh: Vec<(String, Vec<u8>)> = keys
        .iter()
        .map(|k| (k.to_string(), random_start().to_string().into_bytes()))
        .collect();
    let items: Vec<(&str, &[u8])> = fresh
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    backend.add_multi(&items, Expiry::Forever)?;
    let got = backend.get_multi(keys)?;
    keys.iter()
        .map(|k| {
            got.get(*k)
                .and_then(|i| parse(&i.value))
                .ok_or_else(|| crate::Error::Protocol {
                    server: backend.name().into(),
                    line: format!("counter {k} vanished right after it was created"),
                })
        })
        .collect()
}

/// Increments counters; a missing one is created with a random value (which differs from
/// whatever a reader saw before, so it reads as changed).
pub(crate) fn bump(backend: &dyn Backend, keys: &[String]) -> Result<()> {
    let mut missing = Vec::new();
    for k in keys {
        if backend.incr(k, 1)?.is_none() {
            missing.push(k.as_str());
        }
    }
    if !missing.is_empty() {
        let fresh: Vec<Vec<u8>> = missing
            .iter()
            .map(|_| random_start().to_string().into_bytes())
            .collect();
        let items: Vec<(&str, &[u8])> = missing
            .iter()
            .zip(&fresh)
            .map(|(k, v)| (*k, v.as_slice()))
            .collect();
        let added = backend.add_multi(&items, Expiry::Forever)?;
        // Lost the add race: someone created it meanwhile; increment theirs.
        for (k, ok) in missing.iter().zip(added) {
            if !ok {
                backend.incr(k, 1)?;
            }
        }
    }
    Ok(())
}
