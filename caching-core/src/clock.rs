//! Counters that order reads against writes: write generations (`gen:{table}`, bumped by
//! every write, checked by a filling reader after its fill) and table versions
//! (`ver:{table}` and the namespace version, bumped by whole-table invalidation, recorded in
//! every cached entry and compared on every hit).
//!
//! A missing counter (never written, or evicted) is created with a random 64-bit value, so a
//! re-created counter does not repeat a value a reader saw before the eviction: a missing or
//! re-created counter reads as "changed".

use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::Op;
use crate::error::Result;
use crate::io::Io;
use crate::timeout::Expiry;

/// Parses a counter's stored bytes.
pub(crate) fn parse(value: &[u8]) -> Option<u64> {
    // What the backends store: ASCII digits (read on every lookup, so without the UTF-8
    // check); anything else (padding a server added, say) the slow way.
    if !value.is_empty() && value.len() <= 19 {
        // One pass: at most 19 digits cannot overflow.
        let digits = value.iter().try_fold(0u64, |n, d| {
            let d = d.wrapping_sub(b'0');
            (d <= 9).then(|| n * 10 + u64::from(d))
        });
        if digits.is_some() {
            return digits;
        }
    }
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

/// Makes sure each counter exists and holds a number, and returns the current values, in
/// order. A missing counter is created and one that is not a number is replaced, both with a
/// fresh random value (as if it had been evicted: it reads as "changed" to every reader).
/// The missing counters are created and all of them read back in one batch.
pub(crate) async fn ensure<I: Io>(io: &I, keys: &[&str]) -> Result<Vec<u64>> {
    let fresh: Vec<Vec<u8>> = keys
        .iter()
        .map(|_| random_start().to_string().into_bytes())
        .collect();
    let adds: Vec<Op<'_>> = keys
        .iter()
        .zip(&fresh)
        .map(|(k, v)| Op::Add(k, v, Expiry::Forever))
        .collect();
    let gets: Vec<Op<'_>> = keys.iter().map(|k| Op::Get(k)).collect();
    let mut replies = io.batch(&[&adds, &gets]).await?.into_iter();
    let got = crate::read::values_of(keys, replies.nth(1).unwrap_or_default());
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        match got.get(*k).map(|i| parse(&i.value)) {
            Some(Some(n)) => out.push(n),
            Some(None) => out.push(repair(io, k).await?),
            None => {
                return Err(crate::Error::Protocol {
                    server: String::new(),
                    line: format!("counter {k} vanished right after it was created"),
                })
            }
        }
    }
    Ok(out)
}

/// Increments counters; a missing one is created with a random value, and one that is not a
/// number is replaced by one (either differs from whatever a reader saw before, so it reads
/// as changed). All counters go in one pipelined batch (one round trip per server), the
/// missing ones are created in a second. Every counter is attempted even if an earlier one
/// failed; the first error is returned. Returns how many counters were repaired.
pub(crate) async fn bump<I: Io>(io: &I, keys: &[String]) -> Result<u64> {
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    match io.incr_multi(&refs, 1).await {
        Ok(outcomes) => settle(io, &refs, outcomes).await,
        // A server failed: go counter by counter, so each one that can be bumped is (one
        // bumped twice is still only "changed").
        Err(_) => bump_each(io, &refs).await,
    }
}

/// The increments of a [`Backend::batch`] (its replies to `Op::Incr(refs[i], 1)`), as
/// [`Backend::incr_multi`] reports them.
pub(crate) fn incr_outcomes(
    refs: &[&str],
    replies: Vec<crate::backend::OpReply>,
) -> Vec<Result<Option<u64>>> {
    use crate::backend::OpReply;
    refs.iter()
        .zip(replies)
        .map(|(key, r)| match r {
            OpReply::Counter(n) => Ok(n),
            OpReply::NotANumber => Err(crate::Error::NotANumber {
                key: key.to_string(),
            }),
            other => Err(crate::Error::Protocol {
                server: String::new(),
                line: format!("{other:?} answering an increment of {key}"),
            }),
        })
        .collect()
}

/// Finishes a bump whose increments answered `outcomes`: creates the counters that were
/// missing (random start) and repairs those that were not numbers. The repaired count.
pub(crate) async fn settle<I: Io>(
    io: &I,
    refs: &[&str],
    outcomes: Vec<Result<Option<u64>>>,
) -> Result<u64> {
    let mut repaired = 0;
    let mut first_error = None;
    let mut missing = Vec::new();
    for (key, outcome) in refs.iter().zip(outcomes) {
        let done = match outcome {
            Ok(Some(_)) => Ok(()),
            Ok(None) => {
                missing.push(*key);
                Ok(())
            }
            Err(crate::Error::NotANumber { .. }) => repaired_one(io, key, &mut repaired).await,
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            first_error.get_or_insert(e);
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
        match io.add_multi(&items, Expiry::Forever).await {
            Ok(stored) => {
                for (key, stored) in missing.iter().zip(stored) {
                    // Lost the add race: someone created it meanwhile; increment theirs.
                    if !stored {
                        if let Err(e) = bump_one(io, key, &mut repaired).await {
                            first_error.get_or_insert(e);
                        }
                    }
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(repaired), Err)
}

/// [`bump`] one counter at a time.
async fn bump_each<I: Io>(io: &I, keys: &[&str]) -> Result<u64> {
    let mut first_error = None;
    let mut repaired = 0;
    for k in keys {
        if let Err(e) = bump_one(io, k, &mut repaired).await {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(repaired), Err)
}

async fn bump_one<I: Io>(io: &I, key: &str, repaired: &mut u64) -> Result<()> {
    let fresh = random_start().to_string().into_bytes();
    match io.incr(key, 1).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => {
            if io.add(key, &fresh, Expiry::Forever).await? {
                return Ok(());
            }
            // Lost the add race: someone created it meanwhile; increment theirs.
            match io.incr(key, 1).await {
                Ok(_) => Ok(()),
                Err(crate::Error::NotANumber { .. }) => repaired_one(io, key, repaired).await,
                Err(e) => Err(e),
            }
        }
        Err(crate::Error::NotANumber { .. }) => repaired_one(io, key, repaired).await,
        Err(e) => Err(e),
    }
}

async fn repaired_one<I: Io>(io: &I, key: &str, repaired: &mut u64) -> Result<()> {
    repair(io, key).await?;
    *repaired += 1;
    Ok(())
}

/// Replaces a counter that is not a number by a fresh random value: the same as an eviction
/// and re-creation, so every reader sees it as changed. Returns the new value (or, if another
/// writer re-created it first, theirs).
async fn repair<I: Io>(io: &I, key: &str) -> Result<u64> {
    tracing::warn!(
        key,
        "counter is not a number; replacing it with a fresh value"
    );
    let fresh = random_start();
    if io.replace(key, fresh.to_string().as_bytes()).await? {
        return Ok(fresh);
    }
    io.get(key)
        .await?
        .and_then(|i| parse(&i.value))
        .ok_or_else(|| crate::Error::Protocol {
            server: String::new(),
            line: format!("counter {key} is still not a number after its repair"),
        })
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn counters_parse_as_the_backends_store_them() {
        assert_eq!(parse(b"0"), Some(0));
        assert_eq!(
            parse(b"1234567890123456789"),
            Some(1_234_567_890_123_456_789)
        );
        // Past 19 digits, and padded values, take the slow path.
        assert_eq!(parse(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse(b"18446744073709551616"), None);
        assert_eq!(parse(b" 42 "), Some(42));
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"-1"), None);
        assert_eq!(parse(b"4x"), None);
        assert_eq!(parse(b"\xff"), None);
    }
}
