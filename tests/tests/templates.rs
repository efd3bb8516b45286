//! SCENARIOS 30-33 (template fragment caching, `caching_diesel::template`) on SQLite with
//! locmem, memcached and Redis (`MEMCACHED_URL`, `REDIS_URL`; under `CI=true` they must be set), with
//! real models read and written through a cached connection. A
//! fragment's block calls `tick()`, which counts its renders; "from the cache" means the block
//! did not run (and, for the rows, that no statement reached the database). Also: misuse is a
//! template error, and a cache that is down renders every time without one.

#![cfg(all(feature = "minijinja", feature = "sqlite"))]

macro_rules! suite {
    ($kind:expr) => {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use std::time::Duration;

        use caching_diesel::prelude::*;
        use caching_diesel::template::{self, minijinja};
        use caching_diesel::Cache;
        use caching_tests::db::schema::{addons, users};
        use caching_tests::db::{Addon, BackendKind, Env, User, Writes};
        use minijinja::{context, Environment, Value};

        type Db = diesel::SqliteConnection;
        const KIND: BackendKind = $kind;

        fn env(test: &str) -> Option<Env<Db>> {
            Env::suite(test, KIND)
        }

        /// An environment with the `cache` function on `cache`, `tick()` counting renders,
        /// and `templates`.
        struct Pages {
            env: Environment<'static>,
            renders: Arc<AtomicUsize>,
        }

        impl Pages {
            fn new(cache: &Cache, templates: &[(&'static str, &'static str)]) -> Pages {
                let mut env = Environment::new();
                template::register(&mut env, cache.clone());
                let renders = Arc::new(AtomicUsize::new(0));
                let r = renders.clone();
                env.add_function("tick", move || {
                    r.fetch_add(1, Ordering::SeqCst);
                    String::new()
                });
                for (name, source) in templates {
                    env.add_template(name, source).unwrap();
                }
                Pages { env, renders }
            }

            fn render(&self, name: &str, ctx: Value) -> String {
                self.env
                    .get_template(name)
                    .unwrap()
                    .render(ctx)
                    .unwrap_or_else(|e| panic!("{name}: {e:#}"))
            }

            /// Renders of a block since the last call.
            fn renders(&self) -> usize {
                self.renders.swap(0, Ordering::SeqCst)
            }
        }

        fn addons_of(e: &mut Env<Db>, user: i32) -> Vec<Addon> {
            addons::table
                .filter(addons::author1_id.eq(user))
                .order(addons::id)
                .cached()
                .load(&mut e.conn)
                .unwrap()
        }

        fn find_user(e: &mut Env<Db>, id: i32) -> User {
            users::table.find(id).cached().first(&mut e.conn).unwrap()
        }

        fn rename(e: &mut Env<Db>, id: i32, name: &str) {
            let _: User = e
                .conn
                .save_changes(&User {
                    id,
                    name: name.into(),
                })
                .unwrap();
        }

        const LIST: &str = r#"{% call cache(addons, "list") %}{{ tick() }}{% for a in addons %}[{{ a.id }}:{{ a.val }}]{% endfor %}{% endcall %}"#;

        #[test]
        fn scenario_30_fragment_around_a_cached_query() {
            let Some(mut e) = env("t30") else { return };
            let pages = Pages::new(&e.cache, &[("list.html", LIST)]);
            let list = |rows: &[Addon]| context! { addons => template::objects(rows) };

            let rows = addons_of(&mut e, 1);
            assert!(e.queries() > 0);
            assert_eq!(pages.render("list.html", list(&rows)), "[1:42][2:42]");
            assert_eq!(pages.renders(), 1, "first render runs the block");

            let rows = addons_of(&mut e, 1);
            assert_eq!(e.queries(), 0, "the rows come from the cache");
            assert_eq!(pages.render("list.html", list(&rows)), "[1:42][2:42]");
            assert_eq!(pages.renders(), 0, "the fragment comes from the cache");

            // A row of it saved through the write helpers: the fragment is deleted, even for
            // a page that still holds the old rows (same content, same key: only the flush
            // list registration can have removed it).
            let _: Addon = e
                .conn
                .save_changes(&Addon {
                    id: 1,
                    val: 7,
                    author1_id: 1,
                    author2_id: 2,
                })
                .unwrap();
            assert_eq!(pages.render("list.html", list(&rows)), "[1:42][2:42]");
            assert_eq!(pages.renders(), 1, "saving a row re-renders the fragment");
            let rows = addons_of(&mut e, 1);
            assert!(e.queries() > 0, "the query was invalidated too");
            assert_eq!(pages.render("list.html", list(&rows)), "[1:7][2:42]");
            assert_eq!(pages.renders(), 1);
            assert_eq!(pages.render("list.html", list(&rows)), "[1:7][2:42]");
            assert_eq!(pages.renders(), 0);

            // A new row enters the list: the query misses, and its result is a new fragment.
            <Db as Writes>::create_addon(
                &mut e.conn,
                &Addon {
                    id: 3,
                    val: 9,
                    author1_id: 1,
                    author2_id: 2,
                },
            )
            .unwrap();
            let rows = addons_of(&mut e, 1);
            assert!(e.queries() > 0);
            assert_eq!(rows.len(), 3);
            assert_eq!(pages.render("list.html", list(&rows)), "[1:7][2:42][3:9]");
            assert_eq!(pages.renders(), 1, "a row entering the list re-renders");
            let rows = addons_of(&mut e, 1);
            assert_eq!(pages.render("list.html", list(&rows)), "[1:7][2:42][3:9]");
            assert_eq!((e.queries(), pages.renders()), (0, 0));
        }

        const CARD: &str =
            r#"{% call cache(user, "card") %}{{ tick() }}<b>{{ user.name }}</b>{% endcall %}"#;

        #[test]
        fn scenario_31_fragment_around_one_object() {
            let Some(mut e) = env("t31") else { return };
            let pages = Pages::new(&e.cache, &[("card.html", CARD)]);
            let card = |u: &User| context! { user => template::object(u) };

            let u = find_user(&mut e, 1);
            assert_eq!(pages.render("card.html", card(&u)), "<b>fliggy</b>");
            assert_eq!(pages.render("card.html", card(&u)), "<b>fliggy</b>");
            assert_eq!(pages.renders(), 1);

            rename(&mut e, 2, "somebody else");
            assert_eq!(pages.render("card.html", card(&u)), "<b>fliggy</b>");
            assert_eq!(pages.renders(), 0, "an unrelated save leaves it cached");

            // Saved with the same values: the key is unchanged, the registration removed it.
            rename(&mut e, 1, "fliggy");
            assert_eq!(pages.render("card.html", card(&u)), "<b>fliggy</b>");
            assert_eq!(pages.renders(), 1, "saving the object re-renders it");

            rename(&mut e, 1, "clouseroo <3");
            e.queries();
            let u = find_user(&mut e, 1);
            assert!(e.queries() > 0);
            assert_eq!(pages.render("card.html", card(&u)), "<b>clouseroo &lt;3</b>");
            assert_eq!(pages.render("card.html", card(&u)), "<b>clouseroo &lt;3</b>");
            assert_eq!(pages.renders(), 1, "escaped once, served as is");

            // A write to a row that points at the user (an add-on of theirs) reaches it too,
            // as it reaches the user's cached queries.
            let _: Addon = e
                .conn
                .save_changes(&Addon {
                    id: 2,
                    val: 5,
                    author1_id: 1,
                    author2_id: 2,
                })
                .unwrap();
            assert_eq!(pages.render("card.html", card(&u)), "<b>clouseroo &lt;3</b>");
            assert_eq!(pages.renders(), 1, "a child's write re-renders the parent's fragment");
        }

        /// A fragment around an add-on (not read through a cached query) is re-rendered
        /// after a write to its author, as the cached queries holding the add-on are, and
        /// not after a write to another add-on of the same author.
        #[test]
        fn a_fragment_follows_its_objects_parents_not_their_other_children() {
            let Some(mut e) = env("t_parents") else { return };
            let pages = Pages::new(
                &e.cache,
                &[(
                    "addon.html",
                    r#"{% call cache(addon, "card") %}{{ tick() }}{{ addon.id }}:{{ addon.val }}{% endcall %}"#,
                )],
            );
            let addon: Addon = addons::table.find(1).first(&mut *e.conn).unwrap();
            let card = || context! { addon => template::object(&addon) };
            assert_eq!(pages.render("addon.html", card()), "1:42");
            assert_eq!(pages.render("addon.html", card()), "1:42");
            assert_eq!(pages.renders(), 1);

            // Add-on 2 (same authors) saved: add-on 1's fragment stays.
            let _: Addon = e
                .conn
                .save_changes(&Addon {
                    id: 2,
                    val: 5,
                    author1_id: 1,
                    author2_id: 2,
                })
                .unwrap();
            assert_eq!(pages.render("addon.html", card()), "1:42");
            assert_eq!(pages.renders(), 0, "a sibling's save leaves it cached");

            // Its author renamed: re-rendered.
            rename(&mut e, 1, "renamed");
            assert_eq!(pages.render("addon.html", card()), "1:42");
            assert_eq!(pages.renders(), 1, "its author's write re-renders it");
            rename(&mut e, 2, "renamed too");
            assert_eq!(pages.render("addon.html", card()), "1:42");
            assert_eq!(pages.renders(), 1, "so does its second author's");
        }

        #[test]
        fn scenario_32_two_fragments_of_one_object_are_cached_separately() {
            let Some(mut e) = env("t32") else { return };
            let pages = Pages::new(
                &e.cache,
                &[
                    (
                        "two.html",
                        r#"{% call cache(user, "a") %}{{ tick() }}A:{{ user.name }}{% endcall %}|{% call cache(user, "b") %}{{ tick() }}B:{{ user.name }}{% endcall %}"#,
                    ),
                    (
                        "other.html",
                        r#"{% call cache(user, "a") %}{{ tick() }}X:{{ user.name }}{% endcall %}"#,
                    ),
                ],
            );
            let u = find_user(&mut e, 1);
            let ctx = || context! { user => template::object(&u) };
            assert_eq!(pages.render("two.html", ctx()), "A:fliggy|B:fliggy");
            assert_eq!(pages.renders(), 2);
            assert_eq!(pages.render("two.html", ctx()), "A:fliggy|B:fliggy");
            assert_eq!(pages.renders(), 0);
            // The same fragment name in another template is another fragment.
            assert_eq!(pages.render("other.html", ctx()), "X:fliggy");
            assert_eq!(pages.renders(), 1);
            assert_eq!(pages.render("other.html", ctx()), "X:fliggy");
            assert_eq!(pages.renders(), 0);
            // A save deletes all of them.
            rename(&mut e, 1, "fliggy");
            assert_eq!(pages.render("two.html", ctx()), "A:fliggy|B:fliggy");
            assert_eq!(pages.render("other.html", ctx()), "X:fliggy");
            assert_eq!(pages.renders(), 3);
        }

        #[test]
        fn scenario_33_timeout_and_extra_key_parts() {
            let Some(mut e) = env("t33") else { return };
            let pages = Pages::new(
                &e.cache,
                &[
                    (
                        "extra.html",
                        r#"{% call cache(user, "e", extra=[lang, 1]) %}{{ tick() }}{{ lang }}:{{ user.name }}{% endcall %}"#,
                    ),
                    (
                        "typed.html",
                        r#"{% call cache(user, "t", extra=x) %}{{ tick() }}{{ x }}{% endcall %}"#,
                    ),
                    (
                        "ttl.html",
                        r#"{% call cache(user, "ttl", timeout=1) %}{{ tick() }}{{ user.name }}{% endcall %}"#,
                    ),
                ],
            );
            let u = find_user(&mut e, 1);
            let with = |lang: &str| context! { user => template::object(&u), lang };
            assert_eq!(pages.render("extra.html", with("en")), "en:fliggy");
            assert_eq!(pages.render("extra.html", with("en")), "en:fliggy");
            assert_eq!(pages.renders(), 1);
            assert_eq!(pages.render("extra.html", with("fr")), "fr:fliggy");
            assert_eq!(pages.renders(), 1, "a different extra renders anew");
            assert_eq!(pages.render("extra.html", with("en")), "en:fliggy");
            assert_eq!(pages.render("extra.html", with("fr")), "fr:fliggy");
            assert_eq!(pages.renders(), 0, "each extra keeps its own fragment");

            // Extra parts are typed: 1 and "1" are different fragments.
            let typed = |x: Value| context! { user => template::object(&u), x };
            assert_eq!(pages.render("typed.html", typed(Value::from(1))), "1");
            assert_eq!(pages.render("typed.html", typed(Value::from("1"))), "1");
            assert_eq!(pages.render("typed.html", typed(Value::from(1))), "1");
            assert_eq!(pages.renders(), 2);

            let ctx = || context! { user => template::object(&u) };
            assert_eq!(pages.render("ttl.html", ctx()), "fliggy");
            assert_eq!(pages.render("ttl.html", ctx()), "fliggy");
            assert_eq!(pages.renders(), 1);
            std::thread::sleep(Duration::from_millis(2100));
            assert_eq!(pages.render("ttl.html", ctx()), "fliggy");
            assert_eq!(pages.renders(), 1, "an expired fragment renders anew");
            assert_eq!(pages.render("ttl.html", ctx()), "fliggy");
            assert_eq!(pages.renders(), 0);
        }

        #[test]
        fn a_write_during_the_render_leaves_nothing_cached() {
            let Some(mut e) = env("race") else { return };
            let mut pages = Pages::new(&e.cache, &[]);
            let cache = e.cache.clone();
            // Another process writing a user while the block renders.
            pages.env.add_function("write", move || {
                let mut inv = caching_diesel::Invalidation::new();
                inv.table_written("users");
                cache.invalidate(&inv).unwrap();
                String::new()
            });
            pages
                .env
                .add_template(
                    "racy.html",
                    r#"{% call cache(user, "racy") %}{{ tick() }}{{ write() }}{{ user.name }}{% endcall %}"#,
                )
                .unwrap();
            let u = find_user(&mut e, 1);
            let ctx = || context! { user => template::object(&u) };
            assert_eq!(pages.render("racy.html", ctx()), "fliggy");
            assert_eq!(pages.render("racy.html", ctx()), "fliggy");
            assert_eq!(pages.renders(), 2, "a raced fill is not stored");
            assert!(e.cache.stats().skipped_fills >= 2);
        }

        #[test]
        fn empty_lists_are_cached_only_with_a_timeout() {
            let Some(mut e) = env("empty") else { return };
            let pages = Pages::new(
                &e.cache,
                &[
                    ("list.html", LIST),
                    (
                        "timed.html",
                        r#"{% call cache(addons, "list", timeout=60) %}{{ tick() }}{% for a in addons %}[{{ a.id }}]{% else %}none{% endfor %}{% endcall %}"#,
                    ),
                ],
            );
            let rows = addons_of(&mut e, 2);
            assert!(rows.is_empty());
            let list = |rows: &[Addon]| context! { addons => template::objects(rows) };
            assert_eq!(pages.render("list.html", list(&rows)), "");
            assert_eq!(pages.render("list.html", list(&rows)), "");
            assert_eq!(pages.renders(), 2, "no timeout: nothing could delete it, not cached");
            assert_eq!(pages.render("timed.html", list(&rows)), "none");
            assert_eq!(pages.render("timed.html", list(&rows)), "none");
            assert_eq!(pages.renders(), 1, "with a timeout it is cached");
            // A row entering it is a new fragment at once (its content is in the key).
            <Db as Writes>::create_addon(
                &mut e.conn,
                &Addon {
                    id: 3,
                    val: 1,
                    author1_id: 2,
                    author2_id: 1,
                },
            )
            .unwrap();
            let rows = addons_of(&mut e, 2);
            assert_eq!(pages.render("timed.html", list(&rows)), "[3]");
            assert_eq!(pages.renders(), 1);
        }
    };
}

mod memcached {
    suite!(caching_tests::db::BackendKind::Memcached);
}

#[cfg(feature = "redis")]
mod redis {
    suite!(caching_tests::db::BackendKind::Redis);
}

mod locmem {
    suite!(caching_tests::db::BackendKind::LocMem);

    use caching_diesel::core::backend::memcached::MemcachedOptions;

    #[test]
    fn misuse_is_a_template_error() {
        let Some(mut e) = env("misuse") else { return };
        let u = find_user(&mut e, 1);
        let mut pages = Pages::new(
            &e.cache,
            &[
                ("expr.html", r#"{{ cache(user, "x") }}"#),
                (
                    "plain.html",
                    r#"{% call cache(plain, "x") %}x{% endcall %}"#,
                ),
                (
                    "string.html",
                    r#"{% call cache("users", "x") %}x{% endcall %}"#,
                ),
                (
                    "timeout.html",
                    r#"{% call cache(user, "x", timeout=0) %}x{% endcall %}"#,
                ),
                (
                    "float.html",
                    r#"{% call cache(user, "x", timeout=1.5) %}x{% endcall %}"#,
                ),
                (
                    "unknown.html",
                    r#"{% call cache(user, "x", ttl=5) %}x{% endcall %}"#,
                ),
                ("noname.html", r#"{% call cache(user) %}x{% endcall %}"#),
                (
                    "fails.html",
                    r#"{% call cache(user, "x") %}{{ tick() }}{{ fail() }}{% endcall %}"#,
                ),
            ],
        );
        pages
            .env
            .add_function("fail", || -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    "boom",
                ))
            });
        let ctx = || {
            context! {
                user => template::object(&u),
                plain => Value::from(minijinja::value::Serde(&u)),
            }
        };
        for name in [
            "expr.html",
            "plain.html",
            "string.html",
            "timeout.html",
            "float.html",
            "unknown.html",
            "noname.html",
            "fails.html",
            "fails.html",
        ] {
            let err = pages.env.get_template(name).unwrap().render(ctx());
            assert!(err.is_err(), "{name} must be a template error");
        }
        assert_eq!(pages.renders(), 2, "a failing block is never cached");
        // A template that is not in the environment cannot be keyed by its source.
        let err = pages
            .env
            .render_str(r#"{% call cache(user, "x") %}x{% endcall %}"#, ctx());
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("not in the environment"));
    }

    #[test]
    fn cache_down_renders_every_time_without_error() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let options = MemcachedOptions {
            connect_timeout: Duration::from_millis(100),
            io_timeout: Duration::from_millis(100),
            retry_after: Duration::from_millis(0),
            ..MemcachedOptions::default()
        };
        let cache = Cache::builder()
            .memcached(&[format!("127.0.0.1:{port}")], options)
            .unwrap()
            .prefix(caching_tests::unique_prefix("templates-down"))
            .build()
            .unwrap();
        let Some(mut e) = Env::<Db>::with_cache("templates_down", cache) else {
            return;
        };
        let pages = Pages::new(&e.cache, &[("card.html", CARD), ("list.html", LIST)]);
        let u = find_user(&mut e, 1);
        let rows = addons_of(&mut e, 1);
        for _ in 0..3 {
            let card = context! { user => template::object(&u) };
            assert_eq!(pages.render("card.html", card), "<b>fliggy</b>");
            let list = context! { addons => template::objects(&rows) };
            assert_eq!(pages.render("list.html", list), "[1:42][2:42]");
        }
        assert_eq!(pages.renders(), 6, "every render runs the block");
        assert!(
            e.cache.stats().backend_errors > 0,
            "the failures were counted"
        );
    }
}
