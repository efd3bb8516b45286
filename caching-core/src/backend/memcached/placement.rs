//! Which server holds a key: rendezvous (highest random weight) hashing over blake3.
//!
//! Every process places keys alike (blake3 is stable across builds, platforms and Rust
//! versions), and adding or removing a server moves only that server's share of the keys.
//! The placement is part of the on-server layout: changing it would orphan every cached entry
//! of a multi-server deployment, so it is pinned by a test.

/// The rendezvous seed of a server: blake3 of its name as configured (`host:port`).
pub(super) fn seed(name: &str) -> [u8; 32] {
    *blake3::hash(name.as_bytes()).as_bytes()
}

/// Index of the server (given by its seed) that owns `key`: the one whose
/// `blake3(seed ‖ key)` has the largest first 8 bytes (compared as bytes, big-endian); the
/// first one on a tie.
pub(super) fn owner<'a>(seeds: impl IntoIterator<Item = &'a [u8; 32]>, key: &str) -> usize {
    let mut best: Option<(usize, [u8; 8])> = None;
    for (i, seed) in seeds.into_iter().enumerate() {
        let mut h = blake3::Hasher::new();
        h.update(seed);
        h.update(key.as_bytes());
        let mut w = [0u8; 8];
        w.copy_from_slice(&h.finalize().as_bytes()[..8]);
        if best.is_none_or(|(_, b)| w > b) {
            best = Some((i, w));
        }
    }
    best.map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds(names: &[&str]) -> Vec<[u8; 32]> {
        names.iter().map(|n| seed(n)).collect()
    }

    /// Owners of `k0`..`k39` over `127.0.0.1:1`, `127.0.0.1:2`, `127.0.0.1:3`, as computed by
    /// the client before it was split into modules.
    const PINNED_THREE: [usize; 40] = [
        1, 2, 2, 0, 1, 2, 0, 0, 0, 1, 0, 0, 2, 1, 1, 0, 1, 0, 2, 1, 2, 2, 2, 2, 0, 1, 1, 1, 0, 0,
        0, 1, 1, 2, 1, 0, 0, 1, 1, 1,
    ];

    /// Owners of the same keys over `127.0.0.1:1`, `127.0.0.1:2` (the third server removed).
    const PINNED_TWO: [usize; 40] = [
        1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 0,
        0, 1, 1, 1, 1, 0, 0, 1, 1, 1,
    ];

    /// Placement is part of the on-server layout: the owners of fixed keys over fixed server
    /// names never change across releases (a change would orphan every cached entry of a
    /// multi-server deployment). The same rule on real servers is pinned by
    /// `tests/tests/multi_server.rs` (`fixed_keys_live_on_their_pinned_servers`).
    #[test]
    fn placement_is_pinned() {
        let s = seeds(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        let placed: Vec<usize> = (0..40).map(|i| owner(&s, &format!("k{i}"))).collect();
        assert_eq!(placed, PINNED_THREE);
    }

    /// Removing a server is pinned too, against literal vectors rather than the placement
    /// function compared with itself: the two-server owners are fixed, and every key the
    /// pins place on a surviving server stays on it (only the removed server's keys move).
    #[test]
    fn removing_a_server_is_pinned() {
        let s = seeds(&["127.0.0.1:1", "127.0.0.1:2"]);
        let placed: Vec<usize> = (0..40).map(|i| owner(&s, &format!("k{i}"))).collect();
        assert_eq!(placed, PINNED_TWO);
        let mut moved = 0;
        for (i, (three, two)) in PINNED_THREE.iter().zip(PINNED_TWO).enumerate() {
            if *three == 2 {
                moved += 1;
            } else {
                assert_eq!(*three, two, "k{i} was on a surviving server and moved");
            }
        }
        // The pins are not degenerate: the removed server owned some of the keys.
        assert_eq!(moved, 10);
    }

    /// Keys spread over every server (a rough check; the share of each server on real
    /// memcached processes is measured by `tests/tests/multi_server.rs`), and the edge cases
    /// of one server and none.
    #[test]
    fn placement_is_spread() {
        let s = seeds(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            counts[owner(&s, &format!("key{i}"))] += 1;
        }
        assert!(counts.iter().all(|c| *c > 800), "{counts:?}");
        assert_eq!(owner(&seeds(&["127.0.0.1:1"]), "anything"), 0);
        assert_eq!(owner(&[], "anything"), 0);
    }

    /// A server's seed is blake3 of its name exactly as configured: two spellings of one
    /// address are two different servers to the placement (documented in
    /// `docs/src/configuration.md`).
    #[test]
    fn seeds_follow_the_configured_name() {
        assert_eq!(
            seed("127.0.0.1:11211"),
            *blake3::hash(b"127.0.0.1:11211").as_bytes()
        );
        assert_ne!(seed("127.0.0.1:11211"), seed("localhost:11211"));
    }
}
