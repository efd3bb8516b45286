//! A scripted memcached for the client's tests (`memcached_fake_server.rs`,
//! `memcached_async.rs`): a `TcpListener` on 127.0.0.1:0 in a thread that answers like a
//! tiny memcached unless a script says otherwise.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use caching_core::backend::memcached::{Memcached, MemcachedOptions};
use caching_core::{Backend, Error, Expiry};

/// What the fake server does with a request.
#[derive(Debug, Clone)]
pub enum Action {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Write these bytes one at a time, pausing before each.
    Trickle(Vec<u8>, Duration),
    /// Write these bytes, then never answer again (the connection stays open a while).
    Hang(Vec<u8>),
    /// Write these bytes, then close the connection (a reset if requests are left unread).
    Close(Vec<u8>),
}

impl Action {
    pub fn send(bytes: &[u8]) -> Action {
        Action::Send(bytes.to_vec())
    }
}

#[derive(Default)]
pub struct State {
    /// Scripted answers, used once each by the first request whose line starts with the prefix.
    once: VecDeque<(String, Action)>,
    /// Scripted answers used for every request whose line starts with the prefix.
    always: Vec<(String, Action)>,
    store: HashMap<String, (Vec<u8>, u64)>,
}

/// A scripted memcached: answers like a tiny memcached unless a script says otherwise.
pub struct Fake {
    pub addr: String,
    state: Arc<Mutex<State>>,
    connections: Arc<AtomicUsize>,
    pub stats_asked: Arc<AtomicUsize>,
}

impl Fake {
    pub fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stats_asked = Arc::new(AtomicUsize::new(0));
        let cas = Arc::new(AtomicU64::new(1));
        let (s, c, a) = (state.clone(), connections.clone(), stats_asked.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let (s, a, cas) = (s.clone(), a.clone(), cas.clone());
                thread::spawn(move || serve(stream, &s, &a, &cas));
            }
        });
        Fake {
            addr,
            state,
            connections,
            stats_asked,
        }
    }

    /// Answers the next request starting with `prefix` with `action`.
    pub fn once(&self, prefix: &str, action: Action) {
        self.state
            .lock()
            .unwrap()
            .once
            .push_back((prefix.into(), action));
    }

    /// Answers every request starting with `prefix` with `action`.
    pub fn always(&self, prefix: &str, action: Action) {
        self.state
            .lock()
            .unwrap()
            .always
            .push((prefix.into(), action));
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn client(&self, options: MemcachedOptions) -> Memcached {
        Memcached::new(&[self.addr.as_str()], options).unwrap()
    }
}

/// Serves one connection. Reads byte by byte (capacity-1 buffer), so requests a script does
/// not read stay in the kernel and closing then resets the connection.
pub fn serve(stream: TcpStream, state: &Mutex<State>, stats: &AtomicUsize, cas: &AtomicU64) {
    let mut out = stream.try_clone().unwrap();
    let mut reader = BufReader::with_capacity(1, stream);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = line.trim_end().to_string();
        let words: Vec<&str> = line.split(' ').collect();
        let data = match words[0] {
            "set" | "add" | "append" | "cas" => {
                let n: usize = words[4].parse().unwrap();
                let mut data = vec![0u8; n + 2];
                if reader.read_exact(&mut data).is_err() {
                    return;
                }
                data.truncate(n);
                data
            }
            _ => Vec::new(),
        };
        if words[0] == "stats" {
            stats.fetch_add(1, Ordering::SeqCst);
        }
        let action = {
            let mut st = state.lock().unwrap();
            let scripted = st
                .once
                .iter()
                .position(|(p, _)| line.starts_with(p.as_str()));
            if let Some(i) = scripted {
                st.once.remove(i).map(|(_, a)| a)
            } else if let Some((_, a)) = st.always.iter().find(|(p, _)| line.starts_with(p)) {
                Some(a.clone())
            } else {
                None
            }
        };
        let action =
            action.unwrap_or_else(|| Action::Send(default_reply(&words, data, state, cas)));
        let ok = match action {
            Action::Send(bytes) => out.write_all(&bytes).is_ok(),
            Action::Trickle(bytes, pause) => bytes.iter().all(|b| {
                thread::sleep(pause);
                out.write_all(&[*b]).is_ok()
            }),
            Action::Hang(bytes) => {
                let _ = out.write_all(&bytes);
                thread::sleep(Duration::from_secs(20));
                false
            }
            Action::Close(bytes) => {
                let _ = out.write_all(&bytes);
                false
            }
        };
        if !ok {
            return;
        }
    }
}

/// What a (tiny) memcached answers.
pub fn default_reply(
    words: &[&str],
    data: Vec<u8>,
    state: &Mutex<State>,
    cas: &AtomicU64,
) -> Vec<u8> {
    let mut st = state.lock().unwrap();
    let store = &mut st.store;
    let token = || cas.fetch_add(1, Ordering::SeqCst);
    let reply: &[u8] = match words {
        ["stats", "settings"] => b"STAT maxconns 1024\r\nSTAT item_size_max 1048576\r\nEND\r\n",
        ["version"] => b"VERSION 1.6.99-fake\r\n",
        // Meta get: `mg <key> v c [N<ttl>]` (the flags this client sends).
        ["mg", k, flags @ ..] => {
            let vivify = flags.iter().any(|f| f.starts_with('N'));
            let mut won = "";
            if !store.contains_key(*k) && vivify {
                store.insert(k.to_string(), (Vec::new(), token()));
                won = " W";
            }
            return match store.get(*k) {
                Some((v, c)) => {
                    let mut out = format!("VA {} c{c}{won}\r\n", v.len()).into_bytes();
                    out.extend_from_slice(v);
                    out.extend_from_slice(b"\r\n");
                    out
                }
                None => b"EN\r\n".to_vec(),
            };
        }
        ["gets", keys @ ..] => {
            let mut out = Vec::new();
            for k in keys {
                if let Some((v, c)) = store.get(*k) {
                    out.extend_from_slice(format!("VALUE {k} 0 {} {c}\r\n", v.len()).as_bytes());
                    out.extend_from_slice(v);
                    out.extend_from_slice(b"\r\n");
                }
            }
            out.extend_from_slice(b"END\r\n");
            return out;
        }
        ["set", k, ..] => {
            store.insert(k.to_string(), (data, token()));
            b"STORED\r\n"
        }
        ["add", k, ..] if store.contains_key(*k) => b"NOT_STORED\r\n",
        ["add", k, ..] => {
            store.insert(k.to_string(), (data, token()));
            b"STORED\r\n"
        }
        ["append", k, ..] => match store.get_mut(*k) {
            Some((v, c)) => {
                v.extend_from_slice(&data);
                *c = token();
                b"STORED\r\n"
            }
            None => b"NOT_STORED\r\n",
        },
        ["cas", k, _, _, _, c] => match store.get_mut(*k) {
            None => b"NOT_FOUND\r\n",
            Some((_, cur)) if cur.to_string() != *c => b"EXISTS\r\n",
            Some(entry) => {
                *entry = (data, token());
                b"STORED\r\n"
            }
        },
        ["delete", k] => match store.remove(*k) {
            Some(_) => b"DELETED\r\n",
            None => b"NOT_FOUND\r\n",
        },
        ["incr", k, d] => match store.get_mut(*k) {
            None => b"NOT_FOUND\r\n",
            Some((v, c)) => match std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            {
                None => b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
                Some(n) => {
                    let n = n.wrapping_add(d.parse().unwrap());
                    *v = n.to_string().into_bytes();
                    *c = token();
                    return format!("{n}\r\n").into_bytes();
                }
            },
        },
        _ => b"ERROR\r\n",
    };
    reply.to_vec()
}

/// Short timeouts, so a failing test fails fast; no fail-fast window, so the call after a
/// failure reaches the server.
pub fn options() -> MemcachedOptions {
    MemcachedOptions {
        connect_timeout: Duration::from_millis(500),
        io_timeout: Duration::from_millis(300),
        op_timeout: Duration::from_millis(1500),
        pool_size: 4,
        retry_after: Duration::ZERO,
    }
}

/// Upper bound for a call that must fail at `op_timeout` (1.5 s) or sooner: slack for a loaded
/// CI machine, still far below the time the scripted server would take to answer.
pub const SLOW: Duration = Duration::from_secs(4);

pub fn is_protocol(e: &Error) -> bool {
    matches!(e, Error::Protocol { .. })
}

pub fn is_io(e: &Error) -> bool {
    matches!(e, Error::Io { .. })
}

/// The call after a broken reply works, on a new connection (the broken one was dropped).
#[track_caller]
pub fn recovers(fake: &Fake, mc: &Memcached) {
    let before = fake.connections();
    mc.set("probe-key", b"fine", Expiry::Forever)
        .expect("set after a broken reply");
    assert_eq!(mc.get("probe-key").unwrap().unwrap().value, b"fine");
    assert_eq!(
        fake.connections(),
        before + 1,
        "the broken connection must not be reused, and one new connection then pooled"
    );
}

/// A client with a pooled, healthy connection to `fake`.
pub fn warm_client(fake: &Fake, options: MemcachedOptions) -> Memcached {
    let mc = fake.client(options);
    mc.set("warm", b"up", Expiry::Forever).unwrap();
    mc
}
