//! Hit throughput, async against blocking: 64 tasks on a 2-worker tokio runtime, each with its
//! own `AsyncCachedConnection` (diesel-async's SQLite wrapper), against 2 threads each with a
//! blocking `CachedConnection`, all reading one cached row (`users.find(1)`) for the same
//! time. In-process cache by default; `CACHE_URL=memcached://..` (or `redis://..`) measures a
//! network backend.
//!
//! Then, on a network backend, miss-and-fill throughput of the cache alone (no database: a
//! value computed in place), 64 tasks each reading distinct keys: the engine's non-blocking
//! driver (`Cache::begin_read_async`, `PreparedFill::publish_async`) against the same two
//! halves run on tokio's blocking pool with the blocking client (what the async driver did
//! before it), and against 2 blocking threads. Every read is a miss, leased, registered,
//! checked and published.
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
    if cache.backend().may_block() {
        misses(&cache, run)?;
    }
    Ok(())
}

/// A key no read has used yet (in this run or an earlier one on the same server).
fn miss_key(cache: &Cache, seq: &AtomicU64) -> String {
    static RUN: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    });
    cache.keys().manual_key(&format!(
        "bench-miss-{run}-{}",
        seq.fetch_add(1, Ordering::Relaxed)
    ))
}

/// How the miss-and-fill figure runs the protocol's two halves.
#[derive(Clone, Copy, Debug)]
enum Driver {
    /// `begin_read_async` and `publish_async` on the runtime's threads.
    Nonblocking,
    /// `begin_read` and `publish` each on tokio's blocking pool.
    BlockingPool,
}

/// One miss and fill of a fresh key through `driver`.
async fn miss_and_fill(cache: &Cache, key: String, driver: Driver) {
    use caching_core::{ReadPlan, ReadStart};
    let register = |_: &u64, _: &mut caching_core::Registrations| Ok(());
    match driver {
        Driver::Nonblocking => {
            let plan = ReadPlan::new(&key, &["users"]);
            match cache.begin_read_async::<u64>(&plan).await {
                Some(ReadStart::Miss(fill)) => {
                    fill.prepare(&7, register).publish_async().await;
                }
                other => panic!("expected a miss, got {:?}", other.map(|_| ())),
            }
        }
        Driver::BlockingPool => {
            let c = cache.clone();
            let start = tokio::task::spawn_blocking(move || {
                c.begin_read::<u64>(&ReadPlan::new(&key, &["users"]))
            })
            .await
            .expect("blocking task");
            let ReadStart::Miss(fill) = start else {
                panic!("expected a miss");
            };
            let prepared = fill.prepare(&7, register);
            tokio::task::spawn_blocking(move || prepared.publish())
                .await
                .expect("blocking task");
        }
    }
}

/// Miss-and-fill throughput: the non-blocking driver, the blocking pool, blocking threads.
fn misses(cache: &Cache, run: Duration) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    println!(
        "miss+fill throughput (cache alone, distinct keys), {:?} each:",
        run
    );
    let seq = Arc::new(AtomicU64::new(0));
    // Blocking threads.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            let (stop, done, seq) = (stop.clone(), done.clone(), seq.clone());
            s.spawn(move || {
                use caching_core::{ReadPlan, ReadStart};
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let k = miss_key(cache, &seq);
                    let ReadStart::Miss(fill) =
                        cache.begin_read::<u64>(&ReadPlan::new(&k, &["users"]))
                    else {
                        panic!("expected a miss");
                    };
                    fill.finish(&7, |_, _| Ok(()));
                    n += 1;
                }
                done.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(run);
        stop.store(true, Ordering::Relaxed);
    });
    let threads = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    println!("blocking, {THREADS} threads: {threads:>12.0} misses/s");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(THREADS)
        .enable_all()
        .build()?;
    let mut rates = Vec::new();
    for driver in [Driver::BlockingPool, Driver::Nonblocking] {
        let rate = rt.block_on(async {
            let stop = Arc::new(AtomicBool::new(false));
            let done = Arc::new(AtomicU64::new(0));
            let start = Instant::now();
            let tasks: Vec<_> = (0..TASKS)
                .map(|_| {
                    let (stop, done, seq, cache) =
                        (stop.clone(), done.clone(), seq.clone(), cache.clone());
                    tokio::spawn(async move {
                        let mut n = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            let k = miss_key(&cache, &seq);
                            miss_and_fill(&cache, k, driver).await;
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
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(),
            )
        })?;
        println!(
            "async ({driver:?}), {TASKS} tasks on {THREADS} workers: {rate:>12.0} misses/s ({:.2}x blocking threads)",
            rate / threads
        );
        rates.push(rate);
    }
    println!(
        "ratio nonblocking_vs_blocking_pool_misses {:.2}",
        rates[1] / rates[0]
    );
    Ok(())
}
