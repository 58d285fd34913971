//! Misbehaving on purpose, end to end: every rule action at the stage it is
//! meant for, every matcher, exact fractions for a fixed seed, delays seen
//! by one client while another is served at once, rate limits against a
//! burst, greylisting, magic addresses, the caps and the exit-after stops.
//! Replies are asserted byte for byte.

mod common;

use common::{start_with, Client, EHLO};
use rand::RngExt;
use smtpsink::rules::session_rng;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const SENDER_OK: &str = "250 2.1.0 Ok\r\n";
const RCPT_OK: &str = "250 2.1.5 Ok\r\n";
const GO_AHEAD: &str = "354 End data with <CR><LF>.<CR><LF>\r\n";
const QUEUED: &str = "250 2.0.0 Ok: queued\r\n";

fn ehlo(c: &mut Client) {
    c.send_expect("EHLO client.test\r\n", EHLO);
}

/// MAIL, RCPT and DATA pipelined, and their three replies.
fn data_started(c: &mut Client) {
    c.send(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n");
    assert_eq!(c.replies(3), format!("{SENDER_OK}{RCPT_OK}{GO_AHEAD}"));
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn replies_at_each_stage_refuse_or_replace() {
    let server = start_with(|c| c.reply = vec!["helo:550 5.7.1 Go away, helo.bad".into()]);
    let mut c = Client::greeted(server.addr);
    // Refused HELO: the session is still ungreeted.
    c.send_expect("HELO helo.bad\r\n", "550 5.7.1 Go away, helo.bad\r\n");
    c.send_expect(
        "MAIL FROM:<a@x>\r\n",
        "503 5.5.1 Error: send HELO/EHLO first\r\n",
    );
    let report = server.stop();
    assert_eq!(report.stats.counters.transactions, 0);

    // One stage at a time, so each refusal is seen in its own dialogue.
    let server = start_with(|c| c.reply = vec!["mail:451 4.7.1 Not now".into()]);
    let mut c = Client::greeted(server.addr);
    ehlo(&mut c);
    c.send_expect("MAIL FROM:<a@x>\r\n", "451 4.7.1 Not now\r\n");
    // MAIL was refused: no transaction.
    c.send_expect(
        "RCPT TO:<b@x>\r\n",
        "503 5.5.1 Error: need MAIL command\r\n",
    );
    drop(c);
    assert_eq!(server.stop().stats.counters.transactions, 0);

    let server = start_with(|c| {
        c.reply = vec![
            "rcpt:250 2.1.5 Fine by rule".into(),
            "data:554 5.7.1 No data today".into(),
            "rset:502 5.5.1 No reset".into(),
            "other:252 2.1.5 Maybe".into(),
            "quit:221 2.0.0 Ciao".into(),
        ];
    });
    let mut c = Client::greeted(server.addr);
    ehlo(&mut c);
    c.send_expect("MAIL FROM:<a@x>\r\n", SENDER_OK);
    c.send_expect("RCPT TO:<b@x>\r\n", "250 2.1.5 Fine by rule\r\n");
    c.send_expect("DATA\r\n", "554 5.7.1 No data today\r\n");
    // Still in the transaction: DATA was refused, not the envelope.
    c.send_expect("RSET\r\n", "502 5.5.1 No reset\r\n");
    c.send_expect(
        "MAIL FROM:<c@x>\r\n",
        "503 5.5.1 Error: nested MAIL command\r\n",
    );
    c.send_expect("NOOP\r\n", "252 2.1.5 Maybe\r\n");
    c.send_expect("VRFY x\r\n", "252 2.1.5 Maybe\r\n");
    c.send_expect("QUIT\r\n", "221 2.0.0 Ciao\r\n");
    c.expect_closed();
    let report = server.stop();
    assert_eq!(report.stats.counters.recipients, 1);
    assert_eq!(report.stats.rule_replies.get(&554), Some(&1));
}

#[test]
fn connect_stage_greeting_refusal_close_and_421() {
    // 554 greeting: only QUIT is served (RFC 5321 3.1).
    let server = start_with(|c| c.reply = vec!["connect:554 5.7.1 No service for you".into()]);
    let mut c = Client::connect(server.addr);
    assert_eq!(c.replies(1), "554 5.7.1 No service for you\r\n");
    c.send_expect(
        "EHLO x\r\n",
        "503 5.5.1 Error: no service on this connection; send QUIT\r\n",
    );
    // Out of sequence anyway: its usual 503.
    c.send_expect(
        "MAIL FROM:<a@x>\r\n",
        "503 5.5.1 Error: send HELO/EHLO first\r\n",
    );
    c.send_expect(
        "NOOP\r\n",
        "503 5.5.1 Error: no service on this connection; send QUIT\r\n",
    );
    c.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    c.expect_closed();
    drop(server.stop());

    let server = start_with(|c| c.reply = vec!["connect:421".into()]);
    let mut c = Client::connect(server.addr);
    assert_eq!(
        c.read_to_close(),
        "421 4.3.0 Service not available, closing transmission channel (smtpsink rule)\r\n"
    );
    drop(server.stop());

    let server = start_with(|c| c.close = vec!["connect".into()]);
    let mut c = Client::connect(server.addr);
    assert_eq!(c.read_to_close(), "");
    drop(server.stop());
}

#[test]
fn a_421_reply_closes_and_close_hangs_up_without_a_reply() {
    let server = start_with(|c| {
        c.rules = None;
        c.reply = vec!["rcpt:421 4.7.0 Enough".into()];
    });
    let mut c = Client::greeted(server.addr);
    ehlo(&mut c);
    c.send_expect("MAIL FROM:<a@x>\r\n", SENDER_OK);
    c.send(b"RCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\n");
    // Nothing after the 421 is answered.
    assert_eq!(c.read_to_close(), "421 4.7.0 Enough\r\n");
    drop(server.stop());

    let server = start_with(|c| c.close = vec!["end".into()]);
    let mut c = Client::greeted(server.addr);
    ehlo(&mut c);
    data_started(&mut c);
    c.send(b"Subject: lost\r\n\r\nbody\r\n.\r\n");
    // The message's end gets no reply at all: an MTA must retry it.
    assert_eq!(c.read_to_close(), "");
    let report = server.stop();
    assert_eq!(
        (
            report.stats.counters.messages,
            report.stats.counters.messages_rejected
        ),
        (0, 0)
    );
}

#[test]
fn close_after_bytes_cuts_the_connection_mid_data_and_bdat() {
    let server = start_with(|c| c.close_after = Some(1000));
    let mut c = Client::greeted(server.addr);
    ehlo(&mut c);
    data_started(&mut c);
    // A small message passes; the limit is per message.
    let w = c.send_in_background([&b"x\r\n"[..], &[b'y'; 5000], b"\r\n.\r\n"].concat());
    assert_eq!(c.read_to_close(), "");
    w.join().unwrap();

    let mut c = Client::greeted(server.addr);
    ehlo(&mut c);
    data_started(&mut c);
    c.send_expect("short\r\n.\r\n", QUEUED);
    c.send(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\n");
    assert_eq!(c.replies(2), format!("{SENDER_OK}{RCPT_OK}"));
    let w = c.send_in_background([&b"BDAT 3000 LAST\r\n"[..], &[b'z'; 3000]].concat());
    assert_eq!(c.read_to_close(), "");
    w.join().unwrap();
    let report = server.stop();
    assert_eq!(report.stats.counters.messages, 1);
}

#[test]
fn end_of_data_and_bdat_refusals_keep_nothing() {
    let server = start_with(|c| {
        c.reply = vec![
            "end:552 5.2.2 Mailbox full".into(),
            "bdat:554 5.6.0 Chunk refused".into(),
        ];
    });
    let mut c = Client::greeted(server.addr);
    ehlo(&mut c);
    data_started(&mut c);
    c.send_expect("hello\r\n.\r\n", "552 5.2.2 Mailbox full\r\n");
    // The chunk is read (RFC 3030 2), refused, and ends the transaction;
    // a chunk pipelined after it is consumed and refused for want of MAIL.
    c.send(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nBDAT 5\r\nhelloBDAT 3 LAST\r\nbye");
    assert_eq!(
        c.replies(4),
        format!(
            "{SENDER_OK}{RCPT_OK}554 5.6.0 Chunk refused\r\n503 5.5.1 Error: need MAIL command\r\n"
        )
    );
    c.send_expect("NOOP\r\n", "250 2.0.0 Ok\r\n");
    let report = server.stop();
    let k = report.stats.counters;
    assert_eq!((k.messages, k.messages_rejected, k.body_bytes), (0, 2, 0));
    assert_eq!(report.sink.messages, 0);
}

#[test]
fn accept_but_drop_answers_250_and_keeps_nothing() {
    let server = start_with(|c| c.drop = Some(1.0));
    let mut c = Client::greeted(server.addr);
    ehlo(&mut c);
    data_started(&mut c);
    c.send_expect("Subject: x\r\n\r\nbody\r\n.\r\n", QUEUED);
    let report = server.stop();
    let k = report.stats.counters;
    assert_eq!((k.messages, k.messages_dropped, k.body_bytes), (0, 1, 0));
    // The sink heard the transaction abandoned, not ended.
    assert_eq!(report.sink.messages, 0);
}

#[test]
fn matchers_client_address_transaction_connection_first_every() {
    let dir = std::env::temp_dir().join(format!("smtpsink-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rules.toml");
    std::fs::write(
        &file,
        r#"
[[rule]]
stage = "rcpt"
client = "127.0.0.2"
reply = "550 5.7.1 Not from .2"
[[rule]]
stage = "rcpt"
address = "*@deny.test"
reply = "550 5.1.1 Denied"
[[rule]]
stage = "mail"
transaction = "2"
reply = "452 4.3.1 Second transaction"
[[rule]]
stage = "helo"
connection = "3"
reply = "554 5.7.1 Third connection"
[[rule]]
stage = "rcpt"
address = "first@*"
first = 2
reply = "451 4.3.0 Twice"
[[rule]]
stage = "rcpt"
address = "every@*"
every = 2
reply = "450 4.2.0 Every other"
[[rule]]
stage = "rcpt"
domain = "*.invalid"
reply = "556 5.1.10 Domain does not accept mail"
[[rule]]
stage = "any"
address = "quiet@*"
close = true
"#,
    )
    .unwrap();
    let server = start_with(|c| c.rules = Some(file.clone()));
    // Connection 1.
    let mut a = Client::connect_from(server.addr, ip("127.0.0.1"));
    assert_eq!(a.replies(1), "220 sink.test ESMTP smtpsink\r\n");
    ehlo(&mut a);
    a.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<ok@ok.test>\r\nRCPT TO:<no@deny.test>\r\n");
    assert_eq!(
        a.replies(3),
        format!("{SENDER_OK}{RCPT_OK}550 5.1.1 Denied\r\n")
    );
    a.send(b"RCPT TO:<first@x>\r\nRCPT TO:<first@x>\r\nRCPT TO:<first@x>\r\n");
    assert_eq!(
        a.replies(3),
        format!("451 4.3.0 Twice\r\n451 4.3.0 Twice\r\n{RCPT_OK}")
    );
    a.send(b"RCPT TO:<every@x>\r\nRCPT TO:<every@x>\r\nRCPT TO:<every@x>\r\nRCPT TO:<every@x>\r\n");
    assert_eq!(
        a.replies(4),
        format!("{RCPT_OK}450 4.2.0 Every other\r\n{RCPT_OK}450 4.2.0 Every other\r\n")
    );
    a.send_expect(
        "RCPT TO:<x@mx.invalid>\r\n",
        "556 5.1.10 Domain does not accept mail\r\n",
    );
    a.send_expect("RCPT TO:<x@invalid.test>\r\n", RCPT_OK);
    a.send_expect("RSET\r\n", "250 2.0.0 Ok\r\n");
    a.send_expect("MAIL FROM:<s@x>\r\n", "452 4.3.1 Second transaction\r\n");
    a.send_expect("MAIL FROM:<s@x>\r\n", SENDER_OK);
    // Connection 2, from another address.
    let mut b = Client::connect_from(server.addr, ip("127.0.0.2"));
    assert_eq!(b.replies(1), "220 sink.test ESMTP smtpsink\r\n");
    ehlo(&mut b);
    b.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<ok@ok.test>\r\n");
    assert_eq!(
        b.replies(2),
        format!("{SENDER_OK}550 5.7.1 Not from .2\r\n")
    );
    // "any" stage: a HELO naming quiet@ hangs up without a reply.
    b.send(b"NOOP\r\nHELO quiet@x\r\n");
    assert_eq!(b.read_to_close(), "250 2.0.0 Ok\r\n");
    // Connection 3.
    let mut c = Client::greeted(server.addr);
    c.send_expect("EHLO c\r\n", "554 5.7.1 Third connection\r\n");
    let report = server.stop();
    std::fs::remove_dir_all(&dir).unwrap();
    let k = report.stats.counters;
    // 250s to RCPT: ok, the third first@, two every@, invalid.test; the
    // refused MAIL is no transaction, the hung-up one neither.
    assert_eq!((k.recipients, k.transactions), (5, 3));
}

#[test]
fn a_probability_gives_exactly_the_seeded_fraction() {
    let server = start_with(|c| {
        c.reply = vec!["rcpt:450 4.2.0 Unlucky:0.25".into()];
        c.seed = Some(4242);
        c.max_recipients = 1000;
    });
    let mut c = Client::greeted(server.addr);
    ehlo(&mut c);
    c.send_expect("MAIL FROM:<s@x>\r\n", SENDER_OK);
    let n = 400;
    let mut cmds = String::new();
    for i in 0..n {
        let _ = write!(cmds, "RCPT TO:<r{i}@x>\r\n");
    }
    c.send(cmds.as_bytes());
    let got = c.replies(n);
    let refused: Vec<bool> = got
        .split_terminator("\r\n")
        .map(|l| l == "450 4.2.0 Unlucky")
        .collect();
    // The first connection's generator, one draw per RCPT.
    let mut rng = session_rng(4242, 1);
    let want: Vec<bool> = (0..n).map(|_| rng.random::<f64>() < 0.25).collect();
    assert_eq!(refused, want);
    let k = refused.iter().filter(|x| **x).count();
    assert!((70..=130).contains(&k), "{k} of {n}");
    let report = server.stop();
    assert_eq!(report.stats.counters.recipients, (n - k) as u64);
}

#[test]
fn a_delay_holds_one_client_while_another_is_served_at_once() {
    let dir = std::env::temp_dir().join(format!("smtpsink-delay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rules.toml");
    std::fs::write(
        &file,
        "[[rule]]\nstage = \"rcpt\"\nclient = \"127.0.0.2\"\ndelay = \"600ms\"\n",
    )
    .unwrap();
    let server = start_with(|c| c.rules = Some(file.clone()));
    let mut slow = Client::connect_from(server.addr, ip("127.0.0.2"));
    assert_eq!(slow.replies(1), "220 sink.test ESMTP smtpsink\r\n");
    ehlo(&mut slow);
    slow.send_expect("MAIL FROM:<s@x>\r\n", SENDER_OK);
    let t0 = Instant::now();
    slow.send(b"RCPT TO:<r@x>\r\n");
    // Meanwhile a whole transaction from another address.
    let mut fast = Client::connect_from(server.addr, ip("127.0.0.1"));
    assert_eq!(fast.replies(1), "220 sink.test ESMTP smtpsink\r\n");
    ehlo(&mut fast);
    fast.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<r@x>\r\nDATA\r\n");
    assert_eq!(fast.replies(3), format!("{SENDER_OK}{RCPT_OK}{GO_AHEAD}"));
    fast.send_expect("x\r\n.\r\n", QUEUED);
    let fast_done = t0.elapsed();
    assert_eq!(slow.replies(1), RCPT_OK);
    let slow_done = t0.elapsed();
    assert!(
        fast_done < Duration::from_millis(400),
        "fast client took {fast_done:?}"
    );
    assert!(
        slow_done >= Duration::from_millis(600) && slow_done < Duration::from_millis(2600),
        "{slow_done:?}"
    );
    drop(server.stop());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rate_limits_refuse_a_burst_past_the_bucket() {
    let server = start_with(|c| {
        c.rate_limit = vec![
            "client-conn=3/h".into(),
            "msg=2/h".into(),
            "rcpt=3/h".into(),
        ];
    });
    let mut greeted = Vec::new();
    let mut refused = 0;
    for _ in 0..5 {
        let mut c = Client::connect(server.addr);
        let r = c.replies(1);
        if r == "220 sink.test ESMTP smtpsink\r\n" {
            greeted.push(c);
        } else {
            assert_eq!(
                r,
                "421 4.7.0 sink.test Error: too many connections, try again later\r\n"
            );
            c.expect_closed();
            refused += 1;
        }
    }
    assert_eq!((greeted.len(), refused), (3, 2));
    // Another address has its own connection bucket.
    let mut other = Client::connect_from(server.addr, ip("127.0.0.3"));
    assert_eq!(other.replies(1), "220 sink.test ESMTP smtpsink\r\n");
    let c = &mut greeted[0];
    ehlo(c);
    c.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nRCPT TO:<d@x>\r\nRSET\r\n");
    assert_eq!(
        c.replies(6),
        format!(
            "{SENDER_OK}{RCPT_OK}{RCPT_OK}{RCPT_OK}451 4.7.1 Error: recipient rate limit exceeded, try again later\r\n250 2.0.0 Ok\r\n"
        )
    );
    c.send(b"MAIL FROM:<s@x>\r\nRSET\r\nMAIL FROM:<s@x>\r\n");
    assert_eq!(
        c.replies(3),
        format!("{SENDER_OK}250 2.0.0 Ok\r\n451 4.7.1 Error: message rate limit exceeded, try again later\r\n")
    );
    drop(server.stop());
}

#[test]
fn throttle_caps_the_read_rate() {
    let server = start_with(|c| c.throttle = Some(40_000));
    let mut c = Client::greeted(server.addr);
    ehlo(&mut c);
    data_started(&mut c);
    let t0 = Instant::now();
    let mut body = vec![b'q'; 100_000];
    body.extend_from_slice(b"\r\n.\r\n");
    let w = c.send_in_background(body);
    assert_eq!(c.replies(1), QUEUED);
    let took = t0.elapsed();
    w.join().unwrap();
    // 100 kB at 40 kB/s: about 2.5 s — the message is slowed while it is
    // sent (a tenth of a second's worth at a time), not paid for after.
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "{took:?}"
    );
    let t1 = Instant::now();
    c.send_expect("NOOP\r\n", "250 2.0.0 Ok\r\n");
    assert!(
        t1.elapsed() < Duration::from_millis(500),
        "{:?}",
        t1.elapsed()
    );
    drop(server.stop());
}

#[test]
fn greylisting_defers_the_first_try_and_passes_the_retry() {
    let server = start_with(|c| c.greylist = Some("1s".into()));
    let mut c = Client::greeted(server.addr);
    ehlo(&mut c);
    c.send_expect("MAIL FROM:<s@x>\r\n", SENDER_OK);
    let grey = "451 4.7.1 Greylisted, please try again later\r\n";
    c.send_expect("RCPT TO:<r@x>\r\n", grey);
    c.send_expect("RCPT TO:<r@x>\r\n", grey);
    // The retry passes once a second has gone by since the first try.
    std::thread::sleep(Duration::from_millis(1100));
    c.send_expect("RCPT TO:<r@x>\r\n", RCPT_OK);
    c.send_expect("RCPT TO:<other@x>\r\n", grey);
    drop(server.stop());
}

#[test]
fn magic_addresses_do_what_they_say() {
    let server = start_with(|c| c.magic_addresses = true);
    let mut c = Client::greeted(server.addr);
    ehlo(&mut c);
    c.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<reject550@x>\r\nRCPT TO:<tempfail452+t@x>\r\nRCPT TO:<ok@x>\r\n");
    assert_eq!(
        c.replies(4),
        format!(
            "{SENDER_OK}550 5.0.0 Refused by magic address reject550\r\n\
             452 4.0.0 Refused by magic address tempfail452\r\n{RCPT_OK}"
        )
    );
    let t0 = Instant::now();
    c.send_expect("RCPT TO:<delay300ms@x>\r\n", RCPT_OK);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    c.send(b"RCPT TO:<datareject554@x>\r\nDATA\r\n");
    assert_eq!(c.replies(2), format!("{RCPT_OK}{GO_AHEAD}"));
    c.send_expect(
        "x\r\n.\r\n",
        "554 5.0.0 Refused by magic address datareject554\r\n",
    );
    c.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<drop@x>\r\nDATA\r\n");
    assert_eq!(c.replies(3), format!("{SENDER_OK}{RCPT_OK}{GO_AHEAD}"));
    c.send_expect("x\r\n.\r\n", QUEUED);
    c.send_expect("MAIL FROM:<s@x>\r\n", SENDER_OK);
    c.send(b"RCPT TO:<disconnect421@x>\r\n");
    assert_eq!(
        c.read_to_close(),
        "421 4.0.0 Closing by magic address disconnect421\r\n"
    );
    let mut d = Client::greeted(server.addr);
    ehlo(&mut d);
    d.send_expect("MAIL FROM:<s@x>\r\n", SENDER_OK);
    d.send(b"RCPT TO:<disconnect@x>\r\n");
    assert_eq!(d.read_to_close(), "");
    let report = server.stop();
    let k = report.stats.counters;
    assert_eq!(
        (k.messages, k.messages_rejected, k.messages_dropped),
        (0, 1, 1)
    );
}

#[test]
fn error_and_message_caps_end_the_session_with_421() {
    let server = start_with(|c| c.max_errors = 3);
    let mut c = Client::greeted(server.addr);
    c.send(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n");
    assert_eq!(
        c.read_to_close(),
        "500 5.5.2 Error: command not recognized\r\n\
         500 5.5.2 Error: command not recognized\r\n\
         500 5.5.2 Error: command not recognized\r\n\
         421 4.7.0 sink.test Error: too many errors, closing transmission channel\r\n"
    );
    drop(server.stop());

    let server = start_with(|c| c.max_messages_per_connection = 2);
    let mut c = Client::greeted(server.addr);
    ehlo(&mut c);
    c.send(b"MAIL FROM:<s@x>\r\nRSET\r\nMAIL FROM:<s@x>\r\nRSET\r\nMAIL FROM:<s@x>\r\nNOOP\r\n");
    assert_eq!(
        c.read_to_close(),
        format!(
            "{SENDER_OK}250 2.0.0 Ok\r\n{SENDER_OK}250 2.0.0 Ok\r\n\
             421 4.7.0 sink.test Error: too many messages in one session, closing transmission channel\r\n"
        )
    );
    drop(server.stop());
}

#[test]
fn exit_after_messages_and_connections_stop_by_themselves() {
    let server = start_with(|c| c.exit_after_messages = Some(2));
    let mut c = Client::greeted(server.addr);
    ehlo(&mut c);
    for _ in 0..2 {
        c.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<r@x>\r\nDATA\r\n");
        assert_eq!(c.replies(3), format!("{SENDER_OK}{RCPT_OK}{GO_AHEAD}"));
        c.send_expect("x\r\n.\r\n", QUEUED);
    }
    // The second message ended the run: a graceful 421 for the session.
    assert_eq!(
        c.read_to_close(),
        "421 4.3.2 sink.test Service shutting down, closing transmission channel\r\n"
    );
    let report = server.join();
    assert_eq!(report.stats.counters.messages, 2);

    let server = start_with(|c| c.exit_after_connections = Some(2));
    let addr = server.addr;
    for _ in 0..2 {
        let mut c = Client::greeted(addr);
        c.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
        c.expect_closed();
    }
    let report = server.join();
    assert_eq!(report.stats.counters.connections, 2);
    // Nobody listens any more.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn rules_file_mistakes_are_one_line_start_up_errors() {
    let dir = std::env::temp_dir().join(format!("smtpsink-badrules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[[rule]]\nstage = \"rcpt\"\nreply = \"650 nope\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smtpsink"))
        .args(["--listen", "127.0.0.1:0", "--rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim_end(),
        format!(
            "smtpsink: {}: line 1, column 1: rule 1: reply \"650 nope\": must start with a code from 200 to 599",
            file.display()
        )
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smtpsink"))
        .args(["--listen", "127.0.0.1:0", "--control", "192.0.2.1:9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn success_replies_replace_the_text_and_a_held_greeting_waits() {
    let server = start_with(|c| {
        c.reply = vec![
            "end:250 2.0.0 Kept by rule".into(),
            "bdat:250 2.0.0 Chunk by rule".into(),
        ];
        c.delay = vec!["connect:300ms".into()];
    });
    let t0 = Instant::now();
    let mut c = Client::connect(server.addr);
    // Sent before the greeting: read only once the greeting went out.
    c.send(b"EHLO client.test\r\n");
    assert_eq!(c.replies(1), "220 sink.test ESMTP smtpsink\r\n");
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(c.replies(1), EHLO);
    data_started(&mut c);
    c.send_expect("x\r\n.\r\n", "250 2.0.0 Kept by rule\r\n");
    c.send(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nBDAT 2\r\nhiBDAT 1 LAST\r\n!");
    assert_eq!(
        c.replies(4),
        format!("{SENDER_OK}{RCPT_OK}250 2.0.0 Chunk by rule\r\n250 2.0.0 Kept by rule\r\n")
    );
    let report = server.stop();
    assert_eq!(report.stats.counters.messages, 2);
    assert_eq!(report.sink.messages, 2);
}
