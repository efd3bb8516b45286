//! Bookkeeping that is damaged, foreign or gone must never leave a cached result stale: with
//! infinite timeouts, a result that a write failed to invalidate is served forever.
//!
//! - A row's flush list holding bytes that are not UTF-8, or tokens this crate never writes
//!   (control characters, over-long keys): the next write to the row must still make every
//!   result registered on that list miss.
//! - A write generation (`gen:{table}`) that is not a number: reads keep working, and a write
//!   made while the counter is broken must not be lost once the counter is repaired or evicted.
//! - The lists through which a created or moved child reaches the cached list of its new
//!   parent's children: in eviction-safe mode, the parent's *children list* (the user whose
//!   add-ons a query lists; the query is registered on it) or the predicate list of the
//!   query's condition (`author1_id = 1`), evicted; and the children list overflowed and
//!   compacted to overflow markers (in both modes): creating an add-on for that user, or moving
//!   one to that user, must make the list of that user's add-ons miss. An overflowed children
//!   list must still reach the queries that were on it when the parent is written.
//!
//! Damage is made directly in the backend (`append`, `set`, `delete`), which is what a
//! corrupting client, a foreign writer or memcached's LRU does. Every case runs on every
//! database (SQLite always; PostgreSQL and MySQL when their URLs are set) and every backend
//! (locmem always; memcached when `MEMCACHED_URL` is set). "From the cache" means that zero
//! statements reached the database.

macro_rules! suite {
    ($conn:ty, $kind:expr) => {
        use caching_diesel::core::{AppendOutcome, Expiry};
        use caching_diesel::prelude::*;
        use caching_diesel::{CacheBuilder, ObjectKey, PredicateValue};
        use caching_tests::db::schema::{addons, users};
        use caching_tests::db::{Addon, BackendKind, Env, User, Writes};

        type Db = $conn;
        const KIND: BackendKind = $kind;

        fn env_with(test: &str, f: impl FnOnce(CacheBuilder) -> CacheBuilder) -> Option<Env<Db>> {
            Env::suite_configured(test, KIND, f)
        }

        fn env(test: &str) -> Option<Env<Db>> {
            env_with(test, |b| b)
        }

        fn eviction_safe_env(test: &str) -> Option<Env<Db>> {
            env_with(test, |b| b.eviction_safe(true))
        }

        fn find_user(e: &mut Env<Db>) -> User {
            users::table.find(1).cached().first(&mut e.conn).unwrap()
        }

        fn user_names(e: &mut Env<Db>) -> Vec<String> {
            let all: Vec<User> = users::table
                .order(users::id)
                .cached()
                .load(&mut e.conn)
                .unwrap();
            all.into_iter().map(|u| u.name).collect()
        }

        fn rename(e: &mut Env<Db>, name: &str) {
            let saved: User = e
                .conn
                .save_changes(&User {
                    id: 1,
                    name: name.into(),
                })
                .unwrap();
            assert_eq!(saved.name, name);
        }

        /// Ids of the add-ons whose first author is `user` (cached).
        fn addons_of(e: &mut Env<Db>, user: i32) -> Vec<i32> {
            let rows: Vec<Addon> = addons::table
                .filter(addons::author1_id.eq(user))
                .order(addons::id)
                .cached()
                .load(&mut e.conn)
                .unwrap();
            rows.into_iter().map(|a| a.id).collect()
        }

        fn flush_list(e: &Env<Db>, table: &str, pk: i32) -> String {
            e.cache
                .keys()
                .flush_key(&ObjectKey::new(table, &[pk.to_string()]))
        }

        /// Appends raw bytes to an existing flush list, as a corrupting client would.
        fn append_raw(e: &Env<Db>, list: &str, bytes: &[u8]) {
            assert!(
                e.cache.backend().get(list).unwrap().is_some(),
                "the fills registered on {list}"
            );
            let outcome = e.cache.backend().append_multi(&[(list, bytes)]).unwrap();
            assert_eq!(outcome, vec![AppendOutcome::Appended], "append to {list}");
        }

        /// The children list of a row: the queries holding a row that points at it.
        fn children_list(e: &Env<Db>, table: &str, pk: i32) -> String {
            e.cache
                .keys()
                .children_key(&ObjectKey::new(table, &[pk.to_string()]))
        }

        /// The predicate list of `addons.author1_id = user`.
        fn author_list(e: &Env<Db>, user: i32) -> String {
            e.cache.keys().predicate_key(
                "addons",
                "author1_id",
                &PredicateValue::from_int(user.into()),
            )
        }

        /// Deletes a list, as memcached's LRU does when it evicts it.
        fn evict(e: &Env<Db>, list: &str) {
            assert!(
                e.cache.backend().get(list).unwrap().is_some(),
                "the fill registered on {list}"
            );
            e.cache.backend().delete(list).unwrap();
        }

        // ---- 3. corrupted flush lists ---------------------------------------------------

        /// Caches user 1 by primary key and the list of all users, damages user 1's flush
        /// list with `garbage` (once before the list query registers, so a registration also
        /// follows the damage), renames user 1, and checks both reads are fresh.
        fn corrupted_list_case(test: &str, garbage: &[u8]) {
            let Some(mut e) = env(test) else { return };
            let list = flush_list(&e, "users", 1);
            assert_eq!(find_user(&mut e).name, "fliggy");
            append_raw(&e, &list, garbage);
            assert_eq!(user_names(&mut e), ["fliggy", "clouseroo"]);
            e.queries();
            assert_eq!(find_user(&mut e).name, "fliggy");
            assert_eq!(user_names(&mut e)[0], "fliggy");
            assert_eq!(e.queries(), 0, "both reads are cached before the write");

            rename(&mut e, "renamed");
            e.queries();
            assert_eq!(
                find_user(&mut e).name,
                "renamed",
                "{test}: the cached find survived the write (flush list with {garbage:?})"
            );
            assert!(e.queries() > 0, "{test}: the find was read again");
            assert_eq!(
                user_names(&mut e),
                ["renamed", "clouseroo"],
                "{test}: the cached list survived the write (flush list with {garbage:?})"
            );
            assert!(e.queries() > 0, "{test}: the list was read again");
            assert_eq!(find_user(&mut e).name, "renamed");
            assert_eq!(user_names(&mut e)[0], "renamed");
            assert_eq!(e.queries(), 0, "{test}: both reads are cached again");
        }

        #[test]
        fn an_invalid_utf8_byte_in_a_flush_list_does_not_leave_stale_entries() {
            corrupted_list_case("corrupt_ff", b"\xff");
        }

        #[test]
        fn an_invalid_utf8_token_in_a_flush_list_does_not_leave_stale_entries() {
            corrupted_list_case("corrupt_ff_token", b" \xc3\x28 \xff\xfe");
        }

        #[test]
        fn a_control_character_token_in_a_flush_list_does_not_leave_stale_entries() {
            corrupted_list_case("corrupt_ctl", b" \x01junk");
        }

        #[test]
        fn an_over_long_token_in_a_flush_list_does_not_leave_stale_entries() {
            let long = format!(
                " {}",
                "x".repeat(caching_diesel::core::key::MAX_KEY_LEN + 50)
            );
            corrupted_list_case("corrupt_long", long.as_bytes());
        }

        // ---- 4. a write generation that is not a number ---------------------------------

        fn break_generation(e: &Env<Db>) -> String {
            let gen = e.cache.keys().generation_key("users");
            e.cache
                .backend()
                .set(&gen, b"junk", Expiry::Forever)
                .unwrap();
            gen
        }

        /// A write made while `gen:users` is junk; then the counter goes away (evicted, or
        /// deleted by an operator repairing it): the entry cached before the write must miss.
        #[test]
        fn a_write_under_a_junk_generation_is_not_lost_when_the_counter_goes_away() {
            let Some(mut e) = env("junk_gen_evicted") else {
                return;
            };
            assert_eq!(find_user(&mut e).name, "fliggy");
            assert_eq!(user_names(&mut e)[0], "fliggy");
            e.queries();
            assert_eq!(find_user(&mut e).name, "fliggy");
            assert_eq!(e.queries(), 0, "cached before the counter broke");

            let gen = break_generation(&e);
            rename(&mut e, "renamed");
            e.cache.backend().delete(&gen).unwrap();

            assert_eq!(
                find_user(&mut e).name,
                "renamed",
                "the cached find survived a write made under a junk generation counter"
            );
            assert_eq!(
                user_names(&mut e)[0],
                "renamed",
                "the cached list survived a write made under a junk generation counter"
            );
            e.queries();
            assert_eq!(find_user(&mut e).name, "renamed");
            assert_eq!(e.queries(), 0, "cached again once the counter is back");
        }

        /// With the junk counter in place, reads work (from the database or a repaired
        /// counter) and are fresh after a write; they stay fresh once the counter goes away.
        #[test]
        fn reads_under_a_junk_generation_work_and_stay_fresh() {
            let Some(mut e) = env("junk_gen_reads") else {
                return;
            };
            assert_eq!(find_user(&mut e).name, "fliggy");
            assert_eq!(user_names(&mut e)[0], "fliggy");

            let gen = break_generation(&e);
            assert_eq!(find_user(&mut e).name, "fliggy", "reads work");
            assert_eq!(user_names(&mut e)[0], "fliggy", "reads work");
            rename(&mut e, "renamed");
            assert_eq!(find_user(&mut e).name, "renamed", "fresh after the write");
            assert_eq!(user_names(&mut e)[0], "renamed", "fresh after the write");

            // Whatever the reads did to the counter (left it, repaired it), it may now be
            // evicted: the old entries must not come back.
            e.cache.backend().delete(&gen).unwrap();
            assert_eq!(
                find_user(&mut e).name,
                "renamed",
                "the entry cached before the junk counter came back once the counter went away"
            );
            assert_eq!(
                user_names(&mut e)[0],
                "renamed",
                "the list cached before the junk counter came back once the counter went away"
            );
        }

        // ---- 5. a parent's lists evicted or overflowed ------------------------------------

        fn new_addon(id: i32, author1_id: i32, author2_id: i32) -> Addon {
            Addon {
                id,
                val: 7,
                author1_id,
                author2_id,
            }
        }

        /// Caches the add-ons of user 1 ([1, 2]) and checks that the second read hits.
        fn cache_addons_of_user_1(e: &mut Env<Db>) {
            assert_eq!(addons_of(e, 1), [1, 2]);
            e.queries();
            assert_eq!(addons_of(e, 1), [1, 2]);
            assert_eq!(e.queries(), 0, "cached");
        }

        /// Eviction-safe mode, `list` (of user 1) evicted, then an add-on created for user 1.
        /// Its second author is user 1 too, so no list of another user holds the cached
        /// result.
        fn evicted_then_created(test: &str, list: fn(&Env<Db>) -> String) {
            let Some(mut e) = eviction_safe_env(test) else {
                return;
            };
            cache_addons_of_user_1(&mut e);
            let list = list(&e);
            evict(&e, &list);
            <Db as Writes>::create_addon(&mut e.conn, &new_addon(3, 1, 1)).unwrap();
            e.queries();
            assert_eq!(
                addons_of(&mut e, 1),
                [1, 2, 3],
                "the list of user 1's add-ons is stale after an add-on was created for user 1 \
                 ({list} had been evicted)"
            );
            assert!(e.queries() > 0);
        }

        #[test]
        fn eviction_safe_creating_a_child_of_a_parent_whose_list_was_evicted() {
            evicted_then_created("evict_parent_create", |e| children_list(e, "users", 1));
        }

        #[test]
        fn eviction_safe_creating_a_child_after_the_predicate_list_was_evicted() {
            evicted_then_created("evict_pred_create", |e| author_list(e, 1));
        }

        /// Eviction-safe mode, `list` (of user 1) evicted, then add-on 3 (user 3's) moved to
        /// user 1 by a `save_changes` of its author.
        fn evicted_then_moved(test: &str, list: fn(&Env<Db>) -> String) {
            let Some(mut e) = eviction_safe_env(test) else {
                return;
            };
            <Db as Writes>::create_user(
                &mut e.conn,
                &User {
                    id: 3,
                    name: "third".into(),
                },
            )
            .unwrap();
            <Db as Writes>::create_addon(&mut e.conn, &new_addon(3, 3, 3)).unwrap();
            cache_addons_of_user_1(&mut e);
            assert_eq!(addons_of(&mut e, 3), [3]);
            let list = list(&e);
            evict(&e, &list);
            let moved: Addon = e.conn.save_changes(&new_addon(3, 1, 3)).unwrap();
            assert_eq!(moved.author1_id, 1);
            e.queries();
            assert_eq!(
                addons_of(&mut e, 1),
                [1, 2, 3],
                "the list of user 1's add-ons is stale after add-on 3 moved to user 1 \
                 ({list} had been evicted)"
            );
            assert!(e.queries() > 0);
            assert_eq!(addons_of(&mut e, 3), Vec::<i32>::new(), "user 3's list");
        }

        #[test]
        fn eviction_safe_moving_a_child_to_a_parent_whose_list_was_evicted() {
            evicted_then_moved("evict_parent_move", |e| children_list(e, "users", 1));
        }

        #[test]
        fn eviction_safe_moving_a_child_after_the_predicate_list_was_evicted() {
            evicted_then_moved("evict_pred_move", |e| author_list(e, 1));
        }

        /// Makes `list` overflow the way a busy row's list does: distinct tokens to more than
        /// half an item (so compaction cannot save it), filler to the brim, then a real fill
        /// whose registration on the list does not fit: the engine compacts the list to
        /// overflow markers, dropping the registrations it held.
        fn overflow(e: &mut Env<Db>, list: &str) {
            let backend = e.cache.backend();
            let limit = backend.max_item_size();
            let prefix = e.cache.keys().prefix().to_string();
            let mut chunk = String::new();
            let mut written = 0;
            let mut n = 0u64;
            while written < limit * 3 / 4 {
                // Query keys of nothing under this test's prefix: harmless if ever deleted.
                chunk.push_str(&format!(" {prefix}q:pad{n:08}"));
                n += 1;
                if chunk.len() >= 64 * 1024 {
                    written += chunk.len();
                    append_raw(e, list, chunk.as_bytes());
                    chunk.clear();
                }
            }
            let mut size = 64 * 1024;
            while size > 0 {
                let spaces = vec![b' '; size];
                match backend.append_multi(&[(list, &spaces)]).unwrap()[..] {
                    [AppendOutcome::Appended] => {}
                    _ => size /= 2,
                }
            }
            let before = e.cache.stats().overflows;
            // Another query over user 1's add-ons: it registers on user 1's children list.
            let rows: Vec<Addon> = addons::table
                .filter(addons::author1_id.eq(1))
                .filter(addons::val.eq(42))
                .order(addons::id)
                .cached()
                .load(&mut e.conn)
                .unwrap();
            assert_eq!(rows.len(), 2);
            assert!(
                e.cache.stats().overflows > before,
                "{list} overflowed (stats: {:?})",
                e.cache.stats()
            );
            let len = backend.get(list).unwrap().map_or(0, |i| i.value.len());
            assert!(len < limit / 2, "{list} was compacted ({len} bytes)");
        }

        fn overflowed_parent_case(test: &str, safe: bool) {
            let Some(mut e) = env_with(test, |b| b.eviction_safe(safe)) else {
                return;
            };
            cache_addons_of_user_1(&mut e);
            let list = children_list(&e, "users", 1);
            overflow(&mut e, &list);
            let marker = format!("!{}", e.cache.keys().version_key("addons"));
            let tokens = caching_tests::list_tokens(&e.cache, &list);
            assert!(
                tokens.contains(&marker),
                "the overflowed children list names its child table: {tokens:?}"
            );
            e.queries();
            assert_eq!(addons_of(&mut e, 1), [1, 2]);
            assert_eq!(e.queries(), 0, "the overflow itself invalidates nothing");
            <Db as Writes>::create_addon(&mut e.conn, &new_addon(3, 1, 1)).unwrap();
            e.queries();
            assert_eq!(
                addons_of(&mut e, 1),
                [1, 2, 3],
                "the list of user 1's add-ons is stale after an add-on was created for user 1 \
                 (user 1's children list had overflowed; eviction-safe: {safe})"
            );
            assert!(e.queries() > 0);
        }

        /// User 1's children list overflowed, dropping the registration of the cached list of
        /// its add-ons: renaming user 1 still reaches it (scenario 16), through the marker.
        fn overflowed_parent_renamed(test: &str, safe: bool) {
            let Some(mut e) = env_with(test, |b| b.eviction_safe(safe)) else {
                return;
            };
            cache_addons_of_user_1(&mut e);
            let list = children_list(&e, "users", 1);
            let key = addons::table
                .filter(addons::author1_id.eq(1))
                .order(addons::id)
                .cached()
                .key::<Addon, _>(&mut e.conn)
                .unwrap();
            overflow(&mut e, &list);
            assert!(
                !caching_tests::list_tokens(&e.cache, &list).contains(&key),
                "the compaction dropped the registration"
            );
            e.queries();
            assert_eq!(addons_of(&mut e, 1), [1, 2]);
            assert_eq!(e.queries(), 0, "cached");
            rename(&mut e, "renamed");
            assert_eq!(addons_of(&mut e, 1), [1, 2]);
            assert!(
                e.queries() > 0,
                "renaming user 1 reaches the queries of its overflowed children list \
                 (eviction-safe: {safe})"
            );
        }

        #[test]
        fn renaming_a_parent_whose_children_list_overflowed() {
            overflowed_parent_renamed("overflow_parent_rename", false);
        }

        #[test]
        fn eviction_safe_renaming_a_parent_whose_children_list_overflowed() {
            overflowed_parent_renamed("overflow_parent_rename_safe", true);
        }

        /// Eviction-safe mode, user 1's children list overflowed (compacted to overflow
        /// markers), then an add-on created for user 1.
        #[test]
        fn eviction_safe_creating_a_child_of_a_parent_whose_list_overflowed() {
            overflowed_parent_case("overflow_parent_safe", true);
        }

        /// The same in the default mode: failure-modes.md promises that an overflowed list
        /// makes nothing stale.
        #[test]
        fn creating_a_child_of_a_parent_whose_list_overflowed() {
            overflowed_parent_case("overflow_parent", false);
        }
    };
}

caching_tests::for_each_database!(suite);
