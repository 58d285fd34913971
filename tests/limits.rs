//! Hostile clients against the real reactor: command lines and message
//! content trickled in a byte at a time (slowloris), and one address opening
//! more connections than it may. Each must end with a 421, never a silent
//! drop, and never at the cost of other clients.

mod common;

use common::{start_with, Client};
use std::io::Write;
use std::net::TcpStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const START: &str = "354 End data with <CR><LF>.<CR><LF>\r\n";

/// Writes `piece` every `every`, `times` times, from another thread (the
/// client's pace is what is under test); stops at the first failed write.
fn trickle(
    stream: &TcpStream,
    piece: &'static [u8],
    every: Duration,
    times: usize,
) -> JoinHandle<()> {
    let mut w = stream.try_clone().expect("clone");
    std::thread::spawn(move || {
        for _ in 0..times {
            if w.write_all(piece).is_err() {
                return;
            }
            std::thread::sleep(every);
        }
    })
}

#[test]
fn a_command_line_trickled_in_is_cut_off_at_the_command_timeout() {
    let server = start_with(|c| c.command_timeout = Duration::from_secs(1));
    let mut slow = Client::greeted(server.addr);
    let t0 = Instant::now();
    // A byte every 100 ms for 5 s: the idle clock never runs out, the line's does.
    let writer = trickle(&slow.stream, b"x", Duration::from_millis(100), 50);
    // Meanwhile an ordinary client is served.
    let mut ok = Client::greeted(server.addr);
    ok.send_expect("NOOP\r\n", "250 2.0.0 Ok\r\n");
    assert_eq!(
        slow.replies(1),
        "421 4.4.2 sink.test Error: timeout exceeded, closing transmission channel\r\n"
    );
    assert!(t0.elapsed() >= Duration::from_secs(1), "{:?}", t0.elapsed());
    slow.expect_closed();
    writer.join().unwrap();
    // A line that is slow but complete in time is answered.
    let writer = trickle(&ok.stream, b"N", Duration::from_millis(300), 1);
    writer.join().unwrap();
    ok.send_expect("OOP\r\n", "250 2.0.0 Ok\r\n");
    let report = server.stop();
    let c = report.stats.counters;
    assert_eq!(
        (c.timeouts, c.command_timeouts, c.data_rate_timeouts),
        (1, 1, 0)
    );
}

#[test]
fn message_content_below_the_minimum_rate_is_cut_off() {
    let server = start_with(|c| {
        c.data_min_rate = 1000;
        c.data_window = Duration::from_millis(500);
    });
    let envelope = "HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n";
    let mut slow = Client::greeted(server.addr);
    slow.send_expect(
        envelope,
        &format!("250 sink.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n{START}"),
    );
    let t0 = Instant::now();
    // 100 octets/s against a minimum of 1000.
    let writer = trickle(&slow.stream, b"0123456789", Duration::from_millis(100), 40);
    // 2000 octets/s over three windows: slow, but fast enough.
    let mut steady = Client::greeted(server.addr);
    steady.send_expect(
        envelope,
        &format!("250 sink.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n{START}"),
    );
    trickle(&steady.stream, &[b'y'; 100], Duration::from_millis(50), 30)
        .join()
        .unwrap();
    steady.send_expect("\r\n.\r\n", "250 2.0.0 Ok: queued\r\n");
    assert_eq!(
        slow.replies(1),
        "421 4.4.2 sink.test Error: data transfer too slow, closing transmission channel\r\n"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    slow.expect_closed();
    writer.join().unwrap();
    let report = server.stop();
    let c = report.stats.counters;
    assert_eq!((c.timeouts, c.data_rate_timeouts, c.messages), (1, 1, 1));
    assert_eq!(c.body_bytes, 3002, "only the accepted message counts");
}

#[test]
fn bdat_chunks_are_held_to_the_minimum_rate_too() {
    let server = start_with(|c| {
        c.data_min_rate = 1000;
        c.data_window = Duration::from_millis(500);
    });
    let mut slow = Client::greeted(server.addr);
    slow.send_expect(
        "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n",
        &format!("{}250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n", common::EHLO),
    );
    slow.send(b"BDAT 100000 LAST\r\n");
    let writer = trickle(&slow.stream, b"0123456789", Duration::from_millis(100), 40);
    assert_eq!(
        slow.replies(1),
        "421 4.4.2 sink.test Error: data transfer too slow, closing transmission channel\r\n"
    );
    slow.expect_closed();
    writer.join().unwrap();
    let report = server.stop();
    assert_eq!(report.stats.counters.data_rate_timeouts, 1);
}

#[test]
fn connections_per_client_address_are_limited_with_421() {
    let server = start_with(|c| c.max_connections_per_client = 2);
    let mut a1 = Client::greeted(server.addr);
    let _a2 = Client::greeted(server.addr);
    let mut a3 = Client::connect(server.addr);
    assert_eq!(
        a3.replies(1),
        "421 4.7.0 sink.test Error: too many connections from your address\r\n"
    );
    a3.expect_closed();
    // Another address is not affected.
    let mut b = Client::connect_from(server.addr, "127.0.0.2".parse().unwrap());
    assert_eq!(b.replies(1), "220 sink.test ESMTP smtpsink\r\n");
    b.send_expect("NOOP\r\n", "250 2.0.0 Ok\r\n");
    // Once one closes, the address may connect again.
    a1.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    a1.expect_closed();
    drop(a3);
    let mut a4 = Client::greeted(server.addr);
    a4.send_expect("NOOP\r\n", "250 2.0.0 Ok\r\n");
    let report = server.stop();
    let c = report.stats.counters;
    assert_eq!((c.connections, c.connections_refused), (5, 1));
}

/// A connection counts under the address it came from, whoever XCLIENT
/// names later: when it closes that count is given back, so the proxy's
/// address is not left full (nor the named one emptied).
#[test]
fn xclient_does_not_move_a_connections_count_to_the_named_client() {
    let server = start_with(|c| {
        c.max_connections_per_client = 2;
        c.xclient = true;
    });
    for _ in 0..2 {
        let mut p = Client::greeted(server.addr);
        p.send_expect(
            "XCLIENT ADDR=10.0.0.9\r\n",
            "220 sink.test ESMTP smtpsink\r\n",
        );
        p.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
        p.expect_closed();
    }
    let a1 = Client::greeted(server.addr);
    let a2 = Client::greeted(server.addr);
    drop((a1, a2));
    let report = server.stop();
    assert_eq!(report.stats.counters.connections_refused, 0);
}
