//! PostgreSQL + r2d2: the common production setup, end to end.
//!
//! ```text
//! cargo run -p caching-diesel --features postgres --example postgres_r2d2
//! ```
//!
//! It needs a PostgreSQL server: `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). The cache comes from `CACHE_URL` (default: an
//! in-process cache; `CACHE_URL=memcached://127.0.0.1:11211` to share one memcached between
//! processes). The example creates two tables of its own, `blog_authors` and `blog_posts`
//! (dropped first if they exist, and again at the end), and walks through what the guide's
//! "PostgreSQL + r2d2 walkthrough" chapter describes: a pool of cached connections, cached
//! reads shared by every connection of the pool, write helpers that invalidate exactly what
//! they touch, a transaction whose invalidation waits for COMMIT, and the cache's statistics.
//! Every step checks what it claims; the example exits non-zero if a check fails.

use std::error::Error;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use caching_diesel::pool::CachedConnectionManager;
use caching_diesel::prelude::*;
use caching_diesel::{process_caches, Cache, CachedConnection, StatsSnapshot};
use diesel::connection::SimpleConnection;
use diesel::r2d2::Pool;
use diesel::PgConnection;
use serde::{Deserialize, Serialize};

mod schema {
    diesel::table! {
        blog_authors (id) {
            id -> Int4,
            name -> Text,
        }
    }
    diesel::table! {
        blog_posts (id) {
            id -> Int4,
            author_id -> Int4,
            title -> Text,
            published -> Bool,
        }
    }
    diesel::joinable!(blog_posts -> blog_authors (author_id));
    diesel::allow_tables_to_appear_in_same_query!(blog_authors, blog_posts);
}

use schema::{blog_authors, blog_posts};

/// An author. `Cached` lets the cache name, store and invalidate its rows.
#[derive(
    Queryable, Selectable, Identifiable, AsChangeset, Cached, Serialize, Deserialize, Debug, Clone,
)]
#[diesel(table_name = blog_authors)]
struct Author {
    id: i32,
    name: String,
}

/// A post: `belongs_to(Author)` links each cached post to its author's flush list.
#[derive(
    Queryable,
    Selectable,
    Identifiable,
    Associations,
    AsChangeset,
    Cached,
    Serialize,
    Deserialize,
    Debug,
    Clone,
)]
#[diesel(table_name = blog_posts, belongs_to(Author))]
struct Post {
    id: i32,
    author_id: i32,
    title: String,
    published: bool,
}

/// A post to insert: the database assigns the id (`SERIAL`), and `RETURNING` gives it back.
#[derive(Insertable)]
#[diesel(table_name = blog_posts)]
struct NewPost<'a> {
    author_id: i32,
    title: &'a str,
    published: bool,
}

const DDL: &str = "
    DROP TABLE IF EXISTS blog_posts;
    DROP TABLE IF EXISTS blog_authors;
    CREATE TABLE blog_authors (id SERIAL PRIMARY KEY, name TEXT NOT NULL);
    CREATE TABLE blog_posts (
        id SERIAL PRIMARY KEY,
        author_id INTEGER NOT NULL REFERENCES blog_authors (id),
        title TEXT NOT NULL,
        published BOOLEAN NOT NULL
    );
    INSERT INTO blog_authors (name) VALUES ('fliggy'), ('clouseroo');
";

/// The published posts of one author: the cached query of the walkthrough.
fn published_by(author_id: i32) -> blog_posts::BoxedQuery<'static, diesel::pg::Pg> {
    blog_posts::table
        .filter(blog_posts::author_id.eq(author_id))
        .filter(blog_posts::published.eq(true))
        .order(blog_posts::id)
        .into_boxed()
}

/// Fails the run with `message` unless `ok`.
fn check(ok: bool, message: &str) -> Result<(), Box<dyn Error>> {
    if ok {
        println!("   ok: {message}");
        Ok(())
    } else {
        Err(format!("check failed: {message}").into())
    }
}

/// What the cache did since `before`.
struct Delta {
    hits: u64,
    misses: u64,
    fills: u64,
    invalidations: u64,
}

fn delta(before: &StatsSnapshot, cache: &Cache) -> Delta {
    let now = cache.stats();
    Delta {
        hits: now.hits - before.hits,
        misses: now.misses - before.misses,
        fills: now.fills - before.fills,
        invalidations: now.invalidations - before.invalidations,
    }
}

fn titles(posts: &[Post]) -> Vec<&str> {
    posts.iter().map(|p| p.title.as_str()).collect()
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let database_url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into());

    // 1. The pool. `process_caches()` builds the process's caches once from CACHE_URL (an
    // in-process cache when it is unset; an invalid URL is an error, never a silent fallback).
    // Every connection of the pool shares them, and the database label.
    let caches = process_caches().map_err(|e| format!("CACHE_URL: {e}"))?;
    let cache = caches.default_cache().clone();
    // A label of its own per run, so a shared memcached never serves one run's rows to the
    // next (the tables are recreated each time). An application names its databases instead.
    let run = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros();
    let manager = CachedConnectionManager::<PgConnection>::new(database_url.as_str(), caches)
        .with_label(format!("walkthrough-{run}"));
    let pool = Pool::builder()
        .max_size(4)
        .connection_timeout(Duration::from_secs(5))
        .build(manager)
        .map_err(|e| format!("cannot connect to {database_url}: {e}"))?;
    println!("1. A pool of cached connections");
    println!("   database: {database_url}");
    println!(
        "   cache:    {} (prefix {:?})",
        cache.backend().name(),
        cache.config().prefix
    );

    // A pooled connection derefs to the `CachedConnection`; take `&mut *pooled` once, so that
    // cached reads, write helpers and `transaction` all see the cached connection.
    let mut pooled = pool.get()?;
    let conn: &mut CachedConnection<PgConnection> = &mut pooled;
    conn.batch_execute(DDL)?;
    let fliggy: Author = blog_authors::table
        .filter(blog_authors::name.eq("fliggy"))
        .first(conn)?;
    let clouseroo: Author = blog_authors::table
        .filter(blog_authors::name.eq("clouseroo"))
        .first(conn)?;

    // 2. Write helpers: `insert` returns the rows (RETURNING), ids included, and invalidates
    // them as created rows.
    println!("2. conn.insert(..): three posts");
    let created: Vec<Post> = conn.insert(diesel::insert_into(blog_posts::table).values(&[
        NewPost {
            author_id: fliggy.id,
            title: "Hello",
            published: true,
        },
        NewPost {
            author_id: fliggy.id,
            title: "Draft",
            published: false,
        },
        NewPost {
            author_id: clouseroo.id,
            title: "Other",
            published: true,
        },
    ]))?;
    check(
        created.len() == 3 && created[0].id > 0,
        "three posts created, ids assigned by the database",
    )?;
    let draft = created[1].clone();

    // 3. Cached reads: the first misses and fills, the next hits, from any pooled connection.
    println!("3. Cached reads: published_by(fliggy).cached().load(conn)");
    let before = cache.stats();
    let first: Vec<Post> = published_by(fliggy.id).cached().load(conn)?;
    let d = delta(&before, &cache);
    println!(
        "   first read:  {:?} ({} miss, {} fill)",
        titles(&first),
        d.misses,
        d.fills
    );
    check(
        d.misses == 1 && d.fills == 1,
        "the first read misses and fills",
    )?;

    let before = cache.stats();
    let again: Vec<Post> = published_by(fliggy.id).cached().load(conn)?;
    check(
        delta(&before, &cache).hits == 1 && titles(&again) == titles(&first),
        "the second read is a hit",
    )?;

    let before = cache.stats();
    {
        let mut other = pool.get()?; // another connection of the pool
        let from_other: Vec<Post> = published_by(fliggy.id).cached().load(&mut *other)?;
        check(
            delta(&before, &cache).hits == 1 && titles(&from_other) == titles(&first),
            "another pooled connection hits the same entry",
        )?;
    }
    let theirs: Vec<Post> = published_by(clouseroo.id).cached().load(conn)?;
    let n: i64 = blog_posts::table
        .filter(blog_posts::author_id.eq(fliggy.id))
        .cached_count(conn)?;
    check(n == 2, "cached_count: fliggy has two posts")?;

    // 4. A write helper invalidates exactly the cached queries the row is in or enters.
    println!("4. conn.save_changes(&post): publish the draft");
    let before = cache.stats();
    let published: Post = conn.save_changes(&Post {
        published: true,
        ..draft.clone()
    })?;
    check(
        delta(&before, &cache).invalidations == 1,
        "one invalidation",
    )?;
    let before = cache.stats();
    let now: Vec<Post> = published_by(fliggy.id).cached().load(conn)?;
    println!("   fliggy's published posts: {:?}", titles(&now));
    check(
        delta(&before, &cache).misses == 1 && now.iter().any(|p| p.id == published.id),
        "fliggy's list misses and now holds the published draft (a row that entered it)",
    )?;
    let before = cache.stats();
    let theirs_again: Vec<Post> = published_by(clouseroo.id).cached().load(conn)?;
    check(
        delta(&before, &cache).hits == 1 && titles(&theirs_again) == titles(&theirs),
        "clouseroo's list was not touched: still a hit",
    )?;

    // 5. A transaction: invalidation waits for COMMIT; a rollback drops it.
    println!("5. conn.transaction(|conn| ..)");
    let before = cache.stats();
    conn.transaction(|conn| -> Result<(), Box<dyn Error>> {
        let bumped: Vec<Post> = conn.update(
            diesel::update(blog_posts::table.filter(blog_posts::author_id.eq(clouseroo.id)))
                .set(blog_posts::title.eq("Other (edited)")),
        )?;
        check(
            delta(&before, &cache).invalidations == 0,
            "inside: the update's invalidation is queued, not run",
        )?;
        // The transaction wrote blog_posts: its reads of that table go to the database, so it
        // sees its own write, and nothing read inside it is stored.
        let mine: Vec<Post> = published_by(clouseroo.id).cached().load(conn)?;
        check(
            titles(&mine) == titles(&bumped),
            "inside: a cached read sees the transaction's own write",
        )?;
        Ok(())
    })?;
    check(
        delta(&before, &cache).invalidations == 1,
        "after COMMIT: the queued invalidation ran once",
    )?;
    let after: Vec<Post> = published_by(clouseroo.id).cached().load(conn)?;
    check(
        titles(&after) == ["Other (edited)"],
        "after COMMIT: the cached list shows the edit",
    )?;

    let before = cache.stats();
    let rolled_back = conn.transaction(|conn| -> Result<(), Box<dyn Error>> {
        let _: Vec<Post> = conn.delete(diesel::delete(
            blog_posts::table.filter(blog_posts::id.eq(published.id)),
        ))?;
        Err("changed my mind".into())
    });
    check(
        rolled_back.is_err() && delta(&before, &cache).invalidations == 0,
        "ROLLBACK: the queued invalidation was dropped with the write",
    )?;
    let still: Vec<Post> = published_by(fliggy.id).cached().load(conn)?;
    check(
        still.iter().any(|p| p.id == published.id),
        "after ROLLBACK: the post is still there",
    )?;

    // 6. What the cache did.
    let s = cache.stats();
    println!("6. cache.stats()");
    println!(
        "   hits {}  misses {}  fills {}  skipped_fills {}  invalidations {}",
        s.hits, s.misses, s.fills, s.skipped_fills, s.invalidations
    );
    println!(
        "   plain_writes {}  backend_errors {}  failed_invalidations {}",
        s.plain_writes, s.backend_errors, s.failed_invalidations
    );
    println!(
        "   hit rate {:.0}%",
        100.0 * s.hits as f64 / (s.hits + s.misses).max(1) as f64
    );
    if s.backend_errors > 0 {
        println!("   The cache was unreachable at times: those reads went to the database.");
    }

    conn.batch_execute("DROP TABLE blog_posts; DROP TABLE blog_authors;")?;
    println!("Done: every check passed; tables dropped.");
    Ok(())
}
