//! The Redis backend's non-blocking reads (`Backend::get_multi_async`, features `redis` and
//! `tokio`).
//!
//! Against the real Redis of `REDIS_URL` (skipped with a line on stderr when it is unset,
//! failing under `CI=true`), with keys under a prefix of their own: the reads answer what
//! `get_multi` answers, in key order, for duplicates, missing keys, values written by another
//! client and keys of another type; a connection killed while idle costs no error.
//!
//! Against a scripted fake server (always run): garbage and wrong-shaped replies are errors,
//! never a panic nor a wrong item; a server that stops answering fails the read within
//! `io_timeout` and is marked down for blocking and non-blocking calls alike; a pooled
//! connection the server closed while idle costs no error (once); a read cancelled mid-reply
//! leaves no connection behind to be reused.
//!
//! (`tests/tests/async_hits.rs` runs the hit path on a private redis-server that restarts
//! and freezes.)

#![cfg(all(feature = "redis", feature = "tokio"))]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caching_core::backend::redis::{Redis, RedisOptions};
use caching_core::{Backend, Error, Expiry, Item};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The non-blocking read of `keys`.
async fn read(b: &dyn Backend, keys: &[&str]) -> caching_core::Result<Vec<Option<Item>>> {
    b.get_multi_async(keys)
        .expect("redis reads without blocking inside a runtime")
        .await
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// `REDIS_URL` without its query parameters; unset: a failure under `CI=true`, otherwise a
/// skip, reported on the real stderr (libtest captures `eprintln!`).
fn redis_url(test: &str) -> Option<String> {
    match std::env::var("REDIS_URL") {
        Ok(v) if !v.trim().is_empty() => {
            let v = v.trim();
            Some(v.split_once('?').map_or(v, |(s, _)| s).to_string())
        }
        _ => {
            assert!(
                !under_ci(),
                "REDIS_URL must be set under CI=true (needed by {test})"
            );
            let _ = writeln!(std::io::stderr(), "skipped: set REDIS_URL to run {test}");
            None
        }
    }
}

/// A prefix no other run uses (the server is shared).
fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("redis_async:{test}:{}:{nanos}:", std::process::id())
}

/// A direct blocking connection, for what the backend does not write: foreign values,
/// other types, `CLIENT LIST` / `CLIENT KILL`.
fn direct(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .unwrap()
}

/// The ids of the server's connections named `name`.
fn clients_named(conn: &mut redis::Connection, name: &str) -> Vec<String> {
    let list: String = redis::cmd("CLIENT").arg("LIST").query(conn).unwrap();
    list.lines()
        .filter(|l| l.split(' ').any(|f| f == format!("name={name}")))
        .filter_map(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("id="))
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn reads_answer_what_get_multi_answers() {
    let test = "reads_answer_what_get_multi_answers";
    let Some(url) = redis_url(test) else {
        return;
    };
    let p = unique_prefix(test);
    let name = format!("ra{}", std::process::id());
    let options = RedisOptions {
        client_name: Some(name.clone()),
        ..RedisOptions::default()
    };
    let r = Redis::new(&url, options).unwrap();
    let k = |s: &str| format!("{p}{s}");
    let (a, b, missing) = (k("a"), k("b"), k("missing"));
    let (short, long, list, empty) = (k("short"), k("long"), k("list"), k("empty"));
    r.set(&a, b"1", Expiry::Forever).unwrap();
    r.set(&b, b"two\r\nlines\0", Expiry::Seconds(60)).unwrap();
    r.set(&empty, b"", Expiry::Forever).unwrap();
    let mut other = direct(&url);
    // Another client's values (no token of ours) and a key of another type.
    let _: () = redis::cmd("SET")
        .arg(&short)
        .arg("xy")
        .query(&mut other)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&long)
        .arg("0123456789abc")
        .query(&mut other)
        .unwrap();
    let _: i64 = redis::cmd("RPUSH")
        .arg(&list)
        .arg("x")
        .query(&mut other)
        .unwrap();
    runtime().block_on(async {
        let keys = [
            a.as_str(),
            missing.as_str(),
            b.as_str(),
            a.as_str(),
            short.as_str(),
            long.as_str(),
            list.as_str(),
            empty.as_str(),
        ];
        let got = read(&r, &keys).await.unwrap();
        let blocking = r.get_multi(&keys).unwrap();
        assert_eq!(got.len(), keys.len());
        for (key, item) in keys.iter().zip(&got) {
            assert_eq!(item.as_ref(), blocking.get(*key), "{key}");
        }
        assert_eq!(got[0].as_ref().map(|i| &i.value[..]), Some(&b"1"[..]));
        assert_eq!(got[0], got[3], "a key listed twice gets its item twice");
        assert!(got[1].is_none(), "missing");
        assert_eq!(
            got[2].as_ref().map(|i| &i.value[..]),
            Some(&b"two\r\nlines\0"[..])
        );
        assert_eq!(got[4].as_ref().map(|i| &i.value[..]), Some(&b"xy"[..]));
        assert_eq!(got[5].as_ref().map(|i| &i.value[..]), Some(&b"89abc"[..]));
        assert!(got[6].is_none(), "a key of another type reads as missing");
        assert_eq!(got[7].as_ref().map(|i| &i.value[..]), Some(&b""[..]));
        // The tokens are the blocking reads' (a cas with one works).
        let token = got[0].as_ref().unwrap().cas;
        assert_eq!(
            r.cas(&a, b"3", Expiry::Forever, token).unwrap(),
            caching_core::CasOutcome::Stored
        );
        assert_ne!(
            read(&r, &[&a]).await.unwrap()[0].as_ref().unwrap().cas,
            token
        );

        // More keys than one MGET carries: several commands, still in key order.
        let many: Vec<String> = (0..1203).map(|i| k(&format!("m{i}"))).collect();
        let stored: Vec<(&str, Vec<u8>)> = many
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 1)
            .map(|(i, key)| (key.as_str(), i.to_string().into_bytes()))
            .collect();
        let items: Vec<(&str, &[u8])> = stored.iter().map(|(k, v)| (*k, &v[..])).collect();
        r.set_multi(&items, Expiry::Seconds(60)).unwrap();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let got = read(&r, &refs).await.unwrap();
        let blocking = r.get_multi(&refs).unwrap();
        assert_eq!(got.len(), refs.len());
        for (i, (key, item)) in refs.iter().zip(&got).enumerate() {
            assert_eq!(item.as_ref(), blocking.get(*key), "{key}");
            let want = (i % 3 != 1).then(|| i.to_string().into_bytes());
            assert_eq!(item.as_ref().map(|i| i.value.clone()), want, "{key}");
        }

        // Nothing to read, and invalid keys refused before anything is sent.
        assert_eq!(read(&r, &[]).await.unwrap(), Vec::new());
        let e = read(&r, &["bad key"]).await.unwrap_err();
        assert!(matches!(e, Error::InvalidKey { .. }), "{e}");

        // The non-blocking connection carries the name, and is pooled: more reads open
        // none.
        let before = clients_named(&mut other, &name).len();
        assert!(
            before >= 2,
            "a blocking and a non-blocking connection: {before}"
        );
        for _ in 0..5 {
            read(&r, &[&a]).await.unwrap();
        }
        assert_eq!(clients_named(&mut other, &name).len(), before);
    });
    r.delete_multi(&[&a, &b, &short, &long, &list, &empty])
        .unwrap();
}

#[test]
fn a_connection_killed_while_idle_costs_no_error() {
    let test = "a_connection_killed_while_idle_costs_no_error";
    let Some(url) = redis_url(test) else {
        return;
    };
    let p = unique_prefix(test);
    let name = format!("rk{}", std::process::id());
    let options = RedisOptions {
        client_name: Some(name.clone()),
        retry_after: Duration::from_secs(60),
        ..RedisOptions::default()
    };
    let r = Redis::new(&url, options).unwrap();
    let key = format!("{p}k");
    r.set(&key, b"v", Expiry::Seconds(60)).unwrap();
    let mut other = direct(&url);
    runtime().block_on(async {
        for round in 0..3 {
            assert_eq!(
                read(&r, &[&key]).await.unwrap()[0].as_ref().unwrap().value,
                b"v"
            );
            // Every connection of the backend, pooled and idle, killed (as a restart would).
            for id in clients_named(&mut other, &name) {
                let _: redis::Value = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("ID")
                    .arg(&id)
                    .query(&mut other)
                    .unwrap();
            }
            let got = read(&r, &[&key])
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(got[0].as_ref().unwrap().value, b"v", "round {round}");
            // Not marked down: the blocking client works at once too.
            assert_eq!(r.get(&key).unwrap().unwrap().value, b"v", "round {round}");
        }
    });
    r.delete(&key).unwrap();
}

#[test]
fn reads_outside_a_runtime_have_no_future() {
    let r = Redis::new("127.0.0.1:1", RedisOptions::default()).unwrap();
    assert!(r.get_multi_async(&["a"]).is_none());
    // Inside one they have (even for a server that is not there: that is the future's error).
    runtime().block_on(async {
        let e = read(&r, &["a"]).await.unwrap_err();
        assert!(matches!(e, Error::Unavailable { .. }), "{e}");
    });
}

// ---- A scripted fake Redis ----

/// What the fake server does with a request.
#[derive(Debug, Clone)]
enum Action {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Write these bytes one at a time, pausing before each.
    Trickle(Vec<u8>, Duration),
    /// Write these bytes, then never answer again (the connection stays open a while).
    Hang(Vec<u8>),
    /// Write these bytes, then close the connection.
    Close(Vec<u8>),
}

/// A fake Redis: answers `MGET` with nils, `PING` with `PONG`, the connection setup
/// (`CLIENT`, `CONFIG GET`, `INFO`) plausibly and refuses the rest, unless a script says
/// otherwise.
struct Fake {
    addr: String,
    script: Arc<Mutex<VecDeque<(String, Action)>>>,
    connections: Arc<AtomicUsize>,
}

impl Fake {
    fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (s, c) = (script.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                std::thread::spawn(move || serve(stream, &s));
            }
        });
        Fake {
            addr,
            script,
            connections,
        }
    }

    /// Answers the next `command` request with `action`.
    fn once(&self, command: &str, action: Action) {
        self.script
            .lock()
            .unwrap()
            .push_back((command.to_ascii_uppercase(), action));
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn client(&self, options: RedisOptions) -> Redis {
        Redis::new(&self.addr, options).unwrap()
    }
}

/// One RESP request (an array of bulk strings); `None` at the end of the stream.
fn request(reader: &mut impl BufRead) -> Option<Vec<Vec<u8>>> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let n: usize = line.trim_end().strip_prefix('*')?.parse().ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
        let mut arg = vec![0u8; len + 2];
        reader.read_exact(&mut arg).ok()?;
        arg.truncate(len);
        args.push(arg);
    }
    Some(args)
}

fn serve(stream: TcpStream, script: &Mutex<VecDeque<(String, Action)>>) {
    let mut out = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    while let Some(args) = request(&mut reader) {
        let command =
            String::from_utf8_lossy(args.first().map_or(&[][..], |a| &a[..])).to_ascii_uppercase();
        let scripted = {
            let mut script = script.lock().unwrap();
            let at = script.iter().position(|(c, _)| *c == command);
            at.and_then(|i| script.remove(i)).map(|(_, a)| a)
        };
        let action = scripted.unwrap_or_else(|| {
            Action::Send(match command.as_str() {
                "MGET" => {
                    let mut r = format!("*{}\r\n", args.len() - 1).into_bytes();
                    for _ in 1..args.len() {
                        r.extend_from_slice(b"$-1\r\n");
                    }
                    r
                }
                "PING" => b"+PONG\r\n".to_vec(),
                "CLIENT" => b"+OK\r\n".to_vec(),
                "CONFIG" => b"*2\r\n$16\r\nmaxmemory-policy\r\n$10\r\nnoeviction\r\n".to_vec(),
                "INFO" => b"$0\r\n\r\n".to_vec(),
                _ => b"-ERR unknown command\r\n".to_vec(),
            })
        });
        match action {
            Action::Send(bytes) => {
                if out.write_all(&bytes).is_err() {
                    return;
                }
            }
            Action::Trickle(bytes, pause) => {
                for b in bytes {
                    std::thread::sleep(pause);
                    if out.write_all(&[b]).is_err() {
                        return;
                    }
                }
            }
            Action::Hang(bytes) => {
                let _ = out.write_all(&bytes);
                std::thread::sleep(Duration::from_secs(30));
                return;
            }
            Action::Close(bytes) => {
                let _ = out.write_all(&bytes);
                return;
            }
        }
    }
}

/// Options for the fake: short timeouts, no fail-fast window to wait out unless a test sets
/// one.
fn options() -> RedisOptions {
    RedisOptions {
        connect_timeout: Duration::from_millis(500),
        io_timeout: Duration::from_millis(300),
        retry_after: Duration::from_millis(1),
        ..RedisOptions::default()
    }
}

/// Longest a failing read may take: the io timeout plus slack for a loaded machine.
const SLOW: Duration = Duration::from_secs(2);

fn is_io(e: &Error) -> bool {
    matches!(e, Error::Io { .. })
}

fn is_protocol(e: &Error) -> bool {
    matches!(e, Error::Protocol { .. })
}

#[test]
fn broken_replies_are_errors_and_the_next_read_recovers() {
    let fake = Fake::start();
    let r = fake.client(options());
    runtime().block_on(async {
        assert_eq!(read(&r, &["k"]).await.unwrap(), vec![None]);
        // (what, reply, a protocol error (else I/O), the connection stays in step (pooled)).
        // The resets are scripted twice: the first one meets the pooled connection, which
        // counts as closed while idle, and the read is run again on a new one. After each,
        // the blocking client gets the same reply.
        for (what, reply, protocol, in_step) in [
            ("a status", Action::Send(b"+OK\r\n".to_vec()), true, true),
            (
                "an error reply",
                Action::Send(b"-ERR boom\r\n".to_vec()),
                true,
                true,
            ),
            ("an integer", Action::Send(b":5\r\n".to_vec()), true, true),
            (
                "an integer among the values",
                Action::Send(b"*1\r\n:5\r\n".to_vec()),
                true,
                true,
            ),
            (
                "too many values",
                Action::Send(b"*2\r\n$-1\r\n$-1\r\n".to_vec()),
                true,
                true,
            ),
            (
                "binary garbage",
                Action::Close(b"\x00\xff\xfe\r\n".to_vec()),
                true,
                false,
            ),
            (
                "a reset mid-value",
                Action::Close(b"*1\r\n$5\r\nval".to_vec()),
                false,
                false,
            ),
            (
                "a reset before any reply",
                Action::Close(Vec::new()),
                false,
                false,
            ),
        ] {
            // Each case starts on a pooled connection (once the fail-fast window is over).
            std::thread::sleep(Duration::from_millis(5));
            read(&r, &["k"]).await.unwrap();
            if !protocol {
                fake.once("MGET", reply.clone());
            }
            fake.once("MGET", reply.clone());
            let start = Instant::now();
            let e = read(&r, &["k"])
                .await
                .expect_err(&format!("{what}: an error"));
            assert!(
                if protocol { is_protocol(&e) } else { is_io(&e) },
                "{what}: {e}"
            );
            assert!(start.elapsed() < SLOW, "{what}: {:?}", start.elapsed());
            // The next read works; a connection out of step is never reused.
            std::thread::sleep(Duration::from_millis(5));
            let before = fake.connections();
            assert_eq!(read(&r, &["k"]).await.unwrap(), vec![None], "{what}");
            let opened = fake.connections() - before;
            assert_eq!(opened, usize::from(!in_step), "{what}");
            // The blocking client reports the same reply as the same kind of error.
            r.get("k").unwrap();
            if !protocol {
                fake.once("MGET", reply.clone());
            }
            fake.once("MGET", reply);
            let blocking = r.get("k").expect_err(&format!("{what}: a blocking error"));
            assert_eq!(
                std::mem::discriminant(&blocking),
                std::mem::discriminant(&e),
                "{what}: {blocking} / {e}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    });
}

#[test]
fn a_server_that_stops_answering_fails_within_the_timeout_and_is_marked_down() {
    let fake = Fake::start();
    let options = RedisOptions {
        retry_after: Duration::from_secs(60),
        ..options()
    };
    let io_timeout = options.io_timeout;
    let r = fake.client(options);
    runtime().block_on(async {
        read(&r, &["k"]).await.unwrap();
        for partial in [&b""[..], b"*1\r\n$5\r\nva", b"*"] {
            fake.once("MGET", Action::Hang(partial.to_vec()));
            let start = Instant::now();
            let e = read(&r, &["k"]).await.unwrap_err();
            let waited = start.elapsed();
            assert!(is_io(&e), "{partial:?}: {e}");
            assert!(
                waited >= io_timeout && waited < SLOW,
                "{partial:?}: {waited:?}"
            );
            // Marked down: both clients fail fast without connecting.
            let before = fake.connections();
            let e = read(&r, &["k"]).await.unwrap_err();
            assert!(matches!(e, Error::Unavailable { .. }), "{e}");
            let e = r.get("k").unwrap_err();
            assert!(matches!(e, Error::Unavailable { .. }), "{e}");
            assert_eq!(fake.connections(), before);
            // A probe clears the mark; both read again.
            r.probe().unwrap();
            read(&r, &["k"]).await.unwrap();
            r.get("k").unwrap();
        }
        // A failure of the blocking client fails the non-blocking reads fast too.
        fake.once("MGET", Action::Hang(Vec::new()));
        assert!(is_io(&r.get("k").unwrap_err()));
        let start = Instant::now();
        let e = read(&r, &["k"]).await.unwrap_err();
        assert!(matches!(e, Error::Unavailable { .. }), "{e}");
        assert!(start.elapsed() < Duration::from_millis(100));
    });
}

#[test]
fn a_server_that_hangs_while_connecting_fails_within_the_connect_timeout() {
    let fake = Fake::start();
    let options = RedisOptions {
        retry_after: Duration::from_secs(60),
        ..options()
    };
    let r = fake.client(options);
    runtime().block_on(async {
        // The connection's setup (`CLIENT SETINFO`) is never answered.
        fake.once("CLIENT", Action::Hang(Vec::new()));
        let start = Instant::now();
        let e = read(&r, &["k"]).await.unwrap_err();
        assert!(matches!(e, Error::Unavailable { .. }), "{e}");
        assert!(start.elapsed() < SLOW, "{:?}", start.elapsed());
        // Marked down for the blocking client as well.
        assert!(matches!(r.get("k"), Err(Error::Unavailable { .. })));
    });
}

#[test]
fn a_reply_trickled_past_the_timeout_fails_and_one_within_it_is_read() {
    let fake = Fake::start();
    let r = fake.client(options());
    runtime().block_on(async {
        read(&r, &["k"]).await.unwrap();
        let reply = b"*1\r\n$11\r\n12345678abc\r\n".to_vec();
        // Each byte well within io_timeout, the whole reply well past it: the read is
        // bounded as a whole.
        fake.once(
            "MGET",
            Action::Trickle(reply.clone(), Duration::from_millis(40)),
        );
        let start = Instant::now();
        let e = read(&r, &["k"]).await.unwrap_err();
        assert!(is_io(&e), "{e}");
        assert!(start.elapsed() < SLOW, "{:?}", start.elapsed());
        std::thread::sleep(Duration::from_millis(5));
        fake.once("MGET", Action::Trickle(reply, Duration::from_millis(5)));
        let got = read(&r, &["k"]).await.unwrap();
        assert_eq!(
            got[0],
            Some(Item {
                value: b"abc".to_vec(),
                cas: u64::from_be_bytes(*b"12345678"),
            })
        );
    });
}

#[test]
fn a_pooled_connection_closed_while_idle_costs_no_error() {
    let fake = Fake::start();
    let options = RedisOptions {
        retry_after: Duration::from_secs(60),
        ..options()
    };
    let r = fake.client(options);
    runtime().block_on(async {
        // A complete answer, then the server closes the connection (a restart, an idle
        // timeout): the client pooled a connection that is now dead.
        fake.once("MGET", Action::Close(b"*1\r\n$-1\r\n".to_vec()));
        assert_eq!(read(&r, &["a"]).await.unwrap(), vec![None]);
        let before = fake.connections();
        fake.once("MGET", Action::Send(b"*1\r\n$9\r\n12345678v\r\n".to_vec()));
        let got = read(&r, &["k"]).await.expect("rerun on a new connection");
        assert_eq!(got[0].as_ref().map(|i| &i.value[..]), Some(&b"v"[..]));
        assert_eq!(fake.connections(), before + 1);
        // Closed again, and on the new connection too: an error, no third try.
        fake.once("MGET", Action::Close(b"*1\r\n$-1\r\n".to_vec()));
        read(&r, &["a"]).await.unwrap();
        let before = fake.connections();
        fake.once("MGET", Action::Close(Vec::new()));
        let e = read(&r, &["k"]).await.unwrap_err();
        assert!(is_io(&e), "{e}");
        assert_eq!(fake.connections(), before + 1);
    });
}

#[test]
fn a_read_cancelled_mid_reply_leaves_no_connection_to_reuse() {
    let fake = Fake::start();
    let r = fake.client(options());
    runtime().block_on(async {
        read(&r, &["k"]).await.unwrap();
        // Half a reply, slowly: the caller gives up (a request timeout) in the middle.
        fake.once(
            "MGET",
            Action::Trickle(
                b"*1\r\n$13\r\n12345678stale\r\n".to_vec(),
                Duration::from_millis(20),
            ),
        );
        let cancelled = tokio::time::timeout(Duration::from_millis(100), read(&r, &["k"])).await;
        assert!(cancelled.is_err(), "the read was cancelled");
        // The rest of that reply must never be read as the answer to this one.
        let before = fake.connections();
        fake.once(
            "MGET",
            Action::Send(b"*1\r\n$13\r\n12345678fresh\r\n".to_vec()),
        );
        let got = read(&r, &["k"]).await.unwrap();
        assert_eq!(got[0].as_ref().map(|i| &i.value[..]), Some(&b"fresh"[..]));
        assert_eq!(fake.connections(), before + 1, "a new connection");
        // Nothing was marked down by the cancellation.
        r.get("k").unwrap();
    });
}
