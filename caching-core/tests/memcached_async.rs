//! The memcached backend's non-blocking reads (`Backend::get_multi_async`, feature `tokio`)
//! against the scripted fake server: they answer what blocking reads answer; garbage,
//! truncation and resets are errors (never a panic, never a wrong item) after which the next
//! read works on a new connection; a server that stops answering (as one frozen with
//! SIGSTOP does) fails within `op_timeout` and is marked down for blocking and non-blocking
//! calls alike; a pooled connection the server closed while idle costs no error; a read
//! cancelled mid-reply leaves no connection behind to be reused.
//!
//! Needs no real memcached: these tests always run. (`tests/tests/core_backend.rs` runs the
//! same reads against real memcached processes that restart and freeze.)

#![cfg(all(feature = "memcached", feature = "tokio"))]

mod support;

use std::time::{Duration, Instant};

use caching_core::backend::memcached::MemcachedOptions;
use caching_core::{Backend, Error, Expiry, Item};

use support::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The non-blocking read of `keys`.
async fn read(b: &dyn Backend, keys: &[&str]) -> caching_core::Result<Vec<Option<Item>>> {
    b.get_multi_async(keys)
        .expect("memcached reads without blocking inside a runtime")
        .await
}

/// The next non-blocking read works, on a new connection (the broken one was dropped).
async fn recovers_async(fake: &Fake, mc: &dyn Backend) {
    mc.set("probe-key", b"fine", Expiry::Forever).unwrap();
    let before = fake.connections();
    let got = read(mc, &["probe-key"])
        .await
        .expect("read after a broken reply");
    assert_eq!(got[0].as_ref().map(|i| &i.value[..]), Some(&b"fine"[..]));
    assert_eq!(
        fake.connections(),
        before + 1,
        "the broken connection must not be reused, and one new connection then pooled"
    );
}

#[test]
fn reads_answer_what_blocking_reads_answer() {
    let fake = Fake::start();
    let mc = warm_client(&fake, options());
    mc.set("a", b"1", Expiry::Forever).unwrap();
    mc.set("b", b"two\r\nlines", Expiry::Forever).unwrap();
    runtime().block_on(async {
        let keys = ["a", "missing", "b", "a"];
        let got = read(&mc, &keys).await.unwrap();
        let blocking = mc.get_multi(&keys).unwrap();
        assert_eq!(got.len(), 4);
        for (k, item) in keys.iter().zip(&got) {
            assert_eq!(item.as_ref(), blocking.get(*k), "{k}");
        }
        assert!(got[1].is_none());
        assert_eq!(got[0], got[3], "a key listed twice gets its item twice");
        // The connection is pooled: a second read opens none.
        let before = fake.connections();
        read(&mc, &["a"]).await.unwrap();
        assert_eq!(fake.connections(), before);
        // Invalid keys are refused before anything is sent.
        let e = read(&mc, &["bad key"]).await.unwrap_err();
        assert!(matches!(e, Error::InvalidKey { .. }), "{e}");
    });
}

#[test]
fn reads_outside_a_runtime_have_no_future() {
    let fake = Fake::start();
    let mc = fake.client(options());
    assert!(mc.get_multi_async(&["a"]).is_none());
}

#[test]
fn broken_replies_are_errors_and_the_next_read_recovers() {
    let fake = Fake::start();
    let mc = warm_client(&fake, options());
    mc.set("k", b"value", Expiry::Forever).unwrap();
    runtime().block_on(async {
        for (what, reply, protocol) in [
            ("unknown line", &b"WHAT\r\n"[..], true),
            ("a value without its CAS token", b"VA 5\r\nvalue\r\n", true),
            ("a stored reply to a read", b"STORED\r\n", true),
            ("a length past the data", b"VA 50 c1\r\nvalue\r\n", false),
            ("a huge announced length", b"VA 99999999999 c1\r\n", true),
            ("binary garbage", b"\x00\xff\xfe\r\n", true),
        ] {
            fake.once("mg", Action::Close(reply.to_vec()));
            let start = Instant::now();
            let e = read(&mc, &["k"]).await.unwrap_err();
            assert!(
                if protocol { is_protocol(&e) } else { is_io(&e) },
                "{what}: {e}"
            );
            assert!(start.elapsed() < SLOW, "{what}");
            recovers_async(&fake, &mc).await;
        }
        // A reset after part of a multi-key reply.
        fake.once("mg", Action::Close(b"VA 5 c1\r\nval".to_vec()));
        let e = read(&mc, &["k", "k"]).await.unwrap_err();
        assert!(is_io(&e), "{e}");
        recovers_async(&fake, &mc).await;
    });
}

#[test]
fn a_server_that_stops_answering_fails_within_the_deadline_and_is_marked_down() {
    let fake = Fake::start();
    let options = MemcachedOptions {
        retry_after: Duration::from_secs(60),
        ..options()
    };
    let mc = warm_client(&fake, options);
    runtime().block_on(async {
        for partial in [&b""[..], b"VA 5 c1\r\nva", b"V"] {
            fake.once("mg", Action::Hang(partial.to_vec()));
            let start = Instant::now();
            let e = read(&mc, &["k"]).await.unwrap_err();
            assert!(is_io(&e), "{partial:?}: {e}");
            assert!(start.elapsed() < SLOW, "{partial:?}: {:?}", start.elapsed());
            // Marked down: both clients fail fast without connecting.
            let before = fake.connections();
            let e = read(&mc, &["k"]).await.unwrap_err();
            assert!(matches!(e, Error::Unavailable { .. }), "{e}");
            let e = mc.get("k").unwrap_err();
            assert!(matches!(e, Error::Unavailable { .. }), "{e}");
            assert_eq!(fake.connections(), before);
            // A probe clears the mark; both read again.
            mc.probe().unwrap();
            read(&mc, &["k"]).await.unwrap();
            mc.get("k").unwrap();
        }
    });
}

#[test]
fn a_trickled_reply_within_the_deadline_is_read() {
    let fake = Fake::start();
    let mc = warm_client(&fake, options());
    runtime().block_on(async {
        fake.once(
            "mg",
            Action::Trickle(b"VA 3 c9\r\nabc\r\n".to_vec(), Duration::from_millis(20)),
        );
        let got = read(&mc, &["k"]).await.unwrap();
        assert_eq!(
            got[0],
            Some(Item {
                value: b"abc".to_vec(),
                cas: 9
            })
        );
    });
}

#[test]
fn a_pooled_connection_closed_while_idle_costs_no_error() {
    let fake = Fake::start();
    let options = MemcachedOptions {
        retry_after: Duration::from_secs(60),
        ..options()
    };
    let mc = warm_client(&fake, options);
    mc.set("k", b"v", Expiry::Forever).unwrap();
    runtime().block_on(async {
        // A complete answer, then the server closes the connection (a restart, an idle
        // timeout): the client pooled a connection that is now dead.
        fake.once("mg", Action::Close(b"EN\r\n".to_vec()));
        assert_eq!(read(&mc, &["other"]).await.unwrap(), vec![None]);
        let before = fake.connections();
        let got = read(&mc, &["k"]).await.expect("rerun on a new connection");
        assert_eq!(got[0].as_ref().map(|i| &i.value[..]), Some(&b"v"[..]));
        assert_eq!(fake.connections(), before + 1);
        // Closed again on the new connection before any reply: an error, no third try.
        fake.once("mg", Action::Close(b"EN\r\n".to_vec()));
        read(&mc, &["other"]).await.unwrap();
        fake.once("mg", Action::Close(Vec::new()));
        let e = read(&mc, &["k"]).await.unwrap_err();
        assert!(is_io(&e), "{e}");
    });
}

#[test]
fn a_read_cancelled_mid_reply_leaves_no_connection_to_reuse() {
    let fake = Fake::start();
    let mc = warm_client(&fake, options());
    mc.set("k", b"value", Expiry::Forever).unwrap();
    runtime().block_on(async {
        read(&mc, &["k"]).await.unwrap();
        // Half a reply, slowly: the caller gives up (a request timeout) in the middle.
        fake.once(
            "mg",
            Action::Trickle(b"VA 5 c1\r\nvalue\r\n".to_vec(), Duration::from_millis(30)),
        );
        let cancelled = tokio::time::timeout(Duration::from_millis(100), read(&mc, &["k"])).await;
        assert!(cancelled.is_err(), "the read was cancelled");
        // The rest of that reply must never be read as the answer to this one.
        recovers_async(&fake, &mc).await;
        let got = read(&mc, &["k"]).await.unwrap();
        assert_eq!(got[0].as_ref().map(|i| &i.value[..]), Some(&b"value"[..]));
    });
}
