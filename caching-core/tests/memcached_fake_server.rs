//! The real `Memcached` backend against a scripted fake server (a `TcpListener` on
//! 127.0.0.1:0 in a thread): truncated frames, wrong lengths, unknown lines, huge numbers,
//! replies trickled a byte at a time, servers that hang or reset, a proxy that refuses
//! `stats settings`, and CAS round trips. After every broken reply, the next call on the
//! (now healthy) server must work on a new connection: a connection that saw garbage is never
//! returned to the pool.
//!
//! Needs no real memcached: these tests always run.

#![cfg(feature = "memcached")]

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::*;

use caching_core::backend::memcached::MemcachedOptions;
use caching_core::{AppendOutcome, Backend, CasOutcome, Error, Expiry, Op, OpReply};

#[test]
fn huge_announced_lengths_are_protocol_errors_not_allocations() {
    let fake = Fake::start();
    let mc = warm_client(&fake, options());
    for reply in [
        &b"VALUE k 0 1000000000000 1\r\n"[..],
        b"VALUE k 0 18446744073709551615 1\r\n",
        b"VALUE k 0 18446744073709551616 1\r\n",
        b"VALUE k 0 1049601 1\r\n",
    ] {
        fake.once("gets", Action::Hang(reply.to_vec()));
        let e = mc.get("k").unwrap_err();
        assert!(is_protocol(&e), "{reply:?}: {e}");
        recovers(&fake, &mc);
    }
}

#[test]
fn values_are_bounded_by_the_item_size_the_server_announced() {
    let fake = Fake::start();
    fake.always("stats", Action::send(b"STAT item_size_max 2048\r\nEND\r\n"));
    let mc = warm_client(&fake, options());
    assert_eq!(mc.max_item_size(), 2048);
    // A value the server could not hold is refused even when it is actually sent.
    let mut reply = b"VALUE k 0 8192 1\r\n".to_vec();
    reply.extend_from_slice(&[b'x'; 8192]);
    reply.extend_from_slice(b"\r\nEND\r\n");
    fake.once("gets", Action::Send(reply));
    assert!(is_protocol(&mc.get("k").unwrap_err()));
    recovers(&fake, &mc);
    // Within the item size: fine.
    let mut reply = b"VALUE k 0 2000 1\r\n".to_vec();
    reply.extend_from_slice(&[b'x'; 2000]);
    reply.extend_from_slice(b"\r\nEND\r\n");
    fake.once("gets", Action::Send(reply));
    assert_eq!(mc.get("k").unwrap().unwrap().value.len(), 2000);
}

#[test]
fn a_proxy_refusing_stats_settings_still_works() {
    for refusal in [
        Action::send(b"ERROR\r\n"),
        Action::send(b"SERVER_ERROR unsupported\r\n"),
        Action::send(b"CLIENT_ERROR bad command line format\r\n"),
        // twemproxy-like: closes the connection on a command it does not know.
        Action::Close(Vec::new()),
        // Answers something that is not STAT/END at all.
        Action::send(b"STORED\r\n"),
    ] {
        let fake = Fake::start();
        fake.always("stats", refusal.clone());
        let mc = fake.client(options());
        mc.set("a", b"1", Expiry::Forever)
            .unwrap_or_else(|e| panic!("{refusal:?}: {e}"));
        assert_eq!(mc.get("a").unwrap().unwrap().value, b"1", "{refusal:?}");
        assert_eq!(mc.max_item_size(), 1024 * 1024, "{refusal:?}");
        // New connections (after a broken reply) do not ask again.
        fake.once("gets", Action::send(b"NONSENSE\r\n"));
        assert!(mc.get("a").is_err());
        recovers(&fake, &mc);
        assert_eq!(
            fake.stats_asked.load(Ordering::SeqCst),
            1,
            "{refusal:?}: asked once"
        );
    }
}

#[test]
fn a_reply_trickled_within_the_deadline_succeeds() {
    let fake = Fake::start();
    let mc = warm_client(
        &fake,
        MemcachedOptions {
            io_timeout: Duration::from_secs(1),
            op_timeout: Duration::from_secs(5),
            ..options()
        },
    );
    fake.once(
        "gets",
        Action::Trickle(
            b"VALUE k 0 3 7\r\nabc\r\nEND\r\n".to_vec(),
            Duration::from_millis(5),
        ),
    );
    let item = mc.get("k").unwrap().unwrap();
    assert_eq!((item.value.as_slice(), item.cas), (&b"abc"[..], 7));
    fake.once(
        "set",
        Action::Trickle(b"STORED\r\n".to_vec(), Duration::from_millis(20)),
    );
    mc.set("t", b"x", Expiry::Forever).unwrap();
}

#[test]
fn a_trickle_exceeding_the_deadline_fails_on_time() {
    let fake = Fake::start();
    let options = MemcachedOptions {
        io_timeout: Duration::from_millis(400),
        op_timeout: Duration::from_millis(600),
        ..options()
    };
    let mc = warm_client(&fake, options);
    // Every byte arrives well within io_timeout, the whole reply (about 8 s) far after the
    // deadline.
    let mut reply = b"VALUE k 0 60 7\r\n".to_vec();
    reply.extend_from_slice(&[b'x'; 60]);
    reply.extend_from_slice(b"\r\nEND\r\n");
    fake.once("gets", Action::Trickle(reply, Duration::from_millis(100)));
    let start = Instant::now();
    let e = mc.get("k").unwrap_err();
    let took = start.elapsed();
    assert!(is_io(&e), "{e}");
    // The deadline plus generous slack for a loaded machine; far less than the whole reply.
    assert!(took < SLOW, "took {took:?}");
    recovers(&fake, &mc);
}

#[test]
fn a_server_that_never_answers_fails_within_the_deadline() {
    // Accepts and never answers anything (not even `stats settings`).
    let fake = Fake::start();
    fake.always("", Action::Hang(Vec::new()));
    let mc = fake.client(options());
    let start = Instant::now();
    let e = mc.get("k").unwrap_err();
    assert!(is_io(&e), "{e}");
    assert!(start.elapsed() < SLOW, "{:?}", start.elapsed());

    // Answers part of a reply, then stalls.
    let fake = Fake::start();
    let mc = warm_client(&fake, options());
    for partial in [
        &b"VALUE k 0 5 1\r\nab"[..],
        b"VALU",
        b"VALUE k 0 10 1\r\nabc\r\nEND\r\n",
    ] {
        fake.once("gets", Action::Hang(partial.to_vec()));
        let start = Instant::now();
        let e = mc.get("k").unwrap_err();
        assert!(is_io(&e), "{partial:?}: {e}");
        assert!(start.elapsed() < SLOW, "{partial:?}");
        recovers(&fake, &mc);
    }
}

#[test]
fn truncated_frames_are_io_errors() {
    let fake = Fake::start();
    let mc = warm_client(&fake, options());
    for (verb, partial) in [
        ("gets", &b"VALUE k 0 5 1\r\nab"[..]),
        ("gets", b"VALUE k 0 5 1\r\nabcde\r\n"),
        ("gets", b"VALUE k 0 5"),
        ("set", b"STOR"),
    ] {
        fake.once(verb, Action::Close(partial.to_vec()));
        let e = if verb == "gets" {
            mc.get("k").unwrap_err()
        } else {
            mc.set("k", b"v", Expiry::Forever).unwrap_err()
        };
        assert!(is_io(&e), "{partial:?}: {e}");
        recovers(&fake, &mc);
    }
    // Closed before a byte of the reply: to the client, a pooled connection the server
    // closed while it was idle (a restart). The call runs again on a new connection, once.
    fake.once("gets", Action::Close(Vec::new()));
    assert_eq!(mc.get("k").unwrap(), None, "answered on a new connection");
    fake.always("gets", Action::Close(Vec::new()));
    let e = mc.get("k").unwrap_err();
    assert!(
        is_io(&e),
        "closed again on the new connection: an error, no third try: {e}"
    );
}

#[test]
fn wrong_lengths_and_unterminated_data_are_protocol_errors() {
    let fake = Fake::start();
    let mc = warm_client(&fake, options());
    for reply in [
        // Announced shorter than sent.
        &b"VALUE k 0 2 1\r\nabc\r\nEND\r\n"[..],
        // Data block not ending in CRLF.
        b"VALUE k 0 3 1\r\nabcXYEND\r\n",
        b"VALUE k 0 3 1\r\nabc\nEND\r\n",
        // Missing or extra fields, a key not asked for, no CAS token from `gets`.
        b"VALUE k 0\r\nEND\r\n",
        b"VALUE k 0 3 1 2\r\nabc\r\nEND\r\n",
        b"VALUE other 0 3 1\r\nabc\r\nEND\r\n",
        b"VALUE k 0 3\r\nabc\r\nEND\r\n",
    ] {
        fake.once("gets", Action::Hang(reply.to_vec()));
        let e = mc.get("k").unwrap_err();
        assert!(is_protocol(&e), "{reply:?}: {e}");
        recovers(&fake, &mc);
    }
}

#[test]
fn unknown_lines_are_protocol_errors() {
    let fake = Fake::start();
    let mc = warm_client(&fake, options());
    let long_line = vec![b'a'; 100_000];
    for (verb, reply) in [
        ("gets", &b"HELLO\r\n"[..]),
        ("gets", b"END\n"),
        ("gets", b"\xff\xfe\r\n"),
        ("gets", &long_line),
        ("set", b"WAT\r\n"),
        ("set", b"ERROR\r\n"),
        ("delete", b"STORED\r\n"),
        ("incr", b"-1\r\n"),
    ] {
        fake.once(verb, Action::Hang(reply.to_vec()));
        let e = match verb {
            "gets" => mc.get("k").unwrap_err(),
            "set" => mc.set("k", b"v", Expiry::Forever).unwrap_err(),
            "delete" => mc.delete("k").unwrap_err(),
            _ => mc.incr("k", 1).unwrap_err(),
        };
        assert!(
            is_protocol(&e),
            "{verb} {:?}: {e}",
            &reply[..reply.len().min(20)]
        );
        recovers(&fake, &mc);
    }
}

#[test]
fn huge_numbers_are_protocol_errors() {
    let fake = Fake::start();
    let mc = warm_client(&fake, options());
    for (verb, reply) in [
        ("incr", &b"18446744073709551616\r\n"[..]),
        ("incr", b"99999999999999999999999999\r\n"),
        (
            "gets",
            b"VALUE k 0 3 18446744073709551616\r\nabc\r\nEND\r\n",
        ),
        ("gets", b"VALUE k 4294967296 3 1\r\nabc\r\nEND\r\n"),
    ] {
        fake.once(verb, Action::Hang(reply.to_vec()));
        let e = if verb == "incr" {
            mc.incr("k", 1).unwrap_err()
        } else {
            mc.get("k").unwrap_err()
        };
        assert!(is_protocol(&e), "{reply:?}: {e}");
        recovers(&fake, &mc);
    }
    // The largest counter is fine.
    fake.once("incr", Action::send(b"18446744073709551615\r\n"));
    assert_eq!(mc.incr("k", 1).unwrap(), Some(u64::MAX));
}

#[test]
fn gets_and_cas_round_trip_with_cas_tokens() {
    let fake = Fake::start();
    let mc = fake.client(options());
    mc.set("a", b"1", Expiry::Forever).unwrap();
    let item = mc.get("a").unwrap().unwrap();
    assert_eq!(item.value, b"1");
    // A stale token loses; the current one wins and changes the token.
    assert_eq!(
        mc.cas("a", b"2", Expiry::Forever, item.cas + 100).unwrap(),
        CasOutcome::Changed
    );
    assert_eq!(
        mc.cas("a", b"2", Expiry::Forever, item.cas).unwrap(),
        CasOutcome::Stored
    );
    let again = mc.get("a").unwrap().unwrap();
    assert_eq!(again.value, b"2");
    assert_ne!(again.cas, item.cas);
    assert_eq!(
        mc.cas("a", b"3", Expiry::Forever, item.cas).unwrap(),
        CasOutcome::Changed
    );
    assert_eq!(
        mc.cas("missing", b"3", Expiry::Forever, 1).unwrap(),
        CasOutcome::Missing
    );
    // Several at once, one round trip: outcomes in input order.
    mc.set("b", b"x", Expiry::Forever).unwrap();
    let b = mc.get("b").unwrap().unwrap();
    let outcomes = mc
        .cas_multi(
            &[
                ("a", b"4", again.cas),
                ("b", b"y", b.cas + 1),
                ("c", b"z", 5),
            ],
            Expiry::Forever,
        )
        .unwrap();
    assert_eq!(
        outcomes,
        [CasOutcome::Stored, CasOutcome::Changed, CasOutcome::Missing]
    );
    let got = mc.get_multi(&["a", "b", "c"]).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got["a"].value, b"4");
    assert_eq!(got["b"].value, b"x");
    // Other outcomes through the same parser.
    assert_eq!(
        mc.add_multi(&[("a", b"no"), ("d", b"yes")], Expiry::Forever)
            .unwrap(),
        [false, true]
    );
    assert_eq!(
        mc.append_multi(&[("d", b"!"), ("e", b"?")]).unwrap(),
        [AppendOutcome::Appended, AppendOutcome::Missing]
    );
    assert_eq!(mc.get("d").unwrap().unwrap().value, b"yes!");
    mc.set("n", b"41", Expiry::Forever).unwrap();
    assert_eq!(mc.incr("n", 1).unwrap(), Some(42));
    assert_eq!(mc.incr("nothing", 1).unwrap(), None);
    assert!(matches!(
        mc.incr("d", 1),
        Err(Error::NotANumber { key }) if key == "d"
    ));
    mc.delete_multi(&["a", "b", "zz"]).unwrap();
    assert!(mc.get("a").unwrap().is_none());
    // One connection did all of it.
    assert_eq!(fake.connections(), 1);
}

#[test]
fn a_connection_reset_mid_reply_is_an_io_error() {
    let fake = Fake::start();
    let mc = warm_client(&fake, options());
    // The server reads the first of three pipelined deletes, answers half a line and closes
    // with the other two unread: the kernel resets the connection.
    fake.once("delete", Action::Close(b"DELE".to_vec()));
    let e = mc.delete_multi(&["a", "b", "c"]).unwrap_err();
    assert!(is_io(&e), "{e}");
    recovers(&fake, &mc);
    // Mid data block, in a pipelined multi-get of two `gets` lines.
    let keys: Vec<String> = (0..150).map(|i| format!("k{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    fake.once("gets", Action::Close(b"VALUE k1 0 10 1\r\nabc".to_vec()));
    let e = mc.get_multi(&keys).unwrap_err();
    assert!(is_io(&e), "{e}");
    recovers(&fake, &mc);
}

#[test]
fn bytes_after_the_last_reply_keep_the_connection_out_of_the_pool() {
    let fake = Fake::start();
    let mc = warm_client(&fake, options());
    // The reply is complete and correct, but more follows it in the same write: the stream is
    // out of sync, so the connection must not be reused.
    fake.once("set", Action::send(b"STORED\r\nSTORED\r\n"));
    mc.set("k", b"v", Expiry::Forever).unwrap();
    recovers(&fake, &mc);
}

#[test]
fn client_errors_do_not_mark_the_server_down_and_probe_clears_the_mark() {
    let fake = Fake::start();
    let options = MemcachedOptions {
        retry_after: Duration::from_secs(60),
        ..options()
    };
    let mc = warm_client(&fake, options);
    // An error answer: the server is up.
    fake.once("set", Action::send(b"CLIENT_ERROR bad data chunk\r\n"));
    assert!(is_protocol(
        &mc.set("k", b"v", Expiry::Forever).unwrap_err()
    ));
    mc.set("k", b"v", Expiry::Forever).unwrap();
    // A timeout marks it down: calls fail fast until a probe reaches it.
    fake.once("gets", Action::Hang(Vec::new()));
    assert!(is_io(&mc.get("k").unwrap_err()));
    let start = Instant::now();
    assert!(matches!(
        mc.get("k").unwrap_err(),
        Error::Unavailable { .. }
    ));
    assert!(start.elapsed() < Duration::from_secs(1));
    mc.probe().unwrap();
    assert_eq!(mc.get("k").unwrap().unwrap().value, b"v");
    // A probe answered with something else than VERSION fails.
    fake.once("version", Action::send(b"STORED\r\n"));
    assert!(mc.probe().is_err());
    mc.probe().unwrap();
}

#[test]
fn probe_survives_a_pooled_connection_the_server_closed() {
    let fake = Fake::start();
    let options = MemcachedOptions {
        retry_after: Duration::from_secs(60),
        ..options()
    };
    let mc = warm_client(&fake, options);
    mc.set("k", b"v", Expiry::Forever).unwrap();
    // A complete answer, then the server closes the connection (as a restarted server or
    // an idle timeout would): the client pooled a connection that is now dead.
    fake.once("set", Action::Close(b"STORED\r\n".to_vec()));
    mc.set("other", b"w", Expiry::Forever).unwrap();
    mc.probe().unwrap();
    assert_eq!(mc.get("k").unwrap().unwrap().value, b"v");
}

/// A batch is one exchange: meta gets (with the lease's `N`), storage commands and their
/// replies, in order; the lease is won once.
#[test]
fn batches_read_with_meta_gets_and_lease_once() {
    let fake = Fake::start();
    let mc = warm_client(&fake, options());
    mc.set("a", b"1", Expiry::Forever).unwrap();
    let stages: [&[Op<'_>]; 2] = [
        &[
            Op::Lease("q", b"marker", Expiry::Seconds(10)),
            Op::Get("a"),
            Op::Get("missing"),
        ],
        &[Op::Append("a", b"2"), Op::Incr("missing", 1)],
    ];
    let first = mc.batch(&stages).unwrap();
    let OpReply::Leased {
        found: None,
        won: Some(placeholder),
    } = &first[0][0]
    else {
        panic!("the first lease wins: {:?}", first[0][0]);
    };
    assert!(placeholder.value.is_empty() && placeholder.cas.is_some());
    assert!(matches!(&first[0][1], OpReply::Value(Some(i)) if i.value == b"1"));
    assert_eq!(first[0][2], OpReply::Value(None));
    assert_eq!(
        first[1],
        [
            OpReply::Appended(AppendOutcome::Appended),
            OpReply::Counter(None)
        ]
    );
    let second = mc.batch(&stages[..1]).unwrap();
    let OpReply::Leased {
        found: Some(item),
        won: None,
    } = &second[0][0]
    else {
        panic!("the second finds the placeholder: {:?}", second[0][0]);
    };
    assert_eq!(Some(item.cas), placeholder.cas);
    assert!(matches!(&second[0][1], OpReply::Value(Some(i)) if i.value == b"12"));
}

/// Broken answers to a batch's meta gets fail the batch (never a panic, never a wrong
/// reply), and the next call works on a new connection.
#[test]
fn broken_meta_replies_fail_the_batch_and_the_connection_is_dropped() {
    let fake = Fake::start();
    let mc = warm_client(&fake, options());
    let stages: [&[Op<'_>]; 1] = [&[Op::Lease("q", b"m", Expiry::Seconds(10)), Op::Get("a")]];
    for reply in [
        &b"VA x c1\r\n"[..],
        b"VA 3 c1\r\nab",
        b"VA 1 cz\r\nx\r\n",
        b"STORED\r\n",
        b"VALUE q 0 1 1\r\nx\r\nEND\r\n",
        b"VA 99999999999 c1\r\n",
    ] {
        fake.once("mg q", Action::Hang(reply.to_vec()));
        let started = Instant::now();
        let e = mc.batch(&stages).unwrap_err();
        assert!(
            is_protocol(&e) || is_io(&e),
            "{:?}: {e}",
            String::from_utf8_lossy(reply)
        );
        assert!(started.elapsed() < SLOW, "failed on time");
        recovers(&fake, &mc);
    }
    // A server that closes the connection in the middle of a batch's replies.
    fake.once("mg a", Action::Close(b"VA 1".to_vec()));
    assert!(mc.batch(&stages).is_err());
    recovers(&fake, &mc);
}
