//! Per-table read outcomes (`Cache::table_stats`): every read through the cached connection
//! counts under each table it depends on, as a hit, a miss or a bypass with its reason,
//! including reads the global counters leave out (caching turned off for the query, SQL whose
//! dependencies cannot be read). Statements are counted with Diesel's instrumentation to tie
//! each outcome to what reached the database.

macro_rules! suite {
    ($conn:ty, $kind:expr) => {
        use caching_diesel::core::TableStats;
        use caching_diesel::prelude::*;
        use caching_tests::db::schema::{addons, users};
        use caching_tests::db::{Addon, BackendKind, Env, User};

        type Db = $conn;
        const KIND: BackendKind = $kind;

        fn env(test: &str) -> Option<Env<Db>> {
            Env::suite(test, KIND)
        }

        fn table(e: &Env<Db>, name: &str) -> TableStats {
            e.cache.table_stats().get(name).cloned().unwrap_or_default()
        }

        fn outcomes(t: &TableStats) -> (u64, u64, u64) {
            (t.hits, t.misses, t.bypassed)
        }

        fn find_addon(e: &mut Env<Db>, id: i32) -> Addon {
            addons::table.find(id).cached().first(&mut e.conn).unwrap()
        }

        #[test]
        fn hits_and_misses_count_per_table() {
            let Some(mut e) = env("ts_hit") else { return };
            assert!(e.cache.table_stats().is_empty());
            find_addon(&mut e, 1);
            assert_eq!(e.queries(), 1);
            assert_eq!(outcomes(&table(&e, "addons")), (0, 1, 0));
            assert_eq!(table(&e, "addons").fills, 1);
            find_addon(&mut e, 1);
            find_addon(&mut e, 1);
            assert_eq!(e.queries(), 0);
            assert_eq!(outcomes(&table(&e, "addons")), (2, 1, 0));
            assert_eq!(
                table(&e, "users"),
                TableStats::default(),
                "users was not read"
            );

            // A join counts under both tables; a count too.
            let join = || {
                addons::table
                    .inner_join(users::table)
                    .filter(users::id.eq(1))
                    .select((addons::id, users::name))
                    .order(addons::id)
                    .cached()
            };
            let rows: Vec<(i32, String)> = join().load(&mut e.conn).unwrap();
            let again: Vec<(i32, String)> = join().load(&mut e.conn).unwrap();
            assert_eq!((rows.len(), again), (2, rows));
            let n: i64 = users::table.cached().count(&mut e.conn).unwrap();
            assert_eq!(n, 2);
            assert_eq!(e.queries(), 2);
            assert_eq!(outcomes(&table(&e, "addons")), (3, 2, 0));
            assert_eq!(outcomes(&table(&e, "users")), (1, 2, 0));
            let s = e.cache.stats();
            let total: u64 = e.cache.table_stats().values().map(|t| t.hits).sum();
            assert_eq!(
                (s.hits, total),
                (3, 4),
                "the join's hit counts under both tables"
            );
            assert_eq!(table(&e, "addons").reads(), 5);

            // An empty result is not stored: a miss, and a skipped fill with its reason.
            let none: Vec<User> = users::table
                .filter(users::id.eq(99))
                .cached()
                .load(&mut e.conn)
                .unwrap();
            assert!(none.is_empty());
            let u = table(&e, "users");
            assert_eq!((u.misses, u.skipped_fills), (3, 1));
            assert_eq!(u.skipped_fills_by.get("empty result"), Some(&1));
        }

        fn find_user(e: &mut Env<Db>, id: i32) -> User {
            users::table.find(id).cached().first(&mut e.conn).unwrap()
        }

        #[test]
        fn a_write_makes_the_reads_it_invalidates_miss() {
            let Some(mut e) = env("ts_write") else { return };
            find_addon(&mut e, 1);
            find_user(&mut e, 1);
            find_user(&mut e, 2);
            let _: User = e
                .conn
                .save_changes(&User {
                    id: 1,
                    name: "renamed".into(),
                })
                .unwrap();
            e.queries();
            assert_eq!(find_user(&mut e, 1).name, "renamed");
            assert_eq!(e.queries(), 1, "user 1 was written: a miss");
            find_user(&mut e, 2);
            assert_eq!(e.queries(), 0, "user 2 was not: a hit");
            find_addon(&mut e, 1);
            assert_eq!(e.queries(), 1, "add-on 1 points at user 1: a miss");
            assert_eq!(outcomes(&table(&e, "users")), (1, 3, 0));
            assert_eq!(outcomes(&table(&e, "addons")), (0, 2, 0));
            assert_eq!(table(&e, "users").fills, 3);
        }

        #[test]
        fn a_fetch_by_id_counts_its_ids_query_and_each_row() {
            let Some(mut e) = env("ts_fetch") else { return };
            let fetch = |e: &mut Env<Db>| -> Vec<Addon> {
                addons::table
                    .filter(addons::author1_id.eq(1))
                    .order(addons::id)
                    .cached()
                    .fetch_by_id(&mut e.conn)
                    .unwrap()
            };
            assert_eq!(fetch(&mut e).len(), 2);
            assert_eq!(e.queries(), 2, "the ids, then the rows");
            let a = table(&e, "addons");
            assert_eq!(
                (outcomes(&a), a.fills),
                ((0, 3, 0), 3),
                "the ids' entry and two rows"
            );
            assert_eq!(fetch(&mut e).len(), 2);
            assert_eq!(e.queries(), 0);
            assert_eq!(outcomes(&table(&e, "addons")), (3, 3, 0));
        }

        #[test]
        fn bypassed_reads_count_with_their_reason() {
            let Some(mut e) = env("ts_bypass") else {
                return;
            };
            // Turned off for the query: the global counters leave it out, the table counts it.
            for _ in 0..2 {
                let _: Addon = addons::table
                    .find(1)
                    .cached()
                    .enabled(false)
                    .first(&mut e.conn)
                    .unwrap();
            }
            assert_eq!(e.queries(), 2);
            assert_eq!(e.cache.stats(), Default::default());
            let a = table(&e, "addons");
            assert_eq!(outcomes(&a), (0, 0, 2));
            assert_eq!(
                a.bypassed_by.get("caching turned off for this query"),
                Some(&2)
            );

            // A transaction that wrote a table reads it from the database; a table it did not
            // write is looked up, but not filled.
            find_addon(&mut e, 2);
            e.queries();
            e.conn
                .transaction::<_, diesel::result::Error, _>(|conn| {
                    let _: User = conn.save_changes(&User {
                        id: 1,
                        name: "in tx".into(),
                    })?;
                    let u: User = users::table.find(1).cached().first(conn)?;
                    assert_eq!(u.name, "in tx");
                    let _: Addon = addons::table.find(1).cached().first(conn)?;
                    let _: Addon = addons::table.find(2).cached().first(conn)?;
                    Ok(())
                })
                .unwrap();
            let u = table(&e, "users");
            assert_eq!(outcomes(&u), (0, 0, 1));
            assert_eq!(
                u.bypassed_by.get("transaction sees its own writes"),
                Some(&1)
            );
            assert_eq!(e.cache.stats().bypassed_reads, 1);
            let a = table(&e, "addons");
            assert_eq!(
                outcomes(&a),
                (1, 2, 2),
                "addons 2 hit; addons 1 missed, unfilled"
            );
            assert_eq!(a.skipped_fills_by.get("inside a transaction"), Some(&1));
            // Statements: BEGIN, UPDATE (+ fetch), the user, addons 1, COMMIT; addons 2 hit.
            let sent = e.queries();
            find_addon(&mut e, 1);
            assert_eq!(
                e.queries(),
                1,
                "the read inside the transaction did not fill"
            );
            assert!(sent >= 4, "{sent}");

            // SQL whose dependencies cannot be read: bypassed, under its model's table.
            if <Db as caching_diesel::CacheConnection>::BACKEND == "sqlite" {
                return; // no FOR UPDATE in SQLite
            }
            let locked: Vec<Addon> = diesel::sql_query(
                "SELECT id, val, author1_id, author2_id FROM addons WHERE id = 1 FOR UPDATE",
            )
            .cached()
            .load(&mut e.conn)
            .unwrap();
            assert_eq!(locked.len(), 1);
            assert_eq!(
                table(&e, "addons")
                    .bypassed_by
                    .get("dependencies cannot be read from the SQL"),
                Some(&1)
            );
        }
    };
}

caching_tests::for_each_database!(suite);
