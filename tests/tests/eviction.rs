//! Eviction of a flush list (DESIGN "Consistency" 5). By default an entry whose flush list was
//! evicted is not found by the next write: it stays stale until it expires (the documented
//! exposure, shown here). In eviction-safe mode every list carries an epoch, entries record the
//! epochs of their lists, and a hit whose list vanished or was re-created misses instead.
//! Eviction is simulated by deleting the list, which is what memcached's LRU does to it.

use caching_diesel::prelude::*;
use caching_diesel::{ObjectKey, PredicateValue};
use caching_tests::db::schema::users;
use caching_tests::db::{BackendKind, Env, User};

fn env(test: &str, kind: BackendKind, safe: bool) -> Option<Env<SqliteConnection>> {
    Env::configured(test, kind, |b| b.eviction_safe(safe))
}

fn find(e: &mut Env<SqliteConnection>) -> User {
    users::table.find(1).cached().first(&mut e.conn).unwrap()
}

/// Evicts the lists `users.find(1)` is registered on: the row's flush list and the
/// predicate list of its condition `users.id = 1`.
fn evict_user_list(e: &Env<SqliteConnection>) {
    let keys = e.cache.keys();
    for list in [
        keys.flush_key(&ObjectKey::new("users", &["1"])),
        keys.predicate_key("users", "id", &PredicateValue::Int(1)),
    ] {
        assert!(
            e.cache.backend().get(&list).unwrap().is_some(),
            "the fill registered on {list}"
        );
        e.cache.backend().delete(&list).unwrap();
    }
}

fn rename(e: &mut Env<SqliteConnection>, name: &str) {
    let _: User = e
        .conn
        .save_changes(&User {
            id: 1,
            name: name.into(),
        })
        .unwrap();
}

fn each_kind(test: &str, body: impl Fn(&str, BackendKind)) {
    body(&format!("{test}_locmem"), BackendKind::LocMem);
    body(&format!("{test}_memcached"), BackendKind::Memcached);
    #[cfg(feature = "redis")]
    body(&format!("{test}_redis"), BackendKind::Redis);
}

#[test]
fn default_mode_exposure_an_evicted_list_leaves_a_stale_entry() {
    each_kind("evict_default", |test, kind| {
        let Some(mut e) = env(test, kind, false) else {
            return;
        };
        find(&mut e);
        evict_user_list(&e);
        rename(&mut e, "renamed");
        e.queries();
        assert_eq!(
            find(&mut e).name,
            "fliggy",
            "documented exposure: the write could not find the entry"
        );
        assert_eq!(e.queries(), 0);
    });
}

#[test]
fn eviction_safe_mode_misses_when_a_list_was_evicted() {
    each_kind("evict_safe", |test, kind| {
        let Some(mut e) = env(test, kind, true) else {
            return;
        };
        find(&mut e);
        e.queries();
        find(&mut e);
        assert_eq!(e.queries(), 0, "hits still work in eviction-safe mode");
        evict_user_list(&e);
        rename(&mut e, "renamed");
        e.queries();
        assert_eq!(find(&mut e).name, "renamed");
        assert!(e.queries() > 0, "the entry's list vanished: it must miss");
    });
}

#[test]
fn eviction_safe_mode_detects_a_re_created_list() {
    each_kind("evict_recreated", |test, kind| {
        let Some(mut e) = env(test, kind, true) else {
            return;
        };
        find(&mut e);
        evict_user_list(&e);
        // Another query on the same row re-creates the list (with a new epoch).
        let _: Vec<User> = users::table
            .order(users::id)
            .cached()
            .load(&mut e.conn)
            .unwrap();
        rename(&mut e, "renamed");
        e.queries();
        assert_eq!(find(&mut e).name, "renamed");
        assert!(e.queries() > 0);
    });
}

#[test]
fn eviction_safe_mode_survives_writes_that_clear_lists() {
    each_kind("evict_clear", |test, kind| {
        let Some(mut e) = env(test, kind, true) else {
            return;
        };
        find(&mut e);
        rename(&mut e, "one");
        assert_eq!(find(&mut e).name, "one");
        e.queries();
        assert_eq!(find(&mut e).name, "one");
        assert_eq!(
            e.queries(),
            0,
            "a cleared list keeps its epoch, so refills hit"
        );
        rename(&mut e, "two");
        e.queries();
        assert_eq!(find(&mut e).name, "two");
        assert!(e.queries() > 0);
    });
}

/// An eviction-safe hit reads the entry's flush lists with the entry, in one round trip, once
/// the cache has seen the entry (its fill, or one earlier hit); a cache that has not (another
/// process) pays a second round trip once. Either way an evicted list makes it miss.
#[test]
fn eviction_safe_hits_take_one_round_trip_once_the_entry_is_known() {
    use caching_core::Backend;
    use caching_diesel::{Cache, CacheSet, CachedConnection};
    use caching_tests::{each_backend, unique_prefix, RecordingBackend};
    use std::sync::Arc;
    let test = "eviction_safe_one_round_trip";
    for (name, backend) in each_backend(test) {
        let recording = Arc::new(RecordingBackend::new(backend));
        let prefix = unique_prefix(test);
        let cache = |r: &Arc<RecordingBackend>| {
            Cache::builder()
                .shared_backend(r.clone())
                .prefix(prefix.clone())
                .eviction_safe(true)
                .build()
                .unwrap()
        };
        let (a, b) = (cache(&recording), cache(&recording));
        let db = caching_tests::db::SqliteFile::new(&format!("{test}_{name}"));
        let mut conn_a = CachedConnection::with_caches(db.connect(), CacheSet::new(a.clone()));
        let mut conn_b = CachedConnection::with_caches(db.connect(), CacheSet::new(b.clone()));
        let find = |c: &mut CachedConnection<SqliteConnection>| -> (User, usize) {
            let before = recording.round_trips();
            let (u, outcome) = users::table
                .find(1)
                .cached()
                .load_with_outcome::<User>(c)
                .unwrap();
            assert_eq!(u.len(), 1, "{name}");
            let _ = outcome;
            (u[0].clone(), recording.round_trips() - before)
        };
        find(&mut conn_a); // the fill
        assert_eq!(a.stats().fills, 1, "{name}");
        assert_eq!(find(&mut conn_a).1, 1, "{name}: a hit after our own fill");
        assert_eq!(find(&mut conn_b).1, 2, "{name}: first hit in another cache");
        assert_eq!(
            find(&mut conn_b).1,
            1,
            "{name}: then one round trip there too"
        );
        assert_eq!(a.stats().hits + b.stats().hits, 3, "{name}");
        // An evicted list still makes the one-round-trip hit miss.
        let list = a.keys().flush_key(&ObjectKey::new("users", &["1"]));
        recording.delete(&list).unwrap();
        let misses = a.stats().misses;
        find(&mut conn_a);
        assert_eq!(a.stats().misses, misses + 1, "{name}: evicted list");
    }
}
