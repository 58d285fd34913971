//! smtpload against smtpsink (exact counts at the sink, verified intact),
//! through a mangling relay, and against scripted fake servers.

mod common;

use common::{fake_server, options, run, spec, Script, Sink};
use smtpload::payload::Payload;
use smtpsink::proto::client::Stage;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

#[test]
fn every_mode_delivers_exact_counts_intact() {
    // Each mode tunes the options and returns the BDAT chunk size (0: whole).
    type Tune = fn(&mut smtpload::driver::Options) -> usize;
    let modes: [(&str, Tune); 7] = [
        ("pipelined data, reused", |_| 0),
        ("lock-step", |o| {
            o.client.pipelining = false;
            0
        }),
        ("helo", |o| {
            o.client.ehlo = false;
            0
        }),
        ("new connection per message", |o| {
            o.per_connection = 1..=1;
            0
        }),
        ("bdat window 8", |o| {
            o.client.bdat = true;
            o.client.window = 8;
            0
        }),
        ("bdat 300-byte chunks, lock-step", |o| {
            o.client.bdat = true;
            o.client.pipelining = false;
            300
        }),
        ("3 per connection, 1 recipient", |o| {
            o.per_connection = 3..=3;
            0
        }),
    ];
    for (name, tune) in modes {
        let sink = Sink::start();
        let mut opts = options(sink.addr);
        let chunk = tune(&mut opts);
        let mut sp = spec();
        sp.chunk = chunk;
        let payload = Payload::new(&sp);
        let r = run(&opts, &payload);
        let report = sink.stop();
        assert_eq!(
            (r.ok, r.failed, r.error_total()),
            (200, 0, 0),
            "{name}: {:?}",
            r.errors
        );
        let v = &report.sink;
        assert_eq!(v.counts.messages, 200, "{name}");
        assert_eq!(v.counts.recipients, 400, "{name}");
        assert_eq!(v.counts.bytes, 200 * payload.message_len() as u64, "{name}");
        assert_eq!(
            (
                v.intact,
                v.corrupted,
                v.duplicated,
                v.lost(),
                v.unverifiable
            ),
            (200, 0, 0, 0, 0),
            "{name}"
        );
        let msg = r
            .phases
            .iter()
            .find(|(n, _)| *n == "message")
            .map(|(_, h)| h.len());
        assert_eq!(msg, Some(200), "{name}");
    }
}

#[test]
fn message_file_is_sent_with_crlf_and_stuffing() {
    let sink = Sink::start();
    let opts = options(sink.addr);
    let mut sp = spec();
    sp.message = Some(
        b"From: a@b.test\nSubject: file\n\n.leading dot\n..two\nStra\xc3\x9fe\n.\nend".to_vec(),
    );
    let payload = Payload::new(&sp);
    let r = run(&opts, &payload);
    let report = sink.stop();
    assert_eq!(r.ok, 200);
    assert_eq!(report.sink.intact, 200);
    assert_eq!(report.sink.counts.bytes, 200 * payload.message_len() as u64);
    assert!(payload
        .message(0, 0)
        .ends_with(b"\r\n\r\n.leading dot\r\n..two\r\nStra\xc3\x9fe\r\n.\r\nend\r\n"));
}

/// Forwards client bytes to `to`, replacing "Lorem" by "L0rem" on the way.
fn mangling_relay(to: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let Ok(mut server) = TcpStream::connect(to) else {
                return;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n) = c2.read(&mut buf) {
                    if n == 0 {
                        let _ = s2.shutdown(std::net::Shutdown::Write);
                        return;
                    }
                    for i in 0..n.saturating_sub(4) {
                        if &buf[i..i + 5] == b"Lorem" {
                            buf[i + 1] = b'0';
                        }
                    }
                    if s2.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut server, &mut client);
            });
        }
    });
    addr
}

#[test]
fn verify_counts_what_a_mangling_relay_did() {
    let sink = Sink::start();
    let relay = mangling_relay(sink.addr);
    let payload = Payload::new(&spec());
    let r = run(&options(relay), &payload);
    let report = sink.stop();
    assert_eq!(r.ok, 200, "the relay accepts everything");
    let v = &report.sink;
    assert!(v.corrupted > 0, "corrupted {}", v.corrupted);
    assert_eq!(v.intact + v.corrupted, 200);
    assert_eq!((v.duplicated, v.lost()), (0, 0));
}

fn count(r: &smtpload::report::Results, stage: Stage, code: u16) -> u64 {
    r.errors.get(&(stage, code)).copied().unwrap_or(0)
}

#[test]
fn refusals_are_counted_by_stage_and_code() {
    let payload = Payload::new(&spec());
    for pipelining in [true, false] {
        let mut o = options(fake_server(Script::RcptCode(450)));
        o.messages = Some(20);
        o.client.pipelining = pipelining;
        let r = run(&o, &payload);
        assert_eq!((r.ok, r.failed), (0, 20), "pipelining {pipelining}");
        assert_eq!(count(&r, Stage::Rcpt, 450), 40, "{:?}", r.errors);
        if pipelining {
            assert_eq!(count(&r, Stage::Data, 554), 20, "{:?}", r.errors);
        }
    }
    let mut o = options(fake_server(Script::FinalCode(554)));
    o.messages = Some(20);
    let r = run(&o, &payload);
    assert_eq!((r.ok, r.failed), (0, 20));
    assert_eq!(count(&r, Stage::EndOfData, 554), 20, "{:?}", r.errors);
}

#[test]
fn dropped_connections_are_counted_and_the_run_ends() {
    let payload = Payload::new(&spec());
    let mut o = options(fake_server(Script::DropAfterMail));
    o.messages = Some(12);
    o.client.pipelining = false;
    let t0 = Instant::now();
    let r = run(&o, &payload);
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!((r.ok, r.failed, r.started), (0, 12, 12));
    assert_eq!(count(&r, Stage::Disconnect, 0), 12, "{:?}", r.errors);
}

#[test]
fn a_stalled_server_times_out_on_time() {
    let payload = Payload::new(&spec());
    let mut o = options(fake_server(Script::Stall));
    // Both messages go out on the one connection (the second pipelined
    // behind the first), so one timeout fails both.
    o.messages = Some(2);
    o.connections = 1;
    o.timeout = Duration::from_millis(1500);
    let t0 = Instant::now();
    let r = run(&o, &payload);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert_eq!((r.ok, r.failed), (0, 2));
    assert_eq!(count(&r, Stage::Timeout, 0), 1, "{:?}", r.errors);
}

#[test]
fn open_loop_latency_includes_queueing_behind_a_stall() {
    // One connection, a message due every 10 ms, and the first final reply
    // held for 500 ms: the 29 messages due meanwhile queue up. Measured from
    // their due times they are late; measured from when they were sent, not.
    let payload = Payload::new(&spec());
    let mut o = options(fake_server(Script::StallFirstFinal(Duration::from_millis(
        500,
    ))));
    o.connections = 1;
    o.messages = Some(30);
    o.rate = Some(100.0);
    let r = run(&o, &payload);
    assert_eq!(r.ok, 30);
    let h = |name: &str| {
        r.phases
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, h)| h.clone())
            .unwrap()
    };
    let (corrected, uncorrected) = (h("message"), h("message-uncorrected"));
    assert!(
        corrected.value_at_quantile(0.5) >= 150_000,
        "corrected p50 {}us",
        corrected.value_at_quantile(0.5)
    );
    assert!(
        corrected.max() >= 450_000,
        "corrected max {}us",
        corrected.max()
    );
    assert!(
        uncorrected.value_at_quantile(0.5) < 50_000,
        "uncorrected p50 {}us",
        uncorrected.value_at_quantile(0.5)
    );
}

#[test]
fn open_loop_sends_due_messages_to_idle_connections_not_behind_a_stall() {
    // A stall of 800 ms on one of two connections, a message due every
    // 100 ms (the fake server takes ~45 ms a message: Nagle against
    // delayed ACKs): every message due meanwhile goes to the idle
    // connection, none queues behind the stall, so only the stalled one
    // is late.
    let payload = Payload::new(&spec());
    let mut o = options(fake_server(Script::StallFirstFinal(Duration::from_millis(
        800,
    ))));
    o.connections = 2;
    o.messages = Some(12);
    o.rate = Some(10.0);
    let r = run(&o, &payload);
    assert_eq!(r.ok, 12);
    let corrected = r
        .phases
        .iter()
        .find(|(n, _)| *n == "message")
        .map(|(_, h)| h.clone())
        .unwrap();
    assert_eq!(
        corrected.count_between(600_000, u64::MAX),
        1,
        "only the stalled message is late: max {}us, p90 {}us",
        corrected.max(),
        corrected.value_at_quantile(0.9)
    );
}
