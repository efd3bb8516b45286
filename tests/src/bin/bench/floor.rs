//! The floor of a hit: what no cache can beat on a given server, a raw get of the entry's
//! bytes through the same client plus decoding the payload with the same codec. Shared with
//! the criterion benches (`tests/benches/hot.rs`), which include this file.

use caching_core::codec::CodecKind;
use caching_tests::db::Addon;

/// Magic of a published entry (see `caching-core/src/envelope.rs`): then one byte, the
/// number of recorded versions, then the versions (8 bytes each), then the payload.
const ENVELOPE_MAGIC: &[u8; 2] = b"C1";

/// The payload of a published (not eviction-safe) entry: the codec's bytes after the
/// envelope header. `None` for anything else.
pub fn entry_payload(entry: &[u8]) -> Option<&[u8]> {
    let rest = entry.strip_prefix(ENVELOPE_MAGIC)?;
    let (&n, rest) = rest.split_first()?;
    rest.get(n as usize * 8..)
}

/// Decodes a cached result's payload with the codec the bench's caches store results in
/// (the default one): the one place to change when the codec changes.
pub fn floor_decode(payload: &[u8]) -> caching_core::Result<Vec<Addon>> {
    CodecKind::default().decode(payload)
}
