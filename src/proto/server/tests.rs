//! Transcript tests: client bytes in, exact server bytes and sink events out.
//! Every case also runs with the input split at every byte boundary, carrying
//! unconsumed bytes over exactly as the reactor does.

use super::*;
// Tests may look up: the real statistics count what the session reports.
use crate::stats::Stats;

/// Records every sink call as text, so tests assert the exact sequence.
#[derive(Default)]
struct Recorder {
    events: Vec<String>,
    body: Vec<u8>,
    bodies: Vec<Vec<u8>>,
    verdict: Option<Verdict>,
    /// Also record who the client is: `connected`, `hello`, `client`.
    identity: bool,
}

impl Sink for Recorder {
    fn connected(&mut self, _: SessionId, peer: SocketAddr) {
        if self.identity {
            self.events.push(format!("connected {peer}"));
        }
    }
    fn hello(&mut self, _: SessionId, name: &[u8], with: With) {
        if self.identity {
            let name = String::from_utf8_lossy(name);
            self.events.push(format!("hello {name} {}", with.as_str()));
        }
    }
    fn client(&mut self, _: SessionId, c: &Client, transaction: bool) {
        if self.identity {
            let text = |v: &Option<Box<[u8]>>| {
                v.as_deref()
                    .map_or("-".into(), |b| String::from_utf8_lossy(b).into_owned())
            };
            let addr = c.addr.map_or("-".into(), |a| a.to_string());
            let scope = if transaction { "tx" } else { "session" };
            self.events.push(format!(
                "client {scope} {addr} {} {}",
                text(&c.name),
                text(&c.helo)
            ));
        }
    }
    fn mail(&mut self, _: SessionId, p: &[u8]) {
        self.events
            .push(format!("mail <{}>", String::from_utf8_lossy(p)));
    }
    fn rcpt(&mut self, _: SessionId, p: &[u8]) {
        self.events
            .push(format!("rcpt <{}>", String::from_utf8_lossy(p)));
    }
    fn begin(&mut self, _: SessionId) {
        self.events.push("begin".into());
        self.body.clear();
    }
    fn body(&mut self, _: SessionId, chunk: &[u8]) {
        self.body.extend_from_slice(chunk);
    }
    fn end(&mut self, _: SessionId) -> Verdict {
        self.events.push("end".into());
        self.bodies.push(std::mem::take(&mut self.body));
        self.verdict.unwrap_or(Verdict::Accepted)
    }
    fn abort(&mut self, _: SessionId) {
        self.events.push("abort".into());
        self.body.clear();
    }
    fn closed(&mut self, _: SessionId) {
        self.events.push("closed".into());
    }
    fn refused_rcpt(&mut self, _: SessionId, index: usize) {
        self.events.push(format!("refused rcpt {index}"));
    }
}

fn settings() -> Settings {
    Settings::new("sink.test", 1000, 3, 512)
}

struct Outcome {
    out: Vec<u8>,
    sink: Recorder,
    stats: Stats,
    consumed: usize,
    state: State,
}

/// One session with its own output, recorder and statistics, driven step
/// by step.
struct Harness {
    session: Session,
    out: Vec<u8>,
    sink: Recorder,
    stats: Stats,
    /// Rules the session asks, if any.
    policy: Option<crate::rules::Engine>,
    /// Replies by id, as the loop's tally.
    tally: Tally,
    t0: Instant,
    now: Instant,
}

impl Harness {
    fn new(sink: Recorder) -> Self {
        let now = Instant::now();
        Self {
            session: Session::new(1, "192.0.2.7:4321".parse().unwrap(), now),
            out: Vec::new(),
            sink,
            stats: Stats::new(),
            policy: None,
            tally: [0; ReplyId::COUNT],
            t0: now,
            now,
        }
    }

    /// Calls `f` with the session and a context over this harness.
    fn with<R>(&mut self, f: impl FnOnce(&mut Session, &mut Ctx<'_>) -> R) -> R {
        let mut cx = Ctx::new(&mut self.out, &mut self.sink, &mut self.stats, self.now);
        // As the loop does: the interest is read before the policy is lent.
        let interest = self.policy.as_ref().and_then(Policy::interest);
        cx.set_policy(
            self.policy.as_mut().map(|p| p as &mut dyn Policy),
            interest.as_deref(),
        );
        cx.tally = Some(&mut self.tally);
        let r = f(&mut self.session, &mut cx);
        // What the loop does before anyone reads its statistics.
        self.stats.replies_by_id = self.tally;
        r
    }

    fn feed(&mut self, s: &Settings, input: &[u8]) -> usize {
        self.with(|session, cx| session.handle_input(s, input, cx))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out).into_owned()
    }
}

/// Runs `input` through a fresh session cut at `cuts` (sorted offsets).
fn run_cuts(s: &Settings, input: &[u8], cuts: &[usize]) -> Outcome {
    run_cuts_in(Harness::new(Recorder::default()), s, input, cuts)
}

/// As `run_cuts`, in a prepared harness.
fn run_cuts_in(mut h: Harness, s: &Settings, input: &[u8], cuts: &[usize]) -> Outcome {
    let mut pending: Vec<u8> = Vec::new();
    let mut consumed = 0;
    let mut fed = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        if cut < fed {
            continue;
        }
        pending.extend_from_slice(&input[fed..cut]);
        fed = cut;
        let n = h.feed(s, &pending);
        assert!(n <= pending.len());
        consumed += n;
        pending.drain(..n);
    }
    Outcome {
        state: h.session.state(),
        out: h.out,
        sink: h.sink,
        stats: h.stats,
        consumed,
    }
}

/// Runs whole and at every split, asserting all agree; returns the whole run.
fn transcript_with(s: &Settings, input: &[u8], want: &str) -> Outcome {
    transcript_in(&|| Harness::new(Recorder::default()), s, input, want)
}

/// As `transcript_with`, each run in a harness `make` prepares.
fn transcript_in(make: &dyn Fn() -> Harness, s: &Settings, input: &[u8], want: &str) -> Outcome {
    let whole = run_cuts_in(make(), s, input, &[]);
    assert_eq!(
        String::from_utf8_lossy(&whole.out),
        want,
        "input: {:?}",
        String::from_utf8_lossy(&input[..input.len().min(200)])
    );
    for cut in 1..input.len() {
        let split = run_cuts_in(make(), s, input, &[cut]);
        assert_eq!(split.out, whole.out, "split at {cut}");
        assert_eq!(split.sink.events, whole.sink.events, "split at {cut}");
        assert_eq!(split.sink.bodies, whole.sink.bodies, "split at {cut}");
        assert_eq!(split.consumed, whole.consumed, "split at {cut}");
    }
    if input.len() < 600 {
        let every: Vec<usize> = (1..input.len()).collect();
        let bytewise = run_cuts_in(make(), s, input, &every);
        assert_eq!(bytewise.out, whole.out, "byte at a time");
        assert_eq!(bytewise.sink.bodies, whole.sink.bodies, "byte at a time");
    }
    whole
}

fn transcript(input: &str, want: &str) -> Outcome {
    transcript_with(&settings(), input.as_bytes(), want)
}

const EHLO: &str = "250-sink.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n\
250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250-BINARYMIME\r\n250-DSN\r\n250 HELP\r\n";

#[test]
fn greeting_and_quit() {
    let s = settings();
    let mut h = Harness::new(Recorder::default());
    h.with(|session, cx| session.start(&s, cx));
    assert_eq!(
        h.feed(&s, b"QUIT\r\nNOOP\r\n"),
        6,
        "nothing after QUIT is read"
    );
    assert!(h.session.is_closed());
    assert_eq!(h.out, b"220 sink.test ESMTP smtpsink\r\n221 2.0.0 Bye\r\n");
}

#[test]
fn full_transaction_pipelined() {
    let o = transcript(
        "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<e@f.test>\r\nDATA\r\n\
Subject: x\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n",
        &format!(
            "{EHLO}250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n\
250 2.0.0 Ok: queued\r\n221 2.0.0 Bye\r\n"
        ),
    );
    assert_eq!(
        o.sink.events,
        [
            "mail <a@b.test>",
            "rcpt <c@d.test>",
            "rcpt <e@f.test>",
            "begin",
            "end"
        ]
    );
    assert_eq!(
        o.sink.bodies,
        [b"Subject: x\r\n\r\n.dot\r\nbody\r\n".to_vec()]
    );
    let c = o.stats.counters;
    assert_eq!(
        (c.transactions, c.messages, c.recipients, c.body_bytes),
        (1, 1, 2, 26)
    );
    assert_eq!(o.stats.replies_by_class(), [0, 0, 6, 1, 0, 0]);
    assert_eq!(o.stats.latency.len(), 1);
    assert_eq!(o.state, State::Closed);
}

#[test]
fn every_command_has_an_answer() {
    transcript(
        "HELO c.test\r\nNOOP\r\nNOOP anything\r\nRSET\r\nVRFY bob\r\nEXPN list\r\nHELP\r\nHELP MAIL\r\n\
SEND FROM:<a@b>\r\nSOML FROM:<a@b>\r\nSAML FROM:<a@b>\r\nTURN\r\nXYZZY\r\n\r\nquit\r\n",
        "250 sink.test\r\n250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n\
252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery\r\n\
502 5.5.1 Error: command not implemented\r\n\
214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET VRFY EXPN HELP NOOP QUIT\r\n\
214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET VRFY EXPN HELP NOOP QUIT\r\n\
502 5.5.1 Error: command not implemented\r\n502 5.5.1 Error: command not implemented\r\n\
502 5.5.1 Error: command not implemented\r\n502 5.5.1 Error: command not implemented\r\n\
500 5.5.2 Error: command not recognized\r\n500 5.5.2 Error: command not recognized\r\n221 2.0.0 Bye\r\n",
    );
}

#[test]
fn sequence_errors() {
    let o = transcript(
        "MAIL FROM:<a@b>\r\nEHLO c\r\nRCPT TO:<a@b>\r\nDATA\r\nBDAT 3\r\nxyzMAIL FROM:<a@b>\r\n\
MAIL FROM:<c@d>\r\nDATA\r\nBDAT 2 LAST\r\nxyRCPT TO:<x@y>\r\nDATA\r\n.\r\n",
        &format!(
            "503 5.5.1 Error: send HELO/EHLO first\r\n{EHLO}503 5.5.1 Error: need MAIL command\r\n\
503 5.5.1 Error: need MAIL command\r\n503 5.5.1 Error: need MAIL command\r\n250 2.1.0 Ok\r\n\
503 5.5.1 Error: nested MAIL command\r\n503 5.5.1 Error: need RCPT command\r\n\
503 5.5.1 Error: need RCPT command\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n\
250 2.0.0 Ok: queued\r\n"
        ),
    );
    assert_eq!(
        o.sink.bodies,
        [Vec::<u8>::new()],
        "'.' right after 354 is an empty message"
    );
}

#[test]
fn helo_and_rset_reset_the_transaction() {
    let o = transcript(
        "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRSET\r\nRCPT TO:<c@d>\r\n\
MAIL FROM:<a@b>\r\nHELO c\r\nDATA\r\n",
        &format!(
            "{EHLO}250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok\r\n503 5.5.1 Error: need MAIL command\r\n\
250 2.1.0 Ok\r\n250 sink.test\r\n503 5.5.1 Error: need MAIL command\r\n"
        ),
    );
    assert_eq!(
        o.sink.events,
        ["mail <a@b>", "rcpt <c@d>", "abort", "mail <a@b>", "abort"]
    );
}

#[test]
fn syntax_errors_and_params() {
    transcript(
        "EHLO\r\nEHLO c\r\nMAIL FROM:a@b\r\nMAIL FROM:<a@b> FOO=BAR\r\nMAIL FROM:<ü@b>\r\n\
MAIL FROM:<a@b> SIZE=1001\r\nMAIL FROM:<a@b> SIZE=999 BODY=8BITMIME\r\nRCPT TO:<ü@b>\r\n\
RCPT TO:<c@d> NOTIFY=BOGUS\r\nRCPT TO:<c@d> XYZ=1\r\nRCPT TO:c@d\r\nRCPT TO:<c>\r\nDATA now\r\nRSET x\r\n\
QUIT now\r\nVRFY\r\n",
        &format!(
            "501 5.5.4 Syntax: EHLO hostname\r\n{EHLO}501 5.5.4 Syntax: MAIL FROM:<address>\r\n\
555 5.5.4 Error: unsupported MAIL parameter\r\n\
553 5.6.7 Error: non-ASCII address requires SMTPUTF8\r\n\
552 5.3.4 Error: message size exceeds fixed limit\r\n250 2.1.0 Ok\r\n\
553 5.6.7 Error: non-ASCII address requires SMTPUTF8\r\n501 5.5.4 Error: bad parameter syntax\r\n\
555 5.5.4 Error: unsupported RCPT parameter\r\n501 5.5.4 Syntax: RCPT TO:<address>\r\n\
501 5.1.3 Bad recipient address syntax\r\n501 5.5.4 Syntax: DATA\r\n501 5.5.4 Syntax: RSET\r\n\
501 5.5.4 Syntax: QUIT\r\n501 5.5.4 Syntax: VRFY address\r\n"
        ),
    );
}

#[test]
fn smtputf8_transaction() {
    let o = transcript(
        "EHLO c\r\nMAIL FROM:<ü@b.test> SMTPUTF8\r\nRCPT TO:<δ@ε.test>\r\nRCPT TO:<Postmaster>\r\n",
        &format!("{EHLO}250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"),
    );
    assert_eq!(o.sink.events[1], "rcpt <δ@ε.test>");
}

#[test]
fn too_many_recipients() {
    let o = transcript(
        "HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nRCPT TO:<a@b>\r\nRCPT TO:<a@b>\r\nRCPT TO:<a@b>\r\n\
DATA\r\nx\r\n.\r\n",
        "250 sink.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n\
452 4.5.3 Error: too many recipients\r\n354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued\r\n",
    );
    assert_eq!(o.stats.counters.recipients, 3);
}

#[test]
fn message_too_big_is_consumed_then_refused() {
    let body = "x".repeat(998) + "\r\n"; // 1000 bytes: at the limit
    let big = "y".repeat(999) + "\r\n"; // 1001 bytes: one over
    let o = transcript(
        &format!(
            "HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nDATA\r\n{body}.\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nDATA\r\n{big}.\r\nNOOP\r\n"
        ),
        "250 sink.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n\
250 2.0.0 Ok: queued\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n\
552 5.3.4 Error: message size exceeds fixed limit\r\n250 2.0.0 Ok\r\n",
    );
    assert_eq!(o.sink.bodies.len(), 1);
    assert_eq!(o.sink.events.last().map(String::as_str), Some("abort"));
    assert_eq!(
        (
            o.stats.counters.messages,
            o.stats.counters.messages_rejected
        ),
        (1, 1)
    );
}

#[test]
fn bdat_chunks() {
    let o = transcript(
        "EHLO c\r\nMAIL FROM:<a@b> BODY=BINARYMIME\r\nRCPT TO:<c@d>\r\nDATA\r\nBDAT 5\r\n.\r\n\r\nBDAT 0\r\n\
BDAT 3 LAST\r\n\x00\r\x01NOOP\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 0 LAST\r\n",
        &format!(
            "{EHLO}250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n503 5.5.1 Error: BODY=BINARYMIME requires BDAT\r\n\
250 2.0.0 5 octets received\r\n250 2.0.0 0 octets received\r\n250 2.0.0 Ok: queued\r\n250 2.0.0 Ok\r\n\
250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: queued\r\n"
        ),
    );
    assert_eq!(o.sink.bodies, [b".\r\n\r\n\x00\r\x01".to_vec(), Vec::new()]);
    assert_eq!(o.stats.counters.body_bytes, 8);
}

#[test]
fn bdat_data_after_bdat_and_size_limit() {
    let chunk = "z".repeat(600);
    transcript(
        &format!(
            "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 1\r\naDATA\r\nBDAT 600\r\n{chunk}BDAT 600 LAST\r\n{chunk}NOOP\r\n"
        ),
        &format!(
            "{EHLO}250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 1 octets received\r\n\
503 5.5.1 Error: DATA not allowed after BDAT\r\n250 2.0.0 600 octets received\r\n\
552 5.3.4 Error: message size exceeds fixed limit\r\n250 2.0.0 Ok\r\n"
        ),
    );
}

#[test]
fn smuggling_vectors_do_not_end_data() {
    // Each vector hides "MAIL FROM" behind a fake end of data. Only the real
    // CRLF.CRLF ends the message, so exactly one 250 follows the 354 and the
    // smuggled lines stay in the body.
    for fake in [
        "\n.\n",
        "\n.\r\n",
        "\r\n.\n",
        "\r.\r\n",
        "\r\n.\r\r\n",
        "\r\n\x00.\r\n",
    ] {
        let input = format!(
            "HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhello{fake}MAIL FROM:<evil@x>\r\nRCPT TO:<v@x>\r\nDATA\r\nsmuggled\r\n.\r\nNOOP\r\n"
        );
        let o = transcript(
            &input,
            "250 sink.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n\
250 2.0.0 Ok: queued\r\n250 2.0.0 Ok\r\n",
        );
        let body = String::from_utf8(o.sink.bodies[0].clone()).unwrap();
        assert!(
            body.starts_with("hello") && body.contains("MAIL FROM:<evil@x>"),
            "{fake:?}: {body:?}"
        );
        assert_eq!(
            o.sink
                .events
                .iter()
                .filter(|e| e.starts_with("mail"))
                .count(),
            1
        );
    }
}

#[test]
fn bare_lf_policy() {
    // Commands: a line ended by LF alone is answered 500 and not executed.
    transcript(
        "NOOP\nHELO c\r\nQUIT\n",
        "500 5.5.2 Error: bare <LF> received; end lines with <CR><LF>\r\n250 sink.test\r\n\
500 5.5.2 Error: bare <LF> received; end lines with <CR><LF>\r\n",
    );
    // Data: passed through by default; refused with the strict setting.
    let input = "HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\na\nb\r\n.\r\n";
    let o = transcript(
        input,
        "250 sink.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued\r\n",
    );
    assert_eq!(o.sink.bodies, [b"a\nb\r\n".to_vec()]);
    let mut strict = settings();
    strict.reject_bare_lf = true;
    for body in ["a\nb\r\n", "\r\n.\nb\r\n", "\n\r\n"] {
        let input = format!("HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n{body}.\r\n");
        let o = transcript_with(
            &strict,
            input.as_bytes(),
            "250 sink.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n\
550 5.5.2 Error: bare <LF> received in message data\r\n",
        );
        assert!(o.sink.bodies.is_empty());
    }
}

#[test]
fn control_characters_in_commands() {
    transcript_with(
        &settings(),
        b"NO\x00OP\r\nNOOP\rX\r\nHELO\tc\r\nNOOP\r\n",
        "500 5.5.2 Error: control character in command\r\n500 5.5.2 Error: control character in command\r\n\
500 5.5.2 Error: control character in command\r\n250 2.0.0 Ok\r\n",
    );
}

#[test]
fn long_lines() {
    let ok = format!("NOOP {}", "a".repeat(505)); // 510 + CRLF = 512
    let over = format!("NOOP {}", "a".repeat(506)); // 513
    let huge = "x".repeat(5000);
    let long_rcpt = format!("RCPT TO:<a@b> ORCPT=rfc822;{}", "c".repeat(200)); // > 512, allowed
    transcript(
        &format!("{ok}\r\n{over}\r\n{huge}\r\nHELO c\r\nMAIL FROM:<a@b>\r\n{long_rcpt}\r\n{huge}\nNOOP\r\n"),
        "250 2.0.0 Ok\r\n500 5.5.2 Error: line too long\r\n500 5.5.2 Error: line too long\r\n250 sink.test\r\n\
250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n500 5.5.2 Error: line too long\r\n250 2.0.0 Ok\r\n",
    );
}

#[test]
fn overflowing_line_is_not_buffered() {
    let s = settings();
    let mut h = Harness::new(Recorder::default());
    let junk = vec![b'j'; 4096];
    assert_eq!(h.feed(&s, &junk), 4096);
    assert_eq!(h.feed(&s, &junk), 4096);
    assert_eq!(h.feed(&s, b"jj\r\nNOOP\r\n"), 10);
    assert_eq!(h.out, b"500 5.5.2 Error: line too long\r\n250 2.0.0 Ok\r\n");
}

#[test]
fn pending_verdict_holds_input() {
    let s = settings();
    let mut h = Harness::new(Recorder {
        verdict: Some(Verdict::Pending),
        ..Recorder::default()
    });
    let input = b"HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\nNOOP\r\n";
    let n = h.feed(&s, input);
    assert_eq!(&input[n..], b"NOOP\r\n", "nothing read past the message");
    assert_eq!(h.session.state(), State::Verdict);
    assert!(h.session.in_message());
    assert_eq!(h.feed(&s, &input[n..]), 0);
    h.with(|session, cx| session.complete(&s, Verdict::Rejected(ReplyId::TooBig), cx));
    assert_eq!(h.feed(&s, &input[n..]), 6);
    assert!(h.text().ends_with("354 End data with <CR><LF>.<CR><LF>\r\n552 5.3.4 Error: message size exceeds fixed limit\r\n250 2.0.0 Ok\r\n"));
}

#[test]
fn shutdown_and_disconnect_abort_the_transaction() {
    let s = settings();
    let mut h = Harness::new(Recorder::default());
    h.feed(&s, b"HELO c\r\nMAIL FROM:<a@b>\r\n");
    h.with(|session, cx| session.close_with(&s, ReplyId::Shutdown, cx));
    assert!(h.session.is_closed());
    assert_eq!(h.feed(&s, b"NOOP\r\n"), 0);
    assert!(h
        .text()
        .ends_with("421 4.3.2 sink.test Service shutting down, closing transmission channel\r\n"));
    assert_eq!(h.sink.events, ["mail <a@b>", "abort"]);
}

/// A harness whose session asks a rules engine built from `rules`.
fn ruled(rules: &str, sink: Recorder) -> Harness {
    let set = crate::rules::spec::parse_file(rules).expect("rules");
    let mut h = Harness::new(sink);
    h.policy = Some(crate::rules::Engine::new(set, 1, "sink.test").expect("engine"));
    h
}

#[test]
fn a_refused_bdat_chunk_ends_refused_even_if_the_rules_change_meanwhile() {
    let s = settings();
    let mut h = ruled(
        "[[rule]]\nstage = \"bdat\"\nreply = \"554 5.6.0 no\"\n",
        Recorder::default(),
    );
    h.with(|session, cx| session.start(&s, cx));
    let first: &[u8] = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 10 LAST\r\nhalf ";
    assert_eq!(h.feed(&s, first), first.len());
    // A PUT /rules while the chunk is read: the new set has no rules.
    let empty = crate::rules::spec::parse_file("").expect("empty");
    h.policy
        .as_mut()
        .expect("engine")
        .install(empty)
        .expect("install");
    assert_eq!(h.feed(&s, b"chunk"), 5);
    assert!(
        h.text().ends_with("250 2.1.5 Ok\r\n554 5.6.0 no\r\n"),
        "{}",
        h.text()
    );
    assert!(h.sink.bodies.is_empty(), "nothing ended");
    assert_eq!(h.sink.events.last().map(String::as_str), Some("abort"));
}

#[test]
fn a_rule_text_for_a_250_does_not_outlive_its_message() {
    let s = settings();
    let sink = Recorder {
        verdict: Some(Verdict::Rejected(ReplyId::LocalError)),
        ..Recorder::default()
    };
    let mut h = ruled(
        "[[rule]]\nstage = \"end\"\nfirst = 1\nreply = \"250 2.0.0 custom\"\n",
        sink,
    );
    let msg: &[u8] = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\n";
    h.feed(&s, b"HELO c\r\n");
    h.feed(&s, msg);
    // The sink refused the first: its rule text is dropped with it.
    assert!(h
        .text()
        .ends_with("451 4.3.0 Error: local error in processing\r\n"));
    h.sink.verdict = None;
    h.out.clear();
    h.feed(&s, msg);
    assert!(
        h.text().ends_with("250 2.0.0 Ok: queued\r\n"),
        "{}",
        h.text()
    );
}

mod lmtp;

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// Random sessions over SMTP's alphabet: command words, line ends in
    /// every spelling, dots and raw bytes, so deep states are reached.
    fn token() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"EHLO x\r\n".to_vec()),
            Just(b"HELO x\r\n".to_vec()),
            Just(b"MAIL FROM:<a@b>\r\n".to_vec()),
            Just(b"MAIL FROM:<> BODY=BINARYMIME SIZE=10\r\n".to_vec()),
            Just(b"RCPT TO:<c@d>\r\n".to_vec()),
            Just(b"DATA\r\n".to_vec()),
            Just(b"BDAT 3\r\n".to_vec()),
            Just(b"BDAT 0 LAST\r\n".to_vec()),
            Just(b"BDAT 2 LAST\r\n".to_vec()),
            Just(b"RSET\r\n".to_vec()),
            Just(b"NOOP\r\n".to_vec()),
            Just(b"QUIT\r\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b".".to_vec()),
            Just(b".\r\n".to_vec()),
            Just(b"\r\n.\r\n".to_vec()),
            Just(vec![b'x'; 700]),
            prop::collection::vec(any::<u8>(), 1..8),
        ]
    }

    fn assert_well_formed(out: &[u8]) {
        let text = String::from_utf8(out.to_vec()).expect("replies are UTF-8");
        assert!(text.is_empty() || text.ends_with("\r\n"), "{text:?}");
        for line in text.split_terminator("\r\n") {
            let b = line.as_bytes();
            assert!(
                b.len() >= 4
                    && b[..3].iter().all(u8::is_ascii_digit)
                    && (b[3] == b' ' || b[3] == b'-'),
                "malformed reply line {line:?}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn never_panics_and_splits_do_not_matter(
            tokens in prop::collection::vec(token(), 0..40),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            let input: Vec<u8> = tokens.concat();
            let s = Settings::new("sink.test", 64, 3, 512);
            let whole = run_cuts(&s, &input, &[]);
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
            points.sort_unstable();
            let split = run_cuts(&s, &input, &points);
            prop_assert_eq!(&split.out, &whole.out);
            prop_assert_eq!(&split.sink.bodies, &whole.sink.bodies);
            assert_well_formed(&whole.out);
            let c = whole.stats.counters;
            prop_assert!(c.messages + c.messages_rejected <= c.transactions);
            prop_assert!(whole.sink.bodies.iter().all(|b| b.len() <= 64));
        }

        #[test]
        fn rules_never_panic_and_splits_do_not_matter(
            tokens in prop::collection::vec(token(), 0..40),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
            seed in any::<u64>(),
        ) {
            let input: Vec<u8> = tokens.concat();
            let s = Settings::new("sink.test", 64, 3, 512);
            let run = |points: &[usize]| {
                let set = crate::rules::spec::parse_file(RULES).expect("rules");
                let mut h = Harness::new(Recorder::default());
                h.policy = Some(crate::rules::Engine::new(set, seed, "sink.test").expect("engine"));
                h.with(|session, cx| session.start(&s, cx));
                run_cuts_in(h, &s, &input, points)
            };
            let whole = run(&[]);
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
            points.sort_unstable();
            let split = run(&points);
            prop_assert_eq!(&split.out, &whole.out);
            prop_assert_eq!(&split.sink.events, &whole.sink.events);
            prop_assert_eq!(&split.sink.bodies, &whole.sink.bodies);
            assert_well_formed(&whole.out);
            let c = whole.stats.counters;
            prop_assert!(c.messages + c.messages_rejected + c.messages_dropped <= c.transactions);
            // Whatever the rules did, the sink only ever ended whole messages.
            prop_assert!(whole.sink.bodies.iter().all(|b| b.len() <= 64));
        }
    }

    /// Every action but delays and throttles (those wait on timers), at
    /// every stage, each firing sometimes.
    const RULES: &str = r#"
[[rule]]
stage = "helo"
probability = 0.2
reply = "550 5.7.1 helo"
[[rule]]
stage = "mail"
probability = 0.2
reply = "451 4.3.0 mail"
[[rule]]
stage = "mail"
probability = 0.1
drop = true
[[rule]]
stage = "rcpt"
probability = 0.3
reply = "550 5.1.1 rcpt"
[[rule]]
stage = "rcpt"
every = 4
reply = "250 2.1.5 fine"
[[rule]]
stage = "data"
probability = 0.2
reply = "554 5.7.1 data"
[[rule]]
stage = "data"
probability = 0.1
close_after = 5
[[rule]]
stage = "bdat"
probability = 0.3
reply = "554 5.6.0 chunk"
[[rule]]
stage = "end"
probability = 0.3
reply = "552 5.2.2 end"
[[rule]]
stage = "end"
probability = 0.2
drop = true
[[rule]]
stage = "rset"
probability = 0.05
close = true
[[rule]]
stage = "other"
probability = 0.05
reply = "421 4.3.0 bye"
[[rule]]
stage = "quit"
reply = "221 2.0.0 ruled bye"
[[rule]]
stage = "helo"
first = 1
reply = "250 2.0.0 first"
"#;
}

#[test]
fn bdat_lines_that_cannot_be_executed_end_the_session() {
    // The chunk after a BDAT we cannot parse would otherwise run as commands.
    let desync = "521 5.5.4 Error: unusable BDAT command; closing connection\r\n";
    for line in [
        "BDAT x\r\n",
        "BDAT 99999999999999999999999\r\n",
        "BDAT 6\n",
        "BDAT 6\x00\r\n",
        "bdat\t3\r\nabc",
        &format!("BDAT 6 {}\r\n", "L".repeat(600)),
        &format!("BDAT 6 {}", "L".repeat(1100)),
    ] {
        let input = format!("EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n{line}RSET\r\n");
        let o = transcript_with(
            &settings(),
            input.as_bytes(),
            &format!("{EHLO}250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n{desync}"),
        );
        assert_eq!(o.state, State::Closed, "{line:?}");
        assert_eq!(o.sink.events.last().map(String::as_str), Some("abort"));
    }
    // A usable size with a bad rest: the chunk is consumed, then refused.
    transcript(
        "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 6 X\r\nRSET\r\nNOOP\r\n",
        &format!("{EHLO}250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n501 5.5.4 Syntax: BDAT size [LAST]\r\n250 2.0.0 Ok\r\n"),
    );
}

#[test]
fn rcpt_after_bdat_is_out_of_sequence() {
    transcript(
        "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 5\r\nhelloRCPT TO:<e@f>\r\nMAIL FROM:<x@y>\r\nBDAT 0 LAST\r\n",
        &format!(
            "{EHLO}250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 5 octets received\r\n503 5.5.1 Error: RCPT after BDAT\r\n\
503 5.5.1 Error: nested MAIL command\r\n250 2.0.0 Ok: queued\r\n"
        ),
    );
}

#[test]
fn shutdown_closes_after_the_message_not_after_what_follows() {
    let s = settings();
    let mut h = Harness::new(Recorder::default());
    let first: &[u8] = b"HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nbody\r\n";
    let used = h.feed(&s, first);
    assert_eq!(
        &first[used..],
        b"\r\n",
        "the CRLF that may precede the dot waits"
    );
    h.with(|session, cx| session.shutdown(&s, cx));
    let rest = b"\r\n.\r\nMAIL FROM:<x@y>\r\nRCPT TO:<z@w>\r\n";
    assert_eq!(h.feed(&s, rest), 5, "nothing after the final dot is read");
    assert!(h.session.is_closed());
    assert!(h.text().ends_with(
        "250 2.0.0 Ok: queued\r\n421 4.3.2 sink.test Service shutting down, closing transmission channel\r\n"
    ));
    assert_eq!(
        h.sink
            .events
            .iter()
            .filter(|e| e.starts_with("mail"))
            .count(),
        1
    );
}

/// Settings with short, distinct timeouts for the clock tests.
fn timed() -> Settings {
    let mut s = settings();
    s.timeouts = Timeouts {
        idle: Duration::from_secs(10),
        command: Duration::from_secs(3),
        data_min_rate: 100,
        data_window: Duration::from_secs(2),
    };
    s
}

impl Harness {
    fn at(&mut self, secs: f64) -> &mut Self {
        self.now = self.t0 + Duration::from_secs_f64(secs);
        self
    }

    fn tick(&mut self, s: &Settings) {
        self.with(|session, cx| session.on_timer(s, cx));
    }
}

#[test]
fn idle_clock_runs_from_the_last_byte_or_reply_taken() {
    let s = timed();
    let mut h = Harness::new(Recorder::default());
    h.with(|session, cx| session.start(&s, cx));
    assert_eq!(h.session.deadline(&s), Some(h.t0 + Duration::from_secs(10)));
    h.at(4.0).feed(&s, b"NOOP\r\n");
    h.session.wrote(h.t0 + Duration::from_secs(6));
    assert_eq!(h.session.deadline(&s), Some(h.t0 + Duration::from_secs(16)));
    h.at(15.9).tick(&s);
    assert!(!h.session.is_closed(), "not before its time");
    h.at(16.0).tick(&s);
    assert!(h.session.is_closed());
    assert_eq!(h.session.take_request(), Some(Request::Close));
    assert!(h
        .text()
        .ends_with("250 2.0.0 Ok\r\n421 4.4.2 sink.test Error: timeout exceeded, closing transmission channel\r\n"));
    let c = h.stats.counters;
    assert_eq!(
        (c.timeouts, c.command_timeouts, c.data_rate_timeouts),
        (1, 0, 0)
    );
}

#[test]
fn a_command_line_must_be_complete_in_time_however_it_trickles() {
    let s = timed();
    let mut h = Harness::new(Recorder::default());
    // Complete lines never start the line clock.
    h.at(1.0).feed(&s, b"NOOP\r\n");
    assert_eq!(h.session.deadline(&s), Some(h.t0 + Duration::from_secs(11)));
    // A partial line does, from its first byte; more bytes do not move it.
    assert_eq!(h.at(2.0).feed(&s, b"NO"), 0);
    assert_eq!(h.at(4.0).feed(&s, b"NOO"), 0);
    assert_eq!(h.session.deadline(&s), Some(h.t0 + Duration::from_secs(5)));
    // Completed in time, with the next line begun: its clock starts now.
    assert_eq!(h.at(4.5).feed(&s, b"NOOP\r\nRS"), 6);
    assert_eq!(
        h.session.deadline(&s),
        Some(h.t0 + Duration::from_millis(7500))
    );
    h.at(7.4).tick(&s);
    assert!(!h.session.is_closed());
    assert_eq!(h.at(7.4).feed(&s, b"RSE"), 0);
    h.at(7.5).tick(&s);
    assert!(h.session.is_closed());
    assert_eq!(h.stats.counters.command_timeouts, 1);
    // An over-long line being skipped is a line too.
    let mut h = Harness::new(Recorder::default());
    h.at(1.0).feed(&s, &[b'x'; 2000]);
    assert_eq!(h.session.state(), State::SkipLine);
    h.at(3.0).feed(&s, &[b'x'; 10]);
    h.at(4.0).tick(&s);
    assert!(h.session.is_closed());
}

#[test]
fn content_must_keep_the_minimum_rate_per_window() {
    let s = timed(); // 100 octets/s over 2 s windows: 200 per window
    let mut h = Harness::new(Recorder::default());
    h.feed(
        &s,
        b"HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n",
    );
    assert_eq!(h.session.deadline(&s), Some(h.t0 + Duration::from_secs(2)));
    h.at(1.0).feed(&s, &[b'y'; 250]);
    h.at(2.0).tick(&s);
    assert!(!h.session.is_closed(), "250 octets in the first window");
    assert_eq!(h.session.deadline(&s), Some(h.t0 + Duration::from_secs(4)));
    h.at(3.0).feed(&s, &[b'y'; 150]);
    h.at(4.0).tick(&s);
    assert!(h.session.is_closed(), "150 in the second");
    assert!(h.text().ends_with(
        "421 4.4.2 sink.test Error: data transfer too slow, closing transmission channel\r\n"
    ));
    assert_eq!(h.sink.events.last().map(String::as_str), Some("abort"));
    assert_eq!(h.stats.counters.data_rate_timeouts, 1);
    // Off with a zero rate; BDAT chunks count the same way.
    let mut off = timed();
    off.timeouts.data_min_rate = 0;
    let mut h = Harness::new(Recorder::default());
    h.feed(
        &off,
        b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 1000\r\n",
    );
    assert_eq!(
        h.session.deadline(&off),
        Some(h.t0 + Duration::from_secs(10))
    );
    let mut h = Harness::new(Recorder::default());
    h.feed(
        &s,
        b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 1000\r\n",
    );
    h.at(2.0).tick(&s);
    assert!(h.session.is_closed());
}

#[test]
fn a_held_reply_waits_for_its_time_and_holds_the_input_behind_it() {
    let mut s = settings();
    s.set_delay(Verb::Mail, Duration::from_millis(500));
    s.set_delay(Verb::Quit, Duration::from_millis(100));
    let mut h = Harness::new(Recorder::default());
    let input = b"HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nQUIT\r\n";
    let n = h.feed(&s, input);
    assert_eq!(&input[n..], b"RCPT TO:<c@d>\r\nQUIT\r\n");
    assert_eq!(h.text(), "250 sink.test\r\n", "the MAIL reply is held");
    assert_eq!(h.sink.events, ["mail <a@b>"], "the action itself is not");
    let until = h.t0 + Duration::from_millis(500);
    assert_eq!(h.session.take_request(), Some(Request::Hold { until }));
    assert_eq!(h.session.deadline(&s), Some(until));
    assert!(!h.session.takes_input());
    assert_eq!(h.feed(&s, &input[n..]), 0);
    h.at(0.4).tick(&s);
    assert_eq!(h.text(), "250 sink.test\r\n");
    h.at(0.5).tick(&s);
    assert_eq!(h.session.take_request(), None);
    assert_eq!(h.feed(&s, &input[n..]), input.len() - n);
    assert_eq!(
        h.session.take_request(),
        Some(Request::Hold {
            until: h.t0 + Duration::from_millis(600)
        }),
        "the QUIT reply is held too, and the close waits for it"
    );
    assert_eq!(
        h.text(),
        "250 sink.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
    );
    h.at(0.6).tick(&s);
    assert_eq!(h.session.take_request(), Some(Request::Close));
    assert!(h.text().ends_with("250 2.1.5 Ok\r\n221 2.0.0 Bye\r\n"));
}

/// A message accepted by the sink whose 250 is held for a second.
fn message_with_a_held_250() -> (Settings, Harness) {
    let mut s = settings();
    s.set_delay(Verb::EndOfData, Duration::from_secs(1));
    let mut h = Harness::new(Recorder::default());
    h.feed(
        &s,
        b"HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\n",
    );
    (s, h)
}

#[test]
fn a_held_final_reply_is_sent_before_a_shutdown_421() {
    let (s, mut h) = message_with_a_held_250();
    assert!(h.session.in_message(), "its final reply is still to come");
    h.with(|session, cx| session.shutdown(&s, cx));
    assert!(!h.session.is_closed());
    h.at(1.0).tick(&s);
    assert!(h.text().ends_with(
        "250 2.0.0 Ok: queued\r\n421 4.3.2 sink.test Service shutting down, closing transmission channel\r\n"
    ));
    assert_eq!(h.session.take_request(), Some(Request::Close));
    assert_eq!(h.stats.counters.messages, 1);
    let us = h.stats.latency.max();
    assert!(
        (999_000..1_001_000).contains(&us),
        "the hold is part of the latency: {us}"
    );
}

#[test]
fn answers_stop_at_the_output_limit_and_go_on_from_there() {
    let s = settings();
    let mut h = Harness::new(Recorder::default());
    let input = b"NOOP\r\n".repeat(1000);
    let mut cx_out = Vec::new();
    let used = {
        let mut cx = Ctx::new(&mut cx_out, &mut h.sink, &mut h.stats, h.now);
        cx.out_limit = 100;
        cx.tally = Some(&mut h.tally);
        h.session.handle_input(&s, &input, &mut cx)
    };
    // The eighth 14-octet reply crosses 100 octets; nothing runs after it.
    assert_eq!((used, cx_out.len()), (48, 112));
    assert!(h.session.takes_input());
    assert_eq!(h.feed(&s, &input[used..]), input.len() - used);
    assert_eq!(h.stats.replies_by_class()[2], 1000);
}

/// Records every state change.
#[derive(Default)]
struct Transitions {
    stats: Stats,
    seen: Vec<(State, State)>,
}

impl Observer for Transitions {
    fn counted(&mut self, c: &Counts) {
        self.stats.counted(c);
    }
    fn message(&mut self, o: super::Outcome, b: u64, l: Duration) {
        self.stats.message(o, b, l);
    }
    fn timeout(&mut self, _: Timeout) {}
    fn transition(&mut self, _: SessionId, from: State, to: State) {
        self.seen.push((from, to));
    }
}

#[test]
fn every_state_change_is_reported_from_to() {
    let s = settings();
    let mut out = Vec::new();
    let mut sink = Recorder::default();
    let mut obs = Transitions::default();
    let now = Instant::now();
    let peer = "[2001:db8::1]:25".parse().unwrap();
    let mut session = Session::new(9, peer, now);
    assert_eq!(
        session.peer(),
        peer,
        "the client address is known from accept on"
    );
    let mut cx = Ctx::new(&mut out, &mut sink, &mut obs, now);
    cx.trace = true;
    let input = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 1 LAST\r\nyQUIT\r\n";
    assert_eq!(session.handle_input(&s, input, &mut cx), input.len());
    let chunk = State::Chunk {
        size: 1,
        remaining: 1,
        last: true,
        reject: None,
    };
    assert_eq!(
        obs.seen,
        [
            (State::Command, State::Data),
            (State::Data, State::Command),
            (State::Command, chunk),
            (chunk, State::Command),
            (State::Command, State::Closed),
        ]
    );
}

#[test]
fn reply_texts_come_from_the_settings() {
    let mut s = settings();
    s.set_reply(ReplyId::RecipientOk, "250 2.1.5 Recipient fine")
        .unwrap();
    s.set_reply(ReplyId::Queued, "250-2.0.0 Ok\r\n250 2.0.0 queued as X")
        .unwrap();
    s.set_reply(ReplyId::ChunkReceived, "250 2.0.0 took {size}")
        .unwrap();
    transcript_with(
        &s,
        b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 2\r\nxyBDAT 0 LAST\r\n",
        &format!(
            "{EHLO}250 2.1.0 Ok\r\n250 2.1.5 Recipient fine\r\n250 2.0.0 took 2\r\n250-2.0.0 Ok\r\n250 2.0.0 queued as X\r\n"
        ),
    );
}

#[test]
fn a_wait_for_the_sink_or_a_held_reply_is_not_idleness() {
    let s = timed(); // idle 10 s
    let mut h = Harness::new(Recorder {
        verdict: Some(Verdict::Pending),
        ..Recorder::default()
    });
    h.feed(
        &s,
        b"HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\n",
    );
    assert_eq!(h.session.take_request(), Some(Request::Await));
    // The verdict comes after more than the idle timeout.
    h.at(12.0)
        .with(|session, cx| session.complete(&s, Verdict::Accepted, cx));
    assert_eq!(h.session.deadline(&s), Some(h.t0 + Duration::from_secs(22)));
    h.at(12.1).tick(&s);
    assert!(
        !h.session.is_closed(),
        "not timed out right after the verdict"
    );
    // The same after a held reply.
    let mut d = timed();
    d.set_delay(Verb::Noop, Duration::from_secs(15));
    let mut h = Harness::new(Recorder::default());
    h.feed(&d, b"NOOP\r\n");
    h.at(15.0).tick(&d);
    assert_eq!(h.text(), "250 2.0.0 Ok\r\n");
    h.at(15.1).tick(&d);
    assert!(!h.session.is_closed());
    assert_eq!(h.session.deadline(&d), Some(h.t0 + Duration::from_secs(25)));
}

#[test]
fn a_sink_that_never_answers_is_given_up_after_the_idle_timeout() {
    let s = timed(); // idle 10 s
    let mut h = Harness::new(Recorder {
        verdict: Some(Verdict::Pending),
        ..Recorder::default()
    });
    h.at(3.0).feed(
        &s,
        b"HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\n",
    );
    assert_eq!(h.session.deadline(&s), Some(h.t0 + Duration::from_secs(13)));
    h.at(12.9).tick(&s);
    assert_eq!(h.session.state(), State::Verdict);
    assert_eq!(
        h.at(13.0).with(|session, cx| session.on_timer(&s, cx)),
        Some(Timeout::Idle)
    );
    assert!(h.text().ends_with(
        "421 4.4.2 sink.test Error: timeout exceeded, closing transmission channel\r\n"
    ));
    assert_eq!(h.sink.events.last().map(String::as_str), Some("abort"));
    // A verdict after that is ignored.
    h.with(|session, cx| session.complete(&s, Verdict::Accepted, cx));
    assert_eq!(h.stats.counters.messages, 0);
}

#[test]
fn a_dropped_held_final_reply_aborts_the_message_and_the_sink_hears_closed_once() {
    let (s, mut h) = message_with_a_held_250();
    // Stopped for good before the 250 could go: the client never heard it.
    h.with(|session, cx| session.close_with(&s, ReplyId::Shutdown, cx));
    assert!(!h.text().contains("queued"));
    h.with(Session::disconnected);
    h.with(Session::disconnected);
    assert_eq!(
        h.sink.events,
        [
            "mail <a@b>",
            "rcpt <c@d>",
            "begin",
            "end",
            "abort",
            "closed"
        ]
    );
    // A held QUIT is dropped by a forced close too.
    let mut q = settings();
    q.set_delay(Verb::Quit, Duration::from_secs(1));
    let mut h = Harness::new(Recorder::default());
    h.feed(&q, b"QUIT\r\n");
    h.with(|session, cx| session.close_with(&q, ReplyId::Shutdown, cx));
    assert_eq!(h.session.take_request(), Some(Request::Close));
    assert_eq!(h.session.deadline(&q), None, "nothing is held any more");
}
