//! STARTTLS (RFC 3207), implicit TLS (RFC 8314) and AUTH (RFC 4954), byte
//! for byte, with a raw client: every rule the RFCs state for a server,
//! the STARTTLS command-injection class (bytes pipelined after STARTTLS are
//! dropped, never executed), hostile handshakes (garbage, a stall), and a
//! bad certificate at start.

mod common;

use common::{reply_boundary, Client, DEADLINE, EHLO};
use smtpsink::config::Config;
use smtpsink::net::tls::{self, rustls, Trust};
use smtpsink::reactor::{Background, Report, Server};
use smtpsink::sink::Discard;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The EHLO block after TLS: no STARTTLS, AUTH offered.
const EHLO_SECURE: &str = "250-sink.test\r\n250-PIPELINING\r\n250-SIZE 67108864\r\n250-8BITMIME\r\n\
250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250-BINARYMIME\r\n250-DSN\r\n250-HELP\r\n\
250 AUTH PLAIN LOGIN\r\n";

struct Sink {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    server: Background<Discard>,
}

fn start(tune: impl FnOnce(&mut Config)) -> Sink {
    let mut config = Config::default_for("127.0.0.1:0".parse().unwrap());
    config.hostname = "sink.test".into();
    config.listen_tls = vec!["127.0.0.1:0".parse().unwrap()];
    tune(&mut config);
    let server = Server::from_config(&config, Discard::default()).expect("bind");
    let tls_addr = server.tls_addrs().first().copied();
    let server = server.spawn();
    Sink {
        addr: server.addrs[0],
        tls_addr,
        server,
    }
}

impl Sink {
    fn stop(self) -> Report<Discard> {
        self.server.stop().expect("run")
    }
}

/// A client over TLS: the plaintext reply reader of `Client`, on rustls.
struct TlsClient {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

fn client_conn() -> rustls::ClientConnection {
    let config = tls::client_config(&Trust::Anyone, false).expect("client config");
    rustls::ClientConnection::new(config, tls::server_name("sink.test").unwrap()).expect("conn")
}

impl TlsClient {
    /// Secures `sock` (after a 220 to STARTTLS, or at once).
    fn over(sock: TcpStream) -> Self {
        sock.set_read_timeout(Some(DEADLINE)).unwrap();
        Self {
            stream: rustls::StreamOwned::new(client_conn(), sock),
            buf: Vec::new(),
        }
    }

    /// Connects to an implicit-TLS port.
    fn connect(addr: SocketAddr) -> Self {
        Self::over(TcpStream::connect(addr).expect("connect"))
    }

    fn send(&mut self, bytes: &str) {
        self.stream.write_all(bytes.as_bytes()).expect("write");
        self.stream.flush().expect("flush");
    }

    fn replies(&mut self, n: usize) -> String {
        let mut chunk = [0u8; 16384];
        loop {
            if let Some(end) = reply_boundary(&self.buf, n) {
                let text: Vec<u8> = self.buf.drain(..end).collect();
                return String::from_utf8(text).expect("utf-8");
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("closed; have {:?}", String::from_utf8_lossy(&self.buf)),
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) => panic!("read: {e}; have {:?}", String::from_utf8_lossy(&self.buf)),
            }
        }
    }

    fn send_expect(&mut self, bytes: &str, want: &str) {
        self.send(bytes);
        let n = want
            .split_terminator("\r\n")
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .count();
        assert_eq!(self.replies(n), want, "after sending {bytes:?}");
    }
}

/// Greeted, EHLO, STARTTLS: the client now speaks TLS (the handshake runs
/// with the first write).
fn starttls(addr: SocketAddr) -> TlsClient {
    let mut c = Client::greeted(addr);
    c.send_expect("EHLO c.test\r\n", EHLO);
    c.send_expect("STARTTLS\r\n", "220 2.0.0 Ready to start TLS\r\n");
    TlsClient::over(c.stream)
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn starttls_resets_the_session_and_offers_auth_instead() {
    let sink = start(|_| {});
    let mut t = starttls(sink.addr);
    // RFC 3207 4.2: nothing from before (the EHLO) counts.
    t.send_expect(
        "MAIL FROM:<a@b.test>\r\n",
        "503 5.5.1 Error: send HELO/EHLO first\r\n",
    );
    t.send_expect("EHLO c.test\r\n", EHLO_SECURE);
    t.send_expect("STARTTLS\r\n", "503 5.5.1 Error: TLS already active\r\n");
    t.send_expect(
        "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n",
        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n",
    );
    t.send_expect(
        "x\r\n.\r\nQUIT\r\n",
        "250 2.0.0 Ok: queued\r\n221 2.0.0 Bye\r\n",
    );
    let report = sink.stop();
    let tls = &report.stats.tls;
    assert_eq!(report.stats.counters.messages, 1);
    assert_eq!((tls.handshakes, tls.resumed), (1, 0));
    assert_eq!(tls.versions.get("TLSv1.3"), Some(&1));
    assert!(tls.failures.is_empty(), "{:?}", tls.failures);
    assert_eq!(tls.latency.len(), 1);
}

#[test]
fn starttls_syntax_sequence_and_unavailability() {
    let sink = start(|_| {});
    let mut c = Client::greeted(sink.addr);
    c.send_expect("EHLO c.test\r\n", EHLO);
    c.send_expect("STARTTLS now\r\n", "501 5.5.4 Syntax: STARTTLS\r\n");
    c.send_expect(
        "MAIL FROM:<a@b.test>\r\nSTARTTLS\r\nRSET\r\n",
        "250 2.1.0 Ok\r\n503 5.5.1 Error: MAIL transaction in progress\r\n250 2.0.0 Ok\r\n",
    );
    drop(c);
    sink.stop();

    let sink = start(|c| {
        c.no_tls = true;
        c.listen_tls.clear();
    });
    let mut c = Client::greeted(sink.addr);
    let plain = EHLO.replace("250-HELP\r\n250 STARTTLS\r\n", "250 HELP\r\n");
    c.send_expect("EHLO c.test\r\n", &plain);
    c.send_expect(
        "STARTTLS\r\n",
        "454 4.7.0 TLS not available due to temporary reason\r\n",
    );
    c.send_expect("NOOP\r\n", "250 2.0.0 Ok\r\n");
    drop(c);
    sink.stop();
}

#[test]
fn commands_pipelined_after_starttls_are_dropped_unread() {
    // CVE-2011-0411's class: an attacker in the middle appends commands to
    // the client's STARTTLS; executed after the handshake, they would act
    // with the client's authority.
    let sink = start(|_| {});
    let mut c = Client::greeted(sink.addr);
    c.send_expect("EHLO c.test\r\n", EHLO);
    c.send(b"STARTTLS\r\nEHLO evil\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<v@x.test>\r\n");
    assert_eq!(c.replies(1), "220 2.0.0 Ready to start TLS\r\n");
    let mut t = TlsClient::over(c.stream);
    // Had the injected EHLO run, MAIL would be accepted here.
    t.send_expect(
        "MAIL FROM:<a@b.test>\r\n",
        "503 5.5.1 Error: send HELO/EHLO first\r\n",
    );
    t.send_expect("EHLO c.test\r\n", EHLO_SECURE);
    // Had the injected MAIL run, RCPT would be accepted here.
    t.send_expect(
        "RCPT TO:<v@x.test>\r\n",
        "503 5.5.1 Error: need MAIL command\r\n",
    );
    t.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    let report = sink.stop();
    assert_eq!(report.stats.counters.transactions, 0);
    assert_eq!(report.stats.tls.handshakes, 1);
}

#[test]
fn require_tls_refuses_mail_in_plaintext() {
    let sink = start(|c| c.require_tls = true);
    let mut c = Client::greeted(sink.addr);
    c.send_expect("EHLO c.test\r\n", EHLO);
    c.send_expect(
        "MAIL FROM:<a@b.test>\r\n",
        "530 5.7.0 Must issue a STARTTLS command first\r\n",
    );
    c.send_expect("STARTTLS\r\n", "220 2.0.0 Ready to start TLS\r\n");
    let mut t = TlsClient::over(c.stream);
    t.send_expect("EHLO c.test\r\n", EHLO_SECURE);
    t.send_expect("MAIL FROM:<a@b.test>\r\n", "250 2.1.0 Ok\r\n");
    drop(t);
    sink.stop();
}

#[test]
fn auth_plain_login_cancel_and_sequence() {
    let dir = std::env::temp_dir().join(format!("smtpsink-tls-users-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let users = dir.join("users");
    std::fs::write(&users, "# test users\nalice:s3cret\n").unwrap();
    let sink = start(|c| c.auth_users = Some(users.clone()));

    // Before TLS AUTH is not offered: 538, and no AUTH= on MAIL.
    let mut c = Client::greeted(sink.addr);
    c.send_expect("EHLO c.test\r\n", EHLO);
    c.send_expect(
        "AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n",
        "538 5.7.11 Encryption required for requested authentication mechanism\r\n",
    );
    c.send_expect(
        "MAIL FROM:<a@b.test> AUTH=<>\r\n",
        "555 5.5.4 Error: unsupported MAIL parameter\r\n",
    );
    drop(c);

    let mut t = starttls(sink.addr);
    t.send_expect("EHLO c.test\r\n", EHLO_SECURE);
    // PLAIN without an initial response: an empty 334, then the response.
    t.send_expect("AUTH PLAIN\r\n", "334 \r\n");
    t.send_expect(
        &format!("{}\r\n", b64("\0alice\0wrong")),
        "535 5.7.8 Error: authentication failed: credentials invalid\r\n",
    );
    // "*" cancels (RFC 4954 4).
    t.send_expect("AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n");
    t.send_expect("*\r\n", "501 5.7.0 Error: authentication cancelled\r\n");
    // Not base64.
    t.send_expect("AUTH PLAIN\r\n", "334 \r\n");
    t.send_expect(
        "!!!\r\n",
        "501 5.5.2 Error: cannot decode authentication response\r\n",
    );
    t.send_expect(
        "AUTH CRAM-MD5\r\n",
        "504 5.5.4 Error: unrecognized authentication mechanism\r\n",
    );
    t.send_expect(
        "AUTH\r\n",
        "501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n",
    );
    // LOGIN with the user name as initial response, then the password.
    t.send_expect(
        &format!("AUTH LOGIN {}\r\n", b64("alice")),
        "334 UGFzc3dvcmQ6\r\n",
    );
    t.send_expect(
        &format!("{}\r\n", b64("s3cret")),
        "235 2.7.0 Authentication successful\r\n",
    );
    t.send_expect(
        "AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n",
        "503 5.5.1 Error: already authenticated\r\n",
    );
    t.send_expect("MAIL FROM:<a@b.test> AUTH=<>\r\n", "250 2.1.0 Ok\r\n");
    t.send_expect(
        "AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n",
        "503 5.5.1 Error: MAIL transaction in progress\r\n",
    );
    t.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    drop(t);

    // PLAIN with an initial response on a fresh TLS session.
    let mut t = starttls(sink.addr);
    t.send_expect("EHLO c.test\r\n", EHLO_SECURE);
    t.send_expect(
        &format!("AUTH PLAIN {}\r\n", b64("\0alice\0s3cret")),
        "235 2.7.0 Authentication successful\r\n",
    );
    t.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    drop(t);
    let report = sink.stop();
    assert_eq!(report.stats.auth(), (2, 1));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn auth_in_plaintext_when_allowed_and_any_credentials_by_default() {
    let sink = start(|c| c.auth_plaintext = true);
    let mut c = Client::greeted(sink.addr);
    let both = EHLO.replace(
        "250 STARTTLS\r\n",
        "250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n",
    );
    c.send_expect("EHLO c.test\r\n", &both);
    c.send_expect(
        &format!("AUTH PLAIN {}\r\n", b64("\0anyone\0anything")),
        "235 2.7.0 Authentication successful\r\n",
    );
    drop(c);
    assert_eq!(sink.stop().stats.auth(), (1, 0));
}

#[test]
fn implicit_tls_serves_greets_and_counts() {
    let sink = start(|_| {});
    let mut t = TlsClient::connect(sink.tls_addr.unwrap());
    assert_eq!(t.replies(1), "220 sink.test ESMTP smtpsink\r\n");
    t.send_expect("EHLO c.test\r\n", EHLO_SECURE);
    t.send_expect(
        "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n",
        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n",
    );
    t.send_expect(
        "x\r\n.\r\nQUIT\r\n",
        "250 2.0.0 Ok: queued\r\n221 2.0.0 Bye\r\n",
    );
    let report = sink.stop();
    assert_eq!(report.stats.counters.messages, 1);
    assert_eq!(report.stats.tls.handshakes, 1);
}

#[test]
fn garbage_instead_of_a_handshake_closes_cleanly_and_others_are_served() {
    let sink = start(|_| {});
    let tls_addr = sink.tls_addr.unwrap();
    let mut s = TcpStream::connect(tls_addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    // A plaintext client on the TLS port.
    s.write_all(b"EHLO plaintext.test\r\n").unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    // Whatever came back (a TLS alert record at most) is not SMTP.
    assert!(!got.starts_with(b"220"), "{got:?}");
    // The next client is served.
    let mut t = TlsClient::connect(tls_addr);
    assert_eq!(t.replies(1), "220 sink.test ESMTP smtpsink\r\n");
    t.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    drop(t);
    // STARTTLS followed by garbage: the same.
    let mut c = Client::greeted(sink.addr);
    c.send_expect("EHLO c.test\r\n", EHLO);
    c.send_expect("STARTTLS\r\n", "220 2.0.0 Ready to start TLS\r\n");
    c.send(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]);
    let rest = c.read_to_close();
    assert!(!rest.contains("250"), "{rest:?}");
    let report = sink.stop();
    assert_eq!(report.stats.tls.handshakes, 1);
    let failed: u64 = report.stats.tls.failures.values().sum();
    assert_eq!(failed, 2, "{:?}", report.stats.tls.failures);
    assert_eq!(report.stats.tls.failures.get("not_tls"), Some(&2));
}

#[test]
fn a_client_that_stalls_mid_handshake_is_timed_out() {
    let sink = start(|c| c.timeout = 1);
    let tls_addr = sink.tls_addr.unwrap();
    let mut s = TcpStream::connect(tls_addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    // Half a ClientHello record header, then nothing.
    s.write_all(&[0x16, 0x03, 0x01]).unwrap();
    let t0 = Instant::now();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    assert!(!got.starts_with(b"220"), "{got:?}");
    let report = sink.stop();
    assert_eq!(report.stats.counters.timeouts, 1);
    assert_eq!(report.stats.tls.failures.get("abandoned"), Some(&1));
}

#[test]
fn a_refused_implicit_tls_connection_is_closed_at_once_not_at_the_timeout() {
    // The refusal (421) is written before any handshake byte came, so it
    // can never be encrypted unless the client finishes a handshake: the
    // close must not wait for it.
    let sink = start(|c| {
        c.timeout = 60;
        c.max_connections_per_client = 1;
    });
    let tls_addr = sink.tls_addr.unwrap();
    let mut first = TlsClient::connect(tls_addr);
    assert_eq!(first.replies(1), "220 sink.test ESMTP smtpsink\r\n");
    let mut s = TcpStream::connect(tls_addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let t0 = Instant::now();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let waited = t0.elapsed();
    assert!(waited < Duration::from_secs(5), "closed after {waited:?}");
    assert!(got.is_empty(), "{got:?}");
    first.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    let report = sink.stop();
    assert_eq!(report.stats.counters.connections_refused, 1);
    assert_eq!(report.stats.tls.handshakes, 1);
}

#[test]
fn resumption_by_ticket_is_counted() {
    let sink = start(|_| {});
    let config = tls::client_config(&Trust::Anyone, true).unwrap();
    for _ in 0..2 {
        let sock = TcpStream::connect(sink.tls_addr.unwrap()).unwrap();
        sock.set_read_timeout(Some(DEADLINE)).unwrap();
        let conn = rustls::ClientConnection::new(
            Arc::clone(&config),
            tls::server_name("sink.test").unwrap(),
        )
        .unwrap();
        let mut t = TlsClient {
            stream: rustls::StreamOwned::new(conn, sock),
            buf: Vec::new(),
        };
        assert_eq!(t.replies(1), "220 sink.test ESMTP smtpsink\r\n");
        t.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    }
    let report = sink.stop();
    assert_eq!(
        (report.stats.tls.handshakes, report.stats.tls.resumed),
        (2, 1)
    );
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_one_line_and_exit_1() {
    let dir = std::env::temp_dir().join(format!("smtpsink-tls-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, _) = tls::self_signed_pem("one.test").unwrap();
    let (_, other_key) = tls::self_signed_pem("two.test").unwrap();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), other_key).unwrap();
    let run = |cert: &str| {
        Command::new(env!("CARGO_BIN_EXE_smtpsink"))
            .args(["--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(dir.join(cert))
            .arg("--tls-key")
            .arg(dir.join("key.pem"))
            .output()
            .unwrap()
    };
    let out = run("cert.pem");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "smtpsink: the key does not match the certificate\n"
    );
    let out = run("missing.pem");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "smtpsink: cannot read {}: no such file or directory\n",
            dir.join("missing.pem").display()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn stored_mail_says_esmtps_and_esmtpsa() {
    use smtpsink::sink::Maildir;
    let dir = std::env::temp_dir().join(format!("smtpsink-tls-maildir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = Config::default_for("127.0.0.1:0".parse().unwrap());
    config.hostname = "sink.test".into();
    let opts = common::maildir_options(&dir);
    Maildir::prepare(&opts).unwrap();
    let server = Server::from_config_with(&config, |c| Maildir::start(opts, &c))
        .expect("bind")
        .spawn();
    let send = |t: &mut TlsClient, from: &str| {
        t.send_expect(
            &format!("MAIL FROM:<{from}>\r\nRCPT TO:<r@x.test>\r\nDATA\r\n"),
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n",
        );
        t.send_expect("Subject: t\r\n\r\nx\r\n.\r\n", "250 2.0.0 Ok: queued\r\n");
    };
    let mut t = starttls(server.addrs[0]);
    t.send_expect("EHLO c.test\r\n", EHLO_SECURE);
    send(&mut t, "secure@x.test");
    t.send_expect(
        &format!("AUTH PLAIN {}\r\n", b64("\0u\0p")),
        "235 2.7.0 Authentication successful\r\n",
    );
    send(&mut t, "authed@x.test");
    t.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    server.stop().expect("run");
    let mut withs = Vec::new();
    for e in std::fs::read_dir(dir.join("new")).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        let from = if text.contains("authed@x.test") {
            "authed"
        } else {
            "secure"
        };
        let with = text
            .split_whitespace()
            .skip_while(|w| *w != "with")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        withs.push((from, with));
    }
    withs.sort();
    assert_eq!(
        withs,
        [
            ("authed", "ESMTPSA".to_string()),
            ("secure", "ESMTPS".to_string())
        ]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
