//! Benchmark runner: what a cached read saves against the database and against the floor
//! of its server, and what caching costs on the miss and write paths. Every figure is a
//! median (and p99) of samples taken interleaved with the figures it is compared to, so
//! noise on the machine hits them alike: compare the ratios, not absolute times.
//!
//! ```text
//! cargo run --release -p caching-tests --all-features --bin bench -- [--quick] [--json FILE]
//! ```
//!
//! Output: `metric <name> <value> <unit>` per figure (read figures as `<name>_p50` and
//! `<name>_p99`; cost figures such as `invalidate_k100_memcached` as `<name>`, the median,
//! and `<name>_p99`; round trips as `<name>_round_trips`), `skipped <name>: <reason>` for
//! figures whose server or feature is missing, `note ...` for anything unexpected, then
//! `ratio <name> <value>` lines. `--json FILE` also writes every figure as one JSON object
//! (`scripts/plot_bench.py` draws `docs/src/bench-hit-vs-size.svg` from it). `--quick` takes
//! few samples (well under a minute); the full run takes a few minutes.
//!
//! Databases: in-memory SQLite always; PostgreSQL with the `postgres` feature and
//! `PG_DATABASE_URL`. Caches: locmem always; memcached with `MEMCACHED_URL`; Redis with the
//! `redis` feature and `REDIS_URL`. Without them (`cargo run --release -p caching-tests --bin
//! bench`) it runs SQLite with locmem and prints skip lines for the rest.
//!
//! Modes:
//!
//! - default: the runner (`runner.rs`): uncached reads, hits, the floor (a raw get of the
//!   same entry through the same client plus [`floor::floor_decode`]), misses with their
//!   fill, counts, key derivation and payload decoding alone, invalidation of a row held by
//!   K = 1..1000 cached queries, foreign-key fan-out over 10..1000 children, a size sweep
//!   (1..1000 rows) and locmem hit throughput on 1 and 2 threads. Round trips are counted by
//!   a wrapper around each server's client (`counting.rs`).
//! - `--fetch-by-id`: fetch by id against whole-result caching on wide rows in overlapping
//!   lists (hit latency, bytes stored, re-reading after a write).
//! - `--registrations`: building a fill's registrations for results of 10 to 10,000 rows
//!   that all point at one parent, per row (flat means linear).
//! - `--mix`: the write-heavy mix (issue 8): 90% cached reads, 10% writes that move a row to
//!   another author, under each dependency tracking mode (throughput, hit rate, stale lists
//!   found by a final sweep), then the SQL analysis cost per statement.

mod counting;
mod fixture;
mod floor;
mod legacy;
mod report;
mod runner;
mod sampling;

use report::Report;

const USAGE: &str =
    "usage: bench [--quick] [--json FILE] [--fetch-by-id | --registrations | --mix]";

fn main() {
    let mut quick = false;
    let mut json = None;
    let mut mode = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--json" => match args.next() {
                Some(path) => json = Some(path),
                None => {
                    eprintln!("--json needs a file name\n{USAGE}");
                    std::process::exit(2);
                }
            },
            "--fetch-by-id" | "--registrations" | "--mix" => mode = Some(a),
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            // `cargo bench` passes `--bench`; nothing else is expected.
            "--bench" => {}
            other => {
                eprintln!("unknown argument {other:?}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    let mut report = Report::default();
    report.param(
        "mode",
        mode.as_deref().unwrap_or("default").trim_start_matches('-'),
    );
    match mode.as_deref() {
        Some("--fetch-by-id") => legacy::fetch_by_id(&mut report),
        Some("--registrations") => legacy::registrations(&mut report),
        Some("--mix") => legacy::mix(&mut report),
        _ => runner::run(&mut report, quick),
    }
    report.print_ratios();
    if let Some(path) = json {
        if let Err(e) = report.write_json(&path) {
            eprintln!("writing {path}: {e}");
            std::process::exit(1);
        }
        println!("# wrote {path}");
    }
}
