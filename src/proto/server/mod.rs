//! The server side of one SMTP session, sans-IO (RFC 5321, 2920, 3030).
//!
//! Owns: session state ([`State`], changed only by `Session::enter`, which
//! reports every `from -> to` to the [`Observer`]), the transaction (envelope
//! counts, body size), the session's clocks (idle, command line, data rate)
//! and the state machine over input bytes. Semantic events go in:
//! [`Session::start`], [`Session::handle_input`] (bytes), [`Session::on_timer`],
//! [`Session::complete`] (a sink's deferred verdict), [`Session::wrote`],
//! [`Session::shutdown`], [`Session::disconnected`]. Out come replies (appended
//! to the caller's buffer), calls to the [`Sink`] and [`Observer`] (small
//! traits owned here, so this module depends on nothing above it), one typed
//! [`Request`] to the I/O layer after each event, and [`Session::deadline`].
//! No sockets, no clock reads (the time is passed in), no allocation per
//! command or per message.
//!
//! Commands are rows of a table (`verbs`): the phases a verb is allowed in,
//! a check step, a proceed step. End of data is a row too.
//!
//! Invariants: every command line gets exactly one reply; nothing after QUIT
//! or a 421 is read; no input is consumed while a verdict is pending or a
//! reply is held, or once the output holds `Ctx::out_limit` bytes.

pub mod auth;
mod policy;
mod settings;
mod verbs;

pub use policy::{Act, Decision, Interest, Policy, Query, RuleReply, Stage};
pub use settings::{AuthOffer, Security, Settings, Timeouts};
pub use verbs::{row, rows, Phase, Row};

use super::command::{self, Body, Command, ParseCtx, Verb};
use super::dot::Unstuffer;
use super::forward::Client;
use super::line::{self, Frame};
use super::reply::ReplyId;
use core::net::SocketAddr;
use std::time::{Duration, Instant};

/// MAIL and RCPT lines may exceed the 512-octet limit by what their
/// extensions add (RFC 1870 SIZE, RFC 3461 ENVID/ORCPT, RFC 5321 4.5.3.1.4).
pub const EXTENSION_ALLOWANCE: usize = 512;

/// Identifies one session for the lifetime of its server. The reactor packs
/// the connection's slot (low 32 bits) and a serial number (high 32) into it,
/// so a deferred verdict finds its connection and a stale one is ignored.
pub type SessionId = u64;

/// The sink's answer at the end of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Stored (or deliberately dropped): `250 2.0.0 Ok: queued`.
    Accepted,
    /// Send this reply instead (4xx or 5xx): the message is not kept.
    Rejected(ReplyId),
    /// The reply waits for [`Session::complete`].
    Pending,
}

/// Receives transactions. All calls for one id arrive in protocol order:
/// `mail`, `rcpt`*, `begin`, `body`*, then `end` or `abort`; `abort` may also
/// come at any point after `mail` (RSET, EHLO, QUIT, disconnect), even after
/// an `end` whose final reply was never sent — a [`Verdict::Pending`] whose
/// session was dropped or timed out before the verdict (after `--timeout`),
/// or an accepted message whose delayed 250 was dropped — since the client
/// was never told: the message must not count as delivered. `closed` comes
/// last, once.
pub trait Sink {
    /// The connection from `peer` is up (the greeting goes out next).
    fn connected(&mut self, _id: SessionId, _peer: SocketAddr) {}
    /// HELO or EHLO accepted: the name the client gave, and the protocol
    /// so far (for a trace header's "with", RFC 3848).
    fn hello(&mut self, _id: SessionId, _name: &[u8], _with: With) {}
    /// AUTH succeeded: the protocol becomes ESMTPA or ESMTPSA.
    fn authenticated(&mut self, _id: SessionId) {}
    /// MAIL accepted; `reverse_path` is empty for the null path.
    fn mail(&mut self, _id: SessionId, _reverse_path: &[u8]) {}
    /// RCPT accepted.
    fn rcpt(&mut self, _id: SessionId, _forward_path: &[u8]) {}
    /// The message content starts (354 sent, or the first BDAT chunk).
    fn begin(&mut self, _id: SessionId) {}
    /// A run of body bytes, already unstuffed (DATA) or raw (BDAT).
    fn body(&mut self, id: SessionId, chunk: &[u8]);
    /// The whole body has arrived.
    fn end(&mut self, id: SessionId) -> Verdict;
    /// The transaction was abandoned; forget it.
    fn abort(&mut self, _id: SessionId) {}
    /// The session ended; nothing more will come for `id`.
    fn closed(&mut self, _id: SessionId) {}
    /// A trusted proxy said who the real client is: XCLIENT for the rest of
    /// the session (`transaction` false; a new `connected` came first when
    /// it named an address), XFORWARD for the transaction whose `mail`
    /// comes next (`transaction` true). What trace headers name.
    fn client(&mut self, _id: SessionId, _client: &Client, _transaction: bool) {}
    /// LMTP: the recipient at `index` (in `rcpt` order, counting those
    /// still listed) will be refused at the end of the data, as a rule
    /// decided; comes before `begin`, so what is kept need not name it.
    fn refused_rcpt(&mut self, _id: SessionId, _index: usize) {}
    /// True while the sink cannot take more content (its queue to the disk
    /// is full): the loop then reads from no connection, and the sink wakes
    /// it through its `Completer` once it can take more. Bounds what a disk
    /// slower than the network can make the server hold.
    fn pressure(&self) -> bool {
        false
    }
}

/// The protocol a session speaks, as a trace header's "with" names it
/// (RFC 3848).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum With {
    /// HELO.
    #[default]
    Smtp,
    /// EHLO.
    Esmtp,
    /// EHLO over TLS.
    Esmtps,
    /// EHLO, authenticated.
    Esmtpa,
    /// EHLO over TLS, authenticated.
    Esmtpsa,
    /// LHLO (RFC 3848: LMTP and its S/A/SA forms).
    Lmtp,
    /// LHLO over TLS.
    Lmtps,
    /// LHLO, authenticated.
    Lmtpa,
    /// LHLO over TLS, authenticated.
    Lmtpsa,
}

impl With {
    /// After HELO (`ehlo` false) or EHLO, on a secured session or not.
    pub fn of(ehlo: bool, secure: bool) -> Self {
        match (ehlo, secure) {
            (false, _) => With::Smtp,
            (true, false) => With::Esmtp,
            (true, true) => With::Esmtps,
        }
    }

    /// The same once AUTH succeeded.
    #[must_use]
    pub fn authenticated(self) -> Self {
        match self {
            With::Esmtp => With::Esmtpa,
            With::Esmtps => With::Esmtpsa,
            With::Lmtp => With::Lmtpa,
            With::Lmtps => With::Lmtpsa,
            w => w,
        }
    }

    /// The same for LHLO.
    #[must_use]
    pub fn lmtp(self) -> Self {
        match self {
            With::Smtp | With::Esmtp => With::Lmtp,
            With::Esmtps => With::Lmtps,
            With::Esmtpa => With::Lmtpa,
            With::Esmtpsa => With::Lmtpsa,
            w => w,
        }
    }

    /// The keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            With::Smtp => "SMTP",
            With::Esmtp => "ESMTP",
            With::Esmtps => "ESMTPS",
            With::Esmtpa => "ESMTPA",
            With::Esmtpsa => "ESMTPSA",
            With::Lmtp => "LMTP",
            With::Lmtps => "LMTPS",
            With::Lmtpa => "LMTPA",
            With::Lmtpsa => "LMTPSA",
        }
    }
}

/// How a message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its final reply was a success.
    Accepted,
    /// It was refused.
    Rejected,
    /// It got its 250 but a rule said to keep nothing (accept-but-drop).
    Dropped,
}

/// Why a session was timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// Nothing sent or read for `Timeouts::idle`.
    Idle,
    /// A command line not complete within `Timeouts::command`.
    Command,
    /// Message content slower than `Timeouts::data_min_rate`.
    DataRate,
}

/// Told what happened, for counting and tracing (the statistics implement it).
pub trait Observer {
    /// What the session counted during one event (replies by class,
    /// transactions, recipients): reported once per event, not per reply.
    fn counted(&mut self, counts: &Counts);
    /// A message got its final reply, `latency` after its MAIL.
    fn message(&mut self, outcome: Outcome, body_bytes: u64, latency: Duration);
    /// The session is being closed for a timeout.
    fn timeout(&mut self, kind: Timeout);
    /// The session moved from one state to another (only with [`Ctx::trace`]).
    fn transition(&mut self, _id: SessionId, _from: State, _to: State) {}
    /// A reply a [`Policy`] made was sent, with this code.
    fn rule_reply(&mut self, _code: u16) {}
}

/// Plain counts a session gathers during one event and reports at its end.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// MAILs accepted: transactions begun.
    pub transactions: u32,
    /// RCPTs accepted.
    pub recipients: u32,
}

impl Counts {
    /// Nothing was counted.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.transactions == 0 && self.recipients == 0
    }
}

/// Replies sent, by [`ReplyId`] (`ReplyId as usize`); their codes are fixed
/// (`ReplyId::CODES`). The loop owns one and every session counts into it
/// directly: one increment per reply, nothing to gather and report.
pub type Tally = [u64; ReplyId::COUNT];

// Every reply has its bit in `ReplyId::ERRORS`.
const _: () = assert!(ReplyId::COUNT <= 128);

/// What one call works with besides the input.
pub struct Ctx<'a> {
    /// Replies are appended here.
    pub out: &'a mut Vec<u8>,
    /// Once `out` holds this many bytes, input is left unconsumed (the
    /// reactor's output high-water mark: a client that does not read its
    /// replies cannot make us hold more).
    pub out_limit: usize,
    /// Where transactions go.
    pub sink: &'a mut dyn Sink,
    /// Told what happened (statistics, tracing).
    pub observer: &'a mut dyn Observer,
    /// The time of the event.
    pub now: Instant,
    /// Report every state change to the observer (`from -> to`).
    pub trace: bool,
    /// Rules, delays, rate limits; `None` (the default) asks nothing. Set
    /// it with [`Ctx::set_policy`].
    pub policy: Option<&'a mut dyn Policy>,
    /// The policy's [`Policy::stages`]: what to ask it about.
    pub asks: u16,
    /// The policy's [`Policy::generation`].
    pub generation: u32,
    /// The policy's [`Policy::interest`] (`None`: ask about every stage in
    /// `asks`).
    pub interest: Option<&'a Interest>,
    /// Replies are counted here, by id (`None`: not counted).
    pub tally: Option<&'a mut Tally>,
}

impl<'a> Ctx<'a> {
    /// A context without an output limit.
    pub fn new(
        out: &'a mut Vec<u8>,
        sink: &'a mut dyn Sink,
        observer: &'a mut dyn Observer,
        now: Instant,
    ) -> Self {
        Self {
            out,
            out_limit: usize::MAX,
            sink,
            observer,
            now,
            trace: false,
            policy: None,
            asks: 0,
            generation: 0,
            interest: None,
            tally: None,
        }
    }

    /// Sessions ask `policy` (about the stages it names, and only what
    /// `interest`, its [`Policy::interest`], lets through).
    pub fn set_policy(
        &mut self,
        policy: Option<&'a mut dyn Policy>,
        interest: Option<&'a Interest>,
    ) {
        self.asks = policy.as_deref().map_or(0, Policy::stages);
        self.generation = policy.as_deref().map_or(0, Policy::generation);
        self.policy = policy;
        self.interest = interest;
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
        /// The chunk's announced size.
        size: u64,
        /// Octets of it still to come.
        remaining: u64,
        /// It ends the message (`BDAT n LAST`).
        last: bool,
        /// The refusal to send once it is consumed.
        reject: Option<ReplyId>,
    },
    /// The message is complete; the sink has not answered yet.
    Verdict,
    /// STARTTLS answered: nothing more is read until the loop has secured
    /// the transport ([`Session::secured`]).
    Tls,
    /// An AUTH exchange: the next line is the client's response.
    Auth(AuthStep),
    /// QUIT answered or 421 sent: nothing more is read.
    Closed,
}

/// Which response an AUTH exchange waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStep {
    /// PLAIN's one message.
    Plain,
    /// LOGIN's user name.
    LoginUser,
    /// LOGIN's password (the user name is kept meanwhile).
    LoginPassword,
}

/// What the session asks of the I/O layer; taken after every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Write the queued replies, then close the connection.
    Close,
    /// Read nothing until [`Session::complete`] brings the sink's verdict.
    Await,
    /// Read nothing until [`Session::on_timer`] at `until`: a reply is held.
    Hold {
        /// When the held reply may go.
        until: Instant,
    },
    /// Write the queued replies, drop any input read after them unread,
    /// secure the transport (TLS as a server), then call
    /// [`Session::secured`] (STARTTLS, RFC 3207).
    StartTls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Greeted {
    No,
    Helo,
    Ehlo,
}

/// The mail transaction (RFC 5321 3.3): begun by MAIL, ended by the final
/// reply, RSET, HELO/EHLO or QUIT.
// Four independent facts about one transaction, not a state in disguise.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, Copy)]
struct Tx {
    started: Option<Instant>,
    recipients: u32,
    smtputf8: bool,
    body: Body,
    /// A BDAT chunk was accepted: DATA is now out of sequence.
    bdat: bool,
    /// The chunk's announced size.
    size: u64,
    too_big: bool,
    bare_lf: bool,
    /// A rule refused a BDAT chunk: the transaction ends with this reply
    /// once the chunk is read, and nothing is kept.
    refusal: Option<RuleReply>,
    /// A rule: close without a reply once this many content octets came
    /// (`u64::MAX`: never; one comparison per content run either way).
    cut: u64,
    /// A rule: answer 250 at the end but keep nothing.
    drop: bool,
    /// The transaction ends at a chunk that is not the last (refused, or
    /// too big): one reply, even in LMTP (RFC 2033 4.3).
    cut_short: bool,
}

impl Default for Tx {
    fn default() -> Self {
        Self {
            started: None,
            recipients: 0,
            smtputf8: false,
            body: Body::default(),
            bdat: false,
            size: 0,
            too_big: false,
            bare_lf: false,
            refusal: None,
            cut: u64::MAX,
            drop: false,
            cut_short: false,
        }
    }
}

/// A reply decided but not necessarily sent yet (it may be held). Small and
/// `Copy`: it is returned by every row's proceed step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Reply(ReplyId),
    /// `250 ... <n> octets received` for one BDAT chunk.
    Chunk(u64),
    /// The final reply to the message in `Session::ended`; counted when sent.
    Final(Verdict),
    /// A policy's reply (a 421 closes after it).
    Rule(RuleReply),
    /// A policy's refusal of the message in `Session::ended`.
    FinalRule(RuleReply),
    /// Close without a reply.
    Hangup,
    /// A `334` challenge of an AUTH exchange, complete.
    Challenge(&'static [u8]),
}

/// What the final reply of the last message reports: its size and when its
/// MAIL came.
#[derive(Debug, Clone, Copy, Default)]
struct Ended {
    bytes: u64,
    started: Option<Instant>,
    /// Accepted but not kept (a rule's accept-but-drop).
    dropped: bool,
    /// Its recipients: LMTP answers each (RFC 2033 4.2).
    recipients: u32,
}

/// The current data-rate window (see [`Timeouts::data_min_rate`]).
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    bytes: u64,
}

/// A connection's read-rate cap (a rule's `throttle`): the time by which
/// what was read so far is paid for at `rate` octets per second.
#[derive(Debug, Clone, Copy)]
struct Throttle {
    rate: u64,
    paid_at: Instant,
}

/// What rules did to a session; boxed, allocated only when one acts.
#[derive(Debug, Default)]
struct Effects {
    /// Hold the next reply this long.
    delay: Option<Duration>,
    /// Replaces the 250 of the message in progress, when accepted.
    final_text: Option<RuleReply>,
    /// Replaces the 250 of the BDAT chunk in progress.
    chunk_text: Option<RuleReply>,
    throttle: Option<Throttle>,
    /// Input is not read before this (the throttle's debt).
    paused: Option<Instant>,
    /// The greeting refused service: only QUIT is served (RFC 5321 3.1).
    refused: bool,
}

/// Reads faster than the cap by less than this wait for nothing.
const THROTTLE_SLACK: Duration = Duration::from_millis(5);

/// One connection's protocol state.
// Independent facts (secure, authenticated, closing, gone), not a state in
// disguise: the state is `state`.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug)]
pub struct Session {
    id: SessionId,
    peer: SocketAddr,
    state: State,
    greeted: Greeted,
    /// The transport is secured (TLS): selects the EHLO block.
    secure: bool,
    tx: Tx,
    unstuffer: Unstuffer,
    /// The server is shutting down: end the session with 421 as soon as the
    /// message in progress is answered, before any command pipelined after it.
    closing: bool,
    request: Option<Request>,
    /// A reply waiting for its time, and that time (boxed: rare, and an
    /// idle connection should stay small).
    held: Option<Box<(Instant, Out)>>,
    /// Counted during the current event; reported by `settle`.
    counts: Counts,
    /// `disconnected` ran: the sink has heard `closed`.
    gone: bool,
    /// The last message ended, for its final reply.
    ended: Ended,
    /// Last byte read or reply taken by the client (the idle clock).
    last_active: Instant,
    /// When the first byte of the incomplete command line arrived.
    line_since: Option<Instant>,
    window: Window,
    /// Transactions begun (MAILs accepted) in this session.
    transactions: u32,
    /// MAIL commands a rule refused: with `transactions`, the transaction
    /// count rules match on (a refused MAIL counts, so "the 2nd
    /// transaction" fails once, not forever).
    refused_mails: u32,
    /// 4xx and 5xx replies sent in this session.
    errors: u32,
    /// The policy's handle for this session (`u32::MAX`: none).
    handle: u32,
    /// The stages the policy wants to hear about from this session, as of
    /// generation `asks_gen` of its rules.
    asks: u16,
    asks_gen: u32,
    /// The policy's rules that can match this session at all (see
    /// [`Policy::session_rules`]), of the same generation.
    live: u64,
    fx: Option<Box<Effects>>,
    /// The transaction's sender, kept only where the policy's interest
    /// asks for it (greylisting keys on it).
    sender: Vec<u8>,
    /// AUTH succeeded in this session (since the last STARTTLS).
    authenticated: bool,
    /// LOGIN's user name while its password is awaited.
    login_user: Option<Box<[u8]>>,
    /// The session speaks LMTP (RFC 2033); see [`Lmtp`].
    lmtp: Option<Box<Lmtp>>,
    /// The connection comes from a `--trusted` address: XCLIENT and
    /// XFORWARD are offered and obeyed.
    trusted: bool,
    /// What XCLIENT and XFORWARD said (boxed: rare).
    told: Option<Box<Told>>,
}

/// An LMTP session's per-recipient state.
#[derive(Debug, Default)]
struct Lmtp {
    /// The accepted recipients' paths, end to end (kept only where a
    /// policy asks about the end of data: its rules may refuse single
    /// recipients there), and where each ends.
    paths: Vec<u8>,
    ends: Vec<usize>,
    /// Per recipient, a rule's reply at the end of data, if any.
    replies: Vec<Option<RuleReply>>,
    /// `replies` were decided for this transaction (when its content
    /// began), with the longest delay asked for and whether a rule closes.
    decided: bool,
    delay: Option<Duration>,
    close: bool,
}

impl Lmtp {
    /// The transaction is over: forget it, and give back what a large one
    /// grew (an idle connection keeps at most ~1 KiB of it).
    fn release(&mut self) {
        const KEEP: usize = 1024;
        self.paths.clear();
        self.ends.clear();
        self.replies.clear();
        if self.paths.capacity() > KEEP {
            self.paths = Vec::new();
        }
        if self.ends.capacity() * std::mem::size_of::<usize>() > KEEP {
            self.ends = Vec::new();
        }
        if self.replies.capacity() * std::mem::size_of::<Option<RuleReply>>() > KEEP {
            self.replies = Vec::new();
        }
        self.decided = false;
        self.delay = None;
        self.close = false;
    }

    fn path(&self, i: usize) -> &[u8] {
        let start = i.checked_sub(1).and_then(|p| self.ends.get(p)).copied();
        match self.ends.get(i) {
            Some(&end) => self.paths.get(start.unwrap_or(0)..end).unwrap_or_default(),
            None => &[],
        }
    }
}

/// What a trusted proxy said about the client.
#[derive(Debug, Default)]
struct Told {
    /// XCLIENT: for the rest of the session.
    xclient: Option<Client>,
    /// XFORWARD: for the next transaction, until it ends.
    forward: Option<Client>,
}

/// The client's address where it is not known (`ADDR=[UNAVAILABLE]`).
pub const UNKNOWN_PEER: SocketAddr =
    SocketAddr::new(core::net::IpAddr::V4(core::net::Ipv4Addr::UNSPECIFIED), 0);

/// `t + d`, or `None` when that is past what the clock can represent.
fn after(t: Instant, d: Duration) -> Option<Instant> {
    t.checked_add(d)
}

impl Session {
    /// A session for a connection from `peer`, accepted at `now`.
    pub fn new(id: SessionId, peer: SocketAddr, now: Instant) -> Self {
        Self {
            id,
            peer,
            state: State::Command,
            greeted: Greeted::No,
            secure: false,
            tx: Tx::default(),
            unstuffer: Unstuffer::new(),
            closing: false,
            request: None,
            held: None,
            counts: Counts::default(),
            gone: false,
            ended: Ended::default(),
            last_active: now,
            line_since: None,
            window: Window {
                start: now,
                bytes: 0,
            },
            transactions: 0,
            refused_mails: 0,
            errors: 0,
            handle: u32::MAX,
            asks: u16::MAX,
            asks_gen: u32::MAX,
            live: u64::MAX,
            fx: None,
            sender: Vec::new(),
            authenticated: false,
            login_user: None,
            lmtp: None,
            trusted: false,
            told: None,
        }
    }

    /// The session speaks LMTP (RFC 2033): LHLO instead of HELO/EHLO, and
    /// one reply per recipient at the end of each message. Call before
    /// [`Session::start`].
    pub fn speak_lmtp(&mut self) {
        self.lmtp = Some(Box::default());
    }

    /// Whether the session speaks LMTP.
    pub fn is_lmtp(&self) -> bool {
        self.lmtp.is_some()
    }

    /// The connection comes from a `--trusted` address: XCLIENT and
    /// XFORWARD, where offered, are obeyed. Call before [`Session::start`].
    pub fn trust(&mut self) {
        self.trusted = true;
    }

    /// The address rules and limits see: XFORWARD's for the transaction it
    /// applies to, else the client's (XCLIENT's once it named one).
    fn query_peer(&self) -> SocketAddr {
        match self.told.as_deref().and_then(|t| t.forward.as_ref()) {
            Some(f) if f.said_addr() => f.socket_addr().unwrap_or(UNKNOWN_PEER),
            _ => self.peer,
        }
    }

    /// The connection is TLS from its first byte (implicit TLS, RFC 8314):
    /// the session starts secured. Call before [`Session::start`].
    pub fn secure_from_start(&mut self) {
        self.secure = true;
    }

    /// Whether the transport is secured.
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// Whether AUTH succeeded.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// The loop secured the transport after [`Request::StartTls`]: the
    /// session starts over as right after the greeting, knowing nothing the
    /// client said before (RFC 3207 4.2): no EHLO, no AUTH, no transaction.
    pub fn secured(&mut self, s: &Settings, cx: &mut Ctx<'_>) {
        if self.state != State::Tls {
            return;
        }
        self.reset_tx(cx);
        self.secure = true;
        self.greeted = Greeted::No;
        self.authenticated = false;
        self.login_user = None;
        self.line_since = None;
        self.last_active = cx.now;
        self.enter(State::Command, cx);
        self.settle(s, cx);
    }

    /// This session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The client's address, as the connection reported it (or a proxy in
    /// front of it, see [`Session::set_peer`]).
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The client is `peer`, not the connection's other end: a trusted
    /// proxy said so (PROXY protocol), before the session started.
    /// XCLIENT and XFORWARD are then no longer obeyed: the named client
    /// is not a proxy of ours.
    pub fn set_peer(&mut self, peer: SocketAddr) {
        self.peer = peer;
        self.trusted = false;
    }

    /// Where the session is in the input stream.
    pub fn state(&self) -> State {
        self.state
    }

    /// True once nothing more will be read.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// True while input is consumed: not closed, no verdict awaited, no
    /// reply held.
    pub fn takes_input(&self) -> bool {
        self.held.is_none()
            && !matches!(self.state, State::Verdict | State::Closed | State::Tls)
            && self.paused().is_none()
    }

    /// Until when a throttle holds input back, if it does.
    #[inline]
    fn paused(&self) -> Option<Instant> {
        self.fx.as_ref().and_then(|f| f.paused)
    }

    fn fx(&mut self) -> &mut Effects {
        self.fx.get_or_insert_with(Box::default)
    }

    /// True while a message body is arriving, awaiting its verdict, or its
    /// final reply is held; a graceful shutdown lets these finish.
    pub fn in_message(&self) -> bool {
        matches!(
            self.state,
            State::Data | State::Chunk { .. } | State::Verdict
        ) || self.tx.bdat
            || matches!(self.held.as_deref(), Some((_, Out::Final(_))))
    }

    /// The request from the last event, if any; the I/O layer must act on it.
    pub fn take_request(&mut self) -> Option<Request> {
        self.request.take()
    }

    /// When [`Session::on_timer`] must be called next, if ever.
    pub fn deadline(&self, s: &Settings) -> Option<Instant> {
        let short = self.short_deadline(s);
        if self.held.is_some() || self.paused().is_some() || self.state == State::Closed {
            return short;
        }
        match (after(self.last_active, s.timeouts.idle), short) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The deadline of what is in progress — a partial command line,
    /// message content, a held reply — if any. The idle deadline only ever
    /// moves later, so after most events nothing needs arming; these can
    /// come sooner, and the I/O layer arms them after each event.
    #[inline]
    pub fn short_deadline(&self, s: &Settings) -> Option<Instant> {
        if let Some(&(until, _)) = self.held.as_deref() {
            return Some(until);
        }
        if let Some(until) = self.paused() {
            return Some(until);
        }
        let t = &s.timeouts;
        match self.state {
            State::Command | State::SkipLine | State::Auth(_) => {
                self.line_since.and_then(|l| after(l, t.command))
            }
            State::Data | State::Chunk { .. } if t.data_min_rate > 0 => {
                after(self.window.start, t.data_window)
            }
            _ => None,
        }
    }

    /// The connection is up: sends the 220 greeting (or what a policy says
    /// instead: another greeting, a refusal, a delay, silence).
    pub fn start(&mut self, s: &Settings, cx: &mut Ctx<'_>) {
        self.greet(s, cx);
        self.settle(s, cx);
    }

    /// The greeting, as at the start and after XCLIENT.
    fn greet(&mut self, s: &Settings, cx: &mut Ctx<'_>) {
        cx.sink.connected(self.id, self.peer);
        let mut out = Out::Reply(if self.lmtp.is_some() {
            ReplyId::GreetingLmtp
        } else {
            ReplyId::Greeting
        });
        let mut delay = None;
        if let Some(p) = cx.policy.as_deref_mut() {
            self.handle = p.open(self.id, self.peer, cx.now);
        }
        let asks = cx.asks != 0 && self.asks(cx) & Stage::Connect.bit() != 0;
        if let Some(p) = cx.policy.as_deref_mut().filter(|_| asks) {
            let d = p.decide(&Query {
                id: self.id,
                handle: self.handle,
                stage: Stage::Connect,
                arg: &[],
                sender: &[],
                peer: self.peer,
                transaction: 0,
                now: cx.now,
            });
            delay = d.delay;
            match d.act {
                Act::Reply(r) => {
                    // Refused service: wait for QUIT, 503 to the rest
                    // (RFC 5321 3.1); a 421 closes at once.
                    if r.refuses() && r.code != 421 {
                        self.fx().refused = true;
                    }
                    out = Out::Rule(r);
                }
                Act::Close => out = Out::Hangup,
                Act::Throttle(rate) => self.throttle(rate, cx.now),
                Act::Proceed | Act::CloseAfter(_) | Act::Drop => {}
            }
        }
        self.hold_or_emit(s, delay, out, cx);
    }

    /// What the policy wants to hear about from this session; asked again
    /// when its rules changed.
    #[inline]
    fn asks(&mut self, cx: &mut Ctx<'_>) -> u16 {
        if self.asks_gen != cx.generation {
            self.ask_again(cx);
        }
        self.asks & cx.asks
    }

    #[cold]
    fn ask_again(&mut self, cx: &mut Ctx<'_>) {
        if let Some(p) = cx.policy.as_deref_mut() {
            self.asks = p.session_stages(self.handle);
            self.live = p.session_rules(self.handle);
            self.asks_gen = cx.generation;
        }
        let forwarded = self.told.as_deref().and_then(|t| t.forward.as_ref());
        if forwarded.is_some_and(Client::said_addr) {
            // As `proceed_xforward` says.
            self.asks = u16::MAX;
            self.live = u64::MAX;
        }
    }

    /// Caps this connection's reading at `rate` octets per second from now.
    fn throttle(&mut self, rate: u64, now: Instant) {
        self.fx().throttle = Some(Throttle {
            rate: rate.max(1),
            paid_at: now,
        });
    }

    /// `n` octets were read under a throttle: pause until they are paid for.
    fn pay(&mut self, n: usize, now: Instant) {
        let Some(fx) = self.fx.as_deref_mut() else {
            return;
        };
        let Some(t) = fx.throttle.as_mut() else {
            return;
        };
        let cost = Duration::from_secs_f64(n as f64 / t.rate as f64);
        t.paid_at = t.paid_at.max(now) + cost;
        if t.paid_at > now + THROTTLE_SLACK {
            fx.paused = Some(t.paid_at);
        }
    }

    /// The client took replies at `now` (activity for the idle clock: a slow
    /// reader is not idle).
    pub fn wrote(&mut self, now: Instant) {
        self.last_active = now;
    }

    /// Consumes as much of `input` as can be decided now and returns how many
    /// bytes that was. The caller keeps the rest and offers it again, with
    /// more input appended, once the session takes input again.
    pub fn handle_input(&mut self, s: &Settings, input: &[u8], cx: &mut Ctx<'_>) -> usize {
        // Two copies of the hot path: without a policy no rule can have
        // left an effect (`fx`, a cut, a drop), so none is looked for.
        // Measured (callgrind, pipelined 1 KiB): ~45 instructions per
        // message; see README "Rules and metrics: what they cost".
        if cx.policy.is_none() {
            self.input::<false>(s, input, cx)
        } else {
            self.input::<true>(s, input, cx)
        }
    }

    /// `handle_input`; `P`: a policy may be in play.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn input<const P: bool>(&mut self, s: &Settings, input: &[u8], cx: &mut Ctx<'_>) -> usize {
        if !input.is_empty() {
            self.last_active = cx.now;
        }
        let mut pos = 0;
        if self.held.is_some() || P && self.paused().is_some() {
            // Verdict and Closed stop the loop below; a held reply and a
            // throttle's pause must too.
            self.settle(s, cx);
            return 0;
        }
        // Under a throttle, take only a tenth of a second's worth now (at
        // least a whole command line), pay for it, and pause: the client
        // is slowed while it sends, not after.
        let throttle = if P {
            self.fx.as_deref().and_then(|f| f.throttle)
        } else {
            None
        };
        let input = match throttle {
            Some(t) => {
                let allow = usize::try_from(t.rate / 10)
                    .unwrap_or(usize::MAX)
                    .max(s.max_line + EXTENSION_ALLOWANCE);
                input.get(..allow.min(input.len())).unwrap_or(input)
            }
            None => input,
        };
        while cx.out.len() < cx.out_limit {
            let rest = input.get(pos..).unwrap_or_default();
            let step = match self.state {
                State::Command => self.command::<P>(s, rest, cx),
                State::SkipLine => self.skip_line(s, rest, cx),
                State::Data => self.data::<P>(s, rest, cx),
                State::Chunk { .. } => self.chunk::<P>(s, rest, cx),
                State::Auth(step) => self.auth_line(s, step, rest, cx),
                State::Verdict | State::Closed | State::Tls => None,
            };
            match step {
                Some(n) => pos += n,
                None => break,
            }
            if s.max_errors != 0 && self.state != State::Closed && self.errors >= s.max_errors {
                // Before the next command of a pipelined batch is read.
                self.close(s, ReplyId::TooManyErrors, cx);
            }
            if self.closing {
                // A shutdown is waiting for the message to be answered.
                self.settle(s, cx);
            }
            if self.held.is_some() {
                break;
            }
        }
        if P && self.fx.is_some() {
            self.pay(pos, cx.now);
        }
        self.settle_p::<P>(s, cx);
        pos
    }

    /// A deadline may have passed: sends a held reply whose time has come,
    /// times the client out, or opens the next data-rate window. Calling it
    /// early does nothing (each clock is checked against `now`).
    pub fn on_timer(&mut self, s: &Settings, cx: &mut Ctx<'_>) -> Option<Timeout> {
        let now = cx.now;
        if let Some(&(until, out)) = self.held.as_deref() {
            if now >= until {
                self.held = None;
                // The client was waiting for us, not idle.
                self.last_active = now;
                if matches!(self.state, State::Data | State::Chunk { .. }) {
                    // Content may only start now that the reply went out.
                    self.window = Window {
                        start: now,
                        bytes: 0,
                    };
                }
                self.emit(s, out, cx);
            }
            self.settle(s, cx);
            return None;
        }
        if let Some(until) = self.paused() {
            if now >= until {
                self.fx().paused = None;
                // Waiting on our throttle is not idling.
                self.last_active = now;
            }
            self.settle(s, cx);
            return None;
        }
        let t = s.timeouts;
        let passed = |d: Option<Instant>| d.is_some_and(|d| now >= d);
        let idle = passed(after(self.last_active, t.idle));
        let kind = match self.state {
            // A sink that never answers must not hold the client forever.
            State::Command
            | State::SkipLine
            | State::Auth(_)
            | State::Tls
            | State::Data
            | State::Chunk { .. }
            | State::Verdict
                if idle =>
            {
                Some(Timeout::Idle)
            }
            State::Command | State::SkipLine | State::Auth(_)
                if passed(self.line_since.and_then(|l| after(l, t.command))) =>
            {
                Some(Timeout::Command)
            }
            State::Data | State::Chunk { .. }
                if t.data_min_rate > 0 && passed(after(self.window.start, t.data_window)) =>
            {
                if self.window.bytes >= t.window_quota() {
                    self.window = Window {
                        start: now,
                        bytes: 0,
                    };
                    None
                } else {
                    Some(Timeout::DataRate)
                }
            }
            _ => None,
        };
        if let Some(kind) = kind {
            self.time_out(s, kind, cx);
        }
        self.settle(s, cx);
        kind
    }

    /// Delivers the sink's verdict on a message that was [`Verdict::Pending`].
    /// Input is taken again from the next `handle_input` call on.
    pub fn complete(&mut self, s: &Settings, verdict: Verdict, cx: &mut Ctx<'_>) {
        if self.state != State::Verdict {
            return;
        }
        let verb = if self.tx.bdat {
            Verb::LastChunk
        } else {
            Verb::EndOfData
        };
        // The client was waiting for the sink, not idle.
        self.last_active = cx.now;
        self.enter(State::Command, cx);
        let out = self.finish(verdict);
        self.answer_ruled(s, verb, out, cx);
        self.settle(s, cx);
    }

    /// The server is shutting down: 421 now, or right after the final reply
    /// to the message in progress, before any command pipelined after it.
    pub fn shutdown(&mut self, s: &Settings, cx: &mut Ctx<'_>) {
        self.closing = true;
        self.settle(s, cx);
    }

    /// Ends the session now with `reply` (a 421) and abandons any
    /// transaction and any held reply.
    pub fn close_with(&mut self, s: &Settings, reply: ReplyId, cx: &mut Ctx<'_>) {
        self.close(s, reply, cx);
        self.settle(s, cx);
    }

    /// The peer went away or the connection is being dropped: abandon any
    /// transaction; no reply. Tells the sink the session is over.
    /// Idempotent: the sink hears `closed` once.
    pub fn disconnected(&mut self, cx: &mut Ctx<'_>) {
        if self.gone {
            return;
        }
        self.gone = true;
        self.reset_tx(cx);
        self.drop_held(cx);
        if self.state != State::Closed {
            self.enter(State::Closed, cx);
        }
        self.request = None;
        self.report(cx);
        cx.sink.closed(self.id);
        if let Some(p) = cx.policy.as_deref_mut() {
            if self.handle != u32::MAX {
                p.closed(self.handle);
            }
        }
    }

    /// The one place the state changes.
    fn enter(&mut self, to: State, cx: &mut Ctx<'_>) {
        if matches!(to, State::Data | State::Chunk { .. }) {
            self.window = Window {
                start: cx.now,
                bytes: 0,
            };
        }
        if cx.trace {
            cx.observer.transition(self.id, self.state, to);
        }
        self.state = to;
    }

    /// After every event: finish a pending shutdown, then derive the request.
    // Measured (callgrind, pipelined 1 KiB): out of line, the call costs
    // ~100 instructions per message.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn settle(&mut self, s: &Settings, cx: &mut Ctx<'_>) {
        self.settle_p::<true>(s, cx);
    }

    /// `settle`; `P`: effects may be in force.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn settle_p<const P: bool>(&mut self, s: &Settings, cx: &mut Ctx<'_>) {
        self.report(cx);
        if let Some(&(until, _)) = self.held.as_deref() {
            self.request = Some(Request::Hold { until });
            return;
        }
        if self.closing && !self.in_message() && self.state != State::Closed {
            self.close(s, ReplyId::Shutdown, cx);
        }
        if (s.max_errors != 0 || P && self.fx.is_some()) && self.settle_rare(s, cx) {
            return;
        }
        self.request = match self.state {
            State::Closed => Some(Request::Close),
            State::Verdict => Some(Request::Await),
            State::Tls => Some(Request::StartTls),
            _ => None,
        };
    }

    /// The parts of `settle` only caps and rules need, out of the hot path;
    /// true when it set the request.
    #[cold]
    #[inline(never)]
    fn settle_rare(&mut self, s: &Settings, cx: &mut Ctx<'_>) -> bool {
        if s.max_errors != 0 && self.errors >= s.max_errors && self.state != State::Closed {
            self.close(s, ReplyId::TooManyErrors, cx);
        }
        if let Some(until) = self.paused().filter(|_| self.state != State::Closed) {
            self.request = Some(Request::Hold { until });
            return true;
        }
        false
    }

    /// Forgets a held reply. If it was the final 250 of a message the sink
    /// already accepted, the client never hears of it: the sink is told to
    /// abort, as when a session is dropped before a pending verdict.
    fn drop_held(&mut self, cx: &mut Ctx<'_>) {
        if let Some(held) = self.held.take() {
            if matches!(held.1, Out::Final(Verdict::Accepted | Verdict::Pending)) {
                cx.sink.abort(self.id);
            }
        }
    }

    /// Hands what was counted during this event to the observer.
    #[inline]
    fn report(&mut self, cx: &mut Ctx<'_>) {
        if !self.counts.is_empty() {
            cx.observer.counted(&self.counts);
            self.counts = Counts::default();
        }
    }

    fn close(&mut self, s: &Settings, reply: ReplyId, cx: &mut Ctx<'_>) {
        self.drop_held(cx);
        if self.state == State::Closed {
            return;
        }
        self.reset_tx(cx);
        self.say(s, reply, cx);
        self.enter(State::Closed, cx);
    }

    fn time_out(&mut self, s: &Settings, kind: Timeout, cx: &mut Ctx<'_>) {
        cx.observer.timeout(kind);
        let reply = match kind {
            Timeout::DataRate => ReplyId::DataTooSlow,
            Timeout::Idle | Timeout::Command => ReplyId::Timeout,
        };
        self.close(s, reply, cx);
    }

    /// Queues one reply.
    // Measured (callgrind, pipelined 1 KiB): the reply path is hot enough
    // that a call per reply shows; see README "Performance".
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn say(&mut self, s: &Settings, id: ReplyId, cx: &mut Ctx<'_>) {
        self.count(id, cx);
        cx.out.extend_from_slice(s.replies.text(id));
    }

    /// Counts one reply by its id (its code is the id's: `ReplyId::CODES`),
    /// and 4xx/5xx ones as this session's errors.
    #[inline]
    fn count(&mut self, id: ReplyId, cx: &mut Ctx<'_>) {
        if let Some(n) = cx.tally.as_deref_mut().and_then(|t| t.get_mut(id as usize)) {
            *n += 1;
        }
        self.errors += u32::from((ReplyId::ERRORS >> (id as u32)) & 1 == 1);
    }

    /// Queues a policy's reply; a 421 ends the session after it.
    fn say_rule(&mut self, s: &Settings, r: RuleReply, cx: &mut Ctx<'_>) {
        let Some(p) = cx.policy.as_deref() else {
            // Policies live as long as the loop: this cannot happen, and
            // must still answer something true.
            return self.say(s, ReplyId::LocalError, cx);
        };
        cx.out.extend_from_slice(p.text(r.index));
        self.errors += u32::from(r.code >= 400);
        cx.observer.rule_reply(r.code);
        if r.code == 421 {
            self.hang_up(cx);
        }
    }

    /// Ends the session without a reply (a rule's close; after a 421).
    fn hang_up(&mut self, cx: &mut Ctx<'_>) {
        self.drop_held(cx);
        self.reset_tx(cx);
        if self.state != State::Closed {
            self.enter(State::Closed, cx);
        }
    }

    /// Sends `out` now, or holds it when `verb` has a delay.
    // Measured (callgrind, pipelined 1 KiB): the reply path is hot enough
    // that a call per reply shows; see README "Performance".
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn answer(&mut self, s: &Settings, verb: Verb, out: Out, cx: &mut Ctx<'_>) {
        if !s.has_delays() {
            return self.emit(s, out, cx);
        }
        self.hold_or_emit(s, s.delay(verb), out, cx);
    }

    /// As `answer`, where a rule may have asked for a delay (kept in the
    /// session's effects until the reply it is for is decided): the
    /// policy's answers, the end of a BDAT chunk, a sink's late verdict.
    /// The plain path never looks.
    fn answer_ruled(&mut self, s: &Settings, verb: Verb, out: Out, cx: &mut Ctx<'_>) {
        match self.fx.as_deref_mut().and_then(|f| f.delay.take()) {
            Some(d) => self.hold_or_emit(s, Some(d), out, cx),
            None => self.answer(s, verb, out, cx),
        }
    }

    /// Sends `out` now, or holds it for `delay`.
    fn hold_or_emit(&mut self, s: &Settings, delay: Option<Duration>, out: Out, cx: &mut Ctx<'_>) {
        match delay.and_then(|d| after(cx.now, d)) {
            Some(until) => self.held = Some(Box::new((until, out))),
            None => self.emit(s, out, cx),
        }
    }

    // Measured (callgrind, pipelined 1 KiB): the reply path is hot enough
    // that a call per reply shows; see README "Performance".
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn emit(&mut self, s: &Settings, out: Out, cx: &mut Ctx<'_>) {
        match out {
            Out::Reply(id) => self.say(s, id, cx),
            Out::Chunk(n) => {
                if let Some(r) = self.fx.as_deref_mut().and_then(|f| f.chunk_text.take()) {
                    return self.say_rule(s, r, cx);
                }
                s.replies.chunk_received(n, cx.out);
                self.count(ReplyId::ChunkReceived, cx);
            }
            Out::Final(_) | Out::FinalRule(_) if self.lmtp.is_some() => self.final_lmtp(s, out, cx),
            Out::Final(verdict) => {
                let Ended {
                    bytes,
                    started,
                    dropped,
                    ..
                } = self.ended;
                // A rule's text for this message's 250, used only if it is one.
                let text = self.fx.as_deref_mut().and_then(|f| f.final_text.take());
                let latency =
                    started.map_or(Duration::ZERO, |t| cx.now.saturating_duration_since(t));
                match verdict {
                    Verdict::Rejected(r) => {
                        cx.observer.message(Outcome::Rejected, bytes, latency);
                        self.say(s, r, cx);
                    }
                    Verdict::Accepted | Verdict::Pending => {
                        let outcome = if dropped {
                            Outcome::Dropped
                        } else {
                            Outcome::Accepted
                        };
                        cx.observer.message(outcome, bytes, latency);
                        match text {
                            Some(r) => self.say_rule(s, r, cx),
                            None => self.say(s, ReplyId::Queued, cx),
                        }
                    }
                }
            }
            Out::Rule(r) => self.say_rule(s, r, cx),
            Out::FinalRule(r) => {
                if let Some(f) = self.fx.as_deref_mut() {
                    f.final_text = None;
                }
                let Ended { bytes, started, .. } = self.ended;
                let latency =
                    started.map_or(Duration::ZERO, |t| cx.now.saturating_duration_since(t));
                cx.observer.message(Outcome::Rejected, bytes, latency);
                self.say_rule(s, r, cx);
            }
            Out::Hangup => self.hang_up(cx),
            Out::Challenge(text) => {
                self.count(ReplyId::AuthChallenge, cx);
                cx.out.extend_from_slice(text);
            }
        }
    }

    /// Ends the transaction with `verdict`; the reply to send.
    fn finish(&mut self, verdict: Verdict) -> Out {
        self.ended = Ended {
            bytes: self.tx.size,
            started: self.tx.started,
            dropped: self.tx.drop,
            // A chunk that was not the last gets one reply.
            recipients: if self.tx.cut_short {
                1
            } else {
                self.tx.recipients
            },
        };
        self.tx = Tx::default();
        self.forget_forward();
        if let Some(f) = self.fx.as_deref_mut() {
            // A chunk reply a rule chose belongs to this message only.
            f.chunk_text = None;
        }
        Out::Final(verdict)
    }

    fn command<const P: bool>(
        &mut self,
        s: &Settings,
        rest: &[u8],
        cx: &mut Ctx<'_>,
    ) -> Option<usize> {
        let frame = line::next_line(rest, s.max_line + EXTENSION_ALLOWANCE);
        if !matches!(frame, Frame::Partial | Frame::Line { .. }) && command::is_bdat(rest) {
            // A BDAT line we will not execute: its chunk would be read as
            // commands (a smuggling vector), so the session ends here.
            self.close(s, ReplyId::BdatDesync, cx);
            return Some(0);
        }
        match frame {
            Frame::Partial => {
                if !rest.is_empty() {
                    // The command deadline runs from a line's first byte.
                    self.line_since.get_or_insert(cx.now);
                }
                None
            }
            Frame::Overflow { consumed } => {
                self.line_since.get_or_insert(cx.now);
                self.enter(State::SkipLine, cx);
                Some(consumed)
            }
            Frame::TooLong { consumed } => {
                self.line_since = None;
                self.say(s, ReplyId::LineTooLong, cx);
                Some(consumed)
            }
            Frame::BareLf { consumed } => {
                self.line_since = None;
                self.say(s, ReplyId::BareLf, cx);
                Some(consumed)
            }
            Frame::Line { line, consumed } => {
                self.line_since = None;
                self.execute::<P>(s, line, cx);
                Some(consumed)
            }
        }
    }

    /// One response line of an AUTH exchange (RFC 4954 4): `*` cancels,
    /// anything else is base64 for the mechanism's step.
    // Out of the input loop: once per login, and inlined it made the loop
    // too big for LLVM to inline the DATA scanner (+200 Ir/msg).
    #[cold]
    #[inline(never)]
    fn auth_line(
        &mut self,
        s: &Settings,
        step: AuthStep,
        rest: &[u8],
        cx: &mut Ctx<'_>,
    ) -> Option<usize> {
        match line::next_line(rest, auth::MAX_LINE) {
            Frame::Partial => {
                if !rest.is_empty() {
                    self.line_since.get_or_insert(cx.now);
                }
                None
            }
            Frame::Overflow { consumed } => {
                // Skipped to its end, then 500; the exchange is over.
                self.login_user = None;
                self.line_since.get_or_insert(cx.now);
                self.enter(State::SkipLine, cx);
                Some(consumed)
            }
            // Too long is too long however it arrived: whole (here) or
            // across reads (`Overflow`, then `SkipLine`), the same 500 (a
            // fuzzer found the two answering apart).
            Frame::TooLong { consumed } => {
                self.abandon_auth(s, ReplyId::LineTooLong, cx);
                Some(consumed)
            }
            Frame::BareLf { consumed } => {
                self.abandon_auth(s, ReplyId::AuthBadResponse, cx);
                Some(consumed)
            }
            Frame::Line { line, consumed } => {
                self.line_since = None;
                let out = self.auth_response(s, step, line, cx);
                self.answer(s, Verb::Auth, out, cx);
                Some(consumed)
            }
        }
    }

    /// An AUTH response line that cannot be used ends the exchange with `id`.
    fn abandon_auth(&mut self, s: &Settings, id: ReplyId, cx: &mut Ctx<'_>) {
        self.line_since = None;
        self.login_user = None;
        self.enter(State::Command, cx);
        self.say(s, id, cx);
    }

    fn skip_line(&mut self, s: &Settings, rest: &[u8], cx: &mut Ctx<'_>) -> Option<usize> {
        match memchr::memchr(b'\n', rest) {
            Some(lf) => {
                self.line_since = None;
                self.say(s, ReplyId::LineTooLong, cx);
                self.enter(State::Command, cx);
                Some(lf + 1)
            }
            None if rest.is_empty() => None,
            None => Some(rest.len()),
        }
    }

    /// One complete command line: checked for characters and length,
    /// parsed, then run through the verb table.
    fn execute<const P: bool>(&mut self, s: &Settings, line: &[u8], cx: &mut Ctx<'_>) {
        // NUL, bare CR, TAB and other controls have no place in a command.
        let bad_char = line.iter().any(|&b| b < 0x20 || b == 0x7f);
        let extended = line
            .get(..5)
            .is_some_and(|v| v.eq_ignore_ascii_case(b"MAIL ") || v.eq_ignore_ascii_case(b"RCPT "));
        let limit = s.max_line + if extended { EXTENSION_ALLOWANCE } else { 0 };
        let too_long = line.len() + 2 > limit;
        if (bad_char || too_long) && command::is_bdat(line) {
            return self.close(s, ReplyId::BdatDesync, cx);
        }
        if bad_char {
            return self.say(s, ReplyId::BadChar, cx);
        }
        if too_long {
            return self.say(s, ReplyId::LineTooLong, cx);
        }
        let pcx = ParseCtx {
            smtputf8: self.tx.smtputf8,
        };
        match command::parse(line, pcx) {
            // A bad BDAT with a usable size: its chunk is consumed, then
            // refused (RFC 3030 2); without one we cannot find the next command.
            Ok(Command::BadBdat { size: Some(size) }) => self.enter(
                State::Chunk {
                    size,
                    remaining: size,
                    last: false,
                    reject: Some(ReplyId::SyntaxBdat),
                },
                cx,
            ),
            Ok(Command::BadBdat { size: None }) => self.close(s, ReplyId::BdatDesync, cx),
            Ok(cmd) => self.dispatch::<P>(s, &cmd, cx),
            Err(r) => self.say(s, r, cx),
        }
    }

    fn data<const P: bool>(
        &mut self,
        s: &Settings,
        rest: &[u8],
        cx: &mut Ctx<'_>,
    ) -> Option<usize> {
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
        self.window.bytes += scan.consumed as u64;
        if P && self.tx.size >= self.tx.cut {
            // A rule: the connection drops mid-message.
            self.hang_up(cx);
            return Some(scan.consumed);
        }
        if scan.end {
            self.dispatch::<P>(s, &Command::EndOfContent { bdat: false }, cx);
            return Some(scan.consumed);
        }
        (scan.consumed > 0).then_some(scan.consumed)
    }

    fn chunk<const P: bool>(
        &mut self,
        s: &Settings,
        rest: &[u8],
        cx: &mut Ctx<'_>,
    ) -> Option<usize> {
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
            } else if self.tx.refusal.is_none() {
                cx.sink.body(self.id, rest.get(..n).unwrap_or_default());
            }
        }
        self.window.bytes += n as u64;
        if self.tx.size >= self.tx.cut {
            self.hang_up(cx);
            return Some(n);
        }
        let remaining = remaining - n as u64;
        if remaining > 0 {
            // Progress inside one chunk, not a change of state.
            self.state = State::Chunk {
                size,
                remaining,
                last,
                reject,
            };
            return (n > 0).then_some(n);
        }
        match reject {
            Some(r) => {
                self.enter(State::Command, cx);
                self.answer_ruled(s, Verb::Bdat, Out::Reply(r), cx);
            }
            None if self.tx.refusal.is_some() => {
                self.tx.cut_short = !last;
                // A rule refused this chunk: the message ends refused,
                // whatever rules are in force by now (a PUT may have
                // replaced them while the chunk was read).
                if let Some(r) = self.tx.refusal {
                    self.refuse_message(s, Verb::LastChunk, r, cx);
                }
            }
            None if last || self.tx.too_big => {
                self.tx.cut_short = !last;
                self.dispatch::<P>(s, &Command::EndOfContent { bdat: true }, cx);
            }
            None => {
                self.enter(State::Command, cx);
                self.answer_ruled(s, Verb::Bdat, Out::Chunk(size), cx);
            }
        }
        Some(n)
    }

    fn reset_tx(&mut self, cx: &mut Ctx<'_>) {
        if self.tx.started.is_some() {
            cx.sink.abort(self.id);
        }
        self.tx = Tx::default();
        self.forget_forward();
        if let Some(l) = self.lmtp.as_deref_mut() {
            l.release();
        }
    }

    /// XFORWARD's attributes last until the transaction ends (or RSET).
    #[inline]
    fn forget_forward(&mut self) {
        if self.told.is_some() {
            self.forget_told_forward();
        }
    }

    #[cold]
    #[inline(never)]
    fn forget_told_forward(&mut self) {
        if let Some(t) = self.told.as_deref_mut() {
            if t.forward.take().is_some_and(|f| f.said_addr()) {
                // Narrow the rules to the session's own address again.
                self.asks_gen = u32::MAX;
            }
        }
    }

    /// The final replies of an LMTP message: one per accepted recipient, in
    /// RCPT order (RFC 2033 4.2), each the message's verdict unless a rule
    /// answered that recipient at the end of data.
    #[cold]
    #[inline(never)]
    fn final_lmtp(&mut self, s: &Settings, out: Out, cx: &mut Ctx<'_>) {
        let Ended {
            bytes,
            started,
            dropped,
            recipients,
        } = self.ended;
        let latency = started.map_or(Duration::ZERO, |t| cx.now.saturating_duration_since(t));
        if let Some(f) = self.fx.as_deref_mut() {
            f.final_text = None;
        }
        let replies = self
            .lmtp
            .as_deref_mut()
            .map(|l| std::mem::take(&mut l.replies))
            .unwrap_or_default();
        let mut delivered = false;
        for i in 0..recipients.max(1) as usize {
            if self.state == State::Closed {
                // A rule's 421 ended the session: nothing after it.
                break;
            }
            match (out, replies.get(i).copied().flatten()) {
                (_, Some(r)) if r.refuses() => self.say_rule(s, r, cx),
                (Out::FinalRule(r), _) => self.say_rule(s, r, cx),
                (Out::Final(Verdict::Rejected(id)), _) => self.say(s, id, cx),
                (_, Some(r)) => {
                    delivered = true;
                    self.say_rule(s, r, cx);
                }
                _ => {
                    delivered = true;
                    self.say(s, ReplyId::Queued, cx);
                }
            }
        }
        let outcome = match (delivered, dropped) {
            (false, _) => Outcome::Rejected,
            (true, true) => Outcome::Dropped,
            (true, false) => Outcome::Accepted,
        };
        cx.observer.message(outcome, bytes, latency);
        if let Some(l) = self.lmtp.as_deref_mut() {
            l.replies = replies;
            l.release();
        }
    }
}

#[cfg(test)]
mod tests;
