//! Message generation: everything a message needs is built before the run.
//!
//! Per message only the fixed-width sequence number (in the Message-ID and
//! the X-Smtpload-Seq header) and the send stamp (X-Smtpload-Sent: when the
//! content was handed to the server, in nanoseconds since the Unix epoch,
//! for `smtpsink --verify`'s transit latency) change, plus `{n}` in sender or
//! recipient patterns when the user asked for it. The body and its CRC-32
//! (the X-Smtpload-Hash header, checked by `smtpsink --verify`) are the same
//! for every message of a run, so the hot path copies prepared bytes.

use smtpsink::proto::client::MessageSource;
use smtpsink::proto::{decimal, dot};
use std::time::{Instant, SystemTime};

/// Width of the sequence number as written in headers: fixed, so every
/// message of a run has the same length and BDAT chunk plan.
const SEQ_WIDTH: usize = 20;

/// One piece of a template.
#[derive(Debug, Clone)]
enum Piece {
    Lit(Vec<u8>),
    /// The message sequence number, as plain decimal.
    Seq,
    /// The sequence number, zero-padded to [`SEQ_WIDTH`].
    Seq20,
    /// The recipient index within the message.
    Rcpt,
    /// The send stamp, zero-padded to [`SEQ_WIDTH`].
    Stamp,
}

/// Text with `{seq}` or `{n}` (sequence number) and `{r}` (recipient index)
/// holes. `--help` documents `{seq}`: clap turns `{n}` into a line break.
#[derive(Debug, Clone)]
struct Template(Vec<Piece>);

impl Template {
    fn parse(s: &str) -> Self {
        let mut pieces = Vec::new();
        let mut lit = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let (piece, len) = if rest.starts_with("{seq}") {
                (Some(Piece::Seq), 5)
            } else if rest.starts_with("{n}") {
                (Some(Piece::Seq), 3)
            } else if rest.starts_with("{r}") {
                (Some(Piece::Rcpt), 3)
            } else {
                (None, rest.chars().next().map_or(1, char::len_utf8))
            };
            match piece {
                Some(p) => {
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    pieces.push(p);
                }
                None => lit.extend_from_slice(&rest.as_bytes()[..len]),
            }
            rest = &rest[len..];
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Self(pieces)
    }

    fn has_seq(&self) -> bool {
        self.0
            .iter()
            .any(|p| matches!(p, Piece::Seq | Piece::Seq20))
    }

    fn render(&self, seq: u64, rcpt: u32, stamp: u64, out: &mut Vec<u8>) {
        for p in &self.0 {
            match p {
                Piece::Lit(b) => out.extend_from_slice(b),
                Piece::Seq => decimal::write(seq, 0, out),
                Piece::Seq20 => decimal::write(seq, SEQ_WIDTH, out),
                Piece::Rcpt => decimal::write(u64::from(rcpt), 0, out),
                Piece::Stamp => decimal::write(stamp, SEQ_WIDTH, out),
            }
        }
    }
}

/// A command line: either fixed for the run or rendered per message.
#[derive(Debug, Clone)]
enum Line {
    Fixed(Vec<u8>),
    PerMessage(Template),
}

impl Line {
    fn new(t: Template, rcpt: u32) -> Self {
        if t.has_seq() {
            Line::PerMessage(t)
        } else {
            let mut b = Vec::new();
            t.render(0, rcpt, 0, &mut b);
            Line::Fixed(b)
        }
    }

    fn write(&self, seq: u64, rcpt: u32, out: &mut Vec<u8>) {
        match self {
            Line::Fixed(b) => out.extend_from_slice(b),
            Line::PerMessage(t) => t.render(seq, rcpt, 0, out),
        }
    }
}

/// What to send; see `smtpload --help`.
#[derive(Debug, Clone)]
pub struct PayloadSpec {
    /// The MAIL FROM pattern (`{n}`: the message's sequence number).
    pub from: String,
    /// The RCPT TO pattern (`{r}`: the recipient index, `{n}` as above).
    pub to: String,
    /// Recipients per message.
    pub recipients: u32,
    /// Size of the generated message, headers included.
    pub size: usize,
    /// Send this message (an .eml) instead of a generated one.
    pub message: Option<Vec<u8>>,
    /// BDAT chunk size; 0 = the whole message in one chunk.
    pub chunk: usize,
    /// Identifies the run in the X-Smtpload-Run header.
    pub run_id: u64,
}

/// Prepared messages.
#[derive(Debug, Clone)]
pub struct Payload {
    mail: Line,
    rcpts: Vec<Line>,
    /// Top headers with the sequence number in them.
    head: Template,
    head_len: usize,
    /// The rest of the message as sent with BDAT (raw).
    rest: Vec<u8>,
    /// The rest dot-stuffed, with the terminating `.CRLF`.
    rest_stuffed: Vec<u8>,
    chunk: usize,
    /// CRC-32 of the body (after the blank line).
    pub body_crc: u32,
    /// One reading of both clocks: send stamps are wall-clock times derived
    /// from the monotonic one, without a clock call per message.
    anchor: (Instant, u64),
}

/// The body starts after the first empty line (RFC 5322 2.1).
pub fn body_of(message: &[u8]) -> &[u8] {
    memchr::memmem::find(message, b"\r\n\r\n").map_or(&[][..], |i| &message[i + 4..])
}

/// Turns bare LF into CRLF and makes the message end with CRLF.
fn normalize(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 50);
    for (i, &b) in raw.iter().enumerate() {
        if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

const LOREM: &[&str] = &[
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod",
    "tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim",
    "veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea",
    ".commodo consequat: this line starts with a dot and must be stuffed.",
    "Duis aute irure dolor in reprehenderit in voluptate velit esse cillum",
    "dolore eu fugiat nulla pariatur. Excepteur sint occaecat cupidatat non",
    "proident, sunt in culpa qui officia deserunt mollit anim id est laborum.",
    "..two dots here, and a lone dot on the next line:",
    ".",
];

/// A plausible text message of exactly `size` bytes after the top headers
/// (or as close as the headers allow).
fn generated_rest(size: usize, head_len: usize) -> Vec<u8> {
    let mut m = b"From: smtpload <smtpload@example.test>\r\nTo: <sink@example.test>\r\n\
Subject: smtpload test message\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n\
MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        .to_vec();
    let target = size.saturating_sub(head_len);
    let mut i = 0;
    while m.len() + 2 < target {
        let line = LOREM[i % LOREM.len()].as_bytes();
        let room = target - m.len() - 2;
        m.extend_from_slice(&line[..line.len().min(room)]);
        m.extend_from_slice(b"\r\n");
        i += 1;
    }
    m
}

impl Payload {
    /// Renders everything that does not change per message, once.
    pub fn new(spec: &PayloadSpec) -> Self {
        let mut head = Vec::new();
        head.push(Piece::Lit(b"Message-ID: <".to_vec()));
        head.push(Piece::Seq20);
        head.push(Piece::Lit(
            format!(
                ".{:016x}@smtpload.invalid>\r\nX-Smtpload-Run: {:016x}\r\nX-Smtpload-Seq: ",
                spec.run_id, spec.run_id
            )
            .into_bytes(),
        ));
        head.push(Piece::Seq20);
        head.push(Piece::Lit(b"\r\nX-Smtpload-Sent: ".to_vec()));
        head.push(Piece::Stamp);
        let mut rendered = Vec::new();
        Template(head.clone()).render(0, 0, 0, &mut rendered);
        // The hash header closes the variable block; its value is known once
        // the rest of the message is.
        let hash_line_len = "\r\nX-Smtpload-Hash: crc32:00000000\r\n".len();
        let head_len = rendered.len() + hash_line_len;
        let rest = match &spec.message {
            Some(raw) => normalize(raw),
            None => generated_rest(spec.size, head_len),
        };
        let body_crc = crc32fast::hash(body_of(&rest));
        head.push(Piece::Lit(
            format!("\r\nX-Smtpload-Hash: crc32:{body_crc:08x}\r\n").into_bytes(),
        ));
        let mut rest_stuffed = Vec::with_capacity(rest.len() + 64);
        dot::stuff(&rest, &mut rest_stuffed);
        let eight_bit = !rest.is_ascii();
        let mut mail = format!("MAIL FROM:<{}>", spec.from);
        if eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if !spec.from.is_ascii() || !spec.to.is_ascii() {
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");
        let rcpt = format!("RCPT TO:<{}>\r\n", spec.to);
        let rcpts = (0..spec.recipients.max(1))
            .map(|r| Line::new(Template::parse(&rcpt), r))
            .collect();
        let total = head_len + rest.len();
        Self {
            mail: Line::new(Template::parse(&mail), 0),
            rcpts,
            head: Template(head),
            head_len,
            rest,
            rest_stuffed,
            chunk: if spec.chunk == 0 { total } else { spec.chunk },
            body_crc,
            anchor: (Instant::now(), unix_nanos(SystemTime::now())),
        }
    }

    /// The send stamp for content handed to the server at `at`.
    pub fn stamp(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.anchor.0).as_nanos();
        self.anchor.1 + u64::try_from(since).unwrap_or(u64::MAX / 2)
    }

    /// Bytes of one message as the sink stores it (unstuffed).
    pub fn message_len(&self) -> usize {
        self.head_len + self.rest.len()
    }

    /// The whole message `seq` stamped `stamp`, unstuffed (for tests).
    pub fn message(&self, seq: u64, stamp: u64) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.message_len());
        self.head.render(seq, 0, stamp, &mut m);
        m.extend_from_slice(&self.rest);
        m
    }

    /// Appends bytes `start..end` of message `seq`.
    fn write_range(&self, seq: u64, stamp: u64, start: usize, end: usize, out: &mut Vec<u8>) {
        if start < self.head_len {
            let mark = out.len();
            self.head.render(seq, 0, stamp, out);
            out.drain(mark..mark + start);
            out.truncate(mark + end.min(self.head_len) - start);
        }
        if end > self.head_len {
            let from = start.max(self.head_len) - self.head_len;
            out.extend_from_slice(&self.rest[from..end - self.head_len]);
        }
    }
}

impl MessageSource for Payload {
    fn recipients(&self) -> u32 {
        u32::try_from(self.rcpts.len()).unwrap_or(u32::MAX)
    }

    fn chunks(&self) -> u32 {
        u32::try_from(self.message_len().div_ceil(self.chunk).max(1)).unwrap_or(u32::MAX)
    }

    fn mail(&self, seq: u64, out: &mut Vec<u8>) {
        self.mail.write(seq, 0, out);
    }

    fn rcpt(&self, seq: u64, i: u32, out: &mut Vec<u8>) {
        if let Some(l) = self.rcpts.get(i as usize) {
            l.write(seq, i, out);
        }
    }

    fn data(&self, seq: u64, handed: Instant, out: &mut Vec<u8>) {
        // The top headers never start with a dot: only the rest is stuffed.
        self.head.render(seq, 0, self.stamp(handed), out);
        out.extend_from_slice(&self.rest_stuffed);
    }

    fn bdat(&self, seq: u64, i: u32, handed: Instant, out: &mut Vec<u8>) {
        let start = i as usize * self.chunk;
        let end = (start + self.chunk).min(self.message_len());
        out.extend_from_slice(b"BDAT ");
        decimal::write((end - start) as u64, 0, out);
        out.extend_from_slice(if i + 1 == self.chunks() {
            b" LAST\r\n"
        } else {
            b"\r\n"
        });
        self.write_range(seq, self.stamp(handed), start, end, out);
    }
}

/// `t` in nanoseconds since the Unix epoch.
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PayloadSpec {
        PayloadSpec {
            from: "s{n}@x.test".into(),
            to: "r{r}@y.test".into(),
            recipients: 3,
            size: 1024,
            message: None,
            chunk: 100,
            run_id: 0xabc,
        }
    }

    #[test]
    fn generated_messages_have_the_asked_size_and_valid_stuffing() {
        let p = Payload::new(&spec());
        assert_eq!(p.message_len(), 1024);
        let at = Instant::now();
        let m = p.message(42, p.stamp(at));
        assert_eq!(m.len(), 1024);
        let text = String::from_utf8(m.clone()).unwrap();
        assert!(text.starts_with(
            "Message-ID: <00000000000000000042.0000000000000abc@smtpload.invalid>\r\n"
        ));
        assert!(text.contains("X-Smtpload-Seq: 00000000000000000042\r\n"));
        let stamp = unix_nanos(SystemTime::now());
        let sent = p.stamp(at);
        assert!(
            sent <= stamp && stamp - sent < 1_000_000_000,
            "{sent} vs {stamp}"
        );
        assert!(text.contains(&format!("X-Smtpload-Sent: {sent:020}\r\n")));
        assert!(text.contains(&format!(
            "X-Smtpload-Hash: crc32:{:08x}\r\n",
            crc32fast::hash(body_of(&m))
        )));
        assert!(text.contains("\r\n.commodo"), "exercises stuffing");
        // DATA form unstuffs back to the message.
        let mut wire = Vec::new();
        p.data(42, at, &mut wire);
        let mut u = dot::Unstuffer::new();
        let mut back = Vec::new();
        let s = u.scan(&wire, |r| back.extend_from_slice(r));
        assert!(s.end && s.consumed == wire.len());
        assert_eq!(back, m);
    }

    #[test]
    fn bdat_chunks_reassemble_the_message() {
        let p = Payload::new(&spec());
        let at = Instant::now();
        assert_eq!(p.chunks(), 11);
        let mut all = Vec::new();
        for i in 0..p.chunks() {
            let mut c = Vec::new();
            p.bdat(7, i, at, &mut c);
            let nl = c.iter().position(|b| *b == b'\n').unwrap();
            let line = std::str::from_utf8(&c[..=nl]).unwrap();
            let n: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            assert_eq!(c.len() - nl - 1, n);
            assert_eq!(line.ends_with("LAST\r\n"), i == 10);
            all.extend_from_slice(&c[nl + 1..]);
        }
        assert_eq!(all, p.message(7, p.stamp(at)), "one stamp across chunks");
    }

    #[test]
    fn envelope_patterns() {
        let p = Payload::new(&spec());
        let mut out = Vec::new();
        p.mail(5, &mut out);
        p.rcpt(5, 2, &mut out);
        assert_eq!(out, b"MAIL FROM:<s5@x.test>\r\nRCPT TO:<r2@y.test>\r\n");
        let mut s = spec();
        s.to = "r{r}.{seq}@y.test".into();
        let p = Payload::new(&s);
        let mut out = Vec::new();
        p.rcpt(12, 1, &mut out);
        assert_eq!(out, b"RCPT TO:<r1.12@y.test>\r\n");
        s.from = "jörg@x.test".into();
        s.message = Some(b"Subject: x\n\nStra\xc3\x9fe\n.\n".to_vec());
        let p = Payload::new(&s);
        let mut out = Vec::new();
        p.mail(0, &mut out);
        assert_eq!(
            out,
            "MAIL FROM:<jörg@x.test> BODY=8BITMIME SMTPUTF8\r\n".as_bytes()
        );
        assert!(p
            .message(0, 0)
            .ends_with(b"Subject: x\r\n\r\nStra\xc3\x9fe\r\n.\r\n"));
    }
}
