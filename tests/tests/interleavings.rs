//! Exhaustive interleavings of the real read and write paths (issue 4, PROTOCOL.md).
//!
//! Every backend operation and every database statement of the actors is a scheduling point:
//! the backend is wrapped so each call first waits for the scheduler's grant, and the
//! adapter's `read` / `write` steps (test hooks, feature `test-hooks`) do the same. A
//! depth-first search runs the real code (`.cached().first()` readers, `save_changes`
//! writers on SQLite + locmem) under every schedule, replaying prefixes from a fresh state.
//! A schedule that reaches a state already explored is not expanded again; the state is the
//! database row, the backend's contents (with CAS tokens and fill markers numbered per key /
//! by appearance, so equal states compare equal), each actor's step count, and the hash of
//! every result each actor has received (its local state: the code is deterministic given
//! those results). After every schedule, the cache must not serve a row older than the
//! committed one, and a reader that started after every writer finished must have read the
//! last committed row. A cache-machine-style writer run through the same search produces
//! stale outcomes, which shows the search looks where the races are.
#![cfg(all(feature = "test-hooks", feature = "sqlite"))]

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use caching_core::backend::locmem::LocMem;
use caching_core::{AppendOutcome, Backend, Cache, CasOutcome, Expiry, Item, StepHook};
use caching_diesel::prelude::*;
use caching_diesel::{CacheSet, CachedConnection};
use caching_tests::db::schema::users;
use caching_tests::db::User;

thread_local! {
    static ACTOR: Cell<Option<usize>> = const { Cell::new(None) };
}

#[derive(Default)]
struct St {
    /// Waiting actors and whether their next step is a database statement.
    waiting: BTreeMap<usize, bool>,
    /// Per actor: a hash of every result it has received so far (its local state).
    obs: Vec<u64>,
    running: Option<usize>,
    granted: Option<usize>,
    finished: BTreeSet<usize>,
}

#[derive(Default)]
struct Sched {
    st: Mutex<St>,
    cv: Condvar,
}

impl Sched {
    fn lock(&self) -> MutexGuard<'_, St> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by an actor before each shared operation: wait for the grant.
    fn point(&self, db: bool) {
        let Some(me) = ACTOR.with(Cell::get) else {
            return;
        };
        let mut st = self.lock();
        st.running = None;
        st.waiting.insert(me, db);
        self.cv.notify_all();
        while st.granted != Some(me) {
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.granted = None;
        st.waiting.remove(&me);
        st.running = Some(me);
    }

    fn finish(&self, me: usize) {
        let mut st = self.lock();
        st.running = None;
        st.finished.insert(me);
        self.cv.notify_all();
    }

    /// Folds the result of an operation into the calling actor's observations.
    fn observe(&self, result: impl Hash) {
        let Some(me) = ACTOR.with(Cell::get) else {
            return;
        };
        let mut st = self.lock();
        if st.obs.len() <= me {
            st.obs.resize(me + 1, 0);
        }
        st.obs[me] = fold(st.obs[me], result);
    }

    fn observe_for(&self, actor: usize, result: impl Hash) {
        let mut st = self.lock();
        if st.obs.len() <= actor {
            st.obs.resize(actor + 1, 0);
        }
        st.obs[actor] = fold(st.obs[actor], result);
    }

    fn observations(&self) -> Vec<u64> {
        self.lock().obs.clone()
    }

    /// Waits until no actor runs; returns the actors waiting for a grant (and whether each
    /// waits to run a database statement).
    fn quiescent(&self, n: usize) -> Vec<(usize, bool)> {
        let mut st = self.lock();
        while !(st.running.is_none()
            && st.granted.is_none()
            && st.waiting.len() + st.finished.len() == n)
        {
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.waiting.iter().map(|(a, d)| (*a, *d)).collect()
    }

    fn grant(&self, actor: usize) {
        let mut st = self.lock();
        st.granted = Some(actor);
        self.cv.notify_all();
    }
}

impl StepHook for Sched {
    fn step(&self, name: &'static str) {
        // Engine steps are covered by the backend wrapper; database steps are points here.
        if name == "read" || name == "write" {
            self.point(true);
        }
    }
}

/// LocMem whose every operation is a scheduling point, remembering the keys it saw.
#[derive(Debug)]
struct Scheduled {
    inner: LocMem,
    epochs: Mutex<Vec<u64>>,
    markers: Mutex<Vec<Vec<u8>>>,
    cas_ids: Mutex<HashMap<String, Vec<u64>>>,
    keys: Mutex<BTreeSet<String>>,
    sched: SchedRef,
}

#[derive(Clone)]
struct SchedRef(Arc<Sched>);
impl std::fmt::Debug for SchedRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sched")
    }
}

impl Scheduled {
    fn enter<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        self.sched.0.point(false);
        let mut k = self.keys.lock().unwrap();
        for key in keys {
            k.insert(key.to_string());
        }
    }

    /// A per-key version number for a raw CAS token: the n-th value a key has held gets n,
    /// whatever else happened in between.
    fn canonical_cas(&self, key: &str, cas: u64) -> u32 {
        let mut m = self.cas_ids.lock().unwrap();
        let versions = m.entry(key.to_string()).or_default();
        match versions.iter().position(|c| *c == cas) {
            Some(i) => i as u32,
            None => {
                versions.push(cas);
                (versions.len() - 1) as u32
            }
        }
    }

    /// The backend's contents (value and canonical CAS of every key ever used), unscheduled.
    fn dump(&self) -> Vec<(String, Vec<u8>, u32)> {
        self.raw_dump()
            .into_iter()
            .map(|(k, i)| {
                let c = self.canonical_cas(&k, i.cas);
                (k, self.canonical_value(i.value), c)
            })
            .collect()
    }

    /// Fill markers are random per fill; number them by first appearance so equal states
    /// compare equal across schedules.
    fn canonical_value(&self, value: Vec<u8>) -> Vec<u8> {
        if value.starts_with(b"P1") {
            let mut m = self.markers.lock().unwrap();
            let n = match m.iter().position(|v| *v == value) {
                Some(i) => i,
                None => {
                    m.push(value);
                    m.len() - 1
                }
            };
            return format!("P1#{n}").into_bytes();
        }
        // Flush-list epochs (eviction-safe mode) are random too: number them, both as the
        // `@n` token of a list and as the little-endian bytes an entry records.
        let epochs = self.epochs.lock().unwrap().clone();
        let mut out = value;
        for (i, e) in epochs.iter().enumerate() {
            out = replace(
                &out,
                format!("@{e}").as_bytes(),
                format!("@#{i}").as_bytes(),
            );
            out = replace(&out, &e.to_le_bytes(), format!("<epoch{i}>").as_bytes());
        }
        out
    }

    /// Learns the epochs of lists this actor creates.
    fn learn_epochs(&self, items: &[(&str, &[u8])]) {
        for (_, v) in items {
            let text = String::from_utf8_lossy(v);
            for t in text.split(' ') {
                if let Some(n) = t.strip_prefix('@').and_then(|n| n.parse::<u64>().ok()) {
                    let mut e = self.epochs.lock().unwrap();
                    if !e.contains(&n) {
                        e.push(n);
                    }
                }
            }
        }
    }

    fn raw_dump(&self) -> Vec<(String, Item)> {
        let keys: Vec<String> = self.keys.lock().unwrap().iter().cloned().collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let got = self.inner.get_multi(&refs).unwrap();
        let mut out: Vec<(String, Item)> = got.into_iter().collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

impl Backend for Scheduled {
    fn name(&self) -> &'static str {
        "scheduled-locmem"
    }
    fn may_block(&self) -> bool {
        // In-process: the async driver calls it inline, on the actor's own thread.
        false
    }
    /// Batches "without blocking": the same batch, as a ready future. The async actors then
    /// run the read protocol through the engine's non-blocking driver (`begin_read_async`,
    /// `publish_async`), so the search covers it, step for step.
    #[cfg(feature = "async")]
    fn batch_async<'a>(
        &'a self,
        stages: &'a [&'a [caching_core::Op<'a>]],
    ) -> Option<caching_core::backend::AsyncBatch<'a>> {
        Some(Box::pin(std::future::ready(self.batch(stages))))
    }
    fn max_item_size(&self) -> usize {
        self.inner.max_item_size()
    }
    fn get_multi(&self, keys: &[&str]) -> caching_core::Result<HashMap<String, Item>> {
        self.enter(keys.iter().copied());
        let r = self.inner.get_multi(keys);
        if let Ok(items) = &r {
            // Sorted, with canonical CAS tokens: HashMap order and the backend's global CAS
            // counter would otherwise make equal states look different.
            let mut seen: Vec<(String, Vec<u8>, u32)> = items
                .iter()
                .map(|(k, i)| {
                    (
                        k.clone(),
                        self.canonical_value(i.value.clone()),
                        self.canonical_cas(k, i.cas),
                    )
                })
                .collect();
            seen.sort();
            self.sched.0.observe(seen);
        }
        r
    }
    fn add_multi(&self, items: &[(&str, &[u8])], e: Expiry) -> caching_core::Result<Vec<bool>> {
        self.enter(items.iter().map(|i| i.0));
        self.learn_epochs(items);
        let r = self.inner.add_multi(items, e);
        self.sched.0.observe(format!("{r:?}"));
        r
    }
    fn set_multi(&self, items: &[(&str, &[u8])], e: Expiry) -> caching_core::Result<()> {
        self.enter(items.iter().map(|i| i.0));
        let r = self.inner.set_multi(items, e);
        self.sched.0.observe(format!("{r:?}"));
        r
    }
    fn append_multi(&self, items: &[(&str, &[u8])]) -> caching_core::Result<Vec<AppendOutcome>> {
        self.enter(items.iter().map(|i| i.0));
        let r = self.inner.append_multi(items);
        self.sched.0.observe(format!("{r:?}"));
        r
    }
    fn cas(
        &self,
        key: &str,
        value: &[u8],
        e: Expiry,
        cas: u64,
    ) -> caching_core::Result<CasOutcome> {
        self.enter([key]);
        let r = self.inner.cas(key, value, e, cas);
        self.sched.0.observe(format!("{r:?}"));
        r
    }
    fn delete_multi(&self, keys: &[&str]) -> caching_core::Result<()> {
        self.enter(keys.iter().copied());
        let r = self.inner.delete_multi(keys);
        self.sched.0.observe(format!("{r:?}"));
        r
    }
    fn incr(&self, key: &str, delta: u64) -> caching_core::Result<Option<u64>> {
        self.enter([key]);
        let r = self.inner.incr(key, delta);
        self.sched.0.observe(format!("{r:?}"));
        r
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Actor {
    /// `users.find(1).cached().first()`.
    Reader,
    /// `save_changes` of user 1 with a new name, through the write helpers.
    Writer,
    /// cache-machine's writer: commit, read the list, delete what it names, delete the list;
    /// no write generation. Used to show the search finds stale outcomes when they exist.
    NaiveWriter,
    /// A reader that starts only after every writer has finished: it must see the last
    /// committed row (a stale *read*, not only a stale final state).
    LateReader,
    /// `users.filter(name.eq("moved")).cached().load()`: a value-filtered list that user 1
    /// is not in at first.
    FilterReader,
    /// `save_changes` of user 1 renamed to "moved": the row *enters* the filtered list
    /// (no flush list of the cached list names it; only its predicate list does).
    MovingWriter,
    /// [`Actor::FilterReader`] starting after every writer has finished.
    LateFilterReader,
    /// [`Actor::Reader`] through the async driver (`AsyncCachedConnection` on diesel-async's
    /// SQLite wrapper, on a current-thread runtime): the same two halves of the read path
    /// around an awaited load.
    #[cfg(feature = "async")]
    AsyncReader,
    /// [`Actor::Writer`] through the async driver.
    #[cfg(feature = "async")]
    AsyncWriter,
}

/// The name that moves user 1 into [`Actor::FilterReader`]'s list.
const MOVED: &str = "moved";

impl Actor {
    fn writes(self) -> bool {
        #[cfg(feature = "async")]
        if self == Actor::AsyncWriter {
            return true;
        }
        matches!(
            self,
            Actor::Writer | Actor::NaiveWriter | Actor::MovingWriter
        )
    }

    fn late(self) -> bool {
        matches!(self, Actor::LateReader | Actor::LateFilterReader)
    }

    fn filters(self) -> bool {
        matches!(self, Actor::FilterReader | Actor::LateFilterReader)
    }
}

/// The filtered list's query.
fn moved_users() -> diesel::dsl::Filter<users::table, diesel::dsl::Eq<users::name, &'static str>> {
    users::table.filter(users::name.eq(MOVED))
}

struct World {
    dir: std::path::PathBuf,
}

impl World {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{}.db", caching_tests::db::unique_name(name)));
        let mut c = SqliteConnection::establish(dir.to_str().unwrap()).unwrap();
        diesel::sql_query(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL)",
        )
        .execute(&mut c)
        .unwrap();
        diesel::sql_query("INSERT INTO users VALUES (1, 'v0')")
            .execute(&mut c)
            .unwrap();
        World { dir }
    }

    fn connect(&self) -> SqliteConnection {
        use diesel::connection::SimpleConnection;
        let mut c = SqliteConnection::establish(self.dir.to_str().unwrap()).unwrap();
        // Durability is irrelevant here; every schedule runs dozens of statements.
        c.batch_execute("PRAGMA synchronous = OFF; PRAGMA journal_mode = MEMORY;")
            .unwrap();
        c
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.dir);
    }
}

/// `haystack` with every occurrence of `from` replaced by `to`.
fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

fn fold(h: u64, x: impl Hash) -> u64 {
    let mut s = std::collections::hash_map::DefaultHasher::new();
    h.hash(&mut s);
    x.hash(&mut s);
    s.finish()
}

#[derive(Debug, Default)]
struct Outcome {
    schedules: usize,
    states: usize,
    /// Schedules ending with the cache serving an old row.
    stale: usize,
    /// Schedules in which a reader that started after every writer finished got an old row.
    stale_reads: usize,
}

/// Runs every schedule of `actors` (up to state pruning) and counts stale final states.
fn explore(name: &str, actors: &[Actor]) -> Outcome {
    explore_with(name, actors, false)
}

/// [`explore`] with the cache's eviction-safe mode on or off.
fn explore_with(name: &str, actors: &[Actor], eviction_safe: bool) -> Outcome {
    explore_in(name, actors, eviction_safe, false)
}

/// [`explore_with`], with every actor in its own process (`processes`: its own `Cache` over
/// the shared backend, so readers meet only through the backend's lease, never through the
/// in-process single flight) or all in one.
///
/// Stampede protection is on, with a lease wait of 1 ms: a reader that finds another's
/// pending marker polls once (the number of polls depends on the wait alone, so every
/// schedule replays the same steps), and a reader waiting on another reader of its own
/// process looks the entry up again once that reader is done. Under the step hook the engine does not sleep or
/// block for these waits: the scheduler decides what happens meanwhile.
fn explore_in(name: &str, actors: &[Actor], eviction_safe: bool, processes: bool) -> Outcome {
    let world = World::new(name);
    let mut coord = world.connect();
    let n = actors.len();
    let mut visited: HashSet<u64> = HashSet::new();
    let mut stack: Vec<Vec<usize>> = vec![Vec::new()];
    // Connections are reused across schedules (opening one per actor per schedule dominated).
    let mut pool: Vec<SqliteConnection> = (0..n).map(|_| world.connect()).collect();
    let mut out = Outcome::default();
    while let Some(prefix) = stack.pop() {
        out.schedules += 1;
        // Fresh state.
        diesel::update(users::table.find(1))
            .set(users::name.eq("v0"))
            .execute(&mut coord)
            .unwrap();
        let sched = Arc::new(Sched::default());
        let backend = Arc::new(Scheduled {
            inner: LocMem::new(),
            epochs: Mutex::new(Vec::new()),
            markers: Mutex::new(Vec::new()),
            cas_ids: Mutex::new(HashMap::new()),
            keys: Mutex::new(BTreeSet::new()),
            sched: SchedRef(sched.clone()),
        });
        let plain = Cache::builder()
            .shared_backend(backend.clone())
            .prefix("il")
            .eviction_safe(eviction_safe)
            .lease_wait(std::time::Duration::from_millis(
                std::env::var("IL_LEASE_MS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1),
            ))
            // The filtered list starts empty: it must be cached to be able to go stale.
            .cache_empty_results(true)
            .build()
            .unwrap();
        for k in ["il:gen:users", "il:ver:users", "il:ns"] {
            backend.inner.set(k, b"100", Expiry::Forever).unwrap();
            backend.keys.lock().unwrap().insert(k.to_string());
        }
        let hooked = plain.with_step_hook(sched.clone());
        let handles: Vec<_> = actors
            .iter()
            .enumerate()
            .zip(pool.drain(..))
            .map(|((i, &actor), conn)| {
                let cache = if processes {
                    plain.with_step_hook(sched.clone())
                } else {
                    hooked.clone()
                };
                let sched = sched.clone();
                let backend = backend.clone();
                let db_path = world.dir.to_str().unwrap().to_string();
                std::thread::spawn(move || {
                    ACTOR.with(|a| a.set(Some(i)));
                    let mut seen: Option<Vec<User>> = None;
                    #[cfg(feature = "async")]
                    if matches!(actor, Actor::AsyncReader | Actor::AsyncWriter) {
                        // Not a late reader: the final state is what is checked.
                        let _ = async_actor(actor, i, &db_path, cache);
                        sched.finish(i);
                        return (conn, None);
                    }
                    let raw = if actor == Actor::NaiveWriter {
                        // A raw connection: the cached connection would see this write.
                        let mut raw = conn;
                        sched.point(true);
                        diesel::update(users::table.find(1))
                            .set(users::name.eq(format!("w{i}")))
                            .execute(&mut raw)
                            .unwrap();
                        let list = "il:f:o:users:1";
                        if let Some(item) = backend.get(list).unwrap() {
                            let text = String::from_utf8(item.value).unwrap();
                            let keys: Vec<&str> =
                                text.split(' ').filter(|k| !k.is_empty()).collect();
                            backend.delete_multi(&keys).unwrap();
                        }
                        backend.delete(list).unwrap();
                        raw
                    } else {
                        let mut conn = CachedConnection::with_caches(conn, CacheSet::new(cache));
                        match actor {
                            Actor::Reader | Actor::LateReader => {
                                let u: User =
                                    users::table.find(1).cached().first(&mut conn).unwrap();
                                seen = Some(vec![u]);
                            }
                            Actor::FilterReader | Actor::LateFilterReader => {
                                let list: Vec<User> =
                                    moved_users().cached().load(&mut conn).unwrap();
                                seen = Some(list);
                            }
                            Actor::MovingWriter => {
                                let _: User = conn
                                    .save_changes(&User {
                                        id: 1,
                                        name: MOVED.into(),
                                    })
                                    .unwrap();
                            }
                            Actor::Writer => {
                                let _: User = conn
                                    .save_changes(&User {
                                        id: 1,
                                        name: format!("w{i}"),
                                    })
                                    .unwrap();
                            }
                            Actor::NaiveWriter => unreachable!("handled above"),
                            #[cfg(feature = "async")]
                            Actor::AsyncReader | Actor::AsyncWriter => {
                                unreachable!("handled above")
                            }
                        }
                        conn.into_inner()
                    };
                    sched.finish(i);
                    (
                        raw,
                        actor.late().then_some(seen).flatten().map(|s| (actor, s)),
                    )
                })
            })
            .collect();
        // Drive the schedule: replay the prefix, then take the first enabled actor and push
        // the alternatives of every state not seen before.
        let mut steps = vec![0u32; n];
        let mut path: Vec<usize> = Vec::new();
        let mut pruned = false;
        loop {
            let waiting = sched.quiescent(n);
            if waiting.is_empty() {
                break;
            }
            // A late reader may start only once every writer has finished.
            let writers_done = actors
                .iter()
                .enumerate()
                .filter(|(_, a)| a.writes())
                .all(|(j, _)| !waiting.iter().any(|w| w.0 == j));
            let enabled: Vec<usize> = waiting
                .iter()
                .map(|w| w.0)
                .filter(|&j| writers_done || !actors[j].late() || steps[j] > 0)
                .collect();
            let db: String = users::table
                .find(1)
                .select(users::name)
                .first(&mut coord)
                .unwrap();
            let contents = backend.dump();
            let depth = path.len();
            let choice = if depth < prefix.len() {
                prefix[depth]
            } else {
                let key = fold(0, (&db, &contents, sched.observations(), &steps, &waiting));
                if !pruned && visited.insert(key) {
                    for &other in &enabled[1..] {
                        let mut alt = path.clone();
                        alt.push(other);
                        stack.push(alt);
                    }
                } else {
                    pruned = true;
                }
                enabled[0]
            };
            let Some(&(_, is_db)) = waiting.iter().find(|w| w.0 == choice) else {
                panic!("replay diverged: {prefix:?} at {depth}");
            };
            if is_db {
                // A database step's result is the row as it is now.
                sched.observe_for(choice, &db);
            }
            steps[choice] += 1;
            path.push(choice);
            sched.grant(choice);
        }
        assert!(
            out.schedules < 2_000_000,
            "state space larger than expected"
        );
        if out.schedules % 20_000 == 0 {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "  {name}: {} schedules, {} states so far",
                out.schedules,
                visited.len()
            );
        }
        let mut late_reads = Vec::new();
        for h in handles {
            let (conn, late) = h.join().unwrap();
            pool.push(conn);
            late_reads.extend(late);
        }
        // The cache must not serve anything older than the committed rows.
        let committed: User = users::table.find(1).first(&mut coord).unwrap();
        let committed_moved: Vec<User> = moved_users().load(&mut coord).unwrap();
        let expected = |a: Actor| {
            if a.filters() {
                committed_moved.clone()
            } else {
                vec![committed.clone()]
            }
        };
        if late_reads.iter().any(|(a, seen)| *seen != expected(*a)) {
            out.stale_reads += 1;
        }
        let mut reader = CachedConnection::with_caches(coord, CacheSet::new(plain.clone()));
        // The readers' queries: `first()` adds LIMIT 1.
        let keys = [
            (
                Actor::Reader,
                users::table
                    .find(1)
                    .limit(1)
                    .cached()
                    .key::<User, _>(&mut reader)
                    .unwrap(),
            ),
            (
                Actor::FilterReader,
                moved_users().cached().key::<User, _>(&mut reader).unwrap(),
            ),
        ];
        coord = reader.into_inner();
        for (a, key) in keys {
            if let Some(bytes) = plain.lookup(&key, &["users"]).unwrap().hit {
                let cached: Vec<User> = plain.config().codec.decode(&bytes).unwrap();
                if cached != expected(a) {
                    out.stale += 1;
                }
            }
        }
    }
    out.states = visited.len();
    out
}

/// An async actor's read or write, on its own thread's current-thread runtime (so its
/// engine steps are scheduling points of this actor). Returns what a reader saw.
#[cfg(feature = "async")]
fn async_actor(actor: Actor, i: usize, db_path: &str, cache: Cache) -> Option<Vec<User>> {
    use caching_diesel::AsyncCachedConnection;
    use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    use diesel_async::{AsyncConnection, SimpleAsyncConnection};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut raw = SyncConnectionWrapper::<SqliteConnection>::establish(db_path)
            .await
            .unwrap();
        raw.batch_execute("PRAGMA synchronous = OFF; PRAGMA journal_mode = MEMORY;")
            .await
            .unwrap();
        let mut conn = AsyncCachedConnection::with_caches(raw, CacheSet::new(cache));
        match actor {
            Actor::AsyncReader => {
                let u: User =
                    diesel_async::RunQueryDsl::first(users::table.find(1).cached(), &mut conn)
                        .await
                        .unwrap();
                Some(vec![u])
            }
            _ => {
                let _: User = conn
                    .save_changes(&User {
                        id: 1,
                        name: format!("w{i}"),
                    })
                    .await
                    .unwrap();
                None
            }
        }
    })
}

fn report(name: &str, o: &Outcome) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "interleavings {name}: schedules={} states={} stale_final_states={} stale_late_reads={}",
        o.schedules,
        o.states,
        o.stale,
        o.stale_reads
    );
}

#[test]
fn reader_writer() {
    let o = explore("il_rw", &[Actor::Reader, Actor::Writer]);
    report("R,W", &o);
    assert_eq!((o.stale, o.stale_reads), (0, 0));
    assert!(o.schedules > 10);
}

#[test]
fn reader_writer_writer() {
    let o = explore("il_rww", &[Actor::Reader, Actor::Writer, Actor::Writer]);
    report("R,W,W", &o);
    assert_eq!((o.stale, o.stale_reads), (0, 0));
}

#[test]
fn reader_reader_writer() {
    let o = explore("il_rrw", &[Actor::Reader, Actor::Reader, Actor::Writer]);
    report("R,R,W", &o);
    assert_eq!((o.stale, o.stale_reads), (0, 0));
}

#[test]
fn reader_reader_writer_in_three_processes() {
    // Readers in separate processes meet through the lease: the one whose `add` fails
    // polls for the other's fill, or takes the lease when the marker goes.
    let o = explore_in(
        "il_rrw_procs",
        &[Actor::Reader, Actor::Reader, Actor::Writer],
        false,
        true,
    );
    report("R,R,W (3 processes)", &o);
    assert_eq!((o.stale, o.stale_reads), (0, 0));
}

#[test]
fn the_search_finds_stale_outcomes_of_a_naive_writer() {
    // cache-machine's writer (no write generation, list deleted after reading it) against
    // our reader: the flush-list race must show up, or the search is not looking.
    let o = explore("il_naive", &[Actor::Reader, Actor::NaiveWriter]);
    report("R,naive W", &o);
    assert!(o.stale > 0, "{o:?}");
}

#[test]
fn reader_writer_late_reader() {
    // The window closed by publishing after the check: a reader overlapping the write must not
    // expose the old row to a reader that starts after the write finished.
    let o = explore("il_rwl", &[Actor::Reader, Actor::Writer, Actor::LateReader]);
    report("R,W,late R", &o);
    assert_eq!((o.stale, o.stale_reads), (0, 0));
}

#[test]
fn eviction_safe_mode_reader_writer_writer() {
    let o = explore_with(
        "il_rww_safe",
        &[Actor::Reader, Actor::Writer, Actor::Writer],
        true,
    );
    report("R,W,W (eviction-safe)", &o);
    assert_eq!((o.stale, o.stale_reads), (0, 0));
}

#[test]
fn eviction_safe_mode_reader_writer_late_reader() {
    let o = explore_with(
        "il_rwl_safe",
        &[Actor::Reader, Actor::Writer, Actor::LateReader],
        true,
    );
    report("R,W,late R (eviction-safe)", &o);
    assert_eq!((o.stale, o.stale_reads), (0, 0));
}

#[test]
fn filter_reader_moving_writer() {
    // Issue 8: a row that *enters* a cached value-filtered list. Flush lists cannot see it
    // (the list did not contain the row); the predicate list `users.name = moved` does.
    let o = explore("il_fm", &[Actor::FilterReader, Actor::MovingWriter]);
    report("filter R,moving W", &o);
    assert_eq!((o.stale, o.stale_reads), (0, 0));
    assert!(o.schedules > 10);
}

#[test]
fn filter_reader_moving_writer_late_filter_reader() {
    let o = explore(
        "il_fml",
        &[
            Actor::FilterReader,
            Actor::MovingWriter,
            Actor::LateFilterReader,
        ],
    );
    report("filter R,moving W,late filter R", &o);
    assert_eq!((o.stale, o.stale_reads), (0, 0));
}

#[test]
fn eviction_safe_mode_filter_reader_moving_writer_late_filter_reader() {
    let o = explore_with(
        "il_fml_safe",
        &[
            Actor::FilterReader,
            Actor::MovingWriter,
            Actor::LateFilterReader,
        ],
        true,
    );
    report("filter R,moving W,late filter R (eviction-safe)", &o);
    assert_eq!((o.stale, o.stale_reads), (0, 0));
}

#[cfg(feature = "async")]
#[test]
fn async_reader_writer() {
    let o = explore("il_arw", &[Actor::AsyncReader, Actor::Writer]);
    report("async R,W", &o);
    assert_eq!((o.stale, o.stale_reads), (0, 0));
    assert!(o.schedules > 10);
}

#[cfg(feature = "async")]
#[test]
fn reader_async_writer_late_reader() {
    let o = explore(
        "il_rawl",
        &[Actor::Reader, Actor::AsyncWriter, Actor::LateReader],
    );
    report("R,async W,late R", &o);
    assert_eq!((o.stale, o.stale_reads), (0, 0));
    assert!(o.schedules > 10);
}

#[cfg(feature = "async")]
#[test]
fn async_reader_async_writer_writer() {
    let o = explore(
        "il_araww",
        &[Actor::AsyncReader, Actor::AsyncWriter, Actor::Writer],
    );
    report("async R,async W,W", &o);
    assert_eq!((o.stale, o.stale_reads), (0, 0));
    assert!(o.schedules > 10);
}
