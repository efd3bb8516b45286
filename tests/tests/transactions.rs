//! SCENARIOS 34: invalidation waits for the outermost COMMIT; ROLLBACK (and a savepoint's
//! rollback) drops what it queued; a transaction reads its own writes through `.cached()`; no
//! read inside a transaction fills the cache; a transaction begun behind the cache's back is
//! detected; a failed COMMIT invalidates nothing that did not commit.

macro_rules! suite {
    ($conn:ty, $kind:expr) => {
        use caching_diesel::prelude::*;
        use caching_diesel::{CacheSet, CachedConnection};
        use caching_tests::db::schema::addons;
        use caching_tests::db::{Addon, BackendKind, Env, TestDb};
        #[allow(unused_imports)]
        use diesel::connection::SimpleConnection;

        type Db = $conn;
        const KIND: BackendKind = $kind;

        fn env(test: &str) -> Option<Env<Db>> {
            Env::suite(test, KIND)
        }

        fn find(conn: &mut CachedConnection<Db>, id: i32) -> Addon {
            addons::table.find(id).cached().first(conn).unwrap()
        }

        /// Another connection sharing the cache, on its own copy of the fixture: a cache hit
        /// there proves the entry was not invalidated.
        fn observer(e: &Env<Db>, test: &str) -> Option<CachedConnection<Db>> {
            let raw = <Db as TestDb>::fresh(&format!("{}_{}_obs", <Db as TestDb>::NAME, test))?;
            Some(CachedConnection::with_caches(
                raw,
                CacheSet::new(e.cache.clone()),
            ))
        }

        #[test]
        fn scenario_34_invalidation_waits_for_commit() {
            let Some(mut e) = env("t_commit") else { return };
            let Some(mut other) = observer(&e, "t_commit") else {
                return;
            };
            let mut a = find(&mut e.conn, 1);
            let cache = e.cache.clone();
            e.conn
                .transaction::<_, diesel::result::Error, _>(|conn| {
                    a.val = 100;
                    let _: Addon = conn.save_changes(&a)?;
                    let hits = cache.stats().hits;
                    // Not committed: the cached (old) row is still right for everyone else.
                    assert_eq!(find(&mut other, 1).val, 42);
                    assert_eq!(cache.stats().hits, hits + 1, "invalidated before COMMIT");
                    Ok(())
                })
                .unwrap();
            let misses = e.cache.stats().misses;
            assert_eq!(find(&mut e.conn, 1).val, 100);
            assert_eq!(e.cache.stats().misses, misses + 1, "COMMIT must invalidate");
        }

        #[test]
        fn scenario_34_rollback_invalidates_nothing() {
            let Some(mut e) = env("t_rollback") else {
                return;
            };
            let mut a = find(&mut e.conn, 1);
            let r = e.conn.transaction::<(), diesel::result::Error, _>(|conn| {
                a.val = 100;
                let _: Addon = conn.save_changes(&a)?;
                Err(diesel::result::Error::RollbackTransaction)
            });
            assert!(r.is_err());
            e.queries();
            assert_eq!(find(&mut e.conn, 1).val, 42);
            assert_eq!(e.queries(), 0, "rolled back: the cached row stays valid");
        }

        #[test]
        fn scenario_34_savepoint_rollback_drops_only_its_own() {
            let Some(mut e) = env("t_savepoint") else {
                return;
            };
            // Give addon 2 other authors, so invalidating addon 1 (and through its authors'
            // flush lists, their other add-ons) does not reach it.
            diesel::update(addons::table.find(2))
                .set((addons::author1_id.eq(3), addons::author2_id.eq(4)))
                .execute(&mut *e.conn)
                .unwrap();
            let mut a1 = find(&mut e.conn, 1);
            let mut a2 = find(&mut e.conn, 2);
            e.conn
                .transaction::<_, diesel::result::Error, _>(|conn| {
                    a1.val = 101;
                    let _: Addon = conn.save_changes(&a1)?;
                    let inner = conn.transaction::<(), diesel::result::Error, _>(|conn| {
                        a2.val = 102;
                        let _: Addon = conn.save_changes(&a2)?;
                        Err(diesel::result::Error::RollbackTransaction)
                    });
                    assert!(inner.is_err());
                    Ok(())
                })
                .unwrap();
            e.queries();
            assert_eq!(find(&mut e.conn, 2).val, 42);
            assert_eq!(
                e.queries(),
                0,
                "the savepoint's write was rolled back: addon 2 stays cached"
            );
            assert_eq!(find(&mut e.conn, 1).val, 101);
            assert!(
                e.queries() > 0,
                "the outer write committed: addon 1 was invalidated"
            );
        }

        #[test]
        fn scenario_34_transaction_reads_its_own_writes_and_never_fills() {
            let Some(mut e) = env("t_own") else { return };
            let mut a = find(&mut e.conn, 1);
            let _ = find(&mut e.conn, 2);
            let cache = e.cache.clone();
            let fills = cache.stats().fills;
            e.conn
                .transaction::<_, diesel::result::Error, _>(|conn| {
                    a.val = 7;
                    let _: Addon = conn.save_changes(&a)?;
                    assert_eq!(find(conn, 1).val, 7, "own write visible through .cached()");
                    assert_eq!(find(conn, 1).val, 7);
                    let list: Vec<Addon> = addons::table.order(addons::id).cached().load(conn)?;
                    assert_eq!(list[0].val, 7);
                    Ok(())
                })
                .unwrap();
            assert_eq!(
                cache.stats().fills,
                fills,
                "nothing filled inside the transaction"
            );
            assert_eq!(find(&mut e.conn, 1).val, 7);
            assert_eq!(cache.stats().fills, fills + 1, "fills resume after COMMIT");
        }

        #[test]
        fn scenario_34_foreign_transactions_are_detected() {
            let Some(mut e) = env("t_foreign") else {
                return;
            };
            let a = find(&mut e.conn, 1);
            (*e.conn).begin_test_transaction().unwrap();
            assert!(e.conn.in_transaction());
            let err = e.conn.save_changes::<Addon, _>(&a).unwrap_err();
            assert!(
                err.to_string().contains("CachedConnection::transaction"),
                "{err}"
            );
            let stats = e.cache.stats();
            e.queries();
            let _ = find(&mut e.conn, 1);
            assert!(
                e.queries() > 0,
                "reads inside a foreign transaction bypass the cache"
            );
            let after = e.cache.stats();
            assert_eq!(after.bypassed_reads, stats.bypassed_reads + 1);
            assert_eq!(
                (after.hits, after.misses, after.fills),
                (stats.hits, stats.misses, stats.fills)
            );
        }
    };
}

caching_tests::for_each_database!(suite, sqlite_locmem: {

    #[test]
    fn scenario_34_failed_commit_invalidates_nothing() {
        // A deferred foreign-key violation makes SQLite refuse the COMMIT: the transaction,
        // and the write queued in it, never happened.
        let Some(mut e) = env("t_failed_commit") else {
            return;
        };
        e.conn
            .batch_execute(
                "PRAGMA foreign_keys = ON;
                 CREATE TABLE parents (id INTEGER PRIMARY KEY);
                 CREATE TABLE children (id INTEGER PRIMARY KEY,
                   parent_id INTEGER REFERENCES parents(id) DEFERRABLE INITIALLY DEFERRED);",
            )
            .unwrap();
        let mut a = find(&mut e.conn, 1);
        let r = e.conn.transaction::<_, diesel::result::Error, _>(|conn| {
            a.val = 500;
            let _: Addon = conn.save_changes(&a)?;
            conn.batch_execute("INSERT INTO children VALUES (1, 99)")?;
            Ok(())
        });
        assert!(r.is_err(), "COMMIT must fail on the deferred constraint");
        e.queries();
        assert_eq!(find(&mut e.conn, 1).val, 42);
        assert_eq!(e.queries(), 0, "nothing committed, nothing invalidated");
        let direct: Addon = addons::table.find(1).first(&mut *e.conn).unwrap();
        assert_eq!(direct.val, 42);
    }

    #[cfg(feature = "r2d2")]
    #[test]
    fn scenario_34_pooled_connections_defer_too() {
        use caching_diesel::pool::CachedConnectionManager;
        let dir =
            std::env::temp_dir().join(format!("{}.db", caching_tests::db::unique_name("pool")));
        let url = dir.to_string_lossy().to_string();
        let cache = caching_diesel::Cache::locmem();
        let manager = CachedConnectionManager::<diesel::SqliteConnection>::new(
            url.clone(),
            CacheSet::new(cache.clone()),
        );
        let pool = r2d2::Pool::builder().max_size(2).build(manager).unwrap();
        let mut conn = pool.get().unwrap();
        conn.batch_execute("CREATE TABLE addons (id INTEGER PRIMARY KEY, val INTEGER NOT NULL, author1_id INTEGER NOT NULL, author2_id INTEGER NOT NULL); INSERT INTO addons VALUES (1, 42, 1, 2);").unwrap();
        let mut a = find(&mut conn, 1);
        let mut other = pool.get().unwrap();
        let _ = find(&mut other, 1);
        conn.transaction::<_, diesel::result::Error, _>(|c| {
            a.val = 9;
            let _: Addon = c.save_changes(&a)?;
            Ok(())
        })
        .unwrap();
        assert_eq!(find(&mut other, 1).val, 9);
        drop((conn, other));
        let _ = std::fs::remove_file(dir);
    }
});
