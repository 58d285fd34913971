//! The fuzz targets' bodies: each takes arbitrary bytes and panics only on a
//! finding. `fuzz/` (cargo-fuzz, libFuzzer) calls them; `tests/fuzz_corpus.rs`
//! replays the kept corpora through the same functions in the normal test
//! suite, so a finding fixed stays fixed. Not API.

use crate::proto::client::{ClientSession, ClientSettings, Credentials, MessageSource, Tls};
use crate::proto::command::{self, ParseCtx};
use crate::proto::dot::{self, Unstuffer};
use crate::proto::forward::{self, Kind};
use crate::proto::proxy::{self, Parsed, Version};
use crate::proto::reply::{self, ReplyId};
use crate::proto::server::auth::{self, Users};
use crate::proto::server::{AuthOffer, Ctx, Policy, Security, Session, Settings, Tally};
use crate::rules::{spec, Engine};
use crate::stats::Stats;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by name (as `fuzz/fuzz_targets/NAME.rs` and the corpus
/// folders are named).
pub const TARGETS: &[(&str, Target)] = &[
    ("session", session),
    ("unstuffer", unstuffer),
    ("command", command),
    ("client", client),
    ("proxy", proxy_header),
    ("forward", forward_attributes),
    ("auth", auth_response),
    ("rules", rules_file),
    ("control", control_request),
    ("reply", reply_parser),
    ("trace", trace_round_trip),
];

/// SMTP's alphabet: what a byte of mapped input stands for, so a fuzzer
/// reaches deep states (a transaction, BDAT chunks, the end of data)
/// without having to find each verb byte by byte.
const TOKENS: &[&[u8]] = &[
    b"EHLO x\r\n",
    b"HELO x\r\n",
    b"LHLO x\r\n",
    b"MAIL FROM:<a@b>\r\n",
    b"MAIL FROM:<> BODY=BINARYMIME SIZE=10 SMTPUTF8\r\n",
    b"MAIL FROM:<a@b> AUTH=<> RET=FULL ENVID=x\r\n",
    b"RCPT TO:<c@d>\r\n",
    b"RCPT TO:<reject550@d>\r\n",
    b"RCPT TO:<datatempfail@d>\r\n",
    b"RCPT TO:<full@d> NOTIFY=NEVER ORCPT=rfc822;x@y\r\n",
    b"DATA\r\n",
    b"BDAT 3\r\n",
    b"BDAT 0 LAST\r\n",
    b"BDAT 2 LAST\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN AGEAYg==\r\n",
    b"AUTH LOGIN\r\n",
    b"XCLIENT ADDR=10.0.0.1 NAME=x HELO=y\r\n",
    b"XFORWARD ADDR=IPV6:2001:db8::1 HELO=z\r\n",
    b"VRFY x\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b".\r\n",
    b"\r\n.\r\n",
    b"\0",
    b" ",
    b"=",
];

/// Maps each byte onto a token, or keeps it (a quarter of them), and a
/// 0xFF byte onto a long run, so line limits are crossed.
fn alphabet(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 8);
    for &b in data {
        match b {
            0xFF => out.extend(std::iter::repeat_n(b'x', 700)),
            0xC0..=0xFE => out.push(b),
            _ => out.extend_from_slice(TOKENS[usize::from(b) % TOKENS.len()]),
        }
    }
    out
}

/// Rules that fire at every stage, so the policy paths are reached too.
const RULES: &str = "magic_addresses = true\n\
[[rule]]\nstage = \"end\"\naddress = \"full@*\"\nreply = \"452 4.2.2 full\"\n\
[[rule]]\nstage = \"rcpt\"\nclient = \"10.0.0.0/8\"\nreply = \"450 4.7.1 later\"\n\
[[rule]]\nstage = \"bdat\"\nevery = 3\nreply = \"552 5.3.4 no\"\n\
[[rule]]\nstage = \"mail\"\nevery = 4\ndrop = true\n";

/// A sink that keeps the size of each message it ended: what a run
/// delivered, whatever the reads were (bytes of a message later aborted,
/// which depend on how the input was cut, are forgotten).
#[derive(Debug, Default)]
struct Keeper {
    current: u64,
    ended: Vec<u64>,
}

impl crate::proto::server::Sink for Keeper {
    fn begin(&mut self, _: crate::proto::server::SessionId) {
        self.current = 0;
    }
    fn body(&mut self, _: crate::proto::server::SessionId, chunk: &[u8]) {
        self.current += chunk.len() as u64;
    }
    fn end(&mut self, _: crate::proto::server::SessionId) -> crate::proto::server::Verdict {
        self.ended.push(self.current);
        crate::proto::server::Verdict::Accepted
    }
}

/// `RULES`, parsed once: each run gets a fresh engine (its state is the
/// run's) from the same set.
static RULE_SET: std::sync::OnceLock<Option<crate::rules::RuleSet>> = std::sync::OnceLock::new();

/// What one run of a session gave.
#[derive(Debug, PartialEq, Eq)]
struct SessionRun {
    out: Vec<u8>,
    consumed: usize,
    ended: Vec<u64>,
}

/// Runs `input` through one session, offered in pieces cut at `cuts` (the
/// unconsumed rest carried over as the reactor carries it).
fn run_session(input: &[u8], cuts: &[usize], mode: u8) -> SessionRun {
    FIXTURES.with(|f| {
        let (s, stats) = &mut *f.borrow_mut();
        run_session_with(s, stats, input, cuts, mode)
    })
}

thread_local! {
    /// The settings and statistics every run shares. Built once: a fresh
    /// `Stats` per run (its histograms, zeroed and paged in) was a third
    /// of the target's time. Nothing a run compares is read from either.
    static FIXTURES: std::cell::RefCell<(Settings, Stats)> =
        std::cell::RefCell::new((fuzz_settings(), Stats::new()));
}

/// Every extension on, so every command has a path to reach.
fn fuzz_settings() -> Settings {
    let mut s = Settings::new("fuzz.test", 64, 3, 512);
    s.set_security(Security {
        starttls: true,
        require_tls: false,
        auth: Some(AuthOffer {
            plaintext: true,
            users: Arc::new(Users::anyone()),
        }),
    });
    s.set_forwarding(true, true);
    s
}

fn run_session_with(
    s: &Settings,
    stats: &mut Stats,
    input: &[u8],
    cuts: &[usize],
    mode: u8,
) -> SessionRun {
    let now = Instant::now();
    let peer: SocketAddr = "192.0.2.7:4321"
        .parse()
        .unwrap_or(crate::proto::server::UNKNOWN_PEER);
    let mut session = Session::new(1, peer, now);
    if mode & 2 != 0 {
        session.speak_lmtp();
    }
    if mode & 4 != 0 {
        session.trust();
    }
    let set = RULE_SET.get_or_init(|| spec::parse_file(RULES).ok());
    let mut engine = set
        .clone()
        .filter(|_| mode & 8 != 0)
        .and_then(|set| Engine::new(set, u64::from(mode), "fuzz.test").ok());
    let interest = engine.as_ref().and_then(Policy::interest);
    let (mut out, mut sink) = (Vec::new(), Keeper::default());
    let mut tally: Tally = [0; ReplyId::COUNT];
    let mut cx = Ctx::new(&mut out, &mut sink, stats, now);
    cx.set_policy(
        engine.as_mut().map(|e| e as &mut dyn Policy),
        interest.as_deref(),
    );
    cx.tally = Some(&mut tally);
    session.start(s, &mut cx);
    let greeted = cx.out.len();
    let mut pending = Vec::new();
    let (mut fed, mut consumed) = (0, 0);
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        if cut < fed || cut > input.len() {
            continue;
        }
        pending.extend_from_slice(&input[fed..cut]);
        fed = cut;
        let n = session.handle_input(s, &pending, &mut cx);
        assert!(n <= pending.len(), "consumed more than offered");
        consumed += n;
        pending.drain(..n);
    }
    if !input.contains(&b'\n') {
        // No reply without a complete command (nor a BDAT chunk, which
        // needs its command line first).
        assert_eq!(cx.out.len(), greeted, "a reply to no command line");
    }
    // Every clock runs out: held replies go, idle sessions time out.
    cx.now = now + Duration::from_secs(3600);
    session.on_timer(s, &mut cx);
    session.disconnected(&mut cx);
    SessionRun {
        out,
        consumed,
        ended: sink.ended,
    }
}

/// Every reply line is `ddd-` or `ddd ` and the output ends at a line end.
fn assert_well_formed(out: &[u8]) {
    assert!(out.is_empty() || out.ends_with(b"\r\n"), "{out:?}");
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let ok = line.len() >= 5
            && line[..3].iter().all(u8::is_ascii_digit)
            && matches!(line[3], b' ' | b'-')
            && line.ends_with(b"\r");
        assert!(
            ok,
            "malformed reply line {:?}",
            String::from_utf8_lossy(line)
        );
    }
}

/// The server session: raw bytes, or bytes mapped onto SMTP's alphabet
/// (first byte, bit 0), as LMTP (bit 1), from a trusted client (bit 2),
/// with rules (bit 3); the same input whole and cut where the next bytes
/// say must give the same replies, every one well-formed; never a panic.
pub fn session(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (cuts_raw, body) = rest.split_at(rest.len().min(4));
    let input = if mode & 1 == 0 {
        body.to_vec()
    } else {
        alphabet(body)
    };
    let mut cuts: Vec<usize> = cuts_raw
        .iter()
        .map(|&c| usize::from(c) * (input.len() + 1) / 256)
        .collect();
    cuts.sort_unstable();
    let whole = run_session(&input, &[], mode);
    let split = run_session(&input, &cuts, mode);
    if whole != split {
        // Where the replies part, as text: a byte dump of two long
        // sessions says nothing.
        let at = whole
            .out
            .iter()
            .zip(&split.out)
            .position(|(a, b)| a != b)
            .unwrap_or(whole.out.len().min(split.out.len()));
        let around = |o: &[u8]| {
            String::from_utf8_lossy(&o[at.saturating_sub(400)..(at + 200).min(o.len())])
                .into_owned()
        };
        panic!(
            "mode {mode:#x}, cut at {cuts:?}: replies part at byte {at}\n--- whole:\n{}\n--- cut:\n{}\n(consumed {} / {}, ended {:?} / {:?})",
            around(&whole.out),
            around(&split.out),
            whole.consumed,
            split.consumed,
            whole.ended,
            split.ended
        );
    }
    assert_well_formed(&whole.out);
    assert!(
        whole.ended.iter().all(|&n| n <= 64),
        "a body past the size limit was ended: {:?}",
        whole.ended
    );
}

/// The naive reference of the end-of-data scan: byte at a time, straight
/// from RFC 5321 4.5.2. The body and the bytes consumed, or `None` if the
/// terminator never comes.
pub fn unstuff_naive(input: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut i = 0;
    let mut bol = true;
    while i < input.len() {
        if bol && input[i..].starts_with(b".\r\n") {
            return Some((body, i + 3));
        }
        if bol && input[i] == b'.' {
            i += 1;
            bol = false;
            continue;
        }
        bol = input[i..].starts_with(b"\r\n");
        if bol {
            body.extend_from_slice(b"\r\n");
            i += 2;
        } else {
            body.push(input[i]);
            i += 1;
        }
    }
    None
}

/// The fast scanner, fed in pieces cut at `cuts` as the reactor feeds it.
pub fn unstuff_split(input: &[u8], cuts: &[usize]) -> Option<(Vec<u8>, usize)> {
    let mut u = Unstuffer::new();
    let mut body = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let (mut offered, mut consumed) = (0, 0);
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.push(input.len());
    points.sort_unstable();
    for p in points {
        if p < offered {
            continue;
        }
        pending.extend_from_slice(&input[offered..p]);
        offered = p;
        let s = u.scan(&pending, |run| body.extend_from_slice(run));
        consumed += s.consumed;
        pending.drain(..s.consumed);
        if s.end {
            return Some((body, consumed));
        }
    }
    None
}

/// The DATA scanner against the naive reference, whole and cut; and
/// stuffing then scanning gives the body back.
pub fn unstuffer(data: &[u8]) {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let input = if cut & 1 == 0 {
        rest.to_vec()
    } else {
        alphabet(rest)
    };
    let want = unstuff_naive(&input);
    assert_eq!(unstuff_split(&input, &[]), want, "whole");
    let at = usize::from(cut) * (input.len() + 1) / 256;
    assert_eq!(unstuff_split(&input, &[at, at / 2]), want, "cut at {at}");
    let mut wire = Vec::new();
    dot::stuff(rest, &mut wire);
    let (body, _) = unstuff_naive(&wire).expect("stuffed content ends");
    let mut expect = rest.to_vec();
    if !expect.is_empty() && !expect.ends_with(b"\r\n") {
        expect.extend_from_slice(b"\r\n");
    }
    assert_eq!(body, expect, "stuff then unstuff");
}

/// The command parser (and through it the address and ESMTP-parameter
/// parsers): an answer for every line, never a panic; a parsed MAIL or
/// RCPT path is never longer than the line.
pub fn command(data: &[u8]) {
    for smtputf8 in [false, true] {
        if let Ok(command::Command::Mail(m)) = command::parse(data, ParseCtx { smtputf8 }) {
            assert!(m.path.len() <= data.len());
        }
        if let Ok(command::Command::Rcpt(r)) = command::parse(data, ParseCtx { smtputf8 }) {
            assert!(r.path.len() <= data.len());
        }
    }
    let _ = command::is_bdat(data);
}

/// A message source for the client target: two recipients, two chunks.
struct Fixed;

impl MessageSource for Fixed {
    fn recipients(&self) -> u32 {
        2
    }
    fn chunks(&self) -> u32 {
        2
    }
    fn mail(&self, seq: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("MAIL FROM:<s{seq}@x>\r\n").as_bytes());
    }
    fn rcpt(&self, _: u64, i: u32, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("RCPT TO:<r{i}@y>\r\n").as_bytes());
    }
    fn data(&self, _: u64, _: Instant, out: &mut Vec<u8>) {
        out.extend_from_slice(b"body\r\n.\r\n");
    }
    fn bdat(&self, _: u64, i: u32, _: Instant, out: &mut Vec<u8>) {
        out.extend_from_slice(if i == 1 {
            b"BDAT 2 LAST\r\nab"
        } else {
            b"BDAT 2\r\nab"
        });
    }
}

/// The client session (smtpload) against arbitrary server replies, in
/// pieces: never a panic, never more messages finished than started,
/// each at most once.
pub fn client(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let cs = ClientSettings {
        helo_name: "fuzz".into(),
        ehlo: mode & 1 == 0,
        pipelining: mode & 2 != 0,
        bdat: mode & 4 != 0,
        window: usize::from(mode >> 6) + 1,
        auth: (mode & 8 != 0).then(|| Credentials {
            user: "u".into(),
            password: "p".into(),
            login: mode & 16 != 0,
        }),
        lmtp: mode & 32 != 0,
    };
    let t = Instant::now();
    let mut c =
        ClientSession::new(t).xclient_as((mode & 0x30 == 0x30).then(|| [10, 0, 0, 1].into()));
    let (mut out, mut events) = (Vec::new(), Vec::new());
    let mut seq = 0;
    let mut pending = Vec::new();
    for piece in rest.split(|&b| b == 0xFF) {
        pending.extend_from_slice(piece);
        let n = c.on_input(&cs, &Fixed, &pending, t, &mut out, &mut events);
        assert!(n <= pending.len());
        pending.drain(..n);
        while c.can_start(&cs) && seq < 8 {
            c.start(&cs, &Fixed, seq, None, t, &mut out);
            seq += 1;
        }
        if c.wants_tls() {
            c.handshake_done(&cs, t, &mut out);
        }
    }
    c.closed(
        Some(crate::proto::client::Stage::Disconnect),
        t,
        &mut events,
    );
    let mut done: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            crate::proto::client::Event::Done { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    let n = done.len();
    done.sort_unstable();
    done.dedup();
    assert_eq!(done.len(), n, "a message finished twice");
    assert_eq!(n as u64, seq, "every message started finishes once");
    let _ = Tls::Off;
}

/// PROXY headers: an answer for any bytes, never a length past them; and
/// headers we write read back as the address they name.
pub fn proxy_header(data: &[u8]) {
    if let Parsed::Header { len, .. } = proxy::parse(data) {
        assert!(len <= data.len());
    }
    if let Some(&first) = data.first() {
        let v6 = first & 1 == 1;
        let b = |i: usize| data.get(i).copied().unwrap_or(0);
        let from = if v6 {
            let octets: [u8; 16] = std::array::from_fn(|i| b(1 + i));
            SocketAddr::new(octets.into(), u16::from_be_bytes([b(17), b(18)]))
        } else {
            SocketAddr::new(
                [b(1), b(2), b(3), b(4)].into(),
                u16::from_be_bytes([b(5), b(6)]),
            )
        };
        let to = SocketAddr::new(
            if v6 {
                [0u8; 16].into()
            } else {
                [127, 0, 0, 1].into()
            },
            25,
        );
        for version in [Version::V1, Version::V2] {
            if let Some(h) = proxy::header(version, from, to) {
                match proxy::parse(&h) {
                    Parsed::Header { len, client } => {
                        assert_eq!(len, h.len());
                        assert_eq!(client, Some(from), "{version:?}");
                    }
                    other => panic!("our own {version:?} header read as {other:?}"),
                }
            }
        }
    }
}

/// XCLIENT/XFORWARD attributes: an answer for any line; values kept are
/// printable and bounded.
pub fn forward_attributes(data: &[u8]) {
    for kind in [Kind::Xclient, Kind::Xforward] {
        if let Ok(c) = forward::parse(kind, data) {
            for v in [&c.name, &c.helo, &c.proto, &c.login].into_iter().flatten() {
                assert!(v.len() <= forward::MAX_VALUE);
                assert!(v.iter().all(|b| (0x21..=0x7e).contains(b)), "{v:?}");
            }
        }
    }
}

/// AUTH responses: base64 decoding and PLAIN's message, never a panic.
pub fn auth_response(data: &[u8]) {
    if let Some(decoded) = auth::decode(data) {
        let users = Users::parse("alice:secret\n").unwrap_or_else(|_| Users::anyone());
        let _ = auth::plain(&decoded, &users);
        let _ = auth::plain(&decoded, &Users::anyone());
    }
}

/// The rules file: an answer (a rule set or an error naming a line) for
/// any text, and an engine for every set that parses.
pub fn rules_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(set) = spec::parse_file(text) {
        let _ = Engine::new(set, 1, "fuzz.test");
    }
}

/// The control endpoint's HTTP requests: an answer for any bytes, never
/// a length past them.
pub fn control_request(data: &[u8]) {
    if let crate::control::Parse::Complete(_, n) = crate::control::parse(data) {
        assert!(n <= data.len());
    }
}

/// The reply parser clients use: an answer for any bytes, never a length
/// past them; and every reply the server can send reads as one reply.
pub fn reply_parser(data: &[u8]) {
    if let reply::Parsed::Complete { len, .. } = reply::parse(data) {
        assert!(len <= data.len());
    }
    let _ = reply::ehlo_lines(data).count();
}

/// Stored messages' trace fields, round trip: an envelope the parsers
/// accepted (the input's lines: HELO/EHLO, MAIL, RCPT, XCLIENT, XFORWARD)
/// is written as Return-Path, X-Original-To and Received, and read back
/// the same; every field line ends in CRLF, with no CR or LF inside it,
/// and a folded line starts with a TAB.
pub fn trace_round_trip(data: &[u8]) {
    use crate::proto::command::Command;
    use crate::sink::maildir::{trace_fields, Trace};
    let ctx = ParseCtx { smtputf8: true };
    let (mut helo, mut from, mut rcpts) = (Vec::new(), Vec::new(), Vec::new());
    let (mut xclient, mut forward) = (None, None);
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().any(|&b| b < 0x20 || b == 0x7f) {
            // The session refuses these before parsing.
            continue;
        }
        match command::parse(line, ctx) {
            Ok(Command::Helo(n) | Command::Ehlo(n) | Command::Lhlo(n)) => helo = n.to_vec(),
            Ok(Command::Mail(m)) => from = m.path.to_vec(),
            Ok(Command::Rcpt(r)) => rcpts.push(r.path.to_vec()),
            Ok(Command::Xclient(a)) => xclient = forward::parse(Kind::Xclient, a).ok(),
            Ok(Command::Xforward(a)) => forward = forward::parse(Kind::Xforward, a).ok(),
            _ => {}
        }
    }
    let trace = Trace {
        hostname: "fuzz.test",
        peer: Some(
            "192.0.2.7:25"
                .parse()
                .unwrap_or(crate::proto::server::UNKNOWN_PEER),
        ),
        helo: &helo,
        with: crate::proto::server::With::Esmtp,
        from: &from,
        rcpts: &rcpts,
        xclient: xclient.as_ref(),
        forward: forward.as_ref(),
    };
    let head = trace_fields(&trace, "1.M2P3Q4.fuzz.test", std::time::UNIX_EPOCH);
    assert!(head.ends_with(b"\r\n"));
    let lines: Vec<&[u8]> = head
        .strip_suffix(b"\r\n")
        .unwrap_or(&head)
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect();
    for l in &lines {
        assert!(!l.contains(&b'\r') && !l.contains(&b'\n'), "{l:?}");
    }
    let mut it = lines.iter();
    let mut want = b"Return-Path: <".to_vec();
    want.extend_from_slice(&from);
    want.push(b'>');
    assert_eq!(it.next().copied(), Some(&want[..]));
    for r in &rcpts {
        let mut want = b"X-Original-To: <".to_vec();
        want.extend_from_slice(r);
        want.push(b'>');
        assert_eq!(it.next().copied(), Some(&want[..]));
    }
    let received = it.next().copied().unwrap_or_default();
    let name = [forward.as_ref(), xclient.as_ref()]
        .into_iter()
        .flatten()
        .find_map(|c| c.helo.as_deref())
        .or((!helo.is_empty()).then_some(&helo[..]))
        .unwrap_or(b"unknown");
    let mut want = b"Received: from ".to_vec();
    want.extend_from_slice(name);
    assert!(received.starts_with(&want), "{received:?}");
    for l in it {
        assert!(
            l.starts_with(b"\t"),
            "a folded line starts with a TAB: {l:?}"
        );
    }
}
