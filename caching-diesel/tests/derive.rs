//! What `#[derive(Cached)]` generates: object keys (composite, custom model name, default table
//! name), foreign-key targets (nullable, declared under `#[cached]`), the fingerprint, the
//! `FlushTarget` impl (its parents too), and a composite-key model cached and invalidated end to end on SQLite.

use caching_diesel::core::{FlushTarget, KeySpace};
use caching_diesel::prelude::*;
use caching_diesel::ObjectKey;
use serde::{Deserialize, Serialize};

mod schema {
    diesel::table! {
        pairs (a, b) {
            a -> Integer,
            b -> Integer,
            val -> Integer,
        }
    }
    diesel::table! {
        users (id) {
            id -> Integer,
        }
    }
    diesel::table! {
        blog_entrys (id) {
            id -> Integer,
        }
    }
    diesel::table! {
        posts (id) {
            id -> Integer,
            user_id -> Nullable<Integer>,
            other_id -> Integer,
        }
    }
}

use schema::{blog_entrys, pairs, posts, users};

#[derive(
    Queryable,
    Selectable,
    Identifiable,
    AsChangeset,
    Cached,
    Serialize,
    Deserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
)]
#[diesel(table_name = pairs, primary_key(a, b))]
struct Pair {
    a: i32,
    b: i32,
    val: i32,
}

#[derive(Queryable, Identifiable, Cached, Serialize, Deserialize, Debug)]
#[diesel(table_name = users)]
struct User {
    id: i32,
}

/// A nullable foreign key declared for Diesel, a second one declared for the cache only.
#[derive(Queryable, Identifiable, Associations, Cached, Serialize, Deserialize, Debug)]
#[diesel(table_name = posts, belongs_to(User))]
#[cached(belongs_to(User, foreign_key = other_id))]
struct Post {
    id: i32,
    user_id: Option<i32>,
    other_id: i32,
}

#[derive(Cached, Serialize, Deserialize)]
#[cached(model = "custom")]
struct Renamed {
    id: i32,
}

/// No `table_name`: Diesel's default, the struct name in snake case plus `s` (Diesel's own
/// `Identifiable` finds `blog_entrys` the same way, or this would not compile).
#[derive(Identifiable, Cached, Serialize, Deserialize)]
struct BlogEntry {
    id: i32,
}

/// Diesel's `primary_key` and `foreign_key` name columns: renamed fields are found by their
/// `column_name`, and options the derive does not read (with commas inside generics) are
/// skipped.
#[derive(Queryable, Cached, Serialize, Deserialize)]
#[diesel(
    table_name = posts,
    check_for_backend(diesel::sqlite::Sqlite),
    base_query_type = diesel::dsl::Select<posts::table, (posts::id, posts::other_id)>,
    primary_key(id),
    belongs_to(User, foreign_key = other_id)
)]
struct RenamedColumns {
    #[diesel(column_name = id)]
    key: i32,
    #[diesel(sql_type = diesel::sql_types::Integer, column_name = "other_id")]
    owner: i32,
}

mod v1 {
    #[derive(caching_diesel::Cached, serde::Serialize, serde::Deserialize)]
    pub struct Item {
        pub id: i32,
        pub n: i32,
    }
}

mod v1_again {
    #[derive(caching_diesel::Cached, serde::Serialize, serde::Deserialize)]
    pub struct Item {
        pub id: i32,
        pub n: i32,
    }
}

mod v2 {
    #[derive(caching_diesel::Cached, serde::Serialize, serde::Deserialize)]
    pub struct Item {
        pub id: i32,
        pub n: i64,
    }
}

fn keys(keys: &[ObjectKey]) -> Vec<&str> {
    keys.iter().map(ObjectKey::as_str).collect()
}

#[test]
fn composite_primary_key() {
    let p = Pair { a: 1, b: 2, val: 0 };
    assert_eq!(Pair::TABLE, "pairs");
    assert_eq!(p.object_key().as_str(), "o:pairs:1:2");
    assert_eq!(p.object_key().model(), "pairs");
    let swapped = Pair { a: 2, b: 1, val: 0 };
    assert_eq!(swapped.object_key().as_str(), "o:pairs:2:1");
    assert_ne!(p.object_key(), swapped.object_key());
    assert!(p.foreign_keys().is_empty());
}

#[test]
fn nullable_foreign_key() {
    let orphan = Post {
        id: 1,
        user_id: None,
        other_id: 7,
    };
    assert_eq!(keys(&orphan.foreign_keys()), ["o:users:7"]);
    let owned = Post {
        id: 2,
        user_id: Some(3),
        other_id: 7,
    };
    assert_eq!(keys(&owned.foreign_keys()), ["o:users:3", "o:users:7"]);
    assert!(owned.foreign_keys().iter().all(|k| k.model() == "users"));
    assert_eq!(owned.object_key().as_str(), "o:posts:2");
}

#[test]
fn second_foreign_key_under_cached() {
    // belongs_to(User) under #[diesel] (default column user_id) and under #[cached]
    // (other_id): both are targets, in declaration order.
    let p = Post {
        id: 1,
        user_id: Some(4),
        other_id: 5,
    };
    assert_eq!(keys(&p.foreign_keys()), ["o:users:4", "o:users:5"]);
}

#[test]
fn custom_model_name() {
    assert_eq!(Renamed::TABLE, "custom");
    let r = Renamed { id: 9 };
    assert_eq!(r.object_key().as_str(), "o:custom:9");
    assert_eq!(r.object_key().model(), "custom");
    let mut tables = Vec::new();
    <Renamed as CacheableRow>::tables(&mut tables);
    assert_eq!(tables, ["custom"]);
    assert_eq!(FlushTarget::tables(&r), ["custom"]);
}

#[test]
fn default_table_name() {
    assert_eq!(BlogEntry::TABLE, "blog_entrys");
    assert_eq!(BlogEntry { id: 1 }.object_key().as_str(), "o:blog_entrys:1");
    assert_eq!(User::TABLE, "users");
}

#[test]
fn column_names() {
    let r = RenamedColumns { key: 4, owner: 8 };
    assert_eq!(RenamedColumns::TABLE, "posts");
    assert_eq!(r.object_key().as_str(), "o:posts:4");
    assert_eq!(keys(&r.foreign_keys()), ["o:users:8"]);
}

#[test]
fn fingerprint_follows_field_types() {
    assert_eq!(v1::Item::FINGERPRINT, "Item{id:i32;n:i32;}");
    assert_eq!(v1::Item::FINGERPRINT, v1_again::Item::FINGERPRINT);
    assert_ne!(v1::Item::FINGERPRINT, v2::Item::FINGERPRINT);
    // The same name, table and SQL: only the fingerprint keeps the two apart in query keys.
    assert_eq!(v1::Item::TABLE, v2::Item::TABLE);
    assert_eq!(Pair::FINGERPRINT, "Pair{a:i32;b:i32;val:i32;}");
}

#[test]
fn flush_target() {
    let ks = KeySpace::new("app").unwrap();
    let p = Pair { a: 1, b: 2, val: 0 };
    assert_eq!(
        FlushTarget::flush_key(&p, &ks).as_deref(),
        Some("app:f:o:pairs:1:2")
    );
    assert_eq!(
        FlushTarget::flush_key(&p, &ks),
        Some(ks.flush_key(&p.object_key()))
    );
    assert_eq!(FlushTarget::tables(&p), ["pairs"]);
    assert!(FlushTarget::parents(&p).is_empty());
    // A value tied to a row is also registered on its foreign-key targets' children lists.
    let post = Post {
        id: 1,
        user_id: Some(7),
        other_id: 8,
    };
    assert_eq!(
        keys(&FlushTarget::parents(&post)),
        ["o:users:7", "o:users:8"]
    );
}

/// A composite-key model cached and invalidated on SQLite in memory.
#[cfg(feature = "sqlite")]
mod end_to_end {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use caching_diesel::prelude::*;
    use caching_diesel::{Cache, CacheSet, CachedConnection, Timeout};
    use diesel::connection::{Instrumentation, InstrumentationEvent, SimpleConnection};

    use super::{pairs, Pair};

    /// Counts the statements that reach the database.
    #[derive(Debug, Clone, Default)]
    struct StatementCounter(Arc<AtomicUsize>);

    impl StatementCounter {
        fn take(&self) -> usize {
            self.0.swap(0, Ordering::SeqCst)
        }
    }

    impl Instrumentation for StatementCounter {
        fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
            if let InstrumentationEvent::StartQuery { .. } = event {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn pair(a: i32, b: i32, val: i32) -> Pair {
        Pair { a, b, val }
    }

    #[test]
    fn composite_key_model_cached_and_invalidated() {
        let statements = StatementCounter::default();
        let raw = SqliteConnection::establish(":memory:").unwrap();
        let caches = CacheSet::new(Cache::locmem());
        let mut conn = CachedConnection::with_instrumentation(raw, caches, statements.clone());
        conn.batch_execute(
            "CREATE TABLE pairs (a INTEGER NOT NULL, b INTEGER NOT NULL, val INTEGER NOT NULL,
                                 PRIMARY KEY (a, b));
             INSERT INTO pairs (a, b, val) VALUES (1, 2, 10), (2, 1, 20);",
        )
        .unwrap();
        statements.take();

        let load = |conn: &mut CachedConnection<SqliteConnection>| -> Vec<Pair> {
            let q = pairs::table.order((pairs::a, pairs::b));
            q.cached().load(conn).unwrap()
        };
        let first = load(&mut conn);
        assert_eq!(first, [pair(1, 2, 10), pair(2, 1, 20)]);
        assert!(statements.take() > 0, "the first load reads the database");

        let second = load(&mut conn);
        assert_eq!(second, first);
        assert_eq!(statements.take(), 0, "the second load comes from the cache");
        assert_eq!(conn.cache().stats().hits, 1);

        // A value tied to a row through its FlushTarget impl.
        let score = |conn: &CachedConnection<SqliteConnection>, v: u32| -> u32 {
            conn.cache()
                .cached_with(&pair(1, 2, 0), "score", Timeout::Forever, || v)
        };
        assert_eq!((score(&conn, 1), score(&conn, 2)), (1, 1));

        let saved: Pair = conn.save_changes(&pair(1, 2, 11)).unwrap();
        assert_eq!(saved, pair(1, 2, 11));
        statements.take();

        let third = load(&mut conn);
        assert_eq!(third, [pair(1, 2, 11), pair(2, 1, 20)]);
        assert!(
            statements.take() > 0,
            "the write invalidated the cached load"
        );
        assert_eq!(
            score(&conn, 3),
            3,
            "the write deleted the value tied to the row"
        );

        // Cached again, until the next write.
        assert_eq!(load(&mut conn), third);
        assert_eq!(statements.take(), 0);
    }
}
