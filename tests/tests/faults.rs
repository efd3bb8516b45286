//! SCENARIOS 36-38 and issue 4 (parts 4 and 5): whatever happens to the cache, queries answer
//! from the database and never fail, and the cache does not keep what it cannot vouch for.
//!
//! - 36: memcached stopped mid-run (a private server, [`MemcachedProcess`]), then restarted.
//! - 37: a payload that no longer decodes (corrupted bytes, another struct's shape).
//! - 38: results over the item limit (locmem with a small `item_size`, real memcached with
//!   ~2 MB of rows), and a flush-list registration that cannot be made.
//! - Fills withheld where they could be stale: inside a REPEATABLE READ transaction
//!   (PostgreSQL, MySQL), and from replicas only for the replica timeout.
//! - A failed invalidation (the writer's memcached is unreachable while readers' is not), and
//!   the staleness that remains.
//!
//! 36-38 run on every database (SQLite always, PostgreSQL and MySQL when their URLs are set);
//! server-backed parts follow the skip rule of `caching_tests` (fail under `CI=true`).

use std::sync::Arc;
use std::time::Duration;

use caching_core::backend::locmem::{LocMem, LocMemLimits};
use caching_core::backend::memcached::MemcachedOptions;
use caching_core::Expiry;
use caching_diesel::prelude::*;
use caching_diesel::{Cache, CacheSet, CachedConnection};
use caching_tests::db::schema::{addons, users};
use caching_tests::db::{Addon, BackendKind, Env, StatementCounter, TestDb, User};
use caching_tests::{unique_prefix, MemcachedProcess, RecordingBackend};

/// The short timeouts of an outage test: a dead server is noticed in at most 200 ms and
/// retried 200 ms later.
fn outage_options() -> MemcachedOptions {
    MemcachedOptions {
        io_timeout: Duration::from_millis(200),
        retry_after: Duration::from_millis(200),
        ..MemcachedOptions::default()
    }
}

/// A cache on the private server `mc`.
fn cache_on(mc: &MemcachedProcess, test: &str) -> Cache {
    Cache::builder()
        .memcached(&[mc.addr()], outage_options())
        .expect("private memcached address")
        .prefix(unique_prefix(test))
        .build()
        .expect("cache configuration")
}

/// A test world on a fresh database with an explicit cache.
fn env_on<C: TestDb>(test: &str, cache: Cache) -> Option<Env<C>> {
    Env::with_cache(test, cache)
}

macro_rules! suite {
    ($conn:ty, $widen_names:expr) => {
        use super::*;

        type Db = $conn;

        fn name(test: &str) -> String {
            format!("{}_{}", <Db as TestDb>::NAME, test)
        }

        /// What the three cached queries of these tests return.
        type Reads = (Addon, Vec<Addon>, Vec<User>);

        fn cached_reads(e: &mut Env<Db>) -> Reads {
            let a = addons::table
                .find(1)
                .cached()
                .first(&mut e.conn)
                .expect("cached find");
            let of_user = addons::table
                .filter(addons::author1_id.eq(1))
                .order(addons::id)
                .cached()
                .load(&mut e.conn)
                .expect("cached filter");
            let all = users::table
                .order(users::id)
                .cached()
                .load(&mut e.conn)
                .expect("cached list");
            (a, of_user, all)
        }

        fn direct_reads(e: &mut Env<Db>) -> Reads {
            let c = &mut *e.conn;
            (
                addons::table.find(1).first(c).unwrap(),
                addons::table
                    .filter(addons::author1_id.eq(1))
                    .order(addons::id)
                    .load(c)
                    .unwrap(),
                users::table.order(users::id).load(c).unwrap(),
            )
        }

        fn find_addon(e: &mut Env<Db>) -> Addon {
            addons::table
                .find(1)
                .cached()
                .first(&mut e.conn)
                .expect("cached find")
        }

        #[test]
        fn scenario_36_memcached_stopped_mid_run() {
            let test = name("s36");
            let Some(mut mc) = MemcachedProcess::start(&test) else {
                return;
            };
            let Some(mut e) = env_on::<Db>(&test, cache_on(&mc, &test)) else {
                return;
            };
            let warm = cached_reads(&mut e);
            assert!(e.queries() > 0);
            assert_eq!(cached_reads(&mut e), warm);
            assert_eq!(e.queries(), 0, "warm: served from the cache");

            mc.kill();
            let before = e.cache.stats();
            for _ in 0..3 {
                let got = cached_reads(&mut e);
                assert_eq!(
                    got,
                    direct_reads(&mut e),
                    "memcached down: answers come from the database"
                );
            }
            // A write while the cache is down succeeds; its invalidation fails and is counted.
            let saved: Addon = e
                .conn
                .save_changes(&Addon {
                    val: 43,
                    ..warm.0.clone()
                })
                .expect("a write must not fail because the cache is down");
            assert_eq!(saved.val, 43);
            let got = cached_reads(&mut e);
            assert_eq!(got.0.val, 43);
            assert_eq!(got, direct_reads(&mut e));
            let down = e.cache.stats();
            assert!(down.backend_errors > before.backend_errors, "{down:?}");
            assert_eq!(down.failed_invalidations, before.failed_invalidations + 1);
            assert_eq!(
                down.fills, before.fills,
                "nothing can be filled while the server is down"
            );

            // Back (empty): once past retry_after, a read fills again and the next one hits.
            mc.restart();
            std::thread::sleep(outage_options().retry_after + Duration::from_millis(150));
            e.queries();
            let fills = e.cache.stats().fills;
            let refilled = find_addon(&mut e);
            assert!(e.queries() > 0, "the restarted server is empty");
            assert_eq!(e.cache.stats().fills, fills + 1, "caching resumed");
            let hit = find_addon(&mut e);
            assert_eq!(e.queries(), 0, "served from the restarted server");
            assert_eq!((refilled.val, hit.val), (43, 43));
        }

        /// The bytes of a cached entry with its payload replaced by `payload`. The envelope
        /// is `C1`, a count byte, eight bytes per recorded version, then the payload.
        fn with_payload(envelope: &[u8], payload: &[u8]) -> Vec<u8> {
            assert_eq!(&envelope[..2], b"C1", "a published entry");
            let header = 3 + 8 * envelope[2] as usize;
            let mut out = envelope[..header].to_vec();
            out.extend_from_slice(payload);
            out
        }

        #[test]
        fn scenario_37_payloads_that_do_not_decode_are_misses() {
            for kind in BackendKind::all() {
                let Some(mut e) = Env::<Db>::new(&name("s37"), kind) else {
                    continue;
                };
                let fresh = find_addon(&mut e);
                let key = addons::table
                    .find(1)
                    .limit(1)
                    .cached()
                    .key::<Addon, _>(&mut e.conn)
                    .unwrap();
                let good = e
                    .cache
                    .backend()
                    .get(&key)
                    .unwrap()
                    .expect("the read filled its key")
                    .value;

                let corruptions: [(&str, Vec<u8>); 4] = [
                    ("garbage bytes", b"\x00\xffnot an entry".to_vec()),
                    ("truncated envelope", good[..5].to_vec()),
                    (
                        "another struct's shape",
                        with_payload(&good, br#"[{"id":1,"name":"fliggy"}]"#),
                    ),
                    ("truncated payload", good[..good.len() - 3].to_vec()),
                ];
                for (what, bytes) in corruptions {
                    e.cache
                        .backend()
                        .set(&key, &bytes, Expiry::Forever)
                        .unwrap();
                    let before = e.cache.stats();
                    e.queries();
                    let got = find_addon(&mut e);
                    assert_eq!(
                        got, fresh,
                        "{kind:?}, {what}: the row comes from the database"
                    );
                    assert!(e.queries() > 0, "{kind:?}, {what}: read from the database");
                    let after = e.cache.stats();
                    assert_eq!(
                        after.decode_errors,
                        before.decode_errors + 1,
                        "{kind:?}, {what}"
                    );
                    assert_eq!(after.hits, before.hits, "{kind:?}, {what}: not a hit");
                    assert_eq!(
                        after.fills,
                        before.fills + 1,
                        "{kind:?}, {what}: the bad entry was replaced"
                    );
                    let stored = e
                        .cache
                        .backend()
                        .get(&key)
                        .unwrap()
                        .expect("refilled")
                        .value;
                    assert_ne!(stored, bytes, "{kind:?}, {what}");
                    assert_eq!(find_addon(&mut e), fresh);
                    assert_eq!(
                        e.queries(),
                        0,
                        "{kind:?}, {what}: the replacement is served"
                    );
                }
            }
        }

        #[test]
        fn scenario_38_results_over_the_locmem_item_size_are_not_cached() {
            let test = name("s38_locmem");
            let cache = Cache::from_url(&format!(
                "locmem://?item_size=4096&prefix={}",
                unique_prefix(&test)
            ))
            .unwrap();
            let Some(mut e) = env_on::<Db>(&test, cache) else {
                return;
            };
            // About 6 KB of payload (postcard): over the 4 KB item size by itself. (Fewer rows
            // used to fail only because their parents' lists, which linked every row's list,
            // outgrew the item: a registration that could not be made.)
            let rows: Vec<Addon> = (3..=1002)
                .map(|id| Addon {
                    id,
                    val: id,
                    author1_id: 1,
                    author2_id: 2,
                })
                .collect();
            diesel::insert_into(addons::table)
                .values(&rows)
                .execute(&mut *e.conn)
                .unwrap();
            let direct: Vec<Addon> = addons::table.order(addons::id).load(&mut *e.conn).unwrap();
            e.queries();
            let before = e.cache.stats();
            for _ in 0..2 {
                let got: Vec<Addon> = addons::table
                    .order(addons::id)
                    .cached()
                    .load(&mut e.conn)
                    .unwrap();
                assert_eq!(got, direct);
                assert!(
                    e.queries() > 0,
                    "over the item size: every read asks the database"
                );
            }
            let after = e.cache.stats();
            assert_eq!(after.fills, before.fills);
            assert_eq!(after.skipped_fills, before.skipped_fills + 2);
            assert_eq!(after.backend_errors, before.backend_errors);
            // A small result of the same cache still caches.
            let _ = find_addon(&mut e);
            let _ = find_addon(&mut e);
            assert_eq!(e.cache.stats().hits, after.hits + 1);
        }

        #[test]
        fn scenario_38_results_over_the_memcached_item_limit_are_not_cached() {
            let Some(mut e) = Env::<Db>::new(&name("s38_memcached"), BackendKind::Memcached) else {
                return;
            };
            let widen: &str = $widen_names;
            if !widen.is_empty() {
                diesel::sql_query(widen).execute(&mut *e.conn).unwrap();
            }
            // 2,000 users with 1 KB names: about 2 MB of JSON, over memcached's 1 MiB items.
            let big: Vec<User> = (3..2003)
                .map(|id| User {
                    id,
                    name: format!("{id:06}{}", "n".repeat(1018)),
                })
                .collect();
            for chunk in big.chunks(250) {
                diesel::insert_into(users::table)
                    .values(chunk)
                    .execute(&mut *e.conn)
                    .unwrap();
            }
            let direct: Vec<User> = users::table.order(users::id).load(&mut *e.conn).unwrap();
            assert_eq!(direct.len(), 2002);
            e.queries();
            let before = e.cache.stats();
            for _ in 0..2 {
                let got: Vec<User> = users::table
                    .order(users::id)
                    .cached()
                    .load(&mut e.conn)
                    .unwrap();
                assert_eq!(got, direct);
                assert!(
                    e.queries() > 0,
                    "over the item limit: every read asks the database"
                );
            }
            let after = e.cache.stats();
            assert_eq!(after.fills, before.fills);
            assert_eq!(after.skipped_fills, before.skipped_fills + 2);
            assert_eq!(
                after.backend_errors, before.backend_errors,
                "too large is not an error"
            );
            let key = users::table
                .order(users::id)
                .cached()
                .key::<User, _>(&mut e.conn)
                .unwrap();
            assert!(e.cache.backend().get(&key).unwrap().is_none());
        }

        /// Whether a registration can fail for size alone. One registration appends
        /// " {query key} {the query's flush key}" to each row's list: at least twice the query
        /// key, which is at most 99 bytes (a 64-byte prefix, `:q:`, 32 hex digits). The entry
        /// must fit too: envelope (19 bytes for two versions) + JSON + key + the fill's 64-byte
        /// margin. On memcached (`-I` is at least 1 KiB) a fresh list always fits, and a full
        /// one is compacted or replaced by an overflow marker, so there a registration fails
        /// only through backend errors or endless contention. On locmem it is reachable, barely:
        /// the longest prefix, a row whose JSON is at most 40 bytes, and an item size in a
        /// window of a few bytes. Then the result is returned and not cached.
        #[test]
        fn scenario_38_a_registration_that_cannot_be_made_is_not_cached() {
            let test = name("s38_register");
            let prefix: String = format!("{}{}", unique_prefix(&test), "x".repeat(64))
                .chars()
                .take(64)
                .collect();
            let probe = Cache::builder().prefix(prefix.clone()).build().unwrap();
            let Some(mut e) = env_on::<Db>(&test, probe.clone()) else {
                return;
            };
            let tiny = User {
                id: 3,
                name: String::new(),
            };
            diesel::insert_into(users::table)
                .values(&tiny)
                .execute(&mut *e.conn)
                .unwrap();
            let query = || users::table.find(3).limit(1).cached();
            let key = query().key::<User, _>(&mut e.conn).unwrap();
            let registration = key.len() + probe.keys().key_flush_key(&key).len() + 2;
            let item_size = registration - 1;
            let json = serde_json::to_vec(&vec![tiny.clone()]).unwrap();
            let entry = 3 + 16 + json.len() + key.len() + 64;
            assert!(
                entry <= item_size,
                "the entry ({entry} bytes) must fit in {item_size} while its registration ({registration}) does not"
            );

            let recording = Arc::new(RecordingBackend::new(Arc::new(LocMem::with_limits(
                LocMemLimits {
                    max_item_size: item_size,
                    ..LocMemLimits::default()
                },
            ))));
            let cache = Cache::builder()
                .shared_backend(recording.clone())
                .prefix(prefix)
                .build()
                .unwrap();
            let raw = e.conn.into_inner();
            let statements = StatementCounter::default();
            let mut conn = CachedConnection::with_instrumentation(
                raw,
                CacheSet::new(cache.clone()),
                statements.clone(),
            );
            statements.take();
            for _ in 0..2 {
                let u: User = query().first(&mut conn).unwrap();
                assert_eq!(u, tiny);
                assert!(statements.take() > 0, "not served from the cache");
            }
            let s = cache.stats();
            assert_eq!((s.fills, s.skipped_fills, s.hits), (0, 2, 0), "{s:?}");
            assert_eq!(s.backend_errors, 0);
            let row_list = cache
                .keys()
                .flush_key(&caching_diesel::ObjectKey::new("users", &["3"]));
            assert!(
                recording.keys().contains(&row_list),
                "registration was attempted (the entry was not simply too large)"
            );
            assert!(
                cache.backend().get(&key).unwrap().is_none(),
                "nothing left under the key"
            );
        }
    };
}

#[cfg(feature = "sqlite")]
mod sqlite {
    suite!(diesel::SqliteConnection, "");
}
#[cfg(feature = "postgres")]
mod postgres {
    suite!(
        diesel::PgConnection,
        "ALTER TABLE users ALTER COLUMN name TYPE TEXT"
    );
}
#[cfg(feature = "mysql")]
mod mysql {
    suite!(
        diesel::MysqlConnection,
        "ALTER TABLE users MODIFY name TEXT NOT NULL"
    );
}

/// Inside a REPEATABLE READ transaction a cached read does not fill: its snapshot can be
/// older than the write generation the fill would check (here, another connection commits and
/// invalidates while the transaction is open, and the transaction still reads the old row).
/// After COMMIT the next read fills with the current row.
#[cfg(any(feature = "postgres", feature = "mysql"))]
macro_rules! snapshot_suite {
    ($conn:ty, $before_begin:expr, $in_transaction:expr) => {
        use super::*;
        use caching_tests::db::SameDatabase;
        use diesel::connection::SimpleConnection;

        type Db = $conn;

        #[test]
        fn repeatable_read_transactions_do_not_fill() {
            for kind in BackendKind::all() {
                let test = format!("{}_snapshot", <Db as TestDb>::NAME);
                let Some(mut e) = Env::<Db>::new(&test, kind) else {
                    continue;
                };
                let mut other = CachedConnection::with_caches(
                    <Db as SameDatabase>::another(&mut *e.conn),
                    CacheSet::new(e.cache.clone()),
                );
                let before_begin: &str = $before_begin;
                if !before_begin.is_empty() {
                    e.conn.batch_execute(before_begin).unwrap();
                }
                let cache = e.cache.clone();
                let start = cache.stats();
                let seen = e
                    .conn
                    .transaction(|c| {
                        let in_transaction: &str = $in_transaction;
                        if !in_transaction.is_empty() {
                            c.batch_execute(in_transaction)?;
                        }
                        let first: Addon = addons::table.find(1).cached().first(c)?;
                        let s = cache.stats();
                        assert_eq!(
                            s.fills, start.fills,
                            "{kind:?}: no fill inside the transaction"
                        );
                        assert_eq!(s.skipped_fills, start.skipped_fills + 1, "{kind:?}");
                        // Another connection commits a change and invalidates.
                        let _: Addon = other.save_changes(&Addon {
                            val: 43,
                            ..first.clone()
                        })?;
                        let second: Addon = addons::table.find(1).cached().first(c)?;
                        assert_eq!(
                            second.val, 42,
                            "{kind:?}: the snapshot still shows the old row"
                        );
                        let s = cache.stats();
                        assert_eq!(
                            s.fills, start.fills,
                            "{kind:?}: the old snapshot is not cached"
                        );
                        assert_eq!(s.skipped_fills, start.skipped_fills + 2, "{kind:?}");
                        Ok::<_, diesel::result::Error>((first, second))
                    })
                    .unwrap();
                assert_eq!((seen.0.val, seen.1.val), (42, 42));
                e.queries();
                let after: Addon = addons::table.find(1).cached().first(&mut e.conn).unwrap();
                assert_eq!(after.val, 43);
                assert!(e.queries() > 0);
                assert_eq!(
                    cache.stats().fills,
                    start.fills + 1,
                    "{kind:?}: after COMMIT the read fills"
                );
                let hit: Addon = addons::table.find(1).cached().first(&mut e.conn).unwrap();
                assert_eq!((hit.val, e.queries()), (43, 0), "{kind:?}");
            }
        }
    };
}

#[cfg(feature = "postgres")]
mod postgres_snapshot {
    snapshot_suite!(
        diesel::PgConnection,
        "",
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"
    );
}
#[cfg(feature = "mysql")]
mod mysql_snapshot {
    // REPEATABLE READ is MySQL's (and MariaDB's) default; set it anyway.
    snapshot_suite!(
        diesel::MysqlConnection,
        "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        ""
    );
}

#[cfg(feature = "sqlite")]
mod replica {
    use super::*;
    use caching_tests::{memcached_server_of, memcached_ttl, memcached_url};

    /// Fills through a connection labelled as a replica live for the replica timeout (bounding
    /// how long replica lag can keep an old row cached); the primary's fills are kept.
    #[test]
    fn replica_fills_expire_after_the_replica_timeout() {
        for kind in BackendKind::all() {
            let Some(mut e) =
                Env::<diesel::SqliteConnection>::configured("replica_timeout", kind, |b| {
                    // Two seconds: memcached counts expiry in whole seconds, so a one-second
                    // item can be gone before the check below reads its TTL.
                    b.replica_timeout(Duration::from_secs(2))
                })
            else {
                continue;
            };
            let replica_raw = <diesel::SqliteConnection as TestDb>::fresh("replica").unwrap();
            let replica_statements = StatementCounter::default();
            let mut replica = CachedConnection::with_instrumentation(
                replica_raw,
                CacheSet::new(e.cache.clone()),
                replica_statements.clone(),
            )
            .with_label("replica")
            .as_replica(true);
            let read = |c: &mut CachedConnection<diesel::SqliteConnection>| -> User {
                users::table.find(1).cached().first(c).unwrap()
            };
            read(&mut e.conn);
            read(&mut replica);
            e.queries();
            replica_statements.take();
            read(&mut e.conn);
            read(&mut replica);
            assert_eq!(
                (e.queries(), replica_statements.take()),
                (0, 0),
                "{kind:?}: both cached"
            );

            if kind == BackendKind::Memcached {
                // What reached the server: a two-second exptime for the replica's entry only.
                let url = memcached_url("replica ttl").expect("set when the cache was built");
                for (conn, want) in [(&mut e.conn, -1), (&mut replica, 1)] {
                    let key = users::table
                        .find(1)
                        .limit(1)
                        .cached()
                        .key::<User, _>(conn)
                        .unwrap();
                    let ttl = memcached_ttl(&memcached_server_of(&url, &key), &key).unwrap();
                    match want {
                        -1 => assert_eq!(ttl, Some(-1), "the primary's fill has no expiry"),
                        _ => assert!(
                            matches!(ttl, Some(0..=2)),
                            "the replica's fill expires: {ttl:?}"
                        ),
                    }
                }
            }
            #[cfg(feature = "redis")]
            if kind == BackendKind::Redis {
                let url =
                    caching_tests::redis_url("replica ttl").expect("set when the cache was built");
                for (conn, want) in [(&mut e.conn, -1), (&mut replica, 1)] {
                    let key = users::table
                        .find(1)
                        .limit(1)
                        .cached()
                        .key::<User, _>(conn)
                        .unwrap();
                    let ttl = caching_tests::redis_ttl(&url, &key);
                    match want {
                        -1 => assert_eq!(ttl, Some(-1), "the primary's fill has no expiry"),
                        _ => assert!(
                            matches!(ttl, Some(0..=2)),
                            "the replica's fill expires: {ttl:?}"
                        ),
                    }
                }
            }

            std::thread::sleep(Duration::from_millis(3500));
            read(&mut e.conn);
            assert_eq!(e.queries(), 0, "{kind:?}: the primary's fill persists");
            read(&mut replica);
            assert!(
                replica_statements.take() > 0,
                "{kind:?}: the replica's fill expired"
            );
        }
    }
}

#[cfg(feature = "sqlite")]
mod failed_invalidation {
    use super::*;
    use caching_tests::db::SqliteFile;

    /// A writer whose memcached is unreachable while readers still reach theirs (here: two
    /// servers, the writer's dead): the write succeeds, its invalidation is queued (counted
    /// in `failed_invalidations`) and retried in the background, and until it is delivered
    /// the writer's own reads of the table bypass the cache, so it reads its own write.
    ///
    /// What staleness remains (see docs/src/failure-modes.md): the readers' server never
    /// hears of the write while the writer cannot reach it, so their cached result keeps
    /// the old row until the invalidation is delivered there, it expires (`max_timeout`),
    /// or a later invalidation of the same row reaches it.
    #[test]
    fn a_failed_invalidation_is_queued_and_the_writer_reads_its_own_write() {
        let test = "failed_invalidation";
        let Some(live) = MemcachedProcess::start(test) else {
            return;
        };
        let Some(mut dead) = MemcachedProcess::start(test) else {
            return;
        };
        dead.kill();
        let prefix = unique_prefix(test);
        let build = |mc: &MemcachedProcess| {
            Cache::builder()
                .memcached(&[mc.addr()], outage_options())
                .unwrap()
                .prefix(prefix.clone())
                .build()
                .unwrap()
        };
        let (readers_cache, writers_cache) = (build(&live), build(&dead));
        let db = SqliteFile::new(test);
        let mut reader = db.cached_conn(&readers_cache);
        let mut writer = db.cached_conn(&writers_cache);
        let find = |c: &mut CachedConnection<diesel::SqliteConnection>| -> Addon {
            addons::table.find(1).cached().first(c).unwrap()
        };
        let old = find(&mut reader);
        assert_eq!(find(&mut reader), old);
        assert_eq!(readers_cache.stats().hits, 1);

        let saved: Addon = writer
            .save_changes(&Addon {
                val: 43,
                ..old.clone()
            })
            .expect("the write succeeds although its invalidation cannot");
        assert_eq!(saved.val, 43);
        let w = writers_cache.stats();
        assert_eq!(w.failed_invalidations, 1, "{w:?}");
        assert!(
            w.backend_errors >= 1,
            "the failed attempt was counted: {w:?}"
        );
        assert_eq!(writers_cache.pending_invalidations(), 1);
        // The writer reads its own write while the invalidation is undelivered.
        assert_eq!(find(&mut writer).val, 43);
        assert_eq!(writers_cache.stats().bypassed_reads, 1);

        // The documented exposure: the readers' server never heard of the write.
        assert_eq!(
            find(&mut reader).val,
            42,
            "stale until something invalidates it there"
        );
        // The writer's server comes back: the queue is delivered, nothing is lost.
        dead.restart();
        assert!(writers_cache.wait_for_delivery(std::time::Duration::from_secs(10)));
        assert_eq!(writers_cache.stats().retried_invalidations, 1);
        // One of the ways out: an invalidation of the row that reaches the readers' cache.
        reader.invalidate(&[saved]).unwrap();
        assert_eq!(find(&mut reader).val, 43);
    }
}
