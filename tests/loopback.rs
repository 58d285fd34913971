//! Integration tests: the real reactor on an ephemeral loopback port, driven
//! by real clients (lettre, Python's smtplib) and by raw scripted sessions.
//! Every test asserts exact replies and the sink's and server's counts, and
//! every read has a deadline, so a hang fails instead of blocking CI.

mod common;

use common::{start, start_with, Client, DEADLINE, EHLO};
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn lettre_delivers_messages() {
    use lettre::message::header::ContentType;
    use lettre::{Message, SmtpTransport, Transport};
    let server = start();
    let mailer = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(server.addr.port())
        .timeout(Some(DEADLINE))
        .build();
    let body = ".starts with a dot\r\n..two dots\r\nplain line\r\n";
    for i in 0..3 {
        let email = Message::builder()
            .from("Sender <sender@example.test>".parse().unwrap())
            .to("one@example.test".parse().unwrap())
            .to("two@example.test".parse().unwrap())
            .subject(format!("message {i}"))
            .header(ContentType::TEXT_PLAIN)
            .body(body.to_string())
            .unwrap();
        let formatted_len = email.formatted().len() as u64;
        let response = mailer.send(&email).expect("lettre send");
        assert_eq!(response.code().to_string(), "250");
        assert_eq!(response.message().collect::<Vec<_>>(), ["2.0.0 Ok: queued"]);
        assert!(formatted_len > body.len() as u64);
    }
    let report = server.stop();
    assert_eq!(report.sink.messages, 3);
    assert_eq!(report.sink.recipients, 6);
    assert_eq!(report.stats.counters.messages, 3);
    assert_eq!(report.stats.counters.recipients, 6);
    assert_eq!(
        report.stats.replies_by_class()[4] + report.stats.replies_by_class()[5],
        0
    );
    assert_eq!(report.stats.latency.len(), 3);
}

#[test]
fn python_smtplib_delivers_utf8_and_8bit() {
    let Ok(python) = which_python() else {
        eprintln!("python3 not found; CI installs it, skipping locally");
        return;
    };
    let server = start();
    let script = r#"
import smtplib, sys
from email.message import EmailMessage
port = int(sys.argv[1])
with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
    s.ehlo("client.test")
    assert s.has_extn("smtputf8") and s.has_extn("pipelining") and s.has_extn("chunking")
    m = EmailMessage()
    m["From"] = "jörg@bücher.test"
    m["To"] = "δοκιμή@παράδειγμα.test"
    m["Subject"] = "Grüße"
    m.set_content("Straße\n.leading dot\n")
    refused = s.send_message(m, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    assert refused == {}, refused
    code, text = s.noop()
    assert code == 250, (code, text)
    try:
        s.sendmail("a@b.test", ["ü@x.test"], "Subject: x\r\n\r\nhi\r\n")
        raise SystemExit("non-ASCII recipient without SMTPUTF8 was accepted")
    except smtplib.SMTPRecipientsRefused as e:
        assert e.recipients["ü@x.test"][0] == 553, e.recipients
print("ok")
"#;
    let out = std::process::Command::new(python)
        .args(["-c", script, &server.addr.port().to_string()])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    let report = server.stop();
    assert_eq!(report.sink.messages, 1);
    assert_eq!(report.stats.replies_by_class()[5], 1, "exactly the one 553");
}

fn which_python() -> Result<&'static str, ()> {
    for p in ["python3", "python"] {
        if std::process::Command::new(p)
            .arg("--version")
            .output()
            .is_ok()
        {
            return Ok(p);
        }
    }
    Err(())
}

#[test]
fn pipelined_group_is_answered_in_one_write() {
    let server = start();
    let mut c = Client::greeted(server.addr);
    c.send_expect("EHLO client.test\r\n", EHLO);
    c.send_expect(
        "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<e@f.test>\r\nDATA\r\n",
        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n",
    );
    c.send_expect(
        "Subject: t\r\n\r\n..x\r\n.\r\nQUIT\r\n",
        "250 2.0.0 Ok: queued\r\n221 2.0.0 Bye\r\n",
    );
    c.expect_closed();
    let report = server.stop();
    let s = report.stats.counters;
    // greeting, EHLO, the MAIL..DATA group, the end of data + QUIT: 4 writes.
    assert_eq!(s.io.writes, 4, "{s:?}");
    assert_eq!(
        (
            report.sink.messages,
            report.sink.recipients,
            report.sink.bytes
        ),
        (1, 2, 18)
    );
}

#[test]
fn bdat_over_the_wire() {
    let server = start();
    let mut c = Client::greeted(server.addr);
    c.send_expect("EHLO c\r\n", EHLO);
    let chunk = vec![0u8; 100_000];
    let mut wire = b"MAIL FROM:<a@b> BODY=BINARYMIME\r\nRCPT TO:<c@d>\r\nBDAT 100000\r\n".to_vec();
    wire.extend_from_slice(&chunk);
    wire.extend_from_slice(b"BDAT 5 LAST\r\n\r\n.\r\nNOOP\r\n");
    c.send(&wire);
    assert_eq!(
        c.replies(5),
        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 100000 octets received\r\n250 2.0.0 Ok: queued\r\n250 2.0.0 Ok\r\n"
    );
    let report = server.stop();
    assert_eq!((report.sink.messages, report.sink.bytes), (1, 100_005));
}

#[test]
fn smuggling_attempt_stays_in_the_body() {
    let server = start();
    let mut c = Client::greeted(server.addr);
    c.send_expect(
        "HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n",
        "250 sink.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n",
    );
    c.send(b"hi\n.\nMAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nspoof\r\n\r.\r\nx\r\n.\r\nNOOP\r\n");
    assert_eq!(c.replies(2), "250 2.0.0 Ok: queued\r\n250 2.0.0 Ok\r\n");
    let report = server.stop();
    assert_eq!((report.sink.messages, report.sink.recipients), (1, 1));
    assert_eq!(report.stats.counters.transactions, 1);
}

#[test]
fn garbage_long_lines_and_nul_bytes_then_a_new_client() {
    let server = start();
    let mut c = Client::greeted(server.addr);
    c.send(&vec![b'A'; 200_000]);
    c.send(b"\r\nNO\0OP\r\n\xff\xfe\r\nNOOP\n\r\nNOOP\r\n");
    assert_eq!(
        c.replies(5),
        "500 5.5.2 Error: line too long\r\n500 5.5.2 Error: control character in command\r\n\
500 5.5.2 Error: command not recognized\r\n500 5.5.2 Error: bare <LF> received; end lines with <CR><LF>\r\n\
500 5.5.2 Error: command not recognized\r\n"
    );
    c.send_expect("NOOP\r\n", "250 2.0.0 Ok\r\n");
    // Random binary junk, then a hard close: the server must shrug it off.
    let junk: Vec<u8> = (0..50_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
        .collect();
    let mut rude = Client::greeted(server.addr);
    rude.send(&junk);
    drop(rude);
    let mut next = Client::greeted(server.addr);
    next.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    next.expect_closed();
    let report = server.stop();
    assert!(report.stats.counters.connections >= 3);
}

#[test]
fn max_connections_pauses_accepting() {
    let server = start_with(|c| c.max_connections = 1);
    let mut first = Client::greeted(server.addr);
    let mut second = Client::connect(server.addr); // waits in the backlog
    second
        .stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 64];
    let err = second
        .stream
        .read(&mut b)
        .expect_err("no greeting while at the limit");
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err}"
    );
    second.stream.set_read_timeout(Some(DEADLINE)).unwrap();
    first.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    assert_eq!(second.replies(1), "220 sink.test ESMTP smtpsink\r\n");
    let report = server.stop();
    assert_eq!(report.stats.counters.connections, 2);
}

#[test]
fn idle_timeout_sends_421() {
    let server = start_with(|c| c.timeout = 1);
    let mut c = Client::greeted(server.addr);
    let t0 = Instant::now();
    assert_eq!(
        c.replies(1),
        "421 4.4.2 sink.test Error: timeout exceeded, closing transmission channel\r\n"
    );
    assert!(t0.elapsed() >= Duration::from_millis(900));
    c.expect_closed();
    let report = server.stop();
    assert_eq!(report.stats.counters.timeouts, 1);
}

#[test]
fn graceful_shutdown_lets_data_finish() {
    let server = start_with(|c| c.grace = 10);
    let mut idle = Client::greeted(server.addr);
    idle.send_expect("HELO c\r\n", "250 sink.test\r\n");
    let mut busy = Client::greeted(server.addr);
    busy.send_expect(
        "HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n",
        "250 sink.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n",
    );
    busy.send(b"first half\r\n");
    server.handle.request();
    let shutdown = "421 4.3.2 sink.test Service shutting down, closing transmission channel\r\n";
    assert_eq!(idle.replies(1), shutdown);
    idle.expect_closed();
    busy.send(b"second half\r\n.\r\n");
    assert_eq!(
        busy.replies(2),
        format!("250 2.0.0 Ok: queued\r\n{shutdown}")
    );
    busy.expect_closed();
    let addr = server.addr;
    let report = server.join();
    assert_eq!((report.sink.messages, report.sink.bytes), (1, 25));
    // No longer listening.
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn second_shutdown_request_stops_at_once() {
    let server = start_with(|c| c.grace = 60);
    let mut busy = Client::greeted(server.addr);
    busy.send_expect(
        "HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n",
        "250 sink.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n",
    );
    server.handle.request();
    server.handle.request();
    let report = server.join();
    assert_eq!(
        busy.replies(1),
        "421 4.3.2 sink.test Service shutting down, closing transmission channel\r\n"
    );
    assert_eq!(report.sink.messages, 0);
}

#[test]
fn many_clients_interleaved() {
    let server = start();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut c = Client::greeted(addr);
                c.send_expect("EHLO c\r\n", EHLO);
                for i in 0..50 {
                    let msg = format!(
                        "MAIL FROM:<t{t}@x>\r\nRCPT TO:<m{i}@y>\r\nDATA\r\nline {i}\r\n.\r\n"
                    );
                    // Pipelined up to DATA, then the body: 4 replies.
                    c.send_expect(
                        &msg,
                        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued\r\n",
                    );
                }
                c.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let report = server.stop();
    assert_eq!(report.sink.messages, 400);
    assert_eq!(report.stats.counters.messages, 400);
    assert_eq!(report.stats.latency.len(), 400);
}

#[test]
fn ipv6_loopback() {
    let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    };
    drop(probe);
    let server =
        start_with(|c| c.listen = vec!["[::1]:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap()]);
    assert!(server.addr.is_ipv6());
    let mut c = Client::greeted(server.addr);
    c.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    server.stop();
}

#[test]
fn half_closed_client_still_gets_its_replies() {
    let server = start();
    let mut c = Client::greeted(server.addr);
    c.send(b"HELO c\r\nNOOP\r\n");
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(c.replies(2), "250 sink.test\r\n250 2.0.0 Ok\r\n");
    c.expect_closed();
    server.stop();
}

#[test]
fn pipelined_flood_is_answered_in_full() {
    // Far more replies than the output high-water mark: reading must resume
    // once the client has taken them, with no new input event to prompt it.
    let server = start();
    let mut c = Client::greeted(server.addr);
    let mut burst = b"EHLO c\r\n".to_vec();
    burst.extend(b"NOOP\r\n".repeat(100_000));
    burst.extend_from_slice(b"QUIT\r\n");
    let sender = c.send_in_background(burst);
    let mut all = String::new();
    c.stream.read_to_string(&mut all).unwrap();
    sender.join().unwrap();
    assert_eq!(all.matches("250 2.0.0 Ok\r\n").count(), 100_000);
    assert!(
        all.ends_with("250 HELP\r\n250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n")
            || all.ends_with("250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n")
    );
    let report = server.stop();
    assert_eq!(report.stats.replies_by_class()[2], 100_003);
}

#[test]
fn data_and_fin_together_close_promptly() {
    // Each client's last command and its FIN arrive together; the server must
    // notice the FIN, abort the transaction and close, not wait for a timeout.
    let server = start();
    let clients: Vec<Client> = (0..50)
        .map(|_| {
            let mut c = Client::greeted(server.addr);
            c.send(b"HELO c\r\nMAIL FROM:<a@b>\r\n");
            c.stream.shutdown(std::net::Shutdown::Write).unwrap();
            c
        })
        .collect();
    for mut c in clients {
        c.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut rest = String::new();
        c.stream
            .read_to_string(&mut rest)
            .expect("closed by the server, not timed out");
        assert_eq!(rest, "250 sink.test\r\n250 2.1.0 Ok\r\n");
    }
    let report = server.stop();
    assert_eq!(report.stats.counters.transactions, 50);
    assert_eq!(report.stats.counters.timeouts, 0);
}

#[test]
fn long_line_limit_beyond_the_read_buffer() {
    // A partial line may be longer than the 64 KiB read buffer when the limit
    // allows it; it must still be completed and answered.
    let server = start_with(|c| c.max_line_length = 65536);
    let mut c = Client::greeted(server.addr);
    c.send_expect("EHLO c\r\n", EHLO);
    let mail = format!("MAIL FROM:<a@b>{}\r\n", " SIZE=1".repeat(9370)); // 65,607 bytes
    c.send(mail.as_bytes());
    assert_eq!(c.replies(1), "250 2.1.0 Ok\r\n");
    let noop = format!("NOOP {}\r\n", "x".repeat(65531)); // 65,538 bytes: over
    c.send(noop.as_bytes());
    assert_eq!(c.replies(1), "500 5.5.2 Error: line too long\r\n");
    c.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    server.stop();
}

#[test]
fn closing_while_the_client_still_sends_keeps_the_replies() {
    // QUIT followed by junk the server never reads: closing with unread input
    // would reset the connection and could destroy replies still unread.
    let server = start();
    let mut c = Client::greeted(server.addr);
    let mut burst = b"NOOP\r\n".repeat(20_000);
    burst.extend_from_slice(b"QUIT\r\n");
    burst.extend(std::iter::repeat_n(b'j', 1 << 20));
    let sender = c.send_in_background(burst);
    std::thread::sleep(Duration::from_millis(300)); // let the junk pile up unread
    let mut all = Vec::new();
    c.stream
        .read_to_end(&mut all)
        .expect("a clean close, not a reset");
    sender.join().unwrap();
    let text = String::from_utf8(all).unwrap();
    assert_eq!(text.matches("250 2.0.0 Ok\r\n").count(), 20_000);
    assert!(text.ends_with("221 2.0.0 Bye\r\n"));
    server.stop();
}
