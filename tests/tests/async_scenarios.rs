//! The Diesel scenarios and the transaction suite against `AsyncCachedConnection` (issue 11),
//! on every database and cache backend this build has: a hit after a miss is proven by
//! counting statements; write helpers and committed transactions invalidate; nothing is
//! invalidated before COMMIT; a rollback invalidates nothing that changes results; and a
//! write (in a transaction, and alone) dropped after its k-th poll, for every k until it
//! finishes, never leaves a later cached read stale.
#![cfg(feature = "async")]

macro_rules! suite {
    ($conn:ty, $kind:expr) => {
        use std::time::Duration;

        use caching_diesel::async_prelude::*;
        use caching_diesel::{AsyncCachedConnection, ReadOutcome};
        use caching_tests::async_db::{runtime, AsyncEnv, PollLimit};
        use caching_tests::db::schema::addons;
        use caching_tests::db::{Addon, BackendKind};

        type Db = $conn;
        const KIND: BackendKind = $kind;

        async fn env(test: &str) -> Option<AsyncEnv<Db>> {
            AsyncEnv::suite(test, KIND).await
        }

        async fn find(conn: &mut AsyncCachedConnection<Db>, id: i32) -> Addon {
            addons::table.find(id).cached().first(conn).await.unwrap()
        }

        /// The row as the database has it (no cache).
        async fn truth(conn: &mut AsyncCachedConnection<Db>, id: i32) -> Addon {
            RunQueryDsl::first(addons::table.find(id), conn.inner())
                .await
                .unwrap()
        }

        #[test]
        fn hit_after_miss_sends_no_statement() {
            runtime().block_on(async {
                let Some(mut e) = env("hit").await else {
                    return;
                };
                let (a, first) = addons::table
                    .find(1)
                    .cached()
                    .load_with_outcome::<Addon>(&mut e.conn)
                    .await
                    .unwrap();
                assert_eq!(first, ReadOutcome::Miss);
                assert_eq!(e.queries(), 1);
                let (b, second) = addons::table
                    .find(1)
                    .cached()
                    .load_with_outcome::<Addon>(&mut e.conn)
                    .await
                    .unwrap();
                assert_eq!(second, ReadOutcome::Hit);
                assert_eq!(e.queries(), 0, "a hit reaches the database");
                assert_eq!(a, b);
                // get_result, get_results, counts.
                let one: Addon = addons::table
                    .find(2)
                    .cached()
                    .get_result(&mut e.conn)
                    .await
                    .unwrap();
                let all: Vec<Addon> = addons::table
                    .order(addons::id)
                    .cached()
                    .get_results(&mut e.conn)
                    .await
                    .unwrap();
                assert_eq!(all.len(), 2);
                assert_eq!(all[1], one);
                let n = addons::table
                    .filter(addons::val.eq(42))
                    .cached()
                    .cached_count(&mut e.conn)
                    .await
                    .unwrap();
                assert_eq!(n, 2);
                e.queries();
                let n = addons::table
                    .filter(addons::val.eq(42))
                    .cached()
                    .cached_count(&mut e.conn)
                    .await
                    .unwrap();
                assert_eq!((n, e.queries()), (2, 0));
            });
        }

        /// A hit never waits for tokio's blocking pool: in-process caches answer inline,
        /// memcached and Redis through their non-blocking clients. The pool's only thread is
        /// held busy while the hits run; a hit that needed it would wait for it (and time
        /// out).
        #[test]
        fn hits_need_no_blocking_thread() {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .max_blocking_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let Some(mut e) = env("no_blocking").await else {
                    return;
                };
                let first = find(&mut e.conn, 1).await;
                assert_eq!(find(&mut e.conn, 1).await, first);
                e.queries();
                let release = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let started = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let (r, s) = (release.clone(), started.clone());
                let held = tokio::task::spawn_blocking(move || {
                    s.store(true, std::sync::atomic::Ordering::SeqCst);
                    while !std::sync::atomic::AtomicBool::load(
                        &r,
                        std::sync::atomic::Ordering::SeqCst,
                    ) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                });
                while !std::sync::atomic::AtomicBool::load(
                    &started,
                    std::sync::atomic::Ordering::SeqCst,
                ) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let mut waited = None;
                for i in 0..20 {
                    match tokio::time::timeout(Duration::from_secs(3), find(&mut e.conn, 1)).await {
                        Ok(got) => assert_eq!(got, first),
                        Err(_) => {
                            waited = Some(i);
                            break;
                        }
                    }
                }
                release.store(true, std::sync::atomic::Ordering::SeqCst);
                held.await.unwrap();
                assert_eq!(waited, None, "a hit waited for the blocking pool");
                assert_eq!(e.queries(), 0, "every read was a hit");
            });
        }

        #[test]
        fn write_helper_invalidates() {
            runtime().block_on(async {
                let Some(mut e) = env("write").await else {
                    return;
                };
                let mut a = find(&mut e.conn, 1).await;
                let n = addons::table
                    .filter(addons::val.eq(42))
                    .cached()
                    .cached_count(&mut e.conn)
                    .await
                    .unwrap();
                assert_eq!(n, 2);
                a.val = 100;
                let saved: Addon = e.conn.save_changes(&a).await.unwrap();
                assert_eq!(saved.val, 100);
                e.queries();
                assert_eq!(find(&mut e.conn, 1).await.val, 100);
                assert!(e.queries() > 0, "the stale entry was served");
                let n = addons::table
                    .filter(addons::val.eq(42))
                    .cached()
                    .cached_count(&mut e.conn)
                    .await
                    .unwrap();
                assert_eq!(n, 1, "the count was not invalidated");
                // Whole-table helpers and manual invalidation.
                let _ = find(&mut e.conn, 2).await;
                e.conn
                    .execute_bulk::<Addon, _>(
                        diesel::update(addons::table.filter(addons::id.eq(2)))
                            .set(addons::val.eq(7)),
                    )
                    .await
                    .unwrap();
                assert_eq!(find(&mut e.conn, 2).await.val, 7);
            });
        }

        /// A transaction opened with raw SQL (`BEGIN` through `batch_execute`, or a
        /// statement): reads inside it bypass the cache, write helpers refuse, and its plain
        /// writes are invalidated again after its COMMIT, so a reader that refilled the old
        /// row before the COMMIT does not keep it. A ROLLBACK leaves a fresh entry alone.
        #[test]
        fn raw_sql_transactions_invalidate_after_commit() {
            use diesel_async::SimpleAsyncConnection;
            runtime().block_on(async {
                let Some(mut e) = env("raw_tx").await else {
                    return;
                };
                let mut other = e.another().await;
                let before = find(&mut other, 1).await;
                e.conn.batch_execute("BEGIN").await.unwrap();
                diesel::update(addons::table.find(1))
                    .set(addons::val.eq(before.val + 1))
                    .execute(&mut e.conn)
                    .await
                    .unwrap();
                // Inside: the connection sees its write, uncached.
                e.queries();
                let (inside, outcome) = addons::table
                    .find(1)
                    .cached()
                    .load_with_outcome::<Addon>(&mut e.conn)
                    .await
                    .unwrap();
                assert!(matches!(outcome, ReadOutcome::Bypassed(_)), "{outcome:?}");
                assert_eq!(inside[0].val, before.val + 1);
                assert!(e.conn.save_changes::<Addon, _>(&inside[0]).await.is_err());
                // Another connection refills the committed (old) row meanwhile.
                assert_eq!(find(&mut other, 1).await, before);
                e.conn.batch_execute("COMMIT").await.unwrap();
                e.cache.wait_for_delivery(Duration::from_secs(5));
                assert_eq!(
                    find(&mut other, 1).await.val,
                    before.val + 1,
                    "the old row stayed cached after the raw COMMIT"
                );
                // The connection is out of the transaction: its reads hit again.
                let _ = find(&mut e.conn, 1).await;
                e.queries();
                let _ = find(&mut e.conn, 1).await;
                assert_eq!(e.queries(), 0);
                // A raw ROLLBACK, through a statement this time: nothing committed.
                diesel::sql_query("BEGIN")
                    .execute(&mut e.conn)
                    .await
                    .unwrap();
                diesel::update(addons::table.find(1))
                    .set(addons::val.eq(-1))
                    .execute(&mut e.conn)
                    .await
                    .unwrap();
                diesel::sql_query("ROLLBACK")
                    .execute(&mut e.conn)
                    .await
                    .unwrap();
                assert_eq!(find(&mut other, 1).await.val, before.val + 1);
                assert_eq!(truth(&mut e.conn, 1).await.val, before.val + 1);
                // And a helper works again.
                let mut a = truth(&mut e.conn, 1).await;
                a.val = 5;
                let _: Addon = e.conn.save_changes(&a).await.unwrap();
                assert_eq!(find(&mut other, 1).await.val, 5);
            });
        }

        #[test]
        fn committed_transaction_invalidates_and_nothing_before_commit() {
            runtime().block_on(async {
                let Some(mut e) = env("commit").await else {
                    return;
                };
                let mut other = e.another().await;
                let mut a = find(&mut e.conn, 1).await;
                let cache = e.cache.clone();
                e.conn
                    .transaction(async |conn| {
                        a.val = 100;
                        let _: Addon = conn.save_changes(&a).await?;
                        // The transaction reads its own write.
                        assert_eq!(find(conn, 1).await.val, 100);
                        // Not committed: the cached (old) row is still right for everyone else.
                        let hits = cache.stats().hits;
                        assert_eq!(find(&mut other, 1).await.val, 42);
                        assert_eq!(cache.stats().hits, hits + 1, "invalidated before COMMIT");
                        Ok::<_, diesel::result::Error>(())
                    })
                    .await
                    .unwrap();
                let misses = e.cache.stats().misses;
                assert_eq!(find(&mut e.conn, 1).await.val, 100);
                assert_eq!(e.cache.stats().misses, misses + 1, "COMMIT must invalidate");
                assert_eq!(find(&mut other, 1).await.val, 100);
                // Nested: a savepoint's writes join the outer transaction's queue.
                e.conn
                    .transaction(async |conn| {
                        conn.transaction(async |conn| {
                            let _: Addon = conn
                                .save_changes(&Addon {
                                    val: 5,
                                    ..a.clone()
                                })
                                .await?;
                            Ok::<_, diesel::result::Error>(())
                        })
                        .await
                    })
                    .await
                    .unwrap();
                assert_eq!(find(&mut other, 1).await.val, 5);
            });
        }

        #[test]
        fn plain_writes_on_the_wrapper_invalidate() {
            runtime().block_on(async {
                let Some(mut e) = env("plain").await else {
                    return;
                };
                let _ = find(&mut e.conn, 1).await;
                let n = diesel::update(addons::table.find(1))
                    .set(addons::val.eq(9))
                    .execute(&mut e.conn)
                    .await
                    .unwrap();
                assert_eq!(n, 1);
                // Delivered in the background; until then reads of `addons` bypass the cache.
                assert_eq!(find(&mut e.conn, 1).await.val, 9);
                assert!(e.cache.wait_for_delivery(Duration::from_secs(10)));
                assert_eq!(find(&mut e.conn, 1).await.val, 9);
                let mut other = e.another().await;
                assert_eq!(find(&mut other, 1).await.val, 9);
                // Inside a transaction: at COMMIT, and the transaction reads its own write.
                e.conn
                    .transaction(async |conn| {
                        diesel::update(addons::table.find(1))
                            .set(addons::val.eq(10))
                            .execute(&mut *conn)
                            .await?;
                        assert_eq!(find(conn, 1).await.val, 10);
                        Ok::<_, diesel::result::Error>(())
                    })
                    .await
                    .unwrap();
                assert!(e.cache.wait_for_delivery(Duration::from_secs(10)));
                assert_eq!(find(&mut other, 1).await.val, 10);
            });
        }

        #[test]
        fn blocking_and_async_connections_share_entries() {
            use caching_tests::async_db::AsyncTestDb;
            runtime().block_on(async {
                let Some(mut e) = env("shared").await else {
                    return;
                };
                let _ = find(&mut e.conn, 1).await; // filled through the async connection
                let cache = e.cache.clone();
                let place = e.place().to_string();
                let hits = tokio::task::spawn_blocking(move || {
                    let raw = <Db as AsyncTestDb>::connect_blocking(&place);
                    let mut sync = caching_diesel::CachedConnection::with_caches(
                        raw,
                        caching_diesel::CacheSet::new(cache.clone()),
                    );
                    let before = cache.stats().hits;
                    let a: Addon = caching_diesel::CachedRunQueryDsl::first(
                        addons::table.find(1).cached(),
                        &mut sync,
                    )
                    .unwrap();
                    let hits = cache.stats().hits - before;
                    // A blocking write invalidates what the async connection cached.
                    let _: Addon = sync.save_changes(&Addon { val: 77, ..a }).unwrap();
                    hits
                })
                .await
                .unwrap();
                assert_eq!(
                    hits, 1,
                    "the blocking connection missed the async connection's entry"
                );
                assert_eq!(find(&mut e.conn, 1).await.val, 77);
            });
        }

        #[test]
        fn rollback_invalidates_nothing() {
            runtime().block_on(async {
                let Some(mut e) = env("rollback").await else {
                    return;
                };
                let mut a = find(&mut e.conn, 1).await;
                let r = e
                    .conn
                    .transaction(async |conn| {
                        a.val = 100;
                        let _: Addon = conn.save_changes(&a).await?;
                        Err::<(), _>(diesel::result::Error::RollbackTransaction)
                    })
                    .await;
                assert!(r.is_err());
                e.queries();
                assert_eq!(find(&mut e.conn, 1).await.val, 42);
                assert_eq!(e.queries(), 0, "a rollback invalidated the entry");
                assert!(!e.conn.in_transaction());
            });
        }

        /// Reads through a fresh connection: the cached row must be the database's.
        async fn check_not_stale(e: &AsyncEnv<Db>, k: usize) {
            // What a dropped future left running (a blocking invalidation, the background
            // delivery) gets a moment to land.
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(
                e.cache.wait_for_delivery(Duration::from_secs(10)),
                "undelivered (k = {k})"
            );
            let mut fresh = e.another().await;
            let db = truth(&mut fresh, 1).await;
            for _ in 0..2 {
                let cached = find(&mut fresh, 1).await;
                assert_eq!(cached, db, "stale after dropping at poll {k}");
            }
        }

        #[test]
        fn a_transaction_dropped_at_any_await_leaves_nothing_stale() {
            runtime().block_on(async {
                let Some(e) = env("cancel_tx").await else {
                    return;
                };
                // A transaction whose every reply was already there when first polled (seen
                // once on a loaded machine) drops nothing mid-way: such a round is run again.
                for round in 0..3 {
                    for k in 1..=200 {
                        let mut conn = e.another().await;
                        let mut a = find(&mut conn, 1).await;
                        a.val += 1;
                        let fut = conn.transaction(async |conn| {
                            let _: Addon = conn.save_changes(&a).await?;
                            Ok::<_, diesel::result::Error>(())
                        });
                        let done = PollLimit::new(fut, k).await;
                        drop(conn);
                        check_not_stale(&e, k).await;
                        if let Some(r) = done {
                            r.unwrap();
                            eprintln!("transaction finished at poll {k} (round {round})");
                            if k > 1 {
                                return;
                            }
                            break;
                        }
                        assert!(k < 200, "the transaction never finished");
                    }
                }
                panic!("the transaction never awaited: nothing was dropped mid-way");
            });
        }

        #[test]
        fn a_write_dropped_at_any_await_leaves_nothing_stale() {
            runtime().block_on(async {
                let Some(e) = env("cancel_write").await else {
                    return;
                };
                // As for transactions: a write done at the first poll is run again.
                for round in 0..3 {
                    for k in 1..=200 {
                        let mut conn = e.another().await;
                        let mut a = find(&mut conn, 1).await;
                        a.val += 1;
                        let done = PollLimit::new(conn.save_changes::<Addon, _>(&a), k).await;
                        drop(conn);
                        check_not_stale(&e, k).await;
                        if let Some(r) = done {
                            r.unwrap();
                            eprintln!("write finished at poll {k} (round {round})");
                            if k > 1 {
                                return;
                            }
                            break;
                        }
                        assert!(k < 200, "the write never finished");
                    }
                }
                panic!("the write never awaited: nothing was dropped mid-way");
            });
        }
    };
}

#[cfg(feature = "sqlite")]
mod sqlite_locmem {
    suite!(
        diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>,
        BackendKind::LocMem
    );
}
#[cfg(feature = "sqlite")]
mod sqlite_memcached {
    suite!(
        diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>,
        BackendKind::Memcached
    );
}
#[cfg(all(feature = "sqlite", feature = "redis"))]
mod sqlite_redis {
    suite!(
        diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>,
        BackendKind::Redis
    );
}
#[cfg(feature = "postgres")]
mod postgres_locmem {
    suite!(diesel_async::AsyncPgConnection, BackendKind::LocMem);
}
#[cfg(feature = "postgres")]
mod postgres_memcached {
    suite!(diesel_async::AsyncPgConnection, BackendKind::Memcached);
}
#[cfg(all(feature = "postgres", feature = "redis"))]
mod postgres_redis {
    suite!(diesel_async::AsyncPgConnection, BackendKind::Redis);
}
#[cfg(feature = "mysql")]
mod mysql_locmem {
    suite!(diesel_async::AsyncMysqlConnection, BackendKind::LocMem);
}
#[cfg(feature = "mysql")]
mod mysql_memcached {
    suite!(diesel_async::AsyncMysqlConnection, BackendKind::Memcached);
}
#[cfg(all(feature = "mysql", feature = "redis"))]
mod mysql_redis {
    suite!(diesel_async::AsyncMysqlConnection, BackendKind::Redis);
}
