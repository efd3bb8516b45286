//! Flush lists through the public API of `caching-core`: concurrent registrations are never
//! lost, expansion terminates on cycles, invalidation removes everything reachable from a row
//! and nothing else, an overflowing list falls back to the table version, and lists stay
//! bounded however many registrations one row receives.
//!
//! Registrations go through the real fill path (`Cache::lookup` then `Cache::fill` with
//! `Registrations`), as the Diesel adapter drives it.

use std::collections::HashSet;
use std::sync::mpsc;
use std::time::Duration;

use caching_core::backend::locmem::{LocMem, LocMemLimits};
use caching_core::{
    Cache, FillOutcome, Invalidation, InvalidationReport, ObjectKey, Registrations, Timeout,
};
use caching_tests::{each_cache, fill_query, is_hit, list_tokens, query_key, QueryFlushTarget};

/// Runs `cache.invalidate(inv)` on another thread and fails the test if it has not returned
/// after a generous bound (a walk that loops forever would otherwise hang the suite).
fn invalidate_or_hang(cache: &Cache, inv: Invalidation) -> InvalidationReport {
    let (tx, rx) = mpsc::channel();
    let c = cache.clone();
    std::thread::spawn(move || {
        let _ = tx.send(c.invalidate(&inv));
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("invalidation did not return: the flush-list walk does not terminate")
        .expect("invalidation failed")
}

fn row_of(table: &str, pk: &str) -> ObjectKey {
    ObjectKey::new(table, &[pk])
}

fn inv_objects(objects: &[&ObjectKey]) -> Invalidation {
    let mut inv = Invalidation::new();
    for o in objects {
        inv.object((*o).clone());
    }
    inv
}

#[test]
fn concurrent_registrations_are_never_lost() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 10_000;
    const LISTS: usize = 100;
    for (name, cache) in each_cache("concurrent_registrations_are_never_lost", |b| b) {
        let rows: Vec<ObjectKey> = (0..LISTS).map(|i| row_of("regs", &i.to_string())).collect();
        let key_of = |t: usize, i: usize| query_key(&cache, &format!("{t}/{i}"));
        let row_index = |t: usize, i: usize| (t * PER_THREAD + i) % LISTS;
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (cache, rows) = (&cache, &rows);
                s.spawn(move || {
                    for i in 0..PER_THREAD {
                        let key = key_of(t, i);
                        let mut regs = Registrations::new();
                        regs.row(cache.keys(), &rows[row_index(t, i)], &key);
                        let out = fill_query(cache, &key, &["regs"], b"[1]", &regs);
                        assert_eq!(out, FillOutcome::Stored, "{name}: fill {t}/{i}");
                    }
                });
            }
        });

        let lists: Vec<HashSet<String>> = rows
            .iter()
            .map(|r| {
                list_tokens(&cache, &cache.keys().flush_key(r))
                    .into_iter()
                    .collect()
            })
            .collect();
        let mut lost = Vec::new();
        for t in 0..THREADS {
            for i in 0..PER_THREAD {
                let key = key_of(t, i);
                let list = &lists[row_index(t, i)];
                if !list.contains(&key) || !list.contains(&cache.keys().key_flush_key(&key)) {
                    lost.push(format!("{t}/{i}"));
                }
            }
        }
        assert!(
            lost.is_empty(),
            "{name}: {} of {} registrations lost, for example {:?}",
            lost.len(),
            THREADS * PER_THREAD,
            &lost[..lost.len().min(5)]
        );
        let registered: usize = lists.iter().map(HashSet::len).sum();
        assert_eq!(
            registered,
            2 * THREADS * PER_THREAD,
            "{name}: tokens on the lists"
        );
        let s = cache.stats();
        assert_eq!(s.fills, (THREADS * PER_THREAD) as u64, "{name}: {s:?}");
        assert_eq!(s.overflows, 0, "{name}: {s:?}");
    }
}

#[test]
fn expansion_terminates_on_a_cycle() {
    for (name, cache) in each_cache("expansion_terminates_on_a_cycle", |b| b) {
        let ks = cache.keys();
        let (a, b, c) = (
            row_of("nodes", "a"),
            row_of("nodes", "b"),
            row_of("nodes", "c"),
        );
        let (qa, qb, qc) = (
            query_key(&cache, "a"),
            query_key(&cache, "b"),
            query_key(&cache, "c"),
        );
        // a's list links b's and b's list links a's: a cycle of two.
        let mut regs = Registrations::new();
        regs.row(ks, &a, &qa);
        regs.link(ks, &a, &b);
        assert_eq!(
            fill_query(&cache, &qa, &["nodes"], b"a", &regs),
            FillOutcome::Stored,
            "{name}"
        );
        let mut regs = Registrations::new();
        regs.row(ks, &b, &qb);
        regs.link(ks, &b, &a);
        assert_eq!(
            fill_query(&cache, &qb, &["nodes"], b"b", &regs),
            FillOutcome::Stored,
            "{name}"
        );
        let mut regs = Registrations::new();
        regs.row(ks, &c, &qc);
        regs.link(ks, &c, &c); // a self-link adds nothing
        assert_eq!(
            fill_query(&cache, &qc, &["nodes"], b"c", &regs),
            FillOutcome::Stored,
            "{name}"
        );
        assert!(
            list_tokens(&cache, &ks.flush_key(&a)).contains(&ks.flush_key(&b)),
            "{name}"
        );
        assert!(
            list_tokens(&cache, &ks.flush_key(&b)).contains(&ks.flush_key(&a)),
            "{name}"
        );
        assert!(
            !list_tokens(&cache, &ks.flush_key(&c)).contains(&ks.flush_key(&c)),
            "{name}"
        );

        let report = invalidate_or_hang(&cache, inv_objects(&[&a]));
        assert_eq!(report.deleted, 2, "{name}: {report:?}");
        assert_eq!(report.lists_read, 2, "{name}: {report:?}");
        assert_eq!(report.uncleared, 0, "{name}: {report:?}");
        for q in [&qa, &qb] {
            assert_eq!(
                cache.backend().get(q).unwrap(),
                None,
                "{name}: {q} survived"
            );
        }
        assert!(
            is_hit(&cache, &qc, &["nodes"]),
            "{name}: the unrelated row's query survives"
        );
        // Both lists were cleared: invalidating the other node finds nothing more.
        assert!(list_tokens(&cache, &ks.flush_key(&a)).is_empty(), "{name}");
        assert!(list_tokens(&cache, &ks.flush_key(&b)).is_empty(), "{name}");
        let report = invalidate_or_hang(&cache, inv_objects(&[&b]));
        assert_eq!(report.deleted, 0, "{name}: {report:?}");

        // A longer cycle, invalidated from two of its rows at once.
        let ring: Vec<ObjectKey> = (0..5).map(|i| row_of("ring", &i.to_string())).collect();
        let keys: Vec<String> = (0..5)
            .map(|i| query_key(&cache, &format!("ring{i}")))
            .collect();
        for i in 0..5 {
            let mut regs = Registrations::new();
            regs.row(ks, &ring[i], &keys[i]);
            regs.link(ks, &ring[i], &ring[(i + 1) % 5]);
            assert_eq!(
                fill_query(&cache, &keys[i], &["ring"], b"r", &regs),
                FillOutcome::Stored,
                "{name}"
            );
        }
        let report = invalidate_or_hang(&cache, inv_objects(&[&ring[0], &ring[2]]));
        assert_eq!(report.deleted, 5, "{name}: {report:?}");
        for q in &keys {
            assert_eq!(
                cache.backend().get(q).unwrap(),
                None,
                "{name}: {q} survived"
            );
        }
    }
}

#[test]
fn invalidation_removes_everything_reachable_and_nothing_else() {
    for (name, cache) in each_cache(
        "invalidation_removes_everything_reachable_and_nothing_else",
        |b| b,
    ) {
        let ks = cache.keys();
        let (u1, u2) = (row_of("users", "1"), row_of("users", "2"));
        let (a1, a2) = (row_of("addons", "1"), row_of("addons", "2"));
        // A query over user 1; a query over addon 1, whose author is user 1 (FK link); a query
        // over user 2 and a query over addon 2 (author user 2): unrelated.
        let q_u1 = query_key(&cache, "users where id = 1");
        let q_a1 = query_key(&cache, "addons where id = 1");
        let q_u2 = query_key(&cache, "users where id = 2");
        let q_a2 = query_key(&cache, "addons where id = 2");
        for (q, row, parent, table) in [
            (&q_u1, &u1, None, "users"),
            (&q_a1, &a1, Some(&u1), "addons"),
            (&q_u2, &u2, None, "users"),
            (&q_a2, &a2, Some(&u2), "addons"),
        ] {
            let mut regs = Registrations::new();
            regs.row(ks, row, q);
            if let Some(p) = parent {
                regs.link(ks, row, p);
            }
            assert_eq!(
                fill_query(&cache, q, &[table], b"rows", &regs),
                FillOutcome::Stored,
                "{name}"
            );
        }
        // Values on the query's own flush list (scenario 21) and on the rows' lists.
        let mut calls = Vec::new();
        let mut value = |target: &dyn caching_core::FlushTarget, label: &str| -> String {
            cache.cached_with(target, label, Timeout::Forever, || {
                calls.push(label.to_string());
                label.to_string()
            })
        };
        let t_a1 = QueryFlushTarget::new(&q_a1, &["addons"]);
        let t_a2 = QueryFlushTarget::new(&q_a2, &["addons"]);
        for _ in 0..2 {
            value(&t_a1, "fragment a1");
            value(&t_a2, "fragment a2");
            value(&u1, "display u1");
            value(&u2, "display u2");
        }
        let manual: u32 = cache.cached("global", Timeout::Forever, || 1);
        assert_eq!(manual, 1);

        let report = invalidate_or_hang(&cache, inv_objects(&[&u1]));
        assert_eq!(report.uncleared, 0, "{name}: {report:?}");
        // Reachable from user 1: its query, the FK-linked addon query, the fragment on that
        // query's own list, the value on user 1's list. Deleted, not just stale.
        for q in [&q_u1, &q_a1] {
            assert_eq!(
                cache.backend().get(q).unwrap(),
                None,
                "{name}: {q} survived"
            );
        }
        for list in [
            ks.flush_key(&u1),
            ks.flush_key(&a1),
            ks.key_flush_key(&q_a1),
        ] {
            assert!(
                list_tokens(&cache, &list).is_empty(),
                "{name}: {list} not cleared"
            );
        }
        for _ in 0..2 {
            value(&t_a1, "fragment a1");
            value(&t_a2, "fragment a2");
            value(&u1, "display u1");
            value(&u2, "display u2");
        }
        let mut expected = vec!["fragment a1", "fragment a2", "display u1", "display u2"];
        expected.extend(["fragment a1", "display u1"]);
        assert_eq!(
            calls, expected,
            "{name}: recomputed exactly the reachable values"
        );
        // Nothing else: the unrelated queries and values survive.
        assert!(is_hit(&cache, &q_u2, &["users"]), "{name}");
        assert!(is_hit(&cache, &q_a2, &["addons"]), "{name}");
        let manual: u32 = cache.cached("global", Timeout::Forever, || 2);
        assert_eq!(manual, 1, "{name}: a manual value survives");
        assert!(
            !list_tokens(&cache, &ks.flush_key(&u2)).is_empty(),
            "{name}"
        );
        assert!(
            !list_tokens(&cache, &ks.key_flush_key(&q_a2)).is_empty(),
            "{name}"
        );

        // Scenario 15: a write to addon 2 invalidates its FK targets' queries too.
        let mut inv = inv_objects(&[&a2]);
        inv.object(u2.clone());
        invalidate_or_hang(&cache, inv);
        assert!(!is_hit(&cache, &q_a2, &["addons"]), "{name}");
        assert!(!is_hit(&cache, &q_u2, &["users"]), "{name}");
    }
}

#[test]
fn an_overflowing_list_falls_back_to_the_table_version() {
    let backend = LocMem::with_limits(LocMemLimits {
        max_item_size: 1024,
        ..LocMemLimits::default()
    });
    let cache = Cache::builder()
        .backend(backend)
        .prefix("ovf")
        .build()
        .unwrap();
    let ks = cache.keys();
    let (hot, other_user, addon) = (
        row_of("users", "1"),
        row_of("users", "2"),
        row_of("addons", "1"),
    );
    let list = ks.flush_key(&hot);
    let keys: Vec<String> = (0..40)
        .map(|i| query_key(&cache, &format!("hot{i}")))
        .collect();
    for q in &keys {
        let mut regs = Registrations::new();
        regs.row(ks, &hot, q);
        // The query stays cached: its registration is covered by the overflow marker.
        assert_eq!(
            fill_query(&cache, q, &["users"], b"rows", &regs),
            FillOutcome::Stored
        );
        let len = cache.backend().get(&list).unwrap().unwrap().value.len();
        assert!(len <= 1024, "list of {len} bytes over the item size");
    }
    assert!(cache.stats().overflows > 0, "{:?}", cache.stats());
    let tokens = list_tokens(&cache, &list);
    let marker = format!("!{}", ks.version_key("users"));
    assert!(tokens.contains(&marker), "no overflow marker in {tokens:?}");
    assert!(
        !tokens.contains(&keys[0]),
        "the first registration was replaced by the marker"
    );

    let q_other_user = query_key(&cache, "other user");
    let mut regs2 = Registrations::new();
    regs2.row(ks, &other_user, &q_other_user);
    assert_eq!(
        fill_query(&cache, &q_other_user, &["users"], b"u2", &regs2),
        FillOutcome::Stored
    );
    let q_addon = query_key(&cache, "addon");
    let mut regs = Registrations::new();
    regs.row(ks, &addon, &q_addon);
    assert_eq!(
        fill_query(&cache, &q_addon, &["addons"], b"a1", &regs),
        FillOutcome::Stored
    );
    assert!(keys.iter().all(|q| is_hit(&cache, q, &["users"])));

    let report = cache.invalidate(&inv_objects(&[&hot])).unwrap();
    assert_eq!(
        report.overflow_versions,
        vec![ks.version_key("users")],
        "{report:?}"
    );
    for (i, q) in keys.iter().enumerate() {
        assert!(
            !is_hit(&cache, q, &["users"]),
            "query {i} on the overflowed row still hits"
        );
    }
    // The fallback is table-wide: every users query misses, other tables are untouched.
    assert!(!is_hit(&cache, &q_other_user, &["users"]));
    assert!(is_hit(&cache, &q_addon, &["addons"]));

    // The invalidation cleared the list: the row is precise again.
    assert!(list_tokens(&cache, &list).is_empty());
    let fresh = query_key(&cache, "fresh");
    let mut regs = Registrations::new();
    regs.row(ks, &hot, &fresh);
    assert_eq!(
        fill_query(&cache, &fresh, &["users"], b"rows", &regs),
        FillOutcome::Stored
    );
    assert!(list_tokens(&cache, &list).contains(&fresh));
    assert!(!list_tokens(&cache, &list).contains(&marker));
}

#[test]
fn flush_lists_stay_bounded_under_100_000_registrations_on_one_row() {
    const FILLS: usize = 1000;
    const PER_FILL: usize = 100;
    for (name, cache) in each_cache(
        "flush_lists_stay_bounded_under_100_000_registrations_on_one_row",
        |b| b,
    ) {
        let ks = cache.keys();
        let hot = row_of("hot", "1");
        let list = ks.flush_key(&hot);
        let mut entries = Vec::with_capacity(FILLS);
        let mut largest = 0;
        for f in 0..FILLS {
            // Each fill registers 100 distinct keys (its own entry among them) on the row.
            let entry = query_key(&cache, &format!("entry{f}"));
            let mut regs = Registrations::new();
            regs.row(ks, &hot, &entry);
            for j in 1..PER_FILL {
                regs.row(ks, &hot, &query_key(&cache, &format!("extra{f}/{j}")));
            }
            let out = fill_query(&cache, &entry, &["hot"], b"rows", &regs);
            assert_eq!(
                out,
                FillOutcome::Stored,
                "{name}: fill {f} was not registered"
            );
            entries.push(entry);
            let len = cache
                .backend()
                .get(&list)
                .unwrap()
                .map_or(0, |i| i.value.len());
            largest = largest.max(len);
        }
        let limit = cache.backend().max_item_size();
        assert!(
            largest <= limit,
            "{name}: list reached {largest} bytes, item size {limit}"
        );
        let s = cache.stats();
        assert!(
            s.overflows > 0,
            "{name}: 100,000 registrations never overflowed: {s:?}"
        );
        assert_eq!(s.fills, FILLS as u64, "{name}: {s:?}");

        // Every entry, registered precisely or covered by the marker, dies with the row.
        cache.invalidate(&inv_objects(&[&hot])).unwrap();
        let hits: Vec<usize> = (0..FILLS)
            .filter(|f| is_hit(&cache, &entries[*f], &["hot"]))
            .collect();
        assert!(
            hits.is_empty(),
            "{name}: entries {hits:?} survived the row's invalidation"
        );
    }
}
