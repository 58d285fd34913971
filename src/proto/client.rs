//! The client side of one SMTP connection, sans-IO, for the load generator.
//!
//! Owns: which commands are queued, which replies are awaited and in what
//! order, and which messages are in flight. It mirrors [`super::server`]:
//! replies in, commands out (appended to the caller's buffer), events
//! (latencies, finished messages, errors) into the caller's list. The message
//! bytes come from a [`MessageSource`], so this file formats nothing itself.
//!
//! Modes (RFC 2920, RFC 3030 4.2):
//! - lock-step: one command, then its reply, always;
//! - pipelined DATA: MAIL, RCPT..., DATA in one write; the body after 354;
//!   one message in flight, since DATA must wait for 354;
//! - pipelined BDAT: whole transactions (MAIL, RCPT..., BDAT... LAST) written
//!   without waiting, up to `window` in flight, replies matched in order.
//!
//! Invariants: replies are matched strictly in order against `expects`; a
//! message is finished (exactly one [`Event::Done`]) when its last expected
//! reply arrived or its remaining steps were dropped after a refusal.
//!
//! Security: a connection may be TLS from its first byte (implicit), or
//! ask for STARTTLS after its EHLO; either way the driver secures the
//! transport and says when the handshake is done ([`ClientSession::
//! handshake_done`]), and the session greets again. With credentials it
//! then logs in (AUTH PLAIN, or LOGIN) before its first message.
//!
//! Clocks: a server answers pipelined commands in order, so a command's
//! clock starts when the server could first work on it: when it was written
//! or when the reply before it arrived, whichever is later. Without that, a
//! pipelined envelope written with the previous end of data would be charged
//! the wait for that message's final reply.

use super::reply::{self, Parsed};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use core::net::IpAddr;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Supplies the bytes of each message; implemented by the load generator.
pub trait MessageSource {
    /// Recipients per message.
    fn recipients(&self) -> u32;
    /// BDAT chunks per message (used only with CHUNKING).
    fn chunks(&self) -> u32;
    /// Appends `MAIL FROM:<...> [params]\r\n`.
    fn mail(&self, seq: u64, out: &mut Vec<u8>);
    /// Appends `RCPT TO:<...>\r\n` for recipient `i`.
    fn rcpt(&self, seq: u64, i: u32, out: &mut Vec<u8>);
    /// Appends the dot-stuffed content and the final `.\r\n`; `handed` is
    /// when the content went to the server (for a transit time stamp).
    fn data(&self, seq: u64, handed: Instant, out: &mut Vec<u8>);
    /// Appends `BDAT n [LAST]\r\n` and the n octets of chunk `i`; `handed`
    /// is when the first chunk went to the server.
    fn bdat(&self, seq: u64, i: u32, handed: Instant, out: &mut Vec<u8>);
}

/// How the client behaves; fixed for a run.
// Independent switches, one per option.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// The HELO/EHLO argument.
    pub helo_name: String,
    /// Greet with EHLO (needed for PIPELINING and CHUNKING) or HELO.
    pub ehlo: bool,
    /// Pipeline when the server offers PIPELINING.
    pub pipelining: bool,
    /// Send with BDAT (the server must offer CHUNKING).
    pub bdat: bool,
    /// Whole transactions in flight with pipelined BDAT.
    pub window: usize,
    /// Log in with these before the first message.
    pub auth: Option<Credentials>,
    /// Speak LMTP (RFC 2033): LHLO, and one final reply per accepted
    /// recipient.
    pub lmtp: bool,
}

/// AUTH credentials and mechanism.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
    /// LOGIN (three round trips) instead of PLAIN with an initial response.
    pub login: bool,
}

/// How a connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// Plaintext throughout.
    Off,
    /// STARTTLS after the first EHLO (RFC 3207).
    StartTls,
    /// TLS from the first byte (RFC 8314).
    Implicit,
}

/// The phases whose latency is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Connection established -> 220 greeting.
    Greeting,
    /// EHLO/HELO sent -> its reply (after TLS: the second EHLO).
    Ehlo,
    /// Implicit TLS: connection established -> handshake done; STARTTLS:
    /// the command sent -> handshake done.
    Tls,
    /// AUTH sent -> 235, the server's part of every round trip summed.
    Auth,
    /// MAIL -> 354 (DATA) or the last RCPT reply (BDAT).
    Envelope,
    /// End of data (the whole content, or the BDAT LAST chunk) -> final reply.
    Data,
}

/// Where a reply or failure happened, for the error table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// Establishing the connection.
    Connect,
    /// Waiting for the 220.
    Greeting,
    /// EHLO or HELO.
    Ehlo,
    /// STARTTLS (refused, or not offered).
    StartTls,
    /// The TLS handshake.
    Tls,
    /// AUTH (refused, or not offered).
    Auth,
    /// XCLIENT (refused, or not offered).
    Xclient,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA (before the 354).
    Data,
    /// A BDAT chunk that is not the last.
    Bdat,
    /// The end of the message: the final reply.
    EndOfData,
    /// RSET.
    Rset,
    /// QUIT.
    Quit,
    /// The server sent something that is not a reply, or an unexpected one.
    Protocol,
    /// The connection closed while replies were awaited.
    Disconnect,
    /// No reply within the timeout.
    Timeout,
}

impl Stage {
    /// The stage's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "ehlo",
            Stage::StartTls => "starttls",
            Stage::Tls => "tls",
            Stage::Auth => "auth",
            Stage::Xclient => "xclient",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
            Stage::Bdat => "bdat",
            Stage::EndOfData => "end-of-data",
            Stage::Rset => "rset",
            Stage::Quit => "quit",
            Stage::Protocol => "protocol",
            Stage::Disconnect => "disconnect",
            Stage::Timeout => "timeout",
        }
    }
}

/// What the session reports to the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The server took this long for one phase.
    Latency(Phase, Duration),
    /// EHLO/HELO was answered: the connection is ready for mail.
    Ready {
        /// The server offered PIPELINING and the settings use it.
        pipelining: bool,
    },
    /// A message finished: accepted (`ok`) or not. `intended` is when the
    /// schedule wanted it started (open loop; in closed loop the same as
    /// `started`), `started` when the server could first work on its MAIL.
    Done {
        /// The message's sequence number.
        seq: u64,
        /// Accepted by the server.
        ok: bool,
        /// When the schedule wanted it started.
        intended: Instant,
        /// When the server could first work on its MAIL (written, and every
        /// reply before it received).
        started: Instant,
        /// When its last reply came (or the connection ended).
        finished: Instant,
    },
    /// A 4xx/5xx reply (`code`) or a failure without one (`code` 0).
    Error {
        /// Where it happened.
        stage: Stage,
        /// The reply code; 0 when there was no reply.
        code: u16,
    },
}

/// One command waiting to be written (or, for `Hello`, already written by
/// the greeting handler).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Hello,
    StartTls,
    /// An AUTH command or one of its responses.
    Auth,
    /// XCLIENT.
    Xclient,
    /// MAIL FROM.
    Mail,
    Rcpt(u32),
    /// DATA (before the 354).
    Data,
    Body,
    Bdat(u32),
    /// RSET.
    Rset,
    /// QUIT.
    Quit,
}

/// A reply we wait for, and what it answers.
#[derive(Debug, Clone, Copy)]
struct Expect {
    step: Step,
    /// The message's sequence number.
    seq: u64,
    /// When the server could first work on the command: written, and the
    /// reply before it received.
    sent: Instant,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// The message's sequence number.
    seq: u64,
    /// When the schedule wanted it started (open loop only).
    due: Option<Instant>,
    /// When the server could first work on its MAIL.
    started: Instant,
    /// When its content started going out.
    handed: Option<Instant>,
    /// Steps queued or replies awaited that belong to this message.
    outstanding: u32,
    mail_ok: bool,
    rcpt_ok: u32,
    failed: bool,
    /// LMTP: final replies received so far, and whether one accepted.
    finals: u32,
    final_ok: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    /// Implicit TLS: the handshake is not done yet.
    Handshake,
    /// Waiting for the 220.
    Greeting,
    Hello,
    /// STARTTLS sent, its 220 awaited.
    StartTls,
    /// STARTTLS answered: the driver secures the transport.
    Securing,
    /// An AUTH exchange: what was last sent.
    Auth(AuthSent),
    /// XCLIENT sent, its 220 awaited.
    Xclient,
    Ready,
    Quitting,
    Closed,
}

/// The last thing an AUTH exchange sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthSent {
    /// `AUTH PLAIN <response>`, or LOGIN's password: 235 comes next.
    Final,
    /// `AUTH LOGIN`: the user name is asked for next.
    Login,
    /// LOGIN's user name: the password is asked for next.
    User,
}

/// What a reply to one step of a message means for the rest of it.
#[derive(Debug, Default)]
struct After {
    /// The message was accepted.
    finished_ok: bool,
    /// Its steps still queued are not sent.
    drop_rest: bool,
    /// And RSET goes first: the server still holds the transaction.
    reset: bool,
}

/// Marks steps that belong to no message (RSET, QUIT, EHLO).
const NO_MESSAGE: u64 = u64::MAX;

/// One connection's client state.
// What the server offered and whether the link is secured: independent
// facts, not a state in disguise (that is `conn`).
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug)]
pub struct ClientSession {
    conn: Conn,
    connected: Instant,
    pipelining: bool,
    chunking: bool,
    queue: VecDeque<(Step, u64)>,
    expects: VecDeque<Expect>,
    inflight: VecDeque<InFlight>,
    /// DATA was sent; nothing more until its 354 (or refusal).
    awaiting_354: bool,
    started: u64,
    last_progress: Instant,
    tls: Tls,
    /// The transport is TLS (the handshake is done).
    secure: bool,
    /// When STARTTLS was written.
    starttls_sent: Instant,
    /// The server's share of an AUTH exchange so far.
    auth_time: Duration,
    /// It got ready once (it may have closed since).
    was_ready: bool,
    /// XCLIENT names this client after the first EHLO.
    xclient: Option<IpAddr>,
}

impl ClientSession {
    /// A plaintext session on a connection that was just established.
    pub fn new(now: Instant) -> Self {
        Self::with_tls(now, Tls::Off)
    }

    /// A session on a connection that was just established, secured as
    /// `tls` says (implicit: the greeting is awaited once the driver says
    /// the handshake is done).
    pub fn with_tls(now: Instant, tls: Tls) -> Self {
        Self {
            conn: if tls == Tls::Implicit {
                Conn::Handshake
            } else {
                Conn::Greeting
            },
            connected: now,
            pipelining: false,
            chunking: false,
            queue: VecDeque::new(),
            expects: VecDeque::new(),
            inflight: VecDeque::new(),
            awaiting_354: false,
            started: 0,
            last_progress: now,
            tls,
            secure: false,
            starttls_sent: now,
            auth_time: Duration::ZERO,
            was_ready: false,
            xclient: None,
        }
    }

    /// After its first EHLO the session sends `XCLIENT ADDR=addr` (a
    /// trusted client speaking for another, Postfix's `XCLIENT_README`)
    /// and greets again after the server's 220.
    #[must_use]
    pub fn xclient_as(mut self, addr: Option<IpAddr>) -> Self {
        self.xclient = addr;
        self
    }

    /// Whether the session ever got ready for mail (greeted, secured and
    /// logged in as asked), even if it has closed since.
    pub fn ever_ready(&self) -> bool {
        self.was_ready
    }

    /// The STARTTLS reply came: the driver must secure the transport (and
    /// drop any bytes read after that reply), then call
    /// [`ClientSession::handshake_done`].
    pub fn wants_tls(&self) -> bool {
        self.conn == Conn::Securing
    }

    /// When STARTTLS was written (the start of the `tls` phase).
    pub fn starttls_sent(&self) -> Instant {
        self.starttls_sent
    }

    /// The driver finished the TLS handshake at `now`: an implicit-TLS
    /// session awaits its greeting from now on; after STARTTLS the session
    /// greets again (RFC 3207 4.2).
    pub fn handshake_done(&mut self, s: &ClientSettings, now: Instant, out: &mut Vec<u8>) {
        self.secure = true;
        self.last_progress = now;
        match self.conn {
            Conn::Handshake => {
                self.connected = now;
                self.conn = Conn::Greeting;
            }
            Conn::Securing => self.hello(s, now, out),
            _ => {}
        }
    }

    /// Messages started on this connection.
    pub fn started(&self) -> u64 {
        self.started
    }

    /// Messages started and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// True once the connection is done with (QUIT answered, error, close).
    pub fn is_closed(&self) -> bool {
        self.conn == Conn::Closed
    }

    /// True once greeted, secured and logged in as the settings ask.
    pub fn is_ready(&self) -> bool {
        matches!(self.conn, Conn::Ready | Conn::Quitting | Conn::Closed)
    }

    /// True when greeted and nothing is in flight or queued.
    pub fn is_idle(&self) -> bool {
        self.conn == Conn::Ready && self.inflight.is_empty() && self.queue.is_empty()
    }

    /// When a reply was last received or a command last sent while replies
    /// were awaited; `None` when nothing is awaited.
    pub fn waiting_since(&self) -> Option<Instant> {
        let between = matches!(self.conn, Conn::Greeting | Conn::Handshake | Conn::Securing);
        (!self.expects.is_empty() || between).then_some(self.last_progress)
    }

    /// Whether the server offered what the settings need (after the greeting).
    pub fn lacks_chunking(&self, s: &ClientSettings) -> bool {
        self.is_ready() && s.bdat && !self.chunking
    }

    /// Messages this connection may have in flight at once.
    fn window(&self, s: &ClientSettings) -> usize {
        match (self.pipelining, s.bdat) {
            (true, true) => s.window.max(1),
            // The next envelope rides in the same write as the end of data
            // (RFC 2920 3.1: content may open a group that ends with DATA).
            (true, false) => 2,
            (false, _) => 1,
        }
    }

    /// True when a new message may start now.
    pub fn can_start(&self, s: &ClientSettings) -> bool {
        self.conn == Conn::Ready
            && self.inflight.len() < self.window(s)
            && (!s.bdat || self.chunking)
    }

    /// Starts message `seq`; `due` is its scheduled start in an open loop
    /// (`None`: closed loop, measured from when the server could start it).
    pub fn start(
        &mut self,
        s: &ClientSettings,
        src: &dyn MessageSource,
        seq: u64,
        due: Option<Instant>,
        now: Instant,
        out: &mut Vec<u8>,
    ) {
        let rcpts = src.recipients();
        let mut steps = 1 + rcpts;
        self.queue.push_back((Step::Mail, seq));
        for i in 0..rcpts {
            self.queue.push_back((Step::Rcpt(i), seq));
        }
        if s.bdat {
            for i in 0..src.chunks() {
                self.queue.push_back((Step::Bdat(i), seq));
            }
            steps += src.chunks();
        } else {
            self.queue.push_back((Step::Data, seq));
            self.queue.push_back((Step::Body, seq));
            steps += 2;
        }
        self.inflight.push_back(InFlight {
            seq,
            due,
            started: now,
            handed: None,
            outstanding: steps,
            mail_ok: false,
            rcpt_ok: 0,
            failed: false,
            finals: 0,
            final_ok: false,
        });
        self.started += 1;
        self.pump(src, now, out);
    }

    /// Sends QUIT once everything in flight has finished (greeted sessions
    /// only; the driver simply closes others).
    pub fn quit(&mut self, src: &dyn MessageSource, now: Instant, out: &mut Vec<u8>) {
        if self.conn == Conn::Ready {
            self.queue.push_back((Step::Quit, NO_MESSAGE));
            self.conn = Conn::Quitting;
            self.pump(src, now, out);
        }
    }

    /// The connection ended (closed by the peer, an I/O error, a timeout):
    /// everything in flight fails. `stage` says why, if it is an error.
    pub fn closed(&mut self, stage: Option<Stage>, now: Instant, events: &mut Vec<Event>) {
        if self.conn == Conn::Closed {
            return;
        }
        let quitting = self.conn == Conn::Quitting && self.inflight.is_empty();
        if let Some(stage) = stage.filter(|_| !quitting) {
            events.push(Event::Error { stage, code: 0 });
        }
        for m in self.inflight.drain(..) {
            events.push(m.done(false, now));
        }
        self.queue.clear();
        self.expects.clear();
        self.conn = Conn::Closed;
    }

    /// Consumes the complete replies at the start of `input`, writes what
    /// they allow into `out`, and returns the bytes consumed. Malformed input
    /// closes the session (reported as a protocol error).
    pub fn on_input(
        &mut self,
        s: &ClientSettings,
        src: &dyn MessageSource,
        input: &[u8],
        now: Instant,
        out: &mut Vec<u8>,
        events: &mut Vec<Event>,
    ) -> usize {
        let mut pos = 0;
        // Nothing after the STARTTLS reply is read as a reply: it is dropped
        // when the transport is secured (RFC 3207 4.2's rule, client side).
        while !matches!(self.conn, Conn::Closed | Conn::Securing | Conn::Handshake) {
            let rest = input.get(pos..).unwrap_or_default();
            match reply::parse(rest) {
                Parsed::Partial => break,
                Parsed::Malformed => {
                    self.closed(Some(Stage::Protocol), now, events);
                    break;
                }
                Parsed::Complete { code, len } => {
                    pos += len;
                    self.last_progress = now;
                    self.on_reply(
                        s,
                        src,
                        code,
                        rest.get(..len).unwrap_or_default(),
                        now,
                        out,
                        events,
                    );
                }
            }
        }
        self.pump(src, now, out);
        pos
    }

    #[allow(clippy::too_many_arguments)]
    fn on_reply(
        &mut self,
        s: &ClientSettings,
        src: &dyn MessageSource,
        code: u16,
        text: &[u8],
        now: Instant,
        out: &mut Vec<u8>,
        events: &mut Vec<Event>,
    ) {
        match self.conn {
            Conn::Greeting => self.on_greeting(s, code, now, out, events),
            Conn::Hello => self.on_hello(s, code, text, now, out, events),
            Conn::StartTls => self.on_starttls(code, now, events),
            Conn::Auth(sent) => self.on_auth(s, sent, code, now, out, events),
            Conn::Xclient => self.on_xclient(s, code, now, out, events),
            Conn::Ready | Conn::Quitting => self.on_answer(s, src, code, now, events),
            Conn::Closed | Conn::Handshake | Conn::Securing => {}
        }
    }

    /// The 220 (or not): EHLO/HELO goes out.
    fn on_greeting(
        &mut self,
        s: &ClientSettings,
        code: u16,
        now: Instant,
        out: &mut Vec<u8>,
        events: &mut Vec<Event>,
    ) {
        events.push(Event::Latency(Phase::Greeting, now - self.connected));
        self.hello_after(s, Stage::Greeting, code, now, out, events);
    }

    /// A 220 (the greeting, XCLIENT's) lets EHLO go out; anything else is
    /// an error at `stage` and ends the session.
    fn hello_after(
        &mut self,
        s: &ClientSettings,
        stage: Stage,
        code: u16,
        now: Instant,
        out: &mut Vec<u8>,
        events: &mut Vec<Event>,
    ) {
        if code == 220 {
            self.hello(s, now, out);
        } else {
            events.push(Event::Error { stage, code });
            self.closed(None, now, events);
        }
    }

    /// Writes EHLO (or HELO, or LMTP's LHLO) and awaits its reply.
    fn hello(&mut self, s: &ClientSettings, now: Instant, out: &mut Vec<u8>) {
        out.extend_from_slice(match (s.lmtp, s.ehlo) {
            (true, _) => b"LHLO ",
            (false, true) => b"EHLO ",
            (false, false) => b"HELO ",
        });
        out.extend_from_slice(s.helo_name.as_bytes());
        out.extend_from_slice(b"\r\n");
        self.expect(Step::Hello, now);
        self.conn = Conn::Hello;
    }

    fn expect(&mut self, step: Step, now: Instant) {
        self.expects.push_back(Expect {
            step,
            seq: NO_MESSAGE,
            sent: now,
        });
        self.last_progress = now;
    }

    /// The EHLO/HELO reply: which extensions the server offers; then
    /// STARTTLS or AUTH where the settings want them, or ready.
    fn on_hello(
        &mut self,
        s: &ClientSettings,
        code: u16,
        text: &[u8],
        now: Instant,
        out: &mut Vec<u8>,
        events: &mut Vec<Event>,
    ) {
        let sent = self.expects.pop_front().map_or(now, |e| e.sent);
        events.push(Event::Latency(Phase::Ehlo, now - sent));
        if !(200..300).contains(&code) {
            events.push(Event::Error {
                stage: Stage::Ehlo,
                code,
            });
            return self.closed(None, now, events);
        }
        // What the server offers now (after TLS it may offer other things).
        let (mut starttls, mut auth) = (false, false);
        self.pipelining = false;
        self.chunking = false;
        for line in reply::ehlo_lines(text) {
            let kw = line.split(|&b| b == b' ').next().unwrap_or_default();
            self.pipelining |= s.pipelining && kw.eq_ignore_ascii_case(b"PIPELINING");
            self.chunking |= kw.eq_ignore_ascii_case(b"CHUNKING");
            starttls |= kw.eq_ignore_ascii_case(b"STARTTLS");
            auth |= kw.eq_ignore_ascii_case(b"AUTH")
                && s.auth.as_ref().is_some_and(|c| offers(line, c));
        }
        if !s.ehlo && !s.lmtp {
            self.pipelining = false;
        }
        if let Some(addr) = self.xclient.take() {
            out.extend_from_slice(b"XCLIENT ADDR=");
            if addr.is_ipv6() {
                out.extend_from_slice(b"IPV6:");
            }
            out.extend_from_slice(addr.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
            self.expect(Step::Xclient, now);
            self.conn = Conn::Xclient;
            return;
        }
        if self.tls == Tls::StartTls && !self.secure {
            if !starttls {
                events.push(Event::Error {
                    stage: Stage::StartTls,
                    code: 0,
                });
                return self.closed(None, now, events);
            }
            out.extend_from_slice(b"STARTTLS\r\n");
            self.expect(Step::StartTls, now);
            self.starttls_sent = now;
            self.conn = Conn::StartTls;
            return;
        }
        if let Some(c) = &s.auth {
            if !auth {
                events.push(Event::Error {
                    stage: Stage::Auth,
                    code: 0,
                });
                return self.closed(None, now, events);
            }
            self.auth_time = Duration::ZERO;
            let sent = if c.login {
                out.extend_from_slice(b"AUTH LOGIN\r\n");
                AuthSent::Login
            } else {
                out.extend_from_slice(b"AUTH PLAIN ");
                let plain = format!("\0{}\0{}", c.user, c.password);
                out.extend_from_slice(STANDARD.encode(plain).as_bytes());
                out.extend_from_slice(b"\r\n");
                AuthSent::Final
            };
            self.expect(Step::Auth, now);
            self.conn = Conn::Auth(sent);
            return;
        }
        self.ready(events);
    }

    fn ready(&mut self, events: &mut Vec<Event>) {
        self.conn = Conn::Ready;
        self.was_ready = true;
        events.push(Event::Ready {
            pipelining: self.pipelining,
        });
    }

    /// The reply to XCLIENT: 220, and the session greets again as the
    /// client it named.
    fn on_xclient(
        &mut self,
        s: &ClientSettings,
        code: u16,
        now: Instant,
        out: &mut Vec<u8>,
        events: &mut Vec<Event>,
    ) {
        self.expects.pop_front();
        self.hello_after(s, Stage::Xclient, code, now, out, events);
    }

    /// The reply to STARTTLS: 220, and the driver secures the transport.
    fn on_starttls(&mut self, code: u16, now: Instant, events: &mut Vec<Event>) {
        self.expects.pop_front();
        if code == 220 {
            self.conn = Conn::Securing;
        } else {
            events.push(Event::Error {
                stage: Stage::StartTls,
                code,
            });
            self.closed(None, now, events);
        }
    }

    /// A reply in an AUTH exchange.
    fn on_auth(
        &mut self,
        s: &ClientSettings,
        sent: AuthSent,
        code: u16,
        now: Instant,
        out: &mut Vec<u8>,
        events: &mut Vec<Event>,
    ) {
        let at = self.expects.pop_front().map_or(now, |e| e.sent);
        self.auth_time += now.saturating_duration_since(at);
        let answer = match (sent, code, &s.auth) {
            (AuthSent::Final, 235, _) => {
                events.push(Event::Latency(Phase::Auth, self.auth_time));
                return self.ready(events);
            }
            (AuthSent::Login, 334, Some(c)) => {
                self.conn = Conn::Auth(AuthSent::User);
                &c.user
            }
            (AuthSent::User, 334, Some(c)) => {
                self.conn = Conn::Auth(AuthSent::Final);
                &c.password
            }
            _ => {
                events.push(Event::Error {
                    stage: Stage::Auth,
                    code,
                });
                return self.closed(None, now, events);
            }
        };
        out.extend_from_slice(STANDARD.encode(answer).as_bytes());
        out.extend_from_slice(b"\r\n");
        self.expect(Step::Auth, now);
    }

    /// A reply to the oldest command awaiting one.
    fn on_answer(
        &mut self,
        s: &ClientSettings,
        src: &dyn MessageSource,
        code: u16,
        now: Instant,
        events: &mut Vec<Event>,
    ) {
        let Some(e) = self.expects.pop_front() else {
            // A reply nobody asked for.
            events.push(Event::Error {
                stage: Stage::Protocol,
                code,
            });
            return self.closed(None, now, events);
        };
        self.next_may_start(now);
        if code == 421 {
            // The server is closing: whatever was awaited has failed.
            events.push(Event::Error {
                stage: stage_of(e.step),
                code,
            });
            return self.closed(None, now, events);
        }
        match e.step {
            Step::Quit => return self.closed(None, now, events),
            Step::Rset => {
                if !(200..300).contains(&code) {
                    events.push(Event::Error {
                        stage: Stage::Rset,
                        code,
                    });
                }
                return;
            }
            _ => {}
        }
        let Some(idx) = self.inflight.iter().position(|m| m.seq == e.seq) else {
            return;
        };
        if s.lmtp && self.lmtp_more(src, e, code, idx, events) {
            // More final replies of this message are due.
            self.expects.push_front(e);
            return;
        }
        let After {
            finished_ok,
            drop_rest,
            reset,
        } = self.judge(s, src, e, code, now, idx, events);
        if drop_rest {
            let seq = e.seq;
            let before = self.queue.len();
            self.queue.retain(|(_, q)| *q != seq);
            let dropped = u32::try_from(before - self.queue.len()).unwrap_or(u32::MAX);
            if let Some(m) = self.inflight.get_mut(idx) {
                m.outstanding = m.outstanding.saturating_sub(dropped);
            }
            if reset {
                // The server still holds the transaction MAIL opened.
                self.queue.push_front((Step::Rset, NO_MESSAGE));
            }
        }
        if self.inflight.get(idx).is_some_and(|m| m.outstanding == 0) {
            if let Some(m) = self.inflight.remove(idx) {
                events.push(m.done(finished_ok && !m.failed, now));
            }
        }
    }

    /// LMTP: one final reply per accepted recipient (RFC 2033 4.2), in
    /// order. Counts this one if it is a final reply; true while more are
    /// due (the last goes on to `judge`). A refusal is an error of its own.
    fn lmtp_more(
        &mut self,
        src: &dyn MessageSource,
        e: Expect,
        code: u16,
        idx: usize,
        events: &mut Vec<Event>,
    ) -> bool {
        let last_chunk = src.chunks().saturating_sub(1);
        if !matches!(e.step, Step::Body) && e.step != Step::Bdat(last_chunk) {
            return false;
        }
        let Some(m) = self.inflight.get_mut(idx) else {
            return false;
        };
        if m.failed {
            // A refused chunk or command ended the transaction: the server
            // answers what follows once, not per recipient.
            return false;
        }
        m.finals += 1;
        if m.finals >= m.rcpt_ok.max(1) {
            return false;
        }
        if (200..300).contains(&code) {
            m.final_ok = true;
        } else {
            events.push(Event::Error {
                stage: Stage::EndOfData,
                code,
            });
        }
        true
    }

    /// What the reply `code` to step `e` of message `idx` means for it.
    #[allow(clippy::too_many_arguments)]
    fn judge(
        &mut self,
        s: &ClientSettings,
        src: &dyn MessageSource,
        e: Expect,
        code: u16,
        now: Instant,
        idx: usize,
        events: &mut Vec<Event>,
    ) -> After {
        let ok = (200..300).contains(&code);
        let last_rcpt = src.recipients().saturating_sub(1);
        let lockstep = !self.pipelining;
        let mut after = After::default();
        let Some(m) = self.inflight.get_mut(idx) else {
            return after;
        };
        m.outstanding = m.outstanding.saturating_sub(1);
        let refused = |m: &mut InFlight, events: &mut Vec<Event>, stage| {
            events.push(Event::Error { stage, code });
            m.failed = true;
        };
        match e.step {
            Step::Mail => {
                if ok {
                    m.mail_ok = true;
                } else {
                    refused(m, events, Stage::Mail);
                    after.drop_rest = lockstep;
                }
            }
            Step::Rcpt(i) => {
                if ok {
                    m.rcpt_ok += 1;
                } else {
                    events.push(Event::Error {
                        stage: Stage::Rcpt,
                        code,
                    });
                }
                if i == last_rcpt {
                    if s.bdat {
                        events.push(Event::Latency(Phase::Envelope, now - m.started));
                    }
                    if m.rcpt_ok == 0 && lockstep {
                        m.failed = true;
                        after.drop_rest = true;
                        after.reset = m.mail_ok;
                    }
                }
            }
            Step::Data => {
                self.awaiting_354 = false;
                if code == 354 {
                    events.push(Event::Latency(Phase::Envelope, now - m.started));
                } else {
                    refused(m, events, Stage::Data);
                    after.drop_rest = true;
                    after.reset = m.mail_ok;
                }
            }
            Step::Body => {
                events.push(Event::Latency(Phase::Data, now - e.sent));
                if ok || m.final_ok {
                    // Accepted for nobody is not delivered; in LMTP,
                    // delivered to one recipient is delivered.
                    after.finished_ok = !m.failed && m.rcpt_ok > 0;
                }
                if !ok {
                    events.push(Event::Error {
                        stage: Stage::EndOfData,
                        code,
                    });
                    m.failed |= !m.final_ok;
                }
            }
            Step::Bdat(i) => {
                let last = i + 1 == src.chunks();
                if last {
                    events.push(Event::Latency(Phase::Data, now - e.sent));
                }
                if last && !ok && m.final_ok {
                    // LMTP: refused for this recipient, delivered to another.
                    events.push(Event::Error {
                        stage: Stage::EndOfData,
                        code,
                    });
                    after.finished_ok = !m.failed && m.rcpt_ok > 0;
                } else if !ok && !m.failed {
                    refused(m, events, if last { Stage::EndOfData } else { Stage::Bdat });
                    after.drop_rest = lockstep;
                } else if !ok {
                    events.push(Event::Error {
                        stage: Stage::Bdat,
                        code,
                    });
                } else if last {
                    after.finished_ok = !m.failed && m.rcpt_ok > 0;
                }
            }
            Step::Hello | Step::StartTls | Step::Auth | Step::Xclient | Step::Rset | Step::Quit => {
            }
        }
        after
    }

    /// The reply before the oldest awaited command arrived: the server can
    /// work on that command from now on, so its clock (and, for a MAIL, its
    /// message's) starts no earlier.
    fn next_may_start(&mut self, now: Instant) {
        let Some(next) = self.expects.front_mut() else {
            return;
        };
        next.sent = next.sent.max(now);
        if next.step == Step::Mail {
            let seq = next.seq;
            if let Some(m) = self.inflight.iter_mut().find(|m| m.seq == seq) {
                m.started = m.started.max(now);
            }
        }
    }

    /// Writes queued commands as far as the mode allows.
    fn pump(&mut self, src: &dyn MessageSource, now: Instant, out: &mut Vec<u8>) {
        if !matches!(self.conn, Conn::Ready | Conn::Quitting) {
            return;
        }
        while let Some(&(step, seq)) = self.queue.front() {
            if self.awaiting_354 || (!self.pipelining && !self.expects.is_empty()) {
                break;
            }
            // QUIT waits for everything else.
            if step == Step::Quit && !self.expects.is_empty() {
                break;
            }
            self.queue.pop_front();
            match step {
                Step::Mail => {
                    // Latency "from MAIL sent" starts here, not when the
                    // message was queued behind another one.
                    if let Some(m) = self.inflight.iter_mut().find(|m| m.seq == seq) {
                        m.started = now;
                    }
                    src.mail(seq, out);
                }
                Step::Rcpt(i) => src.rcpt(seq, i, out),
                Step::Data => {
                    out.extend_from_slice(b"DATA\r\n");
                    self.awaiting_354 = true;
                }
                Step::Body | Step::Bdat(_) => {
                    let handed = match self.inflight.iter_mut().find(|m| m.seq == seq) {
                        Some(m) => *m.handed.get_or_insert(now),
                        None => now,
                    };
                    match step {
                        Step::Bdat(i) => src.bdat(seq, i, handed, out),
                        _ => src.data(seq, handed, out),
                    }
                }
                Step::Rset => out.extend_from_slice(b"RSET\r\n"),
                // Written as the dialogue goes, never queued.
                Step::Hello | Step::StartTls | Step::Auth | Step::Xclient => {}
                Step::Quit => out.extend_from_slice(b"QUIT\r\n"),
            }
            if self.expects.is_empty() {
                self.last_progress = now;
            }
            self.expects.push_back(Expect {
                step,
                seq,
                sent: now,
            });
        }
    }
}

impl InFlight {
    fn done(&self, ok: bool, finished: Instant) -> Event {
        Event::Done {
            seq: self.seq,
            ok,
            intended: self.due.unwrap_or(self.started),
            started: self.started,
            finished,
        }
    }
}

/// Whether an `AUTH mech1 mech2...` EHLO line offers the mechanism `c`
/// uses.
fn offers(keyword: &[u8], c: &Credentials) -> bool {
    let want: &[u8] = if c.login { b"LOGIN" } else { b"PLAIN" };
    keyword
        .split(|&b| b == b' ')
        .skip(1)
        .any(|m| m.eq_ignore_ascii_case(want))
}

fn stage_of(step: Step) -> Stage {
    match step {
        Step::Mail => Stage::Mail,
        Step::Rcpt(_) => Stage::Rcpt,
        Step::Data => Stage::Data,
        Step::Body => Stage::EndOfData,
        Step::Bdat(_) => Stage::Bdat,
        Step::Rset => Stage::Rset,
        Step::Hello => Stage::Ehlo,
        Step::StartTls => Stage::StartTls,
        Step::Auth => Stage::Auth,
        Step::Xclient => Stage::Xclient,
        Step::Quit => Stage::Quit,
    }
}

#[cfg(test)]
mod tests;
