//! Fetch by id (`.cached().fetch_by_id(..)`, the original's FETCH_BY_ID): ids through a
//! cached query, rows from per-object entries (one multi-get), the missing ones with one
//! `IN` query. On every database × backend; each check counts the statements that reached
//! the database.
//!
//! Fixture: users (1, fliggy), (2, clouseroo); addons (1, 42, 1, 2), (2, 42, 1, 2), plus
//! addon 3 (val 1, authors 2, 2) created through the write helpers.

macro_rules! suite {
    ($conn:ty, $kind:expr) => {
        use caching_diesel::prelude::*;
        use caching_tests::db::schema::addons;
        use caching_tests::db::{Addon, BackendKind, Env, Writes};

        type Db = $conn;
        const KIND: BackendKind = $kind;

        fn env(test: &str) -> Option<Env<Db>> {
            let mut e = Env::suite(test, KIND)?;
            <Db as Writes>::create_addon(&mut e.conn, &addon(3, 1, 2)).unwrap();
            e.queries();
            Some(e)
        }

        fn addon(id: i32, val: i32, author1_id: i32) -> Addon {
            Addon {
                id,
                val,
                author1_id,
                author2_id: 2,
            }
        }

        /// `addons.filter(author1_id.eq(a)).order(id)`, fetched by id.
        fn by_author(e: &mut Env<Db>, a: i32) -> Vec<Addon> {
            addons::table
                .filter(addons::author1_id.eq(a))
                .order(addons::id)
                .cached()
                .fetch_by_id(&mut e.conn)
                .unwrap()
        }

        /// Every add-on, newest first, fetched by id.
        fn all_desc(e: &mut Env<Db>) -> Vec<Addon> {
            addons::table
                .order(addons::id.desc())
                .cached()
                .fetch_by_id(&mut e.conn)
                .unwrap()
        }

        /// The same rows read from the database without the cache.
        fn fresh(e: &mut Env<Db>, ids: &[i32]) -> Vec<Addon> {
            let mut rows: Vec<Addon> = addons::table
                .filter(addons::id.eq_any(ids.to_vec()))
                .load(e.conn.inner())
                .unwrap();
            rows.sort_by_key(|a| ids.iter().position(|i| *i == a.id));
            e.queries();
            rows
        }

        fn ids(rows: &[Addon]) -> Vec<i32> {
            rows.iter().map(|a| a.id).collect()
        }

        #[test]
        fn rows_come_from_their_entries_and_only_missing_ones_are_loaded() {
            let Some(mut e) = env("fbi_entries") else {
                return;
            };
            let first = by_author(&mut e, 1);
            assert_eq!(ids(&first), [1, 2]);
            assert_eq!(e.queries(), 2, "the ids, then the rows with one IN query");
            assert_eq!(first, fresh(&mut e, &[1, 2]));
            assert_eq!(by_author(&mut e, 1), first);
            assert_eq!(e.queries(), 0, "ids and rows from the cache");
            // An overlapping query: its ids, then only add-on 3, which no entry holds.
            let all = all_desc(&mut e);
            assert_eq!(ids(&all), [3, 2, 1]);
            assert_eq!(e.queries(), 2);
            let rows_before = e.cache.stats().hits;
            assert_eq!(all_desc(&mut e), all);
            assert_eq!(e.queries(), 0);
            assert_eq!(
                e.cache.stats().hits - rows_before,
                4,
                "one id list and three entries"
            );
            // A third query over cached rows asks the database for its ids only.
            let two: Vec<Addon> = addons::table
                .filter(addons::val.eq(42))
                .order(addons::id.desc())
                .cached()
                .fetch_by_id(&mut e.conn)
                .unwrap();
            assert_eq!(ids(&two), [2, 1]);
            assert_eq!(e.queries(), 1, "rows 1 and 2 come from their entries");
        }

        #[test]
        fn a_saved_row_is_read_anew_in_every_list() {
            let Some(mut e) = env("fbi_save") else { return };
            by_author(&mut e, 1);
            all_desc(&mut e);
            e.queries();
            let _: Addon = e.conn.save_changes(&addon(1, 7, 1)).unwrap();
            e.queries();
            let mine = by_author(&mut e, 1);
            assert_eq!(mine, fresh(&mut e, &[1, 2]));
            assert_eq!(mine[0].val, 7);
            let all = all_desc(&mut e);
            assert_eq!(all, fresh(&mut e, &[3, 2, 1]));
            // Add-on 2 and 3 stayed cached: the second list loaded its ids only.
            assert_eq!(by_author(&mut e, 1), mine);
            assert_eq!(e.queries(), 0);
        }

        #[test]
        fn rows_entering_and_leaving_a_list_are_seen() {
            let Some(mut e) = env("fbi_enter") else {
                return;
            };
            assert_eq!(ids(&by_author(&mut e, 1)), [1, 2]);
            <Db as Writes>::create_addon(&mut e.conn, &addon(4, 5, 1)).unwrap();
            assert_eq!(ids(&by_author(&mut e, 1)), [1, 2, 4]);
            let _: Addon = e.conn.save_changes(&addon(2, 42, 2)).unwrap();
            assert_eq!(ids(&by_author(&mut e, 1)), [1, 4]);
            assert_eq!(ids(&by_author(&mut e, 2)), [2, 3]);
            assert_eq!(<Db as Writes>::bulk_delete_val(&mut e.conn, 42).unwrap(), 2);
            assert_eq!(ids(&by_author(&mut e, 1)), [4]);
            assert_eq!(ids(&by_author(&mut e, 2)), [3]);
            assert_eq!(ids(&all_desc(&mut e)), [4, 3]);
        }

        #[test]
        fn a_plain_diesel_write_reaches_the_entries() {
            let Some(mut e) = env("fbi_plain") else {
                return;
            };
            by_author(&mut e, 1);
            diesel::update(addons::table.find(2))
                .set(addons::val.eq(9))
                .execute(&mut e.conn)
                .unwrap();
            e.queries();
            let rows = by_author(&mut e, 1);
            assert_eq!(rows, fresh(&mut e, &[1, 2]));
            assert_eq!(rows[1].val, 9);
        }

        #[test]
        fn a_transaction_reads_its_own_writes_and_turned_off_reads_the_database() {
            let Some(mut e) = env("fbi_tx") else { return };
            by_author(&mut e, 1);
            e.queries();
            e.conn
                .transaction(|conn| {
                    let _: Addon = conn.save_changes(&addon(1, 11, 1))?;
                    let rows: Vec<Addon> = addons::table
                        .filter(addons::author1_id.eq(1))
                        .order(addons::id)
                        .cached()
                        .fetch_by_id(conn)?;
                    assert_eq!(rows[0].val, 11, "the transaction sees its own write");
                    Err::<(), _>(diesel::result::Error::RollbackTransaction)
                })
                .unwrap_err();
            e.queries();
            assert_eq!(
                by_author(&mut e, 1)[0].val,
                42,
                "rolled back: the cached value holds"
            );
            assert_eq!(e.queries(), 0);
            let off: Vec<Addon> = addons::table
                .filter(addons::author1_id.eq(1))
                .order(addons::id)
                .cached()
                .enabled(false)
                .fetch_by_id(&mut e.conn)
                .unwrap();
            assert_eq!(ids(&off), [1, 2]);
            assert_eq!(e.queries(), 2, "turned off: ids and rows from the database");
        }
    };
}

caching_tests::for_each_database!(suite);
