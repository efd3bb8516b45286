//! Issue 8: complete invalidation. Rows that *enter* a cached result (predicate
//! dependencies), every write path seen (plain Diesel and raw SQL through the cached
//! connection), raw aggregate reports and counts. On every database × backend; each check
//! counts the statements that reached the database.
//!
//! Fixture: users (1, fliggy), (2, clouseroo); addons (1, 42, 1, 2), (2, 42, 1, 2), plus
//! addon 3 (val 1, authors 2, 2) created by [`env`] through the write helpers.

macro_rules! suite {
    ($conn:ty, $kind:expr) => {
        use std::time::Duration;

        use caching_diesel::prelude::*;
        use caching_tests::db::schema::{addons, users};
        use caching_tests::db::{Addon, BackendKind, Env, TestDb, User, Writes};
        use diesel::sql_types::{BigInt, Integer};

        type Db = $conn;
        const KIND: BackendKind = $kind;

        fn env_with(
            test: &str,
            f: impl FnOnce(caching_diesel::CacheBuilder) -> caching_diesel::CacheBuilder,
        ) -> Option<Env<Db>> {
            let mut e = Env::suite_configured(test, KIND, f)?;
            <Db as Writes>::create_addon(&mut e.conn, &addon3()).unwrap();
            e.queries();
            Some(e)
        }

        fn env(test: &str) -> Option<Env<Db>> {
            env_with(test, |b| b)
        }

        fn addon3() -> Addon {
            Addon {
                id: 3,
                val: 1,
                author1_id: 2,
                author2_id: 2,
            }
        }

        fn ids(rows: &[Addon]) -> Vec<i32> {
            rows.iter().map(|a| a.id).collect()
        }

        /// `addons.filter(author1_id.eq(a)).order(id)`, cached.
        fn by_author(e: &mut Env<Db>, a: i32) -> Vec<i32> {
            let rows: Vec<Addon> = addons::table
                .filter(addons::author1_id.eq(a))
                .order(addons::id)
                .cached()
                .load(&mut e.conn)
                .unwrap();
            ids(&rows)
        }

        /// `addons.filter(val.eq(v)).order(id)`, cached.
        fn by_val(e: &mut Env<Db>, v: i32) -> Vec<i32> {
            let rows: Vec<Addon> = addons::table
                .filter(addons::val.eq(v))
                .order(addons::id)
                .cached()
                .load(&mut e.conn)
                .unwrap();
            ids(&rows)
        }

        /// Creates add-on 4 (val 5, second author 2) by `author1`, through the write helpers.
        fn create_addon4(e: &mut Env<Db>, author1: i32) {
            <Db as Writes>::create_addon(
                &mut e.conn,
                &Addon {
                    id: 4,
                    val: 5,
                    author1_id: author1,
                    author2_id: 2,
                },
            )
            .unwrap();
            e.queries();
        }

        /// Saves addon 3 with `f` applied, through the write helpers.
        fn save3(e: &mut Env<Db>, f: impl FnOnce(&mut Addon)) {
            let mut a = addon3();
            f(&mut a);
            let _: Addon = e.conn.save_changes(&a).unwrap();
            e.queries();
        }

        /// Reads `read` twice: the second must come from the cache.
        fn cached_twice<T: PartialEq + std::fmt::Debug>(
            e: &mut Env<Db>,
            mut read: impl FnMut(&mut Env<Db>) -> T,
        ) -> T {
            e.queries();
            let a = read(e);
            assert_eq!(e.queries(), 1, "the first read asks the database");
            let b = read(e);
            assert_eq!(e.queries(), 0, "the second read comes from the cache");
            assert_eq!(a, b);
            a
        }

        #[test]
        fn a_row_updated_into_a_filter_enters_it() {
            let Some(mut e) = env("p_into") else { return };
            assert_eq!(cached_twice(&mut e, |e| by_author(e, 1)), [1, 2]);
            save3(&mut e, |a| a.author1_id = 1);
            assert_eq!(by_author(&mut e, 1), [1, 2, 3]);
            assert_eq!(e.queries(), 1);
        }

        #[test]
        fn a_row_updated_out_of_a_filter_leaves_it() {
            let Some(mut e) = env("p_out") else { return };
            assert_eq!(cached_twice(&mut e, |e| by_author(e, 2)), [3]);
            save3(&mut e, |a| a.author1_id = 1);
            assert_eq!(by_author(&mut e, 2), Vec::<i32>::new());
            assert_eq!(e.queries(), 1);
        }

        #[test]
        fn a_write_elsewhere_leaves_a_filtered_list_cached() {
            // The point of predicates over table-level invalidation: renaming user 2 neither
            // changes nor enters the cached `users.id = 1` list. (Users, not add-ons: the
            // add-on model declares two foreign keys, and the original's semantics, kept,
            // make a write to an add-on invalidate every list holding a sibling of its
            // authors.)
            let Some(mut e) = env("p_elsewhere") else {
                return;
            };
            let read = |e: &mut Env<Db>| -> Vec<User> {
                users::table
                    .filter(users::id.eq(1))
                    .cached()
                    .load(&mut e.conn)
                    .unwrap()
            };
            assert_eq!(cached_twice(&mut e, read).len(), 1);
            let _: User = e
                .conn
                .save_changes(&User {
                    id: 2,
                    name: "renamed".into(),
                })
                .unwrap();
            e.queries();
            assert_eq!(read(&mut e)[0].name, "fliggy");
            assert_eq!(e.queries(), 0, "not invalidated by a row it never matched");
            let _: User = e
                .conn
                .save_changes(&User {
                    id: 1,
                    name: "renamed".into(),
                })
                .unwrap();
            e.queries();
            assert_eq!(read(&mut e)[0].name, "renamed");
            assert_eq!(e.queries(), 1);
        }

        #[test]
        fn a_row_updated_into_an_in_list_enters_it() {
            let Some(mut e) = env("p_in") else { return };
            let read = |e: &mut Env<Db>| -> Vec<i32> {
                let rows: Vec<Addon> = addons::table
                    .filter(addons::val.eq_any([7, 42]))
                    .order(addons::id)
                    .cached()
                    .load(&mut e.conn)
                    .unwrap();
                ids(&rows)
            };
            assert_eq!(cached_twice(&mut e, read), [1, 2]);
            save3(&mut e, |a| a.val = 7);
            assert_eq!(read(&mut e), [1, 2, 3]);
            assert_eq!(e.queries(), 1);
        }

        #[test]
        fn a_row_updated_into_a_top_n_enters_it() {
            let Some(mut e) = env("p_topn") else { return };
            let read = |e: &mut Env<Db>| -> Vec<i32> {
                let rows: Vec<Addon> = addons::table
                    .filter(addons::author1_id.eq(1))
                    .order(addons::id.desc())
                    .limit(1)
                    .cached()
                    .load(&mut e.conn)
                    .unwrap();
                ids(&rows)
            };
            assert_eq!(cached_twice(&mut e, read), [2]);
            save3(&mut e, |a| a.author1_id = 1);
            assert_eq!(read(&mut e), [3]);
            assert_eq!(e.queries(), 1);
        }

        #[test]
        fn a_row_updated_into_a_join_enters_it() {
            let Some(mut e) = env("p_join") else { return };
            let read = |e: &mut Env<Db>| -> Vec<(String, i32)> {
                let rows: Vec<(User, Addon)> = users::table
                    .inner_join(addons::table)
                    .filter(addons::val.eq(7))
                    .order(addons::id)
                    .cached()
                    .load(&mut e.conn)
                    .unwrap();
                rows.into_iter().map(|(u, a)| (u.name, a.id)).collect()
            };
            e.queries();
            // The join is empty at first: make it non-empty so that it is cached.
            let _: Addon = e
                .conn
                .save_changes(&Addon {
                    id: 2,
                    val: 7,
                    author1_id: 1,
                    author2_id: 2,
                })
                .unwrap();
            assert_eq!(cached_twice(&mut e, read), [("fliggy".to_string(), 2)]);
            save3(&mut e, |a| a.val = 7);
            assert_eq!(
                read(&mut e),
                [("fliggy".to_string(), 2), ("clouseroo".to_string(), 3)]
            );
            assert_eq!(e.queries(), 1);
        }

        #[test]
        fn an_insert_matching_a_cached_filter_enters_it_by_default() {
            // invalidate_on_create is precise by default (not whole-model).
            let Some(mut e) = env("p_insert") else { return };
            assert_eq!(cached_twice(&mut e, |e| by_author(e, 1)), [1, 2]);
            assert_eq!(cached_twice(&mut e, |e| by_val(e, 42)), [1, 2]);
            create_addon4(&mut e, 1);
            assert_eq!(by_author(&mut e, 1), [1, 2, 4]);
            assert_eq!(e.queries(), 1);
            // (A list the new row does not enter may still miss here: the new add-on's
            // authors' lists link every list holding one of their add-ons.)
            assert_eq!(by_val(&mut e, 42), [1, 2]);
        }

        #[test]
        fn a_plain_diesel_update_through_the_wrapper_is_seen() {
            let Some(mut e) = env("p_plain") else { return };
            assert_eq!(cached_twice(&mut e, |e| by_author(e, 1)), [1, 2]);
            let before = e.cache.stats().plain_writes;
            let n = diesel::update(addons::table.find(3))
                .set(addons::author1_id.eq(1))
                .execute(&mut e.conn)
                .unwrap();
            assert_eq!(n, 1);
            e.queries();
            assert_eq!(by_author(&mut e, 1), [1, 2, 3]);
            assert_eq!(e.queries(), 1);
            assert_eq!(e.cache.stats().plain_writes, before + 1);
        }

        #[test]
        fn a_raw_sql_update_through_the_wrapper_is_seen() {
            let Some(mut e) = env("p_raw") else { return };
            assert_eq!(cached_twice(&mut e, |e| by_author(e, 1)), [1, 2]);
            diesel::sql_query("UPDATE addons SET author1_id = 1 WHERE id = 3")
                .execute(&mut e.conn)
                .unwrap();
            e.queries();
            assert_eq!(by_author(&mut e, 1), [1, 2, 3]);
            assert_eq!(e.queries(), 1);
        }

        #[test]
        fn a_plain_write_in_a_transaction_is_invalidated_at_commit_and_dropped_on_rollback() {
            let Some(mut e) = env("p_tx") else { return };
            assert_eq!(cached_twice(&mut e, |e| by_author(e, 1)), [1, 2]);
            let r: Result<(), diesel::result::Error> = e.conn.transaction(|c| {
                diesel::update(addons::table.find(3))
                    .set(addons::author1_id.eq(1))
                    .execute(c)?;
                Err(diesel::result::Error::RollbackTransaction)
            });
            assert!(r.is_err());
            e.queries();
            assert_eq!(by_author(&mut e, 1), [1, 2]);
            assert_eq!(e.queries(), 0, "a rolled-back write invalidates nothing");
            e.conn
                .transaction(|c| {
                    diesel::update(addons::table.find(3))
                        .set(addons::author1_id.eq(1))
                        .execute(c)
                })
                .unwrap();
            e.queries();
            assert_eq!(by_author(&mut e, 1), [1, 2, 3]);
            assert_eq!(e.queries(), 1);
        }

        #[test]
        fn a_transaction_opened_with_raw_sql_is_tracked() {
            use diesel::connection::SimpleConnection;
            let Some(mut e) = env("p_rawtx") else { return };
            assert_eq!(cached_twice(&mut e, |e| by_author(e, 1)), [1, 2]);
            let begin = if <Db as TestDb>::NAME == "mysql" {
                "START TRANSACTION"
            } else {
                "BEGIN"
            };
            e.conn.batch_execute(begin).unwrap();
            diesel::sql_query("UPDATE addons SET author1_id = 1 WHERE id = 3")
                .execute(&mut e.conn)
                .unwrap();
            e.queries();
            // Inside: the transaction's own write is visible, and nothing is cached.
            assert_eq!(by_author(&mut e, 1), [1, 2, 3]);
            assert_eq!(by_author(&mut e, 1), [1, 2, 3]);
            assert_eq!(
                e.queries(),
                2,
                "reads inside a raw transaction bypass the cache"
            );
            e.conn.batch_execute("ROLLBACK").unwrap();
            e.queries();
            assert_eq!(by_author(&mut e, 1), [1, 2]);
            assert_eq!(
                e.queries(),
                0,
                "a rolled-back raw transaction invalidates nothing"
            );
            e.conn.batch_execute(begin).unwrap();
            diesel::sql_query("UPDATE addons SET author1_id = 1 WHERE id = 3")
                .execute(&mut e.conn)
                .unwrap();
            e.conn.batch_execute("COMMIT").unwrap();
            e.queries();
            assert_eq!(by_author(&mut e, 1), [1, 2, 3]);
            assert_eq!(e.queries(), 1, "committed: invalidated");
        }

        #[test]
        fn a_helper_writing_another_table_than_its_model_invalidates_that_table() {
            let Some(mut e) = env("p_helper_other") else {
                return;
            };
            assert_eq!(cached_twice(&mut e, |e| by_author(e, 2)), [3]);
            // The model named is User; the statement writes addons.
            let n = e
                .conn
                .execute_bulk::<User, _>(diesel::delete(addons::table.filter(addons::id.eq(3))))
                .unwrap();
            assert_eq!(n, 1);
            e.queries();
            assert_eq!(by_author(&mut e, 2), Vec::<i32>::new());
        }

        #[test]
        fn read_outcomes_tell_hits_misses_and_bypasses() {
            use caching_diesel::ReadOutcome;
            let Some(mut e) = env("p_outcome") else {
                return;
            };
            let q = || addons::table.filter(addons::author1_id.eq(1)).cached();
            let (_, a) = q().load_with_outcome::<Addon>(&mut e.conn).unwrap();
            let (_, b) = q().load_with_outcome::<Addon>(&mut e.conn).unwrap();
            assert_eq!((a, b), (ReadOutcome::Miss, ReadOutcome::Hit));
            assert_eq!(e.queries(), 1);
            let (_, off) = q()
                .enabled(false)
                .load_with_outcome::<Addon>(&mut e.conn)
                .unwrap();
            assert!(matches!(off, ReadOutcome::Bypassed(_)), "{off:?}");
            let (_, in_tx) = e
                .conn
                .transaction(|c| {
                    diesel::update(addons::table.find(3))
                        .set(addons::val.eq(9))
                        .execute(c)?;
                    q().load_with_outcome::<Addon>(c)
                })
                .unwrap();
            assert!(matches!(in_tx, ReadOutcome::Bypassed(_)), "{in_tx:?}");
        }

        #[test]
        fn strict_writes_refuse_plain_writes_through_the_wrapper() {
            let Some(mut e) = env_with("p_strict", |b| b.strict_writes(true)) else {
                return;
            };
            let err = diesel::update(addons::table.find(3))
                .set(addons::author1_id.eq(1))
                .execute(&mut e.conn)
                .unwrap_err();
            assert!(err.to_string().contains("strict writes"), "{err}");
            let a: Addon = addons::table.find(3).first(&mut e.conn).unwrap();
            assert_eq!(a.author1_id, 2, "the refused statement did not run");
            // The write helpers still work.
            save3(&mut e, |a| a.author1_id = 1);
            assert_eq!(by_author(&mut e, 1), [1, 2, 3]);
        }

        #[derive(
            QueryableByName, CachedRow, serde::Serialize, serde::Deserialize, Debug, PartialEq,
        )]
        struct AuthorReport {
            #[diesel(sql_type = Integer)]
            id: i32,
            #[diesel(sql_type = BigInt)]
            n: i64,
        }

        #[test]
        fn an_aggregate_report_is_cached_and_invalidated_by_an_insert() {
            let Some(mut e) = env("p_report") else { return };
            let read = |e: &mut Env<Db>| -> Vec<(i32, i64)> {
                let rows: Vec<AuthorReport> = diesel::sql_query(
                    "SELECT users.id AS id, COUNT(addons.id) AS n FROM users \
                     LEFT JOIN addons ON addons.author1_id = users.id \
                     GROUP BY users.id ORDER BY users.id",
                )
                .cached()
                .load(&mut e.conn)
                .unwrap();
                rows.into_iter().map(|r| (r.id, r.n)).collect()
            };
            assert_eq!(cached_twice(&mut e, read), [(1, 2), (2, 1)]);
            create_addon4(&mut e, 2);
            assert_eq!(read(&mut e), [(1, 2), (2, 2)]);
            assert_eq!(e.queries(), 1);
            // An update that moves a row between authors (no old values known to the
            // report: it walks the table's exit list).
            save3(&mut e, |a| a.author1_id = 1);
            assert_eq!(read(&mut e), [(1, 3), (2, 1)]);
        }

        #[test]
        fn count_then_cached_is_cached_and_bounded_by_the_count_timeout() {
            let Some(mut e) =
                env_with("p_count", |b| b.count_timeout(Some(Duration::from_secs(1))))
            else {
                return;
            };
            let read = |e: &mut Env<Db>| -> i64 {
                addons::table
                    .filter(addons::author1_id.eq(1))
                    .count()
                    .cached()
                    .get_result(&mut e.conn)
                    .unwrap()
            };
            assert_eq!(cached_twice(&mut e, read), 2);
            save3(&mut e, |a| a.author1_id = 1);
            assert_eq!(read(&mut e), 3, "a row entering the count invalidates it");
            assert_eq!(read(&mut e), 3);
            assert_eq!(e.queries(), 1);
            std::thread::sleep(Duration::from_millis(2100));
            assert_eq!(read(&mut e), 3);
            assert_eq!(e.queries(), 1, "the count timeout bounds it");
        }

        #[test]
        fn an_upsert_that_moves_a_row_reaches_the_count_it_left() {
            let Some(mut e) = env("p_upsert") else { return };
            let count = |e: &mut Env<Db>, a: i32| -> i64 {
                addons::table
                    .filter(addons::author1_id.eq(a))
                    .cached_count(&mut e.conn)
                    .unwrap()
            };
            assert_eq!(cached_twice(&mut e, |e| count(e, 2)), 1);
            assert_eq!(cached_twice(&mut e, |e| count(e, 1)), 2);
            <Db as Writes>::upsert_addon(
                &mut e.conn,
                &Addon {
                    author1_id: 1,
                    ..addon3()
                },
            )
            .unwrap();
            e.queries();
            assert_eq!(count(&mut e, 2), 0, "the count the row left");
            assert_eq!(count(&mut e, 1), 3, "the count the row entered");
        }

        mod renamed {
            diesel::table! {
                /// `users` under another Rust name.
                #[sql_name = "users"]
                people (id) {
                    id -> Integer,
                    name -> Text,
                }
            }
        }
        use renamed::people;

        /// A model of a `table!` renamed with `#[sql_name]`, telling the cache its SQL name.
        #[derive(
            Queryable,
            Selectable,
            Identifiable,
            AsChangeset,
            Cached,
            serde::Serialize,
            serde::Deserialize,
            Debug,
            Clone,
            PartialEq,
        )]
        #[diesel(table_name = people)]
        #[cached(sql_table = "users")]
        struct Person {
            id: i32,
            name: String,
        }

        /// The same without `sql_table`: its SQL does not name its table, so its reads are
        /// guarded by its own table's generation.
        #[derive(
            Queryable,
            Selectable,
            Identifiable,
            AsChangeset,
            Cached,
            serde::Serialize,
            serde::Deserialize,
            Debug,
            Clone,
            PartialEq,
        )]
        #[diesel(table_name = people)]
        #[cached(model = "people_unnamed")]
        struct PersonUnnamed {
            id: i32,
            name: String,
        }

        #[test]
        fn a_table_renamed_with_sql_name_sees_rows_enter() {
            let Some(mut e) = env("p_sqlname") else {
                return;
            };
            let named = |e: &mut Env<Db>| -> Vec<i32> {
                let rows: Vec<Person> = people::table
                    .filter(people::name.eq("fliggy"))
                    .order(people::id)
                    .cached()
                    .load(&mut e.conn)
                    .unwrap();
                rows.iter().map(|p| p.id).collect()
            };
            let unnamed = |e: &mut Env<Db>| -> Vec<i32> {
                let rows: Vec<PersonUnnamed> = people::table
                    .filter(people::name.eq("fliggy"))
                    .order(people::id)
                    .cached()
                    .load(&mut e.conn)
                    .unwrap();
                rows.iter().map(|p| p.id).collect()
            };
            assert_eq!(cached_twice(&mut e, named), [1]);
            // With `sql_table`: a row entering through the model is seen precisely.
            let _: Person = e
                .conn
                .save_changes(&Person {
                    id: 2,
                    name: "fliggy".into(),
                })
                .unwrap();
            e.queries();
            assert_eq!(
                named(&mut e),
                [1, 2],
                "the row entered the renamed table's list"
            );
            // Without it: the model's writes name the wrong table, but its reads are guarded
            // by that table's generation, which they bump.
            assert_eq!(cached_twice(&mut e, unnamed), [1, 2]);
            let _: PersonUnnamed = e
                .conn
                .save_changes(&PersonUnnamed {
                    id: 2,
                    name: "zzz".into(),
                })
                .unwrap();
            e.queries();
            assert_eq!(cached_twice(&mut e, unnamed), [1], "the row left");
            let _: PersonUnnamed = e
                .conn
                .save_changes(&PersonUnnamed {
                    id: 2,
                    name: "fliggy".into(),
                })
                .unwrap();
            e.queries();
            assert_eq!(
                unnamed(&mut e),
                [1, 2],
                "the row entered, seen through the guard"
            );
        }

        #[test]
        fn a_row_leaving_the_rows_an_offset_skips_shifts_the_page() {
            let Some(mut e) = env("p_offset") else { return };
            let page2 = |e: &mut Env<Db>| -> Vec<i32> {
                let rows: Vec<Person> = people::table
                    .filter(people::name.eq("fliggy"))
                    .order(people::id)
                    .limit(1)
                    .offset(1)
                    .cached()
                    .load(&mut e.conn)
                    .unwrap();
                rows.iter().map(|p| p.id).collect()
            };
            let _: Person = e
                .conn
                .save_changes(&Person {
                    id: 2,
                    name: "fliggy".into(),
                })
                .unwrap();
            assert_eq!(cached_twice(&mut e, page2), [2]);
            // User 1 leaves the list: it was skipped, not in the page, and its new value
            // matches nothing the page depends on; the page shifts all the same.
            let _: Person = e
                .conn
                .save_changes(&Person {
                    id: 1,
                    name: "other".into(),
                })
                .unwrap();
            e.queries();
            assert_eq!(page2(&mut e), Vec::<i32>::new());
            assert_eq!(e.queries(), 1);
        }

        #[test]
        fn a_range_condition_falls_back_to_the_table() {
            let Some(mut e) = env("p_range") else { return };
            let read = |e: &mut Env<Db>| -> Vec<i32> {
                let rows: Vec<Addon> = addons::table
                    .filter(addons::val.gt(40))
                    .order(addons::id)
                    .cached()
                    .load(&mut e.conn)
                    .unwrap();
                ids(&rows)
            };
            assert_eq!(cached_twice(&mut e, read), [1, 2]);
            save3(&mut e, |a| a.val = 50);
            assert_eq!(read(&mut e), [1, 2, 3]);
            assert_eq!(e.queries(), 1);
            // Table-level: any write to the table invalidates it, even a row it never holds.
            create_addon4(&mut e, 1);
            assert_eq!(read(&mut e), [1, 2, 3]);
            assert_eq!(e.queries(), 1, "the range read depends on the whole table");
        }

        #[test]
        fn an_or_condition_falls_back_to_the_table() {
            let Some(mut e) = env("p_or") else { return };
            let read = |e: &mut Env<Db>| -> Vec<i32> {
                let rows: Vec<Addon> = addons::table
                    .filter(addons::val.eq(7).or(addons::author2_id.eq(1)))
                    .order(addons::id)
                    .cached()
                    .load(&mut e.conn)
                    .unwrap();
                ids(&rows)
            };
            // Empty at first; make addon 1 match so the list is cached.
            let _: Addon = e
                .conn
                .save_changes(&Addon {
                    id: 1,
                    val: 7,
                    author1_id: 1,
                    author2_id: 2,
                })
                .unwrap();
            assert_eq!(cached_twice(&mut e, read), [1]);
            save3(&mut e, |a| a.author2_id = 1);
            assert_eq!(read(&mut e), [1, 3]);
            assert_eq!(e.queries(), 1);
        }

        #[test]
        fn a_delete_leaves_a_filtered_list_and_its_count() {
            let Some(mut e) = env("p_delete") else { return };
            assert_eq!(cached_twice(&mut e, |e| by_author(e, 2)), [3]);
            let count = |e: &mut Env<Db>| -> i64 {
                addons::table
                    .filter(addons::author1_id.eq(2))
                    .cached_count(&mut e.conn)
                    .unwrap()
            };
            assert_eq!(cached_twice(&mut e, count), 1);
            let n = e
                .conn
                .execute_for(&[addon3()], diesel::delete(addons::table.find(3)))
                .unwrap();
            assert_eq!(n, 1);
            e.queries();
            assert_eq!(count(&mut e), 0);
            assert_eq!(by_author(&mut e, 2), Vec::<i32>::new());
            assert_eq!(e.queries(), 2);
        }
    };
}

caching_tests::for_each_database!(suite);
