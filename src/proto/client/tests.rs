//! The client session against the real server session, in memory, in every
//! mode; and against scripted replies for the failure paths.

use super::*;
use crate::proto::dot;
use crate::proto::server::{Ctx, Session, Settings};
use crate::sink::Discard;
use crate::stats::Stats;

/// A fixed message: 2 recipients, a body with lines that need stuffing.
struct Fixed {
    rcpts: u32,
    body: Vec<u8>,
    chunk: usize,
}

impl Fixed {
    fn new(rcpts: u32, chunk: usize) -> Self {
        Self {
            rcpts,
            body: b"Subject: t\r\n\r\n.dot line\r\nplain\r\n..two\r\n".to_vec(),
            chunk,
        }
    }
}

impl MessageSource for Fixed {
    fn recipients(&self) -> u32 {
        self.rcpts
    }
    fn chunks(&self) -> u32 {
        u32::try_from(self.body.len().div_ceil(self.chunk)).unwrap()
    }
    fn mail(&self, seq: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("MAIL FROM:<s{seq}@x.test>\r\n").as_bytes());
    }
    fn rcpt(&self, _seq: u64, i: u32, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("RCPT TO:<r{i}@y.test>\r\n").as_bytes());
    }
    fn data(&self, _seq: u64, _handed: Instant, out: &mut Vec<u8>) {
        dot::stuff(&self.body, out);
    }
    fn bdat(&self, _seq: u64, i: u32, _handed: Instant, out: &mut Vec<u8>) {
        let start = i as usize * self.chunk;
        let end = (start + self.chunk).min(self.body.len());
        let last = if i + 1 == self.chunks() { " LAST" } else { "" };
        out.extend_from_slice(format!("BDAT {}{last}\r\n", end - start).as_bytes());
        out.extend_from_slice(&self.body[start..end]);
    }
}

fn settings(ehlo: bool, pipelining: bool, bdat: bool, window: usize) -> ClientSettings {
    ClientSettings {
        helo_name: "client.test".into(),
        ehlo,
        pipelining,
        bdat,
        window,
        auth: None,
        lmtp: false,
    }
}

struct Run {
    events: Vec<Event>,
    sink: Discard,
    server_reads: usize,
}

/// Sends `n` messages over one in-memory connection and QUITs. Each loop
/// turn delivers everything written so far, as a socket pair would.
fn run(cs: &ClientSettings, src: &Fixed, n: u64) -> Run {
    let ss = Settings::new("server.test", 1 << 20, 100, 512);
    let t = Instant::now();
    let server = Session::new(1, "127.0.0.1:1".parse().unwrap(), t);
    run_on(cs, src, n, &ss, server, ClientSession::new(t))
}

/// As `run`, with this server session and client session.
fn run_on(
    cs: &ClientSettings,
    src: &Fixed,
    n: u64,
    ss: &Settings,
    mut server: Session,
    mut client: ClientSession,
) -> Run {
    let ss = ss.clone();
    let t = Instant::now();
    let (mut sink, mut stats) = (Discard::default(), Stats::new());
    let (mut to_client, mut to_server) = (Vec::new(), Vec::new());
    let mut events = Vec::new();
    let mut cx = Ctx::new(&mut to_client, &mut sink, &mut stats, t);
    server.start(&ss, &mut cx);
    let mut next = 0;
    let mut server_reads = 0;
    for _ in 0..10_000 {
        let used = client.on_input(cs, src, &to_client, t, &mut to_server, &mut events);
        to_client.drain(..used);
        while next < n && client.can_start(cs) {
            client.start(cs, src, next, None, t, &mut to_server);
            next += 1;
        }
        if next == n && client.is_idle() {
            client.quit(src, t, &mut to_server);
        }
        if !to_server.is_empty() {
            server_reads += 1;
            let mut cx = Ctx::new(&mut to_client, &mut sink, &mut stats, t);
            let used = server.handle_input(&ss, &to_server, &mut cx);
            to_server.drain(..used);
        }
        if client.is_closed() {
            break;
        }
    }
    assert!(client.is_closed(), "the run ends with QUIT");
    Run {
        events,
        sink,
        server_reads,
    }
}

fn done(events: &[Event]) -> (usize, usize) {
    let ok = events
        .iter()
        .filter(|e| matches!(e, Event::Done { ok: true, .. }))
        .count();
    let failed = events
        .iter()
        .filter(|e| matches!(e, Event::Done { ok: false, .. }))
        .count();
    (ok, failed)
}

#[test]
fn every_mode_delivers_every_message() {
    let src = Fixed::new(2, 7);
    let body_len = src.body.len() as u64; // what the sink gets back, unstuffed
    for (name, cs, max_reads) in [
        ("helo lock-step", settings(false, true, false, 1), 60),
        ("ehlo lock-step", settings(true, false, false, 1), 60),
        ("pipelined data", settings(true, true, false, 1), 25),
        ("lock-step bdat", settings(true, false, true, 1), 120),
        ("bdat window 4", settings(true, true, true, 4), 10),
    ] {
        let r = run(&cs, &src, 10);
        assert_eq!(done(&r.events), (10, 0), "{name}: {:?}", r.events);
        assert_eq!(r.sink.messages, 10, "{name}");
        assert_eq!(r.sink.recipients, 20, "{name}");
        assert_eq!(r.sink.bytes, 10 * body_len, "{name}");
        assert!(
            !r.events.iter().any(|e| matches!(e, Event::Error { .. })),
            "{name}"
        );
        assert!(
            r.server_reads <= max_reads,
            "{name}: {} server reads",
            r.server_reads
        );
        let phases: Vec<Phase> = r
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Latency(p, _) => Some(*p),
                _ => None,
            })
            .collect();
        assert_eq!(
            phases.iter().filter(|p| **p == Phase::Envelope).count(),
            10,
            "{name}"
        );
        assert_eq!(
            phases.iter().filter(|p| **p == Phase::Data).count(),
            10,
            "{name}"
        );
    }
}

/// Feeds scripted server replies; returns what the client wrote and its events.
fn scripted(cs: &ClientSettings, src: &Fixed, replies: &[&str]) -> (String, Vec<Event>) {
    let t = Instant::now();
    let mut c = ClientSession::new(t);
    let mut out = Vec::new();
    let mut events = Vec::new();
    let mut started = false;
    for r in replies {
        c.on_input(cs, src, r.as_bytes(), t, &mut out, &mut events);
        if !started && c.can_start(cs) {
            c.start(cs, src, 0, None, t, &mut out);
            started = true;
        }
    }
    (String::from_utf8(out).unwrap(), events)
}

fn errors(events: &[Event]) -> Vec<(Stage, u16)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Error { stage, code } => Some((*stage, *code)),
            _ => None,
        })
        .collect()
}

#[test]
fn lockstep_refusals_skip_the_rest_and_reset() {
    let src = Fixed::new(2, 100);
    let cs = settings(true, false, false, 1);
    // Both recipients refused: no DATA, an RSET instead.
    let (out, ev) = scripted(
        &cs,
        &src,
        &[
            "220 hi\r\n",
            "250 ok\r\n",
            "250 ok\r\n",
            "550 no\r\n",
            "451 later\r\n",
            "250 reset\r\n",
        ],
    );
    assert_eq!(
        out,
        "EHLO client.test\r\nMAIL FROM:<s0@x.test>\r\nRCPT TO:<r0@y.test>\r\nRCPT TO:<r1@y.test>\r\nRSET\r\n"
    );
    assert_eq!(errors(&ev), [(Stage::Rcpt, 550), (Stage::Rcpt, 451)]);
    assert_eq!(done(&ev), (0, 1));
    // MAIL refused: nothing else for that message.
    let (out, ev) = scripted(&cs, &src, &["220 hi\r\n", "250 ok\r\n", "553 bad\r\n"]);
    assert_eq!(out, "EHLO client.test\r\nMAIL FROM:<s0@x.test>\r\n");
    assert_eq!(errors(&ev), [(Stage::Mail, 553)]);
    assert_eq!(done(&ev), (0, 1));
}

#[test]
fn pipelined_data_refusal_and_final_refusal() {
    let src = Fixed::new(1, 100);
    let cs = settings(true, true, false, 1);
    let ehlo = "250-srv\r\n250 PIPELINING\r\n";
    let (out, ev) = scripted(
        &cs,
        &src,
        &[
            "220 hi\r\n",
            ehlo,
            "250 a\r\n250 b\r\n554 no valid rcpt\r\n",
            "250 reset\r\n",
        ],
    );
    assert_eq!(
        out,
        "EHLO client.test\r\nMAIL FROM:<s0@x.test>\r\nRCPT TO:<r0@y.test>\r\nDATA\r\nRSET\r\n"
    );
    assert_eq!(errors(&ev), [(Stage::Data, 554)]);
    assert_eq!(done(&ev), (0, 1));
    let (_, ev) = scripted(
        &cs,
        &src,
        &[
            "220 hi\r\n",
            ehlo,
            "250 a\r\n250 b\r\n354 go\r\n",
            "552 too big\r\n",
        ],
    );
    assert_eq!(errors(&ev), [(Stage::EndOfData, 552)]);
    assert_eq!(done(&ev), (0, 1));
}

#[test]
fn server_421_and_garbage_close_the_session() {
    let src = Fixed::new(1, 100);
    let cs = settings(true, false, false, 1);
    let (_, ev) = scripted(&cs, &src, &["220 hi\r\n", "250 ok\r\n", "421 bye\r\n"]);
    assert_eq!(errors(&ev), [(Stage::Mail, 421)]);
    assert_eq!(done(&ev), (0, 1));
    let (_, ev) = scripted(&cs, &src, &["220 hi\r\n", "250 ok\r\n", "HTTP/1.1 400\r\n"]);
    assert_eq!(errors(&ev), [(Stage::Protocol, 0)]);
    let (_, ev) = scripted(&cs, &src, &["554 go away\r\n"]);
    assert_eq!(errors(&ev), [(Stage::Greeting, 554)]);
}

/// A session greeted by a server that offers PIPELINING only.
fn greeted_with_pipelining(cs: &ClientSettings, src: &Fixed) -> (ClientSession, Instant) {
    let t = Instant::now();
    let mut c = ClientSession::new(t);
    let greeting = b"220 hi\r\n250-srv\r\n250 PIPELINING\r\n";
    c.on_input(cs, src, greeting, t, &mut Vec::new(), &mut Vec::new());
    (c, t)
}

#[test]
fn bdat_needs_chunking() {
    let src = Fixed::new(1, 100);
    let cs = settings(true, true, true, 4);
    let (c, _) = greeted_with_pipelining(&cs, &src);
    assert!(!c.can_start(&cs));
    assert!(c.lacks_chunking(&cs));
}

#[test]
fn pipelined_data_sends_the_next_envelope_with_the_end_of_data() {
    let src = Fixed::new(1, 100);
    let cs = settings(true, true, false, 1);
    let (mut c, t) = greeted_with_pipelining(&cs, &src);
    let (mut out, mut ev) = (Vec::new(), Vec::new());
    out.clear();
    c.start(&cs, &src, 0, None, t, &mut out);
    c.start(&cs, &src, 1, None, t, &mut out);
    assert!(
        !c.can_start(&cs),
        "two in flight: one in data, one envelope"
    );
    assert_eq!(
        out,
        b"MAIL FROM:<s0@x.test>\r\nRCPT TO:<r0@y.test>\r\nDATA\r\n"
    );
    out.clear();
    c.on_input(
        &cs,
        &src,
        b"250 a\r\n250 b\r\n354 go\r\n",
        t,
        &mut out,
        &mut ev,
    );
    let mut want = Vec::new();
    dot::stuff(&src.body, &mut want);
    want.extend_from_slice(b"MAIL FROM:<s1@x.test>\r\nRCPT TO:<r0@y.test>\r\nDATA\r\n");
    assert_eq!(out, want, "one write: body, dot, next group (RFC 2920 3.1)");
    out.clear();
    c.on_input(
        &cs,
        &src,
        b"250 queued\r\n250 a\r\n250 b\r\n354 go\r\n",
        t,
        &mut out,
        &mut ev,
    );
    assert_eq!(done(&ev), (1, 0));
    assert!(c.can_start(&cs));
}

/// The phase latencies and message times in `events`, in order.
fn latencies(events: &[Event], phase: Phase) -> Vec<Duration> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Latency(p, d) if *p == phase => Some(*d),
            _ => None,
        })
        .collect()
}

#[test]
fn a_pipelined_envelope_is_not_charged_the_previous_final_reply() {
    // The server takes D over each end of data and nothing over the rest.
    // Message 1's envelope rides with message 0's end of data, but the
    // server can only work on it once message 0's final reply is out.
    let d = Duration::from_millis(200);
    let ms = Duration::from_millis(1);
    for (name, cs) in [
        ("pipelined data", settings(true, true, false, 1)),
        ("bdat window 2", settings(true, true, true, 2)),
    ] {
        let src = Fixed::new(1, 1000);
        let t = Instant::now();
        let mut c = ClientSession::new(t);
        let (mut out, mut ev) = (Vec::new(), Vec::new());
        let greeting = b"220 hi\r\n250-srv\r\n250-CHUNKING\r\n250 PIPELINING\r\n";
        c.on_input(&cs, &src, greeting, t, &mut out, &mut ev);
        ev.clear();
        c.start(&cs, &src, 0, None, t, &mut out);
        c.start(&cs, &src, 1, None, t, &mut out);
        let first: &[u8] = if cs.bdat {
            b"250 a\r\n250 b\r\n"
        } else {
            b"250 a\r\n250 b\r\n354 go\r\n"
        };
        c.on_input(&cs, &src, first, t + ms, &mut out, &mut ev);
        let second: &[u8] = if cs.bdat {
            b"250 queued\r\n250 a\r\n250 b\r\n"
        } else {
            b"250 queued\r\n250 a\r\n250 b\r\n354 go\r\n"
        };
        c.on_input(&cs, &src, second, t + ms + d, &mut out, &mut ev);
        c.on_input(
            &cs,
            &src,
            b"250 queued\r\n",
            t + ms + d + d,
            &mut out,
            &mut ev,
        );
        assert_eq!(
            latencies(&ev, Phase::Envelope),
            [ms, Duration::ZERO],
            "{name}"
        );
        // With BDAT the chunk went out with the envelope: its clock starts
        // when the RCPT reply before it arrived.
        assert_eq!(latencies(&ev, Phase::Data), [d, d], "{name}");
        let messages: Vec<Duration> = ev
            .iter()
            .filter_map(|e| match e {
                Event::Done {
                    ok: true,
                    intended,
                    finished,
                    ..
                } => Some(*finished - *intended),
                _ => None,
            })
            .collect();
        assert_eq!(
            messages,
            [ms + d, d],
            "{name}: closed loop, from when each could start"
        );
    }
}

/// The dialogue of a client that secures and logs in, against the real
/// server session in memory: the "handshake" is both sides being told the
/// transport is secured (`Session::secured`, `handshake_done`). Returns the
/// client's events and the bytes the server received.
fn secure_dialogue(cs: &ClientSettings) -> (Vec<Event>, Vec<u8>) {
    use crate::proto::server::{AuthOffer, Request, Security};
    let mut ss = Settings::new("server.test", 1 << 20, 100, 512);
    ss.set_security(Security {
        starttls: true,
        require_tls: false,
        auth: Some(AuthOffer {
            plaintext: false,
            users: std::sync::Arc::new(crate::proto::server::auth::Users::parse("u:p\n").unwrap()),
        }),
    });
    let t = Instant::now();
    let src = Fixed::new(1, 7);
    let mut server = Session::new(1, "127.0.0.1:1".parse().unwrap(), t);
    let mut client = ClientSession::with_tls(t, Tls::StartTls);
    let (mut sink, mut stats) = (Discard::default(), Stats::new());
    let (mut to_client, mut to_server, mut seen) = (Vec::new(), Vec::new(), Vec::new());
    let mut events = Vec::new();
    let mut cx = Ctx::new(&mut to_client, &mut sink, &mut stats, t);
    server.start(&ss, &mut cx);
    let mut started = false;
    for _ in 0..1000 {
        let used = client.on_input(cs, &src, &to_client, t, &mut to_server, &mut events);
        to_client.drain(..used);
        if client.wants_tls() {
            // What the server said after its 220 is dropped, as the driver
            // drops the carry.
            to_client.clear();
            client.handshake_done(cs, t, &mut to_server);
        }
        if !started && client.can_start(cs) {
            client.start(cs, &src, 0, None, t, &mut to_server);
            started = true;
        }
        if started && client.is_idle() {
            client.quit(&src, t, &mut to_server);
        }
        if !to_server.is_empty() {
            seen.extend_from_slice(&to_server);
            let mut cx = Ctx::new(&mut to_client, &mut sink, &mut stats, t);
            let used = server.handle_input(&ss, &to_server, &mut cx);
            to_server.drain(..used);
            if server.take_request() == Some(Request::StartTls) {
                // The loop drops what came after STARTTLS, then secures.
                to_server.clear();
                let mut cx = Ctx::new(&mut to_client, &mut sink, &mut stats, t);
                server.secured(&ss, &mut cx);
            }
        }
        if client.is_closed() {
            break;
        }
    }
    assert!(client.is_closed(), "ends with QUIT: {events:?}");
    (events, seen)
}

#[test]
fn starttls_then_auth_then_mail() {
    for (login, auth_line) in [(false, "AUTH PLAIN AHUAcA==\r\n"), (true, "AUTH LOGIN\r\n")] {
        let mut cs = settings(true, true, false, 1);
        cs.auth = Some(Credentials {
            user: "u".into(),
            password: "p".into(),
            login,
        });
        let (events, seen) = secure_dialogue(&cs);
        let text = String::from_utf8(seen).unwrap();
        let expected_start =
            format!("EHLO client.test\r\nSTARTTLS\r\nEHLO client.test\r\n{auth_line}");
        assert!(text.starts_with(&expected_start), "{text}");
        if login {
            assert!(
                text.contains("AUTH LOGIN\r\ndQ==\r\ncA==\r\nMAIL FROM:"),
                "{text}"
            );
        }
        assert_eq!(done(&events), (1, 0), "{events:?}");
        let phases: Vec<Phase> = events
            .iter()
            .filter_map(|e| match e {
                Event::Latency(p, _) => Some(*p),
                _ => None,
            })
            .collect();
        assert_eq!(
            phases[..4],
            [Phase::Greeting, Phase::Ehlo, Phase::Ehlo, Phase::Auth],
            "{phases:?}"
        );
        assert!(!events.iter().any(|e| matches!(e, Event::Error { .. })));
    }
}

#[test]
fn a_server_without_starttls_or_the_mechanism_is_an_error_without_a_code() {
    let cs = settings(true, true, false, 1);
    let t = Instant::now();
    let src = Fixed::new(1, 7);
    let mut c = ClientSession::with_tls(t, Tls::StartTls);
    let (mut out, mut events) = (Vec::new(), Vec::new());
    c.on_input(&cs, &src, b"220 s\r\n", t, &mut out, &mut events);
    assert_eq!(out, b"EHLO client.test\r\n");
    c.on_input(
        &cs,
        &src,
        b"250-s\r\n250 PIPELINING\r\n",
        t,
        &mut out,
        &mut events,
    );
    assert!(c.is_closed());
    assert!(events.contains(&Event::Error {
        stage: Stage::StartTls,
        code: 0
    }));
    // AUTH offered, but not LOGIN.
    let mut cs = settings(true, true, false, 1);
    cs.auth = Some(Credentials {
        user: "u".into(),
        password: "p".into(),
        login: true,
    });
    let mut c = ClientSession::new(t);
    let (mut out, mut events) = (Vec::new(), Vec::new());
    c.on_input(
        &cs,
        &src,
        b"220 s\r\n250-s\r\n250 AUTH PLAIN\r\n",
        t,
        &mut out,
        &mut events,
    );
    assert!(c.is_closed());
    assert!(events.contains(&Event::Error {
        stage: Stage::Auth,
        code: 0
    }));
    // A refused STARTTLS carries its code.
    let mut c = ClientSession::with_tls(t, Tls::StartTls);
    let (mut out, mut events) = (Vec::new(), Vec::new());
    c.on_input(
        &settings(true, true, false, 1),
        &src,
        b"220 s\r\n250-s\r\n250 STARTTLS\r\n454 4.7.0 no\r\n",
        t,
        &mut out,
        &mut events,
    );
    assert!(c.is_closed());
    assert!(events.contains(&Event::Error {
        stage: Stage::StartTls,
        code: 454
    }));
}

#[test]
fn bytes_after_the_starttls_reply_are_not_replies() {
    let cs = settings(true, true, false, 1);
    let t = Instant::now();
    let src = Fixed::new(1, 7);
    let mut c = ClientSession::with_tls(t, Tls::StartTls);
    let (mut out, mut events) = (Vec::new(), Vec::new());
    let input = b"220 s\r\n250-s\r\n250 STARTTLS\r\n220 go\r\n250 injected\r\n";
    let used = c.on_input(&cs, &src, input, t, &mut out, &mut events);
    assert_eq!(
        &input[used..],
        b"250 injected\r\n",
        "left for the driver to drop"
    );
    assert!(c.wants_tls());
    assert!(!c.is_ready());
}

fn lmtp(mut cs: ClientSettings) -> ClientSettings {
    cs.lmtp = true;
    cs
}

#[test]
fn lmtp_in_every_mode_delivers_every_message() {
    let src = Fixed::new(3, 7);
    let ss = Settings::new("server.test", 1 << 20, 100, 512);
    for (name, cs) in [
        ("lock-step", lmtp(settings(true, false, false, 1))),
        ("pipelined data", lmtp(settings(true, true, false, 1))),
        ("bdat window 4", lmtp(settings(true, true, true, 4))),
    ] {
        let t = Instant::now();
        let mut server = Session::new(1, "127.0.0.1:1".parse().unwrap(), t);
        server.speak_lmtp();
        let r = run_on(&cs, &src, 10, &ss, server, ClientSession::new(t));
        assert_eq!(done(&r.events), (10, 0), "{name}: {:?}", r.events);
        assert_eq!(errors(&r.events), [], "{name}");
        assert_eq!(r.sink.messages, 10, "{name}");
        assert_eq!(r.sink.recipients, 30, "{name}");
        assert_eq!(latencies(&r.events, Phase::Data).len(), 10, "{name}");
    }
}

#[test]
fn lmtp_final_replies_are_counted_per_recipient() {
    let src = Fixed::new(3, 100);
    let cs = lmtp(settings(true, false, false, 1));
    // One recipient refused at RCPT: two final replies, one refused.
    let (out, ev) = scripted(
        &cs,
        &src,
        &[
            "220 hi\r\n",
            "250-hi\r\n250 PIPELINING\r\n",
            "250 ok\r\n",
            "250 ok\r\n",
            "550 no\r\n",
            "250 ok\r\n",
            "354 go\r\n",
            "452 4.2.2 full\r\n",
            "250 ok\r\n",
            "250 stray\r\n",
        ],
    );
    assert!(
        out.starts_with("LHLO client.test\r\nMAIL FROM:<s0@x.test>\r\n"),
        "{out}"
    );
    assert_eq!(
        errors(&ev),
        [
            (Stage::Rcpt, 550),
            (Stage::EndOfData, 452),
            (Stage::Protocol, 250)
        ],
        "the third final reply is one too many"
    );
    assert_eq!(done(&ev), (1, 0), "delivered to one recipient");
    // Every final reply refused: the message failed.
    let (_, ev) = scripted(
        &cs,
        &src,
        &[
            "220 hi\r\n",
            "250 hi\r\n",
            "250 ok\r\n",
            "250 ok\r\n",
            "250 ok\r\n",
            "250 ok\r\n",
            "354 go\r\n",
            "550 a\r\n550 b\r\n",
            "451 c\r\n",
        ],
    );
    assert_eq!(
        errors(&ev),
        [
            (Stage::EndOfData, 550),
            (Stage::EndOfData, 550),
            (Stage::EndOfData, 451)
        ]
    );
    assert_eq!(done(&ev), (0, 1));
}

#[test]
fn xclient_names_the_client_then_greets_again() {
    let src = Fixed::new(1, 100);
    let cs = settings(true, true, false, 1);
    let mut ss = Settings::new("server.test", 1 << 20, 100, 512);
    ss.set_forwarding(true, false);
    let t = Instant::now();
    let mut server = Session::new(1, "127.0.0.1:1".parse().unwrap(), t);
    server.trust();
    let client = ClientSession::new(t).xclient_as(Some("2001:db8::7".parse().unwrap()));
    let r = run_on(&cs, &src, 2, &ss, server, client);
    assert_eq!(done(&r.events), (2, 0), "{:?}", r.events);
    assert_eq!(
        latencies(&r.events, Phase::Ehlo).len(),
        2,
        "EHLO, then again"
    );
    // Refused: an error at its own stage, and the connection ends.
    let t = Instant::now();
    let server = Session::new(1, "127.0.0.1:1".parse().unwrap(), t);
    let client = ClientSession::new(t).xclient_as(Some("10.0.0.1".parse().unwrap()));
    let r = run_on(&cs, &src, 0, &ss, server, client);
    assert_eq!(errors(&r.events), [(Stage::Xclient, 550)]);
}

#[test]
fn lmtp_after_a_refused_chunk_the_last_one_gets_one_reply() {
    let src = Fixed::new(2, 30);
    assert_eq!(src.chunks(), 2);
    let cs = lmtp(settings(true, true, true, 1));
    let (_, ev) = scripted(
        &cs,
        &src,
        &[
            "220 hi\r\n",
            "250-hi\r\n250-PIPELINING\r\n250 CHUNKING\r\n",
            "250 ok\r\n250 ok\r\n250 ok\r\n",
            "552 5.3.4 too big\r\n",
            "503 5.5.1 no transaction\r\n",
        ],
    );
    assert_eq!(errors(&ev), [(Stage::Bdat, 552), (Stage::Bdat, 503)]);
    assert_eq!(
        done(&ev),
        (0, 1),
        "finished, not waiting for a second reply"
    );
}
