//! Stampede measurement: how many database queries follow the invalidation of a hot entry,
//! with stampede protection (`lease_wait_ms`, on by default) and without it.
//!
//! `cargo run --release -p caching-tests --bin stampede -- [--procs 2] [--readers 50]
//! [--rounds 20]` starts `--procs` child processes, each with its own `Cache` over the
//! memcached of `MEMCACHED_URL` and `--readers` threads, each thread with its own connection to
//! one SQLite file. Every round the parent saves a row of the hot query's result (through the
//! cache, so the entry is invalidated), then releases every reader of every process at once;
//! each reads the hot query once. Children count the statements their connections send
//! (Diesel instrumentation) and report them per round. The hot query scans 20,000 rows (a few
//! milliseconds), so readers arrive while the first one is still reading.
//!
//! Prints `metric stampede_queries_per_refill_{off,on} <median> queries`,
//! `metric stampede_queries_per_refill_{off,on}_max ..`, and `ratio stampede_on_vs_off ..`.
//! Without `MEMCACHED_URL` it prints a skip line and exits successfully.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};

use caching_diesel::prelude::*;
use caching_diesel::{Cache, CacheSet, CachedConnection};
use caching_tests::db::schema::addons;
use caching_tests::db::{Addon, SqliteFile, StatementCounter};
use diesel::connection::SimpleConnection;

const HOT_VAL: i32 = 7;
const ROWS: i32 = 20_000;

struct Args {
    child: bool,
    procs: usize,
    readers: usize,
    rounds: usize,
    db: String,
    cache: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        child: false,
        procs: 2,
        readers: 50,
        rounds: 20,
        db: String::new(),
        cache: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--child" => a.child = true,
            "--procs" => a.procs = value("--procs")?.parse().map_err(|e| format!("{e}"))?,
            "--readers" => a.readers = value("--readers")?.parse().map_err(|e| format!("{e}"))?,
            "--rounds" => a.rounds = value("--rounds")?.parse().map_err(|e| format!("{e}"))?,
            "--db" => a.db = value("--db")?,
            "--cache" => a.cache = value("--cache")?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn hot_query() -> diesel::dsl::Filter<addons::table, diesel::dsl::Eq<addons::val, i32>> {
    addons::table.filter(addons::val.eq(HOT_VAL))
}

fn connect(path: &str) -> diesel::SqliteConnection {
    let mut c = diesel::SqliteConnection::establish(path).expect("SQLite database file");
    c.batch_execute("PRAGMA busy_timeout = 10000")
        .expect("busy timeout");
    c
}

/// A child: `readers` threads, one cached connection each, one shared `Cache`. Reads a line
/// per round from stdin, releases every reader at once, answers `done <statements>`.
fn child(a: &Args) {
    let cache = Cache::from_url(&a.cache).expect("cache URL");
    let counter = StatementCounter::default();
    let start = Arc::new(Barrier::new(a.readers + 1));
    let end = Arc::new(Barrier::new(a.readers + 1));
    for _ in 0..a.readers {
        let (cache, counter, start, end) =
            (cache.clone(), counter.clone(), start.clone(), end.clone());
        let db = a.db.clone();
        std::thread::spawn(move || {
            let mut conn =
                CachedConnection::with_instrumentation(connect(&db), CacheSet::new(cache), counter);
            loop {
                start.wait();
                let rows: Vec<Addon> = hot_query().cached().load(&mut conn).expect("hot query");
                assert!(!rows.is_empty());
                end.wait();
            }
        });
    }
    counter.take();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() != "go" {
            break;
        }
        start.wait();
        end.wait();
        let _ = writeln!(out, "done {}", counter.take());
        let _ = out.flush();
    }
}

/// Runs the rounds with `url` as every process's cache; returns the database queries of each
/// round (all processes together).
fn measure(a: &Args, db: &SqliteFile, url: &str) -> Vec<usize> {
    let exe = std::env::current_exe().expect("own executable");
    let path = db.path().to_str().expect("UTF-8 path").to_string();
    let mut children: Vec<(Child, BufReader<std::process::ChildStdout>)> = (0..a.procs)
        .map(|_| {
            let mut c = Command::new(&exe)
                .args(["--child", "--db", &path, "--cache", url])
                .args(["--readers", &a.readers.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("child process");
            let out = BufReader::new(c.stdout.take().expect("child stdout"));
            (c, out)
        })
        .collect();
    let cache = Cache::from_url(url).expect("cache URL");
    let mut writer = db.cached_conn(&cache);
    let mut per_round = Vec::new();
    // Round 0 only warms the entry up (and the children's connections).
    for round in 0..=a.rounds {
        let row: Addon = addons::table
            .filter(addons::val.eq(HOT_VAL))
            .order(addons::id)
            .first(&mut writer)
            .expect("a hot row");
        let _: Addon = writer
            .save_changes(&Addon {
                author2_id: row.author2_id % 7 + 1,
                ..row
            })
            .expect("save");
        for (c, _) in &mut children {
            let stdin = c.stdin.as_mut().expect("child stdin");
            stdin.write_all(b"go\n").expect("child alive");
            stdin.flush().expect("child alive");
        }
        let mut queries = 0;
        for (_, out) in &mut children {
            let mut line = String::new();
            out.read_line(&mut line).expect("child answer");
            let n: usize = line
                .trim()
                .strip_prefix("done ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected child answer {line:?}"));
            queries += n;
        }
        if round > 0 {
            per_round.push(queries);
        }
    }
    for (mut c, _) in children {
        drop(c.stdin.take());
        let _ = c.kill();
        let _ = c.wait();
    }
    per_round
}

fn median(mut v: Vec<usize>) -> usize {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("stampede: {e}");
            std::process::exit(2);
        }
    };
    if a.child {
        child(&a);
        return;
    }
    let Ok(base) = std::env::var("MEMCACHED_URL") else {
        println!("skipped stampede: MEMCACHED_URL unset (the measurement needs a shared cache)");
        return;
    };
    let db = SqliteFile::new("stampede");
    {
        let mut c = db.connect();
        c.batch_execute("DELETE FROM addons")
            .expect("clear fixture");
        for chunk in (1..=ROWS).collect::<Vec<_>>().chunks(1000) {
            let values: Vec<String> = chunk
                .iter()
                .map(|i| format!("({i}, {}, {}, {})", i % 1000, i % 50 + 1, i % 7 + 1))
                .collect();
            c.batch_execute(&format!("INSERT INTO addons VALUES {}", values.join(",")))
                .expect("seed rows");
        }
    }
    println!(
        "stampede: {} processes x {} readers, {} invalidations of one hot query (SQLite file, memcached)",
        a.procs, a.readers, a.rounds
    );
    let mut medians = Vec::new();
    for (mode, wait) in [("off", "0"), ("on", "200")] {
        let url = format!(
            "{base}?prefix=stampede{}{mode}&lease_wait_ms={wait}",
            std::process::id()
        );
        let rounds = measure(&a, &db, &url);
        let max = rounds.iter().copied().max().unwrap_or(0);
        let med = median(rounds.clone());
        println!("stampede {mode}: queries per refill {rounds:?}");
        println!("metric stampede_queries_per_refill_{mode} {med} queries");
        println!("metric stampede_queries_per_refill_{mode}_max {max} queries");
        medians.push(med);
    }
    if medians[0] > 0 {
        println!(
            "ratio stampede_on_vs_off {:.3}",
            medians[1] as f64 / medians[0] as f64
        );
    }
}
