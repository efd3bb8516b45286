//! The behaviour scenarios of `SCENARIOS.md` that `caching-core` answers on its own, on every
//! backend: a query's own flush list (21), manual caching with `cached` and `cached_with`
//! (23, 24, 25), prefixes (28) and timeouts (29). The Diesel suites cover the same scenarios
//! through the adapter.

use std::sync::Arc;
use std::time::Duration;

use caching_core::{
    Backend, Cache, Expiry, FillOutcome, FlushTarget, Invalidation, KeySpace, ObjectKey,
    Registrations, Timeout,
};
use caching_tests::{
    each_backend, each_cache, fill_query, is_hit, list_tokens, memcached_expiry,
    memcached_server_of, memcached_servers, memcached_ttl, memcached_url, query_key, unique_prefix,
    unix_time, QueryFlushTarget, RecordingBackend,
};

const DAY: u64 = 24 * 3600;

fn invalidate_object(cache: &Cache, object: &ObjectKey) {
    let mut inv = Invalidation::new();
    inv.object(object.clone());
    cache.invalidate(&inv).unwrap();
}

/// `cached` with a counter of how often the function ran.
fn cached_counting(
    cache: &Cache,
    key: &str,
    timeout: Timeout,
    calls: &mut u32,
    value: &str,
) -> String {
    cache.cached(key, timeout, || {
        *calls += 1;
        value.to_string()
    })
}

/// The remaining lifetime memcached reports for `key`, when the cache is on `MEMCACHED_URL`.
fn memcached_remaining(key: &str) -> Option<i64> {
    let url = memcached_url("ttl probe").expect("memcached runs only with MEMCACHED_URL");
    memcached_ttl(&memcached_server_of(&url, key), key).unwrap()
}

/// The remaining lifetime the server of backend `name` (`memcached` or `redis`) reports for
/// `key`, in seconds: `-1` for no expiry, `None` when missing.
fn remaining(name: &str, key: &str) -> Option<i64> {
    match name {
        "memcached" => memcached_remaining(key),
        #[cfg(feature = "redis")]
        "redis" => {
            let url =
                caching_tests::redis_url("ttl probe").expect("redis runs only with REDIS_URL");
            caching_tests::redis_ttl(&url, key)
        }
        other => panic!("no server to ask for the lifetime of {key} on {other}"),
    }
}

#[test]
fn scenario_21_a_query_flush_list_carries_extra_keys() {
    for (name, cache) in each_cache("scenario_21_a_query_flush_list_carries_extra_keys", |b| b) {
        let ks = cache.keys();
        let (addon1, addon2) = (
            ObjectKey::new("addons", &["1"]),
            ObjectKey::new("addons", &["2"]),
        );
        // `addons where val = 42` returned rows 1 and 2: registered on both.
        let q = query_key(&cache, "addons where val = 42");
        let mut regs = Registrations::new();
        regs.row(ks, &addon1, &q);
        regs.row(ks, &addon2, &q);
        assert_eq!(
            fill_query(&cache, &q, &["addons"], b"[1,2]", &regs),
            FillOutcome::Stored,
            "{name}"
        );
        // A value tied to the query (`cached_with` on the query): on the query's own list.
        let target = QueryFlushTarget::new(&q, &["addons"]);
        let query_list = target.flush_key(ks).expect("a query has a flush list");
        let mut calls = 0;
        let fragment = |calls: &mut u32| -> String {
            cache.cached_with(&target, "fragment", Timeout::Forever, || {
                *calls += 1;
                format!("rendered {calls}")
            })
        };
        assert_eq!(fragment(&mut calls), "rendered 1", "{name}");
        assert_eq!(
            fragment(&mut calls),
            "rendered 1",
            "{name}: served from the cache"
        );
        assert_eq!(
            list_tokens(&cache, &query_list).len(),
            1,
            "{name}: the extra key is on the query's list"
        );

        // Saving row 2 removes the query, its flush list's content, and the extra key.
        invalidate_object(&cache, &addon2);
        assert_eq!(cache.backend().get(&q).unwrap(), None, "{name}");
        assert!(
            list_tokens(&cache, &query_list).is_empty(),
            "{name}: the query's list is cleared"
        );
        assert_eq!(
            fragment(&mut calls),
            "rendered 2",
            "{name}: the extra key was deleted"
        );
        assert_eq!(calls, 2, "{name}");
    }
}

#[test]
fn scenario_23_cached_calls_function_once() {
    for (name, cache) in each_cache("scenario_23_cached_calls_function_once", |b| b) {
        let mut calls = 0;
        let first = cached_counting(&cache, "answer", Timeout::Forever, &mut calls, "42");
        let second = cached_counting(&cache, "answer", Timeout::Forever, &mut calls, "other");
        assert_eq!(
            (first.as_str(), second.as_str(), calls),
            ("42", "42", 1),
            "{name}"
        );
        // Another key is another value.
        let mut other_calls = 0;
        let other = cached_counting(&cache, "question", Timeout::Forever, &mut other_calls, "?");
        assert_eq!((other.as_str(), other_calls), ("?", 1), "{name}");
        // Until the key is deleted.
        cache.delete_manual("answer").unwrap();
        let third = cached_counting(&cache, "answer", Timeout::Forever, &mut calls, "43");
        let fourth = cached_counting(&cache, "answer", Timeout::Forever, &mut calls, "44");
        assert_eq!(
            (third.as_str(), fourth.as_str(), calls),
            ("43", "43", 2),
            "{name}"
        );
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.fills), (2, 3, 3), "{name}: {s:?}");
    }
}

#[test]
fn scenario_23_cached_value_lives_until_its_timeout() {
    let one_second = Timeout::After(Duration::from_secs(1));
    let caches = each_cache("scenario_23_cached_value_lives_until_its_timeout", |b| {
        b.default_timeout(one_second)
    });
    let mut calls = vec![0u32; caches.len()];
    for ((name, cache), calls) in caches.iter().zip(&mut calls) {
        assert_eq!(
            cached_counting(cache, "short", one_second, calls, "a"),
            "a",
            "{name}"
        );
        assert_eq!(
            cached_counting(cache, "short", one_second, calls, "b"),
            "a",
            "{name}"
        );
        // Timeout::Default takes the configured default (1 s here); Forever stays.
        assert_eq!(
            cached_counting(cache, "default", Timeout::Default, calls, "c"),
            "c",
            "{name}"
        );
        assert_eq!(
            cached_counting(cache, "forever", Timeout::Forever, calls, "d"),
            "d",
            "{name}"
        );
        assert_eq!(*calls, 3, "{name}");
    }
    std::thread::sleep(Duration::from_millis(2100));
    for ((name, cache), calls) in caches.iter().zip(&mut calls) {
        assert_eq!(
            cached_counting(cache, "short", one_second, calls, "e"),
            "e",
            "{name}: timed out"
        );
        assert_eq!(
            cached_counting(cache, "default", Timeout::Default, calls, "f"),
            "f",
            "{name}: timed out"
        );
        assert_eq!(
            cached_counting(cache, "forever", Timeout::Forever, calls, "g"),
            "d",
            "{name}: still cached"
        );
        assert_eq!(*calls, 5, "{name}");
    }
}

#[test]
fn scenario_24_cached_with_is_invalidated_with_its_object() {
    for (name, cache) in each_cache(
        "scenario_24_cached_with_is_invalidated_with_its_object",
        |b| b,
    ) {
        let (u1, u2) = (
            ObjectKey::new("users", &["1"]),
            ObjectKey::new("users", &["2"]),
        );
        let mut calls: Vec<String> = Vec::new();
        let mut score = |user: &ObjectKey, key: &str| -> String {
            cache.cached_with(user, key, Timeout::Forever, || {
                let v = format!("{key} of {user} #{}", calls.len());
                calls.push(v.clone());
                v
            })
        };
        let a = score(&u1, "score");
        assert_eq!(score(&u1, "score"), a, "{name}: served from the cache");
        let b = score(&u2, "score");
        assert_ne!(a, b, "{name}: each object has its own value");
        let c = score(&u1, "rank");
        assert_ne!(a, c, "{name}: each key has its own value");
        // Saving user 1 makes its values run again; user 2's stays.
        invalidate_object(&cache, &u1);
        let a2 = score(&u1, "score");
        assert_ne!(a2, a, "{name}: recomputed after the object was saved");
        assert_ne!(score(&u1, "rank"), c, "{name}");
        assert_eq!(
            score(&u2, "score"),
            b,
            "{name}: another object's value survives"
        );
        assert_eq!(score(&u1, "score"), a2, "{name}: cached again");
        assert_eq!(calls.len(), 5, "{name}: {calls:?}");
        // A whole-table invalidation (a write outside the library) reaches it too.
        cache.invalidate_table("users").unwrap();
        let after: String = cache.cached_with(&u2, "score", Timeout::Forever, || "new".to_string());
        assert_eq!(after, "new", "{name}");
    }
}

/// A target without a cache key (an unsaved object, a query that is not cacheable).
struct NoKey;

impl FlushTarget for NoKey {
    fn flush_key(&self, _keys: &KeySpace) -> Option<String> {
        None
    }
    fn tables(&self) -> Vec<String> {
        vec!["users".to_string()]
    }
}

#[test]
fn scenario_25_cached_with_without_a_cache_key_just_calls_the_function() {
    for (name, backend) in
        each_backend("scenario_25_cached_with_without_a_cache_key_just_calls_the_function")
    {
        let recording = Arc::new(RecordingBackend::new(backend));
        let cache = Cache::builder()
            .shared_backend(recording.clone())
            .prefix(unique_prefix("scenario_25"))
            .build()
            .unwrap();
        let mut calls = 0;
        for i in 0..2 {
            let v: u32 = cache.cached_with(&NoKey, "k", Timeout::Forever, || {
                calls += 1;
                i
            });
            assert_eq!(v, i, "{name}");
            let none: Option<ObjectKey> = None;
            let w: u32 = cache.cached_with(&none, "k", Timeout::Forever, || {
                calls += 1;
                i + 10
            });
            assert_eq!(w, i + 10, "{name}");
        }
        assert_eq!(calls, 4, "{name}: the function runs every time");
        assert!(
            recording.keys().is_empty(),
            "{name}: the backend was used: {:?}",
            recording.keys()
        );
        assert_eq!(cache.stats(), Default::default(), "{name}");
        // With a key the same call does reach the backend (the recording works).
        let some = Some(ObjectKey::new("users", &["1"]));
        let _: u32 = cache.cached_with(&some, "k", Timeout::Forever, || 1);
        assert!(!recording.keys().is_empty(), "{name}");
    }
}

/// Runs every kind of operation through `cache`.
fn exercise(cache: &Cache) {
    let user = ObjectKey::new("users", &["1"]);
    let addon = ObjectKey::new("addons", &["1"]);
    let _: String = cache.cached("manual", Timeout::Forever, || "m".into());
    let _: String = cache.cached("x\r\nflush_all\r\n", Timeout::Forever, || "m".into());
    let _: String = cache.cached_with(&user, "v", Timeout::Forever, || "v".into());
    let q = query_key(cache, "q");
    let mut regs = Registrations::new();
    regs.row(cache.keys(), &addon, &q);
    regs.link(cache.keys(), &addon, &user);
    assert_eq!(
        fill_query(cache, &q, &["addons", "users"], b"rows", &regs),
        FillOutcome::Stored
    );
    let target = QueryFlushTarget::new(&q, &["addons"]);
    let _: String = cache.cached_with(&target, "fragment", Timeout::Forever, || "f".into());
    let mut inv = Invalidation::new();
    inv.object(user).object(addon).whole_table("addons");
    cache.invalidate(&inv).unwrap();
    cache.invalidate_table("users").unwrap();
    cache.invalidate_everything().unwrap();
    cache.delete_manual("manual").unwrap();
}

#[test]
fn scenario_28_the_prefix_is_applied_to_every_key() {
    for (name, backend) in each_backend("scenario_28_the_prefix_is_applied_to_every_key") {
        let recording = Arc::new(RecordingBackend::new(backend));
        let cache = Cache::builder()
            .shared_backend(recording.clone())
            .prefix(unique_prefix("scenario_28"))
            .build()
            .unwrap();
        let prefix = cache.keys().prefix().to_string();
        assert!(prefix.ends_with(':'), "{prefix}");
        exercise(&cache);
        let keys = recording.keys();
        assert!(keys.len() > 20, "{name}: only {} keys recorded", keys.len());
        let stray: Vec<&String> = keys.iter().filter(|k| !k.starts_with(&prefix)).collect();
        assert!(
            stray.is_empty(),
            "{name}: keys without the prefix {prefix}: {stray:?}"
        );
        assert!(
            keys.iter().all(|k| caching_core::key::is_valid_key(k)),
            "{name}"
        );
    }
}

/// Checks that caches `a` and `b` (different prefixes, one server) do not see each other.
fn assert_isolated(name: &str, a: &Cache, b: &Cache) {
    assert!(!a.same_cache(b), "{name}");
    let user = ObjectKey::new("users", &["1"]);
    let (mut calls_a, mut calls_b) = (0, 0);
    assert_eq!(
        cached_counting(a, "k", Timeout::Forever, &mut calls_a, "from a"),
        "from a",
        "{name}"
    );
    assert_eq!(
        cached_counting(b, "k", Timeout::Forever, &mut calls_b, "from b"),
        "from b",
        "{name}"
    );
    assert_eq!(
        cached_counting(a, "k", Timeout::Forever, &mut calls_a, "x"),
        "from a",
        "{name}"
    );
    assert_eq!(
        cached_counting(b, "k", Timeout::Forever, &mut calls_b, "x"),
        "from b",
        "{name}"
    );
    assert_eq!((calls_a, calls_b), (1, 1), "{name}");
    let va: String = a.cached_with(&user, "v", Timeout::Forever, || "a1".into());
    let vb: String = b.cached_with(&user, "v", Timeout::Forever, || "b1".into());
    assert_eq!((va.as_str(), vb.as_str()), ("a1", "b1"), "{name}");
    let qa = query_key(a, "same query");
    let qb = query_key(b, "same query");
    assert_ne!(qa, qb, "{name}: query keys carry the prefix");
    for (cache, q) in [(a, &qa), (b, &qb)] {
        let mut regs = Registrations::new();
        regs.row(cache.keys(), &user, q);
        assert_eq!(
            fill_query(cache, q, &["users"], b"rows", &regs),
            FillOutcome::Stored,
            "{name}"
        );
    }
    // Saving the row through `a` invalidates `a`'s entries only.
    invalidate_object(a, &user);
    assert!(!is_hit(a, &qa, &["users"]), "{name}");
    assert!(
        is_hit(b, &qb, &["users"]),
        "{name}: another prefix's query survives a row write"
    );
    let vb2: String = b.cached_with(&user, "v", Timeout::Forever, || "b2".into());
    assert_eq!(vb2, "b1", "{name}");
    let va2: String = a.cached_with(&user, "v", Timeout::Forever, || "a2".into());
    assert_eq!(va2, "a2", "{name}");
    // invalidate_everything on `a` (no flush_all) leaves `b` whole.
    a.invalidate_everything().unwrap();
    assert_eq!(
        cached_counting(a, "k", Timeout::Forever, &mut calls_a, "a again"),
        "a again",
        "{name}"
    );
    assert_eq!(
        cached_counting(b, "k", Timeout::Forever, &mut calls_b, "x"),
        "from b",
        "{name}"
    );
    let vb3: String = b.cached_with(&user, "v", Timeout::Forever, || "b3".into());
    assert_eq!(vb3, "b1", "{name}");
    assert!(is_hit(b, &qb, &["users"]), "{name}");
    assert_eq!((calls_a, calls_b), (2, 1), "{name}");
}

#[test]
fn scenario_28_two_prefixes_on_one_server_do_not_see_each_other() {
    for (name, backend) in
        each_backend("scenario_28_two_prefixes_on_one_server_do_not_see_each_other")
    {
        let build = |p: &str| {
            Cache::builder()
                .shared_backend(backend.clone())
                .prefix(unique_prefix(p))
                .build()
                .unwrap()
        };
        assert_isolated(name, &build("s28-a"), &build("s28-b"));
    }
    // Two independent clients from URLs, as two applications would have.
    if let Some(url) =
        memcached_url("scenario_28_two_prefixes_on_one_server_do_not_see_each_other (from_url)")
    {
        let hosts = memcached_servers(&url).join(",");
        let from_url = |p: &str| {
            Cache::from_url(&format!("memcached://{hosts}?prefix={}", unique_prefix(p))).unwrap()
        };
        assert_isolated(
            "memcached from_url",
            &from_url("s28-url-a"),
            &from_url("s28-url-b"),
        );
    }
    #[cfg(feature = "redis")]
    if let Some(url) = caching_tests::redis_url(
        "scenario_28_two_prefixes_on_one_server_do_not_see_each_other (redis from_url)",
    ) {
        let server = url.split_once('?').map_or(url.as_str(), |(s, _)| s);
        let from_url = |p: &str| {
            let cache = Cache::from_url(&format!("{server}?prefix={}", unique_prefix(p))).unwrap();
            assert_eq!(cache.backend().name(), "redis");
            cache
        };
        assert_isolated(
            "redis from_url",
            &from_url("s28-url-a"),
            &from_url("s28-url-b"),
        );
    }
}

#[test]
fn scenario_29_forever_is_no_expiry_and_long_timeouts_work() {
    let forty_days = Timeout::After(Duration::from_secs(40 * DAY));
    for (name, cache) in each_cache(
        "scenario_29_forever_is_no_expiry_and_long_timeouts_work",
        |b| b,
    ) {
        assert_eq!(cache.expiry(Timeout::Forever), Expiry::Forever, "{name}");
        assert_eq!(
            cache.expiry(Timeout::Default),
            Expiry::Forever,
            "{name}: the default default"
        );
        assert_eq!(
            cache.expiry(forty_days),
            Expiry::Seconds(40 * DAY),
            "{name}"
        );
        let mut calls = 0;
        let stored = unix_time();
        for _ in 0..2 {
            cached_counting(&cache, "forever", Timeout::Forever, &mut calls, "f");
            cached_counting(&cache, "forty days", forty_days, &mut calls, "d");
        }
        let stored_by = unix_time();
        assert_eq!(
            calls, 2,
            "{name}: both served from the cache on the second call"
        );
        if name == "memcached" {
            let ks = cache.keys();
            assert_eq!(
                memcached_remaining(&ks.manual_key("forever")),
                Some(-1),
                "exptime 0"
            );
            // Sent as a unix time from our wall clock; memcached's clock may lag it, so
            // compare the expiry instant (where the lag cancels) with the store's time + 40
            // days. The server's two readings may be a tick apart.
            let key = ks.manual_key("forty days");
            let url = memcached_url("ttl probe").expect("memcached runs only with MEMCACHED_URL");
            let e = memcached_expiry(&memcached_server_of(&url, &key), &key)
                .unwrap()
                .expect("40-day value is gone");
            let want = (40 * DAY) as i64;
            let at = e.expires_at();
            assert!(
                at.is_some_and(|at| (stored + want..=stored_by + want + 1).contains(&at)),
                "expires at {at:?} (remaining {} s by the server's clock, which is {} s behind \
                 the wall clock); expected 40 days after the store, at {}..={}",
                e.ttl,
                e.clock_lag(),
                stored + want,
                stored_by + want
            );
        }
        if name == "redis" {
            // Redis takes the lifetime as relative seconds, whatever its length.
            let ks = cache.keys();
            assert_eq!(
                remaining(name, &ks.manual_key("forever")),
                Some(-1),
                "no TTL"
            );
            let ttl = remaining(name, &ks.manual_key("forty days")).expect("40-day value is gone");
            let want = (40 * DAY) as i64;
            assert!(
                (want - 5..=want).contains(&ttl),
                "remaining {ttl} s, expected 40 days"
            );
        }
    }
}

#[test]
fn scenario_29_max_timeout_caps_forever() {
    let capped = |b: caching_core::CacheBuilder| b.max_timeout(Some(Duration::from_secs(1)));
    let caches = each_cache("scenario_29_max_timeout_caps_forever", capped);
    let uncapped = each_cache("scenario_29_max_timeout_caps_forever (uncapped)", |b| b);
    let user = ObjectKey::new("users", &["1"]);
    let forty_days = Timeout::After(Duration::from_secs(40 * DAY));
    let mut calls = vec![0u32; caches.len()];
    for (((name, cache), (_, free)), calls) in caches.iter().zip(&uncapped).zip(&mut calls) {
        assert_eq!(cache.expiry(Timeout::Forever), Expiry::Seconds(1), "{name}");
        assert_eq!(cache.expiry(forty_days), Expiry::Seconds(1), "{name}");
        assert_eq!(free.expiry(Timeout::Forever), Expiry::Forever, "{name}");
        for _ in 0..2 {
            cached_counting(cache, "forever", Timeout::Forever, calls, "f");
            cached_counting(cache, "long", forty_days, calls, "l");
            cache.cached_with(&user, "tied", Timeout::Forever, || {
                *calls += 1;
                1u8
            });
            cached_counting(free, "forever", Timeout::Forever, calls, "free");
        }
        assert_eq!(
            *calls, 4,
            "{name}: all served from the cache before the cap"
        );
        if *name != "locmem" {
            for key in [
                cache.keys().manual_key("forever"),
                cache.keys().manual_key("long"),
            ] {
                let ttl = remaining(name, &key).expect("gone already");
                assert!(
                    (0..=1).contains(&ttl),
                    "{key}: remaining {ttl} s, expected the 1 s cap"
                );
            }
        }
    }
    std::thread::sleep(Duration::from_millis(2100));
    for (((name, cache), (_, free)), calls) in caches.iter().zip(&uncapped).zip(&mut calls) {
        assert_eq!(
            cached_counting(cache, "forever", Timeout::Forever, calls, "f2"),
            "f2",
            "{name}: capped"
        );
        assert_eq!(
            cached_counting(cache, "long", forty_days, calls, "l2"),
            "l2",
            "{name}: capped"
        );
        let tied: u8 = cache.cached_with(&user, "tied", Timeout::Forever, || {
            *calls += 1;
            2u8
        });
        assert_eq!(tied, 2, "{name}: capped");
        assert_eq!(
            cached_counting(free, "forever", Timeout::Forever, calls, "x"),
            "free",
            "{name}: without a cap forever stays"
        );
        assert_eq!(*calls, 7, "{name}");
    }
}

#[test]
fn scenario_29_timeouts_reach_the_backend_as_given() {
    // A backend-level view of the same rules: what a fill hands the backend.
    for (name, cache) in each_cache("scenario_29_timeouts_reach_the_backend_as_given", |b| b) {
        let b: &dyn Backend = cache.backend();
        let q = query_key(&cache, "q");
        let lookup = cache.lookup(&q, &["users"]).unwrap();
        let expiry = cache.expiry(Timeout::After(Duration::from_secs(40 * DAY)));
        let out = cache
            .fill(&lookup.token, b"rows", &Registrations::new(), expiry)
            .unwrap();
        assert_eq!(out, FillOutcome::Stored, "{name}");
        assert!(
            b.get(&q).unwrap().is_some(),
            "{name}: a 40-day entry is readable at once"
        );
        if name != "locmem" {
            let ttl = remaining(name, &q).expect("gone");
            assert!(ttl > (30 * DAY) as i64, "{name}: remaining {ttl} s");
        }
    }
}
