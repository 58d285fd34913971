//! `--proxy-protocol`: the PROXY header (versions 1 and 2 of `HAProxy`'s) before
//! the greeting, from trusted addresses only; the client it names is the
//! session's client (trace header, per-client limits); anything else is
//! closed unanswered and counted.

mod common;

use common::{Client, DEADLINE};
use smtpsink::config::Config;
use smtpsink::net::tls::{self, rustls, Trust};
use smtpsink::proto::proxy::{header, Version, V2_SIGNATURE};
use smtpsink::reactor::Server;
use smtpsink::sink::Maildir;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const GREETING: &str = "220 sink.test ESMTP smtpsink\r\n";

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// smtpsink with --proxy-protocol storing into a fresh Maildir; the plain
/// and the implicit-TLS address (or, without one, the --listen-proxy one),
/// and the Maildir.
struct Sink {
    plain: SocketAddr,
    tls: SocketAddr,
    dir: PathBuf,
    server: smtpsink::reactor::Background<Maildir>,
}

fn start(name: &str, tune: impl FnOnce(&mut Config)) -> Sink {
    let dir = std::env::temp_dir().join(format!("smtpsink-proxy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = Config::default_for("127.0.0.1:0".parse().unwrap());
    config.hostname = "sink.test".into();
    config.proxy_protocol = true;
    config.listen_tls = vec!["127.0.0.1:0".parse().unwrap()];
    tune(&mut config);
    let opts = common::maildir_options(&dir);
    Maildir::prepare(&opts).unwrap();
    let server = Server::from_config_with(&config, |c| Maildir::start(opts, &c)).expect("bind");
    // The implicit-TLS listener, or else the --listen-proxy one.
    let tls = match server.tls_addrs().first() {
        Some(&t) => t,
        None => server.proxied_addrs()[0],
    };
    let server = server.spawn();
    Sink {
        plain: server.addrs[0],
        tls,
        dir,
        server,
    }
}

impl Sink {
    /// Stops the server; the Received lines of what it stored, sorted.
    fn stop(self) -> (smtpsink::reactor::Report<Maildir>, Vec<String>) {
        let report = self.server.stop().expect("run");
        let mut received = Vec::new();
        for e in std::fs::read_dir(self.dir.join("new")).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            let line = text
                .lines()
                .find(|l| l.starts_with("Received: from "))
                .unwrap();
            received.push(line.to_string());
        }
        received.sort();
        let _ = std::fs::remove_dir_all(&self.dir);
        (report, received)
    }
}

/// Writes `header` one byte at a time (each its own segment), then expects
/// the greeting and stores one message.
fn proxied_message(addr: SocketAddr, header: &[u8], helo: &str) {
    let mut c = Client::connect(addr);
    c.stream.set_nodelay(true).unwrap();
    for b in header {
        c.send(&[*b]);
    }
    assert_eq!(c.replies(1), GREETING);
    c.send_expect(&format!("HELO {helo}\r\n"), "250 sink.test\r\n");
    c.send_expect(
        "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n",
        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n",
    );
    c.send_expect(
        "x\r\n.\r\nQUIT\r\n",
        "250 2.0.0 Ok: queued\r\n221 2.0.0 Bye\r\n",
    );
}

#[test]
fn the_client_a_header_names_is_the_sessions_client_in_both_versions() {
    let sink = start("names", |_| {});
    let dst = sink.plain;
    proxied_message(
        dst,
        &header(Version::V1, a("192.0.2.9:4321"), dst).unwrap(),
        "v1",
    );
    proxied_message(
        dst,
        &header(Version::V2, a("[2001:db8::9]:4321"), a("[::1]:25")).unwrap(),
        "v2",
    );
    // LOCAL (a proxy's own health check): the connection's own end stands.
    let mut local = V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    proxied_message(dst, &local, "local");
    proxied_message(dst, b"PROXY UNKNOWN\r\n", "unknown");
    let (report, received) = sink.stop();
    assert_eq!(
        received,
        [
            "Received: from local ([127.0.0.1])",
            "Received: from unknown ([127.0.0.1])",
            "Received: from v1 ([192.0.2.9])",
            "Received: from v2 ([IPv6:2001:db8::9])",
        ]
    );
    assert_eq!(report.stats.counters.messages, 4);
    assert_eq!(report.stats.counters.proxy_refused, 0);
}

#[test]
fn no_header_a_bad_one_a_late_one_or_an_untrusted_source_is_closed_unanswered() {
    let sink = start("refused", |c| c.proxy_timeout = Duration::from_millis(300));
    // A client that speaks SMTP at once.
    let mut c = Client::connect(sink.plain);
    c.send(b"EHLO client.test\r\n");
    c.expect_closed();
    // A malformed header.
    let mut c = Client::connect(sink.plain);
    c.send(b"PROXY TCP4 192.0.2.1 ::1 1 25\r\n");
    c.expect_closed();
    // Half a header, then nothing: closed at the timeout, not before.
    let mut c = Client::connect(sink.plain);
    c.send(b"PROXY TCP4 192.0.2.1 ");
    let t0 = Instant::now();
    c.expect_closed();
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < DEADLINE,
        "{waited:?}"
    );
    // Half a header, then the end: refused too (a bare connect and close,
    // a health check, is not counted).
    let mut c = Client::connect(sink.plain);
    c.send(b"PROXY TCP4 192.0.2.1 ");
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    c.expect_closed();
    let c = Client::connect(sink.plain);
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let (report, received) = sink.stop();
    assert!(received.is_empty());
    assert_eq!(report.stats.counters.proxy_refused, 4);
    assert_eq!(report.stats.counters.messages, 0);

    // Only trusted sources may speak as a proxy.
    let sink = start("untrusted", |c| {
        c.trusted = vec!["10.0.0.0/8".parse().unwrap()];
    });
    let mut c = Client::connect(sink.plain);
    c.send(&header(Version::V1, a("192.0.2.1:1"), sink.plain).unwrap());
    c.expect_closed();
    let (report, _) = sink.stop();
    assert_eq!(report.stats.counters.proxy_refused, 1);
    assert_eq!(report.stats.counters.connections, 0);
}

#[test]
fn a_session_sent_whole_after_its_header_and_closed_ends_at_once() {
    // The rest of the header comes with a whole session, more than one
    // read buffer of it, and the client's FIN: the event that completes
    // the header is the only one to say the client closed.
    let sink = start("fin", |c| c.timeout = 60);
    let head = header(Version::V1, a("192.0.2.5:1234"), sink.plain).unwrap();
    let mut c = Client::connect(sink.plain);
    c.send(&head[..5]);
    std::thread::sleep(Duration::from_millis(50));
    let mut rest = head[5..].to_vec();
    rest.extend_from_slice(b"HELO fin\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n");
    for _ in 0..2000 {
        rest.extend_from_slice(b"0123456789012345678901234567890123456789012345678\r\n");
    }
    // No QUIT: only the FIN says the client is done.
    rest.extend_from_slice(b".\r\n");
    c.send(&rest);
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let t0 = Instant::now();
    let all = c.read_to_close();
    assert!(t0.elapsed() < DEADLINE, "closed after {:?}", t0.elapsed());
    assert!(all.starts_with(GREETING), "{all}");
    assert!(all.ends_with("250 2.0.0 Ok: queued\r\n"), "{all}");
    let (_, received) = sink.stop();
    assert_eq!(received, ["Received: from fin ([192.0.2.5])"]);
}

#[test]
fn per_client_limits_count_the_client_the_header_names() {
    let sink = start("limits", |c| c.max_connections_per_client = 1);
    let open = |client: &str| {
        let mut c = Client::connect(sink.plain);
        c.send(&header(Version::V2, a(client), sink.plain).unwrap());
        c
    };
    // Two clients behind the one proxy address: both served.
    let mut first = open("192.0.2.1:1000");
    assert_eq!(first.replies(1), GREETING);
    let mut other = open("192.0.2.2:1000");
    assert_eq!(other.replies(1), GREETING);
    // The same client again: over its limit.
    let mut again = open("192.0.2.1:1001");
    assert_eq!(
        again.replies(1),
        "421 4.7.0 sink.test Error: too many connections from your address\r\n"
    );
    for c in [&mut first, &mut other] {
        c.send_expect("QUIT\r\n", "221 2.0.0 Bye\r\n");
    }
    let (report, _) = sink.stop();
    assert_eq!(report.stats.counters.connections_refused, 1);
}

#[test]
fn a_header_before_implicit_tls_then_the_handshake() {
    let sink = start("tls", |_| {});
    let mut sock = TcpStream::connect(sink.tls).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    // The header and the ClientHello in one write: what follows the header
    // is kept for TLS.
    let config = tls::client_config(&Trust::Anyone, false).unwrap();
    let mut conn =
        rustls::ClientConnection::new(config, tls::server_name("sink.test").unwrap()).unwrap();
    let mut first = header(Version::V1, a("198.51.100.4:5555"), sink.tls).unwrap();
    conn.write_tls(&mut first).unwrap();
    sock.write_all(&first).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, sock);
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\r\n") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&got), GREETING);
    stream
        .write_all(
            b"HELO tls\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n",
        )
        .unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(
        String::from_utf8_lossy(&rest).ends_with("221 2.0.0 Bye\r\n"),
        "{rest:?}"
    );
    let (report, received) = sink.stop();
    assert_eq!(received, ["Received: from tls ([198.51.100.4])"]);
    assert_eq!(report.stats.tls.handshakes, 1);
}

/// `--listen-proxy`: one listener expects the header, the others greet at
/// once (a sink behind a load balancer and reachable directly).
#[test]
fn listen_proxy_expects_the_header_on_its_own_listener_only() {
    let sink = start("per-listener", |c| {
        c.proxy_protocol = false;
        c.listen_tls.clear();
        c.listen_proxy = vec![a("127.0.0.1:0")];
    });
    let proxied = sink.tls;
    assert_ne!(proxied, sink.plain);
    // The plain listener greets at once: no header.
    proxied_message(sink.plain, b"", "direct");
    // The proxied one names its client.
    proxied_message(
        proxied,
        &header(Version::V2, a("198.51.100.7:999"), proxied).unwrap(),
        "behind",
    );
    let (report, received) = sink.stop();
    assert_eq!(
        received,
        [
            "Received: from behind ([198.51.100.7])",
            "Received: from direct ([127.0.0.1])",
        ]
    );
    assert_eq!(report.stats.counters.proxy_refused, 0);
}
