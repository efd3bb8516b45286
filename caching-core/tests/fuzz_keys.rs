//! Property tests of the engine's inputs: keys (validity and injectivity, whatever the
//! caller passes), `CACHE_URL` parsing (never panics, accepts exactly the well-formed URLs)
//! and timeouts (never panic, never round a finite timeout down to memcached's "forever").

use std::time::Duration;

use caching_core::key::{is_valid_key, safe_part, MAX_KEY_LEN, MAX_PREFIX_LEN};
use caching_core::{Cache, Expiry, KeySpace, ObjectKey, QueryKeyBuilder, Timeout, MAX_TIMEOUT};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

/// memcached reads an expiry above 30 days as an absolute unix time.
const RELATIVE_LIMIT: u64 = 30 * 24 * 3600;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // A failure prints its minimal input; no regression files in the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings a caller might pass as a table, a primary key, a database label or a manual key:
/// arbitrary unicode, the safe alphabet around the verbatim length limit, whitespace and
/// control characters (CR/LF, NUL, DEL), separators, and very long strings.
fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        2 => "[A-Za-z0-9_.-]{0,60}",
        1 => "[a-z]{46,50}",
        3 => r"[ \t\r\n\x00\x7f\x0b\x0c:#@%a-z\x{e9}\x{1F600}\x{202E}\x{FEFF}]{0,40}",
        1 => ("[a-z\r\n :]{1,4}", 30usize..700).prop_map(|(s, n)| s.repeat(n)),
        1 => vec(any::<char>(), 0..400).prop_map(String::from_iter),
    ]
}

/// Every valid prefix shape: none, short, exactly the limit, with and without a trailing `:`.
fn prefix() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[A-Za-z0-9_.:-]{1,64}",
        "[A-Za-z0-9_.-]{63}:",
        "[a-z]{64}",
    ]
}

fn ks_prefix_is_sane(ks: &KeySpace) -> bool {
    let p = ks.prefix();
    p.len() <= MAX_PREFIX_LEN + 1 && (p.is_empty() || (p.ends_with(':') && is_valid_key(p)))
}

proptest! {
    #![proptest_config(config(300))]

    /// (a) Every key a key space builds is a valid memcached key under the prefix.
    #[test]
    fn every_built_key_is_valid(
        prefix in prefix(),
        model in nasty(),
        pk in vec(nasty(), 0..6),
        db in nasty(),
        other in nasty(),
        kind in nasty(),
        parts in vec((nasty(), vec(any::<u8>(), 0..64)), 0..6),
    ) {
        let ks = KeySpace::new(&prefix).unwrap();
        prop_assert!(ks_prefix_is_sane(&ks), "prefix {:?}", ks.prefix());
        let o = ObjectKey::new(&model, &pk);
        prop_assert_eq!(o.model(), model.as_str());
        let mut qb = QueryKeyBuilder::new(&kind);
        for (tag, bytes) in &parts {
            qb.part(tag, bytes);
        }
        prop_assert_eq!(qb.finish_hex().len(), 32);
        let query = ks.query_key(&qb);
        let flush = ks.flush_key(&o);
        let keys = [
            ks.flush_key(&o),
            ks.object_entry_key(&db, &o),
            ks.manual_key(&other),
            ks.generation_key(&model),
            ks.version_key(&model),
            ks.key_flush_key(&other),
            ks.key_flush_key(&query),
            ks.key_flush_key(&flush),
            query.clone(),
            ks.namespace_key(),
        ];
        for k in &keys {
            prop_assert!(is_valid_key(k), "invalid key {:?}", k);
            prop_assert!(k.len() <= MAX_KEY_LEN);
            prop_assert!(k.starts_with(ks.prefix()), "{:?} lacks prefix {:?}", k, ks.prefix());
        }
        prop_assert!(ks.is_flush_key(&flush));
        prop_assert!(ks.is_flush_key(&ks.key_flush_key(&other)));
        prop_assert!(!ks.is_flush_key(&query));
        let sp = safe_part(&other);
        prop_assert!(!sp.is_empty() && !sp.contains(':') && is_valid_key(&sp), "{:?}", sp);
    }

    /// A prefix is accepted exactly when it is at most 64 bytes of `[A-Za-z0-9_.:-]`; never
    /// a panic.
    #[test]
    fn key_space_accepts_exactly_valid_prefixes(p in prop_oneof![nasty(), prefix(), "[a-z:]{60,70}"]) {
        let ok = p.len() <= MAX_PREFIX_LEN
            && p.chars().all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
        match KeySpace::new(&p) {
            Ok(ks) => {
                prop_assert!(ok, "accepted {:?}", p);
                prop_assert!(ks_prefix_is_sane(&ks));
            }
            Err(e) => {
                prop_assert!(!ok, "rejected valid {:?}: {}", p, e);
                prop_assert!(e.to_string().contains("prefix"), "{}", e);
            }
        }
    }
}

// ---- (b) object keys are injective ------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct Obj {
    model: String,
    pk: Vec<String>,
}

impl Obj {
    fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.model, &self.pk)
    }
}

/// A small alphabet (with the separator `:`, the hash marker `#` and unsafe bytes), so that
/// equal and nearly equal inputs are frequent.
fn small_obj() -> impl Strategy<Value = Obj> {
    ("[ab:# ]{0,3}", vec("[ab:#\n]{0,3}", 0..4)).prop_map(|(model, pk)| Obj { model, pk })
}

/// A near miss of `o`: the same input, or one that differs only in where the separators
/// fall, an extra empty part, or a part replaced by its own hashed form.
fn mutate(mut o: Obj, op: u8, i: Index, j: Index) -> Obj {
    match op % 8 {
        0 => {}
        1 => {
            if !o.pk.is_empty() {
                let k = i.index(o.pk.len());
                let s = o.pk[k].clone();
                let cut = j.index(s.len() + 1);
                if s.is_char_boundary(cut) {
                    let (a, b) = s.split_at(cut);
                    o.pk.splice(k..=k, [a.to_string(), b.to_string()]);
                }
            }
        }
        2 => {
            if o.pk.len() >= 2 {
                let k = i.index(o.pk.len() - 1);
                let b = o.pk.remove(k + 1);
                o.pk[k] = format!("{}:{b}", o.pk[k]);
            }
        }
        3 => {
            let m = std::mem::take(&mut o.model);
            o.pk.insert(0, m);
        }
        4 => o.pk.push(String::new()),
        5 => {
            if o.pk.is_empty() {
                o.model = safe_part(&o.model);
            } else {
                let k = i.index(o.pk.len());
                o.pk[k] = safe_part(&o.pk[k]);
            }
        }
        6 => {
            if !o.pk.is_empty() {
                let first = o.pk.remove(0);
                o.model = format!("{}:{first}", o.model);
            }
        }
        _ => o.model.push(':'),
    }
    o
}

fn obj_pair() -> impl Strategy<Value = (Obj, Obj)> {
    prop_oneof![
        (small_obj(), small_obj()),
        (small_obj(), any::<u8>(), any::<Index>(), any::<Index>())
            .prop_map(|(o, op, i, j)| (o.clone(), mutate(o, op, i, j))),
        (
            nasty(),
            vec(nasty(), 0..3),
            any::<u8>(),
            any::<Index>(),
            any::<Index>()
        )
            .prop_map(|(model, pk, op, i, j)| {
                let o = Obj { model, pk };
                (o.clone(), mutate(o, op, i, j))
            }),
    ]
}

proptest! {
    #![proptest_config(config(600))]

    /// (b) Two object keys (and every key derived from them) are equal exactly when their
    /// inputs are.
    #[test]
    fn object_keys_are_injective((a, b) in obj_pair(), db in "[ab: ]{0,2}") {
        let ks = KeySpace::new("p").unwrap();
        let (ka, kb) = (a.key(), b.key());
        let same = a == b;
        prop_assert_eq!(same, ka.as_str() == kb.as_str(), "{:?} -> {:?} / {:?} -> {:?}", a, ka, b, kb);
        prop_assert_eq!(same, ks.flush_key(&ka) == ks.flush_key(&kb));
        prop_assert_eq!(same, ks.object_entry_key(&db, &ka) == ks.object_entry_key(&db, &kb));
        prop_assert_eq!(a.model == b.model, ks.generation_key(&a.model) == ks.generation_key(&b.model));
        prop_assert_eq!(a.model == b.model, ks.manual_key(&a.model) == ks.manual_key(&b.model));
    }
}

// ---- (c) query keys are injective -------------------------------------------------------

type Parts = (String, Vec<(String, Vec<u8>)>);

fn small_parts() -> impl Strategy<Value = Parts> {
    let byte = prop::sample::select(vec![0u8, 1, 8, b'a', b'b']);
    ("[ab]{0,2}", vec(("[ab]{0,2}", vec(byte, 0..3)), 0..4))
}

/// A near miss of a part sequence: bytes moved across a tag/value or part boundary, parts
/// merged, an empty part added, the kind moved into a part, or a part boundary forged inside
/// a value.
fn mutate_parts((mut kind, mut parts): Parts, op: u8, i: Index) -> Parts {
    match op % 9 {
        0 => {}
        1 => {
            // Move the last byte of a value to the front of the next tag.
            if parts.len() >= 2 {
                let k = i.index(parts.len() - 1);
                if let Some(b) = parts[k].1.pop() {
                    parts[k + 1].0.insert(0, char::from(b));
                }
            }
        }
        2 => {
            // Move a tag's last char into the front of its value.
            if !parts.is_empty() {
                let k = i.index(parts.len());
                if let Some(c) = parts[k].0.pop() {
                    parts[k].1.insert(0, c as u8);
                }
            }
        }
        3 => {
            // Merge two parts.
            if parts.len() >= 2 {
                let k = i.index(parts.len() - 1);
                let (t, v) = parts.remove(k + 1);
                parts[k].0.push_str(&t);
                parts[k].1.extend(v);
            }
        }
        4 => parts.insert(i.index(parts.len() + 1), (String::new(), Vec::new())),
        5 => {
            // The builder itself starts with a `kind` part: try to forge it.
            let k = std::mem::take(&mut kind);
            parts.insert(0, ("kind".to_string(), k.into_bytes()));
        }
        6 | 7 => {
            // Forge a part boundary: append the next part, framed (with or without its value
            // length) as a length-prefixing hasher would see it, to this part's value.
            if parts.len() >= 2 {
                let k = i.index(parts.len() - 1);
                let (t, v) = parts.remove(k + 1);
                let value = &mut parts[k].1;
                value.extend((t.len() as u64).to_le_bytes());
                value.extend(t.as_bytes());
                if op % 9 == 6 {
                    value.extend((v.len() as u64).to_le_bytes());
                }
                value.extend(v);
            }
        }
        _ => {
            if let Some(last) = parts.last_mut() {
                last.1.push(0);
            }
        }
    }
    (kind, parts)
}

fn parts_pair() -> impl Strategy<Value = (Parts, Parts)> {
    prop_oneof![
        (small_parts(), small_parts()),
        (small_parts(), any::<u8>(), any::<Index>())
            .prop_map(|(p, op, i)| (p.clone(), mutate_parts(p, op, i))),
    ]
}

fn finish((kind, parts): &Parts) -> String {
    let mut b = QueryKeyBuilder::new(kind);
    for (tag, bytes) in parts {
        b.part(tag, bytes);
    }
    b.finish_hex()
}

proptest! {
    #![proptest_config(config(600))]

    /// (c) Query keys are equal exactly when the kind and part sequences are (a 128-bit
    /// hash: a collision here would be a framing bug, not bad luck).
    #[test]
    fn query_keys_are_injective((a, b) in parts_pair()) {
        let (ha, hb) = (finish(&a), finish(&b));
        prop_assert_eq!(a == b, ha == hb, "{:?} -> {} / {:?} -> {}", a, ha, b, hb);
        prop_assert!(ha.bytes().all(|c| c.is_ascii_hexdigit()) && ha.len() == 32);
    }
}

// ---- (d) CACHE_URL parsing --------------------------------------------------------------

const KNOWN: [&str; 15] = [
    "prefix",
    "timeout",
    "max_timeout",
    "count_timeout",
    "cache_empty_results",
    "invalidate_on_create",
    "replica_timeout",
    "max_entries",
    "max_bytes",
    "item_size",
    "connect_timeout_ms",
    "io_timeout_ms",
    "op_timeout_ms",
    "pool_size",
    "retry_after_ms",
];

/// A parameter: name, and value after `=` (`None`: the pair has no `=`).
type Param = (String, Option<String>);

/// A valid value for a known parameter.
fn valid_value(name: &'static str) -> BoxedStrategy<String> {
    let secs = (1..=MAX_TIMEOUT.as_secs()).prop_map(|n| n.to_string());
    match name {
        "prefix" => prefix().boxed(),
        "timeout" => prop_oneof![Just("forever".to_string()), secs].boxed(),
        "count_timeout" => prop_oneof![Just("none".to_string()), secs].boxed(),
        "max_timeout" | "replica_timeout" => secs.boxed(),
        "cache_empty_results" => {
            prop::sample::select(vec!["true", "false", "1", "0", "yes", "no", "on", "off"])
                .prop_map(String::from)
                .boxed()
        }
        "invalidate_on_create" => prop::sample::select(vec!["whole-model", "off"])
            .prop_map(String::from)
            .boxed(),
        _ => (1usize..1_000_000).prop_map(|n| n.to_string()).boxed(),
    }
}

/// Junk values: printable ASCII but `&` (which would start another pair), boundary numbers,
/// whitespace and control characters.
fn junk_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[!-%'-~]{0,12}",
        prop::sample::select(vec![
            "0",
            "-1",
            "+5",
            "1.5",
            "",
            "315360000",
            "315360001",
            "18446744073709551615",
            "18446744073709551616",
            "forever ",
            "TRUE",
            "a b",
            "x\r\nflush_all",
            "\u{0}",
            "ünï",
        ])
        .prop_map(String::from),
        "[A-Za-z0-9_.:-]{60,70}",
    ]
}

fn param() -> impl Strategy<Value = Param> {
    let known = prop::sample::select(KNOWN.to_vec());
    prop_oneof![
        6 => known.clone().prop_flat_map(|n| valid_value(n).prop_map(move |v| (n.to_string(), Some(v)))),
        2 => (known.prop_map(String::from), junk_value().prop_map(Some)),
        1 => ("[a-z_]{0,14}", junk_value().prop_map(Some)),
        1 => ("[a-z_]{0,10}", Just(None)),
    ]
}

/// A valid parameter among `names`.
fn valid_param(names: Vec<&'static str>) -> impl Strategy<Value = Param> {
    prop::sample::select(names)
        .prop_flat_map(|n| valid_value(n).prop_map(move |v| (n.to_string(), Some(v))))
}

const COMMON: [&str; 7] = [
    "prefix",
    "timeout",
    "max_timeout",
    "count_timeout",
    "cache_empty_results",
    "invalidate_on_create",
    "replica_timeout",
];

/// A well-formed URL, as scheme, hosts and parameters.
fn valid_url() -> impl Strategy<Value = (String, Vec<&'static str>, Vec<Param>)> {
    let locmem: Vec<&str> = COMMON.iter().chain(&KNOWN[7..10]).copied().collect();
    let memcached: Vec<&str> = COMMON.iter().chain(&KNOWN[10..]).copied().collect();
    let good_host = prop::sample::select(vec!["127.0.0.1:11211", "10.1.2.3:1", "[::1]:65535"]);
    prop_oneof![
        (
            Just("locmem".to_string()),
            Just(Vec::new()),
            vec(valid_param(locmem), 0..6)
        ),
        (
            Just("memcached".to_string()),
            vec(good_host, 1..3),
            vec(valid_param(memcached), 0..6)
        ),
    ]
}

/// A well-formed URL with one part replaced by something random (which may or may not
/// still be well-formed: the oracle decides).
fn mutated_url() -> impl Strategy<Value = (String, Vec<&'static str>, Vec<Param>)> {
    (
        valid_url(),
        0u8..5,
        any::<Index>(),
        scheme(),
        hosts(),
        param(),
        junk_value(),
    )
        .prop_map(|((mut sc, mut h, mut ps), op, i, sc2, h2, p2, junk)| {
            match op {
                0 => sc = sc2,
                1 => h = h2,
                2 => ps.insert(i.index(ps.len() + 1), p2),
                3 if !ps.is_empty() => {
                    let k = i.index(ps.len());
                    ps[k].1 = Some(junk);
                }
                _ => ps.push(p2),
            }
            (sc, h, ps)
        })
}

fn url_parts() -> impl Strategy<Value = (String, Vec<&'static str>, Vec<Param>)> {
    prop_oneof![
        2 => valid_url(),
        4 => mutated_url(),
        2 => (scheme(), hosts(), vec(param(), 0..6)),
    ]
}

fn hosts() -> impl Strategy<Value = Vec<&'static str>> {
    // IP literals only: nothing here may wait on DNS.
    let host = prop::sample::select(vec![
        "127.0.0.1:11211",
        "10.1.2.3:1",
        "[::1]:65535",
        "",
        "127.0.0.1",
        "[::1]",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        ":11211",
        "127.0.0.1:x",
    ]);
    prop_oneof![Just(Vec::new()), vec(host, 1..4)]
}

fn scheme() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("locmem".to_string()),
        4 => Just("memcached".to_string()),
        1 => "[a-z0-9+.-]{0,10}",
        1 => prop::sample::select(vec!["LOCMEM", "redis", "memcache", "locmem:", " locmem"]).prop_map(String::from),
    ]
}

/// Whether a value is acceptable for a known parameter, per the documented rules.
fn value_ok(name: &str, v: &str) -> bool {
    let secs = |v: &str| {
        v.parse::<u64>()
            .is_ok_and(|n| n >= 1 && n <= MAX_TIMEOUT.as_secs())
    };
    match name {
        "prefix" => {
            v.len() <= MAX_PREFIX_LEN
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
        }
        "timeout" => v == "forever" || secs(v),
        "count_timeout" => v == "none" || secs(v),
        "max_timeout" | "replica_timeout" => secs(v),
        "cache_empty_results" => ["true", "false", "1", "0", "yes", "no", "on", "off"].contains(&v),
        "invalidate_on_create" => v == "whole-model" || v == "off",
        _ => v.parse::<usize>().is_ok_and(|n| n > 0),
    }
}

/// The oracle: whether `scheme://hosts?params` is a well-formed cache URL, and its prefix.
fn expected(scheme: &str, hosts: &[&str], params: &[Param]) -> Option<String> {
    let mut prefix = String::new();
    let (mut locmem_params, mut mc_params) = (false, false);
    for (name, value) in params {
        if name.is_empty() && value.is_none() {
            continue; // an empty pair (`a&&b`) is skipped
        }
        let v = value.as_deref()?;
        if !KNOWN.contains(&name.as_str()) || !value_ok(name, v) {
            return None;
        }
        match name.as_str() {
            "prefix" => prefix = v.to_string(),
            "max_entries" | "max_bytes" | "item_size" => locmem_params = true,
            "connect_timeout_ms" | "io_timeout_ms" | "op_timeout_ms" | "pool_size"
            | "retry_after_ms" => mc_params = true,
            _ => {}
        }
    }
    let servers: Vec<&str> = hosts.iter().copied().filter(|h| !h.is_empty()).collect();
    match scheme {
        "locmem" if hosts.join(",").is_empty() && !mc_params => Some(prefix),
        "memcached"
            if !locmem_params
                && !servers.is_empty()
                && servers.iter().all(|s| {
                    // A host without a port gets 11211.
                    [
                        "127.0.0.1:11211",
                        "10.1.2.3:1",
                        "[::1]:65535",
                        "127.0.0.1",
                        "[::1]",
                    ]
                    .contains(s)
                }) =>
        {
            Some(prefix)
        }
        // One host (port 6379 by default); memcached's op_timeout_ms and locmem's entry
        // bounds are not Redis parameters, item_size is.
        #[cfg(feature = "redis")]
        "redis"
            if hosts.len() == 1
                && [
                    "127.0.0.1:11211",
                    "10.1.2.3:1",
                    "[::1]:65535",
                    "127.0.0.1",
                    "[::1]",
                ]
                .contains(&hosts[0])
                && !params.iter().any(|(n, _)| {
                    ["max_entries", "max_bytes", "op_timeout_ms"].contains(&n.as_str())
                }) =>
        {
            Some(prefix)
        }
        _ => None,
    }
}

fn render(scheme: &str, hosts: &[&str], params: &[Param]) -> String {
    let query: Vec<String> = params
        .iter()
        .map(|(n, v)| match v {
            Some(v) => format!("{n}={v}"),
            None => n.clone(),
        })
        .collect();
    let mut url = format!("{scheme}://{}", hosts.join(","));
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query.join("&"));
    }
    url
}

fn check_ok_cache(url: &str, cache: &Cache) -> Result<(), TestCaseError> {
    let ks = cache.keys();
    prop_assert!(ks_prefix_is_sane(ks), "{:?}: prefix {:?}", url, ks.prefix());
    prop_assert!(KeySpace::new(&cache.config().prefix).is_ok());
    prop_assert!(is_valid_key(&ks.namespace_key()));
    prop_assert!(
        url.starts_with("locmem://")
            || url.starts_with("memcached://")
            || (cfg!(feature = "redis") && url.starts_with("redis://"))
    );
    Ok(())
}

proptest! {
    #![proptest_config(config(400))]

    /// (d) Structured URLs, valid or mutated: `from_url` accepts exactly the well-formed ones,
    /// with the last prefix given, and explains every rejection.
    #[test]
    fn from_url_accepts_exactly_well_formed_urls((scheme, hosts, params) in url_parts()) {
        let url = render(&scheme, &hosts, &params);
        let has_bad_char = url.chars().any(|c| c.is_whitespace() || c.is_control());
        let want = if has_bad_char { None } else { expected(&scheme, &hosts, &params) };
        match (Cache::from_url(&url), want) {
            (Ok(cache), Some(prefix)) => {
                check_ok_cache(&url, &cache)?;
                prop_assert_eq!(&cache.config().prefix, &prefix, "{:?}", url);
            }
            (Err(e), None) => {
                let msg = e.to_string();
                prop_assert!(msg.len() > 10, "{:?}: terse error {:?}", url, msg);
            }
            (Ok(_), None) => return Err(TestCaseError::fail(format!("accepted malformed {url:?}"))),
            (Err(e), Some(_)) => {
                return Err(TestCaseError::fail(format!("rejected well-formed {url:?}: {e}")))
            }
        }
    }

    /// (d) Arbitrary strings never panic; whatever is accepted is a locmem or memcached URL
    /// with a valid prefix.
    #[test]
    fn from_url_never_panics(
        url in prop_oneof![
            any::<String>(),
            nasty(),
            "locmem://[ -~]{0,40}".prop_map(String::from),
            // Digits, dots and brackets only: a host without a port gets 11211 and is
            // resolved, which for these is an IP literal or fails without a DNS query.
            r"memcached://[0-9.,\[\]]{0,12}(\?[ -~]{0,30})?".prop_map(String::from),
            r"locmem://\?([a-z_]{1,14}=[!-~]{0,8}&?){0,4}".prop_map(String::from),
        ],
    ) {
        if let Ok(cache) = Cache::from_url(&url) {
            check_ok_cache(&url, &cache)?;
        }
    }
}

// ---- (e) timeouts -----------------------------------------------------------------------

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        prop::sample::select(vec![
            Duration::ZERO,
            Duration::MAX,
            Duration::from_nanos(1),
            Duration::from_millis(999),
            Duration::from_secs(1),
            Duration::from_secs(RELATIVE_LIMIT),
            Duration::from_secs(RELATIVE_LIMIT) + Duration::from_nanos(1),
            MAX_TIMEOUT,
            MAX_TIMEOUT + Duration::from_secs(1),
            Duration::new(u64::MAX, 0),
            Duration::new(u64::MAX - 1, 1),
        ]),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0u64..100, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0..MAX_TIMEOUT.as_secs() * 2, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

/// Valid configured timeouts (one second to ten years).
fn valid_duration() -> impl Strategy<Value = Duration> {
    (1..=MAX_TIMEOUT.as_secs()).prop_map(Duration::from_secs)
}

fn check_exptime(e: Expiry) -> Result<(), TestCaseError> {
    let t = e.memcached_exptime();
    match e {
        Expiry::Forever => prop_assert_eq!(t, 0),
        Expiry::Seconds(s) => {
            prop_assert!(t != 0, "{:?} became memcached's forever", e);
            if s <= RELATIVE_LIMIT {
                prop_assert_eq!(t, s);
            } else {
                prop_assert!(t > RELATIVE_LIMIT, "{:?} -> {} reads as relative", e, t);
            }
            // memcached parses exptime as a signed 32-bit number.
            prop_assert!(t <= i32::MAX as u64, "{:?} -> {} wraps in memcached", e, t);
            prop_assert!(e.as_duration().is_some());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(400))]

    /// (e) Any duration resolves to at least one second, rounded up, without panicking.
    #[test]
    fn expiry_of_any_duration(d in duration()) {
        let e = Expiry::from_duration(d);
        let Expiry::Seconds(s) = e else {
            return Err(TestCaseError::fail(format!("{d:?} became forever")));
        };
        prop_assert!(s >= 1, "{:?} -> 0 seconds", d);
        if s < u64::MAX {
            prop_assert!(Duration::from_secs(s) >= d, "{:?} rounded down to {}", d, s);
            prop_assert!(Duration::from_secs(s - 1) < d.max(Duration::from_nanos(1)), "{:?} rounded up past {}", d, s);
        }
        check_exptime(e)?;
        check_exptime(e.min(Expiry::Forever))?;
        check_exptime(Expiry::Forever.min(e))?;
    }

    /// (e) `Cache::expiry` never panics and never turns a finite timeout into "forever" or
    /// zero seconds, whatever the caller asks and however the cache is configured.
    #[test]
    fn cache_expiry_of_any_timeout(
        d in duration(),
        cap in prop::option::of(valid_duration()),
        default in prop::option::of(valid_duration()),
    ) {
        let cache = Cache::builder()
            .max_timeout(cap)
            .default_timeout(default.map_or(Timeout::Forever, Timeout::After))
            .build()
            .unwrap();
        let after = cache.expiry(Timeout::After(d));
        let Expiry::Seconds(s) = after else {
            return Err(TestCaseError::fail(format!("{d:?} became forever")));
        };
        prop_assert!(s >= 1);
        if let Some(cap) = cap {
            prop_assert!(s <= cap.as_secs(), "{:?} exceeds the cap {:?}", after, cap);
        }
        check_exptime(after)?;
        for t in [Timeout::Forever, Timeout::Default] {
            let e = cache.expiry(t);
            check_exptime(e)?;
            let finite = cap.is_some() || (t == Timeout::Default && default.is_some());
            prop_assert_eq!(finite, e != Expiry::Forever, "{:?} -> {:?}", t, e);
        }
        prop_assert_eq!(cache.expiry(Timeout::After(Duration::ZERO)), Expiry::Seconds(1));
    }
}
