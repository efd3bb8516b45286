//! `#[cached_method]` (the original's `@cached_method`): a model method's result cached per
//! (object, method, arguments) on the object's flush list. On every database × backend;
//! statements are counted with Diesel's instrumentation.
//!
//! Fixture: users (1, fliggy), (2, clouseroo); addons (1, 42, 1, 2), (2, 42, 1, 2).

macro_rules! suite {
    ($conn:ty, $kind:expr) => {
        use std::sync::atomic::{AtomicUsize, Ordering};

        use caching_diesel::prelude::*;
        use caching_diesel::{cached_method, Cache, CachedConnection};
        use caching_tests::db::schema::addons;
        use caching_tests::db::{Addon, BackendKind, Env, User, Writes};

        type Db = $conn;
        const KIND: BackendKind = $kind;

        fn env(test: &str) -> Option<Env<Db>> {
            let e = Env::suite(test, KIND)?;
            e.queries();
            Some(e)
        }

        thread_local! {
            /// Per thread: the tests of a suite run in parallel, each on its own thread, and
            /// a method's body runs on the thread that calls it.
            static CALLS: AtomicUsize = const { AtomicUsize::new(0) };
        }

        /// Calls of the methods' bodies on this test's thread since the last call.
        fn calls() -> usize {
            CALLS.with(|c| c.swap(0, Ordering::SeqCst))
        }

        trait UserMethods {
            fn addon_count(&self, conn: &mut CachedConnection<Db>) -> QueryResult<i64>;
            fn greeting(&self, cache: &Cache, punctuation: &str, times: usize) -> String;
            fn fails_once(&self, cache: &Cache, attempt: u32) -> Result<String, String>;
        }

        impl UserMethods for User {
            /// Counts the user's add-ons with an uncached query on the connection.
            #[cached_method(tables = ["addons"])]
            fn addon_count(&self, conn: &mut CachedConnection<Db>) -> QueryResult<i64> {
                addons::table
                    .filter(addons::author1_id.eq(self.id))
                    .count()
                    .get_result(conn.inner())
            }

            #[cached_method(timeout = 60)]
            fn greeting(&self, cache: &Cache, punctuation: &str, times: usize) -> String {
                let _ = cache;
                CALLS.with(|c| c.fetch_add(1, Ordering::SeqCst));
                format!("hello {}{}", self.name, punctuation.repeat(times))
            }

            #[cached_method]
            fn fails_once(&self, cache: &Cache, attempt: u32) -> Result<String, String> {
                let _ = (cache, attempt);
                if CALLS.with(|c| c.fetch_add(1, Ordering::SeqCst)) == 0 {
                    return Err("first call fails".into());
                }
                Ok(self.name.clone())
            }
        }

        fn user(e: &mut Env<Db>, id: i32) -> User {
            let u = caching_tests::db::schema::users::table
                .find(id)
                .first(e.conn.inner())
                .unwrap();
            e.queries();
            u
        }

        #[test]
        fn a_method_is_computed_once_then_again_after_the_object_is_saved() {
            let Some(mut e) = env("cm_save") else { return };
            let mut fliggy = user(&mut e, 1);
            let clouseroo = user(&mut e, 2);
            assert_eq!(fliggy.addon_count(&mut e.conn).unwrap(), 2);
            assert_eq!(e.queries(), 1);
            assert_eq!(fliggy.addon_count(&mut e.conn).unwrap(), 2);
            assert_eq!(e.queries(), 0, "from the cache");
            assert_eq!(clouseroo.addon_count(&mut e.conn).unwrap(), 0);
            assert_eq!(e.queries(), 1, "cached per object");
            // Saving another user leaves fliggy's value.
            let _: User = e.conn.save_changes(&clouseroo).unwrap();
            e.queries();
            assert_eq!(fliggy.addon_count(&mut e.conn).unwrap(), 2);
            assert_eq!(e.queries(), 0);
            fliggy.name = "fliggy2".into();
            let _: User = e.conn.save_changes(&fliggy).unwrap();
            e.queries();
            assert_eq!(fliggy.addon_count(&mut e.conn).unwrap(), 2);
            assert_eq!(e.queries(), 1, "saving the object recomputes it");
        }

        #[test]
        fn a_child_written_through_a_foreign_key_recomputes_the_parent_method() {
            let Some(mut e) = env("cm_child") else { return };
            let fliggy = user(&mut e, 1);
            assert_eq!(fliggy.addon_count(&mut e.conn).unwrap(), 2);
            <Db as Writes>::create_addon(
                &mut e.conn,
                &Addon {
                    id: 5,
                    val: 1,
                    author1_id: 1,
                    author2_id: 2,
                },
            )
            .unwrap();
            e.queries();
            assert_eq!(fliggy.addon_count(&mut e.conn).unwrap(), 3);
            assert_eq!(e.queries(), 1);
        }

        #[test]
        fn a_write_to_a_declared_table_recomputes_it_even_a_plain_one() {
            let Some(mut e) = env("cm_tables") else {
                return;
            };
            let fliggy = user(&mut e, 1);
            assert_eq!(fliggy.addon_count(&mut e.conn).unwrap(), 2);
            diesel::update(addons::table.find(2))
                .set(addons::author1_id.eq(2))
                .execute(&mut e.conn)
                .unwrap();
            e.queries();
            assert_eq!(fliggy.addon_count(&mut e.conn).unwrap(), 1);
            assert_eq!(e.queries(), 1, "a plain write to addons reaches the value");
            assert_eq!(fliggy.addon_count(&mut e.conn).unwrap(), 1);
            assert_eq!(e.queries(), 0);
        }

        #[test]
        fn inside_a_transaction_it_sees_its_own_writes_and_caches_nothing() {
            let Some(mut e) = env("cm_tx") else { return };
            let fliggy = user(&mut e, 1);
            assert_eq!(fliggy.addon_count(&mut e.conn).unwrap(), 2);
            e.conn
                .transaction(|conn| {
                    diesel::delete(addons::table.find(1)).execute(conn)?;
                    assert_eq!(fliggy.addon_count(conn)?, 1, "the transaction's own write");
                    Err::<(), _>(diesel::result::Error::RollbackTransaction)
                })
                .unwrap_err();
            e.queries();
            assert_eq!(fliggy.addon_count(&mut e.conn).unwrap(), 2);
            assert_eq!(e.queries(), 0, "rolled back: the value cached before holds");
        }

        #[test]
        fn a_value_computed_from_an_old_copy_is_never_served_for_the_new_row() {
            let Some(mut e) = env("cm_old_copy") else {
                return;
            };
            let cache = e.cache.clone();
            let old = user(&mut e, 1);
            let new: User = e
                .conn
                .save_changes(&User {
                    id: 1,
                    name: "fliggy2".into(),
                })
                .unwrap();
            // The old copy still computes from its own fields, after the save...
            assert_eq!(old.greeting(&cache, ".", 1), "hello fliggy.");
            // ...and that value is keyed by its content: the saved row gets its own.
            assert_eq!(new.greeting(&cache, ".", 1), "hello fliggy2.");
        }

        #[test]
        fn arguments_are_part_of_the_key_and_errors_are_not_cached() {
            let Some(e) = env("cm_args") else { return };
            let cache = e.cache.clone();
            let fliggy = User {
                id: 1,
                name: "fliggy".into(),
            };
            calls();
            assert_eq!(fliggy.greeting(&cache, "!", 2), "hello fliggy!!");
            assert_eq!(fliggy.greeting(&cache, "!", 2), "hello fliggy!!");
            assert_eq!(calls(), 1);
            assert_eq!(fliggy.greeting(&cache, "?", 2), "hello fliggy??");
            assert_eq!(fliggy.greeting(&cache, "!", 3), "hello fliggy!!!");
            assert_eq!(calls(), 2, "other arguments, other values");
            assert!(fliggy.fails_once(&cache, 1).is_err());
            assert_eq!(fliggy.fails_once(&cache, 1).unwrap(), "fliggy");
            assert_eq!(fliggy.fails_once(&cache, 1).unwrap(), "fliggy");
            assert_eq!(calls(), 2, "the error was not cached; the value was");
        }
    };
}

caching_tests::for_each_database!(suite);
