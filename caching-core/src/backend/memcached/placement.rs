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

    #[test]
    fn placement_is_pinned() {
        // Computed with the client before it was split into modules: keys must stay where
        // they are.
        let s = seeds(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        let placed: Vec<usize> = (0..40).map(|i| owner(&s, &format!("k{i}"))).collect();
        assert_eq!(
            placed,
            [
                1, 2, 2, 0, 1, 2, 0, 0, 0, 1, 0, 0, 2, 1, 1, 0, 1, 0, 2, 1, 2, 2, 2, 2, 0, 1, 1, 1,
                0, 0, 0, 1, 1, 2, 1, 0, 0, 1, 1, 1
            ]
        );
    }

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

    #[test]
    fn removing_a_server_moves_only_its_keys() {
        let three = seeds(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        let two = &three[..2];
        for i in 0..1000 {
            let k = format!("key{i}");
            let a = owner(&three, &k);
            if a != 2 {
                assert_eq!(a, owner(two, &k));
            }
        }
    }
}
