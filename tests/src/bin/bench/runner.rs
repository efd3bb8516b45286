//! The default mode: every figure of issue 10 in one run, each phase interleaved.
//!
//! 1. **reads**: uncached reads (a row by primary key, a 100-row list, a count) on each
//!    database; the same reads through each cache (default and eviction-safe); the floor of a
//!    hit on each server; key derivation and payload decoding alone.
//! 2. **misses**: a miss and its fill after a write invalidated the list (the write is not
//!    timed), next to the uncached read of the same list.
//! 3. **writes** (SQLite in memory, one cache per server): a save of a row held by K cached
//!    queries, of a row whose parent has N children with cached queries (which must leave
//!    the N-1 siblings' queries cached), of a row in one cached query; time and backend
//!    round trips.
//! 4. **size sweep**: hit, floor and uncached read for results of 1 to 1000 rows.
//! 5. **threads**: locmem hit throughput with one and two threads.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use caching_diesel::prelude::*;
use caching_diesel::{Cache, CacheSet, CachedConnection, ReadOutcome};
use caching_tests::db::schema::{addons, users};
use caching_tests::db::{Addon, User};
use diesel::connection::SimpleConnection;

use crate::fixture::{by_author, by_pk, of_author, on_db, BenchCache, Db, Server};
use crate::floor::{entry_payload, floor_decode};
use crate::report::Report;
use crate::sampling::{run_interleaved, timed, Naming, Sample, Variant};

/// Authors whose 100-row lists are read as hits.
const HIT_USERS: [i32; 5] = [1, 2, 3, 4, 5];
/// Authors whose lists are read as misses (each after a write to its first row).
const MISS_USERS: [i32; 5] = [6, 7, 8, 9, 10];
/// Author of the size sweep's list of each size.
const SWEEP: [(i64, i32); 4] = [(1, 11), (10, 12), (100, 13), (1000, 14)];
/// Authors whose rows are counted.
const COUNT_USERS: [i32; 2] = [15, 16];
/// Rows read by primary key: 100 rows of author 17.
fn pk_of(i: usize) -> i32 {
    16 + 20 * (i % 100) as i32
}

/// Rows held by K cached queries.
const KS: [usize; 4] = [1, 10, 100, 1000];
/// Children of one parent, each in a cached query.
const FANOUTS: [usize; 3] = [10, 100, 1000];

/// How many samples each phase takes.
struct Plan {
    quick: bool,
}

impl Plan {
    fn n(&self, full: usize, quick: usize) -> usize {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// The part of the run a figure on `db` (`sqlite`, `pg`) and `server` needs.
fn needs<'a>(db: &str, server: &'a str) -> Vec<&'a str> {
    let mut out = Vec::new();
    if db == "pg" {
        out.push("postgres");
    }
    if server != "locmem" {
        out.push(server);
    }
    out
}

type Shared = Rc<RefCell<Db>>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The whole default run.
pub fn run(report: &mut Report, quick: bool) {
    let plan = Plan { quick };
    let started = Instant::now();
    let servers = crate::fixture::servers(report);
    let mut caches = Vec::new();
    for s in &servers {
        for safe in [false, true] {
            match BenchCache::new(s, safe, "read") {
                Ok(c) => caches.push(c),
                Err(e) => report.skip(format!("{} caches", s.name), e),
            }
        }
    }
    let Some(first) = caches.first() else {
        report.skip("every figure", "no cache could be built");
        return;
    };
    let mut set = CacheSet::new(first.cache.clone());
    for c in &caches {
        set = set.with(c.name.clone(), c.cache.clone());
    }
    let mut dbs: Vec<(&'static str, Shared)> = Vec::new();
    match crate::fixture::sqlite() {
        Ok(raw) => dbs.push((
            "sqlite",
            Rc::new(RefCell::new(Db::Sqlite(CachedConnection::with_caches(
                raw,
                set.clone(),
            )))),
        )),
        Err(e) => report.skip("sqlite figures", e),
    }
    #[cfg(feature = "postgres")]
    let mut pg_schema = None;
    match crate::fixture::postgres() {
        #[cfg(feature = "postgres")]
        Ok((raw, schema)) => {
            pg_schema = Some(schema);
            dbs.push((
                "pg",
                Rc::new(RefCell::new(Db::Pg(CachedConnection::with_caches(
                    raw,
                    set.clone(),
                )))),
            ));
        }
        #[cfg(not(feature = "postgres"))]
        Ok(()) => {}
        Err(e) => report.missing("postgres", e),
    }
    let Some(sqlite) = dbs
        .iter()
        .find(|(n, _)| *n == "sqlite")
        .map(|d| d.1.clone())
    else {
        return;
    };
    println!(
        "# {} run: {} rows, lists of 100 rows, {} cache(s) on {} server(s), database(s): {}",
        if quick { "quick" } else { "full" },
        crate::fixture::ROWS,
        caches.len(),
        servers.len(),
        dbs.iter().map(|d| d.0).collect::<Vec<_>>().join(", ")
    );
    if let Err(e) = warm(&dbs, &caches) {
        report.skip("read figures", format!("warming the caches failed: {e}"));
        return;
    }
    reads(report, &plan, &dbs, &caches, &sqlite);
    misses(report, &plan, &dbs, &caches);
    writes(report, &plan, &servers);
    size_sweep(report, &plan, &dbs, &caches, &sqlite);
    threads(report, &plan);
    headlines(report, &servers, &dbs);
    ratios(report, &servers, &dbs);
    #[cfg(feature = "postgres")]
    if let (Some(schema), Some((_, db))) = (pg_schema, dbs.iter().find(|d| d.0 == "pg")) {
        if let Db::Pg(c) = &mut *db.borrow_mut() {
            let _ = c
                .inner()
                .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"));
        }
    }
    report.param("quick", quick);
    report.param("seconds", started.elapsed().as_secs_f64());
    println!("# took {:.1} s", started.elapsed().as_secs_f64());
}

/// Fills every entry the read phases hit: the hit lists, the rows by key, the counts, the
/// size sweep's lists.
fn warm(dbs: &[(&str, Shared)], caches: &[BenchCache]) -> Result<(), String> {
    for (_, db) in dbs {
        let mut db = db.borrow_mut();
        for bc in caches {
            let name = bc.name.as_str();
            for _ in 0..2 {
                for u in HIT_USERS {
                    on_db!(&mut *db, |c| by_author!(u, 100)
                        .cached()
                        .cache(name)
                        .load::<Addon>(c)
                        .map_err(err))?;
                }
                for i in 0..100 {
                    on_db!(&mut *db, |c| by_pk!(pk_of(i))
                        .cached()
                        .cache(name)
                        .first::<Addon>(c)
                        .map_err(err))?;
                }
                for u in COUNT_USERS {
                    on_db!(&mut *db, |c| of_author!(u)
                        .cached()
                        .cache(name)
                        .count(c)
                        .map_err(err))?;
                }
                for (n, u) in SWEEP {
                    on_db!(&mut *db, |c| by_author!(u, n)
                        .cached()
                        .cache(name)
                        .load::<Addon>(c)
                        .map_err(err))?;
                }
            }
        }
    }
    Ok(())
}

/// The entry keys of `keys` on the SQLite connection, checked to hold published entries.
fn entry_keys(
    sqlite: &Shared,
    bc: &BenchCache,
    keys: impl Fn(&mut CachedConnection<diesel::SqliteConnection>) -> QueryResult<Vec<String>>,
) -> Result<Vec<String>, String> {
    let keys = match &mut *sqlite.borrow_mut() {
        Db::Sqlite(c) => keys(c).map_err(err)?,
        #[cfg(feature = "postgres")]
        Db::Pg(_) => return Err("not the SQLite connection".into()),
    };
    for k in &keys {
        let item = bc
            .raw
            .get(k)
            .map_err(err)?
            .ok_or_else(|| format!("entry {k} is not cached"))?;
        entry_payload(&item.value).ok_or_else(|| format!("entry {k} is not a published entry"))?;
    }
    Ok(keys)
}

/// A floor sample: a raw get of `key` through the server's client, then the payload
/// decoded (rows returned, dropped after the clock stops, as a hit's are).
fn floor_sample(raw: &dyn caching_core::Backend, key: &str) -> Result<Sample, String> {
    let (t, rows) = timed(|| -> Result<Vec<Addon>, String> {
        let item = raw.get(key).map_err(err)?.ok_or("entry missing")?;
        let payload = entry_payload(&item.value).ok_or("not a published entry")?;
        floor_decode(payload).map_err(err)
    });
    rows?;
    Ok(Sample::of(t))
}

/// A cached read through `bc` on `db`, timed with its round trips; `expected` is the
/// outcome the variant wants.
fn cached_sample(
    bc: &BenchCache,
    expected: ReadOutcome,
    rows: usize,
    read: impl FnOnce() -> QueryResult<(Vec<Addon>, ReadOutcome)>,
) -> Result<Sample, String> {
    let before = bc.calls();
    let (t, r) = timed(read);
    let trips = bc.calls() - before;
    let (got, outcome) = r.map_err(err)?;
    if got.len() != rows {
        return Err(format!("read {} rows, expected {rows}", got.len()));
    }
    Ok(Sample {
        time: t,
        trips: Some(trips),
        extra: None,
        expected: outcome == expected,
    })
}

fn reads(
    report: &mut Report,
    plan: &Plan,
    dbs: &[(&'static str, Shared)],
    caches: &[BenchCache],
    sqlite: &Shared,
) {
    let n = plan.n(1000, 150);
    let warmup = plan.n(20, 5);
    let mut vs: Vec<Variant<'_>> = Vec::new();
    for (dbname, db) in dbs {
        let dbname = *dbname;
        let d = db.clone();
        vs.push(Variant::new(
            format!("{dbname}_pk_uncached"),
            Naming::Read,
            n,
            warmup,
            move |i| {
                let mut db = d.borrow_mut();
                let (t, r) =
                    timed(|| on_db!(&mut *db, |c| by_pk!(pk_of(i)).first::<Addon>(c.inner())));
                r.map_err(err)?;
                Ok(Sample::of(t))
            },
        ));
        let d = db.clone();
        vs.push(Variant::new(
            format!("{dbname}_list100_uncached"),
            Naming::Read,
            n,
            warmup,
            move |i| {
                let u = HIT_USERS[i % HIT_USERS.len()];
                let mut db = d.borrow_mut();
                let (t, r) =
                    timed(|| on_db!(&mut *db, |c| by_author!(u, 100).load::<Addon>(c.inner())));
                if r.map_err(err)?.len() != 100 {
                    return Err("the list does not hold 100 rows".into());
                }
                Ok(Sample::of(t))
            },
        ));
        let d = db.clone();
        vs.push(Variant::new(
            format!("{dbname}_count_uncached"),
            Naming::Read,
            n,
            warmup,
            move |i| {
                let u = COUNT_USERS[i % COUNT_USERS.len()];
                let mut db = d.borrow_mut();
                let (t, r) = timed(|| {
                    on_db!(&mut *db, |c| of_author!(u)
                        .count()
                        .get_result::<i64>(c.inner()))
                });
                r.map_err(err)?;
                Ok(Sample::of(t))
            },
        ));
        let d = db.clone();
        vs.push(Variant::new(
            if dbname == "sqlite" {
                "key_derivation_100".to_string()
            } else {
                format!("{dbname}_key_derivation_100")
            },
            Naming::Cost,
            n,
            warmup,
            move |i| {
                let u = HIT_USERS[i % HIT_USERS.len()];
                let mut db = d.borrow_mut();
                let (t, r) =
                    timed(|| on_db!(&mut *db, |c| by_author!(u, 100).cached().key::<Addon, _>(c)));
                r.map_err(err)?;
                Ok(Sample::of(t))
            },
        ));
        for bc in caches {
            let name = bc.name.clone();
            let safe = name.ends_with("_safe");
            let (d, b) = (db.clone(), bc.clone());
            vs.push(Variant::new(
                format!("{dbname}_{name}_list100_hit"),
                Naming::Read,
                n,
                warmup,
                move |i| {
                    let u = HIT_USERS[i % HIT_USERS.len()];
                    let mut db = d.borrow_mut();
                    let name = b.name.as_str();
                    cached_sample(&b, ReadOutcome::Hit, 100, || {
                        on_db!(&mut *db, |c| by_author!(u, 100)
                            .cached()
                            .cache(name)
                            .load_with_outcome::<Addon>(c))
                    })
                },
            ));
            let (d, b) = (db.clone(), bc.clone());
            vs.push(Variant::new(
                format!("{dbname}_{name}_pk_hit"),
                Naming::Read,
                n,
                warmup,
                move |i| {
                    let mut db = d.borrow_mut();
                    let name = b.name.as_str();
                    cached_sample(&b, ReadOutcome::Hit, 1, || {
                        on_db!(&mut *db, |c| by_pk!(pk_of(i))
                            .limit(1)
                            .cached()
                            .cache(name)
                            .load_with_outcome::<Addon>(c))
                    })
                },
            ));
            if safe {
                continue;
            }
            let (d, b) = (db.clone(), bc.clone());
            vs.push(Variant::new(
                format!("{dbname}_{name}_count_hit"),
                Naming::Read,
                n,
                warmup,
                move |i| {
                    let u = COUNT_USERS[i % COUNT_USERS.len()];
                    let mut db = d.borrow_mut();
                    let name = b.name.as_str();
                    let hits = b.cache.stats().hits;
                    let before = b.calls();
                    let (t, r) =
                        timed(|| on_db!(&mut *db, |c| of_author!(u).cached().cache(name).count(c)));
                    let trips = b.calls() - before;
                    r.map_err(err)?;
                    Ok(Sample {
                        time: t,
                        trips: Some(trips),
                        extra: None,
                        expected: b.cache.stats().hits == hits + 1,
                    })
                },
            ));
        }
    }
    // The floors: the same entries (the SQLite connection's), read raw.
    let mut payload = None;
    for bc in caches.iter().filter(|c| !c.name.ends_with("_safe")) {
        let lists = entry_keys(sqlite, bc, |c| {
            HIT_USERS
                .iter()
                .map(|&u| {
                    by_author!(u, 100)
                        .cached()
                        .cache(bc.name.as_str())
                        .key::<Addon, _>(c)
                })
                .collect()
        });
        let pks = entry_keys(sqlite, bc, |c| {
            (0..100)
                .map(|i| {
                    by_pk!(pk_of(i))
                        .limit(1)
                        .cached()
                        .cache(bc.name.as_str())
                        .key::<Addon, _>(c)
                })
                .collect()
        });
        for (what, keys) in [("list100", lists), ("pk", pks)] {
            let name = format!("floor_{}_{what}", bc.server);
            match keys {
                Err(e) => report.skip(name, e),
                Ok(keys) => {
                    if what == "list100" && payload.is_none() {
                        payload = bc
                            .raw
                            .get(&keys[0])
                            .ok()
                            .flatten()
                            .and_then(|item| entry_payload(&item.value).map(<[u8]>::to_vec));
                    }
                    let raw = bc.raw.clone();
                    vs.push(Variant::new(name, Naming::Read, n, warmup, move |i| {
                        floor_sample(&*raw, &keys[i % keys.len()])
                    }));
                }
            }
        }
    }
    match payload {
        None => report.skip("codec_decode_100", "no 100-row entry to decode"),
        Some(payload) => {
            report.metric("payload_bytes_100", payload.len() as f64, "bytes");
            vs.push(Variant::new(
                "codec_decode_100",
                Naming::Cost,
                n,
                warmup,
                move |_| {
                    let (t, rows) = timed(|| floor_decode(&payload));
                    if rows.map_err(err)?.len() != 100 {
                        return Err("the payload does not hold 100 rows".into());
                    }
                    Ok(Sample::of(t))
                },
            ));
        }
    }
    println!("# reads: {} figures x {n} samples, interleaved", vs.len());
    run_interleaved(report, vs);
}

/// Saves the first row of author `u`'s list (the list's invalidation), untimed.
fn invalidate_list(db: &mut Db, u: i32) -> Result<(), String> {
    on_db!(db, |c| {
        let mut row: Addon = by_pk!(crate::fixture::first_id_of(u))
            .first(c.inner())
            .map_err(err)?;
        row.val += 1;
        c.save_changes::<Addon, _>(&row).map(|_| ()).map_err(err)
    })
}

fn misses(report: &mut Report, plan: &Plan, dbs: &[(&'static str, Shared)], caches: &[BenchCache]) {
    let n = plan.n(200, 30);
    let warmup = plan.n(5, 2);
    let mut vs: Vec<Variant<'_>> = Vec::new();
    for (dbname, db) in dbs {
        let d = db.clone();
        vs.push(Variant::new(
            format!("{dbname}_list100_uncached_miss_phase"),
            Naming::Read,
            n,
            warmup,
            move |i| {
                let u = MISS_USERS[i % MISS_USERS.len()];
                let mut db = d.borrow_mut();
                let (t, r) =
                    timed(|| on_db!(&mut *db, |c| by_author!(u, 100).load::<Addon>(c.inner())));
                r.map_err(err)?;
                Ok(Sample::of(t))
            },
        ));
        for bc in caches.iter().filter(|c| !c.name.ends_with("_safe")) {
            let (d, b) = (db.clone(), bc.clone());
            vs.push(Variant::new(
                format!("{dbname}_{}_list100_miss_fill", bc.name),
                Naming::Read,
                n,
                warmup,
                move |i| {
                    let u = MISS_USERS[i % MISS_USERS.len()];
                    let mut db = d.borrow_mut();
                    invalidate_list(&mut db, u)?;
                    let name = b.name.as_str();
                    cached_sample(&b, ReadOutcome::Miss, 100, || {
                        on_db!(&mut *db, |c| by_author!(u, 100)
                            .cached()
                            .cache(name)
                            .load_with_outcome::<Addon>(c))
                    })
                },
            ));
        }
    }
    println!(
        "# misses: {} figures x {n} samples, interleaved (each miss after an untimed write)",
        vs.len()
    );
    run_interleaved(report, vs);
}

/// The write phase's fixture: rows held by K queries, parents of N children (users, each in
/// a cached query of its own), a row in one query. Each row's parents are its own (no other
/// row points at them) unless said.
fn write_fixture(conn: &mut impl SimpleConnection) -> Result<(), String> {
    conn.batch_execute(
        "CREATE TABLE addons (id INTEGER PRIMARY KEY, val INTEGER NOT NULL, author1_id INTEGER NOT NULL, author2_id INTEGER NOT NULL);
         CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
    )
    .map_err(err)?;
    let parents: Vec<String> = FANOUTS
        .iter()
        .map(|&n| format!("({}, 'parent of {n}')", parent(n)))
        .collect();
    conn.batch_execute(&format!("INSERT INTO users VALUES {}", parents.join(",")))
        .map_err(err)?;
    let mut values = Vec::new();
    for k in KS {
        values.push(format!(
            "({}, 0, {}, {})",
            k_row(k),
            100_000 + k,
            200_000 + k
        ));
    }
    values.push(format!("({ONE_ROW}, 0, 150000, 250000)"));
    for n in FANOUTS {
        for j in 0..n {
            let id = child(n, j);
            values.push(format!("({id}, 0, {}, {})", parent(n), id + 1_000_000));
        }
    }
    for chunk in values.chunks(500) {
        conn.batch_execute(&format!("INSERT INTO addons VALUES {}", chunk.join(",")))
            .map_err(err)?;
    }
    Ok(())
}

/// The row held by K cached queries.
fn k_row(k: usize) -> i32 {
    1_000_000 + k as i32
}

/// The row held by one cached query.
const ONE_ROW: i32 = 1_500_000;

/// Child `j` of the parent with `n` children (`author1_id = parent(n)`).
fn child(n: usize, j: usize) -> i32 {
    2_000_000 + (n * 10 + j) as i32
}

/// The user with `n` children.
fn parent(n: usize) -> i32 {
    300_000 + n as i32
}

type Conn = Rc<RefCell<CachedConnection<diesel::SqliteConnection>>>;

/// Saves row `id` (its value bumped), timed with the round trips of `bc`; `refilled` is what
/// the refill before it found invalidated by the previous save, `expected` whether that was
/// what the save had to invalidate.
fn timed_save(
    conn: &Conn,
    bc: &BenchCache,
    id: i32,
    refilled: u64,
    expected: bool,
) -> Result<Sample, String> {
    let mut c = conn.borrow_mut();
    let mut row: Addon = by_pk!(id).first(c.inner()).map_err(err)?;
    row.val += 1;
    let before = bc.calls();
    let (t, r) = timed(|| c.save_changes::<Addon, _>(&row));
    let trips = bc.calls() - before;
    r.map_err(err)?;
    Ok(Sample {
        time: t,
        trips: Some(trips),
        extra: Some(refilled),
        expected,
    })
}

/// Whether a cached read missed (and so was refilled).
fn missed(r: QueryResult<(Vec<Addon>, ReadOutcome)>) -> Result<u64, String> {
    let (_, outcome) = r.map_err(err)?;
    Ok(u64::from(outcome == ReadOutcome::Miss))
}

fn writes(report: &mut Report, plan: &Plan, servers: &[Server]) {
    let (n, n_big) = (plan.n(100, 12), plan.n(20, 4));
    let mut vs: Vec<Variant<'_>> = Vec::new();
    // The write alone: a save on a plain connection.
    match diesel::SqliteConnection::establish(":memory:") {
        Err(e) => report.skip("sqlite_plain_save", err(e)),
        Ok(mut raw) => match write_fixture(&mut raw) {
            Err(e) => report.skip("sqlite_plain_save", e),
            Ok(()) => vs.push(Variant::new(
                "sqlite_plain_save",
                Naming::Cost,
                n,
                1,
                move |_| {
                    let mut row: Addon = by_pk!(ONE_ROW).first(&mut raw).map_err(err)?;
                    row.val += 1;
                    let (t, r) = timed(|| row.save_changes::<Addon>(&mut raw));
                    r.map_err(err)?;
                    Ok(Sample::of(t))
                },
            )),
        },
    }
    for server in servers {
        let setup = BenchCache::new(server, false, "write").and_then(|bc| {
            let mut raw = diesel::SqliteConnection::establish(":memory:").map_err(err)?;
            write_fixture(&mut raw)?;
            let conn = CachedConnection::with_caches(raw, CacheSet::new(bc.cache.clone()));
            Ok((bc, Rc::new(RefCell::new(conn))))
        });
        let (bc, conn) = match setup {
            Ok(s) => s,
            Err(e) => {
                report.skip(format!("{} write figures", server.name), e);
                continue;
            }
        };
        for k in KS {
            let (c, b) = (conn.clone(), bc.clone());
            let row = k_row(k);
            vs.push(
                Variant::new(
                    format!("invalidate_k{k}_{}", server.name),
                    Naming::Cost,
                    if k >= 1000 { n_big } else { n },
                    1,
                    move |i| {
                        let mut refilled = 0;
                        {
                            let mut conn = c.borrow_mut();
                            for j in 0..k as i32 {
                                refilled += missed(
                                    addons::table
                                        .filter(addons::id.eq(row))
                                        .filter(addons::val.ne(-1 - j))
                                        .cached()
                                        .load_with_outcome::<Addon>(&mut *conn),
                                )?;
                            }
                        }
                        // After the warm-up, the previous save invalidated all K.
                        timed_save(&c, &b, row, refilled, i == 0 || refilled == k as u64)
                    },
                )
                .extra_label("invalidated"),
            );
        }
        for fan in FANOUTS {
            let (c, b) = (conn.clone(), bc.clone());
            vs.push(
                Variant::new(
                    format!("fanout_{fan}_{}", server.name),
                    Naming::Cost,
                    if fan >= 1000 { n_big } else { n },
                    1,
                    move |i| {
                        // The saved child's query, its parent's, its siblings'.
                        let (mut own, mut of_parent, mut siblings) = (0, 0, 0);
                        {
                            let mut conn = c.borrow_mut();
                            for j in 0..fan {
                                let m = missed(
                                    by_pk!(child(fan, j))
                                        .limit(1)
                                        .cached()
                                        .load_with_outcome::<Addon>(&mut *conn),
                                )?;
                                if j == 0 {
                                    own += m;
                                } else {
                                    siblings += m;
                                }
                            }
                            let (_, outcome) = users::table
                                .find(parent(fan))
                                .limit(1)
                                .cached()
                                .load_with_outcome::<User>(&mut *conn)
                                .map_err(err)?;
                            of_parent += u64::from(outcome == ReadOutcome::Miss);
                        }
                        // After the warm-up, the previous save of child 0 invalidated its own
                        // query and its parent's (scenario 15), and none of its siblings'.
                        let expected = i == 0 || (own, of_parent, siblings) == (1, 1, 0);
                        timed_save(&c, &b, child(fan, 0), own + of_parent + siblings, expected)
                    },
                )
                .extra_label("invalidated"),
            );
        }
        let (c, b) = (conn.clone(), bc.clone());
        vs.push(
            Variant::new(
                format!("save_one_{}", server.name),
                Naming::Cost,
                n,
                1,
                move |_| {
                    let refilled = {
                        let mut conn = c.borrow_mut();
                        missed(
                            by_pk!(ONE_ROW)
                                .limit(1)
                                .cached()
                                .load_with_outcome::<Addon>(&mut *conn),
                        )?
                    };
                    timed_save(&c, &b, ONE_ROW, refilled, refilled == 1)
                },
            )
            .extra_label("invalidated"),
        );
    }
    println!(
        "# writes (SQLite in memory): {} figures x {n} samples ({n_big} for 1000), interleaved; each save after its queries were refilled, untimed",
        vs.len()
    );
    run_interleaved(report, vs);
}

fn size_sweep(
    report: &mut Report,
    plan: &Plan,
    dbs: &[(&'static str, Shared)],
    caches: &[BenchCache],
    sqlite: &Shared,
) {
    let mut vs: Vec<Variant<'_>> = Vec::new();
    let samples = |rows: i64| {
        if rows >= 1000 {
            plan.n(100, 10)
        } else {
            plan.n(300, 30)
        }
    };
    let warmup = plan.n(5, 2);
    for (rows, u) in SWEEP {
        for (dbname, db) in dbs {
            let series = if *dbname == "pg" { "pg" } else { dbname };
            let d = db.clone();
            vs.push(Variant::new(
                format!("size_sweep_{series}_uncached_{rows}"),
                Naming::Cost,
                samples(rows),
                warmup,
                move |_| {
                    let mut db = d.borrow_mut();
                    let (t, r) = timed(|| {
                        on_db!(&mut *db, |c| by_author!(u, rows).load::<Addon>(c.inner()))
                    });
                    r.map_err(err)?;
                    Ok(Sample::of(t))
                },
            ));
        }
        for bc in caches.iter().filter(|c| !c.name.ends_with("_safe")) {
            let (d, b) = (sqlite.clone(), bc.clone());
            vs.push(Variant::new(
                format!("size_sweep_{}_hit_{rows}", bc.name),
                Naming::Cost,
                samples(rows),
                warmup,
                move |_| {
                    let mut db = d.borrow_mut();
                    let name = b.name.as_str();
                    cached_sample(&b, ReadOutcome::Hit, rows as usize, || {
                        on_db!(&mut *db, |c| by_author!(u, rows)
                            .cached()
                            .cache(name)
                            .load_with_outcome::<Addon>(c))
                    })
                    .map(|s| Sample { trips: None, ..s })
                },
            ));
            if bc.server == "locmem" {
                continue;
            }
            let name = format!("size_sweep_{}_floor_{rows}", bc.server);
            match entry_keys(sqlite, bc, |c| {
                by_author!(u, rows)
                    .cached()
                    .cache(bc.name.as_str())
                    .key::<Addon, _>(c)
                    .map(|k| vec![k])
            }) {
                Err(e) => report.skip(name, e),
                Ok(keys) => {
                    let raw = bc.raw.clone();
                    vs.push(Variant::new(
                        name,
                        Naming::Cost,
                        samples(rows),
                        warmup,
                        move |_| floor_sample(&*raw, &keys[0]),
                    ));
                }
            }
        }
    }
    println!("# size sweep: {} figures, interleaved", vs.len());
    run_interleaved(report, vs);
}

/// Hits through `.cached().load` on each connection, one thread each, for `length`: ops/s.
fn hit_round(
    conns: &mut [CachedConnection<diesel::SqliteConnection>],
    length: Duration,
) -> Result<f64, String> {
    let start = Instant::now();
    let deadline = start + length;
    let counts: Vec<Result<u64, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .iter_mut()
            .enumerate()
            .map(|(t, c)| {
                s.spawn(move || -> Result<u64, String> {
                    let mut ops = 0u64;
                    while Instant::now() < deadline {
                        let u = HIT_USERS[(ops as usize + t) % HIT_USERS.len()];
                        let rows: Vec<Addon> = by_author!(u, 100).cached().load(c).map_err(err)?;
                        std::hint::black_box(rows);
                        ops += 1;
                    }
                    Ok(ops)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a thread panicked".into())))
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut total = 0;
    for c in counts {
        total += c?;
    }
    Ok(total as f64 / elapsed)
}

fn threads(report: &mut Report, plan: &Plan) {
    let (rounds, length) = if plan.quick {
        (3, Duration::from_millis(300))
    } else {
        (7, Duration::from_secs(1))
    };
    // No round-trip counter here: a shared counter would be the contention measured.
    let setup = || -> Result<Vec<CachedConnection<diesel::SqliteConnection>>, String> {
        let cache = Cache::builder()
            .locmem()
            .prefix(caching_tests::unique_prefix("bench-threads"))
            .build()
            .map_err(err)?;
        let mut conns = Vec::new();
        for _ in 0..2 {
            let mut c = CachedConnection::with_caches(
                crate::fixture::sqlite()?,
                CacheSet::new(cache.clone()),
            );
            for u in HIT_USERS {
                let _: Vec<Addon> = by_author!(u, 100).cached().load(&mut c).map_err(err)?;
            }
            conns.push(c);
        }
        Ok(conns)
    };
    let mut conns = match setup() {
        Ok(c) => c,
        Err(e) => {
            report.skip("locmem_hit_throughput", e);
            return;
        }
    };
    println!(
        "# threads: locmem hits of 100-row lists (and pure computation, to calibrate), 1 and 2 threads alternating, {rounds} rounds of {} ms each",
        length.as_millis()
    );
    // The same rounds of pure computation calibrate the machine: what two threads can get
    // at all while the rest of the machine runs (other processes take cores too).
    let mut hits = [Vec::new(), Vec::new()];
    let mut cpu = [Vec::new(), Vec::new()];
    for r in 0..rounds {
        let order = if r % 2 == 0 { [1, 2] } else { [2, 1] };
        for t in order {
            match hit_round(&mut conns[..t], length) {
                Ok(ops) => hits[t - 1].push(ops),
                Err(e) => {
                    report.skip("locmem_hit_throughput", e);
                    return;
                }
            }
            cpu[t - 1].push(cpu_round(t, length));
        }
    }
    for (what, per) in [("locmem_hit_throughput", hits), ("cpu_throughput", cpu)] {
        for (i, mut v) in per.into_iter().enumerate() {
            v.sort_by(f64::total_cmp);
            report.metric(
                format!("{what}_threads{}", i + 1),
                crate::sampling::quantile(&v, 0.5),
                "ops/s",
            );
        }
    }
}

/// Pure computation (no allocation, no shared state) on `threads` threads for `length`:
/// units of work per second.
fn cpu_round(threads: usize, length: Duration) -> f64 {
    let start = Instant::now();
    let deadline = start + length;
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut ops = 0u64;
                    let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ t as u64;
                    while Instant::now() < deadline {
                        for _ in 0..2000 {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x = std::hint::black_box(x);
                        }
                        ops += 1;
                    }
                    ops
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    total as f64 / start.elapsed().as_secs_f64()
}

/// The round-trip figures under the names of issue 10: from memcached when it runs, else
/// locmem (a count of backend calls, the same on every server).
fn headlines(report: &mut Report, servers: &[Server], dbs: &[(&str, Shared)]) {
    let server = if servers.iter().any(|s| s.name == "memcached") {
        "memcached"
    } else {
        "locmem"
    };
    let db = if dbs.iter().any(|d| d.0 == "pg") {
        "pg"
    } else {
        "sqlite"
    };
    let alias = |report: &mut Report, name: &str, from: String| match report.get(&from) {
        Some(v) => report.metric(name, v, "trips"),
        None => report.skip(name, format!("figure {from} was not measured")),
    };
    alias(
        report,
        "miss_round_trips",
        format!("{db}_{server}_list100_miss_fill_round_trips"),
    );
    alias(
        report,
        "save_round_trips",
        format!("save_one_{server}_round_trips"),
    );
    for k in KS {
        alias(
            report,
            &format!("invalidate_k{k}_round_trips"),
            format!("invalidate_k{k}_{server}_round_trips"),
        );
    }
    for n in FANOUTS {
        alias(
            report,
            &format!("fanout_{n}_round_trips"),
            format!("fanout_{n}_{server}_round_trips"),
        );
    }
}

fn ratios(report: &mut Report, servers: &[Server], dbs: &[(&str, Shared)]) {
    // The targets of issue 10 first.
    report.ratio_of(
        "hit_vs_floor_list100",
        "sqlite_memcached_list100_hit_p50",
        "floor_memcached_list100_p50",
        &["memcached"],
    );
    report.ratio_of(
        "hit_vs_floor_pk",
        "sqlite_memcached_pk_hit_p50",
        "floor_memcached_pk_p50",
        &["memcached"],
    );
    report.ratio_of(
        "pg_uncached_vs_locmem_hit",
        "pg_list100_uncached_p50",
        "pg_locmem_list100_hit_p50",
        &["postgres"],
    );
    report.ratio_of(
        "miss_fill_vs_uncached",
        "pg_memcached_list100_miss_fill_p50",
        "pg_list100_uncached_miss_phase_p50",
        &["postgres", "memcached"],
    );
    report.ratio_of(
        "threads2_vs_threads1",
        "locmem_hit_throughput_threads2",
        "locmem_hit_throughput_threads1",
        &[],
    );
    report.ratio_of(
        "cpu_threads2_vs_threads1",
        "cpu_throughput_threads2",
        "cpu_throughput_threads1",
        &[],
    );
    // Every other pairing.
    let names: Vec<&str> = servers.iter().map(|s| s.name).collect();
    for s in ["locmem", "redis"] {
        for what in ["list100", "pk"] {
            report.ratio_of(
                &format!("{s}_hit_vs_floor_{what}"),
                &format!("sqlite_{s}_{what}_hit_p50"),
                &format!("floor_{s}_{what}_p50"),
                &needs("sqlite", s),
            );
        }
    }
    for (db, _) in dbs {
        for s in &names {
            let need = needs(db, s);
            for what in ["list100", "pk", "count"] {
                report.ratio_of(
                    &format!("{db}_{what}_uncached_vs_{s}_hit"),
                    &format!("{db}_{what}_uncached_p50"),
                    &format!("{db}_{s}_{what}_hit_p50"),
                    &need,
                );
            }
            report.ratio_of(
                &format!("{db}_{s}_miss_fill_vs_uncached"),
                &format!("{db}_{s}_list100_miss_fill_p50"),
                &format!("{db}_list100_uncached_miss_phase_p50"),
                &need,
            );
            report.ratio_of(
                &format!("{db}_{s}_safe_vs_default_hit"),
                &format!("{db}_{s}_safe_list100_hit_p50"),
                &format!("{db}_{s}_list100_hit_p50"),
                &need,
            );
        }
    }
    for s in &names {
        let need = needs("sqlite", s);
        report.ratio_of(
            &format!("invalidate_k1000_vs_k1_{s}"),
            &format!("invalidate_k1000_{s}"),
            &format!("invalidate_k1_{s}"),
            &need,
        );
        report.ratio_of(
            &format!("fanout_1000_vs_10_{s}"),
            &format!("fanout_1000_{s}"),
            &format!("fanout_10_{s}"),
            &need,
        );
        report.ratio_of(
            &format!("save_one_{s}_vs_plain_save"),
            &format!("save_one_{s}"),
            "sqlite_plain_save",
            &need,
        );
        if *s != "locmem" {
            report.ratio_of(
                &format!("size_sweep_{s}_hit_vs_floor_1000"),
                &format!("size_sweep_{s}_hit_1000"),
                &format!("size_sweep_{s}_floor_1000"),
                &need,
            );
        }
    }
}
