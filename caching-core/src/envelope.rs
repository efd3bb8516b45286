//! What a cache entry holds: the envelope of a published result (the versions it was read
//! under, the flush lists it relies on in eviction-safe mode, then the payload), and the
//! pending marker a fill stores before it may publish.

use crate::clock;

const ENVELOPE_MAGIC: &[u8; 2] = b"C1";
const GUARDED_MAGIC: &[u8; 2] = b"C2";
/// A fill in progress: stored by `add` before registration, replaced with CAS by the
/// result once the generation check passed. Lookups read it as a miss.
pub(crate) const PENDING_MAGIC: &[u8; 2] = b"P1";
/// Lifetime of a pending marker: far longer than a fill takes, short enough that a filler
/// that died (or failed to delete it) blocks the key only briefly.
pub(crate) const PENDING_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// A pending marker unique to one fill, so a filler never publishes over another's marker:
/// a random value drawn once per process, the thread's own number and count of markers, and
/// the nanoseconds since the process drew the random value (a forked child inherits the
/// random value and the counts, so two processes could otherwise make the same marker; they
/// do not make it in the same nanosecond). Every lookup that may take a lease makes one, so
/// it is cheap: no hashing, no system call, no allocation, and no cache line shared between
/// threads (a thread that is exiting counts on a shared counter instead).
pub(crate) fn pending_marker() -> [u8; MARKER_LEN] {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;
    static SEED: std::sync::OnceLock<(u64, Instant)> = std::sync::OnceLock::new();
    /// Thread numbers; number 0 is the shared count of exiting threads.
    static THREADS: AtomicU64 = AtomicU64::new(1);
    static SHARED: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        /// This thread's number (0 until it is drawn) and count of markers.
        static COUNT: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }
    let (seed, start) = *SEED.get_or_init(|| (clock::random_start(), Instant::now()));
    let (thread, seq) = COUNT
        .try_with(|c| {
            let (mut thread, seq) = c.get();
            if thread == 0 {
                thread = THREADS.fetch_add(1, Ordering::Relaxed);
            }
            c.set((thread, seq + 1));
            (thread, seq)
        })
        .unwrap_or_else(|_| (0, SHARED.fetch_add(1, Ordering::Relaxed)));
    let nanos = start.elapsed().as_nanos() as u64;
    let mut out = [0u8; MARKER_LEN];
    out[..2].copy_from_slice(PENDING_MAGIC);
    for (i, n) in [seed, thread, seq, nanos].into_iter().enumerate() {
        out[2 + i * 8..10 + i * 8].copy_from_slice(&n.to_le_bytes());
    }
    out
}

/// The length of a [`pending_marker`]: the magic, then four 8-byte numbers.
pub(crate) const MARKER_LEN: usize = 2 + 4 * 8;

/// Envelope of a published result: magic, the versions it was read under, in eviction-safe
/// mode the flush lists it is registered on with their epochs, then the payload.
pub(crate) fn envelope(versions: &[u64], guards: &[(String, u64)], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + versions.len() * 8 + payload.len());
    out.extend_from_slice(if guards.is_empty() {
        ENVELOPE_MAGIC
    } else {
        GUARDED_MAGIC
    });
    out.push(versions.len() as u8);
    for v in versions {
        out.extend_from_slice(&v.to_le_bytes());
    }
    if !guards.is_empty() {
        out.extend_from_slice(&(guards.len() as u16).to_le_bytes());
        for (list, epoch) in guards {
            out.push(list.len() as u8);
            out.extend_from_slice(list.as_bytes());
            out.extend_from_slice(&epoch.to_le_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// A decoded envelope.
pub(crate) struct Opened<'a> {
    /// The recorded versions, 8 little-endian bytes each (read in place: a lookup compares
    /// them without allocating).
    versions: &'a [u8],
    pub(crate) guards: Vec<(String, u64)>,
    pub(crate) payload: &'a [u8],
}

/// Splits an envelope into its recorded versions, guards and payload; `None` for anything
/// that is not a well-formed envelope.
pub(crate) fn open_envelope(bytes: &[u8]) -> Option<Opened<'_>> {
    let (guarded, rest) = match bytes.strip_prefix(ENVELOPE_MAGIC) {
        Some(rest) => (false, rest),
        None => (true, bytes.strip_prefix(GUARDED_MAGIC)?),
    };
    let (&n, rest) = rest.split_first()?;
    let (versions, mut rest) = rest.split_at_checked(usize::from(n) * 8)?;
    let mut guards = Vec::new();
    if guarded {
        let (count, r) = rest.split_at_checked(2)?;
        rest = r;
        for _ in 0..u16::from_le_bytes(count.try_into().ok()?) {
            let (&len, r) = rest.split_first()?;
            let (list, r) = r.split_at_checked(len as usize)?;
            let (epoch, r) = r.split_at_checked(8)?;
            guards.push((
                String::from_utf8(list.to_vec()).ok()?,
                u64::from_le_bytes(epoch.try_into().ok()?),
            ));
            rest = r;
        }
    }
    Some(Opened {
        versions,
        guards,
        payload: rest,
    })
}

impl Opened<'_> {
    /// The recorded versions.
    pub(crate) fn versions(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.versions
            .chunks_exact(8)
            .map(|v| u64::from_le_bytes(v.try_into().unwrap_or_default()))
    }

    /// Whether the recorded versions are `now`.
    pub(crate) fn recorded_under(&self, now: &[u64]) -> bool {
        self.versions.len() == now.len() * 8 && self.versions().zip(now).all(|(a, b)| a == *b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_markers_are_distinct_and_recognisable() {
        let markers: std::collections::HashSet<[u8; MARKER_LEN]> =
            (0..1000).map(|_| pending_marker()).collect();
        assert_eq!(markers.len(), 1000);
        assert!(markers.iter().all(|m| m.starts_with(PENDING_MAGIC)));
        assert!(open_envelope(&pending_marker()).is_none());
    }

    #[test]
    fn envelope_round_trips_and_rejects_garbage() {
        let e = envelope(&[1, 2], &[], b"payload");
        let o = open_envelope(&e).unwrap();
        assert_eq!(o.versions().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(o.payload, b"payload");
        assert!(o.recorded_under(&[1, 2]) && !o.recorded_under(&[1]) && !o.recorded_under(&[1, 3]));
        assert!(o.guards.is_empty());
        let g = envelope(&[3], &[("p:f:o:t:1".to_string(), 9)], b"x");
        let o = open_envelope(&g).unwrap();
        assert_eq!(o.guards, vec![("p:f:o:t:1".to_string(), 9)]);
        assert_eq!(o.payload, b"x");
        assert!(open_envelope(b"C1\x05short").is_none());
        assert!(open_envelope(b"C2\x00\x05\x00").is_none());
        assert!(open_envelope(b"xx").is_none());
    }

    /// Markers made on several threads at once never repeat (each thread counts its own).
    #[test]
    fn pending_markers_of_threads_are_distinct() {
        let threads: Vec<_> = (0..8)
            .map(|_| std::thread::spawn(|| (0..500).map(|_| pending_marker()).collect::<Vec<_>>()))
            .collect();
        let mut all = std::collections::HashSet::new();
        for t in threads {
            for m in t.join().unwrap() {
                assert!(all.insert(m), "a marker repeated");
            }
        }
        assert_eq!(all.len(), 8 * 500);
    }

    #[test]
    fn pending_markers_are_unique_and_never_envelopes() {
        let (a, b) = (pending_marker(), pending_marker());
        assert_ne!(a, b);
        assert!(a.starts_with(PENDING_MAGIC));
        assert!(open_envelope(&a).is_none());
    }
}
