//! The server side of one SMTP session, sans-IO (RFC 5321, 2920, 3030).
//!
//! Owns: session state (greeted or not), transaction state (envelope counts,
//! body size) and the state machine over input bytes. Bytes go in through
//! [`Session::handle_input`], which consumes what it can decide and leaves the
//! rest (a partial line, a held-back CR) for the caller to offer again with
//! more bytes appended. Replies are appended to the caller's output buffer;
//! envelope and body go to the [`Sink`]. No sockets, no clock reads (the time
//! is passed in), no allocation per command or per message.
//!
//! Invariants: every command line gets exactly one reply; nothing after QUIT
//! or a 421 is read; input is never consumed while a sink verdict is pending.

use super::command::{self, Body, Command, ParseCtx};
use super::dot::Unstuffer;
use super::line::{self, Frame};
use super::reply::{self, Rendered, Reply};
use crate::sink::{SessionId, Sink, Verdict};
use crate::stats::Stats;
use std::time::Instant;

/// MAIL and RCPT lines may exceed the 512-octet limit by what their
/// extensions add (RFC 1870 SIZE, RFC 3461 ENVID/ORCPT, RFC 5321 4.5.3.1.4).
pub const EXTENSION_ALLOWANCE: usize = 512;

/// Server-wide protocol settings, shared by all sessions.
#[derive(Debug, Clone)]
pub struct Settings {
    pub rendered: Rendered,
    /// Largest accepted message body, in octets (advertised by SIZE).
    pub max_message_size: u64,
    /// Recipients per transaction; the next gets 452 4.5.3.
    pub max_recipients: u32,
    /// Longest command line, CRLF included (RFC 5321: at least 512).
    pub max_line: usize,
    /// Reject (550 5.5.2) DATA bodies holding a bare LF instead of passing them.
    pub reject_bare_lf: bool,
}

impl Settings {
    pub fn new(
        hostname: &str,
        max_message_size: u64,
        max_recipients: u32,
        max_line: usize,
    ) -> Self {
        Self {
            rendered: Rendered::new(hostname, max_message_size),
            max_message_size,
            max_recipients,
            max_line,
            reject_bare_lf: false,
        }
    }
}

/// What one call works with besides the input: the output buffer, the sink,
/// the statistics and the current time.
pub struct Ctx<'a> {
    pub out: &'a mut Vec<u8>,
    pub sink: &'a mut dyn Sink,
    pub stats: &'a mut Stats,
    pub now: Instant,
}

impl Ctx<'_> {
    #[inline]
    fn reply(&mut self, r: &[u8]) {
        self.stats.reply(r);
        self.out.extend_from_slice(r);
    }
}

/// Where the session is in the input stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Reading command lines.
    Command,
    /// Discarding an over-long command line up to its LF; then 500.
    SkipLine,
    /// Inside DATA, looking for `CRLF.CRLF`.
    Data,
    /// Inside a BDAT chunk: `remaining` raw octets still to come. With
    /// `reject` set the chunk is consumed and that reply sent instead.
    Chunk {
        size: u64,
        remaining: u64,
        last: bool,
        reject: Option<Reply>,
    },
    /// The message is complete; the sink has not answered yet.
    AwaitVerdict,
    /// QUIT answered or 421 sent: nothing more is read.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Greeted {
    No,
    Helo,
    Ehlo,
}

/// The mail transaction (RFC 5321 3.3): begun by MAIL, ended by the final
/// reply, RSET, HELO/EHLO or QUIT.
#[derive(Debug, Clone, Copy, Default)]
struct Tx {
    started: Option<Instant>,
    recipients: u32,
    smtputf8: bool,
    body: Body,
    /// A BDAT chunk was accepted: DATA is now out of sequence.
    bdat: bool,
    size: u64,
    too_big: bool,
    bare_lf: bool,
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Session {
    id: SessionId,
    state: State,
    greeted: Greeted,
    tx: Tx,
    unstuffer: Unstuffer,
    /// The server is shutting down: end the session with 421 as soon as the
    /// message in progress is answered, before any command pipelined after it.
    closing: bool,
}

impl Session {
    pub fn new(id: SessionId) -> Self {
        Self {
            id,
            state: State::Command,
            greeted: Greeted::No,
            tx: Tx::default(),
            unstuffer: Unstuffer::new(),
            closing: false,
        }
    }

    pub fn id(&self) -> SessionId {
        self.id
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// True once nothing more will be read: flush the output, then close.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// True while a message body is arriving or awaiting its verdict; a
    /// graceful shutdown lets these finish.
    pub fn in_message(&self) -> bool {
        matches!(
            self.state,
            State::Data | State::Chunk { .. } | State::AwaitVerdict
        ) || self.tx.bdat
    }

    /// Sends the 220 greeting.
    pub fn greet(&mut self, s: &Settings, cx: &mut Ctx<'_>) {
        cx.reply(&s.rendered.greeting);
    }

    /// Ends the session with a 421 (`shutdown` or `timeout` text) and
    /// abandons any transaction.
    pub fn close_with(&mut self, r: &[u8], cx: &mut Ctx<'_>) {
        if self.state == State::Closed {
            return;
        }
        self.reset_tx(cx);
        cx.reply(r);
        self.state = State::Closed;
    }

    /// The peer went away: abandon any transaction. No reply.
    pub fn disconnected(&mut self, cx: &mut Ctx<'_>) {
        self.reset_tx(cx);
        self.state = State::Closed;
    }

    /// Consumes as much of `input` as can be decided now and returns how many
    /// bytes that was. The caller keeps the rest and offers it again, with
    /// more input appended.
    pub fn handle_input(&mut self, s: &Settings, input: &[u8], cx: &mut Ctx<'_>) -> usize {
        let mut pos = 0;
        loop {
            let rest = input.get(pos..).unwrap_or_default();
            let step = match self.state {
                State::Command => self.command(s, rest, cx),
                State::SkipLine => self.skip_line(rest, cx),
                State::Data => self.data(s, rest, cx),
                State::Chunk { .. } => self.chunk(s, rest, cx),
                State::AwaitVerdict | State::Closed => None,
            };
            match step {
                Some(n) => pos += n,
                None => return pos,
            }
            if self.closing && !self.in_message() {
                self.close_with(&s.rendered.shutdown, cx);
                return pos;
            }
        }
    }

    /// Asks for the session to end with the shutdown 421 once the message in
    /// progress (if any) has been answered; see [`Session::handle_input`].
    pub fn close_after_message(&mut self) {
        self.closing = true;
    }

    /// Delivers a sink verdict that was [`Verdict::Pending`]. Input processing
    /// resumes with the next `handle_input` call.
    pub fn resolve(&mut self, verdict: Verdict, cx: &mut Ctx<'_>) {
        if self.state == State::AwaitVerdict {
            self.final_reply(verdict, cx);
        }
    }

    fn command(&mut self, s: &Settings, rest: &[u8], cx: &mut Ctx<'_>) -> Option<usize> {
        let frame = line::next_line(rest, s.max_line + EXTENSION_ALLOWANCE);
        if !matches!(frame, Frame::Partial | Frame::Line { .. }) && command::is_bdat(rest) {
            // A BDAT line we will not execute: its chunk would be read as
            // commands (a smuggling vector), so the session ends here.
            self.close_with(reply::BDAT_DESYNC, cx);
            return Some(0);
        }
        match frame {
            Frame::Partial => None,
            Frame::Overflow { consumed } => {
                self.state = State::SkipLine;
                Some(consumed)
            }
            Frame::TooLong { consumed } => {
                cx.reply(reply::LINE_TOO_LONG);
                Some(consumed)
            }
            Frame::BareLf { consumed } => {
                cx.reply(reply::BARE_LF);
                Some(consumed)
            }
            Frame::Line { line, consumed } => {
                self.execute(s, line, cx);
                Some(consumed)
            }
        }
    }

    fn skip_line(&mut self, rest: &[u8], cx: &mut Ctx<'_>) -> Option<usize> {
        match memchr::memchr(b'\n', rest) {
            Some(lf) => {
                cx.reply(reply::LINE_TOO_LONG);
                self.state = State::Command;
                Some(lf + 1)
            }
            None if rest.is_empty() => None,
            None => Some(rest.len()),
        }
    }

    fn execute(&mut self, s: &Settings, line: &[u8], cx: &mut Ctx<'_>) {
        // NUL, bare CR, TAB and other controls have no place in a command.
        let bad_char = line.iter().any(|&b| b < 0x20 || b == 0x7f);
        let extended = line
            .get(..5)
            .is_some_and(|v| v.eq_ignore_ascii_case(b"MAIL ") || v.eq_ignore_ascii_case(b"RCPT "));
        let limit = s.max_line + if extended { EXTENSION_ALLOWANCE } else { 0 };
        let too_long = line.len() + 2 > limit;
        if (bad_char || too_long) && command::is_bdat(line) {
            return self.close_with(reply::BDAT_DESYNC, cx);
        }
        if bad_char {
            return cx.reply(reply::BAD_CHAR);
        }
        if too_long {
            return cx.reply(reply::LINE_TOO_LONG);
        }
        let pcx = ParseCtx {
            smtputf8: self.tx.smtputf8,
        };
        let cmd = match command::parse(line, pcx) {
            Ok(cmd) => cmd,
            Err(r) => return cx.reply(r),
        };
        match cmd {
            Command::Helo(_) | Command::Ehlo(_) => {
                // A new greeting resets the transaction (RFC 5321 4.1.4).
                self.reset_tx(cx);
                if matches!(cmd, Command::Ehlo(_)) {
                    self.greeted = Greeted::Ehlo;
                    cx.reply(&s.rendered.ehlo);
                } else {
                    self.greeted = Greeted::Helo;
                    cx.reply(&s.rendered.helo);
                }
            }
            Command::Mail(m) => {
                if self.greeted == Greeted::No {
                    cx.reply(reply::NEED_HELO);
                } else if self.tx.started.is_some() {
                    cx.reply(reply::NESTED_MAIL);
                } else if m.size.is_some_and(|n| n > s.max_message_size) {
                    cx.reply(reply::TOO_BIG);
                } else {
                    self.tx = Tx {
                        started: Some(cx.now),
                        smtputf8: m.smtputf8,
                        body: m.body,
                        ..Tx::default()
                    };
                    cx.stats.counters.transactions += 1;
                    cx.sink.mail(self.id, m.path);
                    cx.reply(reply::SENDER_OK);
                }
            }
            Command::Rcpt(r) => {
                if self.tx.started.is_none() {
                    cx.reply(reply::NEED_MAIL);
                } else if self.tx.bdat {
                    // The envelope is complete once content began (RFC 3030 2).
                    cx.reply(reply::RCPT_AFTER_BDAT);
                } else if self.tx.recipients >= s.max_recipients {
                    cx.reply(reply::TOO_MANY_RECIPIENTS);
                } else {
                    self.tx.recipients += 1;
                    cx.stats.counters.recipients += 1;
                    cx.sink.rcpt(self.id, r.path);
                    cx.reply(reply::RECIPIENT_OK);
                }
            }
            Command::Data => {
                if let Some(r) = self.content_refused() {
                    cx.reply(r);
                } else if self.tx.bdat {
                    cx.reply(reply::DATA_AFTER_BDAT);
                } else if self.tx.body == Body::BinaryMime {
                    // RFC 3030 3: BINARYMIME content cannot be sent with DATA.
                    cx.reply(reply::BINARYMIME_NEEDS_BDAT);
                } else {
                    cx.sink.begin(self.id);
                    self.unstuffer = Unstuffer::new();
                    self.state = State::Data;
                    cx.reply(reply::START_DATA);
                }
            }
            Command::Bdat { size, last } => {
                // The chunk is consumed whatever the answer (RFC 3030 2).
                let reject = self.content_refused();
                if reject.is_none() && !self.tx.bdat {
                    self.tx.bdat = true;
                    cx.sink.begin(self.id);
                }
                self.state = State::Chunk {
                    size,
                    remaining: size,
                    last,
                    reject,
                };
            }
            Command::BadBdat { size: Some(size) } => {
                self.state = State::Chunk {
                    size,
                    remaining: size,
                    last: false,
                    reject: Some(reply::SYNTAX_BDAT),
                };
            }
            Command::BadBdat { size: None } => self.close_with(reply::BDAT_DESYNC, cx),
            Command::Rset => {
                self.reset_tx(cx);
                cx.reply(reply::OK);
            }
            Command::Noop => cx.reply(reply::OK),
            Command::Vrfy => cx.reply(reply::VRFY),
            Command::Help => cx.reply(reply::HELP),
            Command::Expn | Command::Obsolete => cx.reply(reply::NOT_IMPLEMENTED),
            Command::Quit => {
                self.reset_tx(cx);
                cx.reply(reply::BYE);
                self.state = State::Closed;
            }
        }
    }

    /// Why message content may not start now, if it may not.
    fn content_refused(&self) -> Option<Reply> {
        if self.tx.started.is_none() {
            Some(reply::NEED_MAIL)
        } else if self.tx.recipients == 0 {
            Some(reply::NEED_RCPT)
        } else {
            None
        }
    }

    fn data(&mut self, s: &Settings, rest: &[u8], cx: &mut Ctx<'_>) -> Option<usize> {
        let (id, max, check_lf) = (self.id, s.max_message_size, s.reject_bare_lf);
        let tx = &mut self.tx;
        let sink = &mut *cx.sink;
        let scan = self.unstuffer.scan(rest, |run| {
            tx.size += run.len() as u64;
            // Runs never end in a CR that precedes an LF (the scanner holds it
            // back), so an LF at a run's start is always bare.
            if check_lf && !tx.bare_lf {
                tx.bare_lf = memchr::memchr_iter(b'\n', run)
                    .any(|i| i == 0 || run.get(i - 1) != Some(&b'\r'));
            }
            if tx.size > max {
                tx.too_big = true;
            } else {
                sink.body(id, run);
            }
        });
        if scan.end {
            self.end_of_content(cx);
            return Some(scan.consumed);
        }
        (scan.consumed > 0).then_some(scan.consumed)
    }

    fn chunk(&mut self, s: &Settings, rest: &[u8], cx: &mut Ctx<'_>) -> Option<usize> {
        let State::Chunk {
            size,
            remaining,
            last,
            reject,
        } = self.state
        else {
            return None;
        };
        let n = usize::try_from(remaining).map_or(rest.len(), |r| r.min(rest.len()));
        if reject.is_none() && n > 0 {
            self.tx.size += n as u64;
            if self.tx.size > s.max_message_size {
                self.tx.too_big = true;
            } else {
                cx.sink.body(self.id, rest.get(..n).unwrap_or_default());
            }
        }
        let remaining = remaining - n as u64;
        if remaining > 0 {
            self.state = State::Chunk {
                size,
                remaining,
                last,
                reject,
            };
            return (n > 0).then_some(n);
        }
        self.state = State::Command;
        match reject {
            Some(r) => cx.reply(r),
            None if last || self.tx.too_big => self.end_of_content(cx),
            None => {
                cx.stats.reply(b"2");
                reply::chunk_received(size, cx.out);
            }
        }
        Some(n)
    }

    /// The body is complete (or over the limit): ask the sink, or refuse.
    fn end_of_content(&mut self, cx: &mut Ctx<'_>) {
        let verdict = if self.tx.too_big {
            cx.sink.abort(self.id);
            Verdict::Rejected(reply::TOO_BIG)
        } else if self.tx.bare_lf {
            cx.sink.abort(self.id);
            Verdict::Rejected(reply::BARE_LF_IN_DATA)
        } else {
            cx.sink.end(self.id)
        };
        if verdict == Verdict::Pending {
            self.state = State::AwaitVerdict;
        } else {
            self.final_reply(verdict, cx);
        }
    }

    fn final_reply(&mut self, verdict: Verdict, cx: &mut Ctx<'_>) {
        match verdict {
            Verdict::Accepted | Verdict::Pending => {
                cx.stats.counters.messages += 1;
                cx.stats.counters.body_bytes += self.tx.size;
                cx.reply(reply::QUEUED);
            }
            Verdict::Rejected(r) => {
                cx.stats.counters.messages_rejected += 1;
                cx.reply(r);
            }
        }
        if let Some(t) = self.tx.started {
            cx.stats.record_latency(cx.now.saturating_duration_since(t));
        }
        self.tx = Tx::default();
        self.state = State::Command;
    }

    fn reset_tx(&mut self, cx: &mut Ctx<'_>) {
        if self.tx.started.is_some() {
            cx.sink.abort(self.id);
        }
        self.tx = Tx::default();
    }
}

#[cfg(test)]
mod tests;
