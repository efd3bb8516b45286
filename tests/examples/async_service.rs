//! An HTTP service on axum, diesel-async and the cache, on the embedded default (SQLite through
//! diesel-async's `SyncConnectionWrapper`, a deadpool pool, the in-process cache unless
//! `CACHE_URL` says otherwise), counting hits and misses per endpoint (`GET /stats`):
//!
//! ```text
//! cargo run -p caching-tests --features service --example async_service             # serves on 127.0.0.1:3000
//! cargo run -p caching-tests --features service --example async_service -- --demo   # requests itself, prints, exits
//! ```
//!
//! Endpoints: `GET /users/{id}`, `GET /users`, `GET /users/count?name=..`,
//! `PUT /users/{id}/name/{name}` (a write helper: invalidates), `GET /stats`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use caching_diesel::async_prelude::*;
use caching_diesel::{AsyncCachedConnection, Cache, CacheSet, ReadOutcome};
use caching_tests::db::schema::users;
use caching_tests::db::User;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Db = SyncConnectionWrapper<SqliteConnection>;
type Failure = (StatusCode, String);

/// How one endpoint's cached reads were answered.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Counts {
    hits: u64,
    misses: u64,
    bypassed: u64,
}

#[derive(Clone)]
struct App {
    pool: Pool<Db>,
    caches: CacheSet,
    stats: Arc<Mutex<BTreeMap<&'static str, Counts>>>,
}

fn fail(e: impl std::fmt::Display) -> Failure {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

impl App {
    /// A pooled connection, wrapped with the process's caches.
    async fn conn(&self) -> Result<AsyncCachedConnection<Object<Db>>, Failure> {
        let pooled = self.pool.get().await.map_err(fail)?;
        Ok(AsyncCachedConnection::with_caches(
            pooled,
            self.caches.clone(),
        ))
    }

    fn count(&self, endpoint: &'static str, outcome: ReadOutcome) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let c = stats.entry(endpoint).or_default();
        match outcome {
            ReadOutcome::Hit => c.hits += 1,
            ReadOutcome::Miss => c.misses += 1,
            ReadOutcome::Bypassed(_) => c.bypassed += 1,
        }
    }
}

async fn user(State(app): State<App>, Path(id): Path<i32>) -> Result<Json<User>, Failure> {
    let mut conn = app.conn().await?;
    let (rows, outcome) = users::table
        .find(id)
        .cached()
        .load_with_outcome::<User>(&mut conn)
        .await
        .map_err(fail)?;
    app.count("GET /users/{id}", outcome);
    rows.into_iter()
        .next()
        .map(Json)
        .ok_or((StatusCode::NOT_FOUND, format!("no user {id}")))
}

async fn list(State(app): State<App>) -> Result<Json<Vec<User>>, Failure> {
    let mut conn = app.conn().await?;
    let (rows, outcome) = users::table
        .order(users::id)
        .cached()
        .load_with_outcome::<User>(&mut conn)
        .await
        .map_err(fail)?;
    app.count("GET /users", outcome);
    Ok(Json(rows))
}

#[derive(serde::Deserialize)]
struct ByName {
    name: String,
}

async fn count(State(app): State<App>, Query(q): Query<ByName>) -> Result<Json<i64>, Failure> {
    let mut conn = app.conn().await?;
    let (n, outcome) = users::table
        .filter(users::name.eq(q.name))
        .count()
        .cached()
        .load_with_outcome::<i64>(&mut conn)
        .await
        .map_err(fail)?;
    app.count("GET /users/count", outcome);
    Ok(Json(n.into_iter().next().unwrap_or(0)))
}

async fn rename(
    State(app): State<App>,
    Path((id, name)): Path<(i32, String)>,
) -> Result<Json<User>, Failure> {
    let mut conn = app.conn().await?;
    let user: User = conn.save_changes(&User { id, name }).await.map_err(fail)?;
    Ok(Json(user))
}

async fn stats(State(app): State<App>) -> Json<serde_json::Value> {
    let endpoints = app.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let cache = app.caches.default_cache().stats();
    Json(serde_json::json!({
        "endpoints": endpoints,
        "cache": {
            "backend": app.caches.default_cache().backend().name(),
            "hits": cache.hits,
            "misses": cache.misses,
            "fills": cache.fills,
            "invalidations": cache.invalidations,
        },
    }))
}

/// One HTTP/1.1 request to `addr` (`"GET /users/1"`); the response body.
async fn request(addr: std::net::SocketAddr, line: &str) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!(
            "{line} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out
        .split_once("\r\n\r\n")
        .map_or(out.clone(), |(_, b)| b.to_string()))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let demo = std::env::args().any(|a| a == "--demo");
    let file = std::env::temp_dir().join(format!("async_service_{}.sqlite3", std::process::id()));
    let url = file
        .to_str()
        .ok_or("temporary path is not UTF-8")?
        .to_string();
    let mut setup = Db::establish(&url).await?;
    setup
        .batch_execute(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL); \
             INSERT INTO users VALUES (1, 'fliggy'), (2, 'clouseroo');",
        )
        .await?;
    drop(setup);
    let app = App {
        pool: Pool::builder(AsyncDieselConnectionManager::<Db>::new(url))
            .max_size(4)
            .build()?,
        caches: CacheSet::new(Cache::from_env()?),
        stats: Arc::default(),
    };
    let router = Router::new()
        .route("/users", get(list))
        .route("/users/count", get(count))
        .route("/users/{id}", get(user))
        .route("/users/{id}/name/{name}", put(rename))
        .route("/stats", get(stats))
        .with_state(app);
    let bind = if demo {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:3000"
    };
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    if demo {
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        for line in [
            "GET /users/1",
            "GET /users/1",
            "GET /users",
            "GET /users",
            "GET /users/count?name=fliggy",
            "GET /users/count?name=fliggy",
            "PUT /users/1/name/clouseroo",
            "GET /users/1",
            "GET /users/count?name=fliggy",
            "GET /stats",
        ] {
            println!("{line} -> {}", request(addr, line).await?);
        }
        server.abort();
    } else {
        println!("listening on http://{addr} (try GET /users/1 twice, then GET /stats)");
        axum::serve(listener, router).await?;
    }
    let _ = std::fs::remove_file(&file);
    Ok(())
}
