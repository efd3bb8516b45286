//! Flush lists through the public API of `caching-core`: concurrent registrations are never
//! lost, expansion terminates on cycles, invalidation removes everything reachable from a row
//! and nothing else, a child's write reaches its parent's queries and not its siblings' (whose
//! number does not change the walk), an overflowing list falls back to the table version (a
//! children list to its child tables' versions), and lists stay bounded however many
//! registrations one row receives.
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

/// Fills `n` queries, each holding one child of `parent` (registered as a fill registers a
/// row: its own list, and its parent's children list), and one query holding the parent.
fn fill_children(
    cache: &Cache,
    parent: &ObjectKey,
    n: usize,
) -> (Vec<ObjectKey>, Vec<String>, String) {
    let ks = cache.keys();
    let children: Vec<ObjectKey> = (0..n)
        .map(|i| row_of("addons", &format!("{}-{i}", parent.as_str())))
        .collect();
    let mut keys = Vec::new();
    for (i, child) in children.iter().enumerate() {
        let q = query_key(cache, &format!("child {i} of {parent}"));
        let mut regs = Registrations::new();
        regs.row(ks, child, &q);
        regs.child(ks, child, parent, &q);
        assert_eq!(
            fill_query(cache, &q, &["addons"], b"child", &regs),
            FillOutcome::Stored
        );
        keys.push(q);
    }
    let q_parent = query_key(cache, &format!("holds {parent}"));
    let mut regs = Registrations::new();
    regs.row(ks, parent, &q_parent);
    assert_eq!(
        fill_query(cache, &q_parent, &["users"], b"parent", &regs),
        FillOutcome::Stored
    );
    (children, keys, q_parent)
}

/// Saving one child (the child as an object, its parent as a parent) deletes the queries
/// that hold the child or the parent, and reads no list of the siblings: the walk is the
/// same for 3 siblings as for 300. Writing the parent deletes every child's query.
#[test]
fn a_childs_write_reaches_its_parent_not_its_siblings() {
    for (name, cache) in each_cache("a_childs_write_reaches_its_parent_not_its_siblings", |b| b) {
        let ks = cache.keys();
        let mut reports = Vec::new();
        for n in [3, 300] {
            let parent = row_of("users", &format!("p{n}"));
            let (children, keys, q_parent) = fill_children(&cache, &parent, n);
            let children_list = ks.children_key(&parent);
            let tokens = list_tokens(&cache, &children_list);
            assert!(tokens.contains(&keys[0]), "{name}: {tokens:?}");
            assert!(
                tokens.contains(&format!("#{}", ks.version_key("addons"))),
                "{name}: the children list carries its child table's tag: {tokens:?}"
            );
            assert!(
                list_tokens(&cache, &ks.flush_key(&parent))
                    == [q_parent.clone(), ks.key_flush_key(&q_parent)],
                "{name}: the parent's own list holds only the query that holds the parent"
            );

            let mut inv = Invalidation::new();
            inv.object(children[0].clone()).parent(parent.clone());
            let report = invalidate_or_hang(&cache, inv);
            assert!(
                !is_hit(&cache, &keys[0], &["addons"]),
                "{name}: the saved child's query"
            );
            assert!(
                !is_hit(&cache, &q_parent, &["users"]),
                "{name}: the parent's query (scenario 15)"
            );
            let kept = keys[1..]
                .iter()
                .filter(|q| is_hit(&cache, q, &["addons"]))
                .count();
            assert_eq!(kept, n - 1, "{name}: every sibling's query stays cached");
            assert_eq!(report.deleted, 2, "{name}: {report:?}");
            reports.push(report);

            let mut inv = Invalidation::new();
            inv.object(parent.clone());
            let report = invalidate_or_hang(&cache, inv);
            // Every key on the children list (the saved child's query, already gone, too).
            assert_eq!(report.deleted, n, "{name}: {report:?}");
            let left = keys
                .iter()
                .filter(|q| is_hit(&cache, q, &["addons"]))
                .count();
            assert_eq!(
                left, 0,
                "{name}: writing the parent deletes every child's query"
            );
            assert!(
                list_tokens(&cache, &children_list).is_empty(),
                "{name}: cleared"
            );
        }
        assert_eq!(
            (reports[0].lists_read, reports[0].levels),
            (reports[1].lists_read, reports[1].levels),
            "{name}: a child's write reads as many lists with 300 siblings as with 3: {reports:?}"
        );
    }
}

/// The older scheme stays reachable: a parent named with `object` walks its children list,
/// and links made with `Registrations::link` are still followed from the parent's own list
/// (by `object` and by `parent`).
#[test]
fn naming_the_parent_as_an_object_and_old_links_reach_every_sibling() {
    for (name, cache) in each_cache("naming_the_parent_as_an_object_and_old_links", |b| b) {
        let ks = cache.keys();
        let parent = row_of("users", "1");
        let (children, keys, _) = fill_children(&cache, &parent, 3);
        let mut inv = Invalidation::new();
        inv.object(children[0].clone()).object(parent.clone());
        invalidate_or_hang(&cache, inv);
        assert!(
            keys.iter().all(|q| !is_hit(&cache, q, &["addons"])),
            "{name}: object(parent) walks the children list"
        );

        let linked = row_of("addons", "linked");
        let q = query_key(&cache, "linked");
        let mut regs = Registrations::new();
        regs.row(ks, &linked, &q);
        regs.link(ks, &linked, &parent);
        assert_eq!(
            fill_query(&cache, &q, &["addons"], b"l", &regs),
            FillOutcome::Stored
        );
        let mut inv = Invalidation::new();
        inv.parent(parent.clone());
        invalidate_or_hang(&cache, inv);
        assert!(
            !is_hit(&cache, &q, &["addons"]),
            "{name}: a link is still followed"
        );
    }
}

/// Rows whose foreign keys point at each other (scenario 22) with children lists: the walk
/// terminates and reaches what it should.
#[test]
fn children_lists_of_a_cycle() {
    for (name, cache) in each_cache("children_lists_of_a_cycle", |b| b) {
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
        // a points at b, b at a, c at itself.
        for (row, parent, q) in [(&a, &b, &qa), (&b, &a, &qb), (&c, &c, &qc)] {
            let mut regs = Registrations::new();
            regs.row(ks, row, q);
            regs.child(ks, row, parent, q);
            assert_eq!(
                fill_query(&cache, q, &["nodes"], b"n", &regs),
                FillOutcome::Stored
            );
        }
        assert!(
            list_tokens(&cache, &ks.children_key(&c)).is_empty(),
            "{name}: a self-reference registers nothing on the children list"
        );
        let mut inv = Invalidation::new();
        inv.object(a.clone()).parent(b.clone());
        let report = invalidate_or_hang(&cache, inv);
        assert_eq!(report.uncleared, 0, "{name}: {report:?}");
        assert!(!is_hit(&cache, &qa, &["nodes"]), "{name}");
        assert!(
            !is_hit(&cache, &qb, &["nodes"]),
            "{name}: b is a's parent and a's child"
        );
        assert!(is_hit(&cache, &qc, &["nodes"]), "{name}");
        let mut inv = Invalidation::new();
        inv.object(c.clone()).parent(c.clone());
        invalidate_or_hang(&cache, inv);
        assert!(!is_hit(&cache, &qc, &["nodes"]), "{name}: a self-reference");
    }
}

/// A children list that overflows falls back to the versions of its child tables (the
/// tables its queries read, from its tags), not to its parent's table.
#[test]
fn an_overflowing_children_list_falls_back_to_its_child_tables() {
    let backend = LocMem::with_limits(LocMemLimits {
        max_item_size: 1024,
        ..LocMemLimits::default()
    });
    let cache = Cache::builder()
        .backend(backend)
        .prefix("ovfc")
        .build()
        .unwrap();
    let ks = cache.keys();
    let parent = row_of("users", "1");
    let list = ks.children_key(&parent);
    let q_user = query_key(&cache, "user");
    let mut regs = Registrations::new();
    regs.row(ks, &parent, &q_user);
    assert_eq!(
        fill_query(&cache, &q_user, &["users"], b"u", &regs),
        FillOutcome::Stored
    );
    let mut keys = Vec::new();
    for i in 0..40 {
        // Children of two tables.
        let (table, child) = if i % 2 == 0 {
            ("addons", row_of("addons", &i.to_string()))
        } else {
            ("comments", row_of("comments", &i.to_string()))
        };
        let q = query_key(&cache, &format!("child {i}"));
        let mut regs = Registrations::new();
        regs.row(ks, &child, &q);
        regs.child(ks, &child, &parent, &q);
        assert_eq!(
            fill_query(&cache, &q, &[table], b"c", &regs),
            FillOutcome::Stored
        );
        let len = cache.backend().get(&list).unwrap().unwrap().value.len();
        assert!(len <= 1024, "list of {len} bytes over the item size");
        keys.push((table, q));
    }
    assert!(cache.stats().overflows > 0, "{:?}", cache.stats());
    let tokens = list_tokens(&cache, &list);
    for table in ["addons", "comments"] {
        let marker = format!("!{}", ks.version_key(table));
        assert!(tokens.contains(&marker), "no {marker} in {tokens:?}");
    }
    assert!(
        !tokens.contains(&format!("!{}", ks.version_key("users"))),
        "the parent's table needs no marker: {tokens:?}"
    );
    let report = cache
        .invalidate(Invalidation::new().object(parent.clone()))
        .unwrap();
    let mut bumped = report.overflow_versions.clone();
    bumped.sort();
    assert_eq!(
        bumped,
        vec![ks.version_key("addons"), ks.version_key("comments")],
        "{report:?}"
    );
    for (table, q) in &keys {
        assert!(
            !is_hit(&cache, q, &[table]),
            "a child's query survived the overflow"
        );
    }
    assert!(
        !is_hit(&cache, &q_user, &["users"]),
        "the parent's own query"
    );
}

/// A children list that does not parse is treated as overflowed: its tags may be gone, so it
/// falls back to the namespace version.
#[test]
fn a_corrupted_children_list_falls_back_to_the_namespace() {
    for (name, cache) in each_cache("a_corrupted_children_list", |b| b) {
        let ks = cache.keys();
        let parent = row_of("users", "1");
        let (_, keys, _) = fill_children(&cache, &parent, 2);
        let list = ks.children_key(&parent);
        let out = cache
            .backend()
            .append_multi(&[(list.as_str(), b" \xff".as_slice())])
            .unwrap();
        assert_eq!(out, vec![caching_core::AppendOutcome::Appended], "{name}");
        let unrelated = query_key(&cache, "unrelated");
        let mut regs = Registrations::new();
        regs.row(ks, &row_of("posts", "1"), &unrelated);
        assert_eq!(
            fill_query(&cache, &unrelated, &["posts"], b"p", &regs),
            FillOutcome::Stored
        );
        let report = cache
            .invalidate(Invalidation::new().object(parent.clone()))
            .unwrap();
        assert_eq!(report.repaired, 1, "{name}: {report:?}");
        assert!(
            report.overflow_versions.contains(&ks.namespace_key()),
            "{name}: {report:?}"
        );
        assert!(
            keys.iter().all(|q| !is_hit(&cache, q, &["addons"])),
            "{name}"
        );
        assert!(
            !is_hit(&cache, &unrelated, &["posts"]),
            "{name}: the namespace moved"
        );
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
