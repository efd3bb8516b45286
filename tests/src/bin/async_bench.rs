//! Hit throughput, async against blocking: 64 tasks on a 2-worker tokio runtime, each with its
//! own `AsyncCachedConnection` (diesel-async's SQLite wrapper), against 2 threads each with a
//! blocking `CachedConnection`, all reading one cached row (`users.find(1)`) for the same
//! time. In-process cache by default; `CACHE_URL=memcached://..` (or `redis://..`) measures a
//! network backend, whose calls the async driver runs on tokio's blocking pool.
//!
//! ```text
//! cargo run --release -p caching-tests --features async --bin async_bench [-- SECONDS]
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use caching_diesel::{AsyncCachedConnection, Cache, CacheDsl, CacheSet, CachedConnection};
use caching_tests::db::schema::users;
use caching_tests::db::User;
use diesel::connection::SimpleConnection;
use diesel::{Connection, QueryDsl, SqliteConnection};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::AsyncConnection;

const TASKS: usize = 64;
const THREADS: usize = 2;

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let run = Duration::from_secs_f64(secs);
    let file = std::env::temp_dir().join(format!("async_bench_{}.sqlite3", std::process::id()));
    let url = file
        .to_str()
        .ok_or("temporary path is not UTF-8")?
        .to_string();
    let mut setup = SqliteConnection::establish(&url)?;
    setup.batch_execute(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL); \
         INSERT INTO users VALUES (1, 'fliggy'), (2, 'clouseroo');",
    )?;
    let cache = Cache::from_env()?;
    let caches = CacheSet::new(cache.clone());
    println!(
        "hit throughput, {} backend, {secs} s each: users.find(1) through .cached()",
        cache.backend().name()
    );

    // Blocking: THREADS threads, a connection each.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (stop, done, caches, url) =
                (stop.clone(), done.clone(), caches.clone(), url.clone());
            std::thread::spawn(move || {
                let raw = SqliteConnection::establish(&url).expect("SQLite file");
                let mut conn = CachedConnection::with_caches(raw, caches);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let u: User = caching_diesel::CachedRunQueryDsl::first(
                        users::table.find(1).cached(),
                        &mut conn,
                    )
                    .expect("read");
                    std::hint::black_box(u);
                    n += 1;
                }
                done.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(run);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().map_err(|_| "a blocking reader panicked")?;
    }
    let blocking = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    println!("blocking, {THREADS} threads: {blocking:>12.0} hits/s");

    // Async: TASKS tasks on a THREADS-worker runtime, a connection each.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(THREADS)
        .enable_all()
        .build()?;
    let asynchronous = rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let mut conns = Vec::with_capacity(TASKS);
        for _ in 0..TASKS {
            let raw = SyncConnectionWrapper::<SqliteConnection>::establish(&url).await?;
            conns.push(AsyncCachedConnection::with_caches(raw, caches.clone()));
        }
        let start = Instant::now();
        let tasks: Vec<_> = conns
            .into_iter()
            .map(|mut conn| {
                let (stop, done) = (stop.clone(), done.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let u: User = diesel_async::RunQueryDsl::first(
                            users::table.find(1).cached(),
                            &mut conn,
                        )
                        .await
                        .expect("read");
                        std::hint::black_box(u);
                        n += 1;
                    }
                    done.fetch_add(n, Ordering::Relaxed);
                })
            })
            .collect();
        tokio::time::sleep(run).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await?;
        }
        let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(rate)
    })?;
    println!(
        "async, {TASKS} tasks on {THREADS} workers: {asynchronous:>12.0} hits/s ({:.2}x blocking)",
        asynchronous / blocking
    );
    let _ = std::fs::remove_file(&file);
    Ok(())
}
