//! Every `Backend` operation against locmem and a real memcached, through the trait and
//! through `Cache`: multi-get, add-only stores, sets, appends, CAS, deletes, counters, expiry
//! (forever, short TTLs, TTLs over memcached's 30-day relative limit), binary values,
//! over-size values, keys that try to inject protocol commands, and a server that dies and
//! comes back.
//!
//! memcached runs when `MEMCACHED_URL` is set (the dead-server test starts its own server);
//! otherwise the memcached half reports that it skipped. Redis (feature `redis`) runs when
//! `REDIS_URL` is set, with tests of its own at the end: the eviction policy, values written
//! by another client, killed connections and a restarted server.

use std::sync::Arc;
use std::time::Duration;

use caching_core::backend::locmem::{LocMem, LocMemLimits};
use caching_core::backend::memcached::{Memcached, MemcachedOptions};
use caching_core::{
    key, AppendOutcome, Backend, Cache, CasOutcome, Error, Expiry, FillOutcome, Invalidation,
    ObjectKey, Op, Registrations, Timeout,
};
use caching_tests::{
    cached_payload, each_cache, fill_query, is_hit, memcached_expiry, memcached_server_of,
    memcached_url, query_key, test_memcached_options, unique_prefix, unix_time, MemcachedProcess,
    QueryFlushTarget,
};

const MIB: usize = 1024 * 1024;
const DAY: u64 = 24 * 3600;

/// A raw key under the cache's prefix.
fn k(cache: &Cache, name: &str) -> String {
    format!("{}{name}", cache.keys().prefix())
}

fn value(b: &dyn Backend, key: &str) -> Option<Vec<u8>> {
    b.get(key)
        .unwrap_or_else(|e| panic!("get {key}: {e}"))
        .map(|i| i.value)
}

#[test]
fn get_multi_returns_present_keys_and_omits_missing_ones() {
    for (name, cache) in each_cache(
        "get_multi_returns_present_keys_and_omits_missing_ones",
        |b| b,
    ) {
        let b = cache.backend();
        let (a, c, missing) = (k(&cache, "a"), k(&cache, "c"), k(&cache, "missing"));
        b.set(&a, b"1", Expiry::Forever).unwrap();
        b.set(&c, b"3", Expiry::Forever).unwrap();
        let got = b.get_multi(&[&a, &missing, &c]).unwrap();
        assert_eq!(got.len(), 2, "{name}: {got:?}");
        assert_eq!(got[&a].value, b"1", "{name}");
        assert_eq!(got[&c].value, b"3", "{name}");
        assert!(!got.contains_key(&missing), "{name}");
        assert!(b.get_multi(&[&missing]).unwrap().is_empty(), "{name}");
        assert!(b.get_multi(&[]).unwrap().is_empty(), "{name}");
        assert_eq!(b.get(&missing).unwrap(), None, "{name}");

        // More keys than one `gets` line carries, every other one present.
        let keys: Vec<String> = (0..250).map(|i| k(&cache, &format!("many{i}"))).collect();
        let present: Vec<(&str, Vec<u8>)> = keys
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(i, key)| (key.as_str(), format!("v{i}").into_bytes()))
            .collect();
        let items: Vec<(&str, &[u8])> = present.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        b.set_multi(&items, Expiry::Forever).unwrap();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let got = b.get_multi(&refs).unwrap();
        assert_eq!(got.len(), 125, "{name}");
        for (i, key) in keys.iter().enumerate() {
            match got.get(key) {
                Some(item) => {
                    assert_eq!(i % 2, 0, "{name}: {key} was never set");
                    assert_eq!(item.value, format!("v{i}").into_bytes(), "{name}: {key}");
                }
                None => assert_eq!(i % 2, 1, "{name}: {key} is missing"),
            }
        }
    }
}

#[test]
fn add_stores_only_when_the_key_is_absent() {
    for (name, cache) in each_cache("add_stores_only_when_the_key_is_absent", |b| b) {
        let b = cache.backend();
        let (key, fresh) = (k(&cache, "k"), k(&cache, "fresh"));
        assert!(b.add(&key, b"first", Expiry::Forever).unwrap(), "{name}");
        assert!(!b.add(&key, b"second", Expiry::Forever).unwrap(), "{name}");
        assert_eq!(value(b, &key).unwrap(), b"first", "{name}");
        let r = b
            .add_multi(&[(&key, b"third"), (&fresh, b"new")], Expiry::Forever)
            .unwrap();
        assert_eq!(r, vec![false, true], "{name}");
        assert_eq!(value(b, &key).unwrap(), b"first", "{name}");
        assert_eq!(value(b, &fresh).unwrap(), b"new", "{name}");
        // A deleted key can be added again.
        b.delete(&key).unwrap();
        assert!(b.add(&key, b"again", Expiry::Forever).unwrap(), "{name}");
        assert_eq!(value(b, &key).unwrap(), b"again", "{name}");
    }
}

#[test]
fn set_and_set_multi_overwrite() {
    for (name, cache) in each_cache("set_and_set_multi_overwrite", |b| b) {
        let b = cache.backend();
        let (k1, k2, k3) = (k(&cache, "1"), k(&cache, "2"), k(&cache, "3"));
        b.set(&k1, b"one", Expiry::Forever).unwrap();
        b.set(&k1, b"uno", Expiry::Forever).unwrap();
        assert_eq!(value(b, &k1).unwrap(), b"uno", "{name}");
        b.set_multi(
            &[(&k1, b"eins"), (&k2, b"zwei"), (&k3, b"")],
            Expiry::Forever,
        )
        .unwrap();
        let got = b.get_multi(&[&k1, &k2, &k3]).unwrap();
        assert_eq!(got[&k1].value, b"eins", "{name}");
        assert_eq!(got[&k2].value, b"zwei", "{name}");
        assert_eq!(got[&k3].value, b"", "{name}: an empty value is a value");
        b.set_multi(&[], Expiry::Forever).unwrap();
    }
}

#[test]
fn append_extends_existing_values_and_reports_missing_ones() {
    for (name, cache) in each_cache(
        "append_extends_existing_values_and_reports_missing_ones",
        |b| b,
    ) {
        let b = cache.backend();
        let (key, missing) = (k(&cache, "list"), k(&cache, "missing"));
        b.set(&key, b"ab", Expiry::Forever).unwrap();
        let r = b.append_multi(&[(&key, b"cd"), (&missing, b"zz")]).unwrap();
        assert_eq!(
            r,
            vec![AppendOutcome::Appended, AppendOutcome::Missing],
            "{name}"
        );
        assert_eq!(value(b, &key).unwrap(), b"abcd", "{name}");
        assert_eq!(
            value(b, &missing),
            None,
            "{name}: append must not create a key"
        );
        let r = b.append_multi(&[(&key, b" e"), (&key, b" f")]).unwrap();
        assert_eq!(r, vec![AppendOutcome::Appended; 2], "{name}");
        assert_eq!(value(b, &key).unwrap(), b"abcd e f", "{name}");
    }
}

#[test]
fn append_past_the_item_size_is_too_large_not_missing() {
    // memcached answers NOT_STORED both for a missing key and for an append that would make
    // the item too large; a backend must still tell the two apart, or a full flush list
    // looks missing, its re-creation fails, and every later fill on that row is dropped.
    for (name, cache) in each_cache("append_past_the_item_size_is_too_large_not_missing", |b| b) {
        let b = cache.backend();
        let (key, missing) = (k(&cache, "full"), k(&cache, "missing"));
        b.get(&key).unwrap(); // connects, so the backend knows the server's item size
        let limit = b.max_item_size();
        let base = vec![b'a'; limit - key.len() - 64 - 4096];
        b.set(&key, &base, Expiry::Forever).unwrap();
        assert_eq!(
            value(b, &key).map(|v| v.len()),
            Some(base.len()),
            "{name}: the base value fits"
        );
        let chunk = vec![b'b'; 8192];
        let r = b.append_multi(&[(&key, &chunk), (&missing, b"x")]).unwrap();
        assert_eq!(
            r,
            vec![AppendOutcome::TooLarge, AppendOutcome::Missing],
            "{name}"
        );
        assert_eq!(
            value(b, &key).map(|v| v.len()),
            Some(base.len()),
            "{name}: unchanged"
        );
        assert_eq!(value(b, &missing), None, "{name}");
        // A small append still fits.
        assert_eq!(
            b.append_multi(&[(&key, b"zz")]).unwrap(),
            vec![AppendOutcome::Appended],
            "{name}"
        );
    }
}

#[test]
fn cas_stores_only_over_the_value_it_read() {
    for (name, cache) in each_cache("cas_stores_only_over_the_value_it_read", |b| b) {
        let b = cache.backend();
        let (key, missing) = (k(&cache, "k"), k(&cache, "missing"));
        b.set(&key, b"v1", Expiry::Forever).unwrap();
        let first = b.get(&key).unwrap().unwrap();
        assert_eq!(
            b.cas(&key, b"v2", Expiry::Forever, first.cas).unwrap(),
            CasOutcome::Stored,
            "{name}"
        );
        let second = b.get(&key).unwrap().unwrap();
        assert_eq!(second.value, b"v2", "{name}");
        assert_ne!(second.cas, first.cas, "{name}: a store changes the token");
        assert_eq!(
            b.cas(&key, b"v3", Expiry::Forever, first.cas).unwrap(),
            CasOutcome::Changed,
            "{name}: a stale token"
        );
        assert_eq!(value(b, &key).unwrap(), b"v2", "{name}");
        // Any write in between (here an append) makes the token stale.
        b.append_multi(&[(&key, b"+")]).unwrap();
        assert_eq!(
            b.cas(&key, b"v4", Expiry::Forever, second.cas).unwrap(),
            CasOutcome::Changed,
            "{name}"
        );
        assert_eq!(value(b, &key).unwrap(), b"v2+", "{name}");
        assert_eq!(
            b.cas(&missing, b"x", Expiry::Forever, second.cas).unwrap(),
            CasOutcome::Missing,
            "{name}"
        );
        assert_eq!(value(b, &missing), None, "{name}");
        b.delete(&key).unwrap();
        assert_eq!(
            b.cas(&key, b"v5", Expiry::Forever, second.cas).unwrap(),
            CasOutcome::Missing,
            "{name}: deleted since read"
        );
    }
}

#[test]
fn delete_multi_removes_keys_and_ignores_missing_ones() {
    for (name, cache) in each_cache("delete_multi_removes_keys_and_ignores_missing_ones", |b| b) {
        let b = cache.backend();
        let keys: Vec<String> = ["a", "b", "c", "d"].iter().map(|n| k(&cache, n)).collect();
        for key in &keys[..3] {
            b.set(key, b"x", Expiry::Forever).unwrap();
        }
        // keys[3] never existed.
        b.delete_multi(&[&keys[0], &keys[1], &keys[3]]).unwrap();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let got = b.get_multi(&refs).unwrap();
        assert_eq!(got.keys().collect::<Vec<_>>(), vec![&keys[2]], "{name}");
        b.delete(&keys[2]).unwrap();
        b.delete(&keys[2]).unwrap();
        b.delete_multi(&[]).unwrap();
        assert!(b.get_multi(&refs).unwrap().is_empty(), "{name}");
    }
}

#[test]
fn incr_counts_existing_counters_and_reports_missing_ones() {
    for (name, cache) in each_cache(
        "incr_counts_existing_counters_and_reports_missing_ones",
        |b| b,
    ) {
        let b = cache.backend();
        let (c, missing, top) = (k(&cache, "c"), k(&cache, "missing"), k(&cache, "top"));
        b.set(&c, b"41", Expiry::Forever).unwrap();
        assert_eq!(b.incr(&c, 1).unwrap(), Some(42), "{name}");
        assert_eq!(b.incr(&c, 10).unwrap(), Some(52), "{name}");
        assert_eq!(value(b, &c).unwrap(), b"52", "{name}");
        assert_eq!(b.incr(&missing, 1).unwrap(), None, "{name}");
        assert_eq!(
            value(b, &missing),
            None,
            "{name}: incr must not create a key"
        );
        b.set(&top, u64::MAX.to_string().as_bytes(), Expiry::Forever)
            .unwrap();
        assert_eq!(b.incr(&top, 1).unwrap(), Some(0), "{name}: wraps at 2^64");
        // memcached pads a shorter result with spaces in place; the number is what counts.
        let stored = String::from_utf8(value(b, &top).unwrap()).unwrap();
        assert_eq!(stored.trim(), "0", "{name}");
        assert_eq!(b.incr(&top, 1).unwrap(), Some(1), "{name}");
    }
}

#[test]
fn forever_stays_and_a_one_second_ttl_expires() {
    let caches = each_cache("forever_stays_and_a_one_second_ttl_expires", |b| b);
    for (name, cache) in &caches {
        let b = cache.backend();
        b.set(&k(cache, "forever"), b"f", Expiry::Forever).unwrap();
        b.set(&k(cache, "ttl"), b"t", Expiry::Seconds(1)).unwrap();
        assert!(
            b.add(&k(cache, "ttl-add"), b"t", Expiry::Seconds(1))
                .unwrap(),
            "{name}"
        );
        b.set(&k(cache, "cas"), b"c", Expiry::Forever).unwrap();
        let item = b.get(&k(cache, "cas")).unwrap().unwrap();
        assert_eq!(
            b.cas(&k(cache, "cas"), b"c2", Expiry::Seconds(1), item.cas)
                .unwrap(),
            CasOutcome::Stored,
            "{name}"
        );
        assert!(
            value(b, &k(cache, "ttl")).is_some(),
            "{name}: readable before it expires"
        );
    }
    std::thread::sleep(Duration::from_millis(2100));
    for (name, cache) in &caches {
        let b = cache.backend();
        assert_eq!(value(b, &k(cache, "forever")).unwrap(), b"f", "{name}");
        assert_eq!(value(b, &k(cache, "ttl")), None, "{name}: set with 1 s");
        assert_eq!(value(b, &k(cache, "ttl-add")), None, "{name}: add with 1 s");
        assert_eq!(value(b, &k(cache, "cas")), None, "{name}: cas with 1 s");
    }
}

#[test]
fn a_ttl_over_thirty_days_is_readable_right_after_the_set() {
    // memcached reads an exptime over 30 days as a unix time: sent as relative seconds, a
    // 40-day TTL would be a date in 1970 and the value would be gone at once.
    let forty_days = Expiry::Seconds(40 * DAY);
    for (name, cache) in each_cache(
        "a_ttl_over_thirty_days_is_readable_right_after_the_set",
        |b| b,
    ) {
        let b = cache.backend();
        let (set, add, cas) = (k(&cache, "set"), k(&cache, "add"), k(&cache, "cas"));
        let stored = unix_time();
        b.set(&set, b"s", forty_days).unwrap();
        assert!(b.add(&add, b"a", forty_days).unwrap(), "{name}");
        b.set(&cas, b"c", Expiry::Forever).unwrap();
        let item = b.get(&cas).unwrap().unwrap();
        assert_eq!(
            b.cas(&cas, b"c2", forty_days, item.cas).unwrap(),
            CasOutcome::Stored,
            "{name}"
        );
        let stored_by = unix_time();
        let got = b.get_multi(&[&set, &add, &cas]).unwrap();
        assert_eq!(got.len(), 3, "{name}: {got:?}");
        assert_eq!(got[&cas].value, b"c2", "{name}");

        if name == "memcached" {
            let url = memcached_url("ttl probe").expect("memcached runs only with MEMCACHED_URL");
            // The exptime is a unix time from our wall clock; memcached counts the remaining
            // lifetime on its own clock, which may lag ours: compare the expiry instant
            // (server's now + remaining lifetime, where the lag cancels) with the store's
            // wall-clock time + 40 days. The server's two readings may be a tick apart.
            let want = (40 * DAY) as i64;
            for key in [&set, &add, &cas] {
                let e = memcached_expiry(&memcached_server_of(&url, key), key)
                    .unwrap()
                    .unwrap_or_else(|| panic!("{key} is gone"));
                let at = e.expires_at();
                assert!(
                    at.is_some_and(|at| (stored + want..=stored_by + want + 1).contains(&at)),
                    "{key}: expires at {at:?} (remaining {} s by the server's clock, which is \
                     {} s behind the wall clock); expected 40 days after the store, at \
                     {}..={}",
                    e.ttl,
                    e.clock_lag(),
                    stored + want,
                    stored_by + want
                );
            }
        }
        #[cfg(feature = "redis")]
        if name == "redis" {
            // Redis takes the lifetime as relative seconds: 40 days, not a date.
            let url =
                caching_tests::redis_url("ttl probe").expect("redis runs only with REDIS_URL");
            let want = (40 * DAY) as i64;
            for key in [&set, &add, &cas] {
                let ttl =
                    caching_tests::redis_ttl(&url, key).unwrap_or_else(|| panic!("{key} is gone"));
                assert!(
                    (want - 5..=want).contains(&ttl),
                    "{key}: remaining {ttl} s, expected 40 days"
                );
            }
        }
    }
}

/// Every byte value, then protocol-looking text with CR/LF, then every byte value backwards.
fn binary_value() -> Vec<u8> {
    let mut v: Vec<u8> = (0..=255u8).collect();
    v.extend_from_slice(b"\r\nEND\r\nVALUE x 0 1 1\r\nSTORED\r\n\r\n");
    v.extend((0..=255u8).rev());
    v.extend_from_slice(b"\r\n");
    v
}

#[test]
fn values_are_binary_safe() {
    let v = binary_value();
    for (name, cache) in each_cache("values_are_binary_safe", |b| b) {
        let b = cache.backend();
        let (set, add, app, cas) = (
            k(&cache, "set"),
            k(&cache, "add"),
            k(&cache, "app"),
            k(&cache, "cas"),
        );
        b.set(&set, &v, Expiry::Forever).unwrap();
        assert!(b.add(&add, &v, Expiry::Forever).unwrap(), "{name}");
        b.set(&app, &v[..100], Expiry::Forever).unwrap();
        assert_eq!(
            b.append_multi(&[(&app, &v[100..])]).unwrap(),
            vec![AppendOutcome::Appended],
            "{name}"
        );
        b.set(&cas, b"x", Expiry::Forever).unwrap();
        let item = b.get(&cas).unwrap().unwrap();
        assert_eq!(
            b.cas(&cas, &v, Expiry::Forever, item.cas).unwrap(),
            CasOutcome::Stored,
            "{name}"
        );
        let got = b.get_multi(&[&set, &add, &app, &cas]).unwrap();
        for key in [&set, &add, &app, &cas] {
            assert_eq!(got[key].value, v, "{name}: {key}");
        }

        // Through the cache: a payload stored by a fill comes back byte for byte.
        let q = query_key(&cache, "binary");
        assert_eq!(
            fill_query(&cache, &q, &["t"], &v, &Registrations::new()),
            FillOutcome::Stored,
            "{name}"
        );
        assert_eq!(
            cached_payload(&cache, &q, &["t"]),
            Some(v.clone()),
            "{name}"
        );
        // And through manual caching (a serde value holding every byte and CR/LF text).
        let text = "line\r\nflush_all\r\nEND\r\n\u{0}\u{7f}é".to_string();
        let mut calls = 0;
        for _ in 0..2 {
            let got: (Vec<u8>, String) = cache.cached("bytes", Timeout::Forever, || {
                calls += 1;
                (v.clone(), text.clone())
            });
            assert_eq!(got, (v.clone(), text.clone()), "{name}");
        }
        assert_eq!(calls, 1, "{name}: second call must come from the cache");
    }
}

#[test]
fn an_over_size_value_is_not_stored_and_is_not_an_error() {
    let big = vec![b'x'; 2 * MIB];
    for (name, cache) in each_cache(
        "an_over_size_value_is_not_stored_and_is_not_an_error",
        |b| b,
    ) {
        let b = cache.backend();
        let (set, add, multi, small, app, cas) = (
            k(&cache, "set"),
            k(&cache, "add"),
            k(&cache, "multi"),
            k(&cache, "small"),
            k(&cache, "app"),
            k(&cache, "cas"),
        );
        b.set(&set, b"old", Expiry::Forever).unwrap();
        b.set(&set, &big, Expiry::Forever).unwrap();
        assert_eq!(
            value(b, &set),
            None,
            "{name}: the big set is not stored, the old value is gone"
        );
        assert!(!b.add(&add, &big, Expiry::Forever).unwrap(), "{name}");
        assert_eq!(value(b, &add), None, "{name}");
        b.set_multi(&[(&small, b"s"), (&multi, &big)], Expiry::Forever)
            .unwrap();
        assert_eq!(value(b, &small).unwrap(), b"s", "{name}");
        assert_eq!(value(b, &multi), None, "{name}");
        b.set(&app, b"a", Expiry::Forever).unwrap();
        assert_eq!(
            b.append_multi(&[(&app, &big)]).unwrap(),
            vec![AppendOutcome::TooLarge],
            "{name}"
        );
        assert_eq!(value(b, &app).unwrap(), b"a", "{name}");
        b.set(&cas, b"c", Expiry::Forever).unwrap();
        let item = b.get(&cas).unwrap().unwrap();
        assert_ne!(
            b.cas(&cas, &big, Expiry::Forever, item.cas).unwrap(),
            CasOutcome::Stored,
            "{name}"
        );
        assert_eq!(value(b, &cas).unwrap(), b"c", "{name}");

        // Through the cache: the fill reports it, the value is returned, nothing is cached.
        let q = query_key(&cache, "big");
        assert_eq!(
            fill_query(&cache, &q, &["t"], &big, &Registrations::new()),
            FillOutcome::TooLarge,
            "{name}"
        );
        assert!(!is_hit(&cache, &q, &["t"]), "{name}");
        let text = "y".repeat(2 * MIB);
        let mut calls = 0;
        for _ in 0..2 {
            let got: String = cache.cached("big", Timeout::Forever, || {
                calls += 1;
                text.clone()
            });
            assert_eq!(got.len(), text.len(), "{name}");
        }
        assert_eq!(
            calls, 2,
            "{name}: an over-size value is never served from the cache"
        );
        assert_eq!(
            cache.stats().backend_errors,
            0,
            "{name}: over-size is not an error"
        );
    }
}

const EVIL: &str = "x\r\nflush_all\r\n";

#[test]
fn keys_cannot_inject_protocol_commands() {
    for (name, cache) in each_cache("keys_cannot_inject_protocol_commands", |b| b) {
        let b = cache.backend();
        let sentinel = k(&cache, "sentinel");
        b.set(&sentinel, b"alive", Expiry::Forever).unwrap();

        // Manual keys and primary keys are user input: they are hashed, never sent raw.
        let nasty = [
            EVIL,
            "get x",
            "a b\tc",
            "",
            "ünïcödé ключ",
            "\u{0}\u{7f}",
            &"long".repeat(100),
        ];
        for n in nasty {
            let mut calls = 0;
            for _ in 0..2 {
                let v: String = cache.cached(n, Timeout::Forever, || {
                    calls += 1;
                    format!("value of {n:?}")
                });
                assert_eq!(v, format!("value of {n:?}"), "{name}");
            }
            assert_eq!(
                calls, 1,
                "{name}: manual key {n:?} must be cached like any other"
            );

            let obj = ObjectKey::new("users", &[n]);
            let mut calls = 0;
            for _ in 0..2 {
                let _: u32 = cache.cached_with(&obj, n, Timeout::Forever, || {
                    calls += 1;
                    7
                });
            }
            assert_eq!(calls, 1, "{name}: object {n:?}");
            let mut inv = Invalidation::new();
            inv.object(obj.clone());
            cache.invalidate(&inv).unwrap();
            let _: u32 = cache.cached_with(&obj, n, Timeout::Forever, || {
                calls += 1;
                7
            });
            assert_eq!(
                calls, 2,
                "{name}: invalidating object {n:?} must reach its value"
            );
        }
        // A flush target whose key is not one the key space built still gets a valid list.
        let target = QueryFlushTarget::new(EVIL, &["users"]);
        let mut calls = 0;
        for _ in 0..2 {
            let _: u32 = cache.cached_with(&target, "fragment", Timeout::Forever, || {
                calls += 1;
                7
            });
        }
        assert_eq!(calls, 1, "{name}: a value tied to query key {EVIL:?}");
        assert!(
            key::is_valid_key(&cache.keys().key_flush_key(EVIL)),
            "{name}"
        );
        assert_eq!(cache.stats().backend_errors, 0, "{name}");

        // Raw keys through the trait are refused, never sent.
        let raw_bad = [
            EVIL.to_string(),
            "has space".to_string(),
            String::new(),
            "k".repeat(251),
            "tab\tkey".to_string(),
            "del\u{7f}".to_string(),
        ];
        for bad in &raw_bad {
            let bad = bad.as_str();
            let invalid = |r: caching_core::Result<()>, op: &str| match r {
                Err(Error::InvalidKey(_)) => {}
                other => panic!("{name}: {op} with key {bad:?} gave {other:?}, not InvalidKey"),
            };
            invalid(b.set(bad, b"v", Expiry::Forever), "set");
            invalid(b.get(bad).map(|_| ()), "get");
            invalid(b.get_multi(&[&sentinel, bad]).map(|_| ()), "get_multi");
            invalid(b.add(bad, b"v", Expiry::Forever).map(|_| ()), "add");
            invalid(
                b.set_multi(&[(&sentinel, b"clobbered"), (bad, b"v")], Expiry::Forever),
                "set_multi",
            );
            invalid(b.append_multi(&[(bad, b"v")]).map(|_| ()), "append_multi");
            invalid(b.cas(bad, b"v", Expiry::Forever, 1).map(|_| ()), "cas");
            invalid(b.delete(bad), "delete");
            invalid(b.delete_multi(&[&sentinel, bad]), "delete_multi");
            invalid(b.incr(bad, 1).map(|_| ()), "incr");
        }

        // Nothing reached the server as a command: the sentinel survived, untouched by the
        // batches that carried a bad key.
        assert_eq!(value(b, &sentinel).unwrap(), b"alive", "{name}");
    }
}

#[test]
fn cache_lookup_and_fill_through_the_backend() {
    for (name, cache) in each_cache("cache_lookup_and_fill_through_the_backend", |b| b) {
        let q = query_key(&cache, "q");
        let lookup = cache.lookup(&q, &["users"]).unwrap();
        assert_eq!(lookup.hit, None, "{name}");
        assert_eq!(lookup.token.key(), q, "{name}");
        let regs = Registrations::new();
        assert_eq!(
            cache
                .fill(&lookup.token, b"rows", &regs, Expiry::Forever)
                .unwrap(),
            FillOutcome::Stored,
            "{name}"
        );
        assert_eq!(
            cached_payload(&cache, &q, &["users"]),
            Some(b"rows".to_vec()),
            "{name}"
        );
        // A second reader that missed at the same time loses the add: theirs is not stored.
        assert_eq!(
            cache
                .fill(&lookup.token, b"other", &regs, Expiry::Forever)
                .unwrap(),
            FillOutcome::AlreadyCached,
            "{name}"
        );
        assert_eq!(
            cached_payload(&cache, &q, &["users"]),
            Some(b"rows".to_vec()),
            "{name}"
        );

        // A write committed between lookup and fill: the fill removes its entry.
        let raced = query_key(&cache, "raced");
        let lookup = cache.lookup(&raced, &["users"]).unwrap();
        let mut inv = Invalidation::new();
        inv.table_written("users");
        cache.invalidate(&inv).unwrap();
        assert_eq!(
            cache
                .fill(&lookup.token, b"old rows", &regs, Expiry::Forever)
                .unwrap(),
            FillOutcome::Raced,
            "{name}"
        );
        assert_eq!(cache.backend().get(&raced).unwrap(), None, "{name}");

        // Whole-table invalidation makes the stored entry miss.
        cache.invalidate_table("users").unwrap();
        assert!(!is_hit(&cache, &q, &["users"]), "{name}");

        let s = cache.stats();
        assert_eq!(
            (s.fills, s.skipped_fills, s.backend_errors),
            (1, 2, 0),
            "{name}: {s:?}"
        );
    }
}

#[test]
fn a_dead_server_fails_calls_and_recovers_after_the_retry_window() {
    let test = "a_dead_server_fails_calls_and_recovers_after_the_retry_window";
    let Some(mut server) = MemcachedProcess::start(test) else {
        return;
    };
    let options = test_memcached_options();
    let retry_after = options.retry_after;
    assert_eq!(retry_after, Duration::from_millis(100));
    let mc: Arc<dyn Backend> = Arc::new(Memcached::new(&[server.addr()], options).unwrap());
    let cache = Cache::builder()
        .shared_backend(mc.clone())
        .prefix(unique_prefix(test))
        .build()
        .unwrap();
    let b = cache.backend();
    let key = k(&cache, "k");
    b.set(&key, b"v", Expiry::Forever).unwrap();
    assert_eq!(value(b, &key).unwrap(), b"v");
    let mut calls = 0;
    let mut manual = |n: u32| -> u32 {
        cache.cached("manual", Timeout::Forever, || {
            calls += 1;
            n
        })
    };
    assert_eq!(manual(1), 1);
    assert_eq!(manual(2), 1, "cached while the server is up");

    server.kill();
    let errors: Vec<(&str, caching_core::Result<()>)> = vec![
        ("get", b.get(&key).map(|_| ())),
        ("get_multi", b.get_multi(&[&key]).map(|_| ())),
        ("set", b.set(&key, b"w", Expiry::Forever)),
        ("add", b.add(&key, b"w", Expiry::Forever).map(|_| ())),
        ("append", b.append_multi(&[(&key, b"w")]).map(|_| ())),
        ("cas", b.cas(&key, b"w", Expiry::Forever, 1).map(|_| ())),
        ("delete", b.delete(&key)),
        ("incr", b.incr(&key, 1).map(|_| ())),
    ];
    for (op, r) in errors {
        match r {
            Err(e) => assert!(e.is_backend_failure(), "{op}: {e}"),
            Ok(()) => panic!("{op} succeeded against a dead server"),
        }
    }
    // The cache answers with the function's value; reads and invalidations report errors.
    assert_eq!(manual(3), 3);
    assert_eq!(
        manual(4),
        4,
        "nothing can be cached while the server is down"
    );
    let before = cache.stats();
    assert!(cache.lookup(&key, &["t"]).is_err());
    let mut inv = Invalidation::new();
    inv.object(ObjectKey::new("users", &["1"]));
    // The invalidation is not lost: it is queued for delivery once the server is back.
    let report = cache.invalidate(&inv).unwrap();
    assert!(report.deferred, "{report:?}");
    assert_eq!(cache.pending_invalidations(), 1);
    let after = cache.stats();
    assert!(before.backend_errors >= 2, "{before:?}");
    assert_eq!(after.failed_invalidations, 1, "{after:?}");

    server.restart();
    std::thread::sleep(retry_after * 3);
    assert!(
        cache.wait_for_delivery(Duration::from_secs(5)),
        "the queued invalidation was delivered once the server came back"
    );
    assert_eq!(cache.stats().retried_invalidations, 1);
    b.set(&key, b"again", Expiry::Forever).unwrap();
    assert_eq!(value(b, &key).unwrap(), b"again");
    // The restarted server is empty: the function runs once more, then caching resumes.
    assert_eq!(manual(5), 5);
    assert_eq!(manual(6), 5, "caching resumed after the server came back");
    assert_eq!(calls, 4);
    assert!(cache.invalidate(&inv).is_ok());
}

/// A restart between two calls costs no error and no fail-fast window: every pooled
/// connection the old process held is closed, and the first exchange on one is run again on
/// a new connection (gets, batches, storage commands and the probe alike).
#[test]
fn memcached_restart_between_calls_costs_no_error() {
    let test = "memcached_restart_between_calls";
    let Some(mut server) = MemcachedProcess::start(test) else {
        return;
    };
    let options = MemcachedOptions {
        pool_size: 4,
        ..test_memcached_options()
    };
    let b: Arc<dyn Backend> = Arc::new(Memcached::new(&[server.addr()], options).unwrap());
    let key = format!("{}k", unique_prefix(test));
    type Call<'a> = Box<dyn Fn(&dyn Backend) -> caching_core::Result<()> + 'a>;
    let mut calls: Vec<(&str, Call<'_>)> = vec![
        ("get", Box::new(|b| b.get(&key).map(|_| ()))),
        ("get_multi", Box::new(|b| b.get_multi(&[&key]).map(|_| ()))),
        ("set", Box::new(|b| b.set(&key, b"v", Expiry::Forever))),
        ("incr", Box::new(|b| b.incr(&key, 1).map(|_| ()))),
        (
            "batch",
            Box::new(|b| {
                let ops = [Op::Get(&key), Op::Delete(&key)];
                b.batch(&[&ops]).map(|_| ())
            }),
        ),
        ("probe", Box::new(|b| b.probe())),
    ];
    for (op, call) in calls.drain(..) {
        // Several pooled connections, all to the old process.
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| b.get(&key).unwrap());
            }
        });
        b.set(&key, b"old", Expiry::Forever).unwrap();
        server.restart();
        if let Err(e) = call(&*b) {
            panic!("{op} after a restart: {e}");
        }
        assert_eq!(
            b.get(&key).unwrap().map(|i| i.value),
            match op {
                "set" => Some(b"v".to_vec()),
                _ => None,
            },
            "{op}: the restarted server is empty"
        );
    }
}

#[test]
fn memcached_url_is_parsed_into_servers() {
    let servers = caching_tests::memcached_servers("memcached://a:1,b:2?prefix=x");
    assert_eq!(servers, vec!["a:1".to_string(), "b:2".to_string()]);
    assert_eq!(
        caching_tests::memcached_servers("memcached://127.0.0.1:11211"),
        vec!["127.0.0.1:11211".to_string()]
    );
}

#[test]
fn locmem_appends_keep_the_byte_count_exact() {
    // The byte bound evicts least recently used entries; a byte count that drifts on append
    // evicts live counters and flush lists long before the bound is really reached.
    let limits = LocMemLimits {
        max_bytes: 64 * 1024,
        ..LocMemLimits::default()
    };
    let b = LocMem::with_limits(limits);
    b.set("counter", b"1", Expiry::Forever).unwrap();
    b.set("list", b"", Expiry::Forever).unwrap();
    let chunk = [b'x'; 1024];
    for _ in 0..50 {
        assert_eq!(
            b.append_multi(&[("list", &chunk)]).unwrap(),
            vec![AppendOutcome::Appended]
        );
        assert_eq!(
            b.incr("counter", 1).unwrap().map(|_| ()),
            Some(()),
            "counter evicted"
        );
    }
    let list = b.get("list").unwrap().expect("list evicted").value.len();
    let counter = b.get("counter").unwrap().unwrap().value.len();
    assert_eq!(list, 50 * 1024);
    assert_eq!(b.bytes(), "list".len() + list + "counter".len() + counter);
    assert_eq!(b.len(), 2);
}

/// Redis only: what the backend does beyond the trait's common behaviour.
#[cfg(feature = "redis")]
mod redis_backend {
    use super::*;
    use caching_core::backend::redis::{EvictionPolicy, Redis, RedisOptions};
    use caching_tests::{
        redis_connection, redis_ttl, redis_url, test_redis, test_redis_options, RedisProcess,
    };

    /// `REDIS_URL` and a backend on it, or `None` (skip).
    fn server(test: &str) -> Option<(String, Redis)> {
        let url = redis_url(test)?;
        let backend = test_redis(&url);
        Some((url, backend))
    }

    fn raw_set(url: &str, key: &str, value: &[u8]) {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query(&mut redis_connection(url))
            .unwrap();
    }

    fn raw_get(url: &str, key: &str) -> Option<Vec<u8>> {
        redis::cmd("GET")
            .arg(key)
            .query(&mut redis_connection(url))
            .unwrap()
    }

    /// A batch sends scripts by hash; after `SCRIPT FLUSH` on the server (the connection
    /// stays open) the batch fails instead of running its commands out of order, and the
    /// next one works again (the scripts were loaded again).
    #[test]
    fn a_batch_after_script_flush_fails_once_then_works() {
        use caching_core::{Op, OpReply};
        // A private server: a flush on the shared one would fail other tests' batches.
        let Some(private) = RedisProcess::start("a_batch_after_script_flush_fails_once_then_works")
        else {
            return;
        };
        let url = private.url();
        let b = test_redis(&url);
        let key = "list".to_string();
        let stages: [&[Op<'_>]; 2] = [
            &[Op::Add(&key, b"", Expiry::Forever)],
            &[Op::Append(&key, b" q")],
        ];
        b.batch(&stages).unwrap();
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query(&mut redis_connection(&url))
            .unwrap();
        assert!(b.batch(&stages).is_err(), "NOSCRIPT fails the batch");
        let replies = b.batch(&stages).unwrap();
        assert_eq!(replies[1], [OpReply::Appended(AppendOutcome::Appended)]);
    }

    #[test]
    fn the_eviction_policy_is_read_from_the_server() {
        let Some((url, b)) = server("the_eviction_policy_is_read_from_the_server") else {
            return;
        };
        let reply: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query(&mut redis_connection(&url))
            .unwrap();
        let want = EvictionPolicy::parse(&reply[1]);
        // Known once the backend has connected, and asked for if not.
        assert_eq!(b.eviction_policy().unwrap(), want);
        let fresh = test_redis(&url);
        fresh.get("anything").unwrap();
        assert_eq!(fresh.eviction_policy().unwrap(), want);
        assert_eq!(
            want.evicts_keys_without_ttl(),
            want.as_str().starts_with("allkeys-"),
            "{want}"
        );
    }

    #[test]
    fn values_written_by_another_client_do_not_break_reads() {
        let test = "values_written_by_another_client_do_not_break_reads";
        let Some((url, b)) = server(test) else {
            return;
        };
        let cache = Cache::builder()
            .backend(b)
            .prefix(unique_prefix(test))
            .build()
            .unwrap();
        let b = cache.backend();
        let (short, long, empty, list, counter) = (
            k(&cache, "short"),
            k(&cache, "long"),
            k(&cache, "empty"),
            k(&cache, "list"),
            k(&cache, "counter"),
        );
        raw_set(&url, &short, b"ab");
        raw_set(&url, &long, b"no token in front of this");
        raw_set(&url, &empty, b"");
        raw_set(&url, &counter, b"12");
        let _: i64 = redis::cmd("RPUSH")
            .arg(&list)
            .arg("x")
            .query(&mut redis_connection(&url))
            .unwrap();

        // Reads never fail: a short value comes back whole, a long one loses its first 8
        // bytes (taken for a token), a key of another type reads as missing.
        let got = b
            .get_multi(&[&short, &long, &empty, &list, &counter])
            .unwrap();
        assert_eq!(got[&short].value, b"ab");
        assert_eq!(got[&long].value, b" in front of this");
        assert_eq!(got[&empty].value, b"");
        assert!(!got.contains_key(&list));
        // A foreign counter is not a number: the engine replaces it.
        assert!(matches!(b.incr(&counter, 1), Err(Error::NotANumber { .. })));
        assert!(matches!(b.incr(&short, 1), Err(Error::NotANumber { .. })));
        assert!(matches!(b.incr(&list, 1), Err(Error::NotANumber { .. })));

        // A cas over the short value works with the token read, and only with it.
        let item = got[&short].clone();
        assert_eq!(
            b.cas(&short, b"v", Expiry::Forever, item.cas ^ 1).unwrap(),
            CasOutcome::Changed
        );
        assert_eq!(
            b.cas(&short, b"v", Expiry::Forever, item.cas).unwrap(),
            CasOutcome::Stored
        );
        assert_eq!(value(b, &short).unwrap(), b"v");
        let e = got[&empty].clone();
        assert_eq!(
            b.cas(&empty, b"e", Expiry::Forever, e.cas).unwrap(),
            CasOutcome::Stored
        );
        // Appending to a foreign short value keeps its bytes and gives it a token.
        raw_set(&url, &short, b"xyz");
        let before = b.get(&short).unwrap().unwrap();
        assert_eq!(
            b.append_multi(&[(&short, b"+")]).unwrap(),
            vec![AppendOutcome::Appended]
        );
        let after = b.get(&short).unwrap().unwrap();
        assert_eq!(after.value, b"xyz+");
        assert_ne!(after.cas, before.cas);
        // A key of another type: append and cas report it missing and remove it, so an add
        // can create the value the cache needs.
        assert_eq!(
            b.append_multi(&[(&list, b"x")]).unwrap(),
            vec![AppendOutcome::Missing]
        );
        assert!(b.add(&list, b"mine", Expiry::Forever).unwrap());
        assert_eq!(value(b, &list).unwrap(), b"mine");

        // Through the cache: a query entry and counters holding foreign bytes are misses,
        // never errors, and the cache recovers (fill, then hit).
        let q = query_key(&cache, "q");
        raw_set(&url, &q, b"junk");
        raw_set(&url, &cache.keys().generation_key("users"), b"garbage!!");
        raw_set(&url, &cache.keys().version_key("users"), b"x");
        let lookup = cache.lookup(&q, &["users"]).unwrap();
        assert_eq!(lookup.hit, None);
        b.delete(&q).unwrap();
        assert_eq!(
            fill_query(&cache, &q, &["users"], b"rows", &Registrations::new()),
            FillOutcome::Stored
        );
        assert!(is_hit(&cache, &q, &["users"]));
        let mut calls = 0;
        for _ in 0..2 {
            let _: u32 = cache.cached("manual", Timeout::Forever, || {
                calls += 1;
                1
            });
        }
        assert_eq!(calls, 1);
        assert_eq!(cache.stats().backend_errors, 0, "{:?}", cache.stats());
    }

    #[test]
    fn incr_is_decimal_and_wraps_at_two_to_the_64() {
        let Some((url, b)) = server("incr_is_decimal_and_wraps_at_two_to_the_64") else {
            return;
        };
        let key = format!("{}c", unique_prefix("incr_is_decimal"));
        let cases: [(&[u8], u64, Option<u64>); 10] = [
            (b"0", 0, Some(0)),
            (b"007", 1, Some(8)),
            (b" 41 ", 1, Some(42)),
            (b"99999999999", 1, Some(100_000_000_000)),
            (b"18446744073709551614", 1, Some(u64::MAX)),
            (b"18446744073709551615", 2, Some(1)),
            (b"18446744073709551615", u64::MAX, Some(u64::MAX - 1)),
            (b"9223372036854775808", 9_223_372_036_854_775_808, Some(0)),
            (b"18446744073709551616", 1, None), // over u64::MAX: not a number
            (b"1x", 1, None),
        ];
        for (start, delta, want) in cases {
            b.set(&key, start, Expiry::Forever).unwrap();
            match (b.incr(&key, delta), want) {
                (Ok(Some(n)), Some(w)) => {
                    assert_eq!(n, w, "{start:?} + {delta}");
                    assert_eq!(value(&b, &key).unwrap(), w.to_string().into_bytes());
                }
                (Err(Error::NotANumber { .. }), None) => {}
                (other, _) => panic!("{start:?} + {delta}: {other:?}"),
            }
        }
        b.delete(&key).unwrap();
        assert_eq!(b.incr(&key, 1).unwrap(), None);
        assert_eq!(raw_get(&url, &key), None, "incr must not create a key");
    }

    #[test]
    fn append_and_incr_keep_the_ttl_and_change_the_token() {
        let Some((url, b)) = server("append_and_incr_keep_the_ttl_and_change_the_token") else {
            return;
        };
        let p = unique_prefix("keep_ttl");
        let (list, counter, forever) = (format!("{p}l"), format!("{p}c"), format!("{p}f"));
        b.set(&list, b"a", Expiry::Seconds(100)).unwrap();
        b.set(&counter, b"1", Expiry::Seconds(100)).unwrap();
        b.set(&forever, b"1", Expiry::Forever).unwrap();
        let (l0, c0) = (
            b.get(&list).unwrap().unwrap(),
            b.get(&counter).unwrap().unwrap(),
        );
        b.append_multi(&[(&list, b"b")]).unwrap();
        b.incr(&counter, 1).unwrap();
        b.incr(&forever, 1).unwrap();
        for key in [&list, &counter] {
            let ttl = redis_ttl(&url, key).expect("still there");
            assert!((95..=100).contains(&ttl), "{key}: {ttl}");
        }
        assert_eq!(redis_ttl(&url, &forever), Some(-1));
        assert_ne!(b.get(&list).unwrap().unwrap().cas, l0.cas);
        assert_ne!(b.get(&counter).unwrap().unwrap().cas, c0.cas);
        // Every value is stored as an 8-byte token and the bytes.
        let raw = raw_get(&url, &list).unwrap();
        assert_eq!(raw.len(), 8 + 2);
        assert_eq!(&raw[8..], b"ab");
        b.delete_multi(&[&list, &counter, &forever]).unwrap();
    }

    #[test]
    fn a_database_number_in_the_url_selects_the_database() {
        let Some((url, _)) = server("a_database_number_in_the_url_selects_the_database") else {
            return;
        };
        let base = url.split_once('?').map_or(url.as_str(), |(s, _)| s);
        let base = base.trim_end_matches('/');
        let Some(host) = base.strip_prefix("redis://").filter(|h| !h.contains('/')) else {
            return; // REDIS_URL names a database itself: leave it alone.
        };
        let key = format!("{}k", unique_prefix("db_number"));
        let cache = Cache::from_url(&format!("redis://{host}/1?item_size=4096")).unwrap();
        assert_eq!(cache.backend().max_item_size(), 4096);
        cache
            .backend()
            .set(&key, b"in db 1", Expiry::Forever)
            .unwrap();
        assert_eq!(raw_get(&url, &key), None, "not in db 0");
        let in_db1 = raw_get(&format!("redis://{host}/1"), &key).unwrap();
        assert_eq!(&in_db1[8..], b"in db 1");
        cache.backend().delete(&key).unwrap();
    }

    /// The ids of the connections named `name` (`CLIENT LIST`).
    fn clients_named(url: &str, name: &str) -> Vec<i64> {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut redis_connection(url))
            .unwrap();
        list.lines()
            .filter(|l| l.split(' ').any(|f| f == format!("name={name}")))
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .filter_map(|id| id.parse().ok())
            .collect()
    }

    #[test]
    fn killed_connections_are_replaced_without_an_error() {
        let test = "killed_connections_are_replaced_without_an_error";
        let Some(url) = redis_url(test) else {
            return;
        };
        let name = unique_prefix("kill").replace(['.', ':'], "-");
        let options = RedisOptions {
            client_name: Some(name.clone()),
            ..test_redis_options()
        };
        let server = url.split_once('?').map_or(url.as_str(), |(s, _)| s);
        let b = Arc::new(Redis::new(server, options).unwrap());
        let key = format!("{}k", unique_prefix(test));
        b.set(&key, b"v", Expiry::Forever).unwrap();
        // Several pooled connections: threads holding one each at the same time.
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (b, key, barrier) = (b.clone(), key.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..50 {
                        b.get(&key).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for round in 0..3 {
            let ids = clients_named(&url, &name);
            assert!(!ids.is_empty(), "round {round}: no connection named {name}");
            let mut admin = redis_connection(&url);
            for id in &ids {
                // Only our own connections, by id.
                let _: i64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("ID")
                    .arg(*id)
                    .query(&mut admin)
                    .unwrap();
            }
            // The next calls reconnect: no error, no fail-fast window.
            assert_eq!(value(&*b, &key).unwrap(), b"v", "round {round}");
            assert!(matches!(b.incr(&key, 1), Err(Error::NotANumber { .. })));
            b.set(&key, b"v", Expiry::Forever).unwrap();
            b.probe().unwrap();
        }
        b.delete(&key).unwrap();
    }

    #[test]
    fn a_dead_server_fails_calls_and_recovers_after_the_retry_window() {
        let test = "redis_a_dead_server_fails_calls_and_recovers_after_the_retry_window";
        let Some(mut server) = RedisProcess::start(test) else {
            return;
        };
        let options = test_redis_options();
        let retry_after = options.retry_after;
        let r: Arc<dyn Backend> = Arc::new(Redis::new(&server.url(), options).unwrap());
        let cache = Cache::builder()
            .shared_backend(r.clone())
            .prefix(unique_prefix(test))
            .build()
            .unwrap();
        let b = cache.backend();
        let key = k(&cache, "k");
        b.set(&key, b"v", Expiry::Forever).unwrap();
        let mut calls = 0;
        let mut manual = |n: u32| -> u32 {
            cache.cached("manual", Timeout::Forever, || {
                calls += 1;
                n
            })
        };
        assert_eq!(manual(1), 1);
        assert_eq!(manual(2), 1, "cached while the server is up");

        // A restart between two calls costs no error: the closed pooled connection is
        // replaced at once (the restarted server is empty).
        server.restart();
        assert_eq!(value(b, &key), None);
        b.set(&key, b"v", Expiry::Forever).unwrap();

        server.kill();
        let errors: Vec<(&str, caching_core::Result<()>)> = vec![
            ("get", b.get(&key).map(|_| ())),
            ("get_multi", b.get_multi(&[&key]).map(|_| ())),
            ("set", b.set(&key, b"w", Expiry::Forever)),
            ("add", b.add(&key, b"w", Expiry::Forever).map(|_| ())),
            ("append", b.append_multi(&[(&key, b"w")]).map(|_| ())),
            ("cas", b.cas(&key, b"w", Expiry::Forever, 1).map(|_| ())),
            ("delete", b.delete(&key)),
            ("incr", b.incr(&key, 1).map(|_| ())),
            ("probe", b.probe()),
        ];
        for (op, r) in errors {
            match r {
                Err(e) => assert!(e.is_backend_failure(), "{op}: {e}"),
                Ok(()) => panic!("{op} succeeded against a dead server"),
            }
        }
        assert!(
            matches!(b.get(&key), Err(Error::Unavailable { .. })),
            "fails fast"
        );
        assert_eq!(manual(3), 3);
        let mut inv = Invalidation::new();
        inv.object(ObjectKey::new("users", &["1"]));
        let report = cache.invalidate(&inv).unwrap();
        assert!(report.deferred, "{report:?}");
        assert_eq!(cache.pending_invalidations(), 1);

        server.restart();
        std::thread::sleep(retry_after * 3);
        assert!(
            cache.wait_for_delivery(Duration::from_secs(5)),
            "the queued invalidation was delivered once the server came back"
        );
        b.set(&key, b"again", Expiry::Forever).unwrap();
        assert_eq!(value(b, &key).unwrap(), b"again");
        assert_eq!(manual(5), 5);
        assert_eq!(manual(6), 5, "caching resumed after the server came back");
        assert_eq!(calls, 3);
    }

    /// A server frozen mid-run (SIGSTOP, connections open, nothing answered): calls fail
    /// within the I/O timeout instead of hanging, values are computed without the cache, a
    /// write's invalidation waits and is delivered after SIGCONT, and the value tied to the
    /// written row is then recomputed, never served from before the write.
    #[test]
    fn a_paused_server_fails_fast_and_loses_no_invalidation() {
        let test = "redis_paused_server";
        let Some(server) = RedisProcess::start(test) else {
            return;
        };
        let options = RedisOptions {
            io_timeout: Duration::from_millis(300),
            ..test_redis_options()
        };
        let r: Arc<dyn Backend> = Arc::new(Redis::new(&server.url(), options).unwrap());
        let cache = Cache::builder()
            .shared_backend(r)
            .prefix(unique_prefix(test))
            .build()
            .unwrap();
        let user = ObjectKey::new("users", &["1"]);
        let score = |n: u32| -> u32 { cache.cached_with(&user, "score", Timeout::Forever, || n) };
        assert_eq!(score(1), 1);
        assert_eq!(score(2), 1, "cached while the server answers");

        server.pause().unwrap();
        let started = std::time::Instant::now();
        assert_eq!(score(3), 3, "computed without the cache");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a frozen server costs a timeout, not a hang: {:?}",
            started.elapsed()
        );
        let mut inv = Invalidation::new();
        inv.object(user.clone());
        let report = cache.invalidate(&inv).unwrap();
        assert!(report.deferred, "{report:?}");
        assert!(cache.stats().backend_errors > 0);

        server.resume().unwrap();
        assert!(
            cache.wait_for_delivery(Duration::from_secs(10)),
            "the invalidation queued during the pause was delivered after it"
        );
        assert_eq!(score(4), 4, "the value from before the write is gone");
        assert_eq!(score(5), 4, "caching resumed");
    }
}

/// `Backend::batch` answers every op as the single-purpose methods do, and applies the stages
/// in order: an append sees the add of the stage before it, a read sees both, and the
/// increments and deletes of a stage are seen by the reads of the next.
#[test]
fn batch_runs_stages_in_order_and_answers_like_the_single_methods() {
    for (name, cache) in each_cache(
        "batch_runs_stages_in_order_and_answers_like_the_single_methods",
        |b| b,
    ) {
        check_batch(name, cache.backend(), cache.keys().prefix());
    }
}

/// The same on two memcached servers, where the keys of one batch live on both: stages are
/// then run one after another, and still answer in op order.
#[test]
fn batch_over_two_memcached_servers_keeps_the_stage_order() {
    let test = "batch_over_two_memcached_servers_keeps_the_stage_order";
    let (Some(a), Some(b)) = (MemcachedProcess::start(test), MemcachedProcess::start(test)) else {
        return;
    };
    let backend = Memcached::new(&[a.addr(), b.addr()], test_memcached_options()).unwrap();
    let prefix = unique_prefix(test);
    check_batch("two memcached servers", &backend, &prefix);
    // The keys really were spread over both servers.
    let servers: std::collections::HashSet<&str> = (0..20)
        .map(|i| backend.server_of(&format!("{prefix}list{i}")))
        .collect();
    assert_eq!(servers.len(), 2, "keys on both servers");
}

fn check_batch(name: &str, b: &dyn Backend, prefix: &str) {
    use caching_core::{Op, OpReply};
    let key = |s: &str| format!("{prefix}{s}");
    let lists: Vec<String> = (0..20).map(|i| key(&format!("list{i}"))).collect();
    let (counter, gone, nan, absent) = (key("n"), key("gone"), key("nan"), key("absent"));
    b.set(&counter, b"41", Expiry::Forever).unwrap();
    b.set(&gone, b"x", Expiry::Forever).unwrap();
    b.set(&nan, b"not a number", Expiry::Forever).unwrap();
    b.set(&lists[0], b" old", Expiry::Forever).unwrap();
    let adds: Vec<Op<'_>> = lists
        .iter()
        .map(|l| Op::Add(l, b" @1", Expiry::Forever))
        .collect();
    let mut second: Vec<Op<'_>> = lists.iter().map(|l| Op::Append(l, b" q")).collect();
    second.extend([
        Op::Incr(&counter, 1),
        Op::Incr(&absent, 1),
        Op::Incr(&nan, 1),
        Op::Delete(&gone),
    ]);
    let mut third: Vec<Op<'_>> = lists.iter().map(|l| Op::Get(l)).collect();
    third.extend([Op::Get(&counter), Op::Get(&gone), Op::Get(&absent)]);
    let replies = b.batch(&[&adds, &second, &third]).unwrap();
    assert_eq!(replies.len(), 3, "{name}: one reply list per stage");
    // The first list existed: its add failed, the others were created.
    let expected: Vec<OpReply> = (0..lists.len()).map(|i| OpReply::Added(i != 0)).collect();
    assert_eq!(replies[0], expected, "{name}: adds");
    let mut expected: Vec<OpReply> = lists
        .iter()
        .map(|_| OpReply::Appended(AppendOutcome::Appended))
        .collect();
    expected.extend([
        OpReply::Counter(Some(42)),
        OpReply::Counter(None),
        OpReply::NotANumber,
        OpReply::Deleted,
    ]);
    assert_eq!(replies[1], expected, "{name}: appends, increments, delete");
    let values: Vec<Option<Vec<u8>>> = replies[2]
        .iter()
        .map(|r| match r {
            OpReply::Value(v) => v.as_ref().map(|i| i.value.clone()),
            other => panic!("{name}: a get answered {other:?}"),
        })
        .collect();
    assert_eq!(values[0].as_deref(), Some(&b" old q"[..]), "{name}");
    for v in &values[1..lists.len()] {
        assert_eq!(
            v.as_deref(),
            Some(&b" @1 q"[..]),
            "{name}: add, then append"
        );
    }
    let n = lists.len();
    assert_eq!(
        values[n].as_deref(),
        Some(&b"42"[..]),
        "{name}: incremented"
    );
    assert_eq!(values[n + 1], None, "{name}: deleted");
    assert_eq!(
        values[n + 2],
        None,
        "{name}: a missing counter is not created"
    );
    // Each get carries the item's CAS token: a cas over it stores, a stale one does not.
    let (OpReply::Value(Some(item)), OpReply::Value(Some(other))) =
        (&replies[2][1], &replies[2][2])
    else {
        panic!("{name}: list1 and list2 exist");
    };
    let replies = b
        .batch(&[&[
            Op::Cas(&lists[1], b" @1", Expiry::Forever, item.cas),
            Op::Cas(
                &lists[2],
                b" @1",
                Expiry::Forever,
                other.cas.wrapping_add(1 << 40),
            ),
            Op::Cas(&absent, b"v", Expiry::Forever, 7),
        ]])
        .unwrap();
    assert_eq!(
        replies[0],
        [
            OpReply::Cas(CasOutcome::Stored),
            OpReply::Cas(CasOutcome::Changed),
            OpReply::Cas(CasOutcome::Missing),
        ],
        "{name}: cas"
    );
    // Values over the item size are refused without an error, as by the single methods.
    let huge = vec![b'h'; b.max_item_size() + 1];
    let replies = b
        .batch(&[&[
            Op::Add(&absent, &huge, Expiry::Forever),
            Op::Append(&lists[3], &huge),
        ]])
        .unwrap();
    assert_eq!(
        replies[0],
        [
            OpReply::Added(false),
            OpReply::Appended(AppendOutcome::TooLarge)
        ],
        "{name}: too large"
    );
    assert_eq!(value(b, &absent), None, "{name}");
    assert!(b.batch(&[]).unwrap().is_empty(), "{name}: no stages");
    assert!(
        b.batch(&[&[Op::Get("bad key")]]).is_err(),
        "{name}: invalid keys are refused"
    );
}
