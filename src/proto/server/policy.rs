//! The seam between a session and whatever makes it misbehave on purpose:
//! reply rules, delays, rate limits, magic addresses (`crate::rules`).
//!
//! The session asks a [`Policy`] once per command that passed its sequence
//! and check steps (so a rule never breaks the protocol: a RCPT before MAIL
//! still gets 503), and once at connect; the answer is a [`Decision`] the
//! session carries out itself — the policy never touches the session. With
//! no policy the session asks nothing: one `Option` test per command.
//!
//! Replies a policy makes are rendered by the policy once and named here by
//! index ([`RuleReply`]), so a held or pipelined reply stays `Copy`.

use super::SessionId;
use core::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where in the dialogue a decision is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The connection is up; the greeting is next.
    Connect,
    /// HELO or EHLO.
    Helo,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA (the 354).
    Data,
    /// The end of the message: `CRLF.CRLF`, or the last BDAT chunk.
    EndOfData,
    /// Each BDAT chunk (asked at its command line; answered once it is read).
    Bdat,
    /// RSET.
    Rset,
    /// QUIT.
    Quit,
    /// NOOP, VRFY, EXPN, HELP and the verbs not implemented.
    Other,
}

impl Stage {
    /// How many stages there are.
    pub const COUNT: usize = 10;

    /// This stage's bit in [`Policy::stages`].
    #[inline]
    pub const fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A reply a policy rendered: its index in the policy's table and its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleReply {
    /// Index for [`Policy::text`].
    pub index: u32,
    /// The three-digit code (a 421 also closes the connection).
    pub code: u16,
}

impl RuleReply {
    /// 4xx or 5xx: the command is refused.
    pub fn refuses(self) -> bool {
        self.code >= 400
    }
}

/// What to do instead of (or besides) the normal processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Act {
    /// Process the command normally.
    #[default]
    Proceed,
    /// Answer with this reply: a refusal (4xx/5xx) skips the command, a
    /// success only replaces the normal reply's text; 421 then closes.
    Reply(RuleReply),
    /// Close the connection without a reply.
    Close,
    /// Proceed, but close without a reply once this many octets of the
    /// message content have arrived (DATA and BDAT only).
    CloseAfter(u64),
    /// Proceed, and from now on read from this connection at no more than
    /// this many octets per second.
    Throttle(u64),
    /// Proceed; at the end of the message answer 250 but keep nothing.
    Drop,
}

/// A policy's answer: an action, and a delay before its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decision {
    /// Hold the reply (or the close) this long; the session reads nothing
    /// from that client meanwhile, others are served.
    pub delay: Option<Duration>,
    /// What to do.
    pub act: Act,
}

impl Decision {
    /// Nothing special.
    pub const PROCEED: Self = Self {
        delay: None,
        act: Act::Proceed,
    };
}

/// What the session tells the policy about one command.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The session.
    pub id: SessionId,
    /// The policy's handle for this session (from [`Policy::open`]).
    pub handle: u32,
    /// Where in the dialogue.
    pub stage: Stage,
    /// The argument: the HELO/EHLO name, the MAIL or RCPT address (without
    /// angle brackets, empty for the null path); empty otherwise.
    pub arg: &'a [u8],
    /// The transaction's sender (at the MAIL stage: this MAIL's), as far
    /// as [`Interest::sender`] asked the session to keep it; else empty.
    pub sender: &'a [u8],
    /// The client.
    pub peer: SocketAddr,
    /// MAIL commands in this session so far (this one included, at the
    /// MAIL stage): the transaction count rules match on. Refused MAILs
    /// count, so "the 2nd transaction" fails once, not forever.
    pub transaction: u32,
    /// The time of the event.
    pub now: Instant,
}

/// What a policy may have something to say about, as data a session reads
/// without a call: a command is put to the policy only when its stage is
/// asked about whatever the argument, or the argument has the shape one of
/// the stage's rules needs (its first, second and last bytes). A rule set
/// that matches nothing then costs a few table reads per command.
#[derive(Debug, Clone)]
pub struct Interest {
    /// Stages asked about whatever the argument (bit `Stage as u16`).
    pub always: u16,
    /// Per stage (`Stage as usize`): its rules, bit `i` for rule `i` (< 64).
    pub rules: [u64; Stage::COUNT],
    /// Per lower-cased byte: the rules an argument beginning with it may
    /// match.
    pub first: [u64; 256],
    /// The same for the argument's second byte (index 0 for a one-byte
    /// argument).
    pub second: [u64; 256],
    /// The same for its last byte.
    pub last: [u64; 256],
    /// The rules an empty argument may match.
    pub empty: u64,
    /// Keep each transaction's sender for [`Query::sender`].
    pub sender: bool,
}

impl Default for Interest {
    /// Everything asked about.
    fn default() -> Self {
        Self {
            always: u16::MAX,
            rules: [0; Stage::COUNT],
            first: [0; 256],
            second: [0; 256],
            last: [0; 256],
            empty: 0,
            sender: true,
        }
    }
}

impl Interest {
    /// The rules (< 64) an argument of this shape may match.
    #[inline]
    pub fn shape(&self, arg: &[u8]) -> u64 {
        // A u8 always indexes a 256-entry table: no check is left.
        let at = |t: &[u64; 256], b: u8| {
            t.get(usize::from(b.to_ascii_lowercase()))
                .copied()
                .unwrap_or(0)
        };
        match arg {
            [] => self.empty,
            [a] => at(&self.first, *a) & at(&self.second, 0) & at(&self.last, *a),
            [a, b, ..] => {
                let z = arg.last().copied().unwrap_or(*b);
                at(&self.first, *a) & at(&self.second, *b) & at(&self.last, z)
            }
        }
    }

    /// Whether a command of `stage` with `arg` is worth asking about, from
    /// a session that only `live` rules can match.
    #[inline]
    pub fn wants(&self, stage: Stage, arg: &[u8], live: u64) -> bool {
        self.always & stage.bit() != 0
            || self.rules.get(stage as usize).copied().unwrap_or(0) & live & self.shape(arg) != 0
    }
}

/// Decides how sessions misbehave. One per event loop; sessions reach it
/// through their `Ctx`.
pub trait Policy {
    /// A session starts: returns its handle for later queries.
    fn open(&mut self, id: SessionId, peer: SocketAddr, now: Instant) -> u32;
    /// The decision for one command (or the connect).
    fn decide(&mut self, q: &Query<'_>) -> Decision;
    /// The text of a reply this policy made (complete, CRLF included).
    fn text(&self, index: u32) -> &[u8];
    /// The session ended; its handle is free again.
    fn closed(&mut self, _handle: u32) {}
    /// The stages worth asking about (bit `Stage as u16`): about the others
    /// the answer would be to proceed, so sessions do not ask.
    fn stages(&self) -> u16 {
        u16::MAX
    }
    /// The stages worth asking about for session `handle` (a subset of
    /// [`Policy::stages`]: rules that can never match it left out).
    fn session_stages(&mut self, _handle: u32) -> u16 {
        self.stages()
    }
    /// The rules (bit `i`: rule `i`, as in [`Interest`]) that can match
    /// session `handle` at all: its client and connection number are known.
    fn session_rules(&mut self, _handle: u32) -> u64 {
        u64::MAX
    }
    /// Changes whenever the rules do: a session's stages are asked again.
    fn generation(&self) -> u32 {
        0
    }
    /// What is worth asking about, by argument shape (`None`: everything
    /// in [`Policy::stages`]). Read again when the generation changes.
    fn interest(&self) -> Option<Arc<Interest>> {
        None
    }
}
