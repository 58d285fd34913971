//! Shared test fixtures: an in-process smtpsink, default options, and a
//! scripted fake SMTP server for failure cases.
#![allow(dead_code)]

use smtpload::driver::{self, Options};
use smtpload::payload::{Payload, PayloadSpec};
use smtpload::report::Results;
use smtpsink::config::Config;
use smtpsink::proto::client::ClientSettings;
use smtpsink::reactor::{Background, Report, Server};
use smtpsink::sink::Verify;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// A timed open loop's report checked as accounting: exactly `due` due,
/// and every message that started (due less never started) accepted.
/// What started depends on the generator getting the CPU on time, so it is
/// returned rather than assumed.
pub fn started_of_schedule(report: &str, due: u64) -> u64 {
    let line = report
        .lines()
        .find(|l| l.contains(" due, "))
        .unwrap_or_else(|| panic!("no schedule line: {report}"));
    let (head, tail) = line.split_once(" due, ").unwrap_or_default();
    let count = |t: Option<&str>| t.and_then(|t| t.parse::<u64>().ok());
    let (Some(seen), Some(never)) = (
        count(head.rsplit(' ').next()),
        count(tail.split(' ').next()),
    ) else {
        panic!("unreadable schedule line: {line}");
    };
    assert_eq!(seen, due, "{report}");
    let started = due - never;
    assert!(
        report.contains(&format!("{started} accepted, 0 failed, {started} started")),
        "{report}"
    );
    started
}

/// smtpsink with the verify sink, on an ephemeral loopback port.
pub struct Sink {
    pub addr: SocketAddr,
    server: Background<Verify>,
}

impl Sink {
    pub fn start() -> Self {
        let config = Config::default_for("127.0.0.1:0".parse().unwrap());
        let server = Server::from_config(&config, Verify::default())
            .expect("bind")
            .spawn();
        Self {
            addr: server.addrs[0],
            server,
        }
    }

    pub fn stop(self) -> Report<Verify> {
        self.server.stop().expect("run")
    }
}

pub fn spec() -> PayloadSpec {
    PayloadSpec {
        from: "load{n}@example.test".into(),
        to: "sink{r}@example.test".into(),
        recipients: 2,
        size: 2048,
        message: None,
        chunk: 0,
        run_id: 0x5eed,
    }
}

pub fn options(target: SocketAddr) -> Options {
    Options {
        targets: vec![target.into()],
        connections: 4,
        messages: Some(200),
        duration: None,
        per_connection: 0..=0,
        seed: 1,
        rate: None,
        warmup: Duration::ZERO,
        timeout: Duration::from_secs(10),
        max_errors: None,
        client: ClientSettings {
            helo_name: "load.test".into(),
            ehlo: true,
            pipelining: true,
            bdat: false,
            window: 1,
            auth: None,
            lmtp: false,
        },
        progress: false,
        tls: None,
        start_at: None,
        bind: Vec::new(),
        proxy: None,
        xclient: None,
        lane: smtpload::driver::Lane::default(),
    }
}

pub fn run(opts: &Options, payload: &Payload) -> Results {
    driver::run(opts, payload, None).expect("run")
}

/// What the fake server does.
#[derive(Debug, Clone, Copy)]
pub enum Script {
    /// Answer every RCPT with this code.
    RcptCode(u16),
    /// Answer every end of data with this code.
    FinalCode(u16),
    /// Close the connection after answering MAIL.
    DropAfterMail,
    /// Greet, answer EHLO, then never answer again.
    Stall,
    /// Delay the first final reply by this long, then answer normally.
    StallFirstFinal(Duration),
}

/// A blocking, thread-per-connection SMTP server that follows `script`.
pub fn fake_server(script: Script) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut first = true;
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let stall_final = match script {
                Script::StallFirstFinal(d) if first => Some(d),
                _ => None,
            };
            first = false;
            std::thread::spawn(move || {
                let _ = serve_fake(conn, script, stall_final);
            });
        }
    });
    addr
}

fn serve_fake(
    conn: TcpStream,
    script: Script,
    mut stall_final: Option<Duration>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    w.write_all(b"220 fake ESMTP\r\n")?;
    let mut line = Vec::new();
    while let Some(verb) = next_verb(&mut r, &mut line)? {
        if matches!(script, Script::Stall) && verb != "EHLO" {
            std::thread::sleep(Duration::from_secs(30));
            return Ok(());
        }
        let reply: String = match verb.as_str() {
            "EHLO" => "250-fake\r\n250 PIPELINING\r\n".into(),
            "HELO" | "RSET" | "NOOP" => "250 ok\r\n".into(),
            "MAIL" => {
                w.write_all(b"250 ok\r\n")?;
                if matches!(script, Script::DropAfterMail) {
                    return Ok(());
                }
                continue;
            }
            "RCPT" => match script {
                Script::RcptCode(c) => format!("{c} rcpt refused\r\n"),
                _ => "250 ok\r\n".into(),
            },
            "DATA" if matches!(script, Script::RcptCode(_)) => "554 no valid recipients\r\n".into(),
            "DATA" => {
                w.write_all(b"354 go\r\n")?;
                if !read_content(&mut r, &mut Vec::new())? {
                    return Ok(());
                }
                if let Some(d) = stall_final.take() {
                    std::thread::sleep(d);
                }
                match script {
                    Script::FinalCode(c) => format!("{c} final refused\r\n"),
                    _ => "250 queued\r\n".into(),
                }
            }
            "QUIT" => {
                w.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            _ => "500 what\r\n".into(),
        };
        w.write_all(reply.as_bytes())?;
    }
    Ok(())
}

/// A fake server with exact timing: everything is answered at once, one
/// reply per command as it is read, except what the fields delay. It offers
/// PIPELINING and CHUNKING, takes DATA and BDAT, and reports nothing: the
/// tests compare smtpload's figures with these exact delays.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fake {
    /// Before the 220.
    pub greeting_delay: Duration,
    /// Before the reply to the end of data (DATA's dot, BDAT LAST).
    pub eod_delay: Duration,
    /// A global freeze: from `.0` after the server started, for `.1`, no
    /// connection gets a reply.
    pub freeze: Option<(Duration, Duration)>,
}

impl Fake {
    /// Starts the server; it lives as long as the test process.
    pub fn start(self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let born = std::time::Instant::now();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                std::thread::spawn(move || {
                    let _ = self.serve_tcp(conn, born, None);
                });
            }
        });
        addr
    }

    /// Starts the server on a UNIX socket at `path`; each connection's
    /// transcript (command lines as sent, and `<N bytes>` for each DATA
    /// content with its final dot) is recorded.
    pub fn start_unix(self, path: &std::path::Path) -> Transcripts {
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        let transcripts = Transcripts::default();
        let record = std::sync::Arc::clone(&transcripts);
        let born = std::time::Instant::now();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
                record.lock().unwrap().push(std::sync::Arc::clone(&log));
                std::thread::spawn(move || {
                    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
                    let w = conn.try_clone()?;
                    self.serve(BufReader::new(conn), w, born, Some(&log))
                });
            }
        });
        transcripts
    }

    fn serve_tcp(
        self,
        conn: TcpStream,
        born: std::time::Instant,
        log: Option<&std::sync::Mutex<Vec<String>>>,
    ) -> std::io::Result<()> {
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        conn.set_nodelay(true)?;
        let w = conn.try_clone()?;
        self.serve(BufReader::new(conn), w, born, log)
    }

    /// Writes `reply`, after the freeze if one is on.
    fn reply(
        &self,
        w: &mut impl Write,
        reply: &[u8],
        born: std::time::Instant,
    ) -> std::io::Result<()> {
        if let Some((from, len)) = self.freeze {
            let (start, end) = (born + from, born + from + len);
            let now = std::time::Instant::now();
            if now >= start && now < end {
                std::thread::sleep(end - now);
            }
        }
        w.write_all(reply)
    }

    fn serve(
        self,
        mut r: impl BufRead,
        mut w: impl Write,
        born: std::time::Instant,
        log: Option<&std::sync::Mutex<Vec<String>>>,
    ) -> std::io::Result<()> {
        use std::io::Read;
        let note = |s: String| {
            if let Some(log) = log {
                log.lock().unwrap().push(s);
            }
        };
        std::thread::sleep(self.greeting_delay);
        self.reply(&mut w, b"220 fake ESMTP\r\n", born)?;
        let mut line = Vec::new();
        while let Some(verb) = next_verb(&mut r, &mut line)? {
            note(String::from_utf8_lossy(&line).into_owned());
            let text = String::from_utf8_lossy(&line).to_ascii_uppercase();
            let reply: &[u8] = match verb.as_str() {
                "EHLO" => b"250-fake\r\n250-PIPELINING\r\n250 CHUNKING\r\n",
                "DATA" => {
                    self.reply(&mut w, b"354 go\r\n", born)?;
                    let mut wire = Vec::new();
                    if !read_content(&mut r, &mut wire)? {
                        return Ok(());
                    }
                    note(format!("<{} bytes>", wire.len()));
                    std::thread::sleep(self.eod_delay);
                    b"250 queued\r\n"
                }
                "BDAT" => {
                    let mut words = text.split_whitespace().skip(1);
                    let n: u64 = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                    let last = words.next() == Some("LAST");
                    std::io::copy(&mut (&mut r).take(n), &mut std::io::sink())?;
                    if last {
                        std::thread::sleep(self.eod_delay);
                        b"250 queued\r\n"
                    } else {
                        b"250 chunk\r\n"
                    }
                }
                "QUIT" => {
                    self.reply(&mut w, b"221 bye\r\n", born)?;
                    return Ok(());
                }
                _ => b"250 ok\r\n",
            };
            self.reply(&mut w, reply, born)?;
        }
        Ok(())
    }
}

/// Per connection to [`Fake::start_unix`], in accept order, its transcript.
pub type Transcripts =
    std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<std::sync::Mutex<Vec<String>>>>>>;

/// Who connected to a [`recording_server`], and when (wall clock).
pub type Seen = std::sync::Arc<std::sync::Mutex<Vec<(SocketAddr, std::time::SystemTime)>>>;

/// A [`Fake`] server with no delays that records each connection's peer
/// address and accept time.
pub fn recording_server() -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let record = std::sync::Arc::clone(&seen);
    let born = std::time::Instant::now();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            if let Ok(peer) = conn.peer_addr() {
                record
                    .lock()
                    .unwrap()
                    .push((peer, std::time::SystemTime::now()));
            }
            std::thread::spawn(move || {
                let _ = Fake::default().serve_tcp(conn, born, None);
            });
        }
    });
    (addr, seen)
}

/// PROXY headers a [`proxy_relay`] took off its connections, in order.
pub type Headers = std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// What a proxy-aware server does first: takes a PROXY header (version 1
/// or 2) off each connection and records it, then relays the rest to `to`
/// both ways. A connection without a header is closed.
pub fn proxy_relay(to: SocketAddr) -> (SocketAddr, Headers) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let headers = Headers::default();
    let record = std::sync::Arc::clone(&headers);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let Some(header) = take_proxy_header(&mut conn) else {
                continue;
            };
            record.lock().unwrap().push(header);
            let Ok(mut up) = TcpStream::connect(to) else {
                continue;
            };
            let (mut conn2, mut up2) = (conn.try_clone().unwrap(), up.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut conn2, &mut up2);
                let _ = up2.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut up, &mut conn);
                let _ = conn.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (addr, headers)
}

/// Reads exactly one PROXY header off `conn` (nothing after it).
fn take_proxy_header(conn: &mut TcpStream) -> Option<Vec<u8>> {
    use std::io::Read;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut h = vec![0u8; 16];
    conn.read_exact(&mut h[..6]).ok()?;
    if &h[..6] == b"PROXY " {
        h.truncate(6);
        let mut b = [0u8; 1];
        while !h.ends_with(b"\r\n") && h.len() < 108 {
            conn.read_exact(&mut b).ok()?;
            h.push(b[0]);
        }
    } else {
        conn.read_exact(&mut h[6..16]).ok()?;
        let len = usize::from(u16::from_be_bytes([h[14], h[15]]));
        let mut rest = vec![0u8; len];
        conn.read_exact(&mut rest).ok()?;
        h.extend_from_slice(&rest);
    }
    conn.set_read_timeout(None).ok()?;
    Some(h)
}

/// What a [`relay`] does to the messages it accepts, by sequence number.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Acknowledged, never forwarded.
    pub lose: Vec<u64>,
    /// Forwarded twice.
    pub duplicate: Vec<u64>,
    /// Forwarded with one body byte changed.
    pub corrupt: Vec<u64>,
    /// Forwarded this long after it was acknowledged.
    pub delay: Duration,
}

/// A store-and-forward fake MTA: answers the client itself (250 at the end
/// of data), then forwards each message to `to` over a new SMTP connection
/// on a thread of its own, after `faults.delay`, doing what `faults` says.
pub fn relay(to: SocketAddr, faults: Faults) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let faults = std::sync::Arc::new(faults);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let faults = std::sync::Arc::clone(&faults);
            std::thread::spawn(move || {
                let _ = relay_session(conn, to, &faults);
            });
        }
    });
    addr
}

fn relay_session(
    conn: TcpStream,
    to: SocketAddr,
    faults: &std::sync::Arc<Faults>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    w.write_all(b"220 relay ESMTP\r\n")?;
    let mut line = Vec::new();
    while let Some(verb) = next_verb(&mut r, &mut line)? {
        match verb.as_str() {
            "EHLO" => w.write_all(b"250-relay\r\n250 PIPELINING\r\n")?,
            "DATA" => {
                w.write_all(b"354 go\r\n")?;
                // The message as it came, dot-stuffed, with the final dot.
                let mut wire = Vec::new();
                if !read_content(&mut r, &mut wire)? {
                    return Ok(());
                }
                let text = String::from_utf8_lossy(&wire).into_owned();
                let seq: u64 = text
                    .lines()
                    .find_map(|l| l.strip_prefix("X-Smtpload-Seq: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(u64::MAX);
                w.write_all(b"250 queued\r\n")?;
                if faults.lose.contains(&seq) {
                    continue;
                }
                if faults.corrupt.contains(&seq) {
                    let at = memchr::memmem::find(&wire, b"Lorem").expect("a body to corrupt");
                    wire[at + 1] = b'0';
                }
                let copies = if faults.duplicate.contains(&seq) {
                    2
                } else {
                    1
                };
                let delay = faults.delay;
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    for _ in 0..copies {
                        forward(to, &wire).expect("forward to the sink");
                    }
                });
            }
            "QUIT" => {
                w.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            _ => w.write_all(b"250 ok\r\n")?,
        }
    }
    Ok(())
}

/// Sends one dot-stuffed message (with its final dot) lock-step.
fn forward(to: SocketAddr, wire: &[u8]) -> std::io::Result<()> {
    let conn = TcpStream::connect(to)?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    let mut expect = |code: &str| -> std::io::Result<()> {
        let mut l = String::new();
        loop {
            l.clear();
            r.read_line(&mut l)?;
            if !l.starts_with(code) {
                return Err(std::io::Error::other(format!("wanted {code}, got {l:?}")));
            }
            if l.as_bytes().get(3) == Some(&b' ') {
                return Ok(());
            }
        }
    };
    expect("220")?;
    for (cmd, code) in [
        (&b"EHLO relay.test\r\n"[..], "250"),
        (b"MAIL FROM:<relay@x.test>\r\n", "250"),
        (b"RCPT TO:<sink@y.test>\r\n", "250"),
        (b"DATA\r\n", "354"),
        (wire, "250"),
        (b"QUIT\r\n", "221"),
    ] {
        w.write_all(cmd)?;
        expect(code)?;
    }
    Ok(())
}

/// Reads the next command line into `line`; its verb in upper case (the
/// first four bytes), or `None` at the end of input.
fn next_verb(r: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<Option<String>> {
    line.clear();
    if r.read_until(b'\n', line)? == 0 {
        return Ok(None);
    }
    let verb = String::from_utf8_lossy(&line[..line.len().min(4)]).to_ascii_uppercase();
    Ok(Some(verb))
}

/// Reads DATA content up to and including the final `.CRLF` line into
/// `wire`, as sent (dot-stuffed); false if the input ended first.
fn read_content(r: &mut impl BufRead, wire: &mut Vec<u8>) -> std::io::Result<bool> {
    loop {
        let start = wire.len();
        if r.read_until(b'\n', wire)? == 0 {
            return Ok(false);
        }
        if &wire[start..] == b".\r\n" {
            return Ok(true);
        }
    }
}
