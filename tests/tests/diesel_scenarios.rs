//! SCENARIOS 1-20, 26, 27 on every database (SQLite always; PostgreSQL and MySQL when their
//! URLs are set) and every backend (locmem always; memcached when `MEMCACHED_URL` is set).
//! "From the cache" means zero statements reached the database, counted with Diesel's
//! instrumentation.

macro_rules! suite {
    ($conn:ty, $kind:expr) => {
        use std::time::Duration;

        use caching_diesel::prelude::*;
        use caching_diesel::{CacheSet, CachedConnection, InvalidateOnCreate, Timeout};
        use caching_tests::db::schema::{addons, users};
        use caching_tests::db::{Addon, BackendKind, Env, TestDb, User, Writes};
        use diesel::sql_types::{Integer, Text};

        type Db = $conn;
        const KIND: BackendKind = $kind;

        fn env(test: &str) -> Option<Env<Db>> {
            Env::suite(test, KIND)
        }

        fn env_with(
            test: &str,
            f: impl FnOnce(caching_diesel::CacheBuilder) -> caching_diesel::CacheBuilder,
        ) -> Option<Env<Db>> {
            Env::suite_configured(test, KIND, f)
        }

        fn find_addon(e: &mut Env<Db>, id: i32) -> Addon {
            addons::table.find(id).cached().first(&mut e.conn).unwrap()
        }

        fn all_users(e: &mut Env<Db>) -> Vec<User> {
            users::table
                .order(users::id)
                .cached()
                .load(&mut e.conn)
                .unwrap()
        }

        fn addons_of(e: &mut Env<Db>, user: i32) -> Vec<Addon> {
            addons::table
                .filter(addons::author1_id.eq(user))
                .order(addons::id)
                .cached()
                .load(&mut e.conn)
                .unwrap()
        }

        /// The key sees each bind's SQL type and bytes: the same value as another type, and
        /// NULL against an empty string, are other keys.
        #[test]
        fn binds_of_other_types_or_null_are_other_keys() {
            use caching_diesel::CacheConnection;
            use diesel::sql_types::{BigInt, Nullable};
            let Some(mut e) = env("bindtypes") else {
                return;
            };
            let mut binds_of =
                |q: &dyn Fn(&mut Db) -> diesel::QueryResult<String>| q(&mut e.conn).unwrap();
            let int = binds_of(&|c| {
                c.query_identity(&diesel::select(1i32.into_sql::<Integer>()))
                    .map(|i| i.binds)
            });
            let big = binds_of(&|c| {
                c.query_identity(&diesel::select(1i64.into_sql::<BigInt>()))
                    .map(|i| i.binds)
            });
            let two = binds_of(&|c| {
                c.query_identity(&diesel::select(2i32.into_sql::<Integer>()))
                    .map(|i| i.binds)
            });
            let null = binds_of(&|c| {
                c.query_identity(&diesel::select(None::<String>.into_sql::<Nullable<Text>>()))
                    .map(|i| i.binds)
            });
            let empty = binds_of(&|c| {
                c.query_identity(&diesel::select(
                    Some(String::new()).into_sql::<Nullable<Text>>(),
                ))
                .map(|i| i.binds)
            });
            let again = binds_of(&|c| {
                c.query_identity(&diesel::select(1i32.into_sql::<Integer>()))
                    .map(|i| i.binds)
            });
            assert_eq!(int, again);
            let all = [&int, &big, &two, &null, &empty];
            for (i, a) in all.iter().enumerate() {
                for b in &all[i + 1..] {
                    assert_ne!(a, b);
                }
            }
        }

        #[test]
        fn scenario_01_basic_find_is_cached() {
            let Some(mut e) = env("s01") else { return };
            let a = find_addon(&mut e, 1);
            assert!(e.queries() > 0);
            let b = find_addon(&mut e, 1);
            assert_eq!(e.queries(), 0, "second read must come from the cache");
            assert_eq!(a, b);
            assert_eq!(a.val, 42);
            let s = e.cache.stats();
            assert_eq!((s.hits, s.misses, s.fills), (1, 1, 1));
        }

        #[test]
        fn scenario_02_filter_and_slices_are_keyed_separately() {
            let Some(mut e) = env("s02") else { return };
            let q = || addons::table.filter(addons::val.eq(42)).order(addons::id);
            let first: Vec<Addon> = q().limit(1).cached().load(&mut e.conn).unwrap();
            let second: Vec<Addon> = q().limit(1).offset(1).cached().load(&mut e.conn).unwrap();
            let both: Vec<Addon> = q().cached().load(&mut e.conn).unwrap();
            assert!(e.queries() >= 3);
            assert_eq!(first.iter().map(|a| a.id).collect::<Vec<_>>(), vec![1]);
            assert_eq!(second.iter().map(|a| a.id).collect::<Vec<_>>(), vec![2]);
            assert_eq!(both.len(), 2);
            let again: Vec<Addon> = q().limit(1).offset(1).cached().load(&mut e.conn).unwrap();
            let again_first: Vec<Addon> = q().limit(1).cached().load(&mut e.conn).unwrap();
            assert_eq!(e.queries(), 0);
            assert_eq!((again, again_first), (second, first));
        }

        fn raw_addon(e: &mut Env<Db>, id: i32) -> Vec<Addon> {
            let sql = format!(
                "SELECT id, val, author1_id, author2_id FROM addons WHERE id = {}",
                <Db as Writes>::placeholder(1)
            );
            diesel::sql_query(sql)
                .bind::<Integer, _>(id)
                .cached()
                .load(&mut e.conn)
                .unwrap()
        }

        #[test]
        fn scenario_03_raw_sql_binds_are_part_of_the_key() {
            let Some(mut e) = env("s03") else { return };
            assert_eq!(raw_addon(&mut e, 1)[0].id, 1);
            assert_eq!(raw_addon(&mut e, 2)[0].id, 2);
            assert!(e.queries() >= 2);
            assert_eq!(raw_addon(&mut e, 1)[0].id, 1);
            assert_eq!(raw_addon(&mut e, 2)[0].id, 2);
            assert_eq!(e.queries(), 0);
        }

        #[derive(
            diesel::QueryableByName, serde::Serialize, serde::Deserialize, Debug, PartialEq,
        )]
        struct Named {
            #[diesel(sql_type = Text)]
            name: String,
        }
        impl caching_diesel::CacheableRow for Named {
            const MODEL: bool = false;
            fn tables(_: &mut Vec<&'static str>) {}
            fn fingerprint(k: &mut caching_diesel::core::QueryKeyBuilder) {
                k.part("named", b"name:String");
            }
            fn register(
                &self,
                _: &caching_diesel::core::KeySpace,
                _: &str,
                _: &mut caching_diesel::core::Registrations,
            ) {
            }
        }

        #[test]
        fn scenario_04_bind_types_are_part_of_the_key() {
            let Some(mut e) = env("s04") else { return };
            let sql = format!(
                "SELECT name FROM users WHERE CAST(id AS CHAR(10)) = CAST({} AS CHAR(10))",
                <Db as Writes>::placeholder(1)
            );
            let k_int = diesel::sql_query(sql.clone())
                .bind::<Integer, _>(1)
                .cached()
                .key::<Named, _>(&mut e.conn)
                .unwrap();
            let k_text = diesel::sql_query(sql.clone())
                .bind::<Text, _>("1")
                .cached()
                .key::<Named, _>(&mut e.conn)
                .unwrap();
            assert_ne!(k_int, k_text, "Integer 1 and Text '1' must not share a key");
            let ttl = Duration::from_secs(60);
            let by_int: Vec<Named> = diesel::sql_query(sql.clone())
                .bind::<Integer, _>(1)
                .cached()
                .cached_for(ttl)
                .load(&mut e.conn)
                .unwrap();
            let by_text: Vec<Named> = diesel::sql_query(sql.clone())
                .bind::<Text, _>("2")
                .cached()
                .cached_for(ttl)
                .load(&mut e.conn)
                .unwrap();
            assert_eq!(
                by_int,
                vec![Named {
                    name: "fliggy".into()
                }]
            );
            assert_eq!(
                by_text,
                vec![Named {
                    name: "clouseroo".into()
                }]
            );
            e.queries();
            let again: Vec<Named> = diesel::sql_query(sql)
                .bind::<Text, _>("2")
                .cached()
                .cached_for(ttl)
                .load(&mut e.conn)
                .unwrap();
            assert_eq!(e.queries(), 0);
            assert_eq!(again, by_text);
        }

        #[test]
        fn scenario_05_raw_sql_matches_query_builder() {
            let Some(mut e) = env("s05") else { return };
            let raw = raw_addon(&mut e, 1);
            let built: Vec<Addon> = addons::table
                .filter(addons::id.eq(1))
                .cached()
                .load(&mut e.conn)
                .unwrap();
            assert_eq!(raw, built);
            e.queries();
            assert_eq!(raw_addon(&mut e, 1), built);
            assert_eq!(e.queries(), 0);
        }

        #[test]
        fn scenario_06_uncached_queries_never_touch_the_cache() {
            let Some(mut e) = env("s06") else { return };
            for _ in 0..2 {
                let _: Addon = addons::table.find(1).first(&mut *e.conn).unwrap();
                let _: Addon = addons::table
                    .find(1)
                    .cached()
                    .enabled(false)
                    .first(&mut e.conn)
                    .unwrap();
            }
            assert_eq!(e.queries(), 4);
            assert_eq!(e.cache.stats(), Default::default());
        }

        #[test]
        fn scenario_07_per_query_timeout_last_setting_sticks() {
            let Some(mut e) = env("s07") else { return };
            let q = || {
                addons::table
                    .find(1)
                    .cached()
                    .timeout(Timeout::Forever)
                    .cached_for(Duration::from_secs(1))
            };
            let _: Addon = q().first(&mut e.conn).unwrap();
            let _: Addon = q().first(&mut e.conn).unwrap();
            assert!(e.queries() > 0);
            assert_eq!(e.cache.stats().hits, 1);
            std::thread::sleep(Duration::from_millis(2100));
            let _: Addon = q().first(&mut e.conn).unwrap();
            assert!(e.queries() > 0, "a 1-second entry must have expired");
            // And the other order: forever set last sticks.
            let q2 = || {
                addons::table
                    .find(2)
                    .cached()
                    .cached_for(Duration::from_secs(1))
                    .timeout(Timeout::Forever)
            };
            let _: Addon = q2().first(&mut e.conn).unwrap();
            std::thread::sleep(Duration::from_millis(2100));
            e.queries();
            let _: Addon = q2().first(&mut e.conn).unwrap();
            assert_eq!(e.queries(), 0);
            // Turning caching off and then giving a timeout caches (the original's
            // `no_cache().cache(12)`); the other order does not.
            let on = || {
                users::table
                    .find(1)
                    .cached()
                    .enabled(false)
                    .cached_for(Duration::from_secs(60))
            };
            let off = || {
                users::table
                    .find(2)
                    .cached()
                    .cached_for(Duration::from_secs(60))
                    .enabled(false)
            };
            for _ in 0..2 {
                let _: User = on().first(&mut e.conn).unwrap();
                let _: User = off().first(&mut e.conn).unwrap();
            }
            assert_eq!(e.queries(), 3, "enabled(false) then a timeout: cached");
        }

        #[test]
        fn scenario_08_scalar_selections_are_cached_by_their_sql() {
            // Issue 8 replaces the original's rule (non-model selections need a TTL): their
            // dependencies come from the parsed SQL, so they are cached and invalidated.
            let Some(mut e) = env("s08") else { return };
            let names = |e: &mut Env<Db>| -> Vec<String> {
                users::table
                    .select(users::name)
                    .order(users::id)
                    .cached()
                    .load(&mut e.conn)
                    .unwrap()
            };
            assert_eq!(names(&mut e), ["fliggy", "clouseroo"]);
            assert_eq!(names(&mut e), ["fliggy", "clouseroo"]);
            assert_eq!(e.queries(), 1, "the second read came from the cache");
            for _ in 0..2 {
                let t: Vec<(i32, String)> = users::table
                    .select((users::id, users::name))
                    .filter(users::id.eq(2))
                    .cached()
                    .load(&mut e.conn)
                    .unwrap();
                assert_eq!(t, [(2, "clouseroo".to_string())]);
            }
            assert_eq!(e.queries(), 1);
            let _: User = e
                .conn
                .save_changes(&User {
                    id: 2,
                    name: "renamed".into(),
                })
                .unwrap();
            e.queries();
            assert_eq!(names(&mut e), ["fliggy", "renamed"]);
            let t: Vec<(i32, String)> = users::table
                .select((users::id, users::name))
                .filter(users::id.eq(2))
                .cached()
                .load(&mut e.conn)
                .unwrap();
            assert_eq!(t, [(2, "renamed".to_string())]);
            assert_eq!(
                e.queries(),
                2,
                "a write to the rows they read invalidates both"
            );
            let q = || {
                users::table
                    .select(users::name)
                    .filter(users::id.eq(1))
                    .cached()
                    .cached_for(Duration::from_secs(60))
            };
            let a: Vec<String> = q().load(&mut e.conn).unwrap();
            let b: Vec<String> = q().load(&mut e.conn).unwrap();
            assert_eq!(e.queries(), 1);
            assert_eq!(a, b);
            assert_eq!(a, vec!["fliggy".to_string()]);
        }

        #[test]
        fn scenario_09_unicode_and_protocol_injection_in_binds() {
            let Some(mut e) = env("s09") else { return };
            let nasty = "ünïcødé 名前 x\r\nflush_all\r\nset a 0 0 1\r\n";
            let sentinel = caching_diesel::ObjectKey::new("sentinel", &["1"]);
            let _: u32 = e
                .cache
                .cached_with(&sentinel, "alive", Timeout::Forever, || 7);
            <Db as Writes>::create_user(
                &mut e.conn,
                &User {
                    id: 3,
                    name: nasty.into(),
                },
            )
            .unwrap();
            let q = || users::table.filter(users::name.eq(nasty)).cached();
            let a: Vec<User> = q().load(&mut e.conn).unwrap();
            e.queries();
            let b: Vec<User> = q().load(&mut e.conn).unwrap();
            assert_eq!(e.queries(), 0);
            assert_eq!(a, b);
            assert_eq!(a[0].name, nasty);
            let still: u32 = e
                .cache
                .cached_with(&sentinel, "alive", Timeout::Forever, || 0);
            assert_eq!(still, 7, "nothing may have been flushed or injected");
        }

        #[test]
        fn scenario_10_empty_in_list() {
            let Some(mut e) = env_with("s10", |b| b.count_timeout(Some(Duration::from_secs(60))))
            else {
                return;
            };
            let none: Vec<i32> = Vec::new();
            let rows: Vec<User> = users::table
                .filter(users::id.eq_any(none.clone()))
                .cached()
                .load(&mut e.conn)
                .unwrap();
            assert!(rows.is_empty());
            let n = users::table
                .filter(users::id.eq_any(none))
                .cached()
                .count(&mut e.conn)
                .unwrap();
            assert_eq!(n, 0);
            assert_eq!(
                e.cache.stats().fills,
                1,
                "only the count is cached, never the empty list"
            );
        }

        #[test]
        fn scenario_11_empty_results_are_not_cached_by_default() {
            let Some(mut e) = env("s11") else { return };
            for _ in 0..2 {
                let r: Vec<User> = users::table
                    .filter(users::id.eq(99))
                    .cached()
                    .load(&mut e.conn)
                    .unwrap();
                assert!(r.is_empty());
            }
            assert_eq!(e.queries(), 2);
        }

        #[test]
        fn scenario_12_empty_results_cached_when_configured() {
            let Some(mut e) = env_with("s12", |b| b.cache_empty_results(true)) else {
                return;
            };
            for _ in 0..2 {
                let r: Vec<User> = users::table
                    .filter(users::id.eq(99))
                    .cached()
                    .load(&mut e.conn)
                    .unwrap();
                assert!(r.is_empty());
            }
            assert_eq!(e.queries(), 1);
        }

        #[test]
        fn scenario_13_cached_count() {
            // Issue 8: counts depend on their tables and conditions like any read, so they
            // are cached and a write they depend on invalidates them at once; the count
            // timeout is an optional upper bound.
            let Some(mut e) = env("s13") else { return };
            let count =
                |e: &mut Env<Db>| -> i64 { addons::table.cached_count(&mut e.conn).unwrap() };
            let by_author = |e: &mut Env<Db>, a: i32| -> i64 {
                addons::table
                    .filter(addons::author1_id.eq(a))
                    .cached_count(&mut e.conn)
                    .unwrap()
            };
            assert_eq!(count(&mut e), 2, "count #1");
            assert_eq!(count(&mut e), 2, "count #2");
            assert_eq!(by_author(&mut e, 2), 0);
            assert_eq!(by_author(&mut e, 2), 0);
            assert_eq!(e.queries(), 2, "counts come from the cache");
            <Db as Writes>::create_addon(
                &mut e.conn,
                &Addon {
                    id: 3,
                    val: 1,
                    author1_id: 2,
                    author2_id: 2,
                },
            )
            .unwrap();
            e.queries();
            assert_eq!(count(&mut e), 3, "an insert invalidates the count");
            assert_eq!(by_author(&mut e, 2), 1, "an insert matching the filter too");
            assert_eq!(e.queries(), 2, "after the insert");
            let a3 = find_addon(&mut e, 3);
            e.queries();
            let a3: Addon = e
                .conn
                .save_changes(&Addon {
                    author1_id: 1,
                    ..a3
                })
                .unwrap();
            e.queries();
            assert_eq!(by_author(&mut e, 2), 0, "an update moving the row out");
            assert_eq!(by_author(&mut e, 1), 3, "and into another author's count");
            e.conn
                .execute_for(
                    std::slice::from_ref(&a3),
                    diesel::delete(addons::table.find(3)),
                )
                .unwrap();
            e.queries();
            assert_eq!(count(&mut e), 2, "a delete invalidates the count");
            assert_eq!(by_author(&mut e, 1), 2);
            assert_eq!(e.queries(), 2, "after the delete");

            let Some(mut e) = env_with("s13b", |b| b.count_timeout(Some(Duration::from_secs(1))))
            else {
                return;
            };
            assert_eq!(count(&mut e), 2, "count #3");
            assert_eq!(count(&mut e), 2, "count #4");
            assert_eq!(e.queries(), 1);
            std::thread::sleep(Duration::from_millis(2100));
            assert_eq!(count(&mut e), 2, "count #5");
            assert_eq!(e.queries(), 1, "the count lives at most the count timeout");
        }

        #[test]
        fn scenario_14_save_invalidates_find_and_lists() {
            let Some(mut e) = env("s14") else { return };
            let mut a = find_addon(&mut e, 1);
            let list = addons_of(&mut e, 1);
            assert_eq!(list.len(), 2);
            e.queries();
            a.val = 7;
            let saved: Addon = e.conn.save_changes(&a).unwrap();
            assert_eq!(saved.val, 7);
            e.queries();
            assert_eq!(find_addon(&mut e, 1).val, 7);
            assert!(e.queries() > 0);
            assert_eq!(addons_of(&mut e, 1)[0].val, 7);
            assert!(e.queries() > 0);
            assert_eq!(find_addon(&mut e, 1).val, 7);
            assert_eq!(addons_of(&mut e, 1)[0].val, 7);
            assert_eq!(e.queries(), 0, "refilled");
        }

        #[test]
        fn scenario_15_saving_an_addon_invalidates_its_authors_queries() {
            let Some(mut e) = env("s15") else { return };
            let u = all_users(&mut e);
            assert_eq!(u.len(), 2);
            let a = find_addon(&mut e, 1);
            e.queries();
            let _: Addon = e.conn.save_changes(&a).unwrap();
            e.queries();
            all_users(&mut e);
            assert!(e.queries() > 0, "users list contained the addon's authors");
        }

        #[test]
        fn scenario_16_renaming_a_user_invalidates_addons_and_joins() {
            let Some(mut e) = env("s16") else { return };
            let join = |e: &mut Env<Db>| -> Vec<(Addon, User)> {
                addons::table
                    .inner_join(users::table)
                    .select((Addon::as_select(), User::as_select()))
                    .order(addons::id)
                    .cached()
                    .load(&mut e.conn)
                    .unwrap()
            };
            assert_eq!(join(&mut e)[0].1.name, "fliggy");
            let assoc_user: User = users::table.find(1).cached().first(&mut e.conn).unwrap();
            let assoc: Vec<Addon> = Addon::belonging_to(&assoc_user)
                .cached()
                .load(&mut e.conn)
                .unwrap();
            assert_eq!(assoc.len(), 2);
            e.queries();
            let _: User = e
                .conn
                .save_changes(&User {
                    id: 1,
                    name: "renamed".into(),
                })
                .unwrap();
            e.queries();
            assert_eq!(join(&mut e)[0].1.name, "renamed");
            assert!(e.queries() > 0);
            let _: Vec<Addon> = Addon::belonging_to(&assoc_user)
                .cached()
                .load(&mut e.conn)
                .unwrap();
            assert!(
                e.queries() > 0,
                "addons whose author changed are invalidated too (the author's children list)"
            );
        }

        /// Issue 10, part 3: a write to one child of a parent with N cached sibling queries
        /// leaves the siblings' queries cached (a re-read runs no statement), and the queries
        /// that hold the saved child or the parent miss (scenarios 14, 15); a created child
        /// and a deleted one likewise. Renaming the parent still invalidates every sibling's
        /// query (scenario 16).
        #[test]
        fn a_childs_write_leaves_its_siblings_queries_cached() {
            const N: i32 = 12;
            let Some(mut e) = env("fanout") else { return };
            let ids: Vec<i32> = (10..10 + N).collect();
            for &id in &ids {
                <Db as Writes>::create_addon(
                    &mut e.conn,
                    &Addon {
                        id,
                        val: id,
                        author1_id: 1,
                        author2_id: 1,
                    },
                )
                .unwrap();
            }
            let find_user = |e: &mut Env<Db>| -> User {
                users::table.find(1).cached().first(&mut e.conn).unwrap()
            };
            // Every query cached: one per child, the parent by id, the parent's list.
            let cache_all = |e: &mut Env<Db>| {
                for &id in &ids {
                    find_addon(e, id);
                }
                find_user(e);
                addons_of(e, 1);
                e.queries();
                for &id in &ids {
                    find_addon(e, id);
                }
                find_user(e);
                addons_of(e, 1);
                assert_eq!(e.queries(), 0, "every query cached");
            };
            // Re-reads each child's query; returns the statements each one ran.
            let reread = |e: &mut Env<Db>, which: &[i32]| -> Vec<usize> {
                which
                    .iter()
                    .map(|&id| {
                        assert_eq!(find_addon(e, id).id, id);
                        e.queries()
                    })
                    .collect()
            };
            let siblings_of = |saved: i32| -> Vec<i32> {
                ids.iter().copied().filter(|&id| id != saved).collect()
            };

            // Saving child 10.
            cache_all(&mut e);
            let mut saved = find_addon(&mut e, 10);
            saved.val = 1000;
            let _: Addon = e.conn.save_changes(&saved).unwrap();
            e.queries();
            assert_eq!(
                reread(&mut e, &siblings_of(10)),
                vec![0; N as usize - 1],
                "a sibling's query ran statements after child 10 was saved"
            );
            assert_eq!(find_addon(&mut e, 10).val, 1000);
            assert!(e.queries() > 0, "the saved child's query misses");
            find_user(&mut e);
            assert!(e.queries() > 0, "the parent's query misses (scenario 15)");
            assert_eq!(addons_of(&mut e, 1)[2].val, 1000);
            assert!(e.queries() > 0, "the list holding the saved child misses");

            // Creating a child of user 1: its list misses (scenario 17), the siblings'
            // queries stay.
            cache_all(&mut e);
            <Db as Writes>::create_addon(
                &mut e.conn,
                &Addon {
                    id: 100,
                    val: 5,
                    author1_id: 1,
                    author2_id: 1,
                },
            )
            .unwrap();
            e.queries();
            assert_eq!(
                reread(&mut e, &ids),
                vec![0; N as usize],
                "a sibling's query ran statements after a child was created"
            );
            assert_eq!(addons_of(&mut e, 1).len(), 3 + N as usize);
            assert!(e.queries() > 0, "the parent's list of children misses");
            find_user(&mut e);
            assert!(e.queries() > 0, "the parent's query misses (scenario 15)");

            // Deleting child 11.
            cache_all(&mut e);
            let gone = find_addon(&mut e, 11);
            e.conn
                .execute_for(
                    std::slice::from_ref(&gone),
                    diesel::delete(addons::table.find(11)),
                )
                .unwrap();
            e.queries();
            let kept: Vec<i32> = siblings_of(11);
            assert_eq!(
                reread(&mut e, &kept),
                vec![0; N as usize - 1],
                "a sibling's query ran statements after child 11 was deleted"
            );
            assert!(addons_of(&mut e, 1).iter().all(|a| a.id != 11));
            assert!(
                e.queries() > 0,
                "the list that held the deleted child misses"
            );

            // Renaming the parent: every child's query misses (scenario 16).
            for &id in &kept {
                find_addon(&mut e, id);
            }
            find_user(&mut e);
            e.queries();
            let _: User = e
                .conn
                .save_changes(&User {
                    id: 1,
                    name: "renamed".into(),
                })
                .unwrap();
            e.queries();
            let ran = reread(&mut e, &kept);
            assert!(
                ran.iter().all(|&n| n > 0),
                "every child's query misses after its parent was renamed: {ran:?}"
            );
            assert_eq!(find_user(&mut e).name, "renamed");
        }

        #[test]
        fn scenario_17_new_addon_invalidates_its_authors_lists() {
            let Some(mut e) = env("s17") else { return };
            assert_eq!(addons_of(&mut e, 1).len(), 2);
            e.queries();
            <Db as Writes>::create_addon(
                &mut e.conn,
                &Addon {
                    id: 3,
                    val: 5,
                    author1_id: 1,
                    author2_id: 2,
                },
            )
            .unwrap();
            e.queries();
            assert_eq!(addons_of(&mut e, 1).len(), 3);
            assert!(e.queries() > 0);
        }

        #[test]
        fn scenario_18_invalidate_on_create_and_invalidate_all() {
            let Some(mut e) = env_with("s18", |b| {
                b.invalidate_on_create(InvalidateOnCreate::WholeModel)
            }) else {
                return;
            };
            assert_eq!(all_users(&mut e).len(), 2);
            <Db as Writes>::create_user(
                &mut e.conn,
                &User {
                    id: 3,
                    name: "new".into(),
                },
            )
            .unwrap();
            e.queries();
            assert_eq!(
                all_users(&mut e).len(),
                3,
                "whole-model: every user query is invalidated"
            );
            assert!(e.queries() > 0);

            // Precise (the default): a new row invalidates the queries it enters, and only
            // those.
            let Some(mut e) = env("s18b") else { return };
            assert_eq!(all_users(&mut e).len(), 2);
            let one = |e: &mut Env<Db>| -> Vec<User> {
                users::table
                    .filter(users::id.eq(1))
                    .cached()
                    .load(&mut e.conn)
                    .unwrap()
            };
            assert_eq!(one(&mut e).len(), 1);
            e.queries();
            <Db as Writes>::create_user(
                &mut e.conn,
                &User {
                    id: 3,
                    name: "new".into(),
                },
            )
            .unwrap();
            e.queries();
            assert_eq!(one(&mut e).len(), 1);
            assert_eq!(
                e.queries(),
                0,
                "precise: a list the row does not enter stays cached"
            );
            assert_eq!(
                all_users(&mut e).len(),
                3,
                "precise: the list it enters misses"
            );
            assert_eq!(e.queries(), 1);
            // A write through the raw connection is still seen (the observer is installed
            // on it): its table is invalidated whole.
            diesel::insert_into(users::table)
                .values(User {
                    id: 4,
                    name: "raw".into(),
                })
                .execute(e.conn.inner())
                .unwrap();
            e.queries();
            assert_eq!(all_users(&mut e).len(), 4);
            assert_eq!(one(&mut e).len(), 1);
            assert_eq!(e.queries(), 2, "a plain write invalidates its table whole");
            assert_eq!(e.cache.stats().plain_writes, 1);
            // invalidate_all, for writes made where the library cannot see them.
            e.conn.invalidate_all::<User>().unwrap();
            assert_eq!(all_users(&mut e).len(), 4);
            assert_eq!(one(&mut e).len(), 1);
            assert_eq!(e.queries(), 2);
        }

        #[test]
        fn scenario_19_delete_invalidates() {
            let Some(mut e) = env("s19") else { return };
            let a = find_addon(&mut e, 2);
            assert_eq!(addons_of(&mut e, 1).len(), 2);
            e.conn
                .execute_for(
                    std::slice::from_ref(&a),
                    diesel::delete(addons::table.find(2)),
                )
                .unwrap();
            e.queries();
            assert_eq!(addons_of(&mut e, 1).len(), 1);
            assert!(e.queries() > 0);
            let gone: Result<Addon, _> = addons::table.find(2).cached().first(&mut e.conn);
            assert!(matches!(gone, Err(diesel::result::Error::NotFound)));
        }

        #[test]
        fn scenario_20_bulk_update_and_delete_invalidate() {
            let Some(mut e) = env("s20") else { return };
            assert_eq!(find_addon(&mut e, 1).val, 42);
            assert_eq!(addons_of(&mut e, 1).len(), 2);
            assert_eq!(
                <Db as Writes>::bulk_set_val(&mut e.conn, 42, 43).unwrap(),
                2
            );
            e.queries();
            assert_eq!(find_addon(&mut e, 1).val, 43);
            assert!(e.queries() > 0);
            assert_eq!(<Db as Writes>::bulk_delete_val(&mut e.conn, 43).unwrap(), 2);
            assert!(addons_of(&mut e, 1).is_empty());
            let gone: Result<Addon, _> = addons::table.find(1).cached().first(&mut e.conn);
            assert!(gone.is_err());
        }

        fn second_db(e: &Env<Db>, test: &str, label: &str) -> Option<CachedConnection<Db>> {
            let raw = <Db as TestDb>::fresh(&format!("{}_{}", <Db as TestDb>::NAME, test))?;
            Some(
                CachedConnection::with_caches(raw, CacheSet::new(e.cache.clone()))
                    .with_label(label),
            )
        }

        #[test]
        fn scenario_26_two_databases_never_cross() {
            let Some(mut e) = env("s26") else { return };
            let Some(mut other) = second_db(&e, "s26b", "other") else {
                return;
            };
            diesel::update(users::table.find(1))
                .set(users::name.eq("other-fliggy"))
                .execute(&mut *other)
                .unwrap();
            let here: User = users::table.find(1).cached().first(&mut e.conn).unwrap();
            let there: User = users::table.find(1).cached().first(&mut other).unwrap();
            assert_eq!(here.name, "fliggy");
            assert_eq!(there.name, "other-fliggy");
            let here2: User = users::table.find(1).cached().first(&mut e.conn).unwrap();
            let there2: User = users::table.find(1).cached().first(&mut other).unwrap();
            assert_eq!(
                (here2.name.as_str(), there2.name.as_str()),
                ("fliggy", "other-fliggy")
            );
            assert_eq!(e.cache.stats().hits, 2);
            let ck = e
                .cache
                .cached_with(&here2, "label", Timeout::Forever, || here2.name.clone());
            assert_eq!(ck, "fliggy");
        }

        #[test]
        fn scenario_27_saving_on_one_database_invalidates_every_copy() {
            let Some(mut e) = env("s27") else { return };
            let Some(mut replica) = second_db(&e, "s27b", "replica") else {
                return;
            };
            let _: User = users::table.find(1).cached().first(&mut e.conn).unwrap();
            let _: User = users::table.find(1).cached().first(&mut replica).unwrap();
            let before = e.cache.stats().misses;
            let _: User = e
                .conn
                .save_changes(&User {
                    id: 1,
                    name: "x".into(),
                })
                .unwrap();
            let _: User = users::table.find(1).cached().first(&mut replica).unwrap();
            assert_eq!(
                e.cache.stats().misses,
                before + 1,
                "the replica's copy was invalidated by the primary's write"
            );
        }
    };
}

caching_tests::for_each_database!(suite);
