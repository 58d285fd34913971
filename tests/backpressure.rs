//! Clients that do not read their replies while the server's timers run:
//! the connection is backlogged (output past the high-water mark) or closing
//! (output still to write after QUIT) when a deadline comes up. Whatever the
//! timer does, every reply the client asked for must still reach it once it
//! reads, and the connection must not be dropped before its own deadline.

mod common;

use common::{start_with, Client};
use smtpsink::proto::command::Verb;
use smtpsink::proto::server::Settings;
use smtpsink::reactor::{Limits, Server};
use smtpsink::sink::Discard;
use std::time::{Duration, Instant};

/// `n` pipelined EHLOs and a QUIT: far more replies than the socket buffers
/// of a client with a small window hold.
fn flood(n: usize) -> Vec<u8> {
    let mut v = b"EHLO x\r\n".repeat(n);
    v.extend_from_slice(b"QUIT\r\n");
    v
}

/// Everything arrived: `n` EHLO blocks (each has `250-PIPELINING`), then 221.
fn assert_all_answered(text: &str, n: usize) {
    assert_eq!(
        text.matches("250-PIPELINING\r\n").count(),
        n,
        "EHLO replies"
    );
    assert!(
        text.ends_with("221 2.0.0 Bye\r\n"),
        "ends {:?}",
        &text[text.len().saturating_sub(60)..]
    );
}

fn sleep_until(t: Instant) {
    std::thread::sleep(t.saturating_duration_since(Instant::now()));
}

#[test]
fn a_timer_that_finds_the_backlog_written_resumes_the_connection() {
    // A partial line arms the command deadline (1 s); the line completes with
    // a flood the client does not read, so the connection is backlogged when
    // the deadline comes up and finds its output written by then.
    let server = start_with(|c| c.command_timeout = Duration::from_secs(1));
    let mut c = Client::connect_small_window(server.addr);
    let t0 = Instant::now();
    c.send(b"NO");
    std::thread::sleep(Duration::from_millis(300));
    let mut rest = b"OP\r\n".to_vec();
    rest.extend_from_slice(&flood(15_000));
    c.send(&rest);
    sleep_until(t0 + Duration::from_millis(1800));
    let text = c.read_to_close();
    assert!(text.starts_with("220 sink.test ESMTP smtpsink\r\n250 2.0.0 Ok\r\n"));
    assert_all_answered(&text, 15_000);
    let report = server.stop();
    assert_eq!(report.stats.counters.timeouts, 0);
}

#[test]
fn a_closing_connection_waits_for_its_own_deadline() {
    // Accepted at t0 (idle deadline armed at t0 + 2 s); QUIT at t0 + 1 s with
    // its replies unread, so the connection is closing when that earlier
    // deadline comes up; its own runs to t0 + 3 s.
    let server = start_with(|c| c.timeout = 2);
    let mut c = Client::connect_small_window(server.addr);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    c.send(&flood(14_400));
    sleep_until(t0 + Duration::from_millis(2500));
    let text = c.read_to_close();
    assert_all_answered(&text, 14_400);
    server.stop();
}

#[test]
fn a_held_221_waits_for_the_replies_before_it() {
    let mut s = Settings::new("sink.test", 1 << 20, 100, 512);
    s.set_delay(Verb::Quit, Duration::from_millis(300));
    let limits = Limits {
        max_connections: 16,
        max_per_client: 0,
        grace: Duration::from_secs(5),
        spin_polls: 0,
        exit_after_messages: None,
        exit_after_connections: None,
        reuse_port: false,
    };
    let server = Server::bind(
        &["127.0.0.1:0".parse().unwrap()],
        16,
        s,
        limits,
        Discard::default(),
    )
    .expect("bind")
    .spawn();
    let mut c = Client::connect_small_window(server.addrs[0]);
    c.send(&flood(14_400));
    std::thread::sleep(Duration::from_secs(1));
    let text = c.read_to_close();
    assert_all_answered(&text, 14_400);
    server.stop().expect("run");
}
